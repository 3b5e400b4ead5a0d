// Review r58: queryAuditLog took a filter with a field it does not know (a typo such as
// `{ princpal: 'bob' }`, or `verb`, which entries carry but the filter does not) and answered every
// entry, as if unfiltered: an auditor reading "bob's denials" got everyone's. Unknown fields are
// refused with INVALID_ARGUMENT naming the field, as createVolume and access policies refuse theirs.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { tempDirs } from './support/temp-dir.js'

const tempDir = tempDirs('review-r58-audit-query-')

describe('review r58: queryAuditLog filter fields', () => {
  it('an unknown field is refused naming it; the known ones still filter', async () => {
    const g = await GalleonFS.open({ storagePath: join(await tempDir(), 'data') })
    try {
      await g.createAccessPolicy({ name: 'a', principals: ['user:alice'], verbs: ['volume:*'], namespaces: ['a'] })
      await g.as({ id: 'alice', namespace: 'a' }).createVolume({ name: 'v', sizeBytes: '1M', storageClass: 'fast-local-ssd' })
      await assert.rejects(g.as({ id: 'bob', namespace: 'b' }).createVolume({ name: 'v', sizeBytes: '1M' }), { code: 'PERMISSION_DENIED' })

      for (const filter of [{ princpal: 'bob' }, { verb: 'admin' }, { principal: 'bob', reslt: 'denied' }]) {
        await assert.rejects(g.queryAuditLog(filter as never), (err: Error & { code?: string }) => {
          assert.equal(err.code, 'INVALID_ARGUMENT')
          assert.match(err.message, new RegExp(`"${Object.keys(filter).find((k) => !['principal'].includes(k)) ?? ''}"`))
          return true
        }, JSON.stringify(filter))
      }
      assert.deepEqual((await g.queryAuditLog({ principal: 'bob', result: 'denied', limit: 10 })).map((e) => [e.action, e.object]), [['createVolume', 'volume:b/v']])
      assert.equal((await g.queryAuditLog({ from: 0, to: Date.now() + 1000, action: 'createVolume', object: 'volume:*' })).length, 2)
    } finally {
      await g.close()
    }
  })
})
