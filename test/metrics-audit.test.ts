// Audit of metrics, the Prometheus text and events: a strict parser of the text exposition format
// 0.0.4 (with the naming rules of Prometheus' own linter, promlint) run on a busy two-node instance,
// gauges checked against what the API reports, counters that never go back, metrics of deleted
// volumes dropped, events in order and exactly once, and listeners that throw.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { MetricsRecorder, renderPrometheus } from '../src/metrics/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { ManualClock } from './support/manual-clock.js'
import { until } from './support/wait.js'

const exec = promisify(execFile)
const dirs: string[] = []
after(async () => { await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true }))) })
async function tempDir (prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  dirs.push(dir)
  return dir
}

// ------------------------------------------------------------------ a strict exposition parser

interface Sample { readonly name: string, readonly labels: Readonly<Record<string, string>>, readonly value: number }
interface Family { readonly name: string, type?: string, help?: string, readonly samples: Sample[] }

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/
const VALUE = /^(?:[+-]?Inf|NaN|[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)$/
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped'])
// promlint's base units and the prefixes that make a non-base one (client_golang testutil/promlint).
const UNITS = ['seconds', 'bytes', 'meters', 'grams', 'joules', 'volts', 'amperes', 'celsius']
const UNIT_PREFIXES = ['pico', 'nano', 'micro', 'milli', 'centi', 'deci', 'deca', 'hecto', 'kilo', 'kibi', 'mega', 'mibi', 'giga', 'gibi', 'tera', 'tebi', 'peta', 'pebi']
const NON_BASE_UNITS = ['minutes', 'hours', 'days', 'weeks', 'bits']

function parseValue (text: string, line: string): number {
  assert.match(text, VALUE, `not a sample value: ${JSON.stringify(line)}`)
  return text.endsWith('Inf') ? (text.startsWith('-') ? -Infinity : Infinity) : Number(text)
}

/** Label set `{a="x",b="y"}` starting at `text[0] === '{'`: the labels and where the set ends. */
function parseLabels (text: string, line: string): { labels: Record<string, string>, end: number } {
  const labels: Record<string, string> = {}
  let i = 1
  while (text[i] !== '}') {
    const eq = text.indexOf('=', i)
    assert.ok(eq > i, `label without '=': ${JSON.stringify(line)}`)
    const name = text.slice(i, eq)
    assert.match(name, LABEL_NAME, `label name ${JSON.stringify(name)} in ${JSON.stringify(line)}`)
    assert.ok(!name.startsWith('__'), `reserved label name ${name}`)
    assert.ok(!(name in labels), `label ${name} twice in ${JSON.stringify(line)}`)
    assert.equal(text[eq + 1], '"', `label value not quoted: ${JSON.stringify(line)}`)
    let value = ''
    let j = eq + 2
    for (;;) {
      const c = text[j]
      assert.ok(c !== undefined, `unterminated label value: ${JSON.stringify(line)}`)
      if (c === '"') break
      if (c === '\\') {
        const next = text[j + 1]
        assert.ok(next === '\\' || next === '"' || next === 'n', `bad escape \\${next ?? ''} in ${JSON.stringify(line)}`)
        value += next === 'n' ? '\n' : next
        j += 2
      } else {
        value += c
        j++
      }
    }
    labels[name] = value
    i = j + 1
    if (text[i] === ',') i++
    else assert.equal(text[i], '}', `expected ',' or '}' after a label: ${JSON.stringify(line)}`)
  }
  return { labels, end: i + 1 }
}

/**
 * Parses Prometheus text 0.0.4 strictly and checks what must hold for any rendering: HELP and TYPE
 * once per family and before its samples, a family's lines together, no duplicate series, valid
 * names, escapes and values, counters ending in _total (and only they) and never negative or NaN,
 * summaries and histograms well formed, and promlint's naming rules.
 */
function parseExposition (text: string): Map<string, Family> {
  assert.ok(text.endsWith('\n'), 'the text ends with a line feed')
  const families = new Map<string, Family>()
  const finished = new Set<string>()
  const series = new Set<string>()
  let current: Family | undefined
  const enter = (name: string): Family => {
    let family = families.get(name)
    if (family === undefined) {
      family = { name, samples: [] }
      families.set(name, family)
    }
    if (current !== family) {
      assert.ok(!finished.has(name), `family ${name} is split: its lines must be together`)
      if (current !== undefined) finished.add(current.name)
      current = family
    }
    return family
  }
  const familyOf = (sampleName: string): Family => {
    const own = families.get(sampleName)
    if (own !== undefined) return own
    for (const suffix of ['_sum', '_count', '_bucket']) {
      if (!sampleName.endsWith(suffix)) continue
      const base = families.get(sampleName.slice(0, -suffix.length))
      if (base !== undefined && (base.type === 'histogram' || (base.type === 'summary' && suffix !== '_bucket'))) return base
    }
    assert.fail(`sample ${sampleName} has no TYPE line before it`)
  }

  for (const line of text.slice(0, -1).split('\n')) {
    if (line === '') continue
    if (line.startsWith('#')) {
      const match = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(line)
      if (match === null) continue // a plain comment
      const [, keyword, name, rest = ''] = match as unknown as [string, string, string, string?]
      assert.match(name, METRIC_NAME, `metric name ${name}`)
      const family = enter(name)
      if (keyword === 'HELP') {
        assert.equal(family.help, undefined, `HELP of ${name} twice`)
        assert.ok(!/\\[^\\n]/.test(rest.replace(/\\\\/g, '')), `bad escape in the HELP of ${name}`)
        family.help = rest
      } else {
        assert.equal(family.type, undefined, `TYPE of ${name} twice`)
        assert.equal(family.samples.length, 0, `TYPE of ${name} after its samples`)
        assert.ok(TYPES.has(rest), `type ${rest} of ${name}`)
        family.type = rest
      }
      continue
    }
    const name = /^[^{ ]+/.exec(line)?.[0] ?? ''
    assert.match(name, METRIC_NAME, `sample name in ${JSON.stringify(line)}`)
    let rest = line.slice(name.length)
    let labels: Record<string, string> = {}
    if (rest.startsWith('{')) {
      const parsed = parseLabels(rest, line)
      labels = parsed.labels
      rest = rest.slice(parsed.end)
    }
    const fields = rest.split(' ')
    assert.ok(fields[0] === '' && (fields.length === 2 || (fields.length === 3 && /^-?\d+$/.test(fields[2]!))), `sample line ${JSON.stringify(line)}`)
    const value = parseValue(fields[1]!, line)
    const family = familyOf(name)
    enter(family.name)
    const key = name + JSON.stringify(Object.entries(labels).sort(([a], [b]) => a < b ? -1 : 1))
    assert.ok(!series.has(key), `duplicate series ${key}`)
    series.add(key)
    family.samples.push({ name, labels, value })
  }

  for (const family of families.values()) {
    const { name, type } = family
    assert.ok(type !== undefined, `${name} has a TYPE`)
    assert.ok(family.help !== undefined && family.help.length > 0, `${name} has HELP text`)
    // promlint: counters, and only they, end in _total; quantile and le only where they belong.
    assert.equal(type === 'counter', name.endsWith('_total'), `${name} (${type}): counters, and only counters, end in _total`)
    assert.ok(!/[a-z][A-Z]/.test(name), `${name} in snake_case`)
    assert.ok(!/_(gauge|counter|summary|histogram)(_|$)/.test(name), `${name} names its type`)
    if (type !== 'histogram') assert.ok(!/_(bucket)$/.test(name), `${name}: _bucket is a histogram's`)
    if (type !== 'histogram' && type !== 'summary') assert.ok(!/_(sum|count)$/.test(name), `${name}: _sum/_count are a summary's or histogram's`)
    for (const word of name.split('_')) {
      assert.ok(!NON_BASE_UNITS.includes(word), `${name}: use a base unit instead of ${word}`)
      for (const prefix of UNIT_PREFIXES) {
        if (word.startsWith(prefix)) assert.ok(!UNITS.includes(word.slice(prefix.length)), `${name}: use the base unit instead of ${word}`)
      }
    }
    for (const sample of family.samples) {
      if (type !== 'summary') assert.ok(!('quantile' in sample.labels), `${name}: the quantile label belongs to summaries`)
      if (type !== 'histogram') assert.ok(!('le' in sample.labels), `${name}: the le label belongs to histograms`)
      if (type === 'counter') assert.ok(sample.value >= 0 && Number.isFinite(sample.value), `counter ${name}${JSON.stringify(sample.labels)} is ${sample.value}`)
      if (type === 'summary' && sample.name === name) {
        const q = Number(sample.labels.quantile)
        assert.ok(sample.labels.quantile !== undefined && q >= 0 && q <= 1, `${name}: a summary's series carry a quantile in [0, 1]`)
      }
      if ((type === 'summary' || type === 'histogram') && sample.name === `${name}_count`) {
        assert.ok(Number.isSafeInteger(sample.value) && sample.value >= 0, `${sample.name} is a count`)
      }
      if ((type === 'summary' || type === 'histogram') && sample.name === `${name}_sum`) assert.ok(!Number.isNaN(sample.value), `${sample.name} is a number`)
    }
    if (type === 'summary' || type === 'histogram') {
      // Each series (labels without quantile/le) has its _sum and _count; a histogram's buckets are
      // cumulative and end at +Inf with the count.
      const bySeries = new Map<string, Sample[]>()
      for (const sample of family.samples) {
        const { quantile: _q, le: _le, ...rest } = sample.labels
        const key = JSON.stringify(Object.entries(rest).sort(([a], [b]) => a < b ? -1 : 1))
        bySeries.set(key, [...(bySeries.get(key) ?? []), sample])
      }
      for (const [key, samples] of bySeries) {
        const count = samples.find((s) => s.name === `${name}_count`)
        assert.ok(count !== undefined && samples.some((s) => s.name === `${name}_sum`), `${name}${key} has _sum and _count`)
        if (type === 'histogram') {
          const buckets = samples.filter((s) => s.name === `${name}_bucket`).map((s) => [parseValue(s.labels.le ?? '', key), s.value] as const).sort((a, b) => a[0] - b[0])
          for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i]![1] >= buckets[i - 1]![1], `${name}${key} buckets cumulative`)
          assert.equal(buckets.at(-1)?.[0], Infinity, `${name}${key} has a +Inf bucket`)
          assert.equal(buckets.at(-1)?.[1], count.value, `${name}${key}: +Inf bucket equals _count`)
        }
      }
    }
  }
  return families
}

