// Defects found reviewing this session's commits (read-buffer reuse, the key-provider check), each
// shown against real components: a file block store on disk, GalleonFS instances over a storage
// directory with an external key provider.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FileBlockStore } from '../backends/file/index.js'
import { HEADER_BYTES } from '../backends/file/record.js'
import { GalleonFS } from '../src/index.js'
import { ExternalKeyProvider, generateKey, unwrapKey, wrapKey } from '../src/crypto/keys.js'
import { addr, bytesOf, put } from './conformance/fixtures.js'
import { expectCode } from './support/assertions.js'
import { ClassicLevel } from 'classic-level'

let root: string
let counter = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-review-r1-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const fresh = (): string => join(root, `t${++counter}`)

describe('file block store: a value get() returns', () => {
  it('keeps no more memory than its record, however large the block (the block cache holds such values)', async () => {
    const store = new FileBlockStore({ location: fresh() })
    await store.open()
    try {
      // Large blocks (blockSize 64 KiB to 1 MiB) make records past the pooled-buffer minimum.
      for (const [i, size] of [65_544, 131_080, 1_048_584].entries()) {
        const data = bytesOf(size, i)
        await store.batch([put(addr(1, i), data)])
        const value = await store.get(addr(1, i))
        assert.deepEqual(value, data)
        // A single get is never released (the engine caches or copies it): its buffer is the
        // record (header and payload), not a power-of-two buffer almost twice its size.
        assert.ok((value as Uint8Array).buffer.byteLength <= HEADER_BYTES + size,
          `a ${size}-byte value keeps a ${(value as Uint8Array).buffer.byteLength}-byte buffer alive`)
      }
    } finally {
      await store.close()
    }
  })
})

describe('open: the re-wrap of keys a KEK rotation left behind stays best effort', () => {
  it('a key provider that stops answering after the volumes\' keys were loaded does not fail the open', async () => {
    const dir = fresh()
    const kek = generateKey()
    const ENCRYPTED = { storageClass: 'encrypted-storage', replicas: 1 } as const
    const first = new ExternalKeyProvider({ keyId: 'kms-alias-a', wrap: async (dek, context) => wrapKey(kek, dek, context), unwrap: async (wrapped, context) => unwrapKey(kek, wrapped, context) })
    let g = await GalleonFS.open({ storagePath: dir, keyProvider: first })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock('v', 0, new Uint8Array(4096).fill(7))
    } finally {
      await g.close()
    }
    // The same KMS key under a new id (an alias renamed): every key looks wrapped by another KEK,
    // so the open re-wraps them. The KMS answers the unwrap that loads the volume's key, then is
    // throttled: that re-wrap cannot run now, and the open must go on (the volume's key is loaded).
    let unwraps = 0
    const throttled = new ExternalKeyProvider({
      keyId: 'kms-alias-b',
      wrap: async (dek, context) => wrapKey(kek, dek, context),
      unwrap: async (wrapped, context) => {
        if (++unwraps > 1) throw new Error('ThrottlingException: rate exceeded')
        return unwrapKey(kek, wrapped, context)
      }
    })
    g = await GalleonFS.open({ storagePath: dir, keyProvider: throttled })
    try {
      assert.deepEqual(await g.readBlock('v', 0), new Uint8Array(4096).fill(7))
    } finally {
      await g.close()
    }
  })
})

describe('key-provider check: the right key source with a damaged key record', () => {
  it('a passphrase storage whose only encrypted volume has a damaged key record still opens; the rest works', async () => {
    const dir = fresh()
    const passphrase = 'the right passphrase'
    const options = { storagePath: dir, passphrase, passphraseCost: 1024 }
    let g = await GalleonFS.open(options)
    let id: string
    try {
      id = (await g.createVolume({ name: 'secret', sizeBytes: '1M', storageClass: 'encrypted-storage', replicas: 1 })).id
      await g.writeBlock('secret', 0, new Uint8Array(4096).fill(2))
      await g.createVolume({ name: 'plain', sizeBytes: '1M' })
      await g.writeBlock('plain', 0, new Uint8Array(4096).fill(3))
    } finally {
      await g.close()
    }
    // One bit of the wrapped data key flipped in the metadata (the key record is otherwise intact).
    const db = new ClassicLevel(join(dir, 'metadata'))
    const keys = db.sublevel<string, any>('keys', { valueEncoding: 'json' })
    const record = await keys.get(id)
    const wrapped = Buffer.from(record.keys[0].wrapped, 'base64')
    wrapped[wrapped.length - 1] = (wrapped[wrapped.length - 1] as number) ^ 1
    await keys.put(id, { ...record, keys: [{ ...record.keys[0], wrapped: wrapped.toString('base64') }] })
    await db.close()
    // Same passphrase, same salt file: the key source is right, and the storage opens as it did
    // before the check existed. The damaged volume says why it cannot be read; the rest works.
    g = await GalleonFS.open(options)
    try {
      assert.deepEqual(await g.readBlock('plain', 0), new Uint8Array(4096).fill(3))
      await expectCode(g.readBlock('secret', 0), 'DECRYPTION_FAILED')
      await g.createVolume({ name: 'secret2', sizeBytes: '1M', storageClass: 'encrypted-storage', replicas: 1 })
      await g.writeBlock('secret2', 0, new Uint8Array(4096).fill(4))
      assert.deepEqual(await g.readBlock('secret2', 0), new Uint8Array(4096).fill(4))
    } finally {
      await g.close()
    }
  })
})
