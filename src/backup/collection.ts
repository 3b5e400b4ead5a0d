// Garbage collection of a backup target: after deleteBackup removed manifests, the chunks no
// manifest names are deleted, but never those of a backup still being taken (by any process):
// under the collection's own lease (leases.ts), nothing is collected while a backup holds a live
// lease, and manifests stored since the deletion read them are read before anything is deleted.
// Chunks put or reused within the grace period are spared too (for writers of earlier releases,
// which take no lease, and targets that keep none). A collection whose own lease was taken for dead
// meanwhile (this process stopped or suspended for a while) stops before its next deletion: a
// backup that started since saw no live collection, and may rely on the chunks left to delete.

import type { BackupTarget } from '../drivers.js'
import { errorCode } from '../errors.js'
import { decodeManifest } from './format.js'
import { TargetLease, anyLease, leasing, liveBackupLeases, removeAbandoned } from './leases.js'

/** What a collection reports (emitted by the manager as io:error events). */
export type CollectionReport = (code: string, message: string) => void

/**
 * Deletes the chunks on `target` that no manifest names: `referenced` holds the chunks of the
 * manifests the deletion read (their ids in `read`); others stored since are read here. Returns how
 * many were deleted (0 while a backup is being taken on the target: a later deletion collects).
 */
export async function collectChunks (target: BackupTarget, referenced: Set<string>, read: ReadonlySet<string>, graceMs: number, report: CollectionReport): Promise<number> {
  let lease: TargetLease | undefined
  let leaseless = false
  try {
    lease = await TargetLease.take(target, 'collect')
  } catch (err) {
    // A full target must still be freed: collected without a lease of its own, checking before
    // each deletion that no backup took one meanwhile.
    if (errorCode(err) !== 'NO_SPACE') {
      report(errorCode(err), `could not write the in-progress lease of a garbage collection to backup target ${target.location}, so no chunk was deleted (the next deletion collects them): ${(err as Error).message}`)
      return 0
    }
    leaseless = true
  }
  try {
    if (leasing(target)) {
      await removeAbandoned(target, lease?.id)
      if ((await liveBackupLeases(target, lease?.id)).length > 0) return 0
    }
    // Manifests stored since the deletion read them (a backup that ended in between).
    for await (const id of target.listManifests()) {
      if (read.has(id)) continue
      const bytes = await target.getManifest(id)
      if (bytes === undefined) continue
      try {
        for (const [, , chunk] of decodeManifest(id, bytes).extents) if (chunk !== null) referenced.add(chunk)
      } catch (err) {
        report('CORRUPTION', `backup target ${target.location} holds manifest ${id}, which this version cannot read (${(err as Error).message}): no chunk was deleted, so that its backup stays restorable; verify or remove it, and the next deletion collects`)
        return 0
      }
    }
    // File times are wall-clock times (not the injected clock).
    const now = Date.now()
    let deleted = 0
    for await (const chunk of target.listChunks()) {
      if (referenced.has(chunk)) continue
      // Put or reused lately: maybe by a backup of an earlier release, which takes no lease.
      const time = graceMs > 0 ? await target.chunkTime?.(chunk) : undefined
      if (time !== undefined && now - time < graceMs) continue
      if (leaseless && leasing(target) && await anyLease(target)) break
      if (lease !== undefined && (lease.lost || !await lease.intact())) {
        report('BUSY', `the garbage collection on backup target ${target.location} stopped after deleting ${deleted} chunk(s): its in-progress lease was removed or could not be rewritten (another process took it for abandoned while this one was stopped or suspended?), so a backup started since may rely on the chunks left; the next deleteBackup collects them`)
        break
      }
      await target.deleteChunk(chunk)
      deleted++
    }
    return deleted
  } finally {
    await lease?.end().catch((err: unknown) => {
      report(errorCode(err), `could not remove the in-progress lease ${lease?.id ?? ''} of a garbage collection from backup target ${target.location} (backups in other processes wait for it until they find it abandoned): ${(err as Error).message}`)
    })
  }
}
