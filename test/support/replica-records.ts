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
