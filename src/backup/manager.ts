// Backups: full, incremental and differential backups of volumes to a BackupTarget, read from a
// snapshot through the engine's change tracking (only changed blocks are read), deduplicated by
// content-addressed chunks; restore.ts walks a backup's chain of bases back into a volume. Uses
// only the public GalleonFS API, so it is also an example of building on the library.

import { randomUUID } from 'node:crypto'
import { resolve } from 'node:path'
import { DIRECTORY_TARGET_MARKER, DirectoryBackupTarget } from '../../backends/directory/index.js'
import type { BackupTarget } from '../drivers.js'
import { GalleonError, describe, errorCode } from '../errors.js'
import type { GalleonFS, VolumeRef } from '../galleonfs.js'
import { BackupStrategy, type Volume } from '../types.js'
import { chunkId, chunkIdOf, chunkKeys, decodeChunk, decodeIndex, encodeChunk, encodeManifest, isUntaggedManifest, verifyManifestTag, type ChunkKeys, type Extent, type Manifest } from './format.js'
import { SerialQueue } from '../serial-queue.js'
import type { AbstractSublevel } from 'abstract-level'
import { storedMetadata, type MetadataDatabase } from '../volumes/catalog.js'
import { isNoSpaceError } from '../abstract-block-store.js'
import type { IoErrorEvent } from '../events.js'
import { CHUNK_BYTES, CHUNK_WINDOW_BYTES, checkAborted, concat, isZero, report, runWorkers, toPieces, toRuns } from './chunking.js'
import { backupChunkKeys, readChain, readManifest, readManifests, readVolumeManifests, toBackup, writeIndex, type KnownManifests } from './manifests.js'
import { nextSequence } from './order.js'
import { anyCollectable, collectChunks } from './collection.js'
import { TargetLease, removeAbandoned, waitForCollections, type LeasingTarget } from './leases.js'
import { restoreBackup } from './restore.js'
import type { Backup, BackupKeySource, BackupAdoption, BackupTargetRef, BackupVerification, CreateBackupOptions, DeleteBackupOptions, DeleteBackupResult, RestoreBackupOptions } from './types.js'

export type { Backup, BackupHooks, BackupKeySource, BackupAdoption, BackupTargetRef, BackupVerification, CreateBackupOptions, DeleteBackupOptions, DeleteBackupResult, Progress, ProgressListener, RestoreBackupOptions } from './types.js'
export { CHUNK_BYTES, toPieces, toRuns } from './chunking.js'

/** Backups being taken: id -> the volume and the snapshot taken for it (see start()). */
type PendingSublevel = AbstractSublevel<MetadataDatabase, any, string, { volumeId: string, snapshot: string, elsewhere?: boolean }>
/**
 * Volumes restores are writing into: volume id -> the backup, and for an existing volume the
 * snapshot that puts it back (a new volume is removed instead; see start()).
 */
type RestoringSublevel = AbstractSublevel<MetadataDatabase, any, string, { backupId: string, safetySnapshot?: string }>
/**
 * Snapshots nothing needs any more that could not be deleted yet (a clone reads from them, say),
 * deleted at each open until gone: safety snapshots of restores that are over (the volume restored,
 * or put back), keyed by name, and (`of: 'backup'`) snapshots of backups no later backup builds on,
 * keyed by id, with their name. The sublevel keeps its first name, restoreSnapshotsLeft, so that
 * records written before it held both are still found.
 */
type LeftSnapshotSublevel = AbstractSublevel<MetadataDatabase, any, string, LeftSnapshotRecord>
interface LeftSnapshotRecord { volumeId: string, backupId: string, of?: 'backup', name?: string }

/**
 * classic-level's option to fsync its log before resolving (abstract-level passes it through
 * sublevels). The records an open acts on (a restore under way, one that is over) must survive a
 * power loss, not only a killed process: a lost "restore over" would put a restored volume back to
 * its safety snapshot (or remove a restored new volume) at the next open.
 */
const SYNC = { sync: true } as unknown as Record<string, never>

/** How the instance fences a volume an interrupted restore left half-restored (see BackupManager.start). */
export interface HalfRestoredFence {
  /** Whether the volume is replicated (false: gone or local). */
  readonly replicated: (volumeId: string) => boolean
  /** Marks it as an unfinished revert to `safetySnapshot`, `why` in the refusal's message (durable). */
  readonly fence: (volumeId: string, safetySnapshot: string, why: string) => Promise<void>
}

/** Whether a deletion failed because what it deletes (or its volume) is gone already. */
function gone (err: unknown): boolean {
  const code = errorCode(err)
  return code === 'SNAPSHOT_NOT_FOUND' || code === 'VOLUME_NOT_FOUND'
}

/** Names a snapshot nothing needs any more, in the report of a failure to delete it. */
function leftSnapshot (snapshot: string, volume: string, backupId: string, of?: 'backup'): string {
  return of === 'backup'
    ? `snapshot ${snapshot} of volume ${volume}, which backup ${backupId} was taken from and which no later backup needs as a base`
    : `snapshot ${snapshot} of volume ${volume}, which a restore of backup ${backupId} took and no longer needs (nothing reverts to it)`
}

/** An onProgress option is a function (a listener that is not one would be ignored without a word). */
function checkListener (call: string, listener: unknown): void {
  if (listener !== undefined && typeof listener !== 'function') throw new GalleonError('INVALID_ARGUMENT', `${call}() onProgress must be a function receiving { bytesDone, bytesTotal }, got ${describe(listener)}`)
}

/**
 * Unused chunks put or reused this recently are not collected: a backup another process is taking
 * on the same target may name them in its manifest (git's gc spares recent objects for the same
 * reason). A later deletion collects them.
 */
const CHUNK_GRACE_SECONDS = 3600
const STRATEGIES = new Set<string>(Object.values(BackupStrategy))
/** How long a backup taken on a replica's node waits for its snapshot to reach the copy there (see #snapshotHere). */
const SNAPSHOT_ARRIVAL_MS = 30_000

/**
 * Checks deleteBackup()'s options (INVALID_ARGUMENT), before anything is looked up; returns the
 * chunks' grace period in milliseconds.
 */
