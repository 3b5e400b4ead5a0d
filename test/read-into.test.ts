// g.read(source, offset, length, into): reads into the caller's buffer (reused buffers spare the
// allocation), with the same bytes as a read into a new one, holes as zeros whatever the buffer
// held, and clear errors for a buffer that cannot take the read.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { expectCode } from './support/assertions.js'

let root: string
let g: GalleonFS
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-read-into-'))
  g = await GalleonFS.open({ storagePath: root })
  await g.createVolume({ name: 'v', sizeBytes: 1 << 20 })
  await g.write('v', 4096, new Uint8Array(3 * 4096).fill(7))
  await g.createSnapshot('v', 's')
  await g.write('v', 4096, new Uint8Array(4096).fill(9))
})
after(async () => {
  await g?.close()
  await rm(root, { recursive: true, force: true })
})

describe('read into a buffer', () => {
  it('fills the buffer as a read into a new one would, holes as zeros over whatever it held, and returns a view of it', async () => {
    const into = new Uint8Array(8 * 4096 + 100).fill(0xee)
    const got = await g.read('v', 0, 6 * 4096, into)
    assert.equal(got.buffer, into.buffer, 'a view of the caller\'s buffer')
    assert.equal(got.byteOffset, into.byteOffset)
    assert.equal(got.byteLength, 6 * 4096)
    assert.deepEqual(got, await g.read('v', 0, 6 * 4096))
    assert.deepEqual(got.subarray(0, 4096), new Uint8Array(4096), 'a never-written block reads as zeros')
    assert.deepEqual(got.subarray(4096, 2 * 4096), new Uint8Array(4096).fill(9))
    assert.deepEqual(into.subarray(6 * 4096), new Uint8Array(2 * 4096 + 100).fill(0xee), 'bytes past the length untouched')
    // Unaligned, and from a snapshot.
    const again = await g.read({ volume: 'v', snapshot: 's' }, 4000, 5000, into)
    assert.deepEqual(again, await g.read({ volume: 'v', snapshot: 's' }, 4000, 5000))
    assert.equal(again.buffer, into.buffer)
  })

  it('refuses a buffer too small for the read, or no buffer at all, naming the problem; nothing is read into it', async () => {
    const small = new Uint8Array(100).fill(1)
    await expectCode(g.read('v', 0, 4096, small), 'INVALID_ARGUMENT', '100 bytes', 'at least the length')
    assert.deepEqual(small, new Uint8Array(100).fill(1))
    await expectCode(g.read('v', 0, 4096, 'buffer' as unknown as Uint8Array), 'INVALID_ARGUMENT', 'into')
  })
})
