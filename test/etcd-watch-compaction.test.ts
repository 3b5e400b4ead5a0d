// Watches of the etcd coordinator that resume after etcd compacted the revision they would resume
// from: a quiet watch loses its connection, etcd moves on and compacts, the connection comes back.
// Leaderships and campaigns must go on as the election stands, kv and member watches must report
// what changed and keep following.

import assert from 'node:assert/strict'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { after, test } from 'node:test'
import type { Etcd3 } from 'etcd3'
import { EtcdCoordinator } from '../backends/etcd/index.js'
import type { StoreEvent } from '../src/cluster/coordinator-store.js'
import type { GalleonError } from '../src/errors.js'
import { testNode } from './conformance/index.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from './support/etcd.js'
import { until } from './support/wait.js'

const skip = etcdSkipReason()
let etcd: Promise<EtcdServer> | undefined
after(async () => { if (etcd !== undefined) await (await etcd).stop() })

/**
 * A TCP relay to etcd. `cut()` closes every connection through it and holds the ones clients open
 * next (accepted, their bytes kept back, nothing sent to etcd) until `restore()`: a link that is
 * down while etcd goes on.
 */
async function cuttableRelay (target: string): Promise<{ endpoint: string, cut: () => void, restore: () => void, close: () => Promise<void> }> {
  const { hostname, port } = new URL(target)
  const sockets = new Set<Socket>()
  const waiting = new Set<() => void>()
  let down = false
  const track = (socket: Socket): Socket => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket)).on('error', () => {})
    return socket
  }
  const server = createServer((client) => {
    track(client)
    const held: Buffer[] = []
    const keep = (chunk: Buffer): void => { held.push(chunk) }
    client.on('data', keep)
    const open = (): void => {
      waiting.delete(open)
      if (client.destroyed) return
      const upstream = track(connect(Number(port), hostname))
      client.off('data', keep)
      for (const chunk of held) upstream.write(chunk)
      client.pipe(upstream).pipe(client)
      upstream.on('close', () => client.destroy())
      client.on('close', () => upstream.destroy())
    }
    if (down) waiting.add(open)
    else open()
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    cut: () => {
      down = true
      for (const socket of sockets) socket.destroy()
    },
    restore: () => {
      down = false
      for (const open of [...waiting]) open()
    },
    close: async () => {
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => server.close(resolve))
    }
  }
}

/** A plain etcd3 client straight to etcd (it writes and compacts while the handle is cut off). */
async function rawClient (server: EtcdServer): Promise<Etcd3> {
  const { Etcd3 } = await import('etcd3')
  return new Etcd3({ hosts: [server.endpoint] })
}

/** Writes a few keys outside the handles' prefixes and compacts etcd's history up to the last one. */
async function moveOnAndCompact (raw: Etcd3): Promise<void> {
  for (let i = 0; i < 3; i++) await raw.put(`/elsewhere/${i}`).value('x').exec()
  const head = (await raw.kv.range({ key: Buffer.from('/elsewhere/2') })).header.revision
  await raw.kv.compact({ revision: head, physical: true })
}

/**
 * Counts, per key, the store watches the handle starts and the ones etcd ends with an error (through
 * its `_watch` hook): the tests wait for these instead of sleeping.
 */
function recordWatches (handle: EtcdCoordinator): { started: (key: string) => number, failed: (key: string) => number } {
  type Watch = (key: string, options: { prefix: boolean, fromRevision: number }, onEvents: (events: StoreEvent[]) => void, onError: (err: GalleonError) => void) => () => void
  const hooks = handle as unknown as { _watch: Watch }
  const original = hooks._watch.bind(handle)
  const started = new Map<string, number>()
  const failed = new Map<string, number>()
  hooks._watch = (key, options, onEvents, onError) => {
    started.set(key, (started.get(key) ?? 0) + 1)
    return original(key, options, onEvents, (err) => {
      failed.set(key, (failed.get(key) ?? 0) + 1)
      onError(err)
    })
  }
  return { started: (key) => started.get(key) ?? 0, failed: (key) => failed.get(key) ?? 0 }
}

/** The key (below `prefix`) of the candidate of `election` created at `epoch`: the election prefix and its lease id. */
async function candidateKey (raw: Etcd3, prefix: string, election: string, epoch: number): Promise<string> {
  const { kvs } = await raw.kv.range({ key: Buffer.from(`${prefix}elections/${election}/`), range_end: Buffer.from(`${prefix}elections/${election}0`) })
  const kv = kvs.find((kv) => Number(kv.create_revision) === epoch)
  assert.ok(kv !== undefined, `no candidate key created at revision ${epoch}`)
  return kv.key.toString().slice(prefix.length)
}

