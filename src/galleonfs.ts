// The GalleonFS facade: composes the catalog, the engine and the drivers, owns lifecycle and events.

import { AsyncLocalStorage } from 'node:async_hooks'
import { randomBytes } from 'node:crypto'
import type { EventEmitter } from 'eventemitter3'
import { EVERY_VOLUME, checkPrincipal, parseAccessPolicy, type AccessControl, type AccessPolicy, type Principal } from './access/access-control.js'
import type { AuditEntry, AuditLog, AuditQuery, AuditVerification } from './access/audit-log.js'
import { MountManager, mountControl } from './mount/mount-manager.js'
import { GalleonError, describe, quoted } from './errors.js'
import type { BackupTarget, BlockStore, BlockStoreStats, KeyProvider } from './drivers.js'
import type { KeyManager, VolumeEncryption } from './crypto/key-manager.js'
import { BackupManager, checkDeleteBackupOptions, type Backup, type BackupAdoption, type BackupHooks, type BackupTargetRef, type BackupVerification, type CreateBackupOptions, type DeleteBackupOptions, type DeleteBackupResult, type RestoreBackupOptions } from './backup/manager.js'
import { BackupScheduler, type BackupPolicy, type BackupPolicyOptions, type BackupPolicyRun } from './backup/policies.js'
import type { BlockEngine, VolumeBlocks } from './engine/engine.js'
import type { ReplicationHook } from './engine/journal.js'
import { GuardedEmitter, type GalleonEvents } from './events.js'
import type { ClusterManager, ClusterOptions, ClusterStatus } from './cluster/manager.js'
import type { ReplicationStatus } from './replication/manager.js'
import type { VolumeMetrics } from './metrics/recorder.js'
import type { OpenOptions } from './open-drivers.js'
import { parseSize } from './size.js'
import type { QoSScheduler } from './qos/scheduler.js'
import { parseQoSPolicy, type QoSPolicy, type QoSPolicyInput, type QoSPolicySource } from './qos/policy.js'
import {
  WriteConcern,
  type CreateVolumeOptions, type ScrubReport, type Snapshot, type StorageClass, type Volume, type VolumeUsage
} from './types.js'
import { DEFAULT_NAMESPACE, checkNamespace, checkVolumeName, namespaceOf, type Catalog, type MetadataDatabase } from './volumes/catalog.js'
import type { MigrateControl, MigrateVolumeOptions } from './volumes/migration.js'
import { parseStorageClass } from './volumes/storage-classes.js'
import { PoolManager, type CreatePoolOptions, type StoragePoolStatus, type UpdatePoolOptions } from './volumes/pools.js'
import { AccessGuard, principalHandle, type CallContext } from './facade/access-guard.js'
import { backupObject, findBackup } from './facade/backups.js'
import { ClusterMembership, type ForgottenNode } from './facade/cluster.js'
import { ClusterMigrations } from './facade/cluster-migration.js'
import type { FacadeHost } from './facade/host.js'
import { VolumeIO, ioFailed, ioVolume, ioVolumeOf, reportChecksumFailure, volumeBlocks } from './facade/io.js'
import { KeyRotations } from './facade/key-rotation.js'
import { LiveMigrations } from './facade/live-migration.js'
import { metricsText, volumeMetrics, volumeUsage } from './facade/metrics.js'
import { MountBridge } from './facade/mount-bridge.js'
import { closeInstance, openInstance, type InstanceParts } from './facade/open.js'
import { createPool, deletePool, poolPlacement, poolStatus, updatePool } from './facade/pools.js'
import { applyQoS, effectiveQoS, setVolumeQoS } from './facade/qos.js'
import { checkSnapshotName, checkVolumeSize, volumeView } from './facade/records.js'
import { isSnapshotObject, isSnapshotRef, readSource, recordById, type CloneSource, type ReadSource, type VolumeRef } from './facade/refs.js'
import { callIn } from './facade/forwarded-calls.js'
import { ReplicationBridge } from './facade/replication-bridge.js'
import { Snapshots } from './facade/snapshots.js'
import { createStorageClass, deleteStorageClass } from './facade/storage-classes.js'
import { VolumeLifecycle } from './facade/volumes.js'

export type { VolumeRef, SnapshotRef, ReadSource, CloneSource } from './facade/refs.js'

/**
 * An open GalleonFS instance: named block volumes on a metadata database and a block store.
 * Create one with `GalleonFS.open()`; call `close()` when done.
 */
export class GalleonFS extends GuardedEmitter<GalleonEvents> {
  readonly #catalog: Catalog
  readonly #pools: PoolManager
  readonly #engine: BlockEngine
  readonly #metadata: MetadataDatabase
  readonly #store: BlockStore
  /** Where the data lives ('memory' for in-memory instances). */
  readonly location: string
  #closed = false
  #closing: Promise<void> | undefined
  readonly #backups: BackupManager
  readonly #scheduler: BackupScheduler
  /** Snapshot, clone, revert, expand and delete run one at a time (they change block maps together). */
  #adminQueue: Promise<unknown> = Promise.resolve()
  /** Volumes whose revert is running now (their I/O waits for it rather than being refused). */
  readonly #reverting = new Set<string>()
  /** Why the last revert of a volume failed, when it did. */
  readonly #revertFailures = new Map<string, string>()
  readonly #keys: KeyManager
  readonly #access: AccessControl
  readonly #audit: AuditLog
  readonly #mounts: MountManager
  readonly #context = new AsyncLocalStorage<CallContext>()
  /** Engine state of storages a migration moved away from, by storage id: I/O that still names one is redirected. */
  readonly #retired = new Map<number, VolumeBlocks>()
  /** Volumes being deleted: nothing new may mount them. */
  readonly #goingAway = new Set<string>()
  /** The QoS stage of the I/O path: volume limiters and the node dispatcher. */
  readonly #qos: QoSScheduler
  /** The default backup target when open() created it from the registry: closed with the instance. */
  readonly #ownedBackupTarget: BackupTarget | undefined
  /** What the parts of the facade (src/facade) use of this instance. */
  readonly #host: FacadeHost
  /** Access checks and the audit log of calls. */
  readonly #gate: AccessGuard
  readonly #volumes: VolumeLifecycle
  readonly #snapshots: Snapshots
  readonly #liveMigrations: LiveMigrations
  readonly #clusterMigrations: ClusterMigrations
  readonly #keyRotations: KeyRotations
  readonly #bridge: ReplicationBridge
  /** The cluster and replication, while the instance is in one. */
  readonly #membership: ClusterMembership
  readonly #io: VolumeIO

