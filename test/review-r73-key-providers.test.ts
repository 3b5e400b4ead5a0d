// Review r73: a user's own KeyProvider object that misbehaves in ways a real KMS client or HSM
// binding does (reuses the array it answers with, wipes the plaintext key it was given, throws
// things that are not Errors) gets a clear error and loses nothing. Real file store on disk.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern, type KeyProvider } from '../src/index.js'
import { ExternalKeyProvider, generateKey, unwrapKey, wrapKey } from '../src/crypto/keys.js'
import { expectCode } from './support/assertions.js'

let root: string
let counter = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r73-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const fresh = (): string => join(root, `t${++counter}`)

const BLOCK = 4096
const ENCRYPTED = { storageClass: 'encrypted-storage', replicas: 1 } as const
const block = (fill: number): Uint8Array => new Uint8Array(BLOCK).fill(fill)

/** An HSM-like provider over `kek`; `hooks` change what its wrap and unwrap do. */
function hsm (kek: Uint8Array, hooks: { unwrapped?: (key: Uint8Array) => Uint8Array, afterWrap?: (dek: Uint8Array) => void, afterUnwrap?: (wrapped: Uint8Array) => void } = {}): KeyProvider {
  return {
    name: 'hsm',
    keyId: 'hsm-key-1',
    wrap: async (dek, context) => { const wrapped = wrapKey(kek, dek, context); hooks.afterWrap?.(dek); return wrapped },
    unwrap: async (wrapped, context) => { const key = unwrapKey(kek, wrapped, context); hooks.afterUnwrap?.(wrapped); return (hooks.unwrapped ?? ((k) => k))(key) }
  }
}

describe('a key provider that reuses the array it answers unwrap with', () => {
  it('does not make one volume seal its writes with another volume\'s data key', async () => {
    const dir = fresh()
    const kek = generateKey()
    let g = await GalleonFS.open({ storagePath: dir, keyProvider: hsm(kek) })
    try {
      for (const [name, fill] of [['a', 1], ['b', 2]] as const) {
        await g.createVolume({ name, sizeBytes: '1M', ...ENCRYPTED })
        await g.writeBlock(name, 0, block(fill), WriteConcern.WriteDurable)
      }
    } finally {
      await g.close()
    }
    // One output buffer for every answer, as a binding writing into a preallocated buffer does.
    const scratch = new Uint8Array(32)
    g = await GalleonFS.open({ storagePath: dir, keyProvider: hsm(kek, { unwrapped: (key) => { scratch.set(key); return scratch } }) })
    try {
      assert.deepEqual(await g.readBlock('a', 0), block(1))
      assert.deepEqual(await g.readBlock('b', 0), block(2))
      await g.writeBlock('a', 1, block(3), WriteConcern.WriteDurable)
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir, keyProvider: hsm(kek) })
    try {
      assert.deepEqual(await g.readBlock('a', 1), block(3))
    } finally {
      await g.close()
    }
  })
})

describe('a key provider that overwrites what it was given (wiping a plaintext key, decrypting in place)', () => {
  it('creates volumes and rotates their keys as any other provider, and they open again', async () => {
    const dir = fresh()
    const kek = generateKey()
    let g = await GalleonFS.open({ storagePath: dir, keyProvider: hsm(kek, { afterWrap: (dek) => dek.fill(0), afterUnwrap: (wrapped) => wrapped.fill(0) }) })
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock('a', 0, block(4), WriteConcern.WriteDurable)
      await g.rotateVolumeKey('a', { wait: true })
      assert.deepEqual(await g.readBlock('a', 0), block(4))
      assert.equal((await g.getVolumeEncryption('a')).keyVersion, 2)
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir, keyProvider: hsm(kek) })
    try {
      assert.deepEqual(await g.readBlock('a', 0), block(4))
    } finally {
      await g.close()
    }
  })
})

describe('a key provider that throws something that is not an Error and cannot be made text', () => {
  it('fails the call with the usual code and a message naming the provider', async () => {
    const dir = fresh()
    const kek = generateKey()
    let g = await GalleonFS.open({ storagePath: dir, keyProvider: hsm(kek) })
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock('a', 0, block(5), WriteConcern.WriteDurable)
    } finally {
      await g.close()
    }
    // An object without a prototype: String() of it throws a TypeError.
    const bare = (): never => { throw Object.create(null) }
    const raw: KeyProvider = { name: 'hsm', keyId: 'hsm-key-1', wrap: async () => bare(), unwrap: async () => bare() }
    const external = new ExternalKeyProvider({ keyId: 'hsm-key-1', wrap: async () => bare(), unwrap: async () => bare() })
    for (const keyProvider of [raw, external]) {
      g = await GalleonFS.open({ storagePath: dir, keyProvider })
      try {
        const read = await expectCode(g.readBlock('a', 0), 'DECRYPTION_FAILED', 'cannot unwrap')
        assert.doesNotMatch(read.message, /TypeError|Cannot convert/)
        const created = await expectCode(g.createVolume({ name: 'b', sizeBytes: '1M', ...ENCRYPTED }), 'BACKEND_UNAVAILABLE', 'could not wrap')
        assert.doesNotMatch(created.message, /TypeError|Cannot convert/)
      } finally {
        await g.close()
      }
    }
    g = await GalleonFS.open({ storagePath: dir, keyProvider: hsm(kek) })
    try {
      assert.deepEqual(await g.readBlock('a', 0), block(5))
      assert.deepEqual(await g.listVolumes().then((volumes) => volumes.map((volume) => volume.name)), ['a'])
    } finally {
      await g.close()
    }
  })
})

