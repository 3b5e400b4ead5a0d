// File block store: a log-structured (Bitcask-style) store of block versions in append-only segment
// files with an in-memory index. It is also the engine's write-ahead journal, so every write path
// here is ordered for crash safety first, and recovery tells a torn tail (cut off) from corruption
// (reported, never cut off).

import type { FileHandle } from 'node:fs/promises'
import { makeDirectoriesDurably } from '../../src/durable-files.js'
import { AbstractBlockStore, addressKey, wrapIo } from '../../src/abstract-block-store.js'
import { vouchForBlockStore } from '../../src/checked-block-store.js'
import type { BlockAddress, BlockOp, BlockStoreFault, BlockStoreFileProblem, BlockStoreStats, BlockStoreSupports } from '../../src/drivers.js'
import { GalleonError, copyBytes } from '../../src/errors.js'
import { LoopStreak, loopTurn } from '../../src/loop-streak.js'
import { lockDirectory, type DirectoryLock } from './lock.js'
import { HEADER_BYTES, TYPE_PUT, decodeHeader, recordCrcMatches, type RecordHeader } from './record.js'
import { readFully, readFullySync } from './segment.js'
import { SyncReadGovernor } from './sync-reads.js'
import { ReadBuffers } from './read-buffers.js'
import { DEFAULT_COMPACTION_THRESHOLD, MAX_READ_RUN_BYTES, checkOptions, type FileBlockStoreOptions } from './options.js'

/** Scattered runs of one getMany share buffers of up to this size (a 1 MiB read of 4 KiB blocks, records and headers: 1,035 KiB). */
const SHARED_READ_BYTES = 1088 * 1024
import { BlockIndex } from './block-index.js'
import { StoreState, poolRead, resetState, whenReadsDone, type BlockLocation, type Segment } from './store-state.js'
import { markCleanClose, recover } from './recovery.js'
import { enqueue, whenWriterIdle } from './writer.js'
import { compactPass, maybeScheduleCompaction } from './compaction.js'
import { maintain } from './maintenance.js'
import { checkFiles } from './file-check.js'
import { RELOCATE_MIN_RECORDS, RelocationArena, Relocator } from './relocation.js'

export type { FileBlockStoreOptions } from './options.js'

/** A record `getMany` reads from disk, and where its result goes. */
interface RunItem {
  slot: number
  location: BlockLocation
}

/**
 * Block store in append-only segment files (`seg-<16 hex>.log`) in one directory.
 *
 * - Every batch is appended as consecutive records, all but the last flagged "continues"; recovery
 *   applies a batch only when its last record is present and every crc matches, so a batch is
 *   atomic across a crash. The torn tail of the active segment is truncated on open.
 * - Damage is a torn tail only if a crash could have left it. Open fails with CORRUPTION, and cuts
 *   nothing, when the damage is in a sealed segment (fsynced before its successor existed), when a
 *   `CLEAN` marker says the store was closed (after a final sync) with the active segment at exactly
 *   its present size, or when a complete, valid batch follows the damage with no run of zeros (what
 *   unwritten bytes read as) between them. The marker is written by close() and removed, durably,
 *   by open() before anything is appended.
 * - One writer appends what is queued in groups (small ones written synchronously, see
 *   syncWriteMaxBytes) and, if any of those batches asked for it (or `sync()` was called), issues
 *   one fdatasync for all of them: concurrent durable batches share a sync (group commit). Batches
 *   resolve in call order; a batch without sync resolves once the OS has its bytes (it survives
 *   kill -9 of the process, not a power loss). Unsynced bytes are synced in the background every
 *   WRITEBACK_SYNC_BYTES.
 * - An in-memory index maps each block version to its record; reads are positional reads.
 * - Segments are sealed at `segmentBytes` and get a hint file so open() need not read them. Sealed
 *   segments with mostly dead records are compacted in the background.
 * - A `LOCK` file with the owner's pid keeps a second store (of this or another process) out: BUSY.
 */
export class FileBlockStore extends AbstractBlockStore {
  readonly name = 'file'
  readonly supports: BlockStoreSupports = { persistent: true, durableSync: true, atomicBatch: true, reclaimsSpace: true }

