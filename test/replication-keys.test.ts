// Key rotation of replicated encrypted volumes (one call rotates every copy's own key, on any node;
// a copy that was away rotates when it returns), and a restore of a backup into an existing
// replicated volume from a node that is not its primary, whose roll-back must find the safety
// snapshot the primary took. In-process nodes on their own disks, a memory coordinator.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { BackupStrategy, GalleonFS, WriteConcern } from '../src/index.js'
import { decodeChanges, encodeChanges } from '../src/replication/stream-codec.js'
import { until } from './support/wait.js'
import { BS, allInSync, block, diskCluster, type DiskNode } from './support/disk-cluster.js'

const { tempDir, startNode, cluster } = diskCluster('galleon-keys-')
type Node = DiskNode


async function writeBlocks (g: GalleonFS, volume: string, model: Uint8Array, writes: Array<[number, number]>, concern = WriteConcern.WriteReplicated): Promise<void> {
  for (const [index, seed] of writes) {
    await g.writeBlock(volume, index, block(seed), concern)
    model.set(block(seed), index * BS)
  }
}


describe('key rotation of a replicated encrypted volume', () => {
  it('a rotation travels in the change stream in its place among the writes', () => {
    const data = block(1)
    const { list, payload } = encodeChanges([
      { seq: 1, change: { type: 'write', offset: 0, data } },
      { seq: 2, change: { type: 'rekey', generation: 3 } },
      { seq: 3, change: { type: 'trim', offset: BS, length: BS } }
    ])
    const decoded = decodeChanges(JSON.parse(JSON.stringify(list)), payload)
    assert.deepEqual(decoded.map((c) => c.type), ['write', 'rekey', 'trim'])
    assert.deepEqual(decoded[1], { type: 'rekey', generation: 3 })
    assert.throws(() => decodeChanges([{ t: 'k', g: -1 }], undefined), { code: 'INVALID_ARGUMENT' })
  })

  it('one call on a replica\'s node rotates every copy\'s own key; a copy that was away rotates when it returns, and every copy ends with the new key only', async () => {
    const { network, coordinators, nodes } = await cluster(3)
    const [n1, n2, n3] = nodes as [Node, Node, Node]
    for (const node of nodes) await node.g.createStorageClass({ name: 'secret-triple', parameters: { replication: '3', encryption: 'true' } })
    const blocks = 32
    await n1.g.createVolume({ name: 'vault', sizeBytes: blocks * BS, storageClass: 'secret-triple' })
    const model = new Uint8Array(blocks * BS)
    await writeBlocks(n1.g, 'vault', model, Array.from({ length: 20 }, (_, i) => [i, i + 1]))
    await until('every copy is in sync', async () => await allInSync(n1.g, 'vault', 3), 20_000)
    await n3.g.close()

    // Called on n2, which holds a copy but is not the primary: it runs on n1 and reaches n2's copy.
    const rotated = await n2.g.rotateVolumeKey('vault', { wait: true })
    const primary = await n1.g.getVolumeEncryption('vault')
    assert.deepEqual([primary.keyVersion, primary.keyVersions, primary.keyGeneration], [2, [2], 1], 'the primary\'s copy is re-sealed under its new key')
    assert.deepEqual([rotated.keyVersion, rotated.rotation, rotated.keyGeneration], [2, undefined, 1], 'the answer is the primary\'s copy')
    // The in-sync copy on n2 seals new writes under its new key from the moment the call returns:
    // a failover to it cannot bring the old key back.
    const copy2 = await n2.g.getVolumeEncryption('vault')
    assert.equal(copy2.keyVersion, 2, `n2's copy: ${JSON.stringify(copy2)}`)
    assert.equal(copy2.keyGeneration, 1)
    await writeBlocks(n2.g, 'vault', model, [[2, 202], [25, 225]])

    // n3 was away: it takes the rotation when it returns, then resyncs.
    const back3 = await startNode(network, coordinators, 'n3', n3.dir)
    nodes[2] = back3
    await until('n3 is in sync again', async () => await allInSync(n1.g, 'vault', 3), 20_000)
    await until('n3 rotated its copy\'s key and re-sealed it', async () => {
      const e = await back3.g.getVolumeEncryption('vault')
      return e.keyGeneration === 1 && e.rotation === undefined && e.keyVersions?.length === 1
    }, 20_000)
    await until('n2 re-sealed its copy', async () => (await n2.g.getVolumeEncryption('vault')).keyVersions?.length === 1, 20_000)

    // Each copy, opened alone: only its new key is left, and it reads every block.
    for (const node of nodes) await node.g.close()
    for (const node of nodes) {
      const g = await GalleonFS.open({ storagePath: node.dir })
      try {
        const e = await g.getVolumeEncryption('vault')
        assert.equal(e.keyVersions?.length, 1, `${node.id} keeps only its new key: ${JSON.stringify(e)}`)
        assert.ok((e.keyVersion ?? 0) >= 2, `${node.id} rotated: ${JSON.stringify(e)}`)
        assert.deepEqual(await g.read('vault', 0, blocks * BS), model, `copy on ${node.id}`)
      } finally {
        await g.close()
      }
    }
  })

  it('a copy that misses the streamed rotation rotates its own key from the volume\'s record; a second rotation, called on its node, reaches both copies', async () => {
    const { network, nodes } = await cluster(2)
    const [n1, n2] = nodes as [Node, Node]
    for (const node of nodes) await node.g.createStorageClass({ name: 'secret-double', parameters: { replication: '2', encryption: 'true' } })
    await n1.g.createVolume({ name: 'promoted', sizeBytes: 16 * BS, storageClass: 'secret-double' })
    const model = new Uint8Array(16 * BS)
    await writeBlocks(n1.g, 'promoted', model, [[0, 1], [1, 2]])
    await until('both copies are in sync', async () => await allInSync(n1.g, 'promoted', 2), 20_000)
    // n2 gets no stream batch: the rotation waits for it, fails it out of sync, and returns.
    network.drop((m) => m.to === 'n2' && (m.kind === 'repl:apply' || m.kind === 'repl:resync-begin'))
    await n1.g.rotateVolumeKey('promoted', { wait: true })
    await until('n2, whose copy missed the streamed rotation, rotated from the record', async () => (await n2.g.getVolumeEncryption('promoted')).keyGeneration === 1, 20_000)
    network.drop(0)
    await until('both copies are in sync again', async () => await allInSync(n1.g, 'promoted', 2), 20_000)
    const second = await n2.g.rotateVolumeKey('promoted', { wait: true })
    assert.equal(second.keyGeneration, 2)
    assert.equal((await n2.g.getVolumeEncryption('promoted')).keyGeneration, 2)
    assert.deepEqual(await n2.g.read('promoted', 0, 16 * BS), model)
  })
})

