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
// and its stream to each copy), replica.ts (the replica side), replica-sets.ts (creating, deleting,
// handing off, moving and reshaping replica sets), failover.ts (the cluster leader's passes).

import { setTimeout as sleep } from 'node:timers/promises'
import { GalleonError } from '../errors.js'
import type { Coordinator, TransportMessage } from '../drivers.js'
import { isNotSent } from '../abstract-transport.js'
import { refusedBeforeRunning, type ClusterManager } from '../cluster/manager.js'
import type { PlacementRequest } from '../cluster/placement.js'
import { settleLostPut, type SettledPut } from '../cluster/lost-write.js'
import type { VolumeBlocks } from '../engine/engine.js'
import type { VolumeReplicator } from '../engine/replicator.js'
import { WriteConcern } from '../types.js'
import { RECORD_PREFIX, deletedKey, offDropped, parseDeleted, parseRecord, recordKey, type ReplicaSetRecord, type VolumeSpec } from './records.js'
import { errorText, markOutcomeUnknown, newLocalSet, unsatisfied, type LocalSet, type ManagerCore } from './common.js'
import type { CopyLayout, ForwardedRequest, ReplicaPosition, ReplicationHost, ReplicationStatus } from './host.js'
import { Primary } from './primary.js'
import { ReplicaSide, ioRefusedBeforeRunning } from './replica.js'
import { ReplicaSetChanges, clearDeletionMark } from './replica-sets.js'
import { FailoverLeader } from './failover.js'

export type { ReplicaPosition, SnapshotInfo, ReplicationHost, CopyLayout, ReplicationEvents, ForwardedRequest, ReplicationStatus } from './host.js'

const LEADER_LOOP_MS = 1000
/** Every this many leader-loop ticks, a node deletes a leaving mark of its own it is not using. */
const STALE_MARK_TICKS = 5
/** How long a copy's node may be unhealthy before the leader replaces the copy (ClusterOptions.replicaReplacementDelayMs). */
const DEFAULT_REPLACEMENT_DELAY_MS = 600_000
const FORWARD_DEADLINE_MS = 30_000
/** Forwarded calls that change a volume other than by I/O: one whose answer was lost is sent again marked `repeat` (see forward). */
const CONTROL_OPS = new Set<ForwardedRequest['op']>(['createSnapshot', 'deleteSnapshot', 'deleteVolume', 'restoreSnapshot', 'expandVolume', 'rotateVolumeKey'])
/** Those of them that done twice differ from done once: sent again only with a token. */
const ONCE_OPS = new Set<ForwardedRequest['op']>(['createSnapshot', 'deleteSnapshot', 'deleteVolume', 'restoreSnapshot'])
/**
 * How long one forwarded call may take on the primary: it runs there as the primary's own, which
 * may wait for QoS admission and for its copies (COMMIT_WAIT_MS, 60 s), so a shorter limit cut off
 * calls the primary was still working on, and sent them again.
 */
