// Cluster membership of one GalleonFS instance: it joins the coordinator under a lease (its health),
// answers its peers over the transport, campaigns for the cluster leadership (the leader makes
// placement and failover decisions, with its epoch as fencing token) and reports membership
// changes as events. Replication of volumes builds on this (see DESIGN.md §3, Replication).

import { statfs } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { GalleonError, describe } from '../errors.js'
import type { ClusterMember, Coordinator, Leadership, Transport, TransportHandler, TransportMessage } from '../drivers.js'
import { NodeIdClaim } from './node-claim.js'
import { clearClosedMark, closedNodes, markClosed } from './closed-nodes.js'
import { MAX_TTL_MS } from './coordinator-store.js'
import { PROTOCOL_FIELD, THIS_PROTOCOL, checkRequestVersion, incompatibility, versionFor } from './protocol.js'
import { NODE_ID, notMemberMessage, staleAddressEnd, startingMessage } from './refusals.js'

export { refusedBeforeRunning } from './refusals.js'

/** Header field of a cluster request naming the node it is meant for (see ClusterManager.request). */
const TO_NODE = 'toNode'

/**
 * How an instance takes part in a cluster (`GalleonFS.open({ cluster })`, `joinCluster`).
 * The instance takes `transport` and `coordinator` over once the join begins: it closes them when
 * it leaves the cluster or closes, and when the join fails part way. A join refused before it
 * begins (BUSY: in a cluster already; NOT_OPEN; INVALID_ARGUMENT: bad options) leaves them to the caller.
 */
export interface ClusterOptions {
  /** Unique in the cluster; letters, digits, `.`, `_` and `-`. */
  readonly nodeId: string
  readonly transport: Transport
  readonly coordinator: Coordinator
  /** Failure domain (default `default`): WriteDistributed and spread placement use it. */
  readonly zone?: string
  readonly labels?: Readonly<Record<string, string>>
  /** The lease that is this node's health (default 10 s): a node silent this long is unhealthy. */
  readonly leaseTtlMs?: number
  /** Where peers reach this node (default: the address the transport listens on). */
  readonly advertiseAddress?: string
  /**
   * What `flush(volume)` of a replicated volume waits for (and so NBD flushes and FUA writes, and
   * fsync on a FUSE mount): `synchronous` (default) until every in-sync copy has every change made
   * so far; `asynchronous` until this node has them durably, the copies following in the background.
   * Writes that name WriteReplicated or WriteDistributed always wait for the copies.
   */
  readonly replication?: 'synchronous' | 'asynchronous'
  /**
   * How long a node holding a copy may be unhealthy before the cluster leader gives its copy up
   * and places a new one on another node (default 10 minutes, as Longhorn waits before
   * replenishing a replica; at least 1000). A node that comes back after that drops its stale copy.
   */
  readonly replicaReplacementDelayMs?: number
  /**
   * How long a call made on a node that holds a copy of a volume but not its primary (I/O and
   * control calls it forwards, so also its NBD exports and FUSE mounts) keeps trying to reach a
   * primary, through a failover or a network partition, before it fails with BACKEND_UNAVAILABLE
   * (default 30 s; at least 1000). A primary reached but slow to answer is waited for apart from this,
   * and so is an attempt under way when the wait ends: one sent to a primary cut off without the
   * connection being reset ends only when the transport gives up on it (the TCP transport's
   * keepaliveTimeoutMs or handshakeTimeoutMs, 10 s by default), so such a call fails that much later.
   */
  readonly failoverWaitMs?: number
}

/** The cluster as one node sees it. */
export interface ClusterStatus {
  readonly clustering: boolean
  readonly nodeId: string
  /** Current leader and its epoch, if there is one. */
  readonly leader: string | undefined
  readonly leaderEpoch: number | undefined
  /** `volumes`: what the node said it holds; absent when it did not answer (unhealthy, unreachable). */
  readonly members: ReadonlyArray<ClusterMember & { readonly leader: boolean, readonly volumes?: number }>
}

/** Events of a ClusterManager (also re-emitted by GalleonFS). */
export interface ClusterEvents {
  'cluster:member-joined': (member: ClusterMember) => void
  'cluster:member-left': (member: ClusterMember) => void
  'cluster:member-health': (member: ClusterMember) => void
  'cluster:leader': (event: { nodeId: string, epoch: number }) => void
  /** Background cluster work failed (campaigning, refreshing the node's record); it is retried where that can help. */
  'cluster:error': (event: { nodeId: string, code: string, message: string }) => void
}

