// The tcp transport beyond the shared contract: cluster-secret authentication, hostile and broken
// peers, frame limits, backpressure, TLS, and real node processes killed and restarted.

import assert from 'node:assert/strict'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'
import { FrameMac, FrameReader, FrameType, MAC_BYTES, NONCE_BYTES, PROTOCOL_VERSION, encodeFrame, proof, sessionKeys, type Frame } from '../backends/tcp/frames.js'
import { TcpTransport, parseAddress, type TcpTransportOptions } from '../backends/tcp/index.js'
import type { TransportHandler } from '../src/drivers.js'
import { GalleonError } from '../src/errors.js'
import { assertBytes, bytesOf } from './conformance/fixtures.js'
import { expectCode } from './support/assertions.js'
import { scriptArgs } from './support/child-script.js'
import { observed } from './support/observed.js'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const NODE_SCRIPT = join(ROOT, 'test', 'fixtures', 'transport-node.ts')
// Absolute, so that the loader is found whatever the working directory.
const SECRET = 'tcp-test-cluster-secret'

const echo: TransportHandler = async (from, request) => ({ kind: 'r', header: { from, ...request.header }, payload: request.payload })

function transport (nodeId: string, options: Partial<TcpTransportOptions> = {}): TcpTransport {
  return new TcpTransport({ nodeId, clusterSecret: SECRET, host: '127.0.0.1', port: 0, ...options })
}

async function until (predicate: () => boolean, what: string, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!predicate()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 2))
  }
}

/** A hand-driven socket to a transport, reading its frames; `closed` resolves when the server hangs up. */
class RawPeer {
  readonly socket: Socket
  readonly frames: Frame[] = []
  readonly closed: Promise<void>
  #reader = new FrameReader(1 << 20)
  /** Tags frames sent after PROOF; the server's frames after WELCOME are checked with the other key. */
  #sendMac: FrameMac | undefined
  #receiveMac: FrameMac | undefined

  constructor (address: string) {
    const { host, port } = parseAddress(address)
    this.socket = connect({ host, port })
    this.socket.on('error', () => {})
    this.socket.on('data', (chunk: Buffer) => {
      this.#reader.push(chunk)
      for (let frame = this.#reader.next(); frame !== undefined; frame = this.#reader.next()) {
        this.frames.push(frame)
        if (frame.type === FrameType.Welcome) this.#reader.mac = this.#receiveMac
      }
    })
    this.closed = new Promise((resolve) => { this.socket.once('close', () => { resolve() }) })
  }

