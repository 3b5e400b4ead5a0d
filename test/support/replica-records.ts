// Reads a replicated volume's record straight from a memory coordinator cluster, as tests check it.

import type { MemoryCoordinatorCluster } from '../../backends/memory/index.js'
import { parseRecord, recordKey, type ReplicaSetRecord } from '../../src/replication/records.js'

/** The record of `volumeId` (undefined when there is none), read through a coordinator of its own. */
export async function recordOf (coordinators: MemoryCoordinatorCluster, volumeId: string): Promise<ReplicaSetRecord | undefined> {
  const reader = coordinators.coordinator()
  try {
    const entry = await reader.get(recordKey(volumeId))
    return entry === undefined ? undefined : parseRecord(entry.value)
  } finally {
    await reader.close()
  }
}

/**
 * Names `node` the primary of `volumeId` in the cluster's record, alone in sync, under the next
 * epoch, as the leader does on a failover (compare-and-swap at the revision read; asserts it applied).
 */
export async function namePrimary (coordinators: MemoryCoordinatorCluster, volumeId: string, node: string): Promise<void> {
  const coordinator = coordinators.coordinator()
  try {
    const entry = await coordinator.get(recordKey(volumeId))
    const record = parseRecord(entry?.value ?? '')
    if (entry === undefined || record === undefined) throw new Error(`volume ${volumeId} has no replica-set record`)
    const written = await coordinator.put(recordKey(volumeId), JSON.stringify({ ...record, primary: node, epoch: record.epoch + 1, inSync: [node], handoff: undefined }), { expectRevision: entry.revision })
    if (written === undefined) throw new Error(`the record of volume ${volumeId} changed while ${node} was named its primary`)
  } finally {
    await coordinator.close()
  }
}
