// Storage pools as the facade shows and uses them: a pool's accounting with its volumes' real
// usage, where a pool's volume may be placed, and creating and changing pools.

import { GalleonError } from '../errors.js'
import { poolAdmits, poolPlacement as narrowPlacement, type CreatePoolOptions, type PoolPlacement, type StoragePool, type StoragePoolStatus, type UpdatePoolOptions } from '../volumes/pools.js'
import type { VolumeRecord } from '../volumes/catalog.js'
import type { FacadeHost } from './host.js'
import { metricsVolume } from './io.js'

/** A pool with its accounting: provisioned, allocated (current blocks and those snapshots keep) and free bytes. */
export function poolStatus (host: FacadeHost, pool: StoragePool): StoragePoolStatus {
  return host.pools.status(pool, (record: VolumeRecord) => {
    // A volume being deleted whose blocks are gone counts nothing (and is not attached again).
    const volume = metricsVolume(host, record)
    return volume === undefined ? 0 : (host.engine.allocatedBlocks(volume) + host.engine.heldBlocks(volume)) * host.engine.blockSize
  })
}

/**
 * Where a pool's volume may go in a cluster: the class's rules narrowed to the pool's nodes. The
 * volume's first copy is made here, so this node must be one of them. Outside a cluster the
 * pool's nodes do not apply (there is one node).
 */
export function poolPlacement (host: FacadeHost, pool: StoragePool, placement: Omit<PoolPlacement, 'nodes'>): PoolPlacement {
  const narrowed = narrowPlacement(pool, placement)
  const cluster = host.cluster
  if (cluster !== undefined && !poolAdmits(pool, { id: cluster.nodeId, zone: cluster.zone, labels: cluster.labels })) {
    const admitted = cluster.members.filter((m) => m.healthy && poolAdmits(pool, m)).map((m) => m.id)
    throw new GalleonError('INVALID_ARGUMENT', `this node (${cluster.nodeId}) is not in pool ${pool.name}${pool.nodes.length > 0 ? ` (nodes ${pool.nodes.join(', ')})` : ''}, and a volume's first copy is made on the node that creates it; create the volume on ${admitted.length > 0 ? `one of ${admitted.join(', ')}` : 'a node of the pool'}`)
  }
  return narrowed
}

/** The work of GalleonFS.createPool, once the caller is checked. */
export async function createPool (host: FacadeHost, spec: CreatePoolOptions): Promise<StoragePoolStatus> {
  const pool = await host.pools.create(spec)
  host.emit('pool:created', pool)
  return poolStatus(host, pool)
}

/** The work of GalleonFS.updatePool, once the caller is checked. */
export async function updatePool (host: FacadeHost, name: string, changes: UpdatePoolOptions): Promise<StoragePoolStatus> {
  const pool = await host.pools.update(name, changes)
  host.emit('pool:updated', pool)
  return poolStatus(host, pool)
}

/** The work of GalleonFS.deletePool, once the caller is checked. */
export async function deletePool (host: FacadeHost, name: string): Promise<void> {
  const pool = await host.pools.delete(name)
  host.emit('pool:deleted', structuredClone(pool))
}
