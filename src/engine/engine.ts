// The block I/O path: per-volume copy-on-write block maps (see block-map.ts), per-block ordering,
// read-modify-write at byte-range edges, checksums on every read, snapshots, clones and reverts,
// and the journal below.

import { GalleonError, copyBytes, errorCode, plainView } from '../errors.js'
import { addressKey } from '../abstract-block-store.js'
import { Address, type BlockAddress, type BlockOp, type BlockStore } from '../drivers.js'
import { MetricsRecorder } from '../metrics/recorder.js'
import { BlockCache } from './block-cache.js'
import { BlockMap, LIVE, genOf, storeGen, versionOf, type Located } from './block-map.js'
import { BLOCK_FLAG_ENCRYPTED, BLOCK_FLAG_TOMBSTONE, BLOCK_HEADER_BYTES, allocBlock, decodeBlock, encodeBlock, encodeBlockWith, finishBlock, isSealedBlock } from './codec.js'
import { batchMinBlocks, cipherPool, sealJobs, type OpenJob, type SealJob } from '../crypto/cipher-pool.js'
import { NativeOpenRun, SEALED_OVERHEAD, keyVersion, type VolumeCipher } from '../crypto/volume-cipher.js'
import { nativeAead } from '../crypto/native-aead.js'
import { WriteJournal, type ReplicationHook } from './journal.js'
import type { VolumeReplicator } from './replicator.js'
import { WriteConcern } from '../types.js'
import { LoopStreak, loopTurn } from '../loop-streak.js'

/** Details of a checksum failure, as reported to the engine's owner. */
export interface ChecksumFailure {
  readonly storageId: number
  readonly index: number
  readonly gen: number
  readonly reason: string
  readonly expected?: number
  readonly actual?: number
}

/** Options of the engine. */
export interface EngineOptions {
  readonly blockSize: number
  /** Blocks kept in the read cache (default 0: off). */
  readonly cacheBlocks?: number
  /** Called for every checksum failure found on read or scrub. */
  readonly onChecksumFailure?: (failure: ChecksumFailure) => void
  /** Metrics window in seconds. */
  readonly metricsWindowSeconds?: number
}

/**
 * One operation's claim on some blocks. Most claims are never waited for, so the promise that a
 * later operation waits on is made only when one asks.
 */
class BlockClaim {
  #done = false
  #promise: Promise<void> | undefined
  #resolve: (() => void) | undefined

  /** Resolves when the claim is released. */
  released (): Promise<void> {
    if (this.#done) return Promise.resolve()
    this.#promise ??= new Promise<void>((resolve) => { this.#resolve = resolve })
    return this.#promise
  }

  release (): void {
    this.#done = true
    this.#resolve?.()
  }
}

/** Engine-side state of one volume. */
export class VolumeBlocks {
  readonly storageId: number
  sizeBytes: number
  /** Which stored version every view of each block reads (copy-on-write generations). */
  readonly map: BlockMap
  /** Next write generation; monotonic for the volume's lifetime. */
  nextGen = 1
  /** Per-block ordering: the claim of the last operation on each block. */
  readonly locks = new Map<number, BlockClaim>()
  /** Writes that hold generations but are not yet published (a snapshot waits for these). */
  readonly tickets = new Set<BlockClaim>()
  /** The volume's counters (a migration hands them on to its new storage). */
  metrics: MetricsRecorder
  #inflight = 0
  #idleWaiters: Array<() => void> = []
  /** While set, new operations wait for it (a revert or a snapshot deletion in progress). */
  gate: Promise<void> | undefined
  /** Set when the volume is going away: new I/O is refused. */
  closing = false
  /** Seals this volume's blocks when it is encrypted. */
  cipher: VolumeCipher | undefined
  /** Set on the primary of a replicated volume: sees every change in order (see replicator.ts). */
  replicator: VolumeReplicator | undefined
  /**
   * Set when a live migration switched the volume over to another storage: I/O that still names
   * this one (it waited at the gate, or resolved the volume before the switch) goes there, with
   * snapshot generations translated through `gens`.
   */
  movedTo: { readonly volume: VolumeBlocks, readonly gens: ReadonlyMap<number, number> } | undefined

  constructor (storageId: number, sizeBytes: number, metrics: MetricsRecorder) {
    this.storageId = storageId
    this.sizeBytes = sizeBytes
    this.metrics = metrics
    this.map = new BlockMap(storageId)
  }

