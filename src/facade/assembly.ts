// How a GalleonFS instance's parts are made and wired together, once open() has loaded them: the
// host the facade's parts share (see host.ts) and each part, in the order they depend on each other.

import type { AsyncLocalStorage } from 'node:async_hooks'
import type { AccessControl } from '../access/access-control.js'
import type { AuditLog } from '../access/audit-log.js'
import { BackupManager } from '../backup/manager.js'
import { BackupScheduler } from '../backup/policies.js'
import type { KeyManager } from '../crypto/key-manager.js'
import type { BackupTarget, BlockStore } from '../drivers.js'
import type { BlockEngine, VolumeBlocks } from '../engine/engine.js'
import type { GalleonFS } from '../galleonfs.js'
import { MountManager, mountControl } from '../mount/mount-manager.js'
import { DEFAULT_NAMESPACE, type Catalog, type MetadataDatabase } from '../volumes/catalog.js'
import { WriteConcern } from '../types.js'
import { PoolManager } from '../volumes/pools.js'
import { AccessApi } from './access-api.js'
import { AccessGuard, type CallContext } from './access-guard.js'
import { BackupApi } from './backup-api.js'
import { assertNothingAttached } from './backups.js'
import { ClusterMembership } from './cluster.js'
import { ClusterMigrations } from './cluster-migration.js'
import type { FacadeHost } from './host.js'
import { InstanceApi } from './instance-api.js'
import { VolumeIO, ioFailed, ioVolume, ioVolumeOf, volumeBlocks } from './io.js'
import { KeyRotations } from './key-rotation.js'
import { LiveMigrations } from './live-migration.js'
import { MountBridge } from './mount-bridge.js'
import { InstanceState, type InstanceParts } from './open.js'
import { poolPlacement } from './pools.js'
import { applyQoS } from './qos.js'
import { checkVolumeSize, volumeView } from './records.js'
import { recordById } from './refs.js'
import { ReplicationBridge } from './replication-bridge.js'
import { SnapshotApi } from './snapshot-api.js'
import { Snapshots } from './snapshots.js'
import { VolumeApi } from './volume-api.js'
import { VolumeLifecycle } from './volumes.js'

/** An instance's components, its state and the parts of the facade, as GalleonFS and its calls use them. */
export interface Facade {
  readonly metadata: MetadataDatabase
  readonly store: BlockStore
  readonly catalog: Catalog
  readonly pools: PoolManager
  readonly engine: BlockEngine
  readonly keys: KeyManager
  readonly access: AccessControl
  readonly audit: AuditLog
  /** Whether the instance is open, and its queue of administrative operations. */
  readonly state: InstanceState
  /** Who is calling (see AccessGuard). */
  readonly context: AsyncLocalStorage<CallContext>
  /** What the parts of the facade (src/facade) use of this instance. */
  readonly host: FacadeHost
  /** Access checks and the audit log of calls. */
  readonly gate: AccessGuard
  readonly volumes: VolumeLifecycle
  readonly snapshots: Snapshots
  readonly liveMigrations: LiveMigrations
  readonly clusterMigrations: ClusterMigrations
  readonly keyRotations: KeyRotations
  readonly bridge: ReplicationBridge
  /** The cluster and replication, while the instance is in one. */
  readonly membership: ClusterMembership
  readonly io: VolumeIO
  /** Mounts of volumes and snapshots, and VolumeFiles (see MountManager). */
  readonly mounts: MountManager
  readonly backups: BackupManager
  readonly scheduler: BackupScheduler
  /** The default backup target when open() created it from the registry: closed with the instance. */
  readonly ownedBackupTarget: BackupTarget | undefined
}

/** Where the work of GalleonFS's calls is done, by area (I/O is in VolumeIO). */
export interface FacadeApi {
  readonly volumes: VolumeApi
  readonly snapshots: SnapshotApi
  readonly backups: BackupApi
  readonly instance: InstanceApi
  readonly access: AccessApi
}

/** The calls of an instance whose parts are `f`. */
export function facadeApi (f: Facade): FacadeApi {
  return { volumes: new VolumeApi(f), snapshots: new SnapshotApi(f), backups: new BackupApi(f), instance: new InstanceApi(f), access: new AccessApi(f) }
}

