// Resource leaks under FUSE churn: mountVolume/unmountVolume through the real kernel FUSE many times,
// reading and writing `data` through the mount each time (async fs calls, as the README allows the
// serving process). Afterwards the process holds the descriptors (no /dev/fuse left open), handles
// and threads it held before, the instance no more listeners, nothing is left in /proc/self/mounts,
// and the heap did not grow by more than a generous bound per cycle. Skipped, visibly, without
// /dev/fuse or fusermount.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { mkdtemp, open, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { leftoversAfter, listenerTotal, settledHeap, takeResources } from './support/h47-resources.js'
import { fuseMissing } from './support/fuse-available.js'

const skip = fuseMissing()
if (skip !== undefined) process.stdout.write(`# SKIP FUSE churn tests: ${skip}\n`)

let root = ''
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-h47-fuse-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

const threads = (): number => readdirSync('/proc/self/task').length
const mountsUnder = (dir: string): string[] => readFileSync('/proc/self/mounts', 'utf8').split('\n').filter((line) => line.split(' ')[1]?.startsWith(dir) === true)

describe('FUSE churn', { skip }, () => {
  it('25 mount/write/read/unmount cycles (a new mount point each time, and one reused) leave no descriptor, handle, thread, mount or heap behind', { timeout: 120_000 }, async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'data'), mount: 'fuse' })
    try {
      const vol = await g.createVolume({ name: 'disk', sizeBytes: '8M' })
      const listenersBefore = listenerTotal(g)
      const cycle = async (i: number): Promise<void> => {
        const mountPoint = join(root, i % 2 === 0 ? 'reused' : `m-${i}`)
        await g.mounts.mountVolume(vol, mountPoint)
        const file = await open(join(mountPoint, 'data'), 'r+')
        try {
          const block = Buffer.alloc(65_536, i & 0xff)
          await file.write(block, 0, block.length, (i % 64) * 65_536)
          await file.sync()
          const back = Buffer.alloc(65_536)
          await file.read(back, 0, back.length, (i % 64) * 65_536)
          assert.ok(back.equals(block))
        } finally {
          await file.close()
        }
        await g.mounts.unmountVolume(mountPoint)
      }
      for (let i = 0; i < 2; i++) await cycle(i)
      const baseline = takeResources()
      const threadsBefore = threads()
      const heapBefore = await settledHeap()
      const cycles = 25
      for (let i = 2; i < 2 + cycles; i++) await cycle(i)
      assert.deepEqual(mountsUnder(root), [], 'FUSE mounts left in /proc/self/mounts')
      const left = await leftoversAfter(baseline)
      assert.deepEqual(left.fds, [], 'descriptors left after the mounts')
      assert.deepEqual(left.handles, [], 'handles left after the mounts')
      assert.ok(threads() <= threadsBefore + 2, `threads: ${threadsBefore} before, ${threads()} after ${cycles} mounts`)
      const growth = (await settledHeap()) - heapBefore
      assert.ok(growth < 128 * 1024 * cycles, `heap grew by ${growth} bytes over ${cycles} mounts (${Math.round(growth / cycles)} per mount)`)
      assert.equal(listenerTotal(g), listenersBefore, 'listeners on the instance')
    } finally {
      await g.close()
    }
  })
})
