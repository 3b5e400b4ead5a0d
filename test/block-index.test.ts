// Tests of the file store's numeric block index against a reference Map keyed by strings.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { BlockIndex } from '../backends/file/block-index.js'
import { seededRandom } from './conformance/fixtures.js'
import type { BlockAddress } from '../src/drivers.js'

interface Value { readonly gen: number, readonly tag: number }
const show = (a: BlockAddress): string => `${a.volume}/${a.index}/${a.gen}`

describe('BlockIndex', () => {
  it('keeps several generations of one block, and single ones, exactly like a string-keyed map', () => {
    const index = new BlockIndex<Value>()
    const model = new Map<string, { address: BlockAddress, value: Value }>()
    const random = seededRandom(42)
    const pick = (): BlockAddress => ({
      volume: Math.floor(random() * 3) * 0x7fffffff,
      index: random() < 0.1 ? Number.MAX_SAFE_INTEGER - Math.floor(random() * 3) : Math.floor(random() * 20),
      gen: Math.floor(random() * 4)
    })
    for (let step = 0; step < 20_000; step++) {
      const address = pick()
      if (random() < 0.6) {
        const value = { gen: address.gen, tag: step }
        index.set(address.volume, address.index, value)
        model.set(show(address), { address, value })
      } else {
        assert.equal(index.delete(address), model.delete(show(address)), `delete ${show(address)} at step ${step}`)
      }
      const probe = pick()
      assert.equal(index.get(probe), model.get(show(probe))?.value, `get ${show(probe)} at step ${step}`)
      assert.equal(index.has(probe), model.has(show(probe)))
      assert.equal(index.size, model.size)
    }
    assert.deepEqual(index.addresses().map(show).sort(), [...model.keys()].sort())
    for (const volume of [0, 0x7fffffff, 2 * 0x7fffffff, 99]) {
      assert.deepEqual(index.addresses(volume).map(show).sort(), [...model.values()].filter((e) => e.address.volume === volume).map((e) => show(e.address)).sort())
    }
  })

  it('addresses() is a snapshot: changing the index while walking it is safe', () => {
    const index = new BlockIndex<Value>()
    for (let i = 0; i < 100; i++) index.set(1, i, { gen: 1, tag: i })
    const listed = index.addresses(1)
    for (const address of listed) index.delete(address)
    assert.equal(listed.length, 100)
    assert.equal(index.size, 0)
    assert.deepEqual(index.addresses(), [])
  })
})
