// h87 (review r41): a request the sending node's own transport proves it never sent. The tcp
// transport writes a request only on a connection in its 'ready' state, so one that fails with
// "cannot connect to X" or "the handshake with X failed", or that was still queued behind a full
// socket when the connection broke, never reached the peer; the memory transport's "no node is
// listening at X" likewise. Such errors are marked (isNotSent), per request: one that was handed
// to a socket (or delivered to the peer's handler) stays unmarked, "may have been applied".
// ReplicationManager.forward took these failures for attempts that may have taken effect, so a
// control call whose first attempt found the primary's address refusing connections was sent
// again as a repeat (a deleteSnapshot of a snapshot that never existed answered success, a
// shrinking expandVolume success), and one that gave up said "it may have taken effect there".

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { GalleonFS, WriteConcern, isNotSent, type GalleonError, type TransportMessage } from '../src/index.js'
import type { TransportRequestOptions } from '../src/drivers.js'
import { TcpTransport, type TcpTransportOptions } from '../backends/tcp/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { failure, outcomeOf } from './support/assertions.js'
import { BS, allInSync, block, diskCluster, type DiskNode } from './support/disk-cluster.js'
import { until, within } from './support/wait.js'

const SECRET = 'h87-tcp-test-cluster-secret'
const MiB = 1024 * 1024

function tcp (nodeId: string, options: Partial<TcpTransportOptions> = {}): TcpTransport {
  return new TcpTransport({ nodeId, clusterSecret: SECRET, host: '127.0.0.1', port: 0, ...options })
}

/** A plain TCP server that does `onConnection` with each connection (and destroys them on close). */
async function rawServer (onConnection: (socket: Socket) => void): Promise<{ address: string, close: () => Promise<void> }> {
  const sockets = new Set<Socket>()
  const server: Server = createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => {})
    socket.once('close', () => { sockets.delete(socket) })
    onConnection(socket)
  })
  await new Promise<void>((resolve) => { server.listen(0, '127.0.0.1', resolve) })
  const address = `127.0.0.1:${(server.address() as AddressInfo).port}`
  return { address, close: async () => { for (const s of sockets) s.destroy(); await new Promise<void>((resolve) => { server.close(() => { resolve() }) }) } }
}

/** An address on which nothing listens (a port just freed). */
async function deadAddress (): Promise<string> {
  const server = await rawServer((socket) => { socket.destroy() })
  await server.close()
  return server.address
}

describe('h87: the tcp transport marks, per request, the failures of requests it never sent', { timeout: 60_000 }, () => {
  it('nothing listening: "cannot connect" is marked never sent', async () => {
    const a = tcp('a')
    try {
      const address = await deadAddress()
      const err = await failure(a.request(address, { kind: 'k', header: {} }))
      assert.equal(err.code, 'BACKEND_UNAVAILABLE')
      assert.match(err.message, /^cannot connect to 127\.0\.0\.1:\d+: .*; is the node running and listening there\?$/)
      assert.equal(isNotSent(err), true, err.message)
    } finally {
      await a.close()
    }
  })

  it('the handshake fails (the peer hangs up before it), or the request gives up during the handshake: marked never sent', async () => {
    const a = tcp('a')
    const hangsUp = await rawServer((socket) => { socket.destroy() })
    const silent = await rawServer(() => {}) // accepts, never answers HELLO
    try {
      const err = await failure(a.request(hangsUp.address, { kind: 'k', header: {} }))
      assert.equal(err.code, 'BACKEND_UNAVAILABLE')
      assert.match(err.message, /the handshake with 127\.0\.0\.1:\d+ failed|cannot connect to/)
      assert.equal(isNotSent(err), true, err.message)

      const timedOut = await failure(a.request(silent.address, { kind: 'k', header: {} }, { timeoutMs: 200 }))
      assert.equal(timedOut.code, 'BACKEND_UNAVAILABLE')
      assert.match(timedOut.message, /the request was never sent/)
      assert.equal(isNotSent(timedOut), true, timedOut.message)

      const aborts = new AbortController()
      const aborted = failure(a.request(silent.address, { kind: 'k', header: {} }, { signal: aborts.signal }))
      await until('a dialled the silent server again', () => a.stats().outboundConnections === 1)
      aborts.abort()
      const cancelled = await aborted
      assert.equal(cancelled.code, 'CANCELLED')
      assert.equal(isNotSent(cancelled), true, cancelled.message)
    } finally {
      await a.close()
      await hangsUp.close()
      await silent.close()
    }
  })

  it('a request written on a live connection that then breaks is NOT marked; one still queued behind the full socket is', async () => {
    // b holds every request (never answers) and, past 1 MiB being served, stops reading: a's
    // requests pile up in the kernels' buffers and then in a's send queue.
    const seen = new Set<number>()
    const b = tcp('b', { maxInFlightBytes: MiB })
    const address = await b.listen(async (_from, request) => {
      seen.add(request.header.n as number)
      return await new Promise<TransportMessage>(() => {})
    })
    const a = tcp('a', { maxInFlightBytes: 256 * MiB })
    try {
      const payload = new Uint8Array(4 * MiB)
      const calls = Array.from({ length: 24 }, async (_, n) => await a.request(address, { kind: 'k', header: { n }, payload }, { timeoutMs: 50_000 }).then(() => undefined, (err: GalleonError) => err))
      await until('b is serving a request and a has requests queued behind the full socket', () => seen.size > 0 && a.stats().queuedBytes > 0)
      await b.close() // the connection breaks under a's requests
      const errors = await within('every request fails', Promise.all(calls))
      const marked: number[] = []
      errors.forEach((err, n) => {
        assert.ok(err !== undefined && err.code === 'BACKEND_UNAVAILABLE', `request ${n}: ${err?.message}`)
        if (isNotSent(err)) {
          marked.push(n)
          assert.match(err.message, /before the request was sent; it was not applied/)
          assert.ok(!seen.has(n), `request ${n} reached b's handler but is marked never sent`)
        } else {
          assert.match(err.message, /may or may not have been applied/)
        }
      })
      for (const n of seen) assert.equal(isNotSent(errors[n]), false, `request ${n} reached b's handler`)
      // Some were still queued (never handed to the socket): those are known not to have gone.
      assert.ok(marked.length > 0, 'some requests were still queued when the connection broke')
      assert.ok(marked.length < errors.length, 'the ones handed to the socket are not marked')
    } finally {
      await a.close()
      await b.close()
    }
  })
})

