// Backups as the facade's access checks see them: a backup looked up without telling a caller
// which ids exist, and the volume a backup was taken of as an access object.

import { EVERY_VOLUME, type AccessObject, type Verb } from '../access/access-control.js'
import type { Backup, BackupManager, BackupTargetRef } from '../backup/manager.js'
import { errorCode } from '../errors.js'
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
