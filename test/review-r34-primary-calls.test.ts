// Review r34 of h74 (control calls made on the primary go on at the next primary when this node
// loses the role under them). A call that was refused here for a reason of its own (BUSY: a
// writable file open on the volume on this node) is the answer, also when the role moved while
// the call waited for its turn: sent on, the next primary (which does not see this node's writer)
// reverted the volume under that open file and the caller was told it succeeded.
// The moment is hit deterministically: the primary's coordinator write of an expansion is held, so
// that the revert queues behind it while the cluster names another primary (as in h74's test).
// In-process nodes on their own disks with a memory network and coordinator.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WriteConcern } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork } from '../backends/memory/index.js'
import { observed } from './support/observed.js'
import { until } from './support/wait.js'
import { namePrimary } from './support/replica-records.js'
import { BS, allInSync, block, diskCluster, type DiskNode } from './support/disk-cluster.js'

const kit = diskCluster('galleon-r34-')

interface Cluster {
  coordinators: MemoryCoordinatorCluster
  nodes: [DiskNode, DiskNode, DiskNode]
  volumeId: string
  /** Holds n1's next coordinator write whose value contains `marker` until `release`. */
  hold: (marker: string) => { held: () => boolean, release: () => void }
}

/** Three nodes, volume `v` (3 copies) on n1, block 0 written, every copy in sync. */
async function cluster (): Promise<Cluster> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  let marker: string | undefined
  let held = false
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  const make = coordinators.coordinator.bind(coordinators)
  let first = true
  coordinators.coordinator = ((options?: Parameters<typeof make>[0]) => {
    const handle = make(options)
    if (first) {
      first = false
      const put = handle.put.bind(handle)
      handle.put = async (key, value, putOptions) => {
        if (marker !== undefined && value.includes(marker)) {
          marker = undefined
          held = true
          await gate
        }
        return await put(key, value, putOptions)
      }
    }
    return handle
  }) as typeof coordinators.coordinator
  const nodes: DiskNode[] = []
  for (const id of ['n1', 'n2', 'n3']) nodes.push(await kit.startNode(network, coordinators, id))
  await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 3))
  for (const node of nodes) await node.g.createStorageClass({ name: 'rep', parameters: { replication: '3' } })
  const n1 = nodes[0] as DiskNode
  const volume = await n1.g.createVolume({ name: 'v', sizeBytes: 16 * BS, storageClass: 'rep' })
  await n1.g.writeBlock('v', 0, block(1), WriteConcern.WriteReplicated)
  await until('every copy is in sync', async () => await allInSync(n1.g, 'v', 3), 20_000)
  return {
    coordinators,
    nodes: nodes as [DiskNode, DiskNode, DiskNode],
    volumeId: volume.id,
    hold: (m) => { marker = m; return { held: () => held, release: () => { release() } } }
  }
}

/** The cluster names n2 the primary (as its leader does when n1's lease ended), and both nodes take that up. */
async function failOver (c: Cluster): Promise<void> {
  const [n1, n2] = c.nodes
  await namePrimary(c.coordinators, c.volumeId, 'n2')
  await until('n2 took the role up', async () => (await n2.g.replicationStatus('v')).role === 'primary', 20_000)
  await until('n1 stepped down', async () => (await n1.g.replicationStatus('v')).role !== 'primary', 20_000)
}

describe('review r34: a call refused on the primary for a reason of its own, the role moving while it waited', () => {
  it('restoreSnapshot refused BUSY (a writable file open on the volume here) is the answer: not sent on, nothing reverted', { timeout: 60_000 }, async () => {
    const c = await cluster()
    const [n1, n2] = c.nodes
    await n1.g.writeBlock('v', 1, block(30), WriteConcern.WriteReplicated)
    await n1.g.createSnapshot('v', 's1')
    await n1.g.writeBlock('v', 1, block(31), WriteConcern.WriteReplicated)
    await until('n2 has the snapshot', async () => (await n2.g.listSnapshots('v')).length === 1, 20_000)
    let reverts = 0
    n2.g.on('snapshot:restored', () => { reverts++ })
    // An expansion holds n1's admin queue while its write of the cluster's record is held.
    const hold = c.hold(`"sizeBytes":${20 * BS}`)
    const first = observed(n1.g.expandVolume('v', 20 * BS))
    let file: Awaited<ReturnType<typeof n1.g.mounts.openVolumeFile>> | undefined
    try {
      await until('the expansion\'s record write is held', () => hold.held(), 20_000)
      // Made while n1 is the primary: it waits for its turn behind the expansion.
      const restore = observed(n1.g.restoreSnapshot('v', 's1'))
      // Meanwhile an application opens the volume for writing on n1, and the role moves.
      file = await n1.g.mounts.openVolumeFile('v')
      await failOver(c)
      hold.release()
      await first.catch(() => {})
      const err = await restore.then((value) => assert.fail(`resolved: ${JSON.stringify(value)}`), (e: { code?: string, message: string }) => e)
      assert.equal(err.code, 'BUSY', err.message)
      assert.match(err.message, /writer/)
    } finally {
      hold.release()
      await file?.close().catch(() => {})
    }
    assert.equal(reverts, 0, 'the refused call did not go on at the next primary')
    assert.deepEqual(await n2.g.readBlock('v', 1), block(31), 'nothing was reverted under the writer')
  })
})
