// Garbage collection of a backup target: after deleteBackup removed manifests, the chunks no
// manifest names are deleted, but never those of a backup still being taken (by any process):
// under the collection's own lease (leases.ts), nothing is collected while a backup holds a live
// lease, and manifests stored since the deletion read them are read before anything is deleted.
// Chunks put or reused within the grace period are spared too (for writers of earlier releases,
// which take no lease, and targets that keep none). A collection whose own lease was taken for dead
// meanwhile (this process stopped or suspended for a while) stops before its next deletion: a
// backup that started since saw no live collection, and may rely on the chunks left to delete.
// Whenever unnamed chunks are left for a later deletion, the outcome says why (deleteBackup's
// collectionDeferred and deferredReason), not only a count of 0: only when a chunk it would have
// deleted was left (a chunk the grace period spares is spared by a later deletion too, so a running
// backup that stopped nothing but such chunks defers nothing).

import type { BackupTarget } from '../drivers.js'
import { errorCode } from '../errors.js'
import { decodeManifest } from './format.js'
import { TargetLease, anyLease, leasing, liveBackupLeases, removeAbandoned } from './leases.js'

/** What a collection reports (emitted by the manager as io:error events). */
export type CollectionReport = (code: string, message: string) => void

/** What a collection did: chunks deleted, and why it left unnamed chunks for a later deletion, if it did. */
export interface CollectionOutcome {
  readonly deleted: number
  /** Set when chunks no manifest names may be left (not those spared by the grace period): why. */
  readonly deferred?: string
}

/**
 * Whether `target` holds a chunk that a collection would delete: named by none of `referenced`,
 * and not put or reused within `graceMs` (what a deletion that collects nothing now leaves for a
 * later one; chunks only the grace period spares are not).
 */
export async function anyCollectable (target: BackupTarget, referenced: ReadonlySet<string>, graceMs: number): Promise<boolean> {
  const now = Date.now()
  for await (const chunk of target.listChunks()) {
    if (referenced.has(chunk)) continue
    if (graceMs > 0 && target.chunkTime !== undefined) {
      const time = await target.chunkTime(chunk)
      // Gone meanwhile, or spared by the grace period.
      if (time === undefined || now - time < graceMs) continue
    }
    return true
  }
  return false
}

/**
 * Deletes the chunks on `target` that no manifest names: `referenced` holds the chunks of the
 * manifests the deletion read (their ids in `read`); others stored since are read here. Returns how
 * many were deleted, and `deferred` when it left such a chunk (one outside the grace period) for a
 * later deletion (none is deleted while a backup is being taken on the target: the reason names its
 * lease's holder).
 */
export async function collectChunks (target: BackupTarget, referenced: Set<string>, read: ReadonlySet<string>, graceMs: number, report: CollectionReport): Promise<CollectionOutcome> {
  let lease: TargetLease | undefined
  let leaseless = false
  try {
    lease = await TargetLease.take(target, 'collect')
  } catch (err) {
    // A full target must still be freed: collected without a lease of its own, checking before
    // each deletion that no backup took one meanwhile.
    if (errorCode(err) !== 'NO_SPACE') {
      const why = `could not write the in-progress lease of a garbage collection to backup target ${target.location}, so no chunk was deleted (the next deletion collects them): ${(err as Error).message}`
      report(errorCode(err), why)
      return { deleted: 0, deferred: why }
    }
    leaseless = true
  }
  try {
    // While a backup is being taken on the target, no unnamed chunk is deleted (its chunks are
    // named by no manifest yet); whether one was left that would have been is found out below.
    let busy: string | undefined
    if (leasing(target)) {
      await removeAbandoned(target, lease?.id)
      const running = await liveBackupLeases(target, lease?.id)
      if (running.length > 0) {
        const named = running.slice(0, 3).map((held) => held.holder).join('; ')
        busy = `no unused chunk was deleted from backup target ${target.location}: ${running.length === 1 ? 'a backup is' : `${running.length} backups are`} being taken there (${named}${running.length > 3 ? '; ...' : ''}), whose chunks no manifest names yet; a later deleteBackup on the target collects them once ${running.length === 1 ? 'it has' : 'they have'} finished`
      }
    }
    // Manifests stored since the deletion read them (a backup that ended in between).
    for await (const id of target.listManifests()) {
      if (read.has(id)) continue
      const bytes = await target.getManifest(id)
      if (bytes === undefined) continue
      try {
        for (const [, , chunk] of decodeManifest(id, bytes).extents) if (chunk !== null) referenced.add(chunk)
      } catch (err) {
        // Nothing is deleted while a backup runs anyway: that stays the reason given (as before).
        if (busy !== undefined) return { deleted: 0, deferred: busy }
        const why = `backup target ${target.location} holds manifest ${id}, which this version cannot read (${(err as Error).message}): no chunk was deleted, so that its backup stays restorable; verify or remove it, and the next deletion collects`
        report('CORRUPTION', why)
        return { deleted: 0, deferred: why }
      }
    }
    // File times are wall-clock times (not the injected clock).
    const now = Date.now()
    let deleted = 0
    let deferred: string | undefined
    for await (const chunk of target.listChunks()) {
      if (referenced.has(chunk)) continue
      // Put or reused lately: maybe by a backup of an earlier release, which takes no lease.
      const time = graceMs > 0 ? await target.chunkTime?.(chunk) : undefined
      if (time !== undefined && now - time < graceMs) continue
      // A chunk this collection would delete: left while a backup runs, and said so.
      if (busy !== undefined) {
        deferred = busy
        break
      }
      if (leaseless && leasing(target) && await anyLease(target)) {
        deferred = `the garbage collection on backup target ${target.location} (full, so collecting without a lease of its own) stopped after deleting ${deleted} chunk(s): a backup or deletion took a lease there meanwhile, and may rely on the chunks left; a later deleteBackup collects them`
        break
      }
      if (lease !== undefined && (lease.lost || !await lease.intact())) {
        deferred = `the garbage collection on backup target ${target.location} stopped after deleting ${deleted} chunk(s): its in-progress lease was removed or could not be rewritten (another process took it for abandoned while this one was stopped or suspended?), so a backup started since may rely on the chunks left; the next deleteBackup collects them`
        report('BUSY', deferred)
        break
      }
      await target.deleteChunk(chunk)
      deleted++
    }
    return { deleted, ...(deferred === undefined ? {} : { deferred }) }
  } finally {
    await lease?.end().catch((err: unknown) => {
      report(errorCode(err), `could not remove the in-progress lease ${lease?.id ?? ''} of a garbage collection from backup target ${target.location} (backups in other processes wait for it until they find it abandoned): ${(err as Error).message}`)
    })
  }
}
