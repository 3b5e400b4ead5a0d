// Renders volume and store metrics in the Prometheus text exposition format, version 0.0.4.

import { GalleonError } from '../errors.js'
import type { VolumeMetricsSnapshot } from './recorder.js'

/** The HTTP Content-Type of the Prometheus text that `metricsText()` returns. */
export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'

/** One volume as {@link renderPrometheus} reports it. */
export interface PrometheusVolume {
  /** Volume id, the `volume_id` label; unique within one rendering. */
  readonly id: string
  /** Volume name, the `volume_name` label. */
  readonly name: string
  /**
   * The volume's namespace, the `namespace` label when given (names are unique per namespace only,
   * so dashboards grouping by name need it).
   */
  readonly namespace?: string
  /** The volume's current metrics. */
  readonly metrics: VolumeMetricsSnapshot
  /** Provisioned size in bytes. */
  readonly sizeBytes: number
  /** Bytes allocated in the store for the volume: its current blocks and versions only its snapshots keep. */
  readonly usedBytes: number
}

/** Block-store figures {@link renderPrometheus} reports, labelled with the backend's name. */
export interface PrometheusStore {
  /** Backend name, the `backend` label. */
  readonly backend: string
  /** Blocks held by the store. */
  readonly blocks: number
  /** Bytes of live (referenced) block data. */
  readonly liveBytes: number
  /** Bytes the store occupies, overheads included. */
  readonly storedBytes: number
  /** Syncs to stable storage since the store was constructed (a counter). */
  readonly syncs: number
}

/** One storage pool as {@link renderPrometheus} reports it, labelled `pool`. */
export interface PrometheusPool {
  /** Pool name, the `pool` label; unique within one rendering. */
  readonly name: string
  readonly capacityBytes: number
  /** Most bytes that may be provisioned (capacity times overcommit ratio). */
  readonly limitBytes: number
  readonly provisionedBytes: number
  readonly allocatedBytes: number
  /** Held for creates, clones, expansions and migrations into the pool still under way. */
  readonly reservedBytes: number
  readonly freeBytes: number
  readonly volumes: number
}

/** Input of {@link renderPrometheus}. */
export interface PrometheusInput {
  /** The volumes to report. */
  readonly volumes: readonly PrometheusVolume[]
  /** The block store's figures; its families are left without samples when absent. */
  readonly store?: PrometheusStore
  /** Storage pools; their families are written (without samples) also when there are none. */
  readonly pools?: readonly PrometheusPool[]
}

type MetricType = 'counter' | 'gauge' | 'summary'

interface VolumeFamily {
  readonly name: string
  readonly type: MetricType
  readonly help: string
  /** Samples of one volume: extra label text (`,key="value"` or empty) and value. */
  readonly samples: (volume: PrometheusVolume) => ReadonlyArray<readonly [string, number]>
  /** A summary's `_sum` and `_count` of one volume. */
  readonly totals?: (volume: PrometheusVolume) => readonly [sum: number, count: number]
}

const one = (value: number): ReadonlyArray<readonly [string, number]> => [['', value]]

// Derived figures go through toPrecision(15) so unit conversions print 409600, not 409599.99999999994.
const clean = (value: number): number => Number.isFinite(value) ? Number(value.toPrecision(15)) : value

