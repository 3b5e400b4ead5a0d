// What a live migration keeps of a volume's old storage after the switch-over: I/O calls that
// resolved the volume before it still reach the volume, and the old engine state (with its block
// map) is let go once the grace period is over. Also reads of snapshots and scrubs racing the
// switch-over.

import { describe, it, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { queryObjects } from 'node:v8'
import { GalleonFS } from '../src/index.js'
import { VolumeBlocks } from '../src/engine/volume-blocks.js'
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

/** Engine states (VolumeBlocks) still reachable, after a full garbage collection. */
const engineStates = (): number => queryObjects(VolumeBlocks, { format: 'count' })

/**
 * A volume `v` of 16 blocks, blocks 0-3 written, limited to 1 operation a second on a QoS clock
 * that only the test moves; its one token is spent, so the next I/O calls resolve the volume's
 * record and then wait for the clock.
 */
async function throttledVolume (clock: ManualClock): Promise<GalleonFS> {
  const g = await GalleonFS.open({ inMemory: true, qos: { clock } })
  await g.createStorageClass(SECRET)
  await g.createVolume({ name: 'v', sizeBytes: 16 * BLOCK })
  for (let i = 0; i < 4; i++) await g.writeBlock('v', i, pattern(1, i))
  await g.setQoSPolicy('v', { limits: { iops: 1 } })
  await g.readBlock('v', 15)
  return g
}

async function waiting (g: GalleonFS, expected: number): Promise<void> {
  await settle()
  assert.equal((await g.getVolumeMetrics('v')).qos?.throttledQueue, expected, 'the calls resolved the volume and wait for QoS')
}

/**
 * With `queued` calls waiting for QoS: migrates the volume (timers mocked), lets the grace period
 * of the old storage pass, then lets the waiting calls go.
 */
async function migratePastGrace (g: GalleonFS, t: TestContext, clock: ManualClock, queued: number): Promise<void> {
  await waiting(g, queued)
  t.mock.timers.enable({ apis: ['setTimeout'] })
  await g.migrateVolume('v', { storageClass: SECRET.name })
  t.mock.timers.tick(GRACE_MS)
  await clock.advance(10_000)
}

describe('live migration: the old storage after the switch-over', () => {
  it('I/O calls that resolved the volume before the switch-over and run after it reach the new storage: nothing read or written is lost', async () => {
    const clock = new ManualClock()
    const g = await throttledVolume(clock)
    try {
      const read = g.readBlock('v', 0)
      const trimmed = g.trim('v', BLOCK, BLOCK)
      const written = g.writeBlock('v', 2, pattern(2, 2))
      await waiting(g, 3)
      const moved = await g.migrateVolume('v', { storageClass: SECRET.name })
      assert.equal(moved.encrypted, true)
      // The old storage is deleted by now; the calls go on.
      await clock.advance(10_000)
      assert.deepEqual(await read, pattern(1, 0))
      await trimmed
      await written
      await g.clearQoSPolicy('v')
      assert.deepEqual(await g.readBlock('v', 0), pattern(1, 0))
      assert.deepEqual(await g.readBlock('v', 1), new Uint8Array(BLOCK), 'the trim reached the migrated volume')
      assert.deepEqual(await g.readBlock('v', 2), pattern(2, 2), 'the write reached the migrated volume')
      assert.deepEqual(await g.readBlock('v', 3), pattern(1, 3))
    } finally {
      await g.close()
    }
  })

  it('calls that waited longer than the grace period still reach the new storage, not the deleted one', async (t) => {
    const clock = new ManualClock()
    const g = await throttledVolume(clock)
    try {
      const read = g.readBlock('v', 0)
      const written = g.writeBlock('v', 2, pattern(3, 2))
      await migratePastGrace(g, t, clock, 2)
      assert.deepEqual(await read, pattern(1, 0), 'the read sees the volume\'s data, not an empty storage')
      await written
      await g.clearQoSPolicy('v')
      assert.deepEqual(await g.readBlock('v', 2), pattern(3, 2), 'the write reached the migrated volume')
      assert.deepEqual(await g.readBlock('v', 3), pattern(1, 3))
    } finally {
      await g.close()
    }
  })

  it('keeps the old storage\'s engine state for the grace period after the switch-over, then lets it go', async (t) => {
    const clock = new ManualClock()
    const g = await throttledVolume(clock)
    try {
      const read = g.readBlock('v', 0)
      await waiting(g, 1)
      // Only the grace timer is armed through setTimeout from here on (QoS runs on its own clock).
      t.mock.timers.enable({ apis: ['setTimeout'] })
      const before = engineStates()
      await g.migrateVolume('v', { storageClass: SECRET.name })
      assert.equal(engineStates(), before + 1, 'the new storage\'s engine state, and the old one\'s, retired')
      t.mock.timers.tick(GRACE_MS - 1)
      assert.equal(engineStates(), before + 1, 'the old engine state is kept until the grace period ends')
      // What it is kept for: a call that resolved the volume before the switch-over still reaches it.
      await clock.advance(10_000)
      assert.deepEqual(await read, pattern(1, 0))
      t.mock.timers.tick(1)
      assert.equal(engineStates(), before, 'the old engine state (and its block map) is unreachable once the grace period is over')
      await g.clearQoSPolicy('v')
      assert.deepEqual(await g.readBlock('v', 3), pattern(1, 3))
    } finally {
      await g.close()
    }
  })
})

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
      await g.setQoSPolicy('v', { limits: { iops: 1 } })
      await g.readBlock('v', 15)
      const block = g.readBlock({ volume: 'v', snapshot: 's' }, 0)
      const range = g.read({ volume: 'v', snapshot: 's' }, 0, 2 * BLOCK)
      await migratePastGrace(g, t, clock, 2)
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
