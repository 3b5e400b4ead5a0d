// The accepting side of the tcp transport: a connection a peer opened to this node, with the server
// half of the handshake, requests in (held back past maxInFlightBytes) and replies out (see index.ts).

import type { Socket } from 'node:net'
import { assertNodeId, type HandlerOutcome } from '../../src/abstract-transport.js'
import type { TransportMessage } from '../../src/drivers.js'
import { FramedSocket } from './framed-socket.js'
import { FrameMac, FrameType, MAX_HANDSHAKE_FRAME, PROTOCOL_VERSION, newNonce, proof, proofMatches, sessionKeys, validNonce, type Frame } from './frames.js'
import type { PendingSlot } from '../../src/pending-connections.js'
import { KEEPALIVE_HEADER, KEEPALIVE_KIND, formatAddress } from './options.js'

/** What an accepted connection needs of its transport. */
export interface InboundOwner {
  readonly nodeId: string
  /** Serves an authenticated request (TcpTransport.serveRequest). */
  serveRequest: (from: string, request: TransportMessage) => Promise<HandlerOutcome>
}

/** A connection this node accepted: handshake as server, then requests in, replies out. */
export class InboundConnection {
  readonly framed: FramedSocket
  servingBytes = 0
  readonly #transport: InboundOwner
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

  constructor (transport: InboundOwner, socket: Socket, secret: string | Uint8Array, handshakeTimeoutMs: number, maxFrame: number, maxServingBytes: number, pendingSlot: PendingSlot | undefined) {
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
