// What backups and restores leave in the metadata and the volumes: the records an open acts on after
// a crash are synced (a power loss, unlike a killed process, loses what the OS had not written), and
// a backup snapshot nothing needs any more that cannot be deleted (a clone reads from it) is reported
// and deleted at a later open, by a backup that frees it as well as by deleteBackup. Run with
// GALLEON_BACKUP_LEFTOVERS_CHILD set, this file is the child process of the SIGKILL test.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ClassicLevel } from 'classic-level'
import { GalleonFS, type IoErrorEvent } from '../src/index.js'
import { DirectoryBackupTarget } from '../backends/directory/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { delegatingTarget } from './support/backup-targets.js'
import { until } from './support/wait.js'
import { blockPattern } from './support/patterns.js'
import { scriptArgs, childExit } from './support/child-script.js'

const BS = 4096
const BLOCKS = 1024
const CHILD = process.env.GALLEON_BACKUP_LEFTOVERS_CHILD

const pattern = (blocks: number, seed: number): Uint8Array => blockPattern(blocks, seed, BS)

/** abstract-level's private write hooks, which its public put/del/batch (and sublevels') end in; not in the types. */
interface WriteHooks {
  _put (key: unknown, value: unknown, options: WriteOptions): Promise<void>
  _del (key: unknown, options: WriteOptions): Promise<void>
  _batch (operations: Array<{ type: 'put' | 'del', key: unknown }>, options: WriteOptions): Promise<void>
}
interface WriteOptions { readonly sync?: boolean }
const HookedClassicLevel = ClassicLevel as unknown as new (location: string) => ClassicLevel<string, any> & WriteHooks

interface LoggedWrite { readonly keys: ReadonlyArray<readonly [string, 'put' | 'del']>, readonly sync: boolean, readonly submitted: number, readonly completed: number }

/**
 * The on-disk metadata database, logging every write it completes with whether it asked for an
 * fsync. LevelDB appends writes to one log, and a synced write makes the log durable up to itself:
 * after a power loss a write survives if it was synced, or if a synced write was issued after it
 * had completed. `afterPowerLoss` answers with that model what a key would hold.
 */
class LoggingLevel extends HookedClassicLevel {
  readonly writes: LoggedWrite[] = []
  #ticks = 0

