// Review r77: the hint that a size lost its unit (63b7c3e gives it only for a size written without
// one) for every size written without one: "10.0" is a bare number too, 10 bytes.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS } from '../src/index.js'

describe('a volume size written as a decimal without a unit', () => {
  it('is said to lack its unit, in createVolume as in expandVolume', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      const message = async (call: Promise<unknown>): Promise<string> => {
        let caught: Error & { code?: string } | undefined
        await assert.rejects(call, (err: Error & { code?: string }) => { caught = err; return err.code === 'INVALID_ARGUMENT' })
        return caught?.message ?? ''
      }
      for (const size of ['10.0', ' 10.00 ', '10.0B']) {
        const text = await message(g.createVolume({ name: 'a', sizeBytes: size }))
        assert.ok(text.includes('for 10 GiB write "10G"'), `createVolume ${JSON.stringify(size)}: ${text}`)
      }
      await g.createVolume({ name: 'b', sizeBytes: '8K' })
      const expanded = await message(g.expandVolume('b', '20.0'))
      assert.ok(expanded.includes('for 20 GiB write "20G"'), `expandVolume 20.0: ${expanded}`)
      assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['b'])
    } finally {
      await g.close()
    }
  })
})
