// Seeded random operations on volumes, snapshots and clones, checked against a plain model of what
// every view must read, which blocks it holds data in, what the volume is charged and which blocks
// changed between snapshots; on the memory, file and level backends (the last two closed and
// reopened at random points, now and then with writes in flight). GALLEON_FUZZ_SEED replays a run
// (a failure prints its seed and the operations so far); GALLEON_FUZZ_STEPS sets the operations per
// backend. A seed fixes the operations; where some run in flight together, the model follows
// whichever order the instance took (the log says which), as any such order is allowed.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, type OpenOptions } from '../src/index.js'
import { seededRandom } from '../src/seeded-random.js'
import { expectCode } from './support/assertions.js'
import { observed } from './support/observed.js'
import { testSeed } from './support/test-seed.js'

const SEED = testSeed('GALLEON_FUZZ_SEED', 20261206)
const STEPS = Number(process.env.GALLEON_FUZZ_STEPS ?? 400)
if (!Number.isSafeInteger(SEED) || !Number.isSafeInteger(STEPS)) throw new Error('GALLEON_FUZZ_SEED and GALLEON_FUZZ_STEPS must be integers')

const dirs: string[] = []
after(async () => { for (const dir of dirs) await rm(dir, { recursive: true, force: true }) })
async function place (): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'galleon-model-fuzz-'))
  dirs.push(dir)
  return dir
}

/** A version the live view or a snapshot reads from the volume's own storage: > 0 data, HOLE none (trimmed). */
const HOLE = -1

/** What one view (the live volume or a snapshot) of a model volume reads. */
interface ModelView {
  size: number
  data: Uint8Array
  /** Block -> own version (HOLE: reads zeros); a block missing reads through to the clone's source. */
  versions: Map<number, number>
}

interface ModelSnapshot extends ModelView {
  readonly name: string
  readonly implicit: boolean
  /** The operation count when it was taken: changes after it are the touches with a later seq. */
  readonly seq: number
}

interface ModelVolume extends ModelView {
  readonly name: string
  /** Of an encrypting storage class (clones of it are too). */
  readonly encrypted: boolean
  readonly snapshots: Map<string, ModelSnapshot>
  /** Clone: the source view's blocks holding data, read through while the clone has no version of its own. */
  inherited: Set<number> | undefined
  source: { volume: string, snapshot: string } | undefined
  /** Blocks each operation may have given a new version (or unmapped). */
  readonly touches: Array<{ seq: number, blocks: number[] }>
}

interface Backend {
  readonly name: string
  readonly blockSize: number
  /** Volume sizes in blocks: new ones from min to max, grown up to limit. */
  readonly blocks: { readonly min: number, readonly max: number, readonly limit: number }
  /**
   * Where operations go: anywhere, or near these block indices (page boundaries of the block
   * maps, which hold 256 blocks a page), so that large volumes still see blocks reused.
   */
  readonly hot?: readonly number[]
  /** Whether the data survives close(): the run then closes and reopens at random points. */
  readonly durable: boolean
  options (): Promise<OpenOptions>
}

const BACKENDS: Backend[] = [
  { name: 'memory', blockSize: 512, durable: false, blocks: { min: 120, max: 520, limit: 640 }, hot: [0, 255, 511], options: async () => ({ inMemory: true, blockSize: 512, cacheBlocks: 16 }) },
  { name: 'file', blockSize: 4096, durable: true, blocks: { min: 4, max: 24, limit: 40 }, options: async () => ({ storagePath: await place(), cacheBlocks: 64 }) },
  { name: 'level', blockSize: 1024, durable: true, blocks: { min: 4, max: 24, limit: 40 }, options: async () => ({ storagePath: await place(), backend: 'level', blockSize: 1024 }) }
]

/** The model and the instance side by side: each operation runs on both, then they are compared. */
class ModelRun {
  g!: GalleonFS
  readonly bs: number
  readonly random: () => number
  readonly log: string[] = []
  readonly volumes = new Map<string, ModelVolume>()
  #seq = 0
  #version = 1
  #names = 0
  readonly #backend: Backend
  #options!: OpenOptions

  constructor (backend: Backend, seed: number) {
    this.#backend = backend
    this.bs = backend.blockSize
    this.random = seededRandom(seed)
  }

