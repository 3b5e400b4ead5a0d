// Seeded random sequences of writes, trims, expansions, snapshots, backups (full, incremental,
// differential, to two targets), deletions, policy runs with retention, restores (into new volumes
// and over existing ones), verifications and bad requests, on the file backend, with plain and
// encrypted volumes, checked against a plain model (test/support/backup-fuzz-model.ts): the image
// every backup restores to, the backups each target holds after each deletion and prune, the
// snapshots and live data of every volume. GALLEON_FUZZ_SEED replays a run (a failure prints its
// seed and the operations so far); GALLEON_FUZZ_STEPS sets the operations per run.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, readdir, rename, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonError, GalleonFS, type Backup, type BackupPolicyRun, type GalleonErrorCode, type OpenOptions, type Volume } from '../src/index.js'
import { seededRandom } from '../src/seeded-random.js'
import { decodeManifest } from '../src/backup/format.js'
import {
  basesOf, chooseBase, dependantsOf, ordered, prunedBy, snapshotsFreed,
  type ModelBackup, type ModelVolume, type Retention, type Strategy
} from './support/backup-fuzz-model.js'
import { chunkUse, targetState } from './support/backup-fuzz-target.js'
import { testSeed } from './support/test-seed.js'

const SEED = testSeed('GALLEON_FUZZ_SEED', 1616600618)
const STEPS = Number(process.env.GALLEON_FUZZ_STEPS ?? 250)
if (!Number.isSafeInteger(SEED) || !Number.isSafeInteger(STEPS)) throw new Error('GALLEON_FUZZ_SEED and GALLEON_FUZZ_STEPS must be integers')

/** Volume sizes in blocks: sources start between MIN and MAX, and grow up to LIMIT. */
const MIN_BLOCKS = 6
const MAX_BLOCKS = 24
const LIMIT_BLOCKS = 48
/** Live volumes at most (restored ones beyond this are checked and deleted). */
const MAX_VOLUMES = 5
const POLICY = 'fuzz'
const STRATEGIES: Strategy[] = ['full', 'incremental', 'differential']

const dirs: string[] = []
after(async () => { for (const dir of dirs) await rm(dir, { recursive: true, force: true }) })
async function place (): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'galleon-backup-fuzz-'))
  dirs.push(dir)
  return dir
}

class FakeClock {
  constructor (public time: number) {}
  now (): number { return this.time }
}

class BackupFuzz {
  g!: GalleonFS
  readonly random: () => number
  readonly log: string[] = []
  readonly clock = new FakeClock(Date.UTC(2026, 0, 5, 1, 0))
  readonly volumes = new Map<string, ModelVolume>()
  readonly backups = new Map<string, ModelBackup>()
  targets: string[] = []
  policy: { name: string, target: string, volumes: string[], strategy: Strategy, fullEvery: number, retention: Retention } | undefined
  /** What the run did, reported as a diagnostic (so a run that exercised little shows it). */
  readonly stats = new Map<string, number>()
  #names = 0
  #options!: OpenOptions

  count (what: string, by = 1): void { this.stats.set(what, (this.stats.get(what) ?? 0) + by) }

  /** The run's block size, and how many blocks the engine caches (a stale cache after a restore or trim would show). */
  constructor (seed: number, readonly encrypted: boolean, readonly bs: number, readonly cacheBlocks: number) {
    this.random = seededRandom(seed)
  }

  int (below: number): number { return Math.floor(this.random() * below) }
  chance (p: number): boolean { return this.random() < p }
  pick<T> (items: readonly T[]): T | undefined { return items.length === 0 ? undefined : items[this.int(items.length)] }
  name (prefix: string): string { return `${prefix}${++this.#names}` }
  vol (name: string): ModelVolume { return this.volumes.get(name) as ModelVolume }
  /**
   * The model's backups oldest first, those of one moment (a policy run, backups at once) in the
   * order they were taken: what the run picks from this depends on the seed alone. (ordered() breaks
   * such ties by backup id, which is random, so picks from it made a seed run differently each time.)
   */
  taken (): ModelBackup[] { return [...this.backups.values()] }