  /** Operations in flight (reads and writes). */
  get inflight (): number { return this.#inflight }

  /** Operations started so far (the volume's own I/O: a background copy can tell it is busy). */
  entered = 0

  enter (): void { this.#inflight++; this.entered++ }
  leave (): void {
    if (--this.#inflight === 0 && this.#idleWaiters.length > 0) {
      const waiters = this.#idleWaiters
      this.#idleWaiters = []
      for (const wake of waiters) wake()
    }
  }

  /** Resolves when no operation is in flight on this volume. */
  async idle (): Promise<void> {
    if (this.#inflight === 0) return
    await new Promise<void>((resolve) => this.#idleWaiters.push(resolve))
  }

  /** Takes a ticket for a write that just took its generations; call `release` once published. */
  ticket (): BlockClaim {
    const ticket = new BlockClaim()
    this.tickets.add(ticket)
    return ticket
  }

  /** Resolves when every write holding generations right now is published. */
  async drainTickets (): Promise<void> {
    const waits = [...this.tickets].map(async (ticket) => await ticket.released())
    await Promise.all(waits)
  }

  /**
   * Stops new operations until the returned function is called, and resolves once those already
   * in flight are done.
   */
  async closeGate (): Promise<() => void> {
    while (this.gate !== undefined) await this.gate
    let open!: () => void
    this.gate = new Promise<void>((resolve) => { open = resolve })
    await this.idle()
    return () => { this.gate = undefined; open() }
  }
}

/** Where a multi-block read wants whole blocks' plaintext: block i at out[i * blockSize - offset]. */
interface ReadTarget { readonly out: Uint8Array, readonly offset: number }

/** Where a snapshot view reads: its generation and the volume size it had. */
export interface View {
  readonly gen: number
  readonly sizeBytes: number
}

/** A volume as recovery needs it: its snapshots' generations and, for a clone, its source. */
export interface RecoverableVolume {
  readonly storageId: number
  readonly sizeBytes: number
  readonly snapshotGens?: readonly number[]
  readonly parent?: { readonly storageId: number, readonly gen: number, readonly sizeBytes: number }
}

/** Longest a scrub runs before it lets the event loop turn. */
const SCRUB_SLICE_MS = 5

/** A value was sealed with a data key that has since been dropped: fetch the block again. */
class Resealed extends Error {}

/** `data` zero-padded to `size` bytes: itself when it has that size already, else a padded copy. */
function padTo (data: Uint8Array, size: number): Uint8Array {
  if (data.byteLength === size) return data
  const out = new Uint8Array(size)
  out.set(data)
  return out
}

/**
 * Every value the engine reads from the store is checked against its block header's checksum (over
 * the payload and the address) before use (#verified, decodeBlock): the store need not check it too.
 */
const CHECKED = { payloadChecked: true } as const

/** Blocks copied per batch by a revert or a flatten. */
const COPY_BATCH_BLOCKS = 64
/** Longest pause of a background copy between two batches while the volume is busy. */
const COPY_YIELD_MAX_MS = 50

/** The I/O engine shared by all volumes of an instance. */
export class BlockEngine {
  readonly store: BlockStore
  readonly journal: WriteJournal
  readonly blockSize: number
  readonly #cache: BlockCache
  readonly #options: EngineOptions
  readonly #volumes = new Map<number, VolumeBlocks>()
  readonly #zeroBlock: Uint8Array
  /** Replication plugs in here (see ReplicationHook); absent on a single node. */
  replication: ReplicationHook | undefined

  constructor (store: BlockStore, options: EngineOptions) {
    this.store = store
    this.journal = new WriteJournal(store)
    this.blockSize = options.blockSize
    this.#options = options
    this.#cache = new BlockCache(options.cacheBlocks ?? 0)
    this.#zeroBlock = new Uint8Array(options.blockSize)
  }

  /**
   * Rebuilds every volume's block map from the store after open: keeps, per block, the newest
   * version and the newest below each snapshot; deletes versions no view reads (superseded versions
   * left by a crash, versions of deleted snapshots) and blocks of volumes that no longer exist (a
   * crash during deleteVolume). Returns what was cleaned.
   */
  async recover (volumes: readonly RecoverableVolume[]): Promise<{ staleVersions: number, orphanVolumes: number[] }> {
    for (const { storageId, sizeBytes, snapshotGens } of volumes) {
      const volume = this.attach(storageId, sizeBytes)
      for (const gen of [...(snapshotGens ?? [])].sort((a, b) => a - b)) {
        volume.map.addSnapshot(gen)
        if (gen > volume.nextGen) volume.nextGen = gen
      }
    }
    for (const { storageId, parent } of volumes) {
      if (parent === undefined) continue
      const source = this.#volumes.get(parent.storageId)
      if (source === undefined) throw new GalleonError('CORRUPTION', `clone with storage id ${storageId} names source ${parent.storageId}, which does not exist; the metadata is damaged`)
      this.linkClone(this.#volumes.get(storageId) as VolumeBlocks, source, parent.gen, parent.sizeBytes)
    }
    const found = new Map<number, Map<number, number | number[]>>()
    const orphans = new Set<number>()
    for await (const address of this.store.addresses()) {
      const volume = this.#volumes.get(address.volume)
      if (volume === undefined) { orphans.add(address.volume); continue }
      let blocks = found.get(address.volume)
      if (blocks === undefined) found.set(address.volume, blocks = new Map())
      const version = versionOf(address.gen)
      const seen = blocks.get(address.index)
      if (seen === undefined) blocks.set(address.index, version)
      else if (typeof seen === 'number') blocks.set(address.index, [seen, version])
      else seen.push(version)
      if (genOf(version) >= volume.nextGen) volume.nextGen = genOf(version) + 1
    }
    const garbage: BlockOp[] = []
    for (const [storageId, blocks] of found) {
      const volume = this.#volumes.get(storageId) as VolumeBlocks
      for (const [index, seen] of blocks) {
        for (const version of volume.map.load(index, typeof seen === 'number' ? [seen] : seen)) {
          garbage.push({ type: 'del', address: new Address(storageId, index, storeGen(version)) })
        }
      }
    }
    for (const volume of orphans) await this.store.deleteVolume(volume)
    if (garbage.length > 0) await this.store.batch(garbage, { sync: true })
    return { staleVersions: garbage.length, orphanVolumes: [...orphans] }
  }

  /** Registers a volume with the engine (after create or at open). */
  attach (storageId: number, sizeBytes: number): VolumeBlocks {
    const existing = this.#volumes.get(storageId)
    if (existing !== undefined) return existing
    const volume = new VolumeBlocks(storageId, sizeBytes, new MetricsRecorder({ windowSeconds: this.#options.metricsWindowSeconds }))
    this.#volumes.set(storageId, volume)
    return volume
  }

  /** Forgets a volume that was attached but never used (its creation failed). */
  forget (storageId: number): void {
    this.#volumes.delete(storageId)
  }

  /** Makes `clone` read, where it has no version of its own, what `source` read at `gen` (O(1)). */
  linkClone (clone: VolumeBlocks, source: VolumeBlocks, gen: number, sourceSizeBytes: number): void {
    clone.map.parent = { map: source.map, gen, blocks: sourceSizeBytes / this.blockSize }
  }

  /** The engine state of a volume, if attached. */
  volume (storageId: number): VolumeBlocks | undefined {
    return this.#volumes.get(storageId)
  }

  /** Waits for the volume's in-flight I/O, then removes all its blocks from the store. */
  async destroy (volume: VolumeBlocks): Promise<void> {
    volume.closing = true
    await volume.idle()
    await this.journal.flush(false)
    await this.store.deleteVolume(volume.storageId)
    this.#volumes.delete(volume.storageId)
  }

  /**
   * Reads one whole block (of the live view, or of the snapshot `view`): zeros if never written.
   * The result is the caller's to keep.
   */
  async readBlock (volume: VolumeBlocks, index: number, view?: View): Promise<Uint8Array> {
    this.#checkIndex(volume, index, view)
    if (volume.gate !== undefined || volume.movedTo !== undefined) [volume, view] = await this.#settle(volume, view)
    volume.enter()
    const startedAt = volume.metrics.begin()
    let ok = false
    try {
      const payload = await this.#readPayload(volume, index, true, false, view?.gen ?? LIVE)
      ok = true
      // Resolved without a turn of the event loop for a while (see LoopStreak): the caller waits for one.
      if (this.#streak.tooLong(performance.now())) await loopTurn()
      // The zero block and (with the cache on) every payload are shared; one fresh from the store is not.
      return payload === this.#zeroBlock || this.#cache.enabled ? copyBytes(payload) : payload
    } finally {
      volume.metrics.end('read', this.blockSize, startedAt, ok)
      volume.leave()
    }
  }

  /**
   * Writes one block. `data` shorter than the block size is zero-padded (the block's remaining bytes
   * become zeros); longer is refused.
   */
  async writeBlock (volume: VolumeBlocks, index: number, data: Uint8Array, concern: WriteConcern): Promise<void> {
    this.#checkIndex(volume, index)
    if (data.byteLength > this.blockSize) {
      throw new GalleonError('INVALID_ARGUMENT', `block data is ${data.byteLength} bytes but the block size is ${this.blockSize}; use write() for byte ranges that span blocks`)
    }
    if (volume.gate !== undefined || volume.movedTo !== undefined) {
      data = copyBytes(data)
      volume = (await this.#settle(volume))[0]
    }
    volume.enter()
    const startedAt = volume.metrics.begin()
    let ok = false
    // #lock for one block, inlined: no closure and no result object per write. The claim is also
    // the write's ticket once it holds a generation (both end at the same moment).
    const claim = new BlockClaim()
    const previous = volume.locks.get(index)
    volume.locks.set(index, claim)
    let ticketed = false
    try {
      // The caller may reuse its buffer once we return a promise: encode before any await, or copy.
      if (previous !== undefined) {
        data = copyBytes(data)
        await previous.released()
      }
      if (volume.cipher !== undefined && !volume.cipher.ready(1)) {
        data = copyBytes(data)
        await volume.cipher.reserve(1)
      }
      const gen = volume.nextGen++
      volume.tickets.add(claim)
      ticketed = true
      // record() copies what it keeps: `data` may be the caller's buffer.
      const seq = volume.replicator?.record({ type: 'write', offset: index * this.blockSize, data: padTo(data, this.blockSize) })
      const address: BlockAddress = new Address(volume.storageId, index, gen)
      await this.#commit(volume, [{ type: 'put', address, data: this.#encodeRecorded(volume, address, data, seq) }], concern, seq, () => { this.#publish(volume, index, gen) })
      ok = true
    } finally {
      if (ticketed) volume.tickets.delete(claim)
      if (volume.locks.get(index) === claim) volume.locks.delete(index)
      claim.release()
      volume.metrics.end('write', data.byteLength, startedAt, ok)
      volume.leave()
    }

    // Resolved without a turn of the event loop for a while (see LoopStreak): the caller waits for one.
    if (this.#streak.tooLong(performance.now())) await loopTurn()
  }

  /** Reads a byte range (of the live view, or of the snapshot `view`), which may span blocks. */
  async read (volume: VolumeBlocks, offset: number, length: number, view?: View): Promise<Uint8Array> {
    this.#checkRange(volume, offset, length, view)
    const out = new Uint8Array(length)
    if (length === 0) return out
    if (volume.gate !== undefined || volume.movedTo !== undefined) [volume, view] = await this.#settle(volume, view)
    volume.enter()
    const startedAt = volume.metrics.begin()
    let ok = false
    try {
      const at = view?.gen ?? LIVE
      const first = Math.floor(offset / this.blockSize)
      const last = Math.floor((offset + length - 1) / this.blockSize)
      const place = (index: number, payload: Uint8Array): void => {
        const blockStart = index * this.blockSize
        const from = Math.max(offset, blockStart)
        const to = Math.min(offset + length, blockStart + this.blockSize)
        out.set(payload.subarray(from - blockStart, to - blockStart), from - offset)
      }
      if (first === last) {
        place(first, await this.#readPayload(volume, first, true, false, at))
      } else {
        // Whole blocks of an encrypted volume may be decrypted straight into the result.
        await this.#readMany(volume, first, last, at, place, false, { out, offset })
      }
      ok = true
      // Resolved without a turn of the event loop for a while (see LoopStreak): the caller waits for one.
      if (this.#streak.tooLong(performance.now())) await loopTurn()
      return out
    } finally {
      volume.metrics.end('read', length, startedAt, ok)
      volume.leave()
    }
  }

  /**
   * Writes a byte range atomically (one journal entry): whole blocks are replaced, partial blocks at
   * the edges are read, patched and rewritten under the block's lock.
   */
  async write (volume: VolumeBlocks, offset: number, data: Uint8Array, concern: WriteConcern): Promise<void> {
    this.#checkRange(volume, offset, data.byteLength)
    if (data.byteLength === 0) return
    const aligned = offset % this.blockSize === 0 && data.byteLength % this.blockSize === 0
    if (volume.gate !== undefined || volume.movedTo !== undefined) {
      data = copyBytes(data)
      volume = (await this.#settle(volume))[0]
    }
    volume.enter()
    const startedAt = volume.metrics.begin()
    let ok = false
    const first = Math.floor(offset / this.blockSize)
    const last = Math.floor((offset + data.byteLength - 1) / this.blockSize)
    const release = this.#lock(volume, first, last)
    let ticket: BlockClaim | undefined
    try {
      // The caller may reuse its buffer once we return a promise: copy if we must wait first.
      if (release.ready !== undefined || !aligned || (volume.cipher !== undefined && !volume.cipher.ready(last - first + 1))) data = copyBytes(data)
      if (release.ready !== undefined) await release.ready
      // Edges first: every await happens before the generations are taken, so the write's blocks
      // get consecutive generations and a snapshot sees all of it or none of it.
      const edges = new Map<number, Uint8Array>()
      for (const index of first === last ? [first] : [first, last]) {
        const blockStart = index * this.blockSize
        const from = Math.max(offset, blockStart)
        const to = Math.min(offset + data.byteLength, blockStart + this.blockSize)
        if (to - from < this.blockSize) {
          const merged = copyBytes(await this.#readPayload(volume, index, false, true, LIVE))
          merged.set(data.subarray(from - offset, to - offset), from - blockStart)
          edges.set(index, merged)
        }
      }
      if (volume.cipher !== undefined && !volume.cipher.ready(last - first + 1)) await volume.cipher.reserve(last - first + 1)
      let ops: BlockOp[] = []
      const firstGen = volume.nextGen
      ticket = volume.ticket()
      // Recorded as the generations are taken, so the replication order agrees with snapshot cuts.
      // record() copies what it keeps: `data` may be the caller's buffer.
      const seq = volume.replicator?.record({ type: 'write', offset, data })
      const batchFrom = volume.cipher === undefined ? undefined : batchMinBlocks(volume.cipher.cipher)
      if (batchFrom !== undefined && last - first + 1 >= batchFrom) {
        // A multi-block encrypted write: blocks are sealed in native batch calls, or on this thread
        // and on worker threads at once.
        const addresses: BlockAddress[] = []
        const payloads: Uint8Array[] = []
        for (let index = first; index <= last; index++) {
          const blockStart = index * this.blockSize
          addresses.push(new Address(volume.storageId, index, volume.nextGen++))
          payloads.push(edges.get(index) ?? data.subarray(blockStart - offset, blockStart - offset + this.blockSize))
        }
        let values: Uint8Array[]
        try {
          values = await this.#sealMany(volume, addresses, payloads)
        } catch (err) {
          if (seq !== undefined) volume.replicator?.failed(seq)
          throw err
        }
        ops = addresses.map((address, i) => ({ type: 'put', address, data: values[i] as Uint8Array }))
      } else {
        for (let index = first; index <= last; index++) {
          const blockStart = index * this.blockSize
          const payload = edges.get(index) ?? data.subarray(blockStart - offset, blockStart - offset + this.blockSize)
          const address: BlockAddress = new Address(volume.storageId, index, volume.nextGen++)
          ops.push({ type: 'put', address, data: this.#encodeRecorded(volume, address, payload, seq) })
        }
      }
      await this.#commit(volume, ops, concern, seq, () => { for (let index = first; index <= last; index++) this.#publish(volume, index, firstGen + index - first) })
      ok = true
    } finally {
      if (ticket !== undefined) this.#endTicket(volume, ticket)
      release.done()
      volume.metrics.end('write', data.byteLength, startedAt, ok)
      volume.leave()
    }

    // Resolved without a turn of the event loop for a while (see LoopStreak): the caller waits for one.
    if (this.#streak.tooLong(performance.now())) await loopTurn()
  }

  /**
   * Discards a byte range: whole blocks are unmapped (their space freed unless a snapshot keeps
   * them; they read as zeros), partial blocks at the edges are zero-filled.
   */
  async trim (volume: VolumeBlocks, offset: number, length: number, concern: WriteConcern): Promise<void> {
    this.#checkRange(volume, offset, length)
    if (length === 0) return
    if (volume.gate !== undefined || volume.movedTo !== undefined) volume = (await this.#settle(volume))[0]
    volume.enter()
    const first = Math.floor(offset / this.blockSize)
    const last = Math.floor((offset + length - 1) / this.blockSize)
    const release = this.#lock(volume, first, last)
    let ticket: BlockClaim | undefined
    try {
      if (release.ready !== undefined) await release.ready
      const edges = new Map<number, Uint8Array>()
      for (const index of first === last ? [first] : [first, last]) {
        const blockStart = index * this.blockSize
        const from = Math.max(offset, blockStart)
        const to = Math.min(offset + length, blockStart + this.blockSize)
        if (to - from < this.blockSize && volume.map.locate(index) !== undefined) {
          const merged = copyBytes(await this.#readPayload(volume, index, false, true, LIVE))
          merged.fill(0, from - blockStart, to - blockStart)
          edges.set(index, merged)
        }
      }
      if (volume.cipher !== undefined && !volume.cipher.ready(edges.size)) await volume.cipher.reserve(edges.size)
      ticket = volume.ticket()
      const seq = volume.replicator?.record({ type: 'trim', offset, length })
      const ops: BlockOp[] = []
      const apply: Array<() => void> = []
      for (let index = first; index <= last; index++) {
        const blockStart = index * this.blockSize
        const from = Math.max(offset, blockStart)
        const to = Math.min(offset + length, blockStart + this.blockSize)
        if (to - from === this.blockSize) {
          this.#planUnmap(volume, index, ops, apply)
        } else {
          const merged = edges.get(index)
          if (merged === undefined) continue
          const gen = volume.nextGen++
          const address: BlockAddress = new Address(volume.storageId, index, gen)
          ops.push({ type: 'put', address, data: this.#encodeRecorded(volume, address, merged, seq) })
          apply.push(() => this.#publish(volume, index, gen))
        }
      }
      if (ops.length === 0) {
        if (seq !== undefined) await (volume.replicator as VolumeReplicator).committed(seq, concern)
        return
      }
      await this.#commit(volume, ops, concern, seq, () => { for (const step of apply) step() })
    } finally {
      if (ticket !== undefined) this.#endTicket(volume, ticket)
      release.done()
      volume.leave()
    }

    // Resolved without a turn of the event loop for a while (see LoopStreak): the caller waits for one.
    if (this.#streak.tooLong(performance.now())) await loopTurn()
  }

  /** Makes every write acknowledged so far durable (one shared sync). */
  async flush (): Promise<void> {
    await this.journal.flush(true)
  }

  // ---------------------------------------------------------------- snapshots and clones

  /**
   * Takes a snapshot: O(1) in the volume's size. Returns its generation once every write that
   * started before it is published and the store is synced (the snapshot's contents are durable).
   */
  async snapshot (volume: VolumeBlocks, onCut?: () => void): Promise<number> {
    if (volume.closing) throw new GalleonError('VOLUME_NOT_FOUND', 'the volume is being deleted; no snapshot was taken')
    const gen = volume.nextGen
    // At the cut, synchronously: replication orders the snapshot between the same writes (a
    // replicator that refuses the change leaves nothing behind).
    onCut?.()
    volume.map.addSnapshot(gen)
    try {
      await volume.drainTickets()
      await this.journal.flush(true)
    } catch (err) {
      // Trims in flight may have planned around this snapshot: let them finish before it goes.
      const open = await volume.closeGate()
      try {
        this.#discard(volume, volume.map.dropSnapshot(gen))
      } finally {
        open()
      }
      throw err
    }
    return gen
  }

  /** Forgets the snapshot at `gen` and deletes the versions only it kept. */
  async dropSnapshot (volume: VolumeBlocks, gen: number): Promise<void> {
    const open = await volume.closeGate()
    try {
      this.#discard(volume, volume.map.dropSnapshot(gen))
      await this.journal.flush(false)
    } finally {
      open()
    }
  }

  /** Blocks that differ between the snapshot at `fromGen` and the view at `toGen` (LIVE: now), ascending. */
  changedBlocks (volume: VolumeBlocks, fromGen: number, toGen: number = LIVE): number[] {
    return volume.map.changedBetween(fromGen, toGen)
  }

  /** Blocks the view at `at` reads data for (own or through a clone's source), ascending. */
  allocatedAt (volume: VolumeBlocks, at: number = LIVE): number[] {
    return volume.map.allocatedAt(at)
  }

  /**
   * Runs of blocks first..last of the view at `at` that hold data (own or a clone source's) or do
   * not (they read as zeros), in order: [first block, count, allocated]. Work is proportional to
   * the range.
   */
  allocationRuns (volume: VolumeBlocks, first: number, last: number, at: number = LIVE): Array<[number, number, boolean]> {
    const runs: Array<[number, number, boolean]> = []
    for (let index = first; index <= last; index++) {
      const allocated = volume.map.locate(index, at) !== undefined
      const run = runs[runs.length - 1]
      if (run !== undefined && run[2] === allocated) run[1]++
      else runs.push([index, 1, allocated])
    }
    return runs
  }

  /**
   * Reverts the live view to the snapshot at `view.gen`: every block changed since then gets a new
   * version with the snapshot's data (or is unmapped), so later snapshots stay intact. Work is
   * proportional to the blocks changed since the snapshot. New operations wait until it is done.
   * Idempotent: after a crash, running it again finishes the job.
   */
  async revert (volume: VolumeBlocks, view: View, onClosed?: (changed: readonly number[]) => void): Promise<number> {
    const open = await volume.closeGate()
    try {
      const changed = volume.map.changedBetween(view.gen, LIVE)
      // With no write in flight: a replicated volume's primary records the revert here, between
      // the writes before it and those after.
      onClosed?.(changed)
      await this.#copyInto(volume, changed, (index) => index < view.sizeBytes / this.blockSize ? volume.map.locate(index, view.gen) : undefined, true)
      await this.journal.flush(true)
      return changed.length
    } finally {
      open()
    }
  }

  /**
   * Gives a clone its own copy of every block it still reads from its source, then cuts the link.
   * Copies go below the clone's own versions (gen 0), so the clone's snapshots read them too.
   */
  async flatten (clone: VolumeBlocks): Promise<number> {
    const parent = clone.map.parent
    if (parent === undefined) return 0
    const open = await clone.closeGate()
    try {
      const needed = parent.map.allocatedAt(parent.gen).filter((index) => index < parent.blocks && clone.map.needsBaseCopy(index))
      await this.#copyInto(clone, needed, (index) => parent.map.locate(index, parent.gen), false)
      await this.journal.flush(true)
      clone.map.parent = undefined
      return needed.length
    } finally {
      open()
    }
  }

  /**
   * Live migration: writes into `target`, as new versions, the blocks `indices` of `source` as the
   * source's view at `at` reads them (a block the view reads as zeros is unmapped in the target, so
   * trims move too). Reads go around the source's gate: the caller keeps the view alive (a snapshot
   * generation, or LIVE while the source's gate is closed). Blocks are sealed with the target's
   * key when it has one. Calls `progress` after every batch; a throw from it stops the copy.
   */
  async copyBlocks (target: VolumeBlocks, source: VolumeBlocks, indices: readonly number[], at: number, progress?: (copied: number) => void): Promise<void> {
    const batch = COPY_BATCH_BLOCKS * 4
    for (let from = 0; from < indices.length; from += batch) {
      const chunk = indices.slice(from, from + batch)
      const startedAt = performance.now()
      const entered = source.entered
      await this.#copyInto(target, chunk, (index) => source.map.locate(index, at), true)
      progress?.(chunk.length)
      if (source.gate !== undefined) continue
      // A background copy yields to the volume's own I/O: when that ran during the batch, the
      // copy pauses as long as the batch took (the volume gets at least half of the time, the
      // copy goes on at full speed on an idle volume); otherwise it only lets the event loop turn.
      if (source.entered !== entered) await new Promise((resolve) => setTimeout(resolve, Math.min(COPY_YIELD_MAX_MS, performance.now() - startedAt)))
      else await new Promise((resolve) => setImmediate(resolve))
    }
  }

  /**
   * Re-seals with the volume's current key every data version it stores (live, held by snapshots,
   * and a clone's own copies) that another key sealed: in place, same address, under each block's
   * claim, while the volume stays online. Starts at block `from`; after each batch, once the batch
   * is durable, calls `progress(next)` with the first block index not yet done (resume there after
   * a crash). Versions already under the current key are skipped, so running it again is harmless.
   */
  async reseal (volume: VolumeBlocks, from: number, progress: (next: number, resealed: number) => Promise<void>): Promise<number> {
    const cipher = volume.cipher
    if (cipher === undefined) return 0
    if (cipher.unavailable !== undefined) throw cipher.unavailable
    // Writes, trims and reverts that sealed with an older key before it was replaced may not be
    // published yet: wait for them, so the list below holds every version an older key sealed.
    if (volume.gate !== undefined) await this.#waitGate(volume)
    await volume.drainTickets()
    const byIndex = new Map<number, number[]>()
    for (const [index, gen] of volume.map.storedData()) {
      if (index < from) continue
      const list = byIndex.get(index)
      if (list === undefined) byIndex.set(index, [gen])
      else list.push(gen)
    }
    const indices = [...byIndex.keys()].sort((a, b) => a - b)
    let resealed = 0
    for (let at = 0; at < indices.length; at += COPY_BATCH_BLOCKS) {
      const batch = indices.slice(at, at + COPY_BATCH_BLOCKS)
      if (volume.gate !== undefined) await this.#waitGate(volume)
      if (volume.closing) throw new GalleonError('VOLUME_NOT_FOUND', 'the volume is being deleted; its key rotation stopped')
      volume.enter()
      const claims = batch.map((index) => this.#lock(volume, index, index))
      try {
        await Promise.all(claims.map(async (claim) => await claim.ready))
        const work: Array<{ address: BlockAddress, payload: Uint8Array }> = []
        for (const index of batch) {
          for (const gen of byIndex.get(index) as number[]) {
            // Gone since the list was made (superseded, trimmed, its snapshot deleted): nothing to do.
            if (!volume.map.versions(index).includes(gen)) continue
            const address: BlockAddress = new Address(volume.storageId, index, gen)
            const value = await this.store.get(address, CHECKED)
            if (value === undefined) continue
            const decoded = decodeBlock(address, value)
            if (decoded.ok && (decoded.flags & BLOCK_FLAG_ENCRYPTED) !== 0 && cipherVersion(decoded.payload) === cipher.current) continue
            work.push({ address, payload: copyBytes(this.#verified(volume, address, value)) })
          }
        }
        if (work.length > 0) {
          if (!cipher.ready(work.length)) await cipher.reserve(work.length)
          const ops: BlockOp[] = work.map(({ address, payload }) => ({ type: 'put', address, data: this.#encode(volume, address, payload) }))
          await this.#commit(volume, ops, WriteConcern.WriteAcknowledged)
          resealed += ops.length
        }
      } finally {
        for (const claim of claims) claim.done()
        volume.leave()
      }
      await this.journal.flush(true)
      await progress((batch[batch.length - 1] as number) + 1, resealed)
    }
    return resealed
  }

  /**
   * Writes, for each index, the data `source(index)` locates (or unmaps the block when it locates
   * nothing): as new versions (`asNew`, a revert) or as gen-0 base versions (a flatten).
   */
  async #copyInto (volume: VolumeBlocks, indices: readonly number[], source: (index: number) => Located | undefined, asNew: boolean): Promise<void> {
    for (let at = 0; at < indices.length; at += COPY_BATCH_BLOCKS) {
      const chunk = indices.slice(at, at + COPY_BATCH_BLOCKS)
      const payloads = await Promise.all(chunk.map(async (index) => {
        const found = source(index)
        return found === undefined ? undefined : await this.#readLocated(volume, index, found)
      }))
      if (volume.cipher !== undefined && !volume.cipher.ready(chunk.length)) await volume.cipher.reserve(chunk.length)
      const ops: BlockOp[] = []
      const apply: Array<() => void> = []
      for (let i = 0; i < chunk.length; i++) {
        const index = chunk[i] as number
        const payload = payloads[i]
        if (payload === undefined) {
          if (asNew) this.#planUnmap(volume, index, ops, apply)
          continue
        }
        const gen = asNew ? volume.nextGen++ : 0
        const address: BlockAddress = new Address(volume.storageId, index, gen)
        ops.push({ type: 'put', address, data: this.#encode(volume, address, payload) })
        apply.push(asNew ? () => this.#publish(volume, index, gen) : () => { this.#changes++; volume.map.insertBase(index) })
      }
      if (ops.length === 0) continue
      await this.#commit(volume, ops, WriteConcern.WriteAcknowledged)
      for (const step of apply) step()
    }
  }

  /** Plans the unmapping of a whole block: ops to store now, and the map update once stored. */
  #planUnmap (volume: VolumeBlocks, index: number, ops: BlockOp[], apply: Array<() => void>): void {
    const gen = volume.nextGen
    const plan = volume.map.planUnmap(index, gen)
    if (plan.remove === undefined && !plan.tombstone) return
    volume.nextGen++
    if (plan.remove !== undefined) {
      const address = new Address(volume.storageId, index, storeGen(plan.remove))
      ops.push({ type: 'del', address })
      if (this.#cache.size > 0) this.#cache.delete(addressKey(address))
    }
    if (plan.tombstone) {
      const address: BlockAddress = new Address(volume.storageId, index, storeGen(-gen))
      ops.push({ type: 'put', address, data: encodeBlock(address, new Uint8Array(0), 0, BLOCK_FLAG_TOMBSTONE) })
    }
    apply.push(() => { this.#changes++; volume.map.applyUnmap(index, gen, plan) })
  }

  /** Queues deletion of versions no view reads any more. */
  #discard (volume: VolumeBlocks, garbage: ReadonlyArray<[number, number]>): void {
    if (garbage.length === 0) return
    const ops: BlockOp[] = []
    for (const [index, version] of garbage) {
      const address = new Address(volume.storageId, index, storeGen(version))
      if (this.#cache.size > 0) this.#cache.delete(addressKey(address))
      ops.push({ type: 'del', address })
    }
    this.journal.defer(ops)
  }

  /**
   * Reads and verifies every data version the volume stores (the live view and what its snapshots
   * keep), bypassing the cache. Returns bad blocks; each failure is also reported through
   * `onChecksumFailure`.
   */
  async scrub (volume: VolumeBlocks): Promise<{ checked: number, bad: Array<{ index: number, gen: number, code: string, message: string }> }> {
    // Without its keys nothing can be checked: that is the answer, not a list of every block as bad.
    if (volume.cipher?.unavailable !== undefined) throw volume.cipher.unavailable
    const bad: Array<{ index: number, gen: number, code: string, message: string }> = []
    let checked = 0
    const versions = [...volume.map.storedData()].sort((a, b) => a[0] - b[0] || a[1] - b[1])
    let sliceStarted = performance.now()
    for (const [index, gen] of versions) {
      // A store that answers from its page cache resolves every read without a turn of the event
      // loop: let other work in every few milliseconds (a scrub of gigabytes held it for seconds).
      if (performance.now() - sliceStarted > SCRUB_SLICE_MS) {
        await new Promise((resolve) => setImmediate(resolve))
        sliceStarted = performance.now()
      }
      // Deleted meanwhile: its blocks are going, which is not damage.
      if (volume.closing) throw new GalleonError('VOLUME_NOT_FOUND', 'the volume was deleted while it was scrubbed')
      if (volume.gate !== undefined) await this.#waitGate(volume)
      if (!volume.map.versions(index).includes(gen)) continue
      checked++
      // Each read counts as in flight, like any read: what waits for the volume's I/O (a revert,
      // the end of a key rotation) waits for it.
      volume.enter()
      let failure: unknown
      try {
        await this.#readLocated(volume, index, { map: volume.map, gen }, false)
      } catch (err) {
        failure = err
      } finally {
        volume.leave()
      }
      if (failure !== undefined) {
        const err = failure
        if (volume.closing) throw new GalleonError('VOLUME_NOT_FOUND', 'the volume was deleted while it was scrubbed')
        if (err instanceof GalleonError && err.code === 'CORRUPTION') {
          // A trim or revert deletes a version before it updates the map, under the block's claim.
          const claim = volume.locks.get(index)
          if (claim !== undefined) await claim.released()
          if (volume.gate !== undefined) await this.#waitGate(volume)
          if (!volume.map.versions(index).includes(gen)) { checked--; continue }
          this.#fail(volume, { storageId: volume.storageId, index, gen, reason: 'block version missing from the store' })
        }
        const code = errorCode(err)
        bad.push({ index, gen, code, message: err instanceof Error ? err.message : String(err) })
      }
    }
    return { checked, bad }
  }

  /** Blocks the live view reads from the volume's own storage (thin provisioning: only these take space). */
  allocatedBlocks (volume: VolumeBlocks): number {
    return volume.map.liveBlocks
  }

  /** Data versions the volume stores only because snapshots keep them. */
  heldBlocks (volume: VolumeBlocks): number {
    return volume.map.heldBlocks
  }

  /** Applies outstanding deferred work and syncs. */
  async close (): Promise<void> {
    await this.journal.flush(true)
    this.#cache.clear()
  }

  /**
   * Appends to the journal, then (for replicated concerns) hands the entry to the replication hook
   * and resolves only when it has met the concern. Replicated writes are made durable locally first.
   * `applied` (publishing the new versions) runs once the local append succeeded, also when the
   * concern then fails: the change is stored here and in the replication stream, so it must be
   * what this node reads, now and after a restart (which finds it in the store either way).
   */
  #commit (volume: VolumeBlocks, ops: BlockOp[], concern: WriteConcern, seq?: number, applied?: () => void): Promise<unknown> {
    // Not async: every caller awaits it inside a try, where a throw and a rejection are the same,
    // and a WriteAcknowledged/WriteDurable write then waits on the journal's promise and the
    // publication chained to it, nothing more.
    if (volume.closing) {
      if (seq !== undefined) volume.replicator?.failed(seq)
      throw new GalleonError('VOLUME_NOT_FOUND', 'the volume is being deleted; the write was not applied')
    }
    const replicated = concern === WriteConcern.WriteReplicated || concern === WriteConcern.WriteDistributed
    const hook = this.replication
    if (replicated && hook === undefined && seq === undefined) {
      throw new GalleonError('WRITE_CONCERN_UNSATISFIED', `${concern} needs copies on other nodes, but this instance has no replication configured; use WriteDurable or run a cluster. Nothing was written`)
    }
    const durable = concern !== WriteConcern.WriteAcknowledged
    if (durable && !this.store.supports.durableSync) {
      if (seq !== undefined) volume.replicator?.failed(seq)
      throw new GalleonError('WRITE_CONCERN_UNSATISFIED', `${concern} promises the write survives a crash, but the ${this.store.name} block store keeps data only in process memory; use WriteAcknowledged, or open with storagePath for durable storage. Nothing was written`)
    }
    if (seq !== undefined) {
      // A replicated volume: its replicator ships the change and says when the concern is met.
      const replicator = volume.replicator as VolumeReplicator
      return this.journal.append(ops, durable).then(
        async () => { applied?.(); await replicator.committed(seq, concern) },
        (err: unknown) => { replicator.failed(seq); throw err })
    }
    if (!replicated) return applied === undefined ? this.journal.append(ops, durable) : this.journal.append(ops, durable).then(applied)
    return this.journal.append(ops, durable).then(async (lsn) => { applied?.(); await (hook as ReplicationHook).afterAppend({ lsn, ops, durable }, concern) })
  }

  /**
   * Reads blocks first..last of the view at `at` with one `getMany` (which the file store turns into
   * a few large reads) and hands each verified payload to `place`; blocks that read as zeros are
   * skipped. Blocks found in the cache are used, but a multi-block read does not fill the cache: a
   * scan would only evict the blocks that are read again and again.
   */
  async #readMany (volume: VolumeBlocks, first: number, last: number, at: number, place: (index: number, payload: Uint8Array) => void, locked = false, into?: ReadTarget): Promise<void> {
    const indices: number[] = []
    const addresses: BlockAddress[] = []
    const useCache = this.#cache.enabled && this.#cache.size > 0
    for (let index = first; index <= last; index++) {
      const found = volume.map.locate(index, at)
      if (found === undefined) continue
      const address: BlockAddress = new Address(found.map.storageId, index, found.gen)
      if (useCache) {
        const cached = this.#cache.get(addressKey(address))
        if (cached !== undefined) {
          volume.metrics.cacheHit()
          place(index, cached)
          continue
        }
      }
      if (this.#cache.enabled) volume.metrics.cacheMiss()
      indices.push(index)
      addresses.push(address)
    }
    if (addresses.length === 0) return
    let values: Array<Uint8Array | undefined> | undefined
    try {
      values = this.store.getMany !== undefined
        ? await this.store.getMany(addresses, CHECKED)
        : await Promise.all(addresses.map(async (address) => await this.store.get(address, CHECKED)))
    } catch (err) {
      // Damage somewhere in the range: read block by block, which finds and reports the bad one.
      if (!isDamage(err)) throw err
    }
    // Multi-block reads of encrypted blocks: opened in native batch calls, or on worker threads too.
    const opened = values !== undefined && addresses.length >= 2 && this.#anyCipher(volume)
      ? await this.#openMany(volume, addresses, values, indices, into)
      : undefined
    for (let i = 0; i < addresses.length; i++) {
      const index = indices[i] as number
      const value = values?.[i]
      const plain = opened?.[i]
      if (plain === true) continue // opened in place, into `into`
      if (plain !== undefined) {
        place(index, plain)
        continue
      }
      // Missing: a concurrent write superseded this version (or the store reported damage).
      if (value === undefined && values !== undefined && !locked) {
        // Read again under the blocks' locks: reading this block's newer version beside the older
        // ones of the others would return a write (or trim) half applied, and writes are atomic.
        // No write to the range publishes while the locks are held, so what is located then stays.
        const lock = this.#lock(volume, first, last)
        try {
          if (lock.ready !== undefined) await lock.ready
          // What this pass placed (or decrypted in place) is dropped: a block that is no longer
          // located (trimmed meanwhile) is skipped by the next pass and must read as zeros.
          const zeros = new Uint8Array(this.blockSize)
          for (let index = first; index <= last; index++) place(index, zeros)
          await this.#readMany(volume, first, last, at, place, true, into)
        } finally {
          lock.done()
        }
        return
      }
      // The single-block path retries with the current version and reports real damage.
      let payload: Uint8Array | undefined
      try {
        if (value !== undefined) payload = this.#verified(volume, addresses[i] as BlockAddress, value, true)
      } catch (err) {
        if (!(err instanceof Resealed)) throw err
      }
      place(index, payload ?? await this.#readPayload(volume, index, false, false, at))
    }
  }

  readonly #streak = new LoopStreak()
  #changes = 0
  /**
   * Counts the changes made visible to the live views of all volumes (each block written, trimmed,
   * reverted or copied in): while it stays the same, a live view reads as it did. Read-ahead uses it
   * to know that what it read is still current.
   */
  get changes (): number { return this.#changes }

  /** Makes a committed version visible and queues the superseded one for deletion (unless a snapshot keeps it). */
  #publish (volume: VolumeBlocks, index: number, gen: number): void {
    this.#changes++
    const superseded = volume.map.publish(index, gen)
    if (superseded !== undefined) this.#discard(volume, [[index, superseded]])
  }

  #endTicket (volume: VolumeBlocks, ticket: BlockClaim): void {
    volume.tickets.delete(ticket)
    ticket.release()
  }

  async #waitGate (volume: VolumeBlocks): Promise<void> {
    while (volume.gate !== undefined) await volume.gate
  }

  /**
   * Waits out a closed gate, then follows the volume to where a live migration moved it (the
   * snapshot view translated to the destination's generation). Returns where the I/O goes.
   */
  async #settle (volume: VolumeBlocks, view?: View): Promise<[VolumeBlocks, View | undefined]> {
    await this.#waitGate(volume)
    while (volume.movedTo !== undefined) {
      const { volume: next, gens } = volume.movedTo
      if (view !== undefined) {
        const gen = gens.get(view.gen)
        if (gen === undefined) throw new GalleonError('SNAPSHOT_NOT_FOUND', `the snapshot at generation ${view.gen} did not move with its volume (it was deleted); list the snapshots again`)
        view = { gen, sizeBytes: view.sizeBytes }
      }
      volume = next
      await this.#waitGate(volume)
    }
    return [volume, view]
  }

  /**
   * Reads a block of the view at `at`. `holdsClaim`: the caller has claimed the block (write/trim
   * edges), so it must not wait for claims.
   */
  async #readPayload (volume: VolumeBlocks, index: number, useCache: boolean, holdsClaim: boolean, at: number): Promise<Uint8Array> {
    for (let attempt = 0; ; attempt++) {
      const found = volume.map.locate(index, at)
      if (found === undefined) return this.#zeroBlock
      const address: BlockAddress = new Address(found.map.storageId, index, found.gen)
      const key = useCache && this.#cache.enabled ? addressKey(address) : undefined
      if (key !== undefined) {
        const cached = this.#cache.get(key)
        if (cached !== undefined) { volume.metrics.cacheHit(); return cached }
        volume.metrics.cacheMiss()
      }
      let value: Uint8Array | undefined
      try {
        value = await this.store.get(address, CHECKED)
      } catch (err) {
        // A store that verifies its own records (file) reports damage before the engine sees bytes:
        // count and report it like the engine's own checksum failures.
        if (isDamage(err)) {
          this.#fail(volume, { storageId: address.volume, index, gen: found.gen, reason: `${this.store.name} store: ${err.message}` })
        }
        throw err
      }
      if (value === undefined) {
        // A concurrent write may have superseded and deleted this version: retry with the new one.
        const now = volume.map.locate(index, at)
        if ((now?.map !== found.map || now?.gen !== found.gen) && attempt < 8) continue
        // A trim deletes the version first and unmaps the block only once its batch resolved, under
        // the block's claim: a caller holding no claim waits for the last one and looks again.
        const claim = holdsClaim ? undefined : volume.locks.get(index)
        if (claim !== undefined && attempt < 8) {
          await claim.released()
          continue
        }
        this.#fail(volume, { storageId: address.volume, index, gen: found.gen, reason: 'block version missing from the store' })
        throw new GalleonError('CORRUPTION', `block ${index} (generation ${found.gen}) is mapped but missing from the ${this.store.name} block store; run scrub() and restore the volume from a snapshot or backup`)
      }
      let payload: Uint8Array
      try {
        payload = this.#verified(volume, address, value, attempt < 8)
      } catch (err) {
        if (err instanceof Resealed) continue
        throw err
      }
      if (key !== undefined) this.#cache.set(key, payload)
      return payload
    }
  }

  /** Reads and verifies one located version (no cache, no retry: the caller keeps it alive). */
  async #readLocated (volume: VolumeBlocks, index: number, found: Located, reportMissing = true, refetch = true): Promise<Uint8Array> {
    const address: BlockAddress = new Address(found.map.storageId, index, found.gen)
    let value: Uint8Array | undefined
    try {
      value = await this.store.get(address, CHECKED)
    } catch (err) {
      if (isDamage(err)) this.#fail(volume, { storageId: address.volume, index, gen: found.gen, reason: `${this.store.name} store: ${err.message}` })
      throw err
    }
    if (value === undefined) {
      if (reportMissing) this.#fail(volume, { storageId: address.volume, index, gen: found.gen, reason: 'block version missing from the store' })
      throw new GalleonError('CORRUPTION', `block ${index} (generation ${found.gen}) is mapped but missing from the ${this.store.name} block store; run scrub() and restore the volume from a snapshot or backup`)
    }
    try {
      return this.#verified(volume, address, value, refetch)
    } catch (err) {
      // Re-sealed under a new key since it was fetched (a rotation of the volume that wrote it): once more.
      if (err instanceof Resealed) return await this.#readLocated(volume, index, found, reportMissing, false)
      throw err
    }
  }

  /**
   * Checks a stored value against its address and returns its payload, or reports and throws.
   * `refetch`: a value sealed with a data key that a rotation has since dropped throws Resealed
   * (unreported) instead, for the caller to fetch the block again.
   */
  #verified (volume: VolumeBlocks, address: BlockAddress, value: Uint8Array, refetch = false): Uint8Array {
    const { index, gen } = address
    const decoded = decodeBlock(address, value)
    if (!decoded.ok) {
      this.#fail(volume, { storageId: address.volume, index, gen, reason: decoded.reason, expected: decoded.expected, actual: decoded.actual })
      throw new GalleonError('CHECKSUM_MISMATCH', `block ${index} failed verification (${decoded.reason}); the stored data is damaged and was not returned. Restore the volume from a snapshot or backup`)
    }
    let payload = decoded.payload
    // The volume that wrote the block (a clone reads its source's blocks with the source's key).
    const owner = address.volume === volume.storageId ? volume : this.#volumes.get(address.volume)
    if ((decoded.flags & BLOCK_FLAG_ENCRYPTED) !== 0 || owner?.cipher !== undefined) {
      try {
        if (owner?.cipher === undefined) throw new GalleonError('DECRYPTION_FAILED', `block ${index} (generation ${gen}) is encrypted but its volume has no data key; it does not belong here`)
        if ((decoded.flags & BLOCK_FLAG_ENCRYPTED) === 0) throw new GalleonError('DECRYPTION_FAILED', `block ${index} (generation ${gen}) of an encrypted volume is stored unencrypted; it was planted or altered and was not returned`)
        payload = owner.cipher.open(address, payload)
      } catch (err) {
        if (!(err instanceof GalleonError) || err.code !== 'DECRYPTION_FAILED') throw err
        // Fetched before a rotation re-sealed it under the new key and dropped the old one (a clone
        // reading its source's blocks, which the rotation does not wait for): not damage, yet.
        if (refetch && owner?.cipher?.sealedWithDroppedKey(payload) === true) throw new Resealed()
        // A volume whose keys could not be loaded says so on every read; its blocks are not damaged.
        if (err !== owner?.cipher?.unavailable) this.#fail(volume, { storageId: address.volume, index, gen, reason: err.message })
        throw err
      }
    }
    if (payload.byteLength !== this.blockSize) {
      this.#fail(volume, { storageId: address.volume, index, gen, reason: `payload is ${payload.byteLength} bytes, expected ${this.blockSize}` })
      throw new GalleonError('CORRUPTION', `block ${index} has a payload of ${payload.byteLength} bytes but the block size is ${this.blockSize}`)
    }
    // A store may hand out Buffers: callers always get plain Uint8Arrays.
    return plainView(payload)
  }

  /**
   * Stored values of many full blocks of an encrypted volume, sealed in native batch calls, or
   * partly here and partly on worker threads. Every payload is consumed (sealed or copied) before
   * this returns its promise.
   */
  #sealMany (volume: VolumeBlocks, addresses: readonly BlockAddress[], payloads: readonly Uint8Array[]): Promise<Uint8Array[]> {
    const cipher = volume.cipher as VolumeCipher
    const values: Uint8Array[] = []
    const jobs: SealJob[] = []
    let key: Uint8Array | undefined
    for (let i = 0; i < addresses.length; i++) {
      const value = allocBlock(SEALED_OVERHEAD + this.blockSize)
      const prepared = cipher.prepareSeal(addresses[i] as BlockAddress, payloads[i] as Uint8Array, value.subarray(BLOCK_HEADER_BYTES))
      key = prepared.key
      values.push(value)
      jobs.push(prepared.job)
    }
    const aead = cipher.cipher
    return sealJobs(aead, key as Uint8Array, jobs, (job) => aead.sealInto(key as Uint8Array, job.nonce, job.plain, job.aad, job.out)).then(() => {
      for (let i = 0; i < values.length; i++) finishBlock(addresses[i] as BlockAddress, values[i] as Uint8Array, BLOCK_FLAG_ENCRYPTED)
      return values
    })
  }

  /**
   * Opens many stored values of encrypted blocks: in native batch calls, or on this thread and on
   * worker threads at once (node:crypto, from PARALLEL_MIN_BLOCKS), else one by one.
   * Returns the payload per position, true where the native addon opened it in place (into
   * into.out, block `indices[i]` at its offset from into.offset), or undefined where the ordinary
   * path must decide (not encrypted, damaged, unknown key, failed authentication: #verified reports it).
   */
  async #openMany (volume: VolumeBlocks, addresses: readonly BlockAddress[], values: ReadonlyArray<Uint8Array | undefined>, indices: readonly number[], into?: ReadTarget): Promise<Array<Uint8Array | true | undefined>> {
    const out: Array<Uint8Array | true | undefined> = new Array(addresses.length)
    const groups = new Map<Uint8Array, { aead: VolumeCipher['cipher'], positions: number[], jobs: OpenJob[] }>()
    const runs = new Map<Uint8Array, NativeOpenRun>()
    const addon = nativeAead()
    const bs = this.blockSize
    // The run of the last block's key: the blocks of one read almost always share it.
    let lastCipher: VolumeCipher | undefined
    let lastVersion = -1
    let lastRun: NativeOpenRun | undefined
    for (let i = 0; i < addresses.length; i++) {
      const value = values[i]
      const address = addresses[i] as BlockAddress
      if (value === undefined) continue
      const owner = address.volume === volume.storageId ? volume : this.#volumes.get(address.volume)
      const cipher = owner?.cipher
      if (cipher === undefined || batchMinBlocks(cipher.cipher) === undefined) continue
      // The block's checksum is not computed here: the GCM tag authenticates payload and address,
      // and a block that fails is left to #verified, which checks the checksum first.
      if (!isSealedBlock(value)) continue
      if (addon !== undefined && cipher.cipher.name === 'native') {
        // The native addon: straight into packed arrays, no job (and no view) per block.
        if (value.byteLength !== BLOCK_HEADER_BYTES + SEALED_OVERHEAD + bs) continue
        const version = keyVersion(value, BLOCK_HEADER_BYTES)
        let run = cipher === lastCipher && version === lastVersion ? lastRun : undefined
        if (run === undefined) {
          const key = cipher.keyFor(version)
          if (key === undefined) continue
          run = runs.get(key)
          if (run === undefined) runs.set(key, run = new NativeOpenRun(addon, key, bs, addresses.length - i))
          lastCipher = cipher
          lastVersion = version
          lastRun = run
        }
        if (into === undefined) run.add(i, address, version, value, BLOCK_HEADER_BYTES)
        else run.add(i, address, version, value, BLOCK_HEADER_BYTES, into.out, (indices[i] as number) * bs - into.offset)
        continue
      }
      const prepared = cipher.prepareOpen(address, value.subarray(BLOCK_HEADER_BYTES))
      if (prepared === undefined || prepared.job.sealed.byteLength !== bs + 16) continue
      let group = groups.get(prepared.key)
      if (group === undefined) groups.set(prepared.key, group = { aead: cipher.cipher, positions: [], jobs: [] })
      group.positions.push(i)
      group.jobs.push(prepared.job)
    }
    for (const [key, group] of groups) {
      const opened = group.jobs.length >= (batchMinBlocks(group.aead) ?? Infinity)
        ? await cipherPool.open(key, group.jobs, (job) => openOrUndefined(group.aead, key, job))
        : group.jobs.map((job) => openOrUndefined(group.aead, key, job))
      group.positions.forEach((position, i) => { out[position] = opened[i] })
    }
    for (const run of runs.values()) {
      const opened = await run.finish()
      run.positions.forEach((position, i) => { out[position] = opened[i] })
    }
    return out
  }

  /** Whether the volume or the source it reads through (a clone's) is encrypted. */
  #anyCipher (volume: VolumeBlocks): boolean {
    if (volume.cipher !== undefined) return true
    for (let parent = volume.map.parent; parent !== undefined; parent = parent.map.parent) {
      if (this.#volumes.get(parent.map.storageId)?.cipher !== undefined) return true
    }
    return false
  }

  /** The stored value of one block version: encrypted with the volume's current key when it has one. */
  /**
   * `#encode` for a change already recorded for replication as `seq`: if it fails, the replicator
   * learns that the change was not applied here.
   */
  #encodeRecorded (volume: VolumeBlocks, address: BlockAddress, payload: Uint8Array, seq: number | undefined): Uint8Array {
    try {
      return this.#encode(volume, address, payload)
    } catch (err) {
      if (seq !== undefined) volume.replicator?.failed(seq)
      throw err
    }
  }

  #encode (volume: VolumeBlocks, address: BlockAddress, payload: Uint8Array): Uint8Array {
    const cipher = volume.cipher
    if (cipher === undefined) return encodeBlock(address, payload, this.blockSize)
    let plain = payload
    if (plain.byteLength !== this.blockSize) {
      plain = new Uint8Array(this.blockSize)
      plain.set(payload.byteLength > this.blockSize ? payload.subarray(0, this.blockSize) : payload)
    }
    return encodeBlockWith(address, SEALED_OVERHEAD + this.blockSize, BLOCK_FLAG_ENCRYPTED, (body) => cipher.sealInto(address, plain, body))
  }

  #fail (volume: VolumeBlocks, failure: ChecksumFailure): void {
    volume.metrics.checksumError()
    this.#options.onChecksumFailure?.(failure)
  }

  /**
   * Claims blocks first..last for one operation. Claims are registered synchronously, so waits
   * always point at earlier registrations and can never deadlock.
   */
  #lock (volume: VolumeBlocks, first: number, last: number): { ready: Promise<unknown> | undefined, done: () => void } {
    const mine = new BlockClaim()
    let waits: Array<Promise<void>> | undefined
    for (let index = first; index <= last; index++) {
      const previous = volume.locks.get(index)
      if (previous !== undefined) (waits ??= []).push(previous.released())
      volume.locks.set(index, mine)
    }
    // Undefined when uncontended, so the caller can proceed without yielding to the event loop.
    const ready = waits === undefined ? undefined : waits.length === 1 ? waits[0] as Promise<void> : Promise.all(waits)
    return {
      ready,
      done: () => {
        for (let index = first; index <= last; index++) {
          if (volume.locks.get(index) === mine) volume.locks.delete(index)
        }
        mine.release()
      }
    }
  }

  #checkIndex (volume: VolumeBlocks, index: number, view?: View): void {
    if (typeof index !== 'number' || !Number.isSafeInteger(index) || index < 0) {
      throw new GalleonError('INVALID_ARGUMENT', `block index must be a non-negative integer, got ${String(index)}`)
    }
    const blocks = (view?.sizeBytes ?? volume.sizeBytes) / this.blockSize
    if (index >= blocks) {
      if (view !== undefined) throw new GalleonError('OUT_OF_RANGE', `block index ${index} is beyond the end of the snapshot (${blocks} blocks of ${this.blockSize} bytes)`)
      throw new GalleonError('OUT_OF_RANGE', `block index ${index} is beyond the end of the volume (${blocks} blocks of ${this.blockSize} bytes); expand the volume first`)
    }
  }

  #checkRange (volume: VolumeBlocks, offset: number, length: number, view?: View): void {
    if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) {
      throw new GalleonError('INVALID_ARGUMENT', `offset must be a non-negative integer, got ${String(offset)}`)
    }
    if (typeof length !== 'number' || !Number.isSafeInteger(length) || length < 0) {
      throw new GalleonError('INVALID_ARGUMENT', `length must be a non-negative integer, got ${String(length)}`)
    }
    if (length > MAX_IO_BYTES) {
      throw new GalleonError('INVALID_ARGUMENT', `a single I/O may move at most ${MAX_IO_BYTES} bytes, got ${length}; split the request`)
    }
    const size = view?.sizeBytes ?? volume.sizeBytes
    if (offset + length > size) {
      if (view !== undefined) throw new GalleonError('OUT_OF_RANGE', `range ${offset}..${offset + length} goes past the end of the snapshot (${size} bytes)`)
      throw new GalleonError('OUT_OF_RANGE', `range ${offset}..${offset + length} goes past the end of the volume (${size} bytes); expand the volume first`)
    }
  }
}

/** Opens one block, or undefined when it fails authentication (the caller's ordinary path reports it). */
function openOrUndefined (aead: VolumeCipher['cipher'], key: Uint8Array, job: OpenJob): Uint8Array | undefined {
  try {
    return aead.open(key, job.nonce, job.sealed, job.aad)
  } catch {
    return undefined
  }
}

/** Key version of a sealed payload (its first 4 bytes, see volume-cipher.ts). */
function cipherVersion (sealed: Uint8Array): number {
  return sealed.byteLength < 4 ? -1 : new DataView(sealed.buffer, sealed.byteOffset, 4).getUint32(0)
}

/** Whether a store error reports damaged stored data (as opposed to an I/O or usage error). */
function isDamage (err: unknown): err is GalleonError {
  return err instanceof GalleonError && (err.code === 'CHECKSUM_MISMATCH' || err.code === 'CORRUPTION')
}

/** Largest byte range one read/write/trim call may cover. */
export const MAX_IO_BYTES = 256 * 1024 * 1024
