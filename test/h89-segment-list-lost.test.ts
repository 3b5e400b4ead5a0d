// h89: a file store whose segment list (blocks/SEGMENTS) is deleted together with a segment file
// looked like a store of a release from before lists, and opened on the files left, its blocks in
// the lost file reading older versions. The metadata now records that the storage keeps a list, and
// open refuses one without it (CORRUPTION naming the list and the way out); storage really made by
// an earlier release (test/fixtures) still opens and gets its list, and is protected from then on.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, readdir, rm, unlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { SEGMENT_LIST_NAME, readSegmentList } from '../backends/file/segment-list.js'

const BLOCK = 4096
const BLOCKS = 32
const BACKEND = { backend: 'file', backendOptions: { segmentBytes: 64 * 1024, spareSegments: 0 } } as const

async function segmentNames (blocks: string): Promise<string[]> {
  return (await readdir(blocks)).filter((name) => /^seg-.*\.log$/.test(name)).sort()
}

/** Writes two rounds of every block (fill 1, then 2) durably, so older versions lie in earlier segments. */
async function fill (storagePath: string, volume: string): Promise<void> {
  const g = await GalleonFS.open({ storagePath, ...BACKEND })
  try {
    if (!(await g.listVolumes()).some((v) => v.name === volume)) await g.createVolume({ name: volume, sizeBytes: BLOCKS * BLOCK })
    for (const round of [1, 2]) {
      for (let i = 0; i < BLOCKS; i++) await g.writeBlock(volume, i, new Uint8Array(BLOCK).fill(round), WriteConcern.WriteDurable)
    }
  } finally {
    await g.close()
  }
}

/** Deletes the list and the newest sealed segment (and its hint), as a bad copy or a hand might. */
async function loseListAndSegment (blocks: string): Promise<string> {
  const segments = await segmentNames(blocks)
  assert.ok(segments.length >= 3, `the writes filled ${segments.length} segments`)
  const victim = segments[segments.length - 2] as string
  await unlink(join(blocks, victim))
  await rm(join(blocks, victim.replace(/-[0-9a-f]{8}\.log$/, '.hint')), { force: true })
  await unlink(join(blocks, SEGMENT_LIST_NAME))
  return victim
}

/** Opens; fails the test (saying what reads stale) if that succeeds; returns the refusal. */
async function openRefused (storagePath: string, volume: string, victim: string): Promise<Error & { code?: string }> {
  let g: GalleonFS | undefined
  try {
    g = await GalleonFS.open({ storagePath, ...BACKEND })
  } catch (err) {
    return err as Error & { code?: string }
  }
  try {
    const data = await g.read(volume, 0, BLOCKS * BLOCK)
    const stale = Array.from({ length: BLOCKS }, (_, i) => i).filter((i) => data[i * BLOCK] !== 2)
    const scrub = await g.scrub(volume)
    assert.fail(`open succeeded with ${victim} and ${SEGMENT_LIST_NAME} gone; scrub found ${scrub.badBlocks.length} bad blocks; blocks reading older data or zeros: ${stale.join(',')}`)
  } finally {
    await g.close()
  }
}

async function assertRefusal (blocks: string, err: Error & { code?: string }): Promise<void> {
  assert.equal(err.code, 'CORRUPTION', String(err))
  const listPath = join(blocks, SEGMENT_LIST_NAME)
  assert.ok(err.message.includes(listPath), `the message names the list: ${err.message}`)
  assert.ok(err.message.includes(`echo rebuild > ${listPath}`), `the message says how to open anyway: ${err.message}`)
  assert.match(err.message, /restore the volumes from a backup/)
}

