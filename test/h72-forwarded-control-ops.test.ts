// h72: createSnapshot, deleteSnapshot, deleteVolume and restoreSnapshot called on a node that is not
// a replicated volume's primary are forwarded there. When the answer was lost after the call took
// effect (the connection dropped, or the primary closed or lost the role), the caller was told
// BACKEND_UNAVAILABLE for a snapshot that was taken (its retry: SNAPSHOT_EXISTS), a snapshot or
// volume that was deleted (its retry: not found), a revert that was made (its retry reverted again,
// losing the writes made in between). Now each such call carries a token and is sent again, to the
// same primary or the next one, which answers with what the first attempt did: the snapshot it took
// (kept with the call's token on every copy), the deletion it made, the revert it made (the token
// kept with the volume on every copy), so that the call happens once.
// The moments are hit deterministically with the memory network's fault injection: the primary's
// answer to the caller is lost (a connection reset), and the caller's repeats are lost on the way
// while the test makes its changes, until it lets them through.
// In-process nodes on their own disks with a memory network and coordinator.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WriteConcern } from '../src/index.js'
import { observed } from './support/observed.js'
import { until } from './support/wait.js'
import { namePrimary } from './support/replica-records.js'
import { holdStream } from './support/rotation-cluster.js'
import { replicatedVolume } from './support/control-call-cluster.js'
import { block, diskCluster, type DiskNode } from './support/disk-cluster.js'
import { loseAnswer } from './support/forwarded-answers.js'
import { decodeChanges, encodeChanges } from '../src/replication/stream-codec.js'

const kit = diskCluster('galleon-h72-')

/** The node of `nodes` that is the volume's primary now, once one of `among` is and has taken up the role. */
async function newPrimary (nodes: DiskNode[], among: string[]): Promise<DiskNode> {
  let found: DiskNode | undefined
  await until(`one of ${among.join(', ')} is the primary`, async () => {
    for (const node of nodes.filter((n) => among.includes(n.id))) {
      if ((await node.g.replicationStatus('v')).role === 'primary') found = node
    }
    return found !== undefined
  }, 20_000)
  return found as DiskNode
}

describe('h72: a forwarded createSnapshot whose answer was lost', () => {
  it('is answered by the primary with the snapshot it took (not BACKEND_UNAVAILABLE), one snapshot', { timeout: 60_000 }, async () => {
    const { network, nodes } = await kit.cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    await replicatedVolume(nodes, 2)
    const faults = loseAnswer(network, 'n2')
    const answer = await n2.g.createSnapshot('v', 's1')
    network.drop(0)
    assert.equal(faults.lost(), 1, 'the primary\'s answer was lost')
    const snapshots = await n1.g.listSnapshots('v')
    assert.deepEqual(snapshots.map((s) => s.name), ['s1'], 'one snapshot taken')
    assert.equal(answer.id, snapshots[0]?.id, 'the answer is the snapshot the primary took')
    assert.equal(answer.name, 's1')
  })

  it('and whose primary closed once its copies had the snapshot: the next primary answers with that same snapshot', { timeout: 90_000 }, async () => {
    const { network, nodes } = await kit.cluster(3)
    const [n1, n2, n3] = nodes as [DiskNode, DiskNode, DiskNode]
    await replicatedVolume(nodes, 3)
    const faults = loseAnswer(network, 'n3', true)
    const call = observed(n3.g.createSnapshot('v', 's1'))
    // Answered only once its in-sync copies had applied it: n2 and n3 hold it with the call's token.
    await until('the primary answered', () => faults.lost() > 0, 20_000)
    const taken = (await n1.g.listSnapshots('v')).find((s) => s.name === 's1')
    assert.ok(taken !== undefined, 'the primary took the snapshot')
    await n1.g.close()
    const primary = await newPrimary(nodes, ['n2', 'n3'])
    faults.release()
    const answer = await call
    network.drop(0)
    assert.equal(answer.id, taken.id, `the next primary (${primary.id}) answers with the snapshot taken before, not a second one nor SNAPSHOT_EXISTS`)
    assert.deepEqual((await primary.g.listSnapshots('v')).map((s) => s.id), [taken.id], 'one snapshot')
    assert.deepEqual((await n2.g.listSnapshots('v')).map((s) => s.name), ['s1'])
  })

  it('whose primary closed before any copy had the snapshot: the next primary takes it, once', { timeout: 90_000 }, async () => {
    const { network, nodes } = await kit.cluster(3)
    const [n1, , n3] = nodes as [DiskNode, DiskNode, DiskNode]
    await replicatedVolume(nodes, 3)
    const held = holdStream(network, 'n1')
    const call = observed(n3.g.createSnapshot('v', 's1'))
    await until('the primary took the snapshot and sent it to its copies', () => held() > 0, 20_000)
    // Sent in the stream before the primary's catalog records it: listed a moment later.
    await until('the primary lists the snapshot', async () => (await n1.g.listSnapshots('v')).map((s) => s.name).join() === 's1', 20_000)
    await n1.g.close()
    network.drop(0)
    const answer = await call
    const primary = await newPrimary(nodes, ['n2', 'n3'])
    const snapshots = await primary.g.listSnapshots('v')
    assert.deepEqual(snapshots.map((s) => s.name), ['s1'], 'one snapshot named s1 on the next primary')
    assert.equal(answer.id, snapshots[0]?.id, 'the answer is the snapshot the volume has')
  })
})

