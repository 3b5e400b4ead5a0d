// Review r22 of h59's index of clones by source (Catalog #clones): every path that sets or removes a
// volume record keeps it right (create, flatten at a forced snapshot deletion, a forced deletion of
// the source, a clone of a clone, a reopen), with the clones listed in the order they were made.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { withTempDir } from './support/temp-dir.js'

const BLOCK = 4096
const fill = (byte: number): Uint8Array => new Uint8Array(BLOCK).fill(byte)

/** Each snapshot's clones by name, as listSnapshots reports them (ids mapped to volume names). */
async function clonesBySnapshot (g: GalleonFS, vol: string, sorted = false): Promise<Record<string, string[]>> {
  const names = new Map((await g.listVolumes()).map((v) => [v.id, v.name]))
  const out: Record<string, string[]> = {}
  for (const s of await g.listSnapshots(vol)) {
    const clones = s.clones.map((id) => names.get(id) ?? id)
    out[s.name] = sorted ? clones.sort() : clones
  }
  return out
}

describe('review r22: the catalog\'s index of clones by source', () => {
  it('follows creates, flattening, forced deletions and clones of clones, and survives a reopen', async () => {
    await withTempDir('r22-clones-', async (dir) => {
      const storagePath = join(dir, 'storage')
      let g = await GalleonFS.open({ storagePath })
      try {
        await g.createVolume({ name: 'db', sizeBytes: 8 * BLOCK })
        await g.writeBlock('db', 0, fill(1))
        await g.createSnapshot('db', 's1')
        await g.writeBlock('db', 0, fill(2))
        await g.createSnapshot('db', 's2')
        // Names out of alphabetical and id order: the lists keep the order of creation.
        for (const [name, snapshot] of [['zeta', 's1'], ['alpha', 's1'], ['mid', 's2'], ['beta', 's1']] as const) await g.cloneVolume({ volume: 'db', snapshot }, name)
        await g.cloneVolume('alpha', 'alpha-child')
        assert.deepEqual(await clonesBySnapshot(g, 'db'), { s1: ['zeta', 'alpha', 'beta'], s2: ['mid'] })
        await assert.rejects(g.deleteVolume('db'), { code: 'BUSY' })
        await assert.rejects(g.deleteVolume('alpha'), { code: 'BUSY' }, 'alpha has a clone of its own')

        await g.close()
        g = await GalleonFS.open({ storagePath })
        // After a reopen the clones come in the order of their records in the metadata database (by
        // id), as the scan before h59 gave them too: the same sets are compared.
        assert.deepEqual(await clonesBySnapshot(g, 'db', true), { s1: ['alpha', 'beta', 'zeta'], s2: ['mid'] }, 'after a reopen')
        await assert.rejects(g.deleteVolume('alpha'), { code: 'BUSY' })

        // A forced snapshot deletion flattens its clones: they leave the index.
        await g.deleteSnapshot('db', 's2', { force: true })
        assert.deepEqual(await clonesBySnapshot(g, 'db', true), { s1: ['alpha', 'beta', 'zeta'] })
        assert.deepEqual(await g.readBlock('mid', 0), fill(2))
        await g.deleteVolume('mid')

        // Deleting a clone takes it out; another made afterwards goes last.
        await g.deleteVolume('zeta')
        await g.cloneVolume({ volume: 'db', snapshot: 's1' }, 'late')
        const after = (await clonesBySnapshot(g, 'db')).s1 ?? []
        assert.deepEqual([...after].sort(), ['alpha', 'beta', 'late'])
        assert.equal(after.at(-1), 'late', 'a clone made after the reopen comes last')

        // The source deleted first (forced): its clones get their own data and no longer read from it.
        await g.deleteVolume('db', { force: true })
        for (const name of ['alpha', 'beta', 'late', 'alpha-child']) assert.deepEqual(await g.readBlock(name, 0), fill(1), name)
        await g.deleteVolume('beta')
        await assert.rejects(g.deleteVolume('alpha'), { code: 'BUSY' }, 'alpha still has its clone')
        // A new volume of the old name has no clones.
        await g.createVolume({ name: 'db', sizeBytes: 8 * BLOCK })
        await g.createSnapshot('db', 's1')
        assert.deepEqual(await clonesBySnapshot(g, 'db'), { s1: [] })
        await g.deleteVolume('db')

        await g.close()
        g = await GalleonFS.open({ storagePath })
        await assert.rejects(g.deleteVolume('alpha'), { code: 'BUSY' })
        await g.deleteVolume('alpha-child')
        await g.deleteVolume('alpha')
        assert.deepEqual((await g.listVolumes()).map((v) => v.name).sort(), ['late'])
        assert.deepEqual(await g.readBlock('late', 0), fill(1))
      } finally {
        await g.close()
      }
    })
  })
})
