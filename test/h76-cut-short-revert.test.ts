// h76: a restoreSnapshot on a replicated volume's primary that is cut short on that node, which then
// stops being the primary. Measured before the change: (1) a revert the primary refused as it began
// because its lease had lapsed (fenced; the call went on at the next primary, see hereOrNext) left
// its intent in that node's volume record and reported "revert failed" (io:error): the node, a
// replica once the role moved, refused scrub and getAllocation (BUSY "unfinished revert"), could
// not apply a snapshot the new primary took (so it never got back in sync), refused every read and
// write (its own, and those forwarded to it) once the role was handed back to it, and a reopen then
// reverted its copy over writes acknowledged since (blocks 4 and 5 read as zeros). (2) The same
// intent, left by a revert that failed part-way (a read failing) on the primary before the role
// moved, stayed after the new primary had resynced the copy. Now a revert that the primary refuses
// before it changes a block leaves no intent, and a copy whose resync begins drops the intent a
// revert left there while the node was primary (the new primary's data is what the copy holds
// once the resync ends, every block compared). A failed revert on a node that stays the primary
// still refuses the volume's I/O (checked here too).
// The moments are hit deterministically: n1's metadata writes are held while its revert records
// its intent, its lease is ended meanwhile (the memory coordinator's expireLeases) and its reads
// and watch events of the volume's record are withheld, so that it is fenced, not yet deposed, when
// the revert goes on; or its block store fails the reads of one block during the revert.
// In-process nodes on their own disks with a memory network and coordinator.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { recordKey } from '../src/replication/records.js'
import { BS, allInSync, block, diskCluster, type DiskNode } from './support/disk-cluster.js'
import { namePrimary, recordOf } from './support/replica-records.js'
import { observed } from './support/observed.js'
import { until } from './support/wait.js'
import { instrumentedN1, type InstrumentedN1 } from './support/instrumented-n1.js'

const kit = diskCluster('galleon-h76-')

interface N1 extends InstrumentedN1 {
  /** "revert ... failed" io:error events n1 emitted. */
  revertFailures: string[]
}

interface Cluster {
  network: MemoryNetwork
  coordinators: MemoryCoordinatorCluster
  n1: N1
  n2: DiskNode
  n3: DiskNode
  volumeId: string
}

/** n1 (metadata and block store held or failed on demand, coordinator withheld on demand) and n2 with volume `v` (2 copies, n1 primary, `blocks` blocks), then n3 as a spare node. */
async function cluster (blocks: number): Promise<Cluster> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const instrumented = await instrumentedN1(kit, network, coordinators, 'galleon-h76-n1-')
  const { g } = instrumented
  const revertFailures: string[] = []
  g.on('io:error', (event) => { if (/revert/.test(event.message)) revertFailures.push(event.message) })
  const n1: N1 = { ...instrumented, revertFailures }
  const n2 = await kit.startNode(network, coordinators, 'n2')
  await until('n1 and n2 see each other', () => [g, n2.g].every((node) => node.cluster?.members.filter((m) => m.healthy).length === 2))
  for (const node of [g, n2.g]) await node.createStorageClass({ name: 'rep', parameters: { replication: '2' } })
  // Made while n1 and n2 are the only nodes: its copies are theirs.
  const { id } = await g.createVolume({ name: 'v', sizeBytes: blocks * BS, storageClass: 'rep' })
  await until('both copies are in sync', async () => await allInSync(g, 'v', 2), 20_000)
  const n3 = await kit.startNode(network, coordinators, 'n3')
  await n3.g.createStorageClass({ name: 'rep', parameters: { replication: '2' } })
  await until('every node sees every other', () => [g, n2.g, n3.g].every((node) => node.cluster?.members.filter((m) => m.healthy).length === 3))
  return { network, coordinators, n1, n2, n3, volumeId: id }
}

