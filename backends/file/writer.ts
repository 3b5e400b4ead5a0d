// The writer of the file block store: batches applied to the index and queued, written in groups at
// their reserved offsets, synced together (group commit) and acknowledged in call order; segment rolls.

import { open, type FileHandle } from 'node:fs/promises'
import { basename } from 'node:path'
import { isNoSpaceError, wrapIo } from '../../src/abstract-block-store.js'
import type { BlockOp } from '../../src/drivers.js'
import { GalleonError } from '../../src/errors.js'
import { FLAG_CONTINUES, HEADER_BYTES, HintBuilder, TYPE_DEL, TYPE_MARK, TYPE_PUT, encodeRecordHeader } from './record.js'
import { isPreparedSpareFileName, newSegmentSalt, segmentPath, syncDirectory, writevFully, writevFullySync } from './segment.js'
import { GROUP_BYTES, MAX_WRITES_IN_FLIGHT, WRITEBACK_SYNC_BYTES } from './options.js'
import { reportBackground, scheduleHint } from './maintenance.js'
import { maybePrepareSpare, openSpare, releaseSpares } from './spares.js'
import { persistSegmentList } from './segment-list.js'
import { MARK, Segment, applyRecord, noop, removeFile, type BlockLocation, type PendingBatch, type StoreState, type WriteGroup } from './store-state.js'

/**
 * Applies `ops` to the index at once (so reads see them immediately and batches apply in call
 * order), reserves their place in the log, and queues them for the writer. Everything before the
 * returned promise is synchronous, which compaction relies on.
 */
export function enqueue (state: StoreState, ops: readonly BlockOp[], sync: boolean): Promise<void> {
  if (state.failure !== undefined) return Promise.reject(state.failure)
  let bytes = 0
  for (const op of ops) bytes += op.type === 'put' ? HEADER_BYTES + op.data.byteLength : HEADER_BYTES
  let segment = state.tail
  // Roll only between batches: a batch must be whole within one segment to be atomic. An unsalted
  // segment (an earlier release's) takes no more: what is written from now on is salted, so copies
  // of log records in block data never pass for it (see record.ts).
  // (An empty one too: its first batch would be unsalted records.)
  if (bytes > 0 && (segment.seed === undefined || (segment.size > 0 && segment.size + bytes > state.segmentBytes))) segment = newTailSegment(state)
  const start = segment.size
  // A segment synced further than its marks say (after open synced it; after the writer's own
  // syncs queueMark writes one at once) gets a new mark, ahead of the batch.
  const mark = bytes > 0 && segment.syncedBytes > segment.markedBytes ? 1 : 0
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
      entries[i] = applyRecord(state, segment, op.address, offset, { length, data: op.data })
      hint.add(TYPE_PUT, volume, index, gen, offset, length)
      offset += HEADER_BYTES + length
    } else {
      entries[i] = applyRecord(state, segment, op.address, offset, undefined)
      hint.add(TYPE_DEL, volume, index, gen, offset, 0)
      offset += HEADER_BYTES
    }
  }
  segment.size = offset
  return new Promise<void>((resolve, reject) => {
    state.queue.push({ segment: bytes > 0 ? segment.id : -1, offset: start, bytes, fields, entries, sync, resolve, reject })
    // Deferred to the next turn of the event loop so that batches called together (in the same
    // tick or the continuations of the previous group) are written and synced together.
    if (!state.writerActive) {
      state.writerActive = true
      setImmediate(() => { void runWriter(state) })
    } else if (state.wake !== undefined && !state.wakeScheduled) {
      state.wakeScheduled = true
      setImmediate(() => {
        state.wakeScheduled = false
        wakeWriter(state)
      })
    }
  })
}

/**
 * The segment after the tail; its file is created (or made from a spare) by the writer when it
 * gets there.
 */
function newTailSegment (state: StoreState): Segment {
  const id = state.tail.id + 1
  const spare = state.spares.pop()
  // A random salt (in its name) for its records, which also tells a reused file from one of zeros, see segment.ts.
  const salt = newSegmentSalt(spare !== undefined && !isPreparedSpareFileName(basename(spare.path)))
  const segment = new Segment(id, segmentPath(state.location, id, salt), 0, new HintBuilder())
  segment.spare = spare
  segment.seed = salt
  state.segments.set(id, segment)
  state.tail = segment
  return segment
}

