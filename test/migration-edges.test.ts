// Live migration edge cases: writes, partial writes and trims racing every phase of the copy and
// the switch-over, checked byte for byte against an in-memory model; progress; close, cancel and
// the operations that wait for a migration; failures of the destination; SIGKILL at chosen points.

import { after, before, describe, it } from 'node:test'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, GalleonError, type MigrationProgressEvent } from '../src/index.js'
import { seededRandom } from '../src/seeded-random.js'
import type { BlockOp, BlockStore } from '../src/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { until } from './support/wait.js'
import { BLOCK_BYTES, blockPayload, decodeBlockAt } from './crash/snapshot-child.js'
import { childOrTests, readChildLines, reportLine } from './crash/support.js'
import { rejectsWithCode } from './support/assertions.js'
import { scriptArgs } from './support/child-script.js'

let root = ''
let counter = 0
const fresh = (): string => join(root, `t${++counter}`)

const BLOCK = 4096
const SECRET = { name: 'secret-local', parameters: { encryption: 'true', replication: '1' } }

const code = rejectsWithCode

/** Bytes that name the operation that wrote them (so a mismatch says which write went missing). */
function fill (length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length)
  let x = (seed * 2654435761) >>> 0
  for (let i = 0; i < length; i++) { x = (x * 1103515245 + 12345) >>> 0; out[i] = x >>> 24 }
  return out
}

/**
 * The volume's bytes as they must read: every operation applied in the order each writer issued
 * it. Writers own disjoint 16-block groups, so operations of different writers never overlap and
 * the model is exact however they interleave.
 */
class Model {
  readonly bytes: Uint8Array
  constructor (size: number) { this.bytes = new Uint8Array(size) }
  write (offset: number, data: Uint8Array): void { this.bytes.set(data, offset) }
  trim (offset: number, length: number): void { this.bytes.fill(0, offset, offset + length) }
}

const GROUP = 16

/**
 * `writers` loops of random writeBlock/write/trim calls (aligned and not, spanning blocks) on their
 * own groups of a `blocks`-block volume, until stopped. `burst(n)` issues n more at once without
 * waiting (for the switch-over: they wait at its gate).
 */
function load (g: GalleonFS, volume: string, model: Model, blocks: number, writers: number, seed: number): { stop: () => Promise<void>, burst: (n: number) => void, ops: () => number } {
  const random = seededRandom(seed)
  let running = true
  let ops = 0
  let opSeed = seed * 1000
  const chains: Array<Promise<void>> = Array.from({ length: writers }, () => Promise.resolve())
  const groups = blocks / GROUP
  const one = (writer: number): (() => Promise<void>) => {
    // Chosen now, applied to the model in issue order: the writer's calls are chained.
    const group = writer + writers * Math.floor(random() * Math.floor(groups / writers))
    const base = group * GROUP * BLOCK
    const kind = random()
    const id = ++opSeed
    ops++
    if (kind < 0.4) {
      const index = group * GROUP + Math.floor(random() * GROUP)
      const data = fill(BLOCK, id)
      model.write(index * BLOCK, data)
      return async () => { await g.writeBlock(volume, index, data) }
    }
    const offset = base + Math.floor(random() * (GROUP - 3) * BLOCK)
    const length = 1 + Math.floor(random() * 3 * BLOCK)
    if (kind < 0.75) {
      const data = fill(length, id)
      model.write(offset, data)
      return async () => { await g.write(volume, offset, data) }
    }
    // Trims: whole blocks often (unmapped), with unaligned edges sometimes (zero-filled).
    const aligned = random() < 0.5
    const at = aligned ? Math.floor(offset / BLOCK) * BLOCK : offset
    const len = aligned ? (1 + Math.floor(random() * 3)) * BLOCK : length
    model.trim(at, len)
    return async () => { await g.trim(volume, at, len) }
  }
  const enqueue = (writer: number): Promise<void> => {
    const op = one(writer)
    const next = (chains[writer] as Promise<void>).then(op)
    chains[writer] = next
    return next
  }
  const loops = Array.from({ length: writers }, async (_, writer) => {
    while (running) {
      await enqueue(writer)
      if (ops % 8 === 0) await new Promise((resolve) => setImmediate(resolve))
    }
  })
  return {
    ops: () => ops,
    burst: (n) => { for (let i = 0; i < n; i++) void enqueue(i % writers).catch(() => {}) },
    stop: async () => { running = false; await Promise.all(loops); await Promise.all(chains) }
  }
}

