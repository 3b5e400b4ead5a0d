// Review r57: backup call options of the wrong type are refused (INVALID_ARGUMENT) before anything
// is done: a createBackup `policy` that is no string was stored in the manifest as whatever
// String() made of it ("[object Object]"), and a deleteBackup `chunkGraceSeconds` given as a
// string was multiplied into a number and used.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r57-backup-input-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

const outcome = async (call: Promise<unknown>): Promise<string> => await call.then(() => 'done', (err: { code?: string }) => String(err.code))

describe('review r57: backup options of the wrong type', () => {
  it('createBackup policy and deleteBackup chunkGraceSeconds are refused with INVALID_ARGUMENT, changing nothing', async () => {
    const g = await GalleonFS.open({ inMemory: true, backupTarget: root })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.write('v', 0, new Uint8Array(4096).fill(1))
      for (const policy of [{ name: 'nightly' }, 7, '']) {
        assert.equal(await outcome(g.createBackup('v', { policy } as never)), 'INVALID_ARGUMENT', `policy ${JSON.stringify(policy)}`)
      }
      assert.deepEqual(await g.listBackups('v'), [], 'no backup was taken')
      const backup = await g.createBackup('v', { policy: 'nightly' })
      assert.equal(backup.policy, 'nightly')
      for (const chunkGraceSeconds of ['5', true]) {
        assert.equal(await outcome(g.deleteBackup(backup.id, { chunkGraceSeconds } as never)), 'INVALID_ARGUMENT', `chunkGraceSeconds ${JSON.stringify(chunkGraceSeconds)}`)
      }
      assert.equal((await g.listBackups('v')).length, 1, 'nothing was deleted')
      assert.deepEqual((await g.deleteBackup(backup.id, { chunkGraceSeconds: 0 })).deletedBackups, [backup.id])
    } finally { await g.close() }
  })
})
