// Child process of the backup crash test (backup-crash.test.ts): writes to a volume and backs it
// up (full, incremental and differential in turn) to a directory target, until the parent kills it.
//
// Usage: node --import tsx backup-child.ts <storagePath> <file|level> <seqBase> <seed> <target>
//
// Protocol: `ready`; `B <backupId> <sha256>` once a backup resolved, with the hash of the volume as
// that backup holds it (read from the backup's snapshot); `error <message>` on failure (exit 3).

import { createHash } from 'node:crypto'
import { bytesOf, seededRandom } from '../conformance/fixtures.js'
import { childArguments, reportLine, runAsChild } from './support.js'

export const VOLUME = 'data'
export const BLOCK_BYTES = 4096
export const VOLUME_BLOCKS = 512

async function main (): Promise<void> {
  const { storagePath, backend, seqBase, seed } = childArguments('backup-child.ts')
  const target = process.argv[6] as string
  const { GalleonFS } = await import('../../src/index.js')
  const random = seededRandom(seed)
  const g = await GalleonFS.open({ storagePath, backend, backupTarget: target })
  reportLine('ready')
  const strategies = ['full', 'incremental', 'incremental', 'differential'] as const
  for (let round = 0; ; round++) {
    const writes = 1 + Math.floor(random() * 60)
    for (let i = 0; i < writes; i++) {
      await g.writeBlock(VOLUME, Math.floor(random() * VOLUME_BLOCKS), bytesOf(BLOCK_BYTES, seqBase + round * 100 + i))
    }
    const backup = await g.createBackup(VOLUME, { strategy: strategies[round % strategies.length] })
    const image = await g.read({ volume: VOLUME, snapshot: backup.snapshotName }, 0, VOLUME_BLOCKS * BLOCK_BYTES)
    reportLine(`B ${backup.id} ${createHash('sha256').update(image).digest('hex')}`)
  }
}

runAsChild(import.meta.url, main)