/** Progress never goes backwards (blocks done, blocks known, pass), done never exceeds total, and the last event is `done` at 100%. */
function assertProgress (events: readonly MigrationProgressEvent[]): void {
  assert.ok(events.length > 0, 'progress was reported')
  for (let i = 1; i < events.length; i++) {
    const [a, b] = [events[i - 1] as MigrationProgressEvent, events[i] as MigrationProgressEvent]
    const seen = events.slice(0, i + 1).map((e) => `${e.phase} ${e.blocksDone}/${e.blocksTotal}`).join(', ')
    assert.ok(b.blocksDone >= a.blocksDone && b.blocksTotal >= a.blocksTotal && b.pass >= a.pass, `progress went backwards: ${seen}`)
    assert.ok(b.blocksDone <= b.blocksTotal, `more done than known: ${seen}`)
  }
  const last = events[events.length - 1] as MigrationProgressEvent
  assert.equal(last.phase, 'done')
  assert.ok(last.blocksTotal > 0 && last.blocksDone === last.blocksTotal, `ends at ${last.blocksDone}/${last.blocksTotal}`)
  assert.equal(events.filter((e) => e.phase === 'done').length, 1, 'one done event')
}

async function assertModel (g: GalleonFS, volume: string, model: Model, what: string): Promise<void> {
  const actual = await g.read(volume, 0, model.bytes.byteLength)
  for (let index = 0; index < model.bytes.byteLength / BLOCK; index++) {
    const a = actual.subarray(index * BLOCK, (index + 1) * BLOCK)
    const e = model.bytes.subarray(index * BLOCK, (index + 1) * BLOCK)
    if (!Buffer.from(a).equals(Buffer.from(e))) assert.fail(`${what}: block ${index} differs from the model`)
  }
}

