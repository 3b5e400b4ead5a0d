// What the facade reports of its volumes' use: space used and held by snapshots, I/O statistics,
// and every metric in the Prometheus text format.

import type { BlockStoreStats } from '../drivers.js'
import { GalleonError } from '../errors.js'
import { renderPrometheus } from '../metrics/prometheus.js'
import type { VolumeMetrics } from '../metrics/recorder.js'
import { renderQoSMetrics } from '../qos/prometheus.js'
import type { VolumeUsage } from '../types.js'
import { namespaceOf, type VolumeRecord } from '../volumes/catalog.js'
import type { FacadeHost } from './host.js'
import { metricsVolume } from './io.js'
import { poolStatus } from './pools.js'

/** The work of GalleonFS.getVolumeUsageDetails, once the caller is checked. */
export function volumeUsage (host: FacadeHost, record: VolumeRecord): VolumeUsage {
  const volume = metricsVolume(host, record)
  const live = volume === undefined ? 0 : host.engine.allocatedBlocks(volume)
  const held = volume === undefined ? 0 : host.engine.heldBlocks(volume)
  const blockSize = host.engine.blockSize
  return {
    allocatedBytes: (live + held) * blockSize,
    allocatedBlocks: live + held,
    liveBytes: live * blockSize,
    snapshotBytes: held * blockSize,
    sizeBytes: record.sizeBytes
  }
}

/** The work of GalleonFS.getVolumeMetrics, once the caller is checked. */
export function volumeMetrics (host: FacadeHost, record: VolumeRecord): VolumeMetrics {
  const volume = metricsVolume(host, record)
  if (volume === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
  const snapshot = volume.metrics.snapshot()
  return { volumeId: record.id, volumeName: record.name, ...snapshot, qos: host.qos.metrics(record.id) }
}

/** The text of GalleonFS.metricsText, from the block store's figures and replication's families. */
export function metricsText (host: FacadeHost, store: BlockStoreStats & { backend: string }, replicationMetrics: () => string): string {
  return renderPrometheus({
    volumes: host.catalog.volumes().flatMap((record) => {
      const volume = metricsVolume(host, record)
      if (volume === undefined) return []
      return [{
        id: record.id,
        name: record.name,
        namespace: namespaceOf(record),
        metrics: volume.metrics.snapshot(),
        sizeBytes: record.sizeBytes,
        // What getVolumeUsage reports and the volume's pool counts: versions only its snapshots keep included.
        usedBytes: (host.engine.allocatedBlocks(volume) + host.engine.heldBlocks(volume)) * host.engine.blockSize
      }]
    }),
    store,
    pools: host.pools.list().map((pool) => poolStatus(host, pool))
  }) + replicationMetrics() + renderQoSMetrics(host.catalog.volumes().map((record) => ({ id: record.id, name: record.name, namespace: namespaceOf(record), qos: host.qos.metrics(record.id) })))
}
