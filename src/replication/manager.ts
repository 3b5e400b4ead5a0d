// Network replication of volumes (DESIGN.md §3, Replication).
//
// Every replicated volume has one primary, named with an epoch in its coordinator record (see
// records.ts). The primary records each change of the volume in order (the engine's
// VolumeReplicator seam), applies it locally, and ships it to every other copy over the transport
// through one ordered link per copy. Replicas apply changes in order, make them durable, and answer
// with the last sequence number applied; they refuse changes from an epoch older than one they
// know of (fencing).
//
// Write concerns: WriteReplicated resolves once the write is durable on the primary and on every
// in-sync copy (at least one besides the primary); WriteDistributed also needs an in-sync copy in a
// zone other than the primary's. A copy that fails or falls behind is first removed from the
// record's in-sync list by compare-and-swap, and only then are writes acknowledged without it. So
// every in-sync copy holds every write acknowledged as WriteReplicated or stronger, and failover
// promotes only in-sync copies: the cluster leader watches the primary's health and, when it is
// gone, names an in-sync copy primary under epoch + 1.
//
// Resync: a copy that comes back (or a new one) is brought in line before it streams again. Within
// one primary epoch the primary knows, per block, the sequence number of its last change, so it
// sends only the blocks changed since the copy's last applied change. Across epochs (after a
// failover, or a copy whose position is unknown) both sides compare per-block digests and only the
// blocks that differ are sent. Snapshots the copy lacks are rebuilt in order before the live view.
//
// Any node holding a copy serves the volume's I/O by forwarding it to the primary, so clients
// reach the new primary after a failover without knowing which node it is.
//
// The parts: host.ts (what the host provides, events, status), primary.ts and link.ts (the primary
// and its stream to each copy), replica.ts (the replica side), roles.ts (taking up the role a record
// gives), lease-fence.ts (fencing by lease), record-updates.ts (compare-and-swap of records),
// forward.ts (forwarding to the primary), replica-sets.ts and set-lifecycle.ts (creating, deleting,
// handing off, moving and reshaping replica sets), cleanup.ts (deletion marks, forgotten nodes),
// failover.ts (the cluster leader's passes).

import { GalleonError } from '../errors.js'
import type { Coordinator, TransportMessage } from '../drivers.js'
import type { ClusterManager } from '../cluster/manager.js'
import type { PlacementRequest } from '../cluster/placement.js'
import type { VolumeBlocks } from '../engine/engine.js'
import type { VolumeReplicator } from '../engine/replicator.js'
import { WriteConcern } from '../types.js'
import { RECORD_PREFIX, type ReplicaSetRecord, type VolumeSpec } from './records.js'
import { newLocalSet, unsatisfied, type LocalSet, type ManagerCore } from './common.js'
import type { CopyLayout, ForwardedRequest, ReplicaPosition, ReplicationHost, ReplicationStatus } from './host.js'
import { Primary } from './primary.js'
import { ReplicaSide, notServingRefusal } from './replica.js'
import { ReplicaSetChanges } from './replica-sets.js'
import { FailoverLeader } from './failover.js'
import { Roles } from './roles.js'
import { LeaseFence } from './lease-fence.js'
import { RecordUpdates } from './record-updates.js'
import { forwardToPrimary } from './forward.js'
import { OutgoingWrites, type WriteLedger, type WriterId } from './forwarded-writes.js'
import { clearDeletionMark, forgetGoneNode, leaveDeletionMarks, leaveDroppedLists, orphanState, recordDeleted } from './cleanup.js'
import { usersElsewhere, type UsersElsewhere } from './attachments.js'
import { handOverAtClose } from './close-handover.js'

export type { ReplicaPosition, SnapshotInfo, ReplicationHost, CopyLayout, ReplicationEvents, ForwardedRequest, ReplicationStatus } from './host.js'

const LEADER_LOOP_MS = 1000
/** Every this many leader-loop ticks, a node deletes a leaving mark of its own it is not using. */
const STALE_MARK_TICKS = 5
/** How long a copy's node may be unhealthy before the leader replaces the copy (ClusterOptions.replicaReplacementDelayMs). */
const DEFAULT_REPLACEMENT_DELAY_MS = 600_000
/** How long a call forwarded to the primary waits for one it can reach (ClusterOptions.failoverWaitMs). */
const DEFAULT_FAILOVER_WAIT_MS = 30_000

