// Backup policies: named cron schedules that back volumes up and prune old backups grandfather-
// father-son style. Policies live in the metadata database; a scheduler inside the open instance
// runs them. After a restart (or a long sleep) runs whose time passed are reported as missed and
// one catch-up run is made, never silently skipped.

import { Cron } from 'croner'
import type { AbstractSublevel } from 'abstract-level'
import { GalleonError, describe, errorCode, quoted } from '../errors.js'
import type { GalleonFS } from '../galleonfs.js'
import { BackupStrategy } from '../types.js'
import type { MetadataDatabase } from '../volumes/catalog.js'
import type { Backup, BackupHooks } from './manager.js'
import { compareTaken } from './order.js'

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

type PolicySublevel = AbstractSublevel<MetadataDatabase, any, string, any>
const SYNC = { sync: true } as unknown as Record<string, never>
/** A step back of the clock up to this long is waited out (no slot served before it runs again), as cron does; a longer one rebases the schedule on the clock. */
const SMALL_STEP_BACK_MS = 3 * 3600_000
const NAME = /^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/
const STRATEGIES = new Set<string>(Object.values(BackupStrategy))
const MAX_MISSED = 100
/** Longest the timer waits before it looks at the clock again (a wall-clock step is noticed then). */
const RECHECK_MS = 60_000
/** After a scheduled run failed as a whole (its volumes could not even be listed), the next try waits this long. */
const FAILED_RUN_RETRY_MS = 60_000

export class BackupScheduler {
  readonly #g: GalleonFS
  readonly #db: PolicySublevel
  readonly #clock: Clock
  /** False with a caller's clock: then the caller runs due policies itself (runDue). */
  readonly #timers: boolean
  readonly #policies = new Map<string, BackupPolicy>()
  readonly #hooks = new Map<string, BackupHooks>()
  readonly #running = new Map<string, Promise<BackupPolicyRun[]>>()
  #timer: NodeJS.Timeout | undefined
  #stopped = false
  /** While the timer's run is going, re-arming waits for it (it re-arms when done). */
  #firing = false
  /** Until when (performance.now(): a pause, not a wall time) the timer waits after a failed run: due slots stay due, but are not retried at once. */
  #retryAt = 0

  /** Runs a function outside the caller's context (so timers armed during a call do not inherit it). */
  readonly #detach: <T>(fn: () => T) => T

  constructor (g: GalleonFS, metadata: MetadataDatabase, clock: Clock, timers: boolean, detach: <T>(fn: () => T) => T = (fn) => fn()) {
    this.#g = g
    this.#detach = detach
    this.#db = metadata.sublevel('backupPolicies', { valueEncoding: 'json' }) as PolicySublevel
    this.#clock = clock
    this.#timers = timers
  }

