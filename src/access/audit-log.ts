// The audit log: one entry per mutating call and per denial (who, what, on which object, the
// result, when), appended to the metadata database with a synced write, and hash-chained: each
// entry holds the SHA-256 of the previous entry and its own, so an edited, removed or reordered
// entry breaks the chain. A head record (last sequence number and hash) is written in the same
// batch, so removing entries from the end is detected too. Anyone who can rewrite the whole
// database can rewrite the whole chain: keep a copy of auditHead() elsewhere (a log shipper, a
// ticket) and pass it to verifyAuditLog() to detect that as well.
// A time index (see TimeIndexState) lets a query by time seek instead of reading the whole log.
// The public types are in audit-types.ts; how records are keyed, hashed and parsed in audit-records.ts.

import type { AbstractSublevel } from 'abstract-level'
import { GalleonError, describe, quoted } from '../errors.js'
import { isNoSpaceError } from '../abstract-block-store.js'
import type { MetadataDatabase } from '../volumes/catalog.js'
import { SerialQueue } from '../serial-queue.js'
import { GENESIS, HEAD_KEY, MAX_TIME, TIME_DIGITS, TIME_INDEX_STATE_KEY, entryHash, keyOf, parseEntry, parseHead, parseTimeIndexState, timeKey, toTime, type TimeIndexState } from './audit-records.js'
import type { AuditEntry, AuditQuery, AuditRecord, AuditVerification } from './audit-types.js'

export type { AuditEntry, AuditQuery, AuditRecord, AuditVerification } from './audit-types.js'

type JsonSublevel = AbstractSublevel<MetadataDatabase, any, string, any>
const SYNC = { sync: true } as unknown as Record<string, never>
/** The fields of an AuditQuery. */
const QUERY_FIELDS: readonly string[] = ['from', 'to', 'principal', 'object', 'action', 'result', 'limit']
/** The action of the entry the instance appends when it found the head record wrong at open. */
const REOPENED = 'auditLogReopened'
/** Entries read (or index keys walked) between two turns given to the event loop. */
const ENTRIES_PER_TURN = 256
const INDEX_BATCH = ENTRIES_PER_TURN
/** Index keys a query after a clock step collects at most; a wider range reads the log in order. */
const MAX_INDEXED_KEYS = 16 * ENTRIES_PER_TURN
const nextTurn = async (): Promise<void> => { await new Promise<void>((resolve) => { setImmediate(resolve) }) }

export class AuditLog {
  readonly #db: MetadataDatabase
  readonly #entries: JsonSublevel
  readonly #meta: JsonSublevel
  // The same records read as text: a damaged one is reported, instead of failing the whole read.
  readonly #entryText: JsonSublevel
  readonly #metaText: JsonSublevel
  // The time index: keys timeKey(ms) + the entry's key, empty values; and what it covers.
  readonly #timeIndex: JsonSublevel
  readonly #timeIndexState: JsonSublevel
  // Undefined until load() found or built a complete index (or when building it failed): queries
  // by time then read the whole log, and appends leave the index alone.
  #timeState: TimeIndexState | undefined
  #timeIndexFailure: GalleonError | undefined
  readonly #now: () => number
  #head = { seq: 0, hash: GENESIS }
  readonly #queue = new SerialQueue()

  constructor (db: MetadataDatabase, now: () => number) {
    this.#db = db
    this.#entries = db.sublevel('audit', { valueEncoding: 'json' }) as JsonSublevel
    this.#meta = db.sublevel('audit-head', { valueEncoding: 'json' }) as JsonSublevel
    this.#entryText = db.sublevel('audit', { valueEncoding: 'utf8' }) as JsonSublevel
    this.#metaText = db.sublevel('audit-head', { valueEncoding: 'utf8' }) as JsonSublevel
    this.#timeIndex = db.sublevel('audit-time', { valueEncoding: 'utf8' }) as JsonSublevel
    this.#timeIndexState = db.sublevel('audit-index', { valueEncoding: 'utf8' }) as JsonSublevel
    this.#now = now
  }

