// Review r52: a FUSE mount hands each accepted write to the volume at once, relying on the volume
// applying writes to a block in call order. Driven through a real mount by a python child writing
// overlapping ranges at odd offsets and sizes, with the volume held to a QoS limit, and compared
// with a model of the order the writes were made in.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import type { QoSClock } from '../src/qos/bucket.js'
import { fuseMissing } from './support/fuse-available.js'
import { ManualClock } from './support/manual-clock.js'
import { pythonSession } from './support/python-session.js'
import { slowStore } from './support/slow-store.js'
import { until } from './support/wait.js'

const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex')
const skip = fuseMissing()
if (skip !== undefined) process.stdout.write(`# SKIP r52 FUSE tests: ${skip}\n`)

/**
 * Writes `rounds` overlapping ranges (odd offsets and sizes, each a fresh byte value) into the
 * first 64 KiB of data. After each it prints a line and, when `paced`, waits for one; after every
 * `episode` writes it then fsyncs, prints the model's hash and, when paced, waits for a line again.
 * `check`: it reads a range back after each write and compares it with the model. Then closes data
 * and prints the model's hash.
 */
const WRITER = `
import os, sys, random, hashlib
path, rounds, paced, check, episode = sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1', sys.argv[4] == '1', int(sys.argv[5])
rng = random.Random(52)
span = 65536
model = bytearray(span)
fd = os.open(path, os.O_RDWR)
for i in range(rounds):
    size = rng.randrange(1, 20000) | 1
    at = rng.randrange(0, span - size) | 1
    value = 1 + i % 255
    os.pwrite(fd, bytes([value]) * size, at)
    model[at:at + size] = bytes([value]) * size
    if check:
        start = rng.randrange(0, span - 8192)
        got = os.pread(fd, 8192, start)
        if got != bytes(model[start:start + 8192]):
            print('mismatch after write %d at %d' % (i, start), flush=True)
            sys.exit(1)
    print('wrote %d' % i, flush=True)
    if paced: sys.stdin.readline()
    if (i + 1) % episode == 0:
        os.fsync(fd)
        print(hashlib.sha256(model).hexdigest(), flush=True)
        if paced: sys.stdin.readline()
os.close(fd)
print(hashlib.sha256(model).hexdigest(), flush=True)
`

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'r52-order-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('r52: API writes of a QoS-limited volume land in the order made', () => {
  it('a write made once the limiter\'s overdue timer has not yet run is applied after the writes that waited for it', async () => {
    const clock = new ManualClock()
    const late: QoSClock = { now: clock.now, clearTimeout: clock.clearTimeout, setTimeout: (fn, ms) => clock.setTimeout(fn, ms + 1e9) }
    const g = await GalleonFS.open({ inMemory: true, qos: { clock: late } })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.setQoSPolicy('v', { limits: { iops: 100 } })
      // Ten writes elsewhere take the bucket's depth; the first write to block 0 waits for the limit.
      const earlier = Array.from({ length: 10 }, async () => { await g.write('v', 8192, new Uint8Array(4096)) })
      const first = g.write('v', 0, new Uint8Array(4096).fill(0xaa))
      // The limit lets everything in by now, but its timer has not fired.
      await clock.advance(200)
      const second = g.write('v', 0, new Uint8Array(4096).fill(0xbb))
      await clock.advance(2e9)
      await Promise.all([...earlier, first, second])
      assert.equal(Buffer.from(await g.read('v', 0, 4096)).toString('hex'), 'bb'.repeat(4096), 'the later write is what block 0 holds')
    } finally {
      await g.close()
    }
  })
})

describe('r52: writes through a FUSE mount of a QoS-limited volume land in the order made', { skip }, () => {
  for (const encrypted of [false, true]) {
    it(`with the limiter's timers late (a busy event loop): a write made after others wait for the limit is not applied before them${encrypted ? ' (encrypted volume)' : ''}`, async () => {
      // The QoS clock moves only when the test moves it, and its timers fire a long time late: the
      // limiter finds its due operations at the next call, as on a loaded event loop.
      const clock = new ManualClock()
      const late: QoSClock = { now: clock.now, clearTimeout: clock.clearTimeout, setTimeout: (fn, ms) => clock.setTimeout(fn, ms + 1e9) }
      const g = await GalleonFS.open({ storagePath: join(root, `late-${String(encrypted)}`), mount: 'fuse', qos: { clock: late } })
      const mnt = join(root, `late-${String(encrypted)}-m`)
      let writer: ReturnType<typeof pythonSession> | undefined
      try {
        await g.createVolume({ name: 'v', sizeBytes: '1M', ...(encrypted ? { storageClass: 'encrypted-storage', replicas: 1 } : {}) })
        await g.setQoSPolicy('v', { limits: { iops: 100 } })
        await g.mounts.mountVolume('v', mnt)
        // Episodes of eleven writes: ten at one time (the limit holds the last of them back), then
        // time moves on 100 ms, by when the limit lets them all in, but no timer has fired: the
        // eleventh finds them due. Then an fsync (the timers fire) and the volume is compared.
        const episode = 11
        const rounds = episode * 20
        const session = writer = pythonSession(WRITER, join(mnt, 'data'), String(rounds), '1', '0', String(episode))
        let lines = 0
        for (let i = 1; i <= rounds; i++) {
          await session.next(++lines)
          if (i % episode === episode - 1) await clock.advance(100)
          if (i % episode === 0) {
            // Write i was made (at the moved time); now its fsync, which the timers let finish.
            session.send()
            const synced = ++lines
            await until(`the writer synced write ${i}`, async () => { await clock.advance(2e9); return session.lines.length >= synced })
            assert.equal(sha256(await g.read('v', 0, 65536)), session.lines[synced - 1], `after write ${i}, the volume holds the writes as made, in order`)
          }
          session.send()
        }
        await session.next(lines + 1)
        assert.equal(await session.exited, 0)
      } finally {
        // A failed assertion leaves the writer waiting with data open, and writes waiting for
        // timers that fire only when the clock moves: both go before the instance closes.
        await writer?.kill()
        await clock.advance(2e9)
        await g.close()
      }
    })
  }

  it('with real time and a slow store: each read through the mount sees every write made before it, and the volume ends as the model', async () => {
    // Each batch of the store takes 5 ms more: the mount's writes are pending when it reads.
    const { store } = await slowStore(join(root, 'real'), 5)
    const g = await GalleonFS.open({ storagePath: join(root, 'real'), blockStore: store, mount: 'fuse' })
    const mnt = join(root, 'real-m')
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.setQoSPolicy('v', { limits: { iops: 400 } })
      await g.mounts.mountVolume('v', mnt)
      const rounds = 300
      const writer = pythonSession(WRITER, join(mnt, 'data'), String(rounds), '0', '1', '50')
      assert.equal(await writer.exited, 0, `the writer read what it wrote: ${writer.lines.at(-1) ?? ''}`)
      assert.equal(sha256(await g.read('v', 0, 65536)), writer.lines.at(-1))
    } finally {
      await g.close()
    }
  })
})
