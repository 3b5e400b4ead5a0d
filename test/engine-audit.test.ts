// Audit of the block engine's integrity and crash-recovery promises (README: Write concerns,
// Integrity and crash recovery; DESIGN.md §3 Durability and Integrity), end to end through GalleonFS
// on the file and level backends:
//   - SIGKILL of a child (crash/engine-audit-child.ts) running a seeded plan of writes of every shape
//     (single blocks, short blocks, unaligned multi-block writes, zero writes, trims, writes across
//     an online expansion, writes to a clone and to a volume with snapshots taken and deleted,
//     volumes created and deleted); after each kill every volume and snapshot must read, byte for
//     byte, as the plan left it after its last acknowledged operation, or after the one in flight
//     (all or nothing per call), with space accounted and nothing of a deleted volume left;
//   - SIGKILL at fixed points of a volume deletion and a snapshot deletion (the child's scenarios):
//     after reopen the deletion is finished, its space reclaimed, nothing deleted readable again;
//   - damaged stored blocks (file segment bytes, level values) are CHECKSUM_MISMATCH with an event,
//     never data, and scrub reports each one;
//   - WriteAcknowledged writes survive close().

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { appendFile, mkdtemp, open, readFile, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ClassicLevel } from 'classic-level'
import { GalleonFS, WriteConcern, isGalleonError } from '../src/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { LevelBlockStore } from '../backends/level/index.js'
import type { BlockStore } from '../src/drivers.js'
import { BLOCK, MAX_BYTES, SCENARIO_BLOCKS, START_BYTES, TMP_WRITE_BYTES, VOLUMES, dataOf, planFor, tmpData, tmpMarker, type Op, type VolumeName } from './crash/engine-audit-child.js'
import { killAfterReady } from './crash/support.js'
import { mix32 } from './conformance/fixtures.js'

const CHILD = fileURLToPath(new URL('./crash/engine-audit-child.ts', import.meta.url))
type Backend = 'file' | 'level'
/** Tiny segments, compacted early: segments seal, hints, compaction and spare files all happen under the kill. */
const FILE_OPTIONS = { segmentBytes: 256 * 1024, compactionThreshold: 0.5 }
const BLOCKS = MAX_BYTES / BLOCK

async function tempDir (): Promise<string> {
  return await mkdtemp(join(tmpdir(), 'galleon-engine-audit-'))
}

function openG (storagePath: string, backend: Backend): Promise<GalleonFS> {
  return GalleonFS.open({ storagePath, backend, ...(backend === 'file' ? { backendOptions: FILE_OPTIONS } : {}) })
}

// ------------------------------------------------------------------------------------------------
// The model: what each volume and snapshot holds after a prefix of its plan

interface Image { bytes: Uint8Array, size: number, versions: Float64Array }
interface VolumeState extends Image { snapshots: Map<string, Image> }

const INITIAL_VERSION = 1e9

/** What `base` (and so `clone`) holds before the children start. */
function baseImage (): Uint8Array {
  return dataOf({ length: START_BYTES, seed: 0x5eed })
}

function initialState (volume: VolumeName): VolumeState {
  const state: VolumeState = { bytes: new Uint8Array(MAX_BYTES), size: START_BYTES, versions: new Float64Array(BLOCKS), snapshots: new Map() }
  if (volume === 'base' || volume === 'clone') {
    state.bytes.set(baseImage())
    state.versions.fill(INITIAL_VERSION, 0, START_BYTES / BLOCK)
  }
  return state
}

function copyImage (image: Image): Image {
  return { bytes: image.bytes.slice(0, image.size), size: image.size, versions: image.versions.slice() }
}

