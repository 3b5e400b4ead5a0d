// Backups at their edges: cancelled by close() (a backup's snapshot and a half-restored volume are
// removed), a restore killed mid-way (its volume removed at the next open), incrementals never built
// on a broken chain, and restores checked byte for byte against the test's own model of the volume.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, readdir, rm, unlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { GalleonFS, type BackupTarget } from '../src/index.js'
import { expectCode } from './support/assertions.js'
import { DirectoryBackupTarget } from '../backends/directory/index.js'
import { delegatingTarget } from './support/backup-targets.js'
import { scriptArgs, childExit } from './support/child-script.js'

const BS = 4096

let root: string
let count = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-backup-edges-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const place = (): string => join(root, String(count++))

/** A block whose bytes name `seed` (no two seeds give the same block). */
function block (seed: number): Uint8Array {
  const out = new Uint8Array(BS)
  for (let i = 0; i < BS; i++) out[i] = (seed * 131 + i * 7 + 1) & 0xff
  new DataView(out.buffer).setUint32(0, seed + 1, true)
  return out
}

/** The test's own copy of a volume's bytes. */
class Model {
  bytes: Uint8Array
  constructor (blocks: number) { this.bytes = new Uint8Array(blocks * BS) }
  write (index: number, data: Uint8Array): void { this.bytes.set(data, index * BS) }
  image (): Buffer { return Buffer.from(this.bytes) }
}

async function writeBlocks (g: GalleonFS, vol: string, model: Model, first: number, count: number, seed: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    await g.writeBlock(vol, first + i, block(seed + i))
    model.write(first + i, block(seed + i))
  }
}

/** A directory target whose getChunk, putChunk and touchChunk wait, once held, after `passing` more calls. */
function gatedTarget (dir: string): { target: BackupTarget, hold: (passing?: number) => void, release: () => void, touched: () => number } {
  const directory = new DirectoryBackupTarget({ path: dir })
  let gate: Promise<void> | undefined
  let open: (() => void) | undefined
  let calls = 0
  let free = 0
  const pass = async (): Promise<void> => {
    calls++
    if (free > 0) free--
    else await gate
  }
  const target = delegatingTarget(directory, 'gated', {
    hasChunk: async (id) => { await pass(); return await directory.hasChunk(id) },
    touchChunk: async (id) => { await pass(); return await directory.touchChunk(id) },
    putChunk: async (id, data) => { await pass(); await directory.putChunk(id, data) },
    getChunk: async (id) => { await pass(); return await directory.getChunk(id) }
  })
  return {
    target,
    hold: (passing = 0) => { free = passing; gate = new Promise((resolve) => { open = resolve }) },
    release: () => { gate = undefined; open?.() },
    touched: () => calls
  }
}

/** Volume `v` of `blocks` blocks, written in sixteen 1 MiB calls with distinct blocks; returns its model. */
async function sixteenChunks (g: GalleonFS, blocks: number): Promise<Model> {
  const model = new Model(blocks)
  await g.createVolume({ name: 'v', sizeBytes: blocks * BS })
  for (let i = 0; i < blocks; i += 256) {
    const data = new Uint8Array(256 * BS)
    for (let j = 0; j < 256; j++) data.set(block(i + j), j * BS)
    await g.write('v', i * BS, data)
    model.bytes.set(data, i * BS)
  }
  return model
}

async function until (condition: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 2))
  }
}

