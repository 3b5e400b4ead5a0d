// Compare-and-swap writes to the coordinator whose answer is lost while the write itself is still in
// flight: the coordinator applies it after the caller read the key again and decided on what it saw.
// The caller fences such a write (settleLostPut), so that it can never apply afterwards.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, GalleonError, WriteConcern, isGalleonError } from '../src/index.js'
import type { Coordinator, CoordinatorEntry } from '../src/drivers.js'
import { settleLostPut } from '../src/cluster/lost-write.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { EtcdCoordinator } from '../backends/etcd/index.js'
import { RECORD_PREFIX, parseRecord, recordKey, type ReplicaSetRecord } from '../src/replication/records.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from './support/etcd.js'
import { until } from './support/wait.js'
import { frameRelay } from './support/etcd-relay.js'

const dirs: string[] = []
const opened: GalleonFS[] = []
let etcd: Promise<EtcdServer> | undefined
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
  if (etcd !== undefined) await (await etcd).stop()
})

/**
 * A coordinator handle whose puts a test can hold: the first put `holdWhen` picks is not sent (the
 * caller gets BACKEND_UNAVAILABLE, as when the answer is lost), and `release()` applies it later,
 * with its original compare-and-swap condition: a write that was still in flight. With
 * `releaseAfterReads`, it is applied right after that many reads of its key (made after the hold)
 * have been answered: after the caller read the key again, before it acts on what it read.
 * `failReads` makes that many reads of held-for keys fail first (the coordinator out of reach).
 * While `holdWatch`, watch events of replica-set records are kept back (a lagging watch) until
 * `releaseWatch()`.
 */
interface Holding {
  holdWhen: ((key: string, value: string) => boolean) | undefined
  releaseAfterReads: number | undefined
  /** Runs right after a release made by `releaseAfterReads` (another node's write, say). */
  afterRelease?: () => Promise<void>
  /** Runs before each delete the handle makes (another node's write just before it, say). */
  beforeDelete?: (key: string) => Promise<void>
  failReads: number
  held: { key: string, value: string, expectRevision: number | undefined } | undefined
  /** What the held put came to when it was applied (undefined: its condition failed). */
  released: Promise<CoordinatorEntry | undefined> | undefined
  release: () => Promise<CoordinatorEntry | undefined>
  holdWatch: boolean
  releaseWatch: () => void
  wrap: (coordinator: Coordinator) => Coordinator
}

function holding (): Holding {
  let reads = 0
  let put: Coordinator['put'] | undefined
  const heldEvents: Array<() => void> = []
  const h: Holding = {
    holdWhen: undefined,
    releaseAfterReads: undefined,
    failReads: 0,
    held: undefined,
    released: undefined,
    release: async () => {
      const held = h.held
      assert.ok(held !== undefined && put !== undefined, 'a put is held')
      h.released ??= put(held.key, held.value, held.expectRevision === undefined ? undefined : { expectRevision: held.expectRevision })
      return await h.released
    },
    holdWatch: false,
    releaseWatch: () => {
      h.holdWatch = false
      for (const deliver of heldEvents.splice(0)) deliver()
    },
    wrap: (coordinator) => {
      put = coordinator.put.bind(coordinator)
      const get = coordinator.get.bind(coordinator)
      const del = coordinator.delete.bind(coordinator)
      coordinator.delete = async (key, options) => {
        await h.beforeDelete?.(key)
        return await del(key, options)
      }
      const watch = coordinator.watch.bind(coordinator)
      coordinator.watch = (prefix, listener) => watch(prefix, (event) => {
        if (h.holdWatch && event.key.startsWith(RECORD_PREFIX)) heldEvents.push(() => { listener(event) })
        else listener(event)
      })
      coordinator.put = async (key, value, options) => {
        if (h.held === undefined && h.holdWhen?.(key, value) === true) {
          h.held = { key, value, expectRevision: options?.expectRevision }
          throw new GalleonError('BACKEND_UNAVAILABLE', 'injected: the coordinator\'s answer was lost (the write is still in flight)')
        }
        return await put!(key, value, options)
      }
      coordinator.get = async (key) => {
        if (h.held !== undefined && h.held.key === key && h.released === undefined) {
          if (h.failReads > 0) {
            h.failReads--
            throw new GalleonError('BACKEND_UNAVAILABLE', 'injected: the coordinator is out of reach')
          }
          const entry = await get(key)
          if (h.releaseAfterReads !== undefined && ++reads >= h.releaseAfterReads) {
            await h.release()
            await h.afterRelease?.()
          }
          return entry
        }
        return await get(key)
      }
      return coordinator
    }
  }
  return h
}