/** What the manager needs from its instance. */
export interface ClusterHost {
  /** Where capacity is measured (the storage path), if on disk. */
  readonly storagePath: string | undefined
  emit: <K extends keyof ClusterEvents>(event: K, ...args: Parameters<ClusterEvents[K]>) => void
  /** How many volumes this node holds (reported to peers asking for cluster status). */
  volumeCount: () => number
}

const RECORD_REFRESH_MS = 30_000
/** How long cluster status waits for each node's answer. */
const STATUS_TIMEOUT_MS = 2000
/** The election every node campaigns in; its leader decides placement and failover. */
export const CLUSTER_ELECTION = 'cluster'

function checkOptions (options: ClusterOptions): void {
  if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `cluster options must be an object such as { nodeId, transport, coordinator }, got ${describe(options)}`)
  if (typeof options.nodeId !== 'string' || !NODE_ID.test(options.nodeId)) throw new GalleonError('INVALID_ARGUMENT', `cluster nodeId must be 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit, got ${describe(options.nodeId)}`)
  for (const [key, method] of [['transport', 'request'], ['coordinator', 'campaign']] as const) {
    const driver = options[key] as unknown as Record<string, unknown> | undefined
    if (driver === null || typeof driver !== 'object' || typeof driver[method] !== 'function') throw new GalleonError('INVALID_ARGUMENT', `cluster ${key} must be a ${key === 'transport' ? 'Transport' : 'Coordinator'} driver, got ${describe(driver)}`)
  }
  if (options.transport.nodeId !== options.nodeId) throw new GalleonError('INVALID_ARGUMENT', `the transport belongs to node ${options.transport.nodeId}, not ${options.nodeId}; create it with the same node id`)
  if (options.zone !== undefined && (typeof options.zone !== 'string' || options.zone.length === 0)) throw new GalleonError('INVALID_ARGUMENT', `cluster zone must be a non-empty string, got ${describe(options.zone)}`)
  if (options.labels !== undefined && (options.labels === null || typeof options.labels !== 'object' || !Object.values(options.labels).every((v) => typeof v === 'string'))) {
    throw new GalleonError('INVALID_ARGUMENT', `cluster labels must be an object of strings such as { disk: 'ssd' }, got ${describe(options.labels)}`)
  }
  if (options.replication !== undefined && options.replication !== 'synchronous' && options.replication !== 'asynchronous') throw new GalleonError('INVALID_ARGUMENT', `cluster replication must be synchronous or asynchronous, got ${describe(options.replication)}`)
  // Whole milliseconds up to what a coordinator grants (MAX_TTL_MS): refused here, before the node id is claimed.
  if (options.leaseTtlMs !== undefined && (!Number.isSafeInteger(options.leaseTtlMs) || options.leaseTtlMs < 1000 || options.leaseTtlMs > MAX_TTL_MS)) throw new GalleonError('INVALID_ARGUMENT', `cluster leaseTtlMs must be a whole number of milliseconds from 1000 to ${MAX_TTL_MS}, got ${describe(options.leaseTtlMs)}`)
  if (options.failoverWaitMs !== undefined && (!Number.isFinite(options.failoverWaitMs) || options.failoverWaitMs < 1000)) throw new GalleonError('INVALID_ARGUMENT', `cluster failoverWaitMs must be at least 1000 (milliseconds a call waits for a primary it can reach), got ${describe(options.failoverWaitMs)}`)
  if (options.replicaReplacementDelayMs !== undefined && (!Number.isFinite(options.replicaReplacementDelayMs) || options.replicaReplacementDelayMs < 1000)) throw new GalleonError('INVALID_ARGUMENT', `cluster replicaReplacementDelayMs must be at least 1000 (milliseconds a dead node's copies wait before being replaced), got ${describe(options.replicaReplacementDelayMs)}`)
}

/** One node's part in the cluster. */
export class ClusterManager {
  readonly nodeId: string
  readonly #options: ClusterOptions
  readonly #host: ClusterHost
  readonly #handlers = new Map<string, TransportHandler>()
  #address = ''
  #members: ClusterMember[] = []
  #leadership: Leadership | undefined
  #stopWatching: (() => void) | undefined
  #campaignAbort = new AbortController()
  #campaigning: Promise<void> | undefined
  #refresh: NodeJS.Timeout | undefined
  #state: 'starting' | 'running' | 'leaving' | 'left' | 'closed' = 'starting'
  /** This instance's claim of the node id in the coordinator. */
  readonly #claim: NodeIdClaim

