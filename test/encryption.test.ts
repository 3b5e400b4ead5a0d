// Encryption at rest, against the real file block store and classic-level metadata: no plaintext
// anywhere on disk or on a backup target, tampering detected, nonces never repeated, key providers,
// data-key and key-encryption-key rotation, clones and encrypted backups.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { chmod, copyFile, mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern, type BlockAddress, type BlockStore } from '../src/index.js'
import { recording } from './support/recording-store.js'
import { ExternalKeyProvider, generateKey, unwrapKey, wrapKey } from '../src/crypto/keys.js'
import { NONCE_RESERVATION, VolumeCipher } from '../src/crypto/volume-cipher.js'
import { BLOCK_FLAG_ENCRYPTED, decodeBlock, encodeBlock } from '../src/engine/codec.js'
import { FileBlockStore } from '../backends/file/index.js'
import { ClassicLevel } from 'classic-level'

let root: string
let counter = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-encryption-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const fresh = (): string => join(root, `t${++counter}`)

const BLOCK = 4096
const ENCRYPTED = { storageClass: 'encrypted-storage', replicas: 1 } as const

/** A recognisable text that must never reach the disk in the clear. */
function marker (tag: string, bytes: number): Uint8Array {
  const text = `GALLEON-MARKER-${tag}-`
  return new Uint8Array(Buffer.from(text.repeat(Math.ceil(bytes / text.length)).slice(0, bytes)))
}

/** Every file under `dir` that contains `needle`. */
async function filesContaining (dir: string, needle: Uint8Array): Promise<string[]> {
  const found: string[] = []
  const walk = async (at: string): Promise<void> => {
    for (const entry of await readdir(at, { withFileTypes: true })) {
      const path = join(at, entry.name)
      if (entry.isDirectory()) await walk(path)
      else if (entry.isFile() && (await readFile(path)).includes(Buffer.from(needle))) found.push(path)
    }
  }
  await walk(dir)
  return found
}


/** Opens an instance on `dir` whose file block store records every put. */
async function openRecorded (dir: string, options: Record<string, unknown> = {}): Promise<{ g: GalleonFS, store: BlockStore, puts: Array<{ address: BlockAddress, data: Uint8Array }> }> {
  const { store, puts } = recording(new FileBlockStore({ location: join(dir, 'blocks') }))
  const g = await GalleonFS.open({ storagePath: dir, blockStore: store, ...options })
  return { g, store, puts }
}

/** (storage id, key version, counter) of every encrypted put; asserts none repeats. */
function assertNoncesUnique (puts: ReadonlyArray<{ address: BlockAddress, data: Uint8Array }>, seen = new Set<string>()): number {
  let sealed = 0
  for (const { address, data } of puts) {
    const decoded = decodeBlock(address, data)
    assert.ok(decoded.ok)
    if ((decoded.flags & BLOCK_FLAG_ENCRYPTED) === 0) continue
    const { version, counter } = VolumeCipher.inspect(decoded.payload)
    const key = `${address.volume}/${version}/${counter}`
    assert.ok(!seen.has(key), `nonce ${counter} of key ${version} of volume ${address.volume} used twice`)
    seen.add(key)
    sealed++
  }
  return sealed
}

const sha = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex')

