// Snapshot calls on a primary that is deposed while they are under way (helper h39, after
// test/replication-snapshot-divergence.test.ts): the resync the new primary runs must leave every
// copy with the same snapshots, holding the same bytes. In process: two nodes on the memory
// transport and coordinator, each with its own on-disk storage; the old primary's block store holds
// its journal batches, and its metadata database its writes, on demand, so that its snapshot call is
// still under way while the role moves and the new primary resyncs it; its stream to the other copy
// is cut meanwhile. A call that resolved is never undone (with synchronous replication it waits for
// the in-sync copies, and one made on this copy alone fails): on every copy, and kept.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { GalleonFS, WriteConcern, type BlockOp, type BlockStore, type Volume } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { ClassicLevel } from 'classic-level'
import { allInSync, block, diskCluster, type DiskNode } from './support/disk-cluster.js'
import { until } from './support/wait.js'
import { namePrimary } from './support/replica-records.js'
import { Gate } from './support/instrumented-n1.js'

const { tempDir, startNode, track } = diskCluster('galleon-snaprace-')
const BLOCKS = 8

/** A file block store whose batches wait while `writes` is held (reads pass). */
function holdableStore (location: string): { store: BlockStore, writes: Gate } {
  const inner = new FileBlockStore({ location })
  const writes = new Gate()
  const store = new Proxy(inner, {
    get (target, prop) {
      if (prop === 'batch') return async (ops: BlockOp[], options?: { sync?: boolean }) => { await writes.pass(); return await target.batch(ops, options) }
      const value = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  return { store, writes }
}

/** The on-disk metadata database GalleonFS opens at `storagePath`, whose puts and deletions wait while `writes` is held. */
function holdableMetadata (location: string): { db: ClassicLevel<string, unknown>, writes: Gate } {
  const db = new ClassicLevel<string, unknown>(location, { valueEncoding: 'json' })
  const writes = new Gate()
  // Sublevels write through their root's put and del.
  const put = db.put.bind(db) as (...args: unknown[]) => Promise<void>
  const del = db.del.bind(db) as (...args: unknown[]) => Promise<void>
  db.put = (async (...args: unknown[]) => { await writes.pass(); await put(...args) }) as typeof db.put
  db.del = (async (...args: unknown[]) => { await writes.pass(); await del(...args) }) as typeof db.del
  return { db, writes }
}

interface Pair {
  network: MemoryNetwork
  coordinators: MemoryCoordinatorCluster
  g1: GalleonFS
  n1dir: string
  held: ReturnType<typeof holdableStore>
  metadata: ReturnType<typeof holdableMetadata>
  n2: DiskNode
  volume: Volume
}

/** n1 (on a holdable block store and metadata database) the primary of volume `race` with 2 copies in sync, block i holding block(i + 1). */
async function pair (): Promise<Pair> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const n1dir = await tempDir('galleon-snaprace-n1-')
  const held = holdableStore(join(n1dir, 'blocks'))
  const metadata = holdableMetadata(join(n1dir, 'metadata'))
  const g1 = track(await GalleonFS.open({
    storagePath: n1dir,
    blockStore: held.store,
    metadata: metadata.db,
    cluster: { nodeId: 'n1', transport: new MemoryTransport({ network, nodeId: 'n1' }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 }
  }))
  const n2 = await startNode(network, coordinators, 'n2')
  await until('both nodes see each other', () => [g1, n2.g].every((g) => g.cluster?.members.filter((m) => m.healthy).length === 2))
  const volume = await g1.createVolume({ name: 'race', sizeBytes: BLOCKS * 4096, replicas: 2 })
  await until('both copies are in sync', async () => await allInSync(g1, 'race', 2))
  for (let i = 0; i < BLOCKS; i++) await g1.writeBlock('race', i, block(i + 1), WriteConcern.WriteReplicated)
  return { network, coordinators, g1, n1dir, held, metadata, n2, volume }
}

/** Whether `g`, the primary, has every copy streaming with nothing unacknowledged. */
async function caughtUp (g: GalleonFS): Promise<boolean> {
  const status = await g.replicationStatus('race')
  return status.role === 'primary' && status.inSync.length === 2 && status.links.every((l) => l.state === 'streaming' && l.lagChanges === 0)
}

/**
 * Deposes n1 while `call` (a snapshot call on it) waits behind `gate`: from now on n1's stream
 * batches to n2 are lost (as with a primary stopped right then), n2 is named primary, and the gate
 * opens a little after n2 asked n1 to begin its resync (a copy that rightly waits for the call
 * before it answers would otherwise never answer). Returns once n1 is back in sync under n2 and the
 * call has settled, with the call's outcome; asserts that the call was still under way when the
 * resync began (the race this file is about took place).
 */
async function depose (p: Pair, call: Promise<unknown>, gate: Gate): Promise<string> {
  let settled = false
  const result = call.then(() => 'resolved', (err: unknown) => `rejected with ${(err as { code?: string }).code ?? String(err)}`).finally(() => { settled = true })
  let pendingAtResync: boolean | undefined
  let timer: NodeJS.Timeout | undefined
  p.network.drop((m) => {
    if (m.type === 'request' && m.kind === 'repl:resync-begin' && m.from === 'n2' && pendingAtResync === undefined) {
      pendingAtResync = !settled
      timer = setTimeout(() => { gate.release() }, 300)
    }
    return m.type === 'request' && m.kind === 'repl:apply' && m.from === 'n1'
  }, { silent: true })
  try {
    await namePrimary(p.coordinators, p.volume.id, 'n2')
    await until('n1 is back in sync under n2', async () => await caughtUp(p.n2.g), 60_000)
  } finally {
    clearTimeout(timer)
    gate.release()
  }
  const outcome = await result
  p.network.drop(0)
  assert.equal(pendingAtResync, true, `the call on n1 was still under way when n2 began to resync it (it ${outcome})`)
  return outcome
}

/** Every snapshot (by id: name and a digest of each block) and the live blocks of the volume, read from a node's storage opened alone. */
interface Contents { snapshots: Map<string, { name: string, blocks: string[] }>, live: string[] }
async function contents (dir: string): Promise<Contents> {
  const g = await GalleonFS.open({ storagePath: dir })
  try {
    const read = async (source: Parameters<GalleonFS['readBlock']>[0]): Promise<string[]> => {
      const out: string[] = []
      for (let i = 0; i < BLOCKS; i++) out.push(createHash('sha256').update(await g.readBlock(source, i)).digest('hex').slice(0, 16))
      return out
    }
    const snapshots = new Map<string, { name: string, blocks: string[] }>()
    for (const s of await g.listSnapshots('race')) snapshots.set(s.id, { name: s.name, blocks: await read({ volume: 'race', snapshot: s.id }) })
    return { snapshots, live: await read('race') }
  } finally {
    await g.close()
  }
}

/**
 * Closes both nodes and asserts that their copies hold the same snapshots with the same bytes, and
 * the same live blocks (`context` ends each message).
 */
async function assertSameCopies (p: Pair, context: string, resolved?: (copy: Contents) => void): Promise<void> {
  await p.g1.close()
  await p.n2.g.close()
  const one = await contents(p.n1dir)
  const two = await contents(p.n2.dir)
  // A call that resolved is kept (synchronous replication: it waited for the in-sync copies).
  if (context.includes('resolved')) resolved?.(two)
  const names = (c: typeof one): string[] => [...c.snapshots.values()].map((s) => s.name).sort()
  assert.deepEqual(names(one), names(two), `both copies list the same snapshots (${context})`)
  assert.deepEqual([...one.snapshots.keys()].sort(), [...two.snapshots.keys()].sort(), `with the same ids (${context})`)
  for (const [id, snapshot] of one.snapshots) {
    snapshot.blocks.forEach((bytes, i) => { assert.equal(bytes, two.snapshots.get(id)?.blocks[i], `block ${i} of snapshot ${snapshot.name} is the same on both copies (${context})`) })
  }
  one.live.forEach((bytes, i) => { assert.equal(bytes, two.live[i], `live block ${i} is the same on both copies (${context})`) })
}

/** The check of a createSnapshot that resolved: the snapshot is on the copies. */
function hasSnapshot (name: string): (copy: Contents) => void {
  return (copy) => { assert.ok([...copy.snapshots.values()].some((s) => s.name === name), `a createSnapshot that resolved (${name}) is not undone by the failover`) }
}

/** Cuts n1's stream to n2 (its stream batches are lost) until `depose` takes over the network's rules. */
function cutStream (p: Pair): void {
  p.network.drop((m) => m.type === 'request' && m.kind === 'repl:apply' && m.from === 'n1', { silent: true })
}

/** The number of changes n1, the primary, recorded that n2 has not acknowledged. */
async function lag (p: Pair): Promise<number> {
  return (await p.g1.replicationStatus('race')).links[0]?.lagChanges ?? 0
}

/**
 * Cuts the stream to n2, holds n1's journal writes, has n1 record a write (held there) and then
 * the snapshot `call` takes (which waits for that write); then deposes n1 (see depose) and resolves
 * to the snapshot call's outcome, once the write is settled too.
 */
async function snapshotBehindHeldWrite (p: Pair, call: () => Promise<unknown>): Promise<string> {
  cutStream(p)
  p.held.writes.hold()
  const write = p.g1.writeBlock('race', 0, block(100), WriteConcern.WriteDurable)
  write.catch(() => {})
  await until('the write is held', () => p.held.writes.waiting > 0)
  const snap = call()
  snap.catch(() => {})
  await until('the snapshot is recorded', async () => await lag(p) >= 2)
  const outcome = await depose(p, snap, p.held.writes)
  await write.catch(() => {})
  return outcome
}

/**
 * Cuts the stream to n2, holds n1's metadata writes, starts `call` on n1 and waits until it is held
 * there; then deposes n1 (see depose) and resolves to the call's outcome.
 */
async function deposedWhileHeld (p: Pair, what: string, call: () => Promise<unknown>): Promise<string> {
  cutStream(p)
  p.metadata.writes.hold()
  const started = call()
  started.catch(() => {})
  await until(`${what} is held`, () => p.metadata.writes.waiting > 0)
  return await depose(p, started, p.metadata.writes)
}

describe('a snapshot call on a primary deposed while it is under way', () => {
  it('createSnapshot waiting for the old primary\'s own write: on every copy or on none, and kept if the call resolved', async () => {
    const p = await pair()
    // The old primary records a write its journal holds, then the snapshot behind it (which waits for it).
    await assertSameCopies(p, `createSnapshot on n1 ${await snapshotBehindHeldWrite(p, () => p.g1.createSnapshot('race', 'racy'))}`, hasSnapshot('racy'))
  })

  it('createSnapshot forwarded to the old primary by the other copy: on every copy or on none, and kept if the call resolved', async () => {
    const p = await pair()
    // n2, a copy still, forwards the call to n1.
    await assertSameCopies(p, `createSnapshot through n2 ${await snapshotBehindHeldWrite(p, () => p.n2.g.createSnapshot('race', 'forwarded'))}`, hasSnapshot('forwarded'))
  })

  it('deleteSnapshot whose catalog entry is still going: deleted on every copy or on none, and kept if the call resolved', async () => {
    const p = await pair()
    await p.g1.createSnapshot('race', 'old')
    await p.g1.writeBlock('race', 0, block(50), WriteConcern.WriteReplicated)
    await until('n2 has the snapshot', async () => await caughtUp(p.g1))
    // The old primary's deletion of the snapshot's record is held.
    await assertSameCopies(p, `deleteSnapshot on n1 ${await deposedWhileHeld(p, 'the deletion', () => p.g1.deleteSnapshot('race', 'old'))}`, (copy) => {
      assert.ok(![...copy.snapshots.values()].some((s) => s.name === 'old'), 'a deleteSnapshot that resolved is not undone by the failover')
    })
  })

  it('restoreSnapshot whose intent is still being recorded: reverted on every copy or on none, and kept if the call resolved', async () => {
    const p = await pair()
    await p.g1.createSnapshot('race', 'base')
    for (let i = 0; i < BLOCKS; i++) await p.g1.writeBlock('race', i, block(200 + i), WriteConcern.WriteReplicated)
    await until('n2 has everything', async () => await caughtUp(p.g1))
    // The old primary checked that it leads and records the revert's intent (held) before it reverts.
    await assertSameCopies(p, `restoreSnapshot on n1 ${await deposedWhileHeld(p, 'the revert', () => p.g1.restoreSnapshot('race', 'base'))}`, (copy) => {
      const base = [...copy.snapshots.values()].find((s) => s.name === 'base')
      assert.deepEqual(copy.live, base?.blocks, 'a restoreSnapshot that resolved is not undone by the failover')
    })
  })

  it('createSnapshot on the old primary queued behind another snapshot call: taken by the new primary, on every copy', async () => {
    const p = await pair()
    await p.g1.createSnapshot('race', 'old')
    await until('n2 has the snapshot', async () => await caughtUp(p.g1))
    cutStream(p)
    p.metadata.writes.hold()
    const deletion = p.g1.deleteSnapshot('race', 'old')
    deletion.catch(() => {})
    await until('the deletion is held', () => p.metadata.writes.waiting > 0)
    // Its turn comes once n1 no longer leads (n1 answers n2's resync only after both calls): it goes to n2.
    const snap = p.g1.createSnapshot('race', 'queued')
    snap.catch(() => {})
    const outcome = await depose(p, snap, p.metadata.writes)
    assert.equal(outcome, 'resolved')
    await until('n1 has what n2 has', async () => await caughtUp(p.n2.g))
    assert.ok((await p.n2.g.listSnapshots('race')).some((s) => s.name === 'queued'), 'the new primary took the snapshot')
    await assertSameCopies(p, `createSnapshot on n1 ${outcome}, deleteSnapshot on n1 ${await deletion.then(() => 'resolved', (err: unknown) => String(err))}`)
  })
})

describe('a clone deleted on a node that no longer leads its source', () => {
  // A clone of a replicated volume lives on the node that was the source's primary; the source's
  // implicit snapshot for it is the replicated volume's, on every copy. Deleted after the primary
  // role moved, the clone's last reference drops that snapshot on this copy alone (not recorded:
  // the node is not the primary), and the copies differed until this one was resynced again. Now
  // the deletion is forwarded to the primary (VolumeDeletion.releaseSource, forwardReleases).
  it('leaves the copies with the same snapshots: the primary deletes the implicit snapshot, and the deletion reaches every copy', async () => {
    const p = await pair()
    await p.g1.cloneVolume('race', 'copy-of-race')
    await until('n2 has the clone\'s snapshot', async () => await caughtUp(p.g1))
    await namePrimary(p.coordinators, p.volume.id, 'n2')
    await until('n1 is in sync under n2', async () => await caughtUp(p.n2.g))
    await p.g1.deleteVolume('copy-of-race')
    await assertSameCopies(p, 'after the clone was deleted on n1')
  })
})

describe('synchronous replication: snapshot calls on the primary wait for the in-sync copies', () => {
  // Every message on the network takes 150 ms, so a copy applies and acknowledges a change well
  // after the primary made it. A call that resolved before its copy had it could be lost with the
  // primary (they used to resolve once made on the primary alone).
  it('createSnapshot, deleteSnapshot and restoreSnapshot resolve with nothing left unacknowledged', async () => {
    const p = await pair()
    try {
      p.network.delay(150)
      const unacknowledged = async (): Promise<number> => await lag(p)
      await p.g1.createSnapshot('race', 'waited')
      assert.equal(await unacknowledged(), 0, 'createSnapshot resolved once the copy acknowledged it')
      await p.g1.writeBlock('race', 0, block(77), WriteConcern.WriteAcknowledged)
      await p.g1.restoreSnapshot('race', 'waited')
      assert.equal(await unacknowledged(), 0, 'restoreSnapshot resolved once the copy acknowledged the revert')
      await p.g1.deleteSnapshot('race', 'waited')
      assert.equal(await unacknowledged(), 0, 'deleteSnapshot resolved once the copy acknowledged it')
      // The copy's own catalog has followed (it lists its local snapshots).
      assert.deepEqual((await p.n2.g.listSnapshots('race')).map((s) => s.name), [])
    } finally {
      p.network.delay(0)
    }
    await assertSameCopies(p, 'after the three calls')
  })
})
