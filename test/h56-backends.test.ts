// README "Backends": the directory layout open() makes for each backend, the file store's files
// (LOCK, CLEAN, segments, hints) as named there, and its bound on disk use under random overwrites.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { withTempDir } from './support/temp-dir.js'
import { GalleonFS, WriteConcern, isGalleonError, registerDriver, unregisterDriver } from '../src/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { addr, bytesOf, put } from './conformance/fixtures.js'
import { until } from './support/wait.js'

async function withDir<T> (task: (dir: string) => Promise<T>): Promise<T> {
  return await withTempDir('h56-backends-', task)
}

async function bytesOnDisk (dir: string): Promise<number> {
  let total = 0
  // Files come and go under compaction: one gone between the listing and the stat counts nothing.
  for (const name of await readdir(dir)) total += (await stat(join(dir, name)).catch(() => ({ size: 0 }))).size
  return total
}

describe('README Backends', () => {
  it('open() lays storage out as the table says: metadata/ and blocks/ (file), blocks-level/ (level), a registered store beside metadata/', async () => {
    await withDir(async (dir) => {
      const onFile = join(dir, 'file')
      let g = await GalleonFS.open({ storagePath: onFile })
      assert.equal(g.backend, 'file')
      await g.writeBlock(await g.createVolume({ name: 'v', sizeBytes: '1M' }), 0, new Uint8Array(4096).fill(1), WriteConcern.WriteDurable)
      const lock = await readFile(join(onFile, 'blocks', 'LOCK'), 'utf8')
      assert.match(lock, new RegExp(`^${process.pid}\\b`), `the LOCK file names this process first: ${lock}`)
      await assert.rejects(GalleonFS.open({ storagePath: onFile }), (err: unknown) => isGalleonError(err, 'BUSY'))
      await g.close()
      assert.ok((await readdir(join(onFile, 'metadata'))).includes('CURRENT'), 'classic-level in <storagePath>/metadata')
      const blocks = await readdir(join(onFile, 'blocks'))
      assert.ok(blocks.some((name) => /^seg-[0-9a-f]{16}(-[0-9a-f]{8})?\.log$/.test(name)), blocks.join(' '))
      assert.ok(blocks.includes('CLEAN'), `close() leaves a CLEAN marker: ${blocks.join(' ')}`)
      assert.ok(!blocks.includes('LOCK'), 'close() releases the LOCK')
      g = await GalleonFS.open({ storagePath: onFile })
      assert.ok(!(await readdir(join(onFile, 'blocks'))).includes('CLEAN'), 'the marker is removed at the next open')
      await g.close()

      const onLevel = join(dir, 'level')
      g = await GalleonFS.open({ storagePath: onLevel, backend: 'level' })
      assert.equal(g.backend, 'level')
      await g.writeBlock(await g.createVolume({ name: 'v', sizeBytes: '1M' }), 0, new Uint8Array(4096).fill(1), WriteConcern.WriteDurable)
      await g.close()
      const levelDirs = await readdir(onLevel)
      assert.ok(levelDirs.includes('metadata') && levelDirs.includes('blocks-level') && !levelDirs.includes('blocks'), levelDirs.join(' '))

      registerDriver<'blockStore', { location: string }>({ kind: 'blockStore', name: 'h56-elsewhere', options: { location: { type: 'string', required: true } }, create: (options) => new FileBlockStore({ location: options.location }) })
      try {
        const registered = join(dir, 'registered')
        g = await GalleonFS.open({ storagePath: registered, backend: 'h56-elsewhere', backendOptions: { location: join(dir, 'registered-blocks') } })
        await g.writeBlock(await g.createVolume({ name: 'v', sizeBytes: '1M' }), 0, new Uint8Array(4096).fill(1), WriteConcern.WriteDurable)
        await g.close()
        assert.ok((await readdir(join(registered, 'metadata'))).includes('CURRENT'), 'classic-level in <storagePath>/metadata')
        assert.ok((await readdir(join(dir, 'registered-blocks'))).some((name) => name.endsWith('.log')))
      } finally {
        unregisterDriver('blockStore', 'h56-elsewhere')
      }
    })
  })

  // "At 64 MiB a segment is sealed ... and gets a hint file, seg-<id>.hint" and "Expect up to about
  // 2.5 times the live data on disk under heavy random overwrites" (compactionThreshold 0.4). Small
  // segments, so that many are sealed and compacted; the bound allows the active segment besides.
  it('sealed segments get seg-<id>.hint files, and random overwrites keep the files under 2.5 times the live data (plus the active segment)', async () => {
    await withDir(async (dir) => {
      const segmentBytes = 1 << 20
      const store = new FileBlockStore({ location: dir, segmentBytes })
      await store.open()
      try {
        const BLOCKS = 2048
        const data = bytesOf(4096, 1)
        for (let i = 0; i < BLOCKS; i += 64) await store.batch(Array.from({ length: 64 }, (_, j) => put(addr(1, i + j), data)))
        // Hint files are written in the background after a seal: waited for, not raced.
        let names: string[] = []
        await until('a hint per sealed segment', async () => {
          names = await readdir(dir)
          const segments = names.filter((name) => /^seg-[0-9a-f]{16}(-[0-9a-f]{8})?\.log$/.test(name))
          const hints = names.filter((name) => /^seg-[0-9a-f]{16}\.hint$/.test(name))
          return segments.length >= 8 && hints.length >= segments.length - 1
        }, 20_000).catch(() => {})
        const segments = names.filter((name) => /^seg-[0-9a-f]{16}(-[0-9a-f]{8})?\.log$/.test(name))
        assert.ok(segments.length >= 8, `8 MiB in 1 MiB segments: ${names.join(' ')}`)
        const hints = names.filter((name) => /^seg-[0-9a-f]{16}\.hint$/.test(name))
        assert.ok(hints.length >= segments.length - 1, `a hint per sealed segment: ${names.join(' ')}`)
        let state = 12345
        let worst = 0
        for (let round = 0; round < 1024; round++) {
          const ops = []
          for (let j = 0; j < 16; j++) {
            state = (Math.imul(state, 1103515245) + 12345) >>> 0
            ops.push(put(addr(1, state % BLOCKS), data))
          }
          await store.batch(ops, { sync: round % 8 === 0 })
          if (round % 16 === 15) {
            const { liveBytes } = await store.stats()
            worst = Math.max(worst, ((await bytesOnDisk(dir)) - segmentBytes) / liveBytes)
          }
        }
        assert.ok(worst <= 2.5, `the files held ${worst.toFixed(2)} times the live data besides the active segment`)
      } finally {
        await store.close()
      }
    })
  })
})