describe('encrypted volumes', () => {
  it('keep every marker off the disk, the journal and the backup target (an unencrypted control shows the scan finds them)', async () => {
    const dir = fresh()
    const backups = fresh()
    const g = await GalleonFS.open({ storagePath: dir, backupTarget: backups })
    try {
      const secret = await g.createVolume({ name: 'secret', sizeBytes: '8M', ...ENCRYPTED })
      const plain = await g.createVolume({ name: 'plain', sizeBytes: '8M' })
      assert.equal(secret.encrypted, true)
      assert.equal(plain.encrypted, false)
      const writes: Array<[number, Uint8Array]> = [
        [0, marker('A', BLOCK)], // one whole block
        [5 * BLOCK + 100, marker('B', 3 * BLOCK)], // unaligned, spans blocks
        [20 * BLOCK, marker('C', 64 * BLOCK)] // a large run
      ]
      for (const [offset, data] of writes) {
        await g.write(secret, offset, data, WriteConcern.WriteDurable)
        await g.write(plain, offset, data, WriteConcern.WriteDurable)
      }
      await g.writeBlock(secret, 100, marker('D', BLOCK))
      await g.createSnapshot(secret, 'before')
      await g.write(secret, 0, marker('E', BLOCK))
      const clone = await g.cloneVolume({ volume: secret, snapshot: 'before' }, 'copy')
      assert.equal(clone.encrypted, true)
      await g.write(clone, 200 * BLOCK, marker('F', 2 * BLOCK))
      await g.createBackup(secret)
      await g.write(secret, 300 * BLOCK, marker('G', BLOCK))
      await g.createBackup(secret, { strategy: 'incremental' })
      await g.restoreSnapshot(secret, 'before')
      await g.rotateVolumeKey(secret, { wait: true })
      // Everything reads back.
      assert.deepEqual(await g.read(secret, 5 * BLOCK + 100, 3 * BLOCK), writes[1]?.[1])
      assert.deepEqual(await g.read(clone, 200 * BLOCK, 2 * BLOCK), marker('F', 2 * BLOCK))
      assert.deepEqual(await g.read(clone, 100 * BLOCK, BLOCK), marker('D', BLOCK))
      await g.flush(secret)
      // While open (data in the file store's log and the journal) as well as after close.
      for (const tag of ['D', 'E', 'F', 'G']) assert.deepEqual(await filesContaining(dir, marker(tag, 64)), [], `marker ${tag} while open`)
    } finally {
      await g.close()
    }
    // The control volume got A-C in the clear, so the scan does find plaintext where there is some.
    for (const tag of ['A', 'B', 'C']) assert.ok((await filesContaining(dir, marker(tag, 64))).length > 0, `control marker ${tag} found`)
    // D-G were written only to the encrypted volume and its clone: nowhere on disk, nowhere on the target.
    for (const tag of ['D', 'E', 'F', 'G']) {
      assert.deepEqual(await filesContaining(dir, marker(tag, 64)), [], `marker ${tag} under the storage path`)
      assert.deepEqual(await filesContaining(backups, marker(tag, 64)), [], `marker ${tag} on the backup target`)
    }
  })

  it('keep a marker written only to an encrypted volume out of every file, also with WriteAcknowledged writes', async () => {
    const dir = fresh()
    const g = await GalleonFS.open({ storagePath: dir })
    const vol = await g.createVolume({ name: 'secret', sizeBytes: '4M', ...ENCRYPTED })
    for (let i = 0; i < 200; i++) await g.write(vol, (i * 7919 % 1000) * 17, marker('H', 777))
    await g.close()
    assert.deepEqual(await filesContaining(dir, marker('H', 48)), [])
    const again = await GalleonFS.open({ storagePath: dir })
    try {
      assert.deepEqual(await again.read('secret', (199 * 7919 % 1000) * 17, 777), marker('H', 777))
    } finally {
      await again.close()
    }
  })

  it('never return altered data: a flipped ciphertext bit (checksum fixed up), a moved block, a replayed version and a planted plain block all fail with DECRYPTION_FAILED', async () => {
    const dir = fresh()
    const { g, store } = await openRecorded(dir)
    try {
      const vol = await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
      const failures: string[] = []
      g.on('checksum:mismatch', (event) => failures.push(event.reason))
      await g.writeBlock(vol, 1, marker('one', BLOCK), WriteConcern.WriteDurable)
      await g.writeBlock(vol, 2, marker('two', BLOCK), WriteConcern.WriteDurable)
      // The newest stored version of a block.
      const addressOf = async (index: number): Promise<BlockAddress> => {
        let newest: BlockAddress | undefined
        for await (const address of store.addresses()) if (address.index === index && (newest === undefined || address.gen > newest.gen)) newest = address
        if (newest === undefined) throw new Error(`block ${index} not stored`)
        return newest
      }
      // An attacker who edits the disk can recompute the CRC: only the GCM tag stands in the way.
      const tamper = async (address: BlockAddress, change: (payload: Uint8Array) => Uint8Array, flags = BLOCK_FLAG_ENCRYPTED, from: BlockAddress = address): Promise<void> => {
        const decoded = decodeBlock(from, await store.get(from) as Uint8Array)
        assert.ok(decoded.ok)
        const payload = change(Uint8Array.from(decoded.payload))
        await store.batch([{ type: 'put', address, data: Uint8Array.from(encodeBlock(address, payload, payload.byteLength, flags)) }], { sync: true })
      }
      const one = await addressOf(1)
      const two = await addressOf(2)
      const original = await store.get(one) as Uint8Array
      const restore = async (): Promise<void> => { await store.batch([{ type: 'put', address: one, data: Uint8Array.from(original) }], { sync: true }) }

      for (const bit of [16 * 8 + 3, 100 * 8, (16 + BLOCK) * 8 + 1]) { // ciphertext start, middle, tag
        await tamper(one, (p) => { p[bit >> 3]! ^= 1 << (bit & 7); return p })
        await assert.rejects(g.readBlock(vol, 1), { code: 'DECRYPTION_FAILED' }, `bit ${bit}`)
        await assert.rejects(g.read(vol, 0, 3 * BLOCK), { code: 'DECRYPTION_FAILED' })
        await restore()
      }
      assert.deepEqual(await g.readBlock(vol, 1), marker('one', BLOCK))
      // Block 2's sealed bytes stored as block 1: authenticated data names block 2.
      await tamper(one, (p) => p, BLOCK_FLAG_ENCRYPTED, two)
      await assert.rejects(g.readBlock(vol, 1), { code: 'DECRYPTION_FAILED' })
      await restore()
      // An older version of block 1 replayed under its current generation.
      const before = await store.get(one) as Uint8Array
      await g.writeBlock(vol, 1, marker('newer', BLOCK), WriteConcern.WriteDurable)
      const newer = await addressOf(1)
      assert.notEqual(newer.gen, one.gen)
      const oldDecoded = decodeBlock(one, before)
      assert.ok(oldDecoded.ok)
      await store.batch([{ type: 'put', address: newer, data: Uint8Array.from(encodeBlock(newer, oldDecoded.payload, oldDecoded.payload.byteLength, BLOCK_FLAG_ENCRYPTED)) }], { sync: true })
      await assert.rejects(g.readBlock(vol, 1), { code: 'DECRYPTION_FAILED' })
      // A plaintext block planted with a valid checksum.
      await store.batch([{ type: 'put', address: newer, data: Uint8Array.from(encodeBlock(newer, marker('planted', BLOCK), BLOCK)) }], { sync: true })
      await assert.rejects(g.readBlock(vol, 1), { code: 'DECRYPTION_FAILED' })
      // Scrub reports it too; the untouched block still reads.
      const report = await g.scrub(vol)
      assert.deepEqual(report.badBlocks.map((b) => [b.index, b.code]), [[1, 'DECRYPTION_FAILED']])
      assert.deepEqual(await g.readBlock(vol, 2), marker('two', BLOCK))
      assert.ok(failures.length >= 6, `checksum:mismatch events: ${failures.length}`)
    } finally {
      await g.close()
    }
  })

  it('detect a byte flipped in the file on disk: open or the read fails, the data is never returned', async () => {
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir })
    const vol = await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
    await g.write(vol, 0, marker('disk', 16 * BLOCK), WriteConcern.WriteDurable)
    await g.write(vol, 32 * BLOCK, marker('later', 4 * BLOCK), WriteConcern.WriteDurable)
    await g.close()
    const segments = (await readdir(join(dir, 'blocks'))).filter((name) => name.startsWith('seg-'))
    assert.equal(segments.length, 1)
    const { open } = await import('node:fs/promises')
    const handle = await open(join(dir, 'blocks', segments[0] as string), 'r+')
    // A byte inside the first write's blocks (records of 4 KiB and more; the file starts with them).
    const at = 8 * BLOCK
    const byte = Buffer.alloc(1)
    await handle.read(byte, 0, 1, at)
    byte[0]! ^= 0x10
    await handle.write(byte, 0, 1, at)
    await handle.close()
    try {
      g = await GalleonFS.open({ storagePath: dir })
    } catch (err) {
      // The store refuses damaged data at open: acceptable, nothing is returned.
      assert.ok(['CORRUPTION', 'CHECKSUM_MISMATCH'].includes((err as { code: string }).code), String(err))
      return
    }
    try {
      const expected = [...Array.from({ length: 16 }, (_, i) => marker('disk', 16 * BLOCK).subarray(i * BLOCK, (i + 1) * BLOCK)), ...Array.from({ length: 4 }, (_, i) => marker('later', 4 * BLOCK).subarray(i * BLOCK, (i + 1) * BLOCK))]
      const indices = [...Array.from({ length: 16 }, (_, i) => i), 32, 33, 34, 35]
      let failed = 0
      for (let i = 0; i < indices.length; i++) {
        try {
          assert.deepEqual(await g.readBlock('secret', indices[i] as number), expected[i], `block ${indices[i]} returned other data`)
        } catch (err) {
          assert.ok(['DECRYPTION_FAILED', 'CHECKSUM_MISMATCH', 'CORRUPTION'].includes((err as { code: string }).code), String(err))
          failed++
        }
      }
      assert.equal(failed, 1)
    } finally {
      await g.close()
    }
  })

  it('never reuse a nonce across rewrites, trims, snapshots, reverts, clones, flattening, key rotation and reopening', async () => {
    const dir = fresh()
    const seen = new Set<string>()
    let sealed = 0
    for (let round = 0; round < 3; round++) {
      const { g, puts } = await openRecorded(dir)
      try {
        const vol = round === 0 ? await g.createVolume({ name: 'secret', sizeBytes: '2M', ...ENCRYPTED }) : await g.getVolume('secret')
        for (let i = 0; i < 100; i++) await g.write(vol, (i % 10) * BLOCK + (i % 3) * 100, marker(`r${round}-${i}`, BLOCK + 50))
        await g.trim(vol, 3 * BLOCK + 10, 2 * BLOCK)
        await g.createSnapshot(vol, `s${round}`)
        for (let i = 0; i < 20; i++) await g.writeBlock(vol, i, marker(`after-${round}-${i}`, BLOCK))
        await g.restoreSnapshot(vol, `s${round}`)
        const clone = await g.cloneVolume(vol, `c${round}`)
        await g.writeBlock(clone, 1, marker('clone', BLOCK))
        // A clone of a volume that is then deleted gets its own (gen-0) copies: sealed anew.
        const source = await g.createVolume({ name: `src${round}`, sizeBytes: '1M', ...ENCRYPTED })
        for (let i = 0; i < 16; i++) await g.writeBlock(source, i, marker(`src-${i}`, BLOCK))
        const orphan = await g.cloneVolume(source, `orphan${round}`)
        await g.deleteVolume(source, { force: true })
        assert.deepEqual(await g.readBlock(orphan, 7), marker('src-7', BLOCK))
        await g.rotateVolumeKey(vol, { wait: true })
      } finally {
        await g.close()
      }
      sealed += assertNoncesUnique(puts, seen)
    }
    assert.ok(sealed > 300, `sealed ${sealed} blocks`)
  })
})

