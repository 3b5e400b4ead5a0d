// VolumeFile.read takes (buffer, length?, bufferOffset?). A Node-style call,
// read(buffer, offset, length, position), read `offset` bytes (0 for the usual 0: nothing, which
// looks like the end of the volume); such a call now fails with a message naming both forms.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { rejectsWithCode } from './support/assertions.js'

describe('VolumeFile arguments', () => {
  it('refuses the Node-style four-argument read and keeps its own forms', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '64K' })
      await g.write('v', 0, new Uint8Array(8192).fill(9), WriteConcern.WriteAcknowledged)
      const file = await g.mounts.openVolumeFile('v')
      const buffer = new Uint8Array(4096)
      const nodeStyle = file.read as unknown as (...args: unknown[]) => Promise<number>
      await assert.rejects(nodeStyle.call(file, buffer, 0, 4096, 0), rejectsWithCode('INVALID_ARGUMENT', /not Node's \(buffer, offset, length, position\); use pread/))
      assert.equal(file.position, 0, 'the refused read did not move the position')
      const pread = file.pread as unknown as (...args: unknown[]) => Promise<number>
      await assert.rejects(pread.call(file, buffer, 0, 10, 0, 0), rejectsWithCode('INVALID_ARGUMENT', /pread takes/))
      assert.equal(await file.read(buffer, 100, 10), 100)
      assert.ok(buffer.subarray(10, 110).every((b) => b === 9) && buffer[9] === 0 && buffer[110] === 0)
      assert.equal(file.position, 100)
      assert.equal(await file.read(buffer), 4096)
      assert.equal(await file.pread(buffer, 8192, 16), 16)
      assert.ok(buffer.subarray(0, 16).every((b) => b === 0))
      await file.close()
    } finally {
      await g.close()
    }
  })
})
