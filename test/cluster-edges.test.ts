// Edge cases of the cluster paths found in a bug hunt: storage classes held by cluster migrations,
// admin operations on a node that stops being the primary while they wait, the coordinator's
// answers lost after a write, and peers that go silent on the tcp transport (keepalives).

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { GalleonFS, GalleonError, WriteConcern } from '../src/index.js'
import type { Coordinator } from '../src/drivers.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { TcpTransport, parseAddress } from '../backends/tcp/index.js'
import { RECORD_PREFIX, parseRecord, recordKey, type ReplicaSetRecord } from '../src/replication/records.js'
import { until } from './support/wait.js'
import { recordOf } from './support/replica-records.js'

interface Node { g: GalleonFS, id: string, coordinator: Coordinator }

const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

function codeOf (result: PromiseSettledResult<unknown>): string {
  return result.status === 'fulfilled' ? 'ok' : String((result.reason as GalleonError)?.code ?? result.reason)
}

async function startNode (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, id: string, wrap?: (coordinator: Coordinator) => Coordinator): Promise<Node> {
  const dir = await mkdtemp(join(tmpdir(), `galleon-cluster-edges-${id}-`))
  dirs.push(dir)
  const coordinator = wrap === undefined ? coordinators.coordinator() : wrap(coordinators.coordinator())
  const g = await GalleonFS.open({ storagePath: dir, cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator, leaseTtlMs: 1000 } })
  opened.push(g)
  return { g, id, coordinator }
}

async function cluster (count: number, wrap: Record<string, (coordinator: Coordinator) => Coordinator> = {}): Promise<{ network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, nodes: Node[] }> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const nodes: Node[] = []
  for (let i = 0; i < count; i++) nodes.push(await startNode(network, coordinators, `n${i + 1}`, wrap[`n${i + 1}`]))
  await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === count))
  return { network, coordinators, nodes }
}

/**
 * A coordinator handle with faults a test switches on: `holdPuts` makes writes to replica-set
 * records wait for it, then fail (the coordinator out of reach); `losePutReply` lets the write
 * through and then fails the call (the answer lost: the caller cannot tell that it was written).
 */
interface FaultyCoordinator {
  holdPuts: Promise<void> | undefined
  /** Writes to replica-set records waiting on holdPuts. */
  held: number
  losePutReply: ((record: ReplicaSetRecord) => boolean) | undefined
  /** Set when a reply was lost (the hook above said so): what was written. */
  lost: ReplicaSetRecord | undefined
  /** Reads of replica-set records fail while this is above 0 (each failure counts it down). */
  failGets: number
  /** Watch events on replica-set records are held back while true (a lagging watch). */
  holdWatch: boolean
  releaseWatch: () => void
  wrap: (coordinator: Coordinator) => Coordinator
}

function faulty (): FaultyCoordinator {
  const heldEvents: Array<() => void> = []
  const faults: FaultyCoordinator = {
    holdPuts: undefined,
    held: 0,
    losePutReply: undefined,
    lost: undefined,
    failGets: 0,
    holdWatch: false,
    releaseWatch: () => {
      faults.holdWatch = false
      for (const deliver of heldEvents.splice(0)) deliver()
    },
    wrap: (coordinator) => {
      const put = coordinator.put.bind(coordinator)
      const get = coordinator.get.bind(coordinator)
      const watch = coordinator.watch.bind(coordinator)
      coordinator.put = async (key, value, options) => {
        if (!key.startsWith(RECORD_PREFIX)) return await put(key, value, options)
        if (faults.holdPuts !== undefined) {
          faults.held++
          await faults.holdPuts
          throw new GalleonError('BACKEND_UNAVAILABLE', 'injected: the coordinator is out of reach')
        }
        const written = await put(key, value, options)
        const record = parseRecord(value)
        if (written !== undefined && record !== undefined && faults.losePutReply?.(record) === true) {
          faults.losePutReply = undefined
          faults.lost = record
          throw new GalleonError('BACKEND_UNAVAILABLE', 'injected: the coordinator\'s answer was lost')
        }
        return written
      }
      coordinator.get = async (key) => {
        if (key.startsWith(RECORD_PREFIX) && faults.failGets > 0) {
          faults.failGets--
          throw new GalleonError('BACKEND_UNAVAILABLE', 'injected: the coordinator is out of reach')
        }
        return await get(key)
      }
      coordinator.watch = (prefix, listener) => watch(prefix, (event) => {
        if (faults.holdWatch && event.key.startsWith(RECORD_PREFIX)) heldEvents.push(() => { listener(event) })
        else listener(event)
      })
      return coordinator
    }
  }
  return faults
}

