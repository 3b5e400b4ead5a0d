// What the parts of the GalleonFS facade (src/facade/*) share: the instance's components and
// state, and the steps more than one of them takes. GalleonFS builds one and hands it to each part.

import type { AsyncLocalStorage } from 'node:async_hooks'
import type { EventEmitter } from 'eventemitter3'
import type { ClusterManager } from '../cluster/manager.js'
import type { KeyManager } from '../crypto/key-manager.js'
import type { BlockEngine, VolumeBlocks } from '../engine/engine.js'
import type { GalleonEvents } from '../events.js'
import type { MountManager } from '../mount/mount-manager.js'
import type { QoSPolicy, QoSPolicySource } from '../qos/policy.js'
import type { QoSScheduler } from '../qos/scheduler.js'
import type { ForwardedRequest, ReplicationManager } from '../replication/manager.js'
import type { VolumeSpec } from '../replication/records.js'
import type { Snapshot, Volume, WriteConcern } from '../types.js'
import type { Catalog, SnapshotRecord, VolumeRecord } from '../volumes/catalog.js'
import type { MigrateControl, MigrateVolumeOptions } from '../volumes/migration.js'
import type { PoolManager, PoolPlacement, StoragePool } from '../volumes/pools.js'
import type { CallContext } from './access-guard.js'
import type { ReadSource, VolumeRef } from './refs.js'

/** The instance's `emit` (listeners run outside any caller's context). */
export type Emit = <T extends EventEmitter.EventNames<GalleonEvents>> (event: T, ...args: EventEmitter.EventArgs<GalleonEvents, T>) => boolean

/** A live migration running: how to cancel it and when it has ended. */
/** A move of a volume's copy from this node to another (migrateVolume with { node }). */
export interface NodeMove {
  readonly abort: AbortController
  /** Settles once the move has (its copy filled and handed over, or not). */
  readonly done: Promise<unknown>
  /** The volume had one copy, here, when the move began (a key rotation is refused meanwhile). */
  fromLocal: boolean
  /** The node the copy moves to. */
  readonly to: string
}

export interface RunningMigration {
  abort: AbortController
  done: Promise<void>
  finish: () => void
}

/** How the live migration lays a volume out without the rest of a class change (see LiveMigrations.migrateVolume). */
export interface MigrationLayout {
  readonly pool: string | undefined
  readonly replicas: number
  readonly copy: boolean
  /** Whether the data is laid out encrypted; absent: as the target class says. */
  readonly encrypted?: boolean
}

