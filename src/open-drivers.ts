// Turns GalleonFS.open() options into a metadata database and a block store, loading native
// backends lazily so importing galleonfs never needs them.

import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { GalleonError, describe } from './errors.js'
import { loadClassicLevel } from './classic-level.js'
import type { BlockStore } from './drivers.js'
import type { MetadataDatabase } from './volumes/catalog.js'

/** Block-store backends that `GalleonFS.open({ storagePath, backend })` can create by name. */
export type BuiltInBackend = 'file' | 'level' | 'memory'

/** Options of `GalleonFS.open`. */
export interface OpenOptions {
  /** Directory for durable storage: classic-level metadata plus the chosen block store. */
  storagePath?: string
  /** Keep everything in memory (memory-level metadata and memory block store): for tests. */
  inMemory?: boolean
  /** Block store to use under `storagePath` (default `file`, the log-structured store). */
  backend?: BuiltInBackend
  /** Advanced: an abstract-level database for metadata (opened by GalleonFS if needed). */
  metadata?: MetadataDatabase
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
  /** Default target of backup calls: a directory path, or a BackupTarget driver. */
  backupTarget?: string | import('./drivers.js').BackupTarget
  /**
   * Advanced: where backup policies read the time (and backups their timestamps) from. With a
   * clock given, the scheduler sets no timers: call runDueBackupPolicies() to run what is due
   * (tests and simulations).
   */
  clock?: { now: () => number }
  /**
   * Wraps the data keys of encrypted volumes (see KeyProvider). Default: the internal provider, a
   * master key file `master.key` (mode 0600) in storagePath, created when the first encrypted
   * volume is. Supply your own for a KMS or an HSM.
   */
  keyProvider?: import('./drivers.js').KeyProvider
  /** Derive the key-encryption key from this passphrase instead (salt kept in storagePath). */
  passphrase?: string
  /**
   * How `g.mounts.mountVolume()` presents volumes: `virtual` (default: for the VolumeFile API only),
   * `fuse` (a FUSE file system per mount point; needs libfuse), or your own MountDriver.
   */
  mount?: 'virtual' | 'fuse' | import('./drivers.js').MountDriver
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
}

const BACKENDS: readonly BuiltInBackend[] = ['file', 'level', 'memory']

/** Validates open options and creates the drivers they name. */
export async function resolveDrivers (options: OpenOptions): Promise<ResolvedDrivers> {
  if (options === null || typeof options !== 'object') {
    throw new GalleonError('INVALID_ARGUMENT', `GalleonFS.open() needs an options object such as { storagePath: './data' } or { inMemory: true }, got ${describe(options)}`)
  }
  const { storagePath, inMemory, backend } = options
  if (storagePath !== undefined && (typeof storagePath !== 'string' || storagePath.length === 0)) {
    throw new GalleonError('INVALID_ARGUMENT', `storagePath must be a non-empty directory path, got ${describe(storagePath)}`)
  }
  if (inMemory !== undefined && typeof inMemory !== 'boolean') {
    throw new GalleonError('INVALID_ARGUMENT', `inMemory must be true or false, got ${describe(inMemory)}`)
  }
  if (inMemory === true && storagePath !== undefined) {
    throw new GalleonError('INVALID_ARGUMENT', 'pass either storagePath (durable) or inMemory: true, not both')
  }
  if (backend !== undefined && !BACKENDS.includes(backend)) {
    throw new GalleonError('INVALID_ARGUMENT', `backend must be one of ${BACKENDS.join(', ')}, got ${describe(backend)}`)
  }
  if (backend !== undefined && options.blockStore !== undefined) {
    throw new GalleonError('INVALID_ARGUMENT', 'pass either backend (a built-in block store by name) or blockStore (an instance), not both')
  }
  if (backend === 'memory' && storagePath !== undefined) {
    throw new GalleonError('INVALID_ARGUMENT', "backend 'memory' keeps blocks in process memory, so they would be lost while the volume records in storagePath remain; use { inMemory: true } for tests, or backend 'file' or 'level' with storagePath")
  }
  if (storagePath === undefined && inMemory !== true && (options.metadata === undefined || options.blockStore === undefined)) {
    throw new GalleonError('INVALID_ARGUMENT', 'GalleonFS.open() needs { storagePath } for durable storage, { inMemory: true } for tests, or both { metadata, blockStore } drivers')
  }

  if (storagePath !== undefined) await mkdir(storagePath, { recursive: true })
  const metadata = options.metadata ?? (storagePath !== undefined ? await openClassicLevel(join(storagePath, 'metadata')) : await openMemoryLevel())
  const chosen: BuiltInBackend = backend ?? (storagePath !== undefined ? 'file' : 'memory')
  const blockStore = options.blockStore ?? await createBackend(chosen, storagePath)
  const location = storagePath ?? (options.blockStore !== undefined || options.metadata !== undefined ? `the given drivers (block store ${blockStore.name})` : 'memory')
  return { metadata, blockStore, location }
}

async function createBackend (backend: BuiltInBackend, storagePath: string | undefined): Promise<BlockStore> {
  if (backend === 'memory') {
    const { MemoryBlockStore } = await import('../backends/memory/index.js')
    return new MemoryBlockStore()
  }
  if (storagePath === undefined) {
    throw new GalleonError('INVALID_ARGUMENT', `the ${backend} backend stores data on disk; give storagePath too`)
  }
  if (backend === 'level') {
    const { LevelBlockStore } = await import('../backends/level/index.js')
    return new LevelBlockStore({ location: join(storagePath, 'blocks-level') })
  }
  const { FileBlockStore } = await import('../backends/file/index.js')
  return new FileBlockStore({ location: join(storagePath, 'blocks') })
}

async function openClassicLevel (location: string): Promise<MetadataDatabase> {
  const ClassicLevel = await loadClassicLevel('the on-disk metadata database')
  return new ClassicLevel(location) as unknown as MetadataDatabase
}

async function openMemoryLevel (): Promise<MetadataDatabase> {
  const { MemoryLevel } = await import('memory-level')
  return new MemoryLevel() as unknown as MetadataDatabase
}
