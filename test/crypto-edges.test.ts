// Edge cases of key management found by an audit: a key provider whose unwrap does not authenticate
// (opened with the wrong KEK, it hands back other bytes instead of failing), providers whose wrap
// throws, a damaged passphrase salt file, a master key path that is not a file; and, as regressions,
// clones, snapshots and restores of an encrypted volume read after its data key and KEK rotate.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern, type KeyProvider } from '../src/index.js'
import { ExternalKeyProvider, PassphraseKeyProvider } from '../src/crypto/keys.js'
import { commandKeyProvider } from '../src/crypto/kms.js'
import { ClassicLevel } from 'classic-level'

let root: string
let counter = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-crypto-edges-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const fresh = (): string => join(root, `t${++counter}`)

const BLOCK = 4096
const ENCRYPTED = { storageClass: 'encrypted-storage', replicas: 1 } as const
const block = (fill: number): Uint8Array => new Uint8Array(BLOCK).fill(fill)
const hasCode = (code: string, message?: RegExp) => (err: Error & { code?: string }): boolean => err.code === code && (message === undefined || message.test(err.message))

/**
 * A KMS that wraps with AES-256-CTR under its own KEK and a random IV, as `openssl enc -aes-256-ctr`
 * would: nothing authenticates, so unwrapping under another KEK "succeeds" with other bytes.
 */
function ctrProvider (keyId: string, kek: Uint8Array = new Uint8Array(randomBytes(32))): ExternalKeyProvider {
  return new ExternalKeyProvider({
    keyId,
    wrap: async (dek) => {
      const iv = randomBytes(16)
      const cipher = createCipheriv('aes-256-ctr', kek, iv)
      return new Uint8Array(Buffer.concat([iv, cipher.update(dek), cipher.final()]))
    },
    unwrap: async (wrapped) => {
      const decipher = createDecipheriv('aes-256-ctr', kek, wrapped.subarray(0, 16))
      return new Uint8Array(Buffer.concat([decipher.update(wrapped.subarray(16)), decipher.final()]))
    }
  })
}

describe('a key provider that unwraps under the wrong KEK without noticing', () => {
  it('leaves the volume unavailable, saying so: no write is sealed with the wrong key, no key is re-wrapped, nothing is lost', async () => {
    const dir = fresh()
    const kek = new Uint8Array(randomBytes(32))
    let g = await GalleonFS.open({ storagePath: dir, keyProvider: ctrProvider('kek-a', kek) })
    await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
    await g.writeBlock('secret', 0, block(7), WriteConcern.WriteDurable)
    await g.close()

    // Opened with another KMS key (a configuration mistake): its unwrap returns 32 other bytes.
    g = await GalleonFS.open({ storagePath: dir, keyProvider: ctrProvider('kek-b') })
    try {
      const wrongKey = hasCode('DECRYPTION_FAILED', /unwrapped the data key \(version 1\) of volume .* to bytes that are not that key .*key kek-a/)
      assert.match((await g.getVolumeEncryption('secret')).unavailable ?? '', /not that key/)
      // Before: this write was acknowledged, sealed with the wrong key, and unreadable ever after.
      await assert.rejects(g.writeBlock('secret', 1, block(9), WriteConcern.WriteDurable), wrongKey)
      // Before: "altered, moved or replayed ... restore from a snapshot or backup" for intact data.
      await assert.rejects(g.readBlock('secret', 0), wrongKey)
      // Before: the wrong bytes were re-wrapped under the new provider, and the real key was gone.
      await assert.rejects(g.rotateKeyEncryptionKey({ keyProvider: ctrProvider('kek-c') }), wrongKey)
      // Not a block-level finding either: scrub says why it cannot check, and lists nothing as bad.
      await assert.rejects(g.scrub('secret'), wrongKey)
      // The instance itself keeps working.
      await g.createVolume({ name: 'plain', sizeBytes: '1M', replicas: 1 })
      await g.writeBlock('plain', 0, block(3))
      assert.deepEqual(await g.readBlock('plain', 0), block(3))
    } finally {
      await g.close()
    }

    // The right KMS key opens everything as it was (the open with the wrong one re-wrapped nothing).
    g = await GalleonFS.open({ storagePath: dir, keyProvider: ctrProvider('kek-a', kek) })
    try {
      const state = await g.getVolumeEncryption('secret')
      assert.equal(state.unavailable, undefined)
      assert.equal(state.kekId, 'kek-a')
      assert.deepEqual(await g.readBlock('secret', 0), block(7))
      assert.deepEqual(await g.readBlock('secret', 1), block(0))
      assert.deepEqual((await g.scrub('secret')).badBlocks, [])
    } finally {
      await g.close()
    }
  })

  it('a data-key rotation records the new key\'s check too: after it, the wrong KEK is still told apart', async () => {
    const dir = fresh()
    const kek = new Uint8Array(randomBytes(32))
    let g = await GalleonFS.open({ storagePath: dir, keyProvider: ctrProvider('kek-a', kek) })
    await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
    await g.writeBlock('secret', 0, block(5), WriteConcern.WriteDurable)
    await g.rotateVolumeKey('secret', { wait: true })
    await g.rotateKeyEncryptionKey({ keyProvider: ctrProvider('kek-a2', kek) })
    await g.close()
    g = await GalleonFS.open({ storagePath: dir, keyProvider: ctrProvider('kek-b') })
    try {
      await assert.rejects(g.writeBlock('secret', 1, block(9)), hasCode('DECRYPTION_FAILED', /data key \(version 2\).*not that key/))
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir, keyProvider: ctrProvider('kek-a2', kek) })
    try {
      assert.deepEqual(await g.readBlock('secret', 0), block(5))
      assert.equal((await g.getVolumeEncryption('secret')).keyVersion, 2)
    } finally {
      await g.close()
    }
  })
})

