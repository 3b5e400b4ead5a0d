// A copy of an encrypted volume whose cluster record was written by a release before
// VolumeSpec.encrypted (a rolling upgrade) is encrypted too: the record lacks the field, so the
// primary, which holds the volume and knows, says so when it creates the copy. In-process nodes
// on their own disks, a memory network and coordinator.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WriteConcern } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork } from '../backends/memory/index.js'
import { parseRecord, recordKey } from '../src/replication/records.js'
import { until } from './support/wait.js'
import { filesHolding } from './support/files-holding.js'
import { diskCluster, type DiskNode } from './support/disk-cluster.js'

const BS = 4096

const MARKER = 'R54-PLAINTEXT-MARKER-'
const marked = (n: number): Uint8Array => new Uint8Array(Buffer.from(`${MARKER}${String(n).padStart(3, '0')}`.repeat(BS).slice(0, BS)))


const { startNode } = diskCluster('galleon-r54-copy-', { replicaReplacementDelayMs: 1500 })

/** Drops `encrypted` from the volume's spec, as a node of a release before the field wrote it. */
async function asEarlierRelease (coordinators: MemoryCoordinatorCluster, volumeId: string): Promise<void> {
  const coordinator = coordinators.coordinator()
  try {
    const entry = await coordinator.get(recordKey(volumeId))
    const record = parseRecord(entry?.value ?? '')
    if (entry === undefined || record === undefined) throw new Error(`volume ${volumeId} has no record`)
    const { encrypted: _encrypted, ...spec } = record.spec
    const written = await coordinator.put(recordKey(volumeId), JSON.stringify({ ...record, spec }), { expectRevision: entry.revision })
    assert.ok(written !== undefined, 'the record changed while the field was dropped')
  } finally {
    await coordinator.close()
  }
}

describe('review r54: a copy made from a record of an earlier release (no VolumeSpec.encrypted)', () => {
  it('of an encrypted volume is encrypted, on a node whose class of that name does not encrypt', { timeout: 90_000 }, async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const nodes: DiskNode[] = []
    for (const id of ['n1', 'n2', 'n3']) nodes.push(await startNode(network, coordinators, id))
    await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 3))
    const n1 = nodes[0] as DiskNode
    await n1.g.createStorageClass({ name: 'vault-double', parameters: { replication: '2', encryption: 'true' } })
    for (const node of nodes.slice(1)) await node.g.createStorageClass({ name: 'vault-double', parameters: { replication: '2' } })
    const volume = await n1.g.createVolume({ name: 'vault', sizeBytes: 16 * BS, storageClass: 'vault-double' })
    assert.equal(volume.encrypted, true)
    await until('both copies are in sync', async () => (await n1.g.replicationStatus('vault')).inSync.length === 2, 20_000)
    await asEarlierRelease(coordinators, volume.id)
    // The copy's node goes away for good: the leader places a new copy on the third node.
    const lostId = (await n1.g.replicationStatus('vault')).nodes.find((n) => n !== 'n1') as string
    await (nodes.find((n) => n.id === lostId) as DiskNode).g.close()
    const third = nodes.find((n) => n.id !== 'n1' && n.id !== lostId) as DiskNode
    await until(`a copy on ${third.id} is in sync`, async () => {
      const s = await n1.g.replicationStatus('vault')
      return s.inSync.includes(third.id) && s.inSync.length === 2
    }, 30_000)
    for (let i = 0; i < 4; i++) await n1.g.writeBlock('vault', i, marked(i), WriteConcern.WriteReplicated)
    await third.g.flush('vault')
    const copy = await third.g.getVolume('vault')
    const leaked = await filesHolding(third.dir, Buffer.from(MARKER))
    assert.deepEqual({ encrypted: copy.encrypted, leaked }, { encrypted: true, leaked: [] }, `the copy on ${third.id} is stored in the clear`)
  })
})

describe('review r54: a class change recorded by a node of an earlier release (no VolumeSpec.encrypted)', () => {
  it('leaves an encrypted copy encrypted when its node converts it into a class that does not encrypt there', { timeout: 90_000 }, async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const nodes: DiskNode[] = []
    for (const id of ['n1', 'n2']) nodes.push(await startNode(network, coordinators, id))
    await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 2))
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    for (const name of ['vault-double', 'other-double']) {
      await n1.g.createStorageClass({ name, parameters: { replication: '2', encryption: 'true' } })
      await n2.g.createStorageClass({ name, parameters: { replication: '2' } })
    }
    const volume = await n1.g.createVolume({ name: 'vault', sizeBytes: 16 * BS, storageClass: 'vault-double' })
    await until('both copies are in sync', async () => (await n1.g.replicationStatus('vault')).inSync.length === 2, 20_000)
    assert.equal((await n2.g.getVolume('vault')).encrypted, true)
    // As a node of the earlier release records a class change: the spec names the class, without the field.
    const coordinator = coordinators.coordinator()
    try {
      const entry = await coordinator.get(recordKey(volume.id))
      const record = parseRecord(entry?.value ?? '')
      if (entry === undefined || record === undefined) throw new Error('no record')
      const { encrypted: _encrypted, ...spec } = record.spec
      assert.ok(await coordinator.put(recordKey(volume.id), JSON.stringify({ ...record, spec: { ...spec, storageClass: 'other-double' } }), { expectRevision: entry.revision }) !== undefined)
    } finally {
      await coordinator.close()
    }
    await until('n2\'s copy is in the class', async () => (await n2.g.getVolume('vault')).storageClass === 'other-double', 30_000)
    await until('both copies are in sync', async () => (await n1.g.replicationStatus('vault')).inSync.length === 2, 20_000)
    for (let i = 0; i < 4; i++) await n1.g.writeBlock('vault', i, marked(200 + i), WriteConcern.WriteReplicated)
    await n2.g.flush('vault')
    const copy = await n2.g.getVolume('vault')
    const leaked = await filesHolding(n2.dir, Buffer.from(MARKER))
    assert.deepEqual({ encrypted: copy.encrypted, leaked }, { encrypted: true, leaked: [] }, 'the copy on n2 was converted into the clear')
  })
})
