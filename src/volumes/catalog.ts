// The metadata catalog: volume records, storage classes, storage pools and instance settings, kept in any
// abstract-level database (memory-level in tests, classic-level on disk), cached in memory.
// The records are declared in records.ts, names and namespaces checked in names.ts.

import type { AbstractSublevel } from 'abstract-level'
import { randomUUID } from 'node:crypto'
import { GalleonError, describe, quoted } from '../errors.js'
import { VolumeState, type StorageClass } from '../types.js'
import { BUILT_IN_STORAGE_CLASSES } from './storage-classes.js'
import type { StoragePool } from './pools.js'
import { holdCount } from './counts.js'
import { DEFAULT_NAMESPACE, nameKey, namespaceOf } from './names.js'
import { storedMetadata, type MetadataDatabase, type MigrationRecord, type MigrationSwitch, type SnapshotRecord, type VolumeRecord } from './records.js'

export { DEFAULT_NAMESPACE, checkNamespace, checkVolumeName, looksLikeId, namespaceOf } from './names.js'
export { storedMetadata } from './records.js'
export type { MetadataDatabase, MigrationRecord, MigrationSwitch, SnapshotRecord, VolumeRecord } from './records.js'

type JsonSublevel = AbstractSublevel<MetadataDatabase, any, string, any>
/** Layout version of the metadata; bumped on incompatible changes. */
export const CATALOG_FORMAT = 1
/** classic-level's option to fsync its log before resolving; abstract-level passes it through sublevels. */
const SYNC = { sync: true } as unknown as Record<string, never>

/** Persistent, cached catalog of volumes and storage classes. */
export class Catalog {
  readonly #db: MetadataDatabase
  readonly #volumesDb: JsonSublevel
  readonly #classesDb: JsonSublevel
  readonly #settingsDb: JsonSublevel
  readonly #snapshotsDb: JsonSublevel
  readonly #poolsDb: JsonSublevel
  readonly #migrationsDb: JsonSublevel
  readonly #migrations = new Map<string, MigrationRecord>()
  readonly #pools = new Map<string, StoragePool>()
  readonly #volumes = new Map<string, VolumeRecord>()
  /** Source volume id -> ids of the clones reading from it: clonesOf without a scan of every volume. */
  readonly #clones = new Map<string, Set<string>>()
  /** Volume id -> its snapshots by id, in creation order. */
  readonly #snapshots = new Map<string, Map<string, SnapshotRecord>>()
  /** Snapshot id -> its record, whatever its volume: snapshotById without a scan of every volume. */
  readonly #snapshotsById = new Map<string, SnapshotRecord>()
  readonly #names = new Map<string, string>()
  readonly #classes = new Map<string, StorageClass>()
  /** Storage classes being created or deleted now: their names are taken meanwhile. */
  readonly #classesChanging = new Set<string>()
  /** Volumes being set up per storage class, whose records are not stored yet. */
  readonly #classUses = new Map<string, number>()
  #nextStorageId = 1
  /** Namespace that bare volume names are looked up and reserved in (the caller's). */
  currentNamespace: () => string = () => DEFAULT_NAMESPACE
  #blockSize = 0
  /** The settings as load() found them (keys of the settings sublevel). */
  #settings = new Map<string, unknown>()

  constructor (db: MetadataDatabase) {
    this.#db = db
    this.#volumesDb = db.sublevel('volumes', { valueEncoding: 'json' }) as JsonSublevel
    this.#classesDb = db.sublevel('classes', { valueEncoding: 'json' }) as JsonSublevel
    this.#settingsDb = db.sublevel('settings', { valueEncoding: 'json' }) as JsonSublevel
    this.#snapshotsDb = db.sublevel('snapshots', { valueEncoding: 'json' }) as JsonSublevel
    this.#poolsDb = db.sublevel('pools', { valueEncoding: 'json' }) as JsonSublevel
    this.#migrationsDb = db.sublevel('migrations', { valueEncoding: 'json' }) as JsonSublevel
  }

