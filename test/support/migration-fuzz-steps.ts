// The state of a run of test/migration-model-fuzz.test.ts and its checks against the byte model
// (volumes, snapshots, QoS, pools, blocks in the store, progress events), with the steps other than
// the migrate step: create, delete, pool resizes, a migration into a full pool, snapshot / revert /
// clone / expand / QoS calls, writes, and close and reopen.

import assert from 'node:assert/strict'
import { GalleonFS, GalleonError, type MigrationProgressEvent, type OpenOptions, type Volume } from '../../src/index.js'
import { seededRandom } from '../../src/seeded-random.js'
import type { AbstractBlockStore } from '../../src/abstract-block-store.js'
import { CLASSES, POOLS, RegionWriter, classSpec, fill, firstDifference, type ModelVolume } from './migration-fuzz-model.js'

/** A backend the run covers: its block size, volume sizes, and how to open an instance on it. */
export interface Backend {
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

export const PHASES = ['snapshots', 'copy', 'switchover', 'done'] as const

export type Target = { storageClass?: string, pool?: string }
/** What a migration call must do: move (to this class and pool), be refused with a code, or either (pool room depends on timing). */
export type Prediction = { kind: 'move', cls: string, pool: string | undefined } | { kind: 'refuse', code: string } | { kind: 'move-or-no-space', cls: string, pool: string | undefined }

/** One migrateVolume call of a migrate step: what was asked, what it must do, what it reported and how it ended. */
export interface MigrationCall {
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

/** What a migrate step does to a volume while it migrates. */
export type ActionKind = 'abort' | 'second' | 'snapshot' | 'expand' | 'deleteSnapshot' | 'revert' | 'clone' | 'delete' | 'qos-set' | 'qos-clear' | 'close'

/** A run's instance, model and counters, the checks, and every step but the migrate step. */
export class MigrationFuzzSteps {
  g!: GalleonFS
  readonly random: () => number
  readonly log: string[] = []
  readonly volumes = new Map<string, ModelVolume>()
  readonly capacity = new Map<string, number>()
  readonly bs: number
  #dir = ''
  #names = 0
  /** Numbers the data each write fills in (so that no two writes write the same bytes). */
  protected opSeed = 1
  /** Every volume:migration-progress event of the current instance. */
  events: MigrationProgressEvent[] = []
  migrated = 0
  /** Counters of what the run exercised (printed, and a few required). */
  readonly seen = new Map<string, number>()

  /** `place` makes a temporary directory (the test file removes them after the tests). */
  constructor (readonly backend: Backend, readonly seed: number, readonly place: () => Promise<string>) {
    this.random = seededRandom(seed)
    this.bs = backend.blockSize
  }

  int (below: number): number { return Math.floor(this.random() * below) }
  chance (p: number): boolean { return this.random() < p }
  pick<T> (items: readonly T[]): T { return items[this.int(items.length)] as T }
  count (what: string): void { this.seen.set(what, (this.seen.get(what) ?? 0) + 1) }
  name (prefix: string): string { return `${prefix}${++this.#names}` }

  async open (): Promise<void> {
    if (this.#dir === '') this.#dir = await this.place()
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
    throw new Error(`${message}\n  backend ${this.backend.name}, GALLEON_FUZZ_SEED=${this.seed}; steps so far:\n    ${this.log.slice(-60).join('\n    ')}`)
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
      const data = fill(size, this.opSeed++)
      await this.g.write(name, 0, data)
      v.data.set(data)
    }
    for (let i = 0; i < 3; i++) {
      const at = this.int(blocks) * this.bs
      const length = Math.min(size - at, (1 + this.int(Math.max(1, blocks / 2))) * this.bs - this.int(this.bs))
      const data = new Uint8Array(length).fill(1 + this.int(250))
      data[0] = this.opSeed++ & 0xff
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
      if (result === 'ok') this.growModel(v, grow)
    } else {
      await this.#qos(v, !v.qos)
    }
  }

  /** A block of its own, so that every volume holds data in the store (see the storage check). */
  async seedClone (c: ModelVolume): Promise<void> {
    const data = new Uint8Array(this.bs).fill(this.opSeed++ & 0xff | 1)
    const at = this.int(c.size / this.bs) * this.bs
    await this.g.write(c.name, at, data)
    c.data.set(data, at)
  }

  protected growModel (v: ModelVolume, grow: number): void {
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

  async stepWrites (): Promise<void> {
    const v = this.pick([...this.volumes.values()])
    const blocks = v.size / this.bs
    const length = Math.min(16, blocks)
    const start = this.int(blocks - length + 1)
    const w = new RegionWriter(v.name, start, length, this.bs, v.data.subarray(start * this.bs, (start + length) * this.bs), seededRandom(this.int(2 ** 31)), (this.opSeed += 100_000), !this.backend.durable)
    this.log.push(`writes on ${v.name}[${start}+${length}]`)
    w.start_(this.g, () => false, 20 + this.int(40))
    await w.stop()
    if (w.failure !== undefined) this.fail(String(w.failure))
    v.data.set(w.bytes, start * this.bs)
  }
}
