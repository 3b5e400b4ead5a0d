// Review r35 of h76 (a revert cut short on a primary that then loses the role): the case h76's own
// tests do not build, where the next primary NEVER got the revert. n1, the primary, records the
// revert in its stream (n2 is cut off, so the change never reaches it), then its revert fails
// part-way: the first batch of 64 blocks is reverted on n1 alone, and those blocks were unallocated
// in the snapshot, so the revert UNMAPPED them there. The cluster then names n2 (which holds every
// block as written, no revert) the primary. Once n2 has resynced n1, n1's copy must hold n2's data
// in every block, the unmapped ones included, with no intent left to revert it again: checked by
// opening n1's copy alone (a reopen that still found the intent would revert it over n2's data).
// In-process nodes on their own disks with a memory network and coordinator.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { MemoryCoordinatorCluster, MemoryNetwork, type MemoryCoordinator } from '../backends/memory/index.js'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { recordKey } from '../src/replication/records.js'
import { BS, allInSync, block, diskCluster } from './support/disk-cluster.js'
import { namePrimary, recordOf } from './support/replica-records.js'
import { observed } from './support/observed.js'
import { until } from './support/wait.js'
import { instrumentedN1, type FailingReads, type Gate, type RecordView } from './support/instrumented-n1.js'

const kit = diskCluster('galleon-r35-')

/** n1 with its metadata writes held on demand and the volume's record withheld from it on demand, n2 a plain node; volume `v` (2 copies, n1 primary). */
async function gatedCluster (blocks: number): Promise<{ network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, n1: GalleonFS, n2: GalleonFS, n1Dir: string, store: FailingReads, handle: MemoryCoordinator, view: RecordView, writes: Gate, intent: (id: string) => Promise<string | undefined>, volumeId: string }> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const { g: n1, dir, handle, view, writes, store, record } = await instrumentedN1(kit, network, coordinators, 'galleon-r35-n1-')
  const n2 = (await kit.startNode(network, coordinators, 'n2')).g
  await until('n1 and n2 see each other', () => [n1, n2].every((node) => node.cluster?.members.filter((m) => m.healthy).length === 2))
  for (const node of [n1, n2]) await node.createStorageClass({ name: 'rep', parameters: { replication: '2' } })
  const { id } = await n1.createVolume({ name: 'v', sizeBytes: blocks * BS, storageClass: 'rep' })
  await until('both copies are in sync', async () => await allInSync(n1, 'v', 2), 20_000)
  view.key = recordKey(id)
  return { network, coordinators, n1, n1Dir: dir, n2, store, handle, view, writes, intent: async (volumeId) => (await record(volumeId))?.revertTo, volumeId: id }
}

const BLOCKS = 128
/** Blocks 0..63 are unallocated in the snapshot: the revert's first batch unmaps them. */
const HALF = 64

/** `count` blocks from seed `base` on, as one buffer. */
function seeds (base: number, count: number): Uint8Array {
  const out = new Uint8Array(count * BS)
  for (let i = 0; i < count; i++) out.set(block(base + i), i * BS)
  return out
}

describe('review r35: a revert cut short on the primary that never reached the next primary', () => {
  it('once the next primary resynced it, the old primary\'s copy holds that primary\'s data in every block (those the revert unmapped too), and no intent reverts it again', { timeout: 60_000 }, async () => {
    const { network, coordinators, n1, n1Dir, n2, store, intent, volumeId: id } = await gatedCluster(BLOCKS)

    await n1.write('v', HALF * BS, seeds(1000, BLOCKS - HALF), WriteConcern.WriteReplicated)
    await n1.createSnapshot('v', 's1')
    await n1.write('v', 0, seeds(2000, BLOCKS), WriteConcern.WriteReplicated)
    const written = seeds(2000, BLOCKS)

    // The revert is recorded in n1's stream, which no longer reaches n2; a read of the second
    // batch fails, so n1's copy is left with blocks 0..63 unmapped and the rest as written.
    network.partition(['n1'], ['n2'])
    store.failIndex = 100
    try {
      await assert.rejects(n1.restoreSnapshot('v', 's1'), { code: 'IO_ERROR' })
    } finally {
      store.failIndex = undefined
    }
    await assert.rejects(n1.readBlock('v', 0), { code: 'BUSY' }, 'n1, still the primary, refuses the part reverted volume\'s I/O')

    // The cluster names n2 the primary (it never got the revert); n1 steps down; then the network heals.
    await namePrimary(coordinators, id, 'n2')
    await until('n2 leads and n1 follows', async () => (await n2.replicationStatus('v')).role === 'primary' && (await n1.replicationStatus('v')).role === 'replica', 20_000)
    network.heal()
    await until('n1 is in sync under n2', async () => await allInSync(n2, 'v', 2), 30_000)
    assert.ok(Buffer.from(await n2.read('v', 0, BLOCKS * BS)).equals(written), 'n2, the new primary, holds the blocks as written (no revert)')
    assert.ok(Buffer.from(await n1.read('v', 0, BLOCKS * BS)).equals(written), 'read through n1')
    // The resync compared every block and sent n1 exactly the 64 its revert had unmapped (the
    // others matched): n1's copy was part reverted, and the comparison found the unmapped blocks.
    const link = (await n2.replicationStatus('v')).links.find((l) => l.node === 'n1')
    assert.equal(link?.shippedBytes, HALF * BS, 'the resync sent n1 the blocks its part revert unmapped, and only those')

    // n1's own copy, opened alone: n2's data in every block, the revert not done again over it.
    assert.equal(await intent(id), undefined, 'no intent is left on n1')
    await n1.close()
    const alone = await GalleonFS.open({ storagePath: n1Dir })
    try {
      const bytes = await alone.read('v', 0, BLOCKS * BS)
      for (let i = 0; i < BLOCKS; i++) {
        assert.ok(Buffer.compare(bytes.subarray(i * BS, (i + 1) * BS), written.subarray(i * BS, (i + 1) * BS)) === 0, `block ${i} of n1's copy, opened alone, is n2's`)
      }
      assert.deepEqual(await alone.getAllocation('v', 0, BLOCKS * BS), [{ offset: 0, length: BLOCKS * BS, allocated: true }], 'every block of n1\'s copy is allocated again')
    } finally {
      await alone.close()
    }
  })
})

