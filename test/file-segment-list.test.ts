// Tests of the file block store's segment list (backends/file/segment-list.ts): open refuses with
// CORRUPTION when a segment file the list names is gone (in the middle, the newest sealed one, the
// active one), with nothing changed; what a crash leaves between a file and the list (a roll or a
// compaction cut short) opens with every block; a store of an earlier release starts its list; an
// earlier release that wrote to the store since does not make it refuse or lose anything.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { copyFile, mkdtemp, readFile, readdir, rename, rm, unlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { FileBlockStore, type FileBlockStoreOptions } from '../backends/file/index.js'
import { SEGMENT_LIST_NAME, readSegmentList } from '../backends/file/segment-list.js'
import { newSegmentSalt, segmentFileName } from '../backends/file/segment.js'
import { segmentFiles } from './support/file-segments.js'
import { GalleonError } from '../src/errors.js'
import { addr, assertBytes, bytesOf, put } from './conformance/fixtures.js'

const VALUE_BYTES = 1000
/** About 15 records a segment: 48 blocks written once each fill four segments, each holding the only version of its blocks. */
const OPTIONS: Omit<FileBlockStoreOptions, 'location'> = { segmentBytes: 16 * 1024, compactionThreshold: 0, spareSegments: 0 }
const BLOCKS = 48

async function withDirectory (body: (location: string) => Promise<void>): Promise<void> {
  const location = await mkdtemp(join(tmpdir(), 'galleonfs-segment-list-'))
  try {
    await body(location)
  } finally {
    await rm(location, { recursive: true, force: true })
  }
}

/** Opens a store at `location`, runs `body`, closes it. */
async function withStore<T> (location: string, body: (store: FileBlockStore) => Promise<T>, options = OPTIONS): Promise<T> {
  const store = new FileBlockStore({ location, ...options })
  await store.open()
  try {
    return await body(store)
  } finally {
    await store.close()
  }
}

/** Writes blocks 0..BLOCKS-1 once each (durably, one batch each), and closes: segment ids 1..4. */
async function fill (location: string): Promise<void> {
  await withStore(location, async (store) => {
    for (let i = 0; i < BLOCKS; i++) await store.batch([put(addr(1, i), bytesOf(VALUE_BYTES, i))], { sync: true })
  })
}

/** The blocks each segment file holds (by a scan of the index: which segment each block's record is in). */
async function blocksBySegment (location: string): Promise<Map<number, number[]>> {
  const bySegment = new Map<number, number[]>()
  const files = await segmentFiles(location)
  for (const { id, path } of files) {
    const bytes = await readFile(path)
    for (let i = 0; i < BLOCKS; i++) {
      if (bytes.includes(Buffer.from(bytesOf(VALUE_BYTES, i)))) bySegment.set(id, [...(bySegment.get(id) ?? []), i])
    }
  }
  return bySegment
}

async function listedNames (location: string): Promise<string[]> {
  const list = await readSegmentList(location)
  assert.equal(list.kind, 'listed', `${location}/${SEGMENT_LIST_NAME}: ${JSON.stringify(list)}`)
  return list.kind === 'listed' ? list.names : []
}

async function segmentNames (location: string): Promise<string[]> {
  return (await segmentFiles(location)).map(({ path }) => basename(path))
}

async function openRejects (location: string, what: string): Promise<GalleonError> {
  const store = new FileBlockStore({ location, ...OPTIONS })
  let caught: unknown
  try {
    await store.open()
  } catch (err) {
    caught = err
  }
  if (caught === undefined) {
    const stale = []
    for (let i = 0; i < BLOCKS; i++) if (await store.get(addr(1, i)) === undefined) stale.push(i)
    await store.close()
    assert.fail(`${what}: open succeeded; blocks reading as never written: ${stale.join(',')}`)
  }
  assert.ok(caught instanceof GalleonError, `${what}: expected a GalleonError, got ${String(caught)}`)
  assert.equal(caught.code, 'CORRUPTION', `${what}: ${caught.message}`)
  return caught
}

async function assertAllBlocks (location: string): Promise<void> {
  await withStore(location, async (store) => {
    for (let i = 0; i < BLOCKS; i++) assertBytes(await store.get(addr(1, i)), bytesOf(VALUE_BYTES, i), `block ${i}`)
  })
}

