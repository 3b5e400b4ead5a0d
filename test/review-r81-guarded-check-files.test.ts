// Review r81 of h89 (7c82f97): scrub asks the block store to check its files (the optional
// BlockStore.checkFiles). A store open() puts behind its guard (any store GalleonFS did not make
// itself, a subclass of FileBlockStore too, see 114e256) must still be asked: the guard passes the
// call on, and what a user's store answers is checked like its other answers (IO_ERROR naming the
// contract, not a TypeError out of scrub).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readdir, rm, unlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MemoryLevel } from 'memory-level'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { MemoryBlockStore } from '../backends/memory/index.js'
import type { BlockStoreFileProblem } from '../src/drivers.js'

const BLOCK = 4096

/** A file store with an application's own touch (here: none), which open() guards as the application's code. */
class AppFileStore extends FileBlockStore {}

/** A memory store whose file check answers what `answer` gives. */
class CheckingStore extends MemoryBlockStore {
  readonly #answer: () => unknown
  constructor (answer: () => unknown) {
    super()
    this.#answer = answer
  }

  async checkFiles (): Promise<readonly BlockStoreFileProblem[]> {
    return this.#answer() as readonly BlockStoreFileProblem[]
  }
}

describe('review r81: scrub through the guard around a store open() did not make', () => {
  it('a FileBlockStore subclass: a segment file removed while open is reported, with its blocks', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'galleonfs-r81-guard-'))
    try {
      const location = join(dir, 'blocks')
      const g = await GalleonFS.open({ metadata: new MemoryLevel() as never, blockStore: new AppFileStore({ location, segmentBytes: 64 * 1024, spareSegments: 0 }) })
      try {
        await g.createVolume({ name: 'a', sizeBytes: 32 * BLOCK })
        for (const round of [1, 2]) for (let i = 0; i < 32; i++) await g.writeBlock('a', i, new Uint8Array(BLOCK).fill(round), WriteConcern.WriteDurable)
        assert.deepEqual((await g.scrub('a')).storeProblems ?? [], [], 'nothing to report before')
        const segments = (await readdir(location)).filter((name) => /^seg-.*\.log$/.test(name)).sort()
        const victim = segments[segments.length - 2] as string
        await unlink(join(location, victim))
        const report = await g.scrub('a')
        const about = (report.storeProblems ?? []).filter((p) => p.file === join(location, victim))
        assert.equal(about.length, 1, `the removed segment file is reported: ${JSON.stringify(report)}`)
        assert.ok(report.badBlocks.length > 0, 'its blocks are bad')
      } finally {
        await g.close()
      }
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('a store whose checkFiles() breaks its contract: scrub fails with IO_ERROR naming it, and its problems pass through when well formed', async () => {
    let answer: unknown = [{ file: 42 }]
    const g = await GalleonFS.open({ metadata: new MemoryLevel() as never, blockStore: new CheckingStore(() => answer) })
    try {
      await g.createVolume({ name: 'v', sizeBytes: 8 * BLOCK })
      await g.writeBlock('v', 0, new Uint8Array(BLOCK).fill(1))
      await assert.rejects(g.scrub('v'), (err: { code?: string, message?: string }) => {
        assert.equal(err.code, 'IO_ERROR', String(err.message))
        assert.match(String(err.message), /broke the BlockStore contract: checkFiles\(\)/)
        return true
      })
      answer = 'nonsense'
      await assert.rejects(g.scrub('v'), (err: { code?: string }) => err.code === 'IO_ERROR')
      answer = [{ file: '/x/seg', code: 'CORRUPTION', message: 'gone', blocks: [] }]
      assert.deepEqual((await g.scrub('v')).storeProblems, [{ file: '/x/seg', code: 'CORRUPTION', message: 'gone' }])
    } finally {
      await g.close()
    }
  })
})
