// The directory backup target's lease directory exists only while a lease does: a holder's
// deleteLease removes it once empty, while another holder (another instance or process on the same
// target) may be making it to write its own lease. That race must never fail a putLease (it failed
// a createBackup in CI with "could not create .../leases: ENOENT" when two instances backed up to
// one target at once).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { DirectoryBackupTarget } from '../backends/directory/index.js'
import { withTempDir } from './support/temp-dir.js'

describe('directory target leases', () => {
  it('holders taking and dropping leases at once on one target never fail, and the lease directory goes once the last is dropped', async () => {
    await withTempDir('galleon-dir-leases-', async (dir) => {
      const location = join(dir, 'target')
      const holders = [new DirectoryBackupTarget({ path: location }), new DirectoryBackupTarget({ path: location }), new DirectoryBackupTarget({ path: location })]
      for (const holder of holders) await holder.open()
      const failures: string[] = []
      await Promise.all(holders.map(async (holder) => {
        for (let round = 0; round < 300; round++) {
          const id = randomUUID()
          try {
            await holder.putLease(id, new TextEncoder().encode(`{"round":${round}}\n`))
            assert.ok(await holder.getLease(id) !== undefined)
            await holder.deleteLease(id)
          } catch (err) {
            failures.push((err as Error).message)
          }
        }
      }))
      assert.deepEqual(failures.slice(0, 3), [], `${failures.length} of 900 lease rounds failed`)
      assert.equal(existsSync(join(location, 'leases')), false, 'no lease left, no lease directory')
      for (const holder of holders) await holder.close()
    })
  })
})