describe('restoring a backup into an existing replicated volume from a node that is not its primary', () => {
  it('a restore that fails puts the volume back, though the safety snapshot has not reached the local copy', async () => {
    const { network, nodes } = await cluster(2)
    const [n1, n2] = nodes as [Node, Node]
    const target = await tempDir('galleon-keys-backups-')
    const blocks = 16
    await n1.g.createVolume({ name: 'data', sizeBytes: blocks * BS, replicas: 2 })
    const before = new Uint8Array(blocks * BS)
    await writeBlocks(n1.g, 'data', before, Array.from({ length: 8 }, (_, i) => [i, i + 1]))
    const backup = await n1.g.createBackup('data', { strategy: BackupStrategy.Full, target })
    await writeBlocks(n1.g, 'data', before, [[9, 99], [10, 100]])
    // A chunk of the backup goes missing: the restore fails after it has trimmed the volume.
    const chunkFiles = (await readdir(target, { recursive: true, withFileTypes: true })).filter((e) => e.isFile() && e.parentPath.includes('chunks'))
    assert.ok(chunkFiles.length > 0, 'the backup stored chunks')
    for (const file of chunkFiles) await rm(join(file.parentPath, file.name))
    // n2's copy gets no stream meanwhile, so the safety snapshot the primary takes is not on it.
    network.drop((m) => m.to === 'n2' && (m.kind === 'repl:apply' || m.kind === 'repl:resync-begin'))
    await assert.rejects(n2.g.restoreBackup(backup.id, { volume: 'data', target }), { code: 'CORRUPTION' })
    assert.deepEqual(await n1.g.read('data', 0, blocks * BS), before, 'the volume was put back as it was')
    assert.equal((await n1.g.listSnapshots('data')).filter((s) => s.name.startsWith('pre-restore-')).length, 0, 'the safety snapshot is deleted')
    network.drop(0)
  })

  it('a restore that succeeds deletes its safety snapshot on every copy, though it had not reached the local copy', async () => {
    const { network, nodes } = await cluster(2)
    const [n1, n2] = nodes as [Node, Node]
    const target = await tempDir('galleon-keys-backups-')
    const blocks = 16
    await n1.g.createVolume({ name: 'data', sizeBytes: blocks * BS, replicas: 2 })
    const expected = new Uint8Array(blocks * BS)
    await writeBlocks(n1.g, 'data', expected, Array.from({ length: 8 }, (_, i) => [i, i + 1]))
    const backup = await n1.g.createBackup('data', { strategy: BackupStrategy.Full, target })
    await writeBlocks(n1.g, 'data', new Uint8Array(blocks * BS), [[9, 99], [10, 100]])
    network.drop((m) => m.to === 'n2' && (m.kind === 'repl:apply' || m.kind === 'repl:resync-begin'))
    await n2.g.restoreBackup(backup.id, { volume: 'data', target })
    assert.deepEqual(await n1.g.read('data', 0, blocks * BS), expected, 'the primary holds the backup\'s contents')
    assert.deepEqual((await n1.g.listSnapshots('data')).map((s) => s.name).filter((name) => name.startsWith('pre-restore-')), [], 'the safety snapshot is deleted')
    network.drop(0)
    await until('both copies are in sync', async () => await allInSync(n1.g, 'data', 2), 20_000)
    assert.deepEqual((await n2.g.listSnapshots('data')).map((s) => s.name).filter((name) => name.startsWith('pre-restore-')), [], 'none is left on the other copy')
    assert.deepEqual(await n2.g.read('data', 0, blocks * BS), expected)
  })
})
