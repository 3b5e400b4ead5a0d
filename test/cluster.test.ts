// Cluster membership of GalleonFS instances: three nodes in one process on the memory transport and
// the memory coordinator (with a manual clock for lease expiry), then joins and quick closes on a real etcd.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS, type ClusterMember } from '../src/index.js'
import { EtcdCoordinator } from '../backends/etcd/index.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from './support/etcd.js'
import { ManualClock, MemoryCoordinator, MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { until } from './support/wait.js'

interface Node { g: GalleonFS, id: string, events: string[], coordinator: MemoryCoordinator, transport: MemoryTransport }

async function node (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, id: string, extra: { zone?: string, labels?: Record<string, string> } = {}): Promise<Node> {
  const events: string[] = []
  const coordinator = coordinators.coordinator()
  const transport = new MemoryTransport({ network, nodeId: id })
  const g = await GalleonFS.open({ inMemory: true, cluster: { nodeId: id, transport, coordinator, leaseTtlMs: 3000, ...extra } })
  g.on('cluster:member-joined', (m: ClusterMember) => events.push(`joined ${m.id}`))
  g.on('cluster:member-left', (m: ClusterMember) => events.push(`left ${m.id}`))
  g.on('cluster:member-health', (m: ClusterMember) => events.push(`${m.id} ${m.healthy ? 'healthy' : 'unhealthy'}`))
  g.on('cluster:leader', (e) => events.push(`leader ${e.nodeId} ${e.epoch}`))
  return { g, id, events, coordinator, transport }
}

const open: GalleonFS[] = []
after(async () => { await Promise.allSettled(open.map(async (g) => await g.close())) })

describe('cluster membership (memory transport and coordinator)', () => {
  it('closing or leaving at once after joining leaves no leader behind, and a join racing close() is undone', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const watcher = await node(network, coordinators, 'watcher')
    open.push(watcher.g)
    for (let round = 0; round < 10; round++) {
      const n = await node(network, coordinators, `brief-${round}`)
      if (round % 2 === 0) await n.g.close()
      else await n.g.leaveCluster()
      await n.g.close()
    }
    await until('only the watcher is healthy and it leads', async () => {
      const status = await watcher.g.clusterStatus()
      return status.members.filter((m) => m.healthy).map((m) => m.id).join() === 'watcher' && status.leader === 'watcher'
    })
    // close() while joinCluster() is under way: the join is undone, nothing stays in the cluster.
    const g = await GalleonFS.open({ inMemory: true })
    const joining = g.joinCluster({ nodeId: 'racer', transport: new MemoryTransport({ network, nodeId: 'racer' }), coordinator: coordinators.coordinator() })
    const closing = g.close()
    await assert.rejects(joining, { code: 'NOT_OPEN' })
    await closing
    await until('the racer is not a healthy member', async () => !(await watcher.g.clusterStatus()).members.some((m) => m.id === 'racer' && m.healthy))
  })

  it('three nodes see each other, healthy, with one leader; they talk over the transport', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const a = await node(network, coordinators, 'node-a', { zone: 'zone-a', labels: { disk: 'ssd' } })
    const b = await node(network, coordinators, 'node-b', { zone: 'zone-b' })
    const c = await node(network, coordinators, 'node-c', { zone: 'zone-c' })
    open.push(a.g, b.g, c.g)
    await until('every node sees a leader', async () => (await Promise.all([a, b, c].map(async (n) => (await n.g.clusterStatus()).leader))).every((l) => l !== undefined))
    for (const n of [a, b, c]) {
      const status = await n.g.clusterStatus()
      assert.equal(status.clustering, true)
      assert.equal(status.nodeId, n.id)
      assert.deepEqual(status.members.map((m) => [m.id, m.healthy]), [['node-a', true], ['node-b', true], ['node-c', true]])
      assert.equal(status.members.filter((m) => m.leader).length, 1)
      assert.equal(status.members.find((m) => m.id === 'node-a')?.zone, 'zone-a')
      assert.deepEqual(status.members.find((m) => m.id === 'node-a')?.labels, { disk: 'ssd' })
    }
    const leaders = [a, b, c].filter((n) => n.g.cluster?.leadership !== undefined)
    assert.equal(leaders.length, 1, 'exactly one node holds the leadership')
    await until('node-a heard of the later joiners', () => a.events.includes('joined node-b') && a.events.includes('joined node-c'))
    // Each node's volumes, as it reports them.
    await b.g.createVolume({ name: 'b1', sizeBytes: '1M' })
    await b.g.createVolume({ name: 'b2', sizeBytes: '1M' })
    await c.g.createVolume({ name: 'c1', sizeBytes: '1M' })
    assert.deepEqual((await a.g.clusterStatus()).members.map((m) => [m.id, m.volumes]), [['node-a', 0], ['node-b', 2], ['node-c', 1]])
    const pong = await a.g.cluster?.request('node-c', { kind: 'ping', header: {} })
    assert.equal(pong?.header.nodeId, 'node-c')
    await assert.rejects(a.g.cluster?.request('node-z', { kind: 'ping', header: {} }) as Promise<unknown>, { code: 'BACKEND_UNAVAILABLE', message: /node-z is not a member/ })
    await assert.rejects(a.g.cluster?.request('node-b', { kind: 'no-such-kind', header: {} }) as Promise<unknown>, { code: 'NOT_IMPLEMENTED', message: /does not serve no-such-kind/ })
    // A request that reaches the wrong node (the sender's address for its target is stale) is refused unserved.
    const addressOfB = (await a.g.clusterStatus()).members.find((m) => m.id === 'node-b')?.address as string
    const stranger = network.transport('node-x')
    try {
      await assert.rejects(stranger.request(addressOfB, { kind: 'ping', header: { toNode: 'node-c' } }), { code: 'BACKEND_UNAVAILABLE', message: /for node node-c to node node-b: its address for node-c is stale/ })
      assert.equal((await stranger.request(addressOfB, { kind: 'ping', header: { toNode: 'node-b' } })).header.nodeId, 'node-b')
    } finally {
      await stranger.close()
    }
  })

  it('a node that dies (its lease expires) turns unhealthy, and the leadership moves to a live node with a greater epoch', async () => {
    const clock = new ManualClock(Date.now())
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster({ clock })
    const nodes = [await node(network, coordinators, 'n1'), await node(network, coordinators, 'n2'), await node(network, coordinators, 'n3')]
    open.push(...nodes.map((n) => n.g))
    await until('a leader is elected', async () => (await nodes[0]?.g.clusterStatus())?.leader !== undefined)
    const first = await (nodes[0] as Node).g.clusterStatus()
    const leader = nodes.find((n) => n.id === first.leader) as Node
    const others = nodes.filter((n) => n !== leader)
    // The leader's process dies: no leave, no more keepalives, no answers.
    await leader.coordinator.crash()
    network.kill(leader.id)
    for (let i = 0; i < 10; i++) clock.advance(1000)
    const survivor = others[0] as Node
    await until('the dead node is unhealthy and another leads', async () => {
      const status = await survivor.g.clusterStatus()
      return status.members.find((m) => m.id === leader.id)?.healthy !== true && status.leader !== undefined && status.leader !== leader.id
    })
    const second = await survivor.g.clusterStatus()
    assert.ok((second.leaderEpoch as number) > (first.leaderEpoch as number), `epoch ${second.leaderEpoch} after ${first.leaderEpoch}`)
    assert.equal(second.members.find((m) => m.id === leader.id)?.volumes, undefined, 'a dead node reports no volume count')
    assert.ok(others.some((n) => n.events.some((e) => e.startsWith(`leader ${second.leader as string}`))))
    await until('the others heard of it', () => others.every((n) => n.events.includes(`${leader.id} unhealthy`) || n.events.includes(`left ${leader.id}`)))
  })

  it('a node whose lease was lost (a partition longer than its TTL) joins again and campaigns again', async () => {
    const clock = new ManualClock(Date.now())
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster({ clock })
    const a = await node(network, coordinators, 'lonely')
    open.push(a.g)
    await until('it leads', () => a.g.cluster?.leadership !== undefined)
    const first = a.g.cluster?.leadership?.epoch as number
    // Its leases end on the coordinator; the next keepalive (a third of the 3 s TTL) finds out.
    a.coordinator.expireLeases()
    clock.advance(1000)
    await until('it leads again, with a new epoch', () => (a.g.cluster?.leadership?.epoch ?? 0) > first)
    const status = await a.g.clusterStatus()
    assert.equal(status.leader, 'lonely')
    assert.deepEqual(status.members.map((m) => [m.id, m.healthy]), [['lonely', true]])
  })

  it('leaving: refused while this node holds the only copy of a volume, unless forced; the others see it go', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const a = await node(network, coordinators, 'a')
    const b = await node(network, coordinators, 'b')
    open.push(a.g, b.g)
    await b.g.createVolume({ name: 'only-here', sizeBytes: '1M' })
    await assert.rejects(b.g.leaveCluster(), { code: 'BUSY', message: /only copy of only-here/ })
    await b.g.leaveCluster({ force: true })
    await until('a saw b leave', () => a.events.includes('left b'))
    assert.deepEqual((await a.g.clusterStatus()).members.map((m) => m.id), ['a'])
    assert.equal((await b.g.clusterStatus()).clustering, false, 'a single node again')
    // Its volumes are still there, out of the cluster; it can join again.
    assert.deepEqual((await b.g.listVolumes()).map((v) => v.name), ['only-here'])
    const rejoined = await b.g.joinCluster({ nodeId: 'b', transport: new MemoryTransport({ network, nodeId: 'b' }), coordinator: coordinators.coordinator() })
    assert.deepEqual(rejoined.members.map((m) => m.id), ['a', 'b'])
    await assert.rejects(b.g.joinCluster({ nodeId: 'b2', transport: new MemoryTransport({ network, nodeId: 'b2' }), coordinator: coordinators.coordinator() }), { code: 'BUSY', message: /in a cluster already, as node b/ })
    await a.g.leaveCluster()
  })

  it('checks its options, refuses a node id that is alive elsewhere, and reports a single node without a cluster', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const bad = async (cluster: unknown): Promise<unknown> => await GalleonFS.open({ inMemory: true, cluster: cluster as never })
    await assert.rejects(bad({ nodeId: 'bad id', transport: new MemoryTransport({ network, nodeId: 'x' }), coordinator: coordinators.coordinator() }), { code: 'INVALID_ARGUMENT', message: /nodeId/ })
    await assert.rejects(bad({ nodeId: 'x', transport: {}, coordinator: coordinators.coordinator() }), { code: 'INVALID_ARGUMENT', message: /transport must be a Transport/ })
    await assert.rejects(bad({ nodeId: 'x', transport: new MemoryTransport({ network, nodeId: 'y' }), coordinator: coordinators.coordinator() }), { code: 'INVALID_ARGUMENT', message: /belongs to node y/ })
    await assert.rejects(bad({ nodeId: 'x', transport: new MemoryTransport({ network, nodeId: 'x' }), coordinator: coordinators.coordinator(), leaseTtlMs: 10 }), { code: 'INVALID_ARGUMENT', message: /leaseTtlMs/ })
    const otherNetwork = new MemoryNetwork()
    const shared = new MemoryCoordinatorCluster()
    const one = await node(otherNetwork, shared, 'dup')
    open.push(one.g)
    // The same id at another address while the first is alive (the same address is the node restarting).
    await assert.rejects(GalleonFS.open({ inMemory: true, cluster: { nodeId: 'dup', transport: new MemoryTransport({ network: new MemoryNetwork(), nodeId: 'dup' }), coordinator: shared.coordinator(), advertiseAddress: 'elsewhere', leaseTtlMs: 1000 } }), { code: 'BUSY', message: /node id dup is in use by another running instance \(at dup\)/ })
    // Two instances claiming one id at the same moment: exactly one gets it.
    const race = await Promise.allSettled(['x1', 'x2'].map(async (address) => await GalleonFS.open({ inMemory: true, cluster: { nodeId: 'same', transport: new MemoryTransport({ network: new MemoryNetwork(), nodeId: 'same' }), coordinator: shared.coordinator(), advertiseAddress: address, leaseTtlMs: 1000 } })))
    assert.equal(race.filter((r) => r.status === 'fulfilled').length, 1, 'one of two instances with the same id')
    for (const r of race) if (r.status === 'fulfilled') open.push(r.value)
    const single = await GalleonFS.open({ inMemory: true })
    try {
      const status = await single.clusterStatus()
      assert.equal(status.clustering, false)
      assert.deepEqual(status.members.map((m) => [m.id, m.healthy, m.leader]), [['local', true, true]])
      await assert.rejects(single.leaveCluster(), { code: 'INVALID_ARGUMENT', message: /not in a cluster/ })
    } finally {
      await single.close()
    }
  })
})

describe('cluster membership on a real etcd', { skip: etcdSkipReason() }, () => {
  let etcd: EtcdServer
  before(async () => { etcd = await startEtcd() })
  after(async () => { await etcd?.stop() })

  it('joining then closing or leaving at once, again and again, leaves no leader or healthy member behind', async () => {
    const network = new MemoryNetwork()
    const prefix = `/galleonfs-brief-${process.pid}/`
    const connect = async (): Promise<EtcdCoordinator> => await EtcdCoordinator.connect({ endpoints: [etcd.endpoint], prefix, ttlMs: 2000 })
    for (let round = 0; round < 6; round++) {
      const nodeId = `brief-${round}`
      const g = await GalleonFS.open({ inMemory: true, cluster: { nodeId, transport: new MemoryTransport({ network, nodeId }), coordinator: await connect(), leaseTtlMs: 2000 } })
      if (round % 2 === 0) await g.leaveCluster()
      await g.close()
    }
    const observer = await connect()
    try {
      await until('no member of the brief nodes is healthy and nobody leads', async () => {
        const members = await observer.members()
        return members.every((m) => !m.healthy) && (await observer.leader('cluster')) === undefined
      }, 20_000)
    } finally {
      await observer.close()
    }
  })
})
