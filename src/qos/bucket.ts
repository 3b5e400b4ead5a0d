// Token buckets of the QoS limiter: a rate with a short smoothing depth, plus optional burst
// credits that fill from the unused part of the rate and let the bucket run above it for a while.

/** Time source of the QoS layer, in milliseconds; tests drive a manual one. */
export interface QoSClock {
  now: () => number
  setTimeout: (fn: () => void, ms: number) => unknown
  clearTimeout: (handle: unknown) => void
}

/**
 * The process clock (monotonic) and timers. A timer runs only while operations wait for it, and
 * those are work in progress, so it keeps the process alive like the I/O it stands for.
 */
export const realClock: QoSClock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => { clearTimeout(handle as NodeJS.Timeout) }
}

/**
 * How much a bucket may hold beyond its steady flow: 50 ms of rate, so admission is smooth. The
 * cap applies to idle time only: a caller whose operations waited takes them at the times the
 * bucket allowed them (`readyAt`), however late its timer fired.
 */
const SMOOTHING_SECONDS = 0.05
const EPSILON = 1e-9

/**
 * One rate limit (operations or bytes per second). Costs above the smoothing depth are admitted
 * once the bucket is full and leave it in debt, so large operations pass at the right average rate.
 * With a burst multiplier m > 1 and duration D, the overflow of an under-used bucket becomes credits
 * (at most rate * (m - 1) * D, and the balance starts full); credits pay for work above the rate,
 * while a peak bucket at m * rate caps how fast they are spent.
 */
export class TokenBucket {
  readonly rate: number
  readonly depth: number
  readonly creditCapacity: number
  #tokens: number
  #credits: number
  #peakTokens: number
  readonly #peakRate: number
  readonly #peakDepth: number
  #last: number

  /** `rate` per second; `burst` when credits are allowed. */
  constructor (rate: number, now: number, burst?: { multiplier: number, durationSeconds: number }) {
    this.rate = rate
    this.depth = Math.max(rate * SMOOTHING_SECONDS, 1)
    const multiplier = burst === undefined ? 1 : burst.multiplier
    this.creditCapacity = multiplier > 1 ? rate * (multiplier - 1) * (burst as { durationSeconds: number }).durationSeconds : 0
    this.#peakRate = rate * multiplier
    this.#peakDepth = this.depth * multiplier
    this.#tokens = this.depth
    this.#credits = this.creditCapacity
    this.#peakTokens = this.#peakDepth
    this.#last = now
  }

  /**
   * Continues where `previous` (the bucket of the same limit this one replaces: the policy
   * changed) left off, within this bucket's depths: its tokens or debt, and its burst credits
   * when both allow bursts (a limit that starts allowing them starts with none). A policy change
   * must not refill a drained bucket.
   */
  carryFrom (previous: TokenBucket, now: number): void {
    previous.#refill(now)
    this.#refill(now)
    this.#tokens = Math.min(this.depth, previous.#tokens)
    if (previous.creditCapacity > 0 && this.creditCapacity > 0) {
      this.#credits = Math.min(this.creditCapacity, previous.#credits)
      this.#peakTokens = Math.min(this.#peakDepth, previous.#peakTokens)
    } else if (this.creditCapacity > 0) {
      // Bursts allowed from now on: credits are earned from now on, not given.
      this.#credits = 0
    }
  }

  /** Burst credits held at `now` (reading them changes nothing). */
  credits (now: number): number {
    const seconds = (now - this.#last) / 1000
    if (seconds <= 0 || this.creditCapacity === 0) return this.#credits
    const overflow = this.#tokens + this.rate * seconds - this.depth
    return overflow > 0 ? Math.min(this.creditCapacity, this.#credits + overflow) : this.#credits
  }

  /** Milliseconds until `cost` may be admitted (0: now). */
  waitMs (cost: number, now: number): number {
    this.#refill(now)
    return this.#shortfallMs(cost, this.#tokens, this.#credits, this.#peakTokens)
  }

  /**
   * When `cost` may be taken, if nothing else is taken meanwhile: the earliest time not before
   * `at` (nor before the bucket last changed). Changes nothing, so a caller may ask about a time
   * its clock has passed: operations that waited for a timer which fired late are taken at the
   * times the bucket allowed them (see `take`), and their waiting beyond the depth is not lost.
   */
  readyAt (cost: number, at: number): number {
    const base = Math.max(at, this.#last)
    const seconds = (base - this.#last) / 1000
    let tokens = this.#tokens + this.rate * seconds
    let credits = this.#credits
    if (tokens > this.depth) {
      if (this.creditCapacity > 0) credits = Math.min(this.creditCapacity, credits + tokens - this.depth)
      tokens = this.depth
    }
    const peakTokens = this.creditCapacity > 0 ? Math.min(this.#peakDepth, this.#peakTokens + this.#peakRate * seconds) : 0
    return base + this.#shortfallMs(cost, tokens, credits, peakTokens)
  }

  /**
   * Takes `cost` at time `at` (default: where the bucket last stood; call once `readyAt` allowed
   * that time, or waitMs returned 0): tokens first, then credits, then debt. The bucket only moves
   * forward: an `at` before its last change takes at that change.
   */
  take (cost: number, at?: number): void {
    if (at !== undefined) this.#refill(at)
    const fromTokens = Math.min(cost, Math.max(this.#tokens, 0))
    this.#tokens -= fromTokens
    let rest = cost - fromTokens
    if (rest > 0 && this.#credits > 0) {
      const fromCredits = Math.min(rest, this.#credits)
      this.#credits -= fromCredits
      rest -= fromCredits
    }
    this.#tokens -= rest
    if (this.creditCapacity > 0) this.#peakTokens -= cost
  }

  /** Milliseconds until `cost` may be taken from these levels. */
  #shortfallMs (cost: number, tokens: number, credits: number, peakTokens: number): number {
    const need = Math.min(cost, this.depth)
    let wait = 0
    // Shortfalls within rounding error of zero count as none, or a caller adding the wait to a
    // large clock value could wait forever for a refill too small to change it.
    const shortfall = need - (tokens + credits)
    if (shortfall > need * EPSILON) wait = shortfall / this.rate * 1000
    if (this.creditCapacity > 0) {
      const peakNeed = Math.min(cost, this.#peakDepth)
      const peakShortfall = peakNeed - peakTokens
      if (peakShortfall > peakNeed * EPSILON) wait = Math.max(wait, peakShortfall / this.#peakRate * 1000)
    }
    return wait
  }

  #refill (now: number): void {
    const seconds = (now - this.#last) / 1000
    if (seconds <= 0) return
    this.#last = now
    this.#tokens += this.rate * seconds
    if (this.#tokens > this.depth) {
      if (this.creditCapacity > 0) this.#credits = Math.min(this.creditCapacity, this.#credits + this.#tokens - this.depth)
      this.#tokens = this.depth
    }
    if (this.creditCapacity > 0) this.#peakTokens = Math.min(this.#peakDepth, this.#peakTokens + this.#peakRate * seconds)
  }
}