  private constructor (parts: InstanceParts) {
    super()
    const { metadata, catalog, clock } = parts
    this.#metadata = metadata
    this.#store = parts.store
    this.#catalog = catalog
    this.#pools = new PoolManager(catalog)
    this.#engine = parts.engine
    this.location = parts.location
    this.#qos = parts.qos
    this.#keys = parts.keys
    this.#access = parts.access
    this.#audit = parts.audit
    this.#host = this.#facadeHost()
    this.#volumes = new VolumeLifecycle(this.#host)
    // Read at each call: the membership is made below, and the mode is set when the instance joins a cluster.
    this.#snapshots = new Snapshots(this.#host, () => this.#membership.replicationMode === 'synchronous')
    this.#clusterMigrations = new ClusterMigrations(this.#host)
    this.#liveMigrations = new LiveMigrations(this.#host, this.#clusterMigrations)
    this.#keyRotations = new KeyRotations(this.#host)
    this.#bridge = new ReplicationBridge(this.#host, this, this.#snapshots, this.#volumes, this.#clusterMigrations, this.#keyRotations)
    this.#membership = new ClusterMembership(this.#host, this.#bridge, parts.storagePath, new Date().toISOString())
    this.#gate = new AccessGuard(this.#context, this.#access, this.#audit, catalog)
    this.#io = new VolumeIO(this.#host, this.#gate, this.#bridge, this.#snapshots, this.#membership)
    catalog.currentNamespace = () => this.#context.getStore()?.principal?.namespace ?? DEFAULT_NAMESPACE
    this.#mounts = new MountManager(parts.mountDriver, new MountBridge(this.#host, this.#gate, this).mountHost())
    this.#ownedBackupTarget = parts.ownedBackupTarget
    this.#backups = new BackupManager(this, parts.backupTarget, this.#keys, () => clock.now(), metadata)
    this.#scheduler = new BackupScheduler(this, metadata, clock, parts.timers, (fn) => this.#context.exit(fn))
  }