async function registerTests (): Promise<void> {
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-migration-edges-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('live migration: I/O racing the copy and the switch-over', () => {
  for (const [from, to, backend] of [['fast-local-ssd', 'secret-local', 'memory'], ['secret-local', 'fast-local-ssd', 'file']] as const) {
    it(`${from} -> ${to} (${backend}): writes, partial writes and trims during every phase read back byte for byte; snapshots unchanged`, async () => {
      const dir = fresh()
      const open = async (): Promise<GalleonFS> => backend === 'memory' ? await GalleonFS.open({ inMemory: true }) : await GalleonFS.open({ storagePath: dir })
      let g = await open()
      const BLOCKS = 2048
      const model = new Model(BLOCKS * BLOCK)
      try {
        await g.createStorageClass(SECRET)
        await g.createVolume({ name: 'v', sizeBytes: BLOCKS * BLOCK, storageClass: from })
        for (let at = 0; at < BLOCKS; at += 128) {
          const data = fill(128 * BLOCK, at)
          await g.write('v', at * BLOCK, data)
          model.write(at * BLOCK, data)
        }
        await g.trim('v', 100 * BLOCK, 20 * BLOCK)
        model.trim(100 * BLOCK, 20 * BLOCK)
        await g.createSnapshot('v', 'one')
        const one = model.bytes.slice()
        const before = load(g, 'v', model, BLOCKS, 4, 11)
        while (before.ops() < 200) await new Promise((resolve) => setImmediate(resolve))
        await before.stop()
        await g.createSnapshot('v', 'two')
        const two = model.bytes.slice()
        const during = load(g, 'v', model, BLOCKS, 4, 12)
        const phases: string[] = []
        const events: MigrationProgressEvent[] = []
        let burst = 0
        await g.migrateVolume('v', { storageClass: to }, {
          onProgress: (event) => {
            events.push(event)
            if (!phases.includes(event.phase)) phases.push(event.phase)
            // Writes issued while writes are paused wait at the gate and land on the new storage.
            if (event.phase === 'switchover') { during.burst(40); burst += 40 }
          }
        })
        during.burst(40)
        const issued = during.ops()
        await during.stop()
        assert.ok(burst > 0 && issued > 100, `writes during the migration: ${issued}`)
        assert.deepEqual(phases, ['snapshots', 'copy', 'switchover', 'done'])
        assertProgress(events)
        await assertModel(g, 'v', model, 'live view after the migration')
        assert.deepEqual(await g.read({ volume: 'v', snapshot: 'one' }, 0, BLOCKS * BLOCK), one, 'snapshot one')
        assert.deepEqual(await g.read({ volume: 'v', snapshot: 'two' }, 0, BLOCKS * BLOCK), two, 'snapshot two')
        assert.deepEqual((await g.scrub('v')).badBlocks, [])
        if (backend === 'file') {
          await g.close()
          g = await open()
          assert.equal((await g.getVolume('v')).storageClass, to)
          await assertModel(g, 'v', model, 'live view after a reopen')
          assert.deepEqual(await g.read({ volume: 'v', snapshot: 'one' }, 0, BLOCKS * BLOCK), one, 'snapshot one after a reopen')
        }
      } finally {
        await g.close()
      }
    })
  }
})

/** A block store that fails batches putting blocks of storage ids above `firstNew` once armed (the migration's destination). */
function failingDestination (inner: BlockStore, failure: () => Error): { store: BlockStore, arm: (firstNew: number, afterPuts: number) => void, volumes: () => Set<number> } {
  let armedFrom = Infinity
  let budget = 0
  const seen = new Set<number>()
  const store = new Proxy(inner, {
    get (target, prop) {
      if (prop === 'batch') {
        return async (ops: BlockOp[], options?: { sync?: boolean }) => {
          for (const op of ops) if (op.type === 'put') seen.add(op.address.volume)
          const puts = ops.filter((op) => op.type === 'put' && op.address.volume >= armedFrom).length
          if (puts > 0) {
            budget -= puts
            if (budget < 0) throw failure()
          }
          return await target.batch(ops, options)
        }
      }
      const value = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  return { store, arm: (firstNew, afterPuts) => { armedFrom = firstNew; budget = afterPuts }, volumes: () => seen }
}

describe('live migration: failures, close and cancel leave the volume whole where it was', () => {
  for (const failure of [() => new GalleonError('NO_SPACE', 'the disk is full'), () => new Error('EIO: i/o error')]) {
    it(`a destination that fails mid-copy (${failure().message}): the migration rejects, the volume is unchanged, the destination's blocks go, a retry works`, async () => {
      const dir = fresh()
      const failing = failingDestination(new FileBlockStore({ location: join(dir, 'blocks') }), failure)
      const g = await GalleonFS.open({ storagePath: dir, blockStore: failing.store })
      try {
        await g.createStorageClass(SECRET)
        await g.createVolume({ name: 'v', sizeBytes: 1024 * BLOCK })
        const data = fill(1024 * BLOCK, 5)
        await g.write('v', 0, data)
        await g.createSnapshot('v', 's')
        await g.write('v', 0, fill(BLOCK, 6))
        const stats = await g.getStorageStats()
        failing.arm(Math.max(...failing.volumes()) + 1, 300)
        const events: string[] = []
        g.on('volume:migrated', () => events.push('migrated'))
        await assert.rejects(g.migrateVolume('v', { storageClass: SECRET.name }), (err: unknown) => { assert.ok(err instanceof Error); assert.match(err.message, /disk is full|EIO/); return true })
        failing.arm(Infinity, 0)
        assert.deepEqual(events, [])
        const v = await g.getVolume('v')
        assert.equal(v.storageClass, 'fast-local-ssd')
        assert.equal(v.encrypted, false)
        assert.deepEqual(await g.read('v', BLOCK, 1023 * BLOCK), data.subarray(BLOCK))
        assert.deepEqual(await g.read('v', 0, BLOCK), fill(BLOCK, 6))
        assert.deepEqual(await g.read({ volume: 'v', snapshot: 's' }, 0, 1024 * BLOCK), data)
        assert.equal((await g.getStorageStats()).blocks, stats.blocks, 'the destination\'s blocks are gone and no internal cut is left')
        const moved = await g.migrateVolume('v', { storageClass: SECRET.name })
        assert.equal(moved.encrypted, true)
        assert.deepEqual(await g.read({ volume: 'v', snapshot: 's' }, 0, 1024 * BLOCK), data)
      } finally {
        await g.close()
      }
    })
  }

  it('close() during a migration: the migration rejects with CANCELLED, close completes, and after a reopen the volume is whole where it was with nothing left behind', async () => {
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir })
    const data = fill(4096 * BLOCK, 9)
    let stats: number
    try {
      await g.createStorageClass(SECRET)
      await g.createVolume({ name: 'v', sizeBytes: 4096 * BLOCK })
      await g.write('v', 0, data)
      await g.createSnapshot('v', 's')
      await g.write('v', 0, fill(BLOCK, 10))
      stats = (await g.getStorageStats()).blocks
      let closing: Promise<void> | undefined
      const migration = g.migrateVolume('v', { storageClass: SECRET.name }, { onProgress: (e) => { if (e.phase === 'copy' && e.blocksDone > 0) closing ??= g.close() } })
      await assert.rejects(migration, code('CANCELLED'))
      assert.ok(closing !== undefined)
      await closing
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir })
    try {
      const v = await g.getVolume('v')
      assert.equal(v.storageClass, 'fast-local-ssd')
      assert.deepEqual(await g.read('v', 0, BLOCK), fill(BLOCK, 10))
      assert.deepEqual(await g.read('v', BLOCK, 4095 * BLOCK), data.subarray(BLOCK))
      assert.deepEqual(await g.read({ volume: 'v', snapshot: 's' }, 0, 4096 * BLOCK), data)
      assert.equal((await g.getStorageStats()).blocks, stats)
      assert.equal((await g.migrateVolume('v', { storageClass: SECRET.name })).encrypted, true)
    } finally {
      await g.close()
    }
  })
})

describe('live migration: operations on the volume while it migrates', () => {
  it('expand, snapshot, revert, snapshot deletion and clone wait for the migration and then act on the migrated volume; a second migration is BUSY', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createStorageClass(SECRET)
      await g.createVolume({ name: 'v', sizeBytes: 2048 * BLOCK })
      const data = fill(2048 * BLOCK, 21)
      await g.write('v', 0, data)
      await g.createSnapshot('v', 'base')
      await g.createSnapshot('v', 'spare')
      await g.write('v', 0, fill(BLOCK, 22))
      const started: Array<Promise<unknown>> = []
      let second: Promise<unknown> | undefined
      const moved = await g.migrateVolume('v', { storageClass: SECRET.name }, {
        onProgress: (e) => {
          if (e.phase !== 'copy' || started.length > 0) return
          second = g.migrateVolume('v', { pool: 'x' }).catch((err) => err)
          started.push(g.expandVolume('v', 4096 * BLOCK), g.createSnapshot('v', 'during'), g.deleteSnapshot('v', 'spare'), g.cloneVolume({ volume: 'v', snapshot: 'base' }, 'c'))
        }
      })
      assert.equal(moved.encrypted, true)
      const err = await second
      assert.ok(err instanceof GalleonError && (err.code === 'BUSY' || err.code === 'POOL_NOT_FOUND'), String(err))
      await Promise.all(started)
      const v = await g.getVolume('v')
      assert.equal(v.sizeBytes, 4096 * BLOCK)
      assert.equal(v.encrypted, true)
      assert.deepEqual((await g.listSnapshots('v')).map((s) => s.name).sort(), ['base', 'during'], 'the snapshot taken during the migration is there, the one deleted is gone')
      assert.deepEqual(await g.read({ volume: 'v', snapshot: 'during' }, 0, BLOCK), fill(BLOCK, 22))
      assert.deepEqual(await g.read('c', 0, 2048 * BLOCK), data)
      await g.write('v', 3000 * BLOCK, fill(BLOCK, 23))
      await g.restoreSnapshot('v', 'base')
      assert.deepEqual(await g.read('v', 0, 2048 * BLOCK), data)
      assert.deepEqual(await g.read('v', 3000 * BLOCK, BLOCK), new Uint8Array(BLOCK))
    } finally {
      await g.close()
    }
  })
})