  /** Loads the policies, records runs missed while closed (a catch-up run follows at once), and arms the timer. */
  async start (): Promise<void> {
    for (const [, stored] of await this.#db.iterator().all()) {
      const policy = stored as BackupPolicy
      const now = new Date(this.#clock.now())
      const passed = this.#slots(policy, new Date(policy.lastRunAt ?? policy.createdAt), now)
      const updated: BackupPolicy = { ...policy, missedRuns: [...new Set([...policy.missedRuns, ...passed])].slice(-MAX_MISSED), nextRunAt: this.#next(policy, now) }
      if (passed.length > 0) await this.#db.put(policy.name, updated, SYNC)
      this.#policies.set(policy.name, updated)
    }
    this.#arm()
  }

  stop (): void {
    this.#stopped = true
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    this.#timer = undefined
  }

  /** Waits for runs in progress. */
  async idle (): Promise<void> {
    await Promise.allSettled([...this.#running.values()])
  }

  async create (options: BackupPolicyOptions): Promise<BackupPolicy> {
    const policy = this.#validate(options)
    if (this.#policies.has(policy.name)) throw new GalleonError('POLICY_EXISTS', `a backup policy named ${JSON.stringify(policy.name)} already exists; pick another name or delete it first`)
    if (this.#deleting.has(policy.name)) throw new GalleonError('BUSY', `backup policy ${JSON.stringify(policy.name)} is being deleted; create it again once deleteBackupPolicy has returned`)
    await this.#db.put(policy.name, policy, SYNC)
    this.#policies.set(policy.name, policy)
    if (options.hooks !== undefined) this.#hooks.set(policy.name, checkHooks(options.hooks))
    this.#arm()
    return policy
  }

  list (): BackupPolicy[] {
    return [...this.#policies.values()].sort((a, b) => a.name.localeCompare(b.name))
  }

  get (name: string): BackupPolicy {
    const policy = typeof name === 'string' ? this.#policies.get(name) : undefined
    if (policy === undefined) throw new GalleonError('POLICY_NOT_FOUND', `no backup policy ${describe(name)}; listBackupPolicies() shows them`)
    return policy
  }

  async delete (name: string): Promise<void> {
    const policy = this.get(name)
    // Gone from the scheduler first: no run starts from here on, and a run under way stops taking
    // backups; once this resolves, the policy takes none.
    // Its name stays taken until the deletion is done (a policy made again under it meanwhile
    // would be erased from disk by this deletion).
    if (this.#deleting.has(name)) throw new GalleonError('BUSY', `backup policy ${JSON.stringify(name)} is already being deleted`)
    this.#deleting.add(name)
    this.#policies.delete(name)
    try {
      await this.#running.get(name)?.catch(() => {})
      await this.#db.del(name, SYNC)
    } catch (err) {
      this.#policies.set(name, policy)
      throw err
    } finally {
      this.#deleting.delete(name)
      this.#arm()
    }
    this.#hooks.delete(name)
  }

  /** Names of the policies a deleteBackupPolicy call is removing now. */
  readonly #deleting = new Set<string>()

  setHooks (name: string, hooks: BackupHooks | undefined): void {
    this.get(name)
    if (hooks === undefined) this.#hooks.delete(name)
    else this.#hooks.set(name, checkHooks(hooks))
  }

  /** Runs every policy whose next run time has come (what the timer calls). */
  async runDue (): Promise<BackupPolicyRun[]> {
    const due = this.list().filter((policy) => this.#due(policy.name))
    const runs: BackupPolicyRun[] = []
    for (const policy of due) runs.push(...await this.run(policy.name, true))
    return runs
  }

  #due (name: string): boolean {
    const policy = this.#rebased(name)
    if (policy === undefined) return false
    return policy.missedRuns.length > 0 || (policy.nextRunAt !== null && Date.parse(policy.nextRunAt) <= this.#clock.now())
  }

  /**
   * The policy, rebased on the clock when the clock stepped back past its run record (its next run
   * lies beyond the schedule's second slot from now): the schedule goes on from the clock's time, as
   * cron does after a large step back, instead of waiting for the clock to catch up with the old
   * record (for as long as the step, taking no backup). Kept in memory; the next run stores it.
   */
  #rebased (name: string): BackupPolicy | undefined {
    const policy = this.#policies.get(name)
    if (policy === undefined || policy.nextRunAt === null) return policy
    const now = new Date(this.#clock.now())
    const next = this.#next(policy, now)
    if (next === null || Date.parse(policy.nextRunAt) <= Date.parse(next)) return policy
    // A small step back (NTP's seconds; the recorded next run is still the slot after next): the
    // slots the clock passes again were served, and the recorded run comes the step late, as cron
    // does for small steps. Rebasing on it ran the slot before at once and a served slot again.
    // Small in time too (cron's bound: 3 hours): counted in slots alone, a sparse schedule took a
    // step of days for a small one (a weekday policy stepped back 3 days waited 4 days for its next
    // backup). A record still within the step bound's reach was made at most that long ago.
    const afterNext = this.#next(policy, new Date(next))
    const withinStep = this.#next(policy, new Date(now.getTime() + SMALL_STEP_BACK_MS))
    if (afterNext === null || withinStep === null || Date.parse(policy.nextRunAt) <= Math.min(Date.parse(afterNext), Date.parse(withinStep))) return policy
    const cron = new Cron(policy.schedule, { paused: true, timezone: policy.timezone })
    // The slot that passed last is made now (an extra backup rather than one skipped): the run
    // record starts from the slot before it.
    const [latest, before] = cron.previousRuns(2, new Date(now.getTime() + 1))
    const rebased: BackupPolicy = { ...policy, lastRunAt: before?.toISOString() ?? null, nextRunAt: latest?.toISOString() ?? next, missedRuns: policy.missedRuns.filter((at) => Date.parse(at) <= now.getTime()) }
    this.#policies.set(name, rebased)
    return rebased
  }

  /**
   * Runs a policy now: backs up each of its volumes, then prunes by retention. `scheduled`: this
   * run stands for the slot that came due (and any missed ones), which it marks as done.
   */
  async run (name: string, scheduled = false): Promise<BackupPolicyRun[]> {
    this.get(name)
    const previous = this.#running.get(name)
    const task = (async (): Promise<BackupPolicyRun[]> => {
      await previous?.catch(() => {})
      // A scheduled run queued behind another may find its slot already served.
      if (scheduled && !this.#due(name)) return []
      return [await this.#runOnce(name, scheduled)]
    })()
    this.#running.set(name, task)
    try {
      return await task
    } finally {
      if (this.#running.get(name) === task) this.#running.delete(name)
    }
  }

  async #runOnce (name: string, scheduled: boolean): Promise<BackupPolicyRun> {
    const policy = this.get(name)
    const now = new Date(this.#clock.now())
    let scheduledAt = now.toISOString()
    if (scheduled) {
      // This run stands for the latest slot that came due; earlier ones since the last run were missed.
      const slots = [...new Set([...policy.missedRuns, ...this.#slots(policy, new Date(policy.lastRunAt ?? policy.createdAt), now)])].sort()
      scheduledAt = slots.at(-1) ?? scheduledAt
      const skipped = slots.slice(0, -1)
      if (skipped.length > 0) this.#g.emit('backup-policy:missed', { policy: name, missed: skipped })
    }
    let volumes: string[]
    let missing: string[]
    try {
      ({ volumes, missing } = await this.#volumesOf(policy))
    } catch (err) {
      // The instance is closing: nothing ran, so nothing is recorded (the next open makes it up).
      if (err instanceof GalleonError && err.code === 'NOT_OPEN') return { policy: name, scheduledAt, backups: [], pruned: [], collectionDeferred: false, errors: [{ volume: '*', message: err.message }] }
      throw err
    }
    const backups: Backup[] = []
    // A volume the policy names that is gone is a backup not taken: never a quiet success.
    const errors: Array<{ volume: string, message: string }> = missing.map((ref) => ({
      volume: ref,
      message: `VOLUME_NOT_FOUND: backup policy ${name} names volume ${JSON.stringify(ref)}, which does not exist (deleted or renamed?), so it was not backed up; create it, or replace the policy (deleteBackupPolicy, createBackupPolicy) with the volumes to back up`
    }))
    const interruptedBy: unknown[] = []
    const target = policy.target ?? undefined
    // Deleted while this run goes on: it takes no more backups and prunes nothing.
    const deleted = (): boolean => !this.#policies.has(name)
    for (const volume of volumes) {
      if (deleted()) break
      try {
        let strategy = policy.strategy
        if (strategy !== BackupStrategy.Full) {
          // A policy's first backup of a volume is a full; later ones build on the volume's newest
          // backup on the target (or newest full), whichever policy took it, so the chain counted
          // is that one, not the policy's own backups (which its retention may have thinned).
          const all = await this.#listBackups(volume, target)
          if (!all.some((backup) => backup.policy === name) || chainLength(all, strategy) >= policy.fullEvery) strategy = BackupStrategy.Full
        }
        backups.push(await this.#g.createBackup(volume, { strategy, target, hooks: this.#hooks.get(name), policy: name }))
      } catch (err) {
        if (err instanceof GalleonError && err.code === 'NOT_OPEN') interruptedBy.push(err)
        errors.push({ volume, message: err instanceof Error ? err.message : String(err) })
      }
    }
    const pruned: string[] = []
    const deferred = new Set<string>()
    for (const volume of interruptedBy.length > 0 ? [] : volumes) {
      if (deleted()) break
      try {
        pruned.push(...await this.#prune(policy, volume, now, new Set(backups.map((backup) => backup.id)), deferred))
      } catch (err) {
        errors.push({ volume, message: `pruning: ${err instanceof Error ? err.message : String(err)}` })
      }
    }
    // Cut short by close(): not done and not recorded, so the next open reports it as missed and makes it up.
    const interrupted = this.#stopped || interruptedBy.length > 0
    const done = scheduled && !interrupted
    const current = this.#policies.get(name)
    if (current !== undefined && !interrupted) {
      const updated: BackupPolicy = {
        ...current,
        lastRunAt: done ? scheduledAt : current.lastRunAt,
        nextRunAt: this.#next(current, now),
        missedRuns: done ? [] : current.missedRuns,
        lastResult: { at: now.toISOString(), backups: backups.length, pruned: pruned.length, errors: errors.map((e) => `${e.volume}: ${e.message}`), collectionDeferred: deferred.size > 0, ...(deferred.size === 0 ? {} : { deferredReasons: [...deferred] }) }
      }
      await this.#db.put(name, updated, SYNC)
      // Deleted (or changed) while the result was stored: the deletion removes it from disk too.
      if (this.#policies.get(name) === current) this.#policies.set(name, updated)
    }
    const run: BackupPolicyRun = { policy: name, scheduledAt, backups, pruned, collectionDeferred: deferred.size > 0, ...(deferred.size === 0 ? {} : { deferredReasons: [...deferred] }), errors }
    this.#g.emit('backup-policy:ran', run)
    this.#arm()
    return run
  }

  /**
   * The backups of `volume` on the policy's target. A directory that is no backup target yet (the
   * policy's first backup to it was not taken) holds none: listing it by path is refused
   * (BACKUP_NOT_FOUND), and the policy's backup makes it one.
   */
  async #listBackups (volume: string, target: string | undefined): Promise<Backup[]> {
    try {
      return await this.#g.listBackups(volume, { target })
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
  async #prune (policy: BackupPolicy, volume: string, now: Date, taken: ReadonlySet<string>, deferred: Set<string>): Promise<string[]> {
    const target = policy.target ?? undefined
    const all = await this.#listBackups(volume, target)
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
      const result = await this.#g.deleteBackup(backup.id, { target })
      if (result.deferredReason !== undefined) deferred.add(result.deferredReason)
      pruned.push(backup.id)
    }
    return pruned
  }

  /** The ids of the volumes a policy backs up, and the names it lists that match no volume. */
  async #volumesOf (policy: BackupPolicy): Promise<{ volumes: string[], missing: string[] }> {
    const all = await this.#g.listVolumes()
    const chosen = new Set<string>()
    const missing: string[] = []
    for (const ref of policy.volumes) {
      // By id, by namespace/name, or by a bare name in the default namespace.
      const found = all.find((volume) => volume.id === ref || `${volume.namespace}/${volume.name}` === ref || (volume.namespace === 'default' && volume.name === ref))
      if (found !== undefined) chosen.add(found.id)
      else missing.push(ref)
    }
    const selector = Object.entries(policy.labels)
    if (selector.length > 0) {
      for (const volume of all) if (selector.every(([key, value]) => volume.labels[key] === value)) chosen.add(volume.id)
    }
    return { volumes: [...chosen], missing }
  }

  #validate (options: BackupPolicyOptions): BackupPolicy {
    if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `a backup policy is an object such as { name, schedule: '0 2 * * *', strategy: 'incremental', retention: { daily: 7 }, volumes: ['db'] }, got ${describe(options)}`)
    const known = new Set(['name', 'schedule', 'timezone', 'strategy', 'fullEvery', 'retention', 'volumes', 'labels', 'target', 'hooks'])
    for (const key of Object.keys(options)) if (!known.has(key)) throw new GalleonError('INVALID_ARGUMENT', `unknown backup policy field ${quoted(key)}; allowed: ${[...known].join(', ')}`)
    if (typeof options.name !== 'string' || !NAME.test(options.name)) throw new GalleonError('INVALID_ARGUMENT', `backup policy name must be 1-63 letters, digits, '-', '_' or '.', got ${describe(options.name)}`)
    const timezone = options.timezone ?? 'UTC'
    if (typeof options.schedule !== 'string') throw new GalleonError('INVALID_ARGUMENT', `schedule must be a cron expression such as '0 2 * * *', got ${describe(options.schedule)}`)
    try {
      new Cron(options.schedule, { paused: true, timezone }).nextRun()
    } catch (err) {
      throw new GalleonError('INVALID_ARGUMENT', `schedule ${JSON.stringify(options.schedule)}${timezone === 'UTC' ? '' : ` in ${timezone}`} is not a valid cron expression (${(err as Error).message}); for example '0 2 * * *' runs at 02:00 every day`)
    }
    const strategy = options.strategy ?? BackupStrategy.Incremental
    if (!STRATEGIES.has(strategy)) throw new GalleonError('INVALID_ARGUMENT', `strategy must be one of ${[...STRATEGIES].join(', ')}, got ${describe(strategy)}`)
    const fullEvery = options.fullEvery ?? 7
    if (!Number.isSafeInteger(fullEvery) || fullEvery < 1 || fullEvery > 1000) throw new GalleonError('INVALID_ARGUMENT', `fullEvery must be a whole number from 1 to 1000, got ${describe(fullEvery)}`)
    const retention = options.retention ?? {}
    if (retention === null || typeof retention !== 'object') throw new GalleonError('INVALID_ARGUMENT', `retention must be an object such as { daily: 7, weekly: 4, monthly: 3 }, got ${describe(retention)}`)
    for (const key of Object.keys(retention)) if (!['daily', 'weekly', 'monthly'].includes(key)) throw new GalleonError('INVALID_ARGUMENT', `unknown retention field ${quoted(key)}; allowed: daily, weekly, monthly`)
    const counts = { daily: retention.daily ?? 0, weekly: retention.weekly ?? 0, monthly: retention.monthly ?? 0 }
    for (const [key, value] of Object.entries(counts)) {
      if (!Number.isSafeInteger(value) || value < 0 || value > 10000) throw new GalleonError('INVALID_ARGUMENT', `retention.${key} must be a whole number from 0 to 10000, got ${describe(value)}`)
    }
    if (counts.daily + counts.weekly + counts.monthly === 0) {
      throw new GalleonError('INVALID_ARGUMENT', 'retention keeps nothing: give at least one of daily, weekly, monthly (every backup but the ones kept is deleted after each run)')
    }
    const volumes = options.volumes ?? []
    if (!Array.isArray(volumes) || !volumes.every((v) => typeof v === 'string' && v.length > 0)) throw new GalleonError('INVALID_ARGUMENT', `volumes must be a list of volume names or ids, got ${describe(volumes)}`)
    const labels = options.labels ?? {}
    if (labels === null || typeof labels !== 'object' || Array.isArray(labels) || !Object.values(labels).every((v) => typeof v === 'string')) {
      throw new GalleonError('INVALID_ARGUMENT', `labels must be an object of string values, got ${describe(labels)}`)
    }
    if (volumes.length === 0 && Object.keys(labels).length === 0) throw new GalleonError('INVALID_ARGUMENT', 'a backup policy needs volumes (names or ids) or labels that select volumes')
    if (options.target !== undefined && (typeof options.target !== 'string' || options.target.length === 0)) {
      throw new GalleonError('INVALID_ARGUMENT', `a policy's target is a directory path (a stored policy cannot hold a driver object), got ${describe(options.target)}`)
    }
    const now = new Date(this.#clock.now())
    const policy: BackupPolicy = {
      name: options.name,
      schedule: options.schedule,
      timezone,
      strategy: strategy as BackupStrategy,
      fullEvery,
      retention: counts,
      volumes: [...volumes],
      labels: { ...labels },
      target: options.target ?? null,
      createdAt: now.toISOString(),
      lastRunAt: null,
      nextRunAt: null,
      missedRuns: [],
      lastResult: null
    }
    return { ...policy, nextRunAt: this.#next(policy, now) }
  }

  /** Next run strictly after `after`. */
  #next (policy: Pick<BackupPolicy, 'schedule' | 'timezone'>, after: Date): string | null {
    return new Cron(policy.schedule, { paused: true, timezone: policy.timezone }).nextRun(after)?.toISOString() ?? null
  }

  /** The last MAX_MISSED scheduled times in (from, to], oldest first. */
  #slots (policy: BackupPolicy, from: Date, to: Date): string[] {
    const cron = new Cron(policy.schedule, { paused: true, timezone: policy.timezone })
    // Counted back from `to`: a frequent schedule closed for weeks has millions of slots in between,
    // and stepping through them from `from` held the event loop for tens of seconds.
    return cron.previousRuns(MAX_MISSED, new Date(to.getTime() + 1))
      .filter((at) => at.getTime() > from.getTime())
      .map((at) => at.toISOString())
      .sort()
  }

  /** Sets one timer for the soonest due policy (missed runs are due at once). */
  #arm (): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    this.#timer = undefined
    if (this.#stopped || !this.#timers || this.#firing) return
    let soonest = Number.POSITIVE_INFINITY
    for (const name of [...this.#policies.keys()]) {
      const policy = this.#rebased(name) as BackupPolicy
      if (policy.missedRuns.length > 0) soonest = Math.min(soonest, this.#clock.now())
      if (policy.nextRunAt !== null) soonest = Math.min(soonest, Date.parse(policy.nextRunAt))
    }
    if (!Number.isFinite(soonest)) return
    // A run that failed as a whole left its slot due: retried after a pause, not in a tight loop.
    // Re-checked at least every RECHECK_MS: a wall clock stepped meanwhile is noticed then.
    const delay = Math.min(Math.max(0, soonest - this.#clock.now(), this.#retryAt - performance.now()), RECHECK_MS)
    this.#timer = this.#detach(() => setTimeout(() => {
      this.#timer = undefined
      void this.#fire()
    }, delay))
    this.#timer.unref()
  }

  async #fire (): Promise<void> {
    this.#firing = true
    try {
      // Catch-up runs for policies that missed runs while closed, and whatever is due now.
      if (!this.#stopped) await this.runDue()
      this.#retryAt = 0
    } catch (err) {
      this.#retryAt = performance.now() + FAILED_RUN_RETRY_MS
      this.#g.emit('io:error', { volumeId: '', volumeName: '', operation: 'write', code: errorCode(err), message: `backup scheduler: ${(err as Error).message}; tried again in ${FAILED_RUN_RETRY_MS / 1000} s` })
    } finally {
      this.#firing = false
      this.#arm()
    }
  }
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

function checkHooks (hooks: BackupHooks): BackupHooks {
  if (hooks === null || typeof hooks !== 'object' || (hooks.pre !== undefined && typeof hooks.pre !== 'function') || (hooks.post !== undefined && typeof hooks.post !== 'function')) {
    throw new GalleonError('INVALID_ARGUMENT', `hooks must be { pre?: function, post?: function }, got ${describe(hooks)}`)
  }
  return hooks
}

/**
 * How long the chain is that the next backup of `strategy` would extend: for an incremental, the
 * newest backup and the bases below it; for a differential, the newest full and the differentials
 * taken on it.
 */
function chainLength (backups: readonly Backup[], strategy: BackupStrategy): number {
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