  send (type: number, header: unknown, payload?: Uint8Array, id = 0): void {
    this.socket.write(encodeFrame(type as FrameType, id, JSON.stringify(header), payload, this.#sendMac))
  }

  async frame (type: number): Promise<Frame> {
    await until(() => this.frames.some((frame) => frame.type === type), `a frame of type ${type}`)
    return this.frames.find((frame) => frame.type === type) as Frame
  }

  /** Performs the client side of the handshake with `secret`; resolves to the server's reply (WELCOME or GOODBYE). */
  async handshake (nodeId: string, secret: string): Promise<Frame> {
    const nonce = randomBytes(NONCE_BYTES).toString('base64')
    this.send(FrameType.Hello, { v: PROTOCOL_VERSION, node: nodeId, nonce })
    const challenge = (await this.frame(FrameType.Challenge)).header as { node: string, nonce: string }
    this.send(FrameType.Proof, { proof: proof(secret, 'client', nodeId, challenge.node, nonce, challenge.nonce) })
    const keys = sessionKeys(secret, nodeId, challenge.node, nonce, challenge.nonce)
    this.#sendMac = new FrameMac(keys.clientToServer)
    this.#receiveMac = new FrameMac(keys.serverToClient)
    await until(() => this.frames.some((frame) => frame.type === FrameType.Welcome || frame.type === FrameType.Goodbye), 'the handshake outcome')
    return this.frames.find((frame) => frame.type === FrameType.Welcome || frame.type === FrameType.Goodbye) as Frame
  }
}

test('clusterSecret is required and non-empty', () => {
  for (const clusterSecret of [undefined, '', new Uint8Array(0), 42]) {
    assert.throws(() => new TcpTransport({ nodeId: 'x', clusterSecret: clusterSecret as string }), (err: unknown) => err instanceof GalleonError && err.code === 'INVALID_ARGUMENT' && err.message.includes('clusterSecret'))
  }
  assert.throws(() => transport('x', { port: 70_000 }), { code: 'INVALID_ARGUMENT' })
})

test('nodes with different cluster secrets refuse each other both ways, and no handler runs', async () => {
  let calls = 0
  const counting: TransportHandler = async (from, request) => { calls++; return await echo(from, request) }
  const a = transport('a', { clusterSecret: 'cluster-secret-one' })
  const b = transport('b', { clusterSecret: 'cluster-secret-two' })
  try {
    const addressA = await a.listen(counting)
    const addressB = await b.listen(counting)
    await expectCode(a.request(addressB, { kind: 'x', header: {} }), 'PERMISSION_DENIED', 'cluster secrets differ', addressB)
    await expectCode(b.request(addressA, { kind: 'x', header: {} }), 'PERMISSION_DENIED', 'cluster secrets differ')
    // Asked again: refused again (a fresh handshake, not a cached verdict that could go stale).
    await expectCode(a.request(addressB, { kind: 'x', header: {} }), 'PERMISSION_DENIED')
    assert.equal(calls, 0)
  } finally {
    await Promise.all([a.close(), b.close()])
  }
})

test('the server checks the client proof itself: a wrong proof gets GOODBYE PERMISSION_DENIED, a request before it is refused', async () => {
  let calls = 0
  const server = transport('server')
  const address = await server.listen(async (from, request) => { calls++; return await echo(from, request) })
  const liar = new RawPeer(address)
  const eager = new RawPeer(address)
  const honest = new RawPeer(address)
  try {
    const verdict = await liar.handshake('liar', 'not-the-cluster-secret')
    assert.equal(verdict.type, FrameType.Goodbye)
    assert.equal((verdict.header as { code: string }).code, 'PERMISSION_DENIED')
    assert.ok((verdict.header as { message: string }).message.includes('cluster secrets differ'))
    await liar.closed
    eager.send(FrameType.Request, { k: 'x', h: {} }, undefined, 1)
    await eager.closed
    const welcome = await honest.handshake('honest', SECRET)
    assert.equal(welcome.type, FrameType.Welcome)
    honest.send(FrameType.Request, { k: 'x', h: { n: 7 } }, Uint8Array.from([9]), 42)
    const reply = await honest.frame(FrameType.Reply)
    assert.equal(reply.id, 42)
    assert.deepEqual(reply.header, { k: 'r', h: { from: 'honest', n: 7 } })
    assert.equal(calls, 1, 'only the authenticated request reached the handler')
  } finally {
    for (const peer of [liar, eager, honest]) peer.socket.destroy()
    await server.close()
  }
})

test('garbage, oversized frame lengths and oversized frames after authentication end only their own connection', async () => {
  const server = transport('server', { maxMessageBytes: 1024 * 1024 })
  const address = await server.listen(echo)
  const client = transport('client')
  try {
    assert.equal((await client.request(address, { kind: 'x', header: { n: 1 } })).header.n, 1)
    const garbage = new RawPeer(address)
    garbage.socket.write(randomBytes(4096))
    const huge = new RawPeer(address)
    huge.socket.write(Buffer.from([0xff, 0xff, 0xff, 0xf0, 1, 2, 3]))
    const tiny = new RawPeer(address)
    tiny.socket.write(Buffer.from([0, 0, 0, 2, 1, 2]))
    const authenticated = new RawPeer(address)
    assert.equal((await authenticated.handshake('raw', SECRET)).type, FrameType.Welcome)
    const header = Buffer.alloc(4)
    header.writeUInt32BE(64 * 1024 * 1024)
    authenticated.socket.write(header)
    await Promise.all([garbage.closed, huge.closed, tiny.closed, authenticated.closed])
    const goodbye = authenticated.frames.find((frame) => frame.type === FrameType.Goodbye)
    assert.ok(goodbye !== undefined && (goodbye.header as { message: string }).message.includes('exceeds the limit'), 'the server said why it hung up')
    // The established connection was not touched: the same connection answers.
    const before = client.stats().outboundConnections
    assert.equal((await client.request(address, { kind: 'x', header: { n: 2 } })).header.n, 2)
    assert.equal(client.stats().outboundConnections, before)
    assert.equal(server.stats().inboundConnections, 1)
    // A real peer sending more than the receiver allows is told why, and the next request reconnects.
    await expectCode(client.request(address, { kind: 'big', header: {}, payload: new Uint8Array(2 * 1024 * 1024) }), 'IO_ERROR', 'exceeds the limit')
    assert.equal((await client.request(address, { kind: 'x', header: { n: 3 } })).header.n, 3)
    // And the sender refuses what exceeds its own limit before sending anything.
    await expectCode(server.request(address, { kind: 'big', header: {}, payload: new Uint8Array(1024 * 1024 + 1) }), 'INVALID_ARGUMENT', 'maximum')
  } finally {
    await Promise.all([client.close(), server.close()])
  }
})

test('a stranger that never completes the handshake is disconnected after handshakeTimeoutMs', async () => {
  const server = transport('server', { handshakeTimeoutMs: 200 })
  const address = await server.listen(echo)
  try {
    const silent = new RawPeer(address)
    await silent.closed
    await until(() => server.stats().inboundConnections === 0, 'the server to forget the connection')
  } finally {
    await server.close()
  }
})

test('backpressure: a slow handler keeps the sender within maxInFlightBytes, and nothing is lost', async () => {
  const limit = 1024 * 1024
  const size = 256 * 1024
  const count = 40
  let serving = 0
  let peakServing = 0
  const releases: Array<() => void> = []
  const server = transport('server')
  const address = await server.listen(async (from, request) => {
    serving++
    peakServing = Math.max(peakServing, serving)
    await new Promise<void>((resolve) => releases.push(resolve))
    serving--
    return { kind: 'r', header: request.header, payload: (request.payload as Uint8Array).subarray(0, 16) }
  })
  const client = transport('client', { maxInFlightBytes: limit })
  try {
    let peakInFlight = 0
    const sample = (): void => { peakInFlight = Math.max(peakInFlight, client.inFlightBytes) }
    const replies = Array.from({ length: count }, async (_, n) => await client.request(address, { kind: 'x', header: { n }, payload: bytesOf(size, n) }, { timeoutMs: 120_000 }))
    for (const reply of replies) reply.catch(() => {}) // awaited below; a failed assertion must not turn them into unhandled rejections
    let answered = 0
    while (answered < count) {
      await until(() => releases.length > 0, 'a request to reach the handler')
      sample()
      assert.equal(client.stats().failed, 0, 'requests beyond the budget wait, they are not failed')
      ;(releases.shift() as () => void)()
      answered++
    }
    const results = await Promise.all(replies)
    results.forEach((reply, n) => {
      assert.equal(reply.header.n, n)
      assertBytes(reply.payload, bytesOf(size, n).subarray(0, 16))
    })
    assert.ok(peakInFlight > 0 && peakInFlight <= limit, `in-flight bytes peaked at ${peakInFlight}, limit ${limit}`)
    assert.ok(peakServing <= Math.floor(limit / size), `at most ${Math.floor(limit / size)} requests were in the handler at once, saw ${peakServing}`)
    assert.equal(client.inFlightBytes, 0)
  } finally {
    for (const release of releases) release()
    await Promise.all([client.close(), server.close()])
  }
})

test('backpressure: a busy receiver stops reading, the sender queues behind drain, memory stays bounded', async () => {
  const receiverLimit = 512 * 1024
  const size = 256 * 1024
  const count = 64
  let serving = 0
  let peakServing = 0
  let peakServingBytes = 0
  const releases: Array<() => void> = []
  const server = transport('server', { maxInFlightBytes: receiverLimit })
  const address = await server.listen(async (from, request) => {
    serving++
    peakServing = Math.max(peakServing, serving)
    peakServingBytes = Math.max(peakServingBytes, server.servingBytes)
    await new Promise<void>((resolve) => releases.push(resolve))
    serving--
    return { kind: 'r', header: request.header }
  })
  const client = transport('client') // 16 MiB budget: far more than the receiver takes
  try {
    const replies = Array.from({ length: count }, async (_, n) => await client.request(address, { kind: 'x', header: { n }, payload: bytesOf(size, n) }, { timeoutMs: 120_000 }))
    for (const reply of replies) reply.catch(() => {}) // awaited below; a failed assertion must not turn them into unhandled rejections
    await until(() => releases.length > 0, 'the first request to reach the handler')
    // The sender has everything in flight but the receiver has paused: the rest backs up into the
    // kernel buffers and then into the sender's queue, which fills while write() returns false.
    await until(() => client.stats().queuedBytes > 0, 'the sender to queue behind a full socket')
    let answered = 0
    while (answered < count) {
      await until(() => releases.length > 0, 'a request to reach the handler')
      ;(releases.shift() as () => void)()
      answered++
    }
    const results = await Promise.all(replies)
    results.forEach((reply, n) => { assert.equal(reply.header.n, n) })
    assert.ok(peakServing <= Math.ceil(receiverLimit / size) + 1, `the receiver served at most ${Math.ceil(receiverLimit / size) + 1} at once, saw ${peakServing}`)
    assert.ok(peakServingBytes <= receiverLimit + size + 1024, `serving bytes peaked at ${peakServingBytes}`)
    assert.equal(server.servingBytes, 0)
    assert.equal(client.stats().queuedBytes, 0)
  } finally {
    for (const release of releases) release()
    await Promise.all([client.close(), server.close()])
  }
})

test('TLS: round trip over TLS with a self-signed certificate; plaintext and untrusted peers are refused', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'galleon-tls-'))
  try {
    const key = join(dir, 'key.pem')
    const cert = join(dir, 'cert.pem')
    const otherKey = join(dir, 'other-key.pem')
    const otherCert = join(dir, 'other-cert.pem')
    try {
      for (const [k, c] of [[key, cert], [otherKey, otherCert]]) {
        await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', k as string, '-out', c as string, '-days', '2', '-subj', '/CN=galleonfs-test', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'])
      }
    } catch (err) {
      t.skip(`openssl is not available to make a test certificate (${(err as Error).message}); install openssl to run the TLS test`)
      return
    }
    const tls = { key: await readFile(key), cert: await readFile(cert), ca: await readFile(cert) }
    const server = transport('server', { tls })
    const client = transport('client', { tls })
    const plain = transport('plain')
    const stranger = transport('stranger', { tls: { key: await readFile(otherKey), cert: await readFile(otherCert), ca: await readFile(otherCert) } })
    try {
      const address = await server.listen(echo)
      const payload = bytesOf(3 * 1024 * 1024, 1)
      const reply = await client.request(address, { kind: 'x', header: { n: 1 }, payload })
      assert.deepEqual(reply.header, { from: 'client', n: 1 })
      assertBytes(reply.payload, payload)
      await expectCode(plain.request(address, { kind: 'x', header: {} }, { timeoutMs: 60_000 }), 'BACKEND_UNAVAILABLE', address)
      await expectCode(stranger.request(address, { kind: 'x', header: {} }, { timeoutMs: 60_000 }), 'BACKEND_UNAVAILABLE', address)
      assert.equal((await client.request(address, { kind: 'x', header: { n: 2 } })).header.n, 2)
    } finally {
      await Promise.all([server.close(), client.close(), plain.close(), stranger.close()])
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

type Direction = 'to-server' | 'to-client'

/**
 * What a man-in-the-middle does with the `index`th frame (counted per direction, handshake
 * included) of the `connection`th connection: returns the frames to forward (to the same side,
 * unless `reflect` sends them back). `history` holds that direction's earlier frames.
 */
type Tamper = (direction: Direction, connection: number, index: number, frame: Buffer, history: Buffer[]) => { forward: Buffer[], reflect?: Buffer[] }

/** A TCP proxy in front of `target` that relays whole frames, each through `tamper`. */
class FrameProxy {
  readonly server: Server
  #target: { host: string, port: number }
  #tamper: Tamper
  #connections = 0
  #sockets = new Set<Socket>()

  constructor (target: string, tamper: Tamper) {
    this.#target = parseAddress(target)
    this.#tamper = tamper
    this.server = createServer((client) => { this.#relay(client) })
  }

  async listen (): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve))
    return `127.0.0.1:${(this.server.address() as AddressInfo).port}`
  }

  async close (): Promise<void> {
    for (const socket of this.#sockets) socket.destroy()
    await new Promise<void>((resolve) => { this.server.close(() => { resolve() }) })
  }

  #relay (client: Socket): void {
    const connection = this.#connections++
    const server = connect(this.#target)
    for (const socket of [client, server]) {
      this.#sockets.add(socket)
      socket.on('error', () => {})
      socket.on('close', () => { client.destroy(); server.destroy() })
    }
    const pipe = (direction: Direction, from: Socket, to: Socket): void => {
      let buffered = Buffer.alloc(0)
      const history: Buffer[] = []
      from.on('data', (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk])
        while (buffered.byteLength >= 4 && buffered.byteLength >= 4 + buffered.readUInt32BE(0)) {
          const frame = Buffer.from(buffered.subarray(0, 4 + buffered.readUInt32BE(0)))
          buffered = buffered.subarray(frame.byteLength)
          const { forward, reflect = [] } = this.#tamper(direction, connection, history.length, frame, history)
          history.push(frame)
          for (const out of forward) to.write(out)
          for (const out of reflect) from.write(out)
        }
      })
    }
    pipe('to-server', client, server)
    pipe('to-client', server, client)
  }
}

