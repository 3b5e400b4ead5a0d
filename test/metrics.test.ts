// Tests of the metrics module: the sliding-window recorder (on a fake clock) and the Prometheus
// exposition, checked with a real text-format parser.
import { describe, it } from 'node:test'
import { strict as assert } from 'node:assert'
import { createRequire } from 'node:module'
import {
  MetricsRecorder, renderPrometheus, PROMETHEUS_CONTENT_TYPE,
  type PrometheusVolume, type VolumeMetricsSnapshot
} from '../src/metrics/index.js'
import { GalleonFS, GalleonError } from '../src/index.js'
import { MemoryBlockStore } from '../backends/memory/index.js'
import { MemoryLevel } from 'memory-level'

interface ParsedSample { value?: string, labels?: Record<string, string> }
interface ParsedFamily { name: string, help: string, type: string, metrics: ParsedSample[] }
// The parser ships no types; loaded through require to type it here.
const parsePrometheusTextFormat = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => ParsedFamily[]

/** A settable millisecond clock. */
class FakeClock {
  t: number
  constructor (t = 0) { this.t = t }
  readonly now = (): number => this.t
}

/** Runs one operation on the fake clock taking `latencyMs`. */
function op (rec: MetricsRecorder, clock: FakeClock, kind: 'read' | 'write', bytes: number, latencyMs = 0, ok = true): void {
  const startedAt = rec.begin()
  clock.t += latencyMs
  rec.end(kind, bytes, startedAt, ok)
}

function near (actual: number, expected: number, relative: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= Math.abs(expected) * relative,
    `${what}: ${actual} not within ${relative * 100}% of ${expected}`)
}

