// The backup API's types: options of create, restore and delete, what a backup and a verification
// report, progress listeners, hooks, and where backups of encrypted volumes get their keys.

import type { BackupTarget } from '../drivers.js'
import type { VolumeRef } from '../galleonfs.js'
import type { BackupStrategy, Volume } from '../types.js'
import type { BackupKey } from '../crypto/key-manager.js'

/**
 * Not public: a createVolume option (a symbol, so no user option can collide) through which a
 * restore chooses the id of the volume it creates, so that it records the id before the volume
 * exists (a kill right after the create then leaves a record naming it; see restore.ts).
 */
export const NEW_VOLUME_ID = Symbol('galleonfs.newVolumeId')

/** Where backups of encrypted volumes get their keys (the instance's KeyManager). */
export interface BackupKeySource {
  backupKey: (volumeId: string) => Promise<BackupKey>
  openBackupKey: (volumeId: string, stored: { wrapped: string, kekId: string, fingerprint: string }) => Promise<Uint8Array>
}

/** Options of deleteBackup. */
export interface DeleteBackupOptions {
  /** Where the backup is (default: the instance's backup target). */
  target?: BackupTargetRef
  /** Also delete the later backups built on this one. */
  force?: boolean
  /**
   * Chunks no backup uses that were put or reused within this many seconds are kept (default 3600)
   * when the target tells chunk times: another process may be taking a backup that names them. 0
   * collects them at once; do that only when no other process writes backups to the target.
   */
  chunkGraceSeconds?: number
}

/** What deleteBackup did. */
export interface DeleteBackupResult {
  /** The backups deleted: with `force`, the later ones built on it first, then it. */
  readonly deletedBackups: string[]
  /** Chunks no remaining backup uses that this deletion deleted. */
  readonly deletedChunks: number
  /**
   * True when this deletion left chunks no backup uses for a later one to collect: a backup (or
   * adoption) was being taken on the target by another process or instance (its live lease; its
   * chunks are named by no manifest yet, so none is deleted meanwhile), a manifest there could not
   * be read, or the collection lost its own lease. Every later deleteBackup on the target collects
   * what was left. False when all such chunks were deleted (but those spared by `chunkGraceSeconds`,
   * which is a choice, not a deferral).
   */
  readonly collectionDeferred: boolean
  /** Why collection was deferred, when it was: names the lease holder (backup, process, host, start, lease id). */
  readonly deferredReason?: string
}

/** A target: a directory path, or a BackupTarget driver. */
export type BackupTargetRef = string | BackupTarget

/** Application hooks around a backup: `pre` runs before the snapshot is taken (a failure aborts the backup), `post` after the manifest is stored. */
export interface BackupHooks {
  readonly pre?: (context: { volume: Volume, strategy: BackupStrategy }) => unknown
  readonly post?: (backup: Backup) => unknown
}

/** Options of `createBackup`. */
export interface CreateBackupOptions {
  /** Default `full`. `incremental`: blocks changed since the volume's last backup on the target; `differential`: since its last full. */
  readonly strategy?: BackupStrategy | `${BackupStrategy}`
  /** Where to store it (default: the instance's `backupTarget`). */
  readonly target?: BackupTargetRef
  readonly hooks?: BackupHooks
  /** Aborting cancels the backup: nothing is recorded, chunks already stored are reused next time. */
  readonly signal?: AbortSignal
  /** Name of the backup policy taking it (set by the scheduler; retention prunes only its own). */
  readonly policy?: string
  /** Called as blocks are stored (also emitted as `backup:progress`); an exception it throws is ignored. */
  readonly onProgress?: ProgressListener
}

/** Options of `restoreBackup`: `name` (a new volume) or `volume` (overwrite an existing one). */
export interface RestoreBackupOptions {
  readonly name?: string
  readonly namespace?: string
  /**
   * Storage pool of a new volume (default: its storage class's, else the backed-up volume's pool if
   * it still exists). NO_SPACE before anything is written when the pool cannot take it.
   */
  readonly pool?: string
  readonly volume?: VolumeRef
  readonly target?: BackupTargetRef
  /** Aborting stops the restore: a new volume is removed, an existing one is put back from its safety snapshot (as after a failure). */
  readonly signal?: AbortSignal
  /** Called as blocks are written (also emitted as `restore:progress`); an exception it throws is ignored. */
  readonly onProgress?: ProgressListener
}

/** How far a long operation has come. */
export interface Progress {
  readonly bytesDone: number
  readonly bytesTotal: number
}

/** Receives progress; must not throw (what it throws is ignored, the operation goes on). */
export type ProgressListener = (progress: Progress) => void

/** A backup as listed from its target. */
export interface Backup {
  readonly id: string
  readonly volumeId: string
  readonly volumeName: string
  /** Namespace of the volume when it was backed up. */
  readonly volumeNamespace: string
  /** Strategy used: a first incremental or differential of a volume is taken as a full. */
  readonly strategy: BackupStrategy
  readonly requestedStrategy: BackupStrategy
  /** The backup this one applies on top of (null for a full). */
  readonly baseId: string | null
  readonly createdAt: string
  /**
   * Where it comes among its volume's backups on this target, in the order they were taken (1, 2,
   * ...): a backup started after another was stored is numbered after it, whatever the clock said.
   * Retention, the base of an incremental and `listBackups` order by it, not by `createdAt` (a
   * clock stepped back dates newer backups earlier). Two backups of one volume taken at the same
   * time from two instances may share a number. Null for a backup taken by a release before
   * 2026-12-06, which did not number them: such backups come before every numbered one.
   */
  readonly sequence: number | null
  /** Size of the volume when it was backed up. */
  readonly sizeBytes: number
  /** Blocks and bytes this backup holds (changed blocks for incremental and differential). */
  readonly blocks: number
  readonly bytes: number
  /** Distinct chunks it references, how many it added to the target, and their stored bytes. */
  readonly chunks: number
  readonly newChunks: number
  readonly storedBytes: number
  /** Name of the snapshot of the volume it was read from. */
  readonly snapshotName: string
  /** Where it is stored. */
  readonly target: string
  /** The backup policy that took it, if any. */
  readonly policy: string | null
  /** Whether its chunks are encrypted (a backup of an encrypted volume). */
  readonly encrypted: boolean
}

/** Result of `verifyBackup`. */
/** What adoptBackup did: the backups of the chain whose manifests it tagged, and those already tagged (or plain). */
export interface BackupAdoption {
  readonly backupId: string
  /** Encrypted backups of the chain (this one and its bases) whose manifests were tagged now. */
  readonly adopted: readonly string[]
  /** Backups of the chain that needed nothing: tagged already, or of a plain volume. */
  readonly unchanged: readonly string[]
  readonly chunksChecked: number
}

export interface BackupVerification {
  readonly backupId: string
  readonly ok: boolean
  /** Backups in the chain checked (this one and its bases). */
  readonly backupsChecked: number
  readonly chunksChecked: number
  readonly problems: ReadonlyArray<{ readonly backupId: string, readonly chunk?: string, readonly code: string, readonly message: string }>
  /**
   * Whether the target's index lists this backup with its current manifest (null: the target keeps
   * no index). A stale index is rewritten by the next backup or deletion and does not affect `ok`.
   */
  readonly indexCurrent: boolean | null
}
