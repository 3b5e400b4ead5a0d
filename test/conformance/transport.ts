// Conformance suite for Transport drivers: `transportSuite()` registers the same node:test tests for
// any backend. Every test builds its own nodes (unique node ids) and closes them afterwards.

import assert from 'node:assert/strict'
import * as nodeTest from 'node:test'
import type { Transport, TransportHandler, TransportMessage } from '../../src/drivers.js'
import { GalleonError, type GalleonErrorCode } from '../../src/errors.js'
import { assertBytes, bytesOf, seededRandom } from './fixtures.js'

/** Options of {@link transportSuite}. */
export interface TransportSuiteOptions {
  /** Backend name, used in test titles. */
  name: string
  /**
   * Creates a transport for `nodeId`, not yet listening. With `options.address`, its `listen()`
   * must listen at that address again (where a previous transport of the same node listened), so a
   * restarted node is found where it was.
   */
  factory: (nodeId: string, options: { address?: string }) => Transport | Promise<Transport>
  /** The `test` function to register with (default: node:test's). */
  test?: typeof nodeTest.test
  /** The `describe` function to group with (default: node:test's). */
  describe?: typeof nodeTest.describe
}

/** A transport the harness created, with the address it listens at (if it does). */
interface Node {
  transport: Transport
  address: string
}

interface Harness {
  /** A transport for a fresh node id derived from `label`, listening with `handler` unless it is undefined. */
  node: (label: string, handler?: TransportHandler) => Promise<Node>
  /** A transport for an existing node id, listening at `address` again. */
  restart: (nodeId: string, address: string, handler: TransportHandler) => Promise<Node>
}

/** A promise with its resolve function, for handlers that wait on the test. */
function gate (): { promise: Promise<void>, open: () => void } {
  let open = (): void => {}
  const promise = new Promise<void>((resolve) => { open = resolve })
  return { promise, open }
}