describe('h87: the memory transport marks the failures of requests that went nowhere', { timeout: 60_000 }, () => {
  it('no listener: marked; given up on before it arrived: marked; delivered, then its reply lost or its server killed: not marked', async () => {
    const net = new MemoryNetwork()
    const a = net.transport('a')
    const b = net.transport('b')
    let gate: (() => void) | undefined
    let served = 0
    await b.listen(async () => {
      served++
      await new Promise<void>((resolve) => { gate = resolve })
      return { kind: 'ok', header: {} }
    })
    try {
      const nobody = await failure(a.request('c', { kind: 'k', header: {} }))
      assert.equal(nobody.message, 'no node is listening at c on this memory network')
      assert.equal(isNotSent(nobody), true)

      // Aborted before the network delivered it: b's handler never runs.
      const aborts = new AbortController()
      const early = failure(a.request('b', { kind: 'k', header: {} }, { signal: aborts.signal }))
      aborts.abort()
      const cancelled = await early
      assert.equal(cancelled.code, 'CANCELLED')
      assert.equal(isNotSent(cancelled), true, cancelled.message)
      assert.equal(served, 0)

      // Delivered (b's handler runs), then the reply is lost to a partition.
      const partitioned = failure(a.request('b', { kind: 'k', header: {} }))
      await until('b serves the request', () => served === 1)
      net.partition(['a'], ['b'])
      gate?.()
      const lost = await partitioned
      assert.match(lost.message, /reply to "k" from b to a lost: b and a are partitioned/)
      assert.equal(isNotSent(lost), false, lost.message)
      net.heal()

      // Delivered, then aborted while served: may have been applied.
      const late = new AbortController()
      const abortedLate = failure(a.request('b', { kind: 'k', header: {} }, { signal: late.signal }))
      await until('b serves the second request', () => served === 2)
      late.abort()
      assert.equal(isNotSent(await abortedLate), false)
      gate?.()

      // Delivered, then b killed while serving it.
      const killed = failure(a.request('b', { kind: 'k', header: {} }))
      await until('b serves the third request', () => served === 3)
      net.kill('b')
      const killedErr = await killed
      assert.match(killedErr.message, /node b was killed while serving the request/)
      assert.equal(isNotSent(killedErr), false, killedErr.message)
      gate?.()
    } finally {
      net.reset()
      gate?.()
      await a.close()
      await b.close()
    }
  })
})

// ------------------------------------------------------------------ forward() end to end

const kit = diskCluster('galleon-h87-')

/** A node's memory transport that records the failures of the repl:io messages it sends. */
class SenderTransport extends MemoryTransport {
  readonly ioFailures: GalleonError[] = []
  override async request (address: string, message: TransportMessage, options?: TransportRequestOptions): Promise<TransportMessage> {
    try {
      return await super.request(address, message, options)
    } catch (err) {
      if (message.kind === 'repl:io') this.ioFailures.push(err as GalleonError)
      throw err
    }
  }

  /** How many repl:io messages failed with a "never sent" error (nothing listening at `to`). */
  neverSent (to: string): number {
    return this.ioFailures.filter((e) => isNotSent(e) && e.message === `no node is listening at ${to} on this memory network`).length
  }
}


