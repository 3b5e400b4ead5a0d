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

import { setTimeout as sleep } from 'node:timers/promises'
import { GalleonError, describe } from '../errors.js'
import type { Coordinator, TransportMessage } from '../drivers.js'
import type { ClusterManager } from '../cluster/manager.js'
import { placeVolume, type PlacementRequest } from '../cluster/placement.js'
import type { BlockEngine, VolumeBlocks } from '../engine/engine.js'
import { LIVE } from '../engine/block-map.js'
import { decodeChanges } from './stream-codec.js'
import type { ReplicatedChange } from '../engine/replicator.js'
import { WriteConcern } from '../types.js'
import { RECORD_PREFIX, parseRecord, recordKey, type ReplicaSetRecord, type VolumeSpec } from './records.js'
import { APPLY_TIMEOUT_MS, digestRange, errorText, unsatisfied, type LocalSet } from './common.js'
import type { LinkState } from './link.js'
import { Primary } from './primary.js'

/** A copy's applied position: the primary epoch it follows and the last change applied. */
export interface ReplicaPosition {
  readonly epoch: number
  readonly seq: number
}

/** A snapshot as replication compares them (ids are the same on every copy). */
export interface SnapshotInfo {
  readonly id: string
  readonly name: string
  readonly gen: number
  readonly sizeBytes: number
}

/** What replication needs from its GalleonFS instance. */
export interface ReplicationHost {
  readonly engine: BlockEngine
  /** Replicated volumes this node holds a copy of, with their applied positions. */
  localCopies: () => Array<{ id: string, position: ReplicaPosition }>
  /** The engine state of a local copy, or undefined if there is none. */
  blocks: (volumeId: string) => VolumeBlocks | undefined
  /** Creates the local copy of a volume (same id, name and class), at position 0/0. */
  createCopy: (spec: VolumeSpec) => Promise<void>
  /** Deletes the local copy (the volume was deleted, or this copy was dropped). */
  deleteCopy: (volumeId: string) => Promise<void>
  /** Persists a copy's applied position (after the data it covers is durable). */
  savePosition: (volumeId: string, position: ReplicaPosition) => Promise<void>
  snapshots: (volumeId: string) => SnapshotInfo[]
  /**
   * Takes a snapshot of the local copy with the primary's id (replaying the primary's); `sizeBytes`
   * is the volume's size when the primary took it (a resync, after the copy grew), else the copy's.
   */
  applySnapshot: (volumeId: string, id: string, name: string, sizeBytes?: number) => Promise<void>
  applyDeleteSnapshot: (volumeId: string, id: string) => Promise<void>
  /** Grows this node's copy of a volume to `sizeBytes` (an expansion the primary made; never shrinks). */
  applyExpand: (volumeId: string, sizeBytes: number) => Promise<void>
  /** The replica-set record of a local copy was read or changed: settings in its spec (the QoS policy) apply here. */
  applySpec: (volumeId: string, spec: VolumeSpec) => void
  /**
   * Where this node's copy stands against the storage class the record names: its class, whether
   * it is being converted (re-laid out) to the record's class, and the last conversion failure.
   * `retry`: start the conversion again if it failed.
   */
  copyLayout: (volumeId: string, retry: boolean) => CopyLayout
  /** Reverts this node's copy of a volume to its copy of snapshot `snapshotId` (the primary reverted). */
  applyRevert: (volumeId: string, snapshotId: string) => Promise<void>
  /** Runs `task` while no snapshot of any volume is being taken or deleted. */
  exclusive: <T>(task: () => Promise<T>) => Promise<T>
  /** Runs an I/O request forwarded from another node, on this node (the primary). */
  serveForwarded: (volumeId: string, request: ForwardedRequest, payload: Uint8Array | undefined) => Promise<{ header: Record<string, unknown>, payload?: Uint8Array }>
  emit: (event: string, payload: unknown) => void
}

/** A node's copy measured against the class of its replica-set record (see ReplicationHost.copyLayout). */
export interface CopyLayout {
  /** The storage class the copy is laid out by now (undefined: the node holds no copy). */
  readonly storageClass?: string
  /** A conversion to the record's class is running. */
  readonly busy: boolean
  /** The class (and pool) of the record as this node last read it. */
  readonly spec?: { readonly storageClass: string, readonly pool?: string }
  /** The copy is laid out as that record says (class, copies and, where this node has it, pool). */
  readonly converged: boolean
  /** Why the last conversion failed, if it did. */
  readonly error?: { readonly code: string, readonly message: string }
}

/** Events of replication (emitted by GalleonFS). */
export interface ReplicationEvents {
  /** This node took up the primary role of a volume (created it, was promoted, or restarted as its primary). */
  'replication:primary': (event: { volumeId: string, nodeId: string, epoch: number }) => void
  /** This node learnt that another node is the volume's primary now. */
  'replication:demoted': (event: { volumeId: string, nodeId: string, reason: string }) => void
  /** The cluster leader promoted an in-sync copy because the primary was gone. */
  'replication:failover': (event: { volumeId: string, from: string, to: string, epoch: number }) => void
  /** The leader added nodes to a replica set that had fewer copies than wanted. */
  'replication:replica-added': (event: { volumeId: string, nodes: string[] }) => void
  /** The cluster leader gave up copies whose nodes stayed unhealthy past the replacement delay (new ones follow). */
  'replication:replica-removed': (event: { volumeId: string, nodes: string[], reason: string }) => void
  /** This node deleted its copy of a volume because the copy was replaced on other nodes while it was away. */
  'replication:copy-dropped': (event: { volumeId: string, nodeId: string, nodes: string[] }) => void
  /** A copy was taken out of the in-sync list (it failed or fell behind). */
  'replication:out-of-sync': (event: { volumeId: string, node: string }) => void
  /** A copy caught up and is in sync again. */
  'replication:in-sync': (event: { volumeId: string, node: string }) => void
  /** A copy's link broke; it is retried with backoff. */
  'replication:link-down': (event: { volumeId: string, node: string, message: string }) => void
  /** A copy was brought in line: `delta` (blocks changed since it left) or `digest` (blocks that differ). */
  'replication:resynced': (event: { volumeId: string, node: string, mode: 'delta' | 'digest' }) => void
  'replication:error': (event: { volumeId: string, nodeId: string, code: string, message: string }) => void
}

/** An I/O call forwarded to the primary. */
export interface ForwardedRequest {
  readonly op: 'write' | 'writeBlock' | 'trim' | 'read' | 'readBlock' | 'flush' | 'createSnapshot' | 'deleteSnapshot' | 'deleteVolume' | 'expandVolume' | 'restoreSnapshot'
  readonly offset?: number
  readonly sizeBytes?: number
  readonly length?: number
  readonly index?: number
  readonly concern?: string
  readonly snapshot?: string
  readonly snapshotName?: string
  readonly readSnapshot?: string
  readonly force?: boolean
}