/** Builds the parts of `instance` (GalleonFS's constructor); `context` is the instance's, which its `emit` reads. */
export function assembleFacade (parts: InstanceParts, instance: GalleonFS, context: AsyncLocalStorage<CallContext>): Facade {
  const { metadata, catalog, clock } = parts
  const state = new InstanceState()
  /** Volumes whose revert is running now (their I/O waits for it rather than being refused). */
  const reverting = new Set<string>()
  /** Existing volumes a restore writes into (BackupManager claims them): nothing new may mount them. */
  const restoring = new Set<string>()
  /** The safety snapshots of those restores, by volume id (see FacadeHost.restoreSnapshots). */
  const restoreSnapshots = new Map<string, string>()
  /** Why the last revert of a volume failed, when it did. */
  const revertFailures = new Map<string, string>()
  /** Engine state of storages a migration moved away from, by storage id: I/O that still names one is redirected. */
  const retired = new Map<number, VolumeBlocks>()
  /** Volumes being deleted: nothing new may mount them. */
  const goingAway = new Set<string>()
  const pools = new PoolManager(catalog)
  const engine = parts.engine
  // Made below, after the host that they take: the host reads them at each use.
  let mounts: MountManager
  let volumes: VolumeLifecycle
  let snapshots: Snapshots
  let liveMigrations: LiveMigrations
  let clusterMigrations: ClusterMigrations
  let keyRotations: KeyRotations
  let bridge: ReplicationBridge
  let membership: ClusterMembership
  const host: FacadeHost = {
    catalog,
    engine,
    pools,
    get keys () { return parts.keys },
    get mounts () { return mounts },
    get qos () { return parts.qos },
    get replication () { return membership.replication },
    get cluster () { return membership.cluster },
    get closed () { return state.closed },
    get closing () { return state.closing },
    context,
    retired,
    goingAway,
    reverting,
    restoring,
    restoreSnapshots,
    revertFailures,
    get rotations () { return keyRotations.running },
    get migrations () { return liveMigrations.running },
    get nodeMoves () { return clusterMigrations.nodeMoves },
    get rotationsStarting () { return keyRotations.starting },
    changingClass: (volumeId, spec) => clusterMigrations.changingClass(volumeId, spec),
    emit: instance.emit.bind(instance),
    assertOpen: () => { state.assertOpen() },
    admin: (task, whileClosing) => state.admin(task, whileClosing),
    adminAfterMigration: (volumeId, task, cancel) => liveMigrations.adminAfterMigration(volumeId, task, cancel),
    volumeBlocks: (record) => volumeBlocks(host, record),
    ioVolume: (vol) => ioVolume(host, vol),
    ioVolumeOf: (record) => ioVolumeOf(host, record),
    recordById: (id) => recordById(catalog, id),
    volumeView: (record) => volumeView(host, record),
    applyQoS: (record) => applyQoS(host, record),
    ioFailed: (record, operation, err) => ioFailed(host, record, operation, err),
    checkVolumeSize: (sizeBytes, given) => { checkVolumeSize(engine.blockSize, sizeBytes, given) },
    poolPlacement: (pool, placement) => poolPlacement(host, pool, placement),
    forward: (record, request, payload) => bridge.forward(record, request, payload),
    newVolume: (fields, link) => volumes.newVolume(fields, link),
    destroy: (record, flattenClones) => volumes.destroy(record, flattenClones),
    releaseSource: (source) => volumes.releaseSource(source),
    takeSnapshot: (record, name, implicit, id, sizeBytes) => snapshots.takeSnapshot(record, name, implicit, id, sizeBytes),
    dropSnapshot: (record, snapshot) => snapshots.dropSnapshot(record, snapshot),
    toSnapshot: (record) => snapshots.toSnapshot(record),
    migrateVolume: (vol, target, control, layout) => liveMigrations.migrateVolume(vol, target, control, layout)
  }
  volumes = new VolumeLifecycle(host)
  // Read at each call: the membership is made below, and the mode is set when the instance joins a cluster.
  snapshots = new Snapshots(host, () => membership.replicationMode === 'synchronous')
  clusterMigrations = new ClusterMigrations(host)
  liveMigrations = new LiveMigrations(host, clusterMigrations)
  keyRotations = new KeyRotations(host)
  bridge = new ReplicationBridge(host, instance, snapshots, volumes, clusterMigrations, keyRotations)
  membership = new ClusterMembership(host, bridge, parts.storagePath, new Date().toISOString())
  const gate = new AccessGuard(context, parts.access, parts.audit, catalog)
  const io = new VolumeIO(host, gate, bridge, snapshots, membership)
  catalog.currentNamespace = () => context.getStore()?.principal?.namespace ?? DEFAULT_NAMESPACE
  mounts = new MountManager(parts.mountDriver, new MountBridge(host, gate, instance).mountHost())
  // A restore claims its volume in `restoring`, then checks that nothing mounted or opened it for
  // writing meanwhile: those check the claim (see MountBridge), so one of the two is refused,
  // whichever comes first.
  const backups = new BackupManager(instance, parts.backupTarget, parts.keys, () => clock.now(), metadata, {
    claims: restoring,
    safetySnapshots: restoreSnapshots,
    assertUnmounted: (volumeId) => { assertNothingAttached(mountControl(mounts), volumeId, recordById(catalog, volumeId)?.name ?? volumeId, 'as the restore began') },
    // The restore's own writes (with the same checks, QoS and forwarding as any write) pass its claim.
    write: async (volumeId, offset, data) => { await io.write(volumeId, offset, data, WriteConcern.WriteAcknowledged, volumeId) },
    trim: async (volumeId, offset, length) => { await io.trim(volumeId, offset, length, volumeId) },
    // Its put-back, which other reverts of the volume may not do while the claim holds.
    revert: async (volumeId, snapshot) => { await snapshots.restoreSnapshot(volumeId, snapshot, volumeId) }
  })
  const scheduler = new BackupScheduler(instance, metadata, clock, parts.timers, (fn) => context.exit(fn))
  return {
    metadata,
    store: parts.store,
    catalog,
    pools,
    engine,
    keys: parts.keys,
    access: parts.access,
    audit: parts.audit,
    state,
    context,
    host,
    gate,
    volumes,
    snapshots,
    liveMigrations,
    clusterMigrations,
    keyRotations,
    bridge,
    membership,
    io,
    mounts,
    backups,
    scheduler,
    ownedBackupTarget: parts.ownedBackupTarget
  }
}
