// Review r29 of df97528 (file-store compaction backs off from a segment it cannot read), on the
// fault-injecting FUSE file system of h60 (test/support/h60-faulty-fs.ts, served by a child process).
//
// The back-off is timed on the `clock` option (wall clock by default), and backingOff() treats a
// clock earlier than the fault's `since` (its first failed attempt) as "stepped back: try now".
// But `since` stays the first failure's time, so after a step back every later check is still
// "before since": the segment is never backing off again until the clock catches up with that
// time (an hour after a -1 h step, a day after a -1 day one). Each pass then reads the bad segment,
// fails, reports it, and the end of the pass (maybeScheduleCompaction) finds it a victim again at
// once: compaction loops on it without pause, an io:error per loop and a sync each time.
//
// Expected: a clock set back ends the wait once (one attempt), and the back-off then runs from
// that attempt: the passes after it leave the segment alone and report nothing.
//
// Also: the built-in file store's background errors reach the instance (io:error) through a
// handler that first calls the caller's own backendOptions.onBackgroundError; when that one throws,
// the instance never hears of the error (built-in-drivers.ts: `own?.(err); report?.(err)`).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { GalleonFS, WriteConcern, type GalleonError } from '../src/index.js'
import { Address } from '../src/drivers.js'
import { FileBlockStore } from '../backends/file/index.js'
import { dropCachedPages, segmentFiles, useFaultyFs } from './support/h60-faulty-fs.js'
import { until } from './support/wait.js'
import { blockPattern } from './support/patterns.js'

const BLOCK = 4096
const MINUTE = 60_000
const HOUR = 60 * MINUTE
const { unavailable, faultyFs } = useFaultyFs('galleon-r29-')

describe('review r29: compaction back-off and a clock set back', { skip: unavailable ?? false }, () => {
  it('after the clock is set back, an unreadable segment is tried once, then waits out its back-off from that try (no read, no report in the passes after it)', async () => {
    const f = faultyFs()
    const dir = 'r29-clock'
    const location = join(f.mountPoint, dir, 'blocks')
    let now = Date.parse('2026-12-01T12:00:00Z')
    const clock = { now: () => now }
    const background: GalleonError[] = []
    const store = new FileBlockStore({ location, segmentBytes: 64 * 1024, compactionThreshold: 0.6, clock, onBackgroundError: (err: GalleonError) => { background.push(err) } })
    await store.open()
    const put = async (volume: number, index: number, seed: number): Promise<void> => {
      await store.batch([{ type: 'put', address: new Address(volume, index, 1), data: blockPattern(1, seed, BLOCK) }], { sync: true })
    }
    try {
      for (let i = 0; i < 48; i++) await put(1, i, i)
      const first = (await segmentFiles(location))[0] as string
      await f.inject({ op: 'read', path: `^/${dir}/blocks/${first}$`, count: -1, from: 0, to: 1 << 30 })
      await dropCachedPages(location)
      const readFaults = async (): Promise<number> => (await f.stats()).firedOn.filter((entry) => entry === `read /${dir}/blocks/${first}`).length

      // Overwrites leave the first segment below the threshold: a pass tries it and keeps it.
      for (let i = 0; i < 10; i++) await put(1, i, 1000 + i)
      await until('the report of the unreadable segment', () => background.length > 0, 60_000)
      assert.equal(background[0]?.code, 'IO_ERROR', background[0]?.message)

      // A probe: segments holding only a volume that is then deleted become victims that need no
      // read; waiting until they are gone waits for a pass, which looks at the unreadable (oldest)
      // segment first.
      let probeVolume = 100
      const probe = async (): Promise<void> => {
        const volume = probeVolume++
        const before = new Set(await segmentFiles(location))
        for (let i = 0; i < 40; i++) await put(volume, i, volume * 1000 + i)
        const sealed = (await segmentFiles(location)).filter((name) => !before.has(name)).slice(0, -1)
        assert.ok(sealed.length >= 1, 'the probe filled a segment')
        await store.deleteVolume(volume)
        await until(`compaction of the probe's segments ${sealed.join(', ')}`, async () => { const left = new Set(await segmentFiles(location)); return sealed.every((name) => !left.has(name)) }, 60_000)
      }

      // The clock is set back an hour (NTP, an operator, a resumed VM). The next pass may try the
      // segment again (the wait measured on the old clock means nothing now)...
      now -= HOUR
      await probe()
      const reports = background.length
      const reads = await readFaults()
      assert.ok(reports <= 2, `at most one more attempt right after the step, got ${reports - 1}; the last report: ${background.at(-1)?.message ?? ''}`)
      // ...but then waits out its back-off, as it did before the step: the clock does not move.
      await probe()
      await probe()
      assert.equal(await readFaults(), reads, 'no read of the unreadable segment while it waits out its back-off')
      assert.equal(background.length, reports, `no report while it waits: ${background.length - reports} more after the step (${background.at(-1)?.message ?? ''})`)
      const fault = (await store.stats()).faults?.[0]
      assert.ok(fault !== undefined && fault.attempts === reports, JSON.stringify(fault))
      assert.ok(fault.retryAt !== null && Date.parse(fault.retryAt) > now, `tried again later than now: ${JSON.stringify(fault)}`)
      assert.ok(Date.parse(fault.since) <= now, `since is not after now: ${JSON.stringify(fault)}`)
    } finally {
      await f.clear()
      await store.close().catch(() => {})
    }
  })

  it('facade: a caller\'s backendOptions.onBackgroundError that throws does not keep the error from the instance\'s io:error event', async () => {
    const f = faultyFs()
    const dir = 'r29-facade'
    const storagePath = join(f.mountPoint, dir)
    let heard = 0
    const onBackgroundError = (): void => { heard++; throw new Error('the caller\'s handler fails') }
    const g = await GalleonFS.open({ storagePath, backend: 'file', backendOptions: { segmentBytes: 64 * 1024, compactionThreshold: 0.6, onBackgroundError } })
    const events: Array<{ volumeId: string, code: string, message: string }> = []
    g.on('io:error', (event) => { events.push(event) })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      const write = async (index: number, seed: number): Promise<void> => { await g.write('v', index * BLOCK, blockPattern(1, seed, BLOCK), WriteConcern.WriteDurable) }
      for (let i = 0; i < 48; i++) await write(i, i)
      const location = join(storagePath, 'blocks')
      const first = (await segmentFiles(location))[0] as string
      await f.inject({ op: 'read', path: `^/${dir}/blocks/${first}$`, count: -1, from: 0, to: 1 << 30 })
      await dropCachedPages(location)
      for (let i = 0; i < 10; i++) await write(i, 1000 + i)
      // The caller's handler heard the compaction failure (and threw)...
      await until('the caller\'s handler to hear the unreadable segment', () => heard > 0, 60_000)
      await new Promise((resolve) => setImmediate(resolve))
      // ...and the instance did too.
      assert.ok(events.some((event) => event.volumeId === '' && event.code === 'IO_ERROR' && event.message.includes(join(location, first))), `an io:error naming the segment: ${JSON.stringify(events)}`)
    } finally {
      await f.clear()
      await g.close()
    }
  })
})