/** Names `primary` the primary of the volume, one epoch on, as the cluster leader does on a failover. */
async function failOver (coordinators: MemoryCoordinatorCluster, volumeId: string, primary: string): Promise<void> {
  const coordinator = coordinators.coordinator()
  const entry = await coordinator.get(recordKey(volumeId))
  const record = entry === undefined ? undefined : parseRecord(entry.value)
  assert.ok(entry !== undefined && record !== undefined)
  const written = await coordinator.put(recordKey(volumeId), JSON.stringify({ ...record, primary, epoch: record.epoch + 1, inSync: [primary], handoff: undefined }), { expectRevision: entry.revision })
  assert.ok(written !== undefined, 'the failover was written')
}

/** Lets every queued promise callback and I/O callback run (not a wait for time). */
async function settle (): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve))
}


async function classExists (g: GalleonFS, name: string): Promise<boolean> {
  return await g.getStorageClass(name).then(() => true, () => false)
}

describe('cluster migrations hold their target storage class', () => {
  it('deleteStorageClass while a 1-copy volume becomes replicated in the class: never a volume (or cluster record) of a deleted class', { timeout: 120_000 }, async () => {
    const { coordinators, nodes } = await cluster(2)
    const [n1, n2] = nodes as [Node, Node]
    for (const node of nodes) await node.g.createStorageClass({ name: 'two-copies', parameters: { replication: '2' } })
    const volume = await n1.g.createVolume({ name: 'grows', sizeBytes: 16 * 4096 })
    await n1.g.writeBlock('grows', 0, new Uint8Array(4096).fill(7))
    const [migrated, deleted] = await Promise.allSettled([n1.g.migrateVolume('grows', { storageClass: 'two-copies' }), n1.g.deleteStorageClass('two-copies')])
    assert.ok((migrated.status === 'fulfilled') !== (deleted.status === 'fulfilled'), `either the volume is migrated or the class deleted, never both: ${codeOf(migrated)} / ${codeOf(deleted)}`)
    const local = await n1.g.getVolume('grows')
    assert.ok(await classExists(n1.g, local.storageClass), `the volume's class ${local.storageClass} exists`)
    const record = await recordOf(coordinators, volume.id)
    if (record !== undefined) assert.ok(await classExists(n1.g, record.spec.storageClass), `the class of the cluster's record, ${record.spec.storageClass}, exists`)
    if (migrated.status === 'fulfilled') {
      assert.equal(codeOf(deleted), 'BUSY')
      await until('the copy on n2 is in sync', async () => (await n1.g.replicationStatus('grows')).inSync.length === 2)
      assert.equal((await n2.g.getVolume('grows')).storageClass, 'two-copies')
    }
  })

  it('deleteStorageClass while a replicated volume migrates to the class: never a volume (or cluster record) of a deleted class', { timeout: 120_000 }, async () => {
    const { coordinators, nodes } = await cluster(2)
    const [n1] = nodes as [Node, Node]
    for (const node of nodes) {
      await node.g.createStorageClass({ name: 'pair-a', parameters: { replication: '2' } })
      await node.g.createStorageClass({ name: 'pair-b', parameters: { replication: '2', tier: 'b' } })
    }
    const volume = await n1.g.createVolume({ name: 'relabelled', sizeBytes: 16 * 4096, storageClass: 'pair-a' })
    await until('both copies are in sync', async () => (await n1.g.replicationStatus('relabelled')).inSync.length === 2)
    const [migrated, deleted] = await Promise.allSettled([n1.g.migrateVolume('relabelled', { storageClass: 'pair-b' }), n1.g.deleteStorageClass('pair-b')])
    assert.ok((migrated.status === 'fulfilled') !== (deleted.status === 'fulfilled'), `either the volume is migrated or the class deleted, never both: ${codeOf(migrated)} / ${codeOf(deleted)}`)
    const record = await recordOf(coordinators, volume.id)
    assert.ok(record !== undefined)
    assert.ok(await classExists(n1.g, record.spec.storageClass), `the class of the cluster's record, ${record.spec.storageClass}, exists on n1`)
    await until('n1\'s copy is in the record\'s class', async () => (await n1.g.getVolume('relabelled')).storageClass === record.spec.storageClass)
  })
})

