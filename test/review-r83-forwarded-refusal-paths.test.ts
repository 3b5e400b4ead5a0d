// Review r83 of 322c57a (h94): a node that loses the primary role while a forwarded write waits
// there refuses it instead of sending it on, and the node that made the write asks the primary
// itself. h94 covers a write that reaches a node already fenced; here the writes (a byte-range
// write, a writeBlock and a trim from n2) wait in n1's QoS throttle while n1 is the primary, n1's
// lease ends meanwhile, and they reach the engine afterwards (its refusal as the role moved, the
// catch branch in the I/O calls): n2's calls must resolve on the next primary, n1 must send none of
// them on, and the blocks must hold what n2 wrote.

import { it } from 'node:test'
import assert from 'node:assert/strict'
import { WriteConcern } from '../src/index.js'
import type { TransportMessage } from '../src/drivers.js'
import { MemoryCoordinatorCluster, MemoryTransport } from '../backends/memory/index.js'
import { observed } from './support/observed.js'
import { until } from './support/wait.js'
import { onFirstHandle, primaryCluster } from './support/control-call-cluster.js'
import { namePrimary } from './support/replica-records.js'
import { BS, diskCluster } from './support/disk-cluster.js'
import { stamped, stampOf } from './support/forwarded-answers.js'

const kit = diskCluster('galleon-r83-', { failoverWaitMs: 120_000 })

/**
 * Makes the first coordinator handle of `coordinators` (n1's) report lease changes to the test:
 * `end()` ends n1's lease, and from then on the coordinator's own reports (a renewal) are kept from
 * n1, so that it stays fenced.
 */
function leaseOfFirstHandle (coordinators: MemoryCoordinatorCluster): { end: () => void } {
  const listeners: Array<(held: boolean) => void> = []
  let ended = false
  onFirstHandle(coordinators, (handle) => {
    const on = handle.onLeaseChange.bind(handle)
    handle.onLeaseChange = (listener) => {
      listeners.push(listener)
      return on((held) => { if (!ended) listener(held) })
    }
  })
  return { end: () => { ended = true; for (const listener of listeners) listener(false) } }
}

/** What n1 answered each forwarded write (or trim) n2 sent it, in order of arrival: 'ok' or `CODE: message`. */
function answersAtN1 (): { arrived: (op: string) => number, answers: (op: string) => string[], restore: () => void } {
  const serve = MemoryTransport.prototype.serveFromNetwork
  const log: Array<{ op: string, answer?: string }> = []
  MemoryTransport.prototype.serveFromNetwork = async function (this: MemoryTransport, from: string, request: TransportMessage) {
    const op = request.header.op
    if (this.nodeId !== 'n1' || from !== 'n2' || request.kind !== 'repl:io' || (op !== 'write' && op !== 'writeBlock' && op !== 'trim')) return await serve.call(this, from, request)
    const entry: { op: string, answer?: string } = { op }
    log.push(entry)
    const outcome = await serve.call(this, from, request)
    entry.answer = outcome.ok ? 'ok' : `${outcome.code}: ${outcome.message}`
    return outcome
  }
  return {
    arrived: (op) => log.filter((e) => e.op === op).length,
    answers: (op) => log.filter((e) => e.op === op).map((e) => e.answer ?? 'pending'),
    restore: () => { MemoryTransport.prototype.serveFromNetwork = serve }
  }
}

it('forwarded writes held in the QoS throttle of a primary whose lease ends are refused there, not sent on, and resolve through the next primary', { timeout: 180_000 }, async () => {
  const coordinators = new MemoryCoordinatorCluster()
  const lease = leaseOfFirstHandle(coordinators)
  const { network, nodes, volumeId } = await primaryCluster(kit, coordinators)
  const [n1, n2, n3] = nodes
  assert.equal((await n1.g.replicationStatus('v')).role, 'primary')

  let relayed = 0
  network.drop((m) => {
    if (m.kind === 'repl:io' && m.from === 'n1' && m.type === 'request') relayed++
    return false
  })
  const served = answersAtN1()
  try {
    // 5 kB/s of writes, no burst: after 60 KiB written on n1, the next write waits about 12 s there.
    await n1.g.setQoSPolicy('v', { limits: { writeThroughputMBps: 0.005 } })
    await n1.g.write('v', BS, new Uint8Array(15 * BS).fill(0x11), WriteConcern.WriteAcknowledged)
    const range = new Uint8Array(BS / 2).fill(0x5a)
    // One at a time, so that each queues behind the one before (a throttle's lane goes in order).
    const byteRange = observed(n2.g.write('v', 13 * BS + BS / 4, range, WriteConcern.WriteDurable))
    await until('n1 got n2\'s byte-range write', () => served.arrived('write') === 1, 20_000)
    const oneBlock = observed(n2.g.writeBlock('v', 14, stamped('n2', 1), WriteConcern.WriteDurable))
    await until('n1 got n2\'s writeBlock', () => served.arrived('writeBlock') === 1, 20_000)
    const trimmed = observed(n2.g.trim('v', 15 * BS, BS))
    await until('n1 got n2\'s trim', () => served.arrived('trim') === 1, 20_000)
    // Still throttled on n1 (seconds of debt), none answered: n1's lease ends now.
    assert.deepEqual(['write', 'writeBlock', 'trim'].map((op) => served.answers(op)[0]), ['pending', 'pending', 'pending'], 'n1 answered a write before its lease ended: the throttle did not hold it')
    lease.end()
    await until('n1 is fenced', async () => (await n1.g.replicationStatus('v')).role === 'unknown', 20_000)
    // Admitted by the throttle, each reaches the engine as n1 no longer leads: refused, not sent on.
    await until('n1 answered the held attempts', () => ['write', 'writeBlock', 'trim'].every((op) => served.answers(op)[0] !== 'pending'), 60_000)
    for (const op of ['write', 'writeBlock', 'trim']) {
      assert.match(served.answers(op)[0] ?? '', /^NOT_LEADER: node n1 is not the primary of volume /, `n1's answer to the ${op} it held (n1's answers, in order: ${JSON.stringify(['write', 'writeBlock', 'trim'].map((o) => served.answers(o)))}; it sent ${relayed} on)`)
    }
    assert.equal(relayed, 0, 'n1 sent a forwarded write of n2\'s on')
    // n2 asks again (n1 refuses while the record names it), then goes to n3 once it is named.
    await namePrimary(coordinators, volumeId, 'n3')
    await until('n3 took up the primary role', async () => (await n3.g.replicationStatus('v')).role === 'primary', 20_000)
    await Promise.all([byteRange, oneBlock, trimmed])
    assert.equal(relayed, 0, 'n1 sent a forwarded write of n2\'s on')
    const at13 = await n3.g.read('v', 13 * BS, BS)
    assert.ok(at13.subarray(0, BS / 4).every((b) => b === 0x11) && at13.subarray(BS / 4, BS * 3 / 4).every((b) => b === 0x5a) && at13.subarray(BS * 3 / 4).every((b) => b === 0x11), 'block 13 holds n2\'s byte-range write over n1\'s')
    assert.equal(stampOf(await n3.g.readBlock('v', 14)), 'n2#1')
    assert.ok((await n3.g.readBlock('v', 15)).every((b) => b === 0), 'block 15 was trimmed')
  } finally {
    served.restore()
    network.drop(0)
  }
})
