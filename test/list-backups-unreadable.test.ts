// listBackups() leaves a manifest it cannot read out of its answer, and says so once with an
// io:error event naming the target and the backup, instead of hiding the backup without a word.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, type IoErrorEvent } from '../src/index.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-list-unreadable-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('listBackups and an unreadable manifest', () => {
  it('lists the readable backups and reports the unreadable one once (io:error, CORRUPTION, naming it)', async () => {
    const target = join(root, 'target')
    const g = await GalleonFS.open({ storagePath: join(root, 'storage'), backupTarget: target })
    try {
      await g.createVolume({ name: 'v', sizeBytes: 16 * 4096 })
      await g.write('v', 0, new Uint8Array(4096).fill(1))
      const first = await g.createBackup('v', { strategy: 'full' })
      const second = await g.createBackup('v', { strategy: 'full' })
      const errors: IoErrorEvent[] = []
      g.on('io:error', (event) => { errors.push(event) })
      await writeFile(join(target, 'manifests', `${first.id}.json`), 'not a manifest')
      assert.deepEqual((await g.listBackups('v')).map((b) => b.id), [second.id])
      assert.equal(errors.length, 1, JSON.stringify(errors))
      assert.equal(errors[0]?.code, 'CORRUPTION')
      assert.ok((errors[0]?.message ?? '').includes(`backup target ${target} holds 1 manifest(s) that cannot be read (${first.id})`), errors[0]?.message)
      await g.listBackups()
      assert.equal(errors.length, 1, 'reported once per instance')
    } finally {
      await g.close()
    }
  })
})
