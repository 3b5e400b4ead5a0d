// Review r33 (split of src/backup/manager.ts, ddd0643): a backup holds the leftover snapshot it
// chose as its base (so that retryLeftSnapshots leaves it while the backup lists the changes since
// it). A backup that fails to record itself in the metadata database (before its snapshot is
// taken) must let go of that base too: held, the snapshot would never be deleted by
// retryLeftSnapshots for the rest of the instance's life (only at the next open).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { ClassicLevel } from 'classic-level'
import { GalleonFS } from '../src/index.js'
import { leftoverBackupBase } from './support/leftover-backup-base.js'
import { tempDirs } from './support/temp-dir.js'

const place = tempDirs('galleon-r33-base-')

/**
 * Makes puts into the metadata sublevel `name` fail while armed (a real classic-level database; the
 * failure is injected in the sublevel class all classic-level databases of this process share).
 */
async function failingSublevelPuts (name: string): Promise<{ arm: (on: boolean) => void, restore: () => Promise<void> }> {
  const probe = new ClassicLevel<string, string>(await place())
  const proto = Object.getPrototypeOf(probe.sublevel('probe')) as { _put: (...args: unknown[]) => Promise<void> }
  await probe.close()
  const original = proto._put
  let armed = false
  proto._put = async function (this: { prefix: string }, ...args: unknown[]) {
    if (armed && this.prefix === `!${name}!`) throw Object.assign(new Error('injected: the metadata write failed (EIO)'), { code: 'EIO' })
    return await original.apply(this, args)
  }
  return { arm: (on) => { armed = on }, restore: async () => { proto._put = original } }
}

describe('review r33: a backup that fails before its snapshot releases its base', () => {
  it('a leftover base snapshot is deleted with the clone that held it after such a failed backup', { timeout: 60_000 }, async () => {
    const storagePath = await place()
    const target = await place()
    const faults = await failingSublevelPuts('backupsInProgress')
    const g = await GalleonFS.open({ storagePath })
    try {
      // A leftover snapshot (a clone held it when a backup freed it) is the next incremental's base.
      const first = await leftoverBackupBase(g, target)

      // The next incremental chooses that base, then cannot record itself: it fails, taking nothing.
      faults.arm(true)
      await assert.rejects(g.createBackup('vol', { target, strategy: 'incremental' }), /injected: the metadata write failed/)
      faults.arm(false)
      assert.deepEqual((await g.listSnapshots('vol')).map((s) => s.name).filter((n) => n.startsWith('backup-')).sort(),
        [`backup-${first.id}`, ...(await g.listBackups('vol', { target })).filter((b) => b.strategy === 'full').map((b) => `backup-${b.id}`)].sort())

      // The clone goes: the leftover it held is deleted now (not left until the next open).
      await g.deleteVolume('pinned')
      assert.ok(!(await g.listSnapshots('vol')).some((s) => s.name === `backup-${first.id}`),
        'the leftover snapshot stayed: the failed backup still holds it as its base')
      // And the next incremental builds on the full backup, whose snapshot is still there.
      const full = (await g.listBackups('vol', { target })).find((b) => b.strategy === 'full')
      const third = await g.createBackup('vol', { target, strategy: 'incremental' })
      assert.equal(third.baseId, full?.id)
    } finally {
      faults.arm(false)
      await g.close()
      await faults.restore()
    }
  })
})