function applyOp (state: VolumeState, op: Op, n: number): void {
  const version = n + 1
  const touch = (offset: number, length: number, wholeBlocksUnmap: boolean): void => {
    for (let b = Math.floor(offset / BLOCK); b <= Math.floor((offset + length - 1) / BLOCK); b++) {
      const whole = offset <= b * BLOCK && offset + length >= (b + 1) * BLOCK
      if (!wholeBlocksUnmap) state.versions[b] = version
      else if (whole) state.versions[b] = 0
      // A partial trim rewrites the block only where it holds data (own or a clone source's).
      else if (state.versions[b] !== 0) state.versions[b] = version
    }
  }
  switch (op.kind) {
    case 'write':
      state.bytes.set(dataOf(op), op.offset)
      touch(op.offset, op.length, false)
      break
    case 'writeBlock':
      state.bytes.fill(0, op.index * BLOCK, (op.index + 1) * BLOCK)
      state.bytes.set(dataOf(op), op.index * BLOCK)
      state.versions[op.index] = version
      break
    case 'trim':
      state.bytes.fill(0, op.offset, op.offset + op.length)
      touch(op.offset, op.length, true)
      break
    case 'expand':
      state.size = op.sizeBytes
      break
    case 'snapshot':
      state.snapshots.set(op.name, copyImage(state))
      break
    case 'deleteSnapshot':
      state.snapshots.delete(op.name)
      break
    case 'flush':
      break
  }
}

/** State after the first `count` operations of the plan. */
function stateAfter (plan: readonly Op[], volume: VolumeName, count: number): VolumeState {
  const state = initialState(volume)
  for (let n = 0; n < count; n++) applyOp(state, plan[n] as Op, n)
  return state
}

/** Blocks the live view stores and data versions kept only for snapshots, as the engine should count them. */
function expectedUsage (state: VolumeState): { live: number, held: number } {
  let live = 0
  const held = new Set<string>()
  for (let b = 0; b < state.size / BLOCK; b++) if (state.versions[b] !== 0) live++
  for (const snapshot of state.snapshots.values()) {
    for (let b = 0; b < snapshot.size / BLOCK; b++) {
      const version = snapshot.versions[b] as number
      if (version !== 0 && version !== state.versions[b]) held.add(`${b}:${version}`)
    }
  }
  return { live, held: held.size }
}

// ------------------------------------------------------------------------------------------------
// Checking a reopened storage against the model

interface Observed { size: number, bytes: Uint8Array, snapshots: Map<string, Uint8Array>, usage: { live: number, held: number } }

async function observe (g: GalleonFS, volume: string): Promise<Observed> {
  const { sizeBytes } = await g.getVolume(volume)
  const bytes = await g.read(volume, 0, sizeBytes)
  const snapshots = new Map<string, Uint8Array>()
  for (const snapshot of await g.listSnapshots(volume)) {
    snapshots.set(snapshot.name, await g.read({ volume, snapshot: snapshot.name }, 0, snapshot.sizeBytes))
  }
  const usage = await g.getVolumeUsageDetails(volume)
  return { size: sizeBytes, bytes, snapshots, usage: { live: usage.liveBytes / BLOCK, held: usage.snapshotBytes / BLOCK } }
}

function firstDifference (a: Uint8Array, b: Uint8Array): string {
  if (a.byteLength !== b.byteLength) return `${a.byteLength} bytes where ${b.byteLength} were expected`
  for (let i = 0; i < a.byteLength; i++) {
    if (a[i] !== b[i]) return `byte ${i} (block ${Math.floor(i / BLOCK)}) is ${a[i]}, expected ${b[i]}`
  }
  return ''
}

/** Why `seen` is not `state` ('' when it is). */
function mismatch (seen: Observed, state: VolumeState, volume: VolumeName): string {
  if (seen.size !== state.size) return `size ${seen.size}, expected ${state.size}`
  const live = firstDifference(seen.bytes, state.bytes.subarray(0, state.size))
  if (live !== '') return `live view: ${live}`
  const names = [...state.snapshots.keys()].sort().join(',')
  if ([...seen.snapshots.keys()].filter((name) => volume !== 'base' || name !== 'origin').sort().join(',') !== names) {
    return `snapshots [${[...seen.snapshots.keys()].sort().join(',')}], expected [${names}]`
  }
  for (const [name, image] of state.snapshots) {
    const diff = firstDifference(seen.snapshots.get(name) as Uint8Array, image.bytes)
    if (diff !== '') return `snapshot ${name}: ${diff}`
  }
  if (volume === 'plain' || volume === 'snapped') {
    const usage = expectedUsage(state)
    if (seen.usage.live !== usage.live || seen.usage.held !== usage.held) {
      return `usage: ${seen.usage.live} live blocks and ${seen.usage.held} kept for snapshots, expected ${usage.live} and ${usage.held}`
    }
  }
  return ''
}

