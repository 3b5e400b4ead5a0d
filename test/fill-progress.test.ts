// FillProgress: the progress a migration reports while copies on other nodes fill, sampled from a
// replication status that changes under it (a stand-in for the ReplicationManager's status()).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { FillProgress } from '../src/facade/fill-progress.js'
import type { ReplicationManager } from '../src/replication/manager.js'

interface Link { node: string, resync?: { blocksDone: number, blocksTotal: number } }

/** A status source the test sets between samples. */
function statusSource (): { replication: ReplicationManager, set: (links: Link[], inSync: string[]) => void } {
  let current: { links: Link[], inSync: string[] } = { links: [], inSync: [] }
  const replication = { status: () => current } as unknown as ReplicationManager
  return { replication, set: (links, inSync) => { current = { links, inSync } } }
}

describe('FillProgress', () => {
  it('counts a copy whose resync ended and which is in sync as filled at the next sample, while another copy still fills', () => {
    const { replication, set } = statusSource()
    const fill = new FillProgress(replication, 'v', 100)
    set([{ node: 'a', resync: { blocksDone: 40, blocksTotal: 100 } }, { node: 'b', resync: { blocksDone: 10, blocksTotal: 100 } }], ['self'])
    assert.equal(fill.sample(['a', 'b']), true)
    assert.deepEqual([fill.done, fill.total], [50, 200])
    // a finished: its link has no resync any more and it is in sync; b goes on.
    set([{ node: 'a' }, { node: 'b', resync: { blocksDone: 20, blocksTotal: 100 } }], ['self', 'a'])
    assert.equal(fill.sample(['a', 'b']), true)
    assert.deepEqual([fill.done, fill.total], [120, 200], 'a counts whole (100) and b its 20')
    assert.deepEqual(fill.finish(['a', 'b']), { done: 200, total: 200 })
  })

  it('keeps the last figure of a copy whose resync stopped without it coming in sync, and never goes backwards when a resync starts over', () => {
    const { replication, set } = statusSource()
    const fill = new FillProgress(replication, 'v', 100)
    set([{ node: 'a', resync: { blocksDone: 60, blocksTotal: 100 } }], ['self'])
    fill.sample(['a'])
    // The resync broke off (the link is retrying): not in sync, so not counted as filled.
    set([{ node: 'a' }], ['self'])
    assert.equal(fill.sample(['a']), false)
    assert.deepEqual([fill.done, fill.total], [60, 100])
    // It starts over from zero: the figures stay where they were.
    set([{ node: 'a', resync: { blocksDone: 5, blocksTotal: 100 } }], ['self'])
    assert.equal(fill.sample(['a']), false)
    assert.deepEqual([fill.done, fill.total], [60, 100])
    set([{ node: 'a', resync: { blocksDone: 90, blocksTotal: 100 } }], ['self'])
    assert.equal(fill.sample(['a']), true)
    assert.deepEqual([fill.done, fill.total], [90, 100])
  })

  it('counts a copy that filled between two samples (never seen filling) as the whole volume at finish', () => {
    const { replication, set } = statusSource()
    const fill = new FillProgress(replication, 'v', 64)
    set([{ node: 'a' }], ['self', 'a'])
    assert.equal(fill.sample(['a']), false, 'never seen: nothing to count yet')
    assert.deepEqual(fill.finish(['a']), { done: 64, total: 64 })
  })
})
