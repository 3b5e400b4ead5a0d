// Review r56 of QoS, metrics and errors: hostile policy inputs (objects that are not plain ones,
// weights far below 1) and what they did to the volume's policy and to other volumes' share.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { BackupStrategy, GalleonFS, type BlockStore } from '../src/index.js'
import { MemoryBlockStore } from '../backends/memory/index.js'
import { parseQoSPolicy } from '../src/qos/policy.js'
import { QoSScheduler, type QoSGuaranteeMissedEvent } from '../src/qos/scheduler.js'
import { ManualClock } from './support/manual-clock.js'
import { until } from './support/wait.js'
import { FullDiskLevel } from './support/full-disk-level.js'

interface ParsedSample { value?: string, labels?: Record<string, string> }
interface ParsedFamily { name: string, type: string, metrics: ParsedSample[] }
// The parser ships no types; loaded through require to type it here.
const parsePrometheusTextFormat = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => ParsedFamily[]

/**
 * Every counter sample of the text, keyed by name and labels, and the _sum and _count of every
 * summary: the parser merges a summary's labelled series into one without labels, so those are
 * read from their lines (their label values hold no '}' here: ids, names, namespaces).
 */
function counterSamples (text: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const family of parsePrometheusTextFormat(text)) {
    if (family.type === 'COUNTER') {
      for (const sample of family.metrics) out.set(`${family.name}${JSON.stringify(Object.entries(sample.labels ?? {}).sort())}`, Number(sample.value))
    }
    if (family.type === 'SUMMARY') {
      for (const [, part, labels, value] of text.matchAll(new RegExp(`^${family.name}_(sum|count)\\{([^}]*)\\} (\\S+)$`, 'gm'))) {
        out.set(`${family.name}_${part ?? ''}{${labels ?? ''}}`, Number(value))
      }
      assert.ok([...out.keys()].some((key) => key.startsWith(`${family.name}_count{`)), `${family.name} has _count lines`)
    }
  }
  return out
}

/** Runs `depth` workers of one volume until `until` (clock ms), each operation (of `bytes`: 0 for a trim) taking 1 ms; counts those admitted. */
function load (s: QoSScheduler, clock: ManualClock, volumeId: string, depth: number, until: number, bytes = 4096): { done: number } {
  const out = { done: 0 }
  const worker = async (): Promise<void> => {
    while (clock.now() < until) {
      const admitted = s.admit(volumeId, 'write', bytes)
      const held = typeof admitted === 'boolean' ? admitted : await admitted
      if (clock.now() >= until) { if (held) s.release(); return }
      out.done++
      await new Promise<void>((resolve) => { clock.setTimeout(resolve, 1) })
      if (held) s.release()
    }
  }
  for (let i = 0; i < depth; i++) void worker()
  return out
}