describe('key providers', () => {
  it('internal (default): creates master.key with mode 0600 only when the first encrypted volume is made; a missing key file leaves encrypted volumes unreadable with DECRYPTION_FAILED and the rest working', async () => {
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir })
    await g.createVolume({ name: 'plain', sizeBytes: '1M' })
    await assert.rejects(stat(join(dir, 'master.key')), { code: 'ENOENT' })
    await g.writeBlock(await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED }), 0, marker('k', BLOCK), WriteConcern.WriteDurable)
    await g.writeBlock('plain', 0, marker('p', BLOCK), WriteConcern.WriteDurable)
    assert.equal((await stat(join(dir, 'master.key'))).mode & 0o777, 0o600)
    await g.close()
    const saved = join(dir, 'master.key.saved')
    await copyFile(join(dir, 'master.key'), saved)
    await rm(join(dir, 'master.key'))
    g = await GalleonFS.open({ storagePath: dir })
    try {
      const alarms: string[] = []
      g.on('checksum:mismatch', (event) => alarms.push(event.reason))
      await assert.rejects(g.readBlock('secret', 0), (err: Error & { code?: string }) => err.code === 'DECRYPTION_FAILED' && /master key file .* is missing/.test(err.message))
      await assert.rejects(g.read('secret', 0, 64 * BLOCK), (err: Error & { code?: string }) => err.code === 'DECRYPTION_FAILED' && /master key file .* is missing/.test(err.message))
      await assert.rejects(g.scrub('secret'), (err: Error & { code?: string }) => err.code === 'DECRYPTION_FAILED' && /master key file .* is missing/.test(err.message))
      // Missing keys are not damage: no integrity alarm, no checksum error counted.
      assert.deepEqual(alarms, [])
      assert.equal((await g.getVolumeMetrics('secret')).checksumErrors, 0)
      await assert.rejects(g.writeBlock('secret', 0, marker('x', BLOCK)), { code: 'DECRYPTION_FAILED' })
      assert.match((await g.getVolumeEncryption('secret')).unavailable ?? '', /missing/)
      assert.deepEqual(await g.readBlock('plain', 0), marker('p', BLOCK))
      // No new key file was made behind the user's back.
      await assert.rejects(stat(join(dir, 'master.key')), { code: 'ENOENT' })
    } finally {
      await g.close()
    }
    await copyFile(saved, join(dir, 'master.key'))
    await chmod(join(dir, 'master.key'), 0o644)
    await assert.rejects(GalleonFS.open({ storagePath: dir }).then(async (h) => { try { await h.readBlock('secret', 0) } finally { await h.close() } }), (err: Error & { code?: string }) => /chmod 600/.test(err.message))
    await chmod(join(dir, 'master.key'), 0o600)
    g = await GalleonFS.open({ storagePath: dir })
    try {
      assert.deepEqual(await g.readBlock('secret', 0), marker('k', BLOCK))
    } finally {
      await g.close()
    }
  })

  it('passphrase: a wrong one fails open with DECRYPTION_FAILED; changing it re-wraps the keys, after which only the new one opens', async () => {
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir, passphrase: 'correct horse battery' })
    await g.writeBlock(await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED }), 3, marker('pp', BLOCK), WriteConcern.WriteDurable)
    assert.equal((await g.getVolumeEncryption('secret')).provider, 'passphrase')
    await g.close()
    await assert.rejects(GalleonFS.open({ storagePath: dir, passphrase: 'wrong horse battery' }), (err: Error & { code?: string }) => err.code === 'DECRYPTION_FAILED' && /wrong passphrase/.test(err.message))
    await assert.rejects(GalleonFS.open({ storagePath: dir, passphrase: 'short' }), { code: 'INVALID_ARGUMENT' })
    g = await GalleonFS.open({ storagePath: dir, passphrase: 'correct horse battery' })
    const before = (await g.getVolumeEncryption('secret')).kekId
    const result = await g.rotateKeyEncryptionKey({ passphrase: 'new passphrase here' })
    assert.equal(result.rewrapped, 2) // the data key and the backup key
    assert.notEqual(result.keyId, before)
    assert.equal((await g.getVolumeEncryption('secret')).kekId, result.keyId)
    assert.deepEqual(await g.readBlock('secret', 3), marker('pp', BLOCK))
    await g.close()
    await assert.rejects(GalleonFS.open({ storagePath: dir, passphrase: 'correct horse battery' }), { code: 'DECRYPTION_FAILED' })
    g = await GalleonFS.open({ storagePath: dir, passphrase: 'new passphrase here' })
    try {
      assert.deepEqual(await g.readBlock('secret', 3), marker('pp', BLOCK))
    } finally {
      await g.close()
    }
  })

  it('passphrase: a missing salt file fails open, saying to restore it, and is not replaced by a new one', async () => {
    const dir = fresh()
    let g = await GalleonFS.open({ storagePath: dir, passphrase: 'salted passphrase' })
    await g.writeBlock(await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED }), 2, marker('salt', BLOCK), WriteConcern.WriteDurable)
    await g.close()
    const salt = join(dir, 'passphrase.salt')
    await copyFile(salt, `${salt}.saved`)
    await rm(salt)
    await assert.rejects(GalleonFS.open({ storagePath: dir, passphrase: 'salted passphrase' }), (err: Error & { code?: string }) => err.code === 'DECRYPTION_FAILED' && /passphrase\.salt is missing.*restore it/.test(err.message))
    await assert.rejects(stat(salt), { code: 'ENOENT' })
    await copyFile(`${salt}.saved`, salt)
    g = await GalleonFS.open({ storagePath: dir, passphrase: 'salted passphrase' })
    try {
      assert.deepEqual(await g.readBlock('secret', 2), marker('salt', BLOCK))
    } finally {
      await g.close()
    }
  })

  it('passphrase: a change whose re-wrap fails keeps the old passphrase, and the next change works', async () => {
    const dir = fresh()
    const db = new ClassicLevel(join(dir, 'metadata'))
    let failBatches = false
    const batch = db.batch.bind(db) as (...args: unknown[]) => unknown
    ;(db as unknown as { batch: (...args: unknown[]) => unknown }).batch = (...args: unknown[]) => {
      if (failBatches && Array.isArray(args[0])) return Promise.reject(Object.assign(new Error('EIO: i/o error (injected)'), { code: 'EIO' }))
      return batch(...args)
    }
    let g = await GalleonFS.open({ storagePath: dir, metadata: db as never, passphrase: 'first passphrase' })
    await g.writeBlock(await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED }), 1, marker('keep', BLOCK), WriteConcern.WriteDurable)
    failBatches = true
    await assert.rejects(g.rotateKeyEncryptionKey({ passphrase: 'second passphrase' }), (err: Error & { code?: string }) => err.code === 'IO_ERROR' && /old passphrase stays/.test(err.message))
    failBatches = false
    assert.deepEqual(await g.readBlock('secret', 1), marker('keep', BLOCK))
    await g.close()
    await assert.rejects(GalleonFS.open({ storagePath: dir, passphrase: 'second passphrase' }), { code: 'DECRYPTION_FAILED' })
    g = await GalleonFS.open({ storagePath: dir, passphrase: 'first passphrase' })
    try {
      assert.deepEqual(await g.readBlock('secret', 1), marker('keep', BLOCK))
      await g.rotateKeyEncryptionKey({ passphrase: 'third passphrase' })
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir, passphrase: 'third passphrase' })
    try {
      assert.deepEqual(await g.readBlock('secret', 1), marker('keep', BLOCK))
    } finally {
      await g.close()
    }
  })

  it('external: wrap and unwrap by application functions; a failing unwrap makes the volume unavailable, not the instance; keys can move to another provider', async () => {
    const dir = fresh()
    const kmsKey = generateKey()
    let kmsUp = true
    const calls: string[] = []
    const kms = (keyId: string, key: Uint8Array): ExternalKeyProvider => new ExternalKeyProvider({
      keyId,
      wrap: async (dek, context) => { calls.push(`wrap ${context}`); return wrapKey(key, dek, context) },
      unwrap: async (wrapped, context) => {
        calls.push(`unwrap ${context}`)
        if (!kmsUp) throw new Error('KMS unreachable')
        return unwrapKey(key, wrapped, context)
      }
    })
    let g = await GalleonFS.open({ storagePath: dir, keyProvider: kms('kms-1', kmsKey) })
    const vol = await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
    await g.createVolume({ name: 'plain', sizeBytes: '1M' })
    await g.writeBlock(vol, 0, marker('ext', BLOCK), WriteConcern.WriteDurable)
    assert.ok(calls.some((call) => call.startsWith(`wrap volume:${vol.id}:dek:1`)))
    assert.deepEqual(await g.getVolumeEncryption(vol), { encrypted: true, algorithm: 'AES-256-GCM', keyVersion: 1, keyVersions: [1], provider: 'external', kekId: 'kms-1' })
    await assert.rejects(stat(join(dir, 'master.key')), { code: 'ENOENT' })
    await g.close()
    kmsUp = false
    g = await GalleonFS.open({ storagePath: dir, keyProvider: kms('kms-1', kmsKey) })
    await assert.rejects(g.readBlock('secret', 0), (err: Error & { code?: string }) => err.code === 'DECRYPTION_FAILED' && /KMS unreachable/.test(err.message))
    await g.writeBlock('plain', 0, marker('fine', BLOCK))
    await g.close()
    kmsUp = true
    g = await GalleonFS.open({ storagePath: dir, keyProvider: kms('kms-1', kmsKey) })
    const otherKey = generateKey()
    assert.equal((await g.rotateKeyEncryptionKey({ keyProvider: kms('kms-2', otherKey) })).rewrapped, 2)
    await g.close()
    // Now only the new provider unwraps.
    g = await GalleonFS.open({ storagePath: dir, keyProvider: kms('kms-2', otherKey) })
    try {
      assert.deepEqual(await g.readBlock('secret', 0), marker('ext', BLOCK))
      assert.equal((await g.getVolumeEncryption('secret')).kekId, 'kms-2')
      await assert.rejects(g.rotateKeyEncryptionKey(), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /keyProvider/.test(err.message))
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath: dir, keyProvider: kms('kms-1', kmsKey) })
    try {
      await assert.rejects(g.readBlock('secret', 0), { code: 'DECRYPTION_FAILED' })
    } finally {
      await g.close()
    }
  })

  it('internal KEK rotation re-wraps every key without rewriting data; the key file keeps the retired key', async () => {
    const dir = fresh()
    const { g, puts } = await openRecorded(dir)
    let keyId: string
    try {
      for (const name of ['a', 'b']) await g.writeBlock(await g.createVolume({ name, sizeBytes: '1M', ...ENCRYPTED }), 1, marker(name, BLOCK), WriteConcern.WriteDurable)
      const before = (await g.getVolumeEncryption('a')).kekId
      const written = puts.length
      const result = await g.rotateKeyEncryptionKey()
      keyId = result.keyId
      assert.equal(result.provider, 'internal')
      assert.equal(result.rewrapped, 4)
      assert.notEqual(keyId, before)
      assert.equal(puts.length, written, 'no block was rewritten')
      const lines = (await readFile(join(dir, 'master.key'), 'utf8')).trim().split('\n')
      assert.equal(lines.length, 2)
      assert.equal((await stat(join(dir, 'master.key'))).mode & 0o777, 0o600)
    } finally {
      await g.close()
    }
    const again = await GalleonFS.open({ storagePath: dir })
    try {
      assert.equal((await again.getVolumeEncryption('b')).kekId, keyId)
      assert.deepEqual(await again.readBlock('b', 1), marker('b', BLOCK))
    } finally {
      await again.close()
    }
  })

  it('refuses unusable key options with clear errors', async () => {
    await assert.rejects(GalleonFS.open({ inMemory: true, passphrase: 'long enough phrase' }), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /storagePath/.test(err.message))
    await assert.rejects(GalleonFS.open({ storagePath: fresh(), passphrase: 'long enough phrase', keyProvider: {} as never }), { code: 'INVALID_ARGUMENT' })
    await assert.rejects(GalleonFS.open({ storagePath: fresh(), keyProvider: { name: 'x' } as never }), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /wrap/.test(err.message))
    const g = await GalleonFS.open({ inMemory: true })
    try {
      const vol = await g.createVolume({ name: 'mem', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock(vol, 0, marker('m', BLOCK))
      assert.deepEqual(await g.readBlock(vol, 0), marker('m', BLOCK))
      await assert.rejects(g.rotateVolumeKey('nope'), { code: 'VOLUME_NOT_FOUND' })
      await g.createVolume({ name: 'plain', sizeBytes: '1M' })
      await assert.rejects(g.rotateVolumeKey('plain'), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /not encrypted/.test(err.message))
      assert.deepEqual(await g.getVolumeEncryption('plain'), { encrypted: false })
      await assert.rejects(g.rotateKeyEncryptionKey({ passphrase: 'long enough phrase' }), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /not a passphrase/.test(err.message))
    } finally {
      await g.close()
    }
  })
})