const NOT_FOUND = { code: 'SNAPSHOT_NOT_FOUND', message: 'volume v has no snapshot with id or name "never-taken"; listSnapshots() shows its snapshots' }
const SHRINK = { code: 'INVALID_ARGUMENT', message: `volume v is ${16 * BS} bytes; shrinking to ${8 * BS} would destroy data and is not supported. Create a smaller volume and copy the data instead` }

describe('h87: a control call forwarded while the primary\'s address refuses connections is not "outcome unknown"', { timeout: 120_000 }, () => {
  it('deleteSnapshot of a snapshot that never existed is SNAPSHOT_NOT_FOUND, a shrink INVALID_ARGUMENT, once the primary is back; a call given up on does not say it may have taken effect', async () => {
    const network = new MemoryNetwork()
    // Leases outlast n1's absence (no failover: the record keeps naming n1), and their timers do
    // not keep the process alive after the test.
    const coordinators = new MemoryCoordinatorCluster({ clock: { now: () => Date.now(), setTimeout: (callback, ms) => setTimeout(callback, ms).unref(), clearTimeout: (handle) => { clearTimeout(handle as NodeJS.Timeout) } } })
    const open = async (id: string, dir: string, transport: MemoryTransport): Promise<DiskNode> => {
      const g = kit.track(await GalleonFS.open({ storagePath: dir, cluster: { nodeId: id, transport, coordinator: coordinators.coordinator(), leaseTtlMs: 60_000 } }))
      return { g, id, dir, events: [] }
    }
    const n1 = await open('n1', await kit.tempDir('galleon-h87-n1-'), new MemoryTransport({ network, nodeId: 'n1' }))
    const t2 = new SenderTransport({ network, nodeId: 'n2' })
    const t3 = new SenderTransport({ network, nodeId: 'n3' })
    const n2 = await open('n2', await kit.tempDir('galleon-h87-n2-'), t2)
    const n3 = await open('n3', await kit.tempDir('galleon-h87-n3-'), t3)
    await until('every node sees every other', () => [n1, n2, n3].every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 3))
    await n1.g.createVolume({ name: 'v', sizeBytes: 16 * BS, replicas: 3 })
    await n1.g.writeBlock('v', 0, block(1), WriteConcern.WriteReplicated)
    await until('every copy is in sync', async () => await allInSync(n1.g, 'v', 3), 20_000)
    // With the primary up, the forwarded calls get its answers.
    assert.deepEqual(await outcomeOf(n2.g.deleteSnapshot('v', 'never-taken')), NOT_FOUND)
    assert.deepEqual(await outcomeOf(n2.g.expandVolume('v', 8 * BS)), SHRINK)

    // n1 closes: nothing listens at its address; its lease (and so its primary role in the record) lasts.
    await n1.g.close({ handOver: false })
    t2.ioFailures.length = 0
    t3.ioFailures.length = 0
    const deleted = outcomeOf(n2.g.deleteSnapshot('v', 'never-taken'))
    const shrunk = outcomeOf(n2.g.expandVolume('v', 8 * BS))
    const givenUp = outcomeOf(n3.g.deleteSnapshot('v', 'also-never-taken'))
    await until('the calls of n2 and n3 found nothing listening at n1, more than once each', () => t2.neverSent('n1') >= 4 && t3.neverSent('n1') >= 2)
    assert.deepEqual([...new Set([...t2.ioFailures, ...t3.ioFailures].map((e) => `${e.code}: ${e.message}`))], ['BACKEND_UNAVAILABLE: no node is listening at n1 on this memory network'])

    // n3 closes while its call still waits for a primary: the call gives up. Nothing it sent went anywhere.
    await n3.g.close()
    const gaveUp = await within('n3\'s call ends once n3 is closed', givenUp)
    assert.ok(['NOT_OPEN', 'BACKEND_UNAVAILABLE'].includes(gaveUp.code), `${gaveUp.code}: ${gaveUp.message}`)
    // Before h87: 'snapshot also-never-taken of volume v may or may not have been deleted: ...
    // (an earlier attempt of this call reached node n1, which did not answer it: it may have taken effect there)'.
    assert.ok(!gaveUp.message.includes('may have taken effect') && !gaveUp.message.includes('may or may not'), gaveUp.message)

    // n1 comes back on its data: n2's calls reach it as first attempts.
    const back = await open('n1', n1.dir, new MemoryTransport({ network, nodeId: 'n1' }))
    // Before h87: 'ok' for both (answered as repeats of attempts that were never sent).
    assert.deepEqual({ deleteSnapshot: await within('n2\'s deleteSnapshot answers', deleted), expandVolume: await within('n2\'s expandVolume answers', shrunk) }, { deleteSnapshot: NOT_FOUND, expandVolume: SHRINK })
    assert.equal((await back.g.getVolume('v')).sizeBytes, 16 * BS)
    assert.equal((await n2.g.getVolume('v')).sizeBytes, 16 * BS)
  })
})