describe('h72: a forwarded deletion whose answer was lost', () => {
  it('deleteSnapshot resolves (not BACKEND_UNAVAILABLE, nor SNAPSHOT_NOT_FOUND), the snapshot gone everywhere', { timeout: 60_000 }, async () => {
    const { network, nodes } = await kit.cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    await replicatedVolume(nodes, 2)
    await n1.g.createSnapshot('v', 's1')
    await until('n2 has the snapshot', async () => (await n2.g.listSnapshots('v')).length === 1)
    const faults = loseAnswer(network, 'n2')
    await n2.g.deleteSnapshot('v', 's1')
    network.drop(0)
    assert.equal(faults.lost(), 1, 'the primary\'s answer was lost')
    assert.ok(faults.repeats() > 0, 'the call was sent again')
    assert.deepEqual(await n1.g.listSnapshots('v'), [])
    await until('n2 has it deleted too', async () => (await n2.g.listSnapshots('v')).length === 0)
  })

  it('deleteVolume resolves (not BACKEND_UNAVAILABLE, nor VOLUME_NOT_FOUND), the volume gone from every node', { timeout: 60_000 }, async () => {
    const { network, nodes } = await kit.cluster(3)
    const [n1, n2, n3] = nodes as [DiskNode, DiskNode, DiskNode]
    await replicatedVolume(nodes, 3)
    const faults = loseAnswer(network, 'n2')
    await n2.g.deleteVolume('v')
    network.drop(0)
    assert.equal(faults.lost(), 1, 'the primary\'s answer was lost')
    assert.deepEqual(await n2.g.listVolumes(), [], 'the caller\'s copy is gone when the call resolves')
    await until('the volume is gone from every node', async () => (await Promise.all([n1, n3].map(async (n) => (await n.g.listVolumes()).length))).every((count) => count === 0))
  })
})

