// Generation reservations of encrypted volumes made by a migration into an encrypting class, a
// clone of an encrypted volume (also of one reopened, whose generations resume past a reservation),
// and a restore of a backup (into a new encrypted volume and into an existing one): through
// writes, whole-block trims of their newest versions and reopens, no (block, generation) is sealed
// twice in the same storage, and every volume reads what was last written. File and level stores.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { BackupStrategy, GalleonFS, WriteConcern, type BlockAddress } from '../src/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { LevelBlockStore } from '../backends/level/index.js'
import { BLOCK_FLAG_ENCRYPTED } from '../src/engine/codec.js'
import { recording } from './support/recording-store.js'

const BS = 4096
const dirs: string[] = []
after(async () => { await Promise.all(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true }))) })

function block (seed: number): Uint8Array {
  const out = new Uint8Array(BS)
  for (let i = 0; i < BS; i++) out[i] = (seed * 37 + i * 11 + 5) & 0xff
  return out
}

/** The engine's header flags byte of a stored value (see codec.ts): whether it is sealed. */
function sealed (value: Uint8Array): boolean {
  return value.byteLength > BS && ((value[5] as number) & BLOCK_FLAG_ENCRYPTED) !== 0
}

for (const backend of ['file', 'level'] as const) {
  describe(`review r51: generations of migrated, cloned and restored encrypted volumes (${backend})`, () => {
    it('no (block, generation) is sealed twice in a storage through writes, trims of the newest versions and reopens', async () => {
      const storagePath = await mkdtemp(join(tmpdir(), `galleon-r51-conv-${backend}-`))
      const backups = await mkdtemp(join(tmpdir(), `galleon-r51-conv-bk-${backend}-`))
      dirs.push(storagePath, backups)
      const puts: Array<{ address: BlockAddress, data: Uint8Array }> = []
      const open = async (): Promise<GalleonFS> => {
        const recorded = recording(backend === 'file' ? new FileBlockStore({ location: join(storagePath, 'blocks') }) : new LevelBlockStore({ location: join(storagePath, 'blocks-level') }))
        recorded.puts.push = (...items) => puts.push(...items)
        return await GalleonFS.open({ storagePath, blockStore: recorded.store })
      }
      const model = new Map<string, Uint8Array[]>()
      const write = async (g: GalleonFS, name: string, index: number, seed: number): Promise<void> => {
        await g.writeBlock(name, index, block(seed), WriteConcern.WriteDurable)
        ;(model.get(name) as Uint8Array[])[index] = block(seed)
      }
      /** Writes blocks 0..3 (block 3 last, so it holds the newest version), then trims block 3 whole. */
      const churn = async (g: GalleonFS, name: string, seed: number): Promise<void> => {
        for (const i of [0, 1, 2, 3]) await write(g, name, i, seed + i)
        await g.trim(name, 3 * BS, BS)
        ;(model.get(name) as Uint8Array[])[3] = new Uint8Array(BS)
      }
      /** After a reopen: block 3 first (the first generation taken goes to the block trimmed last). */
      const after = async (g: GalleonFS, name: string, seed: number): Promise<void> => {
        for (const i of [3, 2, 1, 0]) await write(g, name, i, seed + i)
      }
      const check = async (g: GalleonFS, when: string): Promise<void> => {
        for (const [name, blocks] of model) {
          for (let i = 0; i < 8; i++) assert.deepEqual(await g.readBlock(name, i), blocks[i] ?? new Uint8Array(BS), `${name} block ${i} ${when}`)
        }
      }

      let g = await open()
      await g.createStorageClass({ name: 'secret-one', parameters: { encryption: 'true' } })
      await g.createVolume({ name: 'plain', sizeBytes: 8 * BS })
      model.set('plain', [])
      await churn(g, 'plain', 10)
      await g.createVolume({ name: 'src', sizeBytes: 8 * BS, storageClass: 'secret-one' })
      model.set('src', [])
      await churn(g, 'src', 20)
      const backup = await g.createBackup('src', { strategy: BackupStrategy.Full, target: backups })
      await g.close()

      g = await open()
      // Into encryption: the migrated volume's copies and the writes after its switch-over.
      await g.migrateVolume('plain', { storageClass: 'secret-one' })
      assert.equal((await g.getVolume('plain')).encrypted, true)
      await churn(g, 'plain', 30)
      // A clone of a volume whose generations resumed past its reservation at this open.
      await write(g, 'src', 5, 40)
      await g.createSnapshot('src', 'base')
      await g.cloneVolume({ volume: 'src', snapshot: 'base' }, 'copy')
      model.set('copy', [...(model.get('src') as Uint8Array[])])
      await churn(g, 'copy', 50)
      // Restores: into a new volume, and over an existing encrypted one.
      await g.restoreBackup(backup.id, { name: 'restored', target: backups })
      assert.equal((await g.getVolume('restored')).encrypted, true)
      model.set('restored', [block(20), block(21), block(22)])
      await churn(g, 'restored', 60)
      await g.createVolume({ name: 'over', sizeBytes: 8 * BS, storageClass: 'secret-one' })
      model.set('over', [])
      await churn(g, 'over', 70)
      await g.restoreBackup(backup.id, { volume: 'over', target: backups })
      model.set('over', [block(20), block(21), block(22)])
      await churn(g, 'over', 80)
      await check(g, 'before the reopen')
      await g.close()

      g = await open()
      try {
        for (const [name, seed] of [['plain', 100], ['src', 110], ['copy', 120], ['restored', 130], ['over', 140]] as const) await after(g, name, seed)
        await check(g, 'after the reopen')
      } finally {
        await g.close()
      }
      const seen = new Map<string, number>()
      for (const p of puts) {
        if (!sealed(p.data) || p.address.gen === 0) continue
        const key = `${p.address.volume}/${p.address.index}@${p.address.gen}`
        seen.set(key, (seen.get(key) ?? 0) + 1)
      }
      assert.ok(seen.size > 40, `${seen.size} sealed versions recorded`)
      assert.deepEqual([...seen].filter(([, n]) => n > 1), [], '(storage/block@generation) sealed more than once')
    })
  })
}
