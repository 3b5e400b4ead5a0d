// Taking a backup: under the target's queue and a lease, reads the blocks changed since its base
// from a snapshot of the volume, stores the chunks the target lacks, then the manifest naming them;
// frees the snapshots later backups no longer need as bases.

import { randomUUID } from 'node:crypto'
import type { BackupTarget } from '../drivers.js'
import { GalleonError, describe, errorCode } from '../errors.js'
import type { GalleonFS, VolumeRef } from '../galleonfs.js'
import { BackupStrategy, type Volume } from '../types.js'
import { isNoSpaceError } from '../abstract-block-store.js'
import { chunkIdOf, chunkKeys, encodeChunk, encodeManifest, verifyManifestTag, type ChunkKeys, type Extent, type Manifest } from './format.js'
import { CHUNK_BYTES, CHUNK_WINDOW_BYTES, checkAborted, concat, isZero, report, runWorkers, toPieces, toRuns } from './chunking.js'
import { backupChunkKeys, readVolumeManifests, toBackup } from './manifests.js'
import { nextSequence } from './order.js'
import { TargetLease, removeAbandoned, waitForCollections, type LeasingTarget } from './leases.js'
import { gone } from './leftovers.js'
import { endLease, writeIndexOrReport, type BackupContext } from './context.js'
import type { Backup, BackupKeySource, CreateBackupOptions } from './types.js'

const STRATEGIES = new Set<string>(Object.values(BackupStrategy))
/** How long a backup taken on a replica's node waits for its snapshot to reach the copy there (see snapshotHere). */
const SNAPSHOT_ARRIVAL_MS = 30_000

/** The body of BackupManager.create once its options are checked, cancelled by `signal`. */
export async function createBackup (ctx: BackupContext, vol: VolumeRef, options: CreateBackupOptions, signal: AbortSignal): Promise<Backup> {
  const requested = (options.strategy ?? BackupStrategy.Full) as BackupStrategy
  if (!STRATEGIES.has(requested)) throw new GalleonError('INVALID_ARGUMENT', `backup strategy must be one of ${[...STRATEGIES].join(', ')}, got ${describe(options.strategy)}`)
  const target = ctx.targets.target(options.target)
  const volume = await ctx.g.getVolume(vol)
  checkAborted(signal)
  return await ctx.targets.queue(target).run(async () => {
    await target.open()
    if (options.hooks?.pre !== undefined) {
      try {
        await options.hooks.pre({ volume, strategy: requested })
      } catch (err) {
        throw new GalleonError('HOOK_FAILED', `the pre-backup hook of volume ${volume.name} failed, so no backup was taken: ${(err as Error)?.message ?? String(err)}`, { cause: err })
      }
    }
    // The lease tells deletions in other processes and instances that a backup is under way
    // here, whose chunks no manifest names yet (see leases.ts): they collect none of them. A
    // collection that started before it may be deleting chunks this backup would reuse: waited for.
    const lease = await TargetLease.take(target, 'backup')
    try {
      if (lease !== undefined) {
        // Leases of killed processes of this machine would keep .tmp- files from being removed at open.
        await removeAbandoned(target as LeasingTarget, lease.id)
        await waitForCollections(target as LeasingTarget, lease.id, signal)
      }
      return await storeBackup(ctx, volume, target, requested, options, signal, lease)
    } finally {
      await endLease(ctx, target, lease)
    }
  })
}

