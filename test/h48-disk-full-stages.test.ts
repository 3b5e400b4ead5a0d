// A full disk at every stage (helper h48), on real small tmpfs mounts (root only; skipped otherwise):
// the file store filled by random overwrites and opened again on the still full disk, the level
// store reopened on a full disk, metadata changes on a full disk, and backups to a full target
// and restores onto a full disk. Refusals are NO_SPACE, nothing acknowledged is lost, nothing
// half done is visible after a reopen, and the storage works again once there is room.
import { describe, it, after } from 'node:test'
import assert from 'node:assert/strict'
import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { GalleonFS, WriteConcern, BackupStrategy, isGalleonError } from '../src/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { bytesOf, seededRandom } from './conformance/fixtures.js'
import { RESERVE_FILE, reserveBytes } from '../src/space-reserve.js'
import { fill, resizeTmpfs as resize, tmpfs, unfill, unmountAll } from './support/tmpfs.js'

after(unmountAll)

async function rejection (promise: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await promise
  } catch (err) {
    return err as Error & { code?: string }
  }
  assert.fail('expected a rejection')
}

describe('h48: a full disk at every stage', () => {
  it('file store: random overwrites of an encrypted volume fill the disk; with a little room it opens again, and trim and deleteVolume make room', async (t) => {
    const mount = await tmpfs('8m', 'galleon-h48-')
    if ('skip' in mount) { t.skip(mount.skip); return }
    const storagePath = join(mount.dir, 'store')
    const open = async (): Promise<{ g: GalleonFS, store: FileBlockStore }> => {
      const store = new FileBlockStore({ location: join(storagePath, 'blocks'), segmentBytes: 512 * 1024 })
      const g = await GalleonFS.open({ storagePath, metadata: new ClassicLevel(join(storagePath, 'metadata')), blockStore: store })
      return { g, store }
    }
    let { g, store } = await open()
    const acknowledged = new Map<number, Uint8Array>()
    const blocks = 768 // 3 MiB live on an 8 MiB disk: overwrites leave dead records until the disk is full
    let failure: Error & { code?: string } | undefined
    let refusedWrite: { index: number, data: Uint8Array } | undefined
    try {
      await g.createVolume({ name: 'a', sizeBytes: '3M', storageClass: 'encrypted-storage', replicas: 1 })
      await g.createVolume({ name: 'b', sizeBytes: '512K' })
      for (let i = 0; i < 128; i++) await g.writeBlock('b', i, bytesOf(4096, -1 - i))
      const random = seededRandom(48)
      for (let n = 0; n < 60000 && failure === undefined; n++) {
        const index = n < blocks ? n : Math.floor(random() * blocks)
        const data = bytesOf(4096, n)
        try {
          await g.writeBlock('a', index, data, n % 8 === 0 ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged)
          acknowledged.set(index, data)
        } catch (err) {
          failure = err as Error & { code?: string }
          refusedWrite = { index, data }
        }
      }
      assert.ok(isGalleonError(failure, 'NO_SPACE'), `expected NO_SPACE, got ${String(failure)}`)
      assert.match(failure.message, /full.*reopen/)
      assert.equal(acknowledged.size, blocks, 'the disk filled only after every block was written once')
      // Freeing space needs the store to write, so until a reopen the refusals say the same.
      for (const attempt of [async () => await g.trim('a', 0, 4096), async () => await g.writeBlock('a', 0, bytesOf(4096, 1))]) {
        assert.equal((await rejection(attempt())).code, 'NO_SPACE')
      }
      // The volume is marked deleting before its blocks are: the next open finishes the deletion.
      const refused = await rejection(g.deleteVolume('b'))
      assert.equal(refused.code, 'NO_SPACE')
      assert.match(refused.message, /stays in state deleting.*reopen the instance/, 'the refusal says the deletion is left to finish')
      for (const [index, data] of acknowledged) assert.deepEqual(await g.readBlock('a', index), data, `block ${index}`)
    } finally {
      await g.close().catch(() => {}) // the store refuses to flush; reopening recovers
    }

    // The disk is still full of the store's own segments. The metadata database must write to
    // open, so the storage opens only if the store held a spare segment file when the disk filled
    // (given back then; the next case checks that): not when compaction had none at hand.
    await t.test('opens again on the still full disk', async () => {
      await (await open()).g.close()
    })
    resize(mount.dir, '9m') // a little room, far less than the dead records hold
    ;({ g, store } = await open())
    try {
      // The refused write may have reached the disk whole before the write after it failed: then
      // recovery keeps it. Never a mix of the two.
      const refused = refusedWrite as { index: number, data: Uint8Array }
      if (Buffer.from(await g.readBlock('a', refused.index)).equals(refused.data)) acknowledged.set(refused.index, refused.data)
      for (const [index, data] of acknowledged) assert.deepEqual(await g.readBlock('a', index), data, `block ${index} after reopen`)
      assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['a'], 'the deletion of b is finished')
      await g.trim('a', 0, 1024 * 1024) // blocks 0..255
      await store.compact()
      for (let i = 0; i < 256; i++) acknowledged.delete(i)
      for (let i = 0; i < 32; i++) {
        const data = bytesOf(4096, 1e6 + i)
        await g.writeBlock('a', i, data, WriteConcern.WriteDurable)
        acknowledged.set(i, data)
      }
      assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['a'])
      for (let i = 32; i < 256; i++) assert.deepEqual(await g.readBlock('a', i), new Uint8Array(4096), `trimmed block ${i}`)
      for (const [index, data] of acknowledged) assert.deepEqual(await g.readBlock('a', index), data, `block ${index} after freeing space`)
      assert.equal((await g.scrub('a')).badBlocks.length, 0)
    } finally {
      await g.close()
    }
  })

  it('file store: a full disk stops the writer and gives back its spare segment files, so it opens again on the still full disk', async (t) => {
    const mount = await tmpfs('2m', 'galleon-h48-')
    if ('skip' in mount) { t.skip(mount.skip); return }
    const location = join(mount.dir, 'blocks')
    // No background compaction: the spare is made by compact() below, when the test says so.
    const make = (): FileBlockStore => new FileBlockStore({ location, segmentBytes: 256 * 1024, compactionThreshold: 0 })
    let store = make()
    await store.open()
    const spareFiles = async (): Promise<string[]> => (await readdir(location)).filter((name) => name.startsWith('spare-'))
    const acknowledged = new Map<number, Uint8Array>()
    const put = async (index: number, seed: number): Promise<void> => {
      const data = bytesOf(4096, seed)
      await store.batch([{ type: 'put', address: { volume: 1, index, gen: 0 }, data }])
      acknowledged.set(index, data)
    }
    let failure: unknown
    try {
      for (let i = 0; i < 192; i++) await put(i, i) // three sealed segments of 63 records, three in the fourth
      for (let i = 0; i < 63; i++) await put(i, 1000 + i) // the first segment is all dead now
      await store.compact()
      assert.equal((await spareFiles()).length, 1, 'the emptied segment is kept as a spare')
      await fill(mount.dir)
      for (let n = 0; n < 1000 && failure === undefined; n++) await put(n % 192, 2000 + n).catch((err: unknown) => { failure = err })
      assert.ok(isGalleonError(failure, 'NO_SPACE'), `expected NO_SPACE, got ${String(failure)}`)
      assert.deepEqual(await spareFiles(), [], 'the spare is removed')
    } finally {
      await store.close().catch(() => {})
    }
    store = make()
    await store.open() // on the disk still full of filler files: the spare's room is enough
    try {
      for (const [index, data] of acknowledged) assert.deepEqual(await store.get({ volume: 1, index, gen: 0 }), data, `block ${index}`)
    } finally {
      await store.close()
    }
  })

  it('level store: reopening on a full disk is NO_SPACE, and it opens with every acknowledged block once the disk grows', async (t) => {
    const mount = await tmpfs('6m', 'galleon-h48-')
    if ('skip' in mount) { t.skip(mount.skip); return }
    const storagePath = join(mount.dir, 'store')
    let g = await GalleonFS.open({ storagePath, backend: 'level' })
    const acknowledged = new Map<number, Uint8Array>()
    let failure: unknown
    try {
      await g.createVolume({ name: 'a', sizeBytes: '8M' })
      for (let index = 0; index < 2048 && failure === undefined; index++) {
        const data = bytesOf(4096, index)
        try {
          await g.writeBlock('a', index, data, WriteConcern.WriteDurable)
          acknowledged.set(index, data)
        } catch (err) {
          failure = err
        }
      }
      assert.ok(isGalleonError(failure, 'NO_SPACE'), `expected NO_SPACE, got ${String(failure)}`)
    } finally {
      await g.close().catch(() => {})
    }
    // LevelDB writes its log out as a table when it opens, which a full disk refuses.
    const refused = await rejection(GalleonFS.open({ storagePath, backend: 'level' }))
    assert.ok(isGalleonError(refused, 'NO_SPACE'), `expected NO_SPACE, got ${refused.code}: ${refused.message}`)
    assert.match(refused.message, /full.*free space/)
    resize(mount.dir, '32m')
    g = await GalleonFS.open({ storagePath, backend: 'level' })
    try {
      for (const [index, data] of acknowledged) assert.deepEqual(await g.readBlock('a', index), data, `block ${index}`)
      await g.writeBlock('a', 2047, bytesOf(4096, 2047), WriteConcern.WriteDurable)
      assert.deepEqual(await g.readBlock('a', 2047), bytesOf(4096, 2047))
    } finally {
      await g.close()
    }
  })

  it('metadata on a full disk: expand, QoS, snapshot and restore are refused with NO_SPACE and leave nothing half done', async (t) => {
    const mount = await tmpfs('16m', 'galleon-h48-')
    if ('skip' in mount) { t.skip(mount.skip); return }
    const backups = await tmpfs('4m', 'galleon-h48-')
    if ('skip' in backups) { t.skip(backups.skip); return }
    const storagePath = join(mount.dir, 'store')
    let g = await GalleonFS.open({ storagePath, backupTarget: backups.dir })
    let size = 1024 * 1024
    let backupId = ''
    try {
      await g.createVolume({ name: 'a', sizeBytes: size })
      await g.createVolume({ name: 'secret', sizeBytes: '1M', storageClass: 'encrypted-storage', replicas: 1 })
      for (let i = 0; i < 16; i++) {
        await g.writeBlock('a', i, bytesOf(4096, i), WriteConcern.WriteDurable)
        await g.writeBlock('secret', i, bytesOf(4096, 100 + i), WriteConcern.WriteDurable)
      }
      const backup = await g.createBackup('a', { strategy: BackupStrategy.Full })
      backupId = backup.id
      await fill(mount.dir)
      // LevelDB's log may still have room in its last page: grow the volume until the disk refuses.
      let refused: unknown
      for (let step = 0; step < 500 && refused === undefined; step++) {
        try {
          await g.expandVolume('a', size + 4096)
          size += 4096
        } catch (err) {
          refused = err
        }
      }
      assert.ok(refused !== undefined, 'the full disk refused a metadata change')
      // LevelDB refuses every write after a failed one: each change below is refused, as NO_SPACE.
      const attempts: Array<[string, () => Promise<unknown>]> = [
        ['expandVolume', async () => await g.expandVolume('a', size + 8192)],
        ['setQoSPolicy', async () => await g.setQoSPolicy('a', { limits: { iops: 1000 } })],
        ['createSnapshot', async () => await g.createSnapshot('a', 'on-full-disk')],
        ['restoreBackup', async () => await g.restoreBackup(backup.id, { name: 'restored' })],
        ['createBackup', async () => await g.createBackup('a', { strategy: BackupStrategy.Full })]
      ]
      for (const [what, attempt] of attempts) {
        const err = await rejection(attempt())
        assert.ok(isGalleonError(err, 'NO_SPACE'), `${what}: expected NO_SPACE, got ${err.code}: ${err.message}`)
        assert.match(err.message, /full.*reopen/, what)
      }
      // Known defects outside the files h48 may change (see its report): a call that ran but whose
      // audit entry could not be written rejects with LevelDB's own error, which does not say the
      // call ran; key rotation's metadata write is not NO_SPACE either.
      await t.test('a call that ran but could not be audited says so; rotateVolumeKey is NO_SPACE', async () => {
        const current = (await g.getVolume('a')).sizeBytes
        const unaudited = await rejection(g.expandVolume('a', current)) // nothing to change: it runs, then its audit entry fails
        assert.ok(isGalleonError(unaudited), `expected a GalleonError, got ${unaudited.code}: ${unaudited.message}`)
        assert.match(unaudited.message, /ran|succeeded/)
        const rotation = await rejection(g.rotateVolumeKey('secret', { wait: true }))
        assert.ok(isGalleonError(rotation, 'NO_SPACE'), `expected NO_SPACE, got ${rotation.code}: ${rotation.message}`)
      })
    } finally {
      await g.close().catch(() => {})
    }
    await unfill(mount.dir)
    g = await GalleonFS.open({ storagePath, backupTarget: backups.dir })
    try {
      const volumes = await g.listVolumes()
      assert.deepEqual(volumes.map((v) => v.name).sort(), ['a', 'secret'], 'no half-restored volume')
      assert.deepEqual((await g.listSnapshots('a')).map((s) => s.name), [`backup-${backupId}`], 'only the snapshot of the backup that was stored')
      assert.deepEqual((await g.listBackups()).map((b) => b.id), [backupId])
      // The expansion refused first may have been stored with only its audit entry refused (see above).
      const sizeBytes = (await g.getVolume('a')).sizeBytes
      assert.ok(sizeBytes === size || sizeBytes === size + 4096, `size ${sizeBytes}: the last expansion that resolved is ${size}`)
      assert.equal((await g.getVolume('a')).qos, undefined)
      for (let i = 0; i < 16; i++) {
        assert.deepEqual(await g.readBlock('a', i), bytesOf(4096, i), `block ${i}`)
        assert.deepEqual(await g.readBlock('secret', i), bytesOf(4096, 100 + i), `encrypted block ${i}`)
      }
      await g.expandVolume('a', sizeBytes + 4096)
      await g.createSnapshot('a', 'with-room')
      await g.rotateVolumeKey('secret', { wait: true })
      assert.deepEqual(await g.readBlock('secret', 3), bytesOf(4096, 103))
    } finally {
      await g.close()
    }
  })

  it('backups: a full target refuses an encrypted backup with NO_SPACE and keeps no manifest; with room the next backup restores', async (t) => {
    const mount = await tmpfs('16m', 'galleon-h48-')
    if ('skip' in mount) { t.skip(mount.skip); return }
    const target = await tmpfs('256k', 'galleon-h48-')
    if ('skip' in target) { t.skip(target.skip); return }
    const g = await GalleonFS.open({ storagePath: join(mount.dir, 'store'), backupTarget: target.dir })
    try {
      await g.createVolume({ name: 'secret', sizeBytes: '1M', storageClass: 'encrypted-storage', replicas: 1 })
      for (let i = 0; i < 128; i++) await g.writeBlock('secret', i, bytesOf(4096, 7 + i), WriteConcern.WriteDurable)
      for (const strategy of [BackupStrategy.Full, BackupStrategy.Incremental]) {
        const err = await rejection(g.createBackup('secret', { strategy }))
        assert.ok(isGalleonError(err, 'NO_SPACE'), `${strategy}: expected NO_SPACE, got ${err.code}: ${err.message}`)
        assert.match(err.message, /full/)
      }
      assert.deepEqual(await g.listBackups(), [])
      assert.deepEqual(await g.listSnapshots('secret'), [], 'no backup snapshot is left behind')
      const manifests = await readdir(join(target.dir, 'manifests')).catch(() => [])
      assert.deepEqual(manifests, [], 'no manifest claims a backup that was not stored')
      resize(target.dir, '4m')
      const backup = await g.createBackup('secret', { strategy: BackupStrategy.Full })
      assert.deepEqual((await g.listBackups()).map((b) => b.id), [backup.id])
      await g.restoreBackup(backup.id, { name: 'copy' })
      for (let i = 0; i < 128; i++) assert.deepEqual(await g.readBlock('copy', i), bytesOf(4096, 7 + i), `block ${i}`)
    } finally {
      await g.close()
    }
  })
})

