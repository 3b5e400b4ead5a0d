// Crash test of the file block store's spares made in advance (backends/file/spares.ts): a child
// process (this file, run with GALLEON_SPARE_CRASH_CHILD=1) fills a store with more than a segment of
// live data, then makes durable writes one at a time, which makes the store write a spare of zeros
// in advance; the test kills the child with SIGKILL at a random moment after that file appears
// (often while it is half-written), reopens the store, checks every acknowledged write, then writes
// on until the log rolls into the next segment (made from what the kill left of the spare), and
// checks everything again after another reopen.
//
// Env: GALLEON_CRASH_TRIALS (the trials are a fifth of it, at least 4), GALLEON_CRASH_SEED.

import { spawn } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { FileBlockStore } from '../../backends/file/index.js'
import { isAppendedSegment, parseSegmentFileName } from '../../backends/file/segment.js'
import { addr, assertBytes, bytesOf, put, seededRandom } from '../conformance/fixtures.js'
import { childOrTests, readChildLines, reportLine, trialCount } from './support.js'
import { scriptArgs } from '../support/child-script.js'

const SEGMENT_BYTES = 16 * 1024 * 1024
const STORE_OPTIONS = { segmentBytes: SEGMENT_BYTES, compactionThreshold: 0 }
/** Blocks of 4 KiB in volume 9 written first: with their headers, more live bytes than a segment. */
const FILL_BLOCKS = 4200
const PREPARED = /^spare-f[0-9a-f]{15}\.log$/
/** Blocks of 4 KiB in volume 2 written after the reopen, enough to roll into the next segment. */
const ROLL_BLOCKS = 4608

function fillValue (index: number): Uint8Array { return bytesOf(4096, 1_000_000 + index) }
function durableValue (seq: number): Uint8Array { return bytesOf(1024, seq) }
function rollValue (index: number): Uint8Array { return bytesOf(4096, 2_000_000 + index) }

async function childMain (): Promise<void> {
  const [location] = process.argv.slice(2) as [string]
  const store = new FileBlockStore({ location, ...STORE_OPTIONS })
  await store.open()
  for (let first = 0; first < FILL_BLOCKS; first += 64) {
    await store.batch(Array.from({ length: Math.min(64, FILL_BLOCKS - first) }, (_, i) => put(addr(9, first + i), fillValue(first + i))))
  }
  await store.sync()
  reportLine('L')
  const seen = new Set<string>()
  setInterval(() => {
    for (const name of readdirSync(location)) {
      if (PREPARED.test(name) && !seen.has(name)) { seen.add(name); reportLine(`P ${name}`) }
    }
  }, 1)
  for (let seq = 1; ; seq++) {
    reportLine(`B ${seq}`)
    await store.batch([put(addr(1, seq), durableValue(seq))], { sync: true })
    reportLine(`A ${seq}`)
  }
}

interface Run { filled: boolean, spareSeen: boolean, issued: number, acked: number, killedByUs: boolean, stderr: string, error: string | undefined }

