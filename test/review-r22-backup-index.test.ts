// Review r22 of h59's backup index (createBackup reads only the manifests the target's index names
// for its volume, and extends the index instead of rebuilding it): an index that lies, and two
// instances backing up to one directory target at once.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { GalleonFS, DirectoryBackupTarget } from '../src/index.js'
import { decodeIndex, encodeIndex, type BackupIndex } from '../src/backup/format.js'
import { withTempDir } from './support/temp-dir.js'

const BLOCK = 4096
const fill = (byte: number): Uint8Array => new Uint8Array(BLOCK).fill(byte)

/** The target's index, decoded (its checksum checked). */
async function readIndex (dir: string): Promise<BackupIndex> {
  const index = decodeIndex(await readFile(join(dir, 'index.json')))
  assert.ok(index !== undefined, 'the target has a readable index')
  return index
}

/** Rewrites the target's index with `change` applied to each entry, with a valid checksum (as anyone with write access can). */
async function alterIndex (dir: string, change: (entry: BackupIndex['backups'][number]) => BackupIndex['backups'][number]): Promise<void> {
  const index = await readIndex(dir)
  await writeFile(join(dir, 'index.json'), encodeIndex({ ...index, backups: index.backups.map(change) }))
}

describe('review r22: the backup index h59 trusts', () => {
  it('an index altered to file a volume\'s backups under another volume is rewritten by the next backup, and their snapshots are freed as before', async () => {
    await withTempDir('r22-index-lie-', async (dir) => {
      const g = await GalleonFS.open({ inMemory: true, backupTarget: new DirectoryBackupTarget({ path: dir }) })
      try {
        const app = await g.createVolume({ name: 'app', sizeBytes: 32 * BLOCK })
        const other = await g.createVolume({ name: 'other', sizeBytes: 32 * BLOCK })
        await g.writeBlock('other', 0, fill(7))
        await g.createBackup('other', { strategy: 'full' })
        await g.writeBlock('app', 0, fill(1))
        const full = await g.createBackup('app', { strategy: 'full' })
        await g.writeBlock('app', 1, fill(2))
        const first = await g.createBackup('app', { strategy: 'incremental' })
        assert.equal(first.strategy, 'incremental')
        // Someone (or something) with write access to the target files app's backups under 'other'.
        await alterIndex(dir, (entry) => entry.volumeId === app.id ? { ...entry, volumeId: other.id } : entry)

        await g.writeBlock('app', 2, fill(3))
        const second = await g.createBackup('app', { strategy: 'incremental' })
        // h59's documented effect of a lying index: a base hidden, so this one may be full. Its data is whole either way.
        const restored = await g.restoreBackup(second.id, { name: 'app-second' })
        for (const [block, byte] of [[0, 1], [1, 2], [2, 3]] as const) assert.deepEqual(await g.readBlock(restored.id, block), fill(byte))

        await g.writeBlock('app', 3, fill(4))
        const third = await g.createBackup('app', { strategy: 'incremental' })
        assert.equal(third.strategy, 'incremental')
        // Backups keep the snapshots later backups need as bases (the newest full and the newest):
        // the ones the index hid are never freed by later backups while the lie stands.
        const kept = (await g.listSnapshots('app')).map((s) => s.name).filter((name) => name.startsWith('backup-')).sort()
        assert.ok(kept.length <= 2, `app holds ${kept.length} backup snapshots after 4 backups: ${kept.join(', ')}`)
        assert.equal((await g.listBackups('app')).length, 4)
        assert.equal((await g.verifyBackup(third.id)).ok, true)
        // The index the later backups wrote must say what is on the target: before h59 every backup
        // rebuilt it from the manifests; h59 extends the old one, so the lie outlives every later backup.
        const index = await readIndex(dir)
        const volumeOf = new Map(index.backups.map((entry) => [entry.id, entry.volumeId]))
        assert.equal(volumeOf.get(full.id), app.id, `the index rewritten by backups ${second.id} and ${third.id} still files app's full backup under volume 'other'`)
        assert.equal(volumeOf.get(first.id), app.id)
      } finally {
        await g.close()
      }
    })
  })

  it('an index lying by volume never makes a backup build on another volume\'s backup', async () => {
    await withTempDir('r22-index-swap-', async (dir) => {
      const g = await GalleonFS.open({ inMemory: true, backupTarget: new DirectoryBackupTarget({ path: dir }) })
      try {
        const a = await g.createVolume({ name: 'a', sizeBytes: 16 * BLOCK })
        const b = await g.createVolume({ name: 'b', sizeBytes: 16 * BLOCK })
        await g.writeBlock('a', 0, fill(1))
        await g.writeBlock('b', 0, fill(2))
        await g.createBackup('a', { strategy: 'full' })
        await g.createBackup('b', { strategy: 'full' })
        // Swap the volumes of every entry.
        await alterIndex(dir, (entry) => ({ ...entry, volumeId: entry.volumeId === a.id ? b.id : a.id }))
        await g.writeBlock('a', 1, fill(3))
        const next = await g.createBackup('a', { strategy: 'incremental' })
        if (next.baseId !== null) assert.equal((await g.getBackup(next.baseId)).volumeId, a.id, 'the base is a backup of the same volume')
        const restored = await g.restoreBackup(next.id, { name: 'a-copy' })
        assert.deepEqual(await g.readBlock(restored.id, 0), fill(1))
        assert.deepEqual(await g.readBlock(restored.id, 1), fill(3))
      } finally {
        await g.close()
      }
    })
  })

  it('two instances backing up to one directory target at once: each chain builds on its own volume, every backup restores, the index catches up', async () => {
    await withTempDir('r22-two-writers-', async (dir) => {
      const one = await GalleonFS.open({ inMemory: true, backupTarget: new DirectoryBackupTarget({ path: dir }) })
      const two = await GalleonFS.open({ inMemory: true, backupTarget: new DirectoryBackupTarget({ path: dir }) })
      try {
        await one.createVolume({ name: 'v', sizeBytes: 16 * BLOCK })
        await two.createVolume({ name: 'v', sizeBytes: 16 * BLOCK })
        const taken: Array<{ g: GalleonFS, id: string, round: number, strategy: string }> = []
        const ROUNDS = 8
        for (let round = 0; round < ROUNDS; round++) {
          await one.writeBlock('v', round, fill(10 + round))
          await two.writeBlock('v', round, fill(100 + round))
          const [x, y] = await Promise.all([one.createBackup('v', { strategy: 'incremental' }), two.createBackup('v', { strategy: 'incremental' })])
          taken.push({ g: one, id: x.id, round, strategy: x.strategy }, { g: two, id: y.id, round, strategy: y.strategy })
        }
        // Later rounds build on earlier ones (the index may be stale between the two writers, which
        // only costs manifest reads), and never on the other instance's volume.
        assert.ok(taken.filter((t) => t.round > 0).every((t) => t.strategy === 'incremental'), JSON.stringify(taken.map((t) => t.strategy)))
        for (const { g, id, round } of taken) {
          const restored = await g.restoreBackup(id, { name: `r-${id.slice(0, 8)}` })
          const base = g === one ? 10 : 100
          for (let block = 0; block <= round; block++) assert.deepEqual(await g.readBlock(restored.id, block), fill(base + block), `backup ${id} of round ${round}, block ${block}`)
          assert.deepEqual(await g.readBlock(restored.id, round + 1), fill(0))
        }
        const all = await one.listBackups()
        assert.equal(all.length, ROUNDS * 2)
        const byId = new Map(all.map((backup) => [backup.id, backup]))
        for (const backup of all) if (backup.baseId !== null) assert.equal(byId.get(backup.baseId)?.volumeId, backup.volumeId, `backup ${backup.id} builds on another volume's backup`)
        // One more backup (alone) leaves an index listing exactly what is there.
        await one.writeBlock('v', 15, fill(1))
        const last = await one.createBackup('v', { strategy: 'incremental' })
        assert.equal((await one.verifyBackup(last.id)).indexCurrent, true)
        const index = await readIndex(dir)
        assert.equal(index.backups.length, ROUNDS * 2 + 1)
        assert.equal(new Set(index.backups.map((entry) => entry.id)).size, ROUNDS * 2 + 1)
      } finally {
        await one.close()
        await two.close()
      }
    })
  })
})
