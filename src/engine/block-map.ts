// A volume's copy-on-write block map: which stored version of each block every view of the volume
// (the live view, each snapshot) reads, which versions a snapshot keeps alive, and which blocks
// changed between two snapshots. Pure bookkeeping: the engine does the I/O and calls in here.
//
// Versions. Every write of a block stores a new version under a fresh generation (gen) of the
// volume; gens only grow. A trim that must hide older data stores a tombstone version. In memory a
// version is a signed number: `gen` for data, `-gen` for a tombstone (tombstone gens are >= 1). In
// the block store a tombstone's address carries `gen + TOMBSTONE_BIT`, so recovery can tell the two
// apart from addresses alone.
//
// Snapshots. A snapshot is just a generation `s`: it reads, for each block, the newest version with
// gen < s (falling through to the parent volume for a clone). Taking one is O(1): record `s`. A
// version superseded by a newer one is kept only when a snapshot lies between the two; otherwise it
// is garbage at once. So a write after a snapshot stores one new version and keeps the old one:
// nothing is copied.
//
// Epochs. Snapshot gens cut a volume's history into epochs: epoch k holds the gens in
// [snapGens[k-1], snapGens[k]), the last one (the open epoch) everything since the newest snapshot.
// A block has at most one stored version per epoch (a second write in the same epoch supersedes the
// first, which no snapshot needs). Epoch k >= 1 keeps the set of block indices with a version in it,
// so "blocks changed between two snapshots" is the union of the sets between them, with work
// proportional to the changes, and deleting a snapshot merges two epochs with work proportional to
// the smaller one. Epoch 0 (before the first snapshot) keeps no set: its blocks are everything the
// volume had, listed by a full scan when a full listing is asked for, and taking the first snapshot
// stays O(1).

import { GalleonError } from '../errors.js'
import { PAGE_SLOTS, PagedMap } from '../paged-map.js'

/** Added to a tombstone's gen in its block-store address. */
export const TOMBSTONE_BIT = 2 ** 52

/** The block-store gen of a signed version. */
export function storeGen (version: number): number {
  return version < 0 ? -version + TOMBSTONE_BIT : version
}

/** The signed version of a block-store gen. */
export function versionOf (storedGen: number): number {
  return storedGen >= TOMBSTONE_BIT ? -(storedGen - TOMBSTONE_BIT) : storedGen
}

/** Generation of a signed version. */
export function genOf (version: number): number {
  return version < 0 ? -version : version
}

/** A clone's view of its source: the source's map as of `gen`, limited to its first `blocks` blocks. */
export interface ParentLink {
  readonly map: BlockMap
  readonly gen: number
  readonly blocks: number
}

/** Where a view of a block reads from: a data version of some volume (the volume itself or an ancestor). */
export interface Located {
  readonly map: BlockMap
  readonly gen: number
}

/** Reading at `LIVE` means the live view (newer than every snapshot). */
export const LIVE = Number.POSITIVE_INFINITY

export class BlockMap {
  readonly storageId: number
  /** Block index -> newest version (signed). Paged: the hot path of every read and write. */
  readonly #current = new PagedMap<number>()
  /** Block index -> older versions kept for snapshots, ascending by gen (a number when only one). */
  readonly #history = new Map<number, number | number[]>()
  /** Snapshot generations, ascending. */
  readonly #snapGens: number[] = []
  /** Per epoch, the indices with a version in it; null for an epoch that keeps no set (epoch 0). */
  #epochs: Array<Set<number> | null> = [null]
  /** Source of a clone; undefined for an ordinary volume. */
  parent: ParentLink | undefined
  /** Data versions in the live view (blocks this volume stores and uses now). */
  #liveBlocks = 0
  /** Data versions kept only for snapshots. */
  #heldBlocks = 0

  constructor (storageId: number) {
    this.storageId = storageId
  }

