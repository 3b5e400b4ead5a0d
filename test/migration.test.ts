// Live migration between storage classes and pools: under a write load, encryption on and off,
// snapshots, pools, cancel, bad input, persistence across reopen.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, GalleonError, type MigrationProgressEvent } from '../src/index.js'
import { recording } from './support/recording-store.js'
import { FileBlockStore } from '../backends/file/index.js'
import { DirectoryBackupTarget } from '../backends/directory/index.js'
import { decodeManifest, encodeManifest, type Extent } from '../src/backup/format.js'
import { randomUUID } from 'node:crypto'
import { rejectsWithCode } from './support/assertions.js'
import { observed } from './support/observed.js'

let root = ''
let counter = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-migration-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const fresh = (): string => join(root, `t${++counter}`)

const BLOCK = 4096
const SECRET = { name: 'secret-local', parameters: { encryption: 'true', replication: '1' } }

const code = rejectsWithCode

/** A block whose bytes say which writer wrote it, in which sequence, at which block. */
function stamp (writer: number, seq: number, index: number, tag = 'GALLEON-MIGRATION-MARKER'): Uint8Array {
  const text = `${tag}|w${writer}|s${seq}|b${index}|`
  return new Uint8Array(Buffer.from(text.repeat(Math.ceil(BLOCK / text.length)).slice(0, BLOCK)))
}

function pattern (seed: number, index: number): Uint8Array {
  const out = new Uint8Array(BLOCK)
  for (let i = 0; i < BLOCK; i++) out[i] = (seed * 31 + index * 7 + i) & 0xff
  return out
}


const contains = (data: Uint8Array, needle: string): boolean => Buffer.from(data).includes(Buffer.from(needle))

/**
 * Writers each owning a set of blocks, writing stamped blocks in sequence; `acked` keeps, per
 * block, the last sequence whose write resolved. After the load stops, every block must read as
 * the stamp of its last acknowledged write (the register check).
 */
function writeLoad (g: GalleonFS, volume: string, writers: number, blocks: number): { stop: () => Promise<void>, acked: Map<number, { writer: number, seq: number }>, count: () => number } {
  const acked = new Map<number, { writer: number, seq: number }>()
  let running = true
  let writes = 0
  const loops = Array.from({ length: writers }, async (_, writer) => {
    for (let seq = 1; running; seq++) {
      const index = writer + writers * ((seq * 7919) % Math.floor(blocks / writers))
      await g.writeBlock(volume, index, stamp(writer, seq, index))
      acked.set(index, { writer, seq })
      writes++
      if (seq % 16 === 0) await new Promise((resolve) => setImmediate(resolve))
    }
  })
  return {
    acked,
    count: () => writes,
    stop: async () => { running = false; await Promise.all(loops) }
  }
}

async function checkRegisters (g: GalleonFS, volume: string, acked: Map<number, { writer: number, seq: number }>): Promise<void> {
  for (const [index, { writer, seq }] of acked) {
    assert.deepEqual(await g.readBlock(volume, index), stamp(writer, seq, index), `block ${index}: last acknowledged write was writer ${writer} seq ${seq}`)
  }
}

