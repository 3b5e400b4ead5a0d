// Turns GalleonFS.open() options into a metadata database, a block store and the other drivers,
// creating those named by their registered names (registry.ts) and loading native backends lazily,
// so importing galleonfs never needs them.

import { makeDirectoriesDurably, syncDirectory } from './durable-files.js'
import { join } from 'node:path'
import { GalleonError, describe } from './errors.js'
import { lazyModule } from './lazy-module.js'
import { assertLevelDirectoryIntact, closeLevelFilesOnExec, loadClassicLevel, type AnyLevelDatabase } from './classic-level.js'
import type { BackupTarget, BlockStore, KeyProvider, MountDriver } from './drivers.js'
import type { MetadataDatabase } from './volumes/catalog.js'
import { checkDriverOptions, checkDriverRef, createDriver, isDriverRef, listDrivers, type DriverContext, type DriverRef } from './registry.js'
import { isNoSpaceError } from './abstract-block-store.js'
import { checkedBlockStore } from './checked-block-store.js'
import { OWNER_FILE, checkStorageDirectory, checkStorageMetadata, lockHolder, type SettingsReader } from './storage-layout.js'

/** Block-store backends that come with GalleonFS; `backend` also takes the name of any registered block store. */
export type BuiltInBackend = 'file' | 'level' | 'memory'

/** Options of `GalleonFS.open`. */
export interface OpenOptions {
  /** Directory for durable storage: classic-level metadata plus the chosen block store. */
  storagePath?: string
  /** Keep everything in memory (memory-level metadata and memory block store): for tests. */
  inMemory?: boolean
  /**
   * Block store by its registered name (default `file`, the log-structured store, under
   * `storagePath`; `memory` with `inMemory`): a built-in one or one added with `registerDriver()`.
   */
  backend?: BuiltInBackend | (string & {})
  /** Options for the `create()` of the block store named by `backend`. */
  backendOptions?: Readonly<Record<string, unknown>>
  /** Advanced: an abstract-level database for metadata, such as a ClassicLevel (opened by GalleonFS if needed). */
  metadata?: AnyLevelDatabase
  /** Advanced: a block store instance (opened and closed by GalleonFS). */
  blockStore?: BlockStore
  /** Block size in bytes for a new storage: a power of two from 512 to 1 MiB (default 4096). */
  blockSize?: number
  /**
   * Blocks held in the engine's read cache of verified payloads (default 0: off). The OS page cache
   * already keeps recently read segment data; the engine cache saves the read call and checksum for
   * hot blocks, at the cost of a copy per read. Worth it when a small set of blocks is read over and over.
   */
  cacheBlocks?: number
  /** Sliding window of getVolumeMetrics(), in seconds (default 10). */
  metricsWindowSeconds?: number
  /**
   * Default target of backup calls: a directory path, a BackupTarget driver, or a registered backup
   * target by name, `{ driver: 'name', options }` (created at open, closed at close).
   */
  backupTarget?: string | BackupTarget | DriverRef
  /**
   * Advanced: where backup policies read the time (and backups their timestamps) from. With a
   * clock given, the scheduler sets no timers: call runDueBackupPolicies() to run what is due
   * (tests and simulations).
   */
  clock?: { now: () => number }
  /**
   * Wraps the data keys of encrypted volumes (see KeyProvider). Default: the internal provider, a
   * master key file `master.key` (mode 0600) in storagePath, created when the first encrypted
   * volume is. Supply your own for a KMS or an HSM, as an instance or as a registered key provider
   * by name, `{ driver: 'name', options }`.
   */
  keyProvider?: KeyProvider | DriverRef
  /** Derive the key-encryption key from this passphrase instead (salt kept in storagePath). */
  passphrase?: string
  /**
   * scrypt's cost N for a new passphrase salt: a power of 2 up to 2^19 (default 2^15). A salt that
   * exists keeps the cost it was made with. Only with `passphrase`.
   */
  passphraseCost?: number
  /**
   * How `g.mounts.mountVolume()` presents volumes: `virtual` (default: for the VolumeFile API only),
   * `fuse` (a FUSE file system per mount point; needs libfuse), your own MountDriver, or any
   * registered mount driver by name (`'name'` or `{ driver: 'name', options }`).
   */
  mount?: 'virtual' | 'fuse' | (string & {}) | MountDriver | DriverRef
  /**
   * Take part in a cluster: this node's id, its Transport and Coordinator drivers, its zone and
   * labels (see ClusterOptions). Without it the instance is a single node.
   */
  cluster?: import('./cluster/manager.js').ClusterOptions
  /**
   * The node's QoS dispatcher: how many operations run at once (`maxInFlight`, default 64) and,
   * if known, what the backend sustains (`capacityIops`, `capacityMBps`). Volumes with a QoS
   * guarantee get their floor out of this; volumes without a policy are not limited.
   */
  qos?: import('./qos/scheduler.js').QoSNodeOptions
}

