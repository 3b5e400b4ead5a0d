// Review r25 of cf0c554 (h61's fixes): what the manifest shape check still lets through that a
// restore, a backup or a deletion acts on; backups written by the first backup build (extents
// without an offset); the zero runs restore now marks without a step per block (real backups with
// zero runs longer than the blocks collected so far, over chunks of earlier steps, into a new and
// into an existing volume); and names of Object.prototype members as pool label keys and as the
// name of a custom block store.

import assert from 'node:assert/strict'
import { createHash, randomUUID } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { GalleonError, GalleonFS, registerDriver, unregisterDriver } from '../src/index.js'
import { FileBlockStore } from '../backends/file/index.js'

const BLOCK = 4096

/** `blocks` blocks, block i filled with byte `seed + i` (never 0). */
const pattern = (blocks: number, seed: number): Uint8Array => {
  const data = new Uint8Array(blocks * BLOCK)
  for (let i = 0; i < blocks; i++) data.fill(((seed + i) % 255) + 1, i * BLOCK, (i + 1) * BLOCK)
  return data
}

const digest = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex')

/** A GalleonError with `code`, not a TypeError and not a success. */
function assertRefused (outcome: unknown, code: string, what: string): void {
  assert.ok(outcome instanceof GalleonError, `${what}: expected GalleonError ${code}, got ${outcome instanceof Error ? `${outcome.constructor.name}: ${outcome.message}` : String(outcome)}`)
  assert.equal(outcome.code, code, `${what}: ${outcome.message}`)
}

describe('review r25: manifests altered on a plain volume\'s target', () => {
  let root: string
  let target: string
  let g: GalleonFS
  let real: { checksum: string, manifest: Record<string, any> }
  let realId: string

  const manifestFile = (id: string): string => join(target, 'manifests', `${id}.json`)
  /** Stores `manifest` under its id with a valid checksum (anyone who can write to the target can). */
  async function plant (manifest: Record<string, any>): Promise<void> {
    const body = JSON.stringify(manifest)
    await writeFile(manifestFile(manifest.id as string), JSON.stringify({ checksum: createHash('sha256').update(body).digest('hex'), manifest }))
  }

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'review-r25-'))
    target = join(root, 'target')
    g = await GalleonFS.open({ inMemory: true })
    await g.createVolume({ name: 'v', sizeBytes: 1 << 20, storageClass: 'fast-local-ssd' })
    await g.write('v', 0, pattern(4, 0))
    realId = (await g.createBackup('v', { strategy: 'full', target } as never)).id
    real = JSON.parse(await readFile(manifestFile(realId), 'utf8')) as typeof real
  })
  after(async () => {
    await g.close()
    await rm(root, { recursive: true, force: true })
  })

  it('"encryption": null is refused as CORRUPTION (it reached backupChunkKeys, which threw a TypeError)', async () => {
    const id = randomUUID()
    await plant({ ...real.manifest, id, encryption: null })
    const outcome = await g.restoreBackup(id, { name: 'r-null-encryption', target } as never).then(() => 'restored', (err: unknown) => err)
    assertRefused(outcome, 'CORRUPTION', 'restoreBackup of a manifest with encryption null')
    assert.ok(!(await g.listVolumes()).some((volume) => volume.name === 'r-null-encryption'))
    // The genuine backup is still listed, and the altered one is not.
    const listed = (await g.listBackups(undefined, { target })).map((backup) => backup.id)
    assert.ok(listed.includes(realId))
    assert.ok(!listed.includes(id))
  })

  it('extents out of order or overlapping are refused (a backup writes them ascending and disjoint; overlapping zero runs made restore hold the event loop for entries x runs)', async () => {
    const chunk = real.manifest.extents[0][2] as string
    const overlapping = randomUUID()
    await plant({ ...real.manifest, id: overlapping, extents: [[0, 4, chunk, 0], [0, 200, null, 0], [0, 200, null, 0]] })
    assertRefused(await g.getBackup(overlapping, { target }).then(() => 'read', (err: unknown) => err), 'CORRUPTION', 'overlapping extents')
    const backwards = randomUUID()
    await plant({ ...real.manifest, id: backwards, extents: [[2, 2, chunk, 2], [0, 2, chunk, 0]] })
    assertRefused(await g.getBackup(backwards, { target }).then(() => 'read', (err: unknown) => err), 'CORRUPTION', 'extents in descending order')
    // The genuine one still reads.
    assert.equal((await g.getBackup(realId, { target })).id, realId)
  })

  it('a manifest naming another snapshot of the volume does not make createBackup or deleteBackup delete it', async () => {
    const keep = await g.createSnapshot('v', 'keep-me')
    const forged = randomUUID()
    // Older than every real backup: the next full backup frees the snapshots of older backups.
    await plant({ ...real.manifest, id: forged, createdAt: '2000-01-01T00:00:00.000Z', snapshot: { id: keep.id, name: `backup-${forged}` } })
    await g.createBackup('v', { strategy: 'full', target } as never)
    assert.ok((await g.listSnapshots('v')).some((snapshot) => snapshot.id === keep.id), 'createBackup deleted snapshot keep-me, named by an altered manifest')
    await g.deleteBackup(forged, { target, chunkGraceSeconds: 0 } as never)
    assert.ok((await g.listSnapshots('v')).some((snapshot) => snapshot.id === keep.id), 'deleteBackup deleted snapshot keep-me, named by an altered manifest')
  })
})

