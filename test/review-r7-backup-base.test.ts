// Review r7: deleteVolume of a clone retries the deletion of its source's leftover backup snapshots
// (BackupManager.retryLeftSnapshots). A leftover is a snapshot a backup freed while a clone read from
// it; after deleteBackup it can be the base of the next backup again. A clone deleted while that
// backup runs must not pull the base from under it.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS } from '../src/index.js'
import { blockPattern } from './support/patterns.js'
import { BS, leftoverBackupBase } from './support/leftover-backup-base.js'
import { tempDirs } from './support/temp-dir.js'

const place = tempDirs('galleon-r7-base-')

describe('review r7: a leftover snapshot that is a backup base again', () => {
  it('an incremental backup running on the source survives the deletion of the clone that held its base', { timeout: 60_000 }, async () => {
    const storagePath = await place()
    const target = await place()
    const g = await GalleonFS.open({ storagePath })
    try {
      // A leftover snapshot (a clone held it when a backup freed it) is the next incremental's base.
      const first = await leftoverBackupBase(g, target)
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
