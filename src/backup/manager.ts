// Backups: full, incremental and differential backups of volumes to a BackupTarget, read from a
// snapshot through the engine's change tracking (only changed blocks are read), deduplicated by
// content-addressed chunks, and restored by walking a backup's chain of bases. Uses only the
// public GalleonFS API, so it is also an example of building on the library.

import { randomUUID } from 'node:crypto'
import { resolve } from 'node:path'
import { DirectoryBackupTarget } from '../../backends/directory/index.js'
import type { BackupTarget } from '../drivers.js'
import { GalleonError, describe, errorCode } from '../errors.js'
import type { GalleonFS, VolumeRef } from '../galleonfs.js'
import { BackupStrategy, type Volume } from '../types.js'
import { chunkId, chunkIdOf, chunkKeys, decodeChunk, decodeIndex, decodeManifest, encodeChunk, encodeIndex, encodeManifest, type ChunkKeys, type Extent, type Manifest } from './format.js'
import type { BackupKey } from '../crypto/key-manager.js'
import { SerialQueue } from '../serial-queue.js'
import type { AbstractSublevel } from 'abstract-level'
import type { MetadataDatabase } from '../volumes/catalog.js'

/** Backups being taken: id -> the volume and the snapshot taken for it (see start()). */
type PendingSublevel = AbstractSublevel<MetadataDatabase, any, string, { volumeId: string, snapshot: string }>

/** Where backups of encrypted volumes get their keys (the instance's KeyManager). */
export interface BackupKeySource {
  backupKey: (volumeId: string) => Promise<BackupKey>
  openBackupKey: (volumeId: string, stored: { wrapped: string, kekId: string, fingerprint: string }) => Promise<Uint8Array>
}

/**
 * Bytes per chunk at most. A chunk holds the changed blocks of one aligned window of
 * CHUNK_WINDOW_BYTES of the volume, up to this many bytes, and never a run crossing a multiple of
 * it: dense data is cut at the same places in every backup and on every volume (so it
 * deduplicates), and scattered changes still share chunks.
 */
export const CHUNK_BYTES = 1024 * 1024
const CHUNK_WINDOW_BYTES = 4 * 1024 * 1024
/** Chunks read, compressed and stored at once. */
const PARALLEL_CHUNKS = 8
/**
 * Unused chunks put or reused this recently are not collected: a backup another process is taking
 * on the same target may name them in its manifest (git's gc spares recent objects for the same
 * reason). A later deletion collects them.
 */
const CHUNK_GRACE_SECONDS = 3600

/** Options of deleteBackup. */
export interface DeleteBackupOptions {
  /** Where the backup is (default: the instance's backup target). */
  target?: BackupTargetRef
  /** Also delete the later backups built on this one. */
  force?: boolean
  /**
   * Chunks no backup uses that were put or reused within this many seconds are kept (default 3600)
   * when the target tells chunk times: another process may be taking a backup that names them. 0
   * collects them at once; do that only when no other process writes backups to the target.
   */
  chunkGraceSeconds?: number
}
const STRATEGIES = new Set<string>(Object.values(BackupStrategy))

/** A target: a directory path, or a BackupTarget driver. */
export type BackupTargetRef = string | BackupTarget

/** Application hooks around a backup: `pre` runs before the snapshot is taken (a failure aborts the backup), `post` after the manifest is stored. */
export interface BackupHooks {
  readonly pre?: (context: { volume: Volume, strategy: BackupStrategy }) => unknown
  readonly post?: (backup: Backup) => unknown
}

/** Options of `createBackup`. */
export interface CreateBackupOptions {
  /** Default `full`. `incremental`: blocks changed since the volume's last backup on the target; `differential`: since its last full. */
  readonly strategy?: BackupStrategy | `${BackupStrategy}`
  /** Where to store it (default: the instance's `backupTarget`). */
  readonly target?: BackupTargetRef
  readonly hooks?: BackupHooks
  /** Aborting cancels the backup: nothing is recorded, chunks already stored are reused next time. */
  readonly signal?: AbortSignal
  /** Name of the backup policy taking it (set by the scheduler; retention prunes only its own). */
  readonly policy?: string
  /** Called as blocks are stored (also emitted as `backup:progress`); an exception it throws is ignored. */
  readonly onProgress?: ProgressListener
}

/** Options of `restoreBackup`: `name` (a new volume) or `volume` (overwrite an existing one). */
export interface RestoreBackupOptions {
  readonly name?: string
  readonly namespace?: string
  /**
   * Storage pool of a new volume (default: its storage class's, else the backed-up volume's pool if
   * it still exists). NO_SPACE before anything is written when the pool cannot take it.
   */
  readonly pool?: string
  readonly volume?: VolumeRef
  readonly target?: BackupTargetRef
  /** Aborting stops the restore (a new volume is removed; an overwritten one is left partly restored). */
  readonly signal?: AbortSignal
  /** Called as blocks are written (also emitted as `restore:progress`); an exception it throws is ignored. */
  readonly onProgress?: ProgressListener
}