describe('data-key rotation', () => {
  it('re-encrypts live blocks, snapshots and clone sources online while writes continue; the old key is then gone', async () => {
    const dir = fresh()
    const { g, store } = await openRecorded(dir)
    try {
      const vol = await g.createVolume({ name: 'secret', sizeBytes: '4M', ...ENCRYPTED })
      for (let i = 0; i < 300; i++) await g.writeBlock(vol, i, marker(`v1-${i}`, BLOCK))
      await g.createSnapshot(vol, 'snap')
      for (let i = 0; i < 300; i += 3) await g.writeBlock(vol, i, marker(`v1b-${i}`, BLOCK))
      const clone = await g.cloneVolume({ volume: vol, snapshot: 'snap' }, 'clone')
      const rotated: number[] = []
      g.on('volume:key-rotated', (volume, version) => { if (volume.id === vol.id) rotated.push(version) })
      // Writes sealed with the old key but still in flight when the rotation starts.
      const early: Array<Promise<void>> = []
      for (let i = 2; i < 300; i += 5) early.push(g.writeBlock(vol, i, marker(`early-${i}`, BLOCK), WriteConcern.WriteDurable))
      const started = await g.rotateVolumeKey(vol)
      await Promise.all(early)
      assert.equal(started.keyVersion, 2)
      assert.deepEqual(started.keyVersions, [1, 2])
      assert.ok(started.rotation !== undefined)
      await assert.rejects(g.rotateVolumeKey(vol), { code: 'BUSY' })
      // Writes during the rotation.
      const during: Array<Promise<void>> = []
      for (let i = 1; i < 300; i += 5) during.push(g.writeBlock(vol, i, marker(`v2-${i}`, BLOCK)))
      await Promise.all(during)
      for (let waited = 0; (await g.getVolumeEncryption(vol)).rotation !== undefined; waited++) {
        assert.ok(waited < 3000, 'rotation did not finish')
        await new Promise((resolve) => setTimeout(resolve, 10))
      }
      assert.deepEqual(rotated, [2])
      assert.deepEqual((await g.getVolumeEncryption(vol)).keyVersions, [2])
      const expectLive = (i: number): Uint8Array => i % 5 === 2 ? marker(`early-${i}`, BLOCK) : i % 5 === 1 ? marker(`v2-${i}`, BLOCK) : i % 3 === 0 ? marker(`v1b-${i}`, BLOCK) : marker(`v1-${i}`, BLOCK)
      for (let i = 0; i < 300; i += 7) {
        assert.deepEqual(await g.readBlock(vol, i), expectLive(i), `live ${i}`)
        assert.deepEqual(await g.readBlock({ volume: vol, snapshot: 'snap' }, i), marker(`v1-${i}`, BLOCK), `snapshot ${i}`)
        assert.deepEqual(await g.readBlock(clone, i), marker(`v1-${i}`, BLOCK), `clone ${i}`)
      }
      // Every stored version of the volume is sealed with key 2 now.
      const versions = new Map<number, number>()
      for await (const address of store.addresses()) {
        const decoded = decodeBlock(address, await store.get(address) as Uint8Array)
        assert.ok(decoded.ok)
        if ((decoded.flags & BLOCK_FLAG_ENCRYPTED) === 0) continue
        const { version } = VolumeCipher.inspect(decoded.payload)
        const key = address.volume * 10 + version
        versions.set(key, (versions.get(key) ?? 0) + 1)
      }
      assert.ok(versions.size > 0)
      for (const [key, count] of versions) assert.notEqual(key % 10, 1, `${count} blocks of storage ${Math.floor(key / 10)} still under key 1`)
    } finally {
      await g.close()
    }
  })
})

