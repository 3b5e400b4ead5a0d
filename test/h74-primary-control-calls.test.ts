// h74: createSnapshot, deleteSnapshot, restoreSnapshot and expandVolume called on a replicated
// volume's primary, which loses the role under the call. Measured before the change: a snapshot,
// deletion or revert the copies had applied (acknowledgements lost, then the cluster named another
// primary) failed WRITE_CONCERN_UNSATISFIED "a failover may undo it", although the next primary
// held it, and a retry failed SNAPSHOT_EXISTS / SNAPSHOT_NOT_FOUND or reverted the volume a second
// time; an expansion or revert queued behind another call while the role moved failed NOT_LEADER
// "retry it". Now such a call goes on at the next primary with a token of its own (as
// rotateVolumeKey did since h70): the next primary answers with what the call did there, once. A
// call refused for a reason of its own while this node still leads fails at once, as before, and so
// does one cut short by the instance's own close. deleteVolume was one call already (the deletion
// is the cluster record's, whichever node is primary): checked here too.
// The moments are hit deterministically: the copies' acknowledgements to the primary (or its
// stream batches) are lost silently, so the call waits for its copies, while the test names
// another primary in the cluster's record as the leader does on a failover; or the primary's
// coordinator write of an expansion is held, so that calls queue behind it while the role moves.
// In-process nodes on their own disks with a memory network and coordinator.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WriteConcern } from '../src/index.js'
import type { MemoryMessageInfo } from '../backends/memory/index.js'
import { CALL_TOKENS_KEPT, PRIMARY_TOKEN_PREFIX, withToken } from '../src/facade/forwarded-calls.js'
import { observed } from './support/observed.js'
import { until } from './support/wait.js'
import { failOver, primaryCluster, type PrimaryCluster } from './support/control-call-cluster.js'
import { BS, block, diskCluster } from './support/disk-cluster.js'

const kit = diskCluster('galleon-h74-')

interface Cluster extends PrimaryCluster {
  /** Control calls n1 has forwarded to another node since the cluster was made. */
  forwarded: () => number
  /**
   * From now on, messages `rule` names are lost (`silent`: the sender waits, see MemoryNetwork.drop);
   * n1's forwarded calls are still counted. Returns how many were lost.
   */
  lose: (rule: (m: MemoryMessageInfo) => boolean, silent?: boolean) => () => number
}

/** Three nodes, volume `v` (3 copies) on n1, block 0 written, every copy in sync; n1's forwarded calls counted. */
async function cluster (): Promise<Cluster> {
  const c = await primaryCluster(kit)
  let forwarded = 0
  const lose = (rule: (m: MemoryMessageInfo) => boolean, silent = false): () => number => {
    let lost = 0
    c.network.drop((m) => {
      if (m.from === 'n1' && m.kind === 'repl:io' && m.type === 'request') forwarded++
      if (!rule(m)) return false
      lost++
      return true
    }, { silent })
    return () => lost
  }
  lose(() => false)
  return { ...c, forwarded: () => forwarded, lose }
}

/** From now on the copies' acknowledgements of n1's stream batches are lost (silently: n1 waits for them); returns how many were. */
function loseAcks (c: Cluster): () => number {
  return c.lose((m) => m.kind === 'repl:apply' && m.type === 'reply' && m.to === 'n1', true)
}

/** From now on n1's stream batches are lost (silently): the copies never get them; returns how many were. */
function holdStream (c: Cluster): () => number {
  return c.lose((m) => m.from === 'n1' && m.type === 'request' && m.kind === 'repl:apply', true)
}

/** No message is lost from now on (n1's forwarded calls are still counted). */
function heal (c: Cluster): void {
  c.lose(() => false)
}

/** The error a call rejected with (fails the test when it resolved). */
async function rejection (call: Promise<unknown>): Promise<{ code?: string, message: string }> {
  return await call.then((value) => assert.fail(`resolved: ${JSON.stringify(value)}`), (err: { code?: string, message: string }) => err)
}

