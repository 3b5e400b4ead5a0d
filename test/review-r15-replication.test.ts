// Review r15 of 6c210c2 (limits of the replication stream and of forwarded calls), on the memory
// transport, where a request lost without a word (a silent drop rule) waits for its limit, as one
// to a stopped process does over tcp without keepalives, or to a copy whose node still answers but
// whose apply never finishes (a hung disk).
//
// 1. A stream batch's limit grows with the bytes ahead of it (30 s per 4 MiB on top of 5 s), and
//    it counts from the batch's send: a batch sent behind 4 MiB batches that the copy then
//    acknowledged becomes the oldest one with a limit of 65 s or more. A copy that stops answering
//    then stays in sync past the 60 s a WriteReplicated write waits for its copies, so the write
//    fails with WRITE_CONCERN_UNSATISFIED although another copy acknowledged it (before 6c210c2 the
//    copy was dropped from the in-sync list after 5 s and the write resolved).
// 2. A forwarded call's answer may take 75 s, longer than the 30 s the forwarder keeps trying
//    through a failover: a call whose request the old primary never answers times out after the
//    failover has named a new primary and is not sent to it (before: after 15 s, and sent again).

import { it } from 'node:test'
import assert from 'node:assert/strict'
import { WriteConcern } from '../src/index.js'
import { allInSync, diskCluster } from './support/disk-cluster.js'
import { until } from './support/wait.js'

const { cluster } = diskCluster('galleon-r15-repl-')
const KiB = 1024
const MiB = 1024 * KiB

it('a copy that stops acknowledging behind acknowledged 4 MiB batches is dropped before a WriteReplicated write gives up on it', async () => {
  const { network, nodes } = await cluster(3)
  const [n1] = nodes as [typeof nodes[0]]
  await n1.g.createVolume({ name: 'stream', sizeBytes: 32 * MiB, replicas: 3 })
  await until('all three copies are in sync', async () => await allInSync(n1.g, 'stream', 3), 60_000)
  // n3 takes the first batch of the burst, then every later one is lost without a word.
  let appliesToN3 = 0
  network.drop((m) => m.type === 'request' && m.kind === 'repl:apply' && m.to === 'n3' && ++appliesToN3 > 1, { silent: true })
  try {
    // Four 4 MiB batches in flight to each copy (the stream's window), sent together.
    await Promise.all([0, 1, 2, 3].map(async (i) => await n1.g.write('stream', i * 4 * MiB, new Uint8Array(4 * MiB).fill(0x10 + i), WriteConcern.WriteAcknowledged)))
    await until('n3 has taken the first batch', () => appliesToN3 > 1)
    const startedAt = Date.now()
    const outcome = await n1.g.write('stream', 20 * MiB, new Uint8Array(4 * KiB).fill(0x77), WriteConcern.WriteReplicated).then(() => 'acknowledged', (err: { code?: string, message?: string }) => `${err.code}: ${err.message}`)
    const seconds = ((Date.now() - startedAt) / 1000).toFixed(1)
    assert.equal(outcome, 'acknowledged', `after ${seconds} s, with n2 in sync and answering`)
    const status = await n1.g.replicationStatus('stream')
    assert.ok(!status.inSync.includes('n3'), `n3 is still listed in sync: ${status.inSync.join(', ')}`)
  } finally {
    network.drop(0)
  }
})

