// Review r24 of a505eaa: once a write to the `level` block store failed on a full disk, the write
// latch refuses every later one until the instance is reopened (README, "A full disk"), saying so.
// The level store rewrapped every such refusal (and the first failure) as "free space, then retry
// the write": an operator who freed space and retried got the same advice again, forever. A small
// tmpfs is mounted (root only; skipped otherwise), filled through GalleonFS, then grown.

import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { resizeTmpfs, tmpfs, unmountAll } from './support/tmpfs.js'
import { GalleonFS, WriteConcern, isGalleonError } from '../src/index.js'
import { bytesOf } from './conformance/fixtures.js'

/** What a NO_SPACE of a store that takes no writes until reopened must tell the user. */
const SAYS_REOPEN = /reopen|close and open/i

describe('review r24: a full disk under the level store', () => {
  let dir = ''
  let skip: string | undefined
  before(async () => {
    const mounted = await tmpfs('6m', 'galleon-r24-level-full-')
    if ('skip' in mounted) skip = mounted.skip
    else dir = mounted.dir
  })
  after(unmountAll)

  it('says to reopen the instance, at the failure and at every refused retry once there is room', async (t) => {
    if (skip !== undefined) { t.skip(skip); return }
    const storagePath = join(dir, 'store')
    let g = await GalleonFS.open({ storagePath, backend: 'level' })
    let next = 0
    try {
      const vol = await g.createVolume({ name: 'big', sizeBytes: '64M' })
      let failure: unknown
      for (; next < 16384; next++) {
        try {
          await g.writeBlock(vol, next, bytesOf(4096, next), WriteConcern.WriteDurable)
        } catch (err) {
          failure = err
          break
        }
      }
      assert.ok(isGalleonError(failure, 'NO_SPACE'), `expected NO_SPACE, got ${String(failure)}`)
      assert.match((failure as Error).message, SAYS_REOPEN, 'the failure does not say the instance must be reopened')
      // Room again, without a reopen: the store still refuses (the latch), and says what to do.
      resizeTmpfs(dir, '64m')
      const retry = await g.writeBlock(vol, next, bytesOf(4096, next), WriteConcern.WriteDurable).then(() => undefined, (err: unknown) => err)
      assert.ok(isGalleonError(retry, 'NO_SPACE'), `expected the retry to be refused with NO_SPACE, got ${String(retry)}`)
      assert.match((retry as Error).message, SAYS_REOPEN, `the refusal of a retry with room again does not say to reopen: ${(retry as Error).message}`)
    } finally {
      await g.close().catch(() => {})
    }
    // Doing what it says works.
    g = await GalleonFS.open({ storagePath, backend: 'level' })
    try {
      await g.writeBlock('big', next, bytesOf(4096, 1e6), WriteConcern.WriteDurable)
      assert.deepEqual(await g.readBlock('big', next), bytesOf(4096, 1e6))
      assert.deepEqual(await g.readBlock('big', 0), bytesOf(4096, 0))
    } finally {
      await g.close()
    }
  })
})