/** Per worker, from the child's lines: operations acknowledged, and whether one more was issued. */
function progress (lines: readonly string[]): Map<string, { acked: number, inFlight: boolean }> {
  const result = new Map<string, { acked: number, inFlight: boolean }>()
  for (const line of lines) {
    const [word, volume, nText] = line.split(' ') as [string, string, string]
    if (word !== 'I' && word !== 'A') continue
    const n = Number(nText)
    const entry = result.get(volume) ?? { acked: 0, inFlight: false }
    if (word === 'I') {
      assert.equal(n, entry.acked, `${volume}: operation ${n} issued before ${entry.acked - 1} resolved`)
      entry.inFlight = true
    } else {
      assert.equal(n, entry.acked, `${volume}: operation ${n} resolved out of order`)
      entry.acked = n + 1
      entry.inFlight = false
    }
    result.set(volume, entry)
  }
  return result
}

/** Every stored value's payload (engine header stripped) of a block store opened on its own. */
async function storedPayloads (storagePath: string, backend: Backend, fileOptions: object = FILE_OPTIONS): Promise<Uint8Array[]> {
  const store: BlockStore = backend === 'file'
    ? new FileBlockStore({ location: join(storagePath, 'blocks'), ...fileOptions })
    : new LevelBlockStore({ location: join(storagePath, 'blocks-level') })
  await store.open()
  try {
    const payloads: Uint8Array[] = []
    for await (const address of store.addresses()) {
      const value = await store.get(address)
      if (value !== undefined) payloads.push(value.subarray(8))
    }
    return payloads
  } finally {
    await store.close()
  }
}

async function setUp (storagePath: string, backend: Backend): Promise<void> {
  const g = await openG(storagePath, backend)
  try {
    for (const name of ['plain', 'snapped', 'base'] as const) await g.createVolume({ name, sizeBytes: START_BYTES })
    await g.write('base', 0, baseImage(), WriteConcern.WriteDurable)
    await g.createSnapshot('base', 'origin')
    await g.cloneVolume({ volume: 'base', snapshot: 'origin' }, 'clone')
  } finally {
    await g.close()
  }
}

/** The newest segment file of a file store (where a crash leaves its torn tail). */
async function activeSegment (storagePath: string): Promise<string> {
  const names = (await readdir(join(storagePath, 'blocks'))).filter((name) => /^seg-[0-9a-f]{16}(-[0-9a-f]+)?\.log$/.test(name)).sort()
  return join(storagePath, 'blocks', names[names.length - 1] as string)
}

/** The newest write-ahead log of a LevelDB directory. */
async function newestLevelLog (dir: string): Promise<string> {
  const names = (await readdir(dir)).filter((name) => /^\d+\.log$/.test(name)).sort((a, b) => parseInt(a) - parseInt(b))
  return join(dir, names[names.length - 1] as string)
}

interface TrialResult { acked: Record<string, number>, inFlight: string[] }

