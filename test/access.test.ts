// Access control, namespaces and the audit log, on real classic-level metadata.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { GalleonError, GalleonFS, parseAccessPolicy, type Principal } from '../src/index.js'
import { AuditLog } from '../src/access/audit-log.js'
import type { MetadataDatabase } from '../src/volumes/catalog.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'

let root: string
let counter = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-access-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const fresh = (): string => join(root, `t${++counter}`)

const alice: Principal = { id: 'alice', roles: ['tenant-a-admin'], namespace: 'tenant-a' }
const bob: Principal = { id: 'bob', groups: ['tenant-b'], namespace: 'tenant-b' }
const carol: Principal = { id: 'carol', roles: ['auditor'] }
const mallory: Principal = { id: 'mallory', namespace: 'tenant-a' }
const block = (byte: number): Uint8Array => new Uint8Array(4096).fill(byte)
const denied = (verb: string) => (err: Error & { code?: string }) => err.code === 'PERMISSION_DENIED' && err.message.includes(`"${verb}"`)

/** Two tenants with full rights in their namespace, an auditor, and a reader of tenant-a's logs volumes. */
async function tenants (g: GalleonFS): Promise<void> {
  await g.createAccessPolicy({ name: 'tenant-a', principals: ['role:tenant-a-admin'], verbs: ['volume:*', 'snapshot:*', 'backup:*'], namespaces: ['tenant-a'] })
  await g.createAccessPolicy({ name: 'tenant-b', principals: ['group:tenant-b'], verbs: ['*'], namespaces: ['tenant-b'] })
  await g.createAccessPolicy({ name: 'auditors', principals: ['role:auditor'], verbs: ['admin'] })
  await g.createAccessPolicy({ name: 'log-readers', principals: ['user:mallory'], verbs: ['volume:read'], namespaces: ['tenant-a'], volumes: ['logs-*'] })
}