describe('encrypted backups', () => {
  it('are encrypted on the target, restorable with the key (also after a KEK rotation and on another instance holding the key file), useless without it', async () => {
    const dir = fresh()
    const target = fresh()
    const g = await GalleonFS.open({ storagePath: dir, backupTarget: target })
    let full: string
    let incremental: string
    try {
      const vol = await g.createVolume({ name: 'secret', sizeBytes: '4M', ...ENCRYPTED, labels: { app: 'db' } })
      for (let i = 0; i < 64; i++) await g.writeBlock(vol, i, marker(`b${i}`, BLOCK))
      // Incompressible data around a marker: without encryption it would land on the target as it is.
      const hidden = new Uint8Array(randomBytes(BLOCK))
      hidden.set(marker('hidden', 64), 200)
      await g.writeBlock(vol, 64, hidden)
      const first = await g.createBackup(vol)
      assert.equal(first.encrypted, true)
      full = first.id
      for (let i = 0; i < 8; i++) await g.writeBlock(vol, 100 + i, marker(`c${i}`, BLOCK))
      incremental = (await g.createBackup(vol, { strategy: 'incremental' })).id
      const plain = await g.createVolume({ name: 'plain', sizeBytes: '1M' })
      // Incompressible data around the marker, so the plain backup stores it as it is.
      const controlBlock = new Uint8Array(randomBytes(BLOCK))
      controlBlock.set(marker('plain', 64), 100)
      await g.writeBlock(plain, 0, controlBlock)
      const plainBackup = await g.createBackup(plain)
      assert.equal(plainBackup.encrypted, false)
      // Chunk ids of the encrypted volume are keyed: not the SHA-256 of any data written.
      const chunkIds = new Set<string>()
      const walk = async (at: string): Promise<void> => {
        for (const entry of await readdir(at, { withFileTypes: true })) {
          if (entry.isDirectory()) await walk(join(at, entry.name))
          else if (/^[0-9a-f]{64}$/.test(entry.name)) chunkIds.add(entry.name)
        }
      }
      await walk(target)
      const plainHashes = Array.from({ length: 64 }, (_, i) => sha(marker(`b${i}`, BLOCK)))
      assert.ok(chunkIds.size >= 3)
      assert.ok(plainHashes.every((hash) => !chunkIds.has(hash)))
      assert.deepEqual((await g.verifyBackup(incremental)).ok, true)
      // Restore in place and into a new volume.
      const restored = await g.restoreBackup(incremental, { name: 'restored' })
      assert.equal(restored.encrypted, true)
      assert.equal(restored.replicas, 1)
      assert.deepEqual(await g.read(restored, 0, 64 * BLOCK), new Uint8Array(Buffer.concat(Array.from({ length: 64 }, (_, i) => marker(`b${i}`, BLOCK)))))
      assert.deepEqual(await g.readBlock(restored, 105), marker('c5', BLOCK))
      await assert.rejects(g.restoreBackup(full, { volume: plain }), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /encrypted/.test(err.message))
      // A KEK rotation does not strand the backups.
      await g.rotateKeyEncryptionKey()
      await g.restoreBackup(full, { volume: restored })
      assert.deepEqual(await g.readBlock(restored, 105), new Uint8Array(BLOCK))
      assert.deepEqual(await g.readBlock(restored, 5), marker('b5', BLOCK))
    } finally {
      await g.close()
    }
    for (const tag of ['b1', 'c3', 'hidden']) assert.deepEqual(await filesContaining(target, marker(tag, 64)), [], `marker ${tag} on the target`)
    assert.ok((await filesContaining(target, marker('plain', 64))).length > 0, 'the plain volume\'s backup is readable on the target (control)')

    // Disaster recovery: a new instance with a copy of the master key file restores; one without cannot.
    const withKey = fresh()
    const { mkdir } = await import('node:fs/promises')
    await mkdir(withKey, { recursive: true })
    await copyFile(join(dir, 'master.key'), join(withKey, 'master.key'))
    const h = await GalleonFS.open({ storagePath: withKey, backupTarget: target })
    try {
      const back = await h.restoreBackup(incremental, { name: 'dr' })
      assert.deepEqual(await h.readBlock(back, 63), marker('b63', BLOCK))
      assert.equal((await h.verifyBackup(full)).ok, true)
    } finally {
      await h.close()
    }
    const stranger = await GalleonFS.open({ storagePath: fresh(), backupTarget: target })
    try {
      await assert.rejects(stranger.restoreBackup(incremental, { name: 'nope' }), (err: Error & { code?: string }) => err.code === 'DECRYPTION_FAILED' && /KEK/.test(err.message))
      assert.deepEqual((await stranger.listVolumes()).map((v) => v.name), [])
      const report = await stranger.verifyBackup(full)
      assert.equal(report.ok, false)
      assert.equal(report.problems[0]?.code, 'DECRYPTION_FAILED')
    } finally {
      await stranger.close()
    }
  })

  it('detect a tampered encrypted chunk: verify reports DECRYPTION_FAILED and restore refuses', async () => {
    const dir = fresh()
    const target = fresh()
    const g = await GalleonFS.open({ storagePath: dir, backupTarget: target })
    try {
      const vol = await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
      for (let i = 0; i < 8; i++) await g.writeBlock(vol, i, marker(`t${i}`, BLOCK))
      const backup = await g.createBackup(vol)
      const chunks: string[] = []
      const walk = async (at: string): Promise<void> => {
        for (const entry of await readdir(at, { withFileTypes: true })) {
          if (entry.isDirectory()) await walk(join(at, entry.name))
          else if (/^[0-9a-f]{64}$/.test(entry.name)) chunks.push(join(at, entry.name))
        }
      }
      await walk(target)
      assert.equal(chunks.length, 1)
      const bytes = await readFile(chunks[0] as string)
      bytes[bytes.length - 20]! ^= 1
      const { writeFile } = await import('node:fs/promises')
      await writeFile(chunks[0] as string, bytes)
      const report = await g.verifyBackup(backup.id)
      assert.equal(report.ok, false)
      assert.equal(report.problems[0]?.code, 'DECRYPTION_FAILED')
      await assert.rejects(g.restoreBackup(backup.id, { name: 'bad' }), { code: 'DECRYPTION_FAILED' })
      assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['secret'])
    } finally {
      await g.close()
    }
  })
})

