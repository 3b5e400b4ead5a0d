// Review r58: calls only the application may make (as, runAs, setReplicationHook, the event
// methods) are refused to a principal's handle, and, like every other denial, the refusal is in the
// audit log: a principal trying to become another one is what an auditor looks for first.
// Real classic-level metadata on disk; the log is read back after a reopen.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { tempDirs } from './support/temp-dir.js'
import { until } from './support/wait.js'

const tempDir = tempDirs('review-r58-app-only-')

describe('review r58: denials of application-only calls are audited', () => {
  it('as(), runAs(), setReplicationHook() and on()/emit() through a handle each leave a denied entry', async () => {
    const storagePath = join(await tempDir(), 'data')
    const g = await GalleonFS.open({ storagePath })
    // Even admin does not let a principal act as another: the refusal is not about grants.
    await g.createAccessPolicy({ name: 'ops', principals: ['role:ops'], verbs: ['admin'] })
    const mallory = g.as({ id: 'mallory', roles: ['ops'], namespace: 'team' })

    assert.throws(() => mallory.as({ id: 'root' }), { code: 'PERMISSION_DENIED' })
    await assert.rejects(mallory.runAs({ id: 'root' }, async () => 1), { code: 'PERMISSION_DENIED' })
    assert.throws(() => { mallory.setReplicationHook(undefined) }, { code: 'PERMISSION_DENIED' })
    assert.throws(() => mallory.on('volume:created', () => {}), { code: 'PERMISSION_DENIED' })
    assert.throws(() => mallory.emit('volume:deleted', { id: 'x', name: 'x' } as never), { code: 'PERMISSION_DENIED' })
    // A would-be principal whose id getter throws is refused and recorded all the same.
    const hostile = { get id (): string { throw new Error('boom') } }
    await assert.rejects(g.runAs({ id: 'mallory', roles: ['ops'] }, async () => g.as(hostile as never)), { code: 'PERMISSION_DENIED' })
    // Inside runAs, the application's object acts as the principal too.
    await assert.rejects(g.runAs({ id: 'mallory', roles: ['ops'] }, async () => g.as({ id: 'root' })), { code: 'PERMISSION_DENIED' })

    // The synchronous refusals are recorded in the background (as journalStats' are): wait for them.
    const denied = async (): Promise<Array<[string, string, string | undefined]>> =>
      (await g.queryAuditLog({ principal: 'mallory', result: 'denied' })).map((e) => [e.action, e.object, e.code])
    await until('the seven denials are in the audit log', async () => (await denied()).length >= 7, 10_000)
    await g.close()

    const reopened = await GalleonFS.open({ storagePath })
    try {
      const entries = await reopened.queryAuditLog({ principal: 'mallory' })
      assert.deepEqual(entries.map((e) => [e.action, e.object, e.result, e.code]).sort(), [
        ['as', 'instance', 'denied', 'PERMISSION_DENIED'],
        ['as', 'instance', 'denied', 'PERMISSION_DENIED'],
        ['as', 'instance', 'denied', 'PERMISSION_DENIED'],
        ['emit', 'events', 'denied', 'PERMISSION_DENIED'],
        ['on', 'events', 'denied', 'PERMISSION_DENIED'],
        ['runAs', 'instance', 'denied', 'PERMISSION_DENIED'],
        ['setReplicationHook', 'instance', 'denied', 'PERMISSION_DENIED']
      ])
      // Who it tried to become is in the entry (when its id could be read).
      assert.deepEqual(entries.filter((e) => e.action === 'as' || e.action === 'runAs').map((e) => String(e.details?.asPrincipal)).sort(), ['root', 'root', 'root', 'undefined'])
      assert.equal((await reopened.verifyAuditLog()).ok, true)
    } finally {
      await reopened.close()
    }
  })
})