describe('access control', () => {
  it('allows everything while no policy exists, for the application and for principals', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      const a = g.as(alice)
      const vol = await a.createVolume({ name: 'db', sizeBytes: '1M' })
      assert.equal(vol.namespace, 'tenant-a')
      await g.as(bob).writeBlock('tenant-a/db', 0, block(1))
      assert.deepEqual(await g.readBlock(vol, 0), block(1))
      assert.deepEqual((await g.listVolumes()).map((v) => `${v.namespace}/${v.name}`), ['tenant-a/db'])
    } finally {
      await g.close()
    }
  })

  it('once a policy exists, denies by default and names the missing grant; tenants are isolated', async () => {
    const g = await GalleonFS.open({ storagePath: fresh() })
    try {
      await tenants(g)
      const a = g.as(alice)
      const b = g.as(bob)
      const db = await a.createVolume({ name: 'db', sizeBytes: '1M' })
      await a.createVolume({ name: 'logs-1', sizeBytes: '1M' })
      await b.createVolume({ name: 'db', sizeBytes: '1M' }) // same name, other namespace
      await a.writeBlock('db', 0, block(0xa))
      await b.writeBlock('db', 0, block(0xb))
      assert.deepEqual(await a.readBlock('db', 0), block(0xa))
      assert.deepEqual(await b.readBlock('db', 0), block(0xb))
      // Bob cannot read, write, list, clone, snapshot, back up or delete Alice's volumes.
      await assert.rejects(b.readBlock('tenant-a/db', 0), denied('volume:read'))
      await assert.rejects(b.readBlock(db.id, 0), denied('volume:read'))
      await assert.rejects(b.writeBlock('tenant-a/db', 0, block(9)), denied('volume:write'))
      await assert.rejects(b.getVolume('tenant-a/db'), denied('volume:read'))
      await assert.rejects(b.cloneVolume('tenant-a/db', 'stolen'), denied('volume:read'))
      await assert.rejects(b.createSnapshot('tenant-a/db', 's'), denied('snapshot:create'))
      await assert.rejects(b.createBackup('tenant-a/db'), denied('backup:create'))
      await assert.rejects(b.createBackup('db', { target: join(root, 'anywhere') }), (err: Error & { code?: string }) => err.code === 'PERMISSION_DENIED' && /backup target/.test(err.message))
      await assert.rejects(b.deleteVolume('tenant-a/db', { force: true }), denied('volume:delete'))
      await assert.rejects(b.createVolume({ name: 'x', sizeBytes: '1M', namespace: 'tenant-a' }), denied('volume:create'))
      assert.deepEqual((await b.listVolumes()).map((v) => `${v.namespace}/${v.name}`), ['tenant-b/db'])
      assert.deepEqual((await a.listVolumes()).map((v) => `${v.namespace}/${v.name}`), ['tenant-a/db', 'tenant-a/logs-1'])
      // A missing volume or snapshot in another namespace is denied, not reported missing (no probing).
      await assert.rejects(b.getVolume('tenant-a/nothing-here'), denied('volume:read'))
      await assert.rejects(b.writeBlock('tenant-a/nothing-here', 0, block(1)), denied('volume:write'))
      await assert.rejects(b.read('tenant-a/nothing-here', 0, 10), denied('volume:read'))
      await assert.rejects(b.read({ volume: 'tenant-a/db', snapshot: 'no-such' }, 0, 10), denied('snapshot:read'))
      await assert.rejects(b.trim('tenant-a/nothing-here', 0, 4096), denied('volume:write'))
      await assert.rejects(b.scrub('tenant-a/nothing-here'), denied('volume:read'))
      await assert.rejects(b.flush('tenant-a/nothing-here'), denied('volume:write'))
      await assert.rejects(a.getVolume('nothing-here'), { code: 'VOLUME_NOT_FOUND' })
      // Data untouched by the denials.
      assert.deepEqual(await g.readBlock('tenant-a/db', 0), block(0xa))
      // Volume name patterns: mallory reads logs-* in tenant-a, nothing else.
      const m = g.as(mallory)
      await m.readBlock('logs-1', 0)
      await assert.rejects(m.readBlock('db', 0), denied('volume:read'))
      await assert.rejects(m.writeBlock('logs-1', 0, block(1)), denied('volume:write'))
      assert.deepEqual((await m.listVolumes()).map((v) => v.name), ['logs-1'])
      // Admin-only calls.
      await assert.rejects(a.createStorageClass({ name: 'mine' }), denied('admin'))
      await assert.rejects(a.createAccessPolicy({ name: 'escalate', principals: ['user:alice'], verbs: ['*'] }), denied('admin'))
      await assert.rejects(a.queryAuditLog(), denied('admin'))
      await assert.rejects(a.metricsText(), denied('admin'))
      assert.throws(() => a.journalStats(), denied('admin'))
      // The auditor may read the log and every volume's metadata, as admin covers every verb.
      const c = g.as(carol)
      assert.ok((await c.queryAuditLog()).length > 0)
      assert.equal((await c.listVolumes()).length, 3)
      // The application itself is never denied.
      assert.equal((await g.listVolumes()).length, 3)
    } finally {
      await g.close()
    }
  })

  it('keeps snapshots, clones and backups within the tenant', async () => {
    const target = fresh()
    const g = await GalleonFS.open({ storagePath: fresh(), backupTarget: target })
    try {
      await tenants(g)
      const a = g.as(alice)
      const b = g.as(bob)
      await a.createVolume({ name: 'db', sizeBytes: '1M' })
      await a.writeBlock('db', 1, block(3))
      await a.createSnapshot('db', 'snap')
      const clone = await a.cloneVolume({ volume: 'db', snapshot: 'snap' }, 'db-copy')
      assert.equal(clone.namespace, 'tenant-a')
      await assert.rejects(a.cloneVolume('db', 'elsewhere', { namespace: 'tenant-b' }), denied('volume:create'))
      await assert.rejects(b.readBlock({ volume: 'tenant-a/db', snapshot: 'snap' }, 1), denied('snapshot:read'))
      await assert.rejects(b.listSnapshots('tenant-a/db'), denied('snapshot:read'))
      const backup = await a.createBackup('db')
      assert.equal(backup.volumeNamespace, 'tenant-a')
      await b.createVolume({ name: 'web', sizeBytes: '1M' })
      const theirs = await b.createBackup('web')
      assert.deepEqual((await a.listBackups()).map((x) => x.id), [backup.id])
      assert.deepEqual((await b.listBackups()).map((x) => x.id), [theirs.id])
      await assert.rejects(b.getBackup(backup.id), denied('backup:read'))
      await assert.rejects(b.verifyBackup(backup.id), denied('backup:read'))
      await assert.rejects(b.restoreBackup(backup.id, { name: 'loot' }), denied('backup:restore'))
      await assert.rejects(a.restoreBackup(backup.id, { name: 'into-b', namespace: 'tenant-b' }), denied('volume:create'))
      await assert.rejects(b.deleteBackup(backup.id), denied('backup:delete'))
      const restored = await a.restoreBackup(backup.id, { name: 'db-restored' })
      assert.equal(restored.namespace, 'tenant-a')
      assert.deepEqual(await a.readBlock('db-restored', 1), block(3))
      // Policies are instance-wide: tenants cannot schedule backups, the auditor (admin) can list them.
      await assert.rejects(a.createBackupPolicy({ name: 'nightly', schedule: '0 2 * * *', volumes: ['db'] }), denied('backup:schedule'))
      assert.deepEqual(await g.as(carol).listBackupPolicies(), [])
    } finally {
      await g.close()
    }
  })

  it('validates policies and principals with clear errors', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      const bad: Array<[unknown, RegExp]> = [
        [null, /an access policy is an object/],
        [{ name: 'x', principals: ['alice'], verbs: ['volume:read'] }, /user:<id>/],
        [{ name: 'x', principals: ['*'], verbs: ['volume:fly'] }, /unknown verb "volume:fly"/],
        [{ name: 'x', principals: [], verbs: ['admin'] }, /principals must be a non-empty list/],
        [{ name: 'bad name!', principals: ['*'], verbs: ['admin'] }, /name must be/],
        [{ name: 'x', principals: ['*'], verbs: ['admin'], colour: 'red' }, /unknown access policy field "colour"/],
        [{ name: 'x', principals: ['*'], verbs: ['admin'], namespaces: 'a' }, /namespaces must be a non-empty list/]
      ]
      for (const [policy, message] of bad) {
        await assert.rejects(g.createAccessPolicy(policy as never), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && message.test(err.message), String(message))
      }
      assert.deepEqual(await g.listAccessPolicies(), [])
      assert.throws(() => g.as({ id: '' }), { code: 'INVALID_ARGUMENT' })
      assert.throws(() => g.as({ id: 'x', namespace: 'Not Valid' }), { code: 'INVALID_ARGUMENT' })
      assert.throws(() => g.as({ id: 'x', roles: 'admin' } as never), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.createVolume({ name: 'v', sizeBytes: '1M', namespace: 'UPPER' }), { code: 'INVALID_ARGUMENT' })
      assert.deepEqual(parseAccessPolicy({ name: 'p', principals: ['*'], verbs: ['snapshot:*'], volumes: ['db-?'] }), { name: 'p', principals: ['*'], verbs: ['snapshot:*'], volumes: ['db-?'] })
      await assert.rejects(g.deleteAccessPolicy('nope'), { code: 'INVALID_ARGUMENT' })
    } finally {
      await g.close()
    }
  })

  it('runAs applies a principal to every call in a task; policies persist across reopen; deleting the last one lifts enforcement', async () => {
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir })
    await tenants(g)
    await g.as(alice).createVolume({ name: 'db', sizeBytes: '1M' })
    await g.close()
    g = await GalleonFS.open({ storagePath: dir })
    try {
      await assert.rejects(g.runAs(bob, async () => await g.readBlock('tenant-a/db', 0)), denied('volume:read'))
      assert.equal((await g.runAs(alice, async () => await g.readBlock('db', 0))).byteLength, 4096)
      for (const policy of await g.listAccessPolicies()) await g.deleteAccessPolicy(policy.name)
      assert.equal((await g.as(bob).readBlock('tenant-a/db', 0)).byteLength, 4096)
    } finally {
      await g.close()
    }
  })
})

