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
// reused buffer took 40-45 us, into a new one several hundred on that VM). A lone slow read is taken for the scheduler's noise (about 1 in
// 1,000 cached 4 KiB reads there took over 20 us, 1 in 20,000 over 1 ms); a second one soon after
// (the score, +1 per slow read and x0.9 per quick one, reaches SLOW_SCORE when the second comes
// within 6 reads of the first) sends reads to the thread pool for BACKOFF_MS, after which they are
// tried synchronously again. So a workload that misses the page cache pays about two synchronous
// device reads per second; one that hits it never leaves the fast path.

export const SLOW_READ_MS = 0.05
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