async function crashTrial (backend: Backend, seed: number, killDelayMs: number, tail: 'none' | 'zeros' | 'garbage'): Promise<TrialResult> {
  const storagePath = await tempDir()
  let keep = true
  try {
    await setUp(storagePath, backend)
    const run = await killAfterReady(CHILD, [storagePath, backend, String(seed), ...(backend === 'file' ? [JSON.stringify(FILE_OPTIONS)] : [])], killDelayMs)
    const failed = run.lines.find((line) => line.startsWith('error'))
    assert.equal(failed, undefined, `the child failed: ${failed ?? ''}\n${run.exit.stderr}`)
    assert.ok(run.killed && run.exit.signal === 'SIGKILL', `the child was to be killed, but ended with ${run.exit.code ?? run.exit.signal}: ${run.exit.stderr}`)
    if (tail !== 'none') {
      // What a crash can leave past the last write: zeros or garbage at the end of the active
      // segment (file), of LevelDB's newest log (level).
      const file = backend === 'file' ? await activeSegment(storagePath) : await newestLevelLog(join(storagePath, 'blocks-level'))
      await appendFile(file, tail === 'zeros' ? new Uint8Array(3000) : randomBytes(3000))
    }
    const done = progress(run.lines)
    const problems: string[] = []
    const g = await openG(storagePath, backend)
    const existing = new Set<string>()
    try {
      for (const volume of VOLUMES) {
        const plan = planFor(seed, volume)
        const { acked, inFlight } = done.get(volume) ?? { acked: 0, inFlight: false }
        const seen = await observe(g, volume)
        const before = mismatch(seen, stateAfter(plan, volume, acked), volume)
        if (before === '') continue
        const after = inFlight ? mismatch(seen, stateAfter(plan, volume, acked + 1), volume) : before
        if (after === '') continue
        problems.push(`${volume}: after ${acked} acknowledged operation(s)${inFlight ? ` and ${JSON.stringify(plan[acked])} in flight` : ''}: ${before}${inFlight ? `; with it applied: ${after}` : ''}`)
      }
      // The short-lived volumes: created, written and deleted in turn.
      const tmp = done.get('tmp') ?? { acked: 0, inFlight: false }
      for (const volume of await g.listVolumes()) {
        if (!volume.name.startsWith('tmp-')) continue
        existing.add(volume.name)
        const k = Number(volume.name.slice(4))
        const deleteOp = 3 * k + 2
        if (deleteOp < tmp.acked) problems.push(`${volume.name} is back after its deletion resolved`)
        const written = await g.read(volume.name, 0, TMP_WRITE_BYTES)
        const writeOp = 3 * k + 1
        const expected = writeOp < tmp.acked ? [tmpData(k)] : writeOp === tmp.acked && tmp.inFlight ? [tmpData(k), new Uint8Array(TMP_WRITE_BYTES)] : [new Uint8Array(TMP_WRITE_BYTES)]
        if (!expected.some((bytes) => firstDifference(written, bytes) === '')) problems.push(`${volume.name} reads ${firstDifference(written, expected[0] as Uint8Array)}`)
      }
      for (let k = 0; 3 * k < tmp.acked; k++) {
        const must = 3 * k + 2 >= tmp.acked + (tmp.inFlight ? 1 : 0)
        if (must && !existing.has(`tmp-${k}`)) problems.push(`tmp-${k} is gone, but its deletion was never issued`)
      }
      for (const volume of [...VOLUMES, ...existing]) {
        const report = await g.scrub(volume)
        for (const bad of report.badBlocks) problems.push(`scrub of ${volume}: block ${bad.index} ${bad.code} ${bad.message}`)
      }
    } finally {
      await g.close()
    }
    // Space of deleted volumes is reclaimed: no block of a tmp volume that is gone is left in the store.
    const leftovers = new Set<number>()
    for (const payload of await storedPayloads(storagePath, backend)) {
      const k = tmpMarker(payload)
      if (k !== undefined && !existing.has(`tmp-${k}`)) leftovers.add(k)
    }
    if (leftovers.size > 0) problems.push(`blocks of deleted volumes left in the store: tmp-${[...leftovers].join(', tmp-')}`)
    assert.deepEqual(problems, [], `backend ${backend}, seed ${seed}, kill ${killDelayMs} ms after ready, tail ${tail}; storage kept at ${storagePath}`)
    keep = false
    const acked: Record<string, number> = {}
    for (const [volume, entry] of done) acked[volume] = entry.acked
    return { acked, inFlight: [...done].filter(([, entry]) => entry.inFlight).map(([volume]) => volume) }
  } finally {
    if (!keep) await rm(storagePath, { recursive: true, force: true })
  }
}

describe('engine audit: kill -9 keeps every acknowledged operation, whole, and nothing else', () => {
  const trials: Array<[Backend, number, number, 'none' | 'zeros' | 'garbage']> = [
    ['file', 11, 150, 'none'],
    ['file', 12, 700, 'zeros'],
    ['file', 13, 1500, 'garbage'],
    ['level', 21, 150, 'none'],
    ['level', 22, 900, 'garbage']
  ]
  // GALLEON_AUDIT_TRIALS=n adds n more trials per backend (seeds and kill points vary), to hunt longer.
  const extra = Number(process.env.GALLEON_AUDIT_TRIALS ?? 0)
  for (let i = 0; i < extra; i++) {
    const tails = ['none', 'zeros', 'garbage'] as const
    trials.push(['file', 1000 + i, 80 + (i * 337) % 1900, tails[i % 3] as typeof tails[number]], ['level', 2000 + i, 80 + (i * 541) % 1900, tails[(i + 1) % 3] as typeof tails[number]])
  }
  for (const [backend, seed, delay, tail] of trials) {
    it(`${backend}, seed ${seed}, killed ${delay} ms in${tail === 'none' ? '' : `, ${tail} after the last record`}: every volume and snapshot reads as the plan after its acknowledged operations (or the one in flight)`, async (t) => {
      const result = await crashTrial(backend, seed, delay, tail)
      t.diagnostic(`acknowledged: ${JSON.stringify(result.acked)}; in flight: ${result.inFlight.join(', ')}`)
    })
  }
})

