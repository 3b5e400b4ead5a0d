// Calls refused for a bad argument are on the audit record like any other attempt (d13). Each call
// below checked its arguments before its access check, so the refusal left no entry, and a
// principal with no right to the volume was told INVALID_ARGUMENT: it could probe another tenant's
// names with bad arguments. Now: a permitted caller (and the application) still gets
// INVALID_ARGUMENT, recorded as `failed` with that code; a principal not allowed the call on what
// it names gets PERMISSION_DENIED, recorded as `denied`. Reads of data (openVolumeFile, read,
// listChangedBlocks) are logged only when denied, as before. Real classic-level metadata on disk.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { GalleonFS, type Principal } from '../src/index.js'
import { tempDirs } from './support/temp-dir.js'

const tempDir = tempDirs('d13-refused-args-')

const alice: Principal = { id: 'alice', roles: ['tenant-a'], namespace: 'tenant-a' }
const bob: Principal = { id: 'bob', roles: ['tenant-b'], namespace: 'tenant-b' }
const root: Principal = { id: 'root', roles: ['ops'] }

interface Case {
  /** The action its audit entry names. */
  action: string
  /** Who may make the call (alice for a tenant's call, root for an admin's). */
  permitted: Principal
  /** Whether an allowed call is audited (reads of data are not). */
  audited: boolean
  call: (h: GalleonFS) => Promise<unknown>
}

let g: GalleonFS
let backupId: string

before(async () => {
  const dir = await tempDir()
  g = await GalleonFS.open({ storagePath: join(dir, 'data'), backupTarget: join(dir, 'backups') })
  await g.createAccessPolicy({ name: 'tenant-a', principals: ['role:tenant-a'], verbs: ['volume:*', 'snapshot:*', 'backup:*'], namespaces: ['tenant-a'] })
  await g.createAccessPolicy({ name: 'tenant-b', principals: ['role:tenant-b'], verbs: ['volume:*', 'snapshot:*', 'backup:*'], namespaces: ['tenant-b'] })
  await g.createAccessPolicy({ name: 'ops', principals: ['role:ops'], verbs: ['admin'] })
  const a = g.as(alice)
  await a.createVolume({ name: 'db', sizeBytes: '64K', storageClass: 'fast-local-ssd' })
  await a.write('db', 0, new Uint8Array(4096).fill(7))
  await a.createSnapshot('db', 'keep')
  backupId = (await a.createBackup('db')).id
  await g.as(bob).createVolume({ name: 'own', sizeBytes: '64K', storageClass: 'fast-local-ssd' })
})
after(async () => { await g.close() })

const cases: Case[] = [
  { action: 'createVolume', permitted: alice, audited: true, call: async (h) => await h.createVolume({ namespace: 'tenant-a', name: 'db2', sizeBytes: '64K', bogus: 1 } as never) },
  { action: 'deleteVolume', permitted: alice, audited: true, call: async (h) => { await h.deleteVolume('tenant-a/db', { forse: true } as never) } },
  { action: 'expandVolume', permitted: alice, audited: true, call: async (h) => await h.expandVolume('tenant-a/db', 'lots') },
  { action: 'createStorageClass', permitted: root, audited: true, call: async (h) => await h.createStorageClass(42) },
  { action: 'migrateVolume', permitted: root, audited: true, call: async (h) => await h.migrateVolume('tenant-a/db', { storageClas: 'fast-local-ssd' } as never) },
  { action: 'setQoSPolicy', permitted: root, audited: true, call: async (h) => await h.setQoSPolicy('tenant-a/db', undefined as never) },
  { action: 'createAccessPolicy', permitted: root, audited: true, call: async (h) => await h.createAccessPolicy({ name: 'p', principals: [], verbs: [] }) },
  { action: 'createSnapshot', permitted: alice, audited: true, call: async (h) => await h.createSnapshot('tenant-a/db', 'bad name!') },
  { action: 'deleteSnapshot', permitted: alice, audited: true, call: async (h) => { await h.deleteSnapshot('tenant-a/db', 'keep', { forse: true } as never) } },
  { action: 'cloneVolume', permitted: alice, audited: true, call: async (h) => await h.cloneVolume('tenant-a/db', 'bad name!') },
  { action: 'deleteBackup', permitted: alice, audited: true, call: async (h) => await h.deleteBackup(backupId, { chunkGraceSeconds: -1 }) },
  { action: 'restoreBackup', permitted: alice, audited: true, call: async (h) => await h.restoreBackup(backupId, { volume: 'tenant-a/db', pool: 'p' }) },
  // A bad namespace for the new volume: only a caller who may create volumes in any namespace is
  // told it is bad (alice may only in tenant-a, so she is denied, as bob is).
  { action: 'restoreBackup', permitted: root, audited: true, call: async (h) => await h.restoreBackup(backupId, { name: 'back', namespace: 'Not A Namespace' }) },
  { action: 'rotateKeyEncryptionKey', permitted: root, audited: true, call: async (h) => await h.rotateKeyEncryptionKey(null as never) },
  { action: 'mountVolume', permitted: alice, audited: true, call: async (h) => await h.mounts.mountVolume('tenant-a/db', '/nowhere/d13', { bogus: true } as never) },
  { action: 'openVolumeFile', permitted: alice, audited: false, call: async (h) => await h.mounts.openVolumeFile('tenant-a/db', { readonly: true } as never) },
  { action: 'read', permitted: alice, audited: false, call: async (h) => await h.read('tenant-a/db', 0, 8192, new Uint8Array(16)) },
  { action: 'listChangedBlocks', permitted: alice, audited: false, call: async (h) => await h.listChangedBlocks('tenant-a/db', { form: 'keep' } as never) }
]

