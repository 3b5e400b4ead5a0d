// Segment files of the file block store: naming, directory sync, the verifying record scanner used
// by recovery and compaction, and the search past damage that tells corruption from a torn tail.

import { randomBytes } from 'node:crypto'
import { read, readSync, writevSync } from 'node:fs'
import type { FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { MAX_BLOCK_VALUE_BYTES } from '../../src/drivers.js'
import { FLAG_CONTINUES, HEADER_BYTES, RECORD_MAGIC, SALTED_RECORD_MAGIC, TYPE_MARK, decodeHeader, recordCrcMatches, type RecordHeader } from './record.js'

const SEGMENT_NAME = /^seg-([0-9a-f]{16})(?:-([0-9a-f]{8}))?\.log$/
const HINT_NAME = /^seg-([0-9a-f]{16})\.hint$/
const SPARE_NAME = /^spare-([0-9a-f]{16})\.log$/
// Large enough for the largest record, so a record always fits in one read.
const SCAN_CHUNK_BYTES = 4 * 1024 * 1024 > HEADER_BYTES + MAX_BLOCK_VALUE_BYTES ? 4 * 1024 * 1024 : HEADER_BYTES + MAX_BLOCK_VALUE_BYTES
// Bytes a crash can leave unwritten come in aligned units of at least this size: a write cut short by
// a kill stops at a page boundary (4 KiB or more), and a power loss loses whole file-system blocks
// (512 bytes or more). Whatever was not written up to the next write that landed reads as zeros on
// the usual file systems; where it reads as stale bytes instead, open reports CORRUPTION, cutting nothing.
const UNWRITTEN_UNIT_BYTES = 512
// The first three bytes of every magic ('GFR'): unsalted records ('GFR1') and marks ('GFR3') are
// both searched for with it, and decodeHeader tells which a candidate is.
const MAGIC_PREFIX_BYTES = Buffer.from([RECORD_MAGIC & 0xff, (RECORD_MAGIC >>> 8) & 0xff, (RECORD_MAGIC >>> 16) & 0xff])
const SALTED_MAGIC_BYTES = Buffer.from([SALTED_RECORD_MAGIC & 0xff, (SALTED_RECORD_MAGIC >>> 8) & 0xff, (SALTED_RECORD_MAGIC >>> 16) & 0xff, SALTED_RECORD_MAGIC >>> 24])

// Every segment this version makes is salted (see record.ts), and its salt tells how its file came:
// below 2^24 a file created empty and only appended to, or a spare made in advance (nothing but
// zeros, see prepareSpare), so bytes past what reached the disk read as zeros; from 2^24 on a
// reused segment file, whose bytes past that are its earlier incarnations' records.
// Stores from before this rule have unsalted segments (appended files) and salted reused files with
// salts of any value; a reused one of those with a salt below 2^24 (1 in 256) is taken for an
// appended file, which only makes recovery stricter (see recovery.ts).
const APPENDED_SALT_LIMIT = 0x100_0000

/** A random salt for a new segment: below 2^24 for a file of zeros (created empty, or made in advance), at or above it for a reused segment file. */
export function newSegmentSalt (reused: boolean): number {
  const random = randomBytes(4).readUInt32LE(0)
  return reused ? APPENDED_SALT_LIMIT + random % (0x1_0000_0000 - APPENDED_SALT_LIMIT) : (random % (APPENDED_SALT_LIMIT - 1)) + 1
}

/**
 * Whether the segment with this seed (undefined: unsalted) was made as a file only appended to, so
 * that bytes a crash left unwritten in it read as zeros (see newSegmentSalt).
 */
export function isAppendedSegment (seed: number | undefined): boolean {
  return seed === undefined || seed < APPENDED_SALT_LIMIT
}

/** File name of segment `id`; a salted segment has its salt in it. */
export function segmentFileName (id: number, salt?: number): string {
  return `seg-${id.toString(16).padStart(16, '0')}${salt === undefined ? '' : `-${salt.toString(16).padStart(8, '0')}`}.log`
}

/** File name of the hint of segment `id`. */
export function hintFileName (id: number): string {
  return `seg-${id.toString(16).padStart(16, '0')}.hint`
}

/** Segment id (and salt, for a salted segment) of a segment file name, or undefined if `name` is not one. */
export function parseSegmentFileName (name: string): { id: number, salt: number | undefined } | undefined {
  const match = SEGMENT_NAME.exec(name)
  if (match === null) return undefined
  const salt = match[2] === undefined ? undefined : parseInt(match[2], 16)
  // Salt 0 would be the seed of unsalted records: never made, never accepted.
  return salt === 0 ? undefined : { id: parseInt(match[1] as string, 16), salt }
}

/** File name of a spare (an emptied segment's file, kept for reuse), named after the segment it was. */
export function spareFileName (id: number): string {
  return `spare-${id.toString(16).padStart(16, '0')}.log`
}

/**
 * File name of a spare made in advance (see prepareSpare): a random id with a leading `f`, which no
 * segment id written in 16 hex digits reaches, so it never collides with the spare of a segment.
 */
export function preparedSpareFileName (): string {
  return `spare-f${randomBytes(8).toString('hex').slice(0, 15)}.log`
}

/** Whether `name` is the name of a spare made in advance (zeros, never a segment; see preparedSpareFileName). */
export function isPreparedSpareFileName (name: string): boolean {
  return /^spare-f[0-9a-f]{15}\.log$/.test(name)
}

/** Whether `name` is the name of a spare file. */
export function isSpareFileName (name: string): boolean {
  return SPARE_NAME.test(name)
}

/** Segment id of a hint file name, or undefined if `name` is not one. */
export function parseHintFileName (name: string): number | undefined {
  const match = HINT_NAME.exec(name)
  return match === null ? undefined : parseInt(match[1] as string, 16)
}

export { syncDirectory } from '../../src/durable-files.js'

/** Reads exactly `length` bytes at `position` (pread may return less than asked). */
export async function readFully (handle: FileHandle, target: Uint8Array, offset: number, length: number, position: number): Promise<number> {
  let done = 0
  while (done < length) {
    const bytesRead = await preadFd(handle.fd, target, offset + done, length - done, position + done)
    if (bytesRead === 0) break
    done += bytesRead
  }
  return done
}

/** `readFully` on the calling thread (see FileBlockStoreOptions.syncReadMaxBytes). */
export function readFullySync (fd: number, target: Uint8Array, offset: number, length: number, position: number): number {
  let done = 0
  while (done < length) {
    const bytesRead = readSync(fd, target, offset + done, length - done, position + done)
    if (bytesRead === 0) break
    done += bytesRead
  }
  return done
}

/** The file-handle call writevFully needs (a parameter for tests). */
export interface Writev {
  writev: (parts: readonly Uint8Array[], position: number) => Promise<{ bytesWritten: number }>
}

/**
 * Writes `parts` back to back at `position` with writev through the thread pool, going on after a
 * short write until all are written (an error, such as ENOSPC, rejects as it comes). Takes `parts`
 * over: its entries may be replaced.
 */
export async function writevFully (handle: Writev, parts: Uint8Array[], position: number): Promise<void> {
  let first = 0
  while (first < parts.length) {
    const { bytesWritten } = await handle.writev(first === 0 ? parts : parts.slice(first), position)
    first = advanceParts(parts, first, bytesWritten, position)
    position += bytesWritten
  }
}

/** `writevFully` on the calling thread; `write` is the system call (a parameter for tests). */
export function writevFullySync (fd: number, parts: Uint8Array[], position: number,
  write: (fd: number, parts: readonly Uint8Array[], position: number) => number = writevSync): void {
  let first = 0
  while (first < parts.length) {
    const written = write(fd, first === 0 ? parts : parts.slice(first), position)
    first = advanceParts(parts, first, written, position)
    position += written
  }
}

/**
 * After a writev of parts[first..] wrote `written` bytes at `position`: the index of the first part
 * not wholly written, the one written in part cut to its rest.
 */
function advanceParts (parts: Uint8Array[], first: number, written: number, position: number): number {
  if (!(written > 0)) throw new Error(`writev wrote ${written} bytes at offset ${position} and reported no error`)
  let left = written
  while (first < parts.length && left >= (parts[first] as Uint8Array).byteLength) left -= (parts[first++] as Uint8Array).byteLength
  if (left > 0) parts[first] = (parts[first] as Uint8Array).subarray(left)
  return first
}

/**
 * One positional read through the callback API on the handle's descriptor: a FileHandle.read goes
 * through more promise machinery per call, which shows on the hot path of small random reads.
 */
function preadFd (fd: number, target: Uint8Array, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    read(fd, target, offset, length, position, (err, bytesRead) => { if (err === null) resolve(bytesRead); else reject(err) })
  })
}

