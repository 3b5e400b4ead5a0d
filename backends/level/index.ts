// LevelDB block store: one key-value pair per block version in classic-level (or in any abstract-level
// database handed in), with group commit of concurrent batches and in-memory space counters.

import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { AbstractBatchOperation, AbstractBatchOptions, AbstractLevel } from 'abstract-level'
import { AbstractBlockStore, addressKey, isNoSpaceError, parseAddressKey } from '../../src/abstract-block-store.js'
import { vouchForBlockStore } from '../../src/checked-block-store.js'
import { latchLevelWrites } from '../../src/level-write-latch.js'
import { syncLevelDirectoryOnSyncedWrites } from '../../src/level-directory-sync.js'
import type { BlockAddress, BlockOp, BlockStoreStats, BlockStoreSupports } from '../../src/drivers.js'
import { GalleonError, copyBytes, describe, plainView } from '../../src/errors.js'
import { assertLevelDirectoryIntact, closeLevelFilesOnExec, loadClassicLevel, type AnyLevelDatabase } from '../../src/classic-level.js'
import { makeDirectoriesDurably, syncDirectory } from '../../src/durable-files.js'

/** Any abstract-level database (classic-level, memory-level, a sublevel of either); keys and values are encoded per call. */
export type LevelDatabase = AbstractLevel<any, any, any>

/**
 * Options of the level block store: either `location`, a directory where the store opens (and later
 * closes) its own classic-level database, or `db`, an abstract-level database dedicated to block
 * storage (typically a sublevel of the metadata database, or a memory-level instance in tests). A
 * given `db` is closed by the store only if the store had to open it.
 */
export type LevelBlockStoreOptions = { location: string } | { db: AnyLevelDatabase }

// Address keys are fixed-width lowercase hex, so the key order is the address order and the blocks of
// one volume form the range [volumePrefix, volumePrefix + 'g'). The sync marker sorts after every
// address key ('~' > 'g'), so no address scan ever meets it.
const ADDRESS_RANGE = { gte: '0', lt: 'g' } as const
const SYNC_MARKER_KEY = '~sync'
const SYNC_MARKER_VALUE = new Uint8Array([1])
const ENCODINGS = { keyEncoding: 'utf8', valueEncoding: 'view' } as const
// classic-level's `sync` batch option is not part of the abstract-level types; sublevels pass it through.
const SYNC_WRITE = { ...ENCODINGS, sync: true } as AbstractBatchOptions<string, Uint8Array>
const ASYNC_WRITE = { ...ENCODINGS, sync: false } as AbstractBatchOptions<string, Uint8Array>
// A group commit stops growing at these sizes, so one huge burst does not become one huge LevelDB batch.
const MAX_GROUP_OPS = 4096
const MAX_GROUP_BYTES = 16 * 1024 * 1024
// Chunk sizes of scans that read values only for their length (values may be up to 1 MiB each).
const LOOKUP_CHUNK_KEYS = 64
const DELETE_CHUNK_KEYS = 1024
const DELETE_CHUNK_BYTES = 8 * 1024 * 1024

type LevelOp = AbstractBatchOperation<LevelDatabase, string, Uint8Array>

/** A write or an exclusive task waiting its turn in the commit queue. */
type QueueItem =
  | { kind: 'write', ops: readonly BlockOp[], sync: boolean, resolve: () => void, reject: (err: unknown) => void }
  | { kind: 'task', run: () => Promise<void>, resolve: () => void, reject: (err: unknown) => void }

/**
 * Block store on LevelDB (classic-level), or on any abstract-level database passed as `db`.
 *
 * Each block version is one key (`addressKey()`, order-preserving) with the block bytes as value, so a
 * volume is a key range. Writes go through one queue: while a LevelDB batch is in flight, later
 * batches accumulate and are then written as one LevelDB batch, synced if any of them asked for it
 * (group commit); they resolve in call order. `sync()` is a synced write of a marker key, since
 * LevelDB syncs its whole log on any synced write. Block count and live bytes are counted in memory:
 * a scan of all values on open, then exact deltas per batch (each batch looks up the previous sizes
 * of the keys it touches, so an overwrite or a delete of a missing key is counted right).
 *
 * With `db`, durability is that of the given database (memory-level has none) and the database must
 * hold nothing but this store's keys.
 */
