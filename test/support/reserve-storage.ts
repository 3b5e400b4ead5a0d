// The set-up and the final check the space-reserve reviews share: a storage on a small tmpfs with
// one durable block written, and, once its reserve has been tampered with and an open has had a
// chance to mend it, whether that storage still opens on a disk filled to the last byte.

import assert from 'node:assert/strict'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../../src/index.js'
import { RESERVE_FILE } from '../../src/space-reserve.js'
import { bytesOf } from '../conformance/fixtures.js'
import { fill, tmpfs } from './tmpfs.js'

/** A storage on a fresh tmpfs of `size`, volume `a` with block 3 written durably; or why there can be none here. */
export async function storageOnTmpfs (size: string, prefix: string): Promise<{ dir: string, storagePath: string, reserve: string } | { skip: string }> {
  const mount = await tmpfs(size, prefix)
  if ('skip' in mount) return mount
  const storagePath = join(mount.dir, 'store')
  const g = await GalleonFS.open({ storagePath })
  await g.createVolume({ name: 'a', sizeBytes: '1M' })
  await g.writeBlock('a', 3, bytesOf(4096, 3), WriteConcern.WriteDurable)
  await g.close()
  return { dir: mount.dir, storagePath, reserve: join(storagePath, RESERVE_FILE) }
}

/** Fills the tmpfs at `dir` completely, then opens the storage and checks block 3 of volume `a`. */
export async function opensOnFullDisk (dir: string, storagePath: string): Promise<void> {
  await fill(dir)
  const g = await GalleonFS.open({ storagePath })
  try {
    assert.deepEqual(await g.readBlock('a', 3), bytesOf(4096, 3))
  } finally {
    await g.close()
  }
}
