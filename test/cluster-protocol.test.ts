// The inter-node protocol version (src/cluster/protocol.ts): nodes publish the versions they speak,
// stamp their requests, refuse requests in versions they do not speak, refuse to join a cluster
// whose healthy members they cannot talk to, and place no copies on such members.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, type ClusterNode, type GalleonError } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { EtcdCoordinator } from '../backends/etcd/index.js'
import { PROTOCOL_VERSION, OLDEST_PROTOCOL_VERSION, checkRequestVersion, incompatibility, versionFor } from '../src/cluster/protocol.js'
import { etcdSkipReason, startEtcd } from './support/etcd.js'
import { until } from './support/wait.js'

const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

async function open (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, nodeId: string): Promise<GalleonFS> {
  const dir = await mkdtemp(join(tmpdir(), `galleon-protocol-${nodeId}-`))
  dirs.push(dir)
  const g = await GalleonFS.open({ storagePath: dir, cluster: { nodeId, transport: new MemoryTransport({ network, nodeId }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 } })
  opened.push(g)
  return g
}

/** A member record as another release would write it. */
function record (id: string, protocol?: { version: number, oldest: number }): ClusterNode {
  return { id, address: `memory://${id}`, zone: 'default', labels: {}, capacityBytes: 1 << 30, freeBytes: 1 << 30, ...(protocol === undefined ? {} : { protocol }) }
}

describe('inter-node protocol versions', () => {
  it('picks the highest version both ends speak, and names the node to upgrade when there is none', () => {
    assert.equal(versionFor(record('a', { version: 1, oldest: 1 }), { version: 2, oldest: 1 }), 1)
    assert.equal(versionFor(record('a', { version: 3, oldest: 2 }), { version: 2, oldest: 1 }), 2)
    // A record without a version is a release from before versioning: version 1.
    assert.equal(versionFor(record('a'), { version: 2, oldest: 1 }), 1)
    assert.equal(versionFor(record('a'), { version: 3, oldest: 2 }), undefined)
    assert.match(incompatibility(record('old'), { version: 3, oldest: 2 }) as string, /node old speaks inter-node protocol version 1 and this node versions 2 to 3, which have none in common; upgrade node old/)
    assert.match(incompatibility(record('new', { version: 5, oldest: 4 }), { version: 3, oldest: 2 }) as string, /node new speaks inter-node protocol versions 4 to 5 .* upgrade this node/)
    assert.equal(incompatibility(record('same', { version: PROTOCOL_VERSION, oldest: OLDEST_PROTOCOL_VERSION })), undefined)
  })

  it('checks the version a request is stamped with', () => {
    const mine = { version: 3, oldest: 2 }
    assert.equal(checkRequestVersion('n2', 'repl:apply', { protocol: 2 }, mine), 2)
    assert.throws(() => checkRequestVersion('n2', 'repl:apply', {}, mine), { code: 'IO_ERROR', message: /node n2 sent a repl:apply message in inter-node protocol version 1, and this node speaks versions 2 to 3; upgrade node n2/ })
    assert.throws(() => checkRequestVersion('n2', 'repl:apply', { protocol: 4 }, mine), { code: 'IO_ERROR', message: /version 4.*upgrade this node/ })
    for (const bad of ['1', 0, 1.5, null]) {
      assert.throws(() => checkRequestVersion('n2', 'ping', { protocol: bad }, mine), { code: 'IO_ERROR', message: /malformed inter-node protocol version/ })
    }
  })

  it('a node publishes its versions, refuses requests in others, and serves unstamped and stamped ones', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await open(network, coordinators, 'n1')
    const n2 = await open(network, coordinators, 'n2')
    await until('both members are seen', () => n1.cluster?.members.length === 2)
    assert.deepEqual(n1.cluster?.members.map((m) => m.protocol), [{ version: PROTOCOL_VERSION, oldest: OLDEST_PROTOCOL_VERSION }, { version: PROTOCOL_VERSION, oldest: OLDEST_PROTOCOL_VERSION }])
    // The library's own requests are stamped and served.
    assert.equal((await n1.cluster?.request('n2', { kind: 'ping', header: {} }))?.header.nodeId, 'n2')
    const address = (await n1.clusterStatus()).members.find((m) => m.id === 'n2')?.address as string
    const stranger = network.transport('n9')
    try {
      // Unstamped (a release before versioning): version 1, served.
      assert.equal((await stranger.request(address, { kind: 'ping', header: { toNode: 'n2' } })).header.nodeId, 'n2')
      await assert.rejects(stranger.request(address, { kind: 'ping', header: { toNode: 'n2', protocol: PROTOCOL_VERSION + 1 } }), { code: 'IO_ERROR', message: new RegExp(`node n9 sent a ping message in inter-node protocol version ${PROTOCOL_VERSION + 1}.*upgrade this node`) })
      // A refused request changes nothing: the node keeps serving.
      await n2.createVolume({ name: 'kept', sizeBytes: '1M' })
      await assert.rejects(stranger.request(address, { kind: 'repl:delete', header: { toNode: 'n2', volumeId: (await n2.getVolume('kept')).id, protocol: 99 } }), { code: 'IO_ERROR' })
      assert.equal((await n2.getVolume('kept')).name, 'kept')
    } finally {
      await stranger.close()
    }
  })

  it('a member this node cannot talk to is reported, gets no copies, and keeps new nodes from joining', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await open(network, coordinators, 'n1')
    const errors: string[] = []
    n1.on('cluster:error', (event) => { errors.push(event.message) })
    const future = coordinators.coordinator()
    try {
      await future.join(record('future', { version: PROTOCOL_VERSION + 5, oldest: PROTOCOL_VERSION + 5 }), { ttlMs: 5000 })
      await until('n1 sees the new member', () => n1.cluster?.members.some((m) => m.id === 'future') === true)
      await until('n1 reports it', () => errors.some((m) => /node future speaks inter-node protocol .* upgrade this node; it gets no copies/.test(m)))
      // Placement leaves it out: a 2-copy volume has no node for its second copy.
      const volume = await n1.createVolume({ name: 'pair', sizeBytes: '1M', replicas: 2 })
      assert.equal(volume.state, 'degraded')
      assert.deepEqual((await n1.replicationStatus('pair')).nodes, ['n1'])
      // Requests to it are refused here, before they are sent.
      await assert.rejects(n1.cluster?.request('future', { kind: 'ping', header: {} }) as Promise<unknown>, { code: 'IO_ERROR', message: /upgrade this node/ })
      // A new node of this release does not join a cluster with a healthy member it cannot talk to.
      const dir = await mkdtemp(join(tmpdir(), 'galleon-protocol-n2-'))
      dirs.push(dir)
      const refused = await GalleonFS.open({ storagePath: dir, cluster: { nodeId: 'n2', transport: new MemoryTransport({ network, nodeId: 'n2' }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 } }).then((g) => { opened.push(g); return undefined }, (err: GalleonError) => err)
      assert.equal(refused?.code, 'IO_ERROR')
      assert.match(refused?.message ?? '', /node n2 cannot join the cluster: node future speaks inter-node protocol version \d+ and this node version \d+, which have none in common; upgrade this node/)
      assert.equal(n1.cluster?.members.some((m) => m.id === 'n2'), false)
    } finally {
      await future.leave()
      await future.close()
    }
    // Once it is gone, nodes join again.
    const n3 = await open(network, coordinators, 'n3')
    await until('n1 sees n3', () => n1.cluster?.members.some((m) => m.id === 'n3' && m.healthy) === true)
    assert.ok(n3.cluster !== undefined)
  })

  it('join() checks the versions it is given', async () => {
    const coordinators = new MemoryCoordinatorCluster()
    const coordinator = coordinators.coordinator()
    try {
      for (const protocol of [{ version: 1, oldest: 2 }, { version: 1 }, { version: 0, oldest: 0 }, { version: 1.5, oldest: 1 }, 'v1']) {
        await assert.rejects(coordinator.join({ ...record('x'), protocol } as unknown as ClusterNode), { code: 'INVALID_ARGUMENT', message: /node\.protocol must be \{ version, oldest \}/ })
      }
    } finally {
      await coordinator.close()
    }
  })

  it('the versions go through etcd with the member record', { skip: etcdSkipReason() }, async () => {
    const etcd = await startEtcd()
    const a = await EtcdCoordinator.connect({ endpoints: [etcd.endpoint] })
    const b = await EtcdCoordinator.connect({ endpoints: [etcd.endpoint] })
    try {
      await a.join(record('old'))
      await a.leave()
      await a.join(record('old'))
      await b.join(record('new', { version: 7, oldest: 6 }))
      const members = await b.members()
      assert.deepEqual(members.map((m) => [m.id, m.protocol]), [['new', { version: 7, oldest: 6 }], ['old', undefined]])
      assert.equal(versionFor(members[1] as ClusterNode), 1)
    } finally {
      await Promise.allSettled([a.close(), b.close()])
      await etcd.stop()
    }
  })
})
