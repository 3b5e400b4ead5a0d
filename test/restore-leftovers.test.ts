// What an interrupted or finished restore leaves behind: a restore into a new volume killed with
// SIGKILL right before or after it creates the volume, or mid-copy (the next open removes the
// volume, and a restore under the same name works), and a safety snapshot that cannot be deleted
// once the restore is done or put back (reported, and deleted at a later open, never reverted to).
// Run with GALLEON_RESTORE_LEFTOVERS_CHILD set, this file is the child process of the SIGKILL tests.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS, type IoErrorEvent } from '../src/index.js'
import { DirectoryBackupTarget } from '../backends/directory/index.js'
import { delegatingTarget } from './support/backup-targets.js'
import { expectCode } from './support/assertions.js'
import { until } from './support/wait.js'
import { blockPattern } from './support/patterns.js'
import { scriptArgs, childExit } from './support/child-script.js'

const BS = 4096
const BLOCKS = 4096
const CHILD = process.env.GALLEON_RESTORE_LEFTOVERS_CHILD

const pattern = (blocks: number, seed: number): Uint8Array => blockPattern(blocks, seed, BS)

/** The name of the safety snapshot a restore over `volume` took. */
async function safetySnapshotOf (g: GalleonFS, volume: string): Promise<string> {
  const found = (await g.listSnapshots(volume)).find((s) => s.name.startsWith('pre-restore-'))
  assert.ok(found !== undefined, `a pre-restore snapshot of ${volume}`)
  return found.name
}

