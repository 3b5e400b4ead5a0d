// h49: the etcd coordinator when its connection to etcd misbehaves, through a proxy between the
// node and etcd: a lease keepalive stream or a watch stream that ends with neither an answer nor an
// error, and connections ended, reset or stalled.

import assert from 'node:assert/strict'
import { after, test } from 'node:test'
import { EtcdCoordinator } from '../backends/etcd/index.js'
import type { Leadership } from '../src/drivers.js'
import { testNode } from './conformance/index.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from './support/etcd.js'
import { etcdProxy, type EtcdProxy } from './support/h49-proxy.js'
import { until } from './support/wait.js'

const skip = etcdSkipReason()
let etcd: Promise<EtcdServer> | undefined
after(async () => { if (etcd !== undefined) await (await etcd).stop() })

/** A node behind a proxy, joined with a 3 s lease and leading election `el`, and an observer straight to etcd. */
async function leaderBehindProxy (prefix: string): Promise<{ proxy: EtcdProxy, node: EtcdCoordinator, observer: EtcdCoordinator, leadership: Leadership, isLost: () => boolean, close: () => Promise<void> }> {
  const server = await (etcd ??= startEtcd())
  const proxy = await etcdProxy(server.endpoint)
  const node = await EtcdCoordinator.connect({ endpoints: [proxy.endpoint], prefix, requestTimeoutMs: 1000 })
  const observer = await EtcdCoordinator.connect({ endpoints: [server.endpoint], prefix })
  await node.join(testNode('node-a'), { ttlMs: 3000 })
  const leadership = await node.campaign('el')
  let lost = false
  void leadership.lost.then(() => { lost = true })
  return {
    proxy,
    node,
    observer,
    leadership,
    isLost: () => lost,
    close: async () => {
      await node.close()
      await observer.close()
      await proxy.close()
    }
  }
}

// The known defect: #keepalive waited for the stream's first answer or error. A stream that etcd
// (or a proxy, or a server shutting down) ends with an OK status and no answer settled neither, so
// no keepalive of that lease was ever sent again, and the lease ran out although etcd answered.
test('a keepalive stream that ends with neither an answer nor an error is sent again: the lease and the leadership are kept', { skip }, async () => {
  const { proxy, observer, leadership, isLost, close } = await leaderBehindProxy('/h49-ka-end/')
  try {
    await until('a keepalive to go through', () => proxy.keepalivesRelayed() > 0, 10_000)
    proxy.endKeepalives(1)
    await until('a keepalive stream to be ended', () => proxy.keepalivesEnded().length === 1, 10_000)
    const lease = proxy.keepalivesEnded()[0]!
    const before = proxy.keepalivesRelayed(lease)
    // Either that lease's keepalives go on (two more relayed), or it runs out (the leadership is
    // lost within a TTL): whichever comes first.
    await until('the lease to be kept alive again, or lost', () => isLost() || proxy.keepalivesRelayed(lease) >= before + 2, 20_000)
    assert.equal(isLost(), false, `the leadership was lost: no keepalive of lease ${lease} was sent after its stream ended without an answer`)
    assert.deepEqual(await observer.leader('el'), { nodeId: 'node-a', epoch: leadership.epoch })
    assert.deepEqual((await observer.members()).map((m) => [m.id, m.healthy]), [['node-a', true]])
  } finally {
    await close()
  }
})

// Every keepalive stream ended so (a proxy that keeps doing it): the lease runs out, and the node
// says so (its leadership is lost) and joins again with new leases once keepalives get through.
test('a node whose every keepalive stream ends without an answer loses its lease and leadership, and joins and leads again once they get through', { skip }, async () => {
  const { proxy, node, observer, isLost, close } = await leaderBehindProxy('/h49-ka-all/')
  try {
    proxy.endKeepalives(Number.MAX_SAFE_INTEGER)
    await until('the leadership to be lost', isLost, 20_000)
    proxy.endKeepalives(0)
    await until('node-a to be a healthy member again', async () => (await observer.members()).some((m) => m.id === 'node-a' && m.healthy), 20_000)
    const again = await node.campaign('el')
    assert.deepEqual(await observer.leader('el'), { nodeId: 'node-a', epoch: again.epoch })
    await again.resign()
  } finally {
    await close()
  }
})

