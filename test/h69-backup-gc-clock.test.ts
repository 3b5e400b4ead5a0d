// h69: a backup target's garbage collection when the wall clock steps forward (NTP, a resumed VM).
// deleteBackup spares unnamed chunks put or reused within chunkGraceSeconds by comparing their
// file times with the wall clock: after a step of 2 h, the chunks of a backup that is between its
// chunks and its manifest (in another process, or another instance of the same one) looked old and
// were deleted, and the backup then reported success naming chunks that were gone. Likewise an
// open removed a `.tmp-` file of a put still in flight. Children with a stepped Date
// (test/support/h65-clock-preload.ts) hold a backup or a collection at the worst point while the
// other side runs; the fix (in-progress leases on the target, src/backup/leases.ts) must keep every
// backup that reports success whole. The first five tests fail without it (each backup reported
// success and then did not verify: chunks missing); the last one checks that a killed writer's
// lease does not hold collection back for good.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { HOUR, assertWhole, exists, leaseFiles, sha, withInstance, withLeaseChildren, writeVolume, type LeaseChild } from './support/lease-children.js'
import { until } from './support/wait.js'

let root: string
let count = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-h69-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const place = (): string => join(root, String(count++))

/** Runs `task` with `n` children of test/support/h69-child.ts. */
const withChildren = async (n: number, task: (children: LeaseChild[]) => Promise<void>): Promise<void> => { await withLeaseChildren('test/support/h69-child.ts', n, task) }

