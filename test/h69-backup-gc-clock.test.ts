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
import { createHash } from 'node:crypto'
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { startStepped, type SteppedChild } from './support/h65-child.js'
import { blockPattern } from './support/patterns.js'
import { until } from './support/wait.js'

const HOUR = 3_600_000
const BS = 4096
const BLOCKS = 32
const REPLY_MS = 45_000

let root: string
let count = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-h69-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const place = (): string => join(root, String(count++))

interface Reply { rid: number, result?: any, error?: { code: string, message: string } }

/** A child of test/support/h69-child.ts, answering requests over IPC. */
class Child {
  #rid = 0
  constructor (readonly stepped: SteppedChild) {}

  static async start (): Promise<Child> {
    const child = new Child(startStepped('test/support/h69-child.ts', []))
    await child.stepped.next('the child is ready', (m) => typeof m?.ready === 'number', REPLY_MS)
    return child
  }

  /** Sends a request; `reply` resolves with its answer (an error answer rejects, with its code). */
  send (request: Record<string, unknown>): { rid: number, reply: Promise<any> } {
    const rid = ++this.#rid
    this.stepped.process.send({ rid, ...request })
    const reply = this.stepped.next<Reply>(`the child answered ${String(request.op)} #${rid}`, (m) => m?.rid === rid && m?.event === undefined, REPLY_MS).then((m) => {
      if (m.error !== undefined) throw Object.assign(new Error(`${String(request.op)} failed in the child: ${m.error.message}`), { code: m.error.code })
      return m.result
    })
    reply.catch(() => {}) // awaited by the test; not an unhandled rejection meanwhile
    return { rid, reply }
  }

  async call (request: Record<string, unknown>): Promise<any> { return await this.send(request).reply }
  async event (name: string, rid: number): Promise<void> { await this.stepped.next(`the child said ${name}`, (m) => m?.event === name && m?.rid === rid, REPLY_MS) }
  release (): void { this.stepped.process.send({ op: 'release' }) }
}

async function withChildren (n: number, task: (children: Child[]) => Promise<void>): Promise<void> {
  const children: Child[] = []
  try {
    for (let i = 0; i < n; i++) children.push(await Child.start())
    await task(children)
  } finally {
    for (const child of children) {
      try { child.stepped.process.kill('SIGCONT') } catch {}
      await child.stepped.kill()
    }
  }
}

/** Asserts that backup `held` on `target` verifies and restores the data it was taken of. */
async function assertWhole (target: string, held: { id: string, sha256: string }): Promise<void> {
  const g = await GalleonFS.open({ inMemory: true })
  try {
    const verification = await g.verifyBackup(held.id, { target })
    assert.equal(verification.ok, true, `backup ${held.id} reported success, so it must verify: ${JSON.stringify(verification.problems)}`)
    const restored = await g.restoreBackup(held.id, { name: 'restored', target })
    const data = await g.read(restored.id, 0, BLOCKS * BS)
    assert.equal(createHash('sha256').update(data).digest('hex'), held.sha256, 'the restore reads back what was backed up')
  } finally {
    await g.close()
  }
}

const exists = async (path: string): Promise<boolean> => await stat(path).then(() => true, () => false)
const leaseFiles = async (target: string): Promise<string[]> => (await readdir(join(target, 'leases')).catch(() => [] as string[])).filter((name) => name.endsWith('.json'))

describe('h69: backup garbage collection across wall-clock steps', { timeout: 120_000 }, () => {
  it('a deletion in another process whose clock stepped 2 h forward spares the chunks and in-flight .tmp- file of a backup held before its manifest', async () => {
    const target = place()
    await withChildren(2, async ([writer, deleter]) => {
      const base = await writer!.call({ op: 'backup', target, seed: 1 })
      const held = writer!.send({ op: 'backup', target, seed: 2, hold: true })
      await writer!.event('held', held.rid)
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
      const held = child!.send({ op: 'backup', instance: 0, target, seed: 4, hold: true })
      await child!.event('held', held.rid)
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
      const collecting = deleter!.send({ op: 'delete', target, id: base.id, holdAt: 'deleteChunk' })
      await deleter!.event('holding', collecting.rid)
      // This process (clock not stepped) backs up the same data: its chunks are the ones being collected.
      const g = await GalleonFS.open({ inMemory: true })
      try {
        const data = blockPattern(BLOCKS, 5, BS)
        await g.createVolume({ name: 'same', sizeBytes: BLOCKS * BS })
        await g.write('same', 0, data)
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
        await assertWhole(target, { id: stored.id, sha256: createHash('sha256').update(data).digest('hex') })
      } finally {
        await g.close()
      }
    })
  })

  it('a backup stored while a deletion (clock 2 h ahead) was between reading the manifests and collecting keeps its chunks', async () => {
    const target = place()
    await withChildren(1, async ([deleter]) => {
      const base = await deleter!.call({ op: 'backup', target, seed: 10 })
      await deleter!.stepped.step(2 * HOUR)
      // The deletion has read the manifests there and stops at removing the one it deletes.
      const deleting = deleter!.send({ op: 'delete', target, id: base.id, holdAt: 'deleteManifest' })
      await deleter!.event('holding', deleting.rid)
      const g = await GalleonFS.open({ inMemory: true })
      try {
        const data = blockPattern(BLOCKS, 11, BS)
        await g.createVolume({ name: 'late', sizeBytes: BLOCKS * BS })
        await g.write('late', 0, data)
        // Taken whole meanwhile (no collection runs yet): its manifest is one the deletion did not read.
        const stored = await g.createBackup('late', { target })
        deleter!.release()
        assert.deepEqual((await deleting.reply).deletedBackups, [base.id])
        await assertWhole(target, { id: stored.id, sha256: createHash('sha256').update(data).digest('hex') })
      } finally {
        await g.close()
      }
    })
  })

  it('a backup whose process was stopped before its manifest (its lease judged dead, its chunks collected) fails with BUSY instead of reporting success', async () => {
    const target = place()
    await withChildren(2, async ([writer, deleter]) => {
      const base = await writer!.call({ op: 'backup', target, seed: 6 })
      const held = writer!.send({ op: 'backup', target, seed: 7, hold: true })
      await writer!.event('held', held.rid)
      // As a VM suspended for hours: the writer stops, and the clock elsewhere is 2 h on when it resumes.
      writer!.stepped.process.kill('SIGSTOP')
      await deleter!.stepped.step(2 * HOUR)
      const deleted = await deleter!.call({ op: 'delete', target, id: base.id })
      assert.ok(deleted.deletedChunks > base.chunks, `the stopped writer's lease is judged dead and its chunks collected (deleted ${deleted.deletedChunks}, the deleted backup had ${base.chunks})`)
      writer!.stepped.process.kill('SIGCONT')
      writer!.release()
      await assert.rejects(held.reply, (err: Error & { code?: string }) => err.code === 'BUSY' && /deleted/.test(err.message))
      const g = await GalleonFS.open({ inMemory: true })
      try {
        assert.deepEqual(await g.listBackups(undefined, { target }), [], 'no backup naming collected chunks is left listed')
      } finally {
        await g.close()
      }
    })
  })

  it('the lease of a killed writer does not hold collection back, and temporary files are removed again once no lease is left', async () => {
    const target = place()
    await withChildren(2, async ([writer, deleter]) => {
      const base = await writer!.call({ op: 'backup', target, seed: 8 })
      const held = writer!.send({ op: 'backup', target, seed: 9, hold: true })
      await writer!.event('held', held.rid)
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