describe('migrations across cluster nodes: progress', () => {
  async function twoNodes (classOn: readonly string[] = ['n1', 'n2']): Promise<GalleonFS[]> {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const nodes: GalleonFS[] = []
    for (const id of ['n1', 'n2']) {
      nodes.push(await GalleonFS.open({ storagePath: fresh(), cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 } }))
    }
    await until('the nodes see each other', () => nodes.every((g) => g.cluster?.members.filter((m) => m.healthy).length === 2))
    for (const [i, g] of nodes.entries()) if (classOn.includes(`n${i + 1}`)) await g.createStorageClass({ name: 'pair', parameters: { replication: '2' } })
    return nodes
  }

  it('a 1-copy volume migrated into a replicated class reports its new copy\'s fill, ending at 100% once it is in sync', async () => {
    const nodes = await twoNodes()
    const [n1] = nodes as [GalleonFS]
    try {
      await n1.createVolume({ name: 'm', sizeBytes: '8M' })
      await n1.write('m', 0, fill(8 << 20, 31))
      await n1.createSnapshot('m', 's')
      const events: MigrationProgressEvent[] = []
      const emitted: MigrationProgressEvent[] = []
      n1.on('volume:migration-progress', (e) => { emitted.push(e) })
      const moved = await n1.migrateVolume('m', { storageClass: 'pair' }, { onProgress: (e) => events.push(e) })
      assert.equal(moved.replicas, 2)
      assert.equal((await n1.replicationStatus('m')).inSync.length, 2)
      assertProgress(events)
      assert.deepEqual(emitted, events)
      assert.ok((events[events.length - 1] as MigrationProgressEvent).blocksDone >= 2 * 2048, 'the live view and the snapshot were filled')
    } finally {
      for (const g of nodes) await g.close()
    }
  })

  it('a migration into a replicated class whose copy never comes in sync (the class is missing on the other node) rejects with BUSY after syncTimeoutMs, never reporting done', { timeout: 60_000 }, async () => {
    const nodes = await twoNodes(['n1'])
    const [n1] = nodes as [GalleonFS]
    try {
      await n1.createVolume({ name: 'm', sizeBytes: '1M' })
      await n1.write('m', 0, fill(1 << 20, 5))
      const events: MigrationProgressEvent[] = []
      let migrated = false
      n1.on('volume:migrated', () => { migrated = true })
      await assert.rejects(n1.migrateVolume('m', { storageClass: 'pair' }, { onProgress: (e) => events.push(e), syncTimeoutMs: 1500 }), (err: GalleonError) => err.code === 'BUSY' && /did not come in sync within 1.5 s/.test(err.message))
      assert.equal(events.some((e) => e.phase === 'done'), false)
      assert.equal(migrated, false)
      // The volume is in the class, degraded, and its data is whole.
      assert.equal((await n1.getVolume('m')).storageClass, 'pair')
      assert.deepEqual(await n1.read('m', 0, 1 << 20), fill(1 << 20, 5))
      await assert.rejects(n1.migrateVolume('m', { storageClass: 'pair' }, { syncTimeoutMs: 0 }), (err: GalleonError) => err.code === 'INVALID_ARGUMENT' && /syncTimeoutMs/.test(err.message))
    } finally {
      for (const g of nodes) await g.close()
    }
  })

  it('a migration into a replicated class whose wait for its copies is aborted rejects with CANCELLED, never reporting done', { timeout: 60_000 }, async () => {
    const nodes = await twoNodes(['n1'])
    const [n1] = nodes as [GalleonFS]
    try {
      await n1.createVolume({ name: 'm', sizeBytes: '1M' })
      let migrated = false
      n1.on('volume:migrated', () => { migrated = true })
      const abort = new AbortController()
      const events: MigrationProgressEvent[] = []
      const migrating = n1.migrateVolume('m', { storageClass: 'pair' }, { signal: abort.signal, onProgress: (e) => events.push(e), syncTimeoutMs: 30_000 })
      migrating.catch(() => {})
      // Aborted once the volume is in the class, replicated, and the wait for its copy has begun.
      await until('the volume is in the class', async () => (await n1.getVolume('m')).storageClass === 'pair')
      abort.abort()
      await assert.rejects(migrating, (err: GalleonError) => err.code === 'CANCELLED' && /copies still filling/.test(err.message))
      assert.equal(migrated, false)
      assert.equal(events.some((e) => e.phase === 'done'), false)
      assert.equal((await n1.getVolume('m')).storageClass, 'pair')
    } finally {
      for (const g of nodes) await g.close()
    }
  })

  it('a progress listener that throws neither fails a migration nor ends the process (a node move calls it from a timer)', { timeout: 60_000 }, async () => {
    const nodes = await twoNodes()
    const [n1, n2] = nodes as [GalleonFS, GalleonFS]
    try {
      await n1.createVolume({ name: 'm', sizeBytes: '8M' })
      const data = fill(8 << 20, 13)
      await n1.write('m', 0, data)
      let calls = 0
      const onProgress = (): void => { calls++; throw new Error('listener bug') }
      await n1.migrateVolume('m', { node: 'n2' }, { onProgress })
      await n2.createVolume({ name: 'local', sizeBytes: '1M' })
      await n2.migrateVolume('local', { storageClass: 'pair' }, { onProgress })
      assert.ok(calls > 0, 'the listener was called')
      assert.deepEqual(await n2.read('m', 0, 8 << 20), data)
    } finally {
      for (const g of nodes) await g.close()
    }
  })

  it('moving a volume to another node (and back, and again) reports progress that never goes backwards and ends at 100%', async () => {
    const nodes = await twoNodes()
    const [n1, n2] = nodes as [GalleonFS, GalleonFS]
    try {
      await n1.createVolume({ name: 'm', sizeBytes: '16M' })
      const data = fill(16 << 20, 41)
      await n1.write('m', 0, data)
      for (const [from, to] of [[n1, 'n2'], [n2, 'n1'], [n1, 'n2']] as const) {
        const events: MigrationProgressEvent[] = []
        await from.migrateVolume('m', { node: to }, { onProgress: (e) => events.push(e) })
        assertProgress(events)
      }
      assert.deepEqual(await n2.read('m', 0, 16 << 20), data)
    } finally {
      for (const g of nodes) await g.close()
    }
  })
})