/** How far a long operation has come. */
export interface Progress {
  readonly bytesDone: number
  readonly bytesTotal: number
}

/** Receives progress; must not throw (what it throws is ignored, the operation goes on). */
export type ProgressListener = (progress: Progress) => void

/** Calls a caller's progress listener, which must never break the operation it watches. */
function report (listener: ProgressListener | undefined, bytesDone: number, bytesTotal: number): void {
  if (typeof listener !== 'function') return
  try {
    listener({ bytesDone, bytesTotal })
  } catch {}
}

/** A backup as listed from its target. */
export interface Backup {
  readonly id: string
  readonly volumeId: string
  readonly volumeName: string
  /** Namespace of the volume when it was backed up. */
  readonly volumeNamespace: string
  /** Strategy used: a first incremental or differential of a volume is taken as a full. */
  readonly strategy: BackupStrategy
  readonly requestedStrategy: BackupStrategy
  /** The backup this one applies on top of (null for a full). */
  readonly baseId: string | null
  readonly createdAt: string
  /** Size of the volume when it was backed up. */
  readonly sizeBytes: number
  /** Blocks and bytes this backup holds (changed blocks for incremental and differential). */
  readonly blocks: number
  readonly bytes: number
  /** Distinct chunks it references, how many it added to the target, and their stored bytes. */
  readonly chunks: number
  readonly newChunks: number
  readonly storedBytes: number
  /** Name of the snapshot of the volume it was read from. */
  readonly snapshotName: string
  /** Where it is stored. */
  readonly target: string
  /** The backup policy that took it, if any. */
  readonly policy: string | null
  /** Whether its chunks are encrypted (a backup of an encrypted volume). */
  readonly encrypted: boolean
}

/** Result of `verifyBackup`. */
export interface BackupVerification {
  readonly backupId: string
  readonly ok: boolean
  /** Backups in the chain checked (this one and its bases). */
  readonly backupsChecked: number
  readonly chunksChecked: number
  readonly problems: ReadonlyArray<{ readonly backupId: string, readonly chunk?: string, readonly code: string, readonly message: string }>
  /**
   * Whether the target's index lists this backup with its current manifest (null: the target keeps
   * no index). A stale index is rewritten by the next backup or deletion and does not affect `ok`.
   */
  readonly indexCurrent: boolean | null
}


export class BackupManager {
  readonly #g: GalleonFS
  readonly #defaultTarget: BackupTargetRef | undefined
  readonly #directories = new Map<string, DirectoryBackupTarget>()
  readonly #queues = new WeakMap<BackupTarget, SerialQueue>()
  readonly #now: () => number
  readonly #keys: BackupKeySource
  readonly #pending: PendingSublevel | undefined

  constructor (g: GalleonFS, defaultTarget: BackupTargetRef | undefined, keys: BackupKeySource, now: () => number = Date.now, metadata?: MetadataDatabase) {
    this.#g = g
    this.#keys = keys
    this.#now = now
    this.#defaultTarget = defaultTarget
    this.#pending = metadata?.sublevel('backupsInProgress', { valueEncoding: 'json' }) as PendingSublevel | undefined
    if (defaultTarget !== undefined) this.#target(defaultTarget)
  }

