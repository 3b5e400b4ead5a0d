// h62: the audit log's time index. A query by time reads the entries it answers with (plus one on
// each side), not the whole log; it answers exactly what a read of the whole log would, with the
// clock in order or after it went back, with damaged entries, and with an index that was altered; a
// log written before the index existed (or appended to by such a build since) is indexed at open,
// and a crash in the middle of that leaves nothing that a later open trusts; verify does not look at
// the index. The reference answers come from the stored entries themselves (readRaw).
//
// Run as a child (H62_AUDIT_CHILD set), this file builds the index of the log at H62_AUDIT_DB and
// SIGKILLs itself at the step H62_AUDIT_KILL names.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { cp, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { MemoryLevel } from 'memory-level'
import { ClassicLevel } from 'classic-level'
import { scriptArgs } from './support/child-script.js'
import { AuditLog, type AuditEntry, type AuditQuery } from '../src/access/audit-log.js'

/** A memory-level or classic-level database (their sublevel and batch types do not unify). */
type Db = any
const T0 = Date.parse('2026-03-01T00:00:00Z')
const key = (seq: number): string => String(seq).padStart(16, '0')

/** Counts the records read from the `audit` sublevel of `db` (gets, getMany keys, iterator items). */
function countReads (db: Db): { reads: number } {
  const counter = { reads: 0 }
  const probe = db.sublevel('audit') as any
  const proto = Object.getPrototypeOf(probe)
  const ours = (sub: any): boolean => sub.db === db && sub.prefix === probe.prefix
  const { iterator, getMany, get } = proto
  const own = ['iterator', 'getMany', 'get'].filter((name) => Object.hasOwn(proto, name))
  proto.iterator = function (this: any, ...args: unknown[]) {
    const it = iterator.apply(this, args)
    if (!ours(this)) return it
    const next = it.next.bind(it)
    it.next = async () => { const item = await next(); if (item !== undefined) counter.reads++; return item }
    const nextv = it.nextv.bind(it)
    it.nextv = async (...a: unknown[]) => { const items = await nextv(...a); counter.reads += items.length; return items }
    const all = it.all.bind(it)
    it.all = async (...a: unknown[]) => { const items = await all(...a); counter.reads += items.length; return items }
    return it
  }
  proto.getMany = async function (this: any, keys: unknown[], ...args: unknown[]) { if (ours(this)) counter.reads += keys.length; return await getMany.call(this, keys, ...args) }
  proto.get = async function (this: any, ...args: unknown[]) { if (ours(this)) counter.reads++; return await get.apply(this, args) }
  restore.push(() => {
    for (const [name, original] of [['iterator', iterator], ['getMany', getMany], ['get', get]] as const) {
      if (own.includes(name)) proto[name] = original
      else delete proto[name]
    }
  })
  return counter
}
const restore: Array<() => void> = []
const unpatch = (): void => { for (const undo of restore.splice(0)) undo() }

/** Every stored entry that parses, in log order, straight from the database. */
async function readRaw (db: Db): Promise<AuditEntry[]> {
  const out: AuditEntry[] = []
  for await (const [, value] of db.sublevel('audit', { valueEncoding: 'utf8' }).iterator()) {
    try {
      const entry = JSON.parse(value as string)
      if (entry !== null && typeof entry === 'object' && Number.isSafeInteger(entry.seq) && typeof entry.hash === 'string' && typeof entry.prev === 'string' && typeof entry.time === 'string' && typeof entry.object === 'string') out.push(entry)
    } catch {}
  }
  return out
}

/** What a query must answer, computed from all the entries. */
function expectedAnswer (all: AuditEntry[], query: AuditQuery): number[] {
  const ms = (v: AuditQuery['from']): number | undefined => v === undefined ? undefined : v instanceof Date ? v.getTime() : typeof v === 'number' ? v : Date.parse(v)
  const from = ms(query.from)
  const to = ms(query.to)
  return all.filter((e) => {
    const time = Date.parse(e.time)
    if ((from !== undefined || to !== undefined) && !Number.isFinite(time)) return false
    return (from === undefined || time >= from) && (to === undefined || time < to) &&
      (query.principal === undefined || e.principal === query.principal) && (query.object === undefined || e.object === query.object)
  }).slice(0, query.limit ?? 1000).map((e) => e.seq)
}

