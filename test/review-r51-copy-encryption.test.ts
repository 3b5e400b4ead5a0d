// A copy of an encrypted replicated volume is encrypted, whatever the storage class of the same
// name on the copy's node says: "no plaintext of an encrypted volume ever reaches a replica"
// (DESIGN.md §3). In-process nodes on their own disks, a memory network and coordinator.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { until } from './support/wait.js'
import { BS, allInSync, diskCluster, type DiskNode } from './support/disk-cluster.js'

const { cluster, track } = diskCluster('galleon-r51-copy-')

const MARKER = 'R51-PLAINTEXT-MARKER-'
const marked = (n: number): Uint8Array => new Uint8Array(Buffer.from(`${MARKER}${String(n).padStart(3, '0')}`.repeat(BS).slice(0, BS)))

/** Files under `dir` whose bytes contain `needle`. */
async function filesHolding (dir: string, needle: Buffer): Promise<string[]> {
  const found: string[] = []
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue
    const path = join(entry.parentPath ?? (entry as unknown as { path: string }).path, entry.name)
    const bytes = await readFile(path).catch(() => undefined)
    if (bytes?.includes(needle) === true) found.push(path.slice(dir.length))
  }
  return found
}

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
