// Whether the file store reads synchronously on the event loop's thread or through libuv's pool.
//
// A read from the page cache is a copy: 6-8 us for 128 KiB with pread() on the event loop's thread,
// against 40-55 us through the thread pool (a pool thread woken, then the loop woken back; measured
// on the 2-vCPU development VM), which a reader at queue depth 1 (FUSE with direct_io, NBD, a single
// 4 KiB random read) waits for on every request. Only the device makes a synchronous read
// expensive: the event loop waits for it, and reads that could overlap in the pool run one after
// the other (measured by review: 4,000 random 4 KiB reads of evicted data, 16 at a time, took
// 2.2x as long synchronously). So each synchronous read is timed, failed ones included: one longer
// than SLOW_READ_MS plus its bytes at SLOW_READ_BYTES_PER_MS took device time (cached 4 KiB reads
// took 1.3-1.9 us at the median there, 3-5 us at p99; a disk read about 50 us, on an SSD 80 us, a
// rotating disk milliseconds). The allowance per byte is generous because a large read into a
// freshly allocated buffer also pays the page faults of that buffer (a cached 1.1 MiB read into a
// reused buffer took 40-45 us, into a new one several hundred on that VM). Under load, though,
// cached reads come out slow now and then (the thread preempted): the slow-read score is a moving
// average of how many reads were slow (weight 1/16 each), and reads go to the thread pool for
// BACKOFF_MS once half of the recent ones were. A read slower than VERY_SLOW_READ_MS more (a
// rotating disk, a failing or hung device) weighs VERY_SLOW_WEIGHT, so two of them in a row do it.
// So data that is not cached costs about a dozen synchronous device reads per second, and noise
// on cached data (measured: with the score at "two slow reads within six", NBD random 4 KiB reads
// at 16 in flight fell from 1.2-1.9x qemu-nbd to 0.68x) does not leave the fast path. And reads
// answered synchronously for MAX_SYNC_STREAK_MS without a turn of the event loop send the next one
// to the pool, so a reader in a loop cannot hold the loop (src/loop-streak.ts); the scattered runs
// of one multi-block read wait for a turn instead and go on synchronously (see getMany).

export const SLOW_READ_MS = 0.05
export const SLOW_READ_BYTES_PER_MS = 1024 * 1024
export const VERY_SLOW_READ_MS = 1
const WEIGHT = 1 / 16
const VERY_SLOW_WEIGHT = 0.3
export const SLOW_SCORE = 0.5
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

  /** A synchronous read of `bytes` started at `started` took `took` ms (failed or not). */
  took (started: number, took: number, bytes: number): void {
    this.syncReads++
    const allowance = SLOW_READ_MS + bytes / SLOW_READ_BYTES_PER_MS
    this.#score *= 1 - WEIGHT
    if (took > allowance + VERY_SLOW_READ_MS) this.#score += VERY_SLOW_WEIGHT
    else if (took > allowance) this.#score += WEIGHT
    if (this.#score >= SLOW_SCORE) {
      this.#score = 0
      this.#poolUntil = started + took + BACKOFF_MS
    }
  }

  /** A read went through the thread pool. */
  pooled (): void {
    this.poolReads++
  }
}
