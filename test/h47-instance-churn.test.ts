// Resource leaks under churn inside one process: many cycles of opening and closing instances (file
// and level backends, with and without an encrypted volume and a scheduled backup policy), of
// volume create/write/snapshot/clone/delete, of VolumeFiles and their streams, and of refused calls.
// After each churn the process must hold what it held before: the same file descriptors (named by
// path when not), no more libuv handles (timers, sockets, workers), no more listeners on the
// instance, and a heap that did not grow by more than a generous bound per cycle after a full GC.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { GalleonFS, isGalleonError } from '../src/index.js'
import { leftoversAfter, listenerTotal, settledHeap, takeResources } from './support/h47-resources.js'

let root = ''
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-h47-instance-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

// A leaked instance, volume handle, cipher or block map costs far more than this; steady-state
// noise (JIT, caches that fill once) after the warm-up cycles stays well below it.
const HEAP_BYTES_PER_CYCLE = 48 * 1024

async function codeOf (attempt: Promise<unknown>): Promise<string> {
  return await attempt.then(() => 'ok', (err: unknown) => isGalleonError(err) ? err.code : String(err))
}

/**
 * Runs `warmUp` cycles (caches, JIT, lazily loaded modules), takes the baseline, runs `cycles`
 * more, and checks descriptors, handles and heap growth against it.
 */
async function churn (what: string, cycle: (i: number) => Promise<void>, cycles: number, warmUp = 3, heapBound = HEAP_BYTES_PER_CYCLE): Promise<void> {
  for (let i = 0; i < warmUp; i++) await cycle(i)
  const baseline = takeResources()
  const processListeners = listenerTotal(process)
  const heapBefore = await settledHeap()
  for (let i = warmUp; i < warmUp + cycles; i++) await cycle(i)
  const left = await leftoversAfter(baseline)
  assert.equal(listenerTotal(process), processListeners, `${what}: listeners on process after ${cycles} cycles`)
  assert.deepEqual(left.fds, [], `${what}: file descriptors left open after ${cycles} cycles`)
  assert.deepEqual(left.handles, [], `${what}: libuv handles left after ${cycles} cycles`)
  const growth = (await settledHeap()) - heapBefore
  assert.ok(growth < heapBound * cycles, `${what}: heap grew by ${growth} bytes over ${cycles} cycles (${Math.round(growth / cycles)} per cycle; bound ${heapBound})`)
}

describe('open/close churn of an instance', () => {
  for (const backend of ['file', 'level'] as const) {
    for (const encrypted of [false, true]) {
      for (const withPolicy of [false, true]) {
        const label = `${backend} backend${encrypted ? ', encrypted volume' : ''}${withPolicy ? ', backup policy scheduled' : ''}`
        it(`${label}: 30 open/write/read/close cycles leave no descriptor, handle or heap behind`, async () => {
          const storagePath = join(root, `open-${backend}-${String(encrypted)}-${String(withPolicy)}`)
          const backupTarget = `${storagePath}-backups`
          await churn(label, async (i) => {
            const g = await GalleonFS.open({ storagePath, backend, backupTarget })
            try {
              if (i === 0) {
                await g.createVolume({ name: 'v', sizeBytes: '1M', ...(encrypted ? { storageClass: 'encrypted-storage', replicas: 1 } : {}) })
                if (withPolicy) await g.createBackupPolicy({ name: 'p', schedule: '*/5 * * * *', volumes: ['v'], retention: { daily: 2 } })
              }
              await g.write('v', 4096 * (i % 8), new Uint8Array(8192).fill(i & 0xff))
              assert.equal((await g.read('v', 4096 * (i % 8), 8192))[8191], i & 0xff)
              if (withPolicy) assert.equal((await g.listBackupPolicies()).length, 1)
            } finally {
              await g.close()
            }
          }, 30)
        })
      }
    }
  }
})

