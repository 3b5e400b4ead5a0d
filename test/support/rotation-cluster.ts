// Helpers of the replicated key-rotation tests (h70, r28): an encrypted replicated volume on a
// disk cluster, and a primary whose stream to its copies is held.

import type { MemoryNetwork } from '../../backends/memory/index.js'
import { WriteConcern } from '../../src/index.js'
import { BS, allInSync, block, type DiskNode } from './disk-cluster.js'
import { until } from './wait.js'

/** From now on, stream batches `from` sends are lost without an answer; returns how many were. */
export function holdStream (network: MemoryNetwork, from: string): () => number {
  let held = 0
  network.drop((m) => {
    if (m.from !== from || m.type !== 'request' || m.kind !== 'repl:apply') return false
    held++
    return true
  }, { silent: true })
  return () => held
}

/** Volume `keys` of class `secret` (encrypted, `copies` copies) on the first node, block 0 written, every copy in sync. */
export async function encryptedVolume (nodes: DiskNode[], copies: number): Promise<void> {
  for (const node of nodes) await node.g.createStorageClass({ name: 'secret', parameters: { replication: String(copies), encryption: 'true' } })
  const n1 = nodes[0] as DiskNode
  await n1.g.createVolume({ name: 'keys', sizeBytes: 16 * BS, storageClass: 'secret' })
  await n1.g.writeBlock('keys', 0, block(1), WriteConcern.WriteReplicated)
  await until('every copy is in sync', async () => await allInSync(n1.g, 'keys', copies), 20_000)
}
