// Test data shared by the conformance suite and the other tests: block addresses and ops, a seeded
// PRNG and seeded byte patterns, so a failing case can be replayed exactly.

import assert from 'node:assert/strict'
import type { BlockAddress, BlockOp } from '../../src/drivers.js'

/** A block address; `gen` defaults to 0. */
export function addr (volume: number, index: number, gen = 0): BlockAddress {
  return { volume, index, gen }
}

export function put (address: BlockAddress, data: Uint8Array): BlockOp {
  return { type: 'put', address, data }
}

export function del (address: BlockAddress): BlockOp {
  return { type: 'del', address }
}

/** A small seeded PRNG (mulberry32) returning numbers in [0, 1). */
export { seededRandom } from '../../src/seeded-random.js'

/** Deterministic pseudo-random bytes (xorshift32), different for each (size, seed). */
export function bytesOf (size: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(size)
  let state = (Math.imul(seed + 1, 0x9e3779b1) ^ size) >>> 0
  if (state === 0) state = 1 // xorshift would stay at zero
  for (let i = 0; i < size; i++) {
    state ^= state << 13
    state ^= state >>> 17
    state ^= state << 5
    bytes[i] = state & 0xff
  }
  return bytes
}

/** A 32-bit integer hash (the murmur3 finaliser's constants): deterministic and well mixed. */
export function mix32 (x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x7feb352d)
  x = Math.imul(x ^ (x >>> 15), 0x846ca68b)
  return (x ^ (x >>> 16)) >>> 0
}

/** Everything an async iterable yields. */
export async function collect<T> (items: AsyncIterable<T>): Promise<T[]> {
  const result: T[] = []
  for await (const item of items) result.push(item)
  return result
}

/** Asserts that `actual` holds exactly the bytes of `expected`, naming the first offset that differs. */
export function assertBytes (actual: Uint8Array | undefined, expected: Uint8Array, what = 'value'): void {
  // The message only on failure: String() of a 4 KiB array is a ~15 KB string, and the crash and
  // conformance tests call this for every block they check.
  if (!(actual instanceof Uint8Array)) assert.fail(`${what}: expected ${expected.byteLength} bytes, got ${String(actual)}`)
  assert.equal(actual.byteLength, expected.byteLength, `${what}: length`)
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength)
  const b = Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength)
  if (!a.equals(b)) {
    let offset = 0
    while (a[offset] === b[offset]) offset++
    assert.fail(`${what}: bytes differ from offset ${offset}`)
  }
}
