// The block I/O path's public class: reads, writes and trims of byte ranges (per-block ordering,
// read-modify-write at the edges) over copy-on-write block maps (see block-map.ts) and the journal;
// the read and trim paths, encryption, snapshots and clones, maintenance passes and recovery are beside it.

import { GalleonError, copyBytes } from '../errors.js'
import { Address, type BlockAddress, type BlockOp, type BlockStore } from '../drivers.js'
import { MetricsRecorder } from '../metrics/recorder.js'
import type { BlockCache } from './block-cache.js'
import { LIVE } from './block-map.js'
import { batchMinBlocks } from '../crypto/cipher-pool.js'
import type { ReplicationHook, WriteJournal } from './journal.js'
import { replicatorFor, type VolumeReplicator, type WriterId } from './replicator.js'
import { WriteConcern } from '../types.js'
import { LoopStreak, loopTurn } from '../loop-streak.js'
import * as allocation from './allocation-runs.js'
import { readMany, readPayload } from './block-reads.js'
import { encodeRecorded, sealMany } from './block-sealing.js'
import * as blockTrims from './block-trims.js'
import { EngineCore, type EngineOptions } from './engine-core.js'
import * as maintenance from './maintenance.js'
import * as recovery from './recovery.js'
import type { RecoverableVolume } from './recovery.js'
import * as snapshots from './snapshots.js'
import { checkIndex, checkRange } from './io-checks.js'
import { BlockClaim, VolumeBlocks, type View } from './volume-blocks.js'

export type { ChecksumFailure, EngineOptions } from './engine-core.js'
export type { RecoverableVolume } from './recovery.js'
export { VolumeBlocks, type View } from './volume-blocks.js'
export { MAX_IO_BYTES } from './io-checks.js'

/** `data` zero-padded to `size` bytes: itself when it has that size already, else a padded copy. */
function padTo (data: Uint8Array, size: number): Uint8Array {
  if (data.byteLength === size) return data
  const out = new Uint8Array(size)
  out.set(data)
  return out
}

/** The I/O engine shared by all volumes of an instance. */
export class BlockEngine {
  readonly store: BlockStore
  readonly journal: WriteJournal
  readonly blockSize: number
  /** The engine's state and shared steps, handed to the modules that hold the rest of the engine. */
  readonly #core: EngineCore
  readonly #cache: BlockCache
  readonly #options: EngineOptions
  readonly #volumes: Map<number, VolumeBlocks>
  readonly #zeroBlock: Uint8Array

  constructor (store: BlockStore, options: EngineOptions) {
    const core = new EngineCore(store, options)
    this.#core = core
    this.store = store
    this.journal = core.journal
    this.blockSize = options.blockSize
    this.#options = options
    this.#cache = core.cache
    this.#volumes = core.volumes
    this.#zeroBlock = core.zeroBlock
  }

