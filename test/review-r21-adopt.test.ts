// Review r21 of adoptBackup (1eae741): a chain never spans volumes (createBackup picks bases among
// the volume's own backups), so an untagged chain whose base names another volume was altered on the
// target. Adoption must not tag the other volume's manifest on the word of a principal whose admin
// grant covers only the requested backup's volume, nor make a chain that restores another volume's
// data under this one's name.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { decodeManifest, encodeManifest } from '../src/backup/format.js'

const root = await mkdtemp(join(tmpdir(), 'galleon-r21-adopt-'))
after(async () => { await rm(root, { recursive: true, force: true }) })
const BS = 4096

describe('review r21: adoptBackup and chains that span volumes', () => {
  it('an untagged backup whose base is another volume\'s backup is not adopted, and the other volume\'s manifest stays untouched', async () => {
    const target = join(root, 'target')
    const g = await GalleonFS.open({ storagePath: join(root, 'data'), backupTarget: target })
    try {
      await g.createStorageClass({ name: 'sealed', provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
      await g.createVolume({ name: 'mine', sizeBytes: 64 * BS, storageClass: 'sealed' })
      await g.createVolume({ name: 'theirs', sizeBytes: 64 * BS, storageClass: 'sealed' })
      const theirData = new Uint8Array(8 * BS).fill(0x5a)
      await g.write('theirs', 0, theirData, WriteConcern.WriteDurable)
      await g.write('mine', 32 * BS, new Uint8Array(BS).fill(0x11), WriteConcern.WriteDurable)
      const theirs = await g.createBackup('theirs')
      const mine = await g.createBackup('mine')
      const file = (id: string): string => join(target, 'manifests', `${id}.json`)
      // Both as a build from before manifests were tagged wrote them; mine altered to build on theirs.
      const untagged = async (id: string): Promise<Record<string, unknown>> => {
        const { tag, ...rest } = JSON.parse((await readFile(file(id))).toString()) as Record<string, unknown>
        assert.equal(typeof tag, 'string')
        return rest
      }
      await writeFile(file(theirs.id), JSON.stringify(await untagged(theirs.id)) + '\n')
      const own = decodeManifest(mine.id, new Uint8Array(Buffer.from(JSON.stringify(await untagged(mine.id)))))
      await writeFile(file(mine.id), encodeManifest({ ...own, strategy: 'incremental', requestedStrategy: 'incremental', base: theirs.id }))
      const theirsBefore = await readFile(file(theirs.id))

      // alice is admin of volume 'mine' only.
      await g.createAccessPolicy({ name: 'mine-admin', principals: ['user:alice'], verbs: ['admin'], volumes: ['mine'] })
      let adopted: unknown
      try {
        adopted = await g.as({ id: 'alice' }).adoptBackup(mine.id)
      } catch (err) {
        adopted = err
      }
      assert.ok(adopted instanceof Error, `adoption of a chain spanning volumes 'mine' and 'theirs' succeeded: ${JSON.stringify(adopted)}`)
      assert.deepEqual(await readFile(file(theirs.id)), theirsBefore, 'the manifest of volume theirs (not alice\'s to vouch for) was rewritten')
      // And nothing restores 'theirs' data as a backup of 'mine'.
      await assert.rejects(g.restoreBackup(mine.id, { name: 'leak' }))
      assert.equal((await g.listVolumes()).some((v) => v.name === 'leak'), false)
    } finally {
      await g.close()
    }
  })
  it('an untagged manifest naming another volume\'s id under this volume\'s name is not adopted on the word of this volume\'s admin', async () => {
    const target = join(root, 'target-renamed')
    const g = await GalleonFS.open({ storagePath: join(root, 'data-renamed'), backupTarget: target })
    try {
      await g.createStorageClass({ name: 'sealed', provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
      await g.createVolume({ name: 'mine', sizeBytes: 64 * BS, storageClass: 'sealed' })
      await g.createVolume({ name: 'theirs', sizeBytes: 64 * BS, storageClass: 'sealed' })
      await g.write('theirs', 0, new Uint8Array(8 * BS).fill(0x5a), WriteConcern.WriteDurable)
      const theirs = await g.createBackup('theirs')
      const file = join(target, 'manifests', `${theirs.id}.json`)
      // Theirs, untagged (as an old build wrote it), and renamed to look like a backup of 'mine'.
      const { tag, ...rest } = JSON.parse((await readFile(file)).toString()) as Record<string, unknown>
      assert.equal(typeof tag, 'string')
      const manifest = decodeManifest(theirs.id, new Uint8Array(Buffer.from(JSON.stringify(rest))))
      await writeFile(file, encodeManifest({ ...manifest, volume: { ...manifest.volume, name: 'mine' } }))
      const before = await readFile(file)
      await g.createAccessPolicy({ name: 'mine-admin', principals: ['user:alice'], verbs: ['admin'], volumes: ['mine'] })
      let adopted: unknown
      try {
        adopted = await g.as({ id: 'alice' }).adoptBackup(theirs.id)
      } catch (err) {
        adopted = err
      }
      assert.ok(adopted instanceof Error, `alice (admin of 'mine' only) tagged a manifest under the key of volume 'theirs': ${JSON.stringify(adopted)}`)
      assert.deepEqual(await readFile(file), before, 'the manifest was rewritten')
    } finally {
      await g.close()
    }
  })
})