describe('h74: a control call on the primary whose copies applied it, the role moving before they confirmed it', () => {
  it('createSnapshot is answered with the snapshot the next primary holds (not WRITE_CONCERN_UNSATISFIED), one snapshot', { timeout: 60_000 }, async () => {
    const c = await cluster()
    const [n1, n2] = c.nodes
    const lost = loseAcks(c)
    const call = observed(n1.g.createSnapshot('v', 's1'))
    await until('the copies applied the snapshot and their acknowledgements were lost', () => lost() >= 2, 20_000)
    await failOver(c)
    heal(c)
    const answer = await call
    const held = await n2.g.listSnapshots('v')
    assert.deepEqual(held.map((s) => s.name), ['s1'], 'one snapshot on the next primary')
    assert.equal(answer.id, held[0]?.id, 'the answer is the snapshot the next primary holds: the one taken on n1, which its copies applied')
    assert.ok(c.forwarded() > 0, 'the call went on at the next primary')
  })

  it('deleteSnapshot resolves (not WRITE_CONCERN_UNSATISFIED); the snapshot is gone on the next primary', { timeout: 60_000 }, async () => {
    const c = await cluster()
    const [n1, n2, n3] = c.nodes
    await n1.g.createSnapshot('v', 's1')
    const lost = loseAcks(c)
    const call = observed(n1.g.deleteSnapshot('v', 's1'))
    await until('the copies applied the deletion and their acknowledgements were lost', () => lost() >= 2, 20_000)
    await failOver(c)
    heal(c)
    await call
    assert.deepEqual(await n2.g.listSnapshots('v'), [])
    await until('every copy has it deleted', async () => (await Promise.all([n1, n3].map(async (n) => (await n.g.listSnapshots('v')).length))).every((count) => count === 0), 20_000)
  })

  it('restoreSnapshot resolves (not WRITE_CONCERN_UNSATISFIED) and the next primary reverts the volume once', { timeout: 60_000 }, async () => {
    const c = await cluster()
    const [n1, n2] = c.nodes
    await n1.g.writeBlock('v', 1, block(10), WriteConcern.WriteReplicated)
    await n1.g.createSnapshot('v', 's1')
    await n1.g.writeBlock('v', 1, block(11), WriteConcern.WriteReplicated)
    let reverts = 0
    n2.g.on('snapshot:restored', () => { reverts++ })
    const lost = loseAcks(c)
    const call = observed(n1.g.restoreSnapshot('v', 's1'))
    await until('the copies applied the revert and their acknowledgements were lost', () => lost() >= 2, 20_000)
    assert.equal(reverts, 1, 'n2 applied the revert from the stream')
    await failOver(c)
    heal(c)
    const answer = await call
    assert.equal(answer.name, 'v')
    assert.ok(c.forwarded() > 0, 'the call went on at the next primary')
    assert.equal(reverts, 1, 'the next primary answered from the revert it had (the call\'s token), without reverting again')
    assert.deepEqual(await n2.g.readBlock('v', 1), block(10))
  })
})

describe('h74: a control call on the primary whose copies never got it, the role moving', () => {
  it('createSnapshot is taken by the next primary, once; n1\'s own one goes', { timeout: 60_000 }, async () => {
    const c = await cluster()
    const [n1, n2] = c.nodes
    const held = holdStream(c)
    const call = observed(n1.g.createSnapshot('v', 's1'))
    await until('n1 took the snapshot and sent it to its copies', () => held() > 0, 20_000)
    await failOver(c)
    heal(c)
    const answer = await call
    const snapshots = await n2.g.listSnapshots('v')
    assert.deepEqual(snapshots.map((s) => s.name), ['s1'])
    assert.equal(answer.id, snapshots[0]?.id, 'the answer is the snapshot the next primary took')
    await until('n1\'s copy has the next primary\'s snapshot alone', async () => (await n1.g.listSnapshots('v')).map((s) => s.id).join() === answer.id, 20_000)
  })
})