/** Runs the child until it has begun a spare and `delayMs` more have passed, then kills it. */
async function runChild (location: string, delayMs: number): Promise<Run> {
  const child = spawn(process.execPath, [...scriptArgs(fileURLToPath(import.meta.url)), location], {
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
    env: { ...process.env, GALLEON_SPARE_CRASH_CHILD: '1' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const run: Run = { filled: false, spareSeen: false, issued: 0, acked: 0, killedByUs: false, stderr: '', error: undefined }
  const kill = (): void => { run.killedByUs = true; child.kill('SIGKILL') }
  // No spare within a minute of durable writes: killed, and the test fails on spareSeen.
  const deadline = setTimeout(kill, 60_000)
  const exit = await readChildLines(child, (line) => {
    const [kind, value] = line.split(' ')
    if (kind === 'L') run.filled = true
    else if (kind === 'B') run.issued = Number(value)
    else if (kind === 'A') run.acked = Number(value)
    else if (kind === 'P' && !run.spareSeen) { run.spareSeen = true; setTimeout(kill, delayMs) }
    else if (kind === 'error') run.error = line
  })
  clearTimeout(deadline)
  run.stderr = exit.stderr
  return run
}

/** Checks the fill, every acknowledged durable write (and any later one that is there), and the roll blocks if `rolled`. */
async function check (store: FileBlockStore, run: Run, rolled: boolean, what: string): Promise<void> {
  for (let i = 0; i < FILL_BLOCKS; i++) assertBytes(await store.get(addr(9, i)), fillValue(i), `${what}: fill block ${i}`)
  for (let seq = 1; seq <= run.issued; seq++) {
    const value = await store.get(addr(1, seq))
    if (seq <= run.acked || value !== undefined) assertBytes(value, durableValue(seq), `${what}: durable write ${seq} (acknowledged up to ${run.acked})`)
  }
  if (rolled) for (let i = 0; i < ROLL_BLOCKS; i++) assertBytes(await store.get(addr(2, i)), rollValue(i), `${what}: block ${i} written after the reopen`)
}

async function registerTests (): Promise<void> {
  const { describe, it } = await import('node:test')
  const assert: typeof import('node:assert/strict') = (await import('node:assert/strict')).default
  const trials = Math.max(4, Math.ceil(trialCount() / 5))
  const baseSeed = process.env.GALLEON_CRASH_SEED !== undefined ? Number(process.env.GALLEON_CRASH_SEED) : Math.floor(Math.random() * 0x7fffffff)

  describe('file block store: spares made in advance under SIGKILL', () => {
    it(`${trials} kill -9 trials while a spare is made keep every acknowledged write, and the next segment made from what is left works`, async (t) => {
      const random = seededRandom(baseSeed)
      const totals = { whole: 0, partial: 0, none: 0, reused: 0 }
      for (let trial = 0; trial < trials; trial++) {
        const location = await mkdtemp(join(tmpdir(), 'galleon-spare-crash-'))
        let passed = false
        try {
          // Writing the 16 MiB of zeros takes some tens of milliseconds: kills land before, inside and after it.
          const delayMs = Math.floor(random() * 50)
          const run = await runChild(location, delayMs)
          const where = `trial ${trial + 1}/${trials} (seed ${baseSeed}, kill ${delayMs} ms after the spare appeared)`
          assert.ok(run.killedByUs && run.error === undefined, `${where}: the child failed: ${run.error ?? ''}\n${run.stderr}`)
          assert.ok(run.filled && run.spareSeen, `${where}: durable writes made no spare in advance (filled: ${run.filled}; ${run.acked} acknowledged)`)
          const left = (await readdir(location)).filter((name) => PREPARED.test(name))
          const leftInodes = new Set<number>()
          for (const name of left) leftInodes.add((await stat(join(location, name))).ino)
          for (const name of left) {
            if ((await stat(join(location, name))).size === SEGMENT_BYTES) totals.whole++
            else totals.partial++
          }
          if (left.length === 0) totals.none++

          let store = new FileBlockStore({ location, ...STORE_OPTIONS })
          await store.open()
          await check(store, run, false, `${where}, after recovery`)
          const before = new Set((await readdir(location)).filter((name) => name.startsWith('seg-')))
          for (let first = 0; first < ROLL_BLOCKS; first += 64) {
            await store.batch(Array.from({ length: 64 }, (_, i) => put(addr(2, first + i), rollValue(first + i))), { sync: first % 1024 === 0 })
          }
          await store.close()
          const made = (await readdir(location)).filter((name) => name.startsWith('seg-') && name.endsWith('.log') && !before.has(name))
          assert.ok(made.length > 0, `${where}: the log rolled into a new segment`)
          if (left.length > 0) {
            // The spare the kill left (whole or not) became that segment (the same file), salted as a
            // file of zeros: past what was written it reads as zeros, as a file created empty does.
            const fromSpare: string[] = []
            for (const name of made) if (leftInodes.has((await stat(join(location, name))).ino)) fromSpare.push(name)
            assert.equal(fromSpare.length, 1, `${where}: the new segment ${made.join(', ')} was made from the spare ${left.join(', ')}`)
            const salt = parseSegmentFileName(fromSpare[0] as string)?.salt
            assert.ok(salt !== undefined && isAppendedSegment(salt), `${where}: ${fromSpare[0] as string} is salted as a file of zeros`)
            totals.reused++
          }
          store = new FileBlockStore({ location, ...STORE_OPTIONS })
          await store.open()
          await check(store, run, true, `${where}, after the roll and a reopen`)
          await store.close()
          passed = true
        } finally {
          if (passed) await rm(location, { recursive: true, force: true })
          else process.stderr.write(`spare crash test storage kept at ${location}\n`)
        }
      }
      t.diagnostic(`${trials} trials (seed ${baseSeed}): spares left by the kill: ${totals.whole} whole, ${totals.partial} half-written, ${totals.none} trials with none; ${totals.reused} became the next segment`)
    })
  })
}

await childOrTests('GALLEON_SPARE_CRASH_CHILD', childMain, registerTests)