describe('h89: a segment list deleted together with a segment file', () => {
  it('is refused at open (CORRUPTION naming the list, nothing changed); writing rebuild into its place opens on the files left and lists them', async () => {
    const storagePath = await mkdtemp(join(tmpdir(), 'galleonfs-h89-lost-'))
    const blocks = join(storagePath, 'blocks')
    try {
      await fill(storagePath, 'a')
      const victim = await loseListAndSegment(blocks)
      const before = (await readdir(blocks)).sort()
      await assertRefusal(blocks, await openRefused(storagePath, 'a', victim))
      assert.deepEqual((await readdir(blocks)).sort(), before, 'a refused open changes no file')
      // Opening anyway, as the message says.
      await writeFile(join(blocks, SEGMENT_LIST_NAME), 'rebuild\n')
      const g = await GalleonFS.open({ storagePath, ...BACKEND })
      await g.close()
      const list = await readSegmentList(blocks)
      assert.deepEqual(list.kind === 'listed' ? list.names : list, await segmentNames(blocks), 'a new list names the files present')
    } finally {
      await rm(storagePath, { recursive: true, force: true })
    }
  })

  it('a storage of a release from before lists (fixture 7b1a549) opens and gets its list; lost later with a segment, it is refused', async () => {
    const root = await mkdtemp(join(tmpdir(), 'galleonfs-h89-fixture-'))
    try {
      const fixtures = join(fileURLToPath(new URL('.', import.meta.url)), 'fixtures')
      await promisify(execFile)('tar', ['-xzf', join(fixtures, 'storage-7b1a549-file.tar.gz'), '-C', root])
      const storagePath = join(root, 'storage-7b1a549-file', 'storage')
      const blocks = join(storagePath, 'blocks')
      assert.equal((await readSegmentList(blocks)).kind, 'absent', 'the fixture has no list')
      await fill(storagePath, 'h89')
      assert.equal((await readSegmentList(blocks)).kind, 'listed', 'the first open wrote the list')
      const victim = await loseListAndSegment(blocks)
      await assertRefusal(blocks, await openRefused(storagePath, 'h89', victim))
    } finally {
      await rm(root, { recursive: true, force: true })
    }
  })
})

describe('h89: scrub checks the segment list against the directory', () => {
  it('reports a listed segment file removed while open (its blocks as bad), a segment file not listed, and a list removed while open', async () => {
    const storagePath = await mkdtemp(join(tmpdir(), 'galleonfs-h89-scrub-'))
    const blocks = join(storagePath, 'blocks')
    try {
      await fill(storagePath, 'a')
      const g = await GalleonFS.open({ storagePath, ...BACKEND })
      try {
        const clean = await g.scrub('a')
        assert.deepEqual([clean.badBlocks, clean.storeProblems ?? []], [[], []], 'nothing to report before')
        const segments = await segmentNames(blocks)
        const victim = segments[segments.length - 2] as string
        await unlink(join(blocks, victim))
        // A segment file of an id the store does not use, as a stray copy would leave.
        const stray = victim.replace(/^seg-[0-9a-f]{16}/, 'seg-00000000000000f0')
        await writeFile(join(blocks, stray), '')
        await unlink(join(blocks, SEGMENT_LIST_NAME))
        const report = await g.scrub('a')
        const problems = report.storeProblems ?? []
        const about = (name: string): string[] => problems.filter((p) => p.file === join(blocks, name)).map((p) => `${p.code} ${p.message}`)
        assert.equal(about(victim).length, 1, `the removed segment file is reported: ${JSON.stringify(report)}`)
        assert.match(about(victim)[0] as string, /^CORRUPTION .*is gone/)
        assert.equal(about(stray).length, 1, `the unlisted file is reported: ${JSON.stringify(problems)}`)
        assert.match(about(stray)[0] as string, /not in its segment list/)
        assert.equal(about(SEGMENT_LIST_NAME).length, 1, `the removed list is reported: ${JSON.stringify(problems)}`)
        // The removed file held the newest version of some blocks: they are bad, the others not.
        const bad = report.badBlocks.map((b) => b.index)
        assert.ok(bad.length > 0 && bad.length < BLOCKS, `some blocks are reported bad: ${bad.join(',')}`)
        for (const b of report.badBlocks) assert.equal(b.code, 'CORRUPTION')
      } finally {
        await g.close()
      }
    } finally {
      await rm(storagePath, { recursive: true, force: true })
    }
  })
})
