// Backup benchmark against restic, in the same run on the same disk: a volume of random data
// (1 GiB by default), a full backup, then 1% of its blocks rewritten and an incremental backup;
// restic backs up the same bytes exported to a raw file, then the file with the same blocks
// rewritten. Prints times, speed ratios (restic time / GalleonFS time: above 1 means faster) and
// sizes on the targets, and saves them to bench/results/backup.json. Skips with a message when
// restic is not installed (Debian package `restic`).
//
// Env: BENCH_VOLUME (default 1G), BENCH_DIR (parent of the temporary directory).

import { execFile } from 'node:child_process'
import { randomFillSync } from 'node:crypto'
import { mkdir, mkdtemp, open, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { GalleonFS, parseSize } from '../src/index.js'

const run = promisify(execFile)
const BLOCK = 4096
const VOLUME = parseSize(process.env.BENCH_VOLUME ?? '1G')
const BLOCKS = VOLUME / BLOCK
const RESULTS_FILE = fileURLToPath(new URL('./results/backup.json', import.meta.url))

async function resticVersion (): Promise<string | undefined> {
  try {
    return (await run('restic', ['version'])).stdout.trim()
  } catch {
    return undefined
  }
}

async function sizeOf (path: string): Promise<number> {
  const info = await stat(path)
  if (!info.isDirectory()) return info.size
  let total = 0
  for (const name of await readdir(path)) total += await sizeOf(join(path, name))
  return total
}

async function timed<T> (fn: () => Promise<T>): Promise<[T, number]> {
  const started = performance.now()
  const result = await fn()
  return [result, (performance.now() - started) / 1000]
}

async function main (): Promise<void> {
  const version = await resticVersion()
  if (version === undefined) {
    console.log('restic is not installed (Debian: apt-get install restic); skipping the backup benchmark')
    return
  }
  const parent = process.env.BENCH_DIR ?? tmpdir()
  await mkdir(parent, { recursive: true })
  const dir = await mkdtemp(join(parent, 'galleon-backupbench-'))
  const target = join(dir, 'galleon-target')
  const repo = join(dir, 'restic-repo')
  const raw = join(dir, 'volume.raw')
  const env = { ...process.env, RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: join(dir, 'restic-cache') }
  const g = await GalleonFS.open({ storagePath: join(dir, 'storage'), backupTarget: target })
  try {
    await g.createVolume({ name: 'bench', sizeBytes: VOLUME })
    const chunk = new Uint8Array(4 * 1024 * 1024)
    const file = await open(raw, 'w')
    for (let offset = 0; offset < VOLUME; offset += chunk.byteLength) {
      randomFillSync(chunk)
      await g.write('bench', offset, chunk)
      await file.write(chunk, 0, chunk.byteLength, offset)
    }
    await g.flush()

    const [full, galleonFull] = await timed(async () => await g.createBackup('bench', { strategy: 'full' }))
    await run('restic', ['init', '--repo', repo], { env })
    const [, resticFull] = await timed(async () => await run('restic', ['backup', '--repo', repo, '--quiet', raw], { env, maxBuffer: 1 << 24 }))
    const galleonFullBytes = await sizeOf(target)
    const resticFullBytes = await sizeOf(repo)

    // 1% of the blocks rewritten, at the same places in the volume and in the raw file.
    const block = new Uint8Array(BLOCK)
    const changed = Math.round(BLOCKS / 100)
    for (let i = 0; i < changed; i++) {
      const index = Math.floor((i * 2654435761) % BLOCKS)
      randomFillSync(block)
      await g.writeBlock('bench', index, block)
      await file.write(block, 0, BLOCK, index * BLOCK)
    }
    await file.sync()
    await file.close()
    await g.flush()
    const [incremental, galleonIncremental] = await timed(async () => await g.createBackup('bench', { strategy: 'incremental' }))
    const [, resticIncremental] = await timed(async () => await run('restic', ['backup', '--repo', repo, '--quiet', raw], { env, maxBuffer: 1 << 24 }))
    const galleonIncrementalBytes = (await sizeOf(target)) - galleonFullBytes
    const resticIncrementalBytes = (await sizeOf(repo)) - resticFullBytes

    const rows = [
      { case: `full backup of ${VOLUME / 2 ** 20} MiB of random data`, galleonSeconds: galleonFull, resticSeconds: resticFull, speedRatio: resticFull / galleonFull, target: 1, galleonBytes: galleonFullBytes, resticBytes: resticFullBytes },
      { case: `incremental after 1% of the blocks (${changed}) rewritten`, galleonSeconds: galleonIncremental, resticSeconds: resticIncremental, speedRatio: resticIncremental / galleonIncremental, target: 10, galleonBytes: galleonIncrementalBytes, resticBytes: resticIncrementalBytes }
    ]
    console.log(`${version}; GalleonFS backups ${full.id} (full, ${full.blocks} blocks) and ${incremental.id} (incremental, ${incremental.blocks} blocks)`)
    console.log('| case | GalleonFS | restic | speed ratio | target | stored: GalleonFS | stored: restic |')
    console.log('|---|---:|---:|---:|---:|---:|---:|')
    for (const row of rows) {
      console.log(`| ${row.case} | ${row.galleonSeconds.toFixed(2)} s | ${row.resticSeconds.toFixed(2)} s | ${row.speedRatio.toFixed(2)}× | ≥ ${row.target}× | ${(row.galleonBytes / 2 ** 20).toFixed(1)} MiB | ${(row.resticBytes / 2 ** 20).toFixed(1)} MiB |`)
    }
    await mkdir(fileURLToPath(new URL('./results/', import.meta.url)), { recursive: true })
    await writeFile(RESULTS_FILE, JSON.stringify({ date: new Date().toISOString(), node: process.version, restic: version, volumeBytes: VOLUME, rows }, null, 2) + '\n')
  } finally {
    await g.close()
    await rm(dir, { recursive: true, force: true })
  }
}

await main()
