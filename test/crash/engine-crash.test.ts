// Crash test of the whole I/O path: child processes (crash-child.ts) write through GalleonFS and are
// killed with SIGKILL at random moments; after each kill the storage is reopened here and every
// acknowledged write, every checksum and the atomicity of multi-block writes are verified.
//
// Env: GALLEON_CRASH_TRIALS (trials per backend; default 50, 25 when CI=true),
//      GALLEON_CRASH_SEED (base seed, default random; printed on failure),
//      GALLEON_CRASH_ACKNOWLEDGED=close to hold WriteAcknowledged writes only to what DESIGN.md
//      promises (durable once a later durable write or flush completes) instead of the default,
//      the WriteConcern doc: "survives close() and a process crash".
//
// Model. Every 512-byte sector of the volume is self-describing (crash-child.ts): it names its
// sector, the sequence number (seq) of the write that produced it and that write's whole sector
// range, and the rest is a pattern derived from those. Seqs grow in issue order and the engine
// applies operations on a block in issue order, so after recovery, for each sector:
//   1. it is zeros or a valid sector of this volume and place (never garbage, never a mix);
//   2. a valid sector's seq is the one it held after the previous verification (the baseline) or a
//      write issued since, covering it (nothing older comes back, trimmed data stays gone);
//   3. if the newest *ensured* event covering it is a write with seq S, it holds seq >= S, or zeros
//      if a trim with seq > S was issued; if it is a trim with seq T, it holds zeros or seq > T;
//   4. a write found anywhere (seq Y) landed as a whole: every sector it covered holds seq >= Y,
//      or zeros with a trim of that block issued after Y. This checks multi-block atomicity and
//      torn blocks (a block version is all-or-nothing);
// plus: open succeeds, scrub() finds no bad block, and allocated blocks are exactly the blocks
// holding data (trimmed blocks are unmapped). Ensured events: WriteDurable acknowledgements; other
// acknowledgements (WriteAcknowledged writes, trims) when a durable write or flush issued after them
// completed; and, under the default contract, every acknowledged WriteAcknowledged write and trim.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS } from '../../src/index.js'
import {
  BLOCK_BYTES, SECTORS_PER_BLOCK, SECTOR_BYTES, VOLUME_BLOCKS, VOLUME_BYTES, VOLUME_NAME, VOLUME_SECTORS,
  decodeSector, seededRandom, volumeTag, type DecodedSector
} from './crash-child.js'
import { readChildLines, trialCount } from './support.js'
import { bundledScriptArgs } from '../support/child-bundle.js'

const BACKENDS = ['file', 'level'] as const
type Backend = typeof BACKENDS[number]

const TRIALS = trialCount()
const STRICT_ACKNOWLEDGED = process.env.GALLEON_CRASH_ACKNOWLEDGED !== 'close'
const BASE_SEED = process.env.GALLEON_CRASH_SEED !== undefined ? Number(process.env.GALLEON_CRASH_SEED) : Math.floor(Math.random() * 0x7fffffff)
const CHILD = fileURLToPath(new URL('./crash-child.ts', import.meta.url))
const ROOT = fileURLToPath(new URL('../..', import.meta.url))
/** Seqs of one child run lie in [runIndex * SEQ_STRIDE, (runIndex + 1) * SEQ_STRIDE). */
const SEQ_STRIDE = 1 << 24
/** A child that prints nothing useful for this long is killed and the trial fails. */
const CHILD_DEADLINE_MS = 60_000
const MAX_REPORTED_VIOLATIONS = 25

// ------------------------------------------------------------------------------------------------
// Running one child

interface ChildRun {
  lines: string[]
  /** How the child ended. */
  code: number | null
  signal: NodeJS.Signals | null
  /** True when this test killed it (as planned). */
  killedByUs: boolean
  stderr: string
  /** Where the kill was aimed: during open/recovery, or during writes. */
  killPhase: 'open' | 'writes'
  killDelayMs: number
  timedOut: boolean
}