/** How replication of a volume stands, as the node asked sees it. */
export interface ReplicationStatus {
  readonly volumeId: string
  /** This node's part: serving and shipping (`primary`), following (`replica`), or `unknown` (no record yet). */
  readonly role: 'primary' | 'replica' | 'unknown'
  readonly primary: string | undefined
  readonly epoch: number | undefined
  readonly nodes: readonly string[]
  readonly inSync: readonly string[]
  /** Copies wanted (the storage class's or the volume's `replicas`). */
  readonly replicas: number
  /** Fewer in-sync copies than wanted. */
  readonly degraded: boolean
  /**
   * On the primary: bytes of the buffer it is filling with write data for the copies (a 1 MiB
   * chunk under writes; 0 once nothing has been queued for a second). What the queued changes hold
   * is in each link's `lagBytes`.
   */
  readonly streamBufferBytes: number
  /** On the primary: each other copy's link. */
  readonly links: ReadonlyArray<{
    readonly node: string
    readonly state: LinkState
    /** Changes recorded but not yet acknowledged by the copy. */
    readonly lagChanges: number
    /** Bytes of changes waiting to be shipped or acknowledged. */
    readonly lagBytes: number
    /** Age of the oldest change not yet acknowledged by the copy (0 when it has them all), overstated by less than 10 ms (more while a copy has been away long: see record-clock.ts). */
    readonly lagSeconds: number
    readonly shippedBytes: number
    /** Stream batches the copy acknowledged, and the seconds they waited for it all together (send to acknowledgement). */
    readonly batchesAcknowledged: number
    readonly ackWaitSeconds: number
    readonly resyncs: number
    readonly resync?: { readonly mode: 'delta' | 'digest', readonly blocksDone: number, readonly blocksTotal: number, readonly blocksSent: number }
    readonly lastError?: string
  }>
}

const LEADER_LOOP_MS = 1000
/** Coordinator keys of nodes that are leaving (`replication/leaving/<nodeId>`). */
const LEAVING_PREFIX = 'replication/leaving/'
/** How long a copy's node may be unhealthy before the leader replaces the copy (ClusterOptions.replicaReplacementDelayMs). */
const DEFAULT_REPLACEMENT_DELAY_MS = 600_000
const FORWARD_DEADLINE_MS = 30_000
/** How long createVolume waits for new copies to be in sync before it returns a degraded volume. */
const CREATE_SYNC_WAIT_MS = 15_000

/** The replication of one node: replica-side handlers, the primaries it runs, failover when it leads. */
export class ReplicationManager {
  readonly #host: ReplicationHost
  readonly #cluster: ClusterManager
  readonly #coordinator: Coordinator
  readonly #zone: string
  readonly #sets = new Map<string, LocalSet>()
  #stopWatch: (() => void) | undefined
  /** Completion of the changes an `applied` reply covers (see repl:apply). */
  readonly #pendingApply = new WeakMap<TransportMessage, Promise<void>>()
  #leaderTimer: NodeJS.Timeout | undefined
  #leaderBusy = false
  #closed = false
  /** While this node hands its copies off (leave), it deletes them itself. */
  #handingOff = false
  /** Volumes whose copy on this node is moving to another node (it deletes the copy itself). */
  readonly #moving = new Set<string>()
  readonly #replacementDelayMs: number
  /** Since when (by this leader's clock) each node holding copies has been seen unhealthy. */
  readonly #unhealthySince = new Map<string, number>()

  private constructor (host: ReplicationHost, cluster: ClusterManager, coordinator: Coordinator, zone: string, replacementDelayMs: number) {
    this.#host = host
    this.#cluster = cluster
    this.#coordinator = coordinator
    this.#zone = zone
    this.#replacementDelayMs = replacementDelayMs
  }

  get nodeId (): string { return this.#cluster.nodeId }

  /** Registers the handlers, loads the records of local copies and takes up each copy's role. */
  static async start (host: ReplicationHost, cluster: ClusterManager, coordinator: Coordinator, zone: string, options: { replacementDelayMs?: number } = {}): Promise<ReplicationManager> {
    const manager = new ReplicationManager(host, cluster, coordinator, zone, options.replacementDelayMs ?? DEFAULT_REPLACEMENT_DELAY_MS)
    // Local copies first, with their saved positions: a peer's message may come as soon as the
    // handlers are in place.
    const copies = host.localCopies()
    for (const copy of copies) manager.#setOf(copy.id, copy.position)
    manager.#registerHandlers()
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
          host.emit('replication:error', { volumeId: copy.id, nodeId: cluster.nodeId, code: 'VOLUME_NOT_FOUND', message: 'the cluster has no record of this replicated volume (deleted while this node was away?); the local copy is kept but serves no I/O' })
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
    manager.#leaderTimer = setInterval(() => { void manager.#leaderPass() }, LEADER_LOOP_MS)
    manager.#leaderTimer.unref()
    return manager
  }

  #setOf (volumeId: string, position: ReplicaPosition = { epoch: 0, seq: 0 }): LocalSet {
    let set = this.#sets.get(volumeId)
    if (set === undefined) {
      set = { volumeId, record: undefined, revision: 0, knownEpoch: 0, primary: undefined, position, durable: position, nextFrom: undefined, turns: new Map(), chain: Promise.resolve(), resyncing: false, applying: new Set(), saveTimer: undefined }
      this.#sets.set(volumeId, set)
    }
    return set
  }

  /** Whether I/O on this volume must go to another node (the primary). */
  forwards (volumeId: string): boolean {
    const set = this.#sets.get(volumeId)
    return set !== undefined && (set.primary === undefined || set.primary.frozen)
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
    if (primary.possible(WriteConcern.WriteReplicated) !== undefined) return
    await primary.committed(primary.seq, WriteConcern.WriteReplicated)
  }

  // ------------------------------------------------------------------ creating and deleting

