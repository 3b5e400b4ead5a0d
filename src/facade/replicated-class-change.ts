// Migrations of a replicated volume to another storage class and/or pool: the class changes in the
// volume's cluster record, each copy converts on its own node (see ClusterMigrations.convergeCopy),
// and the call waits for them; the same migration asked for again joins the one running.

import { GalleonError, type GalleonErrorCode, quoted } from '../errors.js'
import type { ReplicationManager } from '../replication/manager.js'
import { VolumeState, type StorageClass, type Volume } from '../types.js'
import type { VolumeRecord } from '../volumes/catalog.js'
import { DEFAULT_SYNC_TIMEOUT_MS, migrationCancelled, tellProgress, type MigrateControl, type MigrateVolumeOptions, type MigrationProgressEvent } from '../volumes/migration.js'
import { poolPlacement } from '../volumes/pools.js'
import { assertClassSupported, classPlacement, classReplicas } from '../volumes/storage-classes.js'
import type { FacadeHost } from './host.js'
import { toVolume } from './records.js'
import type { VolumeRef } from './refs.js'

/**
 * How a migration of a replicated volume's class ended: the volume, or the error it threw;
 * `abandoned` when its caller's signal stopped it (not a failure of the migration itself).
 */
interface MigrationOutcome { volume?: Volume, error?: unknown, abandoned?: boolean }

/**
 * Waits for a migration another call runs (the same one asked for again): its outcome, or
 * CANCELLED when `signal` fires first (the migration itself goes on).
 */