describe('copies converting to a storage class hold it on their node', () => {
  it('deleteStorageClass on another node just as its copy starts converting: never a copy of a deleted class', { timeout: 120_000 }, async () => {
    let onReshaped: (() => void) | undefined
    // Calls onReshaped (once) right after n2 takes up the record that names the new class.
    const watchReshape = (coordinator: Coordinator): Coordinator => {
      const watch = coordinator.watch.bind(coordinator)
      coordinator.watch = (prefix, listener) => watch(prefix, (event) => {
        listener(event)
        if (event.entry !== undefined && parseRecord(event.entry.value)?.spec.storageClass === 'pair-b' && onReshaped !== undefined) {
          const hook = onReshaped
          onReshaped = undefined
          hook()
        }
      })
      return coordinator
    }
    const { coordinators, nodes } = await cluster(2, { n2: watchReshape })
    const [n1, n2] = nodes as [Node, Node]
    for (const node of nodes) {
      await node.g.createStorageClass({ name: 'pair-a', parameters: { replication: '2' } })
      await node.g.createStorageClass({ name: 'pair-b', parameters: { replication: '2', tier: 'b' } })
    }
    const volume = await n1.g.createVolume({ name: 'relabelled', sizeBytes: 16 * 4096, storageClass: 'pair-a' })
    await until('both copies are in sync', async () => (await n1.g.replicationStatus('relabelled')).inSync.length === 2)
    let deleted: Promise<PromiseSettledResult<void>> | undefined
    onReshaped = () => { deleted = n2.g.deleteStorageClass('pair-b').then((value) => ({ status: 'fulfilled', value }), (reason: unknown) => ({ status: 'rejected', reason })) }
    const migrated = await n1.g.migrateVolume('relabelled', { storageClass: 'pair-b' }).then(() => 'ok', (err: GalleonError) => err.code)
    assert.ok(deleted !== undefined, 'n2 saw the record naming pair-b')
    const outcome = await deleted
    const record = await recordOf(coordinators, volume.id)
    assert.equal(record?.spec.storageClass, 'pair-b')
    // Either n2 refused the deletion (its copy converts), or its copy did not convert (and says why).
    const copy = await n2.g.getVolume('relabelled')
    assert.ok(await classExists(n2.g, copy.storageClass), `n2's copy must be in a class n2 has; it is in ${copy.storageClass} (deletion: ${codeOf(outcome)}, migration: ${migrated})`)
    if (outcome.status === 'rejected') assert.equal(codeOf(outcome), 'BUSY')
  })
})

describe('snapshot calls on a primary that is demoted while they wait for their turn', () => {
  for (const op of ['createSnapshot', 'deleteSnapshot'] as const) {
    it(`${op}: runs on the new primary (or is refused), never only on the demoted node`, { timeout: 120_000 }, async () => {
      const faults = faulty()
      const { coordinators, nodes } = await cluster(2, { n1: faults.wrap })
      const [n1, n2] = nodes as [Node, Node]
      const volume = await n1.g.createVolume({ name: 'demoted', sizeBytes: 16 * 4096, replicas: 2 })
      await n1.g.writeBlock('demoted', 0, new Uint8Array(4096).fill(1), WriteConcern.WriteReplicated)
      if (op === 'deleteSnapshot') await n1.g.createSnapshot('demoted', 'before')
      await until('both copies are in sync and have the same snapshots', async () => (await n1.g.replicationStatus('demoted')).inSync.length === 2 && (await n2.g.listSnapshots('demoted')).length === (await n1.g.listSnapshots('demoted')).length)
      // An expansion on n1 takes the admin turn and waits for the coordinator; the snapshot call waits behind it.
      let reach!: () => void
      faults.holdPuts = new Promise<void>((resolve) => { reach = resolve })
      const expanded = n1.g.expandVolume('demoted', 32 * 4096).then(() => 'ok', (err: GalleonError) => err.code)
      await until('the expansion waits for the coordinator', () => faults.held > 0)
      const call = op === 'createSnapshot' ? n1.g.createSnapshot('demoted', 'during') : n1.g.deleteSnapshot('demoted', 'before')
      const outcome = call.then(() => 'ok', (err: GalleonError) => err.code)
      await settle()
      // Meanwhile the cluster fails the volume over to n2.
      await failOver(coordinators, volume.id, 'n2')
      await until('n1 is demoted and n2 primary', async () => (await n1.g.replicationStatus('demoted')).role === 'replica' && (await n2.g.replicationStatus('demoted')).role === 'primary')
      faults.holdPuts = undefined
      reach()
      // n1 lost the role under the expansion (its record write failed): it went on at n2 (h74).
      assert.equal(await expanded, 'ok')
      assert.equal((await n2.g.getVolume('demoted')).sizeBytes, 32 * 4096, 'the new primary expanded the volume')
      const result = await outcome
      const expected = op === 'createSnapshot' ? ['during'] : []
      const onPrimary = (await n2.g.listSnapshots('demoted')).map((s) => s.name)
      if (result === 'ok') {
        assert.deepEqual(onPrimary, expected, `the ${op} reached the primary`)
      } else {
        assert.equal(result, 'NOT_LEADER')
        assert.deepEqual(onPrimary, op === 'createSnapshot' ? [] : ['before'])
      }
      // The demoted copy ends with the primary's snapshots (it follows the primary's stream).
      await until('n1 has the primary\'s snapshots', async () => JSON.stringify((await n1.g.listSnapshots('demoted')).map((s) => s.name)) === JSON.stringify(onPrimary))
    })
  }
})

