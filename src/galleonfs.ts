// The GalleonFS facade: composes the catalog, the engine and the drivers, owns lifecycle and events.

import { EventEmitter } from 'eventemitter3'
import { GalleonError, assertBytes, describe } from './errors.js'
import type { BlockStore, BlockStoreStats } from './drivers.js'
import { BlockEngine, type VolumeBlocks } from './engine/engine.js'
import type { ReplicationHook } from './engine/journal.js'
import type { GalleonEvents } from './events.js'
import { renderPrometheus } from './metrics/prometheus.js'
import { assertWindowSeconds, type VolumeMetrics } from './metrics/recorder.js'
import { resolveDrivers, type OpenOptions } from './open-drivers.js'
import { parseSize } from './size.js'
import {
  AccessMode, VolumeState, VolumeType, WriteConcern,
  type CreateVolumeOptions, type ScrubReport, type StorageClass, type Volume, type VolumeUsage
} from './types.js'
import { Catalog, checkVolumeName, type MetadataDatabase, type VolumeRecord } from './volumes/catalog.js'
import {
  DEFAULT_STORAGE_CLASS, assertClassSupported, classReplicas, parseStorageClass
} from './volumes/storage-classes.js'

/** Anything that names a volume: its id, its name, or a Volume object. */
export type VolumeRef = string | Pick<Volume, 'id'>

const WRITE_CONCERNS = new Set<string>(Object.values(WriteConcern))
const VOLUME_TYPES = new Set<string>(Object.values(VolumeType))
const ACCESS_MODES = new Set<string>(Object.values(AccessMode))

/**
 * An open GalleonFS instance: named block volumes on a metadata database and a block store.
 * Create one with `GalleonFS.open()`; call `close()` when done.
 */
export class GalleonFS extends EventEmitter<GalleonEvents> {
  readonly #catalog: Catalog
  readonly #engine: BlockEngine
  readonly #metadata: MetadataDatabase
  readonly #store: BlockStore
  /** Where the data lives ('memory' for in-memory instances). */
  readonly location: string
  #closed = false
  #closing: Promise<void> | undefined

  private constructor (metadata: MetadataDatabase, store: BlockStore, catalog: Catalog, engine: BlockEngine, location: string) {
    super()
    this.#metadata = metadata
    this.#store = store
    this.#catalog = catalog
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
    const { metadata, blockStore, location } = await resolveDrivers(options)
    try {
      await metadata.open()
    } catch (err) {
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
      await instance.#recover()
      return instance
    } catch (err) {
      await blockStore.close().catch(() => {})
      await metadata.close().catch(() => {})
      throw err
    }
  }

  /** Recovery after open: rebuild block maps, finish interrupted deletes, drop ephemeral volumes. */
  async #recover (): Promise<void> {
    const records = this.#catalog.volumes()
    await this.#engine.recover(records.map((record) => ({ storageId: record.storageId, sizeBytes: record.sizeBytes })))
    for (const record of records) {
      if (record.state === VolumeState.Deleting || record.type === VolumeType.Ephemeral) await this.#destroy(record)
      else if (record.state !== VolumeState.Available) await this.#catalog.updateVolume(record.id, { state: VolumeState.Available })
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
    this.#engine.replication = hook
  }

  /**
   * Flushes every acknowledged write, deletes ephemeral volumes, and closes the drivers.
   * Idempotent; further calls on the instance fail with NOT_OPEN.
   */
  async close (): Promise<void> {
    if (this.#closing !== undefined) return await this.#closing
    this.#closed = true
    this.#closing = (async () => {
      try {
        for (const record of this.#catalog.volumes()) {
          if (record.type === VolumeType.Ephemeral) await this.#destroy(record)
        }
        await this.#engine.close()
      } finally {
        await this.#store.close()
        await this.#metadata.close()
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
    const known = new Set(['name', 'type', 'sizeBytes', 'storageClass', 'replicas', 'accessModes', 'labels'])
    for (const key of Object.keys(options)) {
      if (!known.has(key)) throw new GalleonError('INVALID_ARGUMENT', `unknown createVolume option ${JSON.stringify(key)}; allowed: ${[...known].join(', ')}`)
    }
    const name = options.name ?? `vol-${Math.random().toString(16).slice(2, 10)}`
    checkVolumeName(name)
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
    assertClassSupported(storageClass, replicas)

    const unreserve = this.#catalog.reserveName(name)
    let record: VolumeRecord
    try {
      record = await this.#catalog.createVolume({
        name,
        type: type as VolumeType,
        state: VolumeState.Available,
        sizeBytes,
        blockSize: this.#engine.blockSize,
        storageClass: storageClass.name,
        replicas,
        accessModes: [...new Set(accessModes)] as AccessMode[],
        labels
      })
    } finally {
      unreserve()
    }
    this.#engine.attach(record.storageId, record.sizeBytes)
    const volume = toVolume(record)
    this.emit('volume:created', volume)
    return volume
  }

