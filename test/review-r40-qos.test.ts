// Review r40 of h81 (QoS: late timers no longer cost a limited volume its rate), on a manual clock:
// reads and writes saturating a shared limit get it in turns (one lane's timer used to take it
// all), a limit lowered while a late timer owes operations holds from the change (no burst at the
// old rate), and the ceiling holds over every window, not only from the start: at most the depth
// plus the rate over the window and one timer's lateness (what a late timer owes goes in together).
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { parseQoSPolicy } from '../src/qos/policy.js'
import type { QoSClock } from '../src/qos/bucket.js'
import { QoSScheduler } from '../src/qos/scheduler.js'
import type { Kind } from '../src/qos/volume-state.js'
import { ManualClock } from './support/manual-clock.js'

/** The QoS layer's view of `clock`: every timer set before `until` fires `lateMs` after it is due (a busy event loop). */
function late (clock: ManualClock, lateMs: number, until = Infinity): QoSClock {
  return { now: clock.now, clearTimeout: clock.clearTimeout, setTimeout: (fn, ms) => clock.setTimeout(fn, clock.now() < until ? ms + lateMs : ms) }
}

/** Issues `count` operations at once; returns the clock times at which they were admitted (or let go), in order. */
function issue (s: QoSScheduler, clock: ManualClock, count: number, kind: Kind = 'write'): number[] {
  const times: number[] = []
  for (let i = 0; i < count; i++) {
    const admitted = s.admit('v', kind, 4096)
    if (typeof admitted === 'boolean') times.push(clock.now())
    else void admitted.then(() => { times.push(clock.now()) })
  }
  return times
}

/** Keeps `outstanding` operations of `kind` waiting: each admission issues the next one (a saturated queue). */
function saturate (s: QoSScheduler, kind: Kind, outstanding: number, stop: () => boolean): { count: number } {
  const counter = { count: 0 }
  const next = (): void => {
    if (stop()) return
    const admitted = s.admit('v', kind, 4096)
    const done = (): void => { if (!stop()) { counter.count++; next() } }
    if (typeof admitted === 'boolean') queueMicrotask(done)
    else void admitted.then(done)
  }
  for (let i = 0; i < outstanding; i++) next()
  return counter
}

/**
 * Over every window [t_i, t_j] of the (sorted) admission times: no more than the depth plus the
 * rate over the window and over `lagMs` (how far after the time the limit let an operation in a
 * late timer may admit it).
 */
function withinEveryWindow (times: number[], perSecond: number, depth: number, lagMs: number, what: string): void {
  const sorted = [...times].sort((a, b) => a - b)
  for (let i = 0; i < sorted.length; i++) {
    for (let j = i; j < sorted.length; j++) {
      const window = (sorted[j] as number) - (sorted[i] as number)
      const most = depth + perSecond * (window + lagMs) / 1000 + 1e-6
      if (j - i + 1 > most) assert.fail(`${what}: ${j - i + 1} operations from ${sorted[i]} ms to ${sorted[j]} ms, at most ${Math.floor(most)} at ${perSecond}/s`)
    }
  }
}