  /**
   * Makes a freshly created local volume replicated: places its copies, records the replica set
   * (this node primary, epoch 1) and creates the other copies. Waits a while for them to be in
   * sync; returns the record (fewer in-sync copies than wanted: the volume is degraded).
   */
  async register (spec: VolumeSpec, options: Omit<PlacementRequest, 'replicas' | 'preferredPrimary' | 'current'> = {}, wait = true): Promise<ReplicaSetRecord> {
    const members = this.#cluster.members.filter((m) => m.healthy)
    // The creating node holds the primary copy; the others are placed by the class's rules.
    let others: readonly string[] = []
    try {
      if (spec.replicas > 1) others = placeVolume(members.filter((m) => m.id !== this.nodeId), { ...options, replicas: spec.replicas - 1 }).nodes
    } catch (err) {
      // No other node is eligible now: the volume starts degraded, and gets copies as nodes join.
      if ((err as { code?: string })?.code !== 'NO_SPACE') throw err
    }
    const nodes = [this.nodeId, ...others].slice(0, spec.replicas)
    // A record left by a volume that became local again (see dissolve) is replaced, one epoch on:
    // a copy left from that time (its position in an older epoch) is never taken for one in line
    // with the new history, but compared block by block.
    let epoch = 1
    let expectRevision = 0
    const existing = await this.#coordinator.get(recordKey(spec.id))
    if (existing !== undefined) {
      const old = parseRecord(existing.value)
      // This node's own record, with no other copy: a dissolve kept it (or was cut short).
      if (old === undefined || old.primary !== this.nodeId || old.nodes.length !== 1 || old.nodes[0] !== this.nodeId) {
        throw new GalleonError('VOLUME_EXISTS', `the cluster already has a replicated volume with id ${spec.id}`)
      }
      expectRevision = existing.revision
      epoch = Math.max(epoch, old.epoch + 1)
    }
    const record: ReplicaSetRecord = { spec, primary: this.nodeId, epoch, nodes, inSync: [this.nodeId], ...(options.strategy === undefined && options.zones === undefined && options.affinity === undefined && options.antiAffinity === undefined && options.nodes === undefined ? {} : { placement: options }) }
    const set = this.#setOf(spec.id)
    const entry = await this.#coordinator.put(recordKey(spec.id), JSON.stringify(record), { expectRevision })
    if (entry === undefined) {
      this.#sets.delete(spec.id)
      throw new GalleonError('VOLUME_EXISTS', `the cluster already has a replicated volume with id ${spec.id}`)
    }
    if (set.revision < entry.revision) {
      set.record = record
      set.revision = entry.revision
    }
    set.knownEpoch = Math.max(set.knownEpoch, epoch)
    this.#becomePrimary(set, set.record ?? record)
    // The new copies' resyncs take their cuts through host.exclusive: a caller holding it passes wait = false.
    const deadline = wait ? Date.now() + CREATE_SYNC_WAIT_MS : 0
    while (Date.now() < deadline && !this.#closed) {
      const current = set.record
      if (current === undefined || set.primary === undefined) break
      if (current.inSync.length >= current.nodes.length) break
      if (set.primary.allLinksFailedOnce()) break
      await sleep(20)
    }
    return set.record ?? record
  }

  /** Deletes a replicated volume everywhere (called on the primary, before the local copy goes). */
  async unregister (volumeId: string): Promise<void> {
    const set = this.#sets.get(volumeId)
    if (set === undefined) return
    const nodes = set.record?.nodes ?? []
    this.#retire(set, 'the volume is being deleted')
    this.#sets.delete(volumeId)
    clearTimeout(set.saveTimer)
    await this.#coordinator.delete(recordKey(volumeId))
    await Promise.all(nodes.filter((n) => n !== this.nodeId).map(async (node) => {
      await this.#cluster.request(node, { kind: 'repl:delete', header: { volumeId } }, { timeoutMs: APPLY_TIMEOUT_MS }).catch(() => {})
    }))
  }

  /**
   * Makes a replicated volume whose only copy is this node's (and which wants one) a local volume
   * again: its primary stops, the caller clears the local record's replication (`local`), the
   * nodes that held copies of it (`formerNodes`: a move that was given up) are told to delete
   * theirs, and once all did, the cluster's record goes. Returns false, changing nothing, when the record keeps
   * other copies or another primary.
   */
  async dissolve (volumeId: string, formerNodes: readonly string[], local: () => Promise<void>): Promise<boolean> {
    const entry = await this.#coordinator.get(recordKey(volumeId))
    const record = entry === undefined ? undefined : parseRecord(entry.value)
    if (entry === undefined || record === undefined) return false
    if (record.primary !== this.nodeId || record.spec.replicas !== 1 || record.nodes.length !== 1 || record.nodes[0] !== this.nodeId) return false
    const set = this.#sets.get(volumeId)
    if (set !== undefined) {
      this.#retire(set, 'the volume is local again')
      this.#sets.delete(volumeId)
      clearTimeout(set.saveTimer)
    }
    // The local record first: a crash after it leaves at worst a record nobody uses in the
    // coordinator (register replaces it), never a local copy that waits for a record that is gone.
    await local()
    // The record goes only once every node that held a copy deleted it; otherwise it stays (this
    // node's alone), and a later register replaces it one epoch on (see there).
    const deleted = await Promise.all(formerNodes.filter((n) => n !== this.nodeId).map(async (node) => {
      return await this.#cluster.request(node, { kind: 'repl:delete', header: { volumeId } }, { timeoutMs: APPLY_TIMEOUT_MS }).then(() => true, () => false)
    }))
    if (deleted.every(Boolean)) await this.#coordinator.delete(recordKey(volumeId), { expectRevision: entry.revision })
    return true
  }

  /** Copies being deleted by this manager (their sets forgotten, the local volume not gone yet). */
  readonly #deleting = new Set<string>()