  /**
   * At open: the snapshots of backups a killed process was taking are deleted (each backup is
   * recorded before its snapshot is taken and forgotten once it is stored or cleaned up).
   */
  async start (): Promise<void> {
    if (this.#pending === undefined) return
    for (const [id, { volumeId, snapshot }] of await this.#pending.iterator().all()) {
      try {
        await this.#g.deleteSnapshot(volumeId, snapshot)
      } catch (err) {
        const code = errorCode(err)
        // Gone already, or its volume is: forget it. Anything else: try again at the next open.
        if (code !== 'SNAPSHOT_NOT_FOUND' && code !== 'VOLUME_NOT_FOUND') {
          this.#g.emit('io:error', { volumeId, volumeName: '', operation: 'write', code, message: `could not delete snapshot ${snapshot} of a backup that was interrupted (tried again at the next open): ${(err as Error).message}` })
          continue
        }
      }
      await this.#pending.del(id)
    }
  }

  async create (vol: VolumeRef, options: CreateBackupOptions = {}): Promise<Backup> {
    if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `createBackup() options must be an object such as { strategy: 'incremental' }, got ${describe(options)}`)
    const requested = (options.strategy ?? BackupStrategy.Full) as BackupStrategy
    if (!STRATEGIES.has(requested)) throw new GalleonError('INVALID_ARGUMENT', `backup strategy must be one of ${[...STRATEGIES].join(', ')}, got ${describe(options.strategy)}`)
    const target = this.#target(options.target)
    const volume = await this.#g.getVolume(vol)
    const signal = options.signal
    checkAborted(signal)
    return await this.#queue(target).run(async () => {
      await target.open()
      if (options.hooks?.pre !== undefined) {
        try {
          await options.hooks.pre({ volume, strategy: requested })
        } catch (err) {
          throw new GalleonError('HOOK_FAILED', `the pre-backup hook of volume ${volume.name} failed, so no backup was taken: ${(err as Error)?.message ?? String(err)}`, { cause: err })
        }
      }
      const ours = (await this.#manifests(target)).filter((m) => m.volume.id === volume.id)
      const snapshots = new Set((await this.#g.listSnapshots(volume.id)).map((s) => s.id))
      const backupKey = volume.encrypted ? await this.#keys.backupKey(volume.id) : undefined
      // A base must still have its snapshot, and be sealed as this backup will be: after the volume
      // moved between a plain and an encrypting class, the next backup is full, so an encrypted
      // volume's backups never lean on plaintext ones (which can then be deleted) or the reverse.
      const usable = ours.filter((m) => snapshots.has(m.snapshot.id) && m.encryption?.fingerprint === backupKey?.fingerprint)
      const base = requested === BackupStrategy.Incremental
        ? usable.at(-1)
        : requested === BackupStrategy.Differential ? usable.filter((m) => m.strategy === 'full').at(-1) : undefined
      const strategy = base === undefined ? BackupStrategy.Full : requested
      const id = randomUUID()
      const keys = backupKey === undefined ? undefined : chunkKeys(backupKey.key)
      await this.#pending?.put(id, { volumeId: volume.id, snapshot: `backup-${id}` })
      let snapshot: Awaited<ReturnType<GalleonFS['createSnapshot']>>
      try {
        snapshot = await this.#g.createSnapshot(volume.id, `backup-${id}`)
      } catch (err) {
        await this.#pending?.del(id).catch(() => {})
        throw err
      }
      try {
        const indices = await this.#g.listChangedBlocks(volume.id, base === undefined ? { to: snapshot.id } : { from: base.snapshot.id, to: snapshot.id })
        const blockSize = volume.blockSize
        const total = indices.length * blockSize
        let done = 0
        const progress = (): void => {
          this.#g.emit('backup:progress', { backupId: id, volumeId: volume.id, volumeName: volume.name, bytesDone: done, bytesTotal: total })
          report(options.onProgress, done, total)
        }
        progress()
        const chunkBlocks = Math.max(1, CHUNK_BYTES / blockSize)
        const pieces = toPieces(toRuns(indices, chunkBlocks), chunkBlocks, Math.max(1, CHUNK_WINDOW_BYTES / blockSize))
        const extents: Extent[][] = new Array(pieces.length)
        const referenced = new Set<string>()
        let newChunks = 0
        let storedBytes = 0
        const stored = new Set<string>()
        let next = 0
        const worker = async (stop: () => boolean): Promise<void> => {
          while (next < pieces.length && !stop()) {
            checkAborted(signal)
            const at = next++
            const piece = pieces[at] as Array<[number, number]>
            const parts: Uint8Array[] = []
            const pieceExtents: Extent[] = []
            let offset = 0
            for (const [index, blocks] of piece) {
              const data = await this.#g.read({ volume: volume.id, snapshot: snapshot.id }, index * blockSize, blocks * blockSize)
              if (isZero(data)) {
                pieceExtents.push([index, blocks, null, 0])
              } else {
                pieceExtents.push([index, blocks, '', offset])
                parts.push(data)
                offset += blocks
              }
            }
            if (parts.length > 0) {
              const data = parts.length === 1 ? parts[0] as Uint8Array : concat(parts, offset * blockSize)
              const chunk = chunkIdOf(data, keys)
              for (const extent of pieceExtents) if (extent[2] === '') extent[2] = chunk
              referenced.add(chunk)
              if (!stored.has(chunk)) {
                stored.add(chunk)
                // A chunk already there is reused, and touched so that a deletion in another process
                // spares it (see delete) until this backup's manifest names it.
                if (!await (target.touchChunk !== undefined ? target.touchChunk(chunk) : target.hasChunk(chunk))) {
                  const envelope = await encodeChunk(data, keys === undefined ? undefined : { id: chunk, keys })
                  await target.putChunk(chunk, envelope)
                  newChunks++
                  storedBytes += envelope.byteLength
                }
              }
            }
            extents[at] = pieceExtents
            for (const [, blocks] of piece) done += blocks * blockSize
            progress()
          }
        }
        await runWorkers(worker)
        checkAborted(signal)
        // A deletion in another process may have collected a chunk this backup relies on: a manifest
        // naming a missing chunk would look complete and fail at restore, so check them all first.
        for (const chunk of referenced) {
          if (!await target.hasChunk(chunk)) {
            throw new GalleonError('BUSY', `chunk ${chunk} of this backup was deleted from ${target.location} while the backup ran (by a deleteBackup in another process?); no backup was stored, take it again`)
          }
        }
        const manifest: Manifest = {
          kind: 'galleonfs-backup',
          format: 1,
          id,
          createdAt: new Date(this.#now()).toISOString(),
          strategy,
          requestedStrategy: requested,
          base: base?.id ?? null,
          volume: { id: volume.id, name: volume.name, namespace: volume.namespace, sizeBytes: snapshot.sizeBytes, blockSize, storageClass: volume.storageClass, replicas: volume.replicas, labels: { ...volume.labels }, ...(volume.pool === undefined ? {} : { pool: volume.pool }) },
          ...(backupKey === undefined ? {} : { encryption: { algorithm: 'AES-256-GCM' as const, fingerprint: backupKey.fingerprint, wrappedKey: backupKey.wrapped, kekId: backupKey.kekId, provider: backupKey.provider } }),
          snapshot: { id: snapshot.id, name: snapshot.name },
          ...(options.policy === undefined ? {} : { policy: String(options.policy) }),
          extents: extents.flat(),
          stats: { blocks: indices.length, bytes: total, chunks: referenced.size, newChunks, storedBytes }
        }
        await target.flush?.()
        await target.putManifest(id, encodeManifest(manifest))
        await this.#writeIndexOrReport(target)
        const backup = toBackup(manifest, target)
        // Keep the snapshots later backups need as bases (this one, and the newest full); free the rest.
        const newestFull = strategy === BackupStrategy.Full ? manifest : ours.filter((m) => m.strategy === 'full').at(-1)
        for (const older of ours) {
          if (older.id !== newestFull?.id && snapshots.has(older.snapshot.id)) {
            await this.#g.deleteSnapshot(volume.id, older.snapshot.id).catch(() => {})
          }
        }
        this.#g.emit('backup:completed', backup)
        if (options.hooks?.post !== undefined) {
          try {
            await options.hooks.post(backup)
          } catch (err) {
            throw new GalleonError('HOOK_FAILED', `backup ${id} of volume ${volume.name} is complete and stored, but its post-backup hook failed: ${(err as Error)?.message ?? String(err)}`, { cause: err })
          }
        }
        return backup
      } catch (err) {
        if (!(await target.getManifest(id).catch(() => undefined) !== undefined)) {
          await this.#g.deleteSnapshot(volume.id, snapshot.id).catch(() => {})
        }
        throw err
      } finally {
        await this.#pending?.del(id).catch(() => {})
      }
    })
  }

  async list (vol?: VolumeRef, options: { target?: BackupTargetRef } = {}): Promise<Backup[]> {
    const target = this.#target(options?.target)
    await target.open()
    let manifests = await this.#manifests(target)
    if (vol !== undefined) {
      const ref: unknown = typeof vol === 'string' ? vol : (vol as { id?: unknown } | null)?.id
      if (typeof ref !== 'string' || ref.length === 0) throw new GalleonError('INVALID_ARGUMENT', `listBackups() takes a volume id or name (or nothing for every backup), got ${describe(vol)}`)
      const volume = await this.#g.getVolume(ref).catch(() => undefined)
      manifests = manifests.filter((m) => volume !== undefined ? m.volume.id === volume.id : (m.volume.id === ref || m.volume.name === ref))
    }
    return manifests.map((m) => toBackup(m, target))
  }

  async get (id: string, options: { target?: BackupTargetRef } = {}): Promise<Backup> {
    const target = this.#target(options?.target)
    await target.open()
    return toBackup(await this.#manifest(target, id), target)
  }

  async verify (id: string, options: { target?: BackupTargetRef } = {}): Promise<BackupVerification> {
    const target = this.#target(options?.target)
    await target.open()
    const problems: Array<{ backupId: string, chunk?: string, code: string, message: string }> = []
    const chain: Manifest[] = []
    let at: string | null = id
    while (at !== null) {
      const current: string = at
      try {
        const manifest: Manifest = await this.#manifest(target, current)
        chain.push(manifest)
        at = manifest.base
      } catch (err) {
        if (current === id) throw err
        problems.push({ backupId: current, code: errorCode(err), message: `base backup ${current} cannot be read: ${(err as Error).message}` })
        break
      }
    }
    const checked = new Set<string>()
    for (const manifest of chain) {
      let keys: ChunkKeys | undefined
      try {
        keys = await this.#chunkKeys(manifest)
      } catch (err) {
        problems.push({ backupId: manifest.id, code: errorCode(err), message: (err as Error).message })
        continue
      }
      for (const [, , chunk] of manifest.extents) {
        if (chunk === null || checked.has(chunk)) continue
        checked.add(chunk)
        try {
          const envelope = await target.getChunk(chunk)
          if (envelope === undefined) throw new GalleonError('CORRUPTION', `chunk ${chunk} is missing from the target`)
          await decodeChunk(chunk, envelope, keys)
        } catch (err) {
          problems.push({ backupId: manifest.id, chunk, code: errorCode(err), message: (err as Error).message })
        }
      }
    }
    // The index is a summary the next backup or deletion rewrites: a stale one (a crash between a
    // manifest and the index) does not make the backup bad, so it is reported on its own.
    let indexCurrent: boolean | null = null
    if (target.getIndex !== undefined) {
      const bytes = await target.getIndex()
      const index = bytes === undefined ? undefined : decodeIndex(bytes)
      const manifestBytes = await target.getManifest(id)
      const entry = index?.backups.find((backup) => backup.id === id)
      indexCurrent = entry !== undefined && manifestBytes !== undefined && entry.manifestSha256 === chunkId(manifestBytes)
    }
    return { backupId: id, ok: problems.length === 0, backupsChecked: chain.length, chunksChecked: checked.size, problems, indexCurrent }
  }

  async delete (id: string, options: DeleteBackupOptions = {}): Promise<{ deletedBackups: string[], deletedChunks: number }> {
    const target = this.#target(options?.target)
    const graceMs = 1000 * (options?.chunkGraceSeconds ?? CHUNK_GRACE_SECONDS)
    if (!Number.isFinite(graceMs) || graceMs < 0) throw new GalleonError('INVALID_ARGUMENT', `chunkGraceSeconds is a number of seconds >= 0, got ${describe(options.chunkGraceSeconds)}`)
    await target.open()
    return await this.#queue(target).run(async () => {
      const unreadable: string[] = []
      const manifests = await this.#manifests(target, unreadable)
      const doomed = manifests.find((m) => m.id === id)
      if (doomed === undefined) throw new GalleonError('BACKUP_NOT_FOUND', `no backup ${describe(id)} on ${target.location}; listBackups() shows the backups there`)
      // Backups whose chain goes through this one (newest first, so a crash leaves valid chains).
      const byId = new Map(manifests.map((m) => [m.id, m]))
      const dependsOnIt = (m: Manifest): boolean => {
        for (let base = m.base; base !== null; base = byId.get(base)?.base ?? null) if (base === id) return true
        return false
      }
      const dependents = manifests.filter(dependsOnIt)
      if (dependents.length > 0 && options?.force !== true) {
        throw new GalleonError('BUSY', `backup ${id} is the base of ${dependents.length} later backup(s) (${dependents.slice(0, 3).map((m) => m.id).join(', ')}); delete those first, or pass { force: true } to delete them with it`)
      }
      const deleted = [...dependents.reverse(), doomed]
      for (const manifest of deleted) {
        await target.deleteManifest(manifest.id)
        await this.#g.deleteSnapshot(manifest.volume.id, manifest.snapshot.id).catch(() => {})
      }
      const kept = manifests.filter((m) => !deleted.includes(m))
      const referenced = new Set<string>()
      for (const manifest of kept) for (const [, , chunk] of manifest.extents) if (chunk !== null) referenced.add(chunk)
      await this.#writeIndexOrReport(target)
      let deletedChunks = 0
      if (unreadable.length > 0) {
        // Their chunks are unknown: collecting would destroy those backups for good.
        this.#g.emit('io:error', { volumeId: '', volumeName: '', operation: 'write', code: 'CORRUPTION', message: `backup target ${target.location} holds ${unreadable.length} manifest(s) this version cannot read (${unreadable.slice(0, 3).join(', ')}): no chunk was deleted, so that their backups stay restorable; verify or remove them, and the next deletion collects` })
      } else {
        // File times are wall-clock times (not the injected clock).
        const now = Date.now()
        for await (const chunk of target.listChunks()) {
          if (referenced.has(chunk)) continue
          // Put or reused lately: maybe by a backup another process is still taking.
          const time = graceMs > 0 ? await target.chunkTime?.(chunk) : undefined
          if (time !== undefined && now - time < graceMs) continue
          await target.deleteChunk(chunk)
          deletedChunks++
        }
      }
      for (const manifest of deleted) this.#g.emit('backup:deleted', toBackup(manifest, target))
      return { deletedBackups: deleted.map((m) => m.id), deletedChunks }
    })
  }

  async restore (id: string, options: RestoreBackupOptions = {}): Promise<Volume> {
    if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `restoreBackup() options must be an object such as { name: 'restored' }, got ${describe(options)}`)
    if ((options.name === undefined) === (options.volume === undefined) && options.volume !== undefined) {
      throw new GalleonError('INVALID_ARGUMENT', 'restoreBackup() takes either { name } (a new volume) or { volume } (overwrite an existing one), not both')
    }
    const target = this.#target(options.target)
    await target.open()
    const manifest = await this.#manifest(target, id)
    const chain: Manifest[] = [manifest]
    while ((chain[0] as Manifest).base !== null) {
      const base = (chain[0] as Manifest).base as string
      try {
        chain.unshift(await this.#manifest(target, base))
      } catch (err) {
        throw new GalleonError(errorCode(err) === 'BACKUP_NOT_FOUND' ? 'CORRUPTION' : errorCode(err), `backup ${id} builds on backup ${base}, which cannot be read (${(err as Error).message}); this backup cannot be restored`, { cause: err })
      }
    }
    // Newest data for every block along the chain: block -> [chunk, offset of the block in it].
    const blocks = new Map<number, [string | null, number]>()
    // Each chunk is opened with the keys of the backup that stored it: a chain may span a move of
    // the volume between a plain and an encrypting class (backups written before bases had to match).
    const chunkKeysOf = new Map<string, ChunkKeys | undefined>()
    for (const step of chain) {
      const keys = await this.#chunkKeys(step)
      for (const [index, count, chunk, offset] of step.extents) {
        for (let i = 0; i < count; i++) blocks.set(index + i, [chunk, offset + i])
        if (chunk !== null) chunkKeysOf.set(chunk, keys)
      }
    }
    const blockSize = manifest.volume.blockSize
    let volume: Volume
    let created = false
    let safety: { id: string } | undefined
    if (options.volume !== undefined) {
      volume = await this.#g.getVolume(options.volume)
      if (volume.blockSize !== blockSize) throw new GalleonError('INVALID_ARGUMENT', `backup ${id} has ${blockSize}-byte blocks but volume ${volume.name} has ${volume.blockSize}-byte blocks`)
      if (manifest.encryption !== undefined && !volume.encrypted) {
        throw new GalleonError('INVALID_ARGUMENT', `backup ${id} is of an encrypted volume and ${volume.name} is not encrypted; restore it into an encrypted volume, or into a new one ({ name })`)
      }
      if (volume.sizeBytes < manifest.volume.sizeBytes) {
        throw new GalleonError('OUT_OF_RANGE', `backup ${id} is of a ${manifest.volume.sizeBytes}-byte volume but ${volume.name} has ${volume.sizeBytes} bytes; expand it first or restore into a new volume`)
      }
      if (this.#g.blockSize !== blockSize) throw new GalleonError('INVALID_ARGUMENT', `backup ${id} has ${blockSize}-byte blocks; this instance uses ${this.#g.blockSize}`)
      // A snapshot (O(1)) to put the volume back as it was if the restore fails half-way.
      safety = await this.#g.createSnapshot(volume.id, `pre-restore-${randomUUID()}`)
      // Discard the old contents (in pieces: one trim call covers at most 256 MiB).
      const piece = 128 * 1024 * 1024
      for (let offset = 0; offset < volume.sizeBytes; offset += piece) {
        await this.#g.trim(volume.id, offset, Math.min(piece, volume.sizeBytes - offset))
      }
    } else {
      if (this.#g.blockSize !== blockSize) throw new GalleonError('INVALID_ARGUMENT', `backup ${id} has ${blockSize}-byte blocks; this instance uses ${this.#g.blockSize}, so restore it into an instance opened with blockSize ${blockSize}`)
      const classes = await this.#g.listStorageClasses()
      let storageClass = classes.find((c) => c.name === manifest.volume.storageClass)
      // An encrypted backup is restored into an encrypted volume, whatever happened to its class.
      if (manifest.encryption !== undefined && storageClass?.parameters.encryption !== 'true') storageClass = classes.find((c) => c.name === 'encrypted-storage')
      // The volume's pool, unless its class places it (then the class's pool applies) or the pool is gone.
      const formerPool = manifest.volume.pool !== undefined && storageClass?.parameters.pool === undefined && (await this.#g.listPools()).some((p) => p.name === manifest.volume.pool) ? manifest.volume.pool : undefined
      const pool = options.pool ?? formerPool
      volume = await this.#g.createVolume({
        name: options.name ?? `${manifest.volume.name}-restored-${id.slice(0, 8)}`,
        ...(options.namespace === undefined ? {} : { namespace: options.namespace }),
        sizeBytes: manifest.volume.sizeBytes,
        storageClass: storageClass?.name,
        ...(manifest.volume.replicas === undefined ? {} : { replicas: manifest.volume.replicas }),
        ...(pool === undefined ? {} : { pool }),
        labels: { ...manifest.volume.labels }
      })
      created = true
    }
    try {
      const byChunk = new Map<string, Array<[number, number]>>()
      for (const [index, [chunk, offset]] of blocks) {
        if (chunk === null) continue
        let list = byChunk.get(chunk)
        if (list === undefined) byChunk.set(chunk, list = [])
        list.push([index, offset])
      }
      const total = [...byChunk.values()].reduce((sum, list) => sum + list.length, 0) * blockSize
      let done = 0
      report(options.onProgress, 0, total)
      const chunks = [...byChunk]
      let next = 0
      const worker = async (stop: () => boolean): Promise<void> => {
        while (next < chunks.length && !stop()) {
          checkAborted(options.signal)
          const [chunk, list] = chunks[next++] as [string, Array<[number, number]>]
          const envelope = await target.getChunk(chunk)
          if (envelope === undefined) throw new GalleonError('CORRUPTION', `chunk ${chunk} of backup ${id} is missing from ${target.location}; the backup cannot be restored (verifyBackup lists every damaged part)`)
          const data = await decodeChunk(chunk, envelope, chunkKeysOf.get(chunk))
          list.sort((a, b) => a[0] - b[0])
          for (let at = 0; at < list.length;) {
            let end = at + 1
            while (end < list.length && (list[end] as [number, number])[0] === (list[end - 1] as [number, number])[0] + 1 && (list[end] as [number, number])[1] === (list[end - 1] as [number, number])[1] + 1) end++
            const [index, offset] = list[at] as [number, number]
            const count = end - at
            await this.#g.write(volume.id, index * blockSize, data.subarray(offset * blockSize, (offset + count) * blockSize))
            done += count * blockSize
            at = end
          }
          this.#g.emit('restore:progress', { backupId: id, volumeId: volume.id, volumeName: volume.name, bytesDone: done, bytesTotal: total })
          report(options.onProgress, done, total)
        }
      }
      await runWorkers(worker)
      await this.#g.flush(volume.id)
    } catch (err) {
      if (created) await this.#g.deleteVolume(volume.id, { force: true }).catch(() => {})
      if (safety !== undefined) {
        await this.#g.restoreSnapshot(volume.id, safety.id).catch(() => {})
        await this.#g.deleteSnapshot(volume.id, safety.id).catch(() => {})
      }
      throw err
    }
    if (safety !== undefined) await this.#g.deleteSnapshot(volume.id, safety.id).catch(() => {})
    return await this.#g.getVolume(volume.id)
  }

  /** The chunk keys of an encrypted backup (undefined for a plain one). */
  async #chunkKeys (manifest: Manifest): Promise<ChunkKeys | undefined> {
    const encryption = manifest.encryption
    if (encryption === undefined) return undefined
    if (encryption.algorithm !== 'AES-256-GCM' || typeof encryption.wrappedKey !== 'string' || typeof encryption.fingerprint !== 'string') {
      throw new GalleonError('CORRUPTION', `backup ${manifest.id} names encryption ${describe(encryption)}, which this version cannot read`)
    }
    return chunkKeys(await this.#keys.openBackupKey(manifest.volume.id, { wrapped: encryption.wrappedKey, kekId: encryption.kekId, fingerprint: encryption.fingerprint }))
  }

  #target (ref: BackupTargetRef | undefined): BackupTarget {
    const chosen = ref ?? this.#defaultTarget
    if (chosen === undefined) {
      throw new GalleonError('INVALID_ARGUMENT', 'no backup target: pass { target: \'/path/to/backups\' } or open GalleonFS with { backupTarget }')
    }
    if (typeof chosen === 'string') {
      if (chosen.length === 0) throw new GalleonError('INVALID_ARGUMENT', 'a backup target path must not be empty')
      // One object (and so one queue) per directory, however the path is spelled.
      const key = resolve(chosen)
      let target = this.#directories.get(key)
      if (target === undefined) this.#directories.set(key, target = new DirectoryBackupTarget({ path: key }))
      return target
    }
    const methods = ['open', 'close', 'hasChunk', 'putChunk', 'getChunk', 'deleteChunk', 'listChunks', 'putManifest', 'getManifest', 'deleteManifest', 'listManifests'] as const
    if (chosen === null || typeof chosen !== 'object' || methods.some((name) => typeof (chosen as unknown as Record<string, unknown>)[name] !== 'function')) {
      throw new GalleonError('INVALID_ARGUMENT', `a backup target is a directory path or a BackupTarget (with ${methods.join(', ')}), got ${describe(chosen)}`)
    }
    return chosen
  }

  #queue (target: BackupTarget): SerialQueue {
    let queue = this.#queues.get(target)
    if (queue === undefined) this.#queues.set(target, queue = new SerialQueue())
    return queue
  }

