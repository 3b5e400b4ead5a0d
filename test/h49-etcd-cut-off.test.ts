// h49: the primary of a 3-copy volume cut off from etcd by a proxy that stops relaying (a stalled
// connection) past its lease TTL, in a cluster of three GalleonFS nodes (in process, memory
// transport, one etcd coordinator each); then also cut off from the other nodes while clients
// still reach it. The cluster fails the volume over; the cut-off node must say its lease lapsed,
// must not go on acknowledging writes as a second primary, and rejoins once it reaches etcd again.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { type GalleonFS, WriteConcern } from '../src/index.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from './support/etcd.js'
import { h49Cluster } from './support/h49-cluster.js'
import { etcdProxy } from './support/h49-proxy.js'
import { until } from './support/wait.js'

const skip = etcdSkipReason()
let etcd: EtcdServer | undefined
before(async () => { if (skip === undefined) etcd = await startEtcd() })
after(async () => { await etcd?.stop() })

/** Every copy of `v` reads `expected` at block `index`. */
async function onEveryCopy (nodes: readonly GalleonFS[], index: number, expected: Uint8Array): Promise<boolean> {
  for (const g of nodes) if (Buffer.compare(Buffer.from(await g.readBlock('v', index)), Buffer.from(expected)) !== 0) return false
  return true
}

test('the primary cut off from etcd alone past its lease: it says so, the cluster fails over, it serves as a copy, and rejoins when etcd is reachable again', { skip, timeout: 60_000 }, async () => {
  const proxy = await etcdProxy((etcd as EtcdServer).endpoint)
  const cluster = await h49Cluster('/h49-stall/', { n1: proxy.endpoint, others: (etcd as EtcdServer).endpoint })
  const [n1, n2] = cluster.nodes as [GalleonFS, GalleonFS]
  try {
    const blockSize = (await n1.getVolume('v')).blockSize
    for (const seen of cluster.events.values()) seen.length = 0
    proxy.stall()
    await until('n1 says its lease lapsed', () => cluster.events.get('n1')?.some((line) => /^cluster:error .*lease.* ended/.test(line)) === true, 20_000)
    await until('the volume fails over away from n1', async () => (await n2.replicationStatus('v')).primary !== 'n1', 30_000)
    // n1 learns it over the transport (the new primary streams to it): it forwards writes there.
    await until('n1 no longer takes itself for the primary', async () => (await n1.replicationStatus('v')).role !== 'primary', 20_000)
    const data = new Uint8Array(blockSize).fill(9)
    await n1.writeBlock('v', 2, data, WriteConcern.WriteDurable)
    proxy.resume()
    await cluster.settled('n1 is back in the cluster')
    await until('every copy holds the acknowledged write', async () => await onEveryCopy(cluster.nodes, 2, data), 20_000)
    assert.deepEqual(cluster.doublePrimaries, [], 'two nodes held the primary role of v at once')
  } finally {
    await cluster.close()
    await proxy.close()
  }
})

// Fails today: a primary whose lease lapsed goes on serving as primary until another node tells it
// otherwise. Cut off from etcd and from the other nodes, it acknowledged WriteAcknowledged and
// WriteDurable writes for as long as the partition lasted, while the copy the cluster promoted
// served too (two primaries); at the heal, the resync gave it the new primary's bytes and the
// acknowledged writes were gone. The fix is in src/replication (see the h49 report): a node
// whose lease lapsed freezes its primaries until it has rejoined and read their records again.
test('a primary cut off from etcd and from the other nodes (clients still reach it) acknowledges no write it then loses', { skip, timeout: 60_000 }, async () => {
  const proxy = await etcdProxy((etcd as EtcdServer).endpoint)
  const cluster = await h49Cluster('/h49-isolated/', { n1: proxy.endpoint, others: (etcd as EtcdServer).endpoint })
  const [n1, n2] = cluster.nodes as [GalleonFS, GalleonFS]
  try {
    const blockSize = (await n1.getVolume('v')).blockSize
    proxy.stall()
    cluster.network.partition(['n1'], ['n2', 'n3'])
    await until('the volume fails over away from n1', async () => (await n2.replicationStatus('v')).primary !== 'n1', 30_000)
    // n1's lease lapsed more than a TTL ago (etcd expired it, the leader saw that and failed over).
    const data = new Uint8Array(blockSize).fill(9)
    let outcome: 'pending' | 'acknowledged' | string = 'pending'
    const write = n1.writeBlock('v', 2, data, WriteConcern.WriteDurable).then(() => { outcome = 'acknowledged' }, (err: { code?: string }) => { outcome = err.code ?? String(err) })
    // The time the write gets while the partition lasts (either outcome passes below).
    await Promise.race([write, sleep(1000)])
    const duringSplit = outcome
    cluster.network.heal()
    proxy.resume()
    await write
    await cluster.settled('n1 is back in the cluster')
    await sleep(1000) // resyncs after the heal
    if (outcome === 'acknowledged') {
      assert.ok(await onEveryCopy(cluster.nodes, 2, data), `n1 acknowledged a WriteDurable write (${duringSplit === 'acknowledged' ? 'during the partition' : 'after it'}) that the copies do not hold: it served as a second primary (${cluster.doublePrimaries.length} samples of two primaries)`)
    }
    assert.deepEqual(cluster.doublePrimaries.slice(0, 1), [], 'two nodes held the primary role of v at once')
  } finally {
    await cluster.close()
    await proxy.close()
  }
})
