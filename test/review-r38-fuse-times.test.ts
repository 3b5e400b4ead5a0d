// Review r38 of h79 (FUSE times). h79's mount watched the engine's one change counter for all
// volumes, so a write to volume A moved the mtime and ctime of volume B's `data` at B's next
// stat (make, rsync, cp -u then took B for changed). Each volume's storage now carries its own
// change stamp (VolumeBlocks.changed, the engine's count at its latest change), which the mount
// watches. Checked here, on real kernel FUSE mounts with stat run as a child process:
// - writes to one volume (through its mount, the API, a trim) leave another volume's times;
// - every kind of change of the volume itself still moves them: an API write, a trim, a restore
//   of a snapshot, and a change made after a live migration moved it to new storage;
// - a second process stat-ing `data` while writes go on (through the mount and the API) never
//   sees mtime or ctime go backwards.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { GalleonFS } from '../src/index.js'
import { fuseMissing } from './support/fuse-available.js'

const run = promisify(execFile)
const noFuse = fuseMissing()

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r38-times-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

interface Times { atime: number, mtime: number, ctime: number }

/** A `stat` time (%.9Y and the like) in ms: the driver keeps whole milliseconds. */
function ms (text: string): number {
  const [seconds, fraction = ''] = text.split('.')
  return Number(seconds) * 1000 + Number(fraction.slice(0, 3))
}

/** atime, mtime and ctime of `path`, as `stat` (a child process) reports them. */
async function timesOf (path: string): Promise<Times> {
  const { stdout } = await run('stat', ['-c', '%.9X %.9Y %.9Z', path])
  const [atime, mtime, ctime] = stdout.trim().split(' ').map(ms) as [number, number, number]
  return { atime, mtime, ctime }
}

/** Waits until the clock has passed `time` (ms), so that a time taken from now on is later. */
async function clockPast (time: number): Promise<void> {
  while (Date.now() <= time + 1) await new Promise((resolve) => setTimeout(resolve, 2))
}

const writeThrough = async (mnt: string, seek: number): Promise<void> => {
  await run('dd', ['if=/dev/urandom', `of=${join(mnt, 'data')}`, 'bs=64K', 'count=2', `seek=${seek}`, 'conv=notrunc', 'status=none'])
}

