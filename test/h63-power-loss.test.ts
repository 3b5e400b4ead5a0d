// Power loss, not just SIGKILL (helper h63). The storage lives on a FUSE file system served by a
// child process (test/support/h63-power-fs.ts) that keeps what each file and directory held at its
// last fsync. A GalleonFS child (test/support/h63-workload-child.ts) runs a workload and reports
// each acknowledgement as it happens; at a random moment it is SIGKILLed and the file system rolls
// every file and directory back to its durable state (unsynced writes dropped, or partly kept in
// order, torn, or as a random subset of pages), as a power cut would. A fresh GalleonFS in this
// process then opens the storage and checks: open succeeds; every WriteDurable write acknowledged
// before the cut, and every write acknowledged before a flush() that resolved, reads back (or a
// later write of the same block that was issued); no block is damaged or fails its checksum (scrub);
// every acknowledged createVolume, expandVolume, createSnapshot (with its contents),
// deleteSnapshot and key rotation is there; every backup listed verifies and restores to exactly
// what the volume held when it was taken, and every acknowledged backup is listed. Each trial cuts
// the power more than once (workload, cut, check, workload again on what is left, cut, check).
//
// H63_SEEDS=n adds n seeds (100, 101, ...) to every case, and backups on the level backend;
// H63_ROUNDS=n cuts the power n times per trial; H63_MODEL=ext4 runs the namespace model of ext4
// instead of the strict POSIX one (see h63-power-fs.ts).
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { GalleonFS } from '../src/index.js'
import { scriptArgs } from './support/child-script.js'
import { readChildLines } from './crash/support.js'
import { seededRandom } from '../src/seeded-random.js'
import { powerFsUnavailable, startPowerFs, type CutReport, type FlushMode, type NamespaceModel, type PowerFs } from './support/h63-power-fs.js'
import { BLOCK, decodeRegister, openStorage } from './support/h63-workload-child.js'

const CHILD = fileURLToPath(new URL('./support/h63-workload-child.ts', import.meta.url))
const ROOT = fileURLToPath(new URL('..', import.meta.url))
const unavailable = powerFsUnavailable()
const MODEL = (process.env.H63_MODEL ?? 'strict') as NamespaceModel
const EXTRA_SEEDS = Number(process.env.H63_SEEDS ?? '0')
const ROUNDS = process.env.H63_ROUNDS === undefined ? undefined : Number(process.env.H63_ROUNDS)
const FLUSH_MODES: FlushMode[] = ['drop', 'prefix', 'torn', 'pages']

let power: PowerFs | undefined
let root = ''

before(async () => {
  if (unavailable !== undefined) return
  root = await mkdtemp(join(tmpdir(), 'galleon-h63-'))
  power = await startPowerFs(join(root, 'backing'), join(root, 'mnt'), MODEL)
})
after(async () => {
  if (power !== undefined) await power.stop()
  if (root !== '') await rm(root, { recursive: true, force: true })
})

type Workload = 'register' | 'metadata' | 'backup'

/** What the children reported over all rounds of a trial, and what must hold after a cut. */
class History {
  /** Per `vol:block`: every seq issued, in order. */
  readonly issued = new Map<string, Set<number>>()
  /** Per `vol:block`: the newest write that must be on disk (durable ack, flushed, or read back after a clean reopen). */
  readonly floor = new Map<string, number>()
  /** WriteAcknowledged writes acknowledged so far, in order (a flush makes the ones before it durable). */
  readonly acknowledged: Array<{ key: string, seq: number }> = []
  readonly flushStarts = new Map<number, number>()
  readonly createdAcked = new Map<string, number>()
  readonly createdIssued = new Map<string, number>()
  readonly expandAcked = new Map<string, number>()
  readonly expandIssued = new Map<string, number>()
  /** Snapshots: `vol/snap` -> the seq its block 0 holds; acknowledged or only issued. */
  readonly snapAcked = new Map<string, number>()
  readonly snapIssued = new Map<string, number>()
  readonly delsnapIssued = new Set<string>()
  readonly delsnapAcked = new Set<string>()
  rotatedAcked = 0
  /** Backups: phase -> the seq every block of `bk` held when the backup was started. */
  readonly backupExpect = new Map<number, Map<number, number>>()
  readonly backupAcked = new Map<string, number>()
  /** Per `bk` block, the last seq written (all awaited before a backup starts). */
  readonly bkLatest = new Map<number, number>()

