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

/**
 * `promise`, or a rejection naming `what` once `timeoutMs` have passed first: a step that hangs
 * fails the test saying which step it was, instead of the whole file timing out.
 */
export async function within<T> (what: string, promise: Promise<T>, timeoutMs = 60_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting until ${what}`)), timeoutMs) })
  try {
    return await Promise.race([promise, late])
  } finally {
    clearTimeout(timer)
  }
}
