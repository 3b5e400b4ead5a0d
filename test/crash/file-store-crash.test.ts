// Crash test of the file block store alone, under constant compaction: a child process (this file,
// run with GALLEON_FILE_CRASH_CHILD=1) issues concurrent batches of puts and deletes (some synced,
// some not) and deleteVolume() calls on a store with tiny segments while compaction runs in a loop
// and multi-block reads relocate scattered records;
// the test kills it with SIGKILL (often right after a compaction pass started), reopens the store and
// checks the state against the batches the child issued.
//
// What engine-crash.test.ts does not cover: it drives the store through the engine with 64 MiB
// segments, so compaction, hint files and segment rolls barely happen there. Here they happen
// hundreds of times per run, and the check is exact for the store's own contract.
//
// Segment list (backends/file/segment-list.ts): every reopen must succeed whatever file a kill left
// between a roll or a compaction and the list, the list must name exactly the segment files after
// the clean close that follows, and a copy of the store with one segment file removed must refuse
// to open with CORRUPTION naming it (review r60: such a store used to open and read older data).
//
// Model. The store applies batches in call order and its log is append-only in that order, and
// compaction only copies current values forward, so after any crash the recovered state must be
// exactly the state after some prefix of the issued batches (in issue order): this is atomicity
// (no partial batch) and ordering in one check. The prefix must include every batch acknowledged
// before the kill: a batch resolves once the OS has its bytes (synced or not), which survives kill -9.
//
// Env: GALLEON_CRASH_TRIALS (default 50, 25 when CI=true), GALLEON_CRASH_SEED (base seed, default random).