/** Resolves once `predicate` holds (polled), or fails after `ms` as a bound, not a measurement. */
async function until (predicate: () => boolean, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!predicate()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

async function rejectsWith (promise: Promise<unknown>, code: GalleonErrorCode, messageIncludes?: string): Promise<GalleonError> {
  let caught: unknown
  try {
    await promise
  } catch (err) {
    caught = err
  }
  assert.ok(caught instanceof GalleonError, `expected a GalleonError ${code}, got ${caught === undefined ? 'success' : String(caught)}`)
  assert.equal(caught.code, code, `expected ${code}, got ${caught.code}: ${caught.message}`)
  if (messageIncludes !== undefined) assert.ok(caught.message.includes(messageIncludes), `message should name ${messageIncludes}: ${caught.message}`)
  return caught
}

const echo: TransportHandler = async (from, request) => ({
  kind: `${request.kind}:reply`,
  header: { from, request: request.header },
  payload: request.payload
})

/**
 * Registers the Transport conformance tests for one backend. A backend is conformant when all pass:
 *
 * ```ts
 * transportSuite({ name: 'mine', factory: (nodeId, { address }) => new MyTransport({ nodeId, address }) })
 * ```
 */
export function transportSuite (options: TransportSuiteOptions): void {
  const { name, factory } = options
  const test = options.test ?? nodeTest.test
  const describe = options.describe ?? nodeTest.describe
  let testNumber = 0

  function transportTest (title: string, body: (harness: Harness) => Promise<void>): void {
    test(title, { timeout: 120_000 }, async () => {
      const prefix = `t${++testNumber}-${Math.random().toString(36).slice(2, 8)}`
      const created: Transport[] = []
      const harness: Harness = {
        node: async (label, handler) => {
          const transport = await factory(`${prefix}-${label}`, {})
          created.push(transport)
          const address = handler === undefined ? '' : await transport.listen(handler)
          return { transport, address }
        },
        restart: async (nodeId, address, handler) => {
          const transport = await factory(nodeId, { address })
          created.push(transport)
          return { transport, address: await transport.listen(handler) }
        }
      }
      try {
        await body(harness)
      } finally {
        await Promise.all(created.map(async (transport) => { await transport.close() }))
      }
    })
  }

  describe(`Transport conformance: ${name}`, () => {
    transportTest('request and reply carry kind, header and payload; from is the sender', async ({ node }) => {
      const server = await node('server', echo)
      const client = await node('client')
      assert.equal(typeof server.address, 'string')
      assert.ok(server.address.length > 0)
      const reply = await client.transport.request(server.address, { kind: 'ping', header: { n: 1, nested: { list: [1, 'two', null], ok: true } }, payload: Uint8Array.from([1, 2, 3]) })
      assert.equal(reply.kind, 'ping:reply')
      assert.deepEqual(reply.header, { from: client.transport.nodeId, request: { n: 1, nested: { list: [1, 'two', null], ok: true } } })
      assertBytes(reply.payload, Uint8Array.from([1, 2, 3]), 'reply payload')
    })

    transportTest('payloads of 0 bytes, absent, small and several MiB arrive intact both ways', async ({ node }) => {
      const seen: number[] = []
      const server = await node('server', async (_from, request) => {
        assert.ok(request.payload instanceof Uint8Array, 'the handler always gets a Uint8Array payload')
        seen.push(request.payload.byteLength)
        // Answer with a different pattern of the same size, so both directions are checked.
        return { kind: 'r', header: { size: request.payload.byteLength }, payload: bytesOf(request.payload.byteLength, 99) }
      })
      const client = await node('client')
      const absent = await client.transport.request(server.address, { kind: 'x', header: {} })
      assert.equal(absent.payload?.byteLength ?? 0, 0)
      for (const size of [0, 1, 4096, 65_537, 3 * 1024 * 1024 + 7, 9 * 1024 * 1024]) {
        const payload = bytesOf(size, size)
        const reply = await client.transport.request(server.address, { kind: 'x', header: { size }, payload }, { timeoutMs: 60_000 })
        assert.deepEqual(reply.header, { size })
        assertBytes(reply.payload ?? new Uint8Array(0), bytesOf(size, 99), `reply of ${size} bytes`)
      }
      assert.deepEqual(seen, [0, 0, 1, 4096, 65_537, 3 * 1024 * 1024 + 7, 9 * 1024 * 1024])
    })

    transportTest('a Buffer view sends only its own bytes, and nodes share no payload memory', async ({ node }) => {
      let received: Uint8Array | undefined
      const server = await node('server', async (_from, request) => {
        received = request.payload
        const payload = request.payload as Uint8Array
        payload.fill(0xee) // the sender must not see this
        return { kind: 'r', header: {}, payload }
      })
      const client = await node('client')
      const backing = Buffer.from(bytesOf(1000, 5))
      const view = backing.subarray(100, 300)
      const original = Uint8Array.from(view)
      const reply = await client.transport.request(server.address, { kind: 'x', header: {}, payload: view })
      assert.equal(received?.byteLength, 200)
      assertBytes(view, original, 'sender buffer after the handler modified its copy')
      assertBytes(reply.payload, new Uint8Array(200).fill(0xee), 'reply')
      reply.payload?.fill(1)
      assert.ok(received?.every((byte) => byte === 0xee), 'the reply is the sender\'s own copy')
    })

    transportTest('1000 pipelined requests are all in flight at once and answered out of order to the right callers', async ({ node }) => {
      const count = 1000
      const waiting: Array<() => void> = []
      const all = gate()
      const server = await node('server', async (_from, request) => {
        const arrived = gate()
        waiting.push(arrived.open)
        if (waiting.length === count) all.open()
        await arrived.promise
        return { kind: 'r', header: { seq: request.header.seq }, payload: request.payload }
      })
      const client = await node('client')
      const replies = Array.from({ length: count }, async (_, seq) => await client.transport.request(server.address, { kind: 'x', header: { seq }, payload: bytesOf(16 + (seq % 64), seq) }, { timeoutMs: 60_000 }))
      await all.promise // every request reached the handler before any was answered
      const random = seededRandom(7)
      for (let i = waiting.length - 1; i > 0; i--) {
        const j = Math.floor(random() * (i + 1))
        ;[waiting[i], waiting[j]] = [waiting[j] as () => void, waiting[i] as () => void]
      }
      for (const open of waiting) open()
      const results = await Promise.all(replies)
      results.forEach((reply, seq) => {
        assert.equal(reply.header.seq, seq)
        assertBytes(reply.payload, bytesOf(16 + (seq % 64), seq), `payload of request ${seq}`)
      })
    })

    transportTest('requests flow both ways, also from inside a handler', async ({ node }) => {
      let a: Node | undefined
      const b = await node('b', async (from, request) => {
        if (request.kind === 'relay') {
          const inner = await b.transport.request((a as Node).address, { kind: 'inner', header: {} })
          return { kind: 'relayed', header: { inner: inner.header, from } }
        }
        return await echo(from, request)
      })
      a = await node('a', echo)
      const [toB, toA] = await Promise.all([
        a.transport.request(b.address, { kind: 'x', header: {} }),
        b.transport.request(a.address, { kind: 'y', header: {} })
      ])
      assert.equal(toB.header.from, a.transport.nodeId)
      assert.equal(toA.header.from, b.transport.nodeId)
      const relayed = await a.transport.request(b.address, { kind: 'relay', header: {} })
      assert.deepEqual(relayed.header, { inner: { from: b.transport.nodeId, request: {} }, from: a.transport.nodeId })
    })

    transportTest('handler errors: a GalleonError keeps code and message, anything else is IO_ERROR', async ({ node }) => {
      const server = await node('server', async (_from, request) => {
        switch (request.kind) {
          case 'not-leader': throw new GalleonError('NOT_LEADER', 'node x leads epoch 7; send writes there')
          case 'plain': throw new Error('disk on fire')
          case 'string': throw 'a string' // eslint-disable-line @typescript-eslint/only-throw-error
          case 'bad-reply': return undefined as unknown as TransportMessage
          case 'bad-header': return { kind: 'r', header: { big: 1n } as unknown as Record<string, unknown> }
          default: return { kind: 'ok', header: {} }
        }
      })
      const client = await node('client')
      const request = async (kind: string): Promise<TransportMessage> => await client.transport.request(server.address, { kind, header: {} })
      const notLeader = await rejectsWith(request('not-leader'), 'NOT_LEADER')
      assert.equal(notLeader.message, 'node x leads epoch 7; send writes there')
      const plain = await rejectsWith(request('plain'), 'IO_ERROR')
      assert.ok(plain.message.includes('disk on fire'), plain.message)
      await rejectsWith(request('string'), 'IO_ERROR')
      await rejectsWith(request('bad-reply'), 'IO_ERROR')
      await rejectsWith(request('bad-header'), 'IO_ERROR')
      assert.equal((await request('fine')).kind, 'ok', 'the connection survives handler errors')
    })

    transportTest('an address nobody listens at fails with BACKEND_UNAVAILABLE naming it', async ({ node }) => {
      const gone = await node('gone', echo)
      await gone.transport.close()
      const client = await node('client')
      await rejectsWith(client.transport.request(gone.address, { kind: 'x', header: {} }, { timeoutMs: 30_000 }), 'BACKEND_UNAVAILABLE', gone.address)
    })

    transportTest('a request without a reply in time fails with BACKEND_UNAVAILABLE; the peer stays usable', async ({ node }) => {
      const hang = gate()
      const server = await node('server', async (from, request) => {
        if (request.kind === 'hang') await hang.promise
        return await echo(from, request)
      })
      const client = await node('client')
      try {
        await rejectsWith(client.transport.request(server.address, { kind: 'hang', header: {} }, { timeoutMs: 200 }), 'BACKEND_UNAVAILABLE', server.address)
        const reply = await client.transport.request(server.address, { kind: 'x', header: {} })
        assert.equal(reply.kind, 'x:reply')
      } finally {
        hang.open()
      }
    })

    transportTest('an AbortSignal cancels a request in flight, and an aborted one is never sent', async ({ node }) => {
      const hang = gate()
      const calls: string[] = []
      const server = await node('server', async (from, request) => {
        calls.push(request.kind)
        if (request.kind === 'hang') await hang.promise
        return await echo(from, request)
      })
      const client = await node('client')
      try {
        const controller = new AbortController()
        const pending = client.transport.request(server.address, { kind: 'hang', header: {} }, { signal: controller.signal })
        pending.catch(() => {}) // asserted below
        await until(() => calls.includes('hang'), 'the handler to start')
        controller.abort(new Error('user gave up'))
        await rejectsWith(pending, 'CANCELLED')
        await rejectsWith(client.transport.request(server.address, { kind: 'never', header: {} }, { signal: AbortSignal.abort() }), 'CANCELLED')
        await client.transport.request(server.address, { kind: 'after', header: {} })
        assert.deepEqual(calls, ['hang', 'after'])
      } finally {
        hang.open()
      }
    })

    transportTest('a peer that closes while serving fails the request with BACKEND_UNAVAILABLE', async ({ node }) => {
      const hang = gate()
      let started = false
      const server = await node('server', async (from, request) => {
        started = true
        await hang.promise
        return await echo(from, request)
      })
      const client = await node('client')
      const pending = client.transport.request(server.address, { kind: 'x', header: {} }, { timeoutMs: 60_000 })
      pending.catch(() => {}) // asserted below; it may reject while close() is awaited
      await until(() => started, 'the handler to start')
      await server.transport.close()
      hang.open()
      await rejectsWith(pending, 'BACKEND_UNAVAILABLE')
    })

    transportTest('after the peer restarts at the same address, the next request reconnects', async ({ node, restart }) => {
      const first = await node('server', async () => ({ kind: 'r', header: { life: 1 } }))
      const client = await node('client')
      assert.deepEqual((await client.transport.request(first.address, { kind: 'x', header: {} })).header, { life: 1 })
      await first.transport.close()
      await rejectsWith(client.transport.request(first.address, { kind: 'x', header: {} }, { timeoutMs: 30_000 }), 'BACKEND_UNAVAILABLE')
      const second = await restart(first.transport.nodeId, first.address, async (from) => ({ kind: 'r', header: { life: 2, from } }))
      assert.equal(second.address, first.address)
      assert.deepEqual((await client.transport.request(first.address, { kind: 'x', header: {} })).header, { life: 2, from: client.transport.nodeId })
    })

    transportTest('close() rejects requests in flight, is idempotent, and later calls fail with NOT_OPEN', async ({ node }) => {
      const hang = gate()
      let started = 0
      const server = await node('server', async (from, request) => {
        started++
        await hang.promise
        return await echo(from, request)
      })
      const client = await node('client', echo)
      try {
        const pending = [1, 2, 3].map(async (n) => await client.transport.request(server.address, { kind: 'x', header: { n } }, { timeoutMs: 60_000 }))
        for (const request of pending) request.catch(() => {}) // asserted below; they reject during close()
        await until(() => started === 3, 'all three handlers to start')
        await Promise.all([client.transport.close(), client.transport.close()])
        for (const request of pending) await rejectsWith(request, 'BACKEND_UNAVAILABLE')
        await client.transport.close()
        await rejectsWith(client.transport.request(server.address, { kind: 'x', header: {} }), 'NOT_OPEN')
        await rejectsWith(client.transport.listen(echo), 'NOT_OPEN')
      } finally {
        hang.open()
      }
    })

    transportTest('bad arguments are refused with INVALID_ARGUMENT and change nothing', async ({ node }) => {
      const server = await node('server', echo)
      const client = await node('client')
      const t = client.transport
      const bad: Array<[string, () => Promise<unknown>]> = [
        ['non-function handler', async () => await (await node('other')).transport.listen('handler' as unknown as TransportHandler)],
        ['empty address', async () => await t.request('', { kind: 'x', header: {} })],
        ['non-string address', async () => await t.request(42 as unknown as string, { kind: 'x', header: {} })],
        ['missing message', async () => await t.request(server.address, undefined as unknown as TransportMessage)],
        ['non-string kind', async () => await t.request(server.address, { kind: 7 as unknown as string, header: {} })],
        ['empty kind', async () => await t.request(server.address, { kind: '', header: {} })],
        ['null header', async () => await t.request(server.address, { kind: 'x', header: null as unknown as Record<string, unknown> })],
        ['array header', async () => await t.request(server.address, { kind: 'x', header: [] as unknown as Record<string, unknown> })],
        ['string header', async () => await t.request(server.address, { kind: 'x', header: 'h' as unknown as Record<string, unknown> })],
        ['header that is not JSON', async () => await t.request(server.address, { kind: 'x', header: { n: 1n } })],
        ['string payload', async () => await t.request(server.address, { kind: 'x', header: {}, payload: 'bytes' as unknown as Uint8Array })],
        ['array payload', async () => await t.request(server.address, { kind: 'x', header: {}, payload: [1, 2] as unknown as Uint8Array })],
        ['negative timeout', async () => await t.request(server.address, { kind: 'x', header: {} }, { timeoutMs: -1 })],
        ['non-signal', async () => await t.request(server.address, { kind: 'x', header: {} }, { signal: {} as AbortSignal })]
      ]
      for (const [what, call] of bad) {
        await assert.rejects(call, (err: unknown) => err instanceof GalleonError && err.code === 'INVALID_ARGUMENT', what)
      }
      const reply = await t.request(server.address, { kind: 'x', header: {} })
      assert.equal(reply.kind, 'x:reply', 'the transport still works')
      await rejectsWith(server.transport.listen(echo), 'BUSY')
    })
  })
}
