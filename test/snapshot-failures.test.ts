// Snapshot and revert operations that fail half-way because the block store fails: nothing may be
// left inconsistent, no acknowledged write may be lost on the next open, and the instance must open.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { MemoryLevel } from 'memory-level'
import { MemoryBlockStore } from '../backends/memory/index.js'
import { GalleonError, GalleonFS, addressKey } from '../src/index.js'
import type { BlockAddress, BlockOp } from '../src/index.js'

/** A memory store that keeps its blocks across close/open (like a disk) and fails on demand. */
class FaultyStore extends MemoryBlockStore {
  failGet: string | undefined
  failSync = false
  protected override async _close (): Promise<void> {}
  override async get (address: BlockAddress): Promise<Uint8Array | undefined> {
    if (this.failGet !== undefined && addressKey(address) === this.failGet) throw new GalleonError('IO_ERROR', 'injected read failure')
    return await super.get(address)
  }

  override async batch (ops: readonly BlockOp[], options?: { sync?: boolean }): Promise<void> {
    if (options?.sync === true && this.failSync) {
      this.failSync = false
      await new Promise((resolve) => setTimeout(resolve, 30))
      throw new GalleonError('IO_ERROR', 'injected sync failure')
    }
    await super.batch(ops, options)
  }
}

const BS = 4096
const fill = (value: number, blocks = 1): Uint8Array => new Uint8Array(blocks * BS).fill(value)

describe('snapshot operations when the block store fails', () => {
  it('a failed revert fences the volume until a revert succeeds, and a reopen neither loses writes nor fails', async () => {
    const store = new FaultyStore()
    const metadata = new MemoryLevel()
    let g = await GalleonFS.open({ metadata, blockStore: store })
    await g.createVolume({ name: 'v', sizeBytes: 4 * BS })
    await g.createVolume({ name: 'other', sizeBytes: 4 * BS })
    await g.write('v', 0, fill(1, 2))
    await g.createSnapshot('v', 's')
    await g.write('v', 0, fill(2, 2))
    // The snapshot's version of block 1 is the second version written (gen 2) of storage id 1.
    store.failGet = addressKey({ volume: 1, index: 1, gen: 2 })
    const errors: string[] = []
    g.on('io:error', (event) => errors.push(event.message))
    await assert.rejects(g.restoreSnapshot('v', 's'), { code: 'IO_ERROR' })
    assert.equal(errors.length, 1)
    assert.match(errors[0] as string, /revert to snapshot s failed/)
    await assert.rejects(g.readBlock('v', 0), { code: 'BUSY', message: /unfinished revert to snapshot s.*restoreSnapshot\("v", "s"\)/ })
    await assert.rejects(g.writeBlock('v', 0, fill(9)), { code: 'BUSY' })
    await assert.rejects(g.createSnapshot('v', 's2'), { code: 'BUSY' })
    await g.writeBlock('other', 0, fill(5))
    // Still failing at the next open: the instance opens, the volume stays fenced, the rest works.
    await g.close()
    g = await GalleonFS.open({ metadata, blockStore: store })
    await assert.rejects(g.readBlock('v', 0), { code: 'BUSY', message: /it failed: injected read failure/ })
    assert.deepEqual(await g.readBlock('other', 0), fill(5))
    // Once the store reads again, retrying the revert finishes it.
    store.failGet = undefined
    await g.restoreSnapshot('v', 's')
    assert.deepEqual(await g.read('v', 0, 2 * BS), fill(1, 2))
    await g.writeBlock('v', 0, fill(9))
    await g.close()
    g = await GalleonFS.open({ metadata, blockStore: store })
    assert.deepEqual(await g.readBlock('v', 0), fill(9))
    assert.deepEqual(await g.readBlock('v', 1), fill(1))
    await g.close()
  })

  it('a snapshot whose sync fails is undone without disturbing trims in flight', async () => {
    const store = new FaultyStore()
    const g = await GalleonFS.open({ metadata: new MemoryLevel(), blockStore: store })
    await g.createVolume({ name: 'v', sizeBytes: 4 * BS })
    await g.write('v', 0, fill(7, 2))
    store.failSync = true
    const snapshot = g.createSnapshot('v', 's')
    // The snapshot is registered and waiting for its sync when the trim plans around it.
    await new Promise((resolve) => setTimeout(resolve, 5))
    const trim = g.trim('v', 0, 2 * BS)
    await assert.rejects(snapshot, { code: 'IO_ERROR' })
    await trim
    assert.deepEqual(await g.listSnapshots('v'), [])
    assert.deepEqual(await g.read('v', 0, 2 * BS), fill(0, 2))
    await g.flush()
    assert.deepEqual(await g.getVolumeUsageDetails('v'), { allocatedBytes: 0, allocatedBlocks: 0, liveBytes: 0, snapshotBytes: 0, sizeBytes: 4 * BS })
    assert.equal((await g.getStorageStats()).blocks, 0, 'no version is left behind')
    await g.close()
  })
})

