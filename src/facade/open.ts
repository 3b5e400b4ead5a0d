// How GalleonFS.open() brings an instance up (options checked, drivers opened, the catalog, engine,
// keys and access state loaded, the instance built and started) and close() takes it down.

import type { EventEmitter } from 'eventemitter3'
import { AccessControl } from '../access/access-control.js'
import { AuditLog } from '../access/audit-log.js'
import { BackgroundErrors } from './background-errors.js'
import type { BackupTarget, BlockStore, MountDriver } from '../drivers.js'
import { KeyManager } from '../crypto/key-manager.js'
import { BlockEngine } from '../engine/engine.js'
import { isNoSpaceError } from '../abstract-block-store.js'
import { latchLevelWrites } from '../level-write-latch.js'
import { syncLevelDirectoryOnSyncedWrites } from '../level-directory-sync.js'
import { ensureReserve, releaseReserve } from '../space-reserve.js'
import { FILE_SEGMENT_LIST_SETTING, recordHolder } from '../storage-layout.js'
import { GalleonError, describe, errorCode } from '../errors.js'
import type { GalleonEvents } from '../events.js'
import { mountControl } from '../mount/mount-manager.js'
import { assertWindowSeconds } from '../metrics/recorder.js'
import { resolveDrivers, type OpenOptions } from '../open-drivers.js'
import { QoSScheduler } from '../qos/scheduler.js'
import { VolumeType } from '../types.js'
import { Catalog, type MetadataDatabase } from '../volumes/catalog.js'
import type { BackupManager } from '../backup/manager.js'
import type { BackupScheduler } from '../backup/policies.js'
import type { ClusterOptions, ClusterStatus } from '../cluster/manager.js'
import type { ClusterMembership } from './cluster.js'
import type { Facade } from './assembly.js'
import { applyQoS } from './qos.js'
import type { FacadeHost } from './host.js'
import type { ChecksumFailure } from './io.js'
import type { VolumeLifecycle } from './volumes.js'

/** What an instance is built from, once open() has opened and loaded it. */
export interface InstanceParts {
  readonly metadata: MetadataDatabase
  readonly store: BlockStore
  /** Where the data lives ('memory' for in-memory instances). */
  readonly location: string
  readonly catalog: Catalog
  readonly engine: BlockEngine
  readonly qos: QoSScheduler
  readonly keys: KeyManager
  readonly access: AccessControl
  readonly audit: AuditLog
  readonly clock: { now: () => number }
  /** False when open() was given a clock: the backup scheduler then sets no timers. */
  readonly timers: boolean
  readonly backupTarget: string | BackupTarget | undefined
  /** The default backup target when open() created it from the registry: closed with the instance. */
  readonly ownedBackupTarget: BackupTarget | undefined
  readonly mountDriver: MountDriver
  readonly storagePath: string | undefined
}

/** An instance built from its parts: what the engine reports checksum failures to, and how it starts (recovery and the rest). */
export interface BuiltInstance<I> {
  readonly instance: I
  readonly onChecksumFailure: (failure: ChecksumFailure) => void
  /**
   * Recovery first (what a crash or a full disk left: unfinished deletions, reverts), then the
   * rest; `recovered` is called between the two.
   */
  readonly start: (recovered: () => void) => Promise<void>
}

/**
 * The work of GalleonFS.open(): `build` makes the instance from its parts (see InstanceParts). A
 * storage whose disk is too full for its databases to open, or for recovery to finish what it must
 * (a volume deletion a full disk cut short writes to the block store), gives back its reserve and
 * opens again (see space-reserve.ts); one opened with room to spare gets a reserve (in openOnce).
 */
export async function openInstance<I extends EventEmitter<GalleonEvents>> (options: OpenOptions, build: (parts: InstanceParts) => BuiltInstance<I>): Promise<I> {
  const storagePath = options?.storagePath
  const progress = { started: false }
  let instance: I
  try {
    instance = await openOnce(options, build, progress)
  } catch (err) {
    // Only a disk too full for the databases and the block store to open, or for recovery: not one
    // a driver of the caller's reports otherwise (a quota of its own), nor a failure once recovery
    // was done and the rest of the instance had started.
    if (progress.started || !isNoSpaceError(err) || typeof storagePath !== 'string' || !await releaseReserve(storagePath)) throw err
    instance = await openOnce(options, build, progress)
  }
  return instance
}

