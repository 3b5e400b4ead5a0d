// README "Clustering", claim by claim where no other test checks it: what clusterStatus() lists
// (also with a node that does not answer), node ids given back by close() and freed after a crash,
// a dead node unhealthy at one lease and removed at two, and a leaving leader giving up the
// leadership. Nodes in one process on the memory transport and the memory coordinator.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, PROTOCOL_VERSION, type ClusterMember, type ClusterNode } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport, type MemoryCoordinator } from '../backends/memory/index.js'
import { until } from './support/wait.js'

const TTL = 1000

interface Node { g: GalleonFS, id: string, coordinator: MemoryCoordinator, events: string[] }

const opened: GalleonFS[] = []
const dirs: string[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

async function node (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, id: string, extra: { zone?: string, labels?: Record<string, string>, advertiseAddress?: string } = {}, storagePath?: string): Promise<Node> {
  const coordinator = coordinators.coordinator()
  const cluster = { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator, leaseTtlMs: TTL, ...extra }
  const g = await GalleonFS.open(storagePath === undefined ? { inMemory: true, cluster } : { storagePath, cluster })
  opened.push(g)
  const events: string[] = []
  g.on('cluster:member-joined', (m: ClusterMember) => events.push(`joined ${m.id}`))
  g.on('cluster:member-left', (m: ClusterMember) => events.push(`left ${m.id}`))
  g.on('cluster:member-health', (m: ClusterMember) => events.push(`${m.id} ${m.healthy ? 'healthy' : 'unhealthy'}`))
  g.on('cluster:leader', (e: { nodeId: string, epoch: number }) => events.push(`leader ${e.nodeId} ${e.epoch}`))
  return { g, id, coordinator, events }
}

describe('README Clustering: status, node ids, health and leaving', () => {
  it('clusterStatus lists address, zone, labels, capacity, health and volume count of each member and the leader with its epoch; a node that does not answer is listed without a count', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const a = await node(network, coordinators, 'a', { zone: 'zone-1', labels: { disk: 'ssd' } })
    // b keeps its data on disk: its capacity is that of the file system under its storage path.
    const dir = await mkdtemp(join(tmpdir(), 'h55-clustering-'))
    dirs.push(dir)
    const b = await node(network, coordinators, 'b', { zone: 'zone-2' }, dir)
    await b.g.createVolume({ name: 'on-b', sizeBytes: '1M' })
    await until('a leader with an epoch', async () => (await a.g.clusterStatus()).leader !== undefined)
    const status = await a.g.clusterStatus()
    assert.ok(typeof status.leaderEpoch === 'number' && status.leaderEpoch > 0, `leader epoch ${String(status.leaderEpoch)}`)
    assert.deepEqual(status.members.map((m) => [m.id, m.zone, m.healthy, m.volumes]), [['a', 'zone-1', true, 0], ['b', 'zone-2', true, 1]])
    assert.deepEqual(status.members[0]?.labels, { disk: 'ssd' })
    for (const m of status.members) {
      assert.ok(typeof m.address === 'string' && m.address.length > 0, `${m.id} has an address`)
      assert.ok(typeof m.capacityBytes === 'number' && typeof m.freeBytes === 'number' && m.freeBytes <= m.capacityBytes, `${m.id} capacity ${String(m.capacityBytes)}, free ${String(m.freeBytes)}`)
    }
    const onDisk = status.members[1] as ClusterMember
    assert.ok(onDisk.capacityBytes > 0 && onDisk.freeBytes > 0, `b capacity ${onDisk.capacityBytes}, free ${onDisk.freeBytes}`)
    // b's process hangs for the cluster (its requests get no answer, its lease still lives): the
    // status is still given, with b healthy and its volume count absent.
    network.drop((message) => message.to === 'b' && message.kind === 'node-info', { silent: true })
    const hung = await a.g.clusterStatus()
    network.drop(0)
    assert.deepEqual(hung.members.map((m) => [m.id, m.healthy, m.volumes]), [['a', true, 0], ['b', true, undefined]])
  })

  it('a clean close() gives the node id back at once; after a crash the id is taken again once the dead node\'s lease ended', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const a = await node(network, coordinators, 'a')
    const c = await node(network, coordinators, 'c')
    const probe = coordinators.coordinator()
    assert.notEqual(await probe.get('node-claims/c'), undefined, 'c claimed its id in the coordinator')
    await c.g.close()
    assert.equal(await probe.get('node-claims/c'), undefined, 'close() gave the id back')
    const elsewhere = new MemoryNetwork()
    const c2 = await node(elsewhere, coordinators, 'c', { advertiseAddress: 'c-second' })
    assert.equal((await c2.g.clusterStatus()).members.find((m) => m.id === 'c')?.address, 'c-second')
    // c2 dies (no close, no more keepalives): once its lease ends, another instance gets the id.
    await c2.coordinator.crash()
    elsewhere.kill('c')
    const c3 = await node(new MemoryNetwork(), coordinators, 'c', { advertiseAddress: 'c-third' })
    await until('a sees c at its third address, healthy', async () => (await a.g.clusterStatus()).members.some((m) => m.id === 'c' && m.address === 'c-third' && m.healthy))
    // While c3 lives, a fourth instance with its id is refused.
    await assert.rejects(node(new MemoryNetwork(), coordinators, 'c', { advertiseAddress: 'c-fourth' }), { code: 'BUSY' })
    await probe.close()
    void c3
  })

  it('a node that stops is reported unhealthy once its lease expires and removed after twice that, with member-health then member-left', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const a = await node(network, coordinators, 'a')
    const d = await node(network, coordinators, 'd')
    await until('a sees d healthy', () => a.g.cluster?.members.some((m) => m.id === 'd' && m.healthy) === true)
    await d.coordinator.crash()
    network.kill('d')
    await until('a saw d unhealthy', async () => a.events.includes('d unhealthy'), 10_000)
    const listed = await a.g.clusterStatus()
    const mid = listed.members.find((m) => m.id === 'd')
    // Still listed (unhealthy) between one lease and two, unless the second lease has already ended.
    if (!a.events.includes('left d')) assert.equal(mid?.healthy, false)
    await until('a saw d leave', async () => a.events.includes('left d'), 10_000)
    assert.ok(a.events.indexOf('d unhealthy') < a.events.indexOf('left d'), `events: ${a.events.join(', ')}`)
    assert.deepEqual((await a.g.clusterStatus()).members.map((m) => m.id), ['a'])
  })

  it('leaveCluster() on the leader removes its record and gives up the leadership: another node leads with a greater epoch', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const nodes = [await node(network, coordinators, 'x'), await node(network, coordinators, 'y'), await node(network, coordinators, 'z')]
    await until('a leader', async () => (await nodes[0]?.g.clusterStatus())?.leader !== undefined)
    const before = await (nodes[0] as Node).g.clusterStatus()
    const leader = nodes.find((n) => n.id === before.leader) as Node
    const others = nodes.filter((n) => n !== leader)
    await leader.g.leaveCluster()
    assert.equal(leader.g.cluster?.leadership, undefined)
    const watcher = others[0] as Node
    await until('another node leads', async () => {
      const s = await watcher.g.clusterStatus()
      return s.leader !== undefined && s.leader !== leader.id
    })
    const now = await watcher.g.clusterStatus()
    assert.ok((now.leaderEpoch as number) > (before.leaderEpoch as number), `epoch ${String(now.leaderEpoch)} after ${String(before.leaderEpoch)}`)
    assert.deepEqual(now.members.map((m) => m.id), others.map((n) => n.id))
    assert.ok(watcher.events.includes(`left ${leader.id}`))
    assert.equal(others.filter((n) => n.g.cluster?.leadership !== undefined).length, 1)
  })

  it('a member this node cannot talk to (another protocol version) is reported once and refused as the target of a move with IO_ERROR, before anything changes', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const dir = await mkdtemp(join(tmpdir(), 'h55-clustering-move-'))
    dirs.push(dir)
    const n1 = await node(network, coordinators, 'n1', {}, dir)
    const errors: string[] = []
    n1.g.on('cluster:error', (event: { message: string }) => { errors.push(event.message) })
    const future = coordinators.coordinator()
    const version = PROTOCOL_VERSION + 5
    const member: ClusterNode = { id: 'future', address: 'memory://future', zone: 'default', labels: {}, capacityBytes: 1 << 30, freeBytes: 1 << 30, protocol: { version, oldest: version } }
    try {
      await future.join(member, { ttlMs: 5000 })
      await until('n1 reports the member it cannot talk to', () => errors.some((m) => /future/.test(m)))
      await n1.g.createVolume({ name: 'stay', sizeBytes: '256K' })
      await n1.g.writeBlock('stay', 0, new Uint8Array(4096).fill(3))
      await assert.rejects(n1.g.migrateVolume('stay', { node: 'future' }), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'IO_ERROR', `IO_ERROR expected, got ${err.code ?? ''}: ${err.message}`)
        return true
      })
      const status = await n1.g.replicationStatus('stay')
      assert.deepEqual([...status.nodes], ['n1'])
      assert.equal(status.epoch, undefined, 'still a local volume, with no cluster record')
      assert.deepEqual(await n1.g.readBlock('stay', 0), new Uint8Array(4096).fill(3))
      // Reported once, however often the node meets the member again (status, placement, a refused move).
      await n1.g.clusterStatus()
      await n1.g.createVolume({ name: 'pair', sizeBytes: '256K', replicas: 2 })
      assert.equal(errors.filter((m) => /future/.test(m)).length, 1, `reports: ${errors.join(' | ')}`)
    } finally {
      await future.leave()
      await future.close()
    }
  })
})
