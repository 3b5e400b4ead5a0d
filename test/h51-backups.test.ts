// README "Backups": a cancelled backup's chunks are reused, an incremental after its base snapshot
// was deleted by hand builds on an older backup, a restore over a volume discards its contents, and
// index.json follows every change.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'

const BLOCK = 4096
const MiB = 1024 * 1024

describe('README Backups', () => {
  it('cancelled backup: no manifest, its chunks reused; a snapshot deleted by hand: the incremental builds on an older backup; restore over a volume; index.json', async () => {
    const target = await mkdtemp(join(tmpdir(), 'h51-backups-'))
    const g = await GalleonFS.open({ inMemory: true, backupTarget: target })
    try {
      await g.createVolume({ name: 'app', sizeBytes: 16 * MiB })
      const image = new Uint8Array(randomBytes(16 * MiB))
      await g.write('app', 0, image)

      const controller = new AbortController()
      let aborted = false
      g.on('backup:progress', (event) => {
        if (!aborted && event.bytesDone >= 8 * MiB) { aborted = true; controller.abort() }
      })
      await assert.rejects(g.createBackup('app', { strategy: 'full', signal: controller.signal }), { code: 'CANCELLED' })
      assert.equal(aborted, true)
      assert.deepEqual(await g.listBackups('app'), [], 'a cancelled backup is simply not there')
      const chunksLeft = (await readdir(join(target, 'chunks'), { recursive: true })).filter((n) => /[0-9a-f]{64}/.test(n)).length
      assert.ok(chunksLeft > 0, 'the cancelled backup stored some chunks')

      const full = await g.createBackup('app', { strategy: 'full' })
      assert.ok(full.newChunks < full.chunks, `the chunks the cancelled backup stored are reused: ${full.newChunks} new of ${full.chunks}`)
      assert.equal(full.newChunks + chunksLeft, full.chunks)

      await g.writeBlock('app', 1, new Uint8Array(BLOCK).fill(1))
      const first = await g.createBackup('app', { strategy: 'incremental' })
      assert.equal(first.baseId, full.id)
      // Delete the newest backup's snapshot by hand: the next incremental builds on the full.
      await g.deleteSnapshot('app', first.snapshotName)
      await g.writeBlock('app', 2, new Uint8Array(BLOCK).fill(2))
      const second = await g.createBackup('app', { strategy: 'incremental' })
      assert.equal(second.baseId, full.id, 'builds on an older backup whose snapshot is still there')
      assert.equal(second.blocks, 2, 'blocks 1 and 2 changed since the full')

      // Restore over an existing volume at least as large: its old contents are discarded.
      await g.createVolume({ name: 'other', sizeBytes: 20 * MiB })
      await g.writeBlock('other', (16 * MiB) / BLOCK + 3, new Uint8Array(BLOCK).fill(9))
      await g.restoreBackup(second.id, { volume: 'other' })
      const expected = image.slice()
      expected.fill(1, BLOCK, 2 * BLOCK)
      expected.fill(2, 2 * BLOCK, 3 * BLOCK)
      assert.deepEqual(await g.read('other', 0, 16 * MiB), expected)
      assert.deepEqual(await g.readBlock('other', (16 * MiB) / BLOCK + 3), new Uint8Array(BLOCK), 'beyond the backup: old contents gone')
      assert.equal((await g.getVolume('other')).sizeBytes, 20 * MiB)
      assert.deepEqual((await g.listSnapshots('other')).filter((s) => s.name.startsWith('pre-restore-')), [], 'its pre-restore snapshot is deleted')

      // index.json summarises every backup, rewritten after each change.
      const index = async (): Promise<string> => await readFile(join(target, 'index.json'), 'utf8')
      for (const b of [full, first, second]) assert.ok((await index()).includes(b.id))
      await g.deleteBackup(first.id)
      assert.ok(!(await index()).includes(first.id), 'index.json rewritten after a deletion')
      assert.ok((await index()).includes(second.id))
      assert.equal((await g.verifyBackup(second.id)).ok, true)
    } finally {
      await g.close()
      await rm(target, { recursive: true, force: true })
    }
  })
})
