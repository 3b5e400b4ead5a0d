// Wire format of the tcp transport: length-prefixed frames, the HMAC proofs of the handshake, and the
// per-frame MACs that authenticate every frame after it.
//
//   frame  = u32 length (of everything after it) | u8 type | u32 request id | u32 header length
//            | header (JSON, UTF-8) | payload | [tag (16 bytes), once the direction is authenticated]
//
// Handshake (before any request): client HELLO {v, node, nonce}; server CHALLENGE {v, node, nonce,
// proof}; client PROOF {proof}; server WELCOME {}. Each proof is HMAC-SHA256 under the cluster
// secret over both node ids, both nonces and the prover's role, so neither side can replay or reflect
// the other's proof, and a side without the secret learns nothing it could use. GOODBYE {code,
// message} explains why a side is about to close the connection.
//
// Frame authentication (protocol version 2): both sides derive two session keys with HKDF-SHA256
// (ikm = cluster secret, salt = client nonce | server nonce (raw bytes), info = JSON
// ["galleonfs-transport-frames", 2, "client->server" | "server->client", client node, server node]).
// Every client frame after PROOF and every server frame after WELCOME ends with a tag:
//
//   tag = the Poly1305 tag of ChaCha20-Poly1305 (RFC 8439) under the key of the direction, with
//         nonce = 4 zero bytes | u64 sequence number (big-endian), no plaintext, and as associated
//         data the frame bytes from the length field to the end of the payload
//
// (the per-record construction of TLS 1.3 and SSH, here without encryption: TLS is the option for
// confidentiality; a nonce never repeats under a key, as keys are per connection and direction).
// Poly1305 runs at several GB/s where HMAC-SHA256 manages ~1.5, which matters for 1 MiB frames.
// The sequence number counts the authenticated frames of that direction from 0 and is not sent: the
// receiver expects the next one. So a frame that is altered, injected, replayed (also from another
// connection: other nonces, other keys), reordered, dropped before a later one, or reflected back
// to its sender (the other direction's key) fails the check, and the receiver closes the
// connection (GOODBYE BACKEND_UNAVAILABLE) without acting on the frame. Tags are compared in
// constant time. The length field includes the tag.