  get blockSize (): number { return this.#blockSize }

  /**
   * Stores a setting of the storage durably unless load() found it with this value already (a fact
   * about the storage that later opens check before anything else, see storage-layout.ts).
   * Releases that do not know the key ignore it.
   */
  async recordSetting (key: string, value: unknown): Promise<void> {
    if (this.#settings.get(key) === value) return
    await storedMetadata(this.#settingsDb.put(key, value, SYNC))
    this.#settings.set(key, value)
  }

  /**
   * Loads everything into memory. On a fresh database, records `blockSize`; on an existing one,
   * checks it matches (a different block size would misread every volume).
   */
  async load (blockSize: number | undefined): Promise<void> {
    const settings = new Map<string, unknown>(await this.#settingsDb.iterator().all())
    this.#settings = settings
    const storedFormat = settings.get('format')
    if (storedFormat !== undefined && storedFormat !== CATALOG_FORMAT) {
      throw new GalleonError('CORRUPTION', `metadata format ${String(storedFormat)} is not supported by this version (expects ${CATALOG_FORMAT}); use the GalleonFS version that wrote it`)
    }
    const storedBlockSize = settings.get('blockSize') as number | undefined
    if (storedBlockSize === undefined) {
      this.#blockSize = blockSize ?? 4096
      await storedMetadata(this.#settingsDb.batch([
        { type: 'put', key: 'format', value: CATALOG_FORMAT },
        { type: 'put', key: 'blockSize', value: this.#blockSize },
        { type: 'put', key: 'nextStorageId', value: 1 }
      ], SYNC))
    } else {
      if (blockSize !== undefined && blockSize !== storedBlockSize) {
        throw new GalleonError('INVALID_ARGUMENT', `this storage was created with block size ${storedBlockSize}, not ${blockSize}; omit blockSize or pass ${storedBlockSize}`)
      }
      this.#blockSize = storedBlockSize
      this.#nextStorageId = (settings.get('nextStorageId') as number | undefined) ?? 1
    }
    for (const storageClass of BUILT_IN_STORAGE_CLASSES) this.#classes.set(storageClass.name, storageClass)
    for (const [name, storageClass] of await this.#classesDb.iterator().all()) {
      this.#classes.set(name as string, { ...(storageClass as StorageClass), builtIn: false })
    }
    for (const [name, pool] of await this.#poolsDb.iterator().all()) this.#pools.set(name as string, pool as StoragePool)
    for (const [id, record] of await this.#volumesDb.iterator().all()) {
      const volume = record as VolumeRecord
      this.#putVolumeRecord(id as string, volume)
      this.#names.set(nameKey(namespaceOf(volume), volume.name), volume.id)
      if (volume.storageId >= this.#nextStorageId) this.#nextStorageId = volume.storageId + 1
    }
    for (const [id, migration] of await this.#migrationsDb.iterator().all()) {
      const record = migration as MigrationRecord
      this.#migrations.set(id as string, record)
      if (record.storageId >= this.#nextStorageId) this.#nextStorageId = record.storageId + 1
    }
    const snapshots = (await this.#snapshotsDb.iterator().all()).map(([, record]) => record as SnapshotRecord)
    snapshots.sort((a, b) => a.gen - b.gen || a.createdAt.localeCompare(b.createdAt))
    for (const snapshot of snapshots) this.#putSnapshot(snapshot)
  }

  volumes (): VolumeRecord[] {
    return [...this.#volumes.values()]
  }

  /** The volume with this id, if there is one (any namespace). */
  volumeById (id: string): VolumeRecord | undefined {
    return this.#volumes.get(id)
  }

  /**
   * Finds a volume by id, by name (in the current namespace) or by `namespace/name`; throws
   * VOLUME_NOT_FOUND / INVALID_ARGUMENT.
   */
  resolve (ref: unknown): VolumeRecord {
    if (typeof ref === 'object' && ref !== null) {
      // A snapshot (its id and its volume's) or a { volume, snapshot } reference is not a volume:
      // acting on its `id` while access was checked on its volume would cross namespaces.
      if ('volumeId' in ref || 'snapshot' in ref || 'volume' in ref) {
        throw new GalleonError('INVALID_ARGUMENT', `this call takes a volume (its id, its name or a Volume object), not a snapshot reference; got ${describe(ref)}. Snapshots are read-only: to change one's data or size, clone it with cloneVolume({ volume, snapshot }, newName) and use the clone`)
      }
      if (typeof (ref as { id?: unknown }).id === 'string') ref = (ref as { id: string }).id
    }
    if (typeof ref !== 'string' || ref.length === 0) {
      throw new GalleonError('INVALID_ARGUMENT', `a volume is named by its id or name (a non-empty string), got ${describe(ref)}`)
    }
    // By id first: the I/O path names volumes by id, and the name key needs the caller's namespace.
    const byId = this.#volumes.get(ref)
    if (byId !== undefined) return byId
    const slash = ref.indexOf('/')
    const key = slash < 0 ? nameKey(this.currentNamespace(), ref) : ref
    const record = this.#volumes.get(this.#names.get(key) ?? '')
    if (record === undefined) {
      throw new GalleonError('VOLUME_NOT_FOUND', `no volume with id or name ${quoted(ref)}${slash < 0 ? ` in namespace ${this.currentNamespace()}` : ''}; listVolumes() shows the existing ones`)
    }
    return record
  }

  /** Whether a volume of that name exists in the namespace, or a create under way has reserved it. */
  nameTaken (name: string, namespace: string): boolean {
    return this.#names.has(nameKey(namespace, name))
  }

  /** Reserves a name in a namespace synchronously so concurrent creates cannot both take it. */
  reserveName (name: string, namespace: string): () => void {
    const key = nameKey(namespace, name)
    if (this.#names.has(key)) throw new GalleonError('VOLUME_EXISTS', `a volume named ${JSON.stringify(name)} already exists in namespace ${namespace}; choose another name or delete it first`)
    this.#names.set(key, '')
    return () => { if (this.#names.get(key) === '') this.#names.delete(key) }
  }

  /**
   * Persists a new volume (with its storage id) and caches it. `prepare` runs once the id and storage
   * id are chosen, before the record is stored or visible (an encrypted volume gets its keys there,
   * so no I/O can reach it without them).
   */
  async createVolume (fields: Omit<VolumeRecord, 'id' | 'storageId' | 'createdSeq' | 'createdAt' | 'updatedAt'> & { id?: string }, prepare?: (record: VolumeRecord) => Promise<void>): Promise<VolumeRecord> {
    const now = new Date().toISOString()
    if (fields.id !== undefined && this.#volumes.has(fields.id)) throw new GalleonError('VOLUME_EXISTS', `a volume with id ${fields.id} exists already`)
    const storageId = this.#nextStorageId++
    const record: VolumeRecord = { ...fields, id: fields.id ?? randomUUID(), storageId, createdSeq: storageId, createdAt: now, updatedAt: now }
    if (record.storageId > 0xffffffff) throw new GalleonError('NO_SPACE', 'volume storage ids are exhausted (2^32 volumes created)')
    if (prepare !== undefined) await prepare(record)
    await storedMetadata(this.#db.batch([
      { type: 'put', sublevel: this.#volumesDb, key: record.id, value: record },
      { type: 'put', sublevel: this.#settingsDb, key: 'nextStorageId', value: this.#nextStorageId }
    ] as any, SYNC))
    this.#putVolumeRecord(record.id, record)
    this.#names.set(nameKey(namespaceOf(record), record.name), record.id)
    return record
  }

  /** Writes of each volume's record, chained: each reads the record the one before it left. */
  readonly #recordWrites = new Map<string, Promise<unknown>>()

  /**
   * Runs `task` (a read-modify-write of a volume's record) after every earlier one of the same
   * volume: two writers that overlap (a replica saving its position while a migration switches the
   * volume over) must not store a copy of the record the other has replaced.
   */
  async #serial<T> (id: string, task: () => Promise<T>): Promise<T> {
    const before = this.#recordWrites.get(id) ?? Promise.resolve()
    const run = before.then(task, task)
    const settled = run.catch(() => {})
    this.#recordWrites.set(id, settled)
    void settled.then(() => { if (this.#recordWrites.get(id) === settled) this.#recordWrites.delete(id) })
    return await run
  }

  /** Persists changed fields of a volume. */
  async updateVolume (id: string, changes: Partial<Pick<VolumeRecord, 'state' | 'sizeBytes' | 'labels' | 'source' | 'revertTo' | 'revertToken' | 'revertTokens' | 'replication' | 'qos' | 'storageClass' | 'replicas' | 'convertingFrom' | 'creating'>>, options: { sync?: boolean } = {}): Promise<VolumeRecord> {
    return await this.#serial(id, async () => {
      const current = this.#volumes.get(id)
      if (current === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${id} no longer exists`)
      const record: VolumeRecord = { ...current, ...changes, updatedAt: new Date().toISOString() }
      await storedMetadata(this.#volumesDb.put(id, record, options.sync === false ? {} : SYNC))
      this.#putVolumeRecord(id, record)
      return record
    })
  }

  /** Removes a volume record and its snapshots' records in one batch. */
  async deleteVolume (id: string): Promise<void> {
    await this.#serial(id, async () => { await this.#deleteVolume(id) })
  }

  async #deleteVolume (id: string): Promise<void> {
    const record = this.#volumes.get(id)
    if (record === undefined) return
    const snapshots = [...this.#volumeSnapshots(id).keys()]
    await storedMetadata(this.#db.batch([
      { type: 'del', sublevel: this.#volumesDb, key: id },
      ...snapshots.map((key) => ({ type: 'del', sublevel: this.#snapshotsDb, key }))
    ] as any, SYNC))
    this.#dropVolumeRecord(id)
    for (const snapshotId of snapshots) this.#snapshotsById.delete(snapshotId)
    this.#snapshots.delete(id)
    const key = nameKey(namespaceOf(record), record.name)
    if (this.#names.get(key) === id) this.#names.delete(key)
  }

  /** Live migrations recorded as in progress (after a crash: the ones it interrupted). */
  migrations (): MigrationRecord[] {
    return [...this.#migrations.values()]
  }

  /**
   * Records the start of a live migration of a volume and gives its destination a fresh storage
   * id (persisted with it, so the id is never handed out again).
   */
  async beginMigration (volumeId: string, target: Omit<MigrationRecord, 'volumeId' | 'storageId' | 'fromStorageId' | 'startedAt'>): Promise<MigrationRecord> {
    const volume = this.#volumes.get(volumeId)
    if (volume === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${volumeId} no longer exists`)
    if (this.#migrations.has(volumeId)) throw new GalleonError('BUSY', `volume ${volume.name} is being migrated already`)
    const storageId = this.#nextStorageId++
    if (storageId > 0xffffffff) throw new GalleonError('NO_SPACE', 'volume storage ids are exhausted (2^32 volumes created)')
    const record: MigrationRecord = { ...target, volumeId, storageId, fromStorageId: volume.storageId, startedAt: new Date().toISOString() }
    await storedMetadata(this.#db.batch([
      { type: 'put', sublevel: this.#migrationsDb, key: volumeId, value: record },
      { type: 'put', sublevel: this.#settingsDb, key: 'nextStorageId', value: this.#nextStorageId }
    ] as any, SYNC))
    this.#migrations.set(volumeId, record)
    return record
  }

  /** Forgets a migration that did not switch over (cancelled, failed, or cut short by a crash). */
  async abandonMigration (volumeId: string): Promise<void> {
    if (!this.#migrations.has(volumeId)) return
    await storedMetadata(this.#migrationsDb.del(volumeId, SYNC))
    this.#migrations.delete(volumeId)
  }

  /**
   * The switch-over of a live migration, in one atomic metadata batch: the volume record (same id
   * and name) points at the destination storage with its new class, encryption and pool, each
   * snapshot record reads at its destination generation, a clone's link to its source is cut (the
   * destination holds all its data), the migration record goes, and `extra` (key records) applies.
   * A crash leaves either all of it or none.
   */
  async commitMigration (volumeId: string, change: MigrationSwitch, snapshotGens: ReadonlyMap<string, number>, extra: readonly object[] = []): Promise<VolumeRecord> {
    return await this.#serial(volumeId, async () => await this.#commitMigration(volumeId, change, snapshotGens, extra))
  }

  async #commitMigration (volumeId: string, change: MigrationSwitch, snapshotGens: ReadonlyMap<string, number>, extra: readonly object[]): Promise<VolumeRecord> {
    const current = this.#volumes.get(volumeId)
    if (current === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${volumeId} no longer exists`)
    const { pool: _pool, source: _source, ...rest } = current
    const record: VolumeRecord = { ...rest, storageId: change.storageId, storageClass: change.storageClass, encrypted: change.encrypted, ...(change.pool === undefined ? {} : { pool: change.pool }), updatedAt: new Date().toISOString() }
    const snapshots = this.snapshots(volumeId).map((snapshot) => {
      const gen = snapshotGens.get(snapshot.id)
      if (gen === undefined) throw new GalleonError('CORRUPTION', `snapshot ${snapshot.name} of volume ${current.name} was not copied by the migration`)
      return { ...snapshot, gen }
    })
    await storedMetadata(this.#db.batch([
      { type: 'put', sublevel: this.#volumesDb, key: volumeId, value: record },
      ...snapshots.map((snapshot) => ({ type: 'put', sublevel: this.#snapshotsDb, key: snapshot.id, value: snapshot })),
      { type: 'del', sublevel: this.#migrationsDb, key: volumeId },
      ...extra
    ] as any, SYNC))
    this.#putVolumeRecord(volumeId, record)
    for (const snapshot of snapshots) this.#putSnapshot(snapshot)
    this.#migrations.delete(volumeId)
    return record
  }

  /** Snapshots of a volume, oldest first. */
  snapshots (volumeId: string): SnapshotRecord[] {
    return [...(this.#snapshots.get(volumeId)?.values() ?? [])]
  }

  /** Finds a snapshot of a volume by id or name; throws SNAPSHOT_NOT_FOUND / INVALID_ARGUMENT. */
  resolveSnapshot (volume: VolumeRecord, ref: unknown): SnapshotRecord {
    if (typeof ref === 'object' && ref !== null && typeof (ref as { id?: unknown }).id === 'string') ref = (ref as { id: string }).id
    if (typeof ref !== 'string' || ref.length === 0) {
      throw new GalleonError('INVALID_ARGUMENT', `a snapshot is named by its id or name (a non-empty string), got ${describe(ref)}`)
    }
    const snapshots = this.#volumeSnapshots(volume.id)
    const found = snapshots.get(ref) ?? [...snapshots.values()].find((snapshot) => snapshot.name === ref)
    if (found === undefined) throw new GalleonError('SNAPSHOT_NOT_FOUND', `volume ${volume.name} has no snapshot with id or name ${quoted(ref)}; listSnapshots() shows its snapshots`)
    return found
  }

  /** A snapshot by id, whatever its volume. */
  snapshotById (id: string): SnapshotRecord | undefined {
    return this.#snapshotsById.get(id)
  }

  /** Persists a new snapshot record. */
  async createSnapshot (fields: Omit<SnapshotRecord, 'id' | 'createdAt'> & { id?: string }): Promise<SnapshotRecord> {
    const record: SnapshotRecord = { ...fields, id: fields.id ?? randomUUID(), createdAt: new Date().toISOString() }
    await storedMetadata(this.#snapshotsDb.put(record.id, record, SYNC))
    this.#putSnapshot(record)
    return record
  }

  /** Removes a snapshot record. */
  async deleteSnapshot (snapshot: SnapshotRecord): Promise<void> {
    await storedMetadata(this.#snapshotsDb.del(snapshot.id, SYNC))
    this.#snapshots.get(snapshot.volumeId)?.delete(snapshot.id)
    this.#snapshotsById.delete(snapshot.id)
  }

  /** Volumes cloned from a volume (optionally from one of its snapshots) that still read from it. */
  clonesOf (volumeId: string, snapshotId?: string): VolumeRecord[] {
    const out: VolumeRecord[] = []
    for (const id of this.#clones.get(volumeId) ?? []) {
      const record = this.#volumes.get(id)
      if (record?.source?.volumeId === volumeId && (snapshotId === undefined || record.source.snapshotId === snapshotId)) out.push(record)
    }
    return out
  }

  #putVolumeRecord (id: string, record: VolumeRecord): void {
    const before = this.#volumes.get(id)?.source?.volumeId
    this.#volumes.set(id, record)
    const after = record.source?.volumeId
    if (before === after) return
    if (before !== undefined) this.#unlinkClone(before, id)
    if (after !== undefined) {
      let clones = this.#clones.get(after)
      if (clones === undefined) this.#clones.set(after, clones = new Set())
      clones.add(id)
    }
  }

  #dropVolumeRecord (id: string): void {
    const source = this.#volumes.get(id)?.source?.volumeId
    this.#volumes.delete(id)
    if (source !== undefined) this.#unlinkClone(source, id)
  }

  #unlinkClone (source: string, id: string): void {
    const clones = this.#clones.get(source)
    clones?.delete(id)
    if (clones?.size === 0) this.#clones.delete(source)
  }

  #putSnapshot (record: SnapshotRecord): void {
    this.#volumeSnapshots(record.volumeId).set(record.id, record)
    this.#snapshotsById.set(record.id, record)
  }

  #volumeSnapshots (volumeId: string): Map<string, SnapshotRecord> {
    let snapshots = this.#snapshots.get(volumeId)
    if (snapshots === undefined) this.#snapshots.set(volumeId, snapshots = new Map())
    return snapshots
  }

  storageClasses (): StorageClass[] {
    return [...this.#classes.values()]
  }

  storageClass (name: string): StorageClass | undefined {
    return this.#classes.get(name)
  }

  /**
   * Takes a storage class name while the class is created or deleted: STORAGE_CLASS_EXISTS when
   * it is taken (by a class, or by another create or delete under way). Call the returned function
   * once the change is stored (or failed).
   */
  claimStorageClass (name: string, doing: 'create' | 'delete'): () => void {
    if (this.#classesChanging.has(name)) {
      throw new GalleonError(doing === 'create' ? 'STORAGE_CLASS_EXISTS' : 'BUSY', `storage class ${JSON.stringify(name)} is being created or deleted by another call right now; retry once it is done`)
    }
    if (doing === 'create' && this.#classes.has(name)) {
      throw new GalleonError('STORAGE_CLASS_EXISTS', `a storage class named ${JSON.stringify(name)} already exists; pick another name or delete it first`)
    }
    if (doing === 'delete' && (this.#classUses.get(name) ?? 0) > 0) {
      throw new GalleonError('BUSY', `storage class ${name} is used by ${this.#classUses.get(name) ?? 0} volume(s) being created or migrated to it right now; delete them first`)
    }
    this.#classesChanging.add(name)
    return () => { this.#classesChanging.delete(name) }
  }

  /**
   * Marks a storage class as used by a volume being set up (created, or migrated to it), until the
   * returned function is called: it cannot be deleted meanwhile. STORAGE_CLASS_NOT_FOUND when it was
   * deleted or replaced since `storageClass` was looked up, or is being deleted now.
   */
  useStorageClass (storageClass: StorageClass): () => void {
    const name = storageClass.name
    if (this.#classes.get(name) !== storageClass || this.#classesChanging.has(name)) {
      throw new GalleonError('STORAGE_CLASS_NOT_FOUND', `storage class ${quoted(name)} was deleted meanwhile; nothing was created or changed. listStorageClasses() shows the available ones`)
    }
    return holdCount(this.#classUses, name)
  }

  async putStorageClass (storageClass: StorageClass): Promise<void> {
    await storedMetadata(this.#classesDb.put(storageClass.name, storageClass, SYNC))
    this.#classes.set(storageClass.name, storageClass)
  }

  async deleteStorageClass (name: string): Promise<void> {
    await storedMetadata(this.#classesDb.del(name, SYNC))
    this.#classes.delete(name)
  }

  pools (): StoragePool[] {
    return [...this.#pools.values()]
  }

  pool (name: string): StoragePool | undefined {
    return this.#pools.get(name)
  }

  /** Stores a pool (new or changed). */
  async putPool (pool: StoragePool): Promise<void> {
    await storedMetadata(this.#poolsDb.put(pool.name, pool, SYNC))
    this.#pools.set(pool.name, pool)
  }

  async deletePool (name: string): Promise<void> {
    await storedMetadata(this.#poolsDb.del(name, SYNC))
    this.#pools.delete(name)
  }
}

export { VolumeState }
