// The time limit on a key provider's wrap and unwrap, and how its expiry is recognised: a provider
// that does not answer for one volume's key at open is not asked again for every other volume's.

/** How long a key provider's wrap or unwrap may take by default. */
export const PROVIDER_TIMEOUT_MS = 30_000
/** The longest delay Node's timers take (a longer one fires after 1 ms). */
export const MAX_TIMER_MS = 2 ** 31 - 1

/** Why a key provider's call failed: it did not answer within its time limit. */
export class KeyProviderTimeout extends Error {
  constructor (ms: number, what = 'it') {
    super(`${what} did not answer within ${ms} ms`)
    this.name = 'KeyProviderTimeout'
  }
}

/** `call`'s result, or a KeyProviderTimeout once `ms` passed without one. */
export async function withinTimeout<T> (call: () => Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([
      call(),
      new Promise<never>((_resolve, reject) => { timer = setTimeout(() => { reject(new KeyProviderTimeout(ms)) }, ms) })
    ])
  } finally {
    clearTimeout(timer)
  }
}

/** Whether `err`, or an error it was wrapped from, is a KeyProviderTimeout. */
export function timedOut (err: unknown): boolean {
  for (let at = err, depth = 0; at !== null && typeof at === 'object' && depth < 8; at = (at as { cause?: unknown }).cause, depth++) {
    if (at instanceof KeyProviderTimeout) return true
  }
  return false
}