  async #manifest (target: BackupTarget, id: string): Promise<Manifest> {
    if (typeof id !== 'string' || !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(id)) {
      throw new GalleonError('INVALID_ARGUMENT', `a backup id is a lowercase UUID, got ${describe(id)}`)
    }
    const bytes = await target.getManifest(id)
    if (bytes === undefined) throw new GalleonError('BACKUP_NOT_FOUND', `no backup ${id} on ${target.location}; listBackups() shows the backups there`)
    return decodeManifest(id, bytes)
  }

  /** The index is a summary: failing to rewrite it is reported, not a failure of the backup or deletion. */
  async #writeIndexOrReport (target: BackupTarget): Promise<void> {
    try {
      await this.#writeIndex(target)
    } catch (err) {
      this.#g.emit('io:error', { volumeId: '', volumeName: '', operation: 'write', code: errorCode(err), message: `could not rewrite the index of backup target ${target.location} (the next backup or deletion tries again): ${(err as Error).message}` })
    }
  }

  /** Rewrites the target's index from its manifests (targets without an index skip this). */
  async #writeIndex (target: BackupTarget): Promise<void> {
    if (target.putIndex === undefined) return
    const backups = []
    for await (const id of target.listManifests()) {
      const bytes = await target.getManifest(id)
      if (bytes === undefined) continue
      let manifest: Manifest
      try { manifest = decodeManifest(id, bytes) } catch { continue }
      backups.push({ id, volumeId: manifest.volume.id, volumeName: manifest.volume.name, strategy: manifest.strategy, base: manifest.base, createdAt: manifest.createdAt, manifestSha256: chunkId(bytes) })
    }
    backups.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id))
    await target.putIndex(encodeIndex({ kind: 'galleonfs-backup-index', format: 1, updatedAt: new Date(this.#now()).toISOString(), backups }))
  }

  /** Every readable manifest on the target, oldest first (damaged ones are skipped; verify reports them). */
  /** The target's readable manifests, oldest first; the ids of unreadable ones go to `unreadable`. */
  async #manifests (target: BackupTarget, unreadable: string[] = []): Promise<Manifest[]> {
    const out: Manifest[] = []
    for await (const id of target.listManifests()) {
      const bytes = await target.getManifest(id)
      if (bytes === undefined) continue
      try { out.push(decodeManifest(id, bytes)) } catch { unreadable.push(id) }
    }
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id))
  }
}

