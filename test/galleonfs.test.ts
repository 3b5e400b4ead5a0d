// Tests of the GalleonFS facade: volumes, storage classes, the I/O path, concerns, events, errors.
import { describe, it, beforeEach, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, open, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern, VolumeType, AccessMode, VolumeState, GalleonError, type ReplicationHook, type BlockStore } from '../src/index.js'
import { MemoryBlockStore } from '../backends/memory/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { MemoryLevel } from 'memory-level'
import { observed } from './support/observed.js'

const MiB = 1024 * 1024

function pattern (seed: number, length: number): Uint8Array {
  const out = new Uint8Array(length)
  let x = seed * 2654435761 >>> 0
  for (let i = 0; i < length; i++) { x = (x * 1103515245 + 12345) >>> 0; out[i] = x >>> 24 }
  return out
}

describe('GalleonFS in memory', () => {
  let g: GalleonFS
  beforeEach(async () => { g = await GalleonFS.open({ inMemory: true }) })
  afterEach(async () => { await g.close() })

  describe('volumes', () => {
    it('creates a volume with defaults and finds it by id and by name', async () => {
      const vol = await g.createVolume({ name: 'web-data', sizeBytes: '1G' })
      assert.equal(vol.sizeBytes, 1024 ** 3)
      assert.equal(vol.type, VolumeType.Persistent)
      assert.equal(vol.state, VolumeState.Available)
      assert.equal(vol.storageClass, 'fast-local-ssd')
      assert.equal(vol.replicas, 1)
      assert.equal(vol.blockSize, 4096)
      assert.deepEqual(vol.accessModes, [AccessMode.ReadWriteOnce])
      assert.match(vol.id, /^[0-9a-f-]{36}$/)
      assert.deepEqual(await g.getVolume('web-data'), vol)
      assert.deepEqual(await g.getVolume(vol.id), vol)
      assert.deepEqual(await g.getVolume(vol), vol)
    })
    it('generates a name when none is given', async () => {
      const vol = await g.createVolume({ sizeBytes: 8192 })
      // 64 random bits: names of unnamed volumes stay unique across the nodes of a cluster too.
      assert.match(vol.name, /^vol-[0-9a-f]{16}$/)
      const names = await Promise.all(Array.from({ length: 20 }, async () => (await g.createVolume({ sizeBytes: 4096 })).name))
      assert.equal(new Set([vol.name, ...names]).size, 21)
      for (const name of names) assert.equal((await g.getVolume(name)).name, name)
    })
    it('keeps names unique, also under concurrent creation', async () => {
      await g.createVolume({ name: 'a', sizeBytes: '1M' })
      await assert.rejects(g.createVolume({ name: 'a', sizeBytes: '1M' }), { code: 'VOLUME_EXISTS' })
      const results = await Promise.allSettled([1, 2, 3, 4].map(async () => await g.createVolume({ name: 'b', sizeBytes: '1M' })))
      assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1)
      assert.equal((await g.listVolumes()).filter((v) => v.name === 'b').length, 1)
    })
    it('stores labels, access modes and types', async () => {
      const vol = await g.createVolume({ name: 'shared-1', sizeBytes: '4M', type: 'shared', accessModes: ['ReadWriteMany', 'ReadOnlyMany'], labels: { app: 'db', 'team.io/owner': 'ops' } })
      assert.equal(vol.type, VolumeType.Shared)
      assert.deepEqual(vol.accessModes, ['ReadWriteMany', 'ReadOnlyMany'])
      assert.deepEqual(vol.labels, { app: 'db', 'team.io/owner': 'ops' })
    })
    it('returns copies: mutating a returned volume changes nothing', async () => {
      const vol = await g.createVolume({ name: 'c', sizeBytes: '1M', labels: { a: '1' } })
      ;(vol.labels as Record<string, string>).a = '2'
      assert.equal((await g.getVolume('c')).labels.a, '1')
    })
    it('lists volumes in creation order', async () => {
      for (const name of ['x1', 'x2', 'x3']) await g.createVolume({ name, sizeBytes: '1M' })
      assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['x1', 'x2', 'x3'])
    })
    const badCreates: Array<[string, unknown, string]> = [
      ['no options', undefined, 'INVALID_ARGUMENT'],
      ['no size', { name: 'v' }, 'INVALID_ARGUMENT'],
      ['zero size', { name: 'v', sizeBytes: 0 }, 'INVALID_ARGUMENT'],
      ['size not a block multiple', { name: 'v', sizeBytes: 5000 }, 'INVALID_ARGUMENT'],
      ['unparseable size', { name: 'v', sizeBytes: 'lots' }, 'INVALID_ARGUMENT'],
      ['negative size', { name: 'v', sizeBytes: -4096 }, 'INVALID_ARGUMENT'],
      ['bad name', { name: 'has space', sizeBytes: '1M' }, 'INVALID_ARGUMENT'],
      ['uuid-shaped name', { name: '3f2504e0-4f89-11d3-9a0c-0305e82c3301', sizeBytes: '1M' }, 'INVALID_ARGUMENT'],
      ['bad type', { name: 'v', sizeBytes: '1M', type: 'forever' }, 'INVALID_ARGUMENT'],
      ['bad access mode', { name: 'v', sizeBytes: '1M', accessModes: ['ReadWriteSometimes'] }, 'INVALID_ARGUMENT'],
      ['empty access modes', { name: 'v', sizeBytes: '1M', accessModes: [] }, 'INVALID_ARGUMENT'],
      ['bad labels', { name: 'v', sizeBytes: '1M', labels: { a: 1 } }, 'INVALID_ARGUMENT'],
      ['bad replicas', { name: 'v', sizeBytes: '1M', replicas: 0 }, 'INVALID_ARGUMENT'],
      ['unknown option', { name: 'v', sizeBytes: '1M', colour: 'blue' }, 'INVALID_ARGUMENT'],
      ['unknown class', { name: 'v', sizeBytes: '1M', storageClass: 'nope' }, 'STORAGE_CLASS_NOT_FOUND'],
      ['the encrypted class with its 3 replicas outside a cluster', { name: 'v', sizeBytes: '1M', storageClass: 'encrypted-storage' }, 'INVALID_ARGUMENT'],
      ['more replicas than one node outside a cluster', { name: 'v', sizeBytes: '1M', replicas: 3 }, 'INVALID_ARGUMENT']
    ]
    for (const [what, options, code] of badCreates) {
      it(`refuses ${what} with ${code} and creates nothing`, async () => {
        await assert.rejects(g.createVolume(options as never), { code })
        assert.equal((await g.listVolumes()).length, 0)
      })
    }
    it('reports VOLUME_NOT_FOUND for unknown ids and names, INVALID_ARGUMENT for non-strings', async () => {
      await assert.rejects(g.getVolume('missing'), { code: 'VOLUME_NOT_FOUND' })
      await assert.rejects(g.readBlock('missing', 0), { code: 'VOLUME_NOT_FOUND' })
      await assert.rejects(g.getVolume(42 as never), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.getVolume('' as never), { code: 'INVALID_ARGUMENT' })
    })
    it('deletes a volume and frees its blocks; the name becomes free again', async () => {
      const vol = await g.createVolume({ name: 'd', sizeBytes: '1M' })
      await g.writeBlock(vol, 3, pattern(1, 4096))
      await g.deleteVolume('d')
      await assert.rejects(g.getVolume(vol.id), { code: 'VOLUME_NOT_FOUND' })
      const again = await g.createVolume({ name: 'd', sizeBytes: '1M' })
      assert.notEqual(again.id, vol.id)
      assert.deepEqual(await g.readBlock(again, 3), new Uint8Array(4096))
    })
    it('waits for in-flight writes before deleting', async () => {
      const vol = await g.createVolume({ name: 'busy', sizeBytes: '1M' })
      // Observed at once: one that the deletion fails is reported by the check below, not as an
      // unhandled rejection while deleteVolume is awaited.
      const writes = Array.from({ length: 50 }, async (_, i) => await g.writeBlock(vol, i, pattern(i, 4096))).map(observed)
      await g.deleteVolume(vol)
      const settled = await Promise.allSettled(writes)
      assert.ok(settled.every((r) => r.status === 'fulfilled'))
    })
    it('requires force to delete a volume of a Retain class', async () => {
      await g.createStorageClass({ name: 'keep', reclaim_policy: 'Retain' })
      await g.createVolume({ name: 'kept', sizeBytes: '1M', storageClass: 'keep' })
      await assert.rejects(g.deleteVolume('kept'), { code: 'BUSY' })
      await g.deleteVolume('kept', { force: true })
      assert.equal((await g.listVolumes()).length, 0)
    })
    it('expands online, new space reads as zeros, shrinking is refused', async () => {
      const vol = await g.createVolume({ name: 'grow', sizeBytes: '1M' })
      await assert.rejects(g.writeBlock(vol, 256, pattern(1, 4096)), { code: 'OUT_OF_RANGE' })
      const inflight = Array.from({ length: 64 }, async (_, i) => await g.writeBlock(vol, i, pattern(i, 4096)))
      const grown = await g.expandVolume(vol, '2M')
      await Promise.all(inflight)
      assert.equal(grown.sizeBytes, 2 * MiB)
      assert.deepEqual(await g.readBlock(vol, 300), new Uint8Array(4096))
      await g.writeBlock(vol, 300, pattern(300, 4096))
      assert.deepEqual(await g.readBlock(vol, 300), pattern(300, 4096))
      for (let i = 0; i < 64; i++) assert.deepEqual(await g.readBlock(vol, i), pattern(i, 4096))
      await assert.rejects(g.expandVolume(vol, '1M'), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.expandVolume(vol, 2 * MiB + 1), { code: 'INVALID_ARGUMENT' })
      assert.equal((await g.expandVolume(vol, '2M')).sizeBytes, 2 * MiB)
    })
    it('counts only written blocks as usage (thin provisioning), and trim frees them', async () => {
      const vol = await g.createVolume({ name: 'thin', sizeBytes: '1G' })
      assert.equal(await g.getVolumeUsage(vol), 0)
      await g.writeBlock(vol, 0, pattern(1, 10))
      await g.writeBlock(vol, 100000, pattern(2, 4096))
      await g.writeBlock(vol, 100000, pattern(3, 4096))
      assert.equal(await g.getVolumeUsage(vol), 2 * 4096)
      await g.trim(vol, 100000 * 4096, 4096)
      assert.equal(await g.getVolumeUsage(vol), 4096)
      assert.deepEqual(await g.readBlock(vol, 100000), new Uint8Array(4096))
      const details = await g.getVolumeUsageDetails(vol)
      assert.deepEqual(details, { allocatedBytes: 4096, allocatedBlocks: 1, liveBytes: 4096, snapshotBytes: 0, sizeBytes: 1024 ** 3 })
    })
  })

  describe('storage classes', () => {
    it('lists the built-ins and persists custom ones', async () => {
      const names = (await g.listStorageClasses()).map((c) => c.name)
      assert.deepEqual(names, ['fast-local-ssd', 'encrypted-storage'])
      const created = await g.createStorageClass({ name: 'ultra-fast-ssd', provisioner: 'galleonfs.io/nvme-ssd', parameters: { disk_type: 'nvme' }, reclaim_policy: 'Delete', mount_options: ['noatime'] })
      assert.equal(created.name, 'ultra-fast-ssd')
      assert.deepEqual(await g.getStorageClass('ultra-fast-ssd'), created)
      await assert.rejects(g.createStorageClass({ name: 'ultra-fast-ssd' }), { code: 'STORAGE_CLASS_EXISTS' })
      await assert.rejects(g.createStorageClass({ name: 'bad', reclaim_policy: 'Sometimes' }), { code: 'INVALID_ARGUMENT' })
      const vol = await g.createVolume({ name: 'v', sizeBytes: '1M', storageClass: 'ultra-fast-ssd' })
      assert.equal(vol.storageClass, 'ultra-fast-ssd')
    })
    it('refuses a class asking for more replicas than a node outside a cluster has', async () => {
      await g.createStorageClass({ name: 'triple', parameters: { replication: '3' } })
      await assert.rejects(g.createVolume({ name: 'v', sizeBytes: '1M', storageClass: 'triple' }), (err: GalleonError) => err.code === 'INVALID_ARGUMENT' && /3 replicas/.test(err.message) && /not in a cluster/.test(err.message))
      // An explicit replica count overrides the class.
      assert.equal((await g.createVolume({ name: 'v', sizeBytes: '1M', storageClass: 'triple', replicas: 1 })).replicas, 1)
    })
    it('deletes unused custom classes only', async () => {
      await g.createStorageClass({ name: 'temp' })
      await g.createVolume({ name: 'user', sizeBytes: '1M', storageClass: 'temp' })
      await assert.rejects(g.deleteStorageClass('temp'), { code: 'BUSY' })
      await assert.rejects(g.deleteStorageClass('fast-local-ssd'), { code: 'INVALID_ARGUMENT' })
      await g.deleteVolume('user')
      await g.deleteStorageClass('temp')
      await assert.rejects(g.getStorageClass('temp'), { code: 'STORAGE_CLASS_NOT_FOUND' })
    })
  })

  describe('block and byte I/O', () => {
    it('reads never-written blocks as zeros and round-trips blocks', async () => {
      const vol = await g.createVolume({ name: 'io', sizeBytes: '1M' })
      assert.deepEqual(await g.readBlock(vol, 7), new Uint8Array(4096))
      const data = pattern(7, 4096)
      await g.writeBlock(vol, 7, data, WriteConcern.WriteAcknowledged)
      assert.deepEqual(await g.readBlock(vol, 7), data)
      await g.writeBlock('io', 7, Buffer.from('Hello, GalleonFS!'))
      const block = await g.readBlock('io', 7)
      assert.equal(block.byteLength, 4096)
      assert.equal(Buffer.from(block.subarray(0, 17)).toString(), 'Hello, GalleonFS!')
      assert.ok(block.subarray(17).every((b) => b === 0), 'short block writes are zero-padded')
    })
    it('keeps what a Buffer held at call time, even when the write must wait or merge', async () => {
      const vol = await g.createVolume({ name: 'buffers', sizeBytes: '1M' })
      // Contended: the second write to block 0 waits for the first, and its Buffer changes meanwhile.
      const first = g.writeBlock(vol, 0, Buffer.alloc(4096, 1))
      const waiting = Buffer.alloc(4096, 2)
      const second = g.writeBlock(vol, 0, waiting)
      waiting.fill(9)
      // Unaligned: the range is merged into its blocks after the call returns.
      const partial = Buffer.alloc(100, 3)
      const third = g.write(vol, 4096 + 50, partial)
      partial.fill(9)
      await Promise.all([first, second, third])
      assert.deepEqual(await g.readBlock(vol, 0), new Uint8Array(4096).fill(2))
      const expected = new Uint8Array(4096)
      expected.fill(3, 50, 150)
      assert.deepEqual(await g.readBlock(vol, 1), expected)
    })
    it('does not let callers change stored data through buffers', async () => {
      const vol = await g.createVolume({ name: 'alias', sizeBytes: '1M' })
      const data = pattern(1, 4096)
      const write = g.writeBlock(vol, 0, data)
      data.fill(0xff)
      await write
      const read = await g.readBlock(vol, 0)
      assert.deepEqual(read, pattern(1, 4096))
      read.fill(1)
      assert.deepEqual(await g.readBlock(vol, 0), pattern(1, 4096))
    })
    it('reads and writes byte ranges across block boundaries with read-modify-write', async () => {
      const vol = await g.createVolume({ name: 'bytes', sizeBytes: '1M' })
      const model = new Uint8Array(MiB)
      const writes: Array<[number, number]> = [[0, 1], [4095, 2], [4000, 9000], [100, 4096], [8192, 4096], [MiB - 10, 10], [12345, 70000]]
      for (const [offset, length] of writes) {
        const data = pattern(offset, length)
        await g.write(vol, offset, data)
        model.set(data, offset)
      }
      assert.deepEqual(await g.read(vol, 0, MiB), model)
      for (const [offset, length] of [[1, 1], [4090, 20], [70000, 5000], [0, 0]] as const) {
        assert.deepEqual(await g.read(vol, offset, length), model.subarray(offset, offset + length))
      }
    })
    it('keeps concurrent overlapping partial writes linearizable per block', async () => {
      const vol = await g.createVolume({ name: 'race', sizeBytes: '1M' })
      // 64 writers each set a distinct byte of the same block: all must survive.
      await Promise.all(Array.from({ length: 64 }, async (_, i) => await g.write(vol, i * 3, Uint8Array.of(i + 1))))
      const block = await g.readBlock(vol, 0)
      for (let i = 0; i < 64; i++) assert.equal(block[i * 3], i + 1, `byte ${i * 3} lost`)
    })
    it('keeps full-block and partial writes to one block consistent', async () => {
      const vol = await g.createVolume({ name: 'mix', sizeBytes: '1M' })
      const ops: Array<Promise<void>> = []
      for (let i = 0; i < 20; i++) {
        ops.push(g.writeBlock(vol, 0, new Uint8Array(4096).fill(i)))
        ops.push(g.write(vol, 10, Uint8Array.of(200 + i)))
      }
      await Promise.all(ops)
      const block = await g.readBlock(vol, 0)
      // Operations apply in call order per block: the last full write is 19, then byte 10 = 219.
      assert.equal(block[10], 219)
      assert.ok(block.every((b, i) => i === 10 || b === 19))
    })
    it('validates I/O arguments and writes nothing on error', async () => {
      const vol = await g.createVolume({ name: 'val', sizeBytes: '64K' })
      await g.writeBlock(vol, 0, pattern(5, 4096))
      const cases: Array<[() => Promise<unknown>, string]> = [
        [async () => await g.writeBlock(vol, -1, pattern(1, 4096)), 'INVALID_ARGUMENT'],
        [async () => await g.writeBlock(vol, 1.5, pattern(1, 4096)), 'INVALID_ARGUMENT'],
        [async () => await g.writeBlock(vol, Number.NaN, pattern(1, 4096)), 'INVALID_ARGUMENT'],
        [async () => await g.writeBlock(vol, '0' as never, pattern(1, 4096)), 'INVALID_ARGUMENT'],
        [async () => await g.writeBlock(vol, 16, pattern(1, 4096)), 'OUT_OF_RANGE'],
        [async () => await g.writeBlock(vol, 0, pattern(1, 4097)), 'INVALID_ARGUMENT'],
        [async () => await g.writeBlock(vol, 0, 'text' as never), 'INVALID_ARGUMENT'],
        [async () => await g.writeBlock(vol, 0, [1, 2] as never), 'INVALID_ARGUMENT'],
        [async () => await g.writeBlock(vol, 0, pattern(1, 10), 'Whenever' as never), 'INVALID_ARGUMENT'],
        [async () => await g.readBlock(vol, 16), 'OUT_OF_RANGE'],
        [async () => await g.readBlock(vol, -2), 'INVALID_ARGUMENT'],
        [async () => await g.write(vol, 65536 - 10, pattern(1, 11)), 'OUT_OF_RANGE'],
        [async () => await g.write(vol, -1, pattern(1, 1)), 'INVALID_ARGUMENT'],
        [async () => await g.read(vol, 0, 65537), 'OUT_OF_RANGE'],
        [async () => await g.read(vol, 0, -1), 'INVALID_ARGUMENT'],
        [async () => await g.trim(vol, 65536, 1), 'OUT_OF_RANGE']
      ]
      for (const [call, code] of cases) await assert.rejects(call(), { code })
      assert.deepEqual(await g.readBlock(vol, 0), pattern(5, 4096))
      assert.equal(await g.getVolumeUsage(vol), 4096)
    })
    it('rejects replicated concerns on a single node with WRITE_CONCERN_UNSATISFIED, writing nothing', async () => {
      const vol = await g.createVolume({ name: 'repl', sizeBytes: '64K' })
      for (const concern of [WriteConcern.WriteReplicated, WriteConcern.WriteDistributed]) {
        await assert.rejects(g.writeBlock(vol, 1, pattern(1, 4096), concern), (err: GalleonError) => err.code === 'WRITE_CONCERN_UNSATISFIED' && /WriteDurable/.test(err.message))
        await assert.rejects(g.write(vol, 0, pattern(1, 9000), concern), { code: 'WRITE_CONCERN_UNSATISFIED' })
      }
      assert.equal(await g.getVolumeUsage(vol), 0)
    })
    it('refuses WriteDurable on the memory backend rather than pretend, and writes nothing', async () => {
      const vol = await g.createVolume({ name: 'volatile', sizeBytes: '64K' })
      await assert.rejects(g.writeBlock(vol, 0, pattern(1, 4096), WriteConcern.WriteDurable), (err: GalleonError) =>
        err.code === 'WRITE_CONCERN_UNSATISFIED' && /memory/.test(err.message) && /storagePath/.test(err.message))
      await assert.rejects(g.write(vol, 100, pattern(2, 10), WriteConcern.WriteDurable), { code: 'WRITE_CONCERN_UNSATISFIED' })
      assert.deepEqual(await g.readBlock(vol, 0), new Uint8Array(4096))
      assert.equal(await g.getVolumeUsage(vol), 0)
    })
    it('hands replicated writes to the replication hook after the journal append', async (t) => {
      const dir = await mkdtemp(join(tmpdir(), 'galleon-hook-'))
      t.after(async () => { await rm(dir, { recursive: true, force: true }) })
      // Replicated concerns include local durability, so this needs a durable store.
      const g = await GalleonFS.open({ storagePath: dir })
      t.after(async () => { await g.close() })
      const vol = await g.createVolume({ name: 'hooked', sizeBytes: '64K' })
      const seen: Array<{ lsn: number, ops: number, durable: boolean, concern: string }> = []
      const hook: ReplicationHook = {
        async afterAppend (entry, concern) {
          // The entry is already applied locally when the hook runs.
          seen.push({ lsn: entry.lsn, ops: entry.ops.length, durable: entry.durable, concern })
          if (concern === WriteConcern.WriteDistributed) throw new GalleonError('WRITE_CONCERN_UNSATISFIED', 'only one zone')
        }
      }
      g.setReplicationHook(hook)
      await g.writeBlock(vol, 0, pattern(1, 4096), WriteConcern.WriteReplicated)
      await g.write(vol, 4000, pattern(2, 200), WriteConcern.WriteReplicated)
      await assert.rejects(g.writeBlock(vol, 1, pattern(3, 4096), WriteConcern.WriteDistributed), { code: 'WRITE_CONCERN_UNSATISFIED' })
      assert.equal(seen.length, 3)
      assert.ok(seen[0]!.lsn < seen[1]!.lsn && seen[1]!.lsn < seen[2]!.lsn)
      assert.deepEqual(seen.map((s) => [s.ops, s.durable, s.concern]), [[1, true, 'WriteReplicated'], [2, true, 'WriteReplicated'], [1, true, 'WriteDistributed']])
      g.setReplicationHook(undefined)
    })
    it('group-commits concurrent durable writes into few syncs', async (t) => {
      const dir = await mkdtemp(join(tmpdir(), 'galleon-group-'))
      t.after(async () => { await rm(dir, { recursive: true, force: true }) })
      const store = new FileBlockStore({ location: join(dir, 'blocks') })
      const g = await GalleonFS.open({ metadata: new MemoryLevel() as never, blockStore: store })
      t.after(async () => { await g.close() })
      const vol = await g.createVolume({ name: 'group', sizeBytes: '1M' })
      const syncsBefore = store.syncCount
      const before = g.journalStats()
      await Promise.all(Array.from({ length: 64 }, async (_, i) => await g.writeBlock(vol, i, pattern(i, 4096), WriteConcern.WriteDurable)))
      const after = g.journalStats()
      assert.ok(after.syncs - before.syncs < 64, `expected shared syncs, got ${after.syncs - before.syncs} for 64 writes`)
      assert.ok(after.lastLsn - before.lastLsn >= 64)
      const syncs = store.syncCount - syncsBefore
      const stats = await g.getStorageStats()
      assert.equal(stats.backend, 'file')
      assert.equal(stats.syncs, store.syncCount, 'getStorageStats() reports the store\'s device syncs')
      assert.ok(stats.blocks >= 64 && stats.liveBytes >= 64 * 4096)
      assert.ok(syncs >= 1 && syncs < 32, `64 concurrent durable writes took ${syncs} fdatasync calls`)
      for (let i = 0; i < 64; i++) assert.deepEqual(await g.readBlock(vol, i), pattern(i, 4096))
    })
    it('serves multi-block reads from a block store without the optional getMany()', async () => {
      const inner = new MemoryBlockStore()
      // A plain object with every required method but getMany, as a hand-written JS driver might be.
      const plain: BlockStore = {
        name: 'plain',
        supports: inner.supports,
        get status () { return inner.status },
        open: async () => await inner.open(),
        close: async () => await inner.close(),
        get: async (address) => await inner.get(address),
        batch: async (ops, options) => await inner.batch(ops, options),
        sync: async () => await inner.sync(),
        addresses: (options) => inner.addresses(options),
        deleteVolume: async (volume) => await inner.deleteVolume(volume),
        stats: async () => await inner.stats()
      }
      const h = await GalleonFS.open({ metadata: new MemoryLevel() as never, blockStore: plain })
      try {
        const vol = await h.createVolume({ name: 'plain', sizeBytes: '1M' })
        const data = pattern(77, 5 * 4096)
        await h.write(vol, 4096, data)
        assert.deepEqual(await h.read(vol, 4096, data.byteLength), data)
        assert.deepEqual(await h.read(vol, 100, 3 * 4096), (() => { const e = new Uint8Array(3 * 4096); e.set(data.subarray(0, 3 * 4096 + 100 - 4096), 4096 - 100); return e })())
      } finally {
        await h.close()
      }
    })
    it('detects a corrupted block: CHECKSUM_MISMATCH, an event, and scrub reports it', async () => {
      const store = new MemoryBlockStore()
      const h = await GalleonFS.open({ metadata: new MemoryLevel() as never, blockStore: store })
      try {
        const vol = await h.createVolume({ name: 'c', sizeBytes: '64K' })
        for (let i = 0; i < 4; i++) await h.writeBlock(vol, i, pattern(i, 4096))
        const events: unknown[] = []
        const ioErrors: string[] = []
        h.on('checksum:mismatch', (event) => events.push(event))
        h.on('io:error', (event) => ioErrors.push(`${event.operation} ${event.code} ${event.volumeName}`))
        // Flip one bit of block 2 inside the store, behind the engine's back.
        const [address] = await collect(store.addresses(), (a) => a.index === 2)
        const value = (await store.get(address!))!
        value[100]! ^= 1
        await store.batch([{ type: 'put', address: address!, data: value }])
        await assert.rejects(h.readBlock(vol, 2), { code: 'CHECKSUM_MISMATCH' })
        await assert.rejects(h.read(vol, 8000, 200), { code: 'CHECKSUM_MISMATCH' })
        assert.deepEqual(await h.readBlock(vol, 1), pattern(1, 4096))
        const report = await h.scrub(vol)
        assert.equal(report.blocksChecked, 4)
        assert.deepEqual(report.badBlocks.map((b) => [b.index, b.code]), [[2, 'CHECKSUM_MISMATCH']])
        assert.ok(events.length >= 3)
        assert.equal((events[0] as { blockIndex: number }).blockIndex, 2)
        assert.equal((events[0] as { volumeName: string }).volumeName, 'c')
        assert.equal((await h.getVolumeMetrics(vol)).checksumErrors >= 3, true)
        assert.deepEqual(ioErrors, ['read CHECKSUM_MISMATCH c', 'read CHECKSUM_MISMATCH c'])
      } finally {
        await h.close()
      }
    })
  })

  describe('events, metrics and lifecycle', () => {
    it('emits volume lifecycle events', async () => {
      const seen: string[] = []
      g.on('volume:created', (v) => seen.push(`created ${v.name}`))
      g.on('volume:expanded', (v, previous) => seen.push(`expanded ${v.name} ${previous}->${v.sizeBytes}`))
      g.on('volume:deleted', (v) => seen.push(`deleted ${v.name}`))
      await g.createVolume({ name: 'ev', sizeBytes: 4096 })
      await g.expandVolume('ev', 8192)
      await g.deleteVolume('ev')
      assert.deepEqual(seen, ['created ev', 'expanded ev 4096->8192', 'deleted ev'])
    })
    it('counts operations and bytes in volume metrics', async () => {
      const vol = await g.createVolume({ name: 'm', sizeBytes: '1M' })
      for (let i = 0; i < 10; i++) await g.writeBlock(vol, i, pattern(i, 4096))
      for (let i = 0; i < 5; i++) await g.readBlock(vol, i)
      await g.read(vol, 0, 8192)
      const metrics = await g.getVolumeMetrics(vol)
      assert.equal(metrics.volumeId, vol.id)
      assert.equal(metrics.volumeName, 'm')
      assert.equal(metrics.writeOps, 10)
      assert.equal(metrics.writeBytes, 40960)
      assert.equal(metrics.readOps, 6)
      assert.equal(metrics.readBytes, 5 * 4096 + 8192)
      assert.ok(metrics.iops > 0)
      assert.ok(metrics.latencyP99Ms >= metrics.latencyP50Ms)
      assert.equal(metrics.queueDepth, 0)
      // The engine cache is off by default: no hits, no misses counted.
      await g.readBlock(vol, 0)
      assert.equal((await g.getVolumeMetrics(vol)).cacheHitRate, 0)
    })
    it('with cacheBlocks, repeated reads hit the cache and return copies the caller may change', async () => {
      const h = await GalleonFS.open({ inMemory: true, cacheBlocks: 16 })
      try {
        const vol = await h.createVolume({ name: 'cached', sizeBytes: '1M' })
        await h.writeBlock(vol, 3, pattern(3, 4096))
        const first = await h.readBlock(vol, 3)
        first.fill(0)
        assert.deepEqual(await h.readBlock(vol, 3), pattern(3, 4096), 'a cached block is not changed through a returned buffer')
        assert.deepEqual(await h.read(vol, 3 * 4096 + 10, 100), pattern(3, 4096).subarray(10, 110))
        const metrics = await h.getVolumeMetrics(vol)
        assert.ok(metrics.cacheHits >= 2, `expected cache hits, got ${metrics.cacheHits}`)
        assert.ok(metrics.cacheHitRate > 0.5)
        await h.writeBlock(vol, 3, pattern(4, 4096))
        assert.deepEqual(await h.readBlock(vol, 3), pattern(4, 4096), 'a new write is never shadowed by the cache')
      } finally {
        await h.close()
      }
    })
    it('refuses calls after close with NOT_OPEN; close is idempotent', async () => {
      const h = await GalleonFS.open({ inMemory: true })
      await h.createVolume({ name: 'v', sizeBytes: 4096 })
      await Promise.all([h.close(), h.close()])
      await assert.rejects(h.listVolumes(), { code: 'NOT_OPEN' })
      await assert.rejects(h.readBlock('v', 0), { code: 'NOT_OPEN' })
      assert.throws(() => h.journalStats(), { code: 'NOT_OPEN' })
      await assert.rejects(h.getStorageStats(), { code: 'NOT_OPEN' })
    })
    it('says how to give a backup target when none is set', async () => {
      const vol = await g.createVolume({ name: 'later', sizeBytes: 4096 })
      await assert.rejects(g.createBackup(vol, {}), { code: 'INVALID_ARGUMENT', message: /no backup target/ })
    })
  })
})

