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
import { observed } from './support/observed.js'
import { until } from './support/wait.js'
import { failOver, primaryCluster } from './support/control-call-cluster.js'
import { BS, block, diskCluster } from './support/disk-cluster.js'

const kit = diskCluster('galleon-r34-')

describe('review r34: a call refused on the primary for a reason of its own, the role moving while it waited', () => {
  it('restoreSnapshot refused BUSY (a writable file open on the volume here) is the answer: not sent on, nothing reverted', { timeout: 60_000 }, async () => {
    const c = await primaryCluster(kit)
    const [n1, n2] = c.nodes
    await n1.g.writeBlock('v', 1, block(30), WriteConcern.WriteReplicated)
    await n1.g.createSnapshot('v', 's1')
    await n1.g.writeBlock('v', 1, block(31), WriteConcern.WriteReplicated)
    await until('n2 has the snapshot', async () => (await n2.g.listSnapshots('v')).length === 1, 20_000)
    let reverts = 0
    n2.g.on('snapshot:restored', () => { reverts++ })
    // An expansion holds n1's admin queue while its write of the cluster's record is held.
    c.hold.arm(`"sizeBytes":${20 * BS}`)
    const first = observed(n1.g.expandVolume('v', 20 * BS))
    let file: Awaited<ReturnType<typeof n1.g.mounts.openVolumeFile>> | undefined
    try {
      await until('the expansion\'s record write is held', () => c.hold.held() > 0, 20_000)
      // Made while n1 is the primary: it waits for its turn behind the expansion.
      const restore = observed(n1.g.restoreSnapshot('v', 's1'))
      // Meanwhile an application opens the volume for writing on n1, and the role moves.
      file = await n1.g.mounts.openVolumeFile('v')
      await failOver(c)
      c.hold.release()
      await first.catch(() => {})
      const err = await restore.then((value) => assert.fail(`resolved: ${JSON.stringify(value)}`), (e: { code?: string, message: string }) => e)
      assert.equal(err.code, 'BUSY', err.message)
      assert.match(err.message, /writer/)
    } finally {
      c.hold.release()
      await file?.close().catch(() => {})
    }
    assert.equal(reverts, 0, 'the refused call did not go on at the next primary')
    assert.deepEqual(await n2.g.readBlock('v', 1), block(31), 'nothing was reverted under the writer')
  })
})
