// Storage pools: definitions and their validation, capacity accounting (NO_SPACE before anything is
// written, on create, expand, clone and restore), freeing on delete, persistence, concurrent creates,
// storage classes naming a pool, Prometheus families, and placement on a pool's nodes in a cluster.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, VolumeState, BackupStrategy, type GalleonError, type StoragePool } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { parsePool, poolAdmits, poolPlacement } from '../src/volumes/pools.js'
import { rejectsWithCode } from './support/assertions.js'

interface ParsedFamily { name: string, type: string, metrics: Array<{ value?: string, labels?: Record<string, string> }> }
const parsePrometheusTextFormat = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => ParsedFamily[]

const MiB = 1 << 20
const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

async function tempDir (prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  dirs.push(dir)
  return dir
}

async function memory (): Promise<GalleonFS> {
  const g = await GalleonFS.open({ inMemory: true })
  opened.push(g)
  return g
}

const code = rejectsWithCode

function filled (byte: number, size = 4096): Uint8Array {
  return new Uint8Array(size).fill(byte)
}

describe('storage pools', () => {
  it('creates, reads, lists, updates and deletes pools, with events', async () => {
    const g = await memory()
    const events: string[] = []
    g.on('pool:created', (pool: StoragePool) => { events.push(`created ${pool.name}`) })
    g.on('pool:updated', (pool: StoragePool) => { events.push(`updated ${pool.name} ${pool.capacityBytes}`) })
    g.on('pool:deleted', (pool: StoragePool) => { events.push(`deleted ${pool.name}`) })
    const created = await g.createPool({ name: 'fast', capacityBytes: '64M', description: 'NVMe shelf', labels: { tier: 'gold' }, nodes: ['n1', 'n2'], nodeSelector: { labels: { disk: 'ssd' }, zones: ['z1'] } })
    assert.equal(created.capacityBytes, 64 * MiB)
    assert.equal(created.overcommitRatio, 1)
    assert.equal(created.limitBytes, 64 * MiB)
    assert.equal(created.provisionedBytes, 0)
    assert.equal(created.allocatedBytes, 0)
    assert.equal(created.freeBytes, 64 * MiB)
    assert.equal(created.volumes, 0)
    assert.deepEqual(created.nodes, ['n1', 'n2'])
    assert.deepEqual(created.nodeSelector, { labels: { disk: 'ssd' }, zones: ['z1'] })
    assert.equal(created.description, 'NVMe shelf')
    assert.deepEqual(created.labels, { tier: 'gold' })
    // snake_case, as from a YAML file.
    const slow = await g.createPool({ name: 'slow', capacity_bytes: 1024 * MiB, overcommit_ratio: 2.5 } as never)
    assert.equal(slow.limitBytes, 2560 * MiB)
    assert.deepEqual((await g.listPools()).map((p) => p.name), ['fast', 'slow'])
    assert.equal((await g.getPool('fast')).description, 'NVMe shelf')
    await assert.rejects(g.createPool({ name: 'fast', capacityBytes: MiB }), code('POOL_EXISTS'))
    const updated = await g.updatePool('fast', { capacityBytes: '128M', overcommitRatio: 1.5, labels: { tier: 'platinum' } })
    assert.equal(updated.capacityBytes, 128 * MiB)
    assert.equal(updated.limitBytes, 192 * MiB)
    assert.deepEqual(updated.labels, { tier: 'platinum' })
    assert.deepEqual(updated.nodes, ['n1', 'n2'], 'fields not named stay')
    await g.deletePool('slow')
    await assert.rejects(g.getPool('slow'), code('POOL_NOT_FOUND', /listPools/))
    await assert.rejects(g.deletePool('slow'), code('POOL_NOT_FOUND'))
    await assert.rejects(g.updatePool('slow', { capacityBytes: MiB }), code('POOL_NOT_FOUND'))
    assert.deepEqual((await g.listPools()).map((p) => p.name), ['fast'])
    assert.deepEqual(events, ['created fast', 'created slow', `updated fast ${128 * MiB}`, 'deleted slow'])
  })

  it('refuses bad input for every field with INVALID_ARGUMENT, and changes nothing', async () => {
    const g = await memory()
    const bad: Array<[string, unknown]> = [
      ['not an object', 'fast'],
      ['null', null],
      ['an array', []],
      ['missing name', { capacityBytes: MiB }],
      ['uppercase name', { name: 'Fast', capacityBytes: MiB }],
      ['name with a space', { name: 'a b', capacityBytes: MiB }],
      ['name too long', { name: 'a'.repeat(64), capacityBytes: MiB }],
      ['unknown field', { name: 'a', capacityBytes: MiB, colour: 'red' }],
      ['field given twice', { name: 'a', capacityBytes: MiB, capacity_bytes: MiB }],
      ['missing capacity', { name: 'a' }],
      ['zero capacity', { name: 'a', capacityBytes: 0 }],
      ['negative capacity', { name: 'a', capacityBytes: -1 }],
      ['fractional capacity', { name: 'a', capacityBytes: 1.5 }],
      ['capacity text', { name: 'a', capacityBytes: 'lots' }],
      ['capacity object', { name: 'a', capacityBytes: {} }],
      ['overcommit below 1', { name: 'a', capacityBytes: MiB, overcommitRatio: 0.5 }],
      ['overcommit not a number', { name: 'a', capacityBytes: MiB, overcommitRatio: '2' }],
      ['overcommit infinite', { name: 'a', capacityBytes: MiB, overcommitRatio: Infinity }],
      ['overcommit huge', { name: 'a', capacityBytes: MiB, overcommitRatio: 1e6 }],
      ['nodes not a list', { name: 'a', capacityBytes: MiB, nodes: 'n1' }],
      ['node id malformed', { name: 'a', capacityBytes: MiB, nodes: ['n 1'] }],
      ['node twice', { name: 'a', capacityBytes: MiB, nodes: ['n1', 'n1'] }],
      ['selector not an object', { name: 'a', capacityBytes: MiB, nodeSelector: 'disk=ssd' }],
      ['selector unknown field', { name: 'a', capacityBytes: MiB, nodeSelector: { racks: ['r1'] } }],
      ['selector labels not strings', { name: 'a', capacityBytes: MiB, nodeSelector: { labels: { disk: 1 } } }],
      ['selector zones not a list', { name: 'a', capacityBytes: MiB, nodeSelector: { zones: 'z1' } }],
      ['selector zone empty', { name: 'a', capacityBytes: MiB, nodeSelector: { zones: [''] } }],
      ['description not a string', { name: 'a', capacityBytes: MiB, description: 5 }],
      ['description too long', { name: 'a', capacityBytes: MiB, description: 'x'.repeat(1025) }],
      ['labels not an object', { name: 'a', capacityBytes: MiB, labels: ['x'] }],
      ['label key malformed', { name: 'a', capacityBytes: MiB, labels: { '-x': 'y' } }],
      ['label value not a string', { name: 'a', capacityBytes: MiB, labels: { x: 1 } }]
    ]
    for (const [what, input] of bad) {
      await assert.rejects(g.createPool(input as never), code('INVALID_ARGUMENT'), what)
    }
    assert.deepEqual(await g.listPools(), [])
    await g.createPool({ name: 'p', capacityBytes: MiB })
    for (const [what, changes] of [
      ['not an object', 5], ['unknown field', { nodes: ['n1'] }], ['bad capacity', { capacityBytes: -5 }],
      ['bad ratio', { overcommitRatio: 0 }], ['bad description', { description: {} }], ['bad labels', { labels: 'x' }]
    ] as Array<[string, unknown]>) {
      await assert.rejects(g.updatePool('p', changes as never), code('INVALID_ARGUMENT'), what)
    }
    assert.equal((await g.getPool('p')).capacityBytes, MiB)
    for (const name of [undefined, 5, 'Bad Name', '']) {
      await assert.rejects(g.getPool(name as never), code('INVALID_ARGUMENT'))
      await assert.rejects(g.deletePool(name as never), code('INVALID_ARGUMENT'))
    }
    await assert.rejects(g.createVolume({ name: 'v', sizeBytes: MiB, pool: 'No Such' }), code('INVALID_ARGUMENT'))
    await assert.rejects(g.createVolume({ name: 'v', sizeBytes: MiB, pool: 'missing' }), code('POOL_NOT_FOUND'))
    await assert.rejects(g.createStorageClass({ name: 'c', parameters: { pool: 'Not_A_Pool' } }), code('INVALID_ARGUMENT'))
    assert.deepEqual(await g.listVolumes(), [])
  })

  it('NO_SPACE on create, expand and clone when the pool is full, before anything is written or recorded', async () => {
    const g = await memory()
    await g.createPool({ name: 'small', capacityBytes: '4M' })
    const a = await g.createVolume({ name: 'a', sizeBytes: '3M', pool: 'small' })
    assert.equal(a.pool, 'small')
    await g.writeBlock('a', 0, filled(1))
    await g.writeBlock('a', 5, filled(2))
    const before = { volumes: await g.listVolumes(), pool: await g.getPool('small'), store: await g.getStorageStats(), snapshots: await g.listSnapshots('a') }
    assert.equal(before.pool.provisionedBytes, 3 * MiB)
    assert.equal(before.pool.allocatedBytes, 2 * 4096)
    assert.equal(before.pool.freeBytes, 1 * MiB)
    const unchanged = async (): Promise<void> => {
      assert.deepEqual(await g.listVolumes(), before.volumes)
      assert.deepEqual(await g.getPool('small'), before.pool)
      assert.deepEqual(await g.getStorageStats(), before.store)
      assert.deepEqual(await g.listSnapshots('a'), before.snapshots)
    }

    await assert.rejects(g.createVolume({ name: 'b', sizeBytes: '2M', pool: 'small' }), code('NO_SPACE', /pool small .*volume b needs 2097152 bytes .*only 1048576 bytes .*free.*Nothing was written.*updatePool/))
    await unchanged()
    await assert.rejects(g.expandVolume('a', '5M'), code('NO_SPACE', /pool small .*expanding volume a .*needs 2097152 bytes/))
    assert.equal((await g.getVolume('a')).sizeBytes, 3 * MiB)
    await unchanged()
    await assert.rejects(g.cloneVolume('a', 'a-copy'), code('NO_SPACE', /pool small .*clone a-copy of a needs 3145728 bytes/))
    await unchanged()
    await g.createSnapshot('a', 'snap')
    await assert.rejects(g.cloneVolume({ volume: 'a', snapshot: 'snap' }, 'a-copy'), code('NO_SPACE'))
    assert.deepEqual((await g.listSnapshots('a')).map((s) => s.name), ['snap'])
    // The name the failed creates asked for is free again.
    const outside = await g.createVolume({ name: 'b', sizeBytes: '2M' })
    assert.equal(outside.pool, undefined, 'a volume outside any pool is not limited by one')
    // What fits is taken: exactly the free megabyte.
    await g.expandVolume('a', '4M')
    assert.equal((await g.getPool('small')).freeBytes, 0)
    await assert.rejects(g.createVolume({ name: 'c', sizeBytes: 4096, pool: 'small' }), code('NO_SPACE', /only 0 bytes/))
  })

  it('frees a volume\'s provision when it is deleted; clones are charged their full size; overcommit allows thin provisioning', async () => {
    const g = await memory()
    await g.createPool({ name: 'thin', capacityBytes: '2M', overcommitRatio: 2 })
    await g.createVolume({ name: 'one', sizeBytes: '2M', pool: 'thin' })
    await g.writeBlock('one', 0, filled(7))
    const clone = await g.cloneVolume('one', 'two')
    assert.equal(clone.pool, 'thin')
    let pool = await g.getPool('thin')
    assert.equal(pool.provisionedBytes, 4 * MiB, 'provisioned may exceed capacity up to the overcommit ratio')
    assert.equal(pool.volumes, 2)
    assert.equal(pool.allocatedBytes, 4096, 'the clone shares its block with its source')
    await assert.rejects(g.createVolume({ name: 'three', sizeBytes: 4096, pool: 'thin' }), code('NO_SPACE'))
    await g.writeBlock('two', 1, filled(8))
    assert.equal((await g.getPool('thin')).allocatedBytes, 2 * 4096)
    await g.deleteVolume('two')
    pool = await g.getPool('thin')
    assert.equal(pool.provisionedBytes, 2 * MiB)
    assert.equal(pool.freeBytes, 2 * MiB)
    assert.equal(pool.volumes, 1)
    await g.createVolume({ name: 'three', sizeBytes: '2M', pool: 'thin' })
    assert.equal((await g.getPool('thin')).freeBytes, 0)
  })

  it('refuses to delete a pool while volumes or storage classes use it; refuses to shrink it below what is provisioned', async () => {
    const g = await memory()
    await g.createPool({ name: 'busy', capacityBytes: '8M' })
    await g.createVolume({ name: 'v1', sizeBytes: '3M', pool: 'busy' })
    await assert.rejects(g.deletePool('busy'), code('BUSY', /v1/))
    await assert.rejects(g.updatePool('busy', { capacityBytes: '2M' }), code('BUSY', /3145728 bytes .*provisioned/))
    assert.equal((await g.getPool('busy')).capacityBytes, 8 * MiB)
    await g.updatePool('busy', { capacityBytes: '3M' })
    await g.deleteVolume('v1')
    await g.createStorageClass({ name: 'in-busy', parameters: { pool: 'busy' } })
    await assert.rejects(g.deletePool('busy'), code('BUSY', /in-busy/))
    await g.deleteStorageClass('in-busy')
    await g.deletePool('busy')
    assert.deepEqual(await g.listPools(), [])
  })

  it('storage classes name a pool with parameters.pool', async () => {
    const g = await memory()
    await assert.rejects(g.createStorageClass({ name: 'gold', parameters: { pool: 'gold-pool' } }), code('POOL_NOT_FOUND', /createPool/))
    await g.createPool({ name: 'gold-pool', capacityBytes: '2M' })
    await g.createPool({ name: 'other', capacityBytes: '2M' })
    await g.createStorageClass({ name: 'gold', parameters: { pool: 'gold-pool' } })
    const v = await g.createVolume({ name: 'g1', sizeBytes: '1M', storageClass: 'gold' })
    assert.equal(v.pool, 'gold-pool')
    assert.equal((await g.getVolume('g1')).pool, 'gold-pool')
    const same = await g.createVolume({ name: 'g2', sizeBytes: '512K', storageClass: 'gold', pool: 'gold-pool' })
    assert.equal(same.pool, 'gold-pool', 'naming the class\'s own pool is allowed')
    await assert.rejects(g.createVolume({ name: 'g3', sizeBytes: '512K', storageClass: 'gold', pool: 'other' }), code('INVALID_ARGUMENT', /puts its volumes in pool gold-pool/))
    await assert.rejects(g.createVolume({ name: 'g3', sizeBytes: '1M', storageClass: 'gold' }), code('NO_SPACE', /gold-pool/))
    assert.deepEqual((await g.listVolumes()).map((x) => x.name), ['g1', 'g2'])
    assert.equal((await g.getPool('other')).provisionedBytes, 0)
  })

  it('does not over-commit when many creates race for the last free bytes', async () => {
    const g = await memory()
    await g.createPool({ name: 'race', capacityBytes: '10M' })
    const results = await Promise.allSettled(Array.from({ length: 25 }, async (_, i) => await g.createVolume({ name: `r${i}`, sizeBytes: '1M', pool: 'race' })))
    const made = results.filter((r) => r.status === 'fulfilled')
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected')
    assert.equal(made.length, 10)
    assert.equal(refused.length, 15)
    for (const r of refused) assert.equal((r.reason as GalleonError).code, 'NO_SPACE')
    const pool = await g.getPool('race')
    assert.equal(pool.provisionedBytes, 10 * MiB)
    assert.equal(pool.volumes, 10)
    assert.equal((await g.listVolumes()).length, 10)
    // A pool cannot be deleted from under creates in flight either.
    await g.createPool({ name: 'racy-delete', capacityBytes: '10M' })
    const [createOutcome, deleteOutcome] = await Promise.allSettled([g.createVolume({ name: 'x1', sizeBytes: '1M', pool: 'racy-delete' }), g.deletePool('racy-delete')])
    assert.ok((createOutcome.status === 'fulfilled') !== (deleteOutcome.status === 'fulfilled'), 'either the volume is created or the pool deleted, never both')
    if (createOutcome.status === 'fulfilled') assert.equal((await g.getPool('racy-delete')).volumes, 1)
    else await assert.rejects(g.getPool('racy-delete'), code('POOL_NOT_FOUND'))
  })

  it('keeps pools and their accounting across close and reopen on disk', async () => {
    const dir = await tempDir('galleon-pools-')
    let g = await GalleonFS.open({ storagePath: dir })
    await g.createPool({ name: 'disk', capacityBytes: '4M', overcommitRatio: 1.5, nodes: ['n1'], labels: { a: 'b' } })
    await g.createStorageClass({ name: 'on-disk', parameters: { pool: 'disk' } })
    await g.createVolume({ name: 'd1', sizeBytes: '4M', storageClass: 'on-disk' })
    await g.writeBlock('d1', 3, filled(3))
    const before = await g.getPool('disk')
    await g.close()
    g = await GalleonFS.open({ storagePath: dir })
    opened.push(g)
    const after = await g.getPool('disk')
    assert.deepEqual(after, before)
    assert.equal(after.provisionedBytes, 4 * MiB)
    assert.equal(after.allocatedBytes, 4096)
    assert.equal((await g.getVolume('d1')).pool, 'disk')
    await assert.rejects(g.createVolume({ name: 'd2', sizeBytes: '3M', pool: 'disk' }), code('NO_SPACE'))
    await g.createVolume({ name: 'd2', sizeBytes: '2M', pool: 'disk' })
    await assert.rejects(g.deletePool('disk'), code('BUSY'))
  })

  it('restores a backup into its pool, refused with NO_SPACE before a volume is created when it is full', async () => {
    const dir = await tempDir('galleon-pools-backup-')
    const g = await GalleonFS.open({ storagePath: join(dir, 'data'), backupTarget: join(dir, 'backups') })
    opened.push(g)
    await g.createPool({ name: 'bk', capacityBytes: '3M' })
    await g.createVolume({ name: 'src', sizeBytes: '2M', pool: 'bk' })
    await g.writeBlock('src', 0, filled(9))
    const backup = await g.createBackup('src', { strategy: BackupStrategy.Full })
    const volumes = await g.listVolumes()
    await assert.rejects(g.restoreBackup(backup.id, { name: 'again' }), code('NO_SPACE', /pool bk/))
    assert.deepEqual(await g.listVolumes(), volumes)
    await assert.rejects(g.restoreBackup(backup.id, { volume: 'src', pool: 'bk' }), code('INVALID_ARGUMENT'))
    await g.createPool({ name: 'roomy', capacityBytes: '4M' })
    const restored = await g.restoreBackup(backup.id, { name: 'again', pool: 'roomy' })
    assert.equal(restored.pool, 'roomy')
    assert.deepEqual(await g.readBlock('again', 0), filled(9))
    await g.deleteVolume('src')
    const back = await g.restoreBackup(backup.id, { name: 'src' })
    assert.equal(back.pool, 'bk', 'a new volume from a backup goes to the backed-up volume\'s pool')
  })

  it('reports pools in the Prometheus text', async () => {
    const g = await memory()
    await g.createPool({ name: 'metered', capacityBytes: '8M', overcommitRatio: 2 })
    await g.createPool({ name: 'empty', capacityBytes: '1M' })
    await g.createVolume({ name: 'm1', sizeBytes: '5M', pool: 'metered' })
    await g.writeBlock('m1', 0, filled(1))
    await g.writeBlock('m1', 1, filled(2))
    const families = new Map(parsePrometheusTextFormat(await g.metricsText()).map((f) => [f.name, f]))
    const value = (family: string, pool: string): number => {
      const f = families.get(family)
      assert.ok(f !== undefined, `family ${family}`)
      assert.equal(f.type, 'GAUGE')
      const sample = f.metrics.find((m) => m.labels?.pool === pool)
      assert.ok(sample !== undefined, `${family}{pool="${pool}"}`)
      return Number(sample.value)
    }
    assert.equal(value('galleonfs_pool_capacity_bytes', 'metered'), 8 * MiB)
    assert.equal(value('galleonfs_pool_limit_bytes', 'metered'), 16 * MiB)
    assert.equal(value('galleonfs_pool_provisioned_bytes', 'metered'), 5 * MiB)
    assert.equal(value('galleonfs_pool_allocated_bytes', 'metered'), 2 * 4096)
    assert.equal(value('galleonfs_pool_reserved_bytes', 'metered'), 0)
    assert.equal(value('galleonfs_pool_free_bytes', 'metered'), 11 * MiB)
    assert.equal(value('galleonfs_pool_volumes', 'metered'), 1)
    assert.equal(value('galleonfs_pool_volumes', 'empty'), 0)
    assert.equal(value('galleonfs_pool_free_bytes', 'empty'), MiB)
  })
})

