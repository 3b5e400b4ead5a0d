// An open that fails for lack of space gives back the storage's reserve and opens again (see
// src/space-reserve.ts). When the caller passed its own driver instances (a block store, a mount
// driver), the failed first attempt may have closed them (when it failed after the metadata opened):
// the second attempt opens the same instances again, as the driver contract allows (open() after
// close()), and the storage serves its data.
import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { RESERVE_FILE } from '../src/space-reserve.js'
import { GalleonFS } from '../src/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { VirtualMountDriver } from '../src/mount/mount-manager.js'
import { bytesOf } from './conformance/fixtures.js'
import { fill, unmountAll } from './support/tmpfs.js'
import { storageOnTmpfs } from './support/reserve-storage.js'

after(async () => { await unmountAll() })

describe('a full disk with the caller\'s own driver instances', () => {
  it('the retried open reopens the block store and mount driver the caller passed, and the volume reads back and mounts', async (t) => {
    const storage = await storageOnTmpfs('16m', 'galleon-full-callers-')
    if ('skip' in storage) { t.skip(storage.skip); return }
    const { dir, storagePath } = storage
    await fill(dir)
    const blockStore = new FileBlockStore({ location: join(storagePath, 'blocks') })
    let mountCloses = 0
    class CountingMounts extends VirtualMountDriver { async close (): Promise<void> { mountCloses++ } }
    const mount = new CountingMounts()
    const g = await GalleonFS.open({ storagePath, blockStore, mount })
    try {
      assert.ok(!(await readdir(storagePath)).includes(RESERVE_FILE), 'the first attempt failed for lack of space: the reserve was given back for the retry')
      assert.ok(mountCloses <= 1)
      assert.equal(blockStore.status, 'open')
      assert.deepEqual(await g.readBlock('a', 3), bytesOf(4096, 3))
      const file = await g.mounts.openVolumeFile('a', { readOnly: true })
      try {
        const buffer = new Uint8Array(4096)
        assert.equal(await file.pread(buffer, 3 * 4096), 4096)
        assert.deepEqual(buffer, bytesOf(4096, 3))
      } finally {
        await file.close()
      }
    } finally {
      await g.close()
    }
  })
})
