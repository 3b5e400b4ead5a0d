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
import { AbstractTransport, assertNodeId, errorFromWire, markNotSent, notSentCopy, type AbstractTransportOptions, type EncodedMessage, type RequestCancellation } from '../../src/abstract-transport.js'
import type { TransportMessage } from '../../src/drivers.js'
import { GalleonError, describe } from '../../src/errors.js'
import { PendingConnections, pendingLimitOption, type PendingSlot } from '../../src/pending-connections.js'
import { FramedSocket } from './framed-socket.js'
import { FRAMING_SLACK, FrameMac, FrameType, MAC_BYTES, MAX_HANDSHAKE_FRAME, PROTOCOL_VERSION, encodeFrame, newNonce, proof, proofMatches, sessionKeys, validNonce, type Frame } from './frames.js'

/** TLS material (PEM strings or buffers), as node:tls takes it. */
export interface TcpTlsOptions {
  readonly key: string | Buffer
  readonly cert: string | Buffer
  /**
   * Trusted CA certificates. When given, the server also requires and verifies client
   * certificates (mutual TLS); clients always verify the server against it.
   */
  readonly ca?: string | Buffer | Array<string | Buffer>
  /** Verify the peer's certificate (default true). Turning it off leaves only the HMAC handshake. */
  readonly rejectUnauthorized?: boolean
  /** Name to check the server certificate against, when it differs from the host dialed. */
  readonly servername?: string
}

/** Options of {@link TcpTransport}. */
export interface TcpTransportOptions extends AbstractTransportOptions {
  /**
   * Shared by every node of the cluster; peers without it are refused. At least
   * {@link MIN_CLUSTER_SECRET_BYTES} (16) bytes (a string: its UTF-8 bytes), since the handshake's
   * proofs, sent in clear, would let a short one be guessed offline; `openssl rand -hex 32` makes a
   * good one.
   */
  readonly clusterSecret: string | Uint8Array
  /** Interface to listen on (default 127.0.0.1). */
  readonly host?: string
  /** Port to listen on; 0 (the default) picks a free one. */
  readonly port?: number
  /** Host to put in the address `listen()` returns, when peers reach this node by another name. */
  readonly advertiseHost?: string
  /** Speak TLS (both when listening and when dialing). */
  readonly tls?: TcpTlsOptions
  /** A connection must complete the handshake within this long (default 10 s). */
  readonly handshakeTimeoutMs?: number
  /**
   * A dialed connection on which nothing has arrived for this long sends a keepalive, which the
   * peer answers without its handler (default 5 s; 0: no keepalives). Also the idle time before
   * the kernel's TCP keepalive probes start, on every connection.
   */
  readonly keepaliveIntervalMs?: number
  /**
   * A dialed connection that hears nothing for this long after sending a keepalive, while the peer
   * also takes none of the bytes being sent to it (a transfer the keepalive waits behind), is
   * closed: its requests fail with BACKEND_UNAVAILABLE and the next request dials again (default
   * 10 s). What the kernels already buffer (a few MB) cannot be watched: a peer must read it, and
   * answer, within this time.
   */
  readonly keepaliveTimeoutMs?: number
  /**
   * Accepted connections that have not completed the handshake (also those still in their TLS
   * handshake), at most; one more is closed at once (counted in `stats().refusedConnections`).
   * Connections past the handshake are not counted. Default 64.
   */
  readonly maxPendingConnections?: number
  /**
   * Of those, at most this many from one remote address (an IPv6 /64 counts as one), so that a
   * stranger flooding from one address leaves room for nodes at others. Nodes behind one NAT
   * address that (re)connect at the same moment share it: a refused one fails its requests with
   * BACKEND_UNAVAILABLE and dials again with the next. Default 16.
   */
  readonly maxPendingConnectionsPerAddress?: number
}

/** Shortest cluster secret a TcpTransport accepts, in bytes. */
export const MIN_CLUSTER_SECRET_BYTES = 16
/** Default of `maxPendingConnections`. */
export const DEFAULT_MAX_PENDING_CONNECTIONS = 64
/** Default of `maxPendingConnectionsPerAddress`. */
export const DEFAULT_MAX_PENDING_CONNECTIONS_PER_ADDRESS = 16

/** Request kind of keepalives: answered by the connection itself, never handed to the handler. */
export const KEEPALIVE_KIND = 'tcp:keepalive'
const KEEPALIVE_HEADER = `{"k":${JSON.stringify(KEEPALIVE_KIND)},"h":{}}`

