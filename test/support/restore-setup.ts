// Set-up shared by the tests of restoreBackup into an existing volume: a volume backed up full of
// random bytes and then overwritten, and an instance whose target holds a restore half-way.

import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { GalleonFS } from '../../src/index.js'
import { DirectoryBackupTarget } from '../../backends/directory/index.js'
import { heldCall } from './backup-targets.js'

/** Bytes of volume v: 16 chunks of a backup, more than a restore reads at once (8). */
export const RESTORE_SIZE = 16 << 20

/** A volume v, backed up full of random bytes (`backed`), then overwritten with 7s (`current`). */
export async function backedUp (g: GalleonFS): Promise<{ id: string, backed: Uint8Array, current: Uint8Array }> {
  await g.createVolume({ name: 'v', sizeBytes: RESTORE_SIZE })
  const backed = new Uint8Array(randomBytes(RESTORE_SIZE))
  await g.write('v', 0, backed)
  const { id } = await g.createBackup('v', { strategy: 'full' })
  const current = new Uint8Array(RESTORE_SIZE).fill(7)
  await g.write('v', 0, current)
  return { id, backed, current }
}

/**
 * Runs `body` with an instance in `<root>/<name>` whose target (`<root>/<name>-target`), once
 * `hold()` is called, holds the restore's second chunk read (half-way through its writes); the hold
 * is released and the instance closed afterwards, whatever `body` did.
 */
export async function withHeldRestore (root: string, name: string, body: (g: GalleonFS, hold: () => { reached: Promise<void>, release: () => void }) => Promise<void>): Promise<void> {
  const { target, hold } = heldCall(new DirectoryBackupTarget({ path: join(root, `${name}-target`) }), 'getChunk')
  const g = await GalleonFS.open({ storagePath: join(root, name), backupTarget: target })
  const held: Array<{ release: () => void }> = []
  try {
    await body(g, () => { const one = hold(); held.push(one); return one })
  } finally {
    for (const one of held) one.release()
    await g.close()
  }
}
