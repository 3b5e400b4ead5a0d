// Restoring a backup: walks its chain of bases to find the newest data of every block, then writes
// it into a new volume or over an existing one (put back as it was if the restore fails).

import { randomUUID } from 'node:crypto'
import type { BackupTarget } from '../drivers.js'
import { GalleonError, errorCode } from '../errors.js'
import type { GalleonFS } from '../galleonfs.js'
import type { CreateVolumeOptions, Volume } from '../types.js'
import { decodeChunk, type ChunkKeys, type Manifest } from './format.js'
import { checkAborted, report, runWorkers } from './chunking.js'
import { backupChunkKeys, readChain } from './manifests.js'
import { NEW_VOLUME_ID, type BackupKeySource, type RestoreBackupOptions } from './types.js'

/**
 * Tracks the volume a restore writes into. `started` claims it (BUSY while another restore writes
 * into it: two at once would leave a mix of both backups that looks complete) and records it
 * durably, with the snapshot that puts an existing volume back (none for a new volume, which is
 * removed instead, and recorded before it is created): a restore cut short by close() or a crash
 * leaves the record, and the next open removes the new volume or puts the existing one back.
 * `forget` drops the record once the new volume is complete or removed (or nothing was changed);
 * `release` ends the claim.
 */
export interface RestoreTracker {
  readonly started: (volumeId: string, safetySnapshot?: string) => Promise<void>
  readonly forget: (volumeId: string) => Promise<void>
  /**
   * An existing volume is final (restored, or put back): its record becomes one of the safety
   * snapshot alone, which is then deleted; one that cannot be deleted now is reported (io:error)
   * and deleted at a later open. Rejects only when the record cannot be changed.
   */
  readonly finished: (volume: Volume, safetySnapshot: string) => Promise<void>
  /** Fences the volume (see HalfRestoredFence.fence in leftovers.ts); false when it is not fenced (replicated). */
  readonly fence: (volumeId: string, safetySnapshot: string, why: string) => Promise<boolean>
  readonly release: (volumeId: string) => void
  /**
   * The restore's own writes and trims of the claimed volume: other writes to it are refused while
   * the claim holds (see assertNotRestoring in facade/io.ts), and so are reverts, these are not.
   * Without them, the instance's own calls are used.
   */
  readonly write?: (volumeId: string, offset: number, data: Uint8Array) => Promise<void>
  readonly trim?: (volumeId: string, offset: number, length: number) => Promise<void>
  /** Reverts the claimed volume to its safety snapshot (the put-back of a failed restore), as `write`. */
  readonly putBack?: (volumeId: string, safetySnapshot: string) => Promise<void>
}

