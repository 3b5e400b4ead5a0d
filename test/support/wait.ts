// Waiting in tests for something another process, node or timer brings about.

/**
 * Polls `check` every `everyMs` until it holds; throws naming `what` once `timeoutMs` have passed.
 * The timeout only bounds a failing test: a passing one goes on as soon as `check` holds.
 */
export async function until (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000, everyMs = 10): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await new Promise((resolve) => setTimeout(resolve, everyMs))
  }
}