  /** Blocks the live view reads from this volume's own storage. */
  get liveBlocks (): number { return this.#liveBlocks }
  /** Data versions this volume stores only for its snapshots. */
  get heldBlocks (): number { return this.#heldBlocks }
  /** Snapshot generations, ascending. */
  get snapshotGens (): readonly number[] { return this.#snapGens }
  /** Generation of the newest snapshot, 0 when there is none. */
  get lastSnapshotGen (): number { return this.#snapGens[this.#snapGens.length - 1] ?? 0 }

  /** The newest version (signed) of a block in the live view, if any. */
  current (index: number): number | undefined {
    return this.#current.get(index)
  }

  /** Every stored version of a block, oldest first. */
  versions (index: number): number[] {
    const out = this.#historyList(index).slice()
    const current = this.#current.get(index)
    if (current !== undefined) out.push(current)
    return out
  }

  /** This volume's own version of `index` visible at `at` (gen < at), ignoring the parent. */
  own (index: number, at: number = LIVE): number | undefined {
    const current = this.#current.get(index)
    if (current === undefined) return undefined
    if (genOf(current) < at) return current
    const history = this.#history.get(index)
    if (history === undefined) return undefined
    if (typeof history === 'number') return genOf(history) < at ? history : undefined
    for (let i = history.length - 1; i >= 0; i--) {
      const version = history[i] as number
      if (genOf(version) < at) return version
    }
    return undefined
  }

  /** Where the view at `at` reads block `index` from; undefined when it reads zeros. */
  locate (index: number, at: number = LIVE): Located | undefined {
    if (at === LIVE) {
      // The hot path: the live view of a block this volume has written.
      const current = this.#current.get(index)
      if (current !== undefined) return current < 0 ? undefined : { map: this, gen: current }
      if (this.parent === undefined) return undefined
    }
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    let map: BlockMap | undefined = this
    let view = at
    while (map !== undefined) {
      const version = map.own(index, view)
      if (version !== undefined) return version < 0 ? undefined : { map, gen: version }
      const parent: ParentLink | undefined = map.parent
      if (parent === undefined || index >= parent.blocks) return undefined
      map = parent.map
      view = parent.gen
    }
    return undefined
  }

  /** Whether the live view would read data for `index` from below this volume's versions (its parent). */
  parentHasData (index: number): boolean {
    const parent = this.parent
    return parent !== undefined && index < parent.blocks && parent.map.locate(index, parent.gen) !== undefined
  }

  /** Epoch of a generation: how many snapshot gens are <= it. */
  epochOf (gen: number): number {
    const gens = this.#snapGens
    const n = gens.length
    if (n === 0 || gen >= (gens[n - 1] as number)) return n
    let lo = 0
    let hi = n - 1
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if ((gens[mid] as number) <= gen) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  /**
   * Makes `version` (newer than every version of the block) the block's live version. Returns the
   * superseded version when no snapshot needs it (the caller deletes it from the store).
   */
  publish (index: number, version: number): number | undefined {
    const previous = this.#current.get(index)
    this.#current.set(index, version)
    if (version >= 0) this.#liveBlocks++
    this.#epochAdd(index, genOf(version))
    if (previous === undefined) return undefined
    if (previous >= 0) this.#liveBlocks--
    if (this.epochOf(genOf(previous)) !== this.epochOf(genOf(version))) {
      // A snapshot lies between the two: it reads `previous`.
      this.#historyPush(index, previous)
      if (previous >= 0) this.#heldBlocks++
      return undefined
    }
    return previous
  }

  /**
   * Plans a trim of block `index` at generation `gen`: which version to delete, and whether a
   * tombstone (at `gen`) must hide what would otherwise show through (a version a snapshot keeps, or
   * the parent's data).
   */
  planUnmap (index: number, gen: number): { remove: number | undefined, tombstone: boolean } {
    const current = this.#current.get(index)
    if (current === undefined) return { remove: undefined, tombstone: this.parentHasData(index) }
    if (current < 0) return { remove: undefined, tombstone: false }
    if (this.epochOf(current) !== this.epochOf(gen)) return { remove: undefined, tombstone: true }
    const below = this.#historyTop(index)
    const showsData = below === undefined ? this.parentHasData(index) : below >= 0
    return { remove: current, tombstone: showsData }
  }

  /** Applies a planned trim once its batch is stored. */
  applyUnmap (index: number, gen: number, plan: { remove: number | undefined, tombstone: boolean }): void {
    if (plan.tombstone) {
      if (plan.remove !== undefined) this.#dropCurrent(index, false)
      // What shows below is kept for a snapshot, so nothing is superseded here.
      const superseded = this.publish(index, -gen)
      if (superseded !== undefined) throw new Error(`block map: trim of block ${index} superseded version ${superseded}`)
      return
    }
    if (plan.remove !== undefined) this.#dropCurrent(index, true)
  }

  /** Removes the current version; the newest kept version (if any) becomes current again. */
  #dropCurrent (index: number, forgetEpoch: boolean): void {
    const current = this.#current.get(index)
    if (current === undefined) return
    if (current >= 0) this.#liveBlocks--
    if (forgetEpoch) this.#epochDelete(index, genOf(current))
    const below = this.#historyPop(index)
    if (below === undefined) {
      this.#current.delete(index)
    } else {
      this.#current.set(index, below)
      if (below >= 0) { this.#heldBlocks--; this.#liveBlocks++ }
    }
  }

  /**
   * Adds a data version at gen 0, below every other version (used when a clone takes its own copy
   * of its parent's data). Returns false when the clone does not need it (no view reads through).
   */
  needsBaseCopy (index: number): boolean {
    const versions = this.versions(index)
    if (versions.length === 0) return true
    const oldest = versions[0] as number
    if (oldest === 0) return false
    const firstSnapshot = this.#snapGens[0]
    return firstSnapshot !== undefined && firstSnapshot <= genOf(oldest)
  }

  /** Records a gen-0 data version (see needsBaseCopy) once it is stored. */
  insertBase (index: number): void {
    const current = this.#current.get(index)
    if (current === undefined) {
      this.#current.set(index, 0)
      this.#liveBlocks++
      return
    }
    const history = this.#historyList(index)
    if (history[0] === 0 || current === 0) return
    this.#history.set(index, history.length === 0 ? 0 : [0, ...history])
    this.#heldBlocks++
  }

  /** Registers a snapshot at `gen` (>= every snapshot so far): O(1). */
  addSnapshot (gen: number): void {
    const last = this.lastSnapshotGen
    if (gen < last) throw new GalleonError('INVALID_ARGUMENT', `snapshot generation ${gen} is older than the newest snapshot (${last})`)
    // Two snapshots with no write between them share a gen; the epoch between them stays empty.
    this.#snapGens.push(gen)
    this.#epochs.push(new Set())
  }

  /**
   * Forgets the snapshot at `gen` and returns the versions only it kept (the caller deletes them).
   * Work is proportional to the smaller of the two epochs it separated.
   */
  dropSnapshot (gen: number): Array<[index: number, version: number]> {
    const j = this.#snapGens.lastIndexOf(gen)
    if (j < 0) return []
    const older = this.#epochs[j] as Set<number> | null
    const newer = this.#epochs[j + 1] as Set<number>
    const garbage: Array<[number, number]> = []
    const superseded = (index: number): void => {
      const version = this.#historyTake(index, j)
      if (version === undefined) return
      if (version >= 0) this.#heldBlocks--
      garbage.push([index, version])
      // A tombstone left with nothing to hide is garbage too.
      const current = this.#current.get(index) as number
      if (current < 0 && !this.#history.has(index) && !this.parentHasData(index)) {
        this.#current.delete(index)
        garbage.push([index, current])
        prunedTombstones.push([index, current])
      }
    }
    const prunedTombstones: Array<[number, number]> = []
    let merged: Set<number> | null
    if (older === null) {
      for (const index of newer) superseded(index)
      merged = null
    } else if (older.size <= newer.size) {
      for (const index of older) {
        if (newer.has(index)) superseded(index)
        else newer.add(index)
      }
      merged = newer
    } else {
      for (const index of newer) {
        if (older.has(index)) superseded(index)
        else older.add(index)
      }
      merged = older
    }
    this.#snapGens.splice(j, 1)
    this.#epochs.splice(j, 2, merged)
    if (this.#snapGens.length === 0) this.#epochs = [null]
    for (const [index, tombstone] of prunedTombstones) this.#epochDelete(index, genOf(tombstone))
    return garbage
  }

  /**
   * Indices with a version stored in [fromGen, toGen): the blocks that differ between the snapshot
   * at fromGen and the view at toGen (a snapshot gen or LIVE). `fromGen` must be a snapshot gen.
   */
  changedBetween (fromGen: number, toGen: number): number[] {
    const from = this.#snapGens.indexOf(fromGen)
    if (from < 0) throw new GalleonError('SNAPSHOT_NOT_FOUND', `no snapshot at generation ${fromGen}`)
    const to = toGen === LIVE ? this.#epochs.length - 1 : this.#snapGens.indexOf(toGen)
    if (to < 0) throw new GalleonError('SNAPSHOT_NOT_FOUND', `no snapshot at generation ${toGen}`)
    if (to <= from) return []
    // One interval (the usual incremental case) needs no merging; several are merged in a set.
    let indices: Set<number>
    if (to === from + 1) {
      indices = this.#epochs[to] as Set<number>
    } else {
      indices = new Set<number>()
      for (let k = from + 1; k <= to; k++) {
        for (const index of this.#epochs[k] as Set<number>) indices.add(index)
      }
    }
    return sortedIndices(indices)
  }

  /** Indices the view at `at` reads data for (own or through the parent), ascending. */
  allocatedAt (at: number = LIVE): number[] {
    const out: number[] = []
    this.forEachAllocated(0, Number.POSITIVE_INFINITY, at, (index) => { out.push(index) })
    return out
  }

  /**
   * Calls `visit` with each index in [first, last] the view at `at` reads data for (own or through
   * the parent), ascending. Only the pages (of PAGE_SLOTS indices) where some map of the clone
   * chain stores a version are walked (an ancestor's only below each link's `blocks`), each index
   * resolved as a read resolves it: the work follows the blocks stored in the range, not its length.
   */
  forEachAllocated (first: number, last: number, at: number, visit: (index: number) => void): void {
    let pages: number[] = []
    let chained = false
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    let map: BlockMap | undefined = this
    let end = last
    while (map !== undefined && first <= end) {
      const own = map.#current.pagesBetween(first, end)
      if (own.length > 0) {
        if (pages.length > 0) chained = true
        pages = pages.length === 0 ? own : pages.concat(own)
      }
      const parent: ParentLink | undefined = map.parent
      if (parent === undefined) break
      end = Math.min(end, parent.blocks - 1)
      map = parent.map
    }
    if (chained) pages = distinctSorted(pages)
    for (const page of pages) {
      const to = Math.min(last, (page + 1) * PAGE_SLOTS - 1)
      for (let index = Math.max(first, page * PAGE_SLOTS); index <= to; index++) {
        if (this.locate(index, at) !== undefined) visit(index)
      }
    }
  }

  /** Every own data version (index, gen) stored: what scrub verifies. */
  * storedData (): Generator<[number, number]> {
    for (const [index, current] of this.#current) {
      for (const version of this.#historyList(index)) if (version >= 0) yield [index, version]
      if (current >= 0) yield [index, current]
    }
  }

  /**
   * Rebuilds a block from its stored versions after open (signed, any order). Keeps the newest and,
   * for each snapshot, the newest below it; returns the rest, which no view reads.
   */
  load (index: number, stored: number[]): number[] {
    if (stored.length === 1) {
      this.publish(index, stored[0] as number)
      return []
    }
    stored.sort((a, b) => genOf(a) - genOf(b))
    const keep = new Set<number>()
    keep.add(stored.length - 1)
    let at = 0
    for (const snapGen of this.#snapGens) {
      while (at < stored.length && genOf(stored[at] as number) < snapGen) at++
      if (at > 0) keep.add(at - 1)
    }
    const garbage: number[] = []
    for (let i = 0; i < stored.length; i++) {
      const version = stored[i] as number
      if (keep.has(i)) {
        const superseded = this.publish(index, version)
        if (superseded !== undefined) throw new Error(`block map: load of block ${index} dropped kept version ${superseded}`)
      } else {
        garbage.push(version)
      }
    }
    return garbage
  }

  #epochAdd (index: number, gen: number): void {
    const set = this.#epochs[this.epochOf(gen)]
    if (set !== null && set !== undefined) set.add(index)
  }

  #epochDelete (index: number, gen: number): void {
    const set = this.#epochs[this.epochOf(gen)]
    if (set !== null && set !== undefined) set.delete(index)
  }

  #historyList (index: number): number[] {
    const history = this.#history.get(index)
    return history === undefined ? [] : typeof history === 'number' ? [history] : history
  }

  #historyTop (index: number): number | undefined {
    const history = this.#history.get(index)
    return history === undefined ? undefined : typeof history === 'number' ? history : history[history.length - 1]
  }

  #historyPush (index: number, version: number): void {
    const history = this.#history.get(index)
    if (history === undefined) this.#history.set(index, version)
    else if (typeof history === 'number') this.#history.set(index, [history, version])
    else history.push(version)
  }

  #historyPop (index: number): number | undefined {
    const history = this.#history.get(index)
    if (history === undefined) return undefined
    if (typeof history === 'number') { this.#history.delete(index); return history }
    const top = history.pop()
    if (history.length === 1) this.#history.set(index, history[0] as number)
    return top
  }

  /** Removes and returns the kept version of `index` that lies in epoch `epoch`, if any. */
  #historyTake (index: number, epoch: number): number | undefined {
    const history = this.#history.get(index)
    if (history === undefined) return undefined
    if (typeof history === 'number') {
      if (this.epochOf(genOf(history)) !== epoch) return undefined
      this.#history.delete(index)
      return history
    }
    const at = history.findIndex((version) => this.epochOf(genOf(version)) === epoch)
    if (at < 0) return undefined
    const [version] = history.splice(at, 1)
    if (history.length === 1) this.#history.set(index, history[0] as number)
    else if (history.length === 0) this.#history.delete(index)
    return version
  }
}

/** The indices in ascending order (a typed-array sort: numeric and much faster than a comparator). */
function sortedIndices (indices: Iterable<number> & { readonly size: number }): number[] {
  const sorted = new Float64Array(indices.size)
  let at = 0
  for (const index of indices) sorted[at++] = index
  sorted.sort()
  // A plain loop: Array.from() of a typed array is several times slower.
  const out = new Array<number>(sorted.length)
  for (let i = 0; i < sorted.length; i++) out[i] = sorted[i] as number
  return out
}

/** The distinct numbers of `numbers`, ascending. */
function distinctSorted (numbers: number[]): number[] {
  const sorted = Float64Array.from(numbers).sort()
  const out: number[] = []
  for (let i = 0; i < sorted.length; i++) if (i === 0 || sorted[i] !== sorted[i - 1]) out.push(sorted[i] as number)
  return out
}
