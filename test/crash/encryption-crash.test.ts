// Crash test of encryption: child processes (encryption-child.ts) write durable blocks to an
// encrypted volume while its data key is rotated (re-encryption in the background, resumed by each
// next open), snapshots are taken and clones made, and are killed with SIGKILL at random moments.
// Checked across all trials on one storage:
//   - no (volume, key version, nonce) is ever handed to the store twice, whatever the kills lost
//     (the nonce reservation is persisted before use);
//   - after each kill the storage opens, the volume and its snapshots scrub clean (every block
//     authenticates), every acknowledged durable write is there (or a later one);
//   - kills do land during rotations (some opens resume one), and every rotation eventually
//     finishes: at the end exactly one data key is left.
//
// Env: GALLEON_CRASH_TRIALS (default 50; 25 when CI=true; this test runs a third of that, at least 6), GALLEON_CRASH_SEED.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS, WriteConcern } from '../../src/index.js'
import { BLOCK_BYTES, blockPayload, decodeBlockAt } from './snapshot-child.js'
import { VOLUME, VOLUME_BLOCKS } from './encryption-child.js'
import { killAfterReady, trialCount } from './support.js'
import { seededRandom } from '../conformance/fixtures.js'

const TRIALS = Math.max(6, Math.ceil(trialCount() / 3))
const BASE_SEED = process.env.GALLEON_CRASH_SEED !== undefined ? Number(process.env.GALLEON_CRASH_SEED) : Math.floor(Math.random() * 0x7fffffff)
const CHILD = fileURLToPath(new URL('./encryption-child.ts', import.meta.url))
const SEQ_STRIDE = 1 << 24
/** Seals the trials must see, all told, for the nonce check to mean something. */
const MIN_SEALS = 1000

for (const backend of ['file', 'level'] as const) {
  describe(`encryption crash test: ${backend}`, () => {
    it(`${TRIALS} SIGKILL trials during writes and data-key rotations never repeat a nonce nor lose an acknowledged write`, async () => {
      const storagePath = await mkdtemp(join(tmpdir(), `galleon-enccrash-${backend}-`))
      const seed = BASE_SEED ^ (backend === 'file' ? 0 : 0x2545f491)
      const random = seededRandom(seed)
      try {
        const setup = await GalleonFS.open({ storagePath, backend })
        await setup.createVolume({ name: VOLUME, sizeBytes: VOLUME_BLOCKS * BLOCK_BYTES, storageClass: 'encrypted-storage', replicas: 1 })
        // Fill it, so every rotation has thousands of blocks to re-seal.
        for (let at = 0; at < VOLUME_BLOCKS; at += 64) {
          const run = new Uint8Array(64 * BLOCK_BYTES)
          for (let i = 0; i < 64; i++) run.set(blockPayload(at + i, 1), i * BLOCK_BYTES)
          await setup.write(VOLUME, at * BLOCK_BYTES, run, WriteConcern.WriteDurable)
        }
        await setup.close()
        const nonces = new Set<string>()
        const acks = new Map<number, number>()
        for (let i = 0; i < VOLUME_BLOCKS; i++) acks.set(i, 1)
        let resumed = 0
        let rotations = 0
        let sealed = 0
        // On a loaded machine a child seals less before its kill: more trials then (up to three
        // times as many), until enough seals were seen to mean something.
        for (let trial = 0; trial < TRIALS || (sealed <= MIN_SEALS && trial < 3 * TRIALS); trial++) {
          const delay = 40 + Math.floor(random() * 500)
          const { killed, lines, exit } = await killAfterReady(CHILD, [storagePath, backend, String((trial + 1) * SEQ_STRIDE), String(Math.floor(random() * 0x7fffffff))], delay)
          const context = `seed ${seed}, trial ${trial} (kill after ${delay} ms)`
          assert.ok(killed, `${context}: child exited with ${exit.code} before the kill: ${lines.slice(-3).join(' | ')} ${exit.stderr.slice(0, 2000)}`)
          for (const line of lines) {
            const [kind, a, b, c] = line.split(' ') as [string, string, string, string]
            if (kind === 'error') assert.fail(`${context}: ${line}`)
            if (kind === 'ready' && a === '1') resumed++
            if (kind === 'K') rotations++
            if (kind === 'N') {
              const key = `${a}/${b}/${c}`
              assert.ok(!nonces.has(key), `${context}: nonce ${c} of key ${b} of storage ${a} used twice`)
              nonces.add(key)
              sealed++
            }
            if (kind === 'A') acks.set(Number(a), Math.max(acks.get(Number(a)) ?? 0, Number(b)))
          }
          // Recovery in this process: everything authenticates, every acknowledged write is there.
          const g = await GalleonFS.open({ storagePath, backend })
          try {
            if ((await g.getVolumeEncryption(VOLUME)).rotation !== undefined) resumed++
            for (const volume of await g.listVolumes()) {
              const scrub = await g.scrub(volume.name)
              assert.deepEqual(scrub.badBlocks, [], `${context}: scrub of ${volume.name}`)
            }
            const live = await g.read(VOLUME, 0, VOLUME_BLOCKS * BLOCK_BYTES)
            for (let i = 0; i < VOLUME_BLOCKS; i++) {
              const found = decodeBlockAt(live, i * BLOCK_BYTES, i)
              assert.ok(found.kind === 'data' && found.seq >= (acks.get(i) as number), `${context}: block ${i} holds ${JSON.stringify(found)}, acknowledged seq ${acks.get(i)}`)
            }
          } finally {
            // Closing here also stops (and later resumes) a rotation this open resumed.
            await g.close()
          }
        }
        assert.ok(sealed > MIN_SEALS, `only ${sealed} seals seen`)
        assert.ok(rotations > 0, 'no rotation was started')
        assert.ok(resumed > 0, 'no kill landed during a rotation')
        // Finish whatever rotation is pending, then one key is left.
        const g = await GalleonFS.open({ storagePath, backend })
        try {
          for (let waited = 0; (await g.getVolumeEncryption(VOLUME)).rotation !== undefined; waited++) {
            assert.ok(waited < 6000, 'the pending rotation did not finish')
            await new Promise((resolve) => setTimeout(resolve, 10))
          }
          assert.equal((await g.getVolumeEncryption(VOLUME)).keyVersions?.length, 1)
          assert.deepEqual((await g.scrub(VOLUME)).badBlocks, [])
        } finally {
          await g.close()
        }
        process.stdout.write(`# ${backend}: ${TRIALS} trials, ${sealed} seals, ${rotations} rotations started, ${resumed} resumed at open\n`)
      } finally {
        await rm(storagePath, { recursive: true, force: true })
      }
    })
  })
}
