// Backup policy schedule arithmetic on cron expressions: the next run, the slots that passed, and
// rebasing a run record on a wall clock that stepped back.

import { Cron } from 'croner'
import type { BackupPolicy, Clock } from './policy-types.js'

/** How many missed slots a policy records (the most recent ones). */
export const MAX_MISSED = 100
/** A step back of the clock up to this long is waited out (no slot served before it runs again), as cron does; a longer one rebases the schedule on the clock. */
const SMALL_STEP_BACK_MS = 3 * 3600_000

/** Next run strictly after `after`. */
export function nextRun (policy: Pick<BackupPolicy, 'schedule' | 'timezone'>, after: Date): string | null {
  return new Cron(policy.schedule, { paused: true, timezone: policy.timezone }).nextRun(after)?.toISOString() ?? null
}

/** The last MAX_MISSED scheduled times in (from, to], oldest first. */
export function scheduledSlots (policy: BackupPolicy, from: Date, to: Date): string[] {
  const cron = new Cron(policy.schedule, { paused: true, timezone: policy.timezone })
  // Counted back from `to`: a frequent schedule closed for weeks has millions of slots in between,
  // and stepping through them from `from` held the event loop for tens of seconds.
  return cron.previousRuns(MAX_MISSED, new Date(to.getTime() + 1))
    .filter((at) => at.getTime() > from.getTime())
    .map((at) => at.toISOString())
    .sort()
}

/**
 * The policy, rebased on the clock when the clock stepped back past its run record (its next run
 * lies beyond the schedule's second slot from now): the schedule goes on from the clock's time, as
 * cron does after a large step back, instead of waiting for the clock to catch up with the old
 * record (for as long as the step, taking no backup). Returns `policy` itself when nothing changes.
 */
export function rebaseOnClock (policy: BackupPolicy, clock: Clock): BackupPolicy {
  if (policy.nextRunAt === null) return policy
  const now = new Date(clock.now())
  const next = nextRun(policy, now)
  if (next === null || Date.parse(policy.nextRunAt) <= Date.parse(next)) return policy
  // A small step back (NTP's seconds; the recorded next run is still the slot after next): the
  // slots the clock passes again were served, and the recorded run comes the step late, as cron
  // does for small steps. Rebasing on it ran the slot before at once and a served slot again.
  // Small in time too (cron's bound: 3 hours): counted in slots alone, a sparse schedule took a
  // step of days for a small one (a weekday policy stepped back 3 days waited 4 days for its next
  // backup). A record still within the step bound's reach was made at most that long ago.
  const afterNext = nextRun(policy, new Date(next))
  const withinStep = nextRun(policy, new Date(now.getTime() + SMALL_STEP_BACK_MS))
  if (afterNext === null || withinStep === null || Date.parse(policy.nextRunAt) <= Math.min(Date.parse(afterNext), Date.parse(withinStep))) return policy
  const cron = new Cron(policy.schedule, { paused: true, timezone: policy.timezone })
  // The slot that passed last is made now (an extra backup rather than one skipped): the run
  // record starts from the slot before it.
  const [latest, before] = cron.previousRuns(2, new Date(now.getTime() + 1))
  return { ...policy, lastRunAt: before?.toISOString() ?? null, nextRunAt: latest?.toISOString() ?? next, missedRuns: policy.missedRuns.filter((at) => Date.parse(at) <= now.getTime()) }
}
