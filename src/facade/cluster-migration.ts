// Migrations that involve other nodes: a volume into a replicated class, a replicated volume to
// another class (each copy converting on its own node), and this node's copy moved to another node.

import { GalleonError, errorCode, type GalleonErrorCode, quoted } from '../errors.js'
import { mountControl } from '../mount/mount-manager.js'
import type { ReplicationManager } from '../replication/manager.js'
import type { VolumeSpec } from '../replication/records.js'
import { VolumeState, type StorageClass, type Volume } from '../types.js'
import type { VolumeRecord } from '../volumes/catalog.js'
import { DEFAULT_SYNC_TIMEOUT_MS, migrationCancelled, tellProgress, type MigrateControl, type MigrateVolumeOptions, type MigrationPhase, type MigrationProgressEvent } from '../volumes/migration.js'
import { poolPlacement } from '../volumes/pools.js'
import { assertClassSupported, classPlacement, classReplicas } from '../volumes/storage-classes.js'
import type { FacadeHost } from './host.js'
import { specOf, toVolume } from './records.js'
import type { VolumeRef } from './refs.js'

/**
 * Progress of copies being filled on other nodes (their links' resyncs, sampled from the
 * replication status), summed over the copies and never going backwards: a link clears its
 * progress when its resync ends, so a copy seen filling that is in sync at a later sample counts
 * as filled (done = total) at once, not at finish(); a copy that filled between two samples counts
 * as its whole size at finish(); and a resync that starts over does not take the figures back.
 */
export class FillProgress {
  readonly #seen = new Map<string, { done: number, total: number }>()
  #done = 0
  #total = 0

  /** `blocksPerCopy`: what a copy that filled unseen counts for (the volume's blocks, once per view). */
  constructor (private readonly replication: ReplicationManager, private readonly volumeId: string, private readonly blocksPerCopy: number) {}

  /** Samples the links to `nodes`; true when the figures moved. */
  sample (nodes: readonly string[]): boolean {
    const status = this.replication.status(this.volumeId)
    const links = status?.links ?? []
    for (const node of nodes) {
      const resync = links.find((l) => l.node === node)?.resync
      if (resync !== undefined) {
        this.#seen.set(node, { done: resync.blocksDone, total: resync.blocksTotal })
      } else {
        const seen = this.#seen.get(node)
        if (seen !== undefined && status?.inSync.includes(node) === true) seen.done = seen.total
      }
    }
    return this.#update([...this.#seen.values()].reduce((sum, s) => sum + s.done, 0), [...this.#seen.values()].reduce((sum, s) => sum + s.total, 0))
  }

