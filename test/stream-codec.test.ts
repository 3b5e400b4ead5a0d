// The replication stream's batch codec and the primary's change arena (src/replication/stream-codec.ts):
// writes recorded one after another share a chunk, so a batch of them ships as a view, without a
// copy; anything else is copied; either way the batch decodes to the same changes.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { ARENA_FREE_CHUNKS, ARENA_MAX_WRITE, CHUNK_BYTES, ChangeArena, decodeChanges, encodeChanges } from '../src/replication/stream-codec.js'
import type { ReplicatedChange } from '../src/engine/replicator.js'

function bytes (length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length)
  for (let i = 0; i < length; i++) out[i] = (seed * 31 + i * 7) & 0xff
  return out
}

const numbered = (changes: ReplicatedChange[]): Array<{ seq: number, change: ReplicatedChange }> => changes.map((change, i) => ({ seq: i + 1, change }))

describe('change arena', () => {
  it('copies (the caller may reuse its buffer), zero-pads to the length asked, and never changes a copy', () => {
    const arena = new ChangeArena()
    const source = bytes(100, 1)
    const padded = arena.copy(source, 4096)
    source.fill(0xee)
    assert.deepEqual(padded.subarray(0, 100), bytes(100, 1))
    assert.ok(padded.subarray(100).every((b) => b === 0), 'padding is zeros')
    const copies: Array<[Uint8Array, Uint8Array]> = []
    // Enough to fill several chunks: earlier copies stay as they were.
    for (let i = 0; i < (3 * CHUNK_BYTES) / 4096; i++) {
      const data = bytes(4096, i + 2)
      copies.push([arena.copy(data), data])
    }
    for (const [copy, data] of copies) assert.deepEqual(copy, data)
    assert.deepEqual(padded.subarray(0, 100), bytes(100, 1))
  })

  it('puts consecutive writes side by side, starts a new chunk when one is full, and gives large writes their own copy', () => {
    const arena = new ChangeArena()
    const a = arena.copy(bytes(4096, 1))
    const b = arena.copy(bytes(4096, 2))
    assert.equal(a.buffer, b.buffer)
    assert.equal(b.byteOffset, a.byteOffset + 4096)
    let last = b
    for (let used = 8192; used + 4096 <= CHUNK_BYTES; used += 4096) last = arena.copy(bytes(4096, 3))
    assert.equal(last.buffer, a.buffer, 'the first chunk is filled')
    const next = arena.copy(bytes(4096, 4))
    assert.notEqual(next.buffer, a.buffer, 'a full chunk is followed by a new one')
    const big = arena.copy(bytes(ARENA_MAX_WRITE + 1, 5))
    assert.equal(big.byteOffset, 0)
    assert.equal(big.buffer.byteLength, ARENA_MAX_WRITE + 1)
    assert.equal(arena.copy(bytes(4096, 6)).byteOffset, next.byteOffset + 4096, 'a large write leaves the chunk as it was')
  })

  it('release() lets the current chunk go; copies made before stay as they were, the next copy takes a new chunk', () => {
    const arena = new ChangeArena()
    assert.equal(arena.chunkBytes, 0, 'no chunk before the first copy')
    const before = arena.copy(bytes(4096, 1))
    assert.equal(arena.chunkBytes, CHUNK_BYTES)
    arena.release()
    assert.equal(arena.chunkBytes, 0)
    const after = arena.copy(bytes(4096, 2))
    assert.notEqual(after.buffer, before.buffer)
    assert.equal(after.byteOffset, 0)
    assert.deepEqual(before, bytes(4096, 1))
    assert.deepEqual(after, bytes(4096, 2))
  })
  it('reuses a full chunk once every change in it is acknowledged (padding zeroed there), and never one still pointed into', () => {
    const arena = new ChangeArena()
    const perChunk = CHUNK_BYTES / 4096
    const copies: Array<{ seq: number, copy: Uint8Array, data: Uint8Array }> = []
    let seq = 0
    const write = (length = 4096, padTo = length): Uint8Array => {
      seq++
      const data = bytes(length, seq)
      const copy = arena.copy(data, padTo, seq)
      copies.push({ seq, copy, data })
      return copy
    }
    for (let i = 0; i < 2 * perChunk; i++) write()
    const first = (copies[0] as { copy: Uint8Array }).copy.buffer
    const second = (copies[perChunk] as { copy: Uint8Array }).copy.buffer
    // Acknowledged up to the second-to-last change of the first chunk: nothing is reused yet.
    arena.reclaim(perChunk - 1)
    const third = write().buffer
    assert.ok(third !== first && third !== second, 'a chunk with an unacknowledged change is not reused')
    for (let i = 1; i < perChunk; i++) write()
    // The whole first chunk acknowledged (and part of the second): only the first is reused.
    arena.reclaim(perChunk + 10)
    assert.equal(arena.chunkBytes, 3 * CHUNK_BYTES, 'the chunk being filled (full), one full one awaiting acknowledgement, one kept for reuse')
    const padded = write(100, 4096)
    assert.equal(padded.buffer, first, 'the acknowledged chunk is the next one')
    assert.deepEqual(padded.subarray(0, 100), bytes(100, seq))
    assert.ok(padded.subarray(100).every((b) => b === 0), 'padding in a reused chunk is zeroed')
    // Everything not yet acknowledged is as it was copied.
    for (const { seq: s, copy, data } of copies) {
      if (s <= perChunk) continue
      assert.deepEqual(copy.subarray(0, data.byteLength), data, `change ${s}`)
    }
    // At most ARENA_FREE_CHUNKS are kept for reuse.
    for (let i = 0; i < 3 * perChunk; i++) write()
    arena.reclaim(seq)
    assert.equal(arena.chunkBytes, (1 + ARENA_FREE_CHUNKS) * CHUNK_BYTES)
    // release() lets them all go: no chunk handed out before is handed out again.
    const handedOut = new Set(copies.map((c) => c.copy.buffer))
    arena.release()
    assert.equal(arena.chunkBytes, 0)
    for (let i = 0; i < 2 * perChunk; i++) assert.ok(!handedOut.has(write().buffer), 'a fresh chunk after release()')
  })
})

