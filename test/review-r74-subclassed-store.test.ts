// Review r74: a subclass of a built-in block store is the application's code, not GalleonFS's:
// open() puts it behind the same guard as any other store it did not write (a subclass that
// overrides get() to reuse one buffer, or to answer with something other than bytes, gets what a
// plain-object store gets), while the built-in stores themselves still go unguarded.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { MemoryLevel } from 'memory-level'
import { GalleonFS } from '../src/index.js'
import type { BlockAddress, BlockReadOptions } from '../src/drivers.js'
import { MemoryBlockStore } from '../backends/memory/index.js'

/** A memory store whose get() answers every read in one buffer, as a binding with a preallocated output buffer does. */
class SharedBufferStore extends MemoryBlockStore {
  #shared: Uint8Array | undefined
  override async get (address: BlockAddress, options?: BlockReadOptions): Promise<Uint8Array | undefined> {
    const value = await super.get(address, options)
    if (value === undefined) return undefined
    this.#shared ??= new Uint8Array(value.byteLength)
    this.#shared.set(value)
    return this.#shared
  }
}

/** A memory store whose get() answers with text, as a driver that forgot to decode does. */
class TextStore extends MemoryBlockStore {
  override async get (address: BlockAddress, options?: BlockReadOptions): Promise<Uint8Array | undefined> {
    const value = await super.get(address, options)
    return (value === undefined ? undefined : 'not bytes') as unknown as Uint8Array
  }
}

describe('review r74: a subclass of a built-in block store', () => {
  it('that reuses the buffer it answered get() with does not change blocks the engine cached', async () => {
    const g = await GalleonFS.open({ metadata: new MemoryLevel() as never, blockStore: new SharedBufferStore(), cacheBlocks: 16 })
    try {
      const vol = await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.writeBlock(vol, 0, new Uint8Array(4096).fill(3))
      await g.writeBlock(vol, 1, new Uint8Array(4096).fill(5))
      assert.equal((await g.readBlock(vol, 0))[0], 3)
      assert.equal((await g.readBlock(vol, 1))[0], 5)
      assert.equal((await g.readBlock(vol, 0))[0], 3, 'block 0 read from the cache after the store reused its buffer for block 1')
    } finally {
      await g.close()
    }
  })

  it('whose get() answers with something other than bytes is IO_ERROR naming the contract, not a checksum mismatch', async () => {
    const g = await GalleonFS.open({ metadata: new MemoryLevel() as never, blockStore: new TextStore(), cacheBlocks: 0 })
    const mismatches: unknown[] = []
    g.on('checksum:mismatch', (event) => { mismatches.push(event) })
    try {
      const vol = await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.writeBlock(vol, 0, new Uint8Array(4096).fill(3))
      await assert.rejects(g.readBlock(vol, 0), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'IO_ERROR', err.message)
        assert.match(err.message, /broke the BlockStore contract/)
        return true
      })
      assert.deepEqual(mismatches, [], 'no checksum:mismatch event for a driver bug')
    } finally {
      await g.close().catch(() => {})
    }
  })
})