  /**
   * Finds where the log ends. New entries always go after the last stored one, whatever the head
   * record says: a head that is missing, damaged or behind the entries (someone removed or altered
   * it) is noted in the log itself, by an entry of the instance, so the gap in trust stays visible.
   */
  async load (): Promise<void> {
    const head = parseHead(await this.#metaText.get(HEAD_KEY))
    const [last] = await this.#entryText.iterator({ reverse: true, limit: 1 }).all()
    const lastSeq = last === undefined ? 0 : Number.parseInt(String(last[0]), 10)
    const lastEntry = last === undefined ? undefined : parseEntry(last[1])
    await this.#loadTimeIndex(last === undefined ? '' : String(last[0]))
    // Consistent, or entries removed from the end (the head is ahead: appends go after it, and
    // verify reports the gap).
    if (last === undefined || (head !== undefined && (head.seq > lastSeq || (head.seq === lastSeq && lastEntry?.hash === head.hash)))) {
      if (head !== undefined) this.#head = head
      return
    }
    // Continue after the last entry, chained to it (when it is readable; verify reports it when not).
    this.#head = { seq: Number.isSafeInteger(lastSeq) ? lastSeq : 0, hash: lastEntry?.hash ?? GENESIS }
    const found = head === undefined ? 'missing or damaged' : head.seq < lastSeq ? `at entry ${head.seq}` : 'naming another hash'
    await this.append({ principal: 'system', action: REOPENED, object: 'audit-log', result: 'failed', code: 'CORRUPTION', details: { reason: `the head record was ${found} while the log ends at entry ${lastSeq}: entries were removed or the head was altered; the log continues after entry ${lastSeq}` } })
  }

  /**
   * Uses the time index when it covers the log up to `lastKey`, else builds it from the entries. The
   * state record goes first (synced), so a build cut short by a crash leaves no state, and the next
   * open builds again; it comes back, synced, only after every index key is written. A build that
   * fails (a full disk) leaves queries reading the whole log until the next open tries again (not
   * sooner: a failed write stops the metadata database's writes until it is reopened, see
   * level-write-latch.ts); `timeIndexFailure` says why, for the instance to report.
   */
  async #loadTimeIndex (lastKey: string): Promise<void> {
    this.#timeIndexFailure = undefined
    const stored = parseTimeIndexState(await this.#timeIndexState.get(TIME_INDEX_STATE_KEY))
    if (stored !== undefined && stored.last === lastKey) {
      this.#timeState = stored
      return
    }
    try {
      await this.#timeIndexState.del(TIME_INDEX_STATE_KEY, SYNC)
      await this.#timeIndex.clear()
      let state: TimeIndexState = { last: '', time: null, ordered: true }
      let puts: Array<{ type: 'put', key: string, value: string }> = []
      let read = 0
      for await (const [key, value] of this.#entryText.iterator()) {
        const entry = parseEntry(value)
        const time = entry === undefined ? Number.NaN : Date.parse(entry.time)
        if (Number.isFinite(time)) {
          puts.push({ type: 'put', key: timeKey(time) + String(key), value: '' })
          state = { last: String(key), time, ordered: state.ordered && (state.time === null || time >= state.time) }
        } else {
          state = { ...state, last: String(key) }
        }
        if (puts.length >= INDEX_BATCH) {
          await this.#timeIndex.batch(puts)
          puts = []
        }
        if (++read % ENTRIES_PER_TURN === 0) await nextTurn()
      }
      if (puts.length > 0) await this.#timeIndex.batch(puts)
      await this.#timeIndexState.put(TIME_INDEX_STATE_KEY, JSON.stringify(state), SYNC)
      this.#timeState = state
    } catch (err) {
      // Not an error of the log: the entries and the chain are untouched, queries read them all.
      this.#timeState = undefined
      const full = isNoSpaceError(err)
      const detail = err instanceof Error ? err.message : String(err)
      this.#timeIndexFailure = new GalleonError(full ? 'NO_SPACE' : 'IO_ERROR', `the audit log's time index could not be built at open${full ? ' because the disk holding the metadata database is full' : ''} (${detail}); ` +
        `the audit log itself is intact, but queries by time read the whole log until the index is built. ${full ? 'Free space on that disk (or grow it), then close and reopen' : 'Check the disk holding the metadata database, then close and reopen'} the instance: every open builds the index again until it succeeds`, { cause: err })
    }
  }