// Frames of the first connection through the proxy: to the server HELLO (0), PROOF (1), then the
// requests from 2; to the client CHALLENGE (0), WELCOME (1), then the replies from 2.
const honestRelay: Tamper = (_direction, _connection, _index, frame) => ({ forward: [frame] })

test('an honest proxy between two nodes relays everything: requests of all sizes, pipelined, both ways', async () => {
  const server = transport('server')
  const address = await server.listen(echo)
  const proxy = new FrameProxy(address, honestRelay)
  const client = transport('client')
  try {
    const via = await proxy.listen()
    const sizes = [0, 1, 4096, 64 * 1024, 64 * 1024 + 1, 3 * 1024 * 1024]
    const replies = await Promise.all(Array.from({ length: 64 }, async (_, n) => {
      const payload = bytesOf(sizes[n % sizes.length] as number, n)
      const reply = await client.request(via, { kind: 'x', header: { n }, payload }, { timeoutMs: 60_000 })
      assertBytes(reply.payload, payload)
      return reply.header.n
    }))
    assert.deepEqual(replies, Array.from({ length: 64 }, (_, n) => n))
    assert.equal(client.stats().outboundConnections, 1)
  } finally {
    await Promise.all([client.close(), server.close()])
    await proxy.close()
  }
})

/** Flips the last payload byte of a frame (the tag, at its end, stays as it was). */
function flipped (frame: Buffer): Buffer {
  const copy = Buffer.from(frame)
  const at = copy.byteLength - MAC_BYTES - 1
  copy.writeUInt8(copy.readUInt8(at) ^ 0x01, at)
  return copy
}