export class LevelBlockStore extends AbstractBlockStore {
  readonly name = 'level'
  readonly supports: BlockStoreSupports = { persistent: true, durableSync: true, atomicBatch: true, reclaimsSpace: true }
  readonly #location: string | undefined
  readonly #givenDb: LevelDatabase | undefined
  #db: LevelDatabase | undefined
  /** True when this store opened the database and so must close it. */
  #closeDbOnClose = false
  #queue: QueueItem[] = []
  #syncs = 0
  #draining: Promise<void> | undefined
  #blocks = 0
  #liveBytes = 0
  /** Set when a write failed midway, so the counters may be off until the next recount. */
  #countsStale = false

  /** Creates a closed store; nothing is touched until `open()`. */
  constructor (options: LevelBlockStoreOptions) {
    super()
    // A built-in store: GalleonFS.open() uses it without the guard around users' stores (a
    // subclass's overrides are a user's code, and get the guard).
    vouchForBlockStore(this, LevelBlockStore)
    if (options === null || typeof options !== 'object') {
      throw new GalleonError('INVALID_ARGUMENT', `the level block store needs { location } or { db }, got ${describe(options)}`)
    }
    const { location, db } = options as { location?: unknown, db?: unknown }
    if ((location === undefined) === (db === undefined)) {
      throw new GalleonError('INVALID_ARGUMENT', 'the level block store needs exactly one of { location } (a directory) or { db } (an abstract-level database)')
    }
    if (location !== undefined && (typeof location !== 'string' || location.length === 0)) {
      throw new GalleonError('INVALID_ARGUMENT', `location must be a non-empty directory path, got ${describe(location)}`)
    }
    if (db !== undefined && !isLevelDatabase(db)) {
      throw new GalleonError('INVALID_ARGUMENT', `db must be an abstract-level database (classic-level, memory-level or a sublevel), got ${describe(db)}`)
    }
    this.#location = location
    this.#givenDb = db
  }

