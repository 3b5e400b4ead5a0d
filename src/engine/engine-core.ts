// State the block engine's modules share (store, journal, cache, volumes) and the steps every path
// takes: committing through the journal, publishing versions, claiming blocks, reporting damage.

import { GalleonError } from '../errors.js'
import { addressKey } from '../abstract-block-store.js'
import { Address, type BlockAddress, type BlockOp, type BlockStore } from '../drivers.js'
import { BlockCache } from './block-cache.js'
import { storeGen } from './block-map.js'
import { BLOCK_FLAG_TOMBSTONE, encodeBlock } from './codec.js'
import { WriteJournal, type ReplicationHook } from './journal.js'
import type { VolumeReplicator } from './replicator.js'
import { WriteConcern } from '../types.js'
import { BlockClaim, type View, type VolumeBlocks } from './volume-blocks.js'

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
 * The engine's internals, shared with the modules that hold its read and trim paths, block encryption,
 * snapshots and copies, maintenance passes and recovery: BlockEngine owns one and hands it to them.
 */
export class EngineCore {
  readonly store: BlockStore
  readonly journal: WriteJournal
  readonly blockSize: number
  readonly cache: BlockCache
  readonly options: EngineOptions
  readonly volumes = new Map<number, VolumeBlocks>()
  readonly zeroBlock: Uint8Array
  /** Replication plugs in here (see ReplicationHook); absent on a single node. */
  replication: ReplicationHook | undefined
  /** Changes made visible to the live views of all volumes (see BlockEngine.changes); each also stamps its volume's VolumeBlocks.changed. */
  changes = 0

  constructor (store: BlockStore, options: EngineOptions) {
    this.store = store
    this.journal = new WriteJournal(store)
    this.blockSize = options.blockSize
    this.options = options
    this.cache = new BlockCache(options.cacheBlocks ?? 0)
    this.zeroBlock = new Uint8Array(options.blockSize)
  }

  /**
   * On a replicated volume's primary, refuses a concern the block store cannot meet (a durable one
   * on a store that keeps data only in process memory) before the change takes anything: the change
   * is recorded for the copies before it is committed, so a refusal in commit() would have shipped
   * a change this node never stored, and sent every copy through a resync to undo it. (Elsewhere
   * commit() refuses it, after the reasons it checks first.)
   */
  assertStorable (volume: VolumeBlocks, concern: WriteConcern): void {
    if (volume.replicator === undefined || concern === WriteConcern.WriteAcknowledged || this.store.supports.durableSync) return
    throw this.#unstorable(concern)
  }

  #unstorable (concern: WriteConcern): GalleonError {
    return new GalleonError('WRITE_CONCERN_UNSATISFIED', `${concern} promises the write survives a crash, but the ${this.store.name} block store keeps data only in process memory; use WriteAcknowledged, or open with storagePath for durable storage. Nothing was written`)
  }

  /**
   * Appends to the journal, then (for replicated concerns) hands the entry to the replication hook
   * and resolves only when it has met the concern. Replicated writes are made durable locally first.
   * `applied` (publishing the new versions) runs once the local append succeeded, also when the
   * concern then fails: the change is stored here and in the replication stream, so it must be
   * what this node reads, now and after a restart (which finds it in the store either way).
   */
  commit (volume: VolumeBlocks, ops: BlockOp[], concern: WriteConcern, seq?: number, applied?: () => void): Promise<unknown> {
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
      throw this.#unstorable(concern)
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

  /** Makes a committed version visible and queues the superseded one for deletion (unless a snapshot keeps it). */
  publish (volume: VolumeBlocks, index: number, gen: number): void {
    volume.changed = ++this.changes
    const superseded = volume.map.publish(index, gen)
    if (superseded !== undefined) this.discard(volume, [[index, superseded]])
  }

  /** Queues deletion of versions no view reads any more. */
  discard (volume: VolumeBlocks, garbage: ReadonlyArray<[number, number]>): void {
    if (garbage.length === 0) return
    const ops: BlockOp[] = []
    for (const [index, version] of garbage) {
      const address = new Address(volume.storageId, index, storeGen(version))
      if (this.cache.size > 0) this.cache.delete(addressKey(address))
      ops.push({ type: 'del', address })
    }
    this.journal.defer(ops)
  }

  /** Plans the unmapping of a whole block: ops to store now, and the map update once stored. */
  planUnmap (volume: VolumeBlocks, index: number, ops: BlockOp[], apply: Array<() => void>): void {
    const gen = volume.nextGen
    const plan = volume.map.planUnmap(index, gen)
    if (plan.remove === undefined && !plan.tombstone) return
    volume.nextGen++
    if (plan.remove !== undefined) {
      const address = new Address(volume.storageId, index, storeGen(plan.remove))
      ops.push({ type: 'del', address })
      if (this.cache.size > 0) this.cache.delete(addressKey(address))
    }
    if (plan.tombstone) {
      const address: BlockAddress = new Address(volume.storageId, index, storeGen(-gen))
      ops.push({ type: 'put', address, data: encodeBlock(address, new Uint8Array(0), 0, BLOCK_FLAG_TOMBSTONE) })
    }
    apply.push(() => { volume.changed = ++this.changes; volume.map.applyUnmap(index, gen, plan) })
  }

  /**
   * Claims blocks first..last for one operation. Claims are registered synchronously, so waits
   * always point at earlier registrations and can never deadlock.
   */
  lock (volume: VolumeBlocks, first: number, last: number): { ready: Promise<unknown> | undefined, done: () => void } {
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

  fail (volume: VolumeBlocks, failure: ChecksumFailure): void {
    volume.metrics.checksumError()
    this.options.onChecksumFailure?.(failure)
  }

  async waitGate (volume: VolumeBlocks): Promise<void> {
    while (volume.gate !== undefined) await volume.gate
  }

  /**
   * settle() for a write: writers that wait queue in the order they arrived, and one that arrives
   * while others still wait queues behind them. The caller takes its block claims right after
   * this resolves, then calls `next` to let the writer behind it go on: a write issued after the
   * gate opened no longer takes its claims before one that waited, which would apply the two out
   * of their issue order.
   */
  async settleInOrder (volume: VolumeBlocks): Promise<[VolumeBlocks, () => void]> {
    const ahead = volume.gateQueue
    let next!: () => void
    const mine = new Promise<void>((resolve) => { next = resolve })
    volume.gateQueue = mine
    const done = (): void => {
      if (volume.gateQueue === mine) volume.gateQueue = undefined
      next()
    }
    try {
      if (ahead !== undefined) await ahead
      return [(await this.settle(volume))[0], done]
    } catch (err) {
      done()
      throw err
    }
  }

  /**
   * Waits out a closed gate, then follows the volume to where a live migration moved it (the
   * snapshot view translated to the destination's generation). Returns where the I/O goes.
   */
  async settle (volume: VolumeBlocks, view?: View): Promise<[VolumeBlocks, View | undefined]> {
    await this.waitGate(volume)
    while (volume.movedTo !== undefined) {
      const { volume: next, gens } = volume.movedTo
      if (view !== undefined) {
        const gen = gens.get(view.gen)
        if (gen === undefined) throw new GalleonError('SNAPSHOT_NOT_FOUND', `the snapshot at generation ${view.gen} did not move with its volume (it was deleted); list the snapshots again`)
        view = { gen, sizeBytes: view.sizeBytes }
      }
      volume = next
      await this.waitGate(volume)
    }
    return [volume, view]
  }
}
