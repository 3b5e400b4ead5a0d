// Seeded random sequences against encryption at rest and key management, on the file and level
// backends (one block size per run), checked against a plain byte model of every volume and
// snapshot: writes (aligned, unaligned, zeroes, every write concern), trims, expansions, snapshots,
// reverts, clones of encrypted snapshots and volumes, deletions, data-key rotations (waited for or
// not, with writes in flight), key-encryption-key rotations and moves between the internal,
// passphrase, command (a KMS program in a temp dir) and in-process external providers, full and
// incremental backups (some cancelled by an AbortSignal) restored and verified after later
// rotations, migrations between an encrypting and a plain class (some aborted, some with writes in
// flight), bad requests, and closes and reopens, some with a missing or wrong key file, a wrong or
// missing passphrase or another KMS key, which must be refused with the documented error and, once
// the configuration is put right, read back every byte. Every few steps: reads equal the model,
// getVolumeEncryption reports the key version, provider and KEK the model expects, and no marker
// written to an encrypted volume (each written block carries a unique one) is in any file under
// the storage path or the backup target (markers of plain volumes are, which shows the scan works).
// GALLEON_FUZZ_SEED replays a run (a failure prints its seed and the steps so far);
// GALLEON_FUZZ_STEPS sets the steps per run; GALLEON_FUZZ_SCAN_EVERY_STEP=1 scans for plaintext after
// every step (to find the step that leaked). The defects it found are pinned by focused tests at
// the end of this file.
// The model, its operations and the run are in test/support/crypto-fuzz-{model,ops,run}.ts.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ExternalKeyProvider, GalleonError, GalleonFS } from '../src/index.js'
import { generateKey, unwrapKey, wrapKey } from '../src/crypto/keys.js'
import { SEALED } from './support/crypto-fuzz-model.js'
import { EncryptionFuzz } from './support/crypto-fuzz-run.js'
import { testSeed } from './support/test-seed.js'

const SEED = testSeed('GALLEON_FUZZ_SEED', 20261206)
const STEPS = Number(process.env.GALLEON_FUZZ_STEPS ?? 150)
if (!Number.isSafeInteger(SEED) || !Number.isSafeInteger(STEPS)) throw new Error('GALLEON_FUZZ_SEED and GALLEON_FUZZ_STEPS must be integers')

const dirs: string[] = []
after(async () => { for (const dir of dirs) await rm(dir, { recursive: true, force: true }) })
async function place (): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'galleon-crypto-fuzz-'))
  dirs.push(dir)
  return dir
}

describe('encryption at rest and key management against a model (seeded random operations)', () => {
  const runs = [
    [0, 'file', 4096, 'internal'],
    [1, 'level', 512, 'passphrase'],
    [2, 'file', 1024, 'command'],
    [3, 'level', 4096, 'external']
  ] as const
  for (const [run, backend, blockSize, mode] of runs) {
    const seed = SEED + run
    it(`run ${run}: ${backend} backend, ${blockSize}-byte blocks, starting with the ${mode} provider, seed ${seed}, ${STEPS} steps`, { timeout: 300_000 }, async (t) => {
      const fuzz = new EncryptionFuzz(seed, run, backend, blockSize, mode, place)
      try {
        await fuzz.open()
        for (let step = 0; step < STEPS; step++) {
          fuzz.say(`-- step ${step}`)
          await fuzz.step()
          if (step % 10 === 9) await fuzz.checkAll()
          if (step % 25 === 24 || process.env.GALLEON_FUZZ_SCAN_EVERY_STEP === '1') await fuzz.scan()
        }
        await fuzz.finish()
        t.diagnostic([...fuzz.stats].sort().map(([what, n]) => `${what}: ${n}`).join(', '))
        t.diagnostic(`ms per kind of step: ${[...fuzz.times].sort((a, b) => b[1] - a[1]).map(([what, ms]) => `${what} ${ms}`).join(', ')}`)
      } catch (err) {
        console.error(`encryption model fuzz failed: GALLEON_FUZZ_SEED=${SEED} (run ${run}, seed ${seed}) GALLEON_FUZZ_STEPS=${STEPS}; steps so far:\n${fuzz.log.join('\n')}`)
        throw err
      } finally {
        await fuzz.g?.close()
      }
    })
  }
})