async function openOnce<I extends EventEmitter<GalleonEvents>> (options: OpenOptions, build: (parts: InstanceParts) => BuiltInstance<I>, progress: { started: boolean }): Promise<I> {
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
  const backgroundErrors = new BackgroundErrors()
  const { metadata, blockStore, location, keyProvider, passphrase, backupTarget, ownedBackupTarget, mountDriver } = await resolveDrivers(options, backgroundErrors.report)
  try {
    await metadata.open()
  } catch (err) {
    await ownedBackupTarget?.close().catch(() => {})
    await mountDriver.close?.().catch(() => {})
    const code = (err as { code?: string }).code
    if (code === 'LEVEL_LOCKED' || String((err as Error)?.cause ?? '').includes('lock')) {
      throw new GalleonError('BUSY', `the storage at ${location} is already open in another GalleonFS instance or process; close that one first`, { cause: err })
    }
    if (isNoSpaceError(err)) throw new GalleonError('NO_SPACE', `could not open the metadata database at ${location}: its disk is full (LevelDB writes to open); free space on it or grow it, then open again. Nothing was changed`, { cause: err })
    throw new GalleonError('IO_ERROR', `could not open the metadata database at ${location}: ${(err as Error).message}`, { cause: err })
  }
  // Synced writes wait for the directory's new names to be durable (see level-directory-sync.ts);
  // installed first, so that the latch around it also stops writes after a failed directory sync.
  const metadataLocation = (metadata as { location?: unknown }).location
  if (options.metadata === undefined && typeof metadataLocation === 'string') syncLevelDirectoryOnSyncedWrites(metadata, metadataLocation)
  // After a failed write LevelDB must not take more (see level-write-latch.ts).
  latchLevelWrites(metadata, `the metadata database at ${location}`)
  try {
    await blockStore.open()
    const catalog = new Catalog(metadata)
    await catalog.load(blockSize)
    // The file store in its default place has its segment list now (its open writes one): from here
    // on a missing list is a lost one, which the next open refuses (storage-layout.ts).
    if (ownsDefaultFileStore(options)) await catalog.recordSetting(FILE_SEGMENT_LIST_SETTING, true)
    // The storage is this instance's now (checked, locked, its databases open): it gets a reserve
    // if it has none, before anything starts in the background.
    // And the next process refused it learns who holds it (storage-layout.ts, OWNER_FILE).
    if (typeof options.storagePath === 'string' && options.inMemory !== true) {
      await ensureReserve(options.storagePath)
      await recordHolder(options.storagePath)
    }
    let built: BuiltInstance<I> | undefined
    const engine = new BlockEngine(blockStore, {
      blockSize: catalog.blockSize,
      cacheBlocks,
      metricsWindowSeconds: options.metricsWindowSeconds,
      onChecksumFailure: (failure) => { if (built !== undefined) built.onChecksumFailure(failure) }
    })
    const keys = new KeyManager(metadata, { storagePath: options.storagePath, keyProvider, passphrase: passphrase ?? options.passphrase, ...(options.passphraseCost === undefined ? {} : { passphraseCost: options.passphraseCost }), inMemory: options.inMemory === true })
    await keys.load()
    const clock = options.clock ?? { now: Date.now }
    if (typeof clock?.now !== 'function') throw new GalleonError('INVALID_ARGUMENT', `clock must be an object with a now() function returning milliseconds, got ${describe(clock)}`)
    const access = new AccessControl(metadata)
    await access.load()
    const audit = new AuditLog(metadata, () => clock.now())
    await audit.load()
    built = build({ metadata, store: blockStore, location, catalog, engine, qos, keys, access, audit, clock, timers: options.clock === undefined, backupTarget, ownedBackupTarget, mountDriver, storagePath: options.storagePath })
    const emitter = built.instance
    emitQoS = (event, payload) => { emitter.emit(event as 'qos:throttled', payload as never) }
    // A full disk during recovery is retried as one during the open of the databases is: recovery
    // only finishes what the last session left, and it runs again in full at the next try. Once
    // it is done, the rest starts (policies, cluster, re-encryption): no retry past that point.
    await built.start(() => { progress.started = true })
    progress.started = true
    // The log is fine, but its queries by time are slow until an open builds the index.
    if (audit.timeIndexFailure !== undefined) backgroundErrors.report(audit.timeIndexFailure)
    // Reports made so far are emitted once the caller holds the instance (no listener is attached before).
    backgroundErrors.attach(emitter)
    return built.instance
  } catch (err) {
    await blockStore.close().catch(() => {})
    await metadata.close().catch(() => {})
    await ownedBackupTarget?.close().catch(() => {})
    await mountDriver.close?.().catch(() => {})
    throw err
  }
}