/** True when `err` is a Node system error with `code`. */
export function isCode (err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code
}

/**
 * Called for each verified record. `source` holds the record from `payloadStart` for
 * `header.length` bytes and is reused once the visitor returns (or its promise settles): copy what
 * must outlive the call, unless the scan was given `freshChunks`. `header` is the same object on
 * every call.
 */
export type RecordVisitor = (header: RecordHeader, offset: number, source: Buffer, payloadStart: number) => void | Promise<void>

/** Options of `scanSegment`. */
export interface ScanOptions {
  /** Called after each record that ends a batch. */
  onBatchEnd?: () => void
  /**
   * Decides from the (structurally valid) header whether a record matters; records it refuses are
   * stepped over without checking their crc or calling `onRecord`. Compaction skips dead records so.
   */
  wants?: (header: RecordHeader, offset: number) => boolean
  /** Read each chunk into a new buffer, so `source` views stay valid after the visitor returns. */
  freshChunks?: boolean
  /** Offset of the first record to read (default 0); `committedEnd` starts there. */
  start?: number
  /** The segment's seed when it is salted (see record.ts): then only salted records are valid. */
  seed?: number
}

/** Outcome of `scanSegment`. */
export interface ScanResult {
  /** Offset just past the last record that ended a batch: everything before it is whole and verified. */
  committedEnd: number
  /** Where the scan stopped: the file size if every record was whole and valid. */
  stoppedAt: number
  /** Why the scan stopped before the end of the file; undefined if it did not. */
  problem: string | undefined
}

