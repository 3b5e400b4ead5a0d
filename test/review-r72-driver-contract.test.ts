// Review r72: a user's block store that breaks the BlockStore contract (values of the wrong type,
// non-Errors thrown, no promise from batch(), buffers it reuses after handing them out, supports
// that are not booleans) gets a GalleonError naming the store and the rule, not a TypeError, a
// crash, a raw string through the public API or wrong data served later.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { MemoryLevel } from 'memory-level'
import { GalleonFS, WriteConcern, registerDriver, unregisterDriver, type BlockStore } from '../src/index.js'
import { MemoryBlockStore } from '../backends/memory/index.js'

type Overrides = Partial<Record<keyof BlockStore, unknown>>

/** A memory store behind a plain object (as a hand-written JS driver), with `overrides` replacing members. */
function hostile (overrides: (inner: MemoryBlockStore) => Overrides = () => ({})): BlockStore {
  const inner = new MemoryBlockStore()
  const store: Record<string, unknown> = {
    name: 'hostile',
    supports: { persistent: true, durableSync: true, atomicBatch: true, reclaimsSpace: true },
    open: async () => { await inner.open() },
    close: async () => { await inner.close() },
    get: async (address: never, options: never) => await inner.get(address, options),
    batch: async (ops: never, options: never) => { await inner.batch(ops, options) },
    sync: async () => { await inner.sync() },
    addresses: (options: never) => inner.addresses(options),
    deleteVolume: async (volume: number) => { await inner.deleteVolume(volume) },
    stats: async () => await inner.stats()
  }
  Object.defineProperty(store, 'status', { get: () => inner.status })
  Object.assign(store, overrides(inner))
  return store as unknown as BlockStore
}

async function openOn (blockStore: BlockStore, cacheBlocks = 0): Promise<GalleonFS> {
  return await GalleonFS.open({ metadata: new MemoryLevel() as never, blockStore, cacheBlocks })
}

/** The store's own contract breach: IO_ERROR naming the store and the rule. */
const breach = (rule: RegExp) => (err: unknown): boolean => {
  const { code, name, message } = err as { code?: string, name?: string, message?: string }
  assert.equal(name, 'GalleonError', `got ${String(err)}`)
  assert.equal(code, 'IO_ERROR', message)
  assert.match(message ?? '', /block store 'hostile'/)
  assert.match(message ?? '', rule)
  return true
}

