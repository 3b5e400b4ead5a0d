// End-to-end benchmark: GalleonFS I/O on each backend against raw FileHandle I/O measured in the same
// run, on the same disk, printed as a markdown table of absolute numbers and ratios (DESIGN.md §4),
// and saved as JSON to bench/results/latest.json. Each case's baseline is measured right before and
// right after it (half the time each), so both see the same conditions on a shared, noisy machine.
// Before each of the three, GalleonFS settles: its writes are flushed, its background work
// (compaction) is done, and the kernel has written back dirty pages, so that neither side pays for
// the other's leftovers. A case runs without a break, so it pays for the compaction its own writes
// cause while it runs, as a sustained workload would.
//
// Env: BENCH_SECONDS (measured seconds per case and per baseline, default 2), BENCH_WARMUP_SECONDS
//      (before each measurement, default 0.3),
//      BENCH_DIR (parent of the temporary directory, default the OS temp dir),
//      BENCH_BACKENDS (comma-separated, default file,level,memory).

import { randomFillSync } from 'node:crypto'
import { read as fsRead } from 'node:fs'
import { mkdir, mkdtemp, open, rm, statfs, writeFile } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { settle } from './settle.js'
import { GalleonFS, WriteConcern } from '../src/index.js'

const KiB = 1024
const MiB = 1024 * KiB
const BLOCK = 4 * KiB
const BIG = MiB
/** Size of the engine volume and of the raw baseline file: random I/O lands anywhere in it. */
const SPAN = 64 * MiB
const QUEUE_DEPTH = 32
const SECONDS = positiveNumber('BENCH_SECONDS', 2)
const WARMUP_SECONDS = positiveNumber('BENCH_WARMUP_SECONDS', 0.3)
const BACKENDS = (process.env.BENCH_BACKENDS ?? 'file,level,memory').split(',').map((name) => name.trim()).filter(Boolean) as Array<'file' | 'level' | 'memory'>
const RESULTS_FILE = fileURLToPath(new URL('./results/latest.json', import.meta.url))
const TMPFS_MAGIC = 0x01021994