function wakeWriter (state: StoreState): void {
  const wake = state.wake
  state.wake = undefined
  wake?.()
}

/**
 * Writes queued batches in groups, up to MAX_WRITES_IN_FLIGHT at once (a small group is written
 * synchronously, so it is done when `startGroup` returns), and acknowledges
 * them strictly in call order: a group resolves only when it and every group before it are
 * written, and, if any of them asked for it, synced by one fdatasync issued after all of them
 * finished. A crash can therefore lose only unacknowledged batches, and recovery's torn-tail
 * truncation (at the first gap or damaged record) never drops an acknowledged one.
 */
async function runWriter (state: StoreState): Promise<void> {
  const queue = state.queue
  const inflight = state.inflight
  try {
    for (;;) {
      if (state.writebackError !== undefined) throw state.writebackError
      // A finished group that waits for writes still in flight before its sync starts no more.
      while (state.issued < queue.length && inflight.length < MAX_WRITES_IN_FLIGHT && !holdingForSync(state)) {
        const first = queue[state.issued] as PendingBatch
        if (first.segment !== -1 && first.segment !== state.current.id) {
          // A segment is sealed (and fsynced) only once everything written to it has finished.
          if (inflight.length > 0) break
          await roll(state, first.segment)
        }
        inflight.push(startGroup(state))
      }
      if (state.unsyncedBytes >= WRITEBACK_SYNC_BYTES && state.writeback === undefined) startWriteback(state)
      const oldest = inflight[0]
      if (oldest !== undefined && oldest.done && !holdingForSync(state)) {
        await acknowledge(state)
        continue
      }
      // The writer is idle only without a background sync, which may still fail, and whose file
      // must stay open until it is done.
      if (oldest === undefined && state.issued >= queue.length && state.writeback === undefined) break
      // Wait for a write or the background sync to finish, or for new batches (see enqueue).
      await new Promise<void>((resolve) => { state.wake = resolve })
    }
    queue.length = 0
    state.queueHead = 0
    state.issued = 0
  } catch (err) {
    fail(state, err)
    if (isNoSpaceError(err)) await releaseSpares(state)
    // Let the writes (and a background sync) still running finish before anyone may close their files.
    await Promise.all(inflight.map(async (group) => await group.written))
    await state.writeback
    inflight.length = 0
  }
  state.writerActive = false
  const waiters = state.idleWaiters
  state.idleWaiters = []
  for (const wake of waiters) wake()
}

/**
 * Whether the finished groups at the head of `state.inflight` need a sync while later groups are still
 * being written: then they wait for those (already issued, so soon done) and one sync covers
 * them all, rather than a sync now and another for the rest a moment later.
 */
function holdingForSync (state: StoreState): boolean {
  let sync = false
  for (const group of state.inflight) {
    if (!group.done) return sync
    if (group.error !== undefined) return false
    sync ||= group.sync
  }
  return false
}

/** Acknowledges the finished groups at the head of `state.inflight`, syncing first if one needs it. */
async function acknowledge (state: StoreState): Promise<void> {
  const inflight = state.inflight
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
  if (sync && state.dirty) {
    state.dirty = false
    state.unsyncedBytes = 0
    state.syncCount++
    // With the background sync too: Linux reports a write-back error to only one of the
    // fdatasyncs on a file, so if that one took it, this one returns 0 with the bytes not on disk.
    await Promise.all([(state.current.handle as FileHandle).datasync(), state.writeback])
    if (state.writebackError !== undefined) throw state.writebackError
    synced = true
    state.segmentSyncs++
  }
  const finished = inflight.splice(0, count)
  const queue = state.queue
  const end = (finished[count - 1] as WriteGroup).end
  const current = state.current
  for (let i = state.queueHead; i < end; i++) {
    const batch = queue[i] as PendingBatch
    if (batch.segment === current.id && batch.bytes > 0) current.acknowledgedBytes = batch.offset + batch.bytes
    // Forget it now, not at the next trim of the queue: kept for thousands of batches, with its
    // locations and callbacks, it outlives young-generation collections and fills the old one.
    queue[i] = undefined
    batch.resolve()
  }
  // Every batch acknowledged so far, in this call or before, was written before the sync started.
  if (synced) current.syncedBytes = current.acknowledgedBytes
  state.queueHead = end
  if (end > 4096 && end * 2 > queue.length) {
    queue.splice(0, end)
    state.queueHead = 0
    state.issued -= end
    for (const group of inflight) {
      group.head -= end
      group.end -= end
    }
  }
  if (synced) queueMark(state)
  state.maybeScheduleCompaction()
  if (synced) maybePrepareSpare(state)
}