describe('review r40: QoS limiter with late timers', () => {
  for (const lateMs of [0, 300]) {
    it(`reads and writes saturating a shared limit take turns (timers ${lateMs} ms late)`, async () => {
      const clock = new ManualClock()
      const s = new QoSScheduler({ clock: late(clock, lateMs) })
      s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 100 } }), 'volume')
      let stopped = false
      const reads = saturate(s, 'read', 16, () => stopped)
      const writes = saturate(s, 'write', 16, () => stopped)
      await clock.advance(5000)
      stopped = true
      s.close()
      const total = reads.count + writes.count
      assert.ok(total >= 100 * (5000 - lateMs - 2) / 1000, `${total} operations in 5 s at 100 IOPS`)
      // Equal delays fire in the order they were set: the lane whose timer came first took the whole limit.
      for (const [lane, count] of [['reads', reads.count], ['writes', writes.count]] as const) {
        assert.ok(count >= total * 0.45, `${lane} got ${count} of ${total} operations`)
      }
    })
  }

  it('a read and a write limit over a shared one: writes get their own limit, reads the rest', async () => {
    const clock = new ManualClock()
    const s = new QoSScheduler({ clock: late(clock, 100) })
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 100, write_iops: 20 } }), 'volume')
    let stopped = false
    const reads = saturate(s, 'read', 16, () => stopped)
    const writes = saturate(s, 'write', 16, () => stopped)
    await clock.advance(10_000)
    stopped = true
    s.close()
    assert.ok(writes.count >= 20 * (10_000 - 102) / 1000 && writes.count <= 1 + 20 * 10, `writes: ${writes.count} in 10 s at 20 IOPS`)
    assert.ok(reads.count + writes.count <= 5 + 100 * 10, `${reads.count + writes.count} operations in 10 s at 100 IOPS`)
    assert.ok(reads.count >= 80 * (10_000 - 102) / 1000 - 5, `reads: ${reads.count} in 10 s`)
  })

  it('a limit lowered while a late timer owes operations holds from the change: no burst at the old rate', async () => {
    const clock = new ManualClock()
    const s = new QoSScheduler({ clock: late(clock, 500) })
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 1000 } }), 'volume')
    const times = issue(s, clock, 3000)
    await clock.advance(0)
    assert.equal(times.length, 50)
    // The timer was due at 1 ms and fires at 501 ms; at 200 ms the operator lowers the limit.
    await clock.advance(200)
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 10 } }), 'volume')
    await clock.advance(0)
    const after = (): number[] => times.slice(50)
    assert.ok(after().length <= 1, `${after().length} operations admitted at the change to 10 IOPS`)
    await clock.advance(4800)
    // From the change: the new depth (1 operation), then 10 per second, however late the timers.
    after().forEach((t, i) => { assert.ok(i + 1 <= 1 + 10 * (t - 200) / 1000 + 1e-6, `${i + 1} operations by ${t} ms after lowering the limit to 10 IOPS at 200 ms`) })
    withinEveryWindow(after(), 10, 1, 501, 'after lowering the limit')
    assert.ok(after().length >= 10 * (4800 - 501) / 1000, `${after().length} operations in 4.8 s at 10 IOPS`)
    s.close()
  })

  it('a change that tightens nothing (the same limits again, or a higher one) keeps what a late timer owes', async () => {
    for (const iops of [100, 150]) {
      const clock = new ManualClock()
      const s = new QoSScheduler({ clock: late(clock, 300) })
      s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 100 } }), 'volume')
      const times = issue(s, clock, 500)
      await clock.advance(200)
      s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops } }), 'volume')
      await clock.advance(0)
      // 5 at once, then the 20 the limit let in by 200 ms.
      assert.equal(times.length, 25, `admitted by a change to ${iops} IOPS at 200 ms`)
      s.close()
    }
  })

  it('a policy cleared, or the volume forgotten, while a timer is overdue lets everything waiting go', async () => {
    for (const end of ['clear', 'forget'] as const) {
      const clock = new ManualClock()
      const s = new QoSScheduler({ clock: late(clock, 500) })
      s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 100 } }), 'volume')
      const times = issue(s, clock, 100)
      await clock.advance(200)
      if (end === 'clear') s.setPolicy('v', 'v', undefined, 'none')
      else s.forget('v')
      await clock.advance(0)
      assert.equal(times.length, 100, `${end}: ${times.length} of 100 let go`)
      assert.equal(s.metrics('v').throttledQueue, 0)
      await clock.advance(1000)
      assert.equal(s.admit('v', 'write', 4096), false, `${end}: a later operation is not held`)
      s.close()
    }
  })

  it('the ceiling holds over every window: a queue refilled as a late timer fires, and busy and idle in turn', async () => {
    // 300 IOPS (depth 15), timers 500 ms late: 20 operations at 0 ms; more at 300 ms (the timer is
    // overdue, not yet fired), at 504 ms (just after it fired) and at 504 ms again.
    const clock = new ManualClock()
    const s = new QoSScheduler({ clock: late(clock, 500) })
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 300 } }), 'volume')
    const runs: number[][] = [issue(s, clock, 20)]
    await clock.advance(300)
    runs.push(issue(s, clock, 100))
    await clock.advance(204)
    runs.push(issue(s, clock, 200))
    clock.setTimeout(() => { runs.push(issue(s, clock, 50)) }, 0)
    await clock.advance(5000)
    s.close()
    const all = runs.flat()
    assert.equal(all.length, 370)
    withinEveryWindow(all, 300, 15, 501, 'refilled as the timer fires')
    // Busy and idle in turn: 40 operations every 250 ms, timers 100 ms late.
    const clock2 = new ManualClock()
    const s2 = new QoSScheduler({ clock: late(clock2, 100) })
    s2.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 100 } }), 'volume')
    const bursts: number[][] = []
    for (let i = 0; i < 12; i++) { bursts.push(issue(s2, clock2, 40)); await clock2.advance(250) }
    await clock2.advance(5000)
    s2.close()
    withinEveryWindow(bursts.flat(), 100, 5, 101, 'busy and idle in turn')
    assert.equal(bursts.flat().length, 480)
  })

  it('after a 10 s stall a flood gets no more than the depth besides what already waited', async () => {
    // 100 IOPS (depth 5): 10 operations at 0 ms, 5 go and 5 wait; the event loop then stalls, so
    // the timer (due at 10 ms) fires 10 s late; at 10 s, before it fires, 5000 operations arrive.
    const clock = new ManualClock()
    const s = new QoSScheduler({ clock: late(clock, 10_000, 1) })
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 100 } }), 'volume')
    const first = issue(s, clock, 10)
    await clock.advance(10_000)
    assert.equal(first.length, 5)
    const flood = issue(s, clock, 5000)
    await clock.advance(0)
    assert.equal(first.length, 10, 'the 5 that waited went in')
    assert.equal(flood.length, 5, `flood admitted at once after the stall: ${flood.length}`)
    await clock.advance(3000)
    // Timers on time again: from the stall's end, the flood gets the depth and 100 per second.
    flood.forEach((t, i) => { assert.ok(i + 1 <= 5 + 100 * (t - 10_000) / 1000 + 1e-6, `${i + 1} operations by ${t} ms`) })
    assert.ok(flood.length >= 5 + 100 * 2.99, `${flood.length} operations in 3 s after the stall`)
    s.close()
  })
})