  /**
   * Opens an instance: `{ storagePath }` for durable on-disk storage (classic-level metadata and the
   * log-structured file block store), `{ inMemory: true }` for tests, or explicit
   * `{ metadata, blockStore }` drivers. Recovers from any crash before resolving.
   */
  static async open (options: OpenOptions): Promise<GalleonFS> {
    return await openInstance(options, (parts) => {
      const instance = new GalleonFS(parts)
      return { instance, onChecksumFailure: (failure) => { reportChecksumFailure(instance.#host, failure) }, start: async (recovered) => { await instance.#start(parts, options, recovered) } }
    })
  }

  /** The rest of open(), once the instance is built: recovery, QoS, the cluster, backups and key rotations left running. */
  async #start (parts: InstanceParts, options: OpenOptions, recovered: () => void): Promise<void> {
    const catalog = parts.catalog
    await this.#volumes.recover()
    recovered()
    for (const record of catalog.volumes()) applyQoS(this.#host, record)
    if (options.cluster !== undefined) await this.joinCluster(options.cluster)
    await this.#backups.start({
      replicated: (volumeId) => this.#host.recordById(volumeId)?.replication !== undefined,
      // Refused I/O as an unfinished revert to the snapshot: restoreSnapshot to it finishes it.
      fence: async (volumeId, safetySnapshot, why) => {
        const record = catalog.resolve(volumeId)
        const snapshot = catalog.resolveSnapshot(record, safetySnapshot)
        await catalog.updateVolume(record.id, { revertTo: snapshot.id })
        this.#revertFailures.set(record.id, why)
      }
    })
    await this.#scheduler.start()
    for (const record of catalog.volumes()) {
      if (this.#keys.rotation(record.id) !== undefined) this.#keyRotations.startRotation(record)
    }
    // Last: what recovery found is reported once the caller holds the instance.
    this.#backups.reportOpening()
  }

  /** This node's part in its cluster, when opened with `{ cluster }`. */
  get cluster (): ClusterManager | undefined {
    return this.#membership.cluster
  }

  /**
   * The cluster as this node sees it: members with health, zone and labels, and the leader. A
   * single node (opened without `{ cluster }`) reports itself, healthy and leader.
   */
  async clusterStatus (): Promise<ClusterStatus> {
    this.#assertOpen()
    const cluster = this.#membership.cluster
    if (cluster !== undefined) return await cluster.status()
    return this.#membership.localStatus()
  }

  /**
   * Joins a cluster (admin): as `open({ cluster })` does, on a running instance. Refused with BUSY
   * while it is in one already.
   */
  async joinCluster (options: ClusterOptions): Promise<ClusterStatus> {
    this.#assertOpen()
    const nodeId = (options as { nodeId?: unknown } | null | undefined)?.nodeId
    // Audited like every admin call. The cluster's background work (leases, replication) begun
    // here acts for the node, not for the caller: it runs outside the caller's context.
    return await this.#gate.guard('joinCluster', 'admin', undefined, 'cluster', async () => await this.#context.exit(async () => await this.#membership.join(options)),
      typeof nodeId === 'string' ? { node: nodeId } : undefined)
  }

  /**
   * Leaves the cluster (admin). Volumes whose only copy is on this node keep it from leaving unless
   * `force`: they stay here, out of the cluster. Afterwards the instance is a single node again.
   */
  async leaveCluster (options: { force?: boolean } = {}): Promise<void> {
    this.#assertOpen()
    const node = this.#membership.cluster?.nodeId
    const details = { ...(node === undefined ? {} : { node }), ...(options?.force === true ? { force: true } : {}) }
    await this.#gate.guard('leaveCluster', 'admin', undefined, 'cluster', async () => { await this.#membership.leave(options) }, Object.keys(details).length === 0 ? undefined : details)
  }

  /**
   * Forgets a node that is gone for good (admin; a dead machine, a replaced disk under a new id): its
   * copies of replicated volumes are given up at once (new ones are placed), and it comes off the
   * lists of given-up copies and the deletion marks that wait for it. Refused with BUSY while it is
   * a member of the cluster, and while it is the primary of a volume (no other node has an
   * up-to-date copy of it).
   */
  async forgetClusterNode (nodeId: string): Promise<ForgottenNode> {
    this.#assertOpen()
    return await this.#gate.guard('forgetClusterNode', 'admin', undefined, 'cluster', async () => await this.#membership.forget(nodeId), typeof nodeId === 'string' ? { node: nodeId } : undefined)
  }

  /** Mounts of volumes and snapshots, and VolumeFiles (see MountManager). */
  get mounts (): MountManager { return this.#mounts }

  /** True once close() has begun. */
  get closed (): boolean { return this.#closed }

  /** Block size of this instance's storage, in bytes. */
  get blockSize (): number { return this.#engine.blockSize }

  /** Name of the block-store backend in use. */
  get backend (): string { return this.#store.name }

  /**
   * Whether the block store can make writes survive a crash (`supports.durableSync`): false for the
   * memory store, which refuses WriteDurable. An NBD export of such an instance offers no FUA or FLUSH.
   */
  get durable (): boolean { return this.#store.supports.durableSync }

  /** Advanced: the replication hook the engine calls after each journal append. */
  setReplicationHook (hook: ReplicationHook | undefined): void {
    this.#gate.assertApplication('setReplicationHook')
    this.#engine.replication = hook
  }

  /**
   * Flushes every acknowledged write, deletes ephemeral volumes, and closes the drivers.
   * Idempotent; further calls on the instance fail with NOT_OPEN.
   */
  async close (): Promise<void> {
    if (this.#closing !== undefined) {
      // Closing already: a principal still needs admin, but the audit log may be closed.
      if (this.#context.getStore()?.principal !== undefined) {
        const denied = this.#gate.check('close', 'admin', undefined, 'instance')
        if (denied !== undefined) await denied
      }
      return await this.#closing
    }
    // A principal closing the instance (which takes admin) is audited before the log closes with it.
    if (this.#context.getStore()?.principal !== undefined) await this.#gate.recordAhead('close', 'admin', undefined, 'instance')
    if (this.#closing !== undefined) return await this.#closing
    this.#closing = closeInstance({
      host: this.#host, volumes: this.#volumes, membership: this.#membership, scheduler: this.#scheduler, backups: this.#backups, adminQueue: () => this.#adminQueue,
      store: this.#store, metadata: this.#metadata, ownedBackupTarget: this.#ownedBackupTarget, markClosed: () => { this.#closed = true }
    })
    return await this.#closing
  }

  // ---------------------------------------------------------------- volumes

  /** Creates a volume. Sizes are bytes or strings like `100M`; the size must be a multiple of the block size. */
  async createVolume (options: CreateVolumeOptions): Promise<Volume> {
    this.#assertOpen()
    if (options === null || typeof options !== 'object') {
      throw new GalleonError('INVALID_ARGUMENT', `createVolume() needs an options object such as { name: 'data', sizeBytes: '1G' }, got ${describe(options)}`)
    }
    const known = new Set(['name', 'namespace', 'type', 'sizeBytes', 'storageClass', 'replicas', 'pool', 'accessModes', 'labels', 'qos'])
    for (const key of Object.keys(options)) {
      if (!known.has(key)) throw new GalleonError('INVALID_ARGUMENT', `unknown createVolume option ${quoted(key)}; allowed: ${[...known].join(', ')}`)
    }
    const namespace = options.namespace ?? this.#catalog.currentNamespace()
    checkNamespace(namespace)
    const name = options.name ?? this.#unusedVolumeName(namespace)
    checkVolumeName(name)
    // A QoS policy of its own is set as setQoSPolicy sets one: that takes "admin" too.
    if (options.qos !== undefined) await this.#gate.check('createVolume', 'admin', { namespace, volume: name }, `volume:${namespace}/${name}`)
    return await this.#gate.guard('createVolume', 'volume:create', { namespace, volume: name }, `volume:${namespace}/${name}`, async () => await this.#volumes.createVolume(options, name, namespace))
  }

  /**
   * A generated name for a volume created without one: 64 random bits, so that names stay unique
   * across the instances of a cluster too, and one not in use in the namespace here.
   */
  #unusedVolumeName (namespace: string): string {
    for (;;) {
      const name = `vol-${randomBytes(8).toString('hex')}`
      if (!this.#catalog.nameTaken(name, namespace)) return name
    }
  }

  /** Looks a volume up by id or name. */
  async getVolume (vol: VolumeRef): Promise<Volume> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    await this.#gate.check('getVolume', 'volume:read', object, label)
    return volumeView(this.#host, this.#catalog.resolve(vol))
  }

  /** All volumes the caller may read, oldest first; of one namespace when given. */
  async listVolumes (options: { namespace?: string } = {}): Promise<Volume[]> {
    this.#assertOpen()
    const namespace = options?.namespace
    if (namespace !== undefined) checkNamespace(namespace)
    // createdAt has milliseconds only: volumes created within one are in their order of creation.
    return this.#catalog.volumes()
      .filter((record) => (namespace === undefined || namespaceOf(record) === namespace) && this.#gate.allowed('volume:read', this.#gate.volumeObject(record).object))
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt) || (a.createdSeq ?? 0) - (b.createdSeq ?? 0) || a.name.localeCompare(b.name))
      .map((record) => volumeView(this.#host, record))
  }

  /**
   * Deletes a volume and frees its blocks, after its in-flight I/O finishes. Refused (BUSY) unless
   * `force` is set while the volume is mounted, has writable files open on it or NBD clients
   * connected read-write, has clones sharing its blocks, or its storage class's reclaim policy is
   * `Retain`.
   */
  async deleteVolume (vol: VolumeRef, options: { force?: boolean } = {}): Promise<void> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    let source: string | undefined
    try { source = this.#catalog.resolve(vol).source?.volumeId } catch {}
    await this.#gate.guard('deleteVolume', 'volume:delete', object, label, async () => { await this.#volumes.deleteVolume(vol, options) }, options?.force === true ? { force: true } : undefined)
    // A clone is gone: snapshots of its source that backups left to delete while it read from them
    // go now. As this node: the caller may have no right to the source's snapshots, which the
    // backup that left them meant to delete.
    if (source !== undefined) await this.#context.exit(async () => { await this.#backups.retryLeftSnapshots(source) })
  }

  /** Grows a volume online; the new space reads as zeros. Shrinking is refused. */
  async expandVolume (vol: VolumeRef, newSizeBytes: number | string): Promise<Volume> {
    this.#assertOpen()
    const sizeBytes = parseSize(newSizeBytes)
    checkVolumeSize(this.#engine.blockSize, sizeBytes)
    const { object, label } = this.#gate.refObject(vol)
    return await this.#gate.guard('expandVolume', 'volume:write', object, label, async () => {
      const record = this.#catalog.resolve(vol)
      // (A call forwarded by another node carries that call: see ReplicationBridge.serveForwarded.)
      if (record.replication !== undefined) return await this.#volumes.expandReplicated(record, sizeBytes, callIn(vol))
      return await this.#liveMigrations.adminAfterMigration(record.id, async () => await this.#volumes.expand(this.#catalog.resolve(vol), sizeBytes))
    }, { sizeBytes })
  }

  /**
   * Bytes the volume really occupies: its current blocks plus older versions kept only for its
   * snapshots (thin provisioning: never-written blocks cost nothing). See getVolumeUsageDetails for
   * the two figures apart.
   */
  async getVolumeUsage (vol: VolumeRef): Promise<number> {
    return (await this.getVolumeUsageDetails(vol)).allocatedBytes
  }

  /** Allocated bytes split into what the current contents use and what only snapshots keep, and the provisioned size. */
  async getVolumeUsageDetails (vol: VolumeRef): Promise<VolumeUsage> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    await this.#gate.check('getVolumeUsage', 'volume:read', object, label)
    return volumeUsage(this.#host, this.#catalog.resolve(vol))
  }

  // ---------------------------------------------------------------- storage classes

  /** Built-in and custom storage classes. */
  async listStorageClasses (): Promise<StorageClass[]> {
    this.#assertOpen()
    return this.#catalog.storageClasses().map((storageClass) => structuredClone(storageClass))
  }

  /** One storage class by name. */
  async getStorageClass (name: string): Promise<StorageClass> {
    this.#assertOpen()
    const storageClass = typeof name === 'string' ? this.#catalog.storageClass(name) : undefined
    if (storageClass === undefined) throw new GalleonError('STORAGE_CLASS_NOT_FOUND', `no storage class ${describe(name)}; listStorageClasses() shows the available ones`)
    return structuredClone(storageClass)
  }

  /**
   * Creates a storage class from a plain object (as parsed from JSON or YAML; camelCase or
   * snake_case fields). It is validated and persisted.
   */
  async createStorageClass (definition: unknown): Promise<StorageClass> {
    this.#assertOpen()
    const storageClass = parseStorageClass(definition)
    return await this.#gate.guard('createStorageClass', 'admin', undefined, `storage-class:${storageClass.name}`, async () => await createStorageClass(this.#host, storageClass))
  }

  /** Deletes a custom storage class that no volume uses. */
  async deleteStorageClass (name: string): Promise<void> {
    this.#assertOpen()
    await this.#gate.guard('deleteStorageClass', 'admin', undefined, `storage-class:${String(name)}`, async () => { await deleteStorageClass(this.#host, (className) => this.getStorageClass(className), name) })
  }

  // ---------------------------------------------------------------- live migration

  /**
   * Moves a volume online to another storage class and/or storage pool on this instance, while it
   * is read and written: its data (and every snapshot, oldest first) is copied in the background
   * to new storage laid out by the target class (encrypted when the class encrypts, in the clear
   * when it does not), the blocks written meanwhile are copied again in passes until little is
   * left, then writes pause for the last delta and one atomic metadata batch switches the volume
   * (same id, same name) over; the old storage is released after. A crash at any point leaves
   * either the old or the new copy authoritative and complete: the other is removed at the next
   * open. Emits `volume:migration-progress` and, at the end, `volume:migrated`. Cancel it with
   * `control.signal` (rejects with CANCELLED; nothing changes). Snapshot and clone operations on
   * the volume wait until it ends; deleting the volume cancels it.
   *
   * In a cluster: a class with more replicas makes a 1-copy volume replicated (laid out here for
   * the class first if its encryption or pool differ); a replicated volume changes class on every
   * copy, each converted on its own node, and its number of copies follows the class; `node`
   * moves this node's copy to that node (after the class/pool change, if one is named too).
   *
   * Refused: a volume clones read from, or one already migrating or re-encrypting, with BUSY; a
   * target pool without room for the volume with NO_SPACE, up front.
   */
  async migrateVolume (vol: VolumeRef, target: MigrateVolumeOptions, control: MigrateControl = {}): Promise<Volume> {
    this.#assertOpen()
    if (target === null || typeof target !== 'object' || Array.isArray(target)) {
      throw new GalleonError('INVALID_ARGUMENT', `migrateVolume() needs a target such as { storageClass: 'encrypted-local' } or { pool: 'big' }, got ${describe(target)}`)
    }
    for (const key of Object.keys(target)) {
      if (!['storageClass', 'pool', 'node'].includes(key)) throw new GalleonError('INVALID_ARGUMENT', `unknown migrateVolume option ${quoted(key)}; allowed: storageClass, pool, node`)
    }
    if (control === null || typeof control !== 'object') throw new GalleonError('INVALID_ARGUMENT', `migrateVolume()'s third argument is { signal?, onProgress?, syncTimeoutMs? }, got ${describe(control)}`)
    if (control.signal !== undefined && !(control.signal instanceof AbortSignal)) throw new GalleonError('INVALID_ARGUMENT', `signal must be an AbortSignal, got ${describe(control.signal)}`)
    if (control.onProgress !== undefined && typeof control.onProgress !== 'function') throw new GalleonError('INVALID_ARGUMENT', `onProgress must be a function, got ${describe(control.onProgress)}`)
    if (control.syncTimeoutMs !== undefined && (typeof control.syncTimeoutMs !== 'number' || !Number.isFinite(control.syncTimeoutMs) || control.syncTimeoutMs <= 0)) throw new GalleonError('INVALID_ARGUMENT', `syncTimeoutMs must be a positive number of milliseconds, got ${describe(control.syncTimeoutMs)}`)
    if (target.storageClass !== undefined && typeof target.storageClass !== 'string') throw new GalleonError('INVALID_ARGUMENT', `storageClass must be a class name, got ${describe(target.storageClass)}`)
    if (target.node !== undefined && (typeof target.node !== 'string' || target.node.length === 0)) throw new GalleonError('INVALID_ARGUMENT', `node must be a cluster node id, got ${describe(target.node)}`)
    const { object, label } = this.#gate.refObject(vol)
    if (target.node !== undefined) {
      const node = target.node
      return await this.#gate.guard('migrateVolume', 'admin', object, label, async () => await this.#clusterMigrations.migrateWithNode(vol, target, node, control), { node, ...(target.storageClass === undefined ? {} : { storageClass: target.storageClass }), ...(target.pool === undefined ? {} : { pool: String(target.pool) }) })
    }
    return await this.#gate.guard('migrateVolume', 'admin', object, label, async () => await this.#liveMigrations.migrateVolume(vol, target, control), {
      ...(target.storageClass === undefined ? {} : { storageClass: target.storageClass }),
      ...(target.pool === undefined ? {} : { pool: String(target.pool) })
    })
  }

  // ---------------------------------------------------------------- storage pools

  /**
   * Creates a storage pool: a named capacity that volumes are provisioned against (`createVolume({
   * pool })` or a storage class's `pool` parameter), optionally restricted in a cluster to some nodes
   * (`nodes`, `nodeSelector: { labels, zones }`). `capacityBytes` is bytes or a size string;
   * `overcommitRatio` (default 1) lets provisioned sizes exceed it (thin provisioning). Emits
   * `pool:created`. INVALID_ARGUMENT for a bad field, POOL_EXISTS for a taken name.
   */
  async createPool (spec: CreatePoolOptions): Promise<StoragePoolStatus> {
    this.#assertOpen()
    const name = (spec as { name?: unknown } | null)?.name
    return await this.#gate.guard('createPool', 'admin', undefined, `pool:${String(name)}`, () => createPool(this.#host, spec))
  }

  /** One pool with its accounting (provisioned, allocated and free bytes, volumes); POOL_NOT_FOUND otherwise. */
  async getPool (name: string): Promise<StoragePoolStatus> {
    this.#assertOpen()
    return poolStatus(this.#host, this.#pools.get(name))
  }

  /** Every pool with its accounting, by name. */
  async listPools (): Promise<StoragePoolStatus[]> {
    this.#assertOpen()
    return this.#pools.list().map((pool) => poolStatus(this.#host, pool))
  }

  /**
   * Changes a pool's capacity, overcommit ratio, description or labels. A limit below what its
   * volumes already provision is refused with BUSY. Emits `pool:updated`.
   */
  async updatePool (name: string, changes: UpdatePoolOptions): Promise<StoragePoolStatus> {
    this.#assertOpen()
    return await this.#gate.guard('updatePool', 'admin', undefined, `pool:${String(name)}`, () => updatePool(this.#host, name, changes))
  }

  /** Deletes a pool; BUSY while volumes are in it or storage classes name it. Emits `pool:deleted`. */
  async deletePool (name: string): Promise<void> {
    this.#assertOpen()
    await this.#gate.guard('deletePool', 'admin', undefined, `pool:${String(name)}`, () => deletePool(this.#host, name))
  }

  // ---------------------------------------------------------------- I/O
  // Each call runs whole in VolumeIO (state and caller checks included) and its promise is returned
  // as it is: wrapping it in an async method here would add an async hop to the hot path.

  /**
   * Writes one block. Shorter data is zero-padded to the block size. Resolves when the write
   * concern is met: `WriteAcknowledged` (default) once the block store has applied it, `WriteDurable` once synced.
   */
  writeBlock (vol: VolumeRef, blockIndex: number, data: Uint8Array, concern: WriteConcern | `${WriteConcern}` = WriteConcern.WriteAcknowledged): Promise<void> {
    return this.#io.writeBlock(vol, blockIndex, data, concern)
  }

  /**
   * Reads one block of a volume, or of a snapshot (`{ volume, snapshot }`): always `blockSize`
   * bytes; never-written blocks read as zeros.
   */
  readBlock (source: ReadSource, blockIndex: number): Promise<Uint8Array> {
    return this.#io.readBlock(source, blockIndex)
  }

  /** Writes bytes at any offset (read-modify-write at partial blocks); atomic as a whole. */
  write (vol: VolumeRef, offset: number, data: Uint8Array, concern: WriteConcern | `${WriteConcern}` = WriteConcern.WriteAcknowledged): Promise<void> {
    return this.#io.write(vol, offset, data, concern)
  }

  /**
   * Reads `length` bytes at `offset` of a volume, or of a snapshot (`{ volume, snapshot }`).
   * `into`: a buffer of at least `length` bytes to read into, instead of a new one (a reader that
   * reuses its buffers spares the allocation); the result is a view of its first `length` bytes.
   */
  read (source: ReadSource, offset: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
    return this.#io.read(source, offset, length, into)
  }

  /** Makes every write acknowledged so far durable (writes of all volumes share the sync). */
  flush (vol?: VolumeRef): Promise<void> {
    return this.#io.flush(vol)
  }

  /** Discards a byte range: whole blocks are freed and read as zeros, partial edges are zeroed. */
  trim (vol: VolumeRef, offset: number, length: number): Promise<void> {
    return this.#io.trim(vol, offset, length)
  }

  /** Reads and verifies every allocated block of a volume; reports (and emits) each bad block. */
  scrub (vol: VolumeRef): Promise<ScrubReport> {
    return this.#io.scrub(vol)
  }

  // ---------------------------------------------------------------- QoS

  /**
   * Sets a volume's own QoS policy (limits, guarantees, bursting, weight; see QoSPolicy), which
   * replaces its storage class's while set. Takes effect at once, for operations already waiting
   * too; persisted. `null` removes the volume's own policy (as clearQoSPolicy does).
   */
  async setQoSPolicy (vol: VolumeRef, policy: QoSPolicyInput | null): Promise<{ policy?: QoSPolicy, source: QoSPolicySource }> {
    this.#assertOpen()
    if (policy === undefined) throw new GalleonError('INVALID_ARGUMENT', 'setQoSPolicy() needs a policy object such as { limits: { iops: 1000 } }, or null to remove the volume\'s own policy')
    const parsed = policy === null ? undefined : parseQoSPolicy(policy)
    const { object, label } = this.#gate.refObject(vol)
    // Limits bound what a tenant may take from the node: changing them is an admin's job.
    return await this.#gate.guard(policy === null ? 'clearQoSPolicy' : 'setQoSPolicy', 'admin', object, label, async () => await this.#admin(() => setVolumeQoS(this.#host, vol, parsed)))
  }

  /** Removes a volume's own QoS policy: its storage class's applies again (if it has one). */
  async clearQoSPolicy (vol: VolumeRef): Promise<{ policy?: QoSPolicy, source: QoSPolicySource }> {
    return await this.setQoSPolicy(vol, null)
  }

  /** The QoS policy in force for a volume and where it comes from (`volume`, `storage-class` or `none`). */
  async getQoSPolicy (vol: VolumeRef): Promise<{ policy?: QoSPolicy, source: QoSPolicySource }> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    await this.#gate.check('getQoSPolicy', 'volume:read', object, label)
    return effectiveQoS(this.#host, this.#catalog.resolve(vol))
  }

  // ---------------------------------------------------------------- metrics

  /** I/O statistics of a volume over the sliding window, plus lifetime counters. */
  async getVolumeMetrics (vol: VolumeRef): Promise<VolumeMetrics> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    await this.#gate.check('getVolumeMetrics', 'volume:read', object, label)
    return volumeMetrics(this.#host, this.#catalog.resolve(vol))
  }

  /** All metrics in the Prometheus text exposition format (version 0.0.4). */
  async metricsText (): Promise<string> {
    this.#assertOpen()
    await this.#gate.check('metricsText', 'admin', undefined, 'metrics')
    const store = await this.getStorageStats()
    return metricsText(this.#host, store, () => this.#bridge.replicationMetrics())
  }

  /**
   * The block store's figures: its backend, live blocks and bytes, bytes on its medium (garbage
   * awaiting compaction included), and syncs to stable storage so far.
   */
  async getStorageStats (): Promise<BlockStoreStats & { backend: string }> {
    this.#assertOpen()
    await this.#gate.check('getStorageStats', 'admin', undefined, 'metrics')
    return { backend: this.#store.name, ...await this.#store.stats() }
  }

  /** Journal statistics: store batches issued and how many asked for a sync (see getStorageStats for device syncs). */
  journalStats (): { lastLsn: number, committedLsn: number, groups: number, syncs: number } {
    this.#assertOpen()
    this.#gate.checkSync('journalStats', 'admin', undefined, 'metrics')
    const journal = this.#engine.journal
    return { lastLsn: journal.lastLsn, committedLsn: journal.committedLsn, ...journal.stats }
  }

  // ---------------------------------------------------------------- not in this release

  // ---------------------------------------------------------------- snapshots and clones

  /**
   * Takes a read-only, point-in-time snapshot of a volume. O(1): nothing is copied, whatever the
   * volume's size; later writes keep the blocks the snapshot reads (copy-on-write). Writes that
   * were in flight when it was called are in it or not as a whole; it is durable when it resolves.
   */
  async createSnapshot (vol: VolumeRef, name: string): Promise<Snapshot> {
    this.#assertOpen()
    checkSnapshotName(name)
    const { object, label } = this.#gate.refObject(vol)
    return await this.#gate.guard('createSnapshot', 'snapshot:create', object, `snapshot:${label.slice(7)}@${name}`, async () => await this.#snapshots.createSnapshot(vol, name))
  }

  /** Snapshots of a volume, oldest first (implicit ones that clones were made from included). */
  async listSnapshots (vol: VolumeRef): Promise<Snapshot[]> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    await this.#gate.check('listSnapshots', 'snapshot:read', object, label)
    const record = this.#catalog.resolve(vol)
    return this.#catalog.snapshots(record.id).map((snapshot) => this.#snapshots.toSnapshot(snapshot))
  }

  /** One snapshot of a volume, by id or name. */
  async getSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>): Promise<Snapshot> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    await this.#gate.check('getSnapshot', 'snapshot:read', object, label)
    const record = this.#catalog.resolve(vol)
    return this.#snapshots.toSnapshot(this.#catalog.resolveSnapshot(record, snapshot))
  }

  /**
   * Deletes a snapshot and frees the block versions only it kept (work proportional to those).
   * A snapshot that clones still read from is kept unless `force`: then each such clone first gets
   * its own copy of the data it shares. Waits for reads of the snapshot in flight.
   */
  async deleteSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>, options: { force?: boolean } = {}): Promise<void> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    const snapshotName = typeof snapshot === 'string' ? snapshot : String((snapshot as { id?: unknown })?.id)
    await this.#gate.guard('deleteSnapshot', 'snapshot:delete', object, `snapshot:${label.slice(7)}@${snapshotName}`, async () => { await this.#snapshots.deleteSnapshot(vol, snapshot, options) }, options?.force === true ? { force: true } : undefined)
  }

  /**
   * Reverts a volume in place to a snapshot: afterwards it reads exactly as the snapshot did (bytes
   * past the snapshot's size, after an expansion, read as zeros; the volume keeps its size). Later
   * snapshots stay usable. Work is proportional to the blocks changed since the snapshot; I/O
   * waits meanwhile. Refused while writes are in flight. A crash mid-way is finished on open.
   */
  async restoreSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>): Promise<Volume> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    const snapshotName = typeof snapshot === 'string' ? snapshot : String((snapshot as { id?: unknown })?.id)
    return await this.#gate.guard('restoreSnapshot', 'snapshot:restore', object, `snapshot:${label.slice(7)}@${snapshotName}`, async () => await this.#snapshots.restoreSnapshot(vol, snapshot))
  }

