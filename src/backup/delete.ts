// Deleting a backup (with the later backups built on it, when forced): each manifest goes, newest
// first, then the snapshot it was taken from (no backup needs it any more); then the index is
// rewritten and the chunks no manifest names are collected.

import { GalleonError, describe } from '../errors.js'
import type { Manifest } from './format.js'
import { readManifests, toBackup } from './manifests.js'
import { anyCollectable, collectChunks } from './collection.js'
import { writeIndexOrReport, type BackupContext } from './context.js'
import type { DeleteBackupOptions, DeleteBackupResult } from './types.js'

/**
 * Unused chunks put or reused this recently are not collected: a backup another process is taking
 * on the same target may name them in its manifest (git's gc spares recent objects for the same
 * reason). A later deletion collects them.
 */
const CHUNK_GRACE_SECONDS = 3600

/**
 * Checks deleteBackup()'s options (INVALID_ARGUMENT), before anything is looked up; returns the
 * chunks' grace period in milliseconds.
 */
export function checkDeleteBackupOptions (options: DeleteBackupOptions): number {
  if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `deleteBackup() options must be an object such as { force: true }, got ${describe(options)}`)
  const grace: unknown = options.chunkGraceSeconds ?? CHUNK_GRACE_SECONDS
  // A number only: a string such as '5' was multiplied into one.
  const graceMs = typeof grace === 'number' ? 1000 * grace : Number.NaN
  if (!Number.isFinite(graceMs) || graceMs < 0) throw new GalleonError('INVALID_ARGUMENT', `chunkGraceSeconds is a number of seconds >= 0, got ${describe(options.chunkGraceSeconds)}`)
  return graceMs
}

/** The body of BackupManager.delete. */
export async function deleteBackup (ctx: BackupContext, id: string, options: DeleteBackupOptions): Promise<DeleteBackupResult> {
  const graceMs = checkDeleteBackupOptions(options)
  const target = await ctx.targets.readTarget(options.target, id)
  await target.open()
  return await ctx.targets.queue(target).run(async () => {
    const unreadable: string[] = []
    const read = new Map<string, Uint8Array>()
    const manifests = await readManifests(target, unreadable, read)
    const doomed = manifests.find((m) => m.id === id)
    if (doomed === undefined) throw new GalleonError('BACKUP_NOT_FOUND', `no backup ${describe(id)} on ${target.location}; listBackups() shows the backups there`)
    // Backups whose chain goes through this one (newest first, so a crash leaves valid chains).
    const byId = new Map(manifests.map((m) => [m.id, m]))
    const dependsOnIt = (m: Manifest): boolean => {
      // Bounded: a chain altered on the target into a loop must not hang the deletion.
      for (let base = m.base, steps = 0; base !== null && steps <= byId.size; base = byId.get(base)?.base ?? null, steps++) if (base === id) return true
      return false
    }
    const dependents = manifests.filter(dependsOnIt)
    if (dependents.length > 0 && options?.force !== true) {
      throw new GalleonError('BUSY', `backup ${id} is the base of ${dependents.length} later backup(s) (${dependents.slice(0, 3).map((m) => m.id).join(', ')}); delete those first, or pass { force: true } to delete them with it`)
    }
    const deleted = [...dependents.reverse(), doomed]
    for (const manifest of deleted) {
      // Its snapshot first: once the manifest is gone nothing names the snapshot any more (a backup
      // frees only those of the backups it lists), so a kill in between left it pinning the
      // volume's old blocks for good. The other way round, a kill leaves the backup listed and
      // whole (a restore needs no snapshot), for the deletion to be asked again.
      await ctx.leftovers.freeSnapshot(manifest.volume.id, manifest.volume.name, manifest)
      await target.deleteManifest(manifest.id)
    }
    const kept = manifests.filter((m) => !deleted.includes(m))
    const referenced = new Set<string>()
    for (const manifest of kept) for (const [, , chunk] of manifest.extents) if (chunk !== null) referenced.add(chunk)
    // The index is rebuilt from the manifests just read (only one stored since is read again).
    const known = new Map<string, { manifest: Manifest, bytes: Uint8Array }>()
    for (const manifest of kept) {
      const bytes = read.get(manifest.id)
      if (bytes !== undefined) known.set(manifest.id, { manifest, bytes })
    }
    await writeIndexOrReport(ctx, target, undefined, { manifests: known, unreadable: new Set(unreadable) })
    let collected: { deleted: number, deferred?: string }
    if (unreadable.length > 0) {
      // Their chunks are unknown: collecting would destroy those backups for good.
      const why = `backup target ${target.location} holds ${unreadable.length} manifest(s) this version cannot read (${unreadable.slice(0, 3).join(', ')}): no chunk was deleted, so that their backups stay restorable; verify or remove them, and the next deletion collects`
      ctx.g.emit('io:error', { volumeId: '', volumeName: '', operation: 'write', code: 'CORRUPTION', message: why })
      // Deferred only if a chunk a collection would delete was left (not one the grace period spares).
      collected = { deleted: 0, ...(await anyCollectable(target, referenced, graceMs) ? { deferred: why } : {}) }
    } else {
      collected = await collectChunks(target, referenced, new Set(manifests.map((m) => m.id)), graceMs, (code, message) => {
        ctx.g.emit('io:error', { volumeId: '', volumeName: '', operation: 'write', code, message })
      })
    }
    for (const manifest of deleted) ctx.g.emit('backup:deleted', toBackup(manifest, target))
    // Left for a later deletion: said in the result, not only by the 0.
    return { deletedBackups: deleted.map((m) => m.id), deletedChunks: collected.deleted, collectionDeferred: collected.deferred !== undefined, ...(collected.deferred === undefined ? {} : { deferredReason: collected.deferred }) }
  })
}