describe('review r56: QoS policy inputs', () => {
  it('refuses a policy, or a part of one, that is not a plain object (a Map, a Date) instead of taking it as empty', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createStorageClass({ name: 'metered', parameters: { qos_limit_iops: '100' } })
      await g.createVolume({ name: 'db', sizeBytes: '1M', storageClass: 'metered' })
      const bad: unknown[] = [
        new Map([['limits', { iops: 10 }]]),
        new Date(),
        { limits: new Map([['iops', 10]]) },
        { limits: { iops: 10 }, guarantees: new Map([['iops', 5]]) }
      ]
      for (const policy of bad) {
        // Taken as {}, the volume's own empty policy replaced its class's 100 IOPS limit: no limit at all.
        await assert.rejects(g.setQoSPolicy('db', policy as never), { code: 'INVALID_ARGUMENT' }, `setQoSPolicy with ${String(policy)}`)
        await assert.rejects(g.createVolume({ name: 'other', sizeBytes: '1M', qos: policy as never }), { code: 'INVALID_ARGUMENT' })
      }
      assert.deepEqual(await g.getQoSPolicy('db'), { policy: { limits: { iops: 100 } }, source: 'storage-class' })
      assert.equal((await g.listVolumes()).length, 1)
      // Plain objects without a prototype (as some parsers make them) are still policies.
      const bare = Object.assign(Object.create(null) as object, { limits: Object.assign(Object.create(null) as object, { iops: 50 }) })
      assert.deepEqual(await g.setQoSPolicy('db', bare as never), { policy: { limits: { iops: 50 } }, source: 'volume' })
    } finally {
      await g.close()
    }
  })

  it('a volume with a tiny weight does not take the fair share of two others with equal weights', async () => {
    for (const weight of [1, 1e-300]) {
      const clock = new ManualClock()
      const s = new QoSScheduler({ clock, capacityIops: 1000 })
      s.setPolicy('tiny', 'tiny', parseQoSPolicy({ weight }), 'volume')
      s.setPolicy('b', 'b', parseQoSPolicy({ weight: 1 }), 'volume')
      s.setPolicy('c', 'c', parseQoSPolicy({ weight: 1 }), 'volume')
      // The tiny-weight volume queues a little work alone, then b and c compete for the node.
      load(s, clock, 'tiny', 16, 100)
      await clock.advance(200)
      const b = load(s, clock, 'b', 16, 5200)
      const c = load(s, clock, 'c', 16, 5200)
      await clock.advance(5000)
      s.close()
      // Equal weights: equal shares (within 10% of what both got), whatever a third volume's weight was.
      assert.ok(Math.abs(b.done - c.done) <= 0.1 * (b.done + c.done), `after a volume of weight ${weight} ran, b got ${b.done} operations and c ${c.done}`)
    }
  })

  it('a throughput floor gives no priority to operations that move no bytes (trims): they take their fair share, not the node', async () => {
    for (const guarantees of [undefined, { throughputMBps: 1 }]) {
      const clock = new ManualClock()
      const s = new QoSScheduler({ clock, capacityIops: 1000 })
      s.setPolicy('trims', 'trims', parseQoSPolicy(guarantees === undefined ? { weight: 1 } : { guarantees }), 'volume')
      s.setPolicy('writes', 'writes', parseQoSPolicy({ weight: 1 }), 'volume')
      const trims = load(s, clock, 'trims', 32, 5000, 0)
      const writes = load(s, clock, 'writes', 32, 5000)
      await clock.advance(5000)
      s.close()
      // Trims owe a throughput floor nothing; every one of them counted as due took the whole node.
      assert.ok(Math.abs(trims.done - writes.done) <= 0.1 * (trims.done + writes.done), `with guarantees ${JSON.stringify(guarantees)}: trims ${trims.done}, writes of the other volume ${writes.done}`)
    }
  })

  it('a throughput floor is judged on operations that move bytes: trims alone never miss it, writes the node cannot carry do', async () => {
    const run = async (bytes: number): Promise<{ missed: QoSGuaranteeMissedEvent[], met: boolean | undefined }> => {
      const clock = new ManualClock()
      const missed: QoSGuaranteeMissedEvent[] = []
      const s = new QoSScheduler({ clock, capacityIops: 1000 }, (event, payload) => { if (event === 'qos:guarantee-missed') missed.push(payload as QoSGuaranteeMissedEvent) })
      s.setPolicy('v', 'v', parseQoSPolicy({ guarantees: { throughputMBps: 10 } }), 'volume')
      load(s, clock, 'v', 32, 5000, bytes)
      await clock.advance(5000)
      const met = s.metrics('v').guarantee?.met
      s.close()
      return { missed, met }
    }
    // Alone on the node and served all its capacity in trims, which want no bytes: nothing was missed.
    const trims = await run(0)
    assert.deepEqual({ events: trims.missed.length, met: trims.met }, { events: 0, met: true }, 'trims alone')
    // 4 KiB writes at 1000 IOPS are 4 MB/s against a floor of 10: missed, and said so.
    const writes = await run(4096)
    assert.equal(writes.met, false)
    assert.ok(writes.missed.length >= 3, `${writes.missed.length} qos:guarantee-missed events`)
  })

  it('calls refused for their range count nowhere in a latency target\'s figures either: they cannot hide a miss', async () => {
    const clock = new ManualClock()
    // A memory store whose reads wait while `held` is set: a read that takes a second of QoS time.
    const inner = new MemoryBlockStore()
    let held: Promise<void> | undefined
    let reading = 0
    const store = new Proxy(inner, {
      get (target, prop) {
        if (prop === 'get' || prop === 'getMany') {
          return async (...args: unknown[]) => {
            reading++
            if (held !== undefined) await held
            return await (Reflect.get(target, prop, target) as (...a: unknown[]) => Promise<unknown>).apply(target, args)
          }
        }
        const value = Reflect.get(target, prop, target) as unknown
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value
      }
    }) as BlockStore
    const g = await GalleonFS.open({ inMemory: true, blockStore: store, qos: { clock } })
    try {
      await g.createVolume({ name: 'db', sizeBytes: '1M', qos: { limits: { latencyMs: 20 } } })
      await g.writeBlock('db', 0, new Uint8Array(4096).fill(1))
      let release!: () => void
      held = new Promise<void>((resolve) => { release = resolve })
      const before = reading
      const slow = g.readBlock('db', 0)
      await until('the read reached the store', () => reading > before)
      await clock.advance(1000)
      held = undefined
      release()
      await slow
      const missed = (await g.getVolumeMetrics('db')).qos
      assert.equal(missed?.latencyTargetMet, false, `one read of a second against a 20 ms target: p99 ${missed?.latencyP99Ms} ms`)
      // A client probing past the end (or with bad arguments) many times: each call is refused at once.
      const block = new Uint8Array(4096)
      for (let i = 0; i < 50; i++) {
        for (const call of [g.read('db', 1 << 20, 4096), g.readBlock('db', 256), g.writeBlock('db', 256, block), g.write('db', -1, block), g.trim('db', 1 << 20, 4096)]) {
          await assert.rejects(call, (err: { code?: string }) => err.code === 'OUT_OF_RANGE' || err.code === 'INVALID_ARGUMENT')
        }
      }
      const after = await g.getVolumeMetrics('db')
      assert.equal(after.readOps + after.writeOps + after.trimOps, 2, 'the refused calls count nowhere in the volume\'s metrics')
      assert.equal(after.qos?.latencyTargetMet, false, `the one read that ran still missed the target; p99 now ${after.qos?.latencyP99Ms} ms`)
    } finally {
      held = undefined
      await g.close()
    }
  })

  it('a deleteVolume refused before the deletion began (the metadata disk full) leaves the volume\'s QoS limits enforced', async () => {
    const clock = new ManualClock()
    const metadata = new FullDiskLevel()
    const g = await GalleonFS.open({ metadata: metadata as never, blockStore: new MemoryBlockStore(), qos: { clock } })
    try {
      await g.createVolume({ name: 'db', sizeBytes: '1M', qos: { limits: { iops: 1 } } })
      metadata.failing = true
      await assert.rejects(g.deleteVolume('db'), { code: 'NO_SPACE' })
      metadata.failing = false
      assert.equal((await g.getVolume('db')).state, 'available', 'the volume was not deleted, and stays readable and writable')
      assert.deepEqual(await g.getQoSPolicy('db'), { policy: { limits: { iops: 1 } }, source: 'volume' })
      assert.equal((await g.getVolumeMetrics('db')).qos?.source, 'volume', 'the policy the volume reports is the one enforced')
      // At 1 IOPS, five writes at once cannot all go in before the (manual) clock moves.
      const writes = Array.from({ length: 5 }, async (_, i) => { await g.writeBlock('db', i, new Uint8Array(4096).fill(i + 1)) })
      await until('the writes reached the limiter', async () => ((await g.getVolumeMetrics('db')).qos?.throttledQueue ?? 0) > 0 || (await g.getVolumeMetrics('db')).writeOps === 5)
      assert.ok(((await g.getVolumeMetrics('db')).qos?.throttledQueue ?? 0) >= 4, `writes held by the 1 IOPS limit: ${(await g.getVolumeMetrics('db')).qos?.throttledQueue}, written ${(await g.getVolumeMetrics('db')).writeOps}`)
      await clock.advance(10_000)
      await Promise.all(writes)
    } finally {
      await g.close()
    }
  })
})