  /**
   * Why load() could not build the time index (queries by time then read the whole log, correctly
   * but slowly; the next open tries again), or undefined when it has the index.
   */
  get timeIndexFailure (): GalleonError | undefined { return this.#timeIndexFailure }

  /**
   * The time index against the entries (`timed`: how many readable entries have a readable time).
   * The index is not evidence, and a query with times in order checks what it takes from it; but
   * after the clock went back a query reads the entries the index names in its range, so an index
   * altered to leave an entry out would hide it from queries by time: that is reported here. Each
   * key must name an entry at the key's time; as many such keys as entries means none is missing.
   */
  async #checkTimeIndex (timed: number, at: object): Promise<Array<{ seq: number, problem: string }>> {
    const problems: Array<{ seq: number, problem: string }> = []
    let valid = 0
    let keys: string[] = []
    const check = async (): Promise<void> => {
      const values = await this.#entryText.getMany(keys.map((k) => k.slice(TIME_DIGITS)), at)
      keys.forEach((indexKey, i) => {
        const entry = parseEntry(values[i])
        const time = entry === undefined ? Number.NaN : Date.parse(entry.time)
        if (Number.isFinite(time) && timeKey(time) + indexKey.slice(TIME_DIGITS) === indexKey) valid++
        else problems.push({ seq: Number.parseInt(indexKey.slice(TIME_DIGITS), 10), problem: 'the time index names it at a time it does not have (the index was altered): queries by time may answer wrongly' })
      })
      keys = []
      await nextTurn()
    }
    for await (const indexKey of this.#timeIndex.keys(at)) {
      keys.push(String(indexKey))
      if (keys.length >= ENTRIES_PER_TURN) await check()
    }
    if (keys.length > 0) await check()
    if (valid === timed) return problems
    // Some entry has no key: find which.
    let batch: Array<{ key: string, seq: number }> = []
    const find = async (): Promise<void> => {
      const found = await this.#timeIndex.getMany(batch.map((b) => b.key), at)
      batch.forEach((b, i) => { if (found[i] === undefined) problems.push({ seq: b.seq, problem: 'is missing from the time index (the index was altered): queries by time may not find it' }) })
      batch = []
      await nextTurn()
    }
    for await (const [key, value] of this.#entryText.iterator(at)) {
      const entry = parseEntry(value)
      const time = entry === undefined ? Number.NaN : Date.parse(entry.time)
      if (entry === undefined || !Number.isFinite(time)) continue
      batch.push({ key: timeKey(time) + String(key), seq: entry.seq })
      if (batch.length >= ENTRIES_PER_TURN) await find()
    }
    if (batch.length > 0) await find()
    return problems
  }

