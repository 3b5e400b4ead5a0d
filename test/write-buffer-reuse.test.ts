// A writer may reuse its buffer as soon as write()/writeBlock() has returned its promise: the bytes
// are taken by then. Checked where the bytes travel later than the call: a write made on a node
// that is not the replicated volume's primary (forwarded to it) and one that waits for QoS
// admission (test/h42-concurrent-overlap.test.ts covers that one with a model).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { MemoryCoordinatorCluster } from '../backends/memory/index.js'
import { TcpTransport } from '../backends/tcp/index.js'
import { allInSync, diskCluster } from './support/disk-cluster.js'
import { until } from './support/wait.js'

const { cluster, tempDir, track } = diskCluster('galleon-reuse-')
const BS = 4096

/** Two nodes on the tcp transport (its frames are written at the end of the tick, from the payload's own memory). */
async function tcpPair (): Promise<[GalleonFS, GalleonFS]> {
  const coordinators = new MemoryCoordinatorCluster()
  const open = async (id: string): Promise<GalleonFS> => track(await GalleonFS.open({
    storagePath: await tempDir(`galleon-reuse-tcp-${id}-`),
    cluster: { nodeId: id, transport: new TcpTransport({ nodeId: id, clusterSecret: 'write-buffer-reuse-secret' }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 }
  }))
  const nodes: [GalleonFS, GalleonFS] = [await open('t1'), await open('t2')]
  await until('both nodes see each other', () => nodes.every((g) => g.cluster?.members.filter((m) => m.healthy).length === 2))
  return nodes
}

/** Writes from `writer` (not the primary), refilling the buffer right after each call; checks on `primary`. */
async function forwardedWrites (writer: GalleonFS, primary: GalleonFS): Promise<void> {
  const buffer = new Uint8Array(2 * BS)
  const calls: Array<Promise<void>> = []
  for (let i = 0; i < 8; i++) {
    buffer.fill(i + 1)
    calls.push(i % 2 === 0
      ? writer.write('reuse', i * 2 * BS, buffer, WriteConcern.WriteReplicated)
      : writer.writeBlock('reuse', i * 2, buffer.subarray(0, BS), WriteConcern.WriteReplicated))
    buffer.fill(0xee)
  }
  await Promise.all(calls)
  for (let i = 0; i < 8; i++) {
    const stored = await primary.read('reuse', i * 2 * BS, i % 2 === 0 ? 2 * BS : BS)
    assert.ok(stored.every((byte) => byte === i + 1), `call ${i} stored the bytes it was made with (found ${stored[0]})`)
  }
}

describe('a writer reusing its buffer once the call has returned', () => {
  it('a write forwarded to the primary stores the bytes of the call, not what the buffer held later (memory transport)', async () => {
    const { nodes } = await cluster(2)
    const [n1, n2] = nodes as [typeof nodes[0], typeof nodes[0]]
    await n1.g.createVolume({ name: 'reuse', sizeBytes: 16 * BS, replicas: 2 })
    await until('both copies are in sync', async () => await allInSync(n1.g, 'reuse', 2))
    await forwardedWrites(n2.g, n1.g)
  })

  it('the same over the tcp transport', async () => {
    const [t1, t2] = await tcpPair()
    await t1.createVolume({ name: 'reuse', sizeBytes: 16 * BS, replicas: 2 })
    await until('both copies are in sync', async () => await allInSync(t1, 'reuse', 2))
    await forwardedWrites(t2, t1)
  })
})
