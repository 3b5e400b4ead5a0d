// Reuse of the file store's read buffers (backends/file/read-buffers.ts): a buffer comes back only
// once every view handed out of it is released; the engine releases the values of multi-block reads
// once it has copied them; and reads that reuse buffers, concurrent with each other and with
// writes, return exactly what a model says.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ReadBuffers } from '../backends/file/read-buffers.js'
import { FileBlockStore } from '../backends/file/index.js'
import { GalleonFS } from '../src/index.js'
import { seededRandom } from '../src/seeded-random.js'
import { addr, bytesOf, put } from './conformance/fixtures.js'

async function withDir (body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'galleon-read-buffers-'))
  try {
    await body(dir)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

describe('ReadBuffers', () => {
  it('reuses a buffer only once every view lent from it is released', () => {
    const pool = new ReadBuffers()
    const run = pool.take(300_000)
    assert.equal(run.byteLength, 300_000)
    const views = [run.subarray(0, 100), run.subarray(100, 200), run.subarray(200, 300)]
    pool.lend(run, views)
    pool.release([views[0], views[1]])
    assert.notEqual(pool.take(300_000).buffer, run.buffer, 'reused while a view was still out')
    // Released twice, or a copy of a view: neither counts for the view still out.
    pool.release([views[0], views[1], new Uint8Array(views[2] as Uint8Array), undefined])
    assert.notEqual(pool.take(300_000).buffer, run.buffer)
    pool.release([views[2]])
    assert.equal(pool.take(300_000).buffer, run.buffer)
  })

  it('takes sizes of one class (64 KiB steps) from one free list, never a buffer too small, never one much larger', () => {
    const pool = new ReadBuffers()
    const run = pool.take(70_000)
    assert.equal(run.buffer.byteLength, 128 * 1024)
    pool.lend(run, [])
    const again = pool.take(100_000)
    assert.equal(again.buffer, run.buffer)
    assert.equal(again.byteLength, 100_000)
    pool.lend(again, [])
    assert.notEqual(pool.take(140_000).buffer, run.buffer)
    // A 1 MiB read of 4 KiB blocks (256 records) keeps 1,088 KiB, not 2 MiB, if its caller keeps it.
    assert.equal(pool.take(256 * (4096 + 8 + 36)).buffer.byteLength, 1088 * 1024)
  })

  it('leaves small runs, foreign values and buffers past its limit to the collector', () => {
    const pool = new ReadBuffers()
    const small = pool.take(4096)
    pool.lend(small, [small.subarray(0, 10)])
    pool.release([small.subarray(0, 10)])
    assert.notEqual(pool.take(4096).buffer, small.buffer)
    const foreign = new Uint8Array(1 << 20)
    pool.lend(foreign, [])
    assert.notEqual(pool.take(1 << 20).buffer, foreign.buffer)
    // 16 MiB of free buffers at most: the 5th 4 MiB one is not kept.
    const big = Array.from({ length: 5 }, () => pool.take(4 << 20))
    for (const run of big) pool.lend(run, [])
    const kept = new Set(big.map((run) => run.buffer))
    const taken = Array.from({ length: 5 }, () => pool.take(4 << 20).buffer)
    assert.equal(taken.filter((buffer) => kept.has(buffer)).length, 4)
  })
})

describe('file block store: reused read buffers', () => {
  it('hands out the same buffer again only after releaseValues, with the right bytes each time', async () => {
    await withDir(async (dir) => {
      const store = new FileBlockStore({ location: join(dir, 'blocks') })
      await store.open()
      try {
        // Adjacent records, read as one run of about 330 KiB.
        await store.batch(Array.from({ length: 80 }, (_, i) => put(addr(1, i), bytesOf(4104, i))))
        await store.batch(Array.from({ length: 80 }, (_, i) => put(addr(2, i), bytesOf(4104, 1000 + i))))
        const addresses = (volume: number): ReturnType<typeof addr>[] => Array.from({ length: 80 }, (_, i) => addr(volume, i))
        const first = await store.getMany(addresses(1))
        const held = await store.getMany(addresses(2))
        assert.notEqual(held[0]?.buffer, first[0]?.buffer, 'a buffer lent out was handed out again')
        store.releaseValues(first)
        const second = await store.getMany(addresses(2))
        assert.equal(second[0]?.buffer, first[0]?.buffer, 'the released buffer was not reused')
        second.forEach((value, i) => assert.deepEqual(value, bytesOf(4104, 1000 + i)))
        // The values still held were not touched by the read into the reused buffer.
        held.forEach((value, i) => assert.deepEqual(value, bytesOf(4104, 1000 + i)))
      } finally {
        await store.close()
      }
    })
  })

  for (const storageClass of [undefined, 'encrypted-storage']) it(`the engine releases what it read only after copying it out, and reads stay exact under concurrency (${storageClass ?? 'default class'})`, async () => {
    await withDir(async (dir) => {
      const store = new FileBlockStore({ location: join(dir, 'blocks') })
      let released = 0
      const release = store.releaseValues.bind(store)
      store.releaseValues = (values) => { released += values.length; release(values) }
      const g = await GalleonFS.open({ storagePath: dir, blockStore: store })
      try {
        const blocks = 512
        await g.createVolume({ name: 'v', sizeBytes: blocks * 4096, replicas: 1, ...(storageClass === undefined ? {} : { storageClass }) })
        const model = new Uint8Array(blocks * 4096)
        const next = seededRandom(7)
        const random = { int: (n: number): number => Math.floor(next() * n) }
        const fill = (length: number): Uint8Array => Uint8Array.from({ length }, () => random.int(256))
        const whole = fill(model.byteLength)
        await g.write('v', 0, whole)
        model.set(whole)
        const before = released
        assert.deepEqual(await g.read('v', 0, 256 * 4096), model.subarray(0, 256 * 4096))
        assert.ok(released - before >= 256, `the engine released ${released - before} values of a 256-block read`)
        // Many reads in flight (each a run into a pooled buffer) with writes between them; every
        // read must return the model as it stood when the read was issued or after its writes.
        for (let round = 0; round < 20; round++) {
          const reads: Array<Promise<void>> = []
          for (let r = 0; r < 6; r++) {
            const first = random.int(blocks - 64)
            const count = 32 + random.int(32)
            const expected = model.slice(first * 4096, (first + count) * 4096)
            reads.push(g.read('v', first * 4096, count * 4096).then((got) => assert.deepEqual(got, expected)))
            // Staggered: later reads fetch while earlier ones are still verifying or decrypting.
            await new Promise((resolve) => setImmediate(resolve))
          }
          await Promise.all(reads)
          const at = random.int(blocks - 40)
          const data = fill((8 + random.int(32)) * 4096)
          await g.write('v', at * 4096, data)
          model.set(data, at * 4096)
        }
        assert.deepEqual(await g.read('v', 0, model.byteLength), model)
      } finally {
        await g.close()
      }
    })
  })
})
