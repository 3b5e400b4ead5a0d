// h92: a clean close (GalleonFS.close(), a daemon stopped for a rolling restart) hands each primary
// role the node holds to an in-sync copy first. Before, the volume stayed without a primary until
// the closed node's lease lapsed and the leader failed it over: writes on the other nodes waited
// (and failed once their failover wait was out), and forwarded I/O that reached the closing primary
// failed with NOT_OPEN. Also: createVolume, a class change adding copies and the leader's placement
// of missing copies no longer put a copy on a node that just closed (listed healthy until its lease
// lapses), and a leave whose new copy's node crashes stops at once instead of at its 30-minute
// hand-off deadline. In-process nodes on their own disks, a memory network and coordinator; leases
// long enough (60 s) that none lapses during a test, so nothing here is a failover.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport, type CoordinatorClock, type MemoryCoordinator } from '../backends/memory/index.js'
import { BS, block, closeAll, diskCluster, type DiskNode } from './support/disk-cluster.js'
import { until, within } from './support/wait.js'

const LEASE_MS = 60_000
/** A forwarded call gives up after this (the product's own wait), well before the lease lapses. */
const FAILOVER_WAIT_MS = 20_000
const kit = diskCluster('galleon-h92-', { leaseTtlMs: LEASE_MS, failoverWaitMs: FAILOVER_WAIT_MS })

/** The real clock, with timers that do not keep the process up (the closed nodes' leases run a minute). */
const unrefClock: CoordinatorClock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms).unref(),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout)
}

/** Nodes `ids` on one memory network and coordinator, each seeing the others. */
async function clusterOf (ids: string[]): Promise<{ network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, nodes: DiskNode[] }> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster({ clock: unrefClock })
  const nodes: DiskNode[] = []
  for (const id of ids) nodes.push(await kit.startNode(network, coordinators, id))
  await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === ids.length))
  return { network, coordinators, nodes }
}

/** The error a call rejects with, as `CODE: message`, or 'resolved'. */
async function outcome (call: Promise<unknown>): Promise<string> {
  return await call.then(() => 'resolved', (err: Error & { code?: string }) => `${err.code ?? ''}: ${err.message}`)
}

function listedHealthy (observer: DiskNode, id: string): boolean {
  return observer.g.cluster?.members.find((m) => m.id === id)?.healthy === true
}