/**
 * Reads a segment from the start, verifying each record's header and crc, and calls `onRecord` for
 * every valid record and `onBatchEnd` after each record that ends a batch. Stops at the first record
 * that is torn or invalid. Records after `committedEnd` belong to a batch that never completed.
 */
export async function scanSegment (handle: FileHandle, size: number, onRecord: RecordVisitor, options: ScanOptions = {}): Promise<ScanResult> {
  const { onBatchEnd, wants, freshChunks = false, start = 0, seed } = options
  const salted = seed !== undefined
  const chunkBytes = Math.max(1, Math.min(SCAN_CHUNK_BYTES, size - start))
  let buffer = Buffer.allocUnsafeSlow(chunkBytes)
  let bufferStart = 0
  let bufferLength = 0
  const ensure = async (position: number, length: number): Promise<void> => {
    if (position >= bufferStart && position + length <= bufferStart + bufferLength) return
    bufferStart = position
    if (freshChunks) buffer = Buffer.allocUnsafeSlow(chunkBytes)
    bufferLength = await readFully(handle, buffer, 0, Math.min(buffer.byteLength, size - position), position)
  }
  const header: RecordHeader = { type: 0, flags: 0, volume: 0, index: 0, gen: 0, length: 0 }
  let position = start
  let committedEnd = start
  while (position < size) {
    if (size - position < HEADER_BYTES) return { committedEnd, stoppedAt: position, problem: 'torn record header' }
    // Checked here first: most records are in the chunk already, and an await per record adds up.
    if (position < bufferStart || position + HEADER_BYTES > bufferStart + bufferLength) await ensure(position, HEADER_BYTES)
    if (bufferStart + bufferLength < position + HEADER_BYTES) return { committedEnd, stoppedAt: position, problem: 'file shorter than expected' }
    if (!decodeHeader(buffer, position - bufferStart, header, salted)) return { committedEnd, stoppedAt: position, problem: 'invalid record header' }
    const total = HEADER_BYTES + header.length
    if (position + total > size) return { committedEnd, stoppedAt: position, problem: 'torn record' }
    if (wants === undefined || wants(header, position)) {
      if (position < bufferStart || position + total > bufferStart + bufferLength) await ensure(position, total)
      if (bufferStart + bufferLength < position + total) return { committedEnd, stoppedAt: position, problem: 'file shorter than expected' }
      if (!recordCrcMatches(buffer, position - bufferStart, header.length, seed)) return { committedEnd, stoppedAt: position, problem: 'record checksum mismatch' }
      const pending = onRecord(header, position, buffer, position - bufferStart + HEADER_BYTES)
      if (pending !== undefined) await pending
    }
    position += total
    if ((header.flags & FLAG_CONTINUES) === 0) {
      committedEnd = position
      onBatchEnd?.()
    }
  }
  return { committedEnd, stoppedAt: position, problem: undefined }
}

/**
 * Every offset from `from` on where `magic` (or a prefix of it) starts a whole record header, found by reading the file
 * in chunks: yields the chunk (reused for the next one), the candidate's position in it and the
 * chunk's offset in the file. Chunks overlap by a header, so no candidate is missed or seen twice.
 */
