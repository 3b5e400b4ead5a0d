// forgetClusterNode: a node gone for good is forgotten by the cluster. Its copies are given up at
// once (new ones are placed), it comes off the lists of given-up copies and the deletion marks that
// waited for it, and what cannot be forgotten (a member, the only up-to-date copy) is refused
// before anything changes.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { deletedKey, parseDeleted, recordKey, type ReplicaSetRecord } from '../src/replication/records.js'
import { expectCode } from './support/assertions.js'
import { until } from './support/wait.js'
import { recordOf } from './support/replica-records.js'

const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

interface Node { g: GalleonFS, id: string, dir: string, events: string[] }

async function startNode (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, id: string, dir?: string): Promise<Node> {
  const storagePath = dir ?? await mkdtemp(join(tmpdir(), `galleon-forget-${id}-`))
  if (dir === undefined) dirs.push(storagePath)
  const g = await GalleonFS.open({
    storagePath,
    cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 }
  })
  opened.push(g)
  const events: string[] = []
  g.on('replication:replica-removed', (e) => { events.push(`removed ${e.volumeId} ${e.nodes.join(',')} ${e.reason}`) })
  g.on('replication:error', (e) => { events.push(`error ${e.volumeId} ${e.message}`) })
  return { g, id, dir: storagePath, events }
}


function block (seed: number): Uint8Array {
  const out = new Uint8Array(4096)
  for (let i = 0; i < out.length; i++) out[i] = (seed * 31 + i * 7) & 0xff
  return out
}