/** When a dialed connection sends keepalives and gives up on a silent peer. */
interface Keepalive {
  readonly intervalMs: number
  readonly timeoutMs: number
}

/** Counters of a TcpTransport. */
export interface TcpTransportStats {
  readonly inFlightRequests: number
  readonly inFlightBytes: number
  readonly completed: number
  readonly failed: number
  /** Bytes of received requests being served (or whose replies wait to be written). */
  readonly servingBytes: number
  /** Bytes of frames this node's connections have not yet handed to their sockets (waiting for the end of the tick, or for 'drain' after write() returned false). */
  readonly queuedBytes: number
  /** Open connections this node dialed / accepted. */
  readonly outboundConnections: number
  readonly inboundConnections: number
  /** Accepted connections that have not completed the handshake yet (see `maxPendingConnections`). */
  readonly pendingConnections: number
  /** Connections closed on arrival since creation because `maxPendingConnections` (or the per-address cap) were pending. */
  readonly refusedConnections: number
}

/** A request waiting for its reply on a dialed connection. */
interface PendingReply {
  readonly message: EncodedMessage
  /** Handed to the framed socket (only once the connection is ready). See #neverLeft. */
  sent: boolean
  /** The REQUEST frame while it may still wait in the send queue (see FramedSocket.withdraw). */
  frame: object | undefined
  readonly resolve: (reply: TransportMessage) => void
  readonly reject: (err: GalleonError) => void
}

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

/** A connection this node dialed: handshake as client, then requests out, replies in. */
class OutboundConnection {
  readonly framed: FramedSocket
  readonly #transport: TcpTransport
  readonly #address: string
  readonly #secret: string | Uint8Array
  readonly #maxFrame: number
  readonly #nonce = newNonce()
  #state: 'connecting' | 'challenged' | 'authenticating' | 'ready' = 'connecting'
  #peerNode: string | undefined
  #serverNonce = ''
  /** Checks the server's frames once WELCOME arrived. */
  #receiveMac: FrameMac | undefined
  /** Set when the connection ends: what requests on it fail with. */
  #failure: GalleonError | undefined
  /** Why the peer said it hung up (GOODBYE), if it did. */
  #goodbye: GalleonError | undefined
  #pending = new Map<number, PendingReply>()
  #nextId = 1
  #handshakeTimer: NodeJS.Timeout
  readonly #keepalive: Keepalive
  #keepaliveTimer: NodeJS.Timeout | undefined
  /** performance.now() when bytes last arrived. */
  #lastHeard = 0
  /** The keepalive waiting for an answer (anything heard since it was sent answers it). */
  #keepaliveId: number | undefined
  #keepaliveSentAt = 0
  /** `framed.sentBytes` at the last check, and performance.now() when it last grew. */
  #sentBytes = 0
  #lastSent = 0