  /** Forgets the set of a copy and deletes the copy; meanwhile resyncs of it are refused (see #registerHandlers). */
  async #dropCopy (volumeId: string): Promise<void> {
    this.forget(volumeId)
    this.#deleting.add(volumeId)
    try {
      await this.#host.deleteCopy(volumeId)
    } finally {
      this.#deleting.delete(volumeId)
    }
  }

  /** Forgets a local copy that was deleted here. */
  forget (volumeId: string): void {
    const set = this.#sets.get(volumeId)
    if (set === undefined) return
    this.#retire(set, 'the local copy was deleted')
    clearTimeout(set.saveTimer)
    this.#sets.delete(volumeId)
  }

  // ------------------------------------------------------------------ leaving

  /**
   * Before this node leaves the cluster: every copy it holds is handed off. Where its copy is in
   * sync, a copy on another node is added first and waited for (the volume keeps the redundancy it
   * had); where it is the primary, the role goes to an in-sync copy; then it leaves the replica set
   * and the local copy is deleted. BUSY (nothing more is done) when a volume cannot be handed off.
   */
  async handOff (options: { timeoutMs?: number } = {}): Promise<void> {
    // Marked as leaving first: no copy is placed on this node meanwhile (by the leader or another leaver).
    const mark = `${LEAVING_PREFIX}${this.nodeId}`
    await this.#coordinator.put(mark, JSON.stringify({ at: Date.now() }))
    this.#handingOff = true
    try {
      for (const set of [...this.#sets.values()]) await this.#handOffOne(set, Date.now() + (options.timeoutMs ?? 30 * 60_000))
    } finally {
      this.#handingOff = false
      await this.#coordinator.delete(mark).catch(() => {})
    }
  }

  /** Nodes handing their copies off before they leave (not eligible for new copies). */
  async #leaving (): Promise<Set<string>> {
    return new Set((await this.#coordinator.list(LEAVING_PREFIX)).map((entry) => entry.key.slice(LEAVING_PREFIX.length)))
  }

  /**
   * Moves this node's copy of a volume to node `to`: a copy there first, in sync, then the primary
   * role (if this node has it), then this node's copy goes. Resolves once it is gone.
   */
  async moveCopy (volumeId: string, to: string, options: { timeoutMs?: number, signal?: AbortSignal } = {}): Promise<void> {
    const set = this.#sets.get(volumeId)
    if (set === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `node ${this.nodeId} holds no copy of volume ${volumeId}`)
    if (to === this.nodeId) throw new GalleonError('INVALID_ARGUMENT', `the volume's copy is on ${to} already: nothing to move`)
    const member = (await this.#coordinator.members()).find((m) => m.id === to)
    if (member === undefined || !member.healthy) throw new GalleonError('INVALID_ARGUMENT', `node ${to} is ${member === undefined ? 'not a member of the cluster' : 'not healthy'}; clusterStatus() lists the nodes`)
    if ((await this.#leaving()).has(to)) throw new GalleonError('BUSY', `node ${to} is leaving the cluster; pick another node`)
    const record = set.record ?? parseRecord((await this.#coordinator.get(recordKey(volumeId)))?.value ?? '')
    // A copy there beyond the wanted number (left by a move that was interrupted) is the one the
    // move fills and hands over to.
    // (Not one another node's hand-off is still filling: that one is not in sync yet.)
    if (record?.nodes.includes(to) === true && (record.nodes.length <= record.spec.replicas || (record.spec.replicas > 1 && !record.inSync.includes(to)))) throw new GalleonError('INVALID_ARGUMENT', `node ${to} holds a copy of volume ${record.spec.name} already; move to a node without one`)
    if (this.#moving.has(volumeId)) throw new GalleonError('BUSY', `volume ${record?.spec.name ?? volumeId} is moving already; wait for that move`)
    this.#moving.add(volumeId)
    try {
      await this.#handOffOne(set, Date.now() + (options.timeoutMs ?? 30 * 60_000), to, options.signal)
    } finally {
      this.#moving.delete(volumeId)
    }
  }

  /**
   * Changes the storage class of a replicated volume in its record: every copy converts itself to
   * the class (ReplicationHost.applySpec), and the number of copies follows the class's replicas:
   * more are placed now (filled by resyncs), fewer drop the copies that are not the primary's,
   * out-of-sync ones first (their nodes delete them). Returns the record as it was before.
   */
  async reshape (volumeId: string, change: { storageClass: string, replicas: number, pool?: string, keep?: string }, placement: Omit<PlacementRequest, 'replicas' | 'preferredPrimary' | 'current'>): Promise<ReplicaSetRecord> {
    let before: ReplicaSetRecord | undefined
    const members = this.#cluster.members.filter((m) => m.healthy)
    const leaving = await this.#leaving()
    const written = await this.update(volumeId, (r) => {
      before = r
      let nodes = [...r.nodes]
      if (change.replicas < nodes.length) {
        const rest = nodes.filter((n) => n !== r.primary)
        // Kept first: the in-sync copies, and among them the one of the node that asked.
        const rank = (n: string): number => (r.inSync.includes(n) ? 2 : 0) + (n === change.keep ? 1 : 0)
        rest.sort((a, b) => rank(b) - rank(a))
        nodes = [r.primary, ...rest].slice(0, Math.max(1, change.replicas))
      } else if (change.replicas > nodes.length) {
        try {
          const chosen = placeVolume(members.filter((m) => !leaving.has(m.id)), { ...placement, replicas: change.replicas, current: nodes, preferredPrimary: r.primary }).nodes
          nodes.push(...chosen.filter((n) => !nodes.includes(n)).slice(0, change.replicas - nodes.length))
        } catch (err) {
          // Fewer eligible nodes than copies: the volume is degraded until nodes join.
          if ((err as { code?: string })?.code !== 'NO_SPACE') throw err
        }
      }
      const { pool: _pool, ...spec } = r.spec
      const hasPlacement = placement.strategy !== undefined || placement.zones !== undefined || placement.affinity !== undefined || placement.antiAffinity !== undefined || placement.nodes !== undefined
      const { placement: _placement, ...rest } = r
      return { ...rest, spec: { ...spec, storageClass: change.storageClass, replicas: change.replicas, ...(change.pool === undefined ? {} : { pool: change.pool }) }, nodes, inSync: r.inSync.filter((n) => nodes.includes(n)), ...(hasPlacement ? { placement } : {}) }
    })
    if (written === undefined || before === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `the cluster has no record of volume ${volumeId}`)
    const added = written.record.nodes.filter((n) => !before?.nodes.includes(n))
    if (added.length > 0) this.#host.emit('replication:replica-added', { volumeId, nodes: added })
    const removed = before.nodes.filter((n) => !written.record.nodes.includes(n))
    if (removed.length > 0) this.#host.emit('replication:replica-removed', { volumeId, nodes: removed, reason: `storage class ${change.storageClass} keeps ${change.replicas} cop${change.replicas === 1 ? 'y' : 'ies'}` })
    return before
  }

  /**
   * Puts a volume's record back as `reshape` found it (the class, copies, pool and placement; not
   * the nodes that were dropped), unless another change than `change` was made to it since.
   */
  async unshape (volumeId: string, before: ReplicaSetRecord, change: { storageClass: string, replicas: number, pool?: string }): Promise<void> {
    await this.update(volumeId, (r) => {
      if (r.spec.storageClass !== change.storageClass || r.spec.replicas !== change.replicas || r.spec.pool !== change.pool) return undefined
      const { placement: _placement, ...rest } = r
      const { pool: _pool, ...spec } = r.spec
      const nodes = r.nodes.filter((n) => n === r.primary || before.nodes.includes(n))
      return { ...rest, spec: { ...spec, storageClass: before.spec.storageClass, replicas: before.spec.replicas, ...(before.spec.pool === undefined ? {} : { pool: before.spec.pool }) }, nodes, inSync: r.inSync.filter((n) => nodes.includes(n)), ...(before.placement === undefined ? {} : { placement: before.placement }) }
    })
  }

  /** How each copy of a volume stands against the class of its record (asks the other nodes). */
  async copyLayouts (volumeId: string, retry = false): Promise<{ record: ReplicaSetRecord, layouts: Array<CopyLayout & { node: string, unreachable?: string }> } | undefined> {
    const entry = await this.#coordinator.get(recordKey(volumeId))
    const record = entry === undefined ? undefined : parseRecord(entry.value)
    if (record === undefined) return undefined
    const layouts = await Promise.all(record.nodes.map(async (node) => {
      if (node === this.nodeId) return { node, ...this.#host.copyLayout(volumeId, retry) }
      try {
        const reply = await this.#cluster.request(node, { kind: 'repl:layout', header: { volumeId, retry } }, { timeoutMs: APPLY_TIMEOUT_MS })
        return { node, ...(reply.header as unknown as CopyLayout) }
      } catch (err) {
        // Not an answer about the copy: asked again on the next poll.
        return { node, busy: true, converged: false, unreachable: `node ${node} did not answer: ${(err as Error)?.message ?? String(err)}` }
      }
    }))
    return { record, layouts }
  }

  /** The spec in the record of a volume this node holds a copy of, as last read. */
  spec (volumeId: string): VolumeSpec | undefined {
    return this.#sets.get(volumeId)?.record?.spec
  }

  /** This node's copy now lives in `blocks` (a live migration moved it): the primary, if here, ships from there. */
  rebind (volumeId: string, blocks: VolumeBlocks): void {
    this.#sets.get(volumeId)?.primary?.rebind(blocks)
  }

  async #handOffOne (set: LocalSet, deadline: number, to?: string, signal?: AbortSignal): Promise<void> {
    const self = this.nodeId
    const current = async (): Promise<ReplicaSetRecord | undefined> => {
      const entry = await this.#coordinator.get(recordKey(set.volumeId))
      return entry === undefined ? undefined : parseRecord(entry.value)
    }
    const waitFor = async (what: string, check: (record: ReplicaSetRecord) => boolean): Promise<void> => {
      for (;;) {
        const record = await current()
        if (record === undefined || check(record)) return
        if (Date.now() > deadline) throw new GalleonError('BUSY', `leaving: timed out waiting until ${what}; the node is still a member, try again`)
        await sleep(100)
      }
    }
    let record = await current()
    if (record === undefined || !record.nodes.includes(self)) {
      this.forget(set.volumeId)
      return
    }
    const name = record.spec.name
    if (to !== undefined && !record.inSync.includes(self)) throw new GalleonError('BUSY', `the copy of volume ${name} on ${self} is not in sync; move the copy of an in-sync node (${record.inSync.join(', ')})`)
    if (record.inSync.includes(self)) {
      const others = record.nodes.filter((n) => n !== self)
      const leaving = await this.#leaving()
      const members = (await this.#coordinator.members()).filter((m) => m.healthy && m.id !== self && !leaving.has(m.id))
      const added = to ?? placeVolume(members, { ...(record.placement ?? {}), replicas: record.nodes.length, current: others, ...(others[0] === undefined ? {} : { preferredPrimary: others[0] }) }).nodes.find((n) => !record?.nodes.includes(n))
      if (added === undefined) {
        throw new GalleonError('BUSY', `volume ${name} would lose its in-sync copy on ${self}: no other healthy node can take a copy (copies on ${record.nodes.join(', ')}); add a node first, or leave with force`)
      }
      await this.update(set.volumeId, (r) => r.nodes.includes(added) ? undefined : { ...r, nodes: [...r.nodes, added] })
      this.#host.emit('replication:replica-added', { volumeId: set.volumeId, nodes: [added] })
      // A move that is cancelled or fails before the primary role moved gives the new copy up
      // (its node deletes it), and everything stays as it was.
      const giveUp = async (): Promise<void> => {
        if (to === undefined) return
        await this.update(set.volumeId, (r) => !r.nodes.includes(added) || r.primary === added ? undefined : { ...r, nodes: r.nodes.filter((n) => n !== added), inSync: r.inSync.filter((n) => n !== added) }).catch(() => undefined)
      }
      try {
        await waitFor(`the new copy of ${name} on ${added} is in sync`, (r) => r.inSync.includes(added) || signal?.aborted === true)
      } catch (err) {
        await giveUp()
        throw err
      }
      if (signal?.aborted === true) {
        await giveUp()
        throw new GalleonError('CANCELLED', `moving volume ${name} to ${added} was cancelled; its copy there is being removed, the volume stays on ${self}`)
      }
    }
    if (set.primary !== undefined) await set.primary.handOver()
    await waitFor(`${self} is no longer the primary of ${name}`, (r) => r.primary !== self)
    await this.update(set.volumeId, (r) => !r.nodes.includes(self) ? undefined : { ...r, nodes: r.nodes.filter((n) => n !== self), inSync: r.inSync.filter((n) => n !== self) })
    await this.#dropCopy(set.volumeId)
  }

  // ------------------------------------------------------------------ roles

  /** A record was read or watched: take up the role it gives this node. */
  #adopt (set: LocalSet, record: ReplicaSetRecord, revision: number): void {
    if (revision < set.revision) return
    set.record = record
    set.revision = revision
    if (!record.nodes.includes(this.nodeId) && record.primary !== this.nodeId && !this.#handingOff && !this.#moving.has(set.volumeId) && !this.#closed) {
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
    }
  }

  #recordGone (set: LocalSet): void {
    this.#retire(set, 'the replica-set record was deleted')
    set.record = undefined
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

  /**
   * Compare-and-swap on a volume's record: `change` returns the new record, or undefined to leave
   * it. Retried on conflicts; resolves to the record written, or undefined.
   */
  async update (volumeId: string, change: (record: ReplicaSetRecord) => ReplicaSetRecord | undefined): Promise<{ record: ReplicaSetRecord, revision: number } | undefined> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const entry = await this.#coordinator.get(recordKey(volumeId))
      if (entry === undefined) return undefined
      const record = parseRecord(entry.value)
      if (record === undefined) return undefined
      const next = change(record)
      if (next === undefined) {
        const set = this.#sets.get(volumeId)
        if (set !== undefined) this.#adopt(set, record, entry.revision)
        return undefined
      }
      const written = await this.#coordinator.put(recordKey(volumeId), JSON.stringify(next), { expectRevision: entry.revision })
      if (written !== undefined) {
        const set = this.#sets.get(volumeId)
        if (set !== undefined) this.#adopt(set, next, written.revision)
        return { record: next, revision: written.revision }
      }
    }
    throw new GalleonError('BUSY', `the record of volume ${volumeId} kept changing; try again`)
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

  // ------------------------------------------------------------------ failover (cluster leader)

  /** On the cluster leader: promotes an in-sync copy of volumes whose primary is gone, adds copies to short replica sets. */
  async #leaderPass (): Promise<void> {
    if (this.#cluster.leadership === undefined) this.#unhealthySince.clear()
    if (this.#leaderBusy || this.#closed || this.#cluster.leadership === undefined) return
    this.#leaderBusy = true
    try {
      const members = await this.#coordinator.members()
      const healthy = new Set(members.filter((m) => m.healthy).map((m) => m.id))
      const now = Date.now()
      for (const node of [...this.#unhealthySince.keys()]) if (healthy.has(node)) this.#unhealthySince.delete(node)
      for (const entry of await this.#coordinator.list(RECORD_PREFIX)) {
        if (this.#closed || this.#cluster.leadership === undefined) return
        const record = parseRecord(entry.value)
        if (record === undefined) continue
        const volumeId = record.spec.id
        if (!healthy.has(record.primary)) {
          // A volume that wants one copy and has two is moving between nodes: the copy being
          // filled may lack the primary's latest WriteDurable writes, so it is never promoted;
          // the volume waits for its primary's node, as a 1-copy volume does.
          if (record.spec.replicas <= 1) continue
          const candidate = record.inSync.find((n) => n !== record.primary && healthy.has(n))
          if (candidate === undefined) continue
          const written = await this.#coordinator.put(entry.key, JSON.stringify({ ...record, primary: candidate, epoch: record.epoch + 1, inSync: [candidate], handoff: undefined }), { expectRevision: entry.revision })
          if (written !== undefined) {
            this.#host.emit('replication:failover', { volumeId, from: record.primary, to: candidate, epoch: record.epoch + 1 })
          }
          continue
        }
        // A copy whose node stayed unhealthy past the replacement delay is given up (never the
        // primary's, and never the last in-sync one): the branch below places a new copy.
        const dead = record.nodes.filter((n) => n !== record.primary && !healthy.has(n) && now - this.#firstSeenUnhealthy(n, now) >= this.#replacementDelayMs)
        if (dead.length > 0) {
          const written = await this.#coordinator.put(entry.key, JSON.stringify({ ...record, nodes: record.nodes.filter((n) => !dead.includes(n)), inSync: record.inSync.filter((n) => !dead.includes(n)) }), { expectRevision: entry.revision })
          if (written !== undefined) this.#host.emit('replication:replica-removed', { volumeId, nodes: dead, reason: `unhealthy for more than ${Math.round(this.#replacementDelayMs / 1000)} s` })
          continue
        }
        if (record.nodes.length < record.spec.replicas) {
          const leaving = await this.#leaving()
          const eligible = members.filter((m) => m.healthy && !leaving.has(m.id))
          let chosen: readonly string[] = []
          try {
            chosen = placeVolume(eligible, { ...(record.placement ?? {}), replicas: record.spec.replicas, current: record.nodes, preferredPrimary: record.primary }).nodes
          } catch (err) {
            if ((err as { code?: string })?.code !== 'NO_SPACE') throw err
          }
          const added = chosen.filter((n) => !record.nodes.includes(n)).slice(0, record.spec.replicas - record.nodes.length)
          if (added.length === 0) continue
          const written = await this.#coordinator.put(entry.key, JSON.stringify({ ...record, nodes: [...record.nodes, ...added] }), { expectRevision: entry.revision })
          if (written !== undefined) this.#host.emit('replication:replica-added', { volumeId, nodes: added })
        }
      }
    } catch (err) {
      this.#host.emit('replication:error', { volumeId: '', nodeId: this.nodeId, code: (err as { code?: string })?.code ?? 'IO_ERROR', message: `failover pass: ${(err as Error)?.message ?? String(err)}` })
    } finally {
      this.#leaderBusy = false
    }
  }

  /** When this leader first saw `node` unhealthy (now, if it had not). */
  #firstSeenUnhealthy (node: string, now: number): number {
    const since = this.#unhealthySince.get(node)
    if (since !== undefined) return since
    this.#unhealthySince.set(node, now)
    return now
  }

  // ------------------------------------------------------------------ forwarding

  /**
   * Sends an I/O call to the volume's primary and returns its reply. Waits through a failover
   * (until a primary answers, up to 30 s).
   */
  async forward (volumeId: string, request: ForwardedRequest, payload?: Uint8Array): Promise<TransportMessage> {
    const deadline = Date.now() + FORWARD_DEADLINE_MS
    let lastError: unknown
    for (let attempt = 0; ; attempt++) {
      const set = this.#sets.get(volumeId)
      if (set === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${volumeId} is no longer replicated here`)
      const primary = set.record?.primary
      if (set.primary !== undefined && !set.primary.frozen) throw new GalleonError('NOT_LEADER', 'this node became the primary meanwhile; call again')
      if (primary !== undefined && primary !== this.nodeId) {
        try {
          return await this.#cluster.request(primary, { kind: 'repl:io', header: { volumeId, ...request }, ...(payload === undefined ? {} : { payload }) }, { timeoutMs: 15_000 })
        } catch (err) {
          const code = (err as { code?: string })?.code
          // Writes, trims, reads and flushes may be repeated; a snapshot or deletion whose answer
          // was lost may have happened, so it is retried only when the node said it is not primary.
          const repeatable = request.op !== 'createSnapshot' && request.op !== 'deleteSnapshot' && request.op !== 'deleteVolume' && request.op !== 'restoreSnapshot'
          if (code !== 'NOT_LEADER' && (code !== 'BACKEND_UNAVAILABLE' || !repeatable)) throw err
          lastError = err
        }
      }
      if (Date.now() >= deadline || this.#closed) {
        throw new GalleonError('BACKEND_UNAVAILABLE', `volume ${volumeId} has no reachable primary (last known: ${primary ?? 'none'}): ${lastError === undefined ? 'no record' : errorText(lastError)}; retry once the cluster has failed over`)
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
      role: set.primary !== undefined ? 'primary' : record === undefined ? 'unknown' : 'replica',
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
    clearInterval(this.#leaderTimer)
    this.#stopWatch?.()
    for (const set of this.#sets.values()) {
      this.#retire(set, 'the node is closing')
      clearTimeout(set.saveTimer)
      await set.chain.catch(() => {})
      if (set.primary === undefined && set.record !== undefined) await this.#host.savePosition(set.volumeId, set.durable).catch(() => {})
    }
  }

  // ------------------------------------------------------------------ replica side

  #registerHandlers (): void {
    const on = (kind: string, handler: (set: LocalSet, header: Record<string, unknown>, payload: Uint8Array | undefined, from: string) => Promise<TransportMessage>): void => {
      this.#cluster.handle(kind, async (from, request) => {
        const volumeId = request.header.volumeId
        if (typeof volumeId !== 'string') throw new GalleonError('INVALID_ARGUMENT', `${kind} needs a volumeId`)
        if (kind === 'repl:resync-begin') {
          if (this.#sets.has(volumeId) && this.#host.blocks(volumeId) === undefined) {
            // Left over from a copy deleted here (every deletion forgets the set first; a message
            // could make one again meanwhile): this is a new copy like any other.
            this.forget(volumeId)
          }
          if (this.#deleting.has(volumeId)) {
            // Given up or moved away, and its deletion is under way: the resync comes again later
            // and then finds no copy (or, if the deletion failed, the copy left over; see below).
            throw new GalleonError('BUSY', `the copy of volume ${volumeId} on node ${this.nodeId} is being deleted; a resync retries later`)
          }
          // A new copy: created here first.
          if (!this.#sets.has(volumeId)) {
            // Only for a volume whose record places a copy here, checked again once it exists: a
            // resync that was on its way while the volume was deleted (or the copy given up) must
            // not leave a copy nobody knows of.
            // And only from the node the record names as primary (not a stale one, nor for a record
            // left naming this node alone after its volume was made local again).
            const placed = async (): Promise<boolean> => {
              const entry = await this.#coordinator.get(recordKey(volumeId))
              const record = entry === undefined ? undefined : parseRecord(entry.value)
              return record !== undefined && record.nodes.includes(this.nodeId) && record.primary === from && from !== this.nodeId
            }
            const refused = (): GalleonError => new GalleonError('VOLUME_NOT_FOUND', `volume ${volumeId} has no copy placed on node ${this.nodeId} by primary ${from} (it was deleted, the copy here was given up, or ${from} is not its primary)`)
            if (!(await placed())) throw refused()
            // A local volume of this id that is no copy in the cluster, although the record places
            // one here, is the copy of an earlier placement whose deletion failed: it is taken back
            // (and resynced). One the record does not place here (a volume made local again) was
            // refused above: a resync must never overwrite it.
            await this.#host.createCopy(request.header.spec as VolumeSpec)
            if (!(await placed()) && !this.#sets.has(volumeId)) {
              await this.#host.deleteCopy(volumeId)
              throw refused()
            }
            // The copy of the same id that was being deleted here is not gone yet (createCopy
            // found its record): tried again once it is.
            if (this.#host.blocks(volumeId) === undefined) throw new GalleonError('BUSY', `the earlier copy of volume ${volumeId} on node ${this.nodeId} is still being deleted; a resync retries later`)
            if (!this.#sets.has(volumeId)) {
              const set = this.#setOf(volumeId)
              void this.#refresh(set)
            }
          }
        }
        const set = this.#sets.get(volumeId)
        if (set === undefined) {
          if (kind === 'repl:delete') return { kind: 'ok', header: {} }
          // I/O sent here as to the primary: this node handed the volume off (or never had it), so
          // the sender's record is old; it looks again (a deleted volume is gone from its record too).
          if (kind === 'repl:io') throw new GalleonError('NOT_LEADER', `node ${this.nodeId} holds no copy of volume ${volumeId} (any more): it is not its primary`)
          throw new GalleonError('VOLUME_NOT_FOUND', `node ${this.nodeId} holds no copy of volume ${volumeId}`)
        }
        if (kind === 'repl:io') return await handler(set, request.header, request.payload, from)
        if (kind !== 'repl:delete') this.#fence(set, request.header.epoch)
        if (kind === 'repl:apply') await this.#turn(set, request.header)
        const run = set.chain.then(async () => {
          if (kind !== 'repl:apply' && set.applying.size > 0) await Promise.allSettled(set.applying)
          return await handler(set, request.header, request.payload, from)
        })
        set.chain = run.catch(() => {})
        const reply = await run
        if (kind === 'repl:apply' && reply.kind === 'applied') {
          // Issued in order under the chain; applied and made durable outside it, so that batches
          // in flight together share their store writes and syncs (the journal groups them).
          const position = { epoch: request.header.epoch as number, seq: reply.header.seq as number }
          try {
            await this.#pendingApply.get(reply)
          } catch (err) {
            // What this copy holds is no longer known exactly: the next resync compares everything.
            set.position = { epoch: 0, seq: 0 }
            throw err
          }
          // The writes were synced with their data (#issueAll, durable); a store without syncs,
          // or a batch of other changes, is flushed here.
          if (!this.#host.engine.store.supports.durableSync || !changesOnlyData(request.header.changes)) await this.#host.engine.flush()
          if (position.epoch > set.durable.epoch || (position.epoch === set.durable.epoch && position.seq > set.durable.seq)) set.durable = position
          this.#savePositionSoon(set)
        }
        return reply
      })
    }
    this.#cluster.handle('repl:layout', async (_from, request) => {
      const volumeId = request.header.volumeId
      if (typeof volumeId !== 'string') throw new GalleonError('INVALID_ARGUMENT', 'repl:layout needs a volumeId')
      return { kind: 'layout', header: { ...this.#host.copyLayout(volumeId, request.header.retry === true) } }
    })
    on('repl:apply', async (set, header, payload) => {
      const epoch = header.epoch as number
      const from = header.from as number
      if (set.resyncing || set.position.epoch !== epoch || set.position.seq + 1 !== from) {
        return { kind: 'resync', header: { epoch: set.position.epoch, seq: set.position.seq } }
      }
      const changes = decodeChanges(header.changes, payload)
      const blocks = this.#copy(set)
      // Issued in order here; the reply waits (outside the chain) until they are applied and durable.
      const { done: applied } = await this.#issueAll(set, blocks, changes, true)
      set.position = { epoch, seq: from + changes.length - 1 }
      const reply: TransportMessage = { kind: 'applied', header: { seq: set.position.seq } }
      this.#pendingApply.set(reply, applied)
      set.applying.add(applied)
      void applied.finally(() => set.applying.delete(applied)).catch(() => {})
      return reply
    })
    on('repl:resync-begin', async (set, header) => {
      set.resyncing = true
      set.nextFrom = undefined
      this.#adoptPrimaryHint(set, header)
      // A copy that missed an expansion grows first, so the blocks beyond its old end can come.
      const size = (header.spec as { sizeBytes?: unknown } | undefined)?.sizeBytes
      if (Number.isSafeInteger(size) && (size as number) > this.#copy(set).sizeBytes) await this.#host.applyExpand(set.volumeId, size as number)
      return { kind: 'resync-state', header: { epoch: set.position.epoch, seq: set.position.seq, snapshots: this.#host.snapshots(set.volumeId).map((s) => s.id) } }
    })
    on('repl:resync-prune', async (set, header) => {
      for (const id of header.snapshots as string[]) await this.#host.applyDeleteSnapshot(set.volumeId, id)
      return { kind: 'ok', header: {} }
    })
    on('repl:digests', async (set, header) => {
      const blocks = this.#copy(set)
      const { indices, digests } = await digestRange(this.#host.engine, blocks, header.first as number, header.count as number, LIVE)
      return { kind: 'digests', header: { indices }, payload: digests }
    })
    on('repl:resync-blocks', async (set, header, payload) => {
      const blocks = this.#copy(set)
      const bs = this.#host.engine.blockSize
      const indices = header.indices as number[]
      const zero = header.zero as number[]
      const limit = Math.ceil(blocks.sizeBytes / bs)
      for (const list of [indices, zero]) {
        if (!Array.isArray(list) || !list.every((i) => Number.isSafeInteger(i) && i >= 0 && i < limit)) throw new GalleonError('INVALID_ARGUMENT', 'resync blocks need lists of block indices within the volume')
      }
      let at = 0
      if (payload === undefined ? indices.length > 0 : payload.byteLength < indices.length * bs) throw new GalleonError('INVALID_ARGUMENT', 'resync blocks are shorter than their list says')
      const changes: ReplicatedChange[] = zero.map((index) => ({ type: 'trim', offset: index * bs, length: bs }))
      for (const index of indices) {
        changes.push({ type: 'write', offset: index * bs, data: (payload as Uint8Array).subarray(at, at + bs) })
        at += bs
      }
      await this.#applyAll(set, blocks, changes)
      return { kind: 'ok', header: {} }
    })
    on('repl:resync-snapshot', async (set, header) => {
      await this.#host.engine.flush()
      const size = header.sizeBytes
      // The size the primary's snapshot has: the copy may have grown to the volume's size since.
      if (size !== undefined && (!Number.isSafeInteger(size) || (size as number) <= 0)) throw new GalleonError('INVALID_ARGUMENT', `repl:resync-snapshot has a bad sizeBytes: ${describe(size)}`)
      await this.#host.applySnapshot(set.volumeId, String(header.id), String(header.name), size as number | undefined)
      return { kind: 'ok', header: {} }
    })
    on('repl:resync-end', async (set, header) => {
      if (!Number.isSafeInteger(header.seq) || (header.seq as number) < 0) throw new GalleonError('INVALID_ARGUMENT', 'resync-end needs the sequence number of the cut')
      await this.#host.engine.flush()
      set.position = { epoch: header.epoch as number, seq: header.seq as number }
      set.durable = set.position
      set.nextFrom = set.position.seq + 1
      set.resyncing = false
      await this.#host.savePosition(set.volumeId, set.position)
      return { kind: 'ok', header: {} }
    })
    on('repl:delete', async (set) => {
      await this.#dropCopy(set.volumeId)
      return { kind: 'ok', header: {} }
    })
    on('repl:io', async (set, header, payload) => {
      if (set.primary === undefined) {
        throw new GalleonError('NOT_LEADER', `node ${this.nodeId} is not the primary of volume ${set.volumeId} (it is ${set.record?.primary ?? 'unknown'})`)
      }
      const reply = await this.#host.serveForwarded(set.volumeId, header as unknown as ForwardedRequest, payload)
      return { kind: 'io', header: reply.header, ...(reply.payload === undefined ? {} : { payload: reply.payload }) }
    })
    this.#cluster.serving()
  }

  /**
   * Stream batches enter the copy's queue in sequence order even if the transport hands them over
   * out of order: a batch that comes early waits (briefly) for the ones before it.
   */
  async #turn (set: LocalSet, header: Record<string, unknown>): Promise<void> {
    const from = header.from
    const changes = header.changes
    if (typeof from !== 'number' || !Array.isArray(changes)) return
    const expected = set.nextFrom
    if (expected !== undefined && from > expected && header.epoch === set.position.epoch) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 2000)
        timer.unref()
        set.turns.set(from, () => { clearTimeout(timer); resolve() })
      })
      set.turns.delete(from)
    }
    set.nextFrom = from + changes.length
    set.turns.get(set.nextFrom)?.()
  }

  /** Reads the volume's record again and takes up the role it gives. */
  async #refresh (set: LocalSet): Promise<void> {
    const entry = await this.#coordinator.get(recordKey(set.volumeId)).catch(() => undefined)
    const record = entry === undefined ? undefined : parseRecord(entry.value)
    if (record !== undefined && entry !== undefined) this.#adopt(set, record, entry.revision)
  }

  /** Refuses a message from an epoch older than one this copy knows of. */
  #fence (set: LocalSet, epoch: unknown): void {
    if (typeof epoch !== 'number') throw new GalleonError('INVALID_ARGUMENT', 'replication messages carry the primary epoch')
    if (epoch < set.knownEpoch || (set.primary !== undefined && epoch <= set.primary.epoch)) {
      throw new GalleonError('NOT_LEADER', `stale epoch ${epoch}: node ${this.nodeId} knows of epoch ${Math.max(set.knownEpoch, set.primary?.epoch ?? 0)} for volume ${set.volumeId}`)
    }
    if (epoch > set.knownEpoch) {
      set.knownEpoch = epoch
      // A newer primary exists: if this node still thinks it leads, it does not.
      if (set.primary !== undefined) this.#stepDown(set, `a primary with epoch ${epoch} is shipping changes`)
    }
  }

  #adoptPrimaryHint (set: LocalSet, header: Record<string, unknown>): void {
    if (typeof header.primary === 'string' && typeof header.epoch === 'number' && (set.record === undefined || header.epoch > set.record.epoch)) {
      set.record = { ...(set.record ?? { spec: header.spec as VolumeSpec, nodes: [], inSync: [] }), primary: header.primary, epoch: header.epoch }
    }
  }

  #copy (set: LocalSet): VolumeBlocks {
    const blocks = this.#host.blocks(set.volumeId)
    if (blocks === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `node ${this.nodeId} lost its copy of volume ${set.volumeId}`)
    return blocks
  }

  /**
   * Issues changes in order without waiting for writes and trims to finish (the engine takes each
   * one's block claims as it is called, so changes to one block apply in the order issued);
   * a snapshot waits for everything before it. Resolves, once all are issued, to a promise of
   * their completion.
   */
  async #issueAll (set: LocalSet, blocks: VolumeBlocks, changes: readonly ReplicatedChange[], durable = false): Promise<{ done: Promise<void> }> {
    const engine = this.#host.engine
    // Durable: the batch's writes go to the journal as one synced group (the copy's acknowledgement
    // needs them on disk anyway; one sync with the data instead of a second one after it).
    const concern = durable && engine.store.supports.durableSync ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged
    let pending: Array<Promise<void>> = []
    const settle = async (waiting: Array<Promise<void>>): Promise<void> => {
      const results = await Promise.allSettled(waiting)
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
      if (failed !== undefined) throw failed.reason
    }
    for (const change of changes) {
      if (change.type === 'write') {
        pending.push(engine.write(blocks, change.offset, change.data, concern))
      } else if (change.type === 'trim') {
        pending.push(engine.trim(blocks, change.offset, change.length, concern))
      } else {
        const before = pending
        pending = []
        await settle(before)
        if (change.type === 'snapshot') {
          await engine.flush()
          await this.#host.applySnapshot(set.volumeId, change.id, change.name)
        } else if (change.type === 'expand') {
          await this.#host.applyExpand(set.volumeId, change.sizeBytes)
        } else if (change.type === 'revert') {
          await this.#host.applyRevert(set.volumeId, change.snapshotId)
        } else {
          await this.#host.applyDeleteSnapshot(set.volumeId, change.id)
        }
      }
    }
    const done = settle(pending)
    done.catch(() => {})
    // Wrapped: an async function returning a promise would wait for it.
    return { done }
  }

  /** Applies changes in order (as #issueAll issues them) and resolves once all are applied. */
  async #applyAll (set: LocalSet, blocks: VolumeBlocks, changes: readonly ReplicatedChange[]): Promise<void> {
    await (await this.#issueAll(set, blocks, changes)).done
  }

  /** The applied position is saved now and then (an older saved position only means a longer resync). */
  #savePositionSoon (set: LocalSet): void {
    if (set.saveTimer !== undefined) return
    set.saveTimer = setTimeout(() => {
      set.saveTimer = undefined
      void this.#host.savePosition(set.volumeId, set.durable).catch(() => {})
    }, 200)
    set.saveTimer.unref()
  }
}

/** Whether a stream batch (as its header lists it) holds only writes and trims. */
function changesOnlyData (changes: unknown): boolean {
  return Array.isArray(changes) && changes.every((c) => {
    const type = (c as { t?: unknown } | null)?.t
    return type === 'w' || type === 't'
  })
}
