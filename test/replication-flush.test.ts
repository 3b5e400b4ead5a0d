// flush() of a replicated volume under synchronous replication waits for the in-sync copies to hold
// everything written before it. A copy that leaves the in-sync list while the flush waits (its stream
// unreachable) ends that wait as if it had been out of sync from the start: the flush resolves once the
// copy is out of the list, instead of failing with WRITE_CONCERN_UNSATISFIED (which it did before,
// found by bench/replication.ts flushing just after its second node stopped).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WriteConcern } from '../src/index.js'
import { until } from './support/wait.js'
import { allInSync, block, diskCluster } from './support/disk-cluster.js'

const { cluster } = diskCluster('galleon-repl-flush-')

describe('flush of a replicated volume', () => {
  it('resolves when the only other in-sync copy drops out while it waits', async () => {
    const { network, nodes } = await cluster(2)
    const [n1] = nodes as [typeof nodes[0], typeof nodes[0]]
    await n1.g.createVolume({ name: 'v', sizeBytes: 64 * 4096, replicas: 2 })
    await until('both copies in sync', async () => await allInSync(n1.g, 'v', 2))
    await n1.g.writeBlock('v', 1, block(1), WriteConcern.WriteReplicated)
    // The stream to n2 goes silent: what is written now does not reach it, so the flush waits for
    // it until the batch times out and the primary takes n2 out of the in-sync list.
    network.drop((m) => m.to === 'n2' && m.kind === 'repl:apply', { silent: true })
    await n1.g.writeBlock('v', 2, block(2), WriteConcern.WriteAcknowledged)
    await n1.g.flush('v')
    const status = await n1.g.replicationStatus('v')
    assert.deepEqual([...status.inSync], ['n1'], 'the flush ended because n2 left the in-sync list')
    assert.deepEqual(await n1.g.readBlock('v', 2), block(2))
    // Healed, n2 resyncs, and a flush waits for it again.
    network.drop(0)
    await until('n2 back in sync', async () => await allInSync(n1.g, 'v', 2), 30_000)
    await n1.g.writeBlock('v', 3, block(3), WriteConcern.WriteAcknowledged)
    await n1.g.flush('v')
    const link = (await n1.g.replicationStatus('v')).links.find((l) => l.node === 'n2')
    assert.equal(link?.lagChanges, 0, 'after the flush, n2 has every change')
  })
})