describe('key records written before data keys had a check value', () => {
  it('still open (the check is added with the next data key)', async () => {
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir })
    await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
    await g.writeBlock('secret', 0, block(8), WriteConcern.WriteDurable)
    await g.close()
    // Remove the check values, as an earlier version stored the records.
    const metadata = new ClassicLevel(join(dir, 'metadata'))
    const keys = metadata.sublevel<string, { keys: Array<{ check?: string }> }>('keys', { valueEncoding: 'json' })
    let stripped = 0
    for (const [id, record] of await keys.iterator().all()) {
      for (const key of record.keys) { if (key.check !== undefined) stripped++; delete key.check }
      await keys.put(id, record)
    }
    await metadata.close()
    assert.equal(stripped, 1)
    g = await GalleonFS.open({ storagePath: dir })
    try {
      assert.deepEqual(await g.readBlock('secret', 0), block(8))
      await g.rotateVolumeKey('secret', { wait: true })
      await g.writeBlock('secret', 1, block(9))
      assert.deepEqual(await g.readBlock('secret', 1), block(9))
    } finally {
      await g.close()
    }
  })
})

describe('a key provider whose wrap fails', () => {
  const failing: Array<[string, () => KeyProvider]> = [
    ['an ExternalKeyProvider whose wrap function throws', () => new ExternalKeyProvider({ keyId: 'k', wrap: async () => { throw new Error('KMS quota exceeded') }, unwrap: async (wrapped) => wrapped })],
    ['a KeyProvider object whose wrap throws', () => ({ name: 'mine', keyId: 'k', wrap: async () => { throw new Error('KMS quota exceeded') }, unwrap: async (wrapped: Uint8Array) => wrapped })],
    ['a KeyProvider object whose wrap answers a string', () => ({ name: 'mine', keyId: 'k', wrap: async () => 'KMS quota exceeded' as unknown as Uint8Array, unwrap: async (wrapped: Uint8Array) => wrapped })]
  ]
  for (const [name, make] of failing) {
    it(`${name}: creating a volume fails with BACKEND_UNAVAILABLE naming it; nothing is created`, async () => {
      const g = await GalleonFS.open({ storagePath: fresh(), keyProvider: make() })
      try {
        await assert.rejects(g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED }), hasCode('BACKEND_UNAVAILABLE', /key provider .*(KMS quota exceeded|not bytes)/))
        assert.deepEqual((await g.listVolumes()).map((volume) => volume.name), [])
        await g.createVolume({ name: 'plain', sizeBytes: '1M', replicas: 1 })
      } finally {
        await g.close()
      }
    })
  }

  it('a KEK rotation to a provider whose wrap throws fails with BACKEND_UNAVAILABLE and changes nothing', async () => {
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir })
    await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
    await g.writeBlock('secret', 0, block(4), WriteConcern.WriteDurable)
    try {
      await assert.rejects(g.rotateKeyEncryptionKey({ keyProvider: (failing[1] as [string, () => KeyProvider])[1]() }), hasCode('BACKEND_UNAVAILABLE', /KMS quota exceeded/))
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

describe('key files that are damaged', () => {
  it('passphrase: a damaged salt file fails open with CORRUPTION saying to restore it, never as a wrong passphrase or a bare error; restored, it opens', async () => {
    const dir = fresh()
    const options = { storagePath: dir, passphrase: 'correct horse battery' }
    let g = await GalleonFS.open(options)
    await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
    await g.writeBlock('secret', 0, block(6), WriteConcern.WriteDurable)
    await g.rotateKeyEncryptionKey({ passphrase: 'correct horse battery' })
    await g.close()
    const saltPath = join(dir, 'passphrase.salt')
    const good = await readFile(saltPath, 'utf8')
    const record = JSON.parse(good) as { salt: string, N: number, check: string, retired: string[] }
    assert.equal(record.retired.length, 1)
    const damaged: Array<[string, unknown]> = [
      ['a cost that is not a power of 2', { ...record, N: 1000 }],
      ['a cost too large to compute', { ...record, N: 2 ** 31 }],
      ['a salt cut short', { ...record, salt: record.salt.slice(0, 7) }],
      ['a check value cut short', { ...record, check: record.check.slice(0, 10) }],
      ['a retired key that is not a string', { ...record, retired: [5] }],
      ['a retired key that does not open', { ...record, retired: [(record.retired[0] as string).replace(/^(.{40})(.)/, (_, head: string, c: string) => head + (c === '0' ? '1' : '0'))] }]
    ]
    for (const [what, value] of damaged) {
      await writeFile(saltPath, JSON.stringify(value))
      await assert.rejects(GalleonFS.open(options), hasCode('CORRUPTION', /passphrase\.salt is damaged.*restore/), what)
    }
    await writeFile(saltPath, good)
    g = await GalleonFS.open(options)
    try {
      assert.deepEqual(await g.readBlock('secret', 0), block(6))
    } finally {
      await g.close()
    }
  })

  it('passphrase: an unusable cost for a new salt is refused with INVALID_ARGUMENT, and no salt file is written', async () => {
    const dir = fresh()
    await mkdir(dir)
    await assert.rejects(PassphraseKeyProvider.open('correct horse battery', join(dir, 'passphrase.salt'), { N: 1000 }), hasCode('INVALID_ARGUMENT', /power of 2/))
    assert.deepEqual(await readdir(dir), [])
  })

  it('internal: a directory where master.key should be is reported as such (not as a file others can read)', async () => {
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir })
    await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
    await g.writeBlock('secret', 0, block(2), WriteConcern.WriteDurable)
    await g.close()
    const keyPath = join(dir, 'master.key')
    const key = await readFile(keyPath)
    await rm(keyPath)
    await mkdir(keyPath, { mode: 0o700 })
    g = await GalleonFS.open({ storagePath: dir })
    try {
      await assert.rejects(g.readBlock('secret', 0), hasCode('CORRUPTION', /master\.key is not a regular file/))
    } finally {
      await g.close()
    }
    await rm(keyPath, { recursive: true })
    await writeFile(keyPath, key, { mode: 0o600 })
    g = await GalleonFS.open({ storagePath: dir })
    try {
      assert.deepEqual(await g.readBlock('secret', 0), block(2))
    } finally {
      await g.close()
    }
  })
})

