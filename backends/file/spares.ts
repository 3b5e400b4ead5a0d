// Spare segment files of the file block store: emptied segment files kept, renamed, to become later
// segments (see the spareSegments option), how many are kept, and how a segment is made from one.

import { open, rename, type FileHandle } from 'node:fs/promises'
import { isCode } from './segment.js'
import { removeFile, type Segment, type Spare, type StoreState } from './store-state.js'

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
 * Makes segment `next` from its spare file, renamed to the segment's salted name (the caller syncs
 * the directory). A spare that has gone missing is replaced by a new file.
 */
export async function openSpare (next: Segment): Promise<FileHandle> {
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