/** What open() resolved the options to. */
export interface ResolvedDrivers {
  metadata: MetadataDatabase
  blockStore: BlockStore
  /** Where the data lives, for messages ('memory' when in memory). */
  location: string
  /** The key provider or passphrase for the key manager (neither: its default). */
  keyProvider?: KeyProvider
  passphrase?: string
  /** The default backup target, if any. */
  backupTarget?: string | BackupTarget
  /** A backup target created here from the registry: GalleonFS closes it. */
  ownedBackupTarget?: BackupTarget
  mountDriver: MountDriver
}

/**
 * Validates open options and creates the drivers they name; `reportBackgroundError` takes the
 * errors of their background work (see DriverContext).
 */
export async function resolveDrivers (options: OpenOptions, reportBackgroundError?: (err: unknown) => void): Promise<ResolvedDrivers> {
  if (options === null || typeof options !== 'object') {
    throw new GalleonError('INVALID_ARGUMENT', `GalleonFS.open() needs an options object such as { storagePath: './data' } or { inMemory: true }, got ${describe(options)}`)
  }
  const { storagePath, inMemory, backend, backendOptions } = options
  if (storagePath !== undefined && (typeof storagePath !== 'string' || storagePath.length === 0)) {
    throw new GalleonError('INVALID_ARGUMENT', `storagePath must be a non-empty directory path, got ${describe(storagePath)}`)
  }
  if (inMemory !== undefined && typeof inMemory !== 'boolean') {
    throw new GalleonError('INVALID_ARGUMENT', `inMemory must be true or false, got ${describe(inMemory)}`)
  }
  if (inMemory === true && storagePath !== undefined) {
    throw new GalleonError('INVALID_ARGUMENT', 'pass either storagePath (durable) or inMemory: true, not both')
  }
  if (backend !== undefined && typeof backend !== 'string') {
    throw new GalleonError('INVALID_ARGUMENT', `backend must be the name of a registered block store (${names('blockStore')}), got ${describe(backend)}`)
  }
  if (backendOptions !== undefined && backend === undefined) {
    throw new GalleonError('INVALID_ARGUMENT', 'backendOptions are options of the block store named by backend; give backend too')
  }
  if (backend !== undefined) checkDriverOptions('blockStore', backend, backendOptions ?? {}, 'backend')
  if (backend !== undefined && options.blockStore !== undefined) {
    throw new GalleonError('INVALID_ARGUMENT', 'pass either backend (a registered block store by name) or blockStore (an instance), not both')
  }
  if (backend === 'memory' && storagePath !== undefined) {
    throw new GalleonError('INVALID_ARGUMENT', "backend 'memory' keeps blocks in process memory, so they would be lost while the volume records in storagePath remain; use { inMemory: true } for tests, or backend 'file' or 'level' with storagePath")
  }
  if (storagePath === undefined && inMemory !== true && (options.metadata === undefined || (options.blockStore === undefined && backend === undefined))) {
    throw new GalleonError('INVALID_ARGUMENT', 'GalleonFS.open() needs { storagePath } for durable storage, { inMemory: true } for tests, or both { metadata, blockStore } drivers')
  }
  // Every driver reference is checked before anything is created or touched on disk.
  const givenStore = options.blockStore === undefined ? undefined : checkedBlockStore(options.blockStore, 'blockStore')
  if (options.metadata !== undefined) checkMetadataDatabase(options.metadata)
  const { keyProvider, backupTarget, mount } = options
  if (keyProvider !== undefined && options.passphrase !== undefined) throw new GalleonError('INVALID_ARGUMENT', 'pass either keyProvider or passphrase, not both')
  if (options.passphraseCost !== undefined && options.passphrase === undefined) throw new GalleonError('INVALID_ARGUMENT', 'passphraseCost sets the cost of a passphrase\'s salt: pass it with { passphrase }, or leave it out')
  if (isDriverRef(keyProvider)) checkDriverRef('keyProvider', keyProvider, 'keyProvider')
  if (isDriverRef(backupTarget)) checkDriverRef('backupTarget', backupTarget, 'backupTarget')
  if (isDriverRef(mount)) checkDriverRef('mountDriver', mount, 'mount')
  else if (typeof mount === 'string') checkDriverOptions('mountDriver', mount, {}, 'mount')
  else if (mount !== undefined && !isMountDriver(mount)) {
    throw new GalleonError('INVALID_ARGUMENT', `mount must be a registered mount driver by name (${names('mountDriver')}), { driver, options }, or a MountDriver { name, mount, unmount }, got ${describe(mount)}`)
  }

  // The block store's name for the layout checks; a block store instance keeps its blocks elsewhere.
  const layoutBackend = options.blockStore !== undefined ? '' : backend ?? 'file'
  if (storagePath !== undefined) {
    await checkStorageDirectory(storagePath, layoutBackend)
    await makeDirectoriesDurably(storagePath).catch((err: NodeJS.ErrnoException) => {
      const fix = err.code === 'EEXIST' || err.code === 'ENOTDIR' ? 'a file is in the way; pick another storagePath' : err.code === 'EACCES' || err.code === 'EPERM' ? 'give this process write access to its parent, or pick another storagePath' : 'pick a storagePath on a writable file system'
      throw new GalleonError('IO_ERROR', `could not create the storage directory ${storagePath}: ${err.message}; ${fix}`, { cause: err })
    })
  }
  const context: DriverContext = { inMemory: inMemory === true, ...(storagePath === undefined ? {} : { storagePath }), ...(reportBackgroundError === undefined ? {} : { reportBackgroundError }) }
  const created: Array<() => Promise<void>> = []
  try {
    const chosen = backend ?? (storagePath !== undefined ? 'file' : 'memory')
    const blockStore = givenStore ?? checkedBlockStore(await createDriver('blockStore', chosen, backendOptions ?? {}, context, 'backend'), `block store '${chosen}'`)
    if (options.blockStore === undefined && storagePath !== undefined && blockStore.supports.persistent !== true) {
      throw new GalleonError('INVALID_ARGUMENT', `block store '${chosen}' is not persistent (supports.persistent is false), so its blocks would be lost while the volume records in storagePath remain; use { inMemory: true } with it, or a persistent block store`)
    }
    const keys = await resolveKeyProvider(keyProvider, context)
    let ownedBackupTarget: BackupTarget | undefined
    let defaultTarget: string | BackupTarget | undefined
    if (isDriverRef(backupTarget)) {
      // A directory stays a path: GalleonFS keeps one target object (one queue) per directory.
      if (backupTarget.driver === 'directory') defaultTarget = backupTarget.options?.path as string
      else {
        ownedBackupTarget = defaultTarget = await createDriver('backupTarget', backupTarget.driver, backupTarget.options ?? {}, context, 'backupTarget')
        created.push(async () => { await (ownedBackupTarget as BackupTarget).close() })
      }
    } else defaultTarget = backupTarget
    const mountDriver = isMountDriver(mount)
      ? mount
      : isDriverRef(mount)
        ? await createDriver('mountDriver', mount.driver, mount.options ?? {}, context, 'mount')
        : await createDriver('mountDriver', typeof mount === 'string' ? mount : 'virtual', {}, context, 'mount')
    if (mountDriver !== mount) created.push(async () => { await mountDriver.close?.() })
    // Created last: an abstract-level database opens itself (and takes its lock) once constructed.
    const metadata = (options.metadata as MetadataDatabase | undefined) ?? (storagePath !== undefined ? await openStorageMetadata(storagePath, layoutBackend, options.blockSize) : await openMemoryLevel())
    const location = storagePath ?? (options.blockStore !== undefined || options.metadata !== undefined ? `the given drivers (block store ${blockStore.name})` : backend !== undefined && backend !== 'memory' ? `block store ${blockStore.name}` : 'memory')
    return { metadata, blockStore, location, ...keys, ...(defaultTarget === undefined ? {} : { backupTarget: defaultTarget }), ...(ownedBackupTarget === undefined ? {} : { ownedBackupTarget }), mountDriver }
  } catch (err) {
    for (const close of created) await close().catch(() => {})
    throw err
  }
}

