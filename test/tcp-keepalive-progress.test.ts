// The tcp transport's keepalive against peers that read slowly: a connection whose peer takes a
// large transfer bit by bit (the keepalive queued behind it) stays up; one whose peer stops taking
// bytes without closing is still given up after the keepalive timeout. Real sockets throughout,
// through a relay that throttles or blackholes what the dialer sends.

import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { pairSockets, passOn } from './support/net.js'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test, type TestContext } from 'node:test'
import { promisify } from 'node:util'
import { FrameReader, FrameType, encodeFrame } from '../backends/tcp/frames.js'
import { TcpTransport, parseAddress, type TcpTlsOptions, type TcpTransportOptions } from '../backends/tcp/index.js'
import type { TransportHandler } from '../src/drivers.js'
import type { GalleonError } from '../src/errors.js'
import { until } from './support/wait.js'

const SECRET = 'keepalive-progress-secret'
const MiB = 1024 * 1024
/**
 * Keepalive settings the transfers below outlast several times over; the timeout is long enough that
 * a stall of this one process (relay, both transports and test share it) on a loaded machine is not
 * taken for a silent peer.
 */
const KEEPALIVE = { keepaliveIntervalMs: 200, keepaliveTimeoutMs: 2000 }
/** The relay passes on this much of the dialer's bytes every STEP_MS, by default (about 6.7 MiB/s). */
const PIECE_BYTES = MiB
const STEP_MS = 150
const PAYLOAD_BYTES = 32 * MiB

/** Answers with the size of what it got, so the reply is small whatever the request. */
const sizeOf: TransportHandler = async (_from, request) => ({ kind: 'got', header: { bytes: request.payload?.byteLength ?? 0 } })

function transport (nodeId: string, options: Partial<TcpTransportOptions> = {}): TcpTransport {
  return new TcpTransport({ nodeId, clusterSecret: SECRET, maxMessageBytes: 64 * MiB, maxInFlightBytes: 64 * MiB, ...options })
}

/**
 * A TCP relay on 127.0.0.1 in front of `target`. What the target sends is relayed at once; what the
 * dialer sends, `pieceBytes` every STEP_MS (reading paused while that much waits, so TCP flow
 * control holds the dialer back). After `blackhole()` it reads and relays nothing more and closes
 * nothing: the dialer sees a peer that vanished, or hangs, in the middle of the transfer. With
 * `asEarlierVersion`, the dialer's HELLO loses the `ka` field, so the peer sends no progress reports
 * (as a node of an earlier version would not): the dialer has only its own outgoing bytes to go by.
 */
class ThrottlingRelay {
  readonly #target: { host: string, port: number }
  readonly #server: Server
  readonly #sockets = new Set<Socket>()
  readonly #timers = new Set<NodeJS.Timeout>()
  readonly #unthrottlers = new Set<() => void>()
  #blackholed = false
  /** Bytes of the dialer's relayed so far. */
  relayed = 0