  /** Replication plugs in here (see ReplicationHook); absent on a single node. */
  get replication (): ReplicationHook | undefined { return this.#core.replication }
  set replication (hook: ReplicationHook | undefined) { this.#core.replication = hook }

  /**
   * Rebuilds every volume's block map from the store after open: keeps, per block, the newest
   * version and the newest below each snapshot; deletes versions no view reads (superseded versions
   * left by a crash, versions of deleted snapshots) and blocks of volumes that no longer exist (a
   * crash during deleteVolume). Returns what was cleaned.
   */
  recover (volumes: readonly RecoverableVolume[]): Promise<{ staleVersions: number, orphanVolumes: number[] }> {
    return recovery.recover(this.#core, this, volumes)
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
    checkIndex(this.#core, volume, index, view)
    if (volume.gate !== undefined || volume.movedTo !== undefined) [volume, view] = await this.#core.settle(volume, view)
    volume.enter()
    const startedAt = volume.metrics.begin()
    let ok = false
    try {
      const payload = await readPayload(this.#core, volume, index, true, false, view?.gen ?? LIVE)
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
   * become zeros); longer is refused. `primary`: see replicatorFor. `background`: a copy applying
   * its primary's changes, not a client's write: left out of the volume's I/O metrics. `writer`:
   * the forwarded write this is (recorded with the change; see WriterId).
   */
  async writeBlock (volume: VolumeBlocks, index: number, data: Uint8Array, concern: WriteConcern, primary?: VolumeReplicator, background = false, writer?: WriterId): Promise<void> {
    checkIndex(this.#core, volume, index)
    if (data.byteLength > this.blockSize) {
      throw new GalleonError('INVALID_ARGUMENT', `block data is ${data.byteLength} bytes but the block size is ${this.blockSize}; use write() for byte ranges that span blocks`)
    }
    this.#core.assertStorable(volume, concern)
    let next: (() => void) | undefined
    if (volume.gate !== undefined || volume.movedTo !== undefined || volume.gateQueue !== undefined) {
      data = copyBytes(data)
      ;[volume, next] = await this.#core.settleInOrder(volume)
    }
    volume.enter()
    const startedAt = background ? 0 : volume.metrics.begin()
    let ok = false
    // EngineCore.lock for one block, inlined: no closure and no result object per write. The claim is also
    // the write's ticket once it holds a generation (both end at the same moment).
    const claim = new BlockClaim()
    const previous = volume.locks.get(index)
    volume.locks.set(index, claim)
    next?.()
    let ticketed = false
    try {
      // The caller may reuse its buffer once we return a promise: encode before any await, or copy.
      if (previous !== undefined) {
        data = copyBytes(data)
        await previous.released()
      }
      if (volume.cipher !== undefined && !volume.cipher.ready(1, volume.nextGen + 1)) {
        data = copyBytes(data)
        // Again until it holds: other writes may take generations while this one waits.
        while (!volume.cipher.ready(1, volume.nextGen + 1)) await volume.cipher.reserve(1, volume.nextGen + 1)
      }
      const gen = volume.nextGen++
      volume.tickets.add(claim)
      ticketed = true
      // record() copies what it keeps: `data` may be the caller's buffer.
      const seq = replicatorFor(volume, primary)?.record(writer === undefined ? { type: 'write', offset: index * this.blockSize, data: padTo(data, this.blockSize) } : { type: 'write', offset: index * this.blockSize, data: padTo(data, this.blockSize), writer })
      const address: BlockAddress = new Address(volume.storageId, index, gen)
      await this.#core.commit(volume, [{ type: 'put', address, data: encodeRecorded(this.#core, volume, address, data, seq) }], concern, seq, () => { this.#core.publish(volume, index, gen) })
      ok = true
    } finally {
      if (ticketed) volume.tickets.delete(claim)
      if (volume.locks.get(index) === claim) volume.locks.delete(index)
      claim.release()
      if (!background) volume.metrics.end('write', data.byteLength, startedAt, ok)
      volume.leave()
    }

    // Resolved without a turn of the event loop for a while (see LoopStreak): the caller waits for one.
    if (this.#streak.tooLong(performance.now())) await loopTurn()
  }

  /**
   * Reads a byte range (of the live view, or of the snapshot `view`), which may span blocks.
   * `background`: a read on replication's behalf (a resync reading or digesting blocks for a copy),
   * not a client's: it is left out of the volume's I/O metrics and bypasses the block cache (a
   * scan would evict what clients read, and count as their misses). `into`: a buffer of at least
   * `length` bytes to read into (the result is its first `length` bytes) instead of a new one.
   */
  async read (volume: VolumeBlocks, offset: number, length: number, view?: View, background = false, into?: Uint8Array): Promise<Uint8Array> {
    checkRange(this.#core, volume, offset, length, view)
    // A caller's buffer (reused, so its pages are in place) is cleared first: blocks never
    // written are not placed, they keep the zeros a new buffer starts with.
    const out = into === undefined ? new Uint8Array(length) : into.subarray(0, length).fill(0)
    if (length === 0) return out
    if (volume.gate !== undefined || volume.movedTo !== undefined) [volume, view] = await this.#core.settle(volume, view)
    volume.enter()
    const startedAt = background ? 0 : volume.metrics.begin()
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
        place(first, await readPayload(this.#core, volume, first, !background, false, at))
      } else {
        // Whole blocks of an encrypted volume may be decrypted straight into the result.
        await readMany(this.#core, volume, first, last, at, place, false, { out, offset }, !background)
      }
      ok = true
      // Resolved without a turn of the event loop for a while (see LoopStreak): the caller waits for one.
      if (this.#streak.tooLong(performance.now())) await loopTurn()
      return out
    } finally {
      if (!background) volume.metrics.end('read', length, startedAt, ok)
      volume.leave()
    }
  }

  /**
   * Writes a byte range atomically (one journal entry): whole blocks are replaced, partial blocks at
   * the edges are read, patched and rewritten under the block's lock. `primary`: see replicatorFor.
   * `background`, `writer`: as for writeBlock.
   */
  async write (volume: VolumeBlocks, offset: number, data: Uint8Array, concern: WriteConcern, primary?: VolumeReplicator, background = false, writer?: WriterId): Promise<void> {
    checkRange(this.#core, volume, offset, data.byteLength)
    if (data.byteLength === 0) return
    this.#core.assertStorable(volume, concern)
    const aligned = offset % this.blockSize === 0 && data.byteLength % this.blockSize === 0
    let next: (() => void) | undefined
    if (volume.gate !== undefined || volume.movedTo !== undefined || volume.gateQueue !== undefined) {
      data = copyBytes(data)
      ;[volume, next] = await this.#core.settleInOrder(volume)
    }
    volume.enter()
    const startedAt = background ? 0 : volume.metrics.begin()
    let ok = false
    const first = Math.floor(offset / this.blockSize)
    const last = Math.floor((offset + data.byteLength - 1) / this.blockSize)
    const release = this.#core.lock(volume, first, last)
    next?.()
    let ticket: BlockClaim | undefined
    try {
      // The caller may reuse its buffer once we return a promise: copy if we must wait first.
      if (release.ready !== undefined || !aligned || (volume.cipher !== undefined && !volume.cipher.ready(last - first + 1, volume.nextGen + last - first + 1))) data = copyBytes(data)
      if (release.ready !== undefined) await release.ready
      // Edges first: every await happens before the generations are taken, so the write's blocks
      // get consecutive generations and a snapshot sees all of it or none of it.
      const edges = new Map<number, Uint8Array>()
      for (const index of first === last ? [first] : [first, last]) {
        const blockStart = index * this.blockSize
        const from = Math.max(offset, blockStart)
        const to = Math.min(offset + data.byteLength, blockStart + this.blockSize)
        if (to - from < this.blockSize) {
          const merged = copyBytes(await readPayload(this.#core, volume, index, false, true, LIVE))
          merged.set(data.subarray(from - offset, to - offset), from - blockStart)
          edges.set(index, merged)
        }
      }
      // Again until it holds: other writes may take generations while this one waits.
      while (volume.cipher !== undefined && !volume.cipher.ready(last - first + 1, volume.nextGen + last - first + 1)) await volume.cipher.reserve(last - first + 1, volume.nextGen + last - first + 1)
      let ops: BlockOp[] = []
      const firstGen = volume.nextGen
      ticket = volume.ticket()
      // Recorded as the generations are taken, so the replication order agrees with snapshot cuts.
      // record() copies what it keeps: `data` may be the caller's buffer.
      const seq = replicatorFor(volume, primary)?.record(writer === undefined ? { type: 'write', offset, data } : { type: 'write', offset, data, writer })
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
          values = await sealMany(this.#core, volume, addresses, payloads)
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
          ops.push({ type: 'put', address, data: encodeRecorded(this.#core, volume, address, payload, seq) })
        }
      }
      await this.#core.commit(volume, ops, concern, seq, () => { for (let index = first; index <= last; index++) this.#core.publish(volume, index, firstGen + index - first) })
      ok = true
    } finally {
      if (ticket !== undefined) this.#endTicket(volume, ticket)
      release.done()
      if (!background) volume.metrics.end('write', data.byteLength, startedAt, ok)
      volume.leave()
    }

    // Resolved without a turn of the event loop for a while (see LoopStreak): the caller waits for one.
    if (this.#streak.tooLong(performance.now())) await loopTurn()
  }

  /**
   * Discards a byte range: whole blocks are unmapped (their space freed unless a snapshot keeps
   * them; they read as zeros), partial blocks at the edges are zero-filled. `primary`: see replicatorFor.
   * `background`, `writer`: as for writeBlock.
   */
  trim (volume: VolumeBlocks, offset: number, length: number, concern: WriteConcern, primary?: VolumeReplicator, background = false, writer?: WriterId): Promise<void> {
    return blockTrims.trim(this.#core, this.#streak, volume, offset, length, concern, primary, background, writer)
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
  snapshot (volume: VolumeBlocks, onCut?: () => void): Promise<number> {
    return snapshots.snapshot(this.#core, volume, onCut)
  }

  /** Forgets the snapshot at `gen` and deletes the versions only it kept. */
  dropSnapshot (volume: VolumeBlocks, gen: number): Promise<void> {
    return snapshots.dropSnapshot(this.#core, volume, gen)
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
   * not (they read as zeros), in order: [first block, count, allocated]. Work follows the blocks
   * stored in the range, not its length (see BlockMap.forEachAllocated): a whole petabyte volume
   * with a few blocks written is a few runs, found at once.
   */
  allocationRuns (volume: VolumeBlocks, first: number, last: number, at: number = LIVE): Array<[number, number, boolean]> {
    return allocation.allocationRuns(volume, first, last, at)
  }

  /**
   * Reverts the live view to the snapshot at `view.gen`: every block changed since then gets a new
   * version with the snapshot's data (or is unmapped), so later snapshots stay intact. Work is
   * proportional to the blocks changed since the snapshot. New operations wait until it is done.
   * Idempotent: after a crash, running it again finishes the job. `beforeOpen` runs once the
   * copy is durable, before new operations go ahead: the caller records there that the revert is
   * finished, so no write is acknowledged that a crash-time revert at the next open would undo.
   */
  revert (volume: VolumeBlocks, view: View, onClosed?: (changed: readonly number[]) => void, beforeOpen?: () => Promise<void>): Promise<number> {
    return snapshots.revert(this.#core, volume, view, onClosed, beforeOpen)
  }

  /**
   * Gives a clone its own copy of every block it still reads from its source, then cuts the link.
   * Copies go below the clone's own versions (gen 0), so the clone's snapshots read them too.
   * `unlinked` records the cut link durably (the catalog); it runs once the copies are stored, and
   * before trim tombstones that only hid the source's data are freed.
   */
  flatten (clone: VolumeBlocks, unlinked?: () => Promise<void>): Promise<number> {
    return snapshots.flatten(this.#core, clone, unlinked)
  }

  /**
   * Live migration: writes into `target`, as new versions, the blocks `indices` of `source` as the
   * source's view at `at` reads them (a block the view reads as zeros is unmapped in the target, so
   * trims move too). Reads go around the source's gate: the caller keeps the view alive (a snapshot
   * generation, or LIVE while the source's gate is closed). Blocks are sealed with the target's
   * key when it has one. Calls `progress` after every batch; a throw from it stops the copy.
   */
  copyBlocks (target: VolumeBlocks, source: VolumeBlocks, indices: readonly number[], at: number, progress?: (copied: number) => void): Promise<void> {
    return snapshots.copyBlocks(this.#core, target, source, indices, at, progress)
  }

  /**
   * Re-seals with the volume's current key every data version it stores (live, held by snapshots,
   * and a clone's own copies) that another key sealed: in place, same address, under each block's
   * claim, while the volume stays online. Starts at block `from`; after each batch, once the batch
   * is durable, calls `progress(next)` with the first block index not yet done (resume there after
   * a crash). Versions already under the current key are skipped, so running it again is harmless.
   */
  reseal (volume: VolumeBlocks, from: number, progress: (next: number, resealed: number) => Promise<void>): Promise<number> {
    return maintenance.reseal(this.#core, volume, from, progress)
  }

  /**
   * Reads and verifies every data version the volume stores (the live view and what its snapshots
   * keep), bypassing the cache. Returns bad blocks; each failure is also reported through
   * `onChecksumFailure`. `cancelled` is asked before each block: an error it returns ends the scrub.
   */
  scrub (volume: VolumeBlocks, cancelled?: () => Error | undefined): Promise<{ checked: number, bad: Array<{ index: number, gen: number, code: string, message: string }> }> {
    return maintenance.scrub(this.#core, volume, cancelled)
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

  readonly #streak = new LoopStreak()
  /**
   * Counts the changes made visible to the live views of all volumes (each block written, trimmed,
   * reverted or copied in): while it stays the same, a live view reads as it did. Each change also
   * stamps its own volume (VolumeBlocks.changed), which is what a mount's read-ahead and file times
   * watch, so that a write to one volume leaves the others' alone.
   */
  get changes (): number { return this.#core.changes }

  #endTicket (volume: VolumeBlocks, ticket: BlockClaim): void {
    volume.tickets.delete(ticket)
    ticket.release()
  }
}