const attacks: Array<{ name: string, tamper: Tamper, concurrent?: boolean, detectedBy: 'server' | 'client', handled: number[] }> = [
  {
    name: 'a request altered in flight (one payload byte flipped)',
    tamper: (direction, connection, index, frame) => ({ forward: [direction === 'to-server' && connection === 0 && index === 3 ? flipped(frame) : frame] }),
    detectedBy: 'server',
    handled: [1]
  },
  {
    name: 'an earlier request replayed (a byte-for-byte copy injected before the next request)',
    tamper: (direction, connection, index, frame, history) => ({ forward: direction === 'to-server' && connection === 0 && index === 3 ? [history[2] as Buffer, frame] : [frame] }),
    detectedBy: 'server',
    handled: [1]
  },
  {
    name: 'a request dropped and the next one forwarded',
    tamper: (direction, connection, index, frame) => ({ forward: direction === 'to-server' && connection === 0 && index === 3 ? [] : [frame] }),
    concurrent: true,
    detectedBy: 'server',
    handled: [1]
  },
  {
    name: 'two requests swapped',
    tamper: (() => {
      let held: Buffer | undefined
      return (direction: Direction, connection: number, index: number, frame: Buffer) => {
        if (direction !== 'to-server' || connection !== 0 || index < 3 || index > 4) return { forward: [frame] }
        if (index === 3) {
          held = frame
          return { forward: [] }
        }
        return { forward: [frame, held as Buffer] }
      }
    })(),
    concurrent: true,
    detectedBy: 'server',
    handled: [1]
  },
  {
    name: 'a request reflected back to its sender as if it were a reply',
    tamper: (direction, connection, index, frame) => direction === 'to-server' && connection === 0 && index === 3 ? { forward: [], reflect: [frame] } : { forward: [frame] },
    detectedBy: 'client',
    handled: [1]
  },
  {
    name: 'a reply altered in flight',
    tamper: (direction, connection, index, frame) => ({ forward: [direction === 'to-client' && connection === 0 && index === 3 ? flipped(frame) : frame] }),
    detectedBy: 'client',
    handled: [1, 2]
  }
]

