// Review r65: the file store's segment list under faults: the list write failing (EIO at each step)
// in a roll and in compaction, a full disk, close() with rolls queued, a store of every earlier
// release in test/fixtures. Each case opens again and checks the blocks and that the list names
// exactly the segment files. (All passed on dff6a77..7eddf3d: the review found no defect here.)

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { FileBlockStore, type FileBlockStoreOptions } from '../backends/file/index.js'
import { readSegmentList } from '../backends/file/segment-list.js'
import { segmentFiles } from './support/file-segments.js'
import { useFaultyFs, type FaultSpec } from './support/h60-faulty-fs.js'
import { fill as fillDisk, tmpfs, unfill, unmountAll } from './support/tmpfs.js'
import { addr, assertBytes, bytesOf, put } from './conformance/fixtures.js'

const VALUE_BYTES = 1000
const OPTIONS: Omit<FileBlockStoreOptions, 'location'> = { segmentBytes: 16 * 1024, compactionThreshold: 0, spareSegments: 0 }

async function listedMatchesFiles (location: string, what: string): Promise<void> {
  const list = await readSegmentList(location)
  assert.equal(list.kind, 'listed', `${what}: ${JSON.stringify(list)}`)
  const names = (await segmentFiles(location)).map(({ path }) => basename(path))
  assert.deepEqual(list.kind === 'listed' ? list.names : [], names, `${what}: the list names the segment files`)
}

/** Opens, checks that block i of volume 1 holds `expected(i)` for i < count, closes. */
async function checkBlocks (location: string, count: number, expected: (i: number) => number | undefined, options = OPTIONS): Promise<void> {
  const store = new FileBlockStore({ location, ...options })
  await store.open()
  try {
    for (let i = 0; i < count; i++) {
      const seed = expected(i)
      const value = await store.get(addr(1, i))
      if (seed === undefined) assert.equal(value, undefined, `block ${i}`)
      else assertBytes(value, bytesOf(VALUE_BYTES, seed), `block ${i}`)
    }
  } finally {
    await store.close()
  }
}

describe('review r65: the segment list write fails', () => {
  const { unavailable, faultyFs } = useFaultyFs('galleonfs-r65-')
  let n = 0
  const newLocation = async (): Promise<{ location: string, backing: string }> => {
    const name = `s${n++}`
    await mkdir(join(faultyFs().mountPoint, name))
    return { location: join(faultyFs().mountPoint, name), backing: join(faultyFs().backing, name) }
  }

  const listFaults: Array<{ step: string, fault: FaultSpec }> = [
    { step: 'creating SEGMENTS.tmp', fault: { op: 'create', path: '/SEGMENTS\\.tmp$', count: 1 } },
    { step: 'writing SEGMENTS.tmp', fault: { op: 'write', path: '/SEGMENTS\\.tmp$', count: 1 } },
    { step: 'syncing SEGMENTS.tmp', fault: { op: 'fsync', path: '/SEGMENTS\\.tmp$', count: 1 } },
    { step: 'renaming SEGMENTS.tmp', fault: { op: 'rename', path: '/SEGMENTS$', count: 1 } },
    { step: 'syncing the directory after the rename', fault: { op: 'fsyncdir', path: '/s[0-9]+$', count: 1 } }
  ]

  for (const { step, fault } of listFaults) {
    it(`in a roll (${step}): the store stops, and reopens with every acknowledged block and a list naming the files`, { skip: unavailable }, async () => {
      const { location } = await newLocation()
      const store = new FileBlockStore({ location, ...OPTIONS })
      await store.open()
      let acknowledged = 0
      try {
        for (let i = 0; i < 10; i++) { await store.batch([put(addr(1, i), bytesOf(VALUE_BYTES, i))], { sync: true }); acknowledged++ }
        await faultyFs().inject(fault)
        let failed: unknown
        for (let i = 10; i < 40 && failed === undefined; i++) {
          try {
            await store.batch([put(addr(1, i), bytesOf(VALUE_BYTES, i))], { sync: true })
            acknowledged++
          } catch (err) { failed = err }
        }
        assert.ok(failed !== undefined, 'the fault stopped a roll')
      } finally {
        await store.close().catch(() => {})
        await faultyFs().clear()
      }
      await checkBlocks(location, acknowledged, (i) => i)
      await listedMatchesFiles(location, 'after reopening')
    })

    it(`in compaction (${step}): the store goes on, and reopens with every block and a list naming the files`, { skip: unavailable }, async () => {
      const { location } = await newLocation()
      const store = new FileBlockStore({ location, ...OPTIONS })
      await store.open()
      try {
        for (let i = 0; i < 48; i++) await store.batch([put(addr(1, i), bytesOf(VALUE_BYTES, i))], { sync: true })
        // Overwrite the first 30 blocks so that the first segments are worth compacting.
        for (let i = 0; i < 30; i++) await store.batch([put(addr(1, i), bytesOf(VALUE_BYTES, 100 + i))], { sync: true })
        const firedBefore = (await faultyFs().stats()).firedOn.length
        await faultyFs().inject(fault)
        await store.compact().catch(() => {})
        assert.ok((await faultyFs().stats()).firedOn.length > firedBefore, 'the fault fired')
        await faultyFs().clear()
        for (let i = 0; i < 48; i++) assertBytes(await store.get(addr(1, i)), bytesOf(VALUE_BYTES, i < 30 ? 100 + i : i), `block ${i} after the failed compaction`)
        for (let i = 30; i < 40; i++) await store.batch([put(addr(1, i), bytesOf(VALUE_BYTES, 200 + i))], { sync: true })
        await store.compact()
      } finally {
        await store.close()
        await faultyFs().clear()
      }
      await listedMatchesFiles(location, 'after closing')
      await checkBlocks(location, 48, (i) => i < 30 ? 100 + i : i < 40 ? 200 + i : i)
    })
  }
})

