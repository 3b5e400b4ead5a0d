// The runner behind test/h64-control-plane-race.test.ts: seeded control-plane calls (volumes,
// snapshots, clones, reverts, backups, restores, key rotation, QoS, mounts, storage classes,
// backup policies) fired several at a time on one GalleonFS instance (file backend, directory
// backup target), some awaited late, some retried after errors, with block I/O in between. The
// model tracks, per block, the set of values a view may hold: a value is certain only where the
// outcome is (a write acknowledged with nothing else touching the block since it was called, a
// quiet read, a snapshot read once: snapshots never change). Every call must settle, fail only
// with a GalleonError of an expected code, and what succeeded must be there afterwards, also after
// close() (sometimes with calls still in flight) and a reopen.

import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../../src/index.js'
import { GalleonError } from '../../src/errors.js'
import { seededRandom } from '../../src/seeded-random.js'

const BLOCK = 4096
const START_BLOCKS = 6
const MAX_BLOCKS = 12
const NAMES = ['a', 'b', 'c', 'd', 'e', 'f']
const KNOWN_CODES = new Set(['VOLUME_NOT_FOUND', 'VOLUME_EXISTS', 'SNAPSHOT_NOT_FOUND', 'SNAPSHOT_EXISTS', 'BACKUP_NOT_FOUND', 'POLICY_NOT_FOUND', 'POLICY_EXISTS', 'HOOK_FAILED', 'CANCELLED', 'STORAGE_CLASS_NOT_FOUND', 'STORAGE_CLASS_EXISTS', 'POOL_NOT_FOUND', 'POOL_EXISTS', 'INVALID_ARGUMENT', 'PERMISSION_DENIED', 'OUT_OF_RANGE', 'READ_ONLY', 'CHECKSUM_MISMATCH', 'DECRYPTION_FAILED', 'WRITE_CONCERN_UNSATISFIED', 'NO_SPACE', 'BUSY', 'NOT_LEADER', 'NOT_OPEN', 'NOT_IMPLEMENTED', 'CORRUPTION', 'IO_ERROR', 'BACKEND_UNAVAILABLE'])
/** Codes that mean damage or a bug whatever the race: never acceptable here. */
const NEVER = new Set(['CHECKSUM_MISMATCH', 'DECRYPTION_FAILED', 'CORRUPTION', 'IO_ERROR', 'NOT_IMPLEMENTED', 'WRITE_CONCERN_UNSATISFIED', 'PERMISSION_DENIED', 'NOT_LEADER', 'BACKEND_UNAVAILABLE'])

type Values = Array<Set<string>>

interface MSnap { id: string, name: string, blocks: number, possible: Values, status: 'live' | 'deleting' | 'gone' }
interface MVol {
  id: string
  name: string
  encrypted: boolean
  storageClass: string
  /** Size in blocks: at most `blocks`, at least `minBlocks` (an expansion may be in flight). */
  blocks: number
  minBlocks: number
  possible: Values
  history: string[][]
  wEpoch: number[]
  winflight: number[]
  wholeInflight: number
  wholeEpoch: number
  /** VolumeFile writes in flight per block: when their write reaches the volume is not known, so no write certifies meanwhile. */
  fileInflight: number[]
  writeStarts: number
  status: 'live' | 'deleting' | 'gone' | 'doubt'
  deleteStarts: number
  snapshots: Map<string, MSnap>
  mounts: Map<string, 'mounted' | 'pending' | 'unmounting'>
  readOnlyMounts: Set<string>
  pool: string | undefined
}
interface MBackup { id: string, volumeId: string, blocks: number, possible: Values, status: 'live' | 'deleting' | 'gone' | 'doubt', policy: string | null, encrypted: boolean, about: string }

export interface RaceOptions {
  seed: number
  steps: number
  maxInFlight?: number
  closeWithCallsInFlight?: boolean
  /** 'backups': half the calls are backups, key rotations, forced deletes, clones, snapshots and writes of encrypted volumes (where seeds 50 and 230 lost data). */
  focus?: 'backups'
  log?: (line: string) => void
}
export interface RaceReport { calls: number, outcomes: Record<string, number>, problems: string[], log: string[] }

function tagBlock (tag: number): Uint8Array {
  const data = new Uint8Array(BLOCK).fill((tag * 31 + 7) & 0xff)
  new DataView(data.buffer).setUint32(0, 0x48363454, true)
  new DataView(data.buffer).setUint32(4, tag, true)
  return data
}
function decode (data: Uint8Array): string {
  if (data.every((b) => b === 0)) return 'Z'
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength)
  if (data.length >= 8 && view.getUint32(0, true) === 0x48363454) {
    const tag = view.getUint32(4, true)
    const fill = (tag * 31 + 7) & 0xff
    let ok = true
    for (let i = 8; i < data.length; i++) if (data[i] !== fill) { ok = false; break }
    if (ok) return `w${tag}`
  }
  return `?${Buffer.from(data.subarray(0, 12)).toString('hex')}`
}

const copyValues = (values: Values): Values => values.map((s) => new Set(s))
const show = (s: Set<string> | undefined): string => `{${[...(s ?? [])].join(',')}}`

