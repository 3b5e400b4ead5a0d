// Crash test of live migration: child processes (migration-child.ts) write durable blocks while the
// volume is migrated back and forth between a plain and an encrypting class, and are killed with
// SIGKILL at random moments. After each kill the storage opens and the volume is complete on
// exactly one copy: its class and encryption agree, every block holds its last acknowledged durable
// write (or a later one), never zeros or a stale version from the other copy; its snapshot reads
// exactly as when it was taken; scrub is clean; and the storage the migration left behind is
// removed (the stored block count does not grow from trial to trial).
//
// Env: GALLEON_CRASH_TRIALS (default 50; 25 when CI=true; this test runs a fifth of that, at least 10), GALLEON_CRASH_SEED.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS, WriteConcern } from '../../src/index.js'
import { BLOCK_BYTES, blockPayload, decodeBlockAt } from './snapshot-child.js'
import { SECRET_CLASS, VOLUME, VOLUME_BLOCKS } from './migration-child.js'
import { killAfterReady, trialCount } from './support.js'
import { seededRandom } from '../conformance/fixtures.js'

const TRIALS = Math.max(10, Math.ceil(trialCount() / 5))
const BASE_SEED = process.env.GALLEON_CRASH_SEED !== undefined ? Number(process.env.GALLEON_CRASH_SEED) : Math.floor(Math.random() * 0x7fffffff)
const CHILD = fileURLToPath(new URL('./migration-child.ts', import.meta.url))
const SEQ_STRIDE = 1 << 24

describe('migration crash test', () => {
  it(`${TRIALS} SIGKILL trials during live migrations leave one complete copy with every acknowledged write`, async () => {
    const backend = 'file'
    const storagePath = await mkdtemp(join(tmpdir(), 'galleon-migcrash-'))
    const seed = BASE_SEED
    const random = seededRandom(seed)
    try {
      const setup = await GalleonFS.open({ storagePath, backend })
      await setup.createStorageClass({ name: SECRET_CLASS, parameters: { encryption: 'true', replication: '1' } })
      await setup.createVolume({ name: VOLUME, sizeBytes: VOLUME_BLOCKS * BLOCK_BYTES })
      for (let at = 0; at < VOLUME_BLOCKS; at += 64) {
        const run = new Uint8Array(64 * BLOCK_BYTES)
        for (let i = 0; i < 64; i++) run.set(blockPayload(at + i, 1), i * BLOCK_BYTES)
        await setup.write(VOLUME, at * BLOCK_BYTES, run, WriteConcern.WriteDurable)
      }
      await setup.createSnapshot(VOLUME, 'base')
      const base = await setup.read({ volume: VOLUME, snapshot: 'base' }, 0, VOLUME_BLOCKS * BLOCK_BYTES)
      await setup.close()
      const acks = new Map<number, number>()
      for (let i = 0; i < VOLUME_BLOCKS; i++) acks.set(i, 1)
      let killedMidMigration = 0
      let switchedUnreported = 0
      let completed = 0
      const storedBlocks: number[] = []
      for (let trial = 0; trial < TRIALS; trial++) {
        // Mostly early kills, which land mid-migration; every third trial runs long enough for
        // migrations to complete (a migration yields to the four writers and takes about a second:
        // with kills at 0.1-1 s only, whole runs saw none complete).
        const delay = trial % 3 === 2 ? 1500 + Math.floor(random() * 2500) : 100 + Math.floor(random() * 900)
        const { killed, lines, exit } = await killAfterReady(CHILD, [storagePath, backend, String((trial + 1) * SEQ_STRIDE), String(Math.floor(random() * 0x7fffffff))], delay)
        const context = `seed ${seed}, trial ${trial} (kill after ${delay} ms)`
        assert.ok(killed, `${context}: child exited with ${exit.code} before the kill: ${lines.slice(-3).join(' | ')} ${exit.stderr.slice(0, 2000)}`)
        let started: string | undefined
        let lastClass: string | undefined
        for (const line of lines) {
          const [kind, a, b] = line.split(' ') as [string, string, string]
          if (kind === 'error') assert.fail(`${context}: ${line}`)
          if (kind === 'ready') lastClass = a
          if (kind === 'S') started = a
          if (kind === 'M') { started = undefined; lastClass = a; completed++ }
          if (kind === 'A') acks.set(Number(a), Math.max(acks.get(Number(a)) ?? 0, Number(b)))
        }
        const g = await GalleonFS.open({ storagePath, backend })
        try {
          const volume = await g.getVolume(VOLUME)
          // Either the copy it was on, or the one a migration in flight was switching to.
          const allowed = started === undefined ? [lastClass] : [lastClass, started]
          assert.ok(allowed.includes(volume.storageClass), `${context}: volume in class ${volume.storageClass}, expected one of ${allowed.join(', ')}`)
          if (started !== undefined) killedMidMigration++
          if (started !== undefined && volume.storageClass === started) switchedUnreported++
          assert.equal(volume.encrypted, volume.storageClass === SECRET_CLASS, `${context}: encryption agrees with the class`)
          assert.equal((await g.getVolumeEncryption(VOLUME)).encrypted, volume.storageClass === SECRET_CLASS)
          assert.deepEqual((await g.scrub(VOLUME)).badBlocks, [], `${context}: scrub`)
          const live = await g.read(VOLUME, 0, VOLUME_BLOCKS * BLOCK_BYTES)
          for (let i = 0; i < VOLUME_BLOCKS; i++) {
            const found = decodeBlockAt(live, i * BLOCK_BYTES, i)
            assert.ok(found.kind === 'data' && found.seq >= (acks.get(i) as number), `${context}: block ${i} holds ${JSON.stringify(found)}, acknowledged seq ${acks.get(i)}`)
          }
          assert.deepEqual(await g.read({ volume: VOLUME, snapshot: 'base' }, 0, VOLUME_BLOCKS * BLOCK_BYTES), base, `${context}: snapshot base`)
          storedBlocks.push((await g.getStorageStats()).blocks)
        } finally {
          await g.close()
        }
      }
      // One copy's live blocks plus the snapshot's: what an abandoned copy would leave would pile up.
      for (const blocks of storedBlocks) assert.ok(blocks <= 2 * VOLUME_BLOCKS + 64, `stored blocks ${blocks}: a copy was left behind (${storedBlocks.join(', ')})`)
      assert.ok(completed > 0, 'no migration completed in any trial')
      assert.ok(killedMidMigration > 0, 'no kill landed during a migration')
      process.stdout.write(`# ${TRIALS} trials: ${completed} migrations completed, ${killedMidMigration} kills during one (${switchedUnreported} of them after its switch-over)\n`)
    } finally {
      await rm(storagePath, { recursive: true, force: true })
    }
  })
})