describe('copies of an encrypted volume after its keys rotate', () => {
  it('a clone, a snapshot and a restored backup all read after the source\'s data key and the KEK rotate, also after a reopen', async () => {
    const dir = fresh()
    const target = fresh()
    let g = await GalleonFS.open({ storagePath: dir, backupTarget: target })
    let backupId: string
    try {
      await g.createVolume({ name: 'source', sizeBytes: '1M', ...ENCRYPTED })
      for (let i = 0; i < 8; i++) await g.writeBlock('source', i, block(10 + i))
      await g.createSnapshot('source', 'before')
      await g.cloneVolume('source', 'clone')
      backupId = (await g.createBackup('source')).id
      for (let i = 0; i < 4; i++) await g.writeBlock('source', i, block(50 + i))
      await g.rotateVolumeKey('source', { wait: true })
      await g.rotateKeyEncryptionKey()
      assert.deepEqual((await g.getVolumeEncryption('source')).keyVersions, [2])
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir, backupTarget: target })
    try {
      const restored = await g.restoreBackup(backupId, { name: 'restored' })
      for (let i = 0; i < 8; i++) {
        assert.deepEqual(await g.readBlock('clone', i), block(10 + i), `clone block ${i}`)
        assert.deepEqual(await g.readBlock(restored, i), block(10 + i), `restored block ${i}`)
        assert.deepEqual(await g.readBlock('source', i), block(i < 4 ? 50 + i : 10 + i), `source block ${i}`)
      }
      assert.deepEqual(new Uint8Array(await g.read({ volume: 'source', snapshot: 'before' }, 0, 8 * BLOCK)), new Uint8Array(Buffer.concat(Array.from({ length: 8 }, (_, i) => block(10 + i)))))
      for (const name of ['source', 'clone', 'restored']) assert.deepEqual((await g.scrub(name)).badBlocks, [], name)
    } finally {
      await g.close()
    }
  })
})

