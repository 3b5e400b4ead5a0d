// Tests of the block codec: checksums bind payload and address.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { crc32 as zlibCrc32 } from 'node:zlib'
import { encodeBlock, encodeBlockWith, decodeBlock, storedValueCrc, BLOCK_HEADER_BYTES, BLOCK_FLAG_ENCRYPTED, BLOCK_FLAG_TOMBSTONE } from '../src/engine/codec.js'
import { crc32Combine, crc32Shift } from '../src/crc32-combine.js'
import { crc32, crc32Table } from '../src/checksum.js'
import { seededRandom } from '../src/seeded-random.js'

describe('block codec', () => {
  const address = { volume: 3, index: 17, gen: 99 }
  it('round-trips and zero-pads short payloads', () => {
    const value = encodeBlock(address, Uint8Array.of(1, 2, 3), 8)
    assert.equal(value.byteLength, BLOCK_HEADER_BYTES + 8)
    const decoded = decodeBlock(address, value)
    assert.ok(decoded.ok)
    assert.deepEqual([...decoded.payload], [1, 2, 3, 0, 0, 0, 0, 0])
  })
  it('detects a bit flip in the checksum, version, flags or payload', () => {
    const value = encodeBlock(address, new Uint8Array(64).fill(0xab))
    for (let byte = 0; byte < value.byteLength; byte++) {
      if (byte === 6 || byte === 7) continue // reserved header bytes
      const copy = value.slice()
      copy[byte]! ^= 0x10
      assert.equal(decodeBlock(address, copy).ok, false, `flip at byte ${byte} went undetected`)
    }
  })
  it('detects a block read at the wrong address or generation', () => {
    const value = encodeBlock(address, new Uint8Array(32).fill(7))
    assert.equal(decodeBlock({ ...address, index: 18 }, value).ok, false)
    assert.equal(decodeBlock({ ...address, gen: 98 }, value).ok, false)
    assert.equal(decodeBlock({ ...address, volume: 4 }, value).ok, false)
  })
  it('rejects truncated values', () => {
    assert.equal(decodeBlock(address, new Uint8Array(3)).ok, false)
  })
})

describe('crc32', () => {
  it('gives node:zlib\'s values for every input length and starting value, on both sides of the table/native switch', () => {
    const random = seededRandom(7)
    const data = new Uint8Array(300)
    for (let i = 0; i < data.length; i++) data[i] = Math.floor(random() * 256)
    for (let length = 0; length <= data.length; length++) {
      const bytes = data.subarray(0, length)
      for (const initial of [undefined, 0, 1, 0x12345678, 0xffffffff]) {
        const expected = zlibCrc32(bytes, initial ?? 0)
        assert.equal(crc32(bytes, initial), expected, `length ${length}, initial ${String(initial)}`)
        assert.equal(crc32Table(bytes, initial), expected, `table, length ${length}, initial ${String(initial)}`)
      }
    }
    // Continuing a CRC across a split gives the CRC of the whole, whichever side computes each part.
    assert.equal(crc32(data.subarray(10), crc32(data.subarray(0, 10))), zlibCrc32(data))
  })
})

describe('crc32 of joined bytes (crc32-combine)', () => {
  const random = seededRandom(20261203)
  const bytes = (n: number): Uint8Array => Uint8Array.from({ length: n }, () => Math.floor(random() * 256))
  it('crc32Combine(crc32(A), crc32(B), |B|) is crc32(A || B), and crc32Shift(|B|) turns any seed into crc32(B, seed) ^ crc32(B)', () => {
    for (const n of [0, 1, 3, 8, 36, 63, 64, 65, 4096, 4104, 4120, 65536, 1 << 20, 12345]) {
      for (let t = 0; t < 6; t++) {
        const a = bytes(Math.floor(random() * 200))
        const b = bytes(n)
        const seed = Math.floor(random() * 0x1_0000_0000)
        const joined = new Uint8Array(a.byteLength + n)
        joined.set(a)
        joined.set(b, a.byteLength)
        // crc32Table as the oracle for empty inputs: node:zlib answers 0 for an empty buffer whatever the seed.
        assert.equal(crc32Combine(zlibCrc32(a), crc32Table(b), n), zlibCrc32(joined), `|B| = ${n}`)
        assert.equal((crc32Shift(n)(seed) ^ crc32Table(b)) >>> 0, crc32Table(b, seed), `seed, |B| = ${n}`)
      }
    }
    assert.throws(() => crc32Shift(-1), RangeError)
    assert.throws(() => crc32Shift(1.5), RangeError)
  })

  it('storedValueCrc gives crc32 of every value the codec makes, from its header alone', () => {
    for (const size of [0, 1, 100, 512, 4096, 4112, 65536]) {
      for (let t = 0; t < 8; t++) {
        const address = { volume: Math.floor(random() * 0x1_0000_0000), index: Math.floor(random() * 2 ** 44), gen: Math.floor(random() * 2 ** 52) }
        const payload = bytes(size)
        const values = size === 0
          ? [encodeBlock(address, payload, 0, BLOCK_FLAG_TOMBSTONE)]
          : [encodeBlock(address, payload), encodeBlock(address, payload.subarray(0, size >> 1), size), encodeBlockWith(address, size, BLOCK_FLAG_ENCRYPTED, (body) => body.set(payload))]
        for (const value of values) assert.equal(storedValueCrc(address, value), zlibCrc32(value), `size ${size}, flags ${value[5]}`)
      }
    }
  })
})
