// The tcp transport: node-to-node requests over TCP (optionally TLS) with length-prefixed frames,
// a mutual HMAC handshake on a cluster secret, every later frame authenticated by a MAC under session
// keys derived from it (see frames.ts), pipelining, backpressure and reconnect on demand.
//
//   const t = new TcpTransport({ nodeId: 'a', clusterSecret: secret, host: '127.0.0.1', port: 0 })
//   const address = await t.listen(handler)       // '127.0.0.1:40123'
//   const reply = await other.request(address, { kind: 'ping', header: {} })
//
// Each node dials the peers it sends to (one connection per peer address, many requests in flight on
// it, replies matched by id in any order); connections it accepts carry only the dialer's requests.
// A request waits while `maxInFlightBytes` of requests to that peer are unanswered; a receiver stops
// reading a connection while `maxInFlightBytes` of its requests are being served, which TCP flow
// control turns into socket.write() returning false on the sender, which then queues until 'drain'.
// A dialed connection on which nothing arrives for `keepaliveIntervalMs` sends a keepalive (a
// request of the reserved kind `tcp:keepalive`, answered by the peer's connection itself); one that
// still hears nothing, and whose peer takes none of the bytes being sent to it, for
// `keepaliveTimeoutMs` is closed, so a peer that vanished without a FIN or RST (a half-open
// connection, a host that lost power) or hangs (a stopped process) fails the requests on it at once
// and the next request dials again, while a peer slowly reading a large transfer (with the
// keepalive queued behind it) keeps its connection. For that the dialer watches its bytes leave
// (handed to the kernel), and the accepting side, while it reads, reports so (an empty REPLY with id
// 0, which no request has) if it sent nothing for half the interval the dialer asked for in HELLO:
// what sits in the kernels' buffers cannot be watched from the sending side. The kernel's TCP
// keepalive runs on every connection as well (it ends accepted connections whose dialer's host is gone).
//
// Connections that have not completed the handshake are capped per listener (`maxPendingConnections`
// in all, `maxPendingConnectionsPerAddress` from one address): past that a new one is closed at once
// (with a GOODBYE saying why, in clear), so strangers cannot hold sockets and memory by the
// thousand until each times out, nor, from one address, keep a node at another out. Connections
// past the handshake are not counted and never refused.