describe('review r72: a block store that breaks its contract', () => {
  it('get() resolving to something other than bytes is IO_ERROR naming the store, not a checksum mismatch or a TypeError', async () => {
    for (const wrong of ['hello', 42, null, [1, 2, 3], { length: 4104 }]) {
      let serveWrong = false
      const g = await openOn(hostile((inner) => ({ get: async (address: never) => serveWrong ? wrong : await inner.get(address) })))
      try {
        const mismatches: unknown[] = []
        g.on('checksum:mismatch', (event) => mismatches.push(event))
        const vol = await g.createVolume({ name: 'v', sizeBytes: '1M' })
        await g.write(vol, 0, new Uint8Array(4096).fill(3))
        serveWrong = true
        await assert.rejects(g.read(vol, 0, 4096), breach(/get\(\) must resolve to a Uint8Array/))
        await assert.rejects(g.read(vol, 0, 8192), breach(/must resolve to a Uint8Array|each value of getMany\(\)/))
        assert.deepEqual(mismatches, [], 'the data is not damaged: the driver broke its contract')
        serveWrong = false
        assert.equal((await g.read(vol, 0, 4096))[0], 3)
      } finally {
        await g.close()
      }
    }
  })

  it('a store that throws or rejects with a non-Error gets a GalleonError naming it, in reads, writes and flushes', async () => {
    for (const thrown of ['boom', undefined, null, { code: 'ENOENT' }]) {
      let failReads = false
      let failWrites = false
      const g = await openOn(hostile((inner) => ({
        get: async (address: never) => { if (failReads) throw thrown; return await inner.get(address) },
        batch: (ops: never, options: never) => failWrites ? Promise.reject(thrown) : inner.batch(ops, options)
      })))
      const vol = await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.write(vol, 0, new Uint8Array(4096).fill(3))
      failReads = true
      await assert.rejects(g.read(vol, 0, 4096), breach(/its get\(\) threw .*, not an Error/))
      failWrites = true
      await assert.rejects(g.write(vol, 0, new Uint8Array(4096)), breach(/its batch\(\) threw .*, not an Error/))
      await assert.rejects(g.flush(vol), breach(/its batch\(\) threw/))
      await assert.rejects(g.close(), breach(/its batch\(\) threw/))
    }
  })

  it("a store's own Errors come out as IO_ERROR naming it, and a full disk as NO_SPACE", async () => {
    let failure: Error | undefined
    const g = await openOn(hostile((inner) => ({ batch: async (ops: never, options: never) => { if (failure !== undefined) throw failure; await inner.batch(ops, options) } })))
    const vol = await g.createVolume({ name: 'v', sizeBytes: '1M' })
    failure = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' })
    await assert.rejects(g.write(vol, 0, new Uint8Array(4096)), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'NO_SPACE', err.message)
      assert.match(err.message, /block store 'hostile' failed in batch\(\)/)
      return true
    })
    await assert.rejects(g.close(), { code: 'NO_SPACE' })
  })

  it('batch() returning no promise fails the write with IO_ERROR instead of crashing the process', async () => {
    const g = await openOn(hostile((inner) => ({ batch: (ops: never, options: never) => { void inner.batch(ops, options) } })))
    const vol = await g.createVolume({ name: 'v', sizeBytes: '1M' })
    await assert.rejects(g.write(vol, 0, new Uint8Array(4096)), breach(/batch\(\) must return a promise/))
    await assert.rejects(g.close(), breach(/batch\(\) must return a promise/))
  })

  it('a store that reuses the buffer it returned from get() does not change blocks the engine cached', async () => {
    let shared: Uint8Array | undefined
    const g = await openOn(hostile((inner) => ({
      get: async (address: never) => {
        const value = await inner.get(address)
        if (value === undefined) return undefined
        shared ??= new Uint8Array(value.byteLength)
        shared.set(value)
        return shared
      }
    })), 16)
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

  it('open() refuses, with INVALID_ARGUMENT naming what is wrong, supports that are not booleans, a missing method or name', async () => {
    const cases: Array<[string, BlockStore, RegExp]> = [
      ['string supports', hostile(() => ({ supports: { persistent: 'yes', durableSync: 'no', atomicBatch: true, reclaimsSpace: true } })), /supports\.persistent \(true or false, got "yes"\), supports\.durableSync/],
      ['supports missing', hostile(() => ({ supports: undefined })), /supports \(an object\)/],
      ['no sync()', hostile(() => ({ sync: undefined })), /lacks sync/],
      ['a number for a name', hostile(() => ({ name: 7 })), /name \(a non-empty string\)/],
      ['not an object', 'file' as unknown as BlockStore, /blockStore must be a block store/]
    ]
    for (const [label, store, pattern] of cases) {
      await assert.rejects(openOn(store), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'INVALID_ARGUMENT', `${label}: ${err.message}`)
        assert.match(err.message, pattern, label)
        return true
      })
    }
  })

  it('a registered block store whose create() returns one with non-boolean supports is refused by name', async () => {
    registerDriver({ kind: 'blockStore', name: 'r72-truthy', create: () => hostile(() => ({ supports: { persistent: true, durableSync: 1, atomicBatch: true, reclaimsSpace: true } })) })
    try {
      await assert.rejects(GalleonFS.open({ metadata: new MemoryLevel() as never, backend: 'r72-truthy' }), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'INVALID_ARGUMENT', err.message)
        assert.match(err.message, /'hostile'.*supports\.durableSync \(true or false, got 1\)/)
        return true
      })
    } finally {
      unregisterDriver('blockStore', 'r72-truthy')
    }
  })

  it('stats() and addresses() of the wrong shape are IO_ERROR naming the store', async () => {
    await assert.rejects(openOn(hostile(() => ({ addresses: () => null }))), breach(/addresses\(\) must return an async iterable/))
    await assert.rejects(openOn(hostile(() => ({ addresses: () => [{ volume: 'x', index: 0, gen: 0 }] }))), breach(/addresses\(\) must yield \{ volume, index, gen \}/))
    const g = await openOn(hostile((inner) => ({ stats: async () => ({ ...await inner.stats(), liveBytes: Number.NaN }) })))
    try {
      await assert.rejects(g.getStorageStats(), breach(/liveBytes as non-negative integers, got liveBytes NaN/))
    } finally {
      await g.close()
    }
  })

  it('a well-behaved plain-object store works as before, WriteDurable included', async () => {
    const g = await openOn(hostile())
    try {
      assert.equal(g.durable, true)
      assert.equal(g.backend, 'hostile')
      const vol = await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.write(vol, 4096, new Uint8Array(3 * 4096).fill(9), WriteConcern.WriteDurable)
      assert.ok((await g.read(vol, 4096, 3 * 4096)).every((byte) => byte === 9))
      assert.equal((await g.getStorageStats()).blocks, 3)
    } finally {
      await g.close()
    }
  })
})

describe('review r72: a metadata database that is not one', () => {
  it('open() refuses it with INVALID_ARGUMENT, before anything is opened, not IO_ERROR or a TypeError', async () => {
    for (const metadata of [{}, 'metadata', 5, { open: async () => {}, get: 1 }]) {
      const blockStore = new MemoryBlockStore()
      await assert.rejects(GalleonFS.open({ metadata: metadata as never, blockStore }), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'INVALID_ARGUMENT', `${JSON.stringify(metadata)}: ${err.name} ${err.message}`)
        assert.match(err.message, /metadata must be an abstract-level database/)
        return true
      })
      assert.equal(blockStore.status, 'closed')
    }
  })
})
