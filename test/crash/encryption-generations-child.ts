// Child process of encryption-generations.test.ts: writes one block of an encrypted volume
// durably, reports the sealed value the store got for it, trims the block (so no version of it is
// left in the store) and makes that durable, then says `ready` and waits to be killed with SIGKILL.
//
// Usage: node --import tsx encryption-generations-child.ts <storagePath> <file|level>
//
// Protocol (one line each): `O <gen> <sealed value, hex>`, then `ready`; `error <message>` on failure.

import { join } from 'node:path'
import { FileBlockStore } from '../../backends/file/index.js'
import { LevelBlockStore } from '../../backends/level/index.js'
import type { BlockAddress, BlockStore } from '../../src/index.js'
import { recording } from '../support/recording-store.js'
import { reportLine, runAsChild } from './support.js'

export const VOLUME = 'secret'
export const OLD_TEXT = 'OLD-SECRET-DATA!'

/** 4 KiB of `text` (16 bytes) repeated. */
export function filled (text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text.repeat(4096 / text.length)))
}

/** The storage's block store (where `GalleonFS.open({ storagePath, backend })` keeps it), recording every put. */
export function openStore (storagePath: string, backend: 'file' | 'level'): { store: BlockStore, puts: Array<{ address: BlockAddress, data: Uint8Array }> } {
  return recording(backend === 'file' ? new FileBlockStore({ location: join(storagePath, 'blocks') }) : new LevelBlockStore({ location: join(storagePath, 'blocks-level') }))
}

async function main (): Promise<void> {
  const [storagePath, backend] = process.argv.slice(2) as [string, 'file' | 'level']
  const { GalleonFS, WriteConcern } = await import('../../src/index.js')
  const { store, puts } = openStore(storagePath, backend)
  const g = await GalleonFS.open({ storagePath, blockStore: store })
  await g.createVolume({ name: VOLUME, sizeBytes: '1M', storageClass: 'encrypted-storage', replicas: 1 })
  await g.writeBlock(VOLUME, 0, filled(OLD_TEXT), WriteConcern.WriteDurable)
  const sealed = puts[puts.length - 1] as (typeof puts)[number]
  reportLine(`O ${sealed.address.gen} ${Buffer.from(sealed.data).toString('hex')}`)
  await g.trim(VOLUME, 0, 4096)
  await g.flush(VOLUME)
  reportLine('ready')
  setInterval(() => {}, 1000)
}

runAsChild(import.meta.url, main)
