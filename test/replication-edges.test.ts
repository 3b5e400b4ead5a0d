// Edge cases of replication found in a bug hunt: in-process nodes on the memory transport and
// coordinator (with fault injection), each with its own on-disk storage.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { until } from './support/wait.js'
import { namePrimary } from './support/replica-records.js'

interface Node { g: GalleonFS, id: string, dir: string }

const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

async function startNode (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, id: string): Promise<Node> {
  const dir = await mkdtemp(join(tmpdir(), `galleon-edges-${id}-`))
  dirs.push(dir)
  const g = await GalleonFS.open({ storagePath: dir, cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 } })
  opened.push(g)
  return { g, id, dir }
}

/** A block holding a register value: the writer and its sequence number, repeated. */
function register (writer: number, seq: number, size = 4096): Uint8Array {
  const out = new Uint8Array(size)
  const view = new DataView(out.buffer)
  for (let at = 0; at + 8 <= size; at += 8) { view.setUint32(at, writer); view.setUint32(at + 4, seq) }
  return out
}

/** The writer and sequence number a block holds (checked to be the same all through). */
function registerOf (block: Uint8Array): [number, number] {
  const view = new DataView(block.buffer, block.byteOffset, block.byteLength)
  const value: [number, number] = [view.getUint32(0), view.getUint32(4)]
  for (let at = 0; at + 8 <= block.byteLength; at += 8) assert.deepEqual([view.getUint32(at), view.getUint32(at + 4)], value, 'a torn register')
  return value
}

async function cluster (count: number): Promise<{ network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, nodes: Node[] }> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const nodes: Node[] = []
  for (let i = 0; i < count; i++) nodes.push(await startNode(network, coordinators, `n${i + 1}`))
  await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === count))
  return { network, coordinators, nodes }
}

describe('replication edge cases', () => {
  it('a write that was waiting for its block when its node stopped being primary goes to the new primary, not only to the old one', async () => {
    const { network, coordinators, nodes } = await cluster(2)
    const [n1, n2] = nodes as [Node, Node]
    const volume = await n1.g.createVolume({ name: 'deposed', sizeBytes: 16 * 4096, replicas: 2 })
    await n1.g.writeBlock('deposed', 0, register(1, 1), WriteConcern.WriteReplicated)
    // The copy stops receiving the stream: a replicated write to block 0 waits for it, holding the
    // block, and a second write to block 0 waits behind it.
    network.drop((m) => m.kind === 'repl:apply' && m.type === 'request', { silent: true })
    const first = n1.g.writeBlock('deposed', 0, register(1, 2), WriteConcern.WriteReplicated)
    first.catch(() => {})
    await until('the first write waits for the copy', async () => ((await n1.g.replicationStatus('deposed')).links[0]?.lagChanges ?? 0) > 0)
    const second = n1.g.writeBlock('deposed', 0, register(1, 3), WriteConcern.WriteDurable)
    second.catch(() => {})
    await new Promise((resolve) => setTimeout(resolve, 20))
    // The cluster names n2 primary (as the leader does on a failover).
    await namePrimary(coordinators, volume.id, 'n2')
    await assert.rejects(first, { code: 'WRITE_CONCERN_UNSATISFIED' })
    network.drop(0)
    // Acknowledged: the second write is in the volume, as the new primary serves it.
    await second
    await until('n2 leads', async () => (await n2.g.replicationStatus('deposed')).role === 'primary')
    assert.deepEqual(registerOf(await n2.g.readBlock('deposed', 0)), [1, 3], 'read on the new primary')
    assert.deepEqual(registerOf(await n1.g.readBlock('deposed', 0)), [1, 3], 'read through the old primary')
  })
})