describe('settleLostPut on the memory coordinator', () => {
  it('a compare-and-swap still in flight is fenced: applied afterwards, it fails, and the key keeps what was read', async () => {
    const h = holding()
    const coordinator = h.wrap(new MemoryCoordinatorCluster().coordinator())
    const first = await coordinator.put('k', 'v1')
    h.holdWhen = () => true
    const err = await coordinator.put('k', 'v2', { expectRevision: first!.revision }).catch((e: unknown) => e)
    assert.ok(isGalleonError(err, 'BACKEND_UNAVAILABLE'))
    const settled = await settleLostPut(coordinator, 'k', 'v2', first!.revision, err)
    assert.equal(settled.written, false)
    assert.equal(settled.entry?.value, 'v1')
    assert.ok(settled.entry!.revision > first!.revision, 'the fence moved the key\'s revision')
    assert.equal(await h.release(), undefined, 'the late write failed its compare-and-swap')
    assert.deepEqual(await coordinator.get('k'), settled.entry)
  })

  it('a compare-and-swap applied between the read and the fence is reported written', async () => {
    const h = holding()
    const coordinator = h.wrap(new MemoryCoordinatorCluster().coordinator())
    const first = await coordinator.put('k', 'v1')
    h.holdWhen = () => true
    h.releaseAfterReads = 1
    const err = await coordinator.put('k', 'v2', { expectRevision: first!.revision }).catch((e: unknown) => e)
    const settled = await settleLostPut(coordinator, 'k', 'v2', first!.revision, err)
    const applied = await h.released
    assert.ok(applied !== undefined, 'the late write applied (before the fence)')
    assert.deepEqual(settled, { written: true, entry: applied })
    assert.deepEqual(await coordinator.get('k'), applied)
  })

  it('a create-if-absent still in flight is fenced by making the write now: applied afterwards, it fails', async () => {
    const h = holding()
    const coordinator = h.wrap(new MemoryCoordinatorCluster().coordinator())
    h.holdWhen = () => true
    const err = await coordinator.put('k', 'mine', { expectRevision: 0 }).catch((e: unknown) => e)
    const settled = await settleLostPut(coordinator, 'k', 'mine', 0, err)
    assert.equal(settled.written, true)
    assert.equal(await h.release(), undefined)
    assert.deepEqual(await coordinator.get('k'), settled.entry)
  })

  it('when the key cannot be read, the outcome stays unknown: the original error', async () => {
    const h = holding()
    const coordinator = h.wrap(new MemoryCoordinatorCluster().coordinator())
    const first = await coordinator.put('k', 'v1')
    h.holdWhen = () => true
    h.failReads = 1
    const err = await coordinator.put('k', 'v2', { expectRevision: first!.revision }).catch((e: unknown) => e)
    await assert.rejects(settleLostPut(coordinator, 'k', 'v2', first!.revision, err), (thrown: unknown) => thrown === err)
  })
})

interface Node { g: GalleonFS, id: string }

async function cluster (count: number, wrap: Record<string, (coordinator: Coordinator) => Coordinator> = {}): Promise<{ network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, nodes: Node[] }> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const nodes: Node[] = []
  for (let i = 1; i <= count; i++) {
    const id = `n${i}`
    const dir = await mkdtemp(join(tmpdir(), `galleon-fence-${id}-`))
    dirs.push(dir)
    const coordinator = wrap[id]?.(coordinators.coordinator()) ?? coordinators.coordinator()
    const g = await GalleonFS.open({ storagePath: dir, cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator, leaseTtlMs: 1000 } })
    opened.push(g)
    nodes.push({ g, id })
  }
  await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === count))
  return { network, coordinators, nodes }
}

