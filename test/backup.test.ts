// Backups end to end on the durable default (file block store, directory target): round trips of
// every strategy and chain length, restores of every backup in a chain, dedup, corruption found by
// verify and restore, deletion with garbage collection, a new instance reading the same target,
// cancellation, hooks, progress and bad input.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readdir, readFile, rm, utimes, writeFile, mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, BackupStrategy } from '../src/index.js'
import { DirectoryBackupTarget } from '../backends/directory/index.js'
import { delegatingTarget } from './support/backup-targets.js'
import { bytesOf, seededRandom } from './conformance/fixtures.js'
import { toPieces, toRuns } from '../src/backup/manager.js'

const BS = 4096
const BLOCKS = 512

let root: string
let count = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-backup-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const place = (): string => join(root, String(count++))

async function withInstance (fn: (g: GalleonFS, target: string) => Promise<void>): Promise<void> {
  const target = place()
  const g = await GalleonFS.open({ storagePath: place(), backupTarget: target })
  try { await fn(g, target) } finally { await g.close() }
}

async function image (g: GalleonFS, vol: string): Promise<Buffer> {
  return Buffer.from(await g.read(vol, 0, (await g.getVolume(vol)).sizeBytes))
}

async function chunkFiles (target: string): Promise<string[]> {
  const out: string[] = []
  for (const fan of await readdir(join(target, 'chunks'))) for (const name of await readdir(join(target, 'chunks', fan))) out.push(join(target, 'chunks', fan, name))
  return out
}