// ------------------------------------------------------------------------------------------------
// Damaged stored blocks

/** A block's bytes, different for every seed. */
function blockOf (seed: number): Uint8Array {
  return dataOf({ length: BLOCK, seed: mix32(seed) | 1 })
}

/** Where the payload `block` starts in the segment files of a file store: [file, offset] per copy. */
async function findInSegments (storagePath: string, block: Uint8Array): Promise<Array<[string, number]>> {
  const probe = Buffer.from(block.subarray(100, 164))
  const found: Array<[string, number]> = []
  const dir = join(storagePath, 'blocks')
  for (const name of (await readdir(dir)).filter((n) => n.endsWith('.log'))) {
    const bytes = await readFile(join(dir, name))
    for (let at = bytes.indexOf(probe); at >= 0; at = bytes.indexOf(probe, at + 1)) found.push([join(dir, name), at - 100])
  }
  return found
}

/** XORs `mask` into the byte at `offset` of a file, in place (the store's page cache sees it). */
async function flipByte (file: string, offset: number, mask = 0x10): Promise<void> {
  const handle = await open(file, 'r+')
  try {
    const one = new Uint8Array(1)
    await handle.read(one, 0, 1, offset)
    one[0] = (one[0] as number) ^ mask
    await handle.write(one, 0, 1, offset)
  } finally {
    await handle.close()
  }
}

async function codeOf (attempt: Promise<unknown>): Promise<string> {
  try {
    await attempt
    return 'no error'
  } catch (err) {
    if (isGalleonError(err)) return err.code
    throw err
  }
}

/** Collects checksum:mismatch and io:error events of an instance. */
function recordEvents (g: GalleonFS): { mismatches: Array<{ volumeName: string, blockIndex: number }>, ioErrors: Array<{ operation: string, code: string }> } {
  const events = { mismatches: [] as Array<{ volumeName: string, blockIndex: number }>, ioErrors: [] as Array<{ operation: string, code: string }> }
  g.on('checksum:mismatch', (event) => { events.mismatches.push({ volumeName: event.volumeName, blockIndex: event.blockIndex }) })
  g.on('io:error', (event) => { events.ioErrors.push({ operation: event.operation, code: event.code }) })
  return events
}

