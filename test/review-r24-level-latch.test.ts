// Review r24 of a505eaa (src/level-write-latch.ts): the latch wraps LevelDB's _put, _del and _batch
// so that after one write fails (an I/O error, a full disk) the database takes no more until it is
// reopened: LevelDB itself goes on appending to a log its next open cannot read past the failed
// record. classic-level has two more write paths of its own that reach LevelDB without those
// methods: clear() (its native _clear, which sublevels reach through the root's clear(); the audit
// log clears its time index at open and goes on if that fails; covered since 7722e17, and the
// first test failed before it: 20 of 20 acknowledged writes lost) and the chained batch
// (db.batch().put().write(), classic-level's native _write). A real classic-level on a small tmpfs (root only;
// skipped otherwise) is filled until a write fails, space is freed, and writes go on without a
// reopen: each must be refused, or be there after the reopen. Never acknowledged, then lost.

import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { open, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { tmpfs, unmountAll } from './support/tmpfs.js'
import { ClassicLevel } from 'classic-level'
import { latchLevelWrites } from '../src/level-write-latch.js'

const SYNC = { sync: true } as unknown as Record<string, never>

/** Fills the file system of `dir` with a file; resolves to a function that deletes it. */
async function fill (dir: string): Promise<() => Promise<void>> {
  const path = join(dir, 'filler')
  const filler = await open(path, 'w')
  const chunk = Buffer.alloc(4096)
  try {
    for (;;) await filler.write(chunk)
  } catch (err) {
    assert.equal((err as NodeJS.ErrnoException).code, 'ENOSPC')
  } finally {
    await filler.close()
  }
  return async () => { await rm(path) }
}

/** Durable puts after the failure, each refused or acknowledged; then the database is reopened: the acknowledged ones must be there. */
async function writesAfterFailure (db: ClassicLevel<string, string>, path: string, write: (key: string) => Promise<void>): Promise<{ refused: unknown, acknowledged: number }> {
  const acknowledged: string[] = []
  let refused: unknown
  for (let i = 0; i < 20; i++) {
    try {
      await write(`after-${i}`)
      acknowledged.push(`after-${i}`)
    } catch (err) {
      refused = err
      break
    }
  }
  await db.close()
  const reopened = new ClassicLevel<string, string>(path)
  await reopened.open()
  try {
    assert.equal(await reopened.get('before'), 'kept', 'a write from before the failure was lost')
    const lost = []
    for (const key of acknowledged) if (await reopened.get(key) === undefined) lost.push(key)
    assert.deepEqual(lost, [], `${lost.length} of ${acknowledged.length} writes acknowledged (sync) after the failed one were gone once the database was reopened`)
  } finally {
    await reopened.close()
  }
  return { refused, acknowledged: acknowledged.length }
}

describe('review r24: the LevelDB write latch covers every write path of classic-level', () => {
  let dir = ''
  let skip: string | undefined
  before(async () => {
    const mounted = await tmpfs('4m', 'galleon-r24-latch-')
    if ('skip' in mounted) skip = mounted.skip
    else dir = mounted.dir
  })
  after(unmountAll)

  it('a clear() of a sublevel that fails on a full disk stops later writes until reopen', async (t) => {
    if (skip !== undefined) { t.skip(skip); return }
    const path = join(dir, 'clear-db')
    const db = new ClassicLevel<string, string>(path)
    await db.open()
    latchLevelWrites(db, 'the test database')
    // An index of 20,000 keys, as the audit log's time index (audit-time) holds.
    const index = db.sublevel<string, string>('audit-time', { valueEncoding: 'utf8' })
    for (let b = 0; b < 20; b++) await index.batch(Array.from({ length: 1000 }, (_, i) => ({ type: 'put' as const, key: String(b * 1000 + i).padStart(8, '0'), value: '' })))
    await db.put('before', 'kept', SYNC)
    const free = await fill(dir)
    await assert.rejects(index.clear(), (err: unknown) => /space/i.test(String((err as Error).message)), 'the clear did not fail on the full disk')
    await free()
    const { refused } = await writesAfterFailure(db, path, async (key) => { await db.put(key, 'x'.repeat(100), SYNC) })
    assert.ok(refused !== undefined, 'writes went on after the failed clear')
    assert.equal((refused as { code?: string }).code, 'NO_SPACE', `refused with ${String(refused)}`)
    await rm(path, { recursive: true, force: true })
  })

  it('a chained batch after a write failed on a full disk is refused until reopen', async (t) => {
    if (skip !== undefined) { t.skip(skip); return }
    const path = join(dir, 'chained-db')
    const db = new ClassicLevel<string, string>(path)
    await db.open()
    latchLevelWrites(db, 'the test database')
    await db.put('before', 'kept', SYNC)
    const free = await fill(dir)
    await assert.rejects(db.put('failing', 'x'.repeat(64 * 1024), SYNC), (err: unknown) => (err as { code?: string }).code === 'NO_SPACE' || /space/i.test(String(err)), 'the put did not fail on the full disk')
    await free()
    const { refused } = await writesAfterFailure(db, path, async (key) => { await db.batch().put(key, 'x'.repeat(100)).write(SYNC) })
    assert.ok(refused !== undefined, 'chained batches went on after the failed write')
    assert.equal((refused as { code?: string }).code, 'NO_SPACE', `refused with ${String(refused)}`)
    await rm(path, { recursive: true, force: true })
  })
})