describe('backup edges', () => {
  it('close() cancels a backup under way: it rejects with CANCELLED and leaves no snapshot behind', async () => {
    const storagePath = place()
    const gated = gatedTarget(place())
    let g = await GalleonFS.open({ storagePath })
    const blocks = 4096
    await g.createVolume({ name: 'v', sizeBytes: blocks * BS })
    // Sixteen chunks of 1 MiB: the backup's eight workers wait at the gate with the rest unread.
    for (let i = 0; i < blocks; i += 256) await g.write('v', i * BS, new Uint8Array(256 * BS).fill(i / 256 + 1))
    gated.hold()
    const taking = g.createBackup('v', { target: gated.target })
    await until(() => gated.touched() > 0, 'the backup to reach the target')
    const closing = g.close()
    gated.release()
    await expectCode(taking, 'CANCELLED')
    await closing
    g = await GalleonFS.open({ storagePath })
    try {
      assert.deepEqual(await g.listBackups('v', { target: gated.target }), [])
      assert.deepEqual((await g.listSnapshots('v')).map((s) => s.name), [], 'the cancelled backup deleted its snapshot')
      // A backup asked for while the instance closes is refused, or cancelled if it got in first.
      const closingAgain = g.close()
      const late = await g.createBackup('v', { target: gated.target }).then(() => undefined, (err: { code?: string }) => err.code)
      assert.ok(late === 'NOT_OPEN' || late === 'CANCELLED', `a backup during close() was ${late === undefined ? 'taken' : late}`)
      await closingAgain
    } finally { await g.close() }
  })

  it('close() cancels a restore into a new volume: it rejects with CANCELLED and the half-restored volume is removed', async () => {
    const storagePath = place()
    const gated = gatedTarget(place())
    let g = await GalleonFS.open({ storagePath })
    const blocks = 4096
    const model = await sixteenChunks(g, blocks)
    const backup = await g.createBackup('v', { target: gated.target })
    let restoredBytes = 0
    gated.hold(4)
    const restoring = g.restoreBackup(backup.id, { name: 'copy', target: gated.target, onProgress: (p) => { restoredBytes = p.bytesDone } })
    await until(() => restoredBytes > 0, 'the restore to write its first chunk')
    const closing = g.close()
    gated.release()
    await expectCode(restoring, 'CANCELLED')
    await closing
    g = await GalleonFS.open({ storagePath })
    try {
      assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['v'], 'the half-restored volume is gone')
      // The name is free again, and the backup restores in full.
      const copy = await g.restoreBackup(backup.id, { name: 'copy', target: gated.target })
      assert.ok(Buffer.from(await g.read(copy.name, 0, copy.sizeBytes)).equals(model.image()))
    } finally { await g.close() }
  })

  it('a restore into a new volume killed with SIGKILL leaves no half-restored volume after the next open', async () => {
    const storagePath = place()
    const targetPath = place()
    let g = await GalleonFS.open({ storagePath })
    const model = await sixteenChunks(g, 4096)
    const backup = await g.createBackup('v', { target: targetPath })
    await g.close()
    // A child process restores with a target that stops answering after four chunks, and is killed there.
    const child = spawn(process.execPath, [...scriptArgs(fileURLToPath(new URL('./fixtures/restore-and-hang.ts', import.meta.url))), storagePath, targetPath, backup.id], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
    try {
      await until(() => out.includes('holding'), 'the child\'s restore to stop mid-way', 60_000)
    } finally {
      child.kill('SIGKILL')
      await childExit(child)
    }
    g = await GalleonFS.open({ storagePath })
    try {
      assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['v'], 'the half-restored volume is removed at open')
      const copy = await g.restoreBackup(backup.id, { name: 'copy', target: targetPath })
      assert.ok(Buffer.from(await g.read(copy.name, 0, copy.sizeBytes)).equals(model.image()))
    } finally { await g.close() }
  })

  it('an incremental is not built on a backup whose own base is gone from the target: it is taken as a full', async () => {
    const target = place()
    const g = await GalleonFS.open({ storagePath: place(), backupTarget: target })
    try {
      const model = new Model(64)
      await g.createVolume({ name: 'v', sizeBytes: 64 * BS })
      await writeBlocks(g, 'v', model, 0, 8, 100)
      const full = await g.createBackup('v', { strategy: 'full' })
      await writeBlocks(g, 'v', model, 8, 4, 200)
      const first = await g.createBackup('v', { strategy: 'incremental' })
      assert.equal(first.baseId, full.id)
      // The full's manifest is lost (a botched cleanup, a damaged disk).
      await unlink(join(target, 'manifests', `${full.id}.json`))
      await writeBlocks(g, 'v', model, 12, 4, 300)
      const next = await g.createBackup('v', { strategy: 'incremental' })
      assert.equal(next.strategy, 'full', 'a chain that cannot be restored is no base')
      const restored = await g.restoreBackup(next.id, { name: 'r' })
      assert.ok(Buffer.from(await g.read('r', 0, restored.sizeBytes)).equals(model.image()))
      await assert.rejects(g.restoreBackup(first.id, { name: 'r2' }), { code: 'CORRUPTION' })
    } finally { await g.close() }
  })
  it('in a long chain broken in the middle, no backup above the break is a base; the next incremental builds on the last whole one', async () => {
    const target = place()
    const g = await GalleonFS.open({ storagePath: place(), backupTarget: target })
    try {
      const model = new Model(64)
      await g.createVolume({ name: 'v', sizeBytes: 64 * BS })
      await writeBlocks(g, 'v', model, 0, 8, 100)
      const chain = [await g.createBackup('v', { strategy: 'full' })]
      for (let i = 1; i <= 6; i++) {
        await writeBlocks(g, 'v', model, 8 + i, 1, 100 + i)
        const next = await g.createBackup('v', { strategy: 'incremental' })
        assert.equal(next.baseId, chain[chain.length - 1]?.id)
        chain.push(next)
      }
      // The third backup's manifest is lost: the fourth to seventh build on a broken chain.
      await unlink(join(target, 'manifests', `${(chain[2] as { id: string }).id}.json`))
      await writeBlocks(g, 'v', model, 20, 2, 300)
      const next = await g.createBackup('v', { strategy: 'incremental' })
      assert.equal(next.strategy, 'incremental')
      // Not the newest backup, whose snapshot is kept for the next incremental: its chain is broken.
      // One below the break whose snapshot is still there (the full's is kept for differentials).
      const at = chain.findIndex((b) => b.id === next.baseId)
      assert.ok(at === 0 || at === 1, `the base is backup ${at} of the chain, above the break at 2`)
      const restored = await g.restoreBackup(next.id, { name: 'r' })
      assert.ok(Buffer.from(await g.read('r', 0, restored.sizeBytes)).equals(model.image()))
    } finally { await g.close() }
  })

  it('incrementals across a snapshot revert, an expansion and a key rotation restore byte for byte; no plaintext reaches the target', async () => {
    const target = place()
    const g = await GalleonFS.open({ storagePath: place(), backupTarget: target })
    try {
      await g.createStorageClass({ name: 'sealed', provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
      let model = new Model(64)
      await g.createVolume({ name: 'v', sizeBytes: 64 * BS, storageClass: 'sealed' })
      const taken: Array<[string, Buffer]> = []
      const backup = async (strategy: 'full' | 'incremental' | 'differential'): Promise<void> => {
        const made = await g.createBackup('v', { strategy })
        assert.equal(made.encrypted, true)
        taken.push([made.id, model.image()])
      }
      await writeBlocks(g, 'v', model, 0, 10, 1000)
      await g.createSnapshot('v', 'early')
      const early = model.image()
      await writeBlocks(g, 'v', model, 5, 15, 2000)
      await backup('full')
      await g.restoreSnapshot('v', 'early')
      model.bytes = new Uint8Array(early)
      await backup('incremental')
      await g.expandVolume('v', 128 * BS)
      const grown = new Model(128)
      grown.bytes.set(model.bytes)
      model = grown
      await backup('incremental')
      await writeBlocks(g, 'v', model, 60, 10, 3000)
      await backup('differential')
      await g.rotateVolumeKey('v', { wait: true })
      await writeBlocks(g, 'v', model, 100, 3, 4000)
      await backup('incremental')
      for (const [id, image] of taken) {
        const restored = await g.restoreBackup(id, { name: `r-${id.slice(0, 8)}` })
        assert.ok(Buffer.from(await g.read(restored.name, 0, restored.sizeBytes)).equals(image), `backup ${id} restores as it was taken`)
      }
      const files: string[] = []
      const walk = async (dir: string): Promise<void> => {
        for (const entry of await readdir(dir, { withFileTypes: true })) {
          if (entry.isDirectory()) await walk(join(dir, entry.name))
          else files.push(join(dir, entry.name))
        }
      }
      await walk(target)
      const samples = [1000, 2005, 3000, 4002].map((seed) => Buffer.from(block(seed).subarray(0, 64)))
      for (const file of files) {
        const bytes = await readFile(file)
        for (const sample of samples) assert.ok(!bytes.includes(sample), `plaintext of the volume in ${file}`)
      }
    } finally { await g.close() }
  })

  it('a directory given by path that is no backup target yet is refused by calls that read it, not made one; the configured target is made on first use', async () => {
    const configured = place()
    const g = await GalleonFS.open({ storagePath: place(), backupTarget: configured })
    try {
      await g.createVolume({ name: 'v', sizeBytes: 16 * BS })
      await g.writeBlock('v', 0, block(1))
      // The configured default target lists as empty before any backup, and is made.
      assert.deepEqual(await g.listBackups(), [])
      const backup = await g.createBackup('v')
      const mistyped = join(root, 'no-such-target-dir')
      const names = ['no backups on', 'it is not a backup target', 'galleonfs-backup.json', 'check the path']
      await expectCode(g.listBackups('v', { target: mistyped }), 'BACKUP_NOT_FOUND', ...names, mistyped)
      // One call at a time: started together, a later one could reject while an earlier one is
      // awaited, which node:test reports as an unhandled rejection.
      for (const call of [
        () => g.getBackup(backup.id, { target: mistyped }),
        () => g.verifyBackup(backup.id, { target: mistyped }),
        () => g.restoreBackup(backup.id, { name: 'r', target: mistyped }),
        () => g.deleteBackup(backup.id, { target: mistyped, force: true })
      ]) await expectCode(call(), 'BACKUP_NOT_FOUND', `no backup "${backup.id}" on ${mistyped}`, 'it is not a backup target')
      // Nothing was made there, and the backup is untouched where it is.
      await assert.rejects(readdir(mistyped), { code: 'ENOENT' })
      // An existing directory that holds no target is refused the same way, and left as it was.
      const plain = place()
      await (await import('node:fs/promises')).mkdir(plain)
      await expectCode(g.listBackups(undefined, { target: plain }), 'BACKUP_NOT_FOUND', 'it is not a backup target')
      assert.deepEqual(await readdir(plain), [])
      assert.deepEqual((await g.listBackups('v')).map((b) => b.id), [backup.id])
      assert.equal((await g.verifyBackup(backup.id)).ok, true)
      // createBackup to a new path makes it a target; then it lists.
      const fresh = place()
      const second = await g.createBackup('v', { target: fresh })
      assert.deepEqual((await g.listBackups('v', { target: fresh })).map((b) => b.id), [second.id])
      // deleteBackup checks its options first, as createBackup and restoreBackup do.
      await expectCode(g.deleteBackup(backup.id, null as never), 'INVALID_ARGUMENT', 'deleteBackup() options must be an object')
      await expectCode(g.deleteBackup('00000000-0000-4000-8000-000000000000', { chunkGraceSeconds: -1 }), 'INVALID_ARGUMENT', 'chunkGraceSeconds')
      assert.deepEqual((await g.listBackups('v')).map((b) => b.id), [backup.id])
    } finally { await g.close() }
  })
})
