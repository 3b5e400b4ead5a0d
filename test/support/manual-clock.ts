// A QoS clock that only moves when a test advances it, running due timers in time order and
// letting promise callbacks settle after each one.

import type { QoSClock } from '../../src/qos/bucket.js'

interface Timer { at: number, seq: number, fn: () => void }

/** Manual time for QoSScheduler tests. */
export class ManualClock implements QoSClock {
  #now = 0
  #seq = 0
  readonly #timers = new Set<Timer>()

  readonly now = (): number => this.#now
  readonly setTimeout = (fn: () => void, ms: number): unknown => {
    const timer = { at: this.#now + Math.max(0, ms), seq: this.#seq++, fn }
    this.#timers.add(timer)
    return timer
  }

  readonly clearTimeout = (handle: unknown): void => { this.#timers.delete(handle as Timer) }

  /** Moves time forward by `ms`, firing every timer that falls due on the way. */
  async advance (ms: number): Promise<void> {
    const target = this.#now + ms
    for (;;) {
      await settle()
      let next: Timer | undefined
      for (const timer of this.#timers) if (timer.at <= target && (next === undefined || timer.at < next.at || (timer.at === next.at && timer.seq < next.seq))) next = timer
      if (next === undefined) break
      this.#timers.delete(next)
      this.#now = Math.max(this.#now, next.at)
      next.fn()
    }
    this.#now = target
    await settle()
  }
}

/** Lets every queued promise callback run (a macrotask turn drains the microtask queue). */
export async function settle (): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve))
}