/** Sorted block indices -> runs of consecutive blocks, none crossing a multiple of `chunkBlocks`. */
export function toRuns (indices: readonly number[], chunkBlocks: number): Array<[number, number]> {
  const runs: Array<[number, number]> = []
  for (const index of indices) {
    const last = runs[runs.length - 1]
    if (last !== undefined && last[0] + last[1] === index && index % chunkBlocks !== 0) last[1]++
    else runs.push([index, 1])
  }
  return runs
}

/** Runs -> the runs of each chunk: at most `chunkBlocks` blocks, all in one window of `windowBlocks`. */
export function toPieces (runs: ReadonlyArray<[number, number]>, chunkBlocks: number, windowBlocks: number): Array<Array<[number, number]>> {
  const pieces: Array<Array<[number, number]>> = []
  let current: Array<[number, number]> = []
  let blocks = 0
  for (const run of runs) {
    const window = Math.floor(run[0] / windowBlocks)
    const first = current[0]
    if (first !== undefined && (blocks + run[1] > chunkBlocks || Math.floor(first[0] / windowBlocks) !== window)) {
      pieces.push(current)
      current = []
      blocks = 0
    }
    current.push(run)
    blocks += run[1]
  }
  if (current.length > 0) pieces.push(current)
  return pieces
}

