// Review r57: createBackupPolicy refuses a schedule that never comes (April 31st, February 30th, a
// year gone by), which it stored with nextRunAt null: a policy that silently never backs anything
// up; and a time zone that is no zone name (a number, an empty string), which it stored as given
// and croner read as a UTC offset in minutes or as the machine's local zone.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r57-policy-input-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('review r57: backup policy input', () => {
  it('a schedule that never comes and a time zone that is no zone name are refused with INVALID_ARGUMENT, nothing stored', async () => {
    const now = Date.UTC(2026, 11, 7, 10)
    const g = await GalleonFS.open({ inMemory: true, backupTarget: root, clock: { now: () => now } })
    try {
      const good = { name: 'nightly', schedule: '0 2 * * *', retention: { daily: 7 }, volumes: ['db'] }
      const bad: Array<[string, unknown]> = [
        ['April 31st', { ...good, schedule: '0 0 31 4 *' }],
        ['February 30th', { ...good, schedule: '0 0 30 2 *' }],
        ['a year gone by', { ...good, schedule: '0 0 2 1 1 * 2020' }],
        ['a number as time zone', { ...good, timezone: 5 }],
        ['an empty time zone', { ...good, timezone: '' }]
      ]
      for (const [what, policy] of bad) {
        const outcome = await g.createBackupPolicy(policy as never).then((created) => `accepted, nextRunAt ${String(created.nextRunAt)}, timezone ${JSON.stringify(created.timezone)}`, (err: { code?: string }) => err.code)
        assert.equal(outcome, 'INVALID_ARGUMENT', what)
        await g.deleteBackupPolicy('nightly').catch(() => {})
      }
      assert.deepEqual(await g.listBackupPolicies(), [])
      // A leap day comes (every four years), and a named zone is taken.
      assert.equal((await g.createBackupPolicy({ ...good, name: 'leap', schedule: '0 0 29 2 *' })).nextRunAt, '2028-02-29T00:00:00.000Z')
      assert.equal((await g.createBackupPolicy({ ...good, name: 'berlin', timezone: 'Europe/Berlin' })).nextRunAt, '2026-12-08T01:00:00.000Z')
    } finally { await g.close() }
  })
})
