// h79: the fuse driver reported data's (and every name's) mtime and ctime as the time of each stat,
// and its utimens answered success and changed nothing (`touch -d 2001-01-01 data`, then `stat`,
// showed the current time). make, rsync, cp -u, find -newer and backup programs compare these
// times. Now:
// - every name's times start at the mount's time (listMounts()' mountedAt) and stay there between
//   stats;
// - data's mtime and ctime move to the time of a write or truncate through the mount, and to the
//   moment the mount notices a change made another way (an API write, an expansion): never
//   before the change;
// - README.txt's and .galleonfs_metadata's move when their text changes (an expansion);
// - touch, touch -d, touch -r and cp -p onto data set its atime and mtime as asked and ctime to
//   now (touch -r and cp -p need the mtime fuse-native 2.2.6 does not pass: it hands utimens the
//   atime twice); the other names and the directory refuse, and a read-only mount says EROFS;
// - relatime compares atime with the mtime and ctime that now stay put: a read moves atime only
//   when it is not after them; noatime still keeps it.
// Real FUSE mounts; stat, touch, dd, cp run as child processes (never a sync call on a mount this
// process serves). Times are compared with each other and with Date.now() taken around each step.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { GalleonFS } from '../src/index.js'
import { fuseMissing } from './support/fuse-available.js'

const run = promisify(execFile)
const noFuse = fuseMissing()

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-h79-times-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

interface Times { atime: number, mtime: number, ctime: number }

/** A `stat` time (%.9X and the like) in ms: the driver keeps whole milliseconds. */
function ms (text: string): number {
  const [seconds, fraction = ''] = text.split('.')
  assert.match(fraction, /^\d{3}0{6}$/, `a time in whole milliseconds: ${text}`)
  return Number(seconds) * 1000 + Number(fraction.slice(0, 3))
}

/** atime, mtime and ctime of each path, as `stat` (a child process) reports them. */
async function timesOf (...paths: string[]): Promise<Times[]> {
  const { stdout } = await run('stat', ['-c', '%.9X %.9Y %.9Z', ...paths])
  const lines = stdout.trim().split('\n')
  assert.equal(lines.length, paths.length, stdout)
  return lines.map((line) => {
    const [atime, mtime, ctime] = line.split(' ').map(ms) as [number, number, number]
    return { atime, mtime, ctime }
  })
}

/** Waits until the clock has passed `time` (ms), so that a time taken from now on is later. */
async function clockPast (time: number): Promise<void> {
  while (Date.now() <= time + 1) await new Promise((resolve) => setTimeout(resolve, 2))
}

/** Runs `step`; the clock just before it and just after. */
async function around (step: () => Promise<unknown>): Promise<{ from: number, to: number }> {
  const from = Date.now()
  await step()
  return { from, to: Date.now() }
}

/** The kernel's coarse clock lags the real one by at most a tick (4 ms at HZ=250, 10 ms at HZ=100). */
const KERNEL_TICK_MS = 10

function within (time: number, span: { from: number, to: number }, what: string): void {
  assert.ok(time >= span.from && time <= span.to, `${what}: ${time} is between ${span.from} and ${span.to}`)
}

const readData = async (mnt: string): Promise<void> => { await run('dd', [`if=${join(mnt, 'data')}`, 'of=/dev/null', 'bs=64K', 'count=4', 'status=none']) }
const writeData = async (mnt: string): Promise<void> => { await run('dd', ['if=/dev/urandom', `of=${join(mnt, 'data')}`, 'bs=64K', 'count=1', 'seek=3', 'conv=notrunc', 'status=none']) }

