// Live migration benchmark (file backend), each figure a ratio against a baseline measured in the
// same run:
//   1. time to migrate a fully written volume (plain -> encrypting class) under a write load of
//      50% of the volume's measured random-write throughput vs the same migration of an idle volume;
//   2. the load's throughput during the migration vs the same paced load before it (how much of
//      the asked-for rate the volume keeps serving while it is copied).
// Saved to bench/results/migration.json.
//
// Env: BENCH_VOLUME (volume size, default 1G; e.g. 256M for a quick run), BENCH_SECONDS (seconds
//      of the throughput measurements, default 2), BENCH_DIR (parent of the temporary directory).

import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS, parseSize } from '../src/index.js'

const BLOCK = 4096
const VOLUME = parseSize(process.env.BENCH_VOLUME ?? '1G')
const BLOCKS = VOLUME / BLOCK
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2)
const QUEUE_DEPTH = 8
const RESULTS_FILE = fileURLToPath(new URL('./results/migration.json', import.meta.url))
const CLASSES = ['secret-local', 'fast-local-ssd'] as const

async function fill (g: GalleonFS, name: string): Promise<void> {
  const run = 256
  const data = new Uint8Array(run * BLOCK)
  for (let i = 0; i < data.length; i += 7) data[i] = (i * 31) & 0xff
  for (let at = 0; at < BLOCKS; at += run) await g.write(name, at * BLOCK, data.subarray(0, Math.min(run, BLOCKS - at) * BLOCK))
  await g.flush()
}

/**
 * Random 4 KiB writes at `QUEUE_DEPTH` in flight, paced to `rate` writes/s (Infinity: as fast as
 * they go), until `until()` is true. Returns writes per second achieved.
 */
async function load (g: GalleonFS, name: string, rate: number, until: () => boolean): Promise<number> {
  const data = new Uint8Array(BLOCK).fill(9)
  const started = performance.now()
  let issued = 0
  let x = 12345
  const worker = async (): Promise<void> => {
    while (!until()) {
      if (Number.isFinite(rate)) {
        const due = started + (issued / rate) * 1000
        const wait = due - performance.now()
        if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait))
        if (until()) break
      }
      issued++
      x = (x * 1103515245 + 12345) >>> 0
      await g.writeBlock(name, x % BLOCKS, data)
    }
  }
  await Promise.all(Array.from({ length: QUEUE_DEPTH }, worker))
  return issued / ((performance.now() - started) / 1000)
}

const forSeconds = (seconds: number): () => boolean => {
  const end = performance.now() + seconds * 1000
  return () => performance.now() >= end
}

async function main (): Promise<void> {
  const dir = await mkdtemp(join(process.env.BENCH_DIR ?? tmpdir(), 'galleon-bench-migration-'))
  try {
    const g = await GalleonFS.open({ storagePath: dir })
    try {
      await g.createStorageClass({ name: 'secret-local', parameters: { encryption: 'true', replication: '1' } })
      await g.createVolume({ name: 'idle', sizeBytes: VOLUME })
      await g.createVolume({ name: 'busy', sizeBytes: VOLUME })
      await fill(g, 'idle')
      await fill(g, 'busy')

      let started = performance.now()
      await g.migrateVolume('idle', { storageClass: CLASSES[0] })
      const idleMs = performance.now() - started

      const fullRate = await load(g, 'busy', Infinity, forSeconds(SECONDS))
      const target = fullRate / 2
      const before = await load(g, 'busy', target, forSeconds(SECONDS))
      let migrating = true
      let passes = 0
      g.on('volume:migration-progress', (event) => { if (event.volumeId !== undefined) passes = Math.max(passes, event.pass) })
      const during = load(g, 'busy', target, () => !migrating)
      started = performance.now()
      await g.migrateVolume('busy', { storageClass: CLASSES[0] })
      const busyMs = performance.now() - started
      migrating = false
      const duringRate = await during

      const rows = [
        { case: `migrate ${process.env.BENCH_VOLUME ?? '1G'} plain -> encrypted, idle`, ms: Math.round(idleMs), mbps: Math.round(VOLUME / 1048576 / (idleMs / 1000)) },
        { case: `same under a 50% write load (${Math.round(target)} writes/s of ${Math.round(fullRate)}), ${passes} copy passes`, ms: Math.round(busyMs), ratio: Math.round(busyMs / idleMs * 100) / 100 },
        { case: 'load throughput before migration (writes/s)', rate: Math.round(before) },
        { case: 'load throughput during migration (writes/s)', rate: Math.round(duringRate), ratio: Math.round(duringRate / before * 100) / 100 }
      ]
      console.table(rows)
      await mkdir(fileURLToPath(new URL('./results/', import.meta.url)), { recursive: true })
      await writeFile(RESULTS_FILE, JSON.stringify({ date: new Date().toISOString(), node: process.version, volumeBytes: VOLUME, rows }, null, 2) + '\n')
    } finally {
      await g.close()
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

await main()