describe('review r25: backups of the first backup build (extents [index, blocks, chunk], no offset)', () => {
  it('are listed and restored with the data they hold (the chunk holds the run from its first block)', async () => {
    const root = await mkdtemp(join(tmpdir(), 'review-r25-old-'))
    const target = join(root, 'target')
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'v', sizeBytes: 1 << 20 })
      const data = pattern(4, 7)
      await g.write('v', 8 * BLOCK, data)
      const id = (await g.createBackup('v', { strategy: 'full', target } as never)).id
      const file = join(target, 'manifests', `${id}.json`)
      const stored = JSON.parse(await readFile(file, 'utf8')) as { checksum: string, manifest: Record<string, any> }
      assert.deepEqual(stored.manifest.extents.map((extent: unknown[]) => extent.length), [4])
      // What 57fd70a..2159ae4 (2026-11-29) wrote: one chunk per run, held from its first block.
      stored.manifest.extents = stored.manifest.extents.map(([index, blocks, chunk, offset]: [number, number, string, number]) => {
        assert.equal(offset, 0)
        return [index, blocks, chunk]
      })
      const body = JSON.stringify(stored.manifest)
      await writeFile(file, JSON.stringify({ checksum: createHash('sha256').update(body).digest('hex'), manifest: stored.manifest }))
      assert.ok((await g.listBackups(undefined, { target })).some((backup) => backup.id === id), 'listBackups hides the backup')
      const restored = await g.restoreBackup(id, { name: 'old-format', target } as never)
      assert.equal(digest(await g.read(restored, 8 * BLOCK, 4 * BLOCK)), digest(data))
      assert.equal(digest(await g.read(restored, 0, 8 * BLOCK)), digest(new Uint8Array(8 * BLOCK)))
    } finally {
      await g.close()
      await rm(root, { recursive: true, force: true })
    }
  })
})

