// Backup policies: named cron schedules that back volumes up and prune old backups grandfather-
// father-son style. Policies live in the metadata database; a scheduler inside the open instance
// runs them. After a restart (or a long sleep) runs whose time passed are reported as missed and
// one catch-up run is made, never silently skipped.

import type { AbstractSublevel } from 'abstract-level'
import { GalleonError, describe, errorCode } from '../errors.js'
import type { GalleonFS } from '../galleonfs.js'
import { BackupStrategy } from '../types.js'
import type { MetadataDatabase } from '../volumes/catalog.js'
import type { Backup, BackupHooks } from './manager.js'
import type { BackupPolicy, BackupPolicyOptions, BackupPolicyRun, Clock } from './policy-types.js'
import { chainLength, listTargetBackups, pruneByRetention } from './policy-retention.js'
import { MAX_MISSED, nextRun, rebaseOnClock, scheduledSlots } from './policy-schedule.js'
import { checkHooks, validatePolicy } from './policy-validation.js'

export type { BackupPolicy, BackupPolicyOptions, BackupPolicyRun, BackupRetention, Clock } from './policy-types.js'
export { retained } from './policy-retention.js'

type PolicySublevel = AbstractSublevel<MetadataDatabase, any, string, any>
const SYNC = { sync: true } as unknown as Record<string, never>
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
      const passed = scheduledSlots(policy, new Date(policy.lastRunAt ?? policy.createdAt), now)
      const updated: BackupPolicy = { ...policy, missedRuns: [...new Set([...policy.missedRuns, ...passed])].slice(-MAX_MISSED), nextRunAt: nextRun(policy, now) }
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
    const policy = validatePolicy(options, this.#clock)
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
   * The policy, rebased on the clock when the clock stepped back past its run record (see
   * rebaseOnClock). Kept in memory; the next run stores it.
   */
  #rebased (name: string): BackupPolicy | undefined {
    const policy = this.#policies.get(name)
    if (policy === undefined) return policy
    const rebased = rebaseOnClock(policy, this.#clock)
    if (rebased !== policy) this.#policies.set(name, rebased)
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
      const slots = [...new Set([...policy.missedRuns, ...scheduledSlots(policy, new Date(policy.lastRunAt ?? policy.createdAt), now)])].sort()
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
          const all = await listTargetBackups(this.#g, volume, target)
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
        pruned.push(...await pruneByRetention(this.#g, policy, volume, now, new Set(backups.map((backup) => backup.id)), deferred))
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
        nextRunAt: nextRun(current, now),
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
