// File block store: a log-structured (Bitcask-style) store of block versions in append-only segment
// files with an in-memory index. It is also the engine's write-ahead journal, so every write path
// here is ordered for crash safety first, and recovery tells a torn tail (cut off) from corruption
// (reported, never cut off).

import { randomBytes } from 'node:crypto'
import { mkdir, open, readFile, readdir, rename, stat, unlink, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { AbstractBlockStore, addressKey, isNoSpaceError, wrapIo } from '../../src/abstract-block-store.js'
import { BlockIndex } from './block-index.js'
import { Address, MAX_BLOCK_VALUE_BYTES, type BlockAddress, type BlockOp, type BlockStoreStats, type BlockStoreSupports } from '../../src/drivers.js'
import { writeFileAtomically } from '../../src/durable-files.js'
import { GalleonError, copyBytes, describe } from '../../src/errors.js'
import { lockDirectory, type DirectoryLock } from './lock.js'
import { CLEAN_MARKER_TEMPORARY_NAME, readCleanMarker, removeCleanMarker, writeCleanMarker, type CleanMarker } from './clean-marker.js'
import {
  FLAG_CONTINUES, HEADER_BYTES, HintBuilder, TYPE_DEL, TYPE_MARK, TYPE_PUT, decodeHeader, decodeHint, encodeRecordHeader, recordCrcMatches, type RecordHeader
} from './record.js'
import {
  findBatchAfter, hintPath, isCode, isSpareFileName, looksUnwritten, parseHintFileName, parseSegmentFileName, readFully, readFullySync, scanSegment,
  segmentPath, spareFileName, syncDirectory, syncedMarkedAfter, writevFully, writevFullySync
} from './segment.js'
import { SyncReadGovernor } from './sync-reads.js'
import { LoopStreak } from '../../src/loop-streak.js'

/** Options of the file block store. */
export interface FileBlockStoreOptions {
  /** Directory of the store; created (with its parents) on open. */
  location: string
  /**
   * Size at which the active segment is sealed and a new one started (default 64 MiB). A segment
   * exceeds it only when a single batch is larger, since a batch never spans two segments.
   */
  segmentBytes?: number
  /**
   * A sealed segment whose live bytes fall below this fraction of its size is compacted: its live
   * records are copied forward and the file deleted (default 0.4; 0 disables background compaction,
   * leaving it to `compact()`). Lower values copy less (each byte reclaimed costs threshold /
   * (1 - threshold) bytes of copying: 0.67 at 0.4, 1 at 0.5) and keep more dead records on disk.
   */
  compactionThreshold?: number
  /**
   * Write groups up to this many bytes are copied into the page cache with a synchronous write()
   * on the event loop's thread; larger ones go to libuv's thread pool (default 2 MiB, see
   * DEFAULT_SYNC_WRITE_MAX_BYTES). 0 sends every write to the thread pool: the event loop never
   * waits for a write() (a disk so slow that the kernel throttles writers), at a cost in throughput.
   */
  syncWriteMaxBytes?: number
  /**
   * Reads of up to this many bytes (one call per run of adjacent records) are made with a
   * synchronous pread() on the event loop's thread while such reads stay quick, i.e. come from the
   * page cache (default 2 MiB): a cached read costs a copy, where the thread pool adds a 40-55 us
   * round trip. Reads that take device time (about half of the recent ones, or two very slow ones
   * in a row) send reads to libuv's thread pool for a second at a time; see sync-reads.ts. Meanwhile the event loop waits
   * for the device: 0 sends every read to the thread pool, so that it never does. Use 0 where
   * reads that miss the page cache are the rule and many run at once (they then overlap in the
   * pool), where the device may hang, and always when the storage sits on a file system served by
   * this same process (a FUSE mount or NBD device of its own volumes): a synchronous read would wait
   * for itself.
   */
  syncReadMaxBytes?: number
  /**
   * How many emptied segment files (compacted away) are kept, renamed, to become later segments
   * instead of new files (default 2; 0 deletes them). Overwriting a file's existing pages costs the
   * kernel far less than appending to a new file (no page allocation, no block allocation, and an
   * fdatasync with no size or extent change to commit): about 0.07 against 0.25 to 2.6 ms per MiB
   * copied, and 120-180 against 230-320 µs per 32 KiB write+fdatasync, measured on the 2-vCPU
   * development VM. Files are kept only while all of them together hold at most a quarter of the
   * live bytes or one segment's worth, whichever is more, and never more than the live bytes (so a
   * store whose data is deleted gives its disk space back), and count in `storedBytes`.
   */
  spareSegments?: number
  /**
   * Receives errors of background work (hint files, compaction) that no caller is waiting for.
   * Without it (or when it throws) they are kept in `lastBackgroundError`. Either way the data stays
   * correct: a failed compaction leaves the old segment in place.
   */
  onBackgroundError?: (err: GalleonError) => void
}

const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
// Bitcask's default merge trigger is 60% fragmentation, the same point. Measured on 4 KiB random
// overwrites of a 64 MiB volume, 10 s: 0.5 -> 31.5k writes/s with 2.05x the live bytes on disk,
// 0.4 -> 36.4k (2.32x), 0.3 -> 40.0k (2.46x).
const DEFAULT_COMPACTION_THRESHOLD = 0.4
// One write call carries at most this much (unless a single batch is larger): big enough to amortise
// the syscall, small enough to be written synchronously (DEFAULT_SYNC_WRITE_MAX_BYTES) without holding up
// the event loop for long. 256 KiB measured no faster on 4 KiB random writes.
const GROUP_BYTES = 64 * 1024
// Write calls in flight at once. Their bytes land at reserved offsets, so they may complete in any
// order; batches are still acknowledged in call order, and a sync covers every write before it.
const MAX_WRITES_IN_FLIGHT = 4
// A group up to this size is written with a synchronous write() on the event loop's thread; larger
// ones (compaction's full batches, COMPACTION_BATCH_BYTES and more) go to the thread pool. Copying into
// the page cache is quick, and measured on 2 cores (4 KiB random writes at 32 in flight, file
// backend): handing a 28 KiB group to the thread pool costs the event loop as much time as writing
// it (30-40 us, the woken pool thread preempting it), while the caller also waits for the round
// trip: 37-44k writes/s with the pool, 50-58k written synchronously. A 1 MiB write() (256 blocks,
// about 1.05 MiB with headers) is written synchronously too: 250-320 MiB/s against 240-290 through
// the pool, with less CPU per MiB.
const DEFAULT_SYNC_WRITE_MAX_BYTES = 2 * 1024 * 1024
// Reads up to this size are tried on the event loop's thread (see sync-reads.ts).
const DEFAULT_SYNC_READ_MAX_BYTES = 2 * 1024 * 1024
const DEFAULT_SPARE_SEGMENTS = 2
// Once this much is written to the active segment without a sync, an fdatasync starts in the
// background (nothing waits for it). Without it, all of a segment's bytes were left for the fsync
// that seals it, during which nothing could be written: 30-40 ms per 64 MiB segment, 14% of the
// time under sustained 4 KiB random writes. It also bounds what a durable batch's sync must write.
const WRITEBACK_SYNC_BYTES = 4 * 1024 * 1024
// getMany() reads at most this much with one call.
const MAX_READ_RUN_BYTES = 4 * 1024 * 1024
// Compaction copies in batches of about this size, so user writes interleave with it.
const COMPACTION_BATCH_BYTES = 2 * 1024 * 1024

/** Where the current version of a block lives. `data` holds the value until it has been written. */
class BlockLocation {
  constructor (
    readonly gen: number,
    readonly segment: number,
    /** Offset of the record (not of the payload) in the segment. */
    readonly offset: number,
    readonly length: number,
    public data: Uint8Array | undefined
  ) {}
}

/** The entry of a mark record in a PendingBatch (its fields: 0, the synced offset it states, 0). */
const MARK = new BlockLocation(0, -1, 0, 0, undefined)

/** In-memory state of one segment file. */
class Segment {
  /** Open from the moment the writer creates the file (or open() finds it) until it is deleted. */
  handle: FileHandle | undefined = undefined
  /** Bytes of header and payload of records that are the current version of their block. */
  liveBytes = 0
  /** Bytes of tombstone records, which matter only while an older segment may hold what they delete. */
  tombstoneBytes = 0
  /** No record will ever be appended again. */
  sealed = false
  /** Compaction found this segment unusable; never pick it again in this session. */
  skipCompaction = false
  /** Salted (a reused file, see record.ts): the crc seed of its records; undefined for an unsalted segment. */
  seed: number | undefined = undefined
  /** A spare file this (not yet created) segment will be made from when the writer rolls to it. */
  spare: Spare | undefined = undefined
  /** Bytes of the file when it is longer than `size` (a reused file holding its earlier incarnations). */
  fileBytes = 0
  /** Salted segments: bytes known to be synced, and the most a mark record already states. */
  syncedBytes = 0
  markedBytes = 0
  /** End of the last batch acknowledged in this segment (so written before any later sync). */
  acknowledgedBytes = 0

  constructor (
    readonly id: number,
    readonly path: string,
    /** Bytes of the file, including records queued for it but not yet written. */
    public size: number,
    /** Entries for its hint file, kept until the hint is written; undefined once it is (or when not needed). */
    public hint: HintBuilder | undefined
  ) {}
}

/** An emptied segment file kept to become a later segment. */
interface Spare {
  path: string
  bytes: number
}

/** A batch waiting for the writer, already applied to the index. */
interface PendingBatch {
  /** Segment its records go to; -1 for a pure sync request. */
  segment: number
  /** Offset of its first record in that segment. */
  offset: number
  bytes: number
  /** volume, index and gen of each op, captured at call time. */
  fields: number[]
  /** Per op: the put's location (its payload in `data`), undefined for a delete, MARK for a mark record. */
  entries: Array<BlockLocation | undefined>
  sync: boolean
  resolve: () => void
  reject: (err: unknown) => void
}

/** Queued batches `head..end` being written by one call; acknowledged in order once `done`. */
interface WriteGroup {
  head: number
  end: number
  sync: boolean
  done: boolean
  /** Why the write failed, once done. */
  error: unknown
  /** Settles (never rejects) when the write has finished. */
  written: Promise<void>
}

/** A record `getMany` reads from disk, and where its result goes. */
interface RunItem {
  slot: number
  location: BlockLocation
}

/** One record a compaction is about to copy forward. */
interface Move {
  address: BlockAddress
  /** Record offset in the segment being compacted, to re-check that the index still points there. */
  offset: number
  /** The payload of a put, undefined for a tombstone. */
  data: Uint8Array | undefined
}

class CompactionAborted extends Error {}

function noop (): void {}

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

  readonly #location: string
  readonly #segmentBytes: number
  readonly #compactionThreshold: number
  readonly #syncWriteMaxBytes: number
  readonly #syncReadMaxBytes: number
  readonly #readMode = new SyncReadGovernor()
  readonly #syncStreak = new LoopStreak()
  readonly #spareSegments: number
  /** Spare files (emptied segment files kept for reuse), ready to become segments. */
  #spares: Spare[] = []
  readonly #onBackgroundError: ((err: GalleonError) => void) | undefined

  #lock: DirectoryLock | undefined
  #index = new BlockIndex<BlockLocation>()
  #liveBytes = 0
  /** Every segment, in ascending id order (Map keeps insertion order and ids only grow). */
  #segments = new Map<number, Segment>()
  /** Segment that receives newly queued batches (may be ahead of the writer's). */
  #tail!: Segment
  /** Segment the writer appends to. */
  #current!: Segment
  /** Bytes written to `#current` since its last fdatasync. */
  #dirty = false

  /** Batches in call order: `..#queueHead` acknowledged, `..#issued` being written, the rest waiting. */
  #queue: Array<PendingBatch | undefined> = []
  #queueHead = 0
  #issued = 0
  /** Write groups not yet acknowledged, oldest first. */
  #inflight: WriteGroup[] = []
  /** Offset in `#current` up to which bytes have been handed to write calls. */
  #issuedBytes = 0
  #writerActive = false
  /** Wakes the writer when it waits for a write to finish or for batches to arrive. */
  #wake: (() => void) | undefined
  #wakeScheduled = false
  #idleWaiters: Array<() => void> = []
  #failure: GalleonError | undefined
  #syncCount = 0
  /** Bytes written to `#current` since the last sync of it started. */
  #unsyncedBytes = 0
  /** The background fdatasync of `#current` under way (see WRITEBACK_SYNC_BYTES); never rejects. */
  #writeback: Promise<void> | undefined
  /** Why a background fdatasync failed; the writer stops with it. */
  #writebackError: unknown
  #writebackSyncs = 0

  /** Background work (hint files, compaction), one task at a time. */
  #maintenance: Promise<void> = Promise.resolve()
  #compactionScheduled = false
  /** Something changed that may have made a sealed segment worth compacting. */
  #compactionWanted = false
  #closing = false
  #lastBackgroundError: GalleonError | undefined
  /** A clean-shutdown marker file was found on open and has not been removed yet. */
  #cleanMarkerFound = false
  /** Scratch header for `_get` (filled and checked synchronously, so one object serves every read). */
  readonly #readHeader: RecordHeader = { type: 0, flags: 0, volume: 0, index: 0, gen: 0, length: 0 }

  constructor (options: FileBlockStoreOptions) {
    super()
    if (options === null || typeof options !== 'object' || typeof options.location !== 'string' || options.location.length === 0) {
      throw new GalleonError('INVALID_ARGUMENT', `the file block store needs { location: '<directory>' }, got ${describe(options)}`)
    }
    const {
      segmentBytes = DEFAULT_SEGMENT_BYTES, compactionThreshold = DEFAULT_COMPACTION_THRESHOLD,
      syncWriteMaxBytes = DEFAULT_SYNC_WRITE_MAX_BYTES, syncReadMaxBytes = DEFAULT_SYNC_READ_MAX_BYTES, spareSegments = DEFAULT_SPARE_SEGMENTS
    } = options
    if (!Number.isSafeInteger(segmentBytes) || segmentBytes <= 0) {
      throw new GalleonError('INVALID_ARGUMENT', `segmentBytes must be a positive integer, got ${describe(segmentBytes)}`)
    }
    if (typeof compactionThreshold !== 'number' || !(compactionThreshold >= 0 && compactionThreshold <= 1)) {
      throw new GalleonError('INVALID_ARGUMENT', `compactionThreshold must be a number from 0 to 1, got ${describe(compactionThreshold)}`)
    }
    if (!Number.isSafeInteger(syncWriteMaxBytes) || syncWriteMaxBytes < 0) {
      throw new GalleonError('INVALID_ARGUMENT', `syncWriteMaxBytes must be a non-negative integer (0: every write through the thread pool), got ${describe(syncWriteMaxBytes)}`)
    }
    if (!Number.isSafeInteger(syncReadMaxBytes) || syncReadMaxBytes < 0) {
      throw new GalleonError('INVALID_ARGUMENT', `syncReadMaxBytes must be a non-negative integer (0: every read through the thread pool), got ${describe(syncReadMaxBytes)}`)
    }
    if (!Number.isSafeInteger(spareSegments) || spareSegments < 0) {
      throw new GalleonError('INVALID_ARGUMENT', `spareSegments must be a non-negative integer (0: delete emptied segment files), got ${describe(spareSegments)}`)
    }
    this.#location = options.location
    this.#segmentBytes = segmentBytes
    this.#syncWriteMaxBytes = syncWriteMaxBytes
    this.#syncReadMaxBytes = syncReadMaxBytes
    this.#spareSegments = spareSegments
    this.#compactionThreshold = compactionThreshold
    this.#onBackgroundError = options.onBackgroundError
  }

  /**
   * Number of fsync/fdatasync calls on segment files that batches or `sync()` waited for, since the
   * store was constructed (for group-commit checks). Background syncs are counted apart.
   */
  get syncCount (): number { return this.#syncCount }

  /**
   * Block reads made so far on the event loop's thread (`sync`, from the page cache) and through the
   * thread pool (`pool`); see `syncReadMaxBytes`.
   */
  get readCalls (): { sync: number, pool: number } { return { sync: this.#readMode.syncReads, pool: this.#readMode.poolReads } }

  /** Number of background fdatasync calls that bound the unsynced bytes of the active segment. */
  get writebackSyncCount (): number { return this.#writebackSyncs }

  /** The last error of background work not taken by `onBackgroundError`, if any. */
  get lastBackgroundError (): GalleonError | undefined { return this.#lastBackgroundError }

  /**
   * Runs a compaction pass now and resolves when it is done: every sealed segment whose live ratio is
   * below `compactionThreshold` (the default 0.4 when background compaction is disabled with 0) is
   * copied forward and deleted. Runs after background work already under way; rejects with the error
   * of a failed compaction.
   */
  async compact (): Promise<void> {
    this.assertOpen()
    // A threshold of 0 turns off only the background work: with it, a pass would never pick anything.
    const threshold = this.#compactionThreshold > 0 ? this.#compactionThreshold : DEFAULT_COMPACTION_THRESHOLD
    // Only segments that exist now: under sustained writes new victims keep appearing, and a pass
    // that chased them would never resolve.
    const newestId = this.#tail.id
    await this.#maintain(async () => await this.#compactPass(threshold, newestId))
  }

  // ---- lifecycle -----------------------------------------------------------------------------------

  protected async _open (): Promise<void> {
    this.#resetState()
    const location = this.#location
    try {
      await mkdir(location, { recursive: true })
    } catch (err) {
      throw wrapIo(err, `could not create the block store directory ${location}`)
    }
    this.#lock = await lockDirectory(location).catch((err: unknown) => { throw wrapIo(err, `could not lock ${location}`) })
    try {
      await this.#recover()
    } catch (err) {
      await this.#releaseResources()
      throw err
    }
    this.#compactionWanted = true
    this.#maybeScheduleCompaction()
  }

  protected async _close (): Promise<void> {
    this.#closing = true
    let failure: unknown
    try {
      // Compaction and the writer feed each other (compaction queues batches, the writer seals
      // segments that then need hints): wait until both are quiet at the same time.
      for (;;) {
        const maintenance = this.#maintenance
        await maintenance
        await this.#whenWriterIdle()
        if (maintenance === this.#maintenance && !this.#writerActive) break
      }
      if (this.#failure === undefined && this.#dirty) {
        this.#dirty = false
        await this.#current.handle?.datasync()
        this.#syncCount++
      }
    } catch (err) {
      failure = wrapIo(err, `could not flush the block store at ${this.#location}`)
    }
    // A failed background sync may have lost batches acknowledged without sync: close() says so.
    if (failure === undefined && this.#writebackError !== undefined) {
      failure = wrapIo(this.#writebackError, `a background sync of the block store at ${this.#location} failed, so batches written without sync may be lost; reopen it (recovery keeps what reached the disk)`)
    }
    if (failure === undefined && this.#failure === undefined) {
      // Best effort: everything is synced already. Without the marker (a full disk, a directory
      // removed under the store) the next open only treats damage in the active segment's last
      // batch as a torn write, as after a crash.
      await this.#markCleanClose().catch(() => {})
    }
    try {
      await this.#releaseResources()
    } catch (err) {
      failure ??= wrapIo(err, `could not close the block store at ${this.#location}`)
    }
    if (failure !== undefined) throw failure
  }

  #resetState (): void {
    this.#index = new BlockIndex()
    this.#liveBytes = 0
    this.#segments = new Map()
    this.#issuedBytes = 0
    this.#dirty = false
    this.#unsyncedBytes = 0
    this.#writeback = undefined
    this.#writebackError = undefined
    this.#queue = []
    this.#queueHead = 0
    this.#issued = 0
    this.#inflight = []
    this.#spares = []
    this.#wake = undefined
    this.#wakeScheduled = false
    this.#writerActive = false
    this.#idleWaiters = []
    this.#failure = undefined
    this.#maintenance = Promise.resolve()
    this.#compactionScheduled = false
    this.#compactionWanted = false
    this.#closing = false
    this.#cleanMarkerFound = false
  }

  /**
   * Records that everything is synced and the active segment ends at its present size. Called with
   * the writer and background work stopped, so nothing is appended after it in this session.
   */
  async #markCleanClose (): Promise<void> {
    const current = this.#current
    const handle = current.handle
    if (handle === undefined || current !== this.#tail) return
    // A reused file holds its earlier incarnations past what was written: cut off, durably.
    if (current.seed !== undefined && (await handle.stat()).size > current.size) {
      await handle.truncate(current.size)
      await handle.sync()
      current.fileBytes = current.size
    }
    // A tail ahead of the writer, or a file whose size is not what was written, is nothing to vouch for.
    if ((await handle.stat()).size !== current.size) return
    await writeCleanMarker(this.#location, { segment: current.id, size: current.size })
  }

  /** Removes the clean-shutdown marker found on open, before anything changes the active segment. */
  async #dropCleanMarker (): Promise<void> {
    if (!this.#cleanMarkerFound) return
    await removeCleanMarker(this.#location).catch((err: unknown) => { throw wrapIo(err, `could not remove the clean-shutdown marker of ${this.#location}`) })
    this.#cleanMarkerFound = false
  }

  async #releaseResources (): Promise<void> {
    let failure: unknown
    for (const segment of this.#segments.values()) {
      const handle = segment.handle
      segment.handle = undefined
      if (handle !== undefined) await handle.close().catch((err: unknown) => { failure ??= err })
    }
    this.#segments = new Map()
    this.#index = new BlockIndex()
    const lock = this.#lock
    this.#lock = undefined
    if (lock !== undefined) await lock.release().catch((err: unknown) => { failure ??= err })
    if (failure !== undefined) throw failure
  }

  /**
   * Rebuilds the index: sealed segments from their hints (or by scanning them when a hint is missing
   * or invalid), then the last segment by scanning, truncating a torn tail after its last complete
   * batch (see `#scanForRecovery` for what counts as torn). Removes the clean-shutdown marker.
   */
  async #recover (): Promise<void> {
    const location = this.#location
    const names = await readdir(location).catch((err: unknown) => { throw wrapIo(err, `could not list ${location}`) })
    let cleanMarker: CleanMarker | undefined
    try {
      const found = await readCleanMarker(location)
      this.#cleanMarkerFound = found.present
      cleanMarker = found.marker
    } catch (err) {
      throw wrapIo(err, `could not read the clean-shutdown marker of ${location}`)
    }
    const segmentIds: number[] = []
    const segmentSalts = new Map<number, number | undefined>()
    const hintIds = new Set<number>()
    const spares: string[] = []
    for (const name of names) {
      if (isSpareFileName(name)) spares.push(name)
      const parsed = parseSegmentFileName(name)
      if (parsed !== undefined) {
        if (segmentSalts.has(parsed.id)) {
          throw new GalleonError('CORRUPTION', `${location} holds two files for segment ${parsed.id} (${name} and another); move the one that does not belong away, then open again`)
        }
        segmentIds.push(parsed.id)
        segmentSalts.set(parsed.id, parsed.salt)
      }
      const hintId = parseHintFileName(name)
      if (hintId !== undefined) hintIds.add(hintId)
      // A hint or a marker that was being written when the process died.
      if (name.endsWith('.hint.tmp') || name === CLEAN_MARKER_TEMPORARY_NAME) await this.#removeFile(join(location, name))
    }
    segmentIds.sort((a, b) => a - b)
    const lastId = segmentIds[segmentIds.length - 1]
    let removedHints = false
    for (const hintId of hintIds) {
      // Hints of deleted segments (compaction died between the two unlinks) and of the active one
      // (never written by us, but it would go stale as the segment grows) must not be trusted.
      if (!segmentIds.includes(hintId) || hintId === lastId) {
        await this.#removeFile(hintPath(location, hintId))
        hintIds.delete(hintId)
        removedHints = true
      }
    }
    // Spares are kept only beside segments: segment ids restart at 1 in an empty store, and a spare
    // may hold salted records of any id it had. (How many stay is decided once the live bytes are known.)
    spares.sort()
    for (const name of spares) {
      const path = join(location, name)
      if (lastId === undefined) {
        await this.#removeFile(path)
        continue
      }
      try {
        this.#spares.push({ path, bytes: (await stat(path)).size })
      } catch (err) {
        throw wrapIo(err, `could not read ${path}`)
      }
    }
    if (removedHints) await syncDirectory(location).catch((err: unknown) => { throw wrapIo(err, `could not sync ${location}`) })

    for (const id of segmentIds) {
      const salt = segmentSalts.get(id)
      const path = segmentPath(location, id, salt)
      let handle: FileHandle
      try {
        handle = await open(path, 'r+')
      } catch (err) {
        throw wrapIo(err, `could not open segment ${path}`)
      }
      const segment = new Segment(id, path, 0, undefined)
      segment.handle = handle
      this.#segments.set(id, segment)
      try {
        segment.size = segment.fileBytes = (await handle.stat()).size
        segment.seed = salt
        const isLast = id === lastId
        if (!isLast && hintIds.has(id) && await this.#loadHint(segment)) {
          segment.sealed = true
          continue
        }
        // The marker vouches for the active segment only at the size it recorded: appended to or cut
        // since, the file is not what was closed.
        const closedCleanly = isLast && cleanMarker !== undefined && cleanMarker.segment === id && cleanMarker.size === segment.size
        await this.#scanForRecovery(segment, isLast, closedCleanly)
        segment.sealed = !isLast
      } catch (err) {
        throw wrapIo(err, `could not recover segment ${path}`)
      }
    }
    // Gone before open() resolves, so before any append: a marker left on disk while the active
    // segment grows could vouch for a later torn tail.
    await this.#dropCleanMarker()

    if (lastId === undefined) {
      const segment = new Segment(1, segmentPath(location, 1), 0, new HintBuilder())
      try {
        segment.handle = await open(segment.path, 'wx+')
        this.#segments.set(1, segment)
        await syncDirectory(location)
      } catch (err) {
        throw wrapIo(err, `could not create segment ${segment.path}`)
      }
    }
    const last = [...this.#segments.values()].pop() as Segment
    this.#tail = last
    this.#current = last
    this.#issuedBytes = last.size
    // Whatever the last segment holds may still be only in the page cache (a process killed after
    // batches without sync). Count it as unsynced, so the next sync, roll or close fsyncs it: a roll
    // must never seal a segment whose tail a power loss could still tear, or the next open would find
    // a damaged sealed segment and refuse to open.
    this.#dirty = last.size > 0
    if (last.seed !== undefined && last.size > 0) {
      // A salted active segment is synced now, so the next batch's mark states that all of it is:
      // damage in what earlier sessions wrote is then corruption, not a torn tail (no zeros mark
      // unwritten space in a reused file).
      try {
        await (last.handle as FileHandle).datasync()
      } catch (err) {
        throw wrapIo(err, `could not sync ${last.path}`)
      }
      this.#dirty = false
      last.syncedBytes = last.acknowledgedBytes = last.size
      // A mark the recovery cut off (it opened the torn batch) states nothing any more.
      last.markedBytes = 0
    }
    for (const segment of this.#segments.values()) {
      // Sealed segments that had to be scanned get their hint now, so the next open is fast.
      if (segment.sealed && segment.hint !== undefined) this.#scheduleHint(segment)
    }
    await this.#trimSpares().catch(() => {}) // spares are disposable; trimmed again later
  }

  /**
   * Bytes the spares may hold in all: a quarter of the live bytes or one segment's worth, whichever
   * is more, but never more than the live bytes (a store that shrinks lets them go). Without the
   * one segment, a store of less than four segments of live data kept no spare, and deleted every
   * emptied file: on ext4 each such unlink of a 64 MiB file held up every fdatasync on the file
   * system for 15-20 ms (measured on the 2-vCPU VM). Durable 4 KiB random writes at 32 in flight on
   * a 64 MiB volume, once compaction runs: 25.1-25.5k per second with the quarter alone, 30.0-31.9k
   * with one segment kept (three alternating pairs of runs).
   */
  #spareBudget (): number {
    return Math.max(this.#liveBytes / 4, Math.min(this.#segmentBytes, this.#liveBytes))
  }

  #spareBytes (): number {
    let bytes = 0
    for (const spare of this.#spares) bytes += spare.bytes
    return bytes
  }

  /**
   * Deletes spares beyond spareSegments or beyond the spare budget, oldest first. (The writer may
   * take a spare meanwhile: the count is looked at again after each removal.)
   */
  async #trimSpares (): Promise<void> {
    while (this.#spares.length > 0 && (this.#spares.length > this.#spareSegments || this.#spareBytes() > this.#spareBudget())) {
      const spare = this.#spares.shift() as Spare
      await this.#removeFile(spare.path)
    }
  }

  /** Applies a sealed segment's hint file; false when it is unreadable or does not match the segment. */
  async #loadHint (segment: Segment): Promise<boolean> {
    let file: Buffer
    try {
      file = await readFile(hintPath(this.#location, segment.id))
    } catch {
      return false // a hint is only a shortcut: the segment itself is the truth
    }
    return decodeHint(file, segment.size, (entry) => {
      this.#applyRecord(segment, new Address(entry.volume, entry.index, entry.gen), entry.offset, entry.type === TYPE_PUT ? { length: entry.length, data: undefined } : undefined)
    })
  }

  /**
   * Scans a segment into the index. Damage in it (a record that is torn or fails its checks, or a
   * batch that never ends) is corruption, reported with CORRUPTION and left as it is, unless a crash
   * can explain it: only in the last segment, not after a clean close, and with no complete, valid
   * batch after it unless what lies between is unwritten (zeros). A torn tail is truncated: a kill
   * tears only writes not yet acknowledged (batches are acknowledged in log order), a power loss only
   * writes not yet synced, so nothing from the damage on was acknowledged as durable.
   */
  async #scanForRecovery (segment: Segment, isLast: boolean, closedCleanly: boolean): Promise<void> {
    const handle = segment.handle as FileHandle
    const hint = new HintBuilder()
    // Records of the batch being read; applied only when its last record arrives.
    const batch: number[] = []
    // Salted segments: the highest offset a mark states was synced. A valid mark's statement holds
    // whether or not its batch completed (it was made after the sync it reports).
    let synced = 0
    const result = await scanSegment(handle, segment.size, (header, offset) => {
      if (header.type === TYPE_MARK) synced = Math.max(synced, Math.min(header.index, offset))
      batch.push(header.type, header.volume, header.index, header.gen, offset, header.length)
    }, {
      seed: segment.seed,
      onBatchEnd: () => {
      for (let i = 0; i < batch.length; i += 6) {
        const type = batch[i] as number
        const volume = batch[i + 1] as number
        const index = batch[i + 2] as number
        const gen = batch[i + 3] as number
        const offset = batch[i + 4] as number
        const length = batch[i + 5] as number
        if (type === TYPE_MARK) continue
        this.#applyRecord(segment, new Address(volume, index, gen), offset, type === TYPE_PUT ? { length, data: undefined } : undefined)
        hint.add(type, volume, index, gen, offset, length)
      }
      batch.length = 0
      }
    })
    segment.hint = hint
    if (result.committedEnd === segment.size) return
    // A batch that never ended is damaged from its first record; otherwise from the bad record.
    const damagedAt = result.problem === undefined ? result.committedEnd : result.stoppedAt
    const corruption = (why: string): GalleonError => new GalleonError('CORRUPTION',
      `segment ${segment.path} is damaged at offset ${damagedAt} (${result.problem ?? 'incomplete batch'}), ${why}; ` +
      `restore it from a backup, or truncate it to ${result.committedEnd} bytes to keep what precedes the damage` +
      (isLast ? ' (and lose every batch after it)' : ''))
    // Sealed segments were fsynced before the next one was created: a bad record here is damage,
    // not a crash, and dropping it silently could lose acknowledged data.
    if (!isLast) throw corruption('and it is sealed, so no write was cut short')
    if (closedCleanly) throw corruption(`although the store was closed cleanly with this segment at ${segment.size} bytes, so no write was cut short`)
    if (segment.seed !== undefined) {
      // A reused file: past the last write that landed lie the records of its earlier incarnations
      // (invalid under this seed), not zeros, so a valid batch after damage proves nothing (writes
      // in flight at a crash land in any order). What a mark, before or after the damage, says was
      // synced cannot have been cut short.
      synced = Math.max(synced, await syncedMarkedAfter(handle, segment.size, result.stoppedAt, segment.seed))
      if (damagedAt < synced) throw corruption(`below offset ${synced}, which a mark record states had been synced, so no write was cut short`)
    } else if (result.stoppedAt < segment.size) {
      const later = await findBatchAfter(handle, segment.size, result.stoppedAt)
      if (later !== undefined && !await looksUnwritten(handle, result.stoppedAt, later.start)) {
        throw corruption(`yet a complete, valid batch follows at offset ${later.start}, so it is not a write cut short by a crash`)
      }
    }
    // The tail of the active segment after its last complete batch was never acknowledged as durable
    // (or is a batch cut short): drop it so new records follow valid ones.
    await this.#dropCleanMarker()
    await handle.truncate(result.committedEnd)
    await handle.sync()
    segment.size = segment.fileBytes = result.committedEnd
  }

  /**
   * Applies one record at `offset` of `segment` to the index and the space accounting: a put
   * (with its payload while it is not yet written, or undefined) becomes the current version of its
   * address; a tombstone removes it. Returns the new location of a put.
   */
  #applyRecord (segment: Segment, address: BlockAddress, offset: number, put: { length: number, data: Uint8Array | undefined } | undefined): BlockLocation | undefined {
    const previous = this.#index.get(address)
    if (previous !== undefined) this.#forget(previous)
    if (put !== undefined) {
      const location = new BlockLocation(address.gen, segment.id, offset, put.length, put.data)
      this.#index.set(address.volume, address.index, location)
      segment.liveBytes += HEADER_BYTES + put.length
      this.#liveBytes += put.length
      return location
    }
    if (previous !== undefined) this.#index.delete(address)
    segment.tombstoneBytes += HEADER_BYTES
    return undefined
  }

  /** Accounts for a location that is no longer the current version of its block. */
  #forget (location: BlockLocation): void {
    const segment = this.#segments.get(location.segment)
    if (segment !== undefined) {
      segment.liveBytes -= HEADER_BYTES + location.length
      if (segment.sealed) this.#compactionWanted = true
    }
    this.#liveBytes -= location.length
  }

  async #removeFile (path: string): Promise<void> {
    try {
      await unlink(path)
    } catch (err) {
      if (!isCode(err, 'ENOENT')) throw wrapIo(err, `could not remove ${path}`)
    }
  }

  // ---- reads ---------------------------------------------------------------------------------------

  protected async _get (address: BlockAddress, payloadChecked: boolean): Promise<Uint8Array | undefined> {
    const location = this.#index.get(address)
    if (location === undefined) return undefined
    const pending = location.data
    if (pending !== undefined) return copyBytes(pending) // a copy: the caller may keep and change it
    const results: Array<Uint8Array | undefined> = [undefined]
    await this.#readRun([{ slot: 0, location }], [address], results, HEADER_BYTES + location.length, payloadChecked)
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
      const location = this.#index.get(addresses[slot] as BlockAddress)
      if (location === undefined) continue
      if (location.data !== undefined) results[slot] = copyBytes(location.data)
      else onDisk.push({ slot, location })
    }
    onDisk.sort((a, b) => a.location.segment - b.location.segment || a.location.offset - b.location.offset)
    // Every read starts in this tick, as in _get: compaction cannot close a file under them.
    const reads: Array<Promise<void>> = []
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
      reads.push(this.#readRun(onDisk.slice(start, end), addresses, results, runEnd - first.offset, payloadChecked))
      start = end
    }
    await Promise.all(reads)
    return results
  }

  /**
   * Reads `bytes` bytes holding the adjacent records of `items` (in offset order) with one call,
   * checks each record's header and (unless the caller checks the payload itself) crc, and stores
   * each payload in `results[slot]`.
   */
  async #readRun (items: readonly RunItem[], addresses: readonly BlockAddress[], results: Array<Uint8Array | undefined>, bytes: number, payloadChecked: boolean): Promise<void> {
    const first = (items[0] as RunItem).location
    const segment = this.#segments.get(first.segment)
    const handle = segment?.handle
    if (segment === undefined || handle === undefined) {
      throw new GalleonError('CORRUPTION', `block ${addressKey(addresses[(items[0] as RunItem).slot] as BlockAddress)} points to segment ${first.segment}, which is gone; reopen the store`)
    }
    // Whole records, headers included, so their crcs can be checked: a sealed segment loaded from its
    // hint is never scanned, and without this check damage inside it would be returned as data. A
    // caller that checks each value against its own checksum over value and address (the engine)
    // gets the header checks only: the record is the one asked for, and the crc pass over the
    // payload would repeat the caller's (a third of the CPU time of a 1 MiB sequential read).
    // Not zero-filled: every byte handed out below was read from the file (a short read throws).
    const run = new Uint8Array(Buffer.allocUnsafeSlow(bytes).buffer, 0, bytes)
    let read: number
    try {
      // Called in the same tick as the index lookup, so compaction cannot close the file under it.
      const started = performance.now()
      if (bytes <= this.#syncReadMaxBytes && this.#readMode.synchronous(started) && !this.#syncStreak.tooLong(started)) {
        try {
          read = readFullySync(handle.fd, run, 0, bytes, first.offset)
        } finally {
          // A read that failed counts too: a failing device may take long to say so.
          this.#readMode.took(started, performance.now() - started, bytes)
        }
      } else {
        this.#readMode.pooled()
        read = await readFully(handle, run, 0, bytes, first.offset)
      }
    } catch (err) {
      throw wrapIo(err, `could not read ${segment.path}`)
    }
    const source = Buffer.from(run.buffer, run.byteOffset, bytes)
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
      results[slot] = run.subarray(at + HEADER_BYTES, at + HEADER_BYTES + location.length)
    }
  }

  protected async * _addresses (volume: number | undefined): AsyncIterable<BlockAddress> {
    // A snapshot of the addresses, so writes during the iteration neither break it nor get listed twice.
    for (const address of this.#index.addresses(volume)) {
      if (this.#index.has(address)) yield address
    }
  }

  protected async _stats (): Promise<BlockStoreStats> {
    let storedBytes = 0
    for (const segment of this.#segments.values()) storedBytes += Math.max(segment.size, segment.fileBytes, segment.spare?.bytes ?? 0)
    for (const spare of this.#spares) storedBytes += spare.bytes
    return { blocks: this.#index.size, liveBytes: this.#liveBytes, storedBytes, syncs: this.#syncCount }
  }

  // ---- writes --------------------------------------------------------------------------------------

  protected _batch (ops: readonly BlockOp[], sync: boolean): Promise<void> {
    return this.#enqueue(ops, sync)
  }

  protected async _sync (): Promise<void> {
    await this.#enqueue([], true)
  }

  protected override async _deleteVolume (volume: number): Promise<void> {
    // Collected and queued in one tick, so the deletes land exactly between the batches called
    // before and after, as one atomic batch of tombstones.
    const ops: BlockOp[] = this.#index.addresses(volume).map((address) => ({ type: 'del', address }))
    if (ops.length > 0) await this.#enqueue(ops, false)
  }

  /**
   * Applies `ops` to the index at once (so reads see them immediately and batches apply in call
   * order), reserves their place in the log, and queues them for the writer. Everything before the
   * returned promise is synchronous, which compaction relies on.
   */
  #enqueue (ops: readonly BlockOp[], sync: boolean): Promise<void> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure)
    let bytes = 0
    for (const op of ops) bytes += op.type === 'put' ? HEADER_BYTES + op.data.byteLength : HEADER_BYTES
    let segment = this.#tail
    // Roll only between batches: a batch must be whole within one segment to be atomic.
    if (bytes > 0 && segment.size > 0 && segment.size + bytes > this.#segmentBytes) segment = this.#newTailSegment()
    const start = segment.size
    // A salted segment synced further than its marks say gets a new mark, ahead of the batch.
    const mark = bytes > 0 && segment.seed !== undefined && segment.syncedBytes > segment.markedBytes ? 1 : 0
    if (mark === 1) bytes += HEADER_BYTES
    const count = ops.length + mark
    const fields = new Array<number>(count * 3)
    const entries = new Array<BlockLocation | undefined>(count)
    const hint = segment.hint as HintBuilder
    let offset = start
    if (mark === 1) {
      fields[0] = 0
      fields[1] = segment.markedBytes = segment.syncedBytes
      fields[2] = 0
      entries[0] = MARK
      offset += HEADER_BYTES
    }
    for (let i = mark; i < count; i++) {
      const op = ops[i - mark] as BlockOp
      const { volume, index, gen } = op.address
      fields[i * 3] = volume
      fields[i * 3 + 1] = index
      fields[i * 3 + 2] = gen
      if (op.type === 'put') {
        const length = op.data.byteLength
        entries[i] = this.#applyRecord(segment, op.address, offset, { length, data: op.data })
        hint.add(TYPE_PUT, volume, index, gen, offset, length)
        offset += HEADER_BYTES + length
      } else {
        entries[i] = this.#applyRecord(segment, op.address, offset, undefined)
        hint.add(TYPE_DEL, volume, index, gen, offset, 0)
        offset += HEADER_BYTES
      }
    }
    segment.size = offset
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ segment: bytes > 0 ? segment.id : -1, offset: start, bytes, fields, entries, sync, resolve, reject })
      // Deferred to the next turn of the event loop so that batches called together (in the same
      // tick or the continuations of the previous group) are written and synced together.
      if (!this.#writerActive) {
        this.#writerActive = true
        setImmediate(() => { void this.#runWriter() })
      } else if (this.#wake !== undefined && !this.#wakeScheduled) {
        this.#wakeScheduled = true
        setImmediate(() => {
          this.#wakeScheduled = false
          this.#wakeWriter()
        })
      }
    })
  }

  /**
   * The segment after the tail; its file is created (or made from a spare) by the writer when it
   * gets there.
   */
  #newTailSegment (): Segment {
    const id = this.#tail.id + 1
    const spare = this.#spares.pop()
    // A reused file gets a random salt (in its name) for its records, see record.ts.
    const salt = spare === undefined ? undefined : randomBytes(4).readUInt32LE(0) || 1
    const segment = new Segment(id, segmentPath(this.#location, id, salt), 0, new HintBuilder())
    segment.spare = spare
    segment.seed = salt
    this.#segments.set(id, segment)
    this.#tail = segment
    return segment
  }

  #wakeWriter (): void {
    const wake = this.#wake
    this.#wake = undefined
    wake?.()
  }

  /**
   * Writes queued batches in groups, up to MAX_WRITES_IN_FLIGHT at once (a small group is written
   * synchronously, so it is done when `#startGroup` returns), and acknowledges
   * them strictly in call order: a group resolves only when it and every group before it are
   * written, and, if any of them asked for it, synced by one fdatasync issued after all of them
   * finished. A crash can therefore lose only unacknowledged batches, and recovery's torn-tail
   * truncation (at the first gap or damaged record) never drops an acknowledged one.
   */
  async #runWriter (): Promise<void> {
    const queue = this.#queue
    const inflight = this.#inflight
    try {
      for (;;) {
        if (this.#writebackError !== undefined) throw this.#writebackError
        // A finished group that waits for writes still in flight before its sync starts no more.
        while (this.#issued < queue.length && inflight.length < MAX_WRITES_IN_FLIGHT && !this.#holdingForSync()) {
          const first = queue[this.#issued] as PendingBatch
          if (first.segment !== -1 && first.segment !== this.#current.id) {
            // A segment is sealed (and fsynced) only once everything written to it has finished.
            if (inflight.length > 0) break
            await this.#roll(first.segment)
          }
          inflight.push(this.#startGroup())
        }
        if (this.#unsyncedBytes >= WRITEBACK_SYNC_BYTES && this.#writeback === undefined) this.#startWriteback()
        const oldest = inflight[0]
        if (oldest !== undefined && oldest.done && !this.#holdingForSync()) {
          await this.#acknowledge()
          continue
        }
        // The writer is idle only without a background sync, which may still fail, and whose file
        // must stay open until it is done.
        if (oldest === undefined && this.#issued >= queue.length && this.#writeback === undefined) break
        // Wait for a write or the background sync to finish, or for new batches (see #enqueue).
        await new Promise<void>((resolve) => { this.#wake = resolve })
      }
      queue.length = 0
      this.#queueHead = 0
      this.#issued = 0
    } catch (err) {
      this.#fail(err)
      // Let the writes (and a background sync) still running finish before anyone may close their files.
      await Promise.all(inflight.map(async (group) => await group.written))
      await this.#writeback
      inflight.length = 0
    }
    this.#writerActive = false
    const waiters = this.#idleWaiters
    this.#idleWaiters = []
    for (const wake of waiters) wake()
  }

  /**
   * Whether the finished groups at the head of `#inflight` need a sync while later groups are still
   * being written: then they wait for those (already issued, so soon done) and one sync covers
   * them all, rather than a sync now and another for the rest a moment later.
   */
  #holdingForSync (): boolean {
    let sync = false
    for (const group of this.#inflight) {
      if (!group.done) return sync
      if (group.error !== undefined) return false
      sync ||= group.sync
    }
    return false
  }

  /** Acknowledges the finished groups at the head of `#inflight`, syncing first if one needs it. */
  async #acknowledge (): Promise<void> {
    const inflight = this.#inflight
    let count = 0
    let sync = false
    while (count < inflight.length) {
      const group = inflight[count] as WriteGroup
      if (!group.done) break
      if (group.error !== undefined) {
        if (count === 0) throw group.error
        break
      }
      sync ||= group.sync
      count++
    }
    let synced = false
    if (sync && this.#dirty) {
      this.#dirty = false
      this.#unsyncedBytes = 0
      this.#syncCount++
      // With the background sync too: Linux reports a write-back error to only one of the
      // fdatasyncs on a file, so if that one took it, this one returns 0 with the bytes not on disk.
      await Promise.all([(this.#current.handle as FileHandle).datasync(), this.#writeback])
      if (this.#writebackError !== undefined) throw this.#writebackError
      synced = true
    }
    const finished = inflight.splice(0, count)
    const queue = this.#queue
    const end = (finished[count - 1] as WriteGroup).end
    const current = this.#current
    for (let i = this.#queueHead; i < end; i++) {
      const batch = queue[i] as PendingBatch
      if (batch.segment === current.id && batch.bytes > 0) current.acknowledgedBytes = batch.offset + batch.bytes
      // Forget it now, not at the next trim of the queue: kept for thousands of batches, with its
      // locations and callbacks, it outlives young-generation collections and fills the old one.
      queue[i] = undefined
      batch.resolve()
    }
    // Every batch acknowledged so far, in this call or before, was written before the sync started.
    if (synced) current.syncedBytes = current.acknowledgedBytes
    this.#queueHead = end
    if (end > 4096 && end * 2 > queue.length) {
      queue.splice(0, end)
      this.#queueHead = 0
      this.#issued -= end
      for (const group of inflight) {
        group.head -= end
        group.end -= end
      }
    }
    this.#maybeScheduleCompaction()
  }

  /**
   * Takes the next batches (up to GROUP_BYTES, at least one, all in the current segment), encodes
   * their record headers and starts writing them with their payloads at their reserved offset.
   */
  #startGroup (): WriteGroup {
    const queue = this.#queue
    const segment = this.#current
    const head = this.#issued
    let end = head
    let bytes = 0
    let sync = false
    while (end < queue.length) {
      const batch = queue[end] as PendingBatch
      if (batch.segment !== -1 && batch.segment !== segment.id) break
      if (bytes > 0 && bytes + batch.bytes > GROUP_BYTES) break
      bytes += batch.bytes
      sync ||= batch.sync
      end++
    }
    this.#issued = end
    const group: WriteGroup = { head, end, sync, done: false, error: undefined, written: Promise.resolve() }
    if (bytes === 0) {
      group.done = true
      return group
    }
    const handle = segment.handle as FileHandle
    const locations: BlockLocation[] = []
    // Written with writev: the record headers go to one small buffer and each payload is written
    // from the caller's buffer, with no copy into a group buffer first (about a sixth of the event
    // loop's time on 1 MiB writes). The crcs are computed here; callers do not change a buffer they
    // passed to batch() (reads are served from it until it is written), so they stay right.
    const { parts, fileOffset } = this.#encodeGroup(head, end, bytes, locations)
    this.#issuedBytes += bytes
    if (bytes <= this.#syncWriteMaxBytes) {
      try {
        writevFullySync(handle.fd, parts, fileOffset)
        this.#written(locations, bytes)
      } catch (err) {
        group.error = err
      }
      group.done = true
      return group
    }
    group.written = writevFully(handle, parts, fileOffset).then(() => {
      this.#written(locations, bytes)
    }, (err: unknown) => {
      group.error = err
    }).finally(() => {
      group.done = true
      this.#wakeWriter()
    })
    return group
  }

  /**
   * Encodes the records of the batches queue[head, end), `bytes` in all, in the current segment's
   * format, as the parts of a writev: the headers in one small buffer, the payloads the callers'
   * own, and the file offset they start at. Adds the puts' locations to `locations`.
   */
  #encodeGroup (head: number, end: number, bytes: number, locations: BlockLocation[]): { parts: Uint8Array[], fileOffset: number } {
    const queue = this.#queue
    const seed = this.#current.seed
    let records = 0
    let fileOffset = -1
    for (let i = head; i < end; i++) {
      const batch = queue[i] as PendingBatch
      if (batch.bytes === 0) continue
      if (fileOffset === -1) fileOffset = batch.offset
      records += batch.entries.length
    }
    const headers = Buffer.allocUnsafe(records * HEADER_BYTES)
    const parts: Uint8Array[] = []
    let position = 0
    let total = 0
    for (let i = head; i < end; i++) {
      const batch = queue[i] as PendingBatch
      if (batch.bytes === 0) continue
      const { fields, entries } = batch
      const last = entries.length - 1
      for (let op = 0; op <= last; op++) {
        const location = entries[op]
        let type = TYPE_DEL
        if (location === MARK) type = TYPE_MARK
        else if (location !== undefined) {
          type = TYPE_PUT
          locations.push(location)
        }
        const payload = location?.data
        encodeRecordHeader(headers, position, type, op < last ? FLAG_CONTINUES : 0,
          fields[op * 3] as number, fields[op * 3 + 1] as number, fields[op * 3 + 2] as number, payload, seed)
        parts.push(headers.subarray(position, position + HEADER_BYTES))
        if (payload !== undefined) parts.push(payload)
        position += HEADER_BYTES
        total += HEADER_BYTES + (payload?.byteLength ?? 0)
      }
    }
    if (total !== bytes || fileOffset !== this.#issuedBytes) {
      throw new GalleonError('CORRUPTION', `internal error: a write group of ${total} bytes at ${fileOffset} does not match the ${bytes} bytes reserved at ${this.#issuedBytes}`)
    }
    return { parts, fileOffset }
  }

  /** A group's bytes are in the file. */
  #written (locations: readonly BlockLocation[], bytes: number): void {
    this.#dirty = true
    this.#unsyncedBytes += bytes
    // Only now can reads go to the file instead of the pending value.
    for (const location of locations) location.data = undefined
  }

  /** Starts an fdatasync of the active segment that nothing waits for (see WRITEBACK_SYNC_BYTES). */
  #startWriteback (): void {
    this.#unsyncedBytes = 0
    this.#writebackSyncs++
    this.#writeback = (this.#current.handle as FileHandle).datasync().then(noop, (err: unknown) => {
      this.#writebackError ??= err
    }).finally(() => {
      this.#writeback = undefined
      this.#wakeWriter()
    })
  }

  /**
   * Seals the current segment and makes `nextId` current: the old file is fsynced before the new one
   * exists, so recovery may treat any damage in a non-last segment as corruption, not a torn write.
   */
  async #roll (nextId: number): Promise<void> {
    const old = this.#current
    const next = this.#segments.get(nextId)
    if (next === undefined || nextId !== old.id + 1) throw new GalleonError('CORRUPTION', `internal error: cannot roll from segment ${old.id} to ${nextId}`)
    if (this.#writeback !== undefined) await this.#writeback
    if (this.#writebackError !== undefined) throw this.#writebackError
    this.#unsyncedBytes = 0
    const handle = old.handle as FileHandle
    // A reused file is longer than what was written to it: its earlier incarnations are cut off
    // before it is sealed, so a sealed segment holds only its own records.
    const cut = old.seed !== undefined && (await handle.stat()).size !== old.size
    if (cut) await handle.truncate(old.size)
    old.fileBytes = old.size
    if (this.#dirty || cut) {
      this.#dirty = false
      this.#syncCount++
      await handle.sync()
    }
    next.handle = next.spare === undefined ? await open(next.path, 'wx+') : await this.#openSpare(next)
    await syncDirectory(this.#location)
    old.sealed = true
    this.#current = next
    this.#issuedBytes = 0
    this.#compactionWanted = true
    this.#scheduleHint(old)
  }

  /**
   * Makes segment `next` from its spare file, renamed to the segment's salted name (the caller syncs
   * the directory). A spare that has gone missing is replaced by a new file.
   */
  async #openSpare (next: Segment): Promise<FileHandle> {
    const spare = next.spare as Spare
    next.spare = undefined
    let handle: FileHandle
    try {
      handle = await open(spare.path, 'r+')
    } catch (err) {
      if (!isCode(err, 'ENOENT')) throw err
      return await open(next.path, 'wx+')
    }
    try {
      await rename(spare.path, next.path)
    } catch (err) {
      await handle.close().catch(() => {})
      throw err
    }
    next.fileBytes = spare.bytes
    return handle
  }

  /** After a failed write or sync nothing more is written: what reached the disk is uncertain. */
  #fail (err: unknown): void {
    const cause = isNoSpaceError(err)
      ? new GalleonError('NO_SPACE', `the disk holding ${this.#location} is full; free space, then close and reopen the block store`, { cause: err })
      : wrapIo(err, `the file block store at ${this.#location} stopped after a write failed; close and reopen it (recovery keeps every acknowledged batch)`)
    this.#failure ??= cause
    const queue = this.#queue
    // Batches being written are rejected too: they were never acknowledged, and may or may not be
    // found by recovery.
    for (let i = this.#queueHead; i < queue.length; i++) (queue[i] as PendingBatch).reject(this.#failure)
    queue.length = 0
    this.#queueHead = 0
    this.#issued = 0
  }

  #whenWriterIdle (): Promise<void> {
    if (!this.#writerActive) return Promise.resolve()
    return new Promise((resolve) => this.#idleWaiters.push(resolve))
  }

  // ---- background work: hints and compaction ------------------------------------------------------

  /** Queues `task` after all background work already queued. */
  #maintain (task: () => Promise<void>): Promise<void> {
    const run = this.#maintenance.then(task)
    this.#maintenance = run.then(noop, noop)
    return run
  }

  #reportBackground (err: unknown): void {
    const error = wrapIo(err, `background work of the block store at ${this.#location} failed`)
    if (this.#onBackgroundError === undefined) {
      this.#lastBackgroundError = error
      return
    }
    try {
      this.#onBackgroundError(error)
    } catch {
      // Called from a promise handler: a throwing listener would become an unhandled rejection and
      // stop the process. Keep the error where it can still be found.
      this.#lastBackgroundError = error
    }
  }

  #scheduleHint (segment: Segment): void {
    this.#maintain(async () => await this.#writeHint(segment)).catch((err: unknown) => this.#reportBackground(err))
  }

  /** Writes the hint of a sealed segment: to a temporary name, fsynced, then renamed into place. */
  async #writeHint (segment: Segment): Promise<void> {
    const hint = segment.hint
    if (hint === undefined || this.#segments.get(segment.id) !== segment || this.#failure !== undefined) return
    await writeFileAtomically(hintPath(this.#location, segment.id), hint.finish(segment.size))
    segment.hint = undefined
  }

  #maybeScheduleCompaction (): void {
    if (!this.#compactionWanted || this.#compactionScheduled || this.#closing || this.#failure !== undefined) return
    this.#compactionWanted = false
    if (this.#compactionThreshold === 0 || this.#pickVictim(this.#compactionThreshold, Infinity) === undefined) return
    this.#compactionScheduled = true
    this.#maintain(async () => {
      this.#compactionScheduled = false
      // Only the segments that exist now, then queue the next pass behind whatever was queued
      // meanwhile: a pass chasing the victims that sustained writes keep creating would never end,
      // and the hint files and compact() calls queued behind it would wait as long as the writes go on.
      await this.#compactPass(this.#compactionThreshold, this.#tail.id)
      this.#compactionWanted = true
      this.#maybeScheduleCompaction()
    }).catch((err: unknown) => this.#reportBackground(err))
  }

  /**
   * The oldest sealed segment worth compacting. Tombstones count as live unless the segment is the
   * oldest: they must outlive the older records they delete, and counting them dead would make a
   * segment of tombstones be copied forward again and again.
   */
  #pickVictim (threshold: number, newestId: number): Segment | undefined {
    let oldest = true
    for (const segment of this.#segments.values()) {
      if (segment.id > newestId) break
      if (segment.sealed && !segment.skipCompaction && segment.handle !== undefined) {
        const kept = segment.liveBytes + (oldest ? 0 : segment.tombstoneBytes)
        if (kept < segment.size * threshold) return segment
      }
      oldest = false
    }
    return undefined
  }

  /** Compacts every victim among the segments up to `newestId`, oldest first. */
  async #compactPass (threshold: number, newestId: number): Promise<void> {
    for (;;) {
      if (this.#closing || this.#failure !== undefined) return
      const victim = this.#pickVictim(threshold, newestId)
      if (victim === undefined) return
      await this.#compactSegment(victim)
    }
  }

  /**
   * Copies the live records (and still-needed tombstones) of a sealed segment to the tail through the
   * normal write path, syncs, then deletes the segment and its hint.
   */
  async #compactSegment (segment: Segment): Promise<void> {
    const hasOlder = this.#segments.keys().next().value !== segment.id
    if (segment.liveBytes > 0 || (hasOlder && segment.tombstoneBytes > 0)) {
      let moves: Move[] = []
      let movedBytes = 0
      // The payloads to copy forward, gathered in one buffer that is reused once the batch holding
      // them is acknowledged (written: the index then keeps no view of it). Reading each chunk of
      // the segment into a new buffer instead allocated the whole segment again, and that much
      // external memory set off a full garbage collection every 64 MiB or so.
      const arena = Buffer.allocUnsafeSlow(COMPACTION_BATCH_BYTES + MAX_BLOCK_VALUE_BYTES)
      let arenaUsed = 0
      const flush = async (sync: boolean): Promise<void> => {
        // Re-check each record against the index in the same tick as queueing the copy: a block
        // overwritten or deleted while the segment was being read must not be brought back.
        const ops: BlockOp[] = []
        for (const move of moves) {
          if (move.data !== undefined) {
            const location = this.#index.get(move.address)
            if (location !== undefined && location.segment === segment.id && location.offset === move.offset) {
              ops.push({ type: 'put', address: move.address, data: move.data })
            }
          } else if (!this.#index.has(move.address)) {
            ops.push({ type: 'del', address: move.address })
          }
        }
        moves = []
        movedBytes = 0
        if (ops.length > 0 || sync) await this.#enqueue(ops, sync)
        arenaUsed = 0
      }
      let problem: string | undefined
      try {
        // Only records worth keeping are crc-checked and copied: a live put, or a tombstone that an
        // older segment may still need. The index is checked again when the copies are queued.
        const wants = (header: RecordHeader, offset: number): boolean => {
          if (this.#closing || this.#failure !== undefined) throw new CompactionAborted()
          if (header.type === TYPE_PUT) {
            const location = this.#index.get(header)
            return location !== undefined && location.segment === segment.id && location.offset === offset
          }
          return header.type === TYPE_DEL && hasOlder && !this.#index.has(header)
        }
        const result = await scanSegment(segment.handle as FileHandle, segment.size, (header, offset, source, payloadStart) => {
          const address = new Address(header.volume, header.index, header.gen)
          if (header.type === TYPE_PUT) {
            // A copy: the scan reuses `source` for its next chunk.
            const data = arena.subarray(arenaUsed, arenaUsed + header.length)
            source.copy(data, 0, payloadStart, payloadStart + header.length)
            arenaUsed += header.length
            moves.push({ address, offset, data })
            movedBytes += HEADER_BYTES + header.length
          } else {
            moves.push({ address, offset, data: undefined })
            movedBytes += HEADER_BYTES
          }
          if (movedBytes >= COMPACTION_BATCH_BYTES) return flush(false)
        }, { wants, seed: segment.seed })
        if (result.committedEnd !== segment.size) problem = `${result.problem ?? 'incomplete batch'} at offset ${result.stoppedAt}`
      } catch (err) {
        if (err instanceof CompactionAborted) {
          await flush(false) // what was read is still worth keeping; the segment stays
          return
        }
        throw err
      }
      await flush(true)
      if (problem !== undefined || segment.liveBytes !== 0) {
        segment.skipCompaction = true
        throw new GalleonError('CORRUPTION', `compaction kept segment ${segment.path}: ${problem ?? `${segment.liveBytes} live bytes were not found in it`}`)
      }
    } else {
      // Nothing to copy, but the records that superseded this segment's must be durable before it goes.
      await this.#enqueue([], true)
    }
    await this.#dropSegment(segment)
  }

  async #dropSegment (segment: Segment): Promise<void> {
    const handle = segment.handle
    // No handle: never picked for compaction again, and any read reaching it would report it.
    segment.handle = undefined
    // Any read of this segment was issued before its last live block moved, and close() waits for it.
    let closeError: unknown
    await handle?.close().catch((err: unknown) => { closeError = err })
    let spare: Spare | undefined
    const bytes = Math.max(segment.size, segment.fileBytes)
    if (this.#spares.length < this.#spareSegments && this.#spareBytes() + bytes <= this.#spareBudget() && closeError === undefined) {
      // Kept for a later segment (see spareSegments); a spare is never read, only overwritten.
      spare = { path: join(this.#location, spareFileName(segment.id)), bytes }
      try {
        await rename(segment.path, spare.path)
      } catch (err) {
        if (!isCode(err, 'ENOENT')) throw wrapIo(err, `could not rename ${segment.path} to ${spare.path}`)
        spare = undefined
      }
    } else {
      await this.#removeFile(segment.path)
    }
    await this.#removeFile(hintPath(this.#location, segment.id))
    await syncDirectory(this.#location)
    // Usable only now: overwriting its start while the rename might still be undone by a crash
    // would leave a damaged sealed segment under the old name.
    if (spare !== undefined) this.#spares.push(spare)
    // Forgotten only once its removal is durable: while it is listed it counts as an older segment,
    // so later compactions keep the tombstones that delete its dead puts. Forgetting it first and then
    // failing to unlink it (or to sync the unlink) would let those tombstones be dropped and its puts
    // come back on the next open.
    this.#segments.delete(segment.id)
    this.#compactionWanted = true
    if (closeError !== undefined) throw wrapIo(closeError, `could not close ${segment.path}`)
    // Deletes may have shrunk the budget.
    await this.#trimSpares()
  }
}

/** Backend descriptor: name, availability, and a factory. */
export const fileBackend = {
  name: 'file',
  isAvailable: async (): Promise<boolean> => true,
  create: (options: FileBlockStoreOptions): FileBlockStore => new FileBlockStore(options)
}
