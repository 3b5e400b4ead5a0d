// What backups and restores leave behind, recorded durably so that the next open cleans it up:
// snapshots of backups under way, volumes restores are writing into, and snapshots nothing needs
// any more that could not be deleted yet; plus the fence of a volume a restore left half-restored.

import type { AbstractSublevel } from 'abstract-level'
import { GalleonError, errorCode } from '../errors.js'
import type { IoErrorEvent } from '../events.js'
import type { GalleonFS } from '../galleonfs.js'
import { storedMetadata, type MetadataDatabase } from '../volumes/catalog.js'
import type { Manifest } from './format.js'

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
 * Stored backups whose snapshot the volume may still hold: `<volume id>!<backup id>` (so that a
 * backup reads its own volume's records alone) -> the volume and the target's location. A backup deleted by another instance (or process) writing the target leaves its
 * snapshot here, which no manifest names any more: the next backup of the volume to that target
 * deletes it (see freeUnlisted). Without the target, a snapshot of a backup on another target
 * could not be told apart.
 */
type StoredSublevel = AbstractSublevel<MetadataDatabase, any, string, { volumeId: string, target: string }>

/**
 * classic-level's option to fsync its log before resolving (abstract-level passes it through
 * sublevels). The records an open acts on (a restore under way, one that is over) must survive a
 * power loss, not only a killed process: a lost "restore over" would put a restored volume back to
 * its safety snapshot (or remove a restored new volume) at the next open.
 */
const SYNC = { sync: true } as unknown as Record<string, never>

/** How the instance fences a volume an interrupted restore left half-restored (see BackupLeftovers.start). */
export interface HalfRestoredFence {
  /** Whether the volume is replicated (false: gone or local). */
  readonly replicated: (volumeId: string) => boolean
  /** Marks it as an unfinished revert to `safetySnapshot`, `why` in the refusal's message (durable). */
  readonly fence: (volumeId: string, safetySnapshot: string, why: string) => Promise<void>
}

/** The key of a stored backup's record (see StoredSublevel). */
function storedKey (volumeId: string, backupId: string): string {
  return `${volumeId}!${backupId}`
}

/** Whether a deletion failed because what it deletes (or its volume) is gone already. */
export function gone (err: unknown): boolean {
  const code = errorCode(err)
  return code === 'SNAPSHOT_NOT_FOUND' || code === 'VOLUME_NOT_FOUND'
}

/** Names a snapshot nothing needs any more, in the report of a failure to delete it. */
function leftSnapshot (snapshot: string, volume: string, backupId: string, of?: 'backup'): string {
  return of === 'backup'
    ? `snapshot ${snapshot} of volume ${volume}, which backup ${backupId} was taken from and which no later backup needs as a base`
    : `snapshot ${snapshot} of volume ${volume}, which a restore of backup ${backupId} took and no longer needs (nothing reverts to it)`
}

/**
 * The records of what backups and restores leave behind (in the metadata database, when there is
 * one) and their cleanup: at open (start), when a clone lets go of its source (retryLeftSnapshots),
 * and when a backup or deletion frees a snapshot or a restore is over.
 */
export class BackupLeftovers {
  readonly #g: GalleonFS
  readonly #pending: PendingSublevel | undefined
  readonly #restoring: RestoringSublevel | undefined
  readonly #leftSnapshots: LeftSnapshotSublevel | undefined
  readonly #stored: StoredSublevel | undefined
  readonly #metadata: MetadataDatabase | undefined
  /** Snapshots running backups chose as their base (by id, with how many chose each): retryLeftSnapshots leaves them. */
  readonly #basesInUse = new Map<string, number>()

  constructor (g: GalleonFS, metadata: MetadataDatabase | undefined) {
    this.#g = g
    this.#pending = metadata?.sublevel('backupsInProgress', { valueEncoding: 'json' }) as PendingSublevel | undefined
    this.#restoring = metadata?.sublevel('restoresInProgress', { valueEncoding: 'json' }) as RestoringSublevel | undefined
    this.#leftSnapshots = metadata?.sublevel('restoreSnapshotsLeft', { valueEncoding: 'json' }) as LeftSnapshotSublevel | undefined
    this.#stored = metadata?.sublevel('backupSnapshots', { valueEncoding: 'json' }) as StoredSublevel | undefined
    this.#metadata = metadata
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

  /**
   * Marks `baseSnapshot` (when there is one) as the base a running backup chose, so that
   * retryLeftSnapshots leaves it: a leftover snapshot can be a base again once the backup that
   * freed it is deleted. Returns the release, which only its first call does.
   */
  holdBase (baseSnapshot: string | undefined): () => void {
    if (baseSnapshot !== undefined) this.#basesInUse.set(baseSnapshot, (this.#basesInUse.get(baseSnapshot) ?? 0) + 1)
    let baseReleased = false
    return (): void => {
      if (baseSnapshot === undefined || baseReleased) return
      baseReleased = true
      const left = (this.#basesInUse.get(baseSnapshot) ?? 1) - 1
      if (left === 0) this.#basesInUse.delete(baseSnapshot)
      else this.#basesInUse.set(baseSnapshot, left)
    }
  }

  /** Records backup `id` before its snapshot (named `snapshot`) is taken: an open deletes what it leaves. */
  async backupStarted (id: string, volumeId: string, snapshot: string): Promise<void> {
    await storedMetadata(this.#pending?.put(id, { volumeId, snapshot }))
  }

  /**
   * Records backup `id` as one whose snapshot (named `snapshot`) was taken on the primary and has
   * not reached this node's copy: an open deletes it (by name) once the copy has it, and keeps the
   * record meanwhile. Never rejects.
   */
  async backupLeftElsewhere (id: string, volumeId: string, snapshot: string): Promise<void> {
    await this.#pending?.put(id, { volumeId, snapshot, elsewhere: true }).catch(() => {})
  }

  /**
   * Forgets backup `id` (stored, or failed with its snapshot deleted or never taken). Never
   * rejects: a record left behind only makes the next open delete the backup's snapshot (gone
   * already for a failed one; for a stored one, the next backup builds on an older base or is full).
   */
  async backupOver (id: string): Promise<void> {
    await this.#pending?.del(id).catch(() => {})
  }

  /** Records, durably, a restore of `backupId` writing into `volumeId` (see RestoreTracker.started). */
  async restoreStarted (volumeId: string, backupId: string, safetySnapshot: string | undefined): Promise<void> {
    await storedMetadata(this.#restoring?.put(volumeId, { backupId, ...(safetySnapshot === undefined ? {} : { safetySnapshot }) }, SYNC))
  }

  /** Forgets, durably, the restore writing into `volumeId` (see RestoreTracker.forget). */
  async restoreForgotten (volumeId: string): Promise<void> {
    await this.#restoring?.del(volumeId, SYNC)
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
   * Fences `volumeId`, which a running restore failed to put back (see RestoreTracker.fence):
   * false when it is not fenced (before start(), or a replicated volume, which is only reported;
   * see #putBackOrFence).
   */
  async fenceHalfRestored (volumeId: string, safetySnapshot: string, why: string): Promise<boolean> {
    if (this.#fence === undefined || this.#fence.replicated(volumeId)) return false
    await this.#fence.fence(volumeId, safetySnapshot, why)
    return true
  }

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
    await this.finished(volumeId, '', backupId, safetySnapshot)
  }

  /**
   * A volume a restore of `backupId` left final (restored, or put back): its record becomes one of
   * its safety snapshot alone (in one batch: the volume is never put back after this), and the
   * snapshot is deleted. One that cannot be deleted now (a clone reads from it, say) is reported
   * and stays recorded, so that each open tries again. Rejects only if the record cannot change.
   */
  async finished (volumeId: string, volumeName: string, backupId: string, snapshot: string): Promise<void> {
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
  async freeSnapshot (volumeId: string, volumeName: string, manifest: Manifest): Promise<void> {
    const { id, name } = manifest.snapshot
    // createBackup names the snapshot it takes after the backup. A manifest altered on the target
    // (a plain volume's, or an encrypted volume's untagged one: this runs before any tag is
    // checked) may name any snapshot of the volume, which is not the backup's to delete.
    const snapshot = (await this.#g.listSnapshots(volumeId).catch(() => [])).find((s) => s.id === id)
    if (snapshot === undefined || snapshot.name !== `backup-${manifest.id}`) {
      await this.#stored?.del(storedKey(volumeId, manifest.id)).catch(() => {})
      return
    }
    await this.#deleteBackupSnapshot(volumeId, volumeName, manifest.id, id, name)
  }

  /** Records stored backup `id` of `volumeId` on the target at `location` (see StoredSublevel). Never rejects. */
  async backupStored (id: string, volumeId: string, location: string): Promise<void> {
    await this.#stored?.put(storedKey(volumeId, id), { volumeId, target: location }).catch(() => {})
  }

  /**
   * Deletes the snapshots of `volumeId`'s backups stored on the target at `location` whose
   * manifests are no longer there (`listed`: the backups of the volume a backup to it has just
   * read, and its own): deleted by another instance or process, which could not reach the
   * snapshot. Only backups this instance recorded (backupStored) count: a snapshot of a backup on
   * another target, or of one a replica's node took, is not this one's to judge. Never rejects.
   */
  async freeUnlisted (volumeId: string, volumeName: string, location: string, listed: ReadonlySet<string>): Promise<void> {
    const prefix = storedKey(volumeId, '')
    const records = await this.#stored?.iterator({ gte: prefix, lt: `${prefix}\uffff` }).all().catch(() => undefined) ?? []
    const mine = records.map(([key, record]) => [key.slice(prefix.length), record] as const).filter(([id, record]) => record.target === location && !listed.has(id))
    if (mine.length === 0) return
    const snapshots = await this.#g.listSnapshots(volumeId).catch(() => undefined)
    if (snapshots === undefined) return
    for (const [id] of mine) {
      const snapshot = snapshots.find((s) => s.name === `backup-${id}`)
      if (snapshot === undefined) await this.#stored?.del(storedKey(volumeId, id)).catch(() => {})
      else await this.#deleteBackupSnapshot(volumeId, volumeName, id, snapshot.id, snapshot.name)
    }
  }

  /** Deletes snapshot `id` (named `name`) of backup `backupId`; one that cannot be deleted now is recorded and reported. */
  async #deleteBackupSnapshot (volumeId: string, volumeName: string, backupId: string, id: string, name: string): Promise<void> {
    // Forgotten first: from here on the snapshot is deleted, or recorded as left to delete.
    await this.#stored?.del(storedKey(volumeId, backupId)).catch(() => {})
    try {
      await this.#g.deleteSnapshot(volumeId, id)
    } catch (err) {
      if (gone(err)) return
      let next = 'tried again at the next open'
      try {
        if (this.#leftSnapshots === undefined) throw new GalleonError('NOT_OPEN', 'no metadata database to record it in')
        await this.#leftSnapshots.put(id, { volumeId, backupId, of: 'backup', name }, SYNC)
      } catch (cause) {
        next = `not recorded for a later try either (${(cause as Error).message}), so delete it with deleteSnapshot once it can be`
      }
      this.#report({ volumeId, volumeName, operation: 'write', code: errorCode(err), message: `could not delete ${leftSnapshot(name, volumeName, backupId, 'backup')} (${next}): ${(err as Error).message}` })
    }
  }
}
