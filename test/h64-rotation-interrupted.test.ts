// h64: rotateVolumeKey({ wait: true }) cut short by close() or by a forced deleteVolume. The
// background re-encryption stops quietly in both cases (src/facade/key-rotation.ts, startRotation),
// and the waiting call then reported IO_ERROR ("stopped before it finished; it resumes at the next
// open"): no I/O failed, and a deleted volume resumes nothing. Found by the control-plane race
// fuzz (test/h64-control-plane-race.test.ts, seed 7: close() while a rotation waited).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS } from '../src/index.js'
import { expectCode } from './support/assertions.js'
import { observed } from './support/observed.js'
import { withTempDir } from './support/temp-dir.js'

/** An encrypted volume with 4 MiB written, so that its re-encryption takes many batches. */
async function encryptedVolume (g: GalleonFS): Promise<void> {
  await g.createVolume({ name: 'sec', sizeBytes: '4M', storageClass: 'encrypted-storage', replicas: 1 })
  await g.write('sec', 0, new Uint8Array(4 * 1024 * 1024).fill(7))
}

describe('h64: a waiting key rotation cut short', () => {
  it('by close() rejects with CANCELLED (not IO_ERROR), and the rotation finishes after reopen', async () => {
    await withTempDir('galleon-h64-rot-', async (storagePath) => {
      const g = await GalleonFS.open({ storagePath })
      await encryptedVolume(g)
      const rotation = observed(g.rotateVolumeKey('sec', { wait: true }))
      await new Promise((resolve) => setImmediate(resolve))
      await g.close()
      await expectCode(rotation, 'CANCELLED', 'next open')
      const again = await GalleonFS.open({ storagePath })
      try {
        const done = await again.rotateVolumeKey('sec', { wait: true }).catch(async (err) => {
          // A second rotation may be refused while the resumed one runs: wait for that one instead.
          if (err?.code !== 'BUSY') throw err
          for (;;) {
            const state = await again.getVolumeEncryption('sec')
            if (state.rotation === undefined) return state
            await new Promise((resolve) => setTimeout(resolve, 20))
          }
        })
        assert.equal(done.rotation, undefined)
        const data = await again.read('sec', 0, 4 * 1024 * 1024)
        assert.ok(data.every((byte) => byte === 7))
      } finally {
        await again.close()
      }
    })
  })

  it('by a forced deleteVolume rejects with VOLUME_NOT_FOUND (not IO_ERROR saying it resumes)', async () => {
    await withTempDir('galleon-h64-rot-', async (storagePath) => {
      const g = await GalleonFS.open({ storagePath })
      try {
        await encryptedVolume(g)
        const rotation = observed(g.rotateVolumeKey('sec', { wait: true }))
        await new Promise((resolve) => setImmediate(resolve))
        await g.deleteVolume('sec', { force: true })
        await expectCode(rotation, 'VOLUME_NOT_FOUND', 'sec')
        await expectCode(g.getVolume('sec'), 'VOLUME_NOT_FOUND')
      } finally {
        await g.close()
      }
    })
  })
})
