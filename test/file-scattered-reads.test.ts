// Multi-block reads of records that random writes scattered over the file store's log (one run per
// record): the runs are read synchronously into one shared buffer, and once the event loop has not
// turned for MAX_SYNC_STREAK_MS the rest waits for a turn and is looked up again, instead of going
// through the thread pool one small read at a time.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { FileBlockStore } from '../backends/file/index.js'
import { MAX_SYNC_STREAK_MS } from '../src/loop-streak.js'
import { addr, assertBytes, bytesOf, del, put } from './conformance/fixtures.js'
import { withTempDir } from './support/temp-dir.js'

const BLOCKS = 64
const VALUE_BYTES = 4104

/** A store holding blocks 0..BLOCKS-1 of volume 1, each followed in the log by a block of volume 2: every one is a run of its own. */
async function scatteredStore (dir: string): Promise<FileBlockStore> {
  const store = new FileBlockStore({ location: dir })
  await store.open()
  const ops = []
  for (let i = 0; i < BLOCKS; i++) ops.push(put(addr(1, i), bytesOf(VALUE_BYTES, i)), put(addr(2, i), bytesOf(VALUE_BYTES, 1000 + i)))
  await store.batch(ops, { sync: true })
  return store
}

function addresses (): ReturnType<typeof addr>[] {
  return Array.from({ length: BLOCKS }, (_, i) => addr(1, i))
}

/** Counts the turns of the event loop while `task` runs (the counter's turn is queued first). */
async function countingTurns<T> (task: () => Promise<T>): Promise<{ value: T, turns: number }> {
  let turns = 0
  let settled = false
  const tick = (): void => { if (!settled) { turns++; setImmediate(tick) } }
  setImmediate(tick)
  try {
    return { value: await task(), turns }
  } finally {
    settled = true
  }
}

/**
 * Whether the store's read governor is sending reads to the thread pool now (it does for a second
 * after reads came out slow: on a loaded machine a cached read can, when the thread is preempted).
 * A probe: one small read, and whether it went through the pool.
 */
async function governorBackedOff (store: FileBlockStore): Promise<boolean> {
  const before = store.readCalls.pool
  await store.get(addr(2, 0))
  return store.readCalls.pool > before
}

/** Holds the event loop's thread, without a turn, for longer than a synchronous streak may last. */
function holdLoop (): void {
  const until = performance.now() + MAX_SYNC_STREAK_MS + 2
  while (performance.now() < until) { /* busy: the loop must not turn */ }
}