/** The value of the one sample of `family` whose labels include `labels`. */
function valueOf (families: Map<string, Family>, sampleName: string, labels: Record<string, string> = {}): number | undefined {
  const family = families.get(sampleName) ?? families.get(sampleName.replace(/_(sum|count)$/, ''))
  const found = family?.samples.filter((s) => s.name === sampleName && Object.entries(labels).every(([k, v]) => s.labels[k] === v)) ?? []
  assert.ok(found.length <= 1, `${sampleName}${JSON.stringify(labels)} names one series`)
  return found[0]?.value
}

/** Every counter series (counters, and a summary's _sum and _count) by its key. */
function counters (families: Map<string, Family>): Map<string, number> {
  const out = new Map<string, number>()
  for (const family of families.values()) {
    for (const sample of family.samples) {
      if (family.type === 'counter' || ((family.type === 'summary' || family.type === 'histogram') && sample.name !== family.name)) {
        out.set(sample.name + JSON.stringify(sample.labels), sample.value)
      }
    }
  }
  return out
}

describe('the strict exposition parser', () => {
  it('refuses what the format or promlint refuses', () => {
    const ok = '# HELP a_total A.\n# TYPE a_total counter\na_total{x="q\\"\\\\\\n"} 1\n'
    assert.equal(parseExposition(ok).get('a_total')?.samples[0]?.labels.x, 'q"\\\n')
    for (const [bad, why] of [
      ['# HELP a_total A.\n# TYPE a_total counter\na_total{x="\\t"} 1\n', 'bad escape'],
      ['# HELP a_total A.\n# TYPE a_total counter\na_total 1\na_total 2\n', 'duplicate series'],
      ['# HELP a A.\n# TYPE a gauge\na 1\n# HELP b B.\n# TYPE b gauge\nb 1\na{x="1"} 1\n', 'split'],
      ['# HELP a A.\n# TYPE a gauge\na{quantile="0.5"} 1\n', 'quantile label'],
      ['# HELP a_total A.\n# TYPE a_total gauge\na_total 1\n', 'end in _total'],
      ['# HELP a_total A.\n# TYPE a_total counter\na_total NaN\n', 'counter'],
      ['# HELP a_megabytes A.\n# TYPE a_megabytes gauge\na_megabytes 1\n', 'base unit'],
      ['# HELP h H.\n# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n', 'cumulative'],
      ['# HELP h H.\n# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n', '_count'],
      ['# HELP s S.\n# TYPE s summary\ns{quantile="0.5"} 1\n', '_sum and _count']
    ] as const) {
      assert.throws(() => parseExposition(bad), (err: Error) => err.message.includes(why), `refuses: ${why}`)
    }
  })
})

