// Background maintenance on a persistent fault (helper h68), under a real storagePath on the
// fault-injecting FUSE file system of h60 (test/support/h60-faulty-fs.ts, served by a child process).
// 1. File store compaction and a segment it cannot read (EIO): the segment is kept, with its blocks;
//    it is tried again only after a back-off (1 min doubling, on a clock the test moves), each failed
//    attempt is reported once, and stats().faults names it meanwhile; the passes in between compact
//    the other segments; a segment emptied by overwrites goes without being read.
// 2. The audit log's time index, built at open for a log written without it: a build that fails
//    (every write to the metadata database's log fails) does not fail open, is reported as io:error
//    once the caller holds the instance, queries by time still answer, and the next open builds it.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { GalleonFS, WriteConcern, type GalleonError } from '../src/index.js'
import { Address } from '../src/drivers.js'
import { FileBlockStore } from '../backends/file/index.js'
import { dropCachedPages, segmentFiles, useFaultyFs } from './support/h60-faulty-fs.js'
import { until } from './support/wait.js'
import { blockPattern } from './support/patterns.js'

const BLOCK = 4096
const MINUTE = 60_000
const { unavailable, faultyFs } = useFaultyFs('galleon-h68-')

describe('h68: background maintenance on a persistent fault', { skip: unavailable ?? false }, () => {
  it('file: compaction backs off from a segment it cannot read (1 min, doubling), reports each failed attempt once, compacts the others meanwhile, lists it in stats().faults, and loses nothing', async () => {
    const f = faultyFs()
    const dir = 'c1-file'
    const location = join(f.mountPoint, dir, 'blocks')
    let now = Date.parse('2026-12-01T00:00:00Z')
    const clock = { now: () => now }
    const background: GalleonError[] = []
    const options = { location, segmentBytes: 64 * 1024, compactionThreshold: 0.6, clock, onBackgroundError: (err: GalleonError) => { background.push(err) } }
    let store = new FileBlockStore(options)
    await store.open()
    const acknowledged = new Map<string, { address: Address, data: Uint8Array }>()
    const put = async (volume: number, index: number, seed: number): Promise<void> => {
      const address = new Address(volume, index, 1)
      const data = blockPattern(1, seed, BLOCK)
      await store.batch([{ type: 'put', address, data }], { sync: true })
      acknowledged.set(`${volume}:${index}`, { address, data })
    }
    let firstPath = ''
    try {
      for (let i = 0; i < 48; i++) await put(1, i, i)
      const first = (await segmentFiles(location))[0] as string
      firstPath = join(location, first)
      await f.inject({ op: 'read', path: `^/${dir}/blocks/${first}$`, count: -1, from: 0, to: 1 << 30 })
      await dropCachedPages(location)
      const readFaults = async (): Promise<number> => (await f.stats()).firedOn.filter((entry) => entry === `read /${dir}/blocks/${first}`).length

      // Overwrites leave the first segment below the threshold: a pass tries it and keeps it.
      for (let i = 0; i < 10; i++) await put(1, i, 1000 + i)
      await until('the report of the unreadable segment', () => background.length > 0, 60_000)
      const reported = background[0] as GalleonError
      assert.equal(reported.code, 'IO_ERROR', reported.message)
      assert.ok(reported.message.includes(firstPath), `the report names the segment: ${reported.message}`)
      const since = new Date(now).toISOString()
      const faultsAfter = async (): Promise<unknown> => (await store.stats()).faults?.map(({ what, code, since, attempts, retryAt }) => ({ what, code, since, attempts, retryAt }))
      assert.deepEqual(await faultsAfter(), [{ what: firstPath, code: 'IO_ERROR', since, attempts: 1, retryAt: new Date(now + MINUTE).toISOString() }])
      let attempts = await readFaults()
      assert.ok(attempts > 0, 'the segment was read, and the read failed')

      // A probe: segments holding only a volume that is then deleted become victims that need no
      // read; waiting until they are gone waits for passes that also looked at the unreadable
      // segment first (passes go oldest first, and it is the oldest).
      let probeVolume = 100
      const probe = async (): Promise<void> => {
        const volume = probeVolume++
        const before = new Set(await segmentFiles(location))
        for (let i = 0; i < 40; i++) await put(volume, i, volume * 1000 + i)
        const added = (await segmentFiles(location)).filter((name) => !before.has(name))
        const sealed = added.slice(0, -1) // the last one is still written to
        assert.ok(sealed.length >= 1, `the probe filled a segment (${added.join(', ')})`)
        await store.deleteVolume(volume)
        for (let i = 0; i < 40; i++) acknowledged.delete(`${volume}:${i}`)
        await until(`compaction of the probe's segments ${sealed.join(', ')}`, async () => { const left = new Set(await segmentFiles(location)); return sealed.every((name) => !left.has(name)) }, 60_000)
      }

      // Within the back-off: passes go on, compact the other segments, and leave this one alone.
      for (let pass = 0; pass < 3; pass++) await probe()
      assert.equal(await readFaults(), attempts, 'no read of the unreadable segment while it waits out its back-off')
      assert.equal(background.length, 1, `one report: ${background.map((err) => err.message).join(' | ')}`)
      assert.ok((await segmentFiles(location)).includes(first), 'the unreadable segment is kept')

      // After a minute: tried again, reported again, and the next wait is two minutes.
      now += MINUTE
      await probe()
      assert.ok(await readFaults() > attempts, 'tried again once the back-off is over')
      attempts = await readFaults()
      assert.equal(background.length, 2)
      assert.ok(background[1]?.message.includes('2 failed attempts in a row'), background[1]?.message)
      assert.deepEqual(await faultsAfter(), [{ what: firstPath, code: 'IO_ERROR', since, attempts: 2, retryAt: new Date(now + 2 * MINUTE).toISOString() }])
      now += MINUTE
      await probe()
      assert.equal(await readFaults(), attempts, 'not tried again one minute into a two-minute back-off')
      assert.equal(background.length, 2)
      now += MINUTE
      await probe()
      assert.ok(await readFaults() > attempts, 'tried again once the two minutes are over')
      assert.equal(background.length, 3)
      assert.deepEqual(await faultsAfter(), [{ what: firstPath, code: 'IO_ERROR', since, attempts: 3, retryAt: new Date(now + 4 * MINUTE).toISOString() }])
      attempts = await readFaults()

      // compact() is an operator asking now: it tries the segment whatever its back-off, and rejects
      // naming it (the caller has the error: no background report).
      await assert.rejects(store.compact(), (err: GalleonError) => err.code === 'IO_ERROR' && err.message.includes(firstPath))
      assert.ok(await readFaults() > attempts)
      assert.equal(background.length, 3)
      assert.equal((await store.stats()).faults?.[0]?.attempts, 4)

      // Every write went on; every acknowledged block outside the bad segment reads back.
      for (const [key, { address, data }] of acknowledged) {
        if (key.startsWith('1:') && Number(key.slice(2)) < 15) continue // possibly in the unreadable segment
        const read = await store.get(address)
        assert.ok(read !== undefined && Buffer.from(read).equals(Buffer.from(data)), `block ${key} reads back`)
      }

      // Emptied by overwrites, the segment goes at the next pass, back-off or not, without a read.
      for (let i = 0; i < 48; i++) await put(1, i, 2000 + i)
      await until('the emptied unreadable segment to go', async () => !(await segmentFiles(location)).includes(first), 60_000)
      assert.equal(background.length, 3, 'no further report')
      assert.deepEqual((await store.stats()).faults, [])
    } finally {
      await f.clear()
      await store.close().catch(() => {})
    }
    // Nothing acknowledged was lost.
    store = new FileBlockStore({ location, segmentBytes: 64 * 1024 })
    await store.open()
    try {
      for (const [key, { address, data }] of acknowledged) {
        const read = await store.get(address)
        assert.ok(read !== undefined && Buffer.from(read).equals(Buffer.from(data)), `block ${key} reads back after a reopen`)
      }
    } finally {
      await store.close()
    }
  })

  it('audit: a time index that cannot be built at open is reported as io:error (open succeeds, queries by time answer), and the next open builds it', async () => {
    const f = faultyFs()
    const dir = 'c2-audit'
    const storagePath = join(f.mountPoint, dir)
    const t0 = Date.now()
    let g = await GalleonFS.open({ storagePath })
    try {
      for (const name of ['a', 'b', 'c']) await g.createVolume({ name, sizeBytes: '1M' })
    } finally {
      await g.close()
    }
    // A log written by a build without the index (or appended to by one): the index state is gone.
    const indexState = async (): Promise<string | undefined> => {
      const db = new ClassicLevel(join(storagePath, 'metadata'))
      try {
        return await db.sublevel('audit-index', { valueEncoding: 'utf8' }).get('time') as string | undefined
      } finally {
        await db.close()
      }
    }
    const raw = new ClassicLevel(join(storagePath, 'metadata'))
    await raw.sublevel('audit-index', { valueEncoding: 'utf8' }).del('time')
    await raw.close()
    assert.equal(await indexState(), undefined)

    // Every write to the metadata database's log fails: the build's first write does.
    await f.inject({ op: 'write', path: `^/${dir}/metadata/[0-9]+\\.log$`, count: -1 })
    const events: Array<{ code: string, message: string }> = []
    try {
      g = await GalleonFS.open({ storagePath })
      g.on('io:error', (event) => { events.push(event) })
      try {
        // Emitted once open() has returned, in the turn after it.
        await new Promise((resolve) => setImmediate(resolve))
        const reports = events.filter((event) => event.message.includes('time index'))
        assert.equal(reports.length, 1, `one report of the index: ${JSON.stringify(events)}`)
        assert.equal(reports[0]?.code, 'IO_ERROR')
        assert.ok(reports[0]?.message.includes('reopen'), reports[0]?.message)
        // Queries by time still answer (from the whole log).
        const found = await g.queryAuditLog({ from: t0 - MINUTE, to: Date.now() + MINUTE, action: 'createVolume' })
        assert.deepEqual(found.map((entry) => entry.object.replace(/^volume:(default\/)?/, '')), ['a', 'b', 'c'])
      } finally {
        await g.close().catch(() => {})
      }
    } finally {
      await f.clear()
    }
    assert.equal(await indexState(), undefined, 'no index state after the failed build')

    // The next open builds it, and says nothing.
    events.length = 0
    g = await GalleonFS.open({ storagePath })
    g.on('io:error', (event) => { events.push(event) })
    try {
      await new Promise((resolve) => setImmediate(resolve))
      assert.deepEqual(events, [])
      const found = await g.queryAuditLog({ from: t0 - MINUTE, action: 'createVolume' })
      assert.equal(found.length, 3)
    } finally {
      await g.close()
    }
    const state = await indexState()
    assert.ok(state !== undefined && JSON.parse(state).last !== '', `the index state is back: ${String(state)}`)
  })
  it('facade: a file store compaction that cannot read a segment is reported as an io:error event with no volume (the instance passes its store background errors on), once per back-off step', async () => {
    const f = faultyFs()
    const dir = 'c3-facade'
    const storagePath = join(f.mountPoint, dir)
    const g = await GalleonFS.open({ storagePath, backend: 'file', backendOptions: { segmentBytes: 64 * 1024, compactionThreshold: 0.6 } })
    const events: Array<{ volumeId: string, volumeName: string, code: string, message: string }> = []
    g.on('io:error', (event) => { events.push(event) })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      const written = new Map<number, Uint8Array>()
      const write = async (index: number, seed: number): Promise<void> => {
        const data = blockPattern(1, seed, BLOCK)
        await g.write('v', index * BLOCK, data, WriteConcern.WriteDurable)
        written.set(index, data)
      }
      for (let i = 0; i < 48; i++) await write(i, i)
      const location = join(storagePath, 'blocks')
      const first = (await segmentFiles(location))[0] as string
      await f.inject({ op: 'read', path: `^/${dir}/blocks/${first}$`, count: -1, from: 0, to: 1 << 30 })
      await dropCachedPages(location)
      // Overwrites leave the first segment below the threshold: a pass tries it and keeps it.
      for (let i = 0; i < 10; i++) await write(i, 1000 + i)
      await until('the io:error of the unreadable segment', () => events.length > 0, 60_000)
      assert.equal(events[0]?.volumeId, '')
      assert.equal(events[0]?.volumeName, '')
      assert.equal(events[0]?.code, 'IO_ERROR')
      assert.ok(events[0]?.message.includes(join(location, first)), `the event names the segment: ${events[0]?.message}`)
      const faults = (await g.getStorageStats()).faults ?? []
      assert.deepEqual(faults.map((fault) => [fault.what, fault.code, fault.attempts]), [[join(location, first), 'IO_ERROR', 1]], 'getStorageStats() lists the kept segment')
      // More writes start more passes within the back-off: no further event.
      for (let i = 10; i < 40; i++) await write(i, 2000 + i)
      await new Promise((resolve) => setTimeout(resolve, 200))
      assert.equal(events.length, 1, `one event within the back-off: ${events.map((event) => event.message).join(' | ')}`)
      for (const [index, data] of written) {
        if (index < 10 || index >= 48) {
          const read = await g.read('v', index * BLOCK, BLOCK)
          assert.ok(Buffer.from(read).equals(Buffer.from(data)), `block ${index} reads back`)
        }
      }
    } finally {
      await f.clear()
      await g.close()
    }
  })
})
