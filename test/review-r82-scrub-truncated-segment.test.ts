// Review r82 of bd15145 (scrub's file check reads a segment's written bytes before the file's size,
// and waits until list writes are quiet): a segment file truly cut short from outside is still
// reported, also while another volume is written meanwhile (segments roll, compaction runs).

import { it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readdir, rm, stat, truncate } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'

const BLOCK = 4096
const BLOCKS = 256

it('a sealed segment file cut short from outside is reported by scrub while another volume is being written', async () => {
  const storagePath = await mkdtemp(join(tmpdir(), 'galleon-r82-scrub-cut-'))
  const g = await GalleonFS.open({ storagePath, backend: 'file', backendOptions: { segmentBytes: 256 * 1024 } })
  try {
    await g.createVolume({ name: 'v', sizeBytes: BLOCKS * BLOCK })
    await g.createVolume({ name: 'busy', sizeBytes: BLOCKS * BLOCK })
    // In pieces: a segment rolls between batches.
    for (let at = 0; at < BLOCKS * BLOCK; at += 64 * 1024) await g.write('v', at, new Uint8Array(64 * 1024).fill(7), WriteConcern.WriteDurable)
    const blocks = join(storagePath, 'blocks')
    const segments = (await readdir(blocks)).filter((name) => /^seg-.*\.log$/.test(name)).sort()
    assert.ok(segments.length >= 3, `the writes filled ${segments.length} segments`)
    // The oldest segment: sealed, and holding blocks of v only (busy is not written yet).
    const victim = join(blocks, segments[0] as string)
    const size = (await stat(victim)).size
    let writing = true
    const writer = (async () => {
      const data = new Uint8Array(64 * 1024).fill(9)
      for (let i = 0; writing; i++) {
        await Promise.all([0, 1, 2, 3].map(async (k) => { await g.write('busy', ((i * 4 + k) % (BLOCKS / 16)) * 64 * 1024, data, WriteConcern.WriteAcknowledged) }))
      }
    })()
    try {
      await truncate(victim, Math.floor(size / 2))
      for (let round = 0; round < 5; round++) {
        const report = await g.scrub('v')
        const found = report.storeProblems.filter((problem) => problem.file === victim)
        assert.equal(found.length, 1, `scrub round ${round}: the cut segment is reported: ${JSON.stringify(report.storeProblems)}`)
        assert.equal(found[0]?.code, 'CORRUPTION')
        assert.match(found[0]?.message ?? '', /shorter than the \d+ bytes of records the store wrote to it/)
        assert.ok(report.badBlocks.length > 0, `scrub round ${round}: v's blocks past the cut are bad`)
        const busy = await g.scrub('busy')
        assert.deepEqual(busy.badBlocks, [], `scrub round ${round}: the volume being written has no bad blocks`)
      }
    } finally {
      writing = false
      await writer
    }
  } finally {
    await g.close()
    await rm(storagePath, { recursive: true, force: true })
  }
})
