// Backup policy validation: turns the options given to createBackupPolicy into a stored policy
// record, and checks the hooks run around its backups.

import { Cron } from 'croner'
import { GalleonError, describe, quoted } from '../errors.js'
import { BackupStrategy } from '../types.js'
import type { BackupHooks } from './manager.js'
import type { BackupPolicy, BackupPolicyOptions, Clock } from './policy-types.js'
import { nextRun } from './policy-schedule.js'

const NAME = /^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/
const STRATEGIES = new Set<string>(Object.values(BackupStrategy))

/** The policy record for `options` (created now by `clock`, not run yet); INVALID_ARGUMENT naming the field if they are wrong. */
export function validatePolicy (options: BackupPolicyOptions, clock: Clock): BackupPolicy {
  if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `a backup policy is an object such as { name, schedule: '0 2 * * *', strategy: 'incremental', retention: { daily: 7 }, volumes: ['db'] }, got ${describe(options)}`)
  const known = new Set(['name', 'schedule', 'timezone', 'strategy', 'fullEvery', 'retention', 'volumes', 'labels', 'target', 'hooks'])
  for (const key of Object.keys(options)) if (!known.has(key)) throw new GalleonError('INVALID_ARGUMENT', `unknown backup policy field ${quoted(key)}; allowed: ${[...known].join(', ')}`)
  if (typeof options.name !== 'string' || !NAME.test(options.name)) throw new GalleonError('INVALID_ARGUMENT', `backup policy name must be 1-63 letters, digits, '-', '_' or '.', got ${describe(options.name)}`)
  // A zone name only: croner reads a number as a UTC offset in minutes and an empty string as the
  // machine's local zone, neither of which the stored policy would say.
  if (options.timezone !== undefined && options.timezone !== null && (typeof options.timezone !== 'string' || options.timezone.length === 0)) {
    throw new GalleonError('INVALID_ARGUMENT', `timezone must be an IANA time zone name such as 'Europe/Berlin' (or left out for UTC), got ${describe(options.timezone)}`)
  }
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
  const now = new Date(clock.now())
  // A schedule whose time never comes (April 31st, a year gone by) would be stored and never run.
  if (nextRun({ schedule: options.schedule, timezone }, now) === null) {
    throw new GalleonError('INVALID_ARGUMENT', `schedule ${JSON.stringify(options.schedule)} never comes after ${now.toISOString()} (a day the month does not have, or a year gone by?), so the policy would take no backup; for example '0 2 * * *' runs at 02:00 every day`)
  }
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
  return { ...policy, nextRunAt: nextRun(policy, now) }
}

/** `hooks` if they are { pre?: function, post?: function }; INVALID_ARGUMENT otherwise. */
export function checkHooks (hooks: BackupHooks): BackupHooks {
  if (hooks === null || typeof hooks !== 'object' || (hooks.pre !== undefined && typeof hooks.pre !== 'function') || (hooks.post !== undefined && typeof hooks.post !== 'function')) {
    throw new GalleonError('INVALID_ARGUMENT', `hooks must be { pre?: function, post?: function }, got ${describe(hooks)}`)
  }
  return hooks
}