describe('live migration', () => {
  it('moves a volume to an encrypting class under a concurrent write load: every acknowledged write reads back, nothing in the clear reaches the new storage', async () => {
    const { store, puts } = recording(new FileBlockStore({ location: join(fresh(), 'blocks') }))
    const g = await GalleonFS.open({ inMemory: true, blockStore: store })
    try {
      await g.createStorageClass(SECRET)
      const vol = await g.createVolume({ name: 'data', sizeBytes: 4 * 1024 * 1024 })
      for (let i = 0; i < 512; i++) await g.writeBlock('data', i, stamp(99, 0, i))
      const before = new Set(puts.map((p) => p.address.volume))
      const load = writeLoad(g, 'data', 4, 1024)
      const events: MigrationProgressEvent[] = []
      let migrated = 0
      g.on('volume:migrated', () => { migrated++ })
      const moved = await g.migrateVolume('data', { storageClass: 'secret-local' }, { onProgress: (e) => events.push(e) })
      await new Promise((resolve) => setTimeout(resolve, 20))
      await load.stop()
      assert.equal(moved.id, vol.id)
      assert.equal(moved.name, 'data')
      assert.equal(moved.storageClass, 'secret-local')
      assert.equal(moved.encrypted, true)
      assert.equal(migrated, 1)
      assert.ok(load.acked.size > 0)
      await checkRegisters(g, 'data', load.acked)
      for (let i = 0; i < 1024; i += 2) if (!load.acked.has(i) && i < 512) assert.deepEqual(await g.readBlock('data', i), stamp(99, 0, i))
      assert.deepEqual(events.map((e) => e.phase).filter((p, i, all) => all.indexOf(p) === i), ['copy', 'switchover', 'done'])
      const last = events[events.length - 1] as MigrationProgressEvent
      assert.equal(last.blocksDone, last.blocksTotal)
      assert.equal((await g.getVolumeEncryption('data')).encrypted, true)
      // The destination's storage id is the one that appeared during the migration.
      const newIds = new Set(puts.map((p) => p.address.volume).filter((id) => !before.has(id)))
      assert.equal(newIds.size, 1)
      const destination = puts.filter((p) => newIds.has(p.address.volume))
      assert.ok(destination.length >= 512)
      assert.ok(puts.some((p) => before.has(p.address.volume) && contains(p.data, 'GALLEON-MIGRATION-MARKER')), 'control: the plain source held the marker')
      assert.equal(destination.filter((p) => contains(p.data, 'GALLEON-MIGRATION-MARKER')).length, 0)
      // Writes after the switch-over are encrypted too.
      const count = puts.length
      await g.writeBlock('data', 3, stamp(7, 7, 3))
      assert.ok(puts.slice(count).every((p) => !contains(p.data, 'GALLEON-MIGRATION-MARKER')))
      assert.deepEqual(await g.readBlock('data', 3), stamp(7, 7, 3))
    } finally {
      await g.close()
    }
  })

  it('moves an encrypted volume to a plain class with its snapshots, which read exactly as before (trims and expansions included)', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createStorageClass(SECRET)
      await g.createVolume({ name: 'v', sizeBytes: 64 * BLOCK, storageClass: 'secret-local' })
      for (let i = 0; i < 40; i++) await g.writeBlock('v', i, pattern(1, i))
      await g.createSnapshot('v', 's1')
      for (let i = 10; i < 20; i++) await g.writeBlock('v', i, pattern(2, i))
      await g.trim('v', 30 * BLOCK, 5 * BLOCK)
      await g.createSnapshot('v', 's2')
      await g.createSnapshot('v', 's2b')
      await g.expandVolume('v', 80 * BLOCK)
      await g.writeBlock('v', 70, pattern(3, 70))
      await g.trim('v', 0, 2 * BLOCK)
      await g.createSnapshot('v', 's3')
      await g.writeBlock('v', 0, pattern(4, 0))
      const views = ['s1', 's2', 's2b', 's3'] as const
      const expected = new Map<string, Uint8Array>()
      for (const s of views) { const snap = await g.getSnapshot('v', s); expected.set(s, await g.read({ volume: 'v', snapshot: s }, 0, snap.sizeBytes)) }
      const live = await g.read('v', 0, 80 * BLOCK)
      const changedBefore = await g.listChangedBlocks('v', { from: 's1', to: 's2' })
      const moved = await g.migrateVolume('v', { storageClass: 'fast-local-ssd' })
      assert.equal(moved.encrypted, false)
      assert.equal((await g.getVolumeEncryption('v')).encrypted, false)
      for (const s of views) assert.deepEqual(await g.read({ volume: 'v', snapshot: s }, 0, expected.get(s)?.byteLength ?? 0), expected.get(s), `snapshot ${s}`)
      assert.deepEqual(await g.read('v', 0, 80 * BLOCK), live)
      assert.deepEqual(await g.listChangedBlocks('v', { from: 's1', to: 's2' }), changedBefore)
      assert.deepEqual((await g.getAllocation({ volume: 'v', snapshot: 's2' }, 30 * BLOCK, 5 * BLOCK)).map((e) => e.allocated), [false])
      // Snapshots keep working after the move: restore, clone, delete.
      await g.restoreSnapshot('v', 's1')
      assert.deepEqual(await g.read('v', 0, 64 * BLOCK), expected.get('s1'))
      const clone = await g.cloneVolume({ volume: 'v', snapshot: 's2' }, 'c')
      assert.deepEqual(await g.read(clone.id, 0, 64 * BLOCK), expected.get('s2'))
      await g.deleteSnapshot('v', 's3')
    } finally {
      await g.close()
    }
  })

  it('moves a volume between pools, checking the target pool has room before anything is copied', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createPool({ name: 'small', capacityBytes: 64 * BLOCK })
      await g.createPool({ name: 'big', capacityBytes: 1024 * BLOCK })
      await g.createVolume({ name: 'v', sizeBytes: 128 * BLOCK, pool: 'big' })
      await g.writeBlock('v', 5, pattern(5, 5))
      let progress = 0
      g.on('volume:migration-progress', () => { progress++ })
      await assert.rejects(g.migrateVolume('v', { pool: 'small' }), code('NO_SPACE'))
      assert.equal(progress, 0)
      assert.equal((await g.getVolume('v')).pool, 'big')
      await g.updatePool('small', { capacityBytes: 256 * BLOCK })
      const moved = await g.migrateVolume('v', { pool: 'small' })
      assert.equal(moved.pool, 'small')
      assert.equal((await g.getPool('small')).provisionedBytes, 128 * BLOCK)
      assert.equal((await g.getPool('big')).provisionedBytes, 0)
      assert.deepEqual(await g.readBlock('v', 5), pattern(5, 5))
      await assert.rejects(g.migrateVolume('v', { pool: 'small' }), code('INVALID_ARGUMENT'))
    } finally {
      await g.close()
    }
  })

  it('cancels through an AbortSignal: rejects with CANCELLED, the volume stays where it was, unchanged and usable', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createStorageClass(SECRET)
      await g.createVolume({ name: 'v', sizeBytes: 8192 * BLOCK })
      for (let i = 0; i < 4096; i += 64) await g.write('v', i * BLOCK, new Uint8Array(64 * BLOCK).fill(i & 0xff))
      await g.createSnapshot('v', 'keep')
      const controller = new AbortController()
      const migration = g.migrateVolume('v', { storageClass: 'secret-local' }, {
        signal: controller.signal,
        onProgress: (e) => { if (e.blocksDone > 0) controller.abort() }
      })
      await assert.rejects(migration, code('CANCELLED'))
      const v = await g.getVolume('v')
      assert.equal(v.storageClass, 'fast-local-ssd')
      assert.equal(v.encrypted, false)
      assert.deepEqual(await g.read('v', 64 * BLOCK, BLOCK), new Uint8Array(BLOCK).fill(64))
      assert.deepEqual(await g.read({ volume: 'v', snapshot: 'keep' }, 128 * BLOCK, BLOCK), new Uint8Array(BLOCK).fill(128))
      assert.equal(await g.getVolumeUsage('v'), 4096 * BLOCK)
      // An already aborted signal stops it before anything starts.
      await assert.rejects(g.migrateVolume('v', { storageClass: 'secret-local' }, { signal: AbortSignal.abort() }), code('CANCELLED'))
      // And a new migration runs fine afterwards.
      assert.equal((await g.migrateVolume('v', { storageClass: 'secret-local' })).encrypted, true)
      assert.deepEqual(await g.read('v', 64 * BLOCK, BLOCK), new Uint8Array(BLOCK).fill(64))
    } finally {
      await g.close()
    }
  })

  it('refuses bad input and unsupported moves with stable codes, changing nothing', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createStorageClass(SECRET)
      await g.createStorageClass({ name: 'triple', parameters: { replication: '3' } })
      await g.createVolume({ name: 'v', sizeBytes: 16 * BLOCK })
      await g.writeBlock('v', 1, pattern(1, 1))
      await assert.rejects(g.migrateVolume('nope', { storageClass: 'secret-local' }), code('VOLUME_NOT_FOUND'))
      await assert.rejects(g.migrateVolume('v', { storageClass: 'no-such-class' }), code('STORAGE_CLASS_NOT_FOUND'))
      await assert.rejects(g.migrateVolume('v', { pool: 'no-such-pool' }), code('POOL_NOT_FOUND'))
      await assert.rejects(g.migrateVolume('v', { storageClass: 'fast-local-ssd' }), code('INVALID_ARGUMENT'))
      await assert.rejects(g.migrateVolume('v', {}), code('INVALID_ARGUMENT'))
      await assert.rejects(g.migrateVolume('v', null as never), code('INVALID_ARGUMENT'))
      await assert.rejects(g.migrateVolume('v', { storageClass: 42 } as never), code('INVALID_ARGUMENT'))
      await assert.rejects(g.migrateVolume('v', { speed: 'fast' } as never), code('INVALID_ARGUMENT'))
      await assert.rejects(g.migrateVolume('v', { storageClass: 'secret-local' }, { signal: 'stop' } as never), code('INVALID_ARGUMENT'))
      await assert.rejects(g.migrateVolume('v', { node: 'node-2' }), code('INVALID_ARGUMENT'), 'moving to a node needs a cluster')
      await assert.rejects(g.migrateVolume('v', { node: 'node-2', storageClass: 'secret-local' }), code('INVALID_ARGUMENT'), 'a node and a class: the node is checked first')
      await assert.rejects(g.migrateVolume('v', { node: 7 } as never), code('INVALID_ARGUMENT'))
      // Classes with copies on other nodes need a cluster (replication.test.ts migrates into one).
      await assert.rejects(g.migrateVolume('v', { storageClass: 'triple' }), code('INVALID_ARGUMENT'))
      await assert.rejects(g.migrateVolume('v', { storageClass: 'encrypted-storage' }), code('INVALID_ARGUMENT'))
      await assert.rejects(g.migrateVolume({ volume: 'v', snapshot: 'x' } as never, { storageClass: 'secret-local' }), code('INVALID_ARGUMENT'))
      // A volume clones read from: BUSY.
      await g.cloneVolume('v', 'c')
      await assert.rejects(g.migrateVolume('v', { storageClass: 'secret-local' }), code('BUSY'))
      // Two at once: the second is BUSY.
      await g.createVolume({ name: 'w', sizeBytes: 4096 * BLOCK })
      for (let i = 0; i < 4096; i += 256) await g.write('w', i * BLOCK, new Uint8Array(256 * BLOCK).fill(1))
      const first = g.migrateVolume('w', { storageClass: 'secret-local' })
      await assert.rejects(g.migrateVolume('w', { storageClass: 'secret-local' }), code('BUSY'))
      await first
      const v = await g.getVolume('v')
      assert.equal(v.storageClass, 'fast-local-ssd')
      assert.deepEqual(await g.readBlock('v', 1), pattern(1, 1))
      // The clone itself (it reads through its source) moves, and gets its own copy of everything.
      const moved = await g.migrateVolume('c', { storageClass: 'secret-local' })
      assert.equal(moved.source, undefined)
      assert.deepEqual(await g.readBlock('c', 1), pattern(1, 1))
      await g.deleteVolume('v')
      assert.deepEqual(await g.readBlock('c', 1), pattern(1, 1))
    } finally {
      await g.close()
    }
  })

  it('waits snapshot operations out, and a deletion of the volume cancels its migration', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createStorageClass(SECRET)
      await g.createVolume({ name: 'v', sizeBytes: 4096 * BLOCK })
      for (let i = 0; i < 4096; i += 256) await g.write('v', i * BLOCK, new Uint8Array(256 * BLOCK).fill(2))
      const migration = g.migrateVolume('v', { storageClass: 'secret-local' })
      const snapshot = g.createSnapshot('v', 'during')
      await migration
      const taken = await snapshot
      assert.deepEqual(await g.read(taken, 0, BLOCK), new Uint8Array(BLOCK).fill(2))
      // Observed at once: it may be cancelled while deleteVolume is still awaited.
      const second = observed(g.migrateVolume('v', { storageClass: 'fast-local-ssd' }))
      await g.deleteVolume('v', { force: true })
      await assert.rejects(second, code('CANCELLED'))
      await assert.rejects(g.getVolume('v'), code('VOLUME_NOT_FOUND'))
    } finally {
      await g.close()
    }
  })

  it('persists across close and reopen on a real storage path, with snapshots and keys', async () => {
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir })
    try {
      await g.createStorageClass(SECRET)
      await g.createVolume({ name: 'v', sizeBytes: 64 * BLOCK })
      for (let i = 0; i < 32; i++) await g.writeBlock('v', i, pattern(1, i))
      await g.createSnapshot('v', 'old')
      for (let i = 0; i < 8; i++) await g.writeBlock('v', i, pattern(2, i))
      await g.migrateVolume('v', { storageClass: 'secret-local' })
      await g.writeBlock('v', 40, pattern(3, 40))
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir })
    try {
      const v = await g.getVolume('v')
      assert.equal(v.storageClass, 'secret-local')
      assert.equal(v.encrypted, true)
      for (let i = 0; i < 32; i++) assert.deepEqual(await g.readBlock({ volume: 'v', snapshot: 'old' }, i), pattern(1, i))
      for (let i = 0; i < 8; i++) assert.deepEqual(await g.readBlock('v', i), pattern(2, i))
      assert.deepEqual(await g.readBlock('v', 40), pattern(3, 40))
      assert.equal((await g.scrub('v')).badBlocks.length, 0)
      // Back to plain, and once more across a reopen.
      await g.migrateVolume('v', { storageClass: 'fast-local-ssd' })
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir })
    try {
      assert.equal((await g.getVolume('v')).encrypted, false)
      assert.deepEqual(await g.readBlock('v', 40), pattern(3, 40))
      assert.deepEqual(await g.readBlock({ volume: 'v', snapshot: 'old' }, 9), pattern(1, 9))
    } finally {
      await g.close()
    }
  })

  it('takes a full backup after a move between a plain and an encrypting class, and restores a chain that spans one', async () => {
    const dir = fresh()
    const targetDir = join(dir, 'backups')
    const g = await GalleonFS.open({ storagePath: join(dir, 'store'), backupTarget: targetDir })
    try {
      await g.createStorageClass(SECRET)
      for (const [from, to] of [['fast-local-ssd', 'secret-local'], ['secret-local', 'fast-local-ssd']] as const) {
        const name = `v-${from}`
        await g.createVolume({ name, sizeBytes: 16 * BLOCK, storageClass: from, replicas: 1 })
        await g.writeBlock(name, 0, pattern(1, 0))
        const first = await g.createBackup(name, { strategy: 'full' })
        assert.equal(first.encrypted, from === 'secret-local')
        await g.migrateVolume(name, { storageClass: to })
        await g.writeBlock(name, 1, pattern(2, 1))
        // The base is sealed the other way: this incremental is taken as a full, sealed as the volume now is.
        const second = await g.createBackup(name, { strategy: 'incremental' })
        assert.equal(second.strategy, 'full')
        assert.equal(second.baseId, null)
        assert.equal(second.encrypted, to === 'secret-local')
        const later = await g.createBackup(name, { strategy: 'incremental' })
        assert.equal(later.strategy, 'incremental')
        assert.equal(later.baseId, second.id)
        const restored = await g.restoreBackup(second.id, { name: `r-${from}` })
        assert.deepEqual(await g.readBlock(restored, 0), pattern(1, 0))
        assert.deepEqual(await g.readBlock(restored, 1), pattern(2, 1))

        // A chain written before bases had to match (a plain incremental over an encrypted base):
        // each chunk opens with the keys of the backup that stored it.
        const target = new DirectoryBackupTarget({ path: targetDir })
        await target.open()
        const full = decodeManifest(second.id, await target.getManifest(second.id) as Uint8Array)
        const extents: Extent[] = []
        for (const [index, count, chunk, offset] of full.extents) {
          for (let i = 0; i < count; i++) if (index + i !== 0) extents.push([index + i, 1, chunk, chunk === null ? 0 : offset + i])
        }
        const id = randomUUID()
        await target.putManifest(id, encodeManifest({ ...full, id, strategy: 'incremental', base: first.id, extents }))
        await target.close()
        if (full.encryption !== undefined) {
          // Made by hand, an encrypted manifest has no tag under the volume's backup key (as one
          // written before manifests were authenticated): refused, not restored.
          const verified = await g.verifyBackup(id)
          assert.deepEqual(verified.problems.map((p) => [p.backupId, p.code]), [[id, 'DECRYPTION_FAILED']], JSON.stringify(verified))
          await assert.rejects(g.restoreBackup(id, { name: `m-${from}` }), (err: { code?: string }) => err.code === 'DECRYPTION_FAILED')
          continue
        }
        assert.equal((await g.verifyBackup(id)).ok, true)
        const mixed = await g.restoreBackup(id, { name: `m-${from}` })
        assert.deepEqual(await g.readBlock(mixed, 0), pattern(1, 0), 'block 0 comes from the base, sealed the other way')
        assert.deepEqual(await g.readBlock(mixed, 1), pattern(2, 1))
        assert.deepEqual(await g.readBlock(mixed, 2), new Uint8Array(BLOCK))
      }
    } finally {
      await g.close()
    }
  })
})