/**
 * The key provider open() was given. The internal provider without options and the passphrase one
 * with only a passphrase stay with the key manager's own handling (a master key file is created
 * only while no volume depends on one; a wrong passphrase fails open).
 */
async function resolveKeyProvider (keyProvider: OpenOptions['keyProvider'], context: DriverContext): Promise<{ keyProvider?: KeyProvider, passphrase?: string }> {
  if (!isDriverRef(keyProvider)) return keyProvider === undefined ? {} : { keyProvider }
  const given = Object.keys(keyProvider.options ?? {}).filter((key) => keyProvider.options?.[key] !== undefined)
  if (keyProvider.driver === 'internal' && given.length === 0) return {}
  if (keyProvider.driver === 'passphrase' && given.every((key) => key === 'passphrase')) return { passphrase: keyProvider.options?.passphrase as string }
  return { keyProvider: await createDriver('keyProvider', keyProvider.driver, keyProvider.options ?? {}, context, 'keyProvider') }
}

/** The abstract-level methods GalleonFS calls on a metadata database. */
const METADATA_METHODS = ['open', 'close', 'get', 'put', 'del', 'batch', 'iterator', 'sublevel'] as const

/**
 * Refuses, before anything is opened, a `metadata` that is not an abstract-level database: it
 * failed later as IO_ERROR "metadata.open is not a function", or as a raw TypeError from close().
 */
