// h49: a cluster of three GalleonFS nodes (in process, memory transport, one etcd coordinator each)
// when etcd itself goes away: killed (SIGKILL) and started again on the same data directory and
// port, or paused (SIGSTOP) past the lease TTL. The nodes come back by themselves (membership,
// leases, leadership, watches), calls that need etcd fail cleanly meanwhile, and the volume never
// has two primaries. (A node cut off from etcd alone: h49-etcd-cut-off.test.ts.)

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { type GalleonFS, WriteConcern } from '../src/index.js'
import { isGalleonError } from '../src/errors.js'
import { etcdSkipReason } from './support/etcd.js'
import { h49Cluster, LEASE_TTL_MS, type H49Cluster } from './support/h49-cluster.js'
import { startRestartableEtcd, type RestartableEtcd } from './support/h49-etcd.js'
import { until } from './support/wait.js'

const skip = etcdSkipReason()
let etcd: RestartableEtcd | undefined
before(async () => { if (skip === undefined) etcd = await startRestartableEtcd() })
after(async () => { await etcd?.stop() })

/** Calls that need etcd, while it is away: each fails with BACKEND_UNAVAILABLE naming etcd, and creates nothing. */
async function assertRefusedWhileAway (n2: GalleonFS, n3: GalleonFS): Promise<void> {
  await assert.rejects(n2.createVolume({ name: 'w', sizeBytes: 1 << 20, replicas: 3 }), (err: unknown) => isGalleonError(err, 'BACKEND_UNAVAILABLE') && /etcd at http:\/\/127\.0\.0\.1:\d+/.test(err.message))
  await assert.rejects(n3.clusterStatus(), (err: unknown) => isGalleonError(err, 'BACKEND_UNAVAILABLE') && /etcd at/.test(err.message))
}

/** A replicated write through n1 while etcd is away: the data path needs no etcd, so it works, or fails cleanly. */
async function writeWhileAway (n1: GalleonFS, data: Uint8Array): Promise<boolean> {
  try {
    await n1.writeBlock('v', 0, data, WriteConcern.WriteReplicated)
    return true
  } catch (err) {
    assert.ok(isGalleonError(err, 'WRITE_CONCERN_UNSATISFIED') || isGalleonError(err, 'BACKEND_UNAVAILABLE'), `a replicated write while etcd was away failed with ${String(err)}`)
    return false
  }
}

/** After the outage: one primary throughout, the same bytes on every copy, nothing left of the refused createVolume, watches working. */
async function assertRecovered (cluster: H49Cluster, expected: Uint8Array): Promise<void> {
  const [n1, n2, n3] = cluster.nodes as [GalleonFS, GalleonFS, GalleonFS]
  assert.deepEqual(cluster.doublePrimaries, [], 'two nodes held the primary role of v at once')
  const roles = await Promise.all(cluster.nodes.map(async (g) => (await g.replicationStatus('v')).role))
  assert.equal(roles.filter((role) => role === 'primary').length, 1, `roles: ${roles.join(', ')}`)
  await until('every copy of v holds the last acknowledged bytes', async () => {
    for (const g of cluster.nodes) if (Buffer.compare(Buffer.from(await g.readBlock('v', 0)), Buffer.from(expected)) !== 0) return false
    return true
  }, 20_000)
  for (const g of cluster.nodes) assert.equal((await g.listVolumes()).some((v) => v.name === 'w'), false, 'the createVolume refused while etcd was away left a volume')
  // Watches: a volume created now reaches the other nodes' replica-set watches, and its name is free.
  await n2.createVolume({ name: 'w', sizeBytes: 1 << 20, replicas: 3 })
  await until('n1 and n3 hold copies of w', async () => (await n1.replicationStatus('w').catch(() => undefined))?.role === 'replica' && (await n3.replicationStatus('w').catch(() => undefined))?.role === 'replica', 20_000)
}

test('etcd killed and started again on its data: nodes rejoin by themselves and say their leases lapsed, writes fail cleanly or work meanwhile, one primary throughout', { skip, timeout: 60_000 }, async () => {
  const server = etcd as RestartableEtcd
  const cluster = await h49Cluster('/h49-kill/', { n1: server.endpoint, others: server.endpoint })
  const [n1, n2, n3] = cluster.nodes as [GalleonFS, GalleonFS, GalleonFS]
  try {
    const blockSize = (await n1.getVolume('v')).blockSize
    await n1.writeBlock('v', 0, new Uint8Array(blockSize).fill(1), WriteConcern.WriteReplicated)
    for (const seen of cluster.events.values()) seen.length = 0
    await server.kill()
    await assertRefusedWhileAway(n2, n3)
    const during = new Uint8Array(blockSize).fill(2)
    const written = await writeWhileAway(n1, during)
    // Each node's lease deadline passes (a TTL without a confirmed keepalive): none leads any more.
    await until('no node leads', () => cluster.nodes.every((g) => g.cluster?.leadership === undefined), 20_000)
    await until('every node said its lease lapsed', () => [...cluster.events.values()].every((seen) => seen.some((line) => /^cluster:error .*lease.* ended/.test(line))), 20_000)
    await server.restart()
    await cluster.settled('the cluster works again after etcd restarted')
    await assertRecovered(cluster, written ? during : new Uint8Array(blockSize).fill(1))
  } finally {
    await cluster.close()
  }
})

test('etcd paused (SIGSTOP) past twice the lease TTL, then resumed: nodes rejoin by themselves, one primary throughout', { skip, timeout: 60_000 }, async () => {
  const server = etcd as RestartableEtcd
  const cluster = await h49Cluster('/h49-pause/', { n1: server.endpoint, others: server.endpoint })
  const [n1, n2, n3] = cluster.nodes as [GalleonFS, GalleonFS, GalleonFS]
  try {
    const blockSize = (await n1.getVolume('v')).blockSize
    await server.pause()
    try {
      await assertRefusedWhileAway(n2, n3)
      const during = new Uint8Array(blockSize).fill(3)
      const written = await writeWhileAway(n1, during)
      await until('no node leads', () => cluster.nodes.every((g) => g.cluster?.leadership === undefined), 20_000)
      // Past the record leases (twice the TTL) as well: on SIGCONT etcd expires every lease at once.
      await sleep(LEASE_TTL_MS * 2)
      server.resume()
      await cluster.settled('the cluster works again after etcd resumed')
      await assertRecovered(cluster, written ? during : new Uint8Array(blockSize))
    } finally {
      server.resume()
    }
  } finally {
    await cluster.close()
  }
})
