// Live migration of a volume on this node: its data copied to new storage laid out by another
// storage class or pool while it is read and written, then one atomic switch-over.

import { GalleonError, errorCode, quoted } from '../errors.js'
import type { VolumeBlocks } from '../engine/engine.js'
import { VolumeState, type StorageClass, type Volume } from '../types.js'
import type { MigrationRecord, VolumeRecord } from '../volumes/catalog.js'
import { copyLastDelta, copyUntilConverged, migrationCancelled, tellProgress, type MigrateControl, type MigrateVolumeOptions, type MigrationPhase, type MigrationProgressEvent } from '../volumes/migration.js'
import { assertClassSupported, classReplicas } from '../volumes/storage-classes.js'
import type { FacadeHost, MigrationLayout, RunningMigration } from './host.js'
import { names } from './records.js'
import type { VolumeRef } from './refs.js'

/** How long the engine state of a migrated volume's old storage stays reachable after the switch-over (see FacadeHost.retired). */
const RETIRED_GRACE_MS = 60_000

/** Key-record id under which a migration's destination keys are staged until the switch-over. */
function migrationKeyId (volumeId: string): string {
  return `migration:${volumeId}`
}

/** The migrations of replicated volumes, and of 1-copy volumes into a replicated class (see ClusterMigrations). */
export interface ReplicatedMigrations {
  migrateReplicated: (vol: VolumeRef, target: MigrateVolumeOptions, control: MigrateControl) => Promise<Volume>
  migrateToReplicated: (vol: VolumeRef, storageClass: StorageClass, target: MigrateVolumeOptions, control: MigrateControl) => Promise<Volume>
}

/** Live migrations of the instance's volumes (GalleonFS checks the caller first). */
export class LiveMigrations {
  readonly #host: FacadeHost
  readonly #replicated: ReplicatedMigrations
  /** Live migrations running, by volume id: how to cancel each and when it has ended. */
  readonly running = new Map<string, RunningMigration>()

  constructor (host: FacadeHost, replicated: ReplicatedMigrations) {
    this.#host = host
    this.#replicated = replicated
  }