describe('pool placement rules', () => {
  const pool = { ...parsePool({ name: 'p', capacityBytes: 1, nodes: ['a', 'b'], nodeSelector: { labels: { disk: 'ssd' }, zones: ['z1', 'z2'] } }), createdAt: '', updatedAt: '' }

  it('narrows a class\'s placement to the pool\'s nodes, zones and labels', () => {
    assert.deepEqual(poolPlacement(pool, { strategy: 'balanced' }), { strategy: 'balanced', nodes: ['a', 'b'], zones: ['z1', 'z2'], affinity: { disk: 'ssd' } })
    assert.deepEqual(poolPlacement(pool, { zones: ['z2', 'z3'], affinity: { rack: 'r1' } }), { zones: ['z2'], nodes: ['a', 'b'], affinity: { rack: 'r1', disk: 'ssd' } })
    assert.equal(poolAdmits(pool, { id: 'a', zone: 'z1', labels: { disk: 'ssd' } }), true)
    assert.equal(poolAdmits(pool, { id: 'c', zone: 'z1', labels: { disk: 'ssd' } }), false, 'not in nodes')
    assert.equal(poolAdmits(pool, { id: 'a', zone: 'z3', labels: { disk: 'ssd' } }), false, 'zone')
    assert.equal(poolAdmits(pool, { id: 'a', zone: 'z1', labels: { disk: 'hdd' } }), false, 'label')
  })

  it('refuses a class and a pool no node can satisfy together', () => {
    assert.throws(() => poolPlacement(pool, { zones: ['z3'] }), code('INVALID_ARGUMENT', /no zone is in both/))
    assert.throws(() => poolPlacement(pool, { affinity: { disk: 'hdd' } }), code('INVALID_ARGUMENT', /disk=hdd .*disk=ssd/))
    assert.throws(() => poolPlacement(pool, { antiAffinity: { disk: 'ssd' } }), code('INVALID_ARGUMENT', /excludes nodes with disk=ssd/))
  })
})

