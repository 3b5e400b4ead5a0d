// The instance's membership of a cluster: the cluster manager and replication while it is in one,
// joining and leaving (one at a time), and the status a single node reports.

import { GalleonError, describe } from '../errors.js'
import { ClusterManager, type ClusterOptions, type ClusterStatus } from '../cluster/manager.js'
import { ReplicationManager } from '../replication/manager.js'
import { deletedKey, parseDeleted, recordKey } from '../replication/records.js'
import type { Coordinator } from '../drivers.js'
import type { VolumeRecord } from '../volumes/records.js'
import { DEFAULT_NAMESPACE } from '../volumes/catalog.js'
import type { FacadeHost } from './host.js'
import { refuseLeaveHere } from './attachments-here.js'
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
        await this.#finishConversions(options.coordinator, manager.nodeId)
        replication = await ReplicationManager.start(this.#bridge.replicationHost(), manager, options.coordinator, options.zone ?? 'default', {
          ...(options.replicaReplacementDelayMs === undefined ? {} : { replacementDelayMs: options.replicaReplacementDelayMs }),
          ...(options.failoverWaitMs === undefined ? {} : { failoverWaitMs: options.failoverWaitMs })
        })
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

  /**
   * Volumes that were becoming replicated when this node stopped (see VolumeRecord.convertingFrom):
   * one whose cluster record was written is replicated, and its marker goes; one whose record
   * never got written (and whose deletion no mark names this node) gets its class and copies back,
   * a local volume again as before the call, said by a replication:error. A coordinator that cannot
   * be read fails the join (BACKEND_UNAVAILABLE), with nothing changed.
   */
  async #finishConversions (coordinator: Coordinator, nodeId: string): Promise<void> {
    const catalog = this.#host.catalog
    for (const record of catalog.volumes()) {
      const from = record.convertingFrom
      if (record.creating !== true && from === undefined) continue
      const what = record.creating === true ? 'being created' : 'becoming replicated'
      // Replicated for good, or made local again since: a conversion's marker is only left over.
      if (record.creating !== true && record.replication === undefined) {
        await catalog.updateVolume(record.id, { convertingFrom: undefined })
        continue
      }
      let recorded: boolean
      let deleted: boolean
      try {
        recorded = await coordinator.get(recordKey(record.id)) !== undefined
        const mark = recorded ? undefined : await coordinator.get(deletedKey(record.id))
        deleted = mark !== undefined && (parseDeleted(mark.value) ?? []).includes(nodeId)
      } catch (err) {
        // Not known whether the cluster recorded it: the join fails, and changes nothing (the
        // replication manager would otherwise take the volume for a copy no primary serves).
        throw new GalleonError('BACKEND_UNAVAILABLE', `volume ${record.name} was ${what} when this node stopped, and the coordinator could not be read to tell whether the cluster recorded it (${(err as Error)?.message ?? String(err)}); nothing was changed: join again once the coordinator answers`, { cause: err })
      }
      if (recorded) {
        await catalog.updateVolume(record.id, record.creating === true ? { creating: undefined } : { convertingFrom: undefined })
      } else if (deleted) {
        // Recorded, and deleted since while this node was away: the replication manager drops the copy.
      } else if (record.creating === true) {
        // Never recorded: createVolume never answered (it resolves only once the marker is
        // cleared); deleted as its own failure path does.
        await this.#host.destroy(record, true)
        this.#host.emit('replication:error', { volumeId: record.id, nodeId, code: 'CANCELLED', message: `volume ${record.name} was being created (storage class ${record.storageClass}) when this node stopped, before the cluster recorded it, so the call never answered; it was removed. Call createVolume again` })
      } else {
        const back = from as { storageClass: string, replicas: number }
        await catalog.updateVolume(record.id, { storageClass: back.storageClass, replicas: back.replicas, replication: undefined, convertingFrom: undefined })
        this.#host.emit('replication:error', { volumeId: record.id, nodeId, code: 'CANCELLED', message: `volume ${record.name} was becoming replicated (migrateVolume to class ${record.storageClass}, or to another node) when this node stopped, before the cluster recorded it; it is a local volume of class ${back.storageClass} again, its data as it was. Call migrateVolume again` })
      }
    }
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
      const names = (records: readonly VolumeRecord[]): string[] => records.map((record) => `${record.namespace === DEFAULT_NAMESPACE ? '' : `${record.namespace}/`}${record.name}`)
      // Replicated volumes are handed off first (copies elsewhere, the primary role passed on);
      // with force they stay here, out of the cluster, and the cluster fails them over. A leave
      // that local volumes (no copy elsewhere) refuse is refused before anything is handed off:
      // a refused call must not have moved every replicated volume away.
      const replication = this.#replication
      if (options?.force !== true) {
        this.#cluster.checkLeave(names(host.catalog.volumes().filter((record) => record.replication === undefined)))
        // The hand-off deletes this node's copies: refused while anything holds one here. From
        // handOff's first step (this same turn) nothing new attaches here (see MountBridge).
        refuseLeaveHere(host, host.catalog.volumes().filter((record) => record.replication !== undefined))
        await replication?.handOff()
      }
      // What is still here (a volume created meanwhile, say) is checked again. The leaving mark
      // (handOff's) stays until the node is out of the membership, or its leave failed.
      try {
        await this.#cluster.leave({ force: options?.force === true, holds: names(host.catalog.volumes()), afterLeft: async () => await replication?.releaseLeavingMark() })
      } catch (err) {
        await replication?.releaseLeavingMark()
        throw err
      }
      this.#cluster = undefined
      await this.#replication?.close()
      this.#replication = undefined
    })
    this.#clusterChange = run.catch(() => {})
    await run
  }
}