describe('forgetClusterNode', () => {
  it('gives up the copies of a node gone for good, takes it off given-up lists and deletion marks, and refuses what it cannot forget', { timeout: 120_000 }, async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const nodes = [await startNode(network, coordinators, 'n1'), await startNode(network, coordinators, 'n2'), await startNode(network, coordinators, 'n3')]
    await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 3))
    const [n1, n2, n3] = nodes as [Node, Node, Node]
    for (const node of nodes) {
      await node.g.createStorageClass({ name: 'triple', parameters: { replication: '3' } })
      await node.g.createStorageClass({ name: 'double', parameters: { replication: '2' } })
    }
    // kept: three copies, one on n3. shrinking: n3's copy is given up by a class change while n3
    // is away (droppedNodes). doomed: deleted while n3 is away (its mark names n3).
    const kept = await n1.g.createVolume({ name: 'kept', sizeBytes: '256K', storageClass: 'triple' })
    const shrinking = await n1.g.createVolume({ name: 'shrinking', sizeBytes: '256K', storageClass: 'triple' })
    const doomed = await n1.g.createVolume({ name: 'doomed', sizeBytes: '256K', storageClass: 'triple' })
    for (const name of ['kept', 'shrinking', 'doomed']) {
      await n1.g.writeBlock(name, 1, block(1), WriteConcern.WriteReplicated)
      await until(`three copies of ${name} in sync`, async () => (await n1.g.replicationStatus(name)).inSync.length === 3)
    }

    // Refused while n3 is a member, for this node itself, and for an id nothing names.
    await expectCode(n1.g.forgetClusterNode('n3'), 'BUSY', 'n3 is a healthy member')
    await expectCode(n1.g.forgetClusterNode('n1'), 'INVALID_ARGUMENT', 'is this node')
    await expectCode(n1.g.forgetClusterNode('n9'), 'INVALID_ARGUMENT', 'nothing in the cluster names node n9')
    await expectCode(n1.g.forgetClusterNode('' as string), 'INVALID_ARGUMENT', 'needs the id of a node')
    await expectCode(n1.g.forgetClusterNode(42 as unknown as string), 'INVALID_ARGUMENT', 'needs the id of a node')

    // n3 goes away for good (well within the replacement delay: nothing is given up on its own).
    await n3.g.close()
    await until('n3 is no member', () => n1.g.cluster?.members.some((m) => m.id === 'n3') === false)
    await n1.g.writeBlock('shrinking', 2, block(2), WriteConcern.WriteAcknowledged)
    await until('n3 is out of sync on shrinking', async () => !(await n1.g.replicationStatus('shrinking')).inSync.includes('n3'))
    await n1.g.migrateVolume('shrinking', { storageClass: 'double' })
    assert.deepEqual((await recordOf(coordinators, shrinking.id))?.droppedNodes, ['n3'])
    await n1.g.deleteVolume('doomed')
    const reader = coordinators.coordinator()
    try {
      assert.ok((parseDeleted((await reader.get(deletedKey(doomed.id)))?.value ?? '') ?? []).includes('n3'), 'the deletion mark waits for n3')

      // A volume whose primary is on n3, with no other up-to-date copy: forgetting n3 would lose it.
      const orphanRecord: ReplicaSetRecord = { spec: { ...(await recordOf(coordinators, kept.id) as ReplicaSetRecord).spec, id: 'v-led-by-n3', name: 'led-by-n3' }, primary: 'n3', epoch: 1, nodes: ['n3', 'n2'], inSync: ['n3'] }
      await reader.put(recordKey('v-led-by-n3'), JSON.stringify(orphanRecord))
      await expectCode(n1.g.forgetClusterNode('n3'), 'BUSY', 'n3 is the primary of volume v-led-by-n3')
      assert.deepEqual([...(await recordOf(coordinators, kept.id) as ReplicaSetRecord).nodes].sort(), ['n1', 'n2', 'n3'], 'nothing changed')
      await reader.delete(recordKey('v-led-by-n3'))

      // Forgotten: n3's copy of kept is given up at once, and nothing waits for n3 any more.
      const forgotten = await n2.g.forgetClusterNode('n3')
      assert.deepEqual(forgotten, { nodeId: 'n3', copies: [kept.id], droppedLists: [shrinking.id], deletionMarks: [doomed.id] })
      const keptRecord = await recordOf(coordinators, kept.id) as ReplicaSetRecord
      assert.deepEqual([...keptRecord.nodes].sort(), ['n1', 'n2'])
      assert.equal(keptRecord.inSync.includes('n3'), false)
      assert.equal(keptRecord.droppedNodes, undefined, 'a forgotten node is not waited for')
      assert.equal((await recordOf(coordinators, shrinking.id))?.droppedNodes, undefined)
      assert.equal(await reader.get(deletedKey(doomed.id)), undefined, 'the mark named only n3 after the others deleted their copies')
      assert.ok(n2.events.some((e) => e === `removed ${kept.id} n3 node n3 was forgotten`), n2.events.join('\n'))
      await expectCode(n1.g.forgetClusterNode('n3'), 'INVALID_ARGUMENT', 'nothing in the cluster names node n3')
    } finally {
      await reader.close()
    }

    // A new node gets the copy kept lacks, filled with its data.
    const n4 = await startNode(network, coordinators, 'n4')
    await n4.g.createStorageClass({ name: 'triple', parameters: { replication: '3' } })
    await until('kept has a third copy in sync on n4', async () => {
      const s = await n1.g.replicationStatus('kept')
      return s.nodes.includes('n4') && s.inSync.length === 3
    }, 30_000)
    await n1.g.writeBlock('kept', 3, block(3), WriteConcern.WriteReplicated)
    assert.deepEqual(await n1.g.readBlock('kept', 1), block(1))

    // n3 comes back with its old disk after all: its copy of kept is stale (the record does not list
    // it) and goes; its copy of the deleted volume is unrecorded now: kept, never served (the
    // operator deletes it with deleteVolume(..., { force: true })).
    const back = await startNode(network, coordinators, 'n3', n3.dir)
    await until('n3 dropped its stale copy of kept', async () => await back.g.getVolume('kept').then(() => false, (err: { code?: string }) => err.code === 'VOLUME_NOT_FOUND'))
    assert.equal((await n1.g.replicationStatus('kept')).nodes.includes('n3'), false)
    await back.g.getVolume('doomed')
    // Refused at once (not after waiting out the 30 s a forwarded call gives a failover), saying why.
    await expectCode(back.g.readBlock('doomed', 1), 'BACKEND_UNAVAILABLE', 'has no record of replicated volume', 'serves no I/O', 'force: true')
    await expectCode(back.g.write('doomed', 0, block(4)), 'BACKEND_UNAVAILABLE', 'serves no I/O')
    await n4.g.close()
  })
})