describe('engine audit: damaged blocks are reported, never returned', () => {
  it('file store: bytes flipped in segment files while open fail reads with CHECKSUM_MISMATCH and an event; scrub lists each damaged version once; partial writes over one fail', async () => {
    const storagePath = await tempDir()
    try {
      const g = await GalleonFS.open({ storagePath })
      const events = recordEvents(g)
      await g.createVolume({ name: 'v', sizeBytes: 64 * BLOCK })
      for (let index = 0; index < 8; index++) await g.writeBlock('v', index, blockOf(100 + index), WriteConcern.WriteDurable)
      // Block 5's first version is kept only for the snapshot.
      await g.createSnapshot('v', 'before')
      await g.writeBlock('v', 5, blockOf(200), WriteConcern.WriteDurable)

      // Damage: a payload byte of block 2, the engine header (its crc) of block 3, a payload byte
      // of the snapshot's version of block 5.
      const [[file2, at2]] = await findInSegments(storagePath, blockOf(102)) as [[string, number]]
      await flipByte(file2, at2 + 1000)
      const [[file3, at3]] = await findInSegments(storagePath, blockOf(103)) as [[string, number]]
      await flipByte(file3, at3 - 8 + 1)
      const [[file5, at5]] = await findInSegments(storagePath, blockOf(105)) as [[string, number]]
      await flipByte(file5, at5 + 4095)

      assert.equal(await codeOf(g.readBlock('v', 2)), 'CHECKSUM_MISMATCH')
      assert.equal(await codeOf(g.read('v', 3 * BLOCK + 10, 20)), 'CHECKSUM_MISMATCH')
      assert.equal(await codeOf(g.read('v', 0, 8 * BLOCK)), 'CHECKSUM_MISMATCH')
      assert.equal(await codeOf(g.read({ volume: 'v', snapshot: 'before' }, 5 * BLOCK, BLOCK)), 'CHECKSUM_MISMATCH')
      // A read-modify-write of a damaged block fails instead of writing damage back as valid data.
      assert.equal(await codeOf(g.write('v', 2 * BLOCK + 7, Uint8Array.of(1, 2, 3), WriteConcern.WriteDurable)), 'CHECKSUM_MISMATCH')
      assert.equal(await codeOf(g.trim('v', 3 * BLOCK, 100)), 'CHECKSUM_MISMATCH')
      assert.ok(events.mismatches.some((e) => e.blockIndex === 2 && e.volumeName === 'v'))
      assert.ok(events.mismatches.some((e) => e.blockIndex === 3))
      assert.ok(events.mismatches.some((e) => e.blockIndex === 5))
      assert.ok(events.ioErrors.some((e) => e.operation === 'read' && e.code === 'CHECKSUM_MISMATCH'))
      // Undamaged blocks read as written, the live block 5 too.
      assert.deepEqual(await g.readBlock('v', 4), blockOf(104))
      assert.deepEqual(await g.readBlock('v', 5), blockOf(200))
      assert.deepEqual(await g.read('v', 6 * BLOCK, 2 * BLOCK), new Uint8Array([...blockOf(106), ...blockOf(107)]))

      events.mismatches.length = 0
      const report = await g.scrub('v')
      assert.equal(report.blocksChecked, 9)
      assert.deepEqual(report.badBlocks.map((bad) => [bad.index, bad.code]).sort(), [[2, 'CHECKSUM_MISMATCH'], [3, 'CHECKSUM_MISMATCH'], [5, 'CHECKSUM_MISMATCH']])
      assert.deepEqual(events.mismatches.map((e) => e.blockIndex).sort(), [2, 3, 5])
      // A whole-block write gives the live view a good version; the damaged one is still what the
      // snapshot reads, and scrub still lists it, until the snapshot goes with both damaged versions it kept.
      await g.writeBlock('v', 2, blockOf(300), WriteConcern.WriteDurable)
      assert.deepEqual(await g.readBlock('v', 2), blockOf(300))
      assert.equal(await codeOf(g.readBlock({ volume: 'v', snapshot: 'before' }, 2)), 'CHECKSUM_MISMATCH')
      assert.deepEqual((await g.scrub('v')).badBlocks.map((bad) => bad.index).sort(), [2, 3, 5])
      await g.deleteSnapshot('v', 'before')
      assert.deepEqual((await g.scrub('v')).badBlocks.map((bad) => bad.index), [3])
      await g.close()
    } finally {
      await rm(storagePath, { recursive: true, force: true })
    }
  })

  it('file store: a damaged record header (the address it names) fails the read with CORRUPTION and an event, and scrub lists it', async () => {
    const storagePath = await tempDir()
    try {
      const g = await GalleonFS.open({ storagePath })
      const events = recordEvents(g)
      await g.createVolume({ name: 'v', sizeBytes: 64 * BLOCK })
      for (let index = 0; index < 4; index++) await g.writeBlock('v', index, blockOf(700 + index), WriteConcern.WriteDurable)
      const [[file, at]] = await findInSegments(storagePath, blockOf(701)) as [[string, number]]
      // The record header (36 bytes) precedes the engine's 8-byte header; byte 20 is the low byte of the index.
      await flipByte(file, at - 8 - 36 + 20, 0x04)
      assert.equal(await codeOf(g.readBlock('v', 1)), 'CORRUPTION')
      assert.equal(await codeOf(g.read('v', 0, 4 * BLOCK)), 'CORRUPTION')
      assert.ok(events.mismatches.some((e) => e.blockIndex === 1))
      assert.ok(events.ioErrors.some((e) => e.code === 'CORRUPTION'))
      assert.deepEqual(await g.readBlock('v', 2), blockOf(702))
      assert.deepEqual((await g.scrub('v')).badBlocks.map((bad) => [bad.index, bad.code]), [[1, 'CORRUPTION']])
      await g.close()
    } finally {
      await rm(storagePath, { recursive: true, force: true })
    }
  })

  it('file store: damage in a sealed segment (not scanned at open, its hint is read) fails the read after a reopen', async () => {
    const storagePath = await tempDir()
    try {
      const options = { segmentBytes: 64 * 1024, compactionThreshold: 0 }
      let g = await GalleonFS.open({ storagePath, backend: 'file', backendOptions: options })
      await g.createVolume({ name: 'v', sizeBytes: 64 * BLOCK })
      for (let index = 0; index < 40; index++) await g.writeBlock('v', index, blockOf(400 + index), WriteConcern.WriteDurable)
      await g.close()
      const [[file, at]] = await findInSegments(storagePath, blockOf(401)) as [[string, number]]
      assert.notEqual(file, await activeSegment(storagePath), 'block 1 is in a sealed segment')
      await flipByte(file, at + 2000)
      g = await GalleonFS.open({ storagePath, backend: 'file', backendOptions: options })
      const events = recordEvents(g)
      assert.equal(await codeOf(g.readBlock('v', 1)), 'CHECKSUM_MISMATCH')
      assert.deepEqual(events.mismatches, [{ volumeName: 'v', blockIndex: 1 }])
      assert.deepEqual(await g.readBlock('v', 0), blockOf(400))
      assert.deepEqual((await g.scrub('v')).badBlocks.map((bad) => bad.index), [1])
      await g.close()
    } finally {
      await rm(storagePath, { recursive: true, force: true })
    }
  })

  it('level store: a flipped payload bit, a flipped checksum bit and a truncated value are CHECKSUM_MISMATCH with an event; scrub lists all three', async () => {
    const storagePath = await tempDir()
    try {
      let g = await GalleonFS.open({ storagePath, backend: 'level' })
      await g.createVolume({ name: 'v', sizeBytes: 64 * BLOCK })
      for (let index = 0; index < 6; index++) await g.writeBlock('v', index, blockOf(500 + index), WriteConcern.WriteDurable)
      await g.close()
      const db = new ClassicLevel<string, Uint8Array>(join(storagePath, 'blocks-level'), { keyEncoding: 'utf8', valueEncoding: 'view' })
      await db.open()
      const damage: Record<number, (value: Uint8Array) => Uint8Array> = {
        1: (value) => { const out = value.slice(); out[8 + 123] = (out[8 + 123] as number) ^ 0x01; return out },
        2: (value) => { const out = value.slice(); out[2] = (out[2] as number) ^ 0x80; return out },
        4: (value) => value.slice(0, 4)
      }
      let damaged = 0
      for await (const [key, value] of db.iterator()) {
        if (key.startsWith('~')) continue
        for (const [index, change] of Object.entries(damage)) {
          if (Buffer.from(value.subarray(8)).equals(Buffer.from(blockOf(500 + Number(index))))) {
            await db.put(key, change(value))
            damaged++
          }
        }
      }
      await db.close()
      assert.equal(damaged, 3)
      g = await GalleonFS.open({ storagePath, backend: 'level' })
      const events = recordEvents(g)
      for (const index of [1, 2, 4]) assert.equal(await codeOf(g.readBlock('v', index)), 'CHECKSUM_MISMATCH', `block ${index}`)
      assert.equal(await codeOf(g.read('v', 0, 6 * BLOCK)), 'CHECKSUM_MISMATCH')
      assert.deepEqual([...new Set(events.mismatches.map((e) => e.blockIndex))].sort(), [1, 2, 4])
      for (const index of [0, 3, 5]) assert.deepEqual(await g.readBlock('v', index), blockOf(500 + index))
      events.mismatches.length = 0
      const report = await g.scrub('v')
      assert.deepEqual(report.badBlocks.map((bad) => [bad.index, bad.code]).sort(), [[1, 'CHECKSUM_MISMATCH'], [2, 'CHECKSUM_MISMATCH'], [4, 'CHECKSUM_MISMATCH']])
      assert.deepEqual(events.mismatches.map((e) => e.blockIndex).sort(), [1, 2, 4])
      await g.close()
    } finally {
      await rm(storagePath, { recursive: true, force: true })
    }
  })
})

