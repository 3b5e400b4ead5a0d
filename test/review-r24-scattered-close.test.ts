// Review r24 of 0f9bd36: a multi-block read of scattered records that finds the event loop held for
// MAX_SYNC_STREAK_MS waits for a turn, then looks the rest of its records up again. close() may
// have begun meanwhile (it closes the segment files, then drops the index): the read must then fail
// with NOT_OPEN, as any call on a closing store does, or return the stored values; never report the
// store damaged (CORRUPTION: "points to segment 1, which is gone") nor stored blocks as missing.
// Before 0f9bd36 every read of one call started in the same tick, and close() waited for them.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { FileBlockStore } from '../backends/file/index.js'
import type { BlockAddress } from '../src/drivers.js'
import { MAX_SYNC_STREAK_MS } from '../src/loop-streak.js'
import { addr, assertBytes, bytesOf, put } from './conformance/fixtures.js'
import { withTempDir } from './support/temp-dir.js'

const BLOCKS = 64
const VALUE_BYTES = 4104

/** Holds the event loop's thread, without a turn, for longer than a synchronous streak may last. */
function holdLoop (): void {
  const until = performance.now() + MAX_SYNC_STREAK_MS + 1
  while (performance.now() < until) { /* busy: the loop must not turn */ }
}

describe('review r24: a scattered read that waits for a turn while the store closes', () => {
  it('fails with NOT_OPEN or returns the stored values, never CORRUPTION or missing blocks', async () => {
    await withTempDir('galleon-r24-', async (dir) => {
      const store = new FileBlockStore({ location: dir })
      await store.open()
      // Blocks of volume 1, each followed in the log by one of volume 2: one run per record.
      const ops = []
      for (let i = 0; i < BLOCKS; i++) ops.push(put(addr(1, i), bytesOf(VALUE_BYTES, i)), put(addr(2, i), bytesOf(VALUE_BYTES, 1000 + i)))
      await store.batch(ops, { sync: true })

      // Another large scattered read already under way (past the open check, as every read a
      // closing store still serves is): in each turn of the loop it reads first, for longer than a
      // streak may last, so the read below keeps waiting for a turn until the close is done.
      const inFlight = store as unknown as { _getMany: (addresses: BlockAddress[], payloadChecked: boolean) => Promise<unknown> }
      let closed = false
      const otherReader = (): void => {
        if (closed) return
        inFlight._getMany([addr(2, 0), addr(2, 2)], false).catch(() => {})
        holdLoop()
        setImmediate(otherReader)
      }
      void store.getMany([addr(1, 0)])
      holdLoop()
      setImmediate(otherReader)
      const reading = store.getMany(Array.from({ length: BLOCKS }, (_, i) => addr(1, i)))
        .then((values) => ({ values }), (err: unknown) => ({ err }))
      await store.close()
      closed = true

      const outcome = await reading
      if ('err' in outcome) {
        assert.equal((outcome.err as { code?: string }).code, 'NOT_OPEN', `the read in flight at close() failed with ${String(outcome.err)}`)
        return
      }
      const missing = outcome.values.filter((v) => v === undefined).length
      assert.equal(missing, 0, `${missing} of ${BLOCKS} stored blocks read as missing once the store had closed`)
      for (let i = 0; i < BLOCKS; i++) assertBytes(outcome.values[i], bytesOf(VALUE_BYTES, i), `block ${i}`)
    })
  })
})
