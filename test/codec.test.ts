// Tests of the block codec: checksums bind payload and address.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { crc32 as zlibCrc32 } from 'node:zlib'
import { encodeBlock, decodeBlock, BLOCK_HEADER_BYTES } from '../src/engine/codec.js'
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
