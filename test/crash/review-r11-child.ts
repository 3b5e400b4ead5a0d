// Child process of test/review-r11-putback.test.ts: node n1, alone in an in-process cluster (memory
// coordinator), makes a 1-copy volume of class `single` (blocks written durably), then migrates it
// to `target`: `secret-pair` (encrypted, 2 copies: laid out encrypted here first, step 1) or
// `double` (2 copies, same layout). Writes of volume records are held for ever; `ready` is printed
// at the first, and the test kills the child there (its memory coordinator, with no record, dies
// with it: the next join finds none).
//
// Args: storagePath target

import { GalleonFS, WriteConcern } from '../../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../../backends/memory/index.js'
import { blockOf, holdingRecords } from './convert-child.js'
import { reportLine, runAsChild } from './support.js'

export const VOLUME = 'putback'
export const BLOCKS = 16

export { blockOf }

/** The classes every node of these tests has. */
export async function makeClasses (g: GalleonFS): Promise<void> {
  await g.createStorageClass({ name: 'single', parameters: { replication: '1' } })
  await g.createStorageClass({ name: 'double', parameters: { replication: '2' } })
  await g.createStorageClass({ name: 'secret-pair', parameters: { replication: '2', encryption: 'true' } })
}

async function main (): Promise<void> {
  const [storagePath, target] = process.argv.slice(2) as [string, string]
  const coordinators = new MemoryCoordinatorCluster()
  const g = await GalleonFS.open({ storagePath, cluster: { nodeId: 'n1', transport: new MemoryTransport({ network: new MemoryNetwork(), nodeId: 'n1' }), coordinator: holdingRecords(coordinators.coordinator(), () => { reportLine('ready record write held') }), leaseTtlMs: 2000 } })
  await makeClasses(g)
  await g.createVolume({ name: VOLUME, sizeBytes: BLOCKS * 4096, storageClass: 'single' })
  for (let i = 0; i < BLOCKS; i++) await g.writeBlock(VOLUME, i, blockOf(i), WriteConcern.WriteDurable)
  reportLine('written')
  await g.migrateVolume(VOLUME, { storageClass: target })
  reportLine('error the record write was not held')
}

runAsChild(import.meta.url, main)