describe('review r38: data\'s times follow its own volume\'s changes only', { skip: noFuse, timeout: 120_000 }, () => {
  it('writes to one volume (its mount, the API, a trim) leave another volume\'s times; the volume\'s own changes of every kind move them', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'two'), mount: 'fuse' })
    const mntA = join(root, 'a')
    const mntB = join(root, 'b')
    try {
      await g.createStorageClass({ name: 'sealed', parameters: { encryption: 'true', replication: '1' } })
      await g.createVolume({ name: 'a', sizeBytes: '4M' })
      await g.createVolume({ name: 'b', sizeBytes: '4M' })
      await g.write('b', 0, new Uint8Array(randomBytes(65536)))
      const idA = await g.mounts.mountVolume('a', mntA)
      const idB = await g.mounts.mountVolume('b', mntB)
      const dataB = join(mntB, 'data')
      const dataA = join(mntA, 'data')
      const sinceB = Date.parse(g.mounts.listMounts().find((m) => m.id === idB)?.mountedAt ?? '')
      assert.ok(Number.isFinite(sinceB))
      const untouched: Times = { atime: sinceB, mtime: sinceB, ctime: sinceB }
      assert.deepEqual(await timesOf(dataB), untouched, 'b: the mount\'s time')

      // Volume a changes every way but a revert; b is stat-ed after each, a later time each time.
      await clockPast(sinceB)
      await writeThrough(mntA, 0)
      assert.deepEqual(await timesOf(dataB), untouched, 'b after a write through a\'s mount')
      await clockPast(Date.now())
      await g.write('a', 8192, new Uint8Array(randomBytes(8192)))
      assert.deepEqual(await timesOf(dataB), untouched, 'b after an API write to a')
      await clockPast(Date.now())
      await g.trim('a', 0, 65536)
      assert.deepEqual(await timesOf(dataB), untouched, 'b after a trim of a')

      // a's own changes still move a's times, each to a moment after it was made.
      let last = await timesOf(dataA)
      const moved = async (what: string, change: () => Promise<unknown>): Promise<void> => {
        await clockPast(Math.max(last.mtime, last.ctime))
        const from = Date.now()
        await change()
        const now = await timesOf(dataA)
        assert.ok(now.mtime >= from && now.ctime === now.mtime, `a's mtime after ${what}: ${now.mtime} is from ${from} on (ctime ${now.ctime})`)
        last = now
      }
      await moved('an API write', async () => { await g.write('a', 0, new Uint8Array(randomBytes(65536))) })
      await moved('a trim', async () => { await g.trim('a', 0, 65536) })
      // A revert waits for a read-write mount to go; a read-only one sees it.
      await g.write('a', 0, new Uint8Array(65536).fill(7))
      await g.createSnapshot('a', 'sevens')
      await g.write('a', 0, new Uint8Array(65536).fill(9))
      await g.mounts.unmountVolume(idA)
      const readOnly = await g.mounts.mountVolume('a', mntA, { readOnly: true })
      last = await timesOf(dataA)
      await moved('a restore of a snapshot', async () => { await g.restoreSnapshot('a', 'sevens') })
      assert.deepEqual(await g.read('a', 0, 4), new Uint8Array(4).fill(7))
      await g.mounts.unmountVolume(readOnly)
      const idA2 = await g.mounts.mountVolume('a', mntA)
      // A live migration moves the volume to new storage (its copy-in is no change of the bytes,
      // so it may or may not move the times); a write after it must.
      await g.migrateVolume('a', { storageClass: 'sealed' })
      last = await timesOf(dataA)
      await moved('an API write after a live migration', async () => { await g.write('a', 0, new Uint8Array(randomBytes(4096))) })
      await moved('a write through the mount after a live migration', async () => { await writeThrough(mntA, 4) })
      assert.deepEqual(await timesOf(dataB), untouched, 'b, after all of a\'s changes')
      await g.mounts.unmountVolume(idA2)
      await g.mounts.unmountVolume(idB)
    } finally {
      await g.close()
    }
  })

  it('a second process stat-ing data while writes go on (the mount, the API) never sees mtime or ctime go backwards', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'race'), mount: 'fuse' })
    const mnt = join(root, 'race-m')
    try {
      await g.createVolume({ name: 'v', sizeBytes: '16M' })
      const id = await g.mounts.mountVolume('v', mnt)
      const data = join(mnt, 'data')
      // 400 stats in one shell, while dd writes 128 requests of 64 KiB and the API writes 8 KiB pieces.
      const stats = run('sh', ['-c', 'i=0; while [ $i -lt 400 ]; do stat -c "%.9Y %.9Z" "$1"; i=$((i+1)); done', 'sh', data], { maxBuffer: 1 << 20 })
      const dd = run('dd', ['if=/dev/urandom', `of=${data}`, 'bs=64K', 'count=128', 'conv=notrunc', 'status=none'])
      let apiWrites = 0
      let statsDone = false
      const statsFinished = stats.finally(() => { statsDone = true })
      while (!statsDone) {
        await g.write('v', 8 << 20 | (apiWrites % 512) * 8192, new Uint8Array(randomBytes(8192)))
        apiWrites++
        await new Promise((resolve) => setTimeout(resolve, 1))
      }
      const { stdout } = await statsFinished
      await dd
      const seen = stdout.trim().split('\n').map((line) => line.split(' ').map(ms) as [number, number])
      assert.equal(seen.length, 400)
      assert.ok(apiWrites > 0)
      let changes = 0
      for (let i = 1; i < seen.length; i++) {
        const [mtime, ctime] = seen[i] as [number, number]
        const [mtimeBefore, ctimeBefore] = seen[i - 1] as [number, number]
        assert.ok(mtime >= mtimeBefore && ctime >= ctimeBefore, `stat ${i}: mtime ${mtimeBefore} -> ${mtime}, ctime ${ctimeBefore} -> ${ctime}`)
        if (mtime !== mtimeBefore) changes++
      }
      assert.ok(changes > 0, 'the writes moved mtime while the stats ran')
      await g.mounts.unmountVolume(id)
    } finally {
      await g.close()
    }
  })
})
