// When a primary recorded its changes, kept coarsely, so that a copy's lag can be told in seconds
// (the age of the oldest change it has not acknowledged) and not only in changes and bytes.
//
// A sample (seq, time) is taken for the first change recorded at least `resolution` (10 ms to
// start with) after the previous sample, so every change between two samples was recorded less
// than `resolution` after the earlier one: the age of change `seq` is read from the last sample at
// or before it, and overstates by less than that. The first change's time is kept apart, for a copy
// that has nothing yet (a new one). Samples every copy has acknowledged are dropped. While a copy
// stays away they pile up; past MAX_SAMPLES the resolution doubles and a sample closer than that to
// the sample kept before it is dropped. A sample after an idle gap is never such a sample, and the
// errors of successive thinnings add up to less than twice the resolution in force, so that bounds
// the overstatement while the memory stays bounded. It returns to 10 ms once every copy has caught
// up.

const SAMPLE_MS = 10
const MAX_SAMPLES = 4096

export class RecordClock {
  #seqs: number[] = []
  #times: number[] = []
  #resolution = SAMPLE_MS
  /** When the first change was recorded (undefined before it). */
  #firstTime: number | undefined
  readonly #now: () => number

  constructor (now: () => number = () => performance.now()) {
    this.#now = now
  }

  /** Change `seq` (higher than every one before) was recorded now. */
  recorded (seq: number): void {
    const now = this.#now()
    this.#firstTime ??= now
    const last = this.#times.length - 1
    if (last >= 0 && now - (this.#times[last] as number) < this.#resolution) return
    this.#seqs.push(seq)
    this.#times.push(now)
    if (this.#seqs.length > MAX_SAMPLES) this.#thin()
  }

  /**
   * Seconds since change `seq` (one that was recorded) was recorded, overstated by less than the
   * resolution (twice it after thinning, see above); 0 before any change.
   */
  ageSeconds (seq: number): number {
    if (this.#firstTime === undefined) return 0
    const index = this.#lastAtOrBefore(seq)
    // Before every sample kept: only a copy that has nothing asks for that (see forgetBefore).
    const at = index < 0 ? this.#firstTime : this.#times[index] as number
    return Math.max(0, this.#now() - at) / 1000
  }

  /**
   * Every copy has acknowledged the changes before `seq`: samples only they needed are dropped. (A
   * copy added later starts from nothing, and reads the first change's time.)
   */
  forgetBefore (seq: number): void {
    const keep = this.#lastAtOrBefore(seq)
    if (keep > 0) {
      this.#seqs.splice(0, keep)
      this.#times.splice(0, keep)
    }
    if (this.#seqs.length <= 1) this.#resolution = SAMPLE_MS
  }

  /** Samples kept, and the current resolution in ms (for tests). */
  get samples (): number { return this.#seqs.length }
  get resolutionMs (): number { return this.#resolution }

  /** Doubles the resolution until at most half of MAX_SAMPLES samples are at least that far apart. */
  #thin (): void {
    while (this.#seqs.length > MAX_SAMPLES / 2) {
      this.#resolution *= 2
      const seqs: number[] = []
      const times: number[] = []
      for (let i = 0; i < this.#seqs.length; i++) {
        const time = this.#times[i] as number
        if (times.length === 0 || time - (times[times.length - 1] as number) >= this.#resolution) {
          seqs.push(this.#seqs[i] as number)
          times.push(time)
        }
      }
      this.#seqs = seqs
      this.#times = times
    }
  }

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
