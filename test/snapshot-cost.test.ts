// The cost promises of copy-on-write, checked by counting what reaches the block store: taking a
// snapshot or a clone reads and writes no block, whatever the volume holds; a write after a
// snapshot stores one block and keeps the old one (no copy); deleting a snapshot deletes exactly the
// versions only it kept; listing changes reads nothing.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { MemoryLevel } from 'memory-level'
import { MemoryBlockStore } from '../backends/memory/index.js'
import { GalleonFS } from '../src/index.js'
import type { BlockAddress, BlockOp } from '../src/index.js'

class CountingStore extends MemoryBlockStore {
  gets = 0
  puts = 0
  dels = 0
  syncs = 0
  reset (): void { this.gets = 0; this.puts = 0; this.dels = 0; this.syncs = 0 }
  override async get (address: BlockAddress): Promise<Uint8Array | undefined> { this.gets++; return await super.get(address) }
  override async getMany (addresses: readonly BlockAddress[]): Promise<Array<Uint8Array | undefined>> { this.gets += addresses.length; return await super.getMany(addresses) }
  override async batch (ops: readonly BlockOp[], options?: { sync?: boolean }): Promise<void> {
    for (const op of ops) { if (op.type === 'put') this.puts++; else this.dels++ }
    if (options?.sync === true) this.syncs++
    await super.batch(ops, options)
  }

  counts (): { gets: number, puts: number, dels: number } { return { gets: this.gets, puts: this.puts, dels: this.dels } }
}

async function open (): Promise<{ g: GalleonFS, store: CountingStore }> {
  const store = new CountingStore()
  const g = await GalleonFS.open({ metadata: new MemoryLevel(), blockStore: store })
  return { g, store }
}

const BS = 4096

describe('copy-on-write costs, counted at the block store', () => {
  it('a snapshot of a full volume touches no block, just like one of an empty volume', async () => {
    const { g, store } = await open()
    try {
      await g.createVolume({ name: 'empty', sizeBytes: 2048 * BS })
      await g.createVolume({ name: 'full', sizeBytes: 2048 * BS })
      await g.write('full', 0, new Uint8Array(2048 * BS).fill(3))
      store.reset()
      await g.createSnapshot('empty', 's')
      assert.deepEqual(store.counts(), { gets: 0, puts: 0, dels: 0 })
      await g.createSnapshot('full', 's')
      assert.deepEqual(store.counts(), { gets: 0, puts: 0, dels: 0 })
      await g.cloneVolume('full', 'c')
      await g.cloneVolume({ volume: 'full', snapshot: 's' }, 'd')
      assert.deepEqual(store.counts(), { gets: 0, puts: 0, dels: 0 })
    } finally { await g.close() }
  })

  it('a write after a snapshot stores one block and copies nothing, once; deleting the snapshot frees exactly what only it held', async () => {
    const { g, store } = await open()
    try {
      await g.createVolume({ name: 'v', sizeBytes: 1024 * BS })
      await g.write('v', 0, new Uint8Array(1024 * BS).fill(1))
      await g.createSnapshot('v', 's')
      store.reset()
      await g.writeBlock('v', 5, new Uint8Array(BS).fill(2))
      await g.flush()
      assert.deepEqual(store.counts(), { gets: 0, puts: 1, dels: 0 }, 'first write after the snapshot: one put, the old version kept')
      store.reset()
      await g.writeBlock('v', 5, new Uint8Array(BS).fill(3))
      await g.flush()
      assert.deepEqual(store.counts(), { gets: 0, puts: 1, dels: 1 }, 'second write: the first post-snapshot version is garbage, nothing copied')
      for (let i = 10; i < 20; i++) await g.writeBlock('v', i, new Uint8Array(BS).fill(4))
      assert.deepEqual(await g.listChangedBlocks('v', { from: 's' }), [5, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19])
      store.reset()
      await g.listChangedBlocks('v', { from: 's' })
      assert.deepEqual(store.counts(), { gets: 0, puts: 0, dels: 0 }, 'listing changes reads no block')
      await g.deleteSnapshot('v', 's')
      await g.flush()
      assert.deepEqual(store.counts(), { gets: 0, puts: 0, dels: 11 }, 'deleting the snapshot deletes the 11 versions only it held')
      assert.equal((await g.getStorageStats()).blocks, 1024)
    } finally { await g.close() }
  })

  it('a revert rewrites only the blocks changed since the snapshot', async () => {
    const { g, store } = await open()
    try {
      await g.createVolume({ name: 'v', sizeBytes: 1024 * BS })
      await g.write('v', 0, new Uint8Array(1024 * BS).fill(1))
      await g.createSnapshot('v', 's')
      for (const i of [3, 500, 900]) await g.writeBlock('v', i, new Uint8Array(BS).fill(9))
      store.reset()
      await g.restoreSnapshot('v', 's')
      assert.deepEqual(store.counts(), { gets: 3, puts: 3, dels: 3 })
      assert.deepEqual(await g.read('v', 0, 1024 * BS), new Uint8Array(1024 * BS).fill(1))
    } finally { await g.close() }
  })
})
