// Review r23 of af5df00 (the audit log's time index): verifyAuditLog run while entries are appended
// must not report tampering that did not happen; a time-index state altered to claim that entry
// times never went back (which makes queries by time skip entries) must be reported by
// verifyAuditLog; a write that fails while the index is rebuilt at open must stop the metadata
// database's writes as any other failed write does (src/level-write-latch.ts).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MemoryLevel } from 'memory-level'
import { ClassicLevel } from 'classic-level'
import { AuditLog, type AuditEntry } from '../src/access/audit-log.js'
import { latchLevelWrites } from '../src/level-write-latch.js'
import { GalleonError } from '../src/errors.js'

/** A memory-level or classic-level database (their sublevel and batch types do not unify). */
type Db = any
const T0 = Date.parse('2026-03-01T00:00:00Z')

async function fill (log: AuditLog, clock: { t: number }, count: number, prefix: string, step = 1000): Promise<void> {
  for (let i = 0; i < count; i++) {
    clock.t += step
    await log.append({ principal: 'application', action: 'createVolume', object: `volume:default/${prefix}${i}`, result: 'ok' })
  }
}

/** Every stored entry that parses, in log order, straight from the database. */
async function readRaw (db: Db): Promise<AuditEntry[]> {
  const out: AuditEntry[] = []
  for await (const [, value] of db.sublevel('audit', { valueEncoding: 'utf8' }).iterator()) {
    try { out.push(JSON.parse(value as string)) } catch {}
  }
  return out
}