for (const attack of attacks) {
  test(`a man in the middle is detected: ${attack.name}; the connection closes and the callers get BACKEND_UNAVAILABLE`, async () => {
    const handled: number[] = []
    const server = transport('server')
    const address = await server.listen(async (from, request) => {
      handled.push(request.header.n as number)
      return await echo(from, request)
    })
    const proxy = new FrameProxy(address, attack.tamper)
    const client = transport('client')
    try {
      const via = await proxy.listen()
      const payload = bytesOf(64, 1)
      assert.equal((await client.request(via, { kind: 'x', header: { n: 1 }, payload })).header.n, 1)
      const attacked = attack.concurrent === true ? [2, 3] : [2]
      // Observed at once: with two, the second may fail while the first one's check is awaited.
      const outcomes = attacked.map(async (n) => await client.request(via, { kind: 'x', header: { n }, payload: bytesOf(64, n) })).map(observed)
      for (const outcome of outcomes) {
        const err = await expectCode(outcome, 'BACKEND_UNAVAILABLE', 'authentication')
        assert.ok(err.message.includes(via), `the error names the peer: ${err.message}`)
      }
      assert.deepEqual(handled, attack.handled, 'no forged, replayed or reordered request reached the handler')
      await until(() => server.stats().inboundConnections === 0 && client.stats().outboundConnections === 0, 'both ends to close the connection')
      // The next request gets a fresh connection (new keys) and goes through untouched.
      assert.equal((await client.request(via, { kind: 'x', header: { n: 9 } })).header.n, 9)
      assert.deepEqual(handled, [...attack.handled, 9])
    } finally {
      await Promise.all([client.close(), server.close()])
      await proxy.close()
    }
  })
}

