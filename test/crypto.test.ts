// The AES-256-GCM implementations (node:crypto and @noble/ciphers) and the key providers. The two
// ciphers must produce identical bytes, and both must refuse anything altered.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { defaultCipher, nativeCipher, nobleCipher, nodeCipher } from '../src/crypto/cipher.js'
import { nativeAeadStatus } from '../src/crypto/native-aead.js'
import { ExternalKeyProvider, InternalKeyProvider, PassphraseKeyProvider, generateKey, unwrapKey, wrapKey } from '../src/crypto/keys.js'
import { seededRandom } from './conformance/fixtures.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-crypto-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

const bytes = (n: number): Uint8Array => new Uint8Array(randomBytes(n))

describe('AES-256-GCM ciphers', () => {
  it('node:crypto and @noble/ciphers produce identical ciphertext and open each other\'s', () => {
    const random = seededRandom(3)
    for (const size of [0, 1, 15, 16, 17, 4096, 65536, 1 << 20]) {
      for (let round = 0; round < (size > 65536 ? 1 : 5); round++) {
        const key = bytes(32)
        const nonce = bytes(12)
        const plaintext = bytes(size)
        const aad = bytes(Math.floor(random() * 40))
        const a = nodeCipher.seal(key, nonce, plaintext, aad)
        const b = nobleCipher.seal(key, nonce, plaintext, aad)
        assert.deepEqual(a, b, `size ${size}`)
        assert.equal(a.byteLength, size + 16)
        assert.deepEqual(nobleCipher.open(key, nonce, a, aad), plaintext)
        assert.deepEqual(nodeCipher.open(key, nonce, b, aad), plaintext)
      }
    }
    // The native addon when it is built (test/native-aead.test.ts compares it with both), else node:crypto.
    assert.ok(['node', 'native'].includes(defaultCipher().name), defaultCipher().name)
  })

  it('refuses an altered ciphertext, tag, nonce, key or associated data with DECRYPTION_FAILED', () => {
    for (const cipher of [nodeCipher, nobleCipher]) {
      const key = bytes(32)
      const nonce = bytes(12)
      const aad = new TextEncoder().encode('volume 1, block 7, gen 42')
      const sealed = cipher.seal(key, nonce, bytes(4096), aad)
      const flipped = (at: number): Uint8Array => { const copy = sealed.slice(); copy[at] = (copy[at] as number) ^ 1; return copy }
      assert.throws(() => cipher.open(key, nonce, flipped(0), aad), { code: 'DECRYPTION_FAILED' }, `${cipher.name}: ciphertext`)
      assert.throws(() => cipher.open(key, nonce, flipped(sealed.byteLength - 1), aad), { code: 'DECRYPTION_FAILED' }, `${cipher.name}: tag`)
      assert.throws(() => cipher.open(key, bytes(12), sealed, aad), { code: 'DECRYPTION_FAILED' }, `${cipher.name}: nonce`)
      assert.throws(() => cipher.open(bytes(32), nonce, sealed, aad), { code: 'DECRYPTION_FAILED' }, `${cipher.name}: key`)
      assert.throws(() => cipher.open(key, nonce, sealed, new TextEncoder().encode('volume 1, block 8, gen 42')), { code: 'DECRYPTION_FAILED' }, `${cipher.name}: moved block`)
      assert.throws(() => cipher.open(key, nonce, sealed.subarray(0, 10), aad), { code: 'DECRYPTION_FAILED' }, `${cipher.name}: truncated`)
      assert.throws(() => cipher.seal(bytes(16), nonce, bytes(1), aad), { code: 'INVALID_ARGUMENT' })
      assert.throws(() => cipher.seal(key, bytes(8), bytes(1), aad), { code: 'INVALID_ARGUMENT' })
    }
  })
})

