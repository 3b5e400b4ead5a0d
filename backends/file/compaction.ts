// Compaction of the file block store: sealed segments with mostly dead records are picked, their live
// records copied forward through the writer, and the emptied file deleted or kept as a spare. A
// segment that cannot be read is kept and left alone for a while (exponential back-off).

import { rename, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { wrapIo } from '../../src/abstract-block-store.js'
import { Address, MAX_BLOCK_VALUE_BYTES, type BlockAddress, type BlockOp } from '../../src/drivers.js'
import { GalleonError } from '../../src/errors.js'
import { HEADER_BYTES, TYPE_DEL, TYPE_PUT, type RecordHeader } from './record.js'
import { hintPath, isCode, scanSegment, spareFileName, syncDirectory } from './segment.js'
import { COMPACTION_BATCH_BYTES, COMPACTION_RETRY_FIRST_MS, COMPACTION_RETRY_MAX_MS } from './options.js'
import { maintain, reportBackground } from './maintenance.js'
import { spareBudget, spareBytes, trimSpares } from './spares.js'
import { persistSegmentList } from './segment-list.js'
import { enqueue } from './writer.js'
import { removeFile, whenReadsDone, type Segment, type Spare, type StoreState } from './store-state.js'

/** One record a compaction is about to copy forward. */
interface Move {
  address: BlockAddress
  /** Record offset in the segment being compacted, to re-check that the index still points there. */
  offset: number
  /** The payload of a put, undefined for a tombstone. */
  data: Uint8Array | undefined
}

class CompactionAborted extends Error {}

/** Queues a background compaction pass when something changed and a segment is worth compacting. */
export function maybeScheduleCompaction (state: StoreState): void {
  if (!state.compactionWanted || state.compactionScheduled || state.closing || state.failure !== undefined) return
  state.compactionWanted = false
  if (state.compactionThreshold === 0 || pickVictim(state, state.compactionThreshold, Infinity, NONE, false) === undefined) return
  state.compactionScheduled = true
  maintain(state, async () => {
    state.compactionScheduled = false
    // Only the segments that exist now, then queue the next pass behind whatever was queued
    // meanwhile: a pass chasing the victims that sustained writes keep creating would never end,
    // and the hint files and compact() calls queued behind it would wait as long as the writes go on.
    // A segment that had to be kept is reported once per attempt, and attempts are spaced out.
    const kept = await compactPass(state, state.compactionThreshold, state.tail.id)
    for (const err of kept) reportBackground(state, err)
    state.compactionWanted = true
    maybeScheduleCompaction(state)
  }).catch((err: unknown) => reportBackground(state, err))
}

const NONE: ReadonlySet<Segment> = new Set()

/**
 * The oldest sealed segment worth compacting, other than those in `passed`. Tombstones count as live
 * unless the segment is the oldest: they must outlive the older records they delete, and counting
 * them dead would make a segment of tombstones be copied forward again and again. A segment whose
 * read failed is skipped until its back-off is over (unless `retryNow`), but only while compacting
 * it means reading it: one that holds nothing worth copying any more is dropped without a read.
 */
function pickVictim (state: StoreState, threshold: number, newestId: number, passed: ReadonlySet<Segment>, retryNow: boolean): Segment | undefined {
  let oldest = true
  for (const segment of state.segments.values()) {
    if (segment.id > newestId) break
    if (segment.sealed && !segment.skipCompaction && segment.handle !== undefined && !passed.has(segment)) {
      const kept = segment.liveBytes + (oldest ? 0 : segment.tombstoneBytes)
      if (kept < segment.size * threshold && (retryNow || kept === 0 || !backingOff(state, segment))) return segment
    }
    oldest = false
  }
  return undefined
}

/**
 * Whether `segment` waits out the back-off after a failed read. A clock set back to before the last
 * attempt ends the wait: the segment is tried once, and the next wait runs from that attempt (not
 * from the first failure's time, which a clock set back stays before until it catches up: every
 * pass would read the segment again, and each pass's end would start the next one at once).
 */
function backingOff (state: StoreState, segment: Segment): boolean {
  const fault = segment.fault
  if (fault === undefined) return false
  const now = state.clock.now()
  return now < fault.retryAt && now >= fault.attemptedAt
}

/**
 * Compacts every victim among the segments up to `newestId`, oldest first, each at most once. A
 * victim that has to be kept (unreadable or damaged: see keepSegment) does not stop the pass; the
 * errors saying so are returned, one per such segment, for the caller to report. `retryNow` also
 * takes the segments waiting out a back-off (compact(): an operator asking now).
 */
export async function compactPass (state: StoreState, threshold: number, newestId: number, retryNow = false): Promise<GalleonError[]> {
  const passed = new Set<Segment>()
  const kept: GalleonError[] = []
  for (;;) {
    if (state.closing || state.failure !== undefined) return kept
    const victim = pickVictim(state, threshold, newestId, passed, retryNow)
    if (victim === undefined) return kept
    passed.add(victim)
    const problem = await compactSegment(state, victim)
    if (problem !== undefined) kept.push(problem)
  }
}

/**
 * Notes that compaction keeps `segment`: unreadable (`failure`, an error of the file system), tried
 * again after a back-off that doubles with each failure in a row; damaged (`damage`), not tried
 * again in this session. Returns the error to report.
 */
function keepSegment (state: StoreState, segment: Segment, failure: { readError: unknown } | { damage: string }): GalleonError {
  const now = state.clock.now()
  const previous = segment.fault
  const attempts = (previous?.attempts ?? 0) + 1
  // Never after now: a clock set back since the first failure would date it in the future.
  const since = Math.min(previous?.since ?? now, now)
  if ('damage' in failure) {
    segment.skipCompaction = true
    const error = new GalleonError('CORRUPTION', `compaction kept segment ${segment.path}: ${failure.damage}`)
    segment.fault = { error, since, attemptedAt: now, attempts, delayMs: 0, retryAt: Infinity }
    return error
  }
  const delayMs = previous === undefined ? COMPACTION_RETRY_FIRST_MS : Math.min(previous.delayMs * 2, COMPACTION_RETRY_MAX_MS)
  const err = failure.readError
  const detail = err instanceof Error ? err.message : String(err)
  const error = new GalleonError('IO_ERROR', `compaction could not read ${segment.path} (the segment is kept, with every block in it): ${detail}. ` +
    `Unreadable since ${new Date(since).toISOString()} (${attempts} failed ${attempts === 1 ? 'attempt' : 'attempts in a row'}); compaction tries it again in ${Math.round(delayMs / 1000)} s at the earliest. ` +
    'Reads of its blocks may fail too: check the disk, and scrub the volumes (restore what scrub reports from a backup)', { cause: err })
  segment.fault = { error, since, attemptedAt: now, attempts, delayMs, retryAt: now + delayMs }
  return error
}

/**
 * Copies the live records (and still-needed tombstones) of a sealed segment to the tail through the
 * normal write path, syncs, then deletes the segment and its hint. Returns the error saying why the
 * segment was kept instead, when it could not be read or was found damaged (see keepSegment).
 */
async function compactSegment (state: StoreState, segment: Segment): Promise<GalleonError | undefined> {
  const hasOlder = state.segments.keys().next().value !== segment.id
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
          const location = state.index.get(move.address)
          if (location !== undefined && location.segment === segment.id && location.offset === move.offset) {
            ops.push({ type: 'put', address: move.address, data: move.data })
          }
        } else if (!state.index.has(move.address)) {
          ops.push({ type: 'del', address: move.address })
        }
      }
      moves = []
      movedBytes = 0
      if (ops.length > 0 || sync) await enqueue(state, ops, sync)
      arenaUsed = 0
    }
    let problem: string | undefined
    try {
      // Only records worth keeping are crc-checked and copied: a live put, or a tombstone that an
      // older segment may still need. The index is checked again when the copies are queued.
      const wants = (header: RecordHeader, offset: number): boolean => {
        if (state.closing || state.failure !== undefined) throw new CompactionAborted()
        if (header.type === TYPE_PUT) {
          const location = state.index.get(header)
          return location !== undefined && location.segment === segment.id && location.offset === offset
        }
        return header.type === TYPE_DEL && hasOlder && !state.index.has(header)
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
        return undefined
      }
      // The writer's failure (of a batch this compaction queued) has stopped the store: not the segment's.
      if (err instanceof GalleonError || state.failure !== undefined) throw wrapIo(err, `compaction of ${segment.path} stopped (the segment is kept)`)
      // A read failed. What was read before is copied forward all the same: once every live record
      // has moved, the segment goes without being read again.
      await flush(true)
      return keepSegment(state, segment, { readError: err })
    }
    await flush(true)
    if (problem !== undefined || segment.liveBytes !== 0) {
      return keepSegment(state, segment, { damage: problem ?? `${segment.liveBytes} live bytes were not found in it` })
    }
  } else {
    // Nothing to copy, but the records that superseded this segment's must be durable before it goes.
    await enqueue(state, [], true)
  }
  await dropSegment(state, segment)
  return undefined
}

