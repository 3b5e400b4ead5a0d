// Backups: full, incremental and differential backups of volumes to a BackupTarget, read from a
// snapshot through the engine's change tracking (only changed blocks are read), deduplicated by
// content-addressed chunks; restore.ts walks a backup's chain of bases back into a volume. Uses
// only the public GalleonFS API, so it is also an example of building on the library.
// BackupManager is the entry: it checks arguments, runs what close() cancels, and hands the work
// to create.ts, verify.ts, delete.ts and restore.ts; leftovers.ts keeps what they leave behind,
// targets.ts chooses the target (and its queue), context.ts holds what the parts share.

import { GalleonError, describe } from '../errors.js'
import type { GalleonFS, VolumeRef } from '../galleonfs.js'
import type { Volume } from '../types.js'
import type { MetadataDatabase } from '../volumes/catalog.js'
import { readManifest, readManifests, toBackup } from './manifests.js'
import { restoreBackup } from './restore.js'
import { BackupLeftovers, type HalfRestoredFence } from './leftovers.js'
import { BackupTargets } from './targets.js'
import type { BackupContext } from './context.js'
import { createBackup } from './create.js'
import { adoptBackup, verifyBackup } from './verify.js'
import { deleteBackup } from './delete.js'
import type { Backup, BackupKeySource, BackupAdoption, BackupTargetRef, BackupVerification, CreateBackupOptions, DeleteBackupOptions, DeleteBackupResult, RestoreBackupOptions } from './types.js'

export type { Backup, BackupHooks, BackupKeySource, BackupAdoption, BackupTargetRef, BackupVerification, CreateBackupOptions, DeleteBackupOptions, DeleteBackupResult, Progress, ProgressListener, RestoreBackupOptions } from './types.js'
export type { HalfRestoredFence } from './leftovers.js'
export { CHUNK_BYTES, toPieces, toRuns } from './chunking.js'
export { checkDeleteBackupOptions } from './delete.js'

/** An onProgress option is a function (a listener that is not one would be ignored without a word). */
function checkListener (call: string, listener: unknown): void {
  if (listener !== undefined && typeof listener !== 'function') throw new GalleonError('INVALID_ARGUMENT', `${call}() onProgress must be a function receiving { bytesDone, bytesTotal }, got ${describe(listener)}`)
}

/** The backups of one GalleonFS instance: what its createBackup, listBackups, restoreBackup, ... call. */
export class BackupManager {
  readonly #g: GalleonFS
  readonly #keys: BackupKeySource
  readonly #leftovers: BackupLeftovers
  readonly #targets: BackupTargets
  readonly #context: BackupContext

  /**
   * `restores`: the set a restore claims its volume in (shared with the instance, whose mounts and
   * writes refuse a claimed volume), the check, made once the claim is taken, that nothing mounted
   * the volume meanwhile (it throws BUSY), and the restore's own writes, trims and put-back, which
   * the claim lets through.
   */
  constructor (g: GalleonFS, defaultTarget: BackupTargetRef | undefined, keys: BackupKeySource, now: () => number = Date.now, metadata?: MetadataDatabase, restores?: RestoreHooks) {
    this.#g = g
    this.#restoringInto = restores?.claims ?? new Set()
    this.#safetySnapshots = restores?.safetySnapshots ?? new Map()
    this.#assertUnmounted = restores?.assertUnmounted ?? (() => {})
    this.#restoreIo = { write: restores?.write, trim: restores?.trim, revert: restores?.revert }
    this.#keys = keys
    this.#leftovers = new BackupLeftovers(g, metadata)
    this.#targets = new BackupTargets(defaultTarget)
    this.#context = { g, keys, now, targets: this.#targets, leftovers: this.#leftovers }
  }

  /**
   * At open: the snapshots of backups a killed process was taking are deleted (each backup is
   * recorded before its snapshot is taken and forgotten once it is stored or cleaned up), and so
   * are the volumes of restores into new volumes that were cut short: they hold part of a backup.
   * An existing volume a restore was overwriting is put back as it was before that restore. Safety
   * snapshots of restores that are over, and snapshots of backups no later backup builds on, which
   * could not be deleted then, are deleted now.
   */
  async start (fence: HalfRestoredFence): Promise<void> {
    await this.#leftovers.start(fence)
  }

  /**
   * Tries again to delete the snapshots of `volumeId` that were left to delete (a clone read from
   * them, say), now that one may have become free: called when a clone lets go of its source. Each
   * was reported when it was left; one still in use stays recorded for the next try, quietly.
   * Never rejects: the next open tries again.
   */
  async retryLeftSnapshots (volumeId: string): Promise<void> {
    await this.#leftovers.retryLeftSnapshots(volumeId)
  }

  /** Called at the end of open(): emits what start() found, after the caller's listeners are attached. */
  reportOpening (): void {
    this.#leftovers.reportOpening()
  }

