// When a primary recorded its changes, kept coarsely, so that a copy's lag can be told in seconds
// (the age of the oldest change it has not acknowledged) and not only in changes and bytes.
//
// A sample (seq, time) is taken for the first change recorded SAMPLE_MS or more after the previous
// sample, so between two samples every change was recorded less than SAMPLE_MS after the earlier
// one: the age of change `seq` is read from the last sample at or before it, and overstates by less
// than SAMPLE_MS. Samples every copy has acknowledged are dropped; while a copy stays away they pile
// up, and past MAX_SAMPLES every other one is dropped (the error bound doubles, the memory stays
// bounded), which only blurs lags already far longer than the bound.

const SAMPLE_MS = 10
const MAX_SAMPLES = 4096

export class RecordClock {
  #seqs: number[] = []
  #times: number[] = []
  readonly #now: () => number

  constructor (now: () => number = () => performance.now()) {
    this.#now = now
  }

  /** Change `seq` (higher than every one before) was recorded now. */
  recorded (seq: number): void {
    const now = this.#now()
    const last = this.#times.length - 1
    if (last >= 0 && now - (this.#times[last] as number) < SAMPLE_MS) return
    this.#seqs.push(seq)
    this.#times.push(now)
    if (this.#seqs.length > MAX_SAMPLES) {
      this.#seqs = this.#seqs.filter((_, i) => i % 2 === 0)
      this.#times = this.#times.filter((_, i) => i % 2 === 0)
    }
  }

  /**
   * Seconds since change `seq` (one that was recorded) was recorded, overstated by less than the
   * sampling interval; 0 before any change.
   */
  ageSeconds (seq: number): number {
    const index = this.#lastAtOrBefore(seq)
    // Older than every sample kept: it was dropped as acknowledged, so the oldest sample bounds it from below.
    const at = this.#times[Math.max(0, index)]
    return at === undefined ? 0 : Math.max(0, this.#now() - at) / 1000
  }

  /** Every copy has acknowledged the changes before `seq`: samples only they need are dropped. */
  forgetBefore (seq: number): void {
    const keep = this.#lastAtOrBefore(seq)
    if (keep > 0) {
      this.#seqs.splice(0, keep)
      this.#times.splice(0, keep)
    }
  }

  /** Samples kept (for tests). */
  get samples (): number { return this.#seqs.length }

  /** Index of the last sample whose seq is at most `seq`, or -1. */
  #lastAtOrBefore (seq: number): number {
    let low = 0
    let high = this.#seqs.length - 1
    let found = -1
    while (low <= high) {
      const mid = (low + high) >> 1
      if ((this.#seqs[mid] as number) <= seq) { found = mid; low = mid + 1 } else { high = mid - 1 }
    }
    return found
  }
}