const FORWARD_ANSWER_MS = 75_000
/** Coordinator key prefix of the deletion marks (see deletedKey). */
const DELETED_PREFIX = deletedKey('')

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
  /** What the parts below reach of this manager. */
  readonly #core: ManagerCore
  readonly #replica: ReplicaSide
  readonly #changes: ReplicaSetChanges
  readonly #leader: FailoverLeader

  private constructor (host: ReplicationHost, cluster: ClusterManager, coordinator: Coordinator, zone: string, replacementDelayMs: number) {
    this.#host = host
    this.#cluster = cluster
    this.#coordinator = coordinator
    this.#zone = zone
    const manager = this
    this.#core = {
      nodeId: cluster.nodeId,
      host,
      cluster,
      coordinator,
      sets: this.#sets,
      deleting: this.#deleting,
      get closed () { return manager.#closed },
      setOf: (volumeId, position) => this.#setOf(volumeId, position),
      forget: (volumeId) => { this.forget(volumeId) },
      dropCopy: (volumeId) => this.#dropCopy(volumeId),
      becomePrimary: (set, record) => { this.#becomePrimary(set, record) },
      stepDown: (set, why) => { this.#stepDown(set, why) },
      retire: (set, why) => { this.#retire(set, why) },
      refresh: (set) => this.#refresh(set),
      update: (volumeId, change) => this.update(volumeId, change)
    }
    this.#replica = new ReplicaSide(this.#core)
    this.#changes = new ReplicaSetChanges(this.#core)
    this.#leader = new FailoverLeader(this.#core, replacementDelayMs)
    // A node back in the cluster: the links to it retry now, not when their back-off ends.
    this.#stopMemberBack = cluster.onMemberBack((nodeId) => {
      for (const set of this.#sets.values()) set.primary?.peerBack(nodeId)
    })
    this.#stopLeaseWatch = cluster.onLeaseChange((held) => { this.#leaseChanged(held) })
  }

  readonly #stopMemberBack: () => void
  readonly #stopLeaseWatch: () => void
  /** This node's lease ended and no new one is held yet (see LocalSet.fenced). */
  #leaseLost = false
  /** Bumped at every loss of the lease: an unfence whose awaits spanned a loss (and a new lease) starts over. */
  #leaseLosses = 0

  /**
   * Fencing by lease: once this node's lease ends (its own deadline, which passes before the
   * coordinator expires the lease and so before any failover), its primaries serve nothing; once it
   * holds a new lease, each volume's record is read again (a failover meanwhile makes this node step
   * down) before its primary serves again.
   */
  #leaseChanged (held: boolean): void {
    this.#leaseLost = !held
    if (!held) {
      this.#leaseLosses++
      for (const set of this.#sets.values()) {
        set.fenced = true
        if (set.primary !== undefined) this.#host.emit('replication:error', { volumeId: set.volumeId, nodeId: this.nodeId, code: 'NOT_LEADER', message: `node ${this.nodeId} lost its cluster lease (its keepalives did not reach the coordinator in time): as the primary of volume ${set.volumeId} it serves no I/O until it holds a lease again and the volume's record says it is still the primary` })
      }
      return
    }
    for (const set of this.#sets.values()) if (set.fenced) void this.#unfence(set)
  }

  /** Reads the volume's record again (retrying while the coordinator does not answer), then lets the set serve. */
  async #unfence (set: LocalSet): Promise<void> {
    const current = (losses: number): boolean => losses === this.#leaseLosses && !this.#leaseLost && set.fenced && !this.#closed && this.#sets.get(set.volumeId) === set
    // One unfence per lease: a loss meanwhile ends this one (the next lease starts its own).
    const losses = this.#leaseLosses
    let garbledReported = false
    for (let delayMs = 100; current(losses); delayMs = Math.min(delayMs * 2, 2000)) {
      let read: { entry: Awaited<ReturnType<Coordinator['get']>> } | undefined
      try {
        read = { entry: await this.#coordinator.get(recordKey(set.volumeId)) }
      } catch {
        read = undefined
      }
      // A lease lost (and maybe got back) meanwhile, or the set gone: this read counts for nothing.
      if (!current(losses)) return
      if (read !== undefined) {
        const entry = read.entry
        const record = entry === undefined ? undefined : parseRecord(entry.value)
        if (record !== undefined && entry !== undefined && record.primary === this.nodeId) {
          // Still named primary: the record is written back unchanged at the revision read, so a
          // failover the cluster leader decided while this node was away (a compare-and-swap at
          // that revision, still on its way) can no longer land after this node serves again; if
          // it landed first, this write fails and the next read shows the new primary.
          const written = await this.#coordinator.put(recordKey(set.volumeId), entry.value, { expectRevision: entry.revision }).catch(() => undefined)
          if (!current(losses)) return
          if (written !== undefined) {
            this.#adopt(set, record, written.revision)
            set.fenced = false
            return
          }
        } else if (entry !== undefined && record === undefined) {
          // A record that cannot be read as one (damaged, another format) confirms nothing: the
          // copy stays fenced and reads it again, saying so once.
          if (!garbledReported) this.#host.emit('replication:error', { volumeId: set.volumeId, nodeId: this.nodeId, code: 'CORRUPTION', message: `the cluster's record of volume ${set.volumeId} cannot be read as a replica-set record, so node ${this.nodeId} cannot confirm it is still the primary: it serves no I/O for the volume until the record reads right again` })
          garbledReported = true
        } else {
          if (record !== undefined && entry !== undefined) this.#adopt(set, record, entry.revision)
          // Deleted meanwhile, and the watch's delete not here yet (a watch that reconnects after
          // the outage delivers it late): taken as that delete now, so the copy serves nothing.
          else if (entry === undefined && set.record !== undefined) this.#recordGone(set)
          set.fenced = false
          return
        }
      }
      await sleep(delayMs, undefined, { ref: false })
    }
  }

  get nodeId (): string { return this.#cluster.nodeId }

  /** Registers the handlers, loads the records of local copies and takes up each copy's role. */
  static async start (host: ReplicationHost, cluster: ClusterManager, coordinator: Coordinator, zone: string, options: { replacementDelayMs?: number } = {}): Promise<ReplicationManager> {
    const manager = new ReplicationManager(host, cluster, coordinator, zone, options.replacementDelayMs ?? DEFAULT_REPLACEMENT_DELAY_MS)
    // Local copies first, with their saved positions: a peer's message may come as soon as the
    // handlers are in place.
    const copies = host.localCopies()
    for (const copy of copies) manager.#setOf(copy.id, copy.position)
    manager.#replica.register()
    manager.#stopWatch = coordinator.watch(RECORD_PREFIX, (event) => {
      const volumeId = event.key.slice(RECORD_PREFIX.length)
      const set = manager.#sets.get(volumeId)
      if (set === undefined) return
      if (event.type === 'delete') { manager.#recordGone(set); return }
      const record = event.entry === undefined ? undefined : parseRecord(event.entry.value)
      if (record !== undefined && event.entry !== undefined) manager.#adopt(set, record, event.entry.revision)
    })
    try {
      for (const copy of copies) {
        const set = manager.#setOf(copy.id)
        const entry = await coordinator.get(recordKey(copy.id))
        const record = entry === undefined ? undefined : parseRecord(entry.value)
        if (record === undefined || entry === undefined) {
          // Deleted while this node was away (its deletion mark says so): the copy goes too.
          if (await manager.#dropIfDeleted(set)) continue
          set.unrecorded = set.record === undefined
          host.emit('replication:error', { volumeId: copy.id, nodeId: cluster.nodeId, code: 'VOLUME_NOT_FOUND', message: `the cluster has no record of this replicated volume, and no mark of its deletion that names node ${cluster.nodeId}; the local copy is kept but serves no I/O (deleteVolume(${JSON.stringify(copy.id)}, { force: true }) on this node deletes it)` })
          continue
        }
        // An expansion recorded in the cluster that this copy never got (the node stopped between
        // the two): it grows now, before it serves or receives anything.
        if (record.spec.sizeBytes > (host.blocks(copy.id)?.sizeBytes ?? Infinity)) await host.applyExpand(copy.id, record.spec.sizeBytes)
        if (record.primary === cluster.nodeId) {
          // This node was primary before it stopped: it takes the role again under a new epoch, so
          // that anything its earlier incarnation sent is fenced off.
          await manager.#reclaim(set)
        } else if (!record.nodes.includes(cluster.nodeId)) {
          // Replaced while this node was away: another node holds the copy now.
          await manager.#dropStale(set, record)
        } else {
          manager.#adopt(set, record, entry.revision)
        }
      }
    } catch (err) {
      await manager.close().catch(() => {})
      throw err
    }
    // Marks that still name this node although its copy is gone (deleted at an open's recovery, or
    // taking the node off failed): it comes off them now, so that they go once every copy has.
    void manager.#leaveDeletionMarks()
    // Lists of given-up copies that name this node although it holds no such copy (its disk was
    // replaced, or it was placed again): it comes off them, so that deletion marks do not name it.
    void manager.#leaveDroppedLists()
    let ticks = 0
    manager.#leaderTimer = setInterval(() => {
      void manager.#leader.pass()
      // A leaving mark this node left behind (see clearStaleMark) is looked for every few seconds.
      if (++ticks % STALE_MARK_TICKS === 0 && !manager.#closed) {
        manager.#changes.clearStaleMark().catch(() => {})
        // So are deletion marks naming this node while it holds no copy (a lost create's sweep
        // names every node of the record it removes, copies made or not; see #sweepLostCreate).
        void manager.#leaveDeletionMarks()
      }
    }, LEADER_LOOP_MS)
    manager.#leaderTimer.unref()
    return manager
  }

  #setOf (volumeId: string, position: ReplicaPosition = { epoch: 0, seq: 0 }): LocalSet {
    let set = this.#sets.get(volumeId)
    if (set === undefined) {
      set = newLocalSet(volumeId, position)
      set.fenced = this.#leaseLost
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
  async orphan (volumeId: string): Promise<'deleted' | 'unrecorded' | undefined> {
    if (!this.#sets.has(volumeId)) return undefined
    if (await this.#coordinator.get(recordKey(volumeId)) !== undefined) return undefined
    const mark = await this.#coordinator.get(deletedKey(volumeId))
    return mark !== undefined && (parseDeleted(mark.value) ?? []).includes(this.nodeId) ? 'deleted' : 'unrecorded'
  }

  /**
   * Whether the volume's record is gone from the cluster (read now): it was deleted. This node's
   * copy, if it still holds one, then goes as the deletion mark says (as when the record's watch
   * reports the deletion, which may not have come yet), and is gone when this resolves.
   */
  async deletedInCluster (volumeId: string): Promise<boolean> {
    if (await this.#coordinator.get(recordKey(volumeId)) !== undefined) return false
    const set = this.#sets.get(volumeId)
    if (set !== undefined) {
      this.#retire(set, 'the replica-set record was deleted')
      set.record = undefined
      await this.#dropIfDeleted(set)
    }
    return true
  }

  /** Takes this node off the deletion marks that name it while it holds no copy of their volume. */
  async #leaveDeletionMarks (): Promise<void> {
    try {
      for (const entry of await this.#coordinator.list(DELETED_PREFIX)) {
        const volumeId = entry.key.slice(DELETED_PREFIX.length)
        if (this.#closed) return
        if (!(parseDeleted(entry.value) ?? []).includes(this.nodeId) || this.#sets.has(volumeId) || this.#deleting.has(volumeId) || this.#host.blocks(volumeId) !== undefined) continue
        await clearDeletionMark(this.#coordinator, volumeId, [this.nodeId])
      }
    } catch {
      // The next start looks again.
    }
  }

  /** Takes this node off the droppedNodes of records that list it while it holds no given-up copy of their volume. */
  async #leaveDroppedLists (): Promise<void> {
    const self = this.nodeId
    const holdsGivenUp = (record: ReplicaSetRecord): boolean => !record.nodes.includes(self) && (this.#sets.has(record.spec.id) || this.#deleting.has(record.spec.id) || this.#host.blocks(record.spec.id) !== undefined)
    try {
      for (const entry of await this.#coordinator.list(RECORD_PREFIX)) {
        if (this.#closed) return
        const record = parseRecord(entry.value)
        if (record === undefined || record.droppedNodes?.includes(self) !== true || holdsGivenUp(record)) continue
        await this.update(record.spec.id, (current) => {
          if (current.droppedNodes?.includes(self) !== true || holdsGivenUp(current)) return undefined
          return offDropped(current, self)
        })
      }
    } catch {
      // The next start looks again.
    }
  }

  /**
   * Forgets `node`, gone for good (no longer a member: the caller checked): its copies are given up
   * at once, without waiting for the replacement delay (the leader then places new ones), and it
   * comes off every list of given-up copies and every deletion mark. Refused with BUSY, before
   * anything changes, while it is the primary of a volume (then no other node has an up-to-date
   * copy: failover would have promoted it). Resolves to the volumes whose copies it gave up, the
   * records whose lists it came off and the deletion marks it came off.
   */
  async forgetNode (node: string): Promise<{ copies: string[], droppedLists: string[], deletionMarks: string[] }> {
    if (node === this.nodeId) throw new GalleonError('INVALID_ARGUMENT', `node ${node} is this node; a node leaves with leaveCluster(), and another node forgets it once it is gone`)
    const member = (await this.#coordinator.members()).find((m) => m.id === node)
    if (member !== undefined) {
      throw new GalleonError('BUSY', member.healthy
        ? `node ${node} is a healthy member of the cluster; only a node that is gone for good can be forgotten (stop it, or let it leave with leaveCluster())`
        : `node ${node} is still a member of the cluster (unhealthy: its lease ended); it is removed once twice leaseTtlMs have passed since it stopped (at most leaseTtlMs after its lease ended), forget it then`)
    }
    const entries = await this.#coordinator.list(RECORD_PREFIX)
    const ledRecords = entries.map((entry) => parseRecord(entry.value)).filter((record): record is ReplicaSetRecord => record?.primary === node)
    // Another in-sync copy: the leader's next failover pass (within seconds) promotes it.
    const failingOver = ledRecords.filter((record) => record.inSync.some((n) => n !== node)).map((record) => record.spec.id)
    if (failingOver.length > 0) throw new GalleonError('BUSY', `node ${node} is still the primary of volume${failingOver.length === 1 ? '' : 's'} ${failingOver.join(', ')}, which the cluster leader has not failed over to another in-sync copy yet; try again in a few seconds`)
    const led = ledRecords.map((record) => record.spec.id)
    if (led.length > 0) throw new GalleonError('BUSY', `node ${node} is the primary of volume${led.length === 1 ? '' : 's'} ${led.join(', ')}, and no other node has an up-to-date copy to take over: forgetting it would lose ${led.length === 1 ? 'that volume' : 'those volumes'}. Bring the node back (its copy then leads again), or delete the volume${led.length === 1 ? '' : 's'} first`)
    const marks = (await this.#coordinator.list(DELETED_PREFIX)).filter((entry) => (parseDeleted(entry.value) ?? []).includes(node))
    const named = entries.some((entry) => { const record = parseRecord(entry.value); return record !== undefined && (record.nodes.includes(node) || record.droppedNodes?.includes(node) === true) })
    if (!named && marks.length === 0) throw new GalleonError('INVALID_ARGUMENT', `nothing in the cluster names node ${node}: it is no member, holds no copy and is waited for by no deletion (a mistyped id? clusterStatus() lists the members)`)
    const copies: string[] = []
    const droppedLists: string[] = []
    for (const entry of entries) {
      const record = parseRecord(entry.value)
      if (record === undefined || (!record.nodes.includes(node) && record.droppedNodes?.includes(node) !== true)) continue
      const volumeId = record.spec.id
      let gaveUp = false
      const written = await this.update(volumeId, (current) => {
        if (current.primary === node) throw new GalleonError('BUSY', `node ${node} became the primary of volume ${volumeId} meanwhile; try again`)
        gaveUp = current.nodes.includes(node)
        if (!gaveUp && current.droppedNodes?.includes(node) !== true) return undefined
        return offDropped({ ...current, nodes: current.nodes.filter((n) => n !== node), inSync: current.inSync.filter((n) => n !== node) }, node)
      })
      if (written === undefined) continue
      if (gaveUp) {
        copies.push(volumeId)
        this.#host.emit('replication:replica-removed', { volumeId, nodes: [node], reason: `node ${node} was forgotten` })
      } else {
        droppedLists.push(volumeId)
      }
    }
    const deletionMarks: string[] = []
    for (const entry of marks) {
      const volumeId = entry.key.slice(DELETED_PREFIX.length)
      await clearDeletionMark(this.#coordinator, volumeId, [node])
      deletionMarks.push(volumeId)
    }
    return { copies, droppedLists, deletionMarks }
  }

  /** Forgets a local copy that was deleted here. */
  forget (volumeId: string): void {
    const set = this.#sets.get(volumeId)
    if (set === undefined) return
    this.#retire(set, 'the local copy was deleted')
    clearTimeout(set.saveTimer)
    this.#sets.delete(volumeId)
  }

  // ------------------------------------------------------------------ leaving, moving, reshaping

  /** Before this node leaves the cluster: every copy it holds is handed off (see ReplicaSetChanges.handOff). */
  handOff (options: { timeoutMs?: number } = {}): Promise<void> {
    return this.#changes.handOff(options)
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
  reshape (volumeId: string, change: { storageClass: string, replicas: number, pool?: string, keep?: string }, placement: Omit<PlacementRequest, 'replicas' | 'preferredPrimary' | 'current'>): Promise<ReplicaSetRecord> {
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

  /** The spec in the record of a volume this node holds a copy of, as last read. */
  spec (volumeId: string): VolumeSpec | undefined {
    return this.#sets.get(volumeId)?.record?.spec
  }

  /** This node's copy now lives in `blocks` (a live migration moved it): the primary, if here, ships from there. */
  rebind (volumeId: string, blocks: VolumeBlocks): void {
    this.#sets.get(volumeId)?.primary?.rebind(blocks)
  }

  // ------------------------------------------------------------------ roles

  /** A record was read or watched: take up the role it gives this node. */
  #adopt (set: LocalSet, record: ReplicaSetRecord, revision: number): void {
    if (revision < set.revision) return
    set.record = record
    set.revision = revision
    set.unrecorded = false
    if (!record.nodes.includes(this.nodeId) && record.primary !== this.nodeId && !this.#changes.handingOff && !this.#changes.isMoving(set.volumeId) && !this.#closed) {
      void this.#dropStale(set, record)
      return
    }
    // Only a copy the record keeps takes up its settings (a dropped one would start converting).
    if (record.nodes.includes(this.nodeId) || record.primary === this.nodeId) this.#host.applySpec(set.volumeId, record.spec)
    if (record.epoch > set.knownEpoch) set.knownEpoch = record.epoch
    const mine = record.primary === this.nodeId
    if (set.primary !== undefined) {
      if (!mine || record.epoch !== set.primary.epoch) {
        this.#stepDown(set, `node ${record.primary} is primary now (epoch ${record.epoch})`)
        return
      }
      set.primary.recordChanged(record)
      return
    }
    if (mine && !this.#closed) {
      if (record.epoch < set.knownEpoch) return
      this.#becomePrimary(set, record)
    }
  }

  /** Deletes the copy of a volume whose record no longer lists this node (it was replaced). */
  async #dropStale (set: LocalSet, record: ReplicaSetRecord): Promise<void> {
    if (this.#sets.get(set.volumeId) !== set) return
    this.#stepDown(set, 'its copy was replaced on another node')
    try {
      await this.#dropCopy(set.volumeId)
      this.#host.emit('replication:copy-dropped', { volumeId: set.volumeId, nodeId: this.nodeId, nodes: [...record.nodes] })
    } catch (err) {
      this.#host.emit('replication:error', { volumeId: set.volumeId, nodeId: this.nodeId, code: (err as { code?: string })?.code ?? 'IO_ERROR', message: `dropping the copy that was replaced on ${record.nodes.join(', ')}: ${(err as Error)?.message ?? String(err)}` })
      return
    }
    // The copy is gone: off the record's list of given-up copies (a deletion no longer needs to
    // name this node). Best effort: a deletion's mark naming it meanwhile costs only a key.
    try {
      await this.update(set.volumeId, (current) => {
        if (current.nodes.includes(this.nodeId) || current.droppedNodes?.includes(this.nodeId) !== true) return undefined
        return offDropped(current, this.nodeId)
      })
    } catch (err) {
      this.#host.emit('replication:error', { volumeId: set.volumeId, nodeId: this.nodeId, code: (err as { code?: string })?.code ?? 'IO_ERROR', message: `taking this node off the given-up copies of the volume's record (its copy is deleted): ${(err as Error)?.message ?? String(err)}` })
    }
  }

  #recordGone (set: LocalSet): void {
    this.#retire(set, 'the replica-set record was deleted')
    set.record = undefined
    // The volume was deleted while this copy was cut off from its primary (the repl:delete never
    // came): it goes now rather than stay a volume nobody else has.
    if (!this.#closed) void this.#dropIfDeleted(set)
  }

  /**
   * Deletes the copy of a volume whose record is gone if the volume's deletion mark (see
   * deletedKey) names this node; true if it did. A record missing without such a mark is left
   * alone: a wiped or replaced coordinator must not make every node delete its data, and a mark
   * names exactly the nodes the record placed copies on when the volume was deleted.
   */
  async #dropIfDeleted (set: LocalSet): Promise<boolean> {
    const volumeId = set.volumeId
    let mark: { value: string } | undefined
    try {
      mark = await this.#coordinator.get(deletedKey(volumeId))
    } catch (err) {
      this.#host.emit('replication:error', { volumeId, nodeId: this.nodeId, code: (err as { code?: string })?.code ?? 'BACKEND_UNAVAILABLE', message: `the record of this replicated volume is gone, and its deletion mark could not be read (the copy is kept; the next start looks again): ${(err as Error)?.message ?? String(err)}` })
      return false
    }
    if (mark === undefined || !(parseDeleted(mark.value) ?? []).includes(this.nodeId)) {
      // No deletion names this node: a copy the cluster has no record of (see LocalSet.unrecorded).
      if (this.#sets.get(volumeId) === set && set.record === undefined) set.unrecorded = true
      return false
    }
    if (this.#sets.get(volumeId) !== set || set.record !== undefined) return false
    try {
      await this.#dropCopy(volumeId)
    } catch (err) {
      this.#host.emit('replication:error', { volumeId, nodeId: this.nodeId, code: (err as { code?: string })?.code ?? 'IO_ERROR', message: `deleting the copy of a volume that was deleted while this node was away (the next start tries again): ${(err as Error)?.message ?? String(err)}` })
      return false
    }
    await clearDeletionMark(this.#coordinator, volumeId, [this.nodeId]).catch(() => {})
    return true
  }

  #becomePrimary (set: LocalSet, record: ReplicaSetRecord): void {
    const blocks = this.#host.blocks(set.volumeId)
    if (blocks === undefined || set.primary !== undefined) return
    const primary = new Primary(this, set, record, blocks)
    set.primary = primary
    blocks.replicator = primary
    // Our copy now leads; its place in any earlier epoch's stream means nothing any more.
    set.position = { epoch: 0, seq: 0 }
    set.durable = set.position
    void this.#host.savePosition(set.volumeId, set.position).catch(() => {})
    this.#host.emit('replication:primary', { volumeId: set.volumeId, nodeId: this.nodeId, epoch: record.epoch })
    primary.start()
  }

  #stepDown (set: LocalSet, why: string): void {
    if (set.primary === undefined) return
    this.#retire(set, `this node is no longer the primary: ${why}`)
    this.#host.emit('replication:demoted', { volumeId: set.volumeId, nodeId: this.nodeId, reason: why })
  }

  /** Stops this node's primary of a volume (if any) and unhooks it from the engine. */
  #retire (set: LocalSet, why: string): void {
    const primary = set.primary
    if (primary === undefined) return
    set.primary = undefined
    if (primary.blocks.replicator === primary) primary.blocks.replicator = undefined
    primary.stop(why)
  }

  /** After a restart as the recorded primary: raise the epoch and lead again. */
  async #reclaim (set: LocalSet): Promise<void> {
    const updated = await this.update(set.volumeId, (record) => record.primary !== this.nodeId ? undefined : { ...record, epoch: record.epoch + 1, inSync: [this.nodeId], handoff: undefined })
    if (updated === undefined) return
    this.#adopt(set, updated.record, updated.revision)
  }

  /** Reads the volume's record again and takes up the role it gives. */
  async #refresh (set: LocalSet): Promise<void> {
    const entry = await this.#coordinator.get(recordKey(set.volumeId)).catch(() => undefined)
    const record = entry === undefined ? undefined : parseRecord(entry.value)
    if (record !== undefined && entry !== undefined) this.#adopt(set, record, entry.revision)
  }

  /**
   * Writes of a volume's record whose answer was lost and whose outcome could not be settled (see
   * #settle): each may still be applied. update() settles them before it reads the record for a
   * decision, so that no decision rests on a record such a write can still change.
   */
  readonly #unsettled = new Map<string, Array<{ value: string, expectRevision: number, err: unknown }>>()

  /**
   * Compare-and-swap on a volume's record: `change` returns the new record, or undefined to leave
   * it. Retried on conflicts; resolves to the record written, or undefined. A write whose answer
   * is lost is settled (see #settle): written, it counts; otherwise the call fails with the write's
   * error, and the write can no longer apply (fenced off), or, when that could not be told, may
   * still: the next update() of the volume settles it before reading the record.
   */
  async update (volumeId: string, change: (record: ReplicaSetRecord) => ReplicaSetRecord | undefined): Promise<{ record: ReplicaSetRecord, revision: number } | undefined> {
    await this.#settlePending(volumeId)
    for (let attempt = 0; attempt < 20; attempt++) {
      const entry = await this.#coordinator.get(recordKey(volumeId))
      if (entry === undefined) return undefined
      const record = parseRecord(entry.value)
      if (record === undefined) return undefined
      const next = change(record)
      if (next === undefined) {
        this.#adoptEntry(volumeId, entry)
        return undefined
      }
      const value = JSON.stringify(next)
      let written: { revision: number } | undefined
      try {
        written = await this.#coordinator.put(recordKey(volumeId), value, { expectRevision: entry.revision })
      } catch (err) {
        // The write may have happened with its answer lost, or may still happen: settled first.
        written = await this.#settle(volumeId, value, entry.revision, err)
      }
      if (written !== undefined) {
        const set = this.#sets.get(volumeId)
        if (set !== undefined) this.#adopt(set, next, written.revision)
        return { record: next, revision: written.revision }
      }
    }
    throw new GalleonError('BUSY', `the record of volume ${volumeId} kept changing; try again`)
  }

  /**
   * Settles a write of a volume's record that failed with `err` (perhaps only its answer was lost;
   * see settleLostPut): the entry written; when it did not apply and never can, this node takes up
   * the record as it is and `err` is thrown (the caller decided on a record that is gone). When
   * that cannot be told, the write is kept as unsettled and `err` is thrown.
   */
  async #settle (volumeId: string, value: string, expectRevision: number, err: unknown): Promise<{ revision: number }> {
    let settled: SettledPut
    try {
      settled = await settleLostPut(this.#coordinator, recordKey(volumeId), value, expectRevision, err)
    } catch (unknown) {
      const pending = this.#unsettled.get(volumeId) ?? []
      pending.push({ value, expectRevision, err })
      this.#unsettled.set(volumeId, pending)
      throw unknown
    }
    if (settled.written) return settled.entry
    if (settled.entry !== undefined) this.#adoptEntry(volumeId, settled.entry)
    throw err
  }

  /** Settles the writes of the volume's record whose outcome is unknown (oldest first); throws while one cannot be. */
  async #settlePending (volumeId: string): Promise<void> {
    for (;;) {
      const pending = this.#unsettled.get(volumeId)
      const write = pending?.[0]
      if (pending === undefined || write === undefined) return
      const settled = await settleLostPut(this.#coordinator, recordKey(volumeId), write.value, write.expectRevision, write.err)
      // (Another update() of the volume may have settled it meanwhile.)
      const at = pending.indexOf(write)
      if (at >= 0) pending.splice(at, 1)
      if (pending.length === 0 && this.#unsettled.get(volumeId) === pending) this.#unsettled.delete(volumeId)
      if (settled.entry !== undefined) this.#adoptEntry(volumeId, settled.entry)
    }
  }

  /** Whether a write of the volume's record may still be applied (its outcome is not settled yet). */
  hasUnsettled (volumeId: string): boolean {
    return (this.#unsettled.get(volumeId)?.length ?? 0) > 0
  }

  /**
   * Settles the volume's unsettled record writes (see #settle), trying again every `retryMs` while
   * the coordinator cannot tell, until `stop()` says to give up. True once nothing is unsettled.
   */
  async settleAll (volumeId: string, stop: () => boolean, retryMs = 250): Promise<boolean> {
    while (this.hasUnsettled(volumeId)) {
      if (stop()) return false
      try {
        await this.#settlePending(volumeId)
      } catch {
        await sleep(retryMs)
      }
    }
    return true
  }

  /** Takes up a record entry read from the coordinator, if this node holds a copy of the volume. */
  #adoptEntry (volumeId: string, entry: { value: string, revision: number }): void {
    const record = parseRecord(entry.value)
    const set = this.#sets.get(volumeId)
    if (record !== undefined && set !== undefined) this.#adopt(set, record, entry.revision)
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
   * (until a primary answers, up to 30 s). A control call (a snapshot, a deletion, a revert, an
   * expansion, a key rotation) that carries a token is sent again, like I/O, when its answer is
   * lost: the primary that gets it again (the same one, or the next) knows it by its token, or by
   * `repeat`, and answers with what the first attempt did rather than do it twice. An error
   * thrown after an attempt that may have taken effect says so (see outcomeUnknown). An attempt
   * refused before it ran (see refusedBeforeRunning: a primary that is starting), or that this
   * node's transport never sent (see isNotSent: the primary's address refused the connection), is not one.
   */
  async forward (volumeId: string, request: ForwardedRequest, payload?: Uint8Array): Promise<TransportMessage> {
    const deadline = performance.now() + FORWARD_DEADLINE_MS
    let lastError: unknown
    // Such a call without a token (made by a caller that does not give one) is not sent again once
    // it may have reached the primary: it could happen twice.
    const control = CONTROL_OPS.has(request.op)
    const repeatable = !ONCE_OPS.has(request.op) || typeof request.token === 'string'
    /** The primary an earlier attempt reached that did not answer it: the call may have taken effect there. */
    let unanswered: string | undefined
    const failed = (err: unknown): unknown => unanswered === undefined || !control ? err : markOutcomeUnknown(err, unanswered)
    for (let attempt = 0; ; attempt++) {
      const set = this.#sets.get(volumeId)
      if (set === undefined) throw failed(new GalleonError('VOLUME_NOT_FOUND', `volume ${volumeId} is no longer replicated here`))
      if (set.record === undefined && set.unrecorded) {
        // A copy the cluster has no record of (see LocalSet.unrecorded): no primary will come
        // unless the record does, which a fresh read would show.
        await this.#refresh(set)
        if (set.record === undefined) throw failed(new GalleonError('BACKEND_UNAVAILABLE', `the cluster has no record of replicated volume ${volumeId}, so it has no primary, and the copy on node ${this.nodeId} serves no I/O (a coordinator that lost the record, or a volume deleted while this node was away without its deletion mark); if the volume is gone, deleteVolume(${JSON.stringify(volumeId)}, { force: true }) on this node deletes the copy`))
      }
      const primary = set.record?.primary
      if (set.primary !== undefined && !set.primary.frozen && !set.fenced) throw failed(new GalleonError('NOT_LEADER', 'this node became the primary meanwhile; call again'))
      if (primary !== undefined && primary !== this.nodeId) {
        // One answer may take FORWARD_ANSWER_MS, longer than the failover deadline: a repeatable
        // call stops waiting for a primary the record no longer names and goes to the new one.
        const failedOver = new AbortController()
        const watch = repeatable ? () => { const now = set.record?.primary; if (now !== undefined && now !== primary) failedOver.abort() } : undefined
        if (watch !== undefined) set.primaryWatchers.add(watch)
        try {
          const header = { volumeId, ...request, ...(unanswered !== undefined && control ? { repeat: true } : {}) }
          return await this.#cluster.request(primary, { kind: 'repl:io', header, ...(payload === undefined ? {} : { payload }) }, { timeoutMs: FORWARD_ANSWER_MS, signal: failedOver.signal })
        } catch (err) {
          const code = (err as { code?: string })?.code
          // Refused before it ran (the primary is starting, has not taken the role up yet, or was
          // not reached), or never sent (this node's transport says so: nothing listened there, the
          // connection could not be made, or the attempt was given up on still queued): this
          // attempt did nothing there, so it neither makes the next one a repeat nor the call's
          // error "may have taken effect".
          const notRun = isNotSent(err) || refusedBeforeRunning(err, primary, 'repl:io') || ioRefusedBeforeRunning(err, primary, volumeId)
          if (failedOver.signal.aborted && !this.#closed && performance.now() < deadline + FORWARD_ANSWER_MS) {
            lastError = err
            if (!notRun) unanswered = primary
            continue // the new primary is tried, even just past the failover deadline (not for ever: a record whose primary keeps changing)
          }
          if (code !== 'NOT_LEADER' && (code !== 'BACKEND_UNAVAILABLE' || !repeatable)) throw failed(err)
          lastError = err
          // A NOT_LEADER too: a primary that lost the role (or closed) under the call says so after it took effect.
          if (!notRun) unanswered = primary
        } finally {
          if (watch !== undefined) set.primaryWatchers.delete(watch)
        }
      }
      if (performance.now() >= deadline || this.#closed) {
        throw failed(new GalleonError('BACKEND_UNAVAILABLE', `volume ${volumeId} has no reachable primary (last known: ${primary ?? 'none'}): ${lastError === undefined ? 'no record' : errorText(lastError)}; retry once the cluster has failed over`))
      }
      await sleep(Math.min(100 * (attempt + 1), 500))
      await this.#refresh(set)
    }
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

  async close (): Promise<void> {
    this.#closed = true
    this.#stopMemberBack()
    this.#stopLeaseWatch()
    clearInterval(this.#leaderTimer)
    this.#stopWatch?.()
    for (const set of this.#sets.values()) {
      this.#retire(set, 'the node is closing')
      clearTimeout(set.saveTimer)
      await set.chain.catch(() => {})
      if (set.primary === undefined && set.record !== undefined) await this.#host.savePosition(set.volumeId, set.durable).catch(() => {})
    }
  }
}
