// Seeded random live migrations between storage classes (plain, encrypted, with and without a pool)
// and storage pools under concurrent writers, checked after every step against a plain byte model
// of every volume and snapshot: migrations aborted at random moments, a second migration of the
// same volume (BUSY), snapshot / clone / expand / revert / delete / QoS calls during one, pools
// filling up (NO_SPACE before anything is copied), close and reopen between steps and with
// migrations in flight (the old or the new copy whole, the leftover removed, no block leaked), and
// well-formed progress events. Runs on the memory, file and level backends.
// GALLEON_FUZZ_SEED replays a run (a failure prints the seed and the steps so far);
// GALLEON_FUZZ_STEPS sets the steps per backend.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, GalleonError, type MigrationProgressEvent, type OpenOptions, type Volume } from '../src/index.js'
import { seededRandom } from '../src/seeded-random.js'
import { MemoryBlockStore } from '../backends/memory/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { LevelBlockStore } from '../backends/level/index.js'
import type { AbstractBlockStore } from '../src/abstract-block-store.js'
import { CLASSES, POOLS, RegionWriter, classSpec, fill, firstDifference, type ModelVolume } from './support/migration-fuzz-model.js'

const SEED = process.env.GALLEON_FUZZ_SEED === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(process.env.GALLEON_FUZZ_SEED)
const STEPS = Number(process.env.GALLEON_FUZZ_STEPS ?? 30)
if (!Number.isSafeInteger(SEED) || !Number.isSafeInteger(STEPS)) throw new Error('GALLEON_FUZZ_SEED and GALLEON_FUZZ_STEPS must be integers')

const dirs: string[] = []
after(async () => { for (const dir of dirs) await rm(dir, { recursive: true, force: true }) })

interface Backend {
  readonly name: string
  readonly blockSize: number
  /** Volume sizes in blocks. */
  readonly minBlocks: number
  readonly maxBlocks: number
  readonly durable: boolean
  options (dir: string): OpenOptions
  /** The block store the instance gets (so the test can list the storage ids it holds). */
  store (dir: string): AbstractBlockStore
}

const BACKENDS: Backend[] = [
  { name: 'memory', blockSize: 512, minBlocks: 64, maxBlocks: 900, durable: false, options: () => ({ inMemory: true, blockSize: 512 }), store: () => new MemoryBlockStore() },
  { name: 'file', blockSize: 4096, minBlocks: 32, maxBlocks: 400, durable: true, options: (dir) => ({ storagePath: dir, cacheBlocks: 32 }), store: (dir) => new FileBlockStore({ location: join(dir, 'blocks') }) },
  { name: 'level', blockSize: 1024, minBlocks: 32, maxBlocks: 400, durable: true, options: (dir) => ({ storagePath: dir, blockSize: 1024 }), store: (dir) => new LevelBlockStore({ location: join(dir, 'blocks-level') }) }
]

const PHASES = ['snapshots', 'copy', 'switchover', 'done'] as const

type Target = { storageClass?: string, pool?: string }
/** What a migration call must do: move (to this class and pool), be refused with a code, or either (pool room depends on timing). */
type Prediction = { kind: 'move', cls: string, pool: string | undefined } | { kind: 'refuse', code: string } | { kind: 'move-or-no-space', cls: string, pool: string | undefined }

interface MigrationCall {
  readonly volume: string
  readonly volumeId: string
  readonly target: Target
  readonly prediction: Prediction
  readonly events: MigrationProgressEvent[]
  readonly controller: AbortController
  aborted: boolean
  outcome?: PromiseSettledResult<Volume>
  /** A second call made while this one runs: BUSY, or (if this one ended first) as a call of its own. */
  readonly second: boolean
}

type ActionKind = 'abort' | 'second' | 'snapshot' | 'expand' | 'deleteSnapshot' | 'revert' | 'clone' | 'delete' | 'qos-set' | 'qos-clear' | 'close'

class MigrationFuzz {
  g!: GalleonFS
  readonly random: () => number
  readonly log: string[] = []
  readonly volumes = new Map<string, ModelVolume>()
  readonly capacity = new Map<string, number>()
  readonly bs: number
  #dir = ''
  #names = 0
  #opSeed = 1
  /** Every volume:migration-progress event of the current instance. */
  events: MigrationProgressEvent[] = []
  migrated = 0
  /** Counters of what the run exercised (printed, and a few required). */
  readonly seen = new Map<string, number>()

  constructor (readonly backend: Backend, seed: number) {
    this.random = seededRandom(seed)
    this.bs = backend.blockSize
  }

  int (below: number): number { return Math.floor(this.random() * below) }
  chance (p: number): boolean { return this.random() < p }
  pick<T> (items: readonly T[]): T { return items[this.int(items.length)] as T }
  count (what: string): void { this.seen.set(what, (this.seen.get(what) ?? 0) + 1) }
  name (prefix: string): string { return `${prefix}${++this.#names}` }