  /**
   * `layout`: only lay the volume's data out as `target.storageClass` says (encryption, pool),
   * whatever its replicas: `copy` for this node's copy of a replicated volume (no pool
   * reservation: the cluster placed it), else a 1-copy volume's first step into a replicated class.
   */
  async migrateVolume (vol: VolumeRef, target: MigrateVolumeOptions, control: MigrateControl, layout?: MigrationLayout): Promise<Volume> {
    const { signal, onProgress } = control
    if (layout === undefined) {
      if (this.#host.catalog.resolve(vol).replication !== undefined) return await this.#replicated.migrateReplicated(vol, target, control)
      const wanted = target.storageClass === undefined ? undefined : this.#host.catalog.storageClass(target.storageClass)
      if (wanted !== undefined && classReplicas(wanted) > 1) return await this.#replicated.migrateToReplicated(vol, wanted, target, control)
    }
    const started = await this.#host.admin(async () => await this.#startMigration(vol, target, signal, layout))
    const { record, migration, source, destination, release, abort } = started
    const stagingId = migration.encrypted ? migrationKeyId(record.id) : undefined
    let lastReported = 0
    const report = (phase: MigrationPhase, blocksDone: number, blocksTotal: number, pass: number): void => {
      // One event per batch would flood listeners on a big volume: every 1024 blocks and at phase ends.
      if (phase !== 'done' && phase !== 'switchover' && blocksDone - lastReported < 1024 && blocksDone < blocksTotal) return
      lastReported = blocksDone
      const event: MigrationProgressEvent = { volumeId: record.id, volumeName: record.name, phase, blocksDone, blocksTotal, pass }
      this.#host.emit('volume:migration-progress', event)
      tellProgress(onProgress, event)
    }
    const checkCancelled = (): void => {
      if (abort.signal.aborted) throw migrationCancelled(record.name, abort.signal.reason)
      if (this.#host.closed) throw migrationCancelled(record.name, 'the instance is closing')
    }
    const onAbort = (): void => { abort.abort(signal?.reason) }
    signal?.addEventListener('abort', onAbort, { once: true })
    // Aborted while it started (#startMigration checks the signal before its waits): an aborted
    // signal fires no listener added now, and the migration would run to its end.
    if (signal?.aborted === true) onAbort()
    let lastCut: number | undefined
    let switched = false
    try {
      const copied = await copyUntilConverged({ engine: this.#host.engine, source, target: destination, snapshots: this.#host.catalog.snapshots(record.id), report, checkCancelled })
      lastCut = copied.lastCut
      let { done, total } = copied
      const result = await this.#host.admin(async () => {
        checkCancelled()
        // Writes pause here: those in flight finish first, new ones wait at the gate.
        const open = await source.closeGate()
        try {
          checkCancelled()
          const indices = lastCut === undefined ? this.#host.engine.allocatedAt(source) : this.#host.engine.changedBlocks(source, lastCut)
          total += indices.length
          report('switchover', done, total, copied.passes)
          await copyLastDelta(this.#host.engine, source, destination, lastCut, (count) => { done += count })
          checkCancelled()
          const keys = await this.#host.keys.handOver(stagingId, record.id)
          const current = this.#host.catalog.resolve(record.id)
          let updated = await this.#host.catalog.commitMigration(record.id, { storageId: migration.storageId, storageClass: migration.storageClass, encrypted: migration.encrypted, pool: migration.pool }, copied.gens, keys.ops)
          switched = true
          // The volume's record counts in its new pool now: the reservation that held the space goes.
          release()
          keys.apply()
          // The destination's cipher reserved its nonces under the staging record: a fresh one
          // continues past every nonce that record reserved.
          if (migration.encrypted && keys.cipher !== undefined) destination.cipher = keys.cipher(migration.storageId)
          const snapshotGens = new Map<number, number>()
          for (const snapshot of this.#host.catalog.snapshots(record.id)) {
            const before = started.snapshotGens.get(snapshot.id)
            if (before !== undefined) snapshotGens.set(before, snapshot.gen)
          }
          source.movedTo = { volume: destination, gens: snapshotGens }
          // The volume's counters go on from where they were (they count since open, not since a move).
          destination.metrics = source.metrics
          // A replicated volume's primary copy: its changes ship from the new storage on.
          if (source.replicator !== undefined) {
            destination.replicator = source.replicator
            source.replicator = undefined
          }
          this.#host.replication?.rebind(record.id, destination)
          this.#host.retired.set(source.storageId, source)
          if (layout !== undefined && updated.replicas !== layout.replicas) updated = await this.#host.catalog.updateVolume(record.id, { replicas: layout.replicas })
          this.#host.applyQoS(updated)
          return { updated, previous: current }
        } finally {
          open()
        }
      })
      // The old storage: nothing names it any more (a crash from here on removes it at open).
      try {
        await this.#host.engine.destroy(source)
        if (result.previous.source !== undefined) await this.#host.admin(async () => { await this.#host.releaseSource(result.previous.source as NonNullable<VolumeRecord['source']>) })
      } catch (err) {
        this.#host.emit('io:error', { volumeId: record.id, volumeName: record.name, operation: 'write', code: errorCode(err), message: `the volume was migrated, but releasing its old storage failed (it is removed at the next open): ${(err as Error)?.message ?? String(err)}` })
      }
      // Records resolved before the switch-over reach the volume through its old storage's entry
      // while the operations holding them finish; then the entry (with its block map) goes.
      setTimeout(() => { if (this.#host.retired.get(source.storageId) === source) this.#host.retired.delete(source.storageId) }, RETIRED_GRACE_MS).unref()
      report('done', done, total, copied.passes)
      const volume = this.#host.volumeView(result.updated)
      this.#host.emit('volume:migrated', volume, { storageClass: record.storageClass, ...(record.pool === undefined ? {} : { pool: record.pool }) })
      return volume
    } catch (err) {
      if (switched) throw err
      // Not switched over: the volume stays on its source; the destination and its keys go.
      if (lastCut !== undefined && !source.closing) await this.#host.engine.dropSnapshot(source, lastCut).catch(() => {})
      await this.#host.engine.destroy(destination).catch(() => {})
      if (stagingId !== undefined && this.#host.keys.has(stagingId)) await this.#host.keys.delete(stagingId).catch(() => {})
      await this.#host.catalog.abandonMigration(record.id).catch(() => {})
      if (abort.signal.aborted || this.#host.closed) throw migrationCancelled(record.name, abort.signal.reason)
      throw err
    } finally {
      signal?.removeEventListener('abort', onAbort)
      release()
      this.running.get(record.id)?.finish()
      this.running.delete(record.id)
    }
  }

  /** Checks a migration may start and sets up its destination; in the admin queue. */
  async #startMigration (vol: VolumeRef, target: MigrateVolumeOptions, signal: AbortSignal | undefined, layout: MigrationLayout | undefined): Promise<{
    record: VolumeRecord, migration: MigrationRecord, source: VolumeBlocks, destination: VolumeBlocks, release: () => void, abort: AbortController, snapshotGens: Map<string, number>
  }> {
    const record = this.#host.catalog.resolve(vol)
    if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
    if (layout?.copy !== true && record.replication !== undefined) {
      throw new GalleonError('BUSY', `volume ${record.name} became replicated meanwhile; call migrateVolume again`)
    }
    const className = target.storageClass ?? record.storageClass
    const storageClass = this.#host.catalog.storageClass(className)
    if (storageClass === undefined) throw new GalleonError('STORAGE_CLASS_NOT_FOUND', `no storage class ${quoted(className)}; listStorageClasses() shows the available ones`)
    // A class named in the call that keeps copies elsewhere was replaced meanwhile (migrateVolume sends
    // such moves to migrateToReplicated). Without one, the volume keeps its class and its copies: a
    // 1-copy volume of a replicated class (createVolume's replicas: 1) moves pools as it is.
    if (layout === undefined && target.storageClass !== undefined && classReplicas(storageClass) > 1) throw new GalleonError('BUSY', `storage class ${storageClass.name} keeps copies on other nodes; call migrateVolume again`)
    assertClassSupported(storageClass, 1)
    const poolName = layout !== undefined ? layout.pool : (this.#host.pools.choose(target.pool, storageClass)?.name ?? record.pool)
    if (storageClass.name === record.storageClass && poolName === record.pool) {
      throw new GalleonError('INVALID_ARGUMENT', `volume ${record.name} is already in storage class ${record.storageClass}${record.pool === undefined ? '' : ` and pool ${record.pool}`}: nothing to migrate; name another storageClass or pool`)
    }
    if (this.running.has(record.id) || this.#host.catalog.migrations().some((m) => m.volumeId === record.id)) throw new GalleonError('BUSY', `volume ${record.name} is being migrated already; wait for that migration or cancel it`)
    if (this.#host.rotations.has(record.id) || this.#host.rotationsStarting.has(record.id) || this.#host.keys.rotation(record.id) !== undefined) throw new GalleonError('BUSY', `volume ${record.name} is re-encrypting with a new data key; wait for that to finish (getVolumeEncryption shows the progress), then migrate it`)
    if (record.revertTo !== undefined) throw new GalleonError('BUSY', `volume ${record.name} has an unfinished revert; finish it (restoreSnapshot) before migrating it`)
    const clones = this.#host.catalog.clonesOf(record.id)
    if (clones.length > 0) throw new GalleonError('BUSY', `volume ${record.name} has clones that read its blocks (${names(clones)}); delete them, or flatten them by deleting the snapshots they came from with { force: true }, then migrate it`)
    const source = this.#host.ioVolumeOf(record)
    if (source.cipher?.unavailable !== undefined) throw source.cipher.unavailable
    if (signal?.aborted === true) throw migrationCancelled(record.name, signal.reason)
    const encrypted = layout?.encrypted ?? storageClass.parameters.encryption === 'true'
    // Running from here, before the first wait: a key rotation (or a second migration) checking
    // meanwhile is refused, instead of starting while this one records itself.
    const abort = new AbortController()
    let finish!: () => void
    const done = new Promise<void>((resolve) => { finish = resolve })
    this.running.set(record.id, { abort, done, finish })
    const notRunning = (): void => {
      if (this.running.get(record.id)?.done === done) this.running.delete(record.id)
      finish()
    }
    // The target class cannot be deleted, and the target pool's bytes are held, until the
    // switch-over makes the record count there.
    let release = (): void => {}
    let migration: MigrationRecord | undefined
    try {
      if (encrypted) await this.#host.keys.provider()
      const releaseClass = this.#host.catalog.useStorageClass(storageClass)
      try {
        const releasePool = layout?.copy !== true && poolName !== undefined && poolName !== record.pool ? this.#host.pools.reserve(poolName, record.sizeBytes, `migrating volume ${record.name}`) : () => {}
        release = (): void => { releasePool(); releaseClass() }
      } catch (err) {
        releaseClass()
        throw err
      }
      migration = await this.#host.catalog.beginMigration(record.id, { storageClass: storageClass.name, encrypted, ...(poolName === undefined ? {} : { pool: poolName }) })
      const destination = this.#host.engine.attach(migration.storageId, record.sizeBytes)
      if (encrypted) destination.cipher = await this.#host.keys.create(migrationKeyId(record.id), migration.storageId)
      const snapshotGens = new Map(this.#host.catalog.snapshots(record.id).map((snapshot) => [snapshot.id, snapshot.gen]))
      return { record, migration, source, destination, release, abort, snapshotGens }
    } catch (err) {
      release()
      notRunning()
      if (migration !== undefined) {
        const attached = this.#host.engine.volume(migration.storageId)
        if (attached !== undefined) await this.#host.engine.destroy(attached).catch(() => {})
        if (this.#host.keys.has(migrationKeyId(record.id))) await this.#host.keys.delete(migrationKeyId(record.id)).catch(() => {})
        await this.#host.catalog.abandonMigration(record.id).catch(() => {})
      }
      throw err
    }
  }

  /**
   * `admin(task)` for an operation on a volume that must not overlap its migration (snapshot,
   * clone, expand, revert: the snapshot list and the size stay fixed while one copies): waits for a
   * running migration to end, whatever its outcome, then runs in the admin queue. Waiting happens
   * outside the queue (the migration's switch-over needs it). `cancel`: cancel the migration instead.
   */
  async adminAfterMigration<T> (volumeId: string, task: () => Promise<T>, cancel: false | string = false): Promise<T> {
    const again = Symbol('again')
    for (;;) {
      const running = this.running.get(volumeId)
      if (running !== undefined && cancel !== false) running.abort.abort(new GalleonError('CANCELLED', cancel))
      if (running !== undefined) await running.done
      const result = await this.#host.admin(async () => this.running.has(volumeId) ? again : await task())
      if (result !== again) return result as T
    }
  }
}
