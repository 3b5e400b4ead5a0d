// The primary of one replicated volume: records each change in order, runs a link per other copy,
// and settles replicated writes once the copies they need have acknowledged them.

import { setTimeout as sleep } from 'node:timers/promises'
import { GalleonError } from '../errors.js'
import type { VolumeBlocks } from '../engine/engine.js'
import type { ReplicatedChange, VolumeReplicator } from '../engine/replicator.js'
import type { WriteLedger } from './forwarded-writes.js'
import { WriteConcern } from '../types.js'
import { RecordClock } from './record-clock.js'
import { ChangeArena } from './stream-codec.js'
import type { ReplicaSetRecord } from './records.js'
import type { ReplicationManager } from './manager.js'
import type { ReplicationStatus } from './host.js'
import { Link } from './link.js'
import { BATCH_MAX_BYTES, unsatisfied, type LocalSet } from './common.js'

/** How long the primary's links must have nothing queued before its arena lets its chunk go. */
const ARENA_IDLE_MS = 1000
/** How long a replicated write waits for its copies before it fails. */
const COMMIT_WAIT_MS = 60_000

interface Waiter {
  readonly deadline: number
  readonly seq: number
  readonly concern: WriteConcern
  readonly resolve: () => void
  readonly reject: (err: unknown) => void
}

/** The primary of one volume: records changes, runs a link per other copy, settles replicated writes. */
export class Primary implements VolumeReplicator {
  readonly epoch: number
  readonly #manager: ReplicationManager
  readonly #set: LocalSet
  #blocks: VolumeBlocks
  #record: ReplicaSetRecord
  #seq = 0
  /** When the changes were recorded (for the copies' lag in seconds). */
  readonly clock = new RecordClock()
  /** Holds the write data of the changes the links keep (see stream-codec.ts). */
  readonly #arena = new ChangeArena()
  #arenaTimer: NodeJS.Timeout | undefined
  /** Per changed block: the sequence number of its last change in this epoch (sparse: thin volumes stay cheap). */
  readonly #dirty = new Map<number, number>()
  readonly #links = new Map<string, Link>()
  #waiters: Waiter[] = []
  #stopped: string | undefined
  /** Set while the role is being handed over: new changes are refused (callers retry on the next primary). */
  frozen = false
  /**
   * Copies about to join the in-sync list, with the sequence number at which they started: writes
   * recorded from then on wait for them too, and they join once they have acknowledged that one.
   */
  readonly #joining = new Map<string, number>()
  /**
   * Copies this node tried to list as in sync without learning whether the coordinator wrote it
   * (its answer was lost, and the record could not be read since): writes wait for them as for
   * in-sync copies, and a copy that fails is taken out of the list as an in-sync one would be.
   */
  readonly #listingUnknown = new Set<string>()

  constructor (manager: ReplicationManager, set: LocalSet, record: ReplicaSetRecord, blocks: VolumeBlocks) {
    this.#manager = manager
    this.#set = set
    this.#record = record
    this.#blocks = blocks
    this.epoch = record.epoch
  }

