// A deleteVolume of a replicated volume whose local deletion fails once the cluster's record of the
// volume is gone (the primary's metadata disk full): the deletion is decided (the other copies go),
// and the error says so and what finishes it, rather than reading as a refusal that kept the volume.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { MemoryLevel } from 'memory-level'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { until } from './support/wait.js'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FullDiskLevel } from './support/full-disk-level.js'

const opened: GalleonFS[] = []
const dirs: string[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

describe('a deleteVolume of a replicated volume that fails part way', () => {
  it('failing on the primary after the record went (the metadata disk full), it says the volume is deleted from the cluster and that a reopen removes the copy left (a deleteVolume again cannot: the metadata takes no more writes until then)', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const metadata = new FullDiskLevel()
    const blockDirs = new Map<string, string>()
    const node = async (id: string, db: MemoryLevel<string, unknown> | FullDiskLevel): Promise<GalleonFS> => {
      let dir = blockDirs.get(id)
      if (dir === undefined) {
        dir = await mkdtemp(join(tmpdir(), `replicated-delete-${id}-`))
        dirs.push(dir)
        blockDirs.set(id, dir)
      }
      const g = await GalleonFS.open({ metadata: db as never, blockStore: new FileBlockStore({ location: dir }), cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 } })
      opened.push(g)
      return g
    }
    const n1 = await node('n1', metadata)
    const n2 = await node('n2', new MemoryLevel())
    await until('both nodes see each other', () => [n1, n2].every((g) => g.cluster?.members.filter((m) => m.healthy).length === 2))
    await n1.createVolume({ name: 'v', sizeBytes: 16 * 4096, replicas: 2 })
    await n1.writeBlock('v', 0, new Uint8Array(4096).fill(1), WriteConcern.WriteReplicated)
    metadata.failing = true
    const failed = await n1.deleteVolume('v').then(() => 'deleted', (err: { code?: string, message: string }) => `${err.code ?? ''}: ${err.message}`)
    metadata.failing = false
    // The cluster's record went first, so the deletion is decided: the error says so, not that the
    // volume was kept.
    assert.match(failed, /^NO_SPACE: volume v is deleted from the cluster \(its other copies go\), but deleting this node's copy failed: .*close and reopen the instance: the open removes the copy$/)
    // Not advised, since it cannot work: the failed write stopped the metadata taking more.
    assert.doesNotMatch(failed, /deleteVolume\(.*\) again/)
    assert.equal(await n1.deleteVolume('v').then(() => 'deleted', (err: { code?: string }) => err.code), 'NO_SPACE')
    await until('the copy on n2 is gone', async () => (await n2.listVolumes()).length === 0)
    const write = await n1.writeBlock('v', 1, new Uint8Array(4096).fill(2), WriteConcern.WriteReplicated).then(() => 'written', (err: { code?: string }) => err.code)
    assert.notEqual(write, 'written', 'the copy left on n1 serves no writes')
    // The metadata disk refused a write: as its error says, the instance is closed and reopened, and
    // the open removes the copy the cluster deleted.
    await n1.close()
    const again = await node('n1', metadata)
    await until('the reopened n1 has removed its copy', async () => (await again.listVolumes()).length === 0)
  })
})