describe('review r65: close() while rolls are under way', () => {
  it('close() called with batches queued across several new segments waits for them; the list then names exactly the files', async () => {
    const location = await mkdtemp(join(tmpdir(), 'galleonfs-r65-close-'))
    try {
      const store = new FileBlockStore({ location, ...OPTIONS })
      await store.open()
      // About 15 records a segment: 60 batches queued at once need three or four rolls.
      const writes = Array.from({ length: 60 }, (_, i) => store.batch([put(addr(1, i), bytesOf(VALUE_BYTES, i))], { sync: i % 7 === 0 }))
      await store.close()
      const outcomes = await Promise.allSettled(writes)
      assert.deepEqual(outcomes.filter((o) => o.status === 'rejected').map((o) => String((o as PromiseRejectedResult).reason)), [])
      await listedMatchesFiles(location, 'after close')
      assert.ok((await segmentFiles(location)).length >= 4, 'the batches filled several segments')
      await checkBlocks(location, 60, (i) => i)
    } finally {
      await rm(location, { recursive: true, force: true })
    }
  })
})

describe('review r65: stores of every earlier release in test/fixtures', () => {
  const fixturesDir = join(fileURLToPath(new URL('.', import.meta.url)), 'fixtures')
  for (const revision of ['45cc743', '4e601f2', '7b1a549']) {
    it(`release ${revision}: opens, lists its files, and a write after that is listed`, async () => {
      const root = await mkdtemp(join(tmpdir(), 'galleonfs-r65-fixture-'))
      try {
        await promisify(execFile)('tar', ['-xzf', join(fixturesDir, `storage-${revision}-file.tar.gz`), '-C', root])
        const location = join(root, `storage-${revision}-file`, 'storage', 'blocks')
        const store = new FileBlockStore({ location, segmentBytes: 16 * 1024 })
        await store.open()
        const blocks = (await store.stats()).blocks
        await store.batch([put(addr(99, 0), bytesOf(100, 1))], { sync: true })
        await store.close()
        assert.ok(blocks > 0)
        await listedMatchesFiles(location, `release ${revision}`)
        const again = new FileBlockStore({ location, segmentBytes: 16 * 1024 })
        await again.open()
        assert.equal((await again.stats()).blocks, blocks + 1)
        await again.close()
      } finally {
        await rm(root, { recursive: true, force: true })
      }
    })
  }
})

describe('review r65: a full disk', () => {
  after(unmountAll)
  it('sync writes on a disk filled up stop with NO_SPACE (at a record, a roll or its list write); the store reopens on the full disk with every acknowledged block, and writes once space is freed', async (t) => {
    const mount = await tmpfs('4m', 'galleonfs-r65-tmpfs-')
    if ('skip' in mount) { t.skip(mount.skip); return }
    const location = join(mount.dir, 'blocks')
    const store = new FileBlockStore({ location, ...OPTIONS })
    await store.open()
    let acknowledged = 0
    try {
      for (let i = 0; i < 10; i++) { await store.batch([put(addr(1, i), bytesOf(VALUE_BYTES, i))], { sync: true }); acknowledged++ }
      await fillDisk(mount.dir)
      let failed: unknown
      for (let i = 10; i < 200 && failed === undefined; i++) {
        try {
          await store.batch([put(addr(1, i), bytesOf(VALUE_BYTES, i))], { sync: true })
          acknowledged++
        } catch (err) { failed = err }
      }
      assert.equal((failed as { code?: string } | undefined)?.code, 'NO_SPACE', String(failed))
    } finally {
      await store.close().catch(() => {})
    }
    await checkBlocks(location, acknowledged, (i) => i)
    await unfill(mount.dir)
    const again = new FileBlockStore({ location, ...OPTIONS })
    await again.open()
    for (let i = 0; i < 40; i++) await again.batch([put(addr(1, i), bytesOf(VALUE_BYTES, 300 + i))], { sync: true })
    await again.close()
    await listedMatchesFiles(location, 'after space was freed')
    await checkBlocks(location, 40, (i) => 300 + i)
    assert.deepEqual((await readdir(location)).filter((name) => name.includes('tmp')), [])
  })

  it('an open that cannot write its lock file on a full disk leaves no temporary lock file behind', async (t) => {
    const mount = await tmpfs('1m', 'galleonfs-r65-tmpfs-')
    if ('skip' in mount) { t.skip(mount.skip); return }
    const location = join(mount.dir, 'blocks')
    await mkdir(location)
    await fillDisk(mount.dir)
    for (let attempt = 0; attempt < 3; attempt++) {
      const store = new FileBlockStore({ location, ...OPTIONS })
      await assert.rejects(store.open(), (err: { code?: string }) => err.code === 'NO_SPACE')
    }
    assert.deepEqual((await readdir(location)).filter((name) => name.startsWith('LOCK')), [], 'files left by the failed opens')
  })
})