async function joinMigration (ended: Promise<MigrationOutcome>, name: string, signal: AbortSignal | undefined): Promise<MigrationOutcome> {
  if (signal?.aborted === true) throw new GalleonError('CANCELLED', `stopped waiting for the migration of volume ${name}; it goes on`)
  let onAbort: (() => void) | undefined
  const cancelled = new Promise<never>((_resolve, reject) => {
    onAbort = () => { reject(new GalleonError('CANCELLED', `stopped waiting for the migration of volume ${name}; it goes on`)) }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
  try {
    return await Promise.race([ended, cancelled])
  } finally {
    if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort)
  }
}

/** Class changes of replicated volumes started on this node (see ClusterMigrations.migrateReplicated). */
export class ReplicatedClassChanges {
  readonly #host: FacadeHost
  /** Conversions of this node's copies running now (ClusterMigrations.copyConversions). */
  readonly #copyConversions: ReadonlyMap<string, { storageClass: string }>
  /** Replicated volumes whose class change this node started and waits for. */
  readonly #reshaping = new Map<string, { storageClass: string, pool: string | undefined, ended: Promise<MigrationOutcome>, joiners: number }>()

  /** The storage class of the class change of `volumeId` this node runs now, if any. */
  runningTo (volumeId: string): string | undefined {
    return this.#reshaping.get(volumeId)?.storageClass
  }

  constructor (host: FacadeHost, copyConversions: ReadonlyMap<string, { storageClass: string }>) {
    this.#host = host
    this.#copyConversions = copyConversions
  }

  /**
   * Moves a replicated volume to another storage class (and/or pool): the class is changed in the
   * volume's cluster record, and every copy converts itself, on its own node, while it keeps
   * receiving the primary's changes: a copy whose layout stays (same encryption and pool) is only
   * relabelled, the others are live-migrated locally (crash-safe like any local migration; a node
   * that restarts midway converts again). The number of copies follows the class: new ones are
   * placed and filled by resyncs, surplus ones (never the primary's) are deleted. Resolves once
   * every copy is in the class and enough are in sync. Cancelling puts the old class back in the
   * record, and the copies return to it the same way.
   */
  async migrateReplicated (vol: VolumeRef, target: MigrateVolumeOptions, control: MigrateControl): Promise<Volume> {
    const replication = this.#host.replication
    const record = this.#host.catalog.resolve(vol)
    if (replication === undefined) throw new GalleonError('INVALID_ARGUMENT', `volume ${record.name} is replicated; changing its storage class needs this instance in the volume's cluster (open it with { cluster })`)
    if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
    const className = target.storageClass ?? record.storageClass
    const storageClass = this.#host.catalog.storageClass(className)
    if (storageClass === undefined) throw new GalleonError('STORAGE_CLASS_NOT_FOUND', `no storage class ${quoted(className)}; listStorageClasses() shows the available ones`)
    assertClassSupported(storageClass, classReplicas(storageClass), true)
    // The class cannot be deleted here while the copies convert to it: this node's copy names it
    // only once it has converted (a local migration holds its class the same way).
    const releaseClass = this.#host.catalog.useStorageClass(storageClass)
    try {
      return await this.#reshape(record, storageClass, target, control, replication)
    } finally {
      releaseClass()
    }
  }

  /** The work of migrateReplicated, with the class held. */
  async #reshape (record: VolumeRecord, storageClass: StorageClass, target: MigrateVolumeOptions, control: MigrateControl, replication: ReplicationManager, takenOver = false): Promise<Volume> {
    const { signal, onProgress } = control
    const replicas = classReplicas(storageClass)
    // The class in the cluster's record is the volume's; a copy may still be on its way to it.
    const spec = replication.spec(record.id)
    const currentClass = spec?.storageClass ?? record.storageClass
    const currentPool = spec === undefined ? record.pool : spec.pool
    const pool = this.#host.pools.choose(target.pool, storageClass)
    const poolName = pool?.name ?? currentPool
    const running = this.#reshaping.get(record.id)
    if (running !== undefined) {
      if (running.storageClass !== storageClass.name || running.pool !== poolName) {
        throw new GalleonError('BUSY', `volume ${record.name} is migrating already, to storage class ${running.storageClass}${running.pool === undefined ? '' : ` and pool ${running.pool}`}; wait for that migration, or cancel it`)
      }
      // The same migration again (a caller that stopped waiting and asks once more): this call
      // waits for the one running and answers with its outcome.
      running.joiners++
      let joined: MigrationOutcome
      try {
        joined = await joinMigration(running.ended, record.name, signal)
      } finally {
        running.joiners--
      }
      if (joined.volume !== undefined) return joined.volume
      // Its caller stopped waiting (a client that gave up, its connection closed) and left the
      // copies converting for this one, which still waits: this call takes the wait over.
      if (joined.abandoned === true) return await this.#reshape(record, storageClass, target, control, replication, true)
      throw joined.error
    }
    // Taken before anything is awaited, so that a second call made meanwhile joins this one.
    let finish: (outcome: MigrationOutcome) => void = () => {}
    const ended = new Promise<MigrationOutcome>((resolve) => { finish = resolve })
    const entry = { storageClass: storageClass.name, pool: poolName, ended, joiners: 0 }
    this.#reshaping.set(record.id, entry)
    let outcome: MigrationOutcome = { error: new GalleonError('IO_ERROR', `the migration of volume ${record.name} ended without an outcome`) }
    try {
      // The record names the target already: done, or an earlier call that failed or stopped
      // waiting left copies to convert; then this call waits for them (retrying failed ones).
      let resume = false
      if (storageClass.name === currentClass && poolName === currentPool) {
        const seen = await replication.copyLayouts(record.id)
        resume = seen !== undefined && (takenOver || seen.layouts.some((l) => l.busy || !l.converged || l.error !== undefined))
        if (!resume) throw new GalleonError('INVALID_ARGUMENT', `volume ${record.name} is already in storage class ${currentClass}${currentPool === undefined ? '' : ` and pool ${currentPool}`}: nothing to migrate; name another storageClass or pool`)
      } else {
        const converting = this.#copyConversions.get(record.id)
        if (converting !== undefined || this.#host.migrations.has(record.id)) throw new GalleonError('BUSY', `the copy of volume ${record.name} on this node is still converting${converting === undefined ? '' : ` to storage class ${converting.storageClass}`}; try again when it is done`)
        // As a local migration: this node's copy could not convert while it re-encrypts, and the
        // record would name the new class with the copies half converted.
        if (this.#host.rotations.has(record.id) || this.#host.rotationsStarting.has(record.id) || this.#host.keys.rotation(record.id) !== undefined) {
          throw new GalleonError('BUSY', `volume ${record.name} is re-encrypting with a new data key; wait for that to finish (getVolumeEncryption shows the progress), then migrate it. Nothing was changed`)
        }
      }
      if (signal?.aborted === true) throw migrationCancelled(record.name, signal.reason)
      if (storageClass.parameters.encryption === 'true') await this.#host.keys.provider()
      const placement = pool === undefined ? classPlacement(storageClass) : poolPlacement(pool, classPlacement(storageClass))
      // The class's encryption here is the volume's from now on: every copy follows it (see VolumeSpec.encrypted).
      const change = { storageClass: storageClass.name, replicas, encrypted: storageClass.parameters.encryption === 'true', ...(poolName === undefined ? {} : { pool: poolName }) }
      const before = resume ? undefined : await replication.reshape(record.id, { ...change, keep: this.#host.cluster?.nodeId }, placement)
      const blocks = Math.ceil(record.sizeBytes / record.blockSize)
      const failures = new Map<string, number>()
      const aborted = (): boolean => signal?.aborted === true
      let reported = -1
      const timeoutMs = control.syncTimeoutMs ?? DEFAULT_SYNC_TIMEOUT_MS
      const deadline = performance.now() + timeoutMs
      try {
        for (;;) {
          if (aborted()) throw migrationCancelled(record.name, signal?.reason)
          if (this.#host.closed) throw migrationCancelled(record.name, 'the instance is closing')
          const seen = await replication.copyLayouts(record.id, true)
          if (seen === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} was deleted while it migrated`)
          if (seen.record.spec.storageClass !== storageClass.name) throw new GalleonError('BUSY', `the storage class of volume ${record.name} was changed to ${seen.record.spec.storageClass} by another call meanwhile`)
          // Converted: the copy's node has read the new record and its copy is laid out by it.
          const converted = seen.layouts.filter((l) => !l.busy && l.converged && l.spec?.storageClass === storageClass.name && l.spec.pool === poolName).length
          if (converted !== reported) {
            reported = converted
            const event: MigrationProgressEvent = { volumeId: record.id, volumeName: record.name, phase: 'copy', blocksDone: converted * blocks, blocksTotal: seen.layouts.length * blocks, pass: 1 }
            this.#host.emit('volume:migration-progress', event)
            tellProgress(onProgress, event)
          }
          for (const layout of seen.layouts) {
            // A copy re-encrypting with a new data key refuses to convert until that is done, then
            // converts by itself: a wait (bounded by the deadline and the signal), not a failure.
            if (layout.error === undefined || layout.busy || layout.reencrypting === true) continue
            const count = (failures.get(layout.node) ?? 0) + 1
            failures.set(layout.node, count)
            if (count >= 3) {
              throw new GalleonError(layout.error.code as GalleonErrorCode, `the copy of volume ${record.name} on node ${layout.node} could not convert to storage class ${storageClass.name} (tried ${count} times): ${layout.error.message}. The cluster's record names ${storageClass.name}: fix the cause and call migrateVolume again, or migrate it back to ${currentClass}`)
            }
          }
          const wanted = Math.min(replicas, seen.record.nodes.length)
          if (converted === seen.layouts.length && seen.record.inSync.length >= wanted) break
          if (performance.now() > deadline) throw new GalleonError('BUSY', `the copies of volume ${record.name} did not all convert to ${storageClass.name} within ${timeoutMs / 1000} s; they go on in the background (replicationStatus and getVolume show where they are)`)
          await new Promise((resolve) => setTimeout(resolve, 100))
        }
      } catch (err) {
        if (err instanceof GalleonError && err.code === 'CANCELLED') {
          // Undone only when no other call waits for the same migration (see joinMigration).
          if (before === undefined || (entry.joiners > 0 && !this.#host.closed)) throw new GalleonError('CANCELLED', `stopped waiting for the copies of volume ${record.name}; they go on converting to storage class ${storageClass.name} in the background`)
          await replication.unshape(record.id, before, change).catch(() => {})
          throw new GalleonError('CANCELLED', `the migration of volume ${record.name} was cancelled; its copies return to storage class ${currentClass}`)
        }
        throw err
      }
      const event: MigrationProgressEvent = { volumeId: record.id, volumeName: record.name, phase: 'done', blocksDone: blocks * replicas, blocksTotal: blocks * replicas, pass: 1 }
      this.#host.emit('volume:migration-progress', event)
      tellProgress(onProgress, event)
      // This node's copy may have been one the class no longer keeps.
      const latest = this.#host.recordById(record.id)
      const volume = latest !== undefined && latest.state !== VolumeState.Deleting
        ? this.#host.volumeView(latest)
        : { ...toVolume(record), storageClass: storageClass.name, replicas, encrypted: storageClass.parameters.encryption === 'true', ...(poolName === undefined ? {} : { pool: poolName }) }
      this.#host.emit('volume:migrated', volume, { storageClass: currentClass, ...(currentPool === undefined ? {} : { pool: currentPool }) })
      outcome = { volume }
      return volume
    } catch (err) {
      outcome = { error: err, abandoned: signal?.aborted === true && !this.#host.closed && err instanceof GalleonError && err.code === 'CANCELLED' }
      throw err
    } finally {
      this.#reshaping.delete(record.id)
      finish(outcome)
    }
  }
}