/**
 * For one test: a cuttable relay to the test etcd, a raw etcd3 client, and `connect()` for handles
 * below `prefix`, through the relay or straight to etcd; `tearDown()` closes them all.
 */
async function setUp (prefix: string): Promise<{ prefix: string, relay: Awaited<ReturnType<typeof cuttableRelay>>, raw: Etcd3, connect: (through: 'relay' | 'direct', options?: { requestTimeoutMs?: number }) => Promise<EtcdCoordinator>, tearDown: () => Promise<void> }> {
  const server = await (etcd ??= startEtcd())
  const relay = await cuttableRelay(server.endpoint)
  const raw = await rawClient(server)
  const handles: EtcdCoordinator[] = []
  return {
    prefix,
    relay,
    raw,
    connect: async (through, options) => {
      const handle = await EtcdCoordinator.connect({ endpoints: [through === 'relay' ? relay.endpoint : server.endpoint], prefix, ...options })
      handles.push(handle)
      return handle
    },
    tearDown: async () => {
      raw.close()
      for (const handle of handles) await handle.close()
      await relay.close()
    }
  }
}

test('a leader whose quiet watch resumes after a compaction keeps its leadership, and still loses it when its key goes', { skip }, async () => {
  const { prefix, relay, raw, connect, tearDown } = await setUp('/compact-leader/')
  const leader = await connect('relay')
  const watches = recordWatches(leader)
  try {
    await leader.join(testNode('node-a'), { ttlMs: 30_000 })
    const leadership = await leader.campaign('e')
    const key = await candidateKey(raw, prefix, 'e', leadership.epoch)
    let lost = false
    void leadership.lost.then(() => { lost = true })
    assert.equal(watches.started(key), 1)
    // The link goes down; etcd moves on and compacts past the revision the watch resumes from.
    relay.cut()
    await moveOnAndCompact(raw)
    relay.restore()
    // etcd cancels the resumed watch (its revision is compacted). The key is still there, with the
    // leader's lease: the election reads it again and watches on.
    await until('etcd to cancel the leader\'s resumed watch', () => watches.failed(key) === 1, 15_000)
    await until('the leadership to end or its watch to start again', () => lost || watches.started(key) === 2, 15_000)
    assert.equal(lost, false, 'the leadership ended though its key is still there')
    assert.deepEqual(await leader.leader('e'), { nodeId: 'node-a', epoch: leadership.epoch })
    // And the new watch works: the key removed (as by an operator) ends the leadership.
    await raw.delete().key(prefix + key).exec()
    await until('the leadership to end after its key was deleted', () => lost, 15_000)
    await leader.leave()
  } finally {
    await tearDown()
  }
})

// Also: close() returns without waiting out the request deadline (a minute here, so the test's own
// timeout catches it): etcd3 has let go of a watch etcd ended, and a cancel of it is never answered.
test('a leader whose key was deleted while its watch was cut off, before a compaction, loses the leadership when the watch resumes', { skip, timeout: 30_000 }, async () => {
  const { prefix, relay, raw, connect, tearDown } = await setUp('/compact-leader-gone/')
  const leader = await connect('relay', { requestTimeoutMs: 60_000 })
  try {
    await leader.join(testNode('node-a'), { ttlMs: 30_000 })
    const leadership = await leader.campaign('e')
    const key = await candidateKey(raw, prefix, 'e', leadership.epoch)
    let lost = false
    void leadership.lost.then(() => { lost = true })
    relay.cut()
    await raw.delete().key(prefix + key).exec()
    await moveOnAndCompact(raw)
    relay.restore()
    // The delete event itself is compacted away; the read after the cancelled watch finds the key gone.
    await until('the leadership to end', () => lost, 15_000)
    assert.equal(await leader.leader('e'), undefined)
    await leader.leave()
  } finally {
    await tearDown()
  }
})