describe('h92: a clean close hands the node\'s primary roles over', { timeout: 240_000 }, () => {
  it('3 nodes, n1 primary: closing n1 names an in-sync copy primary at once (n1 still listed healthy), writes on n2 under way and after resolve, every acknowledged write is there, and n1 comes back as a copy and resyncs', async () => {
    const { network, coordinators, nodes } = await clusterOf(['n1', 'n2', 'n3'])
    const [n1, n2, n3] = nodes as [DiskNode, DiskNode, DiskNode]
    try {
      await n1.g.createVolume({ name: 'v', sizeBytes: 64 * BS, replicas: 3 })
      await until('3 copies in sync', async () => (await n1.g.replicationStatus('v')).inSync.length === 3, 20_000)
      // Weak writes on the primary just before it closes: the hand-over waits until the new primary has them too.
      for (let i = 0; i < 8; i++) await n1.g.writeBlock('v', i, block(i), WriteConcern.WriteAcknowledged)
      // A writer on n2 while n1 closes: each write goes to the primary (n1, then the next one).
      const acknowledged = new Map<number, number>()
      const failures: string[] = []
      let writing = true
      const writer = (async () => {
        for (let i = 0; writing; i++) {
          const index = 8 + (i % 40)
          const result = await outcome(n2.g.writeBlock('v', index, block(1000 + i), WriteConcern.WriteReplicated))
          if (result === 'resolved') acknowledged.set(index, 1000 + i)
          else failures.push(result)
        }
      })()
      await until('n2 has written a little', () => acknowledged.size >= 3)
      await n1.g.close()
      const status = await n2.g.replicationStatus('v')
      assert.ok(status.primary === 'n2' || status.primary === 'n3', `an in-sync copy is primary as soon as n1 has closed: ${JSON.stringify(status)}`)
      assert.equal(listedHealthy(n2, 'n1'), true, 'n1\'s lease still runs: this was no failover')
      const after = await outcome(n2.g.writeBlock('v', 60, block(60), WriteConcern.WriteReplicated))
      assert.equal(after, 'resolved', 'a write on n2 after the close')
      writing = false
      await writer
      assert.deepEqual(failures, [], 'no write on n2 failed while n1 closed')
      for (let i = 0; i < 8; i++) assert.deepEqual(await n3.g.readBlock('v', i), block(i), `n1's weak write ${i} survived the hand-over`)
      for (const [index, seed] of acknowledged) assert.deepEqual(await n3.g.readBlock('v', index), block(seed), `n2's write to block ${index}`)
      assert.deepEqual(await n3.g.readBlock('v', 60), block(60))
      assert.equal(listedHealthy(n2, 'n1'), true, 'all of it before n1\'s lease lapsed')

      // n1 starts again: a copy now, brought in line by a resync, then in sync.
      const back = await kit.startNode(network, coordinators, 'n1', n1.dir)
      nodes[0] = back
      await until('n1 is in sync again', async () => (await back.g.replicationStatus('v')).inSync.includes('n1'), 30_000)
      const again = await back.g.replicationStatus('v')
      assert.equal(again.role, 'replica', `n1 came back as a copy: ${JSON.stringify(again)}`)
      const primary = again.primary === 'n2' ? n2 : n3
      assert.ok(primary.events.some((e) => e.startsWith('replication:resynced') && e.includes('"node":"n1"')), `the new primary resynced n1: ${primary.events.join('\n')}`)
      assert.deepEqual(await back.g.readBlock('v', 60), block(60))
    } finally {
      await closeAll(nodes)
    }
  })

  it('a volume with no other in-sync copy keeps n1 as its primary through the close, and is served again when n1 starts again', async () => {
    const { network, coordinators, nodes } = await clusterOf(['n1', 'n2'])
    const [n1] = nodes as [DiskNode]
    try {
      await n1.g.createVolume({ name: 'solo', sizeBytes: 16 * BS, replicas: 2 })
      await until('2 copies in sync', async () => (await n1.g.replicationStatus('solo')).inSync.length === 2, 20_000)
      network.drop((m) => m.to === 'n2', { silent: true })
      await n1.g.writeBlock('solo', 0, block(7), WriteConcern.WriteDurable)
      await until('n2 is out of sync', async () => (await n1.g.replicationStatus('solo')).inSync.length === 1, 30_000)
      await n1.g.close()
      network.heal()
      assert.equal((await nodes[1]!.g.replicationStatus('solo')).primary, 'n1', 'no copy had every write: n1 stays the primary')
      const back = await kit.startNode(network, coordinators, 'n1', n1.dir)
      nodes[0] = back
      await until('n1 is the primary again', async () => (await back.g.replicationStatus('solo')).role === 'primary', 30_000)
      assert.deepEqual(await back.g.readBlock('solo', 0), block(7))
    } finally {
      await closeAll(nodes)
    }
  })

  it('close({ handOver: false }) keeps the roles: n1 stays the recorded primary and leads again when it starts; bad options are refused', async () => {
    const { network, coordinators, nodes } = await clusterOf(['n1', 'n2', 'n3'])
    const [n1, n2] = nodes as [DiskNode, DiskNode, DiskNode]
    try {
      await n1.g.createVolume({ name: 'kept', sizeBytes: 16 * BS, replicas: 3 })
      await until('3 copies in sync', async () => (await n1.g.replicationStatus('kept')).inSync.length === 3, 20_000)
      await n1.g.writeBlock('kept', 0, block(1), WriteConcern.WriteReplicated)
      for (const bad of [null, 'no', [], { handOver: 'yes' }, { handOver: 1 }] as unknown[]) {
        assert.match(await outcome(n1.g.close(bad as { handOver?: boolean })), /^INVALID_ARGUMENT: close\(\) /, `close(${JSON.stringify(bad)})`)
      }
      assert.equal((await n1.g.replicationStatus('kept')).role, 'primary', 'a refused close() closed nothing')
      await n1.g.close({ handOver: false })
      const status = await n2.g.replicationStatus('kept')
      assert.equal(status.primary, 'n1', 'the role stays with n1 (its lease runs a minute)')
      const back = await kit.startNode(network, coordinators, 'n1', n1.dir)
      nodes[0] = back
      await until('n1 leads again', async () => (await back.g.replicationStatus('kept')).role === 'primary', 20_000)
      assert.deepEqual(await back.g.readBlock('kept', 0), block(1))
    } finally {
      await closeAll(nodes)
    }
  })
})