/** The replication of one node: replica-side handlers, the primaries it runs, failover when it leads. */
export class ReplicationManager {
  readonly #host: ReplicationHost
  readonly #cluster: ClusterManager
  readonly #coordinator: Coordinator
  readonly #zone: string
  readonly #sets = new Map<string, LocalSet>()
  #stopWatch: (() => void) | undefined
  #leaderTimer: NodeJS.Timeout | undefined
  #closed = false
  /** The instance is closing (see handOverAtClose): this node takes no new copy and no resync. */
  #closing = false
  /** What the parts below reach of this manager. */
  readonly #core: ManagerCore
  readonly #replica: ReplicaSide
  readonly #changes: ReplicaSetChanges
  readonly #leader: FailoverLeader
  readonly #roles: Roles
  readonly #records: RecordUpdates
  readonly #fence: LeaseFence

  private constructor (host: ReplicationHost, cluster: ClusterManager, coordinator: Coordinator, zone: string, replacementDelayMs: number, failoverWaitMs: number) {
    this.#host = host
    this.#cluster = cluster
    this.#coordinator = coordinator
    this.#zone = zone
    const manager = this
    this.#core = {
      nodeId: cluster.nodeId,
      failoverWaitMs,
      outgoing: new OutgoingWrites(cluster.nodeId),
      host,
      cluster,
      coordinator,
      sets: this.#sets,
      deleting: this.#deleting,
      get closed () { return manager.#closed },
      get closing () { return manager.#closing || manager.#closed },
      setOf: (volumeId, position) => this.#setOf(volumeId, position),
      forget: (volumeId) => { this.forget(volumeId) },
      dropCopy: (volumeId) => this.#dropCopy(volumeId),
      becomePrimary: (set, record) => { this.#roles.becomePrimary(set, record) },
      stepDown: (set, why) => { this.#roles.stepDown(set, why) },
      retire: (set, why) => { this.#roles.retire(set, why) },
      refresh: (set) => this.#roles.refresh(set),
      update: (volumeId, change) => this.update(volumeId, change)
    }
    this.#replica = new ReplicaSide(this.#core)
    this.#changes = new ReplicaSetChanges(this.#core)
    this.#roles = new Roles(this.#core, this, this.#changes)
    this.#records = new RecordUpdates(this.#core, this.#roles)
    this.#fence = new LeaseFence(this.#core, this.#roles)
    this.#leader = new FailoverLeader(this.#core, replacementDelayMs)
    // A node back in the cluster: the links to it retry now, not when their back-off ends.
    this.#stopMemberBack = cluster.onMemberBack((nodeId) => {
      for (const set of this.#sets.values()) set.primary?.peerBack(nodeId)
    })
    this.#stopLeaseWatch = cluster.onLeaseChange((held) => { this.#fence.changed(held) })
  }

  readonly #stopMemberBack: () => void
  readonly #stopLeaseWatch: () => void

  get nodeId (): string { return this.#cluster.nodeId }

  /** Registers the handlers, loads the records of local copies and takes up each copy's role. */
  static async start (host: ReplicationHost, cluster: ClusterManager, coordinator: Coordinator, zone: string, options: { replacementDelayMs?: number, failoverWaitMs?: number } = {}): Promise<ReplicationManager> {
    const manager = new ReplicationManager(host, cluster, coordinator, zone, options.replacementDelayMs ?? DEFAULT_REPLACEMENT_DELAY_MS, options.failoverWaitMs ?? DEFAULT_FAILOVER_WAIT_MS)
    // Local copies first, with their saved positions: a peer's message may come as soon as the
    // handlers are in place.
    const copies = host.localCopies()
    for (const copy of copies) manager.#setOf(copy.id, copy.position)
    manager.#replica.register()
    manager.#stopWatch = coordinator.watch(RECORD_PREFIX, (event) => { manager.#roles.watched(event) })
    try {
      for (const copy of copies) await manager.#roles.takeUpAtStart(manager.#setOf(copy.id))
    } catch (err) {
      await manager.close().catch(() => {})
      throw err
    }
    // Marks that still name this node although its copy is gone (deleted at an open's recovery, or
    // taking the node off failed): it comes off them now, so that they go once every copy has.
    void leaveDeletionMarks(manager.#core)
    // Lists of given-up copies that name this node although it holds no such copy (its disk was
    // replaced, or it was placed again): it comes off them, so that deletion marks do not name it.
    void leaveDroppedLists(manager.#core)
    let ticks = 0
    manager.#leaderTimer = setInterval(() => {
      void manager.#leader.pass()
      // A leaving mark this node left behind (see clearStaleMark) is looked for every few seconds.
      if (++ticks % STALE_MARK_TICKS === 0 && !manager.#closed) {
        manager.#changes.clearStaleMark().catch(() => {})
        // So are deletion marks naming this node while it holds no copy (a lost create's sweep
        // names every node of the record it removes, copies made or not; see ReplicaSetLifecycle).
        void leaveDeletionMarks(manager.#core)
      }
    }, LEADER_LOOP_MS)
    manager.#leaderTimer.unref()
    return manager
  }

  #setOf (volumeId: string, position: ReplicaPosition = { epoch: 0, seq: 0 }): LocalSet {
    let set = this.#sets.get(volumeId)
    if (set === undefined) {
      set = newLocalSet(volumeId, position)
      set.fenced = this.#fence.lost
      this.#sets.set(volumeId, set)
    }
    return set
  }

  /** Whether I/O on this volume must go to another node (the primary). */
  forwards (volumeId: string): boolean {
    const set = this.#sets.get(volumeId)
    return set !== undefined && (set.primary === undefined || set.primary.frozen || set.fenced)
  }

  /** Whether the volume is replicated (this node holds a copy). */
  holds (volumeId: string): boolean {
    return this.#sets.has(volumeId)
  }

  /**
   * Checks up front that a replicated concern can be met now, so that a write that cannot be is
   * refused before anything is written.
   */
  checkConcern (volumeId: string, concern: WriteConcern): void {
    if (concern !== WriteConcern.WriteReplicated && concern !== WriteConcern.WriteDistributed) return
    const primary = this.#sets.get(volumeId)?.primary
    if (primary === undefined) return
    const failure = primary.possible(concern)
    if (failure !== undefined) throw unsatisfied(`${failure}. Nothing was written`)
  }

  /**
   * Resolves once every in-sync copy has every change the primary recorded so far (at once when
   * this node is not the primary, or no other copy is in sync).
   */
  async replicated (volumeId: string): Promise<void> {
    const primary = this.#sets.get(volumeId)?.primary
    if (primary === undefined || primary.seq === 0) return
    await this.replicatedChange(primary, primary.seq)
  }

  /**
   * Resolves once the change `seq` that `by` recorded (the volume's replicator on this node when
   * the change was made) is on every in-sync copy, or at once when the volume has no in-sync copy on
   * another node; rejects when `by` stopped leading first: the next primary may lack the change.
   */
  async replicatedChange (by: VolumeReplicator, seq: number): Promise<void> {
    if (!(by instanceof Primary)) return
    if (!by.stopped && by.possible(WriteConcern.WriteReplicated) !== undefined) return
    try {
      await by.committed(seq, WriteConcern.WriteReplicated)
    } catch (err) {
      // Every other copy left the in-sync list while this waited: as when none was in sync at the
      // start, there is no in-sync copy left to wait for. (A node that stopped leading meanwhile
      // still fails: the next primary may lack what was written here.)
      if (!by.stopped && by.possible(WriteConcern.WriteReplicated) !== undefined) return
      throw err
    }
  }

  /**
   * The sequence number of the last change `by` (a volume's replicator on this node) recorded, or
   * undefined when it is not this node's primary: what a call answered from an earlier attempt's
   * change waits for (see replicatedChange), which covers that change.
   */
  recordedSeq (by: VolumeReplicator): number | undefined {
    return by instanceof Primary ? by.seq : undefined
  }

  // ------------------------------------------------------------------ creating and deleting

  /** Makes a freshly created local volume replicated (see ReplicaSetChanges.register). */
  register (spec: VolumeSpec, options: Omit<PlacementRequest, 'replicas' | 'preferredPrimary' | 'current'> = {}, wait = true): Promise<ReplicaSetRecord> {
    return this.#changes.register(spec, options, wait)
  }

  /** Deletes a replicated volume everywhere (called on the primary, before the local copy goes). */
  unregister (volumeId: string): Promise<void> {
    return this.#changes.unregister(volumeId)
  }

  /** Makes a replicated volume with this node's copy alone a local volume again (see ReplicaSetChanges.dissolve). */
  dissolve (volumeId: string, formerNodes: readonly string[], local: () => Promise<void>): Promise<boolean> {
    return this.#changes.dissolve(volumeId, formerNodes, local)
  }

  /** Copies being deleted by this manager (their sets forgotten, the local volume not gone yet). */
  readonly #deleting = new Set<string>()

  /** Forgets the set of a copy and deletes the copy; meanwhile resyncs of it are refused (see ReplicaSide.register). */
  async #dropCopy (volumeId: string): Promise<void> {
    this.forget(volumeId)
    this.#deleting.add(volumeId)
    try {
      await this.#host.deleteCopy(volumeId)
    } finally {
      this.#deleting.delete(volumeId)
    }
  }

  /**
   * The local copy of a volume this node deleted with unregister is gone: this node comes off the
   * volume's deletion mark (see deletedKey). Best effort: the next start looks again.
   */
  async copyGone (volumeId: string): Promise<void> {
    await clearDeletionMark(this.#coordinator, volumeId, [this.nodeId]).catch(() => {})
  }

  /**
   * Whether this node's copy of a volume is one the cluster has no record of (read now):
   * 'deleted' when the volume's deletion mark names this node (the volume was deleted, the copy
   * goes), 'unrecorded' when no mark does (a coordinator that lost the record: only the caller may
   * decide it goes; a copy given up before the deletion is named by the mark, see droppedNodes),
   * undefined while the record is there
   * or this node holds no copy.
   */
  orphan (volumeId: string): Promise<'deleted' | 'unrecorded' | undefined> {
    return orphanState(this.#core, volumeId)
  }

  /**
   * Whether the volume's record is gone from the cluster (read now): it was deleted. This node's
   * copy, if it still holds one, then goes as the deletion mark says (as when the record's watch
   * reports the deletion, which may not have come yet), and is gone when this resolves.
   */
  deletedInCluster (volumeId: string): Promise<boolean> {
    return recordDeleted(this.#core, this.#roles, volumeId)
  }

  /**
   * Forgets `node`, gone for good (no longer a member: the caller checked): its copies are given up
   * at once, without waiting for the replacement delay (the leader then places new ones), and it
   * comes off every list of given-up copies and every deletion mark. Refused with BUSY, before
   * anything changes, while it is the primary of a volume (then no other node has an up-to-date
   * copy: failover would have promoted it). Resolves to the volumes whose copies it gave up, the
   * records whose lists it came off and the deletion marks it came off.
   */
  forgetNode (node: string): Promise<{ copies: string[], droppedLists: string[], deletionMarks: string[] }> {
    return forgetGoneNode(this.#core, node)
  }

  /** Forgets a local copy that was deleted here. */
  forget (volumeId: string): void {
    const set = this.#sets.get(volumeId)
    if (set === undefined) return
    this.#roles.retire(set, 'the local copy was deleted')
    clearTimeout(set.saveTimer)
    this.#sets.delete(volumeId)
  }

  // ------------------------------------------------------------------ leaving, moving, reshaping

  /** Whether this node is handing its copies off to leave the cluster (from handOff until releaseLeavingMark). */
  get leaving (): boolean {
    return this.#changes.handingOff
  }

  /** Before this node leaves the cluster: every copy it holds is handed off (see ReplicaSetChanges.handOff). */
  handOff (options: { timeoutMs?: number } = {}): Promise<void> {
    return this.#changes.handOff(options)
  }

  /** The node has left, or its leave failed: its leaving mark goes (see ReplicaSetChanges.releaseLeavingMark). */
  releaseLeavingMark (): Promise<void> {
    return this.#changes.releaseLeavingMark()
  }

  /**
   * Stops a hand-off under way (see handOff): it rejects with `err` at its next step. close() calls
   * it before it waits for a leave, which otherwise waits, up to its deadline, for new copies that
   * a closing instance no longer fills.
   */
  cancelHandOff (err: Error): void {
    this.#changes.cancelHandOff(err)
  }

  /** Moves this node's copy of a volume to node `to`; resolves once it is gone (see ReplicaSetChanges.moveCopy). */
  moveCopy (volumeId: string, to: string, options: { timeoutMs?: number, signal?: AbortSignal } = {}): Promise<void> {
    return this.#changes.moveCopy(volumeId, to, options)
  }

  /** Changes the storage class of a replicated volume in its record; returns the record as it was (see ReplicaSetChanges.reshape). */
  reshape (volumeId: string, change: { storageClass: string, replicas: number, pool?: string, encrypted?: boolean, keep?: string }, placement: Omit<PlacementRequest, 'replicas' | 'preferredPrimary' | 'current'>): Promise<ReplicaSetRecord> {
    return this.#changes.reshape(volumeId, change, placement)
  }

  /** Puts a volume's record back as `reshape` found it, unless it changed otherwise since (see ReplicaSetChanges.unshape). */
  unshape (volumeId: string, before: ReplicaSetRecord, change: { storageClass: string, replicas: number, pool?: string }): Promise<void> {
    return this.#changes.unshape(volumeId, before, change)
  }

  /** How each copy of a volume stands against the class of its record (asks the other nodes). */
  copyLayouts (volumeId: string, retry = false): Promise<{ record: ReplicaSetRecord, layouts: Array<CopyLayout & { node: string, unreachable?: string }> } | undefined> {
    return this.#changes.copyLayouts(volumeId, retry)
  }

  /** What holds a volume on the other nodes of its record: asked of each (see attachments.ts). */
  usersElsewhere (volumeId: string): Promise<UsersElsewhere> {
    return usersElsewhere(this.#core, volumeId)
  }

  /** The spec in the record of a volume this node holds a copy of, as last read. */
  spec (volumeId: string): VolumeSpec | undefined {
    return this.#sets.get(volumeId)?.record?.spec
  }

  /** This node's copy now lives in `blocks` (a live migration moved it): the primary, if here, ships from there. */
  rebind (volumeId: string, blocks: VolumeBlocks): void {
    this.#sets.get(volumeId)?.primary?.rebind(blocks)
  }

  /**
   * Compare-and-swap on a volume's record: `change` returns the new record, or undefined to leave
   * it. Retried on conflicts; resolves to the record written, or undefined. A write whose answer
   * is lost is settled (see RecordUpdates#settle): written, it counts; otherwise the call fails
   * with the write's error, and the write can no longer apply (fenced off), or, when that could
   * not be told, may still: the next update() of the volume settles it before reading the record.
   */
  update (volumeId: string, change: (record: ReplicaSetRecord) => ReplicaSetRecord | undefined): Promise<{ record: ReplicaSetRecord, revision: number } | undefined> {
    return this.#records.update(volumeId, change)
  }

  /** Whether a write of the volume's record may still be applied (its outcome is not settled yet). */
  hasUnsettled (volumeId: string): boolean {
    return this.#records.hasUnsettled(volumeId)
  }

  /**
   * Settles the volume's unsettled record writes (see RecordUpdates#settle), trying again every
   * `retryMs` while the coordinator cannot tell, until `stop()` says to give up. True once nothing
   * is unsettled.
   */
  settleAll (volumeId: string, stop: () => boolean, retryMs = 250): Promise<boolean> {
    return this.#records.settleAll(volumeId, stop, retryMs)
  }

  zoneOf (nodeId: string): string | undefined {
    if (nodeId === this.nodeId) return this.#zone
    return this.#cluster.members.find((m) => m.id === nodeId)?.zone
  }

  get zone (): string { return this.#zone }
  get host (): ReplicationHost { return this.#host }

  async request (nodeId: string, message: TransportMessage, timeoutMs: number): Promise<TransportMessage> {
    return await this.#cluster.request(nodeId, message, { timeoutMs })
  }

  // ------------------------------------------------------------------ forwarding

  /**
   * Sends an I/O call to the volume's primary and returns its reply. Waits through a failover
   * (until a primary answers, up to ClusterOptions.failoverWaitMs, 30 s by default). A control
   * call (a snapshot, a deletion, a revert, an
   * expansion, a key rotation) that carries a token is sent again, like I/O, when its answer is
   * lost: the primary that gets it again (the same one, or the next) knows it by its token, or by
   * `repeat`, and answers with what the first attempt did rather than do it twice. An error
   * thrown after an attempt that may have taken effect says so (see outcomeUnknown). An attempt
   * refused before it ran (see refusedBeforeRunning: a primary that is starting), or that this
   * node's transport never sent (see isNotSent: the primary's address refused the connection), is not one.
   */
  forward (volumeId: string, request: ForwardedRequest, payload?: Uint8Array): Promise<TransportMessage> {
    return forwardToPrimary(this.#core, volumeId, request, payload)
  }

  /** A new identity for a write this node forwards (see OutgoingWrites.begin); writeDone() once its caller has its answer. */
  beginWrite (): WriterId {
    return this.#core.outgoing.begin()
  }

  writeDone (writer: WriterId): void {
    this.#core.outgoing.end(writer)
  }

  /** Whether `writer` is this node's own (see OutgoingWrites): a forwarded write served here carries its sending node's. */
  ownsWriter (writer: WriterId): boolean {
    return writer.origin === this.#core.outgoing.origin
  }

  /** The refusal of a write another node forwarded here that this node does not run as the volume's primary (see notServingRefusal). */
  notServing (volumeId: string): GalleonError {
    return notServingRefusal(this.nodeId, volumeId, this.#sets.get(volumeId)?.record?.primary)
  }

  /** The forwarded writes this node's copy of a volume holds (undefined: it holds no copy). */
  writeLedger (volumeId: string): WriteLedger | undefined {
    return this.#sets.get(volumeId)?.writes
  }

  /**
   * Answers a repeat of a forwarded write this node (the volume's primary) holds already, made by
   * an earlier attempt here or at a former primary: once what it holds meets `concern` (synced
   * here; on the in-sync copies for the replicated ones, which hold all this primary recorded so
   * far or was resynced from). Rejects with NOT_LEADER when this node is not the primary.
   */
  async settleRepeat (volumeId: string, concern: WriteConcern): Promise<void> {
    const primary = this.#sets.get(volumeId)?.primary
    if (primary === undefined || primary.stopped) throw new GalleonError('NOT_LEADER', `node ${this.nodeId} is not the primary of volume ${volumeId} now; ask its primary`)
    if (concern !== WriteConcern.WriteAcknowledged) await this.#host.engine.flush()
    if (concern !== WriteConcern.WriteReplicated && concern !== WriteConcern.WriteDistributed) return
    const why = primary.possible(concern)
    if (why !== undefined) throw unsatisfied(`${why}. The write is stored on this node but not acknowledged as ${concern}`)
    if (primary.seq > 0) await primary.committed(primary.seq, concern)
  }

  // ------------------------------------------------------------------ status

  status (volumeId: string): ReplicationStatus | undefined {
    const set = this.#sets.get(volumeId)
    if (set === undefined) return undefined
    const record = set.record
    return {
      volumeId,
      role: set.fenced ? 'unknown' : set.primary !== undefined ? 'primary' : record === undefined ? 'unknown' : 'replica',
      primary: record?.primary,
      epoch: record?.epoch,
      nodes: record?.nodes ?? [],
      inSync: record?.inSync ?? [],
      replicas: record?.spec.replicas ?? 0,
      degraded: record === undefined || record.inSync.length < record.spec.replicas,
      streamBufferBytes: set.primary?.arenaChunkBytes ?? 0,
      links: set.primary?.linkStatus() ?? []
    }
  }

  /** Every replicated volume this node holds, for metrics. */
  statuses (): ReplicationStatus[] {
    return [...this.#sets.keys()].map((id) => this.status(id)).filter((s): s is ReplicationStatus => s !== undefined)
  }

  /**
   * The instance is closing (its mounts, files and NBD clients closed): this node takes no new copy
   * or resync from now on, and hands the primary roles it holds to in-sync copies (see
   * close-handover.ts). Never throws.
   */
  async handOverAtClose (): Promise<void> {
    this.#closing = true
    await handOverAtClose(this.#core)
  }

  async close (): Promise<void> {
    this.#closed = true
    this.#stopMemberBack()
    this.#stopLeaseWatch()
    clearInterval(this.#leaderTimer)
    this.#stopWatch?.()
    for (const set of this.#sets.values()) {
      this.#roles.retire(set, 'the node is closing')
      clearTimeout(set.saveTimer)
      await set.chain.catch(() => {})
      if (set.primary === undefined && set.record !== undefined) await this.#host.savePosition(set.volumeId, set.durable).catch(() => {})
    }
  }
}
