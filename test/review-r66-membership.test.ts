// Review r66: cluster membership (leave, placement, health, events) probed for what a storage
// engineer relies on.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS, placeVolume, type ClusterMember } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { GalleonError } from '../src/errors.js'
import type { Coordinator } from '../src/drivers.js'
import { until } from './support/wait.js'

const opened: GalleonFS[] = []
after(async () => { await Promise.allSettled(opened.map(async (g) => await g.close())) })

async function start (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, nodeId: string, zone = 'default'): Promise<GalleonFS> {
  const g = await GalleonFS.open({ inMemory: true, cluster: { nodeId, zone, transport: new MemoryTransport({ network, nodeId }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 } })
  opened.push(g)
  return g
}

async function threeNodes (): Promise<GalleonFS[]> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const nodes = [await start(network, coordinators, 'n1'), await start(network, coordinators, 'n2'), await start(network, coordinators, 'n3')]
  await until('every node sees every other', () => nodes.every((g) => g.cluster?.members.filter((m) => m.healthy).length === 3))
  return nodes
}

describe('review r66: leaving', () => {
  it('a leave refused for a 1-copy volume hands nothing off first: the replicated volume keeps its primary and copy on the node', async () => {
    const [n1] = await threeNodes() as [GalleonFS, GalleonFS, GalleonFS]
    await n1.createVolume({ name: 'shared', sizeBytes: '256K', replicas: 2 })
    await n1.createVolume({ name: 'local', sizeBytes: '256K' })
    const before = await n1.replicationStatus('shared')
    await assert.rejects(n1.leaveCluster(), { code: 'BUSY', message: /only copy of local/ })
    const afterRefusal = await n1.replicationStatus('shared')
    assert.deepEqual({ primary: afterRefusal.primary, nodes: [...afterRefusal.nodes].sort() }, { primary: before.primary, nodes: [...before.nodes].sort() })
    assert.deepEqual((await n1.listVolumes()).map((v) => v.name).sort(), ['local', 'shared'])
  })
})

describe('review r66: spread placement', () => {
  it('spread sends the copies of new volumes to the nodes holding the fewest, not all to one node', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const nodes: GalleonFS[] = []
    for (const id of ['n1', 'n2', 'n3', 'n4']) nodes.push(await start(network, coordinators, id))
    await until('every node sees every other', () => nodes.every((g) => g.cluster?.members.filter((m) => m.healthy).length === 4))
    const n1 = nodes[0] as GalleonFS
    for (let i = 0; i < 6; i++) await n1.createVolume({ name: `v${i}`, sizeBytes: '64K', replicas: 2 })
    const copies: Record<string, number> = {}
    for (let i = 0; i < 6; i++) for (const node of (await n1.replicationStatus(`v${i}`)).nodes) copies[node] = (copies[node] ?? 0) + 1
    assert.deepEqual(copies, { n1: 6, n2: 2, n3: 2, n4: 2 })
  })
})

describe('review r66: placement inputs', () => {
  const member = (id: string, zone: string): ClusterMember => ({ id, address: id, zone, labels: {}, capacityBytes: 100, freeBytes: 100, healthy: true, joinedAt: new Date(0).toISOString() })
  it('bad members or request fields are refused with INVALID_ARGUMENT, never a TypeError or a silent odd placement', () => {
    const members = [member('a', 'z1'), member('b', 'z2')]
    for (const bad of [undefined, null, 'a', [null], [{}]]) {
      assert.throws(() => placeVolume(bad as never, { replicas: 1 }), { code: 'INVALID_ARGUMENT' }, `members ${JSON.stringify(bad)}`)
    }
    for (const bad of [{ current: 'ab' }, { load: { a: Number.NaN } }, { load: 'x' }, { preferredPrimary: 7 }, { affinity: ['ssd'] }]) {
      assert.throws(() => placeVolume(members, { replicas: 1, ...bad } as never), { code: 'INVALID_ARGUMENT' }, JSON.stringify(bad))
    }
    assert.deepEqual(placeVolume(members, { replicas: 1, load: { a: 2, b: 1 } }).nodes, ['b'])
  })
})

describe('review r66: joining', () => {
  it('a leaseTtlMs the coordinator cannot grant (not whole, over a day) is refused before anything is claimed', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const peek = coordinators.coordinator()
    const g = await GalleonFS.open({ inMemory: true })
    opened.push(g)
    try {
      for (const leaseTtlMs of [1000.5, 86_400_001, 1e12]) {
        await assert.rejects(g.joinCluster({ nodeId: 'n1', transport: new MemoryTransport({ network, nodeId: 'n1' }), coordinator: coordinators.coordinator(), leaseTtlMs }), { code: 'INVALID_ARGUMENT', message: /leaseTtlMs/ }, String(leaseTtlMs))
        assert.equal(await peek.get('node-claims/n1'), undefined, `no claim of n1 left by a join with leaseTtlMs ${leaseTtlMs}`)
      }
    } finally {
      await peek.close()
    }
  })

  it('a join that fails after claiming its node id gives the id back, so the next join need not wait for the claim to age', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const peek = coordinators.coordinator()
    const g = await GalleonFS.open({ inMemory: true })
    opened.push(g)
    try {
      // A coordinator whose join (the member record, after the claim) fails once, as an etcd outage would.
      const real = coordinators.coordinator()
      const failing = new Proxy(real, {
        get (target, key) {
          if (key === 'join') return async () => { throw new GalleonError('BACKEND_UNAVAILABLE', 'the coordinator did not answer') }
          const value = Reflect.get(target, key, target) as unknown
          return typeof value === 'function' ? value.bind(target) : value
        }
      }) as Coordinator
      await assert.rejects(g.joinCluster({ nodeId: 'n1', transport: new MemoryTransport({ network, nodeId: 'n1' }), coordinator: failing, leaseTtlMs: 60_000 }), { code: 'BACKEND_UNAVAILABLE' })
      assert.equal(await peek.get('node-claims/n1'), undefined, 'the failed join left its claim of n1')
    } finally {
      await peek.close()
    }
  })
})

describe('review r66: two nodes leaving at once', () => {
  it('two holders of a 3-copy volume leave together with one spare node: one leave completes, the other is refused, the volume keeps 3 copies', { timeout: 120_000 }, async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const nodes: GalleonFS[] = []
    for (const id of ['n1', 'n2', 'n3', 'n4']) nodes.push(await start(network, coordinators, id))
    await until('every node sees every other', () => nodes.every((g) => g.cluster?.members.filter((m) => m.healthy).length === 4))
    const [n1, n2, n3] = nodes as [GalleonFS, GalleonFS, GalleonFS]
    await n1.createVolume({ name: 'triple', sizeBytes: '256K', replicas: 3 })
    assert.deepEqual([...(await n1.replicationStatus('triple')).nodes].sort(), ['n1', 'n2', 'n3'])
    const results = await Promise.allSettled([n1.leaveCluster(), n2.leaveCluster()])
    const outcome = results.map((r) => r.status === 'fulfilled' ? 'left' : (r.reason as GalleonError).code).sort()
    for (const r of results) if (r.status === 'rejected') assert.match((r.reason as Error).message, /would lose its in-sync copy/)
    const status = await n3.replicationStatus('triple')
    assert.deepEqual({ outcome, copies: status.nodes.length }, { outcome: ['BUSY', 'left'], copies: 3 }, `copies on ${status.nodes.join(', ')}`)
    await until('all three copies in sync', async () => (await n3.replicationStatus('triple')).inSync.length === 3)
  })
})