export function checkDeleteBackupOptions (options: DeleteBackupOptions): number {
  if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `deleteBackup() options must be an object such as { force: true }, got ${describe(options)}`)
  const graceMs = 1000 * (options.chunkGraceSeconds ?? CHUNK_GRACE_SECONDS)
  if (!Number.isFinite(graceMs) || graceMs < 0) throw new GalleonError('INVALID_ARGUMENT', `chunkGraceSeconds is a number of seconds >= 0, got ${describe(options.chunkGraceSeconds)}`)
  return graceMs
}

export class BackupManager {
  readonly #g: GalleonFS
  readonly #defaultTarget: BackupTargetRef | undefined
  readonly #directories = new Map<string, DirectoryBackupTarget>()
  readonly #queues = new WeakMap<BackupTarget, SerialQueue>()
  readonly #now: () => number
  readonly #keys: BackupKeySource
  readonly #pending: PendingSublevel | undefined
  readonly #restoring: RestoringSublevel | undefined
  readonly #leftSnapshots: LeftSnapshotSublevel | undefined
  readonly #metadata: MetadataDatabase | undefined
  /** Snapshots running backups chose as their base (by id, with how many chose each): retryLeftSnapshots leaves them. */
  readonly #basesInUse = new Map<string, number>()

  constructor (g: GalleonFS, defaultTarget: BackupTargetRef | undefined, keys: BackupKeySource, now: () => number = Date.now, metadata?: MetadataDatabase) {
    this.#g = g
    this.#keys = keys
    this.#now = now
    this.#defaultTarget = defaultTarget
    this.#pending = metadata?.sublevel('backupsInProgress', { valueEncoding: 'json' }) as PendingSublevel | undefined
    this.#restoring = metadata?.sublevel('restoresInProgress', { valueEncoding: 'json' }) as RestoringSublevel | undefined
    this.#leftSnapshots = metadata?.sublevel('restoreSnapshotsLeft', { valueEncoding: 'json' }) as LeftSnapshotSublevel | undefined
    this.#metadata = metadata
    if (defaultTarget !== undefined) this.#target(defaultTarget)
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
    this.#fence = fence
    this.#opening = []
    // First, so that a snapshot one of the put-backs below fails to delete is reported once.
    for (const [snapshot, { volumeId, backupId, of, name }] of await this.#leftSnapshots?.iterator().all() ?? []) {
      await this.#removeLeftover(volumeId, leftSnapshot(name ?? snapshot, volumeId, backupId, of),
        async () => { await this.#g.deleteSnapshot(volumeId, snapshot) }, async () => { await this.#leftSnapshots?.del(snapshot) })
    }
    for (const [volumeId, { backupId, safetySnapshot }] of await this.#restoring?.iterator().all() ?? []) {
      if (safetySnapshot === undefined) {
        await this.#removeLeftover(volumeId, `volume ${volumeId}, which an interrupted restore of backup ${backupId} left half-restored`,
          async () => { await this.#g.deleteVolume(volumeId, { force: true }) }, async () => { await this.#restoring?.del(volumeId) })
        continue
      }
      await this.#putBackOrFence(volumeId, backupId, safetySnapshot, fence.replicated(volumeId))
      // Synced: a fenced volume put back by hand later must not be put back again at an open.
      await this.#restoring?.del(volumeId, SYNC)
    }
    for (const [id, { volumeId, snapshot, elsewhere }] of await this.#pending?.iterator().all() ?? []) {
      let kept = false
      await this.#removeLeftover(volumeId, `snapshot ${snapshot} of a backup that was interrupted`, async () => {
        try {
          await this.#g.deleteSnapshot(volumeId, snapshot)
        } catch (err) {
          // Taken on the primary for a backup here that stopped waiting for it: this copy gets it
          // at a resync, maybe after this open, so the record waits for a later open (forgotten, the
          // snapshot would stay on every copy). (VOLUME_NOT_FOUND: the volume is gone, and so is it.)
          if (elsewhere !== true || errorCode(err) !== 'SNAPSHOT_NOT_FOUND') throw err
          kept = true
        }
      }, async () => { if (!kept) await this.#pending?.del(id) })
    }
  }

  /**
   * Removes what an interrupted backup or restore left, then forgets its record. Gone already (or
   * its volume is) counts as removed; any other failure is reported and the record kept, so that
   * the next open tries again.
   */
  async #removeLeftover (volumeId: string, what: string, remove: () => Promise<void>, forget: () => Promise<void>, volumeName = ''): Promise<void> {
    try {
      await remove()
    } catch (err) {
      if (!gone(err)) {
        this.#report({ volumeId, volumeName, operation: 'write', code: errorCode(err), message: `could not delete ${what} (tried again at the next open): ${(err as Error).message}` })
        return
      }
    }
    await forget()
  }

  /**
   * Tries again to delete the snapshots of `volumeId` that were left to delete (a clone read from
   * them, say), now that one may have become free: called when a clone lets go of its source. Each
   * was reported when it was left; one still in use stays recorded for the next try, quietly.
   * Never rejects: the next open tries again.
   */
  async retryLeftSnapshots (volumeId: string): Promise<void> {
    const recorded = await this.#leftSnapshots?.iterator().all().catch(() => undefined)
    for (const [snapshot, left] of recorded ?? []) {
      if (left.volumeId !== volumeId || this.#basesInUse.has(snapshot)) continue
      try {
        await this.#g.deleteSnapshot(volumeId, snapshot)
      } catch (err) {
        if (!gone(err)) continue
      }
      await this.#leftSnapshots?.del(snapshot).catch(() => {})
    }
  }

  /** What start() found to report, held until open() has returned (see reportOpening). */
  #opening: IoErrorEvent[] | undefined

  /** An io:error now, or, during start(), once open() has returned: no listener is attached before. */
  #report (event: IoErrorEvent): void {
    if (this.#opening !== undefined) this.#opening.push(event)
    else this.#g.emit('io:error', event)
  }

  /** Called at the end of open(): emits what start() found, after the caller's listeners are attached. */
  reportOpening (): void {
    const events = this.#opening ?? []
    this.#opening = undefined
    if (events.length > 0) setImmediate(() => { for (const event of events) this.#g.emit('io:error', event) })
  }

  /** Set by start(): fences a volume an interrupted restore left half-restored. */
  #fence: HalfRestoredFence | undefined

  /**
   * A volume an interrupted restore of `backupId` left half-restored (at open, after a crash):
   * put back from its safety snapshot, which nothing can have written over yet (open has not
   * returned) unless the volume is replicated (its other copies served while this node was down):
   * that one is only reported. One that cannot be put back now is fenced instead: its I/O is refused
   * as an unfinished revert's is, until restoreSnapshot(volume, safetySnapshot) finishes it, another
   * revert or restore replaces it, or it is deleted. It is never put back later, over writes made
   * in between.
   */
  async #putBackOrFence (volumeId: string, backupId: string, safetySnapshot: string, replicated: boolean): Promise<void> {
    const fence = this.#fence as HalfRestoredFence
    if (replicated) {
      // Not reverted nor fenced here: its primary may be another node now, and a fence in this
      // node's catalog would not hold there. Reported (once open() has returned, see #report); the
      // safety snapshot stays for a revert by hand.
      this.#report({ volumeId, volumeName: '', operation: 'write', code: 'CORRUPTION', message: `replicated volume ${volumeId} may be half-restored: this node stopped while restoring backup ${backupId} into it, and it is not put back automatically (its copies may have served writes since); restore the backup again, or revert it with restoreSnapshot to snapshot ${safetySnapshot}` })
      return
    }
    try {
      await this.#g.restoreSnapshot(volumeId, safetySnapshot)
    } catch (err) {
      // No such snapshot: the restore was cut short before it took it, so before it changed anything.
      if (gone(err)) return
      await fence.fence(volumeId, safetySnapshot, `an interrupted restore of backup ${backupId} left it half-restored, and putting it back failed: ${(err as Error).message}`).catch((cause: unknown) => {
        if (!gone(cause)) throw cause
      })
      return
    }
    await this.#finished(volumeId, '', backupId, safetySnapshot)
  }

  /**
   * A volume a restore of `backupId` left final (restored, or put back): its record becomes one of
   * its safety snapshot alone (in one batch: the volume is never put back after this), and the
   * snapshot is deleted. One that cannot be deleted now (a clone reads from it, say) is reported
   * and stays recorded, so that each open tries again. Rejects only if the record cannot change.
   */
  async #finished (volumeId: string, volumeName: string, backupId: string, snapshot: string): Promise<void> {
    if (this.#metadata !== undefined) {
      await this.#metadata.batch([
        { type: 'del', sublevel: this.#restoring, key: volumeId },
        { type: 'put', sublevel: this.#leftSnapshots, key: snapshot, value: { volumeId, backupId } }
      ] as any, SYNC)
    }
    // A record that outlives its snapshot is harmless: the next open finds the snapshot gone.
    await this.#removeLeftover(volumeId, leftSnapshot(snapshot, volumeName === '' ? volumeId : volumeName, backupId), async () => { await this.#g.deleteSnapshot(volumeId, snapshot) },
      async () => { await this.#leftSnapshots?.del(snapshot).catch(() => {}) }, volumeName)
  }

  /**
   * Deletes the snapshot backup `manifest` was taken from, which no backup needs as a base any more.
   * One that cannot be deleted now (a clone reads from it, it is mounted) is reported (io:error) and
   * recorded, so that each open tries again; the backup or deletion that freed it still succeeds.
   * Gone already (or its volume is, or it belongs to another instance's volume) is fine.
   */
  async #freeSnapshot (volumeId: string, volumeName: string, manifest: Manifest): Promise<void> {
    const { id, name } = manifest.snapshot
    // createBackup names the snapshot it takes after the backup. A manifest altered on the target
    // (a plain volume's, or an encrypted volume's untagged one: this runs before any tag is
    // checked) may name any snapshot of the volume, which is not the backup's to delete.
    const snapshot = (await this.#g.listSnapshots(volumeId).catch(() => [])).find((s) => s.id === id)
    if (snapshot === undefined || snapshot.name !== `backup-${manifest.id}`) return
    try {
      await this.#g.deleteSnapshot(volumeId, id)
    } catch (err) {
      if (gone(err)) return
      let next = 'tried again at the next open'
      try {
        if (this.#leftSnapshots === undefined) throw new GalleonError('NOT_OPEN', 'no metadata database to record it in')
        await this.#leftSnapshots.put(id, { volumeId, backupId: manifest.id, of: 'backup', name }, SYNC)
      } catch (cause) {
        next = `not recorded for a later try either (${(cause as Error).message}), so delete it with deleteSnapshot once it can be`
      }
      this.#report({ volumeId, volumeName, operation: 'write', code: errorCode(err), message: `could not delete ${leftSnapshot(name, volumeName, manifest.id, 'backup')} (${next}): ${(err as Error).message}` })
    }
  }

  /** Backups and restores under way: close() cancels them and waits for them. */
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
   * At close, while the instance still serves calls: backups and restores under way are cancelled
   * (CANCELLED, at their next chunk) and clean up after themselves; new ones are refused.
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
    return await this.#cancellable(options.signal, async (signal) => await this.#create(vol, options, signal))
  }

  async #create (vol: VolumeRef, options: CreateBackupOptions, signal: AbortSignal): Promise<Backup> {
    const requested = (options.strategy ?? BackupStrategy.Full) as BackupStrategy
    if (!STRATEGIES.has(requested)) throw new GalleonError('INVALID_ARGUMENT', `backup strategy must be one of ${[...STRATEGIES].join(', ')}, got ${describe(options.strategy)}`)
    const target = this.#target(options.target)
    const volume = await this.#g.getVolume(vol)
    checkAborted(signal)
    return await this.#queue(target).run(async () => {
      await target.open()
      if (options.hooks?.pre !== undefined) {
        try {
          await options.hooks.pre({ volume, strategy: requested })
        } catch (err) {
          throw new GalleonError('HOOK_FAILED', `the pre-backup hook of volume ${volume.name} failed, so no backup was taken: ${(err as Error)?.message ?? String(err)}`, { cause: err })
        }
      }
      // The lease tells deletions in other processes and instances that a backup is under way
      // here, whose chunks no manifest names yet (see leases.ts): they collect none of them. A
      // collection that started before it may be deleting chunks this backup would reuse: waited for.
      const lease = await TargetLease.take(target, 'backup')
      try {
        if (lease !== undefined) {
          // Leases of killed processes of this machine would keep .tmp- files from being removed at open.
          await removeAbandoned(target as LeasingTarget, lease.id)
          await waitForCollections(target as LeasingTarget, lease.id, signal)
        }
        return await this.#store(volume, target, requested, options, signal, lease)
      } finally {
        await this.#endLease(target, lease)
      }
    })
  }