if (CHILD !== undefined) {
  // Restores BACKUP from TARGET and stops where CHILD says, printing "holding" there, to be killed:
  // before-create / after-create: around the creation of the new volume `copy`;
  // mid-copy: into the new volume `copy` once blocks were written (the target then stops answering);
  // over-with-clone: over `prod`, after cloning its safety snapshot (so that it cannot be deleted).
  const [STORAGE, TARGET, BACKUP] = [process.env.STORAGE, process.env.TARGET, process.env.BACKUP] as [string, string, string]
  const directory = new DirectoryBackupTarget({ path: TARGET })
  const g = await GalleonFS.open({ storagePath: STORAGE })
  const hold = async (): Promise<never> => {
    process.stdout.write('holding\n')
    return await new Promise<never>(() => {})
  }
  let served = 0
  let pinned: Promise<unknown> | undefined
  const target = delegatingTarget(directory, 'stopping', {
    getChunk: async (id) => {
      // Chunks are fetched by several workers at once: the first one clones.
      if (CHILD === 'over-with-clone') await (pinned ??= safetySnapshotOf(g, 'prod').then(async (snapshot) => await g.cloneVolume({ volume: 'prod', snapshot }, 'pinned')))
      if (++served > 4) await hold()
      return await directory.getChunk(id)
    }
  })
  const create = g.createVolume.bind(g)
  g.createVolume = async (options) => {
    if (CHILD === 'before-create') return await hold()
    const volume = await create(options)
    if (CHILD === 'after-create') await hold()
    return volume
  }
  await g.restoreBackup(BACKUP, CHILD === 'over-with-clone' ? { volume: 'prod', target } : { name: 'copy', target })
  process.stdout.write('restored (unexpected)\n')
} else {
  let root: string
  let count = 0
  before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-restore-leftovers-')) })
  after(async () => { await rm(root, { recursive: true, force: true }) })
  const place = (): string => join(root, String(count++))

  async function image (g: GalleonFS, vol: string): Promise<Buffer> {
    return Buffer.from(await g.read(vol, 0, (await g.getVolume(vol)).sizeBytes))
  }

  /** Runs this file as a child in `mode` and kills it with SIGKILL once it says it is holding. */
  async function killedChild (mode: string, storagePath: string, targetPath: string, backupId: string): Promise<void> {
    const child = spawn(process.execPath, [...scriptArgs(fileURLToPath(import.meta.url))], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      env: { ...process.env, GALLEON_RESTORE_LEFTOVERS_CHILD: mode, STORAGE: storagePath, TARGET: targetPath, BACKUP: backupId },
      stdio: ['ignore', 'pipe', 'inherit']
    })
    let out = ''
    child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
    try {
      await until(`the child (${mode}) to reach its point`, () => out.includes('holding') || child.exitCode !== null, 60_000)
    } finally {
      child.kill('SIGKILL')
      await childExit(child)
    }
    assert.ok(out.includes('holding'), `the child ended otherwise: ${out}`)
  }

  /** An instance with volume `src` (pattern 5) backed up to a new target, closed again. */
  async function backedUp (): Promise<{ storagePath: string, targetPath: string, backupId: string }> {
    const storagePath = place()
    const targetPath = place()
    const g = await GalleonFS.open({ storagePath })
    try {
      await g.createVolume({ name: 'src', sizeBytes: BLOCKS * BS })
      await g.write('src', 0, pattern(BLOCKS, 5))
      const backup = await g.createBackup('src', { target: targetPath })
      return { storagePath, targetPath, backupId: backup.id }
    } finally { await g.close() }
  }

  describe('a restore into a new volume killed with SIGKILL', () => {
    for (const mode of ['before-create', 'after-create', 'mid-copy']) {
      it(`${mode}: the next open removes the volume, and a restore under the same name then works`, async () => {
        const { storagePath, targetPath, backupId } = await backedUp()
        await killedChild(mode, storagePath, targetPath, backupId)
        let g = await GalleonFS.open({ storagePath })
        try {
          await expectCode(g.getVolume('copy'), 'VOLUME_NOT_FOUND')
          assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['src'], 'nothing of the interrupted restore is left')
          const restored = await g.restoreBackup(backupId, { name: 'copy', target: targetPath })
          assert.equal(restored.name, 'copy')
          assert.ok((await image(g, 'copy')).equals(Buffer.from(pattern(BLOCKS, 5))), 'the new restore is complete')
        } finally { await g.close() }
        // The finished restore is not taken for an interrupted one at the next open.
        g = await GalleonFS.open({ storagePath })
        try {
          assert.ok((await image(g, 'copy')).equals(Buffer.from(pattern(BLOCKS, 5))))
        } finally { await g.close() }
      })
    }
  })

  describe('a safety snapshot that cannot be deleted (a clone reads from it)', () => {
    /** A target that clones prod's safety snapshot as `pinned` before serving the first chunk, and fails after `failAfter` chunks. */
    function pinningTarget (g: GalleonFS, path: string, failAfter = Infinity): ReturnType<typeof delegatingTarget> {
      const directory = new DirectoryBackupTarget({ path })
      let served = 0
      let pinned: Promise<unknown> | undefined
      return delegatingTarget(directory, 'pinning', {
        getChunk: async (id) => {
          // Chunks are fetched by several workers at once: the first one clones.
          await (pinned ??= safetySnapshotOf(g, 'prod').then(async (snapshot) => await g.cloneVolume({ volume: 'prod', snapshot }, 'pinned')))
          if (++served > failAfter) throw new Error('target unreachable')
          return await directory.getChunk(id)
        }
      })
    }

    for (const outcome of ['completed', 'failed and put back'] as const) {
      it(`a restore that ${outcome}: reported with io:error, kept, and deleted at an open once it can be (the volume is not reverted)`, async () => {
        const { storagePath, targetPath, backupId } = await backedUp()
        let g = await GalleonFS.open({ storagePath })
        const prod = pattern(BLOCKS, 6)
        const expected = Buffer.from(outcome === 'completed' ? pattern(BLOCKS, 5) : prod)
        let snapshot: string
        try {
          await g.createVolume({ name: 'prod', sizeBytes: BLOCKS * BS })
          await g.write('prod', 0, prod)
          const errors: IoErrorEvent[] = []
          g.on('io:error', (event) => { errors.push(event) })
          const restoring = g.restoreBackup(backupId, { volume: 'prod', target: pinningTarget(g, targetPath, outcome === 'completed' ? Infinity : 4) })
          if (outcome === 'completed') await restoring
          else await assert.rejects(restoring, /target unreachable/)
          snapshot = await safetySnapshotOf(g, 'prod')
          const report = errors.find((event) => event.message.includes(snapshot))
          assert.ok(report !== undefined, `the failed deletion of ${snapshot} is reported: ${JSON.stringify(errors)}`)
          assert.equal(report.code, 'BUSY')
          assert.equal(report.volumeName, 'prod')
          assert.ok((await image(g, 'prod')).equals(expected))
          await g.write('prod', 0, pattern(1, 9))
        } finally { await g.close() }
        const written = Buffer.concat([Buffer.from(pattern(1, 9)), expected.subarray(BS)])
        // While the clone holds it, each open reports it again; the volume keeps its writes.
        g = await GalleonFS.open({ storagePath })
        try {
          const errors: IoErrorEvent[] = []
          g.on('io:error', (event) => { errors.push(event) })
          await until('the snapshot left behind is reported at open', () => errors.some((event) => event.message.includes(snapshot)))
          assert.ok((await image(g, 'prod')).equals(written), 'not reverted to the safety snapshot')
          await g.deleteVolume('pinned')
        } finally { await g.close() }
        g = await GalleonFS.open({ storagePath })
        try {
          assert.deepEqual((await g.listSnapshots('prod')).map((s) => s.name), [], 'the safety snapshot is deleted once nothing holds it')
          assert.ok((await image(g, 'prod')).equals(written), 'not reverted to the safety snapshot')
        } finally { await g.close() }
      })
    }

    it('a restore over a volume killed with SIGKILL: the next open puts it back, reports the snapshot it cannot delete, and a later open deletes it', async () => {
      const { storagePath, targetPath, backupId } = await backedUp()
      let g = await GalleonFS.open({ storagePath })
      const prod = Buffer.from(pattern(BLOCKS, 6))
      try {
        await g.createVolume({ name: 'prod', sizeBytes: BLOCKS * BS })
        await g.write('prod', 0, prod)
      } finally { await g.close() }
      await killedChild('over-with-clone', storagePath, targetPath, backupId)
      const written = Buffer.concat([Buffer.from(pattern(1, 9)), prod.subarray(BS)])
      let snapshot: string
      g = await GalleonFS.open({ storagePath })
      try {
        const errors: IoErrorEvent[] = []
        g.on('io:error', (event) => { errors.push(event) })
        snapshot = await safetySnapshotOf(g, 'prod')
        await until('the snapshot it cannot delete is reported', () => errors.some((event) => event.message.includes(snapshot)))
        assert.ok((await image(g, 'prod')).equals(prod), 'put back as before the restore')
        await g.write('prod', 0, pattern(1, 9))
        await g.deleteVolume('pinned')
      } finally { await g.close() }
      g = await GalleonFS.open({ storagePath })
      try {
        assert.deepEqual((await g.listSnapshots('prod')).map((s) => s.name), [], 'the safety snapshot is deleted at the next open')
        assert.ok((await image(g, 'prod')).equals(written), 'the write made after the put-back is kept')
      } finally { await g.close() }
    })
  })
}
