// Backups as the facade's access checks see them: a backup looked up without telling a caller
// which ids exist, and the volume a backup was taken of as an access object.

import { EVERY_VOLUME, type AccessObject, type Verb } from '../access/access-control.js'
import type { Backup, BackupManager, BackupTargetRef } from '../backup/manager.js'
import { GalleonError, errorCode } from '../errors.js'
import type { MountControl } from '../mount/mount-manager.js'
import type { AccessGuard } from './access-guard.js'

/**
 * The backup `backupId`, for a call needing `verb` on it. To a principal who may not `verb` the
 * backups of every namespace, an id that does not exist is denied like one it may not see, so the
 * answer does not tell which ids exist.
 */
export async function findBackup (gate: AccessGuard, backups: BackupManager, action: string, verb: Verb, backupId: string, options: { target?: BackupTargetRef }): Promise<Backup> {
  try {
    return await gate.nested(async () => await backups.get(backupId, options))
  } catch (err) {
    if (errorCode(err) === 'BACKUP_NOT_FOUND') await gate.check(action, verb, EVERY_VOLUME, `backup:${String(backupId)}`)
    throw err
  }
}

/** A backup's source volume as an access object (its namespace and name at backup time). */
export function backupObject (backup: Backup): AccessObject {
  return { namespace: backup.volumeNamespace, volume: backup.volumeName }
}

/**
 * BUSY when something other than the restore would see or change a volume a restore is about to
 * write over: a mount of the volume (read-only too: it would show the volume half restored; a
 * mount of one of its snapshots does not), a writer that is not a mount (a writable file open
 * straight on it, an NBD client connected read-write), as a revert refuses one, or a reader that is
 * not a mount (a read-only file open straight on it, an NBD client connected read-only). `when` says when
 * it was found (the restore's second check, once it has claimed the volume).
 */
export function assertNothingAttached (control: MountControl, volumeId: string, volumeName: string, when = ''): void {
  const mounted = control.mountsOf(volumeId).filter((mount) => mount.snapshotId === undefined)
  const at = when === '' ? '' : ` ${when}`
  if (mounted.length > 0) throw new GalleonError('BUSY', `volume ${volumeName} is mounted (${mounted.map((m) => m.path).join(', ')})${at}; unmount it before restoring a backup over it`)
  const writers = control.directWriters(volumeId)
  if (writers > 0) throw new GalleonError('BUSY', `volume ${volumeName} has ${writers} writer(s)${at}: writable files open on it (openVolumeFile) or NBD clients connected read-write; close or disconnect them before restoring a backup over it`)
  // Readers too, as a read-only mount: they would read the volume half restored.
  const readers = control.directReaders(volumeId)
  if (readers > 0) throw new GalleonError('BUSY', `volume ${volumeName} has ${readers} reader(s)${at}: files open on it read-only (openVolumeFile) or NBD clients connected read-only, which would read it half restored; close or disconnect them before restoring a backup over it`)
}
