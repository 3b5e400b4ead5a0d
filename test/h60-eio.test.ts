// Disk I/O errors under a real storagePath (helper h60): the storage lives on a passthrough FUSE
// file system served by a child process (test/support/h60-faulty-fs.ts) that fails chosen writes,
// fsyncs and reads with EIO. Checked for the file and level block stores: the failing call rejects
// with IO_ERROR (never a false success, never a hang), what was acknowledged before reads back after
// a reopen on a healthy disk, a failed fsync is never papered over by a later one that succeeds on
// dropped pages, and reads of a bad range reject (scrub reports them) instead of returning zeros.
// Each awaited call has a watchdog that fails the test if it never settles (no timing on success).
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, readdir } from 'node:fs/promises'
import { fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { GalleonFS, WriteConcern, BackupStrategy, isGalleonError } from '../src/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { forkArgs } from './support/child-script.js'
import { dropCachedPages, useFaultyFs } from './support/h60-faulty-fs.js'

const BLOCK = 4096
const { unavailable, faultyFs } = useFaultyFs('galleon-h60-')
let caseNo = 0

/** Fails the test if `promise` has not settled within a generous bound (a hang, not a slow run). */
async function settled<T> (promise: Promise<T>, what: string, ms = 60_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const watchdog = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`watchdog: ${what} did not settle in ${ms / 1000} s (a hang)`)), ms)
  })
  try {
    return await Promise.race([promise, watchdog])
  } finally {
    clearTimeout(timer)
  }
}

/** The rejection of `promise` (within the watchdog); fails if it resolves. */
async function rejection (promise: Promise<unknown>, what: string): Promise<Error & { code?: string }> {
  let outcome: unknown
  try {
    outcome = await settled(promise, what)
  } catch (err) {
    if (err instanceof Error && err.message.startsWith('watchdog:')) throw err
    return err as Error & { code?: string }
  }
  assert.fail(`${what} succeeded (${String(outcome)}), but it must fail: the disk returned EIO`)
}

/** Resolves `promise` or returns its error, within the watchdog. */
type Outcome<T> = { ok: true, value: T } | { ok: false, err: Error & { code?: string } }

async function outcome<T> (promise: Promise<T>, what: string): Promise<Outcome<T>> {
  try {
    return { ok: true, value: await settled(promise, what) }
  } catch (err) {
    if (err instanceof Error && err.message.startsWith('watchdog:')) throw err
    return { ok: false, err: err as Error & { code?: string } }
  }
}

function pattern (seed: number): Uint8Array {
  const data = new Uint8Array(BLOCK)
  let x = (seed * 2654435761) >>> 0 || 1
  for (let i = 0; i < BLOCK; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0
    data[i] = x & 0xff
  }
  return data
}

/** A fresh storage directory on the faulty mount; its path inside the mount for fault patterns. */
function newCase (name: string): { storagePath: string, inMount: string } {
  caseNo++
  const dir = `c${caseNo}-${name}`
  return { storagePath: join(faultyFs().mountPoint, dir), inMount: `^/${dir}/` }
}

/** Opens the storage: the file store (optionally with small segments) or the level store. */
async function openStorage (storagePath: string, backend: 'file' | 'level', fileOptions: { segmentBytes?: number, compactionThreshold?: number, onBackgroundError?: (err: Error) => void } = {}): Promise<GalleonFS> {
  if (backend === 'level') return await settled(GalleonFS.open({ storagePath, backend: 'level' }), 'open (level)')
  if (Object.keys(fileOptions).length === 0) return await settled(GalleonFS.open({ storagePath }), 'open (file)')
  const blockStore = new FileBlockStore({ location: join(storagePath, 'blocks'), ...fileOptions })
  return await settled(GalleonFS.open({ storagePath, metadata: new ClassicLevel(join(storagePath, 'metadata')), blockStore }), 'open (file, own store)')
}

/** Checks every acknowledged block reads back exactly. */
async function assertAcknowledged (g: GalleonFS, acknowledged: Map<string, Uint8Array>, when: string): Promise<void> {
  for (const [key, data] of acknowledged) {
    const [volume, index] = key.split(':') as [string, string]
    const read = await settled(g.readBlock(volume, Number(index)), `readBlock ${key}`)
    assert.ok(Buffer.from(read).equals(Buffer.from(data)), `${when}: acknowledged block ${key} reads back different bytes`)
  }
}

const skip = unavailable === undefined ? false : unavailable

