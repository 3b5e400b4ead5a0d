// Review r71 of d13's audit of refused arguments: a name longer than an audit entry keeps (256
// characters) was checked against the policies as its first 256 characters, so a policy on a
// suffix (`*-dev`) covered a name that does not end so, and its principal was told the argument's
// error (recorded as a failed call on a volume it never named) where any other name outside its
// policy is PERMISSION_DENIED. And a reference naming no volume (or a snapshot name) was written
// into the entry whole, whatever its length. Real classic-level metadata on disk.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { GalleonFS, type Principal } from '../src/index.js'
import { tempDirs } from './support/temp-dir.js'

const tempDir = tempDirs('r71-refused-args-')
const carol: Principal = { id: 'carol', roles: ['dev'], namespace: 'tenant-c' }

let g: GalleonFS
before(async () => {
  const dir = await tempDir()
  g = await GalleonFS.open({ storagePath: join(dir, 'data') })
  // carol may only touch volumes whose names end in -dev.
  await g.createAccessPolicy({ name: 'dev', principals: ['role:dev'], verbs: ['volume:*', 'snapshot:*'], namespaces: ['tenant-c'], volumes: ['*-dev'] })
  await g.as(carol).createVolume({ name: 'db-dev', sizeBytes: '64K', storageClass: 'fast-local-ssd' })
})
after(async () => { await g.close() })

describe('review r71: a refused name longer than an entry keeps is checked as every name', () => {
  // Its first 256 characters end in -dev; the name itself ends in -prod.
  const long = 'a'.repeat(252) + '-dev-prod'

  it('a principal whose policy covers only some names is denied, not told the name is bad', async () => {
    const since = (await g.auditHead()).seq
    const c = g.as(carol)
    await assert.rejects(c.createVolume({ name: long, sizeBytes: '64K' }), { code: 'PERMISSION_DENIED' })
    await assert.rejects(c.cloneVolume('db-dev', long), { code: 'PERMISSION_DENIED' })
    await assert.rejects(c.createSnapshot('db-dev', 'bad name!'), { code: 'INVALID_ARGUMENT' })
    const entries = (await g.queryAuditLog({ principal: 'carol', limit: 1000 })).filter((e) => e.seq > since)
    assert.deepEqual(entries.map((e) => [e.action, e.result, e.code]), [
      ['createVolume', 'denied', 'PERMISSION_DENIED'],
      ['cloneVolume', 'denied', 'PERMISSION_DENIED'],
      ['createSnapshot', 'failed', 'INVALID_ARGUMENT']
    ])
  })

  it('the application and a principal covering every name still get the argument\'s error', async () => {
    await assert.rejects(g.createVolume({ namespace: 'tenant-c', name: long, sizeBytes: '64K' }), { code: 'INVALID_ARGUMENT' })
    // erin may create any volume in tenant-c: a bad name there is hers to fix.
    await g.createAccessPolicy({ name: 'ops-c', principals: ['user:erin'], verbs: ['volume:*'], namespaces: ['tenant-c'] })
    await assert.rejects(g.as({ id: 'erin', namespace: 'tenant-c' }).createVolume({ name: long, sizeBytes: '64K' }), { code: 'INVALID_ARGUMENT' })
  })

  it('an entry keeps at most 256 characters of a reference that names nothing', async () => {
    // A refused call on a 5000-character reference wrote it whole (5016 characters of object),
    // each time: a loop of such calls filled the metadata disk 5 KiB a call.
    const since = (await g.auditHead()).seq
    const ref = 'y'.repeat(5000)
    await assert.rejects(g.deleteVolume(ref, { forse: true } as never), { code: 'INVALID_ARGUMENT' })
    await assert.rejects(g.deleteSnapshot('tenant-c/db-dev', 's'.repeat(5000), { forse: true } as never), { code: 'INVALID_ARGUMENT' })
    await assert.rejects(g.deleteVolume(ref), { code: 'VOLUME_NOT_FOUND' })
    const entries = (await g.queryAuditLog({ limit: 1000 })).filter((e) => e.seq > since)
    assert.deepEqual(entries.map((e) => [e.action, e.object]), [
      ['deleteVolume', `volume:default/${'y'.repeat(256)}`],
      ['deleteSnapshot', `snapshot:tenant-c/db-dev@${'s'.repeat(256)}`],
      ['deleteVolume', `volume:default/${'y'.repeat(256)}`]
    ])
  })
})