describe('file store segment list: a missing segment file', () => {
  for (const which of ['a segment in the middle', 'the newest sealed segment', 'the active segment'] as const) {
    it(`is reported when it is ${which}: CORRUPTION naming the file, nothing changed; writing rebuild into the list opens anyway`, async () => {
      await withDirectory(async (location) => {
        await fill(location)
        const files = await segmentFiles(location)
        assert.ok(files.length >= 4, `the blocks filled ${files.length} segments`)
        const victim = files[which === 'a segment in the middle' ? 1 : which === 'the newest sealed segment' ? files.length - 2 : files.length - 1]!
        const held = (await blocksBySegment(location)).get(victim.id) ?? []
        assert.ok(held.length > 0, `segment ${victim.id} holds the only version of some blocks`)
        await unlink(victim.path)
        const before = (await readdir(location)).sort()
        const err = await openRejects(location, `open without ${basename(victim.path)}`)
        assert.ok(err.message.includes(basename(victim.path)), `the message names the file: ${err.message}`)
        assert.match(err.message, /restore the volumes from a backup/)
        assert.ok(err.message.includes(`echo rebuild > ${join(location, SEGMENT_LIST_NAME)}`), `the message says how to open anyway: ${err.message}`)
        assert.deepEqual((await readdir(location)).sort(), before, 'a refused open changes no file')
        // Opening anyway, as the message says: the blocks of the missing file are gone, the others read.
        await writeFile(join(location, SEGMENT_LIST_NAME), 'rebuild\n')
        await withStore(location, async (store) => {
          for (let i = 0; i < BLOCKS; i++) {
            if (held.includes(i)) assert.equal(await store.get(addr(1, i)), undefined, `block ${i} was in the missing file`)
            else assertBytes(await store.get(addr(1, i)), bytesOf(VALUE_BYTES, i), `block ${i}`)
          }
        })
        assert.deepEqual(await listedNames(location), await segmentNames(location), 'a new list names the files present')
      })
    })
  }

  it('a damaged list is CORRUPTION too (open cannot tell), and writing rebuild into it opens the store (as removing it does, for a store used without GalleonFS metadata)', async () => {
    await withDirectory(async (location) => {
      await fill(location)
      const listPath = join(location, SEGMENT_LIST_NAME)
      const text = await readFile(listPath, 'latin1')
      await writeFile(listPath, text.replace('seg-', 'seh-'), 'latin1')
      const err = await openRejects(location, 'open with a damaged list')
      assert.match(err.message, /segment list .* is damaged \(its checksum does not match\)/)
      assert.ok(err.message.includes(`echo rebuild > ${listPath}`), err.message)
      await writeFile(listPath, 'rebuild\n')
      await assertAllBlocks(location)
      await writeFile(listPath, text.replace('seg-', 'seh-'), 'latin1')
      await unlink(listPath)
      await assertAllBlocks(location)
    })
  })
})