it('a read forwarded to a primary that never answers it goes to the new primary after the failover', async () => {
  const { network, nodes } = await cluster(3)
  const [n1, n2, n3] = nodes as [typeof nodes[0], typeof nodes[0], typeof nodes[0]]
  await n1.g.createVolume({ name: 'fwd', sizeBytes: 4 * MiB, replicas: 3 })
  await until('all three copies are in sync', async () => await allInSync(n1.g, 'fwd', 3), 60_000)
  await n1.g.write('fwd', 0, new Uint8Array(4 * KiB).fill(0x5a), WriteConcern.WriteReplicated)
  // Calls forwarded to n1 are lost without a word from now on; then n1 stops.
  let lostToN1 = 0
  network.drop((m) => m.type === 'request' && m.kind === 'repl:io' && m.to === 'n1' && ++lostToN1 > 0, { silent: true })
  try {
    const startedAt = Date.now()
    const reading = n3.g.read('fwd', 0, 4 * KiB).then((bytes) => bytes.every((b) => b === 0x5a) ? 'read' : 'wrong bytes', (err: { code?: string, message?: string }) => `${err.code}: ${err.message}`)
    await until('the forwarded read is lost on its way to n1', () => lostToN1 > 0)
    await n1.g.close()
    await until('n2 or n3 is the primary', async () => (await n2.g.replicationStatus('fwd')).primary !== 'n1', 30_000)
    const outcome = await reading
    const seconds = ((Date.now() - startedAt) / 1000).toFixed(1)
    assert.equal(outcome, 'read', `after ${seconds} s`)
  } finally {
    network.drop(0)
  }
})

// 9f80053: the memory network drops a node's bookkeeping set once nothing is in flight. Kill,
// close and partition must still fail what is in flight when the set was dropped and made again
// between requests (a set taken before and filled after would be a set the network no longer knows).
it('memory transport: kill, close and partition fail the requests in flight after a node\'s sets were dropped and made again', async () => {
  const { MemoryNetwork } = await import('../backends/memory/index.js')
  const network = new MemoryNetwork()
  const a = network.transport('a')
  const b = network.transport('b')
  const c = network.transport('c')
  const held: Array<() => void> = []
  const handler = async (_from: string, request: { kind: string }): Promise<{ kind: string, header: Record<string, unknown> }> => {
    if (request.kind === 'hold') await new Promise<void>((resolve) => { held.push(resolve) })
    return { kind: 'ok', header: {} }
  }
  await a.listen(handler)
  await b.listen(handler)
  await c.listen(handler)
  // The reason is checked too: a request nothing failed would end with the same code at its timeout.
  const outcome = async (p: Promise<unknown>): Promise<string> => await p.then(() => 'ok', (err: { code?: string, message?: string }) => `${String(err.code)}: ${String(err.message)}`)
  const roundTrips = async (): Promise<void> => {
    for (let i = 0; i < 3; i++) assert.equal(await outcome(a.request('b', { kind: 'quick', header: {} })), 'ok')
  }
  try {
    // Served by b: killed.
    await roundTrips()
    const servedByB = outcome(a.request('b', { kind: 'hold', header: {} }, { timeoutMs: 20_000 }))
    await until('b holds the request', () => held.length === 1)
    network.kill('b')
    assert.match(await servedByB, /^BACKEND_UNAVAILABLE: .*node b was killed while serving/)
    network.revive('b')
    // Sent by a, which is killed.
    await roundTrips()
    const sentByA = outcome(a.request('c', { kind: 'hold', header: {} }, { timeoutMs: 20_000 }))
    await until('c holds the request', () => held.length === 2)
    network.kill('a')
    assert.match(await sentByA, /^BACKEND_UNAVAILABLE: .*node a \(the sender\) was killed/)
    network.revive('a')
    // Served by b, which closes.
    await roundTrips()
    const closing = outcome(a.request('b', { kind: 'hold', header: {} }, { timeoutMs: 20_000 }))
    await until('b holds the request', () => held.length === 3)
    await b.close()
    assert.match(await closing, /^BACKEND_UNAVAILABLE: .*node b closed while serving/)
    // Served by c, then a and c partitioned: the reply is lost, the request fails at once.
    const parted = outcome(a.request('c', { kind: 'hold', header: {} }, { timeoutMs: 20_000 }))
    await until('c holds the request', () => held.length === 4)
    network.partition(['a'], ['c'])
    for (const release of held) release()
    assert.match(await parted, /^BACKEND_UNAVAILABLE: .*partitioned/)
    network.heal()
    assert.equal(await outcome(a.request('c', { kind: 'quick', header: {} })), 'ok')
  } finally {
    for (const release of held) release()
    await Promise.allSettled([a.close(), b.close(), c.close()])
  }
})
