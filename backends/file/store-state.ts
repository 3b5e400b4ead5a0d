// In-memory state of the file block store shared by its modules: where each block version lives, the
// segments, the writer's queue and write groups, and the index and space accounting kept with them.

import { unlink, type FileHandle } from 'node:fs/promises'
import { wrapIo } from '../../src/abstract-block-store.js'
import type { BlockAddress } from '../../src/drivers.js'
import type { GalleonError } from '../../src/errors.js'
import { BlockIndex } from './block-index.js'
import { HEADER_BYTES, type HintBuilder } from './record.js'
import { isCode } from './segment.js'
import type { StoreSettings } from './options.js'

/** Where the current version of a block lives. `data` holds the value until it has been written. */
export class BlockLocation {
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
export const MARK = new BlockLocation(0, -1, 0, 0, undefined)

/** In-memory state of one segment file. */
export class Segment {
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
  /**
   * Why compaction last had to keep this segment (it could not read it, or found it damaged), since
   * when, and when it may try again; undefined while nothing went wrong. Gone with the segment.
   */
  fault: SegmentFault | undefined = undefined
  /**
   * The crc seed of its records (its salt, see record.ts; below 2^24 for a file created empty, from
   * 2^24 on for a reused one, see newSegmentSalt); undefined for an unsalted segment of an earlier release.
   */
  seed: number | undefined = undefined
  /** A spare file this (not yet created) segment will be made from when the writer rolls to it. */
  spare: Spare | undefined = undefined
  /** Bytes of the file when it is longer than `size` (a reused file holding its earlier incarnations). */
  fileBytes = 0
  /**
   * Bytes known to be synced, and how far the mark records written leave nothing new to state: the
   * offset the last one states, or the end of that mark when it directly follows what it states.
   */
  syncedBytes = 0
  markedBytes = 0
  /** End of the last batch acknowledged in this segment (so written before any later sync). */
  acknowledgedBytes = 0
  /**
   * Reads of this segment under way in the thread pool. They read by descriptor (not through the
   * FileHandle, which would keep its descriptor open for them), so the handle is closed only once
   * they are done: a descriptor closed under a queued read fails it, or, reused by the next file
   * opened, gives it another file's bytes.
   */
  poolReads = 0
  /** Called once poolReads is back to 0 (see whenReadsDone). */
  readsDone: Array<() => void> = []

  constructor (
    readonly id: number,
    /** Its file; named before the file exists, and renamed once when a spare meant for it is gone (see openSpare). */
    public path: string,
    /** Bytes of the file, including records queued for it but not yet written. */
    public size: number,
    /** Entries for its hint file, kept until the hint is written; undefined once it is (or when not needed). */
    public hint: HintBuilder | undefined
  ) {}
}

/**
 * A segment compaction had to keep. An unreadable one (IO_ERROR) is retried with exponential
 * back-off; a damaged one (CORRUPTION) is not retried until the store is reopened.
 */
export interface SegmentFault {
  /** The last error, as reported. */
  error: GalleonError
  /** When the first of the failed attempts in a row was made (clock milliseconds). */
  since: number
  /** When the last one was made (clock milliseconds): a clock read earlier than it was set back. */
  attemptedAt: number
  /** Failed attempts in a row. */
  attempts: number
  /** The back-off after the last attempt (ms), doubled by each failed attempt up to a bound. */
  delayMs: number
  /** Not tried again before this time (clock milliseconds); Infinity: not in this session. */
  retryAt: number
}

/** An emptied segment file kept to become a later segment. */
export interface Spare {
  path: string
  bytes: number
}

/** A batch waiting for the writer, already applied to the index. */
export interface PendingBatch {
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
export interface WriteGroup {
  head: number
  end: number
  sync: boolean
  done: boolean
  /** Why the write failed, once done. */
  error: unknown
  /** Settles (never rejects) when the write has finished. */
  written: Promise<void>
}

/** Does nothing: the fulfilment and rejection handler of promises only waited on. */
export function noop (): void {}

/**
 * The state of a file block store that its modules (recovery, the writer, background work) share:
 * the index, the segments, the writer's queue. FileBlockStore owns it and hands it to them.
 */
export class StoreState {
  readonly location: string
  readonly segmentBytes: number
  readonly compactionThreshold: number
  readonly syncWriteMaxBytes: number
  readonly spareSegments: number
  readonly onBackgroundError: ((err: GalleonError) => void) | undefined
  /** Times the back-off of segments compaction could not read (see SegmentFault). */
  readonly clock: { now: () => number }
  /** Schedules a compaction pass if one may be due (see compaction.ts, which the writer does not import). */
  readonly maybeScheduleCompaction: () => void
  /** Spare files (emptied segment files kept for reuse), ready to become segments. */
  spares: Spare[] = []
  /** Syncs of the current segment (see prepareSpare). */
  segmentSyncs = 0
  /** A spare is being made in advance (see prepareSpare). */
  preparingSpare = false
  /** Making a spare in advance failed (a full disk, say): not tried again until the store is reopened. */
  preparingSpareStopped = false

  index = new BlockIndex<BlockLocation>()
  liveBytes = 0
  /** Every segment, in ascending id order (Map keeps insertion order and ids only grow). */
  segments = new Map<number, Segment>()
  /** Segment that receives newly queued batches (may be ahead of the writer's). */
  tail!: Segment
  /** Segment the writer appends to. */
  current!: Segment
  /** Bytes written to `current` since its last fdatasync. */
  dirty = false

