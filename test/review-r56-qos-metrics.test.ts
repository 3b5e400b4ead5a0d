// Review r56 of QoS, metrics and errors: hostile policy inputs (objects that are not plain ones)
// and what they did to the volume's policy.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS } from '../src/index.js'

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

})
