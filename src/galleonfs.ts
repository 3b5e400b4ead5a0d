// The GalleonFS facade: composes the catalog, the engine and the drivers, owns lifecycle and events.

import { AsyncLocalStorage } from 'node:async_hooks'
import { EventEmitter } from 'eventemitter3'
import { AccessControl, checkPrincipal, parseAccessPolicy, type AccessObject, type AccessPolicy, type Principal, type Verb } from './access/access-control.js'
import { AuditLog, type AuditEntry, type AuditQuery, type AuditVerification } from './access/audit-log.js'
import { MountManager, mountControl } from './mount/mount-manager.js'
import { GalleonError, assertBytes, describe, errorCode } from './errors.js'
import type { BackupTarget, BlockStore, BlockStoreStats, KeyProvider } from './drivers.js'
import { KeyManager, type VolumeEncryption } from './crypto/key-manager.js'
import { BackupManager, type Backup, type BackupHooks, type BackupTargetRef, type BackupVerification, type CreateBackupOptions, type DeleteBackupOptions, type RestoreBackupOptions } from './backup/manager.js'
import { BackupScheduler, type BackupPolicy, type BackupPolicyOptions, type BackupPolicyRun } from './backup/policies.js'
import { BlockEngine, type VolumeBlocks } from './engine/engine.js'
import { LIVE } from './engine/block-map.js'
import type { ReplicationHook } from './engine/journal.js'
import type { GalleonEvents } from './events.js'
import { ClusterManager, type ClusterOptions, type ClusterStatus } from './cluster/manager.js'
import { ReplicationManager, type ReplicationStatus } from './replication/manager.js'
import { renderPrometheus } from './metrics/prometheus.js'
import { assertWindowSeconds, type VolumeMetrics } from './metrics/recorder.js'
import { resolveDrivers, type OpenOptions } from './open-drivers.js'
import { parseSize } from './size.js'
import { QoSScheduler } from './qos/scheduler.js'
import { renderQoSMetrics } from './qos/prometheus.js'
import { isEmptyPolicy, parseQoSPolicy, qosFromParameters, type QoSPolicy, type QoSPolicySource } from './qos/policy.js'
import {
  VolumeState, VolumeType, WriteConcern,
  type CreateVolumeOptions, type ScrubReport, type Snapshot, type StorageClass, type Volume, type VolumeUsage
} from './types.js'
import { Catalog, DEFAULT_NAMESPACE, checkNamespace, checkVolumeName, namespaceOf, type MetadataDatabase, type VolumeRecord } from './volumes/catalog.js'
import type { MigrateControl, MigrateVolumeOptions } from './volumes/migration.js'
import { parseStorageClass } from './volumes/storage-classes.js'
import { PoolManager, poolAdmits, poolPlacement, type CreatePoolOptions, type PoolPlacement, type StoragePool, type StoragePoolStatus, type UpdatePoolOptions } from './volumes/pools.js'
import { AccessGuard, principalHandle, type CallContext } from './facade/access-guard.js'
import { ClusterMigrations } from './facade/cluster-migration.js'
import type { FacadeHost } from './facade/host.js'
import { KeyRotations } from './facade/key-rotation.js'
import { LiveMigrations } from './facade/live-migration.js'
import { MountBridge } from './facade/mount-bridge.js'
import { checkSnapshotName, toVolume, viewOf, withoutQoS } from './facade/records.js'
import { isSnapshotObject, isSnapshotRef, readSource, writable, type CloneSource, type ReadSource, type VolumeRef } from './facade/refs.js'
import { ReplicationBridge } from './facade/replication-bridge.js'
import { Snapshots } from './facade/snapshots.js'
import { VolumeLifecycle } from './facade/volumes.js'

export type { VolumeRef, SnapshotRef, ReadSource, CloneSource } from './facade/refs.js'

const WRITE_CONCERNS = new Set<string>(Object.values(WriteConcern))

/**
 * An open GalleonFS instance: named block volumes on a metadata database and a block store.
 * Create one with `GalleonFS.open()`; call `close()` when done.
 */
export class GalleonFS extends EventEmitter<GalleonEvents> {
  readonly #catalog: Catalog
  readonly #pools: PoolManager
  readonly #engine: BlockEngine
  readonly #metadata: MetadataDatabase
  readonly #store: BlockStore
  /** Where the data lives ('memory' for in-memory instances). */
  readonly location: string
  #closed = false
  #closing: Promise<void> | undefined
  #backups!: BackupManager
  #scheduler!: BackupScheduler
  /** Snapshot, clone, revert, expand and delete run one at a time (they change block maps together). */
  #adminQueue: Promise<unknown> = Promise.resolve()
  /** Volumes whose revert is running now (their I/O waits for it rather than being refused). */
  readonly #reverting = new Set<string>()
  /** Why the last revert of a volume failed, when it did. */
  readonly #revertFailures = new Map<string, string>()
  #keys!: KeyManager
  #access!: AccessControl
  #audit!: AuditLog
  #mounts!: MountManager
  readonly #context = new AsyncLocalStorage<CallContext>()
  /** Engine state of storages a migration moved away from, by storage id: I/O that still names one is redirected. */
  readonly #retired = new Map<number, VolumeBlocks>()
  /** Volumes being deleted: nothing new may mount them. */
  readonly #goingAway = new Set<string>()
  #cluster: ClusterManager | undefined
  /** Replication of volumes, while in a cluster. */
  #replication: ReplicationManager | undefined
  #replicationMode: 'synchronous' | 'asynchronous' = 'synchronous'
  /** The last join or leave: they run one at a time. */
  #clusterChange: Promise<unknown> = Promise.resolve()
  #storagePath: string | undefined
  /** The QoS stage of the I/O path: volume limiters and the node dispatcher. */
  #qos!: QoSScheduler
  /** The default backup target when open() created it from the registry: closed with the instance. */
  #ownedBackupTarget: BackupTarget | undefined
  readonly #openedAt = new Date().toISOString()
  /** What the parts of the facade (src/facade) use of this instance. */
  readonly #host: FacadeHost
  /** Access checks and the audit log of calls (set up by open()). */
  #gate!: AccessGuard
  readonly #volumes: VolumeLifecycle
  readonly #snapshots: Snapshots
  readonly #liveMigrations: LiveMigrations
  readonly #clusterMigrations: ClusterMigrations
  readonly #keyRotations: KeyRotations
  readonly #bridge: ReplicationBridge