  /**
   * Creates a writable volume that shares its source's blocks: a snapshot (`{ volume, snapshot }`),
   * or a live volume, of which an implicit snapshot is taken. O(1): nothing is copied. Writes to
   * either side never show on the other. The clone starts with the source's size and settings.
   */
  async cloneVolume (source: CloneSource, newName: string, options: { labels?: Record<string, string>, namespace?: string } = {}): Promise<Volume> {
    this.#assertOpen()
    checkVolumeName(newName)
    const from = this.#gate.refObject(source)
    const fromSnapshot = isSnapshotObject(source) || (typeof source === 'object' && source !== null && 'snapshot' in source)
    const namespace = options?.namespace ?? from.object.namespace
    checkNamespace(namespace)
    const denied = this.#gate.check('cloneVolume', fromSnapshot ? 'snapshot:read' : 'volume:read', from.object, from.label)
    if (denied !== undefined) await denied
    return await this.#gate.guard('cloneVolume', 'volume:create', { namespace, volume: newName }, `volume:${namespace}/${newName}`, async () => await this.#snapshots.cloneVolume(source, newName, namespace, options), { source: from.label })
  }

  /**
   * Which parts of a byte range of a volume (or snapshot) hold data and which read as zeros without
   * storing anything (never written, or trimmed), as extents in order, rounded out to whole blocks
   * and clipped to the range. What NBD block status and sparse copies are built on.
   */
  async getAllocation (source: ReadSource, offset: number, length: number): Promise<Array<{ offset: number, length: number, allocated: boolean }>> {
    this.#assertOpen()
    const denied = this.#gate.refCheck('getAllocation', isSnapshotRef(source) ? 'snapshot:read' : 'volume:read', source)
    if (denied !== undefined) await denied
    const { record, snapshot } = readSource(this.#catalog, source)
    return this.#io.allocation(record, snapshot, offset, length)
  }

  /**
   * Blocks that differ between two views of a volume, ascending: from the snapshot `from` to the
   * snapshot `to` (default: the live volume). Work is proportional to the blocks that changed, not
   * to the volume's size. Without `from`, every block the `to` view holds data in (a full listing).
   */
  async listChangedBlocks (vol: VolumeRef, options: { from?: string | Pick<Snapshot, 'id'>, to?: string | Pick<Snapshot, 'id'> } = {}): Promise<number[]> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    await this.#gate.check('listChangedBlocks', 'snapshot:read', object, label)
    return this.#io.changedBlocks(vol, options)
  }

