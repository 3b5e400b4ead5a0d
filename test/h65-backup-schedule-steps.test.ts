// h65: backup policy schedules when the wall clock steps (NTP, an operator, a resumed VM). The
// scheduler reads the time from the clock given to open(), so the steps are made in-process.
// The first and third tests fail before the fix to src/backup/policies.ts proposed in h65 (the
// third also needs retention to order backups by the order they were taken: the manifest's
// sequence, h66).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'

const BS = 4096
const HOUR = 3_600_000
const DAY = 24 * HOUR

let root: string
let count = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-h65-policy-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const place = (): string => join(root, String(count++))

/** A wall clock that moves only when told (and may be stepped back). */
class SteppedClock {
  constructor (public time: number) {}
  now (): number { return this.time }
}

describe('h65: backup schedules across wall-clock steps', () => {
  it('an hourly policy keeps taking backups after the clock steps back a day (not silent for the length of the step)', async () => {
    const clock = new SteppedClock(Date.UTC(2026, 2, 10, 10, 30))
    const g = await GalleonFS.open({ inMemory: true, backupTarget: place(), clock })
    try {
      await g.createVolume({ name: 'db', sizeBytes: 64 * BS })
      await g.createBackupPolicy({ name: 'hourly', schedule: '0 * * * *', strategy: 'full', retention: { daily: 30 }, volumes: ['db'] })
      clock.time = Date.UTC(2026, 2, 10, 11, 5)
      assert.equal((await g.runDueBackupPolicies()).length, 1, 'the 11:00 run')
      // NTP steps the clock back by a day (it ran a day ahead).
      clock.time -= DAY
      const runs: string[] = []
      for (let hour = 1; hour <= 3; hour++) {
        clock.time = Date.UTC(2026, 2, 9, 11 + hour, 5)
        for (const run of await g.runDueBackupPolicies()) runs.push(run.scheduledAt)
      }
      assert.deepEqual(runs, ['2026-03-09T12:00:00.000Z', '2026-03-09T13:00:00.000Z', '2026-03-09T14:00:00.000Z'],
        'each hour after the step back takes its backup; none is skipped until the clock catches up with the last run')
      const policy = await g.getBackupPolicy('hourly')
      assert.equal(policy.nextRunAt, '2026-03-09T15:00:00.000Z')
      // Daily retention keeps the newest of each day: the one taken at 14:05 for March 9.
      assert.deepEqual((await g.listBackups('db')).map((b) => b.createdAt).sort(), ['2026-03-09T14:05:00.000Z', '2026-03-10T11:05:00.000Z'])
    } finally {
      await g.close()
    }
  })

  it('a step forward by a week makes one catch-up run (the skipped slots reported), not one per slot', async () => {
    const clock = new SteppedClock(Date.UTC(2026, 2, 10, 10, 30))
    const g = await GalleonFS.open({ inMemory: true, backupTarget: place(), clock })
    try {
      await g.createVolume({ name: 'db', sizeBytes: 64 * BS })
      await g.createBackupPolicy({ name: 'hourly', schedule: '0 * * * *', strategy: 'full', retention: { daily: 30 }, volumes: ['db'] })
      clock.time = Date.UTC(2026, 2, 10, 11, 5)
      assert.equal((await g.runDueBackupPolicies()).length, 1)
      const missed: string[][] = []
      g.on('backup-policy:missed', (event) => missed.push(event.missed))
      clock.time += 7 * DAY
      const runs = await g.runDueBackupPolicies()
      assert.equal(runs.length, 1)
      assert.equal(runs[0]?.scheduledAt, '2026-03-17T11:00:00.000Z')
      assert.equal(runs[0]?.backups.length, 1)
      assert.equal(missed.length, 1)
      assert.ok(missed[0]!.length > 0 && missed[0]!.length < 100)
      assert.deepEqual(await g.runDueBackupPolicies(), [], 'nothing more is due in the same hour')
      assert.equal((await g.listBackups('db')).length, 2)
    } finally {
      await g.close()
    }
  })

  // Retention buckets backups by their dates (what users ask for), but which backup of a bucket is
  // the newest, and which buckets are the last N, comes from the order they were taken (the
  // manifest's sequence, h66): after a step back, the backups taken since carry earlier dates than
  // some taken before it. Here the backup taken on Friday is dated before the one taken on
  // Thursday (dated Saturday, the clock ran two days ahead); after a weekend off, daily: 2 keeps
  // Monday's and Friday's, not Monday's and the misdated Thursday one. Before h66 (ordered by
  // date) it kept the Thursday one and deleted Friday's.
  it('retention after the clock stepped back two days keeps the newest backups taken, not older ones dated later', async () => {
    // Wednesday 4 March 2026 on a clock two days ahead (truly Monday the 2nd).
    const clock = new SteppedClock(Date.UTC(2026, 2, 4, 12))
    const g = await GalleonFS.open({ inMemory: true, backupTarget: place(), clock })
    try {
      await g.createVolume({ name: 'db', sizeBytes: 64 * BS })
      await g.createBackupPolicy({ name: 'nightly', schedule: '0 2 * * *', strategy: 'full', retention: { daily: 2 }, volumes: ['db'] })
      const taken: string[] = []
      const runAt = async (time: number): Promise<void> => {
        clock.time = time
        for (const run of await g.runDueBackupPolicies()) taken.push(...run.backups.map((b) => b.id))
      }
      // Dated Thursday, Friday and Saturday; taken Tuesday, Wednesday and Thursday.
      for (const day of [5, 6, 7]) await runAt(Date.UTC(2026, 2, day, 2, 30))
      // The clock is stepped back two days (an hour after the last run, truly Thursday 03:30).
      clock.time = Date.UTC(2026, 2, 5, 3, 30)
      // Friday's backup; then the machine is off over the weekend, and Monday's run catches up.
      await runAt(Date.UTC(2026, 2, 6, 2, 45))
      await runAt(Date.UTC(2026, 2, 9, 2, 45))
      assert.equal(taken.length, 5, 'one backup a night the machine was on')
      const listed = await g.listBackups('db')
      const kept = listed.map((b) => b.id)
      assert.deepEqual([...kept].sort(), taken.slice(-2).sort(),
        `daily: 2 keeps the two backups taken last (Friday's and Monday's); kept the ones taken ${kept.map((id) => taken.indexOf(id) + 1).join(', ')} (of 1-5)`)
      assert.deepEqual(listed.map((b) => [b.sequence, b.createdAt]), [[4, '2026-03-06T02:45:00.000Z'], [5, '2026-03-09T02:45:00.000Z']], 'listed in the order taken, numbered so')
    } finally {
      await g.close()
    }
  })
})