  /** Looks a volume up by id or name. */
  async getVolume (vol: VolumeRef): Promise<Volume> {
    this.#assertOpen()
    return toVolume(this.#catalog.resolve(vol))
  }

  /** All volumes, oldest first. */
  async listVolumes (): Promise<Volume[]> {
    this.#assertOpen()
    return this.#catalog.volumes().map(toVolume).sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.name.localeCompare(b.name))
  }

  /**
   * Deletes a volume and frees its blocks, after its in-flight I/O finishes. A volume whose storage
   * class has reclaim policy `Retain` is kept unless `force` is set.
   */
  async deleteVolume (vol: VolumeRef, options: { force?: boolean } = {}): Promise<void> {
    this.#assertOpen()
    const record = this.#catalog.resolve(vol)
    if (record.state === VolumeState.Deleting) throw new GalleonError('BUSY', `volume ${record.name} is already being deleted`)
    const storageClass = this.#catalog.storageClass(record.storageClass)
    if (storageClass?.reclaimPolicy === 'Retain' && options?.force !== true) {
      throw new GalleonError('BUSY', `volume ${record.name} uses storage class ${storageClass.name} whose reclaim policy is Retain; pass { force: true } to delete its data anyway`)
    }
    await this.#destroy(record)
  }

  async #destroy (record: VolumeRecord): Promise<void> {
    const deleting = await this.#catalog.updateVolume(record.id, { state: VolumeState.Deleting })
    this.emit('volume:state', toVolume(deleting), record.state)
    const volume = this.#engine.volume(record.storageId) ?? this.#engine.attach(record.storageId, record.sizeBytes)
    await this.#engine.destroy(volume)
    await this.#catalog.deleteVolume(record.id)
    this.emit('volume:deleted', toVolume(deleting))
  }

  /** Grows a volume online; the new space reads as zeros. Shrinking is refused. */
  async expandVolume (vol: VolumeRef, newSizeBytes: number | string): Promise<Volume> {
    this.#assertOpen()
    const record = this.#catalog.resolve(vol)
    const sizeBytes = parseSize(newSizeBytes)
    this.#checkVolumeSize(sizeBytes)
    if (sizeBytes < record.sizeBytes) {
      throw new GalleonError('INVALID_ARGUMENT', `volume ${record.name} is ${record.sizeBytes} bytes; shrinking to ${sizeBytes} would destroy data and is not supported. Create a smaller volume and copy the data instead`)
    }
    if (sizeBytes === record.sizeBytes) return toVolume(record)
    const updated = await this.#catalog.updateVolume(record.id, { sizeBytes })
    const volume = this.#volumeBlocks(updated)
    volume.sizeBytes = sizeBytes
    const result = toVolume(updated)
    this.emit('volume:expanded', result, record.sizeBytes)
    return result
  }

  /** Bytes actually allocated to the volume (thin provisioning: never-written blocks cost nothing). */
  async getVolumeUsage (vol: VolumeRef): Promise<number> {
    return (await this.getVolumeUsageDetails(vol)).allocatedBytes
  }

