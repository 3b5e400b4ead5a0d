// A replicated volume's class change asked for again while the first call still runs on the node
// (a client that stopped waiting and asks once more): the second call waits for the first and
// gets its outcome, and takes the wait over if the first caller stops waiting; a change to another
// class meanwhile is refused with BUSY. In-process nodes on
// their own disks, a memory network and coordinator.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WriteConcern } from '../src/index.js'
import { until } from './support/wait.js'
import { BS, allInSync, block, diskCluster, type DiskNode } from './support/disk-cluster.js'
import { rejectsWithCode } from './support/assertions.js'

const kit = diskCluster('galleon-migration-join-')

/**
 * Two nodes with the classes pair and secret-pair, and a volume `name` of `blocks` blocks in pair,
 * written (block i from seed + i) and in sync on both.
 */
async function pairedVolume (name: string, blocks: number, seed: number): Promise<{ n1: DiskNode, n2: DiskNode, model: Uint8Array }> {
  const { nodes } = await kit.cluster(2)
  const [n1, n2] = nodes as [DiskNode, DiskNode]
  for (const node of nodes) {
    await node.g.createStorageClass({ name: 'pair', parameters: { replication: '2' } })
    await node.g.createStorageClass({ name: 'secret-pair', parameters: { replication: '2', encryption: 'true' } })
  }
  await n1.g.createVolume({ name, sizeBytes: blocks * BS, storageClass: 'pair' })
  const model = new Uint8Array(blocks * BS)
  for (let i = 0; i < blocks; i++) model.set(block(i + seed), i * BS)
  await n1.g.write(name, 0, model, WriteConcern.WriteReplicated)
  await until('both copies are in sync', async () => await allInSync(n1.g, name, 2), 20_000)
  return { n1, n2, model }
}

describe('a class change of a replicated volume asked for twice', () => {
  it('the second call waits for the first and answers with its outcome; one to another class is refused with BUSY', async () => {
    const { n1, n2, model } = await pairedVolume('twice', 512, 1)
    for (const node of [n1, n2]) await node.g.createStorageClass({ name: 'other-pair', parameters: { replication: '2', compression: 'false' } })

    // Both asked in the same turn of the event loop: neither may run a second conversion.
    const first = n1.g.migrateVolume('twice', { storageClass: 'secret-pair' })
    const again = n1.g.migrateVolume('twice', { storageClass: 'secret-pair' })
    const elsewhere = n1.g.migrateVolume('twice', { storageClass: 'other-pair' })
    await assert.rejects(elsewhere, rejectsWithCode('BUSY', /migrating already, to storage class secret-pair/))
    const [a, b] = await Promise.all([first, again])
    assert.equal(a.storageClass, 'secret-pair')
    assert.deepEqual(b, a, 'the second call answers with the first one\'s outcome')
    for (const node of [n1, n2]) {
      assert.equal((await node.g.getVolume('twice')).encrypted, true, `the copy on ${node.id} is encrypted`)
    }
    assert.deepEqual(await n2.g.read('twice', 0, model.byteLength), model)
    // Done: the same call now has nothing to do, as before.
    await assert.rejects(n1.g.migrateVolume('twice', { storageClass: 'secret-pair' }), rejectsWithCode('INVALID_ARGUMENT'))
  })

  it('the first caller stopping its wait does not cancel the second: it gets the class it asked for', async () => {
    const { n1, n2, model } = await pairedVolume('left', 256, 3)
    // The first caller (a daemon client that gives up: its connection closes, its signal fires)
    // stops once the conversion is under way; the second asked for the same and still waits.
    const gaveUp = new AbortController()
    const first = n1.g.migrateVolume('left', { storageClass: 'secret-pair' }, { signal: gaveUp.signal, onProgress: () => { gaveUp.abort() } })
    const again = n1.g.migrateVolume('left', { storageClass: 'secret-pair' })
    await assert.rejects(first, rejectsWithCode('CANCELLED'))
    const volume = await again
    assert.equal(volume.storageClass, 'secret-pair')
    assert.equal(volume.encrypted, true)
    for (const node of [n1, n2]) {
      await until(`the copy on ${node.id} is in secret-pair`, async () => (await node.g.getVolume('left')).storageClass === 'secret-pair', 20_000)
      assert.equal((await node.g.getVolume('left')).encrypted, true)
    }
    assert.deepEqual(await n2.g.read('left', 0, model.byteLength), model)
  })
})
