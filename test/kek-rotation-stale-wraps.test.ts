// A key-encryption-key rotation is meant to cut off the old KEK: once the keys are re-wrapped, the
// old KEK (a KMS key given up because someone else may hold it) must open nothing left under the
// storage path. The metadata database is log-structured: the records that held the data keys
// wrapped by the old KEK stay in its files until it compacts them, so the rotation compacts the
// key records itself. Real classic-level metadata on disk.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { ExternalKeyProvider, generateKey, unwrapKey, wrapKey } from '../src/crypto/keys.js'
import { filesHolding } from './support/files-holding.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-kek-stale-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

/** A KMS key: wraps with `key`, and remembers every wrapped key it handed out. */
function kms (keyId: string, key: Uint8Array, handedOut: Uint8Array[] = []): ExternalKeyProvider {
  return new ExternalKeyProvider({
    keyId,
    wrap: async (dek, context) => { const wrapped = wrapKey(key, dek, context); handedOut.push(wrapped); return wrapped },
    unwrap: async (wrapped, context) => unwrapKey(key, wrapped, context)
  })
}


describe('key-encryption-key rotation to another key provider', () => {
  it('leaves no key wrapped by the old KEK in the storage path\'s files', async () => {
    const dir = join(root, 'kms')
    const oldKey = generateKey()
    const oldWraps: Uint8Array[] = []
    let g = await GalleonFS.open({ storagePath: dir, keyProvider: kms('kms-old', oldKey, oldWraps) })
    try {
      for (const name of ['a', 'b']) {
        await g.createVolume({ name, sizeBytes: '1M', storageClass: 'encrypted-storage', replicas: 1 })
        await g.writeBlock(name, 0, new Uint8Array(4096).fill(7), WriteConcern.WriteDurable)
      }
      await g.rotateVolumeKey('b', { wait: true })
    } finally {
      await g.close()
    }
    assert.ok(oldWraps.length >= 4)
    const newKey = generateKey()
    g = await GalleonFS.open({ storagePath: dir, keyProvider: kms('kms-old', oldKey) })
    try {
      const moved = await g.rotateKeyEncryptionKey({ keyProvider: kms('kms-new', newKey) })
      assert.equal(moved.keyId, 'kms-new')
      await g.writeBlock('a', 1, new Uint8Array(4096).fill(8), WriteConcern.WriteDurable)
    } finally {
      await g.close()
    }
    const left: string[] = []
    for (const wrapped of oldWraps) {
      for (const form of [Buffer.from(Buffer.from(wrapped).toString('base64')), Buffer.from(wrapped)]) {
        for (const path of await filesHolding(dir, form)) left.push(path)
      }
    }
    assert.deepEqual([...new Set(left)], [], 'keys wrapped by the old KEK are still on disk (the old KEK opens them)')
    // The data reads with the new KEK alone.
    g = await GalleonFS.open({ storagePath: dir, keyProvider: kms('kms-new', newKey) })
    try {
      assert.deepEqual(await g.readBlock('a', 1), new Uint8Array(4096).fill(8))
      assert.deepEqual(await g.readBlock('b', 0), new Uint8Array(4096).fill(7))
    } finally {
      await g.close()
    }
  })

  it('a compaction that fails leaves the rotation in force, and says so with io:error (review r51)', async () => {
    const dir = join(root, 'kms-compaction')
    const oldKey = generateKey()
    const newKey = generateKey()
    let g = await GalleonFS.open({ storagePath: dir, keyProvider: kms('kms-old', oldKey) })
    const { ClassicLevel } = await import('classic-level')
    const compactRange = Object.getOwnPropertyDescriptor(ClassicLevel.prototype, 'compactRange') as PropertyDescriptor
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M', storageClass: 'encrypted-storage', replicas: 1 })
      await g.writeBlock('a', 0, new Uint8Array(4096).fill(9), WriteConcern.WriteDurable)
      const errors: Array<{ code: string, message: string }> = []
      g.on('io:error', (event) => errors.push(event))
      Object.defineProperty(ClassicLevel.prototype, 'compactRange', { ...compactRange, value: async () => { throw new Error('EIO: compaction failed (injected)') } })
      const moved = await g.rotateKeyEncryptionKey({ keyProvider: kms('kms-new', newKey) })
      Object.defineProperty(ClassicLevel.prototype, 'compactRange', compactRange)
      assert.equal(moved.keyId, 'kms-new')
      assert.equal(errors.length, 1, `io:error events: ${JSON.stringify(errors)}`)
      assert.match(errors[0]?.message ?? '', /rotated, but compacting the metadata failed \(EIO: compaction failed \(injected\)\).*kms-old/)
    } finally {
      Object.defineProperty(ClassicLevel.prototype, 'compactRange', compactRange)
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir, keyProvider: kms('kms-new', newKey) })
    try {
      assert.deepEqual(await g.readBlock('a', 0), new Uint8Array(4096).fill(9))
    } finally {
      await g.close()
    }
  })
})