  /** The last entry's sequence number and hash: keep a copy outside to detect a rewritten log. */
  head (): { seq: number, hash: string } { return { ...this.#head } }

  /** Appends an entry durably (entries are written one at a time, in call order). */
  async append (record: AuditRecord): Promise<AuditEntry> {
    return await this.#queue.run(async () => {
      // A call that ran across close(): its outcome stands, but it can no longer be recorded.
      if (this.#db.status !== 'open') throw new GalleonError('NOT_OPEN', `the instance was closed before the audit entry of ${record.action} on ${record.object} (${record.result}) could be written; the call itself ran, and is not in the audit log`)
      const body: Omit<AuditEntry, 'hash'> = { ...record, seq: this.#head.seq + 1, time: new Date(this.#now()).toISOString(), prev: this.#head.hash }
      const entry: AuditEntry = { ...body, hash: entryHash(body) }
      const key = keyOf(entry.seq)
      const operations: unknown[] = [
        { type: 'put', sublevel: this.#entries, key, value: entry },
        { type: 'put', sublevel: this.#meta, key: HEAD_KEY, value: { seq: entry.seq, hash: entry.hash } }
      ]
      const indexed = this.#timeState
      let timeState: TimeIndexState | undefined
      if (indexed !== undefined) {
        const time = Date.parse(entry.time)
        timeState = { last: key, time, ordered: indexed.ordered && (indexed.time === null || time >= indexed.time) }
        operations.push({ type: 'put', sublevel: this.#timeIndex, key: timeKey(time) + key, value: '' },
          { type: 'put', sublevel: this.#timeIndexState, key: TIME_INDEX_STATE_KEY, value: JSON.stringify(timeState) })
      }
      try {
        await this.#db.batch(operations as any, SYNC)
      } catch (err) {
        // The call itself has run (or failed) by now: the error says so, whatever broke the write.
        const full = isNoSpaceError(err)
        throw new GalleonError(full ? 'NO_SPACE' : 'IO_ERROR', `${record.action} on ${record.object} (${record.result}) ran, but its audit entry could not be written${full ? ' because the disk holding the metadata database is full; free space on it (or grow it), then close and reopen the instance' : `: ${(err as Error)?.message ?? String(err)}`}`, { cause: err })
      }
      this.#head = { seq: entry.seq, hash: entry.hash }
      if (timeState !== undefined) this.#timeState = timeState
      return entry
    })
  }

  /** Entries matching `query`, oldest first. */
  async query (query: AuditQuery = {}): Promise<AuditEntry[]> {
    if (query === null || typeof query !== 'object') throw new GalleonError('INVALID_ARGUMENT', `queryAuditLog() takes a filter object, got ${describe(query)}`)
    // A misspelt field would filter nothing and answer every entry as if they were the ones asked for.
    for (const key of Object.keys(query)) {
      if (!QUERY_FIELDS.includes(key)) throw new GalleonError('INVALID_ARGUMENT', `queryAuditLog() has no filter ${quoted(key)}; it takes ${QUERY_FIELDS.join(', ')}`)
    }
    const from = toTime(query.from, 'from')
    const to = toTime(query.to, 'to')
    const limit = query.limit ?? 1000
    if (!Number.isSafeInteger(limit) || limit < 1) throw new GalleonError('INVALID_ARGUMENT', `limit must be a positive integer, got ${describe(query.limit)}`)
    for (const field of ['principal', 'object', 'action'] as const) {
      if (query[field] !== undefined && (typeof query[field] !== 'string' || query[field] === '')) throw new GalleonError('INVALID_ARGUMENT', `${field} must be a non-empty string, got ${describe(query[field])}`)
    }
    if (query.result !== undefined && !['ok', 'denied', 'failed'].includes(query.result)) throw new GalleonError('INVALID_ARGUMENT', `result must be ok, denied or failed, got ${describe(query.result)}`)
    const object = query.object
    const matchObject = object === undefined ? () => true : object.endsWith('*') ? (o: string) => o.startsWith(object.slice(0, -1)) : (o: string) => o === object
    const timed = from !== undefined || to !== undefined
    // Entry times are whole milliseconds: time >= from exactly when time >= ceil(from), and so for to.
    const fromMs = from === undefined || from <= -MAX_TIME ? undefined : Math.ceil(Math.min(from, MAX_TIME + 1))
    const toMs = to === undefined || to > MAX_TIME ? undefined : Math.ceil(Math.max(to, -MAX_TIME))
    const inRange = (time: number): boolean => Number.isFinite(time) && (fromMs === undefined || time >= fromMs) && (toMs === undefined || time < toMs)
    const matches = (entry: AuditEntry): boolean => (!timed || inRange(Date.parse(entry.time))) &&
      (query.principal === undefined || entry.principal === query.principal) &&
      (query.action === undefined || entry.action === query.action) &&
      (query.result === undefined || entry.result === query.result) &&
      matchObject(entry.object)
    const state = this.#timeState
    if (timed && state !== undefined) {
      if (state.ordered) {
        const found = await this.#querySeeking(fromMs, toMs, matches, limit)
        if (found !== undefined) return found
      } else {
        const found = await this.#queryIndexed(fromMs, toMs, matches, limit)
        if (found !== undefined) return found
      }
    }
    return await this.#queryScanning(matches, limit)
  }

  /** Reads the log from its start (a damaged entry matches no filter; verifyAuditLog reports it). */
  async #queryScanning (matches: (entry: AuditEntry) => boolean, limit: number): Promise<AuditEntry[]> {
    const out: AuditEntry[] = []
    let read = 0
    for await (const [, value] of this.#entryText.iterator()) {
      const entry = parseEntry(value)
      if (entry !== undefined && matches(entry)) {
        out.push(entry)
        if (out.length >= limit) break
      }
      if (++read % ENTRIES_PER_TURN === 0) await nextTurn()
    }
    return out
  }

  /**
   * With times in order: the index names the first entry at or after `fromMs`, and the log is read
   * in order from there until an entry at or after `toMs`. The index is not trusted for that first
   * entry: the readable entry before it must be before `fromMs` (then, times being in order, so is
   * every entry before it). Undefined when it is not: the caller reads the whole log.
   */
  async #querySeeking (fromMs: number | undefined, toMs: number | undefined, matches: (entry: AuditEntry) => boolean, limit: number): Promise<AuditEntry[] | undefined> {
    let start: string | undefined
    if (fromMs !== undefined) {
      const [first] = await this.#timeIndex.keys({ gte: timeKey(fromMs), limit: 1 }).all()
      start = first === undefined ? undefined : String(first).slice(TIME_DIGITS)
      const before = await this.#lastTimedEntry(start)
      if (before !== undefined && before >= fromMs) return undefined
      // No entry at or after fromMs, and the last one is before it.
      if (start === undefined) return []
    }
    const out: AuditEntry[] = []
    let read = 0
    for await (const [, value] of this.#entryText.iterator(start === undefined ? {} : { gte: start })) {
      const entry = parseEntry(value)
      if (entry !== undefined) {
        if (toMs !== undefined && Date.parse(entry.time) >= toMs) break
        if (matches(entry)) {
          out.push(entry)
          if (out.length >= limit) break
        }
      }
      if (++read % ENTRIES_PER_TURN === 0) await nextTurn()
    }
    return out
  }

  /** The time of the last entry before key `before` (of the last entry, when undefined) whose time is readable. */
  async #lastTimedEntry (before: string | undefined): Promise<number | undefined> {
    let read = 0
    for await (const [, value] of this.#entryText.iterator(before === undefined ? { reverse: true } : { reverse: true, lt: before })) {
      const entry = parseEntry(value)
      const time = entry === undefined ? Number.NaN : Date.parse(entry.time)
      if (Number.isFinite(time)) return time
      if (++read % ENTRIES_PER_TURN === 0) await nextTurn()
    }
    return undefined
  }

  /**
   * With a clock that once went back: the index names every entry in the range; they are read in
   * log order, and each one's own time is checked again (matches() does). Undefined when the range
   * holds more than MAX_INDEXED_KEYS entries: the caller reads the log in order, which stops at
   * `limit` and holds no more than it answers.
   */
  async #queryIndexed (fromMs: number | undefined, toMs: number | undefined, matches: (entry: AuditEntry) => boolean, limit: number): Promise<AuditEntry[] | undefined> {
    const range: { gte?: string, lt?: string } = {}
    if (fromMs !== undefined) range.gte = timeKey(fromMs)
    if (toMs !== undefined) range.lt = timeKey(toMs)
    const keys = new Set<string>()
    let walked = 0
    for await (const key of this.#timeIndex.keys(range)) {
      keys.add(String(key).slice(TIME_DIGITS))
      if (keys.size > MAX_INDEXED_KEYS) return undefined
      if (++walked % INDEX_BATCH === 0) await nextTurn()
    }
    const ordered = [...keys].sort()
    const out: AuditEntry[] = []
    for (let at = 0; at < ordered.length && out.length < limit; at += ENTRIES_PER_TURN) {
      const values = await this.#entryText.getMany(ordered.slice(at, at + ENTRIES_PER_TURN))
      for (const value of values) {
        const entry = parseEntry(value)
        if (entry === undefined || !matches(entry)) continue
        out.push(entry)
        if (out.length >= limit) break
      }
      await nextTurn()
    }
    return out
  }

  /**
   * Walks the whole chain: every entry's hash, its link to the one before, no gap in the sequence,
   * and the last one matching the head record (and `expected`, a head saved earlier, when given).
   */
  async verify (expected?: { seq: number, hash: string }): Promise<AuditVerification> {
    if (expected !== undefined && (expected === null || typeof expected !== 'object' || !Number.isSafeInteger(expected.seq) || expected.seq < 0 || typeof expected.hash !== 'string' || !/^[0-9a-f]{64}$/.test(expected.hash))) {
      throw new GalleonError('INVALID_ARGUMENT', `a saved audit head is { seq, hash } as auditHead() returns it, got ${describe(expected)}`)
    }
    // One snapshot for the entries, the head record and the index: they are written in one batch,
    // so appends that land while the walk yields are neither half seen nor taken for a removal.
    const snapshot = this.#db.snapshot()
    try {
      return await this.#verify(expected, snapshot)
    } finally {
      await snapshot.close()
    }
  }

  async #verify (expected: { seq: number, hash: string } | undefined, snapshot: unknown): Promise<AuditVerification> {
    const at = { snapshot } as any
    const problems: Array<{ seq: number, problem: string }> = []
    let previous = { seq: 0, hash: GENESIS }
    let entries = 0
    let timed = 0
    // Where the entry times first go back (the index state may not claim they never do).
    let lastTime: number | undefined
    let wentBack: number | undefined
    for await (const [key, value] of this.#entryText.iterator(at)) {
      const entry = parseEntry(value)
      if (++entries % ENTRIES_PER_TURN === 0) await nextTurn()
      const time = entry === undefined ? Number.NaN : Date.parse(entry.time)
      if (entry !== undefined && Number.isFinite(time)) {
        timed++
        if (lastTime !== undefined && time < lastTime && wentBack === undefined) wentBack = entry.seq
        lastTime = time
      }
      if (entry === undefined) {
        const seq = Number.parseInt(String(key), 10)
        problems.push({ seq, problem: 'is not a readable audit entry (it was altered or damaged)' })
        previous = { seq, hash: '' }
        continue
      }
      if (keyOf(entry.seq) !== key) problems.push({ seq: entry.seq, problem: `stored under key ${String(key)}, not its sequence number` })
      if (entry.seq !== previous.seq + 1) problems.push({ seq: entry.seq, problem: `follows entry ${previous.seq}: entries ${previous.seq + 1}..${entry.seq - 1} are missing` })
      if (entry.prev !== previous.hash) problems.push({ seq: entry.seq, problem: 'does not link to the entry before it (that one was changed or removed)' })
      const { hash, ...body } = entry
      if (entryHash(body) !== hash) problems.push({ seq: entry.seq, problem: 'its content does not match its hash (it was edited)' })
      if (entry.action === REOPENED && entry.principal === 'system') problems.push({ seq: entry.seq, problem: `an open found the log tampered with: ${String(entry.details?.reason ?? '')}` })
      previous = { seq: entry.seq, hash }
    }
    const stored = await this.#metaText.get(HEAD_KEY, at) as string | undefined
    const head = parseHead(stored) ?? { seq: 0, hash: GENESIS }
    if (stored !== undefined && parseHead(stored) === undefined) problems.push({ seq: 0, problem: 'the head record is not readable (it was altered or damaged)' })
    if (head.seq !== previous.seq || head.hash !== previous.hash) {
      problems.push({ seq: head.seq, problem: `the log ends at entry ${previous.seq} but the head record names entry ${head.seq}: entries were removed from the end (or the head was altered)` })
    }
    if (this.#timeState !== undefined) {
      // Reported only for entries the chain finds nothing wrong with (an edited entry is reported as such).
      const flagged = new Set(problems.map((p) => p.seq))
      const indexProblems = await this.#checkTimeIndex(timed, at)
      // With times in order, a query trusts that no entry before the one it seeks to is in its range.
      if (this.#timeState.ordered && wentBack !== undefined) indexProblems.push({ seq: wentBack, problem: 'its time is before the entry before it, but the time index\'s state says entry times never go back (the state was altered): queries by time may miss entries' })
      for (const problem of indexProblems) if (!flagged.has(problem.seq)) problems.push(problem)
    }
    if (expected !== undefined) {
      if (expected.seq > previous.seq) problems.push({ seq: expected.seq, problem: `a head saved earlier names entry ${expected.seq}, beyond the end of the log (${previous.seq})` })
      else if (expected.seq > 0) {
        const entry = parseEntry(await this.#entryText.get(keyOf(expected.seq), at))
        if (entry?.hash !== expected.hash) problems.push({ seq: expected.seq, problem: 'entry differs from the head saved earlier: the log was rewritten' })
      }
    }
    return { ok: problems.length === 0, entries, head: previous, problems }
  }
}