/** A small deterministic generator (the seed is in the test name). */
function random (seed: number): () => number {
  let s = seed >>> 0
  return () => { s = (s * 1664525 + 1013904223) >>> 0; return s / 2 ** 32 }
}

/** Appends `count` entries, the clock moving by `step(i)` ms before each. */
async function fill (log: AuditLog, clock: { t: number }, count: number, step: (i: number) => number = () => 1000): Promise<void> {
  for (let i = 0; i < count; i++) {
    clock.t += step(i)
    await log.append({ principal: i % 3 === 0 ? 'user:alice' : 'application', action: 'createVolume', object: `volume:default/v${i}`, result: 'ok' })
  }
}

/** Compares many random queries with what the entries say; returns how many were asked. */
async function compareQueries (log: AuditLog, db: Db, seed: number, trials = 60): Promise<void> {
  const all = await readRaw(db)
  const times = all.map((e) => Date.parse(e.time)).filter(Number.isFinite)
  const lo = Math.min(...times) - 5000
  const hi = Math.max(...times) + 5000
  const next = random(seed)
  for (let i = 0; i < trials; i++) {
    const pick = (): number => Math.floor(lo + next() * (hi - lo))
    const a = pick()
    const b = pick()
    const shape = i % 6
    const query: AuditQuery = {
      ...(shape !== 1 ? { from: shape === 3 ? new Date(Math.min(a, b)) : Math.min(a, b) } : {}),
      ...(shape !== 0 ? { to: shape === 4 ? new Date(Math.max(a, b)).toISOString() : Math.max(a, b) } : {}),
      ...(shape === 5 ? { principal: 'user:alice' } : {}),
      ...(i % 4 === 0 ? { limit: 1 + Math.floor(next() * 40) } : {})
    }
    assert.deepEqual((await log.query(query)).map((e) => e.seq), expectedAnswer(all, query), `query ${JSON.stringify(query)} (seed ${seed}, trial ${i})`)
  }
}

/** Makes the log at `db` look as builds before the index left it (same entries, same head). */
async function dropIndex (db: Db): Promise<void> {
  await db.sublevel('audit-time').clear()
  await db.sublevel('audit-index').clear()
}

/** Appends an entry the way builds before the time index did: the entry and the head, nothing else. */
async function appendAsOldBuild (db: Db, time: number, object: string): Promise<void> {
  const head = JSON.parse(await db.sublevel('audit-head', { valueEncoding: 'utf8' }).get('head') as string) as { seq: number, hash: string }
  const body = { principal: 'application', action: 'createVolume', object, result: 'ok', seq: head.seq + 1, time: new Date(time).toISOString(), prev: head.hash } as const
  const canonical = JSON.stringify([body.seq, body.time, body.principal, [], [], body.action, null, body.object, body.result, null, null, body.prev])
  const hash = createHash('sha256').update(canonical).digest('hex')
  await db.batch([
    { type: 'put', sublevel: db.sublevel('audit', { valueEncoding: 'json' }), key: key(body.seq), value: { ...body, hash } },
    { type: 'put', sublevel: db.sublevel('audit-head', { valueEncoding: 'json' }), key: 'head', value: { seq: body.seq, hash } }
  ] as any)
}

async function childMain (): Promise<void> {
  const db = new ClassicLevel<string, unknown>(process.env.H62_AUDIT_DB as string)
  await db.open()
  const kill = process.env.H62_AUDIT_KILL as string
  let batches = 0
  const sublevel = db.sublevel.bind(db)
  ;(db as any).sublevel = (name: string, options: unknown) => {
    const sub = sublevel(name, options as never) as any
    if (name === 'audit-time') {
      const batch = sub.batch.bind(sub)
      sub.batch = async (...args: unknown[]) => {
        if (kill === `before-batch-${batches}`) process.kill(process.pid, 'SIGKILL')
        const done = await batch(...args)
        batches++
        return done
      }
      const clear = sub.clear.bind(sub)
      sub.clear = async (...args: unknown[]) => {
        if (kill === 'before-clear') process.kill(process.pid, 'SIGKILL')
        return await clear(...args)
      }
    }
    if (name === 'audit-index') {
      const put = sub.put.bind(sub)
      sub.put = async (...args: unknown[]) => {
        if (kill === 'before-state') process.kill(process.pid, 'SIGKILL')
        return await put(...args)
      }
    }
    return sub
  }
  const log = new AuditLog(db as never, () => Date.now())
  await log.load()
  process.stdout.write('built\n')
  await db.close()
}