describe('a key provider that stops answering', () => {
  it('costs an open one time limit, not one per encrypted volume; the volumes open again once it answers', async () => {
    const dir = fresh()
    const kek = generateKey()
    let hung = false
    let unwraps = 0
    const provider = new ExternalKeyProvider({
      keyId: 'kms-key-1',
      timeoutMs: 200,
      wrap: async (dek, context) => wrapKey(kek, dek, context),
      unwrap: async (wrapped, context) => { unwraps++; return hung ? await new Promise<Uint8Array>(() => {}) : unwrapKey(kek, wrapped, context) }
    })
    const names = ['v0', 'v1', 'v2', 'v3', 'v4', 'v5']
    let g = await GalleonFS.open({ storagePath: dir, keyProvider: provider })
    try {
      for (const [i, name] of names.entries()) {
        await g.createVolume({ name, sizeBytes: '1M', ...ENCRYPTED })
        await g.writeBlock(name, 0, block(10 + i), WriteConcern.WriteDurable)
      }
    } finally {
      await g.close()
    }
    hung = true
    unwraps = 0
    g = await GalleonFS.open({ storagePath: dir, keyProvider: provider })
    try {
      assert.equal(unwraps, 1, 'the KMS is asked once at open, not once per volume')
      for (const name of names) await expectCode(g.readBlock(name, 0), 'DECRYPTION_FAILED', 'did not answer')
    } finally {
      await g.close()
    }
    hung = false
    g = await GalleonFS.open({ storagePath: dir, keyProvider: provider })
    try {
      for (const [i, name] of names.entries()) assert.deepEqual(await g.readBlock(name, 0), block(10 + i))
    } finally {
      await g.close()
    }
  })

  it('a KeyProvider object of the application\'s own that never answers: open resolves once its time limit (30 s) has passed twice (one late answer is waited for), its volume says why', async () => {
    const dir = fresh()
    const kek = generateKey()
    let g = await GalleonFS.open({ storagePath: dir, keyProvider: hsm(kek) })
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock('a', 0, block(6), WriteConcern.WriteDurable)
      await g.createVolume({ name: 'plain', sizeBytes: '1M' })
      await g.writeBlock('plain', 0, block(7), WriteConcern.WriteDurable)
    } finally {
      await g.close()
    }
    const silent: KeyProvider = { name: 'hsm', keyId: 'hsm-key-1', wrap: async () => await new Promise<Uint8Array>(() => {}), unwrap: async () => await new Promise<Uint8Array>(() => {}) }
    // Not a time limit on GalleonFS: a guard, so that a hang fails this test instead of the run.
    let guard: NodeJS.Timeout | undefined
    const opened = await Promise.race([
      GalleonFS.open({ storagePath: dir, keyProvider: silent }),
      new Promise<never>((_resolve, reject) => { guard = setTimeout(() => { reject(new Error('open() had not resolved after 120 s')) }, 120_000) })
    ]).finally(() => { clearTimeout(guard) })
    g = opened
    try {
      await expectCode(g.readBlock('a', 0), 'DECRYPTION_FAILED', 'did not answer within 30000 ms')
      assert.deepEqual(await g.readBlock('plain', 0), block(7))
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir, keyProvider: hsm(kek) })
    try {
      assert.deepEqual(await g.readBlock('a', 0), block(6))
    } finally {
      await g.close()
    }
  })
})

describe('a backup taken before the keys moved to a KMS, its volume deleted since', () => {
  it('restores in a storage path of its own holding a copy of master.key, and the refusal here says so', async () => {
    const dir = fresh()
    const targetPath = fresh()
    const kek = generateKey()
    const kms = new ExternalKeyProvider({ keyId: 'kms-key-1', wrap: async (dek, context) => wrapKey(kek, dek, context), unwrap: async (wrapped, context) => unwrapKey(kek, wrapped, context) })
    let g = await GalleonFS.open({ storagePath: dir, backupTarget: targetPath })
    let backupId: string
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock('a', 0, block(8), WriteConcern.WriteDurable)
      backupId = (await g.createBackup('a', { strategy: 'full' })).id
      await g.rotateKeyEncryptionKey()
      await g.rotateKeyEncryptionKey({ keyProvider: kms })
      await g.deleteVolume('a', { force: true })
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir, keyProvider: kms, backupTarget: targetPath })
    try {
      await expectCode(g.restoreBackup(backupId, { name: 'back' }), 'DECRYPTION_FAILED', 'storage path of its own', 'master.key')
    } finally {
      await g.close()
    }
    const elsewhere = fresh()
    await mkdir(elsewhere)
    await copyFile(join(dir, 'master.key'), join(elsewhere, 'master.key'))
    g = await GalleonFS.open({ storagePath: elsewhere, backupTarget: targetPath })
    try {
      await g.restoreBackup(backupId, { name: 'back' })
      assert.deepEqual(await g.readBlock('back', 0), block(8))
    } finally {
      await g.close()
    }
  })
})
