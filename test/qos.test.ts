// Tests of the QoS stage on a manual clock: policy validation, token buckets with burst credits,
// per-volume limiters, and the dispatcher's guarantees and fair share under contention.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonError } from '../src/errors.js'
import { parseQoSPolicy, qosFromParameters } from '../src/qos/policy.js'
import { TokenBucket } from '../src/qos/bucket.js'
import { QoSScheduler, type QoSGuaranteeMissedEvent, type QoSThrottledEvent } from '../src/qos/scheduler.js'
import { parseStorageClass } from '../src/volumes/storage-classes.js'
import { ManualClock } from './support/manual-clock.js'

function invalid (fn: () => unknown, mention: string): void {
  assert.throws(fn, (err: unknown) => err instanceof GalleonError && err.code === 'INVALID_ARGUMENT' && err.message.includes(mention))
}

/**
 * Runs `depth` workers issuing operations of one volume until `until` (clock ms); each admitted
 * operation takes `serviceMs`. Returns the count of operations admitted per second of the run.
 */
function load (s: QoSScheduler, clock: ManualClock, volumeId: string, options: { depth: number, until: number, serviceMs?: number, kind?: 'read' | 'write', bytes?: number, from?: number }): { done: number, counted: number[] } {
  const out = { done: 0, counted: [] as number[] }
  const serviceMs = options.serviceMs ?? 1
  const worker = async (): Promise<void> => {
    while (clock.now() < options.until) {
      const admitted = s.admit(volumeId, options.kind ?? 'write', options.bytes ?? 4096)
      const held = typeof admitted === 'boolean' ? admitted : await admitted
      if (clock.now() >= options.until) { if (held) s.release(); return }
      const second = Math.floor(clock.now() / 1000)
      out.counted[second] = (out.counted[second] ?? 0) + 1
      out.done++
      await new Promise<void>((resolve) => { clock.setTimeout(resolve, serviceMs) })
      if (held) s.release()
    }
  }
  for (let i = 0; i < options.depth; i++) void worker()
  return out
}

/** Operations per second admitted between `fromSecond` and `toSecond` (exclusive). */
function rate (counted: number[], fromSecond: number, toSecond: number): number {
  let sum = 0
  for (let second = fromSecond; second < toSecond; second++) sum += counted[second] ?? 0
  return sum / (toSecond - fromSecond)
}