  readonly #state: StoreState
  readonly #syncReadMaxBytes: number
  readonly #readMode = new SyncReadGovernor()
  readonly #syncStreak = new LoopStreak()
  #lock: DirectoryLock | undefined
  /** Scratch header for `_get` (filled and checked synchronously, so one object serves every read). */
  readonly #readHeader: RecordHeader = { type: 0, flags: 0, volume: 0, index: 0, gen: 0, length: 0 }
  /** Buffers of multi-block reads, reused once their values are released (see releaseValues). */
  readonly #readBuffers = new ReadBuffers()
  readonly #relocateReads: boolean
  readonly #relocator = new Relocator()

  constructor (options: FileBlockStoreOptions) {
    super()
    // A built-in store: GalleonFS.open() uses it without the guard around users' stores (a
    // subclass's overrides are a user's code, and get the guard).
    vouchForBlockStore(this, FileBlockStore)
    const settings = checkOptions(options)
    this.#syncReadMaxBytes = settings.syncReadMaxBytes
    this.#relocateReads = settings.relocateScatteredReads
    this.#state = new StoreState(settings, () => { maybeScheduleCompaction(this.#state) })
  }

  /**
   * Number of fsync/fdatasync calls on segment files that batches or `sync()` waited for, since the
   * store was constructed (for group-commit checks). Background syncs are counted apart.
   */
  get syncCount (): number { return this.#state.syncCount }

  /**
   * Block reads made so far on the event loop's thread (`sync`, from the page cache) and through the
   * thread pool (`pool`); see `syncReadMaxBytes`.
   */
  get readCalls (): { sync: number, pool: number } { return { sync: this.#readMode.syncReads, pool: this.#readMode.poolReads } }

  /** Number of background fdatasync calls that bound the unsynced bytes of the active segment. */
  get writebackSyncCount (): number { return this.#state.writebackSyncs }

  /** The last error of background work not taken by `onBackgroundError`, if any. */
  get lastBackgroundError (): GalleonError | undefined { return this.#state.lastBackgroundError }

  /**
   * Runs a compaction pass now and resolves when it is done: every sealed segment whose live ratio is
   * below `compactionThreshold` (the default 0.4 when background compaction is disabled with 0) is
   * copied forward and deleted. Runs after background work already under way; rejects with the error
   * of a failed compaction. Segments that background compaction could not read are tried again now,
   * whatever their back-off; one that still cannot be read is kept (the pass goes on with the
   * others) and the call rejects with IO_ERROR naming it.
   */
  async compact (): Promise<void> {
    this.assertOpen()
    // A threshold of 0 turns off only the background work: with it, a pass would never pick anything.
    const threshold = this.#state.compactionThreshold > 0 ? this.#state.compactionThreshold : DEFAULT_COMPACTION_THRESHOLD
    // Only segments that exist now: under sustained writes new victims keep appearing, and a pass
    // that chased them would never resolve.
    const newestId = this.#state.tail.id
    const kept = await maintain(this.#state, async () => await compactPass(this.#state, threshold, newestId, true))
    const first = kept[0]
    if (first === undefined) return
    if (kept.length === 1) throw first
    throw new GalleonError(first.code, `compaction kept ${kept.length} segments: ${kept.map((err) => err.message).join('; ')}`, { cause: first })
  }

  /**
   * Segments compaction had to keep as they are, with every block in them: unreadable ones (an I/O
   * error; tried again after a back-off of 1 minute, doubling up to 1 hour, see the `clock` option)
   * and damaged ones (not tried again until the store is reopened). Also in `stats().faults`.
   */
  get faults (): BlockStoreFault[] {
    const faults: BlockStoreFault[] = []
    for (const segment of this.#state.segments.values()) {
      const fault = segment.fault
      if (fault === undefined) continue
      faults.push({
        what: segment.path,
        code: fault.error.code,
        message: fault.error.message,
        since: new Date(fault.since).toISOString(),
        attempts: fault.attempts,
        retryAt: Number.isFinite(fault.retryAt) ? new Date(fault.retryAt).toISOString() : null
      })
    }
    return faults
  }

  // ---- lifecycle -----------------------------------------------------------------------------------

  protected async _open (): Promise<void> {
    resetState(this.#state)
    const location = this.#state.location
    try {
      await makeDirectoriesDurably(location)
    } catch (err) {
      throw wrapIo(err, `could not create the block store directory ${location}`)
    }
    this.#lock = await lockDirectory(location).catch((err: unknown) => { throw wrapIo(err, `could not lock ${location}`) })
    try {
      await recover(this.#state)
    } catch (err) {
      await this.#releaseResources()
      throw err
    }
    this.#state.compactionWanted = true
    maybeScheduleCompaction(this.#state)
  }

  protected async _close (): Promise<void> {
    this.#state.closing = true
    this.#relocator.clear()
    let failure: unknown
    try {
      // Compaction and the writer feed each other (compaction queues batches, the writer seals
      // segments that then need hints): wait until both are quiet at the same time.
      for (;;) {
        const maintenance = this.#state.maintenance
        await maintenance
        await whenWriterIdle(this.#state)
        if (maintenance === this.#state.maintenance && !this.#state.writerActive) break
      }
      if (this.#state.failure === undefined && this.#state.dirty) {
        this.#state.dirty = false
        await this.#state.current.handle?.datasync()
        this.#state.syncCount++
      }
    } catch (err) {
      failure = wrapIo(err, `could not flush the block store at ${this.#state.location}`)
    }
    // A failed background sync may have lost batches acknowledged without sync: close() says so.
    if (failure === undefined && this.#state.writebackError !== undefined) {
      failure = wrapIo(this.#state.writebackError, `a background sync of the block store at ${this.#state.location} failed, so batches written without sync may be lost; reopen it (recovery keeps what reached the disk)`)
    }
    if (failure === undefined && this.#state.failure === undefined) {
      // Best effort: everything is synced already. Without the marker (a full disk, a directory
      // removed under the store) the next open only treats damage in the active segment's last
      // batch as a torn write, as after a crash.
      await markCleanClose(this.#state).catch(() => {})
    }
    try {
      await this.#releaseResources()
    } catch (err) {
      failure ??= wrapIo(err, `could not close the block store at ${this.#state.location}`)
    }
    if (failure !== undefined) throw failure
  }

  async #releaseResources (): Promise<void> {
    let failure: unknown
    for (const segment of this.#state.segments.values()) {
      const handle = segment.handle
      segment.handle = undefined
      await whenReadsDone(segment)
      if (handle !== undefined) await handle.close().catch((err: unknown) => { failure ??= err })
    }
    this.#state.segments = new Map()
    this.#state.index = new BlockIndex()
    const lock = this.#lock
    this.#lock = undefined
    if (lock !== undefined) await lock.release().catch((err: unknown) => { failure ??= err })
    if (failure !== undefined) throw failure
  }

  // ---- reads ---------------------------------------------------------------------------------------

  protected async _get (address: BlockAddress, payloadChecked: boolean): Promise<Uint8Array | undefined> {
    const location = this.#state.index.get(address)
    if (location === undefined) return undefined
    const pending = location.data
    if (pending !== undefined) return copyBytes(pending) // a copy: the caller may keep and change it
    const results: Array<Uint8Array | undefined> = [undefined]
    // Not from the pooled buffers: nobody gives a single value back (the engine caches it or copies
    // it), and a pooled buffer of a large block would keep up to twice the record's memory alive.
    await this.#readRun([{ slot: 0, location }], [address], results, HEADER_BYTES + location.length, payloadChecked, false)
    return results[0]
  }

  /**
   * Like `_get` for each address, but records stored next to each other in a segment (a multi-block
   * write puts them there) are read with one call per run of up to MAX_READ_RUN_BYTES.
   */
  protected override async _getMany (addresses: readonly BlockAddress[], payloadChecked: boolean): Promise<Array<Uint8Array | undefined>> {
    const results = new Array<Uint8Array | undefined>(addresses.length).fill(undefined)
    const onDisk: RunItem[] = []
    for (let slot = 0; slot < addresses.length; slot++) {
      const location = this.#state.index.get(addresses[slot] as BlockAddress)
      if (location === undefined) continue
      if (location.data !== undefined) results[slot] = copyBytes(location.data)
      else onDisk.push({ slot, location })
    }
    onDisk.sort((a, b) => a.location.segment - b.location.segment || a.location.offset - b.location.offset)
    // Every read starts in this tick, as in _get: compaction cannot close a file under them.
    const runs: Array<{ start: number, end: number, bytes: number }> = []
    for (let start = 0; start < onDisk.length;) {
      const first = (onDisk[start] as RunItem).location
      let runEnd = first.offset + HEADER_BYTES + first.length
      let end = start + 1
      while (end < onDisk.length) {
        const next = (onDisk[end] as RunItem).location
        const nextEnd = next.offset + HEADER_BYTES + next.length
        if (next.segment !== first.segment || next.offset !== runEnd || nextEnd - first.offset > MAX_READ_RUN_BYTES) break
        runEnd = nextEnd
        end++
      }
      runs.push({ start, end, bytes: runEnd - first.offset })
      start = end
    }
    // Records scattered over many short runs are copied together to the end of the log (see relocation.ts).
    let relocations: RelocationArena | undefined
    if (this.#relocateReads && this.#relocator.wants(onDisk.length, runs.length)) {
      let bytes = 0
      for (const { location } of onDisk) bytes += location.length
      relocations = new RelocationArena(bytes)
    }
    if (this.#relocateReads && onDisk.length >= RELOCATE_MIN_RECORDS) this.#relocator.checkRoom(this.#state)
    // Several runs (records that random writes scattered over the log): those that may be read
    // synchronously are read now into one shared buffer, with no buffer and no promise of their own.
    const { done, streak } = runs.length > 1 ? this.#readRunsNow(runs, onDisk, addresses, results, payloadChecked, relocations) : { done: 0, streak: false }
    if (streak) {
      // The event loop has not turned for MAX_SYNC_STREAK_MS: it gets its turn, then the rest is
      // looked up again (compaction may move or delete records meanwhile) and read. Not through the
      // thread pool: each 4 KiB read there costs this thread several times a synchronous one.
      const rest: number[] = []
      for (const { start, end } of runs.slice(done)) for (let k = start; k < end; k++) rest.push((onDisk[k] as RunItem).slot)
      await loopTurn()
      // close() may have begun during the turn (it closes the segment files, then drops the
      // index): the rest fails as any call on a closing store does, not as damaged or missing.
      this.assertOpen()
      const values = await this._getMany(rest.map((slot) => addresses[slot] as BlockAddress), payloadChecked)
      for (let k = 0; k < rest.length; k++) results[rest[k] as number] = values[k]
    } else {
      const reads = runs.slice(done).map(async ({ start, end, bytes }) => { await this.#readRun(onDisk.slice(start, end), addresses, results, bytes, payloadChecked, true, relocations) })
      await Promise.all(reads)
    }
    if (relocations !== undefined) this.#relocator.relocate(this.#state, relocations.records)
    return results
  }

  /** Records that multi-block reads found scattered and copied to the end of the log (see relocation.ts). */
  get relocatedRecords (): number { return this.#relocator.relocated }

  /**
   * Reads `runs` in order, each synchronously into its part of a buffer shared with the runs next to
   * it (up to SHARED_READ_BYTES; pooled when large enough, lent to the caller as #readRun's are),
   * until one may not be read synchronously (see #readNow).
   * Returns how many runs it read, and whether it stopped because the event loop has not turned for
   * too long (else a run may not be read synchronously now); the caller reads the others.
   * Measured on the 2-vCPU development VM, 1 MiB reads (4 in flight) of a 256 MiB volume whose
   * records 4 KiB random writes had scattered (about 167 runs per MiB): with a buffer and an awaited
   * call per run, and the thread pool for every run once the loop had gone 5 ms without a turn,
   * 2.3-2.8 ms of CPU per MiB read (342-398 MiB/s); this way 1.2-1.5 ms (408-820 MiB/s), in two
   * alternating pairs on a loaded machine.
   */
  #readRunsNow (runs: ReadonlyArray<{ start: number, end: number, bytes: number }>, onDisk: readonly RunItem[], addresses: readonly BlockAddress[], results: Array<Uint8Array | undefined>, payloadChecked: boolean, relocations: RelocationArena | undefined): { done: number, streak: boolean } {
    // Buffers of up to SHARED_READ_BYTES, taken as the runs need them: a read that stops at a
    // streak's end leaves at most the rest of one unused (the runs it left get buffers of their own).
    let shared: Uint8Array | undefined
    let views: Uint8Array[] = []
    let at = 0
    let done = 0
    let streak = false
    try {
      for (; done < runs.length; done++) {
        if (this.#syncStreak.tooLong(performance.now())) {
          streak = true
          break
        }
        const { start, end, bytes } = runs[done] as { start: number, end: number, bytes: number }
        const items = onDisk.slice(start, end)
        const { segment, handle } = this.#segmentOf(items, addresses)
        if (shared === undefined || at + bytes > shared.byteLength) {
          // Reused once the caller has released every view (see ReadBuffers).
          if (shared !== undefined) this.#readBuffers.lend(shared, views)
          let want = 0
          for (let k = done; k < runs.length && (k === done || want + (runs[k] as { bytes: number }).bytes <= SHARED_READ_BYTES); k++) want += (runs[k] as { bytes: number }).bytes
          shared = this.#readBuffers.take(want)
          views = []
          at = 0
        }
        const target = shared.subarray(at, at + bytes)
        let read: number | undefined
        try {
          read = this.#readNow(handle, target, (items[0] as RunItem).location.offset)
        } catch (err) {
          throw wrapIo(err, `could not read ${segment.path}`)
        }
        if (read === undefined) break
        this.#checkRun(items, addresses, results, target, read, segment, payloadChecked, relocations, views)
        at += bytes
      }
    } catch (err) {
      // The buffer of a read that failed is left to the collector; those lent before stay lent.
      shared = undefined
      throw err
    } finally {
      if (shared !== undefined) this.#readBuffers.lend(shared, views)
    }
    return { done, streak }
  }

  /** The segment and open file of the first record of `items` (CORRUPTION if it is gone). */
  #segmentOf (items: readonly RunItem[], addresses: readonly BlockAddress[]): { segment: Segment, handle: FileHandle } {
    const first = (items[0] as RunItem).location
    const segment = this.#state.segments.get(first.segment)
    const handle = segment?.handle
    if (segment === undefined || handle === undefined) {
      throw new GalleonError('CORRUPTION', `block ${addressKey(addresses[(items[0] as RunItem).slot] as BlockAddress)} points to segment ${first.segment}, which is gone; reopen the store`)
    }
    return { segment, handle }
  }

  /**
   * Reads `target.byteLength` bytes at `position` synchronously, on this thread, if reads are made
   * so now (see SyncReadGovernor and LoopStreak) and the read is small enough; undefined if not (the
   * caller reads through the thread pool). Every such read is timed, a failed one too: a failing
   * device may take long to say so.
   */
  #readNow (handle: FileHandle, target: Uint8Array, position: number): number | undefined {
    const bytes = target.byteLength
    const started = performance.now()
    if (bytes > this.#syncReadMaxBytes || !this.#readMode.synchronous(started) || this.#syncStreak.tooLong(started)) return undefined
    try {
      return readFullySync(handle.fd, target, 0, bytes, position)
    } finally {
      this.#readMode.took(started, performance.now() - started, bytes)
    }
  }

  /**
   * Reads `bytes` bytes holding the adjacent records of `items` (in offset order) with one call,
   * checks each record's header and (unless the caller checks the payload itself) crc, and stores
   * each payload in `results[slot]`. `pooled`: read into a buffer of #readBuffers (reused once the
   * caller releases every value), else into one of exactly `bytes`.
   */
  async #readRun (items: readonly RunItem[], addresses: readonly BlockAddress[], results: Array<Uint8Array | undefined>, bytes: number, payloadChecked: boolean, pooled = true, relocations?: RelocationArena): Promise<void> {
    const { segment, handle } = this.#segmentOf(items, addresses)
    const position = (items[0] as RunItem).location.offset
    // Not zero-filled: every byte handed out below was read from the file (a short read throws).
    const run = pooled ? this.#readBuffers.take(bytes) : new Uint8Array(Buffer.allocUnsafeSlow(bytes).buffer, 0, bytes)
    let read: number
    try {
      // Called in the same tick as the index lookup, so compaction cannot close the file under it.
      const now = this.#readNow(handle, run, position)
      if (now !== undefined) {
        read = now
      } else {
        this.#readMode.pooled()
        read = await poolRead(segment, async () => await readFully(handle, run, 0, bytes, position))
      }
    } catch (err) {
      throw wrapIo(err, `could not read ${segment.path}`)
    }
    const views: Uint8Array[] = []
    this.#checkRun(items, addresses, results, run, read, segment, payloadChecked, relocations, views)
    // Reused once the caller has released every view (a run that failed above is left to the collector).
    this.#readBuffers.lend(run, views)
  }

  /**
   * Checks the records of `items` in `run` (read from the first one's offset; `read` bytes of it
   * were read) and puts a view of each payload in `results[slot]` and in `views`.
   * Whole records, headers included, are read so their crcs can be checked: a sealed segment loaded
   * from its hint is never scanned, and without this check damage inside it would be returned as
   * data. A caller that checks each value against its own checksum over value and address (the
   * engine) gets the header checks only: the record is the one asked for, and the crc pass over the
   * payload would repeat the caller's (a third of the CPU time of a 1 MiB sequential read).
   */
  #checkRun (items: readonly RunItem[], addresses: readonly BlockAddress[], results: Array<Uint8Array | undefined>, run: Uint8Array, read: number, segment: Segment, payloadChecked: boolean, relocations: RelocationArena | undefined, views: Uint8Array[]): void {
    const first = (items[0] as RunItem).location
    const source = Buffer.from(run.buffer, run.byteOffset, run.byteLength)
    const header = this.#readHeader
    for (const { slot, location } of items) {
      const address = addresses[slot] as BlockAddress
      const at = location.offset - first.offset
      if (at + HEADER_BYTES + location.length > read) {
        throw new GalleonError('CORRUPTION', `segment ${segment.path} ends before the block stored at offset ${location.offset}; reopen the store to recover`)
      }
      if (!decodeHeader(source, at, header, segment.seed !== undefined) || header.type !== TYPE_PUT || header.length !== location.length ||
        header.volume !== address.volume || header.index !== address.index || header.gen !== address.gen) {
        throw new GalleonError('CORRUPTION', `segment ${segment.path} does not hold block ${addressKey(address)} at offset ${location.offset} (damaged record header); ` +
          'the stored data was not returned: restore it from a backup')
      }
      if (!payloadChecked && !recordCrcMatches(source, at, location.length, segment.seed)) {
        throw new GalleonError('CHECKSUM_MISMATCH', `block ${addressKey(address)} in segment ${segment.path} at offset ${location.offset} failed its checksum; ` +
          'the stored data is damaged and was not returned: restore it from a backup')
      }
      // Views into one buffer that only this call's caller holds.
      const view = run.subarray(at + HEADER_BYTES, at + HEADER_BYTES + location.length)
      views.push(view)
      results[slot] = view
      // A copy of a damaged record would carry a fresh crc: only records whose crc holds move.
      if (relocations !== undefined && (!payloadChecked || recordCrcMatches(source, at, location.length, segment.seed))) {
        relocations.add(slot, address, location.segment, location.offset, view)
      }
    }
  }

  /**
   * The caller is done with these values of get/getMany (it copied what it needed and keeps no
   * view): the buffers of multi-block reads they came from may be reused for later reads. Values
   * from elsewhere, or released before, are ignored.
   */
  releaseValues (values: ReadonlyArray<Uint8Array | undefined>): void {
    this.#readBuffers.release(values)
  }

  protected async * _addresses (volume: number | undefined): AsyncIterable<BlockAddress> {
    // A snapshot of the addresses, so writes during the iteration neither break it nor get listed twice.
    for (const address of this.#state.index.addresses(volume)) {
      if (this.#state.index.has(address)) yield address
    }
  }

  /**
   * The segment list against the directory, now (see BlockStore.checkFiles and file-check.ts): a
   * listed segment file gone, replaced or cut short from outside, with the blocks it held; a segment
   * file not listed; the list gone, damaged or not naming the segments.
   */
  async checkFiles (options?: { volume?: number }): Promise<BlockStoreFileProblem[]> {
    this.assertOpen()
    return await checkFiles(this.#state, options?.volume)
  }

  protected async _stats (): Promise<BlockStoreStats> {
    let storedBytes = 0
    for (const segment of this.#state.segments.values()) storedBytes += Math.max(segment.size, segment.fileBytes, segment.spare?.bytes ?? 0)
    for (const spare of this.#state.spares) storedBytes += spare.bytes
    return { blocks: this.#state.index.size, liveBytes: this.#state.liveBytes, storedBytes, syncs: this.#state.syncCount, faults: this.faults }
  }

  // ---- writes --------------------------------------------------------------------------------------

  protected _batch (ops: readonly BlockOp[], sync: boolean): Promise<void> {
    return enqueue(this.#state, ops, sync)
  }

  protected async _sync (): Promise<void> {
    await enqueue(this.#state, [], true)
  }

  protected override async _deleteVolume (volume: number): Promise<void> {
    // Collected and queued in one tick, so the deletes land exactly between the batches called
    // before and after, as one atomic batch of tombstones. Queued even when empty: the volume may
    // look empty only because earlier batches (deletes not yet written) emptied it, and this must
    // not resolve before they are written.
    const ops: BlockOp[] = this.#state.index.addresses(volume).map((address) => ({ type: 'del', address }))
    await enqueue(this.#state, ops, false)
  }
}

/** Backend descriptor: name, availability, and a factory. */
export const fileBackend = {
  name: 'file',
  isAvailable: async (): Promise<boolean> => true,
  create: (options: FileBlockStoreOptions): FileBlockStore => new FileBlockStore(options)
}
