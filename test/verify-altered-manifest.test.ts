// verifyBackup reports what restoreBackup refuses in a plain backup's manifest rewritten on the
// target with a valid checksum (anyone who can write the target can do that for unencrypted
// backups): extents naming blocks past the end of their chunk, and a chain that builds on another
// volume's backup. Before, verify said ok and restore then failed.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { decodeManifest, encodeManifest, type Manifest } from '../src/backup/format.js'

const BS = 4096

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-verify-altered-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('verifyBackup and a plain manifest rewritten with a valid checksum', () => {
  it('reports extents past the end of their chunk and a chain that spans volumes, as restoreBackup refuses them', async () => {
    const target = join(root, 'target')
    const g = await GalleonFS.open({ storagePath: join(root, 'storage'), backupTarget: target })
    try {
      await g.createVolume({ name: 'a', sizeBytes: 64 * BS })
      await g.createVolume({ name: 'b', sizeBytes: 64 * BS })
      await g.write('a', 0, new Uint8Array(4 * BS).fill(1))
      await g.write('b', 0, new Uint8Array(4 * BS).fill(2))
      const full = await g.createBackup('a', { strategy: 'full' })
      const other = await g.createBackup('b', { strategy: 'full' })
      await g.write('a', 8 * BS, new Uint8Array(BS).fill(3))
      const incremental = await g.createBackup('a', { strategy: 'incremental' })
      const file = (id: string): string => join(target, 'manifests', `${id}.json`)
      const rewrite = async (id: string, change: (manifest: Manifest) => Manifest): Promise<Buffer> => {
        const bytes = await readFile(file(id))
        await writeFile(file(id), encodeManifest(change(decodeManifest(id, bytes))))
        return bytes
      }

      // The full backup's extents say 64 blocks where its chunk holds 4.
      const fullBytes = await rewrite(full.id, (m) => ({ ...m, extents: m.extents.map(([index, , chunk, offset]) => [index, 64, chunk, offset]) as unknown as Manifest['extents'] }))
      const past = await g.verifyBackup(incremental.id)
      assert.equal(past.ok, false, JSON.stringify(past))
      assert.ok(past.problems.some((p) => p.backupId === full.id && p.code === 'CORRUPTION' && /past the end|names blocks/.test(p.message)), JSON.stringify(past.problems))
      await assert.rejects(g.restoreBackup(incremental.id, { name: 'past' }))
      await writeFile(file(full.id), fullBytes)
      assert.equal((await g.verifyBackup(incremental.id)).ok, true)

      // The incremental now builds on volume b's backup.
      const incrementalBytes = await rewrite(incremental.id, (m) => ({ ...m, base: other.id }))
      const spans = await g.verifyBackup(incremental.id)
      assert.equal(spans.ok, false, JSON.stringify(spans))
      assert.ok(spans.problems.some((p) => p.code === 'CORRUPTION' && /another volume/.test(p.message)), JSON.stringify(spans.problems))
      const restored = await g.restoreBackup(incremental.id, { name: 'spans' }).then((v) => `restored ${v.name}`, (err: { code?: string, message: string }) => `${err.code ?? ''}: ${err.message}`)
      assert.doesNotMatch(restored, /^restored/, 'restore refuses it too')
      await writeFile(file(incremental.id), incrementalBytes)
      assert.equal((await g.verifyBackup(incremental.id)).ok, true)
    } finally {
      await g.close()
    }
  })
})