describe('live migration: SIGKILL at chosen points', () => {
  for (const point of ['snapshots', 'copy', 'switchover', 'old-storage'] as const) {
    it(`killed ${point === 'old-storage' ? 'after the switch-over, while the old storage is removed' : `in the ${point} phase`}: the volume reopens whole on ${point === 'old-storage' ? 'the new' : 'the old'} storage, with every durable write and its snapshots; nothing is left behind; migrating again works`, async () => {
      const dir = fresh()
      const openAt = async (): Promise<GalleonFS> => await GalleonFS.open({ storagePath: dir, blockStore: new FileBlockStore({ location: join(dir, 'blocks') }) })
      let g = await openAt()
      const snapshots = new Map<string, Uint8Array>()
      try {
        await g.createStorageClass(SECRET)
        await g.createVolume({ name: CRASH_VOLUME, sizeBytes: CRASH_BLOCKS * BLOCK_BYTES })
        for (let i = 0; i < CRASH_BLOCKS; i++) await g.writeBlock(CRASH_VOLUME, i, blockPayload(i, 1))
        await g.createSnapshot(CRASH_VOLUME, 'base')
        for (let i = 0; i < CRASH_BLOCKS; i += 3) await g.writeBlock(CRASH_VOLUME, i, blockPayload(i, 2))
        await g.trim(CRASH_VOLUME, 10 * BLOCK_BYTES, 10 * BLOCK_BYTES)
        await g.createSnapshot(CRASH_VOLUME, 'later')
        for (const name of ['base', 'later']) snapshots.set(name, await g.read({ volume: CRASH_VOLUME, snapshot: name }, 0, CRASH_BLOCKS * BLOCK_BYTES))
      } finally {
        await g.close()
      }
      const acked = new Map<number, number>()
      for (let i = 0; i < CRASH_BLOCKS; i++) acked.set(i, i >= 10 && i < 20 ? 0 : i % 3 === 0 ? 2 : 1)
      const child = spawn(process.execPath, [...scriptArgs(fileURLToPath(import.meta.url)), dir, point], {
        cwd: fileURLToPath(new URL('..', import.meta.url)),
        env: { ...process.env, GALLEON_MIGRATION_EDGES_CHILD: '1' },
        stdio: ['ignore', 'pipe', 'pipe']
      })
      let frozen = false
      const deadline = setTimeout(() => child.kill('SIGKILL'), 60_000)
      const exit = await readChildLines(child, (line) => {
        const [kind, a, b] = line.split(' ')
        if (kind === 'A') acked.set(Number(a), Math.max(acked.get(Number(a)) ?? 0, Number(b)))
        if (kind === 'P') { frozen = true; child.kill('SIGKILL') }
      })
      clearTimeout(deadline)
      assert.ok(frozen, `the child reached ${point} and was killed there (exit ${exit.code}: ${exit.stderr.slice(0, 2000)})`)
      g = await openAt()
      try {
        const v = await g.getVolume(CRASH_VOLUME)
        const expected = point === 'old-storage' ? SECRET.name : 'fast-local-ssd'
        assert.equal(v.storageClass, expected)
        assert.equal(v.encrypted, expected === SECRET.name)
        assert.deepEqual((await g.scrub(CRASH_VOLUME)).badBlocks, [])
        const live = await g.read(CRASH_VOLUME, 0, CRASH_BLOCKS * BLOCK_BYTES)
        for (let i = 0; i < CRASH_BLOCKS; i++) {
          const found = decodeBlockAt(live, i * BLOCK_BYTES, i)
          const want = acked.get(i) as number
          if (want === 0 && found.kind === 'zero') continue
          assert.ok(found.kind === 'data' && found.seq >= want, `block ${i} holds ${JSON.stringify(found)}, last acknowledged seq ${want}`)
        }
        for (const [name, bytes] of snapshots) assert.deepEqual(await g.read({ volume: CRASH_VOLUME, snapshot: name }, 0, CRASH_BLOCKS * BLOCK_BYTES), bytes, `snapshot ${name}`)
        // Migrating again (on, or back) works and keeps everything.
        const moved = await g.migrateVolume(CRASH_VOLUME, { storageClass: expected === SECRET.name ? 'fast-local-ssd' : SECRET.name })
        assert.notEqual(moved.storageClass, expected)
        assert.deepEqual(await g.read(CRASH_VOLUME, 0, CRASH_BLOCKS * BLOCK_BYTES), live)
        for (const [name, bytes] of snapshots) assert.deepEqual(await g.read({ volume: CRASH_VOLUME, snapshot: name }, 0, CRASH_BLOCKS * BLOCK_BYTES), bytes, `snapshot ${name} after migrating again`)
        // Nothing but the volume's own blocks is stored: once it goes, the store is empty.
        await g.deleteVolume(CRASH_VOLUME)
        assert.equal((await g.getStorageStats()).blocks, 0, 'blocks of an abandoned copy were left in the store')
      } finally {
        await g.close()
      }
    })
  }
})
}

