// On-disk formats of the file block store: the log record (header + payload) and the hint file entry.

import { crc32 } from '../../src/checksum.js'
import { MAX_BLOCK_VALUE_BYTES } from '../../src/drivers.js'

/**
 * Record header, little-endian, 36 bytes, followed by `length` payload bytes:
 *
 * | offset | size | field                                                          |
 * |--------|------|----------------------------------------------------------------|
 * | 0      | 4    | magic `RECORD_MAGIC`                                           |
 * | 4      | 4    | crc32 (zlib) of bytes 8..36 of the header and of the payload   |
 * | 8      | 1    | type: 1 put, 2 del (a del has no payload)                      |
 * | 9      | 1    | flags: bit 0 = the batch continues with the next record        |
 * | 10     | 2    | reserved, 0                                                    |
 * | 12     | 4    | volume (u32)                                                   |
 * | 16     | 8    | index as two u32, high word first                              |
 * | 24     | 8    | gen as two u32, high word first                                |
 * | 32     | 4    | payload length (u32)                                           |
 *
 * Salted records ('GFR2') are the same but for the magic and the crc, which starts from the
 * segment's salt (a random nonzero 32-bit value, part of the segment's file name) instead of 0.
 * Every segment this version makes is salted (releases before it salted only reused files). In a
 * reused file (a compacted segment's file renamed to a later segment and overwritten from its
 * start, so the writes land in pages the file already has, see FileBlockStoreOptions.spareSegments)
 * the bytes past the new records are the earlier incarnations' records, and a record made under
 * another salt passes the crc check under this one only by a 2^-32 chance (for a fixed record the
 * crc is a one-to-one function of the seed), nor does an unsalted one (its magic differs). Nor can
 * block data holding copies of records (a volume may hold a copy of a store, or of this store's
 * other segments) forge one without knowing the salt; a copy of another store's file created empty
 * shares the salt of one created empty here by a 1 in 2^24 - 1 chance (that range is 24 bits, see
 * newSegmentSalt), and then reads as this segment's records. A salted segment holds only salted records.
 * Unsalted segments ('GFR1' records, 'GFR3' marks) are read as before.
 *
 * A mark record (type 3, no payload, volume and gen 0) states in its index field an offset of its
 * segment below which every byte had been synced when it was written (the writer appends one, as a
 * batch of its own, after each sync, and puts one ahead of the first batch after an open that
 * synced what it found); recovery reports damage below
 * it as corruption rather than treating it as a torn write. In a salted segment it is a salted
 * record like the others; in an unsalted one its magic is `UNSALTED_MARK_MAGIC` ('GFR3'), which a
 * release from before unsalted marks reports as a record of a newer format instead of cutting the
 * log at it (its crc starts from 0, like the other unsalted records).
 */
export const HEADER_BYTES = 36
/** First word of every unsalted record: 'GFR1' read as little-endian bytes. */
export const RECORD_MAGIC = 0x31524647
/** First word of every salted record: 'GFR2'. */
export const SALTED_RECORD_MAGIC = 0x32524647
/** First word of a mark record in an unsalted segment: 'GFR3'. */
export const UNSALTED_MARK_MAGIC = 0x33524647
/** Record type of a put (has a payload). */
export const TYPE_PUT = 1
/** Record type of a delete, a tombstone (no payload). */
export const TYPE_DEL = 2
/** Record type of a mark: `index` is an offset of its segment synced when it was written. */
export const TYPE_MARK = 3
/** Flag of every record of a batch but its last: a batch is applied only once its last record is seen. */
export const FLAG_CONTINUES = 1

const TWO_POW_32 = 0x1_0000_0000
// A safe integer's high word is below 2^21; anything larger is a damaged record, not an address.
const MAX_HIGH_WORD = 0x1f_ffff

// Little-endian u32 fields written and read byte by byte: Buffer#writeUInt32LE/readUInt32LE check
// their arguments on every call, which cost more than the stores (a quarter of a 4 KiB record's
// encoding apart from the copy and the crc).
function put32 (b: Uint8Array, p: number, v: number): void {
  b[p] = v
  b[p + 1] = v >>> 8
  b[p + 2] = v >>> 16
  b[p + 3] = v >>> 24
}

/** A safe integer as two u32, high word first (the layout of index, gen and offset fields). */
function putHighLow (b: Uint8Array, p: number, v: number): void {
  put32(b, p, Math.floor(v / TWO_POW_32))
  put32(b, p + 4, v >>> 0)
}

