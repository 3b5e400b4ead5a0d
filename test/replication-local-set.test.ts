// The local state of one replicated volume (src/replication/common.ts): its `record` setter tells the
// watchers of forwarded calls when the primary it names changes, so that a call waiting on a primary
// the record no longer names moves to the new one at once (the end-to-end case is in
// review-r15-replication.test.ts: a read lost on its way to a primary that then stopped).

import { it } from 'node:test'
import assert from 'node:assert/strict'
import { newLocalSet } from '../src/replication/common.js'
import type { ReplicaSetRecord } from '../src/replication/records.js'

function record (primary: string, epoch: number): ReplicaSetRecord {
  return { primary, epoch, nodes: ['a', 'b'], inSync: ['a', 'b'], spec: {} } as unknown as ReplicaSetRecord
}

it('calls the primary watchers when the record names another primary or none, and only then', () => {
  const set = newLocalSet('vol', { epoch: 0, seq: 0 })
  const seen: Array<string | undefined> = []
  const watcher = (): void => { seen.push(set.record?.primary) }
  set.primaryWatchers.add(watcher)
  set.record = record('a', 1)
  set.record = record('a', 1) // the same primary again (a newer revision of the record): no call
  set.record = { ...record('a', 1), inSync: ['a'] }
  set.record = record('b', 2)
  set.record = undefined
  set.record = undefined
  assert.deepEqual(seen, ['a', 'b', undefined], 'the watcher sees each new primary, the record already in place')
  set.primaryWatchers.delete(watcher)
  set.record = record('c', 3)
  assert.equal(seen.length, 3, 'a removed watcher is not called')
  assert.equal(set.record?.primary, 'c')
})

it('lets a watcher remove itself while the watchers are being called', () => {
  const set = newLocalSet('vol', { epoch: 0, seq: 0 })
  const calls: string[] = []
  const first = (): void => { calls.push('first'); set.primaryWatchers.delete(first) }
  const second = (): void => { calls.push('second') }
  set.primaryWatchers.add(first)
  set.primaryWatchers.add(second)
  set.record = record('a', 1)
  set.record = record('b', 2)
  assert.deepEqual(calls, ['first', 'second', 'second'])
})
