// A name or id that is looked up and not found, or an unknown option's key, is quoted in the error
// whole when it is short, and cut to its start and its length when it is huge: a 16 KB bad name
// made a 16 KB message (and so a 16 KB log line, HTTP answer and audit entry).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS } from '../src/index.js'
import { rejectsWithCode } from './support/assertions.js'

const HUGE = 'x'.repeat(16384)

describe('error messages quote what was not found', () => {
  it('whole when short, cut with its length when huge', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      const message = async (call: Promise<unknown>, code: string): Promise<string> => {
        let caught: unknown
        await assert.rejects(call, (err: unknown) => { caught = err; return rejectsWithCode(code as 'VOLUME_NOT_FOUND')(err) })
        return (caught as Error).message
      }
      const short = await message(g.getVolume('missing-volume'), 'VOLUME_NOT_FOUND')
      assert.match(short, /"missing-volume"/)
      // Each call starts when its turn comes: started together, a later one could reject while an
      // earlier one is awaited, which node:test reports as an unhandled rejection.
      for (const [call, code] of [
        [() => g.getVolume(HUGE), 'VOLUME_NOT_FOUND'],
        [() => g.writeBlock(HUGE, 0, new Uint8Array(4096), 'WriteAcknowledged'), 'VOLUME_NOT_FOUND'],
        [() => g.getSnapshot('v', HUGE), 'SNAPSHOT_NOT_FOUND'],
        [() => g.createVolume({ name: 'w', sizeBytes: '1M', storageClass: HUGE }), 'STORAGE_CLASS_NOT_FOUND'],
        // Unknown options and mount names quote the caller's key the same way.
        [() => g.createVolume({ name: 'w', sizeBytes: '1M', [HUGE]: 1 } as never), 'INVALID_ARGUMENT'],
        [() => g.createAccessPolicy({ name: 'p', principals: ['*'], verbs: ['volume:read'], [HUGE]: 1 } as never), 'INVALID_ARGUMENT'],
        [() => g.mounts.unmountVolume(HUGE), 'INVALID_ARGUMENT']
      ] as Array<[() => Promise<unknown>, string]>) {
        const text = await message(call(), code)
        assert.ok(text.length < 600, `${code}: a ${text.length}-character message`)
        assert.match(text, /\(16384 characters\)/, code)
        assert.ok(text.includes('"' + 'x'.repeat(64) + '"'), `${code} keeps the name's start`)
      }
      assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['v'], 'nothing was created')
    } finally {
      await g.close()
    }
  })
})

describe('a volume size that lost its unit', () => {
  it('is refused naming the units (a size below one block was most likely meant in G or M); a size merely off the block size is not', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await assert.rejects(g.createVolume({ name: 'a', sizeBytes: 10 }), (err: Error & { code?: string }) =>
        err.code === 'INVALID_ARGUMENT' && err.message.includes('try 4096') && err.message.includes('for 10 GiB write "10G"'))
      await assert.rejects(g.createVolume({ name: 'b', sizeBytes: '10' }), (err: Error & { code?: string }) =>
        err.code === 'INVALID_ARGUMENT' && err.message.includes('"10G"'))
      await assert.rejects(g.createVolume({ name: 'c', sizeBytes: 4097 }), (err: Error & { code?: string }) =>
        err.code === 'INVALID_ARGUMENT' && err.message.includes('try 8192') && !err.message.includes('without a unit'))
      assert.deepEqual(await g.listVolumes(), [])
    } finally {
      await g.close()
    }
  })

  it('a size given with its unit is not said to lack one ("2K" is not "2048 GiB" gone wrong)', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      const message = async (call: Promise<unknown>): Promise<string> => {
        let caught: unknown
        await assert.rejects(call, (err: unknown) => { caught = err; return rejectsWithCode('INVALID_ARGUMENT')(err) })
        return (caught as Error).message
      }
      for (const size of ['2K', '0.5K', '2KiB']) {
        const text = await message(g.createVolume({ name: 'a', sizeBytes: size }))
        assert.ok(text.includes('try 4096') && !text.includes('without a unit'), `createVolume ${size}: ${text}`)
      }
      await g.createVolume({ name: 'b', sizeBytes: '8K' })
      const expanded = await message(g.expandVolume('b', '10K'))
      assert.ok(expanded.includes('try 12288') && !expanded.includes('without a unit'), `expandVolume 10K: ${expanded}`)
      // Without a unit the hint stays, in a string as in a number.
      assert.ok((await message(g.createVolume({ name: 'c', sizeBytes: '2048B' }))).includes('for 2048 GiB write "2048G"'))
      assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['b'])
    } finally {
      await g.close()
    }
  })
})
