// Allocation queries (getAllocation, NBD block status, a resync's digests, full listings) cost work
// that follows the blocks stored in the range, not the range's length:
//   - PagedMap.pagesBetween against a model, over small and huge ranges;
//   - BlockEngine.allocationRuns and allocatedAt against the per-block definition (a tiny reference
//     kept here: every index of the range resolved as a read resolves it), over seeded random
//     histories of writes, trims, snapshots, snapshot deletions, clones of clones, expansions,
//     reverts and flattens, at the live view and at every snapshot;
//   - getAllocation over the whole of the largest volume createVolume accepts (2^53 - 4096 bytes,
//     about 2^41 blocks) with a few blocks written: run in a child process, since a per-block walk
//     blocks its event loop for hours and only a killed process ends it (the test's timeout does).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { MemoryBlockStore } from '../backends/memory/index.js'
import { BlockEngine } from '../src/engine/engine.js'
import { LIVE, type BlockMap } from '../src/engine/block-map.js'
import type { VolumeBlocks } from '../src/engine/volume-blocks.js'
import { PAGE_SLOTS, PagedMap } from '../src/paged-map.js'
import { WriteConcern } from '../src/types.js'
import { seededRandom } from './conformance/fixtures.js'

type Run = [first: number, count: number, allocated: boolean]

/** The per-block definition allocationRuns must keep: resolve every index of the range. */
function referenceRuns (map: BlockMap, first: number, last: number, at: number): Run[] {
  const runs: Run[] = []
  for (let index = first; index <= last; index++) {
    const allocated = map.locate(index, at) !== undefined
    const run = runs[runs.length - 1]
    if (run !== undefined && run[2] === allocated) run[1]++
    else runs.push([index, 1, allocated])
  }
  return runs
}

/** The per-block definition of allocatedAt, over every index a volume of the test can hold. */
function referenceAllocated (map: BlockMap, limit: number, at: number): number[] {
  const out: number[] = []
  for (let index = 0; index < limit; index++) if (map.locate(index, at) !== undefined) out.push(index)
  return out
}

describe('PagedMap.pagesBetween', () => {
  it('lists the pages in use that overlap a range in ascending order, for ranges smaller and larger than the pages in use', () => {
    const random = seededRandom(0x6b657973)
    const bases = [0, 700, 2 ** 32 - 300, 2 ** 40 + 17, Number.MAX_SAFE_INTEGER - 600]
    const keys = bases.flatMap((base) => Array.from({ length: 600 }, (_, i) => base + i))
    const paged = new PagedMap<number>()
    const model = new Set<number>()
    for (let step = 0; step < 6000; step++) {
      const key = keys[Math.floor(random() * keys.length)] as number
      if (random() < 0.6) { paged.set(key, step); model.add(key) } else { paged.delete(key); model.delete(key) }
      if (step % 50 !== 0) continue
      const pagesInUse = [...new Set([...model].map((k) => Math.floor(k / PAGE_SLOTS)))].sort((a, b) => a - b)
      const a = keys[Math.floor(random() * keys.length)] as number
      const b = random() < 0.5 ? a + Math.floor(random() * 1000) : keys[Math.floor(random() * keys.length)] as number
      for (const [first, last] of [[Math.min(a, b), Math.max(a, b)], [a, a], [0, Number.MAX_SAFE_INTEGER], [0, Number.POSITIVE_INFINITY], [b, a]] as const) {
        const expected = first > last ? [] : pagesInUse.filter((page) => page >= Math.floor(first / PAGE_SLOTS) && page <= Math.floor(last / PAGE_SLOTS))
        assert.deepEqual(paged.pagesBetween(first, last), expected, `pagesBetween(${first}, ${last}) at step ${step}`)
      }
    }
  })
})

