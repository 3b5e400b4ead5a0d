// Review r60: the options arguments of the snapshot and clone calls (and deleteVolume's, which
// forces the same copies) are checked as createVolume's are. A misspelt or mistyped option was
// ignored, so the call did something else than asked, silently: listChangedBlocks with
// { form: 's1' } or 's1' listed every block holding data instead of the changes since s1 (what
// an incremental backup would copy), and { force: 'true' } was refused telling the caller to
// pass { force: true }.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS } from '../src/index.js'
import { expectCode } from './support/assertions.js'

async function fixture (): Promise<GalleonFS> {
  const g = await GalleonFS.open({ inMemory: true })
  await g.createVolume({ name: 'a', sizeBytes: '1M' })
  await g.writeBlock('a', 0, new Uint8Array(4096).fill(1))
  await g.createSnapshot('a', 's1')
  await g.writeBlock('a', 3, new Uint8Array(4096).fill(2))
  await g.cloneVolume({ volume: 'a', snapshot: 's1' }, 'c')
  return g
}

describe('review r60: options of the snapshot and clone calls', () => {
  it('listChangedBlocks refuses options that are not { from?, to? } instead of listing every block', async () => {
    const g = await fixture()
    try {
      assert.deepEqual(await g.listChangedBlocks('a', { from: 's1' }), [3])
      await expectCode(g.listChangedBlocks('a', 's1' as never), 'INVALID_ARGUMENT', 'listChangedBlocks')
      await expectCode(g.listChangedBlocks('a', { form: 's1' } as never), 'INVALID_ARGUMENT', '"form"')
      await expectCode(g.listChangedBlocks('a', null as never), 'INVALID_ARGUMENT')
      // Left out, and undefined values, are as before.
      assert.deepEqual(await g.listChangedBlocks('a'), [0, 3])
      assert.deepEqual(await g.listChangedBlocks('a', { from: 's1', to: undefined }), [3])
    } finally {
      await g.close()
    }
  })

  it('deleteSnapshot and deleteVolume refuse a force that is not a boolean and unknown options, changing nothing', async () => {
    const g = await fixture()
    try {
      await expectCode(g.deleteSnapshot('a', 's1', { force: 'true' } as never), 'INVALID_ARGUMENT', 'force')
      await expectCode(g.deleteSnapshot('a', 's1', { forced: true } as never), 'INVALID_ARGUMENT', '"forced"')
      await expectCode(g.deleteSnapshot('a', 's1', 'force' as never), 'INVALID_ARGUMENT')
      await expectCode(g.deleteVolume('a', { forse: true } as never), 'INVALID_ARGUMENT', '"forse"')
      await expectCode(g.deleteVolume('a', { force: 1 } as never), 'INVALID_ARGUMENT', 'force')
      assert.deepEqual((await g.listSnapshots('a')).map((s) => s.name), ['s1'])
      assert.deepEqual((await g.listVolumes()).map((v) => v.name).sort(), ['a', 'c'])
      // The right spellings still work.
      await g.deleteSnapshot('a', 's1', { force: true })
      await g.deleteVolume('c', { force: false })
      assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['a'])
    } finally {
      await g.close()
    }
  })

  it('cloneVolume refuses unknown options and creates nothing', async () => {
    const g = await fixture()
    try {
      await expectCode(g.cloneVolume('a', 'd', { label: { app: 'x' } } as never), 'INVALID_ARGUMENT', '"label"')
      await expectCode(g.cloneVolume('a', 'd', 'labels' as never), 'INVALID_ARGUMENT')
      assert.deepEqual((await g.listVolumes()).map((v) => v.name).sort(), ['a', 'c'])
      assert.equal((await g.listSnapshots('a')).length, 1, 'no implicit snapshot is left behind')
      const made = await g.cloneVolume('a', 'd', { labels: { app: 'x' } })
      assert.deepEqual(made.labels, { app: 'x' })
    } finally {
      await g.close()
    }
  })
})
