// Review r30 of f82d7a8 (leases on backup targets, h69). Each test fails on f82d7a8:
// 1. a collection whose lease a backup took for dead (its process stopped, as a suspended VM) went
//    on deleting when it resumed, so the backup that took it for dead reported success without its
//    chunks (the backup side checks its own lease after its manifest; the collection never did);
// 2. a lease judged dead that changed before it was removed (its holder resumed in between) was
//    still not counted as live: the collection deleted the chunks of the running backup, which saw
//    its lease intact, did not check again and reported success;
// 3. a lease of another thread of the same process (worker_threads: same pid, its own copy of the
//    library) was judged dead at once ("its pid is ours and we do not hold it"): a backup in a
//    worker went past a collection of the main thread and reported success without its chunks;
// 4. the lease of a killed adoption ('adopt') was judged by nobody: it stayed for good, and with it
//    no .tmp- file was ever removed at open again; a killed backup's lease stayed until a deletion;
// 5. a deletion collected while an adoption (in another process) was rewriting the manifest it
//    deleted: the adoption then wrote it back, and a listed backup named collected chunks.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Worker } from 'node:worker_threads'
import { DirectoryBackupTarget } from '../backends/directory/index.js'
import { GalleonFS } from '../src/index.js'
import { ROOT, scriptArgs } from './support/child-script.js'
import { BLOCKS, BS, HOUR, REPLY_MS, assertWhole, exists, leaseFiles, sha, withInstance, withLeaseChildren, writeVolume, type LeaseChild } from './support/lease-children.js'
import { blockPattern } from './support/patterns.js'
import { until } from './support/wait.js'

let root: string
let count = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r30-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const place = (): string => join(root, String(count++))

/** Runs `task` with `n` children of test/support/review-r30-child.ts. */
const withChildren = async (n: number, task: (children: LeaseChild[]) => Promise<void>): Promise<void> => { await withLeaseChildren('test/support/review-r30-child.ts', n, task) }

/** Rewrites an encrypted backup's manifest as releases before manifest tags wrote it (to adopt). */
async function untag (target: string, id: string): Promise<void> {
  const file = join(target, 'manifests', `${id}.json`)
  const { tag, ...rest } = JSON.parse((await readFile(file)).toString()) as Record<string, unknown>
  assert.equal(typeof tag, 'string')
  await writeFile(file, JSON.stringify(rest) + '\n')
}

