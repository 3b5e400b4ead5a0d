// Tests of how the file block store (backends/file) tells damage from a torn tail in its active
// segment: damage followed by a valid batch, or found after a clean close, fails open with CORRUPTION
// and cuts nothing; what a crash leaves (a cut-off or unwritten tail) is truncated as before.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { statSync } from 'node:fs'
import { appendFile, copyFile, mkdtemp, readFile, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { FileBlockStore } from '../backends/file/index.js'
import { FLAG_CONTINUES, HEADER_BYTES, TYPE_MARK, TYPE_PUT } from '../backends/file/record.js'
import { encodeRecord } from './support/file-records.js'
import { segmentFile, segmentFiles, unsaltSegment } from './support/file-segments.js'
import { GalleonError } from '../src/errors.js'
import { addr, assertBytes, bytesOf, put } from './conformance/fixtures.js'

const FILE_STORE_MODULE = fileURLToPath(new URL('../backends/file/index.ts', import.meta.url))
const MARKER = 'CLEAN'
const VALUE_BYTES = 500
const RECORD_BYTES = HEADER_BYTES + VALUE_BYTES

// ---- helpers ---------------------------------------------------------------------------------------

/** Runs `body` with fresh directories made by `directory()`, all removed afterwards, and closes every store made by `make`. */
async function withDirectories (body: (context: { directory: () => Promise<string>, make: (location: string) => FileBlockStore }) => Promise<void>): Promise<void> {
  const directories: string[] = []
  const stores: FileBlockStore[] = []
  const directory = async (): Promise<string> => {
    const made = await mkdtemp(join(tmpdir(), 'galleonfs-file-damage-'))
    directories.push(made)
    return made
  }
  const make = (location: string): FileBlockStore => {
    const store = new FileBlockStore({ location, compactionThreshold: 0 })
    stores.push(store)
    return store
  }
  try {
    await body({ directory, make })
  } finally {
    try {
      for (const store of stores) await store.close().catch(() => {})
    } finally {
      for (const made of directories) await rm(made, { recursive: true, force: true })
    }
  }
}

async function rejectsWithCode (promise: Promise<unknown>, code: string, what: string): Promise<GalleonError> {
  let caught: unknown
  await assert.rejects(promise, (err: unknown) => { caught = err; return true }, `${what}: expected a rejection`)
  assert.ok(caught instanceof GalleonError, `${what}: expected a GalleonError, got ${String(caught)}`)
  assert.equal(caught.code, code, `${what}: expected ${code}, got ${caught.code}: ${caught.message}`)
  return caught
}

async function exists (path: string): Promise<boolean> {
  return await stat(path).then(() => true, (err: NodeJS.ErrnoException) => { if (err.code === 'ENOENT') return false; throw err })
}

/**
 * What a kill -9 of the owner would leave: the segment files as they are now (everything written is
 * in the page cache, so in the files), without the lock and without a clean-shutdown marker.
 */
async function crashCopy (from: string, to: string): Promise<void> {
  for (const name of await readdir(from)) {
    if (/^seg-[0-9a-f]{16}(-[0-9a-f]{8})?\.log$|^seg-[0-9a-f]{16}\.hint$/.test(name)) await copyFile(join(from, name), join(to, name))
  }
}

/** XORs the byte at `offset` of `bytes` with `mask` (in place) and returns `bytes`. */
function flipByte (bytes: Buffer, offset: number, mask: number): Buffer {
  bytes[offset] = (bytes[offset] as number) ^ mask
  return bytes
}

/** Encodes one batch of puts (all but the last flagged "continues"), salted with `seed` when given. */
function encodeBatch (puts: ReadonlyArray<{ index: number, data: Uint8Array }>, seed?: number): Buffer {
  const target = Buffer.alloc(puts.reduce((sum, p) => sum + HEADER_BYTES + p.data.byteLength, 0))
  let position = 0
  puts.forEach((p, i) => { position = encodeRecord(target, position, TYPE_PUT, i < puts.length - 1 ? FLAG_CONTINUES : 0, 1, p.index, 0, p.data, seed) })
  return target
}

/**
 * The two kinds of active segment recovery meets: the salted ones this version makes, and unsalted
 * ones as a release from before salted segments wrote them (made here by rewriting a salted one).
 */
const KINDS = [['new segments (salted)', false], ['segments from before salts (unsalted)', true]] as const

/** Path and seed of segment 1 in `location`, first rewritten as an unsalted segment when `legacy`. */
async function activeSegment (location: string, legacy: boolean): Promise<{ path: string, seed: number | undefined }> {
  const path = await segmentFile(location)
  if (legacy) return { path: await unsaltSegment(path), seed: undefined }
  const salt = /-([0-9a-f]{8})\.log$/.exec(path)?.[1]
  assert.ok(salt !== undefined, `a new store's segment is salted: ${path}`)
  return { path, seed: parseInt(salt, 16) }
}

/** The magic of the marks in a segment with this seed ('GFR3' in an unsalted one, 'GFR2' in a salted one). */
function markMagic (seed: number | undefined): string {
  return seed === undefined ? 'GFR3' : 'GFR2'
}

// After each sync the writer appends a batch of its own holding a mark record that states how far
// the segment was synced: the layout of `writeBatches` is batch 0, mark, batch 1, mark, ...
/** Offset of the put record of batch i written by `writeBatches`. */
const recordAt = (i: number): number => i * (RECORD_BYTES + HEADER_BYTES)
/** Offset of the mark written after batch i's sync (it states recordAt(i) + RECORD_BYTES). */
const markAt = (i: number): number => recordAt(i) + RECORD_BYTES
/** Offset just past batch i and its mark (where batch i + 1 starts). */
const batchEnd = (i: number): number => markAt(i) + HEADER_BYTES

/** Writes `count` synced single-record batches, block i holding bytesOf(VALUE_BYTES, i) at `recordAt(i)`. */
async function writeBatches (store: FileBlockStore, count: number): Promise<void> {
  for (let i = 0; i < count; i++) await store.batch([put(addr(1, i), bytesOf(VALUE_BYTES, i))], { sync: true })
}

async function assertBlocks (store: FileBlockStore, present: number, absentUpTo: number, what: string): Promise<void> {
  for (let i = 0; i < absentUpTo; i++) {
    const value = await store.get(addr(1, i))
    if (i < present) assertBytes(value, bytesOf(VALUE_BYTES, i), `${what}: block ${i}`)
    else assert.equal(value, undefined, `${what}: block ${i} is absent`)
  }
}

/**
 * Makes a store with `count` synced batches and returns the directory to damage: the store's own,
 * closed cleanly, or a crash copy taken while it was open (no clean close).
 */
async function prepared (
  context: { directory: () => Promise<string>, make: (location: string) => FileBlockStore }, count: number, cleanClose: boolean, legacy: boolean
): Promise<{ location: string, path: string, seed: number | undefined }> {
  const original = await context.directory()
  const store = context.make(original)
  await store.open()
  await writeBatches(store, count)
  let location = original
  if (!cleanClose) {
    location = await context.directory()
    await crashCopy(original, location)
  }
  await store.close()
  assert.equal(await exists(join(location, MARKER)), cleanClose, 'a clean-shutdown marker exactly after a clean close')
  return { location, ...await activeSegment(location, legacy) }
}

const SHUTDOWNS = [['after a clean close', true], ['with no clean close (crash copy)', false]] as const

// ---- tests -----------------------------------------------------------------------------------------

describe('file block store: damage in the active segment', () => {
  for (const [kind, legacy] of KINDS) describe(kind, () => {
  describe('damage followed by valid batches is corruption', () => {
    for (const [shutdown, cleanClose] of SHUTDOWNS) {
      it(`a flipped payload byte in an early batch fails open with CORRUPTION, ${shutdown}, and nothing is truncated`, async () => {
        await withDirectories(async (context) => {
          const { location, path } = await prepared(context, 5, cleanClose, legacy)
          // Inside batch 1 (block 1): batch 0 precedes the damage, batches 2..4 follow it.
          const bytes = flipByte(await readFile(path), recordAt(1) + HEADER_BYTES + 100, 0xff)
          await writeFile(path, bytes)
          const error = await rejectsWithCode(context.make(location).open(), 'CORRUPTION', 'open over the damage')
          // Codes are what tests check, but here the message is the user's only way to act on the
          // damage: it must name the file, where the damage is, and how much can be kept.
          assert.ok(error.message.includes(path) && error.message.includes(`offset ${recordAt(1)}`) &&
            error.message.includes(`truncate it to ${batchEnd(0)} bytes`), error.message)
          assert.ok((await readFile(path)).equals(bytes), 'the segment has its size and bytes (only the flip)')
          // Opening again (as an application that retries would) must not succeed by cutting the log.
          await rejectsWithCode(context.make(location).open(), 'CORRUPTION', 'a second open')
          assert.ok((await readFile(path)).equals(bytes), 'still untouched after the second open')

          // Following the advice: cut at the end of the last batch before the damage.
          await truncate(path, batchEnd(0))
          const store = context.make(location)
          await store.open()
          await assertBlocks(store, 1, 5, 'after truncating as advised')
          await store.batch([put(addr(1, 9), bytesOf(10, 9))], { sync: true })
          await store.close()
          const reopened = context.make(location)
          await reopened.open()
          assertBytes(await reopened.get(addr(1, 9)), bytesOf(10, 9), 'a batch written after the repair')
        })
      })
    }

    // Damage to a header: the scan cannot use its length to find the next record, the search past it must.
    for (const [field, offset, mask] of [
      ['magic', 0, 0x01], ['crc', 4, 0x80], ['type', 8, 0x04], ['flags', 9, 0x02], ['volume', 12, 0x01],
      ['length, one more byte', 32, 0x01], ['length, fewer bytes', 32, 0x10], ['length, too large', 35, 0x40]
    ] as const) {
      it(`damage to the ${field} field of an early record, with later batches, fails open with CORRUPTION (no clean close)`, async () => {
        await withDirectories(async (context) => {
          const { location, path } = await prepared(context, 4, false, legacy)
          const bytes = flipByte(await readFile(path), recordAt(1) + offset, mask)
          await writeFile(path, bytes)
          await rejectsWithCode(context.make(location).open(), 'CORRUPTION', `open over the damaged ${field}`)
          assert.ok((await readFile(path)).equals(bytes), 'the segment is untouched')
        })
      })
    }

    it('a batch after a gap of nonzero bytes (not what unwritten bytes read as) is evidence of corruption', async () => {
      await withDirectories(async (context) => {
        const { location, path, seed } = await prepared(context, 2, false, legacy)
        // Garbage over what would be batch 2, then a valid batch 3.
        await appendFile(path, Buffer.from(bytesOf(RECORD_BYTES, 77)))
        await appendFile(path, encodeBatch([{ index: 3, data: bytesOf(VALUE_BYTES, 3) }], seed))
        const size = (await stat(path)).size
        await rejectsWithCode(context.make(location).open(), 'CORRUPTION', 'open')
        assert.equal((await stat(path)).size, size, 'nothing truncated')
      })
    })
  })

  describe('damage after a clean close is corruption', () => {
    for (const [what, count, at] of [
      ['the only batch', 1, HEADER_BYTES + 7],
      ['the last batch', 3, recordAt(2) + HEADER_BYTES + VALUE_BYTES - 1],
      ['the header of the last batch', 3, recordAt(2) + 32]
    ] as const) {
      it(`a flipped byte in ${what} fails open with CORRUPTION and nothing is truncated`, async () => {
        await withDirectories(async (context) => {
          const { location, path } = await prepared(context, count, true, legacy)
          const bytes = flipByte(await readFile(path), at, 0x20)
          await writeFile(path, bytes)
          await rejectsWithCode(context.make(location).open(), 'CORRUPTION', 'open')
          assert.ok((await readFile(path)).equals(bytes), 'the segment is untouched')
          assert.ok(await exists(join(location, MARKER)), 'the marker stays, so a retry reports the damage again')
          await rejectsWithCode(context.make(location).open(), 'CORRUPTION', 'a second open')
        })
      })
    }

    it('a last batch (the mark after the last sync) whose record lost its end (flags damaged) after a clean close is corruption', async () => {
      await withDirectories(async (context) => {
        const { location, path, seed } = await prepared(context, 2, true, legacy)
        // Re-encode the last record flagged "continues": every crc matches, but the batch never ends.
        const bytes = await readFile(path)
        assert.equal(bytes.byteLength, batchEnd(1))
        encodeRecord(bytes, markAt(1), TYPE_MARK, FLAG_CONTINUES, 0, markAt(1), 0, undefined, seed)
        await writeFile(path, bytes)
        await rejectsWithCode(context.make(location).open(), 'CORRUPTION', 'open')
        assert.ok((await readFile(path)).equals(bytes), 'the segment is untouched')
      })
    })

    it('without a clean close, the same damage in the last synced batch is corruption too: the mark after its sync states it', async () => {
      await withDirectories(async (context) => {
        const { location, path } = await prepared(context, 3, false, legacy)
        const bytes = flipByte(await readFile(path), recordAt(2) + HEADER_BYTES + 7, 0x20)
        await writeFile(path, bytes)
        const error = await rejectsWithCode(context.make(location).open(), 'CORRUPTION', 'open')
        assert.ok(error.message.includes(`below offset ${markAt(2)}, which a mark record states had been synced`), error.message)
        assert.ok((await readFile(path)).equals(bytes), 'the segment is untouched')
      })
    })

    it('without a clean close and without the mark after its sync (a crash before it was written), damage in the last batch is cut off as a torn write', async () => {
      await withDirectories(async (context) => {
        const { location, path } = await prepared(context, 3, false, legacy)
        await writeFile(path, flipByte(await readFile(path), recordAt(2) + HEADER_BYTES + 7, 0x20).subarray(0, markAt(2)))
        const store = context.make(location)
        await store.open()
        await assertBlocks(store, 2, 3, 'after recovery')
        assert.equal((await stat(path)).size, batchEnd(1))
      })
    })
  })

  describe('what a crash leaves is still a torn tail', () => {
    for (const [what, damage, expectedBlocks, expectedSize] of [
      ['cut inside the last batch\'s payload', async (path: string) => { await truncate(path, recordAt(3) + 200) }, 3, batchEnd(2)],
      ['cut inside the last batch\'s header', async (path: string) => { await truncate(path, recordAt(3) + 20) }, 3, batchEnd(2)],
      ['cut inside the mark after the last batch', async (path: string) => { await truncate(path, markAt(3) + 20) }, 4, markAt(3)],
      ['followed by appended garbage', async (path: string) => { await appendFile(path, Buffer.from(bytesOf(5000, 5))) }, 4, batchEnd(3)],
      ['followed by zeros', async (path: string) => { await appendFile(path, Buffer.alloc(3000)) }, 4, batchEnd(3)]
    ] as const) {
      it(`a tail ${what}, with no clean close, opens and drops only what is incomplete`, async () => {
        await withDirectories(async (context) => {
          const { location, path } = await prepared(context, 4, false, legacy)
          await damage(path)
          const store = context.make(location)
          await store.open()
          await assertBlocks(store, expectedBlocks, 4, 'after recovery')
          assert.equal((await stat(path)).size, expectedSize, 'truncated after the last whole batch')
          await store.batch([put(addr(1, 8), bytesOf(VALUE_BYTES, 8))], { sync: true })
          await store.close()
          const reopened = context.make(location)
          await reopened.open()
          assertBytes(await reopened.get(addr(1, 8)), bytesOf(VALUE_BYTES, 8), 'a batch written after recovery')
        })
      })
    }

    // The writer has several writes in flight at reserved offsets: a kill can leave a later batch on
    // disk and an earlier one unwritten (zeros), or written only up to a page boundary.
    for (const [what, keptOfBatch] of [['an unwritten batch', 0], ['a batch written only up to a page boundary', 2560 - batchEnd(2)]] as const) {
      it(`a valid batch after ${what} (zeros) is what out-of-order writes leave: both are cut off`, async () => {
        await withDirectories(async (context) => {
          const { location, path, seed } = await prepared(context, 3, false, legacy)
          // Batch 3: two records of 1000 bytes, of which only `keptOfBatch` bytes were written.
          const lost = encodeBatch([{ index: 3, data: bytesOf(1000, 3) }, { index: 4, data: bytesOf(1000, 4) }], seed)
          lost.fill(0, keptOfBatch)
          if (keptOfBatch > 0) assert.equal((batchEnd(2) + keptOfBatch) % 512, 0, 'the written part ends at an aligned boundary')
          await appendFile(path, lost)
          await appendFile(path, encodeBatch([{ index: 5, data: bytesOf(VALUE_BYTES, 5) }], seed))
          const store = context.make(location)
          await store.open()
          await assertBlocks(store, 3, 6, 'after recovery')
          assert.equal((await stat(path)).size, batchEnd(2), 'cut at the end of the last whole batch')
        })
      })
    }

    // A power loss writes dirty pages back in any order: a page written after the last sync may be
    // lost (it reads as zeros in a file only ever appended to) while later ones reached the disk.
    for (const [what, lostFrom, lostTo] of [
      ['a page inside the batch', 4096, 8192],
      ['the page holding the batch\'s first header (from the batch on; what precedes it was synced)', batchEnd(2), 4096]
    ] as const) {
      it(`a valid batch after a batch that lost ${what} at a power loss opens: both are cut off`, async () => {
        await withDirectories(async (context) => {
          const { location, path, seed } = await prepared(context, 3, false, legacy)
          const start = batchEnd(2)
          const lost = encodeBatch([3, 4, 5].map((index) => ({ index, data: bytesOf(3000, index) })), seed)
          assert.ok(start + lost.byteLength > 8192 + 1000, 'written bytes follow the lost page')
          lost.fill(0, lostFrom - start, lostTo - start)
          await appendFile(path, lost)
          await appendFile(path, encodeBatch([{ index: 7, data: bytesOf(VALUE_BYTES, 7) }], seed))
          const store = context.make(location)
          await store.open()
          await assertBlocks(store, 3, 8, 'after recovery')
          assert.equal((await stat(path)).size, start, 'cut at the end of the last whole batch')
        })
      })
    }

    it('a last mark that fails its checks (no clean close) is cut off, not taken for a record of a newer format', async () => {
      await withDirectories(async (context) => {
        const { location, path, seed } = await prepared(context, 3, false, legacy)
        const bytes = await readFile(path)
        assert.equal(bytes.toString('latin1', markAt(2), markAt(2) + 4), markMagic(seed), 'the file ends with a mark')
        await writeFile(path, flipByte(bytes, markAt(2) + 5, 0x10))
        const store = context.make(location)
        await store.open()
        await assertBlocks(store, 3, 3, 'after recovery')
        assert.equal((await stat(path)).size, markAt(2))
      })
    })

    it('a mark across a page boundary whose second page was lost (power loss) is a torn write, not a newer format: cut off', async () => {
      await withDirectories(async (context) => {
        const original = await context.directory()
        const store = context.make(original)
        await store.open()
        // Batch 0 ends 6 bytes before the page boundary, so batch 1's mark has its magic in page 0
        // and its type byte (offset 8) in page 1.
        await store.batch([put(addr(1, 0), bytesOf(4090 - HEADER_BYTES, 0))], { sync: true })
        await store.batch([put(addr(1, 1), bytesOf(5000, 1))])
        await store.batch([put(addr(1, 2), bytesOf(3000, 2))])
        const location = await context.directory()
        await crashCopy(original, location)
        const { path, seed } = await activeSegment(location, legacy)
        const bytes = await readFile(path)
        assert.equal(bytes.toString('latin1', 4090, 4094), markMagic(seed), 'batch 1 starts with a mark at 4090')
        assert.ok(bytes.byteLength > 8192 + 1000, 'written bytes follow the lost page')
        // Page 1 was written back after the last sync: lost, while page 0 and later pages reached the disk.
        await writeFile(path, bytes.fill(0, 4096, 8192))
        const reopened = context.make(location)
        await reopened.open()
        assertBytes(await reopened.get(addr(1, 0)), bytesOf(4090 - HEADER_BYTES, 0), 'the synced batch')
        for (const index of [1, 2]) assert.equal(await reopened.get(addr(1, index)), undefined, `block ${index}`)
        assert.equal((await stat(path)).size, 4090, 'cut at the end of the synced batch')
      })
    })

    it('log records stored inside the payload of the damaged record are not taken for later batches', async () => {
      // A volume can hold a copy of a store, so a block's bytes may be valid log records: here
      // records valid in this very segment (a copy of its own log passes any check).
      for (const what of ['torn after the inner records', 'whole with a damaged last byte', 'whole with a damaged last byte, then zeros'] as const) {
        await withDirectories(async (context) => {
          const { location, path, seed } = await prepared(context, 3, false, legacy)
          const inner = Buffer.concat([encodeBatch([{ index: 20, data: bytesOf(300, 20) }, { index: 21, data: bytesOf(300, 21) }], seed), encodeBatch([{ index: 22, data: bytesOf(300, 22) }], seed)])
          const payload = Buffer.concat([Buffer.from(bytesOf(100, 1)), inner, Buffer.from(bytesOf(400, 2))])
          const outer = encodeBatch([{ index: 3, data: payload }], seed)
          const tail = what === 'torn after the inner records'
            ? outer.subarray(0, HEADER_BYTES + 100 + inner.byteLength + 50)
            : Buffer.concat([flipByte(Buffer.from(outer), outer.byteLength - 1, 0x01), Buffer.alloc(what.endsWith('zeros') ? 300 : 0)])
          await appendFile(path, tail)
          const store = context.make(location)
          await store.open()
          await assertBlocks(store, 3, 4, what)
          for (const index of [20, 21, 22]) assert.equal(await store.get(addr(1, index)), undefined, `${what}: inner block ${index}`)
          assert.equal((await stat(path)).size, batchEnd(2), `${what}: the torn record is cut off`)
        })
      }
    })
  })

  describe('mark records: damage below what a mark states was synced is corruption', () => {
    // Zeros in the block data between the damage and a later batch could pass for a page a power
    // loss dropped; a later mark stating that the damaged batch had been synced rules that out.
    const ZERO_BYTES = 2048
    const zeroRecordAt = (i: number): number => i * (HEADER_BYTES + ZERO_BYTES + HEADER_BYTES)

    it('a flipped byte in a synced batch of zeros, with later batches, fails open with CORRUPTION naming the mark (no clean close)', async () => {
      await withDirectories(async (context) => {
        const original = await context.directory()
        const store = context.make(original)
        await store.open()
        for (let i = 0; i < 4; i++) await store.batch([put(addr(1, i), new Uint8Array(ZERO_BYTES))], { sync: true })
        const location = await context.directory()
        await crashCopy(original, location)
        const { path } = await activeSegment(location, legacy)
        const bytes = flipByte(await readFile(path), zeroRecordAt(1) + HEADER_BYTES + 100, 0x04)
        await writeFile(path, bytes)
        const error = await rejectsWithCode(context.make(location).open(), 'CORRUPTION', 'open over the damage')
        assert.match(error.message, /a mark record states had been synced/)
        assert.ok(error.message.includes(`offset ${zeroRecordAt(1)}`), error.message)
        assert.ok((await readFile(path)).equals(bytes), 'nothing truncated')
      })
    })

    it('durable batches synced together are stated by the mark written after their sync, before any later write: a flipped byte in one is CORRUPTION', async () => {
      await withDirectories(async (context) => {
        const original = await context.directory()
        const store = context.make(original)
        await store.open()
        // Called together: one group, one sync, then one mark (no later batch comes to carry it).
        await Promise.all([0, 1, 2, 3].map(async (i) => { await store.batch([put(addr(1, i), new Uint8Array(ZERO_BYTES))], { sync: true }) }))
        const location = await context.directory()
        await crashCopy(original, location)
        const { path, seed } = await activeSegment(location, legacy)
        const recordBytes = HEADER_BYTES + ZERO_BYTES
        const bytes = await readFile(path)
        assert.equal(bytes.byteLength, 4 * recordBytes + HEADER_BYTES, 'four records and one mark')
        assert.equal(bytes.toString('latin1', 4 * recordBytes, 4 * recordBytes + 4), markMagic(seed))
        await writeFile(path, flipByte(bytes, recordBytes + HEADER_BYTES + 100, 0x04))
        const error = await rejectsWithCode(context.make(location).open(), 'CORRUPTION', 'open over the damage')
        assert.ok(error.message.includes(`below offset ${4 * recordBytes}, which a mark record states had been synced`), error.message)
      })
    })

    it('durable batches that leave less room in the segment than a mark takes are stated by a mark all the same: a flipped byte in one is CORRUPTION', async () => {
      await withDirectories(async (context) => {
        const recordBytes = HEADER_BYTES + ZERO_BYTES
        // Full after the four records: the mark goes past segmentBytes rather than not at all (the
        // segment is sealed, and synced, only when a later batch comes).
        const options = { compactionThreshold: 0, segmentBytes: 4 * recordBytes + HEADER_BYTES - 16 }
        const original = await context.directory()
        const store = new FileBlockStore({ location: original, ...options })
        try {
          await store.open()
          await Promise.all([0, 1, 2, 3].map(async (i) => { await store.batch([put(addr(1, i), new Uint8Array(ZERO_BYTES))], { sync: true }) }))
          const location = await context.directory()
          await crashCopy(original, location)
          const { path } = await activeSegment(location, legacy)
          const bytes = await readFile(path)
          assert.equal(bytes.byteLength, 4 * recordBytes + HEADER_BYTES, 'four records and one mark')
          await writeFile(path, flipByte(bytes, recordBytes + HEADER_BYTES + 100, 0x04))
          const recovered = new FileBlockStore({ location, ...options })
          const error = await rejectsWithCode(recovered.open(), 'CORRUPTION', 'open over the damage')
          assert.ok(error.message.includes(`below offset ${4 * recordBytes}, which a mark record states had been synced`), error.message)
        } finally {
          await store.close()
        }
      })
    })

    it('the same damage in batches never synced (no marks) cannot be told from a lost page and is cut off', async () => {
      await withDirectories(async (context) => {
        const original = await context.directory()
        const store = context.make(original)
        await store.open()
        for (let i = 0; i < 4; i++) await store.batch([put(addr(1, i), new Uint8Array(ZERO_BYTES))])
        const location = await context.directory()
        await crashCopy(original, location)
        const { path } = await activeSegment(location, legacy)
        const recordBytes = HEADER_BYTES + ZERO_BYTES
        assert.equal((await stat(path)).size, 4 * recordBytes, 'no marks: nothing was synced')
        await writeFile(path, flipByte(await readFile(path), recordBytes + HEADER_BYTES + 100, 0x04))
        const reopened = context.make(location)
        await reopened.open()
        assertBytes(await reopened.get(addr(1, 0)), new Uint8Array(ZERO_BYTES), 'block 0')
        for (let i = 1; i < 4; i++) assert.equal(await reopened.get(addr(1, i)), undefined, `block ${i}`)
        assert.equal((await stat(path)).size, recordBytes)
      })
    })

    it('a mark inside the payload of the damaged record (a volume may hold a copy of a store) states nothing', async () => {
      await withDirectories(async (context) => {
        const { location, path, seed } = await prepared(context, 3, false, legacy)
        const inner = Buffer.alloc(2 * HEADER_BYTES + 300)
        // A mark claiming far more than the segment holds, in a batch of its own, made by another
        // store (in a salted segment, under another salt).
        const otherSeed = seed === undefined ? undefined : (seed % 0xfffffe) + 1
        let position = encodeRecord(inner, 0, TYPE_MARK, FLAG_CONTINUES, 0, 1_000_000_000, 0, undefined, otherSeed)
        position = encodeRecord(inner, position, TYPE_PUT, 0, 1, 20, 0, bytesOf(300, 20), otherSeed)
        assert.equal(position, inner.byteLength)
        const outer = encodeBatch([{ index: 3, data: Buffer.concat([Buffer.from(bytesOf(5000, 1)), inner, Buffer.from(bytesOf(100, 2))]) }], seed)
        flipByte(outer, outer.byteLength - 1, 0x01)
        await appendFile(path, Buffer.concat([outer, Buffer.alloc(300)]))
        const store = context.make(location)
        await store.open()
        await assertBlocks(store, 3, 4, 'after recovery')
        assert.equal(await store.get(addr(1, 20)), undefined, 'the inner block')
        assert.equal((await stat(path)).size, batchEnd(2), 'the torn record is cut off')
      })
    })

    // A block may hold a copy of another store's log, marks and all. When the power loss that damaged
    // the record holding it dropped the record's header, nothing says where that copy ends, so its
    // marks sit where marks of this segment could: they must not pass for this segment's.
    it('marks in a copy of another store\'s log, in a record whose header a power loss dropped, do not pass for this segment\'s', async () => {
      await withDirectories(async (context) => {
        const { location, path, seed } = await prepared(context, 3, false, legacy)
        const other = await context.directory()
        const otherStore = context.make(other)
        await otherStore.open()
        await writeBatches(otherStore, 5) // its marks state up to markAt(4), past where this segment's damage will be
        await otherStore.close()
        const otherPath = await segmentFile(other)
        const copies = legacy
          ? [await readFile(await unsaltSegment(otherPath))]
          : [await readFile(otherPath), await readFile(await unsaltSegment(otherPath))]
        const damagedAt = batchEnd(2)
        assert.ok(markAt(4) > damagedAt)
        // The copies start past the page holding the record's header (lost: zeros from the damage to
        // the page's end, what an appended file shows when a page written after the last sync is lost).
        const filler = Buffer.from(bytesOf(4096 - damagedAt - HEADER_BYTES + 200, 1))
        const outer = encodeBatch([{ index: 3, data: Buffer.concat([filler, ...copies, Buffer.from(bytesOf(200, 2))]) }], seed)
        outer.fill(0, 0, 4096 - damagedAt)
        await appendFile(path, outer)
        const bytes = await readFile(path)
        if (legacy) {
          // Unsalted segments (from before salts) cannot tell: open refuses, loses nothing, and the
          // advised truncation opens it (a documented limit of such segments).
          const error = await rejectsWithCode(context.make(location).open(), 'CORRUPTION', 'open')
          assert.ok(error.message.includes(`truncate it to ${damagedAt} bytes`), error.message)
          assert.ok((await readFile(path)).equals(bytes), 'nothing truncated')
          await truncate(path, damagedAt)
        }
        const store = context.make(location)
        await store.open()
        await assertBlocks(store, 3, 4, 'after recovery')
        assert.equal((await stat(path)).size, damagedAt, 'the torn record is cut off')
      })
    })
  })

  })

  describe('mark records: how the writer makes them', () => {
    it('a durable batch resolves with the mark after its sync already written (nothing else queued), so a kill right after cannot lose it', async () => {
      await withDirectories(async (context) => {
        const location = await context.directory()
        const store = context.make(location)
        await store.open()
        const path = await segmentFile(location)
        for (let i = 0; i < 3; i++) {
          await store.batch([put(addr(1, i), bytesOf(VALUE_BYTES, i))], { sync: true })
          // Looked at synchronously: the writer gets no turn between the resolve and this.
          assert.equal(statSync(path).size, batchEnd(i), `batch ${i} and the mark after its sync`)
        }
      })
    })

    it('syncs with nothing new written add no marks: the log does not grow', async () => {
      await withDirectories(async (context) => {
        const location = await context.directory()
        const store = context.make(location)
        await store.open()
        await store.batch([put(addr(1, 0), bytesOf(VALUE_BYTES, 0))], { sync: true })
        const path = await segmentFile(location)
        assert.equal((await stat(path)).size, RECORD_BYTES + HEADER_BYTES, 'the batch and the mark after its sync')
        const syncs = store.syncCount
        for (let i = 0; i < 5; i++) await store.sync()
        assert.equal((await stat(path)).size, RECORD_BYTES + HEADER_BYTES, 'no more marks')
        assert.ok(store.syncCount - syncs <= 1, `five syncs with nothing new took ${store.syncCount - syncs} device syncs (at most the mark's own)`)
      })
    })

  })

  describe('an unsalted active segment (from a release before salts)', () => {
    it('takes no more records: the first write after open goes to a new, salted segment, and the old one stays readable as a sealed one', async () => {
      await withDirectories(async (context) => {
        const { location, path } = await prepared(context, 3, true, true)
        const store = context.make(location)
        await store.open()
        await store.batch([put(addr(1, 3), bytesOf(VALUE_BYTES, 3))], { sync: true })
        assert.equal((await stat(path)).size, batchEnd(2), 'nothing appended to the unsalted segment')
        const next = await segmentFile(location, 2)
        assert.match(next, /seg-0{15}2-[0-9a-f]{8}\.log$/, 'segment 2 is salted')
        await store.batch([put(addr(1, 4), bytesOf(VALUE_BYTES, 4))])
        await store.close()
        const reopened = context.make(location)
        await reopened.open()
        await assertBlocks(reopened, 5, 6, 'after reopen')
        // Sealed now (opened from its hint): damage in it is reported when read, not cut off at open.
        await reopened.close()
        await writeFile(path, flipByte(await readFile(path), recordAt(2) + HEADER_BYTES + 7, 0x20))
        const damaged = context.make(location)
        await damaged.open()
        assert.equal((await stat(path)).size, batchEnd(2), 'nothing cut off')
        await rejectsWithCode(damaged.get(addr(1, 2)), 'CHECKSUM_MISMATCH', 'a read of the damaged block')
        assertBytes(await damaged.get(addr(1, 4)), bytesOf(VALUE_BYTES, 4), 'the salted segment\'s block')
      })
    })

    it('an empty one (a store an earlier release made and never wrote, or a roll a crash cut short) takes none either: the first write goes to a salted segment, and the empty file goes', async () => {
      await withDirectories(async (context) => {
        const location = await context.directory()
        await writeFile(join(location, 'seg-0000000000000001.log'), Buffer.alloc(0))
        const store = context.make(location)
        await store.open()
        await store.batch([put(addr(1, 0), bytesOf(VALUE_BYTES, 0))], { sync: true })
        await store.batch([put(addr(1, 1), bytesOf(VALUE_BYTES, 1))])
        await store.close()
        const files = await segmentFiles(location)
        assert.deepEqual(files.map((file) => file.salt === undefined), [false], `one salted segment, no unsalted one: ${files.map((file) => file.path).join(', ')}`)
        const reopened = context.make(location)
        await reopened.open()
        await assertBlocks(reopened, 2, 3, 'after reopen')
      })
    })
  })

  describe('the clean-shutdown marker', () => {
    it('exists only while the store is closed; after a reopen, more writes and a kill -9, a torn tail is recovered', async () => {
      await withDirectories(async (context) => {
        const location = await context.directory()
        let store = context.make(location)
        await store.open()
        const path = await segmentFile(location)
        assert.equal(await exists(join(location, MARKER)), false, 'no marker in a fresh store')
        await writeBatches(store, 2)
        await store.close()
        assert.ok(await exists(join(location, MARKER)), 'the marker after close')
        store = context.make(location)
        await store.open()
        assert.equal(await exists(join(location, MARKER)), false, 'removed by open')
        await store.close()

        // A child reopens the store, appends two more synced batches and is killed.
        const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', `
          const { FileBlockStore } = await import(${JSON.stringify(FILE_STORE_MODULE)})
          const store = new FileBlockStore({ location: process.argv[1], compactionThreshold: 0 })
          await store.open()
          for (const index of [2, 3]) {
            await store.batch([{ type: 'put', address: { volume: 1, index, gen: 0 }, data: new Uint8Array(${VALUE_BYTES}).fill(index + 1) }], { sync: true })
          }
          process.stdout.write('ready\\n')
          setInterval(() => {}, 1000)
        `, location], { stdio: ['ignore', 'pipe', 'pipe'] })
        const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
        try {
          await new Promise<void>((resolve, reject) => {
            let output = ''
            let errors = ''
            const timer = setTimeout(() => reject(new Error(`the child did not get ready: ${errors}`)), 30_000)
            child.stderr.on('data', (chunk: Buffer) => { errors += chunk.toString() })
            child.stdout.on('data', (chunk: Buffer) => {
              output += chunk.toString()
              if (output.includes('ready\n')) { clearTimeout(timer); resolve() }
            })
            child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`the child exited with ${code}: ${errors}`)) })
          })
        } finally {
          child.kill('SIGKILL')
          await exited
        }
        assert.equal(await exists(join(location, MARKER)), false, 'no marker after a kill')
        // Every batch after the first follows a sync (the child's open syncs what it finds).
        assert.equal((await stat(path)).size, batchEnd(3))
        // The child's last batch torn, as if the kill had come during its write.
        await truncate(path, recordAt(3) + 100)
        store = context.make(location)
        await store.open()
        await assertBlocks(store, 2, 2, 'blocks from before the first close')
        assertBytes(await store.get(addr(1, 2)), new Uint8Array(VALUE_BYTES).fill(3), 'the child\'s first batch')
        assert.equal(await store.get(addr(1, 3)), undefined, 'the child\'s torn batch')
        assert.equal((await stat(path)).size, batchEnd(2))
      })
    })

    it('a marker that does not match the segment, or is damaged, or half-written, is ignored and removed', async () => {
      await withDirectories(async (context) => {
        const { location, path } = await prepared(context, 3, true, false)
        const marker = await readFile(join(location, MARKER))
        for (const [what, prepare, markerBytes] of [
          // The marker recorded 3 batches; cut to 2 (as the CORRUPTION message advises) it vouches for nothing.
          ['a segment cut since the close', async () => { await truncate(path, batchEnd(1)) }, marker],
          ['a damaged marker', async () => { await appendFile(path, Buffer.from(bytesOf(100, 1))) }, flipByte(Buffer.from(marker), 20, 0x01)],
          ['a truncated marker', async () => { await appendFile(path, Buffer.from(bytesOf(100, 2))) }, marker.subarray(0, 10)]
        ] as const) {
          await prepare()
          await writeFile(join(location, MARKER), markerBytes)
          await writeFile(join(location, `${MARKER}.tmp`), marker)
          const store = context.make(location)
          await store.open()
          assert.deepEqual((await readdir(location)).filter((name) => name.startsWith(MARKER)), [], `${what}: marker files removed`)
          await assertBlocks(store, 2, 3, what)
          await store.close()
          assert.ok(await exists(join(location, MARKER)), `${what}: a new marker after close`)
        }
      })
    })

    it('open and close cycles, with and without writes, keep every batch and leave one valid marker', async () => {
      await withDirectories(async (context) => {
        const location = await context.directory()
        for (let round = 0; round < 4; round++) {
          const store = context.make(location)
          await store.open()
          await assertBlocks(store, round, round + 1, `round ${round}`)
          if (round % 2 === 0) {
            await store.batch([put(addr(1, round), bytesOf(VALUE_BYTES, round))]) // not synced: close must sync it
            await store.close()
          } else {
            await store.close()
            const again = context.make(location)
            await again.open()
            await again.batch([put(addr(1, round), bytesOf(VALUE_BYTES, round))], { sync: true })
            await again.close()
          }
          // Round 0 is not synced but at close (which writes no mark). Round 1: the first batch
          // after the open that synced it states so (a mark at its start), and its own sync is
          // followed by a mark. Round 2: the segment ends with a mark stating all before it, so the
          // unsynced batch needs none. Round 3: as round 1.
          const expected = [RECORD_BYTES, 2 * RECORD_BYTES + 2 * HEADER_BYTES, 3 * RECORD_BYTES + 2 * HEADER_BYTES, 4 * RECORD_BYTES + 4 * HEADER_BYTES][round]
          assert.equal((await stat(await segmentFile(location))).size, expected)
        }
        // After the last clean close, damage to the first batch is reported, not cut off.
        const path = await segmentFile(location)
        await writeFile(path, flipByte(await readFile(path), HEADER_BYTES, 0x01))
        await rejectsWithCode(context.make(location).open(), 'CORRUPTION', 'open after the cycles')
      })
    })
  })
})
