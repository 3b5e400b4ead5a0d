// The GalleonFS facade: the public API of an instance and its reference documentation, lifecycle and
// events; src/facade/assembly.ts composes its parts, and src/facade/*-api.ts do the work of its calls.

import { AsyncLocalStorage } from 'node:async_hooks'
import type { EventEmitter } from 'eventemitter3'
import type { AccessPolicy, Principal } from './access/access-control.js'
import type { AuditEntry, AuditQuery, AuditVerification } from './access/audit-log.js'
import type { MountManager } from './mount/mount-manager.js'
import type { BlockStoreStats, KeyProvider } from './drivers.js'
import type { VolumeEncryption } from './crypto/key-manager.js'
import type { Backup, BackupAdoption, BackupHooks, BackupTargetRef, BackupVerification, CreateBackupOptions, DeleteBackupOptions, DeleteBackupResult, RestoreBackupOptions } from './backup/manager.js'
import type { BackupPolicy, BackupPolicyOptions, BackupPolicyRun } from './backup/policies.js'
import type { ReplicationHook } from './engine/journal.js'
import { GuardedEmitter, type GalleonEvents } from './events.js'
import type { ClusterManager, ClusterOptions, ClusterStatus } from './cluster/manager.js'
import type { ReplicationStatus } from './replication/manager.js'
import type { VolumeMetrics } from './metrics/recorder.js'
import type { OpenOptions } from './open-drivers.js'
import type { QoSPolicy, QoSPolicyInput, QoSPolicySource } from './qos/policy.js'
import { WriteConcern, type CreateVolumeOptions, type ScrubReport, type Snapshot, type StorageClass, type Volume, type VolumeUsage } from './types.js'
import type { MigrateControl, MigrateVolumeOptions } from './volumes/migration.js'
import type { CreatePoolOptions, StoragePoolStatus, UpdatePoolOptions } from './volumes/pools.js'
import type { CallContext } from './facade/access-guard.js'
import { assembleFacade, facadeApi, type Facade, type FacadeApi } from './facade/assembly.js'
import type { ForgottenNode } from './facade/cluster.js'
import { reportChecksumFailure, type VolumeIO } from './facade/io.js'
import { closeFacade, openInstance, startInstance, type CloseOptions, type InstanceParts } from './facade/open.js'
import type { CloneSource, ReadSource, VolumeRef } from './facade/refs.js'

export type { VolumeRef, SnapshotRef, ReadSource, CloneSource } from './facade/refs.js'

/**
 * An open GalleonFS instance: named block volumes on a metadata database and a block store.
 * Create one with `GalleonFS.open()`; call `close()` when done.
 */
export class GalleonFS extends GuardedEmitter<GalleonEvents> {
  /** Where the data lives ('memory' for in-memory instances). */
  readonly location: string
  /** Who is calling (see AccessGuard); event listeners run outside it. */
  readonly #context = new AsyncLocalStorage<CallContext>()
  /** The instance's components, state and the parts of the facade (see src/facade/assembly.ts). */
  readonly #f: Facade
  readonly #io: VolumeIO
  /** Where each call's work is done; its promise is returned as it is (no async hop here). */
  readonly #api: FacadeApi

  private constructor (parts: InstanceParts) {
    super()
    this.location = parts.location
    this.#f = assembleFacade(parts, this, this.#context)
    this.#io = this.#f.io
    this.#api = facadeApi(this.#f)
  }

  /**
   * Opens an instance: `{ storagePath }` for durable on-disk storage (classic-level metadata and the
   * log-structured file block store), `{ inMemory: true }` for tests, or explicit
   * `{ metadata, blockStore }` drivers. Recovers from any crash before resolving.
   */
  static async open (options: OpenOptions): Promise<GalleonFS> {
    return await openInstance(options, (parts) => {
      const instance = new GalleonFS(parts)
      const f = instance.#f
      return { instance, onChecksumFailure: (failure) => { reportChecksumFailure(f.host, failure) }, start: async (recovered) => { await startInstance(f, options, recovered, (cluster) => instance.joinCluster(cluster)) } }
    })
  }