export async function runRace (options: RaceOptions): Promise<RaceReport> {
  const random = seededRandom(options.seed)
  const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)] as T
  const chance = (p: number): boolean => random() < p
  const maxInFlight = options.maxInFlight ?? 6
  const log: string[] = []
  const problems: string[] = []
  const outcomes: Record<string, number> = {}
  const say = (line: string): void => { log.push(line); options.log?.(line) }
  const problem = (line: string): void => { problems.push(line); say(`PROBLEM ${line}`) }
  const unhandled = (reason: unknown): void => problem(`unhandled rejection: ${String((reason as Error)?.stack ?? reason)}`)
  process.on('unhandledRejection', unhandled)

  const dir = await mkdtemp(join(tmpdir(), 'galleon-h64-'))
  const storagePath = join(dir, 'data')
  const target = join(dir, 'backups')
  let g = await GalleonFS.open({ storagePath, backupTarget: target })
  let closing = false
  let tagSeq = 1
  let calls = 0
  let policyRuns = 0
  /** Calls that may delete backups other than the one they name (forced deleteBackup, policy runs' pruning). */
  const churn = { inFlight: 0, epoch: 0 }
  const churnMark = (): { inFlight: number, epoch: number } => ({ ...churn })
  const churnQuiet = (m: { inFlight: number, epoch: number }): boolean => m.inFlight === 0 && churn.inFlight === 0 && churn.epoch === m.epoch
  const vols = new Map<string, MVol>() // by id
  const backups = new Map<string, MBackup>()
  const classes = new Map<string, 'live' | 'pending' | 'deleting' | 'gone'>()
  /** Storage pools that exist or may (a create or delete under way). */
  const pools = new Map<string, 'live' | 'pending' | 'deleting'>()
  const policies = new Map<string, 'live' | 'pending' | 'deleting' | 'gone'>()
  /** Names a create, clone or restore is claiming now (count). */
  const claims = new Map<string, number>()
  const inFlight = new Set<Promise<void>>()

  /** Mostly a free name (so that calls do something), now and then one in use (to race for it). */
  const pickName = (): string => {
    const free = NAMES.filter((n) => !nameTaken(n))
    return free.length > 0 && chance(0.75) ? pick(free) : pick(NAMES)
  }
  const liveVols = (): MVol[] => [...vols.values()].filter((v) => v.status === 'live')
  const nameTaken = (name: string): boolean => (claims.get(name) ?? 0) > 0 || [...vols.values()].some((v) => v.name === name && v.status !== 'gone')

  function newVol (id: string, name: string, blocks: number, possible: Values, encrypted: boolean, storageClass: string, pool?: string): MVol {
    const v: MVol = {
      id, name, encrypted, storageClass, blocks, minBlocks: blocks, possible, history: possible.map((s) => [...s]),
      wEpoch: possible.map(() => 0), winflight: possible.map(() => 0), fileInflight: possible.map(() => 0), wholeInflight: 0, wholeEpoch: 0, writeStarts: 0,
      status: 'live', deleteStarts: 0, snapshots: new Map(), mounts: new Map(), readOnlyMounts: new Set(), pool
    }
    vols.set(id, v)
    return v
  }
  const mark = (v: MVol): { sets: Values, lens: number[], blocks: number } => ({ sets: copyValues(v.possible), lens: v.history.map((h) => h.length), blocks: v.blocks })
  function windowValues (v: MVol, m: { sets: Values, lens: number[] }, blocks: number): Values {
    const out: Values = []
    for (let b = 0; b < blocks; b++) {
      const set = new Set(m.sets[b] ?? ['Z'])
      for (const t of (v.history[b] ?? []).slice(m.lens[b] ?? 0)) set.add(t)
      out.push(set)
    }
    return out
  }
  function grow (v: MVol, blocks: number): void {
    while (v.possible.length < blocks) { v.possible.push(new Set(['Z'])); v.history.push(['Z']); v.wEpoch.push(0); v.winflight.push(0); v.fileInflight.push(0) }
    v.blocks = Math.max(v.blocks, blocks)
  }
  function addPossible (v: MVol, b: number, value: string): void {
    v.possible[b]?.add(value)
    v.history[b]?.push(value)
  }
  /** Starts a call that replaces the whole volume's content with one of `targetValues` (a revert, a restore into it). */
  function wholeBegin (v: MVol, targetValues: Values): { epoch: number, writes: number } {
    v.wholeInflight++
    v.wholeEpoch++
    for (let b = 0; b < v.possible.length; b++) {
      for (const t of targetValues[b] ?? ['Z']) addPossible(v, b, t)
      addPossible(v, b, 'Z')
    }
    return { epoch: v.wholeEpoch, writes: v.writeStarts }
  }
  function wholeEnd (v: MVol, started: { epoch: number, writes: number }, ok: boolean, targetValues: Values): void {
    v.wholeInflight--
    if (ok && v.wholeInflight === 0 && v.wholeEpoch === started.epoch && v.writeStarts === started.writes && v.winflight.every((n) => n === 0)) {
      for (let b = 0; b < v.possible.length; b++) v.possible[b] = new Set(b < targetValues.length ? targetValues[b] : ['Z'])
    }
  }

  /**
   * A call cut short by close() after it ran (only its audit entry could not be written): its
   * message says so (README: such a call rejects with the audit log's error). Names of volumes
   * that such a create, clone or restore may have made are kept, as they may be listed afterwards.
   */
  const ranAnyway = (err: unknown): boolean => err instanceof GalleonError && err.code === 'NOT_OPEN' && err.message.includes('the call itself ran')
  const madeUnreported = new Set<string>()
  /** Volumes (ids) a createBackup of which ran though it rejected so. */
  const backupsUnreported = new Set<string>()

  function checkError (op: string, err: unknown, allowed: readonly string[]): string {
    if (!(err instanceof GalleonError)) {
      problem(`${op}: rejected with a non-GalleonError: ${String((err as Error)?.stack ?? err)}`)
      return 'raw'
    }
    if (!KNOWN_CODES.has(err.code)) problem(`${op}: unknown code ${err.code}: ${err.message}`)
    if (typeof err.message !== 'string' || err.message.length < 15) problem(`${op}: ${err.code} with a message that says nothing: ${JSON.stringify(err.message)}`)
    if (NEVER.has(err.code)) problem(`${op}: ${err.code}: ${err.message}`)
    else if (err.code === 'NOT_OPEN' && !closing) problem(`${op}: NOT_OPEN while open: ${err.message}`)
    else if (!allowed.includes(err.code) && !(closing && (err.code === 'NOT_OPEN' || err.code === 'CANCELLED'))) problem(`${op}: unexpected ${err.code}: ${err.message}`)
    return err.code
  }

  /** Runs one call with a watchdog: it must settle (no time limit on success, only on hanging). */
  function start (label: string, task: () => Promise<void>): Promise<void> {
    const n = ++calls
    const name = `#${n} ${label}`
    say(`start ${name}`)
    let timer: NodeJS.Timeout | undefined
    const watchdog = new Promise<void>((resolve) => {
      timer = setTimeout(() => { problem(`${name}: did not settle within 60 s (hang)`); resolve() }, 60_000)
    })
    const run = task().then(() => { say(`done ${name}`) }, (err) => { problem(`${name}: the harness threw: ${String((err as Error)?.stack ?? err)}`) })
    const p: Promise<void> = Promise.race([run, watchdog]).finally(() => { clearTimeout(timer); inFlight.delete(p) })
    inFlight.add(p)
    return p
  }
  const count = (key: string): void => { outcomes[key] = (outcomes[key] ?? 0) + 1; say(`  = ${key}`) }

  // ---- the calls ------------------------------------------------------------------------------

  function opCreate (retry = 0): void {
    const name = pickName()
    const encrypted = chance(0.25)
    const cls = [...classes].filter(([, s]) => s === 'live' || s === 'deleting').map(([c]) => c)
    const storageClass = encrypted ? 'encrypted-storage' : (cls.length > 0 && chance(0.4) ? pick(cls) : 'fast-local-ssd')
    const expectFree = !nameTaken(name)
    const classSure = storageClass === 'encrypted-storage' || storageClass === 'fast-local-ssd' || classes.get(storageClass) === 'live'
    const pool = pools.has('p') && chance(0.5) ? 'p' : undefined
    claims.set(name, (claims.get(name) ?? 0) + 1)
    void start(`createVolume ${name} ${storageClass}${pool === undefined ? '' : ' pool ' + pool}`, async () => {
      try {
        const vol = await g.createVolume({ name, sizeBytes: START_BLOCKS * BLOCK, storageClass, labels: { h64: 'yes' }, ...(encrypted ? { replicas: 1 } : {}), ...(pool === undefined ? {} : { pool }) })
        count('createVolume:ok')
        say(`  created ${name}/${vol.id.slice(0, 8)} pool ${vol.pool}`)
        newVol(vol.id, name, START_BLOCKS, Array.from({ length: START_BLOCKS }, () => new Set(['Z'])), vol.encrypted, vol.storageClass, vol.pool)
        if (vol.pool !== pool) problem(`createVolume ${name}: pool ${vol.pool}, asked ${pool}`)
        if (vol.encrypted !== encrypted) problem(`createVolume ${name}: encrypted ${vol.encrypted}, asked ${encrypted}`)
      } catch (err) {
        const code = checkError(`createVolume ${name}`, err, ['VOLUME_EXISTS', 'STORAGE_CLASS_NOT_FOUND', ...(pool === undefined ? [] : ['NO_SPACE', 'POOL_NOT_FOUND'])])
        if (ranAnyway(err)) madeUnreported.add(name)
        count(`createVolume:${code}`)
        if (code === 'VOLUME_EXISTS' && expectFree && !nameTakenExcept(name)) problem(`createVolume ${name}: VOLUME_EXISTS though no volume of that name exists or is being made`)
        if (code === 'STORAGE_CLASS_NOT_FOUND' && classSure && classes.get(storageClass) === 'live') problem(`createVolume ${name}: STORAGE_CLASS_NOT_FOUND for live class ${storageClass}`)
        if (code === 'VOLUME_EXISTS' && retry < 1 && chance(0.3)) later(() => opCreate(retry + 1))
      } finally {
        claims.set(name, (claims.get(name) ?? 1) - 1)
      }
    })
  }
  /** Whether the name is held by something other than the one claim of the call asking. */
  function nameTakenExcept (name: string): boolean {
    return (claims.get(name) ?? 0) > 1 || [...vols.values()].some((v) => v.name === name && v.status !== 'gone')
  }
  const retries: Array<() => void> = []
  const later = (fn: () => void): void => { retries.push(fn) }

  function opDelete (v: MVol): void {
    const force = chance(0.6)
    const before = v.status
    v.status = 'deleting'
    v.deleteStarts++
    void start(`deleteVolume ${v.name}/${v.id.slice(0, 8)} force=${force}`, async () => {
      try {
        await g.deleteVolume(v.id, { force })
        count('deleteVolume:ok')
        v.status = 'gone'
        for (const s of v.snapshots.values()) s.status = 'gone'
      } catch (err) {
        const code = checkError(`deleteVolume ${v.name}`, err, ['BUSY', 'VOLUME_NOT_FOUND'])
        count(`deleteVolume:${code}`)
        if (code === 'VOLUME_NOT_FOUND' && before === 'live' && v.deleteStarts === 1) problem(`deleteVolume ${v.name}: VOLUME_NOT_FOUND for a volume no one else deleted`)
        if (v.status === 'deleting') v.status = code === 'VOLUME_NOT_FOUND' ? 'doubt' : 'live'
        if (code === 'NOT_OPEN' || code === 'CANCELLED') v.status = 'doubt'
        if (code === 'BUSY' && chance(0.3)) later(() => { if (v.status === 'live') opDelete(v) })
      } finally {
        v.deleteStarts--
      }
    })
  }

  function opExpand (v: MVol): void {
    const to = Math.min(MAX_BLOCKS, v.blocks + 1 + Math.floor(random() * 3))
    if (to <= v.blocks) return
    grow(v, to)
    void start(`expandVolume ${v.name} -> ${to}`, async () => {
      try {
        const vol = await g.expandVolume(v.id, to * BLOCK)
        count('expandVolume:ok')
        if (vol.sizeBytes < to * BLOCK) problem(`expandVolume ${v.name}: resolved with size ${vol.sizeBytes} < ${to * BLOCK}`)
        v.minBlocks = Math.max(v.minBlocks, to)
      } catch (err) {
        const code = checkError(`expandVolume ${v.name}/${v.id.slice(0, 8)} (pool ${v.pool})`, err, ['VOLUME_NOT_FOUND', 'INVALID_ARGUMENT', 'BUSY', ...(v.pool === undefined ? [] : ['NO_SPACE'])])
        count(`expandVolume:${code}`)
      }
    })
  }

  function opWrite (v: MVol): void {
    const b = Math.floor(random() * v.minBlocks)
    const trim = chance(0.1)
    const tag = tagSeq++
    const value = trim ? 'Z' : `w${tag}`
    const s = { e: ++v.wEpoch[b]!, whole: v.wholeEpoch, wi: v.wholeInflight }
    v.winflight[b]!++
    v.writeStarts++
    addPossible(v, b, value)
    const durable = chance(0.2)
    void start(`${trim ? 'trim' : 'writeBlock'} ${v.name}[${b}] = ${value}`, async () => {
      try {
        if (trim) await g.trim(v.id, b * BLOCK, BLOCK)
        else await g.writeBlock(v.id, b, tagBlock(tag), durable ? 'WriteDurable' : 'WriteAcknowledged')
        count('write:ok')
        if (v.status === 'gone') problem(`write ${v.name}[${b}]: succeeded on a volume whose deletion had resolved`)
        if (v.wEpoch[b] === s.e && v.wholeEpoch === s.whole && s.wi === 0 && v.wholeInflight === 0 && v.fileInflight[b] === 0) v.possible[b] = new Set([value])
      } catch (err) {
        const code = checkError(`write ${v.name}[${b}]`, err, ['VOLUME_NOT_FOUND', 'BUSY', 'OUT_OF_RANGE'])
        count(`write:${code}`)
        if (code === 'VOLUME_NOT_FOUND' && v.status === 'live' && v.deleteStarts === 0) problem(`write ${v.name}[${b}]: VOLUME_NOT_FOUND on a live volume`)
        if (code === 'OUT_OF_RANGE') problem(`write ${v.name}[${b}]: OUT_OF_RANGE below the volume's certain size ${v.minBlocks}`)
      } finally {
        v.winflight[b]!--
      }
    })
  }

  function opRead (v: MVol): void {
    const b = Math.floor(random() * v.minBlocks)
    const r = { e: v.wEpoch[b]!, whole: v.wholeEpoch, inflight: v.winflight[b]!, wi: v.wholeInflight, set: new Set(v.possible[b]), len: v.history[b]!.length, wasLive: v.status === 'live' && v.deleteStarts === 0 }
    void start(`readBlock ${v.name}[${b}]`, async () => {
      try {
        const value = decode(await g.readBlock(v.id, b))
        count('read:ok')
        const valid = new Set(r.set)
        for (const t of v.history[b]!.slice(r.len)) valid.add(t)
        if (!valid.has(value)) problem(`readBlock ${v.name}[${b}] read ${value}, expected one of ${show(valid)}`)
        if (r.inflight === 0 && r.wi === 0 && v.wEpoch[b] === r.e && v.wholeEpoch === r.whole && v.winflight[b] === 0 && v.wholeInflight === 0) v.possible[b] = new Set([value])
      } catch (err) {
        const code = checkError(`readBlock ${v.name}[${b}]`, err, ['VOLUME_NOT_FOUND', 'BUSY', 'OUT_OF_RANGE'])
        count(`read:${code}`)
        if (code === 'VOLUME_NOT_FOUND' && r.wasLive && v.status === 'live' && v.deleteStarts === 0) problem(`readBlock ${v.name}[${b}]: VOLUME_NOT_FOUND on a live volume`)
        if (code === 'OUT_OF_RANGE') problem(`readBlock ${v.name}[${b}]: OUT_OF_RANGE below the volume's certain size`)
      }
    })
  }

  function opSnapshot (v: MVol): void {
    const name = `s${tagSeq++}`
    const m = mark(v)
    void start(`createSnapshot ${v.name}@${name}`, async () => {
      try {
        const snap = await g.createSnapshot(v.id, name)
        count('createSnapshot:ok')
        const blocks = snap.sizeBytes / BLOCK
        v.snapshots.set(name, { id: snap.id, name, blocks, possible: windowValues(v, m, blocks), status: v.status === 'gone' ? 'gone' : 'live' })
        if (v.status === 'gone') problem(`createSnapshot ${v.name}@${name}: succeeded after the volume's deletion resolved`)
      } catch (err) {
        const code = checkError(`createSnapshot ${v.name}@${name}`, err, ['VOLUME_NOT_FOUND', 'BUSY'])
        count(`createSnapshot:${code}`)
        if (code === 'VOLUME_NOT_FOUND' && v.status === 'live' && v.deleteStarts === 0) problem(`createSnapshot ${v.name}: VOLUME_NOT_FOUND on a live volume`)
      }
    })
  }

  const liveSnaps = (v: MVol): MSnap[] => [...v.snapshots.values()].filter((s) => s.status === 'live')

  function opDeleteSnapshot (v: MVol, s: MSnap): void {
    const force = chance(0.5)
    s.status = 'deleting'
    void start(`deleteSnapshot ${v.name}@${s.name} force=${force}`, async () => {
      try {
        await g.deleteSnapshot(v.id, s.id, { force })
        count('deleteSnapshot:ok')
        s.status = 'gone'
      } catch (err) {
        const code = checkError(`deleteSnapshot ${v.name}@${s.name}`, err, ['BUSY', 'VOLUME_NOT_FOUND', 'SNAPSHOT_NOT_FOUND'])
        count(`deleteSnapshot:${code}`)
        if (code === 'SNAPSHOT_NOT_FOUND' && v.status === 'live' && v.deleteStarts === 0) problem(`deleteSnapshot ${v.name}@${s.name}: SNAPSHOT_NOT_FOUND for a snapshot that createSnapshot returned and no one deleted`)
        s.status = code === 'BUSY' && v.status !== 'gone' ? 'live' : (v.status === 'gone' ? 'gone' : 'live')
        if (code === 'NOT_OPEN' || code === 'CANCELLED') s.status = 'deleting'
      }
    })
  }

  function opReadSnapshot (v: MVol, s: MSnap): void {
    const b = Math.floor(random() * s.blocks)
    void start(`readBlock ${v.name}@${s.name}[${b}]`, async () => {
      try {
        const value = decode(await g.readBlock({ volume: v.id, snapshot: s.id }, b))
        count('readSnapshot:ok')
        if (!s.possible[b]!.has(value)) problem(`readBlock ${v.name}@${s.name}[${b}] read ${value}, expected one of ${show(s.possible[b])}`)
        s.possible[b] = new Set([value])
      } catch (err) {
        const code = checkError(`readBlock ${v.name}@${s.name}`, err, ['VOLUME_NOT_FOUND', 'SNAPSHOT_NOT_FOUND', 'BUSY'])
        count(`readSnapshot:${code}`)
        if (code === 'SNAPSHOT_NOT_FOUND' && s.status === 'live' && v.status === 'live' && v.deleteStarts === 0) problem(`readBlock ${v.name}@${s.name}: SNAPSHOT_NOT_FOUND for a live snapshot`)
      }
    })
  }

  function opRevert (v: MVol, s: MSnap): void {
    const targetValues = copyValues(s.possible)
    const started = wholeBegin(v, targetValues)
    void start(`restoreSnapshot ${v.name}@${s.name}`, async () => {
      let ok = false
      try {
        await g.restoreSnapshot(v.id, s.id)
        ok = true
        count('restoreSnapshot:ok')
        if (s.status === 'gone') problem(`restoreSnapshot ${v.name}@${s.name}: succeeded after the snapshot's deletion resolved`)
      } catch (err) {
        const code = checkError(`restoreSnapshot ${v.name}@${s.name}`, err, ['BUSY', 'VOLUME_NOT_FOUND', 'SNAPSHOT_NOT_FOUND'])
        count(`restoreSnapshot:${code}`)
        if (code === 'BUSY' && chance(0.3)) later(() => { if (v.status === 'live' && s.status === 'live') opRevert(v, s) })
      } finally {
        wholeEnd(v, started, ok, s.possible)
      }
    })
  }

  function opClone (v: MVol, s: MSnap | undefined): void {
    const name = pickName()
    const m = mark(v)
    claims.set(name, (claims.get(name) ?? 0) + 1)
    const free = !nameTaken(name) || ((claims.get(name) ?? 0) === 1 && ![...vols.values()].some((x) => x.name === name && x.status !== 'gone'))
    void start(`cloneVolume ${v.name}${s === undefined ? '' : '@' + s.name} -> ${name}`, async () => {
      try {
        const vol = await g.cloneVolume(s === undefined ? v.id : { volume: v.id, snapshot: s.id }, name)
        count('cloneVolume:ok')
        say(`  clone ${name}/${vol.id.slice(0, 8)} of ${v.name}/${v.id.slice(0, 8)} pool ${vol.pool}`)
        const blocks = vol.sizeBytes / BLOCK
        const values = s === undefined ? windowValues(v, m, blocks) : copyValues(s.possible).concat(Array.from({ length: Math.max(0, blocks - s.blocks) }, () => new Set(['Z'])))
        newVol(vol.id, name, blocks, values.slice(0, blocks), vol.encrypted, vol.storageClass, vol.pool)
        if (vol.pool !== v.pool) problem(`cloneVolume ${v.name} -> ${name}: in pool ${vol.pool}, its source in ${v.pool}`)
      } catch (err) {
        if (ranAnyway(err)) madeUnreported.add(name)
        const code = checkError(`cloneVolume ${v.name} -> ${name}`, err, ['VOLUME_EXISTS', 'VOLUME_NOT_FOUND', 'SNAPSHOT_NOT_FOUND', 'BUSY', ...(v.pool === undefined ? [] : ['NO_SPACE'])])
        count(`cloneVolume:${code}`)
        if (code === 'VOLUME_EXISTS' && free && !nameTakenExcept(name)) problem(`cloneVolume -> ${name}: VOLUME_EXISTS though the name is free`)
      } finally {
        claims.set(name, (claims.get(name) ?? 1) - 1)
      }
    })
  }

  function opBackup (v: MVol): void {
    const strategy = pick(['full', 'incremental', 'differential'] as const)
    const m = mark(v)
    void start(`createBackup ${v.name} ${strategy}`, async () => {
      try {
        const backup = await g.createBackup(v.id, { strategy })
        count('createBackup:ok')
        say(`  backup ${backup.id} ${backup.strategy} base ${backup.baseId} snapshot ${backup.snapshotName}`)
        const blocks = backup.sizeBytes / BLOCK
        backups.set(backup.id, { id: backup.id, volumeId: v.id, blocks, possible: windowValues(v, m, blocks), status: 'live', policy: null, encrypted: backup.encrypted, about: `${backup.strategy} of ${v.name}/${v.id.slice(0, 8)} holding ${backup.blocks} blocks, resolved when ${calls} calls had started, base ${backup.baseId?.slice(0, 8) ?? 'none'}` })
        if (backup.encrypted !== v.encrypted) problem(`createBackup ${v.name}: backup encrypted=${backup.encrypted}, volume encrypted=${v.encrypted}`)
      } catch (err) {
        if (ranAnyway(err)) backupsUnreported.add(v.id)
        const code = checkError(`createBackup ${v.name}`, err, ['VOLUME_NOT_FOUND', 'BUSY', 'SNAPSHOT_NOT_FOUND'])
        count(`createBackup:${code}`)
        if (code === 'VOLUME_NOT_FOUND' && v.status === 'live' && v.deleteStarts === 0) problem(`createBackup ${v.name}: VOLUME_NOT_FOUND on a live volume`)
        if (code === 'BUSY' && chance(0.3)) later(() => { if (v.status === 'live') opBackup(v) })
      }
    })
  }

  function opDeleteBackup (b: MBackup): void {
    const force = chance(0.5)
    b.status = 'deleting'
    if (force) { churn.inFlight++; churn.epoch++ }
    const cm = churnMark()
    void start(`deleteBackup ${b.id.slice(0, 8)} force=${force}`, async () => {
      try {
        const result = await g.deleteBackup(b.id, { force, chunkGraceSeconds: chance(0.5) ? 0 : 3600 })
        count('deleteBackup:ok')
        say(`  deleted ${JSON.stringify(result)}`)
        for (const id of result.deletedBackups) {
          const gone = backups.get(id)
          if (gone !== undefined) gone.status = 'gone'
          else if (policyRuns === 0) problem(`deleteBackup reported deleting ${id}, a backup nothing created`)
          else say(`  deleteBackup also deleted ${id}, a policy backup not yet seen`)
        }
        if (!result.deletedBackups.includes(b.id)) problem(`deleteBackup ${b.id}: resolved without listing it as deleted`)
        b.status = 'gone'
      } catch (err) {
        const code = checkError(`deleteBackup ${b.id.slice(0, 8)}`, err, ['BUSY', 'BACKUP_NOT_FOUND'])
        count(`deleteBackup:${code}`)
        if (code === 'BACKUP_NOT_FOUND' && churnQuiet({ inFlight: cm.inFlight - (force ? 1 : 0), epoch: cm.epoch }) && !force) problem(`deleteBackup ${b.id}: BACKUP_NOT_FOUND for a backup createBackup returned and no one deleted`)
        b.status = code === 'BACKUP_NOT_FOUND' ? 'doubt' : 'live'
        if (code === 'NOT_OPEN' || code === 'CANCELLED') {
          // Cut short by close(): the backup, and with force the ones built on it, may be gone or not.
          b.status = 'doubt'
          if (force) for (const other of backups.values()) if (other.volumeId === b.volumeId && other.status === 'live') other.status = 'doubt'
        }
      } finally {
        if (force) churn.inFlight--
      }
    })
  }

  function opRestoreBackup (b: MBackup): void {
    const cm = churnMark()
    const intoExisting = chance(0.35) ? pick(liveVols().filter((v) => v.minBlocks >= b.blocks && v.mounts.size === 0 && v.encrypted === b.encrypted)) : undefined
    if (intoExisting !== undefined) {
      const v = intoExisting
      const started = wholeBegin(v, b.possible)
      void start(`restoreBackup ${b.id.slice(0, 8)} into ${v.name}`, async () => {
        let ok = false
        try {
          await g.restoreBackup(b.id, { volume: v.id })
          ok = true
          count('restoreBackup:ok')
        } catch (err) {
          const code = checkError(`restoreBackup into ${v.name}`, err, ['BUSY', 'VOLUME_NOT_FOUND', 'BACKUP_NOT_FOUND', 'OUT_OF_RANGE'])
          count(`restoreBackup:${code}`)
          if (code === 'BACKUP_NOT_FOUND' && b.status === 'live' && churnQuiet(cm)) problem(`restoreBackup ${b.id}: BACKUP_NOT_FOUND for a live backup`)
        } finally {
          wholeEnd(v, started, ok, b.possible)
        }
      })
      return
    }
    const name = pickName()
    const free = !nameTaken(name)
    claims.set(name, (claims.get(name) ?? 0) + 1)
    void start(`restoreBackup ${b.id.slice(0, 8)} -> ${name}`, async () => {
      try {
        const vol = await g.restoreBackup(b.id, { name })
        count('restoreBackup:ok')
        say(`  restored ${name}/${vol.id.slice(0, 8)} pool ${vol.pool}`)
        newVol(vol.id, name, vol.sizeBytes / BLOCK, copyValues(b.possible), vol.encrypted, vol.storageClass, vol.pool)
        if (b.status === 'gone') problem(`restoreBackup ${b.id}: succeeded after the backup's deletion resolved`)
      } catch (err) {
        if (ranAnyway(err)) madeUnreported.add(name)
        // A backup restores into its volume's pool (when that still exists), which may be full.
        const code = checkError(`restoreBackup -> ${name}`, err, ['VOLUME_EXISTS', 'BUSY', 'BACKUP_NOT_FOUND', 'NO_SPACE'])
        count(`restoreBackup:${code}`)
        if (code === 'VOLUME_EXISTS' && free && !nameTakenExcept(name)) problem(`restoreBackup -> ${name}: VOLUME_EXISTS though the name is free`)
        if (code === 'BACKUP_NOT_FOUND' && b.status === 'live' && churnQuiet(cm)) problem(`restoreBackup ${b.id}: BACKUP_NOT_FOUND for a live backup`)
      } finally {
        claims.set(name, (claims.get(name) ?? 1) - 1)
      }
    })
  }

  function opRotate (v: MVol): void {
    const wait = chance(0.5)
    void start(`rotateVolumeKey ${v.name} wait=${wait}`, async () => {
      try {
        await g.rotateVolumeKey(v.id, { wait })
        count('rotateVolumeKey:ok')
      } catch (err) {
        const code = checkError(`rotateVolumeKey ${v.name}`, err, ['BUSY', 'VOLUME_NOT_FOUND', ...(v.encrypted ? [] : ['INVALID_ARGUMENT'])])
        count(`rotateVolumeKey:${code}`)
      }
    })
  }

  function opQos (v: MVol): void {
    const policy = chance(0.3) ? null : { limits: { iops: 2000 + Math.floor(random() * 4000) } }
    void start(`setQoSPolicy ${v.name} ${JSON.stringify(policy)}`, async () => {
      try {
        await g.setQoSPolicy(v.id, policy)
        count('setQoSPolicy:ok')
      } catch (err) {
        const code = checkError(`setQoSPolicy ${v.name}`, err, ['VOLUME_NOT_FOUND'])
        count(`setQoSPolicy:${code}`)
      }
    })
  }

  function opMount (v: MVol): void {
    const path = `/h64/${v.id}/${tagSeq++}`
    v.mounts.set(path, 'pending')
    const readOnly = chance(0.5)
    void start(`mountVolume ${v.name} ${path.slice(-4)} ${readOnly ? 'ro' : 'rw'}`, async () => {
      try {
        await g.mounts.mountVolume(v.id, path, { readOnly })
        count('mount:ok')
        v.mounts.set(path, 'mounted')
        if (readOnly) v.readOnlyMounts.add(path)
      } catch (err) {
        const code = checkError(`mountVolume ${v.name}`, err, ['BUSY', 'VOLUME_NOT_FOUND'])
        count(`mount:${code}`)
        v.mounts.delete(path)
      }
    })
  }
  function opUnmount (v: MVol, path: string): void {
    v.mounts.set(path, 'unmounting')
    void start(`unmountVolume ${v.name} ${path.slice(-4)}`, async () => {
      try {
        await g.mounts.unmountVolume(path, { force: chance(0.5) })
        count('unmount:ok')
        v.mounts.delete(path)
      } catch (err) {
        const code = checkError(`unmountVolume ${v.name}`, err, ['BUSY', 'VOLUME_NOT_FOUND', 'INVALID_ARGUMENT'])
        count(`unmount:${code}`)
        v.mounts.set(path, 'mounted')
      }
    })
  }

  function opClass (): void {
    const existing = [...classes].filter(([, s]) => s === 'live').map(([c]) => c)
    if (existing.length > 0 && chance(0.5)) {
      const name = pick(existing)
      classes.set(name, 'deleting')
      void start(`deleteStorageClass ${name}`, async () => {
        try {
          await g.deleteStorageClass(name)
          count('deleteStorageClass:ok')
          classes.set(name, 'gone')
        } catch (err) {
          const code = checkError(`deleteStorageClass ${name}`, err, ['BUSY', 'STORAGE_CLASS_NOT_FOUND'])
          count(`deleteStorageClass:${code}`)
          classes.set(name, ranAnyway(err) ? 'deleting' : 'live')
        }
      })
      return
    }
    const name = `sc-${pick(['x', 'y'])}`
    const before = classes.get(name)
    classes.set(name, before === 'live' ? 'live' : 'pending')
    void start(`createStorageClass ${name}`, async () => {
      try {
        await g.createStorageClass({ name, parameters: { disk: 'any' }, reclaimPolicy: 'Delete' })
        count('createStorageClass:ok')
        classes.set(name, 'live')
      } catch (err) {
        const code = checkError(`createStorageClass ${name}`, err, ['STORAGE_CLASS_EXISTS'])
        count(`createStorageClass:${code}`)
        if (classes.get(name) === 'pending') classes.set(name, code === 'STORAGE_CLASS_EXISTS' ? 'live' : ranAnyway(err) ? 'pending' : 'gone')
      }
    })
  }

  function opPool (): void {
    const state = pools.get('p')
    if (state === undefined) {
      pools.set('p', 'pending')
      void start('createPool p', async () => {
        try {
          await g.createPool({ name: 'p', capacityBytes: 40 * BLOCK })
          count('createPool:ok')
          pools.set('p', 'live')
        } catch (err) {
          const code = checkError('createPool p', err, ['POOL_EXISTS'])
          count(`createPool:${code}`)
          if (code !== 'POOL_EXISTS') pools.delete('p')
          else pools.set('p', 'live')
        }
      })
      return
    }
    if (state !== 'live') return
    if (chance(0.5)) {
      const capacity = (30 + Math.floor(random() * 30)) * BLOCK
      void start(`updatePool p ${capacity / BLOCK} blocks`, async () => {
        try {
          const pool = await g.updatePool('p', { capacityBytes: capacity })
          count('updatePool:ok')
          if (pool.provisionedBytes > pool.limitBytes) problem(`updatePool p: ${pool.provisionedBytes} provisioned over the new limit ${pool.limitBytes}`)
        } catch (err) {
          const code = checkError('updatePool p', err, ['BUSY', 'POOL_NOT_FOUND'])
          count(`updatePool:${code}`)
        }
      })
      return
    }
    pools.set('p', 'deleting')
    void start('deletePool p', async () => {
      try {
        await g.deletePool('p')
        count('deletePool:ok')
        pools.delete('p')
        for (const v of vols.values()) if (v.pool === 'p' && v.status === 'live') problem(`deletePool p: resolved while volume ${v.name} is in it`)
      } catch (err) {
        const code = checkError('deletePool p', err, ['BUSY', 'POOL_NOT_FOUND'])
        count(`deletePool:${code}`)
        pools.set('p', 'live')
      }
    })
  }

  /** A block written through a VolumeFile on a read-write mount (racing unmount, delete, revert, close). */
  function opFileWrite (v: MVol, path: string): void {
    const b = Math.floor(random() * v.minBlocks)
    const tag = tagSeq++
    const value = `w${tag}`
    ++v.wEpoch[b]!
    v.winflight[b]!++
    v.fileInflight[b]!++
    v.writeStarts++
    addPossible(v, b, value)
    void start(`VolumeFile pwrite ${v.name}[${b}] = ${value} via ${path.slice(-4)}`, async () => {
      try {
        const file = await g.mounts.openVolumeFile(path)
        try {
          const written = await file.pwrite(tagBlock(tag), b * BLOCK)
          if (written !== BLOCK) problem(`VolumeFile pwrite ${v.name}[${b}]: wrote ${written} bytes`)
        } finally {
          await file.close()
        }
        count('fileWrite:ok')
      } catch (err) {
        const code = checkError(`VolumeFile pwrite ${v.name}[${b}]`, err, ['VOLUME_NOT_FOUND', 'BUSY', 'INVALID_ARGUMENT', 'READ_ONLY', 'NOT_OPEN'])
        count(`fileWrite:${code}`)
        if (code === 'READ_ONLY' && !v.readOnlyMounts.has(path)) problem(`VolumeFile pwrite ${v.name}: READ_ONLY through a read-write mount`)
      } finally {
        v.winflight[b]!--
        v.fileInflight[b]!--
        // Writes called before this one resolved may have been applied before it.
        ++v.wEpoch[b]!
      }
    })
  }

  function opPolicy (): void {
    const name = 'nightly'
    const state = policies.get(name)
    if (state === undefined || state === 'gone') {
      policies.set(name, 'pending')
      void start(`createBackupPolicy ${name}`, async () => {
        try {
          await g.createBackupPolicy({ name, schedule: '0 2 * * *', strategy: pick(['incremental', 'full', 'differential'] as const), retention: { daily: 1 }, labels: { h64: 'yes' } })
          count('createBackupPolicy:ok')
          policies.set(name, 'live')
        } catch (err) {
          const code = checkError(`createBackupPolicy ${name}`, err, ['POLICY_EXISTS', 'BUSY'])
          count(`createBackupPolicy:${code}`)
          policies.set(name, 'gone')
        }
      })
      return
    }
    if (state === 'live' && chance(0.25)) {
      policies.set(name, 'deleting')
      void start(`deleteBackupPolicy ${name}`, async () => {
        try {
          await g.deleteBackupPolicy(name)
          count('deleteBackupPolicy:ok')
          policies.set(name, 'gone')
        } catch (err) {
          const code = checkError(`deleteBackupPolicy ${name}`, err, ['POLICY_NOT_FOUND'])
          count(`deleteBackupPolicy:${code}`)
          policies.set(name, 'live')
        }
      })
      return
    }
    if (state !== 'live') return
    policyRuns++
    churn.inFlight++
    churn.epoch++
    void start(`runBackupPolicy ${name}`, async () => {
      try {
        const run = await g.runBackupPolicy(name)
        count('runBackupPolicy:ok')
        say(`  run: ${JSON.stringify(run).slice(0, 400)}`)
        await syncPolicyBackups()
      } catch (err) {
        const code = checkError(`runBackupPolicy ${name}`, err, ['POLICY_NOT_FOUND', 'BUSY'])
        count(`runBackupPolicy:${code}`)
      } finally {
        churn.inFlight--
      }
    })
  }
  /**
   * Policy backups: learnt from listBackups. Runs overlap, so which run took one is not known: its
   * blocks may hold any value its volume ever held. Those no longer listed were pruned.
   */
  async function syncPolicyBackups (): Promise<void> {
    const listed = await g.listBackups()
    const ids = new Set(listed.map((b) => b.id))
    for (const b of listed) {
      if (backups.has(b.id) || b.policy === null) continue
      const v = vols.get(b.volumeId)
      if (v === undefined) { problem(`policy backup ${b.id} of ${b.volumeName}: not a volume any call created`); continue }
      const blocks = b.sizeBytes / BLOCK
      backups.set(b.id, { id: b.id, volumeId: b.volumeId, blocks, possible: windowValues(v, { sets: [], lens: [] }, blocks), status: 'live', policy: b.policy, encrypted: b.encrypted, about: `policy ${b.strategy} of ${v.name}/${v.id.slice(0, 8)}, base ${b.baseId?.slice(0, 8) ?? 'none'}` })
      say(`  policy backup ${b.id} of ${b.volumeName} ${b.strategy} base ${b.baseId}`)
    }
    for (const b of backups.values()) if (b.policy !== null && b.status === 'live' && !ids.has(b.id)) b.status = 'gone'
  }

  // ---- the run --------------------------------------------------------------------------------

  async function drain (): Promise<void> {
    while (inFlight.size > 0) await Promise.all([...inFlight])
  }
  async function step (): Promise<void> {
    if (retries.length > 0 && chance(0.5)) { retries.shift()!(); return }
    const live = liveVols()
    if (options.focus === 'backups' && live.length > 0 && chance(0.5)) {
      const encrypted = live.filter((x) => x.encrypted)
      const v = encrypted.length > 0 && chance(0.8) ? pick(encrypted) : pick(live)
      const which = Math.floor(random() * 7)
      if (which === 0) opBackup(v)
      else if (which === 1) opRotate(v)
      else if (which === 2) { if (chance(0.5)) opDelete(v); else opWrite(v) }
      else if (which === 3) opClone(v, undefined)
      else if (which === 4) opSnapshot(v)
      else if (which === 5) opWrite(v)
      else { const done = [...backups.values()].filter((b) => b.status === 'live'); if (done.length > 0) opRestoreBackup(pick(done)); else opBackup(v) }
      return
    }
    const roll = random()
    const v = live.length > 0 ? pick(live) : undefined
    if (v === undefined || roll < 0.1) { opCreate(); return }
    const snaps = liveSnaps(v)
    const liveBackups = [...backups.values()].filter((b) => b.status === 'live')
    if (roll < 0.35) { if (chance(0.6)) opWrite(v); else opRead(v); return }
    if (roll < 0.42) { opSnapshot(v); return }
    if (roll < 0.47 && snaps.length > 0) { opReadSnapshot(v, pick(snaps)); return }
    if (roll < 0.51 && snaps.length > 0) { opDeleteSnapshot(v, pick(snaps)); return }
    if (roll < 0.55 && snaps.length > 0) { opRevert(v, pick(snaps)); return }
    if (roll < 0.59) { opClone(v, snaps.length > 0 && chance(0.6) ? pick(snaps) : undefined); return }
    if (roll < 0.65) { opBackup(v); return }
    if (roll < 0.68 && liveBackups.length > 0) { opDeleteBackup(pick(liveBackups)); return }
    if (roll < 0.72 && liveBackups.length > 0) { opRestoreBackup(pick(liveBackups)); return }
    if (roll < 0.76) { opDelete(v); return }
    if (roll < 0.79) { opExpand(v); return }
    if (roll < 0.82) {
      const encrypted = live.filter((x) => x.encrypted)
      opRotate(encrypted.length > 0 && chance(0.85) ? pick(encrypted) : v)
      return
    }
    if (roll < 0.85) { opQos(v); return }
    if (roll < 0.89) {
      const mounted = [...v.mounts].filter(([, s]) => s === 'mounted').map(([p]) => p)
      if (mounted.length > 0 && chance(0.5)) opUnmount(v, pick(mounted)); else opMount(v)
      return
    }
    if (roll < 0.91) { opClass(); return }
    if (roll < 0.93) {
      const rw = [...v.mounts].filter(([p, st]) => st === 'mounted' && !v.readOnlyMounts.has(p)).map(([p]) => p)
      if (rw.length > 0) opFileWrite(v, pick(rw)); else opPool()
      return
    }
    if (roll < 0.97) { opPolicy(); return }
    // a listing: every volume a call reported created and no one deleted is there
    const certain = live.filter((x) => x.deleteStarts === 0)
    void start('listVolumes', async () => {
      const listed = new Set((await g.listVolumes()).map((x) => x.id))
      for (const x of certain) if (x.status === 'live' && x.deleteStarts === 0 && !listed.has(x.id)) problem(`listVolumes: ${x.name} (${x.id}) missing though created and not deleted`)
    })
  }

  try {
    for (let i = 0; i < options.steps; i++) {
      await step()
      if (inFlight.size >= maxInFlight || chance(0.15)) {
        const list = [...inFlight]
        if (chance(0.3)) {
          await drain()
          await checkPools(`quiet after call #${calls}`, await g.listVolumes())
          await checkContentQuiet(`quiet after call #${calls}`)
        } else if (list.length > 0) await pick(list)
      }
      if (problems.length > 20) break
    }
    if (options.closeWithCallsInFlight === true) {
      for (let i = 0; i < 4; i++) await step()
      closing = true
      say('close() with calls in flight')
      await g.close()
      await drain()
    } else {
      await drain()
      closing = true
      await g.close()
    }
    say('reopen')
    g = await GalleonFS.open({ storagePath, backupTarget: target })
    closing = false
    await checkAfterReopen()
    await g.close()
  } finally {
    process.off('unhandledRejection', unhandled)
    if (!g.closed) await g.close().catch(() => {})
    await rm(dir, { recursive: true, force: true })
  }
  return { calls, outcomes, problems, log }

  /** At a quiet moment: each pool counts exactly its volumes' sizes, holds nothing reserved, and exists for its volumes. */
  async function checkPools (when: string, listed: Array<{ name: string, pool?: string, sizeBytes: number }>): Promise<void> {
    const all = await g.listPools()
    for (const pool of all) {
      const members = listed.filter((x) => x.pool === pool.name)
      const sum = members.reduce((total, x) => total + x.sizeBytes, 0)
      if (pool.provisionedBytes !== sum || pool.volumes !== members.length || pool.reservedBytes !== 0) problem(`${when}: pool ${pool.name} counts ${pool.provisionedBytes} bytes provisioned for ${pool.volumes} volumes (${pool.reservedBytes} reserved); its volumes hold ${sum} in ${members.length}`)
    }
    const names = new Set(all.map((x) => x.name))
    for (const x of listed) if (x.pool !== undefined && !names.has(x.pool)) problem(`${when}: volume ${x.name} is in pool ${x.pool}, which does not exist`)
  }

  /** With nothing in flight: every live volume and snapshot reads one of its possible values (and is narrowed to it). */
  async function checkContentQuiet (when: string): Promise<void> {
    for (const v of liveVols()) {
      for (let b = 0; b < v.minBlocks; b++) {
        try {
          const value = decode(await g.readBlock(v.id, b))
          if (!v.possible[b]!.has(value)) problem(`${when}: ${v.name}/${v.id.slice(0, 8)}[${b}] reads ${value}, expected one of ${show(v.possible[b])}`)
          v.possible[b] = new Set([value])
        } catch (err) { checkError(`${when}: readBlock ${v.name}[${b}]`, err, ['BUSY']) }
      }
      for (const s of liveSnaps(v)) {
        for (let b = 0; b < s.blocks; b++) {
          try {
            const value = decode(await g.readBlock({ volume: v.id, snapshot: s.id }, b))
            if (!s.possible[b]!.has(value)) problem(`${when}: ${v.name}@${s.name}[${b}] reads ${value}, expected one of ${show(s.possible[b])}`)
            s.possible[b] = new Set([value])
          } catch (err) { checkError(`${when}: readBlock ${v.name}@${s.name}[${b}]`, err, []) }
        }
      }
    }
  }

  async function checkAfterReopen (): Promise<void> {
    await syncPolicyBackups()
    const listed = await g.listVolumes()
    const byId = new Map(listed.map((x) => [x.id, x]))
    for (const x of listed) {
      const v = vols.get(x.id)
      if (v === undefined) {
        if (!madeUnreported.has(x.name)) problem(`after reopen: volume ${x.name} (${x.id}, ${x.state}) listed though no call reported creating it`)
        continue
      }
      if (v.status === 'gone') problem(`after reopen: volume ${x.name} (${x.id}) listed though its deleteVolume resolved`)
      if (x.state !== 'available') problem(`after reopen: volume ${x.name} is ${x.state}`)
    }
    for (const v of vols.values()) {
      if (v.status === 'live' && !byId.has(v.id)) problem(`after reopen: volume ${v.name} (${v.id}) missing though created and not deleted`)
    }
    await checkPools('after reopen', listed)
    const classesListed = new Set((await g.listStorageClasses()).map((c) => c.name))
    for (const x of listed) if (!classesListed.has(x.storageClass)) problem(`after reopen: volume ${x.name} uses storage class ${x.storageClass}, which no longer exists`)
    for (const [name, state] of classes) {
      if (state === 'live' && !classesListed.has(name)) problem(`after reopen: storage class ${name} missing`)
      if (state === 'gone' && classesListed.has(name)) problem(`after reopen: storage class ${name} listed though its deletion resolved`)
    }
    for (const x of listed) {
      const v = vols.get(x.id)
      if (v === undefined) continue
      const blocks = x.sizeBytes / BLOCK
      if (blocks < v.minBlocks || blocks > v.blocks) problem(`after reopen: ${x.name} has ${blocks} blocks, expected ${v.minBlocks}..${v.blocks}`)
      for (let b = 0; b < blocks; b++) {
        try {
          const value = decode(await g.readBlock(x.id, b))
          if (!(v.possible[b] ?? new Set(['Z'])).has(value)) problem(`after reopen: ${x.name}[${b}] reads ${value}, expected one of ${show(v.possible[b])}`)
        } catch (err) { checkError(`after reopen: readBlock ${x.name}[${b}]`, err, []) }
      }
      const snaps = await g.listSnapshots(x.id)
      const snapIds = new Set(snaps.map((s) => s.id))
      for (const s of v.snapshots.values()) {
        if (s.status === 'live' && !snapIds.has(s.id)) problem(`after reopen: snapshot ${x.name}@${s.name} missing though created and not deleted`)
        if (s.status === 'gone' && snapIds.has(s.id)) problem(`after reopen: snapshot ${x.name}@${s.name} listed though its deletion resolved`)
        if (!snapIds.has(s.id)) continue
        for (let b = 0; b < s.blocks; b++) {
          try {
            const value = decode(await g.readBlock({ volume: x.id, snapshot: s.id }, b))
            if (!s.possible[b]!.has(value)) problem(`after reopen: ${x.name}@${s.name}[${b}] reads ${value}, expected one of ${show(s.possible[b])}`)
          } catch (err) { checkError(`after reopen: readBlock ${x.name}@${s.name}[${b}]`, err, []) }
        }
      }
      try {
        const report = await g.scrub(x.id)
        if (report.badBlocks.length > 0) problem(`after reopen: scrub ${x.name}: ${JSON.stringify(report.badBlocks)}`)
      } catch (err) { checkError(`after reopen: scrub ${x.name}`, err, []) }
    }
    const listedBackups = await g.listBackups()
    const backupIds = new Set(listedBackups.map((b) => b.id))
    for (const b of listedBackups) {
      if (!backups.has(b.id)) { if (!backupsUnreported.has(b.volumeId)) problem(`after reopen: backup ${b.id} of ${b.volumeName} (policy ${b.policy}) listed though no call reported it`) }
      else if (backups.get(b.id)!.status === 'gone') problem(`after reopen: backup ${b.id} listed though deleted`)
    }
    let restoreCount = 0
    await g.createPool({ name: 'h64-check', capacityBytes: MAX_BLOCKS * BLOCK * 4 })
    for (const b of backups.values()) {
      if (b.status === 'live' && !backupIds.has(b.id)) { problem(`after reopen: backup ${b.id} missing though created and not deleted`); continue }
      if (!backupIds.has(b.id)) continue
      try {
        const verification = await g.verifyBackup(b.id)
        if (!verification.ok) problem(`after reopen: verifyBackup ${b.id}: ${JSON.stringify(verification).slice(0, 300)}`)
        const name = `check-${restoreCount++}`
        const vol = await g.restoreBackup(b.id, { name, pool: 'h64-check' })
        for (let i = 0; i < b.blocks; i++) {
          const value = decode(await g.readBlock(vol.id, i))
          if (!b.possible[i]!.has(value)) problem(`after reopen: backup ${b.id.slice(0, 8)} (${b.about}) restores block ${i} as ${value}, expected one of ${show(b.possible[i])}`)
        }
        await g.deleteVolume(vol.id, { force: true })
      } catch (err) { checkError(`after reopen: backup ${b.id}`, err, []) }
    }
    // A name whose deletion resolved (and nothing else holds) can be taken again.
    for (const name of NAMES) {
      if ([...vols.values()].some((v) => v.name === name && v.status !== 'gone')) continue
      if (listed.some((x) => x.name === name)) continue
      try {
        const vol = await g.createVolume({ name, sizeBytes: BLOCK * 2 })
        await g.deleteVolume(vol.id)
      } catch (err) { checkError(`after reopen: createVolume ${name} (a free name)`, err, []) }
    }
    assert.ok(true)
  }
}
