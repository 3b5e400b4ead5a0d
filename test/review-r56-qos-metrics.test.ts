// Review r56 of QoS, metrics and errors: hostile policy inputs (objects that are not plain ones,
// weights far below 1) and what they did to the volume's policy and to other volumes' share.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS, type BlockStore } from '../src/index.js'
import { MemoryBlockStore } from '../backends/memory/index.js'
import { parseQoSPolicy } from '../src/qos/policy.js'
import { QoSScheduler } from '../src/qos/scheduler.js'
import { ManualClock } from './support/manual-clock.js'
import { until } from './support/wait.js'

/** Runs `depth` workers of one volume until `until` (clock ms), each operation taking 1 ms; counts those admitted. */
function load (s: QoSScheduler, clock: ManualClock, volumeId: string, depth: number, until: number): { done: number } {
  const out = { done: 0 }
  const worker = async (): Promise<void> => {
    while (clock.now() < until) {
      const admitted = s.admit(volumeId, 'write', 4096)
      const held = typeof admitted === 'boolean' ? admitted : await admitted
      if (clock.now() >= until) { if (held) s.release(); return }
      out.done++
      await new Promise<void>((resolve) => { clock.setTimeout(resolve, 1) })
      if (held) s.release()
    }
  }
  for (let i = 0; i < depth; i++) void worker()
  return out
}

describe('review r56: QoS policy inputs', () => {
  it('refuses a policy, or a part of one, that is not a plain object (a Map, a Date) instead of taking it as empty', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createStorageClass({ name: 'metered', parameters: { qos_limit_iops: '100' } })
      await g.createVolume({ name: 'db', sizeBytes: '1M', storageClass: 'metered' })
      const bad: unknown[] = [
        new Map([['limits', { iops: 10 }]]),
        new Date(),
        { limits: new Map([['iops', 10]]) },
        { limits: { iops: 10 }, guarantees: new Map([['iops', 5]]) }
      ]
      for (const policy of bad) {
        // Taken as {}, the volume's own empty policy replaced its class's 100 IOPS limit: no limit at all.
        await assert.rejects(g.setQoSPolicy('db', policy as never), { code: 'INVALID_ARGUMENT' }, `setQoSPolicy with ${String(policy)}`)
        await assert.rejects(g.createVolume({ name: 'other', sizeBytes: '1M', qos: policy as never }), { code: 'INVALID_ARGUMENT' })
      }
      assert.deepEqual(await g.getQoSPolicy('db'), { policy: { limits: { iops: 100 } }, source: 'storage-class' })
      assert.equal((await g.listVolumes()).length, 1)
      // Plain objects without a prototype (as some parsers make them) are still policies.
      const bare = Object.assign(Object.create(null) as object, { limits: Object.assign(Object.create(null) as object, { iops: 50 }) })
      assert.deepEqual(await g.setQoSPolicy('db', bare as never), { policy: { limits: { iops: 50 } }, source: 'volume' })
    } finally {
      await g.close()
    }
  })

  it('a volume with a tiny weight does not take the fair share of two others with equal weights', async () => {
    for (const weight of [1, 1e-300]) {
      const clock = new ManualClock()
      const s = new QoSScheduler({ clock, capacityIops: 1000 })
      s.setPolicy('tiny', 'tiny', parseQoSPolicy({ weight }), 'volume')
      s.setPolicy('b', 'b', parseQoSPolicy({ weight: 1 }), 'volume')
      s.setPolicy('c', 'c', parseQoSPolicy({ weight: 1 }), 'volume')
      // The tiny-weight volume queues a little work alone, then b and c compete for the node.
      load(s, clock, 'tiny', 16, 100)
      await clock.advance(200)
      const b = load(s, clock, 'b', 16, 5200)
      const c = load(s, clock, 'c', 16, 5200)
      await clock.advance(5000)
      s.close()
      // Equal weights: equal shares (within 10% of what both got), whatever a third volume's weight was.
      assert.ok(Math.abs(b.done - c.done) <= 0.1 * (b.done + c.done), `after a volume of weight ${weight} ran, b got ${b.done} operations and c ${c.done}`)
    }
  })

  it('calls refused for their range count nowhere in a latency target\'s figures either: they cannot hide a miss', async () => {
    const clock = new ManualClock()
    // A memory store whose reads wait while `held` is set: a read that takes a second of QoS time.
    const inner = new MemoryBlockStore()
    let held: Promise<void> | undefined
    let reading = 0
    const store = new Proxy(inner, {
      get (target, prop) {
        if (prop === 'get' || prop === 'getMany') {
          return async (...args: unknown[]) => {
            reading++
            if (held !== undefined) await held
            return await (Reflect.get(target, prop, target) as (...a: unknown[]) => Promise<unknown>).apply(target, args)
          }
        }
        const value = Reflect.get(target, prop, target) as unknown
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value
      }
    }) as BlockStore
    const g = await GalleonFS.open({ inMemory: true, blockStore: store, qos: { clock } })
    try {
      await g.createVolume({ name: 'db', sizeBytes: '1M', qos: { limits: { latencyMs: 20 } } })
      await g.writeBlock('db', 0, new Uint8Array(4096).fill(1))
      let release!: () => void
      held = new Promise<void>((resolve) => { release = resolve })
      const before = reading
      const slow = g.readBlock('db', 0)
      await until('the read reached the store', () => reading > before)
      await clock.advance(1000)
      held = undefined
      release()
      await slow
      const missed = (await g.getVolumeMetrics('db')).qos
      assert.equal(missed?.latencyTargetMet, false, `one read of a second against a 20 ms target: p99 ${missed?.latencyP99Ms} ms`)
      // A client probing past the end (or with bad arguments) many times: each call is refused at once.
      const block = new Uint8Array(4096)
      for (let i = 0; i < 50; i++) {
        for (const call of [g.read('db', 1 << 20, 4096), g.readBlock('db', 256), g.writeBlock('db', 256, block), g.write('db', -1, block), g.trim('db', 1 << 20, 4096)]) {
          await assert.rejects(call, (err: { code?: string }) => err.code === 'OUT_OF_RANGE' || err.code === 'INVALID_ARGUMENT')
        }
      }
      const after = await g.getVolumeMetrics('db')
      assert.equal(after.readOps + after.writeOps + after.trimOps, 2, 'the refused calls count nowhere in the volume\'s metrics')
      assert.equal(after.qos?.latencyTargetMet, false, `the one read that ran still missed the target; p99 now ${after.qos?.latencyP99Ms} ms`)
    } finally {
      held = undefined
      await g.close()
    }
  })
})