  protected async _open (): Promise<void> {
    const db = this.#givenDb ?? await openClassicLevel(this.#location as string)
    let closeDbOnClose = this.#givenDb === undefined
    try {
      if (db.status !== 'open') {
        // A db that is merely 'opening' (abstract-level opens itself on construction) stays the caller's.
        closeDbOnClose ||= db.status === 'closed' || db.status === 'closing'
        await db.open()
      }
      // LevelDB opens its files without close-on-exec: every child process would hold them.
      if (this.#givenDb === undefined) await closeLevelFilesOnExec(this.#location as string)
      // LevelDB renames a new CURRENT into place at open without syncing the directory (see open-drivers.ts).
      if (this.#location !== undefined) await syncDirectory(this.#location)
      // The count reads every value: damage in the tables shows here, at open, as CORRUPTION.
      const counts = await countBlocks(db)
      this.#blocks = counts.blocks
      this.#liveBytes = counts.liveBytes
      this.#countsStale = false
    } catch (err) {
      // The open error is the one to report; a failure to close the half-opened db would only hide it.
      if (closeDbOnClose) await db.close().catch(() => {})
      throw openError(err, this.#location)
    }
    // Synced writes wait for the directory's new names to be durable (see level-directory-sync.ts);
    // installed first, so that the latch around it also stops writes after a failed directory sync.
    if (this.#givenDb === undefined) syncLevelDirectoryOnSyncedWrites(db, this.#location as string)
    // After a failed write LevelDB must not take more (see level-write-latch.ts).
    latchLevelWrites(db, `the level block store${this.#location === undefined ? '' : ` at ${this.#location}`}`)
    this.#db = db
    this.#closeDbOnClose = closeDbOnClose
  }

  protected async _close (): Promise<void> {
    // The base class refuses new calls once closing; let the ones already queued finish first.
    while (this.#draining !== undefined) await this.#draining
    const db = this.#db
    this.#db = undefined
    this.#blocks = 0
    this.#liveBytes = 0
    if (db !== undefined && this.#closeDbOnClose) {
      try {
        await db.close()
      } catch (err) {
        throw levelError(err, 'could not close the level block store database', this.#location)
      }
    }
  }

  protected async _get (address: BlockAddress): Promise<Uint8Array | undefined> {
    let value: Uint8Array | undefined
    try {
      value = await this.#openDb().get<string, Uint8Array>(addressKey(address), ENCODINGS)
    } catch (err) {
      throw levelError(err, 'could not read from the level block store', this.#location)
    }
    // classic-level hands out fresh buffers; other databases (memory-level) may return their own.
    return value === undefined ? undefined : this.#givenDb === undefined ? plainView(value) : copyBytes(value)
  }

  protected override async _getMany (addresses: readonly BlockAddress[]): Promise<Array<Uint8Array | undefined>> {
    let values: Array<Uint8Array | undefined>
    try {
      values = await this.#openDb().getMany<string, Uint8Array>(addresses.map(addressKey), ENCODINGS)
    } catch (err) {
      throw levelError(err, 'could not read from the level block store', this.#location)
    }
    return values.map((value) => value === undefined ? undefined : this.#givenDb === undefined ? plainView(value) : copyBytes(value))
  }

  protected async _batch (ops: readonly BlockOp[], sync: boolean): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.#enqueue({ kind: 'write', ops, sync, resolve, reject })
    })
  }

  protected async _sync (): Promise<void> {
    await this._batch([], true)
  }

  protected async * _addresses (volume: number | undefined): AsyncIterable<BlockAddress> {
    const range = volumeRange(volume)
    if (range === undefined) return
    const db = this.#openDb()
    const iterator = db.keys<string>({ ...range, keyEncoding: 'utf8' })
    try {
      while (true) {
        let keys: string[]
        try {
          keys = await iterator.nextv(1024)
        } catch (err) {
          // close() closes the database and its iterators under a scan the caller has not finished:
          // that scan is cut short by the caller's close, not by a failing disk.
          if (this.#db !== db || this.status !== 'open') {
            throw new GalleonError('NOT_OPEN', 'the level block store was closed during an addresses() scan, which is incomplete; open() it and scan again', { cause: err })
          }
          throw levelError(err, 'could not list the level block store', this.#location)
        }
        if (keys.length === 0) return
        for (const key of keys) yield parseAddressKey(key)
      }
    } finally {
      await iterator.close()
    }
  }

  protected override async _deleteVolume (volume: number): Promise<void> {
    const range = volumeRange(volume)
    if (range === undefined) return
    // Runs alone in the commit queue, so batches called before it are applied first and later ones after.
    await this.#runExclusive(async () => {
      const db = this.#openDb()
      const iterator = db.iterator<string, Uint8Array>({ ...range, ...ENCODINGS })
      try {
        let keys: string[] = []
        let bytes = 0
        const flush = async (): Promise<void> => {
          await db.batch<string, Uint8Array>(keys.map((key): LevelOp => ({ type: 'del', key })), ASYNC_WRITE)
          this.#blocks -= keys.length
          this.#liveBytes -= bytes
          keys = []
          bytes = 0
        }
        for await (const [key, value] of iterator) {
          keys.push(key)
          bytes += value.byteLength
          if (keys.length >= DELETE_CHUNK_KEYS || bytes >= DELETE_CHUNK_BYTES) await flush()
        }
        if (keys.length > 0) await flush()
      } catch (err) {
        this.#countsStale = true
        throw isNoSpaceError(err) ? writeError(err, this.#location) : levelError(err, `could not delete volume ${volume} from the level block store`, this.#location)
      } finally {
        await iterator.close()
      }
    })
  }

  protected async _stats (): Promise<BlockStoreStats> {
    if (this.#countsStale) {
      await this.#runExclusive(async () => {
        if (!this.#countsStale) return
        let counts: { blocks: number, liveBytes: number }
        try {
          counts = await countBlocks(this.#openDb())
        } catch (err) {
          throw levelError(err, 'could not count the blocks of the level block store', this.#location)
        }
        this.#blocks = counts.blocks
        this.#liveBytes = counts.liveBytes
        this.#countsStale = false
      })
    }
    return { blocks: this.#blocks, liveBytes: this.#liveBytes, storedBytes: await this.#storedBytes(), syncs: this.#syncs }
  }

  /** Bytes on disk: the database directory when the store owns it, else LevelDB's estimate, else live bytes. */
  async #storedBytes (): Promise<number> {
    try {
      if (this.#location !== undefined) return await directoryBytes(this.#location)
      const db = this.#openDb() as LevelDatabase & { approximateSize?: (start: string, end: string, options: object) => Promise<number> }
      if (typeof db.approximateSize === 'function') {
        return Math.max(await db.approximateSize(ADDRESS_RANGE.gte, ADDRESS_RANGE.lt, { keyEncoding: 'utf8' }), 0)
      }
      return this.#liveBytes
    } catch (err) {
      throw levelError(err, 'could not measure the level block store', this.#location)
    }
  }

  #openDb (): LevelDatabase {
    if (this.#db === undefined) throw new GalleonError('NOT_OPEN', 'the level block store is not open; open() it first')
    return this.#db
  }

  async #runExclusive (run: () => Promise<void>): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.#enqueue({ kind: 'task', run, resolve, reject })
    })
  }

  #enqueue (item: QueueItem): void {
    this.#queue.push(item)
    // Start draining after the current tick, so batches issued together share the first commit too.
    this.#draining ??= Promise.resolve().then(async () => { await this.#drain() })
  }

  async #drain (): Promise<void> {
    while (this.#queue.length > 0) {
      const first = this.#queue[0] as QueueItem
      if (first.kind === 'task') {
        this.#queue.shift()
        try {
          await first.run()
          first.resolve()
        } catch (err) {
          first.reject(err)
        }
        continue
      }
      const group = this.#takeWriteGroup()
      try {
        await this.#commit(group)
        for (const write of group) write.resolve()
      } catch (err) {
        const error = writeError(err, this.#location)
        for (const write of group) write.reject(error)
      }
    }
    this.#draining = undefined
  }

  /** Removes from the queue head the writes to commit together (at least one). */
  #takeWriteGroup (): Array<Extract<QueueItem, { kind: 'write' }>> {
    let count = 0
    let ops = 0
    let bytes = 0
    for (const item of this.#queue) {
      if (item.kind !== 'write') break
      let itemBytes = 0
      for (const op of item.ops) if (op.type === 'put') itemBytes += op.data.byteLength
      if (count > 0 && (ops + item.ops.length > MAX_GROUP_OPS || bytes + itemBytes > MAX_GROUP_BYTES)) break
      count++
      ops += item.ops.length
      bytes += itemBytes
    }
    return this.#queue.splice(0, count) as Array<Extract<QueueItem, { kind: 'write' }>>
  }

  /** Writes a group of batches as one LevelDB batch and updates the counters. */
  async #commit (group: ReadonlyArray<Extract<QueueItem, { kind: 'write' }>>): Promise<void> {
    const db = this.#openDb()
    const copy = this.#givenDb !== undefined
    const levelOps: LevelOp[] = []
    let sync = false
    for (const write of group) {
      sync ||= write.sync
      for (const op of write.ops) {
        const key = addressKey(op.address)
        // classic-level copies values into its write batch; other databases may keep the caller's buffer.
        levelOps.push(op.type === 'put' ? { type: 'put', key, value: copy ? copyBytes(op.data) : op.data } : { type: 'del', key })
      }
    }
    if (levelOps.length === 0) {
      if (sync) {
        await db.put<string, Uint8Array>(SYNC_MARKER_KEY, SYNC_MARKER_VALUE, SYNC_WRITE)
        this.#syncs++
      }
      return
    }

    // Sizes before this group (-1: absent), then replay the ops in order to get the exact deltas.
    const sizes = await previousSizes(db, levelOps)
    let blocks = 0
    let liveBytes = 0
    for (const op of levelOps) {
      const previous = sizes.get(op.key) as number
      if (previous >= 0) {
        blocks--
        liveBytes -= previous
      }
      const next = op.type === 'put' ? op.value.byteLength : -1
      if (next >= 0) {
        blocks++
        liveBytes += next
      }
      sizes.set(op.key, next)
    }
    try {
      await db.batch<string, Uint8Array>(levelOps, sync ? SYNC_WRITE : ASYNC_WRITE)
      if (sync) this.#syncs++
    } catch (err) {
      // A failed sync may still have applied the batch; recount before trusting the counters again.
      this.#countsStale = true
      throw err
    }
    this.#blocks += blocks
    this.#liveBytes += liveBytes
  }
}

/**
 * A failed write as a GalleonError: a full disk (LevelDB says so only in its message) is NO_SPACE.
 * The write latch's refusals (GalleonErrors) pass as they are: they say to reopen.
 */
function writeError (err: unknown, location: string | undefined): GalleonError {
  if (err instanceof GalleonError) return err
  if (isNoSpaceError(err)) {
    // From now on the write latch refuses every write until the database is reopened (level-write-latch.ts).
    return new GalleonError('NO_SPACE', `the disk holding the level block store${location === undefined ? '' : ` at ${location}`} is full, so it takes no more writes; free space, then close and reopen the instance`, { cause: err })
  }
  return levelError(err, 'could not write to the level block store', location)
}

/**
 * A classic-level failure as a GalleonError: damage LevelDB detected (a checksum mismatch, a
 * malformed file; code LEVEL_CORRUPTION anywhere in the causes) is CORRUPTION, anything else
 * IO_ERROR, each with the reasons of the causes (classic-level's own message is often just
 * "Database failed to open").
 */
function levelError (err: unknown, context: string, location: string | undefined): GalleonError {
  if (err instanceof GalleonError) return err
  const at = location === undefined ? '' : ` at ${location}`
  if (hasCauseCode(err, 'LEVEL_CORRUPTION')) {
    return new GalleonError('CORRUPTION', `${context}: LevelDB found its files${at} damaged (${reasons(err)}); restore the directory from a copy, or run ClassicLevel.repair() on it (which keeps what it can read: recent blocks may be lost) and reopen`, { cause: err })
  }
  return new GalleonError('IO_ERROR', `${context}${location === undefined || context.includes(location) ? '' : at}: ${reasons(err)}`, { cause: err })
}

function hasCauseCode (err: unknown, code: string): boolean {
  for (let e = err, depth = 0; e !== null && typeof e === 'object' && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    if ((e as { code?: unknown }).code === code) return true
  }
  return false
}

/** The distinct messages of an error and its causes, outermost first. */
function reasons (err: unknown): string {
  const messages: string[] = []
  for (let e = err, depth = 0; e !== null && e !== undefined && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    const message = e instanceof Error ? e.message : typeof e === 'object' ? undefined : String(e)
    if (message !== undefined && message.length > 0 && !messages.includes(message)) messages.push(message)
    if (typeof e !== 'object') break
  }
  return messages.join(': ')
}

/** Backend descriptor: name, availability (classic-level loads), and a factory. */
export const levelBackend = {
  name: 'level',
  isAvailable: async (): Promise<boolean> => {
    try {
      await import('classic-level')
      return true
    } catch {
      return false
    }
  },
  create: (options: LevelBlockStoreOptions): LevelBlockStore => new LevelBlockStore(options)
}

async function openClassicLevel (location: string): Promise<LevelDatabase> {
  const ClassicLevel = await loadClassicLevel('the level block store (or choose another backend)')
  await assertLevelDirectoryIntact(location, 'the level block store')
  // LevelDB makes its directory itself and never syncs its parent: made here, durably named.
  await makeDirectoriesDurably(location)
  return new ClassicLevel<string, Uint8Array>(location, ENCODINGS) as unknown as LevelDatabase
}

function openError (err: unknown, location: string | undefined): GalleonError {
  if (hasCauseCode(err, 'LEVEL_LOCKED')) {
    return new GalleonError('BUSY', `the level block store at ${location ?? 'the given db'} is in use by another process or instance; close that one first`, { cause: err })
  }
  return levelError(err, `could not open the level block store${location === undefined ? '' : ` at ${location}`}`, location)
}

function isLevelDatabase (value: unknown): value is LevelDatabase {
  if (value === null || typeof value !== 'object') return false
  const db = value as Record<string, unknown>
  return typeof db.batch === 'function' && typeof db.get === 'function' && typeof db.iterator === 'function' && typeof db.open === 'function'
}

/** Key range of one volume (or of all), undefined for a volume id no address can have. */
function volumeRange (volume: number | undefined): { gte: string, lt: string } | undefined {
  if (volume === undefined) return ADDRESS_RANGE
  // Beyond 32 bits the prefix would be longer than 8 digits, and cutting it would alias another volume.
  if (volume > 0xffffffff) return undefined
  const prefix = addressKey({ volume, index: 0, gen: 0 }).slice(0, 8)
  return { gte: prefix, lt: prefix + 'g' }
}

async function countBlocks (db: LevelDatabase): Promise<{ blocks: number, liveBytes: number }> {
  let blocks = 0
  let liveBytes = 0
  for await (const value of db.values<string, Uint8Array>({ ...ADDRESS_RANGE, ...ENCODINGS })) {
    blocks++
    liveBytes += value.byteLength
  }
  return { blocks, liveBytes }
}

/** Current value size of every key the ops touch, -1 for absent keys. */
async function previousSizes (db: LevelDatabase, ops: readonly LevelOp[]): Promise<Map<string, number>> {
  const sizes = new Map<string, number>()
  for (const op of ops) sizes.set(op.key, -1)
  const keys = [...sizes.keys()]
  for (let start = 0; start < keys.length; start += LOOKUP_CHUNK_KEYS) {
    const chunk = keys.slice(start, start + LOOKUP_CHUNK_KEYS)
    const values = await db.getMany<string, Uint8Array>(chunk, ENCODINGS)
    for (let i = 0; i < chunk.length; i++) {
      const value = values[i]
      if (value !== undefined) sizes.set(chunk[i] as string, value.byteLength)
    }
  }
  return sizes
}

async function directoryBytes (directory: string): Promise<number> {
  let total = 0
  for (const entry of await readdir(directory, { withFileTypes: true })) {
    if (!entry.isFile()) continue
    try {
      total += (await stat(join(directory, entry.name))).size
    } catch (err) {
      // LevelDB deletes obsolete files while compacting; a file gone since readdir occupies nothing.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
  }
  return total
}