  /** Takes the backup of #create, under `lease` (see there). */
  async #store (volume: Volume, target: BackupTarget, requested: BackupStrategy, options: CreateBackupOptions, signal: AbortSignal, lease: TargetLease | undefined): Promise<Backup> {
    const volumeSnapshots = await this.#g.listSnapshots(volume.id)
    const own = new Set(volumeSnapshots.flatMap((s) => s.name.startsWith('backup-') ? [s.name.slice('backup-'.length)] : []))
    const { manifests: ours, indexUsed } = await readVolumeManifests(target, volume.id, own)
    const snapshots = new Set(volumeSnapshots.map((s) => s.id))
    const backupKey = volume.encrypted ? await this.#keys.backupKey(volume.id) : undefined
    // Read before the snapshot is taken: every backup of the volume stored by then (by any
    // instance) holds older data and gets a smaller number (see order.ts). An encrypted volume's
    // manifests count only when they authenticate under the key they name (its current backup
    // key, or one a rotation retired): one planted on the target by someone without the key
    // would otherwise number every later backup, up to the cap, where they all share one number
    // and fall back to their dates for good.
    const sequence = nextSequence(backupKey === undefined ? ours : await this.#newestAuthentic(ours, backupKey))
    // A base must still have its snapshot, and be sealed as this backup will be: after the volume
    // moved between a plain and an encrypting class, the next backup is full, so an encrypted
    // volume's backups never lean on plaintext ones (which can then be deleted) or the reverse.
    // And its chain of bases must be whole on the target: a backup built on a broken chain would be
    // stored as complete and fail at restore.
    // An encrypted volume's manifests count only when their tags check out (see verifyManifestTag):
    // a backup must not build on one altered on the target, nor on a chain holding one.
    const keys = backupKey === undefined ? undefined : chunkKeys(backupKey.key)
    const authentic = (m: Manifest): boolean => {
      if (keys === undefined) return true
      try { verifyManifestTag(m, keys); return true } catch { return false }
    }
    const byId = new Map(ours.filter(authentic).map((m) => [m.id, m]))
    // Memoized along the walk: every manifest's chain is checked once, not once per manifest
    // built on it (a long incremental chain cost its length squared).
    const wholeChains = new Map<string, boolean>()
    const whole = (m: Manifest): boolean => {
      const walked: string[] = []
      let result = true
      for (let at: string | null = m.base, steps = 0; at !== null; at = byId.get(at)?.base ?? null, steps++) {
        const known = wholeChains.get(at)
        if (known !== undefined) { result = known; break }
        if (!byId.has(at) || steps > byId.size) { result = false; break }
        walked.push(at)
      }
      for (const id of walked) wholeChains.set(id, result)
      return result
    }
    const usable = ours.filter((m) => byId.has(m.id) && snapshots.has(m.snapshot.id) && m.encryption?.fingerprint === backupKey?.fingerprint && whole(m))
    let base = requested === BackupStrategy.Incremental
      ? usable.at(-1)
      : requested === BackupStrategy.Differential ? usable.filter((m) => m.strategy === 'full').at(-1) : undefined
    let strategy = base === undefined ? BackupStrategy.Full : requested
    // A leftover snapshot (see retryLeftSnapshots) can be a base again once the backup that freed
    // it is deleted: it stays while this backup lists the changes since it.
    const baseSnapshot = base?.snapshot.id
    if (baseSnapshot !== undefined) this.#basesInUse.set(baseSnapshot, (this.#basesInUse.get(baseSnapshot) ?? 0) + 1)
    let baseReleased = false
    const releaseBase = (): void => {
      if (baseSnapshot === undefined || baseReleased) return
      baseReleased = true
      const left = (this.#basesInUse.get(baseSnapshot) ?? 1) - 1
      if (left === 0) this.#basesInUse.delete(baseSnapshot)
      else this.#basesInUse.set(baseSnapshot, left)
    }
    const id = randomUUID()
    await storedMetadata(this.#pending?.put(id, { volumeId: volume.id, snapshot: `backup-${id}` }))
    let snapshot: Awaited<ReturnType<GalleonFS['createSnapshot']>>
    try {
      snapshot = await this.#g.createSnapshot(volume.id, `backup-${id}`)
    } catch (err) {
      releaseBase()
      await this.#pending?.del(id).catch(() => {})
      throw err
    }
    let forget = true
    let arrived = false
    try {
      await this.#snapshotHere(volume, snapshot.id, signal)
      arrived = true
      let indices: number[]
      try {
        indices = await this.#g.listChangedBlocks(volume.id, base === undefined ? { to: snapshot.id } : { from: base.snapshot.id, to: snapshot.id })
      } catch (err) {
        // The base's snapshot went after it was chosen (a leftover deleted with the clone that held
        // it, see retryLeftSnapshots, or a deleteSnapshot): this backup is a full one instead.
        if (base === undefined || errorCode(err) !== 'SNAPSHOT_NOT_FOUND') throw err
        base = undefined
        strategy = BackupStrategy.Full
        indices = await this.#g.listChangedBlocks(volume.id, { to: snapshot.id })
      } finally {
        releaseBase()
      }
      const blockSize = volume.blockSize
      const total = indices.length * blockSize
      let done = 0
      const progress = (): void => {
        this.#g.emit('backup:progress', { backupId: id, volumeId: volume.id, volumeName: volume.name, bytesDone: done, bytesTotal: total })
        report(options.onProgress, done, total)
      }
      progress()
      const chunkBlocks = Math.max(1, CHUNK_BYTES / blockSize)
      const pieces = toPieces(toRuns(indices, chunkBlocks), chunkBlocks, Math.max(1, CHUNK_WINDOW_BYTES / blockSize))
      const extents: Extent[][] = new Array(pieces.length)
      const referenced = new Set<string>()
      let newChunks = 0
      let storedBytes = 0
      const stored = new Set<string>()
      let next = 0
      const worker = async (stop: () => boolean): Promise<void> => {
        while (next < pieces.length && !stop()) {
          checkAborted(signal)
          const at = next++
          const piece = pieces[at] as Array<[number, number]>
          const parts: Uint8Array[] = []
          const pieceExtents: Extent[] = []
          let offset = 0
          for (const [index, blocks] of piece) {
            const data = await this.#g.read({ volume: volume.id, snapshot: snapshot.id }, index * blockSize, blocks * blockSize)
            if (isZero(data)) {
              pieceExtents.push([index, blocks, null, 0])
            } else {
              pieceExtents.push([index, blocks, '', offset])
              parts.push(data)
              offset += blocks
            }
          }
          if (parts.length > 0) {
            const data = parts.length === 1 ? parts[0] as Uint8Array : concat(parts, offset * blockSize)
            const chunk = chunkIdOf(data, keys)
            for (const extent of pieceExtents) if (extent[2] === '') extent[2] = chunk
            referenced.add(chunk)
            if (!stored.has(chunk)) {
              stored.add(chunk)
              // A chunk already there is reused, and touched so that a deletion in another process
              // spares it (see delete) until this backup's manifest names it.
              if (!await (target.touchChunk !== undefined ? target.touchChunk(chunk) : target.hasChunk(chunk))) {
                const envelope = await encodeChunk(data, keys === undefined ? undefined : { id: chunk, keys })
                await target.putChunk(chunk, envelope)
                newChunks++
                storedBytes += envelope.byteLength
              }
            }
          }
          extents[at] = pieceExtents
          for (const [, blocks] of piece) done += blocks * blockSize
          progress()
        }
      }
      await runWorkers(worker)
      checkAborted(signal)
      await this.#checkChunks(target, lease, referenced, signal)
      const manifest: Manifest = {
        kind: 'galleonfs-backup',
        format: 1,
        id,
        createdAt: new Date(this.#now()).toISOString(),
        sequence,
        strategy,
        requestedStrategy: requested,
        base: base?.id ?? null,
        volume: { id: volume.id, name: volume.name, namespace: volume.namespace, sizeBytes: snapshot.sizeBytes, blockSize, storageClass: volume.storageClass, replicas: volume.replicas, labels: { ...volume.labels }, ...(volume.pool === undefined ? {} : { pool: volume.pool }) },
        ...(backupKey === undefined ? {} : { encryption: { algorithm: 'AES-256-GCM' as const, fingerprint: backupKey.fingerprint, wrappedKey: backupKey.wrapped, kekId: backupKey.kekId, provider: backupKey.provider } }),
        snapshot: { id: snapshot.id, name: snapshot.name },
        ...(options.policy === undefined ? {} : { policy: String(options.policy) }),
        extents: extents.flat(),
        stats: { blocks: indices.length, bytes: total, chunks: referenced.size, newChunks, storedBytes }
      }
      await target.flush?.()
      const manifestBytes = encodeManifest(manifest, keys)
      await target.putManifest(id, manifestBytes)
      if (lease !== undefined && (lease.lost || !await lease.intact())) {
        // The lease was taken for dead since the check (this process stopped, a suspended VM):
        // a collection may have deleted chunks the manifest names. Checked again; not stored if so.
        try {
          await this.#checkChunks(target, lease, referenced, signal)
        } catch (err) {
          await target.deleteManifest(id).catch((cause: unknown) => {
            throw new GalleonError(errorCode(err), `${(err as Error).message}; its manifest could not be removed (${(cause as Error).message}): delete backup ${id}, which names missing chunks`, { cause: err })
          })
          throw err
        }
      }
      // Extended only when it was used (not found lying about this volume's backups): else rebuilt.
      await this.#writeIndexOrReport(target, indexUsed ? { manifest, bytes: manifestBytes } : undefined)
      const backup = toBackup(manifest, target)
      // Keep the snapshots later backups need as bases (this one, and the newest full); free the rest.
      const newestFull = strategy === BackupStrategy.Full ? manifest : ours.filter((m) => m.strategy === 'full').at(-1)
      for (const older of ours) {
        if (older.id !== newestFull?.id && snapshots.has(older.snapshot.id)) await this.#freeSnapshot(volume.id, volume.name, older)
      }
      this.#g.emit('backup:completed', backup)
      if (options.hooks?.post !== undefined) {
        try {
          await options.hooks.post(backup)
        } catch (err) {
          throw new GalleonError('HOOK_FAILED', `backup ${id} of volume ${volume.name} is complete and stored, but its post-backup hook failed: ${(err as Error)?.message ?? String(err)}`, { cause: err })
        }
      }
      return backup
    } catch (err) {
      if (!arrived) {
        // The snapshot (on the primary) is not on this node's copy yet, so it cannot be named here:
        // it stays recorded, and an open deletes it (by name) once the copy has it; `elsewhere`
        // keeps the record at an open where the copy still lacks it (not resynced yet).
        forget = false
        await this.#pending?.put(id, { volumeId: volume.id, snapshot: snapshot.name, elsewhere: true }).catch(() => {})
      } else if (await target.getManifest(id).catch(() => undefined) === undefined) {
        // A snapshot not deleted now (the instance is closing) stays recorded: the next open deletes it.
        forget = await this.#g.deleteSnapshot(volume.id, snapshot.id).then(() => true, gone)
      }
      if (!(err instanceof GalleonError) && isNoSpaceError(err)) throw new GalleonError('NO_SPACE', `the backup target ${target.location} is full, so backup ${id} of volume ${volume.name} was not stored (nothing of it is listed); free space there or delete old backups, then back up again`, { cause: err })
      throw err
    } finally {
      releaseBase()
      if (forget) await this.#pending?.del(id).catch(() => {})
    }
  }

  /**
   * Checks that every chunk a backup names is on the target, before its manifest is stored: a
   * deletion in another process may have collected one (one of an earlier release, which takes no
   * lease, or one that took this backup's lease for dead), and a manifest naming a missing chunk
   * would look complete and fail at restore. With a lease, it is rewritten first (so that every
   * collection starting from now sees it) and collections already running are waited for.
   */
  async #checkChunks (target: BackupTarget, lease: TargetLease | undefined, referenced: ReadonlySet<string>, signal: AbortSignal): Promise<void> {
    if (lease !== undefined) {
      // Found as last written: collections from now on see it. Else written again (`lost` set).
      if (lease.lost || !await lease.intact()) await lease.refresh()
      lease.lost = false
      await waitForCollections(target as LeasingTarget, lease.id, signal)
    }
    for (const chunk of referenced) {
      if (!await target.hasChunk(chunk)) {
        throw new GalleonError('BUSY', `chunk ${chunk} of this backup was deleted from ${target.location} while the backup ran (by a deleteBackup in another process, which took this backup for abandoned if its process was stopped or suspended meanwhile); no backup was stored, take it again`)
      }
    }
  }

  /** Ends a lease; one that cannot be removed is reported (collections wait until they find it abandoned). */
  async #endLease (target: BackupTarget, lease: TargetLease | undefined): Promise<void> {
    await lease?.end().catch((err: unknown) => {
      this.#g.emit('io:error', { volumeId: '', volumeName: '', operation: 'write', code: errorCode(err), message: `could not remove in-progress lease ${lease.id} from backup target ${target.location} (other processes take it for a running backup until they find it abandoned, and collect no chunk meanwhile): ${(err as Error).message}` })
    })
  }

  /**
   * The manifest with the largest sequence among an encrypted volume's `manifests` that
   * authenticates under the backup key it names (as a list of at most one, for nextSequence):
   * tried largest first, so that it usually costs one check under the current key. One that does
   * not authenticate (altered or planted on the target, untagged, or plain: an encrypted volume's
   * backups are sealed; those from before a move out of a plain class are not numbered by) counts
   * for nothing. A key that cannot be opened for another reason (the key provider is unavailable)
   * fails the backup rather than number it low.
   */
  async #newestAuthentic (manifests: readonly Manifest[], current: { key: Uint8Array, fingerprint: string }): Promise<Manifest[]> {
    const opened = new Map<string, ChunkKeys>([[current.fingerprint, chunkKeys(current.key)]])
    const numbered = manifests.filter((m) => m.sequence !== undefined && m.encryption !== undefined).sort((a, b) => (b.sequence as number) - (a.sequence as number))
    for (const manifest of numbered) {
      try {
        await backupChunkKeys(this.#keys, manifest, opened)
        return [manifest]
      } catch (err) {
        const code = errorCode(err)
        if (code !== 'DECRYPTION_FAILED' && code !== 'CORRUPTION') throw err
      }
    }
    return []
  }

  /**
   * Waits until this node's copy of the volume holds the backup's snapshot. On a node that is not
   * the primary of a replicated volume, the primary takes the snapshot and the copy here gets it
   * through its change stream, maybe after the call returned: the changed blocks are listed from
   * this copy's snapshots, so the backup starts once the snapshot is here.
   */
  async #snapshotHere (volume: Volume, snapshotId: string, signal: AbortSignal): Promise<void> {
    const deadline = performance.now() + SNAPSHOT_ARRIVAL_MS
    while (!(await this.#g.listSnapshots(volume.id)).some((s) => s.id === snapshotId)) {
      checkAborted(signal)
      if (performance.now() >= deadline) {
        const primary = await this.#g.replicationStatus(volume.id).then((s) => s.primary, () => undefined)
        throw new GalleonError('BACKEND_UNAVAILABLE', `the copy of volume ${volume.name} on this node did not receive the backup's snapshot from its primary (${primary ?? 'unknown'}) within ${SNAPSHOT_ARRIVAL_MS / 1000} s (it is out of sync?); no backup was stored: take it on the primary's node, or once this copy is in sync (replicationStatus)`)
      }
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }

  async list (vol?: VolumeRef, options: { target?: BackupTargetRef } = {}): Promise<Backup[]> {
    const target = await this.#readTarget(options?.target)
    await target.open()
    let manifests = await readManifests(target)
    if (vol !== undefined) {
      const ref: unknown = typeof vol === 'string' ? vol : (vol as { id?: unknown } | null)?.id
      if (typeof ref !== 'string' || ref.length === 0) throw new GalleonError('INVALID_ARGUMENT', `listBackups() takes a volume id or name (or nothing for every backup), got ${describe(vol)}`)
      const volume = await this.#g.getVolume(ref).catch(() => undefined)
      manifests = manifests.filter((m) => volume !== undefined ? m.volume.id === volume.id : (m.volume.id === ref || m.volume.name === ref))
    }
    return manifests.map((m) => toBackup(m, target))
  }

  async get (id: string, options: { target?: BackupTargetRef } = {}): Promise<Backup> {
    const target = await this.#readTarget(options?.target, id)
    await target.open()
    return toBackup(await readManifest(target, id), target)
  }

  async verify (id: string, options: { target?: BackupTargetRef } = {}): Promise<BackupVerification> {
    const target = await this.#readTarget(options?.target, id)
    await target.open()
    const problems: Array<{ backupId: string, chunk?: string, code: string, message: string }> = []
    const chain: Manifest[] = []
    let at: string | null = id
    while (at !== null) {
      const current: string = at
      if (chain.some((m) => m.id === current)) {
        problems.push({ backupId: current, code: 'CORRUPTION', message: `the chain of bases loops back to backup ${current}; its manifests were altered on the target` })
        break
      }
      try {
        const manifest: Manifest = await readManifest(target, current)
        chain.push(manifest)
        at = manifest.base
      } catch (err) {
        if (current === id) throw err
        problems.push({ backupId: current, code: errorCode(err), message: `base backup ${current} cannot be read: ${(err as Error).message}` })
        break
      }
    }
    const checked = new Set<string>()
    // Newest first, so each key is opened through its newest wrapping (see backupChunkKeys).
    const opened = new Map<string, ChunkKeys>()
    for (const manifest of chain) {
      let keys: ChunkKeys | undefined
      try {
        keys = await backupChunkKeys(this.#keys, manifest, opened)
      } catch (err) {
        problems.push({ backupId: manifest.id, code: errorCode(err), message: (err as Error).message })
        continue
      }
      for (const [, , chunk] of manifest.extents) {
        if (chunk === null || checked.has(chunk)) continue
        checked.add(chunk)
        try {
          const envelope = await target.getChunk(chunk)
          if (envelope === undefined) throw new GalleonError('CORRUPTION', `chunk ${chunk} is missing from the target`)
          await decodeChunk(chunk, envelope, keys)
        } catch (err) {
          problems.push({ backupId: manifest.id, chunk, code: errorCode(err), message: (err as Error).message })
        }
      }
    }
    // The index is a summary the next backup or deletion rewrites: a stale one (a crash between a
    // manifest and the index) does not make the backup bad, so it is reported on its own.
    let indexCurrent: boolean | null = null
    if (target.getIndex !== undefined) {
      const bytes = await target.getIndex()
      const index = bytes === undefined ? undefined : decodeIndex(bytes)
      const manifestBytes = await target.getManifest(id)
      const entry = index?.backups.find((backup) => backup.id === id)
      indexCurrent = entry !== undefined && manifestBytes !== undefined && entry.manifestSha256 === chunkId(manifestBytes)
    }
    return { backupId: id, ok: problems.length === 0, backupsChecked: chain.length, chunksChecked: checked.size, problems, indexCurrent }
  }

  /**
   * Tags the manifests of an encrypted backup's chain written before manifests were authenticated
   * (see verifyManifestTag), after checking that each one's key opens for its volume and that every
   * chunk it names is there and authenticates under that key. Nothing is rewritten unless all of
   * the chain checks out. The caller vouches that the manifests were not altered on the target.
   */
  async adopt (id: string, options: { target?: BackupTargetRef } = {}): Promise<BackupAdoption> {
    const target = await this.#readTarget(options?.target, id)
    await target.open()
    return await this.#queue(target).run(async () => {
      // Under a lease from before its chunks are checked until its manifests are rewritten: a
      // deletion in another process collects nothing meanwhile (a manifest it removed, rewritten
      // here, would name collected chunks), and an open leaves the temporary files of these writes
      // alone whatever its clock says (see leases.ts). A collection already running is waited for.
      const lease = await TargetLease.take(target, 'adopt')
      try {
        if (lease !== undefined) await waitForCollections(target as LeasingTarget, lease.id)
        return await this.#adopt(target, id)
      } finally {
        await this.#endLease(target, lease)
      }
    })
  }

  async #adopt (target: BackupTarget, id: string): Promise<BackupAdoption> {
    const chain = await readChain(target, id, 'is not adopted')
    // A chain never spans volumes (a backup builds only on its own volume's): one that does was
    // altered on the target, and adopting it would vouch for another volume's manifests.
    const first = chain[0] as Manifest
    const foreign = chain.find((manifest) => manifest.volume.id !== first.volume.id)
    if (foreign !== undefined) {
      throw new GalleonError('CORRUPTION', `backup ${first.id} builds on backup ${foreign.id}, which is of another volume (${foreign.volume.id}, not ${first.volume.id}); a chain never spans volumes, so its manifests were altered on the target; it is not adopted`)
    }
    const opened = new Map<string, ChunkKeys>()
    const toTag: Array<{ manifest: Manifest, keys: ChunkKeys }> = []
    const unchanged: string[] = []
    const checked = new Set<string>()
    // Newest first, so each key is opened through its newest wrapping (see backupChunkKeys).
    for (const manifest of chain) {
      // A tagged manifest is checked as usual: a wrong tag is refused, not re-tagged.
      const untagged = manifest.encryption !== undefined && isUntaggedManifest(manifest)
      const keys = await backupChunkKeys(this.#keys, manifest, opened, { untagged: 'allow' })
      if (!untagged || keys === undefined) { unchanged.push(manifest.id); continue }
      for (const [, , chunk] of manifest.extents) {
        if (chunk === null || checked.has(chunk)) continue
        checked.add(chunk)
        const envelope = await target.getChunk(chunk)
        if (envelope === undefined) throw new GalleonError('CORRUPTION', `chunk ${chunk} of backup ${manifest.id} is missing from ${target.location}; the backup is not adopted`)
        try {
          await decodeChunk(chunk, envelope, keys)
        } catch (err) {
          throw new GalleonError(errorCode(err), `chunk ${chunk} of backup ${manifest.id} does not authenticate under its key (${(err as Error).message}); the backup is not adopted`, { cause: err })
        }
      }
      toTag.push({ manifest, keys })
    }
    // Oldest first: a crash part-way leaves the newer ones untagged, to adopt again. One deleted
    // meanwhile (by a deleteBackup in another process) is not written back.
    for (const { manifest, keys } of toTag.reverse()) {
      if (await target.getManifest(manifest.id) === undefined) throw new GalleonError('BACKUP_NOT_FOUND', `backup ${manifest.id} was deleted from ${target.location} while it was being adopted, so it is not adopted; listBackups() shows the backups there`)
      await target.putManifest(manifest.id, encodeManifest(manifest, keys))
    }
    if (toTag.length > 0) await this.#writeIndexOrReport(target)
    return { backupId: id, adopted: toTag.map(({ manifest }) => manifest.id), unchanged, chunksChecked: checked.size }
  }

  async delete (id: string, options: DeleteBackupOptions = {}): Promise<DeleteBackupResult> {
    const graceMs = checkDeleteBackupOptions(options)
    const target = await this.#readTarget(options.target, id)
    await target.open()
    return await this.#queue(target).run(async () => {
      const unreadable: string[] = []
      const read = new Map<string, Uint8Array>()
      const manifests = await readManifests(target, unreadable, read)
      const doomed = manifests.find((m) => m.id === id)
      if (doomed === undefined) throw new GalleonError('BACKUP_NOT_FOUND', `no backup ${describe(id)} on ${target.location}; listBackups() shows the backups there`)
      // Backups whose chain goes through this one (newest first, so a crash leaves valid chains).
      const byId = new Map(manifests.map((m) => [m.id, m]))
      const dependsOnIt = (m: Manifest): boolean => {
        // Bounded: a chain altered on the target into a loop must not hang the deletion.
        for (let base = m.base, steps = 0; base !== null && steps <= byId.size; base = byId.get(base)?.base ?? null, steps++) if (base === id) return true
        return false
      }
      const dependents = manifests.filter(dependsOnIt)
      if (dependents.length > 0 && options?.force !== true) {
        throw new GalleonError('BUSY', `backup ${id} is the base of ${dependents.length} later backup(s) (${dependents.slice(0, 3).map((m) => m.id).join(', ')}); delete those first, or pass { force: true } to delete them with it`)
      }
      const deleted = [...dependents.reverse(), doomed]
      for (const manifest of deleted) {
        await target.deleteManifest(manifest.id)
        await this.#freeSnapshot(manifest.volume.id, manifest.volume.name, manifest)
      }
      const kept = manifests.filter((m) => !deleted.includes(m))
      const referenced = new Set<string>()
      for (const manifest of kept) for (const [, , chunk] of manifest.extents) if (chunk !== null) referenced.add(chunk)
      // The index is rebuilt from the manifests just read (only one stored since is read again).
      const known = new Map<string, { manifest: Manifest, bytes: Uint8Array }>()
      for (const manifest of kept) {
        const bytes = read.get(manifest.id)
        if (bytes !== undefined) known.set(manifest.id, { manifest, bytes })
      }
      await this.#writeIndexOrReport(target, undefined, { manifests: known, unreadable: new Set(unreadable) })
      let collected: { deleted: number, deferred?: string }
      if (unreadable.length > 0) {
        // Their chunks are unknown: collecting would destroy those backups for good.
        const why = `backup target ${target.location} holds ${unreadable.length} manifest(s) this version cannot read (${unreadable.slice(0, 3).join(', ')}): no chunk was deleted, so that their backups stay restorable; verify or remove them, and the next deletion collects`
        this.#g.emit('io:error', { volumeId: '', volumeName: '', operation: 'write', code: 'CORRUPTION', message: why })
        // Deferred only if a chunk a collection would delete was left (not one the grace period spares).
        collected = { deleted: 0, ...(await anyCollectable(target, referenced, graceMs) ? { deferred: why } : {}) }
      } else {
        collected = await collectChunks(target, referenced, new Set(manifests.map((m) => m.id)), graceMs, (code, message) => {
          this.#g.emit('io:error', { volumeId: '', volumeName: '', operation: 'write', code, message })
        })
      }
      for (const manifest of deleted) this.#g.emit('backup:deleted', toBackup(manifest, target))
      // Left for a later deletion: said in the result, not only by the 0.
      return { deletedBackups: deleted.map((m) => m.id), deletedChunks: collected.deleted, collectionDeferred: collected.deferred !== undefined, ...(collected.deferred === undefined ? {} : { deferredReason: collected.deferred }) }
    })
  }

  async restore (id: string, options: RestoreBackupOptions = {}): Promise<Volume> {
    if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `restoreBackup() options must be an object such as { name: 'restored' }, got ${describe(options)}`)
    if ((options.name === undefined) === (options.volume === undefined) && options.volume !== undefined) {
      throw new GalleonError('INVALID_ARGUMENT', 'restoreBackup() takes either { name } (a new volume) or { volume } (overwrite an existing one), not both')
    }
    checkListener('restoreBackup', options.onProgress)
    const target = await this.#readTarget(options.target, id)
    const restoring = this.#restoring
    const claimed = this.#restoringInto
    return await this.#cancellable(options.signal, async (signal) => await restoreBackup(this.#g, this.#keys, target, id, { ...options, signal }, {
      started: async (volumeId, safetySnapshot) => {
        if (claimed.has(volumeId)) throw new GalleonError('BUSY', `another restore is writing into volume ${describe(options.volume ?? volumeId)}; wait for it to finish (two at once would leave a mix of both backups)`)
        claimed.add(volumeId)
        try {
          // Durable before anything is written to the volume (restoreBackup awaits it first).
          await storedMetadata(restoring?.put(volumeId, { backupId: id, ...(safetySnapshot === undefined ? {} : { safetySnapshot }) }, SYNC))
        } catch (err) {
          claimed.delete(volumeId)
          throw err
        }
      },
      // Durable before restoreBackup resolves: a record left over would remove the restored volume.
      forget: async (volumeId) => { await restoring?.del(volumeId, SYNC) },
      finished: async (volume, safetySnapshot) => { await this.#finished(volume.id, volume.name, id, safetySnapshot) },
      fence: async (volumeId, safetySnapshot, why) => {
        // A replicated volume is only reported (see #putBackOrFence).
        if (this.#fence === undefined || this.#fence.replicated(volumeId)) return false
        await this.#fence.fence(volumeId, safetySnapshot, why)
        return true
      },
      release: (volumeId) => { claimed.delete(volumeId) }
    }))
  }

  /** Volumes a restore of this instance is writing into (a second restore into one is refused). */
  readonly #restoringInto = new Set<string>()

  /**
   * The target of a call that only reads it (or deletes from it). A directory given by path that is
   * no backup target yet is refused, not made one: a mistyped or unmounted path must not read as a
   * target without backups. The configured default target is made on first use, as before.
   */
  async #readTarget (ref: BackupTargetRef | undefined, id?: string): Promise<BackupTarget> {
    const target = this.#target(ref)
    if (!(target instanceof DirectoryBackupTarget) || await target.isTarget()) return target
    const configured = this.#defaultTarget
    if (ref === undefined || (typeof configured === 'string' && configured.length > 0 && resolve(configured) === target.location)) return target
    throw new GalleonError('BACKUP_NOT_FOUND', `${id === undefined ? 'no backups' : `no backup ${describe(id)}`} on ${target.location}: it is not a backup target (it holds no ${DIRECTORY_TARGET_MARKER}); check the path (a directory becomes a backup target with the first createBackup() to it)`)
  }

  #target (ref: BackupTargetRef | undefined): BackupTarget {
    const chosen = ref ?? this.#defaultTarget
    if (chosen === undefined) {
      throw new GalleonError('INVALID_ARGUMENT', 'no backup target: pass { target: \'/path/to/backups\' } or open GalleonFS with { backupTarget }')
    }
    if (typeof chosen === 'string') {
      if (chosen.length === 0) throw new GalleonError('INVALID_ARGUMENT', 'a backup target path must not be empty')
      // One object (and so one queue) per directory, however the path is spelled.
      const key = resolve(chosen)
      let target = this.#directories.get(key)
      if (target === undefined) this.#directories.set(key, target = new DirectoryBackupTarget({ path: key }))
      return target
    }
    const methods = ['open', 'close', 'hasChunk', 'putChunk', 'getChunk', 'deleteChunk', 'listChunks', 'putManifest', 'getManifest', 'deleteManifest', 'listManifests'] as const
    if (chosen === null || typeof chosen !== 'object' || methods.some((name) => typeof (chosen as unknown as Record<string, unknown>)[name] !== 'function')) {
      throw new GalleonError('INVALID_ARGUMENT', `a backup target is a directory path or a BackupTarget (with ${methods.join(', ')}), got ${describe(chosen)}`)
    }
    return chosen
  }

  #queue (target: BackupTarget): SerialQueue {
    let queue = this.#queues.get(target)
    if (queue === undefined) this.#queues.set(target, queue = new SerialQueue())
    return queue
  }

  /** The index is a summary: failing to rewrite it is reported, not a failure of the backup or deletion. */
  async #writeIndexOrReport (target: BackupTarget, added?: { manifest: Manifest, bytes: Uint8Array }, known?: KnownManifests): Promise<void> {
    try {
      await writeIndex(target, this.#now, added, known)
    } catch (err) {
      this.#g.emit('io:error', { volumeId: '', volumeName: '', operation: 'write', code: errorCode(err), message: `could not rewrite the index of backup target ${target.location} (the next backup or deletion tries again): ${(err as Error).message}` })
    }
  }
}
