// The key provider is checked against the storage's wrapped keys before it wraps anything new: a
// master.key, passphrase.salt or external provider that is not the one the encrypted volumes were
// created with is refused (DECRYPTION_FAILED) instead of wrapping new keys under a second KEK.
// Also: a data-key rotation gives the volume a new backup key; backups taken before still restore.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { chmod, copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { ExternalKeyProvider, generateKey, unwrapKey, wrapKey } from '../src/crypto/keys.js'
import { decodeManifest } from '../src/backup/format.js'
import { expectCode } from './support/assertions.js'

let root: string
let counter = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-key-check-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const fresh = (): string => join(root, `t${++counter}`)

const BLOCK = 4096
const ENCRYPTED = { storageClass: 'encrypted-storage', replicas: 1 } as const
const block = (fill: number): Uint8Array => new Uint8Array(BLOCK).fill(fill)
const PASSPHRASE_COST = 1024

/** An external provider over its own KEK (a KMS key), optionally sharing `kek` with another one. */
function kmsProvider (keyId: string, kek: Uint8Array = generateKey()): ExternalKeyProvider {
  return new ExternalKeyProvider({ keyId, wrap: async (dek, context) => wrapKey(kek, dek, context), unwrap: async (wrapped, context) => unwrapKey(kek, wrapped, context) })
}

/** Writes another valid master key file (one 256-bit key in hex, mode 0600) at `path`. */
async function replaceMasterKey (path: string): Promise<void> {
  await rm(path)
  await writeFile(path, randomBytes(32).toString('hex') + '\n', { mode: 0o600 })
  await chmod(path, 0o600)
}

describe('internal provider: a master.key other than the one the volumes were created with', () => {
  it('is refused before anything is wrapped under it; putting the right file back opens everything', async () => {
    const dir = fresh()
    const keyPath = join(dir, 'master.key')
    let g = await GalleonFS.open({ storagePath: dir })
    try {
      await g.createVolume({ name: 'old', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock('old', 0, block(1))
      await g.createVolume({ name: 'plain', sizeBytes: '1M' })
      await g.writeBlock('plain', 0, block(2))
    } finally {
      await g.close()
    }
    const saved = join(dir, 'master.key.right')
    await copyFile(keyPath, saved)
    await replaceMasterKey(keyPath)
    const wrongKey = await readFile(keyPath, 'utf8')

    g = await GalleonFS.open({ storagePath: dir })
    try {
      // No new encrypted volume is wrapped under the wrong key: refused, naming the file and the fix.
      await expectCode(g.createVolume({ name: 'new', sizeBytes: '1M', ...ENCRYPTED }), 'DECRYPTION_FAILED', keyPath, 'put back')
      assert.equal((await g.listVolumes()).some((volume) => volume.name === 'new'), false)
      // The old volume cannot be read, and says which file to put back.
      await expectCode(g.readBlock('old', 0), 'DECRYPTION_FAILED', keyPath)
      assert.match((await g.getVolumeEncryption('old')).unavailable ?? '', /master key file/)
      // Nor are the keys rotated or re-wrapped under it.
      await expectCode(g.rotateKeyEncryptionKey({}), 'DECRYPTION_FAILED', keyPath)
      assert.equal(await readFile(keyPath, 'utf8'), wrongKey)
      // Plain volumes work as before.
      assert.deepEqual(await g.readBlock('plain', 0), block(2))
      await g.createVolume({ name: 'plain2', sizeBytes: '1M' })
    } finally {
      await g.close()
    }

    // The operator puts the right file back: every encrypted volume reads, and new ones are made.
    await rm(keyPath)
    await copyFile(saved, keyPath)
    await chmod(keyPath, 0o600)
    g = await GalleonFS.open({ storagePath: dir })
    try {
      assert.deepEqual(await g.readBlock('old', 0), block(1))
      await g.createVolume({ name: 'new', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock('new', 0, block(3))
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir })
    try {
      assert.deepEqual(await g.readBlock('old', 0), block(1))
      assert.deepEqual(await g.readBlock('new', 0), block(3))
    } finally {
      await g.close()
    }
  })

  it('a storage with no encrypted volume yet still opens with a fresh key file', async () => {
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir })
    try {
      await g.createVolume({ name: 'plain', sizeBytes: '1M' })
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir })
    try {
      await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock('secret', 0, block(4))
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir })
    try {
      assert.deepEqual(await g.readBlock('secret', 0), block(4))
    } finally {
      await g.close()
    }
  })
})