  private constructor (metadata: MetadataDatabase, store: BlockStore, catalog: Catalog, engine: BlockEngine, location: string) {
    super()
    this.#metadata = metadata
    this.#store = store
    this.#catalog = catalog
    this.#pools = new PoolManager(catalog)
    this.#engine = engine
    this.location = location
    this.#host = this.#facadeHost()
    this.#volumes = new VolumeLifecycle(this.#host)
    this.#snapshots = new Snapshots(this.#host)
    this.#clusterMigrations = new ClusterMigrations(this.#host)
    this.#liveMigrations = new LiveMigrations(this.#host, this.#clusterMigrations)
    this.#keyRotations = new KeyRotations(this.#host)
    this.#bridge = new ReplicationBridge(this.#host, this, this.#snapshots, this.#volumes, this.#clusterMigrations)
  }

  /**
   * Opens an instance: `{ storagePath }` for durable on-disk storage (classic-level metadata and the
   * log-structured file block store), `{ inMemory: true }` for tests, or explicit
   * `{ metadata, blockStore }` drivers. Recovers from any crash before resolving.
   */
  static async open (options: OpenOptions): Promise<GalleonFS> {
    const blockSize = options?.blockSize
    if (blockSize !== undefined && (!Number.isSafeInteger(blockSize) || blockSize < 512 || blockSize > 1 << 20 || (blockSize & (blockSize - 1)) !== 0)) {
      throw new GalleonError('INVALID_ARGUMENT', `blockSize must be a power of two from 512 to 1048576, got ${describe(blockSize)}`)
    }
    const cacheBlocks = options?.cacheBlocks
    if (cacheBlocks !== undefined && (!Number.isSafeInteger(cacheBlocks) || cacheBlocks < 0)) {
      throw new GalleonError('INVALID_ARGUMENT', `cacheBlocks must be a non-negative integer, got ${describe(cacheBlocks)}`)
    }
    if (options?.metricsWindowSeconds !== undefined) assertWindowSeconds(options.metricsWindowSeconds, 'metricsWindowSeconds')
    // Built before any driver opens, so a bad qos option fails without touching the storage.
    let emitQoS: (event: string, payload: unknown) => void = () => {}
    const qos = new QoSScheduler(options?.qos ?? {}, (event, payload) => { emitQoS(event, payload) }, options?.metricsWindowSeconds)
    const { metadata, blockStore, location, keyProvider, passphrase, backupTarget, ownedBackupTarget, mountDriver } = await resolveDrivers(options)
    try {
      await metadata.open()
    } catch (err) {
      await ownedBackupTarget?.close().catch(() => {})
      await mountDriver.close?.().catch(() => {})
      const code = (err as { code?: string }).code
      if (code === 'LEVEL_LOCKED' || String((err as Error)?.cause ?? '').includes('lock')) {
        throw new GalleonError('BUSY', `the storage at ${location} is already open in another GalleonFS instance or process; close that one first`, { cause: err })
      }
      throw new GalleonError('IO_ERROR', `could not open the metadata database at ${location}: ${(err as Error).message}`, { cause: err })
    }
    try {
      await blockStore.open()
      const catalog = new Catalog(metadata)
      await catalog.load(blockSize)
      let instance: GalleonFS | undefined
      const engine = new BlockEngine(blockStore, {
        blockSize: catalog.blockSize,
        cacheBlocks,
        metricsWindowSeconds: options.metricsWindowSeconds,
        onChecksumFailure: (failure) => { if (instance !== undefined) instance.#onChecksumFailure(failure) }
      })
      instance = new GalleonFS(metadata, blockStore, catalog, engine, location)
      instance.#qos = qos
      const emitter = instance
      emitQoS = (event, payload) => { emitter.emit(event as 'qos:throttled', payload as never) }
      instance.#keys = new KeyManager(metadata, { storagePath: options.storagePath, keyProvider, passphrase: passphrase ?? options.passphrase, inMemory: options.inMemory === true })
      await instance.#keys.load()
      const clock = options.clock ?? { now: Date.now }
      if (typeof clock?.now !== 'function') throw new GalleonError('INVALID_ARGUMENT', `clock must be an object with a now() function returning milliseconds, got ${describe(clock)}`)
      const self = instance
      instance.#access = new AccessControl(metadata)
      await instance.#access.load()
      instance.#audit = new AuditLog(metadata, () => clock.now())
      await instance.#audit.load()
      instance.#gate = new AccessGuard(instance.#context, instance.#access, instance.#audit, catalog)
      catalog.currentNamespace = () => self.#context.getStore()?.principal?.namespace ?? DEFAULT_NAMESPACE
      instance.#mounts = new MountManager(mountDriver, new MountBridge(instance.#host, instance.#gate, instance).mountHost())
      instance.#ownedBackupTarget = ownedBackupTarget
      instance.#backups = new BackupManager(instance, backupTarget, instance.#keys, () => clock.now(), metadata)
      instance.#scheduler = new BackupScheduler(instance, metadata, clock, options.clock === undefined, (fn) => self.#context.exit(fn))
      await instance.#volumes.recover()
      for (const record of catalog.volumes()) instance.#applyQoS(record)
      instance.#storagePath = options.storagePath
      if (options.cluster !== undefined) await instance.joinCluster(options.cluster)
      await instance.#backups.start()
      await instance.#scheduler.start()
      for (const record of catalog.volumes()) {
        if (instance.#keys.rotation(record.id) !== undefined) instance.#keyRotations.startRotation(record)
      }
      return instance
    } catch (err) {
      await blockStore.close().catch(() => {})
      await metadata.close().catch(() => {})
      await ownedBackupTarget?.close().catch(() => {})
      await mountDriver.close?.().catch(() => {})
      throw err
    }
  }

  /** This node's part in its cluster, when opened with `{ cluster }`. */
  get cluster (): ClusterManager | undefined {
    return this.#cluster
  }

  /**
   * The cluster as this node sees it: members with health, zone and labels, and the leader. A
   * single node (opened without `{ cluster }`) reports itself, healthy and leader.
   */
  async clusterStatus (): Promise<ClusterStatus> {
    this.#assertOpen()
    if (this.#cluster !== undefined) return await this.#cluster.status()
    return {
      clustering: false,
      nodeId: 'local',
      leader: 'local',
      leaderEpoch: undefined,
      members: [{ id: 'local', address: '', zone: 'default', labels: {}, capacityBytes: 0, freeBytes: 0, healthy: true, joinedAt: this.#openedAt, leader: true, volumes: this.#catalog.volumes().length }]
    }
  }

  /**
   * Joins a cluster (admin): as `open({ cluster })` does, on a running instance. Refused with BUSY
   * while it is in one already.
   */
  async joinCluster (options: ClusterOptions): Promise<ClusterStatus> {
    this.#assertOpen()
    const denied = this.#gate.check('joinCluster', 'admin', undefined, 'cluster')
    if (denied !== undefined) await denied
    // Joins and leaves run one at a time, and close() waits for them.
    const run = this.#clusterChange.then(async () => {
      this.#assertOpen()
      if (this.#cluster !== undefined) throw new GalleonError('BUSY', `this instance is in a cluster already, as node ${this.#cluster.nodeId}; leave it first`)
      const manager = await ClusterManager.start(options, { storagePath: this.#storagePath, emit: (event, ...args) => { this.emit(event, ...(args as [never])) }, volumeCount: () => this.#catalog.volumes().length })
      let replication: ReplicationManager
      try {
        replication = await ReplicationManager.start(this.#bridge.replicationHost(), manager, options.coordinator, options.zone ?? 'default', options.replicaReplacementDelayMs === undefined ? {} : { replacementDelayMs: options.replicaReplacementDelayMs })
      } catch (err) {
        await manager.close().catch(() => {})
        throw err
      }
      if (this.#closed) {
        await replication.close()
        await manager.leave({ force: true }).catch(async () => { await manager.close() })
        throw new GalleonError('NOT_OPEN', 'the instance was closed while it joined the cluster; it has left again')
      }
      this.#cluster = manager
      this.#replication = replication
      this.#replicationMode = options.replication ?? 'synchronous'
      return manager
    })
    this.#clusterChange = run.catch(() => {})
    const manager = await run
    // Joined: a status that cannot be read now does not undo that.
    return await manager.status().catch(() => ({ clustering: true, nodeId: manager.nodeId, leader: undefined, leaderEpoch: undefined, members: manager.members.map((m) => ({ ...m, leader: false })) }))
  }

  /**
   * Leaves the cluster (admin). Volumes whose only copy is on this node keep it from leaving unless
   * `force`: they stay here, out of the cluster. Afterwards the instance is a single node again.
   */
  async leaveCluster (options: { force?: boolean } = {}): Promise<void> {
    this.#assertOpen()
    const denied = this.#gate.check('leaveCluster', 'admin', undefined, 'cluster')
    if (denied !== undefined) await denied
    const run = this.#clusterChange.then(async () => {
      this.#assertOpen()
      if (this.#cluster === undefined) throw new GalleonError('INVALID_ARGUMENT', 'this instance is not in a cluster (joinCluster, or open it with { cluster })')
      // Replicated volumes are handed off first (copies elsewhere, the primary role passed on);
      // with force they stay here, out of the cluster, and the cluster fails them over.
      if (options?.force !== true) await this.#replication?.handOff()
      const holds = this.#catalog.volumes().map((record) => `${record.namespace === DEFAULT_NAMESPACE ? '' : `${record.namespace}/`}${record.name}`)
      await this.#cluster.leave({ force: options?.force === true, holds })
      this.#cluster = undefined
      await this.#replication?.close()
      this.#replication = undefined
    })
    this.#clusterChange = run.catch(() => {})
    await run
  }

  /** Mounts of volumes and snapshots, and VolumeFiles (see MountManager). */
  get mounts (): MountManager { return this.#mounts }

  /** True once close() has begun. */
  get closed (): boolean { return this.#closed }

  /** Block size of this instance's storage, in bytes. */
  get blockSize (): number { return this.#engine.blockSize }

  /** Name of the block-store backend in use. */
  get backend (): string { return this.#store.name }

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
    if (this.#context.getStore()?.principal !== undefined) {
      const denied = this.#gate.check('close', 'admin', undefined, 'instance')
      if (denied !== undefined) await denied
    }
    if (this.#closing !== undefined) return await this.#closing
    this.#closing = (async () => {
      // Migrations still copying are cancelled: their volumes stay where they were.
      for (const migration of this.#liveMigrations.running.values()) migration.abort.abort(new GalleonError('CANCELLED', 'the instance is closing'))
      // Node moves not yet past the hand-over give their new copy up.
      for (const move of this.#clusterMigrations.nodeMoves.values()) move.abort.abort(new GalleonError('CANCELLED', 'the instance is closing'))
      await Promise.all([...this.#clusterMigrations.nodeMoves.values()].map(async (move) => await move.done))
      await Promise.all([...this.#liveMigrations.running.values()].map(async (migration) => await migration.done))
      // Unmount first, while the instance still serves I/O: writes acknowledged through a mount
      // (FUSE write-behind) reach the volumes before anything is refused.
      await mountControl(this.#mounts).close().catch((err: unknown) => {
        this.emit('io:error', { volumeId: '', volumeName: '', operation: 'write', code: errorCode(err), message: `unmounting at close: ${(err as Error)?.message ?? String(err)}` })
      })
      this.#closed = true
      this.#qos.close()
      try {
        await this.#clusterChange
        await this.#replication?.close()
        await this.#cluster?.close()
        this.#scheduler.stop()
        await this.#scheduler.idle()
        await this.#adminQueue.catch(() => {})
        await Promise.all([...this.#keyRotations.running.values()])
        for (const record of this.#volumes.destroyOrder(this.#catalog.volumes().filter((record) => record.type === VolumeType.Ephemeral))) {
          await this.#volumes.destroy(this.#catalog.resolve(record.id), true)
        }
        await this.#engine.close()
      } finally {
        await this.#store.close()
        await this.#metadata.close()
        await this.#ownedBackupTarget?.close()
        this.emit('instance:closed')
      }
    })()
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
      if (!known.has(key)) throw new GalleonError('INVALID_ARGUMENT', `unknown createVolume option ${JSON.stringify(key)}; allowed: ${[...known].join(', ')}`)
    }
    const name = options.name ?? `vol-${Math.random().toString(16).slice(2, 10)}`
    checkVolumeName(name)
    const namespace = options.namespace ?? this.#catalog.currentNamespace()
    checkNamespace(namespace)
    // A QoS policy of its own is set as setQoSPolicy sets one: that takes "admin" too.
    if (options.qos !== undefined) await this.#gate.check('createVolume', 'admin', { namespace, volume: name }, `volume:${namespace}/${name}`)
    return await this.#gate.guard('createVolume', 'volume:create', { namespace, volume: name }, `volume:${namespace}/${name}`, async () => await this.#volumes.createVolume(options, name, namespace))
  }

  /** Looks a volume up by id or name. */
  async getVolume (vol: VolumeRef): Promise<Volume> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    await this.#gate.check('getVolume', 'volume:read', object, label)
    return this.#volumeView(this.#catalog.resolve(vol))
  }

  /** All volumes the caller may read, oldest first; of one namespace when given. */
  async listVolumes (options: { namespace?: string } = {}): Promise<Volume[]> {
    this.#assertOpen()
    const namespace = options?.namespace
    if (namespace !== undefined) checkNamespace(namespace)
    return this.#catalog.volumes()
      .filter((record) => (namespace === undefined || namespaceOf(record) === namespace) && this.#gate.allowed('volume:read', this.#gate.volumeObject(record).object))
      .map((record) => this.#volumeView(record)).sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.name.localeCompare(b.name))
  }

  /**
   * Deletes a volume and frees its blocks, after its in-flight I/O finishes. A volume whose storage
   * class has reclaim policy `Retain` is kept unless `force` is set.
   */
  async deleteVolume (vol: VolumeRef, options: { force?: boolean } = {}): Promise<void> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    await this.#gate.guard('deleteVolume', 'volume:delete', object, label, async () => { await this.#volumes.deleteVolume(vol, options) }, options?.force === true ? { force: true } : undefined)
  }

  /** Grows a volume online; the new space reads as zeros. Shrinking is refused. */
  async expandVolume (vol: VolumeRef, newSizeBytes: number | string): Promise<Volume> {
    this.#assertOpen()
    const sizeBytes = parseSize(newSizeBytes)
    this.#checkVolumeSize(sizeBytes)
    const { object, label } = this.#gate.refObject(vol)
    return await this.#gate.guard('expandVolume', 'volume:write', object, label, async () => {
      const record = this.#catalog.resolve(vol)
      if (record.replication !== undefined) return await this.#volumes.expandReplicated(record, sizeBytes)
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
    const record = this.#catalog.resolve(vol)
    const volume = this.#volumeBlocks(record)
    const live = this.#engine.allocatedBlocks(volume)
    const held = this.#engine.heldBlocks(volume)
    const blockSize = this.#engine.blockSize
    return {
      allocatedBytes: (live + held) * blockSize,
      allocatedBlocks: live + held,
      liveBytes: live * blockSize,
      snapshotBytes: held * blockSize,
      sizeBytes: record.sizeBytes
    }
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
    return await this.#gate.guard('createStorageClass', 'admin', undefined, `storage-class:${storageClass.name}`, async () => await this.#createStorageClass(storageClass))
  }

  async #createStorageClass (storageClass: StorageClass): Promise<StorageClass> {
    if (this.#catalog.storageClass(storageClass.name) !== undefined) {
      throw new GalleonError('STORAGE_CLASS_EXISTS', `a storage class named ${JSON.stringify(storageClass.name)} already exists; pick another name or delete it first`)
    }
    const pool = storageClass.parameters.pool
    if (pool !== undefined && this.#catalog.pool(pool) === undefined) {
      throw new GalleonError('POOL_NOT_FOUND', `storage class ${storageClass.name} names pool ${JSON.stringify(pool)}, which does not exist; create the pool first with createPool() (listPools() shows the existing ones)`)
    }
    await this.#catalog.putStorageClass(storageClass)
    this.emit('storage-class:created', structuredClone(storageClass))
    return structuredClone(storageClass)
  }

  /** Deletes a custom storage class that no volume uses. */
  async deleteStorageClass (name: string): Promise<void> {
    this.#assertOpen()
    await this.#gate.guard('deleteStorageClass', 'admin', undefined, `storage-class:${String(name)}`, async () => { await this.#deleteStorageClass(name) })
  }

  async #deleteStorageClass (name: string): Promise<void> {
    const storageClass = await this.getStorageClass(name)
    if (storageClass.builtIn) throw new GalleonError('INVALID_ARGUMENT', `storage class ${name} is built in and cannot be deleted`)
    const users = this.#catalog.volumes().filter((record) => record.storageClass === name)
    if (users.length > 0) {
      throw new GalleonError('BUSY', `storage class ${name} is used by ${users.length} volume(s) (${users.slice(0, 3).map((r) => r.name).join(', ')}); delete them first`)
    }
    await this.#catalog.deleteStorageClass(name)
    this.emit('storage-class:deleted', storageClass)
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
      if (!['storageClass', 'pool', 'node'].includes(key)) throw new GalleonError('INVALID_ARGUMENT', `unknown migrateVolume option ${JSON.stringify(key)}; allowed: storageClass, pool, node`)
    }
    if (control === null || typeof control !== 'object') throw new GalleonError('INVALID_ARGUMENT', `migrateVolume()'s third argument is { signal?, onProgress? }, got ${describe(control)}`)
    if (control.signal !== undefined && !(control.signal instanceof AbortSignal)) throw new GalleonError('INVALID_ARGUMENT', `signal must be an AbortSignal, got ${describe(control.signal)}`)
    if (control.onProgress !== undefined && typeof control.onProgress !== 'function') throw new GalleonError('INVALID_ARGUMENT', `onProgress must be a function, got ${describe(control.onProgress)}`)
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
    return await this.#gate.guard('createPool', 'admin', undefined, `pool:${String(name)}`, async () => {
      const pool = await this.#pools.create(spec)
      this.emit('pool:created', pool)
      return this.#poolStatus(pool)
    })
  }

  /** One pool with its accounting (provisioned, allocated and free bytes, volumes); POOL_NOT_FOUND otherwise. */
  async getPool (name: string): Promise<StoragePoolStatus> {
    this.#assertOpen()
    return this.#poolStatus(this.#pools.get(name))
  }

  /** Every pool with its accounting, by name. */
  async listPools (): Promise<StoragePoolStatus[]> {
    this.#assertOpen()
    return this.#pools.list().map((pool) => this.#poolStatus(pool))
  }

  /**
   * Changes a pool's capacity, overcommit ratio, description or labels. A limit below what its
   * volumes already provision is refused with BUSY. Emits `pool:updated`.
   */
  async updatePool (name: string, changes: UpdatePoolOptions): Promise<StoragePoolStatus> {
    this.#assertOpen()
    return await this.#gate.guard('updatePool', 'admin', undefined, `pool:${String(name)}`, async () => {
      const pool = await this.#pools.update(name, changes)
      this.emit('pool:updated', pool)
      return this.#poolStatus(pool)
    })
  }

  /** Deletes a pool; BUSY while volumes are in it or storage classes name it. Emits `pool:deleted`. */
  async deletePool (name: string): Promise<void> {
    this.#assertOpen()
    await this.#gate.guard('deletePool', 'admin', undefined, `pool:${String(name)}`, async () => {
      const pool = await this.#pools.delete(name)
      this.emit('pool:deleted', structuredClone(pool))
    })
  }

  #poolStatus (pool: StoragePool): StoragePoolStatus {
    return this.#pools.status(pool, (record: VolumeRecord) => {
      const volume = this.#volumeBlocks(record)
      return (this.#engine.allocatedBlocks(volume) + this.#engine.heldBlocks(volume)) * this.#engine.blockSize
    })
  }

  /**
   * Where a pool's volume may go in a cluster: the class's rules narrowed to the pool's nodes. The
   * volume's first copy is made here, so this node must be one of them. Outside a cluster the
   * pool's nodes do not apply (there is one node).
   */
  #poolPlacement (pool: StoragePool, placement: Omit<PoolPlacement, 'nodes'>): PoolPlacement {
    const narrowed = poolPlacement(pool, placement)
    const cluster = this.#cluster
    if (cluster !== undefined && !poolAdmits(pool, { id: cluster.nodeId, zone: cluster.zone, labels: cluster.labels })) {
      const admitted = cluster.members.filter((m) => m.healthy && poolAdmits(pool, m)).map((m) => m.id)
      throw new GalleonError('INVALID_ARGUMENT', `this node (${cluster.nodeId}) is not in pool ${pool.name}${pool.nodes.length > 0 ? ` (nodes ${pool.nodes.join(', ')})` : ''}, and a volume's first copy is made on the node that creates it; create the volume on ${admitted.length > 0 ? `one of ${admitted.join(', ')}` : 'a node of the pool'}`)
    }
    return narrowed
  }

  // ---------------------------------------------------------------- I/O

  /**
   * Writes one block. Shorter data is zero-padded to the block size. Resolves when the write
   * concern is met: `WriteAcknowledged` (default) once the block store has applied it, `WriteDurable` once synced.
   */
  async writeBlock (vol: VolumeRef, blockIndex: number, data: Uint8Array, concern: WriteConcern | `${WriteConcern}` = WriteConcern.WriteAcknowledged): Promise<void> {
    this.#assertOpen()
    const denied = this.#gate.refCheck('writeBlock', 'volume:write', vol)
    if (denied !== undefined) await denied
    const record = writable(this.#catalog, vol)
    assertBytes(data, 'data')
    const checked = this.#checkConcern(concern)
    if (record.replication !== undefined && this.#replication !== undefined) {
      if (this.#replication.forwards(record.id)) {
        await this.#bridge.forward(record, { op: 'writeBlock', index: blockIndex, concern: checked }, data)
        return
      }
      this.#bridge.assertCopyHeld(record)
      this.#replication.checkConcern(record.id, checked)
    }
    const volume = this.#ioVolumeOf(record)
    const arrivedAt = this.#qos.now()
    // Short data is zero-padded: the whole block is stored, so the whole block is charged.
    const admitted = this.#qos.admit(record.id, 'write', this.#engine.blockSize)
    const held = typeof admitted === 'boolean' ? admitted : await admitted
    try {
      await this.#engine.writeBlock(volume, blockIndex, data, checked)
    } catch (err) {
      if (this.#bridge.handedOver(record, err)) { await this.#bridge.forward(record, { op: 'writeBlock', index: blockIndex, concern: checked }, data); return }
      throw this.#ioFailed(record, 'write', err)
    } finally {
      if (held) this.#qos.release()
      this.#qos.completed(record.id, 'write', arrivedAt)
    }
  }

  /**
   * Reads one block of a volume, or of a snapshot (`{ volume, snapshot }`): always `blockSize`
   * bytes; never-written blocks read as zeros.
   */
  async readBlock (source: ReadSource, blockIndex: number): Promise<Uint8Array> {
    this.#assertOpen()
    const denied = this.#gate.refCheck('readBlock', isSnapshotRef(source) ? 'snapshot:read' : 'volume:read', source)
    if (denied !== undefined) await denied
    const { record, snapshot } = readSource(this.#catalog, source)
    if (this.#replication?.forwards(record.id) === true) {
      return (await this.#bridge.forward(record, { op: 'readBlock', index: blockIndex, ...(snapshot === undefined ? {} : { readSnapshot: snapshot.id }) })).payload ?? new Uint8Array(0)
    }
    this.#bridge.assertCopyHeld(record)
    const unpin = snapshot === undefined ? undefined : this.#snapshots.pinSnapshot(snapshot)
    const arrivedAt = this.#qos.now()
    const admitted = this.#qos.admit(record.id, 'read', this.#engine.blockSize)
    const held = typeof admitted === 'boolean' ? admitted : await admitted
    try {
      return await this.#engine.readBlock(this.#ioVolumeOf(record), blockIndex, viewOf(snapshot))
    } catch (err) {
      throw this.#ioFailed(record, 'read', err)
    } finally {
      unpin?.()
      if (held) this.#qos.release()
      this.#qos.completed(record.id, 'read', arrivedAt)
    }
  }

  /** Writes bytes at any offset (read-modify-write at partial blocks); atomic as a whole. */
  async write (vol: VolumeRef, offset: number, data: Uint8Array, concern: WriteConcern | `${WriteConcern}` = WriteConcern.WriteAcknowledged): Promise<void> {
    this.#assertOpen()
    const denied = this.#gate.refCheck('write', 'volume:write', vol)
    if (denied !== undefined) await denied
    const record = writable(this.#catalog, vol)
    assertBytes(data, 'data')
    const checked = this.#checkConcern(concern)
    if (record.replication !== undefined && this.#replication !== undefined) {
      if (this.#replication.forwards(record.id)) {
        await this.#bridge.forward(record, { op: 'write', offset, concern: checked }, data)
        return
      }
      this.#bridge.assertCopyHeld(record)
      this.#replication.checkConcern(record.id, checked)
    }
    const volume = this.#ioVolumeOf(record)
    const arrivedAt = this.#qos.now()
    const admitted = this.#qos.admit(record.id, 'write', data.byteLength)
    const held = typeof admitted === 'boolean' ? admitted : await admitted
    try {
      await this.#engine.write(volume, offset, data, checked)
    } catch (err) {
      if (this.#bridge.handedOver(record, err)) { await this.#bridge.forward(record, { op: 'write', offset, concern: checked }, data); return }
      throw this.#ioFailed(record, 'write', err)
    } finally {
      if (held) this.#qos.release()
      this.#qos.completed(record.id, 'write', arrivedAt)
    }
  }

  /** Reads `length` bytes at `offset` of a volume, or of a snapshot (`{ volume, snapshot }`). */
  async read (source: ReadSource, offset: number, length: number): Promise<Uint8Array> {
    this.#assertOpen()
    const denied = this.#gate.refCheck('read', isSnapshotRef(source) ? 'snapshot:read' : 'volume:read', source)
    if (denied !== undefined) await denied
    const { record, snapshot } = readSource(this.#catalog, source)
    if (this.#replication?.forwards(record.id) === true) {
      return (await this.#bridge.forward(record, { op: 'read', offset, length, ...(snapshot === undefined ? {} : { readSnapshot: snapshot.id }) })).payload ?? new Uint8Array(0)
    }
    this.#bridge.assertCopyHeld(record)
    const unpin = snapshot === undefined ? undefined : this.#snapshots.pinSnapshot(snapshot)
    const arrivedAt = this.#qos.now()
    const admitted = this.#qos.admit(record.id, 'read', typeof length === 'number' && length > 0 ? length : 0)
    const held = typeof admitted === 'boolean' ? admitted : await admitted
    try {
      return await this.#engine.read(this.#ioVolumeOf(record), offset, length, viewOf(snapshot))
    } catch (err) {
      throw this.#ioFailed(record, 'read', err)
    } finally {
      unpin?.()
      if (held) this.#qos.release()
      this.#qos.completed(record.id, 'read', arrivedAt)
    }
  }

  /** Makes every write acknowledged so far durable (writes of all volumes share the sync). */
  async flush (vol?: VolumeRef): Promise<void> {
    this.#assertOpen()
    if (vol !== undefined) {
      const denied = this.#gate.refCheck('flush', 'volume:write', vol)
      if (denied !== undefined) await denied
    }
    const record = vol === undefined ? undefined : this.#catalog.resolve(vol)
    if (record !== undefined && this.#replication?.forwards(record.id) === true) {
      await this.#bridge.forward(record, { op: 'flush' })
      return
    }
    try {
      await this.#engine.flush()
      // Synchronous replication: a flush of a replicated volume also waits for its in-sync copies.
      if (record?.replication !== undefined && this.#replicationMode === 'synchronous') await this.#replication?.replicated(record.id)
    } catch (err) { throw record === undefined ? err : this.#ioFailed(record, 'flush', err) }
  }

  /** Discards a byte range: whole blocks are freed and read as zeros, partial edges are zeroed. */
  async trim (vol: VolumeRef, offset: number, length: number): Promise<void> {
    this.#assertOpen()
    const denied = this.#gate.refCheck('trim', 'volume:write', vol)
    if (denied !== undefined) await denied
    const record = writable(this.#catalog, vol)
    if (this.#replication?.forwards(record.id) === true) {
      await this.#bridge.forward(record, { op: 'trim', offset, length })
      return
    }
    this.#bridge.assertCopyHeld(record)
    const arrivedAt = this.#qos.now()
    // A trim costs an operation, not bandwidth: it frees blocks, it does not move their bytes.
    const admitted = this.#qos.admit(record.id, 'write', 0)
    const held = typeof admitted === 'boolean' ? admitted : await admitted
    try {
      await this.#engine.trim(this.#ioVolumeOf(record), offset, length, WriteConcern.WriteAcknowledged)
    } catch (err) {
      if (this.#bridge.handedOver(record, err)) { await this.#bridge.forward(record, { op: 'trim', offset, length }); return }
      throw this.#ioFailed(record, 'trim', err)
    } finally {
      if (held) this.#qos.release()
      this.#qos.completed(record.id, 'write', arrivedAt)
    }
  }

  /** Reads and verifies every allocated block of a volume; reports (and emits) each bad block. */
  async scrub (vol: VolumeRef): Promise<ScrubReport> {
    this.#assertOpen()
    const denied = this.#gate.refCheck('scrub', 'volume:read', vol)
    if (denied !== undefined) await denied
    const record = this.#catalog.resolve(vol)
    const { checked, bad } = await this.#engine.scrub(this.#ioVolume(record))
    this.emit('scrub:completed', { volumeId: record.id, blocksChecked: checked, badBlocks: bad.length })
    return { volumeId: record.id, blocksChecked: checked, badBlocks: bad.map(({ index, gen, code, message }) => ({ index, generation: gen, code, message })) }
  }

  // ---------------------------------------------------------------- QoS

  /**
   * Sets a volume's own QoS policy (limits, guarantees, bursting, weight; see QoSPolicy), which
   * replaces its storage class's while set. Takes effect at once, for operations already waiting
   * too; persisted. `null` removes the volume's own policy (as clearQoSPolicy does).
   */
  async setQoSPolicy (vol: VolumeRef, policy: QoSPolicy | null): Promise<{ policy?: QoSPolicy, source: QoSPolicySource }> {
    this.#assertOpen()
    if (policy === undefined) throw new GalleonError('INVALID_ARGUMENT', 'setQoSPolicy() needs a policy object such as { limits: { iops: 1000 } }, or null to remove the volume\'s own policy')
    const parsed = policy === null ? undefined : parseQoSPolicy(policy)
    const { object, label } = this.#gate.refObject(vol)
    // Limits bound what a tenant may take from the node: changing them is an admin's job.
    return await this.#gate.guard(policy === null ? 'clearQoSPolicy' : 'setQoSPolicy', 'admin', object, label, async () => await this.#admin(async () => {
      const record = this.#catalog.resolve(vol)
      if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
      if (record.replication !== undefined) {
        // Recorded in the cluster's record of the volume, which every node holding a copy applies.
        const replication = this.#replication
        if (replication === undefined) throw new GalleonError('BACKEND_UNAVAILABLE', `volume ${record.name} is replicated, but this instance is not in a cluster now; join it to change the volume's QoS policy`)
        await replication.update(record.id, (r) => ({ ...r, spec: { ...withoutQoS(r.spec), ...(parsed === undefined ? {} : { qos: parsed }) } }))
      }
      const updated = await this.#catalog.updateVolume(record.id, { qos: parsed })
      const effective = this.#applyQoS(updated)
      this.emit('qos:policy-changed', { volumeId: record.id, volumeName: record.name, ...effective })
      return effective
    }))
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
    return this.#effectiveQoS(this.#catalog.resolve(vol))
  }

  #effectiveQoS (record: VolumeRecord): { policy?: QoSPolicy, source: QoSPolicySource } {
    if (record.qos !== undefined) return { policy: structuredClone(record.qos), source: 'volume' }
    const storageClass = this.#catalog.storageClass(record.storageClass)
    const fromClass = storageClass === undefined ? undefined : qosFromParameters(storageClass.parameters)
    return fromClass === undefined ? { source: 'none' } : { policy: fromClass, source: 'storage-class' }
  }

  /** Hands a volume's policy in force to the I/O path; returns it. */
  #applyQoS (record: VolumeRecord): { policy?: QoSPolicy, source: QoSPolicySource } {
    const effective = this.#effectiveQoS(record)
    this.#qos.setPolicy(record.id, record.name, isEmptyPolicy(effective.policy) ? undefined : effective.policy, effective.source)
    return effective
  }

  // ---------------------------------------------------------------- metrics

  /** I/O statistics of a volume over the sliding window, plus lifetime counters. */
  async getVolumeMetrics (vol: VolumeRef): Promise<VolumeMetrics> {
    this.#assertOpen()
    const { object, label } = this.#gate.refObject(vol)
    await this.#gate.check('getVolumeMetrics', 'volume:read', object, label)
    const record = this.#catalog.resolve(vol)
    const volume = this.#metricsVolume(record)
    if (volume === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
    const snapshot = volume.metrics.snapshot()
    return { volumeId: record.id, volumeName: record.name, ...snapshot, qos: this.#qos.metrics(record.id) }
  }

  /** All metrics in the Prometheus text exposition format (version 0.0.4). */
  async metricsText (): Promise<string> {
    this.#assertOpen()
    await this.#gate.check('metricsText', 'admin', undefined, 'metrics')
    const store = await this.getStorageStats()
    return renderPrometheus({
      volumes: this.#catalog.volumes().flatMap((record) => {
        const volume = this.#metricsVolume(record)
        if (volume === undefined) return []
        return [{
          id: record.id,
          name: record.name,
          metrics: volume.metrics.snapshot(),
          sizeBytes: record.sizeBytes,
          usedBytes: this.#engine.allocatedBlocks(volume) * this.#engine.blockSize
        }]
      }),
      store,
      pools: this.#pools.list().map((pool) => this.#poolStatus(pool))
    }) + this.#bridge.replicationMetrics() + renderQoSMetrics(this.#catalog.volumes().map((record) => ({ id: record.id, name: record.name, qos: this.#qos.metrics(record.id) })))
  }

  /**
   * The engine state whose metrics a volume shows, or undefined for a volume being deleted whose
   * blocks are gone already: attaching it again (as #volumeBlocks would) left a deleted volume in
   * the engine for good.
   */
  #metricsVolume (record: VolumeRecord): VolumeBlocks | undefined {
    if (record.state !== VolumeState.Deleting) return this.#volumeBlocks(record)
    return this.#engine.volume(record.storageId) ?? this.#retired.get(record.storageId)
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
    const size = snapshot?.sizeBytes ?? record.sizeBytes
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new GalleonError('INVALID_ARGUMENT', `offset and length must be non-negative integers, got ${describe(offset)} and ${describe(length)}`)
    }
    if (offset + length > size) throw new GalleonError('OUT_OF_RANGE', `range ${offset}..${offset + length} goes past the end (${size} bytes)`)
    if (length === 0) return []
    const blockSize = this.#engine.blockSize
    const runs = this.#engine.allocationRuns(this.#ioVolume(record), Math.floor(offset / blockSize), Math.floor((offset + length - 1) / blockSize), snapshot?.gen ?? LIVE)
    return runs.map(([first, count, allocated]) => {
      const start = Math.max(offset, first * blockSize)
      const end = Math.min(offset + length, (first + count) * blockSize)
      return { offset: start, length: end - start, allocated }
    })
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
    const record = this.#catalog.resolve(vol)
    const volume = this.#volumeBlocks(record)
    const from = options?.from === undefined ? undefined : this.#catalog.resolveSnapshot(record, options.from)
    const to = options?.to === undefined ? undefined : this.#catalog.resolveSnapshot(record, options.to)
    if (from !== undefined && to !== undefined && to.gen < from.gen) {
      throw new GalleonError('INVALID_ARGUMENT', `snapshot ${to.name} is older than ${from.name}; pass the older one as from`)
    }
    if (from === undefined) return this.#engine.allocatedAt(volume, to?.gen ?? LIVE)
    return this.#engine.changedBlocks(volume, from.gen, to?.gen ?? LIVE)
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

  /**
   * The backup `backupId`, for a call needing `verb` on it. To a principal who may not `verb` the
   * backups of every namespace, an id that does not exist is denied like one it may not see, so the
   * answer does not tell which ids exist.
   */
  async #findBackup (action: string, verb: Verb, backupId: string, options: { target?: BackupTargetRef }): Promise<Backup> {
    try {
      return await this.#gate.nested(async () => await this.#backups.get(backupId, options))
    } catch (err) {
      const everywhere = { namespace: '*', volume: '*' }
      if (errorCode(err) === 'BACKUP_NOT_FOUND') await this.#gate.check(action, verb, everywhere, `backup:${String(backupId)}`)
      throw err
    }
  }

  /** A backup's source volume as an access object (its namespace and name at backup time). */
  #backupObject (backup: Backup): AccessObject {
    return { namespace: backup.volumeNamespace, volume: backup.volumeName }
  }

  /** Backups on a target, oldest first; of one volume (by id, or by name once the volume is gone) when given. */
  async listBackups (vol?: VolumeRef, options: { target?: BackupTargetRef } = {}): Promise<Backup[]> {
    this.#assertOpen()
    await this.#gate.checkTarget('listBackups', options)
    return (await this.#gate.nested(async () => await this.#backups.list(vol, options))).filter((backup) => this.#gate.allowed('backup:read', this.#backupObject(backup)))
  }

  /** One backup by id. */
  async getBackup (backupId: string, options: { target?: BackupTargetRef } = {}): Promise<Backup> {
    this.#assertOpen()
    await this.#gate.checkTarget('getBackup', options)
    const backup = await this.#findBackup('getBackup', 'backup:read', backupId, options)
    await this.#gate.check('getBackup', 'backup:read', this.#backupObject(backup), `backup:${backup.id}`)
    return backup
  }

  /** Re-reads every chunk of a backup and of the backups it builds on, and checks each against its checksum. */
  async verifyBackup (backupId: string, options: { target?: BackupTargetRef } = {}): Promise<BackupVerification> {
    this.#assertOpen()
    await this.#gate.checkTarget('verifyBackup', options)
    const backup = await this.#findBackup('verifyBackup', 'backup:read', backupId, options)
    await this.#gate.check('verifyBackup', 'backup:read', this.#backupObject(backup), `backup:${backup.id}`)
    return await this.#backups.verify(backupId, options)
  }

  /**
   * Deletes a backup and every chunk no remaining backup references. A backup that later ones build
   * on is kept unless `force`, which deletes those too.
   */
  async deleteBackup (backupId: string, options: DeleteBackupOptions = {}): Promise<{ deletedBackups: string[], deletedChunks: number }> {
    this.#assertOpen()
    await this.#gate.checkTarget('deleteBackup', options)
    const backup = await this.#findBackup('deleteBackup', 'backup:delete', backupId, options)
    return await this.#gate.guard('deleteBackup', 'backup:delete', this.#backupObject(backup), `backup:${backup.id}`, async () => await this.#backups.delete(backupId, options), options?.force === true ? { force: true } : undefined)
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
    const backup = await this.#findBackup('restoreBackup', 'backup:restore', backupId, options)
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
    return await this.#gate.guard('restoreBackup', 'backup:restore', this.#backupObject(backup), `backup:${backup.id}`, async () => await this.#backups.restore(backupId, options), { into })
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
    const record = this.#catalog.resolve(vol)
    const status = this.#replication?.status(record.id)
    if (status !== undefined) return status
    const self = this.#cluster?.nodeId ?? 'local'
    return { volumeId: record.id, role: 'primary', primary: self, epoch: undefined, nodes: [self], inSync: [self], replicas: record.replicas, degraded: record.replicas > 1, streamBufferBytes: 0, links: [] }
  }

  /** A volume as callers see it: a replicated one short of in-sync copies is Degraded. */
  #volumeView (record: VolumeRecord): Volume {
    const volume = toVolume(record)
    if (record.replication === undefined || volume.state !== VolumeState.Available) return volume
    const status = this.#replication?.status(record.id)
    return status === undefined || status.degraded ? { ...volume, state: VolumeState.Degraded } : volume
  }

  #recordById (id: string): VolumeRecord | undefined {
    try {
      return this.#catalog.resolve(id)
    } catch {
      return undefined
    }
  }

  // ---------------------------------------------------------------- internals

  /** What the parts of the facade (src/facade) use of this instance: its components and state, and the steps they share. */
  #facadeHost (): FacadeHost {
    const self = this
    return {
      catalog: this.#catalog,
      engine: this.#engine,
      pools: this.#pools,
      get keys () { return self.#keys },
      get mounts () { return self.#mounts },
      get qos () { return self.#qos },
      get replication () { return self.#replication },
      get cluster () { return self.#cluster },
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
      volumeBlocks: (record) => this.#volumeBlocks(record),
      ioVolume: (vol) => this.#ioVolume(vol),
      ioVolumeOf: (record) => this.#ioVolumeOf(record),
      recordById: (id) => this.#recordById(id),
      volumeView: (record) => this.#volumeView(record),
      applyQoS: (record) => this.#applyQoS(record),
      ioFailed: (record, operation, err) => this.#ioFailed(record, operation, err),
      checkVolumeSize: (sizeBytes) => { this.#checkVolumeSize(sizeBytes) },
      poolPlacement: (pool, placement) => this.#poolPlacement(pool, placement),
      forward: (record, request, payload) => this.#bridge.forward(record, request, payload),
      newVolume: (fields, link) => this.#volumes.newVolume(fields, link),
      destroy: (record, flattenClones) => this.#volumes.destroy(record, flattenClones),
      releaseSource: (source) => this.#volumes.releaseSource(source),
      takeSnapshot: (record, name, implicit, id, sizeBytes) => this.#snapshots.takeSnapshot(record, name, implicit, id, sizeBytes),
      dropSnapshot: (record, snapshot) => this.#snapshots.dropSnapshot(record, snapshot),
      toSnapshot: (record) => this.#snapshots.toSnapshot(record),
      migrateVolume: (vol, target, control, layout) => this.#liveMigrations.migrateVolume(vol, target, control, layout)
    }
  }

  #assertOpen (): void {
    if (this.#closed) throw new GalleonError('NOT_OPEN', 'this GalleonFS instance is closed; open a new one with GalleonFS.open()')
  }

  #volumeBlocks (record: VolumeRecord): VolumeBlocks {
    return this.#engine.volume(record.storageId) ?? this.#retired.get(record.storageId) ?? this.#engine.attach(record.storageId, record.sizeBytes)
  }

  #ioVolume (vol: VolumeRef | VolumeRecord): VolumeBlocks {
    return this.#ioVolumeOf(this.#catalog.resolve(vol))
  }

  /** `#ioVolume` of a record resolved in the same synchronous stretch (the I/O path resolves once). */
  #ioVolumeOf (record: VolumeRecord): VolumeBlocks {
    if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
    if (record.revertTo !== undefined && !this.#reverting.has(record.id)) {
      const snapshot = this.#catalog.snapshotById(record.revertTo)
      const why = this.#revertFailures.get(record.id)
      throw new GalleonError('BUSY', `volume ${record.name} has an unfinished revert to snapshot ${snapshot?.name ?? record.revertTo}${why === undefined ? '' : ` (it failed: ${why})`}, so part of it may read as the snapshot and part not; call restoreSnapshot(${JSON.stringify(record.name)}, ${JSON.stringify(snapshot?.name ?? record.revertTo)}) again to finish it, revert to another snapshot, or delete the volume`)
    }
    return this.#volumeBlocks(record)
  }

  /** Reports failures that are not the caller's fault (I/O, corruption) as `io:error` events. */
  #ioFailed (record: VolumeRecord, operation: 'read' | 'write' | 'trim' | 'flush', err: unknown): unknown {
    const code = errorCode(err)
    if (code === 'IO_ERROR' || code === 'CORRUPTION' || code === 'CHECKSUM_MISMATCH') {
      this.emit('io:error', { volumeId: record.id, volumeName: record.name, operation, code, message: err instanceof Error ? err.message : String(err) })
    }
    return err
  }

  #checkConcern (concern: unknown): WriteConcern {
    if (typeof concern !== 'string' || !WRITE_CONCERNS.has(concern)) {
      throw new GalleonError('INVALID_ARGUMENT', `write concern must be one of ${[...WRITE_CONCERNS].join(', ')}, got ${describe(concern)}`)
    }
    return concern as WriteConcern
  }

  #checkVolumeSize (sizeBytes: number): void {
    const blockSize = this.#engine.blockSize
    if (sizeBytes === 0 || sizeBytes % blockSize !== 0) {
      const up = Math.max(blockSize, Math.ceil(sizeBytes / blockSize) * blockSize)
      throw new GalleonError('INVALID_ARGUMENT', `volume size must be a positive multiple of the block size (${blockSize} bytes), got ${sizeBytes}; try ${up}`)
    }
  }

  #onChecksumFailure (failure: { storageId: number, index: number, gen: number, reason: string, expected?: number, actual?: number }): void {
    const record = this.#catalog.volumes().find((candidate) => candidate.storageId === failure.storageId)
    this.emit('checksum:mismatch', {
      volumeId: record?.id ?? '',
      volumeName: record?.name ?? '',
      blockIndex: failure.index,
      generation: failure.gen,
      reason: failure.reason,
      expected: failure.expected,
      actual: failure.actual
    })
  }
}