// The time limit on a key provider's wrap and unwrap, and how its expiry is recognised: a provider
// that does not answer for one volume's key at open is not asked again for every other volume's.

/** How long a key provider's wrap or unwrap may take by default. */
export const PROVIDER_TIMEOUT_MS = 30_000
/** The longest delay Node's timers take (a longer one fires after 1 ms). */
export const MAX_TIMER_MS = 2 ** 31 - 1

/** Why a key provider's call failed: it did not answer within its time limit. */
export class KeyProviderTimeout extends Error {
  /**
   * Whether the call that timed out settles within one more time limit (a slow provider, not a
   * hung one); false at once when the call was stopped (a killed command, an aborted request).
   */
  readonly answersLate: () => Promise<boolean>

  constructor (ms: number, what = 'it', answersLate: () => Promise<boolean> = async () => false) {
    super(`${what} did not answer within ${ms} ms`)
    this.name = 'KeyProviderTimeout'
    this.answersLate = answersLate
  }
}

/** `call`'s result, or a KeyProviderTimeout once `ms` passed without one. */
export async function withinTimeout<T> (call: () => Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const pending = call()
  try {
    return await Promise.race([
      pending,
      new Promise<never>((_resolve, reject) => { timer = setTimeout(() => { reject(new KeyProviderTimeout(ms, 'it', async () => await settlesWithin(pending, ms))) }, ms) })
    ])
  } finally {
    clearTimeout(timer)
  }
}

/** Whether `pending` settles (either way) within `ms`; its timer goes as soon as it does. */
async function settlesWithin (pending: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([
      pending.then(() => true, () => true),
      new Promise<boolean>((resolve) => { timer = setTimeout(() => { resolve(false) }, ms) })
    ])
  } finally {
    clearTimeout(timer)
  }
}

/** The KeyProviderTimeout `err` is or was wrapped from, if any. */
export function providerTimeout (err: unknown): KeyProviderTimeout | undefined {
  for (let at = err, depth = 0; at !== null && typeof at === 'object' && depth < 8; at = (at as { cause?: unknown }).cause, depth++) {
    if (at instanceof KeyProviderTimeout) return at
  }
  return undefined
}

/** Whether `err`, or an error it was wrapped from, is a KeyProviderTimeout. */
export function timedOut (err: unknown): boolean {
  return providerTimeout(err) !== undefined
}