describe('MetricsRecorder', () => {
  it('reports rates over the window', () => {
    const clock = new FakeClock()
    const rec = new MetricsRecorder({ now: clock.now })
    // 90 ops in buckets 1..9: every third a write of 8192 bytes, the others reads of 4096 bytes.
    for (let i = 0; i < 90; i++) {
      clock.t = 1000 + i * 100
      if (i % 3 === 2) op(rec, clock, 'write', 8192, 2)
      else op(rec, clock, 'read', 4096, 1)
    }
    clock.t = 10_500 // window = buckets 1..10: 9.5 s
    const s = rec.snapshot()
    assert.equal(s.windowSeconds, 9.5)
    near(s.iops, 90 / 9.5, 1e-12, 'iops')
    near(s.readIops, 60 / 9.5, 1e-12, 'readIops')
    near(s.writeIops, 30 / 9.5, 1e-12, 'writeIops')
    near(s.readThroughputMBps, 60 * 4096 / 1e6 / 9.5, 1e-12, 'read MB/s')
    near(s.writeThroughputMBps, 30 * 8192 / 1e6 / 9.5, 1e-12, 'write MB/s')
    near(s.throughputMBps, (60 * 4096 + 30 * 8192) / 1e6 / 9.5, 1e-12, 'MB/s')
    near(s.latencyMs, (60 * 1 + 30 * 2) / 90, 1e-9, 'mean latency')
    assert.equal(s.readOps, 60)
    assert.equal(s.writeOps, 30)
    assert.equal(s.readBytes, 60 * 4096)
    assert.equal(s.writeBytes, 30 * 8192)
    assert.equal(s.errors, 0)
  })

  it('expires buckets as time advances, keeping lifetime counters', () => {
    const clock = new FakeClock()
    const rec = new MetricsRecorder({ now: clock.now, windowSeconds: 10 })
    clock.t = 500
    for (let i = 0; i < 10; i++) op(rec, clock, 'read', 100, 5)
    clock.t = 5500
    for (let i = 0; i < 10; i++) op(rec, clock, 'write', 200, 1)

    clock.t = 9999
    let s = rec.snapshot()
    assert.equal(s.iops * s.windowSeconds, 20)
    assert.equal(s.windowSeconds, 9.999)

    clock.t = 10_000 // bucket 0 leaves the window
    s = rec.snapshot()
    assert.equal(s.windowSeconds, 9)
    near(s.readIops, 0, 0, 'readIops')
    near(s.writeIops, 10 / 9, 1e-12, 'writeIops')
    near(s.latencyMs, 1, 1e-9, 'mean latency of the remaining writes')

    clock.t = 14_999
    assert.ok(rec.snapshot().writeIops > 0, 'bucket 5 is still in the window')
    clock.t = 15_000
    s = rec.snapshot()
    assert.equal(s.iops, 0)
    assert.equal(s.throughputMBps, 0)
    assert.equal(s.latencyMs, 0)
    assert.equal(s.latencyP50Ms, 0)
    assert.equal(s.latencyP99Ms, 0)
    assert.equal(s.readOps, 10)
    assert.equal(s.writeOps, 10)
    assert.equal(s.readBytes, 1000)
    assert.equal(s.writeBytes, 2000)

    // A ring slot reused after a long idle time holds only the new operation.
    clock.t = 40_250
    op(rec, clock, 'read', 7, 3)
    clock.t = 41_000
    s = rec.snapshot()
    assert.equal(s.iops * s.windowSeconds, 1)
    assert.equal(s.readThroughputMBps * s.windowSeconds * 1e6, 7)
    assert.equal(s.latencyP50Ms, 3)
  })

  it('uses the elapsed time while younger than the window, at least one bucket', () => {
    const clock = new FakeClock(123_456.5)
    const rec = new MetricsRecorder({ now: clock.now, windowSeconds: 10 })
    for (let i = 0; i < 5; i++) { clock.t += 50; op(rec, clock, 'write', 1000) }
    let s = rec.snapshot()
    assert.equal(s.windowSeconds, 1, 'less than one bucket old: one bucket')
    assert.equal(s.writeIops, 5)
    clock.t += 2250
    s = rec.snapshot()
    assert.equal(s.windowSeconds, 2.5)
    assert.equal(s.writeIops, 2)
    near(s.writeThroughputMBps, 5000 / 1e6 / 2.5, 1e-12, 'write MB/s')
    // Later the window is the configured one less the unfilled part of the current bucket:
    // 62.5 s after creation it spans buckets 53..62, i.e. 53 s .. 62.5 s.
    clock.t += 60_000
    assert.equal(rec.snapshot().windowSeconds, 9.5)
  })

  it('estimates p50 and p99 from the histogram', () => {
    const clock = new FakeClock()
    const rec = new MetricsRecorder({ now: clock.now })
    for (let i = 0; i < 99; i++) op(rec, clock, 'read', 512, 1)
    op(rec, clock, 'read', 512, 100)
    let s = rec.snapshot()
    near(s.latencyP50Ms, 1, 0.2, 'p50 of 99 x 1 ms + 1 x 100 ms')
    // Rank 99 of 100 is the last 1 ms operation: p99 lies between the two latencies, near 1 ms.
    assert.ok(s.latencyP99Ms >= 1 && s.latencyP99Ms < 2, `p99 ${s.latencyP99Ms}`)
    near(s.latencyMs, (99 + 100) / 100, 1e-9, 'mean')

    const slow = new MetricsRecorder({ now: clock.now })
    for (let i = 0; i < 90; i++) op(slow, clock, 'write', 512, 1)
    for (let i = 0; i < 10; i++) op(slow, clock, 'write', 512, 100)
    s = slow.snapshot()
    near(s.latencyP50Ms, 1, 0.2, 'p50 of 90 x 1 ms + 10 x 100 ms')
    near(s.latencyP99Ms, 100, 0.2, 'p99 of 90 x 1 ms + 10 x 100 ms')
    assert.ok(s.latencyP99Ms <= 100, 'never above the slowest operation')

    const spread = new MetricsRecorder({ now: clock.now, windowSeconds: 1000 }) // the ops take 500 s
    for (let ms = 1; ms <= 1000; ms++) op(spread, clock, 'read', 1, ms)
    s = spread.snapshot()
    near(s.latencyP50Ms, 500, 0.1, 'p50 of 1..1000 ms')
    near(s.latencyP99Ms, 990, 0.1, 'p99 of 1..1000 ms')
    near(s.latencyMs, 500.5, 1e-9, 'mean of 1..1000 ms')
  })

  it('reports a single latency exactly across the whole range', () => {
    for (const latencyMs of [0, 0.0004, 0.003, 0.5, 7, 2000, 200_000]) {
      const clock = new FakeClock()
      const rec = new MetricsRecorder({ now: clock.now, windowSeconds: 1000 })
      for (let i = 0; i < 3; i++) op(rec, clock, 'read', 1, latencyMs)
      const s = rec.snapshot()
      near(s.latencyP50Ms, latencyMs, 1e-9, `p50 of ${latencyMs} ms`)
      near(s.latencyP99Ms, latencyMs, 1e-9, `p99 of ${latencyMs} ms`)
    }
  })

  it('tracks queue depth with overlapping operations', () => {
    const clock = new FakeClock()
    const rec = new MetricsRecorder({ now: clock.now })
    assert.equal(rec.snapshot().queueDepth, 0)
    const a = rec.begin()
    clock.t += 1
    const b = rec.begin()
    const c = rec.begin()
    assert.equal(rec.snapshot().queueDepth, 3)
    clock.t += 1
    rec.end('read', 10, b)
    assert.equal(rec.snapshot().queueDepth, 2)
    rec.end('write', 10, a)
    rec.end('read', 10, c, false)
    const s = rec.snapshot()
    assert.equal(s.queueDepth, 0)
    assert.equal(s.readOps, 2)
    assert.equal(s.writeOps, 1)
    near(s.latencyMs, (1 + 2 + 1) / 3, 1e-9, 'mean')
    rec.end('read', 10, clock.t) // an unmatched end never drives the depth negative
    assert.equal(rec.snapshot().queueDepth, 0)
  })

  it('counts failed operations as errors without their bytes', () => {
    const clock = new FakeClock()
    const rec = new MetricsRecorder({ now: clock.now })
    op(rec, clock, 'read', 4096, 2, false)
    op(rec, clock, 'write', 4096, 2, false)
    op(rec, clock, 'write', 100, 2, true)
    const s = rec.snapshot()
    assert.equal(s.errors, 2)
    assert.equal(s.readOps, 1)
    assert.equal(s.writeOps, 2)
    assert.equal(s.readBytes, 0)
    assert.equal(s.writeBytes, 100)
    assert.equal(s.readThroughputMBps, 0)
    assert.equal(s.writeThroughputMBps, 100 / 1e6)
    assert.equal(s.iops, 3, 'failed operations are still operations')
  })

  it('computes the cache hit rate over the lifetime and counts checksum errors', () => {
    const clock = new FakeClock()
    const rec = new MetricsRecorder({ now: clock.now })
    assert.equal(rec.snapshot().cacheHitRate, 0)
    rec.cacheHit(); rec.cacheHit(); rec.cacheHit(); rec.cacheMiss()
    rec.checksumError(); rec.checksumError()
    clock.t = 1e9 // no window: the rate is lifetime
    const s = rec.snapshot()
    assert.equal(s.cacheHitRate, 0.75)
    assert.equal(s.cacheHits, 3)
    assert.equal(s.cacheMisses, 1)
    assert.equal(s.checksumErrors, 2)
  })

  it('validates its options', () => {
    for (const options of [{ windowSeconds: 0 }, { windowSeconds: -1 }, { windowSeconds: Number.NaN },
      { windowSeconds: Infinity }, { bucketMs: 0 }, { bucketMs: -5 }, { windowSeconds: '10' as never }]) {
      assert.throws(() => new MetricsRecorder(options), { name: 'GalleonError', code: 'INVALID_ARGUMENT' })
    }
    assert.equal(new MetricsRecorder().windowSeconds, 10)
    assert.equal(new MetricsRecorder({ windowSeconds: undefined }).windowSeconds, 10)
    assert.equal(new MetricsRecorder({ windowSeconds: 0.5 }).windowSeconds, 0.5, 'buckets shrink to fit a short window')
    assert.equal(new MetricsRecorder({ windowSeconds: 5, bucketMs: 250 }).windowSeconds, 5)
  })

  it('works on the default clock', () => {
    const rec = new MetricsRecorder()
    const startedAt = rec.begin()
    rec.end('read', 42, startedAt)
    const s = rec.snapshot()
    assert.equal(s.readOps, 1)
    assert.equal(s.readBytes, 42)
    assert.ok(s.windowSeconds >= 1 && s.windowSeconds <= 10)
    assert.ok(s.latencyP50Ms >= 0 && s.latencyP50Ms < 1000)
  })
})