describe('clones of encrypted volumes', () => {
  it('have their own data key, read the source\'s blocks with the source\'s, and keep reading after the source is deleted', async () => {
    const dir = fresh()
    const { g, puts } = await openRecorded(dir)
    try {
      const vol = await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
      for (let i = 0; i < 32; i++) await g.writeBlock(vol, i, marker(`s${i}`, BLOCK))
      const clone = await g.cloneVolume(vol, 'clone')
      await g.writeBlock(clone, 0, marker('own', BLOCK))
      const storage = new Map<number, string>()
      for (const { address, data } of puts) {
        const decoded = decodeBlock(address, data)
        if (decoded.ok && (decoded.flags & BLOCK_FLAG_ENCRYPTED) !== 0) storage.set(address.volume, sha(decoded.payload.subarray(0, 4)))
      }
      assert.equal(storage.size, 2)
      await g.rotateVolumeKey(vol, { wait: true })
      assert.deepEqual(await g.readBlock(clone, 5), marker('s5', BLOCK))
      await g.deleteVolume(vol, { force: true })
      assert.deepEqual(await g.readBlock(clone, 6), marker('s6', BLOCK))
      assert.deepEqual(await g.readBlock(clone, 0), marker('own', BLOCK))
      assert.equal((await g.getVolume(clone)).source, undefined)
    } finally {
      await g.close()
    }
    const again = await GalleonFS.open({ storagePath: dir })
    try {
      assert.deepEqual(await again.read('clone', 0, 2 * BLOCK), new Uint8Array(Buffer.concat([marker('own', BLOCK), marker('s1', BLOCK)])))
      await assert.rejects(again.getVolumeEncryption('secret'), { code: 'VOLUME_NOT_FOUND' })
    } finally {
      await again.close()
    }
  })
})

