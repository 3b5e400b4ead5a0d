// Edges of the audit log and of the checks it records: an entry that cannot be written for a call
// that failed or was denied, joining and leaving a cluster, and who may unmount whose mount.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { MemoryLevel } from 'memory-level'
import { GalleonFS, type Principal } from '../src/index.js'
import { MemoryBlockStore, MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'

type Coded = Error & { code?: string, auditError?: Error & { code?: string } }

/** The error `attempt` rejects with (the test fails if it resolves). */
async function failure (attempt: Promise<unknown>): Promise<Coded> {
  try {
    await attempt
  } catch (err) {
    return err as Coded
  }
  assert.fail('the call succeeded')
}

/** Audit entries as `principal action object result[ code]`, oldest first. */
async function entries (g: GalleonFS, query: Parameters<GalleonFS['queryAuditLog']>[0] = {}): Promise<string[]> {
  return (await g.queryAuditLog(query)).map((e) => `${e.principal} ${e.action} ${e.object} ${e.result}${e.code === undefined ? '' : ` ${e.code}`}`)
}

describe('an audit entry that cannot be written for a call that failed or was denied', () => {
  /**
   * An instance on a metadata database the test holds, with a volume `v` holding a snapshot `s`,
   * and a policy letting alice do everything but administer.
   */
  async function instance (): Promise<{ g: GalleonFS, metadata: MemoryLevel<string, unknown> }> {
    const metadata = new MemoryLevel<string, unknown>()
    const g = await GalleonFS.open({ metadata: metadata as never, blockStore: new MemoryBlockStore() })
    await g.createAccessPolicy({ name: 'alice', principals: ['user:alice'], verbs: ['volume:*', 'snapshot:*'] })
    await g.createVolume({ name: 'v', sizeBytes: '1M' })
    await g.createSnapshot('v', 's')
    return { g, metadata }
  }

  for (const who of ['a principal', 'the application']) {
    it(`${who}: the call's own error, carrying the audit log's error`, async () => {
      const { g, metadata } = await instance()
      try {
        const caller = who === 'the application' ? g : g.as({ id: 'alice' })
        // The snapshot exists: the call fails. The database closes before its entry is written.
        const call = caller.createSnapshot('v', 's')
        const closing = metadata.close()
        const err = await failure(call)
        await closing
        assert.equal(err.code, 'SNAPSHOT_EXISTS', err.message)
        assert.equal(err.auditError?.code, 'NOT_OPEN', 'the lost audit entry is reported with the error')
        assert.match(err.auditError.message, /audit entry of createSnapshot on snapshot:default\/v@s \(failed\)/)
      } finally {
        await g.close()
      }
    })
  }

  it('a denial stays PERMISSION_DENIED, carrying the audit log\'s error', async () => {
    const { g, metadata } = await instance()
    try {
      const call = g.as({ id: 'alice' }).createAccessPolicy({ name: 'mine', principals: ['user:alice'], verbs: ['*'] })
      const closing = metadata.close()
      const err = await failure(call)
      await closing
      assert.equal(err.code, 'PERMISSION_DENIED', err.message)
      assert.equal(err.auditError?.code, 'NOT_OPEN')
      assert.match(err.auditError.message, /audit entry of createAccessPolicy on access-policy:mine \(denied\)/)
    } finally {
      await g.close()
    }
  })

  it('an entry that is written leaves the error as it was', async () => {
    const { g } = await instance()
    try {
      const err = await failure(g.as({ id: 'alice' }).createSnapshot('v', 's'))
      assert.equal(err.code, 'SNAPSHOT_EXISTS')
      assert.equal('auditError' in err, false)
      assert.deepEqual(await entries(g, { principal: 'alice' }), ['alice createSnapshot snapshot:default/v@s failed SNAPSHOT_EXISTS'])
    } finally {
      await g.close()
    }
  })
})

describe('joining and leaving a cluster are audited', () => {
  it('successes and failures, for the application and for a principal, with the node', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const options = (nodeId: string): Parameters<GalleonFS['joinCluster']>[0] => ({ nodeId, transport: new MemoryTransport({ network, nodeId }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 })
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createAccessPolicy({ name: 'ops', principals: ['role:ops'], verbs: ['admin'] })
      const ops: Principal = { id: 'olga', roles: ['ops'] }
      const olga = g.as(ops)
      await g.joinCluster(options('n1'))
      // In a cluster already: BUSY.
      assert.equal((await failure(olga.joinCluster(options('n2')))).code, 'BUSY')
      await olga.leaveCluster()
      // Not in a cluster: nothing to leave.
      assert.equal((await failure(g.leaveCluster({ force: true }))).code, 'INVALID_ARGUMENT')
      await olga.joinCluster(options('n3'))
      await g.leaveCluster()
      // Denied, as before.
      assert.equal((await failure(g.as({ id: 'eve' }).joinCluster(options('n4')))).code, 'PERMISSION_DENIED')

      const logged = await g.queryAuditLog({ object: 'cluster' })
      assert.deepEqual(logged.map((e) => `${e.principal} ${e.action} ${e.verb ?? ''} ${e.result}${e.code === undefined ? '' : ` ${e.code}`} ${JSON.stringify(e.details ?? {})}`), [
        'application joinCluster admin ok {"node":"n1"}',
        'olga joinCluster admin failed BUSY {"node":"n2"}',
        'olga leaveCluster admin ok {"node":"n1"}',
        'application leaveCluster admin failed INVALID_ARGUMENT {"force":true}',
        'olga joinCluster admin ok {"node":"n3"}',
        'application leaveCluster admin ok {"node":"n3"}',
        'eve joinCluster admin denied PERMISSION_DENIED {}'
      ])
      assert.deepEqual(logged.filter((e) => e.principal === 'olga').map((e) => e.roles), [['ops'], ['ops'], ['ops']])
      assert.equal((await g.verifyAuditLog()).ok, true)
    } finally {
      await g.close()
    }
  })
})