describe('live migration: audit regressions', () => {
  it('a key provider that fails once right after the switch-over does not leave the migrated volume without its keys (no second unwrap)', async () => {
    const { createCipheriv, createDecipheriv, randomBytes } = await import('node:crypto')
    const kek = randomBytes(32)
    let armed = false
    let failNext = ''
    let checks = 0
    const provider = {
      name: 'flaky-test-kms',
      keyId: 'k1',
      async wrap (dek: Uint8Array, context: string): Promise<Uint8Array> {
        // The hand-over wraps the staged key for the volume: the unwrap that checks the wrap passes,
        // and the next unwrap of it fails once.
        if (armed && !context.includes('migration:') && context.endsWith(':dek:1')) {
          failNext = context
          checks = 1
        }
        const iv = randomBytes(12)
        const cipher = createCipheriv('aes-256-gcm', kek, iv)
        cipher.setAAD(Buffer.from(context))
        const body = Buffer.concat([cipher.update(dek), cipher.final()])
        return new Uint8Array(Buffer.concat([iv, cipher.getAuthTag(), body]))
      },
      async unwrap (wrapped: Uint8Array, context: string): Promise<Uint8Array> {
        if (failNext !== '' && context === failNext && checks-- <= 0) {
          failNext = ''
          throw new Error('KMS temporarily unavailable (503)')
        }
        const b = Buffer.from(wrapped)
        const decipher = createDecipheriv('aes-256-gcm', kek, b.subarray(0, 12))
        decipher.setAAD(Buffer.from(context))
        decipher.setAuthTag(b.subarray(12, 28))
        return new Uint8Array(Buffer.concat([decipher.update(b.subarray(28)), decipher.final()]))
      }
    }
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir, keyProvider: provider })
    try {
      await g.createStorageClass(SECRET)
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.write('v', 0, new Uint8Array(1 << 20).fill(3))
      armed = true
      const moved = await g.migrateVolume('v', { storageClass: SECRET.name })
      armed = false
      assert.equal(moved.encrypted, true)
      assert.deepEqual(await g.read('v', 0, 4096), new Uint8Array(4096).fill(3))
      await g.write('v', 4096, new Uint8Array(4096).fill(4))
      await g.close()
      failNext = ''
      g = await GalleonFS.open({ storagePath: dir, keyProvider: provider })
      assert.deepEqual(await g.read('v', 4096, 4096), new Uint8Array(4096).fill(4))
    } finally {
      armed = false
      await g.close()
    }
  })

  it('pool accounting around a migration: updatePool counts the migration\'s reservation; the reservation ends at the switch-over; counters and the size a mount sees go on across it', async () => {
    // A store whose deleteVolume (the old storage's removal, after the switch-over) waits a while.
    const dir = fresh()
    const inner = new FileBlockStore({ location: join(dir, 'blocks') })
    const store = new Proxy(inner, {
      get (target, prop) {
        if (prop === 'deleteVolume') {
          return async (...args: Parameters<typeof inner.deleteVolume>) => {
            await new Promise((resolve) => setTimeout(resolve, 300))
            return await target.deleteVolume(...args)
          }
        }
        const value = Reflect.get(target, prop, target)
        return typeof value === 'function' ? value.bind(target) : value
      }
    })
    const g = await GalleonFS.open({ storagePath: dir, blockStore: store })
    try {
      await g.createPool({ name: 'target', capacityBytes: '48M' })
      await g.createVolume({ name: 'v', sizeBytes: '32M' })
      const chunk = new Uint8Array(1 << 20).fill(1)
      for (let o = 0; o < 32 << 20; o += 1 << 20) await g.write('v', o, chunk)
      const file = await g.mounts.openVolumeFile('v')
      const before = await g.getVolumeMetrics('v')
      assert.equal(before.writeOps, 32)
      let refused: Promise<unknown> | undefined
      const migrating = g.migrateVolume('v', { pool: 'target' }, {
        onProgress: () => {
          // While the copy runs, 32M of the pool's 48M are reserved for the volume.
          refused ??= g.updatePool('target', { capacityBytes: '16M' }).then(() => 'accepted', (err: GalleonError) => err.code)
        }
      })
      // Once the record names the new pool the volume counts there once, not twice.
      while ((await g.getVolume('v')).pool !== 'target') await new Promise((resolve) => setImmediate(resolve))
      // Still migrating (its old storage is being deleted): creates get the space that is free.
      const created = await g.createVolume({ name: 'w', sizeBytes: '8M', pool: 'target' }).then(() => 'created', (err: GalleonError) => err.code)
      await migrating
      assert.equal(await refused, 'BUSY', 'a limit below provisioned plus reserved bytes is refused')
      assert.equal(created, 'created', 'after the switch-over the volume counts once in the pool')
      const after = await g.getVolumeMetrics('v')
      assert.ok(after.writeOps >= before.writeOps, `write counter went from ${before.writeOps} to ${after.writeOps}`)
      await g.write('v', 0, chunk)
      assert.equal((await g.getVolumeMetrics('v')).writeOps, after.writeOps + 1)
      // A file opened before the migration sees the volume grow after it.
      await g.expandVolume('v', '40M')
      assert.equal(file.size, 40 << 20)
      await file.pwrite(new Uint8Array(4096).fill(9), 36 << 20)
      assert.deepEqual(await g.read('v', 36 << 20, 4096), new Uint8Array(4096).fill(9))
      await file.close()
    } finally {
      await g.close()
    }
  })
})
