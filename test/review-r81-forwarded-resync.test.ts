// Review r81 of h90 (ffe193f): a forwarded write's identity reaches a copy with the change, in the
// stream. A copy that got the change by a resync instead (its link was down when the primary
// recorded it) must know it holds the write too: after a failover to that copy, a repeat of the
// write (its first answer lost) must not write it again over a later write to its block.
// The moments are made with the memory network's fault injection: the stream to n3 is cut while the
// write is recorded (n3 then gets it by a resync), the primary's answer to the caller is lost, and
// the caller's repeats are held until the test lets them through.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WriteConcern } from '../src/index.js'
import { observed } from './support/observed.js'
import { until } from './support/wait.js'
import { replicatedVolume } from './support/control-call-cluster.js'
import { namePrimary } from './support/replica-records.js'
import { WriteLedger } from '../src/replication/forwarded-writes.js'
import { allInSync, diskCluster, type DiskNode } from './support/disk-cluster.js'
import { loseAnswer, stamped, stampOf as writerOf } from './support/forwarded-answers.js'

const kit = diskCluster('galleon-r81-resync-')

describe('review r81: a forwarded write a copy got by a resync, sent again after a failover to that copy', () => {
  it('is not written again over a later write to its block', { timeout: 90_000 }, async () => {
    const { network, coordinators, nodes } = await kit.cluster(3)
    const [n1, n2, n3] = nodes as [DiskNode, DiskNode, DiskNode]
    const volumeId = await replicatedVolume(nodes, 3)
    assert.equal((await n1.g.replicationStatus('v')).role, 'primary')
    let streamCut = true
    let resyncs = 0
    const answer = loseAnswer(network, 'n2', true, false)
    network.drop((m) => {
      if (m.kind === 'repl:resync-end' && m.type === 'request' && m.to === 'n3') resyncs++
      // n1's stream to n3: its batches fail while cut (the link goes down, and comes back by a resync).
      if (m.kind === 'repl:apply' && m.type === 'request' && m.to === 'n3') return streamCut
      return answer.drops(m)
    })
    const first = observed(n2.g.writeBlock('v', 5, stamped('n2', 1), WriteConcern.WriteAcknowledged))
    await until('the primary answered the first attempt (the answer lost)', () => answer.lost() > 0, 20_000)
    assert.equal(writerOf(await n1.g.readBlock('v', 5)), 'n2#1')
    streamCut = false
    await until('n3 is back in sync (by a resync)', async () => await allInSync(n1.g, 'v', 3), 30_000)
    assert.ok(resyncs > 0, 'n3 came back by a resync')
    assert.equal(writerOf(await n3.g.readBlock('v', 5)), 'n2#1', 'n3 got the write by its resync')
    await namePrimary(coordinators, volumeId, 'n3')
    await until('n3 took up the primary role', async () => (await n3.g.replicationStatus('v')).role === 'primary', 20_000)
    await n3.g.writeBlock('v', 5, stamped('n3', 1), WriteConcern.WriteDurable)
    assert.equal(writerOf(await n3.g.readBlock('v', 5)), 'n3#1')
    const repeatsBefore = answer.repeats()
    await until('n2 sent its write again (to n3)', () => answer.repeats() > repeatsBefore, 20_000)
    answer.release()
    await first
    network.drop(0)
    assert.equal(writerOf(await n3.g.readBlock('v', 5)), 'n3#1', 'n3 held n2#1 already (by its resync): its repeat must not write it again over n3#1')
  })
})

describe('review r81: a ledger handed on by a resync', () => {
  it('holds exactly what the primary held at the cut, and leaves out malformed entries', () => {
    const primary = new WriteLedger()
    primary.note({ origin: 'n2/a', n: 3, low: 2 })
    primary.note({ origin: 'n4/b', n: 1, low: 1 })
    const copy = new WriteLedger()
    copy.note({ origin: 'n9/own', n: 1, low: 1 })
    copy.replace(JSON.parse(JSON.stringify([...primary.entries(), null, { origin: 'x' }, { origin: 'y', low: 1, held: ['1', -1] }])))
    assert.equal(copy.holds({ origin: 'n2/a', n: 3, low: 2 }), true)
    assert.equal(copy.holds({ origin: 'n4/b', n: 1, low: 1 }), true)
    assert.equal(copy.stale({ origin: 'n2/a', n: 1, low: 1 }), true, 'the writer\'s lowest write under way comes along')
    assert.equal(copy.holds({ origin: 'n9/own', n: 1, low: 1 }), false, 'a write the resync undid is not held')
    assert.doesNotThrow(() => copy.replace('nonsense'))
  })
})
