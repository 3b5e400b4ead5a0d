// Claims of README.md's prose that the code did not keep, each checked against real behaviour.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS } from '../src/index.js'

describe('README claims', () => {
  it('close(): later calls reject with NOT_OPEN, unmountVolume of a mount close() took down included', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    await g.createVolume({ name: 'images', sizeBytes: '1M' })
    await g.mounts.mountVolume('images', '/srv/images')
    await g.close()
    // It used to answer INVALID_ARGUMENT ("nothing is mounted as ..."), as for a path never mounted.
    await assert.rejects(g.mounts.unmountVolume('/srv/images'), { code: 'NOT_OPEN' })
    await assert.rejects(g.mounts.mountVolume('images', '/srv/images'), { code: 'NOT_OPEN' })
    await assert.rejects(g.mounts.openVolumeFile('images'), { code: 'NOT_OPEN' })
  })
})