describe('GalleonFS.open options', () => {
  const bad: Array<[string, unknown]> = [
    ['nothing', undefined],
    ['empty object', {}],
    ['both storagePath and inMemory', { storagePath: '/tmp/x', inMemory: true }],
    ['empty storagePath', { storagePath: '' }],
    ['unknown backend', { inMemory: true, backend: 'tape' }],
    ['memory blocks with on-disk volume records', { storagePath: '/tmp/x', backend: 'memory' }],
    ['negative metrics window', { inMemory: true, metricsWindowSeconds: -1 }],
    ['metrics window of a day', { inMemory: true, metricsWindowSeconds: 86_400 }],
    ['metrics window not a number', { inMemory: true, metricsWindowSeconds: '10' }],
    ['block size not a power of two', { inMemory: true, blockSize: 3000 }],
    ['block size too small', { inMemory: true, blockSize: 256 }],
    ['negative cache', { inMemory: true, cacheBlocks: -1 }],
    ['backend and blockStore together', { inMemory: true, backend: 'memory', blockStore: new MemoryBlockStore() }]
  ]
  for (const [what, options] of bad) {
    it(`refuses ${what} with INVALID_ARGUMENT`, async () => {
      await assert.rejects(GalleonFS.open(options as never), { code: 'INVALID_ARGUMENT' })
    })
  }
  it('honours a custom block size', async () => {
    const g = await GalleonFS.open({ inMemory: true, blockSize: 16384 })
    try {
      const vol = await g.createVolume({ name: 'big', sizeBytes: '1M' })
      assert.equal(vol.blockSize, 16384)
      assert.equal((await g.readBlock(vol, 0)).byteLength, 16384)
      await assert.rejects(g.createVolume({ name: 'odd', sizeBytes: 8192 }), { code: 'INVALID_ARGUMENT' })
    } finally {
      await g.close()
    }
  })
})