  async #log<T> (keys: Array<[unknown, 'put' | 'del']>, options: WriteOptions | undefined, write: () => Promise<T>): Promise<T> {
    const submitted = this.#ticks++
    const result = await write()
    this.writes.push({ keys: keys.map(([key, type]) => [typeof key === 'string' ? key : Buffer.from(key as Uint8Array).toString(), type]), sync: options?.sync === true, submitted, completed: this.#ticks++ })
    return result
  }

  override async _put (key: unknown, value: unknown, options: WriteOptions): Promise<void> {
    await this.#log([[key, 'put']], options, async () => { await super._put(key, value, options) })
  }

  override async _del (key: unknown, options: WriteOptions): Promise<void> {
    await this.#log([[key, 'del']], options, async () => { await super._del(key, options) })
  }

  override async _batch (operations: Array<{ type: 'put' | 'del', key: unknown }>, options: WriteOptions): Promise<void> {
    await this.#log(operations.map((op) => [op.key, op.type]), options, async () => { await super._batch(operations, options) })
  }

  /** Whether the last write to `key` asked for an fsync itself (rather than being made durable by chance by a later synced write). */
  syncedItself (key: string): boolean {
    return this.writes.filter((write) => write.keys.some(([written]) => written === key)).at(-1)?.sync === true
  }

  /** What `key` (with its sublevel prefix, `!sublevel!key`) would hold after a power loss now: the last durable write's kind, or undefined. */
  afterPowerLoss (key: string): 'put' | 'del' | undefined {
    const durable = (write: LoggedWrite): boolean => write.sync || this.writes.some((later) => later.sync && later.submitted > write.completed)
    let state: 'put' | 'del' | undefined
    for (const write of this.writes) {
      if (!durable(write)) continue
      for (const [written, type] of write.keys) if (written === key) state = type
    }
    return state
  }
}

if (CHILD !== undefined) {
  // Restores BACKUP over volume `prod` of STORAGE from TARGET, cloning prod's safety snapshot as
  // `pinned` before the first chunk (so that it cannot be deleted), and prints "holding" once four
  // chunks were served, waiting there to be killed with the restore half done.
  const [STORAGE, TARGET, BACKUP] = [process.env.STORAGE, process.env.TARGET, process.env.BACKUP] as [string, string, string]
  const g = await GalleonFS.open({ storagePath: STORAGE })
  const directory = new DirectoryBackupTarget({ path: TARGET })
  let served = 0
  let pinned: Promise<unknown> | undefined
  const target = delegatingTarget(directory, 'pinning', {
    getChunk: async (id) => {
      await (pinned ??= g.listSnapshots('prod').then(async ([snapshot]) => await g.cloneVolume({ volume: 'prod', snapshot: (snapshot as { name: string }).name }, 'pinned')))
      if (++served > 4) {
        process.stdout.write('holding\n')
        await new Promise(() => {})
      }
      return await directory.getChunk(id)
    }
  })
  await g.restoreBackup(BACKUP, { volume: 'prod', target })
  process.stdout.write('restored (unexpected)\n')
} else describe('backup and restore leftovers', () => {
  let root: string
  let count = 0
  before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-backup-leftovers-')) })
  after(async () => { await rm(root, { recursive: true, force: true }) })
  const place = (): string => join(root, String(count++))

  async function image (g: GalleonFS, vol: string): Promise<Buffer> {
    return Buffer.from(await g.read(vol, 0, (await g.getVolume(vol)).sizeBytes))
  }

  /**
   * An instance with a LoggingLevel for metadata, volume `src` (pattern 5) backed up to a new
   * directory target, and `watch()`, after which the block store's first batch (the restore's
   * first write or trim) checks that the restore's record of the volume it changes would survive a
   * power loss, by a synced write of its own (`durableAtFirstChange`).
   */
  async function loggedInstance (): Promise<{ g: GalleonFS, db: LoggingLevel, targetPath: string, backupId: string, watch: () => void, durableAtFirstChange: () => boolean | undefined }> {
    const storagePath = place()
    const targetPath = place()
    const db = new LoggingLevel(join(storagePath, 'metadata'))
    let watching = false
    let durable: boolean | undefined
    const check = (): void => {
      if (!watching || durable !== undefined) return
      // The record of the restore under way: the last one put.
      const key = db.writes.flatMap((write) => write.keys).filter(([key, type]) => type === 'put' && key.startsWith('!restoresInProgress!')).at(-1)?.[0]
      durable = key !== undefined && db.afterPowerLoss(key) === 'put' && db.syncedItself(key)
    }
    const inner = new FileBlockStore({ location: join(storagePath, 'blocks') })
    const blockStore = new Proxy(inner, {
      get (target, prop) {
        if (prop === 'batch') return async (...args: Parameters<typeof inner.batch>) => { check(); return await target.batch(...args) }
        const value = Reflect.get(target, prop, target)
        return typeof value === 'function' ? value.bind(target) : value
      }
    })
    const g = await GalleonFS.open({ storagePath, metadata: db as never, blockStore })
    await g.createVolume({ name: 'src', sizeBytes: BLOCKS * BS })
    await g.write('src', 0, pattern(BLOCKS, 5))
    const backup = await g.createBackup('src', { target: targetPath })
    return { g, db, targetPath, backupId: backup.id, watch: () => { watching = true }, durableAtFirstChange: () => durable }
  }

  describe('restore records survive a power loss (synced)', () => {
    it('into a new volume: recorded before the first write, forgotten before restoreBackup resolves', async () => {
      const { g, db, targetPath, backupId, watch, durableAtFirstChange } = await loggedInstance()
      try {
        watch()
        const restored = await g.restoreBackup(backupId, { name: 'copy', target: targetPath })
        assert.equal(durableAtFirstChange(), true, 'the record of the restore is durable before the volume is written')
        // Left over, it would make the next open remove the restored volume.
        assert.equal(db.afterPowerLoss(`!restoresInProgress!${restored.id}`), 'del', 'the restore is durably forgotten once it reported success')
        // Not only by the audit entry the facade syncs after the call: the restore's own write is.
        assert.ok(db.syncedItself(`!restoresInProgress!${restored.id}`), 'forgotten with a synced write')
        assert.ok((await image(g, 'copy')).equals(Buffer.from(pattern(BLOCKS, 5))))
      } finally { await g.close() }
    })

    it('over an existing volume whose safety snapshot a clone pins: the restore is durably over before restoreBackup resolves', async () => {
      const { g, db, targetPath, backupId, watch, durableAtFirstChange } = await loggedInstance()
      try {
        const prod = await g.createVolume({ name: 'prod', sizeBytes: BLOCKS * BS })
        await g.write('prod', 0, pattern(BLOCKS, 6))
        const directory = new DirectoryBackupTarget({ path: targetPath })
        let pinned: Promise<unknown> | undefined
        // The clone makes the safety snapshot undeletable, so no synced catalog write (the
        // snapshot's deletion) follows the restore's last record and makes it durable by chance.
        const target = delegatingTarget(directory, 'pinning', {
          getChunk: async (id) => {
            await (pinned ??= g.listSnapshots('prod').then(async ([snapshot]) => await g.cloneVolume({ volume: 'prod', snapshot: (snapshot as { name: string }).name }, 'pinned')))
            return await directory.getChunk(id)
          }
        })
        const errors: IoErrorEvent[] = []
        g.on('io:error', (event) => { errors.push(event) })
        watch()
        await g.restoreBackup(backupId, { volume: 'prod', target })
        assert.equal(durableAtFirstChange(), true, 'the record of the restore is durable before the volume is trimmed or written')
        const [snapshot] = await g.listSnapshots('prod')
        assert.ok(snapshot?.name.startsWith('pre-restore-') === true, 'the pinned safety snapshot is kept')
        assert.ok(errors.some((event) => event.message.includes(snapshot.name)), 'and reported')
        // Left over, the restore record would make the next open put prod back to its pre-restore snapshot.
        assert.equal(db.afterPowerLoss(`!restoresInProgress!${prod.id}`), 'del', 'the restore is durably over once it reported success')
        assert.ok(db.syncedItself(`!restoresInProgress!${prod.id}`), 'over with a synced write')
        assert.equal(db.afterPowerLoss(`!restoreSnapshotsLeft!${snapshot.name}`), 'put', 'the snapshot left to delete is durably recorded')
        assert.ok((await image(g, 'prod')).equals(Buffer.from(pattern(BLOCKS, 5))))
      } finally { await g.close() }
    })

    it('put back at open after a SIGKILL, its safety snapshot pinned by a clone: the restore is durably over when open() returns', async () => {
      const storagePath = place()
      const targetPath = place()
      let g = await GalleonFS.open({ storagePath })
      const prod = Buffer.from(pattern(4 * BLOCKS, 6))
      let prodId: string
      let backupId: string
      try {
        await g.createVolume({ name: 'src', sizeBytes: 4 * BLOCKS * BS })
        await g.write('src', 0, pattern(4 * BLOCKS, 5))
        backupId = (await g.createBackup('src', { target: targetPath })).id
        prodId = (await g.createVolume({ name: 'prod', sizeBytes: 4 * BLOCKS * BS })).id
        await g.write('prod', 0, prod)
      } finally { await g.close() }
      const child = spawn(process.execPath, [...scriptArgs(fileURLToPath(import.meta.url))], {
        cwd: fileURLToPath(new URL('..', import.meta.url)),
        env: { ...process.env, GALLEON_BACKUP_LEFTOVERS_CHILD: 'restore-over', STORAGE: storagePath, TARGET: targetPath, BACKUP: backupId },
        stdio: ['ignore', 'pipe', 'inherit']
      })
      let out = ''
      child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
      try {
        await until('the child to hold mid-restore', () => out.includes('holding') || child.exitCode !== null, 60_000)
      } finally {
        child.kill('SIGKILL')
        await childExit(child)
      }
      assert.ok(out.includes('holding'), `the child ended otherwise: ${out}`)
      const db = new LoggingLevel(join(storagePath, 'metadata'))
      g = await GalleonFS.open({ storagePath, metadata: db as never })
      try {
        const errors: IoErrorEvent[] = []
        g.on('io:error', (event) => { errors.push(event) })
        const [snapshot] = await g.listSnapshots('prod')
        assert.ok(snapshot?.name.startsWith('pre-restore-') === true, 'the pinned safety snapshot is kept')
        await until('the snapshot it cannot delete is reported', () => errors.some((event) => event.message.includes(snapshot.name)))
        assert.ok((await image(g, 'prod')).equals(prod), 'put back as before the restore')
        // Writes from here on go to the block store alone: a restore record a power loss brought
        // back would make the next open put prod back again, over them.
        assert.equal(db.afterPowerLoss(`!restoresInProgress!${prodId}`), 'del', 'the put-back is durably final once open() has returned')
        assert.equal(db.afterPowerLoss(`!restoreSnapshotsLeft!${snapshot.name}`), 'put', 'the snapshot left to delete is durably recorded')
        // Not only by the audit entry of the failed deletion that follows: by the writes themselves.
        assert.ok(db.syncedItself(`!restoresInProgress!${prodId}`) && db.syncedItself(`!restoreSnapshotsLeft!${snapshot.name}`), 'recorded with synced writes')
      } finally { await g.close() }
    })
  })

  describe('a backup snapshot that cannot be deleted (a clone reads from it)', () => {
    /** Opens `storagePath` and collects its io:error events from the start. */
    async function openCollecting (storagePath: string): Promise<{ g: GalleonFS, errors: IoErrorEvent[] }> {
      const g = await GalleonFS.open({ storagePath })
      const errors: IoErrorEvent[] = []
      g.on('io:error', (event) => { errors.push(event) })
      return { g, errors }
    }

    /**
     * Checks that `snapshot` of `vol` is kept and reported at the next open while clone `pinned`
     * reads from it, and deleted when the clone is deleted; `kept` are vol's other snapshots, which
     * stay.
     */
    async function deletedOnceUnpinned (storagePath: string, snapshot: string, kept: string[]): Promise<void> {
      let { g, errors } = await openCollecting(storagePath)
      try {
        await until(`${snapshot} is reported again at open`, () => errors.some((event) => event.message.includes(snapshot) && event.code === 'BUSY'))
        assert.ok((await g.listSnapshots('vol')).some((s) => s.name === snapshot), 'kept while the clone reads from it')
        const reported = errors.length
        await g.deleteVolume('pinned')
        // Deleted as soon as the clone lets go of it, not only at the next open.
        assert.deepEqual((await g.listSnapshots('vol')).map((s) => s.name).sort(), [...kept].sort(), `${snapshot} is deleted with the clone that read from it`)
        assert.equal(errors.length, reported, 'and nothing more is reported')
      } finally { await g.close() }
      ;({ g, errors } = await openCollecting(storagePath))
      try {
        assert.deepEqual((await g.listSnapshots('vol')).map((s) => s.name).sort(), [...kept].sort(), `${snapshot} is deleted once nothing reads from it`)
      } finally { await g.close() }
      // Its record is gone too: a further open neither tries nor reports anything.
      ;({ g, errors } = await openCollecting(storagePath))
      try {
        await new Promise((resolve) => setImmediate(resolve))
        assert.deepEqual(errors, [])
      } finally { await g.close() }
    }

    it('freed by a later incremental backup: the backup succeeds, the failure is reported, and a later open deletes it', async () => {
      const storagePath = place()
      const targetPath = place()
      const { g, errors } = await openCollecting(storagePath)
      let older: string
      let keptNames: string[]
      try {
        await g.createVolume({ name: 'vol', sizeBytes: BLOCKS * BS })
        await g.write('vol', 0, pattern(BLOCKS, 1))
        const full = await g.createBackup('vol', { target: targetPath })
        await g.write('vol', 0, pattern(1, 2))
        const first = await g.createBackup('vol', { target: targetPath, strategy: 'incremental' })
        older = `backup-${first.id}`
        await g.cloneVolume({ volume: 'vol', snapshot: older }, 'pinned')
        await g.write('vol', BS, pattern(1, 3))
        // This one frees the first incremental's snapshot (neither the newest nor the newest full).
        const second = await g.createBackup('vol', { target: targetPath, strategy: 'incremental' })
        assert.equal(second.baseId, first.id)
        const report = errors.find((event) => event.message.includes(older))
        assert.ok(report !== undefined, `the failed deletion of ${older} is reported: ${JSON.stringify(errors)}`)
        assert.equal(report.code, 'BUSY')
        assert.equal(report.volumeName, 'vol')
        keptNames = [`backup-${full.id}`, `backup-${second.id}`]
        assert.deepEqual((await g.listSnapshots('vol')).map((s) => s.name).sort(), [older, ...keptNames].sort())
      } finally { await g.close() }
      await deletedOnceUnpinned(storagePath, older, keptNames)
    })

    it('of a deleted backup: deleteBackup succeeds, the failure is reported, and a later open deletes it', async () => {
      const storagePath = place()
      const targetPath = place()
      const { g, errors } = await openCollecting(storagePath)
      let snapshot: string
      try {
        await g.createVolume({ name: 'vol', sizeBytes: BLOCKS * BS })
        await g.write('vol', 0, pattern(BLOCKS, 1))
        const backup = await g.createBackup('vol', { target: targetPath })
        snapshot = `backup-${backup.id}`
        await g.cloneVolume({ volume: 'vol', snapshot }, 'pinned')
        const result = await g.deleteBackup(backup.id, { target: targetPath })
        assert.deepEqual(result.deletedBackups, [backup.id])
        assert.deepEqual(await g.listBackups('vol', { target: targetPath }), [])
        const report = errors.find((event) => event.message.includes(snapshot))
        assert.ok(report !== undefined, `the failed deletion of ${snapshot} is reported: ${JSON.stringify(errors)}`)
        assert.equal(report.code, 'BUSY')
        assert.deepEqual((await g.listSnapshots('vol')).map((s) => s.name), [snapshot])
      } finally { await g.close() }
      await deletedOnceUnpinned(storagePath, snapshot, [])
    })
  })
})