const VOLUME_FAMILIES: readonly VolumeFamily[] = [
  { name: 'galleonfs_volume_read_ops_total', type: 'counter', help: 'Read operations completed, failed ones included.', samples: (v) => one(v.metrics.readOps) },
  { name: 'galleonfs_volume_write_ops_total', type: 'counter', help: 'Write operations completed, failed ones included.', samples: (v) => one(v.metrics.writeOps) },
  { name: 'galleonfs_volume_read_bytes_total', type: 'counter', help: 'Bytes read successfully.', samples: (v) => one(v.metrics.readBytes) },
  { name: 'galleonfs_volume_write_bytes_total', type: 'counter', help: 'Bytes written successfully.', samples: (v) => one(v.metrics.writeBytes) },
  { name: 'galleonfs_volume_trim_ops_total', type: 'counter', help: 'Trim (discard) operations completed, failed ones included.', samples: (v) => one(v.metrics.trimOps) },
  { name: 'galleonfs_volume_trim_bytes_total', type: 'counter', help: 'Bytes trimmed (discarded) successfully.', samples: (v) => one(v.metrics.trimBytes) },
  { name: 'galleonfs_volume_errors_total', type: 'counter', help: 'Read, write and trim operations that failed.', samples: (v) => one(v.metrics.errors) },
  { name: 'galleonfs_volume_checksum_errors_total', type: 'counter', help: 'Checksum failures detected on read or scrub.', samples: (v) => one(v.metrics.checksumErrors) },
  { name: 'galleonfs_volume_cache_hits_total', type: 'counter', help: 'Block-cache hits.', samples: (v) => one(v.metrics.cacheHits) },
  { name: 'galleonfs_volume_cache_misses_total', type: 'counter', help: 'Block-cache misses.', samples: (v) => one(v.metrics.cacheMisses) },
  {
    name: 'galleonfs_volume_iops',
    type: 'gauge',
    help: 'Operations per second over the sliding window, by direction (trims as their own).',
    samples: (v) => [[',direction="read"', v.metrics.readIops], [',direction="write"', v.metrics.writeIops], [',direction="trim"', v.metrics.trimIops]]
  },
  {
    name: 'galleonfs_volume_throughput_bytes_per_second',
    type: 'gauge',
    help: 'Bytes per second transferred over the sliding window, by direction.',
    samples: (v) => [
      [',direction="read"', clean(v.metrics.readThroughputMBps * 1e6)],
      [',direction="write"', clean(v.metrics.writeThroughputMBps * 1e6)]
    ]
  },
  {
    // A summary, as client libraries keep one: quantiles over a sliding window, _sum and _count
    // since open. The quantile label belongs to summaries; on a gauge, linters and tools reject it.
    name: 'galleonfs_volume_latency_seconds',
    type: 'summary',
    help: 'Operation latency: quantiles over the sliding window (histogram estimates; 0 without operations), sum and count since open.',
    samples: (v) => [
      [',quantile="0.5"', clean(v.metrics.latencyP50Ms / 1000)],
      [',quantile="0.99"', clean(v.metrics.latencyP99Ms / 1000)]
    ],
    totals: (v) => [clean(v.metrics.latencySumMs / 1000), v.metrics.readOps + v.metrics.writeOps + v.metrics.trimOps]
  },
  {
    name: 'galleonfs_volume_latency_mean_seconds',
    type: 'gauge',
    help: 'Mean operation latency over the sliding window (0 without operations).',
    samples: (v) => one(clean(v.metrics.latencyMs / 1000))
  },
  { name: 'galleonfs_volume_queue_depth', type: 'gauge', help: 'Operations in flight.', samples: (v) => one(v.metrics.queueDepth) },
  { name: 'galleonfs_volume_size_bytes', type: 'gauge', help: 'Provisioned size of the volume.', samples: (v) => one(v.sizeBytes) },
  { name: 'galleonfs_volume_used_bytes', type: 'gauge', help: 'Bytes allocated in the store for the volume (versions only its snapshots keep included).', samples: (v) => one(v.usedBytes) }
]

const STORE_FAMILIES: ReadonlyArray<{ name: string, type: 'gauge' | 'counter', help: string, value: (store: PrometheusStore) => number }> = [
  { name: 'galleonfs_store_blocks', type: 'gauge', help: 'Blocks held by the block store.', value: (s) => s.blocks },
  { name: 'galleonfs_store_live_bytes', type: 'gauge', help: 'Bytes of live block data in the block store.', value: (s) => s.liveBytes },
  { name: 'galleonfs_store_stored_bytes', type: 'gauge', help: 'Bytes the block store occupies, overheads included.', value: (s) => s.storedBytes },
  { name: 'galleonfs_store_syncs_total', type: 'counter', help: 'Syncs to stable storage issued by the block store (group commit shares one among many writes).', value: (s) => s.syncs }
]

const POOL_FAMILIES: ReadonlyArray<{ name: string, help: string, value: (pool: PrometheusPool) => number }> = [
  { name: 'galleonfs_pool_capacity_bytes', help: 'Capacity of the storage pool.', value: (p) => p.capacityBytes },
  { name: 'galleonfs_pool_limit_bytes', help: 'Most bytes the pool lets volumes provision (capacity times overcommit ratio).', value: (p) => p.limitBytes },
  { name: 'galleonfs_pool_provisioned_bytes', help: 'Sum of the sizes of the volumes in the pool.', value: (p) => p.provisionedBytes },
  { name: 'galleonfs_pool_allocated_bytes', help: 'Bytes the volumes of the pool really occupy (thin provisioning).', value: (p) => p.allocatedBytes },
  { name: 'galleonfs_pool_reserved_bytes', help: 'Bytes held for creates, clones, expansions and migrations into the pool still under way.', value: (p) => p.reservedBytes },
  { name: 'galleonfs_pool_free_bytes', help: 'Bytes that may still be provisioned in the pool (limit less provisioned and reserved).', value: (p) => p.freeBytes },
  { name: 'galleonfs_pool_volumes', help: 'Volumes in the pool.', value: (p) => p.volumes }
]

