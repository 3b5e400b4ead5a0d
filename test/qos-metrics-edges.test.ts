// Edge cases of QoS and metrics (found in an audit): policy field names, charges of refused reads,
// the limit named by qos:throttled, disabled bursting, policy changes for queued operations, and
// the latency-target families of the Prometheus text. Manual clocks only: no timing thresholds.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS } from '../src/index.js'
import { GalleonError } from '../src/errors.js'
import { parseQoSPolicy, qosFromParameters } from '../src/qos/policy.js'
import { QoSScheduler, type QoSThrottledEvent } from '../src/qos/scheduler.js'
import { ManualClock, settle } from './support/manual-clock.js'

function invalid (fn: () => unknown, mention: string): void {
  assert.throws(fn, (err: unknown) => err instanceof GalleonError && err.code === 'INVALID_ARGUMENT' && err.message.includes(mention))
}

describe('QoS and metrics edge cases', () => {
  it('refuses policy fields named like inherited object properties (constructor, toString, __proto__)', () => {
    invalid(() => parseQoSPolicy({ limits: { constructor: 5 } }), 'constructor')
    invalid(() => parseQoSPolicy({ limits: { toString: 100 } }), 'toString')
    invalid(() => parseQoSPolicy({ guarantees: { valueOf: 3 } }), 'valueOf')
    invalid(() => parseQoSPolicy(JSON.parse('{"limits":{"__proto__":5}}')), '__proto__')
    invalid(() => parseQoSPolicy({ limits: { iops: 10 }, burstable: { duration_seconds: 5, hasOwnProperty: 2 } }), 'hasOwnProperty')
  })

  it('a read refused for its length charges nothing: it neither jams the volume\'s limit nor the node\'s capacity', async () => {
    const clock = new ManualClock()
    const g = await GalleonFS.open({ inMemory: true, qos: { clock, capacityMBps: 100 } })
    try {
      await g.createVolume({ name: 'limited', sizeBytes: '1M', qos: { limits: { throughputMBps: 1 } } })
      await g.createVolume({ name: 'other', sizeBytes: '1M' })
      // Not awaited one by one: without the fix, the first leaves a debt the others wait behind for good.
      const refused = Promise.all([Infinity, 2 ** 40, 2 * 1024 * 1024].map(async (length) => await g.read('limited', 0, length).then(() => 'read', (err: GalleonError) => err.code)))
      let limitedDone = false
      let otherDone = false
      void g.read('limited', 0, 4096).then(() => { limitedDone = true })
      void g.read('other', 0, 4096).then(() => { otherDone = true })
      // 4 KB at 1 MB/s and at the node's 100 MB/s need milliseconds; a minute is plenty.
      for (let i = 0; i < 60 && !(limitedDone && otherDone); i++) await clock.advance(1000)
      assert.ok(otherDone, 'a read of another volume passed the node\'s capacity')
      assert.ok(limitedDone, 'a read of the limited volume passed its limit')
      assert.equal((await g.getVolumeMetrics('limited')).qos?.throttledQueue, 0)
      assert.deepEqual(await refused, ['INVALID_ARGUMENT', 'INVALID_ARGUMENT', 'OUT_OF_RANGE'])
    } finally {
      await g.close()
    }
  })

  it('qos:throttled names the limit that holds the operation: a trim waits for IOPS, not for a throughput debt it does not pay', async () => {
    const clock = new ManualClock()
    const events: QoSThrottledEvent[] = []
    const s = new QoSScheduler({ clock }, (event, payload) => { if (event === 'qos:throttled') events.push(payload as QoSThrottledEvent) })
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { iops: 10, throughputMBps: 1 } }), 'volume')
    // A 4 MB write goes at once (a full bucket admits a large cost) and leaves ~4 s of throughput debt.
    assert.equal(s.admit('v', 'write', 4_000_000), false)
    // A trim costs an operation and no bytes: it waits ~100 ms for the IOPS limit only.
    const trim = s.admit('v', 'write', 0)
    assert.ok(trim instanceof Promise)
    assert.equal(events.length, 1)
    assert.equal(events[0]?.limit, 'limits.iops')
    assert.ok((events[0]?.waitMs ?? 0) <= 100, `waitMs ${events[0]?.waitMs}`)
    await clock.advance(150)
    assert.equal(await trim, false)
  })

  it('accepts burstable: { enabled: false } without the duration that only bursting needs', () => {
    const policy = parseQoSPolicy({ limits: { iops: 100 }, burstable: { enabled: false } })
    assert.equal(policy.limits?.iops, 100)
    assert.notEqual(policy.burstable?.enabled, true)
    const fromClass = qosFromParameters({ qos_limit_iops: '100', qos_burst_enabled: 'false' })
    assert.equal(fromClass?.limits?.iops, 100)
    assert.notEqual(fromClass?.burstable?.enabled, true)
    // Enabled bursting still needs its duration.
    invalid(() => parseQoSPolicy({ limits: { iops: 100 }, burstable: { enabled: true } }), 'duration_seconds')
  })

  it('a guarantee removed by a policy change no longer puts the volume\'s waiting operations first', async () => {
    const clock = new ManualClock()
    const s = new QoSScheduler({ clock, capacityIops: 10, maxInFlight: 1 })
    s.setPolicy('a', 'a', parseQoSPolicy({ guarantees: { iops: 8 } }), 'volume')
    s.setPolicy('b', 'b', parseQoSPolicy({ weight: 1 }), 'volume')
    const served: string[] = []
    const submit = (volume: string): void => {
      const admitted = s.admit(volume, 'write', 4096)
      void Promise.resolve(admitted).then((held) => { served.push(volume); if (held) s.release() })
    }
    // Drain the capacity bucket's smoothing depth, then queue 40 operations of each volume.
    for (let i = 0; i < 40; i++) { submit('a'); submit('b') }
    await settle()
    // Both now share the node equally: the guarantee is gone, for the waiting operations too.
    s.setPolicy('a', 'a', parseQoSPolicy({ weight: 1 }), 'volume')
    const before = served.length
    await clock.advance(4000)
    const after = served.slice(before)
    const a = after.filter((v) => v === 'a').length
    const b = after.filter((v) => v === 'b').length
    assert.ok(after.length >= 30, `${after.length} operations served in 4 s at 10 IOPS`)
    assert.ok(Math.abs(a - b) <= 2, `after the guarantee went: a ${a}, b ${b}`)
  })

  it('metricsText has the latency target figures getVolumeMetrics().qos reports, as galleonfs_qos_* families', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'db', sizeBytes: '1M', qos: { limits: { latencyMs: 50 } } })
      await g.writeBlock('db', 0, new Uint8Array(4096))
      const qos = (await g.getVolumeMetrics('db')).qos
      assert.equal(qos?.latencyTargetMs, 50)
      const text = await g.metricsText()
      const sample = (name: string): string | undefined => text.split('\n').find((line) => line.startsWith(`${name}{`) && line.includes('volume_name="db"'))
      assert.match(sample('galleonfs_qos_latency_target_seconds') ?? '', / 0\.05$/)
      assert.ok(sample('galleonfs_qos_latency_p99_seconds') !== undefined, 'p99 family')
      assert.match(sample('galleonfs_qos_latency_target_met') ?? '', / [01]$/)
      assert.equal(text.split('\n').filter((line) => line === '# TYPE galleonfs_qos_latency_target_seconds gauge').length, 1)
    } finally {
      await g.close()
    }
  })
})
