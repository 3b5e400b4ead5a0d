// README "Replication" and "Clustering", claims no other test checks: a replicated write concern
// that no copy can meet is refused before anything is written (a 1-copy volume, a degraded one),
// clones of a replicated volume (1-copy on the primary's node; refused elsewhere naming the
// primary), and a forced leave of a primary (its volumes stay on the node, out of the cluster; the
// cluster fails them over). On-disk nodes in one process on the memory transport and coordinator.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { until } from './support/wait.js'

const BLOCK = 4096
const opened: GalleonFS[] = []
const dirs: string[] = []
const dirOf = new Map<GalleonFS, string>()
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

async function start (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, nodeId: string, zone = 'default', replication?: 'synchronous' | 'asynchronous'): Promise<GalleonFS> {
  const dir = await mkdtemp(join(tmpdir(), `h55-repl-${nodeId}-`))
  dirs.push(dir)
  const g = await GalleonFS.open({ storagePath: dir, cluster: { nodeId, zone, transport: new MemoryTransport({ network, nodeId }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000, ...(replication === undefined ? {} : { replication }) } })
  opened.push(g)
  dirOf.set(g, dir)
  return g
}

function filled (value: number): Uint8Array {
  return new Uint8Array(BLOCK).fill(value)
}

const zeros = new Uint8Array(BLOCK)

async function rejectsWith (attempt: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(attempt, (err: Error & { code?: string }) => {
    assert.equal(err.code, code, `${code} expected, got ${err.code ?? ''}: ${err.message}`)
    if (message !== undefined) assert.match(err.message, message)
    return true
  })
}

describe('README Replication: write concerns no copy can meet, clones, forced leave', () => {
  it('WriteReplicated and WriteDistributed are refused before anything is written on a 1-copy volume and on a degraded volume with no in-sync copy; once a copy is in sync they succeed', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await start(network, coordinators, 'n1', 'zone-1')
    await n1.createVolume({ name: 'single', sizeBytes: 16 * BLOCK })
    await n1.writeBlock('single', 0, filled(1), WriteConcern.WriteDurable)
    for (const concern of [WriteConcern.WriteReplicated, WriteConcern.WriteDistributed]) {
      await rejectsWith(n1.writeBlock('single', 0, filled(2), concern), 'WRITE_CONCERN_UNSATISFIED')
      await rejectsWith(n1.writeBlock('single', 1, filled(2), concern), 'WRITE_CONCERN_UNSATISFIED')
    }
    assert.deepEqual(await n1.readBlock('single', 0), filled(1), 'the refused write did not overwrite block 0')
    assert.deepEqual(await n1.readBlock('single', 1), zeros, 'the refused write did not write block 1')
    // Two copies wanted, one node: created degraded, and replicated writes are refused unwritten.
    const degraded = await n1.createVolume({ name: 'pair', sizeBytes: 16 * BLOCK, replicas: 2 })
    assert.equal(degraded.state, 'degraded')
    await n1.writeBlock('pair', 0, filled(3), WriteConcern.WriteDurable)
    await rejectsWith(n1.writeBlock('pair', 0, filled(4), WriteConcern.WriteReplicated), 'WRITE_CONCERN_UNSATISFIED')
    await rejectsWith(n1.write('pair', 2 * BLOCK, filled(4), WriteConcern.WriteReplicated), 'WRITE_CONCERN_UNSATISFIED')
    assert.deepEqual(await n1.readBlock('pair', 0), filled(3))
    assert.deepEqual(await n1.readBlock('pair', 2), zeros)
    // A node joins (another zone): the leader adds the copy; once in sync both concerns are met.
    const n2 = await start(network, coordinators, 'n2', 'zone-2')
    await until('the copy on n2 is in sync', async () => (await n1.replicationStatus('pair')).inSync.includes('n2'))
    await n1.writeBlock('pair', 5, filled(5), WriteConcern.WriteReplicated)
    await n1.writeBlock('pair', 6, filled(6), WriteConcern.WriteDistributed)
    assert.deepEqual(await n2.readBlock('pair', 0), filled(3), 'the copy holds what was written before it came')
    assert.deepEqual(await n2.readBlock('pair', 2), zeros)
    assert.deepEqual(await n2.readBlock('pair', 6), filled(6))
  })

  it('a clone of a replicated volume is a 1-copy volume on the primary\'s node; cloning on another node is refused with NOT_LEADER naming the primary', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await start(network, coordinators, 'n1')
    const n2 = await start(network, coordinators, 'n2')
    await until('n1 sees n2', () => n1.cluster?.members.filter((m) => m.healthy).length === 2)
    await n1.createVolume({ name: 'src', sizeBytes: 16 * BLOCK, replicas: 2 })
    await n1.writeBlock('src', 0, filled(9), WriteConcern.WriteReplicated)
    await n1.createSnapshot('src', 'snap')
    await rejectsWith(n2.cloneVolume('src', 'clone-on-n2'), 'NOT_LEADER', /n1/)
    await rejectsWith(n2.cloneVolume({ volume: 'src', snapshot: 'snap' }, 'clone-on-n2'), 'NOT_LEADER', /n1/)
    await rejectsWith(n2.getVolume('clone-on-n2'), 'VOLUME_NOT_FOUND')
    const clone = await n1.cloneVolume('src', 'clone')
    assert.equal(clone.replicas, 1)
    const status = await n1.replicationStatus('clone')
    assert.deepEqual([...status.nodes], ['n1'])
    assert.equal(status.epoch, undefined, 'no cluster record: a local volume')
    assert.deepEqual(await n1.readBlock('clone', 0), filled(9))
    await rejectsWith(n2.getVolume('clone'), 'VOLUME_NOT_FOUND')
  })

  it('leaveCluster({ force: true }) of a primary hands nothing off: its volumes stay on the node, out of the cluster, and the cluster fails the replicated one over', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await start(network, coordinators, 'n1')
    const n2 = await start(network, coordinators, 'n2')
    await until('n1 sees n2', () => n1.cluster?.members.filter((m) => m.healthy).length === 2)
    const created = await n1.createVolume({ name: 'kept', sizeBytes: 16 * BLOCK, replicas: 2 })
    await n1.writeBlock('kept', 0, filled(7), WriteConcern.WriteReplicated)
    await n1.createVolume({ name: 'local', sizeBytes: 16 * BLOCK })
    await n1.writeBlock('local', 0, filled(8), WriteConcern.WriteDurable)
    await n1.leaveCluster({ force: true })
    assert.equal((await n1.clusterStatus()).clustering, false)
    // Still on n1, with its data and id, as volumes of a single instance.
    assert.deepEqual((await n1.listVolumes()).map((v) => v.name).sort(), ['kept', 'local'])
    assert.equal((await n1.getVolume('kept')).id, created.id)
    assert.deepEqual(await n1.readBlock('kept', 0), filled(7))
    assert.deepEqual(await n1.readBlock('local', 0), filled(8))
    await n1.writeBlock('kept', 1, filled(10), WriteConcern.WriteDurable)
    assert.deepEqual(await n1.readBlock('kept', 1), filled(10))
    // The cluster fails the replicated volume over to n2's copy, which has the replicated write.
    await until('n2 leads kept', async () => (await n2.replicationStatus('kept')).primary === 'n2', 20_000)
    assert.deepEqual(await n2.readBlock('kept', 0), filled(7))
    await n2.writeBlock('kept', 2, filled(11), WriteConcern.WriteDurable)
    assert.deepEqual(await n2.readBlock('kept', 2), filled(11))
  })

  it('a replica\'s node serves byte writes, trims and flushes by forwarding them to the primary: every copy holds the result', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await start(network, coordinators, 'n1')
    const n2 = await start(network, coordinators, 'n2')
    await until('n1 sees n2', () => n1.cluster?.members.filter((m) => m.healthy).length === 2)
    await n1.createVolume({ name: 'fwd', sizeBytes: 16 * BLOCK, replicas: 2 })
    await until('n2 is in sync', async () => (await n1.replicationStatus('fwd')).inSync.length === 2)
    for (let i = 0; i < 4; i++) await n1.writeBlock('fwd', i, filled(20 + i), WriteConcern.WriteReplicated)
    // Through the replica: an unaligned byte write across blocks 0 and 1, a trim of block 2, a flush.
    const bytes = new Uint8Array(BLOCK).fill(99)
    await n2.write('fwd', BLOCK / 2, bytes, WriteConcern.WriteReplicated)
    await n2.trim('fwd', 2 * BLOCK, BLOCK)
    await n2.flush('fwd')
    const expected = new Uint8Array(4 * BLOCK)
    for (let i = 0; i < 4; i++) expected.fill(20 + i, i * BLOCK, (i + 1) * BLOCK)
    expected.fill(99, BLOCK / 2, BLOCK / 2 + BLOCK)
    expected.fill(0, 2 * BLOCK, 3 * BLOCK)
    assert.equal((await n1.replicationStatus('fwd')).primary, 'n1')
    assert.deepEqual(await n1.read('fwd', 0, 4 * BLOCK), expected, 'the primary holds the forwarded changes')
    assert.deepEqual(await n2.read('fwd', 0, 4 * BLOCK), expected, 'read through the replica')
    // What each node's own copy holds: opened alone, outside the cluster.
    const paths = [n1, n2].map((g) => dirOf.get(g) as string)
    await n1.close()
    await n2.close()
    for (const dir of paths) {
      const alone = await GalleonFS.open({ storagePath: dir })
      try {
        assert.deepEqual(await alone.read('fwd', 0, 4 * BLOCK), expected, `copy in ${dir}`)
      } finally {
        await alone.close()
      }
    }
  })
})

