// The memory coordinator beyond the conformance suite: lease expiry on an injected clock (no
// waiting), crash(), expireLeases(), the global revision, and watch history compaction.

import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ManualClock, MemoryCoordinatorCluster } from '../backends/memory/coordinator.js'
import type { ClusterMember } from '../src/drivers.js'
import { isGalleonError } from '../src/errors.js'
import { testNode } from './conformance/index.js'

/** Lets queued promise callbacks (watch deliveries, rejoin steps) run. */
async function settle (): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve))
}

test('keepalives hold a lease for many TTLs; after crash() it turns unhealthy at one TTL and is removed at two', async () => {
  const clock = new ManualClock()
  const cluster = new MemoryCoordinatorCluster({ clock })
  const a = cluster.coordinator()
  const b = cluster.coordinator()
  await a.join(testNode('node-a'), { ttlMs: 900 })
  await b.join(testNode('node-b'), { ttlMs: 900 })
  const leadership = await a.campaign('el')
  const waiting = b.campaign('el')
  for (let i = 0; i < 20; i++) clock.advance(300) // 6 s: 6.7 TTLs, kept alive
  await settle()
  assert.deepEqual((await b.members()).map((m) => [m.id, m.healthy]), [['node-a', true], ['node-b', true]])
  assert.deepEqual(await b.leader('el'), { nodeId: 'node-a', epoch: leadership.epoch })

  const seen: ClusterMember[][] = []
  b.watchMembers((members) => seen.push(members))
  await settle()
  await a.crash()
  await rejectsNotOpen(a.get('k'))
  clock.advance(899)
  await settle()
  assert.deepEqual((await b.members()).map((m) => [m.id, m.healthy]), [['node-a', true], ['node-b', true]], 'alive until the TTL has passed')
  clock.advance(1)
  await settle()
  assert.deepEqual((await b.members()).map((m) => [m.id, m.healthy]), [['node-a', false], ['node-b', true]])
  const next = await waiting
  assert.ok(next.epoch > leadership.epoch)
  clock.advance(900)
  await settle()
  assert.deepEqual((await b.members()).map((m) => m.id), ['node-b'])
  assert.deepEqual(seen.map((members) => members.map((m) => `${m.id}:${m.healthy ? 'up' : 'down'}`).join(',')), ['node-a:up,node-b:up', 'node-a:down,node-b:up', 'node-b:up'], 'the members as listed, then every change')
  await b.leave()
  assert.equal(cluster.leaseCount, 0, 'leave revokes the leases; expiry removed the crashed ones')
  await b.close()
})

test('expireLeases(): the leadership ends with its key; the handle joins again at its next keepalive', async () => {
  const clock = new ManualClock()
  const cluster = new MemoryCoordinatorCluster({ clock })
  const a = cluster.coordinator({ ttlMs: 600 })
  await a.join(testNode('node-a'))
  const first = await a.campaign('el')
  let lost = false
  void first.lost.then(() => { lost = true })
  a.expireLeases()
  assert.deepEqual(await a.members(), [], 'the cluster dropped the node at once')
  await settle()
  assert.equal(lost, true, 'the leader saw its candidate key go')
  assert.equal(await a.leader('el'), undefined)
  clock.advance(200) // the next keepalive finds the lease gone
  await settle()
  assert.deepEqual((await a.members()).map((m) => [m.id, m.healthy]), [['node-a', true]], 'joined again')
  const second = await a.campaign('el')
  assert.ok(second.epoch > first.epoch)
  await a.close()
})

test('a campaign started while the handle replaces a lost lease waits for the new lease, then wins', async () => {
  const clock = new ManualClock()
  const cluster = new MemoryCoordinatorCluster({ clock })
  const a = cluster.coordinator({ ttlMs: 600 })
  await a.join(testNode('node-a'))
  const first = await a.campaign('el')
  a.expireLeases()
  clock.advance(200) // the keepalive finds the lease gone: the handle joins again in the background
  // At once, as a campaign loop does when its leadership is lost: the node is still a member.
  const second = await a.campaign('el')
  await first.lost
  assert.ok(second.epoch > first.epoch)
  assert.deepEqual(await a.leader('el'), { nodeId: 'node-a', epoch: second.epoch })
  assert.deepEqual((await a.members()).map((m) => [m.id, m.healthy]), [['node-a', true]])
  // A leave() called while the lease is being replaced waits for the rejoin and then removes the
  // node, ending the leadership its waiting campaign won.
  await second.resign()
  a.expireLeases()
  clock.advance(200)
  const waiting = a.campaign('el')
  await a.leave()
  await (await waiting).lost
  assert.deepEqual(await a.members(), [])
  assert.equal(await a.leader('el'), undefined)
  await a.close()
})

test('revisions are global and strictly increasing across keys and handles', async () => {
  const cluster = new MemoryCoordinatorCluster()
  const a = cluster.coordinator()
  const b = cluster.coordinator()
  const revisions: number[] = []
  for (let i = 0; i < 10; i++) revisions.push((await (i % 2 === 0 ? a : b).put(`k${i % 3}`, String(i)))!.revision)
  assert.deepEqual(revisions, [...revisions].sort((x, y) => x - y))
  assert.equal(new Set(revisions).size, revisions.length)
  assert.equal(cluster.revision, revisions[9])
  await a.close()
  await b.close()
})

test('a watch from a revision older than the kept history is refused; newer ones replay it in order', async () => {
  const cluster = new MemoryCoordinatorCluster({ historyLimit: 5 })
  const a = cluster.coordinator()
  for (let i = 0; i < 20; i++) await a.put(`k/${i}`, String(i))
  const errors: unknown[] = []
  cluster.watch('kv/', true, 2, () => assert.fail('no events from a compacted revision'), (err) => errors.push(err))
  const replayed: string[] = []
  const stop = cluster.watch('kv/k/', true, 17, (events) => replayed.push(...events.map((e) => e.entry.key)), (err) => errors.push(err))
  await settle()
  assert.equal(errors.length, 1)
  assert.ok(isGalleonError(errors[0], 'BACKEND_UNAVAILABLE'))
  assert.deepEqual(replayed, ['kv/k/16', 'kv/k/17', 'kv/k/18', 'kv/k/19'])
  stop()
  await a.close()
})

test('a watch whose revision was compacted away lists again and reports what changed, then follows new changes', async () => {
  const cluster = new MemoryCoordinatorCluster({ historyLimit: 5 })
  const watcher = cluster.coordinator()
  const writer = cluster.coordinator()
  await writer.put('x/keep', '1')
  await writer.put('x/gone', '2')
  for (let i = 0; i < 10; i++) await writer.put('noise', String(i)) // the history no longer reaches the watcher's revision
  const seen: string[] = []
  try {
    watcher.watch('x/', (event) => seen.push(`${event.type} ${event.key}${event.entry === undefined ? '' : `=${event.entry.value}`}`))
    await settle() // the watch has listed the keys and its store watch was refused
    await writer.delete('x/gone')
    await writer.put('x/new', '3')
    const deadline = Date.now() + 10_000
    while (seen.length < 3 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10))
    assert.deepEqual(seen, ['delete x/gone', 'put x/keep=1', 'put x/new=3'])
    await writer.put('x/after', '4')
    await settle()
    assert.deepEqual(seen.slice(3), ['put x/after=4'])
  } finally {
    await watcher.close()
    await writer.close()
  }
})

async function rejectsNotOpen (promise: Promise<unknown>): Promise<void> {
  await assert.rejects(promise, (err: unknown) => isGalleonError(err, 'NOT_OPEN'))
}
