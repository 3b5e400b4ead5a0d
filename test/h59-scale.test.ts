// Scale, functionally: thousands of volumes and hundreds of snapshots of one volume survive a reopen
// whole, list, read back, show in the metrics and go away again on the durable backends. (How the
// costs grow is measured outside the suite, by scripts: no timing here.)

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS } from '../src/index.js'
import { withTempDir } from './support/temp-dir.js'

const VOLUMES = 2000
const BLOCK = 4096

/** A block whose bytes name the volume and the block index, so a mixed-up read shows. */
function pattern (volume: number, index: number): Uint8Array {
  const block = new Uint8Array(BLOCK)
  const view = new DataView(block.buffer)
  for (let at = 0; at < BLOCK; at += 8) { view.setUint32(at, volume); view.setUint32(at + 4, index) }
  return block
}

for (const backend of ['file', 'level'] as const) {
  describe(`h59 scale: ${VOLUMES} volumes on the ${backend} backend`, () => {
    it('open, list, read, report in the metrics and delete every one of them, across reopens', async () => {
      await withTempDir('h59-volumes-', async (dir) => {
        let g = await GalleonFS.open({ storagePath: dir, backend })
        try {
          for (let i = 0; i < VOLUMES; i++) {
            await g.createVolume({ name: `v${i}`, sizeBytes: 16 * BLOCK, labels: { n: String(i) } })
            await g.writeBlock(`v${i}`, i % 16, pattern(i, i % 16))
          }
          await g.close()
          g = await GalleonFS.open({ storagePath: dir, backend })

          const listed = await g.listVolumes()
          assert.equal(listed.length, VOLUMES)
          assert.deepEqual(new Set(listed.map((v) => v.name)), new Set(Array.from({ length: VOLUMES }, (_, i) => `v${i}`)))
          assert.equal(new Set(listed.map((v) => v.id)).size, VOLUMES, 'every volume keeps its own id')
          for (const volume of listed) assert.equal(volume.name, `v${volume.labels?.n}`)

          // Every volume reads its own block back, and zeros elsewhere.
          for (let i = 0; i < VOLUMES; i++) {
            assert.deepEqual(await g.readBlock(`v${i}`, i % 16), pattern(i, i % 16), `v${i} block ${i % 16}`)
            assert.ok((await g.readBlock(`v${i}`, (i + 1) % 16)).every((byte) => byte === 0), `v${i} unwritten block`)
          }

          const text = await g.metricsText()
          const sizes = text.split('\n').filter((line) => line.startsWith('galleonfs_volume_size_bytes{'))
          assert.equal(sizes.length, VOLUMES, 'one size series per volume')
          assert.ok(sizes.every((line) => line.endsWith(` ${16 * BLOCK}`)))

          // Delete every other volume; the rest stay whole through another reopen.
          for (let i = 0; i < VOLUMES; i += 2) await g.deleteVolume(`v${i}`)
          await g.close()
          g = await GalleonFS.open({ storagePath: dir, backend })
          const left = await g.listVolumes()
          assert.equal(left.length, VOLUMES / 2)
          assert.ok(left.every((v) => Number(v.name.slice(1)) % 2 === 1))
          for (let i = 1; i < VOLUMES; i += 2) assert.deepEqual(await g.readBlock(`v${i}`, i % 16), pattern(i, i % 16))
          await assert.rejects(g.getVolume('v0'), { code: 'VOLUME_NOT_FOUND' })
          // A deleted name can be taken again, and starts out empty.
          await g.createVolume({ name: 'v0', sizeBytes: 16 * BLOCK })
          assert.ok((await g.readBlock('v0', 0)).every((byte) => byte === 0))

          for (const volume of await g.listVolumes()) await g.deleteVolume(volume.id)
          assert.deepEqual(await g.listVolumes(), [])
          assert.equal((await g.getStorageStats()).blocks, 0, 'no block of a deleted volume is left in the store')
          const after = (await g.metricsText()).split('\n').filter((line) => line.startsWith('galleonfs_volume_size_bytes{'))
          assert.deepEqual(after, [], 'no series of a deleted volume is left in the metrics')
        } finally {
          await g.close()
        }
        const reopened = await GalleonFS.open({ storagePath: dir, backend })
        try {
          assert.deepEqual(await reopened.listVolumes(), [])
        } finally {
          await reopened.close()
        }
      })
    })
  })
}

describe('h59 scale: 400 snapshots of one volume', () => {
  it('each snapshot reads what the volume held when it was taken, through reverts, deletes and a reopen', async () => {
    await withTempDir('h59-snapshots-', async (dir) => {
      const SNAPSHOTS = 400
      const BLOCKS = 64
      let g = await GalleonFS.open({ storagePath: dir })
      try {
        await g.createVolume({ name: 'db', sizeBytes: BLOCKS * BLOCK })
        // Snapshot s<k> is taken after write k: block (k % BLOCKS) holds pattern(k, k % BLOCKS).
        const expected = (snapshot: number, index: number): Uint8Array | undefined => {
          for (let k = snapshot; k >= 0; k--) if (k % BLOCKS === index) return pattern(k, index)
          return undefined
        }
        for (let k = 0; k < SNAPSHOTS; k++) {
          await g.writeBlock('db', k % BLOCKS, pattern(k, k % BLOCKS))
          await g.createSnapshot('db', `s${k}`)
        }
        assert.equal((await g.listSnapshots('db')).length, SNAPSHOTS)
        await g.close()
        g = await GalleonFS.open({ storagePath: dir })
        const names = (await g.listSnapshots('db')).map((s) => s.name)
        assert.equal(names.length, SNAPSHOTS)
        assert.deepEqual(new Set(names), new Set(Array.from({ length: SNAPSHOTS }, (_, k) => `s${k}`)))

        const check = async (snapshot: number, index: number): Promise<void> => {
          const want = expected(snapshot, index) ?? new Uint8Array(BLOCK)
          assert.deepEqual(await g.readBlock({ volume: 'db', snapshot: `s${snapshot}` }, index), want, `s${snapshot} block ${index}`)
        }
        for (const snapshot of [0, 1, 63, 64, 199, 200, 398, 399]) for (const index of [0, 1, 7, 63]) await check(snapshot, index)

        // Revert to an old snapshot: the live volume reads as it did then; later snapshots stay.
        await g.restoreSnapshot('db', 's100')
        for (let index = 0; index < BLOCKS; index++) assert.deepEqual(await g.readBlock('db', index), expected(100, index) ?? new Uint8Array(BLOCK))
        await check(399, 5)

        // Delete every odd snapshot (each one's blocks pass to its neighbours), then check the rest.
        for (let k = 1; k < SNAPSHOTS; k += 2) await g.deleteSnapshot('db', `s${k}`)
        assert.equal((await g.listSnapshots('db')).length, SNAPSHOTS / 2)
        for (const snapshot of [0, 62, 64, 200, 398]) for (const index of [0, 1, 62, 63]) await check(snapshot, index)
        const report = await g.scrub('db')
        assert.deepEqual(report.badBlocks, [])

        for (let k = 0; k < SNAPSHOTS; k += 2) await g.deleteSnapshot('db', `s${k}`)
        assert.deepEqual(await g.listSnapshots('db'), [])
        // Only the live volume's blocks remain stored once no snapshot holds the others.
        assert.equal((await g.getStorageStats()).blocks, BLOCKS)
        for (let index = 0; index < BLOCKS; index++) assert.deepEqual(await g.readBlock('db', index), expected(100, index) ?? new Uint8Array(BLOCK))
      } finally {
        await g.close()
      }
    })
  })
})
