// Review r57: verifyBackup finds each kind of damage to a chain on a directory target, for a plain
// and an encrypted volume: a truncated chunk, two chunks whose files were swapped, a base's manifest
// missing (restore refuses, CORRUPTION), a bit flipped in a base's manifest (reported) and in the
// backup's own (refused: CHECKSUM_MISMATCH, as getBackup and restoreBackup refuse it). Put back,
// the chain verifies again.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, truncate, unlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, type BackupVerification } from '../src/index.js'

const BS = 4096

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r57-verify-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

/** The problems of a verification as [backup, chunk or null, code]. */
const problems = (verification: BackupVerification): Array<[string, string | null, string]> => verification.problems.map((p) => [p.backupId, p.chunk ?? null, p.code])

describe('review r57: verifyBackup finds each kind of damage', () => {
  for (const encrypted of [false, true]) {
    it(`${encrypted ? 'encrypted' : 'plain'} volume: truncated and swapped chunks, a base's manifest missing or flipped, its own manifest flipped`, async () => {
      const target = join(root, encrypted ? 'e' : 'p')
      const g = await GalleonFS.open({ storagePath: join(root, `${encrypted ? 'e' : 'p'}-storage`), backupTarget: target })
      try {
        await g.createVolume({ name: 'v', sizeBytes: 2048 * BS, ...(encrypted ? { storageClass: 'encrypted-storage', replicas: 1 } : {}) })
        // Two 4 MiB windows: the full has two chunks; each incremental one more.
        await g.write('v', 0, new Uint8Array(4 * BS).fill(1))
        await g.write('v', 1024 * BS, new Uint8Array(4 * BS).fill(2))
        const full = await g.createBackup('v', { strategy: 'full' })
        await g.write('v', 8 * BS, new Uint8Array(BS).fill(3))
        const middle = await g.createBackup('v', { strategy: 'incremental' })
        await g.write('v', 9 * BS, new Uint8Array(BS).fill(4))
        const newest = await g.createBackup('v', { strategy: 'incremental' })
        const manifestFile = (id: string): string => join(target, 'manifests', `${id}.json`)
        const chunkFile = (chunk: string): string => join(target, 'chunks', chunk.slice(0, 2), chunk)
        const chunksOf = async (id: string): Promise<string[]> => [...new Set((JSON.parse(await readFile(manifestFile(id), 'utf8')) as { manifest: { extents: Array<[number, number, string | null]> } }).manifest.extents.flatMap(([, , chunk]) => chunk === null ? [] : [chunk]))]
        const [first, second] = await chunksOf(full.id) as [string, string]
        assert.equal((await g.verifyBackup(newest.id)).ok, true)

        const firstBytes = await readFile(chunkFile(first))
        const secondBytes = await readFile(chunkFile(second))
        await truncate(chunkFile(first), firstBytes.byteLength - 5)
        assert.deepEqual(problems(await g.verifyBackup(newest.id)), [[full.id, first, encrypted ? 'DECRYPTION_FAILED' : 'CHECKSUM_MISMATCH']], 'a truncated chunk')
        await writeFile(chunkFile(first), secondBytes)
        await writeFile(chunkFile(second), firstBytes)
        assert.deepEqual(problems(await g.verifyBackup(newest.id)).sort(), [[full.id, first, encrypted ? 'DECRYPTION_FAILED' : 'CHECKSUM_MISMATCH'], [full.id, second, encrypted ? 'DECRYPTION_FAILED' : 'CHECKSUM_MISMATCH']].sort(), 'swapped chunks')
        await writeFile(chunkFile(first), firstBytes)
        await writeFile(chunkFile(second), secondBytes)

        const middleBytes = await readFile(manifestFile(middle.id))
        await unlink(manifestFile(middle.id))
        assert.deepEqual(problems(await g.verifyBackup(newest.id)), [[middle.id, null, 'BACKUP_NOT_FOUND']], 'a base\'s manifest missing')
        await assert.rejects(g.restoreBackup(newest.id, { name: 'missing-base' }), { code: 'CORRUPTION' })
        await writeFile(manifestFile(middle.id), middleBytes)

        const flip = async (id: string): Promise<Buffer> => {
          const bytes = await readFile(manifestFile(id))
          const flipped = Buffer.from(bytes)
          const at = flipped.indexOf('"createdAt"') + 16
          flipped[at] = (flipped[at] as number) ^ 1
          await writeFile(manifestFile(id), flipped)
          return bytes
        }
        const fullBytes = await flip(full.id)
        assert.deepEqual(problems(await g.verifyBackup(newest.id)), [[full.id, null, 'CHECKSUM_MISMATCH']], 'a bit flipped in a base\'s manifest')
        await writeFile(manifestFile(full.id), fullBytes)
        const newestBytes = await flip(newest.id)
        await assert.rejects(g.verifyBackup(newest.id), { code: 'CHECKSUM_MISMATCH' })
        await assert.rejects(g.getBackup(newest.id), { code: 'CHECKSUM_MISMATCH' })
        await assert.rejects(g.restoreBackup(newest.id, { name: 'flipped' }), { code: 'CHECKSUM_MISMATCH' })
        await writeFile(manifestFile(newest.id), newestBytes)

        const verification = await g.verifyBackup(newest.id)
        assert.deepEqual([verification.ok, verification.backupsChecked, verification.chunksChecked], [true, 3, 4])
        assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['v'], 'no failed restore left a volume')
      } finally { await g.close() }
    })
  }
})
