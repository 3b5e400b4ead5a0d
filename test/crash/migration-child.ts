// Child process of the migration crash test (migration-crash.test.ts): durable writes of
// self-describing blocks while the volume is migrated back and forth between a plain and an
// encrypting storage class, until the parent kills it with SIGKILL.
//
// Usage: node --import tsx migration-child.ts <storagePath> <file|level> <seqBase> <seed>
//
// Protocol (one line each, written synchronously before the next step):
//   opening / ready <storageClass>     around GalleonFS.open(), with the class the volume is in
//   W <block> <seq> / A <block> <seq>  a WriteDurable write issued / resolved
//   S <storageClass>                   a migration to this class starts
//   M <storageClass>                   that migration resolved (switched over)
//   error <message>                    something failed; exit code 3

import { seededRandom } from '../conformance/fixtures.js'
import { announcedWrites } from './snapshot-child.js'
import { childArguments, reportLine, runAsChild } from './support.js'

export const VOLUME = 'moving'
export const VOLUME_BLOCKS = 1024
export const PLAIN_CLASS = 'fast-local-ssd'
export const SECRET_CLASS = 'secret-local'
const WRITERS = 4

async function main (): Promise<void> {
  const { storagePath, backend, seqBase, seed } = childArguments('migration-child.ts')
  const { GalleonFS, WriteConcern } = await import('../../src/index.js')
  const random = seededRandom(seed)
  let nextSeq = seqBase
  reportLine('opening')
  const g = await GalleonFS.open({ storagePath, backend })
  reportLine(`ready ${(await g.getVolume(VOLUME)).storageClass}`)

  async function writer (): Promise<void> {
    await announcedWrites(async (block, data) => { await g.writeBlock(VOLUME, block, data, WriteConcern.WriteDurable) }, random, VOLUME_BLOCKS, () => nextSeq++)
  }
  async function migrator (): Promise<void> {
    while (true) {
      await new Promise((resolve) => setTimeout(resolve, random() * 20))
      const current = (await g.getVolume(VOLUME)).storageClass
      const next = current === PLAIN_CLASS ? SECRET_CLASS : PLAIN_CLASS
      reportLine(`S ${next}`)
      await g.migrateVolume(VOLUME, { storageClass: next })
      reportLine(`M ${next}`)
    }
  }
  await Promise.all([...Array.from({ length: WRITERS }, async () => await writer()), migrator()])
}

runAsChild(import.meta.url, main)
