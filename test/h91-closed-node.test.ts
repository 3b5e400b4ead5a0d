// h91: a node that closed cleanly (GalleonFS.close()) stays listed healthy until its lease lapses
// (10 s by default; 30 s here, so that it cannot lapse during a test), as after a crash. Before, in
// that time a plain deleteVolume of a volume with a copy there was refused (BUSY: "node n3 did not
// answer whether anything holds it there"), a move of a copy to it waited for the lease to lapse,
// and a leave that placed its copy there waited for a fill that never came (30 minutes). Now the
// node marks itself closed in the coordinator as it closes (after its mounts, files and NBD clients):
// the deletion goes on at once, the move and the leave leave it out. A node started again is a new
// membership the mark does not apply to: cut off, it holds a deletion off as before.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { MemoryCoordinatorCluster, MemoryNetwork, type CoordinatorClock } from '../backends/memory/index.js'
import { BS, allInSync, closeAll, diskCluster, type DiskNode } from './support/disk-cluster.js'
import { until, within } from './support/wait.js'

const LEASE_MS = 30_000
const kit = diskCluster('galleon-h91-', { leaseTtlMs: LEASE_MS })

/**
 * The real clock, but its timers do not keep the process up: the leases of the closed nodes (and
 * their records', twice as long) would hold it a minute after the tests.
 */
const unrefClock: CoordinatorClock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms).unref(),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout)
}

/** Three nodes n1..n3 on one memory network and coordinator, each seeing the others. */
async function cluster3 (): Promise<{ network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, nodes: DiskNode[] }> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster({ clock: unrefClock })
  const nodes: DiskNode[] = []
  for (const id of ['n1', 'n2', 'n3']) nodes.push(await kit.startNode(network, coordinators, id))
  await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 3))
  return { network, coordinators, nodes }
}

/** The error a call rejects with, as `CODE: message`, or 'resolved'. */
async function outcome (call: Promise<unknown>): Promise<string> {
  return await call.then(() => 'resolved', (err: Error & { code?: string }) => `${err.code ?? ''}: ${err.message}`)
}

/** Whether `observer` still lists node `id` as healthy (its lease running). */
function listedHealthy (observer: DiskNode, id: string): boolean {
  return observer.g.cluster?.members.find((m) => m.id === id)?.healthy === true
}

/** Creates volume `name` with `copies` copies on n1, in sync; returns the nodes holding them. */
async function volumeOn (n1: DiskNode, name: string, copies: number): Promise<string[]> {
  await n1.g.createVolume({ name, sizeBytes: 16 * BS, replicas: copies })
  await until('every copy is in sync', async () => await allInSync(n1.g, name, copies), 20_000)
  return [...(await n1.g.replicationStatus(name)).nodes].sort()
}

describe('h91: a node that closed cleanly is not waited for', { timeout: 180_000 }, () => {
  it('a plain deleteVolume right after a copy\'s node closed goes through at once; started again and cut off, that node holds a deletion off again', async () => {
    const { network, coordinators, nodes } = await cluster3()
    const [n1, n2, n3] = nodes as [DiskNode, DiskNode, DiskNode]
    try {
      await volumeOn(n1, 'v', 3)
      await n3.g.close()
      assert.equal(listedHealthy(n1, 'n3'), true, 'n3 is listed healthy (its lease runs on)')
      assert.equal(await outcome(n1.g.deleteVolume('v')), 'resolved')
      assert.equal(listedHealthy(n1, 'n3'), true, 'n3 was not waited for: its lease still runs')
      await until('n2 deleted its copy', async () => (await n2.g.listVolumes()).length === 0)

      // Started again (a new membership): its copy of v goes (the deletion mark), and the mark of
      // its close no longer applies.
      const back = await kit.startNode(network, coordinators, 'n3', n3.dir)
      nodes[2] = back
      await until('n1 sees the new n3', () => n1.g.cluster?.members.find((m) => m.id === 'n3')?.joinedAt !== undefined && listedHealthy(n1, 'n3'))
      await until('n3 dropped its copy of v', async () => (await back.g.listVolumes()).length === 0, 20_000)
      await volumeOn(n1, 'w', 3)
      network.partition(['n3'], ['n1', 'n2'])
      const refused = await outcome(n1.g.deleteVolume('w'))
      assert.match(refused, /^BUSY: volume w may be in use on another node of the cluster: node n3 did not answer whether anything holds it there/)
      network.heal()
      assert.equal(await outcome(n1.g.deleteVolume('w')), 'resolved')
    } finally {
      await closeAll(nodes)
    }
  })

  it('migrateVolume({ node }) to a node that just closed is refused at once (INVALID_ARGUMENT naming it); the volume stays', async () => {
    const { nodes } = await cluster3()
    const [n1] = nodes as [DiskNode]
    try {
      const holders = await volumeOn(n1, 'm', 2)
      const free = nodes.find((n) => !holders.includes(n.id)) as DiskNode
      await free.g.close()
      const moved = await within('the move ends', outcome(n1.g.migrateVolume('m', { node: free.id })), 100_000)
      assert.equal(moved, `INVALID_ARGUMENT: node ${free.id} was closed (its instance stopped cleanly; the cluster lists it until its lease lapses) and can take no copy; start it again, or move the volume to another node (clusterStatus() lists them)`)
      assert.equal(listedHealthy(n1, free.id), true, `${free.id} is still listed healthy: its lease was not waited for`)
      assert.deepEqual([...(await n1.g.replicationStatus('m')).nodes].sort(), holders)
    } finally {
      await closeAll(nodes)
    }
  })

  it('leaveCluster does not place its copy on a node that just closed: with no other node it is refused at once (BUSY), still a member', async () => {
    const { nodes } = await cluster3()
    const [n1] = nodes as [DiskNode]
    try {
      const holders = await volumeOn(n1, 'l', 2)
      const free = nodes.find((n) => !holders.includes(n.id)) as DiskNode
      await free.g.close()
      // Before: n1 placed a copy on the closed node and waited for it to fill (up to 30 minutes).
      const left = await within('the leave ends', outcome(n1.g.leaveCluster()), 100_000)
      const stay = holders.find((id) => id !== 'n1') as string
      assert.equal(left, `BUSY: volume l would lose its in-sync copy on n1: no other healthy node can take a copy (copies on ${['n1', stay].join(', ')}); add a node first, or leave with force`)
      assert.equal(listedHealthy(n1, free.id), true, `${free.id} is still listed healthy: its lease was not waited for`)
      assert.equal(n1.g.cluster?.nodeId, 'n1', 'n1 is still in the cluster')
    } finally {
      await closeAll(nodes)
    }
  })
})
