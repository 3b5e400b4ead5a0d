// Manifests of an encrypted volume's backups carry an HMAC-SHA256 under a key derived from the
// volume's backup key. Their SHA-256 checksum only catches damage: someone able to write to the
// target could change which chunks restore to which blocks, or rename or retarget a backup, and
// recompute it. Such a manifest, or one whose tag was removed, is refused by restore and verify
// (DECRYPTION_FAILED) before anything is written; plain volumes' manifests carry no tag, as before.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { decodeManifest, encodeManifest, type Manifest } from '../src/backup/format.js'
import { rejectsWithCode } from './support/assertions.js'

const root = await mkdtemp(join(tmpdir(), 'galleon-manifest-tag-'))
after(async () => { await rm(root, { recursive: true, force: true }) })
const BS = 4096

/** An instance with a backup target under `root`, a volume `secret` of an encrypting class and a plain one `plain`, and 8 blocks of data of pattern `mul`. */
async function setUp (name: string, mul: number): Promise<{ g: GalleonFS, target: string, data: Uint8Array }> {
  const target = join(root, `${name}-target`)
  const g = await GalleonFS.open({ storagePath: join(root, `${name}-data`), backupTarget: target })
  await g.createStorageClass({ name: 'sealed', provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
  await g.createVolume({ name: 'secret', sizeBytes: 64 * BS, storageClass: 'sealed' })
  await g.createVolume({ name: 'plain', sizeBytes: 64 * BS })
  const data = new Uint8Array(8 * BS)
  for (let i = 0; i < data.byteLength; i++) data[i] = (i * mul + 7) & 0xff
  return { g, target, data }
}

describe('backup manifest tags', () => {
  it('an altered or untagged manifest of an encrypted backup is refused; untouched ones and plain ones restore', async () => {
    const { g, target, data } = await setUp('tags', 31)
    try {
      for (const volume of ['secret', 'plain']) {
        await g.write(volume, 0, data, WriteConcern.WriteDurable)
        await g.write(volume, 32 * BS, data.slice(0, 4 * BS).reverse(), WriteConcern.WriteDurable)
      }
      const sealed = await g.createBackup('secret')
      const plain = await g.createBackup('plain')
      const file = (id: string): string => join(target, 'manifests', `${id}.json`)
      const original = await readFile(file(sealed.id))
      assert.equal(typeof JSON.parse(original.toString()).tag, 'string', 'an encrypted backup\'s manifest is tagged')
      assert.equal(JSON.parse((await readFile(file(plain.id))).toString()).tag, undefined, 'a plain one is not')

      // Untouched: verifies and restores.
      assert.equal((await g.verifyBackup(sealed.id)).ok, true)
      const copy = await g.restoreBackup(sealed.id, { name: 'copy' })
      assert.deepEqual(await g.read(copy.id, 0, data.byteLength), data)

      // Its extents swapped (the two runs restore to each other's blocks), checksum recomputed, tag kept.
      const manifest = decodeManifest(sealed.id, new Uint8Array(original))
      assert.ok(manifest.extents.length >= 2)
      const swapped: Manifest = { ...manifest, extents: manifest.extents.map((e, i, all) => { const other = all[all.length - 1 - i] as typeof e; return [e[0], e[1], other[2], other[3]] as typeof e }) }
      const tag = JSON.parse(original.toString()).tag as string
      const reencoded = JSON.parse(new TextDecoder().decode(encodeManifest(swapped))) as Record<string, unknown>
      await writeFile(file(sealed.id), JSON.stringify({ ...reencoded, tag }) + '\n')
      await assert.rejects(g.restoreBackup(sealed.id, { name: 'forged' }), rejectsWithCode('DECRYPTION_FAILED', /failed authentication/))
      const verified = await g.verifyBackup(sealed.id)
      assert.equal(verified.ok, false)
      assert.deepEqual(verified.problems.map((p) => [p.backupId, p.code]), [[sealed.id, 'DECRYPTION_FAILED']], JSON.stringify(verified))
      assert.equal((await g.listVolumes()).some((v) => v.name === 'forged'), false, 'nothing was created')

      // Its tag removed (as an older version wrote, or an attacker who renamed it): refused too.
      await writeFile(file(sealed.id), encodeManifest({ ...manifest, volume: { ...manifest.volume, name: 'renamed' } }))
      await assert.rejects(g.restoreBackup(sealed.id, { volume: 'copy' }), rejectsWithCode('DECRYPTION_FAILED', /no authentication tag/))
      assert.deepEqual(await g.read('copy', 0, data.byteLength), data, 'the volume it was to overwrite is untouched')

      // A new backup does not build on it: asked for an incremental, it takes a full.
      const next = await g.createBackup('secret', { strategy: 'incremental' })
      assert.equal(next.strategy, 'full', 'the altered manifest is no base')
      assert.deepEqual(await g.read((await g.restoreBackup(next.id, { name: 'next' })).id, 0, data.byteLength), data)
      // While an untouched one is: the next incremental builds on that full.
      assert.equal((await g.createBackup('secret', { strategy: 'incremental' })).strategy, 'incremental')

      // Put back, it restores again; the plain backup restores without a tag.
      await writeFile(file(sealed.id), original)
      assert.deepEqual(await g.read((await g.restoreBackup(sealed.id, { name: 'again' })).id, 0, data.byteLength), data)
      assert.deepEqual(await g.read((await g.restoreBackup(plain.id, { name: 'plain-copy' })).id, 0, data.byteLength), data)
    } finally {
      await g.close()
    }
  })

  it('adoptBackup tags an untagged chain after checking its chunks; it refuses a wrong tag, a damaged chunk and a principal without admin, rewriting nothing', async () => {
    const { g, target, data } = await setUp('adopt', 13)
    try {
      await g.write('secret', 0, data, WriteConcern.WriteDurable)
      await g.write('plain', 0, data, WriteConcern.WriteDurable)
      const full = await g.createBackup('secret')
      await g.write('secret', 16 * BS, data.slice(0, BS), WriteConcern.WriteDurable)
      const incremental = await g.createBackup('secret', { strategy: 'incremental' })
      assert.equal(incremental.baseId, full.id)
      const plain = await g.createBackup('plain')
      const file = (id: string): string => join(target, 'manifests', `${id}.json`)
      const untag = async (id: string): Promise<Buffer> => {
        const tagged = await readFile(file(id))
        const { tag, ...rest } = JSON.parse(tagged.toString()) as Record<string, unknown>
        assert.equal(typeof tag, 'string')
        await writeFile(file(id), JSON.stringify(rest) + '\n')
        return tagged
      }
      // As a build from before manifests were tagged wrote them.
      const taggedFull = await untag(full.id)
      await untag(incremental.id)
      await assert.rejects(g.restoreBackup(incremental.id, { name: 'r0' }), rejectsWithCode('DECRYPTION_FAILED', /before 2026-12-05.*adoptBackup/))

      // Not an admin: refused, nothing rewritten.
      await g.createAccessPolicy({ name: 'reader', principals: ['user:bob'], verbs: ['backup:*', 'volume:*'] })
      const before = await readFile(file(full.id))
      await assert.rejects(g.as({ id: 'bob' }).adoptBackup(incremental.id), rejectsWithCode('PERMISSION_DENIED'))
      assert.deepEqual(await readFile(file(full.id)), before)

      // A chunk of the chain damaged: refused, and neither manifest is tagged.
      const chunkOf = (decodeManifest(full.id, new Uint8Array(before)).extents.find((e) => e[2] !== null) as unknown[])[2] as string
      const chunkPath = join(target, 'chunks', chunkOf.slice(0, 2), chunkOf)
      const chunkBytes = await readFile(chunkPath)
      const damaged = Buffer.from(chunkBytes)
      damaged[damaged.length - 1] = (damaged[damaged.length - 1] as number) ^ 1
      await writeFile(chunkPath, damaged)
      await assert.rejects(g.adoptBackup(incremental.id), rejectsWithCode('DECRYPTION_FAILED', /does not authenticate under its key.*not adopted/))
      assert.deepEqual(await readFile(file(full.id)), before, 'nothing was tagged')
      await writeFile(chunkPath, chunkBytes)

      // Adopted: both manifests of the chain tagged (the full's tag is the one it had), restores again.
      const adoption = await g.adoptBackup(incremental.id)
      assert.deepEqual(adoption.adopted.slice().sort(), [full.id, incremental.id].sort())
      assert.deepEqual(adoption.unchanged, [])
      assert.equal(JSON.parse((await readFile(file(full.id))).toString()).tag, JSON.parse(taggedFull.toString()).tag)
      assert.equal((await g.verifyBackup(incremental.id)).ok, true)
      const restored = await g.restoreBackup(incremental.id, { name: 'r1' })
      assert.deepEqual(await g.read(restored.id, 0, data.byteLength), data)
      assert.deepEqual((await g.adoptBackup(incremental.id)).adopted, [])
      assert.deepEqual((await g.adoptBackup(plain.id)).unchanged, [plain.id], 'a plain backup needs nothing')

      // A tagged manifest whose tag does not match is not re-tagged by adoption.
      const forged = JSON.parse((await readFile(file(full.id))).toString()) as Record<string, unknown>
      await writeFile(file(full.id), JSON.stringify({ ...forged, tag: 'ab'.repeat(32) }) + '\n')
      await assert.rejects(g.adoptBackup(full.id), rejectsWithCode('DECRYPTION_FAILED', /failed authentication/))
      const audit = await g.queryAuditLog({ action: 'adoptBackup' })
      assert.deepEqual(audit.map((e) => `${e.principal} ${e.result}${e.code === undefined ? '' : ` ${e.code}`}`), ['bob denied PERMISSION_DENIED', 'application failed DECRYPTION_FAILED', 'application ok', 'application ok', 'application ok', 'application failed DECRYPTION_FAILED'])
    } finally {
      await g.close()
    }
  })
})