describe('audit log', () => {
  it('records every mutating call and every denial with who, what, which object and the result', async () => {
    const g = await GalleonFS.open({ storagePath: fresh() })
    try {
      await tenants(g)
      const a = g.as(alice)
      await a.createVolume({ name: 'db', sizeBytes: '1M' })
      await a.createSnapshot('db', 'before')
      await assert.rejects(g.as(bob).writeBlock('tenant-a/db', 0, block(1)), denied('volume:write'))
      await assert.rejects(a.createVolume({ name: 'db', sizeBytes: '1M' }), { code: 'VOLUME_EXISTS' })
      await a.expandVolume('db', '2M')
      await a.deleteSnapshot('db', 'before')
      await g.deleteVolume('tenant-a/db', { force: true })
      const entries = await g.queryAuditLog()
      const summary = entries.map((e) => `${e.principal} ${e.action} ${e.object} ${e.result}${e.code === undefined ? '' : ' ' + e.code}`)
      assert.deepEqual(summary, [
        'application createAccessPolicy access-policy:tenant-a ok',
        'application createAccessPolicy access-policy:tenant-b ok',
        'application createAccessPolicy access-policy:auditors ok',
        'application createAccessPolicy access-policy:log-readers ok',
        'alice createVolume volume:tenant-a/db ok',
        'alice createSnapshot snapshot:tenant-a/db@before ok',
        'bob writeBlock volume:tenant-a/db denied PERMISSION_DENIED',
        'alice createVolume volume:tenant-a/db failed VOLUME_EXISTS',
        'alice expandVolume volume:tenant-a/db ok',
        'alice deleteSnapshot snapshot:tenant-a/db@before ok',
        'application deleteVolume volume:tenant-a/db ok'
      ])
      assert.deepEqual(entries.map((e) => e.seq), entries.map((_, i) => i + 1))
      assert.deepEqual(entries.find((e) => e.action === 'expandVolume')?.details, { sizeBytes: 2 * 1024 * 1024 })
      assert.deepEqual(entries[4]?.roles, ['tenant-a-admin'])
      // Queries: by principal, object prefix, result, time range.
      assert.equal((await g.queryAuditLog({ principal: 'alice' })).length, 5)
      assert.equal((await g.queryAuditLog({ object: 'volume:tenant-a/*' })).length, 5)
      assert.equal((await g.queryAuditLog({ result: 'denied' })).length, 1)
      assert.equal((await g.queryAuditLog({ from: new Date(Date.now() + 60_000) })).length, 0)
      assert.equal((await g.queryAuditLog({ to: entries[5]?.time, from: entries[0]?.time })).length >= 1, true)
      assert.equal((await g.queryAuditLog({ limit: 2 })).length, 2)
      await assert.rejects(g.queryAuditLog({ from: 'yesterday' }), { code: 'INVALID_ARGUMENT' })
      const check = await g.verifyAuditLog()
      assert.equal(check.ok, true)
      assert.equal(check.entries, entries.length)
    } finally {
      await g.close()
    }
  })

  it('verifyAuditLog detects an edited, a removed, a reordered and a truncated entry, and a rewritten log against a saved head', async () => {
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir })
    for (let i = 0; i < 6; i++) await g.createVolume({ name: `v${i}`, sizeBytes: '1M' })
    const savedHead = await g.auditHead()
    assert.equal(savedHead.seq, 6)
    assert.equal((await g.verifyAuditLog(savedHead)).ok, true)
    await g.close()

    // Tamper with the database directly, as someone with access to the files could.
    const tamper = async (change: (audit: any, head: any) => Promise<void>): Promise<void> => {
      const db = new ClassicLevel(join(dir, 'metadata'))
      await db.open()
      try {
        await change(db.sublevel('audit', { valueEncoding: 'json' }), db.sublevel('audit-head', { valueEncoding: 'json' }))
      } finally {
        await db.close()
      }
    }
    const key = (seq: number): string => String(seq).padStart(16, '0')
    const verify = async (): Promise<{ ok: boolean, problems: ReadonlyArray<{ seq: number, problem: string }> }> => {
      const h = await GalleonFS.open({ storagePath: dir })
      try { return await h.verifyAuditLog(savedHead) } finally { await h.close() }
    }
    let original: any
    await tamper(async (audit) => {
      original = await audit.get(key(3))
      await audit.put(key(3), { ...original, principal: 'someone-else' })
    })
    let result = await verify()
    assert.equal(result.ok, false)
    assert.ok(result.problems.some((p) => p.seq === 3 && /edited/.test(p.problem)), JSON.stringify(result.problems))
    await tamper(async (audit) => { await audit.put(key(3), original) })
    assert.equal((await verify()).ok, true)

    await tamper(async (audit) => { await audit.del(key(4)) })
    result = await verify()
    assert.ok(result.problems.some((p) => p.seq === 5 && /missing/.test(p.problem)), JSON.stringify(result.problems))

    // Rebuild a consistent-looking chain without entry 4 (rehashing everything): only the saved head catches it.
    await tamper(async (audit, head) => {
      const { createHash } = await import('node:crypto')
      const entries: any[] = []
      for await (const [, value] of audit.iterator()) entries.push(value)
      for (const entry of entries) await audit.del(key(entry.seq))
      let prev = '0'.repeat(64)
      let seq = 0
      for (const entry of entries) {
        seq++
        const body = { ...entry, seq, prev }
        delete body.hash
        const canonical = JSON.stringify([body.seq, body.time, body.principal, body.roles ?? [], body.action, body.verb ?? null, body.object, body.result, body.code ?? null, body.details === undefined ? null : Object.keys(body.details).sort().map((k: string) => [k, body.details[k]]), body.prev])
        const hash = createHash('sha256').update(canonical).digest('hex')
        await audit.put(key(seq), { ...body, hash })
        prev = hash
      }
      await head.put('head', { seq, hash: prev })
    })
    result = await verify()
    assert.equal(result.ok, false)
    assert.ok(result.problems.some((p) => /saved earlier/.test(p.problem)), JSON.stringify(result.problems))

    // Truncation at the end: the head record no longer matches.
    const dir2 = fresh()
    g = await GalleonFS.open({ storagePath: dir2 })
    for (let i = 0; i < 3; i++) await g.createVolume({ name: `w${i}`, sizeBytes: '1M' })
    await g.close()
    const db = new ClassicLevel(join(dir2, 'metadata'))
    await db.open()
    await db.sublevel('audit', { valueEncoding: 'json' }).del(key(3))
    await db.close()
    const h = await GalleonFS.open({ storagePath: dir2 })
    try {
      const check = await h.verifyAuditLog()
      assert.equal(check.ok, false)
      assert.ok(check.problems.some((p) => /removed from the end/.test(p.problem)), JSON.stringify(check.problems))
      // New entries continue after the recorded head, the damage stays visible.
      await h.createVolume({ name: 'w9', sizeBytes: '1M' })
      assert.equal((await h.verifyAuditLog()).ok, false)
    } finally {
      await h.close()
    }
  })
})

