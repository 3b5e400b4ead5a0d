// The memory transport's fault injection: drop, delay, partition and heal, reorder, kill and revive,
// and determinism under a seed. (The Transport contract itself is in test/conformance/transport.ts.)

import assert from 'node:assert/strict'
import { test } from 'node:test'
import { MemoryNetwork, type MemoryTransport } from '../backends/memory/transport.js'
import type { TransportHandler, TransportMessage } from '../src/drivers.js'
import { GalleonError } from '../src/errors.js'
import { expectCode } from './support/assertions.js'

const echo: TransportHandler = async (from, request) => ({ kind: 'r', header: { from, ...request.header }, payload: request.payload })

async function nodes (network: MemoryNetwork, ids: string[], handler: TransportHandler = echo): Promise<MemoryTransport[]> {
  return await Promise.all(ids.map(async (id) => {
    const transport = network.transport(id)
    await transport.listen(handler)
    return transport
  }))
}

async function closeAll (transports: MemoryTransport[]): Promise<void> {
  await Promise.all(transports.map(async (t) => { await t.close() }))
}

function gate (): { promise: Promise<void>, open: () => void } {
  let open = (): void => {}
  const promise = new Promise<void>((resolve) => { open = resolve })
  return { promise, open }
}

const ping = (n = 0): TransportMessage => ({ kind: 'ping', header: { n } })

test('drop with probability 1 fails requests at once with BACKEND_UNAVAILABLE naming the peer; drop(0) stops', async () => {
  const network = new MemoryNetwork({ seed: 3 })
  const [a, b] = await nodes(network, ['a', 'b']) as [MemoryTransport, MemoryTransport]
  try {
    network.drop(1)
    await expectCode(a.request('b', ping()), 'BACKEND_UNAVAILABLE', 'b', 'dropped')
    assert.equal(network.stats.lost, 1)
    network.drop(0)
    assert.equal((await a.request('b', ping(1))).header.n, 1)
  } finally {
    await closeAll([a, b])
  }
})

test('a predicate can drop only replies: the handler ran, the sender sees BACKEND_UNAVAILABLE (at most once)', async () => {
  const network = new MemoryNetwork()
  const applied: number[] = []
  const [a, b] = await nodes(network, ['a', 'b'], async (from, request) => {
    applied.push(request.header.n as number)
    return await echo(from, request)
  }) as [MemoryTransport, MemoryTransport]
  try {
    network.drop((message) => message.type === 'reply' && message.kind === 'write')
    await expectCode(a.request('b', { kind: 'write', header: { n: 1 } }), 'BACKEND_UNAVAILABLE', 'reply', 'dropped')
    assert.equal((await a.request('b', { kind: 'read', header: { n: 2 } })).header.n, 2)
    assert.deepEqual(applied, [1, 2])
  } finally {
    await closeAll([a, b])
  }
})

test('a silent drop leaves the request to its timeout, and the handler never runs', async () => {
  const network = new MemoryNetwork()
  let calls = 0
  const [a, b] = await nodes(network, ['a', 'b'], async (from, request) => { calls++; return await echo(from, request) }) as [MemoryTransport, MemoryTransport]
  try {
    network.drop((message) => message.type === 'request', { silent: true })
    await expectCode(a.request('b', ping(), { timeoutMs: 100 }), 'BACKEND_UNAVAILABLE', 'b', '100 ms')
    network.drop(0)
    await a.request('b', ping())
    assert.equal(calls, 1)
  } finally {
    await closeAll([a, b])
  }
})

test('delay holds messages back (a timeout shorter than the delay fires first); jitter reorders arrivals', async () => {
  const network = new MemoryNetwork({ seed: 11 })
  const arrivals: number[] = []
  const [a, b] = await nodes(network, ['a', 'b'], async (from, request) => {
    arrivals.push(request.header.n as number)
    return await echo(from, request)
  }) as [MemoryTransport, MemoryTransport]
  try {
    network.delay(500)
    await expectCode(a.request('b', ping(-1), { timeoutMs: 20 }), 'BACKEND_UNAVAILABLE')
    assert.equal((await a.request('b', ping(-2), { timeoutMs: 60_000 })).header.n, -2)
    arrivals.length = 0
    network.delay(1, { jitterMs: 30 })
    const sent = Array.from({ length: 40 }, (_, n) => n)
    const replies = await Promise.all(sent.map(async (n) => await a.request('b', ping(n), { timeoutMs: 60_000 })))
    assert.deepEqual(replies.map((reply) => reply.header.n), sent, 'every caller gets its own reply')
    assert.deepEqual([...arrivals].sort((x, y) => x - y), sent)
    assert.notDeepEqual(arrivals, sent, 'jitter delivered requests out of order')
  } finally {
    await closeAll([a, b])
  }
})

test('partition cuts links between the two sides both ways until heal()', async () => {
  const network = new MemoryNetwork()
  const [a, b, c] = await nodes(network, ['a', 'b', 'c']) as [MemoryTransport, MemoryTransport, MemoryTransport]
  try {
    network.partition(['a'], ['b', 'c'])
    await expectCode(a.request('b', ping()), 'BACKEND_UNAVAILABLE', 'b', 'partitioned')
    await expectCode(c.request('a', ping()), 'BACKEND_UNAVAILABLE', 'a', 'partitioned')
    assert.equal((await b.request('c', ping(5))).header.from, 'b', 'links inside one side still work')
    network.heal()
    assert.equal((await a.request('b', ping())).header.from, 'a')
    assert.equal((await c.request('a', ping())).header.from, 'c')
  } finally {
    await closeAll([a, b, c])
  }
})