// Both keep a set-up key per key array (node:crypto a KeyObject, the native addon a key handle).
for (const cipher of [nodeCipher, nativeCipher]) {
describe(`${cipher.name} key reuse`, { skip: cipher === nativeCipher && !nativeAeadStatus().available ? 'the native AES-GCM addon is not available here' : false }, () => {
  it('a key array changed in place seals and opens under its new bytes, never the old ones', () => {
    const key = new Uint8Array(randomBytes(32))
    const nonce = new Uint8Array(12).fill(3)
    const aad = new Uint8Array(28).fill(5)
    const plain = new Uint8Array(randomBytes(4096))
    const before = cipher.seal(key, nonce, plain, aad)
    assert.deepEqual(cipher.open(key, nonce, before, aad), plain)
    const old = key.slice()
    key[31] = (key[31] as number) ^ 1
    const after = cipher.seal(key, nonce, plain, aad)
    assert.notDeepEqual(after, before, 'sealed under the changed key')
    assert.deepEqual(after, nobleCipher.seal(key.slice(), nonce, plain, aad), 'the same bytes as a fresh key with the new bytes')
    assert.throws(() => cipher.open(key, nonce, before, aad), (err: Error & { code?: string }) => err.code === 'DECRYPTION_FAILED')
    assert.deepEqual(cipher.open(old, nonce, before, aad), plain)
  })

  it('the same holds for a Buffer key (whose slice() is a view, not a copy)', () => {
    const key = randomBytes(32)
    const nonce = new Uint8Array(12).fill(1)
    const aad = new Uint8Array(28)
    const plain = new Uint8Array(randomBytes(64))
    const before = cipher.seal(key, nonce, plain, aad)
    key[0] = (key[0] as number) ^ 0xff
    const after = cipher.seal(key, nonce, plain, aad)
    assert.deepEqual(after, nobleCipher.seal(new Uint8Array(key), nonce, plain, aad))
    assert.notDeepEqual(after, before)
  })
})
}

describe('data keys and key providers', () => {
  it('wraps a data key bound to its context; another key or context cannot unwrap it', () => {
    const kek = generateKey()
    const dek = generateKey()
    const wrapped = wrapKey(kek, dek, 'volume-a')
    assert.deepEqual(unwrapKey(kek, wrapped, 'volume-a'), dek)
    assert.deepEqual(unwrapKey(kek, wrapped, 'volume-a', nobleCipher), dek)
    assert.notDeepEqual(wrapKey(kek, dek, 'volume-a'), wrapped, 'a fresh nonce each time')
    assert.throws(() => unwrapKey(generateKey(), wrapped, 'volume-a'), { code: 'DECRYPTION_FAILED' })
    assert.throws(() => unwrapKey(kek, wrapped, 'volume-b'), { code: 'DECRYPTION_FAILED' })
    assert.throws(() => unwrapKey(kek, wrapped.subarray(1), 'volume-a'), { code: 'DECRYPTION_FAILED' })
  })

  it('internal: creates a 0600 master key file, finds the same key again, refuses a file others can read', async () => {
    const path = join(root, 'master.key')
    const provider = await InternalKeyProvider.open(path)
    assert.equal((await stat(path)).mode & 0o777, 0o600)
    const dek = generateKey()
    const wrapped = await provider.wrap(dek, 'v')
    const again = await InternalKeyProvider.open(path)
    assert.equal(again.keyId, provider.keyId)
    assert.deepEqual(await again.unwrap(wrapped, 'v'), dek)
    assert.equal((await readFile(path, 'utf8')).includes(Buffer.from(dek).toString('hex')), false)
    await chmod(path, 0o644)
    await assert.rejects(InternalKeyProvider.open(path), { code: 'INVALID_ARGUMENT', message: /chmod 600/ })
    const other = join(root, 'other.key')
    await writeFile(other, 'not a key\n', { mode: 0o600 })
    await assert.rejects(InternalKeyProvider.open(other), { code: 'CORRUPTION' })
  })

  it('passphrase: the right passphrase unwraps, a wrong one is reported as such', async () => {
    const salt = join(root, 'passphrase.json')
    const provider = await PassphraseKeyProvider.open('correct horse battery', salt, { N: 2 ** 12 })
    const dek = generateKey()
    const wrapped = await provider.wrap(dek, 'v')
    const again = await PassphraseKeyProvider.open('correct horse battery', salt)
    assert.deepEqual(await again.unwrap(wrapped, 'v'), dek)
    await assert.rejects(PassphraseKeyProvider.open('wrong horse battery', salt), { code: 'DECRYPTION_FAILED', message: /wrong passphrase/ })
    await assert.rejects(PassphraseKeyProvider.open('short', join(root, 'x.json')), { code: 'INVALID_ARGUMENT' })
  })

  it('external: wraps and unwraps through the application\'s functions, and reports their failures', async () => {
    const kms = generateKey()
    const provider = new ExternalKeyProvider({
      keyId: 'kms-1',
      wrap: async (dek, context) => wrapKey(kms, dek, context),
      unwrap: async (wrapped, context) => unwrapKey(kms, wrapped, context)
    })
    const dek = generateKey()
    const wrapped = await provider.wrap(dek, 'v')
    assert.deepEqual(await provider.unwrap(wrapped, 'v'), dek)
    await assert.rejects(provider.unwrap(wrapped, 'w'), { code: 'DECRYPTION_FAILED', message: /could not unwrap/ })
    assert.throws(() => new ExternalKeyProvider({ keyId: 'x' } as never), { code: 'INVALID_ARGUMENT' })
  })
})