describe('review r56: the Prometheus text through a volume\'s life', () => {
  for (const backend of ['file', 'level'] as const) {
    it(`${backend}: every scrape parses, and no counter series goes back across snapshots, clones, reverts, expansion, a class change, key rotation, a restore, QoS changes, deletes and names used again`, async () => {
      const storagePath = await mkdtemp(join(tmpdir(), 'galleon-r56-metrics-'))
      const backupTarget = await mkdtemp(join(tmpdir(), 'galleon-r56-backups-'))
      const g = await GalleonFS.open({ storagePath, backend, backupTarget })
      const seen = new Map<string, number>()
      const scrape = async (step: string): Promise<void> => {
        const now = counterSamples(await g.metricsText())
        for (const [key, value] of now) {
          const before = seen.get(key)
          assert.ok(before === undefined || value >= before, `after ${step}: ${key} went from ${before} to ${value}`)
          seen.set(key, value)
        }
      }
      const block = (fill: number): Uint8Array => new Uint8Array(4096).fill(fill)
      try {
        await g.createStorageClass({ name: 'secret-local', parameters: { encryption: 'true', replication: '1' } })
        await g.createVolume({ name: 'db', sizeBytes: '1M', qos: { limits: { iops: 100_000, latencyMs: 1000 } } })
        for (let i = 0; i < 16; i++) await g.writeBlock('db', i, block(i + 1))
        await g.read('db', 0, 8192)
        await g.trim('db', 0, 4096)
        await assert.rejects(g.readBlock('db', 256), { code: 'OUT_OF_RANGE' })
        await scrape('writes, a read and a trim')
        await g.createSnapshot('db', 's1')
        await g.writeBlock('db', 1, block(99))
        await scrape('a snapshot')
        await g.cloneVolume({ volume: 'db', snapshot: 's1' }, 'copy')
        await g.writeBlock('copy', 0, block(7))
        await scrape('a clone')
        await g.deleteVolume('copy')
        await g.cloneVolume({ volume: 'db', snapshot: 's1' }, 'copy')
        await scrape('the clone deleted and made again under its name')
        await g.restoreSnapshot('db', 's1')
        await g.expandVolume('db', '2M')
        await scrape('a revert and an expansion')
        await g.setQoSPolicy('db', null)
        await g.setQoSPolicy('db', { limits: { iops: 100_000 } })
        await g.setQoSPolicy('db', {})
        await scrape('QoS policies cleared and set')
        await g.deleteVolume('copy')
        await g.migrateVolume('db', { storageClass: 'secret-local' })
        await g.writeBlock('db', 2, block(3))
        await g.rotateVolumeKey('db', { wait: true })
        await scrape('a change of class (new storage) and a key rotation')
        const backup = await g.createBackup('db', { strategy: BackupStrategy.Full })
        await g.restoreBackup(backup.id, { volume: 'db' })
        await g.scrub('db')
        await scrape('a backup restored into the volume, and a scrub')
        const writeOps = (await g.getVolumeMetrics('db')).writeOps
        await g.deleteVolume('db')
        const again = await g.createVolume({ name: 'db', sizeBytes: '1M' })
        await g.writeBlock('db', 0, block(1))
        await scrape('the volume deleted and made again under its name')
        assert.ok(writeOps > 1)
        const text = await g.metricsText()
        const series = parsePrometheusTextFormat(text).flatMap((f) => f.metrics).filter((m) => m.labels?.volume_name === 'db')
        assert.ok(series.length > 0 && series.every((m) => m.labels?.volume_id === again.id), 'the name\'s series are the new volume\'s')
      } finally {
        await g.close()
        await Promise.all([storagePath, backupTarget].map(async (dir) => await rm(dir, { recursive: true, force: true })))
      }
    })
  }
})