describe('key management: defects the fuzz found', () => {
  it('a KEK move to a provider that cannot unwrap is refused also while no volume is encrypted, and the old provider stays', async () => {
    const storagePath = await place()
    const kek = generateKey()
    const working = new ExternalKeyProvider({ keyId: 'working', wrap: async (dek, context) => wrapKey(kek, dek, context), unwrap: async (wrapped, context) => unwrapKey(kek, wrapped, context) })
    const g = await GalleonFS.open({ storagePath, keyProvider: working })
    try {
      await g.createVolume({ name: 'plain', sizeBytes: 4096 * 4 })
      const other = generateKey()
      const encryptOnly = new ExternalKeyProvider({ keyId: 'encrypt-only', wrap: async (dek, context) => wrapKey(other, dek, context), unwrap: async () => { throw new Error('AccessDenied: kms:Decrypt') } })
      await assert.rejects(g.rotateKeyEncryptionKey({ keyProvider: encryptOnly }), (err: unknown) => err instanceof GalleonError && err.code === 'BACKEND_UNAVAILABLE' && /unwrap/.test(err.message))
      // The provider in use still wraps the keys of new encrypted volumes.
      await g.createStorageClass({ name: SEALED, provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
      await g.createVolume({ name: 'secret', sizeBytes: 4096 * 4, storageClass: SEALED })
      assert.equal((await g.getVolumeEncryption('secret')).kekId, 'working')
    } finally {
      await g.close()
    }
  })
})

describe('key management: defects the fuzz found in backups', () => {
  it('an incremental backup taken after a KEK move to another provider restores and verifies with that provider once its volume is gone, though its full base was taken under the old one', async () => {
    const storagePath = await place()
    const provider = (keyId: string, kek: Uint8Array): ExternalKeyProvider => new ExternalKeyProvider({ keyId, wrap: async (dek, context) => wrapKey(kek, dek, context), unwrap: async (wrapped, context) => unwrapKey(kek, wrapped, context) })
    const before = provider('kms-old', generateKey())
    const now = provider('kms-new', generateKey())
    const g = await GalleonFS.open({ storagePath, keyProvider: before, backupTarget: await place() })
    try {
      await g.createStorageClass({ name: SEALED, provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
      await g.createVolume({ name: 'secret', sizeBytes: 4096 * 4, storageClass: SEALED })
      await g.writeBlock('secret', 0, new Uint8Array(4096).fill(1))
      const full = await g.createBackup('secret', { strategy: 'full' })
      // The old KMS key is retired: every key moves to the new one.
      await g.rotateKeyEncryptionKey({ keyProvider: now })
      await g.writeBlock('secret', 1, new Uint8Array(4096).fill(2))
      const incremental = await g.createBackup('secret', { strategy: 'incremental' })
      assert.equal(incremental.baseId, full.id)
      await g.deleteVolume('secret', { force: true })
      // Taken under the new provider: it restores with it (the full alone, taken under the old one, does not).
      assert.deepEqual((await g.verifyBackup(incremental.id)).problems, [])
      const restored = await g.restoreBackup(incremental.id, { name: 'back' })
      assert.deepEqual(await g.readBlock(restored, 0), new Uint8Array(4096).fill(1))
      assert.deepEqual(await g.readBlock(restored, 1), new Uint8Array(4096).fill(2))
      await assert.rejects(g.restoreBackup(full.id, { name: 'old' }), (err: unknown) => err instanceof GalleonError && err.code === 'DECRYPTION_FAILED')
    } finally {
      await g.close()
    }
  })
})

describe('key management: a revert during a re-encryption', () => {
  it('is not refused as if the user were writing: it succeeds, or is refused with BUSY saying the volume is re-encrypting', async () => {
    const storagePath = await place()
    const g = await GalleonFS.open({ storagePath, blockSize: 512 })
    try {
      await g.createStorageClass({ name: SEALED, provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
      const size = 4096 * 512
      await g.createVolume({ name: 'secret', sizeBytes: size, storageClass: SEALED })
      const base = new Uint8Array(randomBytes(size))
      await g.write('secret', 0, base)
      await g.createSnapshot('secret', 'base')
      await g.write('secret', 0, new Uint8Array(512 * 64).fill(5))
      await g.rotateVolumeKey('secret')
      const refusals: string[] = []
      let tried = 0
      let reverted = false
      // Reverts again and again while the re-encryption runs (each finds the volume at the snapshot
      // after the first): some come while it holds block locks.
      while (tried < 500 && (await g.getVolumeEncryption('secret')).rotation !== undefined) {
        tried++
        try {
          await g.restoreSnapshot('secret', 'base')
          reverted = true
        } catch (err) {
          assert.ok(err instanceof GalleonError && err.code === 'BUSY', String(err))
          refusals.push(err.message)
        }
      }
      assert.ok(tried > 0, 'the revert was tried while the volume re-encrypted')
      // Once the re-encryption is over (it may still be retiring the old key), the revert goes through.
      for (const deadline = Date.now() + 30_000; !reverted;) {
        try {
          await g.restoreSnapshot('secret', 'base')
          reverted = true
        } catch (err) {
          assert.ok(err instanceof GalleonError && err.code === 'BUSY' && Date.now() < deadline, String(err))
          refusals.push(err.message)
          await new Promise((resolve) => setTimeout(resolve, 5))
        }
      }
      for (const message of refusals) assert.match(message, /re-?encrypt/, 'a refusal names the re-encryption, not writers to stop')
      assert.ok(Buffer.from(await g.read('secret', 0, size)).equals(base), 'the volume reads as the snapshot')
    } finally {
      await g.close()
    }
  })
})
