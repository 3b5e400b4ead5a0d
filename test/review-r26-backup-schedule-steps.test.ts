// Review r26 of the backup scheduler's rebase after a wall-clock step back (69ad727,
// src/backup/policies.ts #rebased): a small step back (seconds, as NTP makes them) must not make
// the policy run again for a slot it has served, nor an extra run at once. The clock is the one
// given to open(), stepped in-process; the scheduler's own timers are off with it (runDue by hand).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'

const BS = 4096

let root: string
let count = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r26-policy-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const place = (): string => join(root, String(count++))

/** A wall clock that moves only when told (and may be stepped back). */
class SteppedClock {
  constructor (public time: number) {}
  now (): number { return this.time }
}

describe('review r26: backup schedules after a small wall-clock step back', () => {
  it('an hourly policy stepped back 2 s just after its 11:00 run takes no extra backup and does not run 11:00 again', async () => {
    const clock = new SteppedClock(Date.UTC(2026, 2, 10, 10, 30))
    const g = await GalleonFS.open({ inMemory: true, backupTarget: place(), clock })
    try {
      await g.createVolume({ name: 'db', sizeBytes: 64 * BS })
      await g.createBackupPolicy({ name: 'hourly', schedule: '0 * * * *', strategy: 'full', retention: { daily: 30 }, volumes: ['db'] })
      const runs: string[] = []
      const runAt = async (time: number): Promise<void> => {
        clock.time = time
        for (const run of await g.runDueBackupPolicies()) runs.push(`${run.scheduledAt} at ${new Date(time).toISOString().slice(11, 23)}`)
      }
      await runAt(Date.UTC(2026, 2, 10, 11, 0, 0, 500))
      // NTP steps the clock back 2 s (it ran ahead), then time goes on.
      await runAt(Date.UTC(2026, 2, 10, 10, 59, 58, 500))
      await runAt(Date.UTC(2026, 2, 10, 11, 0, 0, 0))
      await runAt(Date.UTC(2026, 2, 10, 11, 30))
      await runAt(Date.UTC(2026, 2, 10, 12, 0, 1))
      assert.deepEqual(runs, ['2026-03-10T11:00:00.000Z at 11:00:00.500', '2026-03-10T12:00:00.000Z at 12:00:01.000'],
        'one backup per hour: the 2 s step back made the slot before and the 11:00 slot run again')
    } finally {
      await g.close()
    }
  })

  it('a daily policy stepped back ten minutes after its run waits for the next day', async () => {
    const clock = new SteppedClock(Date.UTC(2026, 2, 10, 1, 0))
    const g = await GalleonFS.open({ inMemory: true, backupTarget: place(), clock })
    try {
      await g.createVolume({ name: 'db', sizeBytes: 64 * BS })
      await g.createBackupPolicy({ name: 'nightly', schedule: '0 2 * * *', strategy: 'full', retention: { daily: 30 }, volumes: ['db'] })
      clock.time = Date.UTC(2026, 2, 10, 2, 5)
      assert.equal((await g.runDueBackupPolicies()).length, 1, 'the 02:00 run')
      clock.time = Date.UTC(2026, 2, 10, 1, 55)
      assert.deepEqual((await g.runDueBackupPolicies()).map((run) => run.scheduledAt), [], 'no run right after a 10-minute step back')
      clock.time = Date.UTC(2026, 2, 10, 2, 1)
      assert.deepEqual((await g.runDueBackupPolicies()).map((run) => run.scheduledAt), [], 'the 02:00 slot was served already')
      assert.equal((await g.getBackupPolicy('nightly')).nextRunAt, new Date(Date.UTC(2026, 2, 11, 2)).toISOString())
      clock.time = Date.UTC(2026, 2, 11, 2, 1)
      assert.equal((await g.runDueBackupPolicies()).length, 1)
      assert.equal((await g.listBackups('db')).length, 2)
    } finally {
      await g.close()
    }
  })
})
