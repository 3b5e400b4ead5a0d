// h94: daemon-chaos seed 5 lost two acknowledged writes to an older one. A node (c1) forwarded a
// write to the primary (c2) just as c2 was stopped (SIGSTOP); c1's attempt was given up on at the
// failover and the write ran on the next primary. When c2 went on, it still held the request, found
// itself fenced (its lease had ended) and sent the write on to the primary of the day with c1's
// identity, retrying for its own failover wait: that primary, which had the write, refused each
// attempt as stale (c1 had moved on), until it was restarted (its ledger of identities is kept in
// memory) and wrote the old data over the later writes to those blocks.
// Here, in process: n1 is the primary, n2 forwards a write to it and n1 gets the request only once
// its lease has ended (the coordinator tells it so); the failover to n3 is named in the record,
// n3's answers to n1 are held until n3 has the later writes, and n3 restarts.

import { it } from 'node:test'
import assert from 'node:assert/strict'
import { WriteConcern } from '../src/index.js'
import type { TransportMessage } from '../src/drivers.js'
import { MemoryCoordinatorCluster, MemoryTransport } from '../backends/memory/index.js'
import { observed } from './support/observed.js'
import { until } from './support/wait.js'
import { onFirstHandle, primaryCluster } from './support/control-call-cluster.js'
import { namePrimary } from './support/replica-records.js'
import { diskCluster } from './support/disk-cluster.js'
import { stamped, stampOf } from './support/forwarded-answers.js'

const kit = diskCluster('galleon-h94-', { failoverWaitMs: 120_000 })

/** Makes the first coordinator handle of `coordinators` (n1's, when n1 starts first) report its lease changes to the test: `tell(false)` is n1's lease ending. */
function leaseOfFirstHandle (coordinators: MemoryCoordinatorCluster): { tell: (held: boolean) => void } {
  const listeners: Array<(held: boolean) => void> = []
  onFirstHandle(coordinators, (handle) => {
    const on = handle.onLeaseChange.bind(handle)
    handle.onLeaseChange = (listener) => { listeners.push(listener); return on(listener) }
  })
  return { tell: (held) => { for (const listener of listeners) listener(held) } }
}

/** Holds n1's handling of the first forwarded write of block `index` until `release()`; `done` once n1 has handled it. */
function holdAtN1 (index: number): { held: () => boolean, release: () => void, done: () => boolean, restore: () => void } {
  const serve = MemoryTransport.prototype.serveFromNetwork
  let held = false
  let done = false
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  MemoryTransport.prototype.serveFromNetwork = async function (this: MemoryTransport, from: string, request: TransportMessage) {
    if (held || this.nodeId !== 'n1' || request.kind !== 'repl:io' || request.header.op !== 'writeBlock' || request.header.index !== index) return await serve.call(this, from, request)
    held = true
    await gate
    try {
      return await serve.call(this, from, request)
    } finally {
      done = true
    }
  }
  return { held: () => held, release: () => { release() }, done: () => done, restore: () => { MemoryTransport.prototype.serveFromNetwork = serve } }
}

it('a forwarded write a fenced primary gets late is not sent on after its node moved on: a later write to its block stands', { timeout: 180_000 }, async () => {
  const coordinators = new MemoryCoordinatorCluster()
  const lease = leaseOfFirstHandle(coordinators)
  const { network, nodes, volumeId } = await primaryCluster(kit, coordinators)
  const [n1, n2] = nodes
  let n3 = nodes[2]
  assert.equal((await n1.g.replicationStatus('v')).role, 'primary')

  // n3's links to the other copies stay down (so that only n3 is in sync and a restart of n3 fails
  // nothing over), and n1's attempts on n3 are lost while `n1Cut` is set.
  let n1Cut = true
  let n1Attempts = 0
  let n3AnsweredN1 = 0
  network.drop((m) => {
    if (m.from === 'n3' && m.to !== 'n3' && m.type === 'request' && m.kind.startsWith('repl:') && m.kind !== 'repl:io') return true
    if (m.kind === 'repl:io' && m.from === 'n1' && m.to === 'n3' && m.type === 'request') { n1Attempts++; return n1Cut }
    if (m.kind === 'repl:io' && m.from === 'n3' && m.to === 'n1' && m.type === 'reply') n3AnsweredN1++
    return false
  })

  const hold = holdAtN1(5)
  try {
    const first = observed(n2.g.writeBlock('v', 5, stamped('n2', 1), WriteConcern.WriteDurable))
    await until('n1 got n2\'s write (held)', () => hold.held(), 20_000)
    // n1's lease ends (as when its process was stopped): it serves nothing until it holds a new one.
    lease.tell(false)
    await until('n1 is fenced', async () => (await n1.g.replicationStatus('v')).role === 'unknown', 20_000)
    hold.release()
    // The failover: n2's write goes to n3, which writes it.
    await namePrimary(coordinators, volumeId, 'n3')
    await until('n3 took up the primary role', async () => (await n3.g.replicationStatus('v')).role === 'primary', 20_000)
    await first
    assert.equal(stampOf(await n3.g.readBlock('v', 5)), 'n2#1')
    await until('n1 sent n2\'s write on to n3, or is done with it', () => n1Attempts > 0 || hold.done(), 20_000)
    // A later write to the block, acknowledged; then another write of n2's (n2 has every answer below it).
    await n3.g.writeBlock('v', 5, stamped('n3', 1), WriteConcern.WriteDurable)
    await n2.g.writeBlock('v', 6, stamped('n2', 2), WriteConcern.WriteDurable)
    assert.equal(stampOf(await n3.g.readBlock('v', 5)), 'n3#1')
    n1Cut = false
    // (n3 holds the write, but n2 has moved on: n3 refuses such an attempt, and n1 tries again.)
    if (n1Attempts > 0) await until('n3 answered an attempt of n1\'s', () => n3AnsweredN1 > 0, 20_000)
    // n3 restarts (within its lease, as the record's primary): it takes the role up again.
    await n3.g.close({ handOver: false })
    n3 = await kit.startNode(network, coordinators, 'n3', n3.dir)
    await until('n3 took up the primary role again', async () => (await n3.g.replicationStatus('v')).role === 'primary', 30_000)
    await until('n1 is done with n2\'s write', () => hold.done(), 150_000)
    assert.equal(stampOf(await n3.g.readBlock('v', 5)), 'n3#1', `n2#1 was acknowledged before n3#1 was written and acknowledged, yet it is what the block holds: n1 sent n2#1 on to n3 ${n1Attempts} times`)
  } finally {
    hold.restore()
    network.drop(0)
  }
})