describe('h69: backup garbage collection across wall-clock steps', { timeout: 120_000 }, () => {
  it('a deletion in another process whose clock stepped 2 h forward spares the chunks and in-flight .tmp- file of a backup held before its manifest', async () => {
    const target = place()
    await withChildren(2, async ([writer, deleter]) => {
      const base = await writer!.call({ op: 'backup', target, seed: 1 })
      const held = await writer!.sendStopped({ op: 'backup', target, seed: 2, hold: true })
      // A put of the held backup still in flight (its temporary file is not renamed yet).
      const inFlight = join(target, 'manifests', '.tmp-00000000-0000-4000-8000-000000000000.json-0123456789ab')
      await writeFile(inFlight, 'in flight')
      await deleter!.stepped.step(2 * HOUR)
      const deleted = await deleter!.call({ op: 'delete', target, id: base.id })
      const inFlightLeft = await exists(inFlight)
      writer!.release()
      await assertWhole(target, await held.reply)
      assert.deepEqual(deleted.deletedBackups, [base.id])
      assert.equal(deleted.deletedChunks, 0, 'no chunk is collected while a backup is being taken on the target (a later deletion collects them)')
      assert.equal(inFlightLeft, true, 'the temporary file of a put in flight is left alone')
    })
  })

  it('the same, with the deletion made by another instance of the same process after the step', async () => {
    const target = place()
    await withChildren(1, async ([child]) => {
      const base = await child!.call({ op: 'backup', instance: 0, target, seed: 3 })
      const held = await child!.sendStopped({ op: 'backup', instance: 0, target, seed: 4, hold: true })
      await child!.stepped.step(2 * HOUR)
      const deleted = await child!.call({ op: 'delete', instance: 1, target, id: base.id })
      child!.release()
      await assertWhole(target, await held.reply)
      assert.deepEqual(deleted.deletedBackups, [base.id])
      assert.equal(deleted.deletedChunks, 0)
    })
  })

  it('a backup started while a deletion (clock 2 h ahead) collects the chunks it reuses waits for the collection, and stores them again', async () => {
    const target = place()
    await withChildren(1, async ([deleter]) => {
      const base = await deleter!.call({ op: 'backup', target, seed: 5 })
      await deleter!.stepped.step(2 * HOUR)
      const collecting = await deleter!.sendStopped({ op: 'delete', target, id: base.id, holdAt: 'deleteChunk' })
      // This process (clock not stepped) backs up the same data: its chunks are the ones being collected.
      await withInstance(async (g) => {
        const data = await writeVolume(g, 'same', 5)
        let settled = false
        const backup = g.createBackup('same', { target }).finally(() => { settled = true })
        backup.catch(() => {})
        // Either it completes at once (reusing the chunks the collection is about to delete), or it
        // waits for the collection with its own lease on the target beside the collection's.
        await until('the backup completes or waits beside the collection', async () => settled || (await leaseFiles(target)).length >= 2)
        deleter!.release()
        const deleted = await collecting.reply
        assert.deepEqual(deleted.deletedBackups, [base.id])
        assert.ok(deleted.deletedChunks >= 1)
        const stored = await backup
        await assertWhole(target, { id: stored.id, sha256: sha(data) })
      })
    })
  })

  it('a backup stored while a deletion (clock 2 h ahead) was between reading the manifests and collecting keeps its chunks', async () => {
    const target = place()
    await withChildren(1, async ([deleter]) => {
      const base = await deleter!.call({ op: 'backup', target, seed: 10 })
      await deleter!.stepped.step(2 * HOUR)
      // The deletion has read the manifests there and stops at removing the one it deletes.
      const deleting = await deleter!.sendStopped({ op: 'delete', target, id: base.id, holdAt: 'deleteManifest' })
      await withInstance(async (g) => {
        const data = await writeVolume(g, 'late', 11)
        // Taken whole meanwhile (no collection runs yet): its manifest is one the deletion did not read.
        const stored = await g.createBackup('late', { target })
        deleter!.release()
        assert.deepEqual((await deleting.reply).deletedBackups, [base.id])
        await assertWhole(target, { id: stored.id, sha256: sha(data) })
      })
    })
  })

  it('a backup whose process was stopped before its manifest (its lease judged dead, its chunks collected) fails with BUSY instead of reporting success', async () => {
    const target = place()
    await withChildren(2, async ([writer, deleter]) => {
      const base = await writer!.call({ op: 'backup', target, seed: 6 })
      const held = await writer!.sendStopped({ op: 'backup', target, seed: 7, hold: true })
      // As a VM suspended for hours: the writer stops, and the clock elsewhere is 2 h on when it resumes.
      writer!.signal('SIGSTOP')
      await deleter!.stepped.step(2 * HOUR)
      const deleted = await deleter!.call({ op: 'delete', target, id: base.id })
      assert.ok(deleted.deletedChunks > base.chunks, `the stopped writer's lease is judged dead and its chunks collected (deleted ${deleted.deletedChunks}, the deleted backup had ${base.chunks})`)
      writer!.signal('SIGCONT')
      writer!.release()
      await assert.rejects(held.reply, (err: Error & { code?: string }) => err.code === 'BUSY' && /deleted/.test(err.message))
      await withInstance(async (g) => {
        assert.deepEqual(await g.listBackups(undefined, { target }), [], 'no backup naming collected chunks is left listed')
      })
    })
  })

  it('the lease of a killed writer does not hold collection back, and temporary files are removed again once no lease is left', async () => {
    const target = place()
    await withChildren(2, async ([writer, deleter]) => {
      const base = await writer!.call({ op: 'backup', target, seed: 8 })
      await writer!.sendStopped({ op: 'backup', target, seed: 9, hold: true })
      await writer!.stepped.kill()
      const leftover = join(target, 'manifests', '.tmp-leftover-0123456789ab')
      await writeFile(leftover, 'left by a crash')
      await deleter!.stepped.step(2 * HOUR)
      const deleted = await deleter!.call({ op: 'delete', target, id: base.id })
      assert.ok(deleted.deletedChunks > base.chunks, `the killed writer's chunks are collected too (deleted ${deleted.deletedChunks}, the deleted backup had ${base.chunks})`)
      assert.deepEqual(await leaseFiles(target), [], 'its lease is removed')
      await deleter!.call({ op: 'open', target })
      assert.equal(await exists(leftover), false, 'a leftover temporary file 2 h old is removed at open')
    })
  })
})