test('a waiting candidate whose quiet watch resumes after a compaction stays in line, and leads once its predecessor goes', { skip }, async () => {
  const { prefix, relay, raw, connect, tearDown } = await setUp('/compact-candidate/')
  const first = await connect('direct')
  const second = await connect('relay')
  const watches = recordWatches(second)
  try {
    await first.join(testNode('node-a'), { ttlMs: 30_000 })
    await second.join(testNode('node-b'), { ttlMs: 30_000 })
    const leading = await first.campaign('e')
    const predecessor = await candidateKey(raw, prefix, 'e', leading.epoch)
    let failure: unknown
    const campaign = second.campaign('e')
    campaign.catch((err: unknown) => { failure = err })
    await until('node-b to watch its predecessor', () => watches.started(predecessor) === 1, 15_000)
    relay.cut()
    await moveOnAndCompact(raw)
    relay.restore()
    await until('etcd to cancel node-b\'s resumed watch', () => watches.failed(predecessor) === 1, 15_000)
    await until('the campaign to fail or its watch to start again', () => failure !== undefined || watches.started(predecessor) === 2, 15_000)
    assert.equal(failure, undefined, `the campaign ended: ${String(failure)}`)
    await leading.resign()
    const leadership = await campaign
    assert.equal(leadership.nodeId, 'node-b')
    assert.ok(leadership.epoch > leading.epoch)
    assert.deepEqual(await first.leader('e'), { nodeId: 'node-b', epoch: leadership.epoch })
    await leadership.resign()
    await first.leave()
    await second.leave()
  } finally {
    await tearDown()
  }
})

test('a waiting candidate whose predecessor resigned while its watch was cut off, before a compaction, leads when the watch resumes', { skip }, async () => {
  const { prefix, relay, raw, connect, tearDown } = await setUp('/compact-candidate-gone/')
  const first = await connect('direct')
  const second = await connect('relay')
  const watches = recordWatches(second)
  try {
    await first.join(testNode('node-a'), { ttlMs: 30_000 })
    await second.join(testNode('node-b'), { ttlMs: 30_000 })
    const leading = await first.campaign('e')
    const predecessor = await candidateKey(raw, prefix, 'e', leading.epoch)
    const campaign = second.campaign('e')
    await until('node-b to watch its predecessor', () => watches.started(predecessor) === 1, 15_000)
    relay.cut()
    await leading.resign() // its delete event is compacted away next
    await moveOnAndCompact(raw)
    relay.restore()
    const leadership = await campaign
    assert.equal(leadership.nodeId, 'node-b')
    assert.deepEqual(await first.leader('e'), { nodeId: 'node-b', epoch: leadership.epoch })
    await leadership.resign()
    await first.leave()
    await second.leave()
  } finally {
    await tearDown()
  }
})

test('a kv watch and a member watch whose resume revision was compacted report the current state and keep following', { skip }, async () => {
  const { relay, raw, connect, tearDown } = await setUp('/compact-kv/')
  const writer = await connect('direct')
  await writer.put('volumes/keep', '1')
  await writer.put('volumes/gone', '1')
  const watcher = await connect('relay')
  const other = await connect('direct')
  const watches = recordWatches(watcher)
  const seen: string[] = []
  const memberLists: string[][] = []
  try {
    watcher.watch('volumes/', (event) => seen.push(`${event.type} ${event.key}${event.entry === undefined ? '' : `=${event.entry.value}`}`))
    watcher.watchMembers((members) => memberLists.push(members.map((member) => member.id)))
    await writer.join(testNode('node-a'), { ttlMs: 30_000 })
    await writer.put('volumes/keep', '2')
    await until('the watches to report the changes', () => seen.includes('put volumes/keep=2') && memberLists.at(-1)?.join() === 'node-a', 15_000)
    relay.cut()
    // Missed while cut off, and compacted away: the values at the end of the gap count.
    await writer.put('volumes/keep', '3')
    await writer.put('volumes/keep', '4')
    await writer.delete('volumes/gone')
    await writer.put('volumes/new', '5')
    await other.join(testNode('node-b'), { ttlMs: 30_000 })
    await moveOnAndCompact(raw)
    relay.restore()
    await until('etcd to cancel the resumed kv watch', () => watches.failed('kv/volumes/') >= 1, 15_000)
    await until('the kv watch to report what changed', () => seen.includes('put volumes/new=5'), 15_000)
    assert.deepEqual(seen, ['put volumes/keep=2', 'delete volumes/gone', 'put volumes/keep=4', 'put volumes/new=5'])
    await until('the member watch to report node-b', () => memberLists.at(-1)?.join() === 'node-a,node-b', 15_000)
    // Both go on.
    await writer.put('volumes/after', '6')
    await other.leave()
    await until('the watches to follow new changes', () => seen.at(-1) === 'put volumes/after=6' && memberLists.at(-1)?.join() === 'node-a', 15_000)
    await writer.leave()
  } finally {
    await tearDown()
  }
})
