// Backup policy retention: which of a policy's backups grandfather-father-son retention keeps, the
// pruning of the rest, and the chain length that decides when a policy takes a full again.

import { GalleonError } from '../errors.js'
import type { GalleonFS } from '../galleonfs.js'
import { BackupStrategy } from '../types.js'
import type { Backup } from './manager.js'
import { compareTaken } from './order.js'
import type { BackupPolicy, BackupRetention } from './policy-types.js'

/**
 * The backups of `volume` on a policy's target. A directory that is no backup target yet (the
 * policy's first backup to it was not taken) holds none: listing it by path is refused
 * (BACKUP_NOT_FOUND), and the policy's backup makes it one.
 */
export async function listTargetBackups (g: GalleonFS, volume: string, target: string | undefined): Promise<Backup[]> {
  try {
    return await g.listBackups(volume, { target })
  } catch (err) {
    if (err instanceof GalleonError && err.code === 'BACKUP_NOT_FOUND') return []
    throw err
  }
}

/**
 * Deletes this policy's backups of a volume that the retention does not keep (and no kept backup
 * builds on). The backups this run took (`taken`) count as the newest, whatever their numbers say
 * (two instances taking backups at once), and are always kept.
 */
export async function pruneByRetention (g: GalleonFS, policy: BackupPolicy, volume: string, now: Date, taken: ReadonlySet<string>, deferred: Set<string>): Promise<string[]> {
  const target = policy.target ?? undefined
  const all = await listTargetBackups(g, volume, target)
  const rank = (backup: Backup): number => taken.has(backup.id) ? 1 : 0
  // Newest first in the order they were taken (their sequence: a clock stepped back dates newer
  // backups earlier), so each bucket keeps the one taken last; the buckets are their dates.
  const ours = all.filter((backup) => backup.policy === policy.name).sort((a, b) => rank(b) - rank(a) || compareTaken(b, a))
  const keep = retained(ours, policy.retention, now)
  for (const id of taken) keep.add(id)
  const byId = new Map(all.map((backup) => [backup.id, backup]))
  const needed = new Set<string>()
  for (const backup of all) {
    if (backup.policy === policy.name && !keep.has(backup.id)) continue
    // Bounded: a chain altered on the target into a loop must not hang the run.
    for (let base = backup.baseId, steps = 0; base !== null && steps <= byId.size; base = byId.get(base)?.baseId ?? null, steps++) needed.add(base)
  }
  // Later links of a chain go first, whatever their times say (a clock that stepped back): a base
  // is refused (BUSY) while a backup built on it is still there.
  const depth = (backup: Backup): number => {
    let steps = 0
    for (let base = backup.baseId; base !== null && steps <= byId.size; base = byId.get(base)?.baseId ?? null) steps++
    return steps
  }
  const doomed = ours.filter((backup) => !keep.has(backup.id) && !needed.has(backup.id)).sort((a, b) => depth(b) - depth(a))
  const pruned: string[] = []
  for (const backup of doomed) {
    const result = await g.deleteBackup(backup.id, { target })
    if (result.deferredReason !== undefined) deferred.add(result.deferredReason)
    pruned.push(backup.id)
  }
  return pruned
}

/**
 * Ids of the backups GFS retention keeps: the newest of each of the last N days, ISO weeks and
 * months (UTC). `newestFirst` is in the order they were taken (see order.ts), newest first: the
 * first of each bucket met is kept, and the buckets are counted in the order they are met; a
 * backup's bucket is its date.
 */
export function retained (newestFirst: readonly Backup[], retention: Required<BackupRetention>, _now: Date): Set<string> {
  const keep = new Set<string>()
  const buckets: Array<[number, (date: Date) => string]> = [
    [retention.daily, (date) => date.toISOString().slice(0, 10)],
    [retention.weekly, isoWeek],
    [retention.monthly, (date) => date.toISOString().slice(0, 7)]
  ]
  for (const [count, bucketOf] of buckets) {
    if (count === 0) continue
    const seen = new Set<string>()
    for (const backup of newestFirst) {
      const bucket = bucketOf(new Date(backup.createdAt))
      if (seen.has(bucket)) continue
      seen.add(bucket)
      keep.add(backup.id)
      if (seen.size >= count) break
    }
  }
  return keep
}

function isoWeek (date: Date): string {
  const day = new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate()))
  const weekday = day.getUTCDay() === 0 ? 7 : day.getUTCDay()
  day.setUTCDate(day.getUTCDate() + 4 - weekday)
  const yearStart = Date.UTC(day.getUTCFullYear(), 0, 1)
  const week = Math.ceil(((day.getTime() - yearStart) / 86_400_000 + 1) / 7)
  return `${day.getUTCFullYear()}-W${String(week).padStart(2, '0')}`
}

/**
 * How long the chain is that the next backup of `strategy` would extend: for an incremental, the
 * newest backup and the bases below it; for a differential, the newest full and the differentials
 * taken on it.
 */
export function chainLength (backups: readonly Backup[], strategy: BackupStrategy): number {
  // In the order they were taken, not by date (a clock stepped back dates newer backups earlier).
  const newestFirst = [...backups].sort((a, b) => compareTaken(b, a))
  if (strategy === BackupStrategy.Differential) {
    const full = newestFirst.find((backup) => backup.strategy === BackupStrategy.Full)
    return full === undefined ? 0 : 1 + backups.filter((backup) => backup.baseId === full.id && backup.strategy === BackupStrategy.Differential).length
  }
  const byId = new Map(backups.map((backup) => [backup.id, backup]))
  let length = 0
  for (let at = newestFirst[0]; at !== undefined && length <= backups.length; at = at.baseId === null ? undefined : byId.get(at.baseId)) length++
  return length
}