async function dropSegment (state: StoreState, segment: Segment): Promise<void> {
  // Out of the segment list before its file goes, so that open reports a listed file that is
  // missing: a crash after this leaves an unlisted file, whose records were all copied forward and
  // synced above, and which open removes (see segment-list.ts).
  state.listed.delete(segment.id)
  await persistSegmentList(state)
  const handle = segment.handle
  // No handle: never picked for compaction again, and any read reaching it would report it.
  segment.handle = undefined
  // Any read of this segment was issued before its last live block moved: reads in the thread
  // pool are waited for (they read by descriptor), synchronous ones are over.
  let closeError: unknown
  await whenReadsDone(segment)
  await handle?.close().catch((err: unknown) => { closeError = err })
  let spare: Spare | undefined
  const bytes = Math.max(segment.size, segment.fileBytes)
  // Not once the writer has stopped (a full disk gives its spares back, see releaseSpares).
  if (state.spares.length < state.spareSegments && spareBytes(state) + bytes <= spareBudget(state) && closeError === undefined && state.failure === undefined) {
    // Kept for a later segment (see spareSegments); a spare is never read, only overwritten.
    spare = { path: join(state.location, spareFileName(segment.id)), bytes }
    try {
      await rename(segment.path, spare.path)
    } catch (err) {
      if (!isCode(err, 'ENOENT')) throw wrapIo(err, `could not rename ${segment.path} to ${spare.path}`)
      spare = undefined
    }
  } else {
    await removeFile(segment.path)
  }
  await removeFile(hintPath(state.location, segment.id))
  await syncDirectory(state.location)
  // Usable only now: overwriting its start while the rename might still be undone by a crash
  // would leave a damaged sealed segment under the old name.
  if (spare !== undefined) {
    // A full disk may have stopped the writer during the awaits above, after it gave back its
    // spares (releaseSpares): this one goes too.
    if (state.failure === undefined) state.spares.push(spare)
    else await removeFile(spare.path).catch(() => {})
  }
  // Forgotten only once its removal is durable: while it is listed it counts as an older segment,
  // so later compactions keep the tombstones that delete its dead puts. Forgetting it first and then
  // failing to unlink it (or to sync the unlink) would let those tombstones be dropped and its puts
  // come back on the next open.
  state.segments.delete(segment.id)
  state.compactionWanted = true
  if (closeError !== undefined) throw wrapIo(closeError, `could not close ${segment.path}`)
  // Deletes may have shrunk the budget.
  await trimSpares(state)
}