import { createCipheriv, createHmac, createSecretKey, hkdfSync, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto'

export const PROTOCOL_VERSION = 2
/** Bytes before the header: type, request id, header length. */
export const FRAME_OVERHEAD = 9
/** Bytes from the start of a frame to its header: the length field and FRAME_OVERHEAD. */
export const FRAME_PREFIX = 4 + FRAME_OVERHEAD
/** Bytes of the tag that ends every authenticated frame. */
export const MAC_BYTES = 16
/** A frame's length field counts these plus header and payload; the limit adds this slack to maxMessageBytes for the framing JSON. */
export const FRAMING_SLACK = 1024
/** Largest frame accepted before the peer has authenticated. */
export const MAX_HANDSHAKE_FRAME = 16 * 1024
export const NONCE_BYTES = 32

export const FrameType = {
  Hello: 1,
  Challenge: 2,
  Proof: 3,
  Welcome: 4,
  Goodbye: 5,
  Request: 6,
  Reply: 7,
  Failure: 8
} as const
export type FrameType = typeof FrameType[keyof typeof FrameType]

const EMPTY = new Uint8Array(0)

/** One decoded frame. `payload` is the frame's own memory (not shared with other frames). */
export interface Frame {
  readonly type: number
  readonly id: number
  readonly header: unknown
  readonly payload: Uint8Array
}

/**
 * Encodes a frame into one buffer (header JSON text already serialized); with `mac`, as the next
 * authenticated frame of its direction (tag appended).
 */
export function encodeFrame (type: FrameType, id: number, headerJson: string, payload: Uint8Array = EMPTY, mac?: FrameMac): Buffer {
  const headerLength = Buffer.byteLength(headerJson)
  const tagLength = mac === undefined ? 0 : MAC_BYTES
  const frame = Buffer.allocUnsafe(FRAME_PREFIX + headerLength + payload.byteLength + tagLength)
  const end = writeFramePrefix(frame, 0, type, id, headerJson, headerLength, payload.byteLength + tagLength)
  frame.set(payload, end)
  mac?.sign(frame, 0, end + payload.byteLength)
  return frame
}

/**
 * Writes length, type, id, header length and header at `offset` of `into`, for a frame whose
 * payload and tag take `rest` bytes; returns the offset after the header.
 */
export function writeFramePrefix (into: Buffer, offset: number, type: FrameType, id: number, headerJson: string, headerLength: number, rest: number): number {
  into.writeUInt32BE(FRAME_OVERHEAD + headerLength + rest, offset)
  into[offset + 4] = type
  into.writeUInt32BE(id, offset + 5)
  into.writeUInt32BE(headerLength, offset + 9)
  into.write(headerJson, offset + FRAME_PREFIX, headerLength, 'utf8')
  return offset + FRAME_PREFIX + headerLength
}

/** The two session keys of a connection (see the file comment). */
export interface SessionKeys {
  readonly clientToServer: KeyObject
  readonly serverToClient: KeyObject
}

/** Derives the per-direction frame keys from the cluster secret and the handshake (nonces base64, as sent). */
export function sessionKeys (secret: string | Uint8Array, clientNode: string, serverNode: string, clientNonce: string, serverNonce: string): SessionKeys {
  const salt = Buffer.concat([Buffer.from(clientNonce, 'base64'), Buffer.from(serverNonce, 'base64')])
  const derive = (direction: string): KeyObject => createSecretKey(Buffer.from(hkdfSync('sha256', secret, salt,
    JSON.stringify(['galleonfs-transport-frames', PROTOCOL_VERSION, direction, clientNode, serverNode]), 32)))
  return { clientToServer: derive('client->server'), serverToClient: derive('server->client') }
}

/**
 * Tags (sender) or checks (receiver) the authenticated frames of one direction of one connection,
 * in order: each call consumes the next sequence number.
 */
export class FrameMac {
  readonly #key: KeyObject
  readonly #nonce = Buffer.alloc(12)
  #next = 0

  constructor (key: KeyObject) {
    this.#key = key
  }

  #tag (parts: readonly Uint8Array[]): Buffer {
    const nonce = this.#nonce
    // 2^53 frames cannot happen on one connection; the high word keeps the encoding a true u64.
    nonce.writeUInt32BE(Math.floor(this.#next / 0x100000000), 4)
    nonce.writeUInt32BE(this.#next >>> 0, 8)
    this.#next++
    const cipher = createCipheriv('chacha20-poly1305', this.#key, nonce, { authTagLength: MAC_BYTES })
    for (const part of parts) cipher.setAAD(part, { plaintextLength: 0 })
    cipher.final()
    return cipher.getAuthTag()
  }

  /**
   * Tags the next frame, whose bytes before the tag are `frame[start, end)` followed by `detached`
   * (a payload sent from its own buffer), writing the tag at the end of `frame` after `end`.
   */
  sign (frame: Buffer, start: number, end: number, detached?: Uint8Array): void {
    const bytes = frame.subarray(start, end)
    const tag = this.#tag(detached === undefined ? [bytes] : [bytes, detached])
    tag.copy(frame, end, 0, MAC_BYTES)
  }

  /** True when `tag` authenticates `frame` as the next frame of this direction. */
  verify (frame: Uint8Array, tag: Uint8Array): boolean {
    const expected = this.#tag([frame])
    return tag.byteLength === MAC_BYTES && timingSafeEqual(expected, tag)
  }
}

/** Thrown by FrameReader when the peer breaks the protocol; the connection must end. */
export class ProtocolError extends Error {}

/** Thrown by FrameReader when a frame fails its MAC check: someone on the path tampered with the stream. */
export class FrameAuthenticationError extends ProtocolError {}

/**
 * Reassembles frames from stream chunks. `maxFrame` may change (it grows after authentication);
 * a length field above it, or a frame whose parts do not add up, is a ProtocolError. Once `mac` is
 * set, every frame must carry a valid tag (else FrameAuthenticationError), checked before anything
 * in it is parsed.
 */
export class FrameReader {
  maxFrame: number
  mac: FrameMac | undefined
  #chunks: Buffer[] = []
  #buffered = 0

  constructor (maxFrame: number) {
    this.maxFrame = maxFrame
  }

  get buffered (): number { return this.#buffered }

  push (chunk: Buffer): void {
    if (chunk.byteLength === 0) return
    this.#chunks.push(chunk)
    this.#buffered += chunk.byteLength
  }

  /** The next complete frame, or undefined until more bytes arrive. */
  next (): Frame | undefined {
    if (this.#buffered < 4) return undefined
    const length = this.#peekLength()
    if (length > this.maxFrame) throw new ProtocolError(`a frame of ${length} bytes exceeds the limit of ${this.maxFrame} bytes`)
    if (length < FRAME_OVERHEAD) throw new ProtocolError(`a frame of ${length} bytes is shorter than the ${FRAME_OVERHEAD}-byte frame header`)
    if (this.#buffered < 4 + length) return undefined
    let frame = this.#take(4 + length)
    const mac = this.mac
    if (mac !== undefined) {
      if (length < FRAME_OVERHEAD + MAC_BYTES) throw new FrameAuthenticationError(`an authenticated frame of ${length} bytes is too short to hold its tag`)
      const end = frame.byteLength - MAC_BYTES
      if (!mac.verify(frame.subarray(0, end), frame.subarray(end))) {
        throw new FrameAuthenticationError('a frame failed its authentication check (altered, injected, replayed, reordered or dropped frames on the network path)')
      }
      frame = frame.subarray(0, end)
    }
    const type = frame.readUInt8(4)
    const id = frame.readUInt32BE(5)
    const headerLength = frame.readUInt32BE(9)
    if (headerLength > frame.byteLength - FRAME_PREFIX) throw new ProtocolError(`a header length of ${headerLength} bytes does not fit in a frame of ${length} bytes`)
    let header: unknown
    try {
      header = JSON.parse(frame.toString('utf8', 13, 13 + headerLength))
    } catch {
      throw new ProtocolError('a frame header is not valid JSON')
    }
    const start = 13 + headerLength
    const payloadLength = frame.byteLength - start
    // Small payloads are copied out so they do not pin a large chunk; a frame assembled by concat is its own memory.
    const payload = payloadLength === 0
      ? new Uint8Array(0)
      : new Uint8Array(frame.buffer, frame.byteOffset + start, payloadLength)
    return { type, id, header, payload: frame.byteLength + (mac === undefined ? 0 : MAC_BYTES) === frame.buffer.byteLength ? payload : payload.slice() }
  }

  #peekLength (): number {
    const first = this.#chunks[0] as Buffer
    if (first.byteLength >= 4) return first.readUInt32BE(0)
    return this.#take(4, true).readUInt32BE(0)
  }

  /** Removes (or with `peek`, copies) the first `bytes` buffered bytes. */
  #take (bytes: number, peek = false): Buffer {
    const first = this.#chunks[0] as Buffer
    if (first.byteLength >= bytes && !peek) {
      this.#chunks[0] = first.subarray(bytes)
      if (first.byteLength === bytes) this.#chunks.shift()
      this.#buffered -= bytes
      return first.subarray(0, bytes)
    }
    const out = Buffer.allocUnsafeSlow(bytes)
    let filled = 0
    let index = 0
    while (filled < bytes) {
      const chunk = this.#chunks[index] as Buffer
      const part = Math.min(chunk.byteLength, bytes - filled)
      chunk.copy(out, filled, 0, part)
      filled += part
      if (!peek) {
        if (part === chunk.byteLength) {
          this.#chunks.shift()
        } else {
          this.#chunks[0] = chunk.subarray(part)
        }
      } else {
        index++
      }
    }
    if (!peek) this.#buffered -= bytes
    return out
  }
}

/** A fresh random nonce, base64. */
export function newNonce (): string {
  return randomBytes(NONCE_BYTES).toString('base64')
}

/** The proof that `role` knows the cluster secret, bound to both node ids and both nonces. */
export function proof (secret: string | Uint8Array, role: 'client' | 'server', clientNode: string, serverNode: string, clientNonce: string, serverNonce: string): string {
  return createHmac('sha256', secret)
    .update(JSON.stringify(['galleonfs-transport', PROTOCOL_VERSION, role, clientNode, serverNode, clientNonce, serverNonce]))
    .digest('base64')
}

/** Compares a received proof with the expected one in constant time. */
export function proofMatches (received: unknown, expected: string): boolean {
  if (typeof received !== 'string') return false
  const a = Buffer.from(received, 'base64')
  const b = Buffer.from(expected, 'base64')
  // The length of an HMAC-SHA256 is public, so checking it first leaks nothing about the secret.
  return a.byteLength === b.byteLength && timingSafeEqual(a, b)
}

/** True when `nonce` is a base64 string of NONCE_BYTES bytes. */
export function validNonce (nonce: unknown): nonce is string {
  return typeof nonce === 'string' && nonce.length <= 64 && Buffer.from(nonce, 'base64').byteLength === NONCE_BYTES
}