/** The cluster's record names n2 the primary (unless the leader did so already: n1's lease lapsed), and n2 took the role up. */
async function failOverToN2 (c: Cluster): Promise<void> {
  await until('the record names n2', async () => {
    if ((await recordOf(c.coordinators, c.volumeId))?.primary === 'n2') return true
    await namePrimary(c.coordinators, c.volumeId, 'n2').catch(() => {})
    return false
  }, 20_000)
  await until('n2 took the role up', async () => (await c.n2.g.replicationStatus('v')).role === 'primary', 20_000)
}

/**
 * n2, the primary, hands the role back to n1 (in sync): its own copy moves to n3, and the hand-off
 * goes to the first other in-sync copy, n1 (n3's copy is listed after it).
 */
async function handBackToN1 (c: Cluster): Promise<void> {
  assert.deepEqual((await c.n2.g.replicationStatus('v')).inSync, ['n2', 'n1'], 'n1 is in sync under n2 before the hand-off')
  await c.n2.g.migrateVolume('v', { node: 'n3' })
  await until('n1 leads again', async () => (await c.n1.g.replicationStatus('v')).role === 'primary', 30_000)
}

/** Asserts that the volume reads `expected` (a block each) through `g`. */
async function assertReads (g: GalleonFS, expected: Uint8Array[], where: string): Promise<void> {
  const bytes = await g.read('v', 0, expected.length * BS)
  expected.forEach((want, i) => { assert.ok(Buffer.compare(bytes.subarray(i * BS, (i + 1) * BS), want) === 0, `block ${i} ${where}`) })
}

/** Reopens n1 on its storage (the usual drivers); resolves once it leads the volume again (it was its recorded primary: closed keeping its roles). */
async function reopenN1 (c: Cluster): Promise<GalleonFS> {
  await c.n1.g.close({ handOver: false })
  const g = kit.track(await GalleonFS.open({ storagePath: c.n1.dir, cluster: { nodeId: 'n1', transport: new MemoryTransport({ network: c.network, nodeId: 'n1' }), coordinator: c.coordinators.coordinator(), leaseTtlMs: 1000 } }))
  await until('the reopened n1 leads the volume', async () => (await g.replicationStatus('v')).role === 'primary', 30_000)
  return g
}

/** Closes `primary` (n1, reopened) and n3 once n3 is in sync, and asserts that each copy, opened alone, holds `expected`. */
async function assertCopies (c: Cluster, primary: GalleonFS, expected: Uint8Array[]): Promise<void> {
  await until('n3 is in sync under n1', async () => await allInSync(primary, 'v', 2), 30_000)
  await primary.close()
  await c.n3.g.close()
  for (const [name, dir] of [['n1', c.n1.dir], ['n3', c.n3.dir]]) {
    const alone = await GalleonFS.open({ storagePath: dir as string })
    try {
      await assertReads(alone, expected, `of ${name as string}'s copy, opened alone`)
    } finally {
      await alone.close()
    }
  }
}

const zero = new Uint8Array(BS)

