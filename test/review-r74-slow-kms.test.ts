// Review r74: a KMS that is slow once at open (one answer past the time limit, a cold start or a
// lost packet) costs that open nothing but the wait: since r73, the volume whose key timed out and
// every encrypted volume after it reported DECRYPTION_FAILED until the next open, where before only
// the one did. A hung KMS is still asked once (test/review-r73-key-providers).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { ExternalKeyProvider, generateKey, unwrapKey, wrapKey } from '../src/crypto/keys.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r74-kms-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

const BLOCK = 4096
const block = (fill: number): Uint8Array => new Uint8Array(BLOCK).fill(fill)

describe('a KMS whose answer comes late once at open', () => {
  it('opens every encrypted volume: the late answer is waited for one more time limit and the key asked again', async () => {
    const dir = join(root, 'slow-once')
    const kek = generateKey()
    // The first unwrap after this is set answers 450 ms after it is asked (the timer starts with
    // the call, so a slow open before it changes nothing): past the limit, within two.
    let slowOnce = false
    let unwraps = 0
    const provider = new ExternalKeyProvider({
      keyId: 'kms-key-1',
      timeoutMs: 300,
      wrap: async (dek, context) => wrapKey(kek, dek, context),
      unwrap: async (wrapped, context) => {
        unwraps++
        // The first unwrap answers after twice the limit (and within two): a slow answer, not none.
        if (slowOnce) { slowOnce = false; await new Promise((resolve) => { setTimeout(resolve, 450) }) }
        return unwrapKey(kek, wrapped, context)
      }
    })
    const names = ['v0', 'v1', 'v2']
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
    slowOnce = true
    g = await GalleonFS.open({ storagePath: dir, keyProvider: provider })
    try {
      for (const [i, name] of names.entries()) {
        const read = await g.readBlock(name, 0).then((data) => data, (err: Error & { code?: string }) => `${err.code ?? ''}: ${err.message}`)
        assert.deepEqual(read, block(20 + i), `volume ${name}`)
      }
      assert.equal(unwraps, names.length + 1, 'the key that timed out is asked for once more')
    } finally {
      await g.close()
    }
  })
})
