// Which backup target a call uses: the configured default or the one it names (a directory path,
// one object per directory, or a BackupTarget), and the queue that runs a target's calls in turn.

import { resolve } from 'node:path'
import { DIRECTORY_TARGET_MARKER, DirectoryBackupTarget } from '../../backends/directory/index.js'
import type { BackupTarget } from '../drivers.js'
import { GalleonError, describe } from '../errors.js'
import { SerialQueue } from '../serial-queue.js'
import type { BackupTargetRef } from './types.js'

/** The backup targets of one instance, and one queue per target. */
export class BackupTargets {
  readonly #defaultTarget: BackupTargetRef | undefined
  readonly #directories = new Map<string, DirectoryBackupTarget>()
  readonly #queues = new WeakMap<BackupTarget, SerialQueue>()

  /** Checks `defaultTarget` now (INVALID_ARGUMENT), so that a bad one fails the open. */
  constructor (defaultTarget: BackupTargetRef | undefined) {
    this.#defaultTarget = defaultTarget
    if (defaultTarget !== undefined) this.target(defaultTarget)
  }

  /**
   * The target of a call that only reads it (or deletes from it). A directory given by path that is
   * no backup target yet is refused, not made one: a mistyped or unmounted path must not read as a
   * target without backups. The configured default target is made on first use, as before.
   */
  async readTarget (ref: BackupTargetRef | undefined, id?: string): Promise<BackupTarget> {
    const target = this.target(ref)
    if (!(target instanceof DirectoryBackupTarget) || await target.isTarget()) return target
    const configured = this.#defaultTarget
    if (ref === undefined || (typeof configured === 'string' && configured.length > 0 && resolve(configured) === target.location)) return target
    throw new GalleonError('BACKUP_NOT_FOUND', `${id === undefined ? 'no backups' : `no backup ${describe(id)}`} on ${target.location}: it is not a backup target (it holds no ${DIRECTORY_TARGET_MARKER}); check the path (a directory becomes a backup target with the first createBackup() to it)`)
  }

  /** The target `ref` names, or the default one (INVALID_ARGUMENT when there is none or it is no target). */
  target (ref: BackupTargetRef | undefined): BackupTarget {
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

  /** The queue that runs the backups, adoptions and deletions of `target` one at a time. */
  queue (target: BackupTarget): SerialQueue {
    let queue = this.#queues.get(target)
    if (queue === undefined) this.#queues.set(target, queue = new SerialQueue())
    return queue
  }
}
