// The FUSE driver's sequential read-ahead against a model volume: what it returns always equals a
// direct read at that moment (changes between a window's read and its use are never missed), it
// reads ahead only for sequential readers with a known version, stays within the volume, and a
// failed window read leaves the request to read (and fail) by itself.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { AHEAD_BYTES, ReadAhead, WINDOW_BYTES, type ReadAheadSource } from '../backends/fuse/read-ahead.js'
import { MemoryBlockStore } from '../backends/memory/index.js'
import { BlockEngine } from '../src/engine/engine.js'
import { WriteConcern } from '../src/types.js'
import { countingSource } from './support/read-ahead-source.js'

const SIZE = 8 * 1024 * 1024
const REQUEST = 128 * 1024

/** A volume in memory: bytes, a version bumped by every write, and a log of the reads asked. */
class ModelVolume implements ReadAheadSource {
  readonly bytes = new Uint8Array(SIZE)
  reads: Array<[number, number]> = []
  #version = 0
  knownVersion = true
  failNext = 0
  constructor () {
    for (let i = 0; i < SIZE; i += 4) new DataView(this.bytes.buffer).setUint32(i, i, true)
  }

  async read (offset: number, length: number): Promise<Uint8Array> {
    this.reads.push([offset, length])
    // Like the engine: the bytes are taken after a turn of the event loop.
    await new Promise((resolve) => setImmediate(resolve))
    if (this.failNext > 0) {
      this.failNext--
      throw Object.assign(new Error('injected read failure'), { code: 'IO_ERROR' })
    }
    return this.bytes.slice(offset, offset + length)
  }

