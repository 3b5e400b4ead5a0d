// Restoring a backup: walks its chain of bases to find the newest data of every block, then writes
// it into a new volume or over an existing one (put back as it was if the restore fails).

import { randomUUID } from 'node:crypto'
import type { BackupTarget } from '../drivers.js'
import { GalleonError, errorCode } from '../errors.js'
import type { GalleonFS } from '../galleonfs.js'
import type { Volume } from '../types.js'
import { decodeChunk, type ChunkKeys, type Manifest } from './format.js'
import { checkAborted, report, runWorkers } from './chunking.js'
import { backupChunkKeys, readManifest } from './manifests.js'
import type { BackupKeySource, RestoreBackupOptions } from './types.js'

/**
 * Records a new volume while a restore fills it: a restore cut short by close() or a crash (when
 * the volume cannot be removed at once) leaves the record, and the next open removes the volume.
 */
export interface RestoreTracker {
  readonly started: (volumeId: string) => Promise<void>
  readonly finished: (volumeId: string) => Promise<void>
}

/** The body of BackupManager.restore once the options are checked and the target chosen. */
export async function restoreBackup (g: GalleonFS, keySource: BackupKeySource, target: BackupTarget, id: string, options: RestoreBackupOptions, tracker?: RestoreTracker): Promise<Volume> {
  await target.open()
  const manifest = await readManifest(target, id)
  const chain: Manifest[] = [manifest]
  while ((chain[0] as Manifest).base !== null) {
    const base = (chain[0] as Manifest).base as string
    try {
      chain.unshift(await readManifest(target, base))
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
    const keys = await backupChunkKeys(keySource, step)
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
    volume = await g.getVolume(options.volume)
    if (volume.blockSize !== blockSize) throw new GalleonError('INVALID_ARGUMENT', `backup ${id} has ${blockSize}-byte blocks but volume ${volume.name} has ${volume.blockSize}-byte blocks`)
    if (manifest.encryption !== undefined && !volume.encrypted) {
      throw new GalleonError('INVALID_ARGUMENT', `backup ${id} is of an encrypted volume and ${volume.name} is not encrypted; restore it into an encrypted volume, or into a new one ({ name })`)
    }
    if (volume.sizeBytes < manifest.volume.sizeBytes) {
      throw new GalleonError('OUT_OF_RANGE', `backup ${id} is of a ${manifest.volume.sizeBytes}-byte volume but ${volume.name} has ${volume.sizeBytes} bytes; expand it first or restore into a new volume`)
    }
    if (g.blockSize !== blockSize) throw new GalleonError('INVALID_ARGUMENT', `backup ${id} has ${blockSize}-byte blocks; this instance uses ${g.blockSize}`)
    // A snapshot (O(1)) to put the volume back as it was if the restore fails half-way.
    safety = await g.createSnapshot(volume.id, `pre-restore-${randomUUID()}`)
    // Discard the old contents (in pieces: one trim call covers at most 256 MiB).
    const piece = 128 * 1024 * 1024
    for (let offset = 0; offset < volume.sizeBytes; offset += piece) {
      await g.trim(volume.id, offset, Math.min(piece, volume.sizeBytes - offset))
    }
  } else {
    if (g.blockSize !== blockSize) throw new GalleonError('INVALID_ARGUMENT', `backup ${id} has ${blockSize}-byte blocks; this instance uses ${g.blockSize}, so restore it into an instance opened with blockSize ${blockSize}`)
    const classes = await g.listStorageClasses()
    let storageClass = classes.find((c) => c.name === manifest.volume.storageClass)
    // An encrypted backup is restored into an encrypted volume, whatever happened to its class.
    if (manifest.encryption !== undefined && storageClass?.parameters.encryption !== 'true') storageClass = classes.find((c) => c.name === 'encrypted-storage')
    // The volume's pool, unless its class places it (then the class's pool applies) or the pool is gone.
    const formerPool = manifest.volume.pool !== undefined && storageClass?.parameters.pool === undefined && (await g.listPools()).some((p) => p.name === manifest.volume.pool) ? manifest.volume.pool : undefined
    const pool = options.pool ?? formerPool
    volume = await g.createVolume({
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
    if (created) await tracker?.started(volume.id)
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
          await g.write(volume.id, index * blockSize, data.subarray(offset * blockSize, (offset + count) * blockSize))
          done += count * blockSize
          at = end
        }
        g.emit('restore:progress', { backupId: id, volumeId: volume.id, volumeName: volume.name, bytesDone: done, bytesTotal: total })
        report(options.onProgress, done, total)
      }
    }
    await runWorkers(worker)
    await g.flush(volume.id)
    if (created) await tracker?.finished(volume.id)
  } catch (err) {
    if (created) {
      // Not removed now (the instance is closing): the record stays, and the next open removes it.
      const removed = await g.deleteVolume(volume.id, { force: true }).then(() => true, (cause: unknown) => errorCode(cause) === 'VOLUME_NOT_FOUND')
      if (removed) await tracker?.finished(volume.id).catch(() => {})
    }
    if (safety !== undefined) {
      await g.restoreSnapshot(volume.id, safety.id).catch(() => {})
      await g.deleteSnapshot(volume.id, safety.id).catch(() => {})
    }
    throw err
  }
  if (safety !== undefined) await g.deleteSnapshot(volume.id, safety.id).catch(() => {})
  return await g.getVolume(volume.id)
}