describe('churn inside one open instance', () => {
  it('create/write/snapshot/clone/delete of 60 volumes (one encrypted in three) leaves the instance as it was', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'volumes'), backupTarget: join(root, 'volumes-backups') })
    try {
      g.on('volume:created', () => {}) // the application's own listener stays; nothing else may pile up
      const listenersBefore = listenerTotal(g)
      await churn('volume churn', async (i) => {
        const encrypted = i % 3 === 0
        const vol = await g.createVolume({ name: `churn-${i}`, sizeBytes: '1M', ...(encrypted ? { storageClass: 'encrypted-storage', replicas: 1 } : {}) })
        await g.write(vol, 0, new Uint8Array(12_288).fill(i & 0xff))
        await g.createSnapshot(vol, 's1')
        await g.write(vol, 4096, new Uint8Array(4096).fill(0xee))
        const clone = await g.cloneVolume({ volume: vol.name, snapshot: 's1' }, `churn-${i}-clone`)
        assert.equal((await g.read(clone, 4096, 1))[0], i & 0xff)
        await g.deleteVolume(clone, { force: true })
        await g.deleteSnapshot(vol, 's1')
        await g.deleteVolume(vol, { force: true })
      }, 60)
      assert.deepEqual((await g.listVolumes()).map((v) => v.name), [])
      assert.equal(listenerTotal(g), listenersBefore, 'listeners on the instance after the churn')
    } finally {
      await g.close()
    }
  })

  it('openVolumeFile/close, read and write streams, and mount/unmount 100 times leave nothing open', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'files') })
    try {
      const vol = await g.createVolume({ name: 'files', sizeBytes: '4M' })
      await g.createSnapshot(vol, 'base')
      const listenersBefore = listenerTotal(g)
      const payload = new Uint8Array(64 * 1024).fill(7)
      await churn('VolumeFile churn', async (i) => {
        const file = await g.mounts.openVolumeFile(vol)
        await pipeline(Readable.from([payload, payload]), file.createWriteStream({ start: (i % 16) * 131_072 }))
        let seen = 0
        await pipeline(file.createReadStream({ start: 0, end: 262_143 }), new Writable({ write (chunk: Buffer, _enc, done) { seen += chunk.length; done() } }))
        assert.equal(seen, 262_144)
        // A read stream abandoned half way (the consumer goes away) must release what it holds too.
        const abandoned = file.createReadStream({ highWaterMark: 4096 })
        await new Promise<void>((resolve) => abandoned.once('data', () => { abandoned.destroy(); resolve() }))
        await new Promise((resolve) => abandoned.once('close', resolve))
        await file.close()
        await g.mounts.mountVolume({ volume: 'files', snapshot: 'base' }, `/mnt/h47-${i}`)
        const old = await g.mounts.openVolumeFile(`/mnt/h47-${i}`)
        assert.equal(await codeOf(old.write(new Uint8Array(1))), 'READ_ONLY')
        await old.close()
        await g.mounts.unmountVolume(`/mnt/h47-${i}`)
      }, 100)
      assert.equal(listenerTotal(g), listenersBefore, 'listeners on the instance after the churn')
    } finally {
      await g.close()
    }
  })

  it('refused calls in a loop (missing volume, out of range, read-only, exists, bad arguments) leak nothing', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'refused') })
    try {
      const vol = await g.createVolume({ name: 'small', sizeBytes: '64K', accessModes: ['ReadOnlyMany'] as never })
      const rw = await g.createVolume({ name: 'rw', sizeBytes: '64K' })
      await g.createSnapshot(rw, 'snap')
      const listenersBefore = listenerTotal(g)
      await churn('refused calls', async (i) => {
        assert.equal(await codeOf(g.write('missing', 0, new Uint8Array(1))), 'VOLUME_NOT_FOUND')
        assert.equal(await codeOf(g.read('missing', 0, 1)), 'VOLUME_NOT_FOUND')
        assert.equal(await codeOf(g.write(rw, 65_536, new Uint8Array(1))), 'OUT_OF_RANGE')
        assert.equal(await codeOf(g.writeBlock(rw, 99, new Uint8Array(4096))), 'OUT_OF_RANGE')
        assert.equal(await codeOf(g.createVolume({ name: 'rw', sizeBytes: '64K' })), 'VOLUME_EXISTS')
        assert.equal(await codeOf(g.createVolume({ name: `bad-${i}`, sizeBytes: 1000 })), 'INVALID_ARGUMENT')
        assert.equal(await codeOf(g.createSnapshot(rw, 'snap')), 'SNAPSHOT_EXISTS')
        assert.equal(await codeOf(g.mounts.mountVolume(vol, `/mnt/ro-${i}`, { readOnly: false } as never)), 'READ_ONLY')
        const snapFile = await g.mounts.openVolumeFile({ volume: 'rw', snapshot: 'snap' })
        assert.equal(await codeOf(snapFile.write(new Uint8Array(1))), 'READ_ONLY')
        await snapFile.close()
        assert.equal(await codeOf(snapFile.read(new Uint8Array(1))), 'NOT_OPEN')
        assert.equal(await codeOf(g.deleteVolume('missing')), 'VOLUME_NOT_FOUND')
      }, 200, 5)
      assert.equal(listenerTotal(g), listenersBefore)
      assert.deepEqual((await g.listVolumes()).map((v) => v.name).sort(), ['rw', 'small'])
    } finally {
      await g.close()
    }
  })
})