test('frame MACs: a frame tagged for another position, direction or connection fails the check', () => {
  const keys = sessionKeys(SECRET, 'c', 's', randomBytes(NONCE_BYTES).toString('base64'), randomBytes(NONCE_BYTES).toString('base64'))
  const other = sessionKeys(SECRET, 'c', 's', randomBytes(NONCE_BYTES).toString('base64'), randomBytes(NONCE_BYTES).toString('base64'))
  const tagged = (mac: FrameMac, n: number): Buffer => encodeFrame(FrameType.Request, n, '{}', bytesOf(100, n), mac)
  const check = (mac: FrameMac, frame: Buffer): boolean => mac.verify(frame.subarray(0, frame.byteLength - MAC_BYTES), frame.subarray(frame.byteLength - MAC_BYTES))
  const sender = new FrameMac(keys.clientToServer)
  const first = tagged(sender, 1)
  const second = tagged(sender, 2)
  const receiver = new FrameMac(keys.clientToServer)
  assert.ok(check(receiver, first))
  assert.ok(check(receiver, second))
  assert.equal(check(new FrameMac(keys.clientToServer), second), false, 'out of order')
  assert.equal(check(new FrameMac(keys.serverToClient), first), false, 'other direction')
  assert.equal(check(new FrameMac(other.clientToServer), first), false, 'other connection')
  assert.equal(check(new FrameMac(keys.clientToServer), flipped(first)), false, 'altered')
  // Frames read through a FrameReader: the tagged ones pass in order, and the reader stops at a bad one.
  const reader = new FrameReader(1 << 20)
  reader.mac = new FrameMac(keys.clientToServer)
  reader.push(Buffer.concat([first, second, first]))
  assert.equal(reader.next()?.id, 1)
  const frame = reader.next() as Frame
  assert.equal(frame.id, 2)
  assertBytes(frame.payload, bytesOf(100, 2))
  assert.throws(() => reader.next(), /authentication/)
})

