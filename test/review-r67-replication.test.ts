// Review r67: replication's promises under faults the other replication tests leave out.

import { describe, it, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport, type MemoryCoordinator } from '../backends/memory/index.js'
import { until } from './support/wait.js'

const BS = 4096
const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

interface Node { g: GalleonFS, id: string, dir: string, coordinator: MemoryCoordinator }

async function startNode (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, id: string, zone: string): Promise<Node> {
  const dir = await mkdtemp(join(tmpdir(), `r67-${id}-`))
  dirs.push(dir)
  const coordinator = coordinators.coordinator()
  const g = await GalleonFS.open({ storagePath: dir, cluster: { nodeId: id, zone, transport: new MemoryTransport({ network, nodeId: id }), coordinator, leaseTtlMs: 1000 } })
  opened.push(g)
  return { g, id, dir, coordinator }
}

describe('review r67: replication', () => {
  it('WriteDistributed does not count a copy whose zone is unknown (its member record gone) as another zone', { timeout: 60_000 }, async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const a = await startNode(network, coordinators, 'a', 'zone-1')
    const b = await startNode(network, coordinators, 'b', 'zone-2')
    const c = await startNode(network, coordinators, 'c', 'zone-1')
    await until('every node sees every other', () => [a, b, c].every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 3))
    await a.g.createVolume({ name: 'zones', sizeBytes: 1 << 20, replicas: 3 })
    await until('3 copies in sync', async () => (await a.g.replicationStatus('zones')).inSync.length === 3)
    await a.g.writeBlock('zones', 0, new Uint8Array(BS).fill(1), WriteConcern.WriteDistributed)
    // b (the only copy in another zone) is cut off: out of sync; WriteDistributed has no copy for it.
    network.partition(['b'], ['a', 'c'])
    await a.g.writeBlock('zones', 3, new Uint8Array(BS).fill(9))
    await until('b is out of sync', async () => !(await a.g.replicationStatus('zones')).inSync.includes('b'))
    await assert.rejects(a.g.writeBlock('zones', 1, new Uint8Array(BS).fill(2), WriteConcern.WriteDistributed), { code: 'WRITE_CONCERN_UNSATISFIED' })
    // c loses the coordinator (its process goes on): once its member record is gone, a no longer
    // knows c's zone (c is in zone-1, as a is). No defect: the cluster sends nothing to a node
    // outside the membership, so c leaves the in-sync list rather than count as another zone.
    await c.coordinator.crash()
    await until('c\'s member record is gone on a', () => a.g.cluster?.members.some((m) => m.id === 'c') === false, 20_000)
    assert.ok((await a.g.replicationStatus('zones')).inSync.includes('c'))
    await assert.rejects(a.g.writeBlock('zones', 2, new Uint8Array(BS).fill(3), WriteConcern.WriteDistributed), { code: 'WRITE_CONCERN_UNSATISFIED' })
  })
  it('reordered stream messages: concurrent WriteReplicated writes, trims and snapshots end the same on every copy', { timeout: 120_000 }, async () => {
    const network = new MemoryNetwork({ seed: 67 })
    const coordinators = new MemoryCoordinatorCluster()
    const nodes = [await startNode(network, coordinators, 'r1', 'zone-1'), await startNode(network, coordinators, 'r2', 'zone-2'), await startNode(network, coordinators, 'r3', 'zone-1')]
    const [p] = nodes as [Node]
    await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 3))
    const BLOCKS = 32
    await p.g.createVolume({ name: 'shuffled', sizeBytes: BLOCKS * BS, replicas: 3 })
    await until('3 copies in sync', async () => (await p.g.replicationStatus('shuffled')).inSync.length === 3)
    network.reorder(3)
    let acknowledged = 0
    let next = 1
    const writer = async (w: number): Promise<void> => {
      for (let i = 0; i < 40; i++) {
        const index = (w * 7 + i * 3) % BLOCKS
        const value = next++
        if (i % 9 === 8) { await p.g.trim('shuffled', index * BS, BS); continue }
        await p.g.writeBlock('shuffled', index, new Uint8Array(BS).fill(value & 0xff), WriteConcern.WriteReplicated)
        acknowledged++
      }
    }
    const snapshots = (async () => { for (let i = 0; i < 3; i++) { await new Promise((resolve) => setImmediate(resolve)); await p.g.createSnapshot('shuffled', `s${i}`) } })()
    await Promise.all([writer(0), writer(1), writer(2), writer(3), snapshots])
    await p.g.flush('shuffled')
    network.reorder(0)
    assert.ok(acknowledged > 100)
    const status = await p.g.replicationStatus('shuffled')
    assert.equal(status.inSync.length, 3, JSON.stringify(status.links))
    for (const n of nodes) {
      await until(`${n.id} has the snapshots`, async () => (await n.g.listSnapshots('shuffled')).length === 3)
    }
    const views = async (g: GalleonFS): Promise<Uint8Array[]> => [await g.read('shuffled', 0, BLOCKS * BS), ...await Promise.all(['s0', 's1', 's2'].map(async (snap) => await g.read({ volume: 'shuffled', snapshot: snap }, 0, BLOCKS * BS)))]
    const want = await views(p.g)
    await Promise.all(nodes.map(async (n) => await n.g.close()))
    // Each copy's own bytes, its storage opened alone: live and in every snapshot, the primary's.
    for (const n of nodes) {
      const alone = await GalleonFS.open({ storagePath: n.dir })
      try {
        const got = await views(alone)
        got.forEach((view, k) => assert.ok(Buffer.from(view).equals(Buffer.from(want[k] as Uint8Array)), `${n.id}: view ${k} differs from the primary's`))
      } finally {
        await alone.close()
      }
    }
    // Reordering alone needs no resync: early batches wait for the ones before them.
    assert.deepEqual(status.links.map((l) => l.resyncs), [1, 1])
  })
  it('a durable concern the memory store cannot meet is refused on a replicated primary without sending its copies through a resync', { timeout: 60_000 }, async () => {
    // Defect: the change was recorded and shipped to the copies before commit() refused it, and the
    // refusal ("Nothing was written") then took every copy out of sync for a full digest resync.
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const open = async (id: string): Promise<GalleonFS> => {
      const g = await GalleonFS.open({ inMemory: true, cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 } })
      opened.push(g)
      return g
    }
    const a = await open('m1')
    const b = await open('m2')
    await until('m1 sees m2', () => a.cluster?.members.filter((m) => m.healthy).length === 2)
    await a.createVolume({ name: 'in-memory', sizeBytes: 1 << 20, replicas: 2 })
    await until('m2 is in sync', async () => (await a.replicationStatus('in-memory')).inSync.length === 2)
    const events: string[] = []
    for (const event of ['replication:out-of-sync', 'replication:link-down', 'replication:resynced'] as const) a.on(event, (payload) => { events.push(`${event} ${JSON.stringify(payload)}`) })
    for (const concern of [WriteConcern.WriteDurable, WriteConcern.WriteReplicated]) {
      await assert.rejects(a.writeBlock('in-memory', 0, new Uint8Array(BS).fill(7), concern), { code: 'WRITE_CONCERN_UNSATISFIED' })
      await assert.rejects(a.write('in-memory', 100, new Uint8Array(3 * BS).fill(7), concern), { code: 'WRITE_CONCERN_UNSATISFIED' })
      await assert.rejects(b.writeBlock('in-memory', 0, new Uint8Array(BS).fill(7), concern), { code: 'WRITE_CONCERN_UNSATISFIED' })
    }
    // A write that is taken goes through the stream as before; the copy never left the in-sync list.
    await a.writeBlock('in-memory', 1, new Uint8Array(BS).fill(8))
    await a.flush('in-memory')
    const status = await a.replicationStatus('in-memory')
    const link = status.links.find((l) => l.node === 'm2')
    assert.deepEqual([...status.inSync].sort(), ['m1', 'm2'])
    assert.equal(link?.resyncs, 1, `resyncs of m2: ${JSON.stringify(link)}; events: ${events.join('; ')}`)
    assert.equal(link?.resyncReadBytes, 0)
    assert.deepEqual(events, [])
    assert.deepEqual(await a.read('in-memory', 0, BS), new Uint8Array(BS))
    assert.deepEqual(await b.readBlock('in-memory', 1), new Uint8Array(BS).fill(8))
  })
})
