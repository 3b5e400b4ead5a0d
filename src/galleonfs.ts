// The GalleonFS facade: composes the catalog, the engine and the drivers, owns lifecycle and events.

import { AsyncLocalStorage } from 'node:async_hooks'
import { EventEmitter } from 'eventemitter3'
import { AccessControl, checkPrincipal, parseAccessPolicy, type AccessObject, type AccessPolicy, type Principal, type Verb } from './access/access-control.js'
import { AuditLog, type AuditEntry, type AuditQuery, type AuditVerification } from './access/audit-log.js'
import { MountManager, mountControl, type MountTarget } from './mount/mount-manager.js'
import { GalleonError, assertBytes, describe, errorCode, type GalleonErrorCode } from './errors.js'
import type { BackupTarget, BlockStore, BlockStoreStats, KeyProvider } from './drivers.js'
import { KeyManager, type VolumeEncryption } from './crypto/key-manager.js'
import { InternalKeyProvider, PassphraseKeyProvider } from './crypto/keys.js'
import { BackupManager, type Backup, type BackupHooks, type BackupTargetRef, type BackupVerification, type CreateBackupOptions, type DeleteBackupOptions, type RestoreBackupOptions } from './backup/manager.js'
import { BackupScheduler, type BackupPolicy, type BackupPolicyOptions, type BackupPolicyRun } from './backup/policies.js'
import { BlockEngine, type VolumeBlocks, type View } from './engine/engine.js'
import { LIVE } from './engine/block-map.js'
import type { ReplicationHook } from './engine/journal.js'
import type { GalleonEvents } from './events.js'
import { ClusterManager, type ClusterOptions, type ClusterStatus } from './cluster/manager.js'
import { ReplicationManager, type ForwardedRequest, type ReplicationHost, type ReplicationStatus } from './replication/manager.js'
import type { VolumeSpec } from './replication/records.js'
import { randomUUID } from 'node:crypto'
import { renderPrometheus } from './metrics/prometheus.js'
import { assertWindowSeconds, type VolumeMetrics } from './metrics/recorder.js'
import { resolveDrivers, type OpenOptions } from './open-drivers.js'
import { parseSize } from './size.js'
import { QoSScheduler } from './qos/scheduler.js'
import { renderQoSMetrics } from './qos/prometheus.js'
import { isEmptyPolicy, parseQoSPolicy, qosFromParameters, type QoSPolicy, type QoSPolicySource } from './qos/policy.js'
import {
  AccessMode, VolumeState, VolumeType, WriteConcern,
  type CreateVolumeOptions, type ScrubReport, type Snapshot, type StorageClass, type Volume, type VolumeUsage
} from './types.js'
import { Catalog, DEFAULT_NAMESPACE, checkNamespace, checkVolumeName, namespaceOf, type MetadataDatabase, type MigrationRecord, type SnapshotRecord, type VolumeRecord } from './volumes/catalog.js'
import { copyLastDelta, copyUntilConverged, migrationCancelled, type MigrateControl, type MigrateVolumeOptions, type MigrationPhase, type MigrationProgressEvent } from './volumes/migration.js'
import {
  DEFAULT_STORAGE_CLASS, assertClassSupported, classPlacement, classReplicas, parseStorageClass
} from './volumes/storage-classes.js'
import { PoolManager, poolAdmits, poolPlacement, type CreatePoolOptions, type PoolPlacement, type StoragePool, type StoragePoolStatus, type UpdatePoolOptions } from './volumes/pools.js'

/** Anything that names a volume: its id, its name, or a Volume object. */
export type VolumeRef = string | Pick<Volume, 'id'>

/** A snapshot of a volume, each named by id or name (or a Snapshot object): a read-only view. */
export type SnapshotRef = { readonly volume: VolumeRef, readonly snapshot: string | Pick<Snapshot, 'id'> } | Pick<Snapshot, 'id' | 'volumeId'>

/** What reads accept: a volume (its live contents) or one of its snapshots. */
export type ReadSource = VolumeRef | SnapshotRef

/** What `cloneVolume` copies: a live volume (an implicit snapshot is taken) or a snapshot. */
export type CloneSource = VolumeRef | SnapshotRef

/** Who is calling: a principal (through `as()` / `runAs()`) or, when absent, the application itself. */
interface CallContext {
  readonly principal: Principal | undefined
  /** Inside a guarded call: calls it makes are part of it (not checked or audited again). */
  readonly nested: boolean
}

/** Event methods a principal's handle refuses. */
const EVENT_METHODS = new Set(['on', 'once', 'off', 'addListener', 'removeListener', 'removeAllListeners', 'emit', 'listeners', 'listenerCount', 'eventNames'])