function checkMetadataDatabase (metadata: unknown): void {
  const record = metadata as Record<string, unknown> | null
  const missing = record === null || typeof record !== 'object' ? [] : METADATA_METHODS.filter((method) => typeof record[method] !== 'function')
  if (record === null || typeof record !== 'object' || missing.length > 0) {
    throw new GalleonError('INVALID_ARGUMENT', `metadata must be an abstract-level database (a ClassicLevel, a MemoryLevel or a sublevel of one), got ${describe(metadata)}${missing.length > 0 ? ` without ${missing.join(', ')}` : ''}`)
  }
}

function isMountDriver (value: unknown): value is MountDriver {
  const driver = value as MountDriver
  return driver !== null && typeof driver === 'object' && !isDriverRef(driver) && typeof driver.mount === 'function' && typeof driver.unmount === 'function' && typeof driver.name === 'string'
}

function names (kind: 'blockStore' | 'mountDriver'): string {
  return listDrivers(kind).map((driver) => driver.name).join(', ')
}

/**
 * Opens `<storagePath>/metadata` and checks it against the storage (storage-layout.ts) before the
 * block store opens: the block store's recovery writes, so whatever refuses the storage refuses it
 * here, with the blocks untouched.
 */
async function openStorageMetadata (storagePath: string, backend: string, blockSize: number | undefined): Promise<MetadataDatabase> {
  const location = join(storagePath, 'metadata')
  const ClassicLevel = await loadClassicLevel('the on-disk metadata database')
  // Opened without its CURRENT file, LevelDB would start an empty catalog and delete the old one.
  await assertLevelDirectoryIntact(location, 'the metadata database')
  // LevelDB makes its directory itself and never syncs its parent: made here, durably named.
  await makeDirectoriesDurably(location).catch((err: unknown) => { throw accessError(err, storagePath, `could not create the metadata directory ${location}`) })
  const db = new ClassicLevel(location)
  try {
    await db.open()
  } catch (err) {
    throw await metadataOpenError(err, storagePath)
  }
  // LevelDB opens its files without close-on-exec: every child process would hold them.
  await closeLevelFilesOnExec(location)
  // LevelDB renames a new CURRENT into place at every open without syncing the directory: until its
  // next manifest sync a power loss brings the old CURRENT back, naming a manifest whose deletion
  // is not durable either, or, in a new database, one whose bytes were never synced (unopenable).
  try {
    await syncDirectory(location)
  } catch (err) {
    await db.close().catch(() => {})
    throw accessError(err, storagePath, `could not sync the metadata directory ${location}`)
  }
  try {
    await checkStorageMetadata(storagePath, backend, db as unknown as SettingsReader, blockSize)
  } catch (err) {
    await db.close().catch(() => {})
    throw err
  }
  return db as unknown as MetadataDatabase
}

