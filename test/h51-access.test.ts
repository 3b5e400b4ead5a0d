// README "Access control and audit": what a principal's handle may do, what it learns when denied,
// and what the audit log records.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'

describe('README Access control and audit', () => {
  it('denials name verb and volume and hide existence; handles stay what they are; admin guards instance-wide calls; the log records', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'h51-access-'))
    const backups = await mkdtemp(join(tmpdir(), 'h51-access-backups-'))
    const other = await mkdtemp(join(tmpdir(), 'h51-access-other-'))
    const g = await GalleonFS.open({ storagePath: dir, backupTarget: backups })
    try {
      const alice = g.as({ id: 'alice', roles: ['tenant-a'], namespace: 'tenant-a' })
      const bob = g.as({ id: 'bob', groups: ['team-b'], namespace: 'tenant-b' })
      // No policy stored: everything is allowed, even instance-wide calls.
      await alice.createVolume({ name: 'db', sizeBytes: '1M' })
      await alice.metricsText()
      await g.createAccessPolicy({ name: 'tenant-a', principals: ['role:tenant-a'], verbs: ['volume:*', 'snapshot:*', 'backup:*'], namespaces: ['tenant-a'] })
      await g.createAccessPolicy({ name: 'tenant-b', principals: ['group:team-b'], verbs: ['volume:*', 'backup:*'], namespaces: ['tenant-b'] })
      await bob.createVolume({ name: 'db', sizeBytes: '1M' })
      const aliceDb = await alice.getVolume('db')
      assert.equal(aliceDb.namespace, 'tenant-a')
      const backup = await alice.createBackup('db', { strategy: 'full' })

      // Denied, naming the verb and the volume; a missing volume of another namespace is denied alike.
      await assert.rejects(bob.readBlock('tenant-a/db', 0), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'PERMISSION_DENIED')
        assert.match(err.message, /volume:read/)
        assert.match(err.message, /tenant-a\/db/)
        return true
      })
      await assert.rejects(bob.readBlock('tenant-a/nothing-here', 0), { code: 'PERMISSION_DENIED' })
      await assert.rejects(bob.readBlock(aliceDb.id, 0), { code: 'PERMISSION_DENIED' })
      await assert.rejects(bob.readBlock(randomUUID(), 0), { code: 'PERMISSION_DENIED' }, 'an id that names nothing is checked as every namespace\'s')
      await assert.rejects(bob.getBackup(backup.id), { code: 'PERMISSION_DENIED' })
      await assert.rejects(bob.getBackup(randomUUID()), { code: 'PERMISSION_DENIED' })
      assert.deepEqual((await bob.listBackups()).map((b) => b.id), [], 'listings show only what the caller may read')
      assert.deepEqual((await alice.listBackups()).map((b) => b.id), [backup.id])
      await assert.rejects(bob.cloneVolume('tenant-a/db', 'stolen'), { code: 'PERMISSION_DENIED' })
      // bob has no snapshot verbs in his own namespace either.
      await assert.rejects(bob.createSnapshot('db', 's'), { code: 'PERMISSION_DENIED' })

      // Instance-wide calls take admin.
      await assert.rejects(alice.metricsText(), { code: 'PERMISSION_DENIED' })
      await assert.rejects(alice.createStorageClass({ name: 'x' }), { code: 'PERMISSION_DENIED' })
      await assert.rejects(alice.createAccessPolicy({ name: 'mine', principals: ['*'], verbs: ['*'] }), { code: 'PERMISSION_DENIED' })
      await assert.rejects(alice.queryAuditLog(), { code: 'PERMISSION_DENIED' })
      // Backup policies are instance-wide: backup:schedule on every namespace.
      await assert.rejects(alice.createBackupPolicy({ name: 'p', schedule: '0 2 * * *', retention: { daily: 1 }, volumes: ['tenant-a/db'] }), { code: 'PERMISSION_DENIED' })
      // Naming another backup target takes admin.
      await assert.rejects(alice.createBackup('db', { strategy: 'full', target: other }), { code: 'PERMISSION_DENIED' })

      // A handle cannot become another principal, listen, or close the instance without admin.
      assert.throws(() => alice.as({ id: 'root' }), { code: 'PERMISSION_DENIED' })
      await assert.rejects(alice.runAs({ id: 'root' }, async () => 1), { code: 'PERMISSION_DENIED' })
      assert.throws(() => alice.on('volume:created', () => {}), { code: 'PERMISSION_DENIED' })
      await assert.rejects(alice.close(), { code: 'PERMISSION_DENIED' })
      assert.equal(g.closed, false)
      assert.throws(() => g.as({ id: 'application' }), { code: 'INVALID_ARGUMENT' })
      assert.throws(() => g.as({ id: 'system' }), { code: 'INVALID_ARGUMENT' })

      // The audit log: mutations and denials, not allowed reads; prefix queries; intact chain.
      await alice.writeBlock('db', 0, new Uint8Array([1]))
      await alice.readBlock('db', 0)
      const entries = await g.queryAuditLog({ object: 'volume:tenant-a/*' })
      assert.ok(entries.some((e) => e.principal === 'alice' && e.action === 'createVolume' && e.result === 'ok'))
      assert.ok(entries.some((e) => e.principal === 'bob' && e.action === 'readBlock' && e.result === 'denied'))
      assert.ok(!entries.some((e) => e.principal === 'alice' && (e.action === 'readBlock' || e.action === 'writeBlock')), 'allowed reads and writes are not logged')
      assert.ok(entries.every((e) => e.object.startsWith('volume:tenant-a/')))
      assert.ok((await g.queryAuditLog({ principal: 'bob', result: 'denied' })).length >= 5)
      assert.equal((await g.verifyAuditLog()).ok, true)
      const head = await g.auditHead()
      assert.equal((await g.verifyAuditLog(head)).ok, true)

      // Deleting the last policy turns enforcement off again.
      await g.deleteAccessPolicy('tenant-a')
      await g.deleteAccessPolicy('tenant-b')
      assert.equal((await bob.readBlock('tenant-a/db', 0))[0], 1)
    } finally {
      if (!g.closed) await g.close()
      for (const d of [dir, backups, other]) await rm(d, { recursive: true, force: true })
    }
  })
})
