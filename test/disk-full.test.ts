// A full disk under a real file system: a small tmpfs is mounted (root only; skipped otherwise),
// filled through GalleonFS, then grown. Writes must fail with NO_SPACE, never lose what was
// acknowledged, and the storage must reopen and take writes again once there is room.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern, isGalleonError } from '../src/index.js'
import { bytesOf } from './conformance/fixtures.js'

/** Mounts a tmpfs of `size` at `dir`; returns why not when that is impossible here. */
function tryMount (dir: string, size: string): string | undefined {
  if (process.getuid?.() !== 0) return 'mounting a small tmpfs needs root'
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' })
    return undefined
  } catch (err) {
    return `cannot mount a tmpfs here: ${(err as Error).message.split('\n')[0] ?? ''}`
  }
}

for (const backend of ['file', 'level'] as const) {
  describe(`a full disk (${backend} backend)`, () => {
    let dir = ''
    let skip: string | undefined
    before(async () => {
      dir = await mkdtemp(join(tmpdir(), `galleon-full-${backend}-`))
      skip = tryMount(dir, '6m')
    })
    after(async () => {
      if (skip === undefined) execFileSync('umount', [dir], { stdio: 'pipe' })
      await rm(dir, { recursive: true, force: true })
    })

    it('fails writes with NO_SPACE, keeps every acknowledged write, and works again once there is room', async (t) => {
      if (skip !== undefined) { t.skip(skip); return }
      const storagePath = join(dir, 'store')
      let g = await GalleonFS.open({ storagePath, backend })
      const acknowledged = new Map<number, Uint8Array>()
      let failure: unknown
      try {
        const vol = await g.createVolume({ name: 'big', sizeBytes: '64M' })
        for (let index = 0; index < 16384; index++) {
          const data = bytesOf(4096, index)
          try {
            await g.writeBlock(vol, index, data, WriteConcern.WriteDurable)
          } catch (err) {
            failure = err
            break
          }
          acknowledged.set(index, data)
        }
        assert.ok(isGalleonError(failure, 'NO_SPACE'), `expected NO_SPACE, got ${String(failure)}`)
        assert.match((failure as Error).message, /full|space/i)
        assert.ok(acknowledged.size > 100, `only ${acknowledged.size} writes fit`)
        // The process keeps running and what was acknowledged still reads back.
        for (const [index, data] of acknowledged) assert.deepEqual(await g.readBlock('big', index), data, `block ${index}`)
      } finally {
        await g.close().catch(() => {}) // closing may need space too; reopening must cope either way
      }

      execFileSync('mount', ['-o', 'remount,size=64m', dir], { stdio: 'pipe' })
      g = await GalleonFS.open({ storagePath, backend })
      try {
        for (const [index, data] of acknowledged) assert.deepEqual(await g.readBlock('big', index), data, `block ${index} after reopen`)
        const next = acknowledged.size + 10
        await g.writeBlock('big', next, bytesOf(4096, 1e6), WriteConcern.WriteDurable)
        assert.deepEqual(await g.readBlock('big', next), bytesOf(4096, 1e6))
        assert.equal((await g.scrub('big')).badBlocks.length, 0)
      } finally {
        await g.close()
      }
    })
  })
}