describe('allocationRuns and allocatedAt against the per-block definition', () => {
  const BLOCK = 512
  /** Blocks a volume starts with and the most it grows to: several 256-slot pages. */
  const START_BLOCKS = 700
  const MAX_BLOCKS = 1300

  interface Vol { blocks: VolumeBlocks, snapshots: Array<{ gen: number, sizeBytes: number }>, /** gens clones read: never dropped */ pinned: Set<number> }

  for (const seed of [1, 2, 3, 4, 5, 6]) {
    it(`matches over a random history (seed ${seed})`, async () => {
      const random = seededRandom(0xa110c + seed)
      const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)] as T
      const store = new MemoryBlockStore()
      await store.open()
      const engine = new BlockEngine(store, { blockSize: BLOCK, cacheBlocks: 0 })
      let nextId = 1
      const vols: Vol[] = [{ blocks: engine.attach(nextId++, START_BLOCKS * BLOCK), snapshots: [], pinned: new Set() }]
      let checks = 0
      const check = (vol: Vol, step: number): void => {
        const views = [{ at: LIVE, blocks: vol.blocks.sizeBytes / BLOCK }, ...vol.snapshots.map((s) => ({ at: s.gen, blocks: s.sizeBytes / BLOCK }))]
        for (const { at, blocks } of views) {
          const what = `volume ${vol.blocks.storageId} at ${at} after step ${step}`
          const first = Math.floor(random() * blocks)
          const last = Math.min(blocks - 1, first + Math.floor(random() * (random() < 0.5 ? 40 : blocks)))
          for (const [from, to] of [[0, blocks - 1], [first, last], [first, first], [last + 1, last], [0, MAX_BLOCKS + 300]]) {
            assert.deepEqual(engine.allocationRuns(vol.blocks, from as number, to as number, at), referenceRuns(vol.blocks.map, from as number, to as number, at), `runs ${from}..${to} of ${what}`)
          }
          assert.deepEqual(engine.allocatedAt(vol.blocks, at), referenceAllocated(vol.blocks.map, MAX_BLOCKS + 300, at), `allocatedAt of ${what}`)
          checks++
        }
      }
      try {
        for (let step = 0; step < 160; step++) {
          const vol = pick(vols)
          const size = vol.blocks.sizeBytes / BLOCK
          const roll = random()
          const first = Math.floor(random() * size)
          const count = Math.min(size - first, 1 + Math.floor(random() * (random() < 0.2 ? 300 : 12)))
          if (roll < 0.4) {
            await engine.write(vol.blocks, first * BLOCK, new Uint8Array(count * BLOCK).fill(1 + step % 250), WriteConcern.WriteAcknowledged)
          } else if (roll < 0.6) {
            await engine.trim(vol.blocks, first * BLOCK, count * BLOCK, WriteConcern.WriteAcknowledged)
          } else if (roll < 0.7) {
            vol.snapshots.push({ gen: await engine.snapshot(vol.blocks), sizeBytes: vol.blocks.sizeBytes })
          } else if (roll < 0.75) {
            const droppable = vol.snapshots.filter((s) => !vol.pinned.has(s.gen))
            if (droppable.length > 0) {
              const gone = pick(droppable)
              await engine.dropSnapshot(vol.blocks, gone.gen)
              vol.snapshots.splice(vol.snapshots.indexOf(gone), 1)
            }
          } else if (roll < 0.83 && vols.length < 6) {
            // A clone of the live volume (through a snapshot it keeps) or of one of its snapshots.
            const from = vol.snapshots.length > 0 && random() < 0.5 ? pick(vol.snapshots) : { gen: await engine.snapshot(vol.blocks), sizeBytes: vol.blocks.sizeBytes }
            if (!vol.snapshots.includes(from)) vol.snapshots.push(from)
            vol.pinned.add(from.gen)
            const clone = engine.attach(nextId++, from.sizeBytes)
            engine.linkClone(clone, vol.blocks, from.gen, from.sizeBytes)
            vols.push({ blocks: clone, snapshots: [], pinned: new Set() })
          } else if (roll < 0.9) {
            if (size < MAX_BLOCKS) vol.blocks.sizeBytes = Math.min(MAX_BLOCKS, size + 1 + Math.floor(random() * 200)) * BLOCK
          } else if (roll < 0.95) {
            const same = vol.snapshots.filter((s) => s.sizeBytes === vol.blocks.sizeBytes)
            if (same.length > 0) await engine.revert(vol.blocks, pick(same))
          } else if (vol.blocks.map.parent !== undefined && random() < 0.5) {
            await engine.flatten(vol.blocks)
          }
          if (step % 8 === 7) for (const each of vols) check(each, step)
        }
        for (const each of vols) check(each, 160)
        assert.ok(vols.some((v) => v.blocks.map.parent !== undefined), 'the history made clones')
        assert.ok(checks > 100)
      } finally {
        await engine.close()
        await store.close()
      }
    })
  }
})