for (const [how, cut] of [
  ['ended (FIN)', (proxy: EtcdProxy) => { proxy.endConnections() }],
  ['reset (RST)', (proxy: EtcdProxy) => { proxy.resetConnections() }]
] as const) {
  test(`a node whose connection to etcd is ${how} keeps its lease and leadership: it connects again at once`, { skip }, async () => {
    const { proxy, observer, leadership, isLost, close } = await leaderBehindProxy(`/h49-cut-${how.slice(0, 3)}/`)
    try {
      await until('a keepalive to go through', () => proxy.keepalivesRelayed() > 0, 10_000)
      const connections = proxy.connections()
      cut(proxy)
      const before = proxy.keepalivesRelayed()
      await until('keepalives to go through a new connection, or the lease to be lost', () => isLost() || (proxy.connections() > connections && proxy.keepalivesRelayed() >= before + 3), 20_000)
      assert.equal(isLost(), false, 'the leadership was lost after the connection was cut once')
      assert.deepEqual(await observer.leader('el'), { nodeId: 'node-a', epoch: leadership.epoch })
    } finally {
      await close()
    }
  })
}

test('a node whose connection to etcd stalls for longer than its lease loses the leadership before etcd expires the lease, and joins again when it flows', { skip }, async () => {
  const { proxy, node, observer, leadership, isLost, close } = await leaderBehindProxy('/h49-stall/')
  try {
    proxy.stall()
    // The observer, straight to etcd, sees the node's lease end (health) only after the node
    // itself gave up the leadership: a lease lost locally first, never a leader past its lease.
    let lostFirst: boolean | undefined
    await until('node-a to be unhealthy in etcd', async () => {
      const healthy = (await observer.members()).find((m) => m.id === 'node-a')?.healthy
      if (healthy === false && lostFirst === undefined) lostFirst = isLost()
      return healthy === false
    }, 20_000)
    assert.equal(lostFirst, true, 'etcd expired the lease while the node still believed it led')
    const other = await EtcdCoordinator.connect({ endpoints: [(await etcd!).endpoint], prefix: '/h49-stall/' })
    try {
      await other.join(testNode('node-b'), { ttlMs: 3000 })
      const b = await other.campaign('el')
      assert.ok(b.epoch > leadership.epoch)
      proxy.resume()
      await until('node-a to be a healthy member again', async () => (await observer.members()).some((m) => m.id === 'node-a' && m.healthy), 30_000)
      // node-a campaigns again and waits behind node-b.
      let aLeads = false
      const campaign = node.campaign('el').then((l) => { aLeads = true; return l })
      await b.resign()
      const a = await campaign
      assert.equal(aLeads, true)
      assert.ok(a.epoch > b.epoch)
      await a.resign()
    } finally {
      await other.close()
    }
  } finally {
    await close()
  }
})

test('a watch stream that ends with neither an error nor a cancel is opened again and misses no change', { skip }, async () => {
  const server = await (etcd ??= startEtcd())
  const proxy = await etcdProxy(server.endpoint)
  const watcher = await EtcdCoordinator.connect({ endpoints: [proxy.endpoint], prefix: '/h49-watch-end/', requestTimeoutMs: 1000 })
  const writer = await EtcdCoordinator.connect({ endpoints: [server.endpoint], prefix: '/h49-watch-end/' })
  const seen: string[] = []
  const members: string[][] = []
  try {
    watcher.watch('k/', (event) => seen.push(`${event.type} ${event.key}`))
    watcher.watchMembers((list) => members.push(list.map((m) => m.id)))
    await writer.put('k/1', 'a')
    await until('the watch to work', () => seen.includes('put k/1'))
    const opened = proxy.watchStreamsOpened()
    proxy.endWatchStreams()
    assert.ok(proxy.watchStreamsEnded() > 0, 'no watch stream went through the proxy')
    // Changes made right after, before the watch can have been opened again.
    await writer.put('k/2', 'b')
    await writer.delete('k/1')
    await writer.join(testNode('node-w'), { ttlMs: 3000 })
    await writer.put('k/3', 'c')
    await until(`the watch to report every change (seen: ${seen.join(', ')})`, () => seen.includes('put k/3'), 20_000)
    assert.deepEqual(seen, ['put k/1', 'put k/2', 'delete k/1', 'put k/3'])
    assert.ok(proxy.watchStreamsOpened() > opened, 'the changes came without a new watch stream: the old one did not end')
    await until('the member watch to report node-w', () => members.some((ids) => ids.includes('node-w')), 20_000)
  } finally {
    await watcher.close()
    await writer.close()
    await proxy.close()
  }
})