async function recordOf (coordinators: MemoryCoordinatorCluster, volumeId: string): Promise<{ record: ReplicaSetRecord | undefined, revision: number | undefined }> {
  const entry = await coordinators.coordinator().get(recordKey(volumeId))
  return { record: entry === undefined ? undefined : parseRecord(entry.value), revision: entry?.revision }
}

const recordWrite = (check: (record: ReplicaSetRecord) => boolean) => (key: string, value: string): boolean => {
  const record = key.startsWith(RECORD_PREFIX) ? parseRecord(value) : undefined
  return record !== undefined && check(record)
}

describe('replica-set record writes whose answer is lost while they are still in flight', () => {
  it('migrateVolume to a node, the record naming the new copy held and applied after the call ended: the late write changes nothing', { timeout: 120_000 }, async () => {
    const h = holding()
    const { coordinators, nodes } = await cluster(3, { n1: h.wrap })
    const [n1] = nodes as [Node, Node, Node]
    const volume = await n1.g.createVolume({ name: 'moved', sizeBytes: 16 * 4096, replicas: 2 })
    await until('both copies are in sync', async () => (await recordOf(coordinators, volume.id)).record?.inSync.length === 2)
    await n1.g.writeBlock('moved', 0, new Uint8Array(4096).fill(5), WriteConcern.WriteReplicated)
    const before = (await recordOf(coordinators, volume.id)).record!
    const other = before.nodes.find((n) => n !== 'n1') as string
    const target = other === 'n2' ? 'n3' : 'n2'
    h.holdWhen = recordWrite((record) => record.nodes.includes(target))
    const moved = await n1.g.migrateVolume('moved', { node: target }).then(() => 'ok', (err: GalleonError) => err.code)
    assert.ok(h.held !== undefined, 'the write naming the new copy was held')
    // The write's outcome was unknown: the move failed, leaving the volume as it was.
    assert.equal(moved, 'BACKEND_UNAVAILABLE')
    const settledRecord = await recordOf(coordinators, volume.id)
    assert.deepEqual([...settledRecord.record!.nodes].sort(), [...before.nodes].sort())
    // The write n1 gave up on reaches the coordinator now: it must not list a copy nobody fills.
    assert.equal(await h.release(), undefined, 'the write applied after n1 had read the record again and given the move up')
    assert.deepEqual(await recordOf(coordinators, volume.id), settledRecord, 'the record did not change after the call ended')
    // A second call moves the copy.
    assert.equal(await n1.g.migrateVolume('moved', { node: target }).then(() => 'ok', (err: GalleonError) => `${err.code}: ${err.message}`), 'ok')
    assert.deepEqual([...(await recordOf(coordinators, volume.id)).record!.nodes].sort(), [other, target].sort())
    assert.equal((await (nodes.find((n) => n.id === target) as Node).g.readBlock('moved', 0))[0], 5)
  })

  it('createVolume of a replicated volume whose record is held in flight and applied after the call ended: the volume is created, and the late write changes nothing', { timeout: 120_000 }, async () => {
    const h = holding()
    const { coordinators, nodes } = await cluster(2, { n1: h.wrap })
    const [n1, n2] = nodes as [Node, Node]
    h.holdWhen = recordWrite((record) => record.spec.name === 'born')
    const created = await n1.g.createVolume({ name: 'born', sizeBytes: 16 * 4096, replicas: 2 }).then((volume) => volume, (err: GalleonError) => err)
    assert.ok(h.held !== undefined, 'the record\'s first write was held')
    const id = (await n1.g.listVolumes()).find((v) => v.name === 'born')?.id ?? h.held.key.slice(RECORD_PREFIX.length)
    const settledRecord = await recordOf(coordinators, id)
    assert.equal(await h.release(), undefined, 'the create applied after n1 had read the record again')
    assert.deepEqual(await recordOf(coordinators, id), settledRecord, 'the record did not change after the call ended')
    // The record still absent was written by n1's fence: the volume is created, not left as a record without a volume.
    assert.ok(!(created instanceof Error), `created: ${String(created)}`)
    await until('both copies are in sync', async () => (await recordOf(coordinators, created.id)).record?.inSync.length === 2)
    await n1.g.writeBlock('born', 0, new Uint8Array(4096).fill(9), WriteConcern.WriteReplicated)
    assert.equal((await n2.g.readBlock('born', 0))[0], 9)
  })

  it('a hand-off of the primary role whose write is held in flight and cannot be settled: the old primary stays frozen (no write is acknowledged there) until the write is settled, then steps down', { timeout: 120_000 }, async () => {
    const h = holding()
    const { network, coordinators, nodes } = await cluster(3, { n1: h.wrap })
    const [n1] = nodes as [Node, Node, Node]
    const volume = await n1.g.createVolume({ name: 'handed', sizeBytes: 16 * 4096, replicas: 2 })
    await until('both copies are in sync', async () => (await recordOf(coordinators, volume.id)).record?.inSync.length === 2)
    const before = (await recordOf(coordinators, volume.id)).record!
    assert.equal(before.primary, 'n1')
    const other = before.nodes.find((n) => n !== 'n1') as string
    const target = other === 'n2' ? 'n3' : 'n2'
    // The write that hands the role on is held, and n1 cannot read the record while it is.
    h.holdWhen = recordWrite((record) => record.primary !== 'n1')
    h.failReads = Number.MAX_SAFE_INTEGER
    const moved = await n1.g.migrateVolume('handed', { node: target }).then(() => 'ok', (err: GalleonError) => err.code)
    assert.ok(h.held !== undefined, 'the hand-off was held')
    assert.equal(moved, 'BACKEND_UNAVAILABLE')
    const next = parseRecord(h.held.value)!.primary
    // The next primary hears no more of n1's stream: a write n1 acknowledged now would be on n1 alone.
    network.drop((m) => m.kind === 'repl:apply' && m.to === next && m.type === 'request', { silent: true })
    let outcome: string | undefined
    const write = n1.g.writeBlock('handed', 3, new Uint8Array(4096).fill(7), WriteConcern.WriteDurable).then(() => { outcome = 'ok' }, (err: GalleonError) => { outcome = err.code })
    await new Promise((resolve) => setTimeout(resolve, 500))
    assert.equal(outcome, undefined, 'n1 acknowledged a write while its hand-off could still land')
    // The hand-off lands: n1 settles it, steps down, and the write goes to the new primary.
    assert.notEqual(await h.release(), undefined, 'the held hand-off applied')
    network.drop(() => false)
    await write
    assert.equal(outcome, 'ok')
    assert.equal((await recordOf(coordinators, volume.id)).record?.primary, next)
    assert.equal((await (nodes.find((n) => n.id === next) as Node).g.readBlock('handed', 3))[0], 7, 'the acknowledged write is on the new primary')
  })

  it('a leave whose leaving mark lands after the leave failed (and a mark whose delete was lost) does not keep copies off the node: the node deletes its stale mark', { timeout: 120_000 }, async () => {
    const h = holding()
    const { coordinators, nodes } = await cluster(2, { n1: h.wrap })
    const mark = 'replication/leaving/n1'
    const observer = coordinators.coordinator()
    h.holdWhen = (key) => key === mark
    const left = await (nodes[0] as Node).g.leaveCluster().then(() => 'ok', (err: GalleonError) => err.code)
    assert.equal(left, 'BACKEND_UNAVAILABLE')
    // The put the leave gave up on lands now: n1 is marked as leaving while it stays a member.
    assert.notEqual(await h.release(), undefined)
    assert.notEqual(await observer.get(mark), undefined)
    await until('n1 deleted its stale leaving mark', async () => (await observer.get(mark)) === undefined, 30_000)
    // A mark whose delete never happened (as when the leave's own delete is lost) goes the same way.
    await observer.put(mark, JSON.stringify({ at: Date.now() }))
    await until('n1 deleted the leftover mark', async () => (await observer.get(mark)) === undefined, 30_000)
  })

  it('createVolume whose record create is held and no read answers: the call fails, and once the coordinator answers the record that landed late is removed (no record names n1 primary of a volume it does not hold)', { timeout: 120_000 }, async () => {
    const h = holding()
    const { coordinators, nodes } = await cluster(2, { n1: h.wrap })
    const [n1] = nodes as [Node, Node]
    h.holdWhen = recordWrite((record) => record.spec.name === 'orphan')
    h.failReads = Number.MAX_SAFE_INTEGER
    const created = await n1.g.createVolume({ name: 'orphan', sizeBytes: 16 * 4096, replicas: 2 }).then(() => 'ok', (err: GalleonError) => err.code)
    assert.ok(h.held !== undefined, 'the create was held')
    assert.equal(created, 'BACKEND_UNAVAILABLE')
    assert.deepEqual((await n1.g.listVolumes()).map((v) => v.name), [])
    const id = h.held.key.slice(RECORD_PREFIX.length)
    h.failReads = 0
    assert.notEqual(await h.release(), undefined, 'the create landed late')
    // Changed by another node just before the first removal: that one misses, and a later one removes it.
    let changedOnce = false
    h.beforeDelete = async (key) => {
      if (changedOnce || key !== (h.held as { key: string }).key) return
      changedOnce = true
      const observer = coordinators.coordinator()
      const entry = await observer.get(key)
      if (entry !== undefined) await observer.put(key, JSON.stringify({ ...parseRecord(entry.value)!, placement: { strategy: 'spread' } }), { expectRevision: entry.revision })
    }
    await until('the late record is removed', async () => (await recordOf(coordinators, id)).record === undefined, 30_000)
    assert.ok(changedOnce, 'the record was changed under the first removal')
    // The name is free: a new create works.
    assert.equal(await n1.g.createVolume({ name: 'orphan', sizeBytes: 16 * 4096, replicas: 2 }).then(() => 'ok', (err: GalleonError) => `${err.code}: ${err.message}`), 'ok')
  })

  it('createVolume whose record create lands late and is changed by another node before n1 reads it: the create counts as made (it was), the volume exists', { timeout: 120_000 }, async () => {
    const h = holding()
    const { coordinators, nodes } = await cluster(2, { n1: h.wrap })
    const [n1] = nodes as [Node, Node]
    const observer = coordinators.coordinator()
    h.holdWhen = recordWrite((record) => record.spec.name === 'changed')
    h.releaseAfterReads = 1
    h.afterRelease = async () => {
      // Another node's write (as the leader's placing a copy) before n1's next read.
      const key = (h.held as { key: string }).key
      const entry = await observer.get(key)
      const record = parseRecord(entry!.value)!
      await observer.put(key, JSON.stringify({ ...record, placement: { strategy: 'spread' } }), { expectRevision: entry!.revision })
    }
    const created = await n1.g.createVolume({ name: 'changed', sizeBytes: 16 * 4096, replicas: 2 }).then(() => 'ok', (err: GalleonError) => `${err.code}: ${err.message}`)
    assert.ok(h.held !== undefined, 'the create was held')
    assert.equal(created, 'ok')
    assert.deepEqual((await n1.g.listVolumes()).map((v) => v.name), ['changed'])
    const id = h.held.key.slice(RECORD_PREFIX.length)
    assert.equal((await recordOf(coordinators, id)).record?.primary, 'n1')
    await n1.g.writeBlock('changed', 0, new Uint8Array(4096).fill(4), WriteConcern.WriteDurable)
  })

  for (const [reads, failReads] of [['the record can be read', 0], ['the first read of the record fails', 1]] as const) {
    it(`a copy listed in sync by a write held in flight, that the coordinator applies after the primary read the record again (${reads}): no write is acknowledged without a copy the record lists in sync`, { timeout: 120_000 }, async () => {
      const h = holding()
      const { network, coordinators, nodes } = await cluster(3, { n1: h.wrap })
      const [n1] = nodes as [Node, Node, Node]
      const volume = await n1.g.createVolume({ name: 'listed', sizeBytes: 16 * 4096, replicas: 3 })
      await until('all three copies are in sync', async () => (await recordOf(coordinators, volume.id)).record?.inSync.length === 3)
      // n2's stream breaks: it is taken out of the in-sync list, and resyncs once it is back.
      network.drop((m) => m.kind === 'repl:apply' && m.to === 'n2')
      await n1.g.writeBlock('listed', 0, new Uint8Array(4096).fill(1), WriteConcern.WriteReplicated)
      await until('n2 is out of sync', async () => (await recordOf(coordinators, volume.id)).record?.inSync.includes('n2') === false)
      // When n1 lists n2 in sync again, that write is held in flight, and at that moment n2 stops
      // receiving the stream (without an error: it just stops answering). The held write reaches
      // the coordinator after n1's second read of the record (n1 read it again to find out).
      h.holdWhen = recordWrite((record) => {
        if (!record.inSync.includes('n2')) return false
        network.drop((m) => m.kind === 'repl:apply' && m.to === 'n2' && m.type === 'request', { silent: true })
        return true
      })
      h.releaseAfterReads = 2
      h.failReads = failReads
      h.holdWatch = true
      network.drop(() => false)
      await until('n1 listed n2 in sync again and the write was held', () => h.held !== undefined)
      await until('the held write reached the coordinator', () => h.released !== undefined)
      await h.released
      const written = await n1.g.writeBlock('listed', 1, new Uint8Array(4096).fill(2), WriteConcern.WriteReplicated).then(() => 'ok', (err: GalleonError) => err.code)
      const { record } = await recordOf(coordinators, volume.id)
      h.releaseWatch()
      network.drop(() => false)
      assert.equal(written, 'ok')
      assert.ok(record?.inSync.includes('n2') === false, `the write was acknowledged as WriteReplicated while the record lists n2, which never got it, in sync (${record?.inSync.join(', ')})`)
    })
  }
})

