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

/** Holds the event loop's thread, without a turn, for longer than a synchronous streak may last. */
function holdLoop (): void {
  const until = performance.now() + MAX_SYNC_STREAK_MS + 2
  while (performance.now() < until) { /* busy: the loop must not turn */ }
}

describe('file store: reads of scattered records', () => {
  it('reads every run synchronously, into one buffer for the whole call', async () => {
    await withTempDir('galleon-scattered-', async (dir) => {
      const store = await scatteredStore(dir)
      try {
        const before = store.readCalls
        const values = await store.getMany(addresses())
        for (let i = 0; i < BLOCKS; i++) assertBytes(values[i], bytesOf(VALUE_BYTES, i), `block ${i}`)
        assert.equal(store.readCalls.sync - before.sync, BLOCKS, 'one synchronous read per run')
        assert.equal(store.readCalls.pool - before.pool, 0, 'no read went through the thread pool')
        const buffers = new Set(values.map((v) => v?.buffer))
        assert.equal(buffers.size, 1, `the values came from ${buffers.size} buffers`)
        // Released, the shared buffer serves the next read.
        store.releaseValues(values)
        const again = await store.getMany(addresses())
        assert.equal(again[0]?.buffer, values[0]?.buffer, 'the released buffer was not reused')
        for (let i = 0; i < BLOCKS; i++) assertBytes(again[i], bytesOf(VALUE_BYTES, i), `block ${i} (again)`)
      } finally {
        await store.close()
      }
    })
  })

  it('after a long streak without a turn of the event loop, waits for a turn instead of using the thread pool', async () => {
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
        assert.equal(store.readCalls.pool - before.pool, 0, 'reads went through the thread pool')
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