describe('access review: references, handles, QoS and denials', () => {
  it('a reference naming one volume for the check and another for the call is refused, changing nothing', async () => {
    const g = await GalleonFS.open({ storagePath: fresh() })
    try {
      await tenants(g)
      const theirs = await g.createVolume({ name: 'secret', sizeBytes: '1M', namespace: 'tenant-a' })
      await g.writeBlock(theirs, 0, block(2))
      await g.createSnapshot(theirs, 'keep')
      const b = g.as(bob)
      const mine = await b.createVolume({ name: 'mine', sizeBytes: '1M' })
      const twoFaced = [{ id: theirs.id, volumeId: mine.id }, { id: theirs.id, volume: mine.id, snapshot: 'x' }]
      for (const evil of twoFaced) {
        const calls: Array<[string, () => Promise<unknown>]> = [
          ['getVolume', async () => await b.getVolume(evil as never)],
          ['deleteVolume', async () => await b.deleteVolume(evil as never)],
          ['expandVolume', async () => await b.expandVolume(evil as never, '2M')],
          ['createSnapshot', async () => await b.createSnapshot(evil as never, 'mine')],
          ['listSnapshots', async () => await b.listSnapshots(evil as never)],
          ['deleteSnapshot', async () => await b.deleteSnapshot(evil as never, 'keep')],
          ['restoreSnapshot', async () => await b.restoreSnapshot(evil as never, 'keep')],
          ['createBackup', async () => await b.createBackup(evil as never, { target: fresh() })],
          ['getVolumeMetrics', async () => await b.getVolumeMetrics(evil as never)],
          ['scrub', async () => await b.scrub(evil as never)]
        ]
        for (const [name, call] of calls) {
          await assert.rejects(call(), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' || err.code === 'PERMISSION_DENIED', name)
        }
      }
      assert.equal((await g.getVolume(theirs.id)).sizeBytes, 1 << 20)
      assert.deepEqual((await g.listSnapshots(theirs.id)).map((s) => s.name), ['keep'])
      assert.deepEqual(await g.readBlock(theirs, 0), block(2))
    } finally {
      await g.close()
    }
  })

  it('a volume\'s own QoS policy at creation takes "admin", like setQoSPolicy; a denied backup target is in the log before the call rejects', async () => {
    const g = await GalleonFS.open({ storagePath: fresh() })
    try {
      await tenants(g)
      const a = g.as(alice)
      await assert.rejects(a.createVolume({ name: 'fast', sizeBytes: '1M', qos: { limits: { iops: 900 } } }), denied('admin'))
      await assert.rejects(a.getVolume('fast'), { code: 'VOLUME_NOT_FOUND' })
      await a.createVolume({ name: 'plain', sizeBytes: '1M' })
      const c = g.as(carol)
      await c.createVolume({ name: 'fast', sizeBytes: '1M', namespace: 'tenant-a', qos: { limits: { iops: 900 } } })
      const head = (await g.auditHead()).seq
      await assert.rejects(a.createBackup('plain', { target: fresh() }), denied('admin'))
      // No wait: the denial was recorded before the rejection reached us.
      assert.equal((await g.auditHead()).seq, head + 1)
      const [entry] = await g.queryAuditLog({ principal: 'alice', action: 'createBackup' })
      assert.equal(entry?.result, 'denied')
    } finally {
      await g.close()
    }
  })

  it('a principal\'s handle does not expose the node\'s cluster manager', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const g = await GalleonFS.open({ storagePath: fresh(), cluster: { nodeId: 'n1', transport: new MemoryTransport({ network, nodeId: 'n1' }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 } })
    try {
      await tenants(g)
      assert.ok(g.cluster !== undefined)
      const b = g.as(bob)
      assert.equal(b.cluster, undefined)
      await assert.rejects(b.leaveCluster(), denied('admin'))
      assert.deepEqual((await g.clusterStatus()).members.map((m) => m.id), ['n1'])
    } finally {
      await g.close()
    }
  })

  it('a mount point another tenant uses is refused without naming that tenant\'s volume', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await tenants(g)
      await g.as(alice).createVolume({ name: 'hidden-name', sizeBytes: '64K' })
      await g.as(alice).mounts.mountVolume('hidden-name', '/m/shared')
      await g.as(bob).createVolume({ name: 'mine', sizeBytes: '64K' })
      await assert.rejects(g.as(bob).mounts.mountVolume('mine', '/m/shared'), (err: Error & { code?: string }) => err.code === 'BUSY' && !err.message.includes('hidden-name'))
      await assert.rejects(g.mounts.mountVolume('tenant-b/mine', '/m/shared'), (err: Error & { code?: string }) => err.code === 'BUSY' && err.message.includes('hidden-name'))
    } finally {
      await g.close()
    }
  })

  it('a backup id a principal may not see and one that does not exist get the same answer', async () => {
    const g = await GalleonFS.open({ storagePath: fresh(), backupTarget: fresh() })
    try {
      await tenants(g)
      const a = g.as(alice)
      await a.createVolume({ name: 'data', sizeBytes: '64K' })
      const hers = await a.createBackup('data')
      const nobody = '00000000-0000-4000-8000-000000000000'
      const b = g.as(bob)
      for (const id of [hers.id, nobody]) {
        await assert.rejects(b.getBackup(id), denied('backup:read'), id)
        await assert.rejects(b.verifyBackup(id), denied('backup:read'), id)
        await assert.rejects(b.deleteBackup(id), denied('backup:delete'), id)
        await assert.rejects(b.restoreBackup(id, { name: 'x' }), denied('backup:restore'), id)
      }
      // Who may read every namespace's backups, and the application, are told it does not exist.
      await assert.rejects(g.as(carol).getBackup(nobody), { code: 'BACKUP_NOT_FOUND' })
      await assert.rejects(g.getBackup(nobody), { code: 'BACKUP_NOT_FOUND' })
      assert.equal((await a.getBackup(hers.id)).id, hers.id)
    } finally {
      await g.close()
    }
  })

  it('a snapshot mounts read-only whatever its volume\'s class says', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createStorageClass({ name: 'rwclass', provisioner: 'galleonfs.io/local', mountOptions: ['rw'] } as never)
      const vol = await g.createVolume({ name: 'v', sizeBytes: '64K', storageClass: 'rwclass' })
      await g.createSnapshot(vol, 's')
      const id = await g.mounts.mountVolume({ volume: 'v', snapshot: 's' }, '/m/snap')
      assert.equal(g.mounts.listMounts().find((m) => m.id === id)?.readOnly, true)
      await assert.rejects(g.mounts.mountVolume({ volume: 'v', snapshot: 's' }, '/m/snap-rw', { readOnly: false }), { code: 'READ_ONLY' })
    } finally {
      await g.close()
    }
  })
})

