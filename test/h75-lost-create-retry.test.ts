// h75: migrateVolume to a replicated class whose record write landed with its answer lost (as in
// review-r11.test.ts), called again while the background sweep of that record (#sweepLostCreate)
// is reading it. The sweep used to take the volume the retry holds meanwhile (its catalog names the
// class until register() answers) for a replicated copy that keeps the record, and stopped for
// good: the record stayed, and every later call failed with VOLUME_EXISTS. The reads of the record
// are held at a gate here, so that the sweep's read answers while the retry is in flight.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { GalleonFS, Volume } from '../src/index.js'
import type { Coordinator } from '../src/drivers.js'
import { recordKey } from '../src/replication/records.js'
import { until } from './support/wait.js'
import { GatedRecord, failedConversion, wrappedCoordinatorNodes } from './support/wrapped-coordinator-nodes.js'

const startNode = wrappedCoordinatorNodes('galleon-h75')

/**
 * n1 (coordinating through a GatedRecord) and n2; n1's local volume conv (block 3 written) failed
 * to become replicated: its record landed with the answer lost. Then the coordinator answers
 * again, and the sweep's read of the record waits at the gate; a call of migrateVolume to the
 * class is made and waited for until it holds the volume (its catalog names the class until its
 * register() answers). Returns once the sweep's read has answered (and its pass ran to its end)
 * while that call is in flight.
 */
async function sweepReadsDuringRetry (): Promise<{ n1: GalleonFS, n2: GalleonFS, gate: GatedRecord, reader: Coordinator, volumeId: string, retry: Promise<{ volume?: Volume, error?: { code?: string, message?: string } }> }> {
  const { coordinators, gate, n1, n2, volume } = await failedConversion(startNode)
  assert.equal((await n1.getVolume('conv')).replicas, 1, 'rolled back to a local volume')

  // The coordinator answers again, but the reads of the record wait at the gate: the first to
  // come is the sweep's.
  gate.held = true
  gate.unreadable = false
  await until('the sweep reads the record', () => gate.waiting.length === 1)
  const reader = coordinators.coordinator()
  assert.ok(await reader.get(recordKey(volume.id)) !== undefined, 'the record did land')

  // The same call again, while the sweep's read is held: the retry's catalog names the class
  // until its register() answers.
  const retry = n1.migrateVolume('conv', { storageClass: 'double' }).then((v) => ({ volume: v }), (err: { code?: string, message?: string }) => ({ error: err }))
  await until('the retry holds the volume', async () => (await n1.getVolume('conv')).storageClass === 'double')
  // The sweep's read answers now, and its pass runs to its end (one turn of the event loop lets
  // every step that waits on no I/O run) while the retry is in flight.
  gate.release(1)
  await new Promise((resolve) => setImmediate(resolve))
  return { n1, n2, gate, reader, volumeId: volume.id, retry }
}

describe('h75: migrateVolume again while the sweep of its lost record reads it', () => {
  it('the record that landed with its answer lost is removed by the retry itself, which makes the volume replicated (not VOLUME_EXISTS because the sweep found the volume held by the retry)', { timeout: 60_000 }, async () => {
    const { n1, n2, gate, reader, retry } = await sweepReadsDuringRetry()
    // Then the other reads (the retry's) answer too.
    await until('the retry reads the record', () => gate.waiting.length >= 1)
    gate.held = false
    gate.release()

    const outcome = await retry
    assert.equal(outcome.error, undefined, `the retry fails with ${outcome.error?.code}: ${outcome.error?.message}`)
    assert.equal(outcome.volume?.storageClass, 'double')
    const replicated = await n1.getVolume('conv')
    assert.equal(replicated.storageClass, 'double')
    assert.equal(replicated.replicas, 2)
    assert.deepEqual(await n1.readBlock('conv', 3), new Uint8Array(4096).fill(3))
    await until('two copies of conv in sync', async () => (await n1.replicationStatus('conv')).inSync.length === 2, 15_000)
    assert.deepEqual(await n2.readBlock('conv', 3), new Uint8Array(4096).fill(3), 'through n2 too')
    await reader.close?.()
  })

  it('a sweep pass that finds the volume held by a call in flight looks again later: the record goes once that call has failed (its own removal of the record failed) and the volume is local, with no further call', { timeout: 60_000 }, async () => {
    const { n1, gate, reader, volumeId, retry } = await sweepReadsDuringRetry()
    // The retry's own removal of the record (if it makes one) fails: its delete is never sent.
    gate.failDeletes = 1
    gate.held = false
    gate.release()
    const outcome = await retry
    assert.equal(outcome.error?.code, 'VOLUME_EXISTS', `the retry finds the record: ${outcome.error?.code}: ${outcome.error?.message}`)
    assert.equal((await n1.getVolume('conv')).replicas, 1, 'local again')
    // Only the sweep can remove the record now.
    await until('the record that landed is gone', async () => await reader.get(recordKey(volumeId)) === undefined, 15_000)
    const replicated = await n1.migrateVolume('conv', { storageClass: 'double' })
    assert.equal(replicated.storageClass, 'double')
    assert.deepEqual(await n1.readBlock('conv', 3), new Uint8Array(4096).fill(3))
    await until('two copies of conv in sync', async () => (await n1.replicationStatus('conv')).inSync.length === 2, 15_000)
    await reader.close?.()
  })
})