describe('h79: the fuse driver keeps real times and sets them on utimens', { skip: noFuse, timeout: 120_000 }, () => {
  it('times stay put between stats; writes, truncates, API writes and an expansion move mtime and ctime; relatime follows them', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'changes'), mount: 'fuse' })
    const mnt = join(root, 'm1')
    try {
      await g.createVolume({ name: 'v', sizeBytes: '4M' })
      const id = await g.mounts.mountVolume('v', mnt)
      const since = Date.parse(g.mounts.listMounts().find((m) => m.id === id)?.mountedAt ?? '')
      assert.ok(Number.isFinite(since))
      const names = [mnt, join(mnt, 'data'), join(mnt, 'README.txt'), join(mnt, '.galleonfs_metadata')]
      const atMount: Times = { atime: since, mtime: since, ctime: since }

      await clockPast(since)
      assert.deepEqual(await timesOf(...names), names.map(() => atMount), 'every time is the mount\'s time')
      await clockPast(Date.now())
      assert.deepEqual(await timesOf(...names), names.map(() => atMount), 'and stays so: a stat moves nothing')

      // A write through the mount: data's mtime and ctime are its time, and stay.
      const wrote = await around(async () => { await writeData(mnt) })
      const [dir, data, readme, metadata] = await timesOf(...names) as [Times, Times, Times, Times]
      within(data.mtime, wrote, 'data\'s mtime after dd')
      assert.equal(data.ctime, data.mtime)
      assert.equal(data.atime, since, 'a write is no read')
      assert.deepEqual([dir, readme, metadata], [atMount, atMount, atMount], 'nothing else changed')
      await clockPast(wrote.to)
      assert.deepEqual(await timesOf(...names), [dir, data, readme, metadata], 'stable after the write')

      // relatime: atime (the mount's time) is not after mtime, so a read moves it; a second does not.
      const read = await around(async () => { await readData(mnt) })
      const [afterRead] = await timesOf(join(mnt, 'data')) as [Times]
      within(afterRead.atime, read, 'data\'s atime after the first read')
      assert.equal(afterRead.mtime, data.mtime, 'a read changes no mtime')
      await clockPast(read.to)
      await readData(mnt)
      assert.deepEqual(await timesOf(join(mnt, 'data')), [afterRead], 'a second read leaves atime: it is after mtime and ctime')

      // A truncate to the size changes no byte, but is one, as on a regular file; a read then moves atime again.
      const truncated = await around(async () => { await run('truncate', ['-s', String(4 << 20), join(mnt, 'data')]) })
      const [afterTruncate] = await timesOf(join(mnt, 'data')) as [Times]
      within(afterTruncate.mtime, truncated, 'data\'s mtime after truncate')
      assert.equal(afterTruncate.ctime, afterTruncate.mtime)
      assert.equal(afterTruncate.atime, afterRead.atime)
      await clockPast(truncated.to)
      const readAgain = await around(async () => { await readData(mnt) })
      within((await timesOf(join(mnt, 'data')))[0]?.atime ?? 0, readAgain, 'data\'s atime after a read following the change')

      // An API write: the mount notices it at the next stat; the times move to then, not before the write.
      await clockPast(readAgain.to)
      const api = await around(async () => { await g.write('v', 0, new Uint8Array(randomBytes(8192))) })
      const [seenApi] = await timesOf(join(mnt, 'data')) as [Times]
      const noticed = Date.now()
      within(seenApi.mtime, { from: api.from, to: noticed }, 'data\'s mtime after an API write')
      assert.equal(seenApi.ctime, seenApi.mtime)
      await clockPast(noticed)
      assert.deepEqual(await timesOf(join(mnt, 'data')), [seenApi], 'stable after the API write')

      // An online expansion: data (new bytes), README.txt and .galleonfs_metadata (their text) move; the directory does not.
      await clockPast(seenApi.mtime)
      const grown = await around(async () => { await g.expandVolume('v', '8M') })
      const [dir2, data2, readme2, metadata2] = await timesOf(...names) as [Times, Times, Times, Times]
      const noticedGrowth = Date.now()
      for (const [what, times] of [['data', data2], ['README.txt', readme2], ['.galleonfs_metadata', metadata2]] as const) {
        within(times.mtime, { from: grown.from, to: noticedGrowth }, `${what}'s mtime after the expansion`)
        assert.equal(times.ctime, times.mtime, what)
      }
      assert.deepEqual(dir2, { ...atMount, atime: dir2.atime }, 'the directory\'s mtime and ctime stay the mount\'s time')
      await clockPast(noticedGrowth)
      assert.deepEqual(await timesOf(...names), [dir2, data2, readme2, metadata2], 'stable after the expansion')
      await g.mounts.unmountVolume(id)
    } finally {
      await g.close()
    }
  })

  it('touch, touch -d, touch -r and cp -p set data\'s times; the other names refuse; a read-only mount says EROFS; noatime holds', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'utimens'), mount: 'fuse' })
    const mnt = join(root, 'm2')
    try {
      await g.createVolume({ name: 'v', sizeBytes: '4M' })
      const id = await g.mounts.mountVolume('v', mnt)
      const data = join(mnt, 'data')

      // touch -d: both times as given (seconds since the epoch: no time zone involved), ctime now.
      const dated = await around(async () => { await run('touch', ['-d', '@981173106.789', data]) })
      const [afterDated] = await timesOf(data) as [Times]
      assert.equal(afterDated.atime, 981173106789)
      assert.equal(afterDated.mtime, 981173106789)
      within(afterDated.ctime, dated, 'data\'s ctime after touch -d')

      // touch -r: atime and mtime of the reference, which differ (fuse-native passes the atime twice).
      const ref = join(root, 'ref')
      await writeFile(ref, 'reference')
      await run('touch', ['-a', '-d', '@1000000000.123', ref])
      await run('touch', ['-m', '-d', '@1100000000.456', ref])
      await run('touch', ['-r', ref, data])
      const [afterRef] = await timesOf(data) as [Times]
      assert.deepEqual([afterRef.atime, afterRef.mtime], [1000000000123, 1100000000456], 'atime and mtime of the reference')

      // relatime: that atime is before mtime, so a read moves it.
      await clockPast(afterRef.ctime)
      const read = await around(async () => { await readData(mnt) })
      within((await timesOf(data))[0]?.atime ?? 0, read, 'data\'s atime after a read')

      // touch: all three now.
      const touched = await around(async () => { await run('touch', [data]) })
      const [afterTouch] = await timesOf(data) as [Times]
      // "Now" in a utimens request is stamped by the kernel with its coarse clock, which can be up to
      // a scheduler tick behind Date.now() (a clean-clone CI run saw 2 ms): a tick of slack before.
      const touchedByKernel = { from: touched.from - KERNEL_TICK_MS, to: touched.to }
      for (const time of [afterTouch.atime, afterTouch.mtime, afterTouch.ctime]) within(time, touchedByKernel, 'data\'s times after touch')

      // cp -p onto data: its bytes, and the source's times.
      const source = join(root, 'source.bin')
      const bytes = new Uint8Array(randomBytes(8192))
      await writeFile(source, bytes)
      await chmod(source, 0o644)
      await run('touch', ['-a', '-d', '@1200000000.5', source])
      await run('touch', ['-m', '-d', '@1300000000.25', source])
      const copied = await around(async () => { await run('cp', ['-p', source, data]) })
      const [afterCopy] = await timesOf(data) as [Times]
      assert.deepEqual([afterCopy.atime, afterCopy.mtime], [1200000000500, 1300000000250], 'the source\'s atime and mtime')
      within(afterCopy.ctime, copied, 'data\'s ctime after cp -p')
      assert.deepEqual(await g.read('v', 0, bytes.byteLength), bytes)
      await clockPast(copied.to)
      assert.deepEqual(await timesOf(data), [afterCopy], 'the copy\'s writes landing later do not move them')

      // README.txt, .galleonfs_metadata and the directory keep their own times.
      const others = [mnt, join(mnt, 'README.txt'), join(mnt, '.galleonfs_metadata')]
      const before = await timesOf(...others)
      for (const path of others) {
        await assert.rejects(run('touch', ['-d', '@981173106', path]), /Permission denied|Operation not permitted/, path)
        await assert.rejects(run('touch', [path]), /Permission denied|Operation not permitted/, path)
      }
      assert.deepEqual((await timesOf(...others)).map((t) => [t.mtime, t.ctime]), before.map((t) => [t.mtime, t.ctime]), 'refused, they did not change')
      await g.mounts.unmountVolume(id)

      // A read-only mount: the kernel refuses, as for any change.
      const ro = await g.mounts.mountVolume('v', mnt, { readOnly: true })
      await assert.rejects(run('touch', ['-d', '@981173106', data]), /Read-only file system/)
      await assert.rejects(run('touch', [data]), /Read-only file system/)
      await g.mounts.unmountVolume(ro)

      // noatime: a read leaves atime at the mount's time even after a write made mtime later
      // (relatime would move it); touch -d still sets it, as the kernel does.
      const quiet = await g.mounts.mountVolume('v', mnt, { options: ['noatime'] })
      const since = Date.parse(g.mounts.listMounts().find((m) => m.id === quiet)?.mountedAt ?? '')
      await clockPast(since)
      await writeData(mnt)
      await readData(mnt)
      const [quietTimes] = await timesOf(data) as [Times]
      assert.equal(quietTimes.atime, since)
      assert.ok(quietTimes.mtime > since, 'the write moved mtime')
      await run('touch', ['-d', '@981173106.789', data])
      assert.equal((await timesOf(data))[0]?.atime, 981173106789)
      await g.mounts.unmountVolume(quiet)
      assert.deepEqual(new Uint8Array(await readFile(source)), bytes, 'the source is untouched')
    } finally {
      await g.close()
    }
  })
})