test('a partition made while a request is served loses its reply', async () => {
  const network = new MemoryNetwork()
  const hold = gate()
  let started = false
  const [a, b] = await nodes(network, ['a', 'b'], async (from, request) => {
    started = true
    await hold.promise
    return await echo(from, request)
  }) as [MemoryTransport, MemoryTransport]
  try {
    const pending = a.request('b', ping())
    pending.catch(() => {})
    while (!started) await new Promise((resolve) => setImmediate(resolve))
    network.partition(['a'], ['b'])
    hold.open()
    await expectCode(pending, 'BACKEND_UNAVAILABLE', 'reply', 'partitioned')
  } finally {
    await closeAll([a, b])
  }
})

test('reorder delivers a window of messages shuffled, each reply still to its caller', async () => {
  const network = new MemoryNetwork({ seed: 5 })
  const arrivals: number[] = []
  const [a, b] = await nodes(network, ['a', 'b'], async (from, request) => {
    arrivals.push(request.header.n as number)
    return await echo(from, request)
  }) as [MemoryTransport, MemoryTransport]
  try {
    network.reorder(16)
    const sent = Array.from({ length: 64 }, (_, n) => n)
    const replies = await Promise.all(sent.map(async (n) => await a.request('b', ping(n))))
    assert.deepEqual(replies.map((reply) => reply.header.n), sent)
    assert.deepEqual([...arrivals].sort((x, y) => x - y), sent)
    assert.notDeepEqual(arrivals, sent, 'arrivals were shuffled')
    network.reorder(0)
    arrivals.length = 0
    await Promise.all(sent.map(async (n) => await a.request('b', ping(n))))
    assert.deepEqual(arrivals, sent, 'in order again after reorder(0)')
  } finally {
    await closeAll([a, b])
  }
})

test('kill stops a node answering and fails what it serves and sends; revive brings it back', async () => {
  const network = new MemoryNetwork()
  const hold = gate()
  let serving = 0
  const [a, b, c] = await nodes(network, ['a', 'b', 'c'], async (from, request) => {
    if (request.kind === 'hold') {
      serving++
      await hold.promise
    }
    return await echo(from, request)
  }) as [MemoryTransport, MemoryTransport, MemoryTransport]
  try {
    const served = a.request('b', { kind: 'hold', header: {} })
    const sentByB = b.request('c', { kind: 'hold', header: {} })
    served.catch(() => {})
    sentByB.catch(() => {})
    while (serving < 2) await new Promise((resolve) => setImmediate(resolve))
    network.kill('b')
    await expectCode(served, 'BACKEND_UNAVAILABLE', 'b', 'killed')
    await expectCode(sentByB, 'BACKEND_UNAVAILABLE', 'b', 'killed')
    await expectCode(a.request('b', ping()), 'BACKEND_UNAVAILABLE', 'b', 'killed')
    await expectCode(b.request('c', ping()), 'BACKEND_UNAVAILABLE', 'b', 'killed')
    assert.equal((await a.request('c', ping())).header.from, 'a', 'other nodes are unaffected')
    network.revive('b')
    assert.equal((await a.request('b', ping())).header.from, 'a')
    assert.equal((await b.request('c', ping())).header.from, 'b')
  } finally {
    hold.open()
    await closeAll([a, b, c])
  }
})

test('the same seed gives the same drops and the same order; another seed does not', async () => {
  async function run (seed: number): Promise<{ outcomes: string[], arrivals: number[] }> {
    const network = new MemoryNetwork({ seed })
    const arrivals: number[] = []
    const [a, b] = await nodes(network, ['a', 'b'], async (from, request) => {
      arrivals.push(request.header.n as number)
      return await echo(from, request)
    }) as [MemoryTransport, MemoryTransport]
    try {
      network.drop(0.3)
      network.reorder(8)
      const outcomes = await Promise.all(Array.from({ length: 80 }, async (_, n) => {
        try {
          return `ok:${String((await a.request('b', ping(n))).header.n)}`
        } catch (err) {
          return `fail:${(err as GalleonError).code}`
        }
      }))
      return { outcomes, arrivals }
    } finally {
      await closeAll([a, b])
    }
  }
  const first = await run(42)
  const again = await run(42)
  const other = await run(43)
  assert.deepEqual(again, first)
  assert.ok(first.outcomes.some((o) => o.startsWith('fail')) && first.outcomes.some((o) => o.startsWith('ok')), 'some dropped, some delivered')
  assert.notDeepEqual(other, first)
})

test('a node id listens once per network; the fault API refuses nonsense', async () => {
  const network = new MemoryNetwork()
  const [a] = await nodes(network, ['a'])
  const twin = network.transport('a')
  try {
    await expectCode(twin.listen(echo), 'BUSY', 'a')
    assert.throws(() => { network.drop(2) }, { code: 'INVALID_ARGUMENT' })
    assert.throws(() => { network.delay(-1) }, { code: 'INVALID_ARGUMENT' })
    assert.throws(() => { network.reorder(1.5) }, { code: 'INVALID_ARGUMENT' })
    assert.throws(() => new MemoryNetwork({ seed: 0.5 }), { code: 'INVALID_ARGUMENT' })
  } finally {
    await closeAll([a as MemoryTransport, twin])
  }
})
