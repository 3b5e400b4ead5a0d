// h90: a write forwarded to a replicated volume's primary whose answer was lost is sent again, to
// the same primary or (after a failover) the next. When the first attempt had taken effect and a
// later write to the same block resolved before the repeat came, the repeat wrote the old data over
// it: an acknowledged write lost, the first write taking effect twice (register order broken). Now a
// forwarded write carries its identity (its node's writer and a number), kept with the change on the
// primary and, through the stream, on every copy: a primary that holds it answers the repeat
// without writing again.
// The moments are hit deterministically with the memory network's fault injection: the primary's
// answer to the caller is lost (a connection reset), and the caller's repeats are lost on the way
// while the test makes its changes, until it lets them through. Each write's bytes name its writer
// and sequence number, so a read says whose write the block holds.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WriteConcern } from '../src/index.js'
import { observed } from './support/observed.js'
import { until } from './support/wait.js'
import { replicatedVolume } from './support/control-call-cluster.js'
import { namePrimary } from './support/replica-records.js'
import { diskCluster, type DiskNode } from './support/disk-cluster.js'
import { loseAnswer, stamped, stampOf as writerOf } from './support/forwarded-answers.js'
import { decodeChanges, encodeChanges } from '../src/replication/stream-codec.js'
import { OutgoingWrites, WriteLedger } from '../src/replication/forwarded-writes.js'

const kit = diskCluster('galleon-h90-')

describe('h90: a forwarded write whose answer was lost, sent again after a later write to its block resolved', () => {
  it('to the same primary: the later write stands (the first one took effect once)', { timeout: 60_000 }, async () => {
    const { network, nodes } = await kit.cluster(3)
    const [n1, n2, n3] = nodes as [DiskNode, DiskNode, DiskNode]
    await replicatedVolume(nodes, 3)
    const faults = loseAnswer(network, 'n2', true)
    const first = observed(n2.g.writeBlock('v', 5, stamped('n2', 1), WriteConcern.WriteReplicated))
    await until('the primary answered the first attempt (the answer lost)', () => faults.lost() > 0, 20_000)
    const seen = [writerOf(await n1.g.readBlock('v', 5))]
    await n3.g.writeBlock('v', 5, stamped('n3', 1), WriteConcern.WriteReplicated)
    seen.push(writerOf(await n1.g.readBlock('v', 5)))
    await until('n2 sent its write again', () => faults.repeats() > 0, 20_000)
    faults.release()
    await first
    network.drop(0)
    seen.push(writerOf(await n1.g.readBlock('v', 5)))
    assert.deepEqual(seen, ['n2#1', 'n3#1', 'n3#1'], 'n2#1 took effect before n3#1 was written and acknowledged; its repeat must not write it again')
    for (const node of [n2, n3]) await until(`${node.id}'s copy holds n3#1`, async () => writerOf(await node.g.readBlock('v', 5)) === 'n3#1', 20_000)
  })

  it('to the next primary after a failover: the later write stands', { timeout: 90_000 }, async () => {
    const { network, coordinators, nodes } = await kit.cluster(3)
    const [n1, n2, n3] = nodes as [DiskNode, DiskNode, DiskNode]
    const volumeId = await replicatedVolume(nodes, 3)
    const faults = loseAnswer(network, 'n2', true)
    // WriteReplicated: answered once the copies had applied it, so the next primary holds it.
    const first = observed(n2.g.writeBlock('v', 5, stamped('n2', 1), WriteConcern.WriteReplicated))
    await until('the primary answered the first attempt (the answer lost)', () => faults.lost() > 0, 20_000)
    assert.equal(writerOf(await n1.g.readBlock('v', 5)), 'n2#1')
    // The failover, to n3 (not the caller, which would serve its repeat itself at once).
    await namePrimary(coordinators, volumeId, 'n3')
    await until('n3 took up the primary role', async () => (await n3.g.replicationStatus('v')).role === 'primary', 20_000)
    assert.equal(writerOf(await n3.g.readBlock('v', 5)), 'n2#1', 'the next primary has the first write')
    await n3.g.writeBlock('v', 5, stamped('n3', 1), WriteConcern.WriteDurable)
    assert.equal(writerOf(await n3.g.readBlock('v', 5)), 'n3#1')
    const repeatsBefore = faults.repeats()
    await until('n2 sent its write again (to n3)', () => faults.repeats() > repeatsBefore, 20_000)
    faults.release()
    await first
    network.drop(0)
    assert.equal(writerOf(await n3.g.readBlock('v', 5)), 'n3#1', 'n3 held n2#1 already: its repeat must not write it again over n3#1')
  })
})

describe('h90: forwarded writes\' identities', () => {
  it('travel with their changes in the stream (writes and trims), and changes without one stay without', () => {
    const writer = { origin: 'n2/abcd1234', n: 7, low: 5 }
    const changes = [
      { seq: 1, change: { type: 'write' as const, offset: 0, data: new Uint8Array(8).fill(1), writer } },
      { seq: 2, change: { type: 'trim' as const, offset: 8, length: 8, writer: { ...writer, n: 8 } } },
      { seq: 3, change: { type: 'write' as const, offset: 16, data: new Uint8Array(8).fill(2) } }
    ]
    const { list, payload } = encodeChanges(changes)
    const decoded = decodeChanges(JSON.parse(JSON.stringify(list)), payload)
    assert.deepEqual(decoded.map((c) => 'writer' in c ? c.writer : undefined), [writer, { ...writer, n: 8 }, undefined])
    assert.throws(() => decodeChanges([{ t: 'w', o: 0, n: 0, wr: { origin: 'x', n: 0, low: 1 } }], new Uint8Array(0)), (err: { code?: string }) => err.code === 'INVALID_ARGUMENT')
  })

  it('a ledger holds the writes noted, refuses an attempt below its writer\'s lowest write under way, and forgets those below it', () => {
    const ledger = new WriteLedger()
    const a = (n: number, low: number): { origin: string, n: number, low: number } => ({ origin: 'n2/a', n, low })
    ledger.note(a(1, 1))
    ledger.note(a(2, 1))
    assert.equal(ledger.holds(a(1, 1)), true)
    assert.equal(ledger.holds(a(3, 1)), false)
    assert.equal(ledger.holds({ origin: 'n3/b', n: 1, low: 1 }), false, 'another writer\'s write 1 is another write')
    // Writer n2/a has every answer below 3 now: an attempt of 2 arriving late was given up on.
    assert.equal(ledger.stale(a(5, 3)), false)
    assert.equal(ledger.stale(a(2, 1)), true)
    const writes = new OutgoingWrites('n9')
    const first = writes.begin()
    const second = writes.begin()
    assert.deepEqual([first.n, first.low, second.n, second.low], [1, 1, 2, 1])
    writes.end(first)
    assert.equal(writes.begin().low, 2, 'the lowest write under way')
  })
})