describe('file store: reads of scattered records', () => {
  it('reads every run synchronously, into one buffer for the whole call', async (t) => {
    await withTempDir('galleon-scattered-', async (dir) => {
      const store = await scatteredStore(dir)
      try {
        const before = store.readCalls
        const { value: values, turns } = await countingTurns(async () => await store.getMany(addresses()))
        for (let i = 0; i < BLOCKS; i++) assertBytes(values[i], bytesOf(VALUE_BYTES, i), `block ${i}`)
        assert.equal(store.readCalls.sync + store.readCalls.pool - before.sync - before.pool, BLOCKS, 'one read per run')
        if (store.readCalls.pool > before.pool) {
          // The governor backed off to the thread pool (reads came out slow on a loaded machine):
          // each run then has a buffer of its own, by design.
          t.diagnostic(`${store.readCalls.pool - before.pool} reads went through the thread pool (slow reads on a loaded machine): sharing not checked`)
          return
        }
        // One buffer, and one more for each time the read waited for a turn of the loop.
        const buffers = new Set(values.map((v) => v?.buffer))
        assert.ok(buffers.size <= 1 + turns, `the values came from ${buffers.size} buffers in ${turns} turns of the event loop`)
        // Released, a shared buffer serves the next read.
        store.releaseValues(values)
        const again = await store.getMany(addresses())
        assert.ok(again.some((value) => buffers.has(value?.buffer)), 'the released buffer was not reused')
        for (let i = 0; i < BLOCKS; i++) assertBytes(again[i], bytesOf(VALUE_BYTES, i), `block ${i} (again)`)
      } finally {
        await store.close()
      }
    })
  })

  it('a large scattered read shares buffers of at most 1,088 KiB, together no larger than its records', async () => {
    await withTempDir('galleon-scattered-', async (dir) => {
      const store = new FileBlockStore({ location: dir })
      await store.open()
      try {
        // Before: one buffer for all the runs left at each turn of the loop (a 64 MiB read held 191 MiB).
        const count = 800
        const ops = []
        for (let i = 0; i < count; i++) ops.push(put(addr(1, i), bytesOf(VALUE_BYTES, i)), put(addr(2, i), bytesOf(VALUE_BYTES, 1000 + i)))
        await store.batch(ops, { sync: true })
        const { value: values, turns } = await countingTurns(async () => await store.getMany(Array.from({ length: count }, (_, i) => addr(1, i))))
        for (let i = 0; i < count; i++) assertBytes(values[i], bytesOf(VALUE_BYTES, i), `block ${i}`)
        const buffers = new Set(values.map((v) => v?.buffer as ArrayBuffer))
        const largest = Math.max(...[...buffers].map((b) => b.byteLength))
        const total = [...buffers].reduce((sum, b) => sum + b.byteLength, 0)
        assert.ok(largest <= 1088 * 1024, `a buffer of ${largest} bytes`)
        // Records with their headers, plus at most one 64 KiB rounding step per buffer, and the
        // unused rest of one buffer each time the read waited for a turn of the event loop.
        const records = count * (VALUE_BYTES + 36)
        assert.ok(total <= records + buffers.size * 64 * 1024 + turns * 1088 * 1024, `${total} bytes of buffers for ${records} bytes of records (${turns} turns)`)
      } finally {
        await store.close()
      }
    })
  })

  it('after a long streak without a turn of the event loop, waits for a turn instead of using the thread pool', async (t) => {
    await withTempDir('galleon-scattered-', async (dir) => {
      const store = await scatteredStore(dir)
      try {
        const before = store.readCalls
        // The first read starts a streak; the loop is then held past its limit.
        const first = store.getMany([addr(1, 0)])
        holdLoop()
        let turned = false
        setImmediate(() => { turned = true })
        const values = await store.getMany(addresses())
        assert.equal(turned, true, 'the read resolved without letting the event loop turn')
        for (let i = 0; i < BLOCKS; i++) assertBytes(values[i], bytesOf(VALUE_BYTES, i), `block ${i}`)
        assertBytes((await first)[0], bytesOf(VALUE_BYTES, 0))
        const pooled = store.readCalls.pool - before.pool
        if (pooled > 0 && await governorBackedOff(store)) {
          t.diagnostic(`${pooled} reads went through the thread pool while the governor had backed off (slow reads on a loaded machine): not checked`)
          return
        }
        assert.equal(pooled, 0, 'reads went through the thread pool')
      } finally {
        await store.close()
      }
    })
  })

  it('looks the records up again after the turn: one deleted meanwhile reads as missing, the others as stored', async () => {
    await withTempDir('galleon-scattered-', async (dir) => {
      const store = await scatteredStore(dir)
      try {
        void store.getMany([addr(1, 0)])
        holdLoop()
        const reading = store.getMany(addresses())
        // Before the loop turns (the delete is in the index as soon as batch() is called).
        const deleted = store.batch([del(addr(1, 7))])
        const values = await reading
        await deleted
        assert.equal(values[7], undefined, 'a version deleted before the read got its turn was returned')
        for (let i = 0; i < BLOCKS; i++) if (i !== 7) assertBytes(values[i], bytesOf(VALUE_BYTES, i), `block ${i}`)
      } finally {
        await store.close()
      }
    })
  })
})