/** The entries of `principal`'s `action` written since `since` (a sequence number). */
async function entriesSince (since: number, principal: string, action: string): Promise<Array<{ result: string, code?: string, object: string }>> {
  return (await g.queryAuditLog({ principal, action, limit: 100_000 })).filter((e) => e.seq > since)
}

async function lastSeq (): Promise<number> {
  return (await g.auditHead()).seq
}

describe('d13: a call refused for its arguments is audited, and a denied principal is told PERMISSION_DENIED', () => {
  for (const [i, c] of cases.entries()) {
    it(`${c.action} (case ${i + 1})`, async () => {
      // The application: the argument's error, recorded as failed when the call is audited.
      let since = await lastSeq()
      await assert.rejects(c.call(g), { code: 'INVALID_ARGUMENT' })
      assert.deepEqual((await entriesSince(since, 'application', c.action)).map((e) => [e.result, e.code]), c.audited ? [['failed', 'INVALID_ARGUMENT']] : [])

      // A principal allowed the call: the same error, recorded the same way.
      since = await lastSeq()
      await assert.rejects(c.call(g.as(c.permitted)), { code: 'INVALID_ARGUMENT' })
      assert.deepEqual((await entriesSince(since, c.permitted.id, c.action)).map((e) => [e.result, e.code]), c.audited ? [['failed', 'INVALID_ARGUMENT']] : [])

      // A principal with no right there: denied, as with good arguments, and recorded as a denial.
      since = await lastSeq()
      await assert.rejects(c.call(g.as(bob)), { code: 'PERMISSION_DENIED' })
      assert.deepEqual((await entriesSince(since, 'bob', c.action)).map((e) => [e.result, e.code]), [['denied', 'PERMISSION_DENIED']])
    })
  }

  it('an entry names what the refused arguments named, as far as they can be read', async () => {
    const since = await lastSeq()
    await assert.rejects(g.as(bob).createVolume({ namespace: 'tenant-a', name: 'x'.repeat(1000), sizeBytes: '64K' }), { code: 'PERMISSION_DENIED' })
    await assert.rejects(g.as(alice).createSnapshot('db', 42 as never), { code: 'INVALID_ARGUMENT' })
    await assert.rejects(g.as(root).createStorageClass({ name: 'bulk', parameters: 'none' }), { code: 'INVALID_ARGUMENT' })
    const objects = (await g.queryAuditLog({ limit: 100_000 })).filter((e) => e.seq > since).map((e) => [e.principal, e.action, e.object])
    assert.deepEqual(objects, [
      // A name is cut to 256 characters in the entry.
      ['bob', 'createVolume', `volume:tenant-a/${'x'.repeat(256)}`],
      ['alice', 'createSnapshot', 'snapshot:tenant-a/db@(42)'],
      ['root', 'createStorageClass', 'storage-class:bulk']
    ])
    assert.equal((await g.verifyAuditLog()).ok, true)
  })

  it('a principal in its own namespace is told what is wrong with its arguments', async () => {
    // bob may create volumes in tenant-b: a bad argument there is his to fix, not a denial.
    const since = await lastSeq()
    await assert.rejects(g.as(bob).createVolume({ name: 'new', sizeBytes: '64K', bogus: 1 } as never), { code: 'INVALID_ARGUMENT' })
    await assert.rejects(g.as(bob).expandVolume('own', -1), { code: 'INVALID_ARGUMENT' })
    assert.deepEqual((await g.queryAuditLog({ principal: 'bob', limit: 100_000 })).filter((e) => e.seq > since).map((e) => [e.action, e.object, e.result, e.code]), [
      ['createVolume', 'volume:tenant-b/new', 'failed', 'INVALID_ARGUMENT'],
      ['expandVolume', 'volume:tenant-b/own', 'failed', 'INVALID_ARGUMENT']
    ])
  })
})