describe('README Replication: cluster option replication: \'asynchronous\'', () => {
  it('flush and snapshot calls resolve once made on the primary, while the in-sync copy has not acknowledged them', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await start(network, coordinators, 'n1', 'default', 'asynchronous')
    const n2 = await start(network, coordinators, 'n2', 'default', 'asynchronous')
    await until('n1 sees n2', () => n1.cluster?.members.filter((m) => m.healthy).length === 2)
    await n1.createVolume({ name: 'async', sizeBytes: 16 * BLOCK, replicas: 2 })
    await until('n2 is in sync', async () => (await n1.replicationStatus('async')).inSync.length === 2)
    // n2 stops taking the stream (its batches get no answer); it is still listed in sync meanwhile.
    network.drop((message) => message.to === 'n2' && message.kind === 'repl:apply', { silent: true })
    try {
      await n1.writeBlock('async', 0, filled(1), WriteConcern.WriteDurable)
      await n1.flush('async')
      await n1.createSnapshot('async', 'quick')
      const status = await n1.replicationStatus('async')
      const link = status.links.find((l) => l.node === 'n2')
      // Synchronous replication could not have resolved these before n2 acknowledged them or left the in-sync list.
      assert.ok(status.inSync.includes('n2'), `n2 still in sync: ${status.inSync.join(', ')}`)
      assert.ok((link?.lagChanges ?? 0) > 0, `n2 has not acknowledged the write and the snapshot (lag ${String(link?.lagChanges)})`)
      assert.deepEqual((await n1.listSnapshots('async')).map((snap) => snap.name), ['quick'])
    } finally {
      network.drop(0)
    }
    await until('n2 has the snapshot once the stream flows again', async () => (await n2.listSnapshots('async')).some((snap) => snap.name === 'quick'), 20_000)
    assert.deepEqual(await n2.readBlock({ volume: 'async', snapshot: 'quick' }, 0), filled(1))
  })
})

describe('README Replication: the refusal of a replicated concern on a volume that has one copy', () => {
  // Defect: in a cluster the refusal says the instance has no replication and tells to run a
  // cluster; it should name the volume and say it has one copy (and how to give it more).
  it('names the volume and its single copy, not a missing cluster', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await start(network, coordinators, 'n1')
    await n1.createVolume({ name: 'lonely', sizeBytes: 16 * BLOCK })
    await assert.rejects(n1.writeBlock('lonely', 0, filled(1), WriteConcern.WriteReplicated), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'WRITE_CONCERN_UNSATISFIED')
      assert.doesNotMatch(err.message, /no replication configured|run a cluster/, `misleading in a cluster: ${err.message}`)
      assert.match(err.message, /lonely/, `names the volume: ${err.message}`)
      return true
    })
  })
})
