// README "Live migration": the progress reports and the release of the old storage, on the file
// backend (test/migration*.test.ts cover the data, refusals, cancellation and crashes).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'

interface Progress { volumeId: string, phase: string, blocksDone: number, blocksTotal: number, pass: number }

const CHUNK = 65536

describe('README Live migration', () => {
  it('progress: snapshots, copy, switchover, done, in that order, to events and onProgress alike; blocksTotal grows with writes to copied blocks; volume:migrated follows; the old storage is released', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'h56-migrate-'))
    const g = await GalleonFS.open({ storagePath: dir })
    try {
      await g.createStorageClass({ name: 'secret-local', parameters: { encryption: 'true', replication: '1' } })
      const vol = await g.createVolume({ name: 'db', sizeBytes: '16M' })
      for (let i = 0; i < 64; i++) await g.write('db', i * CHUNK, new Uint8Array(CHUNK).fill(i + 1))
      await g.createSnapshot('db', 'monday')
      await g.write('db', 0, new Uint8Array(CHUNK).fill(0xaa))
      await g.createSnapshot('db', 'tuesday')
      await g.write('db', CHUNK, new Uint8Array(CHUNK).fill(0xbb))
      const storedBefore = (await g.getStorageStats()).blocks

      const events: Progress[] = []
      const calls: Progress[] = []
      const order: string[] = []
      g.on('volume:migration-progress', (event) => { events.push({ ...event }); order.push(`progress:${event.phase}`) })
      g.on('volume:migrated', () => order.push('migrated'))
      // Once the copy has started, rewrite blocks it has copied: they must be copied again and counted.
      let totalWhenWritten: number | undefined
      const writes: Array<Promise<void>> = []
      const moved = await g.migrateVolume('db', { storageClass: 'secret-local' }, {
        onProgress: (event) => {
          calls.push({ ...event })
          if (event.phase === 'copy' && totalWhenWritten === undefined && event.blocksDone > 0) {
            totalWhenWritten = event.blocksTotal
            for (let i = 0; i < 16; i++) writes.push(g.write('db', i * 7 * 4096, new Uint8Array(4096).fill(0xcc)))
          }
        }
      })
      await Promise.all(writes)
      assert.equal(moved.encrypted, true)

      assert.deepEqual(calls, events, 'onProgress gets what the events carry')
      assert.ok(events.every((event) => event.volumeId === vol.id))
      const phases = events.map((event) => event.phase)
      const rank = { snapshots: 0, copy: 1, switchover: 2, done: 3 } as Record<string, number>
      assert.ok(phases.every((phase) => phase in rank), phases.join(' '))
      assert.ok(phases.every((phase, i) => i === 0 || (rank[phase] as number) >= (rank[phases[i - 1] as string] as number)), `phases out of order: ${phases.join(' ')}`)
      assert.equal(phases[0], 'snapshots', 'a volume with snapshots copies them first')
      assert.equal(phases.at(-1), 'done')
      assert.equal(phases.filter((phase) => phase === 'done').length, 1)
      assert.equal(order.at(-1), 'migrated', `volume:migrated follows the last progress report: ${order.join(' ')}`)
      for (let i = 0; i < events.length; i++) {
        const event = events[i] as Progress
        assert.ok(event.blocksDone <= event.blocksTotal, `${event.blocksDone} of ${event.blocksTotal}`)
        if (i > 0) assert.ok(event.blocksTotal >= (events[i - 1] as Progress).blocksTotal, 'blocksTotal never shrinks')
      }
      const done = events.at(-1) as Progress
      assert.equal(done.blocksDone, done.blocksTotal)
      assert.ok(totalWhenWritten !== undefined, 'the copy reported progress')
      assert.ok(done.blocksTotal > totalWhenWritten, `blocksTotal ${done.blocksTotal} did not grow past ${totalWhenWritten} when copied blocks were written again`)

      // The data and the snapshots, as they were; the writes made during the copy included.
      assert.deepEqual(await g.read('db', 0, 4096), new Uint8Array(4096).fill(0xcc))
      assert.deepEqual(await g.read('db', 4096, 4096), new Uint8Array(4096).fill(0xaa))
      assert.deepEqual(await g.read({ volume: 'db', snapshot: 'monday' }, 0, 4096), new Uint8Array(4096).fill(1))
      assert.deepEqual(await g.read({ volume: 'db', snapshot: 'tuesday' }, CHUNK, 4096), new Uint8Array(4096).fill(2))
      // "The old storage is then released": as many block versions as the volume holds, not twice as many.
      const storedAfter = (await g.getStorageStats()).blocks
      assert.ok(storedAfter <= storedBefore + 16, `the store holds ${storedAfter} block versions after the move, ${storedBefore} before it`)
    } finally {
      await g.close()
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('BUSY for a volume clones read from; force-deleting the snapshots they came from (a live clone\'s own one included) lets it move, and the clones keep their data', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createStorageClass({ name: 'secret-local', parameters: { encryption: 'true', replication: '1' } })
      await g.createVolume({ name: 'db', sizeBytes: '1M' })
      await g.write('db', 0, new Uint8Array(8192).fill(3))
      await g.createSnapshot('db', 'base')
      const fromSnapshot = await g.cloneVolume({ volume: 'db', snapshot: 'base' }, 'from-snapshot')
      const live = await g.cloneVolume('db', 'from-live')
      const busy = (err: unknown): boolean => (err as { code?: string }).code === 'BUSY'
      await assert.rejects(g.migrateVolume('db', { storageClass: 'secret-local' }), busy)
      await g.deleteSnapshot('db', 'base', { force: true })
      await assert.rejects(g.migrateVolume('db', { storageClass: 'secret-local' }), busy, 'the live clone still reads from db')
      const left = await g.listSnapshots('db')
      assert.equal(left.length, 1, `a clone of the live volume shows the snapshot it came from: ${left.map((snap) => snap.name).join(', ')}`)
      await g.deleteSnapshot('db', (left[0] as { name: string }).name, { force: true })
      assert.equal((await g.migrateVolume('db', { storageClass: 'secret-local' })).storageClass, 'secret-local')
      for (const clone of [fromSnapshot, live]) assert.deepEqual(await g.read(clone, 0, 8192), new Uint8Array(8192).fill(3), clone.name)
      assert.deepEqual(await g.read('db', 0, 8192), new Uint8Array(8192).fill(3))
    } finally {
      await g.close()
    }
  })
})