describe('passphrase provider: a passphrase.salt of another storage (its own passphrase is right for it)', () => {
  it('fails open with DECRYPTION_FAILED naming the salt file, and the right one still opens', async () => {
    const dir = fresh()
    const other = fresh()
    const passphrase = 'the right passphrase'
    let g = await GalleonFS.open({ storagePath: dir, passphrase, passphraseCost: PASSPHRASE_COST })
    try {
      await g.createVolume({ name: 'old', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock('old', 0, block(5))
    } finally {
      await g.close()
    }
    // Another storage set up with the same passphrase: same check value passes, another salt, another KEK.
    const h = await GalleonFS.open({ storagePath: other, passphrase, passphraseCost: PASSPHRASE_COST })
    await h.createVolume({ name: 'x', sizeBytes: '1M', ...ENCRYPTED })
    await h.close()
    const saltPath = join(dir, 'passphrase.salt')
    await copyFile(saltPath, join(dir, 'passphrase.salt.right'))
    await rm(saltPath)
    await copyFile(join(other, 'passphrase.salt'), saltPath)

    await expectCode(GalleonFS.open({ storagePath: dir, passphrase, passphraseCost: PASSPHRASE_COST }), 'DECRYPTION_FAILED', saltPath)

    await rm(saltPath)
    await copyFile(join(dir, 'passphrase.salt.right'), saltPath)
    g = await GalleonFS.open({ storagePath: dir, passphrase, passphraseCost: PASSPHRASE_COST })
    try {
      assert.deepEqual(await g.readBlock('old', 0), block(5))
    } finally {
      await g.close()
    }
  })
})

describe('external provider: a KMS key other than the one the volumes were created with', () => {
  it('refuses to wrap new keys (DECRYPTION_FAILED naming the provider key), and the right provider opens everything', async () => {
    const dir = fresh()
    const kek = generateKey()
    let g = await GalleonFS.open({ storagePath: dir, keyProvider: kmsProvider('kms-a', kek) })
    try {
      await g.createVolume({ name: 'old', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock('old', 0, block(6))
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir, keyProvider: kmsProvider('kms-b') })
    try {
      await expectCode(g.readBlock('old', 0), 'DECRYPTION_FAILED')
      await expectCode(g.createVolume({ name: 'new', sizeBytes: '1M', ...ENCRYPTED }), 'DECRYPTION_FAILED', 'kms-b')
      await expectCode(g.rotateKeyEncryptionKey({ keyProvider: kmsProvider('kms-c') }), 'DECRYPTION_FAILED', 'kms-b')
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir, keyProvider: kmsProvider('kms-a', kek) })
    try {
      assert.deepEqual(await g.readBlock('old', 0), block(6))
      await g.createVolume({ name: 'new', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock('new', 0, block(7))
      assert.deepEqual(await g.readBlock('new', 0), block(7))
    } finally {
      await g.close()
    }
  })
})

/** The backup-key fingerprint a backup's manifest on the directory target `target` records. */
async function fingerprintOf (target: string, id: string): Promise<string | undefined> {
  return decodeManifest(id, await readFile(join(target, 'manifests', `${id}.json`))).encryption?.fingerprint
}

describe('a data-key rotation gives the volume a new backup key', () => {
  it('backups after rotateVolumeKey use a new backup key; those before still verify and restore, also after a move to another key provider', async () => {
    const dir = fresh()
    const backupTarget = fresh()
    const kmsA = kmsProvider('kms-a')
    let g = await GalleonFS.open({ storagePath: dir, backupTarget, keyProvider: kmsA })
    let full: string, incremental: string, afterRotation: string
    try {
      await g.createVolume({ name: 'db', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock('db', 0, block(1))
      full = (await g.createBackup('db')).id
      await g.writeBlock('db', 1, block(2))
      incremental = (await g.createBackup('db', { strategy: 'incremental' })).id
      assert.equal(await fingerprintOf(backupTarget, incremental), await fingerprintOf(backupTarget, full))

      await g.rotateVolumeKey('db', { wait: true })
      await g.writeBlock('db', 2, block(3))
      const next = await g.createBackup('db', { strategy: 'incremental' })
      afterRotation = next.id
      // Sealed with a new key, so it cannot lean on the backups sealed with the old one: a full.
      assert.notEqual(await fingerprintOf(backupTarget, afterRotation), await fingerprintOf(backupTarget, full))
      assert.equal(next.strategy, 'full')
      for (const id of [full, incremental, afterRotation]) assert.equal((await g.verifyBackup(id)).ok, true, id)
    } finally {
      await g.close()
    }

    // The keys move to another KMS key; kms-a is gone. Every backup still restores.
    g = await GalleonFS.open({ storagePath: dir, backupTarget, keyProvider: kmsA })
    const kmsB = kmsProvider('kms-b')
    try {
      await g.rotateKeyEncryptionKey({ keyProvider: kmsB })
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir, backupTarget, keyProvider: kmsB })
    try {
      for (const id of [full, incremental, afterRotation]) assert.equal((await g.verifyBackup(id)).ok, true, id)
      // Restored into encrypted volumes made for it (their own keys), read back block by block.
      await g.createVolume({ name: 'before', sizeBytes: '1M', ...ENCRYPTED })
      await g.restoreBackup(incremental, { volume: 'before' })
      assert.deepEqual(await g.readBlock('before', 0), block(1))
      assert.deepEqual(await g.readBlock('before', 1), block(2))
      assert.deepEqual(await g.readBlock('before', 2), block(0))
      await g.createVolume({ name: 'after', sizeBytes: '1M', ...ENCRYPTED })
      await g.restoreBackup(afterRotation, { volume: 'after' })
      assert.deepEqual(await g.readBlock('after', 0), block(1))
      assert.deepEqual(await g.readBlock('after', 2), block(3))
      // A second rotation keeps both earlier backup keys.
      await g.rotateVolumeKey('db', { wait: true })
      const third = (await g.createBackup('db')).id
      assert.notEqual(await fingerprintOf(backupTarget, third), await fingerprintOf(backupTarget, afterRotation))
      for (const id of [full, afterRotation, third]) assert.equal((await g.verifyBackup(id)).ok, true, id)
    } finally {
      await g.close()
    }
  })
})