// ---------------------------------------------------------------------------- real etcd

const skip = etcdSkipReason()

describe('settleLostPut on etcd', () => {
  it('a compare-and-swap etcd gets only after the caller read the key again and fenced it fails there: the key keeps what was read', { skip, timeout: 60_000 }, async () => {
    const server = await (etcd ??= startEtcd())
    const relay = await frameRelay(server.endpoint)
    const handle = await EtcdCoordinator.connect({ endpoints: [relay.endpoint], prefix: '/fence/', requestTimeoutMs: 1000 })
    const observer = await EtcdCoordinator.connect({ endpoints: [server.endpoint], prefix: '/fence/' })
    try {
      const first = await handle.put('k', 'v1')
      relay.hold()
      const err = await handle.put('k', 'v2', { expectRevision: first!.revision }).catch((e: unknown) => e)
      assert.ok(isGalleonError(err, 'BACKEND_UNAVAILABLE'), `the write's outcome is unknown to the handle: ${String(err)}`)
      // The handle reaches etcd again; its write still waits in the relay.
      relay.detach()
      await until('the handle reaches etcd again', async () => await handle.get('other').then(() => true, () => false), 20_000)
      const settled = await settleLostPut(handle, 'k', 'v2', first!.revision, err)
      assert.equal(settled.written, false)
      assert.equal(settled.entry?.value, 'v1')
      // Now etcd gets the write (every send of it): its compare-and-swap fails.
      await relay.flush()
      assert.deepEqual(await observer.get('k'), settled.entry)
    } finally {
      await handle.close()
      await observer.close()
      await relay.close()
    }
  })
})
