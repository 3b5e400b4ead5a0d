// PagedMap (src/paged-map.ts) against a Map as the model: random sets, deletes and lookups over
// dense, sparse and very large keys (past 2^31, 2^32 and up to 2^53 - 1, where the slot comes from
// a 32-bit operation).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { PagedMap } from '../src/paged-map.js'
import { seededRandom } from './conformance/fixtures.js'

describe('PagedMap', () => {
  it('matches a Map under random sets, deletes and lookups, for small and very large keys', () => {
    const random = seededRandom(20261203)
    const bases = [0, 250, 2 ** 31 - 100, 2 ** 32 - 300, 2 ** 40 + 17, Number.MAX_SAFE_INTEGER - 600]
    const keys = bases.flatMap((base) => Array.from({ length: 600 }, (_, i) => base + i))
    const paged = new PagedMap<number>()
    const model = new Map<number, number>()
    for (let step = 0; step < 40_000; step++) {
      const key = keys[Math.floor(random() * keys.length)] as number
      const roll = random()
      if (roll < 0.5) {
        const value = Math.floor(random() * 1000) - 500 // negative, zero and positive values
        paged.set(key, value)
        model.set(key, value)
      } else if (roll < 0.8) {
        assert.equal(paged.delete(key), model.delete(key), `delete(${key}) at step ${step}`)
      } else {
        assert.equal(paged.get(key), model.get(key), `get(${key}) at step ${step}`)
        assert.equal(paged.has(key), model.has(key))
      }
      assert.equal(paged.size, model.size)
    }
    for (const key of keys) assert.equal(paged.get(key), model.get(key), `get(${key})`)
    const entries = [...paged].sort((a, b) => a[0] - b[0])
    assert.deepEqual(entries, [...model].sort((a, b) => a[0] - b[0]))
    assert.deepEqual([...paged.keys()].sort((a, b) => a - b), [...model.keys()].sort((a, b) => a - b))
    // Within a page, keys come in ascending order.
    const firstPage = [...paged.keys()].filter((key) => key < 256)
    assert.deepEqual(firstPage, [...firstPage].sort((a, b) => a - b))
  })

  it('neighbouring keys across a page boundary and emptied pages behave', () => {
    const paged = new PagedMap<string>()
    for (let key = 250; key < 262; key++) paged.set(key, `v${key}`)
    assert.equal(paged.size, 12)
    assert.equal(paged.get(255), 'v255')
    assert.equal(paged.get(256), 'v256')
    assert.equal(paged.get(249), undefined)
    for (let key = 256; key < 262; key++) assert.ok(paged.delete(key))
    assert.equal(paged.delete(256), false, 'deleted twice')
    assert.equal(paged.get(256), undefined, 'a page emptied and dropped reads as absent')
    paged.set(300, 'again')
    assert.equal(paged.get(300), 'again')
    assert.equal(paged.size, 7)
    paged.clear()
    assert.equal(paged.size, 0)
    assert.equal(paged.get(250), undefined)
    assert.deepEqual([...paged], [])
  })

  it('iterating while deleting sees each remaining key at most once', () => {
    const paged = new PagedMap<number>()
    for (let key = 0; key < 1000; key++) paged.set(key, key)
    const seen = new Set<number>()
    for (const [key] of paged) {
      assert.ok(!seen.has(key))
      seen.add(key)
      if (key % 2 === 0) paged.delete(key + 1)
    }
    for (let key = 0; key < 1000; key += 2) assert.ok(seen.has(key))
    assert.equal(paged.size, 500)
  })
})