const CRASH_VOLUME = 'moving'
const CRASH_BLOCKS = 1024

/**
 * The child of the SIGKILL tests: durable writes while the volume migrates to the encrypting class;
 * at the chosen point it reports `P <point>` and stops dead (the event loop blocked) until killed.
 */
async function childMain (): Promise<void> {
  const [storagePath, point] = process.argv.slice(2) as [string, string]
  const { WriteConcern } = await import('../src/index.js')
  const freeze = (): void => {
    reportLine(`P ${point}`)
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0)
  }
  const inner = new FileBlockStore({ location: join(storagePath, 'blocks') })
  // After the switch-over, the only storage deleted is the volume's old one.
  let switched = false
  const store = new Proxy(inner, {
    get (target, prop) {
      if (prop === 'deleteVolume') {
        return async (id: number) => {
          if (point === 'old-storage' && switched) freeze()
          return await target.deleteVolume(id)
        }
      }
      const value = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  const g = await GalleonFS.open({ storagePath, blockStore: store })
  reportLine('ready')
  let seq = 10
  const random = seededRandom(7)
  const writers = Array.from({ length: 3 }, async () => {
    for (;;) {
      const block = Math.floor(random() * CRASH_BLOCKS)
      const mine = seq++
      await g.writeBlock(CRASH_VOLUME, block, blockPayload(block, mine), WriteConcern.WriteDurable)
      reportLine(`A ${block} ${mine}`)
    }
  })
  await g.migrateVolume(CRASH_VOLUME, { storageClass: SECRET.name }, {
    onProgress: (event) => {
      if (event.phase === 'switchover') switched = true
      if (event.phase === point && (event.blocksDone > 0 || point === 'switchover')) freeze()
    }
  })
  reportLine('M')
  await Promise.all(writers)
}

await childOrTests('GALLEON_MIGRATION_EDGES_CHILD', childMain, registerTests)
