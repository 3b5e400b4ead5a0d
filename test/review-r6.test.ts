// Review r6 (inter-node protocol version; droppedNodes of replicated volumes): the defects found,
// each as a test that fails on the code as committed (see the report for the fixes proposed).

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern, type ClusterNode } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { PROTOCOL_VERSION, versionFor } from '../src/cluster/protocol.js'
import { membersOf } from '../src/cluster/watches.js'
import { FailoverLeader } from '../src/replication/failover.js'
import type { ManagerCore } from '../src/replication/common.js'
import { deletedKey, parseDeleted, parseRecord, recordKey } from '../src/replication/records.js'
import { until } from './support/wait.js'
import { recordOf } from './support/replica-records.js'

const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

interface Node { g: GalleonFS, id: string, dir: string }

async function freshDir (id: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `galleon-r6-${id}-`))
  dirs.push(dir)
  return dir
}

async function startNode (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, id: string, options: { dir?: string, replicaReplacementDelayMs?: number } = {}): Promise<Node> {
  const dir = options.dir ?? await freshDir(id)
  const g = await GalleonFS.open({
    storagePath: dir,
    cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000, ...(options.replicaReplacementDelayMs === undefined ? {} : { replicaReplacementDelayMs: options.replicaReplacementDelayMs }) }
  })
  opened.push(g)
  return { g, id, dir }
}

async function cluster (ids: string[], options: { replicaReplacementDelayMs?: number } = {}): Promise<{ network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, nodes: Node[] }> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const nodes: Node[] = []
  for (const id of ids) nodes.push(await startNode(network, coordinators, id, options))
  await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === ids.length))
  return { network, coordinators, nodes }
}

/** A member record as another release would write it. */
function memberRecord (id: string, protocol?: { version: number, oldest: number }): ClusterNode {
  return { id, address: `memory://${id}`, zone: 'default', labels: {}, capacityBytes: 1 << 30, freeBytes: 1 << 30, ...(protocol === undefined ? {} : { protocol }) }
}

const FAR_FUTURE = { version: PROTOCOL_VERSION + 5, oldest: PROTOCOL_VERSION + 5 }


function block (seed: number, size = 4096): Uint8Array {
  const out = new Uint8Array(size)
  for (let i = 0; i < size; i++) out[i] = (seed * 31 + i * 7) & 0xff
  return out
}

describe('review r6: inter-node protocol version', () => {
  it('moving a volume to a member this node cannot talk to is refused at once, naming the protocol, and nothing is placed there', { timeout: 60_000 }, async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await startNode(network, coordinators, 'n1')
    const future = coordinators.coordinator()
    try {
      await future.join(memberRecord('future', FAR_FUTURE), { ttlMs: 5000 })
      await until('n1 sees the incompatible member, healthy', () => n1.g.cluster?.members.some((m) => m.id === 'future' && m.healthy) === true)
      const volume = await n1.g.createVolume({ name: 'mover', sizeBytes: '1M' })
      await n1.g.writeBlock('mover', 0, block(3), WriteConcern.WriteDurable)
      const placedThere: string[][] = []
      n1.g.on('replication:replica-added', (event) => { placedThere.push([...event.nodes]) })
      // The signal only bounds the committed code, which waits for a copy that can never be filled.
      const outcome = await n1.g.migrateVolume('mover', { node: 'future' }, { signal: AbortSignal.timeout(8000) }).then(() => undefined, (err: { code?: string, message?: string }) => err)
      assert.equal(outcome?.code, 'IO_ERROR', `refused as the protocol refuses requests, not left to time out: ${outcome?.code} ${outcome?.message}`)
      assert.match(outcome?.message ?? '', /future.*inter-node protocol/)
      assert.deepEqual(placedThere, [], 'no copy was ever placed on the incompatible member')
      // The volume stays whole on n1.
      assert.deepEqual(await n1.g.readBlock('mover', 0), block(3))
      const record = await recordOf(coordinators, volume.id)
      assert.equal(record?.nodes.includes('future') ?? false, false)
    } finally {
      await future.leave().catch(() => {})
      await future.close()
    }
  })

  it('a member record with a malformed protocol range reads as version 1, as a record without one (what join() would have refused)', () => {
    for (const protocol of [{ version: 1, oldest: 3 }, { version: 0, oldest: 0 }, { version: -2, oldest: -5 }]) {
      const members = membersOf(new Map([['nodes/odd/record', JSON.stringify({ ...memberRecord('odd'), protocol, joinedAt: '2026-01-01T00:00:00.000Z' })], ['nodes/odd/alive', '1']]))
      assert.equal(members[0]?.protocol, undefined, `range ${JSON.stringify(protocol)} is malformed`)
      assert.equal(versionFor(members[0] as ClusterNode), 1)
    }
  })

  it('failover promotes an in-sync copy this node can talk to before one it cannot', async () => {
    const coordinators = new MemoryCoordinatorCluster()
    const handles = []
    try {
      // The leader, a healthy member of a release it shares no version with, and one of this release;
      // the primary's node ('gone') is no member at all.
      for (const [id, protocol] of [['leader', undefined], ['future', FAR_FUTURE], ['n2', undefined]] as const) {
        const handle = coordinators.coordinator()
        handles.push(handle)
        await handle.join(memberRecord(id, protocol), { ttlMs: 10_000 })
      }
      const store = coordinators.coordinator()
      handles.push(store)
      const volumeId = 'review-r6-failover'
      const spec = { id: volumeId, name: 'promoted', namespace: 'default', type: 'persistent', sizeBytes: 1 << 20, blockSize: 4096, storageClass: 'fast-local-ssd', replicas: 3, accessModes: ['ReadWriteOnce'], labels: {} }
      await store.put(recordKey(volumeId), JSON.stringify({ spec, primary: 'gone', epoch: 4, nodes: ['gone', 'future', 'n2'], inSync: ['gone', 'future', 'n2'] }))
      const core = { nodeId: 'leader', closed: false, cluster: { leadership: { epoch: 1 }, closedMembers: async () => new Set<string>() }, coordinator: store, host: { emit: () => {} } } as unknown as ManagerCore
      await new FailoverLeader(core, 600_000).pass()
      const entry = await store.get(recordKey(volumeId))
      const record = entry === undefined ? undefined : parseRecord(entry.value)
      assert.equal(record?.epoch, 5, 'the volume failed over')
      // 'future' can neither be reached by this node nor stream to n2: n2 leads, and keeps a copy streaming.
      assert.equal(record?.primary, 'n2')
    } finally {
      await Promise.allSettled(handles.map(async (h) => { await h.leave().catch(() => {}); await h.close() }))
    }
  })
})

