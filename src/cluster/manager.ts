// Cluster membership of one GalleonFS instance: it joins the coordinator under a lease (its health),
// answers its peers over the transport, campaigns for the cluster leadership (the leader makes
// placement and failover decisions, with its epoch as fencing token) and reports membership
// changes as events. Replication of volumes builds on this (see DESIGN.md §3, Replication).

import { statfs } from 'node:fs/promises'
import { GalleonError, describe } from '../errors.js'
import type { ClusterMember, Coordinator, Leadership, Transport, TransportHandler, TransportMessage } from '../drivers.js'

/** How an instance takes part in a cluster (`GalleonFS.open({ cluster })`). */
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
}

/** The cluster as one node sees it. */
export interface ClusterStatus {
  readonly clustering: boolean
  readonly nodeId: string
  /** Current leader and its epoch, if there is one. */
  readonly leader: string | undefined
  readonly leaderEpoch: number | undefined
  readonly members: ReadonlyArray<ClusterMember & { readonly leader: boolean }>
}

/** Events of a ClusterManager (also re-emitted by GalleonFS). */
export interface ClusterEvents {
  'cluster:member-joined': (member: ClusterMember) => void
  'cluster:member-left': (member: ClusterMember) => void
  'cluster:member-health': (member: ClusterMember) => void
  'cluster:leader': (event: { nodeId: string, epoch: number }) => void
}

/** What the manager needs from its instance. */
export interface ClusterHost {
  /** Where capacity is measured (the storage path), if on disk. */
  readonly storagePath: string | undefined
  emit: <K extends keyof ClusterEvents>(event: K, ...args: Parameters<ClusterEvents[K]>) => void
}