describe('unmounting another\'s mount', () => {
  it('takes admin on the volume; whoever mounted it unmounts it with the right mounting took', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createAccessPolicy({ name: 'readers', principals: ['role:reader'], verbs: ['volume:read', 'snapshot:read'], namespaces: ['a'] })
      await g.createAccessPolicy({ name: 'writers', principals: ['role:writer'], verbs: ['volume:read', 'volume:write'], namespaces: ['a'] })
      await g.createAccessPolicy({ name: 'tenant-admins', principals: ['role:tenant-admin'], verbs: ['admin'], namespaces: ['a'] })
      await g.createVolume({ name: 'v', namespace: 'a', sizeBytes: '1M', accessModes: ['ReadWriteMany'] as never })
      await g.createSnapshot('a/v', 's')
      const rita = g.as({ id: 'rita', roles: ['reader'], namespace: 'a' })
      const rick = g.as({ id: 'rick', roles: ['reader'], namespace: 'a' })
      const will = g.as({ id: 'will', roles: ['writer'], namespace: 'a' })
      const wanda = g.as({ id: 'wanda', roles: ['writer'], namespace: 'a' })
      const tess = g.as({ id: 'tess', roles: ['tenant-admin'], namespace: 'a' })

      await g.mounts.mountVolume('a/v', '/m/app', { readOnly: true })
      await rita.mounts.mountVolume('v', '/m/rita', { readOnly: true })
      await rita.mounts.mountVolume({ volume: 'v', snapshot: 's' }, '/m/rita-s')
      await will.mounts.mountVolume('v', '/m/will')
      const file = await rita.mounts.openVolumeFile('/m/rita')

      // A reader may not detach another reader's mount (closing its files), nor the application's;
      // a writer may not detach another writer's read-write mount.
      assert.equal((await failure(rick.mounts.unmountVolume('/m/rita', { force: true }))).code, 'PERMISSION_DENIED')
      assert.equal((await failure(rick.mounts.unmountVolume('/m/rita-s'))).code, 'PERMISSION_DENIED')
      assert.equal((await failure(rick.mounts.unmountVolume('/m/app'))).code, 'PERMISSION_DENIED')
      const denial = await failure(wanda.mounts.unmountVolume('/m/will'))
      assert.equal(denial.code, 'PERMISSION_DENIED')
      assert.match(denial.message, /will/, 'the message names who made the mount')
      assert.equal(file.closed, false)
      assert.deepEqual(g.mounts.listMounts().map((m) => m.path), ['/m/app', '/m/rita', '/m/rita-s', '/m/will'])

      // Whoever mounted it unmounts it; an administrator of the volume and the application unmount any.
      await file.close()
      await rita.mounts.unmountVolume('/m/rita')
      await rita.mounts.unmountVolume('/m/rita-s')
      await tess.mounts.unmountVolume('/m/will')
      await tess.mounts.unmountVolume('/m/app')
      await rick.mounts.mountVolume('v', '/m/rick', { readOnly: true })
      await g.mounts.unmountVolume('/m/rick')
      assert.deepEqual(g.mounts.listMounts(), [])

      assert.deepEqual(await entries(g, { action: 'unmountVolume' }), [
        'rick unmountVolume volume:a/v denied PERMISSION_DENIED',
        'rick unmountVolume volume:a/v denied PERMISSION_DENIED',
        'rick unmountVolume volume:a/v denied PERMISSION_DENIED',
        'wanda unmountVolume volume:a/v denied PERMISSION_DENIED',
        'rita unmountVolume volume:a/v ok',
        'rita unmountVolume volume:a/v ok',
        'tess unmountVolume volume:a/v ok',
        'tess unmountVolume volume:a/v ok',
        'application unmountVolume volume:a/v ok'
      ])
      const byTess = await g.queryAuditLog({ action: 'unmountVolume', principal: 'tess' })
      assert.deepEqual(byTess.map((e) => [e.verb, e.details]), [['admin', { mountedBy: 'will' }], ['admin', { readOnly: true, mountedBy: 'application' }]])
      const byRita = await g.queryAuditLog({ action: 'unmountVolume', principal: 'rita' })
      assert.deepEqual(byRita.map((e) => e.verb), ['volume:read', 'snapshot:read'])
    } finally {
      await g.close()
    }
  })
})