/** The messages of an error and its causes, outermost first (classic-level's own is often just "Database failed to open"). */
function reasons (err: unknown): string {
  const messages: string[] = []
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if (e.message.length > 0 && !messages.includes(e.message)) messages.push(e.message)
  }
  return messages.length > 0 ? messages.join(': ') : String(err)
}

function hasCauseCode (err: unknown, code: string): boolean {
  for (let e = err, depth = 0; e !== null && typeof e === 'object' && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    if ((e as { code?: unknown }).code === code) return true
  }
  return false
}

/** A file-system failure to reach the storage as IO_ERROR saying what to do: a read-only file system, missing permissions. */
function accessError (err: unknown, storagePath: string, what: string): GalleonError {
  const why = reasons(err)
  // LevelDB writes to open: on a full disk that is NO_SPACE (open() then gives back the storage's reserve and tries again).
  if (isNoSpaceError(err)) return new GalleonError('NO_SPACE', `${what}: ${why}; its disk is full: free space on it or grow it, then open again`, { cause: err })
  const fix = hasCauseCode(err, 'EROFS') || /read-only file system/i.test(why)
    ? `the file system holding ${storagePath} is mounted read-only, and GalleonFS writes when it opens a storage (locks, recovery); remount it read-write, or copy the storage to a writable place and open the copy`
    : hasCauseCode(err, 'EACCES') || hasCauseCode(err, 'EPERM') || /permission denied/i.test(why)
      ? `give the user this process runs as${typeof process.getuid === 'function' ? ` (uid ${process.getuid()})` : ''} read and write access to ${storagePath} and everything in it, or run it as the storage's owner`
      : `check that ${storagePath} is a storage directory on a working, writable file system`
  return new GalleonError('IO_ERROR', `${what}: ${why}; ${fix}`, { cause: err })
}

/** Why the metadata database did not open: BUSY naming the holder when it is locked, else IO_ERROR. */
async function metadataOpenError (err: unknown, storagePath: string): Promise<GalleonError> {
  const location = join(storagePath, 'metadata')
  if (hasCauseCode(err, 'LEVEL_CORRUPTION')) {
    return new GalleonError('CORRUPTION', `the metadata database at ${location} is damaged (${reasons(err)}); restore it from a copy, or run ClassicLevel.repair() on it (which keeps what it can read) and open again`, { cause: err })
  }
  if (!hasCauseCode(err, 'LEVEL_LOCKED')) return accessError(err, storagePath, `could not open the metadata database at ${location}`)
  const found = await lockHolder(storagePath)
  const holder = found === undefined
    ? 'another GalleonFS instance or process'
    : found.pid === process.pid && found.host === undefined
      ? 'another GalleonFS instance of this process'
      : `process ${found.pid}${found.host === undefined ? '' : ` on host ${found.host}`}${found.since === undefined ? ' (as its blocks/LOCK file says)' : ` (open since ${found.since}, as ${OWNER_FILE} says)`}`
  return new GalleonError('BUSY', `the storage at ${storagePath} is already open in ${holder}; close that one first, or open a different storage (the lock goes with the process: after it exits or dies, open succeeds)`, { cause: err })
}

const memoryLevel = lazyModule(async () => await import('memory-level'))

async function openMemoryLevel (): Promise<MetadataDatabase> {
  const { MemoryLevel } = await memoryLevel()
  return new MemoryLevel() as unknown as MetadataDatabase
}
