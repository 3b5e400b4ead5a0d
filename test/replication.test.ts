// Replication of volumes between GalleonFS instances in one process: each node has its own on-disk
// storage (the file block store and classic-level), they talk over the memory transport (with its
// fault injection) and share a memory coordinator. Real processes, etcd and kill -9 are in
// replication-daemons.test.ts.

import { after, describe, it } from 'node:test'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern, VolumeState } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { GalleonError } from '../src/errors.js'
import type { BlockStore, Coordinator, MountDriver } from '../src/drivers.js'
import { NbdServer } from '../backends/nbd/index.js'
import { until } from './support/wait.js'
import { deletedKey, parseRecord, recordKey } from '../src/replication/records.js'

const exec = promisify(execFile)
const NO_NBDCOPY = ['/bin', '/usr/bin', '/usr/local/bin'].some((dir) => existsSync(join(dir, 'nbdcopy'))) ? undefined : 'nbdcopy is not installed (see .ci/run)'

interface Node { g: GalleonFS, id: string, dir: string, events: string[] }

const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

async function startNode (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, id: string, options: { zone?: string, dir?: string, labels?: Record<string, string>, replicaReplacementDelayMs?: number, coordinator?: Coordinator, blockStore?: BlockStore } = {}): Promise<Node> {
  const dir = options.dir ?? await mkdtemp(join(tmpdir(), `galleon-repl-${id}-`))
  if (options.dir === undefined) dirs.push(dir)
  const events: string[] = []
  const g = await GalleonFS.open({
    storagePath: dir,
    ...(options.blockStore === undefined ? {} : { blockStore: options.blockStore }),
    cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: options.coordinator ?? coordinators.coordinator(), leaseTtlMs: 1000, ...(options.replicaReplacementDelayMs === undefined ? {} : { replicaReplacementDelayMs: options.replicaReplacementDelayMs }), ...(options.zone === undefined ? {} : { zone: options.zone }), ...(options.labels === undefined ? {} : { labels: options.labels }) }
  })
  opened.push(g)
  for (const event of ['replication:failover', 'replication:out-of-sync', 'replication:in-sync', 'replication:resynced', 'replication:primary', 'replication:demoted', 'replication:replica-removed', 'replication:copy-dropped'] as const) {
    g.on(event, (payload: unknown) => { events.push(`${event} ${JSON.stringify(payload)}`) })
  }
  return { g, id, dir, events }
}

/** Three nodes whose leader replaces a dead node's copies after 1.5 s. */
async function replacingCluster (): Promise<{ network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, nodes: Node[], n1: Node }> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const nodes: Node[] = []
  for (const id of ['n1', 'n2', 'n3']) nodes.push(await startNode(network, coordinators, id, { replicaReplacementDelayMs: 1500 }))
  await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 3))
  return { network, coordinators, nodes, n1: nodes[0] as Node }
}

async function expectRejects (promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (err: { code?: string }) => err.code === code)
}

function block (seed: number, size = 4096): Uint8Array {
  const out = new Uint8Array(size)
  for (let i = 0; i < size; i++) out[i] = (seed * 31 + i * 7) & 0xff
  return out
}

async function cluster (count: number, zones?: string[]): Promise<{ network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, nodes: Node[] }> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const nodes: Node[] = []
  for (let i = 0; i < count; i++) nodes.push(await startNode(network, coordinators, `n${i + 1}`, zones === undefined ? {} : { zone: zones[i] as string }))
  await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === count))
  return { network, coordinators, nodes }
}

/**
 * What each node's own copy holds: the nodes are closed, then each storage path is opened alone
 * (outside the cluster, reads are served by the local copy).
 */
async function copies (nodes: Node[], volume: string, length: number): Promise<Map<string, Uint8Array>> {
  for (const node of nodes) if (!node.g.closed) await node.g.close()
  const out = new Map<string, Uint8Array>()
  for (const node of nodes) {
    const g = await GalleonFS.open({ storagePath: node.dir })
    try {
      out.set(node.id, await g.read(volume, 0, length))
    } finally {
      await g.close()
    }
  }
  return out
}