describe('QoS policies', () => {
  it('parses the snake_case form of a config file and the camelCase form alike', () => {
    const snake = parseQoSPolicy({
      name: 'database-qos',
      limits: { iops: 1000, throughput_mbps: 100, latency_ms: 10 },
      guarantees: { iops: 500, throughput_mbps: 50 },
      burstable: { enabled: true, duration_seconds: 300, iops_multiplier: 2, throughput_multiplier: 2 }
    })
    const camel = parseQoSPolicy({
      name: 'database-qos',
      limits: { iops: 1000, throughputMBps: 100, latencyMs: 10 },
      guarantees: { iops: 500, throughputMBps: 50 },
      burstable: { enabled: true, durationSeconds: 300, iopsMultiplier: 2, throughputMultiplier: 2 }
    })
    assert.deepEqual(snake, camel)
    assert.deepEqual(snake.limits, { iops: 1000, throughputMBps: 100, latencyMs: 10 })
  })

  it('refuses every bad field with INVALID_ARGUMENT naming it', () => {
    invalid(() => parseQoSPolicy(null), 'must be an object')
    invalid(() => parseQoSPolicy({ limit: {} }), '"limit"')
    invalid(() => parseQoSPolicy({ limits: { iops: -5 } }), 'limits.iops')
    invalid(() => parseQoSPolicy({ limits: { iops: '1000' } }), 'limits.iops')
    invalid(() => parseQoSPolicy({ limits: { iops: Number.NaN } }), 'limits.iops')
    invalid(() => parseQoSPolicy({ limits: { bogus: 1 } }), '"bogus"')
    invalid(() => parseQoSPolicy({ limits: { latency_ms: 1, latencyMs: 2 } }), 'twice')
    invalid(() => parseQoSPolicy({ guarantees: { iops: 0 } }), 'guarantees.iops')
    invalid(() => parseQoSPolicy({ limits: { iops: 100 }, guarantees: { iops: 500 } }), 'floor cannot exceed the ceiling')
    invalid(() => parseQoSPolicy({ limits: { throughput_mbps: 10 }, guarantees: { throughput_mbps: 50 } }), 'throughput')
    invalid(() => parseQoSPolicy({ limits: { iops: 100 }, burstable: { enabled: true, iops_multiplier: 2 } }), 'duration_seconds')
    invalid(() => parseQoSPolicy({ limits: { iops: 100 }, burstable: { duration_seconds: 10, iops_multiplier: 0.5 } }), 'iops_multiplier')
    invalid(() => parseQoSPolicy({ limits: { iops: 100 }, burstable: { duration_seconds: 10, enabled: 'yes' } }), 'enabled')
    invalid(() => parseQoSPolicy({ burstable: { duration_seconds: 10, iops_multiplier: 2 } }), 'needs limits')
    invalid(() => parseQoSPolicy({ weight: 0 }), 'weight')
    invalid(() => parseQoSPolicy({ name: '' }), '"name"')
  })

  it('reads a policy from flat storage-class parameters, and a class with a bad one is refused', () => {
    const policy = qosFromParameters({ qos_limit_iops: '2000', qos_guarantee_iops: '500', qos_burst_duration_seconds: '60', qos_burst_iops_multiplier: '3', qos_weight: '2', encryption: 'false' })
    assert.deepEqual(policy, { limits: { iops: 2000 }, guarantees: { iops: 500 }, burstable: { enabled: true, durationSeconds: 60, iopsMultiplier: 3, throughputMultiplier: 1 }, weight: 2 })
    assert.equal(qosFromParameters({ encryption: 'false' }), undefined)
    invalid(() => parseStorageClass({ name: 'q', parameters: { qos_limit_iopz: '5' } }), 'qos_limit_iopz')
    invalid(() => parseStorageClass({ name: 'q', parameters: { qos_limit_iops: 'fast' } }), 'must be a number')
    invalid(() => parseStorageClass({ name: 'q', parameters: { qos_limit_iops: '10', qos_guarantee_iops: '20' } }), 'floor cannot exceed')
    assert.equal(parseStorageClass({ name: 'q', parameters: { qos_limit_iops: 10 } }).parameters.qos_limit_iops, '10')
  })
})

describe('token buckets', () => {
  it('admits at the rate on average, large costs included (they leave a debt)', () => {
    const bucket = new TokenBucket(1000, 0)
    let now = 0
    let admitted = 0
    // Costs of 4096 against a 50-unit depth: each passes only when the bucket is full again.
    while (now < 60_000) {
      const wait = bucket.waitMs(100, now)
      if (wait > 0) { now += wait; continue }
      bucket.take(100)
      admitted += 100
    }
    assert.ok(Math.abs(admitted - 60_000 * 1) / 60_000 < 0.01, `admitted ${admitted} units in 60 s at 1000/s`)
  })

  it('burst credits start full, pay for the multiplier for the burst duration, then refill while idle', () => {
    const bucket = new TokenBucket(100, 0, { multiplier: 3, durationSeconds: 10 })
    assert.equal(bucket.creditCapacity, 2000)
    assert.equal(bucket.credits(0), 2000)
    const admittedPerSecond: number[] = []
    let now = 0
    while (now < 20_000) {
      const wait = bucket.waitMs(1, now)
      if (wait > 0) { now += wait; continue }
      bucket.take(1)
      const second = Math.floor(now / 1000)
      admittedPerSecond[second] = (admittedPerSecond[second] ?? 0) + 1
    }
    // While credits last: 3x the limit; afterwards the limit.
    for (let s = 1; s < 9; s++) assert.ok(Math.abs((admittedPerSecond[s] ?? 0) - 300) <= 6, `second ${s}: ${admittedPerSecond[s]} ops, expected ~300`)
    for (let s = 12; s < 20; s++) assert.ok(Math.abs((admittedPerSecond[s] ?? 0) - 100) <= 3, `second ${s}: ${admittedPerSecond[s]} ops, expected ~100`)
    assert.ok(bucket.credits(now) < 5)
    // Idle: the unused rate becomes credits, 100 per second, up to the capacity.
    assert.ok(Math.abs(bucket.credits(now + 5000) - 500) < 10)
    assert.equal(bucket.credits(now + 60_000), 2000)
  })
})