describe('stream batch codec', () => {
  it('ships adjacent writes as a view of their bytes, and decodes to the same changes', () => {
    const arena = new ChangeArena()
    const changes: ReplicatedChange[] = [
      { type: 'write', offset: 0, data: arena.copy(bytes(4096, 1)) },
      { type: 'trim', offset: 8192, length: 4096 },
      { type: 'write', offset: 4096, data: arena.copy(bytes(4096, 2)) },
      { type: 'snapshot', id: 's1', name: 'before' },
      { type: 'write', offset: 12288, data: arena.copy(bytes(512, 3)) }
    ]
    const { list, payload } = encodeChanges(numbered(changes))
    const first = (changes[0] as { data: Uint8Array }).data
    assert.equal(payload.buffer, first.buffer, 'no copy')
    assert.equal(payload.byteOffset, first.byteOffset)
    assert.equal(payload.byteLength, 4096 + 4096 + 512)
    assert.deepEqual(decodeChanges(JSON.parse(JSON.stringify(list)), payload.slice()), changes)
  })

  it('copies writes that are not side by side (other buffers, a gap, a new chunk), and decodes to the same changes', () => {
    const arena = new ChangeArena()
    const x = arena.copy(bytes(4096, 1))
    arena.copy(bytes(4096, 9)) // a write no batch below holds: a gap after x
    const y = arena.copy(bytes(4096, 2))
    for (const changes of [
      [{ type: 'write', offset: 0, data: bytes(4096, 5) }, { type: 'write', offset: 4096, data: bytes(4096, 6) }],
      [{ type: 'write', offset: 0, data: x }, { type: 'write', offset: 4096, data: y }],
      [{ type: 'write', offset: 0, data: y }, { type: 'write', offset: 4096, data: x }]
    ] as ReplicatedChange[][]) {
      const { list, payload } = encodeChanges(numbered(changes))
      assert.ok(!changes.some((c) => c.type === 'write' && c.data.buffer === payload.buffer), 'a copy')
      assert.deepEqual(decodeChanges(JSON.parse(JSON.stringify(list)), payload), changes)
    }
    const none = encodeChanges(numbered([{ type: 'expand', sizeBytes: 1 << 20 }, { type: 'delete-snapshot', id: 's1' }, { type: 'revert', snapshotId: 's2' }]))
    assert.equal(none.payload.byteLength, 0)
    assert.deepEqual(decodeChanges(none.list, none.payload), [{ type: 'expand', sizeBytes: 1 << 20 }, { type: 'delete-snapshot', id: 's1' }, { type: 'revert', snapshotId: 's2' }])
  })

  it('refuses batches whose list and payload disagree', () => {
    assert.throws(() => decodeChanges({}, new Uint8Array(0)), { code: 'INVALID_ARGUMENT' })
    assert.throws(() => decodeChanges([{ t: 'w', o: 0, n: 4096 }], new Uint8Array(100)), { code: 'INVALID_ARGUMENT' })
    assert.throws(() => decodeChanges([{ t: 'w', o: -1, n: 0 }], new Uint8Array(0)), { code: 'INVALID_ARGUMENT' })
    assert.throws(() => decodeChanges([{ t: 'q' }], new Uint8Array(0)), { code: 'INVALID_ARGUMENT' })
  })
})