  async open (): Promise<void> {
    this.targets = [await place(), await place()]
    this.#options = { storagePath: await place(), backupTarget: this.targets[0] as string, clock: this.clock, blockSize: this.bs, cacheBlocks: this.cacheBlocks }
    this.g = await GalleonFS.open(this.#options)
    this.listen()
    await this.g.createStorageClass({ name: 'sealed', provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
    for (const [name, encrypted] of [['a', false], ['b', this.encrypted]] as const) await this.create(name, (MIN_BLOCKS + this.int(MAX_BLOCKS - MIN_BLOCKS + 1)) * this.bs, encrypted)
    if (this.chance(0.8)) await this.newPolicy(POLICY)
  }

  /** A policy with random parameters (the schedule runs daily at 02:00 UTC). */
  async newPolicy (name: string): Promise<void> {
    const retention = { daily: this.int(4), weekly: this.int(3), monthly: this.int(2) }
    if (retention.daily + retention.weekly + retention.monthly === 0) retention.daily = 1
    const policy = { name, target: this.pick(this.targets) as string, volumes: this.chance(0.5) ? ['a', 'b'] : ['b'], strategy: this.pick(STRATEGIES) as Strategy, fullEvery: 2 + this.int(4), retention }
    this.log.push(`createBackupPolicy ${JSON.stringify({ ...policy, target: this.t(policy.target) })}`)
    await this.g.createBackupPolicy({ schedule: '0 2 * * *', ...policy })
    this.policy = policy
  }

  /** Deletes the policy (its backups stay, and are pruned again only by a policy of the same name) and makes another. */
  async replacePolicy (): Promise<void> {
    const old = this.policy
    if (old !== undefined) {
      this.log.push(`deleteBackupPolicy ${old.name}`)
      await this.g.deleteBackupPolicy(old.name)
      this.policy = undefined
    }
    await this.newPolicy(this.chance(0.5) && old !== undefined ? old.name : this.name('policy'))
    this.count('replace the policy')
  }

  async create (name: string, size: number, encrypted: boolean): Promise<void> {
    this.log.push(`createVolume ${name} ${size / this.bs} blocks${encrypted ? ' encrypted' : ''}`)
    const volume = await this.g.createVolume({ name, sizeBytes: size, ...(encrypted ? { storageClass: 'sealed' } : {}) })
    assert.equal(volume.encrypted, encrypted)
    this.volumes.set(name, { name, id: volume.id, encrypted, data: new Uint8Array(size), snapshots: new Map(), keyEpoch: 0 })
  }

  t (path: string): number { return this.targets.indexOf(path) }

  // ---------------------------------------------------------------- checks

  async image (source: string | { volume: string, snapshot: string }, size: number): Promise<Buffer> {
    return Buffer.from(await this.g.read(source, 0, size))
  }

  /** The volume reads as the model, at the model's size, and so does each of its snapshots (none more, none fewer). */
  async checkVolume (volume: ModelVolume, snapshots = true): Promise<void> {
    const record = await this.g.getVolume(volume.name)
    assert.equal(record.sizeBytes, volume.data.byteLength, `${volume.name}: size`)
    assert.ok((await this.image(volume.name, volume.data.byteLength)).equals(volume.data), `${volume.name}: the live volume reads as the model`)
    if (!snapshots) return
    const listed = await this.g.listSnapshots(volume.name)
    assert.deepEqual(listed.map((s) => s.name).sort(), [...volume.snapshots.keys()].sort(), `${volume.name}: its snapshots`)
    for (const snapshot of listed) {
      const expected = volume.snapshots.get(snapshot.name) as Uint8Array
      assert.equal(snapshot.sizeBytes, expected.byteLength, `${volume.name}@${snapshot.name}: size`)
      assert.ok((await this.image({ volume: volume.name, snapshot: snapshot.name }, expected.byteLength)).equals(expected), `${volume.name}@${snapshot.name} reads as the model`)
    }
  }

  /** Each target lists exactly the model's backups, each as the model describes it. */
  async checkListed (): Promise<void> {
    for (const target of this.targets) {
      const expected = ordered(this.backups.values()).filter((b) => b.target === target)
      // A directory no backup was ever started on is no target yet: listing it by path is refused
      // (a mistyped path must not read as an empty target), and nothing is made there.
      const listing = await this.g.listBackups(undefined, { target }).then((backups) => backups, (err: GalleonError) => err)
      if (listing instanceof Error) {
        assert.equal((listing as GalleonError).code, 'BACKUP_NOT_FOUND', listing.message)
        assert.match(listing.message, /no backups on .*: it is not a backup target .*check the path/)
        assert.equal(expected.length, 0, `target ${this.t(target)} holds backups, yet listing it was refused`)
        assert.equal(existsSync(join(target, 'galleonfs-backup.json')), false, 'the refused listing made no target')
        continue
      }
      const listed = listing
      assert.deepEqual(listed.map((b) => b.id), expected.map((b) => b.id), `target ${this.t(target)} lists the model's backups, oldest first`)
      for (const [i, backup] of listed.entries()) this.checkFields(backup, expected[i] as ModelBackup)
    }
  }

  checkFields (backup: Backup, model: ModelBackup): void {
    const seen = { volumeId: backup.volumeId, strategy: backup.strategy, requested: backup.requestedStrategy, baseId: backup.baseId, sizeBytes: backup.sizeBytes, policy: backup.policy, encrypted: backup.encrypted, snapshot: backup.snapshotName, createdAt: backup.createdAt }
    const wanted = { volumeId: model.volumeId, strategy: model.strategy, requested: model.requested, baseId: model.baseId, sizeBytes: model.image.byteLength, policy: model.policy, encrypted: model.encrypted, snapshot: model.snapshot, createdAt: new Date(model.createdAt).toISOString() }
    assert.deepEqual(seen, wanted, `backup ${backup.id}`)
  }

  /** Verifies, then restores into a new volume: byte-exact at the backup's size; the volume is deleted again. */
  async checkRestores (backup: ModelBackup): Promise<void> {
    const verified = await this.g.verifyBackup(backup.id, { target: backup.target })
    assert.deepEqual(verified.problems, [], `backup ${backup.id} verifies`)
    assert.equal(verified.ok, true)
    assert.equal(verified.backupsChecked, 1 + basesOf(backup, this.backups).length, 'verify checks the backup and every base')
    const name = this.name('check')
    const restored = await this.g.restoreBackup(backup.id, { name, target: backup.target })
    try {
      assert.equal(restored.sizeBytes, backup.image.byteLength, `backup ${backup.id}: restored size`)
      assert.equal(restored.encrypted, backup.encrypted, `backup ${backup.id}: an encrypted backup restores into an encrypted volume`)
      assert.ok((await this.image(name, backup.image.byteLength)).equals(backup.image), `backup ${backup.id} (${backup.strategy}, ${basesOf(backup, this.backups).length} bases) restores byte for byte`)
      assert.deepEqual(await this.g.listSnapshots(name), [], 'a restored volume has no snapshot')
    } finally {
      await this.g.deleteVolume(name, { force: true })
    }
  }

  /** After a deletion that collected at once: the target holds exactly the chunks its manifests name. */
  async checkCollected (target: string): Promise<void> {
    const { held, named } = await chunkUse(target)
    assert.deepEqual([...held].sort(), [...named].sort(), `target ${this.t(target)}: with no grace, exactly the chunks a remaining backup names are left`)
  }

  /** `run` is refused with `code`, a GalleonError whose message says something, and nothing stored changed. */
  async refused (what: string, code: GalleonErrorCode, run: () => Promise<unknown>, mentions: string[] = []): Promise<void> {
    this.log.push(`refused? ${what} -> ${code}`)
    this.count(`refused ${code}`)
    const before = await Promise.all(this.targets.map(targetState))
    const volumesBefore = (await this.g.listVolumes()).map((v) => `${v.name}:${v.sizeBytes}`).sort()
    let error: unknown
    try {
      await run()
    } catch (err) {
      error = err
    }
    assert.ok(error instanceof GalleonError, `${what}: rejects with a GalleonError, got ${String(error)}`)
    assert.equal(error.code, code, `${what}: ${error.message}`)
    assert.ok(error.message.length > 20, `${what}: a message that explains: ${error.message}`)
    for (const text of mentions) assert.ok(error.message.includes(text), `${what}: the message names ${text}: ${error.message}`)
    assert.deepEqual(await Promise.all(this.targets.map(targetState)), before, `${what}: the targets are unchanged`)
    assert.deepEqual((await this.g.listVolumes()).map((v) => `${v.name}:${v.sizeBytes}`).sort(), volumesBefore, `${what}: no volume appeared or changed size`)
  }

  // ---------------------------------------------------------------- operations

  data (length: number): Uint8Array {
    const data = new Uint8Array(length)
    const kind = this.int(4)
    if (kind === 0) return data // zeros: a block written back to zeros holds no data
    if (kind === 1) return data.fill(1 + this.int(4)) // repeated: shared chunks across volumes and backups
    const seed = this.int(2 ** 30)
    for (let i = 0; i < length; i += 61) data[i] = (seed + i * 7) & 0xff
    data[0] = 1 + this.int(255)
    return data
  }

  async write (volume: ModelVolume): Promise<void> {
    const size = volume.data.byteLength
    const blocks = size / this.bs
    let offset: number
    let length: number
    if (this.chance(0.5)) {
      offset = this.int(blocks) * this.bs
      length = Math.min(blocks * this.bs - offset, (1 + (this.chance(0.5) ? 0 : this.int(6))) * this.bs)
    } else {
      // Unaligned, maybe across blocks.
      offset = this.int(size - 1)
      length = 1 + this.int(Math.min(size - offset, 3 * this.bs) - 1)
    }
    const data = this.data(length)
    this.log.push(`write ${volume.name} ${offset} +${length}`)
    await this.g.write(volume.name, offset, data)
    volume.data.set(data, offset)
  }

  async trim (volume: ModelVolume): Promise<void> {
    const size = volume.data.byteLength
    const offset = this.chance(0.5) ? this.int(size / this.bs) * this.bs : this.int(size - 1)
    const length = 1 + this.int(Math.min(size - offset, 6 * this.bs) - 1)
    this.log.push(`trim ${volume.name} ${offset} +${length}`)
    await this.g.trim(volume.name, offset, length)
    volume.data.fill(0, offset, offset + length)
  }

  async expand (volume: ModelVolume): Promise<void> {
    const blocks = volume.data.byteLength / this.bs
    if (blocks >= LIMIT_BLOCKS) return
    const grown = (blocks + 1 + this.int(Math.min(8, LIMIT_BLOCKS - blocks))) * this.bs
    this.log.push(`expandVolume ${volume.name} ${grown / this.bs} blocks`)
    await this.g.expandVolume(volume.name, grown)
    const data = new Uint8Array(grown)
    data.set(volume.data)
    volume.data = data
  }

  async snapshot (volume: ModelVolume): Promise<void> {
    const name = this.name('s')
    this.log.push(`createSnapshot ${volume.name} ${name}`)
    await this.g.createSnapshot(volume.name, name)
    volume.snapshots.set(name, volume.data.slice())
  }

  async deleteSnapshot (volume: ModelVolume): Promise<void> {
    // Mostly the user's own; now and then one a backup keeps as a base (README: the next
    // incremental then builds on an older backup).
    const names = [...volume.snapshots.keys()]
    const own = names.filter((n) => !n.startsWith('backup-'))
    const name = this.pick(this.chance(0.75) && own.length > 0 ? own : names)
    if (name === undefined) return
    if (this.clonesOf(volume, name).length > 0) {
      await this.refused(`deleteSnapshot ${volume.name} ${name}, which a clone reads from`, 'BUSY', async () => await this.g.deleteSnapshot(volume.name, name), [name])
      return
    }
    this.log.push(`deleteSnapshot ${volume.name} ${name}`)
    await this.g.deleteSnapshot(volume.name, name)
    volume.snapshots.delete(name)
    this.left.delete(`${volume.name}@${name}`)
  }

  async revert (volume: ModelVolume): Promise<void> {
    const name = this.pick([...volume.snapshots.keys()])
    if (name === undefined) return
    this.log.push(`restoreSnapshot ${volume.name} ${name}`)
    await this.g.restoreSnapshot(volume.name, name)
    const data = new Uint8Array(volume.data.byteLength)
    data.set(volume.snapshots.get(name) as Uint8Array)
    volume.data = data
  }

  async rotate (volume: ModelVolume): Promise<void> {
    if (!volume.encrypted) return
    if (this.chance(0.3)) {
      this.log.push('rotateKeyEncryptionKey')
      await this.g.rotateKeyEncryptionKey()
      this.count('rotateKeyEncryptionKey')
      return
    }
    // Without waiting now and then: the re-encryption runs under the operations that follow.
    const wait = this.chance(0.5)
    this.log.push(`rotateVolumeKey ${volume.name}${wait ? '' : ' (not waiting)'}`)
    // A rotation not waited for may still re-encrypt: a new one is refused with BUSY until it is
    // done (it may finish between this look and the call, then the call goes through).
    const before = await this.g.getVolumeEncryption(volume.name)
    try {
      await this.g.rotateVolumeKey(volume.name, { wait })
    } catch (err) {
      if (!(err instanceof GalleonError) || err.code !== 'BUSY' || before.rotation === undefined) throw err
      assert.match(err.message, /already re-encrypting/)
      this.log.push('  refused BUSY: the rotation before it is still re-encrypting')
      this.count('refused BUSY (rotation running)')
      return
    }
    volume.keyEpoch++
    this.count('rotateVolumeKey')
  }

  /** Closes and opens the instance again: the model does not change. */
  async reopen (): Promise<void> {
    this.log.push('close, open')
    await this.g.close()
    this.g = await GalleonFS.open(this.#options)
    this.listen()
    // Snapshots left to delete go now, unless a clone still reads from them (reported again).
    for (const entry of [...this.left]) {
      const [name, snapshot] = entry.split('@') as [string, string]
      const volume = this.volumes.get(name)
      if (volume === undefined || !volume.snapshots.has(snapshot)) { this.left.delete(entry); continue }
      if (this.clonesOf(volume, snapshot).length > 0) this.expectedErrors.push(snapshot)
      else { volume.snapshots.delete(snapshot); this.left.delete(entry) }
    }
    await new Promise((resolve) => setImmediate(resolve))
    this.count('reopen')
  }

  /** Applies a backup the instance took to the model: its image, its snapshot, the snapshots it frees. */
  takeIntoModel (volume: ModelVolume, backup: Backup, target: string, requested: Strategy, policy: string | null): ModelBackup {
    const { base, strategy } = chooseBase(volume, target, requested, this.backups)
    const model: ModelBackup = {
      id: backup.id, volumeId: volume.id, volumeName: volume.name, target, strategy, requested, baseId: base?.id ?? null,
      image: volume.data.slice(), createdAt: this.clock.time, policy, snapshot: `backup-${backup.id}`, encrypted: volume.encrypted, keyEpoch: volume.keyEpoch
    }
    this.checkFields(backup, model)
    assert.equal(backup.target, target)
    this.count(`backup ${strategy}${strategy === requested ? '' : ` (asked ${requested})`}${volume.encrypted ? ' encrypted' : ''}`)
    const freed = snapshotsFreed(volume, model, this.backups)
    this.backups.set(model.id, model)
    volume.snapshots.set(model.snapshot, volume.data.slice())
    for (const name of freed) this.free(volume, name)
    return model
  }

  async backup (volume: ModelVolume): Promise<void> {
    const requested = this.pick(STRATEGIES) as Strategy
    const target = this.targets[this.chance(0.7) ? 0 : 1] as string
    const implicit = target === this.targets[0] && this.chance(0.5)
    const options = { strategy: requested, ...(implicit ? {} : { target }) }
    const mishap = this.int(10)
    if (mishap === 0) {
      await this.refused(`createBackup ${volume.name} whose pre hook throws`, 'HOOK_FAILED', async () => await this.g.createBackup(volume.name, { ...options, hooks: { pre: () => { throw new Error('application not quiesced') } } }), ['application not quiesced'])
      await this.checkVolume(volume)
      return
    }
    let backup: Backup
    if (mishap === 1) {
      // The post hook runs once the backup is stored: its failure does not undo the backup.
      let stored: Backup | undefined
      this.log.push(`createBackup ${volume.name} ${requested} target ${this.t(target)}, its post hook throws`)
      const error = await this.g.createBackup(volume.name, { ...options, hooks: { post: (b) => { stored = b; throw new Error('post failed') } } }).then(() => undefined, (err: unknown) => err)
      assert.ok(error instanceof GalleonError && error.code === 'HOOK_FAILED', String(error))
      assert.ok(stored !== undefined && error.message.includes(stored.id), error.message)
      backup = stored
      this.count('post hook failed')
    } else if (mishap === 2) {
      // Cancelled at its k-th progress report: CANCELLED and nothing recorded, or done before it looked.
      const abort = new AbortController()
      let reports = 0
      const at = this.int(3)
      const manifests = await readdir(join(target, 'manifests')).catch(() => [])
      this.log.push(`createBackup ${volume.name} ${requested} target ${this.t(target)}, aborted at progress report ${at}`)
      const outcome = await this.g.createBackup(volume.name, { ...options, signal: abort.signal, onProgress: () => { if (reports++ === at) abort.abort() } }).then((b) => b, (err: unknown) => err)
      if (!(outcome instanceof Error)) {
        this.log.push('  (finished before it saw the abort)')
        backup = outcome as Backup
      } else {
        assert.ok(outcome instanceof GalleonError && outcome.code === 'CANCELLED', String(outcome))
        assert.deepEqual(await readdir(join(target, 'manifests')).catch(() => []), manifests, 'a cancelled backup stores no manifest')
        this.count('backup cancelled')
        await this.checkVolume(volume)
        return
      }
    } else {
      this.log.push(`createBackup ${volume.name} ${requested} target ${this.t(target)}`)
      backup = await this.g.createBackup(volume.name, options)
    }
    this.log.push(`  -> ${backup.id} ${backup.strategy} base ${backup.baseId}`)
    this.takeIntoModel(volume, backup, target, requested, null)
    // Taking a backup changes neither the live volume nor any snapshot the model has.
    await this.checkVolume(volume)
  }

  /**
   * Backups of two volumes, and of one volume to both targets, at once, with a verification, a
   * restore into a new volume and a deletion on a target no backup in flight uses: nothing they
   * share may change what each one does.
   */
  async parallel (): Promise<void> {
    const [x, y] = [...this.volumes.values()].sort(() => this.random() - 0.5) as [ModelVolume, ModelVolume]
    const jobs: Array<{ volume: ModelVolume, target: string, requested: Strategy }> = [
      { volume: x, target: this.targets[0] as string, requested: this.pick(STRATEGIES) as Strategy },
      { volume: this.chance(0.5) ? x : y, target: this.targets[1] as string, requested: this.pick(STRATEGIES) as Strategy }
    ]
    if (this.chance(0.5)) jobs.pop()
    const busy = new Set(jobs.map((job) => job.target))
    const idle = this.targets.find((target) => !busy.has(target))
    const doomed = idle === undefined ? undefined : this.pick(this.taken().filter((b) => b.target === idle && dependantsOf(b.id, this.backups).length === 0))
    const check = this.pick(this.taken())
    const name = this.name('r')
    this.log.push(`at once: ${jobs.map((job) => `createBackup ${job.volume.name} ${job.requested} target ${this.t(job.target)}`).join(', ')}${doomed === undefined ? '' : `, deleteBackup ${doomed.id}`}${check === undefined ? '' : `, verifyBackup ${check.id}, restoreBackup ${check.id} -> new ${name}`}`)
    const [taken, deleted, verified, restored] = await Promise.all([
      Promise.all(jobs.map(async (job) => await this.g.createBackup(job.volume.name, { strategy: job.requested, target: job.target }))),
      doomed === undefined ? undefined : this.g.deleteBackup(doomed.id, { target: doomed.target, chunkGraceSeconds: 0 }),
      check === undefined ? undefined : this.g.verifyBackup(check.id, { target: check.target }),
      check === undefined ? undefined : this.g.restoreBackup(check.id, { name, target: check.target })
    ])
    this.count('at once')
    for (const [i, job] of jobs.entries()) this.takeIntoModel(job.volume, taken[i] as Backup, job.target, job.requested, null)
    if (doomed !== undefined) {
      assert.deepEqual(deleted?.deletedBackups, [doomed.id])
      this.forget([doomed.id])
      await this.checkCollected(doomed.target)
    }
    if (check !== undefined) {
      assert.equal(verified?.ok, true, JSON.stringify(verified?.problems))
      assert.equal(restored?.sizeBytes, check.image.byteLength)
      assert.ok((await this.image(name, check.image.byteLength)).equals(check.image), `backup ${check.id} restored while others ran reads as it was taken`)
      await this.g.deleteVolume(name, { force: true })
    }
    for (const volume of new Set(jobs.map((job) => job.volume))) await this.checkVolume(volume)
    await this.checkListed()
  }

  async runPolicy (): Promise<void> {
    const policy = this.policy
    if (policy === undefined) return
    let run: BackupPolicyRun
    if (this.chance(0.5)) {
      this.log.push(`runBackupPolicy ${policy.name}`)
      run = await this.g.runBackupPolicy(policy.name)
    } else {
      const stored = await this.g.getBackupPolicy(policy.name)
      const due = stored.missedRuns.length > 0 || (stored.nextRunAt !== null && Date.parse(stored.nextRunAt) <= this.clock.time)
      this.log.push(`runDueBackupPolicies (${policy.name} ${due ? 'due' : 'not due'})`)
      const runs = await this.g.runDueBackupPolicies()
      assert.equal(runs.length, due ? 1 : 0, 'a policy runs when its time has come, and only then')
      if (!due) return
      run = runs[0] as BackupPolicyRun
      assert.equal(Date.parse(run.scheduledAt) <= this.clock.time, true)
      const after = await this.g.getBackupPolicy(policy.name)
      assert.equal(after.lastRunAt, run.scheduledAt)
      assert.equal(after.nextRunAt !== null && Date.parse(after.nextRunAt) > this.clock.time, true, 'the next run is in the future')
      this.count('scheduled run')
    }
    assert.deepEqual(run.errors, [], 'the policy run failed nowhere')
    assert.equal(run.backups.length, policy.volumes.length, 'one backup per volume')
    const taken = new Set<string>()
    for (const [i, name] of policy.volumes.entries()) {
      const volume = this.vol(name)
      let requested = policy.strategy
      if (requested !== 'full') {
        // README: a full on the policy's first backup of the volume, and once the chain the next
        // backup would extend holds fullEvery backups (an incremental's: the volume's newest backup
        // on the target and its bases, whoever took them; a differential's: the newest full and the
        // differentials on it).
        const all = ordered(this.backups.values()).filter((b) => b.volumeId === volume.id && b.target === policy.target)
        let chain = 0
        if (requested === 'differential') {
          const full = all.filter((b) => b.strategy === 'full').at(-1)
          chain = full === undefined ? 0 : 1 + all.filter((b) => b.baseId === full.id && b.strategy === 'differential').length
        } else {
          for (let b = all.at(-1); b !== undefined && chain <= all.length; b = b.baseId === null ? undefined : this.backups.get(b.baseId)) chain++
        }
        if (!all.some((b) => b.policy === policy.name) || chain >= policy.fullEvery) requested = 'full'
      }
      const backup = run.backups[i] as Backup
      this.log.push(`  -> ${backup.id} of ${name} ${backup.strategy} base ${backup.baseId}`)
      assert.equal(backup.volumeId, volume.id, 'the run backs its volumes up in order')
      this.takeIntoModel(volume, backup, policy.target, requested, policy.name)
      taken.add(backup.id)
    }
    const pruned = new Set<string>()
    for (const name of policy.volumes) {
      const volume = this.vol(name)
      for (const id of prunedBy(policy.name, policy.retention, volume.id, policy.target, taken, this.backups)) pruned.add(id)
    }
    this.log.push(`  pruned ${[...pruned].join(' ')}`)
    assert.deepEqual([...run.pruned].sort(), [...pruned].sort(), 'the run prunes what retention does not keep and nothing a kept backup needs')
    this.count('pruned by policy', pruned.size)
    this.forget(pruned)
    for (const name of policy.volumes) await this.checkVolume(this.vol(name))
    await this.checkListed()
  }

  /** Deleted backups leave the model, and so do their snapshots. */
  forget (ids: Iterable<string>): void {
    for (const id of ids) {
      const backup = this.backups.get(id) as ModelBackup
      this.backups.delete(id)
      for (const volume of this.volumes.values()) if (volume.id === backup.volumeId) this.free(volume, backup.snapshot)
    }
  }

  // ---------------------------------------------------------------- clones pinning snapshots

  /** Clones (model volumes) reading from a snapshot of `volume`. */
  clonesOf (volume: ModelVolume, snapshot?: string): ModelVolume[] {
    return [...this.volumes.values()].filter((v) => v.cloneOf?.volume === volume.name && (snapshot === undefined || v.cloneOf.snapshot === snapshot))
  }

  /**
   * A backup snapshot no backup needs any more is deleted; one a clone reads from cannot be, so it
   * stays, is reported (io:error) and is deleted at a later open once nothing reads from it.
   */
  free (volume: ModelVolume, snapshot: string): void {
    if (!volume.snapshots.has(snapshot)) return
    if (this.clonesOf(volume, snapshot).length > 0) {
      this.left.add(`${volume.name}@${snapshot}`)
      this.expectedErrors.push(snapshot)
      this.count('snapshot freed while a clone reads it')
      return
    }
    volume.snapshots.delete(snapshot)
    this.left.delete(`${volume.name}@${snapshot}`)
  }

  /** Snapshots a backup or deletion could not free (volume@snapshot), deleted at an open once they can be. */
  readonly left = new Set<string>()
  /** io:error events the model expects (each names a snapshot), and those the instance emitted. */
  expectedErrors: string[] = []
  ioErrors: string[] = []

  listen (): void {
    this.g.on('io:error', (event) => { this.ioErrors.push(event.message) })
  }

  /** Exactly the io:error events the model expects were emitted, each naming its snapshot. */
  checkErrors (): void {
    assert.equal(this.ioErrors.length, this.expectedErrors.length, `io:error events: ${JSON.stringify(this.ioErrors)}, expected ones naming ${JSON.stringify(this.expectedErrors)}`)
    // In any order (an open goes through its records by snapshot id).
    for (const snapshot of this.expectedErrors) assert.ok(this.ioErrors.some((message) => message.includes(snapshot)), `an io:error names snapshot ${snapshot}: ${JSON.stringify(this.ioErrors)}`)
    this.expectedErrors = []
    this.ioErrors = []
  }

  async clone (volume: ModelVolume): Promise<void> {
    const snapshot = this.pick([...volume.snapshots.keys()])
    if (snapshot === undefined || this.volumes.size >= MAX_VOLUMES + 2) return
    const name = this.name('c')
    this.log.push(`cloneVolume ${volume.name}@${snapshot} ${name}`)
    const clone = await this.g.cloneVolume({ volume: volume.name, snapshot }, name)
    const image = volume.snapshots.get(snapshot) as Uint8Array
    this.volumes.set(name, { name, id: clone.id, encrypted: volume.encrypted, data: image.slice(), snapshots: new Map(), keyEpoch: 0, cloneOf: { volume: volume.name, snapshot } })
    this.count('clone')
    await this.checkVolume(this.vol(name))
  }

  /** Deletes a volume that is neither a source volume nor a clone's source; what it pinned and backups left to delete goes with it. */
  async deleteSomeVolume (): Promise<void> {
    const victim = this.pick([...this.volumes.values()].filter((v) => v.name !== 'a' && v.name !== 'b' && this.clonesOf(v).length === 0))
    if (victim === undefined) return
    this.log.push(`deleteVolume ${victim.name}`)
    await this.g.deleteVolume(victim.name, { force: true })
    this.volumes.delete(victim.name)
    // A deleted clone lets go of its source: the source's snapshots left to delete that no other
    // clone reads from go with it.
    const source = victim.cloneOf === undefined ? undefined : this.volumes.get(victim.cloneOf.volume)
    if (source === undefined) return
    for (const entry of [...this.left]) {
      const [name, snapshot] = entry.split('@') as [string, string]
      if (name !== source.name || this.clonesOf(source, snapshot).length > 0) continue
      source.snapshots.delete(snapshot)
      this.left.delete(entry)
      this.count('left snapshot deleted with the last clone')
    }
  }

  async deleteBackup (): Promise<void> {
    const backup = this.pick(this.taken())
    if (backup === undefined) return
    const onTarget = new Map([...this.backups].filter(([, b]) => b.target === backup.target))
    const dependants = dependantsOf(backup.id, onTarget)
    const force = this.chance(0.5)
    const grace = this.chance(0.6) ? 0 : undefined
    if (dependants.length > 0 && !force) {
      await this.refused(`deleteBackup ${backup.id} with ${dependants.length} dependant(s)`, 'BUSY', async () => await this.g.deleteBackup(backup.id, { target: backup.target }), [backup.id])
      return
    }
    this.log.push(`deleteBackup ${backup.id}${force ? ' force' : ''}${grace === 0 ? ' grace 0' : ''} target ${this.t(backup.target)}`)
    const result = await this.g.deleteBackup(backup.id, { target: backup.target, ...(force ? { force } : {}), ...(grace === undefined ? {} : { chunkGraceSeconds: grace }) })
    assert.deepEqual([...result.deletedBackups].sort(), [backup.id, ...dependants].sort(), 'deleteBackup deletes the backup and, forced, exactly the backups built on it')
    this.count(dependants.length > 0 ? 'deleteBackup with dependants' : 'deleteBackup')
    this.forget(result.deletedBackups)
    if (grace === 0) await this.checkCollected(backup.target)
    for (const volume of this.volumes.values()) if (volume.id === backup.volumeId) await this.checkVolume(volume)
    await this.checkListed()
  }

  async restoreNew (): Promise<void> {
    const backup = this.pick(this.taken())
    if (backup === undefined) return
    const name = this.name('r')
    const abort = this.chance(0.2) ? new AbortController() : undefined
    const at = this.int(3)
    let reports = 0
    this.log.push(`restoreBackup ${backup.id} -> new ${name}${abort === undefined ? '' : `, aborted at progress report ${at}`}`)
    const outcome = await this.g.restoreBackup(backup.id, { name, target: backup.target, ...(abort === undefined ? {} : { signal: abort.signal, onProgress: () => { if (reports++ === at) abort.abort() } }) }).then((v): Volume | Error => v, (err: unknown) => err as Error)
    if (outcome instanceof Error) {
      assert.ok(abort !== undefined && outcome instanceof GalleonError && outcome.code === 'CANCELLED', String(outcome))
      await assert.rejects(this.g.getVolume(name), { code: 'VOLUME_NOT_FOUND' }, 'a cancelled restore removes the volume it made')
      this.count('restore into new cancelled')
      return
    }
    const restored = outcome
    this.count('restore into new')
    assert.equal(restored.sizeBytes, backup.image.byteLength)
    assert.equal(restored.encrypted, backup.encrypted)
    const volume: ModelVolume = { name, id: restored.id, encrypted: backup.encrypted, data: backup.image.slice(), snapshots: new Map(), keyEpoch: 0 }
    this.volumes.set(name, volume)
    await this.checkVolume(volume)
    if (this.volumes.size > MAX_VOLUMES) await this.deleteSomeVolume()
  }

  async restoreOver (): Promise<void> {
    const backup = this.pick(this.taken())
    const volume = this.pick([...this.volumes.values()])
    if (backup === undefined || volume === undefined) return
    const what = `restoreBackup ${backup.id} over ${volume.name}`
    if (backup.encrypted && !volume.encrypted) {
      await this.refused(`${what} (encrypted backup, plain volume)`, 'INVALID_ARGUMENT', async () => await this.g.restoreBackup(backup.id, { volume: volume.name, target: backup.target }), [backup.id])
    } else if (volume.data.byteLength < backup.image.byteLength) {
      await this.refused(`${what} (${volume.data.byteLength} < ${backup.image.byteLength} bytes)`, 'OUT_OF_RANGE', async () => await this.g.restoreBackup(backup.id, { volume: volume.name, target: backup.target }), [backup.id, volume.name])
    } else {
      // Now and then cancelled at its k-th progress report: the volume is put back as it was.
      const abort = this.chance(0.25) ? new AbortController() : undefined
      const at = this.int(3)
      let reports = 0
      this.log.push(`${what}${abort === undefined ? '' : `, aborted at progress report ${at}`}`)
      const outcome = await this.g.restoreBackup(backup.id, { volume: volume.name, target: backup.target, ...(abort === undefined ? {} : { signal: abort.signal, onProgress: () => { if (reports++ === at) abort.abort() } }) }).then((v): Volume | Error => v, (err: unknown) => err as Error)
      if (outcome instanceof Error) {
        assert.ok(abort !== undefined && outcome instanceof GalleonError && outcome.code === 'CANCELLED', String(outcome))
        this.count('restore over cancelled')
      } else {
        assert.equal(outcome.id, volume.id)
        this.count(volume.data.byteLength > backup.image.byteLength ? 'restore over a larger volume' : 'restore over')
        // Its old contents are discarded; the rest of a larger volume reads zeros; its snapshots stay.
        volume.data = new Uint8Array(volume.data.byteLength)
        volume.data.set(backup.image)
      }
    }
    await this.checkVolume(volume)
  }

  /**
   * A chunk of a backup's chain goes missing from the target: verify names it, and a restore fails
   * with CORRUPTION naming it, leaving an existing volume as it was (snapshots too) and no new one.
   * The chunk is then put back.
   */
  async damagedRestore (): Promise<void> {
    const backup = this.pick(this.taken())
    if (backup === undefined) return
    // The chunks the restore reads: a base's chunk whose blocks later backups of the chain all
    // replaced is not needed (verify still checks it).
    const newest = new Map<number, string | null>()
    for (const id of [backup.id, ...basesOf(backup, this.backups)].reverse()) {
      const file = join(backup.target, 'manifests', `${id}.json`)
      for (const [index, count, chunk] of decodeManifest(id, new Uint8Array(await readFile(file))).extents) for (let i = 0; i < count; i++) newest.set(index + i, chunk)
    }
    const chunk = this.pick([...new Set([...newest.values()].filter((c): c is string => c !== null))].sort())
    if (chunk === undefined) return
    const path = join(backup.target, 'chunks', chunk.slice(0, 2), chunk)
    const aside = join(backup.target, `aside-${chunk}`)
    const into = this.pick([...this.volumes.values()].filter((v) => v.data.byteLength >= backup.image.byteLength && (v.encrypted || !backup.encrypted)))
    this.log.push(`chunk ${chunk} of backup ${backup.id}'s chain goes missing; restore ${into === undefined ? 'into a new volume' : `over ${into.name}`}`)
    await rename(path, aside)
    try {
      const verified = await this.g.verifyBackup(backup.id, { target: backup.target })
      assert.equal(verified.ok, false)
      assert.ok(verified.problems.some((p) => p.chunk === chunk), `verify names the missing chunk: ${JSON.stringify(verified.problems)}`)
      const volumesBefore = (await this.g.listVolumes()).map((v) => `${v.name}:${v.sizeBytes}`).sort()
      let error: unknown
      try {
        await this.g.restoreBackup(backup.id, { target: backup.target, ...(into === undefined ? { name: this.name('x') } : { volume: into.name }) })
      } catch (err) { error = err }
      assert.ok(error instanceof GalleonError, String(error))
      assert.equal(error.code, 'CORRUPTION', error.message)
      assert.ok(error.message.includes(chunk), error.message)
      assert.deepEqual((await this.g.listVolumes()).map((v) => `${v.name}:${v.sizeBytes}`).sort(), volumesBefore, 'a failed restore leaves no volume behind')
      if (into !== undefined) await this.checkVolume(into)
      this.count('restore from a damaged chain')
    } finally {
      await rename(aside, path)
    }
  }

  async verify (): Promise<void> {
    const backup = this.pick(this.taken())
    if (backup === undefined) return
    this.log.push(`verifyBackup ${backup.id}`)
    const verified = await this.g.verifyBackup(backup.id, { target: backup.target })
    assert.equal(verified.ok, true, JSON.stringify(verified.problems))
    assert.equal(verified.backupsChecked, 1 + basesOf(backup, this.backups).length)
    assert.equal(verified.indexCurrent, true)
  }

  async badRequest (): Promise<void> {
    const unknown = randomUUID()
    const backup = this.pick(this.taken())
    const volume = this.pick([...this.volumes.values()]) as ModelVolume
    const cases: Array<() => Promise<void>> = [
      async () => { await this.refused('restore an unknown backup', 'BACKUP_NOT_FOUND', async () => await this.g.restoreBackup(unknown, { name: this.name('x') }), [unknown]) },
      async () => { await this.refused('restore an unknown backup over a volume', 'BACKUP_NOT_FOUND', async () => await this.g.restoreBackup(unknown, { volume: volume.name }), [unknown]) },
      async () => { await this.refused('verify an unknown backup', 'BACKUP_NOT_FOUND', async () => await this.g.verifyBackup(unknown, { target: this.targets[1] }), [unknown]) },
      async () => { await this.refused('delete an unknown backup', 'BACKUP_NOT_FOUND', async () => await this.g.deleteBackup(unknown, { force: true, chunkGraceSeconds: 0 }), [unknown]) },
      async () => { await this.refused('get a malformed backup id', 'INVALID_ARGUMENT', async () => await this.g.getBackup('not-a-backup-id'), ['not-a-backup-id']) },
      async () => { await this.refused('back up an unknown volume', 'VOLUME_NOT_FOUND', async () => await this.g.createBackup('no-such-volume', { strategy: 'incremental' }), ['no-such-volume']) },
      async () => { await this.refused('back up with an unknown strategy', 'INVALID_ARGUMENT', async () => await this.g.createBackup(volume.name, { strategy: 'weekly' as never }), ['weekly']) },
      async () => { await this.refused('restore over an unknown volume', backup === undefined ? 'BACKUP_NOT_FOUND' : 'VOLUME_NOT_FOUND', async () => await this.g.restoreBackup(backup?.id ?? unknown, { volume: 'no-such-volume', target: backup?.target }), []) },
      async () => { await this.refused('restore into a new volume whose name is taken', backup === undefined ? 'BACKUP_NOT_FOUND' : 'VOLUME_EXISTS', async () => await this.g.restoreBackup(backup?.id ?? unknown, { name: volume.name, target: backup?.target }), [volume.name]) },
      async () => { await this.refused('restore with both a name and a volume', backup === undefined ? 'BACKUP_NOT_FOUND' : 'INVALID_ARGUMENT', async () => await this.g.restoreBackup(backup?.id ?? unknown, { name: this.name('x'), volume: volume.name, target: backup?.target }), []) },
      async () => { await this.refused('delete with a negative grace', 'INVALID_ARGUMENT', async () => await this.g.deleteBackup(backup?.id ?? unknown, { chunkGraceSeconds: -5, target: backup?.target }), ['chunkGraceSeconds']) }
    ]
    if (backup !== undefined) {
      const other = this.targets.find((t) => t !== backup.target) as string
      cases.push(async () => { await this.refused('restore a backup from the other target', 'BACKUP_NOT_FOUND', async () => await this.g.restoreBackup(backup.id, { name: this.name('x'), target: other }), [backup.id]) })
    }
    await (this.pick(cases) as () => Promise<void>)()
    await this.checkVolume(volume)
  }

  async step (): Promise<void> {
    this.clock.time += 60_000 * (1 + this.int(20 * 60))
    const volume = this.pick([...this.volumes.values()]) as ModelVolume
    const roll = this.int(100)
    if (roll < 22) await this.write(volume)
    else if (roll < 28) await this.trim(volume)
    else if (roll < 31) await this.expand(volume)
    else if (roll < 37) await this.snapshot(volume)
    else if (roll < 40) await this.deleteSnapshot(volume)
    else if (roll < 41) await this.revert(volume)
    else if (roll < 42) await (this.chance(0.6) ? this.clone(volume) : this.deleteSomeVolume())
    else if (roll < 43) await this.rotate(volume)
    else if (roll < 60) await this.backup(volume)
    else if (roll < 67) await this.runPolicy()
    else if (roll < 73) await this.deleteBackup()
    else if (roll < 78) await this.restoreNew()
    else if (roll < 85) await this.restoreOver()
    else if (roll < 90) await this.verify()
    else if (roll < 96) await this.badRequest()
    else if (roll < 97) await this.parallel()
    else if (roll < 98) await this.damagedRestore()
    else if (roll < 99) await this.replacePolicy()
    else await this.reopen()
    if (roll < 43 && this.volumes.has(volume.name)) await this.checkVolume(volume, roll >= 31)
    this.checkErrors()
  }

  /** Every backup the model holds is listed, verifies and restores byte-exact; every volume reads as the model. */
  async checkAll (): Promise<void> {
    this.log.push('check everything')
    await this.checkListed()
    for (const backup of ordered(this.backups.values())) await this.checkRestores(backup)
    for (const volume of this.volumes.values()) await this.checkVolume(volume)
  }
}

describe('backups, retention and restores against a model (file backend)', () => {
  const runs = [[0, false, 4096, 0], [1, true, 4096, 32], [2, true, 1024, 16]] as const
  for (const [run, encrypted, blockSize, cacheBlocks] of runs) {
    const seed = SEED + run
    it(`run ${run}: seed ${seed}, ${STEPS} operations, volume b ${encrypted ? 'encrypted' : 'plain'}, ${blockSize}-byte blocks, cache ${cacheBlocks} blocks`, { timeout: 300_000 }, async (t) => {
      const fuzz = new BackupFuzz(seed, encrypted, blockSize, cacheBlocks)
      try {
        await fuzz.open()
        for (let step = 0; step < STEPS; step++) {
          await fuzz.step()
          if (step % 50 === 49) await fuzz.checkListed()
        }
        await fuzz.checkAll()
        t.diagnostic([...fuzz.stats].sort().map(([what, n]) => `${what}: ${n}`).join(', '))
      } catch (err) {
        console.error(`backup model fuzz failed: GALLEON_FUZZ_SEED=${SEED} (run ${run}, seed ${seed}) GALLEON_FUZZ_STEPS=${STEPS}; operations so far:\n${fuzz.log.join('\n')}`)
        throw err
      } finally {
        await fuzz.g?.close()
      }
    })
  }
})