describe('record changes whose answer from the coordinator is lost', () => {
  for (const [reads, failedReads] of [['the record can be read', 0], ['the record cannot be read to find out', 2], ['the record cannot be read until after the copy fails', 3]] as const) {
    it(`a copy listed in sync by a write whose answer was lost (${reads}): no write is acknowledged without a copy the record lists in sync`, { timeout: 120_000 }, async () => {
      const faults = faulty()
      const { network, coordinators, nodes } = await cluster(3, { n1: faults.wrap })
      const [n1] = nodes as [Node, Node, Node]
      const volume = await n1.g.createVolume({ name: 'listed', sizeBytes: 16 * 4096, replicas: 3 })
      await until('all three copies are in sync', async () => (await recordOf(coordinators, volume.id))?.inSync.length === 3)
      // n2's stream breaks: it is taken out of the in-sync list, and resyncs once it is back.
      network.drop((m) => m.kind === 'repl:apply' && m.to === 'n2')
      await n1.g.writeBlock('listed', 0, new Uint8Array(4096).fill(1), WriteConcern.WriteReplicated)
      await until('n2 is out of sync', async () => (await recordOf(coordinators, volume.id))?.inSync.includes('n2') === false)
      // When n1 lists n2 in sync again, the coordinator's answer is lost (and n1's watch lags), and
      // at that moment n2 stops receiving the stream (without an error: it just stops answering).
      faults.holdWatch = true
      faults.losePutReply = (record) => {
        if (!record.inSync.includes('n2')) return false
        // (Two reads n1 makes to find out, and the one to take n2 out when its stream fails.)
        faults.failGets = failedReads
        network.drop((m) => m.kind === 'repl:apply' && m.to === 'n2' && m.type === 'request', { silent: true })
        return true
      }
      network.drop(() => false)
      await until('n1 listed n2 in sync again and did not hear back', () => faults.lost !== undefined)
      const written = await n1.g.writeBlock('listed', 1, new Uint8Array(4096).fill(2), WriteConcern.WriteReplicated).then(() => 'ok', (err: GalleonError) => err.code)
      const record = await recordOf(coordinators, volume.id)
      faults.releaseWatch()
      network.drop(() => false)
      // Acknowledged once n2 is out of the list (n3 has it), not before.
      assert.equal(written, 'ok')
      assert.ok(record?.inSync.includes('n2') === false, `the write was acknowledged as WriteReplicated while the record lists n2, which never got it, in sync (${record?.inSync.join(', ')})`)
    })
  }

  it('createVolume of a replicated volume whose record was written with the answer lost: the volume is created (the record read again shows it), not left as a record without a volume', { timeout: 120_000 }, async () => {
    const faults = faulty()
    const { coordinators, nodes } = await cluster(2, { n1: faults.wrap })
    const [n1, n2] = nodes as [Node, Node]
    faults.losePutReply = (record) => record.spec.name === 'born'
    const created = await n1.g.createVolume({ name: 'born', sizeBytes: 16 * 4096, replicas: 2 }).then((volume) => volume, (err: GalleonError) => err)
    assert.ok(faults.lost !== undefined, 'the answer to the record\'s first write was lost')
    assert.ok(!(created instanceof Error), `created: ${String(created)}`)
    await until('both copies are in sync', async () => (await recordOf(coordinators, created.id))?.inSync.length === 2)
    await n1.g.writeBlock('born', 0, new Uint8Array(4096).fill(9), WriteConcern.WriteReplicated)
    assert.equal((await n2.g.readBlock('born', 0))[0], 9)
  })

  for (const [copies, reread] of [[1, 'answers'], [1, 'is out of reach too'], [2, 'is out of reach too']] as const) {
    it(`migrateVolume to a node, the ${copies}-copy volume's new copy listed with the answer lost (a read of the record ${reread}): the move completes, or fails leaving the volume as it was and a second call moves it`, { timeout: 120_000 }, async () => {
      const faults = faulty()
      const { coordinators, nodes } = await cluster(3, { n1: faults.wrap })
      const [n1] = nodes as [Node, Node, Node]
      const volume = await n1.g.createVolume({ name: 'moved', sizeBytes: 16 * 4096, replicas: copies })
      if (copies > 1) await until('both copies are in sync', async () => (await recordOf(coordinators, volume.id))?.inSync.length === 2)
      await n1.g.writeBlock('moved', 0, new Uint8Array(4096).fill(5), WriteConcern.WriteDurable)
      const before = copies === 1 ? ['n1'] : [...((await recordOf(coordinators, volume.id))?.nodes ?? [])].sort()
      const target = ['n2', 'n3'].find((n) => !before.includes(n)) as string
      faults.losePutReply = (record) => {
        if (!record.nodes.includes(target)) return false
        if (reread !== 'answers') faults.failGets = 1
        return true
      }
      const first = await n1.g.migrateVolume('moved', { node: target }).then(() => 'ok', (err: GalleonError) => err.code)
      assert.ok(faults.lost !== undefined, 'the answer to the record naming the new copy was lost')
      if (reread === 'answers') {
        // The record read again shows the write happened: nothing went wrong.
        assert.equal(first, 'ok')
      } else {
        assert.equal(first, 'BACKEND_UNAVAILABLE')
        if (copies === 1) {
          assert.equal((await n1.g.replicationStatus('moved')).epoch, undefined, 'a 1-copy volume whose move failed is a local volume again')
        } else {
          assert.deepEqual([...((await recordOf(coordinators, volume.id))?.nodes ?? [])].sort(), before, 'no copy was left on the target')
        }
        const second = await n1.g.migrateVolume('moved', { node: target }).then(() => 'ok', (err: GalleonError) => `${err.code}: ${err.message}`)
        assert.equal(second, 'ok')
      }
      const after = await recordOf(coordinators, volume.id)
      assert.deepEqual([...(after?.nodes ?? [])].sort(), [...before.filter((n) => n !== 'n1'), target].sort())
      const holder = nodes.find((n) => n.id === target) as Node
      assert.equal((await holder.g.readBlock('moved', 0))[0], 5)
    })
  }

  for (const reread of ['answers', 'is out of reach too'] as const) {
    it(`leaveCluster whose new copy's listing in the record lost its answer (a read of the record ${reread}): the leave, or a second call, completes with the class's number of copies`, { timeout: 120_000 }, async () => {
      const faults = faulty()
      const { coordinators, nodes } = await cluster(3, { n1: faults.wrap })
      const [n1, n2, n3] = nodes as [Node, Node, Node]
      const volume = await n1.g.createVolume({ name: 'handed', sizeBytes: 16 * 4096, replicas: 2 })
      await until('both copies are in sync', async () => (await recordOf(coordinators, volume.id))?.inSync.length === 2)
      await n1.g.writeBlock('handed', 0, new Uint8Array(4096).fill(3), WriteConcern.WriteReplicated)
      const before = await recordOf(coordinators, volume.id)
      assert.ok(before !== undefined)
      const other = before.nodes.find((n) => n !== 'n1') as string
      const spare = other === 'n2' ? 'n3' : 'n2'
      faults.losePutReply = (record) => {
        if (!record.nodes.includes(spare)) return false
        if (reread !== 'answers') faults.failGets = 1
        return true
      }
      const first = await n1.g.leaveCluster().then(() => 'ok', (err: GalleonError) => err.code)
      assert.ok(faults.lost !== undefined, 'the answer to the record naming the new copy was lost')
      // Where the record could be read again, it shows the write happened: nothing went wrong.
      if (reread === 'answers') assert.equal(first, 'ok')
      if (first !== 'ok') {
        // The caller saw an error: the same call again finishes the leave.
        const second = await n1.g.leaveCluster().then(() => 'ok', (err: GalleonError) => `${err.code}: ${err.message}`)
        assert.equal(second, 'ok', `the first call failed with ${first}; the second`)
      }
      const after = await recordOf(coordinators, volume.id)
      assert.deepEqual([...(after?.nodes ?? [])].sort(), [other, spare].sort())
      assert.equal(after?.spec.replicas, 2)
      await until('both remaining copies are in sync', async () => (await recordOf(coordinators, volume.id))?.inSync.length === 2)
      const survivor = other === 'n2' ? n2 : n3
      assert.equal((await survivor.g.readBlock('handed', 0))[0], 3)
    })
  }
})