describe('h72: a forwarded restoreSnapshot whose answer was lost', () => {
  it('is not reverted again by its repeat: a write made before the repeat reached the primary is kept', { timeout: 60_000 }, async () => {
    const { network, nodes } = await kit.cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    await replicatedVolume(nodes, 2)
    await n1.g.writeBlock('v', 1, block(10), WriteConcern.WriteReplicated)
    await n1.g.createSnapshot('v', 's1')
    await n1.g.writeBlock('v', 1, block(11), WriteConcern.WriteReplicated)
    await until('n2 has the snapshot', async () => (await n2.g.listSnapshots('v')).length === 1)
    const faults = loseAnswer(network, 'n2', true)
    const call = observed(n2.g.restoreSnapshot('v', 's1'))
    await until('the primary reverted the volume and answered', () => faults.lost() > 0, 20_000)
    assert.deepEqual(await n1.g.readBlock('v', 1), block(10), 'reverted')
    await until('the call is being sent again', () => faults.repeats() > 0, 20_000)
    await n1.g.writeBlock('v', 2, block(12), WriteConcern.WriteReplicated)
    faults.release()
    await call
    network.drop(0)
    assert.deepEqual(await n1.g.readBlock('v', 2), block(12), 'the write made after the revert is kept')
    assert.deepEqual(await n1.g.readBlock('v', 1), block(10))
    assert.deepEqual(await n2.g.readBlock('v', 2), block(12))
  })

  it('whose primary lost the role and closed after its copies reverted: the next primary does not revert again', { timeout: 90_000 }, async () => {
    const { network, coordinators, nodes } = await kit.cluster(3)
    const [n1, n2, n3] = nodes as [DiskNode, DiskNode, DiskNode]
    const volumeId = await replicatedVolume(nodes, 3)
    await n1.g.writeBlock('v', 1, block(20), WriteConcern.WriteReplicated)
    await n1.g.createSnapshot('v', 's1')
    await n1.g.writeBlock('v', 1, block(21), WriteConcern.WriteReplicated)
    await until('n3 has the snapshot', async () => (await n3.g.listSnapshots('v')).length === 1)
    const faults = loseAnswer(network, 'n3', true)
    const call = observed(n3.g.restoreSnapshot('v', 's1'))
    // Answered only once its in-sync copies had applied the revert (with the call's token).
    await until('the primary reverted the volume and answered', () => faults.lost() > 0, 20_000)
    // The cluster names n2 the primary (as a failover does), and n1 closes.
    await namePrimary(coordinators, volumeId, 'n2')
    await n1.g.close()
    await until('n2 took the role up', async () => (await n2.g.replicationStatus('v')).role === 'primary', 20_000)
    await until('the call is being sent again', () => faults.repeats() > 0, 20_000)
    await n2.g.writeBlock('v', 2, block(22), WriteConcern.WriteDurable)
    faults.release()
    const answer = await call
    network.drop(0)
    assert.equal(answer.name, 'v')
    assert.deepEqual(await n2.g.readBlock('v', 2), block(22), 'the write made on the next primary before the repeat reached it is kept')
    assert.deepEqual(await n2.g.readBlock('v', 1), block(20), 'the volume reads as reverted')
  })
})

describe('h72: the stream carries a call\'s token with its snapshot and its revert', () => {
  it('encodes it (as an optional field) and decodes it; a change without one (an earlier version\'s) decodes without one', () => {
    const { list, payload } = encodeChanges([
      { seq: 1, change: { type: 'snapshot', id: 'a', name: 's1', token: 't1' } },
      { seq: 2, change: { type: 'revert', snapshotId: 'a', token: 't2' } },
      { seq: 3, change: { type: 'snapshot', id: 'b', name: 's2' } },
      { seq: 4, change: { type: 'revert', snapshotId: 'b' } }
    ])
    assert.deepEqual(decodeChanges(list, payload), [
      { type: 'snapshot', id: 'a', name: 's1', token: 't1' },
      { type: 'revert', snapshotId: 'a', token: 't2' },
      { type: 'snapshot', id: 'b', name: 's2' },
      { type: 'revert', snapshotId: 'b' }
    ])
    assert.deepEqual(list.slice(2), [{ t: 's', id: 'b', name: 's2' }, { t: 'r', id: 'b' }], 'a change without a token is written as before')
  })
})