/** The instance's components, state and shared steps, as the facade's parts use them. */
export interface FacadeHost {
  readonly catalog: Catalog
  readonly engine: BlockEngine
  readonly pools: PoolManager
  readonly keys: KeyManager
  readonly mounts: MountManager
  readonly qos: QoSScheduler
  /** Replication of volumes, while in a cluster (it changes when the instance joins or leaves one). */
  readonly replication: ReplicationManager | undefined
  readonly cluster: ClusterManager | undefined
  /** True once close() has begun. */
  readonly closed: boolean
  /** Set once close() was called. */
  readonly closing: Promise<void> | undefined
  /** Who is calling (see AccessGuard). */
  readonly context: AsyncLocalStorage<CallContext>
  /** Engine state of storages a migration moved away from, by storage id: I/O that still names one is redirected. */
  readonly retired: Map<number, VolumeBlocks>
  /** Volumes (and snapshots) being deleted: nothing new may mount them. */
  readonly goingAway: Set<string>
  /** Volumes whose revert is running now (their I/O waits for it rather than being refused). */
  readonly reverting: Set<string>
  /** Existing volumes a restoreBackup is writing into now: nothing new may mount them. */
  readonly restoring: Set<string>
  /** The safety snapshot (its name) of each volume a restoreBackup writes into: not deleted meanwhile. */
  readonly restoreSnapshots: Map<string, string>
  /** Why the last revert of a volume failed, when it did. */
  readonly revertFailures: Map<string, string>
  /** Data-key rotations running in the background, by volume id. */
  readonly rotations: ReadonlyMap<string, Promise<void>>
  /** Live migrations running, by volume id. */
  readonly migrations: ReadonlyMap<string, RunningMigration>
  /** Volumes whose data-key rotation is being recorded (checked, not yet begun): a migration starting meanwhile is refused. */
  readonly rotationsStarting: { has: (volumeId: string) => boolean }
  /**
   * The storage class a replicated volume is changing to as this node sees it (a class change of it
   * started here, this node's copy converting, or the cluster's record `spec` naming a layout this
   * copy is not in yet), or undefined (see ClusterMigrations.changingClass).
   */
  changingClass: (volumeId: string, spec?: VolumeSpec) => string | undefined
  /** Moves of this node's copies to other nodes (migrateVolume with `node`), by volume id: how to cancel each. */
  readonly nodeMoves: ReadonlyMap<string, NodeMove>
  readonly emit: Emit
  assertOpen: () => void
  /** Runs an administrative operation after the ones before it (`whileClosing`: also as a step of close(); see InstanceState.admin). */
  admin: <T> (task: () => Promise<T>, whileClosing?: boolean) => Promise<T>
  /** `admin(task)` once no migration of the volume runs (see LiveMigrations.adminAfterMigration). */
  adminAfterMigration: <T> (volumeId: string, task: () => Promise<T>, cancel?: false | string) => Promise<T>
  volumeBlocks: (record: VolumeRecord) => VolumeBlocks
  ioVolume: (vol: VolumeRef | VolumeRecord) => VolumeBlocks
  ioVolumeOf: (record: VolumeRecord) => VolumeBlocks
  recordById: (id: string) => VolumeRecord | undefined
  /** A volume as callers see it: a replicated one short of in-sync copies is Degraded. */
  volumeView: (record: VolumeRecord) => Volume
  /** Hands a volume's policy in force to the I/O path; returns it. */
  applyQoS: (record: VolumeRecord) => { policy?: QoSPolicy, source: QoSPolicySource }
  ioFailed: (record: VolumeRecord, operation: 'read' | 'write' | 'trim' | 'flush', err: unknown) => unknown
  checkVolumeSize: (sizeBytes: number, given?: number | string) => void
  poolPlacement: (pool: StoragePool, placement: Omit<PoolPlacement, 'nodes'>) => PoolPlacement
  /** Sends an I/O call on a replicated volume to its primary. */
  forward: (record: VolumeRecord, request: ForwardedRequest, payload?: Uint8Array) => Promise<{ header: Readonly<Record<string, unknown>>, payload?: Uint8Array }>
  newVolume: (fields: Parameters<Catalog['createVolume']>[0], link?: { source: VolumeBlocks, gen: number, sizeBytes: number }) => Promise<VolumeRecord>
  destroy: (record: VolumeRecord, flattenClones: boolean) => Promise<void>
  releaseSource: (source: { volumeId: string, snapshotId: string }) => Promise<void>
  takeSnapshot: (record: VolumeRecord, name: string, implicit: boolean, id?: string, sizeBytes?: number) => Promise<SnapshotRecord>
  dropSnapshot: (record: VolumeRecord, snapshot: SnapshotRecord) => Promise<void>
  toSnapshot: (record: SnapshotRecord) => Snapshot
  migrateVolume: (vol: VolumeRef, target: MigrateVolumeOptions, control: MigrateControl, layout?: MigrationLayout) => Promise<Volume>
}

/** The public calls of the instance that forwarded requests and mounts run (as the caller would). */
export interface FacadeCalls {
  read: (source: ReadSource, offset: number, length: number, into?: Uint8Array) => Promise<Uint8Array>
  readBlock: (source: ReadSource, blockIndex: number) => Promise<Uint8Array>
  write: (vol: VolumeRef, offset: number, data: Uint8Array, concern?: WriteConcern | `${WriteConcern}`) => Promise<void>
  writeBlock: (vol: VolumeRef, blockIndex: number, data: Uint8Array, concern?: WriteConcern | `${WriteConcern}`) => Promise<void>
  trim: (vol: VolumeRef, offset: number, length: number) => Promise<void>
  flush: (vol?: VolumeRef) => Promise<void>
  createSnapshot: (vol: VolumeRef, name: string) => Promise<Snapshot>
  deleteSnapshot: (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>, options?: { force?: boolean }) => Promise<void>
  deleteVolume: (vol: VolumeRef, options?: { force?: boolean }) => Promise<void>
  expandVolume: (vol: VolumeRef, newSizeBytes: number | string) => Promise<Volume>
  restoreSnapshot: (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>) => Promise<Volume>
}