describe('getAllocation over a huge sparse volume', () => {
  it('answers for the whole of the largest volume accepted, its snapshot and a clone of it', { timeout: 20_000 }, async (t) => {
    const BLOCK = 4096
    const size = Math.floor(Number.MAX_SAFE_INTEGER / BLOCK) * BLOCK
    const blocks = size / BLOCK
    const middle = Math.floor(blocks / 2)
    // The child prints the answers as JSON; a per-block walk never gets there and the test's
    // timeout aborts `t.signal`, which kills the child.
    const script = `
      import { MemoryLevel } from 'memory-level'
      const root = ${JSON.stringify(new URL('../', import.meta.url).href)}
      const { MemoryBlockStore } = await import(root + 'backends/memory/index.js')
      const { GalleonFS } = await import(root + 'src/index.js')
      const g = await GalleonFS.open({ metadata: new MemoryLevel(), blockStore: new MemoryBlockStore() })
      const size = ${size}, BLOCK = ${BLOCK}, middle = ${middle}
      await g.createVolume({ name: 'huge', sizeBytes: size })
      await g.write('huge', 0, new Uint8Array(2 * BLOCK).fill(1))
      await g.write('huge', middle * BLOCK, new Uint8Array(3 * BLOCK).fill(2))
      await g.write('huge', size - BLOCK, new Uint8Array(BLOCK).fill(3))
      await g.createSnapshot('huge', 's')
      await g.trim('huge', 0, BLOCK)
      await g.write('huge', (middle + 3) * BLOCK, new Uint8Array(BLOCK).fill(4))
      await g.cloneVolume({ volume: 'huge', snapshot: 's' }, 'copy')
      await g.write('copy', 10 * BLOCK, new Uint8Array(BLOCK).fill(5))
      await g.trim('copy', size - BLOCK, BLOCK)
      const out = {
        live: await g.getAllocation('huge', 0, size),
        snapshot: await g.getAllocation({ volume: 'huge', snapshot: 's' }, 0, size),
        clone: await g.getAllocation('copy', 0, size),
        tail: await g.getAllocation('huge', size - 3 * BLOCK - 100, 3 * BLOCK + 100),
        listed: await g.listChangedBlocks('copy')
      }
      await g.close()
      process.stdout.write(JSON.stringify(out))
    `
    const child = spawn(process.execPath, [...process.execArgv, '--input-type=module', '-e', script], { cwd: fileURLToPath(new URL('../', import.meta.url)), signal: t.signal, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
    const exit = await new Promise<number | null>((resolve) => {
      child.on('error', () => {})
      child.on('close', (code) => resolve(code))
    })
    assert.equal(exit, 0, `the child failed: ${stderr}`)
    const out = JSON.parse(stdout) as Record<string, Array<{ offset: number, length: number, allocated: boolean }>>
    const extents = (...runs: Array<[first: number, count: number, allocated: boolean]>): Array<{ offset: number, length: number, allocated: boolean }> =>
      runs.map(([first, count, allocated]) => ({ offset: first * BLOCK, length: count * BLOCK, allocated }))
    assert.deepEqual(out.snapshot, extents([0, 2, true], [2, middle - 2, false], [middle, 3, true], [middle + 3, blocks - middle - 4, false], [blocks - 1, 1, true]))
    assert.deepEqual(out.live, extents([0, 1, false], [1, 1, true], [2, middle - 2, false], [middle, 4, true], [middle + 4, blocks - middle - 5, false], [blocks - 1, 1, true]))
    assert.deepEqual(out.clone, extents([0, 2, true], [2, 8, false], [10, 1, true], [11, middle - 11, false], [middle, 3, true], [middle + 3, blocks - middle - 3, false]))
    assert.deepEqual(out.tail, [{ offset: size - 3 * BLOCK - 100, length: 2 * BLOCK + 100, allocated: false }, { offset: size - BLOCK, length: BLOCK, allocated: true }])
    assert.deepEqual(out.listed, [0, 1, 10, middle, middle + 1, middle + 2])
  })
})
