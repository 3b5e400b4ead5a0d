// Access control edge cases: paths through a principal's handle that must check the right verb,
// answers that must not tell a principal what exists elsewhere, and the audit log's edges.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { AccessMode, GalleonFS, type Principal } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { NbdClient } from './support/nbd-client.js'

let root: string
let counter = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-access-edges-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const fresh = (): string => join(root, `t${++counter}`)

const alice: Principal = { id: 'alice', roles: ['tenant-a'], namespace: 'tenant-a' }
const bob: Principal = { id: 'bob', roles: ['tenant-b'], namespace: 'tenant-b' }
const reader: Principal = { id: 'reader', roles: ['reader'], namespace: 'tenant-a' }
const scheduler: Principal = { id: 'scheduler', roles: ['scheduler'] }
const block = (byte: number): Uint8Array => new Uint8Array(4096).fill(byte)
const denied = (verb: string) => (err: Error & { code?: string }) => err.code === 'PERMISSION_DENIED' && err.message.includes(`"${verb}"`)

async function policies (g: GalleonFS): Promise<void> {
  await g.createAccessPolicy({ name: 'tenant-a', principals: ['role:tenant-a'], verbs: ['volume:*', 'snapshot:*', 'backup:*'], namespaces: ['tenant-a'] })
  await g.createAccessPolicy({ name: 'tenant-b', principals: ['role:tenant-b'], verbs: ['volume:*', 'snapshot:*', 'backup:*'], namespaces: ['tenant-b'] })
  await g.createAccessPolicy({ name: 'readers', principals: ['role:reader'], verbs: ['volume:read'], namespaces: ['tenant-a'] })
  await g.createAccessPolicy({ name: 'schedulers', principals: ['role:scheduler'], verbs: ['backup:schedule', 'backup:read'] })
}

