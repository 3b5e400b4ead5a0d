// r31 (review of h73): deleteBackup's collectionDeferred said true whenever a backup was being taken
// on the target (or a manifest there could not be read), even when the deletion left nothing it
// would have deleted: chunks the grace period spares (a later deletion spares them too), or a
// pruned backup whose chunks the policy's new backup reuses. `galleonfs backup policy run` then
// printed "not all deleted yet ... collects them once it has finished" for chunks no later deletion
// collects. Now only a chunk the deletion would have deleted (no manifest names it, outside the
// grace period) makes it deferred. A policy's stored `lastResult` carries the flag too (a scheduled
// run's was only in its event). The writer is a child process (test/support/h69-child.ts) holding
// its backup between its chunks and its manifest; chunks "left earlier" are planted two hours old.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { assertWhole, withInstance, withWriterAndInstance, writeVolume } from './support/lease-children.js'
import { plantOldChunk, storedChunks } from './support/backup-targets.js'
import { tempPlaces } from './support/temp-dir.js'

const { place } = tempPlaces('galleon-r31-gc-')

describe('r31: collectionDeferred only when a chunk the deletion would have deleted was left', { timeout: 120_000 }, () => {
  it('a backup running: the deleted backup\'s fresh chunks (grace period) are no deferral; an old unused chunk is, and a later deletion collects it', async () => {
    const target = place()
    await withWriterAndInstance(async (g, writer, writerPid) => {
      await writeVolume(g, 'a', 1)
      await writeVolume(g, 'b', 2)
      await writeVolume(g, 'c', 3)
      const a = await g.createBackup('a', { target })
      const b = await g.createBackup('b', { target })
      const aChunks = await storedChunks(target)
      const held = await writer.sendStopped({ op: 'backup', target, seed: 9, hold: true })

      // Default grace: a's chunks were put seconds ago, so no deletion would delete them now.
      const first = await g.deleteBackup(a.id, { target })
      assert.equal(first.deletedChunks, 0)
      assert.equal(first.collectionDeferred, false, `only chunks the grace period spares were left: ${first.deferredReason ?? ''}`)
      assert.equal(first.deferredReason, undefined)

      // A chunk outside the grace period is one the running backup keeps from being collected.
      const orphan = await plantOldChunk(target, 0xa5)
      const second = await g.deleteBackup(b.id, { target })
      assert.equal(second.deletedChunks, 0)
      assert.equal(second.collectionDeferred, true)
      assert.match(second.deferredReason ?? '', new RegExp(`a backup running in process ${writerPid} on host `))
      assert.ok((await storedChunks(target)).has(orphan), 'nothing was deleted while the backup ran')

      writer.release()
      await assertWhole(target, await held.reply)
      const c = await g.createBackup('c', { target })
      const third = await g.deleteBackup(c.id, { target })
      assert.equal(third.collectionDeferred, false)
      const left = await storedChunks(target)
      assert.equal(left.has(orphan), false, 'the chunk the second deletion left is collected by the next')
      for (const chunk of aChunks) assert.ok(left.has(chunk), 'chunks within the grace period stay, as they would have without the running backup')
    })
  })

  it('a policy run whose pruned backup\'s chunks the new backup reuses defers nothing; a real deferral is in lastResult too', async () => {
    const target = place()
    await withWriterAndInstance(async (g, writer, writerPid) => {
      await writeVolume(g, 'p', 4)
      await g.createBackupPolicy({ name: 'keep-one', schedule: '0 2 * * *', strategy: 'full', retention: { daily: 1 }, volumes: ['p'], target })
      const first = await g.runBackupPolicy('keep-one')
      const held = await writer.sendStopped({ op: 'backup', target, seed: 5, hold: true })
      // The volume did not change: the second backup names every chunk of the first it prunes.
      const second = await g.runBackupPolicy('keep-one')
      assert.deepEqual(second.pruned, [first.backups[0]?.id])
      assert.equal(second.collectionDeferred, false, `nothing the pruning would have deleted was left: ${(second.deferredReasons ?? []).join('; ')}`)
      assert.equal((await g.getBackupPolicy('keep-one')).lastResult?.collectionDeferred, false)

      const orphan = await plantOldChunk(target, 0x5a)
      const third = await g.runBackupPolicy('keep-one')
      assert.deepEqual(third.pruned, [second.backups[0]?.id])
      assert.equal(third.collectionDeferred, true)
      const stored = (await g.getBackupPolicy('keep-one')).lastResult
      assert.equal(stored?.collectionDeferred, true, 'the policy\'s last result says so (a scheduled run is seen there)')
      assert.equal(stored?.deferredReasons?.length, 1)
      assert.match(stored?.deferredReasons?.[0] ?? '', new RegExp(`process ${writerPid} on host `))
      writer.release()
      await held.reply
      const fourth = await g.runBackupPolicy('keep-one')
      assert.equal(fourth.collectionDeferred, false)
      assert.equal((await g.getBackupPolicy('keep-one')).lastResult?.deferredReasons, undefined)
      assert.equal((await storedChunks(target)).has(orphan), false)
    })
  })

  it('an unreadable manifest: deferred only when a chunk outside the grace period was left', async () => {
    const target = place()
    await withInstance(async (g) => {
      await writeVolume(g, 'x', 6)
      await writeVolume(g, 'y', 7)
      const x = await g.createBackup('x', { target })
      const y = await g.createBackup('y', { target })
      // A manifest of a later format (or damaged): its chunks are unknown, so none is deleted.
      await writeFile(join(target, 'manifests', `${randomUUID()}.json`), '{"format":99}')
      const errors: string[] = []
      g.on('io:error', (event) => { errors.push(event.message) })
      const fresh = await g.deleteBackup(x.id, { target })
      assert.equal(fresh.deletedChunks, 0)
      assert.equal(fresh.collectionDeferred, false, 'x\'s chunks are spared by the grace period anyway')
      assert.ok(errors.some((message) => /cannot read/.test(message)), 'the unreadable manifest is still reported')
      await plantOldChunk(target, 0x33)
      const old = await g.deleteBackup(y.id, { target })
      assert.equal(old.collectionDeferred, true)
      assert.match(old.deferredReason ?? '', /1 manifest\(s\) this version cannot read/)
    })
  })
})