interface Child { process: ChildProcess, address: string, exited: Promise<void> }

/** Starts test/fixtures/transport-node.ts and resolves once it printed its address. */
async function startChild (nodeId: string, port = 0): Promise<Child> {
  const child = spawn(process.execPath, [...scriptArgs(NODE_SCRIPT), nodeId, SECRET, String(port)], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = new Promise<void>((resolve) => { child.once('exit', () => { resolve() }) })
  let stderr = ''
  child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const address = await new Promise<string>((resolve, reject) => {
    let stdout = ''
    child.stdout?.on('data', (chunk: Buffer) => {
      stdout += chunk.toString()
      const line = stdout.split('\n')[0] as string
      if (stdout.includes('\n')) resolve((JSON.parse(line) as { address: string }).address)
    })
    child.once('exit', (code) => { reject(new Error(`the node process exited (${String(code)}) before listening: ${stderr}`)) })
  })
  return { process: child, address, exited }
}

test('real processes: requests both ways, SIGKILL fails requests with BACKEND_UNAVAILABLE, a restart is reconnected', async () => {
  const parent = transport('parent')
  const parentAddress = await parent.listen(async (from) => ({ kind: 'whoami', header: { node: 'parent', from } }))
  let child = await startChild('child')
  try {
    const whoami = await parent.request(child.address, { kind: 'whoami', header: {}, payload: bytesOf(100_000, 3) }, { timeoutMs: 60_000 })
    assert.equal(whoami.header.node, 'child')
    assert.equal(whoami.header.from, 'parent')
    assert.equal(whoami.header.pid, child.process.pid)
    assertBytes(whoami.payload, bytesOf(100_000, 3))
    const called = await parent.request(child.address, { kind: 'call', header: { address: parentAddress } }, { timeoutMs: 60_000 })
    assert.deepEqual(called.header, { reply: { node: 'parent', from: 'child' } }, 'the child reached the parent, authenticated as itself')

    const hanging = parent.request(child.address, { kind: 'hang', header: {} }, { timeoutMs: 60_000 })
    hanging.catch(() => {})
    child.process.kill('SIGKILL')
    await child.exited
    await expectCode(hanging, 'BACKEND_UNAVAILABLE', child.address)
    await expectCode(parent.request(child.address, { kind: 'whoami', header: {} }, { timeoutMs: 60_000 }), 'BACKEND_UNAVAILABLE', child.address)

    const oldPid = child.process.pid
    child = await startChild('child', parseAddress(child.address).port)
    const again = await parent.request(child.address, { kind: 'whoami', header: {} }, { timeoutMs: 60_000 })
    assert.equal(again.header.node, 'child')
    assert.notEqual(again.header.pid, oldPid, 'answered by the restarted process')
    const calledAgain = await parent.request(child.address, { kind: 'call', header: { address: parentAddress } }, { timeoutMs: 60_000 })
    assert.deepEqual(calledAgain.header, { reply: { node: 'parent', from: 'child' } })
  } finally {
    child.process.kill('SIGKILL')
    await child.exited
    await parent.close()
  }
})