// ------------------------------------------------------------------------------ Prometheus

/** Every family, its type, and the value a volume's series should have (by extra label). */
const VOLUME_FAMILIES: Record<string, { type: string, values: (v: PrometheusVolume, label?: string) => number }> = {
  galleonfs_volume_read_ops_total: { type: 'COUNTER', values: (v) => v.metrics.readOps },
  galleonfs_volume_write_ops_total: { type: 'COUNTER', values: (v) => v.metrics.writeOps },
  galleonfs_volume_read_bytes_total: { type: 'COUNTER', values: (v) => v.metrics.readBytes },
  galleonfs_volume_write_bytes_total: { type: 'COUNTER', values: (v) => v.metrics.writeBytes },
  galleonfs_volume_trim_ops_total: { type: 'COUNTER', values: (v) => v.metrics.trimOps },
  galleonfs_volume_trim_bytes_total: { type: 'COUNTER', values: (v) => v.metrics.trimBytes },
  galleonfs_volume_errors_total: { type: 'COUNTER', values: (v) => v.metrics.errors },
  galleonfs_volume_checksum_errors_total: { type: 'COUNTER', values: (v) => v.metrics.checksumErrors },
  galleonfs_volume_cache_hits_total: { type: 'COUNTER', values: (v) => v.metrics.cacheHits },
  galleonfs_volume_cache_misses_total: { type: 'COUNTER', values: (v) => v.metrics.cacheMisses },
  galleonfs_volume_iops: { type: 'GAUGE', values: (v, d) => d === 'read' ? v.metrics.readIops : d === 'trim' ? v.metrics.trimIops : v.metrics.writeIops },
  galleonfs_volume_throughput_bytes_per_second: {
    type: 'GAUGE', values: (v, d) => 1e6 * (d === 'read' ? v.metrics.readThroughputMBps : v.metrics.writeThroughputMBps)
  },
  galleonfs_volume_latency_mean_seconds: { type: 'GAUGE', values: (v) => v.metrics.latencyMs / 1000 },
  galleonfs_volume_queue_depth: { type: 'GAUGE', values: (v) => v.metrics.queueDepth },
  galleonfs_volume_size_bytes: { type: 'GAUGE', values: (v) => v.sizeBytes },
  galleonfs_volume_used_bytes: { type: 'GAUGE', values: (v) => v.usedBytes }
}
const EXTRA_LABEL: Record<string, { key: string, values: string[] }> = {
  galleonfs_volume_iops: { key: 'direction', values: ['read', 'write', 'trim'] },
  galleonfs_volume_throughput_bytes_per_second: { key: 'direction', values: ['read', 'write'] }
}
const STORE_FAMILIES: Record<string, 'GAUGE' | 'COUNTER'> = {
  galleonfs_store_blocks: 'GAUGE',
  galleonfs_store_live_bytes: 'GAUGE',
  galleonfs_store_stored_bytes: 'GAUGE',
  galleonfs_store_syncs_total: 'COUNTER'
}
const POOL_FAMILIES = ['galleonfs_pool_capacity_bytes', 'galleonfs_pool_limit_bytes', 'galleonfs_pool_provisioned_bytes', 'galleonfs_pool_allocated_bytes', 'galleonfs_pool_reserved_bytes', 'galleonfs_pool_free_bytes', 'galleonfs_pool_volumes']
// The latency summary: parse-prometheus-text-format merges a summary's labelled series into one
// without labels, so its lines are checked as text (test/metrics-audit.test.ts parses them strictly).
const LATENCY_SUMMARY = 'galleonfs_volume_latency_seconds'
const ALL_FAMILIES = ['galleonfs_volumes', ...Object.keys(VOLUME_FAMILIES), LATENCY_SUMMARY, ...Object.keys(STORE_FAMILIES), ...POOL_FAMILIES]
const SAMPLE_VALUE = /^(NaN|[+-]Inf|-?\d+(\.\d+)?(e[+-]\d+)?)$/

