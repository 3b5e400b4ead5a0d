// Conformance suite for Coordinator drivers: `coordinatorSuite()` registers the same node:test tests
// for any backend (membership under leases, the key-value store with compare-and-swap and watches,
// elections with fencing epochs, argument checks).

import assert from 'node:assert/strict'
import * as nodeTest from 'node:test'
import type { ClusterMember, ClusterNode, Coordinator, CoordinatorEntry, CoordinatorEvent, Leadership } from '../../src/drivers.js'
import { isGalleonError, type GalleonErrorCode } from '../../src/errors.js'

/** One test's cluster: handles (one per simulated node) that share state. */
export interface CoordinatorTestCluster {
  /** A new handle on this cluster. The suite closes every handle it made after the test. */
  handle: () => Coordinator | Promise<Coordinator>
  /**
   * Makes `handle`'s leases end now in the cluster, as when its keepalives stop arriving (partition,
   * long pause) while the handle lives on. Tests of lease loss are skipped without it.
   */
  expireLeases?: (handle: Coordinator, nodeId: string) => Promise<void>
  /** Releases the cluster (after each test, also on failure). */
  close?: () => Promise<void>
}

/** Options of {@link coordinatorSuite}. */
export interface CoordinatorSuiteOptions {
  /** Backend name, used in test titles. */
  name: string
  /** Creates a fresh cluster per test (e.g. a new key prefix on a shared etcd). */
  factory: () => CoordinatorTestCluster | Promise<CoordinatorTestCluster>
  /** Lease TTL of the expiry tests, in ms (default 1000); backends with coarse leases may ask more. */
  ttlMs?: number
  /** Skips every test with this reason (e.g. the server the backend needs is not installed). */
  skip?: string
  /** How long a test may wait for an expected event before failing (default 30 s); never a threshold. */
  waitMs?: number
  /** The `test` function to register with (default: node:test's). */
  test?: typeof nodeTest.test
  /** The `describe` function to group with (default: node:test's). */
  describe?: typeof nodeTest.describe
}

interface Context {
  cluster: CoordinatorTestCluster
  /** A new handle, closed after the test. */
  open: () => Promise<Coordinator>
  ttlMs: number
  /** Polls `check` until it returns a value other than undefined/false, failing after the suite's wait bound. */
  waitFor: <T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>) => Promise<T>
}

/** A node record for tests. */
export function testNode (id: string, overrides: Partial<ClusterNode> = {}): ClusterNode {
  return { id, address: `127.0.0.1:${7000 + id.length}`, zone: 'zone-a', labels: { rack: 'r1' }, capacityBytes: 1 << 30, freeBytes: 1 << 29, ...overrides }
}

async function rejectsWith (promise: Promise<unknown> | (() => unknown), code: GalleonErrorCode): Promise<void> {
  await assert.rejects(async () => { await (typeof promise === 'function' ? promise() : promise) }, (err: unknown) => {
    assert.ok(isGalleonError(err, code), `expected a GalleonError ${code}, got ${String(err)}`)
    assert.ok(err.message.length > 0)
    return true
  })
}

/** Whether `promise` has settled, checked after the queued callbacks run. */
function settledFlag (promise: Promise<unknown>): () => boolean {
  let settled = false
  promise.then(() => { settled = true }, () => { settled = true })
  return () => settled
}

/**
 * Registers the Coordinator conformance tests for one backend:
 *
 * ```ts
 * const cluster = new MemoryCoordinatorCluster()
 * coordinatorSuite({ name: 'memory', factory: () => ({ handle: () => cluster.coordinator() }) })
 * ```
 */