describe('audit log damage', () => {
  const key = (seq: number): string => String(seq).padStart(16, '0')
  const withDb = async (dir: string, change: (db: ClassicLevel<string, string>) => Promise<void>): Promise<void> => {
    const db = new ClassicLevel<string, string>(join(dir, 'metadata'))
    await db.open()
    try { await change(db) } finally { await db.close() }
  }

  it('an entry of a call that ran across close() is refused with NOT_OPEN, naming the call, not a raw database error', async () => {
    const dir = fresh()
    const db = new ClassicLevel<string, string>(join(dir, 'metadata'))
    await db.open()
    const log = new AuditLog(db as unknown as MetadataDatabase, () => Date.parse('2026-12-04T00:00:00Z'))
    await log.load()
    const first = await log.append({ principal: 'alice', action: 'createVolume', object: 'volume:default/a', result: 'ok' })
    assert.equal(first.seq, 1)
    await db.close()
    await assert.rejects(log.append({ principal: 'alice', action: 'deleteVolume', object: 'volume:default/a', result: 'ok' }),
      (err: unknown) => err instanceof GalleonError && err.code === 'NOT_OPEN' && /closed before the audit entry of deleteVolume on volume:default\/a \(ok\)/.test(err.message))
    // The log is as it was: the refused entry took no sequence number.
    const reopened = new ClassicLevel<string, string>(join(dir, 'metadata'))
    await reopened.open()
    try {
      const again = new AuditLog(reopened as unknown as MetadataDatabase, () => Date.now())
      await again.load()
      assert.deepEqual(again.head(), { seq: 1, hash: first.hash })
    } finally {
      await reopened.close()
    }
  })

  it('a removed head record never makes new entries overwrite old ones, and the log says it was found so', async () => {
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir })
    for (let i = 0; i < 3; i++) await g.createVolume({ name: `v${i}`, sizeBytes: '1M' })
    const before = await g.queryAuditLog()
    await g.close()
    await withDb(dir, async (db) => { await db.sublevel('audit-head', { valueEncoding: 'json' }).del('head') })
    g = await GalleonFS.open({ storagePath: dir })
    try {
      for (let i = 0; i < 4; i++) await g.createVolume({ name: `w${i}`, sizeBytes: '1M' })
      const after = await g.queryAuditLog()
      assert.deepEqual(after.slice(0, before.length), before, 'the entries from before are untouched')
      assert.deepEqual(after.map((e) => e.seq), after.map((_, i) => i + 1))
      const reopened = after[before.length]
      assert.equal(reopened?.principal, 'system')
      assert.equal(reopened?.action, 'auditLogReopened')
      assert.deepEqual(after.slice(before.length + 1).map((e) => e.object), ['volume:default/w0', 'volume:default/w1', 'volume:default/w2', 'volume:default/w3'])
      const check = await g.verifyAuditLog()
      assert.equal(check.ok, false)
      assert.ok(check.problems.some((p) => p.seq === before.length + 1 && /tampered/.test(p.problem)), JSON.stringify(check.problems))
    } finally {
      await g.close()
    }
  })

  it('damaged entries and a damaged head are reported by verify, skipped by queries, and do not stop the instance opening', async () => {
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir })
    for (let i = 0; i < 5; i++) await g.createVolume({ name: `v${i}`, sizeBytes: '1M' })
    await g.close()
    await withDb(dir, async (db) => {
      const audit = db.sublevel('audit', { valueEncoding: 'utf8' })
      await audit.put(key(2), 'null')
      await audit.put(key(3), '"x"')
      await audit.put(key(4), '{not json')
      await db.sublevel('audit-head', { valueEncoding: 'utf8' }).put('head', '{also not json')
    })
    g = await GalleonFS.open({ storagePath: dir })
    try {
      const check = await g.verifyAuditLog()
      assert.equal(check.ok, false)
      for (const seq of [2, 3, 4]) assert.ok(check.problems.some((p) => p.seq === seq && /not a readable audit entry/.test(p.problem)), JSON.stringify(check.problems))
      const entries = await g.queryAuditLog()
      assert.deepEqual(entries.map((e) => e.seq), [1, 5, 6])
      assert.equal(entries[2]?.action, 'auditLogReopened')
      await g.createVolume({ name: 'after', sizeBytes: '1M' })
      assert.equal((await g.queryAuditLog({ object: 'volume:default/after' }))[0]?.seq, 7)
    } finally {
      await g.close()
    }
  })
})