describe('encryption: review regressions', () => {
  /** An external provider whose wrap takes `delay` ms. */
  const slowProvider = (keyId: string, key: Uint8Array, delay: number): ExternalKeyProvider => new ExternalKeyProvider({
    keyId,
    wrap: async (dek, context) => { await new Promise((resolve) => setTimeout(resolve, delay)); return wrapKey(key, dek, context) },
    unwrap: async (wrapped, context) => unwrapKey(key, wrapped, context)
  })

  it('a volume is invisible until its keys (and a clone\'s link) are in place: no plaintext can reach the store', async () => {
    const dir = fresh()
    const { store, puts } = recording(new FileBlockStore({ location: join(dir, 'blocks') }))
    const g = await GalleonFS.open({ storagePath: dir, blockStore: store, keyProvider: slowProvider('k', generateKey(), 30) })
    try {
      const source = await g.createVolume({ name: 'src', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock(source, 0, marker('src', BLOCK))
      const cases: Array<[string, () => Promise<unknown>]> = [
        ['fresh', async () => await g.createVolume({ name: 'fresh', sizeBytes: '1M', ...ENCRYPTED })],
        ['clone', async () => await g.cloneVolume(source, 'clone')]
      ]
      for (const [name, create] of cases) {
        // Writes by name while the (slow) key wrapping runs: refused as missing, never stored in the clear.
        let done = false
        const creating = create().finally(() => { done = true })
        const attempts: string[] = []
        while (!done) {
          await g.writeBlock(name, 1, marker('early', BLOCK)).then(() => attempts.push('written'), (err) => attempts.push(err.code))
          await new Promise((resolve) => setTimeout(resolve, 2))
        }
        await creating
        assert.ok(attempts.includes('VOLUME_NOT_FOUND'), `${name}: ${attempts.join(',')}`)
        assert.ok(attempts.every((code) => code === 'VOLUME_NOT_FOUND' || code === 'written'), `${name}: ${attempts.join(',')}`)
      }
      // Whatever got written is sealed, and reads back.
      for (const { address, data } of puts) {
        const decoded = decodeBlock(address, data)
        assert.ok(decoded.ok && ((decoded.flags & BLOCK_FLAG_ENCRYPTED) !== 0 || data.byteLength <= 8), `plain put at ${JSON.stringify(address)}`)
      }
      assert.deepEqual(await g.readBlock('clone', 0), marker('src', BLOCK))
      await g.writeBlock('clone', 2, marker('later', BLOCK))
      assert.deepEqual(await g.readBlock('clone', 2), marker('later', BLOCK))
    } finally {
      await g.close()
    }
  })

  it('a KEK moved to another provider while volumes are created and keys rotated leaves no key behind', async () => {
    const dir = fresh()
    const a = generateKey()
    const b = generateKey()
    let g = await GalleonFS.open({ storagePath: dir, keyProvider: slowProvider('kms-a', a, 15) })
    await g.writeBlock(await g.createVolume({ name: 'old', sizeBytes: '1M', ...ENCRYPTED }), 0, marker('old', BLOCK), WriteConcern.WriteDurable)
    const racing = [
      g.createVolume({ name: 'new', sizeBytes: '1M', ...ENCRYPTED }),
      g.rotateVolumeKey('old', { wait: true }),
      g.rotateKeyEncryptionKey({ keyProvider: slowProvider('kms-b', b, 15) })
    ]
    await Promise.all(racing)
    await g.writeBlock('new', 0, marker('new', BLOCK), WriteConcern.WriteDurable)
    assert.equal((await g.getVolumeEncryption('new')).kekId, 'kms-b')
    assert.equal((await g.getVolumeEncryption('old')).kekId, 'kms-b')
    await g.close()
    g = await GalleonFS.open({ storagePath: dir, keyProvider: slowProvider('kms-b', b, 1) })
    try {
      assert.deepEqual(await g.readBlock('old', 0), marker('old', BLOCK))
      assert.deepEqual(await g.readBlock('new', 0), marker('new', BLOCK))
    } finally {
      await g.close()
    }
  })

  it('a read that fetched a block before the rotation re-sealed it still decrypts after the rotation ends, also through a clone', async () => {
    const { MemoryBlockStore } = await import('../backends/memory/index.js')
    const store = new MemoryBlockStore()
    let slow = false
    const get = store.get.bind(store)
    store.get = async (address) => {
      const delayed = slow
      slow = false
      const value = await get(address)
      if (delayed) await new Promise((resolve) => setTimeout(resolve, 200))
      return value
    }
    const getMany = store.getMany.bind(store)
    store.getMany = async (addresses) => {
      const delayed = slow
      slow = false
      const values = await getMany(addresses)
      if (delayed) await new Promise((resolve) => setTimeout(resolve, 200))
      return values
    }
    const g = await GalleonFS.open({ inMemory: true, blockStore: store })
    try {
      const alarms: string[] = []
      g.on('checksum:mismatch', (event) => alarms.push(event.reason))
      await g.createVolume({ name: 'v', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock('v', 0, marker('v', BLOCK))
      slow = true
      const reading = g.readBlock('v', 0)
      await new Promise((resolve) => setTimeout(resolve, 5))
      await g.rotateVolumeKey('v', { wait: true })
      assert.deepEqual(await reading, marker('v', BLOCK))
      assert.deepEqual((await g.getVolumeEncryption('v')).keyVersions, [2])
      assert.deepEqual(alarms, [])
      // A clone reads its source's blocks with the source's key; the rotation does not wait for it.
      await g.writeBlock('v', 1, marker('v1', BLOCK))
      await g.cloneVolume('v', 'c')
      for (const read of [async () => await g.readBlock('c', 0), async () => await g.read('c', 0, 2 * BLOCK)]) {
        slow = true
        const cloneReading = read()
        await new Promise((resolve) => setTimeout(resolve, 5))
        await g.rotateVolumeKey('v', { wait: true })
        const got = await cloneReading
        assert.deepEqual(got.subarray(0, BLOCK), marker('v', BLOCK))
        if (got.byteLength > BLOCK) assert.deepEqual(got.subarray(BLOCK), marker('v1', BLOCK))
      }
      assert.deepEqual((await g.getVolumeEncryption('v')).keyVersions, [4])
      assert.deepEqual(alarms, [])
      // Deleting the source flattens the clone: its copy of a block fetched before the re-seal too.
      slow = true
      const deleting = g.deleteVolume('v', { force: true })
      await new Promise((resolve) => setTimeout(resolve, 5))
      await g.rotateVolumeKey('v', { wait: true })
      await deleting
      assert.deepEqual(await g.readBlock('c', 0), marker('v', BLOCK))
      assert.deepEqual(await g.readBlock('c', 1), marker('v1', BLOCK))
      assert.deepEqual(alarms, [])
    } finally {
      await g.close()
    }
  })

  it('reports a key that ran out of nonces with NO_SPACE, and a stopped rotation can be resumed', async () => {
    const cipher = new VolumeCipher(1, async () => {})
    cipher.addKey(1, generateKey(), { next: Number.MAX_SAFE_INTEGER - 10, limit: Number.MAX_SAFE_INTEGER - 10 }, true)
    await assert.rejects(cipher.reserve(1), (err: Error & { code?: string }) => err.code === 'NO_SPACE' && /rotate/.test(err.message))
    // And again: each reservation is refused at once (an earlier version hung here).
    await assert.rejects(cipher.reserve(1), { code: 'NO_SPACE' })

    // A background extension that failed does not fail a later reservation that succeeds.
    let failNext = false
    let attempts = 0
    const flaky = new VolumeCipher(1, async () => {
      attempts++
      if (failNext) { failNext = false; throw new Error('EIO: metadata write failed (injected)') }
    })
    flaky.addKey(1, generateKey(), { next: NONCE_RESERVATION - 8, limit: NONCE_RESERVATION }, true)
    flaky.restoreGenerations(NONCE_RESERVATION) // the generations sealed below are reserved, as a key record's are
    failNext = true
    let sealed = 0
    const seal = (): void => { flaky.seal({ volume: 1, index: sealed, gen: ++sealed }, new Uint8Array(16)) }
    seal() // under half the reservation left: an extension starts in the background, and fails
    await new Promise((resolve) => setImmediate(resolve))
    assert.equal(attempts, 1)
    while (flaky.ready(1)) seal() // another one starts (and will succeed) while the rest is used up
    await flaky.reserve(1)
    assert.ok(flaky.ready(1))

    const { MemoryBlockStore } = await import('../backends/memory/index.js')
    const store = new MemoryBlockStore()
    let failGets = 0
    const get = store.get.bind(store)
    store.get = async (address) => {
      if (failGets > 0) { failGets--; throw new Error('disk hiccup') }
      return await get(address)
    }
    const g = await GalleonFS.open({ inMemory: true, blockStore: store })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M', ...ENCRYPTED })
      for (let i = 0; i < 10; i++) await g.writeBlock('v', i, marker(`r${i}`, BLOCK))
      const errors: string[] = []
      g.on('io:error', (event) => errors.push(event.message))
      failGets = 1
      await assert.rejects(g.rotateVolumeKey('v', { wait: true }), { code: 'IO_ERROR' })
      assert.equal(errors.length, 1)
      assert.ok((await g.getVolumeEncryption('v')).rotation !== undefined)
      const resumed = await g.rotateVolumeKey('v', { wait: true })
      assert.equal(resumed.keyVersion, 2) // resumed, not a third key
      assert.deepEqual(resumed.keyVersions, [2])
      for (let i = 0; i < 10; i++) assert.deepEqual(await g.readBlock('v', i), marker(`r${i}`, BLOCK))
    } finally {
      await g.close()
    }
  })
})

describe('clones of encrypted volumes: multi-block reads', () => {
  it('read ranges that interleave the source\'s blocks and the clone\'s, each under several key versions, at unaligned offsets', async () => {
    const dir = fresh()
    const g = await GalleonFS.open({ storagePath: dir })
    try {
      const vol = await g.createVolume({ name: 'source', sizeBytes: '1M', ...ENCRYPTED })
      const blocks = 200
      for (let i = 0; i < blocks; i++) await g.writeBlock(vol, i, marker(`s${i}`, BLOCK))
      await g.createSnapshot(vol, 'base')
      const clone = await g.cloneVolume({ volume: vol, snapshot: 'base' }, 'clone')
      // Even blocks become the clone's own, then every fourth under the clone's next key; the
      // source moves to its next key; then blocks 1, 7, 13, ... become the clone's too.
      for (let i = 0; i < blocks; i += 2) await g.writeBlock(clone, i, marker(`c${i}`, BLOCK))
      await g.rotateVolumeKey(clone, { wait: true })
      for (let i = 0; i < blocks; i += 4) await g.writeBlock(clone, i, marker(`r${i}`, BLOCK))
      await g.rotateVolumeKey(vol, { wait: true })
      for (let i = 1; i < blocks; i += 6) await g.writeBlock(clone, i, marker(`q${i}`, BLOCK))
      const want = new Uint8Array(blocks * BLOCK)
      for (let i = 0; i < blocks; i++) want.set(marker(i % 4 === 0 ? `r${i}` : i % 6 === 1 ? `q${i}` : i % 2 === 0 ? `c${i}` : `s${i}`, BLOCK), i * BLOCK)
      for (const [offset, length] of [[0, blocks * BLOCK], [100, 150 * BLOCK], [3 * BLOCK + 7, 77 * BLOCK + 3]] as const) {
        assert.ok(Buffer.from(await g.read(clone, offset, length)).equals(want.subarray(offset, offset + length)), `read of ${length} bytes at ${offset}`)
      }
      // The source still reads as it was.
      assert.ok(Buffer.from(await g.read(vol, 5, 120 * BLOCK)).equals(Buffer.concat(Array.from({ length: 121 }, (_, i) => marker(`s${i}`, BLOCK))).subarray(5, 5 + 120 * BLOCK)))
    } finally {
      await g.close()
    }
  })
})

describe('encryption: large requests (native batch calls, or node:crypto on worker threads)', () => {
  it('seal and open 1 MiB requests in parallel with the same bytes and the same tamper detection as block by block', async () => {
    const dir = fresh()
    const { g, store, puts } = await openRecorded(dir)
    try {
      const vol = await g.createVolume({ name: 'big', sizeBytes: '8M', ...ENCRYPTED })
      const data = new Uint8Array(randomBytes(1 << 20))
      const copy = Uint8Array.from(data)
      const writing = g.write(vol, 4096 * 3, data)
      data.fill(0) // the caller may reuse its buffer once write() returned its promise
      await writing
      assert.deepEqual(await g.read(vol, 4096 * 3, 1 << 20), copy)
      // Every block was sealed (256 puts with unique nonces), and each one opens on its own too.
      assert.equal(assertNoncesUnique(puts), 256)
      for (const index of [3, 100, 258]) assert.deepEqual(await g.readBlock(vol, index), copy.subarray((index - 3) * 4096, (index - 2) * 4096))
      // A block altered in the middle of a large read fails the whole read.
      let victim: BlockAddress | undefined
      for await (const address of store.addresses()) if (address.index === 150) victim = address
      const decoded = decodeBlock(victim as BlockAddress, await store.get(victim as BlockAddress) as Uint8Array)
      assert.ok(decoded.ok)
      const payload = Uint8Array.from(decoded.payload)
      payload[200]! ^= 4
      await store.batch([{ type: 'put', address: victim as BlockAddress, data: Uint8Array.from(encodeBlock(victim as BlockAddress, payload, payload.byteLength, BLOCK_FLAG_ENCRYPTED)) }], { sync: true })
      await assert.rejects(g.read(vol, 0, 2 << 20), { code: 'DECRYPTION_FAILED' })
      assert.deepEqual(await g.read(vol, 4096 * 3, 100 * 4096), copy.subarray(0, 100 * 4096))
    } finally {
      await g.close()
    }
  })
})
