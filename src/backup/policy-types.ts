// Backup policy records: what a caller gives createBackupPolicy, what is stored with its run
// record, what one run reports, and the clock the scheduler reads.

import type { BackupStrategy } from '../types.js'
import type { Backup, BackupHooks } from './manager.js'

/** How many backups to keep per day, ISO week and month (UTC): the newest of each of the last N. */
export interface BackupRetention {
  readonly daily?: number
  readonly weekly?: number
  readonly monthly?: number
}

/** A policy as given to `createBackupPolicy`. */
export interface BackupPolicyOptions {
  /** Unique name. */
  readonly name: string
  /** Cron expression (5 fields, or 6 with seconds first), in UTC unless `timezone` is given. */
  readonly schedule: string
  /** IANA time zone of the schedule, e.g. `Europe/Berlin` (default UTC). */
  readonly timezone?: string
  readonly strategy?: BackupStrategy | `${BackupStrategy}`
  /**
   * With `incremental` or `differential`: take a full instead once a volume's chain since its last
   * full holds this many backups (default 7), so that retention can drop whole old chains.
   */
  readonly fullEvery?: number
  readonly retention?: BackupRetention
  /** Volumes it backs up, by name or id... */
  readonly volumes?: readonly string[]
  /** ...and/or every volume carrying all of these labels. */
  readonly labels?: Readonly<Record<string, string>>
  /** Directory of the backups (default: the instance's `backupTarget`, which must then be a path). */
  readonly target?: string
  /** Hooks run around each backup. Functions are not stored: after a restart, set them again with `setBackupPolicyHooks`. */
  readonly hooks?: BackupHooks
}

/** A stored policy with its run record. */
export interface BackupPolicy {
  readonly name: string
  readonly schedule: string
  readonly timezone: string
  readonly strategy: BackupStrategy
  readonly fullEvery: number
  readonly retention: Required<BackupRetention>
  readonly volumes: readonly string[]
  readonly labels: Readonly<Record<string, string>>
  readonly target: string | null
  readonly createdAt: string
  /** Scheduled time of the last run made (ISO), null before the first. */
  readonly lastRunAt: string | null
  /** When it runs next (ISO), null if the schedule never fires again. */
  readonly nextRunAt: string | null
  /** Scheduled times that passed while the instance was not running (the most recent 100), oldest first. */
  readonly missedRuns: readonly string[]
  /**
   * Outcome of the last run; `collectionDeferred` and `deferredReasons` as in BackupPolicyRun (a
   * scheduled run's pruning that left unused chunks for later says so here too; absent in results
   * stored by releases before them).
   */
  readonly lastResult: { readonly at: string, readonly backups: number, readonly pruned: number, readonly errors: readonly string[], readonly collectionDeferred?: boolean, readonly deferredReasons?: readonly string[] } | null
}

/** Result of one run of a policy. */
export interface BackupPolicyRun {
  readonly policy: string
  readonly scheduledAt: string
  readonly backups: readonly Backup[]
  readonly pruned: readonly string[]
  /**
   * True when a deletion of this run's pruning left chunks no backup uses for a later deletion to
   * collect (a backup was being taken on the target meanwhile, say; see deleteBackup's result).
   */
  readonly collectionDeferred: boolean
  /** Why, when `collectionDeferred` (each reason once). */
  readonly deferredReasons?: readonly string[]
  readonly errors: ReadonlyArray<{ readonly volume: string, readonly message: string }>
}

/** What the scheduler reads the time from (replaceable in tests). */
export interface Clock {
  now: () => number
}
