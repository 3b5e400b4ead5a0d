// The records the catalog persists (volumes, snapshots, live migrations) and the metadata
// database they live in, with the wait for a write to it that turns a full disk into NO_SPACE.

import type { AbstractLevel } from 'abstract-level'
import { isNoSpaceError } from '../abstract-block-store.js'
import { GalleonError } from '../errors.js'
import type { Volume } from '../types.js'

/** A volume's persisted record: the public fields plus its compact storage id. */
export interface VolumeRecord extends Volume {
  readonly storageId: number
  /**
   * The order of creation on this storage (the storage id it was created with, which a migration
   * replaces but this keeps): createdAt has milliseconds only. Absent on records made before it.
   */
  readonly createdSeq?: number
  /** Set on every copy of a replicated volume: the copy's applied position in its primary's stream. */
  readonly replication?: { readonly epoch: number, readonly seq: number }
  /**
   * Set while a 1-copy volume becomes replicated (migrateVolume to a replicated class), from the
   * catalog change until its cluster record is written: the class and copies it had before. A
   * node that stopped in between finds no record at its next join and puts these back (see
   * ClusterControl.join), so the volume is local again instead of a copy no primary serves.
   */
  readonly convertingFrom?: { readonly storageClass: string, readonly replicas: number }
  /**
   * Set on a volume createVolume makes replicated, from its local record until its cluster record
   * is written. A node that stopped in between finds no record at its next join and deletes the
   * volume, as a createVolume whose register failed does (the call never answered).
   */
  readonly creating?: true
  /** Set while a revert to this snapshot id is in progress; recovery finishes it after a crash. */
  readonly revertTo?: string
  /** With revertTo: the token of the restoreSnapshot call that began it (recovery moves it to revertTokens). */
  readonly revertToken?: string
  /**
   * Replicated volumes: the tokens of the last restoreSnapshot calls that reverted the volume
   * (oldest first; forwarded calls', and those of calls made on the primary, kept apart: see
   * keptTokens in facade/forwarded-calls.ts), so that a repeat of one (its answer lost, or its
   * primary lost the role under it) does not revert it again.
   */
  readonly revertTokens?: readonly string[]
  /** The storage pool whose capacity the volume is provisioned against, if any. */
  readonly pool?: string
}

/** A snapshot's persisted record. */
export interface SnapshotRecord {
  readonly id: string
  readonly name: string
  readonly volumeId: string
  /** The volume generation it reads at (see engine/block-map.ts). */
  readonly gen: number
  readonly sizeBytes: number
  readonly createdAt: string
  readonly implicit: boolean
  /** The token of the forwarded createSnapshot call that took it, if one did: a repeat of the call finds it. */
  readonly token?: string
}

/**
 * A live migration in progress, recorded before its destination storage gets any block: after a
 * crash, recovery finds it, and the destination (whose storage id no volume record names until
 * the switch-over) is removed as an orphan.
 */
export interface MigrationRecord {
  readonly volumeId: string
  /** Storage id of the destination copy. */
  readonly storageId: number
  readonly fromStorageId: number
  readonly storageClass: string
  readonly pool?: string
  readonly encrypted: boolean
  readonly startedAt: string
}

/** What a live migration's switch-over changes in a volume record. */
export interface MigrationSwitch {
  readonly storageId: number
  readonly storageClass: string
  readonly encrypted: boolean
  readonly pool: string | undefined
}

/** Any abstract-level database usable as GalleonFS metadata. */
export type MetadataDatabase = AbstractLevel<any, any, any>

/**
 * Waits for a write to the metadata database (the catalog's, or another module's in the same
 * database); a full disk (LevelDB says so only in its message) is NO_SPACE saying what to do.
 * LevelDB refuses every later write once one failed to reach its log, so the instance must be
 * reopened, not just the space freed.
 */
export async function storedMetadata (write: Promise<unknown> | undefined): Promise<void> {
  try {
    await write
  } catch (err) {
    if (!isNoSpaceError(err)) throw err
    throw new GalleonError('NO_SPACE', 'the disk holding the metadata database is full, so the change was not stored; free space on it (or grow it), then close and reopen the instance', { cause: err })
  }
}