describe('QoS scheduler', () => {
  it('holds a limited volume at its IOPS limit, counts throttled time and says so once a second', async () => {
    const clock = new ManualClock()
    const events: QoSThrottledEvent[] = []
    const s = new QoSScheduler({ clock }, (event, payload) => { if (event === 'qos:throttled') events.push(payload as QoSThrottledEvent) })
    s.setPolicy('v1', 'limited', parseQoSPolicy({ limits: { iops: 200 } }), 'volume')
    const run = load(s, clock, 'v1', { depth: 16, until: 10_000 })
    await clock.advance(10_000)
    const achieved = rate(run.counted, 1, 10)
    assert.ok(Math.abs(achieved - 200) <= 4, `achieved ${achieved} IOPS under a 200 IOPS limit`)
    const m = s.metrics('v1')
    assert.ok(m.throttledOps > 1000)
    assert.ok(m.throttledSeconds > 10, `throttled seconds ${m.throttledSeconds}`)
    assert.ok(events.length >= 8 && events.length <= 11, `${events.length} throttle events in 10 s`)
    assert.equal(events[0]?.limit, 'limits.iops')
    // An unlimited volume next to it is not held back.
    assert.equal(s.admit('v2', 'write', 4096), false)
  })

  it('limits reads and writes separately and throughput in bytes', async () => {
    const clock = new ManualClock()
    const s = new QoSScheduler({ clock })
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { read_iops: 100, write_throughput_mbps: 1 } }), 'volume')
    const reads = load(s, clock, 'v', { depth: 4, until: 5000, kind: 'read' })
    const writes = load(s, clock, 'v', { depth: 4, until: 5000, kind: 'write', bytes: 100_000 })
    await clock.advance(5000)
    assert.ok(Math.abs(rate(reads.counted, 1, 5) - 100) <= 3, `reads ${rate(reads.counted, 1, 5)}/s`)
    // 1 MB/s of 100 kB writes: 10 per second.
    assert.ok(Math.abs(rate(writes.counted, 1, 5) - 10) <= 1, `writes ${rate(writes.counted, 1, 5)}/s`)
  })

  it('bursts at the multiplier while credits last, and reports the credits', async () => {
    const clock = new ManualClock()
    const s = new QoSScheduler({ clock })
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 100 }, burstable: { duration_seconds: 5, iops_multiplier: 2 } }), 'volume')
    assert.equal(s.metrics('v').burstCredits?.iops, 500)
    assert.equal(s.metrics('v').burstCreditCapacity?.iops, 500)
    const run = load(s, clock, 'v', { depth: 8, until: 12_000 })
    await clock.advance(12_000)
    assert.ok(Math.abs(rate(run.counted, 0, 4) - 200) <= 6, `burst ${rate(run.counted, 0, 4)}/s`)
    assert.ok(Math.abs(rate(run.counted, 7, 12) - 100) <= 3, `after the burst ${rate(run.counted, 7, 12)}/s`)
    await clock.advance(1000)
    const spent = s.metrics('v').burstCredits?.iops ?? 99
    assert.ok(spent < 100, `credits left after the burst and one idle second: ${spent}`)
    await clock.advance(3000)
    const earned = (s.metrics('v').burstCredits?.iops ?? 0) - spent
    assert.ok(Math.abs(earned - 300) < 2, `3 idle seconds earned ${earned} credits at a 100 IOPS limit`)
  })

  it('a policy change keeps the level of a limit the old policy had: no fresh burst from re-setting it', async () => {
    const clock = new ManualClock()
    const s = new QoSScheduler({ clock })
    const policy = parseQoSPolicy({ limits: { iops: 100 }, burstable: { duration_seconds: 5, iops_multiplier: 2 } })
    s.setPolicy('v', 'v', policy, 'volume')
    const run = load(s, clock, 'v', { depth: 8, until: 8000 })
    await clock.advance(8000)
    assert.ok((s.metrics('v').burstCredits?.iops ?? 500) < 10, 'the burst credits are spent')
    // The same limits again, and then a higher burst multiplier: the credits stay spent.
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 100 }, burstable: { duration_seconds: 5, iops_multiplier: 2 }, weight: 2 }), 'volume')
    assert.ok((s.metrics('v').burstCredits?.iops ?? 500) < 10, `credits after re-setting the policy: ${s.metrics('v').burstCredits?.iops}`)
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 100 }, burstable: { duration_seconds: 10, iops_multiplier: 3 } }), 'volume')
    assert.ok((s.metrics('v').burstCredits?.iops ?? 2000) < 10, 'a bigger burst allowance does not fill up either')
    assert.equal(s.metrics('v').burstCreditCapacity?.iops, 2000)
    const after = load(s, clock, 'v', { depth: 8, from: 8000, until: 11_000 })
    await clock.advance(3000)
    assert.ok(rate(after.counted, 9, 11) <= 105, `right after the change the volume runs at its limit, not a burst: ${rate(after.counted, 9, 11)}/s`)
    assert.ok(run.done > 0)
    // A limit the old policy did not have starts full.
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 100, throughput_mbps: 1 }, burstable: { duration_seconds: 5, iops_multiplier: 2, throughput_multiplier: 2 } }), 'volume')
    assert.equal(s.metrics('v').burstCredits?.throughputMB, 5)
    assert.ok((s.metrics('v').burstCredits?.iops ?? 500) < 400, 'the IOPS credits are only what 3 s at the limit left over')
  })

  it('applies a changed policy to operations already waiting', async () => {
    const clock = new ManualClock()
    const s = new QoSScheduler({ clock })
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 1 } }), 'volume')
    // The load ends soon after the last check: with no policy, 50 workers at 1 ms each would
    // otherwise run millions of operations through the manual clock.
    const run = load(s, clock, 'v', { depth: 50, until: 2_500 })
    await clock.advance(2000)
    const before = run.done
    assert.ok(before <= 3, `${before} ops at 1 IOPS in 2 s`)
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 10_000 } }), 'volume')
    await clock.advance(100)
    assert.ok(run.done - before >= 40, `${run.done - before} waiting ops went once the limit rose`)
    s.setPolicy('v', 'v', undefined, 'none')
    assert.equal(s.metrics('v').source, 'none')
    s.close()
    await clock.advance(1_000)
  })

  it('gives a guaranteed volume its floor against a heavier neighbour, which fair share alone does not', async () => {
    const measure = async (guarantee: boolean): Promise<{ quiet: number, noisy: number, met: boolean | undefined }> => {
      const clock = new ManualClock()
      const s = new QoSScheduler({ clock, capacityIops: 1000, maxInFlight: 256 })
      s.setPolicy('noisy', 'noisy', parseQoSPolicy({ weight: 10 }), 'volume')
      s.setPolicy('quiet', 'quiet', parseQoSPolicy(guarantee ? { guarantees: { iops: 400 } } : { weight: 1 }), 'volume')
      const noisy = load(s, clock, 'noisy', { depth: 64, until: 10_000 })
      const quiet = load(s, clock, 'quiet', { depth: 4, until: 10_000 })
      await clock.advance(10_000)
      return { quiet: rate(quiet.counted, 2, 10), noisy: rate(noisy.counted, 2, 10), met: s.metrics('quiet').guarantee?.met }
    }
    const fair = await measure(false)
    assert.ok(fair.quiet < 150, `without a guarantee the 1:10 weighted volume gets ${fair.quiet}/s`)
    assert.ok(fair.quiet + fair.noisy <= 1010, 'the declared capacity is never exceeded')
    const floor = await measure(true)
    assert.ok(floor.quiet >= 400, `with a 400 IOPS guarantee it gets ${floor.quiet}/s`)
    assert.ok(floor.quiet + floor.noisy <= 1010 && floor.noisy > 500, `the neighbour keeps the rest: ${floor.noisy}/s`)
    assert.equal(floor.met, true)
  })

  it('reports and announces a floor the node cannot give', async () => {
    const clock = new ManualClock()
    const missed: QoSGuaranteeMissedEvent[] = []
    const s = new QoSScheduler({ clock, capacityIops: 300 }, (event, payload) => { if (event === 'qos:guarantee-missed') missed.push(payload as QoSGuaranteeMissedEvent) })
    s.setPolicy('g', 'gold', parseQoSPolicy({ guarantees: { iops: 500 } }), 'volume')
    load(s, clock, 'g', { depth: 32, until: 5000 })
    await clock.advance(5000)
    const m = s.metrics('g')
    assert.equal(m.guarantee?.met, false)
    assert.ok((m.guarantee?.missedSeconds ?? 0) >= 3)
    assert.ok(missed.length >= 3)
    assert.equal(missed[0]?.volumeName, 'gold')
    assert.equal(missed[0]?.guaranteedIops, 500)
    assert.ok(Math.abs((missed.at(-1)?.achievedIops ?? 0) - 300) < 15, `achieved ${missed.at(-1)?.achievedIops}`)
  })

  it('serves an operation near its latency target ahead of fair-share order', async () => {
    const clock = new ManualClock()
    const s = new QoSScheduler({ clock, maxInFlight: 1 })
    s.setPolicy('bulk', 'bulk', parseQoSPolicy({ weight: 100 }), 'volume')
    s.setPolicy('db', 'db', parseQoSPolicy({ limits: { latency_ms: 20 } }), 'volume')
    load(s, clock, 'bulk', { depth: 32, until: 5000, serviceMs: 2 })
    const waits: number[] = []
    const probe = async (): Promise<void> => {
      while (clock.now() < 4000) {
        const asked = clock.now()
        const admitted = s.admit('db', 'read', 4096)
        const held = typeof admitted === 'boolean' ? admitted : await admitted
        waits.push(clock.now() - asked)
        await new Promise<void>((resolve) => { clock.setTimeout(resolve, 2) })
        if (held) s.release()
        await new Promise<void>((resolve) => { clock.setTimeout(resolve, 50) })
      }
    }
    void probe()
    await clock.advance(5000)
    assert.ok(waits.length > 50)
    // Weight 100 to 1 would make db wait behind ~32 bulk operations (64 ms); the target caps it.
    assert.ok(Math.max(...waits.slice(5)) <= 14, `longest wait ${Math.max(...waits.slice(5))} ms`)
  })

  it('a latency target reorders within fair share: a busy volume with one does not starve the others', async () => {
    const measure = async (other: object): Promise<{ target: number, other: number }> => {
      const clock = new ManualClock()
      const s = new QoSScheduler({ clock, capacityIops: 400 })
      s.setPolicy('a', 'a', parseQoSPolicy({ limits: { latency_ms: 20 } }), 'volume')
      s.setPolicy('b', 'b', parseQoSPolicy(other), 'volume')
      const a = load(s, clock, 'a', { depth: 16, until: 5000, kind: 'read' })
      const b = load(s, clock, 'b', { depth: 16, until: 5000, kind: 'read' })
      await clock.advance(5000)
      s.close()
      return { target: rate(a.counted, 1, 5), other: rate(b.counted, 1, 5) }
    }
    // Both queues always full: equal weights split the 400 operations a second evenly (the target
    // alone took ~400 of them), and a weight of 100 gives its volume most of them.
    const even = await measure({ weight: 1 })
    assert.ok(Math.abs(even.target - even.other) <= 40, `equal weights: the volume with the target got ${even.target}/s, the other ${even.other}/s`)
    const heavy = await measure({ weight: 100 })
    assert.ok(heavy.other >= 300 && heavy.target <= 100, `weight 100 against a target: ${heavy.other}/s against ${heavy.target}/s`)
  })

  it('sleeps at most the longest timer Node takes when a tiny limit means a wait of years, and checks again on waking', async () => {
    const clock = new ManualClock()
    const delays: number[] = []
    const recording = { now: clock.now, clearTimeout: clock.clearTimeout, setTimeout: (fn: () => void, ms: number): unknown => { delays.push(ms); return clock.setTimeout(fn, ms) } }
    const s = new QoSScheduler({ clock: recording })
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { write_iops: 1e-7 } }), 'volume')
    assert.equal(s.admit('v', 'write', 4096), false)
    let admitted = false
    void (async () => { await s.admit('v', 'write', 4096); admitted = true })()
    await clock.advance(0)
    // Node runs a setTimeout of more than 2^31-1 ms after 1 ms: the limiter would spin.
    assert.deepEqual(delays, [2 ** 31 - 1])
    await clock.advance(2 ** 31)
    assert.equal(admitted, false, 'a capped timer does not let the operation through early')
    assert.equal(delays.length, 2)
    assert.equal(delays[1], 2 ** 31 - 1)
    s.setPolicy('v', 'v', undefined, 'none')
    await clock.advance(0)
    assert.equal(admitted, true)
  })

  it('refuses bad node options', () => {
    invalid(() => new QoSScheduler({ maxInFlight: 0 }), 'maxInFlight')
    invalid(() => new QoSScheduler({ capacityIops: -1 }), 'capacityIops')
    invalid(() => new QoSScheduler({ capacity: 5 } as never), '"capacity"')
  })
})