/** A memory store whose batches wait at a gate while `hold` is set. */
class GatedStore extends MemoryBlockStore {
  hold = false
  #waiting: Array<() => void> = []
  entered = 0
  override async batch (ops: readonly BlockOp[], options?: { sync?: boolean }): Promise<void> {
    if (this.hold) {
      this.entered++
      await new Promise<void>((resolve) => { this.#waiting.push(resolve) })
    }
    await super.batch(ops, options)
  }

  release (): void {
    this.hold = false
    for (const wake of this.#waiting.splice(0)) wake()
  }
}

describe('a revert and the volume\'s writers', () => {
  it('nothing mounts or opens the volume for writing while a revert runs; a writable file or an NBD-style writer blocks the revert', async () => {
    const store = new GatedStore()
    const g = await GalleonFS.open({ metadata: new MemoryLevel(), blockStore: store })
    try {
      await g.createVolume({ name: 'v', sizeBytes: 16 * BS })
      await g.write('v', 0, fill(1, 8))
      await g.createSnapshot('v', 's')
      await g.write('v', 0, fill(2, 8))
      // A writable file open straight on the volume: the revert is refused, nothing changes.
      const file = await g.mounts.openVolumeFile('v')
      await assert.rejects(g.restoreSnapshot('v', 's'), (err: Error & { code?: string }) => err.code === 'BUSY' && /1 writer\(s\).*openVolumeFile/.test(err.message))
      await file.close()
      assert.deepEqual(await g.read('v', 0, BS), fill(2))
      // The revert held mid-way: mounts (read-only too) and writable files are refused meanwhile.
      store.hold = true
      const revert = g.restoreSnapshot('v', 's')
      for (let i = 0; i < 500 && store.entered === 0; i++) await new Promise((resolve) => setTimeout(resolve, 5))
      assert.ok(store.entered > 0, 'the revert reached the store')
      await assert.rejects(g.mounts.mountVolume('v', '/tmp/galleonfs-never-mounted-rw'), (err: Error & { code?: string }) => err.code === 'BUSY' && /being reverted/.test(err.message))
      await assert.rejects(g.mounts.mountVolume('v', '/tmp/galleonfs-never-mounted-ro', { readOnly: true }), (err: Error & { code?: string }) => err.code === 'BUSY' && /being reverted/.test(err.message))
      await assert.rejects(g.mounts.openVolumeFile('v'), (err: Error & { code?: string }) => err.code === 'BUSY' && /being reverted/.test(err.message))
      assert.deepEqual(g.mounts.listMounts(), [])
      store.release()
      await revert
      assert.deepEqual(await g.read('v', 0, BS), fill(1))
      const after = await g.mounts.mountVolume('v', '/tmp/galleonfs-after-revert')
      await g.mounts.unmountVolume(after)
    } finally {
      store.release()
      await g.close()
    }
  })
})
