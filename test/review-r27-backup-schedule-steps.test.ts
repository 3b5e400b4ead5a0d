// Review r27 of cfeb35f (src/backup/policies.ts #rebased): a policy is rebased after a wall-clock
// step back only when its recorded next run lies beyond the schedule's slot after next. That bound
// is counted in slots, so on a sparse or irregular schedule a step of days is taken for a "small"
// one and waited out: the policy then takes no backup for as long as the step plus up to two of
// its intervals (the h65 symptom, a policy silenced by a step back, for daily, weekday and monthly
// schedules). The clock is the one given to open(), stepped in-process; runDue by hand.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'

const BS = 4096

let root: string
let count = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r27-policy-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const place = (): string => join(root, String(count++))

/** A wall clock that moves only when told (and may be stepped back). */
class SteppedClock {
  constructor (public time: number) {}
  now (): number { return this.time }
}

/**
 * Opens an instance on `clock`, makes a policy with `schedule`, runs it once at `firstRun`, steps
 * the clock back to `steppedTo`, then runs due policies at each of `later`: returns the scheduled
 * slots of the runs made after the step.
 */
async function runsAfterStep (schedule: string, createdAt: number, firstRun: number, steppedTo: number, later: number[]): Promise<string[]> {
  const clock = new SteppedClock(createdAt)
  const g = await GalleonFS.open({ inMemory: true, backupTarget: place(), clock })
  try {
    await g.createVolume({ name: 'db', sizeBytes: 16 * BS })
    await g.createBackupPolicy({ name: 'p', schedule, strategy: 'full', retention: { daily: 30 }, volumes: ['db'] })
    clock.time = firstRun
    assert.equal((await g.runDueBackupPolicies()).length, 1, 'the run before the step')
    const runs: string[] = []
    for (const time of [steppedTo, ...later]) {
      clock.time = time
      for (const run of await g.runDueBackupPolicies()) runs.push(run.scheduledAt)
    }
    return runs
  } finally {
    await g.close()
  }
}

describe('review r27: backup schedules after a step back of days on a sparse schedule', () => {
  it('a weekday policy (0 2 * * 1-5) stepped back 3 days after its Monday run still takes a backup by the next Monday 02:00', async () => {
    // 2026-03-09 is a Monday, 2026-03-06 the Friday before.
    const runs = await runsAfterStep('0 2 * * 1-5', Date.UTC(2026, 2, 9, 1), Date.UTC(2026, 2, 9, 3), Date.UTC(2026, 2, 6, 3), [
      Date.UTC(2026, 2, 7, 12), Date.UTC(2026, 2, 9, 2, 0, 30), Date.UTC(2026, 2, 9, 12)
    ])
    // Without a rebase the policy waits for Tuesday 02:00 on the stepped clock: four days after its
    // last backup, with the Monday slot (and a Friday one) never taken on the clock it now keeps.
    assert.ok(runs.length > 0, `the policy took no backup for 3 days and 23 hours after a 3-day step back (runs: ${JSON.stringify(runs)})`)
    assert.ok(runs.includes(new Date(Date.UTC(2026, 2, 9, 2)).toISOString()), `the Monday 02:00 slot runs on the clock as it now is: ${JSON.stringify(runs)}`)
  })

  it('a daily policy stepped back 23 hours runs within a day, not after two', async () => {
    const runs = await runsAfterStep('0 2 * * *', Date.UTC(2026, 2, 10, 1), Date.UTC(2026, 2, 10, 3), Date.UTC(2026, 2, 9, 4), [
      Date.UTC(2026, 2, 9, 12), Date.UTC(2026, 2, 10, 2, 0, 30), Date.UTC(2026, 2, 10, 12)
    ])
    assert.ok(runs.includes(new Date(Date.UTC(2026, 2, 10, 2)).toISOString()), `a 23-hour step back left the daily policy silent for 47 hours: ${JSON.stringify(runs)}`)
  })

  it('a monthly policy stepped back 27 days runs at the next 1st on the clock, not a month later', async () => {
    const runs = await runsAfterStep('0 0 1 * *', Date.UTC(2026, 1, 28, 12), Date.UTC(2026, 2, 1, 0, 5), Date.UTC(2026, 1, 2, 0, 5), [
      Date.UTC(2026, 1, 15), Date.UTC(2026, 2, 1, 0, 0, 30), Date.UTC(2026, 2, 15)
    ])
    assert.ok(runs.includes(new Date(Date.UTC(2026, 2, 1)).toISOString()), `a 27-day step back left the monthly policy silent until April: ${JSON.stringify(runs)}`)
  })

  it('small steps are still waited out on sparse and frequent schedules (no served slot runs again)', async () => {
    // The r26 cases must hold with the time bound: seconds and minutes back never re-run a slot.
    const weekday = await runsAfterStep('0 2 * * 1-5', Date.UTC(2026, 2, 9, 1), Date.UTC(2026, 2, 9, 2, 0, 1), Date.UTC(2026, 2, 9, 1, 59, 58), [
      Date.UTC(2026, 2, 9, 2, 0, 30), Date.UTC(2026, 2, 10, 2, 0, 30)
    ])
    assert.deepEqual(weekday, [new Date(Date.UTC(2026, 2, 10, 2)).toISOString()])
    const frequent = await runsAfterStep('*/5 * * * *', Date.UTC(2026, 2, 9, 9, 58), Date.UTC(2026, 2, 9, 10, 0, 1), Date.UTC(2026, 2, 9, 9, 59, 57), [
      Date.UTC(2026, 2, 9, 10, 0, 30), Date.UTC(2026, 2, 9, 10, 5, 1)
    ])
    assert.deepEqual(frequent, [new Date(Date.UTC(2026, 2, 9, 10, 5)).toISOString()])
  })
})