/**
 * Whether open() made the storage's built-in file block store in `<storagePath>/blocks` and its
 * metadata database itself: the layout whose checks (storage-layout.ts) read the settings.
 */
function ownsDefaultFileStore (options: OpenOptions): boolean {
  return typeof options.storagePath === 'string' && options.inMemory !== true && options.blockStore === undefined && options.metadata === undefined &&
    (options.backend ?? 'file') === 'file' && options.backendOptions?.location === undefined
}

/** What close() takes down, besides the host's parts. */
export interface ClosingInstance {
  readonly host: FacadeHost
  readonly volumes: VolumeLifecycle
  readonly membership: ClusterMembership
  readonly scheduler: BackupScheduler
  readonly backups: BackupManager
  /** The last administrative operation queued. */
  readonly adminQueue: () => Promise<unknown>
  readonly store: BlockStore
  readonly metadata: MetadataDatabase
  readonly ownedBackupTarget: BackupTarget | undefined
  /** From here on the instance refuses calls (NOT_OPEN). */
  readonly markClosed: () => void
  /** Whether the primary roles this node holds go to in-sync copies first (see CloseOptions). */
  readonly handOver: boolean
}

/** Options of GalleonFS.close(). */
export interface CloseOptions {
  /**
   * A node of a cluster hands the primary roles it holds to in-sync copies before it closes, so
   * other nodes serve those volumes on at once (default true). `false` keeps the roles: the volumes
   * wait for this node to come back (a quick restart, no role moving twice), or fail over once its
   * lease lapses.
   */
  readonly handOver?: boolean
}

/** Checks close()'s options: returns whether to hand the primary roles over. */
export function closeHandsOver (options: unknown): boolean {
  if (options === undefined) return true
  if (options === null || typeof options !== 'object' || Array.isArray(options)) throw new GalleonError('INVALID_ARGUMENT', `close() options must be an object such as { handOver: false }, got ${describe(options)}`)
  const handOver = (options as CloseOptions).handOver
  if (handOver !== undefined && typeof handOver !== 'boolean') throw new GalleonError('INVALID_ARGUMENT', `close() option handOver must be true or false, got ${describe(handOver)}`)
  return handOver ?? true
}

/** The work of GalleonFS.close(), run once. */
export async function closeInstance (parts: ClosingInstance): Promise<void> {
  const host = parts.host
  // Migrations still copying are cancelled: their volumes stay where they were.
  for (const migration of host.migrations.values()) migration.abort.abort(new GalleonError('CANCELLED', 'the instance is closing'))
  // Node moves not yet past the hand-over give their new copy up.
  for (const move of host.nodeMoves.values()) move.abort.abort(new GalleonError('CANCELLED', 'the instance is closing'))
  await Promise.all([...host.nodeMoves.values()].map(async (move) => await move.done))
  await Promise.all([...host.migrations.values()].map(async (migration) => await migration.done))
  // Backups and restores under way are cancelled too, and clean up while the instance still serves calls.
  await parts.backups.close()
  // Unmount first, while the instance still serves I/O: writes acknowledged through a mount
  // (FUSE write-behind) reach the volumes before anything is refused.
  await mountControl(host.mounts).close().catch((err: unknown) => {
    host.emit('io:error', { volumeId: '', volumeName: '', operation: 'write', code: errorCode(err), message: `unmounting at close: ${(err as Error)?.message ?? String(err)}` })
  })
  parts.markClosed()
  host.qos.close()
  try {
    // A leave under way waits for new copies of this node's volumes, which a closing instance no
    // longer fills: it stops now (the node stays a member, and a later leave goes on from there).
    parts.membership.replication?.cancelHandOff(new GalleonError('NOT_OPEN', 'the instance was closed while it was leaving the cluster; it is still a member: open it and leave again'))
    await parts.membership.change
    // Before this node's lease lapses: the primary roles it holds go to in-sync copies now, and
    // their volumes are served on by other nodes at once (see close-handover.ts). Marked closed
    // first, so that no other node closing meanwhile hands a role here.
    await parts.membership.cluster?.markClosing()
    if (parts.handOver) await parts.membership.replication?.handOverAtClose()
    await parts.membership.replication?.close()
    await parts.membership.cluster?.close()
    parts.scheduler.stop()
    await parts.scheduler.idle()
    await parts.adminQueue().catch(() => {})
    await Promise.all([...host.rotations.values()])
    for (const record of parts.volumes.destroyOrder(host.catalog.volumes().filter((record) => record.type === VolumeType.Ephemeral))) {
      await parts.volumes.destroy(host.catalog.resolve(record.id), true)
    }
    await host.engine.close()
  } finally {
    await parts.store.close()
    await parts.metadata.close()
    await parts.ownedBackupTarget?.close()
    host.emit('instance:closed')
  }
}

