// A block's generation is authenticated data of its sealed value, so that an older sealed version
// put back in place of a newer one fails. That holds only if a generation is never taken twice for
// the same block under the same key: not after a clean reopen, and not after a SIGKILL, also when
// every version the block had was deleted (a trim), so that nothing in the store shows how far the
// generations went. Here an attacker who kept the sealed bytes of a block's first version (as a
// log-structured store still holds them after the trim) puts them back in place of the block's
// next version: the read must fail with DECRYPTION_FAILED and an event, never return the old data.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS, WriteConcern, type BlockAddress } from '../../src/index.js'
import { BLOCK_FLAG_ENCRYPTED, decodeBlock, encodeBlock } from '../../src/engine/codec.js'
import { OLD_TEXT, VOLUME, filled, openStore } from './encryption-generations-child.js'
import { killAfterReady } from './support.js'

const CHILD = fileURLToPath(new URL('./encryption-generations-child.ts', import.meta.url))
const NEW_TEXT = 'NEW-CURRENT-DATA'

/**
 * Writes block 0 again, then stores `old` (an earlier sealed value of block 0, at generation
 * `oldGen`) as that new version, its checksum recomputed for the new address (as anyone who can
 * write the storage path can): only the authentication tag stands in the way.
 */
async function replayOver (storagePath: string, backend: 'file' | 'level', oldGen: number, old: Uint8Array): Promise<void> {
  const { store, puts } = openStore(storagePath, backend)
  const g = await GalleonFS.open({ storagePath, blockStore: store })
  try {
    const mismatches: string[] = []
    g.on('checksum:mismatch', (event) => mismatches.push(event.reason))
    await g.writeBlock(VOLUME, 0, filled(NEW_TEXT), WriteConcern.WriteDurable)
    const newer = (puts[puts.length - 1] as { address: BlockAddress }).address
    assert.equal(newer.index, 0)
    const decoded = decodeBlock({ ...newer, gen: oldGen }, old)
    assert.ok(decoded.ok, 'the kept value is a valid stored block')
    await store.batch([{ type: 'put', address: newer, data: Uint8Array.from(encodeBlock(newer, decoded.payload, decoded.payload.byteLength, BLOCK_FLAG_ENCRYPTED)) }], { sync: true })
    let read: string | undefined
    const outcome = await g.readBlock(VOLUME, 0).then((bytes) => { read = Buffer.from(bytes.subarray(0, 16)).toString(); return 'returned data' }, (err: { code?: string }) => err.code)
    assert.equal(outcome, 'DECRYPTION_FAILED', `the replayed version (generation ${oldGen}, the new one's is ${newer.gen}) was ${outcome === 'returned data' ? `returned as the block's data: "${read}"` : `refused with ${String(outcome)}`}`)
    assert.ok(mismatches.length > 0, 'no checksum:mismatch event')
  } finally {
    await g.close()
  }
}

for (const backend of ['file', 'level'] as const) {
  describe(`encryption: a generation is never taken twice (${backend})`, () => {
    it('after a clean reopen: an older version of a trimmed block put back in place of its next version fails authentication', async () => {
      const storagePath = await mkdtemp(join(tmpdir(), `galleon-encgen-${backend}-`))
      try {
        const { store, puts } = openStore(storagePath, backend)
        const g = await GalleonFS.open({ storagePath, blockStore: store })
        await g.createVolume({ name: VOLUME, sizeBytes: '1M', storageClass: 'encrypted-storage', replicas: 1 })
        await g.writeBlock(VOLUME, 0, filled(OLD_TEXT), WriteConcern.WriteDurable)
        const old = puts[puts.length - 1] as { address: BlockAddress, data: Uint8Array }
        await g.trim(VOLUME, 0, 4096)
        await g.close()
        await replayOver(storagePath, backend, old.address.gen, old.data)
      } finally {
        await rm(storagePath, { recursive: true, force: true })
      }
    })

    it('after a SIGKILL: the same, the trim made durable just before the kill', async () => {
      const storagePath = await mkdtemp(join(tmpdir(), `galleon-encgen-${backend}-`))
      try {
        const { killed, lines, exit } = await killAfterReady(CHILD, [storagePath, backend], 0)
        assert.ok(killed && lines.includes('ready'), `the child did not get ready: ${lines.slice(-2).join(' | ')} ${exit.stderr.slice(0, 2000)}`)
        const [, gen, hex] = (lines.find((line) => line.startsWith('O ')) as string).split(' ') as [string, string, string]
        await replayOver(storagePath, backend, Number(gen), new Uint8Array(Buffer.from(hex, 'hex')))
      } finally {
        await rm(storagePath, { recursive: true, force: true })
      }
    })
  })
}
