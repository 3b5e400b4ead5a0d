// Review r60: a segment file of the `file` store that is gone from `blocks/` (no crash does that:
// compaction deletes a segment only once its live records are copied and synced) was not noticed.
// Open succeeded, scrub checked only the blocks it still knew of, and every block whose newest
// version was in that file read as an older version or as zeros: silent wrong data (here blocks
// 13-27 of 32 read their previous contents, and scrub reported 0 bad blocks). The store now keeps a
// segment list (blocks/SEGMENTS, see backends/file/segment-list.ts) and open refuses with CORRUPTION
// naming the missing file. test/file-segment-list.test.ts checks the store itself.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readdir, rm, unlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'

describe('review r60: a missing segment file', () => {
  it('is reported (CORRUPTION at open naming the segment), not read as older data', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'galleon-r60-missing-'))
    const options = { storagePath: dir, backend: 'file', backendOptions: { segmentBytes: 64 * 1024, spareSegments: 0 } } as const
    try {
      const g = await GalleonFS.open(options)
      await g.createVolume({ name: 'a', sizeBytes: '1M' })
      for (const fill of [1, 2]) {
        for (let i = 0; i < 32; i++) await g.writeBlock('a', i, new Uint8Array(4096).fill(fill), WriteConcern.WriteDurable)
        await g.createSnapshot('a', `after-${fill}`)
      }
      await g.close()
      const segments = (await readdir(join(dir, 'blocks'))).filter((name) => /^seg-.*\.log$/.test(name)).sort()
      const victim = segments[segments.length - 2] as string
      await unlink(join(dir, 'blocks', victim))
      await rm(join(dir, 'blocks', victim.replace(/-[0-9a-f]{8}\.log$/, '.hint')), { force: true })
      let reopened: GalleonFS | undefined
      try {
        reopened = await GalleonFS.open(options)
        const scrub = await reopened.scrub('a')
        const live = await reopened.read('a', 0, 32 * 4096)
        const stale = Array.from({ length: 32 }, (_, i) => i).filter((i) => live[i * 4096] !== 2)
        assert.fail(`open succeeded with ${victim} gone; scrub found ${scrub.badBlocks.length} bad blocks; blocks reading older data or zeros: ${stale.join(',')}`)
      } catch (err) {
        assert.equal((err as { code?: string }).code, 'CORRUPTION', String(err))
        assert.match((err as Error).message, new RegExp(victim.replace(/\./g, '\\.')))
      } finally {
        await reopened?.close()
      }
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
