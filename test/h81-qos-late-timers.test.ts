// QoS limits under a busy event loop: the limiter's and the dispatcher's timers fire late by chosen
// amounts (a manual clock whose timers run `lateMs` after they are due), and every admission is
// counted. A backlog that waits throughout keeps its full rate: each operation goes at the time the
// limit allowed it, or within one timer's lateness after it, never earlier; idle time still earns
// at most the smoothing depth, and burst credits come out exactly as with timers on time.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { parseQoSPolicy } from '../src/qos/policy.js'
import type { QoSClock } from '../src/qos/bucket.js'
import { QoSScheduler, type QoSNodeOptions } from '../src/qos/scheduler.js'
import type { Kind } from '../src/qos/volume-state.js'
import { ManualClock } from './support/manual-clock.js'

/** The QoS layer's view of `clock`: the same time, but every timer fires `lateMs` after it is due. */
function late (clock: ManualClock, lateMs: number): QoSClock {
  return { now: clock.now, clearTimeout: clock.clearTimeout, setTimeout: (fn, ms) => clock.setTimeout(fn, ms + lateMs) }
}

/**
 * Issues `count` operations of a volume at once (a full queue that waits throughout) and returns
 * the clock times at which they were admitted, in order; an operation the dispatcher let in
 * completes `serviceMs` later (on time: only the QoS timers are late).
 */
function backlog (s: QoSScheduler, clock: ManualClock, volumeId: string, count: number, options: { kind?: Kind, bytes?: number, serviceMs?: number } = {}): number[] {
  const times: number[] = []
  const done = (held: boolean): void => {
    times.push(clock.now())
    if (held) clock.setTimeout(() => { s.release() }, options.serviceMs ?? 1)
  }
  for (let i = 0; i < count; i++) {
    const admitted = s.admit(volumeId, options.kind ?? 'write', options.bytes ?? 4096)
    if (typeof admitted === 'boolean') done(admitted)
    else void admitted.then(done)
  }
  return times
}

/** Runs `count` operations against `policy` for `ms` with timers `lateMs` late; the admission times. */
async function run (lateMs: number, policy: object | undefined, count: number, ms: number, options: { node?: QoSNodeOptions, bytes?: number } = {}): Promise<number[]> {
  const clock = new ManualClock()
  const s = new QoSScheduler({ ...options.node, clock: late(clock, lateMs) })
  s.setPolicy('v', 'v', parseQoSPolicy(policy ?? { weight: 1 }), 'volume')
  const times = backlog(s, clock, 'v', count, options.bytes === undefined ? {} : { bytes: options.bytes })
  await clock.advance(ms)
  // Closing lets every waiting operation go: those are not admissions.
  const admitted = [...times]
  s.close()
  await clock.advance(10)
  return admitted
}

/**
 * With timers 500 ms late: a backlog of `count` operations on volume v (its QoS `policy`) all go
 * within `drainMs`; then, after as long again idle, 100 queued at once see only the depth (15 at
 * 300 IOPS) go at once: what was owed does not outlive the queue.
 */
async function depthAfterIdle (clock: ManualClock, node: QoSNodeOptions, policy: object, count: number, drainMs: number): Promise<void> {
  const s = new QoSScheduler({ ...node, clock: late(clock, 500) })
  s.setPolicy('v', 'v', parseQoSPolicy(policy), 'volume')
  const first = backlog(s, clock, 'v', count)
  await clock.advance(drainMs)
  assert.equal(first.length, count)
  await clock.advance(drainMs)
  const second = backlog(s, clock, 'v', 100)
  await clock.advance(0)
  assert.equal(second.length, 15)
  s.close()
}

/**
 * Each admission of the late run is no earlier than its counterpart with timers on time (allowing
 * the 1 ms the scheduler rounds timers up to), and no later than `slackMs` after it.
 */
function keepsPace (lateRun: number[], onTime: number[], slackMs: number, what: string): void {
  for (let i = 0; i < lateRun.length; i++) {
    const ideal = onTime[i] as number
    const got = lateRun[i] as number
    assert.ok(ideal !== undefined && got >= ideal - 1, `${what}: operation ${i} went at ${got} ms, before its time (${ideal} ms with timers on time)`)
    assert.ok(got <= ideal + slackMs, `${what}: operation ${i} went at ${got} ms, ${got - ideal} ms after its time with timers on time (${ideal} ms)`)
  }
}