async function runChild (storagePath: string, backend: Backend, seqBase: number, seed: number, killPhase: 'open' | 'writes', killDelayMs: number): Promise<ChildRun> {
  const child = spawn(process.execPath, [...await bundledScriptArgs(CHILD), storagePath, backend, String(seqBase), String(seed)], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const run: ChildRun = { lines: [], code: null, signal: null, killedByUs: false, stderr: '', killPhase, killDelayMs, timedOut: false }
  let killTimer: NodeJS.Timeout | undefined
  const kill = (): void => {
    if (run.killedByUs || child.exitCode !== null || child.signalCode !== null) return
    run.killedByUs = true
    child.kill('SIGKILL')
  }
  const deadline = setTimeout(() => { run.timedOut = true; kill() }, CHILD_DEADLINE_MS)
  const onLine = (line: string): void => {
    run.lines.push(line)
    if (killTimer !== undefined) return
    if ((killPhase === 'open' && line === 'opening') || (killPhase === 'writes' && line.startsWith('ready '))) {
      killTimer = setTimeout(kill, killDelayMs)
    }
  }
  const exit = await readChildLines(child, onLine)
  run.code = exit.code
  run.signal = exit.signal
  run.stderr = exit.stderr
  clearTimeout(deadline)
  if (killTimer !== undefined) clearTimeout(killTimer)
  // A line without its newline cannot exist (short pipe writes are atomic), but keep it visible.
  if (exit.partial !== undefined) run.lines.push(`partial ${exit.partial}`)
  return run
}

// ------------------------------------------------------------------------------------------------
// What the children did, as the verifier needs it

interface IssuedWrite {
  readonly seq: number
  readonly first: number
  readonly count: number
  readonly durable: boolean
  /** 'b' writeBlock, 'r' byte-range write(). */
  readonly kind: 'b' | 'r'
}

/** Everything issued and ensured since the last verification (one or more child runs). */
class TrialModel {
  readonly writes = new Map<number, IssuedWrite>()
  readonly trims = new Map<number, number>()
  /** Per sector: newest ensured write seq (the baseline counts as ensured), 0 for none. */
  readonly ensuredWrite: Float64Array
  /** Per block: newest ensured trim seq, 0 for none. */
  readonly ensuredTrim = new Float64Array(VOLUME_BLOCKS)
  /** Why each ensured seq is ensured, for messages. */
  readonly ensuredWhy = new Map<number, string>()
  readonly notes: string[] = []
  durableAcks = 0
  acknowledgedAcks = 0

  constructor (readonly baseline: Float64Array, readonly maxTrimIssued: Float64Array) {
    this.ensuredWrite = baseline.slice()
  }

  /** Folds one child's report into the model. Returns a protocol problem, if any. */
  absorb (lines: readonly string[]): string | undefined {
    // Acknowledged (resolved) ops in order; a durable op made every op acknowledged before its
    // issue durable once it resolves, because the journal applies batches in order and a synced
    // batch syncs all earlier ones.
    const acknowledged: number[] = []
    const barrier = new Map<number, number>()
    const durablyAcked: number[] = []
    let ensuredPrefix = 0
    for (const line of lines) {
      const parts = line.split(' ')
      const word = parts[0]
      const seq = Number(parts[1])
      switch (word) {
        case 'opening':
          break
        case 'ready':
          break
        case 'W': {
          const write: IssuedWrite = { seq, first: Number(parts[2]), count: Number(parts[3]), durable: parts[4] === 'D', kind: parts[5] === 'r' ? 'r' : 'b' }
          this.writes.set(seq, write)
          if (write.durable) barrier.set(seq, acknowledged.length)
          break
        }
        case 'T': {
          const block = Number(parts[2])
          this.trims.set(seq, block)
          if (seq > (this.maxTrimIssued[block] as number)) this.maxTrimIssued[block] = seq
          break
        }
        case 'F':
          barrier.set(seq, acknowledged.length)
          break
        case 'ack': {
          const ackSeq = Number(parts[2])
          acknowledged.push(ackSeq)
          durablyAcked.push(ackSeq)
          this.durableAcks++
          ensuredPrefix = Math.max(ensuredPrefix, barrier.get(ackSeq) ?? 0)
          break
        }
        case 'acka':
        case 'trimmed':
          acknowledged.push(Number(parts[2]))
          if (word === 'acka') this.acknowledgedAcks++
          break
        case 'flushed':
          ensuredPrefix = Math.max(ensuredPrefix, barrier.get(seq) ?? 0)
          break
        case 'error':
          return `child reported an error: ${line.slice(6)}`
        default:
          return `unexpected line from child: ${JSON.stringify(line)}`
      }
    }
    for (const seq of durablyAcked) this.#ensure(seq, 'acknowledged with WriteDurable')
    for (let i = 0; i < acknowledged.length; i++) {
      const seq = acknowledged[i] as number
      if (i < ensuredPrefix) this.#ensure(seq, 'acknowledged, then a durable write or flush issued after it completed')
      else if (STRICT_ACKNOWLEDGED) this.#ensure(seq, 'acknowledged; WriteAcknowledged is documented to survive a process crash')
    }
    return undefined
  }

  #ensure (seq: number, why: string): void {
    if (this.ensuredWhy.has(seq)) return
    const write = this.writes.get(seq)
    if (write !== undefined) {
      this.ensuredWhy.set(seq, `${write.kind === 'b' ? 'writeBlock' : 'write()'} of sectors ${write.first}..${write.first + write.count - 1}, ${why}`)
      for (let s = write.first; s < write.first + write.count; s++) {
        if (seq > (this.ensuredWrite[s] as number)) this.ensuredWrite[s] = seq
      }
      return
    }
    const block = this.trims.get(seq)
    if (block !== undefined) {
      this.ensuredWhy.set(seq, `trim of block ${block}, ${why}`)
      if (seq > (this.ensuredTrim[block] as number)) this.ensuredTrim[block] = seq
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Verification

interface FoundSector { seq: number, first: number, count: number }

function describeFound (found: DecodedSector): string {
  if (found.kind === 'zero') return 'zeros'
  if (found.kind === 'garbage') return `garbage (${found.reason})`
  return `seq ${found.seq} (write of sectors ${found.first}..${found.first + found.count - 1})`
}

/**
 * Violations found in sectors, merged per block: one sector of a lost 4 KiB write is as telling as
 * eight, so each message is kept once per block with the sectors it applies to.
 */
class SectorViolations {
  readonly #byKey = new Map<string, { block: number, sectors: number[], text: string }>()

  add (sector: number, text: string): void {
    const block = Math.floor(sector / SECTORS_PER_BLOCK)
    const key = `${block}\n${text}`
    const entry = this.#byKey.get(key)
    if (entry === undefined) this.#byKey.set(key, { block, sectors: [sector % SECTORS_PER_BLOCK], text })
    else entry.sectors.push(sector % SECTORS_PER_BLOCK)
  }

  render (): string[] {
    return [...this.#byKey.values()].map(({ block, sectors, text }) => {
      const span = sectors.length === 1 ? `sector ${sectors[0]}` : `sectors ${sectors.join(',')}`
      return `block ${block} ${span} (volume sector ${block * SECTORS_PER_BLOCK + (sectors[0] as number)}): ${text}`
    })
  }
}

/** Reads every sector of the volume; returns what each holds. */
async function readVolume (g: GalleonFS, tag: number, violations: string[]): Promise<DecodedSector[]> {
  const sectors: DecodedSector[] = new Array(VOLUME_SECTORS)
  const chunkBytes = 1024 * 1024
  for (let offset = 0; offset < VOLUME_BYTES; offset += chunkBytes) {
    let bytes: Uint8Array | undefined
    try {
      bytes = await g.read(VOLUME_NAME, offset, chunkBytes)
    } catch {
      // Find the failing block(s) one by one so the message names them.
      bytes = new Uint8Array(chunkBytes)
      for (let block = offset / BLOCK_BYTES; block < (offset + chunkBytes) / BLOCK_BYTES; block++) {
        try {
          bytes.set(await g.readBlock(VOLUME_NAME, block), block * BLOCK_BYTES - offset)
        } catch (err) {
          violations.push(`block ${block}: read failed after recovery: ${(err as { code?: string }).code ?? ''} ${(err as Error).message}`)
          bytes.fill(0xee, block * BLOCK_BYTES - offset, (block + 1) * BLOCK_BYTES - offset)
        }
      }
    }
    for (let at = 0; at < chunkBytes; at += SECTOR_BYTES) {
      const sector = (offset + at) / SECTOR_BYTES
      sectors[sector] = decodeSector(bytes, at, tag, sector)
    }
  }
  return sectors
}

/** Checks rules 1-4 (see the top of the file); returns the new baseline. */
function checkSectors (sectors: readonly DecodedSector[], model: TrialModel, violations: string[]): Float64Array {
  const { baseline, ensuredWrite, ensuredTrim, maxTrimIssued } = model
  const landed = new Map<number, FoundSector>()
  const bad = new SectorViolations()
  for (let s = 0; s < VOLUME_SECTORS; s++) {
    const found = sectors[s] as DecodedSector
    const block = Math.floor(s / SECTORS_PER_BLOCK)
    // Rule 1: zeros or a valid sector.
    if (found.kind === 'garbage') {
      bad.add(s, `expected a valid sector or zeros, found ${describeFound(found)}`)
      continue
    }
    // Rule 2: only the baseline version or a write issued since may be there.
    if (found.kind === 'data' && found.seq !== baseline[s]) {
      const issued = model.writes.get(found.seq)
      if (issued === undefined) {
        bad.add(s, `stale or resurrected data — expected the version verified last time (${baseline[s] === 0 ? 'zeros' : `seq ${baseline[s]}`}) or a write issued since, found ${describeFound(found)}`)
        continue
      }
      if (issued.first !== found.first || issued.count !== found.count) {
        bad.add(s, `found ${describeFound(found)}, but that write was issued for sectors ${issued.first}..${issued.first + issued.count - 1}`)
        continue
      }
    }
    if (found.kind === 'data' && !landed.has(found.seq)) landed.set(found.seq, { seq: found.seq, first: found.first, count: found.count })
    // Rule 3: the newest ensured event must be visible.
    const mustWrite = ensuredWrite[s] as number
    const mustTrim = ensuredTrim[block] as number
    if (mustWrite > mustTrim) {
      const ok = found.kind === 'data' ? found.seq >= mustWrite : (maxTrimIssued[block] as number) > mustWrite
      if (!ok) {
        bad.add(s, `lost write — expected seq >= ${mustWrite} (${model.ensuredWhy.get(mustWrite) ?? 'the version verified in the previous trial'})${found.kind === 'zero' ? ', and no trim of the block was issued after it' : ''}; found ${describeFound(found)}`)
      }
    } else if (mustTrim > 0 && found.kind === 'data' && found.seq <= mustTrim) {
      bad.add(s, `trimmed data came back — expected zeros or seq > ${mustTrim} (${model.ensuredWhy.get(mustTrim) ?? ''}); found ${describeFound(found)}`)
    }
  }
  // Rule 4: each landed write is whole (everything it covered holds it or something newer).
  for (const write of landed.values()) {
    const issued = model.writes.get(write.seq)
    const what = `write seq ${write.seq}${issued === undefined ? ' (verified last time)' : ` (${issued.kind === 'b' ? 'writeBlock' : 'write()'}, ${issued.durable ? 'WriteDurable' : 'WriteAcknowledged'})`} of sectors ${write.first}..${write.first + write.count - 1}`
    for (let s = write.first; s < write.first + write.count && s < VOLUME_SECTORS; s++) {
      const found = sectors[s] as DecodedSector
      if (found.kind === 'garbage') continue
      const ok = found.kind === 'data' ? found.seq >= write.seq : (maxTrimIssued[Math.floor(s / SECTORS_PER_BLOCK)] as number) > write.seq
      if (!ok) bad.add(s, `${what} landed only in part — expected seq >= ${write.seq} here, found ${describeFound(found)}`)
    }
  }
  violations.push(...bad.render())
  const next = new Float64Array(VOLUME_SECTORS)
  for (let s = 0; s < VOLUME_SECTORS; s++) {
    const found = sectors[s] as DecodedSector
    next[s] = found.kind === 'data' ? found.seq : 0
  }
  return next
}

/** Opens the storage as recovery would, runs every check, closes. Returns the new baseline. */
async function verify (storagePath: string, backend: Backend, tag: number, model: TrialModel, violations: string[]): Promise<Float64Array> {
  let g: GalleonFS
  try {
    g = await GalleonFS.open({ storagePath, backend })
  } catch (err) {
    violations.push(`open after the crash failed: ${(err as { code?: string }).code ?? ''} ${(err as Error).message}`)
    return model.baseline
  }
  try {
    const volume = await g.getVolume(VOLUME_NAME)
    if (volumeTag(volume.id) !== tag) violations.push(`volume ${VOLUME_NAME} has a new id after recovery: ${volume.id}`)
    const sectors = await readVolume(g, tag, violations)
    const next = checkSectors(sectors, model, violations)
    const scrub = await g.scrub(VOLUME_NAME)
    for (const bad of scrub.badBlocks) violations.push(`scrub: block ${bad.index} is bad: ${bad.code} ${bad.message}`)
    let dataBlocks = 0
    for (let block = 0; block < VOLUME_BLOCKS; block++) {
      for (let k = 0; k < SECTORS_PER_BLOCK; k++) {
        if ((sectors[block * SECTORS_PER_BLOCK + k] as DecodedSector).kind !== 'zero') { dataBlocks++; break }
      }
    }
    const usage = await g.getVolumeUsageDetails(VOLUME_NAME)
    if (usage.allocatedBlocks !== dataBlocks) {
      violations.push(`usage: ${usage.allocatedBlocks} blocks allocated but ${dataBlocks} blocks hold data (a block that reads as zeros must be unmapped, since nothing writes zero blocks)`)
    }
    if (scrub.blocksChecked !== usage.allocatedBlocks) violations.push(`scrub checked ${scrub.blocksChecked} blocks but ${usage.allocatedBlocks} are allocated`)
    return next
  } finally {
    await g.close()
  }
}

// ------------------------------------------------------------------------------------------------
// The test

interface TrialSummary { runs: number, killedInOpen: number, durableAcks: number, acknowledgedAcks: number }

async function crashTrials (backend: Backend): Promise<TrialSummary> {
  const storagePath = await mkdtemp(join(tmpdir(), `galleon-crash-${backend}-`))
  const random = seededRandom(BASE_SEED ^ (backend === 'file' ? 0x1f11e : 0x1e7e1))
  const summary: TrialSummary = { runs: 0, killedInOpen: 0, durableAcks: 0, acknowledgedAcks: 0 }
  // Kept when the test fails, so the state that broke the invariants can be inspected.
  let passed = false
  try {
    const setup = await GalleonFS.open({ storagePath, backend })
    const tag = volumeTag((await setup.createVolume({ name: VOLUME_NAME, sizeBytes: VOLUME_BYTES })).id)
    await setup.close()

    let baseline: Float64Array = new Float64Array(VOLUME_SECTORS)
    const maxTrimIssued = new Float64Array(VOLUME_BLOCKS)
    let runIndex = 0
    for (let trial = 1; trial <= TRIALS; trial++) {
      const model = new TrialModel(baseline, maxTrimIssued)
      const violations: string[] = []
      // Usually one child per trial; sometimes a second one runs on the crashed state before we
      // verify, and may itself be killed while recovering (recovery of a crashed recovery).
      const runs = random() < 0.25 ? 2 : 1
      const runNotes: string[] = []
      for (let r = 0; r < runs; r++) {
        runIndex++
        const seed = Math.floor(random() * 0x7fffffff)
        const killPhase = random() < (r === 1 ? 0.5 : 0.1) ? 'open' : 'writes'
        const killDelayMs = killPhase === 'open' ? Math.floor(random() * 120) : 30 + Math.floor(random() * 371)
        const run = await runChild(storagePath, backend, runIndex * SEQ_STRIDE, seed, killPhase, killDelayMs)
        summary.runs++
        if (killPhase === 'open' && !run.lines.some((line) => line.startsWith('ready'))) summary.killedInOpen++
        runNotes.push(`run ${r + 1}/${runs}: seed ${seed}, kill ${killDelayMs} ms after ${killPhase === 'open' ? 'opening' : 'ready'}, ${run.lines.length} lines`)
        const problem = model.absorb(run.lines)
        if (problem !== undefined) violations.push(`run ${r + 1}: ${problem}`)
        if (run.timedOut) violations.push(`run ${r + 1}: the child did not reach the kill point within ${CHILD_DEADLINE_MS} ms`)
        else if (!run.killedByUs || run.signal !== 'SIGKILL') {
          violations.push(`run ${r + 1}: the child exited on its own (code ${run.code}, signal ${run.signal}) before the SIGKILL; stderr:\n${run.stderr.trim()}`)
        }
      }
      summary.durableAcks += model.durableAcks
      summary.acknowledgedAcks += model.acknowledgedAcks
      if (violations.length === 0) baseline = await verify(storagePath, backend, tag, model, violations)
      if (violations.length > 0) {
        const shown = violations.slice(0, MAX_REPORTED_VIOLATIONS).map((v) => `  - ${v}`).join('\n')
        assert.fail(
          `crash trial ${trial}/${TRIALS} on backend ${backend} found ${violations.length} violation(s)\n` +
          `  base seed ${BASE_SEED} (GALLEON_CRASH_SEED), ${runNotes.join('; ')}\n` +
          `  storage kept at ${storagePath}\n${shown}` +
          (violations.length > MAX_REPORTED_VIOLATIONS ? `\n  ... and ${violations.length - MAX_REPORTED_VIOLATIONS} more` : '')
        )
      }
    }
    passed = true
    return summary
  } finally {
    if (passed) await rm(storagePath, { recursive: true, force: true })
    else process.stderr.write(`crash test storage kept at ${storagePath}\n`)
  }
}

describe('crash consistency under SIGKILL', () => {
  for (const backend of BACKENDS) {
    it(`${backend} backend: ${TRIALS} kill -9 trials keep every ensured write, every checksum and write() atomicity`, async (t) => {
      const summary = await crashTrials(backend)
      t.diagnostic(`${backend}: ${summary.runs} child runs (${summary.killedInOpen} killed during open/recovery), ${summary.durableAcks} durable and ${summary.acknowledgedAcks} WriteAcknowledged acknowledgements checked; seed ${BASE_SEED}; WriteAcknowledged contract: ${STRICT_ACKNOWLEDGED ? 'process crash' : 'close()'}`)
    })
  }
})