describe('h60: EIO from the disk under a real storagePath', { skip }, () => {
  for (const backend of ['file', 'level'] as const) {
    // The files each store writes its blocks to: the file store's segments, LevelDB's write-ahead log.
    const blockFiles = backend === 'file' ? 'blocks/seg-' : 'blocks-level/[0-9]+\\.log$'

    it(`${backend}: EIO on a block write fails that write with IO_ERROR; the process, reads and the metadata keep working; everything acknowledged reads back after a reopen`, async () => {
      const f = faultyFs()
      const { storagePath, inMount } = newCase(`${backend}-write`)
      let g = await openStorage(storagePath, backend)
      const acknowledged = new Map<string, Uint8Array>()
      try {
        await g.createVolume({ name: 'a', sizeBytes: '1M' })
        await g.createVolume({ name: 'b', sizeBytes: '1M' })
        for (let i = 0; i < 24; i++) {
          const concern = i % 3 === 0 ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged
          await settled(g.writeBlock('a', i, pattern(i), concern), 'write a')
          acknowledged.set(`a:${i}`, pattern(i))
          if (i < 8) {
            await settled(g.writeBlock('b', i, pattern(1000 + i), concern), 'write b')
            acknowledged.set(`b:${i}`, pattern(1000 + i))
          }
        }
        await f.inject({ op: 'write', path: inMount + blockFiles, count: 1 })
        const err = await rejection(g.writeBlock('a', 3, pattern(99), WriteConcern.WriteDurable), 'the write that hit EIO')
        const fired = (await f.stats()).fired.write ?? 0
        assert.ok(fired >= 1, 'the write fault fired')
        assert.ok(isGalleonError(err), `a GalleonError, got ${String(err)}`)
        assert.equal(err.code, 'IO_ERROR', `IO_ERROR, got ${err.code}: ${err.message}`)
        assert.match(err.message, backend === 'file' ? /blocks/ : /blocks-level|I\/O|Input\/output/, 'the message names where it failed')
        // A WriteAcknowledged write after the failure does not pretend either.
        const later = await outcome(g.writeBlock('b', 9, pattern(2009), WriteConcern.WriteAcknowledged), 'a later write')
        if (later.ok) acknowledged.set('b:9', pattern(2009))
        else assert.ok(['IO_ERROR'].includes(later.err.code ?? ''), `a later write fails with IO_ERROR, got ${later.err.code}: ${later.err.message}`)
        // Reads of every volume, and metadata calls, still work.
        await assertAcknowledged(g, new Map([...acknowledged].filter(([key]) => key !== 'a:3')), 'before the reopen')
        const a3 = await settled(g.readBlock('a', 3), 'read a:3')
        assert.ok(Buffer.from(a3).equals(Buffer.from(pattern(3))) || Buffer.from(a3).equals(Buffer.from(pattern(99))), 'the failed write left block 3 old or new, never a mix')
        assert.equal((await settled(g.listVolumes(), 'listVolumes')).length, 2)
        const flushed = await outcome(g.flush('a'), 'flush after the failure')
        assert.ok(!flushed.ok || backend === 'level', 'flush after a failed write of the file store does not report success')
      } finally {
        const closed = await outcome(g.close(), 'close after the failure')
        if (!closed.ok) assert.ok(isGalleonError(closed.err), `close rejects with a GalleonError, got ${String(closed.err)}`)
      }
      await f.clear()
      g = await openStorage(storagePath, backend)
      try {
        await assertAcknowledged(g, acknowledged, 'after the reopen')
        const a3 = await g.readBlock('a', 3)
        assert.ok(Buffer.from(a3).equals(Buffer.from(pattern(3))) || Buffer.from(a3).equals(Buffer.from(pattern(99))), 'block 3 is old or new after the reopen')
        await settled(g.writeBlock('a', 3, pattern(77), WriteConcern.WriteDurable), 'write after the reopen')
        assert.deepEqual(await g.readBlock('a', 3), pattern(77))
      } finally {
        await settled(g.close(), 'close')
      }
    })

    it(`${backend}: EIO on fsync fails the durable write that waited for it, and no later durable write succeeds on dropped pages (fsyncgate)`, async (t) => {
      const f = faultyFs()
      const { storagePath, inMount } = newCase(`${backend}-fsync`)
      let g = await openStorage(storagePath, backend)
      const durable = new Map<string, Uint8Array>()
      /** Acknowledged (not durable) before the fault: lost with the dropped pages. */
      const acknowledgedOnly = new Map<string, Uint8Array>()
      /** Reported durable after the fault: must be on disk after the reopen. */
      const durableAfter = new Map<string, Uint8Array>()
      let closeRejected = false
      try {
        await g.createVolume({ name: 'a', sizeBytes: '1M' })
        for (let i = 0; i < 16; i++) {
          await settled(g.writeBlock('a', i, pattern(i), WriteConcern.WriteDurable), 'durable write')
          durable.set(`a:${i}`, pattern(i))
        }
        for (let i = 16; i < 24; i++) {
          await settled(g.writeBlock('a', i, pattern(i), WriteConcern.WriteAcknowledged), 'acknowledged write')
          acknowledgedOnly.set(`a:${i}`, pattern(i))
        }
        // The next fsync of the block files fails, and the kernel forgets the unsynced pages.
        await f.inject({ op: 'fsync', path: inMount + blockFiles, count: 1, drop: true })
        const err = await rejection(g.writeBlock('a', 30, pattern(30), WriteConcern.WriteDurable), 'the durable write whose fsync failed')
        assert.ok(((await f.stats()).fired.fsync ?? 0) >= 1, 'the fsync fault fired')
        assert.equal(err.code, 'IO_ERROR', `IO_ERROR, got ${err.code}: ${err.message}`)
        await f.clear()
        // The disk is healthy again, but the pages are gone: a later durable write that succeeds
        // must really be on disk, with everything acknowledged before it.
        for (let i = 31; i < 34; i++) {
          const later = await outcome(g.writeBlock('a', i, pattern(i), WriteConcern.WriteDurable), `durable write ${i} after the failed fsync`)
          t.diagnostic(`durable write ${i} after the failed fsync: ${later.ok ? 'succeeded' : `${later.err.code}: ${later.err.message}`}`)
          if (later.ok) durableAfter.set(`a:${i}`, pattern(i))
          else assert.equal(later.err.code, 'IO_ERROR', `a later durable write fails with IO_ERROR, got ${later.err.code}: ${later.err.message}`)
        }
        // The pages of the acknowledged writes are gone from the disk: reading them now gives their
        // bytes (from memory) or an error, never other bytes.
        const reads: string[] = []
        for (const [key, data] of acknowledgedOnly) {
          const read = await outcome(g.readBlock('a', Number(key.split(':')[1])), `read ${key} after the dropped pages`)
          reads.push(read.ok ? 'ok' : read.err.code ?? '?')
          if (read.ok) assert.ok(Buffer.from(read.value).equals(Buffer.from(data)), `${key} reads its acknowledged bytes or fails, never other bytes`)
        }
        t.diagnostic(`reads of the acknowledged blocks whose pages were dropped: ${reads.join(' ')}`)
        const flushed = await outcome(g.flush('a'), 'flush after the failed fsync')
        t.diagnostic(`flush after the failed fsync: ${flushed.ok ? 'succeeded' : flushed.err.code}`)
        if (flushed.ok) for (const [key, data] of acknowledgedOnly) durableAfter.set(key, data)
      } finally {
        const closed = await outcome(g.close(), 'close after the failed fsync')
        closeRejected = !closed.ok
        t.diagnostic(`close after the failed fsync: ${closed.ok ? 'succeeded' : `${closed.err.code}: ${closed.err.message}`}`)
      }
      g = await openStorage(storagePath, backend)
      try {
        await assertAcknowledged(g, durable, 'durable before the fault, after the reopen')
        await assertAcknowledged(g, durableAfter, 'reported durable (write or flush) after the failed fsync, after the reopen')
        // WriteAcknowledged promises survival of close(); when close() said nothing, the pages must be there.
        if (!closeRejected) await assertAcknowledged(g, acknowledgedOnly, 'acknowledged before the fault, close() reported success')
      } finally {
        await settled(g.close(), 'close')
      }
    })
  }

  it('file: EIO reading one block rejects that read with IO_ERROR naming the segment (never zeros or stale data); neighbours read; scrub reports it', async (t) => {
    const f = faultyFs()
    const { storagePath, inMount } = newCase('file-read')
    let g = await openStorage(storagePath, 'file')
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M' })
      for (let i = 0; i < 16; i++) await g.writeBlock('a', i, pattern(i), WriteConcern.WriteDurable)
    } finally {
      await settled(g.close(), 'close')
    }
    // Where block 7's payload lies in its segment (the payload is unencrypted, found verbatim).
    const blocksDir = join(f.backing, storagePath.slice(f.mountPoint.length), 'blocks')
    const segment = (await readdir(blocksDir)).find((name) => name.startsWith('seg-') && name.endsWith('.log')) as string
    const payloadAt = (await readFile(join(blocksDir, segment))).indexOf(Buffer.from(pattern(7)))
    assert.ok(payloadAt > 0, 'block 7 found in the segment')
    // One bad page (the kernel reads whole pages): the first page boundary inside block 7's payload.
    // That page also holds the start of block 8's record, so block 8 may fail with it.
    const at = Math.ceil(payloadAt / 4096) * 4096
    assert.ok(at < payloadAt + BLOCK)
    g = await openStorage(storagePath, 'file')
    const mismatches: unknown[] = []
    g.on('checksum:mismatch', (event: unknown) => { mismatches.push(event) })
    try {
      await f.inject({ op: 'read', path: `${inMount}blocks/${segment}`, count: -1, from: at, to: at + BLOCK })
      await dropCachedPages(join(storagePath, 'blocks'))
      const err = await rejection(g.readBlock('a', 7), 'read of the bad block')
      t.diagnostic(`read of block 7 over a bad page: ${err.code}: ${err.message}`)
      assert.ok(((await f.stats()).fired.read ?? 0) >= 1, 'the read fault fired')
      assert.equal(err.code, 'IO_ERROR', `IO_ERROR, got ${err.code}: ${err.message}`)
      assert.ok(err.message.includes(segment), `the message names the segment file: ${err.message}`)
      const range = await rejection(g.read('a', 6 * BLOCK, 3 * BLOCK), 'byte read across the bad block')
      assert.equal(range.code, 'IO_ERROR')
      for (let i = 0; i < 16; i++) {
        if (i === 7) continue
        const read = await outcome(g.readBlock('a', i), `read ${i}`)
        if (read.ok) assert.deepEqual(read.value, pattern(i), `block ${i} reads right`)
        else assert.ok(i === 8 && read.err.code === 'IO_ERROR', `only block 8 shares the bad page; block ${i}: ${read.err.code}`)
      }
      const report = await settled(g.scrub('a'), 'scrub')
      t.diagnostic(`scrub: ${JSON.stringify(report.badBlocks.map((bad) => [bad.index, bad.code]))}`)
      assert.equal(report.blocksChecked, 16)
      assert.ok(report.badBlocks.some((bad) => bad.index === 7 && bad.code === 'IO_ERROR'), 'scrub reports block 7 as unreadable')
      assert.ok(report.badBlocks.every((bad) => (bad.index === 7 || bad.index === 8) && bad.code === 'IO_ERROR'), 'and nothing else but its page neighbour')
      assert.equal(mismatches.length, 0, 'an unreadable block is not reported as a checksum mismatch')
      // A second read fails again: the error was not cached as zeros, and nothing was rewritten.
      assert.equal((await rejection(g.readBlock('a', 7), 'read of the bad block again')).code, 'IO_ERROR')
      await f.clear()
      await dropCachedPages(join(storagePath, 'blocks'))
      assert.deepEqual(await settled(g.readBlock('a', 7), 'read once healthy'), pattern(7), 'once the disk reads again, so does the block')
    } finally {
      await f.clear()
      await settled(g.close(), 'close')
    }
  })

  it('file: EIO reading a segment while the store recovers at open fails open with IO_ERROR, and cuts nothing: a later open finds every block', async () => {
    const f = faultyFs()
    const { storagePath, inMount } = newCase('file-recovery')
    let g = await openStorage(storagePath, 'file', { segmentBytes: 64 * 1024 })
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M' })
      for (let i = 0; i < 40; i++) await g.writeBlock('a', i, pattern(i), i % 4 === 0 ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged)
    } finally {
      await settled(g.close(), 'close')
    }
    const blocksDir = join(storagePath, 'blocks')
    const segments = (await readdir(blocksDir)).filter((name) => name.startsWith('seg-') && name.endsWith('.log')).sort()
    assert.ok(segments.length >= 2, 'several segments')
    // The active (last) segment, which open scans, fails in its middle; and every hint file.
    await f.inject({ op: 'read', path: `${inMount}blocks/${segments[segments.length - 1] as string}`, count: -1, from: 8192, to: 8193 })
    await f.inject({ op: 'read', path: `${inMount}blocks/.*\\.hint$`, count: -1, from: 0, to: 1 << 30 })
    await dropCachedPages(blocksDir)
    const opened = await outcome(openStorage(storagePath, 'file', { segmentBytes: 64 * 1024 }), 'open on a failing disk')
    if (opened.ok) {
      // Opened (from hints and the unfailing ranges?): then every block must still be there or fail loudly.
      try {
        for (let i = 0; i < 40; i++) {
          const read: Outcome<Uint8Array> = await outcome(opened.value.readBlock('a', i), `read ${i}`)
          if (read.ok) assert.deepEqual(read.value, pattern(i), `block ${i} is right or fails, never wrong`)
          else assert.equal(read.err.code, 'IO_ERROR')
        }
      } finally {
        await f.clear()
        await outcome(opened.value.close(), 'close')
      }
    } else {
      assert.equal(opened.err.code, 'IO_ERROR', `open fails with IO_ERROR, got ${opened.err.code}: ${opened.err.message}`)
    }
    assert.ok(((await f.stats()).fired.read ?? 0) >= 1, 'the read fault fired')
    await f.clear()
    g = await openStorage(storagePath, 'file', { segmentBytes: 64 * 1024 })
    try {
      for (let i = 0; i < 40; i++) assert.deepEqual(await g.readBlock('a', i), pattern(i), `block ${i} after the failed open`)
    } finally {
      await settled(g.close(), 'close')
    }
  })

  it('file: EIO while compaction copies and syncs keeps the old segment; nothing acknowledged is lost', async (t) => {
    const f = faultyFs()
    const { storagePath, inMount } = newCase('file-compaction')
    const background: Error[] = []
    const options = { segmentBytes: 64 * 1024, compactionThreshold: 0.6, onBackgroundError: (err: Error) => { background.push(err) } }
    let g = await openStorage(storagePath, 'file', options)
    const acknowledged = new Map<string, Uint8Array>()
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M' })
      for (let i = 0; i < 48; i++) {
        await g.writeBlock('a', i, pattern(i), WriteConcern.WriteDurable)
        acknowledged.set(`a:${i}`, pattern(i))
      }
      // From now on every fsync of a segment fails and drops its unsynced pages: compaction's
      // copies cannot be made durable, so it must not delete the segments they come from.
      await f.inject({ op: 'fsync', path: `${inMount}blocks/seg-`, count: -1, drop: true })
      let failed = 0
      for (let round = 0; round < 4; round++) {
        for (let i = 0; i < 40; i++) {
          const result = await outcome(g.writeBlock('a', i, pattern(10_000 * (round + 1) + i), WriteConcern.WriteAcknowledged), 'overwrite')
          if (result.ok) acknowledged.set(`a:${i}`, pattern(10_000 * (round + 1) + i))
          else { failed++; assert.equal(result.err.code, 'IO_ERROR') }
        }
      }
      const flushed = await outcome(g.flush('a'), 'flush')
      assert.ok(!flushed.ok, `flush on a disk whose fsyncs fail does not succeed (${failed} overwrites failed)`)
      assert.equal(flushed.err.code, 'IO_ERROR')
    } finally {
      await outcome(g.close(), 'close after the failures')
    }
    const stats = await f.stats()
    t.diagnostic(`fsync faults fired: ${stats.fired.fsync ?? 0}; background errors: ${background.map((err) => `${(err as { code?: string }).code ?? ''}: ${err.message}`).join(' | ') || 'none'}`)
    assert.ok((stats.fired.fsync ?? 0) >= 1, 'an fsync fault fired')
    await f.clear()
    g = await openStorage(storagePath, 'file', options)
    try {
      // Only the durable writes are owed after a failed close; each block holds a version that was
      // written at some point (the durable one, or a later overwrite that reached the disk).
      for (let i = 0; i < 48; i++) {
        const read = await g.readBlock('a', i)
        const candidates = [pattern(i), ...[1, 2, 3, 4].map((round) => pattern(10_000 * round + i))]
        assert.ok(candidates.some((c) => Buffer.from(c).equals(Buffer.from(read))), `block ${i} holds a version that was written (not zeros or a mix)`)
      }
    } finally {
      await settled(g.close(), 'close')
    }
  })

  it('file: EIO in the metadata database while a snapshot is created rejects createSnapshot with IO_ERROR, and a reopen shows it whole or not at all', async () => {
    const f = faultyFs()
    const { storagePath, inMount } = newCase('file-snapshot')
    let g = await openStorage(storagePath, 'file')
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M' })
      for (let i = 0; i < 8; i++) await g.writeBlock('a', i, pattern(i), WriteConcern.WriteDurable)
      await f.inject({ op: 'write', path: `${inMount}metadata/`, count: -1 })
      const created = await outcome(g.createSnapshot('a', 's1'), 'createSnapshot on a failing metadata disk')
      assert.ok(((await f.stats()).fired.write ?? 0) >= 1, 'the metadata write fault fired')
      assert.ok(!created.ok, 'createSnapshot does not succeed when its record could not be written')
      assert.ok(isGalleonError(created.err), `a GalleonError, got ${created.err.constructor.name} ${created.err.code ?? ''}`)
      assert.equal(created.err.code, 'IO_ERROR', `IO_ERROR, got ${created.err.code}: ${created.err.message}`)
      // The volume's data is unharmed and still readable.
      for (let i = 0; i < 8; i++) assert.deepEqual(await settled(g.readBlock('a', i), 'read'), pattern(i))
    } finally {
      await outcome(g.close(), 'close')
    }
    await f.clear()
    g = await openStorage(storagePath, 'file')
    try {
      const snapshots = await g.listSnapshots('a')
      assert.ok(snapshots.length <= 1)
      for (let i = 0; i < 8; i++) assert.deepEqual(await g.readBlock('a', i), pattern(i))
      for (const snapshot of snapshots) {
        for (let i = 0; i < 8; i++) assert.deepEqual(await g.read({ volume: 'a', snapshot: snapshot.name }, i * BLOCK, BLOCK), pattern(i), 'a snapshot that exists reads whole')
      }
      await g.createSnapshot('a', 's2')
      await g.writeBlock('a', 0, pattern(500), WriteConcern.WriteDurable)
      assert.deepEqual(await g.read({ volume: 'a', snapshot: 's2' }, 0, BLOCK), pattern(0))
    } finally {
      await settled(g.close(), 'close')
    }
  })

  it('file: EIO writing or syncing a backup on a directory target rejects createBackup with IO_ERROR and leaves no backup that lists as whole; the next backup restores exactly', async () => {
    const f = faultyFs()
    const { storagePath, inMount } = newCase('file-backup')
    const caseDir = inMount.slice(2, -1)
    const target = join(f.mountPoint, caseDir, 'target')
    const g = await openStorage(storagePath, 'file')
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M' })
      for (let i = 0; i < 32; i++) await g.writeBlock('a', i, pattern(i), WriteConcern.WriteDurable)
      // A chunk write fails.
      await f.inject({ op: 'write', path: `^/${caseDir}/target/`, count: 1 })
      const first = await rejection(g.createBackup('a', { strategy: BackupStrategy.Full, target }), 'backup with a failing chunk write')
      assert.equal(first.code, 'IO_ERROR', `IO_ERROR, got ${first.code}: ${first.message}`)
      const listed = async (): Promise<number> => {
        try {
          return (await g.listBackups('a', { target })).length
        } catch (err) {
          // The failed write may have been the target's marker file: then it is no target yet.
          assert.ok(isGalleonError(err, 'BACKUP_NOT_FOUND'), `listBackups: ${String(err)}`)
          return 0
        }
      }
      assert.equal(await listed(), 0, 'no backup lists after the failed one')
      // Every fsync on the target fails (and drops its pages): no backup may be reported made.
      await f.inject({ op: 'fsync', path: `^/${caseDir}/target/`, count: -1, drop: true })
      const second = await rejection(g.createBackup('a', { strategy: BackupStrategy.Full, target }), 'backup whose fsyncs fail')
      assert.equal(second.code, 'IO_ERROR', `IO_ERROR, got ${second.code}: ${second.message}`)
      assert.ok(((await f.stats()).fired.fsync ?? 0) >= 1, 'the fsync fault fired')
      assert.equal(await listed(), 0, 'no backup lists after the failed sync')
      await f.clear()
      const backup = await settled(g.createBackup('a', { strategy: BackupStrategy.Full, target }), 'backup on a healthy target')
      await settled(g.verifyBackup(backup.id, { target }), 'verify')
      const restored = await settled(g.restoreBackup(backup.id, { name: 'r', target }), 'restore')
      for (let i = 0; i < 32; i++) assert.deepEqual(await g.readBlock(restored.id, i), pattern(i))
    } finally {
      await f.clear()
      await settled(g.close(), 'close')
    }
  })
  it('level: after one failed write to LevelDB\'s log, every later write reported durable survives a reopen', async (t) => {
    const f = faultyFs()
    const { storagePath, inMount } = newCase('level-log-gap')
    let g = await openStorage(storagePath, 'level')
    const acknowledged = new Map<string, Uint8Array>()
    let refused = 0
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M' })
      await g.writeBlock('a', 0, pattern(0), WriteConcern.WriteDurable)
      acknowledged.set('a:0', pattern(0))
      await f.inject({ op: 'write', path: `${inMount}blocks-level/[0-9]+\\.log$`, count: 1 })
      const err = await rejection(g.writeBlock('a', 1, pattern(1), WriteConcern.WriteDurable), 'the write that hit EIO')
      assert.equal(err.code, 'IO_ERROR')
      // LevelDB's log writer counted the failed record's bytes as written; later records are
      // written that much earlier in the file than its 32 KiB block framing says.
      for (let i = 2; i < 42; i++) {
        const result = await outcome(g.writeBlock('a', i, pattern(i), WriteConcern.WriteDurable), `durable write ${i}`)
        if (result.ok) acknowledged.set(`a:${i}`, pattern(i))
        else { refused++; assert.equal(result.err.code, 'IO_ERROR') }
      }
      t.diagnostic(`after the failed log write: ${40 - refused} durable writes succeeded, ${refused} refused`)
    } finally {
      await outcome(g.close(), 'close')
    }
    await f.clear()
    g = await openStorage(storagePath, 'level')
    try {
      let lost = 0
      for (const [key, data] of acknowledged) {
        const read = await g.readBlock('a', Number(key.split(':')[1]))
        if (!Buffer.from(read).equals(Buffer.from(data))) lost++
      }
      assert.equal(lost, 0, `${lost} of ${acknowledged.size} writes reported durable after the failed log write are gone after the reopen`)
    } finally {
      await settled(g.close(), 'close')
    }
  })

  it('metadata: after one failed write to the metadata database\'s log, every later change reported done survives a reopen', async (t) => {
    const f = faultyFs()
    const { storagePath, inMount } = newCase('metadata-log-gap')
    let g = await openStorage(storagePath, 'file')
    const created: string[] = []
    let refused = 0
    try {
      await g.createVolume({ name: 'first', sizeBytes: '1M' })
      created.push('first')
      await f.inject({ op: 'write', path: `${inMount}metadata/[0-9]+\\.log$`, count: 1 })
      const err = await rejection(g.createVolume({ name: 'refused', sizeBytes: '1M' }), 'the create that hit EIO')
      t.diagnostic(`the create that hit EIO: ${err.constructor.name} ${err.code ?? ''}: ${err.message}`)
      for (let i = 0; i < 60; i++) {
        const result = await outcome(g.createVolume({ name: `v${i}`, sizeBytes: '1M', labels: { filler: 'x'.repeat(200) } }), `create v${i}`)
        if (result.ok) created.push(`v${i}`)
        else refused++
      }
      t.diagnostic(`after the failed metadata write: ${created.length - 1} creates succeeded, ${refused} refused`)
    } finally {
      await outcome(g.close(), 'close')
    }
    await f.clear()
    g = await openStorage(storagePath, 'file')
    try {
      const names = new Set((await g.listVolumes()).map((volume) => volume.name))
      const lost = created.filter((name) => !names.has(name))
      assert.deepEqual(lost, [], `volumes whose creation was reported done are gone after the reopen: ${lost.join(', ')}`)
    } finally {
      await settled(g.close(), 'close')
    }
  })
  it('file: EIO creating or syncing the directory of a new segment at a roll fails that write with IO_ERROR; a reopen keeps everything acknowledged', async (t) => {
    const f = faultyFs()
    for (const fault of ['create', 'fsyncdir'] as const) {
      const { storagePath, inMount } = newCase(`file-roll-${fault}`)
      let g = await openStorage(storagePath, 'file', { segmentBytes: 64 * 1024 })
      const acknowledged = new Map<string, Uint8Array>()
      let failure: (Error & { code?: string }) | undefined
      try {
        await g.createVolume({ name: 'a', sizeBytes: '1M' })
        await f.inject(fault === 'create' ? { op: 'create', path: `${inMount}blocks/seg-`, count: 1 } : { op: 'fsyncdir', path: `${inMount}blocks$`, count: 1 })
        for (let i = 0; i < 64 && failure === undefined; i++) {
          const result = await outcome(g.writeBlock('a', i, pattern(i), WriteConcern.WriteDurable), `write ${i}`)
          if (result.ok) acknowledged.set(`a:${i}`, pattern(i))
          else failure = result.err
        }
        t.diagnostic(`${fault} fault: ${acknowledged.size} writes before the failure: ${failure?.code ?? 'none'}: ${failure?.message ?? ''}`)
        assert.ok(((await f.stats()).fired[fault] ?? 0) >= 1, `the ${fault} fault fired`)
        assert.equal(failure?.code, 'IO_ERROR', `the write that needed the new segment fails with IO_ERROR, got ${failure?.code ?? 'no failure'}`)
        assert.ok(acknowledged.size >= 8, 'the first segment filled before the roll')
      } finally {
        await outcome(g.close(), 'close')
      }
      await f.clear()
      g = await openStorage(storagePath, 'file', { segmentBytes: 64 * 1024 })
      try {
        await assertAcknowledged(g, acknowledged, `after a failed roll (${fault})`)
        await g.writeBlock('a', 63, pattern(63), WriteConcern.WriteDurable)
      } finally {
        await settled(g.close(), 'close')
      }
    }
  })

  it('file: EIO writing the mark the store appends after a sync is reported to onBackgroundError (no caller waits for it); the store stops and a reopen keeps the synced batch', async () => {
    const f = faultyFs()
    const { storagePath, inMount } = newCase('file-mark')
    const location = join(storagePath, 'blocks')
    const reported: Error[] = []
    const data = new Uint8Array(BLOCK).fill(7)
    let store = new FileBlockStore({ location, compactionThreshold: 0, onBackgroundError: (err) => { reported.push(err) } })
    try {
      await settled(store.open(), 'open')
      // The batch is one record (36-byte header and the block) at offset 0; its mark comes right after.
      const markAt = 36 + BLOCK
      await f.inject({ op: 'write', path: `${inMount}blocks/seg-`, count: 1, writeFrom: markAt, writeTo: markAt + 36 })
      await settled(store.batch([{ type: 'put', address: { volume: 1, index: 0, gen: 0 }, data }], { sync: true }), 'the durable batch')
      assert.ok(((await f.stats()).fired.write ?? 0) >= 1, 'the write fault fired on the mark')
      const next = await outcome(store.batch([{ type: 'put', address: { volume: 1, index: 1, gen: 0 }, data }], { sync: true }), 'the next batch')
      assert.equal(next.ok ? 'resolved' : (next.err as { code?: string }).code, 'IO_ERROR', 'the store stopped after the failed mark write')
      assert.equal(reported.length, 1, `onBackgroundError was called once: ${reported.map((err) => err.message).join('; ')}`)
      assert.equal((reported[0] as { code?: string }).code, 'IO_ERROR')
    } finally {
      await outcome(store.close(), 'close')
    }
    await f.clear()
    store = new FileBlockStore({ location, compactionThreshold: 0 })
    try {
      await settled(store.open(), 'reopen')
      const read = await settled(store.get({ volume: 1, index: 0, gen: 0 }), 'read the synced block')
      assert.ok(read !== undefined && Buffer.from(read).equals(Buffer.from(data)), 'the synced batch reads back')
    } finally {
      await settled(store.close(), 'close')
    }
  })

  it('file: open on a disk whose every write fails rejects with IO_ERROR and changes nothing; a healthy open finds every block', async () => {
    const f = faultyFs()
    const { storagePath, inMount } = newCase('file-open-writes')
    let g = await openStorage(storagePath, 'file')
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M' })
      for (let i = 0; i < 8; i++) await g.writeBlock('a', i, pattern(i), WriteConcern.WriteDurable)
    } finally {
      await settled(g.close(), 'close')
    }
    for (const op of ['write', 'fsync', 'create', 'fsyncdir', 'unlink'] as const) await f.inject({ op, path: inMount, count: -1 })
    const opened = await outcome(openStorage(storagePath, 'file'), 'open on a disk that takes no writes')
    if (opened.ok) await outcome(opened.value.close(), 'close')
    assert.ok(!opened.ok, 'open does not succeed when it cannot write (locks, recovery, the metadata log)')
    assert.equal(opened.err.code, 'IO_ERROR', `IO_ERROR, got ${opened.err.code}: ${opened.err.message}`)
    await f.clear()
    g = await openStorage(storagePath, 'file')
    try {
      for (let i = 0; i < 8; i++) assert.deepEqual(await g.readBlock('a', i), pattern(i))
    } finally {
      await settled(g.close(), 'close')
    }
  })

  it('file: EIO reading a block during a backup rejects createBackup with IO_ERROR (no backup of zeros), and during compaction keeps the segment', async (t) => {
    const f = faultyFs()
    const { storagePath, inMount } = newCase('file-source-read')
    const caseDir = inMount.slice(2, -1)
    const target = join(f.mountPoint, caseDir, 'target')
    const background: Error[] = []
    const options = { segmentBytes: 64 * 1024, compactionThreshold: 0.6, onBackgroundError: (err: Error) => { background.push(err) } }
    let g = await openStorage(storagePath, 'file', options)
    const acknowledged = new Map<string, Uint8Array>()
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M' })
      for (let i = 0; i < 48; i++) {
        await g.writeBlock('a', i, pattern(i), WriteConcern.WriteDurable)
        acknowledged.set(`a:${i}`, pattern(i))
      }
      const blocksDir = join(storagePath, 'blocks')
      const first = (await readdir(blocksDir)).filter((name) => name.startsWith('seg-') && name.endsWith('.log')).sort()[0] as string
      await f.inject({ op: 'read', path: `${inMount}blocks/${first}`, count: -1, from: 0, to: 1 << 30 })
      await dropCachedPages(blocksDir)
      const backup = await rejection(g.createBackup('a', { strategy: BackupStrategy.Full, target }), 'backup of a volume with unreadable blocks')
      assert.equal(backup.code, 'IO_ERROR', `IO_ERROR, got ${backup.code}: ${backup.message}`)
      const listed = await g.listBackups('a', { target }).then((list) => list.length, (err: unknown) => { assert.ok(isGalleonError(err, 'BACKUP_NOT_FOUND')); return 0 })
      assert.equal(listed, 0, 'no backup lists')
      // Overwrites empty the unreadable first segment below the threshold: compaction must read it,
      // fails, and must keep it (its live blocks are only there).
      for (let i = 0; i < 8; i++) {
        await settled(g.writeBlock('a', 40 + i, pattern(40_000 + i), WriteConcern.WriteDurable), 'overwrite')
        acknowledged.set(`a:${40 + i}`, pattern(40_000 + i))
      }
      for (let i = 0; i < 10; i++) {
        const result = await outcome(g.writeBlock('a', i, pattern(50_000 + i), WriteConcern.WriteDurable), 'overwrite in the bad segment')
        if (result.ok) acknowledged.set(`a:${i}`, pattern(50_000 + i))
      }
      await settled(g.flush('a'), 'flush')
      // Compaction runs in the background: wait for it to report the unreadable segment.
      await settled((async () => { while (background.length === 0) await new Promise((resolve) => setTimeout(resolve, 20)) })(), 'compaction of the unreadable segment')
      assert.equal((background[0] as { code?: string }).code, 'IO_ERROR', `compaction reports IO_ERROR: ${background[0]?.message ?? ''}`)
      // Writes still work: a compaction that could not read is no reason to stop the store.
      const after = await outcome(g.writeBlock('a', 20, pattern(60_000), WriteConcern.WriteDurable), 'write after the failed compaction')
      t.diagnostic(`write after the failed compaction: ${after.ok ? 'succeeded' : `${after.err.code}: ${after.err.message}`}`)
      if (after.ok) acknowledged.set('a:20', pattern(60_000))
    } finally {
      await outcome(g.close(), 'close')
    }
    t.diagnostic(`background errors: ${background.map((err) => `${(err as { code?: string }).code ?? ''}: ${err.message}`).join(' | ') || 'none'}`)
    await f.clear()
    g = await openStorage(storagePath, 'file', options)
    try {
      await assertAcknowledged(g, acknowledged, 'after unreadable blocks during backup and compaction')
    } finally {
      await settled(g.close(), 'close')
    }
  })

  it('file: EIO writing blocks while a backup is restored rejects restoreBackup with IO_ERROR; after a reopen no half-restored volume reads as whole', async (t) => {
    const f = faultyFs()
    const { storagePath, inMount } = newCase('file-restore')
    const target = join(dirname(f.mountPoint), 'restore-target') // a healthy disk, beside the mount
    let g = await openStorage(storagePath, 'file')
    let backupId = ''
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M' })
      for (let i = 0; i < 64; i++) await g.writeBlock('a', i, pattern(i), WriteConcern.WriteDurable)
      backupId = (await g.createBackup('a', { strategy: BackupStrategy.Full, target })).id
      await f.inject({ op: 'write', path: `${inMount}blocks/seg-`, count: -1, writeFrom: 256 * 1024, writeTo: 1 << 30 })
      const err = await rejection(g.restoreBackup(backupId, { name: 'r', target }), 'restore onto a failing disk')
      assert.equal(err.code, 'IO_ERROR', `IO_ERROR, got ${err.code}: ${err.message}`)
      const left = (await g.listVolumes()).find((volume) => volume.name === 'r')
      if (left !== undefined) {
        // The removal needs the block store, which takes no writes until reopened: the volume may
        // stay listed, but must not be usable as if the restore had worked.
        const read = await outcome(g.readBlock('r', 63), 'read of the half-restored volume')
        const write = await outcome(g.writeBlock('r', 0, pattern(1)), 'write to the half-restored volume')
        t.diagnostic(`after the failed restore, volume r is listed in state ${String(left.state)}; read: ${read.ok ? 'succeeded' : read.err.code}; write: ${write.ok ? 'succeeded' : write.err.code}`)
        assert.notEqual(left.state, 'available', 'a half-restored volume is not listed as available')
        assert.ok(!read.ok || Buffer.from(read.value).equals(Buffer.from(pattern(63))), 'a half-restored volume does not read zeros where the backup has data')
      }
    } finally {
      await outcome(g.close(), 'close')
    }
    await f.clear()
    g = await openStorage(storagePath, 'file')
    try {
      for (let i = 0; i < 64; i++) assert.deepEqual(await g.readBlock('a', i), pattern(i))
      const restored = (await g.listVolumes()).find((volume) => volume.name === 'r')
      t.diagnostic(`after the reopen, volume r: ${restored === undefined ? 'absent' : JSON.stringify(restored.state ?? restored)}`)
      if (restored !== undefined) {
        for (let i = 0; i < 64; i++) assert.deepEqual(await g.readBlock('r', i), pattern(i), `a volume r that is listed reads whole (block ${i})`)
      }
      const again = await settled(g.restoreBackup(backupId, { name: 'r2', target }), 'restore again')
      for (let i = 0; i < 64; i++) assert.deepEqual(await g.readBlock(again.id, i), pattern(i))
    } finally {
      await settled(g.close(), 'close')
    }
  })

  // A known limitation, not fixable in GalleonFS's code: LevelDB (inside classic-level's prebuilt
  // binary) reads table files through mmap, with no option to turn that off, so an I/O error on
  // a table file's page is a SIGBUS that kills the process. The README says so.
  it('level: EIO reading a table file rejects the read with IO_ERROR; the process is not killed (LevelDB maps table files: a bad page is SIGBUS)', { todo: 'LevelDB reads table files through mmap: an I/O error there is a SIGBUS (classic-level offers no way to turn mmap off)' }, async (t) => {
    const f = faultyFs()
    const { storagePath, inMount } = newCase('level-read')
    let g = await openStorage(storagePath, 'level')
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M' })
      for (let i = 0; i < 16; i++) await g.writeBlock('a', i, pattern(i), WriteConcern.WriteDurable)
    } finally {
      await settled(g.close(), 'close')
    }
    // Reopened once, LevelDB has moved its log into a table file (.ldb).
    g = await openStorage(storagePath, 'level')
    await settled(g.close(), 'close')
    // The reader runs in a child: a process LevelDB brings down must not take the test runner with it.
    const { modulePath, execArgv } = forkArgs(fileURLToPath(new URL('./support/h60-level-reader.ts', import.meta.url)))
    const child = fork(modulePath, [storagePath], {
      execArgv,
      stdio: ['ignore', 'pipe', 'pipe', 'ipc']
    })
    let output = ''
    child.stdout?.on('data', (chunk: Buffer) => { output += chunk.toString() })
    child.stderr?.on('data', (chunk: Buffer) => { output += chunk.toString() })
    const exited = new Promise<{ code: number | null, signal: string | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
    const ready = await settled(Promise.race([new Promise((resolve) => child.once('message', resolve)), exited]), 'the reader child opens the storage')
    assert.equal(ready, 'ready', `the reader child opened the storage: ${output}`)
    await f.inject({ op: 'read', path: `${inMount}blocks-level/.*\\.ldb$`, count: -1, from: 0, to: 1 << 30 })
    child.send('read')
    const end = await settled(exited, 'the reader child')
    await f.clear()
    t.diagnostic(`reader child: exit ${String(end.code)} signal ${String(end.signal)}; ${output.trim()}`)
    assert.ok(((await f.stats()).fired.read ?? 0) >= 1, 'the read fault fired')
    assert.equal(end.signal, null, `the process was killed by ${String(end.signal)} on a read error`)
    assert.match(output, /read rejected IO_ERROR/)
  })
  it('file: the IO_ERROR of a failed block write and of a compaction that could not read name the segment file', async () => {
    const f = faultyFs()
    const { storagePath, inMount } = newCase('file-messages')
    const background: Error[] = []
    const g = await openStorage(storagePath, 'file', { segmentBytes: 64 * 1024, compactionThreshold: 0.6, onBackgroundError: (err: Error) => { background.push(err) } })
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M' })
      for (let i = 0; i < 48; i++) await g.writeBlock('a', i, pattern(i), WriteConcern.WriteDurable)
      const blocksDir = join(storagePath, 'blocks')
      const segments = (await readdir(blocksDir)).filter((name) => name.startsWith('seg-') && name.endsWith('.log')).sort()
      const first = segments[0] as string
      await f.inject({ op: 'read', path: `${inMount}blocks/${first}`, count: -1, from: 0, to: 1 << 30 })
      await dropCachedPages(blocksDir)
      for (let i = 0; i < 10; i++) await settled(g.writeBlock('a', i, pattern(50_000 + i), WriteConcern.WriteDurable), 'overwrite')
      await settled((async () => { while (background.length === 0) await new Promise((resolve) => setTimeout(resolve, 20)) })(), 'compaction of the unreadable segment')
      await f.clear()
      await f.inject({ op: 'write', path: `${inMount}blocks/seg-`, count: 1 })
      const err = await rejection(g.writeBlock('a', 30, pattern(30_000), WriteConcern.WriteDurable), 'the write that hit EIO')
      const current = (await readdir(blocksDir)).filter((name) => name.startsWith('seg-') && name.endsWith('.log')).sort().at(-1) as string
      assert.equal(err.code, 'IO_ERROR')
      assert.ok(err.message.includes(current), `the write error names the segment it was writing (${current}): ${err.message}`)
      assert.ok((background[0] as Error).message.includes(first), `the compaction error names the segment it could not read (${first}): ${(background[0] as Error).message}`)
    } finally {
      await f.clear()
      await outcome(g.close(), 'close')
    }
  })
})
