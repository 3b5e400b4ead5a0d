// Child process of the encryption crash test (encryption-crash.test.ts): durable writes of
// self-describing blocks to an encrypted volume, snapshots, clones and trims, while its data key is
// being rotated (re-encryption in the background), until the parent kills it with SIGKILL.
//
// Usage: node --import tsx encryption-child.ts <storagePath> <file|level> <seqBase> <seed>
//
// Protocol (one line each, written synchronously before the next step):
//   opening / ready <rotating 0|1>    around GalleonFS.open(); 1 when a rotation resumed at open
//   N <storageId> <keyVersion> <counter>
//                                      a block sealed with this nonce is about to be handed to the store
//   W <block> <seq> / A <block> <seq>  a WriteDurable write issued / resolved
//   K <version>                        rotateVolumeKey resolved: new writes use this key version
//   error <message>                    something failed; exit code 3

import type { BlockOp, BlockStore } from '../../src/index.js'
import { seededRandom } from '../conformance/fixtures.js'
import { announcedWrites, blockPayload } from './snapshot-child.js'
import { childArguments, reportLine, runAsChild } from './support.js'

export const VOLUME = 'secret'
export const VOLUME_BLOCKS = 2048
const WRITERS = 4

/** Reports the nonce of every encrypted block in `ops` (before they reach the store). */
export function reportNonces (ops: readonly BlockOp[], decode: (address: BlockOp['address'], data: Uint8Array) => { version: number, counter: number } | undefined): void {
  for (const op of ops) {
    if (op.type !== 'put') continue
    const nonce = decode(op.address, op.data)
    if (nonce !== undefined) reportLine(`N ${op.address.volume} ${nonce.version} ${nonce.counter}`)
  }
}

async function main (): Promise<void> {
  const { storagePath, backend, seqBase, seed } = childArguments('encryption-child.ts')
  const { GalleonFS, WriteConcern } = await import('../../src/index.js')
  const { FileBlockStore } = await import('../../backends/file/index.js')
  const { LevelBlockStore } = await import('../../backends/level/index.js')
  const { BLOCK_FLAG_ENCRYPTED, decodeBlock } = await import('../../src/engine/codec.js')
  const { VolumeCipher } = await import('../../src/crypto/volume-cipher.js')
  const { join } = await import('node:path')
  const random = seededRandom(seed)
  let nextSeq = seqBase

  const inner: BlockStore = backend === 'file' ? new FileBlockStore({ location: join(storagePath, 'blocks') }) : new LevelBlockStore({ location: join(storagePath, 'blocks-level') })
  const store = new Proxy(inner, {
    get (target, prop) {
      if (prop === 'batch') {
        return async (ops: BlockOp[], options?: { sync?: boolean }) => {
          reportNonces(ops, (address, data) => {
            const decoded = decodeBlock(address, data)
            return decoded.ok && (decoded.flags & BLOCK_FLAG_ENCRYPTED) !== 0 ? VolumeCipher.inspect(decoded.payload) : undefined
          })
          return await target.batch(ops, options)
        }
      }
      const value = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })

  reportLine('opening')
  const g = await GalleonFS.open({ storagePath, blockStore: store })
  const rotating = (await g.getVolumeEncryption(VOLUME)).rotation !== undefined
  reportLine(`ready ${rotating ? 1 : 0}`)

  async function writer (): Promise<void> {
    await announcedWrites(async (block, data) => { await g.writeBlock(VOLUME, block, data, WriteConcern.WriteDurable) }, random, VOLUME_BLOCKS, () => nextSeq++)
  }

  async function admin (): Promise<void> {
    while (true) {
      await new Promise((resolve) => setTimeout(resolve, 5 + random() * 30))
      const state = await g.getVolumeEncryption(VOLUME)
      const snapshots = await g.listSnapshots(VOLUME)
      const choice = random()
      if (state.rotation === undefined && choice < 0.3) {
        const result = await g.rotateVolumeKey(VOLUME)
        reportLine(`K ${String(result.keyVersion)}`)
      } else if (choice < 0.5 && snapshots.length < 4) {
        await g.createSnapshot(VOLUME, `s${nextSeq++}`)
      } else if (choice < 0.6 && snapshots.length > 0) {
        await g.deleteSnapshot(VOLUME, (snapshots[0] as { name: string }).name, { force: true })
      } else if (choice < 0.7 && (await g.listVolumes()).length < 4) {
        const clone = await g.cloneVolume(VOLUME, `c${nextSeq++}`)
        await g.writeBlock(clone, Math.floor(random() * VOLUME_BLOCKS), blockPayload(0, nextSeq++))
      }
    }
  }

  await Promise.all([...Array.from({ length: WRITERS }, writer), admin()])
}

runAsChild(import.meta.url, main)
