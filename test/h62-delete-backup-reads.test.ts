// h62: deleteBackup read every manifest on its target twice (once to find the backup, its
// dependents and the chunks still referenced; once more to rebuild the target's index). It reads
// each once now, and the index it writes is as current as before, including a manifest another
// instance stored while the deletion ran; nothing it checks is weakened.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { GalleonFS, DirectoryBackupTarget } from '../src/index.js'
import { decodeIndex } from '../src/backup/format.js'
import { withTempDir } from './support/temp-dir.js'

const BLOCK = 4096
const fill = (byte: number): Uint8Array => new Uint8Array(BLOCK).fill(byte)

/** A directory target that counts the manifests read from it, and can run a step as a manifest is deleted. */
class CountingTarget extends DirectoryBackupTarget {
  manifestReads = 0
  onDelete: (() => Promise<void>) | undefined
  override async getManifest (id: string): Promise<Uint8Array | undefined> {
    this.manifestReads++
    return await super.getManifest(id)
  }

  override async deleteManifest (id: string): Promise<void> {
    await super.deleteManifest(id)
    const step = this.onDelete
    this.onDelete = undefined
    await step?.()
  }
}

/** The ids the target's index lists, sorted. */
async function indexed (dir: string): Promise<string[]> {
  const index = decodeIndex(await readFile(join(dir, 'index.json')))
  assert.ok(index !== undefined, 'the target has a readable index')
  return index.backups.map((b) => b.id).sort()
}

describe('h62: deleteBackup reads each manifest once', () => {
  it('a deletion reads every manifest on the target once, and leaves a current index, the dependents check and the chunk collection as they were', async () => {
    await withTempDir('h62-delete-reads-', async (dir) => {
      const target = new CountingTarget({ path: dir })
      const g = await GalleonFS.open({ inMemory: true, backupTarget: target })
      try {
        await g.createVolume({ name: 'app', sizeBytes: 16 * BLOCK })
        await g.createVolume({ name: 'other', sizeBytes: 16 * BLOCK })
        const OTHERS = 20
        for (let k = 0; k < OTHERS; k++) {
          await g.writeBlock('other', k % 16, fill(k + 1))
          await g.createBackup('other', { strategy: 'full' })
        }
        await g.writeBlock('app', 0, fill(100))
        const full = await g.createBackup('app', { strategy: 'full' })
        await g.writeBlock('app', 1, fill(101))
        const incremental = await g.createBackup('app', { strategy: 'incremental' })
        assert.equal(incremental.baseId, full.id)
        const alone = await g.createBackup('app', { strategy: 'full' })
        const total = OTHERS + 3

        // A dependent incremental still blocks the deletion of its base, without deleting anything.
        target.manifestReads = 0
        await assert.rejects(g.deleteBackup(full.id), { code: 'BUSY' })
        assert.equal((await g.listBackups()).length, total)

        // A backup nothing builds on: its manifest goes, each other manifest is read once (one more
        // read is the facade's look-up of the backup), the index lists exactly what is left.
        target.manifestReads = 0
        const result = await g.deleteBackup(alone.id, { chunkGraceSeconds: 0 })
        assert.deepEqual(result.deletedBackups, [alone.id])
        // Before: 1 + total + (total - 1), the index rebuilt by reading every manifest again.
        assert.ok(target.manifestReads <= total + 1, `deleting one of ${total} backups read ${target.manifestReads} manifests`)
        const left = (await g.listBackups()).map((b) => b.id).sort()
        assert.equal(left.length, total - 1)
        assert.deepEqual(await indexed(dir), left)
        assert.equal((await g.verifyBackup(incremental.id)).indexCurrent, true)

        // With force, the base goes with its dependent; the chunks only they held are collected, and
        // what remains restores.
        target.manifestReads = 0
        const forced = await g.deleteBackup(full.id, { force: true, chunkGraceSeconds: 0 })
        assert.deepEqual(forced.deletedBackups, [incremental.id, full.id])
        assert.ok(forced.deletedChunks > 0)
        assert.ok(target.manifestReads <= total, `a forced deletion read ${target.manifestReads} manifests`)
        const remaining = (await g.listBackups()).map((b) => b.id).sort()
        assert.equal(remaining.length, OTHERS)
        assert.deepEqual(await indexed(dir), remaining)
        const newest = (await g.listBackups('other')).at(-1)
        assert.ok(newest !== undefined)
        const verified = await g.verifyBackup(newest.id)
        assert.equal(verified.ok, true, JSON.stringify(verified.problems))
        assert.equal(verified.indexCurrent, true)
        const restored = await g.restoreBackup(newest.id, { name: 'other-copy' })
        assert.deepEqual(await g.readBlock(restored.id, (OTHERS - 1) % 16), fill(OTHERS))
      } finally {
        await g.close()
      }
    })
  })

  it('a manifest another instance stores while a deletion runs is read and indexed', async () => {
    await withTempDir('h62-delete-race-', async (dir) => {
      const target = new CountingTarget({ path: dir })
      const g = await GalleonFS.open({ inMemory: true, backupTarget: target })
      const h = await GalleonFS.open({ inMemory: true, backupTarget: dir })
      try {
        await g.createVolume({ name: 'app', sizeBytes: 16 * BLOCK })
        await h.createVolume({ name: 'elsewhere', sizeBytes: 16 * BLOCK })
        const backups = []
        for (let k = 0; k < 4; k++) {
          await g.writeBlock('app', k, fill(k + 1))
          backups.push(await g.createBackup('app', { strategy: 'full' }))
        }
        await h.writeBlock('elsewhere', 0, fill(9))
        // Between the deletion's read of the manifests and its index: h stores a backup.
        let stored: string | undefined
        target.onDelete = async () => { stored = (await h.createBackup('elsewhere', { strategy: 'full' })).id }
        await g.deleteBackup(backups[1]?.id as string)
        assert.ok(stored !== undefined)
        const listed = (await g.listBackups()).map((b) => b.id).sort()
        assert.ok(listed.includes(stored))
        assert.deepEqual(await indexed(dir), listed, 'the index lists the backup stored during the deletion')
        assert.equal((await g.verifyBackup(stored)).indexCurrent, true)
        assert.equal((await h.restoreBackup(stored, { name: 'back' })).name, 'back')
        assert.deepEqual(await h.readBlock('back', 0), fill(9))
      } finally {
        await h.close()
        await g.close()
      }
    })
  })
})