  /** Backups and restores under way (close() cancels them and waits for them), deletions and adoptions (close() waits for them). */
  readonly #running = new Set<{ readonly abort: AbortController, readonly done: Promise<unknown> }>()
  #closing = false

  /** Runs a backup or restore that close() can cancel: `signal` fires on the caller's signal or at close. */
  async #cancellable<T> (callerSignal: AbortSignal | undefined, run: (signal: AbortSignal) => Promise<T>): Promise<T> {
    if (this.#closing) throw new GalleonError('NOT_OPEN', 'the instance is closing; no backup or restore starts now')
    if (callerSignal !== undefined && !(callerSignal instanceof AbortSignal)) throw new GalleonError('INVALID_ARGUMENT', `signal must be an AbortSignal (from an AbortController), got ${describe(callerSignal)}`)
    const abort = new AbortController()
    const done = run(callerSignal === undefined ? abort.signal : AbortSignal.any([callerSignal, abort.signal]))
    const entry = { abort, done }
    this.#running.add(entry)
    try {
      return await done
    } finally {
      this.#running.delete(entry)
    }
  }

  /**
   * Runs a deletion or adoption that close() waits for (not cancelled: it frees the snapshots of
   * the backups it deletes, which it could no longer reach after close, and would leave for good).
   */
  async #awaited<T> (run: () => Promise<T>): Promise<T> {
    if (this.#closing) throw new GalleonError('NOT_OPEN', 'the instance is closing; no backup deletion or adoption starts now')
    const done = run()
    const entry = { abort: new AbortController(), done }
    this.#running.add(entry)
    try {
      return await done
    } finally {
      this.#running.delete(entry)
    }
  }

