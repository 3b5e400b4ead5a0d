// The instance's membership of a cluster: the cluster manager and replication while it is in one,
// joining and leaving (one at a time), and the status a single node reports.

import { GalleonError, describe } from '../errors.js'
import { ClusterManager, type ClusterOptions, type ClusterStatus } from '../cluster/manager.js'
import { ReplicationManager } from '../replication/manager.js'
import { DEFAULT_NAMESPACE } from '../volumes/catalog.js'
import type { FacadeHost } from './host.js'
import type { ReplicationBridge } from './replication-bridge.js'

/** What GalleonFS.forgetClusterNode did. */
export interface ForgottenNode {
  readonly nodeId: string
  /** Volumes whose copy on the node was given up (the leader places new ones). */
  readonly copies: string[]
  /** Volumes whose list of given-up copies (droppedNodes) named the node. */
  readonly droppedLists: string[]
  /** Deleted volumes whose deletion mark named the node. */
  readonly deletionMarks: string[]
}

/** Whether and how the instance is in a cluster (GalleonFS checks the caller first). */
export class ClusterMembership {
  readonly #host: FacadeHost
  readonly #bridge: ReplicationBridge
  readonly #storagePath: string | undefined
  readonly #openedAt: string
  #cluster: ClusterManager | undefined
  /** Replication of volumes, while in a cluster. */
  #replication: ReplicationManager | undefined
  #replicationMode: 'synchronous' | 'asynchronous' = 'synchronous'
  /** The last join or leave: they run one at a time. */
  #clusterChange: Promise<unknown> = Promise.resolve()

  constructor (host: FacadeHost, bridge: ReplicationBridge, storagePath: string | undefined, openedAt: string) {
    this.#host = host
    this.#bridge = bridge
    this.#storagePath = storagePath
    this.#openedAt = openedAt
  }

  get cluster (): ClusterManager | undefined { return this.#cluster }
  get replication (): ReplicationManager | undefined { return this.#replication }
  get replicationMode (): 'synchronous' | 'asynchronous' { return this.#replicationMode }
  /** The last join or leave (close() waits for it). */
  get change (): Promise<unknown> { return this.#clusterChange }

  /** What GalleonFS.clusterStatus reports outside a cluster: this node alone, healthy and leader. */
  localStatus (): ClusterStatus {
    return {
      clustering: false,
      nodeId: 'local',
      leader: 'local',
      leaderEpoch: undefined,
      members: [{ id: 'local', address: '', zone: 'default', labels: {}, capacityBytes: 0, freeBytes: 0, healthy: true, joinedAt: this.#openedAt, leader: true, volumes: this.#host.catalog.volumes().length }]
    }
  }

  /** The work of GalleonFS.joinCluster, once the caller is checked. */
  async join (options: ClusterOptions): Promise<ClusterStatus> {
    const host = this.#host
    // Joins and leaves run one at a time, and close() waits for them.
    const run = this.#clusterChange.then(async () => {
      host.assertOpen()
      if (this.#cluster !== undefined) throw new GalleonError('BUSY', `this instance is in a cluster already, as node ${this.#cluster.nodeId}; leave it first`)
      const manager = await ClusterManager.start(options, { storagePath: this.#storagePath, emit: (event, ...args) => { host.emit(event, ...(args as [never])) }, volumeCount: () => host.catalog.volumes().length })
      let replication: ReplicationManager
      try {
        replication = await ReplicationManager.start(this.#bridge.replicationHost(), manager, options.coordinator, options.zone ?? 'default', options.replicaReplacementDelayMs === undefined ? {} : { replacementDelayMs: options.replicaReplacementDelayMs })
      } catch (err) {
        await manager.close().catch(() => {})
        throw err
      }
      if (host.closed) {
        await replication.close()
        await manager.leave({ force: true }).catch(async () => { await manager.close() })
        throw new GalleonError('NOT_OPEN', 'the instance was closed while it joined the cluster; it has left again')
      }
      this.#cluster = manager
      this.#replication = replication
      this.#replicationMode = options.replication ?? 'synchronous'
      return manager
    })
    this.#clusterChange = run.catch(() => {})
    const manager = await run
    // Joined: a status that cannot be read now does not undo that.
    return await manager.status().catch(() => ({ clustering: true, nodeId: manager.nodeId, leader: undefined, leaderEpoch: undefined, members: manager.members.map((m) => ({ ...m, leader: false })) }))
  }

  /** The work of GalleonFS.forgetClusterNode, once the caller is checked. */
  async forget (nodeId: string): Promise<ForgottenNode> {
    this.#host.assertOpen()
    if (typeof nodeId !== 'string' || nodeId.length === 0) throw new GalleonError('INVALID_ARGUMENT', `forgetClusterNode() needs the id of a node that is gone for good, got ${describe(nodeId)}`)
    const replication = this.#replication
    if (this.#cluster === undefined || replication === undefined) throw new GalleonError('INVALID_ARGUMENT', 'this instance is not in a cluster (joinCluster, or open it with { cluster })')
    return { nodeId, ...await replication.forgetNode(nodeId) }
  }

  /** The work of GalleonFS.leaveCluster, once the caller is checked. */
  async leave (options: { force?: boolean }): Promise<void> {
    const host = this.#host
    const run = this.#clusterChange.then(async () => {
      host.assertOpen()
      if (this.#cluster === undefined) throw new GalleonError('INVALID_ARGUMENT', 'this instance is not in a cluster (joinCluster, or open it with { cluster })')
      // Replicated volumes are handed off first (copies elsewhere, the primary role passed on);
      // with force they stay here, out of the cluster, and the cluster fails them over.
      if (options?.force !== true) await this.#replication?.handOff()
      const holds = host.catalog.volumes().map((record) => `${record.namespace === DEFAULT_NAMESPACE ? '' : `${record.namespace}/`}${record.name}`)
      await this.#cluster.leave({ force: options?.force === true, holds })
      this.#cluster = undefined
      await this.#replication?.close()
      this.#replication = undefined
    })
    this.#clusterChange = run.catch(() => {})
    await run
  }
}
