// README "Backup policies": defaults, label selection, a missing volume, and pruning that leaves
// backups taken by hand or by other policies alone, with a controlled clock.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'

const DAY = 86_400_000
let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'h51-policy-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('README Backup policies', () => {
  it('defaults (incremental, fullEvery 7), labels, a named volume that is gone, and pruning that spares other backups', async () => {
    const clock = { time: Date.UTC(2026, 0, 5, 3, 0, 0), now () { return this.time } }
    const g = await GalleonFS.open({ inMemory: true, backupTarget: join(root, 't1'), clock })
    try {
      await g.createVolume({ name: 'db', sizeBytes: '1M', labels: { tier: 'gold' } })
      await g.createVolume({ name: 'logs', sizeBytes: '1M', labels: { tier: 'bronze' } })
      await assert.rejects(g.createBackupPolicy({ name: 'none', schedule: '0 2 * * *', retention: { daily: 1 } }), { code: 'INVALID_ARGUMENT' })
      const policy = await g.createBackupPolicy({ name: 'nightly', schedule: '0 2 * * *', retention: { daily: 2 }, labels: { tier: 'gold' }, volumes: ['gone'] })
      assert.equal(policy.strategy, 'incremental')
      assert.equal(policy.fullEvery, 7)
      await assert.rejects(g.createBackupPolicy({ name: 'nightly', schedule: '0 3 * * *', retention: { daily: 1 }, volumes: ['db'] }), { code: 'POLICY_EXISTS' })
      await assert.rejects(g.getBackupPolicy('nope'), { code: 'POLICY_NOT_FOUND' })
      await assert.rejects(g.deleteBackupPolicy('nope'), { code: 'POLICY_NOT_FOUND' })
      // A second policy on the same volume; its backups are never pruned by 'nightly'.
      await g.createBackupPolicy({ name: 'weekly', schedule: '0 4 * * 0', retention: { weekly: 10 }, volumes: ['db'] })

      const ran: unknown[] = []
      g.on('backup-policy:ran', (run) => { ran.push(run) })
      const manual = await g.createBackup('db', { strategy: 'full' })
      const strategies: string[] = []
      const otherPolicy: string[] = []
      for (let day = 0; day < 9; day++) {
        await g.writeBlock('db', day, new Uint8Array([day + 1]))
        const run = await g.runBackupPolicy('nightly')
        assert.deepEqual(run.backups.map((b) => b.volumeName), ['db'], 'labels select db only')
        assert.equal(run.errors.length, 1, 'the missing volume is a failure of the run, not a throw')
        assert.equal(run.errors[0]?.volume, 'gone')
        strategies.push(run.backups[0]!.strategy)
        if (day >= 7) otherPolicy.push(...(await g.runBackupPolicy('weekly')).backups.map((b) => b.id))
        clock.time += DAY
      }
      // The first is a full; then a full each time the chain reaches 7 backups.
      assert.deepEqual(strategies, ['full', 'incremental', 'incremental', 'incremental', 'incremental', 'incremental', 'incremental', 'full', 'incremental'])
      assert.equal(ran.length >= 9, true)
      const after = await g.getBackupPolicy('nightly')
      assert.equal(after.lastResult?.errors.length, 1)
      const left = new Set((await g.listBackups('db')).map((b) => b.id))
      assert.ok(left.has(manual.id), 'a backup taken by hand is never pruned')
      for (const id of otherPolicy) assert.ok(left.has(id), 'a backup of another policy is never pruned')
      const nightly = (await g.listBackups('db')).filter((b) => b.policy === 'nightly')
      // daily: 2 keeps the last two days' backups (the newest full and the incremental on it); the
      // first chain goes, unless another policy's incremental was built on one of its backups.
      assert.ok(nightly.length < 9, `pruned: ${nightly.length} left`)
      for (const b of await g.listBackups('db')) if (b.baseId !== null) assert.ok(left.has(b.baseId), 'every kept backup keeps its base')
      for (const b of await g.listBackups('db')) assert.equal((await g.verifyBackup(b.id)).ok, true)
    } finally {
      await g.close()
    }
  })

  // Defect (h51 report): with two policies on one volume, an incremental of one builds on the
  // other's backup; the first policy then prunes its own full (nothing of its own needs it) and,
  // having no full left, takes a full after 3 backups although the chain is 3 long, not fullEvery.
  it('fullEvery: a policy takes a full when the chain reaches fullEvery backups, also when another policy backs up the same volume', async () => {
    const clock = { time: Date.UTC(2026, 0, 5, 3, 0, 0), now () { return this.time } }
    const g = await GalleonFS.open({ inMemory: true, backupTarget: join(root, 't2'), clock })
    try {
      await g.createVolume({ name: 'db', sizeBytes: '1M' })
      await g.createBackupPolicy({ name: 'nightly', schedule: '0 2 * * *', retention: { daily: 2 }, volumes: ['db'] })
      await g.createBackupPolicy({ name: 'weekly', schedule: '0 4 * * 0', retention: { weekly: 10 }, volumes: ['db'] })
      const strategies: string[] = []
      for (let day = 0; day < 5; day++) {
        await g.writeBlock('db', day, new Uint8Array([day + 1]))
        strategies.push((await g.runBackupPolicy('nightly')).backups[0]!.strategy)
        if (day === 0) await g.runBackupPolicy('weekly')
        clock.time += DAY
      }
      // Chain after day 0: weekly's full <- nightly's incrementals; none reaches 7 backups.
      assert.deepEqual(strategies, ['full', 'incremental', 'incremental', 'incremental', 'incremental'])
    } finally {
      await g.close()
    }
  })

  it('fullEvery with a differential policy: a full once the newest full has fullEvery - 1 differentials', async () => {
    const clock = { time: Date.UTC(2026, 0, 5, 3, 0, 0), now () { return this.time } }
    const g = await GalleonFS.open({ inMemory: true, backupTarget: join(root, 't3'), clock })
    try {
      await g.createVolume({ name: 'db', sizeBytes: '1M' })
      await g.createBackupPolicy({ name: 'diffs', schedule: '0 2 * * *', strategy: 'differential', fullEvery: 3, retention: { daily: 30 }, volumes: ['db'] })
      const strategies: string[] = []
      for (let day = 0; day < 6; day++) {
        await g.writeBlock('db', day, new Uint8Array([day + 1]))
        strategies.push((await g.runBackupPolicy('diffs')).backups[0]!.strategy)
        clock.time += DAY
      }
      assert.deepEqual(strategies, ['full', 'differential', 'differential', 'full', 'differential', 'differential'])
    } finally {
      await g.close()
    }
  })
})
