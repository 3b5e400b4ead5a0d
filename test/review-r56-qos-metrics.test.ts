// Review r56 of QoS, metrics and errors: hostile policy inputs (objects that are not plain ones,
// weights far below 1) and what they did to the volume's policy and to other volumes' share.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS } from '../src/index.js'
import { parseQoSPolicy } from '../src/qos/policy.js'
import { QoSScheduler } from '../src/qos/scheduler.js'
import { ManualClock } from './support/manual-clock.js'

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
})