describe('engine audit: WriteAcknowledged', () => {
  for (const backend of ['file', 'level'] as const) {
    it(`${backend}: writes, trims and an expansion acknowledged without a sync survive close() and a reopen`, async () => {
      const storagePath = await tempDir()
      try {
        let g = await GalleonFS.open({ storagePath, backend })
        await g.createVolume({ name: 'v', sizeBytes: 16 * BLOCK })
        await g.write('v', 100, blockOf(600).subarray(0, 1000), WriteConcern.WriteAcknowledged)
        await g.write('v', BLOCK + 5, new Uint8Array([...blockOf(601), ...blockOf(602)]), WriteConcern.WriteAcknowledged)
        await g.expandVolume('v', 20 * BLOCK)
        await g.write('v', 15 * BLOCK + 1, new Uint8Array([...blockOf(603), ...blockOf(604)]), WriteConcern.WriteAcknowledged)
        await g.trim('v', 2 * BLOCK, BLOCK + 9)
        const expected = await g.read('v', 0, 20 * BLOCK)
        await g.close()
        g = await GalleonFS.open({ storagePath, backend })
        assert.equal((await g.getVolume('v')).sizeBytes, 20 * BLOCK)
        assert.equal(firstDifference(await g.read('v', 0, 20 * BLOCK), expected), '')
        assert.deepEqual((await g.scrub('v')).badBlocks, [])
        await g.close()
      } finally {
        await rm(storagePath, { recursive: true, force: true })
      }
    })
  }
})