/**
 * Renders the metrics of the given volumes and block store in the Prometheus text exposition format
 * 0.0.4 (serve it with {@link PROMETHEUS_CONTENT_TYPE}). Every family is written once, with HELP
 * and TYPE lines, even when it has no sample. Volume series carry `volume_id` and `volume_name`
 * labels (and `namespace` when the input gives one); store series a `backend` label; pool series a `pool` label. Units are seconds and bytes.
 *
 * Throws INVALID_ARGUMENT when two volumes share an id, or two pools a name, since their series
 * would collide.
 */
export function renderPrometheus (input: PrometheusInput): string {
  const seen = new Set<string>()
  for (const volume of input.volumes) {
    if (seen.has(volume.id)) {
      throw new GalleonError('INVALID_ARGUMENT', `volume id ${JSON.stringify(volume.id)} appears twice in the metrics input; pass each volume once`)
    }
    seen.add(volume.id)
  }
  const pools = input.pools ?? []
  if (new Set(pools.map((pool) => pool.name)).size !== pools.length) {
    throw new GalleonError('INVALID_ARGUMENT', 'a pool name appears twice in the metrics input; pass each pool once')
  }
  const lines: string[] = []
  const header = (name: string, type: MetricType, help: string): void => {
    lines.push(`# HELP ${name} ${escapeHelp(help)}`, `# TYPE ${name} ${type}`)
  }

  header('galleonfs_volumes', 'gauge', 'Volumes known to this instance.')
  lines.push(`galleonfs_volumes ${formatValue(input.volumes.length)}`)

  const volumeLabels = input.volumes.map((v) => `volume_id="${escapeLabelValue(v.id)}",volume_name="${escapeLabelValue(v.name)}"${v.namespace === undefined ? '' : `,namespace="${escapeLabelValue(v.namespace)}"`}`)
  for (const family of VOLUME_FAMILIES) {
    header(family.name, family.type, family.help)
    input.volumes.forEach((volume, i) => {
      for (const [extraLabels, value] of family.samples(volume)) {
        lines.push(`${family.name}{${volumeLabels[i]!}${extraLabels}} ${formatValue(value)}`)
      }
      if (family.totals !== undefined) {
        const [sum, count] = family.totals(volume)
        lines.push(`${family.name}_sum{${volumeLabels[i]!}} ${formatValue(sum)}`, `${family.name}_count{${volumeLabels[i]!}} ${formatValue(count)}`)
      }
    })
  }

  for (const family of STORE_FAMILIES) {
    header(family.name, family.type, family.help)
    if (input.store !== undefined) {
      lines.push(`${family.name}{backend="${escapeLabelValue(input.store.backend)}"} ${formatValue(family.value(input.store))}`)
    }
  }

  for (const family of POOL_FAMILIES) {
    header(family.name, 'gauge', family.help)
    for (const pool of pools) lines.push(`${family.name}{pool="${escapeLabelValue(pool.name)}"} ${formatValue(family.value(pool))}`)
  }
  return lines.join('\n') + '\n'
}

/** Escapes a label value: backslash, double quote and line feed, as the text format requires. */
function escapeLabelValue (value: string): string {
  return value.replace(/[\\"\n]/g, (c) => c === '\n' ? '\\n' : '\\' + c)
}

/** Escapes HELP text: backslash and line feed. */
function escapeHelp (text: string): string {
  return text.replace(/[\\\n]/g, (c) => c === '\n' ? '\\n' : '\\\\')
}

/** A sample value: plain decimal for finite numbers, `NaN`, `+Inf` or `-Inf` otherwise. */
function formatValue (value: number): string {
  if (Number.isNaN(value)) return 'NaN'
  if (value === Infinity) return '+Inf'
  if (value === -Infinity) return '-Inf'
  return String(value)
}