/** Parses `text` and checks what holds for any rendering; returns the families by name. */
function parseChecked (text: string): Map<string, ParsedFamily> {
  assert.ok(text.endsWith('\n'), 'ends with a line feed')
  const families = parsePrometheusTextFormat(text)
  const byName = new Map<string, ParsedFamily>()
  for (const family of families) {
    assert.ok(!byName.has(family.name), `family ${family.name} appears once, its lines together`)
    byName.set(family.name, family)
  }
  assert.deepEqual([...byName.keys()].sort(), [...ALL_FAMILIES].sort(), 'exactly the documented families')
  for (const family of families) {
    assert.ok(family.help.length > 0, `${family.name} has HELP`)
    assert.equal(family.type === 'COUNTER', family.name.endsWith('_total'), `${family.name}: counters, and only they, end in _total`)
  }
  // The parser merges consecutive samples with equal labels, so a duplicate series shows up as
  // fewer parsed samples than sample lines, or as a repeated key.
  const sampleLines = text.split('\n').filter((line) => line !== '' && !line.startsWith('#') && !line.startsWith(LATENCY_SUMMARY))
  const keys = new Set<string>()
  let parsed = 0
  for (const family of families) {
    if (family.name === LATENCY_SUMMARY) continue
    for (const sample of family.metrics) {
      parsed++
      assert.match(sample.value ?? '', SAMPLE_VALUE, `${family.name} value`)
      const labels = Object.entries(sample.labels ?? {}).sort(([a], [b]) => a < b ? -1 : 1)
      keys.add(family.name + JSON.stringify(labels))
    }
  }
  assert.equal(parsed, sampleLines.length, 'every sample line parsed as its own series')
  assert.equal(keys.size, parsed, 'no duplicate series')
  return byName
}

