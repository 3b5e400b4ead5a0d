// The block I/O path: per-volume block maps (block index -> newest generation), per-block ordering,
// read-modify-write at byte-range edges, checksums on every read, and the journal below.

import { GalleonError, copyBytes, plainView } from '../errors.js'
import { addressKey } from '../abstract-block-store.js'
import type { BlockAddress, BlockOp, BlockStore } from '../drivers.js'
import { MetricsRecorder } from '../metrics/recorder.js'
import { BlockCache } from './block-cache.js'
import { decodeBlock, encodeBlock } from './codec.js'
import { WriteJournal, type ReplicationHook } from './journal.js'
import { WriteConcern } from '../types.js'

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
  /** Block index -> generation of its newest stored version. */
  readonly blocks = new Map<number, number>()
  /** Next write generation; monotonic for the volume's lifetime. */
  nextGen = 1
  /** Per-block ordering: the claim of the last operation on each block. */
  readonly locks = new Map<number, BlockClaim>()
  readonly metrics: MetricsRecorder
  #inflight = 0
  #idleWaiters: Array<() => void> = []
  /** Set when the volume is going away: new I/O is refused. */
  closing = false

  constructor (storageId: number, sizeBytes: number, metrics: MetricsRecorder) {
    this.storageId = storageId
    this.sizeBytes = sizeBytes
    this.metrics = metrics
  }

  enter (): void { this.#inflight++ }
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
}

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
   * Rebuilds every volume's block map from the store after open: keeps the newest generation of
   * each block, deletes superseded versions left by a crash and blocks of volumes that no longer
   * exist (a crash during deleteVolume). Returns what was cleaned.
   */
  async recover (volumes: ReadonlyArray<{ storageId: number, sizeBytes: number }>): Promise<{ staleVersions: number, orphanVolumes: number[] }> {
    for (const { storageId, sizeBytes } of volumes) this.attach(storageId, sizeBytes)
    const garbage: BlockOp[] = []
    const orphans = new Set<number>()
    for await (const address of this.store.addresses()) {
      const volume = this.#volumes.get(address.volume)
      if (volume === undefined) { orphans.add(address.volume); continue }
      const current = volume.blocks.get(address.index)
      if (current === undefined || address.gen > current) {
        volume.blocks.set(address.index, address.gen)
        if (current !== undefined) garbage.push({ type: 'del', address: { volume: address.volume, index: address.index, gen: current } })
      } else {
        garbage.push({ type: 'del', address })
      }
      if (address.gen >= volume.nextGen) volume.nextGen = address.gen + 1
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

  /** Reads one whole block: zeros if never written. The result is the caller's to keep. */
  async readBlock (volume: VolumeBlocks, index: number): Promise<Uint8Array> {
    this.#checkIndex(volume, index)
    volume.enter()
    const startedAt = volume.metrics.begin()
    let ok = false
    try {
      const payload = await this.#readPayload(volume, index, true)
      ok = true
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
    volume.enter()
    const startedAt = volume.metrics.begin()
    let ok = false
    const release = this.#lock(volume, index, index)
    try {
      // The caller may reuse its buffer once we return a promise: encode before any await, or copy.
      if (release.ready !== undefined) {
        data = copyBytes(data)
        await release.ready
      }
      const gen = volume.nextGen++
      const address: BlockAddress = { volume: volume.storageId, index, gen }
      await this.#commit(volume, [{ type: 'put', address, data: encodeBlock(address, data, this.blockSize) }], concern)
      this.#publish(volume, index, gen)
      ok = true
    } finally {
      release.done()
      volume.metrics.end('write', data.byteLength, startedAt, ok)
      volume.leave()
    }
  }

  /** Reads a byte range, which may span blocks. */
  async read (volume: VolumeBlocks, offset: number, length: number): Promise<Uint8Array> {
    this.#checkRange(volume, offset, length)
    const out = new Uint8Array(length)
    if (length === 0) return out
    volume.enter()
    const startedAt = volume.metrics.begin()
    let ok = false
    try {
      const first = Math.floor(offset / this.blockSize)
      const last = Math.floor((offset + length - 1) / this.blockSize)
      const place = (index: number, payload: Uint8Array): void => {
        const blockStart = index * this.blockSize
        const from = Math.max(offset, blockStart)
        const to = Math.min(offset + length, blockStart + this.blockSize)
        out.set(payload.subarray(from - blockStart, to - blockStart), from - offset)
      }
      if (first === last) {
        place(first, await this.#readPayload(volume, first, true))
      } else {
        await this.#readMany(volume, first, last, place)
      }
      ok = true
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
    volume.enter()
    const startedAt = volume.metrics.begin()
    let ok = false
    const first = Math.floor(offset / this.blockSize)
    const last = Math.floor((offset + data.byteLength - 1) / this.blockSize)
    const release = this.#lock(volume, first, last)
    try {
      const aligned = offset % this.blockSize === 0 && data.byteLength % this.blockSize === 0
      // The caller may reuse its buffer once we return a promise: copy if we must wait first.
      if (release.ready !== undefined || !aligned) data = copyBytes(data)
      if (release.ready !== undefined) await release.ready
      const ops: BlockOp[] = []
      const gens: number[] = []
      for (let index = first; index <= last; index++) {
        const blockStart = index * this.blockSize
        const from = Math.max(offset, blockStart)
        const to = Math.min(offset + data.byteLength, blockStart + this.blockSize)
        let payload = data.subarray(from - offset, to - offset)
        if (to - from < this.blockSize) {
          const merged = copyBytes(await this.#readPayload(volume, index, false, true))
          merged.set(payload, from - blockStart)
          payload = merged
        }
        const gen = volume.nextGen++
        const address: BlockAddress = { volume: volume.storageId, index, gen }
        ops.push({ type: 'put', address, data: encodeBlock(address, payload, this.blockSize) })
        gens.push(gen)
      }
      await this.#commit(volume, ops, concern)
      for (let i = 0; i < gens.length; i++) this.#publish(volume, first + i, gens[i] as number)
      ok = true
    } finally {
      release.done()
      volume.metrics.end('write', data.byteLength, startedAt, ok)
      volume.leave()
    }
  }

  /**
   * Discards a byte range: whole blocks are unmapped (their space freed, they read as zeros),
   * partial blocks at the edges are zero-filled.
   */
  async trim (volume: VolumeBlocks, offset: number, length: number, concern: WriteConcern): Promise<void> {
    this.#checkRange(volume, offset, length)
    if (length === 0) return
    volume.enter()
    const first = Math.floor(offset / this.blockSize)
    const last = Math.floor((offset + length - 1) / this.blockSize)
    const release = this.#lock(volume, first, last)
    try {
      if (release.ready !== undefined) await release.ready
      const ops: BlockOp[] = []
      const unmapped: number[] = []
      const rewritten: Array<[number, number]> = []
      for (let index = first; index <= last; index++) {
        const current = volume.blocks.get(index)
        if (current === undefined) continue
        const blockStart = index * this.blockSize
        const from = Math.max(offset, blockStart)
        const to = Math.min(offset + length, blockStart + this.blockSize)
        if (to - from === this.blockSize) {
          ops.push({ type: 'del', address: { volume: volume.storageId, index, gen: current } })
          unmapped.push(index)
        } else {
          const merged = copyBytes(await this.#readPayload(volume, index, false, true))
          merged.fill(0, from - blockStart, to - blockStart)
          const gen = volume.nextGen++
          const address: BlockAddress = { volume: volume.storageId, index, gen }
          ops.push({ type: 'put', address, data: encodeBlock(address, merged, this.blockSize) })
          rewritten.push([index, gen])
        }
      }
      if (ops.length === 0) return
      await this.#commit(volume, ops, concern)
      for (const index of unmapped) {
        const gen = volume.blocks.get(index)
        volume.blocks.delete(index)
        if (gen !== undefined) this.#cache.delete(addressKey({ volume: volume.storageId, index, gen }))
      }
      for (const [index, gen] of rewritten) this.#publish(volume, index, gen)
    } finally {
      release.done()
      volume.leave()
    }
  }

  /** Makes every write acknowledged so far durable (one shared sync). */
  async flush (): Promise<void> {
    await this.journal.flush(true)
  }

  /**
   * Reads and verifies every written block of a volume, bypassing the cache. Returns bad blocks;
   * each failure is also reported through `onChecksumFailure`.
   */
  async scrub (volume: VolumeBlocks): Promise<{ checked: number, bad: Array<{ index: number, code: string, message: string }> }> {
    const bad: Array<{ index: number, code: string, message: string }> = []
    let checked = 0
    const indices = [...volume.blocks.keys()].sort((a, b) => a - b)
    for (const index of indices) {
      if (!volume.blocks.has(index)) continue
      checked++
      try {
        await this.#readPayload(volume, index, false)
      } catch (err) {
        const code = err instanceof GalleonError ? err.code : 'IO_ERROR'
        bad.push({ index, code, message: err instanceof Error ? err.message : String(err) })
      }
    }
    return { checked, bad }
  }

  /** Written blocks of a volume (thin provisioning: only these take space). */
  allocatedBlocks (volume: VolumeBlocks): number {
    return volume.blocks.size
  }

  /** Applies outstanding deferred work and syncs. */
  async close (): Promise<void> {
    await this.journal.flush(true)
    this.#cache.clear()
  }

  /**
   * Appends to the journal, then (for replicated concerns) hands the entry to the replication hook
   * and resolves only when it has met the concern. Replicated writes are made durable locally first.
   */
  async #commit (volume: VolumeBlocks, ops: BlockOp[], concern: WriteConcern): Promise<void> {
    if (volume.closing) throw new GalleonError('VOLUME_NOT_FOUND', 'the volume is being deleted; the write was not applied')
    const replicated = concern === WriteConcern.WriteReplicated || concern === WriteConcern.WriteDistributed
    const hook = this.replication
    if (replicated && hook === undefined) {
      throw new GalleonError('WRITE_CONCERN_UNSATISFIED', `${concern} needs copies on other nodes, but this instance has no replication configured; use WriteDurable or run a cluster. Nothing was written`)
    }
    const durable = concern !== WriteConcern.WriteAcknowledged
    if (durable && !this.store.supports.durableSync) {
      throw new GalleonError('WRITE_CONCERN_UNSATISFIED', `${concern} promises the write survives a crash, but the ${this.store.name} block store keeps data only in process memory; use WriteAcknowledged, or open with storagePath for durable storage. Nothing was written`)
    }
    const lsn = await this.journal.append(ops, durable)
    if (replicated) await (hook as ReplicationHook).afterAppend({ lsn, ops, durable }, concern)
  }

  /**
   * Reads blocks first..last with one `getMany` (which the file store turns into a few large reads)
   * and hands each verified payload to `place`; unwritten blocks are skipped (they read as zeros).
   * Blocks found in the cache are used, but a multi-block read does not fill the cache: a scan
   * would only evict the blocks that are read again and again.
   */
  async #readMany (volume: VolumeBlocks, first: number, last: number, place: (index: number, payload: Uint8Array) => void): Promise<void> {
    const indices: number[] = []
    const addresses: BlockAddress[] = []
    const useCache = this.#cache.enabled && this.#cache.size > 0
    for (let index = first; index <= last; index++) {
      const gen = volume.blocks.get(index)
      if (gen === undefined) continue
      const address: BlockAddress = { volume: volume.storageId, index, gen }
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
        ? await this.store.getMany(addresses)
        : await Promise.all(addresses.map(async (address) => await this.store.get(address)))
    } catch (err) {
      // Damage somewhere in the range: read block by block, which finds and reports the bad one.
      if (!isDamage(err)) throw err
    }
    for (let i = 0; i < addresses.length; i++) {
      const index = indices[i] as number
      const value = values?.[i]
      // Missing: a concurrent write superseded this version (or the store reported damage); the
      // single-block path retries with the current version and reports real damage.
      place(index, value === undefined ? await this.#readPayload(volume, index, false) : this.#verified(volume, addresses[i] as BlockAddress, value))
    }
  }

  /** Makes a committed version visible and queues the superseded one for deletion. */
  #publish (volume: VolumeBlocks, index: number, gen: number): void {
    const previous = volume.blocks.get(index)
    volume.blocks.set(index, gen)
    if (previous !== undefined && previous < gen) {
      const address = { volume: volume.storageId, index, gen: previous }
      if (this.#cache.size > 0) this.#cache.delete(addressKey(address))
      this.journal.defer([{ type: 'del', address }])
    }
  }

  /** `holdsClaim`: the caller has claimed the block (write/trim edges), so it must not wait for claims. */
  async #readPayload (volume: VolumeBlocks, index: number, useCache: boolean, holdsClaim = false): Promise<Uint8Array> {
    for (let attempt = 0; ; attempt++) {
      const gen = volume.blocks.get(index)
      if (gen === undefined) return this.#zeroBlock
      const address: BlockAddress = { volume: volume.storageId, index, gen }
      const key = useCache && this.#cache.enabled ? addressKey(address) : undefined
      if (key !== undefined) {
        const cached = this.#cache.get(key)
        if (cached !== undefined) { volume.metrics.cacheHit(); return cached }
        volume.metrics.cacheMiss()
      }
      let value: Uint8Array | undefined
      try {
        value = await this.store.get(address)
      } catch (err) {
        // A store that verifies its own records (file) reports damage before the engine sees bytes:
        // count and report it like the engine's own checksum failures.
        if (isDamage(err)) {
          this.#fail(volume, { storageId: volume.storageId, index, gen, reason: `${this.store.name} store: ${err.message}` })
        }
        throw err
      }
      if (value === undefined) {
        // A concurrent write may have superseded and deleted this version: retry with the new one.
        if (volume.blocks.get(index) !== gen && attempt < 8) continue
        // A trim deletes the version first and unmaps the block only once its batch resolved, under
        // the block's claim: a caller holding no claim waits for the last one and looks again.
        const claim = holdsClaim ? undefined : volume.locks.get(index)
        if (claim !== undefined && attempt < 8) {
          await claim.released()
          continue
        }
        this.#fail(volume, { storageId: volume.storageId, index, gen, reason: 'block version missing from the store' })
        throw new GalleonError('CORRUPTION', `block ${index} (generation ${gen}) is mapped but missing from the ${this.store.name} block store; run scrub() and restore the volume from a snapshot or backup`)
      }
      const payload = this.#verified(volume, address, value)
      if (key !== undefined) this.#cache.set(key, payload)
      return payload
    }
  }

  /** Checks a stored value against its address and returns its payload, or reports and throws. */
  #verified (volume: VolumeBlocks, address: BlockAddress, value: Uint8Array): Uint8Array {
    const { index, gen } = address
    const decoded = decodeBlock(address, value)
    if (!decoded.ok) {
      this.#fail(volume, { storageId: volume.storageId, index, gen, reason: decoded.reason, expected: decoded.expected, actual: decoded.actual })
      throw new GalleonError('CHECKSUM_MISMATCH', `block ${index} failed verification (${decoded.reason}); the stored data is damaged and was not returned. Restore the volume from a snapshot or backup`)
    }
    if (decoded.payload.byteLength !== this.blockSize) {
      this.#fail(volume, { storageId: volume.storageId, index, gen, reason: `payload is ${decoded.payload.byteLength} bytes, expected ${this.blockSize}` })
      throw new GalleonError('CORRUPTION', `block ${index} has a payload of ${decoded.payload.byteLength} bytes but the block size is ${this.blockSize}`)
    }
    // A store may hand out Buffers: callers always get plain Uint8Arrays.
    return plainView(decoded.payload)
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

  #checkIndex (volume: VolumeBlocks, index: number): void {
    if (typeof index !== 'number' || !Number.isSafeInteger(index) || index < 0) {
      throw new GalleonError('INVALID_ARGUMENT', `block index must be a non-negative integer, got ${String(index)}`)
    }
    const blocks = volume.sizeBytes / this.blockSize
    if (index >= blocks) {
      throw new GalleonError('OUT_OF_RANGE', `block index ${index} is beyond the end of the volume (${blocks} blocks of ${this.blockSize} bytes); expand the volume first`)
    }
  }

  #checkRange (volume: VolumeBlocks, offset: number, length: number): void {
    if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) {
      throw new GalleonError('INVALID_ARGUMENT', `offset must be a non-negative integer, got ${String(offset)}`)
    }
    if (typeof length !== 'number' || !Number.isSafeInteger(length) || length < 0) {
      throw new GalleonError('INVALID_ARGUMENT', `length must be a non-negative integer, got ${String(length)}`)
    }
    if (length > MAX_IO_BYTES) {
      throw new GalleonError('INVALID_ARGUMENT', `a single I/O may move at most ${MAX_IO_BYTES} bytes, got ${length}; split the request`)
    }
    if (offset + length > volume.sizeBytes) {
      throw new GalleonError('OUT_OF_RANGE', `range ${offset}..${offset + length} goes past the end of the volume (${volume.sizeBytes} bytes); expand the volume first`)
    }
  }
}

/** Whether a store error reports damaged stored data (as opposed to an I/O or usage error). */
function isDamage (err: unknown): err is GalleonError {
  return err instanceof GalleonError && (err.code === 'CHECKSUM_MISMATCH' || err.code === 'CORRUPTION')
}

/** Largest byte range one read/write/trim call may cover. */
export const MAX_IO_BYTES = 256 * 1024 * 1024