// ------------------------------------------------------------------ a busy two-node instance

describe('metricsText of a busy instance', () => {
  it('is valid exposition text whose gauges match the API and whose counters never go back', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const node = async (nodeId: string): Promise<GalleonFS> => await GalleonFS.open({
      storagePath: await tempDir(`galleon-maudit-${nodeId}-`),
      backupTarget: await tempDir('galleon-maudit-backups-'),
      cluster: { nodeId, transport: new MemoryTransport({ network, nodeId }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 }
    })
    const a = await node('n1')
    const b = await node('n2')
    try {
      await until('both nodes are members', () => a.cluster!.members.length === 2 && b.cluster!.members.length === 2)
      await a.createStorageClass({ name: 'metered', parameters: { qos_limit_iops: '100000' } })
      await a.createPool({ name: 'tier-1', capacityBytes: '64M' })
      await a.createVolume({
        name: 'db',
        sizeBytes: '1M',
        replicas: 2,
        qos: { limits: { iops: 100_000, throughputMBps: 1000, latencyMs: 1000 }, guarantees: { iops: 10 }, burstable: { enabled: true, durationSeconds: 10, iopsMultiplier: 2, throughputMultiplier: 2 } }
      })
      await a.createVolume({ name: 'web', sizeBytes: '1M', storageClass: 'metered', pool: 'tier-1' })
      for (let i = 0; i < 8; i++) await a.writeBlock('db', i, new Uint8Array(4096).fill(i + 1), WriteConcern.WriteReplicated)
      await a.write('web', 0, new Uint8Array(3 * 4096).fill(7))
      await a.createSnapshot('web', 'before')
      await a.writeBlock('web', 0, new Uint8Array(4096).fill(8)) // the old version stays for the snapshot
      await a.cloneVolume({ volume: 'web', snapshot: 'before' }, 'web-clone')
      await a.read('db', 0, 8 * 4096)
      await a.trim('web', 4096, 4096)
      await a.mounts.mountVolume('web-clone', '/mnt/web-clone')
      await a.createBackup('db', { strategy: 'full' as never })
      await until('the copy of db is in sync', async () => (await a.replicationStatus('db')).inSync.length === 2)

      const first = parseExposition(await a.metricsText())
      // Gauges against the API.
      const volumes = await a.listVolumes()
      assert.equal(valueOf(first, 'galleonfs_volumes'), volumes.length)
      for (const volume of volumes) {
        const labels = { volume_id: volume.id, volume_name: volume.name }
        const metrics = await a.getVolumeMetrics(volume.id)
        assert.equal(valueOf(first, 'galleonfs_volume_size_bytes', labels), volume.sizeBytes)
        assert.equal(valueOf(first, 'galleonfs_volume_used_bytes', labels), await a.getVolumeUsage(volume.id), `used bytes of ${volume.name} as getVolumeUsage reports them`)
        assert.equal(valueOf(first, 'galleonfs_volume_write_ops_total', labels), metrics.writeOps)
        assert.equal(valueOf(first, 'galleonfs_volume_write_bytes_total', labels), metrics.writeBytes)
        assert.equal(valueOf(first, 'galleonfs_volume_read_bytes_total', labels), metrics.readBytes)
        assert.equal(valueOf(first, 'galleonfs_volume_latency_seconds_count', labels), metrics.readOps + metrics.writeOps + metrics.trimOps)
      }
      const pool = await a.getPool('tier-1')
      const web = volumes.find((v) => v.name === 'web')!
      assert.equal(valueOf(first, 'galleonfs_pool_allocated_bytes', { pool: 'tier-1' }), pool.allocatedBytes)
      assert.equal(valueOf(first, 'galleonfs_volume_used_bytes', { volume_name: 'web' }), pool.allocatedBytes, 'the pool holds web alone: its volumes\' used bytes add up to what it counts')
      assert.equal(await a.getVolumeUsage(web.id), 4 * 4096, 'three blocks written, one trimmed, one kept for the snapshot')
      // Replication and QoS families against their status calls.
      const db = volumes.find((v) => v.name === 'db')!
      const dbLink = { volume_id: db.id, node: 'n2' }
      assert.equal(valueOf(first, 'galleonfs_replication_in_sync', dbLink), 1)
      assert.equal(valueOf(first, 'galleonfs_replication_lag_changes', dbLink), 0)
      assert.equal(valueOf(first, 'galleonfs_replication_primary', { volume_id: db.id }), 1)
      assert.equal(valueOf(first, 'galleonfs_replication_resync_blocks_planned', dbLink), 0)
      const qos = (await a.getVolumeMetrics('db')).qos!
      assert.ok(qos.burstCredits?.throughputMB !== undefined && qos.burstCredits.throughputMB > 0)
      const credits = valueOf(first, 'galleonfs_qos_burst_credits_bytes', { volume_id: db.id })
      assert.ok(credits !== undefined && Math.abs(credits - qos.burstCredits.throughputMB * 1e6) <= 0.01 * credits, `burst credits ${credits} bytes against ${qos.burstCredits.throughputMB} MB`)
      assert.equal(valueOf(first, 'galleonfs_qos_guarantee_iops', { volume_id: db.id }), 10)

      // More I/O: no counter series goes back, and those of the I/O move.
      for (let i = 0; i < 8; i++) await a.writeBlock('db', i, new Uint8Array(4096).fill(9), WriteConcern.WriteReplicated)
      await a.read('web', 0, 4096)
      const second = parseExposition(await a.metricsText())
      const before = counters(first)
      const later = counters(second)
      for (const [key, value] of before) {
        assert.ok(later.has(key), `${key} still reported`)
        assert.ok(later.get(key)! >= value, `${key} went from ${value} to ${later.get(key)}`)
      }
      assert.equal(valueOf(second, 'galleonfs_volume_write_ops_total', { volume_id: db.id }), valueOf(first, 'galleonfs_volume_write_ops_total', { volume_id: db.id })! + 8)
      assert.ok(valueOf(second, 'galleonfs_replication_shipped_bytes_total', dbLink)! >= valueOf(first, 'galleonfs_replication_shipped_bytes_total', dbLink)! + 8 * 4096)
      // The copy's node reports the volume without client I/O (replication is not counted as I/O).
      const onCopy = parseExposition(await b.metricsText())
      assert.equal(valueOf(onCopy, 'galleonfs_replication_primary', { volume_id: db.id }), 0)
      assert.equal(valueOf(onCopy, 'galleonfs_volume_write_ops_total', { volume_id: db.id }), 0)
    } finally {
      await Promise.allSettled([a.close(), b.close()])
    }
  })

  it('reports the latency as a summary: window quantiles, with _sum and _count since open', () => {
    let now = 0
    const recorder = new MetricsRecorder({ now: () => now, windowSeconds: 10 })
    for (let i = 0; i < 4; i++) {
      const startedAt = recorder.begin()
      now += 250
      recorder.end(i === 3 ? 'trim' : 'write', 4096, startedAt, i !== 2)
    }
    now += 60_000 // the window is empty now; the lifetime figures stay
    const families = parseExposition(renderPrometheus({ volumes: [{ id: 'v', name: 'n', metrics: recorder.snapshot(), sizeBytes: 4096, usedBytes: 0 }] }))
    assert.equal(families.get('galleonfs_volume_latency_seconds')?.type, 'summary')
    assert.equal(valueOf(families, 'galleonfs_volume_latency_seconds', { quantile: '0.99' }), 0)
    assert.equal(valueOf(families, 'galleonfs_volume_latency_seconds_sum', { volume_id: 'v' }), 1)
    assert.equal(valueOf(families, 'galleonfs_volume_latency_seconds_count', { volume_id: 'v' }), 4)
  })

  it('counts versions only a snapshot keeps in a volume\'s used bytes, as getVolumeUsage and its pool do', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      const volume = await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.writeBlock('v', 0, new Uint8Array(4096).fill(1))
      await g.createSnapshot('v', 's')
      await g.writeBlock('v', 0, new Uint8Array(4096).fill(2))
      assert.equal(await g.getVolumeUsage('v'), 2 * 4096)
      const families = parseExposition(await g.metricsText())
      assert.equal(valueOf(families, 'galleonfs_volume_used_bytes', { volume_id: volume.id }), 2 * 4096)
    } finally {
      await g.close()
    }
  })

  it('drops every series of deleted volumes; a volume created again under the name starts its own', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      const gone: string[] = []
      for (let i = 0; i < 20; i++) {
        const volume = await g.createVolume({ name: 'churn', sizeBytes: '64K', qos: { limits: { iops: 100_000, latencyMs: 1000 } } })
        await g.writeBlock('churn', 0, new Uint8Array(4096).fill(i))
        await g.read('churn', 0, 4096)
        gone.push(volume.id)
        if (i < 19) await g.deleteVolume('churn')
      }
      const last = gone.pop()!
      const text = await g.metricsText()
      const families = parseExposition(text)
      for (const id of gone) assert.ok(!text.includes(id), `no series of the deleted volume ${id}`)
      assert.equal(valueOf(families, 'galleonfs_volumes'), 1)
      const series = [...families.values()].flatMap((f) => f.samples).filter((s) => s.labels.volume_name === 'churn')
      assert.ok(series.length > 0 && series.every((s) => s.labels.volume_id === last), 'the name\'s series are the new volume\'s')
      assert.equal(valueOf(families, 'galleonfs_volume_write_ops_total', { volume_id: last }), 1, 'its counters start at zero, not where the deleted one\'s were')
      assert.equal(valueOf(families, 'galleonfs_qos_throttled_operations_total', { volume_id: last }), 0)
    } finally {
      await g.close()
    }
  })
})

