// A copy of an encrypted replicated volume is encrypted, whatever the storage class of the same
// name on the copy's node says: "no plaintext of an encrypted volume ever reaches a replica"
// (DESIGN.md §3). In-process nodes on their own disks, a memory network and coordinator.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { GalleonFS, WriteConcern, type BlockAddress } from '../src/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { recording } from './support/recording-store.js'
import { until } from './support/wait.js'
import { BS, allInSync, diskCluster, type DiskNode } from './support/disk-cluster.js'
import { filesHolding } from './support/files-holding.js'

const { cluster, track, tempDir } = diskCluster('galleon-r51-copy-')

const MARKER = 'R51-PLAINTEXT-MARKER-'
const marked = (n: number): Uint8Array => new Uint8Array(Buffer.from(`${MARKER}${String(n).padStart(3, '0')}`.repeat(BS).slice(0, BS)))


describe('review r51: the copy of an encrypted volume on a node whose class of that name does not encrypt', () => {
  it('is encrypted too: its node\'s storage never holds the plaintext, and it reads back alone', async () => {
    const { nodes } = await cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    await n1.g.createStorageClass({ name: 'vault-double', parameters: { replication: '2', encryption: 'true' } })
    // The same name on n2, but not encrypting (set up by someone else, or changed there).
    await n2.g.createStorageClass({ name: 'vault-double', parameters: { replication: '2' } })
    await n1.g.createVolume({ name: 'vault', sizeBytes: 16 * BS, storageClass: 'vault-double' })
    assert.equal((await n1.g.getVolume('vault')).encrypted, true)
    for (let i = 0; i < 4; i++) await n1.g.writeBlock('vault', i, marked(i), WriteConcern.WriteReplicated)
    await until('both copies are in sync', async () => await allInSync(n1.g, 'vault', 2), 20_000)
    await n2.g.flush('vault')
    const copy = await n2.g.getVolume('vault')
    const leaked = await filesHolding(n2.dir, Buffer.from(MARKER))
    assert.deepEqual({ encrypted: copy.encrypted, leaked }, { encrypted: true, leaked: [] }, 'the copy on n2 is stored in the clear')
    // Opened alone, the copy reads what was written (its own keys, on its own node).
    for (const node of nodes) await node.g.close()
    const alone = track(await GalleonFS.open({ storagePath: n2.dir }))
    for (let i = 0; i < 4; i++) assert.deepEqual(await alone.readBlock('vault', i), marked(i), `block ${i} of the copy opened alone`)
  })

  it('a replicated volume migrated into an encrypting class: the copy converts to encrypted too', async () => {
    const { nodes } = await cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    for (const node of nodes) await node.g.createStorageClass({ name: 'plain-double', parameters: { replication: '2' } })
    await n1.g.createStorageClass({ name: 'vault-double', parameters: { replication: '2', encryption: 'true' } })
    await n2.g.createStorageClass({ name: 'vault-double', parameters: { replication: '2' } })
    await n1.g.createVolume({ name: 'moved', sizeBytes: 16 * BS, storageClass: 'plain-double' })
    await until('both copies are in sync', async () => await allInSync(n1.g, 'moved', 2), 20_000)
    await n1.g.migrateVolume('moved', { storageClass: 'vault-double' })
    assert.equal((await n1.g.getVolume('moved')).encrypted, true)
    for (let i = 0; i < 4; i++) await n1.g.writeBlock('moved', i, marked(100 + i), WriteConcern.WriteReplicated)
    await until('both copies are in sync', async () => await allInSync(n1.g, 'moved', 2), 20_000)
    await until('n2\'s copy is in the class', async () => (await n2.g.getVolume('moved')).storageClass === 'vault-double', 20_000)
    await n2.g.flush('moved')
    const copy = await n2.g.getVolume('moved')
    const leaked = await filesHolding(n2.dir, Buffer.from(MARKER))
    assert.deepEqual({ encrypted: copy.encrypted, leaked }, { encrypted: true, leaked: [] }, 'the copy on n2 is stored in the clear')
    for (const node of nodes) await node.g.close()
    const alone = track(await GalleonFS.open({ storagePath: n2.dir }))
    for (let i = 0; i < 4; i++) assert.deepEqual(await alone.readBlock('moved', i), marked(100 + i), `block ${i} of the copy opened alone`)
  })
})

