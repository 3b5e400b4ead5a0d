// Review r11 of commit 65fc778 (a volume put back after a node stopped mid-conversion to
// replicated): the paths where migrateVolume's record write fails in ways the commit's marker does
// not cover, run on the in-process cluster (MemoryNetwork, MemoryCoordinatorCluster).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { recordKey } from '../src/replication/records.js'
import { until } from './support/wait.js'
import { failedConversion, wrappedCoordinatorNodes } from './support/wrapped-coordinator-nodes.js'


const startNode = wrappedCoordinatorNodes('galleon-r11')

describe('review r11: a record write that lands with its answer lost', () => {
  it('migrateVolume to a replicated class whose record landed while the coordinator stopped answering: once it answers again, the same call makes the volume replicated (no record left naming this node primary of a local volume)', { timeout: 60_000 }, async () => {
    const { coordinators, gate: lost, n1, volume } = await failedConversion(startNode)
    const local = await n1.getVolume('conv')
    assert.equal(local.replicas, 1, 'rolled back to a local volume')
    assert.notEqual(local.storageClass, 'double')

    // The coordinator answers again.
    lost.unreadable = false
    const reader = coordinators.coordinator()
    assert.ok(await reader.get(recordKey(volume.id)) !== undefined, 'the record did land')

    // The same call again must be able to make it replicated once the coordinator answers.
    let lastError: { code?: string, message?: string } | undefined
    await until('migrateVolume to double succeeds again', async () => {
      try {
        await n1.migrateVolume('conv', { storageClass: 'double' })
        return true
      } catch (err) {
        lastError = err as { code?: string, message?: string }
        await new Promise((resolve) => setTimeout(resolve, 200))
        return false
      }
    }, 15_000).catch((err: Error) => { throw new Error(`${err.message}; last error ${lastError?.code}: ${lastError?.message}`) })
    const replicated = await n1.getVolume('conv')
    assert.equal(replicated.storageClass, 'double')
    assert.deepEqual(await n1.readBlock('conv', 3), new Uint8Array(4096).fill(3))
    await until('two copies of conv in sync', async () => (await n1.replicationStatus('conv')).inSync.length === 2)
    await reader.close?.()
  })
})