  constructor (transport: TcpTransport, address: string, socket: Socket, connectEvent: 'connect' | 'secureConnect', secret: string | Uint8Array, handshakeTimeoutMs: number, maxFrame: number, keepalive: Keepalive) {
    this.#transport = transport
    this.#address = address
    this.#secret = secret
    this.#maxFrame = maxFrame
    this.#keepalive = keepalive
    this.framed = new FramedSocket(socket, MAX_HANDSHAKE_FRAME, (frame) => { this.#onFrame(frame) }, (reason) => { this.#onEnd(reason) })
    socket.on('data', () => { this.#lastHeard = performance.now() })
    socket.once(connectEvent, () => {
      this.#state = 'challenged'
      this.framed.send(FrameType.Hello, 0, this.#hello())
    })
    this.#handshakeTimer = setTimeout(() => {
      this.framed.end(`no handshake with ${address} within ${handshakeTimeoutMs} ms`)
    }, handshakeTimeoutMs)
  }

  /** HELLO: who we are, and how often (ms) we would like to hear from the peer while it reads (0: never). */
  #hello (): string {
    return JSON.stringify({ v: PROTOCOL_VERSION, node: this.#transport.nodeId, nonce: this.#nonce, ka: this.#keepalive.intervalMs })
  }

  get ended (): boolean { return this.framed.ended }

  async request (message: EncodedMessage, cancellation: RequestCancellation): Promise<TransportMessage> {
    if (this.#failure !== undefined) throw notSentCopy(this.#failure)
    const id = this.#allocateId()
    return await new Promise<TransportMessage>((resolve, reject) => {
      const entry: PendingReply = { message, sent: false, frame: undefined, resolve, reject }
      this.#pending.set(id, entry)
      // The caller has settled the request already; a reply that still comes finds no id and is
      // ignored. A request still queued behind a full socket is taken back (else a hung peer would
      // let given-up requests pile up without bound, and run them when it wakes up).
      // True (the request never left this node) when it was still waiting for the handshake or queued.
      cancellation.onCancel = () => {
        this.#pending.delete(id)
        const neverLeft = !entry.sent || this.framed.withdraw(entry.frame) || FramedSocket.dropped(entry.frame)
        entry.frame = undefined
        return neverLeft
      }
      if (this.#state === 'ready') this.#send(id)
    })
  }

  #send (id: number): void {
    const entry = this.#pending.get(id)
    if (entry === undefined || entry.sent) return
    entry.sent = true
    const { kind, headerJson, payload } = entry.message
    entry.frame = this.framed.send(FrameType.Request, id, `{"k":${JSON.stringify(kind)},"h":${headerJson}}`, payload)
  }

  #allocateId (): number {
    do {
      this.#nextId = this.#nextId >= 0xffffffff ? 1 : this.#nextId + 1
    } while (this.#pending.has(this.#nextId) || this.#nextId === this.#keepaliveId)
    return this.#nextId
  }

  /** Once the connection is set up: keepalives while nothing arrives (see the file comment). */
  #startKeepalive (): void {
    const { intervalMs, timeoutMs } = this.#keepalive
    if (intervalMs === 0) return
    this.#lastHeard = performance.now()
    this.#lastSent = this.#lastHeard
    this.#sentBytes = this.framed.sentBytes
    this.#keepaliveTimer = setInterval(() => { this.#checkAlive() }, Math.max(1, Math.floor(Math.min(intervalMs, timeoutMs) / 2)))
    this.#keepaliveTimer.unref()
  }

  #checkAlive (): void {
    if (this.ended) return
    const now = performance.now()
    const sentBytes = this.framed.sentBytes
    if (sentBytes !== this.#sentBytes) {
      this.#sentBytes = sentBytes
      this.#lastSent = now
    }
    if (this.#keepaliveId !== undefined) {
      // Anything heard since the keepalive was sent shows the peer is there (its answer may queue
      // behind replies being written).
      if (this.#lastHeard >= this.#keepaliveSentAt) {
        this.#keepaliveId = undefined
      } else {
        // The keepalive may wait behind a large transfer the peer reads slowly: while it takes our
        // bytes, it is there. Only when neither direction moves for the timeout is it gone.
        const quietFor = now - Math.max(this.#keepaliveSentAt, this.#lastSent)
        if (quietFor >= this.#keepalive.timeoutMs) {
          this.framed.end(`nothing arrived from the peer for ${Math.round(now - this.#keepaliveSentAt)} ms after a keepalive, and it took none of the bytes sent to it for ${this.#keepalive.timeoutMs} ms: the peer vanished (a half-open connection) or hangs`)
        }
        return
      }
    }
    if (now - this.#lastHeard < this.#keepalive.intervalMs) return
    this.#keepaliveId = this.#allocateId()
    this.#keepaliveSentAt = now
    this.framed.send(FrameType.Request, this.#keepaliveId, KEEPALIVE_HEADER)
  }

  #peer (): string {
    return this.#peerNode === undefined ? this.#address : `${this.#address} (node ${this.#peerNode})`
  }

  #onFrame (frame: Frame): void {
    const header = frame.header as Record<string, unknown> | null
    if (frame.type === FrameType.Goodbye) {
      this.#goodbye = errorFromWire(header?.code, `${this.#peer()} closed the connection: ${String(header?.message)}`)
      this.framed.end('the peer said goodbye')
      return
    }
    switch (this.#state) {
      case 'challenged': {
        if (frame.type !== FrameType.Challenge || header === null || typeof header !== 'object') return this.#violation('expected a CHALLENGE frame')
        if (header.v !== PROTOCOL_VERSION) return this.#refuse('IO_ERROR', `${this.#address} speaks transport protocol version ${String(header.v)}, this node ${PROTOCOL_VERSION}; upgrade the older node`)
        if (typeof header.node !== 'string' || header.node.length === 0 || header.node.length > 256 || !validNonce(header.nonce)) return this.#violation('malformed CHALLENGE')
        this.#peerNode = header.node
        this.#serverNonce = header.nonce
        const me = this.#transport.nodeId
        if (!proofMatches(header.proof, proof(this.#secret, 'server', me, header.node, this.#nonce, header.nonce))) {
          return this.#refuse('PERMISSION_DENIED', `${this.#peer()} failed to prove it knows the cluster secret: the cluster secrets differ; give every node the same clusterSecret`)
        }
        this.#state = 'authenticating'
        this.framed.send(FrameType.Proof, 0, JSON.stringify({ proof: proof(this.#secret, 'client', me, header.node, this.#nonce, this.#serverNonce) }))
        const keys = sessionKeys(this.#secret, me, header.node, this.#nonce, this.#serverNonce)
        this.framed.authenticateSending(new FrameMac(keys.clientToServer))
        this.#receiveMac = new FrameMac(keys.serverToClient)
        return
      }
      case 'authenticating': {
        if (frame.type !== FrameType.Welcome) return this.#violation('expected a WELCOME frame')
        clearTimeout(this.#handshakeTimer)
        this.#state = 'ready'
        this.framed.authenticateReceiving(this.#receiveMac as FrameMac)
        this.framed.reader.maxFrame = this.#maxFrame
        for (const id of [...this.#pending.keys()]) this.#send(id)
        this.#startKeepalive()
        return
      }
      case 'ready': {
        if (frame.id === 0 && frame.type === FrameType.Reply) return // the peer is reading what we send (see the file comment)
        if (frame.id === this.#keepaliveId && (frame.type === FrameType.Reply || frame.type === FrameType.Failure)) {
          // (A peer of an earlier version hands it to its handler, which fails it: an answer too.)
          this.#keepaliveId = undefined
          return
        }
        const entry = this.#pending.get(frame.id)
        if (entry === undefined) return // answered after its request timed out or was aborted
        if (frame.type === FrameType.Reply) {
          if (header === null || typeof header !== 'object' || typeof header.k !== 'string' || header.h === null || typeof header.h !== 'object') return this.#violation('malformed REPLY')
          this.#pending.delete(frame.id)
          entry.resolve({ kind: header.k, header: header.h as Record<string, unknown>, payload: frame.payload })
        } else if (frame.type === FrameType.Failure) {
          this.#pending.delete(frame.id)
          entry.reject(errorFromWire(header?.code, header?.message))
        } else {
          this.#violation(`unexpected frame type ${frame.type}`)
        }
        return
      }
      default:
        this.#violation(`frame type ${frame.type} before the connection was set up`)
    }
  }

  /** Ends the connection because the peer cannot be trusted or understood, telling it why. */
  #refuse (code: 'PERMISSION_DENIED' | 'IO_ERROR', message: string): void {
    this.#failure = new GalleonError(code, message)
    const toPeer = code === 'PERMISSION_DENIED'
      ? `node ${this.#transport.nodeId} refused node ${String(this.#peerNode)}: the cluster secrets differ; give every node the same clusterSecret`
      : message
    this.framed.finish(FrameType.Goodbye, JSON.stringify({ code, message: toPeer }), message)
  }

  #violation (what: string): void {
    this.#refuse('IO_ERROR', `${this.#peer()} broke the transport protocol (${what}); is it a GalleonFS node of the same version?`)
  }

  #onEnd (reason: string): void {
    clearTimeout(this.#handshakeTimer)
    clearInterval(this.#keepaliveTimer)
    const broke = this.#state === 'ready' && this.#failure === undefined && this.#goodbye === undefined
    this.#failure ??= this.#goodbye ?? (this.#state === 'connecting'
      ? new GalleonError('BACKEND_UNAVAILABLE', `cannot connect to ${this.#address}: ${reason}; is the node running and listening there?`)
      : this.#state === 'ready'
        ? new GalleonError('BACKEND_UNAVAILABLE', `the connection to ${this.#peer()} broke (${reason}); requests in flight may or may not have been applied`)
        : new GalleonError('BACKEND_UNAVAILABLE', `the handshake with ${this.#peer()} failed: ${reason}`))
    const failure = this.#failure
    const pending = [...this.#pending.values()]
    this.#pending.clear()
    // Decided per request: one never handed to the socket (the connection was not ready yet, or it
    // still waited in the send queue) cannot have reached the peer; any other may have.
    let unsent: GalleonError | undefined
    for (const entry of pending) {
      if (!entry.sent || FramedSocket.dropped(entry.frame)) {
        unsent ??= broke
          ? markNotSent(new GalleonError('BACKEND_UNAVAILABLE', `the connection to ${this.#peer()} broke (${reason}) before the request was sent; it was not applied`))
          : notSentCopy(failure)
        entry.reject(unsent)
      } else {
        entry.reject(failure)
      }
    }
  }
}

/** A connection this node accepted: handshake as server, then requests in, replies out. */
class InboundConnection {
  readonly framed: FramedSocket
  servingBytes = 0
  readonly #transport: TcpTransport
  readonly #secret: string | Uint8Array
  readonly #maxFrame: number
  readonly #maxServingBytes: number
  readonly #nonce = newNonce()
  readonly #remote: string
  #state: 'hello' | 'proof' | 'ready' = 'hello'
  #peerNode = ''
  #clientNonce = ''
  #held = false
  #handshakeTimer: NodeJS.Timeout
  /** While reading, tell the dialer so when nothing was sent to it for this long (0: never; from HELLO). */
  #progressEveryMs = 0
  /** performance.now() when a frame was last sent to the dialer. */
  #lastSent = 0
  /** Its place among the connections in their handshake, given back once the dialer proved itself. */
  readonly #pendingSlot: PendingSlot | undefined

  constructor (transport: TcpTransport, socket: Socket, secret: string | Uint8Array, handshakeTimeoutMs: number, maxFrame: number, maxServingBytes: number, pendingSlot: PendingSlot | undefined) {
    this.#transport = transport
    this.#pendingSlot = pendingSlot
    this.#secret = secret
    this.#maxFrame = maxFrame
    this.#maxServingBytes = maxServingBytes
    this.#remote = formatAddress(socket.remoteAddress ?? 'unknown', socket.remotePort ?? 0)
    this.framed = new FramedSocket(socket, MAX_HANDSHAKE_FRAME, (frame) => { this.#onFrame(frame) }, () => { clearTimeout(this.#handshakeTimer) })
    socket.on('data', () => { this.#reportProgress() })
    this.#handshakeTimer = setTimeout(() => {
      this.framed.finish(FrameType.Goodbye, JSON.stringify({ code: 'BACKEND_UNAVAILABLE', message: `no handshake within ${handshakeTimeoutMs} ms` }), 'handshake timeout')
    }, handshakeTimeoutMs)
  }

  #onFrame (frame: Frame): void {
    const header = frame.header as Record<string, unknown> | null
    if (frame.type === FrameType.Goodbye) {
      this.framed.end('the peer said goodbye')
      return
    }
    if (this.#state === 'ready' && frame.type === FrameType.Request) {
      this.#onRequest(frame, header)
      return
    }
    if (this.#state === 'hello' && frame.type === FrameType.Hello && header !== null && typeof header === 'object') {
      if (header.v !== PROTOCOL_VERSION) return this.#refuse('IO_ERROR', `this node speaks transport protocol version ${PROTOCOL_VERSION}, the dialer ${String(header.v)}; upgrade the older node`)
      try {
        assertNodeId(header.node)
      } catch {
        return this.#refuse('IO_ERROR', 'malformed HELLO (node id)')
      }
      if (!validNonce(header.nonce)) return this.#refuse('IO_ERROR', 'malformed HELLO (nonce)')
      this.#peerNode = header.node
      this.#clientNonce = header.nonce
      // Dialers of earlier versions ask for nothing; a bad value is ignored like a missing one.
      if (Number.isSafeInteger(header.ka) && (header.ka as number) > 0) this.#progressEveryMs = Math.max(1, Math.floor((header.ka as number) / 2))
      this.#state = 'proof'
      const me = this.#transport.nodeId
      this.framed.send(FrameType.Challenge, 0, JSON.stringify({ v: PROTOCOL_VERSION, node: me, nonce: this.#nonce, proof: proof(this.#secret, 'server', this.#peerNode, me, this.#clientNonce, this.#nonce) }))
      return
    }
    if (this.#state === 'proof' && frame.type === FrameType.Proof && header !== null && typeof header === 'object') {
      const me = this.#transport.nodeId
      if (!proofMatches(header.proof, proof(this.#secret, 'client', this.#peerNode, me, this.#clientNonce, this.#nonce))) {
        return this.#refuse('PERMISSION_DENIED', `node ${me} refused node ${this.#peerNode} from ${this.#remote}: the cluster secrets differ; give every node the same clusterSecret`)
      }
      clearTimeout(this.#handshakeTimer)
      this.#state = 'ready'
      this.#pendingSlot?.release()
      const keys = sessionKeys(this.#secret, this.#peerNode, me, this.#clientNonce, this.#nonce)
      this.framed.authenticateReceiving(new FrameMac(keys.clientToServer))
      this.framed.reader.maxFrame = this.#maxFrame
      this.#send(FrameType.Welcome, 0, '{}')
      this.framed.authenticateSending(new FrameMac(keys.serverToClient))
      return
    }
    this.#refuse('IO_ERROR', `unexpected frame type ${frame.type} in state ${this.#state}; is the dialer a GalleonFS node of the same version?`)
  }

  #onRequest (frame: Frame, header: Record<string, unknown> | null): void {
    if (header === null || typeof header !== 'object' || typeof header.k !== 'string' || header.h === null || typeof header.h !== 'object' || Array.isArray(header.h)) {
      return this.#refuse('IO_ERROR', 'malformed REQUEST header')
    }
    if (header.k === KEEPALIVE_KIND) {
      this.#send(FrameType.Reply, frame.id, KEEPALIVE_HEADER)
      return
    }
    const bytes = frame.payload.byteLength + 64
    this.servingBytes += bytes
    if (this.servingBytes > this.#maxServingBytes && !this.#held) {
      this.#held = true
      this.framed.hold()
    }
    const request: TransportMessage = { kind: header.k, header: header.h as Record<string, unknown>, payload: frame.payload }
    void this.#transport.serveRequest(this.#peerNode, request).then((outcome) => {
      // send() calls back once the reply is handed to the socket, or dropped with the connection.
      const done = (): void => { this.#release(bytes) }
      if (outcome.ok) {
        const { kind, headerJson, payload } = outcome.reply
        this.#send(FrameType.Reply, frame.id, `{"k":${JSON.stringify(kind)},"h":${headerJson}}`, payload, done)
      } else {
        this.#send(FrameType.Failure, frame.id, JSON.stringify({ code: outcome.code, message: outcome.message }), undefined, done)
      }
    })
  }

  #send (type: FrameType, id: number, headerJson: string, payload?: Uint8Array, written?: () => void): void {
    this.#lastSent = performance.now()
    this.framed.send(type, id, headerJson, payload, written)
  }

  /**
   * Bytes arrived: the dialer may be sending a large frame, its keepalive queued behind it, and see
   * nothing of our reading once its bytes sit in the kernels' buffers. An empty REPLY with id 0 (no
   * request has it; dialers ignore it) shows it we are there.
   */
  #reportProgress (): void {
    if (this.#state !== 'ready' || this.#progressEveryMs === 0 || this.framed.ended) return
    const now = performance.now()
    if (now - this.#lastSent < this.#progressEveryMs) return
    this.#send(FrameType.Reply, 0, KEEPALIVE_HEADER)
  }

  #release (bytes: number): void {
    this.servingBytes -= bytes
    if (this.#held && this.servingBytes <= this.#maxServingBytes) {
      this.#held = false
      this.framed.release()
    }
  }

  #refuse (code: 'PERMISSION_DENIED' | 'IO_ERROR', message: string): void {
    this.framed.finish(FrameType.Goodbye, JSON.stringify({ code, message }), message)
  }
}

/** Both ends' addresses of an accepted connection: the same for a TLS socket and the TCP one under it. */
function connectionKey (socket: Socket): string {
  return `${String(socket.remoteAddress)}|${String(socket.remotePort)}|${String(socket.localAddress)}|${String(socket.localPort)}`
}

/** `host:port`, with brackets around an IPv6 host. */
export function formatAddress (host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
}

/** Parses `host:port` or `[v6]:port`; throws INVALID_ARGUMENT otherwise. */
export function parseAddress (address: string): { host: string, port: number } {
  const match = /^\[([^\]]+)\]:(\d{1,5})$/.exec(address) ?? /^([^:[\]]+):(\d{1,5})$/.exec(address)
  const port = match === null ? NaN : Number(match[2])
  if (match === null || !(port >= 1 && port <= 65535)) {
    throw new GalleonError('INVALID_ARGUMENT', `a tcp transport address is host:port (or [ipv6]:port) with a port from 1 to 65535, got ${describe(address)}`)
  }
  return { host: match[1] as string, port }
}

function isIp (host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(':')
}

/** Backend descriptor: name, availability, and a factory. */
export const tcpTransportBackend = {
  name: 'tcp',
  isAvailable: async (): Promise<boolean> => true,
  create: (options: TcpTransportOptions): TcpTransport => new TcpTransport(options)
}