async function * headerCandidates (handle: FileHandle, size: number, from: number, magic: Buffer): AsyncGenerator<{ view: Buffer, at: number, chunkStart: number }> {
  const chunk = Buffer.allocUnsafeSlow(Math.max(HEADER_BYTES, Math.min(SCAN_CHUNK_BYTES, size - from)))
  let chunkStart = from
  while (chunkStart + HEADER_BYTES <= size) {
    const length = await readFully(handle, chunk, 0, Math.min(chunk.byteLength, size - chunkStart), chunkStart)
    if (length < HEADER_BYTES) return
    const view = chunk.subarray(0, length)
    // Candidates whose whole header is in this chunk; the next chunk starts at the first one that is not.
    const lastCandidate = length - HEADER_BYTES
    for (let at = view.indexOf(magic); at !== -1 && at <= lastCandidate; at = view.indexOf(magic, at + 1)) yield { view, at, chunkStart }
    if (chunkStart + length >= size) return
    chunkStart += lastCandidate + 1
  }
}

/** A run of valid records found past damage by `findBatchAfter`. */
export interface BatchAfterDamage {
  /** Offset of its first record. */
  start: number
  /** Offset just past its last complete batch. */
  end: number
}

/**
 * Looks past the damaged record at `damagedAt` for a complete batch written after it: an offset
 * where a record header decodes and its crc matches, from which valid records follow one another up
 * to at least one record that ends a batch. Every offset holding the record magic is a candidate, so
 * the search finds the next record whatever the damage did to the lengths before it.
 *
 * A block's payload may itself hold log records (a volume can contain a copy of a store), so a run
 * found inside the damaged record counts only if it goes on past the end that record's header
 * claims: a genuine record boundary there is followed by the real log, a copy inside a payload ends
 * with it. When the damaged header does not decode, it claims nothing and any run counts.
 *
 * `seed`: the segment's seed when it is salted. Then only records made under it are found, which
 * block data cannot forge without the salt (a copy of this same segment could still sit in a
 * payload, hence the rule above for both kinds).
 */
export async function findBatchAfter (handle: FileHandle, size: number, damagedAt: number, seed?: number): Promise<BatchAfterDamage | undefined> {
  const salted = seed !== undefined
  const header: RecordHeader = { type: 0, flags: 0, volume: 0, index: 0, gen: 0, length: 0 }
  let mustEndAfter = damagedAt
  if (damagedAt + HEADER_BYTES <= size) {
    const damagedHeader = Buffer.alloc(HEADER_BYTES)
    if (await readFully(handle, damagedHeader, 0, HEADER_BYTES, damagedAt) === HEADER_BYTES && decodeHeader(damagedHeader, 0, header, salted)) {
      mustEndAfter = damagedAt + HEADER_BYTES + header.length
    }
  }
  // A record claiming to reach past the end of the file holds everything after its start: a torn record.
  if (mustEndAfter >= size) return undefined
  // Records already followed as part of a run that did not count: a run from any of them is a suffix
  // of that run and would not count either. Keeps the search linear when a payload holds many records.
  const followed = new Set<number>()
  for await (const { view, at, chunkStart } of headerCandidates(handle, size, damagedAt + 1, salted ? SALTED_MAGIC_BYTES : MAGIC_PREFIX_BYTES)) {
    const candidate = chunkStart + at
    if (followed.has(candidate) || !decodeHeader(view, at, header, salted)) continue
    const recordEnd = at + HEADER_BYTES + header.length
    if (chunkStart + recordEnd > size || (recordEnd <= view.byteLength && !recordCrcMatches(view, at, header.length, seed))) continue
    const run = await scanSegment(handle, size, (_record, offset) => { followed.add(offset) }, { start: candidate, seed })
    if (run.committedEnd > candidate && run.committedEnd > mustEndAfter) return { start: candidate, end: run.committedEnd }
  }
  return undefined
}

/**
 * The highest offset that a valid mark record after `from` in a salted segment states had been
 * synced (0 if none). Marks are header-only records, checked on their own: one that passes its crc
 * under the segment's seed was written by this incarnation of the file (records of earlier ones
 * fail it, and block data cannot forge one without the salt), and what it states held when it was
 * written, whether or not its batch completed.
 */
