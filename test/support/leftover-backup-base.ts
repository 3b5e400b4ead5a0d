// The review tests of a leftover backup snapshot that is a backup's base again (r7, r33): a
// snapshot a backup freed while a clone read from it is recorded as a leftover (deleted later by
// BackupManager.retryLeftSnapshots), and after deleteBackup it can be the next backup's base.

import assert from 'node:assert/strict'
import type { Backup, GalleonFS } from '../../src/index.js'
import { blockPattern } from './patterns.js'

export const BS = 4096

/**
 * On `g`: volume `vol` (64 blocks) backed up to `target` in full, then incrementally (`first`); a
 * clone `pinned` reads from `first`'s snapshot, so the next incremental's freeing of it fails and
 * leaves it recorded as a leftover; that next incremental is deleted again, so that `first` is the
 * newest backup once more and its snapshot (asserted to be there) the next incremental's base.
 * Returns `first`.
 */
export async function leftoverBackupBase (g: GalleonFS, target: string): Promise<Backup> {
  await g.createVolume({ name: 'vol', sizeBytes: 64 * BS })
  await g.write('vol', 0, blockPattern(64, 1, BS))
  await g.createBackup('vol', { target })
  await g.write('vol', 0, blockPattern(1, 2, BS))
  const first = await g.createBackup('vol', { target, strategy: 'incremental' })
  await g.cloneVolume({ volume: 'vol', snapshot: `backup-${first.id}` }, 'pinned')
  await g.write('vol', BS, blockPattern(1, 3, BS))
  const second = await g.createBackup('vol', { target, strategy: 'incremental' })
  await g.deleteBackup(second.id, { target })
  assert.ok((await g.listSnapshots('vol')).some((s) => s.name === `backup-${first.id}`))
  return first
}
