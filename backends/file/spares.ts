// Spare segment files of the file block store: emptied segment files kept, renamed, to become later
// segments (see the spareSegments option), how many are kept, and how a segment is made from one.

import { open, rename, type FileHandle } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { isNoSpaceError, wrapIo } from '../../src/abstract-block-store.js'
import { maintain, reportBackground } from './maintenance.js'
import { isCode, newSegmentSalt, preparedSpareFileName, segmentPath } from './segment.js'
import { removeFile, type Segment, type Spare, type StoreState } from './store-state.js'

/** Syncs of the current segment before it counts as written by durable writes (see maybePrepareSpare). */
const PREPARE_MIN_SYNCS = 16
/** Bytes per sync, on average over the current segment, at most, for it to count as such. */
const PREPARE_BYTES_PER_SYNC = 1024 * 1024
/** Zeros written per call while a spare is made in advance, and synced every this many bytes. */
const ZERO_CHUNK_BYTES = 1024 * 1024
const ZERO_SYNC_BYTES = 8 * 1024 * 1024
let zeros: Buffer | undefined

/**
 * Bytes the spares may hold in all: a quarter of the live bytes or one segment's worth, whichever
 * is more, but never more than the live bytes (a store that shrinks lets them go). Without the
 * one segment, a store of less than four segments of live data kept no spare, and deleted every
 * emptied file: on ext4 each such unlink of a 64 MiB file held up every fdatasync on the file
 * system for 15-20 ms (measured on the 2-vCPU VM). Durable 4 KiB random writes at 32 in flight on
 * a 64 MiB volume, once compaction runs: 25.1-25.5k per second with the quarter alone, 30.0-31.9k
 * with one segment kept (three alternating pairs of runs).
 */
export function spareBudget (state: StoreState): number {
  return Math.max(state.liveBytes / 4, Math.min(state.segmentBytes, state.liveBytes))
}

/** Bytes the spares hold now. */
export function spareBytes (state: StoreState): number {
  let bytes = 0
  for (const spare of state.spares) bytes += spare.bytes
  return bytes
}

/**
 * Deletes spares beyond spareSegments or beyond the spare budget, oldest first. (The writer may
 * take a spare meanwhile: the count is looked at again after each removal.)
 */
export async function trimSpares (state: StoreState): Promise<void> {
  while (state.spares.length > 0 && (state.spares.length > state.spareSegments || spareBytes(state) > spareBudget(state))) {
    const spare = state.spares.shift() as Spare
    await removeFile(spare.path)
  }
}

/**
 * A full disk stopped the store (see fail in writer.ts): the spare files hold no data, so they are
 * removed, the ones already promised to a segment not yet created too. Their space is what lets the
 * metadata database and this store open again on a disk nothing else frees, and compaction copy
 * forward once volumes are deleted or trimmed. Best effort: a spare that cannot be removed stays.
 */
export async function releaseSpares (state: StoreState): Promise<void> {
  const released = state.spares
  state.spares = []
  for (const segment of state.segments.values()) {
    if (segment.spare !== undefined && segment.handle === undefined) {
      released.push(segment.spare)
      segment.spare = undefined
    }
  }
  for (const spare of released) await removeFile(spare.path).catch(() => {})
}

/**
 * Makes segment `next` from its spare file, renamed to the segment's salted name (the caller syncs
 * the directory). A spare that has gone missing is replaced by a new file, under a salt of a file
 * created empty (see newSegmentSalt): recovery then keeps the checks that hold for such files.
 */
export async function openSpare (next: Segment): Promise<FileHandle> {
  const spare = next.spare as Spare
  next.spare = undefined
  let handle: FileHandle
  try {
    handle = await open(spare.path, 'r+')
  } catch (err) {
    if (!isCode(err, 'ENOENT')) throw err
    // Nothing is encoded for the segment before the writer rolls to it, so its salt can still change.
    next.seed = newSegmentSalt(false)
    next.path = segmentPath(dirname(next.path), next.id, next.seed)
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

/**
 * Makes a spare in advance, by writing a segment's worth of zeros to a new file (as PostgreSQL does
 * for its WAL segments), when the current segment is written by durable writes (at least
 * PREPARE_MIN_SYNCS syncs, at most PREPARE_BYTES_PER_SYNC bytes per sync on average), no spare is at
 * hand for the next segment, and the spare budget has room for it. A segment appended to a new file
 * pays for the file's growth in every fdatasync (the size and the new extents go through the file
 * system's journal); one made from a spare overwrites allocated blocks. Measured on the 2-vCPU VM,
 * 128 KiB write + fdatasync, two processes at once: 0.72-0.74 ms appending against 0.31 ms
 * overwriting. Bulk writes without syncs gain little from it and would pay for the zeros, so they
 * never trigger it. Runs as background work (one task at a time with compaction and hints).
 */
export function maybePrepareSpare (state: StoreState): void {
  if (state.preparingSpare || state.preparingSpareStopped || state.closing || state.failure !== undefined) return
  if (state.spareSegments === 0 || state.spares.length > 0) return
  if (state.segmentSyncs < PREPARE_MIN_SYNCS || state.current.size > state.segmentSyncs * PREPARE_BYTES_PER_SYNC) return
  if (spareBytes(state) + state.segmentBytes > spareBudget(state)) return
  state.preparingSpare = true
  maintain(state, async () => { await prepareSpare(state) })
    .catch((err: unknown) => { reportBackground(state, err) })
    .finally(() => { state.preparingSpare = false })
}

/** Thrown inside prepareSpare when the store begins to close: the half-made file is removed. */
const CLOSING = new Error('closing')

/** See maybePrepareSpare. */
async function prepareSpare (state: StoreState): Promise<void> {
  const bytes = state.segmentBytes
  if (state.closing || state.failure !== undefined || state.spares.length > 0 || spareBytes(state) + bytes > spareBudget(state)) return
  zeros ??= Buffer.alloc(ZERO_CHUNK_BYTES)
  const path = join(state.location, preparedSpareFileName())
  let handle: FileHandle | undefined
  try {
    handle = await open(path, 'wx')
    for (let at = 0; at < bytes;) {
      if (state.closing || state.failure !== undefined) throw CLOSING
      const { bytesWritten } = await handle.write(zeros, 0, Math.min(ZERO_CHUNK_BYTES, bytes - at), at)
      at += bytesWritten
      // Synced as it goes: one sync of the whole file would hold the disk for a while, and
      // the durable writes of the store with it.
      if (at % ZERO_SYNC_BYTES === 0 || at === bytes) await handle.datasync()
    }
    await handle.close()
    handle = undefined
  } catch (err) {
    await handle?.close().catch(() => {})
    await removeFile(path).catch(() => {})
    if (err === CLOSING) return
    state.preparingSpareStopped = true
    // A full disk: the writes that matter report it themselves.
    if (isNoSpaceError(err)) return
    throw wrapIo(err, `could not make a spare segment file in advance at ${path}; no further one is made until the store is reopened`)
  }
  if (state.closing || state.failure !== undefined) {
    await removeFile(path)
    return
  }
  // Its name need not be durable: a spare lost in a crash is only a spare less.
  state.spares.push({ path, bytes })
}