  /** Runs an administrative operation after the ones before it. */
  async #admin<T> (task: () => Promise<T>): Promise<T> {
    const run = this.#adminQueue.catch(() => {}).then(async () => {
      this.#assertOpen()
      return await task()
    })
    this.#adminQueue = run
    return await run
  }

  // ---------------------------------------------------------------- backups

  /**
   * Backs a volume up to a target (a directory path or a BackupTarget; default: the instance's
   * `backupTarget`), from a snapshot taken for it. `full` stores every block holding data;
   * `incremental` the blocks changed since the volume's last backup there; `differential` those
   * changed since its last full (the first one of a volume is a full). Only changed blocks are
   * read; chunks already on the target are not stored again. Emits `backup:progress`.
   */
  async createBackup (vol: VolumeRef, options: CreateBackupOptions = {}): Promise<Backup> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    await this.#gate.checkTarget('createBackup', options)
    const details = { strategy: String(options?.strategy ?? 'full'), ...(options?.policy === undefined ? {} : { policy: String(options.policy) }) }
    return await this.#gate.guard('createBackup', 'backup:create', object, label, async () => await this.#backups.create(vol, options), details)
  }

  /** Backups on a target, oldest first; of one volume (by id, or by name once the volume is gone) when given. */
  async listBackups (vol?: VolumeRef, options: { target?: BackupTargetRef } = {}): Promise<Backup[]> {
    this.#assertOpen()
    await this.#gate.checkTarget('listBackups', options)
    return (await this.#gate.nested(async () => await this.#backups.list(vol, options))).filter((backup) => this.#gate.allowed('backup:read', backupObject(backup)))
  }

  /** One backup by id. */
  async getBackup (backupId: string, options: { target?: BackupTargetRef } = {}): Promise<Backup> {
    this.#assertOpen()
    await this.#gate.checkTarget('getBackup', options)
    const backup = await findBackup(this.#gate, this.#backups, 'getBackup', 'backup:read', backupId, options)
    await this.#gate.check('getBackup', 'backup:read', backupObject(backup), `backup:${backup.id}`)
    return backup
  }

  /** Re-reads every chunk of a backup and of the backups it builds on, and checks each against its checksum. */
  async verifyBackup (backupId: string, options: { target?: BackupTargetRef } = {}): Promise<BackupVerification> {
    this.#assertOpen()
    await this.#gate.checkTarget('verifyBackup', options)
    const backup = await findBackup(this.#gate, this.#backups, 'verifyBackup', 'backup:read', backupId, options)
    await this.#gate.check('verifyBackup', 'backup:read', backupObject(backup), `backup:${backup.id}`)
    return await this.#backups.verify(backupId, options)
  }

  /**
   * Accepts an encrypted backup written by a GalleonFS build from before manifests were
   * authenticated (2026-12-05), which restoreBackup and verifyBackup refuse as untrusted: checks
   * that the key of each backup in its chain opens for its volume and that every chunk is there and
   * authenticates, then tags the manifests. Takes `admin` on every volume: the caller vouches
   * that no one altered the manifests on the target, whose volume names and ids are what an untagged
   * manifest says they are. Backups already tagged (or plain) are left as they are.
   */
  async adoptBackup (backupId: string, options: { target?: BackupTargetRef } = {}): Promise<BackupAdoption> {
    this.#assertOpen()
    await this.#gate.checkTarget('adoptBackup', options)
    const backup = await findBackup(this.#gate, this.#backups, 'adoptBackup', 'admin', backupId, options)
    return await this.#gate.guard('adoptBackup', 'admin', EVERY_VOLUME, `backup:${backup.id}`, async () => await this.#backups.adopt(backupId, options))
  }

  /**
   * Deletes a backup and every chunk no remaining backup references. A backup that later ones build
   * on is kept unless `force`, which deletes those too. While a backup is being taken on the target
   * (by another process or instance), no unused chunk is deleted: the result says so
   * (`collectionDeferred`, with `deferredReason` naming the backup's process), and a later
   * deletion on the target collects them.
   */
  async deleteBackup (backupId: string, options: DeleteBackupOptions = {}): Promise<DeleteBackupResult> {
    this.#assertOpen()
    checkDeleteBackupOptions(options)
    await this.#gate.checkTarget('deleteBackup', options)
    const backup = await findBackup(this.#gate, this.#backups, 'deleteBackup', 'backup:delete', backupId, options)
    return await this.#gate.guard('deleteBackup', 'backup:delete', backupObject(backup), `backup:${backup.id}`, async () => await this.#backups.delete(backupId, options), options?.force === true ? { force: true } : undefined)
  }

  /**
   * Restores a backup (walking the chain of backups it builds on) into a new volume (`{ name }`,
   * default `<volume>-restored-<id>`) or over an existing one (`{ volume }`, at least as large; its
   * old contents are discarded). Resolves to the restored volume.
   */
  async restoreBackup (backupId: string, options: RestoreBackupOptions = {}): Promise<Volume> {
    this.#assertOpen()
    if (options?.volume !== undefined && options.namespace !== undefined) throw new GalleonError('INVALID_ARGUMENT', 'restoreBackup() takes a namespace only with { name } (a new volume); { volume } names an existing one')
    if (options?.volume !== undefined && options.pool !== undefined) throw new GalleonError('INVALID_ARGUMENT', 'restoreBackup() takes a pool only for a new volume ({ name }); { volume } names an existing one, which stays in its pool')
    await this.#gate.checkTarget('restoreBackup', options)
    const backup = await findBackup(this.#gate, this.#backups, 'restoreBackup', 'backup:restore', backupId, options)
    // The restore writes somewhere: the caller must be allowed that too.
    if (options?.volume !== undefined) {
      const into = this.#gate.refObject(options.volume)
      const denied = this.#gate.check('restoreBackup', 'volume:write', into.object, into.label)
      if (denied !== undefined) await denied
      const mounts = await this.#gate.nested(async () => this.#catalog.resolve(options.volume)).then((record) => mountControl(this.#mounts).mountsOf(record.id), () => [])
      if (mounts.length > 0) throw new GalleonError('BUSY', `volume ${mounts[0]?.volumeName} is mounted (${mounts.map((m) => m.path).join(', ')}); unmount it before restoring a backup over it`)
    } else {
      const namespace = options?.namespace ?? this.#catalog.currentNamespace()
      checkNamespace(namespace)
      const name = options?.name ?? `${backup.volumeName}-restored-${backup.id.slice(0, 8)}`
      const denied = this.#gate.check('restoreBackup', 'volume:create', { namespace, volume: name }, `volume:${namespace}/${name}`)
      if (denied !== undefined) await denied
    }
    const into = options?.volume !== undefined ? this.#gate.refObject(options.volume).label : `volume:${options?.namespace ?? this.#catalog.currentNamespace()}/${options?.name ?? `${backup.volumeName}-restored-${backup.id.slice(0, 8)}`}`
    return await this.#gate.guard('restoreBackup', 'backup:restore', backupObject(backup), `backup:${backup.id}`, async () => await this.#backups.restore(backupId, options), { into })
  }

  /**
   * Creates a backup policy: a cron schedule (UTC unless `timezone`) that backs up the volumes it
   * names or selects by labels, then prunes that policy's backups grandfather-father-son style
   * (`retention: { daily, weekly, monthly }`). The scheduler runs inside this instance while it is
   * open; runs that fall due while it is not are reported (`backup-policy:missed`, `missedRuns`)
   * and made up by one catch-up run.
   */
  async createBackupPolicy (policy: BackupPolicyOptions): Promise<BackupPolicy> {
    this.#assertOpen()
    // Its runs back up as the application, wherever the policy says: naming a target takes "admin"
    // here, as it does for createBackup.
    await this.#gate.checkTarget('createBackupPolicy', policy as { target?: unknown } | undefined)
    return await this.#gate.guard('createBackupPolicy', 'backup:schedule', undefined, `backup-policy:${String((policy as { name?: unknown })?.name)}`, async () => await this.#scheduler.create(policy))
  }

  /** Backup policies, by name. */
  async listBackupPolicies (): Promise<BackupPolicy[]> {
    this.#assertOpen()
    await this.#gate.check('listBackupPolicies', 'backup:read', undefined, 'backup-policies')
    return this.#scheduler.list()
  }

  /** One backup policy with its run record. */
  async getBackupPolicy (name: string): Promise<BackupPolicy> {
    this.#assertOpen()
    await this.#gate.check('getBackupPolicy', 'backup:read', undefined, `backup-policy:${String(name)}`)
    return this.#scheduler.get(name)
  }

  /** Deletes a backup policy (its backups stay); waits for a run in progress. */
  async deleteBackupPolicy (name: string): Promise<void> {
    this.#assertOpen()
    await this.#gate.guard('deleteBackupPolicy', 'backup:schedule', undefined, `backup-policy:${String(name)}`, async () => { await this.#scheduler.delete(name) })
  }

  /** Sets (or clears) the hook functions of a policy, which are not stored: call this again after each open. */
  setBackupPolicyHooks (name: string, hooks: BackupHooks | undefined): void {
    this.#assertOpen()
    this.#gate.checkSync('setBackupPolicyHooks', 'backup:schedule', undefined, `backup-policy:${String(name)}`)
    this.#scheduler.setHooks(name, hooks)
  }

  /** Runs a policy now, outside its schedule (backups, then pruning). */
  async runBackupPolicy (name: string): Promise<BackupPolicyRun> {
    this.#assertOpen()
    return await this.#gate.guard('runBackupPolicy', 'backup:schedule', undefined, `backup-policy:${String(name)}`, async () => (await this.#scheduler.run(name, false))[0] as BackupPolicyRun)
  }

  /** Runs every policy whose scheduled time has come (the scheduler's timer does this by itself; useful with a controlled clock). */
  async runDueBackupPolicies (): Promise<BackupPolicyRun[]> {
    this.#assertOpen()
    const denied = this.#gate.check('runDueBackupPolicies', 'backup:schedule', undefined, 'backup-policies')
    if (denied !== undefined) await denied
    return await this.#scheduler.runDue()
  }

  // ---------------------------------------------------------------- encryption

  /** How a volume is encrypted: key versions, the KEK id, a rotation in progress. */
  async getVolumeEncryption (vol: VolumeRef): Promise<VolumeEncryption> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    await this.#gate.check('getVolumeEncryption', 'volume:read', object, label)
    const record = this.#catalog.resolve(vol)
    return this.#keys.describe(record.id, this.#engine.volume(record.storageId)?.cipher)
  }

  /**
   * Rotates an encrypted volume's data key: a new key seals every write from now on, and the
   * blocks sealed by the old one (snapshots included) are re-encrypted in the background while the
   * volume stays online. A crash mid-way resumes at the next open. Resolves once the new key is
   * active; with `{ wait: true }`, once every block is re-encrypted and the old key is gone.
   */
  async rotateVolumeKey (vol: VolumeRef, options: { wait?: boolean } = {}): Promise<VolumeEncryption> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    return await this.#gate.guard('rotateVolumeKey', 'volume:write', object, label, async () => await this.#keyRotations.rotateVolumeKey(vol, options))
  }

  /**
   * Rotates the key-encryption key: every data key and backup key is re-wrapped (no data is
   * rewritten). With the internal provider, a new master key is generated (older ones stay in the
   * key file, retired, so older backups remain restorable); with `{ passphrase }` the passphrase
   * changes; with `{ keyProvider }` the keys move to that provider (pass it to open() from then on).
   */
  async rotateKeyEncryptionKey (options: { keyProvider?: KeyProvider, passphrase?: string } = {}): Promise<{ keyId: string, provider: string, rewrapped: number }> {
    this.#assertOpen()
    if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `rotateKeyEncryptionKey() options must be an object, got ${describe(options)}`)
    if (options.keyProvider !== undefined && options.passphrase !== undefined) throw new GalleonError('INVALID_ARGUMENT', 'pass either keyProvider or passphrase, not both')
    return await this.#gate.guard('rotateKeyEncryptionKey', 'admin', undefined, 'instance', async () => await this.#admin(async () => await this.#keyRotations.rotateKeyEncryptionKey(options)))
  }

  // ---------------------------------------------------------------- access control and audit

  /**
   * A handle on this instance whose calls act as `principal`: checked against the access policies
   * (once any exists) and audited under its id; bare volume names resolve in its namespace. The
   * GalleonFS object itself acts as the application that embeds it: never denied, audited as
   * `application`. A principal is what the application says it is: authenticate callers before
   * handing them a handle (the daemon maps API tokens to principals).
   */
  as (principal: Principal): GalleonFS {
    this.#gate.assertApplication('as')
    const context: CallContext = { principal: checkPrincipal(principal), nested: false }
    return principalHandle(this, this.#mounts, this.#context, context)
  }

  /** Runs `task` with every call it makes on this instance acting as `principal` (see `as`). */
  async runAs<T> (principal: Principal, task: () => Promise<T>): Promise<T> {
    this.#gate.assertApplication('runAs')
    const context: CallContext = { principal: checkPrincipal(principal), nested: false }
    if (typeof task !== 'function') throw new GalleonError('INVALID_ARGUMENT', `runAs() needs a function to run, got ${describe(task)}`)
    return await this.#context.run(context, task)
  }

  /** Emits with listeners running outside any caller's context: they are the application's code. */
  override emit<T extends EventEmitter.EventNames<GalleonEvents>> (event: T, ...args: EventEmitter.EventArgs<GalleonEvents, T>): boolean {
    if (this.#context.getStore() === undefined) return super.emit(event, ...args)
    return this.#context.exit(() => super.emit(event, ...args))
  }

  /**
   * Adds or replaces an access policy: it grants `verbs` to `principals` (`user:<id>`,
   * `role:<role>`, `group:<group>`, `*`) on volumes in `namespaces` whose names match `volumes`
   * (patterns with `*` and `?`; both default to all). Once any policy exists, principals get only
   * what policies grant (default deny).
   */
  async createAccessPolicy (definition: AccessPolicy): Promise<AccessPolicy> {
    this.#assertOpen()
    const policy = parseAccessPolicy(definition)
    return await this.#gate.guard('createAccessPolicy', 'admin', undefined, `access-policy:${policy.name}`, async () => {
      await this.#access.put(policy)
      return policy
    })
  }

  /** Access policies, by name. */
  async listAccessPolicies (): Promise<AccessPolicy[]> {
    this.#assertOpen()
    await this.#gate.check('listAccessPolicies', 'admin', undefined, 'access-policies')
    return this.#access.policies()
  }

  /** Deletes an access policy. Deleting the last one turns enforcement off (everything is allowed). */
  async deleteAccessPolicy (name: string): Promise<void> {
    this.#assertOpen()
    await this.#gate.guard('deleteAccessPolicy', 'admin', undefined, `access-policy:${String(name)}`, async () => {
      if (typeof name !== 'string' || this.#access.policy(name) === undefined) throw new GalleonError('INVALID_ARGUMENT', `no access policy named ${describe(name)}; listAccessPolicies() shows them`)
      await this.#access.delete(name)
    })
  }

  /** Audit entries (oldest first) by time range, principal, object (a `prefix*` works), action or result. */
  async queryAuditLog (query: AuditQuery = {}): Promise<AuditEntry[]> {
    this.#assertOpen()
    await this.#gate.check('queryAuditLog', 'admin', undefined, 'audit-log')
    return await this.#audit.query(query)
  }

  /**
   * Checks the audit log's hash chain end to end: an edited, removed or reordered entry is reported.
   * Pass a head saved earlier (`auditHead()`) to detect a rewrite of the whole log as well.
   */
  async verifyAuditLog (expectedHead?: { seq: number, hash: string }): Promise<AuditVerification> {
    this.#assertOpen()
    await this.#gate.check('verifyAuditLog', 'admin', undefined, 'audit-log')
    return await this.#audit.verify(expectedHead)
  }

  /** The last audit entry's sequence number and hash: keep copies outside to anchor the log. */
  async auditHead (): Promise<{ seq: number, hash: string }> {
    this.#assertOpen()
    await this.#gate.check('auditHead', 'admin', undefined, 'audit-log')
    return this.#audit.head()
  }

  // ---------------------------------------------------------------- replication

  /**
   * How a volume's replication stands as this node sees it: the primary and its epoch, the nodes
   * holding copies and those in sync, and on the primary each copy's link (lag, bytes shipped,
   * resync progress). A volume with one copy reports just this node.
   */
  async replicationStatus (vol: VolumeRef): Promise<ReplicationStatus> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    await this.#gate.check('replicationStatus', 'volume:read', object, label)
    return this.#bridge.replicationStatus(this.#catalog.resolve(vol))
  }

  // ---------------------------------------------------------------- internals

  /** What the parts of the facade (src/facade) use of this instance: its components and state, and the steps they share. */
  #facadeHost (): FacadeHost {
    const self = this
    const host: FacadeHost = {
      catalog: this.#catalog,
      engine: this.#engine,
      pools: this.#pools,
      get keys () { return self.#keys },
      get mounts () { return self.#mounts },
      get qos () { return self.#qos },
      get replication () { return self.#membership.replication },
      get cluster () { return self.#membership.cluster },
      get closed () { return self.#closed },
      get closing () { return self.#closing },
      context: this.#context,
      retired: this.#retired,
      goingAway: this.#goingAway,
      reverting: this.#reverting,
      revertFailures: this.#revertFailures,
      get rotations () { return self.#keyRotations.running },
      get migrations () { return self.#liveMigrations.running },
      get nodeMoves () { return self.#clusterMigrations.nodeMoves },
      emit: this.emit.bind(this),
      assertOpen: () => { this.#assertOpen() },
      admin: (task) => this.#admin(task),
      adminAfterMigration: (volumeId, task, cancel) => this.#liveMigrations.adminAfterMigration(volumeId, task, cancel),
      volumeBlocks: (record) => volumeBlocks(host, record),
      ioVolume: (vol) => ioVolume(host, vol),
      ioVolumeOf: (record) => ioVolumeOf(host, record),
      recordById: (id) => recordById(this.#catalog, id),
      volumeView: (record) => volumeView(host, record),
      applyQoS: (record) => applyQoS(host, record),
      ioFailed: (record, operation, err) => ioFailed(host, record, operation, err),
      checkVolumeSize: (sizeBytes) => { checkVolumeSize(this.#engine.blockSize, sizeBytes) },
      poolPlacement: (pool, placement) => poolPlacement(host, pool, placement),
      forward: (record, request, payload) => this.#bridge.forward(record, request, payload),
      newVolume: (fields, link) => this.#volumes.newVolume(fields, link),
      destroy: (record, flattenClones) => this.#volumes.destroy(record, flattenClones),
      releaseSource: (source) => this.#volumes.releaseSource(source),
      takeSnapshot: (record, name, implicit, id, sizeBytes) => this.#snapshots.takeSnapshot(record, name, implicit, id, sizeBytes),
      dropSnapshot: (record, snapshot) => this.#snapshots.dropSnapshot(record, snapshot),
      toSnapshot: (record) => this.#snapshots.toSnapshot(record),
      migrateVolume: (vol, target, control, layout) => this.#liveMigrations.migrateVolume(vol, target, control, layout)
    }
    return host
  }

  #assertOpen (): void {
    if (this.#closed) throw new GalleonError('NOT_OPEN', 'this GalleonFS instance is closed; open a new one with GalleonFS.open()')
  }
}