function get32 (b: Uint8Array, p: number): number {
  return ((b[p] as number) | ((b[p + 1] as number) << 8) | ((b[p + 2] as number) << 16)) + (b[p + 3] as number) * 0x100_0000
}

/** The fields of one decoded record header. */
export interface RecordHeader {
  type: number
  flags: number
  volume: number
  index: number
  gen: number
  length: number
}

/**
 * Writes the header of a record at `position` of `target`; the payload is written from its own
 * buffer right after it (writev). The crc covers header bytes 8..36 and then `payload`, salted
 * with `seed` when given. The payload must not change until it is written.
 */
export function encodeRecordHeader (
  target: Uint8Array, position: number, type: number, flags: number,
  volume: number, index: number, gen: number, payload: Uint8Array | undefined, seed?: number
): void {
  put32(target, position, seed !== undefined ? SALTED_RECORD_MAGIC : type === TYPE_MARK ? UNSALTED_MARK_MAGIC : RECORD_MAGIC)
  target[position + 8] = type
  target[position + 9] = flags
  target[position + 10] = 0
  target[position + 11] = 0
  put32(target, position + 12, volume)
  putHighLow(target, position + 16, index)
  putHighLow(target, position + 24, gen)
  put32(target, position + 32, payload === undefined ? 0 : payload.byteLength)
  // The crc of header and payload is the crc of the payload continued from the header's.
  const headerCrc = crc32(target.subarray(position + 8, position + HEADER_BYTES), seed)
  put32(target, position + 4, payload === undefined ? headerCrc : crc32(payload, headerCrc))
}

/**
 * Decodes the header at `position` of `source` into `into`, checking everything that can be
 * checked without the payload: a salted record when `salted`, an unsalted one otherwise. Returns
 * false when the bytes are not a plausible header (torn, garbage, or of the other kind); the crc is
 * checked separately by `recordCrcMatches` once the payload is at hand.
 */
export function decodeHeader (source: Buffer, position: number, into: RecordHeader, salted = false): boolean {
  const type = source[position + 8] as number
  if (get32(source, position) !== (salted ? SALTED_RECORD_MAGIC : type === TYPE_MARK ? UNSALTED_MARK_MAGIC : RECORD_MAGIC)) return false
  const flags = source[position + 9] as number
  if ((type !== TYPE_PUT && type !== TYPE_DEL && type !== TYPE_MARK) || (flags & ~FLAG_CONTINUES) !== 0) return false
  if (source[position + 10] !== 0 || source[position + 11] !== 0) return false
  const indexHigh = get32(source, position + 16)
  const genHigh = get32(source, position + 24)
  if (indexHigh > MAX_HIGH_WORD || genHigh > MAX_HIGH_WORD) return false
  const length = get32(source, position + 32)
  if (type === TYPE_PUT ? (length === 0 || length > MAX_BLOCK_VALUE_BYTES) : length !== 0) return false
  if (type === TYPE_MARK && (get32(source, position + 12) !== 0 || genHigh !== 0 || get32(source, position + 28) !== 0)) return false
  into.type = type
  into.flags = flags
  into.volume = get32(source, position + 12)
  into.index = indexHigh * TWO_POW_32 + get32(source, position + 20)
  into.gen = genHigh * TWO_POW_32 + get32(source, position + 28)
  into.length = length
  return true
}

/**
 * True when the stored crc of the record at `position` (header and payload in `source`) matches;
 * `seed`: the segment's seed for a salted record.
 */
export function recordCrcMatches (source: Buffer, position: number, length: number, seed?: number): boolean {
  return crc32(source.subarray(position + 8, position + HEADER_BYTES + length), seed) === get32(source, position + 4)
}

// ---- hint files ------------------------------------------------------------------------------------

/**
 * Hint file: a 32-byte header then one 40-byte entry per record of a sealed segment, in log order, so
 * open() can rebuild the index without reading the segment.
 *
 * Header: magic `HINT_MAGIC` (u32), version 1 (u32), crc32 of bytes 12.. of the file (u32), entry
 * count (u32), size of the segment described, as two u32 high word first (8), reserved (8).
 * Entry: type (u8), flags (u8), reserved (u16), volume (u32), index (2×u32), gen (2×u32),
 * record offset in the segment (2×u32), payload length (u32), reserved (u32).
 */
export const HINT_HEADER_BYTES = 32
/** Size of one hint entry. */
export const HINT_ENTRY_BYTES = 40
/** First word of a hint file: 'GFH1' read as little-endian bytes. */
export const HINT_MAGIC = 0x31484647
const HINT_VERSION = 1

