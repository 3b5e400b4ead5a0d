// Copy-on-write benchmark (file backend, 1 GiB volume), each figure a ratio against a baseline
// measured in the same run:
//   1. snapshot creation time on a fully written volume vs an empty one (target ratio <= 1.5,
//      and under 10 ms);
//   2. 4 KiB random writeBlock throughput (WriteAcknowledged, 32 in flight) right after a snapshot
//      (every first write of a block keeps the old version) vs the same volume without snapshots;
//   3. changed-block listing time between two snapshots with 10% vs 1% of the blocks changed
//      (proportional work: about 10x), and a full listing for scale.
// Saved to bench/results/snapshots.json.
//
// Env: BENCH_SECONDS (seconds per throughput case, default 2), BENCH_DIR (parent of the temporary
//      directory), BENCH_VOLUME (volume size, default 1G).

import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS, WriteConcern, parseSize } from '../src/index.js'

const BLOCK = 4096
const VOLUME = parseSize(process.env.BENCH_VOLUME ?? '1G')
const BLOCKS = VOLUME / BLOCK
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2)
const QUEUE_DEPTH = 32
const SNAPSHOT_SAMPLES = 30
const LIST_SAMPLES = 20
const RESULTS_FILE = fileURLToPath(new URL('./results/snapshots.json', import.meta.url))

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)] as number
}

/** Median milliseconds of createSnapshot on `volume` (each sample deleted again). */
async function snapshotMs (g: GalleonFS, volume: string): Promise<number> {
  const samples: number[] = []
  for (let i = 0; i < SNAPSHOT_SAMPLES; i++) {
    const started = performance.now()
    await g.createSnapshot(volume, `bench-${i}`)
    samples.push(performance.now() - started)
    await g.deleteSnapshot(volume, `bench-${i}`)
  }
  return median(samples)
}

/** 4 KiB random writes per second at QUEUE_DEPTH for SECONDS. */
async function randomWrites (g: GalleonFS, volume: string, seed: number): Promise<number> {
  const data = new Uint8Array(BLOCK).fill(seed & 0xff)
  let state = seed >>> 0 || 1
  const next = (): number => { state ^= state << 13; state ^= state >>> 17; state ^= state << 5; return (state >>> 0) % BLOCKS }
  const stopAt = performance.now() + SECONDS * 1000
  let ops = 0
  await Promise.all(Array.from({ length: QUEUE_DEPTH }, async () => {
    while (performance.now() < stopAt) {
      await g.writeBlock(volume, next(), data, WriteConcern.WriteAcknowledged)
      ops++
    }
  }))
  await g.flush()
  return ops / SECONDS
}

/** Median milliseconds of listing the blocks changed between `from` and `to`. */
async function listMs (g: GalleonFS, volume: string, from: string | undefined, to: string): Promise<{ ms: number, blocks: number }> {
  const samples: number[] = []
  let blocks = 0
  for (let i = 0; i < LIST_SAMPLES; i++) {
    const started = performance.now()
    blocks = (await g.listChangedBlocks(volume, { from, to })).length
    samples.push(performance.now() - started)
  }
  return { ms: median(samples), blocks }
}

async function fill (g: GalleonFS, volume: string): Promise<void> {
  const chunk = new Uint8Array(4 * 1024 * 1024).fill(7)
  const inFlight = new Set<Promise<void>>()
  for (let offset = 0; offset < VOLUME; offset += chunk.byteLength) {
    const write: Promise<void> = g.write(volume, offset, chunk).then(() => { inFlight.delete(write) })
    inFlight.add(write)
    if (inFlight.size >= 8) await Promise.race(inFlight)
  }
  await Promise.all(inFlight)
  await g.flush()
}

async function changeFraction (g: GalleonFS, volume: string, fraction: number, seed: number): Promise<void> {
  const data = new Uint8Array(BLOCK).fill(9)
  const count = Math.round(BLOCKS * fraction)
  const stride = Math.floor(BLOCKS / count)
  const writes: Array<Promise<void>> = []
  for (let i = 0; i < count; i++) {
    writes.push(g.writeBlock(volume, (i * stride + seed) % BLOCKS, data))
    if (writes.length >= QUEUE_DEPTH) await Promise.all(writes.splice(0))
  }
  await Promise.all(writes)
}

async function main (): Promise<void> {
  const parent = process.env.BENCH_DIR ?? tmpdir()
  await mkdir(parent, { recursive: true })
  const dir = await mkdtemp(join(parent, 'galleon-snapbench-'))
  const g = await GalleonFS.open({ storagePath: dir })
  try {
    await g.createVolume({ name: 'empty', sizeBytes: VOLUME })
    await g.createVolume({ name: 'full', sizeBytes: VOLUME })
    let started = performance.now()
    await fill(g, 'full')
    console.log(`filled ${VOLUME / 2 ** 30} GiB in ${((performance.now() - started) / 1000).toFixed(1)} s`)

    const emptyMs = await snapshotMs(g, 'empty')
    const fullMs = await snapshotMs(g, 'full')

    const before = await randomWrites(g, 'full', 1)
    await g.createSnapshot('full', 'base')
    const afterSnapshot = await randomWrites(g, 'full', 2)
    await g.deleteSnapshot('full', 'base')

    await g.createSnapshot('full', 'p0')
    await changeFraction(g, 'full', 0.01, 11)
    await g.createSnapshot('full', 'p1')
    await changeFraction(g, 'full', 0.10, 23)
    await g.createSnapshot('full', 'p10')
    const one = await listMs(g, 'full', 'p0', 'p1')
    const ten = await listMs(g, 'full', 'p1', 'p10')
    started = performance.now()
    const whole = await listMs(g, 'full', undefined, 'p10')

    const rows = [
      { case: 'snapshot creation, 1 GiB volume: full vs empty', value: fullMs, baseline: emptyMs, unit: 'ms', ratio: fullMs / emptyMs, target: '<= 1.5 and < 10 ms' },
      { case: '4 KiB random writeBlock QD32 after a snapshot vs without', value: afterSnapshot, baseline: before, unit: 'ops/s', ratio: afterSnapshot / before, target: null },
      { case: 'changed-block listing: 10% vs 1% changed', value: ten.ms, baseline: one.ms, unit: 'ms', ratio: ten.ms / one.ms, target: '~10 (proportional)' },
      { case: 'full listing vs 10% changed listing', value: whole.ms, baseline: ten.ms, unit: 'ms', ratio: whole.ms / ten.ms, target: null }
    ]
    console.log('| case | value | baseline | ratio | target |')
    console.log('|---|---:|---:|---:|---|')
    for (const row of rows) {
      console.log(`| ${row.case} | ${row.value.toFixed(row.unit === 'ms' ? 3 : 0)} ${row.unit} | ${row.baseline.toFixed(row.unit === 'ms' ? 3 : 0)} ${row.unit} | ${row.ratio.toFixed(2)}x | ${row.target ?? ''} |`)
    }
    console.log(`listed ${one.blocks} blocks (1%), ${ten.blocks} blocks (10%), ${whole.blocks} blocks (full)`)
    await mkdir(fileURLToPath(new URL('./results/', import.meta.url)), { recursive: true })
    await writeFile(RESULTS_FILE, JSON.stringify({ date: new Date().toISOString(), node: process.version, volumeBytes: VOLUME, rows, listed: { one: one.blocks, ten: ten.blocks, full: whole.blocks } }, null, 2) + '\n')
  } finally {
    await g.close()
    await rm(dir, { recursive: true, force: true })
  }
}

await main()