describe('h74: calls queued on the primary behind another while the role moves', () => {
  it('expandVolume and restoreSnapshot go on at the next primary (not NOT_LEADER "retry it")', { timeout: 60_000 }, async () => {
    const c = await cluster()
    const [n1, n2] = c.nodes
    await n1.g.writeBlock('v', 1, block(30), WriteConcern.WriteReplicated)
    await n1.g.createSnapshot('v', 's1')
    await n1.g.writeBlock('v', 1, block(31), WriteConcern.WriteReplicated)
    await until('n2 has the snapshot', async () => (await n2.g.listSnapshots('v')).length === 1, 20_000)
    // A first expansion holds n1's admin queue while its write of the cluster's record is held.
    c.hold.arm(`"sizeBytes":${20 * BS}`)
    const first = observed(n1.g.expandVolume('v', 20 * BS))
    try {
      await until('the first expansion\'s record write is held', () => c.hold.held() === 1, 20_000)
      // Both made while n1 is the primary: they wait for their turn behind the first.
      const second = observed(n1.g.expandVolume('v', 24 * BS))
      const restore = observed(n1.g.restoreSnapshot('v', 's1'))
      await failOver(c)
      c.hold.release()
      await first
      const expanded = await second
      assert.equal(expanded.sizeBytes, 24 * BS, 'the answer is the expanded volume')
      const reverted = await restore
      assert.equal(reverted.name, 'v')
    } finally {
      c.hold.release()
    }
    assert.ok(c.forwarded() >= 2, 'both went on at the next primary')
    assert.equal((await n2.g.getVolume('v')).sizeBytes, 24 * BS, 'the next primary expanded it')
    assert.deepEqual(await n2.g.readBlock('v', 1), block(30), 'the next primary reverted it')
    await until('n1\'s copy follows', async () => (await n1.g.getVolume('v')).sizeBytes === 24 * BS, 20_000)
  })

  it('deleteVolume (one call already): resolves, the volume gone from every node', { timeout: 60_000 }, async () => {
    const c = await cluster()
    // The deletion mark is written first: held, while the cluster names another primary.
    c.hold.arm('{"nodes"')
    const call = observed(c.nodes[0].g.deleteVolume('v'))
    try {
      await until('the deletion mark write is held', () => c.hold.held() === 1, 20_000)
      await failOver(c)
    } finally {
      c.hold.release()
    }
    await call
    await until('the volume is gone from every node', async () => (await Promise.all(c.nodes.map(async (n) => (await n.g.listVolumes()).length))).every((count) => count === 0), 20_000)
  })
})

describe('h74: what still fails at once on the primary', () => {
  it('a refusal of its own while it leads: SNAPSHOT_EXISTS, BUSY, INVALID_ARGUMENT, SNAPSHOT_NOT_FOUND (nothing forwarded)', { timeout: 60_000 }, async () => {
    const c = await cluster()
    const [n1] = c.nodes
    await n1.g.createSnapshot('v', 's1')
    await n1.g.cloneVolume({ volume: 'v', snapshot: 's1' }, 'c')
    assert.equal((await rejection(n1.g.createSnapshot('v', 's1'))).code, 'SNAPSHOT_EXISTS')
    assert.equal((await rejection(n1.g.deleteSnapshot('v', 's1'))).code, 'BUSY')
    assert.equal((await rejection(n1.g.expandVolume('v', 8 * BS))).code, 'INVALID_ARGUMENT')
    assert.equal((await rejection(n1.g.restoreSnapshot('v', 'none'))).code, 'SNAPSHOT_NOT_FOUND')
    assert.equal(c.forwarded(), 0, 'no call went to another node')
    assert.equal((await n1.g.replicationStatus('v')).role, 'primary')
  })

  it('a call that its own instance\'s close ends fails, and does not go on elsewhere', { timeout: 60_000 }, async () => {
    const c = await cluster()
    const [n1, n2] = c.nodes
    const held = holdStream(c)
    const call = observed(n1.g.createSnapshot('v', 's1'))
    await until('n1 took the snapshot and sent it to its copies', () => held() > 0, 20_000)
    await n1.g.close()
    heal(c)
    // Its own failure, as before (sent on, it failed BACKEND_UNAVAILABLE: no primary to reach from a closed node).
    const err = await rejection(call)
    assert.equal(err.code, 'WRITE_CONCERN_UNSATISFIED', err.message)
    assert.match(err.message, /was taken on node n1/)
    assert.equal(c.forwarded(), 0, 'the call did not go on at another node')
    await until('n2 or n3 took the role up', async () => ['n2', 'n3'].includes((await n2.g.replicationStatus('v')).primary ?? ''), 20_000)
  })
})

describe('h74: the tokens a volume\'s record keeps', () => {
  it('calls made on the primary (in a loop) never push out a forwarded call\'s token, nor the reverse', () => {
    let tokens = withToken(undefined, 'forwarded-1')
    for (let i = 0; i < CALL_TOKENS_KEPT + 8; i++) tokens = withToken(tokens, `${PRIMARY_TOKEN_PREFIX}${i}`)
    assert.ok(tokens.includes('forwarded-1'), 'the forwarded call\'s token is kept')
    assert.equal(tokens.filter((t) => t.startsWith(PRIMARY_TOKEN_PREFIX)).length, CALL_TOKENS_KEPT)
    assert.ok(tokens.includes(`${PRIMARY_TOKEN_PREFIX}${CALL_TOKENS_KEPT + 7}`), 'the newest is kept')
    for (let i = 0; i < CALL_TOKENS_KEPT + 1; i++) tokens = withToken(tokens, `forwarded-${i + 2}`)
    assert.ok(!tokens.includes('forwarded-1'), 'the oldest forwarded token goes once 32 newer ones came')
    assert.equal(tokens.length, 2 * CALL_TOKENS_KEPT)
  })
})