import { connect as netConnect, createServer as netCreateServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { connect as tlsConnect, createServer as tlsCreateServer } from 'node:tls'
import { AbstractTransport, type EncodedMessage, type RequestCancellation } from '../../src/abstract-transport.js'
import type { TransportMessage } from '../../src/drivers.js'
import { GalleonError, describe } from '../../src/errors.js'
import { PendingConnections, pendingLimitOption, type PendingSlot } from '../../src/pending-connections.js'
import { FRAMING_SLACK, FrameType, MAC_BYTES, encodeFrame } from './frames.js'
import { InboundConnection } from './inbound-connection.js'
import { DEFAULT_MAX_PENDING_CONNECTIONS, DEFAULT_MAX_PENDING_CONNECTIONS_PER_ADDRESS, MIN_CLUSTER_SECRET_BYTES, formatAddress, isIp, parseAddress, type Keepalive, type TcpTlsOptions, type TcpTransportOptions, type TcpTransportStats } from './options.js'
import { OutboundConnection } from './outbound-connection.js'

// Options, limits and counters live in options.ts, the two ends of a connection in
// outbound-connection.ts and inbound-connection.ts; the package's 'galleonfs/backends/tcp' exports them from here.
export { DEFAULT_MAX_PENDING_CONNECTIONS, DEFAULT_MAX_PENDING_CONNECTIONS_PER_ADDRESS, KEEPALIVE_KIND, MIN_CLUSTER_SECRET_BYTES, formatAddress, parseAddress } from './options.js'
export type { TcpTlsOptions, TcpTransportOptions, TcpTransportStats } from './options.js'

/** The tcp transport. See the file comment. */
export class TcpTransport extends AbstractTransport {
  readonly name = 'tcp'
  readonly #secret: string | Uint8Array
  readonly #host: string
  readonly #port: number
  readonly #advertiseHost: string | undefined
  readonly #tls: TcpTlsOptions | undefined
  readonly #handshakeTimeoutMs: number
  readonly #keepalive: Keepalive
  readonly #maxFrame: number
  #server: Server | undefined
  #address: string | undefined
  /** Every socket accepted (raw, also those still in the TLS handshake), for close(). */
  #acceptedSockets = new Set<Socket>()
  #inbound = new Set<InboundConnection>()
  #outbound = new Map<string, OutboundConnection>()
  /** Resolve when a socket of this transport has closed; only live ones are kept. */
  #socketsClosing = new Set<Promise<void>>()
  readonly #pending: PendingConnections
  /** With TLS: the slots of raw sockets still in their TLS handshake, by connection (both ends' addresses). */
  #tlsSlots = new Map<string, PendingSlot>()

  constructor (options: TcpTransportOptions) {
    super(options)
    const secret = options.clusterSecret
    if (!(typeof secret === 'string' || secret instanceof Uint8Array)) {
      throw new GalleonError('INVALID_ARGUMENT', `clusterSecret must be a string or Uint8Array of at least ${MIN_CLUSTER_SECRET_BYTES} bytes shared by every node of the cluster, got ${describe(secret)}`)
    }
    const secretBytes = typeof secret === 'string' ? Buffer.byteLength(secret, 'utf8') : secret.byteLength
    if (secretBytes < MIN_CLUSTER_SECRET_BYTES) {
      // The handshake's proofs travel in clear: a short secret could be guessed from them offline.
      throw new GalleonError('INVALID_ARGUMENT', `clusterSecret is ${secretBytes} bytes long${typeof secret === 'string' ? ' (in UTF-8)' : ''}; it must be at least ${MIN_CLUSTER_SECRET_BYTES} bytes, or it could be guessed from a recorded handshake: make one with \`openssl rand -hex 32\` and give every node the same`)
    }
    this.#secret = secret
    this.#host = options.host ?? '127.0.0.1'
    if (typeof this.#host !== 'string' || this.#host.length === 0) throw new GalleonError('INVALID_ARGUMENT', `host must be a non-empty string, got ${describe(options.host)}`)
    this.#port = options.port ?? 0
    if (!Number.isInteger(this.#port) || this.#port < 0 || this.#port > 65535) throw new GalleonError('INVALID_ARGUMENT', `port must be an integer from 0 to 65535, got ${describe(options.port)}`)
    this.#advertiseHost = options.advertiseHost
    this.#tls = options.tls
    if (this.#tls !== undefined && (this.#tls.key === undefined || this.#tls.cert === undefined)) throw new GalleonError('INVALID_ARGUMENT', 'tls needs at least key and cert (PEM)')
    this.#handshakeTimeoutMs = options.handshakeTimeoutMs ?? 10_000
    if (!Number.isSafeInteger(this.#handshakeTimeoutMs) || this.#handshakeTimeoutMs <= 0) throw new GalleonError('INVALID_ARGUMENT', `handshakeTimeoutMs must be a positive integer, got ${describe(options.handshakeTimeoutMs)}`)
    const intervalMs = options.keepaliveIntervalMs ?? 5000
    if (!Number.isSafeInteger(intervalMs) || intervalMs < 0) throw new GalleonError('INVALID_ARGUMENT', `keepaliveIntervalMs must be a non-negative integer (0: no keepalives), got ${describe(options.keepaliveIntervalMs)}`)
    const timeoutMs = options.keepaliveTimeoutMs ?? 10_000
    if (!Number.isSafeInteger(timeoutMs) || timeoutMs <= 0) throw new GalleonError('INVALID_ARGUMENT', `keepaliveTimeoutMs must be a positive integer, got ${describe(options.keepaliveTimeoutMs)}`)
    this.#keepalive = { intervalMs, timeoutMs }
    this.#pending = new PendingConnections(
      pendingLimitOption('maxPendingConnections', options.maxPendingConnections, DEFAULT_MAX_PENDING_CONNECTIONS),
      pendingLimitOption('maxPendingConnectionsPerAddress', options.maxPendingConnectionsPerAddress, DEFAULT_MAX_PENDING_CONNECTIONS_PER_ADDRESS))
    this.#maxFrame = this.maxMessageBytes + FRAMING_SLACK + MAC_BYTES
  }

  /** The address `listen()` resolved to, once listening. */
  get address (): string | undefined { return this.#address }

  /** Bytes of received requests being served or whose replies are still queued. */
  get servingBytes (): number {
    let bytes = 0
    for (const connection of this.#inbound) bytes += connection.servingBytes
    return bytes
  }

  override stats (): TcpTransportStats {
    let queuedBytes = 0
    for (const connection of this.#outbound.values()) queuedBytes += connection.framed.queuedBytes
    for (const connection of this.#inbound) queuedBytes += connection.framed.queuedBytes
    return { ...super.stats(), servingBytes: this.servingBytes, queuedBytes, outboundConnections: this.#outbound.size, inboundConnections: this.#inbound.size, pendingConnections: this.#pending.count, refusedConnections: this.#pending.refused }
  }

  protected async _listen (): Promise<string> {
    const tls = this.#tls
    const server: Server = tls === undefined
      ? netCreateServer({ noDelay: true })
      // The handshake limit covers the TLS handshake too (Node's own default is 120 s).
      : tlsCreateServer({ key: tls.key, cert: tls.cert, ca: tls.ca, requestCert: tls.ca !== undefined, rejectUnauthorized: tls.ca !== undefined && tls.rejectUnauthorized !== false, handshakeTimeout: this.#handshakeTimeoutMs }, (socket) => {
        const key = connectionKey(socket)
        const slot = this.#tlsSlots.get(key)
        this.#tlsSlots.delete(key)
        this.#accept(socket, slot)
      })
    // The raw TCP connection (with TLS: before its handshake), where the pending caps apply.
    server.on('connection', (socket: Socket) => {
      this.#acceptedSockets.add(socket)
      if (this.#keepalive.intervalMs > 0) socket.setKeepAlive(true, this.#keepalive.intervalMs)
      this.#trackClose(new Promise((resolve) => { socket.once('close', () => { this.#acceptedSockets.delete(socket); resolve() }) }))
      socket.on('error', () => {}) // reported through the framed socket, or a failed TLS handshake nobody waits for
      if (this.closed) {
        socket.destroy()
        return
      }
      const slot = this.#pending.admit(socket)
      if (typeof slot === 'string') {
        this.#refuseOverCap(socket, slot, tls !== undefined)
        return
      }
      if (tls === undefined) {
        this.#accept(socket, slot)
      } else {
        const key = connectionKey(socket)
        this.#tlsSlots.set(key, slot)
        socket.once('close', () => { if (this.#tlsSlots.get(key) === slot) this.#tlsSlots.delete(key) })
      }
    })
    // A stranger's failed TLS handshake only ends its own connection; Node leaves the socket open
    // (also after handshakeTimeout), so it is destroyed here.
    server.on('tlsClientError', (_err: Error, socket: Socket) => { socket.destroy() })
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        reject(err.code === 'EADDRINUSE'
          ? new GalleonError('BUSY', `${formatAddress(this.#host, this.#port)} is already in use; pick another port (0 picks a free one)`, { cause: err })
          : new GalleonError('BACKEND_UNAVAILABLE', `could not listen on ${formatAddress(this.#host, this.#port)}: ${err.message}`, { cause: err }))
      })
      server.listen({ host: this.#host, port: this.#port }, () => { resolve() })
    })
    server.on('error', () => {}) // after listening, errors concern single connections
    this.#server = server
    const bound = server.address() as AddressInfo
    this.#address = formatAddress(this.#advertiseHost ?? bound.address, bound.port)
    return this.#address
  }

  protected async _request (address: string, message: EncodedMessage, cancellation: RequestCancellation): Promise<TransportMessage> {
    let connection = this.#outbound.get(address)
    if (connection === undefined || connection.ended) {
      const { host, port } = parseAddress(address)
      connection = this.#dial(address, host, port)
    }
    return await connection.request(message, cancellation)
  }

  protected async _close (): Promise<void> {
    const serverClosed = this.#server === undefined
      ? Promise.resolve()
      : new Promise<void>((resolve) => { (this.#server as Server).close(() => { resolve() }) })
    for (const connection of [...this.#outbound.values()]) connection.framed.end(`node ${this.nodeId} closed its transport`)
    for (const connection of [...this.#inbound]) connection.framed.end(`node ${this.nodeId} closed its transport`)
    for (const socket of [...this.#acceptedSockets]) socket.destroy()
    await Promise.all([serverClosed, ...this.#socketsClosing])
  }

  #trackClose (closed: Promise<void>): void {
    this.#socketsClosing.add(closed)
    void closed.then(() => { this.#socketsClosing.delete(closed) })
  }

  #dial (address: string, host: string, port: number): OutboundConnection {
    const tls = this.#tls
    const socket = tls === undefined
      ? netConnect({ host, port })
      : tlsConnect({ host, port, key: tls.key, cert: tls.cert, ca: tls.ca, rejectUnauthorized: tls.rejectUnauthorized !== false, servername: tls.servername ?? (isIp(host) ? undefined : host) })
    if (this.#keepalive.intervalMs > 0) socket.setKeepAlive(true, this.#keepalive.intervalMs)
    const connection = new OutboundConnection(this, address, socket, tls === undefined ? 'connect' : 'secureConnect', this.#secret, this.#handshakeTimeoutMs, this.#maxFrame, this.#keepalive)
    this.#outbound.set(address, connection)
    this.#trackClose(connection.framed.closed)
    void connection.framed.closed.then(() => {
      if (this.#outbound.get(address) === connection) this.#outbound.delete(address)
    })
    return connection
  }

  /**
   * Closes a connection that arrived while the pending caps were reached. Over plain TCP it is told
   * why first (a GOODBYE in clear, as before any handshake: a node refused this way sees the reason
   * in its error); a TLS one is just closed, its handshake not begun.
   */
  #refuseOverCap (socket: Socket, cap: 'total' | 'per-address', tls: boolean): void {
    if (tls) {
      socket.destroy()
      return
    }
    const message = cap === 'total'
      ? `node ${this.nodeId} has ${this.#pending.max} connections in their handshake already (maxPendingConnections); dial again in a moment, or raise maxPendingConnections if that many nodes connect at once`
      : `node ${this.nodeId} has ${this.#pending.maxPerAddress} connections from ${socket.remoteAddress ?? 'this address'} in their handshake already (maxPendingConnectionsPerAddress); dial again in a moment, or raise maxPendingConnectionsPerAddress if that many nodes connect from one address at once`
    socket.pause() // nothing it sends is read
    socket.write(encodeFrame(FrameType.Goodbye, 0, JSON.stringify({ code: 'BACKEND_UNAVAILABLE', message })))
    socket.destroySoon() // closed as soon as the GOODBYE is handed to the kernel
  }

  #accept (socket: Socket, slot: PendingSlot | undefined): void {
    if (this.closed) {
      socket.destroy()
      return
    }
    const connection = new InboundConnection(this, socket, this.#secret, this.#handshakeTimeoutMs, this.#maxFrame, this.maxInFlightBytes, slot)
    this.#inbound.add(connection)
    void connection.framed.closed.then(() => { this.#inbound.delete(connection) })
  }

  /** @internal Serves an authenticated request (AbstractTransport.serve for the connections). */
  async serveRequest (from: string, request: TransportMessage): ReturnType<AbstractTransport['serve']> {
    return await this.serve(from, request)
  }
}

/** Both ends' addresses of an accepted connection: the same for a TLS socket and the TCP one under it. */
function connectionKey (socket: Socket): string {
  return `${String(socket.remoteAddress)}|${String(socket.remotePort)}|${String(socket.localAddress)}|${String(socket.localPort)}`
}

/** Backend descriptor: name, availability, and a factory. */
export const tcpTransportBackend = {
  name: 'tcp',
  isAvailable: async (): Promise<boolean> => true,
  create: (options: TcpTransportOptions): TcpTransport => new TcpTransport(options)
}