describe('h76: a revert the primary refused as it began, its lease having lapsed, the role then moving', () => {
  it('leaves no intent on the old primary: it serves as a replica, stays in sync, serves the resynced data once it leads again, and after a reopen', { timeout: 60_000 }, async () => {
    const c = await cluster(16)
    const { n1, n2, n3 } = c
    const expected: Uint8Array[] = Array.from({ length: 16 }, () => zero)
    await n1.g.writeBlock('v', 1, block(30), WriteConcern.WriteReplicated)
    await n1.g.writeBlock('v', 2, block(20), WriteConcern.WriteReplicated)
    const s1 = await n1.g.createSnapshot('v', 's1')
    await n1.g.writeBlock('v', 1, block(31), WriteConcern.WriteReplicated)
    await n1.g.writeBlock('v', 2, block(21), WriteConcern.WriteReplicated)
    await n1.g.writeBlock('v', 3, block(22), WriteConcern.WriteReplicated)
    expected[1] = block(30)
    expected[2] = block(20)
    await until('n2 has the snapshot', async () => (await n2.g.listSnapshots('v')).length === 1, 20_000)
    // A local volume of n1: a snapshot of it runs in n1's admin queue, after the revert's turn.
    await n1.g.createVolume({ name: 'probe', sizeBytes: 4 * BS })
    const fenced: string[] = []
    n1.g.on('replication:error', (event) => { fenced.push(event.message) })

    // The revert records its intent (held) on n1, the primary; meanwhile n1's lease ends, and it
    // cannot read the volume's record (nor hear of it) to learn whether it still leads.
    n1.writes.hold()
    const restore = observed(n1.g.restoreSnapshot('v', 's1'))
    let turn: Promise<unknown> | undefined
    try {
      await until('n1 records the revert\'s intent', () => n1.writes.waiting > 0)
      Object.assign(n1.view, { key: recordKey(c.volumeId), blind: true, unreadable: true })
      n1.handle.expireLeases()
      await until('n1 fenced its primary', () => fenced.some((m) => /lost its cluster lease/.test(m)), 10_000)
      turn = observed(n1.g.createSnapshot('probe', 'after-the-revert'))
    } finally {
      n1.writes.release()
    }
    await turn
    // The revert was refused before it changed a block: nothing on n1 fences the volume.
    assert.equal((await n1.record(c.volumeId))?.revertTo, undefined, 'n1 keeps no intent of the revert its primary refused')
    assert.deepEqual(n1.revertFailures, [], 'nothing failed on n1: it refused the revert as a node that may no longer lead')
    assert.deepEqual(await n1.g.getAllocation('v', 0, 4 * BS), [{ offset: 0, length: BS, allocated: false }, { offset: BS, length: 3 * BS, allocated: true }], 'n1 serves getAllocation of its copy')

    // The cluster names n2 the primary (as its leader does once n1's lease lapsed); n1 learns it.
    await failOverToN2(c)
    Object.assign(n1.view, { blind: false, unreadable: false })
    assert.equal((await restore).name, 'v', 'the call went on at the next primary')
    await assertReads(n2.g, expected.slice(0, 4), 'on n2, the new primary, reverted')

    // n1, a replica now: its I/O goes to n2, like any replica's.
    await until('n1 is in sync under n2', async () => await allInSync(n2.g, 'v', 2), 30_000)
    // Its lease is back, but its unfence reads the record again only after a back-off (up to 2 s;
    // its reads failed while the record was withheld): till then its role shows as 'unknown'.
    await until('n1 takes up the replica role', async () => (await n1.g.replicationStatus('v')).role === 'replica', 10_000)
    await assertReads(n1.g, expected, 'read through n1 (a replica)')
    await n1.g.writeBlock('v', 4, block(40), WriteConcern.WriteReplicated)
    expected[4] = block(40)
    const file = await n1.g.mounts.openVolumeFile('v')
    try {
      const into = new Uint8Array(BS)
      assert.equal(await file.pread(into, BS), BS)
      assert.deepEqual(into, block(30), 'a VolumeFile on n1 reads the reverted block')
      await file.pwrite(block(50), 5 * BS)
      expected[5] = block(50)
    } finally {
      await file.close()
    }
    assert.equal((await n1.g.getVolume('v')).state, 'available')
    assert.deepEqual((await n1.g.scrub('v')).badBlocks, [])
    // A snapshot the new primary takes reaches n1's copy, which stays in sync.
    const s2 = await n2.g.createSnapshot('v', 's2')
    await until('n1 has s2 and is in sync', async () => (await n1.g.listSnapshots('v')).some((s) => s.id === s2.id) && await allInSync(n2.g, 'v', 2), 30_000)
    assert.deepEqual((await n1.g.listSnapshots('v')).map((s) => s.id), [s1.id, s2.id])

    // The role is handed back to n1: it serves the resynced data and takes writes.
    await handBackToN1(c)
    await assertReads(n1.g, expected, 'on n1, the primary again')
    await n1.g.writeBlock('v', 6, block(60), WriteConcern.WriteReplicated)
    expected[6] = block(60)
    await assertReads(n3.g, expected, 'read through n3')

    // Reopened, n1 leads again with the same data (no revert of its own over the writes since).
    const reopened = await reopenN1(c)
    await assertReads(reopened, expected, 'on n1, reopened')
    // A WriteReplicated write needs another copy in sync: n3's comes back once its link to the
    // reopened n1 is up and it has caught up (it may still be on the way when n1 takes the role).
    await until('n3 is in sync under the reopened n1', async () => await allInSync(reopened, 'v', 2), 30_000)
    await reopened.writeBlock('v', 7, block(70), WriteConcern.WriteReplicated)
    expected[7] = block(70)
    await assertCopies(c, reopened, expected)
  })
})