describe('principal arguments and references', () => {
  it('a reference whose id reads as one volume for the check and another for the call never reaches the other volume', async () => {
    const g = await GalleonFS.open({ storagePath: fresh(), backupTarget: fresh() })
    try {
      await policies(g)
      const hers = await g.as(alice).createVolume({ name: 'db', sizeBytes: '64K' })
      await g.writeBlock(hers, 0, block(0xa))
      await g.createSnapshot(hers, 'keep')
      const b = g.as(bob)
      const mine = await b.createVolume({ name: 'mine', sizeBytes: '64K' })
      const backup = await b.createBackup(mine)
      // The first `honest` reads of `id` name Bob's volume, every later one Alice's: whichever read
      // the check uses, the call must act on the volume that was checked.
      // Three disguises: a getter on a plain object; a Proxy that denies having the field and
      // claims another prototype, so neither `in` nor a prototype check sees a reference; and a class
      // instance whose getter lives on its prototype.
      let form = 0
      class Shifty {
        reads = 0
        honest: number
        constructor (honest: number) { this.honest = honest }
        get id (): string { return this.reads++ < this.honest ? mine.id : hers.id }
      }
      const twoFaced = (honest: number): { readonly id: string } => {
        let reads = 0
        if (form === 1) {
          return new Proxy({}, {
            get: (_target, key) => key === 'id' ? (reads++ < honest ? mine.id : hers.id) : undefined,
            has: () => false,
            getPrototypeOf: () => Map.prototype
          }) as { readonly id: string }
        }
        if (form === 2) return new Shifty(honest)
        return { get id () { return reads++ < honest ? mine.id : hers.id } }
      }
      const calls: Array<[string, (ref: never) => Promise<unknown>]> = [
        ['writeBlock', async (ref) => await b.writeBlock(ref, 0, block(0xb))],
        ['write', async (ref) => await b.write(ref, 0, block(0xb))],
        ['trim', async (ref) => await b.trim(ref, 0, 4096)],
        ['expandVolume', async (ref) => await b.expandVolume(ref, '128K')],
        ['restoreSnapshot', async (ref) => await b.restoreSnapshot(ref, 'keep')],
        ['deleteVolume', async (ref) => await b.deleteVolume(ref, { force: true })],
        ['openVolumeFile', async (ref) => { const file = await b.mounts.openVolumeFile(ref); try { await file.pwrite(block(0xb), 0) } finally { await file.close() } }],
        ['restoreBackup', async (ref) => await b.restoreBackup(backup.id, { volume: ref })]
      ]
      for (const [name, call] of calls.flatMap((entry) => [0, 1, 2].map((f) => [entry, f] as const)).map(([[name, call], f]) => [`${name} (form ${f})`, async (ref: never) => { form = f; return await call(twoFaced((ref as unknown as { honest: number }).honest) as never) }] as const)) {
        for (let honest = 0; honest <= 8; honest++) {
          // Acting on Bob's own volume is fine; on Alice's it must be denied (or refused otherwise).
          await call({ honest } as never).catch((err: Error & { code?: string }) => { assert.ok(err.code !== undefined, `${name}: ${String(err)}`) })
          const still = await g.getVolume(hers.id).catch(() => undefined)
          assert.ok(still !== undefined, `${name} (${honest} honest reads) deleted Alice's volume`)
          assert.equal(still.sizeBytes, 64 * 1024, `${name} (${honest} honest reads) resized Alice's volume`)
          assert.deepEqual(await g.readBlock(hers, 0), block(0xa), `${name} (${honest} honest reads) changed Alice's data`)
          if ((await g.getVolume(mine.id).catch(() => undefined)) === undefined) await g.restoreBackup(backup.id, { name: 'mine', namespace: 'tenant-b' }).then((v) => { Object.assign(mine, { id: v.id }) })
        }
      }
    } finally {
      await g.close()
    }
  })

  it('an id that names no volume gets the same answer as the id of a volume the principal may not see', async () => {
    const g = await GalleonFS.open({ storagePath: fresh(), backupTarget: fresh() })
    try {
      await policies(g)
      await g.createAccessPolicy({ name: 'everything', principals: ['user:root'], verbs: ['*'] })
      await g.createAccessPolicy({ name: 'one-letter', principals: ['user:q'], verbs: ['volume:read', 'backup:read'], namespaces: ['?'] })
      const hers = await g.as(alice).createVolume({ name: 'db', sizeBytes: '64K' })
      const gone = await g.as(bob).createVolume({ name: 'gone', sizeBytes: '64K' })
      await g.deleteVolume(gone)
      const nobody = '00000000-0000-4000-8000-000000000000'
      const b = g.as(bob)
      for (const id of [hers.id, nobody, gone.id]) {
        await assert.rejects(b.getVolume(id), denied('volume:read'), id)
        await assert.rejects(b.readBlock(id, 0), denied('volume:read'), id)
        await assert.rejects(b.writeBlock(id, 0, block(1)), denied('volume:write'), id)
        await assert.rejects(b.deleteVolume(id), denied('volume:delete'), id)
        await assert.rejects(b.getVolumeMetrics(id), denied('volume:read'), id)
        await assert.rejects(b.listSnapshots(id), denied('snapshot:read'), id)
      }
      // Who may read every namespace, and the application, are told it does not exist.
      await assert.rejects(g.as({ id: 'root' }).getVolume(nobody), { code: 'VOLUME_NOT_FOUND' })
      await assert.rejects(g.getVolume(nobody), { code: 'VOLUME_NOT_FOUND' })
      // A pattern that only happens to match the text "*" does not grant every namespace.
      await assert.rejects(g.as({ id: 'q' }).getVolume(nobody), denied('volume:read'))
      await assert.rejects(g.as({ id: 'q' }).getBackup(nobody), denied('backup:read'))
      // Names in the principal's own namespace still say "not found".
      await assert.rejects(b.getVolume('nothing-here'), { code: 'VOLUME_NOT_FOUND' })
    } finally {
      await g.close()
    }
  })

  it('namespaces match whole: a principal of "tenant-a" reaches neither "tenant-ab" nor names dressed as paths', async () => {
    const g = await GalleonFS.open({ storagePath: fresh() })
    try {
      await policies(g)
      await g.createVolume({ name: 'db', sizeBytes: '64K', namespace: 'tenant-ab' })
      await g.createVolume({ name: 'db', sizeBytes: '64K', namespace: 'tenant' })
      await g.writeBlock('tenant-ab/db', 0, block(3))
      const a = g.as(alice)
      await a.createVolume({ name: 'db', sizeBytes: '64K' })
      for (const ref of ['tenant-ab/db', 'tenant/db', 'tenant-a/../tenant-ab/db', '/tenant-ab/db', 'tenant-a//db', 'tenant-a/db/', 'tenant-ab/db/../../tenant-a/db']) {
        await a.readBlock(ref, 0).then(
          () => { assert.fail(`${ref} was read`) },
          (err: Error & { code?: string }) => { assert.ok(['PERMISSION_DENIED', 'VOLUME_NOT_FOUND'].includes(err.code ?? ''), `${ref}: ${String(err)}`) })
      }
      await assert.rejects(a.readBlock('tenant-ab/db', 0), denied('volume:read'))
      await assert.rejects(a.createVolume({ name: 'x', sizeBytes: '64K', namespace: 'tenant-ab' }), denied('volume:create'))
      for (const namespace of ['', 'Tenant-a', 'tenant-a/x', '..', 'tenant-ä']) {
        assert.throws(() => g.as({ id: 'z', namespace }), { code: 'INVALID_ARGUMENT' }, namespace)
        // Refused as a namespace to whoever may create volumes anywhere (here the application);
        // alice may create only in tenant-a, so she is told she may not, whatever she names (d13).
        await assert.rejects(g.createVolume({ name: 'x', sizeBytes: '64K', namespace }), { code: 'INVALID_ARGUMENT' }, namespace)
        await assert.rejects(a.createVolume({ name: 'x', sizeBytes: '64K', namespace }), denied('volume:create'), namespace)
      }
      assert.deepEqual((await a.listVolumes()).map((v) => `${v.namespace}/${v.name}`), ['tenant-a/db'])
    } finally {
      await g.close()
    }
  })
})