describe('review regressions: handles, contexts and policies', () => {
  it('a principal cannot become another one, listen to events, close the instance or hook replication', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await tenants(g)
      const a = g.as(alice)
      assert.throws(() => a.as({ id: 'x', groups: ['tenant-b'] }), { code: 'PERMISSION_DENIED' })
      await assert.rejects(a.runAs(bob, async () => {}), { code: 'PERMISSION_DENIED' })
      await assert.rejects(g.runAs(alice, async () => await g.runAs(bob, async () => 1)), { code: 'PERMISSION_DENIED' })
      assert.throws(() => a.on('volume:created', () => {}), { code: 'PERMISSION_DENIED' })
      assert.throws(() => a.emit('instance:closed'), { code: 'PERMISSION_DENIED' })
      assert.throws(() => a.setReplicationHook(undefined), { code: 'PERMISSION_DENIED' })
      await assert.rejects(a.close(), denied('admin'))
      assert.equal(g.closed, false)
      assert.throws(() => g.as({ id: 'application' }), { code: 'INVALID_ARGUMENT' })
    } finally {
      await g.close()
    }
  })

  it('listeners run as the application, not as the principal whose call emitted the event', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await tenants(g)
      await g.createVolume({ name: 'template', sizeBytes: '1M' })
      const seen: string[] = []
      g.on('volume:created', (volume) => {
        if (volume.name !== 'db') return
        void (async () => {
          // Bare names resolve in the application's namespace, and the call is audited as its own.
          seen.push((await g.getVolume('template')).namespace)
          await g.createSnapshot('template', 'on-create')
          seen.push('snapshot')
        })().catch((err) => seen.push(String(err)))
      })
      await g.as(alice).createVolume({ name: 'db', sizeBytes: '1M' })
      for (let i = 0; i < 100 && seen.length < 2; i++) await new Promise((resolve) => setTimeout(resolve, 5))
      assert.deepEqual(seen, ['default', 'snapshot'])
      const entry = (await g.queryAuditLog({ action: 'createSnapshot' }))[0]
      assert.equal(entry?.principal, 'application')
      assert.equal(entry?.object, 'snapshot:default/template@on-create')
    } finally {
      await g.close()
    }
  })

  it('scheduled backups run as the application and are audited, also after a principal created the policy', async () => {
    const g = await GalleonFS.open({ storagePath: fresh(), backupTarget: fresh() })
    try {
      await g.createAccessPolicy({ name: 'ops', principals: ['role:ops'], verbs: ['backup:*', 'volume:read'] })
      await g.createVolume({ name: 'db', sizeBytes: '1M' })
      await g.writeBlock('db', 0, block(1))
      // Every second (croner's six-field form).
      await g.as({ id: 'olga', roles: ['ops'] }).createBackupPolicy({ name: 'often', schedule: '* * * * * *', volumes: ['db'], retention: { daily: 100 } })
      // A backup is listed as soon as its manifest is stored; its audit entry follows when the call returns.
      for (let i = 0; i < 400 && ((await g.listBackups('db')).length < 2 || (await g.queryAuditLog({ action: 'createBackup' })).length < 2); i++) await new Promise((resolve) => setTimeout(resolve, 10))
      const backups = await g.listBackups('db')
      assert.ok(backups.length >= 2, `${backups.length} scheduled backups`)
      const audited = await g.queryAuditLog({ action: 'createBackup' })
      assert.ok(audited.length >= 2, `${audited.length} audit entries for ${backups.length} backups`)
      assert.ok(audited.every((entry) => entry.principal === 'application' && entry.details?.policy === 'often'))
      assert.equal((await g.queryAuditLog({ action: 'createBackupPolicy' }))[0]?.principal, 'olga')
      await g.deleteBackupPolicy('often')
    } finally {
      await g.close()
    }
  })

  it('backup policies name volumes by namespace: a bare name is the default namespace\'s', async () => {
    const g = await GalleonFS.open({ inMemory: true, backupTarget: fresh() })
    try {
      await g.createVolume({ name: 'db', sizeBytes: '1M', namespace: 'tenant-b' })
      await g.createVolume({ name: 'db', sizeBytes: '1M', namespace: 'tenant-a' })
      await g.createBackupPolicy({ name: 'a-only', schedule: '0 3 * * *', volumes: ['tenant-a/db'], retention: { daily: 1 } })
      await g.createBackupPolicy({ name: 'bare', schedule: '0 3 * * *', volumes: ['db'], retention: { daily: 1 } })
      const run = await g.runBackupPolicy('a-only')
      assert.deepEqual(run.backups.map((b) => `${b.volumeNamespace}/${b.volumeName}`), ['tenant-a/db'])
      assert.deepEqual((await g.runBackupPolicy('bare')).backups, [])
    } finally {
      await g.close()
    }
  })

  it('validates audit queries, saved heads and policy patterns', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await assert.rejects(g.queryAuditLog({ object: 123 as never }), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.queryAuditLog({ result: 'maybe' as never }), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.verifyAuditLog({} as never), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.verifyAuditLog('x' as never), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.createAccessPolicy({ name: 'p', principals: ['*'], verbs: ['admin'], namespaces: ['Tenant-A'] }), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /never match/.test(err.message))
      await assert.rejects(g.restoreBackup('x', { volume: 'v', namespace: 'a' }), { code: 'INVALID_ARGUMENT' })
    } finally {
      await g.close()
    }
  })
})