  /** Batches in call order: `..queueHead` acknowledged, `..issued` being written, the rest waiting. */
  queue: Array<PendingBatch | undefined> = []
  queueHead = 0
  issued = 0
  /** Write groups not yet acknowledged, oldest first. */
  inflight: WriteGroup[] = []
  /** Offset in `current` up to which bytes have been handed to write calls. */
  issuedBytes = 0
  writerActive = false
  /** Wakes the writer when it waits for a write to finish or for batches to arrive. */
  wake: (() => void) | undefined
  wakeScheduled = false
  idleWaiters: Array<() => void> = []
  failure: GalleonError | undefined
  syncCount = 0
  /** Bytes written to `current` since the last sync of it started. */
  unsyncedBytes = 0
  /** The background fdatasync of `current` under way (see WRITEBACK_SYNC_BYTES); never rejects. */
  writeback: Promise<void> | undefined
  /** Why a background fdatasync failed; the writer stops with it. */
  writebackError: unknown
  writebackSyncs = 0

  /** Background work (hint files, compaction), one task at a time. */
  maintenance: Promise<void> = Promise.resolve()
  compactionScheduled = false
  /** Something changed that may have made a sealed segment worth compacting. */
  compactionWanted = false
  closing = false
  lastBackgroundError: GalleonError | undefined
  /** A clean-shutdown marker file was found on open and has not been removed yet. */
  cleanMarkerFound = false
  /**
   * The segment files the segment list names (id to file name; see segment-list.ts): a segment is
   * added once its file exists, before its first record, and taken out before its file goes.
   */
  listed = new Map<number, string>()
  /** The last write of the segment list (they run one at a time). */
  listWrites: Promise<void> = Promise.resolve()

  constructor (settings: StoreSettings, maybeScheduleCompaction: () => void) {
    this.location = settings.location
    this.segmentBytes = settings.segmentBytes
    this.syncWriteMaxBytes = settings.syncWriteMaxBytes
    this.spareSegments = settings.spareSegments
    this.compactionThreshold = settings.compactionThreshold
    this.onBackgroundError = settings.onBackgroundError
    this.clock = settings.clock
    this.maybeScheduleCompaction = maybeScheduleCompaction
  }
}

/** Empties the state for a new open (the settings and the counters of syncs stay). */
export function resetState (state: StoreState): void {
  state.index = new BlockIndex()
  state.liveBytes = 0
  state.segments = new Map()
  state.issuedBytes = 0
  state.dirty = false
  state.unsyncedBytes = 0
  state.writeback = undefined
  state.writebackError = undefined
  state.queue = []
  state.queueHead = 0
  state.issued = 0
  state.inflight = []
  state.spares = []
  state.segmentSyncs = 0
  state.preparingSpare = false
  state.preparingSpareStopped = false
  state.wake = undefined
  state.wakeScheduled = false
  state.writerActive = false
  state.idleWaiters = []
  state.failure = undefined
  state.maintenance = Promise.resolve()
  state.compactionScheduled = false
  state.compactionWanted = false
  state.closing = false
  state.cleanMarkerFound = false
  state.listed = new Map()
  state.listWrites = Promise.resolve()
}

/**
 * Applies one record at `offset` of `segment` to the index and the space accounting: a put
 * (with its payload while it is not yet written, or undefined) becomes the current version of its
 * address; a tombstone removes it. Returns the new location of a put.
 */
export function applyRecord (state: StoreState, segment: Segment, address: BlockAddress, offset: number, put: { length: number, data: Uint8Array | undefined } | undefined): BlockLocation | undefined {
  const previous = state.index.get(address)
  if (previous !== undefined) forget(state, previous)
  if (put !== undefined) {
    const location = new BlockLocation(address.gen, segment.id, offset, put.length, put.data)
    state.index.set(address.volume, address.index, location)
    segment.liveBytes += HEADER_BYTES + put.length
    state.liveBytes += put.length
    return location
  }
  if (previous !== undefined) state.index.delete(address)
  segment.tombstoneBytes += HEADER_BYTES
  return undefined
}

/** Accounts for a location that is no longer the current version of its block. */
function forget (state: StoreState, location: BlockLocation): void {
  const segment = state.segments.get(location.segment)
  if (segment !== undefined) {
    segment.liveBytes -= HEADER_BYTES + location.length
    if (segment.sealed) state.compactionWanted = true
  }
  state.liveBytes -= location.length
}

/** Removes a file; one already gone is fine. */
export async function removeFile (path: string): Promise<void> {
  try {
    await unlink(path)
  } catch (err) {
    if (!isCode(err, 'ENOENT')) throw wrapIo(err, `could not remove ${path}`)
  }
}

/** Runs a thread-pool read of `segment` by descriptor, counted in `segment.poolReads`. */
export async function poolRead<T> (segment: Segment, read: () => Promise<T>): Promise<T> {
  segment.poolReads++
  try {
    return await read()
  } finally {
    if (--segment.poolReads === 0) {
      const waiting = segment.readsDone
      segment.readsDone = []
      for (const done of waiting) done()
    }
  }
}

/** Resolves once no thread-pool read of `segment` is under way (before its handle is closed). */
export async function whenReadsDone (segment: Segment): Promise<void> {
  if (segment.poolReads === 0) return
  await new Promise<void>((resolve) => { segment.readsDone.push(resolve) })
}