/** Takes the backup of createBackup, under `lease` (see there). */
async function storeBackup (ctx: BackupContext, volume: Volume, target: BackupTarget, requested: BackupStrategy, options: CreateBackupOptions, signal: AbortSignal, lease: TargetLease | undefined): Promise<Backup> {
  const volumeSnapshots = await ctx.g.listSnapshots(volume.id)
  const own = new Set(volumeSnapshots.flatMap((s) => s.name.startsWith('backup-') ? [s.name.slice('backup-'.length)] : []))
  const { manifests: ours, indexUsed } = await readVolumeManifests(target, volume.id, own)
  const snapshots = new Set(volumeSnapshots.map((s) => s.id))
  const backupKey = volume.encrypted ? await ctx.keys.backupKey(volume.id) : undefined
  // Read before the snapshot is taken: every backup of the volume stored by then (by any
  // instance) holds older data and gets a smaller number (see order.ts). An encrypted volume's
  // manifests count only when they authenticate under the key they name (its current backup
  // key, or one a rotation retired): one planted on the target by someone without the key
  // would otherwise number every later backup, up to the cap, where they all share one number
  // and fall back to their dates for good.
  const sequence = nextSequence(backupKey === undefined ? ours : await newestAuthentic(ctx.keys, ours, backupKey))
  // A base must still have its snapshot, and be sealed as this backup will be: after the volume
  // moved between a plain and an encrypting class, the next backup is full, so an encrypted
  // volume's backups never lean on plaintext ones (which can then be deleted) or the reverse.
  // And its chain of bases must be whole on the target: a backup built on a broken chain would be
  // stored as complete and fail at restore.
  // An encrypted volume's manifests count only when their tags check out (see verifyManifestTag):
  // a backup must not build on one altered on the target, nor on a chain holding one.
  const keys = backupKey === undefined ? undefined : chunkKeys(backupKey.key)
  const authentic = (m: Manifest): boolean => {
    if (keys === undefined) return true
    try { verifyManifestTag(m, keys); return true } catch { return false }
  }
  const byId = new Map(ours.filter(authentic).map((m) => [m.id, m]))
  // Memoized along the walk: every manifest's chain is checked once, not once per manifest
  // built on it (a long incremental chain cost its length squared).
  const wholeChains = new Map<string, boolean>()
  const whole = (m: Manifest): boolean => {
    const walked: string[] = []
    let result = true
    for (let at: string | null = m.base, steps = 0; at !== null; at = byId.get(at)?.base ?? null, steps++) {
      const known = wholeChains.get(at)
      if (known !== undefined) { result = known; break }
      if (!byId.has(at) || steps > byId.size) { result = false; break }
      walked.push(at)
    }
    for (const id of walked) wholeChains.set(id, result)
    return result
  }
  const usable = ours.filter((m) => byId.has(m.id) && snapshots.has(m.snapshot.id) && m.encryption?.fingerprint === backupKey?.fingerprint && whole(m))
  let base = requested === BackupStrategy.Incremental
    ? usable.at(-1)
    : requested === BackupStrategy.Differential ? usable.filter((m) => m.strategy === 'full').at(-1) : undefined
  let strategy = base === undefined ? BackupStrategy.Full : requested
  // A leftover snapshot (see retryLeftSnapshots) can be a base again once the backup that freed
  // it is deleted: it stays while this backup lists the changes since it.
  const releaseBase = ctx.leftovers.holdBase(base?.snapshot.id)
  const id = randomUUID()
  try {
    await ctx.leftovers.backupStarted(id, volume.id, `backup-${id}`)
  } catch (err) {
    // Released here too: else it stays held until close, and retryLeftSnapshots never deletes it.
    releaseBase()
    throw err
  }
  let snapshot: Awaited<ReturnType<GalleonFS['createSnapshot']>>
  try {
    snapshot = await ctx.g.createSnapshot(volume.id, `backup-${id}`)
  } catch (err) {
    releaseBase()
    await ctx.leftovers.backupOver(id)
    throw err
  }
  let forget = true
  let arrived = false
  try {
    await snapshotHere(ctx.g, volume, snapshot.id, signal)
    arrived = true
    let indices: number[]
    try {
      indices = await ctx.g.listChangedBlocks(volume.id, base === undefined ? { to: snapshot.id } : { from: base.snapshot.id, to: snapshot.id })
    } catch (err) {
      // The base's snapshot went after it was chosen (a leftover deleted with the clone that held
      // it, see retryLeftSnapshots, or a deleteSnapshot): this backup is a full one instead.
      if (base === undefined || errorCode(err) !== 'SNAPSHOT_NOT_FOUND') throw err
      base = undefined
      strategy = BackupStrategy.Full
      indices = await ctx.g.listChangedBlocks(volume.id, { to: snapshot.id })
    } finally {
      releaseBase()
    }
    const blockSize = volume.blockSize
    const total = indices.length * blockSize
    let done = 0
    const progress = (): void => {
      ctx.g.emit('backup:progress', { backupId: id, volumeId: volume.id, volumeName: volume.name, bytesDone: done, bytesTotal: total })
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
          const data = await ctx.g.read({ volume: volume.id, snapshot: snapshot.id }, index * blockSize, blocks * blockSize)
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
            // spares it (see delete.ts) until this backup's manifest names it.
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
    await checkChunks(target, lease, referenced, signal)
    const manifest: Manifest = {
      kind: 'galleonfs-backup',
      format: 1,
      id,
      createdAt: new Date(ctx.now()).toISOString(),
      sequence,
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
    const manifestBytes = encodeManifest(manifest, keys)
    await target.putManifest(id, manifestBytes)
    if (lease !== undefined && (lease.lost || !await lease.intact())) {
      // The lease was taken for dead since the check (this process stopped, a suspended VM):
      // a collection may have deleted chunks the manifest names. Checked again; not stored if so.
      try {
        await checkChunks(target, lease, referenced, signal)
      } catch (err) {
        await target.deleteManifest(id).catch((cause: unknown) => {
          throw new GalleonError(errorCode(err), `${(err as Error).message}; its manifest could not be removed (${(cause as Error).message}): delete backup ${id}, which names missing chunks`, { cause: err })
        })
        throw err
      }
    }
    await ctx.leftovers.backupStored(id, volume.id, target.location)
    // Extended only when it was used (not found lying about this volume's backups): else rebuilt.
    await writeIndexOrReport(ctx, target, indexUsed ? { manifest, bytes: manifestBytes } : undefined)
    const backup = toBackup(manifest, target)
    // Keep the snapshots later backups need as bases (this one, and the newest full); free the rest.
    const newestFull = strategy === BackupStrategy.Full ? manifest : ours.filter((m) => m.strategy === 'full').at(-1)
    for (const older of ours) {
      if (older.id !== newestFull?.id && snapshots.has(older.snapshot.id)) await ctx.leftovers.freeSnapshot(volume.id, volume.name, older)
    }
    // And those of this volume's backups on the target that were deleted elsewhere (by another instance).
    await ctx.leftovers.freeUnlisted(volume.id, volume.name, target.location, new Set([...ours.map((m) => m.id), id]))
    ctx.g.emit('backup:completed', backup)
    if (options.hooks?.post !== undefined) {
      try {
        await options.hooks.post(backup)
      } catch (err) {
        throw new GalleonError('HOOK_FAILED', `backup ${id} of volume ${volume.name} is complete and stored, but its post-backup hook failed: ${(err as Error)?.message ?? String(err)}`, { cause: err })
      }
    }
    return backup
  } catch (err) {
    if (!arrived) {
      // The snapshot (on the primary) is not on this node's copy yet, so it cannot be named here:
      // it stays recorded, and an open deletes it (by name) once the copy has it; `elsewhere`
      // keeps the record at an open where the copy still lacks it (not resynced yet).
      forget = false
      await ctx.leftovers.backupLeftElsewhere(id, volume.id, snapshot.name)
    } else if (await target.getManifest(id).catch(() => undefined) === undefined) {
      // A snapshot not deleted now (the instance is closing) stays recorded: the next open deletes it.
      forget = await ctx.g.deleteSnapshot(volume.id, snapshot.id).then(() => true, gone)
    }
    if (!(err instanceof GalleonError) && isNoSpaceError(err)) throw new GalleonError('NO_SPACE', `the backup target ${target.location} is full, so backup ${id} of volume ${volume.name} was not stored (nothing of it is listed); free space there or delete old backups, then back up again`, { cause: err })
    throw err
  } finally {
    releaseBase()
    if (forget) await ctx.leftovers.backupOver(id)
  }
}

/**
 * Checks that every chunk a backup names is on the target, before its manifest is stored: a
 * deletion in another process may have collected one (one of an earlier release, which takes no
 * lease, or one that took this backup's lease for dead), and a manifest naming a missing chunk
 * would look complete and fail at restore. With a lease, it is rewritten first (so that every
 * collection starting from now sees it) and collections already running are waited for.
 */
async function checkChunks (target: BackupTarget, lease: TargetLease | undefined, referenced: ReadonlySet<string>, signal: AbortSignal): Promise<void> {
  if (lease !== undefined) {
    // Found as last written: collections from now on see it. Else written again (`lost` set).
    if (lease.lost || !await lease.intact()) await lease.refresh()
    lease.lost = false
    await waitForCollections(target as LeasingTarget, lease.id, signal)
  }
  for (const chunk of referenced) {
    if (!await target.hasChunk(chunk)) {
      throw new GalleonError('BUSY', `chunk ${chunk} of this backup was deleted from ${target.location} while the backup ran (by a deleteBackup in another process, which took this backup for abandoned if its process was stopped or suspended meanwhile); no backup was stored, take it again`)
    }
  }
}

/**
 * The manifest with the largest sequence among an encrypted volume's `manifests` that
 * authenticates under the backup key it names (as a list of at most one, for nextSequence):
 * tried largest first, so that it usually costs one check under the current key. One that does
 * not authenticate (altered or planted on the target, untagged, or plain: an encrypted volume's
 * backups are sealed; those from before a move out of a plain class are not numbered by) counts
 * for nothing. A key that cannot be opened for another reason (the key provider is unavailable)
 * fails the backup rather than number it low.
 */
async function newestAuthentic (keySource: BackupKeySource, manifests: readonly Manifest[], current: { key: Uint8Array, fingerprint: string }): Promise<Manifest[]> {
  const opened = new Map<string, ChunkKeys>([[current.fingerprint, chunkKeys(current.key)]])
  const numbered = manifests.filter((m) => m.sequence !== undefined && m.encryption !== undefined).sort((a, b) => (b.sequence as number) - (a.sequence as number))
  for (const manifest of numbered) {
    try {
      await backupChunkKeys(keySource, manifest, opened)
      return [manifest]
    } catch (err) {
      const code = errorCode(err)
      if (code !== 'DECRYPTION_FAILED' && code !== 'CORRUPTION') throw err
    }
  }
  return []
}

/**
 * Waits until this node's copy of the volume holds the backup's snapshot. On a node that is not
 * the primary of a replicated volume, the primary takes the snapshot and the copy here gets it
 * through its change stream, maybe after the call returned: the changed blocks are listed from
 * this copy's snapshots, so the backup starts once the snapshot is here.
 */
async function snapshotHere (g: GalleonFS, volume: Volume, snapshotId: string, signal: AbortSignal): Promise<void> {
  const deadline = performance.now() + SNAPSHOT_ARRIVAL_MS
  while (!(await g.listSnapshots(volume.id)).some((s) => s.id === snapshotId)) {
    checkAborted(signal)
    if (performance.now() >= deadline) {
      const primary = await g.replicationStatus(volume.id).then((s) => s.primary, () => undefined)
      throw new GalleonError('BACKEND_UNAVAILABLE', `the copy of volume ${volume.name} on this node did not receive the backup's snapshot from its primary (${primary ?? 'unknown'}) within ${SNAPSHOT_ARRIVAL_MS / 1000} s (it is out of sync?); no backup was stored: take it on the primary's node, or once this copy is in sync (replicationStatus)`)
    }
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