describe('the space reserve (src/space-reserve.ts)', () => {
  for (const backend of ['file', 'level'] as const) {
    it(`${backend}: a storage whose disk filled up completely opens again by giving back its reserve, which comes back once there is room`, async (t) => {
      const mount = await tmpfs('16m', 'galleon-h48-')
      if ('skip' in mount) { t.skip(mount.skip); return }
      const storagePath = join(mount.dir, 'store')
      const reserve = join(storagePath, RESERVE_FILE)
      let g = await GalleonFS.open({ storagePath, backend })
      await g.createVolume({ name: 'a', sizeBytes: '1M' })
      await g.writeBlock('a', 3, bytesOf(4096, 3), WriteConcern.WriteDurable)
      await g.close()
      assert.ok((await readdir(storagePath)).includes(RESERVE_FILE), 'a reserve is made while the disk has room')
      assert.equal((await stat(reserve)).size, reserveBytes(16 << 20))
      // Everything else on the disk taken: the databases cannot write to open without the reserve.
      await fill(mount.dir)
      g = await GalleonFS.open({ storagePath, backend })
      try {
        assert.ok(!(await readdir(storagePath)).includes(RESERVE_FILE), 'the reserve was given back to open')
        assert.deepEqual(await g.readBlock('a', 3), bytesOf(4096, 3))
        // Room is made as an operator would: a volume goes (here, the filler beside the storage).
      } finally {
        await g.close()
      }
      await unfill(mount.dir)
      g = await GalleonFS.open({ storagePath, backend })
      try {
        assert.ok((await readdir(storagePath)).includes(RESERVE_FILE), 'the reserve is back once the disk has room')
        assert.deepEqual(await g.readBlock('a', 3), bytesOf(4096, 3))
      } finally {
        await g.close()
      }
    })
  }
})
