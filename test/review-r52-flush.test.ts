// Review r52: flush(vol) makes every write acknowledged so far durable, those a FUSE mount
// acknowledged and has not yet stored included (as sync(1) writes back a file system's dirty
// pages). Real python children write through real mounts.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { fuseMissing } from './support/fuse-available.js'
import { pythonSession } from './support/python-session.js'
import { slowStore } from './support/slow-store.js'
import { until, within } from './support/wait.js'

const skip = fuseMissing()
if (skip !== undefined) process.stdout.write(`# SKIP r52 flush tests: ${skip}\n`)

/** Writes `count` blocks of 4 KiB (block i filled with i + 1) at blocks 0, 2, 4, ..., prints a line, and waits for one before closing. */
const WRITER = `
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
for i in range(int(sys.argv[2])):
    os.pwrite(fd, bytes([i + 1]) * 4096, i * 8192)
print('acknowledged', flush=True)
sys.stdin.readline()
try:
    os.close(fd)
    print('closed', flush=True)
except OSError as err:
    print('close failed: %s' % err.strerror, flush=True)
`

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'r52-flush-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('r52: flush(vol) and the writes a FUSE mount acknowledged', { skip }, () => {
  it('flush(vol) returns once the writes the mount acknowledged before it are in the volume (here held back by a QoS limit)', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'limited'), mount: 'fuse' })
    const mnt = join(root, 'limited-m')
    let session: ReturnType<typeof pythonSession> | undefined
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      // Two writes a second: the writes wait for the limit long after the mount acknowledged them
      // (reads have no limit, so the test's reads do not queue behind them).
      await g.setQoSPolicy('v', { limits: { writeIops: 2 } })
      await g.mounts.mountVolume('v', mnt)
      const writer = session = pythonSession(WRITER, join(mnt, 'data'), '6')
      await writer.next(1)
      await g.flush('v')
      for (let i = 0; i < 6; i++) {
        assert.deepEqual(await g.read('v', i * 8192, 4096), new Uint8Array(4096).fill(i + 1), `flush('v') returned before write ${i} the mount acknowledged was in the volume`)
      }
      await g.flush()
      writer.send()
      await writer.next(2)
      assert.equal(writer.lines[1], 'closed')
    } finally {
      // Before the instance closes: a writer left with data open would hang on the unserved mount.
      await session?.kill()
      await g.close()
    }
  })

  it('flush(vol) fails with IO_ERROR when a write the mount acknowledged before it fails to reach the volume', async () => {
    const storage = join(root, 'failing')
    const { store, control } = await slowStore(storage, 50)
    const g = await GalleonFS.open({ storagePath: storage, blockStore: store, mount: 'fuse' })
    const mnt = join(root, 'failing-m')
    let session: ReturnType<typeof pythonSession> | undefined
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.mounts.mountVolume('v', mnt)
      control.failing = true
      const writer = session = pythonSession(WRITER, join(mnt, 'data'), '1')
      await writer.next(1)
      await assert.rejects(g.flush('v'), (err: Error & { code?: string }) => err.code === 'IO_ERROR' && err.message.includes(mnt))
      control.failing = false
      writer.send()
      await writer.next(2)
      assert.match(writer.lines[1] ?? '', /close failed: Input\/output error/, 'the mount\'s writer hears it too')
      // A flush covers the writes acknowledged before it: a later one, with nothing failing since, succeeds.
      await g.flush('v')
    } finally {
      control.failing = false
      await session?.kill()
      await g.close()
    }
  })

  it('a flush and a snapshot of a volume that a process keeps writing through its mount finish while it writes', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'busy'), mount: 'fuse' })
    const mnt = join(root, 'busy-m')
    let session: ReturnType<typeof pythonSession> | undefined
    try {
      await g.createVolume({ name: 'v', sizeBytes: '16M' })
      await g.mounts.mountVolume('v', mnt)
      // Writes 128 KiB after 128 KiB over the volume, round and round, until told to stop.
      const writer = session = pythonSession(`
import os, sys, select
fd = os.open(sys.argv[1], os.O_WRONLY)
chunk, at, n = b'\\x5a' * 131072, 0, 0
while not select.select([sys.stdin], [], [], 0)[0]:
    os.pwrite(fd, chunk, at)
    at = (at + 131072) % (16 << 20)
    n += 1
    if n == 64: print('writing', flush=True)
os.close(fd)
print('stopped', flush=True)
`, join(mnt, 'data'))
      await writer.next(1)
      const done: string[] = []
      const flushed = g.flush('v').then(() => { done.push('flush') })
      const snapped = g.createSnapshot('v', 'busy').then(() => { done.push('snapshot') })
      // They finish on their own while the writer still writes; the deadline only bounds a hang.
      await within('the flush and the snapshot finished under a writer that keeps writing', Promise.all([flushed, snapped]), 60_000).finally(() => { writer.send() })
      await until('the writer stopped', () => writer.lines.at(-1) === 'stopped')
      assert.deepEqual(done.sort(), ['flush', 'snapshot'])
    } finally {
      // Before the instance closes: a writer left with data open would hang on the unserved mount.
      await session?.kill()
      await g.close()
    }
  })
})
