// README "Volumes as files": claims of g.mounts and VolumeFile that no other test checks literally:
// mount options from the storage class (sync), driver option strings taking admin, where read and
// write streams start, and a path where nothing is mounted.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { Readable } from 'node:stream'
import { GalleonFS } from '../src/index.js'

const KiB = 1024

describe('README Volumes as files (virtual driver, file backend)', () => {
  it('takes sync from the storage class; driver option strings take admin for a principal; streams start where the README says', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'h54-mounts-'))
    const g = await GalleonFS.open({ storagePath: dir })
    try {
      // "Options come from the storage class's mountOptions and the call: ... sync (every write WriteDurable)".
      await g.createStorageClass({ name: 'durable', mountOptions: ['sync', 'noatime'] })
      await g.createVolume({ name: 'd', sizeBytes: '1M', storageClass: 'durable' })
      await g.mounts.mountVolume('d', '/h54/d')
      const mounted = g.mounts.listMounts().find((m) => m.path === '/h54/d')
      assert.equal(mounted?.sync, true, 'the class\'s sync applies to the mount')
      assert.deepEqual(mounted?.options, ['noatime'], 'other option strings go to the driver')
      const durableFile = await g.mounts.openVolumeFile('/h54/d')
      assert.equal(durableFile.sync, true, 'a file on the mount follows its sync setting')
      await durableFile.close()
      await g.mounts.unmountVolume('/h54/d')
      // The call's async wins over the class's sync.
      await g.mounts.mountVolume('d', '/h54/d2', { options: ['async'] })
      assert.equal(g.mounts.listMounts().find((m) => m.path === '/h54/d2')?.sync, false)
      await g.mounts.unmountVolume('/h54/d2')

      // "Option strings a driver applies (such as allow_other) take admin when a principal mounts."
      await g.createVolume({ name: 'p', sizeBytes: '1M', namespace: 'a' })
      await g.createAccessPolicy({ name: 'writer', principals: ['user:wendy'], verbs: ['volume:*'], namespaces: ['a'] })
      await g.createAccessPolicy({ name: 'root', principals: ['user:root'], verbs: ['admin'] })
      const wendy = g.as({ id: 'wendy', namespace: 'a' })
      await assert.rejects(wendy.mounts.mountVolume('p', '/h54/p', { options: ['allow_other'] }), { code: 'PERMISSION_DENIED' })
      assert.equal(g.mounts.listMounts().length, 0, 'a refused mount leaves nothing mounted')
      // ro, rw, sync and async are not driver options: no admin needed.
      await wendy.mounts.mountVolume('p', '/h54/p', { options: ['rw', 'sync'] })
      await wendy.mounts.unmountVolume('/h54/p')
      const root = g.as({ id: 'root', namespace: 'a' })
      await root.mounts.mountVolume('p', '/h54/p', { options: ['allow_other'] })
      assert.deepEqual(g.mounts.listMounts().map((m) => m.options), [['allow_other']])
      await root.mounts.unmountVolume('/h54/p')

      // Streams: "createReadStream({ start?, end?, highWaterMark? }) (from byte 0 unless start, end
      // inclusive as in fs) and createWriteStream({ start? }) (from the position unless start; the
      // position stays)"; async iteration "from the position, moving it".
      await g.createVolume({ name: 's', sizeBytes: 64 * KiB })
      const pattern = new Uint8Array(64 * KiB).map((_, i) => (i * 7 + 3) & 0xff)
      await g.write('s', 0, pattern)
      const file = await g.mounts.openVolumeFile('s')
      file.seek(10 * KiB)
      const streamed = Buffer.concat(await file.createReadStream().toArray())
      assert.equal(streamed.byteLength, 64 * KiB, 'a read stream without start reads from byte 0, whatever the position')
      assert.deepEqual(new Uint8Array(streamed), pattern)
      assert.equal(file.position, 10 * KiB, 'a read stream does not move the position')
      const tail = Buffer.concat(await file.createReadStream({ start: 60 * KiB, end: 100 * KiB }).toArray())
      assert.deepEqual(new Uint8Array(tail), pattern.subarray(60 * KiB), 'an end past the volume stops at its end')
      const one = Buffer.concat(await file.createReadStream({ start: 5, end: 5 }).toArray())
      assert.deepEqual([...one], [pattern[5]], 'end is inclusive')

      const incoming = new Uint8Array(3 * KiB).fill(0xab)
      await pipeline(Readable.from([Buffer.from(incoming)]), file.createWriteStream())
      assert.equal(file.position, 10 * KiB, 'the position stays where it was')
      assert.deepEqual(await g.read('s', 10 * KiB, 3 * KiB), incoming, 'a write stream without start writes at the position')
      assert.deepEqual(await g.read('s', 0, 10 * KiB), pattern.subarray(0, 10 * KiB), 'nothing before the position changed')
      await pipeline(Readable.from([Buffer.from([1, 2])]), file.createWriteStream({ start: 100 }))
      assert.deepEqual(await g.read('s', 100, 2), new Uint8Array([1, 2]))

      let iterated = 0
      file.seek(-KiB, 'end')
      for await (const chunk of file) iterated += chunk.byteLength
      assert.equal(iterated, KiB, 'iteration reads from the position')
      assert.equal(file.position, 64 * KiB, 'iteration moves the position')

      // A write stream past the end: refused with OUT_OF_RANGE, nothing of it written.
      await assert.rejects(pipeline(Readable.from([Buffer.from(new Uint8Array(2 * KiB).fill(9))]), file.createWriteStream({ start: 63 * KiB })), { code: 'OUT_OF_RANGE' })
      assert.deepEqual(await g.read('s', 63 * KiB, KiB), pattern.subarray(63 * KiB))
      await file.close()

      // A write stream on a read-only file: READ_ONLY (refused at once).
      const readOnly = await g.mounts.openVolumeFile('s', { readOnly: true })
      assert.throws(() => readOnly.createWriteStream(), { code: 'READ_ONLY' })
      await readOnly.close()
    } finally {
      await g.close()
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('openVolumeFile on a path where nothing is mounted is INVALID_ARGUMENT, a relative path too', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'h54-mounts-path-'))
    const g = await GalleonFS.open({ storagePath: dir })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await assert.rejects(g.mounts.openVolumeFile('/h54/nothing'), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.mounts.openVolumeFile('./h54/nothing'), { code: 'INVALID_ARGUMENT' })
      // A relative mount point works for mountVolume and openVolumeFile alike...
      await g.mounts.mountVolume('v', 'h54-rel/v')
      const file = await g.mounts.openVolumeFile('h54-rel/v')
      await file.close()
      await g.mounts.unmountVolume('h54-rel/v')
      // ...and, with nothing mounted there, is "a path where nothing is mounted" (README), not a volume name.
      await assert.rejects(g.mounts.openVolumeFile('h54-rel/v'), { code: 'INVALID_ARGUMENT' })
    } finally {
      await g.close()
      await rm(dir, { recursive: true, force: true })
    }
  })
})
