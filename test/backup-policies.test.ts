// Backup policies: validation, schedules run by a controlled clock, grandfather-father-son
// retention, missed runs across a restart, hooks, and one real-time run of the scheduler's timer.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { retained } from '../src/backup/policies.js'
import { bytesOf } from './conformance/fixtures.js'

const BS = 4096
const DAY = 86_400_000

let root: string
let count = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-policy-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const place = (): string => join(root, String(count++))

class FakeClock {
  constructor (public time: number) {}
  now (): number { return this.time }
}

describe('backup policies', () => {
  it('validates policies with stable codes', async () => {
    const g = await GalleonFS.open({ inMemory: true, backupTarget: place() })
    try {
      const good = { name: 'nightly', schedule: '0 2 * * *', retention: { daily: 7 }, volumes: ['db'] }
      const bad: Array<[string, unknown]> = [
        ['no object', 42],
        ['bad name', { ...good, name: 'a b' }],
        ['bad cron', { ...good, schedule: 'every day' }],
        ['cron out of range', { ...good, schedule: '0 25 * * *' }],
        ['bad strategy', { ...good, strategy: 'sometimes' }],
        ['retention keeps nothing', { ...good, retention: {} }],
        ['negative retention', { ...good, retention: { daily: -1 } }],
        ['unknown retention field', { ...good, retention: { yearly: 1 } }],
        ['no volumes', { ...good, volumes: [] }],
        ['unknown field', { ...good, consistency: 'app' }],
        ['target object', { ...good, target: {} }],
        ['bad time zone', { ...good, timezone: 'Mars/Olympus' }],
        ['bad fullEvery', { ...good, fullEvery: 0 }]
      ]
      for (const [what, policy] of bad) await assert.rejects(g.createBackupPolicy(policy as never), { code: 'INVALID_ARGUMENT' }, what)
      assert.deepEqual(await g.listBackupPolicies(), [])
      const created = await g.createBackupPolicy(good)
      assert.equal(created.strategy, 'incremental')
      assert.equal(created.fullEvery, 7)
      assert.deepEqual(created.retention, { daily: 7, weekly: 0, monthly: 0 })
      await assert.rejects(g.createBackupPolicy(good), { code: 'POLICY_EXISTS' })
      await assert.rejects(g.getBackupPolicy('nope'), { code: 'POLICY_NOT_FOUND' })
      await assert.rejects(g.deleteBackupPolicy('nope'), { code: 'POLICY_NOT_FOUND' })
      await g.deleteBackupPolicy('nightly')
      assert.deepEqual(await g.listBackupPolicies(), [])
    } finally { await g.close() }
  })

  it('keeps the newest backup of each of the last N days, ISO weeks and months', () => {
    const backups = Array.from({ length: 100 }, (_, i) => ({ id: `b${i}`, createdAt: new Date(Date.UTC(2026, 0, 1, 2) + i * DAY).toISOString() }))
    const newestFirst = [...backups].reverse() as never[]
    const keep = retained(newestFirst, { daily: 3, weekly: 2, monthly: 2 }, new Date())
    // Days: Apr 10, 9, 8 (b99, b98, b97). Weeks: newest of this ISO week (b99) and of the one before
    // (Sunday Apr 5 = b94). Months: April (b99) and March (Mar 31 = b89).
    assert.deepEqual([...keep].sort(), ['b89', 'b94', 'b97', 'b98', 'b99'])
  })

  it('runs on schedule with a controlled clock, prunes by retention, and reports missed runs after a restart', async () => {
    const storagePath = place()
    const target = place()
    const clock = new FakeClock(Date.UTC(2026, 0, 1, 0, 0))
    let g = await GalleonFS.open({ storagePath, backupTarget: target, clock })
    try {
      await g.createVolume({ name: 'db', sizeBytes: 256 * BS, labels: { tier: 'gold' } })
      await g.createVolume({ name: 'logs', sizeBytes: 256 * BS, labels: { tier: 'gold' } })
      await g.createVolume({ name: 'scratch', sizeBytes: 256 * BS })
      const policy = await g.createBackupPolicy({ name: 'nightly', schedule: '0 2 * * *', strategy: 'full', retention: { daily: 3, weekly: 3 }, labels: { tier: 'gold' } })
      assert.equal(policy.nextRunAt, '2026-01-01T02:00:00.000Z')
      assert.deepEqual(await g.runDueBackupPolicies(), [], 'nothing is due before 02:00')
      const ran: string[] = []
      g.on('backup-policy:ran', (run) => ran.push(run.scheduledAt))
      for (let day = 0; day < 20; day++) {
        await g.writeBlock('db', day, bytesOf(BS, day))
        clock.time = Date.UTC(2026, 0, 1 + day, 2, 30)
        const runs = await g.runDueBackupPolicies()
        assert.equal(runs.length, 1, `day ${day}`)
        assert.equal(runs[0]?.backups.length, 2)
        assert.deepEqual(runs[0]?.errors, [])
      }
      assert.equal(ran.length, 20)
      assert.equal(ran[19], '2026-01-20T02:00:00.000Z')
      const kept = await g.listBackups('db')
      // Jan 18, 19, 20 (daily); weekly: Jan 20 (this ISO week), Sunday Jan 18 and Sunday Jan 11 (the two before).
      assert.deepEqual(kept.map((b) => b.createdAt.slice(0, 10)), ['2026-01-11', '2026-01-18', '2026-01-19', '2026-01-20'])
      assert.ok(kept.every((b) => b.policy === 'nightly'))
      assert.equal((await g.listBackups('scratch')).length, 0, 'volumes without the label are not backed up')
      const latest = kept.at(-1)
      assert.ok(latest !== undefined)
      const restored = await g.restoreBackup(latest.id, { name: 'check' })
      assert.deepEqual(await g.readBlock(restored, 19), bytesOf(BS, 19))
      // A backup taken by hand is never pruned by the policy.
      const manual = await g.createBackup('db')
      await g.close()

      // Closed for three days: the runs of Jan 21 and 22 are missed; one catch-up run stands for Jan 23.
      clock.time = Date.UTC(2026, 0, 23, 12)
      g = await GalleonFS.open({ storagePath, backupTarget: target, clock })
      const reopened = await g.getBackupPolicy('nightly')
      assert.deepEqual(reopened.missedRuns, ['2026-01-21T02:00:00.000Z', '2026-01-22T02:00:00.000Z', '2026-01-23T02:00:00.000Z'])
      const missed: string[][] = []
      g.on('backup-policy:missed', (event) => missed.push(event.missed))
      const catchUp = await g.runDueBackupPolicies()
      assert.equal(catchUp.length, 1)
      assert.equal(catchUp[0]?.scheduledAt, '2026-01-23T02:00:00.000Z')
      assert.deepEqual(missed, [['2026-01-21T02:00:00.000Z', '2026-01-22T02:00:00.000Z']])
      const after = await g.getBackupPolicy('nightly')
      assert.deepEqual(after.missedRuns, [])
      assert.equal(after.lastRunAt, '2026-01-23T02:00:00.000Z')
      assert.equal(after.nextRunAt, '2026-01-24T02:00:00.000Z')
      assert.ok((await g.listBackups('db')).some((b) => b.id === manual.id))
    } finally {
      await g.close()
    }
  })

  it('lists the last 100 missed runs of a frequent schedule closed for a month, counted back from now', async () => {
    const storagePath = place()
    const clock = new FakeClock(Date.UTC(2026, 2, 1, 12))
    let g = await GalleonFS.open({ storagePath, backupTarget: place(), clock })
    try {
      await g.createVolume({ name: 'v', sizeBytes: 4 * BS })
      await g.createBackupPolicy({ name: 'often', schedule: '*/5 * * * * *', retention: { daily: 1 }, volumes: ['v'] })
      await g.close()
      // About half a million slots passed; the newest 100 are listed, ending at the slot just due.
      clock.time = Date.UTC(2026, 2, 31, 12, 0, 2)
      g = await GalleonFS.open({ storagePath, backupTarget: place(), clock })
      const missed = (await g.getBackupPolicy('often')).missedRuns
      assert.equal(missed.length, 100)
      assert.equal(missed.at(-1), '2026-03-31T12:00:00.000Z')
      assert.equal(missed[0], '2026-03-31T11:51:45.000Z')
      for (let i = 1; i < missed.length; i++) assert.equal(Date.parse(missed[i] as string) - Date.parse(missed[i - 1] as string), 5000)
    } finally {
      await g.close()
    }
  })

  it('keeps the backup a run just took when times tie or the clock stepped back', async () => {
    for (const step of [0, -3_600_000]) {
      const clock = new FakeClock(Date.UTC(2026, 2, 1, 12))
      const g = await GalleonFS.open({ inMemory: true, backupTarget: place(), clock })
      try {
        await g.createVolume({ name: 'v', sizeBytes: 8 * BS })
        await g.createBackupPolicy({ name: 'p', schedule: '0 3 * * *', strategy: 'incremental', retention: { daily: 1 }, volumes: ['v'] })
        for (let i = 0; i < 4; i++) {
          await g.writeBlock('v', i, bytesOf(BS, 50 + i))
          const run = await g.runBackupPolicy('p')
          const taken = run.backups[0]
          assert.ok(taken !== undefined)
          assert.ok(!run.pruned.includes(taken.id), `step ${step}, run ${i}: the backup just taken was pruned`)
          assert.ok((await g.listBackups('v')).some((b) => b.id === taken.id))
          const restored = await g.restoreBackup(taken.id, { name: `r${step === 0 ? 'a' : 'b'}${i}` })
          for (let j = 0; j <= i; j++) assert.deepEqual(await g.readBlock(restored, j), bytesOf(BS, 50 + j))
          clock.time += step
        }
      } finally {
        await g.close()
      }
    }
  })

  it('runs hooks, and incremental chains survive pruning while a kept backup builds on them', async () => {
    const clock = new FakeClock(Date.UTC(2026, 2, 1))
    const g = await GalleonFS.open({ inMemory: true, backupTarget: place(), clock })
    try {
      await g.createVolume({ name: 'db', sizeBytes: 64 * BS })
      const calls: string[] = []
      await g.createBackupPolicy({ name: 'hourly', schedule: '0 * * * *', retention: { daily: 1 }, volumes: ['db'], hooks: { pre: () => { calls.push('pre') }, post: () => { calls.push('post') } } })
      for (let hour = 1; hour <= 30; hour++) {
        await g.writeBlock('db', hour % 64, bytesOf(BS, hour))
        clock.time = Date.UTC(2026, 2, 1, hour, 1)
        await g.runDueBackupPolicies()
      }
      assert.equal(calls.length, 60)
      const left = await g.listBackups('db')
      // Newest of Mar 2 kept (daily: 1), plus the chain it builds on back to its full: a full every 7.
      const newest = left.at(-1)
      assert.ok(newest !== undefined)
      const ids = new Set(left.map((b) => b.id))
      for (let base = newest.baseId; base !== null; base = left.find((b) => b.id === base)?.baseId ?? null) assert.ok(ids.has(base))
      assert.equal(left[0]?.strategy, 'full')
      assert.ok(left.length <= 7, `${left.length} backups left`)
      const restored = await g.restoreBackup(newest.id, { name: 'r' })
      assert.deepEqual(await g.read(restored, 0, 64 * BS), await g.read('db', 0, 64 * BS))
      // A failing pre-hook fails that run's backup, which is reported, not thrown.
      g.setBackupPolicyHooks('hourly', { pre: () => { throw new Error('cannot freeze') } })
      const run = await g.runBackupPolicy('hourly')
      assert.equal(run.backups.length, 0)
      assert.match(run.errors[0]?.message ?? '', /cannot freeze/)
      assert.match((await g.getBackupPolicy('hourly')).lastResult?.errors[0] ?? '', /cannot freeze/)
    } finally { await g.close() }
  })

  it('a scheduled run cut short by close() is made up after reopening; a slot is served once', async () => {
    const storagePath = place()
    const target = place()
    const clock = new FakeClock(Date.UTC(2026, 4, 1))
    let g = await GalleonFS.open({ storagePath, backupTarget: target, clock })
    await g.createVolume({ name: 'v', sizeBytes: 64 * BS })
    await g.createBackupPolicy({ name: 'a', schedule: '0 3 * * *', strategy: 'full', retention: { daily: 5 }, volumes: ['v'] })
    clock.time = Date.UTC(2026, 4, 1, 3, 5)
    // Two callers at once: the slot of 03:00 is served by one run only.
    const [one, two] = await Promise.all([g.runDueBackupPolicies(), g.runDueBackupPolicies()])
    assert.equal(one.length + two.length, 1)
    assert.equal((await g.listBackups('v')).length, 1)
    // The next slot's run is cut short by close().
    clock.time = Date.UTC(2026, 4, 2, 3, 5)
    const running = g.runDueBackupPolicies()
    await g.close()
    const cut = await running
    assert.equal(cut[0]?.backups.length, 0)
    g = await GalleonFS.open({ storagePath, backupTarget: target, clock })
    try {
      const policy = await g.getBackupPolicy('a')
      assert.equal(policy.lastRunAt, '2026-05-01T03:00:00.000Z')
      assert.deepEqual(policy.missedRuns, ['2026-05-02T03:00:00.000Z'])
      const runs = await g.runDueBackupPolicies()
      assert.equal(runs[0]?.scheduledAt, '2026-05-02T03:00:00.000Z')
      assert.equal(runs[0]?.backups.length, 1)
    } finally { await g.close() }
  })

  it('fires by itself on a real timer', async () => {
    const g = await GalleonFS.open({ inMemory: true, backupTarget: place() })
    try {
      await g.createVolume({ name: 'v', sizeBytes: 16 * BS })
      await g.writeBlock('v', 0, bytesOf(BS, 1))
      const runs: string[] = []
      g.on('backup-policy:ran', (run) => runs.push(run.scheduledAt))
      await g.createBackupPolicy({ name: 'every-second', schedule: '* * * * * *', strategy: 'full', retention: { daily: 1 }, volumes: ['v'] })
      const deadline = Date.now() + 10_000
      while (runs.length < 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
      assert.ok(runs.length >= 2, `${runs.length} runs in 10 s`)
      assert.ok((await g.listBackups('v')).length >= 1)
    } finally { await g.close() }
  })
})
