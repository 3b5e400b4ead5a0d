// Review of replicated key rotation and forwarded snapshot calls (commit 01b418c): retries,
// rotations that overlap a copy's re-seal, copies away for several rotations, callers that close
// while they wait. In-process nodes on their own disks, a memory coordinator and network.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { until } from './support/wait.js'
import { BS, allInSync, block, diskCluster, type DiskNode } from './support/disk-cluster.js'

const kit = diskCluster('galleon-r3-')
const { startNode } = kit

/** A cluster of `count` nodes, each with the encrypted class `secret` of `count` copies. */
async function cluster (count: number): Promise<Awaited<ReturnType<typeof kit.cluster>>> {
  const made = await kit.cluster(count)
  for (const node of made.nodes) await node.g.createStorageClass({ name: 'secret', parameters: { replication: String(count), encryption: 'true' } })
  return made
}
type Node = DiskNode


async function fill (g: GalleonFS, volume: string, model: Uint8Array, blocks: number, seed: number, concern = WriteConcern.WriteReplicated): Promise<void> {
  const data = new Uint8Array(blocks * BS)
  for (let i = 0; i < blocks; i++) data.set(block(seed + i), i * BS)
  await g.write(volume, 0, data, concern)
  model.set(data, 0)
}


/** Each copy, opened alone: one key left, every block readable. */
async function checkCopiesAlone (nodes: Node[], volume: string, model: Uint8Array, generation: number): Promise<void> {
  for (const node of nodes) await node.g.close()
  for (const node of nodes) {
    const g = await GalleonFS.open({ storagePath: node.dir })
    try {
      const e = await g.getVolumeEncryption(volume)
      assert.equal(e.keyVersions?.length, 1, `${node.id} keeps one key: ${JSON.stringify(e)}`)
      assert.equal(e.keyGeneration, generation, `${node.id}: ${JSON.stringify(e)}`)
      assert.deepEqual(await g.read(volume, 0, model.byteLength), model, `copy on ${node.id}`)
    } finally {
      await g.close()
    }
  }
}