/** The body of BackupManager.restore once the options are checked and the target chosen. */
export async function restoreBackup (g: GalleonFS, keySource: BackupKeySource, target: BackupTarget, id: string, options: RestoreBackupOptions, tracker?: RestoreTracker): Promise<Volume> {
  await target.open()
  // Oldest first.
  const chain: Manifest[] = (await readChain(target, id, 'cannot be restored')).reverse()
  const manifest = chain[chain.length - 1] as Manifest
  // Newest data for every block along the chain: block -> [chunk, offset of the block in it].
  const blocks = new Map<number, [string | null, number]>()
  // Each chunk is opened with the keys of the backup that stored it: a chain may span a move of
  // the volume between a plain and an encrypting class (backups written before bases had to match).
  const chunkKeysOf = new Map<string, ChunkKeys | undefined>()
  // The backup of the chain that names each chunk last, for messages about a damaged chunk.
  const chunkOwner = new Map<string, string>()
  // The requested backup's key first: its wrapping is the newest (see backupChunkKeys).
  const opened = new Map<string, ChunkKeys>()
  await backupChunkKeys(keySource, manifest, opened)
  for (const step of chain) {
    const keys = await backupChunkKeys(keySource, step, opened)
    // Zeros over a long run (a trimmed range): what restores as zeros needs no entry, so only the
    // entries it overrides go, without a step per block of the run; all of a step's long runs in
    // one pass over the entries (its extents are in block order and never overlap: decodeManifest
    // checks), not one pass per run.
    const longZeroRuns: Array<[number, number]> = []
    for (const [index, count, chunk, offset] of step.extents) {
      if (chunk === null && count > blocks.size) {
        longZeroRuns.push([index, index + count])
        continue
      }
      for (let i = 0; i < count; i++) blocks.set(index + i, [chunk, offset + i])
      if (chunk !== null) {
        chunkKeysOf.set(chunk, keys)
        chunkOwner.set(chunk, step.id)
      }
    }
    if (longZeroRuns.length > 0) {
      for (const block of blocks.keys()) {
        // The last run starting at or before the block (runs are sorted and disjoint).
        let low = 0
        let high = longZeroRuns.length - 1
        while (low < high) {
          const middle = (low + high + 1) >> 1
          if ((longZeroRuns[middle] as [number, number])[0] <= block) low = middle
          else high = middle - 1
        }
        const [start, end] = longZeroRuns[low] as [number, number]
        if (block >= start && block < end) blocks.set(block, [null, 0])
      }
    }
  }
  const blockSize = manifest.volume.blockSize
  let existing: Volume | undefined
  let create: CreateVolumeOptions | undefined
  let safetySnapshot: string | undefined
  if (options.volume !== undefined) {
    const volume = existing = await g.getVolume(options.volume)
    if (volume.blockSize !== blockSize) throw new GalleonError('INVALID_ARGUMENT', `backup ${id} has ${blockSize}-byte blocks but volume ${volume.name} has ${volume.blockSize}-byte blocks`)
    if (manifest.encryption !== undefined && !volume.encrypted) {
      throw new GalleonError('INVALID_ARGUMENT', `backup ${id} is of an encrypted volume and ${volume.name} is not encrypted; restore it into an encrypted volume, or into a new one ({ name })`)
    }
    if (volume.sizeBytes < manifest.volume.sizeBytes) {
      throw new GalleonError('OUT_OF_RANGE', `backup ${id} is of a ${manifest.volume.sizeBytes}-byte volume but ${volume.name} has ${volume.sizeBytes} bytes; expand it first or restore into a new volume`)
    }
    if (g.blockSize !== blockSize) throw new GalleonError('INVALID_ARGUMENT', `backup ${id} has ${blockSize}-byte blocks; this instance uses ${g.blockSize}`)
    // A snapshot (O(1)) puts the volume back as it was if the restore fails half-way; it is
    // recorded (by name) before it is taken, so that after a crash the next open puts it back.
    safetySnapshot = `pre-restore-${randomUUID()}`
    await tracker?.started(volume.id, safetySnapshot)
  } else {
    if (g.blockSize !== blockSize) throw new GalleonError('INVALID_ARGUMENT', `backup ${id} has ${blockSize}-byte blocks; this instance uses ${g.blockSize}, so restore it into an instance opened with blockSize ${blockSize}`)
    const classes = await g.listStorageClasses()
    let storageClass = classes.find((c) => c.name === manifest.volume.storageClass)
    // An encrypted backup is restored into an encrypted volume, whatever happened to its class.
    if (manifest.encryption !== undefined && storageClass?.parameters.encryption !== 'true') storageClass = classes.find((c) => c.name === 'encrypted-storage')
    // The volume's pool, unless its class places it (then the class's pool applies) or the pool is gone.
    const formerPool = manifest.volume.pool !== undefined && storageClass?.parameters.pool === undefined && (await g.listPools()).some((p) => p.name === manifest.volume.pool) ? manifest.volume.pool : undefined
    const pool = options.pool ?? formerPool
    create = {
      name: options.name ?? `${manifest.volume.name}-restored-${id.slice(0, 8)}`,
      ...(options.namespace === undefined ? {} : { namespace: options.namespace }),
      sizeBytes: manifest.volume.sizeBytes,
      storageClass: storageClass?.name,
      ...(manifest.volume.replicas === undefined ? {} : { replicas: manifest.volume.replicas }),
      ...(pool === undefined ? {} : { pool }),
      labels: { ...manifest.volume.labels }
    }
  }
  // A new volume's id is chosen and recorded before the volume is created, as the safety snapshot
  // is: a kill right after the create leaves a record naming it, and the next open removes it (it
  // would otherwise look like a complete volume). A record of a volume never created is dropped then.
  const volumeId = existing?.id ?? randomUUID()
  const write = tracker?.write ?? (async (volume: string, offset: number, data: Uint8Array) => { await g.write(volume, offset, data) })
  const trim = tracker?.trim ?? (async (volume: string, offset: number, length: number) => { await g.trim(volume, offset, length) })
  const putBack = tracker?.putBack ?? (async (volume: string, snapshot: string) => { await g.restoreSnapshot(volume, snapshot) })
  if (create !== undefined) await tracker?.started(volumeId)
  try {
    const volume = create === undefined ? existing as Volume : await g.createVolume({ ...create, [NEW_VOLUME_ID]: volumeId } as CreateVolumeOptions)
    if (safetySnapshot !== undefined) {
      await g.createSnapshot(volume.id, safetySnapshot)
      // Discard the old contents (in pieces: one trim call covers at most 256 MiB).
      const piece = 128 * 1024 * 1024
      for (let offset = 0; offset < volume.sizeBytes; offset += piece) {
        await trim(volume.id, offset, Math.min(piece, volume.sizeBytes - offset))
      }
    }
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
        checkAborted(options.signal, true)
        const [chunk, list] = chunks[next++] as [string, Array<[number, number]>]
        const owner = chunkOwner.get(chunk) ?? id
        const of = owner === id ? `backup ${id}` : `backup ${owner} (a base of backup ${id})`
        const envelope = await target.getChunk(chunk)
        if (envelope === undefined) throw new GalleonError('CORRUPTION', `chunk ${chunk} of ${of} is missing from ${target.location}; the backup cannot be restored (verifyBackup lists every damaged part)`)
        let data: Uint8Array
        try {
          data = await decodeChunk(chunk, envelope, chunkKeysOf.get(chunk))
        } catch (err) {
          throw new GalleonError(errorCode(err), `${of} cannot be restored: ${(err as Error).message} (verifyBackup lists every damaged part)`, { cause: err })
        }
        list.sort((a, b) => a[0] - b[0])
        for (let at = 0; at < list.length;) {
          let end = at + 1
          while (end < list.length && (list[end] as [number, number])[0] === (list[end - 1] as [number, number])[0] + 1 && (list[end] as [number, number])[1] === (list[end - 1] as [number, number])[1] + 1) end++
          const [index, offset] = list[at] as [number, number]
          const count = end - at
          // A manifest naming blocks past the end of its chunk was altered: never write a short run.
          if ((offset + count) * blockSize > data.byteLength) throw new GalleonError('CORRUPTION', `${of} names blocks ${offset}..${offset + count - 1} of chunk ${chunk}, which holds ${data.byteLength / blockSize}; its manifest was altered, so it cannot be restored`)
          await write(volume.id, index * blockSize, data.subarray(offset * blockSize, (offset + count) * blockSize))
          done += count * blockSize
          at = end
        }
        g.emit('restore:progress', { backupId: id, volumeId: volume.id, volumeName: volume.name, bytesDone: done, bytesTotal: total })
        report(options.onProgress, done, total)
      }
    }
    await runWorkers(worker)
    await g.flush(volume.id)
    // Complete: the record goes once nothing would put the volume back any more.
    if (safetySnapshot !== undefined) await tracker?.finished(volume, safetySnapshot)
    else await tracker?.forget(volume.id)
  } catch (err) {
    if (create !== undefined) {
      // Not removed now (the instance is closing): the record stays, and the next open removes it.
      // Never created (the create failed): nothing to remove.
      const removed = await g.deleteVolume(volumeId, { force: true }).then(() => true, (cause: unknown) => errorCode(cause) === 'VOLUME_NOT_FOUND')
      if (removed) await tracker?.forget(volumeId).catch(() => {})
    }
    if (safetySnapshot !== undefined) {
      const [volume, snapshot] = [existing as Volume, safetySnapshot]
      // 'put back': its snapshot is deleted now or at a later open; 'nothing': the snapshot was
      // never taken (nothing changed) or the volume is gone; 'fenced': refuses I/O until put back
      // by hand; 'reported': a replicated volume, left for a revert by hand; 'kept': the fence could
      // not be recorded (the instance is closing), the record stays and the next open deals with it.
      const outcome = await putBack(volume.id, snapshot).then(() => 'put back' as const, async (cause: unknown) => {
        const code = errorCode(cause)
        if (code === 'SNAPSHOT_NOT_FOUND' || code === 'VOLUME_NOT_FOUND') return 'nothing' as const
        // Never put back later over writes made in between (see HalfRestoredFence).
        const why = `the restore of backup ${id} failed and putting the volume back failed too: ${(cause as Error).message}`
        const fenced = await (tracker?.fence(volume.id, snapshot, why) ?? Promise.resolve(false)).then((done) => done ? 'fenced' as const : 'reported' as const, () => 'kept' as const)
        const next = fenced === 'fenced'
          ? `it refuses I/O until restoreSnapshot(${JSON.stringify(volume.name)}, ${JSON.stringify(snapshot)}) puts it back`
          : fenced === 'reported' ? `restore the backup again, or revert it with restoreSnapshot(${JSON.stringify(volume.name)}, ${JSON.stringify(snapshot)})` : 'the next open deals with it'
        g.emit('io:error', { volumeId: volume.id, volumeName: volume.name, operation: 'write', code, message: `volume ${volume.name} is left half-restored from backup ${id} and could not be put back now (${(cause as Error).message}); ${next}` })
        return fenced
      })
      if (outcome === 'put back') await tracker?.finished(volume, snapshot).catch(() => {})
      else if (outcome !== 'kept') await tracker?.forget(volume.id).catch(() => {})
    }
    throw err
  } finally {
    tracker?.release(volumeId)
  }
  return await g.getVolume(volumeId)
}