describe('storage pools in a cluster (memory transport)', () => {
  interface Node { g: GalleonFS, id: string }

  async function startNode (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, id: string, zone: string, labels: Record<string, string> = {}): Promise<Node> {
    const g = await GalleonFS.open({
      storagePath: await tempDir(`galleon-pools-${id}-`),
      cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000, zone, labels }
    })
    opened.push(g)
    return { g, id }
  }

  async function until (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }

  it('places copies only on the pool\'s nodes; too few of them leave the volume degraded until one joins', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const nodes = [
      await startNode(network, coordinators, 'n1', 'z1', { disk: 'ssd' }),
      await startNode(network, coordinators, 'n2', 'z2', { disk: 'ssd' }),
      await startNode(network, coordinators, 'n3', 'z3', { disk: 'hdd' }),
      await startNode(network, coordinators, 'n4', 'z4', { disk: 'ssd' })
    ]
    await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 4))
    const [n1, , n3, n4] = nodes as [Node, Node, Node, Node]
    // Pools are per node, like storage classes: each node that may hold a copy defines them.
    for (const node of nodes) {
      await node.g.createPool({ name: 'pair', capacityBytes: '16M', nodes: ['n1', 'n3'] })
      await node.g.createPool({ name: 'trio', capacityBytes: '16M', nodes: ['n1', 'n2', 'n5'] })
      await node.g.createPool({ name: 'ssd', capacityBytes: '16M', nodeSelector: { labels: { disk: 'ssd' }, zones: ['z1', 'z3', 'z4'] } })
    }
    // Without the pool, spread would pick any two others; the pool allows only n3.
    await n1.g.createVolume({ name: 'paired', sizeBytes: '256K', replicas: 2, pool: 'pair' })
    assert.deepEqual([...(await n1.g.replicationStatus('paired')).nodes].sort(), ['n1', 'n3'])
    await until('the copy on n3 exists', async () => (await n3.g.listVolumes()).some((v) => v.name === 'paired'))
    assert.equal((await n3.g.getVolume('paired')).pool, 'pair', 'the copy counts in n3\'s pool of that name')
    assert.equal((await n3.g.getPool('pair')).provisionedBytes, 256 * 1024)
    // Labels and zones: n2 is out by zone, n3 by label: n4 is the only other choice.
    await n1.g.createVolume({ name: 'selected', sizeBytes: '256K', replicas: 2, pool: 'ssd' })
    assert.deepEqual([...(await n1.g.replicationStatus('selected')).nodes].sort(), ['n1', 'n4'])
    // A node outside the pool cannot hold the first copy.
    await assert.rejects(n4.g.createVolume({ name: 'elsewhere', sizeBytes: '256K', pool: 'pair' }), code('INVALID_ARGUMENT', /not in pool pair.*one of n1, n3/))
    assert.equal((await n4.g.listVolumes()).some((v) => v.name === 'elsewhere'), false)
    // Three copies asked, two pool nodes up: degraded, and it stays on pool nodes as the leader fills it.
    const trio = await n1.g.createVolume({ name: 'trio', sizeBytes: '256K', replicas: 3, pool: 'trio' })
    assert.equal(trio.state, VolumeState.Degraded)
    const status = await n1.g.replicationStatus('trio')
    assert.deepEqual([...status.nodes].sort(), ['n1', 'n2'])
    assert.equal(status.degraded, true)
    const n5 = await startNode(network, coordinators, 'n5', 'z5')
    await n5.g.createPool({ name: 'trio', capacityBytes: '16M' })
    await until('the leader places the third copy', async () => (await n1.g.replicationStatus('trio')).nodes.length === 3)
    assert.deepEqual([...(await n1.g.replicationStatus('trio')).nodes].sort(), ['n1', 'n2', 'n5'], 'never on n3 or n4, which are not in the pool')
    for (const node of [...nodes, n5]) await node.g.close()
  })
})
