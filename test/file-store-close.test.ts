// The file block store (real segment files) closed under an addresses() scan: the scan ends with
// NOT_OPEN, as the level store's does, never with a silently short list.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FileBlockStore } from '../backends/file/index.js'
import { addr, bytesOf, collect, put } from './conformance/fixtures.js'

const BLOCKS = 3000

async function withStore (body: (store: FileBlockStore) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'galleon-file-close-'))
  const store = new FileBlockStore({ location: join(dir, 'blocks') })
  try {
    await store.open()
    await store.batch(Array.from({ length: BLOCKS }, (_, i) => put(addr(1, i), bytesOf(16, i))))
    await body(store)
  } finally {
    await store.close()
    await rm(dir, { recursive: true, force: true })
  }
}

/** Walks the rest of a scan: how many addresses it gave, and the code it ended with. */
async function finish (scan: AsyncIterator<unknown>): Promise<{ seen: number, code: unknown }> {
  let seen = 0
  try {
    while ((await scan.next()).done !== true) seen++
    return { seen, code: 'ended' }
  } catch (err) {
    return { seen, code: (err as { code?: unknown }).code }
  }
}

describe('file block store: addresses() and close()', () => {
  it('a scan that outlives close() rejects with NOT_OPEN instead of ending early', async () => {
    await withStore(async (store) => {
      const scan = store.addresses()[Symbol.asyncIterator]()
      assert.equal((await scan.next()).done, false)
      await store.close()
      const outcome = await finish(scan)
      assert.equal(outcome.code, 'NOT_OPEN', `the scan ended with ${String(outcome.code)} after ${outcome.seen + 1} of ${BLOCKS} addresses`)
      await store.open()
    })
  })

  it('a scan across close() and open() rejects with NOT_OPEN too; a new scan lists everything', async () => {
    await withStore(async (store) => {
      const scan = store.addresses({ volume: 1 })[Symbol.asyncIterator]()
      assert.equal((await scan.next()).done, false)
      await store.close()
      await store.open()
      const outcome = await finish(scan)
      assert.equal(outcome.code, 'NOT_OPEN', `the scan ended with ${String(outcome.code)} after ${outcome.seen + 1} of ${BLOCKS} addresses`)
      assert.equal((await collect(store.addresses({ volume: 1 }))).length, BLOCKS)
    })
  })

  it('a scan that close() begins under rejects with NOT_OPEN while the store closes', async () => {
    await withStore(async (store) => {
      const scan = store.addresses()[Symbol.asyncIterator]()
      assert.equal((await scan.next()).done, false)
      const closing = store.close()
      const outcome = await finish(scan)
      await closing
      assert.equal(outcome.code, 'NOT_OPEN', `the scan ended with ${String(outcome.code)} after ${outcome.seen + 1} of ${BLOCKS} addresses`)
      await store.open()
      // Writes and deletes during a scan of an open store are not a close: the scan completes.
      const listed: unknown[] = []
      for await (const address of store.addresses()) {
        if (listed.length === 0) await store.batch([put(addr(2, 0), bytesOf(16, 1))])
        listed.push(address)
      }
      assert.equal(listed.length, BLOCKS)
    })
  })
})