  get seq (): number { return this.#seq }
  get volumeId (): string { return this.#set.volumeId }
  get blocks (): VolumeBlocks { return this.#blocks }
  /** The local copy moved to new storage (a live migration's switch-over, with writes paused). */
  rebind (blocks: VolumeBlocks): void {
    this.#blocks = blocks
    // A resync reads the old storage at its private cut, which did not move: it starts over, and
    // compares everything (what it sent so far is not to be trusted).
    for (const link of this.#links.values()) if (link.state === 'resyncing') link.restart('the primary\'s copy moved to new storage', true)
  }
  get setRecord (): ReplicaSetRecord { return this.#record }
  /** The forwarded writes this copy holds (see forwarded-writes.ts), which a resync hands on. */
  get writes (): WriteLedger { return this.#set.writes }
  get manager (): ReplicationManager { return this.#manager }
  get stopped (): boolean { return this.#stopped !== undefined }

  start (): void {
    this.recordChanged(this.#record)
  }

  /** The record changed (our own compare-and-swap or another's): follow its nodes and in-sync list. */
  recordChanged (record: ReplicaSetRecord): void {
    this.#record = record
    if (this.#stopped !== undefined) return
    for (const node of record.nodes) {
      if (node === this.#manager.nodeId || this.#links.has(node)) continue
      const link = new Link(this, node)
      this.#links.set(node, link)
      link.start()
    }
    for (const [node, link] of this.#links) {
      if (!record.nodes.includes(node)) {
        link.stop()
        this.#links.delete(node)
        // Its socket may still be sending from the arena's chunks, which its acknowledgements no longer guard.
        this.#arena.release()
      }
    }
    this.#settle()
  }

  record (change: ReplicatedChange): number {
    if (this.frozen || this.#stopped !== undefined) throw new GalleonError('NOT_LEADER', `node ${this.#manager.nodeId} is handing volume ${this.#record.spec.name} to another primary; retry`)
    if (this.#set.fenced) throw new GalleonError('NOT_LEADER', `node ${this.#manager.nodeId} lost its cluster lease, so volume ${this.#record.spec.name} may have failed over to another node: it takes no change until it holds a lease again and the volume's record says it is still the primary; retry`)
    if (change.type === 'write' && change.data.byteLength > BATCH_MAX_BYTES) {
      // A large write travels as consecutive pieces, each within a message's size; its concern is
      // met when the last one is (copies acknowledge in order).
      // A forwarded write's identity goes with the last piece: a copy holds the write once it has all of it.
      let seq = 0
      for (let at = 0; at < change.data.byteLength; at += BATCH_MAX_BYTES) {
        const end = Math.min(at + BATCH_MAX_BYTES, change.data.byteLength)
        const piece = { type: 'write', offset: change.offset + at, data: change.data.subarray(at, end) } as const
        seq = this.record(end === change.data.byteLength && change.writer !== undefined ? { ...piece, writer: change.writer } : piece)
      }
      return seq
    }
    const seq = ++this.#seq
    this.clock.recorded(seq)
    if ((change.type === 'write' || change.type === 'trim') && change.writer !== undefined) this.#set.writes.note(change.writer)
    const bs = this.#manager.host.engine.blockSize
    if (change.type === 'write' || change.type === 'trim') {
      const length = change.type === 'write' ? change.data.byteLength : change.length
      const first = Math.floor(change.offset / bs)
      const last = Math.floor((change.offset + length - 1) / bs)
      for (let i = first; i <= last; i++) this.#dirty.set(i, seq)
    } else if (change.type === 'revert') {
      for (const i of change.blocks ?? []) this.#dirty.set(i, seq)
    }
    // A write's data is only lent (see VolumeReplicator): copied once, for every link that keeps it.
    let kept: ReplicatedChange | undefined
    for (const link of this.#links.values()) {
      if (!link.takes) continue
      kept ??= change.type === 'write' ? { ...change, data: this.#arena.copy(change.data, change.data.byteLength, seq) } : change
      link.offer(seq, kept)
    }
    return seq
  }

  /** Blocks changed after `seq` in this epoch. */
  changedSince (seq: number): number[] {
    const out: number[] = []
    for (const [index, changed] of this.#dirty) if (changed > seq) out.push(index)
    return out.sort((a, b) => a - b)
  }

  async committed (seq: number, concern: WriteConcern): Promise<void> {
    if (concern !== WriteConcern.WriteReplicated && concern !== WriteConcern.WriteDistributed) return
    const verdict = this.#verdict(seq, concern)
    if (verdict === true) return
    if (verdict instanceof Error) throw verdict
    const waiting = new Promise<void>((resolve, reject) => { this.#waiters.push({ seq, concern, resolve, reject, deadline: performance.now() + COMMIT_WAIT_MS }) })
    // Before the wait, not after it: the deadline is what ends a wait that nothing else ends.
    this.#watchDeadlines()
    await waiting
  }

  #deadlineTimer: NodeJS.Timeout | undefined
  /** Waiting writes fail after COMMIT_WAIT_MS (a copy that neither acknowledges nor can be dropped, e.g. without the coordinator). */
  #watchDeadlines (): void {
    if (this.#deadlineTimer !== undefined || this.#waiters.length === 0) return
    this.#deadlineTimer = setInterval(() => {
      // Deadlines are on the monotonic clock: a stepped wall clock must neither fail every waiting
      // write at once (forward) nor leave them waiting for the length of the step (back).
      const now = performance.now()
      const expired = this.#waiters.filter((w) => w.deadline <= now)
      if (expired.length > 0) {
        this.#waiters = this.#waiters.filter((w) => w.deadline > now)
        for (const w of expired) w.reject(unsatisfied(`the copies of volume ${this.#record.spec.name} did not acknowledge the write within ${COMMIT_WAIT_MS / 1000} s (in sync: ${this.#record.inSync.join(', ')}); it is stored on this node but not acknowledged as ${w.concern}`))
      }
      if (this.#waiters.length === 0 || this.#stopped !== undefined) { clearInterval(this.#deadlineTimer); this.#deadlineTimer = undefined }
    }, 1000)
    this.#deadlineTimer.unref()
  }

  failed (_seq: number): void {
    // The copies may have (or get) a change this node does not have: every link starts over with a
    // digest comparison (a resync under way is abandoned before it ends).
    for (const link of this.#links.values()) link.restart('a change failed on the primary', true)
  }

  /** Why `concern` cannot be met now, or undefined. */
  possible (concern: WriteConcern): string | undefined {
    if (this.#stopped !== undefined) return `this node is no longer the primary of the volume (${this.#stopped})`
    const replicas = this.#record.inSync.filter((n) => n !== this.#manager.nodeId)
    if (replicas.length === 0) {
      return `${concern} needs an in-sync copy on another node, and volume ${this.#record.spec.name} has none now (copies: ${this.#record.nodes.join(', ')}; in sync: ${this.#record.inSync.join(', ')}); use WriteDurable, or wait until a copy has resynced`
    }
    if (concern === WriteConcern.WriteDistributed && !replicas.some((n) => this.#manager.zoneOf(n) !== this.#manager.zone)) {
      return `WriteDistributed needs an in-sync copy in a zone other than ${this.#manager.zone}, and volume ${this.#record.spec.name} has none (in sync: ${replicas.map((n) => `${n} in ${this.#manager.zoneOf(n) ?? 'unknown zone'}`).join(', ')})`
    }
    return undefined
  }

  /** true: met; an error: cannot be met; false: wait. */
  #verdict (seq: number, concern: WriteConcern): true | false | Error {
    const why = this.possible(concern)
    if (why !== undefined) return unsatisfied(`${why}. The write is stored on this node but not acknowledged as ${concern}`)
    for (const node of this.#record.inSync) {
      if (node === this.#manager.nodeId) continue
      const link = this.#links.get(node)
      if (link === undefined || link.acked < seq) return false
    }
    for (const [node, since] of this.#joining) {
      if (since >= seq || this.#record.inSync.includes(node)) continue
      const link = this.#links.get(node)
      if (link === undefined || link.acked < seq) return false
    }
    for (const node of this.#listingUnknown) {
      const link = this.#links.get(node)
      if (this.#record.nodes.includes(node) && (link === undefined || link.acked < seq)) return false
    }
    return true
  }

  joiningSince (node: string): number | undefined { return this.#joining.get(node) }

  /** From now on, writes wait for this copy as well (see #joining). */
  startJoining (node: string): void {
    if (!this.#joining.has(node)) this.#joining.set(node, this.#seq)
  }

  /** `node` is back in the cluster: a link to it waiting out its back-off retries now. */
  peerBack (node: string): void {
    this.#links.get(node)?.retryNow()
  }

  stopJoining (node: string): void {
    if (this.#joining.delete(node)) this.#settle()
  }

  /** Re-evaluates waiting writes (after an acknowledgement or a change of the in-sync list). */
  #settle (): void {
    if (this.#waiters.length === 0) return
    const still: Waiter[] = []
    for (const waiter of this.#waiters) {
      const verdict = this.#verdict(waiter.seq, waiter.concern)
      if (verdict === true) waiter.resolve()
      else if (verdict instanceof Error) waiter.reject(verdict)
      else still.push(waiter)
    }
    this.#waiters = still
  }

  acked (): void {
    this.#settle()
    let oldest = this.#seq
    for (const link of this.#links.values()) oldest = Math.min(oldest, link.acked)
    this.clock.forgetBefore(oldest + 1)
    this.#arena.reclaim(oldest)
    this.#releaseArenaWhenIdle()
  }

  /**
   * Once no link has had anything queued for ARENA_IDLE_MS (no change recorded meanwhile), the
   * arena's current chunk is let go: an idle volume holds no write data. Not at once: under load the
   * queues empty at every acknowledgement, and a new chunk per round would cost its page faults.
   */
  #releaseArenaWhenIdle (): void {
    if (this.#arenaTimer !== undefined) return
    for (const link of this.#links.values()) if (link.queuedBytes > 0) return
    const seq = this.#seq
    this.#arenaTimer = setTimeout(() => {
      this.#arenaTimer = undefined
      if (this.#seq !== seq) { this.#releaseArenaWhenIdle(); return }
      this.#arena.release()
    }, ARENA_IDLE_MS)
    this.#arenaTimer.unref()
  }

  /** Bytes of the arena's chunks (see ChangeArena.chunkBytes). */
  get arenaChunkBytes (): number { return this.#arena.chunkBytes }

  /** A copy failed or fell behind: out of the in-sync list (compare-and-swap) before writes go on without it. */
  async dropFromInSync (node: string): Promise<void> {
    if (!this.mayBeInSync(node) || this.#stopped !== undefined) return
    try {
      await this.#manager.update(this.volumeId, (record) => {
        if (record.primary !== this.#manager.nodeId || record.epoch !== this.epoch) return undefined
        if (!record.inSync.includes(node)) return undefined
        return { ...record, inSync: record.inSync.filter((n) => n !== node) }
      })
      // The record was read, after any write of it whose answer was lost was settled (written, or
      // fenced off so that it can never apply): the copy is out of the list now, for good.
      this.#listingKnown(node)
    } catch (err) {
      // The coordinator cannot be reached: writes needing this copy keep waiting, and fail at
      // their callers' deadline; the link tries again.
      this.#manager.host.emit('replication:error', { volumeId: this.volumeId, nodeId: this.#manager.nodeId, code: (err as { code?: string })?.code ?? 'IO_ERROR', message: `taking ${node} out of the in-sync list: ${(err as Error)?.message ?? String(err)}` })
      throw err
    }
    this.#manager.host.emit('replication:out-of-sync', { volumeId: this.volumeId, node })
  }

  /** A copy caught up with the stream: into the in-sync list. */
  async addToInSync (node: string): Promise<void> {
    if (this.#record.inSync.includes(node) || this.#stopped !== undefined) return
    const add = (record: ReplicaSetRecord): ReplicaSetRecord | undefined => {
      if (record.primary !== this.#manager.nodeId || record.epoch !== this.epoch) return undefined
      if (record.inSync.includes(node) || !record.nodes.includes(node)) return undefined
      return { ...record, inSync: [...record.inSync, node] }
    }
    try {
      await this.#manager.update(this.volumeId, add)
    } catch (err) {
      // The coordinator may have written it with its answer lost (or may still write it), and
      // that could not be settled (see ReplicationManager.update): until an update() settles it
      // (which fences the write off if it has not applied), the copy counts as listed, so that no
      // write is acknowledged without a copy that failover may promote.
      this.#listingUnknown.add(node)
      await this.#manager.update(this.volumeId, () => undefined).then(() => { this.#listingKnown(node) }, () => {})
      throw err
    }
    this.#listingKnown(node)
    if (this.#record.inSync.includes(node)) this.#manager.host.emit('replication:in-sync', { volumeId: this.volumeId, node })
  }

  /** Whether the record lists `node` in sync, or may (see #listingUnknown): then it is taken out before the copy is rebuilt. */
  mayBeInSync (node: string): boolean {
    return this.#record.inSync.includes(node) || this.#listingUnknown.has(node)
  }

  /** A read of the record (adopted since) told whether `node` is listed in sync. */
  #listingKnown (node: string): void {
    if (this.#listingUnknown.delete(node)) this.#settle()
  }

  /**
   * Hands the primary role to an in-sync copy: new changes are refused, those under way finish and
   * reach every in-sync copy, then the record names the other node (epoch + 1) with a hand-off
   * marker so that the copies stay in sync.
   * At a clean close (`atClose`): the new primary is a copy `atClose.eligible` allows (one that can
   * serve: not closed, leaving or unreachable), and once `atClose.settleAt` has passed, the copies
   * that have every change are enough: those that have not (a copy whose node just went away, not
   * yet taken out) leave the in-sync list and are resynced by the new primary. Until `atClose.deadline`.
   */
  async handOver (atClose?: { eligible: (node: string) => boolean, settleAt: number, deadline: number }): Promise<void> {
    const host = this.#manager.host
    const self = this.#manager.nodeId
    const eligible = atClose?.eligible ?? (() => true)
    await host.exclusive(async () => {
      this.frozen = true
      try {
        await this.#blocks.drainTickets()
        const deadline = atClose?.deadline ?? performance.now() + 60_000
        const hasAll = (n: string): boolean => (this.#links.get(n)?.acked ?? -1) >= this.#seq
        for (;;) {
          const others = this.#record.inSync.filter((n) => n !== self)
          if (others.length === 0) throw new GalleonError('BUSY', `volume ${this.#record.spec.name} has no in-sync copy to hand the primary role to`)
          const ready = others.filter(hasAll)
          if (ready.length === others.length && ready.some(eligible)) break
          if (atClose !== undefined && performance.now() >= atClose.settleAt && ready.some(eligible)) break
          if (performance.now() > deadline || this.#stopped !== undefined) throw new GalleonError('BUSY', `the copies of volume ${this.#record.spec.name} did not catch up ${atClose === undefined ? 'within a minute' : 'in time'}; the primary role was not handed over`)
          await sleep(10)
        }
        const seq = this.#seq
        const written = await this.#manager.update(this.volumeId, (record) => {
          if (record.primary !== self || record.epoch !== this.epoch) return undefined
          const target = record.inSync.find((n) => n !== self && eligible(n) && (atClose === undefined || hasAll(n)))
          if (target === undefined) return undefined
          // (Frozen and drained: no change comes after seq, so a copy that has it has everything.)
          const inSync = record.inSync.filter((n) => n !== self && (atClose === undefined || hasAll(n)))
          return { ...record, primary: target, epoch: record.epoch + 1, inSync: [target, ...inSync.filter((n) => n !== target)], handoff: { epoch: this.epoch, seq } }
        })
        if (written === undefined) throw new GalleonError('BUSY', `the record of volume ${this.#record.spec.name} changed meanwhile; the primary role was not handed over`)
      } catch (err) {
        if (this.#manager.hasUnsettled(this.volumeId)) {
          // The hand-off's write may still land: writes acknowledged here from now on would then be
          // missing on the new primary. Frozen (writes get NOT_LEADER and retry) until it is settled;
          // a hand-off that did land steps this primary down when the record is taken up.
          void this.#unfreezeWhenSettled()
          throw err
        }
        this.frozen = false
        throw err
      }
    }, atClose !== undefined)
  }

  /** After a hand-off whose record write is unsettled: unfreezes once it is settled and this node is still the primary. */
  async #unfreezeWhenSettled (): Promise<void> {
    const settled = await this.#manager.settleAll(this.volumeId, () => this.#stopped !== undefined)
    if (settled && this.#stopped === undefined && this.#record.primary === this.#manager.nodeId && this.#record.epoch === this.epoch) this.frozen = false
  }

  allLinksFailedOnce (): boolean {
    return this.#links.size > 0 && [...this.#links.values()].every((link) => link.failures > 0)
  }

  linkStatus (): ReplicationStatus['links'] {
    return [...this.#links.values()].map((link) => link.status())
  }

  stop (why: string): void {
    if (this.#stopped !== undefined) return
    this.#stopped = why
    clearInterval(this.#deadlineTimer)
    this.#deadlineTimer = undefined
    for (const link of this.#links.values()) link.stop()
    this.#links.clear()
    const waiters = this.#waiters
    this.#waiters = []
    for (const waiter of waiters) waiter.reject(unsatisfied(`${why}; the write is stored on this node but not acknowledged as ${waiter.concern}`))
  }
}