/**
 * After a sync, a batch holding just a mark record stating it, queued behind what is queued
 * already: what the sync made durable is vouched for at once, not only once a later write comes
 * (recovery reports damage below a mark as corruption, whatever the block data holds; see
 * recovery.ts). With nothing else queued it is written at once, before the callers of the synced
 * batches run, so a kill right after they learn their batch is durable cannot lose it. The mark is
 * not synced itself: a crash that loses it loses only the statement. Skipped when a roll is
 * pending (the segment is synced when it is sealed); a segment already full gets it all the same,
 * up to HEADER_BYTES past segmentBytes (it is sealed only when a later batch comes).
 */
function queueMark (state: StoreState): void {
  const segment = state.current
  if (segment !== state.tail || segment.syncedBytes <= segment.markedBytes) return
  const offset = segment.size
  const stated = segment.syncedBytes
  segment.size += HEADER_BYTES
  // Right after what it states (nothing else queued), a later sync of the mark itself is no news.
  segment.markedBytes = offset === stated ? offset + HEADER_BYTES : stated
  // No caller waits for it: if its write fails (and so stops the store), background work says so.
  state.queue.push({ segment: segment.id, offset, bytes: HEADER_BYTES, fields: [0, stated, 0], entries: [MARK], sync: false, resolve: noop, reject: (err) => { reportBackground(state, err) } })
  // (Resolved batches run their callers only after this returns: a small group is written by then.)
  if (state.issued === state.queue.length - 1 && state.inflight.length === 0) state.inflight.push(startGroup(state))
}

/**
 * Takes the next batches (up to GROUP_BYTES, at least one, all in the current segment), encodes
 * their record headers and starts writing them with their payloads at their reserved offset.
 */
function startGroup (state: StoreState): WriteGroup {
  const queue = state.queue
  const segment = state.current
  const head = state.issued
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
  state.issued = end
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
  const { parts, fileOffset } = encodeGroup(state, head, end, bytes, locations)
  state.issuedBytes += bytes
  if (bytes <= state.syncWriteMaxBytes) {
    try {
      writevFullySync(handle.fd, parts, fileOffset)
      written(state, locations, bytes)
    } catch (err) {
      group.error = err
    }
    group.done = true
    return group
  }
  group.written = writevFully(handle, parts, fileOffset).then(() => {
    written(state, locations, bytes)
  }, (err: unknown) => {
    group.error = err
  }).finally(() => {
    group.done = true
    wakeWriter(state)
  })
  return group
}

/**
 * Encodes the records of the batches queue[head, end), `bytes` in all, in the current segment's
 * format, as the parts of a writev: the headers in one small buffer, the payloads the callers'
 * own, and the file offset they start at. Adds the puts' locations to `locations`.
 */
function encodeGroup (state: StoreState, head: number, end: number, bytes: number, locations: BlockLocation[]): { parts: Uint8Array[], fileOffset: number } {
  const queue = state.queue
  const seed = state.current.seed
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
  if (total !== bytes || fileOffset !== state.issuedBytes) {
    throw new GalleonError('CORRUPTION', `internal error: a write group of ${total} bytes at ${fileOffset} does not match the ${bytes} bytes reserved at ${state.issuedBytes}`)
  }
  return { parts, fileOffset }
}