describe('review r25: restore with zero runs longer than the blocks collected so far', () => {
  it('full, incremental and differential chains restore the exact image, into new volumes and over an existing one', async () => {
    const root = await mkdtemp(join(tmpdir(), 'review-r25-zero-'))
    const target = join(root, 'target')
    const g = await GalleonFS.open({ inMemory: true })
    try {
      const size = 256 * BLOCK
      await g.createVolume({ name: 'v', sizeBytes: size })
      // Full: data in blocks 0..9, explicit zeros in 12..99: a zero run of 88 blocks (runs split at
      // the gap, and zero detection is per run), more than the 10 collected before it.
      await g.write('v', 0, pattern(10, 1))
      await g.write('v', 12 * BLOCK, new Uint8Array(88 * BLOCK))
      const full = await g.createBackup('v', { strategy: 'full', target } as never)
      const images: Array<{ id: string, image: string }> = [{ id: full.id, image: digest(await g.read('v', 0, size)) }]
      // Incremental 1: zeros over 0..199, a run over the full's data blocks and far past them, and
      // data at 210..212 apart from it.
      await g.write('v', 0, new Uint8Array(200 * BLOCK))
      await g.write('v', 210 * BLOCK, pattern(3, 40))
      const inc1 = await g.createBackup('v', { strategy: 'incremental', target } as never)
      images.push({ id: inc1.id, image: digest(await g.read('v', 0, size)) })
      // Incremental 2: data into the middle of incremental 1's zero run, and a trim of 150..199.
      await g.write('v', 50 * BLOCK, pattern(3, 90))
      await g.trim('v', 150 * BLOCK, 50 * BLOCK)
      const inc2 = await g.createBackup('v', { strategy: 'incremental', target } as never)
      images.push({ id: inc2.id, image: digest(await g.read('v', 0, size)) })
      // Differential on the full: everything since it.
      await g.write('v', 120 * BLOCK, pattern(2, 120))
      const diff = await g.createBackup('v', { strategy: 'differential', target } as never)
      assert.equal(diff.baseId, full.id)
      images.push({ id: diff.id, image: digest(await g.read('v', 0, size)) })
      const extentsOf = async (id: string): Promise<Array<[number, number, string | null, number]>> => (JSON.parse(await readFile(join(target, 'manifests', `${id}.json`), 'utf8')) as { manifest: { extents: Array<[number, number, string | null, number]> } }).manifest.extents
      const zeroRuns = async (id: string): Promise<number[][]> => (await extentsOf(id)).filter(([, , chunk]) => chunk === null).map(([index, blocks]) => [index, blocks])
      // The runs that take restore's new branch (longer than the entries collected before them).
      assert.deepEqual(await zeroRuns(full.id), [[12, 88]])
      assert.deepEqual(await zeroRuns(inc1.id), [[0, 200]])
      assert.deepEqual(await zeroRuns(inc2.id), [[150, 50]])

      await g.createVolume({ name: 'existing', sizeBytes: size })
      for (const [n, { id, image }] of images.entries()) {
        const restored = await g.restoreBackup(id, { name: `new-${n}`, target } as never)
        assert.equal(digest(await g.read(restored, 0, size)), image, `backup ${n} restored into a new volume`)
        await g.write('existing', 0, pattern(256, 200 + n)) // old contents everywhere
        await g.restoreBackup(id, { volume: 'existing', target } as never)
        assert.equal(digest(await g.read('existing', 0, size)), image, `backup ${n} restored over an existing volume`)
      }
    } finally {
      await g.close()
      await rm(root, { recursive: true, force: true })
    }
  })
})

describe('review r25: Object.prototype member names as user keys', () => {
  it('a pool whose node selector has a label key "constructor" or "toString" takes volumes', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      for (const key of ['disk', 'constructor', 'toString']) {
        const pool = `p-${key.toLowerCase()}`
        await g.createPool({ name: pool, capacityBytes: '1G', nodeSelector: { labels: { [key]: 'ssd' } } })
        const volume = await g.createVolume({ name: `v-${key.toLowerCase()}`, sizeBytes: '1M', pool })
        assert.equal(volume.pool, pool)
      }
    } finally {
      await g.close()
    }
  })

  it('a custom block store registered as "constructor" or "toString" opens on a storage path', async () => {
    const root = await mkdtemp(join(tmpdir(), 'review-r25-driver-'))
    try {
      for (const name of ['constructor', 'toString']) {
        registerDriver({ kind: 'blockStore', name, create: (_options: object, context: { storagePath?: string }) => new FileBlockStore({ location: join(context.storagePath as string, `custom-${name}`) }) } as never)
        try {
          const g = await GalleonFS.open({ storagePath: join(root, name), backend: name })
          try {
            await g.createVolume({ name: 'v', sizeBytes: '64K' })
            await g.writeBlock('v', 0, new Uint8Array(BLOCK).fill(3))
          } finally {
            await g.close()
          }
          const again = await GalleonFS.open({ storagePath: join(root, name), backend: name })
          try {
            assert.equal((await again.readBlock('v', 0))[0], 3)
          } finally {
            await again.close()
          }
        } finally {
          unregisterDriver('blockStore', name)
        }
      }
    } finally {
      await rm(root, { recursive: true, force: true })
    }
  })
})