const NODE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/
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
  if (options.leaseTtlMs !== undefined && (!Number.isFinite(options.leaseTtlMs) || options.leaseTtlMs < 1000)) throw new GalleonError('INVALID_ARGUMENT', `cluster leaseTtlMs must be at least 1000, got ${describe(options.leaseTtlMs)}`)
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
  #leader: { nodeId: string, epoch: number } | undefined
  #stopWatching: (() => void) | undefined
  readonly #campaignAbort = new AbortController()
  #campaigning: Promise<void> | undefined
  #state: 'starting' | 'running' | 'left' | 'closed' = 'starting'

  private constructor (options: ClusterOptions, host: ClusterHost) {
    this.nodeId = options.nodeId
    this.#options = options
    this.#host = host
    this.handle('ping', async () => ({ kind: 'pong', header: { nodeId: this.nodeId } }))
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
    const existing = (await coordinator.members()).find((m) => m.id === this.nodeId && m.healthy)
    if (existing !== undefined && existing.address !== this.#address) {
      throw new GalleonError('BUSY', `node id ${this.nodeId} is already in the cluster, alive at ${existing.address}; give this node another id, or stop that one first`)
    }
    await coordinator.join(await this.#record(), { ttlMs: this.#options.leaseTtlMs ?? 10_000 })
    this.#members = await coordinator.members()
    this.#stopWatching = coordinator.watchMembers((members) => { this.#membersChanged(members) })
    this.#state = 'running'
    this.#campaigning = this.#campaign()
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
      } catch {}
    }
    return { id: this.nodeId, address: this.#address, zone: this.#options.zone ?? 'default', labels: { ...(this.#options.labels ?? {}) }, capacityBytes, freeBytes }
  }

  /** Campaigns for the leadership again whenever it is lost, until the node leaves or closes. */
  async #campaign (): Promise<void> {
    const signal = this.#campaignAbort.signal
    while (!signal.aborted) {
      let won: Leadership
      try {
        won = await this.#options.coordinator.campaign(CLUSTER_ELECTION, { signal })
      } catch (err) {
        if (signal.aborted) return
        // The coordinator is unreachable for now: try again after a pause.
        await new Promise((resolve) => setTimeout(resolve, 1000).unref())
        continue
      }
      this.#leadership = won
      this.#leader = { nodeId: won.nodeId, epoch: won.epoch }
      this.#host.emit('cluster:leader', { nodeId: won.nodeId, epoch: won.epoch })
      await Promise.race([won.lost, new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }))])
      if (this.#leadership === won) this.#leadership = undefined
      if (signal.aborted) return
    }
  }

  #membersChanged (members: ClusterMember[]): void {
    const before = new Map(this.#members.map((m) => [m.id, m]))
    const after = new Map(members.map((m) => [m.id, m]))
    this.#members = members
    for (const member of members) {
      const old = before.get(member.id)
      if (old === undefined) this.#host.emit('cluster:member-joined', member)
      else if (old.healthy !== member.healthy) this.#host.emit('cluster:member-health', member)
    }
    for (const old of before.values()) if (!after.has(old.id)) this.#host.emit('cluster:member-left', old)
  }

  /** Serves requests of `kind` from peers (replication registers its own). */
  handle (kind: string, handler: TransportHandler): void {
    if (this.#handlers.has(kind)) throw new GalleonError('INVALID_ARGUMENT', `a handler for ${kind} messages is already registered`)
    this.#handlers.set(kind, handler)
  }

  async #dispatch (from: string, request: TransportMessage): Promise<TransportMessage> {
    const handler = this.#handlers.get(request.kind)
    if (handler === undefined) throw new GalleonError('NOT_IMPLEMENTED', `node ${this.nodeId} does not serve ${request.kind} messages (a newer node talking to an older one?)`)
    return await handler(from, request)
  }

  /** Sends a request to another member by node id. */
  async request (nodeId: string, message: TransportMessage, options?: { timeoutMs?: number, signal?: AbortSignal }): Promise<TransportMessage> {
    const member = this.#members.find((m) => m.id === nodeId)
    if (member === undefined) throw new GalleonError('BACKEND_UNAVAILABLE', `node ${nodeId} is not a member of the cluster`)
    return await this.#options.transport.request(member.address, message, options)
  }

  /** Whether this node leads the cluster now, with its epoch. */
  get leadership (): { epoch: number } | undefined {
    return this.#leadership === undefined ? undefined : { epoch: this.#leadership.epoch }
  }

  get address (): string { return this.#address }

  /** Members as last seen (refreshed by the coordinator's watch). */
  get members (): readonly ClusterMember[] { return this.#members }

  async status (): Promise<ClusterStatus> {
    this.#assertRunning()
    const [members, leader] = await Promise.all([this.#options.coordinator.members(), this.#options.coordinator.leader(CLUSTER_ELECTION)])
    return {
      clustering: true,
      nodeId: this.nodeId,
      leader: leader?.nodeId,
      leaderEpoch: leader?.epoch,
      members: members.map((m) => ({ ...m, leader: m.id === leader?.nodeId })).sort((a, b) => a.id.localeCompare(b.id))
    }
  }

  /**
   * Leaves the cluster: gives up the leadership and removes this node's record. `holds` is what
   * this node holds that has no copy elsewhere; leaving with it is refused unless `force`.
   */
  async leave (options: { force?: boolean, holds?: string[] } = {}): Promise<void> {
    this.#assertRunning()
    if ((options.holds?.length ?? 0) > 0 && options.force !== true) {
      throw new GalleonError('BUSY', `node ${this.nodeId} holds the only copy of ${options.holds?.join(', ')}; move or replicate them first, or leave with force (their data stays on this node, out of the cluster)`)
    }
    await this.#stop()
    await this.#options.coordinator.leave()
    this.#state = 'left'
    await Promise.allSettled([this.#options.transport.close(), this.#options.coordinator.close()])
  }

  async #stop (): Promise<void> {
    this.#campaignAbort.abort()
    await this.#leadership?.resign().catch(() => {})
    await this.#campaigning?.catch(() => {})
    this.#stopWatching?.()
    this.#stopWatching = undefined
  }

  /** Stops taking part: the lease is no longer renewed (others see this node expire unless it left). */
  async close (): Promise<void> {
    if (this.#state === 'closed' || this.#state === 'left') return
    const wasRunning = this.#state === 'running'
    this.#state = 'closed'
    if (wasRunning) await this.#stop()
    await Promise.allSettled([this.#options.transport.close(), this.#options.coordinator.close()])
  }

  #assertRunning (): void {
    if (this.#state === 'left') throw new GalleonError('NOT_OPEN', `node ${this.nodeId} has left the cluster`)
    if (this.#state !== 'running') throw new GalleonError('NOT_OPEN', `node ${this.nodeId} is not running in a cluster (${this.#state})`)
  }
}