describe('review r23: the audit log time index (af5df00)', () => {
  for (const backend of ['memory', 'disk'] as const) {
    it(`verifyAuditLog while entries are appended reports no tampering (${backend})`, async () => {
      const dir = backend === 'disk' ? await mkdtemp(join(tmpdir(), 'galleon-r23-')) : undefined
      const db: Db = dir === undefined ? new MemoryLevel<string, unknown>() : new ClassicLevel<string, unknown>(dir)
      try {
        await db.open()
        const clock = { t: T0 }
        const log = new AuditLog(db as never, () => clock.t)
        await log.load()
        // Several of verify's 256-entry turns, so that appends can land while it walks.
        await fill(log, clock, backend === 'memory' ? 3000 : 1200, 'v')
        const verifying = log.verify()
        const appends: Array<Promise<AuditEntry>> = []
        for (let i = 0; i < 5; i++) {
          await new Promise<void>((resolve) => { setImmediate(resolve) })
          clock.t += 1000
          appends.push(log.append({ principal: 'application', action: 'createSnapshot', object: `snapshot:default/v1@s${i}`, result: 'ok' }))
        }
        const verified = await verifying
        await Promise.all(appends)
        // Nothing was removed or altered: an appended entry is not "entries removed from the end".
        assert.deepEqual(verified.problems, [])
        assert.equal(verified.ok, true)
        const after = await log.verify()
        assert.equal(after.ok, true, JSON.stringify(after.problems))
        assert.equal(after.entries, (backend === 'memory' ? 3000 : 1200) + 5)
      } finally {
        await db.close()
        if (dir !== undefined) await rm(dir, { recursive: true, force: true })
      }
    })
  }

  it('a time-index state altered to say times never went back hides entries from queries by time: verifyAuditLog reports it', async () => {
    const db: Db = new MemoryLevel<string, unknown>()
    const clock = { t: T0 }
    let log = new AuditLog(db as never, () => clock.t)
    await log.load()
    await fill(log, clock, 10, 'a')
    // The clock steps back 6 s: b0..b2 fall in the same seconds as a4..a6.
    clock.t -= 6000
    await fill(log, clock, 10, 'b')
    const range = { from: T0 + 5000, to: T0 + 8000 }
    const expected = (await readRaw(db)).filter((e) => Date.parse(e.time) >= range.from && Date.parse(e.time) < range.to).map((e) => e.object)
    assert.deepEqual(expected, ['volume:default/a4', 'volume:default/a5', 'volume:default/a6', 'volume:default/b0', 'volume:default/b1', 'volume:default/b2'])
    assert.deepEqual((await log.query(range)).map((e) => e.object), expected)
    assert.equal((await log.verify()).ok, true)
    // Someone able to write the metadata database flips one flag of the index's state record; no
    // entry, no index key and no hash is touched.
    const stateRecord = db.sublevel('audit-index', { valueEncoding: 'utf8' })
    const state = JSON.parse(await stateRecord.get('time') as string)
    assert.equal(state.ordered, false)
    await stateRecord.put('time', JSON.stringify({ ...state, ordered: true }))
    log = new AuditLog(db as never, () => clock.t)
    await log.load()
    const answer = (await log.query(range)).map((e) => e.object)
    const verified = await log.verify()
    // The index may narrow what a query reads, never what it answers; when it does, verify says so.
    if (answer.length !== expected.length) {
      assert.equal(verified.ok, false, `queryAuditLog(${JSON.stringify(range)}) answered ${JSON.stringify(answer)} instead of ${JSON.stringify(expected)}, and verifyAuditLog() found nothing wrong`)
      assert.ok(verified.problems.some((p) => /time index/.test(p.problem)), JSON.stringify(verified.problems))
    }
  })

  it('after the clock went back, a query by time with a small limit does not collect every index key of its range', async () => {
    const db: Db = new MemoryLevel<string, unknown>()
    const clock = { t: T0 }
    const log = new AuditLog(db as never, () => clock.t)
    await log.load()
    // One step back of 5 ms (an NTP step) at the start: from then on the index serves every query by time.
    await fill(log, clock, 1, 'a', 10)
    await fill(log, clock, 1, 'b', -5)
    const N = 10_000
    await fill(log, clock, N, 'v')
    // Counts the keys walked in the audit-time sublevel (its keys() reaches the root's keys()).
    const prefix = String(db.sublevel('audit-time').prefix)
    const rootKeys = db.keys.bind(db)
    let walked = 0
    db.keys = (options: any) => {
      const iterator = rootKeys(options)
      if (!String(options?.gte ?? options?.gt ?? '').startsWith(prefix) && !String(options?.lt ?? options?.lte ?? '').startsWith(prefix)) return iterator
      const next = iterator.next.bind(iterator)
      iterator.next = async () => { const key = await next(); if (key !== undefined) walked++; return key }
      const nextv = iterator.nextv.bind(iterator)
      iterator.nextv = async (...a: unknown[]) => { const keys = await nextv(...a); walked += keys.length; return keys }
      return iterator
    }
    try {
      const answer = await log.query({ from: T0, limit: 10 })
      assert.deepEqual(answer.map((e) => e.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
      // Before the index: 10 entries read. With it: every key from T0 on (all N + 2), held in a
      // Set and sorted (200,000 entries: 41 MB of heap and 0.6 s of CPU for 10 answers).
      assert.ok(walked < N / 2, `a query answering 10 entries walked ${walked} index keys of ${N + 2}`)
    } finally {
      db.keys = rootKeys
    }
  })

  it('a write that fails while the time index is rebuilt at open stops the metadata database\'s writes', async () => {
    // memory-level with the classic-level failure injected where LevelDB's clear writes: its
    // WriteBatch of deletions goes through the same log as every other write.
    class FailingClear extends MemoryLevel<string, unknown> {
      failNextClear = false
      // abstract-level's private write hook for clear() (not in the typings).
      async _clear (options: unknown): Promise<void> {
        if (this.failNextClear) {
          this.failNextClear = false
          throw Object.assign(new Error('IO error: metadata/000005.log: Input/output error'), { code: 'LEVEL_IO_ERROR' })
        }
        await (MemoryLevel.prototype as any)._clear.call(this, options)
      }
    }
    const db = new FailingClear()
    await db.open()
    latchLevelWrites(db, 'the metadata database')
    const clock = { t: T0 }
    let log = new AuditLog(db as never, () => clock.t)
    await log.load()
    await fill(log, clock, 20, 'v')
    // An earlier build appends an entry (no index key): the next open rebuilds the index, clearing
    // the old keys first, and that write fails.
    const head = JSON.parse(await db.sublevel('audit-head', { valueEncoding: 'utf8' }).get('head') as string)
    const stateRecord = db.sublevel('audit-index', { valueEncoding: 'utf8' })
    await stateRecord.put('time', JSON.stringify({ ...JSON.parse(await stateRecord.get('time') as string), last: String(head.seq - 1).padStart(16, '0') }))
    db.failNextClear = true
    log = new AuditLog(db as never, () => clock.t)
    await log.load()
    assert.equal(db.failNextClear, false, 'the rebuild cleared the old index')
    // LevelDB's log may now hold a lost record: a later write would be acknowledged, then dropped
    // at the next open. Every other failed write stops them (h60); this one must too.
    await assert.rejects(log.append({ principal: 'application', action: 'createVolume', object: 'volume:default/after', result: 'ok' }),
      (err: unknown) => err instanceof GalleonError && err.code === 'IO_ERROR')
    await assert.rejects(db.put('after', 'x'), (err: unknown) => err instanceof GalleonError && err.code === 'IO_ERROR')
    await db.close()
  })
})