const WRITE_CONCERNS = new Set<string>(Object.values(WriteConcern))
const VOLUME_TYPES = new Set<string>(Object.values(VolumeType))
const ACCESS_MODES = new Set<string>(Object.values(AccessMode))
/** How long the engine state of a migrated volume's old storage stays reachable after the switch-over (see #retired). */
const RETIRED_GRACE_MS = 60_000

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
  /** Reads in flight per snapshot id; deleting a snapshot waits for them. */
  readonly #snapshotReaders = new Map<string, { count: number, drained?: () => void }>()
  readonly #snapshotsGoing = new Set<string>()
  /** Volumes whose revert is running now (their I/O waits for it rather than being refused). */
  readonly #reverting = new Set<string>()
  /** Why the last revert of a volume failed, when it did. */
  readonly #revertFailures = new Map<string, string>()
  #keys!: KeyManager
  #access!: AccessControl
  #audit!: AuditLog
  #mounts!: MountManager
  readonly #context = new AsyncLocalStorage<CallContext>()
  /** Data-key rotations running in the background, by volume id. */
  readonly #rotations = new Map<string, Promise<void>>()
  /** Live migrations running, by volume id: how to cancel each and when it has ended. */
  readonly #migrations = new Map<string, { abort: AbortController, done: Promise<void>, finish: () => void }>()
  /**
   * Conversions of this node's copies of replicated volumes to the storage class their cluster
   * record names (another node migrated the volume), by volume id; and the last failure of each.
   */
  readonly #copyConversions = new Map<string, { storageClass: string, abort: AbortController }>()
  readonly #copyConversionErrors = new Map<string, { storageClass: string, code: string, message: string }>()
  /** Moves of this node's copies to other nodes (migrateVolume with `node`), by volume id: how to cancel each. */
  readonly #nodeMoves = new Map<string, { abort: AbortController, done: Promise<unknown> }>()
  /** Replicated volumes whose class change this node started and waits for. */
  readonly #reshaping = new Set<string>()
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

  private constructor (metadata: MetadataDatabase, store: BlockStore, catalog: Catalog, engine: BlockEngine, location: string) {
    super()
    this.#metadata = metadata
    this.#store = store
    this.#catalog = catalog
    this.#pools = new PoolManager(catalog)
    this.#engine = engine
    this.location = location
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
      catalog.currentNamespace = () => self.#context.getStore()?.principal?.namespace ?? DEFAULT_NAMESPACE
      instance.#mounts = new MountManager(mountDriver, instance.#mountHost())
      instance.#ownedBackupTarget = ownedBackupTarget
      instance.#backups = new BackupManager(instance, backupTarget, instance.#keys, () => clock.now(), metadata)
      instance.#scheduler = new BackupScheduler(instance, metadata, clock, options.clock === undefined, (fn) => self.#context.exit(fn))
      await instance.#recover()
      for (const record of catalog.volumes()) instance.#applyQoS(record)
      instance.#storagePath = options.storagePath
      if (options.cluster !== undefined) await instance.joinCluster(options.cluster)
      await instance.#backups.start()
      await instance.#scheduler.start()
      for (const record of catalog.volumes()) {
        if (instance.#keys.rotation(record.id) !== undefined) instance.#startRotation(record)
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
    const denied = this.#check('joinCluster', 'admin', undefined, 'cluster')
    if (denied !== undefined) await denied
    // Joins and leaves run one at a time, and close() waits for them.
    const run = this.#clusterChange.then(async () => {
      this.#assertOpen()
      if (this.#cluster !== undefined) throw new GalleonError('BUSY', `this instance is in a cluster already, as node ${this.#cluster.nodeId}; leave it first`)
      const manager = await ClusterManager.start(options, { storagePath: this.#storagePath, emit: (event, ...args) => { this.emit(event, ...(args as [never])) }, volumeCount: () => this.#catalog.volumes().length })
      let replication: ReplicationManager
      try {
        replication = await ReplicationManager.start(this.#replicationHost(), manager, options.coordinator, options.zone ?? 'default', options.replicaReplacementDelayMs === undefined ? {} : { replacementDelayMs: options.replicaReplacementDelayMs })
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
    const denied = this.#check('leaveCluster', 'admin', undefined, 'cluster')
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

  /** Recovery after open: rebuild block maps, finish interrupted deletes, drop ephemeral volumes. */
  async #recover (): Promise<void> {
    const records = this.#catalog.volumes()
    await this.#engine.recover(records.map((record) => {
      const source = record.source === undefined ? undefined : this.#catalog.snapshotById(record.source.snapshotId)
      const parent = source === undefined ? undefined : this.#catalog.resolve(source.volumeId)
      if (record.source !== undefined && (source === undefined || parent === undefined)) {
        throw new GalleonError('CORRUPTION', `clone ${record.name} reads from snapshot ${record.source.snapshotId}, which is missing from the metadata`)
      }
      return {
        storageId: record.storageId,
        sizeBytes: record.sizeBytes,
        snapshotGens: this.#catalog.snapshots(record.id).map((snapshot) => snapshot.gen),
        parent: source === undefined || parent === undefined ? undefined : { storageId: parent.storageId, gen: source.gen, sizeBytes: source.sizeBytes }
      }
    }))
    await this.#attachKeys(records)
    // Migrations a crash cut short before their switch-over: the destination storage (named by no
    // volume record) was removed above as an orphan, its staged keys by #attachKeys. The volume is
    // on its source, untouched.
    for (const migration of this.#catalog.migrations()) await this.#catalog.abandonMigration(migration.volumeId)
    for (const record of records) {
      // A revert cut short by a crash: finish it, so the volume reads as the snapshot, not as a mix.
      if (record.revertTo === undefined || record.state === VolumeState.Deleting) continue
      const snapshot = this.#catalog.snapshotById(record.revertTo)
      try {
        if (snapshot !== undefined) await this.#engine.revert(this.#volumeBlocks(record), { gen: snapshot.gen, sizeBytes: snapshot.sizeBytes })
        await this.#catalog.updateVolume(record.id, { revertTo: undefined })
      } catch (err) {
        // Leave the intent: the volume refuses I/O (see #ioVolume) until a revert succeeds, and the
        // rest of the instance opens.
        this.#revertFailures.set(record.id, err instanceof Error ? err.message : String(err))
      }
    }
    // Implicit snapshots whose clone was never recorded (a crash in cloneVolume) hold space for nobody.
    for (const record of this.#catalog.volumes()) {
      for (const snapshot of this.#catalog.snapshots(record.id)) {
        if (snapshot.implicit && this.#catalog.clonesOf(record.id, snapshot.id).length === 0) await this.#dropSnapshot(record, snapshot)
      }
    }
    for (const record of this.#destroyOrder(records.filter((record) => record.state === VolumeState.Deleting || record.type === VolumeType.Ephemeral))) {
      await this.#destroy(this.#catalog.resolve(record.id), true)
    }
    for (const record of this.#catalog.volumes()) {
      if (record.state !== VolumeState.Available) await this.#catalog.updateVolume(record.id, { state: VolumeState.Available })
    }
  }

  /**
   * Gives every encrypted volume its cipher (DEKs unwrapped; a volume whose keys cannot be loaded
   * refuses I/O saying why), forgets keys of volumes that are gone (a crash during a create or a
   * delete), and finishes a key-encryption-key rotation a crash interrupted.
   */
  async #attachKeys (records: readonly VolumeRecord[]): Promise<void> {
    const ids = new Set(records.map((record) => record.id))
    for (const volumeId of this.#keys.volumeIds()) if (!ids.has(volumeId)) await this.#keys.delete(volumeId)
    for (const record of records) {
      if (record.encrypted !== true) continue
      const volume = this.#volumeBlocks(record)
      volume.cipher = await this.#keys.attach(record.id, record.storageId)
    }
    // Keys still wrapped by a retired KEK (a KEK rotation cut short): re-wrap them now. Best effort:
    // when some key cannot be unwrapped at all, its volume reports why and nothing is re-wrapped.
    const unavailable = records.some((record) => this.#engine.volume(record.storageId)?.cipher?.unavailable !== undefined)
    if (!unavailable && await this.#keys.staleWraps().catch(() => false)) await this.#keys.rewrapAll(await this.#keys.provider()).catch(() => {})
  }

  /** Orders volumes to delete so that clones go before their sources (fewer copies to make). */
  #destroyOrder (records: VolumeRecord[]): VolumeRecord[] {
    const depth = (record: VolumeRecord): number => {
      let n = 0
      for (let at: VolumeRecord | undefined = record; at?.source !== undefined; n++) {
        at = this.#catalog.volumes().find((candidate) => candidate.id === at?.source?.volumeId)
      }
      return n
    }
    return [...records].sort((a, b) => depth(b) - depth(a))
  }

  /** Mounts of volumes and snapshots, and VolumeFiles (see MountManager). */
  get mounts (): MountManager { return this.#mounts }

  /** What the mount manager needs from the instance. */
  #mountHost (): ConstructorParameters<typeof MountManager>[1] {
    const verbOf = (ref: unknown, readOnly: boolean): Verb => isSnapshotRef(ref) ? 'snapshot:read' : readOnly ? 'volume:read' : 'volume:write'
    return {
      target: (ref) => this.#mountTarget(ref),
      guard: async (action, ref, readOnly, task) => {
        this.#assertOpen()
        const { object, label } = this.#refObject(ref)
        if (action === 'openVolumeFile') {
          const denied = this.#check(action, verbOf(ref, readOnly), object, label)
          if (denied !== undefined) await denied
          return await this.#nested(task)
        }
        return await this.#guard(action, verbOf(ref, readOnly), object, label, task, readOnly ? { readOnly: true } : undefined)
      },
      // As the caller, also inside its checked call (where nested calls are not checked again).
      visible: (namespace, volume) => {
        const principal = this.#context.getStore()?.principal
        return principal === undefined || this.#access.allows(principal, 'volume:read', { namespace, volume })
      },
      requireAdmin: async (action, what) => {
        const denied = this.#check(action, 'admin', undefined, what)
        if (denied !== undefined) await denied
      },
      requireWrite: async (action, ref) => {
        const context = this.#context.getStore()
        if (context?.principal === undefined) return
        const { object, label } = this.#refObject(ref)
        // Inside the guarded mount call: check as the caller, not as the (trusted) nested call.
        if (this.#access.allows(context.principal, 'volume:write', object)) return
        await this.#context.run({ principal: context.principal, nested: false }, async () => { await this.#check(action, 'volume:write', object, label) })
      },
      isSnapshotRef
    }
  }

  /**
   * A volume or snapshot for the mount manager. Its I/O runs as the caller resolving it (who was
   * checked when mounting or opening, like a file descriptor), not as whoever calls later.
   */
  #mountTarget (ref: unknown): MountTarget {
    this.#assertOpen()
    const { record, snapshot } = this.#readSource(ref)
    if (record.state === VolumeState.Deleting || this.#goingAway.has(record.id)) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
    if (snapshot !== undefined && this.#goingAway.has(snapshot.id)) throw new GalleonError('SNAPSHOT_NOT_FOUND', `snapshot ${snapshot.name} is being deleted`)
    if (snapshot === undefined && this.#reverting.has(record.id)) throw new GalleonError('BUSY', `volume ${record.name} is being reverted to a snapshot; mount or open it when that has finished`)
    const context = this.#context.getStore()
    const run = <T>(task: () => Promise<T>): Promise<T> => context === undefined ? task() : this.#context.run(context, task)
    const source: ReadSource = snapshot === undefined ? record.id : { volume: record.id, snapshot: snapshot.id }
    const initial = this.#volumeBlocks(record)
    // The volume's storage now: a migration moves it to new storage (which an expansion then grows).
    const blocks = (): VolumeBlocks => {
      let volume = initial
      while (volume.movedTo !== undefined) volume = volume.movedTo.volume
      return volume
    }
    const facts = (): Record<string, unknown> => {
      const current = this.#catalog.volumes().find((r) => r.id === record.id) ?? record
      return {
        volume: toVolume(current),
        ...(snapshot === undefined ? {} : { snapshot: this.#toSnapshot(snapshot) }),
        blockSize: this.#engine.blockSize,
        sizeBytes: snapshot?.sizeBytes ?? current.sizeBytes,
        encryption: this.#keys.describe(record.id, blocks().cipher)
      }
    }
    return {
      volumeId: record.id,
      volumeName: record.name,
      namespace: namespaceOf(record),
      ...(snapshot === undefined ? {} : { snapshotId: snapshot.id, snapshotName: snapshot.name }),
      accessModes: record.accessModes,
      classOptions: this.#catalog.storageClass(record.storageClass)?.mountOptions ?? [],
      size: () => snapshot?.sizeBytes ?? blocks().sizeBytes,
      // A snapshot never changes; a live volume whose reads go to another node (the primary of its
      // copies) changes unseen here.
      version: () => snapshot !== undefined ? 0 : this.#replication?.forwards(record.id) === true ? undefined : this.#engine.changes,
      io: {
        read: async (offset, length) => await run(async () => await this.read(source, offset, length)),
        write: async (offset, data, concern) => await run(async () => { await this.write(record.id, offset, data, concern) }),
        flush: async () => await run(async () => { await this.flush(record.id) })
      },
      readme: () => renderReadme(facts()),
      metadata: () => JSON.stringify(facts(), null, 2) + '\n'
    }
  }

  /** True once close() has begun. */
  get closed (): boolean { return this.#closed }

  /** Block size of this instance's storage, in bytes. */
  get blockSize (): number { return this.#engine.blockSize }

  /** Name of the block-store backend in use. */
  get backend (): string { return this.#store.name }

  /** Advanced: the replication hook the engine calls after each journal append. */
  setReplicationHook (hook: ReplicationHook | undefined): void {
    this.#assertApplication('setReplicationHook')
    this.#engine.replication = hook
  }

  /**
   * Flushes every acknowledged write, deletes ephemeral volumes, and closes the drivers.
   * Idempotent; further calls on the instance fail with NOT_OPEN.
   */
  async close (): Promise<void> {
    if (this.#context.getStore()?.principal !== undefined) {
      const denied = this.#check('close', 'admin', undefined, 'instance')
      if (denied !== undefined) await denied
    }
    if (this.#closing !== undefined) return await this.#closing
    this.#closing = (async () => {
      // Migrations still copying are cancelled: their volumes stay where they were.
      for (const migration of this.#migrations.values()) migration.abort.abort(new GalleonError('CANCELLED', 'the instance is closing'))
      // Node moves not yet past the hand-over give their new copy up.
      for (const move of this.#nodeMoves.values()) move.abort.abort(new GalleonError('CANCELLED', 'the instance is closing'))
      await Promise.all([...this.#nodeMoves.values()].map(async (move) => await move.done))
      await Promise.all([...this.#migrations.values()].map(async (migration) => await migration.done))
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
        await Promise.all([...this.#rotations.values()])
        for (const record of this.#destroyOrder(this.#catalog.volumes().filter((record) => record.type === VolumeType.Ephemeral))) {
          await this.#destroy(this.#catalog.resolve(record.id), true)
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
    if (options.qos !== undefined) await this.#check('createVolume', 'admin', { namespace, volume: name }, `volume:${namespace}/${name}`)
    return await this.#guard('createVolume', 'volume:create', { namespace, volume: name }, `volume:${namespace}/${name}`, async () => await this.#createVolume(options, name, namespace))
  }

  async #createVolume (options: CreateVolumeOptions, name: string, namespace: string): Promise<Volume> {
    const type = options.type ?? VolumeType.Persistent
    if (!VOLUME_TYPES.has(type)) throw new GalleonError('INVALID_ARGUMENT', `volume type must be one of ${[...VOLUME_TYPES].join(', ')}, got ${describe(type)}`)
    if (options.sizeBytes === undefined) throw new GalleonError('INVALID_ARGUMENT', 'createVolume() needs sizeBytes (bytes, or a string like "100M" or "1G")')
    const sizeBytes = parseSize(options.sizeBytes)
    this.#checkVolumeSize(sizeBytes)
    const className = options.storageClass ?? DEFAULT_STORAGE_CLASS
    if (typeof className !== 'string') throw new GalleonError('INVALID_ARGUMENT', `storageClass must be a class name, got ${describe(className)}`)
    const storageClass = this.#catalog.storageClass(className)
    if (storageClass === undefined) {
      throw new GalleonError('STORAGE_CLASS_NOT_FOUND', `no storage class ${JSON.stringify(className)}; listStorageClasses() shows the available ones`)
    }
    const replicas = options.replicas ?? classReplicas(storageClass)
    if (!Number.isSafeInteger(replicas) || replicas < 1 || replicas > 999) {
      throw new GalleonError('INVALID_ARGUMENT', `replicas must be a whole number from 1 to 999, got ${describe(replicas)}`)
    }
    const accessModes = options.accessModes ?? [AccessMode.ReadWriteOnce]
    if (!Array.isArray(accessModes) || accessModes.length === 0 || !accessModes.every((mode) => ACCESS_MODES.has(mode))) {
      throw new GalleonError('INVALID_ARGUMENT', `accessModes must be a non-empty list of ${[...ACCESS_MODES].join(', ')}, got ${describe(accessModes)}`)
    }
    const labels = checkLabels(options.labels ?? {})
    const qos = options.qos === undefined ? undefined : parseQoSPolicy(options.qos)
    assertClassSupported(storageClass, replicas, this.#replication !== undefined)
    const pool = this.#pools.choose(options.pool, storageClass)
    const placement = pool === undefined ? classPlacement(storageClass) : this.#poolPlacement(pool, classPlacement(storageClass))
    const encrypted = storageClass.parameters.encryption === 'true'
    // Open the key provider first: a missing master key or a failing KMS stops the create here.
    if (encrypted) await this.#keys.provider()

    const unreserve = this.#catalog.reserveName(name, namespace)
    let record: VolumeRecord
    // The pool's bytes are taken before anything is recorded, and held until the record counts.
    let release: (() => void) | undefined
    try {
      if (pool !== undefined) release = this.#pools.reserve(pool.name, sizeBytes, `volume ${name}`)
      record = await this.#newVolume({
        name,
        namespace,
        type: type as VolumeType,
        state: VolumeState.Available,
        sizeBytes,
        blockSize: this.#engine.blockSize,
        storageClass: storageClass.name,
        replicas,
        accessModes: [...new Set(accessModes)] as AccessMode[],
        labels,
        encrypted,
        ...(qos === undefined ? {} : { qos }),
        ...(pool === undefined ? {} : { pool: pool.name }),
        ...(replicas > 1 ? { replication: { epoch: 0, seq: 0 } } : {})
      })
    } finally {
      release?.()
      unreserve()
    }
    if (replicas > 1) {
      // Its copies on other nodes: placed, recorded in the coordinator, created and brought in sync.
      try {
        await (this.#replication as ReplicationManager).register(specOf(record), placement)
      } catch (err) {
        ;(this.#replication as ReplicationManager).forget(record.id)
        await this.#destroy(record, false).catch(() => {})
        throw err
      }
    }
    const volume = this.#volumeView(record)
    this.emit('volume:created', volume)
    return volume
  }

  /**
   * Records a new volume. Before the record is stored or visible, the volume is attached to the
   * engine with its keys (when encrypted) and, for a clone, its link to the source: no I/O can
   * reach it half set up. On failure nothing of it remains.
   */
  async #newVolume (fields: Parameters<Catalog['createVolume']>[0], link?: { source: VolumeBlocks, gen: number, sizeBytes: number }): Promise<VolumeRecord> {
    let prepared: { id: string, storageId: number } | undefined
    try {
      return await this.#catalog.createVolume(fields, async (record) => {
        const cipher = fields.encrypted === true ? await this.#keys.create(record.id, record.storageId) : undefined
        prepared = { id: record.id, storageId: record.storageId }
        this.#applyQoS(record)
        const blocks = this.#engine.attach(record.storageId, record.sizeBytes)
        blocks.cipher = cipher
        if (link !== undefined) this.#engine.linkClone(blocks, link.source, link.gen, link.sizeBytes)
      })
    } catch (err) {
      if (prepared !== undefined) {
        this.#engine.forget(prepared.storageId)
        this.#qos.forget(prepared.id)
        if (this.#keys.has(prepared.id)) await this.#keys.delete(prepared.id).catch(() => {})
      }
      throw err
    }
  }

  /** Looks a volume up by id or name. */
  async getVolume (vol: VolumeRef): Promise<Volume> {
    this.#assertOpen()
    const { object, label } = this.#refObject(vol)
    await this.#check('getVolume', 'volume:read', object, label)
    return this.#volumeView(this.#catalog.resolve(vol))
  }

  /** All volumes the caller may read, oldest first; of one namespace when given. */
  async listVolumes (options: { namespace?: string } = {}): Promise<Volume[]> {
    this.#assertOpen()
    const namespace = options?.namespace
    if (namespace !== undefined) checkNamespace(namespace)
    return this.#catalog.volumes()
      .filter((record) => (namespace === undefined || namespaceOf(record) === namespace) && this.#allowed('volume:read', this.#volumeObject(record).object))
      .map((record) => this.#volumeView(record)).sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.name.localeCompare(b.name))
  }

  /**
   * Deletes a volume and frees its blocks, after its in-flight I/O finishes. A volume whose storage
   * class has reclaim policy `Retain` is kept unless `force` is set.
   */
  async deleteVolume (vol: VolumeRef, options: { force?: boolean } = {}): Promise<void> {
    this.#assertOpen()
    const { object, label } = this.#refObject(vol)
    await this.#guard('deleteVolume', 'volume:delete', object, label, async () => { await this.#deleteVolume(vol, options) }, options?.force === true ? { force: true } : undefined)
  }

  async #deleteVolume (vol: VolumeRef, options: { force?: boolean }): Promise<void> {
    const record = this.#catalog.resolve(vol)
    if (record.state === VolumeState.Deleting) throw new GalleonError('BUSY', `volume ${record.name} is already being deleted`)

    if (this.#replication?.forwards(record.id) === true) {
      await this.#forward(record, { op: 'deleteVolume', force: options?.force === true })
      return
    }
    const storageClass = this.#catalog.storageClass(record.storageClass)
    if (storageClass?.reclaimPolicy === 'Retain' && options?.force !== true) {
      throw new GalleonError('BUSY', `volume ${record.name} uses storage class ${storageClass.name} whose reclaim policy is Retain; pass { force: true } to delete its data anyway`)
    }
    const mounts = mountControl(this.#mounts).mountsOf(record.id)
    if (mounts.length > 0 && options?.force !== true) {
      throw new GalleonError('BUSY', `volume ${record.name} is mounted (${mounts.map((m) => m.path).join(', ')}); unmount it first, or pass { force: true } to unmount and delete it`)
    }
    // From here no new mount may attach to it (the unmount below and the deletion take a while).
    this.#goingAway.add(record.id)
    try {
      // A replicated volume goes everywhere: its record first (no failover brings it back), then the
      // other copies (outside the admin queue: their nodes may be waiting on ours), then this one.
      if (this.#replication?.holds(record.id) === true) {
        // Refusals first: once the record is gone, the other copies go too.
        const clones = this.#catalog.clonesOf(record.id)
        if (clones.length > 0 && options?.force !== true) throw new GalleonError('BUSY', `volume ${record.name} has clones that still share its blocks (${names(clones)}); delete them first, or pass { force: true } to give each clone its own copy of the data before the volume goes`)
        // A move of it to another node stops (before its hand-over; after it, the copy here goes anyway).
        this.#nodeMoves.get(record.id)?.abort.abort(new GalleonError('CANCELLED', 'the volume is being deleted'))
        await this.#replication.unregister(record.id)
      }
      // A migration of the volume is cancelled: copying data that is about to go is pointless.
      await this.#adminAfterMigration(record.id, async () => {
        // A mount that was being set up when the deletion began has finished by now: look again.
        await mountControl(this.#mounts).settled()
        const late = mountControl(this.#mounts).mountsOf(record.id)
        if (late.length > 0 && options?.force !== true) throw new GalleonError('BUSY', `volume ${record.name} was mounted meanwhile (${late.map((m) => m.path).join(', ')}); unmount it, or pass { force: true }`)
        await mountControl(this.#mounts).release(record.id)
        await this.#deleteChecked(record, options)
      }, 'the volume is being deleted')
    } finally {
      this.#goingAway.delete(record.id)
    }
  }

  async #deleteChecked (record: VolumeRecord, options: { force?: boolean }): Promise<void> {
    const current = this.#catalog.resolve(record.id)
    const clones = this.#catalog.clonesOf(current.id)
    if (clones.length > 0 && options?.force !== true) {
      throw new GalleonError('BUSY', `volume ${current.name} has clones that still share its blocks (${names(clones)}); delete them first, or pass { force: true } to give each clone its own copy of the data before the volume goes`)
    }
    await this.#destroy(current, true)
  }

  /**
   * Deletes a volume, its snapshots and its blocks. Clones that still read from it get their own
   * copies first (`flattenClones`); a clone's implicit source snapshot goes when its last clone does.
   */
  async #destroy (record: VolumeRecord, flattenClones: boolean): Promise<void> {
    const clones = this.#catalog.clonesOf(record.id)
    if (clones.length > 0) {
      if (!flattenClones) throw new GalleonError('BUSY', `volume ${record.name} has clones (${names(clones)})`)
      for (const clone of clones) await this.#flatten(clone)
    }
    this.#replication?.forget(record.id)
    this.#qos.forget(record.id)
    const deleting = await this.#catalog.updateVolume(record.id, { state: VolumeState.Deleting })
    this.emit('volume:state', toVolume(deleting), record.state)
    const volume = this.#engine.volume(record.storageId) ?? this.#engine.attach(record.storageId, record.sizeBytes)
    await this.#engine.destroy(volume)
    await this.#catalog.deleteVolume(record.id)
    if (this.#keys.has(record.id)) await this.#keys.delete(record.id)
    this.emit('volume:deleted', toVolume(deleting))
    if (record.source !== undefined) await this.#releaseSource(record.source)
  }

  /** Drops a clone's source snapshot if it was implicit and no other clone reads from it. */
  async #releaseSource (source: { volumeId: string, snapshotId: string }): Promise<void> {
    const snapshot = this.#catalog.snapshotById(source.snapshotId)
    if (snapshot === undefined || !snapshot.implicit) return
    if (this.#catalog.clonesOf(source.volumeId, snapshot.id).length > 0) return
    await this.#dropSnapshot(this.#catalog.resolve(source.volumeId), snapshot)
  }

  /** Gives a clone its own copy of everything it reads from its source, then unlinks it. */
  async #flatten (clone: VolumeRecord): Promise<void> {
    const source = clone.source
    if (source === undefined) return
    await this.#engine.flatten(this.#volumeBlocks(clone))
    await this.#catalog.updateVolume(clone.id, { source: undefined })
    await this.#releaseSource(source)
  }

  /** Grows a volume online; the new space reads as zeros. Shrinking is refused. */
  async expandVolume (vol: VolumeRef, newSizeBytes: number | string): Promise<Volume> {
    this.#assertOpen()
    const sizeBytes = parseSize(newSizeBytes)
    this.#checkVolumeSize(sizeBytes)
    const { object, label } = this.#refObject(vol)
    return await this.#guard('expandVolume', 'volume:write', object, label, async () => {
      const record = this.#catalog.resolve(vol)
      if (record.replication !== undefined) return await this.#expandReplicated(record, sizeBytes)
      return await this.#adminAfterMigration(record.id, async () => await this.#expand(this.#catalog.resolve(vol), sizeBytes))
    }, { sizeBytes })
  }

  /** `beforeUpdate`: runs once the pool has room, before the record changes (a replicated volume's cluster record). */
  async #expand (record: VolumeRecord, sizeBytes: number, beforeUpdate?: () => Promise<void>): Promise<Volume> {
    if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
    if (sizeBytes < record.sizeBytes) {
      throw new GalleonError('INVALID_ARGUMENT', `volume ${record.name} is ${record.sizeBytes} bytes; shrinking to ${sizeBytes} would destroy data and is not supported. Create a smaller volume and copy the data instead`)
    }
    if (sizeBytes === record.sizeBytes) return toVolume(record)
    const release = record.pool === undefined ? undefined : this.#pools.reserve(record.pool, sizeBytes - record.sizeBytes, `expanding volume ${record.name} from ${record.sizeBytes} to ${sizeBytes} bytes`)
    let updated: VolumeRecord
    try {
      await beforeUpdate?.()
      updated = await this.#catalog.updateVolume(record.id, { sizeBytes })
    } finally {
      release?.()
    }
    const volume = this.#volumeBlocks(updated)
    volume.sizeBytes = sizeBytes
    // On a replicated volume's primary the expansion takes its place in the change stream here,
    // before any write that reaches past the old end can be recorded.
    volume.replicator?.record({ type: 'expand', sizeBytes })
    const result = this.#volumeView(updated)
    this.emit('volume:expanded', result, record.sizeBytes)
    return result
  }

  /**
   * Expands a replicated volume: on its primary (other nodes forward the call), the cluster's
   * record first, so that copies created or resynced from then on get the new size, then the
   * primary's copy; the other copies grow when the change reaches them in the stream.
   */
  async #expandReplicated (record: VolumeRecord, sizeBytes: number): Promise<Volume> {
    const replication = this.#replication
    if (replication === undefined) throw new GalleonError('BACKEND_UNAVAILABLE', `volume ${record.name} is replicated, but this instance is not in a cluster now; join it to expand the volume`)
    if (replication.forwards(record.id)) {
      return (await this.#forward(record, { op: 'expandVolume', sizeBytes })).header.volume as Volume
    }
    // Not while this copy converts (see #convergeCopy: it copies a fixed size): refused at once
    // rather than waiting, which a call forwarded here could not do for long.
    if (this.#migrations.has(record.id)) throw new GalleonError('BUSY', `the copy of volume ${record.name} on its primary (${this.#cluster?.nodeId ?? ''}) is converting to another storage class; expand it once that is done`)
    return await this.#admin(async () => {
      if (this.#migrations.has(record.id)) throw new GalleonError('BUSY', `the copy of volume ${record.name} on its primary (${this.#cluster?.nodeId ?? ''}) is converting to another storage class; expand it once that is done`)
      const current = this.#catalog.resolve(record.id)
      if (current.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${current.name} is being deleted`)
      // The primary role may have moved while the call waited for its turn.
      if (this.#volumeBlocks(current).replicator === undefined) throw new GalleonError('NOT_LEADER', `node ${this.#cluster?.nodeId ?? ''} stopped being the primary of volume ${current.name} while the expansion waited; retry it`)
      return await this.#expand(current, sizeBytes, async () => {
        await replication.update(current.id, (r) => r.spec.sizeBytes >= sizeBytes ? undefined : { ...r, spec: { ...r.spec, sizeBytes } })
      })
    })
  }

  /** Grows this node's copy of a replicated volume to the size its primary expanded it to. */
  async #applyExpand (volumeId: string, sizeBytes: number): Promise<void> {
    if ((this.#recordById(volumeId)?.sizeBytes ?? sizeBytes) >= sizeBytes) return
    await this.#adminAfterMigration(volumeId, async () => {
      const record = this.#recordById(volumeId)
      if (record === undefined || record.state === VolumeState.Deleting || sizeBytes <= record.sizeBytes) return
      const updated = await this.#catalog.updateVolume(record.id, { sizeBytes })
      this.#volumeBlocks(updated).sizeBytes = sizeBytes
      this.emit('volume:expanded', this.#volumeView(updated), record.sizeBytes)
    }, 'the primary expanded the volume; the conversion of this copy starts again after it')
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
    const { object, label } = this.#refObject(vol)
    await this.#check('getVolumeUsage', 'volume:read', object, label)
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
    return await this.#guard('createStorageClass', 'admin', undefined, `storage-class:${storageClass.name}`, async () => await this.#createStorageClass(storageClass))
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
    await this.#guard('deleteStorageClass', 'admin', undefined, `storage-class:${String(name)}`, async () => { await this.#deleteStorageClass(name) })
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
    const { object, label } = this.#refObject(vol)
    if (target.node !== undefined) {
      const node = target.node
      return await this.#guard('migrateVolume', 'admin', object, label, async () => {
        if (target.storageClass === undefined && target.pool === undefined) return await this.#migrateToNode(vol, node, control)
        // Class and/or pool first (here), then the move: each step is a complete migration of
        // its own, so a crash between them leaves the volume in the new class on this node, and
        // the same call again only moves it.
        await this.#checkNodeTarget(node)
        const record = this.#catalog.resolve(vol)
        // Refused up front what the class step would make impossible for the move after it.
        const wanted = target.storageClass === undefined ? undefined : this.#catalog.storageClass(target.storageClass)
        if (wanted !== undefined && classReplicas(wanted) > Math.max(1, record.replicas)) {
          throw new GalleonError('INVALID_ARGUMENT', `storage class ${wanted.name} keeps ${classReplicas(wanted)} copies and places them itself, so a node for this one cannot be named with it; migrate to ${wanted.name} first, then move this node's copy with { node } to a node without one`)
        }
        const copies = record.replication === undefined ? undefined : this.#replication?.status(record.id)?.nodes
        // (A surplus copy there, left by an interrupted move, is what the move finishes with.)
        if (copies !== undefined && copies.includes(node) && copies.length <= record.replicas) {
          throw new GalleonError('INVALID_ARGUMENT', `node ${node} holds a copy of volume ${record.name} already; move this node's copy to a node without one`)
        }
        const there = (target.storageClass === undefined || target.storageClass === record.storageClass) && (target.pool === undefined || target.pool === record.pool)
        if (!there) await this.#migrateVolume(vol, { ...(target.storageClass === undefined ? {} : { storageClass: target.storageClass }), ...(target.pool === undefined ? {} : { pool: target.pool }) }, control)
        return await this.#migrateToNode(vol, node, control)
      }, { node, ...(target.storageClass === undefined ? {} : { storageClass: target.storageClass }), ...(target.pool === undefined ? {} : { pool: String(target.pool) }) })
    }
    return await this.#guard('migrateVolume', 'admin', object, label, async () => await this.#migrateVolume(vol, target, control), {
      ...(target.storageClass === undefined ? {} : { storageClass: target.storageClass }),
      ...(target.pool === undefined ? {} : { pool: String(target.pool) })
    })
  }

  /** A node a volume may move to: a healthy member of this instance's cluster, not this node. */
  async #checkNodeTarget (node: string): Promise<void> {
    const cluster = this.#cluster
    if (cluster === undefined || this.#replication === undefined) throw new GalleonError('INVALID_ARGUMENT', `moving a volume to node ${node} needs a cluster, and this instance is not in one; join one (joinCluster) first`)
    if (node === cluster.nodeId) throw new GalleonError('INVALID_ARGUMENT', `the volume is on ${node} already: nothing to move; name another node`)
    const member = cluster.members.find((m) => m.id === node)
    if (member === undefined || !member.healthy) throw new GalleonError('INVALID_ARGUMENT', `node ${node} is ${member === undefined ? 'not a member of the cluster' : 'not healthy'}; clusterStatus() lists the nodes`)
  }

  /**
   * `layout`: only lay the volume's data out as `target.storageClass` says (encryption, pool),
   * whatever its replicas: `copy` for this node's copy of a replicated volume (no pool
   * reservation: the cluster placed it), else a 1-copy volume's first step into a replicated class.
   */
  async #migrateVolume (vol: VolumeRef, target: MigrateVolumeOptions, control: MigrateControl, layout?: MigrationLayout): Promise<Volume> {
    const { signal, onProgress } = control
    if (layout === undefined) {
      if (this.#catalog.resolve(vol).replication !== undefined) return await this.#migrateReplicated(vol, target, control)
      const wanted = target.storageClass === undefined ? undefined : this.#catalog.storageClass(target.storageClass)
      if (wanted !== undefined && classReplicas(wanted) > 1) return await this.#migrateToReplicated(vol, wanted, target, control)
    }
    const started = await this.#admin(async () => await this.#startMigration(vol, target, signal, layout))
    const { record, migration, source, destination, release, abort } = started
    const stagingId = migration.encrypted ? migrationKeyId(record.id) : undefined
    let lastReported = 0
    const report = (phase: MigrationPhase, blocksDone: number, blocksTotal: number, pass: number): void => {
      // One event per batch would flood listeners on a big volume: every 1024 blocks and at phase ends.
      if (phase !== 'done' && phase !== 'switchover' && blocksDone - lastReported < 1024 && blocksDone < blocksTotal) return
      lastReported = blocksDone
      const event: MigrationProgressEvent = { volumeId: record.id, volumeName: record.name, phase, blocksDone, blocksTotal, pass }
      this.emit('volume:migration-progress', event)
      onProgress?.(event)
    }
    const checkCancelled = (): void => {
      if (abort.signal.aborted) throw migrationCancelled(record.name, abort.signal.reason)
      if (this.#closed) throw migrationCancelled(record.name, 'the instance is closing')
    }
    const onAbort = (): void => { abort.abort(signal?.reason) }
    signal?.addEventListener('abort', onAbort, { once: true })
    let lastCut: number | undefined
    let switched = false
    try {
      const copied = await copyUntilConverged({ engine: this.#engine, source, target: destination, snapshots: this.#catalog.snapshots(record.id), report, checkCancelled })
      lastCut = copied.lastCut
      let { done, total } = copied
      const result = await this.#admin(async () => {
        checkCancelled()
        // Writes pause here: those in flight finish first, new ones wait at the gate.
        const open = await source.closeGate()
        try {
          checkCancelled()
          const indices = lastCut === undefined ? this.#engine.allocatedAt(source) : this.#engine.changedBlocks(source, lastCut)
          total += indices.length
          report('switchover', done, total, copied.passes)
          await copyLastDelta(this.#engine, source, destination, lastCut, (count) => { done += count })
          checkCancelled()
          const keys = await this.#keys.handOver(stagingId, record.id)
          const current = this.#catalog.resolve(record.id)
          let updated = await this.#catalog.commitMigration(record.id, { storageId: migration.storageId, storageClass: migration.storageClass, encrypted: migration.encrypted, pool: migration.pool }, copied.gens, keys.ops)
          switched = true
          // The volume's record counts in its new pool now: the reservation that held the space goes.
          release()
          keys.apply()
          // The destination's cipher reserved its nonces under the staging record: a fresh one
          // continues past every nonce that record reserved.
          if (migration.encrypted && keys.cipher !== undefined) destination.cipher = keys.cipher(migration.storageId)
          const snapshotGens = new Map<number, number>()
          for (const snapshot of this.#catalog.snapshots(record.id)) {
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
          this.#replication?.rebind(record.id, destination)
          this.#retired.set(source.storageId, source)
          if (layout !== undefined && updated.replicas !== layout.replicas) updated = await this.#catalog.updateVolume(record.id, { replicas: layout.replicas })
          this.#applyQoS(updated)
          return { updated, previous: current }
        } finally {
          open()
        }
      })
      // The old storage: nothing names it any more (a crash from here on removes it at open).
      try {
        await this.#engine.destroy(source)
        if (result.previous.source !== undefined) await this.#admin(async () => { await this.#releaseSource(result.previous.source as NonNullable<VolumeRecord['source']>) })
      } catch (err) {
        this.emit('io:error', { volumeId: record.id, volumeName: record.name, operation: 'write', code: errorCode(err), message: `the volume was migrated, but releasing its old storage failed (it is removed at the next open): ${(err as Error)?.message ?? String(err)}` })
      }
      // Records resolved before the switch-over reach the volume through its old storage's entry
      // while the operations holding them finish; then the entry (with its block map) goes.
      setTimeout(() => { if (this.#retired.get(source.storageId) === source) this.#retired.delete(source.storageId) }, RETIRED_GRACE_MS).unref()
      report('done', done, total, copied.passes)
      const volume = this.#volumeView(result.updated)
      this.emit('volume:migrated', volume, { storageClass: record.storageClass, ...(record.pool === undefined ? {} : { pool: record.pool }) })
      return volume
    } catch (err) {
      if (switched) throw err
      // Not switched over: the volume stays on its source; the destination and its keys go.
      if (lastCut !== undefined && !source.closing) await this.#engine.dropSnapshot(source, lastCut).catch(() => {})
      await this.#engine.destroy(destination).catch(() => {})
      if (stagingId !== undefined && this.#keys.has(stagingId)) await this.#keys.delete(stagingId).catch(() => {})
      await this.#catalog.abandonMigration(record.id).catch(() => {})
      if (abort.signal.aborted || this.#closed) throw migrationCancelled(record.name, abort.signal.reason)
      throw err
    } finally {
      signal?.removeEventListener('abort', onAbort)
      release()
      this.#migrations.get(record.id)?.finish()
      this.#migrations.delete(record.id)
    }
  }

  /**
   * Migration into a class that keeps copies on other nodes: the volume becomes replicated where it
   * is (this node its primary), its copies are placed by the class and filled by the resync of
   * new copies while I/O goes on; resolves once they are in sync (or the signal aborts the wait:
   * the volume stays replicated, its copies still filling). The data is not moved locally, so
   * the class must encrypt as the volume's does, and the pool stays.
   */
  async #migrateToReplicated (vol: VolumeRef, storageClass: StorageClass, target: MigrateVolumeOptions, control: MigrateControl): Promise<Volume> {
    const { signal } = control
    const replication = this.#replication
    const replicas = classReplicas(storageClass)
    const check = (current: VolumeRecord): void => {
      if (current.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${current.name} is being deleted`)
      if (current.replication !== undefined) throw new GalleonError('BUSY', `volume ${current.name} became replicated meanwhile; call migrateVolume again`)
      if (this.#migrations.has(current.id)) throw new GalleonError('BUSY', `volume ${current.name} is migrating already; wait for that migration, or cancel it`)
      if (this.#catalog.clonesOf(current.id).length > 0) throw new GalleonError('BUSY', `volume ${current.name} has clones reading from it; a replicated volume cannot serve them. Delete or flatten them first`)
      if (current.source !== undefined) throw new GalleonError('BUSY', `volume ${current.name} is a clone that still reads from ${current.source.volumeId}; migrate it to a 1-copy class first (that gives it its own copy of every block)`)
      if (mountControl(this.#mounts).mountsOf(current.id).length > 0) throw new GalleonError('BUSY', `volume ${current.name} is mounted; unmount it while it becomes replicated`)
    }
    const first = this.#catalog.resolve(vol)
    if (replication === undefined) throw new GalleonError('INVALID_ARGUMENT', `storage class ${storageClass.name} keeps ${replicas} copies, on other nodes, but this instance is not in a cluster; join one (joinCluster) first`)
    check(first)
    assertClassSupported(storageClass, replicas, true)
    const poolName = this.#pools.choose(target.pool, storageClass)?.name ?? first.pool
    if ((storageClass.parameters.encryption === 'true') !== (first.encrypted === true) || poolName !== first.pool) {
      // First the data is laid out here as the class wants it (encrypted or not, in its pool):
      // a complete local migration of its own. A crash after it leaves the volume in the class
      // with one copy, and the same call again adds the copies.
      await this.#migrateVolume(vol, { storageClass: storageClass.name, ...(poolName === first.pool || poolName === undefined ? {} : { pool: poolName }) }, control, { pool: poolName, replicas: first.replicas, copy: false })
    }
    const record = await this.#admin(async () => {
      const current = this.#catalog.resolve(vol)
      check(current)
      if ((storageClass.parameters.encryption === 'true') !== (current.encrypted === true) || current.pool !== poolName) throw new GalleonError('BUSY', `volume ${current.name} changed while it was laid out for ${storageClass.name}; call migrateVolume again`)
      const updated = await this.#catalog.updateVolume(current.id, { storageClass: storageClass.name, replicas, replication: { epoch: 0, seq: 0 } })
      try {
        const pool = updated.pool === undefined ? undefined : this.#catalog.pool(updated.pool)
        // Not waiting here: the new copies' resyncs need this admin queue for their cuts.
        await replication.register(specOf(updated), pool === undefined ? classPlacement(storageClass) : this.#poolPlacement(pool, classPlacement(storageClass)), false)
      } catch (err) {
        replication.forget(current.id)
        await this.#catalog.updateVolume(current.id, { storageClass: current.storageClass, replicas: current.replicas, replication: undefined }).catch(() => {})
        throw err
      }
      this.#applyQoS(updated)
      return updated
    })
    const deadline = Date.now() + 30 * 60_000
    while (replication !== undefined && !this.#closed) {
      const status = replication.status(record.id)
      if (status === undefined || status.inSync.length >= Math.min(replicas, status.nodes.length)) break
      if (signal?.aborted === true) break
      if (Date.now() > deadline) break
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    const volume = this.#volumeView(this.#catalog.resolve(record.id))
    this.emit('volume:migrated', volume, { storageClass: record.storageClass, ...(record.pool === undefined ? {} : { pool: record.pool }) })
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
    const replication = this.#replication
    if (replication === undefined) throw new GalleonError('INVALID_ARGUMENT', `moving a volume to node ${node} needs a cluster, and this instance is not in one; join one (joinCluster) first`)
    if (signal?.aborted === true) throw new GalleonError('CANCELLED', 'the migration was cancelled before it started')
    let wasLocal = false
    const record = await this.#admin(async () => {
      const current = this.#catalog.resolve(vol)
      if (current.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${current.name} is being deleted`)
      if (this.#migrations.has(current.id)) throw new GalleonError('BUSY', `volume ${current.name} is migrating already; wait for that migration, or cancel it`)
      if (current.replication !== undefined) return current
      wasLocal = true
      if (this.#catalog.clonesOf(current.id).length > 0) throw new GalleonError('BUSY', `volume ${current.name} has clones reading from it, which would stay here; delete or flatten them first`)
      if (current.source !== undefined) throw new GalleonError('BUSY', `volume ${current.name} is a clone that still reads from ${current.source.volumeId}; migrate it to a 1-copy class first (that gives it its own copy of every block)`)
      if (mountControl(this.#mounts).mountsOf(current.id).length > 0) throw new GalleonError('BUSY', `volume ${current.name} is mounted here; unmount it before moving it to node ${node}`)
      const storageClass = this.#catalog.storageClass(current.storageClass)
      const updated = await this.#catalog.updateVolume(current.id, { replication: { epoch: 0, seq: 0 } })
      try {
        await replication.register(specOf(updated), storageClass === undefined ? {} : classPlacement(storageClass))
      } catch (err) {
        replication.forget(current.id)
        await this.#catalog.updateVolume(current.id, { replication: undefined }).catch(() => {})
        throw err
      }
      return updated
    })
    const before = this.#volumeView(record)
    // Progress: the new copy's fill, as the primary's link to it reports it.
    const report = (phase: MigrationPhase, blocksDone: number, blocksTotal: number): void => {
      const event: MigrationProgressEvent = { volumeId: record.id, volumeName: record.name, phase, blocksDone, blocksTotal, pass: 1 }
      this.emit('volume:migration-progress', event)
      onProgress?.(event)
    }
    let last = -1
    const timer = setInterval(() => {
      const resync = replication.status(record.id)?.links.find((l) => l.node === node)?.resync
      if (resync !== undefined && resync.blocksDone !== last) { last = resync.blocksDone; report('copy', resync.blocksDone, resync.blocksTotal) }
    }, 100)
    // Cancelled by the caller's signal, close() or deleteVolume.
    const abort = new AbortController()
    const onAbort = (): void => { abort.abort(signal?.reason) }
    signal?.addEventListener('abort', onAbort, { once: true })
    const moving = replication.moveCopy(record.id, node, { signal: abort.signal })
    const entry = { abort, done: moving.catch(() => {}) }
    this.#nodeMoves.set(record.id, entry)
    try {
      await moving
    } catch (err) {
      // A volume that was local before this call is local again when the move did not happen.
      if (wasLocal && !this.#closed) await this.#unreplicate(record.id, node).catch(() => {})
      if (abort.signal.aborted && err instanceof GalleonError && err.code === 'CANCELLED' && abort.signal.reason instanceof GalleonError) {
        throw new GalleonError('CANCELLED', `moving volume ${record.name} to node ${node} stopped: ${abort.signal.reason.message}; its copy there is being removed, the volume stays here`)
      }
      throw err
    } finally {
      clearInterval(timer)
      signal?.removeEventListener('abort', onAbort)
      if (this.#nodeMoves.get(record.id) === entry) this.#nodeMoves.delete(record.id)
    }
    report('done', Math.max(last, 0), Math.max(last, 0))
    const moved = { ...before, state: VolumeState.Available }
    this.emit('volume:migrated', moved, { storageClass: record.storageClass, ...(record.pool === undefined ? {} : { pool: record.pool }) })
    return moved
  }

  /** A 1-copy volume whose move to `node` did not happen: local again (see ReplicationManager.dissolve). */
  async #unreplicate (volumeId: string, node: string): Promise<void> {
    const replication = this.#replication
    if (replication === undefined) return
    await this.#admin(async () => {
      const current = this.#recordById(volumeId)
      if (current === undefined || current.state === VolumeState.Deleting || current.replication === undefined) return
      await replication.dissolve(volumeId, [node], async () => {
        const updated = await this.#catalog.updateVolume(volumeId, { replication: undefined })
        this.#applyQoS(updated)
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
  async #migrateReplicated (vol: VolumeRef, target: MigrateVolumeOptions, control: MigrateControl): Promise<Volume> {
    const { signal, onProgress } = control
    const replication = this.#replication
    const record = this.#catalog.resolve(vol)
    if (replication === undefined) throw new GalleonError('INVALID_ARGUMENT', `volume ${record.name} is replicated; changing its storage class needs this instance in the volume's cluster (open it with { cluster })`)
    if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
    const className = target.storageClass ?? record.storageClass
    const storageClass = this.#catalog.storageClass(className)
    if (storageClass === undefined) throw new GalleonError('STORAGE_CLASS_NOT_FOUND', `no storage class ${JSON.stringify(className)}; listStorageClasses() shows the available ones`)
    const replicas = classReplicas(storageClass)
    assertClassSupported(storageClass, replicas, true)
    if (this.#reshaping.has(record.id)) throw new GalleonError('BUSY', `volume ${record.name} is migrating already; wait for that migration, or cancel it`)
    // The class in the cluster's record is the volume's; a copy may still be on its way to it.
    const spec = replication.spec(record.id)
    const currentClass = spec?.storageClass ?? record.storageClass
    const currentPool = spec === undefined ? record.pool : spec.pool
    const pool = this.#pools.choose(target.pool, storageClass)
    const poolName = pool?.name ?? currentPool
    // The record names the target already: done, or an earlier call that failed or stopped
    // waiting left copies to convert; then this call waits for them (retrying failed ones).
    let resume = false
    if (storageClass.name === currentClass && poolName === currentPool) {
      const seen = await replication.copyLayouts(record.id)
      resume = seen !== undefined && seen.layouts.some((l) => l.busy || !l.converged || l.error !== undefined)
      if (!resume) throw new GalleonError('INVALID_ARGUMENT', `volume ${record.name} is already in storage class ${currentClass}${currentPool === undefined ? '' : ` and pool ${currentPool}`}: nothing to migrate; name another storageClass or pool`)
    } else {
      const converting = this.#copyConversions.get(record.id)
      if (converting !== undefined || this.#migrations.has(record.id)) throw new GalleonError('BUSY', `the copy of volume ${record.name} on this node is still converting${converting === undefined ? '' : ` to storage class ${converting.storageClass}`}; try again when it is done`)
    }
    if (signal?.aborted === true) throw migrationCancelled(record.name, signal.reason)
    if (storageClass.parameters.encryption === 'true') await this.#keys.provider()
    const placement = pool === undefined ? classPlacement(storageClass) : poolPlacement(pool, classPlacement(storageClass))
    this.#reshaping.add(record.id)
    try {
      const change = { storageClass: storageClass.name, replicas, ...(poolName === undefined ? {} : { pool: poolName }) }
      const before = resume ? undefined : await replication.reshape(record.id, { ...change, keep: this.#cluster?.nodeId }, placement)
      const blocks = Math.ceil(record.sizeBytes / record.blockSize)
      const failures = new Map<string, number>()
      const aborted = (): boolean => signal?.aborted === true
      let reported = -1
      const deadline = Date.now() + 30 * 60_000
      try {
        for (;;) {
          if (aborted()) throw migrationCancelled(record.name, signal?.reason)
          if (this.#closed) throw migrationCancelled(record.name, 'the instance is closing')
          const seen = await replication.copyLayouts(record.id, true)
          if (seen === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} was deleted while it migrated`)
          if (seen.record.spec.storageClass !== storageClass.name) throw new GalleonError('BUSY', `the storage class of volume ${record.name} was changed to ${seen.record.spec.storageClass} by another call meanwhile`)
          // Converted: the copy's node has read the new record and its copy is laid out by it.
          const converted = seen.layouts.filter((l) => !l.busy && l.converged && l.spec?.storageClass === storageClass.name && l.spec.pool === poolName).length
          if (converted !== reported) {
            reported = converted
            const event: MigrationProgressEvent = { volumeId: record.id, volumeName: record.name, phase: 'copy', blocksDone: converted * blocks, blocksTotal: seen.layouts.length * blocks, pass: 1 }
            this.emit('volume:migration-progress', event)
            onProgress?.(event)
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
          if (Date.now() > deadline) throw new GalleonError('BUSY', `the copies of volume ${record.name} did not all convert to ${storageClass.name} within 30 minutes; they go on in the background (replicationStatus and getVolume show where they are)`)
          await new Promise((resolve) => setTimeout(resolve, 100))
        }
      } catch (err) {
        if (err instanceof GalleonError && err.code === 'CANCELLED') {
          if (before === undefined) throw new GalleonError('CANCELLED', `stopped waiting for the copies of volume ${record.name}; they go on converting to storage class ${storageClass.name} in the background`)
          await replication.unshape(record.id, before, change).catch(() => {})
          throw new GalleonError('CANCELLED', `the migration of volume ${record.name} was cancelled; its copies return to storage class ${currentClass}`)
        }
        throw err
      }
      const event: MigrationProgressEvent = { volumeId: record.id, volumeName: record.name, phase: 'done', blocksDone: blocks * replicas, blocksTotal: blocks * replicas, pass: 1 }
      this.emit('volume:migration-progress', event)
      onProgress?.(event)
      // This node's copy may have been one the class no longer keeps.
      const latest = this.#recordById(record.id)
      const volume = latest !== undefined && latest.state !== VolumeState.Deleting
        ? this.#volumeView(latest)
        : { ...toVolume(record), storageClass: storageClass.name, replicas, encrypted: storageClass.parameters.encryption === 'true', ...(poolName === undefined ? {} : { pool: poolName }) }
      this.emit('volume:migrated', volume, { storageClass: currentClass, ...(currentPool === undefined ? {} : { pool: currentPool }) })
      return volume
    } finally {
      this.#reshaping.delete(record.id)
    }
  }

  /**
   * Brings this node's copy of a replicated volume to the storage class its cluster record names,
   * in the background (see #migrateReplicated); copyLayout reports how it goes. Called with every
   * record this node reads, so cheap when there is nothing to do. `retry`: also after a failure.
   */
  #convergeCopy (volumeId: string, spec: VolumeSpec, retry = false): void {
    if (this.#closed) return
    const record = this.#recordById(volumeId)
    if (record === undefined || record.state === VolumeState.Deleting || record.replication === undefined) return
    const running = this.#copyConversions.get(volumeId)
    if (running !== undefined) {
      // Converting to a class the record no longer names: stop; the end of it converges again.
      if (running.storageClass !== spec.storageClass) running.abort.abort(new GalleonError('CANCELLED', `the cluster's record of volume ${record.name} names storage class ${spec.storageClass} now`))
      return
    }
    if (this.#copyMatches(record, spec)) {
      this.#copyConversionErrors.delete(volumeId)
      return
    }
    const failed = this.#copyConversionErrors.get(volumeId)
    if (failed !== undefined && failed.storageClass === spec.storageClass && !retry) return
    this.#copyConversionErrors.delete(volumeId)
    const abort = new AbortController()
    this.#copyConversions.set(volumeId, { storageClass: spec.storageClass, abort })
    void (async () => {
      try {
        await this.#convertCopy(volumeId, spec, abort.signal)
      } catch (err) {
        const code = errorCode(err)
        // Cancelled (the record changed, a snapshot or expansion came, the instance closes): the
        // next pass below, or the next start, converges again.
        if (code !== 'CANCELLED' && !this.#closed) {
          const message = (err as Error)?.message ?? String(err)
          this.#copyConversionErrors.set(volumeId, { storageClass: spec.storageClass, code, message })
          this.emit('replication:error', { volumeId, nodeId: this.#cluster?.nodeId ?? '', code, message: `converting the copy to storage class ${spec.storageClass}: ${message}` })
        }
      } finally {
        this.#copyConversions.delete(volumeId)
      }
      const latest = this.#replication?.spec(volumeId)
      if (latest !== undefined && !this.#closed) this.#convergeCopy(volumeId, latest)
    })()
  }

  /** The pool this node's copy belongs in by `spec`: the record's pool where this node has one of that name, else the one it is in. */
  #copyPool (record: VolumeRecord, spec: VolumeSpec): string | undefined {
    return spec.pool !== undefined && this.#catalog.pool(spec.pool) !== undefined ? spec.pool : record.pool
  }

  /** This node's copy is laid out as `spec` says: class, copies and pool. */
  #copyMatches (record: VolumeRecord, spec: VolumeSpec): boolean {
    return record.storageClass === spec.storageClass && record.replicas === spec.replicas && this.#copyPool(record, spec) === record.pool
  }

  async #convertCopy (volumeId: string, spec: VolumeSpec, signal: AbortSignal): Promise<void> {
    const storageClass = this.#catalog.storageClass(spec.storageClass)
    if (storageClass === undefined) throw new GalleonError('STORAGE_CLASS_NOT_FOUND', `node ${this.#cluster?.nodeId ?? ''} has no storage class ${spec.storageClass}, which volume ${spec.name} moves to; create it on every node of the cluster`)
    const record = this.#catalog.resolve(volumeId)
    const encrypted = storageClass.parameters.encryption === 'true'
    // Like a new copy: counted in this node's pool of the record's name, if it has one.
    const pool = this.#copyPool(record, spec)
    if (encrypted === (record.encrypted === true) && pool === record.pool) {
      await this.#admin(async () => {
        const updated = await this.#catalog.updateVolume(volumeId, { storageClass: spec.storageClass, replicas: spec.replicas })
        this.#applyQoS(updated)
      })
      return
    }
    await this.#migrateVolume(volumeId, { storageClass: spec.storageClass }, { signal }, { pool, replicas: spec.replicas, copy: true })
  }

  /** Checks a migration may start and sets up its destination; in the admin queue. */
  async #startMigration (vol: VolumeRef, target: MigrateVolumeOptions, signal: AbortSignal | undefined, layout: MigrationLayout | undefined): Promise<{
    record: VolumeRecord, migration: MigrationRecord, source: VolumeBlocks, destination: VolumeBlocks, release: () => void, abort: AbortController, snapshotGens: Map<string, number>
  }> {
    const record = this.#catalog.resolve(vol)
    if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
    if (layout?.copy !== true && record.replication !== undefined) {
      throw new GalleonError('BUSY', `volume ${record.name} became replicated meanwhile; call migrateVolume again`)
    }
    const className = target.storageClass ?? record.storageClass
    const storageClass = this.#catalog.storageClass(className)
    if (storageClass === undefined) throw new GalleonError('STORAGE_CLASS_NOT_FOUND', `no storage class ${JSON.stringify(className)}; listStorageClasses() shows the available ones`)
    if (layout === undefined && classReplicas(storageClass) > 1) throw new GalleonError('BUSY', `storage class ${storageClass.name} keeps copies on other nodes; call migrateVolume again`)
    assertClassSupported(storageClass, 1)
    const poolName = layout !== undefined ? layout.pool : (this.#pools.choose(target.pool, storageClass)?.name ?? record.pool)
    if (storageClass.name === record.storageClass && poolName === record.pool) {
      throw new GalleonError('INVALID_ARGUMENT', `volume ${record.name} is already in storage class ${record.storageClass}${record.pool === undefined ? '' : ` and pool ${record.pool}`}: nothing to migrate; name another storageClass or pool`)
    }
    if (this.#migrations.has(record.id) || this.#catalog.migrations().some((m) => m.volumeId === record.id)) throw new GalleonError('BUSY', `volume ${record.name} is being migrated already; wait for that migration or cancel it`)
    if (this.#rotations.has(record.id) || this.#keys.rotation(record.id) !== undefined) throw new GalleonError('BUSY', `volume ${record.name} is re-encrypting with a new data key; wait for that to finish (getVolumeEncryption shows the progress), then migrate it`)
    if (record.revertTo !== undefined) throw new GalleonError('BUSY', `volume ${record.name} has an unfinished revert; finish it (restoreSnapshot) before migrating it`)
    const clones = this.#catalog.clonesOf(record.id)
    if (clones.length > 0) throw new GalleonError('BUSY', `volume ${record.name} has clones that read its blocks (${names(clones)}); delete them, or flatten them by deleting the snapshots they came from with { force: true }, then migrate it`)
    const source = this.#ioVolumeOf(record)
    if (source.cipher?.unavailable !== undefined) throw source.cipher.unavailable
    if (signal?.aborted === true) throw migrationCancelled(record.name, signal.reason)
    const encrypted = storageClass.parameters.encryption === 'true'
    if (encrypted) await this.#keys.provider()
    // The target pool's bytes are held until the switch-over makes the record count there.
    const release = layout?.copy !== true && poolName !== undefined && poolName !== record.pool ? this.#pools.reserve(poolName, record.sizeBytes, `migrating volume ${record.name}`) : () => {}
    let migration: MigrationRecord | undefined
    try {
      migration = await this.#catalog.beginMigration(record.id, { storageClass: storageClass.name, encrypted, ...(poolName === undefined ? {} : { pool: poolName }) })
      const destination = this.#engine.attach(migration.storageId, record.sizeBytes)
      if (encrypted) destination.cipher = await this.#keys.create(migrationKeyId(record.id), migration.storageId)
      const abort = new AbortController()
      let finish!: () => void
      const done = new Promise<void>((resolve) => { finish = resolve })
      this.#migrations.set(record.id, { abort, done, finish })
      const snapshotGens = new Map(this.#catalog.snapshots(record.id).map((snapshot) => [snapshot.id, snapshot.gen]))
      return { record, migration, source, destination, release, abort, snapshotGens }
    } catch (err) {
      release()
      if (migration !== undefined) {
        const attached = this.#engine.volume(migration.storageId)
        if (attached !== undefined) await this.#engine.destroy(attached).catch(() => {})
        if (this.#keys.has(migrationKeyId(record.id))) await this.#keys.delete(migrationKeyId(record.id)).catch(() => {})
        await this.#catalog.abandonMigration(record.id).catch(() => {})
      }
      throw err
    }
  }

  /**
   * `#admin(task)` for an operation on a volume that must not overlap its migration (snapshot,
   * clone, expand, revert: the snapshot list and the size stay fixed while one copies): waits for a
   * running migration to end, whatever its outcome, then runs in the admin queue. Waiting happens
   * outside the queue (the migration's switch-over needs it). `cancel`: cancel the migration instead.
   */
  async #adminAfterMigration<T> (volumeId: string, task: () => Promise<T>, cancel: false | string = false): Promise<T> {
    const again = Symbol('again')
    for (;;) {
      const running = this.#migrations.get(volumeId)
      if (running !== undefined && cancel !== false) running.abort.abort(new GalleonError('CANCELLED', cancel))
      if (running !== undefined) await running.done
      const result = await this.#admin(async () => this.#migrations.has(volumeId) ? again : await task())
      if (result !== again) return result as T
    }
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
    return await this.#guard('createPool', 'admin', undefined, `pool:${String(name)}`, async () => {
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
    return await this.#guard('updatePool', 'admin', undefined, `pool:${String(name)}`, async () => {
      const pool = await this.#pools.update(name, changes)
      this.emit('pool:updated', pool)
      return this.#poolStatus(pool)
    })
  }

  /** Deletes a pool; BUSY while volumes are in it or storage classes name it. Emits `pool:deleted`. */
  async deletePool (name: string): Promise<void> {
    this.#assertOpen()
    await this.#guard('deletePool', 'admin', undefined, `pool:${String(name)}`, async () => {
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
    const denied = this.#refCheck('writeBlock', 'volume:write', vol)
    if (denied !== undefined) await denied
    const record = this.#writable(vol)
    assertBytes(data, 'data')
    const checked = this.#checkConcern(concern)
    if (record.replication !== undefined && this.#replication !== undefined) {
      if (this.#replication.forwards(record.id)) {
        await this.#forward(record, { op: 'writeBlock', index: blockIndex, concern: checked }, data)
        return
      }
      this.#assertCopyHeld(record)
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
      if (this.#handedOver(record, err)) { await this.#forward(record, { op: 'writeBlock', index: blockIndex, concern: checked }, data); return }
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
    const denied = this.#refCheck('readBlock', isSnapshotRef(source) ? 'snapshot:read' : 'volume:read', source)
    if (denied !== undefined) await denied
    const { record, snapshot } = this.#readSource(source)
    if (this.#replication?.forwards(record.id) === true) {
      return (await this.#forward(record, { op: 'readBlock', index: blockIndex, ...(snapshot === undefined ? {} : { readSnapshot: snapshot.id }) })).payload ?? new Uint8Array(0)
    }
    this.#assertCopyHeld(record)
    const unpin = snapshot === undefined ? undefined : this.#pinSnapshot(snapshot)
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
    const denied = this.#refCheck('write', 'volume:write', vol)
    if (denied !== undefined) await denied
    const record = this.#writable(vol)
    assertBytes(data, 'data')
    const checked = this.#checkConcern(concern)
    if (record.replication !== undefined && this.#replication !== undefined) {
      if (this.#replication.forwards(record.id)) {
        await this.#forward(record, { op: 'write', offset, concern: checked }, data)
        return
      }
      this.#assertCopyHeld(record)
      this.#replication.checkConcern(record.id, checked)
    }
    const volume = this.#ioVolumeOf(record)
    const arrivedAt = this.#qos.now()
    const admitted = this.#qos.admit(record.id, 'write', data.byteLength)
    const held = typeof admitted === 'boolean' ? admitted : await admitted
    try {
      await this.#engine.write(volume, offset, data, checked)
    } catch (err) {
      if (this.#handedOver(record, err)) { await this.#forward(record, { op: 'write', offset, concern: checked }, data); return }
      throw this.#ioFailed(record, 'write', err)
    } finally {
      if (held) this.#qos.release()
      this.#qos.completed(record.id, 'write', arrivedAt)
    }
  }

  /** Reads `length` bytes at `offset` of a volume, or of a snapshot (`{ volume, snapshot }`). */
  async read (source: ReadSource, offset: number, length: number): Promise<Uint8Array> {
    this.#assertOpen()
    const denied = this.#refCheck('read', isSnapshotRef(source) ? 'snapshot:read' : 'volume:read', source)
    if (denied !== undefined) await denied
    const { record, snapshot } = this.#readSource(source)
    if (this.#replication?.forwards(record.id) === true) {
      return (await this.#forward(record, { op: 'read', offset, length, ...(snapshot === undefined ? {} : { readSnapshot: snapshot.id }) })).payload ?? new Uint8Array(0)
    }
    this.#assertCopyHeld(record)
    const unpin = snapshot === undefined ? undefined : this.#pinSnapshot(snapshot)
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
      const denied = this.#refCheck('flush', 'volume:write', vol)
      if (denied !== undefined) await denied
    }
    const record = vol === undefined ? undefined : this.#catalog.resolve(vol)
    if (record !== undefined && this.#replication?.forwards(record.id) === true) {
      await this.#forward(record, { op: 'flush' })
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
    const denied = this.#refCheck('trim', 'volume:write', vol)
    if (denied !== undefined) await denied
    const record = this.#writable(vol)
    if (this.#replication?.forwards(record.id) === true) {
      await this.#forward(record, { op: 'trim', offset, length })
      return
    }
    this.#assertCopyHeld(record)
    const arrivedAt = this.#qos.now()
    // A trim costs an operation, not bandwidth: it frees blocks, it does not move their bytes.
    const admitted = this.#qos.admit(record.id, 'write', 0)
    const held = typeof admitted === 'boolean' ? admitted : await admitted
    try {
      await this.#engine.trim(this.#ioVolumeOf(record), offset, length, WriteConcern.WriteAcknowledged)
    } catch (err) {
      if (this.#handedOver(record, err)) { await this.#forward(record, { op: 'trim', offset, length }); return }
      throw this.#ioFailed(record, 'trim', err)
    } finally {
      if (held) this.#qos.release()
      this.#qos.completed(record.id, 'write', arrivedAt)
    }
  }

  /** Reads and verifies every allocated block of a volume; reports (and emits) each bad block. */
  async scrub (vol: VolumeRef): Promise<ScrubReport> {
    this.#assertOpen()
    const denied = this.#refCheck('scrub', 'volume:read', vol)
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
    const { object, label } = this.#refObject(vol)
    // Limits bound what a tenant may take from the node: changing them is an admin's job.
    return await this.#guard(policy === null ? 'clearQoSPolicy' : 'setQoSPolicy', 'admin', object, label, async () => await this.#admin(async () => {
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
    const { object, label } = this.#refObject(vol)
    await this.#check('getQoSPolicy', 'volume:read', object, label)
    return this.#effectiveQoS(this.#catalog.resolve(vol))
  }

  #effectiveQoS (record: VolumeRecord): { policy?: QoSPolicy, source: QoSPolicySource } {
    if (record.qos !== undefined) return { policy: structuredClone(record.qos), source: 'volume' }
    const storageClass = this.#catalog.storageClass(record.storageClass)
    const fromClass = storageClass === undefined ? undefined : qosFromParameters(storageClass.parameters)
    return fromClass === undefined ? { source: 'none' } : { policy: fromClass, source: 'storage-class' }
  }

  /** A replicated volume's QoS policy as its cluster record says: stored and applied here if it differs. */
  #applySpecQoS (volumeId: string, spec: VolumeSpec): void {
    const record = this.#recordById(volumeId)
    if (record === undefined || JSON.stringify(record.qos ?? null) === JSON.stringify(spec.qos ?? null)) return
    void this.#admin(async () => {
      const current = this.#recordById(volumeId)
      if (current === undefined || current.state === VolumeState.Deleting || JSON.stringify(current.qos ?? null) === JSON.stringify(spec.qos ?? null)) return
      const updated = await this.#catalog.updateVolume(volumeId, { qos: spec.qos })
      const effective = this.#applyQoS(updated)
      this.emit('qos:policy-changed', { volumeId, volumeName: updated.name, ...effective })
    }).catch((err: unknown) => {
      this.emit('io:error', { volumeId, volumeName: record.name, operation: 'write', code: errorCode(err), message: `applying the QoS policy of the cluster's record: ${(err as Error)?.message ?? String(err)}` })
    })
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
    const { object, label } = this.#refObject(vol)
    await this.#check('getVolumeMetrics', 'volume:read', object, label)
    const record = this.#catalog.resolve(vol)
    const volume = this.#metricsVolume(record)
    if (volume === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
    const snapshot = volume.metrics.snapshot()
    return { volumeId: record.id, volumeName: record.name, ...snapshot, qos: this.#qos.metrics(record.id) }
  }

  /** All metrics in the Prometheus text exposition format (version 0.0.4). */
  async metricsText (): Promise<string> {
    this.#assertOpen()
    await this.#check('metricsText', 'admin', undefined, 'metrics')
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
    }) + this.#replicationMetrics() + renderQoSMetrics(this.#catalog.volumes().map((record) => ({ id: record.id, name: record.name, qos: this.#qos.metrics(record.id) })))
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

  /** Prometheus families of replication: per volume and copy, lag (changes, bytes, seconds), bytes shipped, acknowledgement round trips and resync progress. */
  #replicationMetrics (): string {
    const statuses = this.#replication?.statuses() ?? []
    const lines: string[] = []
    const families: Array<[string, 'gauge' | 'counter', string, (link: ReplicationStatus['links'][number]) => number]> = [
      ['galleonfs_replication_lag_changes', 'gauge', 'Changes the primary recorded that the copy has not acknowledged yet.', (l) => l.lagChanges],
      ['galleonfs_replication_lag_bytes', 'gauge', 'Bytes of changes queued for the copy.', (l) => l.lagBytes],
      ['galleonfs_replication_lag_seconds', 'gauge', 'Age of the oldest change the copy has not acknowledged (0 when it has them all).', (l) => l.lagSeconds],
      ['galleonfs_replication_shipped_bytes_total', 'counter', 'Block bytes shipped to the copy (stream and resync).', (l) => l.shippedBytes],
      ['galleonfs_replication_batches_acknowledged_total', 'counter', 'Stream batches the copy acknowledged.', (l) => l.batchesAcknowledged],
      ['galleonfs_replication_ack_wait_seconds_total', 'counter', 'Seconds the acknowledged stream batches waited from sending to acknowledgement, summed (divide by the batch count for the mean round trip).', (l) => l.ackWaitSeconds],
      ['galleonfs_replication_resyncs_total', 'counter', 'Resyncs of the copy started by this primary.', (l) => l.resyncs],
      ['galleonfs_replication_resync_blocks_done', 'gauge', 'Blocks compared or sent by the resync under way (0 when none).', (l) => l.resync?.blocksDone ?? 0],
      ['galleonfs_replication_resync_blocks_total', 'gauge', 'Blocks the resync under way covers (0 when none).', (l) => l.resync?.blocksTotal ?? 0],
      ['galleonfs_replication_in_sync', 'gauge', '1 when the copy is in the in-sync list.', () => 0]
    ]
    const label = (value: string): string => value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')
    for (const [name, type, help, value] of families) {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`)
      for (const status of statuses) {
        const record = this.#recordById(status.volumeId)
        if (record === undefined) continue
        for (const link of status.links) {
          const v = name === 'galleonfs_replication_in_sync' ? (status.inSync.includes(link.node) ? 1 : 0) : value(link)
          lines.push(`${name}{volume_id="${label(record.id)}",volume_name="${label(record.name)}",node="${label(link.node)}"} ${v}`)
        }
      }
    }
    lines.push('# HELP galleonfs_replication_primary 1 when this node is the primary of the volume.', '# TYPE galleonfs_replication_primary gauge')
    for (const status of statuses) {
      const record = this.#recordById(status.volumeId)
      if (record !== undefined) lines.push(`galleonfs_replication_primary{volume_id="${label(record.id)}",volume_name="${label(record.name)}"} ${status.role === 'primary' ? 1 : 0}`)
    }
    return lines.join('\n') + '\n'
  }

  /**
   * The block store's figures: its backend, live blocks and bytes, bytes on its medium (garbage
   * awaiting compaction included), and syncs to stable storage so far.
   */
  async getStorageStats (): Promise<BlockStoreStats & { backend: string }> {
    this.#assertOpen()
    await this.#check('getStorageStats', 'admin', undefined, 'metrics')
    return { backend: this.#store.name, ...await this.#store.stats() }
  }

  /** Journal statistics: store batches issued and how many asked for a sync (see getStorageStats for device syncs). */
  journalStats (): { lastLsn: number, committedLsn: number, groups: number, syncs: number } {
    this.#assertOpen()
    this.#checkSync('journalStats', 'admin', undefined, 'metrics')
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
    const { object, label } = this.#refObject(vol)
    return await this.#guard('createSnapshot', 'snapshot:create', object, `snapshot:${label.slice(7)}@${name}`, async () => await this.#createSnapshot(vol, name))
  }

  async #createSnapshot (vol: VolumeRef, name: string): Promise<Snapshot> {
    const target = this.#catalog.resolve(vol)
    if (this.#replication?.forwards(target.id) === true) {
      const reply = await this.#forward(target, { op: 'createSnapshot', snapshotName: name })
      return reply.header.snapshot as Snapshot
    }
    return await this.#adminAfterMigration(target.id, async () => {
      const record = this.#catalog.resolve(vol)
      if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted; no snapshot was taken`)
      if (this.#catalog.snapshots(record.id).some((snapshot) => snapshot.name === name)) {
        throw new GalleonError('SNAPSHOT_EXISTS', `volume ${record.name} already has a snapshot named ${JSON.stringify(name)}; pick another name or delete that snapshot first`)
      }
      const snapshot = this.#toSnapshot(await this.#takeSnapshot(record, name, false))
      this.emit('snapshot:created', snapshot)
      return snapshot
    })
  }

  /** Snapshots of a volume, oldest first (implicit ones that clones were made from included). */
  async listSnapshots (vol: VolumeRef): Promise<Snapshot[]> {
    this.#assertOpen()
    const { object, label } = this.#refObject(vol)
    await this.#check('listSnapshots', 'snapshot:read', object, label)
    const record = this.#catalog.resolve(vol)
    return this.#catalog.snapshots(record.id).map((snapshot) => this.#toSnapshot(snapshot))
  }

  /** One snapshot of a volume, by id or name. */
  async getSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>): Promise<Snapshot> {
    this.#assertOpen()
    const { object, label } = this.#refObject(vol)
    await this.#check('getSnapshot', 'snapshot:read', object, label)
    const record = this.#catalog.resolve(vol)
    return this.#toSnapshot(this.#catalog.resolveSnapshot(record, snapshot))
  }

  /**
   * Deletes a snapshot and frees the block versions only it kept (work proportional to those).
   * A snapshot that clones still read from is kept unless `force`: then each such clone first gets
   * its own copy of the data it shares. Waits for reads of the snapshot in flight.
   */
  async deleteSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>, options: { force?: boolean } = {}): Promise<void> {
    this.#assertOpen()
    const { object, label } = this.#refObject(vol)
    const snapshotName = typeof snapshot === 'string' ? snapshot : String((snapshot as { id?: unknown })?.id)
    await this.#guard('deleteSnapshot', 'snapshot:delete', object, `snapshot:${label.slice(7)}@${snapshotName}`, async () => { await this.#deleteSnapshot(vol, snapshot, options) }, options?.force === true ? { force: true } : undefined)
  }

  async #deleteSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>, options: { force?: boolean }): Promise<void> {
    const target = this.#catalog.resolveSnapshot(this.#catalog.resolve(vol), snapshot)
    const owner = this.#catalog.resolve(vol)
    if (this.#replication?.forwards(owner.id) === true) {
      await this.#forward(owner, { op: 'deleteSnapshot', snapshot: target.id, force: options?.force === true })
      return
    }
    const mounted = (): string[] => mountControl(this.#mounts).snapshotMounts(target.id).map((m) => m.path)
    if (mounted().length > 0 && options?.force !== true) throw new GalleonError('BUSY', `snapshot ${target.name} is mounted (${mounted().join(', ')}); unmount it first, or pass { force: true } to unmount and delete it`)
    // No new mount may attach to it from here; one being set up is waited for and looked at again.
    this.#goingAway.add(target.id)
    try {
      await mountControl(this.#mounts).settled()
      if (mounted().length > 0 && options?.force !== true) throw new GalleonError('BUSY', `snapshot ${target.name} was mounted meanwhile (${mounted().join(', ')}); unmount it, or pass { force: true }`)
      await mountControl(this.#mounts).release(target.volumeId, target.id)
      await this.#deleteSnapshotNow(vol, snapshot, options)
    } finally {
      this.#goingAway.delete(target.id)
    }
  }

  async #deleteSnapshotNow (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>, options: { force?: boolean }): Promise<void> {
    await this.#adminAfterMigration(this.#catalog.resolve(vol).id, async () => {
      const record = this.#catalog.resolve(vol)
      const found = this.#catalog.resolveSnapshot(record, snapshot)
      const clones = this.#catalog.clonesOf(record.id, found.id)
      if (clones.length > 0 && options?.force !== true) {
        throw new GalleonError('BUSY', `snapshot ${found.name} of volume ${record.name} is the source of clones (${names(clones)}); delete them first, or pass { force: true } to give each its own copy of the data`)
      }
      for (const clone of clones) {
        await this.#engine.flatten(this.#volumeBlocks(clone))
        await this.#catalog.updateVolume(clone.id, { source: undefined })
      }
      await this.#dropSnapshot(record, found)
    })
  }

  /**
   * Reverts a volume in place to a snapshot: afterwards it reads exactly as the snapshot did (bytes
   * past the snapshot's size, after an expansion, read as zeros; the volume keeps its size). Later
   * snapshots stay usable. Work is proportional to the blocks changed since the snapshot; I/O
   * waits meanwhile. Refused while writes are in flight. A crash mid-way is finished on open.
   */
  async restoreSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>): Promise<Volume> {
    this.#assertOpen()
    const { object, label } = this.#refObject(vol)
    const snapshotName = typeof snapshot === 'string' ? snapshot : String((snapshot as { id?: unknown })?.id)
    return await this.#guard('restoreSnapshot', 'snapshot:restore', object, `snapshot:${label.slice(7)}@${snapshotName}`, async () => await this.#restoreSnapshot(vol, snapshot))
  }

  async #restoreSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>): Promise<Volume> {
    const target = this.#catalog.resolve(vol)
    const wanted = this.#catalog.resolveSnapshot(target, snapshot)
    if (target.replication !== undefined) {
      if (this.#replication === undefined) throw new GalleonError('BACKEND_UNAVAILABLE', `volume ${target.name} is replicated, but this instance is not in a cluster now; join it to revert the volume`)
      // Reverted on the primary, which sends the revert to every copy in its change stream.
      if (this.#replication.forwards(target.id)) return (await this.#forward(target, { op: 'restoreSnapshot', snapshot: wanted.id })).header.volume as Volume
    }
    // Writes in flight when the call is made are refused now, however quickly they complete
    // while the call waits for its turn; those that start meanwhile are checked again below.
    this.#refuseRevertWhileWriting(target, this.#engine.volume(target.storageId))
    return await this.#adminAfterMigration(target.id, async () => {
      const record = this.#catalog.resolve(vol)
      const found = this.#catalog.resolveSnapshot(record, snapshot)
      if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
      const writer = mountControl(this.#mounts).mountsOf(record.id).find((m) => !m.readOnly)
      if (writer !== undefined) throw new GalleonError('BUSY', `volume ${record.name} is mounted read-write at ${writer.path}; unmount it before reverting it (a mounted file system would not expect its disk to change under it)`)
      const writers = mountControl(this.#mounts).directWriters(record.id)
      if (writers > 0) throw new GalleonError('BUSY', `volume ${record.name} has ${writers} writer(s): writable files open on it (openVolumeFile) or NBD clients connected read-write; close or disconnect them before reverting it`)
      const volume = this.#volumeBlocks(record)
      if (record.replication !== undefined && volume.replicator === undefined) throw new GalleonError('NOT_LEADER', `node ${this.#cluster?.nodeId ?? ''} is not the primary of volume ${record.name} (the role moved while the revert waited); retry it`)
      this.#refuseRevertWhileWriting(record, volume)
      // From the checks on, no mount or writable file can start (#mountTarget refuses it).
      this.#reverting.add(record.id)
      let reverted: number
      try {
        await this.#catalog.updateVolume(record.id, { revertTo: found.id })
        try {
          reverted = await this.#engine.revert(volume, viewOf(found) as View, volume.replicator === undefined ? undefined : (changed) => { volume.replicator?.record({ type: 'revert', snapshotId: found.id, blocks: changed }) })
        } catch (err) {
          // Part of the volume may be reverted already: it refuses I/O until a revert succeeds, and a
          // reopen does not silently finish this one over writes made in between.
          const message = err instanceof Error ? err.message : String(err)
          this.#revertFailures.set(record.id, message)
          this.emit('io:error', { volumeId: record.id, volumeName: record.name, operation: 'write', code: errorCode(err), message: `revert to snapshot ${found.name} failed: ${message}` })
          throw err
        }
      } finally {
        this.#reverting.delete(record.id)
      }
      this.#revertFailures.delete(record.id)
      const updated = await this.#catalog.updateVolume(record.id, { revertTo: undefined })
      const result = this.#volumeView(updated)
      this.emit('snapshot:restored', result, this.#toSnapshot(found), reverted)
      return result
    })
  }

  /**
   * Creates a writable volume that shares its source's blocks: a snapshot (`{ volume, snapshot }`),
   * or a live volume, of which an implicit snapshot is taken. O(1): nothing is copied. Writes to
   * either side never show on the other. The clone starts with the source's size and settings.
   */
  async cloneVolume (source: CloneSource, newName: string, options: { labels?: Record<string, string>, namespace?: string } = {}): Promise<Volume> {
    this.#assertOpen()
    checkVolumeName(newName)
    const from = this.#refObject(source)
    const fromSnapshot = isSnapshotObject(source) || (typeof source === 'object' && source !== null && 'snapshot' in source)
    const namespace = options?.namespace ?? from.object.namespace
    checkNamespace(namespace)
    const denied = this.#check('cloneVolume', fromSnapshot ? 'snapshot:read' : 'volume:read', from.object, from.label)
    if (denied !== undefined) await denied
    return await this.#guard('cloneVolume', 'volume:create', { namespace, volume: newName }, `volume:${namespace}/${newName}`, async () => await this.#cloneVolume(source, newName, namespace, options), { source: from.label })
  }

  async #cloneVolume (source: CloneSource, newName: string, namespace: string, options: { labels?: Record<string, string> }): Promise<Volume> {
    const labels = options?.labels === undefined ? undefined : checkLabels(options.labels)
    this.#readSource(source)
    const unreserve = this.#catalog.reserveName(newName, namespace)
    try {
      return await this.#adminAfterMigration(this.#readSource(source).record.id, async () => {
        const { record, snapshot: chosen } = this.#readSource(source)
        if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted; it cannot be cloned`)
        if (this.#replication?.forwards(record.id) === true) {
          // This node's copy may lag (or be mid-resync): clones are made where the primary is.
          throw new GalleonError('NOT_LEADER', `volume ${record.name} is replicated and its primary is node ${this.#replication.status(record.id)?.primary ?? 'unknown'}; clone it there (the clone is a 1-copy volume on that node)`)
        }
        // The clone is charged its full size in its source's pool, before the implicit snapshot is taken.
        const release = record.pool === undefined ? undefined : this.#pools.reserve(record.pool, chosen?.sizeBytes ?? record.sizeBytes, `clone ${newName} of ${record.name}`)
        let snapshot: SnapshotRecord | undefined
        let clone: VolumeRecord
        try {
          snapshot = chosen ?? await this.#takeSnapshot(record, this.#implicitName(record, newName), true)
          clone = await this.#newVolume({
            name: newName,
            namespace,
            type: record.type,
            state: VolumeState.Available,
            sizeBytes: snapshot.sizeBytes,
            blockSize: record.blockSize,
            storageClass: record.storageClass,
            // A clone of a replicated volume is a local volume of this node (its source's blocks are here).
            replicas: record.replication === undefined ? record.replicas : 1,
            accessModes: [...record.accessModes],
            labels: labels ?? { ...record.labels },
            // The source's own QoS policy too: a clone is no way around the limits set on its source.
            ...(record.qos === undefined ? {} : { qos: structuredClone(record.qos) }),
            source: { volumeId: record.id, snapshotId: snapshot.id },
            // A clone seals its own writes with its own key; it reads its source's blocks with the source's.
            encrypted: record.encrypted === true,
            ...(record.pool === undefined ? {} : { pool: record.pool })
          }, { source: this.#volumeBlocks(record), gen: snapshot.gen, sizeBytes: snapshot.sizeBytes })
        } catch (err) {
          if (chosen === undefined && snapshot !== undefined) await this.#dropSnapshot(record, snapshot).catch(() => {})
          throw err
        } finally {
          release?.()
        }
        const result = toVolume(clone)
        this.emit('volume:created', result)
        this.emit('volume:cloned', result, this.#toSnapshot(snapshot))
        return result
      })
    } finally {
      unreserve()
    }
  }

  /**
   * Which parts of a byte range of a volume (or snapshot) hold data and which read as zeros without
   * storing anything (never written, or trimmed), as extents in order, rounded out to whole blocks
   * and clipped to the range. What NBD block status and sparse copies are built on.
   */
  async getAllocation (source: ReadSource, offset: number, length: number): Promise<Array<{ offset: number, length: number, allocated: boolean }>> {
    this.#assertOpen()
    const denied = this.#refCheck('getAllocation', isSnapshotRef(source) ? 'snapshot:read' : 'volume:read', source)
    if (denied !== undefined) await denied
    const { record, snapshot } = this.#readSource(source)
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
    const { object, label } = this.#refObject(vol)
    await this.#check('listChangedBlocks', 'snapshot:read', object, label)
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

  /** Takes a snapshot and records it; undoes the engine side if recording fails. */
  /** `sizeBytes`: the size to record when it is not the volume's now (a copy rebuilding a primary's older snapshot). */
  async #takeSnapshot (record: VolumeRecord, name: string, implicit: boolean, id: string = randomUUID(), sizeBytes?: number): Promise<SnapshotRecord> {
    const volume = this.#ioVolume(record)
    // Writes a mount acknowledged but has not stored yet belong in the snapshot (like freezing a file system first).
    await mountControl(this.#mounts).quiesce(record.id)
    // On a replicated volume's primary the snapshot takes its place in the stream at its cut.
    const replicator = volume.replicator
    let recorded = false
    let gen: number
    try {
      gen = await this.#engine.snapshot(volume, replicator === undefined ? undefined : () => { replicator.record({ type: 'snapshot', id, name }); recorded = true })
    } catch (err) {
      if (recorded) replicator?.record({ type: 'delete-snapshot', id })
      throw err
    }
    try {
      return await this.#catalog.createSnapshot({ id, name, volumeId: record.id, gen, sizeBytes: Math.min(sizeBytes ?? volume.sizeBytes, volume.sizeBytes), implicit })
    } catch (err) {
      await this.#engine.dropSnapshot(volume, gen).catch(() => {})
      if (recorded) replicator?.record({ type: 'delete-snapshot', id })
      throw err
    }
  }

  /** Removes a snapshot's record (first, so a crash never leaves a record whose blocks are gone), then its blocks. */
  async #dropSnapshot (record: VolumeRecord, snapshot: SnapshotRecord): Promise<void> {
    this.#snapshotsGoing.add(snapshot.id)
    try {
      const readers = this.#snapshotReaders.get(snapshot.id)
      if (readers !== undefined) await new Promise<void>((resolve) => { readers.drained = resolve })
      const clones = this.#catalog.clonesOf(record.id, snapshot.id).map((clone) => clone.id)
      await this.#catalog.deleteSnapshot(snapshot)
      const volume = this.#volumeBlocks(record)
      volume.replicator?.record({ type: 'delete-snapshot', id: snapshot.id })
      await this.#engine.dropSnapshot(volume, snapshot.gen)
      this.emit('snapshot:deleted', { ...this.#toSnapshot(snapshot), clones })
    } finally {
      this.#snapshotsGoing.delete(snapshot.id)
    }
  }

  #implicitName (record: VolumeRecord, cloneName: string): string {
    const taken = new Set(this.#catalog.snapshots(record.id).map((snapshot) => snapshot.name))
    const base = `clone-${cloneName}`.slice(0, 56)
    let name = base
    for (let n = 2; taken.has(name); n++) name = `${base}-${n}`
    return name
  }

  #toSnapshot (record: SnapshotRecord): Snapshot {
    return {
      id: record.id,
      name: record.name,
      volumeId: record.volumeId,
      sizeBytes: record.sizeBytes,
      createdAt: record.createdAt,
      implicit: record.implicit,
      clones: this.#catalog.clonesOf(record.volumeId, record.id).map((clone) => clone.id)
    }
  }

  /** Keeps a snapshot's blocks alive for one read; refuses once its deletion began. */
  #pinSnapshot (snapshot: SnapshotRecord): () => void {
    if (this.#snapshotsGoing.has(snapshot.id)) throw new GalleonError('SNAPSHOT_NOT_FOUND', `snapshot ${snapshot.name} is being deleted`)
    let readers = this.#snapshotReaders.get(snapshot.id)
    if (readers === undefined) this.#snapshotReaders.set(snapshot.id, readers = { count: 0 })
    readers.count++
    return () => {
      const current = readers as { count: number, drained?: () => void }
      if (--current.count === 0) {
        this.#snapshotReaders.delete(snapshot.id)
        current.drained?.()
      }
    }
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

  #refuseRevertWhileWriting (record: VolumeRecord, volume: VolumeBlocks | undefined): void {
    if (volume !== undefined && (volume.tickets.size > 0 || volume.locks.size > 0)) {
      throw new GalleonError('BUSY', `volume ${record.name} is being written (${Math.max(volume.tickets.size, volume.locks.size)} writes in flight); stop its writers (unmount it) and retry the revert. Nothing was changed`)
    }
  }

  /** A read's target: a volume's live contents, or one of its snapshots. */
  #readSource (source: unknown): { record: VolumeRecord, snapshot?: SnapshotRecord } {
    if (isSnapshotObject(source)) {
      const record = this.#catalog.resolve(source.volumeId)
      return { record, snapshot: this.#catalog.resolveSnapshot(record, source.id) }
    }
    if (typeof source === 'object' && source !== null && 'snapshot' in source) {
      const ref = source as { volume?: unknown, snapshot?: unknown }
      const record = this.#catalog.resolve(ref.volume)
      return { record, snapshot: this.#catalog.resolveSnapshot(record, ref.snapshot) }
    }
    return { record: this.#catalog.resolve(source) }
  }

  /** A volume that may be written: a snapshot reference is refused with READ_ONLY. */
  #writable (target: unknown): VolumeRecord {
    if (isSnapshotObject(target) || (typeof target === 'object' && target !== null && 'snapshot' in target)) {
      throw new GalleonError('READ_ONLY', 'snapshots are read-only; write to the volume, or clone the snapshot (cloneVolume) to get a writable copy')
    }
    return this.#catalog.resolve(target)
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
    const { object, label } = this.#refObject(vol)
    await this.#checkTarget('createBackup', options)
    const details = { strategy: String(options?.strategy ?? 'full'), ...(options?.policy === undefined ? {} : { policy: String(options.policy) }) }
    return await this.#guard('createBackup', 'backup:create', object, label, async () => await this.#backups.create(vol, options), details)
  }

  /**
   * A principal may use the instance's backup target only: naming another one (any directory the
   * process can write, or a target holding forged manifests) takes `admin`.
   */
  /** Choosing a backup target takes `admin`; a denial is in the audit log before the call rejects. */
  async #checkTarget (action: string, options: { target?: unknown } | undefined): Promise<void> {
    if (options?.target === undefined) return
    const denied = this.#check(action, 'admin', undefined, 'backup-target')
    if (denied === undefined) return
    const who = (this.#context.getStore()?.principal as Principal).id
    await denied.catch((err: unknown) => { throw new GalleonError('PERMISSION_DENIED', `${who} may not choose a backup target: that takes "admin"; omit target to use the instance's`, { cause: err }) })
  }

  /**
   * The backup `backupId`, for a call needing `verb` on it. To a principal who may not `verb` the
   * backups of every namespace, an id that does not exist is denied like one it may not see, so the
   * answer does not tell which ids exist.
   */
  async #findBackup (action: string, verb: Verb, backupId: string, options: { target?: BackupTargetRef }): Promise<Backup> {
    try {
      return await this.#nested(async () => await this.#backups.get(backupId, options))
    } catch (err) {
      const everywhere = { namespace: '*', volume: '*' }
      if (errorCode(err) === 'BACKUP_NOT_FOUND') await this.#check(action, verb, everywhere, `backup:${String(backupId)}`)
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
    await this.#checkTarget('listBackups', options)
    return (await this.#nested(async () => await this.#backups.list(vol, options))).filter((backup) => this.#allowed('backup:read', this.#backupObject(backup)))
  }

  /** One backup by id. */
  async getBackup (backupId: string, options: { target?: BackupTargetRef } = {}): Promise<Backup> {
    this.#assertOpen()
    await this.#checkTarget('getBackup', options)
    const backup = await this.#findBackup('getBackup', 'backup:read', backupId, options)
    await this.#check('getBackup', 'backup:read', this.#backupObject(backup), `backup:${backup.id}`)
    return backup
  }

  /** Re-reads every chunk of a backup and of the backups it builds on, and checks each against its checksum. */
  async verifyBackup (backupId: string, options: { target?: BackupTargetRef } = {}): Promise<BackupVerification> {
    this.#assertOpen()
    await this.#checkTarget('verifyBackup', options)
    const backup = await this.#findBackup('verifyBackup', 'backup:read', backupId, options)
    await this.#check('verifyBackup', 'backup:read', this.#backupObject(backup), `backup:${backup.id}`)
    return await this.#backups.verify(backupId, options)
  }

  /**
   * Deletes a backup and every chunk no remaining backup references. A backup that later ones build
   * on is kept unless `force`, which deletes those too.
   */
  async deleteBackup (backupId: string, options: DeleteBackupOptions = {}): Promise<{ deletedBackups: string[], deletedChunks: number }> {
    this.#assertOpen()
    await this.#checkTarget('deleteBackup', options)
    const backup = await this.#findBackup('deleteBackup', 'backup:delete', backupId, options)
    return await this.#guard('deleteBackup', 'backup:delete', this.#backupObject(backup), `backup:${backup.id}`, async () => await this.#backups.delete(backupId, options), options?.force === true ? { force: true } : undefined)
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
    await this.#checkTarget('restoreBackup', options)
    const backup = await this.#findBackup('restoreBackup', 'backup:restore', backupId, options)
    // The restore writes somewhere: the caller must be allowed that too.
    if (options?.volume !== undefined) {
      const into = this.#refObject(options.volume)
      const denied = this.#check('restoreBackup', 'volume:write', into.object, into.label)
      if (denied !== undefined) await denied
      const mounts = await this.#nested(async () => this.#catalog.resolve(options.volume)).then((record) => mountControl(this.#mounts).mountsOf(record.id), () => [])
      if (mounts.length > 0) throw new GalleonError('BUSY', `volume ${mounts[0]?.volumeName} is mounted (${mounts.map((m) => m.path).join(', ')}); unmount it before restoring a backup over it`)
    } else {
      const namespace = options?.namespace ?? this.#catalog.currentNamespace()
      checkNamespace(namespace)
      const name = options?.name ?? `${backup.volumeName}-restored-${backup.id.slice(0, 8)}`
      const denied = this.#check('restoreBackup', 'volume:create', { namespace, volume: name }, `volume:${namespace}/${name}`)
      if (denied !== undefined) await denied
    }
    const into = options?.volume !== undefined ? this.#refObject(options.volume).label : `volume:${options?.namespace ?? this.#catalog.currentNamespace()}/${options?.name ?? `${backup.volumeName}-restored-${backup.id.slice(0, 8)}`}`
    return await this.#guard('restoreBackup', 'backup:restore', this.#backupObject(backup), `backup:${backup.id}`, async () => await this.#backups.restore(backupId, options), { into })
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
    return await this.#guard('createBackupPolicy', 'backup:schedule', undefined, `backup-policy:${String((policy as { name?: unknown })?.name)}`, async () => await this.#scheduler.create(policy))
  }

  /** Backup policies, by name. */
  async listBackupPolicies (): Promise<BackupPolicy[]> {
    this.#assertOpen()
    await this.#check('listBackupPolicies', 'backup:read', undefined, 'backup-policies')
    return this.#scheduler.list()
  }

  /** One backup policy with its run record. */
  async getBackupPolicy (name: string): Promise<BackupPolicy> {
    this.#assertOpen()
    await this.#check('getBackupPolicy', 'backup:read', undefined, `backup-policy:${String(name)}`)
    return this.#scheduler.get(name)
  }

  /** Deletes a backup policy (its backups stay); waits for a run in progress. */
  async deleteBackupPolicy (name: string): Promise<void> {
    this.#assertOpen()
    await this.#guard('deleteBackupPolicy', 'backup:schedule', undefined, `backup-policy:${String(name)}`, async () => { await this.#scheduler.delete(name) })
  }

  /** Sets (or clears) the hook functions of a policy, which are not stored: call this again after each open. */
  setBackupPolicyHooks (name: string, hooks: BackupHooks | undefined): void {
    this.#assertOpen()
    this.#checkSync('setBackupPolicyHooks', 'backup:schedule', undefined, `backup-policy:${String(name)}`)
    this.#scheduler.setHooks(name, hooks)
  }

  /** Runs a policy now, outside its schedule (backups, then pruning). */
  async runBackupPolicy (name: string): Promise<BackupPolicyRun> {
    this.#assertOpen()
    return await this.#guard('runBackupPolicy', 'backup:schedule', undefined, `backup-policy:${String(name)}`, async () => (await this.#scheduler.run(name, false))[0] as BackupPolicyRun)
  }

  /** Runs every policy whose scheduled time has come (the scheduler's timer does this by itself; useful with a controlled clock). */
  async runDueBackupPolicies (): Promise<BackupPolicyRun[]> {
    this.#assertOpen()
    const denied = this.#check('runDueBackupPolicies', 'backup:schedule', undefined, 'backup-policies')
    if (denied !== undefined) await denied
    return await this.#scheduler.runDue()
  }

  // ---------------------------------------------------------------- encryption

  /** How a volume is encrypted: key versions, the KEK id, a rotation in progress. */
  async getVolumeEncryption (vol: VolumeRef): Promise<VolumeEncryption> {
    this.#assertOpen()
    const { object, label } = this.#refObject(vol)
    await this.#check('getVolumeEncryption', 'volume:read', object, label)
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
    const { object, label } = this.#refObject(vol)
    return await this.#guard('rotateVolumeKey', 'volume:write', object, label, async () => await this.#rotateVolumeKey(vol, options))
  }

  async #rotateVolumeKey (vol: VolumeRef, options: { wait?: boolean }): Promise<VolumeEncryption> {
    const record = this.#catalog.resolve(vol)
    if (record.encrypted !== true) throw new GalleonError('INVALID_ARGUMENT', `volume ${record.name} is not encrypted, so it has no data key to rotate`)
    const volume = this.#ioVolume(record)
    if (volume.cipher?.unavailable !== undefined) throw volume.cipher.unavailable
    if (this.#migrations.has(record.id)) throw new GalleonError('BUSY', `volume ${record.name} is being migrated; rotate its key once the migration ends (a move to an encrypting class gives it a new data key anyway)`)
    const previous = this.#rotations.get(record.id)
    if (previous !== undefined) {
      if (this.#keys.rotation(record.id) !== undefined) {
        throw new GalleonError('BUSY', `volume ${record.name} is already re-encrypting with a new key; wait for it (getVolumeEncryption shows the progress)`)
      }
      // The previous rotation has re-encrypted everything (getVolumeEncryption says so) and is
      // retiring the old key: a new one starts once that is done.
      await previous
      if (this.#rotations.has(record.id)) throw new GalleonError('BUSY', `volume ${record.name} is already re-encrypting with a new key; wait for it (getVolumeEncryption shows the progress)`)
    }
    // A rotation that stopped (an error was reported) is resumed, not started over.
    if (this.#keys.rotation(record.id) === undefined) await this.#keys.beginRotation(record.id, volume.cipher as NonNullable<VolumeBlocks['cipher']>)
    const running = this.#startRotation(record)
    if (options?.wait === true) await running
    const state = this.#keys.describe(record.id, volume.cipher)
    if (options?.wait === true && state.rotation !== undefined) throw new GalleonError('IO_ERROR', `the re-encryption of volume ${record.name} stopped before it finished; it resumes at the next open`)
    return state
  }

  /** Runs (or resumes) the background re-encryption of a volume after a DEK rotation. */
  #startRotation (record: VolumeRecord): Promise<void> {
    const existing = this.#rotations.get(record.id)
    if (existing !== undefined) return existing
    // Background work of the instance: it does not run as the caller that started it.
    const run = this.#context.exit(async () => {
      const volume = this.#volumeBlocks(record)
      const cipher = volume.cipher
      const rotation = this.#keys.rotation(record.id)
      if (cipher === undefined || rotation === undefined) return
      try {
        await this.#engine.reseal(volume, rotation.cursor, async (next) => {
          await this.#keys.advanceRotation(record.id, next)
          if (this.#closed) throw new GalleonError('CANCELLED', 'the instance is closing; the re-encryption resumes at the next open')
        })
        const retired = await this.#keys.finishRotation(record.id)
        // Reads that fetched a block before it was re-sealed may still open it with the old key:
        // let those in flight finish (new ones wait a moment), then forget the old keys.
        const open = await volume.closeGate()
        try {
          for (const version of retired) cipher.dropKey(version)
        } finally {
          open()
        }
        this.emit('volume:key-rotated', toVolume(this.#catalog.resolve(record.id)), this.#keys.describe(record.id, cipher).keyVersion as number)
      } catch (err) {
        if (this.#closed || (err instanceof GalleonError && (err.code === 'CANCELLED' || err.code === 'VOLUME_NOT_FOUND'))) return
        this.emit('io:error', { volumeId: record.id, volumeName: record.name, operation: 'write', code: errorCode(err), message: `re-encryption with the new data key stopped (it resumes at the next open): ${(err as Error)?.message ?? String(err)}` })
      } finally {
        this.#rotations.delete(record.id)
      }
    })
    this.#rotations.set(record.id, run)
    return run
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
    return await this.#guard('rotateKeyEncryptionKey', 'admin', undefined, 'instance', async () => await this.#admin(async () => {
      const current = await this.#keys.provider()
      let next: KeyProvider
      if (options.keyProvider !== undefined) {
        const provider = options.keyProvider
        if (provider === null || typeof provider !== 'object' || typeof provider.wrap !== 'function' || typeof provider.unwrap !== 'function' || typeof provider.keyId !== 'string' || typeof provider.name !== 'string') {
          throw new GalleonError('INVALID_ARGUMENT', `keyProvider must implement { name, keyId, wrap(dek, context), unwrap(wrapped, context) }, got ${describe(provider)}`)
        }
        next = provider
      } else if (options.passphrase !== undefined) {
        if (!(current instanceof PassphraseKeyProvider)) throw new GalleonError('INVALID_ARGUMENT', `this instance uses the ${current.name} key provider, not a passphrase; pass { keyProvider } to move its keys elsewhere`)
        next = await current.change(options.passphrase)
      } else if (current instanceof InternalKeyProvider) {
        next = await current.rotate()
      } else {
        throw new GalleonError('INVALID_ARGUMENT', `the ${current.name} key provider cannot make a new key by itself; pass { keyProvider } (or { passphrase } for the passphrase provider)`)
      }
      let rewrapped: number
      try {
        rewrapped = await this.#keys.rewrapAll(next)
      } catch (err) {
        // The new salt file is in place already (so that a crash mid-way leaves keys it can open):
        // put the old passphrase back, or say plainly that the new one is now the one that opens.
        if (!(current instanceof PassphraseKeyProvider) || next === current) throw err
        const reason = (err as Error)?.message ?? String(err)
        try {
          await current.reinstate(next as PassphraseKeyProvider)
        } catch (undo) {
          throw new GalleonError(errorCode(err), `the passphrase change failed while re-wrapping the keys (${reason}), and the old salt file could not be put back (${(undo as Error).message}): the storage now opens with the NEW passphrase; run the change again to finish it`, { cause: err })
        }
        throw new GalleonError(errorCode(err), `the passphrase change failed while re-wrapping the keys, so the old passphrase stays: ${reason}`, { cause: err })
      }
      return { keyId: next.keyId, provider: next.name, rewrapped }
    }))
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
    this.#assertApplication('as')
    const context: CallContext = { principal: checkPrincipal(principal), nested: false }
    return new Proxy(this, {
      get: (target, prop) => {
        if (prop === 'principal') return context.principal
        // The cluster manager acts for the node, unchecked: a principal uses clusterStatus() and the like.
        if (prop === 'cluster') return undefined
        if (prop === 'mounts') {
          // The mount manager's calls act as the principal too.
          const mounts = target.#mounts
          return new Proxy(mounts, {
            get: (m, key) => {
              const member = Reflect.get(m, key, m) as unknown
              return typeof member === 'function' ? (...args: unknown[]) => this.#context.run(context, () => (member as (...a: unknown[]) => unknown).apply(m, args)) : member
            }
          })
        }
        const value = Reflect.get(target, prop, target) as unknown
        if (typeof value !== 'function') return value
        // Events are the application's: they carry every namespace's volumes.
        if (typeof prop === 'string' && EVENT_METHODS.has(prop)) {
          return () => { throw new GalleonError('PERMISSION_DENIED', `${context.principal?.id ?? 'a principal'} may not use ${prop}(): events are instance-wide; listen on the application's GalleonFS object`) }
        }
        return (...args: unknown[]) => this.#context.run(context, () => (value as (...a: unknown[]) => unknown).apply(target, args))
      }
    })
  }

  /** Runs `task` with every call it makes on this instance acting as `principal` (see `as`). */
  async runAs<T> (principal: Principal, task: () => Promise<T>): Promise<T> {
    this.#assertApplication('runAs')
    const context: CallContext = { principal: checkPrincipal(principal), nested: false }
    if (typeof task !== 'function') throw new GalleonError('INVALID_ARGUMENT', `runAs() needs a function to run, got ${describe(task)}`)
    return await this.#context.run(context, task)
  }

  /** Only the application itself may act as principals (a principal must not become another). */
  #assertApplication (call: string): void {
    const principal = this.#context.getStore()?.principal
    if (principal !== undefined) throw new GalleonError('PERMISSION_DENIED', `${principal.id} may not call ${call}(): only the application acts as other principals`)
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
    return await this.#guard('createAccessPolicy', 'admin', undefined, `access-policy:${policy.name}`, async () => {
      await this.#access.put(policy)
      return policy
    })
  }

  /** Access policies, by name. */
  async listAccessPolicies (): Promise<AccessPolicy[]> {
    this.#assertOpen()
    await this.#check('listAccessPolicies', 'admin', undefined, 'access-policies')
    return this.#access.policies()
  }

  /** Deletes an access policy. Deleting the last one turns enforcement off (everything is allowed). */
  async deleteAccessPolicy (name: string): Promise<void> {
    this.#assertOpen()
    await this.#guard('deleteAccessPolicy', 'admin', undefined, `access-policy:${String(name)}`, async () => {
      if (typeof name !== 'string' || this.#access.policy(name) === undefined) throw new GalleonError('INVALID_ARGUMENT', `no access policy named ${describe(name)}; listAccessPolicies() shows them`)
      await this.#access.delete(name)
    })
  }

  /** Audit entries (oldest first) by time range, principal, object (a `prefix*` works), action or result. */
  async queryAuditLog (query: AuditQuery = {}): Promise<AuditEntry[]> {
    this.#assertOpen()
    await this.#check('queryAuditLog', 'admin', undefined, 'audit-log')
    return await this.#audit.query(query)
  }

  /**
   * Checks the audit log's hash chain end to end: an edited, removed or reordered entry is reported.
   * Pass a head saved earlier (`auditHead()`) to detect a rewrite of the whole log as well.
   */
  async verifyAuditLog (expectedHead?: { seq: number, hash: string }): Promise<AuditVerification> {
    this.#assertOpen()
    await this.#check('verifyAuditLog', 'admin', undefined, 'audit-log')
    return await this.#audit.verify(expectedHead)
  }

  /** The last audit entry's sequence number and hash: keep copies outside to anchor the log. */
  async auditHead (): Promise<{ seq: number, hash: string }> {
    this.#assertOpen()
    await this.#check('auditHead', 'admin', undefined, 'audit-log')
    return this.#audit.head()
  }

  /** The access object of a volume record, and how audit entries name it. */
  #volumeObject (record: VolumeRecord): { object: AccessObject, label: string } {
    const namespace = namespaceOf(record)
    return { object: { namespace, volume: record.name }, label: `volume:${namespace}/${record.name}` }
  }

  /**
   * The access object a volume reference names, found without failing: a caller is told
   * PERMISSION_DENIED before it can learn whether a volume it may not see exists.
   */
  #refObject (ref: unknown): { object: AccessObject, label: string } {
    let id: unknown = ref
    if (isSnapshotObject(ref)) id = ref.volumeId
    else if (typeof ref === 'object' && ref !== null && 'snapshot' in ref) id = (ref as { volume?: unknown }).volume
    if (typeof id === 'object' && id !== null) id = (id as { id?: unknown }).id
    const text = typeof id === 'string' ? id : String(id)
    try {
      return this.#volumeObject(this.#catalog.resolve(text))
    } catch {
      const slash = text.indexOf('/')
      const namespace = slash > 0 ? text.slice(0, slash) : this.#catalog.currentNamespace()
      const volume = slash > 0 ? text.slice(slash + 1) : text
      return { object: { namespace, volume }, label: `volume:${namespace}/${volume}` }
    }
  }

  /**
   * Whether the caller may `verb` on `object`. The application itself always may, and so may calls
   * made inside a call that was checked already.
   */
  #allowed (verb: Verb, object: AccessObject | undefined): boolean {
    const context = this.#context.getStore()
    if (context === undefined || context.nested || context.principal === undefined) return true
    return this.#access.allows(context.principal, verb, object)
  }

  /**
   * Checks the caller may `verb` on `object`; a denial is audited, then thrown as PERMISSION_DENIED.
   * Returns undefined when allowed (no await on the I/O path), else a rejected promise.
   */
  #check (action: string, verb: Verb, object: AccessObject | undefined, label: string): Promise<never> | undefined {
    if (this.#allowed(verb, object)) return undefined
    const principal = this.#context.getStore()?.principal as Principal
    let denial: unknown
    try { this.#access.check(principal, verb, object) } catch (err) { denial = err }
    return (async () => {
      await this.#audit.append({ principal: principal.id, roles: principal.roles, groups: principal.groups, action, verb, object: label, result: 'denied', code: 'PERMISSION_DENIED' })
      throw denial
    })()
  }

  /** Runs `task` as part of the current call: what it calls is not checked or audited on its own. */
  async #nested<T> (task: () => Promise<T>): Promise<T> {
    const context = this.#context.getStore()
    if (context === undefined || context.nested) return await task()
    return await this.#context.run({ principal: context.principal, nested: true }, task)
  }

  /**
   * `#check` on the I/O path, on the volume a reference names, before the reference is resolved
   * (so a denied caller learns nothing about what exists). Nothing to do for the application.
   */
  #refCheck (action: string, verb: Verb, ref: unknown): Promise<never> | undefined {
    const context = this.#context.getStore()
    if (context === undefined || context.nested || context.principal === undefined) return undefined
    const { object, label } = this.#refObject(ref)
    return this.#check(action, verb, object, label)
  }

  /**
   * `#check` for the few calls that are synchronous (they cannot wait for the log): throws
   * PERMISSION_DENIED at once and records the denial in the audit log in the background. Async
   * calls await `#check` instead, so a denial is logged before the caller hears of it.
   */
  #checkSync (action: string, verb: Verb, object: AccessObject | undefined, label: string): void {
    if (this.#allowed(verb, object)) return
    void this.#check(action, verb, object, label)?.catch(() => {})
    this.#access.check(this.#context.getStore()?.principal as Principal, verb, object)
  }

  /**
   * A checked and audited call: the caller must be allowed `verb` on `object`; `task` then runs as
   * part of this call (the calls it makes are not checked or audited again), and its outcome is
   * recorded in the audit log.
   */
  async #guard<T> (action: string, verb: Verb, object: AccessObject | undefined, label: string, task: () => Promise<T>, details?: Record<string, string | number | boolean>): Promise<T> {
    const context = this.#context.getStore()
    if (context?.nested === true) return await task()
    const denied = this.#check(action, verb, object, label)
    if (denied !== undefined) await denied
    const principal = context?.principal
    const who = { principal: principal?.id ?? 'application', ...(principal === undefined ? {} : { roles: principal.roles, groups: principal.groups }) }
    let result: T
    try {
      // The application itself (no context) is allowed everything, nested or not, so its calls need
      // no context: entering one would switch on AsyncLocalStorage's promise hooks for the rest of
      // the process, a cost on every promise of the I/O path (about 5% of a 4 KiB write).
      result = context === undefined ? await task() : await this.#context.run({ principal, nested: true }, task)
    } catch (err) {
      await this.#audit.append({ ...who, action, verb, object: label, result: 'failed', code: errorCode(err), ...(details === undefined ? {} : { details }) }).catch(() => {})
      throw err
    }
    await this.#audit.append({ ...who, action, verb, object: label, result: 'ok', ...(details === undefined ? {} : { details }) })
    return result
  }

  // ---------------------------------------------------------------- replication

  /**
   * How a volume's replication stands as this node sees it: the primary and its epoch, the nodes
   * holding copies and those in sync, and on the primary each copy's link (lag, bytes shipped,
   * resync progress). A volume with one copy reports just this node.
   */
  async replicationStatus (vol: VolumeRef): Promise<ReplicationStatus> {
    this.#assertOpen()
    const { object, label } = this.#refObject(vol)
    await this.#check('replicationStatus', 'volume:read', object, label)
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

  /**
   * A replicated volume whose copy here replication no longer tracks (moved to another node, or
   * replaced while this node was away) is on its way out: its local blocks are not kept in step,
   * so I/O on them would be lost or stale.
   */
  #assertCopyHeld (record: VolumeRecord): void {
    if (record.replication !== undefined && this.#replication !== undefined && !this.#replication.holds(record.id)) {
      throw new GalleonError('VOLUME_NOT_FOUND', `the copy of volume ${record.name} on this node was moved or replaced and is being deleted; use a node that holds the volume (replicationStatus on one lists them)`)
    }
  }

  /** A write refused because this node is handing the volume's primary role over: it goes to the next primary. */
  #handedOver (record: VolumeRecord, err: unknown): boolean {
    return record.replication !== undefined && err instanceof GalleonError && err.code === 'NOT_LEADER' && this.#replication?.forwards(record.id) === true
  }


  /** Sends an I/O call on a replicated volume to its primary. */
  async #forward (record: VolumeRecord, request: ForwardedRequest, payload?: Uint8Array): Promise<{ header: Readonly<Record<string, unknown>>, payload?: Uint8Array }> {
    const replication = this.#replication
    if (replication === undefined) throw new GalleonError('BACKEND_UNAVAILABLE', `volume ${record.name} is replicated, but this instance is not in a cluster now`)
    try {
      return await replication.forward(record.id, request, payload)
    } catch (err) {
      // This node became the primary while the call waited for one: it runs here.
      if (err instanceof GalleonError && err.code === 'NOT_LEADER' && !replication.forwards(record.id) && replication.holds(record.id)) return await this.#serveForwarded(record.id, request, payload)
      throw this.#ioFailed(record, request.op === 'read' || request.op === 'readBlock' ? 'read' : request.op === 'trim' ? 'trim' : request.op === 'flush' ? 'flush' : 'write', err)
    }
  }

  /** Runs an I/O call another node forwarded to this one (the primary), outside any caller's context. */
  async #serveForwarded (volumeId: string, request: ForwardedRequest, payload: Uint8Array | undefined): Promise<{ header: Record<string, unknown>, payload?: Uint8Array }> {
    return await this.#context.exit(async () => {
      const source = (): ReadSource => request.readSnapshot === undefined ? volumeId : { volume: volumeId, snapshot: { id: request.readSnapshot } }
      const data = payload ?? new Uint8Array(0)
      const concern = (request.concern ?? WriteConcern.WriteAcknowledged) as WriteConcern
      switch (request.op) {
        case 'write': await this.write(volumeId, request.offset as number, data, concern); return { header: {} }
        case 'writeBlock': await this.writeBlock(volumeId, request.index as number, data, concern); return { header: {} }
        case 'trim': await this.trim(volumeId, request.offset as number, request.length as number); return { header: {} }
        case 'read': return { header: {}, payload: await this.read(source(), request.offset as number, request.length as number) }
        case 'readBlock': return { header: {}, payload: await this.readBlock(source(), request.index as number) }
        case 'flush': await this.flush(volumeId); return { header: {} }
        case 'createSnapshot': return { header: { snapshot: await this.createSnapshot(volumeId, String(request.snapshotName)) } }
        case 'deleteSnapshot': await this.deleteSnapshot(volumeId, { id: String(request.snapshot) }, { force: request.force === true }); return { header: {} }
        case 'deleteVolume': await this.deleteVolume(volumeId, { force: request.force === true }); return { header: {} }
        case 'expandVolume': return { header: { volume: await this.expandVolume(volumeId, request.sizeBytes as number) } }
        case 'restoreSnapshot': return { header: { volume: await this.restoreSnapshot(volumeId, { id: String(request.snapshot) }) } }
        default: throw new GalleonError('INVALID_ARGUMENT', `unknown forwarded operation ${JSON.stringify((request as { op?: unknown }).op)}`)
      }
    })
  }

  #recordById (id: string): VolumeRecord | undefined {
    try {
      return this.#catalog.resolve(id)
    } catch {
      return undefined
    }
  }

  /** What replication uses of this instance. */
  #replicationHost (): ReplicationHost {
    return {
      engine: this.#engine,
      localCopies: () => this.#catalog.volumes().filter((r) => r.replication !== undefined && r.state !== VolumeState.Deleting).map((r) => ({ id: r.id, position: r.replication as { epoch: number, seq: number } })),
      blocks: (id) => {
        const record = this.#recordById(id)
        return record === undefined || record.state === VolumeState.Deleting ? undefined : this.#volumeBlocks(record)
      },
      createCopy: async (spec) => {
        await this.#admin(async () => {
          if (this.#recordById(spec.id) !== undefined) return
          const storageClass = this.#catalog.storageClass(spec.storageClass)
          if (storageClass === undefined) throw new GalleonError('STORAGE_CLASS_NOT_FOUND', `node ${this.#cluster?.nodeId ?? ''} has no storage class ${spec.storageClass}, which volume ${spec.name} uses; create it on every node`)
          if (spec.blockSize !== this.#engine.blockSize) throw new GalleonError('INVALID_ARGUMENT', `volume ${spec.name} has ${spec.blockSize}-byte blocks, this node ${this.#engine.blockSize}-byte ones; every node of a cluster needs the same block size`)
          const encrypted = storageClass.parameters.encryption === 'true'
          if (encrypted) await this.#keys.provider()
          const unreserve = this.#catalog.reserveName(spec.name, spec.namespace)
          let record: VolumeRecord
          try {
            // A copy counts in this node's pool of the same name, if it has one; it is never refused for
            // space here: the cluster placed it, and the primary's node checked its pool.
            const pool = spec.pool !== undefined && this.#catalog.pool(spec.pool) !== undefined ? { pool: spec.pool } : {}
            record = await this.#newVolume({ id: spec.id, name: spec.name, namespace: spec.namespace, type: spec.type, state: VolumeState.Available, sizeBytes: spec.sizeBytes, blockSize: spec.blockSize, storageClass: spec.storageClass, replicas: spec.replicas, accessModes: [...spec.accessModes], labels: { ...spec.labels }, encrypted, replication: { epoch: 0, seq: 0 }, ...pool, ...(spec.qos === undefined ? {} : { qos: spec.qos }) })
          } finally {
            unreserve()
          }
          this.emit('volume:created', toVolume(record))
        })
      },
      // A conversion of the copy (see #convergeCopy) is cancelled by what changes its snapshots,
      // size or existence; it starts again afterwards.
      deleteCopy: async (id) => {
        await this.#adminAfterMigration(id, async () => {
          const record = this.#recordById(id)
          if (record === undefined || record.state === VolumeState.Deleting) return
          await mountControl(this.#mounts).release(id)
          await this.#destroy(record, true)
        }, 'this copy is being deleted')
      },
      savePosition: async (id, position) => {
        if (this.#closed && this.#closing === undefined) return
        const record = this.#recordById(id)
        if (record === undefined || record.state === VolumeState.Deleting) return
        await this.#catalog.updateVolume(id, { replication: position }, { sync: false })
      },
      snapshots: (id) => this.#catalog.snapshots(id).map((snapshot) => ({ id: snapshot.id, name: snapshot.name, gen: snapshot.gen, sizeBytes: snapshot.sizeBytes })),
      applySnapshot: async (id, snapshotId, name, sizeBytes) => {
        await this.#adminAfterMigration(id, async () => {
          const record = this.#catalog.resolve(id)
          if (this.#catalog.snapshotById(snapshotId) !== undefined) return
          // A snapshot of that name with another id is one the primary no longer has.
          const stale = this.#catalog.snapshots(id).find((snapshot) => snapshot.name === name)
          if (stale !== undefined) await this.#dropReplicaSnapshot(record, stale)
          this.emit('snapshot:created', this.#toSnapshot(await this.#takeSnapshot(record, name, false, snapshotId, sizeBytes)))
        }, 'the primary took a snapshot; the conversion of this copy starts again after it')
      },
      applyDeleteSnapshot: async (id, snapshotId) => {
        await this.#adminAfterMigration(id, async () => {
          const snapshot = this.#catalog.snapshotById(snapshotId)
          if (snapshot === undefined || snapshot.volumeId !== id) return
          await this.#dropReplicaSnapshot(this.#catalog.resolve(id), snapshot)
        }, 'the primary deleted a snapshot; the conversion of this copy starts again after it')
      },
      applyExpand: async (id, sizeBytes) => { await this.#applyExpand(id, sizeBytes) },
      copyLayout: (id, retry) => {
        const record = this.#recordById(id)
        const failed = this.#copyConversionErrors.get(id)
        const spec = this.#replication?.spec(id)
        const held = record === undefined || record.state === VolumeState.Deleting ? undefined : record
        const layout = {
          ...(held === undefined ? {} : { storageClass: held.storageClass }),
          busy: this.#copyConversions.has(id),
          ...(spec === undefined ? {} : { spec: { storageClass: spec.storageClass, ...(spec.pool === undefined ? {} : { pool: spec.pool }) } }),
          converged: held !== undefined && spec !== undefined && this.#copyMatches(held, spec),
          ...(failed === undefined ? {} : { error: { code: failed.code, message: failed.message } })
        }
        if (retry && failed !== undefined && spec !== undefined) this.#convergeCopy(id, spec, true)
        return layout
      },
      applySpec: (id, spec) => {
        this.#applySpecQoS(id, spec)
        this.#convergeCopy(id, spec)
        // A copy promoted before the expansion reached it grows to the size its record says.
        const held = this.#recordById(id)
        if (held !== undefined && spec.sizeBytes > held.sizeBytes) void this.#applyExpand(id, spec.sizeBytes).catch(() => {})
      },
      applyRevert: async (id, snapshotId) => {
        await this.#adminAfterMigration(id, async () => {
          const record = this.#catalog.resolve(id)
          const snapshot = this.#catalog.snapshotById(snapshotId)
          // A copy without the snapshot has diverged: failing the change makes the primary resync it.
          if (snapshot === undefined || snapshot.volumeId !== id) throw new GalleonError('SNAPSHOT_NOT_FOUND', `node ${this.#cluster?.nodeId ?? ''} has no copy of snapshot ${snapshotId} of volume ${record.name} to revert to`)
          const reverted = await this.#engine.revert(this.#volumeBlocks(record), viewOf(snapshot) as View)
          this.emit('snapshot:restored', this.#volumeView(record), this.#toSnapshot(snapshot), reverted)
        }, 'the primary reverted the volume; the conversion of this copy starts again after it')
      },
      exclusive: async (task) => await this.#admin(task),
      serveForwarded: async (id, request, payload) => await this.#serveForwarded(id, request, payload),
      emit: (event, payload) => { (this.emit as (event: string, ...args: unknown[]) => boolean)(event, payload) }
    }
  }

  /** Drops a snapshot of a replica copy as its primary did: clones made from it here get their own copy first. */
  async #dropReplicaSnapshot (record: VolumeRecord, snapshot: SnapshotRecord): Promise<void> {
    await mountControl(this.#mounts).release(record.id, snapshot.id)
    for (const clone of this.#catalog.clonesOf(record.id, snapshot.id)) {
      await this.#engine.flatten(this.#volumeBlocks(clone))
      await this.#catalog.updateVolume(clone.id, { source: undefined })
    }
    await this.#dropSnapshot(record, snapshot)
  }

  // ---------------------------------------------------------------- internals

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

/** What another node needs to create its copy of a volume. */
function withoutQoS (spec: VolumeSpec): VolumeSpec {
  const { qos: _qos, ...rest } = spec
  return rest
}

/** How #migrateVolume lays a volume out without the rest of a class change (see there). */
interface MigrationLayout {
  readonly pool: string | undefined
  readonly replicas: number
  readonly copy: boolean
}

function specOf (record: VolumeRecord): VolumeSpec {
  return { id: record.id, name: record.name, namespace: namespaceOf(record), type: record.type, sizeBytes: record.sizeBytes, blockSize: record.blockSize, storageClass: record.storageClass, replicas: record.replicas, accessModes: [...record.accessModes], labels: { ...record.labels }, ...(record.pool === undefined ? {} : { pool: record.pool }), ...(record.qos === undefined ? {} : { qos: record.qos }) }
}

function toVolume (record: VolumeRecord): Volume {
  return {
    id: record.id,
    name: record.name,
    namespace: namespaceOf(record),
    type: record.type,
    state: record.state,
    sizeBytes: record.sizeBytes,
    blockSize: record.blockSize,
    storageClass: record.storageClass,
    replicas: record.replicas,
    encrypted: record.encrypted === true,
    accessModes: [...record.accessModes],
    labels: { ...record.labels },
    createdAt: record.createdAt,
    updatedAt: record.updatedAt,
    ...(record.source === undefined ? {} : { source: { ...record.source } }),
    ...(record.qos === undefined ? {} : { qos: structuredClone(record.qos) }),
    ...(record.pool === undefined ? {} : { pool: record.pool })
  }
}

function checkLabels (labels: unknown): Record<string, string> {
  if (labels === null || typeof labels !== 'object' || Array.isArray(labels)) {
    throw new GalleonError('INVALID_ARGUMENT', `labels must be an object of string values, got ${describe(labels)}`)
  }
  const out: Record<string, string> = {}
  for (const [key, value] of Object.entries(labels)) {
    if (!/^[A-Za-z0-9]([A-Za-z0-9_./-]{0,251}[A-Za-z0-9])?$/.test(key)) throw new GalleonError('INVALID_ARGUMENT', `label key ${describe(key)} must be 1-253 letters, digits, '-', '_', '.', '/'`)
    if (typeof value !== 'string' || value.length > 253) throw new GalleonError('INVALID_ARGUMENT', `label ${key} must have a string value of at most 253 characters, got ${describe(value)}`)
    out[key] = value
  }
  return out
}

/** The engine view of a snapshot record (undefined: the live volume). */
function viewOf (snapshot: SnapshotRecord | undefined): View | undefined {
  return snapshot === undefined ? undefined : { gen: snapshot.gen, sizeBytes: snapshot.sizeBytes }
}

/** A Snapshot object as returned by the API (has an id and a volumeId). */
/** Whether a read source names a snapshot rather than a live volume. */
function isSnapshotRef (source: unknown): boolean {
  return isSnapshotObject(source) || (typeof source === 'object' && source !== null && 'snapshot' in source)
}

function isSnapshotObject (value: unknown): value is Pick<Snapshot, 'id' | 'volumeId'> {
  return typeof value === 'object' && value !== null && typeof (value as { id?: unknown }).id === 'string' && typeof (value as { volumeId?: unknown }).volumeId === 'string'
}

function checkSnapshotName (name: unknown): asserts name is string {
  if (typeof name !== 'string' || !/^[A-Za-z0-9]([A-Za-z0-9_.:@-]{0,61}[A-Za-z0-9])?$/.test(name)) {
    throw new GalleonError('INVALID_ARGUMENT', `snapshot name must be 1-63 letters, digits, '-', '_', '.', ':' or '@', starting and ending with a letter or digit, got ${describe(name)}`)
  }
}

/** Key-record id under which a migration's destination keys are staged until the switch-over. */
function migrationKeyId (volumeId: string): string {
  return `migration:${volumeId}`
}

function names (records: readonly VolumeRecord[]): string {
  return records.slice(0, 5).map((record) => record.name).join(', ') + (records.length > 5 ? `, and ${records.length - 5} more` : '')
}


/** README.txt of a mount point: the volume's facts for a person. */
function renderReadme (facts: Record<string, unknown>): string {
  const volume = facts.volume as Volume
  const snapshot = facts.snapshot as Snapshot | undefined
  const encryption = facts.encryption as VolumeEncryption
  const lines = [
    `GalleonFS volume ${volume.namespace}/${volume.name}${snapshot === undefined ? '' : ` (snapshot ${snapshot.name}, read-only)`}`,
    '',
    'data                  the volume\'s bytes: read and write it like a disk image (dd, cmp, fio, mkfs + a loop device)',
    '.galleonfs_metadata   these facts as JSON',
    '',
    `id            ${volume.id}`,
    `size          ${String(facts.sizeBytes)} bytes in blocks of ${String(facts.blockSize)}`,
    `type          ${volume.type}`,
    `storage class ${volume.storageClass} (replicas: ${volume.replicas})`,
    `access modes  ${volume.accessModes.join(', ')}`,
    `encrypted     ${encryption.encrypted ? `yes, AES-256-GCM, data key version ${String(encryption.keyVersion)}` : 'no'}`,
    `created       ${volume.createdAt}`,
    ...Object.entries(volume.labels).map(([key, value]) => `label         ${key}=${value}`)
  ]
  return lines.join('\n') + '\n'
}