  version (): number | undefined { return this.knownVersion ? this.#version : undefined }
  size (): number { return SIZE }
  write (offset: number, data: Uint8Array): void {
    this.bytes.set(data, offset)
    this.#version++
  }
}

/** Lets the windows scheduled after the last answer start and finish. */
async function settle (): Promise<void> {
  for (let i = 0; i < 4; i++) await new Promise((resolve) => setImmediate(resolve))
}

describe('FUSE read-ahead', () => {
  it('serves a sequential reader from windows read ahead, byte-exact, never past the end of the volume', async () => {
    const volume = new ModelVolume()
    const ahead = new ReadAhead(volume)
    for (let at = 0; at < SIZE; at += REQUEST) {
      assert.deepEqual(await ahead.read(at, REQUEST), volume.bytes.subarray(at, at + REQUEST), `bytes at ${at}`)
      await settle()
    }
    assert.ok(ahead.hits >= SIZE / REQUEST - 2, `most requests came from windows (${ahead.hits})`)
    for (const [offset, length] of volume.reads) assert.ok(offset + length <= SIZE, `read ${offset}+${length} within the volume`)
    // Each byte read from the volume about once (the first request and its windows).
    const bytesRead = volume.reads.reduce((sum, [, length]) => sum + length, 0)
    assert.ok(bytesRead <= SIZE + REQUEST, `read ${bytesRead} bytes for ${SIZE}`)
    assert.ok(volume.reads.some(([, length]) => length === WINDOW_BYTES))
  })

  it('a change after a window was read (any path: the version moves) is never missed: the request reads afresh', async () => {
    const volume = new ModelVolume()
    const ahead = new ReadAhead(volume)
    await ahead.read(0, REQUEST)
    await settle()
    await ahead.read(REQUEST, REQUEST)
    await settle()
    // Windows now cover up to AHEAD_BYTES past the reader; change a byte inside the next one.
    const changed = 2 * REQUEST + 100
    volume.write(changed, Uint8Array.of(0xAB))
    const got = await ahead.read(2 * REQUEST, REQUEST)
    assert.equal(got[100], 0xAB, 'the new byte, not the one read ahead')
    assert.ok(ahead.discardedBytes > 0, 'the stale windows were dropped')
    await settle()
    // And a change made while a window's read is under way.
    const pending = ahead.read(3 * REQUEST, REQUEST)
    volume.write(4 * REQUEST, Uint8Array.of(0xCD))
    assert.deepEqual(await pending, volume.bytes.subarray(3 * REQUEST, 4 * REQUEST))
    await settle()
    assert.equal((await ahead.read(4 * REQUEST, REQUEST))[0], 0xCD)
  })

  it('does not read ahead for a reader that jumps around, or where the version is unknown', async () => {
    const volume = new ModelVolume()
    const ahead = new ReadAhead(volume)
    for (const at of [5, 1, 7, 3, 6, 2]) {
      assert.deepEqual(await ahead.read(at * REQUEST * 4, REQUEST), volume.bytes.subarray(at * REQUEST * 4, at * REQUEST * 4 + REQUEST))
      await settle()
    }
    assert.equal(volume.reads.length, 6, 'one read per request')
    const unknown = new ModelVolume()
    unknown.knownVersion = false
    const blind = new ReadAhead(unknown)
    for (let at = 0; at < AHEAD_BYTES * 2; at += REQUEST) {
      await blind.read(at, REQUEST)
      await settle()
    }
    assert.equal(unknown.reads.length, AHEAD_BYTES * 2 / REQUEST, 'nothing read ahead')
    assert.equal(blind.hits, 0)
  })

  it('a window whose read failed makes the request read by itself (and get its own error); after close nothing is read ahead', async () => {
    const volume = new ModelVolume()
    const ahead = new ReadAhead(volume)
    await ahead.read(0, REQUEST)
    await ahead.read(REQUEST, REQUEST) // sequential: windows follow
    volume.failNext = 1 // the first window's read
    await settle()
    assert.deepEqual(await ahead.read(2 * REQUEST, REQUEST), volume.bytes.subarray(2 * REQUEST, 3 * REQUEST), 'read again, successfully')
    assert.equal(ahead.hits, 0)
    await settle()
    volume.failNext = 100
    const reader = new ReadAhead(volume)
    await assert.rejects(reader.read(0, REQUEST), /injected read failure/)
    volume.failNext = 0
    const closing = new ReadAhead(volume)
    await closing.read(0, REQUEST)
    await closing.read(REQUEST, REQUEST)
    closing.close()
    const before = volume.reads.length
    await settle()
    assert.equal(volume.reads.length, before, 'no window started after close')
  })
})

describe('engine change counter (the version a mount reads ahead under)', () => {
  it('moves with every write, trim and revert made visible, not with reads or snapshots', async () => {
    const store = new MemoryBlockStore()
    await store.open()
    const engine = new BlockEngine(store, { blockSize: 4096, cacheBlocks: 0 })
    try {
      const volume = engine.attach(1, 1 << 20)
      const moved = async (what: string, step: () => Promise<unknown>, expected: boolean): Promise<void> => {
        const before = engine.changes
        await step()
        assert.equal(engine.changes !== before, expected, `${what} ${expected ? 'moves' : 'leaves'} the counter`)
      }
      await moved('a write', async () => { await engine.write(volume, 0, new Uint8Array(3 * 4096).fill(1), WriteConcern.WriteAcknowledged) }, true)
      await moved('a read', async () => await engine.read(volume, 0, 3 * 4096), false)
      const gen = await engine.snapshot(volume)
      await moved('a snapshot', async () => await engine.read(volume, 0, 4096, { gen, sizeBytes: 1 << 20 }), false)
      await moved('a partial write', async () => { await engine.write(volume, 100, Uint8Array.of(2), WriteConcern.WriteAcknowledged) }, true)
      await moved('a trim', async () => { await engine.trim(volume, 4096, 4096, WriteConcern.WriteAcknowledged) }, true)
      await moved('a revert', async () => await engine.revert(volume, { gen, sizeBytes: 1 << 20 }), true)
      assert.deepEqual(await engine.read(volume, 0, 3 * 4096), new Uint8Array(3 * 4096).fill(1), 'reverted')
    } finally {
      await engine.close()
      await store.close()
    }
  })
})

describe('window buffers reused', () => {
  it('windows read into the buffers of windows that went: never-written blocks still read as zeros, and every answer equals a direct read', async () => {
    const store = new MemoryBlockStore()
    await store.open()
    const engine = new BlockEngine(store, { blockSize: 4096, cacheBlocks: 0 })
    try {
      const size = 4 * 1024 * 1024
      const volume = engine.attach(1, size)
      // Data in the first MiB only; the rest never written (no block to place: zeros).
      await engine.write(volume, 0, new Uint8Array(1 << 20).fill(0xa5), WriteConcern.WriteAcknowledged)
      const { source, reused, distinct } = countingSource(engine, volume, size)
      const ahead = new ReadAhead(source)
      for (let pass = 0; pass < 3; pass++) {
        for (let at = 0; at < size; at += REQUEST) {
          // Copied at once, as the FUSE driver copies an answer into the kernel's buffer.
          const answer = new Uint8Array(await ahead.read(at, REQUEST))
          assert.deepEqual(answer, await engine.read(volume, at, REQUEST), `pass ${pass}, bytes at ${at}`)
          await settle()
        }
        // Between passes the written MiB moves: windows of the next pass land on buffers that held it.
        await engine.write(volume, (pass + 1) * (1 << 20) % size, new Uint8Array(1 << 20).fill(pass + 1), WriteConcern.WriteAcknowledged)
        await engine.trim(volume, 0, 1 << 20, WriteConcern.WriteAcknowledged)
        await ahead.read(size - REQUEST, REQUEST) // a jump: the next pass starts afresh
      }
      assert.ok(reused() > 0, 'windows were read into reused buffers')
      assert.ok(distinct() <= AHEAD_BYTES / WINDOW_BYTES + 4, `a bounded set of buffers (${distinct()})`)
      ahead.close()
    } finally {
      await engine.close()
      await store.close()
    }
  })
})