describe('backups', () => {
  it('round-trips full, incremental and differential chains; every backup in a chain restores as its point in time', async () => {
    await withInstance(async (g, target) => {
      await g.createVolume({ name: 'db', sizeBytes: BLOCKS * BS, labels: { app: 'db' } })
      const random = seededRandom(5)
      const images: Buffer[] = []
      const backups: string[] = []
      const strategies = [BackupStrategy.Full, BackupStrategy.Incremental, BackupStrategy.Incremental, BackupStrategy.Differential, BackupStrategy.Incremental, BackupStrategy.Full, BackupStrategy.Differential]
      for (const [step, strategy] of strategies.entries()) {
        for (let i = 0; i < 40; i++) await g.writeBlock('db', Math.floor(random() * BLOCKS), bytesOf(BS, step * 1000 + i))
        if (step === 2) await g.trim('db', 10 * BS, 20 * BS)
        if (step === 4) await g.write('db', 3 * BS + 17, Uint8Array.of(1, 2, 3))
        const backup = await g.createBackup('db', { strategy })
        assert.equal(backup.strategy, strategy)
        backups.push(backup.id)
        images.push(await image(g, 'db'))
      }
      const listed = await g.listBackups('db')
      assert.deepEqual(listed.map((b) => b.id), backups)
      // The target's index summarizes them, with a checksum of itself and of each manifest.
      const index = JSON.parse(await readFile(join(target, 'index.json'), 'utf8')) as { checksum: string, index: { backups: Array<{ id: string, base: string | null }> } }
      assert.deepEqual(index.index.backups.map((b) => b.id), backups)
      assert.equal(index.index.backups[1]?.base, backups[0])
      assert.equal((await g.verifyBackup(backups[2] as string)).indexCurrent, true)
      assert.equal(listed[1]?.baseId, backups[0])
      assert.equal(listed[2]?.baseId, backups[1])
      assert.equal(listed[3]?.baseId, backups[0], 'a differential builds on the last full')
      assert.equal(listed[6]?.baseId, backups[5])
      assert.ok((listed[1]?.blocks ?? 0) <= 40, 'an incremental holds only the changed blocks')
      for (const [i, id] of backups.entries()) {
        const restored = await g.restoreBackup(id, { name: `r${i}` })
        assert.deepEqual(restored.labels, { app: 'db' })
        assert.ok((await image(g, restored.name)).equals(images[i] as Buffer), `backup ${i} (${strategies[i]}) restores as its point in time`)
        const check = await g.verifyBackup(id)
        assert.equal(check.ok, true)
      }
    })
  })

  it('a first incremental or differential is a full; the snapshots kept are only the ones later backups build on', async () => {
    await withInstance(async (g) => {
      await g.createVolume({ name: 'v', sizeBytes: BLOCKS * BS })
      await g.writeBlock('v', 1, bytesOf(BS, 1))
      const first = await g.createBackup('v', { strategy: 'incremental' })
      assert.equal(first.strategy, 'full')
      assert.equal(first.requestedStrategy, 'incremental')
      await g.createBackup('v', { strategy: 'incremental' })
      const third = await g.createBackup('v', { strategy: 'incremental' })
      const names = (await g.listSnapshots('v')).map((s) => s.name).sort()
      assert.deepEqual(names, [`backup-${first.id}`, `backup-${third.id}`].sort())
      // The user deletes the base snapshot: the next incremental falls back to a differential-free full chain start.
      await g.deleteSnapshot('v', `backup-${third.id}`)
      const fourth = await g.createBackup('v', { strategy: 'incremental' })
      assert.equal(fourth.baseId, first.id, 'the newest backup whose snapshot still exists is the base')
    })
  })

  it('deduplicates chunks across volumes and backups, and skips zeros', async () => {
    await withInstance(async (g, target) => {
      const data = new Uint8Array(64 * BS)
      for (let i = 0; i < 64; i++) data.set(bytesOf(BS, 77 + i), i * BS)
      for (const name of ['a', 'b']) {
        await g.createVolume({ name, sizeBytes: BLOCKS * BS })
        await g.write(name, 0, data)
        await g.write(name, 128 * BS, new Uint8Array(64 * BS)) // written zeros: stored as nothing
      }
      const a = await g.createBackup('a')
      const b = await g.createBackup('b')
      assert.equal(a.newChunks, 1)
      assert.equal(b.newChunks, 0, 'the same data on another volume adds no chunk')
      assert.equal(b.storedBytes, 0)
      assert.equal((await chunkFiles(target)).length, 1)
      const again = await g.createBackup('a')
      assert.equal(again.newChunks, 0)
    })
  })

  it('compresses what compresses', async () => {
    await withInstance(async (g) => {
      await g.createVolume({ name: 'v', sizeBytes: BLOCKS * BS })
      await g.write('v', 0, new Uint8Array(64 * BS).fill(0x61))
      const backup = await g.createBackup('v')
      assert.ok(backup.storedBytes < backup.bytes / 20, `${backup.storedBytes} stored for ${backup.bytes} bytes of 'a'`)
    })
  })

  it('finds a damaged or missing chunk in verify and refuses to restore from it', async () => {
    await withInstance(async (g, target) => {
      await g.createVolume({ name: 'v', sizeBytes: BLOCKS * BS })
      await g.write('v', 0, bytesOf(200 * BS, 9))
      const full = await g.createBackup('v')
      const fullChunks = await chunkFiles(target)
      await g.writeBlock('v', 300, bytesOf(BS, 10))
      const incremental = await g.createBackup('v', { strategy: 'incremental' })
      const victim = fullChunks[0] as string
      const bytes = await readFile(victim)
      bytes[bytes.length - 1] = (bytes[bytes.length - 1] as number) ^ 0xff
      await writeFile(victim, bytes)
      const report = await g.verifyBackup(incremental.id)
      assert.equal(report.ok, false)
      assert.equal(report.backupsChecked, 2)
      assert.equal(report.problems.length, 1)
      assert.equal(report.problems[0]?.code, 'CHECKSUM_MISMATCH')
      assert.equal(report.problems[0]?.backupId, full.id)
      await assert.rejects(g.restoreBackup(incremental.id, { name: 'broken' }), { code: 'CHECKSUM_MISMATCH' })
      assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['v'], 'a failed restore leaves no half-restored volume')
      await rm(victim)
      assert.equal((await g.verifyBackup(full.id)).problems[0]?.code, 'CORRUPTION')
    })
  })

  it('deletes backups with garbage collection, refusing to break a chain unless forced', async () => {
    await withInstance(async (g, target) => {
      await g.createVolume({ name: 'v', sizeBytes: BLOCKS * BS })
      await g.write('v', 0, bytesOf(100 * BS, 1))
      const full = await g.createBackup('v')
      await g.write('v', 200 * BS, bytesOf(10 * BS, 2))
      const inc = await g.createBackup('v', { strategy: 'incremental' })
      await g.createVolume({ name: 'other', sizeBytes: BLOCKS * BS })
      await g.write('other', 0, bytesOf(3 * BS, 3))
      const other = await g.createBackup('other')
      const before = (await chunkFiles(target)).length
      await assert.rejects(g.deleteBackup(full.id), { code: 'BUSY', message: new RegExp(inc.id) })
      // Its chunks are fresh: by default they are spared for an hour (another process may be
      // taking a backup that names them), and collected by a deletion after that.
      const spared = await g.deleteBackup(inc.id)
      assert.deepEqual(spared.deletedBackups, [inc.id])
      assert.equal(spared.deletedChunks, 0)
      assert.equal((await chunkFiles(target)).length, before)
      const later = await g.createBackup('v', { strategy: 'incremental' })
      const result = await g.deleteBackup(later.id, { chunkGraceSeconds: 0 })
      assert.deepEqual(result.deletedBackups, [later.id])
      assert.ok(result.deletedChunks >= 1)
      await assert.rejects(g.deleteBackup(full.id, { chunkGraceSeconds: -1 }), { code: 'INVALID_ARGUMENT' })
      const forced = await g.deleteBackup(full.id, { force: true, chunkGraceSeconds: 0 })
      assert.deepEqual(forced.deletedBackups, [full.id])
      assert.equal((await chunkFiles(target)).length, before - result.deletedChunks - forced.deletedChunks)
      assert.deepEqual((await g.listBackups()).map((b) => b.id), [other.id])
      assert.equal((await g.verifyBackup(other.id)).ok, true)
      assert.equal((await g.verifyBackup(other.id)).indexCurrent, true)
      const index = JSON.parse(await readFile(join(target, 'index.json'), 'utf8')) as { index: { backups: Array<{ id: string }> } }
      assert.deepEqual(index.index.backups.map((b) => b.id), [other.id], 'deletions rewrite the index')
      await assert.rejects(g.getBackup(full.id), { code: 'BACKUP_NOT_FOUND' })
      assert.deepEqual((await g.listSnapshots('v')).map((s) => s.name), [], 'the deleted backups\' snapshots are gone')
    })
  })

  it('a new instance pointed at the same target lists and restores every backup, also after the source volume is gone', async () => {
    const target = place()
    const first = await GalleonFS.open({ storagePath: place(), backupTarget: target })
    await first.createVolume({ name: 'v', sizeBytes: BLOCKS * BS })
    await first.write('v', 0, bytesOf(50 * BS, 4))
    const full = await first.createBackup('v')
    await first.write('v', 10 * BS, bytesOf(5 * BS, 5))
    const inc = await first.createBackup('v', { strategy: 'incremental' })
    const expected = await image(first, 'v')
    await first.deleteVolume('v')
    await first.close()
    const second = await GalleonFS.open({ inMemory: true })
    try {
      const listed = await second.listBackups('v', { target })
      assert.deepEqual(listed.map((b) => b.id), [full.id, inc.id])
      const restored = await second.restoreBackup(inc.id, { target })
      assert.equal(restored.name, `v-restored-${inc.id.slice(0, 8)}`)
      assert.ok((await image(second, restored.name)).equals(expected))
      // Over an existing, larger volume: its old contents go.
      await second.createVolume({ name: 'big', sizeBytes: 2 * BLOCKS * BS })
      await second.write('big', (BLOCKS + 5) * BS, bytesOf(BS, 6))
      await second.restoreBackup(full.id, { target, volume: 'big' })
      const big = await image(second, 'big')
      assert.ok(big.subarray(0, 50 * BS).equals(Buffer.from(bytesOf(50 * BS, 4))))
      assert.ok(big.subarray(50 * BS).every((b) => b === 0))
      await second.createVolume({ name: 'small', sizeBytes: BS })
      await assert.rejects(second.restoreBackup(full.id, { target, volume: 'small' }), { code: 'OUT_OF_RANGE' })
    } finally {
      await second.close()
    }
  })

  it('a failed restore over an existing volume puts it back as it was', async () => {
    await withInstance(async (g, target) => {
      await g.createVolume({ name: 'src', sizeBytes: BLOCKS * BS })
      await g.write('src', 0, bytesOf(300 * BS, 1))
      const backup = await g.createBackup('src')
      await g.createVolume({ name: 'prod', sizeBytes: BLOCKS * BS })
      await g.write('prod', 0, bytesOf(BLOCKS * BS, 2))
      await rm((await chunkFiles(target))[0] as string)
      await assert.rejects(g.restoreBackup(backup.id, { volume: 'prod' }), { code: 'CORRUPTION' })
      assert.ok((await image(g, 'prod')).equals(Buffer.from(bytesOf(BLOCKS * BS, 2))), 'prod reads as before the failed restore')
      assert.deepEqual(await g.listSnapshots('prod'), [], 'the safety snapshot is gone')
    })
  })

  it('deletes no chunk while a manifest on the target cannot be read, so that its backup survives', async () => {
    await withInstance(async (g, target) => {
      await g.createVolume({ name: 'a', sizeBytes: BLOCKS * BS })
      await g.write('a', 0, bytesOf(8 * BS, 11))
      const kept = await g.createBackup('a')
      await g.createVolume({ name: 'b', sizeBytes: BLOCKS * BS })
      await g.write('b', 0, bytesOf(8 * BS, 12))
      const doomed = await g.createBackup('b')
      const file = join(target, 'manifests', `${kept.id}.json`)
      const good = await readFile(file)
      const damaged = Buffer.from(good)
      damaged.writeUInt8(damaged.readUInt8(damaged.length - 10) ^ 0x01, damaged.length - 10)
      await writeFile(file, damaged)
      const errors: string[] = []
      g.on('io:error', (event) => errors.push(event.message))
      const result = await g.deleteBackup(doomed.id, { chunkGraceSeconds: 0 })
      assert.deepEqual(result.deletedBackups, [doomed.id])
      assert.equal(result.deletedChunks, 0)
      assert.ok(errors.some((message) => message.includes(kept.id) && /no chunk was deleted/.test(message)), errors.join('\n'))
      await writeFile(file, good)
      assert.equal((await g.verifyBackup(kept.id)).ok, true)
      // Readable again: the next deletion collects what the deleted backup left.
      await g.write('a', 0, bytesOf(8 * BS, 13))
      const extra = await g.createBackup('a', { strategy: 'incremental' })
      assert.ok((await g.deleteBackup(extra.id, { chunkGraceSeconds: 0 })).deletedChunks >= 2)
      assert.equal((await g.verifyBackup(kept.id)).ok, true)
    })
  })

  it('refuses to store a backup whose chunk vanished while it ran (a deletion in another process), and touches the chunks it reuses', async () => {
    const dir = place()
    const directory = new DirectoryBackupTarget({ path: dir })
    let put: string | undefined
    let vanished = false
    const target = delegatingTarget(directory, 'racing', {
      // Without touchChunk and chunkTime: reuse is checked with hasChunk.
      touchChunk: undefined,
      chunkTime: undefined,
      hasChunk: async (id) => {
        // The check before the manifest: another process's garbage collection got there first.
        if (id === put && !vanished) { vanished = true; await directory.deleteChunk(id); return false }
        return await directory.hasChunk(id)
      },
      putChunk: async (id, data) => { put ??= id; await directory.putChunk(id, data) }
    })
    const g = await GalleonFS.open({ storagePath: place() })
    try {
      await g.createVolume({ name: 'v', sizeBytes: BLOCKS * BS })
      await g.write('v', 0, bytesOf(8 * BS, 21))
      await assert.rejects(g.createBackup('v', { target }), (err: Error & { code?: string }) => err.code === 'BUSY' && /deleted .* while the backup ran/.test(err.message))
      assert.deepEqual(await g.listBackups(undefined, { target }), [])
      assert.deepEqual((await g.listSnapshots('v')).map((s) => s.name), [])
      const again = await g.createBackup('v', { target })
      assert.equal((await g.verifyBackup(again.id, { target })).ok, true)

      // A reused chunk is touched: its time moves on, so a deletion elsewhere spares it.
      const chunk = put as string
      const old = new Date(Date.now() - 7200_000)
      const path = join(dir, 'chunks', chunk.slice(0, 2), chunk)
      await utimes(path, old, old)
      assert.ok(Date.now() - (await directory.chunkTime(chunk) as number) > 3600_000)
      await g.createBackup('v', { target: dir })
      assert.ok(Date.now() - (await directory.chunkTime(chunk) as number) < 600_000)
    } finally {
      await g.close()
    }
  })

  it('one target spelled two ways is one target: deleting a backup never collects the chunks of one being taken', async () => {
    await withInstance(async (g, target) => {
      await g.createVolume({ name: 'v', sizeBytes: BLOCKS * BS })
      await g.write('v', 0, bytesOf(BLOCKS * BS, 3))
      const first = await g.createBackup('v')
      await g.write('v', 0, bytesOf(BLOCKS * BS, 4))
      const taking = g.createBackup('v', { strategy: 'full' })
      await g.deleteBackup(first.id, { target: `${target}/` })
      const second = await taking
      assert.equal((await g.verifyBackup(second.id)).ok, true)
      await assert.rejects(g.listBackups(null as never), { code: 'INVALID_ARGUMENT' })
    })
  })

  it('restores over an existing volume larger than one trim call covers', async () => {
    await withInstance(async (g) => {
      await g.createVolume({ name: 'v', sizeBytes: BLOCKS * BS })
      await g.writeBlock('v', 3, bytesOf(BS, 1))
      const backup = await g.createBackup('v')
      await g.createVolume({ name: 'huge', sizeBytes: '600M' })
      await g.writeBlock('huge', 150_000, bytesOf(BS, 2))
      await g.restoreBackup(backup.id, { volume: 'huge' })
      assert.deepEqual(await g.readBlock('huge', 3), bytesOf(BS, 1))
      assert.deepEqual(await g.readBlock('huge', 150_000), new Uint8Array(BS))
    })
  })

  it('reports progress, runs hooks, and cancels cleanly', async () => {
    await withInstance(async (g, target) => {
      await g.createVolume({ name: 'v', sizeBytes: BLOCKS * BS })
      await g.write('v', 0, bytesOf(BLOCKS * BS, 8))
      const seen: Array<[number, number]> = []
      g.on('backup:progress', (event) => seen.push([event.bytesDone, event.bytesTotal]))
      const order: string[] = []
      const backup = await g.createBackup('v', { hooks: { pre: () => { order.push('pre') }, post: (b) => { order.push(`post ${b.id}`) } } })
      assert.deepEqual(order, ['pre', `post ${backup.id}`])
      assert.deepEqual(seen[0], [0, BLOCKS * BS])
      assert.deepEqual(seen.at(-1), [BLOCKS * BS, BLOCKS * BS])
      assert.ok(seen.every(([done], i) => i === 0 || done >= (seen[i - 1] as [number, number])[0]))
      // A failing pre-hook: no snapshot, no backup.
      await assert.rejects(g.createBackup('v', { strategy: 'incremental', hooks: { pre: () => { throw new Error('database would not freeze') } } }), { code: 'HOOK_FAILED', message: /database would not freeze/ })
      assert.equal((await g.listBackups('v')).length, 1)
      // Cancelled mid-way: nothing recorded, no leftover snapshot.
      await g.write('v', 0, bytesOf(BLOCKS * BS, 9))
      const controller = new AbortController()
      const cancelled = g.createBackup('v', { strategy: 'incremental', signal: controller.signal })
      g.once('backup:progress', () => controller.abort())
      await assert.rejects(cancelled, { code: 'CANCELLED' })
      assert.equal((await g.listBackups('v')).length, 1)
      assert.deepEqual((await g.listSnapshots('v')).map((s) => s.name), [`backup-${backup.id}`])
      const retry = await g.createBackup('v', { strategy: 'incremental' })
      assert.equal(retry.baseId, backup.id)
      assert.equal((await readdir(join(target, 'manifests'))).length, 2)
    })
  })

  it('calls an onProgress listener of a backup and of a restore; a listener that throws breaks neither', async () => {
    await withInstance(async (g) => {
      await g.createVolume({ name: 'v', sizeBytes: BLOCKS * BS })
      await g.write('v', 0, bytesOf(BLOCKS * BS, 21))
      const backupSeen: Array<[number, number]> = []
      const backup = await g.createBackup('v', { onProgress: ({ bytesDone, bytesTotal }) => { backupSeen.push([bytesDone, bytesTotal]) } })
      assert.deepEqual(backupSeen[0], [0, BLOCKS * BS])
      assert.deepEqual(backupSeen.at(-1), [BLOCKS * BS, BLOCKS * BS])
      const restoreSeen: Array<[number, number]> = []
      const restored = await g.restoreBackup(backup.id, { name: 'r', onProgress: ({ bytesDone, bytesTotal }) => { restoreSeen.push([bytesDone, bytesTotal]) } })
      assert.deepEqual(restoreSeen[0], [0, BLOCKS * BS])
      assert.deepEqual(restoreSeen.at(-1), [BLOCKS * BS, BLOCKS * BS])
      assert.ok(restoreSeen.every(([done], i) => i === 0 || done >= (restoreSeen[i - 1] as [number, number])[0]))
      assert.ok((await image(g, restored.name)).equals(await image(g, 'v')))
      const throwing = (): void => { throw new Error('a broken progress bar') }
      const again = await g.createBackup('v', { strategy: 'incremental', onProgress: throwing })
      const second = await g.restoreBackup(again.id, { name: 'r2', onProgress: throwing })
      assert.ok((await image(g, second.name)).equals(await image(g, 'v')))
    })
  })

  it('cuts changed blocks into chunks at fixed places: runs at chunk multiples, pieces within a window', () => {
    assert.deepEqual(toRuns([0, 1, 2, 3, 4, 7, 8, 9], 4), [[0, 4], [4, 1], [7, 1], [8, 2]])
    assert.deepEqual(toPieces(toRuns([0, 1, 2, 3, 4, 7, 8, 9], 4), 4, 8), [[[0, 4]], [[4, 1], [7, 1]], [[8, 2]]])
    // Scattered blocks of one window share a chunk; a new window starts a new one.
    assert.deepEqual(toPieces(toRuns([1, 5, 9, 17, 40], 256), 256, 1024), [[[1, 1], [5, 1], [9, 1], [17, 1], [40, 1]]])
    assert.deepEqual(toPieces(toRuns([1, 1023, 1024], 256), 256, 1024), [[[1, 1], [1023, 1]], [[1024, 1]]])
  })

  it('round-trips with large blocks', async () => {
    const target = place()
    const g = await GalleonFS.open({ storagePath: place(), blockSize: 65536, backupTarget: target })
    try {
      await g.createVolume({ name: 'v', sizeBytes: 64 * 65536 })
      await g.write('v', 0, bytesOf(40 * 65536, 3))
      const full = await g.createBackup('v')
      await g.writeBlock('v', 50, bytesOf(65536, 4))
      const inc = await g.createBackup('v', { strategy: 'incremental' })
      assert.equal(inc.blocks, 1)
      const restored = await g.restoreBackup(inc.id, { name: 'r' })
      assert.ok((await image(g, restored.name)).equals(await image(g, 'v')))
      assert.equal((await g.verifyBackup(full.id)).ok, true)
    } finally {
      await g.close()
    }
  })

  it('refuses bad input with stable codes', async () => {
    await withInstance(async (g) => {
      await g.createVolume({ name: 'v', sizeBytes: BLOCKS * BS })
      await assert.rejects(g.createBackup('v', { strategy: 'weekly' as never }), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.createBackup('nope'), { code: 'VOLUME_NOT_FOUND' })
      await assert.rejects(g.createBackup('v', { target: { put: 1 } as never }), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.createBackup('v', { target: '' }), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.getBackup('not-a-uuid'), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.getBackup('00000000-0000-4000-8000-000000000000'), { code: 'BACKUP_NOT_FOUND' })
      await assert.rejects(g.restoreBackup('00000000-0000-4000-8000-000000000000', { name: 'x' }), { code: 'BACKUP_NOT_FOUND' })
      await assert.rejects(g.deleteBackup('00000000-0000-4000-8000-000000000000'), { code: 'BACKUP_NOT_FOUND' })
      const backup = await g.createBackup('v')
      await assert.rejects(g.restoreBackup(backup.id, { name: 'v' }), { code: 'VOLUME_EXISTS' })
      await assert.rejects(g.restoreBackup(backup.id, { name: 'a', volume: 'v' }), { code: 'INVALID_ARGUMENT' })
      assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['v'])
    })
  })
})
