// Review r71: mountVolume's refused arguments (d13) are checked against what the call asked, as a
// good call is. A caller asking a read-only mount through the option word `ro` ({ options: ['ro'] })
// is checked for reading only when its arguments are good, but a typo beside it was checked as a
// read-write mount: a principal allowed to read the volume (and to mount it so) was told
// PERMISSION_DENIED instead of what is wrong with its call, and a denial was recorded.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS, type Principal } from '../src/index.js'

const reader: Principal = { id: 'rita', namespace: 'tenant-a' }

describe('review r71: a refused mount is checked on the mode it asked', () => {
  it('a reader asking { options: [\'ro\'] } with a bad option is told INVALID_ARGUMENT, as before d13', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createAccessPolicy({ name: 'read-a', principals: ['user:rita'], verbs: ['volume:read'], namespaces: ['tenant-a'] })
      await g.createVolume({ namespace: 'tenant-a', name: 'v', sizeBytes: '1M' })
      const r = g.as(reader)
      // The good call is allowed: it asks a read-only mount.
      await r.mounts.mountVolume('v', '/r71/a', { options: ['ro'] })
      assert.equal(g.mounts.listMounts().find((m) => m.path === '/r71/a')?.readOnly, true)
      const since = (await g.auditHead()).seq
      await assert.rejects(r.mounts.mountVolume('v', '/r71/b', { options: ['ro'], readonly: true } as never), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(r.mounts.mountVolume('v', '/r71/b', { options: ['rw', 'ro'], sync: 'yes' } as never), { code: 'INVALID_ARGUMENT' })
      // Asking read-write, it is denied whatever else it passed.
      await assert.rejects(r.mounts.mountVolume('v', '/r71/b', { options: ['ro', 'rw'], readonly: true } as never), { code: 'PERMISSION_DENIED' })
      const entries = (await g.queryAuditLog({ principal: 'rita', limit: 100 })).filter((e) => e.seq > since)
      assert.deepEqual(entries.map((e) => [e.action, e.result, e.code]), [
        ['mountVolume', 'failed', 'INVALID_ARGUMENT'],
        ['mountVolume', 'failed', 'INVALID_ARGUMENT'],
        ['mountVolume', 'denied', 'PERMISSION_DENIED']
      ])
      assert.equal(g.mounts.listMounts().length, 1)
    } finally {
      await g.close()
    }
  })
})
