// Tests of what is specific to the file block store (backends/file): segment files, compaction, hint
// files, torn-tail recovery, corruption, the directory lock and group commit. The behaviour every
// block store shares is checked by the conformance suite (test/conformance/block-store.ts).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { appendFile, copyFile, mkdtemp, open, readFile, readdir, readlink, rename, rm, stat, symlink, truncate, unlink, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { createRequire, syncBuiltinESMExports } from 'node:module'
import { basename, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { SyncReadGovernor, SLOW_READ_MS, SLOW_READ_BYTES_PER_MS, VERY_SLOW_READ_MS, BACKOFF_MS } from '../backends/file/sync-reads.js'
import { FileBlockStore, type FileBlockStoreOptions } from '../backends/file/index.js'
import {
  FLAG_CONTINUES, HEADER_BYTES, HINT_ENTRY_BYTES, HINT_HEADER_BYTES, HintBuilder, RECORD_MAGIC, SALTED_RECORD_MAGIC, TYPE_DEL, TYPE_MARK, TYPE_PUT,
  decodeHeader, decodeHint, encodeRecordHeader, recordCrcMatches, type HintEntry, type RecordHeader
} from '../backends/file/record.js'
import { encodeRecord } from './support/file-records.js'
import { crc32 as zlibCrc32 } from 'node:zlib'
import { hintFileName, isAppendedSegment, newSegmentSalt, parseSegmentFileName, writevFully, writevFullySync } from '../backends/file/segment.js'
import { segmentFile } from './support/file-segments.js'
import type { BlockAddress, BlockOp } from '../src/drivers.js'
import { GalleonError } from '../src/errors.js'
import { addr, assertBytes, bytesOf, collect, del, put, seededRandom as mulberry32 } from './conformance/fixtures.js'
import { BlockStoreModel } from './conformance/block-store.js'
import { observed } from './support/observed.js'

const FILE_STORE_MODULE = fileURLToPath(new URL('../backends/file/index.ts', import.meta.url))

// ---- helpers ---------------------------------------------------------------------------------------

/** Runs `body` with a fresh directory, removed afterwards; every store made by `make` is closed first. */
async function withStore (
  options: Omit<FileBlockStoreOptions, 'location'>,
  body: (context: { location: string, make: (extra?: Omit<FileBlockStoreOptions, 'location'>) => FileBlockStore, reopen: (store: FileBlockStore) => Promise<FileBlockStore> }) => Promise<void>
): Promise<void> {
  const location = await mkdtemp(join(tmpdir(), 'galleonfs-file-store-'))
  const stores: FileBlockStore[] = []
  const make = (extra: Omit<FileBlockStoreOptions, 'location'> = {}): FileBlockStore => {
    const store = new FileBlockStore({ ...options, ...extra, location })
    stores.push(store)
    return store
  }
  const reopen = async (store: FileBlockStore): Promise<FileBlockStore> => {
    await store.close()
    const next = make()
    await next.open()
    return next
  }
  try {
    await body({ location, make, reopen })
  } finally {
    try {
      for (const store of stores) await store.close().catch(() => {})
    } finally {
      await rm(location, { recursive: true, force: true })
    }
  }
}





async function rejectsWithCode (promise: Promise<unknown>, codes: string | string[], what: string): Promise<GalleonError> {
  const wanted = Array.isArray(codes) ? codes : [codes]
  let caught: unknown
  await assert.rejects(promise, (err: unknown) => { caught = err; return true }, `${what}: expected a rejection`)
  assert.ok(caught instanceof GalleonError, `${what}: expected a GalleonError, got ${String(caught)}`)
  assert.ok(wanted.includes(caught.code), `${what}: expected ${wanted.join(' or ')}, got ${caught.code}: ${caught.message}`)
  return caught
}

/** Segment files of a store directory, in id order, with their sizes. */
async function segments (location: string): Promise<Array<{ id: number, name: string, size: number }>> {
  const result: Array<{ id: number, name: string, size: number }> = []
  for (const name of await readdir(location)) {
    const match = /^seg-([0-9a-f]{16})(?:-[0-9a-f]{8})?\.log$/.exec(name)
    if (match === null) continue
    // Compaction may remove a segment between the listing and the stat.
    const size = await stat(join(location, name)).then((s) => s.size, (err: NodeJS.ErrnoException) => { if (err.code === 'ENOENT') return undefined; throw err })
    if (size !== undefined) result.push({ id: parseInt(match[1] as string, 16), name, size })
  }
  return result.sort((a, b) => a.id - b.id)
}

async function hintIds (location: string): Promise<number[]> {
  const ids: number[] = []
  for (const name of await readdir(location)) {
    const match = /^seg-([0-9a-f]{16})\.hint$/.exec(name)
    if (match !== null) ids.push(parseInt(match[1] as string, 16))
  }
  return ids.sort((a, b) => a - b)
}

/** Bytes of the segment files. */
async function segmentBytes (location: string): Promise<number> {
  return (await segments(location)).reduce((sum, segment) => sum + segment.size, 0)
}

/** Names and sizes of the spare files (emptied segment files kept for reuse). */
async function spares (location: string): Promise<Array<{ name: string, size: number }>> {
  const result: Array<{ name: string, size: number }> = []
  for (const name of (await readdir(location)).sort()) {
    if (/^spare-[0-9a-f]{16}\.log$/.test(name)) result.push({ name, size: (await stat(join(location, name))).size })
  }
  return result
}

/** Bytes of the segment files and of the spare files. */
async function diskBytes (location: string): Promise<number> {
  return (await spares(location)).reduce((sum, spare) => sum + spare.size, await segmentBytes(location))
}

/** XORs one byte of `bytes` with `mask` (in place) and returns `bytes`. */
function flipByte (bytes: Buffer, offset: number, mask: number): Buffer {
  bytes[offset] = (bytes[offset] as number) ^ mask
  return bytes
}

/** Bytes of one record with a payload of `length` bytes. */
function recordSize (length: number): number {
  return HEADER_BYTES + length
}

/** An fdatasync failing as a disk's write-back error makes it fail. */
const simulatedEio = (): Error => Object.assign(new Error('EIO: i/o error, fdatasync (simulated)'), { code: 'EIO', errno: -5, syscall: 'fdatasync' })

/**
 * Runs `body` with FileHandle#datasync replaced by `replacement` (which gets the original to call),
 * restored afterwards.
 */
async function withDatasync (replacement: (original: () => Promise<void>) => Promise<void>, body: () => Promise<void>): Promise<void> {
  const probe = await open(join(tmpdir(), '.'), 'r')
  const prototype = Object.getPrototypeOf(probe) as { datasync: () => Promise<void> }
  await probe.close()
  const datasync = prototype.datasync
  prototype.datasync = async function (this: unknown) { await replacement(async () => await datasync.call(this)) }
  try {
    await body()
  } finally {
    prototype.datasync = datasync
  }
}


// ---- tests -----------------------------------------------------------------------------------------

describe('file block store', () => {
  describe('on-disk formats', () => {
    // Oracles written with DataView, independently of the byte-by-byte code in record.ts.
    const cases = [
      { type: TYPE_PUT, flags: FLAG_CONTINUES, volume: 0xfedcba98, index: 2 ** 40 + 0x1234_5678, gen: 2 ** 52 + 5, payload: bytesOf(100, 7) },
      { type: TYPE_PUT, flags: 0, volume: 1, index: 0xffff_ffff, gen: 0x8000_0000, payload: bytesOf(4104, 3) },
      { type: TYPE_DEL, flags: 0, volume: 7, index: 3, gen: Number.MAX_SAFE_INTEGER, payload: undefined }
    ]

    it('a record is laid out as documented, little-endian, and decodes back', () => {
      for (const c of cases) {
        const target = Buffer.alloc(HEADER_BYTES + 5000, 0xee)
        const end = encodeRecord(target, 3, c.type, c.flags, c.volume, c.index, c.gen, c.payload)
        const length = c.payload?.byteLength ?? 0
        assert.equal(end, 3 + HEADER_BYTES + length)
        const view = new DataView(target.buffer, target.byteOffset + 3)
        assert.equal(view.getUint32(0, true), RECORD_MAGIC)
        assert.equal(view.getUint8(8), c.type)
        assert.equal(view.getUint8(9), c.flags)
        assert.equal(view.getUint16(10, true), 0)
        assert.equal(view.getUint32(12, true), c.volume)
        assert.equal(view.getUint32(16, true) * 2 ** 32 + view.getUint32(20, true), c.index)
        assert.equal(view.getUint32(24, true) * 2 ** 32 + view.getUint32(28, true), c.gen)
        assert.equal(view.getUint32(32, true), length)
        assert.equal(view.getUint32(4, true), zlibCrc32(target.subarray(3 + 8, end)))
        if (c.payload !== undefined) assert.deepEqual(new Uint8Array(target.subarray(3 + HEADER_BYTES, end)), c.payload)
        const header: RecordHeader = { type: 0, flags: 0, volume: 0, index: 0, gen: 0, length: 0 }
        assert.ok(decodeHeader(target, 3, header))
        assert.deepEqual(header, { type: c.type, flags: c.flags, volume: c.volume, index: c.index, gen: c.gen, length })
      }
    })

    it('a salted record differs only in its magic and its crc seed, and is valid only under its seed', () => {
      const seed = 0x2a
      for (const c of cases) {
        const target = Buffer.alloc(HEADER_BYTES + 5000, 0xee)
        const end = encodeRecord(target, 3, c.type, c.flags, c.volume, c.index, c.gen, c.payload, seed)
        const plain = Buffer.alloc(HEADER_BYTES + 5000, 0xee)
        encodeRecord(plain, 3, c.type, c.flags, c.volume, c.index, c.gen, c.payload)
        const view = new DataView(target.buffer, target.byteOffset + 3)
        assert.equal(view.getUint32(0, true), SALTED_RECORD_MAGIC)
        assert.equal(view.getUint32(4, true), zlibCrc32(target.subarray(3 + 8, end), seed))
        assert.ok(target.subarray(3 + 8, end).equals(plain.subarray(3 + 8, end)), 'the same fields and payload')
        const header: RecordHeader = { type: 0, flags: 0, volume: 0, index: 0, gen: 0, length: 0 }
        const length = c.payload?.byteLength ?? 0
        assert.ok(decodeHeader(target, 3, header, true))
        assert.equal(decodeHeader(target, 3, header, false), false, 'not an unsalted record')
        assert.equal(decodeHeader(plain, 3, header, true), false, 'an unsalted record is not a salted one')
        assert.ok(recordCrcMatches(target, 3, length, seed))
        assert.equal(recordCrcMatches(target, 3, length, 0x2b), false, 'another segment\'s seed')
        assert.equal(recordCrcMatches(target, 3, length), false, 'no seed')
      }
      // A mark: no payload, volume and gen 0; salted in a salted segment.
      const mark = Buffer.alloc(HEADER_BYTES)
      encodeRecord(mark, 0, TYPE_MARK, 0, 0, 12345, 0, undefined, seed)
      const header: RecordHeader = { type: 0, flags: 0, volume: 0, index: 0, gen: 0, length: 0 }
      assert.ok(decodeHeader(mark, 0, header, true))
      assert.deepEqual(header, { type: TYPE_MARK, flags: 0, volume: 0, index: 12345, gen: 0, length: 0 })
      const unsaltedMark = Buffer.alloc(HEADER_BYTES)
      encodeRecord(unsaltedMark, 0, TYPE_MARK, 0, 0, 12345, 0, undefined)
      // In an unsalted segment a mark has a magic of its own ('GFR3'), which releases from before
      // unsalted marks report as a newer format; a mark under the records' magic is no record.
      assert.equal(unsaltedMark.toString('latin1', 0, 4), 'GFR3')
      assert.ok(decodeHeader(unsaltedMark, 0, header, false))
      assert.deepEqual(header, { type: TYPE_MARK, flags: 0, volume: 0, index: 12345, gen: 0, length: 0 })
      assert.ok(recordCrcMatches(unsaltedMark, 0, 0))
      assert.equal(decodeHeader(unsaltedMark, 0, header, true), false, 'an unsalted mark is not a salted record')
      assert.equal(decodeHeader(mark, 0, header, false), false, 'a salted mark is not an unsalted record')
      const markAsRecord = Buffer.from(unsaltedMark)
      markAsRecord.write('GFR1', 0, 'latin1')
      assert.equal(decodeHeader(markAsRecord, 0, header, false), false, 'a mark under the magic of puts and deletes')
      const putAsMark = Buffer.alloc(recordSize(4))
      encodeRecord(putAsMark, 0, TYPE_PUT, 0, 1, 2, 0, Buffer.from([1, 2, 3, 4]))
      putAsMark.write('GFR3', 0, 'latin1')
      assert.equal(decodeHeader(putAsMark, 0, header, false), false, 'a put under the magic of marks')
      const withVolume = Buffer.alloc(HEADER_BYTES)
      encodeRecord(withVolume, 0, TYPE_MARK, 0, 1, 12345, 0, undefined, seed)
      assert.equal(decodeHeader(withVolume, 0, header, true), false, 'a mark names no volume')
    })

    it('every segment a store makes is salted: a file created empty with a salt below 2^24, a reused file with one at or above it', async () => {
      for (let i = 0; i < 2000; i++) {
        const appended = newSegmentSalt(false)
        const reusedSalt = newSegmentSalt(true)
        assert.ok(Number.isInteger(appended) && appended >= 1 && appended < 2 ** 24 && isAppendedSegment(appended), `salt ${appended} of a new file`)
        assert.ok(Number.isInteger(reusedSalt) && reusedSalt >= 2 ** 24 && reusedSalt <= 0xffff_ffff && !isAppendedSegment(reusedSalt), `salt ${reusedSalt} of a reused file`)
      }
      assert.ok(isAppendedSegment(undefined), 'an unsalted segment (from a release before salts) is an appended file')
      await withStore({ segmentBytes: 4096, compactionThreshold: 0 }, async ({ location, make }) => {
        const store = make()
        await store.open()
        for (let i = 0; i < 6; i++) await store.batch([put(addr(1, i), bytesOf(3000, i))], { sync: true })
        const made = await segments(location)
        assert.ok(made.length >= 5, `${made.length} segments`)
        const salts = new Set<number>()
        for (const segment of made) {
          const salt = parseSegmentFileName(segment.name)?.salt
          assert.ok(salt !== undefined && isAppendedSegment(salt), `${segment.name} is salted as a file created empty`)
          salts.add(salt)
          const bytes = await readFile(join(location, segment.name))
          const header: RecordHeader = { type: 0, flags: 0, volume: 0, index: 0, gen: 0, length: 0 }
          assert.ok(decodeHeader(bytes, 0, header, true) && recordCrcMatches(bytes, 0, header.length, salt), `${segment.name} starts with a record valid under its salt`)
        }
        assert.equal(salts.size, made.length, 'each segment has a salt of its own')
        for (let i = 0; i < 6; i++) assertBytes(await store.get(addr(1, i)), bytesOf(3000, i), `block ${i}`)
      })
    })

    it('a header encoded alone (for writev) writes only its 36 bytes, and with its payload after it passes the reader\'s checks, salted or not', () => {
      for (const seed of [undefined, 0x2a, 0xffff_ffff]) {
        for (const c of [...cases, { type: TYPE_MARK, flags: 0, volume: 0, index: 12345, gen: 0, payload: undefined }]) {
          const header = new Uint8Array(HEADER_BYTES + 18).fill(0x55)
          encodeRecordHeader(header, 9, c.type, c.flags, c.volume, c.index, c.gen, c.payload, seed)
          assert.ok(header.subarray(0, 9).every((b) => b === 0x55) && header.subarray(9 + HEADER_BYTES).every((b) => b === 0x55), 'nothing written outside the header')
          const joined = Buffer.concat([header.subarray(9, 9 + HEADER_BYTES), c.payload ?? new Uint8Array(0)])
          const length = c.payload?.byteLength ?? 0
          // The crc field (bytes 4..8, little-endian) is zlib's crc32 of the rest, from the seed.
          assert.equal(joined.readUInt32LE(4), zlibCrc32(joined.subarray(8), seed ?? 0), `type ${c.type}, seed ${String(seed)}`)
          assert.ok(recordCrcMatches(joined, 0, length, seed))
          const decoded: RecordHeader = { type: 0, flags: 0, volume: 0, index: 0, gen: 0, length: 0 }
          assert.ok(decodeHeader(joined, 0, decoded, seed !== undefined) || (c.type === TYPE_MARK && seed === undefined))
        }
      }
    })

    it('writevFully and writevFullySync write every part in order and go on after short writes', async () => {
      const parts = [bytesOf(36, 1), bytesOf(4104, 2), bytesOf(36, 3), bytesOf(0, 4), bytesOf(100, 5), bytesOf(36, 6)]
      const expected = Buffer.concat(parts)
      for (const limit of [1, 7, 36, 37, 4140, 5000, 1 << 20]) {
        for (const mode of ['sync', 'async'] as const) {
          const file = new Uint8Array(expected.byteLength + 64)
          let calls = 0
          // A system call that writes at most `limit` bytes per call.
          const write = (given: readonly Uint8Array[], position: number): number => {
            let n = 0
            for (const part of given) {
              const take = Math.min(part.byteLength, limit - n)
              file.set(part.subarray(0, take), position + n)
              n += take
              if (n === limit) break
            }
            calls++
            return n
          }
          if (mode === 'sync') writevFullySync(3, parts.map((p) => p), 64, (_fd, given, position) => write(given, position))
          else await writevFully({ writev: async (given, position) => ({ bytesWritten: write(given, position) }) }, parts.map((p) => p), 64)
          assert.deepEqual(file.subarray(64), new Uint8Array(expected), `limit ${limit}, ${mode}`)
          assert.equal(calls, Math.ceil(expected.byteLength / limit))
        }
      }
      // A call that writes nothing and reports no error is not retried forever.
      assert.throws(() => writevFullySync(3, [bytesOf(10, 1)], 0, () => 0), /wrote 0 bytes at offset 0/)
      await assert.rejects(writevFully({ writev: async () => ({ bytesWritten: 0 }) }, [bytesOf(10, 1)], 8), /wrote 0 bytes at offset 8/)
      // An error of the system call (ENOSPC, say) comes out as it is.
      const full = Object.assign(new Error('no space left on device'), { code: 'ENOSPC' })
      assert.throws(() => writevFullySync(3, [bytesOf(10, 1)], 0, () => { throw full }), (err) => err === full)
      await assert.rejects(writevFully({ writev: async () => { throw full } }, [bytesOf(10, 1)], 0), (err) => err === full)
    })

    it('a hint file is laid out as documented and decodes back', () => {
      const hint = new HintBuilder(1)
      const offsets = [0, 2 ** 33 + 17, 4096]
      cases.forEach((c, i) => hint.add(c.type, c.volume, c.index, c.gen, offsets[i] as number, c.payload?.byteLength ?? 0))
      const segmentSize = 2 ** 34
      const file = hint.finish(segmentSize)
      assert.equal(file.byteLength, HINT_HEADER_BYTES + cases.length * HINT_ENTRY_BYTES)
      const view = new DataView(file.buffer, file.byteOffset, file.byteLength)
      assert.equal(view.getUint32(12, true), cases.length)
      assert.equal(view.getUint32(16, true) * 2 ** 32 + view.getUint32(20, true), segmentSize)
      assert.equal(view.getUint32(8, true), zlibCrc32(file.subarray(12)))
      cases.forEach((c, i) => {
        const p = HINT_HEADER_BYTES + i * HINT_ENTRY_BYTES
        assert.equal(view.getUint8(p), c.type)
        assert.equal(view.getUint8(p + 1), 0)
        assert.equal(view.getUint16(p + 2, true), 0)
        assert.equal(view.getUint32(p + 4, true), c.volume)
        assert.equal(view.getUint32(p + 8, true) * 2 ** 32 + view.getUint32(p + 12, true), c.index)
        assert.equal(view.getUint32(p + 16, true) * 2 ** 32 + view.getUint32(p + 20, true), c.gen)
        assert.equal(view.getUint32(p + 24, true) * 2 ** 32 + view.getUint32(p + 28, true), offsets[i])
        assert.equal(view.getUint32(p + 32, true), c.payload?.byteLength ?? 0)
        assert.equal(view.getUint32(p + 36, true), 0)
      })
      const decoded: HintEntry[] = []
      assert.ok(decodeHint(file, segmentSize, (entry) => decoded.push({ ...entry })))
      assert.deepEqual(decoded, cases.map((c, i) => ({ type: c.type, volume: c.volume, index: c.index, gen: c.gen, offset: offsets[i], length: c.payload?.byteLength ?? 0 })))
    })
  })

  describe('segments', () => {
    it('rolls to a new segment at segmentBytes, keeps a batch whole in one segment, and reopens intact', async () => {
      await withStore({ segmentBytes: 8192, compactionThreshold: 0 }, async ({ location, make, reopen }) => {
        let store = make()
        await store.open()
        const model = new BlockStoreModel()
        for (let i = 0; i < 20; i++) {
          const ops = [put(addr(1, i), bytesOf(1000, i))]
          model.apply(ops)
          await store.batch(ops)
        }
        // A batch larger than a segment is not split: it fills a segment of its own.
        const big = [put(addr(2, 0), bytesOf(5000, 100)), put(addr(2, 1), bytesOf(5000, 101)), del(addr(1, 0))]
        model.apply(big)
        await store.batch(big, { sync: true })
        const after = [put(addr(2, 2), bytesOf(10, 102))]
        model.apply(after)
        await store.batch(after)

        const files = await segments(location)
        assert.ok(files.length >= 4, `expected several segments, found ${files.length}`)
        assert.deepEqual(files.map((f) => f.id), files.map((_, i) => (files[0] as { id: number }).id + i), 'segment ids are consecutive')
        // The big batch, and the mark after its sync (a segment already full gets it all the same).
        const bigBytes = recordSize(5000) * 2 + recordSize(0) + HEADER_BYTES
        for (const file of files) {
          assert.ok(file.size <= 8192 || file.size === bigBytes, `${file.name} is ${file.size} bytes, over segmentBytes without being the one big batch`)
        }
        assert.ok(files.some((f) => f.size === bigBytes), 'the big batch sits alone in one segment')
        assert.equal(files.reduce((sum, f) => sum + f.size, 0), 20 * recordSize(1000) + bigBytes + recordSize(10), 'nothing but records (and that one mark) is stored')
        assert.equal((await store.stats()).storedBytes, await diskBytes(location), 'storedBytes equals the segment files on disk')
        await model.check(store, 'before reopen')

        store = await reopen(store)
        await model.check(store, 'after reopen')
        assert.deepEqual((await segments(location)).map((f) => f.size), files.map((f) => f.size), 'reopen changes no segment')
      })
    })
  })

  describe('compaction', () => {
    it('compact() reclaims overwritten blocks: files shrink, stats say so, data reads back identical before and after reopen', async () => {
      // compactionThreshold 0: nothing in the background, so the sizes before compact() are all garbage kept.
      await withStore({ segmentBytes: 16 * 1024, compactionThreshold: 0 }, async ({ location, make, reopen }) => {
        let store = make()
        await store.open()
        const model = new BlockStoreModel()
        for (let round = 0; round < 12; round++) {
          for (let i = 0; i < 16; i++) {
            const ops = [put(addr(1, i), bytesOf(1024, round * 16 + i))]
            model.apply(ops)
            await store.batch(ops)
          }
        }
        await store.sync()
        // Every record, and the mark the writer appends after the sync.
        const written = 12 * 16 * recordSize(1024) + HEADER_BYTES
        const before = await store.stats()
        assert.equal(await diskBytes(location), written, 'background compaction is off: everything written is still on disk')
        assert.equal(before.storedBytes, written)
        assert.deepEqual({ blocks: before.blocks, liveBytes: before.liveBytes }, { blocks: 16, liveBytes: 16 * 1024 })

        await store.compact()
        const after = await store.stats()
        const onDisk = await diskBytes(location)
        assert.equal(after.storedBytes, onDisk, 'storedBytes equals the segment and spare files on disk after compaction')
        const kept = await segmentBytes(location)
        assert.ok(kept <= written / 4, `compaction left ${kept} of ${written} bytes in segments for ${16 * recordSize(1024)} live bytes`)
        // Emptied segment files are kept for reuse up to a quarter of the live bytes or one segment's
        // worth, whichever is more, and never more than the live bytes (16 KiB): one at most here.
        const kept16 = await spares(location)
        assert.ok(kept16.length <= 1 && kept16.every((spare) => spare.size <= 16 * 1024), `spares: ${JSON.stringify(kept16)}`)
        assert.deepEqual({ blocks: after.blocks, liveBytes: after.liveBytes }, { blocks: 16, liveBytes: 16 * 1024 })
        await model.check(store, 'after compact()')

        store = await reopen(store)
        await model.check(store, 'after compact() and reopen')
        // Close cut off what the active segment's reused file held past its records; nothing else changed.
        const reopened = await diskBytes(location)
        assert.ok(reopened <= onDisk && reopened >= onDisk - 16 * 1024, `reopen found ${reopened} bytes, compaction left ${onDisk}`)
        assert.equal((await store.stats()).storedBytes, reopened)
        // A second pass finds nothing more to do.
        await store.compact()
        assert.equal(await diskBytes(location), reopened)
      })
    })

    it('background compaction runs on its own when the threshold is set', async () => {
      await withStore({ segmentBytes: 16 * 1024, compactionThreshold: 0.5 }, async ({ location, make }) => {
        const store = make()
        await store.open()
        for (let round = 0; round < 12; round++) {
          for (let i = 0; i < 16; i++) await store.batch([put(addr(1, i), bytesOf(1024, round * 16 + i))])
        }
        const written = 12 * 16 * recordSize(1024)
        const deadline = Date.now() + 10_000
        while (await segmentBytes(location) > written / 3 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
        assert.ok(await segmentBytes(location) <= written / 3, `background compaction left ${await segmentBytes(location)} of ${written} bytes in segments`)
        assert.equal(store.lastBackgroundError, undefined)
        for (let i = 0; i < 16; i++) assertBytes(await store.get(addr(1, i)), bytesOf(1024, 11 * 16 + i), `block ${i}`)
      })
    })

    it('compact() resolves while sustained writes keep creating garbage', async () => {
      // Background compaction must not chase the victims that ongoing writes keep creating in one
      // endless pass: compact() calls and hint files are queued behind it.
      await withStore({ segmentBytes: 64 * 1024, compactionThreshold: 0.5 }, async ({ location, make }) => {
        const store = make()
        await store.open()
        // Counted in batches, not in seconds, so that a slow machine is no reason to fail: the writes
        // go on until the compaction passes end or, after those began, WRITES_DURING_PASSES more
        // batches (three passes took 389-676 while writes went on, on a loaded machine: speed cancels out).
        const WRITES_DURING_PASSES = 20_000
        let writing = true
        let batches = 0
        let stopAt = Number.POSITIVE_INFINITY
        let seed = 0
        const random = mulberry32(42)
        const writers = Array.from({ length: 8 }, async () => {
          try {
            while (writing && batches < stopAt) {
              const ops: BlockOp[] = []
              for (let i = 1 + Math.floor(random() * 5); i > 0; i--) {
                const address = addr(1, Math.floor(random() * 130))
                ops.push(random() < 0.25 ? del(address) : put(address, bytesOf(20 + Math.floor(random() * 3000), ++seed)))
              }
              await store.batch(ops, { sync: random() < 0.6 })
              batches++
            }
          } finally {
            // A failed batch ends the waits below; its error fails the test where writers are awaited.
            writing = false
          }
        })
        try {
          // Let the writes get going: a few hundred segments written, compaction busy.
          while (writing && Math.max(0, ...(await segments(location)).map((s) => s.id)) < 300) await new Promise((resolve) => setTimeout(resolve, 20))
          const before = batches
          stopAt = before + WRITES_DURING_PASSES
          for (let pass = 0; pass < 3; pass++) {
            await store.compact()
            assert.ok(batches < stopAt, `compact() call ${pass + 1} resolved only once the writes stopped (${WRITES_DURING_PASSES} batches after the first call)`)
          }
        } finally {
          writing = false
          await Promise.all(writers)
        }
        assert.equal(store.lastBackgroundError, undefined)
      })
    })

    it('a deleted block stays deleted after compaction and reopen (its tombstone in a newer segment than the put)', async () => {
      await withStore({ segmentBytes: 4096, compactionThreshold: 0 }, async ({ location, make, reopen }) => {
        let store = make()
        await store.open()
        const model = new BlockStoreModel()
        const apply = async (ops: BlockOp[], sync = false): Promise<void> => { model.apply(ops); await store.batch(ops, { sync }) }
        // Segment 1: the victim put X, among three blocks that stay live, so segment 1 is never worth compacting.
        const x = addr(7, 1)
        await apply([put(x, bytesOf(100, 1))])
        for (let i = 0; i < 3; i++) await apply([put(addr(7, 100 + i), bytesOf(1000, 10 + i))])
        // Segment 2: X's tombstone (in a batch too big for what is left of segment 1), then blocks
        // overwritten later, so segment 2 is mostly garbage.
        await apply([del(x), put(addr(7, 200), bytesOf(1000, 20))])
        for (let i = 1; i < 3; i++) await apply([put(addr(7, 200 + i), bytesOf(1000, 20 + i))])
        for (let round = 0; round < 4; round++) {
          for (let i = 0; i < 3; i++) await apply([put(addr(7, 200 + i), bytesOf(1000, 30 + round * 3 + i))])
        }
        const [first, second] = await segments(location) as Array<{ id: number, size: number }>
        assert.deepEqual([first?.id, first?.size], [1, recordSize(100) + 3 * recordSize(1000)], 'segment 1 holds the put of X and three blocks')
        assert.deepEqual([second?.id, second?.size], [2, recordSize(0) + 3 * recordSize(1000)], 'segment 2 starts with the tombstone of X')
        assert.equal(await store.get(x), undefined)

        await store.compact()
        const remaining = await segments(location)
        assert.ok(remaining.some((s) => s.id === 1), 'segment 1 (holding the put of X, mostly live) is kept')
        assert.ok(!remaining.some((s) => s.id === 2), 'segment 2 (holding the tombstone of X, mostly dead) is compacted away')
        assert.equal(await store.get(x), undefined, 'X after compaction')
        store = await reopen(store)
        assert.equal(await store.get(x), undefined, 'X after compaction and reopen: the tombstone was carried forward')
        await model.check(store, 'after the tombstone segment was compacted')

        // Now the put's segment goes too (its live blocks are overwritten), then the tombstone may go.
        for (let i = 0; i < 3; i++) await apply([put(addr(7, 100 + i), bytesOf(1000, 50 + i))])
        for (let round = 0; round < 3; round++) {
          for (let i = 0; i < 3; i++) await apply([put(addr(7, 200 + i), bytesOf(1000, 60 + round * 3 + i))])
        }
        await store.compact()
        assert.ok(!(await segments(location)).some((s) => s.id === 1), 'segment 1 is compacted away once mostly dead')
        store = await reopen(store)
        await store.compact()
        store = await reopen(store)
        assert.equal(await store.get(x), undefined, 'X after both segments were compacted and two reopens')
        await model.check(store, 'after everything was compacted')
      })
    })

    it('deleteVolume() followed by compaction and reopen brings nothing back', async () => {
      await withStore({ segmentBytes: 4096, compactionThreshold: 0 }, async ({ make, reopen }) => {
        let store = make()
        await store.open()
        const model = new BlockStoreModel()
        for (let i = 0; i < 12; i++) {
          const ops = [put(addr(3, i), bytesOf(700, i)), put(addr(4, i), bytesOf(300, i))]
          model.apply(ops)
          await store.batch(ops)
        }
        await store.deleteVolume(3)
        model.deleteVolume(3)
        for (let i = 0; i < 12; i++) {
          const ops = [put(addr(4, i), bytesOf(300, 100 + i))]
          model.apply(ops)
          await store.batch(ops)
        }
        await store.compact()
        await model.check(store, 'after compaction')
        store = await reopen(store)
        await model.check(store, 'after compaction and reopen')
        assert.deepEqual(await collect(store.addresses({ volume: 3 })), [])
      })
    })

    it('a block re-put after its delete keeps its newest value through compaction and reopen', async () => {
      await withStore({ segmentBytes: 2048, compactionThreshold: 0 }, async ({ make, reopen }) => {
        let store = make()
        await store.open()
        const x = addr(1, 5)
        const filler = async (seed: number): Promise<void> => {
          for (let i = 0; i < 3; i++) await store.batch([put(addr(2, i), bytesOf(900, seed + i))])
        }
        await store.batch([put(x, bytesOf(500, 1))])
        await filler(10)
        await store.batch([del(x)])
        await filler(20)
        await store.batch([put(x, bytesOf(600, 2))])
        await filler(30)
        await filler(40)
        await store.compact()
        assertBytes(await store.get(x), bytesOf(600, 2), 'X after compaction')
        store = await reopen(store)
        assertBytes(await store.get(x), bytesOf(600, 2), 'X after compaction and reopen (the older tombstone must not delete the newer put)')
        await store.batch([del(x)])
        await filler(50)
        await filler(60)
        await store.compact()
        store = await reopen(store)
        assert.equal(await store.get(x), undefined, 'X deleted again')
      })
    })

    it('random puts, deletes and deleteVolume() with compaction and reopens match a model', async () => {
      const random = mulberry32(0xc0ffee)
      await withStore({ segmentBytes: 2048, compactionThreshold: 0.6 }, async ({ make, reopen }) => {
        let store = make()
        await store.open()
        const model = new BlockStoreModel()
        const keys = [1, 2].flatMap((volume) => Array.from({ length: 24 }, (_, i) => addr(volume, i % 12, Math.floor(i / 12))))
        let seed = 0
        for (let round = 1; round <= 40; round++) {
          const pending: Array<Promise<void>> = []
          for (let b = 0; b < 12; b++) {
            const ops: BlockOp[] = []
            const count = 1 + Math.floor(random() * 4)
            for (let o = 0; o < count; o++) {
              const address = keys[Math.floor(random() * keys.length)] as BlockAddress
              ops.push(random() < 0.3 ? del(address) : put(address, bytesOf(1 + Math.floor(random() * 900), ++seed)))
            }
            model.apply(ops)
            pending.push(store.batch(ops, { sync: random() < 0.2 }))
          }
          if (random() < 0.05) {
            const volume = random() < 0.5 ? 1 : 2
            model.deleteVolume(volume)
            pending.push(store.deleteVolume(volume))
          }
          await Promise.all(pending)
          if (round % 4 === 0) {
            await store.compact()
            await model.check(store, `round ${round}, after compact()`)
          }
          if (round % 10 === 0) {
            store = await reopen(store)
            await model.check(store, `round ${round}, after reopen`)
          }
        }
        assert.equal(store.lastBackgroundError, undefined)
      })
    })
  })

  describe('spare segment files', () => {
    const SMALL = { segmentBytes: 16 * 1024, compactionThreshold: 0 }

    /** Whether a segment file starts with a salted record (a reused spare). */
    const SALTED_RECORD_MAGIC_BYTES = Buffer.from('GFR2')

    /** Opens the store in a crash image (recovery runs), runs `body` on it, closes it. */
    async function withRecovered (image: string, body: (recovered: FileBlockStore) => Promise<void>): Promise<void> {
      const recovered = new FileBlockStore({ location: image, ...SMALL })
      await recovered.open()
      try {
        await body(recovered)
      } finally {
        await recovered.close()
      }
    }

    /** Offset of the salted put record of block `volume`/`index` in a segment file's bytes. */
    function saltedPutAt (bytes: Buffer, volume: number, index: number): number {
      const header: RecordHeader = { type: 0, flags: 0, volume: 0, index: 0, gen: 0, length: 0 }
      for (let at = bytes.indexOf(SALTED_RECORD_MAGIC_BYTES); at !== -1; at = bytes.indexOf(SALTED_RECORD_MAGIC_BYTES, at + 1)) {
        if (decodeHeader(bytes, at, header, true) && header.type === TYPE_PUT && header.volume === volume && header.index === index) return at
      }
      throw new Error(`no record of block ${volume}/${index}`)
    }

    /** Whether a segment file is a reused one (its salt says so) and starts with a salted record. */
    async function reused (path: string): Promise<boolean> {
      const head = (await readFile(path)).subarray(0, 4)
      const salt = parseSegmentFileName(basename(path))?.salt
      return salt !== undefined && !isAppendedSegment(salt) && head.byteLength === 4 && head.readUInt32LE(0) === SALTED_RECORD_MAGIC
    }

    // 160 KiB of live data: spares (16 KiB segments) may hold a quarter of it, so two are kept.
    const LIVE_BLOCKS = 160

    /** Overwrites the LIVE_BLOCKS blocks of 1 KiB once, in batches of 16. */
    async function writeRound (store: FileBlockStore, model: BlockStoreModel, round: number): Promise<void> {
      for (let first = 0; first < LIVE_BLOCKS; first += 16) {
        const ops = Array.from({ length: 16 }, (_, i) => put(addr(1, first + i), bytesOf(1024, round * LIVE_BLOCKS + first + i)))
        model.apply(ops)
        await store.batch(ops)
      }
    }

    /**
     * Overwrites the live blocks twelve times, compacts (leaving spares), then writes batches until
     * the active segment is a reused spare. Returns the model of everything written and that segment.
     */
    async function reachReusedTail (store: FileBlockStore, location: string): Promise<{ model: BlockStoreModel, tail: string, round: number }> {
      const model = new BlockStoreModel()
      for (let round = 0; round < 12; round++) await writeRound(store, model, round)
      await store.compact()
      assert.equal((await spares(location)).length, 2, 'compaction kept two emptied files as spares')
      // Small batches, so the new segment's records end well before the reused file does.
      for (let batch = 0; batch < 80; batch++) {
        const first = (batch * 4) % LIVE_BLOCKS
        const ops = Array.from({ length: 4 }, (_, i) => put(addr(1, first + i), bytesOf(1024, 5000 + batch * 4 + i)))
        model.apply(ops)
        await store.batch(ops)
        const last = (await segments(location)).pop() as { name: string }
        const path = join(location, last.name)
        if (await reused(path)) return { model, tail: path, round: 13 }
      }
      throw new Error('no segment was made from a spare')
    }

    /**
     * A copy of the store's segment, hint and spare files as a kill -9 would leave them (everything
     * written is in the page cache, so in the files), without the lock or a clean-shutdown marker.
     * The store stays open; a hint it renames into place meanwhile may be missed, as a crash may.
     */
    async function crashImage (location: string): Promise<string> {
      const copy = await mkdtemp(join(tmpdir(), 'galleonfs-file-store-crash-'))
      for (const name of await readdir(location)) {
        if (!/^(seg-[0-9a-f]{16}(-[0-9a-f]{8})?\.log|seg-[0-9a-f]{16}\.hint|spare-[0-9a-f]{16}\.log)$/.test(name)) continue
        await copyFile(join(location, name), join(copy, name)).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'ENOENT') throw err })
      }
      return copy
    }

    /** Runs `body` on a crash image of the store at `location` (see crashImage), removed afterwards. */
    async function withCrashImage (location: string, body: (image: string) => Promise<void>): Promise<void> {
      const image = await crashImage(location)
      try {
        await body(image)
      } finally {
        await rm(image, { recursive: true, force: true })
      }
    }

    /** A crash image of `location` whose copy of `tail` has a bit flipped at `at(bytes)` refuses to open with CORRUPTION. */
    async function damagedImageRefuses (location: string, tail: string, at: (bytes: Buffer) => number, why: string): Promise<void> {
      await withCrashImage(location, async (image) => {
        const imageTail = join(image, basename(tail))
        const bytes = await readFile(imageTail)
        await writeFile(imageTail, flipByte(bytes, at(bytes), 0x01))
        await rejectsWithCode(new FileBlockStore({ location: image, ...SMALL }).open(), 'CORRUPTION', why)
      })
    }

    it('emptied segment files are kept (up to spareSegments) and become later segments; data and stats stay right across reopen', async () => {
      await withStore(SMALL, async ({ location, make, reopen }) => {
        let store = make()
        await store.open()
        const { model, round } = await reachReusedTail(store, location)
        const sparesBefore = (await spares(location)).map((spare) => spare.name)
        // Writes go on through several more reused segments.
        for (let r = round; r < round + 4; r++) {
          await writeRound(store, model, r)
          await store.compact()
        }
        const sparesAfter = (await spares(location)).map((spare) => spare.name)
        assert.ok(sparesAfter.length <= 2)
        assert.ok(sparesBefore.some((name) => !sparesAfter.includes(name)), `the spares were used: ${sparesBefore.join(', ')} then ${sparesAfter.join(', ')}`)
        await model.check(store, 'with reused segments')
        assert.equal((await store.stats()).storedBytes, await diskBytes(location), 'storedBytes counts segment and spare files')
        store = await reopen(store)
        await model.check(store, 'after reopen')
        assert.equal((await store.stats()).storedBytes, await diskBytes(location))
        let reusedFiles = 0
        for (const segment of await segments(location)) if (await reused(join(location, segment.name))) reusedFiles++
        assert.ok(reusedFiles > 0, 'segments made from spares are found on reopen')

        // Once the data is deleted, the spares go too: a store that shrinks gives its space back.
        await store.deleteVolume(1)
        await store.compact()
        assert.deepEqual(await spares(location), [])
        assert.equal((await store.stats()).storedBytes, await diskBytes(location))
      })
    })

    it('a small store keeps one emptied segment file although a quarter of its live bytes is less, but never more than its live bytes', async () => {
      await withStore(SMALL, async ({ location, make, reopen }) => {
        let store = make()
        await store.open()
        const model = new BlockStoreModel()
        // 32 KiB live: a quarter (8 KiB) holds no 16 KiB segment file; one segment's worth is allowed.
        for (let round = 0; round < 12; round++) {
          // Batches of 8 (about 8.3 KiB): one per 16 KiB segment file.
          for (let first = 0; first < 32; first += 8) {
            const ops = Array.from({ length: 8 }, (_, i) => put(addr(1, first + i), bytesOf(1024, round * 32 + first + i)))
            model.apply(ops)
            await store.batch(ops)
          }
        }
        await store.compact()
        const kept = await spares(location)
        assert.equal(kept.length, 1, `one spare kept: ${kept.map((s) => s.name).join(', ')}`)
        assert.ok((kept[0] as { size: number }).size <= 16 * 1024)
        assert.equal((await store.stats()).storedBytes, await diskBytes(location))
        await model.check(store, 'with a spare')
        // Down to 4 KiB live: a spare of a whole segment is more than the live bytes, and goes.
        const gone = Array.from({ length: 28 }, (_, i) => del(addr(1, 4 + i)))
        model.apply(gone)
        await store.batch(gone, { sync: true })
        store = await reopen(store)
        assert.deepEqual(await spares(location), [], 'the spare went with the data')
        await model.check(store, 'after the deletes and reopen')
        assert.equal((await store.stats()).storedBytes, await diskBytes(location))
      })
    })

    it('spareSegments: 0 deletes emptied segment files; other values are validated', async () => {
      await withStore({ ...SMALL, spareSegments: 0 }, async ({ location, make }) => {
        const store = make()
        await store.open()
        const model = new BlockStoreModel()
        for (let round = 0; round < 12; round++) await writeRound(store, model, round)
        await store.compact()
        await model.check(store, 'without spares')
        assert.deepEqual(await spares(location), [])
        for (const segment of await segments(location)) assert.equal(await reused(join(location, segment.name)), false)
      })
      for (const bad of [-1, 1.5, '2', Number.NaN]) {
        assert.throws(() => new FileBlockStore({ location: '/nonexistent', spareSegments: bad as number }),
          (err: unknown) => err instanceof GalleonError && err.code === 'INVALID_ARGUMENT' && err.message.includes('spareSegments'))
      }
    })

    describe('spares made in advance', () => {
      // Segments of 256 KiB; 300 blocks of 1 KiB make the live bytes more than one segment, so the
      // spare budget has room for one.
      const OPTIONS = { segmentBytes: 256 * 1024, compactionThreshold: 0 }
      const PREPARED = /^spare-f[0-9a-f]{15}\.log$/

      async function prepared (location: string): Promise<Array<{ name: string, size: number }>> {
        return (await spares(location)).filter((spare) => PREPARED.test(spare.name))
      }

      /** 300 live blocks of 1 KiB, written without syncs. */
      async function fill (store: FileBlockStore, model: BlockStoreModel, volume = 9): Promise<void> {
        for (let first = 0; first < 300; first += 20) {
          const ops = Array.from({ length: 20 }, (_, i) => put(addr(volume, first + i), bytesOf(1024, 7000 + first + i)))
          model.apply(ops)
          await store.batch(ops)
        }
      }

      /** Durable batches of one 1 KiB block each, on blocks 0..count-1 of volume 1, from `seed` on. */
      async function durableWrites (store: FileBlockStore, model: BlockStoreModel, count: number, seed: number): Promise<void> {
        for (let i = 0; i < count; i++) {
          const ops = [put(addr(1, i % 500), bytesOf(1024, seed + i))]
          model.apply(ops)
          await store.batch(ops, { sync: true })
        }
      }

      /** Waits (at most 20 s) until a whole spare made in advance is on disk and counted in storedBytes. */
      /** Opens `store`, fills it and makes the durable writes that start a spare in advance. */
      async function filledWithDurableWrites (store: FileBlockStore): Promise<{ store: FileBlockStore, model: BlockStoreModel }> {
        await store.open()
        const model = new BlockStoreModel()
        await fill(store, model)
        await durableWrites(store, model, 20, 100)
        return { store, model }
      }

      /** Durable writes until the log rolls into a new segment; returns that segment. */
      async function rollIntoNext (store: FileBlockStore, model: BlockStoreModel, location: string): Promise<{ name: string }> {
        const before = (await segments(location)).map((segment) => segment.name)
        for (let seed = 200; (await segments(location)).every((segment) => before.includes(segment.name)); seed += 20) {
          assert.ok(seed < 2000, 'the log rolled into a new segment')
          await durableWrites(store, model, 20, seed)
        }
        return (await segments(location)).pop() as { name: string }
      }

      async function untilPrepared (store: FileBlockStore, location: string): Promise<{ name: string, size: number }> {
        const deadline = Date.now() + 20_000
        for (;;) {
          const [spare] = await prepared(location)
          if (spare !== undefined && spare.size === OPTIONS.segmentBytes && (await store.stats()).storedBytes === await diskBytes(location)) return spare
          if (Date.now() > deadline) throw new Error(`no spare was made in advance: ${JSON.stringify(await spares(location))}`)
          await new Promise((resolve) => setTimeout(resolve, 10))
        }
      }

      it('durable writes make a spare of zeros in advance, which becomes the next segment; data and stats stay right across reopen', async () => {
        await withStore(OPTIONS, async ({ location, make, reopen }) => {
          let store = make()
          await store.open()
          const model = new BlockStoreModel()
          await fill(store, model)
          assert.deepEqual(await prepared(location), [], 'batches without syncs make none')
          await durableWrites(store, model, 20, 100)
          const spare = await untilPrepared(store, location)
          const spareInode = (await stat(join(location, spare.name))).ino
          const bytes = await readFile(join(location, spare.name))
          assert.equal(bytes.byteLength, OPTIONS.segmentBytes)
          assert.ok(bytes.every((b) => b === 0), 'a spare made in advance holds zeros')
          const tail = await rollIntoNext(store, model, location)
          assert.equal((await stat(join(location, tail.name))).ino, spareInode, `the new segment ${tail.name} was made from the spare`)
          // Salted as a file of zeros (recovery may read zeros past what was written as unwritten), not as a reused one.
          const salt = parseSegmentFileName(tail.name)?.salt
          assert.ok(salt !== undefined && isAppendedSegment(salt), `${tail.name}: the salt of a file of zeros`)
          assert.equal(await reused(join(location, tail.name)), false)
          assert.ok(!(await spares(location)).some((s) => s.name === spare.name), 'the spare file became the segment')
          await model.check(store, 'in a segment made from a spare made in advance')
          store = await reopen(store)
          await model.check(store, 'after reopen')
          assert.equal((await store.stats()).storedBytes, await diskBytes(location))
        })
      })

      it('a segment made from one is judged as a file of zeros: damage followed by a later valid batch, with nothing unwritten between, is CORRUPTION after a crash', async () => {
        await withStore(OPTIONS, async ({ location, make }) => {
          const { store, model } = await filledWithDurableWrites(make())
          const spare = await untilPrepared(store, location)
          const spareInode = (await stat(join(location, spare.name))).ino
          const tail = await rollIntoNext(store, model, location)
          assert.equal((await stat(join(location, tail.name))).ino, spareInode, 'the new segment is the spare made in advance')
          // Three batches written, none synced: a crash may cut them, but not damage the middle one alone.
          for (let i = 0; i < 3; i++) await store.batch([put(addr(3, i), bytesOf(2000, 900 + i))])
          await withCrashImage(location, async (image) => {
            const path = join(image, tail.name)
            const salt = parseSegmentFileName(tail.name)?.salt as number
            const bytes = await readFile(path)
            const ends = batchEnds(bytes, salt)
            const [second, third] = ends.slice(-2) as [number, number]
            assert.equal(third - second, HEADER_BYTES + 2000, 'the last batch found is the third one')
            // A flipped bit in the second batch's block: the third batch follows, nothing between reads as unwritten.
            const secondStart = second - HEADER_BYTES - 2000
            await writeFile(path, flipByte(bytes, secondStart + HEADER_BYTES + 1000, 0x10))
            const error = await rejectsWithCode(new FileBlockStore({ location: image, ...OPTIONS }).open(), 'CORRUPTION', 'damage before a later batch in a segment made from a spare of zeros')
            assert.ok(error.message.includes(`a complete, valid batch follows at offset ${second}`), error.message)
          })
        })
      })

      it('none is made for writes without syncs, with spareSegments: 0, or while the live bytes are less than a segment', async () => {
        await withStore(OPTIONS, async ({ location, make }) => {
          const store = make()
          await store.open()
          const model = new BlockStoreModel()
          for (let round = 0; round < 3; round++) await fill(store, model, 9 + round)
          assert.ok((await segments(location)).length >= 3, 'the log rolled twice')
          await store.close()
          assert.deepEqual(await spares(location), [], 'writes without syncs')
        })
        await withStore({ ...OPTIONS, spareSegments: 0 }, async ({ location, make }) => {
          const store = make()
          await store.open()
          const model = new BlockStoreModel()
          await fill(store, model)
          await durableWrites(store, model, 300, 100)
          await store.close()
          assert.deepEqual(await spares(location), [], 'spareSegments: 0')
          const reopened = make()
          await reopened.open()
          await model.check(reopened, 'spareSegments: 0')
        })
        await withStore(OPTIONS, async ({ location, make }) => {
          const store = make()
          await store.open()
          const model = new BlockStoreModel()
          // 32 live blocks of 1 KiB, overwritten by durable writes through two segments.
          for (let i = 0; i < 600; i++) {
            const ops = [put(addr(1, i % 32), bytesOf(1024, i))]
            model.apply(ops)
            await store.batch(ops, { sync: true })
          }
          assert.ok((await segments(location)).length >= 2, 'the log rolled')
          await store.close()
          assert.deepEqual(await prepared(location), [], 'a spare of a whole segment would be more than the live bytes')
        })
      })

      /**
       * Runs `body` while the file handles opened for spares made in advance have their writes replaced
       * by `write` (given the original); other files are untouched.
       */
      async function withSpareWrites (write: (original: () => Promise<{ bytesWritten: number }>, call: number) => Promise<{ bytesWritten: number }>, body: () => Promise<void>): Promise<void> {
        const promises = createRequire(import.meta.url)('node:fs/promises') as typeof import('node:fs/promises')
        const originalOpen = promises.open
        let calls = 0
        promises.open = (async (path: Parameters<typeof originalOpen>[0], ...rest: unknown[]) => {
          const handle = await (originalOpen as (...args: unknown[]) => ReturnType<typeof originalOpen>)(path, ...rest)
          if (typeof path === 'string' && PREPARED.test(basename(path))) {
            const own = handle.write.bind(handle) as (...args: unknown[]) => Promise<{ bytesWritten: number }>
            ;(handle as unknown as { write: unknown }).write = async (...args: unknown[]) => await write(async () => await own(...args), calls++)
          }
          return handle
        }) as typeof promises.open
        syncBuiltinESMExports()
        try {
          await body()
        } finally {
          promises.open = originalOpen
          syncBuiltinESMExports()
        }
      }

      it('close() while a spare is being made stops it and leaves no half-written file', async () => {
        let started!: () => void
        const writing = new Promise<void>((resolve) => { started = resolve })
        let release!: () => void
        const gate = new Promise<void>((resolve) => { release = resolve })
        await withSpareWrites(async (original, call) => {
          // The spare's one write (a segment is 256 KiB): held until close() has begun.
          if (call === 0) { started(); await gate }
          return await original()
        }, async () => {
          await withStore(OPTIONS, async ({ location, make }) => {
            const { store, model } = await filledWithDurableWrites(make())
            await writing
            assert.equal((await prepared(location)).length, 1, 'the spare is being written')
            const closing = store.close()
            setTimeout(release, 20)
            await closing
            assert.deepEqual(await prepared(location), [], 'the half-written spare was removed')
            const reopened = make()
            await reopened.open()
            await model.check(reopened, 'after the close')
          })
        })
      })

      it('a failed write leaves no file and stops making spares (reported, or not for a full disk); the store goes on', async () => {
        for (const code of ['EIO', 'ENOSPC']) {
          let failures = 0
          await withSpareWrites(async (original, call) => {
            if (call === 0) {
              // The bytes are written, then the call fails: a half-made file to remove.
              await original()
              failures++
              throw Object.assign(new Error(`${code}: failed, write`), { code, syscall: 'write' })
            }
            return await original()
          }, async () => {
            await withStore(OPTIONS, async ({ location, make }) => {
              const errors: GalleonError[] = []
              const store = make({ onBackgroundError: (err) => errors.push(err) })
              await store.open()
              const model = new BlockStoreModel()
              await fill(store, model)
              await durableWrites(store, model, 20, 100)
              const deadline = Date.now() + 20_000
              while (failures === 0 || (await prepared(location)).length > 0) {
                assert.ok(Date.now() < deadline, `${code}: the failure happened and the file went`)
                await new Promise((resolve) => setTimeout(resolve, 10))
              }
              // Durable writes go on, through a roll into a new file, and no spare is tried again.
              await durableWrites(store, model, 400, 1000)
              await model.check(store, `after ${code}`)
              await store.close()
              assert.equal(failures, 1, `${code}: not tried again`)
              assert.deepEqual(await prepared(location), [])
              if (code === 'EIO') {
                assert.equal(errors.length, 1, 'the failure was reported')
                assert.equal(errors[0]?.code, 'IO_ERROR')
                assert.match(errors[0]?.message ?? '', /spare segment file in advance.*reopened/)
              } else {
                assert.deepEqual(errors, [], 'a full disk is not reported here')
              }
            })
          })
        }
      })
    })

    it('open keeps at most spareSegments spares, and none in a store without segments', async () => {
      const spareName = (id: number): string => `spare-${id.toString(16).padStart(16, '0')}.log`
      await withStore(SMALL, async ({ location, make }) => {
        const store = make()
        await store.open()
        const model = new BlockStoreModel()
        await writeRound(store, model, 0)
        await store.close()
        for (const id of [7, 8, 9]) await writeFile(join(location, spareName(id)), bytesOf(5000, id))
        const one = make({ spareSegments: 1 })
        await one.open()
        assert.equal((await spares(location)).length, 1, 'spareSegments: 1')
        assert.equal((await one.stats()).storedBytes, await diskBytes(location))
        await model.check(one, 'beside spares')
        await one.close()
        // A budget of a quarter of the live bytes (40 KiB): two spares of 16 KiB fit, three do not.
        for (const id of [7, 8, 9]) await writeFile(join(location, spareName(id)), bytesOf(16 * 1024, id))
        const many = make({ spareSegments: 5 })
        await many.open()
        assert.equal((await spares(location)).length, 2, 'a quarter of the live bytes')
        await many.close()
      })
      await withStore(SMALL, async ({ location, make }) => {
        await writeFile(join(location, `spare-${(3).toString(16).padStart(16, '0')}.log`), bytesOf(5000, 3))
        const store = make()
        await store.open()
        assert.deepEqual(await spares(location), [], 'segment ids restart at 1 in an empty store: its spares go')
      })
    })

    it('a reused active segment recovered after a crash: the records of its earlier incarnations never come back', async () => {
      await withStore(SMALL, async ({ location, make }) => {
        const store = make()
        await store.open()
        const { model, tail } = await reachReusedTail(store, location)
        // Acknowledged batches (synced and not) in the reused file, then a crash.
        const ops = [put(addr(1, 3), bytesOf(700, 91)), del(addr(1, 4)), put(addr(2, 0), bytesOf(50, 92))]
        model.apply(ops)
        await store.batch(ops, { sync: true })
        const more = [put(addr(1, 5), bytesOf(900, 93))]
        model.apply(more)
        await store.batch(more)
        await withCrashImage(location, async (image) => {
          const imageTail = join(image, basename(tail))
          const crashedSize = (await stat(imageTail)).size
          // The file still holds records of earlier incarnations past the new ones.
          const old = (await readFile(imageTail)).subarray(HEADER_BYTES)
          assert.ok(old.includes(Buffer.from('GFR1')) || old.lastIndexOf(Buffer.from('GFR2')) > 8 * 1024, 'earlier records remain past the new ones')
          await withRecovered(image, async (recovered) => {
            await model.check(recovered, 'after the crash')
            assert.ok((await stat(imageTail)).size < crashedSize, 'what lay past the last batch is cut off')
            assert.equal((await recovered.stats()).storedBytes, await diskBytes(image))
          })
        })
      })
    })

    it('block data holding copies of salted records cannot forge marks in a reused file (its salt is random)', async () => {
      // Each live block (4 KiB) holds 113 mark records claiming the whole segment was synced, salted
      // with seeds 1..113 (even blocks) or 114..226 (odd ones): between them every seed an id-derived
      // salt could be here, in every segment. Once such a segment's file is reused, they lie past
      // the new records; a crash there must still recover as a torn tail.
      const forgedBlock = (index: number): Buffer => {
        const forged = Buffer.alloc(4096)
        for (let k = 0; k < 113; k++) encodeRecord(forged, k * HEADER_BYTES, TYPE_MARK, 0, 0, 2 ** 40, 0, undefined, (index % 2) * 113 + k + 1)
        return forged
      }
      await withStore(SMALL, async ({ location, make }) => {
        const store = make()
        await store.open()
        const model = new BlockStoreModel()
        for (let round = 0; round < 8; round++) {
          for (let first = 0; first < LIVE_BLOCKS; first += 16) {
            const ops = Array.from({ length: 16 }, (_, i) => put(addr(1, first + i), forgedBlock(first + i)))
            model.apply(ops)
            await store.batch(ops)
          }
        }
        assert.ok(((await segments(location)).pop() as { id: number }).id < 200, 'segment ids stay within the forged seeds')
        await store.compact()
        let tail: string | undefined
        for (let batch = 0; batch < 80 && tail === undefined; batch++) {
          const ops = [put(addr(2, batch), bytesOf(500, batch))]
          model.apply(ops)
          await store.batch(ops, { sync: batch % 3 === 0 })
          const last = join(location, ((await segments(location)).pop() as { name: string }).name)
          if (await reused(last)) tail = last
        }
        assert.ok(tail !== undefined, 'no segment was made from a spare')
        // A torn batch at the end: its record cut in the middle.
        await withCrashImage(location, async (image) => {
          const imageTail = join(image, basename(tail))
          const bytes = await readFile(imageTail)
          assert.ok(bytes.indexOf(SALTED_RECORD_MAGIC_BYTES, 8 * 1024) !== -1, 'the reused file still holds forged marks past its new records')
          await withRecovered(image, async (recovered) => {
            await model.check(recovered, 'after the crash')
          })
        })
      })
    })

    /** Ends of the batches of the records valid under `seed` from the start of `bytes`. */
    function batchEnds (bytes: Buffer, seed: number): number[] {
      const header: RecordHeader = { type: 0, flags: 0, volume: 0, index: 0, gen: 0, length: 0 }
      const ends: number[] = []
      for (let at = 0; at + HEADER_BYTES <= bytes.byteLength && decodeHeader(bytes, at, header, true);) {
        const end = at + HEADER_BYTES + header.length
        if (end > bytes.byteLength || !recordCrcMatches(bytes, at, header.length, seed)) break
        at = end
        if ((header.flags & FLAG_CONTINUES) === 0) ends.push(at)
      }
      return ends
    }

    /** Re-encodes the records in [start, end) of `bytes`, valid under `from`, under `to`. */
    function resalt (bytes: Buffer, start: number, end: number, from: number, to: number): void {
      const header: RecordHeader = { type: 0, flags: 0, volume: 0, index: 0, gen: 0, length: 0 }
      for (let at = start; at < end;) {
        assert.ok(decodeHeader(bytes, at, header, true) && recordCrcMatches(bytes, at, header.length, from), `a record at ${at}`)
        const recordEnd = at + HEADER_BYTES + header.length
        encodeRecordHeader(bytes, at, header.type, header.flags, header.volume, header.index, header.gen, header.length === 0 ? undefined : bytes.subarray(at + HEADER_BYTES, recordEnd), to)
        at = recordEnd
      }
    }

    // A page of a reused file lost at a power loss reads as the file's earlier life, not zeros, so a
    // valid batch after it proves nothing there: the salt (from 2^24 on) must keep recovery from
    // taking such a file for one only appended to.
    it('a reused active segment whose earlier batch a power loss lost (its earlier life shows there) while a later one landed opens without both; under a salt below 2^24 (how an earlier release could name it) it is refused', async () => {
      await withStore(SMALL, async ({ location, make }) => {
        const store = make()
        await store.open()
        const model = new BlockStoreModel()
        for (let round = 0; round < 12; round++) await writeRound(store, model, round)
        await store.compact()
        const earlierLives: Buffer[] = []
        for (const spare of await spares(location)) earlierLives.push(await readFile(join(location, spare.name)))
        assert.ok(earlierLives.length > 0, 'compaction kept emptied files as spares')
        let tail: string | undefined
        let batchesInTail = 0
        for (let batch = 0; batch < 80 && batchesInTail < 3; batch++) {
          const ops = Array.from({ length: 4 }, (_, i) => put(addr(1, (batch * 4 + i) % LIVE_BLOCKS), bytesOf(1024, 7000 + batch * 4 + i)))
          await store.batch(ops)
          const last = join(location, ((await segments(location)).pop() as { name: string }).name)
          if (last === tail) batchesInTail++
          else if (await reused(last)) [tail, batchesInTail] = [last, 1]
          // The tail's second and third batches are the ones the crash below takes.
          if (last !== tail || batchesInTail === 1) model.apply(ops)
        }
        assert.ok(tail !== undefined && batchesInTail === 3, 'three batches in a segment made from a spare')
        await withCrashImage(location, async (image) => {
          const imageTail = join(image, basename(tail))
          const { id, salt } = parseSegmentFileName(basename(tail)) as { id: number, salt: number }
          const bytes = await readFile(imageTail)
          const ends = batchEnds(bytes, salt)
          assert.equal(ends.length, 3, 'three batches, no marks (nothing synced in this segment)')
          const [first, second, third] = ends as [number, number, number]
          const earlier = earlierLives.find((life) => life.byteLength >= bytes.byteLength && life.subarray(third).equals(bytes.subarray(third)))
          assert.ok(earlier !== undefined, 'the file\'s earlier life is one of the spares')
          // The second batch's pages were lost: the earlier life's bytes (no zeros) are there again.
          earlier.copy(bytes, first, first, second)
          for (let unit = Math.ceil(first / 512) * 512; unit + 512 <= second; unit += 512) {
            assert.ok(bytes.subarray(unit, unit + 512).some((byte) => byte !== 0), 'no aligned unit of zeros where the batch was lost')
          }
          // The same crash under a salt below 2^24, as a release before salts told files apart
          // named 1 in 256 reused files: taken for a file only appended to, it is refused.
          const legacy = Buffer.from(bytes)
          const small = (salt % (2 ** 24 - 1)) + 1
          resalt(legacy, 0, first, salt, small)
          resalt(legacy, second, third, salt, small)
          await writeFile(imageTail, bytes)
          await withRecovered(image, async (recovered) => {
            assert.equal((await stat(imageTail)).size, first, 'cut after the first batch')
            await model.check(recovered, 'after the crash: the first batch of the segment kept, the two after it gone')
          })
          await rm(imageTail)
          // As an earlier release left it: without the segment list the recovery above started
          // (which names the file under its salt of now).
          await rm(join(image, 'SEGMENTS'))
          const legacyPath = join(image, basename(tail).replace(/-[0-9a-f]{8}\.log$/, `-${small.toString(16).padStart(8, '0')}.log`))
          assert.equal(parseSegmentFileName(basename(legacyPath))?.id, id)
          await writeFile(legacyPath, legacy)
          const error = await rejectsWithCode(new FileBlockStore({ location: image, ...SMALL }).open(), 'CORRUPTION', 'a reused file under a salt below 2^24')
          assert.ok(error.message.includes(`truncate it to ${first} bytes`), error.message)
          assert.ok((await readFile(legacyPath)).equals(legacy), 'nothing truncated')
        })
      })
    })

    it('a segment whose spare is gone from disk when the log rolls to it is a file created empty, and its salt says so', async () => {
      await withStore(SMALL, async ({ location, make, reopen }) => {
        let store = make()
        await store.open()
        const model = new BlockStoreModel()
        for (let round = 0; round < 12; round++) await writeRound(store, model, round)
        await store.compact()
        const before = new Set((await segments(location)).map((segment) => segment.name))
        const gone = await spares(location)
        assert.ok(gone.length > 0, 'compaction kept emptied files as spares')
        for (const spare of gone) await unlink(join(location, spare.name))
        await writeRound(store, model, 12)
        const made = (await segments(location)).filter((segment) => !before.has(segment.name))
        assert.ok(made.length > gone.length, `${made.length} new segments`)
        for (const segment of made) {
          const salt = parseSegmentFileName(segment.name)?.salt
          assert.ok(salt !== undefined && isAppendedSegment(salt), `${segment.name} is salted as a file created empty`)
        }
        store = await reopen(store)
        await model.check(store, 'after reopen')
      })
    })

    it('a reused active segment damaged at its first record is CORRUPTION once later marks prove it synced', async () => {
      await withStore(SMALL, async ({ location, make }) => {
        const store = make()
        await store.open()
        const { tail } = await reachReusedTail(store, location)
        for (let i = 0; i < 4; i++) await store.batch([put(addr(3, i), bytesOf(300, i))], { sync: true })
        await withCrashImage(location, async (image) => {
          const imageTail = join(image, basename(tail))
          const bytes = flipByte(await readFile(imageTail), 0, 0x01)
          await writeFile(imageTail, bytes)
          await rejectsWithCode(new FileBlockStore({ location: image, ...SMALL }).open(), 'CORRUPTION', 'damage at offset 0')
          assert.ok((await readFile(imageTail)).equals(bytes), 'the segment is left as it is')
        })
      })
    })

    it('what an earlier session synced stays vouched for: damage in it after a reopen and a crash is CORRUPTION', async () => {
      await withStore(SMALL, async ({ location, make, reopen }) => {
        let store = make()
        await store.open()
        const { tail } = await reachReusedTail(store, location)
        await store.batch([put(addr(3, 1), bytesOf(300, 1))], { sync: true })
        store = await reopen(store)
        const damageAt = (await stat(tail)).size - 100 // inside the last synced record of the first session
        // The second session writes without syncing, then crashes.
        for (let i = 0; i < 3; i++) await store.batch([put(addr(4, i), bytesOf(300, i))])
        await damagedImageRefuses(location, tail, () => damageAt, 'damage in data an earlier session synced')
      })
    })

    it('a sync() after batches written without one is stated by the next mark (the engine flushes so)', async () => {
      await withStore(SMALL, async ({ location, make }) => {
        const store = make()
        await store.open()
        const { tail } = await reachReusedTail(store, location)
        for (let i = 1; i <= 3; i++) {
          await store.batch([put(addr(3, i), bytesOf(300, i))])
          await store.sync()
        }
        await damagedImageRefuses(location, tail, (bytes) => saltedPutAt(bytes, 3, 1) + HEADER_BYTES + 5, 'damage in a batch a sync() made durable')
      })
    })

    it('after recovery cut a torn batch, what is synced next is stated again by a mark', async () => {
      await withStore(SMALL, async ({ location, make }) => {
        const store = make()
        await store.open()
        const { tail } = await reachReusedTail(store, location)
        await store.batch([put(addr(3, 1), bytesOf(500, 1))], { sync: true }) // followed by a mark
        await store.batch([put(addr(3, 2), bytesOf(500, 2))], { sync: true })
        await withCrashImage(location, async (image) => {
          const imageTail = join(image, basename(tail))
          const bytes = await readFile(imageTail)
          const header: RecordHeader = { type: 0, flags: 0, volume: 0, index: 0, gen: 0, length: 0 }
          const second = saltedPutAt(bytes, 3, 2)
          const markAt = second - HEADER_BYTES
          assert.ok(decodeHeader(bytes, markAt, header, true) && header.type === TYPE_MARK && header.index === markAt, 'the mark after the first batch states it')
          // The second batch torn inside its put, and the mark after its sync not written (a crash
          // between): recovery cuts the batch and keeps the mark before it.
          await writeFile(imageTail, flipByte(bytes, second + HEADER_BYTES + 5, 0x01).subarray(0, second + recordSize(500)))
          await withRecovered(image, async (recovered) => {
            assert.equal((await stat(imageTail)).size, second)
            assert.equal(await recovered.get(addr(3, 2)), undefined)
            await recovered.batch([put(addr(3, 3), bytesOf(500, 3))])
            await recovered.sync()
            const after = await readFile(imageTail)
            // The segment ended with a mark stating all before it, so the batch needs none of its own.
            assert.equal(saltedPutAt(after, 3, 3), second, 'the next batch follows the kept mark')
            const next = second + recordSize(500)
            assert.ok(decodeHeader(after, next, header, true) && header.type === TYPE_MARK, 'its sync is followed by a mark')
            assert.equal(header.index, next, 'stating everything up to it as synced')
          })
        })
      })
    })

    it('in a reused active segment, damage below what a mark says was synced is CORRUPTION; above it, a torn tail even with valid batches after it', async () => {
      await withStore(SMALL, async ({ location, make }) => {
        const store = make()
        await store.open()
        const { tail } = await reachReusedTail(store, location)
        // Batches A, B, C synced, D not. After a sync, the next batch starts with a mark stating it.
        const batches = [
          [put(addr(3, 1), bytesOf(500, 1))],
          [put(addr(3, 2), bytesOf(500, 2))],
          [put(addr(3, 3), bytesOf(500, 3))],
          [put(addr(3, 4), bytesOf(500, 4))]
        ]
        for (const [i, ops] of batches.entries()) await store.batch(ops, { sync: i < 3 })
        await withCrashImage(location, async (image) => {
          const imageTail = join(image, basename(tail))
          const bytes = await readFile(imageTail)
          // Each batch's put, found by its header: volume 3, index 1..4.
          const [a, b, c, d] = [1, 2, 3, 4].map((index) => saltedPutAt(bytes, 3, index)) as [number, number, number, number]
          assert.ok(a < b && b < c && c < d)
          // Each of B, C and D is preceded by a mark record stating where the synced batches ended.
          for (const [at, syncedEnd] of [[b, a + recordSize(500)], [c, b + recordSize(500)], [d, c + recordSize(500)]] as const) {
            const header: RecordHeader = { type: 0, flags: 0, volume: 0, index: 0, gen: 0, length: 0 }
            assert.ok(decodeHeader(bytes, at - HEADER_BYTES, header, true))
            assert.equal(header.type, TYPE_MARK)
            assert.equal(header.index, syncedEnd)
            assert.ok(recordCrcMatches(bytes, at - HEADER_BYTES, 0, parseInt(basename(tail).slice(21, 29), 16)))
          }

          // Damage in A: D's mark (found past the damage) says C's end was synced.
          const damagedA = Buffer.from(bytes)
          flipByte(damagedA, a + HEADER_BYTES + 10, 0xff)
          await writeFile(imageTail, damagedA)
          await rejectsWithCode(new FileBlockStore({ location: image, ...SMALL }).open(), 'CORRUPTION', 'damage below a mark')
          assert.ok((await readFile(imageTail)).equals(damagedA), 'the segment is left as it is')

          // Damage in D's put (after every mark): a torn tail, cut at D's batch (C's mark, a batch of its own, stays).
          const damagedD = Buffer.from(bytes)
          flipByte(damagedD, d + HEADER_BYTES + 10, 0xff)
          await writeFile(imageTail, damagedD)
          await withRecovered(image, async (recovered) => {
            for (const i of [1, 2, 3]) assertBytes(await recovered.get(addr(3, i)), bytesOf(500, i), `synced batch ${i}`)
            assert.equal(await recovered.get(addr(3, 4)), undefined, 'the torn batch')
            assert.equal((await stat(imageTail)).size, d)
          })
        })
      })
    })
  })

  describe('hint files', () => {
    it('are written for sealed segments (not the active one) and give the same data on reopen', async () => {
      await withStore({ segmentBytes: 4096, compactionThreshold: 0 }, async ({ location, make, reopen }) => {
        let store = make()
        await store.open()
        const model = new BlockStoreModel()
        for (let i = 0; i < 24; i++) {
          const ops: BlockOp[] = [put(addr(1, i), bytesOf(900, i))]
          if (i % 5 === 4) ops.push(del(addr(1, i - 2)))
          model.apply(ops)
          await store.batch(ops)
        }
        await store.close() // waits for background work, hints included
        const files = await segments(location)
        assert.ok(files.length >= 4)
        assert.deepEqual(await hintIds(location), files.slice(0, -1).map((f) => f.id), 'one hint per sealed segment, none for the active one')
        store = make()
        await store.open()
        await model.check(store, 'after reopen from hints')
        store = await reopen(store)
        await model.check(store, 'after a second reopen')
      })
    })

    it('are used on reopen: damage inside a hinted segment is not scanned at open but caught on read', async () => {
      await withStore({ segmentBytes: 4096, compactionThreshold: 0 }, async ({ location, make }) => {
        let store = make()
        await store.open()
        for (let i = 0; i < 12; i++) await store.batch([put(addr(1, i), bytesOf(1000, i))])
        await store.close()
        // Segment 1 holds blocks 0..2, 1036 bytes each: damage a payload byte of its middle record.
        const path = await segmentFile(location)
        const bytes = await readFile(path)
        flipByte(bytes, recordSize(1000) + HEADER_BYTES + 500, 0x40)
        await writeFile(path, bytes)

        store = make()
        await store.open() // from the hint: the segment is not read
        await rejectsWithCode(store.get(addr(1, 1)), 'CHECKSUM_MISMATCH', 'reading the damaged block')
        assertBytes(await store.get(addr(1, 0)), bytesOf(1000, 0), 'the record before the damage')
        assertBytes(await store.get(addr(1, 2)), bytesOf(1000, 2), 'the record after the damage')
        assertBytes(await store.get(addr(1, 7)), bytesOf(1000, 7), 'a block of another segment')
        await store.close()

        // Without the hint, open scans the segment and refuses the damage instead of dropping data.
        await unlink(join(location, hintFileName(1)))
        store = make()
        await rejectsWithCode(store.open(), 'CORRUPTION', 'opening with a damaged sealed segment and no hint')
        assert.equal(store.status, 'closed')
      })
    })

    it('a damaged, truncated or mismatched hint falls back to scanning the segment, with correct results, and is rewritten', async () => {
      const damages: Array<[string, (hint: Buffer) => Buffer]> = [
        ['a flipped bit in an entry', (hint) => flipByte(Buffer.from(hint), 40, 1)],
        ['a flipped bit in the header', (hint) => flipByte(Buffer.from(hint), 13, 1)],
        ['a truncated file', (hint) => hint.subarray(0, hint.byteLength - 7)],
        ['an empty file', () => Buffer.alloc(0)],
        ['garbage', (hint) => Buffer.from(bytesOf(hint.byteLength, 99))],
        ['the hint of another segment', () => Buffer.alloc(0)] // replaced below by segment 2's hint
      ]
      for (const [what, damage] of damages) {
        await withStore({ segmentBytes: 4096, compactionThreshold: 0 }, async ({ location, make }) => {
          let store = make()
          await store.open()
          const model = new BlockStoreModel()
          for (let i = 0; i < 16; i++) {
            const ops: BlockOp[] = [put(addr(1, i), bytesOf(900, i))]
            if (i === 2) ops.push(del(addr(1, 0)))
            model.apply(ops)
            await store.batch(ops)
          }
          await store.close()
          const hint = join(location, hintFileName(1))
          const original = await readFile(hint)
          const replacement = what === 'the hint of another segment' ? await readFile(join(location, hintFileName(2))) : damage(original)
          assert.ok(!replacement.equals(original), `${what}: the damage changes the hint`)
          await writeFile(hint, replacement)
          store = make()
          await store.open()
          await model.check(store, `with ${what}`)
          await store.close()
          assert.ok((await readFile(hint)).equals(original), `${what}: the hint is rewritten from the scan`)
        })
      }
    })

    it('hints of missing segments, of the active segment and unfinished ones are removed on open', async () => {
      await withStore({ segmentBytes: 4096, compactionThreshold: 0 }, async ({ location, make }) => {
        let store = make()
        await store.open()
        for (let i = 0; i < 8; i++) await store.batch([put(addr(1, i), bytesOf(1500, i))])
        await store.close()
        const files = await segments(location)
        const last = files[files.length - 1] as { id: number }
        const firstHint = await readFile(join(location, hintFileName(1)))
        await writeFile(join(location, hintFileName(last.id)), firstHint) // a stale hint for the active segment
        await writeFile(join(location, hintFileName(last.id + 5)), firstHint) // a segment that is gone
        await writeFile(join(location, `${hintFileName(2)}.tmp`), 'half written')
        store = make()
        await store.open()
        for (let i = 0; i < 8; i++) assertBytes(await store.get(addr(1, i)), bytesOf(1500, i), `block ${i}`)
        const names = await readdir(location)
        assert.ok(!names.includes(hintFileName(last.id)), 'the hint of the active segment is removed')
        assert.ok(!names.includes(hintFileName(last.id + 5)), 'the hint of a missing segment is removed')
        assert.ok(!names.some((name) => name.endsWith('.tmp')), 'unfinished hints are removed')
      })
    })
  })

  describe('recovery of the active segment', () => {
    /** Writes three synced batches and returns the active segment's path, where the third batch starts and ends, and the file's end. */
    async function threeBatches (store: FileBlockStore, location: string): Promise<{ path: string, thirdStart: number, thirdEnd: number, fileEnd: number }> {
      await store.batch([put(addr(1, 1), bytesOf(300, 1)), put(addr(1, 2), bytesOf(300, 2))], { sync: true })
      await store.batch([put(addr(1, 3), bytesOf(300, 3))], { sync: true })
      // The third batch: overwrite 1, add 4, delete 2. All or nothing.
      await store.batch([put(addr(1, 1), bytesOf(400, 11)), put(addr(1, 4), bytesOf(400, 4)), del(addr(1, 2))], { sync: true })
      // Each sync is followed by a batch of its own: a mark stating it.
      const thirdStart = 3 * recordSize(300) + 2 * HEADER_BYTES
      const thirdEnd = thirdStart + 2 * recordSize(400) + recordSize(0)
      const fileEnd = thirdEnd + HEADER_BYTES
      const files = await segments(location)
      assert.equal(files.length, 1)
      assert.equal((files[0] as { size: number }).size, fileEnd)
      return { path: join(location, (files[0] as { name: string }).name), thirdStart, thirdEnd, fileEnd }
    }

    async function assertFirstTwoOnly (store: FileBlockStore, what: string): Promise<void> {
      assertBytes(await store.get(addr(1, 1)), bytesOf(300, 1), `${what}: block 1 keeps its value from before the torn batch`)
      assertBytes(await store.get(addr(1, 2)), bytesOf(300, 2), `${what}: block 2 is not deleted by the torn batch`)
      assertBytes(await store.get(addr(1, 3)), bytesOf(300, 3), `${what}: block 3`)
      assert.equal(await store.get(addr(1, 4)), undefined, `${what}: block 4 of the torn batch is absent`)
      assert.deepEqual({ blocks: (await store.stats()).blocks, liveBytes: (await store.stats()).liveBytes }, { blocks: 3, liveBytes: 900 }, `${what}: stats`)
    }

    for (const [what, cutFromEnd] of [
      ['the last record cut inside its header', 10],
      ['the last record missing entirely (cut at a record boundary inside the batch)', recordSize(0)],
      ['the batch cut inside its second record', recordSize(0) + 100],
      ['the batch cut inside its first record', recordSize(0) + recordSize(400) + 100]
    ] as const) {
      it(`a multi-record batch with ${what} is dropped whole; earlier batches are intact`, async () => {
        await withStore({ compactionThreshold: 0 }, async ({ location, make, reopen }) => {
          let store = make()
          await store.open()
          const { path, thirdStart, thirdEnd } = await threeBatches(store, location)
          await store.close()
          await truncate(path, thirdEnd - cutFromEnd)
          store = make()
          await store.open()
          await assertFirstTwoOnly(store, 'after recovery')
          assert.equal((await stat(path)).size, thirdStart, 'the torn tail is truncated at the last whole batch')
          // New writes follow the recovered log and survive another reopen.
          await store.batch([put(addr(1, 5), bytesOf(200, 5))], { sync: true })
          store = await reopen(store)
          assertBytes(await store.get(addr(1, 5)), bytesOf(200, 5), 'a batch written after recovery')
          assert.equal(await store.get(addr(1, 4)), undefined)
        })
      })
    }

    it('garbage appended to the active segment is truncated and every batch stays', async () => {
      await withStore({ compactionThreshold: 0 }, async ({ location, make }) => {
        let store = make()
        await store.open()
        const { path, fileEnd } = await threeBatches(store, location)
        await store.close()
        await appendFile(path, Buffer.from(bytesOf(5000, 7)))
        store = make()
        await store.open()
        assertBytes(await store.get(addr(1, 1)), bytesOf(400, 11), 'block 1')
        assert.equal(await store.get(addr(1, 2)), undefined, 'block 2')
        assertBytes(await store.get(addr(1, 4)), bytesOf(400, 4), 'block 4')
        assert.equal((await stat(path)).size, fileEnd)
      })
    })

    it('whole, valid records of a batch whose last record never arrived are not applied', async () => {
      await withStore({ compactionThreshold: 0 }, async ({ location, make }) => {
        let store = make()
        await store.open()
        const { path, fileEnd } = await threeBatches(store, location)
        await store.close()
        // Two perfectly valid records, both flagged "the batch continues": the batch never ended.
        const tail = Buffer.alloc(2 * recordSize(64))
        let position = encodeRecord(tail, 0, TYPE_PUT, FLAG_CONTINUES, 1, 3, 0, bytesOf(64, 33))
        position = encodeRecord(tail, position, TYPE_PUT, FLAG_CONTINUES, 1, 9, 0, bytesOf(64, 9))
        assert.equal(position, tail.byteLength)
        await appendFile(path, tail)
        store = make()
        await store.open()
        assertBytes(await store.get(addr(1, 3)), bytesOf(300, 3), 'block 3 keeps its committed value')
        assert.equal(await store.get(addr(1, 9)), undefined, 'block 9 of the unfinished batch')
        assert.equal((await stat(path)).size, fileEnd)
      })
    })

    it('damage in the middle of the active segment fails open with CORRUPTION and leaves the file as it is', async () => {
      // Valid batches follow the damaged one, so it is no torn write: cutting the log there would drop
      // acknowledged batches. More cases in test/file-store-damage.test.ts.
      await withStore({ compactionThreshold: 0 }, async ({ location, make }) => {
        let store = make()
        await store.open()
        for (let i = 0; i < 5; i++) await store.batch([put(addr(1, i), bytesOf(500, i))], { sync: true })
        await store.close()
        const path = await segmentFile(location)
        // In the record of batch 2 (batches 1 to 4 start with a mark).
        const bytes = flipByte(await readFile(path), 2 * (recordSize(500) + HEADER_BYTES) + HEADER_BYTES + 10, 0xff)
        await writeFile(path, bytes)
        store = make()
        await rejectsWithCode(store.open(), 'CORRUPTION', 'open over the damaged record')
        assert.ok((await readFile(path)).equals(bytes), 'the segment is neither truncated nor changed')
      })
    })
  })

  describe('corruption in sealed segments', () => {
    it('a caller that checks payloads itself gets a damaged payload unchecked, but never another record or a damaged header', async () => {
      await withStore({ segmentBytes: 4096, compactionThreshold: 0 }, async ({ location, make }) => {
        let store = make()
        await store.open()
        for (let i = 0; i < 6; i++) await store.batch([put(addr(1, i), bytesOf(1000, i))])
        await store.close()
        // Segment 1 holds blocks 0..2. Damage the payload of block 1 and the header (volume) of block 2.
        const path = await segmentFile(location)
        const bytes = flipByte(flipByte(await readFile(path), recordSize(1000) + HEADER_BYTES + 10, 0x01), 2 * recordSize(1000) + 12, 0x01)
        await writeFile(path, bytes)
        // Both ways of reading: on the event loop's thread (the default, from the page cache) and
        // through the thread pool.
        for (const syncReadMaxBytes of [undefined, 0]) {
          const mode = syncReadMaxBytes === 0 ? 'thread pool' : 'synchronous'
          store = make(syncReadMaxBytes === undefined ? {} : { syncReadMaxBytes })
          await store.open()
          const checked = { payloadChecked: true }
          // Without the option the store checks the payload's crc; with it, the caller's own checksum will.
          await rejectsWithCode(store.get(addr(1, 1)), 'CHECKSUM_MISMATCH', `a damaged payload, checked by the store (${mode})`)
          const unchecked = await store.get(addr(1, 1), checked)
          assert.ok(unchecked !== undefined && unchecked.byteLength === 1000, 'the record is returned as read')
          assert.notDeepEqual(unchecked, bytesOf(1000, 1), 'the damage is the caller\'s to find')
          await rejectsWithCode(store.getMany([addr(1, 0), addr(1, 1)]), 'CHECKSUM_MISMATCH', 'getMany checked by the store')
          const many = await store.getMany([addr(1, 0), addr(1, 1)], checked)
          assertBytes(many[0], bytesOf(1000, 0), 'an intact neighbour')
          // A damaged header is refused either way: the record may not be the block asked for.
          for (const options of [undefined, checked]) {
            // The header's volume no longer matches the open index (loaded from the hint), so the read is refused.
            await rejectsWithCode(store.get(addr(1, 2), options), 'CORRUPTION', `a damaged header (${options === undefined ? 'store checks' : 'caller checks'}, ${mode})`)
          }
          assertBytes(await store.get(addr(1, 0), checked), bytesOf(1000, 0), 'block 0')
          const calls = store.readCalls
          // (Synchronous ones may turn to the pool on a loaded machine, where reads come out slow.)
          assert.ok(syncReadMaxBytes === 0 ? calls.sync === 0 && calls.pool === 7 : calls.sync >= 1 && calls.sync + calls.pool === 7, `reads made ${mode}: ${JSON.stringify(calls)}`)
          await store.close()
        }
      })
    })

    it('compaction ignores damage in dead records, and fails with CORRUPTION on a damaged live record, keeping the segment', async () => {
      await withStore({ segmentBytes: 4096, compactionThreshold: 0 }, async ({ location, make }) => {
        // Segment 1 holds blocks 0..2 (three records fill it); 0 and 1 are overwritten later, 2 stays live.
        const fill = async (store: FileBlockStore): Promise<void> => {
          for (let i = 0; i < 9; i++) await store.batch([put(addr(1, i), bytesOf(1000, i))])
          await store.batch([put(addr(1, 0), bytesOf(1000, 100))])
          await store.batch([put(addr(1, 1), bytesOf(1000, 101))])
        }
        let store = make()
        await store.open()
        await fill(store)
        await store.close()
        // Damage the dead record of block 1 (its crc no longer matches): compaction never needs it.
        const path = await segmentFile(location)
        await writeFile(path, flipByte(await readFile(path), recordSize(1000) + HEADER_BYTES + 10, 0x01))
        store = make()
        await store.open()
        await store.compact()
        assert.ok(!(await segments(location)).some((s) => s.id === 1), 'segment 1 was compacted away')
        assertBytes(await store.get(addr(1, 0)), bytesOf(1000, 100), 'block 0')
        assertBytes(await store.get(addr(1, 1)), bytesOf(1000, 101), 'block 1')
        assertBytes(await store.get(addr(1, 2)), bytesOf(1000, 2), 'block 2, copied forward from segment 1')
        await store.close()
      })
      await withStore({ segmentBytes: 4096, compactionThreshold: 0 }, async ({ location, make }) => {
        let store = make()
        await store.open()
        for (let i = 0; i < 9; i++) await store.batch([put(addr(1, i), bytesOf(1000, i))])
        await store.batch([put(addr(1, 0), bytesOf(1000, 100))])
        await store.batch([put(addr(1, 1), bytesOf(1000, 101))])
        await store.close()
        // Damage the live record of block 2: compaction must not copy it forward as if it were good.
        const path = await segmentFile(location)
        await writeFile(path, flipByte(await readFile(path), 2 * recordSize(1000) + HEADER_BYTES + 10, 0x01))
        const errors: GalleonError[] = []
        store = make({ onBackgroundError: (err) => errors.push(err) })
        await store.open()
        await rejectsWithCode(store.compact(), 'CORRUPTION', 'compact() over the damaged live record')
        assert.ok((await segments(location)).some((s) => s.id === 1), 'the damaged segment is kept')
        assertBytes(await store.get(addr(1, 0)), bytesOf(1000, 100), 'block 0')
        assertBytes(await store.get(addr(1, 1)), bytesOf(1000, 101), 'block 1')
        await rejectsWithCode(store.get(addr(1, 2)), 'CHECKSUM_MISMATCH', 'the damaged block is reported, not returned')
        await store.batch([put(addr(1, 50), bytesOf(10, 50))], { sync: true })
        assertBytes(await store.get(addr(1, 50)), bytesOf(10, 50), 'the store still takes writes')
        assert.deepEqual(errors, [], 'an explicit compact() reports its error to its caller only')
        await store.close()

        // Background compaction finds the same damage; a listener that throws must not take the process down.
        store = make({ compactionThreshold: 0.5, onBackgroundError: () => { throw new Error('a faulty listener') } })
        await store.open()
        const deadline = Date.now() + 10_000
        while (store.lastBackgroundError === undefined && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10))
        assert.equal(store.lastBackgroundError?.code, 'CORRUPTION', 'the error the listener failed to take is kept')
        assertBytes(await store.get(addr(1, 0)), bytesOf(1000, 100), 'block 0 after the failed background compaction')
      })
    })
  })

  describe('directory lock', () => {
    it('a second store on the same directory gets BUSY while the first is open, and opens once it is closed', async () => {
      await withStore({}, async ({ location, make }) => {
        const first = make()
        await first.open()
        const second = make()
        await rejectsWithCode(second.open(), 'BUSY', 'second store in this process')
        assert.equal(second.status, 'closed')
        await first.batch([put(addr(1, 1), bytesOf(10, 1))], { sync: true })
        await first.close()
        await second.open()
        assertBytes(await second.get(addr(1, 1)), bytesOf(10, 1), 'data of the first store')
      })
    })

    it('a second store of this process reaching the directory through a symlink gets BUSY too', async () => {
      await withStore({}, async ({ location, make }) => {
        const first = make()
        await first.open()
        const alias = `${location}-alias`
        await symlink(location, alias)
        try {
          const second = new FileBlockStore({ location: alias })
          try {
            await rejectsWithCode(second.open(), 'BUSY', 'second store through a symlink')
            await first.close()
            await second.open()
          } finally {
            await second.close()
          }
        } finally {
          await unlink(alias)
        }
      })
    })

    it('a store held by another process gives BUSY; once that process is killed its stale lock is taken over', async () => {
      await withStore({}, async ({ location, make }) => {
        const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', `
          const { FileBlockStore } = await import(${JSON.stringify(FILE_STORE_MODULE)})
          const store = new FileBlockStore({ location: process.argv[1] })
          await store.open()
          await store.batch([{ type: 'put', address: { volume: 1, index: 1, gen: 0 }, data: new Uint8Array(100).fill(7) }], { sync: true })
          process.stdout.write('ready\\n')
          setInterval(() => {}, 1000)
        `, location], { stdio: ['ignore', 'pipe', 'pipe'] })
        try {
          await waitForLine(child, 'ready', 30_000)
          const lock = await readFile(join(location, 'LOCK'), 'utf8')
          assert.equal(Number.parseInt(lock, 10), child.pid, 'the LOCK file names the owner')
          const store = make()
          const error = await rejectsWithCode(store.open(), 'BUSY', 'store held by a live process')
          assert.match(error.message, new RegExp(String(child.pid)))
          child.kill('SIGKILL')
          await new Promise((resolve) => child.once('close', resolve))
          await store.open()
          assert.deepEqual(await store.get(addr(1, 1)), new Uint8Array(100).fill(7), 'the killed process\'s synced batch')
          assert.equal(Number.parseInt(await readFile(join(location, 'LOCK'), 'utf8'), 10), process.pid, 'the lock is ours now')
          await store.close()
          assert.ok(!(await readdir(location)).some((name) => name.startsWith('LOCK')), 'close removes the lock and leaves no temporary lock files')
        } finally {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
        }
      })
    })

    it('lock files naming a dead process, this process (a store never closed) or nothing are stale', async () => {
      const deadPid = await new Promise<number>((resolve, reject) => {
        const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' })
        child.once('error', reject)
        child.once('exit', () => resolve(child.pid as number))
      })
      for (const content of [`${deadPid}\n`, `${process.pid}\n`, '', 'garbage']) {
        await withStore({}, async ({ location, make }) => {
          await writeFile(join(location, 'LOCK'), content)
          const store = make()
          await store.open()
          const taken = await readFile(join(location, 'LOCK'), 'utf8')
          assert.equal(Number.parseInt(taken, 10), process.pid, `lock taken over from ${JSON.stringify(content)}`)
          assert.match(taken, new RegExp(`^host=${hostname()}$`, 'm'))
        })
      }
    })

    it('a lock from another host or another PID namespace is never taken over; one from an earlier boot always is', async () => {
      const live = process.ppid
      const ns = await readlink('/proc/self/ns/pid').catch(() => undefined)
      const boot = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => '')).trim()
      await withStore({}, async ({ location, make }) => {
        await writeFile(join(location, 'LOCK'), `4242\nhost=some-other-host\n`)
        const error = await rejectsWithCode(make().open(), 'BUSY', 'a lock from another host')
        assert.match(error.message, /process 4242 on host some-other-host.*delete .*LOCK/)
      })
      if (ns !== undefined) {
        await withStore({}, async ({ location, make }) => {
          // A pid that is dead here may be alive in the container that wrote it.
          await writeFile(join(location, 'LOCK'), `999999\nhost=${hostname()}\npidns=pid:[1]\nboot=${boot}\n`)
          const error = await rejectsWithCode(make().open(), 'BUSY', 'a lock from another PID namespace')
          assert.match(error.message, /another PID namespace/)
        })
      }
      if (boot !== '') {
        await withStore({}, async ({ location, make }) => {
          // The pid is alive now, but the lock was taken before the last boot: stale.
          await writeFile(join(location, 'LOCK'), `${live}\nhost=${hostname()}\npidns=${ns ?? ''}\nboot=00000000-0000-0000-0000-000000000000\n`)
          const store = make()
          await store.open()
          assert.equal(Number.parseInt(await readFile(join(location, 'LOCK'), 'utf8'), 10), process.pid)
          await store.close()
        })
      }
    })

    it('removes temporary and set-aside lock files that dead processes left behind, and only those', async () => {
      const deadPid = await new Promise<number>((resolve, reject) => {
        const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' })
        child.once('error', reject)
        child.once('exit', () => resolve(child.pid as number))
      })
      await withStore({}, async ({ location, make }) => {
        const livePid = process.ppid
        for (const name of [`LOCK.${deadPid}.0a1b2c3d.tmp`, `LOCK.stale-${deadPid}-0a1b2c3d`, `LOCK.${livePid}.0a1b2c3d.tmp`]) await writeFile(join(location, name), `${deadPid}\n`)
        const store = make()
        await store.open()
        const left = (await readdir(location)).filter((name) => name.startsWith('LOCK')).sort()
        assert.deepEqual(left, ['LOCK', `LOCK.${livePid}.0a1b2c3d.tmp`].sort())
      })
    })
  })

  describe('writer', () => {
    it('group commit: concurrent synced batches share few fdatasyncs', async () => {
      await withStore({ compactionThreshold: 0 }, async ({ make, reopen }) => {
        let store = make()
        await store.open()
        await store.batch([put(addr(1, 0), bytesOf(10, 0))], { sync: true })
        const n = 64
        let before = store.syncCount
        await Promise.all(Array.from({ length: n }, (_, i) => store.batch([put(addr(1, i), bytesOf(4096, i))], { sync: true })))
        const batchSyncs = store.syncCount - before
        // About 264 KiB: five write groups, four in flight at once, which one sync covers when all
        // four are written (finished groups wait for those in flight); then the fifth.
        assert.ok(batchSyncs >= 1 && batchSyncs <= 2, `${n} concurrent synced batches took ${batchSyncs} syncs`)

        before = store.syncCount
        await Promise.all(Array.from({ length: n }, () => store.sync()))
        assert.ok(store.syncCount - before <= 1, `${n} concurrent sync() calls with nothing written took ${store.syncCount - before} syncs`)

        before = store.syncCount
        await Promise.all(Array.from({ length: n }, (_, i) => store.batch([put(addr(2, i), bytesOf(512, i))])))
        assert.equal(store.syncCount - before, 0, 'batches without sync do not sync')
        await Promise.all([...Array.from({ length: 8 }, () => store.sync()), store.batch([put(addr(2, 99), bytesOf(8, 1))], { sync: true })])
        assert.ok(store.syncCount - before <= 2, `sync() calls after unsynced batches took ${store.syncCount - before} syncs`)

        store = await reopen(store)
        for (let i = 0; i < n; i++) assertBytes(await store.get(addr(1, i)), bytesOf(4096, i), `block 1/${i}`)
      })
    })

    it('close() while writes are queued resolves every batch called before it and refuses later ones', async () => {
      await withStore({ segmentBytes: 64 * 1024 }, async ({ make, reopen }) => {
        let store = make()
        await store.open()
        // Observed at once: one that close() fails is reported by the check below, not as an
        // unhandled rejection while the calls before it are awaited.
        const writes = Array.from({ length: 200 }, (_, i) => observed(store.batch([put(addr(1, i), bytesOf(2048, i)), ...(i > 0 ? [del(addr(1, i - 1))] : [])], { sync: i % 7 === 0 })))
        const closing = store.close()
        await rejectsWithCode(store.batch([put(addr(1, 999), bytesOf(10, 1))]), 'NOT_OPEN', 'a batch called after close()')
        await rejectsWithCode(store.compact(), 'NOT_OPEN', 'compact() called after close()')
        const results = await Promise.allSettled(writes)
        assert.deepEqual(results.filter((r) => r.status === 'rejected'), [], 'every batch called before close() resolves')
        await closing
        store = make()
        await store.open()
        for (let i = 0; i < 199; i++) assert.equal(await store.get(addr(1, i)), undefined, `block ${i} was deleted by the next batch`)
        assertBytes(await store.get(addr(1, 199)), bytesOf(2048, 199), 'the last block')
        assert.equal(await store.get(addr(1, 999)), undefined)
        store = await reopen(store)
        assert.equal((await store.stats()).blocks, 1)
      })
    })

    it('deleteVolume() resolves only after the batches called before it, also when it finds nothing left to delete', async () => {
      // Its deletes are applied to the index at once, so a second deleteVolume() (or one after a
      // batch deleting the volume's last block) finds nothing: resolving it then, before the
      // earlier deletes are written, let a kill -9 bring back a volume whose deletion had resolved.
      await withStore({ syncWriteMaxBytes: 0 }, async ({ make }) => {
        const store = make()
        await store.open()
        await store.batch([put(addr(2, 0), bytesOf(100, 1)), put(addr(2, 1), bytesOf(100, 2))])
        const settled: string[] = []
        const calls = [
          store.batch([del(addr(2, 0))]).then(() => settled.push('batch')),
          store.deleteVolume(2).then(() => settled.push('first deleteVolume')),
          store.deleteVolume(2).then(() => settled.push('second deleteVolume'))
        ]
        await Promise.all(calls)
        assert.deepEqual(settled, ['batch', 'first deleteVolume', 'second deleteVolume'])
        await store.close()
      })
    })

    it('close() during compaction settles both and keeps every block', async () => {
      await withStore({ segmentBytes: 256 * 1024, compactionThreshold: 0 }, async ({ location, make, reopen }) => {
        let store = make()
        await store.open()
        const model = new BlockStoreModel()
        for (let round = 0; round < 8; round++) {
          const pending: Array<Promise<void>> = []
          for (let i = 0; i < 64; i++) {
            const ops = [put(addr(1, i), bytesOf(16 * 1024, round * 64 + i))]
            model.apply(ops)
            pending.push(store.batch(ops))
          }
          await Promise.all(pending)
        }
        const before = (await segments(location)).length
        const compacting = store.compact()
        // Close once compaction has visibly started (its first segment is gone), while it still has work.
        const deadline = Date.now() + 10_000
        while ((await segments(location)).length >= before && Date.now() < deadline) await new Promise((resolve) => setImmediate(resolve))
        const closing = store.close()
        await Promise.all([compacting, closing])
        assert.equal(store.status, 'closed')
        assert.ok(!(await readdir(location)).some((name) => name.endsWith('.tmp')), 'no unfinished hint is left behind')
        store = make()
        await store.open()
        await model.check(store, 'after close() during compaction')
        await store.compact()
        store = await reopen(store)
        await model.check(store, 'after a full compaction and reopen')
        assert.ok(await diskBytes(location) <= 3 * 64 * recordSize(16 * 1024), 'the full compaction reclaimed the garbage')
      })
    })

    it('syncWriteMaxBytes: validated; with 0 every group goes through the thread pool and the store behaves the same', async () => {
      for (const bad of [-1, 1.5, '1M', Number.NaN]) {
        assert.throws(() => new FileBlockStore({ location: tmpdir(), syncWriteMaxBytes: bad as number }), (err: GalleonError) => err.code === 'INVALID_ARGUMENT' && /syncWriteMaxBytes/.test(err.message))
      }
      await withStore({ syncWriteMaxBytes: 0, segmentBytes: 256 * 1024 }, async ({ make, reopen }) => {
        let store = make()
        await store.open()
        const model = new BlockStoreModel()
        const pending: Array<Promise<void>> = []
        for (let i = 0; i < 300; i++) {
          const ops = [put(addr(1, i % 120), bytesOf(2000, i))]
          model.apply(ops)
          pending.push(store.batch(ops, { sync: i % 50 === 0 }))
        }
        await Promise.all(pending)
        await model.check(store, 'written through the thread pool')
        store = await reopen(store)
        await model.check(store, 'after reopen')
      })
    })

    it('syncReadMaxBytes: validated; reads up to it are made on the event loop\'s thread, larger ones (and all with 0) through the thread pool, with the same results', async () => {
      for (const bad of [-1, 1.5, '1M', Number.NaN]) {
        assert.throws(() => new FileBlockStore({ location: tmpdir(), syncReadMaxBytes: bad as number }), (err: GalleonError) => err.code === 'INVALID_ARGUMENT' && /syncReadMaxBytes/.test(err.message))
      }
      // Runs of adjacent records: 8 blocks of 2000 bytes written together are read with one call.
      const run = recordSize(2000) * 8
      for (const [syncReadMaxBytes, expect] of [[undefined, 'sync'], [run, 'sync'], [run - 1, 'pool'], [0, 'pool']] as const) {
        await withStore(syncReadMaxBytes === undefined ? {} : { syncReadMaxBytes }, async ({ make, reopen }) => {
          let store = make()
          await store.open()
          const model = new BlockStoreModel()
          for (let i = 0; i < 40; i++) {
            const ops = Array.from({ length: 8 }, (_, k) => put(addr(1, i * 8 + k), bytesOf(2000, i * 8 + k + 1)))
            model.apply(ops)
            await store.batch(ops)
          }
          store = await reopen(store)
          const before = store.readCalls
          for (let i = 0; i < 40; i++) {
            const got = await store.getMany(Array.from({ length: 8 }, (_, k) => addr(1, i * 8 + k)))
            got.forEach((value, k) => assertBytes(value, bytesOf(2000, i * 8 + k + 1), `block ${i * 8 + k} (${String(syncReadMaxBytes)})`))
          }
          const after = store.readCalls
          const made = { sync: after.sync - before.sync, pool: after.pool - before.pool }
          // One read call per run; synchronous ones may turn to the pool on a loaded machine (slow reads).
          if (expect === 'pool') assert.deepEqual(made, { sync: 0, pool: 40 }, `syncReadMaxBytes ${String(syncReadMaxBytes)}: through the pool`)
          else assert.ok(made.sync >= 1 && made.sync + made.pool === 40, `syncReadMaxBytes ${String(syncReadMaxBytes)}: synchronous reads (${JSON.stringify(made)})`)
          await model.check(store, `syncReadMaxBytes ${String(syncReadMaxBytes)}`)
        })
      }
    })

    it('a reader in a loop does not hold the event loop: after a few milliseconds of synchronous reads one goes through the pool', async () => {
      await withStore({}, async ({ make, reopen }) => {
        let store = make()
        await store.open()
        for (let i = 0; i < 64; i++) await store.batch([put(addr(1, i), bytesOf(4096, i + 1))])
        store = await reopen(store)
        let turns = 0
        let reading = true
        const spin = (): void => { if (reading) { turns++; setImmediate(spin) } }
        setImmediate(spin)
        const before = store.readCalls
        // Page-cached reads, one after the other, for a while (by count, not by time).
        for (let i = 0; i < 40_000; i++) assertBytes(await store.get(addr(1, i % 64)), bytesOf(4096, (i % 64) + 1), `read ${i}`)
        reading = false
        const after = store.readCalls
        assert.ok(after.pool > before.pool, `some reads went through the pool (${JSON.stringify(after)})`)
        assert.ok(turns > 1, `the event loop turned ${turns} times`)
      })
    })

    it('synchronous reads that fail slowly (a failing device) count as slow: reads then go through the thread pool, which still works', async () => {
      await withStore({}, async ({ make, reopen }) => {
        let store = make()
        await store.open()
        for (let i = 0; i < 8; i++) await store.batch([put(addr(1, i), bytesOf(3000, i + 1))])
        store = await reopen(store)
        const fs = createRequire(import.meta.url)('node:fs') as typeof import('node:fs')
        const original = fs.readSync
        // Every synchronous read takes 2 ms, then fails with EIO; reads through the pool are untouched.
        fs.readSync = ((..._args: unknown[]) => {
          const until = performance.now() + 2
          while (performance.now() < until) { /* a device taking its time */ }
          throw Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO', errno: -5, syscall: 'read' })
        }) as typeof fs.readSync
        syncBuiltinESMExports()
        try {
          await rejectsWithCode(store.get(addr(1, 0)), 'IO_ERROR', 'a failed synchronous read')
          // A turn of the event loop: on a loaded machine the 2 ms read can stretch past the 5 ms a
          // run of synchronous reads may hold the loop (LoopStreak), which would send the next read
          // to the pool for that reason rather than for the slowness counted here.
          await new Promise((resolve) => setImmediate(resolve))
          await rejectsWithCode(store.get(addr(1, 1)), 'IO_ERROR', 'a second one')
          assert.deepEqual(store.readCalls, { sync: 2, pool: 0 })
          for (let i = 0; i < 8; i++) assertBytes(await store.get(addr(1, i)), bytesOf(3000, i + 1), `block ${i} through the pool`)
          assert.deepEqual(store.readCalls, { sync: 2, pool: 8 })
        } finally {
          fs.readSync = original
          syncBuiltinESMExports()
        }
      })
    })

    it('a read in the thread pool keeps its segment open: compaction and close() wait for it rather than close the descriptor under it', async () => {
      // Every read through the pool (syncReadMaxBytes: 0); the first one is held back as a busy pool would.
      await withStore({ segmentBytes: 16 * 1024, compactionThreshold: 0, syncReadMaxBytes: 0 }, async ({ make }) => {
        const fs = createRequire(import.meta.url)('node:fs') as typeof import('node:fs')
        const original = fs.read
        const held: { release?: () => void } = {}
        const releaseHeld = (): void => {
          const release = held.release
          held.release = undefined
          assert.ok(release !== undefined, 'a read is held')
          release()
        }
        const holdNextRead = (): void => {
          let armed = true
          fs.read = ((...args: unknown[]) => {
            if (!armed) return (original as (...a: unknown[]) => void)(...args)
            armed = false
            void new Promise<void>((resolve) => { held.release = resolve }).then(() => (original as (...a: unknown[]) => void)(...args))
          }) as typeof fs.read
          syncBuiltinESMExports()
        }
        const settledWithin = async (promise: Promise<unknown>, ms: number): Promise<boolean> => {
          let settled = false
          void promise.then(() => { settled = true }, () => { settled = true })
          await new Promise((resolve) => setTimeout(resolve, ms))
          return settled
        }
        try {
          const store = make()
          await store.open()
          // Block 1/0 in the first segment, which the overwrites of volume 2 then leave mostly dead.
          await store.batch([put(addr(1, 0), bytesOf(1000, 1))])
          for (let round = 0; round < 4; round++) {
            for (let i = 1; i <= 12; i++) await store.batch([put(addr(2, i), bytesOf(1000, 100 * round + i))])
          }
          holdNextRead()
          const reading = store.get(addr(1, 0))
          assert.ok(held.release !== undefined, 'the read is in the pool, held')
          const compacting = store.compact()
          assert.equal(await settledWithin(compacting, 150), false, 'compaction waits for the read of the segment it empties')
          releaseHeld()
          assertBytes(await reading, bytesOf(1000, 1), 'the held read')
          await compacting
          assertBytes(await store.get(addr(1, 0)), bytesOf(1000, 1), 'after compaction')
          // close(): the same.
          holdNextRead()
          const again = store.get(addr(2, 5))
          assert.ok(held.release !== undefined)
          const closing = store.close()
          assert.equal(await settledWithin(closing, 150), false, 'close() waits for the read')
          releaseHeld()
          assertBytes(await again, bytesOf(1000, 300 + 5), 'the read held across close()')
          await closing
        } finally {
          fs.read = original
          syncBuiltinESMExports()
        }
      })
    })

    it('reads turn to the thread pool when most recent synchronous reads were slow, or two very slow ones came in a row; noise does not do it', () => {
      const quick = 0.01
      const slow4k = SLOW_READ_MS * 2 // over the allowance of a 4 KiB read, not very slow
      const verySlow = SLOW_READ_MS + VERY_SLOW_READ_MS + 1
      let now = 1000
      // Noise: one read in five slow, for a long time (a preempted thread on a loaded machine).
      const noisy = new SyncReadGovernor()
      for (let i = 0; i < 2000; i++) { assert.ok(noisy.synchronous(now), `read ${i} of a noisy but cached workload`); noisy.took(now, i % 5 === 0 ? slow4k : quick, 4096); now += 0.05 }
      // A lone very slow read among quick ones changes nothing either.
      for (let i = 0; i < 200; i++) { noisy.took(now, i % 50 === 0 ? verySlow : quick, 4096); now += 0.05 }
      assert.ok(noisy.synchronous(now))
      // The allowance grows with the size: what is quick for 1 MiB is slow for 4 KiB.
      const mib = SLOW_READ_MS + 0.9 * (1024 * 1024) / SLOW_READ_BYTES_PER_MS
      for (let i = 0; i < 50; i++) { noisy.took(now, mib, 1024 * 1024); now += 2 }
      assert.ok(noisy.synchronous(now), 'large reads within their allowance are not slow')
      // Data not cached: every read slow. A dozen reads in, they go through the pool for BACKOFF_MS.
      const cold = new SyncReadGovernor()
      let count = 0
      while (cold.synchronous(now) && count < 100) { cold.took(now, mib, 4096); now += 0.1; count++ }
      assert.ok(count >= 8 && count <= 16, `switched after ${count} slow reads`)
      assert.equal(cold.synchronous(now + BACKOFF_MS - 5), false, 'still within the backoff')
      assert.equal(cold.synchronous(now + BACKOFF_MS + 1), true, 'tried synchronously again after the backoff')
      // A failing or hung device: two very slow reads in a row.
      const hung = new SyncReadGovernor()
      hung.took(now, verySlow, 4096)
      assert.ok(hung.synchronous(now + verySlow))
      hung.took(now + verySlow, verySlow, 4096)
      assert.equal(hung.synchronous(now + 2 * verySlow + 1), false)
      hung.pooled()
      assert.equal(hung.poolReads, 1)
      assert.equal(hung.syncReads, 2)
    })

    it('syncs in the background every 4 MiB of unsynced writes, which no batch waits for', async () => {
      // Segments of 8 MiB: rolls happen while background syncs are under way or just done.
      await withStore({ segmentBytes: 8 * 1024 * 1024, compactionThreshold: 0 }, async ({ location, make, reopen }) => {
        let store = make()
        await store.open()
        const model = new BlockStoreModel()
        const syncsBefore = store.syncCount
        // 16.5 MiB in batches of 16 blocks (written on the event loop's thread), one batch in 32 of
        // 560 blocks (2.2 MiB: handed to the thread pool), 32 batches in flight at a time.
        let index = 0
        for (let round = 0; round < 4; round++) {
          const pending: Array<Promise<void>> = []
          for (let b = 0; b < 32; b++) {
            const ops: BlockOp[] = []
            for (let i = 0; i < (b === 20 ? 560 : 16); i++, index++) ops.push(put(addr(1, index), bytesOf(4096, index)))
            model.apply(ops)
            pending.push(store.batch(ops))
          }
          await Promise.all(pending)
        }
        assert.equal(index * 4096, 16.5 * 1024 * 1024)
        const segmentCount = (await segments(location)).length
        assert.ok(segmentCount >= 3, `the writes rolled over into new segments (${segmentCount})`)
        assert.equal(store.syncCount - syncsBefore, segmentCount - 1, 'the only syncs waited for sealed full segments')
        assert.ok(store.writebackSyncCount >= segmentCount - 1, `${store.writebackSyncCount} background syncs for ${index * 4} KiB written`)
        await model.check(store, 'before reopen')
        store = await reopen(store)
        await model.check(store, 'after reopen')
      })
    })

    it('a failed background sync stops the writer like a failed write; what was written survives reopen', async () => {
      await withStore({ compactionThreshold: 0 }, async ({ make }) => {
        let store = make()
        await store.open()
        let failedSyncs = 0
        const acknowledged: number[] = []
        const refused: number[] = []
        const check = async (what: string): Promise<void> => {
          for (const i of acknowledged) assertBytes(await store.get(addr(1, i)), bytesOf(4096, i), `${what}: acknowledged block ${i}`)
          for (const i of refused) {
            // A refused batch may or may not have reached the file before the failure: all or nothing.
            const value = await store.get(addr(1, i))
            if (value !== undefined) assertBytes(value, bytesOf(4096, i), `${what}: refused block ${i}`)
          }
        }
        await withDatasync(async () => { failedSyncs++; throw simulatedEio() }, async () => {
          // 5 MiB without sync: the background sync starts after 4 MiB, and fails.
          const results = await Promise.allSettled(Array.from({ length: 1280 }, async (_, i) => {
            await store.batch([put(addr(1, i), bytesOf(4096, i))])
            return i
          }))
          for (const [i, result] of results.entries()) {
            if (result.status === 'fulfilled') {
              acknowledged.push(i)
            } else {
              refused.push(i)
              assert.ok(result.reason instanceof GalleonError && result.reason.code === 'IO_ERROR', `batch ${i}: ${String(result.reason)}`)
            }
          }
          assert.ok(acknowledged.length >= 1000, `only ${acknowledged.length} batches were acknowledged`)
          const failure = await rejectsWithCode(store.sync(), 'IO_ERROR', 'sync() after the background sync failed')
          assert.match(failure.message, /fdatasync \(simulated\).*|close and reopen/)
          assert.equal(failedSyncs, 1, 'one background sync was attempted, and nothing after the failure')
          await rejectsWithCode(store.batch([put(addr(1, 99999), bytesOf(10, 1))]), 'IO_ERROR', 'a batch after the failure')
          await check('after the failure')
        })
        const closing = await rejectsWithCode(store.close(), 'IO_ERROR', 'close() after the background sync failed')
        assert.match(closing.message, /background sync .* may be lost/)
        assert.equal(store.status, 'closed')
        store = make()
        await store.open()
        await check('after reopen')
        assert.equal(await store.get(addr(1, 99999)), undefined, 'the refused batch is not there')
      })
    })

    it('a synced batch is not acknowledged when the background sync running beside its own sync failed', async () => {
      // Linux reports a write-back error to one fdatasync of the file only: the background one takes
      // it (late, here), the batch's own returns 0. The batch must still fail.
      await withStore({ compactionThreshold: 0 }, async ({ make }) => {
        let store = make()
        await store.open()
        let calls = 0
        const lateFailureFirst = async (original: () => Promise<void>): Promise<void> => {
          if (calls++ > 0) return await original()
          await new Promise((resolve) => setTimeout(resolve, 200))
          throw simulatedEio()
        }
        await withDatasync(lateFailureFirst, async () => {
          // Just over 4 MiB without sync starts the background sync; the synced batch follows at once.
          const unsynced = Array.from({ length: 1020 }, (_, i) => store.batch([put(addr(1, i), bytesOf(4096, i))]))
          // Observed at once: it may fail before the batches ahead of it have all settled.
          const synced = observed(store.batch([put(addr(1, 5000), bytesOf(100, 1))], { sync: true }))
          await Promise.allSettled(unsynced)
          await rejectsWithCode(synced, 'IO_ERROR', 'the synced batch')
          assert.ok(calls >= 2, `the batch's own sync ran beside the background one (${calls} calls)`)
        })
        await rejectsWithCode(store.close(), 'IO_ERROR', 'close()')
        store = make()
        await store.open()
        await store.close()
      })
    })

    it('a failed write rejects its batch and every later one with a GalleonError; acknowledged data survives reopen', async () => {
      await withStore({ segmentBytes: 4096, compactionThreshold: 0 }, async ({ location, make }) => {
        let store = make()
        await store.open()
        await store.batch([put(addr(1, 1), bytesOf(3000, 1))], { sync: true })
        // The directory is moved aside and a file takes its name, so creating the next segment's
        // file (rolling to it) fails; the open segment's descriptor still reads.
        const aside = `${location}-aside`
        await rename(location, aside)
        await writeFile(location, '')
        const failing = store.batch([put(addr(1, 2), bytesOf(3000, 2))], { sync: true })
        // Observed at once: it fails with the first, whose check is awaited before its own.
        const queuedBehind = observed(store.batch([put(addr(1, 3), bytesOf(10, 3))]))
        const first = await rejectsWithCode(failing, 'IO_ERROR', 'the batch whose roll failed')
        const second = await rejectsWithCode(queuedBehind, 'IO_ERROR', 'the batch queued behind it')
        assert.equal(second, first, 'the same failure is reported')
        await rejectsWithCode(store.batch([put(addr(1, 4), bytesOf(10, 4))]), 'IO_ERROR', 'a batch after the failure')
        await rejectsWithCode(store.sync(), 'IO_ERROR', 'sync() after the failure')
        assertBytes(await store.get(addr(1, 1)), bytesOf(3000, 1), 'acknowledged data is still readable')
        await rm(location)
        await rename(aside, location)
        await store.close()
        store = make()
        await store.open()
        assertBytes(await store.get(addr(1, 1)), bytesOf(3000, 1), 'acknowledged data after reopen')
        for (const index of [2, 3, 4]) assert.equal(await store.get(addr(1, index)), undefined, `rejected block ${index}`)
        await store.batch([put(addr(1, 5), bytesOf(3000, 5))], { sync: true })
        assertBytes(await store.get(addr(1, 5)), bytesOf(3000, 5), 'the reopened store writes again')
      })
    })

    it('a segment recovered from a killed process is fsynced before it is sealed', async () => {
      // A killed process's unsynced batches sit in the page cache. Sealing the segment without
      // fsyncing it would let a power loss tear a sealed segment, which open() refuses as damage.
      await withStore({ segmentBytes: 4096, compactionThreshold: 0 }, async ({ location, make }) => {
        const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', `
          const { FileBlockStore } = await import(${JSON.stringify(FILE_STORE_MODULE)})
          const store = new FileBlockStore({ location: process.argv[1], segmentBytes: 4096 })
          await store.open()
          await store.batch([{ type: 'put', address: { volume: 1, index: 1, gen: 0 }, data: new Uint8Array(2000).fill(1) }])
          process.stdout.write('written ' + store.syncCount + '\\n')
          setInterval(() => {}, 1000)
        `, location], { stdio: ['ignore', 'pipe', 'pipe'] })
        try {
          await waitForLine(child, 'written 0', 30_000)
        } finally {
          child.kill('SIGKILL')
          await new Promise((resolve) => child.once('close', resolve))
        }
        const store = make()
        await store.open()
        // Open syncs the active segment it recovers (so the next batch's mark can say so).
        assert.equal(store.syncCount, 1, 'open fsynced what the killed process left in the page cache')
        await store.batch([put(addr(1, 2), bytesOf(3000, 2))]) // does not fit: seals segment 1
        assert.equal((await segments(location)).length, 2)
        assert.deepEqual(await store.get(addr(1, 1)), new Uint8Array(2000).fill(1))
      })
    })
  })
})


/** Resolves when the child prints `line`; rejects if it exits first or the deadline passes. */
async function waitForLine (child: ReturnType<typeof spawn>, line: string, deadlineMs: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    let output = ''
    let errors = ''
    const timer = setTimeout(() => reject(new Error(`child did not print ${JSON.stringify(line)} within ${deadlineMs} ms; stderr: ${errors}`)), deadlineMs)
    child.stderr?.on('data', (chunk: Buffer) => { errors += chunk.toString() })
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString()
      if (output.split('\n').includes(line)) {
        clearTimeout(timer)
        resolve()
      }
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`child exited (${code ?? signal}) before printing ${JSON.stringify(line)}; stderr: ${errors}`))
    })
  })
}