export async function syncedMarkedAfter (handle: FileHandle, size: number, from: number, seed: number): Promise<number> {
  const header: RecordHeader = { type: 0, flags: 0, volume: 0, index: 0, gen: 0, length: 0 }
  let synced = 0
  for await (const { view, at, chunkStart } of headerCandidates(handle, size, from, SALTED_MAGIC_BYTES)) {
    if (!decodeHeader(view, at, header, true) || header.type !== TYPE_MARK || !recordCrcMatches(view, at, 0, seed)) continue
    synced = Math.max(synced, Math.min(header.index, chunkStart + at))
  }
  return synced
}

/**
 * The highest offset that a mark record in an unsalted segment, past damage, states had been synced
 * (0 if none), given the first run of valid records after the damage (`findBatchAfter`). Only
 * records at the boundaries of such runs count, each run followed record by record to its end and
 * the next one looked for past that: a mark inside a block's payload (a volume may hold a copy of
 * a store) is stepped over with the payload. A mark found so was written by this segment's writer,
 * and what it states held when it was written, whether or not its batch completed.
 */
export async function syncedMarkedInRuns (handle: FileHandle, size: number, first: BatchAfterDamage | undefined): Promise<number> {
  let synced = 0
  for (let run = first; run !== undefined;) {
    const scan = await scanSegment(handle, size, (header, offset) => {
      if (header.type === TYPE_MARK) synced = Math.max(synced, Math.min(header.index, offset))
    }, { start: run.start })
    if (scan.stoppedAt >= size) break
    run = await findBatchAfter(handle, size, scan.stoppedAt)
  }
  return synced
}

/**
 * True when some aligned unit between damage at `damagedAt` and a later batch at `batchStart`
 * reads as zeros from its start (or from the damage, if that is later) to its end: what a power loss
 * leaves in a file that was only ever appended to when a page written after the last sync did not
 * reach the disk but a later one did (write-back goes in any order). A bit flip or an overwrite
 * leaves no such unit, unless the block data there was zeros; only damage no mark vouches for is
 * judged so (see recovery).
 */
export async function looksLost (handle: FileHandle, damagedAt: number, batchStart: number): Promise<boolean> {
  const unit = UNWRITTEN_UNIT_BYTES
  const end = Math.floor(batchStart / unit) * unit
  const zeros = Buffer.alloc(unit)
  // The unit holding the damage, from the damage on; then whole units, read a chunk at a time.
  let from = Math.min(end, (Math.floor(damagedAt / unit) + 1) * unit)
  if (from > damagedAt) {
    const head = Buffer.alloc(from - damagedAt)
    if (await readFully(handle, head, 0, head.byteLength, damagedAt) === head.byteLength && zeros.subarray(0, head.byteLength).equals(head)) return true
  }
  const chunk = Buffer.allocUnsafeSlow(Math.min(Math.floor(SCAN_CHUNK_BYTES / unit) * unit, Math.max(unit, end - from)))
  while (from < end) {
    const length = await readFully(handle, chunk, 0, Math.min(chunk.byteLength, end - from), from)
    for (let at = 0; at + unit <= length; at += unit) if (zeros.equals(chunk.subarray(at, at + unit))) return true
    if (length < Math.min(chunk.byteLength, end - from)) return false
    from += length
  }
  return false
}

/**
 * True when the bytes between damage at `damagedAt` and a later batch at `batchStart` end the way a
 * crash leaves them: zeros from the damage, or from an aligned unit boundary, up to the batch. The
 * writer has several writes in flight at reserved offsets, so a kill (or a power loss, which may
 * persist pages in any order) can leave a later batch on disk without an earlier one; neither was
 * acknowledged, since batches are acknowledged in order. A bit flip or overwrite leaves nonzero bytes.
 */
export async function looksUnwritten (handle: FileHandle, damagedAt: number, batchStart: number): Promise<boolean> {
  const unitStart = Math.floor((batchStart - 1) / UNWRITTEN_UNIT_BYTES) * UNWRITTEN_UNIT_BYTES
  const from = Math.max(damagedAt, unitStart)
  const gap = Buffer.alloc(batchStart - from)
  if (await readFully(handle, gap, 0, gap.byteLength, from) !== gap.byteLength) return false
  for (const byte of gap) if (byte !== 0) return false
  return true
}

/** Path of segment `id` (with `salt` when salted) in `directory`. */
export function segmentPath (directory: string, id: number, salt?: number): string {
  return join(directory, segmentFileName(id, salt))
}

/** Path of the hint of segment `id` in `directory`. */
export function hintPath (directory: string, id: number): string {
  return join(directory, hintFileName(id))
}