for (const backend of ['file', 'level'] as const) {
  describe(`GalleonFS on disk (${backend} backend)`, () => {
    let dir: string
    beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), `galleon-${backend}-`)) })
    afterEach(async () => { await rm(dir, { recursive: true, force: true }) })

    it('a scrub lets other work run while it goes, and a deletion of the volume ends it without reporting damage', async () => {
      const g = await GalleonFS.open({ storagePath: dir, backend })
      try {
        const alarms: string[] = []
        g.on('checksum:mismatch', (event) => alarms.push(event.reason))
        for (const name of ['scrubbed', 'doomed']) {
          await g.createVolume({ name, sizeBytes: '32M' })
          await g.write(name, 0, pattern(7, 32 << 20))
        }
        await g.flush()
        // Turns of the event loop while the scrub runs (none happened when page-cached reads
        // resolved without one, on the file store).
        let turns = 0
        let scrubbing = true
        const spin = (): void => { if (scrubbing) { turns++; setImmediate(spin) } }
        setImmediate(spin)
        const report = await g.scrub('scrubbed')
        scrubbing = false
        assert.equal(report.badBlocks.length, 0)
        assert.ok(turns > 1, `the event loop turned ${turns} times during a scrub of 8192 blocks`)

        const scrub = g.scrub('doomed').then((result) => `scrubbed ${result.badBlocks.length} bad`, (err: { code?: string }) => `error:${err.code ?? String(err)}`)
        await new Promise((resolve) => setTimeout(resolve, 5))
        await g.deleteVolume('doomed')
        assert.match(await scrub, /^(scrubbed 0 bad|error:VOLUME_NOT_FOUND)$/)
        assert.deepEqual(alarms, [])
        assert.equal((await g.getVolumeMetrics('scrubbed')).checksumErrors, 0)
      } finally {
        await g.close()
      }
    })

    it('returns plain Uint8Array copies that callers may change, with and without the read cache', async () => {
      for (const cacheBlocks of [0, 64]) {
        const g = await GalleonFS.open({ storagePath: dir, backend, cacheBlocks })
        try {
          const vol = await g.createVolume({ name: `copies-${cacheBlocks}`, sizeBytes: '1M' })
          await g.write(vol, 0, pattern(cacheBlocks, 3 * 4096))
          for (let round = 0; round < 2; round++) {
            const block = await g.readBlock(vol, 1)
            assert.equal(Object.getPrototypeOf(block), Uint8Array.prototype, 'a plain Uint8Array')
            block.fill(0xff)
            const range = await g.read(vol, 100, 2 * 4096)
            assert.equal(Object.getPrototypeOf(range), Uint8Array.prototype)
            range.fill(0xee)
          }
          // A partial write reads, patches and rewrites the edge block: the stored old version and any
          // cached copy of it must not change under readers.
          await g.write(vol, 4096 + 10, Uint8Array.of(1, 2, 3))
          const expected = pattern(cacheBlocks, 3 * 4096)
          expected.set([1, 2, 3], 4096 + 10)
          assert.deepEqual(await g.read(vol, 0, 3 * 4096), expected)
          assert.deepEqual(await g.readBlock(vol, 2), expected.subarray(2 * 4096))
        } finally {
          await g.close()
        }
      }
    })

    it('reopening sees every volume, class and acknowledged write; ephemeral volumes are gone', async () => {
      let g = await GalleonFS.open({ storagePath: dir, backend })
      const vol = await g.createVolume({ name: 'keep', sizeBytes: '4M', labels: { tier: 'gold' } })
      await g.createVolume({ name: 'scratch', sizeBytes: '1M', type: VolumeType.Ephemeral })
      await g.createStorageClass({ name: 'custom', reclaim_policy: 'Retain' })
      const model = new Map<number, Uint8Array>()
      await Promise.all(Array.from({ length: 200 }, async (_, i) => {
        const index = (i * 37) % 1024
        const data = pattern(i, 4096)
        model.set(index, data)
        await g.writeBlock(vol, index, data, i % 2 === 0 ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged)
      }))
      await g.write(vol, 5000, pattern(9999, 10000))
      const expected = await g.read(vol, 0, 4 * MiB)
      await g.trim(vol, 37 * 4096, 4096)
      expected.fill(0, 37 * 4096, 38 * 4096)
      const usage = await g.getVolumeUsage(vol)
      await g.close()

      g = await GalleonFS.open({ storagePath: dir, backend })
      try {
        assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['keep'])
        assert.deepEqual((await g.getVolume('keep')).labels, { tier: 'gold' })
        assert.equal((await g.getStorageClass('custom')).reclaimPolicy, 'Retain')
        assert.deepEqual(await g.read('keep', 0, 4 * MiB), expected)
        assert.equal(await g.getVolumeUsage('keep'), usage)
        assert.equal((await g.scrub('keep')).badBlocks.length, 0)
        assert.equal(g.backend, backend)
      } finally {
        await g.close()
      }
    })

    // LevelDB checks its own log and tables and serves recent writes from memory, so a flipped byte
    // there is LevelDB's to report; the file store's records are what this test damages.
    it('reports damage found on disk as CHECKSUM_MISMATCH with a checksum:mismatch event', { skip: backend !== 'file' && 'the file backend\'s on-disk records' }, async () => {
      const g = await GalleonFS.open({ storagePath: dir, backend, cacheBlocks: 0 })
      try {
        const vol = await g.createVolume({ name: 'rot', sizeBytes: '1M' })
        const victim = pattern(424242, 4096)
        await g.writeBlock(vol, 3, victim, WriteConcern.WriteDurable)
        await g.writeBlock(vol, 4, pattern(5, 4096), WriteConcern.WriteDurable)
        const events: Array<{ blockIndex: number }> = []
        g.on('checksum:mismatch', (event) => events.push(event))
        // Flip one byte of block 3's payload in whichever file holds it, behind the library's back.
        const needle = Buffer.from(victim.subarray(0, 64))
        let flipped = false
        for await (const path of walk(dir)) {
          const bytes = await readFile(path)
          const at = bytes.indexOf(needle)
          if (at < 0) continue
          const handle = await open(path, 'r+')
          await handle.write(Uint8Array.of(bytes[at + 10]! ^ 0x40), 0, 1, at + 10)
          await handle.close()
          flipped = true
        }
        assert.ok(flipped, 'found the block on disk')
        await assert.rejects(g.readBlock(vol, 3), { code: 'CHECKSUM_MISMATCH' })
        assert.deepEqual(await g.readBlock(vol, 4), pattern(5, 4096), 'other blocks still read')
        assert.ok(events.length >= 1 && events[0]!.blockIndex === 3, 'a checksum:mismatch event names the block')
        const report = await g.scrub(vol)
        assert.deepEqual(report.badBlocks.map((b) => [b.index, b.code]), [[3, 'CHECKSUM_MISMATCH']])
      } finally {
        await g.close()
      }
    })
    it('refuses a second instance on the same storage path with BUSY', async () => {
      const g = await GalleonFS.open({ storagePath: dir, backend })
      try {
        await assert.rejects(GalleonFS.open({ storagePath: dir, backend }), { code: 'BUSY' })
      } finally {
        await g.close()
      }
    })
    it('refuses reopening with another block size', async () => {
      const g = await GalleonFS.open({ storagePath: dir, backend, blockSize: 8192 })
      await g.close()
      await assert.rejects(GalleonFS.open({ storagePath: dir, backend, blockSize: 4096 }), { code: 'INVALID_ARGUMENT' })
      const again = await GalleonFS.open({ storagePath: dir, backend })
      assert.equal(again.blockSize, 8192)
      await again.close()
    })
    it('frees a deleted volume\'s blocks in the store', async () => {
      const g = await GalleonFS.open({ storagePath: dir, backend })
      try {
        const vol = await g.createVolume({ name: 'gone', sizeBytes: '1M' })
        for (let i = 0; i < 32; i++) await g.writeBlock(vol, i, pattern(i, 4096))
        await g.deleteVolume(vol)
        assert.match(await g.metricsText(), /galleonfs_store_blocks\{backend="[a-z]+"\} 0\b/)
      } finally {
        await g.close()
      }
    })
  })
}

async function collect<T> (iterable: AsyncIterable<T>, keep: (item: T) => boolean): Promise<T[]> {
  const out: T[] = []
  for await (const item of iterable) if (keep(item)) out.push(item)
  return out
}

/** Every file under `root`, depth first. */
async function * walk (root: string): AsyncGenerator<string> {
  for (const entry of await readdir(root, { withFileTypes: true })) {
    const path = join(root, entry.name)
    if (entry.isDirectory()) yield * walk(path)
    else if (entry.isFile()) yield path
  }
}
