// Recovery of the file block store on open: the index rebuilt from hint files and segment scans, a torn
// tail of the active segment told from corruption and cut off, and the clean-shutdown marker.

import { open, readFile, readdir, stat, type FileHandle } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { wrapIo } from '../../src/abstract-block-store.js'
import { Address } from '../../src/drivers.js'
import { GalleonError } from '../../src/errors.js'
import { CLEAN_MARKER_TEMPORARY_NAME, readCleanMarker, removeCleanMarker, writeCleanMarker, type CleanMarker } from './clean-marker.js'
import { HEADER_BYTES, HintBuilder, TYPE_MARK, TYPE_PUT, decodeHint } from './record.js'
import {
  findBatchAfter, hintPath, isAppendedSegment, isSpareFileName, looksLost, looksUnwritten, newSegmentSalt, parseHintFileName, parseSegmentFileName, scanSegment, segmentPath,
  syncDirectory, syncedMarkedAfter, syncedMarkedInRuns
} from './segment.js'
import { scheduleHint } from './maintenance.js'
import { SEGMENT_LIST_TEMPORARY_NAME, checkSegmentList, persistSegmentList } from './segment-list.js'
import { trimSpares } from './spares.js'
import { Segment, applyRecord, removeFile, type StoreState } from './store-state.js'

/**
 * Records that everything is synced and the active segment ends at its present size. Called with
 * the writer and background work stopped, so nothing is appended after it in this session.
 */
export async function markCleanClose (state: StoreState): Promise<void> {
  const current = state.current
  const handle = current.handle
  if (handle === undefined || current !== state.tail) return
  // A reused file holds its earlier incarnations past what was written: cut off, durably.
  if (current.seed !== undefined && (await handle.stat()).size > current.size) {
    await handle.truncate(current.size)
    await handle.sync()
    current.fileBytes = current.size
  }
  // A tail ahead of the writer, or a file whose size is not what was written, is nothing to vouch for.
  if ((await handle.stat()).size !== current.size) return
  await writeCleanMarker(state.location, { segment: current.id, size: current.size })
}

/** Removes the clean-shutdown marker found on open, before anything changes the active segment. */
async function dropCleanMarker (state: StoreState): Promise<void> {
  if (!state.cleanMarkerFound) return
  await removeCleanMarker(state.location).catch((err: unknown) => { throw wrapIo(err, `could not remove the clean-shutdown marker of ${state.location}`) })
  state.cleanMarkerFound = false
}

/**
 * Rebuilds the index: sealed segments from their hints (or by scanning them when a hint is missing
 * or invalid), then the last segment by scanning, truncating a torn tail after its last complete
 * batch (see `scanForRecovery` for what counts as torn). Removes the clean-shutdown marker.
 */