// ------------------------------------------------------------------ events

describe('events', () => {
  it('are emitted once each, in order, with their documented payloads', async () => {
    const g = await GalleonFS.open({ inMemory: true, backupTarget: await tempDir('galleon-maudit-events-') })
    const seen: Array<[string, unknown[]]> = []
    const names = ['volume:created', 'volume:deleted', 'volume:expanded', 'volume:state', 'volume:cloned', 'snapshot:created', 'snapshot:deleted', 'snapshot:restored', 'backup:completed', 'backup:deleted', 'storage-class:created', 'storage-class:deleted', 'pool:created', 'pool:updated', 'pool:deleted', 'qos:policy-changed', 'scrub:completed', 'instance:closed'] as const
    for (const name of names) g.on(name, (...args: unknown[]) => { seen.push([name, args]) })
    let backupProgress = 0
    let restoreProgress = 0
    g.on('backup:progress', (event) => { backupProgress++; assert.ok(event.bytesDone <= event.bytesTotal) })
    g.on('restore:progress', (event) => { restoreProgress++; assert.ok(event.bytesDone <= event.bytesTotal) })

    await g.createStorageClass({ name: 'gold', parameters: {} })
    await g.createPool({ name: 'p1', capacityBytes: '64M' })
    await g.updatePool('p1', { capacityBytes: '128M' })
    const v = await g.createVolume({ name: 'v1', sizeBytes: '1M', storageClass: 'gold', pool: 'p1' })
    await g.writeBlock('v1', 0, new Uint8Array(4096).fill(1))
    await g.expandVolume('v1', '2M')
    const snapshot = await g.createSnapshot('v1', 's1')
    const clone = await g.cloneVolume({ volume: 'v1', snapshot: 's1' }, 'c1')
    await g.restoreSnapshot('v1', 's1')
    const backup = await g.createBackup('v1', { strategy: 'full' as never })
    await g.setQoSPolicy('v1', { limits: { iops: 1000 } })
    await g.clearQoSPolicy('v1')
    await g.scrub('v1')
    await g.deleteBackup(backup.id)
    await g.deleteVolume('c1')
    await g.deleteSnapshot('v1', 's1')
    await g.deleteVolume('v1')
    await g.deletePool('p1')
    await g.deleteStorageClass('gold')
    await g.close()

    const backupSnapshot = seen.find(([name, [s]]) => name === 'snapshot:created' && (s as { id: string }).id !== snapshot.id)?.[1][0] as { id: string, volumeId: string } | undefined
    assert.deepEqual(seen.map(([name]) => name), [
      'storage-class:created', 'pool:created', 'pool:updated', 'volume:created', 'volume:expanded', 'snapshot:created',
      'volume:created', 'volume:cloned', 'snapshot:restored',
      'snapshot:created', 'backup:completed', // the backup's own snapshot, kept for the next incremental
      'qos:policy-changed', 'qos:policy-changed', 'scrub:completed',
      'snapshot:deleted', 'backup:deleted', // ... and dropped with the backup
      'volume:state', 'volume:deleted', 'snapshot:deleted', 'volume:state', 'volume:deleted',
      'pool:deleted', 'storage-class:deleted', 'instance:closed'
    ])
    assert.ok(backupProgress >= 1 && restoreProgress === 0)
    const payload = (index: number): Record<string, unknown> => seen[index]![1][0] as Record<string, unknown>
    assert.equal(payload(0).name, 'gold')
    assert.equal(payload(3).id, v.id)
    assert.equal(payload(4).sizeBytes, 2 * 1024 * 1024)
    assert.equal(seen[4]![1][1], 1024 * 1024, 'volume:expanded carries the previous size')
    assert.equal(payload(5).id, snapshot.id)
    assert.equal(payload(6).id, clone.id)
    assert.equal((seen[7]![1][1] as { id: string }).id, snapshot.id, 'volume:cloned names the source snapshot')
    assert.equal(payload(8).id, v.id)
    assert.equal((seen[8]![1][1] as { id: string }).id, snapshot.id)
    assert.equal(backupSnapshot?.volumeId, v.id)
    assert.equal(payload(10).id, backup.id)
    assert.deepEqual(payload(11), { volumeId: v.id, volumeName: 'v1', policy: { limits: { iops: 1000 } }, source: 'volume' })
    assert.deepEqual(payload(12), { volumeId: v.id, volumeName: 'v1', source: 'none' })
    assert.deepEqual(payload(13), { volumeId: v.id, blocksChecked: 1, badBlocks: 0 })
    assert.equal(payload(14).id, backupSnapshot?.id)
    assert.equal(payload(15).id, backup.id)
    assert.equal(payload(17).id, clone.id)
    assert.equal(seen[16]![1][1], 'available', 'volume:state carries the previous state')
    assert.equal(payload(18).id, snapshot.id)
    assert.equal(payload(20).id, v.id)
    assert.deepEqual(seen.at(-1)![1], [])
  })

  it('qos:throttled comes at most once a second per volume, naming the limit', async () => {
    const clock = new ManualClock()
    const g = await GalleonFS.open({ inMemory: true, qos: { clock } })
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M', qos: { limits: { iops: 10 } } })
      await g.createVolume({ name: 'b', sizeBytes: '1M', qos: { limits: { writeIops: 10 } } })
      const events: Array<{ at: number, volumeName: string, limit: string }> = []
      g.on('qos:throttled', (event) => { events.push({ at: clock.now(), volumeName: event.volumeName, limit: event.limit }) })
      const writes = Promise.all(['a', 'b'].flatMap((name) => Array.from({ length: 40 }, async (_, i) => { await g.writeBlock(name, i % 16, new Uint8Array(4096)) })))
      for (let i = 0; i < 60; i++) await clock.advance(100)
      await writes
      for (const name of ['a', 'b']) {
        const mine = events.filter((e) => e.volumeName === name)
        assert.ok(mine.length >= 2, `${name} was throttled for seconds: ${mine.length} events`)
        for (let i = 1; i < mine.length; i++) assert.ok(mine[i]!.at - mine[i - 1]!.at >= 1000, `${name}: events ${mine[i - 1]!.at} and ${mine[i]!.at} ms less than a second apart`)
        assert.deepEqual(new Set(mine.map((e) => e.limit)), new Set([name === 'a' ? 'limits.iops' : 'limits.write_iops']))
      }
    } finally {
      await g.close()
    }
  })

  it('on, once, off and listeners() keep their meaning', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      const calls: string[] = []
      const onEvery = (volume: { name: string }): void => { calls.push(`every ${volume.name}`) }
      const onOnce = (volume: { name: string }): void => { calls.push(`once ${volume.name}`) }
      g.on('volume:created', onEvery)
      g.once('volume:created', onOnce)
      assert.deepEqual(g.listeners('volume:created'), [onEvery, onOnce])
      await g.createVolume({ name: 'v1', sizeBytes: '64K' })
      g.off('volume:created', onEvery)
      await g.createVolume({ name: 'v2', sizeBytes: '64K' })
      assert.deepEqual(calls, ['every v1', 'once v1'])
      assert.equal(g.listenerCount('volume:created'), 0)
      const context = { tag: 'ctx' }
      let seenThis: unknown
      g.on('volume:deleted', function (this: unknown) { seenThis = this }, context)
      await g.deleteVolume('v2')
      assert.equal(seenThis, context)
    } finally {
      await g.close()
    }
  })

  it('a listener that throws fails neither the operation nor the other listeners; its error is raised on its own', async () => {
    // In a child process: the listener's error becomes an uncaught exception there, which the
    // child reports; in this process it would fail whichever test is running.
    const index = fileURLToPath(new URL('../src/index.ts', import.meta.url))
    const script = `
      import { GalleonFS } from ${JSON.stringify(index)}
      const report = { uncaught: [] }
      process.on('uncaughtException', (err) => { report.uncaught.push(err.message) })
      const g = await GalleonFS.open({ inMemory: true })
      let second = 0
      g.on('volume:created', () => { throw new Error('listener failed') })
      g.on('volume:created', () => { second++ })
      report.create = await g.createVolume({ name: 'v', sizeBytes: '1M' }).then((v) => v.name, (err) => 'rejected: ' + err.message)
      report.second = second
      report.volumes = (await g.listVolumes()).map((v) => v.name)
      g.on('qos:throttled', () => { throw new Error('throttle listener failed') })
      await g.setQoSPolicy('v', { limits: { iops: 20 } })
      const writes = await Promise.allSettled(Array.from({ length: 30 }, (_, i) => g.writeBlock('v', i % 16, new Uint8Array(4096))))
      report.writes = writes.map((w) => w.status === 'fulfilled' ? 'ok' : w.reason.message)
      report.queued = (await g.getVolumeMetrics('v')).qos.throttledQueue
      await g.close()
      await new Promise((resolve) => setImmediate(resolve))
      console.log(JSON.stringify(report))
    `
    const { stdout } = await exec(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: fileURLToPath(new URL('..', import.meta.url)), timeout: 60_000 })
    const report = JSON.parse(stdout.trim().split('\n').at(-1)!) as { create: string, second: number, volumes: string[], writes: string[], queued: number, uncaught: string[] }
    assert.equal(report.create, 'v', 'createVolume resolves: the volume was made')
    assert.equal(report.second, 1, 'the next listener ran')
    assert.deepEqual(report.volumes, ['v'])
    assert.deepEqual(report.writes, Array(30).fill('ok'), 'no write fails for a throttle listener')
    assert.equal(report.queued, 0)
    assert.equal(report.uncaught[0], 'listener failed', 'the error is not swallowed')
    assert.ok(report.uncaught.slice(1).length >= 1 && report.uncaught.slice(1).every((m) => m === 'throttle listener failed'))
  })
})