describe('review r51: generations of an encrypted volume\'s copy', () => {
  it('the copy never seals a generation twice for a block: across the stream\'s writes and trims, a restart of its node, a resync and its promotion', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const dirs = { n1: await tempDir('galleon-r51-gen-n1-'), n2: await tempDir('galleon-r51-gen-n2-') }
    /** Every value n2's block store was given, across its openings. */
    const puts: Array<{ address: BlockAddress, data: Uint8Array }> = []
    const start = async (id: 'n1' | 'n2'): Promise<GalleonFS> => {
      const recorded = recording(new FileBlockStore({ location: join(dirs[id], 'blocks') }))
      if (id === 'n2') recorded.puts.push = (...items) => puts.push(...items)
      return track(await GalleonFS.open({
        storagePath: dirs[id], blockStore: recorded.store,
        cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 }
      }))
    }
    let n1 = await start('n1')
    let n2 = await start('n2')
    await until('the nodes see each other', () => [n1, n2].every((g) => g.cluster?.members.filter((m) => m.healthy).length === 2))
    for (const g of [n1, n2]) await g.createStorageClass({ name: 'vault-double', parameters: { replication: '2', encryption: 'true' } })
    await n1.createVolume({ name: 'gens', sizeBytes: 8 * BS, storageClass: 'vault-double' })
    await until('both copies are in sync', async () => await allInSync(n1, 'gens', 2), 20_000)
    const round = async (g: GalleonFS, seed: number, concern = WriteConcern.WriteReplicated): Promise<void> => {
      // Block 3 first: after a restart, the first generation taken goes to the block whose newest
      // version (the newest of all) the last trim took.
      for (const i of [3, 0, 1, 2]) await g.writeBlock('gens', i, marked(seed + i), concern)
      await g.trim('gens', 5 * BS + 7, 300)
      await g.write('gens', 100, marked(seed + 9).subarray(0, 2 * BS - 200), concern)
      await g.writeBlock('gens', 3, marked(seed + 8), concern)
      // A whole block, last: its newest version goes, and nothing of it is left on either node.
      await g.trim('gens', 3 * BS, BS)
    }
    await round(n1, 1)
    await until('both copies are in sync', async () => await allInSync(n1, 'gens', 2), 20_000)
    // n2 restarts: its copy's generations resume past what it sealed.
    await n2.close()
    n2 = await start('n2')
    await until('n2 is in sync again', async () => await allInSync(n1, 'gens', 2), 20_000)
    await round(n1, 20)
    await until('both copies are in sync after n2\'s restart', async () => await allInSync(n1, 'gens', 2), 20_000)
    // n2 misses changes (its node away), comes back and is resynced.
    await n2.close()
    await round(n1, 40, WriteConcern.WriteDurable)
    n2 = await start('n2')
    await until('n2 is resynced', async () => await allInSync(n1, 'gens', 2), 20_000)
    // n1 goes away for good: n2's copy is promoted and takes writes itself.
    await n1.close()
    await until('n2 is the primary', async () => (await n2.replicationStatus('gens')).role === 'primary', 20_000)
    await round(n2, 60, WriteConcern.WriteDurable)
    for (let i = 0; i < 4; i++) await n2.writeBlock('gens', i, marked(80 + i), WriteConcern.WriteAcknowledged)
    // Every (block, generation) n2 sealed for the volume, once each.
    const sealed = new Map<string, number>()
    const copyStorage = puts.filter((p) => p.data.byteLength > BS).map((p) => p.address.volume)
    for (const p of puts) {
      if (p.data.byteLength <= BS || p.address.gen === 0) continue
      const key = `${p.address.volume}/${p.address.index}@${p.address.gen}`
      sealed.set(key, (sealed.get(key) ?? 0) + 1)
    }
    assert.ok(copyStorage.length > 20, `n2 sealed ${copyStorage.length} blocks`)
    assert.deepEqual([...sealed].filter(([, n]) => n > 1), [], 'generations n2 sealed more than once for a block')
    n1 = n2 // (closed with the rest after the file)
  })
})