export function coordinatorSuite (options: CoordinatorSuiteOptions): void {
  const { name, factory } = options
  const test = options.test ?? nodeTest.test
  const describe = options.describe ?? nodeTest.describe
  const ttlMs = options.ttlMs ?? 1000
  const waitMs = options.waitMs ?? 30_000

  function clusterTest (title: string, body: (context: Context) => Promise<void>, needs: { expireLeases?: boolean } = {}): void {
    test(title, { skip: options.skip }, async (t) => {
      const cluster = await factory()
      const handles: Coordinator[] = []
      try {
        if (needs.expireLeases === true && cluster.expireLeases === undefined) {
          t.skip(`the ${name} test cluster cannot expire leases on demand`)
          return
        }
        await body({
          cluster,
          ttlMs,
          open: async () => {
            const handle = await cluster.handle()
            handles.push(handle)
            return handle
          },
          waitFor: async (what, check) => {
            const deadline = Date.now() + waitMs
            for (;;) {
              const value = await check()
              if (value !== undefined && value !== false) return value as never
              if (Date.now() > deadline) assert.fail(`timed out after ${waitMs} ms waiting for ${what}`)
              await new Promise((resolve) => setTimeout(resolve, 20))
            }
          }
        })
      } finally {
        await Promise.allSettled(handles.map(async (handle) => { await handle.close() }))
        await cluster.close?.()
      }
    })
  }

  describe(`Coordinator conformance: ${name}`, () => {
    clusterTest('join lists the node as a healthy member; leave removes it', async ({ open }) => {
      const a = await open()
      assert.equal(typeof a.name, 'string')
      assert.deepEqual(await a.members(), [])
      await a.join(testNode('node-a'))
      const [member, ...rest] = await a.members()
      assert.equal(rest.length, 0)
      assert.ok(member !== undefined)
      const { healthy, joinedAt, ...fields } = member
      assert.deepEqual(fields, testNode('node-a'))
      assert.equal(healthy, true)
      assert.ok(!Number.isNaN(Date.parse(joinedAt)), `joinedAt is ISO 8601: ${joinedAt}`)
      await a.leave()
      assert.deepEqual(await a.members(), [])
      await a.leave() // leaving twice is harmless
      await a.join(testNode('node-a')) // and the handle can join again
      assert.deepEqual((await a.members()).map((m) => m.id), ['node-a'])
    })

    clusterTest('joining again updates the record and keeps joinedAt; a handle is one node', async ({ open }) => {
      const a = await open()
      await a.join(testNode('node-a', { freeBytes: 500 }))
      const [before] = await a.members()
      await a.join(testNode('node-a', { freeBytes: 300, labels: { rack: 'r2', ssd: 'yes' }, address: '127.0.0.1:9999' }))
      const members = await a.members()
      assert.equal(members.length, 1)
      assert.equal(members[0]?.freeBytes, 300)
      assert.deepEqual(members[0]?.labels, { rack: 'r2', ssd: 'yes' })
      assert.equal(members[0]?.address, '127.0.0.1:9999')
      assert.equal(members[0]?.joinedAt, before?.joinedAt)
      assert.equal(members[0]?.healthy, true)
      await rejectsWith(a.join(testNode('node-b')), 'INVALID_ARGUMENT')
    })

    clusterTest('two nodes see each other, sorted by id', async ({ open }) => {
      const a = await open()
      const b = await open()
      await b.join(testNode('node-b', { zone: 'zone-b' }))
      await a.join(testNode('node-a'))
      for (const handle of [a, b]) {
        const members = await handle.members()
        assert.deepEqual(members.map((m) => [m.id, m.zone, m.healthy]), [['node-a', 'zone-a', true], ['node-b', 'zone-b', true]])
      }
    })

    clusterTest('watchMembers reports joins and leaves; its stop function ends it', async ({ open, waitFor }) => {
      const watcher = await open()
      const a = await open()
      const b = await open()
      const seen: ClusterMember[][] = []
      const stop = watcher.watchMembers((members) => seen.push(members))
      await waitFor('the first report, the current members', () => seen.length > 0)
      assert.equal(JSON.stringify(seen), '[[]]', 'the first report lists the members as they are: none yet')
      await a.join(testNode('node-a'))
      await waitFor('node-a in a members report', () => seen.some((members) => members.some((m) => m.id === 'node-a' && m.healthy)))
      await b.join(testNode('node-b'))
      await waitFor('both nodes reported', () => seen.some((members) => members.length === 2))
      await a.leave()
      await waitFor('node-a gone from a report', () => {
        const last = seen[seen.length - 1]
        return last !== undefined && last.length === 1 && last[0]?.id === 'node-b'
      })
      stop()
      const count = seen.length
      // A second watch, with b leaving at once (before the watch may even have listed): b's leave
      // is either in the first report or reported after it, never lost. The stopped watch reports
      // nothing more.
      const later: ClusterMember[][] = []
      const stopLater = watcher.watchMembers((members) => later.push(members))
      await b.leave()
      await waitFor('node-b leaving reported to the new watch', () => later.some((members) => members.length === 0))
      assert.ok(later.every((members) => members.length <= 1 && members.every((m) => m.id === 'node-b')), `only node-b, then nobody: ${JSON.stringify(later)}`)
      stopLater()
      assert.equal(seen.length, count)
    })

    clusterTest('a node closed without leaving turns unhealthy after its TTL, then disappears', async ({ open, waitFor, ttlMs }) => {
      const watcher = await open()
      const a = await open()
      const b = await open()
      await b.join(testNode('node-b'))
      await a.join(testNode('node-a'), { ttlMs })
      const seen: ClusterMember[][] = []
      watcher.watchMembers((members) => seen.push(members))
      await a.close() // as a crash: the lease is not revoked, it expires
      await rejectsWith(a.members(), 'NOT_OPEN')
      await waitFor('node-a reported unhealthy', () => seen.some((members) => members.some((m) => m.id === 'node-a' && !m.healthy)))
      await waitFor('node-a removed', () => seen.some((members) => members.length === 1))
      const unhealthyAt = seen.findIndex((members) => members.some((m) => m.id === 'node-a' && !m.healthy))
      const goneAt = seen.findIndex((members, i) => i > unhealthyAt && !members.some((m) => m.id === 'node-a'))
      assert.ok(goneAt > unhealthyAt, 'unhealthy first, then removed')
      assert.ok(seen.every((members) => members.some((m) => m.id === 'node-b' && m.healthy)), 'node-b stays healthy throughout')
      assert.deepEqual((await watcher.members()).map((m) => m.id), ['node-b'])
    })

    clusterTest('get, put, delete and list with revisions', async ({ open }) => {
      const a = await open()
      const b = await open()
      assert.equal(await a.get('kv/missing'), undefined)
      const first = await a.put('kv/x', '{"n":1}')
      assert.ok(first !== undefined && first.revision > 0)
      assert.deepEqual(first, { key: 'kv/x', value: '{"n":1}', revision: first.revision })
      assert.deepEqual(await b.get('kv/x'), first, 'another handle reads the write')
      const second = await b.put('kv/x', '{"n":2}')
      assert.ok(second !== undefined && second.revision > first.revision, 'every write of a key changes its revision')
      const other = await a.put('kv/a', '')
      assert.ok(other !== undefined && other.revision > second.revision, 'revisions increase across keys')
      await a.put('kvx/not-listed', 'no')
      await a.put('kv/sub/y', 'y')
      const listed = await b.list('kv/')
      assert.deepEqual(listed.map((e) => [e.key, e.value]), [['kv/a', ''], ['kv/sub/y', 'y'], ['kv/x', '{"n":2}']])
      assert.equal(listed[2]?.revision, second.revision)
      assert.equal(await a.delete('kv/x'), true)
      assert.equal(await a.delete('kv/x'), false, 'deleting a missing key reports false')
      assert.equal(await b.get('kv/x'), undefined)
      assert.deepEqual((await a.list('kv/')).map((e) => e.key), ['kv/a', 'kv/sub/y'])
      assert.deepEqual(await a.list('nothing/here/'), [])
      const again = await a.put('kv/x', 'back')
      assert.ok(again !== undefined && again.revision > other.revision)
    })

    clusterTest('compare-and-swap succeeds only at the expected revision (0: only if absent)', async ({ open }) => {
      const a = await open()
      const created = await a.put('cas/k', 'v1', { expectRevision: 0 })
      assert.ok(created !== undefined)
      assert.equal(await a.put('cas/k', 'v2', { expectRevision: 0 }), undefined, 'expectRevision 0 fails on an existing key')
      assert.equal(await a.put('cas/k', 'v2', { expectRevision: created.revision + 1000 }), undefined)
      assert.equal((await a.get('cas/k'))?.value, 'v1', 'a failed CAS writes nothing')
      const updated = await a.put('cas/k', 'v2', { expectRevision: created.revision })
      assert.ok(updated !== undefined && updated.revision > created.revision)
      assert.equal(await a.put('cas/k', 'v3', { expectRevision: created.revision }), undefined, 'the old revision is stale now')
      assert.equal(await a.delete('cas/k', { expectRevision: created.revision }), false)
      assert.equal((await a.get('cas/k'))?.value, 'v2')
      assert.equal(await a.delete('cas/k', { expectRevision: updated.revision }), true)
      assert.equal(await a.get('cas/k'), undefined)
      assert.equal(await a.put('cas/other', 'x', { expectRevision: 5 }), undefined, 'a revision other than 0 fails on a missing key')
    })

    clusterTest('concurrent compare-and-swap from two handles: exactly one wins each round', async ({ open }) => {
      const a = await open()
      const b = await open()
      const start = await a.put('race/counter', '0')
      assert.ok(start !== undefined)
      let current: CoordinatorEntry = start
      for (let round = 1; round <= 30; round++) {
        const expectRevision = current.revision
        const [fromA, fromB] = await Promise.all([
          a.put('race/counter', `a${round}`, { expectRevision }),
          b.put('race/counter', `b${round}`, { expectRevision })
        ])
        const winners = [fromA, fromB].filter((entry): entry is CoordinatorEntry => entry !== undefined)
        assert.equal(winners.length, 1, `round ${round}: exactly one CAS succeeds`)
        current = winners[0]!
        assert.deepEqual(await b.get('race/counter'), current, `round ${round}: the stored value is the winner's`)
      }
    })

    clusterTest('watch reports puts and deletes under its prefix in order, until stopped', async ({ open, waitFor }) => {
      const writer = await open()
      const watcher = await open()
      await watcher.list('w/') // the watch starts after what the handle has seen
      const events: CoordinatorEvent[] = []
      const stop = watcher.watch('w/', (event) => events.push(event))
      const p1 = await writer.put('w/a', '1')
      const p2 = await writer.put('w/b', '2')
      await writer.put('elsewhere/c', 'not reported')
      const p3 = await writer.put('w/a', '3')
      await writer.delete('w/a')
      await waitFor('four events', () => events.length >= 4)
      assert.deepEqual(events, [
        { type: 'put', key: 'w/a', entry: p1 },
        { type: 'put', key: 'w/b', entry: p2 },
        { type: 'put', key: 'w/a', entry: p3 },
        { type: 'delete', key: 'w/a' }
      ])
      stop()
      const later: CoordinatorEvent[] = []
      const stopLater = watcher.watch('w/', (event) => later.push(event))
      await writer.put('w/after-stop', 'x')
      await waitFor('the write after stop seen by a live watch', () => later.some((e) => e.key === 'w/after-stop'))
      stopLater()
      assert.equal(events.length, 4, 'a stopped watch reports nothing')
    })

    clusterTest('election: one leader at a time among three, resign hands over, epochs strictly increase', async ({ open, waitFor }) => {
      const handles = [await open(), await open(), await open()]
      await Promise.all(handles.map(async (handle, i) => { await handle.join(testNode(`node-${i}`)) }))
      assert.equal(await handles[0]!.leader('el'), undefined)
      const campaigns = handles.map((handle) => handle.campaign('el'))
      const pending = new Map(campaigns.map((campaign, i) => [i, campaign]))
      const leaders: Leadership[] = []
      while (pending.size > 0) {
        const flags = [...pending].map(([i, campaign]) => [i, settledFlag(campaign)] as const)
        await waitFor('a campaign to win', () => flags.some(([, settled]) => settled()))
        // Let the store answer once more: no second campaign may win while this leader holds.
        const current = await handles[0]!.leader('el')
        const won = flags.filter(([, settled]) => settled())
        assert.equal(won.length, 1, 'exactly one campaigner leads')
        const [index] = won[0]!
        const leadership = await pending.get(index)!
        pending.delete(index)
        assert.equal(leadership.nodeId, `node-${index}`)
        assert.equal(leadership.election, 'el')
        assert.deepEqual(current, { nodeId: leadership.nodeId, epoch: leadership.epoch })
        const previous = leaders[leaders.length - 1]
        if (previous !== undefined) assert.ok(leadership.epoch > previous.epoch, `epoch ${leadership.epoch} > ${previous.epoch}`)
        leaders.push(leadership)
        await leadership.resign()
        await leadership.lost // resolves on resign
      }
      assert.equal(await handles[1]!.leader('el'), undefined, 'nobody leads after everyone resigned')
      const again = await handles[2]!.campaign('el')
      assert.ok(again.epoch > leaders[2]!.epoch, 'a new leadership of the same node gets a new epoch')
      await again.resign()
    })

    clusterTest('resign hands leadership to the waiting campaigner; elections are independent', async ({ open }) => {
      const a = await open()
      const b = await open()
      await a.join(testNode('node-a'))
      await b.join(testNode('node-b'))
      const first = await a.campaign('vol/1/primary')
      const other = await b.campaign('vol/2/primary')
      assert.equal(other.nodeId, 'node-b', 'another election is not held up')
      const waiting = b.campaign('vol/1/primary')
      const waited = settledFlag(waiting)
      assert.deepEqual(await b.leader('vol/1/primary'), { nodeId: 'node-a', epoch: first.epoch })
      assert.equal(waited(), false, 'b waits while a leads')
      await rejectsWith(a.campaign('vol/1/primary'), 'BUSY')
      await first.resign()
      const second = await waiting
      assert.equal(second.nodeId, 'node-b')
      assert.ok(second.epoch > first.epoch)
      assert.deepEqual(await a.leader('vol/1/primary'), { nodeId: 'node-b', epoch: second.epoch })
    })

    clusterTest('a crashed leader loses the election after its TTL; its lost resolves', async ({ open, ttlMs }) => {
      const a = await open()
      const b = await open()
      await a.join(testNode('node-a'), { ttlMs })
      await b.join(testNode('node-b'), { ttlMs })
      const first = await a.campaign('crash')
      const waiting = b.campaign('crash')
      await a.close() // a crash as the cluster sees it: nothing is revoked
      await first.lost
      const second = await waiting
      assert.equal(second.nodeId, 'node-b')
      assert.ok(second.epoch > first.epoch, 'fencing: the new epoch is greater')
      assert.deepEqual(await b.leader('crash'), { nodeId: 'node-b', epoch: second.epoch })
    })

    clusterTest('a lost lease ends the leadership; the node joins again and can lead with a greater epoch', async ({ open, cluster, waitFor, ttlMs }) => {
      const a = await open()
      const watcher = await open()
      await a.join(testNode('node-a'), { ttlMs })
      const first = await a.campaign('lease-loss')
      const seen: ClusterMember[][] = []
      watcher.watchMembers((members) => seen.push(members))
      await cluster.expireLeases!(a, 'node-a')
      await first.lost
      const isDown = (members: ClusterMember[]): boolean => !members.some((m) => m.id === 'node-a' && m.healthy)
      await waitFor('node-a unhealthy or gone', () => seen.some(isDown))
      await waitFor('node-a healthy again', () => seen.some((members, i) => i > seen.findIndex(isDown) && !isDown(members)))
      const second = await waitFor('a new campaign', async () => await a.campaign('lease-loss').catch(() => undefined))
      assert.ok(second.epoch > first.epoch)
      await second.resign()
    }, { expireLeases: true })

    clusterTest('campaign: abort with an AbortSignal, join first, one campaign per election', async ({ open }) => {
      const a = await open()
      const b = await open()
      await rejectsWith(a.campaign('ab'), 'NOT_OPEN')
      await a.join(testNode('node-a'))
      await b.join(testNode('node-b'))
      await rejectsWith(b.campaign('ab', { signal: AbortSignal.abort() }), 'CANCELLED')
      const held = await a.campaign('ab')
      const controller = new AbortController()
      const waiting = b.campaign('ab', { signal: controller.signal })
      await rejectsWith(b.campaign('ab'), 'BUSY')
      assert.deepEqual(await b.leader('ab'), { nodeId: 'node-a', epoch: held.epoch })
      controller.abort()
      await rejectsWith(waiting, 'CANCELLED')
      await held.resign()
      assert.equal(await a.leader('ab'), undefined, 'the aborted campaigner left the line')
      const next = await b.campaign('ab')
      assert.ok(next.epoch > held.epoch)
    })

    clusterTest('bad arguments are refused with INVALID_ARGUMENT and change nothing', async ({ open }) => {
      const a = await open()
      const call = (fn: () => unknown) => async () => await fn()
      await rejectsWith(call(async () => await a.get('')), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.get(42 as never)), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.put('', 'v')), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.put('k', 5 as never)), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.put('k', { v: 1 } as never)), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.put('k', 'v', { expectRevision: -1 })), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.put('k', 'v', { expectRevision: 1.5 })), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.delete('k', { expectRevision: -3 })), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.delete('')), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.list(undefined as never)), 'INVALID_ARGUMENT')
      await rejectsWith(call(() => a.watch('p/', 'listener' as never)), 'INVALID_ARGUMENT')
      await rejectsWith(call(() => a.watchMembers(undefined as never)), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.join(testNode('n'), { ttlMs: 0 })), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.join(testNode('n'), { ttlMs: -1000 })), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.join(testNode('n'), { ttlMs: Number.NaN })), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.join(testNode(''))), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.join({ ...testNode('n'), freeBytes: -1 })), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.join(null as never)), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.campaign('')), 'INVALID_ARGUMENT')
      await rejectsWith(call(async () => await a.leader(7 as never)), 'INVALID_ARGUMENT')
      assert.equal(await a.get('k'), undefined, 'nothing was written')
      assert.deepEqual(await a.members(), [], 'nobody joined')
    })

    clusterTest('a closed handle refuses calls with NOT_OPEN; close is idempotent', async ({ open }) => {
      const a = await open()
      await a.join(testNode('node-a'))
      await a.close()
      await a.close()
      await rejectsWith(a.get('k'), 'NOT_OPEN')
      await rejectsWith(a.put('k', 'v'), 'NOT_OPEN')
      await rejectsWith(a.join(testNode('node-a')), 'NOT_OPEN')
      await rejectsWith(a.campaign('x'), 'NOT_OPEN')
      await rejectsWith(async () => a.watch('p', () => {}), 'NOT_OPEN')
    })
  })
}