  raise (key: string, seq: number): void {
    if ((this.floor.get(key) ?? -1) < seq) this.floor.set(key, seq)
  }

  take (line: string): void {
    const [kind, ...args] = line.split(' ')
    switch (kind) {
      case 'W': {
        const [vol, block, seq] = args as [string, string, string]
        const key = `${vol}:${block}`
        let set = this.issued.get(key)
        if (set === undefined) this.issued.set(key, set = new Set())
        set.add(Number(seq))
        if (vol === 'bk') this.bkLatest.set(Number(block), Number(seq))
        break
      }
      case 'ack': this.raise(`${args[0] as string}:${args[1] as string}`, Number(args[2])); break
      case 'acka': this.acknowledged.push({ key: `${args[0] as string}:${args[1] as string}`, seq: Number(args[2]) }); break
      case 'F': this.flushStarts.set(Number(args[0]), this.acknowledged.length); break
      case 'flushed': {
        const upTo = this.flushStarts.get(Number(args[0])) ?? 0
        for (const { key, seq } of this.acknowledged.slice(0, upTo)) this.raise(key, seq)
        break
      }
      case 'I':
      case 'A': {
        const acked = kind === 'A'
        const [op, a, b, c] = args as [string, string, string, string]
        if (op === 'create') (acked ? this.createdAcked : this.createdIssued).set(a, Number(b))
        else if (op === 'expand') {
          const map = acked ? this.expandAcked : this.expandIssued
          map.set(a, Math.max(map.get(a) ?? 0, Number(b)))
        } else if (op === 'snap') (acked ? this.snapAcked : this.snapIssued).set(`${a}/${b}`, Number(c))
        else if (op === 'delsnap') (acked ? this.delsnapAcked : this.delsnapIssued).add(`${a}/${b}`)
        else if (op === 'rotate' && acked) this.rotatedAcked = Math.max(this.rotatedAcked, Number(b))
        else if (op === 'backup') {
          if (acked) this.backupAcked.set(b, Number(a))
          else this.backupExpect.set(Number(a), new Map(this.bkLatest))
        }
        break
      }
    }
  }
}

interface RoundResult { lines: number, durableAcks: number, metadataAcks: number, report: CutReport }

/** When to cut the power: `delayMs` after the child is ready, or when `arm` says so (through `cut`). */
type Trigger = { delayMs: number } | { arm: (line: string, cut: () => void) => void }

/**
 * Runs the workload child until the trigger, then cuts the power: the file system freezes (what is
 * durable at that instant is what the disk will hold), the child is SIGKILLed, and once it is gone
 * the backing files are rolled back to the frozen state.
 */