if (process.env.H62_AUDIT_CHILD !== undefined) {
  await childMain()
} else {
  describe('h62: the audit log\'s time index', () => {
    it('a query by time reads the entries it answers with, not the whole log', async () => {
      const db = new MemoryLevel<string, unknown>()
      const clock = { t: T0 }
      const log = new AuditLog(db as never, () => clock.t)
      await log.load()
      const N = 3000
      await fill(log, clock, N)
      const all = await readRaw(db)
      const counter = countReads(db)
      try {
        const cases: Array<[AuditQuery, number]> = [
          [{ from: T0 + (N - 49) * 1000 }, 50], // the last 50
          [{ from: T0 + 1000 * 1000, to: T0 + 1020 * 1000 }, 20], // 20 in the middle
          [{ to: T0 + 31 * 1000 }, 30], // the first 30
          [{ from: T0 + (N + 10) * 1000 }, 0] // after the end
        ]
        for (const [query, count] of cases) {
          counter.reads = 0
          const answer = await log.query(query)
          assert.deepEqual(answer.map((e) => e.seq), expectedAnswer(all, query))
          assert.equal(answer.length, count)
          // The entries answered with, the one before the first (the check of the seek) and the one
          // after the last (where the range ends). Before the index: all N, for every query.
          assert.ok(counter.reads <= count + 2, `query ${JSON.stringify(query)} answering ${count} entries read ${counter.reads} of the log's ${N}`)
        }
      } finally {
        unpatch()
      }
    })

    it('a query answering many entries gives the event loop turns', async () => {
      const db = new MemoryLevel<string, unknown>()
      const clock = { t: T0 }
      const log = new AuditLog(db as never, () => clock.t)
      await log.load()
      await fill(log, clock, 3000)
      for (const query of [{ limit: 3000 }, { from: T0, limit: 3000 }]) {
        let finished = false
        let turned: boolean | undefined
        setImmediate(() => { turned = !finished })
        const answer = await log.query(query)
        finished = true
        assert.equal(answer.length, 3000)
        // Before: memory-level's iterator never yields, so a query of 40,000 entries held the loop 120 ms.
        assert.equal(turned, true, `query ${JSON.stringify(query)} of 3000 entries held the event loop throughout`)
      }
    })

    for (const seed of [1, 2, 3]) {
      it(`answers as a read of the whole log would: clock in order, clock set back, damaged entries, altered index (seed ${seed})`, async () => {
        const db = new MemoryLevel<string, unknown>()
        const clock = { t: T0 }
        const log = new AuditLog(db as never, () => clock.t)
        await log.load()
        const next = random(seed)
        // In order, with runs of equal times.
        await fill(log, clock, 400, () => Math.floor(next() * 3) * 500)
        await compareQueries(log, db, seed)
        // Damaged entries (an altered record; not JSON; an unreadable time) match no time range.
        const text = db.sublevel('audit', { valueEncoding: 'utf8' })
        await text.put(key(17), '{not json')
        await text.put(key(18), 'null')
        const nineteen = JSON.parse(await text.get(key(19)) as string)
        await text.put(key(19), JSON.stringify({ ...nineteen, time: 'yesterday' }))
        await compareQueries(log, db, seed + 100)
        // An index altered under the instance: keys removed (the first in a range among them) and
        // keys added pointing at wrong entries. Answers come from the entries, so they do not change;
        // verify reports what was altered.
        const index = db.sublevel('audit-time', { valueEncoding: 'utf8' })
        const keys = await index.keys().all()
        const removed = new Set<number>()
        for (let i = 0; i < keys.length; i += 7) {
          await index.del(keys[i] as string)
          removed.add(Number.parseInt((keys[i] as string).slice(17), 10))
        }
        await index.put(String(T0 + 8.64e15 + 50_000).padStart(17, '0') + key(390), '')
        await index.put(String(T0 + 8.64e15 + 90_000).padStart(17, '0') + key(3), '')
        await compareQueries(log, db, seed + 200)
        const altered = await log.verify()
        const indexProblems = altered.problems.filter((p) => /time index/.test(p.problem))
        assert.deepEqual(new Set(indexProblems.map((p) => p.seq)), new Set([...removed, 390, 3].filter((seq) => seq < 17 || seq > 19)), JSON.stringify(indexProblems.slice(0, 5)))
        // An index without its state record is built again at the next open.
        await db.sublevel('audit-index').clear()
        const reopened = new AuditLog(db as never, () => clock.t)
        await reopened.load()
        assert.deepEqual((await reopened.verify()).problems.filter((p) => /time index/.test(p.problem)), [])
        // The clock goes back: from here queries use the index's list of entries in the range.
        clock.t -= 60_000
        await fill(reopened, clock, 300, () => Math.floor(next() * 4) * 400)
        await compareQueries(reopened, db, seed + 300)
        // Verify does not consult the index for the chain: it says what was altered, the index nothing.
        const verified = await reopened.verify()
        assert.deepEqual([...new Set(verified.problems.map((p) => p.seq))].sort((a, b) => a - b), [17, 18, 19])
        // An index key removed now would hide its entry from queries by time: verify says which.
        const someKey = (await index.keys({ gte: String(T0 + 8.64e15 + 1).padStart(17, '0'), limit: 1 }).all())[0] as string
        await index.del(someKey)
        const hidden = (await reopened.verify()).problems.filter((p) => /missing from the time index/.test(p.problem))
        assert.deepEqual(hidden.map((p) => p.seq), [Number.parseInt(someKey.slice(17), 10)])
      })
    }

    it('a log written before the index, and one an earlier build appended to since, is indexed at open and answers the same', async () => {
      const db = new MemoryLevel<string, unknown>()
      const clock = { t: T0 }
      let log = new AuditLog(db as never, () => clock.t)
      await log.load()
      await fill(log, clock, 600)
      await dropIndex(db)
      // An open of the old log: the index is built (and used: the query reads only what it needs).
      log = new AuditLog(db as never, () => clock.t)
      await log.load()
      await compareQueries(log, db, 7)
      const counter = countReads(db)
      try {
        assert.equal((await log.query({ from: T0 + 591 * 1000 })).length, 10)
        assert.ok(counter.reads <= 12, `read ${counter.reads}`)
      } finally {
        unpatch()
      }
      // An earlier build opens the storage and appends (no index keys), with its clock set back for
      // one entry: the next open finds the index behind the log and builds it again.
      clock.t += 1000
      const back = clock.t - 30_500
      await appendAsOldBuild(db, clock.t, 'volume:default/old-1')
      await appendAsOldBuild(db, back, 'volume:default/old-2')
      await appendAsOldBuild(db, clock.t + 1000, 'volume:default/old-3')
      clock.t += 2000
      log = new AuditLog(db as never, () => clock.t)
      await log.load()
      assert.deepEqual((await log.query({ from: back, to: back + 1 })).map((e) => e.object), ['volume:default/old-2'])
      await compareQueries(log, db, 8)
      await fill(log, clock, 20)
      await compareQueries(log, db, 9)
      const verified = await log.verify()
      assert.equal(verified.ok, true, JSON.stringify(verified.problems))
      assert.equal(verified.entries, 623)
    })

    it('the logs of the storages earlier builds wrote (test/fixtures) answer the same with the index', async () => {
      const PRE_INDEX_FIXTURES = ['4e601f2', '7b1a549', 'c5bec32']
      const fixturesDir = join(fileURLToPath(new URL('.', import.meta.url)), 'fixtures')
      const fixtures = (await readdir(fixturesDir)).filter((name) => /^storage-.+\.tar\.gz$/.test(name)).sort()
      assert.ok(fixtures.length >= 6)
      const root = await mkdtemp(join(tmpdir(), 'galleon-h62-'))
      try {
        for (const archive of fixtures) {
          await promisify(execFile)('tar', ['-xzf', join(fixturesDir, archive), '-C', root])
          const db = new ClassicLevel<string, unknown>(join(root, archive.replace(/\.tar\.gz$/, ''), 'storage', 'metadata'))
          await db.open()
          try {
            // Fixtures of builds from before the index have none (it is built at open); later ones
            // (45cc743 on) bring theirs, which must answer the same.
            if (PRE_INDEX_FIXTURES.some((rev) => archive.startsWith(`storage-${rev}-`))) assert.equal((await db.sublevel('audit-index').keys().all()).length, 0, `${archive} predates the index`)
            const all = await readRaw(db)
            assert.ok(all.length > 10, `${archive} has an audit log`)
            const log = new AuditLog(db as never, () => Date.parse(all.at(-1)?.time as string) + 1000)
            await log.load()
            await compareQueries(log, db, 11, 30)
            // Every entry is in exactly one range of a partition of its time span.
            const first = Date.parse(all[0]?.time as string)
            const last = Date.parse(all.at(-1)?.time as string)
            const cut = Math.floor((first + last) / 2)
            const halves = [...await log.query({ to: cut, limit: 100_000 }), ...await log.query({ from: cut, limit: 100_000 })]
            assert.deepEqual(halves.map((e) => e.seq).sort((a, b) => a - b), all.map((e) => e.seq).sort((a, b) => a - b))
            assert.equal((await log.verify()).ok, true)
          } finally {
            await db.close()
          }
        }
      } finally {
        await rm(root, { recursive: true, force: true })
      }
    })

    it('a crash at any step of building the index at open leaves no index a later open trusts', async () => {
      const root = await mkdtemp(join(tmpdir(), 'galleon-h62-crash-'))
      try {
        // An old-format log of 2,500 entries (ten index batches), on disk.
        const original = join(root, 'original')
        let db: Db = new ClassicLevel<string, unknown>(original)
        await db.open()
        const clock = { t: T0 }
        await db.batch(Array.from({ length: 2500 }, (_, i) => i + 1).flatMap((seq) => [
          { type: 'put' as const, sublevel: db.sublevel('audit', { valueEncoding: 'json' }), key: key(seq), value: { seq, time: new Date(T0 + seq * 1000).toISOString(), principal: 'application', action: 'createVolume', object: `volume:default/v${seq}`, result: 'ok', prev: '', hash: '' } }
        ]) as any)
        await db.sublevel('audit-head', { valueEncoding: 'json' }).put('head', { seq: 2500, hash: '' })
        await db.close()
        const self = fileURLToPath(import.meta.url)
        for (const kill of ['before-clear', 'before-batch-0', 'before-batch-1', 'before-batch-5', 'before-batch-9', 'before-state', 'none']) {
          const dir = join(root, kill)
          await cp(original, dir, { recursive: true })
          // A first open with a full index, so that the crash also has an old index to leave behind.
          if (kill !== 'none') {
            db = new ClassicLevel<string, unknown>(dir)
            await db.open()
            await new AuditLog(db as never, () => clock.t).load()
            // ... then entries appended by an earlier build: the next open rebuilds.
            await db.batch([{ type: 'put', sublevel: db.sublevel('audit', { valueEncoding: 'json' }), key: key(2501), value: { seq: 2501, time: new Date(T0 + 10).toISOString(), principal: 'application', action: 'createVolume', object: 'volume:default/late', result: 'ok', prev: '', hash: '' } }] as any)
            await db.close()
          }
          const child = spawn(process.execPath, scriptArgs(self), { env: { ...process.env, H62_AUDIT_CHILD: '1', H62_AUDIT_DB: dir, H62_AUDIT_KILL: kill }, stdio: ['ignore', 'pipe', 'pipe'] })
          let out = ''
          child.stdout.on('data', (chunk) => { out += String(chunk) })
          child.stderr.on('data', (chunk) => { out += String(chunk) })
          const signal = await new Promise<string | null>((resolve) => child.once('close', (_code, sig) => { resolve(sig) }))
          assert.equal(signal, kill === 'none' ? null : 'SIGKILL', `child (${kill}): ${out}`)
          db = new ClassicLevel<string, unknown>(dir)
          await db.open()
          try {
            if (kill !== 'none') {
              // The state that says what the index covers is gone from the first step on.
              assert.equal((await db.sublevel('audit-index').keys().all()).length, 0, `a state survived a crash ${kill}`)
            }
            const again = new AuditLog(db as never, () => clock.t)
            await again.load()
            await compareQueries(again, db, 21, 30)
            // The late entry (its clock behind) is found by time.
            if (kill !== 'none') assert.deepEqual((await again.query({ from: T0 + 10, to: T0 + 11 })).map((e) => e.seq), [2501])
          } finally {
            await db.close()
          }
        }
      } finally {
        await rm(root, { recursive: true, force: true })
      }
    })
  })
}
