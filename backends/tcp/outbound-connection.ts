// The dialing side of the tcp transport: a connection this node opened to a peer, with the client
// half of the handshake, requests out and replies in, and keepalives (see index.ts for the protocol).

import type { Socket } from 'node:net'
import { errorFromWire, markNotSent, notSentCopy, type EncodedMessage, type RequestCancellation } from '../../src/abstract-transport.js'
import type { TransportMessage } from '../../src/drivers.js'
import { GalleonError } from '../../src/errors.js'
import { FramedSocket } from './framed-socket.js'
import { FrameMac, FrameType, MAX_HANDSHAKE_FRAME, PROTOCOL_VERSION, newNonce, proof, proofMatches, sessionKeys, validNonce, type Frame } from './frames.js'
import { KEEPALIVE_HEADER, type Keepalive } from './options.js'

/** What a dialed connection needs of its transport. */
export interface OutboundOwner {
  readonly nodeId: string
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

/** A connection this node dialed: handshake as client, then requests out, replies in. */
export class OutboundConnection {
  readonly framed: FramedSocket
  readonly #transport: OutboundOwner
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

  constructor (transport: OutboundOwner, address: string, socket: Socket, connectEvent: 'connect' | 'secureConnect', secret: string | Uint8Array, handshakeTimeoutMs: number, maxFrame: number, keepalive: Keepalive) {
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

  /** Once the connection is set up: keepalives while nothing arrives (see the comment atop index.ts). */
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
        if (frame.id === 0 && frame.type === FrameType.Reply) return // the peer is reading what we send (see the comment atop index.ts)
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