describe('review r35: a revert refused as it began, on a primary whose earlier revert failed part-way', () => {
  it('leaves the earlier revert\'s intent in place (that copy is part reverted), not none, and the copy is rebuilt once the next primary resyncs it', { timeout: 60_000 }, async () => {
    const { coordinators, n1, n1Dir, n2, store, handle, view, writes, intent, volumeId: id } = await gatedCluster(BLOCKS)
    await n1.write('v', HALF * BS, seeds(1000, BLOCKS - HALF), WriteConcern.WriteReplicated)
    const s1 = await n1.createSnapshot('v', 's1')
    await n1.write('v', 0, seeds(2000, BLOCKS), WriteConcern.WriteReplicated)
    await n1.createSnapshot('v', 's2')
    await n1.write('v', 0, seeds(3000, BLOCKS), WriteConcern.WriteReplicated)
    const s2Data = seeds(2000, BLOCKS)
    // A local volume of n1: a snapshot of it runs in n1's admin queue, after the revert's turn.
    await n1.createVolume({ name: 'probe', sizeBytes: 4 * BS })
    const fenced: string[] = []
    n1.on('replication:error', (event) => { fenced.push(event.message) })

    // A revert to s1 fails part-way on n1 (blocks 0..63 reverted on n1 alone): its intent fences n1's copy.
    store.failIndex = 100
    try {
      await assert.rejects(n1.restoreSnapshot('v', 's1'), { code: 'IO_ERROR' })
    } finally {
      store.failIndex = undefined
    }
    assert.equal(await intent(id), s1.id)

    // A revert to s2 records its intent (held); meanwhile n1's lease ends and the volume's record is
    // withheld from it, so its primary is fenced when the revert goes on, and refuses it.
    writes.hold()
    const restore = observed(n1.restoreSnapshot('v', 's2'))
    let turn: Promise<unknown> | undefined
    try {
      await until('n1 records the revert\'s intent', () => writes.waiting > 0)
      view.blind = view.unreadable = true
      handle.expireLeases()
      await until('n1 fenced its primary', () => fenced.some((m) => /lost its cluster lease/.test(m)), 10_000)
      turn = observed(n1.createSnapshot('probe', 'after-the-revert'))
    } finally {
      writes.release()
    }
    await turn
    // Nothing was reverted by the refused call; n1's copy is still part reverted to s1, and fenced so.
    assert.equal(await intent(id), s1.id, 'the refused revert leaves the intent of the earlier one that failed part-way')

    // The cluster names n2 the primary; the call goes on there; n2 resyncs n1, whose intent goes.
    await until('the record names n2', async () => {
      if ((await recordOf(coordinators, id))?.primary === 'n2') return true
      await namePrimary(coordinators, id, 'n2').catch(() => {})
      return false
    }, 20_000)
    view.blind = view.unreadable = false
    assert.equal((await restore).name, 'v', 'the call went on at the next primary')
    await until('n1 is in sync under n2', async () => await allInSync(n2, 'v', 2), 30_000)
    assert.ok(Buffer.from(await n2.read('v', 0, BLOCKS * BS)).equals(s2Data), 'n2 reverted to s2')
    assert.equal(await intent(id), undefined, 'the resync took the intent off n1')
    await n1.close()
    const alone = await GalleonFS.open({ storagePath: n1Dir })
    try {
      assert.ok(Buffer.from(await alone.read('v', 0, BLOCKS * BS)).equals(s2Data), 'n1\'s copy, opened alone, reads as s2')
    } finally {
      await alone.close()
    }
  })
})