  /**
   * At close, while the instance still serves calls: backups and restores under way are cancelled
   * (CANCELLED, at their next chunk) and clean up after themselves; deletions and adoptions under
   * way are waited for; new ones of all of these are refused.
   */
  async close (): Promise<void> {
    this.#closing = true
    for (const entry of this.#running) entry.abort.abort()
    await Promise.allSettled([...this.#running].map(async (entry) => await entry.done))
  }

  async create (vol: VolumeRef, options: CreateBackupOptions = {}): Promise<Backup> {
    if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `createBackup() options must be an object such as { strategy: 'incremental' }, got ${describe(options)}`)
    const hooks: unknown = options.hooks
    if (hooks !== undefined && (hooks === null || typeof hooks !== 'object' || [options.hooks?.pre, options.hooks?.post].some((hook) => hook !== undefined && typeof hook !== 'function'))) {
      throw new GalleonError('INVALID_ARGUMENT', `createBackup() hooks are { pre?: function, post?: function }, got ${describe(hooks)}; no backup was taken`)
    }
    checkListener('createBackup', options.onProgress)
    // Stored in the manifest and matched by that policy's retention: a name, not any value turned into a string.
    if (options.policy !== undefined && (typeof options.policy !== 'string' || options.policy.length === 0)) {
      throw new GalleonError('INVALID_ARGUMENT', `createBackup() policy is the name of the backup policy taking the backup (a non-empty string), got ${describe(options.policy)}; no backup was taken`)
    }
    return await this.#cancellable(options.signal, async (signal) => await createBackup(this.#context, vol, options, signal))
  }

  async list (vol?: VolumeRef, options: { target?: BackupTargetRef } = {}): Promise<Backup[]> {
    const target = await this.#targets.readTarget(options?.target)
    await target.open()
    const unreadable: string[] = []
    let manifests = await readManifests(target, unreadable)
    // Left out of the list, but said once per instance: a damaged manifest must not pass unseen.
    const unreported = unreadable.filter((id) => !this.#reportedUnreadable.has(`${target.location}\0${id}`))
    if (unreported.length > 0) {
      for (const id of unreported) this.#reportedUnreadable.add(`${target.location}\0${id}`)
      this.#g.emit('io:error', { volumeId: '', volumeName: '', operation: 'read', code: 'CORRUPTION', message: `backup target ${target.location} holds ${unreported.length} manifest(s) that cannot be read (${unreported.slice(0, 3).join(', ')}${unreported.length > 3 ? ', ...' : ''}), left out of listBackups(); getBackup(id) or verifyBackup(id) says why. Put them back from a copy of the target, or remove their files from it (deleteBackup collects no chunk while they are there)` })
    }
    if (vol !== undefined) {
      const ref: unknown = typeof vol === 'string' ? vol : (vol as { id?: unknown } | null)?.id
      if (typeof ref !== 'string' || ref.length === 0) throw new GalleonError('INVALID_ARGUMENT', `listBackups() takes a volume id or name (or nothing for every backup), got ${describe(vol)}`)
      const volume = await this.#g.getVolume(ref).catch(() => undefined)
      manifests = manifests.filter((m) => volume !== undefined ? m.volume.id === volume.id : (m.volume.id === ref || m.volume.name === ref))
    }
    return manifests.map((m) => toBackup(m, target))
  }

  async get (id: string, options: { target?: BackupTargetRef } = {}): Promise<Backup> {
    const target = await this.#targets.readTarget(options?.target, id)
    await target.open()
    return toBackup(await readManifest(target, id), target)
  }

  async verify (id: string, options: { target?: BackupTargetRef } = {}): Promise<BackupVerification> {
    return await verifyBackup(this.#context, id, options)
  }

  /**
   * Tags the manifests of an encrypted backup's chain written before manifests were authenticated
   * (see verifyManifestTag), after checking that each one's key opens for its volume and that every
   * chunk it names is there and authenticates under that key. Nothing is rewritten unless all of
   * the chain checks out. The caller vouches that the manifests were not altered on the target.
   */
  async adopt (id: string, options: { target?: BackupTargetRef } = {}): Promise<BackupAdoption> {
    return await this.#awaited(async () => await adoptBackup(this.#context, id, options))
  }

  async delete (id: string, options: DeleteBackupOptions = {}): Promise<DeleteBackupResult> {
    return await this.#awaited(async () => await deleteBackup(this.#context, id, options))
  }

  async restore (id: string, options: RestoreBackupOptions = {}): Promise<Volume> {
    if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `restoreBackup() options must be an object such as { name: 'restored' }, got ${describe(options)}`)
    if ((options.name === undefined) === (options.volume === undefined) && options.volume !== undefined) {
      throw new GalleonError('INVALID_ARGUMENT', 'restoreBackup() takes either { name } (a new volume) or { volume } (overwrite an existing one), not both')
    }
    checkListener('restoreBackup', options.onProgress)
    const target = await this.#targets.readTarget(options.target, id)
    const leftovers = this.#leftovers
    const claimed = this.#restoringInto
    const safetySnapshots = this.#safetySnapshots
    return await this.#cancellable(options.signal, async (signal) => await restoreBackup(this.#g, this.#keys, target, id, { ...options, signal }, {
      started: async (volumeId, safetySnapshot) => {
        if (claimed.has(volumeId)) throw new GalleonError('BUSY', `another restore is writing into volume ${describe(options.volume ?? volumeId)}; wait for it to finish (two at once would leave a mix of both backups)`)
        claimed.add(volumeId)
        try {
          // Checked before the restore, but a mount may have begun since: from the claim on, no
          // mount of the volume starts (MountBridge refuses it), so one made before is found here.
          if (safetySnapshot !== undefined) this.#assertUnmounted(volumeId)
          // Durable before anything is written to the volume (restoreBackup awaits it first).
          await leftovers.restoreStarted(volumeId, id, safetySnapshot)
          // Its put-back needs it: a deleteSnapshot of it is refused until the restore is over.
          if (safetySnapshot !== undefined) safetySnapshots.set(volumeId, safetySnapshot)
        } catch (err) {
          claimed.delete(volumeId)
          throw err
        }
      },
      // Durable before restoreBackup resolves: a record left over would remove the restored volume.
      forget: async (volumeId) => { await leftovers.restoreForgotten(volumeId) },
      finished: async (volume, safetySnapshot) => {
        // Nothing puts the volume back any more: the restore deletes its snapshot now.
        safetySnapshots.delete(volume.id)
        await leftovers.finished(volume.id, volume.name, id, safetySnapshot)
      },
      // A replicated volume is only reported (see BackupLeftovers.fenceHalfRestored).
      fence: async (volumeId, safetySnapshot, why) => await leftovers.fenceHalfRestored(volumeId, safetySnapshot, why),
      release: (volumeId) => { claimed.delete(volumeId); safetySnapshots.delete(volumeId) },
      write: this.#restoreIo.write,
      trim: this.#restoreIo.trim,
      putBack: this.#restoreIo.revert
    }))
  }

  /** Volumes a restore of this instance is writing into (a second restore into one is refused, and so is a mount). */
  readonly #restoringInto: Set<string>
  /** Unreadable manifests listBackups() has reported (target location, NUL, backup id). */
  readonly #reportedUnreadable = new Set<string>()
  readonly #safetySnapshots: Map<string, string>
  readonly #assertUnmounted: (volumeId: string) => void
  readonly #restoreIo: Pick<RestoreHooks, 'write' | 'trim' | 'revert'>
}

/** What BackupManager's restores share with the instance (see the constructor). */
export interface RestoreHooks {
  readonly claims: Set<string>
  /** The safety snapshot of each claimed volume, by volume id, while the restore may still need it. */
  readonly safetySnapshots?: Map<string, string>
  readonly assertUnmounted: (volumeId: string) => void
  readonly write?: (volumeId: string, offset: number, data: Uint8Array) => Promise<void>
  readonly trim?: (volumeId: string, offset: number, length: number) => Promise<void>
  /** Reverts the volume to the restore's safety snapshot (its put-back), past the claim. */
  readonly revert?: (volumeId: string, snapshot: string) => Promise<void>
}
