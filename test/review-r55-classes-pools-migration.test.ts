// Review r55: volume types, storage classes, pools and live migration under hostile inputs and races.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { MemoryLevel } from 'memory-level'
import { GalleonFS, type GalleonError } from '../src/index.js'
import { MemoryBlockStore } from '../backends/memory/index.js'
import { ExternalKeyProvider, generateKey, unwrapKey, wrapKey } from '../src/crypto/keys.js'

const MiB = 1 << 20
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
})

/**
 * A memory-level database that holds the first batch `matches` picks (resolving `reached`) until
 * `release()`; every other write passes.
 */
class GatedLevel extends MemoryLevel<string, unknown> {
  #matches: ((operations: Array<{ type: string, key: unknown }>) => boolean) | undefined
  #gate: Promise<void> | undefined
  #reached: (() => void) | undefined

  hold (matches: (operations: Array<{ type: string, key: unknown }>) => boolean): { reached: Promise<void>, release: () => void } {
    let open!: () => void
    const reached = new Promise<void>((resolve) => { this.#reached = resolve })
    this.#gate = new Promise<void>((resolve) => { open = resolve })
    this.#matches = matches
    return { reached, release: open }
  }

  async _batch (...args: unknown[]): Promise<void> {
    const operations = args[0] as Array<{ type: string, key: unknown }>
    const gate = this.#gate
    if (gate !== undefined && this.#matches?.(operations) === true) {
      this.#gate = undefined
      this.#reached?.()
      await gate
    }
    await (MemoryLevel.prototype as unknown as { _batch: (...a: unknown[]) => Promise<void> })._batch.apply(this, args)
  }
}

async function gatedInstance (options: { keyProvider?: ExternalKeyProvider } = {}): Promise<{ g: GalleonFS, metadata: GatedLevel }> {
  const metadata = new GatedLevel()
  const g = await GalleonFS.open({ metadata: metadata as never, blockStore: new MemoryBlockStore(), ...options })
  opened.push(g)
  return { g, metadata }
}

/** The switch-over's batch: it deletes the volume's migration record. */
const switchOver = (operations: Array<{ type: string, key: unknown }>): boolean => operations.some((op) => op.type === 'del' && String(op.key).includes('migrations'))

describe('review r55: reclaim policy Retain and live migration', () => {
  it('a plain deleteVolume racing the switch-over of a migration into a Retain class does not drop the volume: Retain still needs { force: true }', async () => {
    const { g, metadata } = await gatedInstance()
    await g.createStorageClass({ name: 'keep', reclaimPolicy: 'Retain' })
    await g.createVolume({ name: 'v', sizeBytes: MiB })
    await g.writeBlock('v', 0, new Uint8Array(4096).fill(7))

    const held = metadata.hold(switchOver)
    const migrating = g.migrateVolume('v', { storageClass: 'keep' })
    await held.reached
    // The switch-over is being stored: the volume is (about to be) in the Retain class.
    const deleting = g.deleteVolume('v')
    held.release()
    const [migrated, deleted] = await Promise.allSettled([migrating, deleting])
    const volumes = await g.listVolumes()
    assert.equal(migrated.status, 'fulfilled', 'the migration had passed its last cancellation point')
    assert.equal(deleted.status, 'rejected', `a plain delete of a volume of a Retain class is refused; volumes left: ${volumes.map((v) => `${v.name} (${v.storageClass})`).join(', ') || 'none'}`)
    assert.equal((deleted.reason as GalleonError).code, 'BUSY')
    assert.equal((await g.getVolume('v')).storageClass, 'keep')
    assert.deepEqual([...(await g.readBlock('v', 0)).subarray(0, 4)], [7, 7, 7, 7])
  })
})

describe('review r55: a key rotation against a migration that is starting', () => {
  it('rotateVolumeKey while a migration of the volume records its start is refused with BUSY; the migration then completes with the data intact', async () => {
    const kek = generateKey()
    const { g, metadata } = await gatedInstance({ keyProvider: new ExternalKeyProvider({ keyId: 'test-kek', wrap: async (dek, context) => wrapKey(kek, dek, context), unwrap: async (wrapped, context) => unwrapKey(kek, wrapped, context) }) })
    await g.createStorageClass({ name: 'sealed', parameters: { encryption: 'true' } })
    await g.createStorageClass({ name: 'sealed-2', parameters: { encryption: 'true' } })
    await g.createVolume({ name: 'v', sizeBytes: MiB, storageClass: 'sealed' })
    await g.writeBlock('v', 0, new Uint8Array(4096).fill(7))
    // The migration's start record (a put under the migrations prefix) is held while stored.
    const held = metadata.hold((operations) => operations.some((op) => op.type === 'put' && String(op.key).includes('migrations')))
    const migrating = g.migrateVolume('v', { storageClass: 'sealed-2' })
    await held.reached
    const rotated = await g.rotateVolumeKey('v').then(() => 'rotated', (err: GalleonError) => `${err.code}: ${err.message}`)
    held.release()
    assert.match(rotated, /^BUSY: .*migrat/)
    const migrated = await migrating
    assert.equal(migrated.storageClass, 'sealed-2')
    assert.equal(migrated.encrypted, true)
    assert.deepEqual([...(await g.readBlock('v', 0)).subarray(0, 4)], [7, 7, 7, 7])
  })
})

describe('review r63: a migration cancelled while it starts', () => {
  it('a migration whose signal is aborted while it records its start is cancelled (CANCELLED), and the volume stays in its class', async () => {
    const { g, metadata } = await gatedInstance()
    await g.createStorageClass({ name: 'other' })
    await g.createVolume({ name: 'v', sizeBytes: MiB })
    await g.writeBlock('v', 0, new Uint8Array(4096).fill(7))
    const held = metadata.hold((operations) => operations.some((op) => op.type === 'put' && String(op.key).includes('migrations')))
    const controller = new AbortController()
    const migrating = g.migrateVolume('v', { storageClass: 'other' }, { signal: controller.signal }).then((v) => `migrated to ${v.storageClass}`, (err: GalleonError) => `${err.code}: ${err.message}`)
    await held.reached
    controller.abort()
    held.release()
    assert.match(await migrating, /^CANCELLED: /)
    assert.equal((await g.getVolume('v')).storageClass, 'fast-local-ssd')
    assert.deepEqual([...(await g.readBlock('v', 0)).subarray(0, 4)], [7, 7, 7, 7])
  })
})

describe('review r55: definitions that would be taken other than as written', () => {
  it('a storage class naming an encryption_algorithm without encryption: "true" is refused, not turned into a class of plain volumes', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    opened.push(g)
    for (const parameters of [{ encryption_algorithm: 'AES-256-GCM' }, { encryption: 'false', encryption_algorithm: 'AES-256-GCM' }]) {
      const created = await g.createStorageClass({ name: 'cipher', parameters }).then(async (c) => {
        const volume = await g.createVolume({ name: 'v', sizeBytes: MiB, storageClass: c.name })
        return `created; its volume encrypted: ${String(volume.encrypted)}`
      }, (err: GalleonError) => err.code)
      assert.equal(created, 'INVALID_ARGUMENT', JSON.stringify(parameters))
    }
    await g.createStorageClass({ name: 'cipher', parameters: { encryption: 'true', encryption_algorithm: 'AES-256-GCM' } })
  })

  it('updatePool with a field given twice (camelCase and snake_case) is refused, as createPool refuses it, and changes nothing', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    opened.push(g)
    await g.createPool({ name: 'p', capacityBytes: '8M' })
    const updated = await g.updatePool('p', { capacityBytes: '16M', capacity_bytes: '1G' } as never).then((p) => `updated to ${p.capacityBytes}`, (err: GalleonError) => err.code)
    assert.equal(updated, 'INVALID_ARGUMENT')
    assert.equal((await g.getPool('p')).capacityBytes, 8 * MiB)
  })
})