/** A group's bytes are in the file. */
function written (state: StoreState, locations: readonly BlockLocation[], bytes: number): void {
  state.dirty = true
  state.unsyncedBytes += bytes
  // Only now can reads go to the file instead of the pending value.
  for (const location of locations) location.data = undefined
}

/** Starts an fdatasync of the active segment that nothing waits for (see WRITEBACK_SYNC_BYTES). */
function startWriteback (state: StoreState): void {
  state.unsyncedBytes = 0
  state.writebackSyncs++
  state.writeback = (state.current.handle as FileHandle).datasync().then(noop, (err: unknown) => {
    state.writebackError ??= err
  }).finally(() => {
    state.writeback = undefined
    wakeWriter(state)
  })
}

/**
 * Seals the current segment and makes `nextId` current: the old file is fsynced before the new one
 * exists, so recovery may treat any damage in a non-last segment as corruption, not a torn write.
 */
async function roll (state: StoreState, nextId: number): Promise<void> {
  const old = state.current
  const next = state.segments.get(nextId)
  if (next === undefined || nextId !== old.id + 1) throw new GalleonError('CORRUPTION', `internal error: cannot roll from segment ${old.id} to ${nextId}`)
  if (state.writeback !== undefined) await state.writeback
  if (state.writebackError !== undefined) throw state.writebackError
  state.unsyncedBytes = 0
  const handle = old.handle as FileHandle
  // A reused file is longer than what was written to it: its earlier incarnations are cut off
  // before it is sealed, so a sealed segment holds only its own records.
  const cut = old.seed !== undefined && (await handle.stat()).size !== old.size
  if (cut) await handle.truncate(old.size)
  old.fileBytes = old.size
  if (state.dirty || cut) {
    state.dirty = false
    state.syncCount++
    await handle.sync()
  }
  next.handle = next.spare === undefined ? await open(next.path, 'wx+') : await openSpare(next)
  await syncDirectory(state.location)
  // Listed once its file exists (its name is durable) and before its first record: a crash before
  // the list is written leaves an unlisted file that holds nothing, which open removes (see
  // segment-list.ts). An earlier release's empty segment, removed below, leaves the list with it.
  state.listed.set(next.id, basename(next.path))
  if (old.size === 0) state.listed.delete(old.id)
  await persistSegmentList(state)
  state.current = next
  state.segmentSyncs = 0
  state.issuedBytes = 0
  state.compactionWanted = true
  if (old.size === 0) {
    // Only an earlier release's unsalted segment is rolled from empty (see enqueue): nothing in it
    // to seal or compact, so it goes, once the next segment's file is durable. (A crash that loses
    // the unlink leaves an empty sealed segment, which holds nothing.)
    state.segments.delete(old.id)
    old.handle = undefined
    await handle.close()
    await removeFile(old.path)
    return
  }
  old.sealed = true
  scheduleHint(state, old)
}

/** After a failed write or sync nothing more is written: what reached the disk is uncertain. */
function fail (state: StoreState, err: unknown): void {
  const cause = isNoSpaceError(err)
    ? new GalleonError('NO_SPACE', `the disk holding ${state.location} is full, so the block store stopped writing (its spare segment files are removed to make room); close and reopen it, then free space: delete volumes or snapshots, trim, or grow the disk`, { cause: err })
    : wrapIo(err, `the file block store at ${state.location} stopped after a write or sync of ${state.current.path} failed; close and reopen it (recovery keeps every acknowledged batch)`)
  state.failure ??= cause
  const queue = state.queue
  // Batches being written are rejected too: they were never acknowledged, and may or may not be
  // found by recovery.
  for (let i = state.queueHead; i < queue.length; i++) (queue[i] as PendingBatch).reject(state.failure)
  queue.length = 0
  state.queueHead = 0
  state.issued = 0
}

/** Resolves once the writer has nothing left to write (at once when it is not running). */
export function whenWriterIdle (state: StoreState): Promise<void> {
  if (!state.writerActive) return Promise.resolve()
  return new Promise((resolve) => state.idleWaiters.push(resolve))
}
