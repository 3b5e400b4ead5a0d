// Review r72: the file store checks onBackgroundError when it is constructed, as it checks its
// other options, rather than finding out at the first background error.

import { it } from 'node:test'
import assert from 'node:assert/strict'
import { FileBlockStore, type FileBlockStoreOptions } from '../backends/file/index.js'

it('review r72: a FileBlockStore refuses an onBackgroundError that is not a function', () => {
  for (const handler of ['console.error', null, 42, { log: true }]) {
    assert.throws(() => new FileBlockStore({ location: '/nonexistent/r72', onBackgroundError: handler } as unknown as FileBlockStoreOptions), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'INVALID_ARGUMENT', `${String(handler)}: ${err.message}`)
      assert.match(err.message, /onBackgroundError must be a function/)
      return true
    })
  }
  assert.doesNotThrow(() => new FileBlockStore({ location: '/nonexistent/r72', onBackgroundError: () => {} }))
})