  /** The figures at the end, every copy of `nodes` filled: done equals total. */
  finish (nodes: readonly string[]): { done: number, total: number } {
    const total = nodes.reduce((sum, node) => sum + (this.#seen.get(node)?.total ?? this.blocksPerCopy), 0)
    this.#update(Math.max(total, this.#total), total)
    this.#done = this.#total
    return { done: this.#done, total: this.#total }
  }

  get done (): number { return this.#done }
  get total (): number { return this.#total }

  #update (done: number, total: number): boolean {
    const nextDone = Math.max(this.#done, done)
    const nextTotal = Math.max(this.#total, total, nextDone)
    const moved = nextDone !== this.#done || nextTotal !== this.#total
    this.#done = nextDone
    this.#total = nextTotal
    return moved
  }
}

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

/** Migrations across the cluster's nodes, and the conversions of this node's copies (GalleonFS checks the caller first). */
export class ClusterMigrations {
  readonly #host: FacadeHost
  /**
   * Conversions of this node's copies of replicated volumes to the storage class their cluster
   * record names (another node migrated the volume), by volume id; and the last failure of each.
   */
  readonly copyConversions = new Map<string, { storageClass: string, abort: AbortController }>()
  readonly copyConversionErrors = new Map<string, { storageClass: string, code: string, message: string }>()
  /** Moves of this node's copies to other nodes (migrateVolume with `node`), by volume id: how to cancel each. */
  readonly nodeMoves = new Map<string, { abort: AbortController, done: Promise<unknown> }>()
  /** Replicated volumes whose class change this node started and waits for. */
  readonly #reshaping = new Map<string, { storageClass: string, pool: string | undefined, ended: Promise<MigrationOutcome>, joiners: number }>()

  constructor (host: FacadeHost) {
    this.#host = host
  }

  /**
   * migrateVolume with `node`: the class and/or pool change first (here), then the move of this
   * node's copy to `node`.
   */
  async migrateWithNode (vol: VolumeRef, target: MigrateVolumeOptions, node: string, control: MigrateControl): Promise<Volume> {
    if (target.storageClass === undefined && target.pool === undefined) return await this.#migrateToNode(vol, node, control)
    // Class and/or pool first (here), then the move: each step is a complete migration of
    // its own, so a crash between them leaves the volume in the new class on this node, and
    // the same call again only moves it.
    await this.#checkNodeTarget(node)
    const record = this.#host.catalog.resolve(vol)
    // Refused up front what the class step would make impossible for the move after it.
    const wanted = target.storageClass === undefined ? undefined : this.#host.catalog.storageClass(target.storageClass)
    if (wanted !== undefined && classReplicas(wanted) > Math.max(1, record.replicas)) {
      throw new GalleonError('INVALID_ARGUMENT', `storage class ${wanted.name} keeps ${classReplicas(wanted)} copies and places them itself, so a node for this one cannot be named with it; migrate to ${wanted.name} first, then move this node's copy with { node } to a node without one`)
    }
    const copies = record.replication === undefined ? undefined : this.#host.replication?.status(record.id)?.nodes
    // (A surplus copy there, left by an interrupted move, is what the move finishes with.)
    if (copies !== undefined && copies.includes(node) && copies.length <= record.replicas) {
      throw new GalleonError('INVALID_ARGUMENT', `node ${node} holds a copy of volume ${record.name} already; move this node's copy to a node without one`)
    }
    const there = (target.storageClass === undefined || target.storageClass === record.storageClass) && (target.pool === undefined || target.pool === record.pool)
    if (!there) await this.#host.migrateVolume(vol, { ...(target.storageClass === undefined ? {} : { storageClass: target.storageClass }), ...(target.pool === undefined ? {} : { pool: target.pool }) }, control)
    return await this.#migrateToNode(vol, node, control)
  }

  /** A node a volume may move to: a healthy member of this instance's cluster, not this node. */
  async #checkNodeTarget (node: string): Promise<void> {
    const cluster = this.#host.cluster
    if (cluster === undefined || this.#host.replication === undefined) throw new GalleonError('INVALID_ARGUMENT', `moving a volume to node ${node} needs a cluster, and this instance is not in one; join one (joinCluster) first`)
    if (node === cluster.nodeId) throw new GalleonError('INVALID_ARGUMENT', `the volume is on ${node} already: nothing to move; name another node`)
    const member = cluster.members.find((m) => m.id === node)
    if (member === undefined || !member.healthy) throw new GalleonError('INVALID_ARGUMENT', `node ${node} is ${member === undefined ? 'not a member of the cluster' : 'not healthy'}; clusterStatus() lists the nodes`)
  }

  /**
   * Migration into a class that keeps copies on other nodes: the volume becomes replicated where it
   * is (this node its primary), its copies are placed by the class and filled by the resync of
   * new copies while I/O goes on; resolves once they are in sync. An abort, close() or the
   * sync timeout ends the wait with an error (CANCELLED, BUSY): the volume stays replicated, its
   * copies still filling. The data is not moved locally, so
   * the class must encrypt as the volume's does, and the pool stays.
   */
  async migrateToReplicated (vol: VolumeRef, storageClass: StorageClass, target: MigrateVolumeOptions, control: MigrateControl): Promise<Volume> {
    const replication = this.#host.replication
    const replicas = classReplicas(storageClass)
    const first = this.#host.catalog.resolve(vol)
    if (replication === undefined) throw new GalleonError('INVALID_ARGUMENT', `storage class ${storageClass.name} keeps ${replicas} copies, on other nodes, but this instance is not in a cluster; join one (joinCluster) first`)
    this.#checkBecomesReplicated(first)
    assertClassSupported(storageClass, replicas, true)
    // The class cannot be deleted until the volume's record names it (a local migration holds its
    // class the same way).
    const releaseClass = this.#host.catalog.useStorageClass(storageClass)
    try {
      return await this.#becomeReplicated(vol, first, storageClass, target, control, replication)
    } finally {
      releaseClass()
    }
  }

  /** What stops a 1-copy volume from becoming replicated (see migrateToReplicated). */
  #checkBecomesReplicated (current: VolumeRecord): void {
    if (current.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${current.name} is being deleted`)
    if (current.replication !== undefined) throw new GalleonError('BUSY', `volume ${current.name} became replicated meanwhile; call migrateVolume again`)
    if (this.#host.migrations.has(current.id)) throw new GalleonError('BUSY', `volume ${current.name} is migrating already; wait for that migration, or cancel it`)
    if (this.#host.catalog.clonesOf(current.id).length > 0) throw new GalleonError('BUSY', `volume ${current.name} has clones reading from it; a replicated volume cannot serve them. Delete or flatten them first`)
    if (current.source !== undefined) throw new GalleonError('BUSY', `volume ${current.name} is a clone that still reads from ${current.source.volumeId}; migrate it to a 1-copy class first (that gives it its own copy of every block)`)
    if (mountControl(this.#host.mounts).mountsOf(current.id).length > 0) throw new GalleonError('BUSY', `volume ${current.name} is mounted; unmount it while it becomes replicated`)
  }

  /** The work of migrateToReplicated, with the class held. */
  async #becomeReplicated (vol: VolumeRef, first: VolumeRecord, storageClass: StorageClass, target: MigrateVolumeOptions, control: MigrateControl, replication: ReplicationManager): Promise<Volume> {
    const { signal } = control
    const replicas = classReplicas(storageClass)
    const poolName = this.#host.pools.choose(target.pool, storageClass)?.name ?? first.pool
    if ((storageClass.parameters.encryption === 'true') !== (first.encrypted === true) || poolName !== first.pool) {
      // First the data is laid out here as the class wants it (encrypted or not, in its pool):
      // a complete local migration of its own. A crash after it leaves the volume in the class
      // with one copy, and the same call again adds the copies.
      await this.#host.migrateVolume(vol, { storageClass: storageClass.name, ...(poolName === first.pool || poolName === undefined ? {} : { pool: poolName }) }, control, { pool: poolName, replicas: first.replicas, copy: false })
    }
    const record = await this.#host.admin(async () => {
      const current = this.#host.catalog.resolve(vol)
      this.#checkBecomesReplicated(current)
      if ((storageClass.parameters.encryption === 'true') !== (current.encrypted === true) || current.pool !== poolName) throw new GalleonError('BUSY', `volume ${current.name} changed while it was laid out for ${storageClass.name}; call migrateVolume again`)
      // With the class it had, until the record is written: a crash in between puts it back (see convertingFrom).
      let updated = await this.#host.catalog.updateVolume(current.id, { storageClass: storageClass.name, replicas, replication: { epoch: 0, seq: 0 }, convertingFrom: { storageClass: current.storageClass, replicas: current.replicas } })
      try {
        const pool = updated.pool === undefined ? undefined : this.#host.catalog.pool(updated.pool)
        // Not waiting here: the new copies' resyncs need this admin queue for their cuts.
        await replication.register(specOf(updated), pool === undefined ? classPlacement(storageClass) : this.#host.poolPlacement(pool, classPlacement(storageClass)), false)
      } catch (err) {
        replication.forget(current.id)
        await this.#host.catalog.updateVolume(current.id, { storageClass: current.storageClass, replicas: current.replicas, replication: undefined, convertingFrom: undefined }).catch(() => {})
        throw err
      }
      // The record is written: the volume is replicated for good (a marker left by a failure here
      // is cleared at the next join, which finds the record).
      updated = await this.#host.catalog.updateVolume(current.id, { convertingFrom: undefined }).catch(() => updated)
      this.#host.applyQoS(updated)
      return updated
    })
    // Progress: the new copies' fill, as the links to them report it.
    const report = (phase: MigrationPhase, blocksDone: number, blocksTotal: number): void => {
      const event: MigrationProgressEvent = { volumeId: record.id, volumeName: record.name, phase, blocksDone, blocksTotal, pass: 1 }
      this.#host.emit('volume:migration-progress', event)
      tellProgress(control.onProgress, event)
    }
    const fill = new FillProgress(replication, record.id, this.#blocksPerCopy(record))
    const self = this.#host.cluster?.nodeId
    const others = (): string[] => (replication.status(record.id)?.nodes ?? []).filter((node) => node !== self)
    let inSync = false
    const timeoutMs = control.syncTimeoutMs ?? DEFAULT_SYNC_TIMEOUT_MS
    const deadline = performance.now() + timeoutMs
    while (!this.#host.closed) {
      const status = replication.status(record.id)
      if (status === undefined) break
      if (status.inSync.length >= Math.min(replicas, status.nodes.length)) { inSync = true; break }
      if (signal?.aborted === true) break
      if (performance.now() > deadline) {
        // Not in sync: the volume is in the class, degraded, and its copies go on filling; the call
        // does not report a migration done that is not.
        throw new GalleonError('BUSY', `volume ${record.name} is in class ${storageClass.name} now, but its copies on ${others().join(', ') || 'other nodes'} did not come in sync within ${timeoutMs / 1000} s (in sync: ${status.inSync.join(', ')}); they go on in the background: replicationStatus shows them and their links' last errors`)
      }
      if (fill.sample(others())) report('copy', fill.done, fill.total)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    if (!inSync) {
      // Not done: never reported as done. The volume is in the class, its copies filling.
      const where = `volume ${record.name} is in class ${storageClass.name} now, its copies still filling in the background (replicationStatus shows them)`
      if (signal?.aborted === true) throw new GalleonError('CANCELLED', `the wait for the new copies was cancelled: ${where}`, { cause: signal.reason })
      if (this.#host.closed) throw new GalleonError('CANCELLED', `the instance closed while the migration waited for the new copies: ${where}`)
      throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} was deleted while its migration into ${storageClass.name} waited for its copies`)
    }
    const filled = fill.finish(others())
    report('done', filled.done, filled.total)
    const volume = this.#host.volumeView(this.#host.catalog.resolve(record.id))
    this.#host.emit('volume:migrated', volume, { storageClass: record.storageClass, ...(record.pool === undefined ? {} : { pool: record.pool }) })
    return volume
  }

  /**
   * Moves this node's copy of a volume to another node of the cluster: a 1-copy volume first
   * becomes a replicated one with its single copy here, then the copy moves as a leaving node's
   * would (a copy there, in sync while I/O goes on, the primary role handed over, this copy
   * deleted). The volume keeps its id, name, snapshots and data; afterwards this node forwards
   * its I/O to the new one.
   */
  async #migrateToNode (vol: VolumeRef, node: string, control: MigrateControl): Promise<Volume> {
    const { signal, onProgress } = control
    const replication = this.#host.replication
    if (replication === undefined) throw new GalleonError('INVALID_ARGUMENT', `moving a volume to node ${node} needs a cluster, and this instance is not in one; join one (joinCluster) first`)
    if (signal?.aborted === true) throw new GalleonError('CANCELLED', 'the migration was cancelled before it started')
    let wasLocal = false
    const record = await this.#host.admin(async () => {
      const current = this.#host.catalog.resolve(vol)
      if (current.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${current.name} is being deleted`)
      if (this.#host.migrations.has(current.id)) throw new GalleonError('BUSY', `volume ${current.name} is migrating already; wait for that migration, or cancel it`)
      if (current.replication !== undefined) return current
      wasLocal = true
      if (this.#host.catalog.clonesOf(current.id).length > 0) throw new GalleonError('BUSY', `volume ${current.name} has clones reading from it, which would stay here; delete or flatten them first`)
      if (current.source !== undefined) throw new GalleonError('BUSY', `volume ${current.name} is a clone that still reads from ${current.source.volumeId}; migrate it to a 1-copy class first (that gives it its own copy of every block)`)
      if (mountControl(this.#host.mounts).mountsOf(current.id).length > 0) throw new GalleonError('BUSY', `volume ${current.name} is mounted here; unmount it before moving it to node ${node}`)
      const storageClass = this.#host.catalog.storageClass(current.storageClass)
      // Marked until the record is written, as when a volume becomes replicated (see convertingFrom).
      const updated = await this.#host.catalog.updateVolume(current.id, { replication: { epoch: 0, seq: 0 }, convertingFrom: { storageClass: current.storageClass, replicas: current.replicas } })
      try {
        await replication.register(specOf(updated), storageClass === undefined ? {} : classPlacement(storageClass))
      } catch (err) {
        replication.forget(current.id)
        await this.#host.catalog.updateVolume(current.id, { replication: undefined, convertingFrom: undefined }).catch(() => {})
        throw err
      }
      return await this.#host.catalog.updateVolume(current.id, { convertingFrom: undefined }).catch(() => updated)
    })
    const before = this.#host.volumeView(record)
    // Progress: the new copy's fill, as the primary's link to it reports it.
    const report = (phase: MigrationPhase, blocksDone: number, blocksTotal: number): void => {
      const event: MigrationProgressEvent = { volumeId: record.id, volumeName: record.name, phase, blocksDone, blocksTotal, pass: 1 }
      this.#host.emit('volume:migration-progress', event)
      tellProgress(onProgress, event)
    }
    const fill = new FillProgress(replication, record.id, this.#blocksPerCopy(record))
    const timer = setInterval(() => { if (fill.sample([node])) report('copy', fill.done, fill.total) }, 100)
    // Cancelled by the caller's signal, close() or deleteVolume.
    const abort = new AbortController()
    const onAbort = (): void => { abort.abort(signal?.reason) }
    signal?.addEventListener('abort', onAbort, { once: true })
    const moving = replication.moveCopy(record.id, node, { signal: abort.signal })
    const entry = { abort, done: moving.catch(() => {}) }
    this.nodeMoves.set(record.id, entry)
    try {
      await moving
    } catch (err) {
      // A volume that was local before this call is local again when the move did not happen.
      if (wasLocal && !this.#host.closed) await this.#unreplicate(record.id, node).catch(() => {})
      if (abort.signal.aborted && err instanceof GalleonError && err.code === 'CANCELLED' && abort.signal.reason instanceof GalleonError) {
        throw new GalleonError('CANCELLED', `moving volume ${record.name} to node ${node} stopped: ${abort.signal.reason.message}; its copy there is being removed, the volume stays here`)
      }
      throw err
    } finally {
      clearInterval(timer)
      signal?.removeEventListener('abort', onAbort)
      if (this.nodeMoves.get(record.id) === entry) this.nodeMoves.delete(record.id)
    }
    const filled = fill.finish([node])
    report('done', filled.done, filled.total)
    const moved = { ...before, state: VolumeState.Available }
    this.#host.emit('volume:migrated', moved, { storageClass: record.storageClass, ...(record.pool === undefined ? {} : { pool: record.pool }) })
    return moved
  }

  /** Blocks a new copy of the volume is filled with: its blocks, for the live view and each snapshot. */
  #blocksPerCopy (record: VolumeRecord): number {
    return Math.ceil(record.sizeBytes / record.blockSize) * (this.#host.catalog.snapshots(record.id).length + 1)
  }

  /** A 1-copy volume whose move to `node` did not happen: local again (see ReplicationManager.dissolve). */
  async #unreplicate (volumeId: string, node: string): Promise<void> {
    const replication = this.#host.replication
    if (replication === undefined) return
    await this.#host.admin(async () => {
      const current = this.#host.recordById(volumeId)
      if (current === undefined || current.state === VolumeState.Deleting || current.replication === undefined) return
      await replication.dissolve(volumeId, [node], async () => {
        const updated = await this.#host.catalog.updateVolume(volumeId, { replication: undefined })
        this.#host.applyQoS(updated)
      })
    })
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
        const converting = this.copyConversions.get(record.id)
        if (converting !== undefined || this.#host.migrations.has(record.id)) throw new GalleonError('BUSY', `the copy of volume ${record.name} on this node is still converting${converting === undefined ? '' : ` to storage class ${converting.storageClass}`}; try again when it is done`)
      }
      if (signal?.aborted === true) throw migrationCancelled(record.name, signal.reason)
      if (storageClass.parameters.encryption === 'true') await this.#host.keys.provider()
      const placement = pool === undefined ? classPlacement(storageClass) : poolPlacement(pool, classPlacement(storageClass))
      const change = { storageClass: storageClass.name, replicas, ...(poolName === undefined ? {} : { pool: poolName }) }
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
            if (layout.error === undefined || layout.busy) continue
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

  /**
   * Brings this node's copy of a replicated volume to the storage class its cluster record names,
   * in the background (see migrateReplicated); copyLayout reports how it goes. Called with every
   * record this node reads, so cheap when there is nothing to do. `retry`: also after a failure.
   */
  convergeCopy (volumeId: string, spec: VolumeSpec, retry = false): void {
    if (this.#host.closed) return
    const record = this.#host.recordById(volumeId)
    if (record === undefined || record.state === VolumeState.Deleting || record.replication === undefined) return
    const running = this.copyConversions.get(volumeId)
    if (running !== undefined) {
      // Converting to a class the record no longer names: stop; the end of it converges again.
      if (running.storageClass !== spec.storageClass) running.abort.abort(new GalleonError('CANCELLED', `the cluster's record of volume ${record.name} names storage class ${spec.storageClass} now`))
      return
    }
    if (this.copyMatches(record, spec)) {
      this.copyConversionErrors.delete(volumeId)
      return
    }
    const failed = this.copyConversionErrors.get(volumeId)
    if (failed !== undefined && failed.storageClass === spec.storageClass && !retry) return
    this.copyConversionErrors.delete(volumeId)
    const abort = new AbortController()
    this.copyConversions.set(volumeId, { storageClass: spec.storageClass, abort })
    void (async () => {
      try {
        await this.#convertCopy(volumeId, spec, abort.signal)
      } catch (err) {
        const code = errorCode(err)
        // Cancelled (the record changed, a snapshot or expansion came, the instance closes): the
        // next pass below, or the next start, converges again.
        if (code !== 'CANCELLED' && !this.#host.closed) {
          const message = (err as Error)?.message ?? String(err)
          this.copyConversionErrors.set(volumeId, { storageClass: spec.storageClass, code, message })
          this.#host.emit('replication:error', { volumeId, nodeId: this.#host.cluster?.nodeId ?? '', code, message: `converting the copy to storage class ${spec.storageClass}: ${message}` })
        }
      } finally {
        this.copyConversions.delete(volumeId)
      }
      const latest = this.#host.replication?.spec(volumeId)
      if (latest !== undefined && !this.#host.closed) this.convergeCopy(volumeId, latest)
    })()
  }

  /** The pool this node's copy belongs in by `spec`: the record's pool where this node has one of that name, else the one it is in. */
  #copyPool (record: VolumeRecord, spec: VolumeSpec): string | undefined {
    return spec.pool !== undefined && this.#host.catalog.pool(spec.pool) !== undefined ? spec.pool : record.pool
  }

  /** This node's copy is laid out as `spec` says: class, copies and pool. */
  copyMatches (record: VolumeRecord, spec: VolumeSpec): boolean {
    return record.storageClass === spec.storageClass && record.replicas === spec.replicas && this.#copyPool(record, spec) === record.pool
  }

  async #convertCopy (volumeId: string, spec: VolumeSpec, signal: AbortSignal): Promise<void> {
    const storageClass = this.#host.catalog.storageClass(spec.storageClass)
    if (storageClass === undefined) throw new GalleonError('STORAGE_CLASS_NOT_FOUND', `node ${this.#host.cluster?.nodeId ?? ''} has no storage class ${spec.storageClass}, which volume ${spec.name} moves to; create it on every node of the cluster`)
    const record = this.#host.catalog.resolve(volumeId)
    const encrypted = storageClass.parameters.encryption === 'true'
    // Like a new copy: counted in this node's pool of the record's name, if it has one.
    const pool = this.#copyPool(record, spec)
    if (encrypted === (record.encrypted === true) && pool === record.pool) {
      // Held until the copy's record names it (the live migration below holds it itself).
      const releaseClass = this.#host.catalog.useStorageClass(storageClass)
      try {
        await this.#host.admin(async () => {
          const updated = await this.#host.catalog.updateVolume(volumeId, { storageClass: spec.storageClass, replicas: spec.replicas })
          this.#host.applyQoS(updated)
        })
      } finally {
        releaseClass()
      }
      return
    }
    await this.#host.migrateVolume(volumeId, { storageClass: spec.storageClass }, { signal }, { pool, replicas: spec.replicas, copy: true })
  }
}