export async function recover (state: StoreState): Promise<void> {
  const location = state.location
  const names = await readdir(location).catch((err: unknown) => { throw wrapIo(err, `could not list ${location}`) })
  let cleanMarker: CleanMarker | undefined
  try {
    const found = await readCleanMarker(location)
    state.cleanMarkerFound = found.present
    cleanMarker = found.marker
  } catch (err) {
    throw wrapIo(err, `could not read the clean-shutdown marker of ${location}`)
  }
  let segmentIds: number[] = []
  const segmentSalts = new Map<number, number | undefined>()
  const segmentNames = new Map<number, string>()
  const hintIds = new Set<number>()
  const spares: string[] = []
  const leftovers: string[] = []
  for (const name of names) {
    if (isSpareFileName(name)) spares.push(name)
    const parsed = parseSegmentFileName(name)
    if (parsed !== undefined) {
      if (segmentSalts.has(parsed.id)) {
        throw new GalleonError('CORRUPTION', `${location} holds two files for segment ${parsed.id} (${name} and another); move the one that does not belong away, then open again`)
      }
      segmentIds.push(parsed.id)
      segmentSalts.set(parsed.id, parsed.salt)
      segmentNames.set(parsed.id, name)
    }
    const hintId = parseHintFileName(name)
    if (hintId !== undefined) hintIds.add(hintId)
    // A hint, a marker or a segment list that was being written when the process died.
    if (name.endsWith('.hint.tmp') || name === CLEAN_MARKER_TEMPORARY_NAME || name === SEGMENT_LIST_TEMPORARY_NAME) leftovers.push(name)
  }
  // Before anything is changed: a segment file that is gone is refused with the store as it was.
  const listCheck = await checkSegmentList(location, segmentNames).catch((err: unknown) => { throw wrapIo(err, `could not check the segment list of ${location}`) })
  for (const name of leftovers) await removeFile(join(location, name))
  if (listCheck.remove.length > 0) {
    for (const name of listCheck.remove) await removeFile(join(location, name))
    const removed = new Set(listCheck.remove)
    segmentIds = segmentIds.filter((id) => !removed.has(segmentNames.get(id) as string))
    await syncDirectory(location).catch((err: unknown) => { throw wrapIo(err, `could not sync ${location}`) })
  }
  segmentIds.sort((a, b) => a - b)
  const lastId = segmentIds[segmentIds.length - 1]
  let removedHints = false
  for (const hintId of hintIds) {
    // Hints of deleted segments (compaction died between the two unlinks) and of the active one
    // (never written by us, but it would go stale as the segment grows) must not be trusted.
    if (!segmentIds.includes(hintId) || hintId === lastId) {
      await removeFile(hintPath(location, hintId))
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
      await removeFile(path)
      continue
    }
    try {
      state.spares.push({ path, bytes: (await stat(path)).size })
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
    state.segments.set(id, segment)
    try {
      segment.size = segment.fileBytes = (await handle.stat()).size
      segment.seed = salt
      const isLast = id === lastId
      if (!isLast && hintIds.has(id) && await loadHint(state, segment)) {
        segment.sealed = true
        continue
      }
      // The marker vouches for the active segment only at the size it recorded: appended to or cut
      // since, the file is not what was closed.
      const closedCleanly = isLast && cleanMarker !== undefined && cleanMarker.segment === id && cleanMarker.size === segment.size
      await scanForRecovery(state, segment, isLast, closedCleanly)
      segment.sealed = !isLast
    } catch (err) {
      throw wrapIo(err, `could not recover segment ${path}`)
    }
  }
  // Gone before open() resolves, so before any append: a marker left on disk while the active
  // segment grows could vouch for a later torn tail.
  await dropCleanMarker(state)

  if (lastId === undefined) {
    const salt = newSegmentSalt(false)
    const segment = new Segment(1, segmentPath(location, 1, salt), 0, new HintBuilder())
    segment.seed = salt
    try {
      segment.handle = await open(segment.path, 'wx+')
      state.segments.set(1, segment)
      await syncDirectory(location)
    } catch (err) {
      throw wrapIo(err, `could not create segment ${segment.path}`)
    }
  }
  for (const segment of state.segments.values()) state.listed.set(segment.id, basename(segment.path))
  // (A store without segments got its first one above: a list written before would not name it.)
  if (listCheck.rewrite || lastId === undefined) await persistSegmentList(state).catch((err: unknown) => { throw wrapIo(err, `could not write the segment list of ${location}`) })
  const last = [...state.segments.values()].pop() as Segment
  state.tail = last
  state.current = last
  state.issuedBytes = last.size
  // Whatever the last segment holds may still be only in the page cache (a process killed after
  // batches without sync). Count it as unsynced, so the next sync, roll or close fsyncs it: a roll
  // must never seal a segment whose tail a power loss could still tear, or the next open would find
  // a damaged sealed segment and refuse to open.
  state.dirty = last.size > 0
  if (last.size > 0) {
    // The active segment is synced now, so the next batch's mark states that all of it is: damage
    // in what earlier sessions wrote is then corruption, not a torn tail (no zeros mark unwritten
    // space in a reused file, and in any file a page lost at a power loss reads as zeros).
    try {
      await (last.handle as FileHandle).datasync()
    } catch (err) {
      throw wrapIo(err, `could not sync ${last.path}`)
    }
    state.dirty = false
    state.syncCount++
    last.syncedBytes = last.acknowledgedBytes = last.size
    // (markedBytes: as the scan left it; a segment that ends with a mark stating everything before
    // it needs no new one. Its hint was loaded instead only if it is not the last segment.)
  }
  for (const segment of state.segments.values()) {
    // Sealed segments that had to be scanned get their hint now, so the next open is fast.
    if (segment.sealed && segment.hint !== undefined) scheduleHint(state, segment)
  }
  await trimSpares(state).catch(() => {}) // spares are disposable; trimmed again later
}

/** Applies a sealed segment's hint file; false when it is unreadable or does not match the segment. */
async function loadHint (state: StoreState, segment: Segment): Promise<boolean> {
  let file: Buffer
  try {
    file = await readFile(hintPath(state.location, segment.id))
  } catch {
    return false // a hint is only a shortcut: the segment itself is the truth
  }
  return decodeHint(file, segment.size, (entry) => {
    applyRecord(state, segment, new Address(entry.volume, entry.index, entry.gen), entry.offset, entry.type === TYPE_PUT ? { length: entry.length, data: undefined } : undefined)
  })
}

/**
 * Scans a segment into the index. Damage in it (a record that is torn or fails its checks, or a
 * batch that never ends) is corruption, reported with CORRUPTION and left as it is, unless a crash
 * can explain it: only in the last segment, not after a clean close, not below an offset a mark
 * record states had been synced, and (in a file only appended to) with no complete, valid batch after
 * it unless something between reads as unwritten (zeros). A torn tail is truncated: a kill
 * tears only writes not yet acknowledged (batches are acknowledged in log order), a power loss only
 * writes not yet synced, so nothing from the damage on was acknowledged as durable.
 */
async function scanForRecovery (state: StoreState, segment: Segment, isLast: boolean, closedCleanly: boolean): Promise<void> {
  const handle = segment.handle as FileHandle
  const hint = new HintBuilder()
  // Records of the batch being read; applied only when its last record arrives.
  const batch: number[] = []
  // The highest offset a mark states was synced. A valid mark's statement holds
  // whether or not its batch completed (it was made after the sync it reports).
  let synced = 0
  // The last mark read, when it states everything before it (see markedAtEnd).
  let lastMark = -1
  const result = await scanSegment(handle, segment.size, (header, offset) => {
    if (header.type === TYPE_MARK) {
      synced = Math.max(synced, Math.min(header.index, offset))
      lastMark = header.index >= offset ? offset : -1
    }
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
      applyRecord(state, segment, new Address(volume, index, gen), offset, type === TYPE_PUT ? { length, data: undefined } : undefined)
      hint.add(type, volume, index, gen, offset, length)
    }
    batch.length = 0
    }
  })
  segment.hint = hint
  // A segment that ends with a mark stating all before it needs no new one until more is synced
  // (otherwise the first batch after open states what open synced).
  const markedAtEnd = (end: number): number => lastMark !== -1 && lastMark + HEADER_BYTES === end ? end : 0
  if (result.committedEnd === segment.size) {
    segment.markedBytes = markedAtEnd(segment.size)
    return
  }
  // A record of a later format (see newerRecordFormat) is not damage but what a newer GalleonFS wrote: cutting
  // it off as a torn tail would lose what that version acknowledged.
  const newer = result.problem === 'invalid record header' ? await newerRecordFormat(handle, result.stoppedAt) : undefined
  if (newer !== undefined) {
    throw new GalleonError('CORRUPTION', `segment ${segment.path} holds a record in format ${newer} at offset ${result.stoppedAt}, which a newer GalleonFS wrote and this version cannot read; open the storage with that version (nothing was changed)`)
  }
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
  // What a mark, before or after the damage, says was synced cannot have been cut short. In a salted
  // segment any valid mark past the damage is this file's own (earlier incarnations' records and
  // copies of other stores' logs in block data fail its seed); in an unsalted one (made by a release
  // from before salts for every segment) only marks at the boundaries of valid records past the
  // damage count, though a copy of another store's log that begins there can still pass for them.
  const appended = isAppendedSegment(segment.seed)
  const later = appended && result.stoppedAt < segment.size ? await findBatchAfter(handle, segment.size, result.stoppedAt, segment.seed) : undefined
  const markedPast = segment.seed !== undefined
    ? await syncedMarkedAfter(handle, segment.size, result.stoppedAt, segment.seed)
    : await syncedMarkedInRuns(handle, segment.size, later)
  synced = Math.max(synced, markedPast)
  if (damagedAt < synced) throw corruption(`below offset ${synced}, which a mark record states had been synced, so no write was cut short`)
  // Past the last sync in an appended file, a batch written after the damage is what writes in
  // flight at a kill leave (zeros up to it), or write-back out of order at a power loss (an earlier
  // page lost, zeros in a unit of its own); anything else is damage no crash explains. (In a reused
  // file a lost page reads as its earlier incarnations' bytes, not zeros, so a valid batch after
  // damage proves nothing.)
  if (later !== undefined && !await looksUnwritten(handle, result.stoppedAt, later.start) && !await looksLost(handle, result.stoppedAt, later.start)) {
    throw corruption(`yet a complete, valid batch follows at offset ${later.start} and nothing between reads as unwritten, so it is not a write cut short by a crash`)
  }
  // The tail of the active segment after its last complete batch was never acknowledged as durable
  // (or is a batch cut short): drop it so new records follow valid ones.
  await dropCleanMarker(state)
  await handle.truncate(result.committedEnd)
  await handle.sync()
  segment.size = segment.fileBytes = result.committedEnd
  segment.markedBytes = markedAtEnd(result.committedEnd)
}

/**
 * The magic of a record format later than this version's at `offset`, if one is there: 'GFR4' to
 * 'GFR9'. Not 'GFR3': this version writes it on the marks of unsalted segments, so one that does not
 * decode is a damaged or torn mark, whatever its type byte says (a mark across a page boundary whose
 * second page a crash lost has its magic but a type byte of 0).
 */
async function newerRecordFormat (handle: FileHandle, offset: number): Promise<string | undefined> {
  const magic = Buffer.alloc(4)
  const { bytesRead } = await handle.read(magic, 0, 4, offset)
  if (bytesRead < 4) return undefined
  const text = magic.toString('latin1')
  return /^GFR[4-9]$/.test(text) ? text : undefined
}
