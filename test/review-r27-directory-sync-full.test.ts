// Review r27 of cfeb35f (src/level-directory-sync.ts): every failure of the directory check now
// stops the writes as EIO, except EIO and ENOSPC, which pass as they are. A full disk (ENOSPC) or
// quota (EDQUOT, wrapped as EIO with the quota error as its cause) on the directory's fsync must
// still be a full disk to the write latch and to the catalog (NO_SPACE), not an I/O error. The
// directory's fsync is made to fail by wrapping node:fs/promises open (syncBuiltinESMExports).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire, syncBuiltinESMExports } from 'node:module'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MemoryLevel } from 'memory-level'
import { isNoSpaceError } from '../src/abstract-block-store.js'

const require = createRequire(import.meta.url)
const fsp = require('node:fs/promises') as Record<string, (...args: unknown[]) => Promise<any>>
const realOpen = fsp.open as (...args: unknown[]) => Promise<{ sync: () => Promise<void>, close: () => Promise<void> }>
let watched = ''
let syncFailure: Error | undefined
fsp.open = async (...args: unknown[]) => {
  const handle = await realOpen(...args)
  if (args[0] !== watched || syncFailure === undefined) return handle
  const failure = syncFailure
  return new Proxy(handle, {
    get: (target, key) => {
      if (key === 'sync') return async () => { throw failure }
      const value = Reflect.get(target, key) as unknown
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
}
syncBuiltinESMExports()

const { syncLevelDirectoryOnSyncedWrites } = await import('../src/level-directory-sync.js')
const { latchLevelWrites } = await import('../src/level-write-latch.js')

describe('review r27: a full disk on the level directory\'s fsync', () => {
  for (const [code, errno, text] of [['ENOSPC', -28, 'no space left on device'], ['EDQUOT', -122, 'disk quota exceeded']] as const) {
    it(`${code} on the directory fsync is a full disk to the latch (NO_SPACE after), not an I/O error`, async () => {
      const dir = await mkdtemp(join(tmpdir(), 'r27-dirsync-'))
      const db = new MemoryLevel<string, string>()
      try {
        watched = dir
        await db.open()
        syncLevelDirectoryOnSyncedWrites(db, dir)
        latchLevelWrites(db, 'the test database')
        syncFailure = Object.assign(new Error(`${code}: ${text}, fsync`), { code, errno, syscall: 'fsync' })
        await assert.rejects(db.put('a', '1', { sync: true } as never), (err: Error & { code?: string }) => {
          assert.ok(isNoSpaceError(err), `the failing write's error is not a full disk to the catalog's mapping: ${err.code} ${err.message}`)
          return true
        })
        syncFailure = undefined
        await assert.rejects(db.put('b', '2', { sync: true } as never), { code: 'NO_SPACE' })
      } finally {
        syncFailure = undefined
        await db.close()
        await rm(dir, { recursive: true, force: true })
      }
    })
  }
})