describe('review r30: backup target leases', { timeout: 120_000 }, () => {
  it('a collection whose lease was taken for dead while its process was stopped deletes nothing once it resumes', async () => {
    const target = place()
    await withChildren(1, async ([deleter]) => {
      const base = await deleter!.call({ op: 'backup', target, seed: 21 })
      await deleter!.stepped.step(2 * HOUR)
      // The collection runs (no backup lease on the target) and is about to look at its first chunk.
      const collecting = await deleter!.sendStopped({ op: 'delete', target, id: base.id, holdAt: 'chunkTime' })
      // Suspended: its lease stops changing; a backup here watches it, takes it for dead, removes it.
      deleter!.signal('SIGSTOP')
      await withInstance(async (g) => {
        const data = await writeVolume(g, 'same', 21)
        // The same data: it reuses the chunks the suspended collection is about to delete.
        const stored = await g.createBackup('same', { target })
        deleter!.signal('SIGCONT')
        deleter!.release()
        await collecting.reply
        await assertWhole(target, { id: stored.id, sha256: sha(data) })
      })
    })
  })

  it('a backup lease judged dead but rewritten before the collection removed it counts as live', async () => {
    const target = place()
    await withChildren(2, async ([writer, deleter]) => {
      const base = await writer!.call({ op: 'backup', target, seed: 22 })
      const held = await writer!.sendStopped({ op: 'backup', target, seed: 23, hold: true })
      writer!.signal('SIGSTOP')
      const [leaseName] = await leaseFiles(target)
      assert.ok(leaseName !== undefined, 'the held backup keeps a lease')
      const leasePath = join(target, 'leases', leaseName)
      const judged = await readFile(leasePath)
      await deleter!.stepped.step(2 * HOUR)
      // The deletion watched the stopped writer's lease long enough and is about to remove it.
      const deleting = await deleter!.sendStopped({ op: 'delete', target, id: base.id, holdAt: 'removeDead' })
      // The writer resumes just then: its lease is rewritten before the deletion removes it.
      writer!.signal('SIGCONT')
      await until('the resumed writer rewrote its lease', async () => !(await readFile(leasePath).catch(() => judged)).equals(judged))
      deleter!.release()
      const deleted = await deleting.reply
      writer!.release()
      await assertWhole(target, await held.reply)
      assert.equal(deleted.deletedChunks, 0, 'nothing is collected while the writer\'s backup runs (its lease changed before it could be removed: live)')
    })
  })

  it('a backup in a worker thread waits for a collection of the main thread (same pid, live) instead of taking it for dead', async () => {
    const target = place()
    const g = await GalleonFS.open({ inMemory: true })
    let worker: Worker | undefined
    let release = (): void => {}
    try {
      await writeVolume(g, 'base', 24)
      const base = await g.createBackup('base', { target })
      // The main thread's collection stops at its first chunk deletion.
      const gate = new Promise<void>((resolve) => { release = resolve })
      let holding = false
      class Held extends DirectoryBackupTarget {
        override async deleteChunk (id: string): Promise<void> {
          holding = true
          await gate
          await super.deleteChunk(id)
        }
      }
      const deleting = g.deleteBackup(base.id, { target: new Held({ path: target }), chunkGraceSeconds: 0 })
      deleting.catch(() => {})
      await until('the collection is deleting', () => holding)
      const [collectLease] = (await leaseFiles(target)).map((name) => name.slice(0, -5))
      assert.ok(collectLease !== undefined)
      // The worker backs up the same data (the chunk being collected).
      const messages: any[] = []
      // Transpiled (as child processes run), since a worker does not inherit tsx's loader.
      worker = new Worker(scriptArgs(join(ROOT, 'test/support/review-r30-worker.ts')).at(-1) as string, { workerData: { target, seed: 24 } })
      worker.on('message', (m) => { messages.push(m) })
      worker.on('error', (err) => { messages.push({ error: { code: 'ERROR', message: err.stack } }) })
      const settled = (): boolean => messages.some((m) => m.result !== undefined || m.error !== undefined)
      // Either it completes (took the collection for dead), or it reads the collection's lease a
      // second time: it is waiting for it.
      await until('the worker completes or waits for the collection', () => settled() || messages.filter((m) => m.event === 'round' && m.id === collectLease).length >= 2, REPLY_MS)
      release()
      await deleting
      await until('the worker answers', settled, REPLY_MS)
      const answer = messages.find((m) => m.result !== undefined || m.error !== undefined)
      assert.equal(answer.error, undefined, answer.error?.message)
      await assertWhole(target, answer.result)
    } finally {
      release() // (a failing test must not leave the collection stopped)
      await worker?.terminate()
      await g.close()
    }
  })

  it('the leases of a killed adoption and a killed backup hold neither collection nor .tmp- cleanup back for good', async () => {
    const target = place()
    await withChildren(2, async ([adopter, writer]) => {
      const sealed = await adopter!.call({ op: 'backup', target, seed: 25, encrypted: true })
      await untag(target, sealed.id)
      await adopter!.sendStopped({ op: 'adopt', target, id: sealed.id, hold: true })
      await adopter!.stepped.kill()
      assert.equal((await leaseFiles(target)).length, 1, 'the killed adoption left its lease')
      await withInstance(async (g) => {
        await writeVolume(g, 'v', 26)
        const doomed = await g.createBackup('v', { target })
        await g.deleteBackup(doomed.id, { target, chunkGraceSeconds: 0 })
        assert.deepEqual(await leaseFiles(target), [], 'a deletion removes the lease of the killed adoption (its process is gone)')
        // A backup killed between its chunks and its manifest; no deletion follows.
        await writer!.sendStopped({ op: 'backup', target, seed: 27, hold: true })
        await writer!.stepped.kill()
        assert.equal((await leaseFiles(target)).length, 1, 'the killed backup left its lease')
        await g.write('v', 0, blockPattern(BLOCKS, 28, BS))
        await g.createBackup('v', { target })
        assert.deepEqual(await leaseFiles(target), [], 'the next backup removes the lease of the killed one (its process is gone)')
        const leftover = join(target, 'manifests', '.tmp-leftover-0123456789ab')
        await writeFile(leftover, 'left by a crash')
        const old = new Date(Date.now() - 2 * HOUR)
        await utimes(leftover, old, old)
        await new DirectoryBackupTarget({ path: target }).open()
        assert.equal(await exists(leftover), false, 'a temporary file 2 h old is removed at open again')
      })
    })
  })

  it('a deletion while an adoption in another process rewrites the manifests leaves no listed backup naming missing chunks', async () => {
    const target = place()
    await withChildren(1, async ([adopter]) => {
      const sealed = await adopter!.call({ op: 'backup', target, seed: 29, encrypted: true })
      await untag(target, sealed.id)
      // Every chunk checked, the lease written: it stops before rewriting the manifest.
      const adopting = await adopter!.sendStopped({ op: 'adopt', target, id: sealed.id, hold: true })
      await withInstance(async (g) => {
        await g.deleteBackup(sealed.id, { target, chunkGraceSeconds: 0 })
        adopter!.release()
        await adopting.reply.catch(() => {})
        // (The key of the sealed volume is the adopter's: its chunks are looked for, not read.)
        for (const backup of await g.listBackups(undefined, { target })) {
          const { manifest } = JSON.parse((await readFile(join(target, 'manifests', `${backup.id}.json`))).toString()) as { manifest: { extents: Array<[number, number, string | null, number]> } }
          const missing = []
          for (const [, , chunk] of manifest.extents) if (chunk !== null && !await exists(join(target, 'chunks', chunk.slice(0, 2), chunk))) missing.push(chunk)
          assert.deepEqual(missing, [], `listed backup ${backup.id} names chunks that were collected`)
        }
      })
    })
  })
})