function positiveNumber (name: string, fallback: number): number {
  const text = process.env[name]
  if (text === undefined || text === '') return fallback
  const value = Number(text)
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} must be a positive number of seconds, got ${text}`)
  return value
}

// ------------------------------------------------------------------------------------------------
// Measuring

interface Measurement {
  ops: number
  seconds: number
  opsPerSec: number
  mbPerSec: number
}

/** A workload measured for a given number of seconds. */
type Workload = (seconds: number) => Promise<Measurement>

/**
 * Runs `op` from `depth` concurrent loops: a warmup, then `seconds` in which completed operations
 * are counted. `op(worker)` moves `bytesPerOp` bytes. Deadlines are checked on the clock after each
 * operation, not with timers: an in-memory operation completes in microtasks and would starve them.
 */
async function measure (depth: number, bytesPerOp: number, op: (worker: number) => Promise<unknown>, seconds: number): Promise<Measurement> {
  const countFrom = performance.now() + WARMUP_SECONDS * 1000
  const stopAt = countFrom + seconds * 1000
  let ops = 0
  await Promise.all(Array.from({ length: depth }, async (_, worker) => {
    while (true) {
      await op(worker)
      const now = performance.now()
      if (now >= stopAt) return
      if (now >= countFrom) ops++
    }
  }))
  const opsPerSec = ops / seconds
  return { ops, seconds, opsPerSec, mbPerSec: opsPerSec * bytesPerOp / 1e6 }
}

/** `depth` loops of `op` as a Workload. */
const workload = (depth: number, bytesPerOp: number, op: (worker: number) => Promise<unknown>): Workload =>
  async (seconds) => await measure(depth, bytesPerOp, op, seconds)

/** Sums slices of one workload. */
function total (slices: readonly Measurement[]): Measurement {
  const ops = slices.reduce((sum, m) => sum + m.ops, 0)
  const seconds = slices.reduce((sum, m) => sum + m.seconds, 0)
  const bytes = slices.reduce((sum, m) => sum + m.mbPerSec * m.seconds, 0)
  return { ops, seconds, opsPerSec: ops / seconds, mbPerSec: bytes / seconds }
}

/** A GalleonFS case and its baseline (half before, half after it). */
interface Paired { mine: Measurement, base: Measurement }

async function paired (mine: Workload, base: Workload, settle: () => Promise<void>): Promise<Paired> {
  await settle()
  const before = await base(SECONDS / 2)
  await settle()
  const measured = await mine(SECONDS)
  await settle()
  const after = await base(SECONDS / 2)
  return { mine: measured, base: total([before, after]) }
}


const randomBlockOffset = (): number => Math.floor(Math.random() * (SPAN / BLOCK)) * BLOCK

/** One buffer of random bytes per in-flight operation (a buffer in flight must not be shared). */
function buffers (count: number, size: number): Uint8Array[] {
  return Array.from({ length: count }, () => randomFillSync(new Uint8Array(size)))
}

// ------------------------------------------------------------------------------------------------
// Cases

type CaseId = 'randwrite-ack' | 'randwrite-durable' | 'randread-nocache' | 'randread-cache' | 'seqwrite-1m' | 'seqread-1m'

interface CaseInfo {
  title: string
  baseline: string
  /** Minimum ratio against the baseline, when DESIGN.md sets one. */
  target?: number
}

const CASES: Record<CaseId, CaseInfo> = {
  'randwrite-ack': { title: '4 KiB random writeBlock, WriteAcknowledged, QD32', baseline: 'FileHandle.write 4 KiB random, QD32', target: 0.5 },
  'randwrite-durable': { title: '4 KiB random writeBlock, WriteDurable, QD32', baseline: 'write + fdatasync loop, QD1', target: 5 },
  'randread-nocache': { title: '4 KiB random readBlock, QD32 (default: no engine cache)', baseline: 'fs.read 4 KiB random, QD32' },
  'randread-cache': { title: '4 KiB random readBlock, QD32, cacheBlocks 2048 (1/8 of the blocks)', baseline: 'fs.read 4 KiB random, QD32' },
  'seqwrite-1m': { title: '1 MiB sequential write(), WriteAcknowledged, QD1', baseline: 'FileHandle.write 1 MiB sequential, QD1' },
  'seqread-1m': { title: '1 MiB sequential read(), QD1', baseline: 'FileHandle.read 1 MiB sequential, QD1' }
}
const CASE_BASELINE: Record<CaseId, string> = {
  'randwrite-ack': 'raw-randwrite',
  'randwrite-durable': 'raw-write-fdatasync',
  'randread-nocache': 'raw-randread',
  'randread-cache': 'raw-randread',
  'seqwrite-1m': 'raw-seqwrite',
  'seqread-1m': 'raw-seqread'
}

/** The raw file the baselines run on: preallocated, open for the whole run. */
interface RawFile { workloads: Record<string, Workload>, close: () => Promise<void> }

async function openRawFile (directory: string): Promise<RawFile> {
  const file = join(directory, 'raw.bin')
  const handle = await open(file, 'w+')
  // Preallocate with real data, so no case pays for block allocation of a sparse file.
  const fill = randomFillSync(new Uint8Array(BIG))
  for (let position = 0; position < SPAN; position += BIG) await handle.write(fill, 0, BIG, position)
  await handle.datasync()
  const small = buffers(QUEUE_DEPTH, BLOCK)
  const big = buffers(1, BIG)[0] as Uint8Array
  let writePosition = 0
  let readPosition = 0
  const workloads: Record<string, Workload> = {
    'raw-randwrite': workload(QUEUE_DEPTH, BLOCK, async (w) => await handle.write(small[w] as Uint8Array, 0, BLOCK, randomBlockOffset())),
    'raw-write-fdatasync': workload(1, BLOCK, async () => {
      await handle.write(small[0] as Uint8Array, 0, BLOCK, randomBlockOffset())
      await handle.datasync()
    }),
    // The callback fs.read on the descriptor: the fastest way to a positional read from Node (the
    // file store reads the same way).
    'raw-randread': workload(QUEUE_DEPTH, BLOCK, async (w) => await new Promise<void>((resolve, reject) => {
      fsRead(handle.fd, small[w] as Uint8Array, 0, BLOCK, randomBlockOffset(), (err) => { if (err === null) resolve(); else reject(err) })
    })),
    'raw-seqwrite': workload(1, BIG, async () => {
      await handle.write(big, 0, BIG, writePosition)
      writePosition = (writePosition + BIG) % SPAN
    }),
    'raw-seqread': workload(1, BIG, async () => {
      await handle.read(big, 0, BIG, readPosition)
      readPosition = (readPosition + BIG) % SPAN
    })
  }
  return {
    workloads,
    close: async () => {
      await handle.close()
      await rm(file, { force: true })
    }
  }
}

interface JournalDelta { backend: string, journalEntries: number, storeBatches: number, syncs: number, entriesPerSync: number }

interface BackendRun { results: Partial<Record<CaseId, Paired>>, journal?: JournalDelta, error?: string, skipped?: Partial<Record<CaseId, string>> }

async function measureBackend (backend: 'file' | 'level' | 'memory', directory: string, raw: RawFile): Promise<BackendRun> {
  const storagePath = join(directory, backend)
  const results: Partial<Record<CaseId, Paired>> = {}
  /** Measures a case against its baseline (see `paired`), on the instance open now. */
  const against = async (id: CaseId, mine: Workload): Promise<Paired> => await paired(mine, raw.workloads[CASE_BASELINE[id]] as Workload, async () => await settle(g))
  const skipped: Partial<Record<CaseId, string>> = {}
  const openInstance = async (cacheBlocks?: number): Promise<GalleonFS> =>
    backend === 'memory' ? await GalleonFS.open({ inMemory: true, cacheBlocks }) : await GalleonFS.open({ storagePath, backend, cacheBlocks })
  const prefill = async (g: GalleonFS): Promise<string> => {
    const volume = await g.createVolume({ name: 'bench', sizeBytes: SPAN })
    const fill = randomFillSync(new Uint8Array(BIG))
    for (let offset = 0; offset < SPAN; offset += BIG) await g.write(volume.id, offset, fill)
    await g.flush()
    return volume.id
  }
  const small = buffers(QUEUE_DEPTH, BLOCK)
  const big = buffers(1, BIG)[0] as Uint8Array
  const randomBlock = (): number => Math.floor(Math.random() * (SPAN / BLOCK))
  let journal: JournalDelta | undefined

  let g = await openInstance()
  try {
    const vol = await prefill(g)
    log(`${backend}: 1 MiB sequential write()`)
    let writeOffset = 0
    results['seqwrite-1m'] = await against('seqwrite-1m', workload(1, BIG, async () => {
      await g.write(vol, writeOffset, big, WriteConcern.WriteAcknowledged)
      writeOffset = (writeOffset + BIG) % SPAN
    }))
    log(`${backend}: 4 KiB random writeBlock, WriteAcknowledged`)
    results['randwrite-ack'] = await against('randwrite-ack', workload(QUEUE_DEPTH, BLOCK, async (w) => await g.writeBlock(vol, randomBlock(), small[w] as Uint8Array, WriteConcern.WriteAcknowledged)))
    await g.flush()
    if (backend === 'memory') {
      // It cannot survive a crash, so it refuses WriteDurable rather than pretend.
      skipped['randwrite-durable'] = 'n/a (no durable sync)'
    } else {
      log(`${backend}: 4 KiB random writeBlock, WriteDurable`)
      const before = g.journalStats()
      const storeBefore = await g.getStorageStats()
      results['randwrite-durable'] = await against('randwrite-durable', workload(QUEUE_DEPTH, BLOCK, async (w) => await g.writeBlock(vol, randomBlock(), small[w] as Uint8Array, WriteConcern.WriteDurable)))
      const after = g.journalStats()
      const storeAfter = await g.getStorageStats()
      // Deltas over the whole run, warmup included: each durable writeBlock is one journal entry.
      const syncs = storeAfter.syncs - storeBefore.syncs
      const entries = after.lastLsn - before.lastLsn
      journal = {
        backend,
        journalEntries: entries,
        storeBatches: after.groups - before.groups,
        syncs,
        entriesPerSync: syncs === 0 ? NaN : entries / syncs
      }
    }
    log(`${backend}: 1 MiB sequential read()`)
    let readOffset = 0
    results['seqread-1m'] = await against('seqread-1m', workload(1, BIG, async () => {
      await g.read(vol, readOffset, BIG)
      readOffset = (readOffset + BIG) % SPAN
    }))
    log(`${backend}: 4 KiB random readBlock, default (no engine cache)`)
    results['randread-nocache'] = await against('randread-nocache', workload(QUEUE_DEPTH, BLOCK, async () => await g.readBlock(vol, randomBlock())))
  } finally {
    await g.close()
  }

  g = await openInstance(2048)
  try {
    const vol = backend === 'memory' ? await prefill(g) : (await g.getVolume('bench')).id
    log(`${backend}: 4 KiB random readBlock, cacheBlocks 2048`)
    results['randread-cache'] = await against('randread-cache', workload(QUEUE_DEPTH, BLOCK, async () => await g.readBlock(vol, randomBlock())))
  } finally {
    await g.close()
  }
  return { results, journal, skipped }
}

// ------------------------------------------------------------------------------------------------
// Report

function log (message: string): void {
  process.stderr.write(`  … ${message}\n`)
}

function fmt (value: number | undefined, digits = 0): string {
  if (value === undefined || !Number.isFinite(value)) return 'n/a'
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

async function main (): Promise<void> {
  const parent = process.env.BENCH_DIR ?? tmpdir()
  await mkdir(parent, { recursive: true })
  const directory = await mkdtemp(join(parent, 'galleon-bench-'))
  const fsType = (await statfs(directory)).type
  const startedAt = new Date()
  console.log(`\n## End-to-end benchmark\n`)
  console.log(`Node ${process.version}, ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${SECONDS} s per case and per baseline (half before, half after), each after ${WARMUP_SECONDS} s warmup, data in ${directory}`)
  if (fsType === TMPFS_MAGIC) console.log('WARNING: the benchmark directory is on tmpfs, where fdatasync costs nothing; set BENCH_DIR to a directory on a real disk.')

  const backends: Record<string, BackendRun> = {}
  try {
    const raw = await openRawFile(directory)
    try {
      for (const backend of BACKENDS) {
        try {
          backends[backend] = await measureBackend(backend, directory, raw)
        } catch (err) {
          backends[backend] = { results: {}, error: err instanceof Error ? `${(err as { code?: string }).code ?? err.name}: ${err.message}` : String(err) }
          log(`${backend}: failed: ${backends[backend].error}`)
        }
      }
    } finally {
      await raw.close()
    }
  } finally {
    await rm(directory, { recursive: true, force: true })
  }

  const rows: Array<Record<string, unknown>> = []
  console.log('')
  console.log('| case | backend | GalleonFS ops/s | GalleonFS MB/s | baseline | baseline ops/s | baseline MB/s | ratio | target | result |')
  console.log('|---|---|---:|---:|---|---:|---:|---:|---:|---|')
  for (const id of Object.keys(CASES) as CaseId[]) {
    const info = CASES[id]
    for (const backend of BACKENDS) {
      const run = backends[backend] as BackendRun
      const result = run.results[id]?.mine
      const baseline = run.results[id]?.base
      const ratio = result === undefined || baseline === undefined ? NaN : result.opsPerSec / baseline.opsPerSec
      let verdict = info.target === undefined ? '—' : ratio >= info.target ? 'PASS' : 'BELOW'
      // The memory backend does no disk I/O: its ratio against a disk baseline is shown, not judged.
      if (backend === 'memory' && info.target !== undefined) verdict = `(${verdict})`
      if (result === undefined) verdict = run.error === undefined ? run.skipped?.[id] ?? 'not run' : `error: ${run.error}`
      console.log(`| ${info.title} | ${backend} | ${fmt(result?.opsPerSec)} | ${fmt(result?.mbPerSec, 1)} | ${info.baseline} | ${fmt(baseline?.opsPerSec)} | ${fmt(baseline?.mbPerSec, 1)} | ${Number.isFinite(ratio) ? `${fmt(ratio, 2)}×` : 'n/a'} | ${info.target === undefined ? '—' : `≥ ${info.target}×`} | ${verdict} |`)
      rows.push({
        case: id,
        title: info.title,
        backend,
        opsPerSec: result?.opsPerSec ?? null,
        mbPerSec: result?.mbPerSec ?? null,
        ops: result?.ops ?? null,
        baseline: CASE_BASELINE[id],
        baselineTitle: info.baseline,
        baselineOpsPerSec: baseline?.opsPerSec ?? null,
        baselineMbPerSec: baseline?.mbPerSec ?? null,
        ratio: Number.isFinite(ratio) ? ratio : null,
        target: info.target ?? null,
        pass: info.target === undefined || !Number.isFinite(ratio) ? null : ratio >= info.target,
        error: run.error ?? null
      })
    }
  }

  const journals = BACKENDS.map((backend) => backends[backend]?.journal).filter((j): j is JournalDelta => j !== undefined)
  console.log('\nGroup commit during the WriteDurable run (journalStats() and getStorageStats() deltas):\n')
  console.log('| backend | journal entries | store batches | device syncs | entries per sync |')
  console.log('|---|---:|---:|---:|---:|')
  for (const j of journals) {
    console.log(`| ${j.backend} | ${fmt(j.journalEntries)} | ${fmt(j.storeBatches)} | ${fmt(j.syncs)} | ${fmt(j.entriesPerSync, 1)} |`)
  }

  await mkdir(fileURLToPath(new URL('./results/', import.meta.url)), { recursive: true })
  await writeFile(RESULTS_FILE, JSON.stringify({
    date: startedAt.toISOString(),
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? null,
    seconds: SECONDS,
    warmupSeconds: WARMUP_SECONDS,
    queueDepth: QUEUE_DEPTH,
    spanBytes: SPAN,
    directoryOnTmpfs: fsType === TMPFS_MAGIC,
    results: rows,
    journal: journals
  }, null, 2) + '\n')
  console.log(`\nResults written to ${RESULTS_FILE}`)
}

await main()
