// The plain model behind test/backup-model-fuzz.test.ts: volumes with their snapshots, and the
// backups each target must hold, with the image each must restore to. It follows the README's
// "Backups" and "Backup policies" sections, written out again here rather than imported, so that
// the library's own choices (bases, freed snapshots, retention) are checked against the text.

/** A volume: its live image (its length is the volume's size) and its snapshots' images, by name. */
export interface ModelVolume {
  readonly name: string
  readonly id: string
  readonly encrypted: boolean
  data: Uint8Array
  readonly snapshots: Map<string, Uint8Array>
  /** Bumped by each rotateVolumeKey: the volume's backup key changes with it. */
  keyEpoch: number
  /** A clone: the snapshot it reads from, which cannot be deleted while it exists. */
  readonly cloneOf?: { readonly volume: string, readonly snapshot: string }
}

/** A backup the target must list, and what it restores to. */
export interface ModelBackup {
  readonly id: string
  readonly volumeId: string
  readonly volumeName: string
  readonly target: string
  readonly strategy: 'full' | 'incremental' | 'differential'
  readonly requested: 'full' | 'incremental' | 'differential'
  readonly baseId: string | null
  /** The volume as of the backup's snapshot (its length is the size it restores to). */
  readonly image: Uint8Array
  /** Clock time of its creation (ms). */
  readonly createdAt: number
  readonly policy: string | null
  readonly snapshot: string
  readonly encrypted: boolean
  /** The volume's key epoch when it was taken (its backup key). */
  readonly keyEpoch: number
}

export type Strategy = ModelBackup['strategy']

/** Backups oldest first, as a target lists them (by creation time, then id). */
export function ordered (backups: Iterable<ModelBackup>): ModelBackup[] {
  return [...backups].sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id))
}

/** The ids of the backups `backup` builds on, nearest first. */
export function basesOf (backup: ModelBackup, all: ReadonlyMap<string, ModelBackup>): string[] {
  const out: string[] = []
  for (let at = backup.baseId; at !== null; at = all.get(at)?.baseId ?? null) out.push(at)
  return out
}

/**
 * The base a new backup of `volume` on `target` builds on (README: incremental: the volume's last
 * backup there; differential: its last full; only backups whose snapshot still exists count, "if
 * you delete that snapshot yourself, the next incremental builds on an older backup"; after a key
 * rotation "the next one is a full"), and so the strategy it is taken as (a backup with nothing to
 * build on is a full).
 */
export function chooseBase (volume: ModelVolume, target: string, requested: Strategy, backups: ReadonlyMap<string, ModelBackup>): { base: ModelBackup | undefined, strategy: Strategy } {
  const ours = ordered(backups.values()).filter((b) => b.volumeId === volume.id && b.target === target)
  const usable = ours.filter((b) => b.keyEpoch === volume.keyEpoch && volume.snapshots.has(b.snapshot) && basesOf(b, backups).every((id) => backups.has(id)))
  const base = requested === 'incremental' ? usable.at(-1) : requested === 'differential' ? usable.filter((b) => b.strategy === 'full').at(-1) : undefined
  return { base, strategy: base === undefined ? 'full' : requested }
}

/**
 * The snapshots of earlier backups a new backup frees (README: "Backups keep the snapshots later
 * backups need as their base (the newest backup's and the newest full's) and delete older ones").
 */
export function snapshotsFreed (volume: ModelVolume, taken: ModelBackup, backups: ReadonlyMap<string, ModelBackup>): string[] {
  const ours = ordered(backups.values()).filter((b) => b.volumeId === volume.id && b.target === taken.target && b.id !== taken.id)
  const newestFull = taken.strategy === 'full' ? taken : ours.filter((b) => b.strategy === 'full').at(-1)
  return ours.filter((b) => b.id !== newestFull?.id && volume.snapshots.has(b.snapshot)).map((b) => b.snapshot)
}

/** The backups on the same target whose chain of bases goes through `id` (deleteBackup's dependants). */
export function dependantsOf (id: string, backups: ReadonlyMap<string, ModelBackup>): string[] {
  return [...backups.values()].filter((b) => basesOf(b, backups).includes(id)).map((b) => b.id)
}

export interface Retention { daily: number, weekly: number, monthly: number }

/** ISO 8601 week of a UTC date, as 'YYYY-Www' (the week belongs to the year of its Thursday). */
export function isoWeekOf (time: number): string {
  const date = new Date(time)
  const midnight = Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate())
  const weekday = (date.getUTCDay() + 6) % 7 // Monday 0 .. Sunday 6
  const thursday = new Date(midnight + (3 - weekday) * 86_400_000)
  const firstThursdayYear = thursday.getUTCFullYear()
  const jan4 = Date.UTC(firstThursdayYear, 0, 4)
  const jan4Weekday = (new Date(jan4).getUTCDay() + 6) % 7
  const week1Monday = jan4 - jan4Weekday * 86_400_000
  const week = Math.floor((thursday.getTime() - week1Monday) / (7 * 86_400_000)) + 1
  return `${firstThursdayYear}-W${String(week).padStart(2, '0')}`
}

/**
 * README: a policy keeps "the newest backup of each of the last `daily` days, `weekly` ISO weeks
 * and `monthly` months (UTC)": for each kind, walking newest first, the first backup of each new
 * bucket until that many buckets are seen (days without a backup are not counted, as restic does).
 */
export function retainedIds (newestFirst: readonly ModelBackup[], retention: Retention): Set<string> {
  const keep = new Set<string>()
  const kinds: Array<[number, (time: number) => string]> = [
    [retention.daily, (time) => new Date(time).toISOString().slice(0, 10)],
    [retention.weekly, isoWeekOf],
    [retention.monthly, (time) => new Date(time).toISOString().slice(0, 7)]
  ]
  for (const [count, bucketOf] of kinds) {
    const seen = new Set<string>()
    for (const backup of newestFirst) {
      if (seen.size >= count) break
      const bucket = bucketOf(backup.createdAt)
      if (seen.has(bucket)) continue
      seen.add(bucket)
      keep.add(backup.id)
    }
  }
  return keep
}

/**
 * What a policy run prunes of one volume's backups on its target: its own backups that retention
 * does not keep (those the run took are kept), unless a kept backup (or any backup not the
 * policy's) builds on them.
 */
export function prunedBy (policy: string, retention: Retention, volumeId: string, target: string, taken: ReadonlySet<string>, backups: ReadonlyMap<string, ModelBackup>): Set<string> {
  const all = ordered(backups.values()).filter((b) => b.volumeId === volumeId && b.target === target)
  const ours = all.filter((b) => b.policy === policy).reverse()
  const newestFirst = [...ours.filter((b) => taken.has(b.id)), ...ours.filter((b) => !taken.has(b.id))]
  const keep = retainedIds(newestFirst, retention)
  for (const id of taken) keep.add(id)
  const needed = new Set<string>()
  for (const backup of all) {
    if (backup.policy === policy && !keep.has(backup.id)) continue
    for (const base of basesOf(backup, backups)) needed.add(base)
  }
  return new Set(ours.filter((b) => !keep.has(b.id) && !needed.has(b.id)).map((b) => b.id))
}
