// README "Errors": the table's codes, each raised by the call it names, and bad input changing no
// stored data.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, GalleonError, WriteConcern, isGalleonError, type GalleonErrorCode } from '../src/index.js'

const BLOCK = 4096

describe('README Errors table', () => {
  it('raises each code where the table says, with a GalleonError that changes no stored data', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'h51-errors-'))
    const backups = await mkdtemp(join(tmpdir(), 'h51-errors-backups-'))
    const g = await GalleonFS.open({ storagePath: dir, backupTarget: backups })
    try {
      const data = new Uint8Array(BLOCK).fill(5)
      await g.createVolume({ name: 'v', sizeBytes: 8 * BLOCK })
      await g.writeBlock('v', 0, data)
      const expect = async (attempt: Promise<unknown>, code: GalleonErrorCode): Promise<void> => {
        await assert.rejects(attempt, (err: unknown) => {
          assert.ok(err instanceof GalleonError, `a GalleonError, got ${String(err)}`)
          assert.ok(isGalleonError(err, code), `${code} expected, got ${(err as GalleonError).code}: ${(err as Error).message}`)
          assert.ok((err as Error).message.length > 10)
          return true
        })
      }
      await expect(GalleonFS.open({ storagePath: dir }), 'BUSY')
      await expect(g.getVolume(randomUUID()), 'VOLUME_NOT_FOUND')
      await expect(g.createVolume({ name: 'v', sizeBytes: BLOCK }), 'VOLUME_EXISTS')
      await expect(g.cloneVolume('v', 'v'), 'VOLUME_EXISTS')
      await expect(g.getSnapshot('v', 'nope'), 'SNAPSHOT_NOT_FOUND')
      await expect(g.deleteSnapshot('v', randomUUID()), 'SNAPSHOT_NOT_FOUND')
      await g.createSnapshot('v', 's')
      await expect(g.createSnapshot('v', 's'), 'SNAPSHOT_EXISTS')
      await expect(g.writeBlock({ volume: 'v', snapshot: 's' } as never, 0, data), 'READ_ONLY')
      await expect(g.getBackup(randomUUID()), 'BACKUP_NOT_FOUND')
      await expect(g.getBackupPolicy('nope'), 'POLICY_NOT_FOUND')
      await expect(g.createVolume({ name: 'w', sizeBytes: BLOCK, storageClass: 'no-such-class' }), 'STORAGE_CLASS_NOT_FOUND')
      await expect(g.createStorageClass({ name: 'fast-local-ssd' }), 'STORAGE_CLASS_EXISTS')
      await expect(g.getPool('nope'), 'POOL_NOT_FOUND')
      // INVALID_ARGUMENT: each kind of malformed input the row lists.
      await expect(g.createVolume({ name: 'w', sizeBytes: BLOCK + 1 }), 'INVALID_ARGUMENT')
      await expect(g.expandVolume('v', 9 * BLOCK + 7), 'INVALID_ARGUMENT')
      await expect(g.writeBlock('v', 0, data, 'WriteSometimes' as WriteConcern), 'INVALID_ARGUMENT')
      await expect(g.writeBlock('v', 0, new Uint8Array(BLOCK + 1)), 'INVALID_ARGUMENT')
      await expect(g.expandVolume('v', 4 * BLOCK), 'INVALID_ARGUMENT')
      await expect(g.deleteStorageClass('fast-local-ssd'), 'INVALID_ARGUMENT')
      await expect(g.createVolume({ name: 'w', sizeBytes: BLOCK, replicas: 2 }), 'INVALID_ARGUMENT')
      await expect(g.createVolume({ name: 'bad name/with slash', sizeBytes: BLOCK }), 'INVALID_ARGUMENT')
      // OUT_OF_RANGE
      await expect(g.readBlock('v', 8), 'OUT_OF_RANGE')
      await expect(g.write('v', 8 * BLOCK - 1, new Uint8Array(2)), 'OUT_OF_RANGE')
      await expect(g.trim('v', 7 * BLOCK, 2 * BLOCK), 'OUT_OF_RANGE')
      // BUSY: a Retain volume, a storage class in use.
      await g.createStorageClass({ name: 'keep', reclaimPolicy: 'Retain' })
      await g.createVolume({ name: 'kept', sizeBytes: BLOCK, storageClass: 'keep' })
      await expect(g.deleteVolume('kept'), 'BUSY')
      await expect(g.deleteStorageClass('keep'), 'BUSY')
      await g.deleteVolume('kept', { force: true })
      await g.deleteStorageClass('keep')
      // HOOK_FAILED: a post-hook that throws leaves the backup stored; a pre-hook that throws takes none.
      const before = (await g.listBackups('v')).length
      await expect(g.createBackup('v', { strategy: 'full', hooks: { pre: () => { throw new Error('app not quiet') } } }), 'HOOK_FAILED')
      assert.equal((await g.listBackups('v')).length, before, 'no backup was taken')
      await expect(g.createBackup('v', { strategy: 'full', hooks: { post: () => { throw new Error('notify failed') } } }), 'HOOK_FAILED')
      assert.equal((await g.listBackups('v')).length, before + 1, 'the backup is stored')
      // CANCELLED: an aborted signal.
      await expect(g.createBackup('v', { strategy: 'full', signal: AbortSignal.abort() }), 'CANCELLED')
      // OUT_OF_RANGE: a restore into a smaller volume.
      const backup = (await g.listBackups('v'))[0]!
      await g.createVolume({ name: 'small', sizeBytes: BLOCK })
      await expect(g.restoreBackup(backup.id, { volume: 'small' }), 'OUT_OF_RANGE')

      // Nothing stored changed.
      assert.deepEqual(await g.readBlock('v', 0), data)
      assert.equal((await g.getVolume('v')).sizeBytes, 8 * BLOCK)
      assert.deepEqual((await g.listVolumes()).map((v) => v.name).sort(), ['small', 'v'])
      assert.deepEqual((await g.listSnapshots('v')).filter((s) => !s.name.startsWith('backup')).map((s) => s.name), ['s'])
    } finally {
      await g.close()
      await rm(dir, { recursive: true, force: true })
      await rm(backups, { recursive: true, force: true })
    }
    await assert.rejects(g.listVolumes(), { code: 'NOT_OPEN' })
  })

  it('WriteDurable on the memory backend is WRITE_CONCERN_UNSATISFIED, and the block is not written', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'v', sizeBytes: 8 * BLOCK })
      await assert.rejects(g.writeBlock('v', 0, new Uint8Array(BLOCK).fill(1), WriteConcern.WriteDurable), { code: 'WRITE_CONCERN_UNSATISFIED' })
      assert.deepEqual(await g.readBlock('v', 0), new Uint8Array(BLOCK))
    } finally {
      await g.close()
    }
  })
})
