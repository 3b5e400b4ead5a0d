// Wire format of the tcp transport: length-prefixed frames, and the HMAC proofs of the handshake.
//
//   frame  = u32 length (of everything after it) | u8 type | u32 request id | u32 header length
//            | header (JSON, UTF-8) | payload (the rest)
//
// Handshake (before any request): client HELLO {v, node, nonce}; server CHALLENGE {v, node, nonce,
// proof}; client PROOF {proof}; server WELCOME {}. Each proof is HMAC-SHA256 under the cluster
// secret over both node ids, both nonces and the prover's role, so neither side can replay or reflect
// the other's proof, and a side without the secret learns nothing it could use. GOODBYE {code,
// message} explains why a side is about to close the connection.

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'

export const PROTOCOL_VERSION = 1
/** Bytes before the header: type, request id, header length. */
export const FRAME_OVERHEAD = 9
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

/** Encodes a frame into one buffer (header JSON text already serialized). */
export function encodeFrame (type: FrameType, id: number, headerJson: string, payload: Uint8Array = EMPTY): Buffer {
  const headerLength = Buffer.byteLength(headerJson)
  const length = FRAME_OVERHEAD + headerLength + payload.byteLength
  const frame = Buffer.allocUnsafe(4 + length)
  frame.writeUInt32BE(length, 0)
  frame.writeUInt8(type, 4)
  frame.writeUInt32BE(id, 5)
  frame.writeUInt32BE(headerLength, 9)
  frame.write(headerJson, 13, 'utf8')
  frame.set(payload, 13 + headerLength)
  return frame
}

/** Thrown by FrameReader when the peer breaks the protocol; the connection must end. */
export class ProtocolError extends Error {}

/**
 * Reassembles frames from stream chunks. `maxFrame` may change (it grows after authentication);
 * a length field above it, or a frame whose parts do not add up, is a ProtocolError.
 */
export class FrameReader {
  maxFrame: number
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
    const frame = this.#take(4 + length)
    const type = frame.readUInt8(4)
    const id = frame.readUInt32BE(5)
    const headerLength = frame.readUInt32BE(9)
    if (headerLength > length - FRAME_OVERHEAD) throw new ProtocolError(`a header length of ${headerLength} bytes does not fit in a frame of ${length} bytes`)
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
    return { type, id, header, payload: frame.byteLength === frame.buffer.byteLength ? payload : payload.slice() }
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