describe('h92: no copy is placed on a node that just closed', { timeout: 240_000 }, () => {
  it('createVolume leaves it out (the volume starts degraded); the leader places the missing copy on a node that joins, not on it (though its zone is new)', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster({ clock: unrefClock })
    const start = async (id: string, zone: string): Promise<DiskNode> => {
      const g = kit.track(await GalleonFS.open({ storagePath: await kit.tempDir(`galleon-h92-${id}-`), cluster: { nodeId: id, zone, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: LEASE_MS } }))
      return { g, id, dir: '', events: [] }
    }
    const nodes = [await start('n1', 'a'), await start('n2', 'a'), await start('n3', 'b')]
    const [n1, n2, n3] = nodes as [DiskNode, DiskNode, DiskNode]
    try {
      await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 3))
      await n3.g.close()
      await n1.g.createVolume({ name: 'c', sizeBytes: 16 * BS, replicas: 3 })
      assert.deepEqual([...(await n1.g.replicationStatus('c')).nodes].sort(), ['n1', 'n2'], 'no copy on n3, which closed')
      // The spread strategy prefers n3's zone: before, the leader placed the third copy there.
      nodes.push(await start('n4', 'a'))
      await until('the leader placed the third copy', async () => (await n1.g.replicationStatus('c')).nodes.length === 3, 30_000)
      assert.deepEqual([...(await n1.g.replicationStatus('c')).nodes].sort(), ['n1', 'n2', 'n4'])
      assert.equal(listedHealthy(n2, 'n3'), true, 'n3 was still listed healthy')
    } finally {
      await closeAll(nodes)
    }
  })

  it('a class change to more copies leaves it out: the volume is degraded, and the change resolves', async () => {
    const { nodes } = await clusterOf(['n1', 'n2', 'n3'])
    const [n1, , n3] = nodes as [DiskNode, DiskNode, DiskNode]
    try {
      for (const node of nodes) await node.g.createStorageClass({ name: 'triple', parameters: { replication: '3' } })
      await n3.g.close()
      await n1.g.createVolume({ name: 'r', sizeBytes: 16 * BS, replicas: 2 })
      assert.deepEqual([...(await n1.g.replicationStatus('r')).nodes].sort(), ['n1', 'n2'])
      const changed = await within('the class change ends', outcome(n1.g.migrateVolume('r', { storageClass: 'triple' })), 120_000)
      assert.deepEqual([...(await n1.g.replicationStatus('r')).nodes].sort(), ['n1', 'n2'], `no copy on n3 (the change: ${changed})`)
      assert.equal(changed, 'resolved')
    } finally {
      await closeAll(nodes)
    }
  })
})

describe('h92: a leave whose new copy\'s node crashes', { timeout: 240_000 }, () => {
  it('stops once that node\'s lease lapses (BACKEND_UNAVAILABLE naming it), not at the 30-minute deadline; the node is still a member and keeps its copy, and leaves through another node later', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const handles = new Map<string, MemoryCoordinator>()
    const start = async (id: string): Promise<DiskNode> => {
      const coordinator = coordinators.coordinator()
      handles.set(id, coordinator)
      // A short lease: the crashed node's lapses soon.
      const g = kit.track(await GalleonFS.open({ storagePath: await kit.tempDir(`galleon-h92-${id}-`), cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator, leaseTtlMs: 1000 } }))
      return { g, id, dir: '', events: [] }
    }
    const nodes = [await start('n1'), await start('n2'), await start('n3')]
    const [n1] = nodes as [DiskNode]
    try {
      await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 3))
      await n1.g.createVolume({ name: 'l', sizeBytes: 16 * BS, replicas: 2 })
      await until('2 copies in sync', async () => (await n1.g.replicationStatus('l')).inSync.length === 2, 20_000)
      await n1.g.writeBlock('l', 0, block(5), WriteConcern.WriteReplicated)
      const holders = [...(await n1.g.replicationStatus('l')).nodes]
      const free = nodes.find((n) => !holders.includes(n.id)) as DiskNode
      // Nothing reaches the free node: its new copy never fills; then its process dies.
      network.drop((m) => m.to === free.id, { silent: true })
      const leaving = outcome(n1.g.leaveCluster())
      await until('the leave placed a copy on the free node', async () => (await n1.g.replicationStatus('l')).nodes.includes(free.id), 20_000)
      await handles.get(free.id)!.crash()
      const left = await within('the leave ends', leaving, 100_000)
      assert.match(left, new RegExp(`^BACKEND_UNAVAILABLE: leaving: the new copy of volume l on ${free.id} was given up: node ${free.id} (stopped renewing its lease|left the cluster)`))
      assert.equal(n1.g.cluster?.nodeId, 'n1', 'n1 is still a member')
      const status = await n1.g.replicationStatus('l')
      assert.deepEqual([...status.nodes].sort(), holders.sort(), `the copy on ${free.id} was given up: ${JSON.stringify(status)}`)
      assert.deepEqual(await n1.g.readBlock('l', 0), block(5))
    } finally {
      network.heal()
      await closeAll(nodes)
    }
  })
})
