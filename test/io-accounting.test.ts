// I/O accounting of the metrics and the QoS stage: trims counted as their own kind, replication
// resyncs kept out of a volume's client I/O figures, QoS state of deleted volumes not kept, and
// refused operations charging nothing. Manual clocks or polling with a deadline: no timing thresholds.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { GalleonError } from '../src/errors.js'
import type { BlockStore } from '../src/drivers.js'
import { QoSScheduler } from '../src/qos/scheduler.js'
import { MetricsRecorder } from '../src/metrics/recorder.js'
import { parseQoSPolicy } from '../src/qos/policy.js'
import { MemoryBlockStore, MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { ManualClock } from './support/manual-clock.js'
import { until } from './support/wait.js'

const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

function block (seed: number, size = 4096): Uint8Array {
  const out = new Uint8Array(size)
  for (let i = 0; i < size; i++) out[i] = (seed * 31 + i * 7) & 0xff
  return out
}

/** The value of one sample of the Prometheus text: `family{...volume_name="name"...extra}`. */
function sample (text: string, family: string, name: string, extra = ''): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${family}{`) && l.includes(`volume_name="${name}"`) && l.includes(extra))
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1))
}

/** A memory block store whose batches fail with IO_ERROR while `failing.on` is set. */
function failingStore (): { store: BlockStore, failing: { on: boolean } } {
  const failing = { on: false }
  const inner = new MemoryBlockStore()
  const store = new Proxy(inner, {
    get (target, prop) {
      if (prop === 'batch') {
        return async (...args: Parameters<typeof inner.batch>) => {
          if (failing.on) throw new GalleonError('IO_ERROR', 'injected failure')
          return await target.batch(...args)
        }
      }
      const value = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  return { store, failing }
}

describe('I/O accounting', () => {
  it('counts trims as their own kind: trimOps, trimBytes, trimIops, in getVolumeMetrics and metricsText', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.write('v', 0, new Uint8Array(4 * 4096).fill(7))
      await g.trim('v', 0, 2 * 4096)
      // A partial trim zero-fills the block's edge (a read-modify-write inside the engine): one trim, no read.
      await g.trim('v', 3 * 4096 + 100, 1000)
      const m = await g.getVolumeMetrics('v')
      assert.equal(m.trimOps, 2)
      assert.equal(m.trimBytes, 2 * 4096 + 1000)
      assert.equal(m.writeOps, 1)
      assert.equal(m.writeBytes, 4 * 4096)
      assert.equal(m.readOps, 0)
      assert.equal(m.errors, 0)
      assert.ok(m.trimIops > 0, `trimIops ${m.trimIops}`)
      assert.ok(Math.abs(m.iops - (m.readIops + m.writeIops + m.trimIops)) < 1e-9, 'iops counts every kind')
      // Trims move no data: throughput is what reads and writes moved.
      assert.ok(Math.abs(m.throughputMBps - m.writeThroughputMBps) < 1e-12)

      const text = await g.metricsText()
      assert.equal(sample(text, 'galleonfs_volume_trim_ops_total', 'v'), 2)
      assert.equal(sample(text, 'galleonfs_volume_trim_bytes_total', 'v'), 2 * 4096 + 1000)
      assert.equal(sample(text, 'galleonfs_volume_write_ops_total', 'v'), 1)
      assert.ok((sample(text, 'galleonfs_volume_iops', 'v', 'direction="trim"') ?? 0) > 0, 'galleonfs_volume_iops has a trim direction')
      assert.match(text, /^# TYPE galleonfs_volume_trim_ops_total counter$/m)
      assert.match(text, /^# TYPE galleonfs_volume_trim_bytes_total counter$/m)
    } finally {
      await g.close()
    }
  })

  it('the recorder keeps trims apart: counted in iops and latency, not in throughput', () => {
    let t = 0
    const rec = new MetricsRecorder({ now: () => t, windowSeconds: 10 })
    const op = (kind: 'read' | 'write' | 'trim', bytes: number, ok = true): void => { const at = rec.begin(); t += 2; rec.end(kind, bytes, at, ok) }
    op('read', 4096)
    op('write', 8192)
    op('trim', 1 << 20)
    op('trim', 1 << 20, false)
    t = 1000
    const s = rec.snapshot()
    assert.deepEqual([s.readOps, s.writeOps, s.trimOps, s.errors], [1, 1, 2, 1])
    assert.deepEqual([s.readBytes, s.writeBytes, s.trimBytes], [4096, 8192, 1 << 20])
    assert.equal(s.windowSeconds, 1)
    assert.deepEqual([s.iops, s.readIops, s.writeIops, s.trimIops], [4, 1, 1, 2])
    assert.equal(s.throughputMBps, (4096 + 8192) / 1e6)
    assert.equal(s.latencyMs, 2)
    assert.equal(s.queueDepth, 0)
  })

  it('a failed trim counts as a trim and an error, its bytes not as trimmed', async () => {
    const { store, failing } = failingStore()
    const g = await GalleonFS.open({ inMemory: true, blockStore: store })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.write('v', 0, new Uint8Array(2 * 4096).fill(1))
      failing.on = true
      await assert.rejects(g.trim('v', 0, 4096), (err: GalleonError) => err.code === 'IO_ERROR')
      failing.on = false
      // Refused before it starts (past the end): not an operation at all, like a refused read or write.
      await assert.rejects(g.trim('v', 0, 2 * 1024 * 1024), (err: GalleonError) => err.code === 'OUT_OF_RANGE')
      const m = await g.getVolumeMetrics('v')
      assert.equal(m.trimOps, 1)
      assert.equal(m.trimBytes, 0)
      assert.equal(m.errors, 1)
      assert.equal(m.writeOps, 1)
      assert.equal(m.queueDepth, 0)
    } finally {
      await g.close()
    }
  })

  it('replication is not counted as client I/O: a resync\'s reads on the primary or the copy, the changes a copy applies; the primary reports resync bytes read', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const nodes: Array<{ g: GalleonFS, id: string, events: string[] }> = []
    for (const id of ['n1', 'n2']) {
      const dir = await mkdtemp(join(tmpdir(), `galleon-accounting-${id}-`))
      dirs.push(dir)
      const g = await GalleonFS.open({ storagePath: dir, cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 } })
      opened.push(g)
      const events: string[] = []
      g.on('replication:resynced', (payload) => { events.push(JSON.stringify(payload)) })
      nodes.push({ g, id, events })
    }
    await until('both nodes see each other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 2))
    const vol = await nodes[0]!.g.createVolume({ name: 'synced', sizeBytes: '256K', replicas: 2 })
    const status = await nodes[0]!.g.replicationStatus('synced')
    const primary = nodes.find((n) => n.id === status.primary)!
    const copy = nodes.find((n) => n.id !== status.primary)!
    await until('the new copy is in sync', async () => (await primary.g.replicationStatus('synced')).inSync.length === 2)
    for (let i = 0; i < 8; i++) await primary.g.writeBlock('synced', i, block(i), WriteConcern.WriteReplicated)
    await primary.g.trim('synced', 7 * 4096, 4096)

    network.partition([copy.id], [primary.id])
    // The copy cannot acknowledge: the primary takes it out of the in-sync list and goes on alone.
    await assert.rejects(primary.g.writeBlock('synced', 2, block(102), WriteConcern.WriteReplicated), (err: GalleonError) => err.code === 'WRITE_CONCERN_UNSATISFIED')
    assert.deepEqual((await primary.g.replicationStatus('synced')).inSync, [primary.id])
    for (let i = 20; i < 28; i++) await primary.g.writeBlock('synced', i, block(i), WriteConcern.WriteAcknowledged)
    const before = await primary.g.getVolumeMetrics('synced')
    network.heal()
    await until('the copy is in sync again', async () => (await primary.g.replicationStatus('synced')).inSync.length === 2)
    assert.ok(primary.events.some((e) => e.includes(`"node":"${copy.id}"`)), `a resync of ${copy.id}: ${primary.events.join('\n')}`)
    const afterResync = await primary.g.getVolumeMetrics('synced')
    assert.equal(afterResync.readOps, before.readOps, 'the resync\'s reads are not client reads')
    assert.equal(afterResync.readBytes, before.readBytes)
    const link = (await primary.g.replicationStatus('synced')).links.find((l) => l.node === copy.id)
    assert.ok(link !== undefined)
    // At least the 9 blocks changed while the copy was away were read for it.
    assert.ok(link.resyncReadBytes >= 9 * 4096, `resyncReadBytes ${link.resyncReadBytes}`)
    const text = await primary.g.metricsText()
    const family = text.split('\n').find((l) => l.startsWith('galleonfs_replication_resync_read_bytes_total{') && l.includes(`node="${copy.id}"`))
    assert.ok(family !== undefined, 'galleonfs_replication_resync_read_bytes_total for the copy')
    assert.equal(Number(family.slice(family.lastIndexOf(' ') + 1)), link.resyncReadBytes)
    assert.match(text, /^# TYPE galleonfs_replication_resync_read_bytes_total counter$/m)

    // The copy applied the stream's writes and trim and the resync's blocks: none of it is client I/O there.
    const copyBefore = await copy.g.getVolumeMetrics('synced')
    assert.deepEqual([copyBefore.readOps, copyBefore.writeOps, copyBefore.trimOps, copyBefore.writeBytes, copyBefore.errors], [0, 0, 0, 0, 0])
    assert.deepEqual(await copy.g.readBlock('synced', 20), block(20), 'the copy has the resynced blocks (read through its primary)')
    // The copy's side of a digest resync: it reads its blocks to digest them, for the primary.
    const epoch = (await primary.g.replicationStatus('synced')).epoch as number
    const reply = await (primary.g.cluster as NonNullable<typeof primary.g.cluster>).request(copy.id, { kind: 'repl:digests', header: { volumeId: vol.id, epoch, first: 0, count: 64 } })
    assert.deepEqual(reply.header.indices, [0, 1, 2, 3, 4, 5, 6, 20, 21, 22, 23, 24, 25, 26, 27], 'the copy digested its blocks (7 was trimmed)')
    const copyAfter = await copy.g.getVolumeMetrics('synced')
    assert.equal(copyAfter.readOps, copyBefore.readOps, 'digesting for a resync is not a client read of the copy')
    assert.equal(copyAfter.readBytes, copyBefore.readBytes)
    assert.equal(copyAfter.cacheMisses, copyBefore.cacheMisses)
  })

  it('keeps no QoS state for a volume deleted while a read of it waited for the dispatcher', async () => {
    let scheduler: QoSScheduler | undefined
    const forget = QoSScheduler.prototype.forget
    QoSScheduler.prototype.forget = function (this: QoSScheduler, volumeId: string) { scheduler = this; forget.call(this, volumeId) }
    const g = await GalleonFS.open({ inMemory: true, qos: { maxInFlight: 1 } })
    try {
      await g.createVolume({ name: 'busy', sizeBytes: '1M' })
      const doomed = await g.createVolume({ name: 'doomed', sizeBytes: '1M', qos: { limits: { iops: 100_000 } } })
      const pending: Array<Promise<unknown>> = []
      g.on('volume:state', (volume) => {
        if (volume.id !== doomed.id) return
        // Its QoS state is forgotten by now, the record still resolves: the dispatcher is kept
        // busy (one write in flight, one queued), so the read queues for it.
        pending.push(g.write('busy', 0, block(1)), g.write('busy', 4096, block(2)))
        pending.push(g.read('doomed', 0, 4096).then(() => 'read', (err: GalleonError) => err.code))
      })
      await g.deleteVolume('doomed')
      const outcomes = await Promise.all(pending)
      assert.equal(outcomes[2], 'VOLUME_NOT_FOUND')
      assert.ok(scheduler !== undefined)
      assert.equal(scheduler.tracks(doomed.id), false, 'the deleted volume\'s QoS state is gone')
    } finally {
      QoSScheduler.prototype.forget = forget
      await g.close()
    }
  })

  it('a read that waited for the dispatcher while its volume was deleted is refused (VOLUME_NOT_FOUND), not served from the deleted storage', async () => {
    const forget = QoSScheduler.prototype.forget
    let reading: Promise<string> | undefined
    let slot: { scheduler: QoSScheduler } | undefined
    const g = await GalleonFS.open({ storagePath: dirs[dirs.push(await mkdtemp(join(tmpdir(), 'galleon-io-'))) - 1] as string, qos: { maxInFlight: 1 } })
    try {
      const doomed = await g.createVolume({ name: 'doomed', sizeBytes: '1M' })
      await g.write('doomed', 0, block(9))
      QoSScheduler.prototype.forget = function (this: QoSScheduler, volumeId: string) {
        forget.call(this, volumeId)
        if (volumeId !== doomed.id || reading !== undefined) return
        // The dispatcher's one slot is taken, and a read of the volume (its record still resolves,
        // not yet marked deleted) queues for it: it gets the slot only once the deletion is done.
        assert.equal(this.admit('someone-else', 'read', 0), true)
        slot = { scheduler: this }
        reading = g.read('doomed', 0, 4096).then((bytes) => `read ${bytes[0] ?? 'nothing'}`, (err: GalleonError) => err.code)
      }
      await g.deleteVolume('doomed')
      assert.ok(slot !== undefined && reading !== undefined)
      slot.scheduler.release()
      assert.equal(await reading, 'VOLUME_NOT_FOUND')
    } finally {
      QoSScheduler.prototype.forget = forget
      await g.close()
    }
  })

  it('the scheduler drops the state it made for a policy-less volume\'s queued operations once they are served', async () => {
    const s = new QoSScheduler({ maxInFlight: 1 })
    assert.equal(s.admit('a', 'read', 4096), true)
    const queued = s.admit('gone', 'read', 4096)
    assert.ok(queued instanceof Promise)
    assert.equal(s.tracks('gone'), true)
    assert.equal(s.metrics('gone').dispatchQueue, 1)
    s.release()
    assert.equal(await queued, true)
    s.release()
    assert.equal(s.tracks('gone'), false)
    assert.equal(s.tracks('a'), false)
    // A volume with a policy keeps its state (and its lifetime figures) as long as it exists.
    s.setPolicy('kept', 'kept', parseQoSPolicy({ weight: 2 }), 'volume')
    assert.equal(s.admit('kept', 'read', 4096), true)
    s.release()
    assert.equal(s.tracks('kept'), true)
  })

  it('a write, writeBlock or readBlock refused for its range charges no bytes: it leaves no debt for the next call of the volume', async () => {
    const clock = new ManualClock()
    const g = await GalleonFS.open({ inMemory: true, qos: { clock } })
    try {
      // 4 KB per second: one block charged for nothing holds the next call for about a second.
      const policy = { limits: { throughputMBps: 0.004 } }
      for (const name of ['w', 'wb', 'rb']) await g.createVolume({ name, sizeBytes: '1M', qos: policy })
      const refused = await Promise.all([
        g.write('w', 0, new Uint8Array(2 * 1024 * 1024)),
        g.writeBlock('wb', 10_000, block(1)),
        g.readBlock('rb', 10_000)
      ].map(async (call) => await call.then(() => 'done', (err: GalleonError) => err.code)))
      assert.deepEqual(refused, ['OUT_OF_RANGE', 'OUT_OF_RANGE', 'OUT_OF_RANGE'])
      const next = [g.write('w', 0, block(3)), g.writeBlock('wb', 0, block(4)), g.readBlock('rb', 0)]
      // Each next call is admitted at once (its bucket is full); after a refused one charged in bytes it waited.
      await clock.advance(50)
      const held: Record<string, number | undefined> = {}
      for (const name of ['w', 'wb', 'rb']) held[name] = (await g.getVolumeMetrics(name)).qos?.throttledQueue
      assert.deepEqual(held, { w: 0, wb: 0, rb: 0 }, 'no next call is held by a refused one')
      await Promise.all(next)
      // This read waits (about a second) for the write's 4 KB: the limit still holds what was really moved.
      const reading = g.read('w', 0, 4096)
      await clock.advance(5000)
      assert.deepEqual(await reading, block(3))
    } finally {
      await g.close()
    }
  })
})