/** Whether an instance is open, and its queue of administrative operations. */
export class InstanceState {
  /** True once close() has begun. */
  closed = false
  /** Set once close() was called. */
  closing: Promise<void> | undefined
  /** Snapshot, clone, revert, expand and delete run one at a time (they change block maps together). */
  adminQueue: Promise<unknown> = Promise.resolve()

  assertOpen (): void {
    if (this.closed) throw new GalleonError('NOT_OPEN', 'this GalleonFS instance is closed; open a new one with GalleonFS.open()')
  }

  /**
   * Runs an administrative operation after the ones before it; `whileClosing`: also once close()
   * has begun (a step of the close itself, such as handing a primary role over).
   */
  async admin<T> (task: () => Promise<T>, whileClosing = false): Promise<T> {
    const run = this.adminQueue.catch(() => {}).then(async () => {
      if (!whileClosing || this.closing === undefined) this.assertOpen()
      return await task()
    })
    this.adminQueue = run
    return await run
  }
}

/**
 * The rest of open(), once the instance is built: recovery, QoS, the cluster (`joinCluster`: the
 * instance's public call), backups and key rotations left running.
 */
export async function startInstance (f: Facade, options: OpenOptions, recovered: () => void, joinCluster: (options: ClusterOptions) => Promise<ClusterStatus>): Promise<void> {
  const catalog = f.catalog
  await f.volumes.recover()
  recovered()
  for (const record of catalog.volumes()) applyQoS(f.host, record)
  if (options.cluster !== undefined) await joinCluster(options.cluster)
  await f.backups.start({
    replicated: (volumeId) => f.host.recordById(volumeId)?.replication !== undefined,
    // Refused I/O as an unfinished revert to the snapshot: restoreSnapshot to it finishes it.
    fence: async (volumeId, safetySnapshot, why) => {
      const record = catalog.resolve(volumeId)
      const snapshot = catalog.resolveSnapshot(record, safetySnapshot)
      await catalog.updateVolume(record.id, { revertTo: snapshot.id })
      f.host.revertFailures.set(record.id, why)
    }
  })
  await f.scheduler.start()
  for (const record of catalog.volumes()) {
    if (f.keys.rotation(record.id) !== undefined) f.keyRotations.startRotation(record)
  }
  // Last: what recovery found is reported once the caller holds the instance.
  f.backups.reportOpening()
}

/** GalleonFS.close(): audited when a principal closes the instance, and run once (see closeInstance). */
export async function closeFacade (f: Facade, options?: CloseOptions): Promise<void> {
  const handOver = closeHandsOver(options)
  const state = f.state
  if (state.closing !== undefined) {
    // Closing already: a principal still needs admin, but the audit log may be closed.
    if (f.context.getStore()?.principal !== undefined) {
      const denied = f.gate.check('close', 'admin', undefined, 'instance')
      if (denied !== undefined) await denied
    }
    return await state.closing
  }
  // A principal closing the instance (which takes admin) is audited before the log closes with it.
  if (f.context.getStore()?.principal !== undefined) await f.gate.recordAhead('close', 'admin', undefined, 'instance')
  if (state.closing !== undefined) return await state.closing
  state.closing = closeInstance({
    host: f.host, volumes: f.volumes, membership: f.membership, scheduler: f.scheduler, backups: f.backups, adminQueue: () => state.adminQueue,
    store: f.store, metadata: f.metadata, ownedBackupTarget: f.ownedBackupTarget, markClosed: () => { state.closed = true }, handOver
  })
  return await state.closing
}
