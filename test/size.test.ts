// Tests of the size parser and formatter.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { parseSize, formatSize } from '../src/size.js'

describe('parseSize', () => {
  it('parses bytes and binary suffixes', () => {
    assert.equal(parseSize(4096), 4096)
    assert.equal(parseSize('4096'), 4096)
    assert.equal(parseSize('512K'), 512 * 1024)
    assert.equal(parseSize('100M'), 100 * 1024 ** 2)
    assert.equal(parseSize('1G'), 1024 ** 3)
    assert.equal(parseSize('2T'), 2 * 1024 ** 4)
    assert.equal(parseSize('1.5G'), 1.5 * 1024 ** 3)
    assert.equal(parseSize('64m'), 64 * 1024 ** 2)
    assert.equal(parseSize('8KiB'), 8192)
    assert.equal(parseSize('8KB'), 8192)
    assert.equal(parseSize(' 1 G '), 1024 ** 3)
  })
  for (const bad of ['', 'abc', '1X', '-1G', '1.2.3M', 'G', '0.1', '1e3']) {
    it(`rejects ${JSON.stringify(bad)} with INVALID_ARGUMENT`, () => {
      assert.throws(() => parseSize(bad), { code: 'INVALID_ARGUMENT' })
    })
  }
  for (const bad of [-1, 1.5, Number.NaN, Infinity, 2 ** 60, null, undefined, {}, [1]]) {
    it(`rejects ${String(bad)}`, () => {
      assert.throws(() => parseSize(bad as never), { code: 'INVALID_ARGUMENT' })
    })
  }
  it('computes decimal sizes exactly, never rounding a fraction of a byte away', () => {
    assert.equal(parseSize('1.25K'), 1280)
    assert.equal(parseSize('0.0009765625K'), 1)
    assert.equal(parseSize('7.5P'), 7.5 * 2 ** 50)
    // As a float product, 1.00000000000000001 * 1024 comes out as exactly 1024.
    for (const bad of ['1.00000000000000001K', '1.1K', '0.5', '3.3T', '7.99P']) {
      assert.throws(() => parseSize(bad), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /not a whole number of bytes/.test(err.message), bad)
    }
  })
  it('names the largest size it takes when given more', () => {
    assert.throws(() => parseSize('8P'), /too large: at most 9007199254740991 bytes/)
    assert.throws(() => parseSize('9007199254740993'), /too large/)
    assert.equal(parseSize('9007199254740991'), Number.MAX_SAFE_INTEGER)
  })
  it('rejects sizes beyond safe integers', () => {
    assert.throws(() => parseSize('9000000P'), { code: 'INVALID_ARGUMENT' })
  })
})

describe('formatSize', () => {
  it('formats with the largest unit', () => {
    assert.equal(formatSize(512), '512')
    assert.equal(formatSize(1024), '1K')
    assert.equal(formatSize(1536 * 1024 * 1024), '1.5G')
    assert.equal(parseSize(formatSize(100 * 1024 ** 2)), 100 * 1024 ** 2)
  })
})