describe('h76: a revert that failed part-way on the primary, the role then moving', () => {
  // 100 changed blocks: a revert copies 64 per batch, so a read failing in block 80 leaves the
  // copy part reverted (blocks 0..63).
  const BLOCKS = 128
  const CHANGED = 100
  const seeds = (base: number): Uint8Array => {
    const out = new Uint8Array(CHANGED * BS)
    for (let i = 0; i < CHANGED; i++) out.set(block(base + i), i * BS)
    return out
  }

  it('the part reverted copy refuses I/O while its node leads; once the next primary resyncs it, it serves that primary\'s data, also when it leads again and after a reopen', { timeout: 60_000 }, async () => {
    const c = await cluster(BLOCKS)
    const { n1, n2, n3 } = c
    await n1.g.write('v', 0, seeds(1000), WriteConcern.WriteReplicated)
    await n1.g.createSnapshot('v', 's1')
    await n1.g.write('v', 0, seeds(2000), WriteConcern.WriteReplicated)
    const expected: Uint8Array[] = Array.from({ length: BLOCKS }, (_, i) => i < CHANGED ? block(1000 + i) : zero)
    n1.store.failIndex = 80
    try {
      await assert.rejects(n1.g.restoreSnapshot('v', 's1'), { code: 'IO_ERROR' })
    } finally {
      n1.store.failIndex = undefined
    }
    // As on a single node: n1, still the primary, refuses the volume's I/O (and serves none forwarded to it).
    assert.equal((await n1.g.replicationStatus('v')).role, 'primary')
    await assert.rejects(n1.g.readBlock('v', 0), { code: 'BUSY' })
    await assert.rejects(n2.g.readBlock('v', 0), { code: 'BUSY' })
    assert.equal(n1.revertFailures.length, 1)
    assert.notEqual((await n1.record(c.volumeId))?.revertTo, undefined)

    // The cluster names n2 the primary; n2 (whose copy the revert reached whole) resyncs n1.
    await failOverToN2(c)
    await assertReads(n2.g, expected, 'on n2, the new primary')
    await until('n1 is in sync under n2', async () => await allInSync(n2.g, 'v', 2), 30_000)
    assert.equal((await n1.record(c.volumeId))?.revertTo, undefined, 'the resync took the intent off n1\'s copy')
    await assertReads(n1.g, expected, 'read through n1 (a replica)')
    await n1.g.writeBlock('v', CHANGED, block(3000), WriteConcern.WriteReplicated)
    expected[CHANGED] = block(3000)
    assert.deepEqual((await n1.g.scrub('v')).badBlocks, [])

    // Handed the role back, n1 serves the resynced blocks (those it had not reverted too), and after a reopen.
    await handBackToN1(c)
    await assertReads(n1.g, expected, 'on n1, the primary again')
    await n1.g.writeBlock('v', CHANGED + 1, block(3001), WriteConcern.WriteReplicated)
    expected[CHANGED + 1] = block(3001)
    await assertReads(n3.g, expected, 'read through n3')
    const reopened = await reopenN1(c)
    await assertReads(reopened, expected, 'on n1, reopened')
    await assertCopies(c, reopened, expected)
  })
})
