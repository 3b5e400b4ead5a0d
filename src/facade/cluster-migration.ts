// Migrations that involve other nodes: a volume into a replicated class, this node's copy moved to
// another node, and this node's copies converting to the class their cluster record names. A
// replicated volume's change to another class is in replicated-class-change.ts.

import { GalleonError, errorCode } from '../errors.js'
import { mountControl } from '../mount/mount-manager.js'
import type { ReplicationManager } from '../replication/manager.js'
import { closedTarget } from '../cluster/closed-nodes.js'
import type { VolumeSpec } from '../replication/records.js'
import { VolumeState, type StorageClass, type Volume } from '../types.js'
import type { VolumeRecord } from '../volumes/catalog.js'
import { DEFAULT_SYNC_TIMEOUT_MS, tellProgress, type MigrateControl, type MigrateVolumeOptions, type MigrationPhase, type MigrationProgressEvent } from '../volumes/migration.js'
import { assertClassSupported, classPlacement, classReplicas } from '../volumes/storage-classes.js'
import type { FacadeHost, NodeMove } from './host.js'
import { copyEncrypted, specOf } from './records.js'
import type { VolumeRef } from './refs.js'
import { FillProgress } from './fill-progress.js'
import { refuseMoveHere } from './attachments-here.js'
import { ReplicatedClassChanges } from './replicated-class-change.js'

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
  readonly nodeMoves = new Map<string, NodeMove>()
  readonly #classChanges: ReplicatedClassChanges

  constructor (host: FacadeHost) {
    this.#host = host
    this.#classChanges = new ReplicatedClassChanges(host, this.copyConversions)
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
    // Before the class step too: refused only by the move, the call would leave it converted.
    refuseMoveHere(this.#host, record, node)
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
    if ((await cluster.closedMembers()).has(node)) throw closedTarget(node)
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
    // Cancelled by the caller's signal, close() or deleteVolume; `done` once the move has settled.
    const abort = new AbortController()
    let settled!: () => void
    const entry: NodeMove = { abort, done: new Promise<void>((resolve) => { settled = resolve }), fromLocal: false, to: node }
    let movingId: string | undefined
    const record = await this.#host.admin(async () => {
      const current = this.#host.catalog.resolve(vol)
      if (current.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${current.name} is being deleted`)
      if (this.#host.migrations.has(current.id)) throw new GalleonError('BUSY', `volume ${current.name} is migrating already; wait for that migration, or cancel it`)
      if (this.nodeMoves.has(current.id)) throw new GalleonError('BUSY', `volume ${current.name} is moving to another node already; wait for that move, or cancel it`)
      movingId = current.id
      // Mounts, files and NBD clients here, of a 1-copy volume or of this node's copy of a
      // replicated one: the move deletes this copy. Once the move is listed (below, in this same
      // turn), no new one comes here until it ends (see MountBridge).
      refuseMoveHere(this.#host, current, node)
      if (current.replication !== undefined) {
        this.nodeMoves.set(current.id, entry)
        return current
      }
      // A 1-copy volume re-encrypts here alone, and the move deletes this copy: the rotation would
      // end with the volume gone from under it. So they refuse each other (see KeyRotations).
      if (this.#host.rotations.has(current.id) || this.#host.rotationsStarting.has(current.id) || this.#host.keys.rotation(current.id) !== undefined) {
        throw new GalleonError('BUSY', `volume ${current.name} is re-encrypting with a new data key; wait for that to finish (getVolumeEncryption shows the progress), then move it`)
      }
      // Moving from here, before the first wait: a key rotation checking meanwhile is refused.
      entry.fromLocal = true
      this.nodeMoves.set(current.id, entry)
      wasLocal = true
      if (this.#host.catalog.clonesOf(current.id).length > 0) throw new GalleonError('BUSY', `volume ${current.name} has clones reading from it, which would stay here; delete or flatten them first`)
      if (current.source !== undefined) throw new GalleonError('BUSY', `volume ${current.name} is a clone that still reads from ${current.source.volumeId}; migrate it to a 1-copy class first (that gives it its own copy of every block)`)
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
    }).catch((err: unknown) => {
      if (movingId !== undefined && this.nodeMoves.get(movingId) === entry) this.nodeMoves.delete(movingId)
      settled()
      throw err
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
    const onAbort = (): void => { abort.abort(signal?.reason) }
    signal?.addEventListener('abort', onAbort, { once: true })
    // Aborted while the move was being recorded: an abort before the listener calls no listener.
    if ((signal as AbortSignal | undefined)?.aborted === true) onAbort()
    const moving = replication.moveCopy(record.id, node, { signal: abort.signal })
    moving.then(settled, settled)
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
   * Moves a replicated volume to another storage class (and/or pool): every copy converts itself,
   * on its own node (see replicated-class-change.ts).
   */
  migrateReplicated (vol: VolumeRef, target: MigrateVolumeOptions, control: MigrateControl): Promise<Volume> {
    return this.#classChanges.migrateReplicated(vol, target, control)
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
          // Refused because the copy re-encrypts with a new data key (copyLayout says so meanwhile):
          // it converts once that is done, without waiting for a class change to ask again.
          const reencrypting = this.#host.rotations.get(volumeId)
          if (reencrypting !== undefined) {
            const again = (): void => {
              const latest = this.#host.replication?.spec(volumeId)
              if (latest !== undefined && !this.#host.closed && this.copyConversionErrors.get(volumeId)?.storageClass === latest.storageClass) this.convergeCopy(volumeId, latest, true)
            }
            void reencrypting.then(again, again)
          }
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

  /**
   * The storage class a replicated volume is changing to as this node sees it: that of a class
   * change started here, of this node's copy converting, or of the cluster's record (`spec`, else
   * the one last read) where this copy is not laid out by it yet; undefined when none is.
   */
  changingClass (volumeId: string, spec?: VolumeSpec): string | undefined {
    const started = this.#classChanges.runningTo(volumeId) ?? this.copyConversions.get(volumeId)?.storageClass
    if (started !== undefined) return started
    const record = this.#host.recordById(volumeId)
    const recorded = spec ?? this.#host.replication?.spec(volumeId)
    if (record === undefined || record.replication === undefined || recorded === undefined) return undefined
    return this.copyMatches(record, recorded) ? undefined : recorded.storageClass
  }

  /** This node's copy is laid out as `spec` says: class, copies and pool. */
  copyMatches (record: VolumeRecord, spec: VolumeSpec): boolean {
    return record.storageClass === spec.storageClass && record.replicas === spec.replicas && this.#copyPool(record, spec) === record.pool
  }

  async #convertCopy (volumeId: string, spec: VolumeSpec, signal: AbortSignal): Promise<void> {
    const storageClass = this.#host.catalog.storageClass(spec.storageClass)
    if (storageClass === undefined) throw new GalleonError('STORAGE_CLASS_NOT_FOUND', `node ${this.#host.cluster?.nodeId ?? ''} has no storage class ${spec.storageClass}, which volume ${spec.name} moves to; create it on every node of the cluster`)
    const record = this.#host.catalog.resolve(volumeId)
    const encrypted = copyEncrypted(spec, storageClass, record.encrypted === true)
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
    await this.#host.migrateVolume(volumeId, { storageClass: spec.storageClass }, { signal }, { pool, replicas: spec.replicas, copy: true, encrypted })
  }
}
