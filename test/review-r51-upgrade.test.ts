// Upgrade and generation reservations: a storage an earlier release wrote has key records without
// `sealedGenerationsBelow`, so its volumes' generations resume at open where the stored versions
// show. Once open in this release, a block's generation must never be taken again, also when the
// first thing done is a trim of the newest versions (no seal, so no reservation is made) and the
// storage is reopened: the sealed bytes of the trimmed version (still in the old segment or table
// file) must then fail authentication in place of the block's next version, never be returned.
// Real fixtures of earlier releases (test/h57-upgrade.test.ts), file and level.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { GalleonFS, WriteConcern, type BlockAddress, type BlockStore } from '../src/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { LevelBlockStore } from '../backends/level/index.js'
import { BLOCK_FLAG_ENCRYPTED, decodeBlock, encodeBlock } from '../src/engine/codec.js'
import type { H57Expected } from './support/h57-make-fixture.js'

const BS = 4096
const VOLUME = 'secure2' // encrypted, 16 blocks, no snapshots (so a trim leaves nothing of a block)
const fixturesDir = join(fileURLToPath(new URL('.', import.meta.url)), 'fixtures')
const dirs: string[] = []
after(async () => { await Promise.all(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true }))) })

/** The fixture's storage path and open options. */
async function unpack (archive: string): Promise<{ storagePath: string, passphrase?: string, backend: 'file' | 'level' }> {
  const into = await mkdtemp(join(tmpdir(), 'galleon-r51-upgrade-'))
  dirs.push(into)
  await promisify(execFile)('tar', ['-xzf', join(fixturesDir, archive), '-C', into])
  const top = archive.replace(/\.tar\.gz$/, '')
  const expected = JSON.parse(await readFile(join(into, top, 'expected.json'), 'utf8')) as H57Expected
  return { storagePath: join(into, top, 'storage'), backend: expected.backend as 'file' | 'level', ...(expected.passphrase === null ? {} : { passphrase: expected.passphrase }) }
}

/** The storage's block store, recording the addresses read and the values put. */
function tapped (storagePath: string, backend: 'file' | 'level'): { store: BlockStore, gets: BlockAddress[], puts: Array<{ address: BlockAddress, data: Uint8Array }> } {
  const inner: BlockStore = backend === 'file' ? new FileBlockStore({ location: join(storagePath, 'blocks') }) : new LevelBlockStore({ location: join(storagePath, 'blocks-level') })
  const gets: BlockAddress[] = []
  const puts: Array<{ address: BlockAddress, data: Uint8Array }> = []
  const store = new Proxy(inner, {
    get (target, prop) {
      if (prop === 'get') return async (address: BlockAddress, options?: object) => { gets.push({ ...address }); return await target.get(address, options) }
      if (prop === 'getMany') return undefined
      if (prop === 'batch') {
        return async (ops: Parameters<BlockStore['batch']>[0], options?: { sync?: boolean }) => {
          for (const op of ops) if (op.type === 'put') puts.push({ address: { ...op.address }, data: Uint8Array.from(op.data) })
          await target.batch(ops, options)
        }
      }
      const value = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  return { store, gets, puts }
}

for (const archive of ['storage-45cc743-file.tar.gz', 'storage-45cc743-level.tar.gz', 'storage-4e601f2-file.tar.gz']) {
  describe(`review r51: generations of an encrypted volume upgraded from ${archive}`, () => {
    it('a trim of its newest versions, first thing after the upgrade, then a reopen: the next writes of the block take generations past them', async () => {
      const { storagePath, backend, passphrase } = await unpack(archive)
      const options = { storagePath, ...(passphrase === undefined ? {} : { passphrase }) }
      // First open in this release: find the volume's newest version (the highest generation read), keep its sealed bytes, trim the volume.
      let tap = tapped(storagePath, backend)
      let g = await GalleonFS.open({ ...options, blockStore: tap.store })
      let newest: { address: BlockAddress, value: Uint8Array, plain: Uint8Array }
      try {
        const blocks = (await g.getVolume(VOLUME)).sizeBytes / BS
        const plains: Uint8Array[] = []
        for (let i = 0; i < blocks; i++) plains.push(await g.readBlock(VOLUME, i))
        const read = tap.gets.filter((a) => a.gen > 0)
        assert.ok(read.length > 0, 'the fixture volume has stored blocks')
        const address = read.reduce((a, b) => (b.gen > a.gen ? b : a))
        const value = await tap.store.get(address) as Uint8Array
        newest = { address, value: Uint8Array.from(value), plain: plains[address.index] as Uint8Array }
        await g.trim(VOLUME, 0, blocks * BS)
      } finally {
        await g.close()
      }
      // Reopened: the block is written again until its generation reaches the trimmed one's (or passes it at once).
      tap = tapped(storagePath, backend)
      g = await GalleonFS.open({ ...options, blockStore: tap.store })
      try {
        const mismatches: string[] = []
        g.on('checksum:mismatch', (event) => mismatches.push(event.reason))
        const fresh = new Uint8Array(BS).fill(0x5a)
        let address: BlockAddress
        const taken: number[] = []
        do {
          await g.writeBlock(VOLUME, newest.address.index, fresh, WriteConcern.WriteDurable)
          address = (tap.puts.filter((p) => p.address.volume === newest.address.volume && p.address.index === newest.address.index).at(-1) as { address: BlockAddress }).address
          taken.push(address.gen)
        } while (address.gen < newest.address.gen && taken.length < 10_000)
        // The trimmed version's sealed bytes stored as the block's newest version (its checksum made right for the new address).
        const decoded = decodeBlock({ ...address, gen: newest.address.gen }, newest.value)
        assert.ok(decoded.ok, 'the kept value is a valid stored block')
        await tap.store.batch([{ type: 'put', address, data: Uint8Array.from(encodeBlock(address, decoded.payload, decoded.payload.byteLength, BLOCK_FLAG_ENCRYPTED)) }], { sync: true })
        const outcome = await g.readBlock(VOLUME, newest.address.index).then((bytes) => Buffer.compare(bytes, newest.plain) === 0 ? 'the trimmed version\'s data' : 'other data', (err: { code?: string }) => err.code)
        assert.equal(outcome, 'DECRYPTION_FAILED', `block ${newest.address.index}'s trimmed version had generation ${newest.address.gen}; after the reopen its writes took generations ${taken.length > 3 ? `${taken[0] as number}..${taken.at(-1) as number}` : taken.join(', ')}, and the trimmed version put back in place of the last one read as ${outcome}`)
        assert.ok(mismatches.length > 0, 'no checksum:mismatch event')
      } finally {
        await g.close()
      }
    })
  })
}