describe('review r55: migrateVolume option errors', () => {
  it('a malformed pool in migrateVolume is INVALID_ARGUMENT naming migrateVolume, not createVolume', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    opened.push(g)
    await g.createVolume({ name: 'v', sizeBytes: MiB })
    for (const pool of [5, null, '', 'Bad/Name']) {
      const message = await g.migrateVolume('v', { pool: pool as never }).then(() => 'migrated', (err: GalleonError) => `${err.code}: ${err.message}`)
      assert.match(message, /^INVALID_ARGUMENT: migrateVolume\(\) option "pool"/, JSON.stringify(pool))
    }
  })
})

describe('review r55: a pool move of a 1-copy volume of a replicated class', () => {
  it('a volume of encrypted-storage created with replicas: 1 (as the README advises on one node) moves to another pool, keeping its class, encryption and single copy', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    opened.push(g)
    await g.createPool({ name: 'p', capacityBytes: '8M' })
    await g.createVolume({ name: 'v', sizeBytes: MiB, storageClass: 'encrypted-storage', replicas: 1 })
    await g.write('v', 0, new TextEncoder().encode('hello'))
    await g.createSnapshot('v', 'before')
    const moved = await g.migrateVolume('v', { pool: 'p' }).then((v) => `${v.storageClass} pool ${String(v.pool)} replicas ${v.replicas} encrypted ${String(v.encrypted)}`, (err: GalleonError) => `${err.code}: ${err.message}`)
    assert.equal(moved, 'encrypted-storage pool p replicas 1 encrypted true')
    assert.equal(new TextDecoder().decode(await g.read({ volume: 'v', snapshot: 'before' }, 0, 5)), 'hello')
    assert.equal((await g.getPool('p')).provisionedBytes, MiB)
  })
})