  async open (): Promise<void> {
    if (this.#dir === '') {
      this.#dir = await mkdtemp(join(tmpdir(), 'galleon-migfuzz-'))
      dirs.push(this.#dir)
    }
    this.store = this.backend.store(this.#dir)
    this.g = await GalleonFS.open({ ...this.backend.options(this.#dir), blockStore: this.store })
    this.events = []
    this.g.on('volume:migration-progress', (e) => { this.events.push(e) })
    this.g.on('volume:migrated', () => { this.migrated++ })
  }

  async setup (): Promise<void> {
    await this.open()
    const max = this.backend.maxBlocks * this.bs
    for (const [pool, cap] of [['pa', 5 * max], ['pb', 3 * max], ['tight', Math.floor(1.5 * this.backend.maxBlocks) * this.bs]] as const) {
      await this.g.createPool({ name: pool, capacityBytes: cap })
      this.capacity.set(pool, cap)
    }
    for (const c of CLASSES) if (c.definition !== undefined) await this.g.createStorageClass(c.definition)
    for (let i = 0; i < 4; i++) await this.stepCreate()
  }

  // ------------------------------------------------------------------ model helpers

  provisioned (pool: string): number {
    let sum = 0
    for (const v of this.volumes.values()) if (v.pool === pool) sum += v.size
    return sum
  }

  clonesOf (volume: string, snapshot?: string): ModelVolume[] {
    return [...this.volumes.values()].filter((v) => v.cloneOf?.volume === volume && (snapshot === undefined || v.cloneOf.snapshot === snapshot))
  }

  /** What migrateVolume(v, target) does, given the bytes `into` already reserved and `out` about to leave each pool by earlier calls of the step. */
  predict (v: ModelVolume, target: Target, into: Map<string, number>, out: Map<string, number>): Prediction {
    const cls = classSpec(target.storageClass ?? v.cls)
    if (target.pool !== undefined && cls.pool !== undefined && target.pool !== cls.pool) return { kind: 'refuse', code: 'INVALID_ARGUMENT' }
    const pool = target.pool ?? cls.pool ?? v.pool
    if (cls.name === v.cls && pool === v.pool) return { kind: 'refuse', code: 'INVALID_ARGUMENT' }
    if (this.clonesOf(v.name).length > 0) return { kind: 'refuse', code: 'BUSY' }
    if (pool !== undefined && pool !== v.pool) {
      const left = (this.capacity.get(pool) as number) - this.provisioned(pool)
      const worst = left - (into.get(pool) ?? 0)
      const best = left + (out.get(pool) ?? 0)
      if (v.size > best) return { kind: 'refuse', code: 'NO_SPACE' }
      if (v.size > worst) return { kind: 'move-or-no-space', cls: cls.name, pool }
    }
    return { kind: 'move', cls: cls.name, pool }
  }

  randomTarget (v: ModelVolume): Target {
    const r = this.random()
    if (r < 0.45) return { storageClass: this.pick(CLASSES.filter((c) => c.name !== v.cls)).name }
    if (r < 0.75) return { pool: this.pick(POOLS) }
    return { storageClass: this.pick(CLASSES).name, pool: this.pick(POOLS) }
  }

  newVolumeModel (name: string, size: number, cls: string, pool: string | undefined): ModelVolume {
    const v: ModelVolume = { name, size, data: new Uint8Array(size), cls, pool, snapshots: new Map(), cloneOf: undefined, qos: false }
    this.volumes.set(name, v)
    return v
  }

  fail (message: string): never {
    throw new Error(`${message}\n  backend ${this.backend.name}, GALLEON_FUZZ_SEED=${SEED}; steps so far:\n    ${this.log.slice(-60).join('\n    ')}`)
  }

  // ------------------------------------------------------------------ checks

  store!: AbstractBlockStore
  /** Blocks the store holds, by storage id. */
  async storeIds (): Promise<Map<number, number>> {
    const per = new Map<number, number>()
    for await (const a of this.store.addresses()) per.set(a.volume, (per.get(a.volume) ?? 0) + 1)
    return per
  }

  async checkAll (when: string): Promise<void> {
    const g = this.g
    const listed = (await g.listVolumes()).map((v) => v.name).sort()
    assert.deepEqual(listed, [...this.volumes.keys()].sort(), `${when}: listVolumes`)
    let blocks = 0
    let holding = 0
    const perVolume: string[] = []
    const allocated = new Map<string, number>()
    for (const v of this.volumes.values()) {
      const info = await g.getVolume(v.name)
      const expected = { storageClass: v.cls, pool: v.pool, sizeBytes: v.size, encrypted: classSpec(v.cls).encrypted, clone: v.cloneOf !== undefined }
      const got = { storageClass: info.storageClass, pool: info.pool, sizeBytes: info.sizeBytes, encrypted: info.encrypted, clone: info.source !== undefined }
      if (JSON.stringify(got) !== JSON.stringify(expected)) this.fail(`${when}: getVolume(${v.name}) = ${JSON.stringify(got)}, model ${JSON.stringify(expected)}`)
      const live = await g.read(v.name, 0, v.size)
      const at = firstDifference(live, v.data)
      if (at >= 0) this.fail(`${when}: volume ${v.name} differs from the model at byte ${at} (block ${Math.floor(at / this.bs)}): read ${live[at]}, model ${v.data[at]}`)
      const snaps = (await g.listSnapshots(v.name)).filter((s) => !s.implicit).map((s) => s.name).sort()
      assert.deepEqual(snaps, [...v.snapshots.keys()].sort(), `${when}: snapshots of ${v.name}`)
      for (const s of v.snapshots.values()) {
        const data = await g.read({ volume: v.name, snapshot: s.name }, 0, s.size)
        const diff = firstDifference(data, s.data)
        if (diff >= 0) this.fail(`${when}: snapshot ${v.name}@${s.name} differs from the model at byte ${diff}`)
      }
      const qos = await g.getQoSPolicy(v.name)
      const source = v.qos ? 'volume' : classSpec(v.cls).qos ? 'storage-class' : 'none'
      if (qos.source !== source) this.fail(`${when}: QoS source of ${v.name} is ${qos.source}, model ${source}`)
      const applied = (await g.getVolumeMetrics(v.name)).qos?.source ?? 'none'
      if (applied !== source) this.fail(`${when}: the I/O path enforces QoS of source ${applied} on ${v.name}, its policy's source is ${source}`)
      const usage = await g.getVolumeUsageDetails(v.name)
      blocks += usage.allocatedBlocks
      perVolume.push(`${v.name} ${usage.allocatedBlocks}`)
      if (usage.allocatedBlocks > 0) holding++
      if (v.pool !== undefined) allocated.set(v.pool, (allocated.get(v.pool) ?? 0) + usage.allocatedBytes)
    }
    for (const pool of POOLS) {
      const p = await g.getPool(pool)
      const members = [...this.volumes.values()].filter((v) => v.pool === pool)
      const got = { limit: p.limitBytes, provisioned: p.provisionedBytes, reserved: p.reservedBytes, volumes: p.volumes, allocated: p.allocatedBytes }
      const expected = { limit: this.capacity.get(pool), provisioned: this.provisioned(pool), reserved: 0, volumes: members.length, allocated: allocated.get(pool) ?? 0 }
      if (JSON.stringify(got) !== JSON.stringify(expected)) this.fail(`${when}: pool ${pool} reports ${JSON.stringify(got)}, model ${JSON.stringify(expected)}`)
    }
    // Overwritten versions go at the next sync (the journal keeps them until then).
    await g.flush()
    const stats = await g.getStorageStats()
    // The store also keeps trim tombstones (not counted as usage), so it may hold more than the volumes
    // use, never less; and it holds blocks of one storage per volume at most (a migration's other
    // copy, abandoned or replaced, is gone).
    const ids = await this.storeIds()
    const detail = `${perVolume.join(', ')}; store blocks by storage id ${JSON.stringify([...ids])}`
    if (stats.blocks < blocks) this.fail(`${when}: the block store holds ${stats.blocks} blocks, the volumes use ${blocks}: ${detail}`)
    if (ids.size > this.volumes.size || ids.size < holding) this.fail(`${when}: the block store holds blocks of ${ids.size} storages for ${this.volumes.size} volumes (${holding} holding data): storage leaked: ${detail}`)
  }

  /** Progress of one migration call: phases in order, counts never backwards, done at 100% exactly when it moved. */
  checkProgress (call: MigrationCall, moved: boolean): void {
    const label = `progress of migrating ${call.volume} to ${JSON.stringify(call.target)}: ${call.events.map((e) => `${e.phase} ${e.blocksDone}/${e.blocksTotal} p${e.pass}`).join(', ')}`
    let phase = -1
    for (const [i, e] of call.events.entries()) {
      const at = PHASES.indexOf(e.phase)
      if (at < 0 || at < phase) this.fail(`phases out of order in ${label}`)
      phase = at
      if (e.volumeId !== call.volumeId || e.volumeName !== call.volume) this.fail(`event names another volume in ${label}`)
      if (!(Number.isSafeInteger(e.blocksDone) && Number.isSafeInteger(e.blocksTotal) && e.blocksDone >= 0 && e.blocksDone <= e.blocksTotal)) this.fail(`blocksDone outside 0..blocksTotal in ${label}`)
      const prev = call.events[i - 1]
      if (prev !== undefined && (e.blocksDone < prev.blocksDone || e.blocksTotal < prev.blocksTotal || e.pass < prev.pass)) this.fail(`progress went backwards in ${label}`)
    }
    const dones = call.events.filter((e) => e.phase === 'done')
    if (moved) {
      const last = call.events[call.events.length - 1]
      if (last === undefined || last.phase !== 'done' || dones.length !== 1 || last.blocksDone !== last.blocksTotal) this.fail(`a completed migration must end with one 'done' at 100%: ${label}`)
      if (!call.events.some((e) => e.phase === 'switchover')) this.fail(`a completed migration reports its switch-over: ${label}`)
    } else if (dones.length > 0) {
      this.fail(`a migration that did not complete reported 'done': ${label}`)
    }
  }

  // ------------------------------------------------------------------ steps

  async stepCreate (): Promise<void> {
    if (this.volumes.size >= 7) return
    const cls = this.pick(CLASSES)
    const pool = cls.pool ?? (this.chance(0.6) ? this.pick(POOLS) : undefined)
    const blocks = this.backend.minBlocks + this.int(this.backend.maxBlocks - this.backend.minBlocks + 1)
    const size = blocks * this.bs
    const name = this.name('v')
    this.log.push(`createVolume ${name} ${blocks} blocks class ${cls.name} pool ${pool ?? '-'}`)
    const room = pool === undefined || (this.capacity.get(pool) as number) - this.provisioned(pool) >= size
    const created = await this.g.createVolume({ name, sizeBytes: size, storageClass: cls.name, ...(pool === undefined || cls.pool !== undefined ? {} : { pool }) }).then((v) => v, (err: unknown) => err)
    if (!room) {
      if (!(created instanceof GalleonError) || created.code !== 'NO_SPACE') this.fail(`createVolume ${name} in full pool ${pool}: expected NO_SPACE, got ${String(created)}`)
      this.count('create NO_SPACE')
      return
    }
    if (created instanceof Error) this.fail(`createVolume ${name}: ${String(created)}`)
    const v = this.newVolumeModel(name, size, cls.name, pool)
    // Some data, in runs, so migrations have blocks to copy (sometimes all of it: more than one pass's worth).
    if (this.chance(0.4)) {
      const data = fill(size, this.#opSeed++)
      await this.g.write(name, 0, data)
      v.data.set(data)
    }
    for (let i = 0; i < 3; i++) {
      const at = this.int(blocks) * this.bs
      const length = Math.min(size - at, (1 + this.int(Math.max(1, blocks / 2))) * this.bs - this.int(this.bs))
      const data = new Uint8Array(length).fill(1 + this.int(250))
      data[0] = this.#opSeed++ & 0xff
      await this.g.write(name, at, data)
      v.data.set(data, at)
    }
  }

  async stepDelete (): Promise<void> {
    const candidates = [...this.volumes.values()].filter((v) => this.clonesOf(v.name).length === 0)
    if (candidates.length <= 3) return
    const v = this.pick(candidates)
    this.log.push(`deleteVolume ${v.name}`)
    await this.g.deleteVolume(v.name)
    this.volumes.delete(v.name)
  }

  async stepUpdatePool (): Promise<void> {
    const pool = this.pick(POOLS)
    const provisioned = this.provisioned(pool)
    const cap = Math.max(this.bs, provisioned + (this.int(5) - 1) * this.backend.maxBlocks * this.bs / 2)
    this.log.push(`updatePool ${pool} capacity ${cap} (provisioned ${provisioned})`)
    const result = await this.g.updatePool(pool, { capacityBytes: cap }).then(() => 'ok', (err: GalleonError) => err.code)
    const expected = cap < provisioned ? 'BUSY' : 'ok'
    if (result !== expected) this.fail(`updatePool ${pool} to ${cap} with ${provisioned} provisioned: ${result}, expected ${expected}`)
    if (result === 'ok') this.capacity.set(pool, cap)
  }

  /** A migration into a pool without room: NO_SPACE before anything is copied, nothing changed. */
  async stepFull (): Promise<void> {
    const v = this.pick([...this.volumes.values()])
    const pool = this.pick(POOLS.filter((p) => p !== v.pool))
    const provisioned = this.provisioned(pool)
    const before = this.capacity.get(pool) as number
    // Shrink the pool to what is provisioned plus less than the volume needs.
    const cap = Math.max(this.bs, provisioned + this.int(Math.max(1, v.size / this.bs)) * this.bs)
    this.log.push(`updatePool ${pool} capacity ${cap}; migrateVolume ${v.name} { pool: ${pool} } (no room)`)
    await this.g.updatePool(pool, { capacityBytes: cap })
    this.capacity.set(pool, cap)
    const stored = (await this.g.getStorageStats()).blocks
    const calls: MigrationProgressEvent[] = []
    const seen = this.events.length
    const cls = classSpec(v.cls).pool === undefined || classSpec(v.cls).pool === pool ? undefined : this.pick(CLASSES.filter((c) => c.pool === undefined)).name
    const result = await this.g.migrateVolume(v.name, { pool, ...(cls === undefined ? {} : { storageClass: cls }) }, { onProgress: (e) => calls.push(e) }).then(() => 'moved', (err: GalleonError) => err.code)
    const expected = this.clonesOf(v.name).length > 0 ? 'BUSY' : 'NO_SPACE'
    if (result !== expected) this.fail(`migrateVolume ${v.name} into pool ${pool} (${cap - provisioned} bytes free, volume ${v.size}): ${result}, expected ${expected}`)
    this.count(`full ${result}`)
    if (calls.length > 0 || this.events.length > seen) this.fail(`a migration refused with ${result} reported progress`)
    const after = (await this.g.getStorageStats()).blocks
    if (after !== stored) this.fail(`a migration refused with ${result} changed the stored blocks: ${stored} -> ${after}`)
    await this.checkAll(`after the refused migration of ${v.name}`)
    await this.g.updatePool(pool, { capacityBytes: before })
    this.capacity.set(pool, before)
  }

  /** Snapshot, delete a snapshot, revert, clone, expand or a QoS change, with nothing else running. */
  async stepAdmin (): Promise<void> {
    const v = this.pick([...this.volumes.values()])
    const snaps = [...v.snapshots.values()]
    const r = this.random()
    if (r < 0.3 || snaps.length === 0) {
      const name = this.name('s')
      this.log.push(`createSnapshot ${v.name} ${name}`)
      await this.g.createSnapshot(v.name, name)
      v.snapshots.set(name, { name, size: v.size, data: v.data.slice() })
    } else if (r < 0.45) {
      const s = this.pick(snaps)
      this.log.push(`restoreSnapshot ${v.name} ${s.name}`)
      await this.g.restoreSnapshot(v.name, s.name)
      v.data = new Uint8Array(v.size)
      v.data.set(s.data)
    } else if (r < 0.6) {
      const s = this.pick(snaps)
      const clones = this.clonesOf(v.name, s.name)
      const force = clones.length > 0 && this.chance(0.5)
      this.log.push(`deleteSnapshot ${v.name} ${s.name}${force ? ' force' : ''}`)
      const result = await this.g.deleteSnapshot(v.name, s.name, { force }).then(() => 'ok', (err: GalleonError) => err.code)
      const expected = clones.length > 0 && !force ? 'BUSY' : 'ok'
      if (result !== expected) this.fail(`deleteSnapshot ${v.name}@${s.name}: ${result}, expected ${expected}`)
      if (result === 'ok') {
        v.snapshots.delete(s.name)
        for (const c of clones) c.cloneOf = undefined
      }
    } else if (r < 0.75) {
      const s = this.pick(snaps)
      const name = this.name('c')
      const room = v.pool === undefined || (this.capacity.get(v.pool) as number) - this.provisioned(v.pool) >= s.size
      this.log.push(`cloneVolume ${v.name}@${s.name} ${name}`)
      const result = await this.g.cloneVolume({ volume: v.name, snapshot: s.name }, name).then(() => 'ok', (err: GalleonError) => err.code)
      if (result !== (room ? 'ok' : 'NO_SPACE')) this.fail(`cloneVolume ${v.name}@${s.name}: ${result}, room ${room}`)
      if (result === 'ok') {
        const c = this.newVolumeModel(name, s.size, v.cls, v.pool)
        c.data.set(s.data)
        c.cloneOf = { volume: v.name, snapshot: s.name }
        c.qos = v.qos // a clone takes its source's own policy
        await this.seedClone(c)
      }
    } else if (r < 0.88) {
      const grow = (1 + this.int(32)) * this.bs
      const room = v.pool === undefined || (this.capacity.get(v.pool) as number) - this.provisioned(v.pool) >= grow
      this.log.push(`expandVolume ${v.name} +${grow}`)
      const result = await this.g.expandVolume(v.name, v.size + grow).then(() => 'ok', (err: GalleonError) => err.code)
      if (result !== (room ? 'ok' : 'NO_SPACE')) this.fail(`expandVolume ${v.name} by ${grow}: ${result}, room ${room}`)
      if (result === 'ok') this.#grow(v, grow)
    } else {
      await this.#qos(v, !v.qos)
    }
  }

  /** A block of its own, so that every volume holds data in the store (see the storage check). */
  async seedClone (c: ModelVolume): Promise<void> {
    const data = new Uint8Array(this.bs).fill(this.#opSeed++ & 0xff | 1)
    const at = this.int(c.size / this.bs) * this.bs
    await this.g.write(c.name, at, data)
    c.data.set(data, at)
  }

  #grow (v: ModelVolume, grow: number): void {
    const data = new Uint8Array(v.size + grow)
    data.set(v.data)
    v.data = data
    v.size += grow
  }

  async #qos (v: ModelVolume, set: boolean): Promise<void> {
    this.log.push(`${set ? 'setQoSPolicy' : 'clearQoSPolicy'} ${v.name}`)
    if (set) await this.g.setQoSPolicy(v.name, { limits: { iops: 1_000_000, throughputMBps: 100_000 }, weight: 3 })
    else await this.g.clearQoSPolicy(v.name)
    v.qos = set
  }

  async reopen (): Promise<void> {
    this.log.push('close; open')
    await this.g.close()
    await this.open()
  }

  /**
   * Migrations of one to three volumes under a write load, each with an action at a random moment
   * (abort, a second migration, a snapshot or other call that must wait, a delete, QoS, or close).
   */
  async stepMigrate (): Promise<void> {
    const g = this.g
    const all = [...this.volumes.values()]
    const chosen = all.sort(() => this.random() - 0.5).slice(0, 1 + this.int(3))
    const into = new Map<string, number>()
    const out = new Map<string, number>()
    const hadSnapshots = new Set(chosen.filter((v) => v.snapshots.size > 0).map((v) => v.name))
    const calls: MigrationCall[] = []
    const byName = new Map<string, { call: MigrationCall, action: ActionKind }>()
    let closeArmed = this.backend.durable && this.chance(0.15)
    for (const v of chosen) {
      const target = this.randomTarget(v)
      const prediction = this.predict(v, target, into, out)
      if (prediction.kind !== 'refuse' && prediction.pool !== v.pool) {
        if (prediction.pool !== undefined) into.set(prediction.pool, (into.get(prediction.pool) ?? 0) + v.size)
        if (v.pool !== undefined) out.set(v.pool, (out.get(v.pool) ?? 0) + v.size)
      }
      const id = (await g.getVolume(v.name)).id
      calls.push({ volume: v.name, volumeId: id, target, prediction, events: [], controller: new AbortController(), aborted: false, second: false })
    }
    // Room for calls that add to a pool while the migrations run (clone, expand): only where even the worst case has it.
    const roomy = (pool: string | undefined, bytes: number): boolean => pool === undefined || (this.capacity.get(pool) as number) - this.provisioned(pool) - (into.get(pool) ?? 0) >= bytes + this.backend.maxBlocks * this.bs
    for (const call of calls) {
      const v = this.volumes.get(call.volume) as ModelVolume
      const targetPool = call.prediction.kind === 'refuse' ? v.pool : call.prediction.pool
      const options: ActionKind[] = ['abort', 'abort', 'second', 'snapshot', 'snapshot', 'qos-set', 'qos-clear']
      if (v.snapshots.size > 0) options.push('revert')
      // Not a snapshot clones came from: deleting it (forced) would change whether the migration is refused.
      if ([...v.snapshots.keys()].some((s) => this.clonesOf(v.name, s).length === 0)) options.push('deleteSnapshot')
      if (v.snapshots.size > 0 && roomy(v.pool, v.size) && roomy(targetPool, v.size)) options.push('clone')
      if (roomy(v.pool, 64 * this.bs) && roomy(targetPool, 64 * this.bs)) options.push('expand')
      if (this.clonesOf(v.name).length === 0 && this.volumes.size > 3) options.push('delete')
      let action = this.pick(options)
      if (closeArmed && this.chance(0.5)) { action = 'close'; closeArmed = false }
      byName.set(call.volume, { call, action })
    }
    // Writers: on some volumes (never one reverted or deleted in this step).
    let closing = false
    const writers: RegionWriter[] = []
    for (const v of this.volumes.values()) {
      const action = byName.get(v.name)?.action
      if (action === 'revert' || action === 'delete' || !this.chance(0.7)) continue
      const blocks = v.size / this.bs
      if (byName.has(v.name) && this.chance(0.3)) {
        // One bulk writer over most of the volume: its passes keep finding hundreds of blocks changed.
        const length = Math.min(blocks, 320)
        const start = this.int(blocks - length + 1)
        writers.push(new RegionWriter(v.name, start, length, this.bs, v.data.subarray(start * this.bs, (start + length) * this.bs), seededRandom(this.int(2 ** 31)), (this.#opSeed += 100_000), !this.backend.durable, 64))
        continue
      }
      const regions = 1 + this.int(2)
      const span = Math.floor(blocks / regions)
      for (let r = 0; r < regions; r++) {
        const length = Math.min(16, span, 2 + this.int(15))
        const start = r * span + this.int(span - length + 1)
        writers.push(new RegionWriter(v.name, start, length, this.bs, v.data.subarray(start * this.bs, (start + length) * this.bs), seededRandom(this.int(2 ** 31)), (this.#opSeed += 100_000), !this.backend.durable))
      }
    }
    this.log.push(`migrate step: ${calls.map((c) => `${c.volume} -> ${JSON.stringify(c.target)} (${c.prediction.kind === 'refuse' ? c.prediction.code : c.prediction.kind}; action ${byName.get(c.volume)?.action})`).join('; ')}; writers on ${writers.map((w) => `${w.volume}[${w.start}+${w.blocks}]`).join(' ')}`)
    const writerOn = (volume: string): RegionWriter[] => writers.filter((w) => w.volume === volume)

    const pending: Array<Promise<unknown>> = []
    const deferred: Array<() => void> = []
    const acceptClosing = (what: string, err: unknown): void => {
      if (closing && err instanceof GalleonError && (err.code === 'NOT_OPEN' || err.code === 'CANCELLED')) return
      this.fail(`${what} failed: ${String(err)}`)
    }
    let closed: Promise<void> | undefined
    const seconds: MigrationCall[] = []
    const startedSnapshots: Array<{ volume: string, name: string, windows: Array<{ writer: RegionWriter, lo: number, hi: number }> }> = []
    /** Calls made while a migration ran that must wait for it: whether it had reported 'done' when they resolved. */
    const waited: Array<{ call: MigrationCall, action: ActionKind, doneSeen?: boolean }> = []
    const runAction = (call: MigrationCall, action: ActionKind, running: boolean): void => {
      const v = this.volumes.get(call.volume) as ModelVolume
      this.count(`action ${action}`)
      const waiting = running && ['snapshot', 'expand', 'deleteSnapshot', 'revert', 'clone'].includes(action) ? { call, action } as { call: MigrationCall, action: ActionKind, doneSeen?: boolean } : undefined
      if (waiting !== undefined) waited.push(waiting)
      const resolved = (): void => { if (waiting !== undefined) waiting.doneSeen = call.events.some((e) => e.phase === 'done') }
      switch (action) {
        case 'abort':
          if (call.outcome === undefined) call.aborted = true
          call.controller.abort(new Error('the fuzz test aborts it'))
          return
        case 'close':
          closing = true
          closed = g.close()
          return
        case 'second': {
          const second: MigrationCall = { ...call, events: [], controller: new AbortController(), aborted: false, second: true }
          seconds.push(second)
          pending.push(g.migrateVolume(call.volume, call.target, { onProgress: (e) => second.events.push(e) }).then(
            (value) => { second.outcome = { status: 'fulfilled', value } },
            (reason) => { second.outcome = { status: 'rejected', reason } }))
          return
        }
        case 'snapshot': {
          const name = this.name('s')
          const windows = writerOn(v.name).map((writer) => ({ writer, lo: writer.acked, hi: -1 }))
          pending.push(g.createSnapshot(v.name, name).then(() => {
            resolved()
            for (const w of windows) w.hi = w.writer.issued
            startedSnapshots.push({ volume: v.name, name, windows })
          }, (err) => { acceptClosing(`createSnapshot ${v.name} ${name}`, err) }))
          return
        }
        case 'expand': {
          const grow = (1 + this.int(64)) * this.bs
          pending.push(g.expandVolume(v.name, v.size + grow).then(() => { resolved(); deferred.push(() => { this.#grow(v, grow) }) }, (err) => { acceptClosing(`expandVolume ${v.name}`, err) }))
          return
        }
        case 'deleteSnapshot': {
          const s = this.pick([...v.snapshots.values()].filter((snap) => this.clonesOf(v.name, snap.name).length === 0))
          pending.push(g.deleteSnapshot(v.name, s.name).then(() => {
            resolved()
            deferred.push(() => { v.snapshots.delete(s.name) })
          }, (err) => { acceptClosing(`deleteSnapshot ${v.name}@${s.name}`, err) }))
          return
        }
        case 'revert': {
          const s = this.pick([...v.snapshots.values()])
          pending.push(g.restoreSnapshot(v.name, s.name).then(() => {
            resolved()
            deferred.push(() => { v.data = new Uint8Array(v.size); v.data.set(s.data) })
          }, (err) => { acceptClosing(`restoreSnapshot ${v.name}@${s.name}`, err) }))
          return
        }
        case 'clone': {
          const s = this.pick([...v.snapshots.values()])
          const name = this.name('c')
          pending.push(g.cloneVolume({ volume: v.name, snapshot: s.name }, name).then(() => {
            resolved()
            // The clone waited for the migration: it lands in the source's class and pool after it.
            deferred.push(() => {
              const c = this.newVolumeModel(name, s.size, v.cls, v.pool)
              c.data.set(s.data)
              c.cloneOf = { volume: v.name, snapshot: s.name }
        c.qos = v.qos // a clone takes its source's own policy
              clones.push(c)
            })
          }, (err) => { acceptClosing(`cloneVolume ${v.name}@${s.name}`, err) }))
          return
        }
        case 'delete':
          pending.push(g.deleteVolume(v.name).then(() => { deferred.push(() => { this.volumes.delete(v.name) }) }, (err) => { acceptClosing(`deleteVolume ${v.name}`, err) }))
          return
        case 'qos-set':
        case 'qos-clear':
          pending.push(action === 'qos-set'
            ? g.setQoSPolicy(v.name, { limits: { iops: 1_000_000 }, weight: 1 + this.int(4) }).then(() => { deferred.push(() => { v.qos = true }) }, (err) => { acceptClosing(`setQoSPolicy ${v.name}`, err) })
            : g.clearQoSPolicy(v.name).then(() => { deferred.push(() => { v.qos = false }) }, (err) => { acceptClosing(`clearQoSPolicy ${v.name}`, err) }))
      }
    }

    const migratedBefore = this.migrated
    for (const w of writers) w.start_(g, () => closing, 3)
    // Readers of the snapshots the migrating volumes had: each read equals the model, before, during and after the switch-over.
    let reading = true
    const readers = chosen.filter((v) => v.snapshots.size > 0).map(async (v) => {
      const snaps = [...v.snapshots.values()]
      const random = seededRandom(this.int(2 ** 31))
      for (let n = 0; reading || n < 2; n++) {
        const s = snaps[Math.floor(random() * snaps.length)] as (typeof snaps)[number]
        const offset = Math.floor(random() * s.size)
        const length = 1 + Math.floor(random() * Math.min(s.size - offset, 64 * this.bs))
        let data: Uint8Array
        try {
          data = await g.read({ volume: v.name, snapshot: s.name }, offset, length)
        } catch (err) {
          const code = err instanceof GalleonError ? err.code : ''
          const action = byName.get(v.name)?.action
          if ((code === 'SNAPSHOT_NOT_FOUND' && action === 'deleteSnapshot') || (code === 'VOLUME_NOT_FOUND' && action === 'delete') || (closing && code === 'NOT_OPEN')) return
          this.fail(`reading snapshot ${v.name}@${s.name} while it migrates: ${String(err)}`)
        }
        const at = firstDifference(data, s.data.subarray(offset, offset + length))
        if (at >= 0) this.fail(`snapshot ${v.name}@${s.name} read while the volume migrates differs from the model at byte ${offset + at}`)
        this.count('snapshot reads during migrations')
        await new Promise((resolve) => setImmediate(resolve))
      }
    })
    const migrations: Array<Promise<unknown>> = []
    for (const call of calls) {
      const { action } = byName.get(call.volume) as { action: ActionKind }
      // When: right away, after a few milliseconds, or at a progress event of a chosen phase (else when it ends).
      const when = this.pick(['now', 'timer', 'snapshots', 'copy', 'copy', 'switchover'] as const)
      const delay = this.int(20)
      let fired = false
      const fire = (running = false): void => { if (!fired) { fired = true; runAction(call, action, running) } }
      const onProgress = (e: MigrationProgressEvent): void => {
        call.events.push(e)
        // From a progress listener (before 'done'): the migration runs, for sure.
        if (e.phase === when) fire(true)
      }
      migrations.push(g.migrateVolume(call.volume, call.target, { signal: call.controller.signal, onProgress }).then(
        (value) => { call.outcome = { status: 'fulfilled', value } },
        (reason) => { call.outcome = { status: 'rejected', reason } }).then(() => { fire() }))
      if (when === 'now') fire()
      if (when === 'timer') setTimeout(() => { fire() }, delay)
    }
    await Promise.all(migrations)
    // Actions started late may add pending calls; wait for those, then for any second migration.
    for (let settled = 0; settled < pending.length;) {
      const n = pending.length
      await Promise.all(pending.slice(settled))
      settled = n
    }
    reading = false
    await Promise.all(readers)
    for (const w of writers) await w.stop()
    if (closed !== undefined) {
      await closed
      this.count('close with migrations in flight')
      await this.open()
    }
    for (const w of writers) if (w.failure !== undefined) this.fail(String(w.failure))

    // The migrations' outcomes, checked against the predictions, then applied to the model.
    const deleted = new Set(calls.filter((c) => byName.get(c.volume)?.action === 'delete').map((c) => c.volume))
    for (const call of [...calls, ...seconds]) {
      const outcome = call.outcome as PromiseSettledResult<Volume>
      const p = call.prediction
      const what = `${call.second ? 'second ' : ''}migrateVolume ${call.volume} ${JSON.stringify(call.target)} (predicted ${p.kind === 'refuse' ? p.code : p.kind})`
      if (outcome.status === 'fulfilled') {
        if (p.kind === 'refuse' && !call.second) this.fail(`${what} moved the volume`)
        const got = { cls: outcome.value.storageClass, pool: outcome.value.pool }
        if (p.kind !== 'refuse' && (got.cls !== p.cls || got.pool !== p.pool)) this.fail(`${what} resolved with class ${got.cls} pool ${got.pool}`)
        if (p.kind === 'refuse') this.fail(`${what}: a second call moved the volume although the first was to be refused`)
        this.checkProgress(call, true)
        if (hadSnapshots.has(call.volume) && byName.get(call.volume)?.action !== 'deleteSnapshot' && !call.events.some((e) => e.phase === 'snapshots')) this.fail(`${what}: the volume has snapshots, but no 'snapshots' phase was reported`)
        this.count(`moved in ${Math.max(...call.events.map((e) => e.pass))} passes`)
        const v = this.volumes.get(call.volume)
        if (v !== undefined && !deleted.has(call.volume)) { v.cls = p.cls; v.pool = p.pool; v.cloneOf = undefined }
        this.count(call.second ? 'second moved (first had ended)' : 'moved')
        continue
      }
      const err = outcome.reason
      if (!(err instanceof GalleonError)) this.fail(`${what} rejected with ${String(err)}`)
      this.checkProgress(call, false)
      const cancelled = call.aborted || deleted.has(call.volume) || closing
      const ok = (p.kind === 'refuse' && err.code === p.code && !call.second) ||
        (p.kind === 'move-or-no-space' && err.code === 'NO_SPACE') ||
        (err.code === 'CANCELLED' && cancelled) ||
        (closing && err.code === 'NOT_OPEN') ||
        (call.second && ['BUSY', 'INVALID_ARGUMENT', 'NO_SPACE', 'VOLUME_NOT_FOUND'].includes(err.code)) ||
        (deleted.has(call.volume) && err.code === 'VOLUME_NOT_FOUND') ||
        // Started right away, a clone or a second migration may reach the admin queue first.
        (!call.second && call.events.length === 0 && err.code === 'BUSY' && ['clone', 'second'].includes(byName.get(call.volume)?.action ?? ''))
      if (!ok) this.fail(`${what} rejected with ${err.code}: ${err.message}`)
      if (err.code !== 'CANCELLED' && err.code !== 'NOT_OPEN' && call.events.length > 0) this.fail(`${what} was refused with ${err.code} after reporting progress`)
      this.count(`${call.second ? 'second ' : ''}${err.code}`)
    }
    for (const w of waited) {
      if (w.call.outcome?.status === 'fulfilled' && w.doneSeen === false) this.fail(`${w.action} on ${w.call.volume}, called while it migrated, resolved before the migration ended`)
    }
    // Events: the instance's listener saw exactly what each call's onProgress saw (unless it was closed and reopened meanwhile).
    if (closed === undefined) {
      const moved = [...calls, ...seconds].filter((c) => c.outcome?.status === 'fulfilled').length
      if (this.migrated !== migratedBefore + moved) this.fail(`volume:migrated came ${this.migrated - migratedBefore} times for ${moved} completed migrations`)
      for (const call of calls) {
        const mine = [...calls, ...seconds].filter((c) => c.volumeId === call.volumeId).flatMap((c) => c.events)
        const global = this.events.filter((e) => e.volumeId === call.volumeId)
        if (JSON.stringify(mine) !== JSON.stringify(global)) this.fail(`volume:migration-progress events of ${call.volume} differ from its onProgress calls`)
      }
      this.events = []
    }
    const clones: ModelVolume[] = []
    for (const apply of deferred) apply()
    for (const c of clones) await this.seedClone(c)

    // Writers: each range holds one of the states its calls allow (all of them acknowledged, unless closed).
    for (const w of writers) {
      const v = this.volumes.get(w.volume)
      if (v === undefined) continue
      const bytes = await this.g.read(w.volume, w.start * this.bs, w.blocks * this.bs)
      const k = w.matches(bytes, w.acked, w.issued)
      if (k < 0) this.fail(`volume ${w.volume} blocks ${w.start}+${w.blocks} hold none of the states after calls ${w.acked}..${w.issued} of its writer (last calls: ${w.log.slice(-5).join(', ')})`)
      v.data.set(bytes, w.start * this.bs)
    }
    // Snapshots taken during the migrations: each writer's range as after some call between the snapshot's call and its result.
    for (const taken of startedSnapshots) {
      const v = this.volumes.get(taken.volume)
      if (v === undefined) continue
      const data = await this.g.read({ volume: taken.volume, snapshot: taken.name }, 0, v.size)
      const model = v.data.slice()
      for (const { writer, lo, hi } of taken.windows) {
        const range = data.subarray(writer.start * this.bs, (writer.start + writer.blocks) * this.bs)
        if (writer.matches(range, lo, hi) < 0) this.fail(`snapshot ${taken.volume}@${taken.name}: blocks ${writer.start}+${writer.blocks} hold none of the states after calls ${lo}..${hi} of the writer`)
        model.set(range, writer.start * this.bs)
      }
      v.snapshots.set(taken.name, { name: taken.name, size: v.size, data: model })
    }
    await this.checkAll('after the migrate step')
  }

  async stepWrites (): Promise<void> {
    const v = this.pick([...this.volumes.values()])
    const blocks = v.size / this.bs
    const length = Math.min(16, blocks)
    const start = this.int(blocks - length + 1)
    const w = new RegionWriter(v.name, start, length, this.bs, v.data.subarray(start * this.bs, (start + length) * this.bs), seededRandom(this.int(2 ** 31)), (this.#opSeed += 100_000), !this.backend.durable)
    this.log.push(`writes on ${v.name}[${start}+${length}]`)
    w.start_(this.g, () => false, 20 + this.int(40))
    await w.stop()
    if (w.failure !== undefined) this.fail(String(w.failure))
    v.data.set(w.bytes, start * this.bs)
  }

  async run (steps: number): Promise<void> {
    await this.setup()
    await this.checkAll('after setup')
    for (let step = 0; step < steps; step++) {
      const r = this.random()
      const tag = `step ${step}`
      this.log.push(`-- ${tag}`)
      while (this.volumes.size < 3) await this.stepCreate()
      if (r < 0.5) await this.stepMigrate()
      else if (r < 0.58) await this.stepFull()
      else if (r < 0.66) await this.stepCreate()
      else if (r < 0.7) await this.stepDelete()
      else if (r < 0.82) await this.stepAdmin()
      else if (r < 0.87) await this.stepUpdatePool()
      else if (r < 0.93 && this.backend.durable) await this.reopen()
      else await this.stepWrites()
      await this.checkAll(`after ${tag}`)
    }
    if (this.backend.durable) {
      await this.reopen()
      await this.checkAll('after the last reopen')
    }
    await this.g.close()
  }
}

describe('live migration, pools and storage classes against a byte model', () => {
  for (const backend of BACKENDS) {
    it(`${backend.name} backend: ${STEPS} random steps (seed ${SEED})`, { timeout: 120_000 }, async () => {
      const fuzz = new MigrationFuzz(backend, SEED)
      try {
        await fuzz.run(STEPS)
      } catch (err) {
        if (err instanceof Error && !err.message.includes('GALLEON_FUZZ_SEED=')) {
          err.message += `\n  backend ${backend.name}, GALLEON_FUZZ_SEED=${SEED}; steps so far:\n    ${fuzz.log.slice(-60).join('\n    ')}`
        }
        await fuzz.g?.close().catch(() => {})
        throw err
      }
      process.stdout.write(`# ${backend.name}: ${[...fuzz.seen].sort().map(([k, n]) => `${k} ${n}`).join(', ')}\n`)
    })
  }
})

describe('defects the fuzz found', () => {
  // restoreSnapshot (src/facade/snapshots.ts) dropped the volume from `reverting` before it cleared
  // the record's revertTo, so for that metadata write every read and write of the volume (its
  // snapshots' too) was refused with BUSY "unfinished revert", as if the revert had failed. It now
  // clears revertTo in engine.revert's beforeOpen hook, the volume's gate still closed.
  it('a successful revert does not refuse reads of the volume\'s snapshots while it finishes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'galleon-migfuzz-revert-'))
    dirs.push(dir)
    const g = await GalleonFS.open({ storagePath: dir })
    try {
      await g.createVolume({ name: 'v', sizeBytes: 64 * 4096 })
      await g.write('v', 0, new Uint8Array(64 * 4096).fill(1))
      await g.createSnapshot('v', 's')
      const refused: string[] = []
      let reads = 0
      for (let round = 0; round < 3; round++) {
        await g.write('v', 0, new Uint8Array(64 * 4096).fill(2 + round))
        let done = false
        const revert = g.restoreSnapshot('v', 's').finally(() => { done = true })
        while (!done) {
          const data = await g.read({ volume: 'v', snapshot: 's' }, 0, 4096).catch((err: GalleonError) => { refused.push(`${err.code}: ${err.message}`) })
          if (data !== undefined) assert.deepEqual(data, new Uint8Array(4096).fill(1))
          reads++
          await new Promise((resolve) => setImmediate(resolve))
        }
        await revert
        assert.deepEqual(await g.read('v', 0, 4096), new Uint8Array(4096).fill(1))
      }
      assert.deepEqual(refused, [], `${refused.length} of ${reads} reads refused while reverts succeeded`)
    } finally {
      await g.close()
    }
  })
})
