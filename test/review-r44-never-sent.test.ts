// Review r44 of h87 (transport errors marked "never sent", isNotSent). The one thing that must never
// happen: a request marked never sent that may still reach the peer's handler (a forwarded call
// would then run twice, or be reported "not applied" when it was). Checked here against the
// peer's handler itself, on connections that stay up:
// - tcp: requests given up on (aborted) while queued behind a socket the peer stopped reading are
//   marked and taken back; once the peer reads again, none of the marked ones ever reaches its
//   handler, and every unmarked one (handed to the socket, maybe in part) does.
// - base class: a request given up on while it waited for in-flight budget (never handed to the
//   backend) is marked; the one in flight is not.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { isNotSent, type GalleonError, type TransportMessage } from '../src/index.js'
import { TcpTransport } from '../backends/tcp/index.js'
import { MemoryNetwork } from '../backends/memory/index.js'
import { failure } from './support/assertions.js'
import { until, within } from './support/wait.js'

const SECRET = 'r44-tcp-test-cluster-secret-0123456789'
const MiB = 1024 * 1024

/** A handler that records the `n` of each request and holds every answer until `open()`. */
function gatedHandler (): { seen: Set<number>, open: () => void, handler: (from: string, request: TransportMessage) => Promise<TransportMessage> } {
  const seen = new Set<number>()
  let opened = false
  const waiting: Array<() => void> = []
  return {
    seen,
    open: () => { opened = true; for (const w of waiting.splice(0)) w() },
    handler: async (_from, request) => {
      seen.add(request.header.n as number)
      if (!opened) await new Promise<void>((resolve) => { waiting.push(resolve) })
      return { kind: 'ok', header: {} }
    }
  }
}

describe('r44: a request marked never sent never reaches the peer\'s handler', { timeout: 60_000 }, () => {
  it('tcp: aborted while queued behind a full socket: marked, and never served once the peer reads on; those handed to the socket are unmarked and served', async () => {
    const gate = gatedHandler()
    // b stops reading past 1 MiB of requests being served: a's requests fill the kernels' buffers, then a's send queue.
    const b = new TcpTransport({ nodeId: 'b', clusterSecret: SECRET, host: '127.0.0.1', port: 0, maxInFlightBytes: MiB })
    const address = await b.listen(gate.handler)
    const a = new TcpTransport({ nodeId: 'a', clusterSecret: SECRET, host: '127.0.0.1', port: 0, maxInFlightBytes: 256 * MiB })
    try {
      const payload = new Uint8Array(4 * MiB)
      const aborts = new AbortController()
      const calls = Array.from({ length: 24 }, async (_, n) => await a.request(address, { kind: 'k', header: { n }, payload }, { signal: aborts.signal, timeoutMs: 50_000 }).then(() => undefined, (err: GalleonError) => err))
      await until('b serves a request and a has requests queued behind the full socket', () => gate.seen.size > 0 && a.stats().queuedBytes > 0)
      aborts.abort()
      const errors = await within('every request is given up on', Promise.all(calls))
      const marked: number[] = []
      const unmarked: number[] = []
      errors.forEach((err, n) => {
        assert.ok(err !== undefined && err.code === 'CANCELLED', `request ${n}: ${err?.message}`)
        if (isNotSent(err)) {
          marked.push(n)
          assert.equal(err.message, `the request to ${address} was aborted by its signal before it was sent; it was not applied`)
        } else {
          unmarked.push(n)
          assert.equal(err.message, `the request to ${address} was aborted by its signal; it may or may not have been applied`)
        }
      })
      assert.ok(marked.length > 0, 'some requests were still queued when they were given up on')
      assert.ok(unmarked.length > 0, 'some requests had been handed to the socket')
      // (What still waits to be written is the rest of a frame partly handed to the socket: unmarked.)
      assert.ok(a.stats().queuedBytes < 4 * MiB + 1024, `the marked requests were taken back from the send queue (${a.stats().queuedBytes} bytes queued)`)

      // b reads on; a last request on the same connection arrives after everything a wrote before it.
      gate.open()
      assert.equal(a.stats().outboundConnections, 1)
      await within('the last request is answered', a.request(address, { kind: 'k', header: { n: 1000 } }))
      assert.equal(a.stats().outboundConnections, 1, 'it went on the same connection')
      for (const n of marked) assert.ok(!gate.seen.has(n), `request ${n} is marked never sent but reached b's handler`)
      for (const n of unmarked) assert.ok(gate.seen.has(n), `request ${n} was handed to the socket: it reached b`)
    } finally {
      await a.close()
      await b.close()
    }
  })

  it('waiting for in-flight budget, given up on: marked (never handed to the backend); the request in flight: not marked', async () => {
    const network = new MemoryNetwork()
    const gate = gatedHandler()
    const b = network.transport('b')
    await b.listen(gate.handler)
    const a = network.transport('a', { maxInFlightBytes: 1024 })
    try {
      const payload = new Uint8Array(1000)
      const first = new AbortController()
      const second = new AbortController()
      const inFlight = failure(a.request('b', { kind: 'k', header: { n: 1 }, payload }, { signal: first.signal }))
      const waiting = failure(a.request('b', { kind: 'k', header: { n: 2 }, payload }, { signal: second.signal }))
      await until('b serves the first request', () => gate.seen.has(1))
      second.abort()
      const notSent = await waiting
      assert.equal(notSent.code, 'CANCELLED')
      assert.equal(isNotSent(notSent), true, notSent.message)
      assert.match(notSent.message, /before it was sent; it was not applied$/)
      first.abort()
      const maybe = await inFlight
      assert.equal(isNotSent(maybe), false, maybe.message)
      gate.open()
      await a.request('b', { kind: 'k', header: { n: 3 } })
      assert.deepEqual([...gate.seen].sort(), [1, 3], 'the request given up on while waiting never reached b')
    } finally {
      await a.close()
      await b.close()
    }
  })
})