describe('review r3: replicated key rotation', () => {
  it('a forwarded rotation whose answer was lost is not rotated twice by the retry', async () => {
    const { network, nodes } = await cluster(2)
    const [n1, n2] = nodes as [Node, Node]
    await n1.g.createVolume({ name: 'replay', sizeBytes: 16 * BS, storageClass: 'secret' })
    const model = new Uint8Array(16 * BS)
    await fill(n1.g, 'replay', model, 8, 1)
    await until('both copies are in sync', async () => await allInSync(n1.g, 'replay', 2), 20_000)
    let lost = 0
    network.drop((m) => m.type === 'reply' && m.kind === 'repl:io' && m.to === 'n2' && lost++ === 0)
    const state = await n2.g.rotateVolumeKey('replay')
    network.drop(0)
    assert.equal(lost > 0, true, 'the first answer was lost')
    assert.equal(state.keyGeneration, 1)
    await until('n2 re-sealed', async () => (await n2.g.getVolumeEncryption('replay')).keyVersions?.length === 1, 20_000)
    assert.equal((await n1.g.getVolumeEncryption('replay')).keyGeneration, 1, 'one rotation, not two')
  })

  it('a forwarded rotation whose answer was lost is not rotated again by the retry that reaches the next primary', { timeout: 90_000 }, async () => {
    const { network, nodes } = await cluster(3)
    const [n1, n2, n3] = nodes as [Node, Node, Node]
    await n1.g.createVolume({ name: 'moved', sizeBytes: 16 * BS, storageClass: 'secret' })
    const model = new Uint8Array(16 * BS)
    await fill(n1.g, 'moved', model, 8, 1)
    await until('every copy is in sync', async () => await allInSync(n1.g, 'moved', 3), 20_000)
    // n3, the caller, stops getting the stream (so it is not the copy promoted), and the answer to
    // its forwarded rotation is lost.
    network.drop((m) => m.to === 'n3' && (m.kind === 'repl:apply' || m.kind === 'repl:resync-begin' || (m.type === 'reply' && m.kind === 'repl:io')))
    const rotating = n3.g.rotateVolumeKey('moved')
    rotating.catch(() => {})
    await until('the primary counted the rotation', async () => (await n1.g.getVolumeEncryption('moved')).keyGeneration === 1, 20_000)
    // The primary goes before the caller hears from it: n3 sends the call again, to n2 once n2 leads.
    await n1.g.close()
    await until('n2 is the primary', async () => (await n2.g.replicationStatus('moved')).role === 'primary', 30_000)
    network.drop(0)
    const state = await rotating
    assert.equal(state.keyGeneration, 1, `the retry answered with the rotation it made: ${JSON.stringify(state)}`)
    assert.equal((await n2.g.getVolumeEncryption('moved')).keyGeneration, 1, 'one rotation, not two')
  })

  it('rotations that follow each other while a copy still re-seals leave every copy readable under one key', async () => {
    const { nodes } = await cluster(2)
    const [n1, n2] = nodes as [Node, Node]
    const blocks = 1024
    await n1.g.createVolume({ name: 'overlap', sizeBytes: blocks * BS, storageClass: 'secret' })
    const model = new Uint8Array(blocks * BS)
    await fill(n1.g, 'overlap', model, blocks, 7)
    await n1.g.createSnapshot('overlap', 'before')
    await fill(n1.g, 'overlap', model, blocks / 2, 900)
    await until('both copies are in sync', async () => await allInSync(n1.g, 'overlap', 2), 20_000)
    const seen: number[] = []
    for (let i = 1; i <= 3; i++) {
      await n1.g.rotateVolumeKey('overlap', { wait: true })
      // How far n2's own re-seal is when the next rotation comes.
      seen.push((await n2.g.getVolumeEncryption('overlap')).keyVersions?.length ?? 0)
    }
    await until('n2 re-sealed its copy under one key', async () => {
      const e = await n2.g.getVolumeEncryption('overlap')
      return e.keyGeneration === 3 && e.rotation === undefined && e.keyVersions?.length === 1
    }, 20_000)
    await checkCopiesAlone(nodes, 'overlap', model, 3)
    assert.ok(seen.length === 3)
  })

  it('a copy away for three rotations takes them when it returns and reads every block', async () => {
    const { network, coordinators, nodes } = await cluster(3)
    const [n1, , n3] = nodes as [Node, Node, Node]
    const blocks = 64
    await n1.g.createVolume({ name: 'away', sizeBytes: blocks * BS, storageClass: 'secret' })
    const model = new Uint8Array(blocks * BS)
    await fill(n1.g, 'away', model, blocks, 3)
    await until('every copy is in sync', async () => await allInSync(n1.g, 'away', 3), 20_000)
    await n3.g.close()
    for (let i = 0; i < 3; i++) {
      await n1.g.rotateVolumeKey('away', { wait: true })
      await fill(n1.g, 'away', model, 4, 100 * (i + 1))
    }
    const back = await startNode(network, coordinators, 'n3', n3.dir)
    nodes[2] = back
    await until('n3 is in sync again', async () => await allInSync(n1.g, 'away', 3), 20_000)
    await until('every copy re-sealed under one key', async () => {
      for (const node of nodes) {
        const e = await node.g.getVolumeEncryption('away')
        if (e.keyGeneration !== 3 || e.rotation !== undefined || e.keyVersions?.length !== 1) return false
      }
      return true
    }, 20_000)
    await checkCopiesAlone(nodes, 'away', model, 3)
  })

  it('a caller waiting for a forwarded rotation is released when its own instance closes', { timeout: 60_000 }, async () => {
    const { nodes } = await cluster(2)
    const [n1, n2] = nodes as [Node, Node]
    const blocks = 2048
    await n1.g.createVolume({ name: 'closing', sizeBytes: blocks * BS, storageClass: 'secret' })
    const model = new Uint8Array(blocks * BS)
    await fill(n1.g, 'closing', model, blocks, 5)
    await until('both copies are in sync', async () => await allInSync(n1.g, 'closing', 2), 20_000)
    const waiting = n2.g.rotateVolumeKey('closing', { wait: true }).then(() => 'done', (err: { code?: string }) => err.code ?? 'error')
    await until('the primary is re-sealing', async () => (await n1.g.getVolumeEncryption('closing')).rotation !== undefined, 20_000)
    await n2.g.close()
    const outcome = await waiting
    assert.ok(typeof outcome === 'string')
  })
})

describe('review r3: snapshot calls forwarded from a copy that lags', () => {
  it('a name the lagging copy gives to an older snapshot does not restore or delete another one on the primary', async () => {
    const { network, nodes } = await cluster(2)
    const [n1, n2] = nodes as [Node, Node]
    const blocks = 8
    await n1.g.createVolume({ name: 'named', sizeBytes: blocks * BS, replicas: 2 })
    const model = new Uint8Array(blocks * BS)
    await fill(n1.g, 'named', model, blocks, 1)
    const old = await n1.g.createSnapshot('named', 'daily')
    await until('n2 has the snapshot', async () => (await n2.g.listSnapshots('named')).some((s) => s.id === old.id), 20_000)
    // n2 stops receiving the stream: the primary replaces "daily" with a newer snapshot.
    network.drop((m) => m.to === 'n2' && (m.kind === 'repl:apply' || m.kind === 'repl:resync-begin'))
    await n1.g.deleteSnapshot('named', 'daily')
    await fill(n1.g, 'named', model, 2, 50, WriteConcern.WriteAcknowledged)
    const newer = await n1.g.createSnapshot('named', 'daily')
    await fill(n1.g, 'named', model, 1, 80, WriteConcern.WriteAcknowledged)
    assert.deepEqual((await n2.g.listSnapshots('named')).map((s) => s.id), [old.id], 'n2 still lists the old "daily"')
    await assert.rejects(n2.g.restoreSnapshot('named', 'daily'), { code: 'SNAPSHOT_NOT_FOUND' })
    await assert.rejects(n2.g.deleteSnapshot('named', 'daily'), { code: 'SNAPSHOT_NOT_FOUND' })
    assert.deepEqual(await n1.g.read('named', 0, blocks * BS), model, 'the primary\'s volume is untouched')
    assert.deepEqual((await n1.g.listSnapshots('named')).map((s) => s.id), [newer.id])
    network.drop(0)
  })
})
