// Resource leaks under cluster churn in one process: nodes joining and leaving a cluster of two
// long-lived nodes (memory coordinator, over the memory transport and over the tcp transport), and
// tcp transports dialing, talking and closing against a long-lived one. After the churn the
// long-lived nodes hold no more listeners, the coordinator no more leases, the transports no more
// connections, and the process the descriptors and handles it held before, with a heap that did
// not grow by more than a generous bound per cycle.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { TcpTransport } from '../backends/tcp/index.js'
import { leftoversAfter, listenerTotal, settledHeap, takeResources } from './support/h47-resources.js'
import { until } from './support/wait.js'

const SECRET = 'h47-cluster-churn-secret'
const HEAP_BYTES_PER_CYCLE = 96 * 1024

type TransportKind = 'memory' | 'tcp'

describe('cluster churn', () => {
  for (const kind of ['memory', 'tcp'] as TransportKind[]) {
    it(`${kind} transport: 12 nodes join and leave (leaveCluster, then close) beside two long-lived nodes, leaving nothing behind`, { timeout: 50_000 }, async () => {
      const network = new MemoryNetwork()
      const coordinators = new MemoryCoordinatorCluster()
      const transport = (nodeId: string): MemoryTransport | TcpTransport => kind === 'memory'
        ? new MemoryTransport({ network, nodeId })
        : new TcpTransport({ nodeId, clusterSecret: SECRET })
      const open = async (nodeId: string): Promise<GalleonFS> => await GalleonFS.open({
        inMemory: true,
        cluster: { nodeId, zone: 'z', transport: transport(nodeId), coordinator: coordinators.coordinator() }
      })
      const a = await open('a')
      const b = await open('b')
      try {
        await until('a leads', async () => (await a.clusterStatus()).leader !== undefined)
        const members = async (): Promise<string[]> => (await a.clusterStatus()).members.map((m) => m.id).sort()
        const cycle = async (i: number): Promise<void> => {
          const id = `n-${i}`
          const node = await open(id)
          await until(`${id} is a member`, async () => (await members()).includes(id))
          await node.createVolume({ name: `local-${i}`, sizeBytes: '1M' })
          await node.leaveCluster({ force: true })
          await node.close()
          await until(`${id} has left`, async () => !(await members()).includes(id))
        }
        for (let i = 0; i < 2; i++) await cycle(i)
        const listeners = [listenerTotal(a), listenerTotal(b)]
        const leases = coordinators.leaseCount
        const baseline = takeResources()
        const heapBefore = await settledHeap()
        const cycles = 12
        for (let i = 2; i < 2 + cycles; i++) await cycle(i)
        assert.deepEqual(await members(), ['a', 'b'])
        assert.equal(coordinators.leaseCount, leases, 'leases held in the coordinator')
        assert.deepEqual([listenerTotal(a), listenerTotal(b)], listeners, 'listeners on the long-lived nodes')
        const left = await leftoversAfter(baseline, undefined, 15_000)
        assert.deepEqual(left.fds, [], 'descriptors left after the joins and leaves')
        assert.deepEqual(left.handles, [], 'handles left after the joins and leaves')
        const growth = (await settledHeap()) - heapBefore
        assert.ok(growth < HEAP_BYTES_PER_CYCLE * cycles, `heap grew by ${growth} bytes over ${cycles} joins and leaves (${Math.round(growth / cycles)} per cycle)`)
      } finally {
        await Promise.all([a.close(), b.close()])
      }
    })
  }

  it('memory transport: 20000 short-lived nodes with distinct ids leave no per-node bookkeeping in the network', async () => {
    // Same churn with one reused id as the control: only what is kept per distinct id differs.
    const perNode = async (distinct: boolean): Promise<number> => {
      const network = new MemoryNetwork()
      const server = network.transport('server')
      const address = await server.listen(async () => ({ kind: 'ok', header: {} }))
      const cycle = async (i: number): Promise<void> => {
        const client = network.transport(distinct ? `client-${i}` : 'client')
        await client.listen(async () => ({ kind: 'ok', header: {} }))
        assert.equal((await client.request(address, { kind: 'x', header: {} })).kind, 'ok')
        await client.close()
      }
      for (let i = 0; i < 500; i++) await cycle(i)
      const heapBefore = await settledHeap()
      const cycles = 20_000
      for (let i = 500; i < 500 + cycles; i++) await cycle(i)
      const growth = (await settledHeap()) - heapBefore
      await server.close()
      return growth / cycles
    }
    const reused = await perNode(false)
    const distinct = await perNode(true)
    // A Map entry holding an empty Set is about 200 bytes; the bound leaves room for noise only.
    assert.ok(distinct < reused + 64, `each distinct node id that came and went keeps ${Math.round(distinct)} bytes (a reused id ${Math.round(reused)})`)
  })

  it('tcp transport: 60 clients dial, authenticate, exchange requests and close against a long-lived server, leaving no connection behind', async () => {
    const server = new TcpTransport({ nodeId: 'server', clusterSecret: SECRET })
    const address = await server.listen(async (from, request) => ({ kind: 'echo', header: { from, n: request.header.n } }))
    try {
      const cycle = async (i: number): Promise<void> => {
        const client = new TcpTransport({ nodeId: `client-${i}`, clusterSecret: SECRET })
        const replies = await Promise.all([1, 2, 3].map(async (n) => await client.request(address, { kind: 'x', header: { n }, payload: new Uint8Array(4096) })))
        assert.deepEqual(replies.map((r) => r.header.n), [1, 2, 3])
        if (i % 3 === 0) {
          // A client with the wrong secret is refused and leaves nothing either.
          const stranger = new TcpTransport({ nodeId: `stranger-${i}`, clusterSecret: 'wrong-cluster-secret' })
          await assert.rejects(stranger.request(address, { kind: 'x', header: {} }, { timeoutMs: 5_000 }))
          await stranger.close()
        }
        await client.close()
        await until('the server has let go of the client', () => server.stats().inboundConnections === 0, 10_000)
      }
      for (let i = 0; i < 3; i++) await cycle(i)
      const baseline = takeResources()
      const heapBefore = await settledHeap()
      const cycles = 60
      for (let i = 3; i < 3 + cycles; i++) await cycle(i)
      const left = await leftoversAfter(baseline)
      assert.deepEqual(left.fds, [], 'descriptors left after the clients')
      assert.deepEqual(left.handles, [], 'handles left after the clients')
      const growth = (await settledHeap()) - heapBefore
      assert.ok(growth < 32 * 1024 * cycles, `heap grew by ${growth} bytes over ${cycles} clients (${Math.round(growth / cycles)} per client)`)
    } finally {
      await server.close()
    }
  })
})
