// Review r57: close() while a deleteBackup runs. close() cancelled backups and restores but did
// not wait for a deletion: the deletion went on after close() had resolved, its calls into the
// closed instance failed, the snapshots it was to free stayed for good (no manifest names them
// any more), and deleteBackup rejected with NOT_OPEN although it had deleted the backups.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { DirectoryBackupTarget } from '../backends/directory/index.js'
import { delegatingTarget } from './support/backup-targets.js'
import { until } from './support/wait.js'

const BS = 4096

let root: string
let count = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r57-delete-close-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const place = (): string => join(root, String(count++))

describe('review r57: close() while deleteBackup runs', () => {
  it('waits for the deletion, which completes: its backups and their snapshots are gone, nothing is touched after close()', async () => {
    const storagePath = place()
    const directory = new DirectoryBackupTarget({ path: place() })
    let held: (() => void) | undefined
    let holding = false
    let closedAt: number | undefined
    let lateCalls = 0
    const late = (): void => { if (closedAt !== undefined) lateCalls++ }
    const target = delegatingTarget(directory, 'held', {
      deleteManifest: async (id) => {
        late()
        // The first manifest waits until released: the deletion is under way when close() is called.
        if (!holding) {
          holding = true
          await new Promise<void>((resolve) => { held = resolve })
        }
        await directory.deleteManifest(id)
      },
      deleteChunk: async (id) => { late(); await directory.deleteChunk(id) },
      listChunks: () => { late(); return directory.listChunks() }
    })
    let g = await GalleonFS.open({ storagePath })
    const ids: string[] = []
    await g.createVolume({ name: 'v', sizeBytes: 256 * BS })
    for (let step = 0; step < 3; step++) {
      await g.write('v', step * 64 * BS, new Uint8Array(8 * BS).fill(step + 1))
      ids.push((await g.createBackup('v', { strategy: step === 0 ? 'full' : 'incremental', target })).id)
    }
    // The full's and the newest's snapshots are kept as bases.
    assert.equal((await g.listSnapshots('v')).filter((s) => s.name.startsWith('backup-')).length, 2)

    const deleting = g.deleteBackup(ids[0] as string, { force: true, target, chunkGraceSeconds: 0 }).then((result) => result.deletedBackups.length, (err: { code?: string }) => `rejected ${String(err.code)}`)
    await until('the deletion to reach its first manifest', () => held !== undefined)
    const closing = g.close().then(() => { closedAt = Date.now() })
    // close() has begun once a backup is refused as the instance closing (before: cancelled, by its own signal).
    await until('close() to begin', async () => await g.createBackup('v', { target, signal: AbortSignal.abort() }).then(() => false, (err: { code?: string }) => err.code === 'NOT_OPEN'))
    held?.()
    await closing
    assert.equal(await deleting, 3, 'the deletion completed')
    assert.equal(lateCalls, 0, 'no call reached the target after close() resolved')

    g = await GalleonFS.open({ storagePath })
    try {
      assert.deepEqual(await g.listBackups('v', { target }), [])
      assert.deepEqual((await g.listSnapshots('v')).map((s) => s.name), [], 'no snapshot of a deleted backup is left')
    } finally { await g.close() }
  })
})
