// Replication of volumes between GalleonFS instances in one process: each node has its own on-disk
// storage (the file block store and classic-level), they talk over the memory transport (with its
// fault injection) and share a memory coordinator. Real processes, etcd and kill -9 are in
// replication-daemons.test.ts.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern, VolumeState } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'

interface Node { g: GalleonFS, id: string, dir: string, events: string[] }

const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

async function startNode (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, id: string, options: { zone?: string, dir?: string } = {}): Promise<Node> {
  const dir = options.dir ?? await mkdtemp(join(tmpdir(), `galleon-repl-${id}-`))
  if (options.dir === undefined) dirs.push(dir)
  const events: string[] = []
  const g = await GalleonFS.open({
    storagePath: dir,
    cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000, ...(options.zone === undefined ? {} : { zone: options.zone }) }
  })
  opened.push(g)
  for (const event of ['replication:failover', 'replication:out-of-sync', 'replication:in-sync', 'replication:resynced', 'replication:primary', 'replication:demoted'] as const) {
    g.on(event, (payload: unknown) => { events.push(`${event} ${JSON.stringify(payload)}`) })
  }
  return { g, id, dir, events }
}

async function until (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
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
    const expected = await n1.g.read('triple', 0, 8 * 4096)
    assert.deepEqual(expected.subarray(0, 4096), block(1))
    assert.ok(expected.subarray(4096, 8192).every((b) => b === 0), 'the trimmed block reads as zeros')
    const links = (await n1.g.replicationStatus('triple')).links
    assert.equal(links.length, 2)
    for (const link of links) {
      assert.equal(link.state, 'streaming')
      assert.equal(link.lagChanges, 0)
      assert.ok(link.shippedBytes >= 5 * 4096, `shipped ${link.shippedBytes}`)
    }
    const metrics = await n1.g.metricsText()
    assert.match(metrics, /galleonfs_replication_lag_changes\{volume_id="[^"]+",volume_name="triple",node="n2"\} 0/)
    assert.match(metrics, /galleonfs_replication_in_sync\{volume_id="[^"]+",volume_name="triple",node="n3"\} 1/)
    // Every copy holds the same bytes on its own disk.
    const held = await copies(nodes, 'triple', 8 * 4096)
    for (const node of nodes) assert.deepEqual(held.get(node.id), expected, `copy on ${node.id}`)
  })
})