  /** Allocated bytes, allocated blocks and provisioned size of a volume. */
  async getVolumeUsageDetails (vol: VolumeRef): Promise<VolumeUsage> {
    this.#assertOpen()
    const record = this.#catalog.resolve(vol)
    const blocks = this.#engine.allocatedBlocks(this.#volumeBlocks(record))
    return { allocatedBytes: blocks * this.#engine.blockSize, allocatedBlocks: blocks, sizeBytes: record.sizeBytes }
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
    if (this.#catalog.storageClass(storageClass.name) !== undefined) {
      throw new GalleonError('STORAGE_CLASS_EXISTS', `a storage class named ${JSON.stringify(storageClass.name)} already exists; pick another name or delete it first`)
    }
    await this.#catalog.putStorageClass(storageClass)
    this.emit('storage-class:created', structuredClone(storageClass))
    return structuredClone(storageClass)
  }

  /** Deletes a custom storage class that no volume uses. */
  async deleteStorageClass (name: string): Promise<void> {
    const storageClass = await this.getStorageClass(name)
    if (storageClass.builtIn) throw new GalleonError('INVALID_ARGUMENT', `storage class ${name} is built in and cannot be deleted`)
    const users = this.#catalog.volumes().filter((record) => record.storageClass === name)
    if (users.length > 0) {
      throw new GalleonError('BUSY', `storage class ${name} is used by ${users.length} volume(s) (${users.slice(0, 3).map((r) => r.name).join(', ')}); delete them first`)
    }
    await this.#catalog.deleteStorageClass(name)
    this.emit('storage-class:deleted', storageClass)
  }

  // ---------------------------------------------------------------- I/O

  /**
   * Writes one block. Shorter data is zero-padded to the block size. Resolves when the write
   * concern is met: `WriteAcknowledged` (default) once the block store has applied it, `WriteDurable` once synced.
   */
  async writeBlock (vol: VolumeRef, blockIndex: number, data: Uint8Array, concern: WriteConcern | `${WriteConcern}` = WriteConcern.WriteAcknowledged): Promise<void> {
    this.#assertOpen()
    const record = this.#catalog.resolve(vol)
    const volume = this.#ioVolume(record)
    assertBytes(data, 'data')
    const checked = this.#checkConcern(concern)
    try {
      await this.#engine.writeBlock(volume, blockIndex, data, checked)
    } catch (err) { throw this.#ioFailed(record, 'write', err) }
  }

  /** Reads one block: always `blockSize` bytes; never-written blocks read as zeros. */
  async readBlock (vol: VolumeRef, blockIndex: number): Promise<Uint8Array> {
    this.#assertOpen()
    const record = this.#catalog.resolve(vol)
    try {
      return await this.#engine.readBlock(this.#ioVolume(record), blockIndex)
    } catch (err) { throw this.#ioFailed(record, 'read', err) }
  }

  /** Writes bytes at any offset (read-modify-write at partial blocks); atomic as a whole. */
  async write (vol: VolumeRef, offset: number, data: Uint8Array, concern: WriteConcern | `${WriteConcern}` = WriteConcern.WriteAcknowledged): Promise<void> {
    this.#assertOpen()
    const record = this.#catalog.resolve(vol)
    const volume = this.#ioVolume(record)
    assertBytes(data, 'data')
    const checked = this.#checkConcern(concern)
    try {
      await this.#engine.write(volume, offset, data, checked)
    } catch (err) { throw this.#ioFailed(record, 'write', err) }
  }

  /** Reads `length` bytes at `offset`. */
  async read (vol: VolumeRef, offset: number, length: number): Promise<Uint8Array> {
    this.#assertOpen()
    const record = this.#catalog.resolve(vol)
    try {
      return await this.#engine.read(this.#ioVolume(record), offset, length)
    } catch (err) { throw this.#ioFailed(record, 'read', err) }
  }

  /** Makes every write acknowledged so far durable (writes of all volumes share the sync). */
  async flush (vol?: VolumeRef): Promise<void> {
    this.#assertOpen()
    const record = vol === undefined ? undefined : this.#catalog.resolve(vol)
    try {
      await this.#engine.flush()
    } catch (err) { throw record === undefined ? err : this.#ioFailed(record, 'flush', err) }
  }

  /** Discards a byte range: whole blocks are freed and read as zeros, partial edges are zeroed. */
  async trim (vol: VolumeRef, offset: number, length: number): Promise<void> {
    this.#assertOpen()
    const record = this.#catalog.resolve(vol)
    try {
      await this.#engine.trim(this.#ioVolume(record), offset, length, WriteConcern.WriteAcknowledged)
    } catch (err) { throw this.#ioFailed(record, 'trim', err) }
  }

  /** Reads and verifies every allocated block of a volume; reports (and emits) each bad block. */
  async scrub (vol: VolumeRef): Promise<ScrubReport> {
    this.#assertOpen()
    const record = this.#catalog.resolve(vol)
    const { checked, bad } = await this.#engine.scrub(this.#ioVolume(record))
    this.emit('scrub:completed', { volumeId: record.id, blocksChecked: checked, badBlocks: bad.length })
    return { volumeId: record.id, blocksChecked: checked, badBlocks: bad }
  }

  // ---------------------------------------------------------------- metrics

  /** I/O statistics of a volume over the sliding window, plus lifetime counters. */
  async getVolumeMetrics (vol: VolumeRef): Promise<VolumeMetrics> {
    this.#assertOpen()
    const record = this.#catalog.resolve(vol)
    return { volumeId: record.id, volumeName: record.name, ...this.#volumeBlocks(record).metrics.snapshot() }
  }

  /** All metrics in the Prometheus text exposition format (version 0.0.4). */
  async metricsText (): Promise<string> {
    const store = await this.getStorageStats()
    return renderPrometheus({
      volumes: this.#catalog.volumes().map((record) => {
        const volume = this.#volumeBlocks(record)
        return {
          id: record.id,
          name: record.name,
          metrics: volume.metrics.snapshot(),
          sizeBytes: record.sizeBytes,
          usedBytes: this.#engine.allocatedBlocks(volume) * this.#engine.blockSize
        }
      }),
      store
    })
  }

  /**
   * The block store's figures: its backend, live blocks and bytes, bytes on its medium (garbage
   * awaiting compaction included), and syncs to stable storage so far.
   */
  async getStorageStats (): Promise<BlockStoreStats & { backend: string }> {
    this.#assertOpen()
    return { backend: this.#store.name, ...await this.#store.stats() }
  }

  /** Journal statistics: store batches issued and how many asked for a sync (see getStorageStats for device syncs). */
  journalStats (): { lastLsn: number, committedLsn: number, groups: number, syncs: number } {
    this.#assertOpen()
    const journal = this.#engine.journal
    return { lastLsn: journal.lastLsn, committedLsn: journal.committedLsn, ...journal.stats }
  }

  // ---------------------------------------------------------------- not in this release

  /** Snapshots arrive with copy-on-write support; until then this throws NOT_IMPLEMENTED. */
  async createSnapshot (_vol: VolumeRef, _name: string): Promise<never> { throw notYet('snapshots') }
  /** Not in this release: throws NOT_IMPLEMENTED. */
  async listSnapshots (_vol: VolumeRef): Promise<never> { throw notYet('snapshots') }
  /** Not in this release: throws NOT_IMPLEMENTED. */
  async deleteSnapshot (_vol: VolumeRef, _snapshot: string): Promise<never> { throw notYet('snapshots') }
  /** Not in this release: throws NOT_IMPLEMENTED. */
  async restoreSnapshot (_vol: VolumeRef, _snapshot: string): Promise<never> { throw notYet('snapshots') }
  /** Not in this release: throws NOT_IMPLEMENTED. */
  async cloneVolume (_source: unknown, _newName: string): Promise<never> { throw notYet('clones') }
  /** Not in this release: throws NOT_IMPLEMENTED. */
  async createBackup (_vol: VolumeRef, _options: unknown): Promise<never> { throw notYet('backups') }
  /** Not in this release: throws NOT_IMPLEMENTED. */
  async listBackups (_vol?: VolumeRef): Promise<never> { throw notYet('backups') }
  /** Not in this release: throws NOT_IMPLEMENTED. */
  async restoreBackup (_backupId: string, _options?: unknown): Promise<never> { throw notYet('backups') }

  // ---------------------------------------------------------------- internals

  #assertOpen (): void {
    if (this.#closed) throw new GalleonError('NOT_OPEN', 'this GalleonFS instance is closed; open a new one with GalleonFS.open()')
  }

  #volumeBlocks (record: VolumeRecord): VolumeBlocks {
    return this.#engine.volume(record.storageId) ?? this.#engine.attach(record.storageId, record.sizeBytes)
  }

  #ioVolume (vol: VolumeRef | VolumeRecord): VolumeBlocks {
    const record = this.#catalog.resolve(vol)
    if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
    return this.#volumeBlocks(record)
  }

  /** Reports failures that are not the caller's fault (I/O, corruption) as `io:error` events. */
  #ioFailed (record: VolumeRecord, operation: 'read' | 'write' | 'trim' | 'flush', err: unknown): unknown {
    const code = err instanceof GalleonError ? err.code : 'IO_ERROR'
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

function toVolume (record: VolumeRecord): Volume {
  return {
    id: record.id,
    name: record.name,
    type: record.type,
    state: record.state,
    sizeBytes: record.sizeBytes,
    blockSize: record.blockSize,
    storageClass: record.storageClass,
    replicas: record.replicas,
    accessModes: [...record.accessModes],
    labels: { ...record.labels },
    createdAt: record.createdAt,
    updatedAt: record.updatedAt
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

function notYet (feature: string): GalleonError {
  return new GalleonError('NOT_IMPLEMENTED', `${feature} are not available in this release of GalleonFS yet`)
}
