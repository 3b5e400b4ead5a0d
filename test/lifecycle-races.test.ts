// Lifecycle operations (migration, deletion, revert, expansion) racing I/O calls that resolved a
// volume before them and ran after: what those calls read and write.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS } from '../src/index.js'
import { ManualClock, settle } from './support/manual-clock.js'

const BLOCK = 4096
const SECRET = { name: 'secret-local', parameters: { encryption: 'true', replication: '1' } }
/** RETIRED_GRACE_MS in src/facade/live-migration.ts. */
const GRACE_MS = 60_000

function pattern (seed: number, index: number): Uint8Array {
  const out = new Uint8Array(BLOCK)
  for (let i = 0; i < BLOCK; i++) out[i] = (seed * 31 + index * 7 + i) & 0xff
  return out
}

/** Spends the one token of a volume limited to 1 operation a second: the next I/O calls wait for the clock. */
async function throttle (g: GalleonFS, volume: string): Promise<void> {
  await g.setQoSPolicy(volume, { limits: { iops: 1 } })
  await g.readBlock(volume, 15)
}

async function waiting (g: GalleonFS, volume: string, expected: number): Promise<void> {
  await settle()
  assert.equal((await g.getVolumeMetrics(volume)).qos?.throttledQueue, expected, 'the calls resolved the volume and wait for QoS')
}

describe('lifecycle races: I/O resolved before a live migration', () => {
  it('a snapshot read that waited longer than the grace period reads the snapshot, not the live data at the old generation', async (t) => {
    const clock = new ManualClock()
    const g = await GalleonFS.open({ inMemory: true, qos: { clock } })
    try {
      await g.createStorageClass(SECRET)
      await g.createVolume({ name: 'v', sizeBytes: 16 * BLOCK })
      // Many generations before the snapshot: the copy on the new storage uses far fewer, so the
      // snapshot's generation there differs from the one the read resolved.
      for (let seq = 0; seq < 10; seq++) await g.writeBlock('v', 0, pattern(1, 0))
      await g.writeBlock('v', 1, pattern(1, 1))
      await g.createSnapshot('v', 's')
      await g.writeBlock('v', 0, pattern(2, 0))
      await g.writeBlock('v', 1, pattern(2, 1))
      await throttle(g, 'v')
      const block = g.readBlock({ volume: 'v', snapshot: 's' }, 0)
      const range = g.read({ volume: 'v', snapshot: 's' }, 0, 2 * BLOCK)
      await waiting(g, 'v', 2)
      t.mock.timers.enable({ apis: ['setTimeout'] })
      await g.migrateVolume('v', { storageClass: SECRET.name })
      t.mock.timers.tick(GRACE_MS)
      await clock.advance(10_000)
      assert.deepEqual(await block, pattern(1, 0), 'readBlock of the snapshot')
      const bytes = await range
      assert.deepEqual(bytes.subarray(0, BLOCK), pattern(1, 0), 'read of the snapshot, block 0')
      assert.deepEqual(bytes.subarray(BLOCK), pattern(1, 1), 'read of the snapshot, block 1')
      await g.clearQoSPolicy('v')
      assert.deepEqual(await g.readBlock('v', 0), pattern(2, 0), 'the live data is the one written after the snapshot')
    } finally {
      await g.close()
    }
  })
})

describe('lifecycle races: a scrub across a live migration\'s switch-over', () => {
  it('a scrub waiting at the switch-over goes on with the volume\'s new storage, not VOLUME_NOT_FOUND', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createStorageClass(SECRET)
      await g.createVolume({ name: 'v', sizeBytes: 16 * BLOCK })
      for (let i = 0; i < 8; i++) await g.writeBlock('v', i, pattern(1, i))
      let scrubbed: Promise<unknown> | undefined
      await g.migrateVolume('v', { storageClass: SECRET.name }, {
        // Writes are paused here (the old storage's gate is closed): the scrub waits for the switch-over.
        onProgress: (event) => { if (event.phase === 'switchover') scrubbed ??= g.scrub('v') }
      })
      assert.ok(scrubbed !== undefined, 'the migration reported its switch-over')
      const report = await scrubbed as Awaited<ReturnType<GalleonFS['scrub']>>
      assert.equal(report.blocksChecked, 8)
      assert.deepEqual(report.badBlocks, [])
    } finally {
      await g.close()
    }
  })
})