/** No more than the depth plus the rate over the time since the start: `(i + 1) <= depth + rate * t_i`. */
function withinCeiling (times: number[], perSecond: number, depth: number, what: string): void {
  times.forEach((t, i) => { assert.ok(i + 1 <= depth + perSecond * t / 1000 + 1e-6, `${what}: ${i + 1} operations by ${t} ms at ${perSecond}/s`) })
}

describe('QoS limits with late timers', () => {
  it('an IOPS limit keeps its rate with a full queue however late its timers fire, and admits what was owed at once', async () => {
    const onTime = await run(0, { limits: { iops: 300 } }, 4000, 10_000)
    withinCeiling(onTime, 300, 15, 'on time')
    for (const lateMs of [50, 200, 500]) {
      const times = await run(lateMs, { limits: { iops: 300 } }, 4000, 10_000)
      withinCeiling(times, 300, 15, `${lateMs} ms late`)
      keepsPace(times, onTime, lateMs + 1, `${lateMs} ms late`)
      // Over 10 s the volume gets its 300 IOPS, less at most one lateness at the end.
      assert.ok(times.length >= onTime.filter((t) => t <= 10_000 - lateMs - 1).length, `${lateMs} ms late: ${times.length} operations in 10 s, ${onTime.length} with timers on time`)
      assert.ok(times.length >= 300 * (10_000 - lateMs - 4) / 1000, `${lateMs} ms late: ${times.length / 10} IOPS under a 300 IOPS limit`)
    }
    // The first timer (due at 3.3 ms, rounded up to 4) fires at 504 ms: the 15 of the depth went at
    // once, and then the 151 operations the limit allowed by 504 ms go together, none more.
    const times = await run(500, { limits: { iops: 300 } }, 4000, 504)
    assert.equal(times.filter((t) => t === 0).length, 15)
    assert.equal(times.length, 15 + 151, `admitted by the first late timer: ${times.length - 15}`)
    assert.ok(times.slice(15).every((t) => t === 504))
  })

  it('a throughput limit keeps its rate, operations above the smoothing depth (debt) included', async () => {
    // 4 kB operations against 1 MB/s (a depth of 50 kB, 12 operations).
    const smallOnTime = await run(0, { limits: { throughput_mbps: 1 } }, 3000, 5000)
    const small = await run(200, { limits: { throughput_mbps: 1 } }, 3000, 5000)
    withinCeiling(small, 1e6 / 4096, 50_000 / 4096, 'small operations')
    keepsPace(small, smallOnTime, 201, 'small operations')
    assert.ok(small.length * 4096 >= 1e6 * (5000 - 206) / 1000, `${small.length * 4096 / 5} B/s under 1 MB/s`)
    // 200 kB operations: each passes once the bucket is full again and leaves it 150 kB in debt,
    // so one goes every 200 ms; with timers 300 ms late, the ones due meanwhile go together.
    const largeOnTime = await run(0, { limits: { throughput_mbps: 1 } }, 100, 10_000, { bytes: 200_000 })
    const large = await run(300, { limits: { throughput_mbps: 1 } }, 100, 10_000, { bytes: 200_000 })
    assert.equal(largeOnTime.length, 51)
    withinCeiling(large, 5, 1, 'large operations')
    keepsPace(large, largeOnTime, 301, 'large operations')
    assert.ok(large.length >= 48, `${large.length} large operations in 10 s (51 with timers on time)`)
  })

  it('burst credits are earned and spent exactly as with timers on time, and idle time still earns only the depth', async () => {
    const policy = { limits: { iops: 100 }, burstable: { duration_seconds: 5, iops_multiplier: 2 } }
    const measure = async (lateMs: number): Promise<{ times: number[], credits: number | undefined, burst: number }> => {
      const clock = new ManualClock()
      const s = new QoSScheduler({ clock: late(clock, lateMs) })
      s.setPolicy('v', 'v', parseQoSPolicy(policy), 'volume')
      const times = backlog(s, clock, 'v', 1300)
      // At twice the limit while the 500 credits last (about 1005 operations in 5 s), then 100/s.
      await clock.advance(9000)
      assert.equal(times.length, 1300)
      // Idle until 10 s: the bucket fills (5 operations), then the rest of the rate becomes credits.
      await clock.advance(1000)
      const credits = s.metrics('v').burstCredits?.iops
      // After the idle time, a burst of 100 operations: the peak depth (2 x 5) goes at once.
      const burst = backlog(s, clock, 'v', 100)
      await clock.advance(0)
      const went = burst.length
      s.close()
      return { times, credits, burst: went }
    }
    const onTime = await measure(0)
    assert.ok(Math.abs(onTime.times.filter((t) => t < 5000).length - 1005) <= 2, `${onTime.times.filter((t) => t < 5000).length} operations in the burst`)
    const idle = 10_000 - (onTime.times.at(-1) as number)
    assert.ok(onTime.credits !== undefined && idle > 1000 && Math.abs(onTime.credits - (100 * idle / 1000 - 5)) < 2, `credits after ${idle} ms idle: ${onTime.credits}`)
    for (const lateMs of [30, 250]) {
      const lateRun = await measure(lateMs)
      keepsPace(lateRun.times, onTime.times, lateMs + 1, `${lateMs} ms late, bursting`)
      assert.ok(lateRun.credits !== undefined && Math.abs(lateRun.credits - (onTime.credits as number)) < 1e-6, `${lateMs} ms late: ${lateRun.credits} credits, ${onTime.credits} with timers on time`)
      assert.equal(lateRun.burst, onTime.burst)
    }
    assert.equal(onTime.burst, 10)
    // Without credits: after the backlog and an idle time, the depth (15 at 300 IOPS) goes at once, no more.
    const clock = new ManualClock()
    await depthAfterIdle(clock, {}, { limits: { iops: 300 } }, 1000, 5000)
  })

  it('reads and writes sharing a limit keep its rate together, and a newcomer does not take what the late lane was owed', async () => {
    const clock = new ManualClock()
    const s = new QoSScheduler({ clock: late(clock, 300) })
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 100 } }), 'volume')
    const writes = backlog(s, clock, 'v', 400, { kind: 'write' })
    assert.equal(writes.length, 5)
    // The writes' timer was due at 10 ms and fires at 310 ms. A read arriving at 200 ms finds the
    // 20 writes the limit allowed by then gone first, and waits its turn.
    await clock.advance(200)
    const read = s.admit('v', 'read', 4096)
    await clock.advance(0)
    assert.equal(writes.length, 25, `writes admitted by 200 ms: ${writes.length}`)
    assert.ok(read instanceof Promise, 'the read went ahead of writes that had waited')
    const reads = backlog(s, clock, 'v', 400, { kind: 'read' })
    await clock.advance(3800)
    const all = [...writes, ...reads].sort((a, b) => a - b)
    withinCeiling(all, 100, 5, 'reads and writes')
    assert.ok(all.length + 1 >= 5 + 100 * (4000 - 311) / 1000, `${all.length} operations in 4 s at 100 IOPS`)
    s.close()
    await read
  })

  it('a raised limit lets in first what the old limit owed, then holds the new one (a lowered one: review-r40-qos)', async () => {
    const clock = new ManualClock()
    const s = new QoSScheduler({ clock: late(clock, 300) })
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 100 } }), 'volume')
    const times = backlog(s, clock, 'v', 2000)
    await clock.advance(200)
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 200 } }), 'volume')
    await clock.advance(0)
    assert.equal(times.length, 25, `admitted by the policy change at 200 ms: ${times.length}`)
    await clock.advance(3000)
    // From 200 ms on: 200 IOPS, from an empty bucket (a change is not a refill).
    const after = times.slice(25)
    after.forEach((t, i) => { assert.ok(i + 1 <= 200 * (t - 200) / 1000 + 1e-6, `${i + 1} operations by ${t} ms after the change`) })
    assert.ok(after.length >= 200 * (3000 - 306) / 1000, `${after.length} operations in the 3 s at 200 IOPS`)
    s.close()
  })

  it('the node capacity keeps its rate when the dispatcher timer fires late, with fewer slots in flight than were owed', async () => {
    const node = { capacityIops: 300, maxInFlight: 32 }
    const onTime = await run(0, undefined, 4000, 10_000, { node })
    withinCeiling(onTime, 300, 15, 'capacity on time')
    const times = await run(500, undefined, 4000, 10_000, { node })
    withinCeiling(times, 300, 15, 'capacity 500 ms late')
    // 151 operations are owed at each late timer; 32 go at once, the rest as slots free up (1 ms each).
    keepsPace(times, onTime, 500 + 1 + 5, 'capacity 500 ms late')
    assert.ok(times.length >= 300 * (10_000 - 504 - 5) / 1000, `${times.length / 10} IOPS against a 300 IOPS capacity`)
    // What was owed does not outlive the queue: after an idle time the depth goes at once, no more.
    const clock = new ManualClock()
    await depthAfterIdle(clock, node, { weight: 1 }, 200, 2000)
    await clock.advance(10)
  })
})