import { spawn } from 'node:child_process'
import { cp, mkdtemp, open, readdir, rm, stat, unlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { FileBlockStore } from '../../backends/file/index.js'
import { SALTED_RECORD_MAGIC } from '../../backends/file/record.js'
import { isAppendedSegment, parseSegmentFileName } from '../../backends/file/segment.js'
import { readSegmentList } from '../../backends/file/segment-list.js'
import type { BlockAddress, BlockOp } from '../../src/drivers.js'
import { mix32, seededRandom } from '../conformance/fixtures.js'
import { childOrTests, readChildLines, reportLine, trialCount } from './support.js'
import { scriptArgs } from '../support/child-script.js'

const STORE_OPTIONS = { segmentBytes: 64 * 1024, compactionThreshold: 0.5, relocateScatteredReads: true }
/**
 * Keys: volume 1 has 100 blocks (the first 16 hot), volume 2 has 30 (deleted as a whole now and then),
 * volume 3 has 1000 cold blocks, rarely touched: they keep old segments mostly live (so not compacted)
 * while the tombstones of the few deleted ones sit in newer segments that are, which is where a
 * compaction dropping a still-needed tombstone would bring deleted blocks back.
 */
const VOLUME_KEYS: ReadonlyArray<readonly [number, number]> = [[1, 100], [2, 30], [3, 1000]]
const HOT_KEYS = 16
const WORKERS = 8
const VALUE_MAGIC = 0x56434647 // 'GFCV'
const VALUE_HEADER_BYTES = 20

function addressOf (volume: number, index: number): BlockAddress {
  return { volume, index, gen: index % 3 }
}

function keyOf (volume: number, index: number): string {
  return `${volume}/${index}`
}


/** The value of op `op` of batch `seq`, writing key (volume, index): self-describing, so a mix-up is visible. */
function valueOf (seq: number, op: number, volume: number, index: number, length: number): Uint8Array {
  const value = new Uint8Array(length)
  const view = new DataView(value.buffer)
  view.setUint32(0, VALUE_MAGIC, true)
  view.setUint32(4, seq, true)
  view.setUint32(8, op, true)
  view.setUint32(12, volume * 0x10000 + index, true)
  view.setUint32(16, length, true)
  let x = mix32(mix32(seq ^ 0x9e3779b9) ^ (op * 0x10001 + volume * 977 + index)) || 1
  for (let at = VALUE_HEADER_BYTES; at < length; at++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5
    value[at] = x & 0xff
  }
  return value
}

/** What a stored value says about itself: the batch and op that wrote it, or why it is garbage. */
function decodeValue (value: Uint8Array, volume: number, index: number): { seq: number, op: number, length: number } | string {
  if (value.byteLength < VALUE_HEADER_BYTES) return `value of ${value.byteLength} bytes is shorter than its header`
  const view = new DataView(value.buffer, value.byteOffset, value.byteLength)
  if (view.getUint32(0, true) !== VALUE_MAGIC) return 'no value magic'
  const seq = view.getUint32(4, true)
  const op = view.getUint32(8, true)
  if (view.getUint32(12, true) !== volume * 0x10000 + index) return `value of another key (seq ${seq})`
  if (view.getUint32(16, true) !== value.byteLength) return `value of seq ${seq} has ${value.byteLength} bytes, its header says ${view.getUint32(16, true)}`
  const expected = valueOf(seq, op, volume, index, value.byteLength)
  if (!Buffer.from(expected).equals(Buffer.from(value.buffer, value.byteOffset, value.byteLength))) return `value of seq ${seq} op ${op} differs from its pattern`
  return { seq, op, length: value.byteLength }
}


// ------------------------------------------------------------------------------------------------
// The child
//
// Protocol, one line each, written synchronously before the next operation is issued:
//   opening / ready                     around store.open()
//   B <seq> <S|N> <op>,<op>,...         batch issued (in the same tick as store.batch()); op is
//                                       p<volume>.<index>.<length> or d<volume>.<index>
//   V <seq> <volume>                    deleteVolume issued (in the same tick as the call)
//   A <seq>                             batch or deleteVolume resolved
//   c / C                               a compact() call started / ended


async function childMain (): Promise<void> {
  const [location, seqBaseText, seedText] = process.argv.slice(2)
  if (location === undefined || seqBaseText === undefined || seedText === undefined) throw new Error('usage: file-store-crash.test.ts <location> <seqBase> <seed>')
  const random = seededRandom(Number(seedText))
  let nextSeq = Number(seqBaseText)
  reportLine('opening')
  const store = new FileBlockStore({ location, ...STORE_OPTIONS })
  await store.open()
  reportLine('ready')

  const pickKey = (): readonly [number, number] => {
    const roll = random()
    if (roll < 0.5) return [1, Math.floor(random() * HOT_KEYS)]
    if (roll < 0.8) return [1, Math.floor(random() * 100)]
    if (roll < 0.92) return [2, Math.floor(random() * 30)]
    return [3, Math.floor(random() * 1000)]
  }

  async function worker (): Promise<void> {
    for (;;) {
      const roll = random()
      if (roll < 0.01) {
        const seq = nextSeq++
        reportLine(`V ${seq} 2`)
        await store.deleteVolume(2)
        reportLine(`A ${seq}`)
        continue
      }
      if (roll < 0.03) {
        await store.sync()
        continue
      }
      const seq = nextSeq++
      const ops: BlockOp[] = []
      const described: string[] = []
      const count = 1 + Math.floor(random() * 6)
      for (let op = 0; op < count; op++) {
        const [volume, index] = pickKey()
        if (random() < 0.25) {
          ops.push({ type: 'del', address: addressOf(volume, index) })
          described.push(`d${volume}.${index}`)
        } else {
          const length = random() < 0.05 ? 8192 + Math.floor(random() * 8192) : VALUE_HEADER_BYTES + Math.floor(random() * 3000)
          ops.push({ type: 'put', address: addressOf(volume, index), data: valueOf(seq, op, volume, index, length) })
          described.push(`p${volume}.${index}.${length}`)
        }
      }
      const sync = random() < 0.6
      reportLine(`B ${seq} ${sync ? 'S' : 'N'} ${described.join(',')}`)
      await store.batch(ops, { sync })
      reportLine(`A ${seq}`)
    }
  }

  async function compactor (): Promise<void> {
    for (;;) {
      reportLine('c')
      await store.compact()
      reportLine('C')
      await sleep(1)
    }
  }

  // Multi-block reads of ranges the workers scatter over the log: the store copies such records to
  // the end of the log (see backends/file/relocation.ts), which must never bring back an
  // overwritten or deleted value, nor lose one, whenever the kill comes. Every value read must be
  // the one its key was last given (self-describing values, checked here).
  async function reader (): Promise<void> {
    for (;;) {
      const [volume, count] = random() < 0.7 ? [1, 100] : [3, 64]
      const first = volume === 1 ? 0 : Math.floor(random() * (1000 - count))
      const addresses = Array.from({ length: count }, (_, i) => addressOf(volume, first + i))
      const values = await store.getMany(addresses)
      for (let i = 0; i < count; i++) {
        const value = values[i]
        if (value === undefined) continue
        const decoded = decodeValue(value, volume, first + i)
        if (typeof decoded === 'string') {
          reportLine(`error getMany read ${volume}/${first + i} wrong: ${decoded}`)
          process.exit(3)
        }
      }
      store.releaseValues(values)
      if (store.relocatedRecords !== relocated) reportLine(`r ${relocated = store.relocatedRecords}`)
      await sleep(1)
    }
  }
  let relocated = 0

  await Promise.all([...Array.from({ length: WORKERS }, worker), compactor(), reader()])
}

// ------------------------------------------------------------------------------------------------
// The test

/** A key's state: the batch and op whose put it holds, or undefined when absent. */
interface Written { seq: number, op: number, length: number }
type State = Map<string, Written | undefined>

type Event =
  | { kind: 'batch', seq: number, sync: boolean, ops: Array<{ key: string, put: Written | undefined }> }
  | { kind: 'deleteVolume', seq: number, volume: number }

interface ChildRun {
  events: Event[]
  acked: Set<number>
  /** compact() calls that completed. */
  compactCalls: number
  killedDuringCompaction: boolean
  killedByUs: boolean
  code: number | null
  signal: NodeJS.Signals | null
  stderr: string
  errorLine: string | undefined
  /** Records the child's reads relocated (its last report). */
  relocated: number
}

/** When to kill: a delay after open starts, after writes start, or just after a compact() call starts (once `delayMs` into the writes). */
type KillPlan = { phase: 'open', delayMs: number } | { phase: 'writes', delayMs: number } | { phase: 'compaction', delayMs: number, jitterMs: number }

async function runChild (location: string, seqBase: number, seed: number, plan: KillPlan): Promise<ChildRun> {
  const self = fileURLToPath(import.meta.url)
  const child = spawn(process.execPath, [...scriptArgs(self), location, String(seqBase), String(seed)], {
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
    env: { ...process.env, GALLEON_FILE_CRASH_CHILD: '1' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const run: ChildRun = {
    events: [], acked: new Set(), compactCalls: 0, killedDuringCompaction: false,
    killedByUs: false, code: null, signal: null, stderr: '', errorLine: undefined, relocated: 0
  }
  let compacting = false
  let waitingForCompaction = false
  let killTimer: NodeJS.Timeout | undefined
  const kill = (): void => {
    if (run.killedByUs || child.exitCode !== null || child.signalCode !== null) return
    run.killedByUs = true
    run.killedDuringCompaction = compacting
    child.kill('SIGKILL')
  }
  const deadline = setTimeout(kill, 30_000)
  const arm = (delayMs: number): void => { if (killTimer === undefined) killTimer = setTimeout(kill, delayMs) }
  const onLine = (line: string): void => {
    const [tag, a, b, c] = line.split(' ')
    switch (tag) {
      case 'opening': if (plan.phase === 'open') arm(plan.delayMs); break
      case 'ready':
        if (plan.phase === 'writes') arm(plan.delayMs)
        // A compact() call may wait behind background compaction: kill anyway if none starts soon.
        if (plan.phase === 'compaction') setTimeout(() => { waitingForCompaction = true; arm(100) }, plan.delayMs).unref()
        break
      case 'B': {
        const seq = Number(a)
        const ops = (c ?? '').split(',').map((text, op) => {
          const [volume, index, length] = text.slice(1).split('.').map(Number) as [number, number, number?]
          return { key: keyOf(volume, index), put: text[0] === 'p' ? { seq, op, length: length as number } : undefined }
        })
        run.events.push({ kind: 'batch', seq, sync: b === 'S', ops })
        break
      }
      case 'V': run.events.push({ kind: 'deleteVolume', seq: Number(a), volume: Number(b) }); break
      case 'A': run.acked.add(Number(a)); break
      case 'c':
        compacting = true
        if (plan.phase === 'compaction' && waitingForCompaction) {
          clearTimeout(killTimer)
          killTimer = setTimeout(kill, plan.jitterMs)
          waitingForCompaction = false
        }
        break
      case 'C':
        compacting = false
        run.compactCalls++
        break
      case 'r': run.relocated = Number(a); break
      case 'error': run.errorLine = line; break
    }
  }
  const exit = await readChildLines(child, onLine)
  run.code = exit.code
  run.signal = exit.signal
  run.stderr = exit.stderr + (exit.partial === undefined ? '' : `\n(partial stdout line: ${exit.partial})`)
  clearTimeout(deadline)
  if (killTimer !== undefined) clearTimeout(killTimer)
  return run
}

/** Segment files that are reused spares: their salt (in the name) says so, and they start with a salted record. */
async function reusedSegmentFiles (location: string): Promise<number> {
  let reused = 0
  for (const name of await readdir(location)) {
    const salt = parseSegmentFileName(name)?.salt
    if (salt === undefined || isAppendedSegment(salt)) continue
    const file = await open(join(location, name), 'r')
    try {
      const head = Buffer.alloc(4)
      const { bytesRead } = await file.read(head, 0, 4, 0)
      // An empty one (just made from a spare, or cut back to nothing by recovery) counts too.
      if (bytesRead === 0 || (bytesRead === 4 && head.readUInt32LE(0) === SALTED_RECORD_MAGIC)) reused++
    } finally {
      await file.close()
    }
  }
  return reused
}

function allKeys (): Array<{ key: string, volume: number, index: number }> {
  return VOLUME_KEYS.flatMap(([volume, count]) => Array.from({ length: count }, (_, index) => ({ key: keyOf(volume, index), volume, index })))
}

function same (a: Written | undefined, b: Written | undefined): boolean {
  return a === undefined ? b === undefined : b !== undefined && a.seq === b.seq && a.op === b.op && a.length === b.length
}

function show (w: Written | undefined): string {
  return w === undefined ? 'absent' : `seq ${w.seq} op ${w.op} (${w.length} bytes)`
}

/** Opens the store as recovery would and reads every key; problems go to `violations`. */
async function readState (location: string, violations: string[]): Promise<State | undefined> {
  const store = new FileBlockStore({ location, ...STORE_OPTIONS })
  try {
    await store.open()
  } catch (err) {
    violations.push(`open after the crash failed: ${(err as { code?: string }).code ?? ''} ${(err as Error).message}`)
    return undefined
  }
  try {
    const state: State = new Map()
    let blocks = 0
    let liveBytes = 0
    for (const { key, volume, index } of allKeys()) {
      let value: Uint8Array | undefined
      try {
        value = await store.get(addressOf(volume, index))
      } catch (err) {
        violations.push(`${key}: get failed: ${(err as { code?: string }).code ?? ''} ${(err as Error).message}`)
        continue
      }
      if (value === undefined) { state.set(key, undefined); continue }
      const decoded = decodeValue(value, volume, index)
      if (typeof decoded === 'string') { violations.push(`${key}: garbage: ${decoded}`); continue }
      state.set(key, decoded)
      blocks++
      liveBytes += decoded.length
    }
    const stats = await store.stats()
    if (stats.blocks !== blocks || stats.liveBytes !== liveBytes) {
      violations.push(`stats say ${stats.blocks} blocks / ${stats.liveBytes} live bytes, reads found ${blocks} / ${liveBytes}`)
    }
    let listed = 0
    for await (const address of store.addresses()) {
      listed++
      if (address.gen !== address.index % 3) violations.push(`addresses() lists unexpected ${address.volume}/${address.index}/${address.gen}`)
    }
    if (listed !== blocks) violations.push(`addresses() lists ${listed} blocks, reads found ${blocks}`)
    return state
  } finally {
    await store.close()
  }
}

function apply (state: State, event: Event, touched?: Set<string>): void {
  if (event.kind === 'batch') {
    for (const op of event.ops) { state.set(op.key, op.put); touched?.add(op.key) }
  } else {
    for (const [key] of state) {
      if (key.startsWith(`${event.volume}/`)) { state.set(key, undefined); touched?.add(key) }
    }
  }
}

/**
 * Finds a prefix of the run's events (at least through the last acknowledged batch) whose
 * application to `baseline` gives `recovered`; reports a violation if there is none.
 */
function checkPrefix (baseline: State, run: ChildRun, recovered: State, violations: string[]): void {
  const state: State = new Map(baseline)
  let lastAcked = -1
  for (const seq of run.acked) if (seq > lastAcked) lastAcked = seq
  let position = 0
  while (position < run.events.length && (run.events[position] as Event).seq <= lastAcked) apply(state, run.events[position++] as Event)
  const mismatched = new Set<string>()
  for (const [key, value] of recovered) if (!same(state.get(key), value)) mismatched.add(key)
  const atAcked = [...mismatched]
  let applied = position
  while (mismatched.size > 0 && applied < run.events.length) {
    const touched = new Set<string>()
    apply(state, run.events[applied++] as Event, touched)
    for (const key of touched) {
      if (same(state.get(key), recovered.get(key))) mismatched.delete(key)
      else mismatched.add(key)
    }
  }
  if (mismatched.size === 0) return
  const expected: State = new Map(baseline)
  for (let i = 0; i < position; i++) apply(expected, run.events[i] as Event)
  violations.push(`the recovered state is no prefix of the issued batches (${run.events.length} issued, last acknowledged seq ${lastAcked}); ` +
    `compared with the state after the last acknowledged batch: ` +
    atAcked.slice(0, 10).map((key) => `${key} holds ${show(recovered.get(key))}, expected ${show(expected.get(key))}`).join('; '))
}

/** The segment files in `location` that its segment list does not name, and those it names that are missing. */
async function listMismatch (location: string): Promise<{ unlisted: string[], missing: string[], problem: string | undefined }> {
  const present = (await readdir(location)).filter((name) => parseSegmentFileName(name) !== undefined)
  const list = await readSegmentList(location)
  if (list.kind !== 'listed') return { unlisted: present, missing: [], problem: `the segment list is ${list.kind}` }
  return { unlisted: present.filter((name) => !list.names.includes(name)), missing: list.names.filter((name) => !present.includes(name)), problem: undefined }
}

/**
 * On a copy of the (cleanly closed) store: removes one segment file, picked with `random`, and
 * checks that open refuses with CORRUPTION naming it, instead of reading older versions of the
 * blocks it held. Returns the problem, or undefined.
 */
async function missingSegmentProblem (location: string, random: () => number): Promise<string | undefined> {
  const copy = `${location}-copy`
  await rm(copy, { recursive: true, force: true })
  await cp(location, copy, { recursive: true })
  try {
    const names = (await readdir(copy)).filter((name) => parseSegmentFileName(name) !== undefined).sort()
    const victim = names[Math.floor(random() * names.length)] as string
    await unlink(join(copy, victim))
    const store = new FileBlockStore({ location: copy, ...STORE_OPTIONS })
    try {
      await store.open()
    } catch (err) {
      const { code, message } = err as { code?: string, message: string }
      if (code === 'CORRUPTION' && message.includes(victim)) return undefined
      return `open without ${victim} failed with ${code ?? ''} ${message}, not CORRUPTION naming it`
    }
    await store.close()
    return `open succeeded with segment file ${victim} (of ${names.length}) removed`
  } finally {
    await rm(copy, { recursive: true, force: true })
  }
}

async function registerTests (): Promise<void> {
  const { describe, it } = await import('node:test')
  const assert: typeof import('node:assert/strict') = (await import('node:assert/strict')).default
  const trials = trialCount()
  const baseSeed = process.env.GALLEON_CRASH_SEED !== undefined ? Number(process.env.GALLEON_CRASH_SEED) : Math.floor(Math.random() * 0x7fffffff)

  describe('file block store crash consistency under SIGKILL', () => {
    it(`${trials} kill -9 trials during writes and compaction keep every acknowledged batch and no partial one`, async (t) => {
      const location = await mkdtemp(join(tmpdir(), 'galleon-file-crash-'))
      const random = seededRandom(baseSeed)
      let passed = false
      const totals = { unlistedAfterKill: 0, missingChecked: 0, acked: 0, ackedSynced: 0, issued: 0, compactCalls: 0, killedInOpen: 0, killedDuringCompaction: 0, reusedSegments: 0, preparedSpares: 0, partialPreparedSpares: 0, relocated: 0 }
      try {
        let baseline: State = new Map(allKeys().map(({ key }) => [key, undefined]))
        let seqBase = 1
        for (let trial = 0; trial < trials; trial++) {
          const pick = random()
          const plan: KillPlan = pick < 0.1
            ? { phase: 'open', delayMs: Math.floor(random() * 40) }
            : pick < 0.55
              ? { phase: 'compaction', delayMs: 20 + Math.floor(random() * 300), jitterMs: Math.floor(random() * 4) }
              : { phase: 'writes', delayMs: 20 + Math.floor(random() * 300) }
          const seed = Math.floor(random() * 0x7fffffff)
          const run = await runChild(location, seqBase, seed, plan)
          const violations: string[] = []
          if (!run.killedByUs) violations.push(`the child ended by itself (code ${run.code}, signal ${run.signal}): ${run.errorLine ?? ''}\n${run.stderr}`)
          // Spares made in advance (zeros, see maybePrepareSpare) that the kill left, whole or half-written.
          for (const name of await readdir(location)) {
            if (!/^spare-f[0-9a-f]{15}\.log$/.test(name)) continue
            totals.preparedSpares++
            if ((await stat(join(location, name))).size < STORE_OPTIONS.segmentBytes) totals.partialPreparedSpares++
          }
          // Files between a roll or a compaction and the list (the kill cut one short), which open removes.
          totals.unlistedAfterKill += (await listMismatch(location)).unlisted.length
          const recovered = await readState(location, violations)
          if (recovered !== undefined) checkPrefix(baseline, run, recovered, violations)
          // After a clean close the list names exactly the segment files; and one of them gone is reported.
          const mismatch = await listMismatch(location)
          if (mismatch.problem !== undefined || mismatch.unlisted.length > 0 || mismatch.missing.length > 0) {
            violations.push(`after a clean close the segment list does not match the files: ${mismatch.problem ?? ''} unlisted ${mismatch.unlisted.join(',')}; missing ${mismatch.missing.join(',')}`)
          } else if (recovered !== undefined) {
            const problem = await missingSegmentProblem(location, random)
            if (problem !== undefined) violations.push(problem)
            totals.missingChecked++
          }
          if (violations.length > 0) {
            assert.fail(`trial ${trial + 1}/${trials} (seed ${baseSeed}, child seed ${seed}, kill plan ${JSON.stringify(plan)}): ` +
              `${violations.length} violation(s), storage kept at ${location}\n  ${violations.slice(0, 20).join('\n  ')}`)
          }
          baseline = recovered as State
          const maxSeq = run.events.reduce((max, event) => Math.max(max, event.seq), seqBase - 1)
          seqBase = maxSeq + 1
          totals.issued += run.events.length
          totals.acked += run.acked.size
          totals.ackedSynced += run.events.filter((event) => event.kind === 'batch' && event.sync && run.acked.has(event.seq)).length
          totals.compactCalls += run.compactCalls
          totals.relocated += run.relocated
          if (plan.phase === 'open') totals.killedInOpen++
          totals.reusedSegments += await reusedSegmentFiles(location)
          if (run.killedDuringCompaction) totals.killedDuringCompaction++
        }
        // Finally: a full compaction of what the crashes left, then a reopen, changes nothing.
        const store = new FileBlockStore({ location, ...STORE_OPTIONS })
        await store.open()
        await store.compact()
        await store.close()
        const violations: string[] = []
        const final = await readState(location, violations)
        assert.deepEqual(violations, [])
        for (const [key, value] of baseline) assert.ok(same(final?.get(key), value), `${key} after the final compaction: ${show(final?.get(key))}, expected ${show(value)}`)
        assert.ok(!(await readdir(location)).some((name) => name.endsWith('.tmp')), 'no temporary file is left after a clean close')
        // Segment ids are consecutive from 1, so the ones missing were compacted away.
        const ids = (await readdir(location)).map((name) => /^seg-([0-9a-f]{16})(?:-[0-9a-f]{8})?\.log$/.exec(name)).filter((m) => m !== null).map((m) => parseInt(m[1] as string, 16))
        const compactedAway = Math.max(...ids) - ids.length
        // Each run of a few hundred milliseconds writes dozens of segments: compaction must have been busy.
        if (totals.issued > 2000) assert.ok(compactedAway > 10, `only ${compactedAway} segments were compacted away while ${totals.issued} operations were issued`)
        // ... and emptied segment files must have been reused (salted), so recovery met their earlier contents.
        if (totals.issued > 2000) assert.ok(totals.reusedSegments > 0, 'no segment made from a spare file was found after any trial')
        // ... and the reads must have relocated records (unless the file system is too full for it).
        if (totals.issued > 2000) assert.ok(totals.relocated > 0, 'no read relocated any record')
        passed = true
        t.diagnostic(`${trials} trials (seed ${baseSeed}): ${totals.issued} operations issued, ${totals.acked} acknowledged batches checked (${totals.ackedSynced} synced), ` +
          `${totals.killedInOpen} kills aimed at open/recovery, ${totals.killedDuringCompaction} kills while compact() was running, ` +
          `${totals.compactCalls} compact() calls completed, ${compactedAway} of ${Math.max(...ids)} segments compacted away, ` +
          `${totals.relocated} records relocated by reads, ${totals.unlistedAfterKill} unlisted segment files found after a kill (removed by open), ${totals.missingChecked} copies opened without one segment file (each refused), ${totals.reusedSegments} segment files found reused, ${totals.preparedSpares} spares made in advance found after a kill (${totals.partialPreparedSpares} half-written) (summed over the trials)`)
      } finally {
        if (passed) await rm(location, { recursive: true, force: true })
        else process.stderr.write(`file store crash test storage kept at ${location}\n`)
      }
    })
  })
}

await childOrTests('GALLEON_FILE_CRASH_CHILD', childMain, registerTests)
