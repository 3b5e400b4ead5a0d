// Engine-side state of one volume (its block map, per-block claims, in-flight operations, gate)
// and the view a snapshot read goes through.

import { BlockMap } from './block-map.js'
import type { MetricsRecorder } from '../metrics/recorder.js'
import type { VolumeCipher } from '../crypto/volume-cipher.js'
import type { VolumeReplicator } from './replicator.js'

/**
 * One operation's claim on some blocks. Most claims are never waited for, so the promise that a
 * later operation waits on is made only when one asks.
 */
export class BlockClaim {
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
  /**
   * The engine's change count (EngineCore.changes) at this storage's latest change visible to its
   * live view; -storageId before the first. So it differs after every change of this volume (and
   * of no other), and from any other storage's: a reader following the volume to new storage (a
   * live migration's movedTo) sees it differ too. What a mount's `data.version()` reports.
   */
  changed: number
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
  /**
   * The last writer waiting to get past the gate (see EngineCore.settleInOrder): while set, new
   * writes queue behind it instead of going ahead, so writes take their claims in issue order.
   */
  gateQueue: Promise<void> | undefined
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
    this.changed = -storageId
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
    // An operation that saw the gate open a few promise hops ago (settle) has not entered yet: one
    // turn of the event loop lets every such chain enter, so that idle() below waits for it.
    await new Promise<void>((resolve) => { setImmediate(resolve) })
    await this.idle()
    return () => { this.gate = undefined; open() }
  }
}

/** Where a snapshot view reads: its generation and the volume size it had. */
export interface View {
  readonly gen: number
  readonly sizeBytes: number
}
