// The mount manager and VolumeFile on the default (virtual) driver: access modes, read-only mounts,
// snapshots, positions and streams, and what mounting blocks (delete, revert, restore).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, createWriteStream } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { AccessMode, GalleonFS } from '../src/index.js'
import { observed } from './support/observed.js'

let root: string
let counter = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-mount-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const fresh = (): string => join(root, `t${++counter}`)
const bytes = (n: number): Uint8Array => new Uint8Array(randomBytes(n))

describe('mount manager (virtual driver)', () => {
  it('mounts, lists and unmounts by id or path, enforcing access modes', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      assert.equal(g.mounts.driver, 'virtual')
      await g.createVolume({ name: 'rwo', sizeBytes: '1M' })
      await g.createVolume({ name: 'rox', sizeBytes: '1M', accessModes: [AccessMode.ReadOnlyMany] })
      await g.createVolume({ name: 'rwx', sizeBytes: '1M', accessModes: [AccessMode.ReadWriteMany] })
      const first = await g.mounts.mountVolume('rwo', '/mnt/a')
      await assert.rejects(g.mounts.mountVolume('rwo', '/mnt/b'), (err: Error & { code?: string }) => err.code === 'BUSY' && /ReadWriteOnce/.test(err.message) && err.message.includes('/mnt/a'))
      const reader = await g.mounts.mountVolume('rwo', '/mnt/b', { readOnly: true })
      await g.mounts.mountVolume('rwo', '/mnt/c', { options: ['ro'] })
      await assert.rejects(g.mounts.mountVolume('rox', '/mnt/d'), { code: 'READ_ONLY' })
      await g.mounts.mountVolume('rox', '/mnt/d', { ro: true })
      await g.mounts.mountVolume('rwx', '/mnt/e')
      await g.mounts.mountVolume('rwx', '/mnt/f')
      await assert.rejects(g.mounts.mountVolume('rwx', '/mnt/a'), (err: Error & { code?: string }) => err.code === 'BUSY' && /already a mount point/.test(err.message))
      assert.deepEqual(g.mounts.listMounts().map((m) => `${m.volumeName}@${m.path}:${m.readOnly ? 'ro' : 'rw'}`), ['rwo@/mnt/a:rw', 'rwo@/mnt/b:ro', 'rwo@/mnt/c:ro', 'rox@/mnt/d:ro', 'rwx@/mnt/e:rw', 'rwx@/mnt/f:rw'])
      await g.mounts.unmountVolume(first)
      await g.mounts.unmountVolume('/mnt/b')
      assert.equal(reader.length, 36)
      // With the writer gone, another read-write mount is allowed.
      await g.mounts.mountVolume('rwo', '/mnt/g')
      await assert.rejects(g.mounts.unmountVolume('/mnt/nothing'), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.mounts.mountVolume('rwo', ''), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.mounts.mountVolume('rwo', '/mnt/h', { colour: 'red' } as never), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.mounts.mountVolume('rwo', '/mnt/h', { options: 'ro' } as never), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.mounts.mountVolume('missing', '/mnt/h'), { code: 'VOLUME_NOT_FOUND' })
    } finally {
      await g.close()
    }
  })

  it('mounts snapshots read-only only, and a read-only mount refuses writes with READ_ONLY', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      const vol = await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.write(vol, 0, new Uint8Array(4096).fill(1))
      await g.createSnapshot(vol, 'snap')
      await g.write(vol, 0, new Uint8Array(4096).fill(2))
      await assert.rejects(g.mounts.mountVolume({ volume: 'v', snapshot: 'snap' }, '/s', { readOnly: false }), { code: 'READ_ONLY' })
      await g.mounts.mountVolume({ volume: 'v', snapshot: 'snap' }, '/s')
      const snapFile = await g.mounts.openVolumeFile('/s')
      assert.equal(snapFile.readOnly, true)
      const buffer = new Uint8Array(10)
      assert.equal(await snapFile.read(buffer), 10)
      assert.deepEqual(buffer, new Uint8Array(10).fill(1))
      await assert.rejects(snapFile.write(new Uint8Array(1)), { code: 'READ_ONLY' })
      await g.mounts.mountVolume('v', '/ro', { readOnly: true })
      const roFile = await g.mounts.openVolumeFile('/ro')
      await assert.rejects(roFile.pwrite(new Uint8Array(1), 0), { code: 'READ_ONLY' })
      const rw = await g.mounts.mountVolume('v', '/rw')
      const downgraded = await g.mounts.openVolumeFile('/rw', { readOnly: true })
      await assert.rejects(downgraded.write(new Uint8Array(1)), { code: 'READ_ONLY' })
      await downgraded.close()
      // The snapshot's file still reads the snapshot, the volume's reads the volume.
      const live = await g.mounts.openVolumeFile('/rw')
      const out = new Uint8Array(1)
      await live.pread(out, 0)
      assert.equal(out[0], 2)
      await live.close()
      await g.mounts.unmountVolume(rw)
    } finally {
      await g.close()
    }
  })

  it('VolumeFile reads, writes, seeks and refuses writes past the end; closed files reject with NOT_OPEN', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      const file = await g.mounts.openVolumeFile('v')
      assert.equal(file.size, 1 << 20)
      const data = bytes(10_000)
      assert.equal(await file.write(data), 10_000)
      assert.equal(file.position, 10_000)
      assert.equal(file.seek(-10_000, 'cur'), 0)
      const back = new Uint8Array(10_000)
      assert.equal(await file.read(back), 10_000)
      assert.deepEqual(back, data)
      assert.equal(file.seek(100), 100)
      assert.equal(file.seek(-6, 'end'), (1 << 20) - 6)
      assert.equal(await file.write(new Uint8Array(6).fill(9)), 6)
      assert.equal(await file.read(new Uint8Array(5)), 0) // at the end
      await assert.rejects(file.write(new Uint8Array(1)), { code: 'OUT_OF_RANGE' })
      await assert.rejects(file.pwrite(new Uint8Array(2), (1 << 20) - 1), { code: 'OUT_OF_RANGE' })
      assert.equal(file.seek(5, 2), (1 << 20) + 5) // past the end is allowed, reads return nothing
      assert.equal(await file.read(new Uint8Array(5)), 0)
      assert.throws(() => file.seek(-1, 'set'), { code: 'INVALID_ARGUMENT' })
      assert.throws(() => file.seek(0, 'middle' as never), { code: 'INVALID_ARGUMENT' })
      const tail = new Uint8Array(10)
      assert.equal(await file.pread(tail, (1 << 20) - 10), 10)
      assert.deepEqual(tail.subarray(4), new Uint8Array(6).fill(9))
      await assert.rejects(file.pread(new Uint8Array(4), 0, 8), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(file.pread('x' as never, 0), { code: 'INVALID_ARGUMENT' })
      await file.flush()
      await file.close()
      await file.close()
      await assert.rejects(file.read(new Uint8Array(1)), { code: 'NOT_OPEN' })
      // The volume grows: the file sees the new size.
      const again = await g.mounts.openVolumeFile('v')
      await g.expandVolume('v', '2M')
      assert.equal(again.size, 2 << 20)
      await again.pwrite(new Uint8Array([7]), (2 << 20) - 1)
      assert.deepEqual(await g.read('v', (2 << 20) - 1, 1), new Uint8Array([7]))
    } finally {
      await g.close()
    }
  })

  it('works with async iteration and with stream.pipeline in both directions', async () => {
    const g = await GalleonFS.open({ storagePath: fresh() })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '3M' })
      const source = join(root, `src-${counter}.bin`)
      const original = bytes(3 << 20)
      await writeFile(source, original)
      const into = await g.mounts.openVolumeFile('v')
      await pipeline(createReadStream(source, { highWaterMark: 100_000 }), into.createWriteStream())
      await into.close()
      assert.deepEqual(await g.read('v', 0, 3 << 20), original)
      const out = await g.mounts.openVolumeFile('v', { readOnly: true })
      const target = join(root, `dst-${counter}.bin`)
      await pipeline(out.createReadStream({ start: 1000, end: 2_000_999, highWaterMark: 65536 }), createWriteStream(target))
      assert.deepEqual(new Uint8Array(await readFile(target)), original.subarray(1000, 2_001_000))
      const hash = createHash('sha256')
      out.seek(0)
      let chunks = 0
      for await (const chunk of out) { hash.update(chunk); chunks++ }
      assert.equal(chunks, 3)
      assert.equal(hash.digest('hex'), createHash('sha256').update(original).digest('hex'))
      await out.close()
    } finally {
      await g.close()
    }
  })

  it('sync mounts write durably; mounts block deleting, reverting and restoring over the volume', async () => {
    const target = fresh()
    const g = await GalleonFS.open({ storagePath: fresh(), backupTarget: target })
    try {
      const vol = await g.createVolume({ name: 'v', sizeBytes: '1M' })
      const backup = await g.createBackup(vol)
      await g.createSnapshot(vol, 's')
      const id = await g.mounts.mountVolume(vol, join(root, 'sync-mount'), { sync: true })
      assert.equal(g.mounts.listMounts()[0]?.sync, true)
      const file = await g.mounts.openVolumeFile(join(root, 'sync-mount'))
      const syncs = (await g.getStorageStats()).syncs
      await file.pwrite(new Uint8Array(4096).fill(3), 0)
      assert.ok((await g.getStorageStats()).syncs > syncs, 'a sync mount write syncs the store')
      await assert.rejects(g.deleteVolume(vol), (err: Error & { code?: string }) => err.code === 'BUSY' && /mounted/.test(err.message))
      await assert.rejects(g.restoreSnapshot(vol, 's'), (err: Error & { code?: string }) => err.code === 'BUSY' && /mounted read-write/.test(err.message))
      await assert.rejects(g.restoreBackup(backup.id, { volume: vol }), (err: Error & { code?: string }) => err.code === 'BUSY' && /mounted/.test(err.message))
      await assert.rejects(g.mounts.unmountVolume(id), (err: Error & { code?: string }) => err.code === 'BUSY' && /open/.test(err.message))
      assert.equal(g.mounts.listMounts()[0]?.openFiles, 1)
      await g.mounts.unmountVolume(id, { force: true })
      assert.equal(file.closed, true)
      await g.mounts.mountVolume(vol, join(root, 'sync-mount'))
      await g.deleteVolume(vol, { force: true })
      assert.deepEqual(g.mounts.listMounts(), [])
    } finally {
      await g.close()
    }
  })

  it('applies access modes to files opened straight on a volume, refuses deleting a mounted snapshot, and takes the call\'s options over the class\'s', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createStorageClass({ name: 'ro-default', mountOptions: ['ro'] })
      await g.createVolume({ name: 'rox', sizeBytes: '1M', accessModes: [AccessMode.ReadOnlyMany] })
      await assert.rejects(g.mounts.openVolumeFile('rox'), { code: 'READ_ONLY' })
      const reader = await g.mounts.openVolumeFile('rox', { readOnly: true })
      await reader.close()
      await g.createVolume({ name: 'rwo', sizeBytes: '1M' })
      const direct = await g.mounts.openVolumeFile('rwo')
      await assert.rejects(g.mounts.mountVolume('rwo', '/m/rwo'), (err: Error & { code?: string }) => err.code === 'BUSY' && /writable file open/.test(err.message))
      await direct.close()
      await g.mounts.mountVolume('rwo', '/m/rwo')
      await assert.rejects(g.mounts.openVolumeFile('rwo'), (err: Error & { code?: string }) => err.code === 'BUSY' && /mounted read-write/.test(err.message))
      await g.createSnapshot('rwo', 's')
      await g.mounts.mountVolume({ volume: 'rwo', snapshot: 's' }, '/m/s')
      await assert.rejects(g.deleteSnapshot('rwo', 's'), (err: Error & { code?: string }) => err.code === 'BUSY' && /mounted/.test(err.message))
      await g.deleteSnapshot('rwo', 's', { force: true })
      assert.deepEqual(g.mounts.listMounts().map((m) => m.path), ['/m/rwo'])
      await g.createVolume({ name: 'classy', sizeBytes: '1M', storageClass: 'ro-default' })
      await g.mounts.mountVolume('classy', '/m/c1')
      await g.mounts.mountVolume('classy', '/m/c2', { options: ['rw'] })
      assert.deepEqual(g.mounts.listMounts().filter((m) => m.volumeName === 'classy').map((m) => m.readOnly), [true, false])
      // Racing a forced delete: the mount either fails or is gone with the volume.
      await g.createVolume({ name: 'doomed', sizeBytes: '1M' })
      const [, mounting] = await Promise.allSettled([g.deleteVolume('doomed', { force: true }), g.mounts.mountVolume('doomed', '/m/doomed')])
      void mounting
      assert.equal(g.mounts.listMounts().some((m) => m.volumeName === 'doomed'), false)
    } finally {
      await g.close()
    }
  })

  it('deleting a volume with a file open on it, writable or read-only, is refused (BUSY) unless forced', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'held', sizeBytes: '1M' })
      const writer = await g.mounts.openVolumeFile('held')
      const reader = await g.mounts.openVolumeFile('held', { readOnly: true })
      await assert.rejects(g.deleteVolume('held'), (err: Error & { code?: string }) => err.code === 'BUSY' && /1 writer\(s\)/.test(err.message))
      assert.equal((await g.getVolume('held')).name, 'held', 'still there')
      await writer.close()
      // A read-only file holds it too, as a read-only mount does (review r69).
      await assert.rejects(g.deleteVolume('held'), (err: Error & { code?: string }) => err.code === 'BUSY' && /1 reader\(s\): files open on it read-only/.test(err.message))
      await reader.close()
      await g.deleteVolume('held')
      await assert.rejects(g.getVolume('held'), { code: 'VOLUME_NOT_FOUND' })
      await g.createVolume({ name: 'forced', sizeBytes: '1M' })
      const stuck = await g.mounts.openVolumeFile('forced')
      await g.deleteVolume('forced', { force: true })
      await assert.rejects(g.getVolume('forced'), { code: 'VOLUME_NOT_FOUND' })
      await assert.rejects(stuck.write(new Uint8Array(4096)))
      await stuck.close().catch(() => {})
    } finally {
      await g.close()
    }
  })

  it('review regressions: a reader cannot mount read-write by any spelling; closing a read-only file keeps the writer count; a snapshot being deleted cannot be mounted', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createAccessPolicy({ name: 'readers', principals: ['user:mallory'], verbs: ['volume:read', 'snapshot:read'] })
      await g.createStorageClass({ name: 'rw-default', mountOptions: ['rw'] })
      const vol = await g.createVolume({ name: 'v', sizeBytes: '1M', storageClass: 'rw-default' })
      const mallory = g.as({ id: 'mallory' })
      await assert.rejects(mallory.mounts.mountVolume('v', '/x/1', { readOnly: true, rw: true }), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(mallory.mounts.mountVolume('v', '/x/2'), { code: 'PERMISSION_DENIED' })
      await assert.rejects(mallory.mounts.mountVolume({ id: vol.id, volumeId: 0 } as never, '/x/3'), { code: 'PERMISSION_DENIED' })
      await mallory.mounts.mountVolume('v', '/x/4', { readOnly: true })
      assert.deepEqual(g.mounts.listMounts().map((m) => m.readOnly), [true])

      const a = await g.mounts.openVolumeFile('v')
      const c = await g.mounts.openVolumeFile('v', { readOnly: true })
      await a.close()
      const b = await g.mounts.openVolumeFile('v')
      await c.close()
      await assert.rejects(g.mounts.mountVolume('v', '/x/5'), { code: 'BUSY' })
      await b.close()

      // A mount driver whose mount() waits, to start a mount while the snapshot's deletion runs.
      let release!: () => void
      const held = new Promise<void>((resolve) => { release = resolve })
      let hold = false
      const h = await GalleonFS.open({ inMemory: true, mount: { name: 'slow', mount: async () => { if (hold) await held }, unmount: async () => {} } })
      try {
        await h.createVolume({ name: 'w', sizeBytes: '1M' })
        await h.createSnapshot('w', 's')
        hold = true
        const mounting = h.mounts.mountVolume({ volume: 'w', snapshot: 's' }, '/y/s')
        await new Promise((resolve) => setTimeout(resolve, 10))
        // Observed at once: it may be refused while the mount is still awaited.
        const deleting = observed(h.deleteSnapshot('w', 's'))
        release()
        await mounting
        await assert.rejects(deleting, (err: Error & { code?: string }) => err.code === 'BUSY' && /mounted meanwhile/.test(err.message))
        assert.deepEqual((await h.listSnapshots('w')).map((x) => x.name), ['s'])
        await h.deleteSnapshot('w', 's', { force: true })
        assert.deepEqual(h.mounts.listMounts(), [])
      } finally {
        await h.close()
      }
    } finally {
      await g.close()
    }
  })

  it('VolumeFile.close() waits for the reads and writes already started; none start after it was called', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'big', sizeBytes: '64M' })
      const file = await g.mounts.openVolumeFile('big')
      const data = bytes(40 << 20)
      let written = false
      // 40 MiB go in several pieces: close() is called while the first is being written.
      const writing = file.pwrite(data, 0).then((n) => { written = true; return n })
      const closing = file.close()
      await assert.rejects(file.pwrite(bytes(10), 0), (err: Error & { code?: string }) => err.code === 'NOT_OPEN')
      await closing
      assert.equal(written, true, 'the write started before close() had finished when close() resolved')
      assert.equal(await writing, 40 << 20)
      assert.equal(file.closed, true)
      // The volume's writer place is free again only now: a second writable file opens.
      const second = await g.mounts.openVolumeFile('big')
      assert.deepEqual(Buffer.from(await g.read('big', 0, 40 << 20)).equals(Buffer.from(data)), true)
      await second.close()
    } finally {
      await g.close()
    }
  })

  it('mount calls act as the principal of a handle: other tenants\' volumes are denied, listings filtered', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createAccessPolicy({ name: 'a', principals: ['user:alice'], verbs: ['volume:*', 'snapshot:*'], namespaces: ['a'] })
      await g.createVolume({ name: 'db', sizeBytes: '1M', namespace: 'a' })
      await g.createVolume({ name: 'db', sizeBytes: '1M', namespace: 'b' })
      const alice = g.as({ id: 'alice', namespace: 'a' })
      await alice.mounts.mountVolume('db', '/a/db')
      await assert.rejects(alice.mounts.mountVolume('b/db', '/b/db', { readOnly: true }), { code: 'PERMISSION_DENIED' })
      await assert.rejects(alice.mounts.openVolumeFile('b/db'), { code: 'PERMISSION_DENIED' })
      await g.mounts.mountVolume('b/db', '/b/db')
      assert.deepEqual(alice.mounts.listMounts().map((m) => m.path), ['/a/db'])
      assert.equal(g.mounts.listMounts().length, 2)
      // Another tenant's mount is as invisible as a missing one.
      await assert.rejects(alice.mounts.unmountVolume('/b/db'), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /nothing is mounted/.test(err.message))
      assert.equal((alice.mounts as unknown as Record<string, unknown>).close, undefined, 'the manager\'s internals are not reachable')
      const file = await alice.mounts.openVolumeFile('/a/db')
      await file.pwrite(new Uint8Array([1, 2, 3]), 0)
      assert.deepEqual(await g.read('a/db', 0, 3), new Uint8Array([1, 2, 3]))
      const audit = await g.queryAuditLog({ action: 'mountVolume' })
      assert.deepEqual(audit.map((e) => `${e.principal} ${e.object} ${e.result}`), ['alice volume:a/db ok', 'alice volume:b/db denied', 'application volume:b/db ok'])
    } finally {
      await g.close()
    }
  })
})
