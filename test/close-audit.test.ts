// close() called through a principal's handle closes the whole instance, so it takes `admin`; an
// allowed close is in the audit log (written before the log closes with the instance), a denied
// one too, and the denied caller leaves the instance open. Real classic-level metadata on disk.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { rejectsWithCode } from './support/assertions.js'

const root = await mkdtemp(join(tmpdir(), 'galleon-close-audit-'))
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('close() by a principal', () => {
  it('is denied without admin and audited, and with admin closes the instance and is audited before', async () => {
    const storagePath = join(root, 'data')
    const g = await GalleonFS.open({ storagePath })
    await g.createAccessPolicy({ name: 'ops', principals: ['role:ops'], verbs: ['admin'] })
    await g.createAccessPolicy({ name: 'users', principals: ['role:user'], verbs: ['volume:*'], namespaces: ['team'] })
    const user = g.as({ id: 'carol', roles: ['user'], namespace: 'team' })
    await assert.rejects(user.close(), rejectsWithCode('PERMISSION_DENIED'))
    assert.equal(g.closed, false, 'the instance stays open')
    await g.createVolume({ name: 'still-open', sizeBytes: '1M' })
    const admin = g.as({ id: 'dave', roles: ['ops'] })
    await admin.close()
    assert.equal(g.closed, true)
    await admin.close() // again: closed already, nothing more to record
    const reopened = await GalleonFS.open({ storagePath })
    try {
      const entries = await reopened.queryAuditLog({ action: 'close' })
      assert.deepEqual(entries.map((e) => [e.principal, e.verb, e.object, e.result, e.code]), [
        ['carol', 'admin', 'instance', 'denied', 'PERMISSION_DENIED'],
        ['dave', 'admin', 'instance', 'ok', undefined]
      ])
      assert.match(String(entries[1]?.details?.recorded), /before the call/)
      assert.equal((await reopened.verifyAuditLog()).ok, true)
    } finally {
      await reopened.close()
    }
  })
})
