// A directory backup target removed while the instance runs (`rm -rf ./backups` to start over, the
// daemon still up): the next backup to that path sets the directory up again and is whole, where it
// wrote its chunks and then failed with IO_ERROR on the manifests directory that was gone (h71).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { withTempDir } from './support/temp-dir.js'

describe('a directory backup target removed while the instance runs', () => {
  it('is set up again by the next backup, which verifies and restores', async () => {
    await withTempDir('galleon-h71-target-', async (dir) => {
      const g = await GalleonFS.open({ storagePath: join(dir, 'storage') })
      try {
        const target = join(dir, 'backups')
        const volume = await g.createVolume({ name: 'data', sizeBytes: '4M' })
        await g.write(volume, 0, new Uint8Array(64 * 1024).fill(7))
        await g.createBackup(volume, { target })
        await rm(target, { recursive: true, force: true })

        // Asked as an incremental: its base went with the directory, so it is taken as a full.
        const again = await g.createBackup(volume, { target, strategy: 'incremental' })
        assert.equal(again.strategy, 'full')
        assert.equal(again.blocks, 16)
        assert.deepEqual((await readdir(target)).sort(), ['chunks', 'galleonfs-backup.json', 'index.json', 'manifests'])
        assert.deepEqual((await g.listBackups(volume, { target })).map((b) => b.id), [again.id])
        assert.equal((await g.verifyBackup(again.id, { target })).ok, true)
        const restored = await g.restoreBackup(again.id, { name: 'restored', target })
        assert.ok((await g.read(restored, 0, 64 * 1024)).every((byte) => byte === 7))

        // Removed once more, the listing says the path is no target (nothing is created by reading).
        await rm(target, { recursive: true, force: true })
        await assert.rejects(g.listBackups(volume, { target }), { code: 'BACKUP_NOT_FOUND' })
        const third = await g.createBackup(volume, { target })
        assert.equal((await g.verifyBackup(third.id, { target })).ok, true)
      } finally {
        await g.close()
      }
    })
  })
})