describe('replication (memory transport, on-disk nodes)', () => {
  it('creates a 3-copy volume on three nodes; every write concern works; copies hold the same bytes', async () => {
    const { nodes } = await cluster(3, ['a', 'b', 'c'])
    const [n1, n2, n3] = nodes as [Node, Node, Node]
    const vol = await n1.g.createVolume({ name: 'triple', sizeBytes: '1M', replicas: 3 })
    assert.equal(vol.replicas, 3)
    const status = await n1.g.replicationStatus('triple')
    assert.equal(status.role, 'primary')
    assert.deepEqual([...status.nodes].sort(), ['n1', 'n2', 'n3'])
    assert.deepEqual([...status.inSync].sort(), ['n1', 'n2', 'n3'])
    assert.equal(vol.state, VolumeState.Available)
    for (const [i, concern] of [WriteConcern.WriteAcknowledged, WriteConcern.WriteDurable, WriteConcern.WriteReplicated, WriteConcern.WriteDistributed].entries()) {
      await n1.g.writeBlock('triple', i, block(i + 1), concern)
    }
    await n1.g.write('triple', 4096 * 4 + 100, block(9, 300), WriteConcern.WriteReplicated)
    await n1.g.trim('triple', 4096 * 1, 4096)
    // Each copy exists on its node with the same id; reads on replicas go to the primary.
    for (const node of [n2, n3]) {
      const copy = await node.g.getVolume('triple')
      assert.equal(copy.id, vol.id)
      assert.equal((await node.g.replicationStatus('triple')).role, 'replica')
    }
    // Writes and reads through a replica node are forwarded to the primary.
    await n3.g.writeBlock('triple', 7, block(77), WriteConcern.WriteReplicated)
    assert.deepEqual(await n1.g.readBlock('triple', 7), block(77))
    assert.deepEqual(await n2.g.readBlock('triple', 7), block(77))
    // A short writeBlock replaces the whole block, zero-padded, on the primary and on the copies alike.
    await n1.g.writeBlock('triple', 5, block(5), WriteConcern.WriteReplicated)
    await n1.g.writeBlock('triple', 5, block(55, 100), WriteConcern.WriteReplicated)
    const expected = await n1.g.read('triple', 0, 8 * 4096)
    assert.deepEqual(expected.subarray(0, 4096), block(1))
    assert.deepEqual(expected.subarray(5 * 4096, 5 * 4096 + 100), block(55, 100))
    assert.ok(expected.subarray(5 * 4096 + 100, 6 * 4096).every((b) => b === 0), 'the rest of the short block reads as zeros')
    assert.ok(expected.subarray(4096, 8192).every((b) => b === 0), 'the trimmed block reads as zeros')
    const links = (await n1.g.replicationStatus('triple')).links
    assert.equal(links.length, 2)
    for (const link of links) {
      assert.equal(link.state, 'streaming')
      assert.equal(link.lagChanges, 0)
      assert.ok(link.shippedBytes >= 5 * 4096, `shipped ${link.shippedBytes}`)
    }
    const metrics = await n1.g.metricsText()
    assert.match(metrics, /galleonfs_replication_lag_changes\{volume_id="[^"]+",volume_name="triple",namespace="default",node="n2"\} 0/)
    assert.match(metrics, /galleonfs_replication_in_sync\{volume_id="[^"]+",volume_name="triple",namespace="default",node="n3"\} 1/)
    // Every copy holds the same bytes on its own disk.
    const held = await copies(nodes, 'triple', 8 * 4096)
    for (const node of nodes) assert.deepEqual(held.get(node.id), expected, `copy on ${node.id}`)
  })

  it('refuses WriteDistributed before writing when every copy is in one zone', async () => {
    const { nodes } = await cluster(2)
    const [n1] = nodes as [Node, Node]
    await n1.g.createVolume({ name: 'onezone', sizeBytes: '256K', replicas: 2 })
    await n1.g.writeBlock('onezone', 0, block(1), WriteConcern.WriteReplicated)
    await assert.rejects(n1.g.writeBlock('onezone', 1, block(2), WriteConcern.WriteDistributed), (err: Error & { code?: string }) => err.code === 'WRITE_CONCERN_UNSATISFIED' && /zone other than default/.test(err.message) && /Nothing was written/.test(err.message))
    assert.ok((await n1.g.readBlock('onezone', 1)).every((b) => b === 0))
    for (const node of nodes) await node.g.close()
  })

  it('a volume with fewer nodes than copies is Degraded, and gets its copy when a node joins', async () => {
    const { network, coordinators, nodes } = await cluster(2)
    const [n1] = nodes as [Node, Node]
    const vol = await n1.g.createVolume({ name: 'short', sizeBytes: '256K', replicas: 3 })
    assert.equal(vol.state, VolumeState.Degraded)
    await n1.g.writeBlock('short', 3, block(3), WriteConcern.WriteReplicated)
    const n3 = await startNode(network, coordinators, 'n3')
    nodes.push(n3)
    await until('the new node holds an in-sync copy', async () => (await n1.g.replicationStatus('short')).inSync.length === 3)
    assert.equal((await n1.g.getVolume('short')).state, VolumeState.Available)
    assert.equal((await n3.g.getVolume('short')).id, vol.id)
    const held = await copies(nodes, 'short', 256 * 1024)
    for (const node of nodes) assert.deepEqual(held.get(node.id)?.subarray(3 * 4096, 4 * 4096), block(3), `copy on ${node.id}`)
  })

  it('replaces the copy of a node that stays dead past the replacement delay; the node drops its stale copy when it comes back', async () => {
    const { network, coordinators, nodes, n1 } = await replacingCluster()
    await n1.g.createVolume({ name: 'lasting', sizeBytes: '256K', replicas: 2 })
    for (let i = 0; i < 16; i++) await n1.g.writeBlock('lasting', i, block(i + 1), WriteConcern.WriteReplicated)
    const before = await n1.g.replicationStatus('lasting')
    const lostId = before.nodes.find((n) => n !== 'n1') as string
    const lost = nodes.find((n) => n.id === lostId) as Node
    const spare = nodes.find((n) => n.id !== 'n1' && n.id !== lostId) as Node
    assert.equal(before.nodes.includes(spare.id), false)
    // The node holding the second copy dies and stays away: past the delay its copy is given up
    // and a new one is made on the spare node, while writes go on.
    await lost.g.close()
    for (let i = 16; i < 24; i++) await n1.g.writeBlock('lasting', i, block(i + 1), WriteConcern.WriteAcknowledged)
    await until('the spare node holds an in-sync copy', async () => {
      const s = await n1.g.replicationStatus('lasting')
      return s.nodes.includes(spare.id) && !s.nodes.includes(lostId) && s.inSync.length === 2
    }, 30_000)
    assert.ok([...n1.events, ...spare.events].some((e) => e.startsWith('replication:replica-removed') && e.includes(lostId)), 'the leader said it gave the copy up')
    await n1.g.writeBlock('lasting', 30, block(31), WriteConcern.WriteReplicated)
    // The dead node comes back: the cluster no longer counts on its copy, so it deletes it.
    const back = await startNode(network, coordinators, lostId, { dir: lost.dir, replicaReplacementDelayMs: 1500 })
    nodes[nodes.indexOf(lost)] = back
    await until('the returning node dropped its stale copy', async () => await back.g.getVolume('lasting').then(() => false, (err: { code?: string }) => err.code === 'VOLUME_NOT_FOUND'))
    // Its copy gone, it is off the record's list of given-up copies.
    const reader = coordinators.coordinator()
    const volumeId = (await n1.g.getVolume('lasting')).id
    await until('the record no longer lists the returned node as given up', async () => {
      const entry = await reader.get(recordKey(volumeId))
      return entry !== undefined && parseRecord(entry.value)?.droppedNodes === undefined
    })
    await reader.close()
    assert.deepEqual([...(await n1.g.replicationStatus('lasting')).nodes].sort(), ['n1', spare.id].sort())
    const expected = await n1.g.read('lasting', 0, 256 * 1024)
    const held = await copies([n1, spare], 'lasting', 256 * 1024)
    assert.deepEqual(held.get('n1'), expected)
    assert.deepEqual(held.get(spare.id), expected, 'the replacement copy holds every block')
    assert.deepEqual(expected.subarray(30 * 4096, 31 * 4096), block(31))
    await back.g.close()
  })

  it('a node whose copy was replaced while it was away, and whose volume was deleted before it came back, deletes its copy', async () => {
    const { network, coordinators, nodes, n1 } = await replacingCluster()
    await n1.g.createVolume({ name: 'fleeting', sizeBytes: '256K', replicas: 2 })
    await n1.g.writeBlock('fleeting', 0, block(1), WriteConcern.WriteReplicated)
    const volumeId = (await n1.g.getVolume('fleeting')).id
    const lostId = (await n1.g.replicationStatus('fleeting')).nodes.find((n) => n !== 'n1') as string
    const lost = nodes.find((n) => n.id === lostId) as Node
    const spare = nodes.find((n) => n.id !== 'n1' && n.id !== lostId) as Node
    await lost.g.close()
    await until('the copy of the node that stays away is given up and replaced', async () => {
      const s = await n1.g.replicationStatus('fleeting')
      return s.nodes.includes(spare.id) && !s.nodes.includes(lostId) && s.inSync.length === 2
    }, 30_000)
    const reader = coordinators.coordinator()
    const listed = parseRecord((await reader.get(recordKey(volumeId)))?.value ?? '')
    assert.deepEqual(listed?.droppedNodes, [lostId], 'the record remembers the given-up copy until its node deletes it')
    // Deleted while that node is away: the mark names it as well as the copies' nodes.
    await n1.g.deleteVolume('fleeting')
    const mark = await reader.get(deletedKey(volumeId))
    assert.ok(mark !== undefined && (JSON.parse(mark.value) as { nodes: string[] }).nodes.includes(lostId), `the deletion mark names ${lostId}: ${mark?.value}`)
    // It comes back, finds no record and a mark naming it: its copy goes, and so does the mark.
    const errors: string[] = []
    const back = await startNode(network, coordinators, lostId, { dir: lost.dir, replicaReplacementDelayMs: 1500 })
    back.g.on('replication:error', (event) => { errors.push(event.message) })
    nodes[nodes.indexOf(lost)] = back
    await until('the returning node deleted its copy of the deleted volume', async () => await back.g.getVolume('fleeting').then(() => false, (err: { code?: string }) => err.code === 'VOLUME_NOT_FOUND'))
    await until('the deletion mark is gone', async () => await reader.get(deletedKey(volumeId)) === undefined)
    assert.deepEqual(errors, [])
    await reader.close()
    await back.g.close()
  })

  it('expands a replicated volume online from any node; a copy that was away grows when it resyncs', async () => {
    const { network, coordinators, nodes } = await cluster(3)
    const [n1, n2, n3] = nodes as [Node, Node, Node]
    await n1.g.createVolume({ name: 'growing', sizeBytes: '256K', replicas: 3 })
    for (let i = 0; i < 64; i++) await n1.g.writeBlock('growing', i, block(i + 1), WriteConcern.WriteReplicated)
    await n3.g.close()
    // Asked of a replica: forwarded to the primary; the copies grow as the change reaches them.
    const grown = await n2.g.expandVolume('growing', '512K')
    assert.equal(grown.sizeBytes, 512 * 1024)
    await assert.rejects(n2.g.expandVolume('growing', '128K'), { code: 'INVALID_ARGUMENT' })
    for (let i = 64; i < 128; i++) await n2.g.writeBlock('growing', i, block(i + 1), WriteConcern.WriteReplicated)
    await until('the replica sees the new size', async () => (await n2.g.getVolume('growing')).sizeBytes === 512 * 1024)
    // A pool without room refuses the expansion before the cluster's record changes: no copy grows.
    for (const node of [n1, n2]) await node.g.createPool({ name: 'small', capacityBytes: '1M' })
    await n1.g.createVolume({ name: 'tight', sizeBytes: '256K', replicas: 2, pool: 'small' })
    await expectRejects(n1.g.expandVolume('tight', '2M'), 'NO_SPACE')
    await n1.g.expandVolume('tight', '384K')
    // The copy on n2 is made by the primary's link after createVolume returns: until then n2 has no such volume.
    await until('the copy sees the allowed size', async () => await n2.g.getVolume('tight').then((v) => v.sizeBytes >= 384 * 1024, (err: { code?: string }) => {
      if (err.code === 'VOLUME_NOT_FOUND') return false
      throw err
    }))
    assert.equal((await n2.g.getVolume('tight')).sizeBytes, 384 * 1024, 'the refused size never reached a copy')
    const back = await startNode(network, coordinators, 'n3', { dir: n3.dir })
    nodes[2] = back
    await until('the returning copy is in sync', async () => (await n1.g.replicationStatus('growing')).inSync.length === 3, 20_000)
    assert.equal((await back.g.getVolume('growing')).sizeBytes, 512 * 1024)
    const expected = new Uint8Array(512 * 1024)
    for (let i = 0; i < 128; i++) expected.set(block(i + 1), i * 4096)
    const held = await copies(nodes, 'growing', 512 * 1024)
    for (const node of nodes) assert.deepEqual(held.get(node.id), expected, `copy on ${node.id}`)
  })

  it('reverts a replicated volume to a snapshot on every copy; a copy that was away catches up', async () => {
    const { network, coordinators, nodes } = await cluster(3)
    const [n1, n2, n3] = nodes as [Node, Node, Node]
    await n1.g.createVolume({ name: 'rewind', sizeBytes: '256K', replicas: 3 })
    for (let i = 0; i < 32; i++) await n1.g.writeBlock('rewind', i, block(i + 1), WriteConcern.WriteReplicated)
    await n2.g.createSnapshot('rewind', 'good')
    for (let i = 0; i < 48; i++) await n1.g.writeBlock('rewind', i, block(1000 + i), WriteConcern.WriteReplicated)
    await n1.g.trim('rewind', 0, 4096)
    await n3.g.close()
    // Asked of a replica: the primary reverts and streams the revert to the copies in order.
    await n2.g.restoreSnapshot('rewind', 'good')
    await n2.g.writeBlock('rewind', 40, block(4040), WriteConcern.WriteReplicated)
    const expected = new Uint8Array(256 * 1024)
    for (let i = 0; i < 32; i++) expected.set(block(i + 1), i * 4096)
    expected.set(block(4040), 40 * 4096)
    assert.deepEqual(await n2.g.read('rewind', 0, 256 * 1024), expected)
    const back = await startNode(network, coordinators, 'n3', { dir: n3.dir })
    nodes[2] = back
    await until('the returning copy is in sync', async () => (await n1.g.replicationStatus('rewind')).inSync.length === 3, 20_000)
    const held = await copies(nodes, 'rewind', 256 * 1024)
    for (const node of nodes) assert.deepEqual(held.get(node.id), expected, `copy on ${node.id}`)
  })

  it('a replicated volume\'s own QoS policy is kept in the cluster record: set on any node, applied on every copy, enforced by the primary', async () => {
    const { nodes } = await cluster(3)
    const [n1, n2, n3] = nodes as [Node, Node, Node]
    await n1.g.createVolume({ name: 'metered', sizeBytes: '256K', replicas: 3, qos: { limits: { iops: 5000 } } })
    await until('every copy has the policy', async () => (await Promise.all(nodes.map(async (n) => (await n.g.getQoSPolicy('metered')).policy?.limits?.iops))).every((v) => v === 5000))
    await n3.g.setQoSPolicy('metered', { limits: { write_iops: 40 } } as never)
    await until('the change reached every node', async () => (await Promise.all(nodes.map(async (n) => (await n.g.getQoSPolicy('metered')).policy?.limits?.writeIops))).every((v) => v === 40))
    // Writes sent through a replica run on the primary, under its limiter.
    await Promise.all(Array.from({ length: 12 }, async (_, i) => await n2.g.writeBlock('metered', i, block(i + 1), WriteConcern.WriteReplicated)))
    const primary = nodes.find((n) => n.id === 'n1') as Node
    assert.ok(((await primary.g.getVolumeMetrics('metered')).qos?.throttledOps ?? 0) >= 6, 'the primary throttled the forwarded writes')
    await n2.g.clearQoSPolicy('metered')
    await until('the policy is gone everywhere', async () => (await Promise.all(nodes.map(async (n) => (await n.g.getQoSPolicy('metered')).source))).every((s) => s === 'none'))
  })

  it('migrating a 1-copy volume into a class with 3 replicas adds copies while writes go on; snapshots come along', async () => {
    const { nodes } = await cluster(3)
    const [n1, n2] = nodes as [Node, Node, Node]
    for (const node of nodes) await node.g.createStorageClass({ name: 'triple', parameters: { replication: '3' } })
    await n1.g.createVolume({ name: 'upgraded', sizeBytes: '256K' })
    for (let i = 0; i < 32; i++) await n1.g.writeBlock('upgraded', i, block(i + 1), WriteConcern.WriteDurable)
    await n1.g.createSnapshot('upgraded', 'before')
    for (let i = 0; i < 8; i++) await n1.g.writeBlock('upgraded', i, block(500 + i), WriteConcern.WriteDurable)
    await expectRejects(n1.g.writeBlock('upgraded', 0, block(1), WriteConcern.WriteReplicated), 'WRITE_CONCERN_UNSATISFIED')
    let writing = true
    const load = (async () => { let i = 100; while (writing) { await n1.g.writeBlock('upgraded', 32 + (i % 16), block(i), WriteConcern.WriteAcknowledged); i++ } })()
    const migrated = await n1.g.migrateVolume('upgraded', { storageClass: 'triple' })
    writing = false
    await load
    assert.equal(migrated.replicas, 3)
    assert.equal(migrated.storageClass, 'triple')
    const status = await n1.g.replicationStatus('upgraded')
    assert.equal(status.inSync.length, 3)
    await n2.g.writeBlock('upgraded', 60, block(60), WriteConcern.WriteReplicated)
    const expected = await n1.g.read('upgraded', 0, 256 * 1024)
    const before = await n1.g.read({ volume: 'upgraded', snapshot: 'before' }, 0, 256 * 1024)
    assert.deepEqual(before.subarray(0, 4096), block(1))
    for (const node of nodes) for (const [what, view] of [['live', 'upgraded'], ['snapshot', { volume: 'upgraded', snapshot: 'before' }]] as const) {
      assert.deepEqual(await node.g.read(view, 0, 256 * 1024), what === 'live' ? expected : before, `${what} through ${node.id}`)
    }
    const held = await copies(nodes, 'upgraded', 256 * 1024)
    for (const node of nodes) assert.deepEqual(held.get(node.id), expected, `copy on ${node.id}`)
  })

  it('changes the class of a replicated volume online: every copy converts on its node (encrypted), copies go from 3 to 2, writes go on; a cancel puts the old class back', async () => {
    const { nodes } = await cluster(3)
    const [n1, n2, n3] = nodes as [Node, Node, Node]
    for (const node of nodes) {
      await node.g.createStorageClass({ name: 'triple', parameters: { replication: '3' } })
      await node.g.createStorageClass({ name: 'secret-double', parameters: { replication: '2', encryption: 'true' } })
    }
    const created = await n1.g.createVolume({ name: 'reshaped', sizeBytes: '256K', storageClass: 'triple' })
    assert.equal(created.encrypted, false)
    for (let i = 0; i < 32; i++) await n1.g.writeBlock('reshaped', i, block(i + 1), WriteConcern.WriteReplicated)
    await n1.g.createSnapshot('reshaped', 'before')
    for (let i = 0; i < 4; i++) await n1.g.writeBlock('reshaped', i, block(300 + i), WriteConcern.WriteReplicated)
    await expectRejects(n2.g.migrateVolume('reshaped', { storageClass: 'triple' }), 'INVALID_ARGUMENT')
    await expectRejects(n2.g.migrateVolume('reshaped', { storageClass: 'no-such-class' }), 'STORAGE_CLASS_NOT_FOUND')
    // A writer on n2 (forwarded to the primary) keeps going through the whole conversion.
    let writing = true
    const acked = new Map<number, number>()
    const load = (async () => {
      let i = 0
      while (writing) {
        const index = 40 + (i % 16)
        await n2.g.writeBlock('reshaped', index, block(1000 + i), WriteConcern.WriteReplicated)
        acked.set(index, 1000 + i)
        i++
      }
    })()
    const progress: string[] = []
    const migrated = await n2.g.migrateVolume('reshaped', { storageClass: 'secret-double' }, { onProgress: (e) => progress.push(e.phase) })
    writing = false
    await load
    assert.equal(migrated.storageClass, 'secret-double')
    assert.equal(migrated.encrypted, true)
    assert.equal(migrated.replicas, 2)
    assert.equal(progress.at(-1), 'done')
    assert.ok(acked.size > 0, 'writes went on during the conversion')
    const status = await n1.g.replicationStatus('reshaped')
    assert.equal(status.nodes.length, 2)
    assert.ok(status.nodes.includes('n1') && status.nodes.includes('n2'), 'the primary and the asking node keep their copies')
    await until('the in-sync copies are both', async () => (await n1.g.replicationStatus('reshaped')).inSync.length === 2)
    await until('n3 deleted its copy', async () => await n3.g.getVolume('reshaped').then(() => false, (err: { code?: string }) => err.code === 'VOLUME_NOT_FOUND'))
    for (const node of [n1, n2]) {
      const volume = await node.g.getVolume('reshaped')
      assert.equal(volume.storageClass, 'secret-double', `class on ${node.id}`)
      assert.equal(volume.encrypted, true, `the copy on ${node.id} is encrypted`)
      assert.equal(volume.id, created.id)
    }
    for (const [index, seed] of acked) assert.deepEqual(await n1.g.readBlock('reshaped', index), block(seed), `block ${index}`)
    assert.deepEqual(await n2.g.readBlock('reshaped', 0), block(300))
    assert.deepEqual(await n2.g.readBlock({ volume: 'reshaped', snapshot: 'before' }, 0), block(1))
    await n1.g.writeBlock('reshaped', 60, block(60), WriteConcern.WriteReplicated)

    // Back to three plain copies, cancelled as soon as the third copy is placed: the record names
    // the old class again, the new copy goes, every copy stays encrypted.
    const abort = new AbortController()
    const onAdded = (): void => { abort.abort() }
    n2.g.on('replication:replica-added', onAdded)
    await expectRejects(n2.g.migrateVolume('reshaped', { storageClass: 'triple' }, { signal: abort.signal }), 'CANCELLED')
    n2.g.off('replication:replica-added', onAdded)
    await until('the copies are back in secret-double, two of them', async () => {
      const s = await n1.g.replicationStatus('reshaped')
      if (s.nodes.length !== 2) return false
      const volumes = await Promise.all([n1, n2].map(async (n) => await n.g.getVolume('reshaped')))
      return volumes.every((v) => v.storageClass === 'secret-double' && v.encrypted === true && v.replicas === 2)
    })
    await until('n3 has no copy again', async () => await n3.g.getVolume('reshaped').then(() => false, (err: { code?: string }) => err.code === 'VOLUME_NOT_FOUND'))
    // Copies that had begun converting may still be on their way back: BUSY until they are.
    let plain: Awaited<ReturnType<GalleonFS['migrateVolume']>> | undefined
    await until('the migration back to triple is accepted and done', async () => {
      try {
        plain = await n1.g.migrateVolume('reshaped', { storageClass: 'triple' })
        return true
      } catch (err) {
        if ((err as { code?: string }).code !== 'BUSY') throw err
        return false
      }
    })
    assert.ok(plain !== undefined)
    assert.equal(plain.encrypted, false)
    assert.equal(plain.replicas, 3)
    assert.equal((await n1.g.replicationStatus('reshaped')).inSync.length, 3)
    for (const node of nodes) assert.equal((await node.g.getVolume('reshaped')).encrypted, false, `the copy on ${node.id} is plain again`)
    const expected = await n1.g.read('reshaped', 0, 256 * 1024)
    assert.deepEqual(expected.subarray(60 * 4096, 61 * 4096), block(60))
    const held = await copies(nodes, 'reshaped', 256 * 1024)
    for (const node of nodes) assert.deepEqual(held.get(node.id), expected, `copy on ${node.id}`)
  })

  it('a node that stops in the middle of converting its copy converts it when it comes back; the migration waits for it', async () => {
    const { network, coordinators, nodes } = await cluster(3)
    const [n1, , n3] = nodes as [Node, Node, Node]
    for (const node of nodes) {
      await node.g.createStorageClass({ name: 'triple', parameters: { replication: '3' } })
      await node.g.createStorageClass({ name: 'secret-triple', parameters: { replication: '3', encryption: 'true' } })
    }
    await n1.g.createVolume({ name: 'interrupted', sizeBytes: '4M', storageClass: 'triple' })
    for (let at = 0; at < 1024; at += 64) {
      const run = new Uint8Array(64 * 4096)
      for (let i = 0; i < 64; i++) run.set(block(at + i), i * 4096)
      await n1.g.write('interrupted', at * 4096, run, WriteConcern.WriteReplicated)
    }
    await n1.g.createSnapshot('interrupted', 'first')
    // n3 closes as soon as its own conversion reports progress (its copy is half converted).
    let stopped: Promise<void> | undefined
    n3.g.on('volume:migration-progress', () => { stopped ??= n3.g.close() })
    const migration = n1.g.migrateVolume('interrupted', { storageClass: 'secret-triple' })
    await until('n3 stopped mid-conversion', () => stopped !== undefined)
    await stopped
    let settled = false
    void migration.then(() => { settled = true }, () => { settled = true })
    await new Promise((resolve) => setTimeout(resolve, 300))
    assert.equal(settled, false, 'the migration waits for the copy on n3')
    const again = await startNode(network, coordinators, 'n3', { dir: n3.dir })
    const migrated = await migration
    assert.equal(migrated.encrypted, true)
    const held = await again.g.getVolume('interrupted')
    assert.equal(held.encrypted, true, 'n3 converted its copy after the restart')
    assert.equal(held.storageClass, 'secret-triple')
    await n1.g.writeBlock('interrupted', 5, block(9999), WriteConcern.WriteReplicated)
    const expected = await n1.g.read('interrupted', 0, 4 << 20)
    const snapshot = await n1.g.read({ volume: 'interrupted', snapshot: 'first' }, 0, 4 << 20)
    assert.deepEqual(snapshot.subarray(5 * 4096, 6 * 4096), block(5))
    const copiesHeld = await copies([n1, nodes[1] as Node, again], 'interrupted', 4 << 20)
    for (const [id, data] of copiesHeld) assert.deepEqual(data, expected, `copy on ${id}`)
  })

  it('a replicated volume changes pool on every copy; a snapshot during a conversion restarts it, an expansion is refused while the primary converts, nothing is lost', async () => {
    const { nodes } = await cluster(3)
    const [n1, n2] = nodes as [Node, Node, Node]
    for (const node of nodes) {
      await node.g.createStorageClass({ name: 'triple', parameters: { replication: '3' } })
      await node.g.createStorageClass({ name: 'secret-triple', parameters: { replication: '3', encryption: 'true' } })
      await node.g.createPool({ name: 'left', capacityBytes: '1G' })
      await node.g.createPool({ name: 'right', capacityBytes: '1G' })
    }
    await n1.g.createVolume({ name: 'pooled', sizeBytes: '4M', storageClass: 'triple', pool: 'left' })
    const run = new Uint8Array(64 * 4096)
    for (let at = 0; at < 1024; at += 64) {
      for (let i = 0; i < 64; i++) run.set(block(at + i), i * 4096)
      await n1.g.write('pooled', at * 4096, run, WriteConcern.WriteReplicated)
    }
    const moved = await n2.g.migrateVolume('pooled', { pool: 'right' })
    assert.equal(moved.pool, 'right')
    for (const node of nodes) assert.equal((await node.g.getVolume('pooled')).pool, 'right', `the copy on ${node.id} is in pool right`)
    await expectRejects(n2.g.migrateVolume('pooled', { pool: 'right' }), 'INVALID_ARGUMENT')

    // During the conversion to an encrypting class: a snapshot (the copies' conversions start again
    // after it) and an expansion (it waits for the primary's conversion).
    let during: Promise<unknown> | undefined
    n1.g.on('volume:migration-progress', (e) => {
      if (during !== undefined || e.volumeName !== 'pooled' || e.phase !== 'copy') return
      during = (async () => {
        await n1.g.createSnapshot('pooled', 'mid')
        // Refused while the primary's own copy converts (it copies a fixed size), never half done.
        await n1.g.expandVolume('pooled', 8 << 20).then(() => { expandedDuring = true }, (err: { code?: string, message?: string }) => {
          assert.equal(err.code, 'BUSY', err.message)
          assert.match(err.message ?? '', /converting to another storage class/)
        })
      })()
    })
    let expandedDuring = false
    const secret = await n2.g.migrateVolume('pooled', { storageClass: 'secret-triple' })
    assert.ok(during !== undefined, 'the snapshot and the expansion were asked for during the conversion')
    await during
    if (!expandedDuring) await n1.g.expandVolume('pooled', 8 << 20)
    await n1.g.writeBlock('pooled', 1500, block(1500), WriteConcern.WriteReplicated)
    assert.equal(secret.encrypted, true)
    await until('every copy has the new size and the snapshot', async () => (await Promise.all(nodes.map(async (n) => {
      const v = await n.g.getVolume('pooled')
      return v.sizeBytes === 8 << 20 && v.encrypted && (await n.g.listSnapshots('pooled')).some((snap) => snap.name === 'mid')
    }))).every(Boolean))
    await until('the copies are in sync', async () => (await n1.g.replicationStatus('pooled')).inSync.length === 3)
    const expected = await n1.g.read('pooled', 0, 8 << 20)
    assert.deepEqual(expected.subarray(1500 * 4096, 1501 * 4096), block(1500))
    assert.deepEqual(expected.subarray(7 * 4096, 8 * 4096), block(7))
    const held = await copies(nodes, 'pooled', 8 << 20)
    for (const node of nodes) assert.deepEqual(held.get(node.id), expected, `copy on ${node.id}`)
  })

  it('one call moves a 1-copy volume into an encrypting class with 3 copies, and another moves a volume to a node and a class', async () => {
    const { nodes } = await cluster(3)
    const [n1, n2] = nodes as [Node, Node, Node]
    for (const node of nodes) {
      await node.g.createStorageClass({ name: 'secret-triple', parameters: { replication: '3', encryption: 'true' } })
      await node.g.createStorageClass({ name: 'secret-one', parameters: { encryption: 'true' } })
    }
    await n1.g.createVolume({ name: 'grow', sizeBytes: '128K' })
    for (let i = 0; i < 32; i++) await n1.g.writeBlock('grow', i, block(i + 7), WriteConcern.WriteDurable)
    await n1.g.createSnapshot('grow', 'old')
    const grown = await n1.g.migrateVolume('grow', { storageClass: 'secret-triple' })
    assert.equal(grown.encrypted, true)
    assert.equal(grown.replicas, 3)
    assert.equal((await n1.g.replicationStatus('grow')).inSync.length, 3)
    for (const node of nodes) {
      assert.equal((await node.g.getVolume('grow')).encrypted, true, `copy on ${node.id}`)
      assert.deepEqual(await node.g.readBlock({ volume: 'grow', snapshot: 'old' }, 5), block(12))
    }

    await n1.g.createVolume({ name: 'travel', sizeBytes: '128K' })
    for (let i = 0; i < 16; i++) await n1.g.writeBlock('travel', i, block(i + 70), WriteConcern.WriteDurable)
    await expectRejects(n1.g.migrateVolume('travel', { node: 'nowhere', storageClass: 'secret-one' }), 'INVALID_ARGUMENT')
    await expectRejects(n1.g.migrateVolume('travel', { node: 'n2', storageClass: 'secret-triple' }), 'INVALID_ARGUMENT')
    assert.equal((await n1.g.getVolume('travel')).encrypted, false, 'a bad node changes nothing')
    const moved = await n1.g.migrateVolume('travel', { node: 'n2', storageClass: 'secret-one' })
    assert.equal(moved.storageClass, 'secret-one')
    const there = await n2.g.getVolume('travel')
    assert.equal(there.encrypted, true)
    assert.equal(there.storageClass, 'secret-one')
    assert.deepEqual([...(await n2.g.replicationStatus('travel')).nodes], ['n2'])
    for (let i = 0; i < 16; i++) assert.deepEqual(await n2.g.readBlock('travel', i), block(i + 70))
  })

  it('moves a volume to another node while it is written: data, snapshots and id come along', async () => {
    const { nodes } = await cluster(2)
    const [n1, n2] = nodes as [Node, Node]
    const created = await n1.g.createVolume({ name: 'mover', sizeBytes: '256K' })
    for (let i = 0; i < 32; i++) await n1.g.writeBlock('mover', i, block(i + 1), WriteConcern.WriteDurable)
    await n1.g.createSnapshot('mover', 'first')
    for (let i = 0; i < 4; i++) await n1.g.writeBlock('mover', i, block(700 + i), WriteConcern.WriteDurable)
    await expectRejects(n1.g.migrateVolume('mover', { node: 'n1' }), 'INVALID_ARGUMENT')
    await expectRejects(n1.g.migrateVolume('mover', { node: 'nowhere' }), 'INVALID_ARGUMENT')
    // Cancelled once the new copy is placed: it is given up and the volume stays where it was.
    const abort = new AbortController()
    const onAdded = (): void => { abort.abort() }
    n1.g.on('replication:replica-added', onAdded)
    await expectRejects(n1.g.migrateVolume('mover', { node: 'n2' }, { signal: abort.signal }), 'CANCELLED')
    n1.g.off('replication:replica-added', onAdded)
    const afterCancel = await n1.g.replicationStatus('mover')
    assert.deepEqual([...afterCancel.nodes], ['n1'])
    assert.equal(afterCancel.epoch, undefined, 'the volume is a local one again, with no cluster record')
    await until('n2 has no copy', async () => await n2.g.getVolume('mover').then(() => false, (err: { code?: string }) => err.code === 'VOLUME_NOT_FOUND'))
    assert.deepEqual(await n1.g.readBlock('mover', 0), block(700))
    const progress: number[] = []
    // Writes through n1 go on during the move (forwarded once n2 leads); once n1's copy is gone,
    // n1 knows nothing of the volume and the writer must turn to n2.
    let writing = true
    const acked = new Map<number, number>()
    const refused: string[] = []
    const load = (async () => {
      let i = 0
      while (writing) {
        const index = 40 + (i % 24)
        try {
          await n1.g.writeBlock('mover', index, block(2000 + i), WriteConcern.WriteDurable)
        } catch (err) {
          refused.push((err as { code?: string }).code ?? String(err))
          break
        }
        acked.set(index, 2000 + i)
        i++
      }
    })()
    const moved = await n1.g.migrateVolume('mover', { node: 'n2' }, { onProgress: (event) => { if (event.phase === 'done') progress.push(event.blocksDone) } })
    writing = false
    await load
    assert.equal(moved.id, created.id)
    assert.equal(progress.length, 1, 'one done event')
    assert.ok(acked.size > 0)
    assert.ok(refused.every((code) => code === 'VOLUME_NOT_FOUND'), `writes through the old node were refused with ${refused.join(', ')}`)
    const status = await n2.g.replicationStatus('mover')
    assert.equal(status.primary, 'n2')
    assert.deepEqual([...status.nodes], ['n2'])
    await assert.rejects(n1.g.getVolume('mover'), { code: 'VOLUME_NOT_FOUND' })
    for (const [index, seed] of acked) assert.deepEqual(await n2.g.readBlock('mover', index), block(seed), `block ${index}`)
    for (let i = 0; i < 4; i++) assert.deepEqual(await n2.g.readBlock('mover', i), block(700 + i))
    assert.deepEqual(await n2.g.readBlock({ volume: 'mover', snapshot: 'first' }, 0), block(1))
    await n2.g.writeBlock('mover', 100 % 64, block(100), WriteConcern.WriteDurable)
    const held = await copies([n2], 'mover', 256 * 1024)
    assert.deepEqual(held.get('n2')?.subarray(36 * 4096, 37 * 4096), block(100))
  })

  it('deleting the volume or closing its node stops a move to another node before the hand-over', async () => {
    const { network, coordinators, nodes } = await cluster(2)
    const [n1, n2] = nodes as [Node, Node]
    for (const name of ['gone', 'stays']) {
      await n1.g.createVolume({ name, sizeBytes: '256K' })
      for (let i = 0; i < 16; i++) await n1.g.writeBlock(name, i, block(i + 40), WriteConcern.WriteDurable)
    }
    // Slow messages: the new copy's fill takes several round trips of 300 ms.
    network.delay(300)
    const stopOnAdded = (stop: () => void) => (): void => { stop() }
    let deleting: Promise<void> | undefined
    const onGone = stopOnAdded(() => { deleting = n1.g.deleteVolume('gone') })
    n1.g.once('replication:replica-added', onGone)
    await expectRejects(n1.g.migrateVolume('gone', { node: 'n2' }), 'CANCELLED')
    await deleting
    await assert.rejects(n1.g.getVolume('gone'), { code: 'VOLUME_NOT_FOUND' })
    await until('n2 has no copy of the deleted volume', async () => await n2.g.getVolume('gone').then(() => false, (err: { code?: string }) => err.code === 'VOLUME_NOT_FOUND'))

    let closing: Promise<void> | undefined
    n1.g.once('replication:replica-added', () => { closing = n1.g.close() })
    await expectRejects(n1.g.migrateVolume('stays', { node: 'n2' }), 'CANCELLED')
    await closing
    network.reset()
    await until('n2 gave its new copy up', async () => await n2.g.getVolume('stays').then(() => false, (err: { code?: string }) => err.code === 'VOLUME_NOT_FOUND'))
    const again = await startNode(network, coordinators, 'n1', { dir: n1.dir })
    for (let i = 0; i < 16; i++) assert.deepEqual(await again.g.readBlock('stays', i), block(i + 40), `block ${i} stayed on n1`)
    assert.deepEqual([...(await again.g.replicationStatus('stays')).nodes], ['n1'])
  })

  it('snapshots replicate with the volume, and deleting the volume deletes every copy', async () => {
    const { nodes } = await cluster(3)
    const [n1, n2, n3] = nodes as [Node, Node, Node]
    await n1.g.createVolume({ name: 'snappy', sizeBytes: '256K', replicas: 3 })
    await n1.g.writeBlock('snappy', 0, block(1), WriteConcern.WriteReplicated)
    const snap = await n2.g.createSnapshot('snappy', 'before') // forwarded to the primary
    await n1.g.writeBlock('snappy', 0, block(2), WriteConcern.WriteReplicated)
    for (const node of nodes) {
      await until(`${node.id} has the snapshot`, async () => (await node.g.listSnapshots('snappy')).some((s) => s.id === snap.id))
    }
    assert.deepEqual(await n3.g.readBlock({ volume: 'snappy', snapshot: 'before' }, 0), block(1))
    await n1.g.createSnapshot('snappy', 'doomed')
    await n1.g.deleteSnapshot('snappy', 'doomed')
    await n1.g.writeBlock('snappy', 1, block(5), WriteConcern.WriteReplicated)
    for (const node of nodes) assert.deepEqual((await node.g.listSnapshots('snappy')).map((s) => s.name), ['before'])
    await n3.g.deleteVolume('snappy') // forwarded to the primary, which deletes everywhere
    for (const node of nodes) await until(`${node.id} no longer has the volume`, async () => (await node.g.listVolumes()).length === 0)
  })

  it('tells each copy\'s lag in seconds and its acknowledgement round trips (status and metrics)', async () => {
    const { network, nodes } = await cluster(2)
    const [n1] = nodes as [Node, Node]
    await n1.g.createVolume({ name: 'timed', sizeBytes: '256K', replicas: 2 })
    const link = async (): Promise<{ lagChanges: number, lagSeconds: number, batchesAcknowledged: number, ackWaitSeconds: number }> => {
      const found = (await n1.g.replicationStatus('timed')).links.find((l) => l.node === 'n2')
      assert.ok(found !== undefined, 'the primary has a link to n2')
      return found
    }
    await n1.g.writeBlock('timed', 0, block(1), WriteConcern.WriteReplicated)
    const caughtUp = await link()
    assert.equal(caughtUp.lagSeconds, 0)
    // The write's bytes went through the primary's stream buffer, which it keeps while writes come.
    assert.equal((await n1.g.replicationStatus('timed')).streamBufferBytes, 1024 * 1024)
    assert.ok(caughtUp.batchesAcknowledged >= 1, `batches acknowledged: ${caughtUp.batchesAcknowledged}`)
    // Every message takes 60 ms each way: each batch's round trip is about 120 ms (timers may fire a
    // little early, as the event loop's clock lags).
    network.delay(60)
    for (let i = 1; i <= 3; i++) await n1.g.writeBlock('timed', i, block(i + 1), WriteConcern.WriteReplicated)
    network.reset()
    const slow = await link()
    const batches = slow.batchesAcknowledged - caughtUp.batchesAcknowledged
    assert.ok(batches >= 3, `3 writes one after the other are at least 3 batches, got ${batches}`)
    const mean = (slow.ackWaitSeconds - caughtUp.ackWaitSeconds) / batches
    assert.ok(mean >= 0.1, `mean acknowledgement round trip ${mean} s with 60 ms each way`)
    // Cut off, the copy falls behind: its lag is the age of the first change it has not acknowledged.
    network.partition(['n2'], ['n1'])
    await n1.g.writeBlock('timed', 10, block(10), WriteConcern.WriteAcknowledged)
    await new Promise((resolve) => setTimeout(resolve, 300))
    await n1.g.writeBlock('timed', 11, block(11), WriteConcern.WriteAcknowledged)
    const behind = await link()
    assert.ok(behind.lagChanges >= 2, `lag in changes ${behind.lagChanges}`)
    assert.ok(behind.lagSeconds >= 0.25 && behind.lagSeconds < 60, `lag ${behind.lagSeconds} s, the first missing change was made about 300 ms ago`)
    const metrics = await n1.g.metricsText()
    const sample = (family: string): number => {
      const match = new RegExp(`^${family}\\{volume_id="[^"]+",volume_name="timed",namespace="default",node="n2"\\} (\\S+)$`, 'm').exec(metrics)
      assert.ok(match !== null, `${family} for n2 in:\n${metrics}`)
      return Number(match[1])
    }
    assert.ok(sample('galleonfs_replication_lag_seconds') >= 0.25)
    assert.equal(sample('galleonfs_replication_batches_acknowledged_total'), behind.batchesAcknowledged)
    assert.ok(Math.abs(sample('galleonfs_replication_ack_wait_seconds_total') - behind.ackWaitSeconds) < 1e-6)
    assert.match(metrics, /# TYPE galleonfs_replication_lag_seconds gauge/)
    assert.match(metrics, /# TYPE galleonfs_replication_ack_wait_seconds_total counter/)
    // Healed, it resyncs and has everything again: no lag.
    network.heal()
    await until('n2 caught up', async () => { const l = await link(); return l.lagChanges === 0 && l.lagSeconds === 0 })
    assert.deepEqual(await nodes[1]?.g.readBlock('timed', 11), block(11))
    // With nothing queued for a second, the primary lets its stream buffer go; a write takes one again.
    await n1.g.writeBlock('timed', 12, block(12), WriteConcern.WriteReplicated)
    await until('the idle primary let its stream buffer go', async () => (await n1.g.replicationStatus('timed')).streamBufferBytes === 0, 10_000)
    await n1.g.writeBlock('timed', 13, block(13), WriteConcern.WriteReplicated)
    assert.equal((await n1.g.replicationStatus('timed')).streamBufferBytes, 1024 * 1024)
    assert.deepEqual(await nodes[1]?.g.readBlock('timed', 13), block(13))
  })

  it('a partitioned copy drops out of sync, writes go on, and after healing it resyncs only the changed blocks', async () => {
    const { network, nodes } = await cluster(3)
    const [n1, n2, n3] = nodes as [Node, Node, Node]
    const blocks = 256
    await n1.g.createVolume({ name: 'healing', sizeBytes: blocks * 4096, replicas: 3 })
    for (let i = 0; i < blocks; i++) await n1.g.writeBlock('healing', i, block(i), WriteConcern.WriteAcknowledged)
    await n1.g.flush('healing')
    await n1.g.writeBlock('healing', 0, block(1000), WriteConcern.WriteReplicated)
    network.partition(['n3'], ['n1', 'n2'])
    // n3 is unreachable: the primary takes it out of the in-sync list, then acknowledges with n2 alone.
    await n1.g.writeBlock('healing', 5, block(5005), WriteConcern.WriteReplicated)
    assert.deepEqual([...(await n1.g.replicationStatus('healing')).inSync].sort(), ['n1', 'n2'])
    assert.equal((await n1.g.getVolume('healing')).state, VolumeState.Degraded)
    const snap = await n1.g.createSnapshot('healing', 'while-away')
    for (const i of [7, 8, 9]) await n1.g.writeBlock('healing', i, block(7000 + i), WriteConcern.WriteReplicated)
    await n1.g.trim('healing', 10 * 4096, 4096)
    const shippedBefore = (await n1.g.replicationStatus('healing')).links.find((l) => l.node === 'n3')?.shippedBytes ?? 0
    network.heal()
    await until('n3 is in sync again', async () => (await n1.g.replicationStatus('healing')).inSync.length === 3)
    assert.ok(n1.events.some((e) => e.startsWith('replication:resynced') && e.includes('"node":"n3"') && e.includes('"mode":"delta"')), n1.events.join('\n'))
    const shipped = ((await n1.g.replicationStatus('healing')).links.find((l) => l.node === 'n3')?.shippedBytes ?? 0) - shippedBefore
    // Changed while away: block 5, 7, 8, 9 (and 10, trimmed: no data). The snapshot view is rebuilt
    // from the same changed blocks: at most 2 x 5 blocks, far from the volume's 256.
    assert.ok(shipped > 0 && shipped <= 10 * 4096, `resync shipped ${shipped} bytes`)
    assert.equal((await n1.g.getVolume('healing')).state, VolumeState.Available)
    const expected = await n1.g.read('healing', 0, blocks * 4096)
    const expectedSnap = await n1.g.read({ volume: 'healing', snapshot: 'while-away' }, 0, blocks * 4096)
    void n2
    const held = await copies(nodes, 'healing', blocks * 4096)
    for (const node of nodes) assert.deepEqual(held.get(node.id), expected, `copy on ${node.id}`)
    const g3 = await GalleonFS.open({ storagePath: n3.dir })
    try {
      const snaps = await g3.listSnapshots('healing')
      assert.deepEqual(snaps.map((s) => s.id), [snap.id])
      assert.deepEqual(await g3.read({ volume: 'healing', snapshot: 'while-away' }, 0, blocks * 4096), expectedSnap)
    } finally {
      await g3.close()
    }
  })

  it('a write refused for its concern after it was stored here reads here at once (and in a snapshot), the same after a restart, and reaches the copy once it is back', async () => {
    const { network, nodes } = await cluster(2)
    const [n1] = nodes as [Node, Node]
    await n1.g.createVolume({ name: 'refused', sizeBytes: 16 * 4096, replicas: 2 })
    await n1.g.writeBlock('refused', 0, block(1), WriteConcern.WriteReplicated)
    network.drop((message) => message.from === 'n1' && message.to === 'n2', { silent: true })
    await assert.rejects(n1.g.writeBlock('refused', 0, block(2), WriteConcern.WriteReplicated), (err: Error & { code?: string }) => err.code === 'WRITE_CONCERN_UNSATISFIED' && /stored on this node/.test(err.message))
    network.drop(0)
    // The node serves what it stored and ships: not the older data it would serve again only
    // until a restart.
    assert.deepEqual(await n1.g.readBlock('refused', 0), block(2))
    await n1.g.createSnapshot('refused', 'after')
    assert.deepEqual(await n1.g.readBlock({ volume: 'refused', snapshot: 'after' }, 0), block(2))
    await until('n2 is in sync again', async () => (await n1.g.replicationStatus('refused')).inSync.length === 2)
    const held = await copies(nodes, 'refused', 16 * 4096)
    for (const node of nodes) assert.deepEqual(held.get(node.id)?.subarray(0, 4096), block(2), `copy on ${node.id}`)
    const g1 = await GalleonFS.open({ storagePath: n1.dir })
    try {
      assert.deepEqual(await g1.readBlock({ volume: 'refused', snapshot: 'after' }, 0), block(2))
    } finally {
      await g1.close()
    }
  })

  it('I/O forwarded to a primary that is restarting waits for it instead of failing (it listens before it serves)', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const first = coordinators.coordinator()
    const n1 = await startNode(network, coordinators, 'n1', { coordinator: first })
    const n2 = await startNode(network, coordinators, 'n2')
    await until('both nodes see each other', () => [n1, n2].every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 2))
    await n1.g.createVolume({ name: 'restarting', sizeBytes: 16 * 4096, replicas: 2 })
    await n1.g.writeBlock('restarting', 0, block(7), WriteConcern.WriteReplicated)
    // n1's process dies (its lease runs on for a moment) and starts again at once; the coordinator
    // is slow to confirm its join, so for a while it listens but has not started replication.
    await first.crash()
    network.kill('n1')
    await n1.g.close().catch(() => {})
    network.revive('n1')
    const slow = coordinators.coordinator()
    const join = slow.join.bind(slow)
    slow.join = async (...args: Parameters<typeof join>) => { await new Promise((resolve) => setTimeout(resolve, 1000)); return await join(...args) }
    const reopening = startNode(network, coordinators, 'n1', { dir: n1.dir, coordinator: slow })
    await new Promise((resolve) => setTimeout(resolve, 300))
    assert.deepEqual(await n2.g.readBlock('restarting', 0), block(7))
    await n2.g.writeBlock('restarting', 1, block(8), WriteConcern.WriteDurable)
    const back = await reopening
    await until('n1 is in sync again', async () => (await n2.g.replicationStatus('restarting')).inSync.length === 2)
    assert.deepEqual(await back.g.readBlock('restarting', 1), block(8))
  })

  it('a node asked to serve I/O of a volume it holds no copy of says it is not the primary (the sender looks again), not that the volume does not exist', async () => {
    const { nodes } = await cluster(3)
    const [n1, n2, n3] = nodes as [Node, Node, Node]
    await n1.g.createVolume({ name: 'elsewhere', sizeBytes: 16 * 4096, replicas: 2 })
    const status = await n1.g.replicationStatus('elsewhere')
    const outsider = [n1, n2, n3].find((n) => !status.nodes.includes(n.id)) as Node
    const insider = [n1, n2, n3].find((n) => status.nodes.includes(n.id)) as Node
    await assert.rejects((insider.g.cluster as NonNullable<GalleonFS['cluster']>).request(outsider.id, { kind: 'repl:io', header: { volumeId: status.volumeId, op: 'read', offset: 0, length: 4096 } }), { code: 'NOT_LEADER' })
  })

  it('a copy rebuilds a snapshot it missed at the size the primary took it at, also when the volume grew since', async () => {
    const { network, nodes } = await cluster(2)
    const [n1] = nodes as [Node, Node]
    await n1.g.createVolume({ name: 'grown', sizeBytes: 64 * 4096, replicas: 2 })
    await n1.g.writeBlock('grown', 0, block(1), WriteConcern.WriteReplicated)
    network.partition(['n2'], ['n1'])
    await n1.g.writeBlock('grown', 1, block(2), WriteConcern.WriteDurable)
    await n1.g.createSnapshot('grown', 'small')
    await n1.g.expandVolume('grown', 128 * 4096)
    await n1.g.writeBlock('grown', 100, block(3), WriteConcern.WriteDurable)
    network.heal()
    await until('n2 is in sync again', async () => (await n1.g.replicationStatus('grown')).inSync.length === 2)
    for (const node of nodes) await node.g.close()
    for (const node of nodes) {
      const g = await GalleonFS.open({ storagePath: node.dir })
      try {
        assert.equal((await g.getSnapshot('grown', 'small')).sizeBytes, 64 * 4096, `snapshot size on ${node.id}`)
        await assert.rejects(g.read({ volume: 'grown', snapshot: 'small' }, 100 * 4096, 4096), { code: 'OUT_OF_RANGE' })
        assert.deepEqual(await g.read({ volume: 'grown', snapshot: 'small' }, 0, 2 * 4096), new Uint8Array([...block(1), ...block(2)]))
        assert.deepEqual(await g.readBlock('grown', 100), block(3))
      } finally {
        await g.close()
      }
    }
  })

  it('fails over to an in-sync copy when the primary goes; every WriteReplicated write is there; the old primary comes back as a replica and resyncs', async () => {
    const { network, coordinators, nodes } = await cluster(3)
    const [n1, n2, n3] = nodes as [Node, Node, Node]
    await n1.g.createVolume({ name: 'phoenix', sizeBytes: '512K', replicas: 3 })
    const acked: number[] = []
    for (let i = 0; i < 64; i++) {
      await n1.g.writeBlock('phoenix', i, block(i + 1), WriteConcern.WriteReplicated)
      acked.push(i)
    }
    // The primary stops without leaving: its lease runs out and the cluster leader promotes a copy.
    await n1.g.close()
    await until('a new primary serves the volume', async () => {
      const s = await n2.g.replicationStatus('phoenix')
      return s.primary !== undefined && s.primary !== 'n1' && s.epoch === 2
    })
    const promoted = (await n2.g.replicationStatus('phoenix')).primary as string
    assert.ok(n2.events.concat(n3.events).some((e) => e.startsWith('replication:primary') && e.includes(`"nodeId":"${promoted}"`)))
    for (const i of acked) assert.deepEqual(await n3.g.readBlock('phoenix', i), block(i + 1), `block ${i} after failover`)
    // Writes go on through either survivor.
    await n3.g.writeBlock('phoenix', 100, block(100), WriteConcern.WriteDurable)
    await until('the other survivor is in sync with the new primary', async () => (await n2.g.replicationStatus('phoenix')).inSync.length === 2)
    await n2.g.writeBlock('phoenix', 101, block(101), WriteConcern.WriteReplicated)
    // A change from the old epoch is refused by the copies (fencing).
    network.revive('n1')
    const stale = new MemoryTransport({ network, nodeId: 'stale' })
    await stale.listen(async () => ({ kind: 'ok', header: {} }))
    const survivor = promoted === 'n2' ? n3 : n2
    await assert.rejects(stale.request(survivor.g.cluster?.address as string, { kind: 'repl:apply', header: { volumeId: (await n2.g.getVolume('phoenix')).id, epoch: 1, from: 1, changes: [] } }), { code: 'NOT_LEADER' })
    await stale.close()
    // The old primary restarts: it follows the new primary and is resynced by digest comparison.
    const back = await startNode(network, coordinators, 'n1', { dir: n1.dir })
    nodes[0] = back
    await until('the old primary is in sync again', async () => (await n2.g.replicationStatus('phoenix')).inSync.length === 3, 20_000)
    assert.equal((await back.g.replicationStatus('phoenix')).role, 'replica')
    const expected = await n2.g.read('phoenix', 0, 512 * 1024)
    const held = await copies(nodes, 'phoenix', 512 * 1024)
    for (const node of nodes) assert.deepEqual(held.get(node.id), expected, `copy on ${node.id}`)
  })

  it('leaving hands every copy off first: a new copy is synced, the primary role moves, writes go on; with no spare node leaving is refused unless forced', async () => {
    const { nodes } = await cluster(3)
    const [n1, n2, n3] = nodes as [Node, Node, Node]
    await n1.g.createVolume({ name: 'mover', sizeBytes: '512K', replicas: 2 })
    const copyHolder = (await n1.g.replicationStatus('mover')).nodes.find((n) => n !== 'n1') as string
    const other = copyHolder === 'n2' ? n2 : n3
    for (let i = 0; i < 32; i++) await n1.g.writeBlock('mover', i, block(i), WriteConcern.WriteReplicated)
    // Writes keep coming through the other copy's node while n1 leaves.
    let stop = false
    let written = 0
    const load = (async () => {
      for (let i = 0; !stop; i++) {
        await other.g.writeBlock('mover', 32 + (i % 32), block(1000 + i), WriteConcern.WriteReplicated)
        written = i + 1
      }
    })()
    await n1.g.leaveCluster()
    stop = true
    await load
    assert.ok(written > 0)
    const status = await other.g.replicationStatus('mover')
    assert.deepEqual([...status.nodes].sort(), ['n2', 'n3'])
    assert.deepEqual([...status.inSync].sort(), ['n2', 'n3'])
    assert.notEqual(status.primary, 'n1')
    assert.equal(status.epoch, 2)
    assert.deepEqual(await n1.g.listVolumes(), [])
    for (let i = 0; i < 32; i++) assert.deepEqual(await other.g.readBlock('mover', i), block(i))
    const last = written - 1
    assert.deepEqual(await n2.g.readBlock('mover', 32 + (last % 32)), block(1000 + last))
    // Two nodes left, two copies: neither can leave without losing a copy.
    await assert.rejects(n2.g.leaveCluster(), (err: Error & { code?: string }) => err.code === 'BUSY' && /would lose its in-sync copy/.test(err.message) && /force/.test(err.message))
    assert.equal((await n2.g.clusterStatus()).clustering, true)
    await n2.g.leaveCluster({ force: true })
    assert.equal((await n2.g.clusterStatus()).clustering, false)
    await n1.g.close()
    const expected = await n3.g.read('mover', 0, 512 * 1024)
    await until('n3 leads the volume alone', async () => (await n3.g.replicationStatus('mover')).primary === 'n3')
    assert.deepEqual(await n3.g.read('mover', 0, 512 * 1024), expected)
  })

  it('places copies by the storage class: label affinity, anti-affinity and allowed zones', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const nodes = [
      await startNode(network, coordinators, 'p1', { zone: 'z1', labels: { disk: 'ssd' } }),
      await startNode(network, coordinators, 'p2', { zone: 'z2', labels: { disk: 'hdd' } }),
      await startNode(network, coordinators, 'p3', { zone: 'z3', labels: { disk: 'ssd' } }),
      await startNode(network, coordinators, 'p4', { zone: 'z4', labels: { disk: 'ssd', rack: 'old' } })
    ]
    await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 4))
    const p1 = nodes[0] as Node
    await assert.rejects(p1.g.createStorageClass({ name: 'bad', parameters: { placement: 'random' } }), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /placement/.test(err.message))
    await assert.rejects(p1.g.createStorageClass({ name: 'bad', parameters: { affinity: 'ssd' } }), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /key=value/.test(err.message))
    // Classes are per node: every node that may hold a copy needs them.
    for (const node of nodes) {
      await node.g.createStorageClass({ name: 'ssd-pair', parameters: { replication: '2', affinity: 'disk=ssd', anti_affinity: 'rack=old' } })
      await node.g.createStorageClass({ name: 'zone-pair', parameters: { replication: '2' }, allowedTopologies: ['z1', 'z2'] })
    }
    await p1.g.createVolume({ name: 'fast', sizeBytes: '256K', storageClass: 'ssd-pair' })
    assert.deepEqual([...(await p1.g.replicationStatus('fast')).nodes].sort(), ['p1', 'p3'])
    await p1.g.createVolume({ name: 'zoned', sizeBytes: '256K', storageClass: 'zone-pair' })
    assert.deepEqual([...(await p1.g.replicationStatus('zoned')).nodes].sort(), ['p1', 'p2'])
    await until('both volumes are in sync', async () => (await p1.g.replicationStatus('fast')).inSync.length === 2 && (await p1.g.replicationStatus('zoned')).inSync.length === 2)
    await p1.g.writeBlock('zoned', 0, block(1), WriteConcern.WriteDistributed)
    for (const node of nodes) await node.g.close()
  })

  it('a snapshot taken while a copy resyncs holds the same data on the copy (the resync reads the view at its cut)', async () => {
    const { network, nodes } = await cluster(2)
    const [n1, n2] = nodes as [Node, Node]
    const blocks = 2048 // two resync messages of 1024 blocks
    await n1.g.createVolume({ name: 'racy', sizeBytes: blocks * 4096, replicas: 2 })
    network.partition(['n2'], ['n1'])
    await assert.rejects(n1.g.writeBlock('racy', 0, block(1), WriteConcern.WriteReplicated), { code: 'WRITE_CONCERN_UNSATISFIED' })
    const chunk = new Uint8Array(256 * 4096)
    for (let at = 0; at < blocks; at += 256) {
      for (let i = 0; i < chunk.length; i++) chunk[i] = (at + i * 3) & 0xff
      await n1.g.write('racy', at * 4096, chunk, WriteConcern.WriteAcknowledged)
    }
    const before = await n1.g.readBlock('racy', blocks - 1)
    network.delay(100)
    network.heal()
    await until('the resync has made its cut', async () => (await n1.g.replicationStatus('racy')).links[0]?.resync !== undefined, 20_000)
    const snap = await n1.g.createSnapshot('racy', 'mid-resync')
    await n1.g.writeBlock('racy', blocks - 1, block(4242), WriteConcern.WriteAcknowledged)
    network.delay(0)
    await until('n2 is in sync', async () => (await n1.g.replicationStatus('racy')).inSync.length === 2, 30_000)
    assert.deepEqual(await n1.g.readBlock({ volume: 'racy', snapshot: 'mid-resync' }, blocks - 1), before)
    const expectedSnap = await n1.g.read({ volume: 'racy', snapshot: 'mid-resync' }, 0, blocks * 4096)
    const expected = await n1.g.read('racy', 0, blocks * 4096)
    for (const node of nodes) await node.g.close()
    const g2 = await GalleonFS.open({ storagePath: n2.dir })
    try {
      assert.deepEqual((await g2.listSnapshots('racy')).map((s) => s.id), [snap.id])
      assert.deepEqual(await g2.read({ volume: 'racy', snapshot: 'mid-resync' }, 0, blocks * 4096), expectedSnap)
      assert.deepEqual(await g2.read('racy', 0, blocks * 4096), expected)
    } finally {
      await g2.close()
    }
  })

  it('a copy that caught up joins the in-sync list even when the first try to list it fails and no write follows', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    // n1's coordinator refuses the first record update that lists n2 as in sync (as etcd under
    // load or a lost connection would); nothing else is written afterwards to trigger another try.
    const coordinator = coordinators.coordinator()
    const put = coordinator.put.bind(coordinator)
    let refuse = false
    let refused = 0
    coordinator.put = async (key, value, options) => {
      const record = (() => { try { return JSON.parse(value) as { spec?: { name?: string }, inSync?: string[] } } catch { return undefined } })()
      if (refuse && record?.spec?.name === 'retry-join' && record.inSync?.includes('n2') === true) {
        refuse = false
        refused++
        throw new GalleonError('BACKEND_UNAVAILABLE', 'injected: the coordinator cannot be reached')
      }
      return await put(key, value, options)
    }
    const n1 = await startNode(network, coordinators, 'n1', { coordinator })
    const n2 = await startNode(network, coordinators, 'n2')
    await until('both nodes see each other', () => [n1, n2].every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 2))
    await n1.g.createVolume({ name: 'retry-join', sizeBytes: '1M', replicas: 2 })
    await until('n2 is in sync', async () => (await n1.g.replicationStatus('retry-join')).inSync.length === 2)
    network.partition(['n2'], ['n1'])
    await n1.g.writeBlock('retry-join', 3, block(3), WriteConcern.WriteAcknowledged)
    await until('n2 is out of sync', async () => (await n1.g.replicationStatus('retry-join')).inSync.length === 1)
    refuse = true
    network.heal()
    await until('n2 is back in sync without another write', async () => (await n1.g.replicationStatus('retry-join')).inSync.length === 2)
    assert.equal(refused, 1, 'the injected failure happened')
    await n1.g.writeBlock('retry-join', 4, block(4), WriteConcern.WriteReplicated)
    const held = await copies([n1, n2], 'retry-join', 5 * 4096)
    assert.deepEqual(held.get('n2'), held.get('n1'))
  })

  it('a resync sent to a node for a volume it holds only locally (not as a copy) is refused and overwrites nothing', async () => {
    const { network, nodes } = await cluster(2)
    const [n1] = nodes as [Node, Node]
    const solo = await n1.g.createVolume({ name: 'solo', sizeBytes: '64K' })
    for (let i = 0; i < 4; i++) await n1.g.writeBlock('solo', i, block(i + 500), WriteConcern.WriteDurable)
    // A member that believes it is the volume's primary (a late message of a move given up, or a
    // volume made local again) starts a resync, then sends blocks.
    const stranger = network.transport('n9')
    await stranger.listen(async () => ({ kind: 'ok', header: {} }))
    try {
      const spec = { id: solo.id, name: 'solo', namespace: 'default', type: solo.type, sizeBytes: solo.sizeBytes, blockSize: 4096, storageClass: solo.storageClass, replicas: 2, accessModes: [...solo.accessModes], labels: {} }
      await assert.rejects(stranger.request('n1', { kind: 'repl:resync-begin', header: { volumeId: solo.id, epoch: 99, spec, primary: 'n9' } }), (err: { code?: string, message?: string }) => err.code === 'VOLUME_NOT_FOUND' && /no copy placed on node n1 by primary n9/.test(err.message ?? ''))
      await assert.rejects(stranger.request('n1', { kind: 'repl:resync-blocks', header: { volumeId: solo.id, epoch: 99, indices: [0], zero: [1] }, payload: block(1) }), { code: 'VOLUME_NOT_FOUND' })
    } finally {
      await stranger.close()
    }
    assert.equal((await n1.g.replicationStatus('solo')).epoch, undefined, 'still a local volume')
    for (let i = 0; i < 4; i++) assert.deepEqual(await n1.g.readBlock('solo', i), block(i + 500), `block ${i}`)
  })

  it('a copy whose deletion failed when it was given up is taken back (and resynced) when the volume is placed there again', async () => {
    // Mounts whose unmount fails (a shell sitting in the mount point): deleting a copy fails.
    let unmountFails = false
    class StuckMounts implements MountDriver {
      readonly name = 'stuck'
      async mount (): Promise<void> {}
      async unmount (path: string): Promise<void> { if (unmountFails) throw new GalleonError('BUSY', `could not unmount ${path}: device busy`) }
    }
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const nodes: Node[] = []
    for (const id of ['n1', 'n2', 'n3']) {
      const dir = await mkdtemp(join(tmpdir(), `galleon-repl-${id}-`))
      dirs.push(dir)
      const g = await GalleonFS.open({ storagePath: dir, mount: new StuckMounts(), cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 } })
      opened.push(g)
      nodes.push({ g, id, dir, events: [] })
    }
    const [n1] = nodes as [Node, Node, Node]
    await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 3))
    for (const { g } of nodes) {
      await g.createStorageClass({ name: 'triple', parameters: { replication: '3' } })
      await g.createStorageClass({ name: 'double', parameters: { replication: '2' } })
    }
    await n1.g.createVolume({ name: 'stuck', sizeBytes: '256K', storageClass: 'triple' })
    for (let i = 0; i < 8; i++) await n1.g.writeBlock('stuck', i, block(i + 1), WriteConcern.WriteReplicated)
    await until('three copies in sync', async () => (await n1.g.replicationStatus('stuck')).inSync.length === 3)
    const primary = (await n1.g.replicationStatus('stuck')).primary
    for (const node of nodes) {
      if (node.id === primary) continue
      const mountPoint = await mkdtemp(join(tmpdir(), 'galleon-stuck-mnt-'))
      dirs.push(mountPoint)
      await node.g.mounts.mountVolume('stuck', mountPoint, { readOnly: true })
    }
    unmountFails = true
    await n1.g.migrateVolume('stuck', { storageClass: 'double' })
    const left = (await n1.g.replicationStatus('stuck')).nodes
    const given = nodes.find((n) => !left.includes(n.id)) as Node
    await until(`${given.id} tried to delete its copy`, async () => (await given.g.getVolume('stuck').then((v) => v.state, () => 'gone')) !== 'available', 10_000).catch(() => {})
    assert.notEqual(await given.g.getVolume('stuck').then(() => 'kept', () => 'gone'), 'gone', `the deletion on ${given.id} failed, so its copy is still there`)
    unmountFails = false
    // Placed there again: the copy left over is taken back and brought up to date.
    await n1.g.writeBlock('stuck', 9, block(99), WriteConcern.WriteReplicated)
    await n1.g.migrateVolume('stuck', { storageClass: 'triple' })
    await until('three copies in sync again', async () => (await n1.g.replicationStatus('stuck')).inSync.length === 3, 30_000)
    const held = await copies(nodes, 'stuck', 16 * 4096)
    for (const node of nodes) assert.deepEqual(held.get(node.id), held.get(n1.id), `the copy on ${node.id}`)
    assert.deepEqual(held.get(given.id)?.subarray(9 * 4096, 10 * 4096), block(99))
  })

  it('a copy rejoins the in-sync list while writes keep coming; large writes, clones and a refused delete keep replication working', async () => {
    const { network, nodes } = await cluster(2)
    const [n1, n2] = nodes as [Node, Node]
    await n1.g.createVolume({ name: 'busy', sizeBytes: '16M', replicas: 2 })
    network.partition(['n2'], ['n1'])
    await assert.rejects(n1.g.writeBlock('busy', 0, block(1), WriteConcern.WriteReplicated), { code: 'WRITE_CONCERN_UNSATISFIED' })
    network.delay(2)
    network.heal()
    let stop = false
    const writers = Array.from({ length: 8 }, async (_, w) => {
      for (let i = 0; !stop; i++) await n1.g.writeBlock('busy', (w * 97 + i) % 4096, block(i), WriteConcern.WriteAcknowledged)
    })
    await until('n2 is back in sync under load', async () => (await n1.g.replicationStatus('busy')).inSync.length === 2, 30_000)
    stop = true
    await Promise.all(writers)
    network.delay(0)
    // A write larger than a message travels in pieces.
    const big = new Uint8Array(9 << 20)
    for (let i = 0; i < big.length; i++) big[i] = (i * 7 + 3) & 0xff
    await n1.g.write('busy', 4096 * 100 + 17, big, WriteConcern.WriteReplicated)
    // A clone of a replicated volume is a local 1-copy volume; on a node that is not primary it is refused.
    const clone = await n1.g.cloneVolume('busy', 'busy-clone')
    assert.equal(clone.replicas, 1)
    await assert.rejects(n2.g.cloneVolume('busy', 'other-clone'), { code: 'NOT_LEADER' })
    // Deleting a volume that has clones is refused before anything is deleted anywhere.
    await assert.rejects(n1.g.deleteVolume('busy'), { code: 'BUSY' })
    await n1.g.writeBlock('busy', 1, block(11), WriteConcern.WriteReplicated)
    await n1.g.createSnapshot('busy', 'still-works')
    const expected = await n1.g.read('busy', 0, 16 << 20)
    await n1.g.deleteVolume('busy-clone')
    for (const node of nodes) await node.g.close()
    const g2 = await GalleonFS.open({ storagePath: n2.dir })
    try {
      assert.deepEqual(await g2.read('busy', 0, 16 << 20), expected)
    } finally {
      await g2.close()
    }
  })

  it('a copy answers a digest request only after the stream batches it issued are applied (a new primary must not skip a block changing there)', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await startNode(network, coordinators, 'n1')
    // n2's store: its batches wait while `hold` is set, and say when one arrives.
    const dir = await mkdtemp(join(tmpdir(), 'galleon-repl-n2-'))
    dirs.push(dir)
    const { FileBlockStore } = await import('../backends/file/index.js')
    const inner = new FileBlockStore({ location: join(dir, 'blocks') })
    const control: { hold: Promise<void> | undefined, held: number } = { hold: undefined, held: 0 }
    const store = new Proxy(inner, {
      get (target, prop) {
        if (prop === 'batch') {
          return async (...args: Parameters<typeof inner.batch>) => {
            if (control.hold !== undefined && args[0].some((op) => op.type === 'put')) {
              control.held++
              await control.hold
            }
            return await target.batch(...args)
          }
        }
        const value = Reflect.get(target, prop, target)
        return typeof value === 'function' ? value.bind(target) : value
      }
    })
    const n2 = await startNode(network, coordinators, 'n2', { dir, blockStore: store })
    await until('both nodes see each other', () => [n1, n2].every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 2))
    const vol = await n1.g.createVolume({ name: 'racing', sizeBytes: '1M', replicas: 2 })
    await n1.g.writeBlock('racing', 0, block(1), WriteConcern.WriteReplicated)
    const epoch = (await n1.g.replicationStatus('racing')).epoch as number
    const digest = async (): Promise<string> => {
      const reply = await (n1.g.cluster as NonNullable<typeof n1.g.cluster>).request('n2', { kind: 'repl:digests', header: { volumeId: vol.id, epoch, first: 0, count: 1 } })
      assert.deepEqual(reply.header.indices, [0])
      return Buffer.from(reply.payload as Uint8Array).toString('hex')
    }
    const before = await digest()
    let release = (): void => {}
    control.hold = new Promise((resolve) => { release = resolve })
    // Stored on n1 at once; the batch reaches n2, which issues it and waits on its store.
    await n1.g.writeBlock('racing', 0, block(2), WriteConcern.WriteDurable)
    await until('the batch waits in the copy\'s store', () => control.held > 0)
    const asked = digest()
    await new Promise((resolve) => setTimeout(resolve, 100))
    control.hold = undefined
    release()
    const after = await asked
    assert.notEqual(after, before, 'the digest must cover the batch issued before it was asked for')
    await n2.g.close()
    await n1.g.close()
  })

  it('an NBD client of a replica node keeps working across a failover (nbdcopy in and out)', { skip: NO_NBDCOPY }, async () => {
    const { nodes } = await cluster(3)
    const [n1, n2, n3] = nodes as [Node, Node, Node]
    await n1.g.createVolume({ name: 'exported', sizeBytes: '4M', replicas: 3 })
    await until('three copies are in sync', async () => (await n1.g.replicationStatus('exported')).inSync.length === 3)
    const server = await NbdServer.listen(n3.g, { port: 0 })
    try {
      const uri = `nbd://127.0.0.1:${server.port}/exported`
      const first = randomBytes(4 << 20)
      const file = join(n3.dir, '..', `nbd-${Date.now()}.img`)
      dirs.push(file)
      await writeFile(file, first)
      await exec('nbdcopy', [file, uri]) // through n3, forwarded to the primary n1 (nbdcopy flushes)
      assert.deepEqual(Buffer.from(await n1.g.read('exported', 0, 4 << 20)), first)
      await n1.g.close()
      await until('a new primary serves the volume', async () => {
        const primary = (await n3.g.replicationStatus('exported')).primary
        return primary === 'n2' || primary === 'n3'
      })
      // The same export on n3, after the failover: the data is there and takes new writes.
      await exec('nbdcopy', [uri, `${file}.out`])
      dirs.push(`${file}.out`)
      assert.ok((await readFile(`${file}.out`)).equals(first))
      const second = randomBytes(4 << 20)
      await writeFile(file, second)
      await exec('nbdcopy', [file, uri])
      assert.deepEqual(Buffer.from(await n2.g.read('exported', 0, 4 << 20)), second)
    } finally {
      await server.close()
    }
  })
})
