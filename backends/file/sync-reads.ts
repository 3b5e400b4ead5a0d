// Whether the file store reads synchronously on the event loop's thread or through libuv's pool.
//
// A read from the page cache is a copy: 6-8 us for 128 KiB with pread() on the event loop's thread,
// against 40-55 us through the thread pool (a pool thread woken, then the loop woken back; measured
// on the 2-vCPU development VM), which a reader at queue depth 1 (FUSE with direct_io, NBD, a single
// 4 KiB random read) waits for on every request. Only a slow device makes a synchronous read
// expensive, so each one is timed: one longer than SLOW_READ_MS plus its bytes at
// SLOW_READ_BYTES_PER_MS waited for a slow device (a disk read on that VM takes ~50 us, well
// within; on a rotating disk, milliseconds). A lone slow read is taken for the scheduler's noise
// (about 1 in 20,000 cached 4 KiB reads there took over 1 ms); a second one soon after (the score,
// +1 per slow read and x0.9 per quick one, reaches SLOW_SCORE when the second comes within 6 reads
// of the first) sends reads to the thread pool for BACKOFF_MS, after which they are tried
// synchronously again. So the event loop waits for a slow device about twice per backoff period
// at most.

export const SLOW_READ_MS = 0.5
export const SLOW_READ_BYTES_PER_MS = 1024 * 1024
export const SLOW_SCORE = 1.5
export const BACKOFF_MS = 1000

export class SyncReadGovernor {
  /** Reads go through the thread pool until then (a performance.now() time). */
  #poolUntil = 0
  #score = 0
  syncReads = 0
  poolReads = 0

  /** Whether a read starting at `now` is made synchronously. */
  synchronous (now: number): boolean {
    return now >= this.#poolUntil
  }

  /** A synchronous read of `bytes` started at `started` took `took` ms. */
  took (started: number, took: number, bytes: number): void {
    this.syncReads++
    if (took <= SLOW_READ_MS + bytes / SLOW_READ_BYTES_PER_MS) {
      this.#score *= 0.9
    } else if (++this.#score >= SLOW_SCORE) {
      this.#score = 0
      this.#poolUntil = started + took + BACKOFF_MS
    }
  }

  /** A read went through the thread pool. */
  pooled (): void {
    this.poolReads++
  }
}