  private constructor (options: ClusterOptions, host: ClusterHost) {
    this.nodeId = options.nodeId
    this.#options = options
    this.#host = host
    this.#claim = new NodeIdClaim(options.coordinator, options.nodeId, this.#ttlMs)
    this.handle('ping', async () => ({ kind: 'pong', header: { nodeId: this.nodeId } }))
    this.handle('node-info', async () => ({ kind: 'node-info', header: { nodeId: this.nodeId, volumes: this.#host.volumeCount() } }))
  }

  /** Listens on the transport, joins the coordinator and starts campaigning. */
  static async start (options: ClusterOptions, host: ClusterHost): Promise<ClusterManager> {
    checkOptions(options)
    const manager = new ClusterManager(options, host)
    try {
      await manager.#start()
    } catch (err) {
      await manager.close().catch(() => {})
      throw err
    }
    return manager
  }

  async #start (): Promise<void> {
    const { transport, coordinator } = this.#options
    const listening = await transport.listen(async (from, request) => await this.#dispatch(from, request))
    this.#address = this.#options.advertiseAddress ?? listening
    // A node that cannot talk to the cluster's running nodes (releases too far apart) stays out,
    // before it claims anything: it would take copies and leadership it could not serve.
    for (const member of await coordinator.members()) {
      const why = member.healthy && member.id !== this.nodeId ? incompatibility(member) : undefined
      if (why !== undefined) throw new GalleonError('IO_ERROR', `node ${this.nodeId} cannot join the cluster: ${why}`)
    }
    await this.#claim.take()
    await coordinator.join(await this.#record(), { ttlMs: this.#ttlMs })
    this.#members = await coordinator.members()
    // The mark of this node's last clean close no longer applies (it names that membership only:
    // removed here so that marks do not pile up).
    await clearClosedMark(coordinator, this.nodeId).catch((err: unknown) => { this.#reportError('removing the mark of this node\'s last close', err) })
    this.#startWatching()
    this.#state = 'running'
    this.#startRefresh()
  }

  /** The record's free space goes stale as volumes fill: refreshed now and then (placement uses it). */
  #startRefresh (): void {
    const { coordinator } = this.#options
    this.#refresh = setInterval(() => {
      void this.#record().then(async (record) => { if (this.#state === 'running') await coordinator.join(record, { ttlMs: this.#ttlMs }) }).catch((err: unknown) => { this.#reportError('refreshing this node\'s record', err) })
    }, RECORD_REFRESH_MS)
    this.#refresh.unref()
  }

  get #ttlMs (): number { return this.#options.leaseTtlMs ?? 10_000 }

  /** How long this node's lease lasts unrenewed (ClusterOptions.leaseTtlMs). */
  get leaseTtlMs (): number { return this.#ttlMs }

  #startWatching (): void {
    this.#stopWatching = this.#options.coordinator.watchMembers((members) => { this.#membersChanged(members) })
    this.#campaignAbort = new AbortController()
    this.#campaigning = this.#campaign(this.#campaignAbort.signal)
  }

  /** Something failed in the background: said as an event, never swallowed. */
  #reportError (what: string, err: unknown): void {
    this.#host.emit('cluster:error', { nodeId: this.nodeId, code: (err as { code?: string })?.code ?? 'IO_ERROR', message: `${what}: ${(err as Error)?.message ?? String(err)}` })
  }

  /** This node as the coordinator records it, with the free space of its storage. */
  async #record (): Promise<Omit<ClusterMember, 'healthy' | 'joinedAt'>> {
    let capacityBytes = 0
    let freeBytes = 0
    if (this.#host.storagePath !== undefined) {
      try {
        const fs = await statfs(this.#host.storagePath)
        capacityBytes = fs.blocks * fs.bsize
        freeBytes = fs.bavail * fs.bsize
      } catch (err) {
        this.#reportError(`measuring the free space of ${this.#host.storagePath}`, err)
      }
    }
    return { id: this.nodeId, address: this.#address, zone: this.#options.zone ?? 'default', labels: { ...(this.#options.labels ?? {}) }, capacityBytes, freeBytes, protocol: THIS_PROTOCOL }
  }

  /** Campaigns for the leadership again whenever it is lost, until the node leaves or closes. */
  async #campaign (signal: AbortSignal): Promise<void> {
    let pause = 250
    while (!signal.aborted) {
      let won: Leadership
      try {
        won = await this.#options.coordinator.campaign(CLUSTER_ELECTION, { signal })
      } catch (err) {
        if (signal.aborted) return
        const code = (err as { code?: string })?.code
        this.#reportError('campaigning for the cluster leadership', err)
        // Errors that waiting does not cure end the campaign; others are retried with backoff.
        if (code === 'NOT_OPEN' || code === 'INVALID_ARGUMENT' || code === 'PERMISSION_DENIED') return
        await sleep(pause, undefined, { signal }).catch(() => {})
        pause = Math.min(pause * 2, 5000)
        continue
      }
      pause = 250
      if (signal.aborted) {
        // Won while stopping: give it back at once.
        await won.resign().catch(() => {})
        return
      }
      this.#leadership = won
      this.#host.emit('cluster:leader', { nodeId: won.nodeId, epoch: won.epoch })
      let onAbort: (() => void) | undefined
      const aborted = new Promise<void>((resolve) => {
        onAbort = resolve
        signal.addEventListener('abort', onAbort, { once: true })
      })
      await Promise.race([won.lost, aborted])
      signal.removeEventListener('abort', onAbort as () => void)
      if (this.#leadership === won) this.#leadership = undefined
      if (signal.aborted) {
        await won.resign().catch(() => {})
        return
      }
      // Lost without resigning: its lease ended (keepalives did not reach the coordinator) or its
      // key went. A waiting candidate's campaign fails and says so; the leader must say so too.
      this.#host.emit('cluster:error', { nodeId: this.nodeId, code: 'NOT_LEADER', message: `node ${this.nodeId} lost the cluster leadership (epoch ${won.epoch}): its lease ended (its keepalives did not reach the coordinator in time) or its campaign key was removed; it campaigns again` })
    }
  }

  /** Told when a node joins, joins again (a restarted process) or becomes healthy again (see onMemberBack). */
  readonly #backListeners = new Set<(nodeId: string) => void>()

  /**
   * Calls `listener(false)` when this node's lease ends while it is a member, `listener(true)` once
   * it holds a new one (see Coordinator.onLeaseChange; never called for a coordinator without it).
   */
  onLeaseChange (listener: (held: boolean) => void): () => void {
    return this.#options.coordinator.onLeaseChange?.(listener) ?? (() => {})
  }

  /**
   * Calls `listener` with a node's id when it joins, joins again or becomes healthy again:
   * replication's links to it retry at once rather than when their back-off ends. Returns a
   * function that stops it.
   */
  onMemberBack (listener: (nodeId: string) => void): () => void {
    this.#backListeners.add(listener)
    return () => { this.#backListeners.delete(listener) }
  }

  #membersChanged (members: ClusterMember[]): void {
    const before = new Map(this.#members.map((m) => [m.id, m]))
    const after = new Map(members.map((m) => [m.id, m]))
    this.#members = members
    for (const member of members) {
      const old = before.get(member.id)
      if (old === undefined) this.#host.emit('cluster:member-joined', member)
      else if (old.healthy !== member.healthy) this.#host.emit('cluster:member-health', member)
      if (member.id !== this.nodeId && (old === undefined || old.joinedAt !== member.joinedAt || versionFor(old) !== versionFor(member))) {
        // Placement leaves it out and requests to it are refused; said once per (re)join.
        const why = incompatibility(member)
        if (why !== undefined) this.#host.emit('cluster:error', { nodeId: this.nodeId, code: 'IO_ERROR', message: `${why}; it gets no copies and this node sends it nothing` })
      }
      if (member.healthy && (old === undefined || !old.healthy || old.joinedAt !== member.joinedAt)) {
        for (const listener of this.#backListeners) listener(member.id)
      }
    }
    for (const old of before.values()) if (!after.has(old.id)) this.#host.emit('cluster:member-left', old)
  }

  /** Serves requests of `kind` from peers (replication registers its own). */
  handle (kind: string, handler: TransportHandler): void {
    if (this.#handlers.has(kind)) throw new GalleonError('INVALID_ARGUMENT', `a handler for ${kind} messages is already registered`)
    this.#handlers.set(kind, handler)
  }

  #serving = false
  /**
   * The node's services have registered their handlers. Until then (the node listens and joins
   * first), a message without a handler is answered BACKEND_UNAVAILABLE, which senders retry, not
   * NOT_IMPLEMENTED.
   */
  serving (): void { this.#serving = true }

  async #dispatch (from: string, request: TransportMessage): Promise<TransportMessage> {
    // Meant for another node: the sender's address for it is stale (that node moved, or this one
    // now listens where it did). Refused before anything is done, like an unreachable node.
    const meant = request.header[TO_NODE]
    if (typeof meant === 'string' && meant !== this.nodeId) {
      throw new GalleonError('BACKEND_UNAVAILABLE', `node ${from} sent a ${request.kind} message for node ${meant} to node ${this.nodeId}${staleAddressEnd(meant)}`)
    }
    // In a protocol version this node does not speak: refused before any handler reads it.
    checkRequestVersion(from, request.kind, request.header)
    const handler = this.#handlers.get(request.kind)
    if (handler === undefined) {
      if (!this.#serving) throw new GalleonError('BACKEND_UNAVAILABLE', startingMessage(this.nodeId, request.kind))
      throw new GalleonError('NOT_IMPLEMENTED', `node ${this.nodeId} does not serve ${request.kind} messages (a newer node talking to an older one?)`)
    }
    return await handler(from, request)
  }

  /** Sends a request to another member by node id. */
  async request (nodeId: string, message: TransportMessage, options?: { timeoutMs?: number, signal?: AbortSignal }): Promise<TransportMessage> {
    const member = this.#members.find((m) => m.id === nodeId)
    if (member === undefined) throw new GalleonError('BACKEND_UNAVAILABLE', notMemberMessage(nodeId))
    // Names the node it is meant for (the receiver refuses it if that is not itself) and the
    // protocol version it is written in.
    return await this.#options.transport.request(member.address, { ...message, header: { ...message.header, ...this.#stamp(member) } }, options)
  }

  /** Header fields of a request to `member`: the node it is meant for, and the protocol version (IO_ERROR if none is shared). */
  #stamp (member: ClusterMember): Record<string, unknown> {
    const version = versionFor(member)
    if (version === undefined) throw new GalleonError('IO_ERROR', incompatibility(member) as string)
    return { [TO_NODE]: member.id, [PROTOCOL_FIELD]: version }
  }

  /** Whether this node leads the cluster now, with its epoch. */
  get leadership (): { epoch: number } | undefined {
    return this.#leadership === undefined ? undefined : { epoch: this.#leadership.epoch }
  }

  get address (): string { return this.#address }

  /** This node's zone (`default` unless given). */
  get zone (): string { return this.#options.zone ?? 'default' }

  /** This node's labels. */
  get labels (): Readonly<Record<string, string>> { return this.#options.labels ?? {} }

  /** Members as last seen (refreshed by the coordinator's watch). */
  get members (): readonly ClusterMember[] { return this.#members }

  /** The members that closed cleanly (see closed-nodes.ts): nothing holds a volume there, though their lease runs on. */
  async closedMembers (): Promise<Set<string>> {
    return await closedNodes(this.#options.coordinator, this.#members)
  }

  async status (): Promise<ClusterStatus> {
    this.#assertRunning()
    const [members, leader] = await Promise.all([this.#options.coordinator.members(), this.#options.coordinator.leader(CLUSTER_ELECTION)])
    // Each healthy node says how many volumes it holds (a short deadline: status must not hang on one node).
    const volumes = await Promise.all(members.map(async (m) => {
      if (m.id === this.nodeId) return this.#host.volumeCount()
      if (!m.healthy) return undefined
      try {
        const reply = await this.#options.transport.request(m.address, { kind: 'node-info', header: this.#stamp(m) }, { timeoutMs: STATUS_TIMEOUT_MS })
        return typeof reply.header.volumes === 'number' ? reply.header.volumes : undefined
      } catch {
        return undefined
      }
    }))
    return {
      clustering: true,
      nodeId: this.nodeId,
      leader: leader?.nodeId,
      leaderEpoch: leader?.epoch,
      members: members.map((m, i) => ({ ...m, leader: m.id === leader?.nodeId, ...(volumes[i] === undefined ? {} : { volumes: volumes[i] }) })).sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
    }
  }

  /** BUSY when this node holds `holds`, volumes with no copy elsewhere: it leaves with them only when forced. */
  checkLeave (holds: readonly string[]): void {
    this.#assertRunning()
    if (holds.length > 0) throw new GalleonError('BUSY', `node ${this.nodeId} holds the only copy of ${holds.join(', ')}; move or replicate them first, or leave with force (their data stays on this node, out of the cluster)`)
  }

  /**
   * Leaves the cluster: gives up the leadership and removes this node's record. `holds` is what
   * this node holds that has no copy elsewhere; leaving with it is refused unless `force`.
   * `afterLeft` runs once the node is out of the membership, before the drivers close.
   */
  async leave (options: { force?: boolean, holds?: string[], afterLeft?: () => Promise<void> } = {}): Promise<void> {
    this.#assertRunning()
    if (options.force !== true) this.checkLeave(options.holds ?? [])
    this.#state = 'leaving'
    await this.#stop()
    try {
      await this.#options.coordinator.leave()
      await this.#claim.release().catch(() => {})
    } catch (err) {
      // Still a member (the coordinator keeps its lease when the leave fails): take part again
      // (watch, campaign, refresh the record), and say why the leave failed.
      this.#state = 'running'
      this.#startWatching()
      this.#startRefresh()
      throw err
    }
    this.#state = 'left'
    // No longer a member: what the caller keeps in the coordinator until then (a leaving mark) goes
    // while the coordinator is still open.
    await options.afterLeft?.().catch(() => {})
    await this.#closeDrivers()
  }

  /** Stops campaigning and watching; resolves once the campaign loop has ended and resigned. */
  async #stop (): Promise<void> {
    clearInterval(this.#refresh)
    this.#campaignAbort.abort()
    await this.#campaigning?.catch(() => {})
    await this.#leadership?.resign().catch(() => {})
    this.#leadership = undefined
    this.#stopWatching?.()
    this.#stopWatching = undefined
  }

  async #closeDrivers (): Promise<void> {
    await Promise.allSettled([this.#options.transport.close(), this.#options.coordinator.close()])
  }

  /**
   * The instance is closing, its mounts, files and NBD clients closed: nothing holds a volume here
   * now, which the node says to the others (they need not wait for its lease; see closed-nodes.ts).
   * Said before the node hands its primary roles over (the others then place no copy here, and a
   * hand-over of another closing node does not pick this one), else by close(). Once.
   */
  async markClosing (): Promise<void> {
    const membership = this.#state === 'running' ? this.#members.find((m) => m.id === this.nodeId) : undefined
    if (membership === undefined || this.#markedClosed) return
    this.#markedClosed = true
    await markClosed(this.#options.coordinator, this.nodeId, membership.joinedAt).catch((err: unknown) => { this.#reportError('marking this node closed in the coordinator (the others wait for its lease to lapse instead)', err) })
  }

  /** markClosing ran (its mark written, or its failure reported). */
  #markedClosed = false

  /** Stops taking part: the lease is no longer renewed (others see this node expire unless it left). */
  async close (): Promise<void> {
    if (this.#state === 'closed' || this.#state === 'left') return
    const wasJoined = this.#state === 'running' || this.#state === 'starting'
    // The instance closes this last, after its mounts, files and NBD clients (see markClosing).
    const membership = this.#state === 'running' && !this.#markedClosed ? this.#members.find((m) => m.id === this.nodeId) : undefined
    this.#state = 'closed'
    await this.#stop()
    if (membership !== undefined) await markClosed(this.#options.coordinator, this.nodeId, membership.joinedAt).catch((err: unknown) => { this.#reportError('marking this node closed in the coordinator (the others wait for its lease to lapse instead)', err) })
    // A clean stop gives the node id back, so that a restart need not wait for the lease to end;
    // so does a join that failed after it claimed the id (release() leaves another instance's claim alone).
    if (wasJoined) await this.#claim.release().catch(() => {})
    await this.#closeDrivers()
  }

  #assertRunning (): void {
    if (this.#state === 'left') throw new GalleonError('NOT_OPEN', `node ${this.nodeId} has left the cluster`)
    if (this.#state !== 'running') throw new GalleonError('NOT_OPEN', `node ${this.nodeId} is not running in a cluster (${this.#state})`)
  }
}