function concat (parts: readonly Uint8Array[], length: number): Uint8Array {
  const out = new Uint8Array(length)
  let at = 0
  for (const part of parts) { out.set(part, at); at += part.byteLength }
  return out
}

/**
 * Runs PARALLEL_CHUNKS copies of `worker`; once one fails the others stop taking work, and this
 * rejects with the first failure only after all have stopped (so nothing is still writing).
 */
async function runWorkers (worker: (stop: () => boolean) => Promise<void>): Promise<void> {
  let failed = false
  const results = await Promise.allSettled(Array.from({ length: PARALLEL_CHUNKS }, async () => {
    try {
      await worker(() => failed)
    } catch (err) {
      failed = true
      throw err
    }
  }))
  const failure = results.find((result): result is PromiseRejectedResult => result.status === 'rejected')
  if (failure !== undefined) throw failure.reason
}

function isZero (data: Uint8Array): boolean {
  const words = data.byteLength % 8 === 0 && data.byteOffset % 8 === 0 ? new BigUint64Array(data.buffer, data.byteOffset, data.byteLength / 8) : undefined
  if (words !== undefined) {
    for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false
    return true
  }
  for (let i = 0; i < data.byteLength; i++) if (data[i] !== 0) return false
  return true
}

function checkAborted (signal: AbortSignal | undefined): void {
  if (signal?.aborted === true) throw new GalleonError('CANCELLED', 'the backup was cancelled; nothing was recorded (chunks already stored are reused by the next backup)')
}

function toBackup (manifest: Manifest, target: BackupTarget): Backup {
  return {
    id: manifest.id,
    volumeId: manifest.volume.id,
    volumeName: manifest.volume.name,
    volumeNamespace: manifest.volume.namespace ?? 'default',
    strategy: manifest.strategy as BackupStrategy,
    requestedStrategy: manifest.requestedStrategy as BackupStrategy,
    baseId: manifest.base,
    createdAt: manifest.createdAt,
    sizeBytes: manifest.volume.sizeBytes,
    blocks: manifest.stats.blocks,
    bytes: manifest.stats.bytes,
    chunks: manifest.stats.chunks,
    newChunks: manifest.stats.newChunks,
    storedBytes: manifest.stats.storedBytes,
    snapshotName: manifest.snapshot.name,
    target: target.location,
    policy: manifest.policy ?? null,
    encrypted: manifest.encryption !== undefined
  }
}