  async open (): Promise<void> {
    this.#options = await this.#backend.options()
    this.g = await GalleonFS.open(this.#options)
  }

  int (below: number): number { return Math.floor(this.random() * below) }
  chance (p: number): boolean { return this.random() < p }
  pick<T> (items: readonly T[]): T | undefined { return items.length === 0 ? undefined : items[this.int(items.length)] }
  name (prefix: string): string { return `${prefix}${++this.#names}` }

  // ---------------------------------------------------------------- the model

  #touch (volume: ModelVolume, blocks: number[]): void {
    volume.touches.push({ seq: ++this.#seq, blocks })
  }

  allocated (volume: ModelVolume, view: ModelView, index: number): boolean {
    if (index * this.bs >= view.size) return false
    const own = view.versions.get(index)
    return own === undefined ? volume.inherited?.has(index) === true : own > 0
  }

  allocatedBlocks (volume: ModelVolume, view: ModelView): number[] {
    const out: number[] = []
    for (let index = 0; index * this.bs < view.size; index++) if (this.allocated(volume, view, index)) out.push(index)
    return out
  }

  clonesOf (volume: ModelVolume, snapshot?: string): ModelVolume[] {
    return [...this.volumes.values()].filter((v) => v.source?.volume === volume.name && (snapshot === undefined || v.source.snapshot === snapshot))
  }

  modelCreate (name: string, size: number, encrypted: boolean): void {
    this.volumes.set(name, { name, encrypted, size, data: new Uint8Array(size), versions: new Map(), snapshots: new Map(), inherited: undefined, source: undefined, touches: [] })
  }

  modelWrite (volume: ModelVolume, offset: number, data: Uint8Array): void {
    volume.data.set(data, offset)
    const blocks: number[] = []
    for (let index = Math.floor(offset / this.bs); index <= Math.floor((offset + data.byteLength - 1) / this.bs); index++) {
      volume.versions.set(index, this.#version++)
      blocks.push(index)
    }
    this.#touch(volume, blocks)
  }

  modelTrim (volume: ModelVolume, offset: number, length: number): void {
    const blocks: number[] = []
    for (let index = Math.floor(offset / this.bs); index <= Math.floor((offset + length - 1) / this.bs); index++) {
      const from = Math.max(offset, index * this.bs)
      const to = Math.min(offset + length, (index + 1) * this.bs)
      if (to - from === this.bs) {
        volume.versions.set(index, HOLE)
      } else if (this.allocated(volume, volume, index)) {
        // A partial trim of a block holding data stores the block with that part zeroed.
        volume.versions.set(index, this.#version++)
      } else {
        continue
      }
      volume.data.fill(0, from, to)
      blocks.push(index)
    }
    this.#touch(volume, blocks)
  }

  modelSnapshot (volume: ModelVolume, name: string, implicit: boolean): void {
    volume.snapshots.set(name, { name, implicit, seq: this.#seq, size: volume.size, data: volume.data.slice(), versions: new Map(volume.versions) })
  }

  modelRevert (volume: ModelVolume, snapshot: ModelSnapshot): void {
    const touched = new Set<number>()
    for (const touch of volume.touches) if (touch.seq > snapshot.seq) for (const index of touch.blocks) touched.add(index)
    for (const index of touched) {
      if (index * this.bs >= volume.size) continue
      volume.versions.set(index, this.allocated(volume, snapshot, index) ? this.#version++ : HOLE)
    }
    volume.data = new Uint8Array(volume.size)
    volume.data.set(snapshot.data)
    this.#touch(volume, [...touched])
  }

  modelClone (source: ModelVolume, snapshot: ModelSnapshot, name: string): void {
    const inherited = new Set(this.allocatedBlocks(source, snapshot))
    this.volumes.set(name, { name, encrypted: source.encrypted, size: snapshot.size, data: snapshot.data.slice(), versions: new Map(), snapshots: new Map(), inherited, source: { volume: source.name, snapshot: snapshot.name }, touches: [] })
  }

  /** A clone gets its own copy of every block one of its views reads through to its source. */
  modelFlatten (clone: ModelVolume): void {
    for (const index of clone.inherited ?? []) {
      const base = this.#version++
      for (const view of [clone, ...clone.snapshots.values()]) if (!view.versions.has(index)) view.versions.set(index, base)
    }
    clone.inherited = undefined
    clone.source = undefined
  }

  modelDeleteSnapshot (volume: ModelVolume, name: string): void {
    for (const clone of this.clonesOf(volume, name)) this.modelFlatten(clone)
    volume.snapshots.delete(name)
  }

  modelDeleteVolume (volume: ModelVolume): void {
    for (const clone of this.clonesOf(volume)) this.modelFlatten(clone)
    this.volumes.delete(volume.name)
    this.#releaseSource(volume.source)
  }

  /** An implicit snapshot goes with its last clone. */
  #releaseSource (source: { volume: string, snapshot: string } | undefined): void {
    if (source === undefined) return
    const owner = this.volumes.get(source.volume)
    const snapshot = owner?.snapshots.get(source.snapshot)
    if (owner !== undefined && snapshot?.implicit === true && this.clonesOf(owner, snapshot.name).length === 0) owner.snapshots.delete(snapshot.name)
  }

  /** Data versions only snapshots keep: what `snapshotBytes` counts. */
  heldBlocks (volume: ModelVolume): number {
    const live = new Set([...volume.versions.values()].filter((version) => version > 0))
    const held = new Set<number>()
    for (const snapshot of volume.snapshots.values()) for (const version of snapshot.versions.values()) if (version > 0 && !live.has(version)) held.add(version)
    return held.size
  }

  liveBlocks (volume: ModelVolume): number {
    let n = 0
    for (const [index, version] of volume.versions) if (version > 0 && index * this.bs < volume.size) n++
    return n
  }

  /** Blocks that may differ between the snapshot `from` and the view `to` (a later snapshot, or live). */
  touchedBetween (volume: ModelVolume, from: ModelSnapshot, to: ModelSnapshot | undefined): Set<number> {
    const out = new Set<number>()
    for (const touch of volume.touches) if (touch.seq > from.seq && (to === undefined || touch.seq <= to.seq)) for (const index of touch.blocks) out.add(index)
    return out
  }

  /** What getAllocation should answer for a range of the live volume. */
  extents (volume: ModelVolume, offset: number, length: number): Array<{ offset: number, length: number, allocated: boolean }> {
    const out: Array<{ offset: number, length: number, allocated: boolean }> = []
    if (length === 0) return out
    for (let index = Math.floor(offset / this.bs); index <= Math.floor((offset + length - 1) / this.bs); index++) {
      const start = Math.max(offset, index * this.bs)
      const end = Math.min(offset + length, (index + 1) * this.bs)
      const allocated = this.allocated(volume, volume, index)
      const previous = out[out.length - 1]
      if (previous !== undefined && previous.allocated === allocated) previous.length += end - start
      else out.push({ offset: start, length: end - start, allocated })
    }
    return out
  }

  // ---------------------------------------------------------------- checks against the instance

  fail (message: string): never {
    throw new assert.AssertionError({ message })
  }

  async checkData (volume: ModelVolume, snapshot?: ModelSnapshot): Promise<void> {
    const view = snapshot ?? volume
    const ref = snapshot === undefined ? volume.name : { volume: volume.name, snapshot: snapshot.name }
    const got = await this.g.read(ref, 0, view.size)
    if (Buffer.compare(got, view.data) === 0) return
    let at = 0
    while (got[at] === view.data[at]) at++
    this.fail(`${label(volume, snapshot)} reads ${got[at]} at byte ${at} (block ${Math.floor(at / this.bs)}), the model says ${view.data[at]}`)
  }

  async checkAllocation (volume: ModelVolume, snapshot?: ModelSnapshot): Promise<void> {
    const view = snapshot ?? volume
    const ref = snapshot === undefined ? volume.name : { volume: volume.name, snapshot: snapshot.name }
    const extents = await this.g.getAllocation(ref, 0, view.size)
    const got: number[] = []
    for (const extent of extents) if (extent.allocated) for (let at = extent.offset; at < extent.offset + extent.length; at += this.bs) got.push(at / this.bs)
    assert.deepEqual(got, this.allocatedBlocks(volume, view), `getAllocation of ${label(volume, snapshot)}`)
    // Without `from`, listChangedBlocks lists the blocks holding data too.
    assert.deepEqual(await this.g.listChangedBlocks(volume.name, snapshot === undefined ? {} : { to: snapshot.name }), got, `listChangedBlocks of ${label(volume, snapshot)} without from`)
  }

  async checkUsage (volume: ModelVolume): Promise<void> {
    const usage = await this.g.getVolumeUsageDetails(volume.name)
    const live = this.liveBlocks(volume) * this.bs
    const held = this.heldBlocks(volume) * this.bs
    assert.deepEqual({ liveBytes: usage.liveBytes, snapshotBytes: usage.snapshotBytes, allocatedBytes: usage.allocatedBytes, sizeBytes: usage.sizeBytes },
      { liveBytes: live, snapshotBytes: held, allocatedBytes: live + held, sizeBytes: volume.size }, `usage of ${volume.name}`)
  }

  async checkChanged (volume: ModelVolume): Promise<void> {
    const snapshots = [...volume.snapshots.values()].sort((a, b) => a.seq - b.seq)
    for (let i = 0; i < snapshots.length; i++) {
      const from = snapshots[i] as ModelSnapshot
      for (const to of [...snapshots.slice(i), undefined]) {
        const listed = await this.g.listChangedBlocks(volume.name, to === undefined ? { from: from.name } : { from: from.name, to: to.name })
        const toView: ModelView = to ?? volume
        const may = this.touchedBetween(volume, from, to)
        const spurious = listed.filter((index) => !may.has(index))
        if (spurious.length > 0) this.fail(`listChangedBlocks of ${volume.name} from ${from.name} to ${to?.name ?? 'now'} lists blocks no operation touched: ${spurious.join(',')}`)
        const set = new Set(listed)
        const blocks = Math.ceil(Math.max(from.size, toView.size) / this.bs)
        for (let index = 0; index < blocks; index++) {
          if (set.has(index)) continue
          if (!sameBlock(from.data, toView.data, index, this.bs) || this.allocated(volume, from, index) !== this.allocated(volume, toView, index)) {
            this.fail(`listChangedBlocks of ${volume.name} from ${from.name} to ${to?.name ?? 'now'} misses block ${index}, which differs`)
          }
        }
      }
    }
  }

  async checkListings (): Promise<void> {
    const listed = (await this.g.listVolumes()).map((v) => v.name).sort()
    assert.deepEqual(listed, [...this.volumes.keys()].sort(), 'listVolumes')
    for (const volume of this.volumes.values()) {
      const snapshots = (await this.g.listSnapshots(volume.name)).map((s) => `${s.name}${s.implicit ? ' (implicit)' : ''}`).sort()
      assert.deepEqual(snapshots, [...volume.snapshots.values()].map((s) => `${s.name}${s.implicit ? ' (implicit)' : ''}`).sort(), `snapshots of ${volume.name}`)
    }
  }

  /** Compares one volume's live view (data, allocation, usage) with the model. */
  async checkLive (volume: ModelVolume): Promise<void> {
    await this.checkData(volume)
    await this.checkAllocation(volume)
    await this.checkUsage(volume)
  }

  /** Compares everything: every volume and every snapshot. */
  async checkAll (): Promise<void> {
    await this.checkListings()
    for (const volume of this.volumes.values()) {
      await this.checkLive(volume)
      for (const snapshot of volume.snapshots.values()) {
        await this.checkData(volume, snapshot)
        await this.checkAllocation(volume, snapshot)
      }
      await this.checkChanged(volume)
    }
  }

  // ---------------------------------------------------------------- operations (instance and model)

  async createVolume (name: string, blocks: number, encrypted = false): Promise<ModelVolume> {
    this.log.push(`createVolume ${name} ${blocks} blocks${encrypted ? ' encrypted' : ''}`)
    await this.g.createVolume({ name, sizeBytes: blocks * this.bs, ...(encrypted ? { storageClass: 'encrypted-storage', replicas: 1 } : {}) })
    this.modelCreate(name, blocks * this.bs, encrypted)
    return this.volumes.get(name) as ModelVolume
  }

  async write (volume: ModelVolume, offset: number, data: Uint8Array, how: string): Promise<void> {
    this.log.push(`write ${volume.name} @${offset} +${data.byteLength} ${how}`)
    await this.g.write(volume.name, offset, data)
    this.modelWrite(volume, offset, data)
  }

  async writeBlock (volume: ModelVolume, index: number, data: Uint8Array, how: string): Promise<void> {
    this.log.push(`writeBlock ${volume.name} #${index} +${data.byteLength} ${how}`)
    await this.g.writeBlock(volume.name, index, data)
    const padded = new Uint8Array(this.bs)
    padded.set(data)
    this.modelWrite(volume, index * this.bs, padded)
  }

  async trim (volume: ModelVolume, offset: number, length: number): Promise<void> {
    this.log.push(`trim ${volume.name} @${offset} +${length}`)
    await this.g.trim(volume.name, offset, length)
    this.modelTrim(volume, offset, length)
  }

  async snapshot (volume: ModelVolume, name: string): Promise<void> {
    this.log.push(`createSnapshot ${volume.name} ${name}`)
    await this.g.createSnapshot(volume.name, name)
    this.modelSnapshot(volume, name, false)
  }

  async deleteSnapshot (volume: ModelVolume, name: string, force: boolean): Promise<void> {
    const clones = this.clonesOf(volume, name)
    this.log.push(`deleteSnapshot ${volume.name} ${name}${force ? ' force' : ''} (clones: ${clones.map((c) => c.name).join(',') || 'none'})`)
    if (clones.length > 0 && !force) {
      await expectCode(this.g.deleteSnapshot(volume.name, name), 'BUSY')
      return
    }
    await this.g.deleteSnapshot(volume.name, name, { force })
    this.modelDeleteSnapshot(volume, name)
  }

  async restore (volume: ModelVolume, name: string): Promise<void> {
    this.log.push(`restoreSnapshot ${volume.name} ${name}`)
    await this.g.restoreSnapshot(volume.name, name)
    this.modelRevert(volume, volume.snapshots.get(name) as ModelSnapshot)
  }

  async clone (source: ModelVolume, snapshot: string | undefined, name: string): Promise<ModelVolume> {
    this.log.push(`cloneVolume ${source.name}${snapshot === undefined ? '' : `@${snapshot}`} ${name}`)
    const clone = await this.g.cloneVolume(snapshot === undefined ? source.name : { volume: source.name, snapshot }, name)
    if (snapshot === undefined) {
      const implicit = await this.g.getSnapshot(source.name, clone.source?.snapshotId as string)
      assert.equal(implicit.implicit, true)
      this.modelSnapshot(source, implicit.name, true)
      snapshot = implicit.name
    }
    this.modelClone(source, source.snapshots.get(snapshot) as ModelSnapshot, name)
    return this.volumes.get(name) as ModelVolume
  }

  async deleteVolume (volume: ModelVolume, force: boolean): Promise<void> {
    const clones = this.clonesOf(volume)
    this.log.push(`deleteVolume ${volume.name}${force ? ' force' : ''} (clones: ${clones.map((c) => c.name).join(',') || 'none'})`)
    // encrypted-storage keeps its volumes (reclaim policy Retain) unless forced.
    if ((clones.length > 0 || volume.encrypted) && !force) {
      await expectCode(this.g.deleteVolume(volume.name), 'BUSY')
      return
    }
    await this.g.deleteVolume(volume.name, { force })
    this.modelDeleteVolume(volume)
  }

  async expand (volume: ModelVolume, blocks: number): Promise<void> {
    this.log.push(`expandVolume ${volume.name} to ${blocks} blocks`)
    await this.g.expandVolume(volume.name, blocks * this.bs)
    this.modelExpand(volume, blocks * this.bs)
  }

  modelExpand (volume: ModelVolume, size: number): void {
    const data = new Uint8Array(size)
    data.set(volume.data)
    volume.data = data
    volume.size = size
  }

  async flush (volume: ModelVolume | undefined): Promise<void> {
    this.log.push(`flush ${volume?.name ?? '(all)'}`)
    await this.g.flush(volume?.name)
  }

  async rotateKey (volume: ModelVolume): Promise<void> {
    this.log.push(`rotateVolumeKey ${volume.name}`)
    await this.g.rotateVolumeKey(volume.name, { wait: true })
  }

  /**
   * Writes to disjoint ranges of `volume` in flight together with a snapshot (or a clone of the
   * live volume, under the name `clone`): the snapshot holds each write wholly or not at all. The
   * model follows what the snapshot shows.
   */
  async concurrent (volume: ModelVolume, writes: Array<[number, Uint8Array]>, snapshot: string, clone?: string): Promise<void> {
    this.log.push(`concurrently: ${writes.map(([offset, data]) => `write ${volume.name} @${offset} +${data.byteLength} random`).join(', ')}, ${clone === undefined ? `createSnapshot ${volume.name} ${snapshot}` : `cloneVolume ${volume.name} ${clone}`}`)
    const before = writes.map(([offset, data]) => volume.data.slice(offset, offset + data.byteLength))
    const started = writes.map(async ([offset, data]) => { await this.g.write(volume.name, offset, data) })
    const taken = clone === undefined ? this.g.createSnapshot(volume.name, snapshot) : this.g.cloneVolume(volume.name, clone)
    await Promise.all([...started, taken])
    if (clone !== undefined) {
      const made = await this.g.getVolume(clone)
      snapshot = (await this.g.getSnapshot(volume.name, made.source?.snapshotId as string)).name
    }
    const inside: boolean[] = []
    for (const [i, [offset, data]] of writes.entries()) {
      const seen = await this.g.read({ volume: volume.name, snapshot }, offset, data.byteLength)
      if (Buffer.compare(seen, data) === 0) inside.push(true)
      else if (Buffer.compare(seen, before[i] as Uint8Array) === 0) inside.push(false)
      else this.fail(`snapshot ${snapshot} holds part of the write at ${offset} (+${data.byteLength}) to ${volume.name}`)
    }
    this.log.push(`  (the snapshot holds writes ${inside.map((held, i) => held ? i : -1).filter((i) => i >= 0).join(',') || 'none'})`)
    for (const [i, [offset, data]] of writes.entries()) if (inside[i] === true) this.modelWrite(volume, offset, data)
    this.modelSnapshot(volume, snapshot, clone !== undefined)
    if (clone !== undefined) this.modelClone(volume, volume.snapshots.get(snapshot) as ModelSnapshot, clone)
    for (const [i, [offset, data]] of writes.entries()) if (inside[i] !== true) this.modelWrite(volume, offset, data)
  }

  /**
   * Operations whose outcome does not depend on their order, all in flight at once: writes and
   * trims of disjoint ranges of `volume`, and maybe the deletion of one of its snapshots that no
   * clone reads, a clone of another snapshot, an expansion and a read of a snapshot.
   */
  async mix (volume: ModelVolume): Promise<ModelVolume[]> {
    const steps: Array<{ text: string, run: () => Promise<void>, model: () => void }> = []
    const blocks = volume.size / this.bs
    for (let first = this.blockIndex(volume); first < blocks && steps.length < 4; first += 1 + this.int(4)) {
      const last = Math.min(blocks - 1, first + this.int(2))
      const from = first * this.bs + (this.chance(0.5) ? 0 : this.int(this.bs))
      const to = (last + 1) * this.bs - (this.chance(0.5) ? 0 : this.int(this.bs))
      first = last
      if (to <= from) continue
      if (this.chance(0.6)) {
        const [data, how] = this.bytes(to - from)
        steps.push({ text: `write ${volume.name} @${from} +${to - from} ${how}`, run: async () => { await this.g.write(volume.name, from, data) }, model: () => { this.modelWrite(volume, from, data) } })
      } else {
        steps.push({ text: `trim ${volume.name} @${from} +${to - from}`, run: async () => { await this.g.trim(volume.name, from, to - from) }, model: () => { this.modelTrim(volume, from, to - from) } })
      }
    }
    const snapshots = [...volume.snapshots.values()]
    const going = this.chance(0.5) ? this.pick(snapshots.filter((s) => this.clonesOf(volume, s.name).length === 0)) : undefined
    if (going !== undefined) {
      steps.push({ text: `deleteSnapshot ${volume.name} ${going.name}`, run: async () => { await this.g.deleteSnapshot(volume.name, going.name) }, model: () => { this.modelDeleteSnapshot(volume, going.name) } })
    }
    const others = snapshots.filter((s) => s !== going)
    const cloned = this.volumes.size < 7 && this.chance(0.4) ? this.pick(others) : undefined
    const cloneName = this.name('c')
    if (cloned !== undefined) {
      steps.push({ text: `cloneVolume ${volume.name}@${cloned.name} ${cloneName}`, run: async () => { await this.g.cloneVolume({ volume: volume.name, snapshot: cloned.name }, cloneName) }, model: () => { this.modelClone(volume, cloned, cloneName) } })
    }
    if (this.chance(0.3) && blocks < this.#backend.blocks.limit) {
      const size = (blocks + 1 + this.int(Math.ceil(blocks / 8))) * this.bs
      steps.push({ text: `expandVolume ${volume.name} to ${size / this.bs} blocks`, run: async () => { await this.g.expandVolume(volume.name, size) }, model: () => { this.modelExpand(volume, size) } })
    }
    const read = this.pick(others)
    if (read !== undefined) {
      const expected = read.data.slice()
      steps.push({ text: `read ${volume.name}@${read.name}`, run: async () => { assert.deepEqual(await this.g.read({ volume: volume.name, snapshot: read.name }, 0, read.size), expected, `read of ${volume.name}@${read.name} in flight`) }, model: () => {} })
    }
    if (steps.length < 2) return []
    this.log.push(`concurrently: ${steps.map((step) => step.text).join(', ')}`)
    const results = await Promise.allSettled(steps.map(async (step) => { await step.run() }))
    for (const result of results) if (result.status === 'rejected') throw result.reason
    for (const step of steps) step.model()
    return cloned === undefined ? [volume] : [volume, this.volumes.get(cloneName) as ModelVolume]
  }

  /** A call that must be refused with `code` and change nothing (the checks that follow look). */
  async refused (text: string, code: Parameters<typeof expectCode>[1], call: () => Promise<unknown>): Promise<void> {
    this.log.push(`${text} (refused: ${code})`)
    await expectCode(call(), code)
  }

  /** One bad call on `volume`: past its end, a taken name, a snapshot written to, a shrink. */
  async badCall (volume: ModelVolume): Promise<void> {
    const size = volume.size
    const snapshot = this.pick([...volume.snapshots.values()])
    const past = 1 + this.int(this.bs * 2)
    switch (this.int(9)) {
      case 0: { const offset = size - this.int(Math.min(size, this.bs * 2)); await this.refused(`write ${volume.name} @${offset} +${size - offset + past}`, 'OUT_OF_RANGE', async () => { await this.g.write(volume.name, offset, new Uint8Array(size - offset + past).fill(9)) }); break }
      case 1: { const offset = size - this.int(Math.min(size, this.bs * 2)); await this.refused(`trim ${volume.name} @${offset} +${size - offset + past}`, 'OUT_OF_RANGE', async () => { await this.g.trim(volume.name, offset, size - offset + past) }); break }
      case 2: await this.refused(`writeBlock ${volume.name} #${size / this.bs}`, 'OUT_OF_RANGE', async () => { await this.g.writeBlock(volume.name, size / this.bs, new Uint8Array(this.bs).fill(9)) }); break
      case 3: await this.refused(`writeBlock ${volume.name} #0 +${this.bs + 1}`, 'INVALID_ARGUMENT', async () => { await this.g.writeBlock(volume.name, 0, new Uint8Array(this.bs + 1).fill(9)) }); break
      case 4: await this.refused(`expandVolume ${volume.name} to ${size / this.bs - 1} blocks`, 'INVALID_ARGUMENT', async () => { await this.g.expandVolume(volume.name, size - this.bs) }); break
      case 5: {
        const taken = this.pick([...this.volumes.keys()]) as string
        await this.refused(`cloneVolume ${volume.name} ${taken}`, 'VOLUME_EXISTS', async () => { await this.g.cloneVolume(volume.name, taken) })
        break
      }
      case 6:
        if (snapshot === undefined) return
        await this.refused(`createSnapshot ${volume.name} ${snapshot.name}`, 'SNAPSHOT_EXISTS', async () => { await this.g.createSnapshot(volume.name, snapshot.name) })
        break
      case 7:
        if (snapshot === undefined) return
        await this.refused(`write ${volume.name}@${snapshot.name} @0 +1`, 'READ_ONLY', async () => { await this.g.write({ volume: volume.name, snapshot: snapshot.name } as unknown as string, 0, new Uint8Array(1).fill(9)) })
        break
      default:
        if (snapshot === undefined) return
        await this.refused(`read ${volume.name}@${snapshot.name} @0 +${snapshot.size + past}`, 'OUT_OF_RANGE', async () => await this.g.read({ volume: volume.name, snapshot: snapshot.name }, 0, snapshot.size + past))
    }
  }

  /**
   * close() called while writes to disjoint ranges of `volume` (and maybe a snapshot) are in
   * flight: after reopening, every write that resolved is there, none is there in part, and a
   * write that was refused is not there either.
   */
  async closeDuring (volume: ModelVolume, writes: Array<[number, Uint8Array]>, snapshot: string | undefined): Promise<void> {
    const before = writes.map(([offset, data]) => volume.data.slice(offset, offset + data.byteLength))
    // Some writes start before close(), the others a few turns of the event loop after it.
    const turns = writes.map(() => this.chance(0.5) ? 0 : 1 + this.int(6))
    const g = this.g
    const turn = async (): Promise<void> => { await new Promise((resolve) => setImmediate(resolve)) }
    const started = writes.map(async ([offset, data], i) => {
      if (turns[i] === 0) return await g.write(volume.name, offset, data)
      await Promise.resolve()
      for (let n = 0; n < (turns[i] as number); n++) await turn()
      await g.write(volume.name, offset, data)
    })
    // observed: it may end NOT_OPEN or CANCELLED while the writes are awaited below.
    const taken = snapshot === undefined ? undefined : observed(g.createSnapshot(volume.name, snapshot))
    this.log.push(`concurrently: ${writes.map(([offset, data], i) => `write ${volume.name} @${offset} +${data.byteLength} random${turns[i] === 0 ? '' : ` ${turns[i]} turns after close()`}`).join(', ')}${snapshot === undefined ? '' : `, createSnapshot ${volume.name} ${snapshot}`}, close; then reopen`)
    const closed = g.close()
    const outcomes = await Promise.allSettled(started)
    const snapshotOutcome = taken === undefined ? undefined : (await Promise.allSettled([taken]))[0]
    await closed
    this.g = await GalleonFS.open(this.#options)
    const exists = snapshot !== undefined && (await this.g.listSnapshots(volume.name)).some((s) => s.name === snapshot)
    if (snapshotOutcome?.status === 'fulfilled' && !exists) this.fail(`snapshot ${snapshot} was taken (createSnapshot resolved) but is gone after close`)
    const whereIs = async (i: number, ref: string | { volume: string, snapshot: string }): Promise<boolean> => {
      const [offset, data] = writes[i] as [number, Uint8Array]
      const seen = await this.g.read(ref, offset, data.byteLength)
      if (Buffer.compare(seen, data) === 0) return true
      if (Buffer.compare(seen, before[i] as Uint8Array) === 0) return false
      return this.fail(`${typeof ref === 'string' ? ref : `${ref.volume}@${ref.snapshot}`} holds part of the write at ${offset} (+${data.byteLength}) after close`)
    }
    const applied: boolean[] = []
    const inSnapshot: boolean[] = []
    for (const [i, outcome] of outcomes.entries()) {
      applied.push(await whereIs(i, volume.name))
      if (outcome.status === 'fulfilled' && applied[i] !== true) this.fail(`the write at ${writes[i]?.[0]} to ${volume.name} resolved during close() but is lost after reopening`)
      if (outcome.status === 'rejected' && applied[i] === true) this.fail(`the write at ${writes[i]?.[0]} to ${volume.name} was refused during close() (${String(outcome.reason)}) but is there after reopening`)
      inSnapshot.push(exists && snapshot !== undefined ? await whereIs(i, { volume: volume.name, snapshot }) : false)
      if (inSnapshot[i] === true && applied[i] !== true) this.fail(`snapshot ${snapshot} holds the write at ${writes[i]?.[0]}, which the volume lost`)
    }
    this.log.push(`  (writes ${outcomes.map((o, i) => `${i}: ${o.status === 'fulfilled' ? 'resolved' : 'refused'}${applied[i] === true ? '' : ' and absent'}${inSnapshot[i] === true ? ' in snapshot' : ''}`).join(', ')}; snapshot ${snapshotOutcome?.status ?? 'none'}${exists ? ', exists' : ''})`)
    for (const [i, [offset, data]] of writes.entries()) if (inSnapshot[i] === true) this.modelWrite(volume, offset, data)
    if (exists && snapshot !== undefined) this.modelSnapshot(volume, snapshot, false)
    for (const [i, [offset, data]] of writes.entries()) if (applied[i] === true && inSnapshot[i] !== true) this.modelWrite(volume, offset, data)
  }

  async reopen (): Promise<void> {
    this.log.push('close and reopen')
    await this.g.close()
    this.g = await GalleonFS.open(this.#options)
  }

  async close (): Promise<void> {
    await this.g.close()
  }

  // ---------------------------------------------------------------- random steps

  /** Bytes to write: random, one repeated byte, or zeros. */
  bytes (length: number, kind = this.int(3)): [Uint8Array, string] {
    if (kind === 2) return [new Uint8Array(length), 'zeros']
    if (kind === 1) {
      const value = 1 + this.int(255)
      return [new Uint8Array(length).fill(value), `fill ${value}`]
    }
    const out = new Uint8Array(length)
    for (let i = 0; i < length; i++) out[i] = this.int(256)
    return [out, 'random']
  }

  /** Writes of random bytes (never what is there already) to disjoint ranges of up to three blocks, not always whole ones. */
  disjointWrites (volume: ModelVolume): Array<[number, Uint8Array]> {
    const writes: Array<[number, Uint8Array]> = []
    const blocks = volume.size / this.bs
    for (let first = this.blockIndex(volume); first < blocks && writes.length < 4; first += 1 + this.int(4)) {
      const last = Math.min(blocks - 1, first + this.int(3))
      const from = first * this.bs + (this.chance(0.5) ? 0 : this.int(this.bs))
      const to = (last + 1) * this.bs - (this.chance(0.5) ? 0 : this.int(this.bs))
      if (to <= from) continue
      const data = this.bytes(to - from, 0)[0]
      // Bytes equal to what is there would leave it unknown whether the write is in.
      if (Buffer.compare(data, volume.data.subarray(from, to)) === 0) continue
      writes.push([from, data])
      // The next write starts in a later block.
      first = last
    }
    return writes
  }

  /** A block of the volume: any, or one near a hot spot. */
  blockIndex (volume: ModelVolume): number {
    const blocks = volume.size / this.bs
    const hot = this.#backend.hot?.filter((index) => index < blocks)
    if (hot === undefined || hot.length === 0) return this.int(blocks)
    return Math.max(0, Math.min(blocks - 1, (this.pick(hot) as number) + this.int(8) - 4))
  }

  /** A range inside the volume: aligned to blocks or not, one block or several, now and then all of it. */
  range (volume: ModelVolume): [number, number] {
    const blocks = volume.size / this.bs
    if (this.chance(0.05)) return [0, volume.size]
    if (this.chance(0.5)) {
      const first = this.blockIndex(volume)
      const count = 1 + this.int(Math.min(4, blocks - first))
      return [first * this.bs, count * this.bs]
    }
    const offset = this.blockIndex(volume) * this.bs + this.int(this.bs)
    const length = 1 + this.int(Math.min(volume.size - offset, this.bs * 3 + this.int(this.bs)))
    return [offset, length]
  }

  /** One random operation; returns the volumes whose live view it may have changed. */
  async step (): Promise<ModelVolume[]> {
    const volumes = [...this.volumes.values()]
    const volume = this.pick(volumes)
    if (volume === undefined || (volumes.length < 3 && this.chance(0.1))) {
      const { min, max } = this.#backend.blocks
      return [await this.createVolume(this.name('v'), min + this.int(max - min + 1), this.chance(0.3))]
    }
    const dice = this.int(100)
    if (dice < 22) {
      const [offset, length] = this.range(volume)
      const [data, how] = this.bytes(length)
      await this.write(volume, offset, data, how)
    } else if (dice < 32) {
      const [data, how] = this.bytes(this.chance(0.6) ? this.bs : 1 + this.int(this.bs))
      await this.writeBlock(volume, this.blockIndex(volume), data, how)
    } else if (dice < 44) {
      const [offset, length] = this.range(volume)
      await this.trim(volume, offset, length)
    } else if (dice < 47) {
      await this.flush(this.chance(0.5) ? volume : undefined)
      return []
    } else if (dice < 56) {
      if (volume.snapshots.size >= 5) return []
      await this.snapshot(volume, this.name('s'))
      return []
    } else if (dice < 63) {
      const snapshot = this.pick([...volume.snapshots.keys()])
      if (snapshot === undefined) return []
      const clones = this.clonesOf(volume, snapshot)
      await this.deleteSnapshot(volume, snapshot, this.chance(0.5))
      return clones
    } else if (dice < 70) {
      const snapshot = this.pick([...volume.snapshots.keys()])
      if (snapshot === undefined) return []
      await this.restore(volume, snapshot)
    } else if (dice < 78) {
      if (volumes.length >= 7) return []
      const snapshot = this.chance(0.5) ? this.pick([...volume.snapshots.keys()]) : undefined
      return [volume, await this.clone(volume, snapshot, this.name('c'))]
    } else if (dice < 84) {
      const clones = this.clonesOf(volume)
      await this.deleteVolume(volume, this.chance(0.5))
      return clones.filter((clone) => this.volumes.has(clone.name))
    } else if (dice < 89) {
      const blocks = volume.size / this.bs
      if (blocks >= this.#backend.blocks.limit) return []
      await this.expand(volume, blocks + 1 + this.int(Math.ceil(blocks / 4)))
    } else if (dice < 91) {
      if (volume.snapshots.size >= 5 || volumes.length >= 7) return []
      const writes = this.disjointWrites(volume)
      if (writes.length === 0) return []
      if (this.#backend.durable && this.chance(0.3)) {
        await this.closeDuring(volume, writes, this.chance(0.5) ? this.name('s') : undefined)
        await this.checkAll()
        return []
      }
      const clone = this.chance(0.3) ? this.name('c') : undefined
      await this.concurrent(volume, writes, this.name('s'), clone)
      return clone === undefined ? [volume] : [volume, this.volumes.get(clone) as ModelVolume]
    } else if (dice < 93) {
      return await this.mix(volume)
    } else if (dice < 94) {
      if (!volume.encrypted) {
        await this.badCall(volume)
        return [volume]
      }
      await this.rotateKey(volume)
    } else if (dice < 97) {
      // Reads that do not change anything: a block, and a part of a snapshot.
      const index = this.blockIndex(volume)
      const block = await this.g.readBlock(volume.name, index)
      assert.deepEqual(block, blockOf(volume.data, index, this.bs), `readBlock ${volume.name} #${index}`)
      // Allocation of a range not aligned to blocks: extents rounded out to blocks, clipped to the range.
      const offset = this.int(volume.size)
      const length = this.int(volume.size - offset + 1)
      assert.deepEqual(await this.g.getAllocation(volume.name, offset, length), this.extents(volume, offset, length), `getAllocation ${volume.name} @${offset} +${length}`)
      const snapshot = this.pick([...volume.snapshots.values()])
      if (snapshot !== undefined) {
        const offset = this.int(snapshot.size)
        const length = this.int(snapshot.size - offset + 1)
        assert.deepEqual(await this.g.read({ volume: volume.name, snapshot: snapshot.name }, offset, length), snapshot.data.subarray(offset, offset + length), `read ${volume.name}@${snapshot.name} @${offset} +${length}`)
      }
      return []
    } else if (this.#backend.durable) {
      await this.reopen()
      await this.checkAll()
      return []
    } else {
      await this.checkAll()
      return []
    }
    return this.volumes.has(volume.name) ? [volume] : []
  }
}

function blockOf (data: Uint8Array, index: number, bs: number): Uint8Array {
  const out = new Uint8Array(bs)
  out.set(data.subarray(index * bs, Math.min(data.byteLength, (index + 1) * bs)))
  return out
}

/** Whether block `index` reads the same in two views (past a view's end: zeros). */
function sameBlock (a: Uint8Array, b: Uint8Array, index: number, bs: number): boolean {
  const start = index * bs
  if (start + bs <= a.byteLength && start + bs <= b.byteLength) return Buffer.compare(a.subarray(start, start + bs), b.subarray(start, start + bs)) === 0
  return Buffer.compare(blockOf(a, index, bs), blockOf(b, index, bs)) === 0
}

function label (volume: ModelVolume, snapshot?: ModelSnapshot): string {
  return snapshot === undefined ? `volume ${volume.name}` : `snapshot ${volume.name}@${snapshot.name}`
}

/** Runs `steps` random operations on a fresh instance of `backend`; a failure names the seed and the operations. */
async function fuzz (backend: Backend, seed: number, steps: number): Promise<void> {
  const run = new ModelRun(backend, seed)
  await run.open()
  try {
    for (let n = 0; n < steps; n++) {
      for (const volume of await run.step()) await run.checkLive(volume)
      if (n % 10 === 9) await run.checkAll()
    }
    if (backend.durable) await run.reopen()
    await run.checkAll()
  } catch (err) {
    const replay = `GALLEON_FUZZ_SEED=${SEED} (backend ${backend.name}, after ${run.log.length} operations)`
    console.error(`model fuzz failed; replay with ${replay}. Operations:\n  ${run.log.join('\n  ')}`)
    if (err instanceof Error) err.message = `${err.message}\nreplay with ${replay}`
    throw err
  } finally {
    await run.close().catch(() => {})
  }
}

describe('volumes, snapshots and clones against a model (seeded random operations)', () => {
  for (const [i, backend] of BACKENDS.entries()) {
    it(`${backend.name} backend, seed ${SEED}, ${STEPS} operations`, async () => {
      await fuzz(backend, (SEED + i * 0x9e3779b9) >>> 0, STEPS)
    })
  }
})