/**
 * A TCP relay on 127.0.0.1 that can go silent: after `silence()`, the connections it relays drop
 * every byte both ways and stay open (what a dialer sees of a half-open connection, or of a peer
 * behind a dead middlebox); connections made later are relayed again.
 */
class SilentRelay {
  readonly #target: { host: string, port: number }
  readonly #server: Server
  readonly #sockets = new Set<Socket>()
  #silent = new Set<Socket>()
  #accepted = 0

  constructor (target: string) {
    this.#target = parseAddress(target)
    this.#server = createServer((client) => {
      this.#accepted++
      const upstream = connect(this.#target)
      for (const socket of [client, upstream]) {
        this.#sockets.add(socket)
        socket.on('error', () => {})
        socket.once('close', () => { this.#sockets.delete(socket); this.#silent.delete(socket) })
      }
      client.on('data', (chunk) => { if (!this.#silent.has(client)) upstream.write(chunk) })
      upstream.on('data', (chunk) => { if (!this.#silent.has(client)) client.write(chunk) })
      client.once('close', () => { upstream.destroy() })
      upstream.once('close', () => { client.destroy() })
    })
  }

  /** Connections accepted so far. */
  get accepted (): number { return this.#accepted }

  async listen (): Promise<string> {
    await new Promise<void>((resolve) => { this.#server.listen(0, '127.0.0.1', resolve) })
    return `127.0.0.1:${(this.#server.address() as AddressInfo).port}`
  }

  silence (): void {
    for (const socket of this.#sockets) this.#silent.add(socket)
  }

  async close (): Promise<void> {
    for (const socket of this.#sockets) socket.destroy()
    await new Promise<void>((resolve) => { this.#server.close(() => { resolve() }) })
  }
}

const SECRET = 'cluster-edges-secret'
const echo = async (from: string, request: { kind: string, header: Readonly<Record<string, unknown>>, payload?: Uint8Array }): Promise<{ kind: string, header: Record<string, unknown> }> => {
  if (request.kind === 'slow') await new Promise((resolve) => setTimeout(resolve, Number(request.header.ms)))
  return { kind: 'echo', header: { from, ...request.header } }
}

describe('tcp transport: peers that go silent', () => {
  it('a connection whose peer goes silent without closing is closed after the keepalive timeout: the request on it fails at once, the next one dials again', { timeout: 120_000 }, async () => {
    const server = new TcpTransport({ nodeId: 'server', clusterSecret: SECRET })
    const relay = new SilentRelay(await server.listen(echo))
    const client = new TcpTransport({ nodeId: 'client', clusterSecret: SECRET, keepaliveIntervalMs: 100, keepaliveTimeoutMs: 400 })
    try {
      const via = await relay.listen()
      assert.equal((await client.request(via, { kind: 'x', header: { n: 1 } })).header.n, 1)
      relay.silence()
      // Far longer than the keepalive's timeout: it is not this request's timeout that ends it.
      const started = Date.now()
      const stuck = await client.request(via, { kind: 'x', header: { n: 2 } }, { timeoutMs: 30_000 }).then(() => undefined, (err: GalleonError) => err)
      assert.equal(stuck?.code, 'BACKEND_UNAVAILABLE')
      assert.match(stuck.message, /keepalive/, `failed because the connection was given up, not by its own timeout after ${Date.now() - started} ms: ${stuck.message}`)
      await until('the silent connection is closed', () => client.stats().outboundConnections === 0)
      assert.equal((await client.request(via, { kind: 'x', header: { n: 3 } })).header.n, 3)
      assert.equal(relay.accepted, 2, 'the next request dialed again')
    } finally {
      await Promise.all([client.close(), server.close()])
      await relay.close()
    }
  })

  it('an idle connection whose peer goes silent is closed too, before any request needs it', { timeout: 120_000 }, async () => {
    const server = new TcpTransport({ nodeId: 'server', clusterSecret: SECRET })
    const relay = new SilentRelay(await server.listen(echo))
    const client = new TcpTransport({ nodeId: 'client', clusterSecret: SECRET, keepaliveIntervalMs: 100, keepaliveTimeoutMs: 400 })
    try {
      const via = await relay.listen()
      await client.request(via, { kind: 'x', header: {} })
      relay.silence()
      await until('the silent idle connection is closed', () => client.stats().outboundConnections === 0)
      assert.equal((await client.request(via, { kind: 'x', header: { n: 4 } })).header.n, 4)
    } finally {
      await Promise.all([client.close(), server.close()])
      await relay.close()
    }
  })

  it('a peer that is only slow to answer keeps its connection: keepalives are answered while its handler runs', { timeout: 120_000 }, async () => {
    const server = new TcpTransport({ nodeId: 'server', clusterSecret: SECRET })
    const handled: string[] = []
    const address = await server.listen(async (from, request) => { handled.push(request.kind); return await echo(from, request) })
    const client = new TcpTransport({ nodeId: 'client', clusterSecret: SECRET, keepaliveIntervalMs: 50, keepaliveTimeoutMs: 200 })
    try {
      const reply = await client.request(address, { kind: 'slow', header: { ms: 1500 } }, { timeoutMs: 30_000 })
      assert.equal(reply.header.ms, 1500)
      assert.equal(client.stats().outboundConnections, 1)
      assert.equal(server.stats().inboundConnections, 1, 'one connection all along')
      assert.deepEqual(handled, ['slow'], 'the keepalives never reached the handler')
      assert.equal(client.stats().completed, 1)
    } finally {
      await Promise.all([client.close(), server.close()])
    }
  })

  it('a peer process stopped with SIGSTOP: the request fails once the keepalive goes unanswered; after SIGCONT the next request dials again', { timeout: 120_000 }, async (t) => {
    if (process.platform === 'win32') { t.skip('needs SIGSTOP'); return }
    const root = fileURLToPath(new URL('..', import.meta.url))
    const tsx = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href
    const child = spawn(process.execPath, ['--import', tsx, join(root, 'test', 'fixtures', 'transport-node.ts'), 'stopped', SECRET, '0'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] })
    const exited = new Promise<void>((resolve) => { child.once('exit', () => { resolve() }) })
    const client = new TcpTransport({ nodeId: 'client', clusterSecret: SECRET, keepaliveIntervalMs: 100, keepaliveTimeoutMs: 500 })
    try {
      const address = await new Promise<string>((resolve, reject) => {
        let stdout = ''
        child.stdout.on('data', (chunk: Buffer) => {
          stdout += chunk.toString()
          if (stdout.includes('\n')) resolve((JSON.parse(stdout.split('\n')[0] as string) as { address: string }).address)
        })
        child.once('exit', (code) => { reject(new Error(`the node process exited (${String(code)}) before listening`)) })
      })
      assert.equal((await client.request(address, { kind: 'whoami', header: {} }, { timeoutMs: 30_000 })).header.pid, child.pid)
      child.kill('SIGSTOP')
      const stuck = await client.request(address, { kind: 'whoami', header: {} }, { timeoutMs: 30_000 }).then(() => undefined, (err: GalleonError) => err)
      assert.equal(stuck?.code, 'BACKEND_UNAVAILABLE')
      assert.match(stuck.message, /keepalive/)
      child.kill('SIGCONT')
      assert.equal((await client.request(address, { kind: 'whoami', header: {} }, { timeoutMs: 30_000 })).header.pid, child.pid)
    } finally {
      child.kill('SIGCONT')
      child.kill('SIGKILL')
      await exited
      await client.close()
    }
  })
})