  /** This node's part in its cluster, when opened with `{ cluster }`. */
  get cluster (): ClusterManager | undefined { return this.#f.membership.cluster }

  /**
   * The cluster as this node sees it: members with health, zone and labels, and the leader. A
   * single node (opened without `{ cluster }`) reports itself, healthy and leader.
   */
  clusterStatus (): Promise<ClusterStatus> { return this.#api.instance.clusterStatus() }

  /**
   * Joins a cluster (admin): as `open({ cluster })` does, on a running instance. Refused with BUSY
   * while it is in one already.
   */
  joinCluster (options: ClusterOptions): Promise<ClusterStatus> { return this.#api.instance.joinCluster(options) }

  /**
   * Leaves the cluster (admin). Volumes whose only copy is on this node keep it from leaving unless
   * `force`: they stay here, out of the cluster. Afterwards the instance is a single node again.
   */
  leaveCluster (options: { force?: boolean } = {}): Promise<void> { return this.#api.instance.leaveCluster(options) }

  /**
   * Forgets a node that is gone for good (admin; a dead machine, a replaced disk under a new id): its
   * copies of replicated volumes are given up at once (new ones are placed), and it comes off the
   * lists of given-up copies and the deletion marks that wait for it. Refused with BUSY while it is
   * a member of the cluster, and while it is the primary of a volume (no other node has an
   * up-to-date copy of it).
   */
  forgetClusterNode (nodeId: string): Promise<ForgottenNode> { return this.#api.instance.forgetClusterNode(nodeId) }

  /** Mounts of volumes and snapshots, and VolumeFiles (see MountManager). */
  get mounts (): MountManager { return this.#f.mounts }

  /** True once close() has begun. */
  get closed (): boolean { return this.#f.state.closed }

  /** Block size of this instance's storage, in bytes. */
  get blockSize (): number { return this.#f.engine.blockSize }

  /** Name of the block-store backend in use. */
  get backend (): string { return this.#f.store.name }

  /**
   * Whether the block store can make writes survive a crash (`supports.durableSync`): false for the
   * memory store, which refuses WriteDurable. An NBD export of such an instance offers no FUA or FLUSH.
   */
  get durable (): boolean { return this.#f.store.supports.durableSync }

  /** Advanced: the replication hook the engine calls after each journal append. */
  setReplicationHook (hook: ReplicationHook | undefined): void { this.#api.instance.setReplicationHook(hook) }

  /**
   * Flushes every acknowledged write, deletes ephemeral volumes, and closes the drivers.
   * Idempotent; further calls on the instance fail with NOT_OPEN. A node of a cluster first hands
   * the primary roles it holds to in-sync copies, unless `{ handOver: false }` (see CloseOptions).
   */
  close (options?: CloseOptions): Promise<void> { return closeFacade(this.#f, options) }

  // ---------------------------------------------------------------- volumes
  /** Creates a volume. Sizes are bytes or strings like `100M`; the size must be a multiple of the block size. */
  createVolume (options: CreateVolumeOptions): Promise<Volume> { return this.#api.volumes.createVolume(options) }

  /** Looks a volume up by id or name. */
  getVolume (vol: VolumeRef): Promise<Volume> { return this.#api.volumes.getVolume(vol) }

  /** All volumes the caller may read, oldest first; of one namespace when given. */
  listVolumes (options: { namespace?: string } = {}): Promise<Volume[]> { return this.#api.volumes.listVolumes(options) }

  /**
   * Deletes a volume and frees its blocks, after its in-flight I/O finishes. Refused (BUSY) unless
   * `force` is set while the volume is mounted, has writable files open on it or NBD clients
   * connected read-write, has clones sharing its blocks, or its storage class's reclaim policy is
   * `Retain`.
   */
  deleteVolume (vol: VolumeRef, options: { force?: boolean } = {}): Promise<void> { return this.#api.volumes.deleteVolume(vol, options) }

  /** Grows a volume online; the new space reads as zeros. Shrinking is refused. */
  expandVolume (vol: VolumeRef, newSizeBytes: number | string): Promise<Volume> { return this.#api.volumes.expandVolume(vol, newSizeBytes) }

  /**
   * Bytes the volume really occupies: its current blocks plus older versions kept only for its
   * snapshots (thin provisioning: never-written blocks cost nothing). See getVolumeUsageDetails for
   * the two figures apart.
   */
  async getVolumeUsage (vol: VolumeRef): Promise<number> { return (await this.getVolumeUsageDetails(vol)).allocatedBytes }

  /** Allocated bytes split into what the current contents use and what only snapshots keep, and the provisioned size. */
  getVolumeUsageDetails (vol: VolumeRef): Promise<VolumeUsage> { return this.#api.volumes.getVolumeUsageDetails(vol) }

  // ---------------------------------------------------------------- storage classes
  /** Built-in and custom storage classes. */
  listStorageClasses (): Promise<StorageClass[]> { return this.#api.volumes.listStorageClasses() }

  /** One storage class by name. */
  getStorageClass (name: string): Promise<StorageClass> { return this.#api.volumes.getStorageClass(name) }

  /**
   * Creates a storage class from a plain object (as parsed from JSON or YAML; camelCase or
   * snake_case fields). It is validated and persisted.
   */
  createStorageClass (definition: unknown): Promise<StorageClass> { return this.#api.volumes.createStorageClass(definition) }

  /** Deletes a custom storage class that no volume uses. */
  deleteStorageClass (name: string): Promise<void> { return this.#api.volumes.deleteStorageClass(name, (className) => this.getStorageClass(className)) }

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
  migrateVolume (vol: VolumeRef, target: MigrateVolumeOptions, control: MigrateControl = {}): Promise<Volume> { return this.#api.volumes.migrateVolume(vol, target, control) }

  // ---------------------------------------------------------------- storage pools
  /**
   * Creates a storage pool: a named capacity that volumes are provisioned against (`createVolume({
   * pool })` or a storage class's `pool` parameter), optionally restricted in a cluster to some nodes
   * (`nodes`, `nodeSelector: { labels, zones }`). `capacityBytes` is bytes or a size string;
   * `overcommitRatio` (default 1) lets provisioned sizes exceed it (thin provisioning). Emits
   * `pool:created`. INVALID_ARGUMENT for a bad field, POOL_EXISTS for a taken name.
   */
  createPool (spec: CreatePoolOptions): Promise<StoragePoolStatus> { return this.#api.volumes.createPool(spec) }

  /** One pool with its accounting (provisioned, allocated and free bytes, volumes); POOL_NOT_FOUND otherwise. */
  getPool (name: string): Promise<StoragePoolStatus> { return this.#api.volumes.getPool(name) }

  /** Every pool with its accounting, by name. */
  listPools (): Promise<StoragePoolStatus[]> { return this.#api.volumes.listPools() }

  /**
   * Changes a pool's capacity, overcommit ratio, description or labels. A limit below what its
   * volumes already provision is refused with BUSY. Emits `pool:updated`.
   */
  updatePool (name: string, changes: UpdatePoolOptions): Promise<StoragePoolStatus> { return this.#api.volumes.updatePool(name, changes) }

  /** Deletes a pool; BUSY while volumes are in it or storage classes name it. Emits `pool:deleted`. */
  deletePool (name: string): Promise<void> { return this.#api.volumes.deletePool(name) }

  // ---------------------------------------------------------------- I/O
  // Each call runs whole in VolumeIO (state and caller checks included) and its promise is returned
  // as it is: wrapping it in an async method here would add an async hop to the hot path.

  /**
   * Writes one block. Shorter data is zero-padded to the block size. Resolves when the write
   * concern is met: `WriteAcknowledged` (default) once the block store has applied it, `WriteDurable` once synced.
   */
  writeBlock (vol: VolumeRef, blockIndex: number, data: Uint8Array, concern: WriteConcern | `${WriteConcern}` = WriteConcern.WriteAcknowledged): Promise<void> { return this.#io.writeBlock(vol, blockIndex, data, concern) }

  /**
   * Reads one block of a volume, or of a snapshot (`{ volume, snapshot }`): always `blockSize`
   * bytes; never-written blocks read as zeros.
   */
  readBlock (source: ReadSource, blockIndex: number): Promise<Uint8Array> { return this.#io.readBlock(source, blockIndex) }

  /** Writes bytes at any offset (read-modify-write at partial blocks); atomic as a whole. */
  write (vol: VolumeRef, offset: number, data: Uint8Array, concern: WriteConcern | `${WriteConcern}` = WriteConcern.WriteAcknowledged): Promise<void> { return this.#io.write(vol, offset, data, concern) }

  /**
   * Reads `length` bytes at `offset` of a volume, or of a snapshot (`{ volume, snapshot }`).
   * `into`: a buffer of at least `length` bytes to read into, instead of a new one (a reader that
   * reuses its buffers spares the allocation); the result is a view of its first `length` bytes.
   */
  read (source: ReadSource, offset: number, length: number, into?: Uint8Array): Promise<Uint8Array> { return this.#io.read(source, offset, length, into) }

  /** Makes every write acknowledged so far durable (writes of all volumes share the sync). */
  flush (vol?: VolumeRef): Promise<void> { return this.#io.flush(vol) }

  /** Discards a byte range: whole blocks are freed and read as zeros, partial edges are zeroed. */
  trim (vol: VolumeRef, offset: number, length: number): Promise<void> { return this.#io.trim(vol, offset, length) }

  /** Reads and verifies every allocated block of a volume; reports (and emits) each bad block. */
  scrub (vol: VolumeRef): Promise<ScrubReport> { return this.#io.scrub(vol) }

  // ---------------------------------------------------------------- QoS
  /**
   * Sets a volume's own QoS policy (limits, guarantees, bursting, weight; see QoSPolicy), which
   * replaces its storage class's while set. Takes effect at once, for operations already waiting
   * too; persisted. `null` removes the volume's own policy (as clearQoSPolicy does).
   */
  setQoSPolicy (vol: VolumeRef, policy: QoSPolicyInput | null): Promise<{ policy?: QoSPolicy, source: QoSPolicySource }> { return this.#api.volumes.setQoSPolicy(vol, policy) }

  /** Removes a volume's own QoS policy: its storage class's applies again (if it has one). */
  async clearQoSPolicy (vol: VolumeRef): Promise<{ policy?: QoSPolicy, source: QoSPolicySource }> { return await this.setQoSPolicy(vol, null) }

  /** The QoS policy in force for a volume and where it comes from (`volume`, `storage-class` or `none`). */
  getQoSPolicy (vol: VolumeRef): Promise<{ policy?: QoSPolicy, source: QoSPolicySource }> { return this.#api.volumes.getQoSPolicy(vol) }

  // ---------------------------------------------------------------- metrics
  /** I/O statistics of a volume over the sliding window, plus lifetime counters. */
  getVolumeMetrics (vol: VolumeRef): Promise<VolumeMetrics> { return this.#api.instance.getVolumeMetrics(vol) }

  /** All metrics in the Prometheus text exposition format (version 0.0.4). */
  metricsText (): Promise<string> { return this.#api.instance.metricsText(() => this.getStorageStats()) }

  /**
   * The block store's figures: its backend, live blocks and bytes, bytes on its medium (garbage
   * awaiting compaction included), and syncs to stable storage so far.
   */
  getStorageStats (): Promise<BlockStoreStats & { backend: string }> { return this.#api.instance.getStorageStats() }

  /** Journal statistics: store batches issued and how many asked for a sync (see getStorageStats for device syncs). */
  journalStats (): { lastLsn: number, committedLsn: number, groups: number, syncs: number } { return this.#api.instance.journalStats() }

  // ---------------------------------------------------------------- snapshots and clones
  /**
   * Takes a read-only, point-in-time snapshot of a volume. O(1): nothing is copied, whatever the
   * volume's size; later writes keep the blocks the snapshot reads (copy-on-write). Writes that
   * were in flight when it was called are in it or not as a whole; it is durable when it resolves.
   */
  createSnapshot (vol: VolumeRef, name: string): Promise<Snapshot> { return this.#api.snapshots.createSnapshot(vol, name) }

  /** Snapshots of a volume, oldest first (implicit ones that clones were made from included). */
  listSnapshots (vol: VolumeRef): Promise<Snapshot[]> { return this.#api.snapshots.listSnapshots(vol) }

  /** One snapshot of a volume, by id or name. */
  getSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>): Promise<Snapshot> { return this.#api.snapshots.getSnapshot(vol, snapshot) }

  /**
   * Deletes a snapshot and frees the block versions only it kept (work proportional to those).
   * A snapshot that clones still read from is kept unless `force`: then each such clone first gets
   * its own copy of the data it shares. Waits for reads of the snapshot in flight.
   */
  deleteSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>, options: { force?: boolean } = {}): Promise<void> { return this.#api.snapshots.deleteSnapshot(vol, snapshot, options) }

  /**
   * Reverts a volume in place to a snapshot: afterwards it reads exactly as the snapshot did (bytes
   * past the snapshot's size, after an expansion, read as zeros; the volume keeps its size). Later
   * snapshots stay usable. Work is proportional to the blocks changed since the snapshot; I/O
   * waits meanwhile. Refused while writes are in flight. A crash mid-way is finished on open.
   */
  restoreSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>): Promise<Volume> { return this.#api.snapshots.restoreSnapshot(vol, snapshot) }

  /**
   * Creates a writable volume that shares its source's blocks: a snapshot (`{ volume, snapshot }`),
   * or a live volume, of which an implicit snapshot is taken. O(1): nothing is copied. Writes to
   * either side never show on the other. The clone starts with the source's size and settings.
   */
  cloneVolume (source: CloneSource, newName: string, options: { labels?: Record<string, string>, namespace?: string } = {}): Promise<Volume> { return this.#api.snapshots.cloneVolume(source, newName, options) }

  /**
   * Which parts of a byte range of a volume (or snapshot) hold data and which read as zeros without
   * storing anything (never written, or trimmed), as extents in order, rounded out to whole blocks
   * and clipped to the range. What NBD block status and sparse copies are built on.
   */
  getAllocation (source: ReadSource, offset: number, length: number): Promise<Array<{ offset: number, length: number, allocated: boolean }>> { return this.#api.snapshots.getAllocation(source, offset, length) }

  /**
   * Blocks that differ between two views of a volume, ascending: from the snapshot `from` to the
   * snapshot `to` (default: the live volume). Work is proportional to the blocks that changed, not
   * to the volume's size. Without `from`, every block the `to` view holds data in (a full listing).
   */
  listChangedBlocks (vol: VolumeRef, options: { from?: string | Pick<Snapshot, 'id'>, to?: string | Pick<Snapshot, 'id'> } = {}): Promise<number[]> { return this.#api.snapshots.listChangedBlocks(vol, options) }

  // ---------------------------------------------------------------- backups
  /**
   * Backs a volume up to a target (a directory path or a BackupTarget; default: the instance's
   * `backupTarget`), from a snapshot taken for it. `full` stores every block holding data;
   * `incremental` the blocks changed since the volume's last backup there; `differential` those
   * changed since its last full (the first one of a volume is a full). Only changed blocks are
   * read; chunks already on the target are not stored again. Emits `backup:progress`.
   */
  createBackup (vol: VolumeRef, options: CreateBackupOptions = {}): Promise<Backup> { return this.#api.backups.createBackup(vol, options) }

  /** Backups on a target, oldest first; of one volume (by id, or by name once the volume is gone) when given. */
  listBackups (vol?: VolumeRef, options: { target?: BackupTargetRef } = {}): Promise<Backup[]> { return this.#api.backups.listBackups(vol, options) }

  /** One backup by id. */
  getBackup (backupId: string, options: { target?: BackupTargetRef } = {}): Promise<Backup> { return this.#api.backups.getBackup(backupId, options) }

  /** Re-reads every chunk of a backup and of the backups it builds on, and checks each against its checksum. */
  verifyBackup (backupId: string, options: { target?: BackupTargetRef } = {}): Promise<BackupVerification> { return this.#api.backups.verifyBackup(backupId, options) }

  /**
   * Accepts an encrypted backup written by a GalleonFS build from before manifests were
   * authenticated (2026-12-05), which restoreBackup and verifyBackup refuse as untrusted: checks
   * that the key of each backup in its chain opens for its volume and that every chunk is there and
   * authenticates, then tags the manifests. Takes `admin` on every volume: the caller vouches
   * that no one altered the manifests on the target, whose volume names and ids are what an untagged
   * manifest says they are. Backups already tagged (or plain) are left as they are.
   */
  adoptBackup (backupId: string, options: { target?: BackupTargetRef } = {}): Promise<BackupAdoption> { return this.#api.backups.adoptBackup(backupId, options) }

  /**
   * Deletes a backup and every chunk no remaining backup references. A backup that later ones build
   * on is kept unless `force`, which deletes those too. While a backup is being taken on the target
   * (by another process or instance), no unused chunk is deleted: the result says so
   * (`collectionDeferred`, with `deferredReason` naming the backup's process), and a later
   * deletion on the target collects them.
   */
  deleteBackup (backupId: string, options: DeleteBackupOptions = {}): Promise<DeleteBackupResult> { return this.#api.backups.deleteBackup(backupId, options) }

  /**
   * Restores a backup (walking the chain of backups it builds on) into a new volume (`{ name }`,
   * default `<volume>-restored-<id>`) or over an existing one (`{ volume }`, at least as large; its
   * old contents are discarded). Resolves to the restored volume.
   */
  restoreBackup (backupId: string, options: RestoreBackupOptions = {}): Promise<Volume> { return this.#api.backups.restoreBackup(backupId, options) }

  /**
   * Creates a backup policy: a cron schedule (UTC unless `timezone`) that backs up the volumes it
   * names or selects by labels, then prunes that policy's backups grandfather-father-son style
   * (`retention: { daily, weekly, monthly }`). The scheduler runs inside this instance while it is
   * open; runs that fall due while it is not are reported (`backup-policy:missed`, `missedRuns`)
   * and made up by one catch-up run.
   */
  createBackupPolicy (policy: BackupPolicyOptions): Promise<BackupPolicy> { return this.#api.backups.createBackupPolicy(policy) }

  /** Backup policies, by name. */
  listBackupPolicies (): Promise<BackupPolicy[]> { return this.#api.backups.listBackupPolicies() }

  /** One backup policy with its run record. */
  getBackupPolicy (name: string): Promise<BackupPolicy> { return this.#api.backups.getBackupPolicy(name) }

  /** Deletes a backup policy (its backups stay); waits for a run in progress. */
  deleteBackupPolicy (name: string): Promise<void> { return this.#api.backups.deleteBackupPolicy(name) }

  /** Sets (or clears) the hook functions of a policy, which are not stored: call this again after each open. */
  setBackupPolicyHooks (name: string, hooks: BackupHooks | undefined): void { this.#api.backups.setBackupPolicyHooks(name, hooks) }

  /** Runs a policy now, outside its schedule (backups, then pruning). */
  runBackupPolicy (name: string): Promise<BackupPolicyRun> { return this.#api.backups.runBackupPolicy(name) }

  /** Runs every policy whose scheduled time has come (the scheduler's timer does this by itself; useful with a controlled clock). */
  runDueBackupPolicies (): Promise<BackupPolicyRun[]> { return this.#api.backups.runDueBackupPolicies() }

  // ---------------------------------------------------------------- encryption
  /** How a volume is encrypted: key versions, the KEK id, a rotation in progress. */
  getVolumeEncryption (vol: VolumeRef): Promise<VolumeEncryption> { return this.#api.instance.getVolumeEncryption(vol) }

  /**
   * Rotates an encrypted volume's data key: a new key seals every write from now on, and the
   * blocks sealed by the old one (snapshots included) are re-encrypted in the background while the
   * volume stays online. A crash mid-way resumes at the next open. Resolves once the new key is
   * active; with `{ wait: true }`, once every block is re-encrypted and the old key is gone.
   */
  rotateVolumeKey (vol: VolumeRef, options: { wait?: boolean } = {}): Promise<VolumeEncryption> { return this.#api.instance.rotateVolumeKey(vol, options) }

  /**
   * Rotates the key-encryption key: every data key and backup key is re-wrapped (no data is
   * rewritten). With the internal provider, a new master key is generated (older ones stay in the
   * key file, retired, so older backups remain restorable); with `{ passphrase }` the passphrase
   * changes; with `{ keyProvider }` the keys move to that provider (pass it to open() from then on).
   */
  rotateKeyEncryptionKey (options: { keyProvider?: KeyProvider, passphrase?: string } = {}): Promise<{ keyId: string, provider: string, rewrapped: number }> { return this.#api.instance.rotateKeyEncryptionKey(options) }

  // ---------------------------------------------------------------- access control and audit
  /**
   * A handle on this instance whose calls act as `principal`: checked against the access policies
   * (once any exists) and audited under its id; bare volume names resolve in its namespace. The
   * GalleonFS object itself acts as the application that embeds it: never denied, audited as
   * `application`. A principal is what the application says it is: authenticate callers before
   * handing them a handle (the daemon maps API tokens to principals).
   */
  as (principal: Principal): GalleonFS { return this.#api.access.as(this, principal) }

  /** Runs `task` with every call it makes on this instance acting as `principal` (see `as`). */
  runAs<T> (principal: Principal, task: () => Promise<T>): Promise<T> { return this.#api.access.runAs(principal, task) }

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
  createAccessPolicy (definition: AccessPolicy): Promise<AccessPolicy> { return this.#api.access.createAccessPolicy(definition) }

  /** Access policies, by name. */
  listAccessPolicies (): Promise<AccessPolicy[]> { return this.#api.access.listAccessPolicies() }

  /** Deletes an access policy. Deleting the last one turns enforcement off (everything is allowed). */
  deleteAccessPolicy (name: string): Promise<void> { return this.#api.access.deleteAccessPolicy(name) }

  /** Audit entries (oldest first) by time range, principal, object (a `prefix*` works), action or result. */
  queryAuditLog (query: AuditQuery = {}): Promise<AuditEntry[]> { return this.#api.access.queryAuditLog(query) }

  /**
   * Checks the audit log's hash chain end to end: an edited, removed or reordered entry is reported.
   * Pass a head saved earlier (`auditHead()`) to detect a rewrite of the whole log as well.
   */
  verifyAuditLog (expectedHead?: { seq: number, hash: string }): Promise<AuditVerification> { return this.#api.access.verifyAuditLog(expectedHead) }

  /** The last audit entry's sequence number and hash: keep copies outside to anchor the log. */
  auditHead (): Promise<{ seq: number, hash: string }> { return this.#api.access.auditHead() }

  // ---------------------------------------------------------------- replication
  /**
   * How a volume's replication stands as this node sees it: the primary and its epoch, the nodes
   * holding copies and those in sync, and on the primary each copy's link (lag, bytes shipped,
   * resync progress). A volume with one copy reports just this node.
   */
  replicationStatus (vol: VolumeRef): Promise<ReplicationStatus> { return this.#api.instance.replicationStatus(vol) }
}