/** Appends hint entries to a growing buffer; one per segment while it is written. */
export class HintBuilder {
  #buffer: Buffer
  #length = HINT_HEADER_BYTES
  #count = 0

  constructor (initialEntries = 1024) {
    this.#buffer = Buffer.alloc(HINT_HEADER_BYTES + initialEntries * HINT_ENTRY_BYTES)
  }

  /** Records one log record at `offset` of the segment. */
  add (type: number, volume: number, index: number, gen: number, offset: number, length: number): void {
    if (this.#length + HINT_ENTRY_BYTES > this.#buffer.byteLength) {
      const grown = Buffer.alloc(this.#buffer.byteLength * 2)
      this.#buffer.copy(grown, 0, 0, this.#length)
      this.#buffer = grown
    }
    const b = this.#buffer
    const p = this.#length
    b[p] = type
    b[p + 1] = 0
    b[p + 2] = 0
    b[p + 3] = 0
    put32(b, p + 4, volume)
    putHighLow(b, p + 8, index)
    putHighLow(b, p + 16, gen)
    putHighLow(b, p + 24, offset)
    put32(b, p + 32, length)
    put32(b, p + 36, 0)
    this.#length += HINT_ENTRY_BYTES
    this.#count++
  }

  /** The complete hint file for a segment of `segmentSize` bytes (a view of the internal buffer). */
  finish (segmentSize: number): Buffer {
    const b = this.#buffer
    put32(b, 0, HINT_MAGIC)
    put32(b, 4, HINT_VERSION)
    put32(b, 12, this.#count)
    put32(b, 16, Math.floor(segmentSize / TWO_POW_32))
    put32(b, 20, segmentSize >>> 0)
    b.fill(0, 24, 32)
    const file = b.subarray(0, this.#length)
    b.writeUInt32LE(crc32(file.subarray(12)), 8)
    return file
  }
}

/** One entry of a hint file, as passed to the `decodeHint` callback (the same object each time). */
export interface HintEntry {
  type: number
  volume: number
  index: number
  gen: number
  offset: number
  length: number
}

/**
 * Validates a whole hint file against the segment it claims to describe and calls `onEntry` for each
 * entry in log order. Returns false (having called nothing) when the hint cannot be trusted, in which
 * case the caller scans the segment instead.
 */
export function decodeHint (file: Buffer, segmentSize: number, onEntry: (entry: HintEntry) => void): boolean {
  if (file.byteLength < HINT_HEADER_BYTES) return false
  if (file.readUInt32LE(0) !== HINT_MAGIC || file.readUInt32LE(4) !== HINT_VERSION) return false
  const count = file.readUInt32LE(12)
  if (file.byteLength !== HINT_HEADER_BYTES + count * HINT_ENTRY_BYTES) return false
  if (file.readUInt32LE(16) * TWO_POW_32 + file.readUInt32LE(20) !== segmentSize) return false
  if (crc32(file.subarray(12)) !== file.readUInt32LE(8)) return false
  // Check every entry before applying any, so a bad hint never half-updates the index.
  for (let p = HINT_HEADER_BYTES; p < file.byteLength; p += HINT_ENTRY_BYTES) {
    const type = file[p] as number
    const offset = file.readUInt32LE(p + 24) * TWO_POW_32 + file.readUInt32LE(p + 28)
    const length = file.readUInt32LE(p + 32)
    if (type !== TYPE_PUT && type !== TYPE_DEL) return false
    if (file.readUInt32LE(p + 8) > MAX_HIGH_WORD || file.readUInt32LE(p + 16) > MAX_HIGH_WORD) return false
    if (offset + HEADER_BYTES + length > segmentSize) return false
  }
  const entry: HintEntry = { type: 0, volume: 0, index: 0, gen: 0, offset: 0, length: 0 }
  for (let p = HINT_HEADER_BYTES; p < file.byteLength; p += HINT_ENTRY_BYTES) {
    entry.type = file[p] as number
    entry.volume = file.readUInt32LE(p + 4)
    entry.index = file.readUInt32LE(p + 8) * TWO_POW_32 + file.readUInt32LE(p + 12)
    entry.gen = file.readUInt32LE(p + 16) * TWO_POW_32 + file.readUInt32LE(p + 20)
    entry.offset = file.readUInt32LE(p + 24) * TWO_POW_32 + file.readUInt32LE(p + 28)
    entry.length = file.readUInt32LE(p + 32)
    onEntry(entry)
  }
  return true
}
