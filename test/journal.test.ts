// Tests of the write journal: ordering, LSNs, group commit, deferred ops and failure propagation.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WriteJournal } from '../src/engine/journal.js'
import { MemoryBlockStore } from '../backends/memory/index.js'
import type { BlockOp } from '../src/drivers.js'
import { GalleonError } from '../src/errors.js'

/** A memory store that records every batch it receives and can be told to fail. */
class RecordingStore extends MemoryBlockStore {
  batches: Array<{ ops: number, sync: boolean }> = []
  failNext = false
  protected override async _batch (ops: readonly BlockOp[], sync?: boolean): Promise<void> {
    const fail = this.failNext
    this.failNext = false
    await new Promise((resolve) => setImmediate(resolve))
    if (fail) throw new GalleonError('IO_ERROR', 'injected failure')
    this.batches.push({ ops: ops.length, sync: sync === true })
    await super._batch(ops)
  }
}

function put (index: number, gen: number, byte = index): BlockOp {
  return { type: 'put', address: { volume: 1, index, gen }, data: Uint8Array.of(byte) }
}

describe('WriteJournal', () => {
  it('assigns increasing LSNs and applies entries in append order', async () => {
    const store = new RecordingStore()
    await store.open()
    const journal = new WriteJournal(store)
    const lsns = await Promise.all([
      journal.append([put(1, 1, 10)], false),
      journal.append([put(1, 1, 20)], false),
      journal.append([{ type: 'del', address: { volume: 1, index: 1, gen: 1 } }, put(1, 1, 30)], false)
    ])
    assert.deepEqual(lsns, [1, 2, 3])
    assert.equal(journal.committedLsn, 3)
    assert.deepEqual(await store.get({ volume: 1, index: 1, gen: 1 }), Uint8Array.of(30))
  })
  it('keeps several groups in flight and merges what queues behind them, syncing if any waiter needs it', async () => {
    const store = new RecordingStore()
    await store.open()
    const journal = new WriteJournal(store, { maxInFlight: 2 })
    // Entries are issued from a microtask: one appended alone in a tick goes out alone.
    const first = journal.append([put(0, 1)], false)
    await null
    const second = journal.append([put(1, 1)], false)
    await null
    const rest = Array.from({ length: 30 }, async (_, i) => await journal.append([put(i + 2, 1)], i === 5))
    await Promise.all([first, second, ...rest])
    // Two appends go out at once; the 30 queued behind them share one synced batch.
    assert.deepEqual(store.batches, [{ ops: 1, sync: false }, { ops: 1, sync: false }, { ops: 30, sync: true }])
    assert.deepEqual(journal.stats, { groups: 3, syncs: 1 })
    assert.equal(journal.committedLsn, 32)
  })
  it('issues the entries appended in one tick as one batch, with one sync if any needs it', async () => {
    const store = new RecordingStore()
    await store.open()
    const journal = new WriteJournal(store)
    const lsns = await Promise.all(Array.from({ length: 8 }, async (_, i) => await journal.append([put(i, 1)], i === 3)))
    assert.deepEqual(lsns, [1, 2, 3, 4, 5, 6, 7, 8])
    assert.deepEqual(store.batches, [{ ops: 8, sync: true }])
    assert.deepEqual(journal.stats, { groups: 1, syncs: 1 })
  })
  it('flush(false) waits for groups still queued behind the in-flight limit', async () => {
    const store = new RecordingStore()
    await store.open()
    const journal = new WriteJournal(store, { maxInFlight: 1 })
    void journal.append([put(0, 1)], false)
    void journal.append([put(1, 1)], false)
    await journal.flush(false)
    assert.deepEqual(await store.get({ volume: 1, index: 1, gen: 1 }), Uint8Array.of(1))
    assert.equal(journal.committedLsn, 3)
  })
  it('carries deferred ops with the next group and flush applies them', async () => {
    const store = new RecordingStore()
    await store.open()
    const journal = new WriteJournal(store)
    await journal.append([put(1, 1)], false)
    journal.defer([{ type: 'del', address: { volume: 1, index: 1, gen: 1 } }])
    assert.notEqual(await store.get({ volume: 1, index: 1, gen: 1 }), undefined)
    await journal.append([put(2, 2)], false)
    assert.equal(await store.get({ volume: 1, index: 1, gen: 1 }), undefined)
    journal.defer([{ type: 'del', address: { volume: 1, index: 2, gen: 2 } }])
    await journal.flush(false)
    assert.equal(await store.get({ volume: 1, index: 2, gen: 2 }), undefined)
    await journal.flush(true)
    assert.equal(store.batches.at(-1)?.sync, true)
  })
  it('rejects the waiters of a store that throws instead of rejecting', async () => {
    const store = new RecordingStore()
    await store.open()
    let throwNext = true
    const batch = store.batch.bind(store)
    store.batch = (ops, options) => {
      if (throwNext) { throwNext = false; throw new GalleonError('IO_ERROR', 'thrown, not rejected') }
      return batch(ops, options)
    }
    const journal = new WriteJournal(store)
    const results = await Promise.allSettled([journal.append([put(1, 1)], false), journal.append([put(2, 1)], true)])
    assert.deepEqual(results.map((r) => r.status), ['rejected', 'rejected'])
    assert.equal(await journal.append([put(3, 1)], true), 3)
  })
  it('rejects every waiter of a failed group and keeps working afterwards', async () => {
    const store = new RecordingStore()
    await store.open()
    const journal = new WriteJournal(store, { maxInFlight: 1 })
    // The first append is issued (from a microtask); the next two queue behind it and form one group.
    const blocker = journal.append([put(0, 1)], false)
    await null
    const group = [journal.append([put(1, 1)], true), journal.append([put(2, 1)], false)]
    store.failNext = true
    await blocker
    const results = await Promise.allSettled(group)
    assert.deepEqual(results.map((r) => r.status), ['rejected', 'rejected'])
    for (const r of results) assert.equal(((r as PromiseRejectedResult).reason as GalleonError).code, 'IO_ERROR')
    assert.equal(await store.get({ volume: 1, index: 1, gen: 1 }), undefined)
    assert.equal(await journal.append([put(3, 1)], true), 4)
    assert.deepEqual(await store.get({ volume: 1, index: 3, gen: 1 }), Uint8Array.of(3))
  })
})