  constructor (target: string, { pieceBytes = PIECE_BYTES, asEarlierVersion = false } = {}) {
    this.#target = parseAddress(target)
    this.#server = createServer({ pauseOnConnect: true }, (client) => {
      const upstream = connect(this.#target)
      pairSockets(this.#sockets, client, upstream)
      upstream.on('data', (chunk: Buffer) => { if (!this.#blackholed) client.write(chunk) })
      let piece = pieceBytes
      const waiting: Buffer[] = []
      let waitingBytes = 0
      const forward = (): void => {
        const sent = passOn(waiting, upstream, piece)
        waitingBytes -= sent
        this.relayed += sent
      }
      let hello = asEarlierVersion ? new FrameReader(1 << 20) : undefined
      client.on('data', (chunk: Buffer) => {
        if (hello !== undefined) {
          // Nothing follows HELLO until the peer answered it: the first frame is all there is.
          hello.push(chunk)
          const frame = hello.next()
          if (frame === undefined) return
          const { ka: _asked, ...rest } = frame.header as Record<string, unknown>
          chunk = encodeFrame(FrameType.Hello, frame.id, JSON.stringify(rest))
          hello = undefined
        }
        waiting.push(chunk)
        waitingBytes += chunk.byteLength
        if (piece === Infinity) forward()
        else if (waitingBytes >= piece) client.pause()
      })
      const timer = setInterval(() => {
        if (this.#blackholed) return
        forward()
        if (waitingBytes < piece) client.resume()
      }, STEP_MS)
      this.#timers.add(timer)
      const unthrottle = (): void => {
        piece = Infinity
        forward()
        client.resume()
      }
      this.#unthrottlers.add(unthrottle)
      client.once('close', () => { clearInterval(timer); this.#timers.delete(timer); this.#unthrottlers.delete(unthrottle) })
      client.resume()
    })
  }

  async listen (): Promise<string> {
    await new Promise<void>((resolve) => { this.#server.listen(0, '127.0.0.1', resolve) })
    return `127.0.0.1:${(this.#server.address() as AddressInfo).port}`
  }

  /** Relays what the dialer sends as fast as it comes from now on. */
  unthrottle (): void {
    for (const unthrottle of this.#unthrottlers) unthrottle()
  }

  /** Stops reading from the dialer and relaying to it, leaving the connections open. */
  blackhole (): void {
    this.#blackholed = true
    for (const socket of this.#sockets) socket.pause()
  }

  async close (): Promise<void> {
    for (const timer of this.#timers) clearInterval(timer)
    for (const socket of this.#sockets) socket.destroy()
    await new Promise<void>((resolve) => { this.#server.close(() => { resolve() }) })
  }
}

/** A self-signed certificate for 127.0.0.1, or undefined (and the test skipped) without openssl. */
async function selfSigned (t: TestContext, dir: string): Promise<TcpTlsOptions | undefined> {
  const key = join(dir, 'key.pem')
  const cert = join(dir, 'cert.pem')
  try {
    await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=galleonfs-test', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'])
  } catch (err) {
    t.skip(`openssl is not available to make a test certificate (${(err as Error).message}); install openssl to run the TLS case`)
    return undefined
  }
  return { key: await readFile(key), cert: await readFile(cert), ca: await readFile(cert) }
}

for (const secure of [false, true]) {
  const over = secure ? 'over TLS' : 'over plain TCP'

  test(`${over}: a peer reading a large request slowly keeps its connection although the transfer lasts many keepalive timeouts`, { timeout: 60_000 }, async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'galleon-keepalive-'))
    const tls = secure ? await selfSigned(t, dir) : undefined
    if (secure && tls === undefined) return
    const server = transport('server', { tls })
    const client = transport('client', { tls, ...KEEPALIVE })
    const relay = new ThrottlingRelay(await server.listen(sizeOf))
    try {
      const via = await relay.listen()
      const reply = await client.request(via, { kind: 'big', header: {}, payload: new Uint8Array(PAYLOAD_BYTES) }, { timeoutMs: 50_000 })
      assert.equal(reply.header.bytes, PAYLOAD_BYTES)
      // The relay lets at most PIECE_BYTES through per STEP_MS, so the transfer took at least
      // PAYLOAD_BYTES / PIECE_BYTES steps: many times the keepalive's interval plus its timeout.
      assert.ok((PAYLOAD_BYTES / PIECE_BYTES) * STEP_MS > 2 * (KEEPALIVE.keepaliveIntervalMs + KEEPALIVE.keepaliveTimeoutMs))
      assert.equal(client.stats().outboundConnections, 1, 'the connection stayed up')
      assert.equal(server.stats().inboundConnections, 1, 'one connection all along')
      // And it still works afterwards.
      assert.equal((await client.request(via, { kind: 'small', header: {}, payload: new Uint8Array(10) })).header.bytes, 10)
    } finally {
      await Promise.all([client.close(), server.close()])
      await relay.close()
      await rm(dir, { recursive: true, force: true })
    }
  })

  // Plain TCP only: over TLS the peer sees the bytes a TLS record (16 KiB) at a time, which at 1 KiB
  // per step is slower than the timeout; at any useful speed a record is not.
  if (!secure) test(`${over}: a peer still reading a request the kernels took all of keeps the connection: it reports that it reads`, { timeout: 60_000 }, async () => {
    const server = transport('server')
    const client = transport('client', KEEPALIVE)
    // 24 KiB fit in the kernels' buffers at once, so the dialer sees no bytes leave after the
    // first moment; the peer gets them 1 KiB every STEP_MS.
    const relay = new ThrottlingRelay(await server.listen(sizeOf), { pieceBytes: 1024 })
    const payloadBytes = 24 * 1024
    try {
      const via = await relay.listen()
      assert.ok((payloadBytes / 1024 - 1) * STEP_MS > 1.5 * (KEEPALIVE.keepaliveIntervalMs + KEEPALIVE.keepaliveTimeoutMs))
      const reply = await client.request(via, { kind: 'trickle', header: {}, payload: new Uint8Array(payloadBytes) }, { timeoutMs: 50_000 })
      assert.equal(reply.header.bytes, payloadBytes)
      assert.equal(client.stats().outboundConnections, 1, 'the connection stayed up')
      assert.equal(server.stats().inboundConnections, 1, 'one connection all along')
    } finally {
      await Promise.all([client.close(), server.close()])
      await relay.close()
    }
  })

  // The relay rewrites the dialer's HELLO, which it can read only without TLS.
  if (!secure) test(`${over}: a peer of an earlier version (no progress reports) reading a large request slowly keeps its connection while it takes the bytes`, { timeout: 60_000 }, async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'galleon-keepalive-'))
    const tls = secure ? await selfSigned(t, dir) : undefined
    if (secure && tls === undefined) return
    const server = transport('server', { tls })
    const client = transport('client', { tls, ...KEEPALIVE })
    const relay = new ThrottlingRelay(await server.listen(sizeOf), { asEarlierVersion: true })
    try {
      const via = await relay.listen()
      let settled = false
      const pending = client.request(via, { kind: 'big', header: {}, payload: new Uint8Array(PAYLOAD_BYTES) }, { timeoutMs: 50_000 }).finally(() => { settled = true })
      pending.catch(() => {})
      // At PIECE_BYTES per STEP_MS this takes at least 24 steps: twice the keepalive's interval
      // plus its timeout, all spent without a byte from the peer.
      const halfway = PAYLOAD_BYTES * 3 / 4
      assert.ok((halfway / PIECE_BYTES - 1) * STEP_MS > 1.5 * (KEEPALIVE.keepaliveIntervalMs + KEEPALIVE.keepaliveTimeoutMs))
      await until('three quarters of the request went through', () => relay.relayed >= halfway || settled)
      assert.equal(settled, false, `the request was not cut while the peer took its bytes: ${await pending.then(() => 'it completed', (err: Error) => err.message)}`)
      assert.equal(client.stats().outboundConnections, 1)
      // What the kernels buffer cannot be watched from the sending side: the peer reads it at once.
      relay.unthrottle()
      assert.equal((await pending).header.bytes, PAYLOAD_BYTES)
    } finally {
      await Promise.all([client.close(), server.close()])
      await relay.close()
      await rm(dir, { recursive: true, force: true })
    }
  })

  test(`${over}: a peer that stops reading in the middle of a large request, without closing, is still given up after the keepalive timeout`, { timeout: 60_000 }, async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'galleon-keepalive-'))
    const tls = secure ? await selfSigned(t, dir) : undefined
    if (secure && tls === undefined) return
    const server = transport('server', { tls })
    const client = transport('client', { tls, ...KEEPALIVE })
    const relay = new ThrottlingRelay(await server.listen(sizeOf))
    try {
      const via = await relay.listen()
      const pending = client.request(via, { kind: 'big', header: {}, payload: new Uint8Array(PAYLOAD_BYTES) }, { timeoutMs: 50_000 }).then(() => undefined, (err: GalleonError) => err)
      await until('the transfer is under way', () => relay.relayed >= 4 * PIECE_BYTES)
      relay.blackhole()
      const failure = await pending
      assert.equal(failure?.code, 'BACKEND_UNAVAILABLE')
      // Given up by the keepalive, not by the request's own (far longer) timeout.
      assert.match(failure.message, /keepalive/)
      await until('the dead connection is dropped', () => client.stats().outboundConnections === 0)
    } finally {
      await Promise.all([client.close(), server.close()])
      await relay.close()
      await rm(dir, { recursive: true, force: true })
    }
  })
}
