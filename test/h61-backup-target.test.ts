// h61 security audit, the backup target as someone who can write to it sees it: real backups in a
// real directory target, whose manifests are then altered (the checksum recomputed, as anyone can
// for a plain volume's backup) to point outside the target, at impossible places, or at another
// volume. listBackups and restoreBackup must refuse them with a GalleonError, before they create or
// change a volume, and never read or write outside the target and the volume restored into.

import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { GalleonError, GalleonFS } from '../src/index.js'

const BLOCK = 4096
let root: string
let g: GalleonFS
let target: string
let backupId: string
let original: { manifest: Record<string, any> }
let chunk: string

/** Block i of the source volume holds the byte i + 1. */
const pattern = (blocks: number): Uint8Array => {
  const data = new Uint8Array(blocks * BLOCK)
  for (let i = 0; i < blocks; i++) data.fill(i + 1, i * BLOCK, (i + 1) * BLOCK)
  return data
}

const manifestFile = (id: string): string => join(target, 'manifests', `${id}.json`)

/** Rewrites backup `id`'s manifest as `change` makes it, with a valid checksum (the tag, if any, kept). */
async function tamper (id: string, change: (manifest: Record<string, any>) => void, from = original): Promise<void> {
  const file = structuredClone(from) as Record<string, any>
  change(file.manifest)
  const body = JSON.stringify(file.manifest)
  file.checksum = createHash('sha256').update(body).digest('hex')
  await writeFile(manifestFile(id), JSON.stringify(file))
}

/** Restores `id` into a new volume; the volumes created on the way (by event) and the outcome. */
async function restore (id: string): Promise<{ created: string[], outcome: unknown }> {
  const created: string[] = []
  const listener = (volume: { name: string }): void => { created.push(volume.name) }
  g.on('volume:created', listener)
  try {
    const outcome = await g.restoreBackup(id, { name: `r-${Math.random().toString(36).slice(2, 8)}`, target } as never).then((volume) => volume, (err: unknown) => err)
    return { created, outcome }
  } finally {
    g.off('volume:created', listener)
  }
}

const volumeNames = async (): Promise<string[]> => (await g.listVolumes()).map((volume) => volume.name).sort()

/** A refusal: a GalleonError with `code` (not a TypeError, not a success). */
function assertRefused (outcome: unknown, code: string | readonly string[], what: string): void {
  assert.ok(outcome instanceof GalleonError, `${what}: expected a GalleonError ${String(code)}, got ${outcome instanceof Error ? `${outcome.constructor.name}: ${outcome.message}` : 'a restored volume'}`)
  assert.ok((typeof code === 'string' ? [code] : code).includes(outcome.code), `${what}: ${outcome.code} ${outcome.message}`)
}