describe('file store segment list: what a crash leaves', () => {
  it('a roll cut short (a new file, empty or an old one reused, not listed yet) is removed and every block reads', async () => {
    await withDirectory(async (location) => {
      await fill(location)
      const files = await segmentFiles(location)
      const newest = files[files.length - 1]!
      // An empty new file, as the roll creates it; and a segment file renamed to the next id with a
      // new salt, as a spare made into a segment is (its records are under the old salt).
      const empty = join(location, segmentFileName(newest.id + 1, newSegmentSalt(false)))
      await writeFile(empty, '')
      await withStore(location, async () => {})
      assert.ok(!(await segmentNames(location)).includes(basename(empty)), 'the empty unlisted file is removed')
      const reused = join(location, segmentFileName(newest.id + 1, newSegmentSalt(true)))
      await copyFile(files[0]!.path, reused)
      await assertAllBlocks(location)
      assert.ok(!(await segmentNames(location)).includes(basename(reused)), 'the reused unlisted file is removed')
      assert.deepEqual(await listedNames(location), await segmentNames(location))
    })
  })

  it('a compaction cut short (a compacted segment unlisted but not deleted) is removed, and nothing it held comes back', async () => {
    await withDirectory(async (location) => {
      await fill(location)
      const first = (await segmentFiles(location))[0]!
      const aside = join(location, '..', `${basename(location)}-aside`)
      await copyFile(first.path, aside)
      try {
        // Overwrite and delete segment 1's blocks, compact it away, then put its file back.
        const held = (await blocksBySegment(location)).get(first.id) ?? []
        await withStore(location, async (store) => {
          for (const i of held) await store.batch(i % 2 === 0 ? [put(addr(1, i), bytesOf(VALUE_BYTES, 1000 + i))] : [{ type: 'del', address: addr(1, i) }], { sync: true })
          await store.compact()
        })
        assert.ok(!(await segmentNames(location)).includes(basename(first.path)), 'compaction deleted segment 1')
        await rename(aside, first.path)
        await withStore(location, async (store) => {
          for (let i = 0; i < BLOCKS; i++) {
            const value = await store.get(addr(1, i))
            if (!held.includes(i)) assertBytes(value, bytesOf(VALUE_BYTES, i), `block ${i}`)
            else if (i % 2 === 0) assertBytes(value, bytesOf(VALUE_BYTES, 1000 + i), `block ${i} (overwritten)`)
            else assert.equal(value, undefined, `block ${i} (deleted)`)
          }
        }, { ...OPTIONS, compactionThreshold: 0.5 })
        assert.ok(!(await segmentNames(location)).includes(basename(first.path)), 'the unlisted file is removed')
        assert.deepEqual(await listedNames(location), await segmentNames(location))
      } finally {
        await rm(aside, { force: true })
      }
    })
  })

  it('an earlier release that wrote (rolled, compacted) since leaves the list out of date: open trusts the files and writes it anew', async () => {
    await withDirectory(async (location) => {
      await fill(location)
      const listPath = join(location, SEGMENT_LIST_NAME)
      const old = await readFile(listPath)
      await withStore(location, async (store) => {
        for (let i = 0; i < BLOCKS; i++) await store.batch([put(addr(1, i), bytesOf(VALUE_BYTES, 2000 + i))], { sync: true })
        await store.compact()
      })
      // What a release that keeps no list leaves: the list of before its session.
      await writeFile(listPath, old)
      await withStore(location, async (store) => {
        for (let i = 0; i < BLOCKS; i++) assertBytes(await store.get(addr(1, i)), bytesOf(VALUE_BYTES, 2000 + i), `block ${i}`)
      })
      assert.deepEqual(await listedNames(location), await segmentNames(location))
    })
  })
})

describe('file store segment list: stores of earlier releases', () => {
  const fixturesDir = join(fileURLToPath(new URL('.', import.meta.url)), 'fixtures')
  for (const revision of ['45cc743', '4e601f2']) {
    it(`a store of release ${revision} opens, starts its list, and then reports a segment file that goes missing`, async () => {
      await withDirectory(async (root) => {
        await promisify(execFile)('tar', ['-xzf', join(fixturesDir, `storage-${revision}-file.tar.gz`), '-C', root])
        const location = join(root, `storage-${revision}-file`, 'storage', 'blocks')
        assert.deepEqual((await readdir(location)).filter((name) => name.startsWith('SEGMENTS')), [], 'the fixture has no list')
        const stored = await withStore(location, async (store) => (await store.stats()).blocks, { segmentBytes: 16 * 1024 })
        assert.ok(stored > 0, 'the fixture holds blocks')
        assert.deepEqual(await listedNames(location), await segmentNames(location), 'the first open lists the segment files')
        // A write starts a new (salted) segment: listed too.
        await withStore(location, async (store) => { await store.batch([put(addr(99, 0), bytesOf(100, 1))], { sync: true }) }, { segmentBytes: 16 * 1024 })
        const names = await segmentNames(location)
        assert.ok(names.length >= 2, `segments after a write: ${names.join(', ')}`)
        assert.deepEqual(await listedNames(location), names)
        await unlink(join(location, names[0]!))
        const err = await openRejects(location, `open of the ${revision} store without ${names[0]!}`)
        assert.ok(err.message.includes(names[0]!), err.message)
      })
    })
  }
})
