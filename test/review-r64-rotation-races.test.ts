// Review r64: key rotations racing migrations that are starting. A local volume's rotation records
// its start (its key record) while a migration checks; held at the metadata write so the race is exact.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { MemoryLevel } from 'memory-level'
import { GalleonFS } from '../src/index.js'
import { MemoryBlockStore } from '../backends/memory/index.js'
import { ExternalKeyProvider, generateKey, unwrapKey, wrapKey } from '../src/crypto/keys.js'
import { outcomeOf } from './support/assertions.js'
import { until } from './support/wait.js'

const MiB = 1 << 20
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
})

/** A memory-level database that holds the first put of a key `matches` picks (put or batch) until `release()`. */
class GatedLevel extends MemoryLevel<string, unknown> {
  #matches: ((key: string) => boolean) | undefined
  #gate: Promise<void> | undefined
  #reached: (() => void) | undefined
  /** Keys of every put stored or held so far. */
  readonly puts: string[] = []

  hold (matches: (key: string) => boolean): { reached: Promise<void>, release: () => void } {
    let open!: () => void
    const reached = new Promise<void>((resolve) => { this.#reached = resolve })
    this.#gate = new Promise<void>((resolve) => { open = resolve })
    this.#matches = matches
    return { reached, release: open }
  }

  async #wait (keys: string[]): Promise<void> {
    this.puts.push(...keys)
    const gate = this.#gate
    if (gate === undefined || !keys.some((key) => this.#matches?.(key) === true)) return
    this.#gate = undefined
    this.#reached?.()
    await gate
  }

  async _put (...args: unknown[]): Promise<void> {
    await this.#wait([String(args[0])])
    await (MemoryLevel.prototype as unknown as { _put: (...a: unknown[]) => Promise<void> })._put.apply(this, args)
  }

  async _batch (...args: unknown[]): Promise<void> {
    await this.#wait((args[0] as Array<{ type: string, key: unknown }>).filter((op) => op.type === 'put').map((op) => String(op.key)))
    await (MemoryLevel.prototype as unknown as { _batch: (...a: unknown[]) => Promise<void> })._batch.apply(this, args)
  }
}

describe('review r64: a local key rotation recording its start against a migration', () => {
  for (const target of ['fast-local-ssd', 'sealed-2']) {
  it(`migrateVolume to ${target} while rotateVolumeKey stores the new key is refused with BUSY; the rotation completes and the data reads back`, async () => {
    const metadata = new GatedLevel()
    const kek = generateKey()
    const keyProvider = new ExternalKeyProvider({ keyId: 'test-kek', wrap: async (dek, context) => wrapKey(kek, dek, context), unwrap: async (wrapped, context) => unwrapKey(kek, wrapped, context) })
    const g = await GalleonFS.open({ metadata: metadata as never, blockStore: new MemoryBlockStore(), keyProvider })
    opened.push(g)
    await g.createStorageClass({ name: 'sealed', parameters: { encryption: 'true' } })
    await g.createStorageClass({ name: 'sealed-2', parameters: { encryption: 'true' } })
    const v = await g.createVolume({ name: 'v', sizeBytes: MiB, storageClass: 'sealed' })
    const data = new Uint8Array(MiB)
    for (let i = 0; i < data.length; i += 4096) data.fill((i >> 12) + 1, i, i + 4096)
    await g.write('v', 0, data)
    // The rotation's new key record (under the keys sublevel, named by the volume id) is held while stored.
    const held = metadata.hold((key) => key.includes('keys') && key.endsWith(v.id))
    const rotated = outcomeOf(g.rotateVolumeKey('v', { wait: true }))
    await held.reached
    let settled = false
    const migrated = outcomeOf(g.migrateVolume('v', { storageClass: target })).finally(() => { settled = true })
    // Checked (refused, or its start recorded) before the new key is stored.
    await until('the migration was refused or recorded its start', () => settled || metadata.puts.some((key) => key.includes('migrations')))
    held.release()
    const [rotation, migration] = await Promise.all([rotated, migrated])
    const now = await g.getVolume('v')
    const encryption = await g.getVolumeEncryption('v').then((e) => JSON.stringify(e), (err: Error) => err.message)
    const state = `rotation: ${rotation.code} ${rotation.message}; migration to ${target}: ${migration.code} ${migration.message}; volume now ${now.storageClass}, encryption ${encryption}`
    assert.equal(rotation.code, 'ok', state)
    assert.equal(migration.code, 'BUSY', state)
    assert.equal(now.storageClass, 'sealed', state)
    assert.deepEqual(await g.read('v', 0, MiB), data)
  })
  }
})
