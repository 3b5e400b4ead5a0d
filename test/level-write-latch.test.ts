// The write latch of LevelDB databases (src/level-write-latch.ts): once a write fails with an I/O
// error, no later write is taken, and a write that was in flight when another failed is not
// acknowledged either (LevelDB may have appended it after the failed record, where its next open
// cannot read it). Failures are injected into a memory-level database's private write method.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { MemoryLevel } from 'memory-level'
import { latchLevelWrites } from '../src/level-write-latch.js'

/**
 * A database whose `_put`s wait for `release`: then key 'fail' fails as LevelDB's log write would,
 * and the others are written a turn of the event loop later.
 */
function failingDatabase (): { db: MemoryLevel<string, string>, release: () => void } {
  const db = new MemoryLevel<string, string>()
  const put = (db as unknown as { _put: (...args: unknown[]) => Promise<void> })._put.bind(db)
  let release = (): void => {}
  const held = new Promise<void>((resolve) => { release = resolve })
  ;(db as unknown as { _put: (...args: unknown[]) => Promise<void> })._put = async (key: unknown, ...rest: unknown[]) => {
    await held
    if (String(key) === 'fail') throw Object.assign(new Error('IO error: write failed: Input/output error'), { code: 'LEVEL_IO_ERROR' })
    await new Promise((resolve) => setImmediate(resolve))
    await put(key, ...rest)
  }
  return { db, release }
}

describe('LevelDB write latch', () => {
  it('refuses every write after one failed with an I/O error, until the database is opened again', async () => {
    const { db, release } = failingDatabase()
    await db.open()
    latchLevelWrites(db, 'the test database')
    release()
    await assert.rejects(db.put('fail', 'x'), (err: Error & { code?: string }) => err.code === 'IO_ERROR' && /the test database/.test(err.message))
    await assert.rejects(db.put('a', '1'), (err: Error & { code?: string }) => err.code === 'IO_ERROR' && /reopen/.test(err.message))
    await assert.rejects(db.batch([{ type: 'put', key: 'b', value: '2' }]), { code: 'IO_ERROR' })
    await assert.rejects(db.del('a'), { code: 'IO_ERROR' })
    await db.close()
    await db.open()
    await db.put('a', '1')
    assert.equal(await db.get('a'), '1')
    await db.close()
  })

  it('stops writes after an EIO from below LevelDB too (a failed sync of its directory)', async () => {
    const db = new MemoryLevel<string, string>()
    await db.open()
    const put = (db as unknown as { _put: (...args: unknown[]) => Promise<void> })._put.bind(db)
    ;(db as unknown as { _put: (...args: unknown[]) => Promise<void> })._put = async (key: unknown, ...rest: unknown[]) => {
      await put(key, ...rest)
      if (String(key) === 'synced') throw Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO', errno: -5, syscall: 'fsync' })
    }
    latchLevelWrites(db, 'the test database')
    await assert.rejects(db.put('synced', 'x'), { code: 'IO_ERROR' })
    await assert.rejects(db.put('later', 'y'), (err: Error & { code?: string }) => err.code === 'IO_ERROR' && /reopen/.test(err.message))
    await db.close()
  })

  it('does not acknowledge a write that was in flight when another one failed', async () => {
    const { db, release } = failingDatabase()
    await db.open()
    latchLevelWrites(db, 'the test database')
    const failing = db.put('fail', 'x')
    // In flight together: this one completes only after the failure is known.
    const inFlight = db.put('k', 'v')
    const outcome = Promise.allSettled([failing, inFlight])
    release()
    const [first, second] = await outcome
    assert.equal(first.status, 'rejected')
    assert.equal(second.status, 'rejected', 'a write in flight when another failed was acknowledged')
    assert.equal(((second as PromiseRejectedResult).reason as { code?: string }).code, 'IO_ERROR')
    await db.close()
  })
})