describe('an ExternalKeyProvider whose KMS client hangs', () => {
  const kek = new Uint8Array(randomBytes(32))
  const working = (): ExternalKeyProvider => ctrProvider('hangs', kek)
  const hanging = (which: 'wrap' | 'unwrap'): ExternalKeyProvider => {
    const base = working()
    return new ExternalKeyProvider({
      keyId: 'hangs',
      wrap: which === 'wrap' ? async () => await new Promise<Uint8Array>(() => {}) : async (dek, context) => await base.wrap(dek, context),
      unwrap: which === 'unwrap' ? async () => await new Promise<Uint8Array>(() => {}) : async (wrapped, context) => await base.unwrap(wrapped, context),
      timeoutMs: 300
    })
  }

  it('a wrap that never answers fails after timeoutMs with BACKEND_UNAVAILABLE; nothing is created', { timeout: 30_000 }, async () => {
    const g = await GalleonFS.open({ storagePath: fresh(), keyProvider: hanging('wrap') })
    try {
      await assert.rejects(g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED }), hasCode('BACKEND_UNAVAILABLE', /did not answer within 300 ms/))
      assert.deepEqual((await g.listVolumes()).map((volume) => volume.name), [])
    } finally {
      await g.close()
    }
  })

  it('an unwrap that never answers fails after timeoutMs with DECRYPTION_FAILED; the data is there with a provider that answers', { timeout: 30_000 }, async () => {
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir, keyProvider: working() })
    await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
    await g.writeBlock('secret', 0, block(6), WriteConcern.WriteDurable)
    await g.close()
    g = await GalleonFS.open({ storagePath: dir, keyProvider: hanging('unwrap') })
    try {
      await assert.rejects(g.readBlock('secret', 0), hasCode('DECRYPTION_FAILED', /did not answer within 300 ms/))
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir, keyProvider: working() })
    try {
      assert.deepEqual(await g.readBlock('secret', 0), block(6))
    } finally {
      await g.close()
    }
  })

  it('a timeoutMs that is no positive number is refused with INVALID_ARGUMENT', () => {
    for (const timeoutMs of [0, -1, Number.NaN, Infinity, '5' as unknown as number]) {
      assert.throws(() => new ExternalKeyProvider({ keyId: 'k', wrap: async (dek) => dek, unwrap: async (wrapped) => wrapped, timeoutMs }), hasCode('INVALID_ARGUMENT', /timeoutMs/), String(timeoutMs))
    }
  })
})

describe('passphraseCost', () => {
  it('sets the scrypt cost of a new salt; an existing salt keeps its own; bad values and a cost without a passphrase are refused', async () => {
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir, passphrase: 'a long enough passphrase', passphraseCost: 1024 })
    await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
    await g.writeBlock('secret', 0, block(3), WriteConcern.WriteDurable)
    await g.close()
    assert.equal(JSON.parse(await readFile(join(dir, 'passphrase.salt'), 'utf8')).N, 1024)
    g = await GalleonFS.open({ storagePath: dir, passphrase: 'a long enough passphrase', passphraseCost: 2048 })
    try {
      assert.deepEqual(await g.readBlock('secret', 0), block(3))
    } finally {
      await g.close()
    }
    assert.equal(JSON.parse(await readFile(join(dir, 'passphrase.salt'), 'utf8')).N, 1024)
    await assert.rejects(GalleonFS.open({ storagePath: fresh(), passphraseCost: 1024 }), hasCode('INVALID_ARGUMENT', /passphraseCost.*passphrase/))
    for (const cost of [1000, 0, 2 ** 20]) {
      await assert.rejects(GalleonFS.open({ storagePath: fresh(), passphrase: 'a long enough passphrase', passphraseCost: cost }), hasCode('INVALID_ARGUMENT', /cost/), String(cost))
    }
  })
})

describe('key provider time limits longer than Node timers take', () => {
  it('an ExternalKeyProvider or commandKeyProvider with a limit of a month does not fail a call that takes 50 ms', async () => {
    const month = 30 * 24 * 3600 * 1000
    const provider = new ExternalKeyProvider({ keyId: 'k', timeoutMs: month, wrap: async (dek) => { await new Promise((resolve) => setTimeout(resolve, 50)); return new Uint8Array(dek) }, unwrap: async (wrapped) => new Uint8Array(wrapped) })
    assert.equal(await provider.wrap(new Uint8Array(32).fill(1), 'ctx').then(() => 'ok', (err: Error) => err.message), 'ok')
    const command = commandKeyProvider({ keyId: 'k', command: process.execPath, args: ['-e', 'setTimeout(() => { let s = ""; process.stdin.on("data", (c) => { s += c }).on("end", () => process.stdout.write(s)) }, 50)'], timeoutMs: month })
    assert.equal(await command.wrap(new Uint8Array(32).fill(2), 'ctx').then(() => 'ok', (err: Error) => err.message), 'ok')
  })
})