describe('backup policies, NBD and audit identities through a principal', () => {
  it('naming a backup policy\'s target takes "admin", as naming one for createBackup does', async () => {
    const g = await GalleonFS.open({ storagePath: fresh(), backupTarget: fresh() })
    try {
      await policies(g)
      await g.createAccessPolicy({ name: 'admins', principals: ['user:root'], verbs: ['admin'] })
      await g.createVolume({ name: 'data', sizeBytes: '64K', namespace: 'tenant-a' })
      const elsewhere = fresh()
      const s = g.as(scheduler)
      const spec = { schedule: '0 0 * * *', volumes: ['tenant-a/data'], retention: { daily: 1 } }
      await assert.rejects(s.createBackupPolicy({ name: 'away', ...spec, target: elsewhere }), (err: Error & { code?: string }) => err.code === 'PERMISSION_DENIED' && /backup target/.test(err.message))
      await assert.rejects(g.getBackupPolicy('away'), { code: 'POLICY_NOT_FOUND' })
      const [entry] = await g.queryAuditLog({ principal: 'scheduler', action: 'createBackupPolicy' })
      assert.equal(entry?.result, 'denied')
      assert.equal(await readdir(elsewhere).then(() => true, () => false), false, 'nothing written to the target')
      // The instance's own target needs no more than "backup:schedule"; an admin may name another.
      await s.createBackupPolicy({ name: 'home', ...spec })
      assert.equal((await s.runBackupPolicy('home')).backups.length, 1)
      await g.as({ id: 'root' }).createBackupPolicy({ name: 'away', ...spec, target: elsewhere })
    } finally {
      await g.close()
    }
  })

  it('NBD: a ReadWriteMany volume the principal may only read is exported read-only; a writer holds it like a ReadWriteOnce one', async () => {
    const g = await GalleonFS.open({ storagePath: fresh() })
    const servers: NbdServer[] = []
    try {
      await policies(g)
      await g.createVolume({ name: 'shared', sizeBytes: '1M', namespace: 'tenant-a', accessModes: [AccessMode.ReadWriteMany] })
      const serve = async (principal: Principal): Promise<NbdClient> => {
        const server = await NbdServer.listen(g.as(principal), { port: 0 })
        servers.push(server)
        const client = await NbdClient.connect(server.port)
        await client.hello()
        return client
      }
      const r = await serve(reader)
      assert.ok(((await r.go('shared')).flags & 2) !== 0, 'read-only for a principal that may not write')
      r.request(1, 1, 0, 4096, 0, block(9))
      assert.equal((await r.reply()).error, 1) // EPERM
      const w = await serve(alice)
      assert.equal(((await w.go('shared')).flags & 2), 0, 'writable for a principal that may write')
      w.request(1, 2, 0, 4096, 0, block(7))
      assert.equal((await w.reply()).error, 0)
      assert.deepEqual(await g.readBlock('tenant-a/shared', 0), block(7))
      // A connected writer counts as one: no deletion under it unless forced.
      await assert.rejects(g.deleteVolume('tenant-a/shared'), { code: 'BUSY' })
      r.socket.destroy()
      w.socket.destroy()
    } finally {
      for (const server of servers) await server.close()
      await g.close()
    }
  })

  it('principal ids the audit log uses for the instance itself are refused', async () => {
    const g = await GalleonFS.open({ storagePath: fresh() })
    try {
      for (const id of ['system', 'application']) {
        assert.throws(() => g.as({ id }), { code: 'INVALID_ARGUMENT' }, id)
        await assert.rejects(g.runAs({ id }, async () => await g.listVolumes()), { code: 'INVALID_ARGUMENT' }, id)
      }
      assert.equal(await g.as({ id: 'System' }).listVolumes().then((list) => list.length), 0, 'only the exact reserved ids are refused')
    } finally {
      await g.close()
    }
  })
})