function volumeWithTraffic (id: string, name: string, clock: FakeClock): PrometheusVolume {
  const rec = new MetricsRecorder({ now: clock.now })
  for (let i = 0; i < 40; i++) op(rec, clock, 'read', 4096, 1)
  for (let i = 0; i < 9; i++) op(rec, clock, 'write', 8192, 3)
  op(rec, clock, 'write', 8192, 250, false)
  rec.cacheHit(); rec.cacheMiss(); rec.checksumError()
  rec.begin()
  clock.t += 1700
  return { id, name, metrics: rec.snapshot(), sizeBytes: 1 << 30, usedBytes: 45 * 4096 }
}

describe('renderPrometheus', () => {
  it('renders every family with its type, labels escaped, values matching the snapshots', () => {
    const clock = new FakeClock()
    const volumes = [
      volumeWithTraffic('vol-1', 'plain', clock),
      volumeWithTraffic('vol-"2"', 'we"ird\\name\nwith {braces}, commas=and spaces ', clock),
      volumeWithTraffic('vol-3', '', clock)
    ]
    const store = { backend: 'mem\\"ory"\n', blocks: 123, liveBytes: 456_789, storedBytes: 1_000_000, syncs: 42 }
    const text = renderPrometheus({ volumes, store })
    const families = parseChecked(text)

    assert.equal(families.get('galleonfs_volumes')!.type, 'GAUGE')
    assert.deepEqual(families.get('galleonfs_volumes')!.metrics, [{ value: '3' }])

    for (const [name, spec] of Object.entries(VOLUME_FAMILIES)) {
      const family = families.get(name)!
      assert.equal(family.type, spec.type, `${name} type`)
      const extra = EXTRA_LABEL[name]
      assert.equal(family.metrics.length, volumes.length * (extra?.values.length ?? 1), `${name} series`)
      for (const volume of volumes) {
        for (const extraValue of extra?.values ?? [undefined]) {
          const sample = family.metrics.find((m) => m.labels?.volume_id === volume.id &&
            (extra === undefined || m.labels[extra.key] === extraValue))
          assert.ok(sample !== undefined, `${name} has a series for ${volume.id} ${extraValue ?? ''}`)
          assert.equal(sample.labels!.volume_name, volume.name, 'volume_name round-trips')
          assert.equal(Object.keys(sample.labels!).length, extra === undefined ? 2 : 3, 'no stray labels')
          const expected = spec.values(volume, extraValue)
          near(Number(sample.value), expected, 1e-12, `${name}{${volume.id},${extraValue ?? ''}}`)
        }
      }
    }
    for (const [name, type] of Object.entries(STORE_FAMILIES)) {
      const family = families.get(name)!
      assert.equal(family.type, type, `${name} type`)
      assert.equal(family.metrics.length, 1)
      assert.deepEqual(family.metrics[0]!.labels, { backend: store.backend }, 'backend round-trips')
    }
    assert.equal(families.get('galleonfs_store_blocks')!.metrics[0]!.value, '123')
    assert.equal(families.get('galleonfs_store_live_bytes')!.metrics[0]!.value, '456789')
    assert.equal(families.get('galleonfs_store_stored_bytes')!.metrics[0]!.value, '1000000')
    assert.equal(families.get('galleonfs_store_syncs_total')!.metrics[0]!.value, '42')

    // Spot checks of units on the first volume: base units, no float noise from the conversion.
    const first = volumes[0]!.metrics
    assert.equal(first.latencyMs, (40 * 1 + 9 * 3 + 250) / 50)
    assert.match(text, /^galleonfs_volume_latency_mean_seconds\{volume_id="vol-1",volume_name="plain"\} 0.00634$/m)
    assert.match(text, new RegExp(`^galleonfs_volume_latency_seconds\\{volume_id="vol-1",volume_name="plain",quantile="0.5"\\} ${first.latencyP50Ms / 1000}$`, 'm'))
    assert.match(text, /^galleonfs_volume_queue_depth\{volume_id="vol-1",volume_name="plain"\} 1$/m)
    assert.equal(families.get(LATENCY_SUMMARY)!.type, 'SUMMARY')
    assert.match(text, new RegExp(`^galleonfs_volume_latency_seconds\\{volume_id="vol-1",volume_name="plain",quantile="0.99"\\} ${Number((first.latencyP99Ms / 1000).toPrecision(15))}$`, 'm'))
    assert.match(text, /^galleonfs_volume_latency_seconds_sum\{volume_id="vol-1",volume_name="plain"\} 0.317$/m)
    assert.match(text, /^galleonfs_volume_latency_seconds_count\{volume_id="vol-1",volume_name="plain"\} 50$/m)
    assert.equal(text.split('\n').filter((line) => line.startsWith(LATENCY_SUMMARY)).length, volumes.length * 4, 'two quantiles, _sum and _count per volume')
    assert.ok(text.includes('volume_id="vol-\\"2\\"",volume_name="we\\"ird\\\\name\\nwith {braces}, commas=and spaces "'))
  })

  it('renders an empty instance as valid text', () => {
    const text = renderPrometheus({ volumes: [] })
    const families = parseChecked(text)
    assert.deepEqual(families.get('galleonfs_volumes')!.metrics, [{ value: '0' }])
    for (const [name, family] of families) {
      if (name !== 'galleonfs_volumes') assert.deepEqual(family.metrics, [], `${name} has no series`)
    }
    assert.match(text, /^# TYPE galleonfs_volume_read_ops_total counter$/m)
    assert.match(text, /^# HELP galleonfs_store_blocks .+$/m)
  })

  it('prints NaN and infinities as the format spells them', () => {
    const rec = new MetricsRecorder({ now: () => 0 })
    const metrics: VolumeMetricsSnapshot = {
      ...rec.snapshot(), readIops: Number.NaN, writeIops: Infinity, queueDepth: -Infinity, latencyP99Ms: Infinity
    }
    const text = renderPrometheus({ volumes: [{ id: 'v', name: 'n', metrics, sizeBytes: 0, usedBytes: 0 }] })
    parseChecked(text)
    assert.match(text, /^galleonfs_volume_iops\{volume_id="v",volume_name="n",direction="read"\} NaN$/m)
    assert.match(text, /^galleonfs_volume_iops\{volume_id="v",volume_name="n",direction="write"\} \+Inf$/m)
    assert.match(text, /^galleonfs_volume_queue_depth\{volume_id="v",volume_name="n"\} -Inf$/m)
    assert.match(text, /^galleonfs_volume_latency_seconds\{volume_id="v",volume_name="n",quantile="0.99"\} \+Inf$/m)
  })

  it('refuses two volumes with the same id', () => {
    const metrics = new MetricsRecorder({ now: () => 0 }).snapshot()
    const volume = { id: 'same', name: 'a', metrics, sizeBytes: 1, usedBytes: 0 }
    assert.throws(() => renderPrometheus({ volumes: [volume, { ...volume, name: 'b' }] }),
      { name: 'GalleonError', code: 'INVALID_ARGUMENT' })
  })

  it('names the exposition content type', () => {
    assert.equal(PROMETHEUS_CONTENT_TYPE, 'text/plain; version=0.0.4; charset=utf-8')
  })
})

describe('metrics of an instance while a volume is deleted', () => {
  it('neither shows nor brings back a volume whose blocks are gone before its record is', async () => {
    // Holds the metadata batch that removes the volume's record: the window after its blocks went.
    const db = new MemoryLevel()
    let hold: Promise<void> | undefined
    let reached: () => void = () => {}
    const atRecordDelete = new Promise<void>((resolve) => { reached = resolve })
    let release: () => void = () => {}
    const batch = db.batch.bind(db) as (...args: unknown[]) => Promise<void>
    ;(db as unknown as { batch: (...args: unknown[]) => unknown }).batch = (...args: unknown[]) => {
      const ops = args[0]
      if (Array.isArray(ops) && hold !== undefined && ops.some((op: { type?: string, key?: unknown }) => op.type === 'del' && op.key === gone.id)) {
        const held = hold
        hold = undefined
        reached()
        return held.then(async () => { await batch(...args) })
      }
      return batch(...args)
    }
    const g = await GalleonFS.open({ metadata: db as never, blockStore: new MemoryBlockStore() })
    const gone = await g.createVolume({ name: 'gone', sizeBytes: '1M' })
    try {
      await g.writeBlock('gone', 0, new Uint8Array(4096).fill(1))
      hold = new Promise<void>((resolve) => { release = resolve })
      const deleting = g.deleteVolume('gone')
      await atRecordDelete
      const during = parsePrometheusTextFormat(await g.metricsText())
      const samples = during.flatMap((family) => family.metrics.filter((m) => m.labels?.volume_name === 'gone'))
      assert.deepEqual(samples, [], 'a volume whose blocks are destroyed has no metrics to show')
      await assert.rejects(g.getVolumeMetrics('gone'), (err: unknown) => err instanceof GalleonError && err.code === 'VOLUME_NOT_FOUND')
      release()
      await deleting
      assert.ok(!(await g.metricsText()).includes('volume_name="gone"'))
    } finally {
      release()
      await g.close()
    }
  })
})

describe('metricsText namespaces', () => {
  it('labels every volume series with its namespace, so that volumes of one name in two namespaces stay apart by name too', async () => {
    const g = await GalleonFS.open({ inMemory: true, qos: { capacityIops: 100_000 } })
    try {
      await g.createVolume({ name: 'db', sizeBytes: '1M', qos: { limits: { iops: 10_000 } } })
      await g.createVolume({ name: 'db', namespace: 'tenant-b', sizeBytes: '1M', qos: { limits: { iops: 10_000 } } })
      await g.writeBlock('db', 0, new Uint8Array(4096).fill(1))
      await g.writeBlock('tenant-b/db', 0, new Uint8Array(4096).fill(2))
      await g.writeBlock('tenant-b/db', 1, new Uint8Array(4096).fill(2))
      const families = parsePrometheusTextFormat(await g.metricsText())
      const writes = families.find((family) => family.name === 'galleonfs_volume_write_ops_total')
      const byNamespace = Object.fromEntries((writes?.metrics ?? []).map((m) => [m.labels?.namespace, { name: m.labels?.volume_name, value: Number(m.value) }]))
      assert.deepEqual(byNamespace, { default: { name: 'db', value: 1 }, 'tenant-b': { name: 'db', value: 2 } })
      // The QoS families of a volume with a policy carry it too.
      const queue = families.find((family) => family.name === 'galleonfs_qos_limit_queue')
      assert.deepEqual((queue?.metrics ?? []).map((m) => m.labels?.namespace).sort(), ['default', 'tenant-b'])
    } finally {
      await g.close()
    }
  })
})
