// Review r77: the one more time limit a key provider gets at open to answer late (43c4f8e) is
// given once per open. Given to every call that timed out, a KMS slow at each volume's first
// unwrap (a cache in front of a slow KMS: the key asked again answers at once) cost the open up to
// two limits per encrypted volume, the cost per volume that r73 (62b4487) took away.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { ExternalKeyProvider, generateKey, unwrapKey, wrapKey } from '../src/crypto/keys.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r77-kms-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

const BLOCK = 4096
const LIMIT_MS = 200
const block = (fill: number): Uint8Array => new Uint8Array(BLOCK).fill(fill)

describe('a KMS slow at the first unwrap of every key at open', () => {
  it('waits for one late answer at an open, not one per volume', async () => {
    const dir = join(root, 'slow-per-key')
    const kek = generateKey()
    let slow = false
    const answered = new Set<string>()
    let unwraps = 0
    let slowCalls = 0
    const provider = new ExternalKeyProvider({
      keyId: 'kms-key-1',
      timeoutMs: LIMIT_MS,
      wrap: async (dek, context) => wrapKey(kek, dek, context),
      unwrap: async (wrapped, context) => {
        unwraps++
        // A key not in the cache answers after 1.5 limits (late, not never); a cached one at once.
        if (slow && !answered.has(context)) {
          slowCalls++
          await new Promise((resolve) => { setTimeout(resolve, LIMIT_MS * 1.5) })
          answered.add(context)
        }
        return unwrapKey(kek, wrapped, context)
      }
    })
    const names = ['v0', 'v1', 'v2', 'v3']
    let g = await GalleonFS.open({ storagePath: dir, keyProvider: provider })
    try {
      for (const [i, name] of names.entries()) {
        await g.createVolume({ name, sizeBytes: '1M', storageClass: 'encrypted-storage', replicas: 1 })
        await g.writeBlock(name, 0, block(20 + i), WriteConcern.WriteDurable)
      }
    } finally {
      await g.close()
    }
    unwraps = 0
    slow = true
    g = await GalleonFS.open({ storagePath: dir, keyProvider: provider })
    try {
      // The first slow answer is waited for, and its key asked again; the next call that times
      // out finds the late answer spent, and the provider is taken for hung (not asked again).
      assert.equal(slowCalls, 2, `calls that timed out at this open (${unwraps} unwraps): each was given one more time limit`)
      assert.equal(unwraps, 3)
      // (The volumes are attached in the catalog's order, not in the order they were created.)
      const reads = await Promise.all(names.map(async (name, i) => await g.readBlock(name, 0).then(
        (data) => { assert.deepEqual(data, block(20 + i), `volume ${name}`); return 'read' },
        (err: Error & { code?: string }) => err.code === 'DECRYPTION_FAILED' && /did not answer/.test(err.message) ? 'not answered' : `${err.code ?? ''}: ${err.message}`)))
      assert.deepEqual(reads.sort(), ['not answered', 'not answered', 'not answered', 'read'])
    } finally {
      await g.close()
    }
    // Fast again: the next open reads them all.
    slow = false
    g = await GalleonFS.open({ storagePath: dir, keyProvider: provider })
    try {
      for (const [i, name] of names.entries()) assert.deepEqual(await g.readBlock(name, 0), block(20 + i), `volume ${name}`)
    } finally {
      await g.close()
    }
  })
})