describe('engine audit: kill -9 in the middle of deletions, then reopen: the space comes back and nothing deleted returns', () => {
  const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a).equals(Buffer.from(b))
  for (const backend of ['file', 'level'] as const) {
    for (const scenario of ['delete-stuck', 'delete-lost', 'snapshot-drop'] as const) {
      const what = {
        'delete-stuck': 'killed while the block store deletes the volume\'s blocks',
        'delete-lost': 'the store\'s delete lost (unsynced tombstones) after the catalog forgot the volume',
        'snapshot-drop': 'killed while the versions only a deleted snapshot kept are deleted'
      }[scenario]
      it(`${backend}: ${what}`, async () => {
        const storagePath = await tempDir()
        try {
          const newKept = new Uint8Array(SCENARIO_BLOCKS * BLOCK)
          const oldKept = new Uint8Array(SCENARIO_BLOCKS * BLOCK)
          for (let index = 0; index < SCENARIO_BLOCKS; index++) {
            newKept.set(dataOf({ length: BLOCK, seed: mix32(index + 500) | 1 }), index * BLOCK)
            oldKept.set(dataOf({ length: BLOCK, seed: mix32(index) | 1 }), index * BLOCK)
          }
          const run = await killAfterReady(CHILD, [storagePath, backend, `scenario:${scenario}`], 0)
          assert.ok(run.killed && run.exit.signal === 'SIGKILL' && run.lines.some((line) => line.startsWith('ready')), `the child was to reach its crash point: ${run.lines.join(' | ')} ${run.exit.stderr}`)
          const g = await GalleonFS.open({ storagePath, backend })
          try {
            const names = (await g.listVolumes()).map((volume) => volume.name).sort()
            assert.ok(sameBytes(await g.read('kept', 0, SCENARIO_BLOCKS * BLOCK), newKept))
            if (scenario === 'snapshot-drop') {
              assert.deepEqual(names, ['gone', 'kept'])
              assert.deepEqual(await g.listSnapshots('kept'), [])
              assert.equal((await g.getVolumeUsageDetails('kept')).snapshotBytes, 0)
            } else {
              // A deletion that started finishes: the volume does not come back half deleted.
              assert.deepEqual(names, ['kept'])
              assert.ok(sameBytes(await g.read({ volume: 'kept', snapshot: 's' }, 0, SCENARIO_BLOCKS * BLOCK), oldKept))
            }
            assert.deepEqual((await g.scrub('kept')).badBlocks, [])
          } finally {
            await g.close()
          }
          // What the store still holds: no block of the deleted volume, no version only the deleted snapshot kept.
          let goneBlocks = 0
          let snapshotOnly = 0
          for (const payload of await storedPayloads(storagePath, backend, {})) {
            if (tmpMarker(payload) !== undefined) goneBlocks++
            for (let index = 0; index < SCENARIO_BLOCKS; index++) {
              if (sameBytes(payload, oldKept.subarray(index * BLOCK, (index + 1) * BLOCK))) snapshotOnly++
            }
          }
          assert.equal(goneBlocks, scenario === 'snapshot-drop' ? SCENARIO_BLOCKS : 0, 'blocks of volume gone in the store')
          assert.equal(snapshotOnly, scenario === 'snapshot-drop' ? 0 : SCENARIO_BLOCKS, 'versions kept for snapshot s in the store')
        } finally {
          await rm(storagePath, { recursive: true, force: true })
        }
      })
    }
  }
})
