// Checking a backup (verify: its chain of bases readable, every chunk there and authentic) and
// adopting one (tagging the manifests of an encrypted chain written before manifests were tagged).

import type { BackupTarget } from '../drivers.js'
import { GalleonError, errorCode } from '../errors.js'
import { chunkId, decodeChunk, decodeIndex, encodeManifest, isUntaggedManifest, type ChunkKeys, type Manifest } from './format.js'
import { backupChunkKeys, readChain, readManifest } from './manifests.js'
import { TargetLease, waitForCollections, type LeasingTarget } from './leases.js'
import { endLease, writeIndexOrReport, type BackupContext } from './context.js'
import type { BackupAdoption, BackupTargetRef, BackupVerification } from './types.js'

/** The body of BackupManager.verify. */
export async function verifyBackup (ctx: BackupContext, id: string, options: { target?: BackupTargetRef }): Promise<BackupVerification> {
  const target = await ctx.targets.readTarget(options?.target, id)
  await target.open()
  const problems: Array<{ backupId: string, chunk?: string, code: string, message: string }> = []
  const chain: Manifest[] = []
  let at: string | null = id
  while (at !== null) {
    const current: string = at
    if (chain.some((m) => m.id === current)) {
      problems.push({ backupId: current, code: 'CORRUPTION', message: `the chain of bases loops back to backup ${current}; its manifests were altered on the target` })
      break
    }
    try {
      const manifest: Manifest = await readManifest(target, current)
      chain.push(manifest)
      at = manifest.base
    } catch (err) {
      if (current === id) throw err
      problems.push({ backupId: current, code: errorCode(err), message: `base backup ${current} cannot be read: ${(err as Error).message}` })
      break
    }
  }
  // What a restore refuses, verify reports: a chain that spans volumes (a backup builds only on
  // its own volume's), and extents naming blocks past the end of their chunk (checked below).
  const foreign = chain.find((manifest) => manifest.volume.id !== (chain[0] as Manifest).volume.id)
  if (foreign !== undefined) {
    problems.push({ backupId: foreign.id, code: 'CORRUPTION', message: `backup ${id} builds on backup ${foreign.id}, which is of another volume (${foreign.volume.id}, not ${(chain[0] as Manifest).volume.id}); a chain never spans volumes, so its manifests were altered on the target` })
  }
  const checked = new Set<string>()
  // The bytes each chunk holds once opened, for the extents of every backup that names it.
  const chunkBytes = new Map<string, number>()
  // Newest first, so each key is opened through its newest wrapping (see backupChunkKeys).
  const opened = new Map<string, ChunkKeys>()
  for (const manifest of chain) {
    let keys: ChunkKeys | undefined
    try {
      keys = await backupChunkKeys(ctx.keys, manifest, opened)
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
        chunkBytes.set(chunk, (await decodeChunk(chunk, envelope, keys)).byteLength)
      } catch (err) {
        problems.push({ backupId: manifest.id, chunk, code: errorCode(err), message: (err as Error).message })
      }
    }
  }
  for (const manifest of chain) {
    const blockSize = manifest.volume.blockSize
    for (const [, count, chunk, offset] of manifest.extents) {
      const bytes = chunk === null ? undefined : chunkBytes.get(chunk)
      if (bytes === undefined || (offset + count) * blockSize <= bytes) continue
      problems.push({ backupId: manifest.id, chunk: chunk as string, code: 'CORRUPTION', message: `backup ${manifest.id} names blocks ${offset}..${offset + count - 1} of chunk ${chunk}, which holds ${bytes / blockSize}; its manifest was altered on the target, so it cannot be restored` })
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

/** The body of BackupManager.adopt (see there): under the target's queue and an 'adopt' lease. */
export async function adoptBackup (ctx: BackupContext, id: string, options: { target?: BackupTargetRef }): Promise<BackupAdoption> {
  const target = await ctx.targets.readTarget(options?.target, id)
  await target.open()
  return await ctx.targets.queue(target).run(async () => {
    // Under a lease from before its chunks are checked until its manifests are rewritten: a
    // deletion in another process collects nothing meanwhile (a manifest it removed, rewritten
    // here, would name collected chunks), and an open leaves the temporary files of these writes
    // alone whatever its clock says (see leases.ts). A collection already running is waited for.
    const lease = await TargetLease.take(target, 'adopt')
    try {
      if (lease !== undefined) await waitForCollections(target as LeasingTarget, lease.id)
      return await adoptChain(ctx, target, id)
    } finally {
      await endLease(ctx, target, lease)
    }
  })
}

/** Checks backup `id`'s chain, then tags its untagged manifests, oldest first. */
async function adoptChain (ctx: BackupContext, target: BackupTarget, id: string): Promise<BackupAdoption> {
  // A chain that spans volumes is refused there: adopting it would vouch for another volume's manifests.
  const chain = await readChain(target, id, 'is not adopted')
  const opened = new Map<string, ChunkKeys>()
  const toTag: Array<{ manifest: Manifest, keys: ChunkKeys }> = []
  const unchanged: string[] = []
  const checked = new Set<string>()
  // Newest first, so each key is opened through its newest wrapping (see backupChunkKeys).
  for (const manifest of chain) {
    // A tagged manifest is checked as usual: a wrong tag is refused, not re-tagged.
    const untagged = manifest.encryption !== undefined && isUntaggedManifest(manifest)
    const keys = await backupChunkKeys(ctx.keys, manifest, opened, { untagged: 'allow' })
    if (!untagged || keys === undefined) { unchanged.push(manifest.id); continue }
    for (const [, , chunk] of manifest.extents) {
      if (chunk === null || checked.has(chunk)) continue
      checked.add(chunk)
      const envelope = await target.getChunk(chunk)
      if (envelope === undefined) throw new GalleonError('CORRUPTION', `chunk ${chunk} of backup ${manifest.id} is missing from ${target.location}; the backup is not adopted`)
      try {
        await decodeChunk(chunk, envelope, keys)
      } catch (err) {
        throw new GalleonError(errorCode(err), `chunk ${chunk} of backup ${manifest.id} does not authenticate under its key (${(err as Error).message}); the backup is not adopted`, { cause: err })
      }
    }
    toTag.push({ manifest, keys })
  }
  // Oldest first: a crash part-way leaves the newer ones untagged, to adopt again. One deleted
  // meanwhile (by a deleteBackup in another process) is not written back.
  for (const { manifest, keys } of toTag.reverse()) {
    if (await target.getManifest(manifest.id) === undefined) throw new GalleonError('BACKUP_NOT_FOUND', `backup ${manifest.id} was deleted from ${target.location} while it was being adopted, so it is not adopted; listBackups() shows the backups there`)
    await target.putManifest(manifest.id, encodeManifest(manifest, keys))
  }
  if (toTag.length > 0) await writeIndexOrReport(ctx, target)
  return { backupId: id, adopted: toTag.map(({ manifest }) => manifest.id), unchanged, chunksChecked: checked.size }
}