async function runRound (storagePath: string, backend: 'file' | 'level', workload: Workload, seed: number, seqBase: number, target: string, trigger: Trigger, mode: FlushMode, history: History): Promise<RoundResult> {
  const fsys = power as PowerFs
  const child = spawn(process.execPath, [...scriptArgs(CHILD), storagePath, backend, workload, String(seed), String(seqBase), target], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  const cutSeed = seed * 7919 + seqBase
  let timer: NodeJS.Timeout | undefined
  let cutting: Promise<void> | undefined
  const cut = (): void => {
    cutting ??= fsys.freeze(mode, cutSeed).then(() => { child.kill('SIGKILL') }, (err: Error) => { child.kill('SIGKILL'); throw err })
  }
  const deadline = setTimeout(cut, 120_000)
  let lines = 0
  let durableAcks = 0
  let metadataAcks = 0
  let error: string | undefined
  const exit = await readChildLines(child, (line) => {
    lines++
    if (line.startsWith('error ')) error ??= line
    if (line.startsWith('ack ')) durableAcks++
    if (line.startsWith('A ')) metadataAcks++
    history.take(line)
    if ('delayMs' in trigger) {
      if (line === 'ready' && timer === undefined) timer = setTimeout(cut, trigger.delayMs)
    } else trigger.arm(line, cut)
  })
  clearTimeout(deadline)
  if (timer !== undefined) clearTimeout(timer)
  await cutting
  // After the freeze the child's writes fail with EIO, so an error line then is expected.
  assert.ok(cutting !== undefined || error === undefined, `the workload child failed before the cut: ${error ?? ''}\n${exit.stderr.slice(0, 2000)}`)
  assert.ok(cutting !== undefined, `the child ended before the cut (exit ${String(exit.code)}, ${String(exit.signal)}): ${exit.stderr.slice(0, 2000)}`)
  // The child is gone, so nothing of it is in flight in the file system: roll the files back.
  const report = await fsys.cut(mode, cutSeed)
  return { lines, durableAcks, metadataAcks, report }
}

/** Opens the storage after a cut and checks everything the history says must hold. Returns the problems found. */
async function verify (storagePath: string, backend: 'file' | 'level', target: string, history: History, round: number): Promise<string[]> {
  const problems: string[] = []
  let g: GalleonFS
  try {
    g = await openStorage(storagePath, backend, target)
  } catch (err) {
    return [`open after the power cut failed: ${(err as { code?: string }).code ?? ''} ${(err as Error).message}`]
  }
  let mismatches = 0
  g.on('checksum:mismatch', () => { mismatches++ })
  const readBack = new Map<string, number>()
  try {
    const volumes = new Map((await g.listVolumes()).map((volume) => [volume.name, volume]))
    // Metadata.
    for (const [name, size] of history.createdAcked) {
      const volume = volumes.get(name)
      if (volume === undefined) { problems.push(`acknowledged createVolume ${name} is gone`); continue }
      const least = Math.max(size, history.expandAcked.get(name) ?? 0)
      const most = Math.max(size, history.expandIssued.get(name) ?? 0, history.expandAcked.get(name) ?? 0)
      if (volume.sizeBytes < least || volume.sizeBytes > most) problems.push(`volume ${name} has ${volume.sizeBytes} bytes; acknowledged ${least}, issued at most ${most}`)
    }
    for (const [key, at] of [...history.snapIssued, ...history.snapAcked]) {
      const [vol, snap] = key.split('/') as [string, string]
      if (!volumes.has(vol)) continue
      const snaps = new Set((await g.listSnapshots(vol)).map((s) => s.name))
      if (history.delsnapAcked.has(key)) {
        if (snaps.has(snap)) problems.push(`acknowledged deleteSnapshot ${key} is back`)
        continue
      }
      if (!snaps.has(snap)) {
        if (history.snapAcked.has(key) && !history.delsnapIssued.has(key)) problems.push(`acknowledged createSnapshot ${key} is gone`)
        continue
      }
      const bytes = await g.read({ volume: vol, snapshot: snap }, 0, BLOCK).catch((err: Error) => err)
      if (bytes instanceof Error) { problems.push(`snapshot ${key} block 0: ${(bytes as { code?: string }).code ?? ''} ${bytes.message}`); continue }
      const decoded = decodeRegister(vol, 0, bytes)
      if (decoded.kind !== 'data' || decoded.seq !== at) problems.push(`snapshot ${key} block 0 holds ${JSON.stringify(decoded)}, expected the write ${at} made before it`)
    }
    if (history.rotatedAcked > 0 && volumes.has('enc')) {
      const info = await g.getVolumeEncryption('enc')
      if ((info.keyVersion ?? 0) < history.rotatedAcked) problems.push(`volume enc is at key version ${String(info.keyVersion)}; rotation to ${history.rotatedAcked} was acknowledged`)
    }
    // Blocks: every key ever written.
    for (const [key, seqs] of history.issued) {
      const [vol, blockText] = key.split(':') as [string, string]
      const block = Number(blockText)
      const floor = history.floor.get(key)
      if (!volumes.has(vol)) {
        if (floor !== undefined) problems.push(`${key}: durable write ${floor} acknowledged, but volume ${vol} is gone`)
        continue
      }
      const bytes = await g.readBlock(vol, block).catch((err: Error) => err)
      if (bytes instanceof Error) { problems.push(`${key}: read failed: ${(bytes as { code?: string }).code ?? ''} ${bytes.message}`); continue }
      const decoded = decodeRegister(vol, block, bytes)
      if (decoded.kind === 'garbage') problems.push(`${key}: damaged block (${decoded.reason})`)
      else if (decoded.kind === 'zero') {
        if (floor !== undefined) problems.push(`${key}: reads zeros, but write ${floor} was acknowledged durable`)
      } else {
        if (!seqs.has(decoded.seq)) problems.push(`${key}: holds write ${decoded.seq}, never issued for it`)
        else if (floor !== undefined && decoded.seq < floor) problems.push(`${key}: holds write ${decoded.seq}, older than ${floor}, which was acknowledged durable`)
        readBack.set(key, decoded.seq)
      }
    }
    // Backups.
    if (volumes.has('bk') && history.backupExpect.size > 0) {
      const listed = await g.listBackups('bk', { target })
      const ids = new Set(listed.map((backup) => backup.id))
      for (const [id, phase] of history.backupAcked) if (!ids.has(id)) problems.push(`acknowledged backup ${id} (phase ${phase}) is not listed`)
      // Restoring every backup costs; the newest three and the acknowledged ones from this round are enough.
      const newest = listed.slice(-3)
      for (const backup of listed) {
        const verification = await g.verifyBackup(backup.id, { target }).catch((err: Error) => err)
        if (verification instanceof Error) { problems.push(`verifyBackup ${backup.id}: ${(verification as { code?: string }).code ?? ''} ${verification.message}`); continue }
        if (!verification.ok) problems.push(`verifyBackup ${backup.id}: ${JSON.stringify(verification.problems).slice(0, 300)}`)
        if (!newest.includes(backup)) continue
        // An acknowledged backup is of its phase. One that is listed but was never acknowledged is
        // the one some round's cut caught in flight (backups run one at a time): any phase started
        // and not acknowledged, in this round or an earlier one, whose backup is still among the newest.
        const ackedPhase = history.backupAcked.get(backup.id)
        const ackedPhases = new Set(history.backupAcked.values())
        const phases = ackedPhase !== undefined ? [ackedPhase] : [...history.backupExpect.keys()].filter((started) => !ackedPhases.has(started)).reverse()
        if (phases.length === 0) { problems.push(`backup ${backup.id} is listed but no backup was started`); continue }
        const name = `restored-${round}-${backup.id.slice(0, 8)}`
        const restored = await g.restoreBackup(backup.id, { name, target }).catch((err: Error) => err)
        if (restored instanceof Error) { problems.push(`restoreBackup ${backup.id}: ${(restored as { code?: string }).code ?? ''} ${restored.message}`); continue }
        const held: Array<number | string> = []
        for (let block = 0; block < 16; block++) {
          const decoded = decodeRegister('bk', block, await g.readBlock(name, block))
          held.push(decoded.kind === 'data' ? decoded.seq : decoded.kind)
        }
        const mismatchesOf = (phase: number): string[] => {
          const expect = history.backupExpect.get(phase) as Map<number, number>
          return held.flatMap((got, block) => {
            const want = expect.get(block)
            return (want ?? 'zero') === got ? [] : [`backup ${backup.id} (phase ${phase}) restores block ${block} as ${String(got)}, expected ${String(want ?? 'zero')}`]
          })
        }
        if (!phases.some((phase) => mismatchesOf(phase).length === 0)) problems.push(...mismatchesOf(phases[0] as number))
        await g.deleteVolume(name, { force: true })
      }
    }
    // Scrub: every stored version verifies.
    for (const volume of await g.listVolumes()) {
      const report = await g.scrub(volume.name).catch((err: Error) => err)
      if (report instanceof Error) problems.push(`scrub ${volume.name}: ${(report as { code?: string }).code ?? ''} ${report.message}`)
      else if (report.badBlocks.length > 0) problems.push(`scrub ${volume.name}: ${report.badBlocks.length} bad blocks, e.g. ${JSON.stringify(report.badBlocks[0])}`)
    }
    if (mismatches > 0) problems.push(`${mismatches} checksum:mismatch events`)
  } finally {
    await g.close().catch((err: Error) => { problems.push(`close after the checks failed: ${err.message}`) })
  }
  // What a clean reopen read (and close() flushed) is on disk now: later cuts must keep it.
  for (const [key, seq] of readBack) history.raise(key, seq)
  return problems
}

/** One trial: `rounds` times workload, power cut, checks. */
async function trial (workload: Workload, backend: 'file' | 'level', seed: number, rounds: number): Promise<{ problems: string[], log: string[] }> {
  const random = seededRandom(seed * 104729 + (backend === 'file' ? 1 : 2) + [...workload].reduce((sum, c) => sum * 31 + c.charCodeAt(0), 0))
  const dir = join((power as PowerFs).mountPoint, `${workload}-${backend}-${seed}`)
  const storagePath = join(dir, 'store')
  const target = join(dir, 'target')
  const history = new History()
  const log: string[] = []
  const problems: string[] = []
  for (let round = 0; round < rounds; round++) {
    const delayMs = Math.floor(100 + random() * 1400)
    const mode = FLUSH_MODES[Math.floor(random() * FLUSH_MODES.length)] as FlushMode
    const result = await runRound(storagePath, backend, workload, seed, (round + 1) * 10_000_000, target, { delayMs }, mode, history)
    const { report } = result
    log.push(`round ${round}: killed ${delayMs} ms after ready, ${result.durableAcks} durable acks, ${result.metadataAcks} metadata acks; cut (${mode}): ${report.filesRolledBack} files rolled back, ${report.opsDropped} ops dropped, ${report.opsKept} kept, names lost ${report.namesLost.length} [${report.namesLost.slice(0, 6).join(' ')}], revived ${report.namesRevived.length} [${report.namesRevived.slice(0, 6).join(' ')}]`)
    const found = await verify(storagePath, backend, target, history, round)
    for (const problem of found) problems.push(`round ${round} (${mode}): ${problem}`)
    if (found.length > 0) break
  }
  return { problems, log }
}

const skip = unavailable === undefined ? false : unavailable

describe(`h63: power loss under a real storagePath (${MODEL} namespace model)`, { skip }, () => {
  it('the power-loss file system drops unsynced data and names, keeps synced ones (checks the model itself)', async () => {
    const { mkdir, open, rename, readdir, readFile, writeFile } = await import('node:fs/promises')
    const dir = join((power as PowerFs).mountPoint, 'model-check')
    await mkdir(dir)
    const syncDir = async (path: string): Promise<void> => { const handle = await open(path, 'r'); await handle.sync(); await handle.close() }
    await syncDir((power as PowerFs).mountPoint)
    const kept = await open(join(dir, 'kept'), 'w')
    await kept.write(Buffer.from('synced'))
    await kept.sync()
    await kept.write(Buffer.from(' and not'))
    await kept.close()
    await syncDir(dir)
    await writeFile(join(dir, 'unsynced-name'), 'x')
    const synced = await open(join(dir, 'synced-data-unsynced-name'), 'w')
    await synced.write(Buffer.from('data'))
    await synced.sync()
    await synced.close()
    await rename(join(dir, 'kept'), join(dir, 'renamed'))
    const report = await (power as PowerFs).cut('drop', 1)
    assert.ok(report.opsDropped >= 1, 'the unsynced write was dropped')
    const names = (await readdir(dir)).sort()
    if (MODEL === 'strict') assert.deepEqual(names, ['kept'], 'only the name made durable by a directory fsync is left')
    else assert.deepEqual(names, ['kept', 'synced-data-unsynced-name', 'unsynced-name'], 'ext4: a file fsync commits every name made before it, not the rename after')
    assert.equal(await readFile(join(dir, 'kept'), 'utf8'), 'synced', 'the file holds what its fsync made durable')
  })

  it('metadata on the file backend: a power cut in a new storage\'s first session, after createVolume was acknowledged, leaves the storage openable with the volume', async (t) => {
    const dir = join((power as PowerFs).mountPoint, 'first-session')
    const storagePath = join(dir, 'store')
    const target = join(dir, 'target')
    const history = new History()
    let created = 0
    const result = await runRound(storagePath, 'file', 'metadata', 7, 10_000_000, target, {
      arm: (line, cut) => { if (line.startsWith('A create m') && ++created === 2) cut() }
    }, 'drop', history)
    t.diagnostic(`cut after ${result.metadataAcks} metadata acks; names lost [${result.report.namesLost.join(' ')}], revived [${result.report.namesRevived.join(' ')}]`)
    assert.ok(history.createdAcked.size >= 3, 'enc and two more volumes were acknowledged before the cut')
    const problems = await verify(storagePath, 'file', target, history, 0)
    assert.deepEqual(problems, [], `after a power cut in the first session:\n${problems.join('\n')}`)
  })

  it('register on the level backend: writes acknowledged durable after LevelDB switched to a new log, before its next manifest sync, survive a power cut', async (t) => {
    const fsys = power as PowerFs
    const dir = join(fsys.mountPoint, 'level-log-switch')
    const storagePath = join(dir, 'store')
    const target = join(dir, 'target')
    const history = new History()
    // A first session, closed cleanly, so this one does not start from a brand-new database.
    const first = await openStorage(storagePath, 'level')
    await first.createVolume({ name: 'reg', sizeBytes: 64 * BLOCK })
    await first.close()
    history.take(`A create reg ${64 * BLOCK}`)
    // From the moment the workload runs, every fsync of the level store's directory is held back:
    // LevelDB's own (it syncs the directory with its manifest, after a new log was made and has
    // taken synced writes) and any GalleonFS makes. The power fails 20 durable acks after the first.
    let stalled = false
    let acksAfter = 0
    let fallback: NodeJS.Timeout | undefined
    let armCut: (() => void) | undefined
    fsys.onStalled((path) => {
      if (stalled || armCut === undefined || !path.includes('level-log-switch')) return
      stalled = true
      // If nothing is acknowledged while the directory sync waits, that is the right behaviour: cut anyway.
      fallback = setTimeout(armCut, 5_000)
    })
    const result = await runRound(storagePath, 'level', 'register', 3, 10_000_000, target, {
      arm: (line, cut) => {
        armCut = cut
        if (line === 'ready') void fsys.stallDirSync('level-log-switch/store/blocks-level$')
        if (stalled && line.startsWith('ack ') && ++acksAfter === 20) cut()
      }
    }, 'drop', history)
    clearTimeout(fallback)
    t.diagnostic(`${acksAfter} durable acks after the stalled directory sync, ${result.durableAcks} in all; names lost [${result.report.namesLost.join(' ')}]`)
    assert.ok(stalled, 'a directory sync of the level store was held back (LevelDB switched logs during the run)')
    const problems = await verify(storagePath, 'level', target, history, 0)
    assert.deepEqual(problems, [], `after a power cut while the manifest sync waited:\n${problems.slice(0, 10).join('\n')}`)
  })

  const cases: Array<{ workload: Workload, backend: 'file' | 'level', seeds: number[], rounds: number }> = [
    { workload: 'register', backend: 'file', seeds: [1, 2], rounds: 2 },
    { workload: 'register', backend: 'level', seeds: [1], rounds: 2 },
    { workload: 'metadata', backend: 'file', seeds: [1], rounds: 2 },
    { workload: 'metadata', backend: 'level', seeds: [1], rounds: 1 },
    { workload: 'backup', backend: 'file', seeds: [1], rounds: 2 },
    { workload: 'backup', backend: 'level', seeds: [], rounds: 2 }
  ]
  for (const { workload, backend, seeds, rounds: defaultRounds } of cases) {
    const rounds = ROUNDS ?? defaultRounds
    const all = [...seeds, ...Array.from({ length: EXTRA_SEEDS }, (_unused, i) => 100 + i)]
    for (const seed of all) {
      it(`${workload} on the ${backend} backend, seed ${seed}: ${rounds} power cuts at random points; everything acknowledged survives, nothing is damaged`, async (t) => {
        const { problems, log } = await trial(workload, backend, seed, rounds)
        for (const line of log) t.diagnostic(line)
        assert.deepEqual(problems, [], `after a power cut:\n${problems.slice(0, 20).join('\n')}\n${log.join('\n')}`)
      })
    }
  }
})