describe('h61 backup target: altered manifests', () => {
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'h61-backup-'))
    target = join(root, 'target')
    g = await GalleonFS.open({ inMemory: true })
    await g.createVolume({ name: 'v', sizeBytes: 1 << 20, storageClass: 'fast-local-ssd' })
    await g.write('v', 0, pattern(4))
    backupId = (await g.createBackup('v', { strategy: 'full', target } as never)).id
    original = JSON.parse(await readFile(manifestFile(backupId), 'utf8')) as typeof original
    chunk = original.manifest.extents[0][2] as string
    assert.deepEqual(original.manifest.extents, [[0, 4, chunk, 0]])
  })
  after(async () => {
    await g.close()
    await rm(root, { recursive: true, force: true })
  })

  it('held: a chunk id with path separators, a base or a backup id with "..", and a manifest stored under another id are refused; nothing is left behind', async () => {
    const before = await volumeNames()
    await tamper(backupId, (m) => { m.extents = [[0, 1, '../../../../../../etc/passwd', 0]] })
    // (INVALID_ARGUMENT from the target's chunk id check; CORRUPTION where the manifest is checked first.)
    assertRefused((await restore(backupId)).outcome, ['INVALID_ARGUMENT', 'CORRUPTION'], 'chunk id with path separators')
    await tamper(backupId, (m) => { m.base = '../../../etc/passwd' })
    assertRefused((await restore(backupId)).outcome, 'INVALID_ARGUMENT', 'base with ..')
    await assert.rejects(g.restoreBackup('../manifests/x', { target } as never), (err: unknown) => err instanceof GalleonError && err.code === 'INVALID_ARGUMENT')
    await tamper(backupId, (m) => { m.id = '00000000-0000-4000-8000-000000000000' })
    assertRefused((await restore(backupId)).outcome, 'CORRUPTION', 'manifest of another id')
    assert.deepEqual(await volumeNames(), before, 'no volume left behind')
    await writeFile(manifestFile(backupId), JSON.stringify(original))
  })

  it('held: an encrypted volume\'s manifest made to claim another encrypted volume fails its tag; nothing is restored', async () => {
    await g.createVolume({ name: 'sec-a', sizeBytes: 1 << 20, storageClass: 'encrypted-storage', replicas: 1 } as never)
    const other = await g.createVolume({ name: 'sec-b', sizeBytes: 1 << 20, storageClass: 'encrypted-storage', replicas: 1 } as never)
    await g.write('sec-a', 0, pattern(2))
    const id = (await g.createBackup('sec-a', { strategy: 'full', target } as never)).id
    const file = JSON.parse(await readFile(manifestFile(id), 'utf8')) as typeof original
    assert.equal(typeof (file as Record<string, unknown>).tag, 'string')
    const before = await volumeNames()
    await tamper(id, (m) => { m.volume.id = other.id; m.volume.name = 'sec-b' }, file)
    const { created, outcome } = await restore(id)
    assertRefused(outcome, 'DECRYPTION_FAILED', 'manifest claiming another volume')
    assert.deepEqual(created, [])
    assert.deepEqual(await volumeNames(), before)
    await writeFile(manifestFile(id), JSON.stringify(file))
  })

  // Defect: nothing checks an extent's chunk offset. restore.ts guards only its upper end
  // ((offset + count) * blockSize > data.byteLength), and Uint8Array.subarray counts a negative
  // start from the end: offset -2 restores the chunk's block 2 into block 0 and reports success.
  it('a negative or fractional chunk offset in an extent is refused with CORRUPTION, nothing created', async () => {
    for (const offset of [-2, 0.5]) {
      await tamper(backupId, (m) => { m.extents = [[0, 1, chunk, offset]] })
      const { created, outcome } = await restore(backupId)
      if (!(outcome instanceof Error)) {
        const restored = await g.read((outcome as { id: string }).id, 0, BLOCK)
        await g.deleteVolume((outcome as { id: string }).id, { force: true })
        assert.fail(`offset ${offset}: restored, and block 0 holds ${restored[0]}, ${restored[BLOCK - 1]} (the backup held 1 there): bytes from another place of the chunk`)
      }
      assertRefused(outcome, 'CORRUPTION', `offset ${offset}`)
      assert.deepEqual(created, [], `offset ${offset}: no volume created`)
    }
    await writeFile(manifestFile(backupId), JSON.stringify(original))
  })

  // Defect: extents are acted on before anything checks they fit the volume: a run past its end is
  // expanded block by block into a Map (count 2^40 would not end, or exhaust memory, before any
  // check), and a volume is created before the write past the end fails (OUT_OF_RANGE, which does
  // not say the manifest was altered).
  it('an extent past the volume\'s end (a huge count, or an index beyond it) is refused with CORRUPTION before a volume is created', async () => {
    for (const extent of [[0, 1_000_000, chunk, 0], [100_000, 1, chunk, 0]]) {
      await tamper(backupId, (m) => { m.extents = [extent] })
      const { created, outcome } = await restore(backupId)
      assertRefused(outcome, 'CORRUPTION', `extent ${JSON.stringify(extent)}`)
      assert.deepEqual(created, [], `extent ${JSON.stringify(extent)}: refused only after creating a volume`)
    }
    await writeFile(manifestFile(backupId), JSON.stringify(original))
  })

  // Defect: restore.ts expands every extent block by block into a Map before anything else, also a
  // run of zeros: a manifest claiming a 1 PiB volume with one zero run over all of it (2^38 blocks)
  // took 9 s and 2 GB of memory here, then failed with a RangeError (Map maximum size exceeded),
  // no GalleonError. A zero run needs no entry per block (nothing is written for zeros).
  it('a zero run over 2^38 blocks of a volume claimed to be 1 PiB takes no step per block (a GalleonError or a restore, never a RangeError)', async () => {
    await tamper(backupId, (m) => { m.volume.sizeBytes = 2 ** 50; m.extents = [[0, 2 ** 38, null, 0]] })
    const { outcome } = await restore(backupId)
    assert.ok(outcome instanceof GalleonError || !(outcome instanceof Error), `got ${(outcome as Error).constructor?.name}: ${(outcome as Error).message}`)
    if (!(outcome instanceof Error)) await g.deleteVolume((outcome as { id: string }).id, { force: true })
    await writeFile(manifestFile(backupId), JSON.stringify(original))
  })

  // Defect: decodeManifest checks kind, format, checksum and id, not the shape. A manifest whose
  // extents are no list, or that has no volume or stats, throws TypeError in restore (the daemon's
  // 500 INTERNAL), and in listBackups (toBackup reads manifest.volume.id and manifest.stats.blocks),
  // so one planted file hides every backup on the target.
  it('a manifest of the wrong shape is refused with CORRUPTION, and listBackups still lists the other backups', async () => {
    const good = (await g.createBackup('v', { strategy: 'full', target } as never)).id
    for (const [what, change] of [
      ['extents not a list', (m: Record<string, any>) => { m.extents = 5 }],
      ['an extent not a list', (m: Record<string, any>) => { m.extents = [5] }],
      ['no volume', (m: Record<string, any>) => { delete m.volume }],
      ['no stats', (m: Record<string, any>) => { delete m.stats }],
      ['createdAt not a string', (m: Record<string, any>) => { m.createdAt = 5 }]
    ] as const) {
      await tamper(backupId, change)
      const listed = await g.listBackups(undefined, { target } as never).then((backups) => backups.map((b) => b.id), (err: Error) => err)
      assert.ok(Array.isArray(listed), `${what}: listBackups failed (${(listed as Error).constructor?.name}: ${(listed as Error).message})`)
      assert.ok(listed.includes(good), `${what}: the intact backup is listed`)
      const { created, outcome } = await restore(backupId)
      assertRefused(outcome, 'CORRUPTION', what)
      assert.deepEqual(created, [], `${what}: no volume created`)
    }
    await writeFile(manifestFile(backupId), JSON.stringify(original))
  })
})
