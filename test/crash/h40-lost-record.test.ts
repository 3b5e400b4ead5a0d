// A lost answer (no kill) in the same window as h40-windows.test.ts: migrateVolume makes a local
// volume replicated, its cluster record's write lands but the answer is lost, and the coordinator
// answers no read for a moment, so register() cannot settle it and the call fails: the volume is
// local again (its catalog is put back). The record that landed is settled in the background
// (#sweepLostCreate), and so must a copy made from it on another node meanwhile (the watch of n1
// took the record up before register() failed). Afterwards the volume can become replicated again.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { rm } from 'node:fs/promises'
import { GalleonFS, WriteConcern } from '../../src/index.js'
import type { MemoryCoordinatorCluster } from '../../backends/memory/index.js'
import { recordKey } from '../../src/replication/records.js'
import { until } from '../support/wait.js'
import { LosingCoordinator, lostAnswerCluster, type LostAnswerNode } from '../support/losing-coordinator.js'

const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

type Node = LostAnswerNode

const block = (fill: number): Uint8Array => new Uint8Array(4096).fill(fill)

/**
 * Two nodes; n1 migrates its local volume `lost` (block 3 written) to a 2-copy class, and the
 * record's write lands with its answer lost while no read answers: the call fails, the volume is
 * local again on n1.
 */
async function failedMigration (): Promise<{ n1: Node, n2: Node, coordinators: MemoryCoordinatorCluster, volumeId: string }> {
  const losing = new LosingCoordinator()
  const { n1, n2, coordinators, volumeId } = await lostAnswerCluster({ dirs, opened }, 'galleon-h40', losing)
  const volume = { id: volumeId }
  losing.lostKey = recordKey(volume.id)
  const first = await n1.g.migrateVolume('lost', { storageClass: 'double' }).then(() => undefined, (err: { code?: string }) => err)
  assert.equal(first?.code, 'BACKEND_UNAVAILABLE', 'the migration failed on the lost answer')
  losing.readsDown = false
  const local = await n1.g.getVolume('lost')
  assert.equal(local.replicas, 1, 'local again, as before the call')
  assert.deepEqual(await n1.g.readBlock('lost', 3), block(3))
  // The record that landed goes (settled in the background, see #sweepLostCreate).
  await until('the record that landed is gone', async () => await coordinators.coordinator().get(recordKey(volume.id)) === undefined, 10_000)
  return { n1, n2, coordinators, volumeId: volume.id }
}

/** Calls migrateVolume to the 2-copy class until it succeeds (within 15 s). */
async function migrateAgain (n1: Node): Promise<void> {
  const errors: string[] = []
  await until('migrateVolume makes the volume replicated again', async () => {
    try {
      await n1.g.migrateVolume('lost', { storageClass: 'double' }, { syncTimeoutMs: 20_000 })
      return true
    } catch (err) {
      errors.push(`${(err as { code?: string }).code}: ${(err as Error).message}`)
      await new Promise((resolve) => setTimeout(resolve, 200))
      return false
    }
  }, 15_000).catch((err: Error) => { throw new Error(`${err.message}; the calls failed with: ${[...new Set(errors)].join(' | ')}`) })
}

describe('h40: a lost answer while a volume becomes replicated', () => {
  it('migrateVolume to a 2-copy class whose record landed with its answer lost: no copy made from that record stays on n2 (one would refuse all I/O there and need a forced deletion), and migrateVolume again works', { timeout: 60_000 }, async () => {
    const { n1, n2, volumeId } = await failedMigration()
    await until('n2 holds no copy of the volume that stayed local on n1', async () => !(await n2.g.listVolumes()).some((v) => v.id === volumeId), 10_000)
      .catch(async (err: Error) => { throw new Error(`${err.message}: n2 reading it says ${await n2.g.readBlock('lost', 3).then(() => 'ok', (e: Error) => e.message)}`) })
    await migrateAgain(n1)
    assert.equal((await n1.g.getVolume('lost')).storageClass, 'double')
    assert.deepEqual(await n1.g.readBlock('lost', 3), block(3))
    assert.deepEqual(await n2.g.readBlock('lost', 3), block(3), 'through n2 too')
  })

  it('migrateVolume to a 2-copy class whose record landed with its answer lost, then writes while local, then migrateVolume again: the copy on n2 holds every block', { timeout: 60_000 }, async () => {
    const { n1, n2 } = await failedMigration()
    // Written while the volume is local on n1 (in no replication stream of the new record).
    for (let i = 4; i < 12; i++) await n1.g.writeBlock('lost', i, block(i), WriteConcern.WriteDurable)
    await n1.g.writeBlock('lost', 3, block(33), WriteConcern.WriteDurable)
    await migrateAgain(n1)
    await until('both copies in sync', async () => (await n1.g.replicationStatus('lost')).inSync.length === 2, 15_000)
    await n1.g.writeBlock('lost', 20, block(20), WriteConcern.WriteReplicated)
    // Each node's copy as stored, read with no cluster.
    const held = new Map<string, Uint8Array>()
    for (const [id, node] of [['n1', n1], ['n2', n2]] as const) {
      await node.g.close()
      const g = await GalleonFS.open({ storagePath: node.dir })
      try {
        held.set(id, await g.read('lost', 0, 128 * 1024))
      } finally {
        await g.close()
      }
    }
    const expected = held.get('n1') as Uint8Array
    assert.deepEqual(expected.subarray(3 * 4096, 4 * 4096), block(33))
    for (let i = 0; i < 32; i++) assert.deepEqual(held.get('n2')?.subarray(i * 4096, (i + 1) * 4096), expected.subarray(i * 4096, (i + 1) * 4096), `block ${i} of the copy on n2`)
  })
})
