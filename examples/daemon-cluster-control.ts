// The running daemon's `cluster join` (through a peer, one at a time) and `cluster leave`, as the
// API's routes call them, and what a joining daemon says while it waits for its peers.

import { GalleonError, type GalleonFS } from '../src/index.js'
import type { DaemonConfig } from './daemon-config.js'
import type { Logger } from './daemon-log.js'
import { HttpError, type RouteContext } from './daemon-routes.js'
import {
  answerClusterInfo, clusterOptions, clusterSecret, clusterTransport, discoverCluster, NO_SECRET, writeSavedCluster, type ClusterSettings, type PeerWaitReason
} from './daemon-cluster.js'

/** What a joining daemon says when it begins to wait for peers that are still starting, or (at its first start) not listening yet. */
export function waitingFor (log: Logger): (peers: readonly string[], waitMs: number, reason: PeerWaitReason) => void {
  return (peers, waitMs, reason) => {
    // Said at once, not only when the wait fails: nodes that name only each other wait in vain.
    const note = reason === 'starting' ? {} : { note: 'a node listens on its bind address only once it has found its cluster: nodes that name only each other, none started with --etcd-endpoints, wait for each other until --peer-wait-seconds is out, then fail' }
    log('info', `waiting for peers that are ${reason === 'starting' ? 'still starting' : 'not listening yet'} (--peer-wait-seconds)`, { peers, waitSeconds: waitMs / 1000, ...note })
  }
}

/** What the cluster control uses of the daemon; `g` is read at each call (the instance is opened after the control is made). */
export interface ClusterControlContext {
  readonly config: DaemonConfig
  readonly log: Logger
  readonly g: () => GalleonFS
  /** Aborted as the daemon begins to stop. */
  readonly stopBegun: AbortSignal
  /** Keeps the daemon's record of the cluster it is in (undefined once it left). */
  readonly setClusterSettings: (settings: ClusterSettings | undefined) => void
}

/** The `cluster` of the routes' context: join through a peer's address, and leave. */
export function createClusterControl (daemon: ClusterControlContext): RouteContext['cluster'] {
  const { config, log, stopBegun } = daemon
  // The address a `cluster join` under way goes through: one at a time (a second, meanwhile, would
  // wait as long, and then find this daemon in a cluster).
  let joining: string | undefined
  return {
    join: async (address: string, signal?: AbortSignal): Promise<unknown> => {
      const g = daemon.g()
      if (g.cluster !== undefined) throw new GalleonError('BUSY', `this daemon is in a cluster already, as node ${g.cluster.nodeId}; leave it first`)
      if (joining !== undefined) throw new GalleonError('BUSY', `this daemon is joining a cluster already, through ${joining} (which may be waiting for that peer to finish starting); wait for that join to end, or cancel it`)
      joining = address
      try {
        const joinSecret = await clusterSecret(config)
        if (joinSecret === undefined) throw new HttpError(409, 'NO_CLUSTER_SECRET', NO_SECRET)
        const ends = signal === undefined ? stopBegun : AbortSignal.any([signal, stopBegun])
        const found = await discoverCluster(config, joinSecret, [address], { onWait: waitingFor(log), signal: ends })
        if (ends.aborted) throw new GalleonError('CANCELLED', `the join through ${address} was cancelled${stopBegun.aborted ? ' (the daemon is stopping)' : ''}; nothing was joined`)
        const joinTransport = clusterTransport(config, joinSecret)
        const options = await clusterOptions(config, found, joinSecret, joinTransport)
        let status: unknown
        try {
          status = await daemon.g().joinCluster(options)
        } catch (err) {
          // A join refused before the instance took the drivers over (this daemon stopping, a
          // join of its own under way) leaves them to us: the etcd client and the listening
          // socket would otherwise stay open. Closing them twice is harmless.
          await Promise.allSettled([options.coordinator.close(), joinTransport.close()])
          throw err
        }
        daemon.setClusterSettings(found)
        answerClusterInfo(daemon.g(), found, joinTransport)
        await writeSavedCluster(config.storagePath, found)
        log('info', 'joined the cluster', { nodeId: (status as { nodeId?: string }).nodeId, through: address })
        return status
      } finally {
        joining = undefined
      }
    },
    leave: async (force: boolean): Promise<unknown> => {
      await daemon.g().leaveCluster({ force })
      daemon.setClusterSettings(undefined)
      await writeSavedCluster(config.storagePath, undefined)
      log('info', 'left the cluster')
      return await daemon.g().clusterStatus()
    }
  }
}
