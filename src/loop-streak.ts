// Work that resolves its promises without a turn of the event loop (a read from the page cache or
// the block cache, a small write group written synchronously) lets a caller that awaits it in a
// loop (`while (...) await g.read(...)`) hold the loop for as long as the loop runs: no timer,
// socket, lease keep-alive or other request gets its turn. LoopStreak tells when such work has gone
// on for MAX_SYNC_STREAK_MS since the loop last turned, so that the next operation waits for a turn.

/**
 * How long operations may resolve one after the other without a turn of the event loop before one
 * waits for it (or, in the file store, goes through the thread pool).
 */
export const MAX_SYNC_STREAK_MS = 5

/** Tells when operations have gone on for MAX_SYNC_STREAK_MS without a turn of the event loop. */
export class LoopStreak {
  /** When the first operation since the event loop's last turn started (-1: none since). */
  #started = -1
  readonly #turned = (): void => { this.#started = -1 }

  /** Whether an operation at `now` should give the loop its turn. */
  tooLong (now: number): boolean {
    if (this.#started < 0) {
      this.#started = now
      setImmediate(this.#turned)
    }
    return now - this.#started >= MAX_SYNC_STREAK_MS
  }
}

/** A promise that resolves after the event loop's next turn. */
export async function loopTurn (): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve))
}
