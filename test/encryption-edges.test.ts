// Edge cases of encryption and key management found by review: a key-encryption-key rotation to a
// provider that cannot give keys back, a storage set up with a passphrase opened without it, and
// KEK rotations cut short by SIGKILL (child: test/crash/kek-rotation-child.ts).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS } from '../src/index.js'
import { killAfterReady } from './crash/support.js'
import { PASSPHRASE_COST } from './crash/kek-rotation-child.js'
import { ExternalKeyProvider, generateKey, unwrapKey, wrapKey } from '../src/crypto/keys.js'

let root: string
let counter = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-encryption-edges-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const fresh = (): string => join(root, `t${++counter}`)

const BLOCK = 4096
const ENCRYPTED = { storageClass: 'encrypted-storage', replicas: 1 } as const
const block = (fill: number): Uint8Array => new Uint8Array(BLOCK).fill(fill)

/** An external provider with its own KEK; `unwrap` can be replaced to model a faulty KMS. */
function provider (keyId: string, unwrap?: (wrapped: Uint8Array, context: string) => Promise<Uint8Array>): ExternalKeyProvider {
  const kek = generateKey()
  return new ExternalKeyProvider({ keyId, wrap: async (dek, context) => wrapKey(kek, dek, context), unwrap: unwrap ?? (async (wrapped, context) => unwrapKey(kek, wrapped, context)) })
}

describe('key-encryption-key rotation to a provider that cannot give the keys back', () => {
  // A KMS role allowed to encrypt but not to decrypt, or a wrap that returns the wrong bytes: had
  // the re-wrap been stored, neither the old provider nor the new one could open the volumes again.
  const faulty: Array<[string, () => ExternalKeyProvider]> = [
    ['its unwrap is refused', () => provider('encrypt-only', async () => { throw new Error('AccessDenied: kms:Decrypt') })],
    ['its unwrap returns another key', () => provider('lossy', async () => generateKey())]
  ]
  for (const [name, make] of faulty) {
    it(`is refused when ${name}, and changes nothing: the old provider still opens every volume`, async () => {
      const dir = fresh()
      const current = provider('current')
      let g = await GalleonFS.open({ storagePath: dir, keyProvider: current })
      try {
        await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
        await g.writeBlock('secret', 3, block(7))
        await assert.rejects(g.rotateKeyEncryptionKey({ keyProvider: make() }), { code: 'BACKEND_UNAVAILABLE' })
        assert.equal((await g.getVolumeEncryption('secret')).kekId, 'current')
        // New keys are still wrapped by the provider in use.
        await g.createVolume({ name: 'later', sizeBytes: '1M', ...ENCRYPTED })
        await g.writeBlock('later', 0, block(8))
      } finally {
        await g.close()
      }
      g = await GalleonFS.open({ storagePath: dir, keyProvider: current })
      try {
        assert.deepEqual(await g.readBlock('secret', 3), block(7))
        assert.deepEqual(await g.readBlock('later', 0), block(8))
      } finally {
        await g.close()
      }
    })
  }

  it('a new volume is refused (nothing recorded) when the provider cannot unwrap what it wraps', async () => {
    const dir = fresh()
    const g = await GalleonFS.open({ storagePath: dir, keyProvider: provider('encrypt-only', async () => { throw new Error('AccessDenied: kms:Decrypt') }) })
    try {
      await assert.rejects(g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED }), { code: 'BACKEND_UNAVAILABLE' })
      assert.deepEqual(await g.listVolumes(), [])
    } finally {
      await g.close()
    }
  })
})

describe('a storage set up with a passphrase, opened without it', () => {
  it('says to open with the passphrase (not to restore a master key file it never had), creates no key file, and loses nothing', async () => {
    const dir = fresh()
    const passphrase = 'correct horse battery'
    let g = await GalleonFS.open({ storagePath: dir, passphrase, passphraseCost: 1024 })
    await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
    await g.writeBlock('secret', 1, block(5))
    await g.close()
    g = await GalleonFS.open({ storagePath: dir })
    try {
      const expected = (err: Error & { code?: string }): boolean => err.code === 'DECRYPTION_FAILED' && /passphrase/.test(err.message) && !/restore it from your key backup/.test(err.message)
      await assert.rejects(g.readBlock('secret', 1), expected)
      assert.match((await g.getVolumeEncryption('secret')).unavailable ?? '', /passphrase/)
      await assert.rejects(g.createVolume({ name: 'more', sizeBytes: '1M', ...ENCRYPTED }), expected)
    } finally {
      await g.close()
    }
    assert.ok(!(await readdir(dir)).includes('master.key'))
    g = await GalleonFS.open({ storagePath: dir, passphrase, passphraseCost: 1024 })
    try {
      assert.deepEqual(await g.readBlock('secret', 1), block(5))
      assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['secret'])
    } finally {
      await g.close()
    }
  })
})

describe('key-encryption-key rotations cut short by SIGKILL', () => {
  const CHILD = fileURLToPath(new URL('./crash/kek-rotation-child.ts', import.meta.url))
  for (const mode of ['internal', 'passphrase'] as const) {
    it(`${mode}: after every kill the storage opens and every volume written before reads back`, async () => {
      const dir = fresh()
      let passphrase = 'first passphrase'
      const written = new Map<string, number>()
      for (let trial = 0; trial < 4; trial++) {
        const delay = 100 + trial * 150
        const { killed, lines, exit } = await killAfterReady(CHILD, [dir, mode, String(trial * 1000), passphrase], delay)
        assert.ok(killed, `trial ${trial}: child exited with ${exit.code}: ${lines.slice(-3).join(' | ')} ${exit.stderr.slice(0, 1000)}`)
        // A passphrase change the kill interrupted may have replaced the salt file already.
        let changing: string | undefined
        for (const line of lines) {
          const [kind, a, b] = line.split(' ') as [string, string, string]
          if (kind === 'error') assert.fail(`trial ${trial}: ${line}`)
          if (kind === 'V') written.set(a, Number(b))
          if (kind === 'T') changing = a
          if (kind === 'P') { passphrase = a; changing = undefined }
        }
        const open = async (phrase: string): Promise<GalleonFS> => await GalleonFS.open({ storagePath: dir, ...(mode === 'passphrase' ? { passphrase: phrase, passphraseCost: PASSPHRASE_COST } : {}) })
        let g: GalleonFS
        try {
          g = await open(passphrase)
        } catch (err) {
          if (changing === undefined) throw err
          passphrase = changing
          g = await open(passphrase)
        }
        try {
          for (const [name, fill] of written) assert.deepEqual(await g.readBlock(name, 0), block(fill), `trial ${trial}: volume ${name}`)
          for (const volume of await g.listVolumes()) assert.equal((await g.getVolumeEncryption(volume.name)).unavailable, undefined)
        } finally {
          await g.close()
        }
      }
      assert.ok(written.size > 0)
    })
  }
})