describe('review r6: droppedNodes', () => {
  it('a copy given up by a storage-class change while its node is away is listed, and deleted when the node comes back after the volume was deleted', { timeout: 90_000 }, async () => {
    const { network, coordinators, nodes } = await cluster(['n1', 'n2', 'n3'])
    const [n1, , n3] = nodes as [Node, Node, Node]
    for (const node of nodes) {
      await node.g.createStorageClass({ name: 'triple', parameters: { replication: '3' } })
      await node.g.createStorageClass({ name: 'double', parameters: { replication: '2' } })
    }
    const volume = await n1.g.createVolume({ name: 'shrinking', sizeBytes: '256K', storageClass: 'triple' })
    await until('three copies in sync', async () => (await n1.g.replicationStatus('shrinking')).inSync.length === 3)
    // n3 goes away (well within the replacement delay: the leader does not give its copy up).
    await n3.g.close()
    await n1.g.writeBlock('shrinking', 0, block(5), WriteConcern.WriteAcknowledged)
    await until('n3 is out of sync', async () => !(await n1.g.replicationStatus('shrinking')).inSync.includes('n3'))
    // Two copies now: the out-of-sync one (n3's, its node away) is given up.
    await n1.g.migrateVolume('shrinking', { storageClass: 'double' })
    const reshaped = await recordOf(coordinators, volume.id)
    assert.deepEqual([...(reshaped?.nodes ?? [])].sort(), ['n1', 'n2'])
    assert.deepEqual(reshaped?.droppedNodes, ['n3'], 'the copy given up while its node is away is listed until that node has deleted it')
    // Deleted while n3 is away; n3 comes back and must not keep an unrecorded copy.
    await n1.g.deleteVolume('shrinking')
    const back = await startNode(network, coordinators, 'n3', { dir: n3.dir })
    await until('n3 deleted its copy of the deleted volume', async () => await back.g.getVolume('shrinking').then(() => false, (err: { code?: string }) => err.code === 'VOLUME_NOT_FOUND'))
  })

  it('a node that comes back without its given-up copy (a replaced disk) is taken off droppedNodes, so a later deletion mark does not name it for ever', { timeout: 90_000 }, async () => {
    const { network, coordinators, nodes } = await cluster(['n1', 'n2', 'n3'], { replicaReplacementDelayMs: 1500 })
    const n1 = nodes[0] as Node
    const volume = await n1.g.createVolume({ name: 'lasting', sizeBytes: '256K', replicas: 2 })
    await n1.g.writeBlock('lasting', 0, block(1), WriteConcern.WriteReplicated)
    const lostId = (await n1.g.replicationStatus('lasting')).nodes.find((n) => n !== 'n1') as string
    const lost = nodes.find((n) => n.id === lostId) as Node
    await lost.g.close()
    await until('the copy of the node that stays away is given up and replaced', async () => {
      const s = await n1.g.replicationStatus('lasting')
      return !s.nodes.includes(lostId) && s.inSync.length === 2
    }, 30_000)
    assert.deepEqual((await recordOf(coordinators, volume.id))?.droppedNodes, [lostId])
    // The node comes back under its id with a new, empty disk: it holds no copy to delete.
    const back = await startNode(network, coordinators, lostId, { dir: await freshDir(lostId), replicaReplacementDelayMs: 1500 })
    await until(`${lostId} is healthy again`, () => n1.g.cluster?.members.some((m) => m.id === lostId && m.healthy) === true)
    await until(`the record no longer lists ${lostId} as holding a given-up copy`, async () => (await recordOf(coordinators, volume.id))?.droppedNodes === undefined, 15_000)
    // It leaves for good; the volume is deleted later: its mark must not wait for that node.
    await back.g.leaveCluster()
    await n1.g.deleteVolume('lasting')
    const reader = coordinators.coordinator()
    try {
      await until('the deletion mark is gone', async () => {
        const mark = await reader.get(deletedKey(volume.id))
        return mark === undefined || !(parseDeleted(mark.value) ?? []).includes(lostId)
      }, 15_000)
    } finally {
      await reader.close()
    }
  })
})
