// Review r7: deleteVolume of a clone retries the deletion of its source's leftover backup snapshots
// (BackupManager.retryLeftSnapshots). A leftover is a snapshot a backup freed while a clone read from
// it; after deleteBackup it can be the base of the next backup again. A clone deleted while that
// backup runs must not pull the base from under it.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { blockPattern } from './support/patterns.js'

const BS = 4096
const dirs: string[] = []
after(async () => { await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true }))) })
async function place (): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'galleon-r7-base-'))
  dirs.push(dir)
  return dir
}

describe('review r7: a leftover snapshot that is a backup base again', () => {
  it('an incremental backup running on the source survives the deletion of the clone that held its base', { timeout: 60_000 }, async () => {
    const storagePath = await place()
    const target = await place()
    const g = await GalleonFS.open({ storagePath })
    try {
      await g.createVolume({ name: 'vol', sizeBytes: 64 * BS })
      await g.write('vol', 0, blockPattern(64, 1, BS))
      await g.createBackup('vol', { target })
      await g.write('vol', 0, blockPattern(1, 2, BS))
      const first = await g.createBackup('vol', { target, strategy: 'incremental' })
      // A clone reads from the first incremental's snapshot; the next incremental frees it, which
      // fails (the clone) and leaves it recorded for a later deletion.
      await g.cloneVolume({ volume: 'vol', snapshot: `backup-${first.id}` }, 'pinned')
      await g.write('vol', BS, blockPattern(1, 3, BS))
      const second = await g.createBackup('vol', { target, strategy: 'incremental' })
      // The second goes: the first is the newest backup again, and its snapshot the next one's base.
      await g.deleteBackup(second.id, { target })
      assert.ok((await g.listSnapshots('vol')).some((s) => s.name === `backup-${first.id}`))
      await g.write('vol', 2 * BS, blockPattern(1, 4, BS))

      // Another caller deletes the clone while the next incremental takes its snapshot (after it
      // chose its base): the interleaving is forced by running the deletion inside that call.
      const createSnapshot = g.createSnapshot.bind(g)
      let deletedDuring = false
      ;(g as unknown as { createSnapshot: typeof g.createSnapshot }).createSnapshot = async (vol, name, ...rest) => {
        if (!deletedDuring && typeof name === 'string' && name.startsWith('backup-')) {
          deletedDuring = true
          await g.deleteVolume('pinned')
        }
        return await createSnapshot(vol, name, ...rest)
      }
      const third = await g.createBackup('vol', { target, strategy: 'incremental' })
      assert.ok(deletedDuring)
      assert.equal(third.baseId, first.id)
      // And what it stored restores to the volume's data.
      const restored = await g.restoreBackup(third.id, { name: 'restored', target })
      assert.deepEqual(await g.read(restored.id, 0, 64 * BS), await g.read('vol', 0, 64 * BS))
    } finally {
      await g.close()
    }
  })
})
