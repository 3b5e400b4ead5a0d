// A raw NBD client for the h58 audit against doc/proto.md: option haggling and transmission spoken
// frame by frame over a socket, with replies decoded (simple, or structured up to the DONE chunk)
// so that a test can check each requirement of the protocol on the bytes the server sends.

import assert from 'node:assert/strict'
import { NbdClient, infoRequestData, metaContextData } from './nbd-client.js'

export { NbdClient, infoRequestData, metaContextData }

/** Option numbers (NBD_OPT_*) the audit sends. */
export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META_CONTEXT: 9, SET_META_CONTEXT: 10, EXTENDED_HEADERS: 11 } as const
/** Option reply types (NBD_REP_*). */
export const REP = { ACK: 1, SERVER: 2, INFO: 3, META_CONTEXT: 4, ERR_UNSUP: 0x80000001, ERR_POLICY: 0x80000002, ERR_INVALID: 0x80000003, ERR_TLS_REQD: 0x80000005, ERR_UNKNOWN: 0x80000006, ERR_SHUTDOWN: 0x80000007, ERR_TOO_BIG: 0x80000009 } as const
/** Information types (NBD_INFO_*). */
export const INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const
/** Commands (NBD_CMD_*). */
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const
/** Command flags (NBD_CMD_FLAG_*). */
export const CFLAG = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16 } as const
/** Transmission flags (NBD_FLAG_*). */
export const TFLAG = { HAS_FLAGS: 1, READ_ONLY: 2, SEND_FLUSH: 4, SEND_FUA: 8, ROTATIONAL: 16, SEND_TRIM: 32, SEND_WRITE_ZEROES: 64, SEND_DF: 128, CAN_MULTI_CONN: 256, SEND_CACHE: 1024, SEND_FAST_ZERO: 2048 } as const
/** Structured reply chunk types (NBD_REPLY_TYPE_*). */
export const CHUNK = { NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, ERROR: 0x8001, ERROR_OFFSET: 0x8002 } as const
/** Error values (NBD_E*). */
export const ERR = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const

/** One structured reply chunk as it came off the wire. */
export interface Chunk { flags: number, type: number, handle: bigint, payload: Buffer }

/** A whole reply: simple (error, data) or structured (its chunks, the last one flagged DONE). */
export type Reply =
  | { kind: 'simple', handle: bigint, error: number, data: Buffer }
  | { kind: 'structured', handle: bigint, chunks: Chunk[], error: number }

/** The data of NBD_OPT_INFO/GO naming `name` with the information requests `requests`. */
export function infoData (name: string, requests: number[] = []): Buffer {
  const nameBytes = Buffer.from(name)
  const data = Buffer.alloc(4 + nameBytes.byteLength + 2 + requests.length * 2)
  data.writeUInt32BE(nameBytes.byteLength, 0)
  nameBytes.copy(data, 4)
  data.writeUInt16BE(requests.length, 4 + nameBytes.byteLength)
  requests.forEach((type, i) => data.writeUInt16BE(type, 4 + nameBytes.byteLength + 2 + i * 2))
  return data
}

/** A raw client with decoded replies: `c` is the byte-level client underneath. */
export class WireClient {
  readonly c: NbdClient
  /** Whether structured replies were negotiated (decides how replies are read). */
  structured = false

  private constructor (c: NbdClient) { this.c = c }

  /** Connects and answers the greeting with `clientFlags` (3: fixed newstyle and no zeroes). */
  static async open (port: number, clientFlags = 3): Promise<{ client: WireClient, handshakeFlags: number }> {
    const c = await NbdClient.connect(port, { readTimeoutMs: 10_000, closeTimeoutMs: 10_000 })
    const handshakeFlags = await c.hello(clientFlags)
    return { client: new WireClient(c), handshakeFlags }
  }

  /** Sends an option and reads its replies up to the final one (ACK or an error). */
  async option (option: number, data: Buffer = Buffer.alloc(0)): Promise<Array<{ type: number, data: Buffer }>> {
    this.c.option(option, data)
    const replies: Array<{ type: number, data: Buffer }> = []
    for (;;) {
      const reply = await this.c.optionReply()
      assert.equal(reply.option, option, 'an option reply names the option it answers')
      replies.push({ type: reply.type, data: reply.data })
      if (reply.type === REP.ACK || reply.type >= 0x80000000) return replies
    }
  }

  /** NBD_OPT_STRUCTURED_REPLY, which must be acknowledged. */
  async structuredReplies (): Promise<void> {
    const replies = await this.option(OPT.STRUCTURED_REPLY)
    assert.deepEqual(replies.map((r) => r.type), [REP.ACK])
    this.structured = true
  }

  /** NBD_OPT_SET_META_CONTEXT: the contexts chosen (id and name) and the final reply type. */
  async setMetaContext (name: string, queries: string[]): Promise<{ contexts: Array<{ id: number, name: string }>, final: number }> {
    const replies = await this.option(OPT.SET_META_CONTEXT, metaContextData(name, queries))
    const final = (replies.at(-1) as { type: number }).type
    const contexts = replies.filter((r) => r.type === REP.META_CONTEXT).map((r) => ({ id: r.data.readUInt32BE(0), name: r.data.subarray(4).toString() }))
    return { contexts, final }
  }

  /** NBD_OPT_GO: the NBD_REP_INFO replies by type, and the final reply type (ACK: transmission). */
  async go (name: string, requests: number[] = [], option: number = OPT.GO): Promise<{ infos: Map<number, Buffer[]>, final: number, replies: Array<{ type: number, data: Buffer }> }> {
    const replies = await this.option(option, infoData(name, requests))
    const infos = new Map<number, Buffer[]>()
    for (const r of replies.filter((r) => r.type === REP.INFO)) {
      const type = r.data.readUInt16BE(0)
      infos.set(type, [...(infos.get(type) ?? []), r.data])
    }
    return { infos, final: (replies.at(-1) as { type: number }).type, replies }
  }

  /** Sends a request (with a 64-bit handle). */
  send (type: number, handle: bigint, offset: bigint | number, length: number, flags = 0, data?: Uint8Array): void {
    const head = Buffer.alloc(28)
    head.writeUInt32BE(0x25609513, 0)
    head.writeUInt16BE(flags, 4)
    head.writeUInt16BE(type, 6)
    head.writeBigUInt64BE(handle, 8)
    head.writeBigUInt64BE(BigInt(offset), 16)
    head.writeUInt32BE(length, 24)
    this.c.socket.write(data === undefined ? head : Buffer.concat([head, data]))
  }

  /**
   * The next reply, whole: a simple one (with `readLength` bytes of data when it is a successful
   * read) or every chunk of a structured one up to DONE (which must all carry one handle).
   */
  async reply (readLength = 0): Promise<Reply> {
    const magicBytes = await this.c.read(4)
    assert.ok(magicBytes !== undefined, 'a reply came')
    const magic = magicBytes.readUInt32BE(0)
    if (magic === 0x67446698) {
      const rest = await this.c.read(12)
      assert.ok(rest !== undefined)
      const error = rest.readUInt32BE(0)
      const data = error === 0 && readLength > 0 ? await this.c.read(readLength) : Buffer.alloc(0)
      assert.ok(data !== undefined)
      return { kind: 'simple', handle: rest.readBigUInt64BE(4), error, data }
    }
    assert.equal(magic, 0x668e33ef, `a reply magic, got 0x${magic.toString(16)}`)
    const chunks: Chunk[] = []
    for (let first = true; ; first = false) {
      if (!first) {
        const next = await this.c.read(4)
        assert.ok(next !== undefined && next.readUInt32BE(0) === 0x668e33ef, 'the next chunk of a structured reply')
      }
      const head = await this.c.read(16)
      assert.ok(head !== undefined)
      const payload = await this.c.read(head.readUInt32BE(12))
      assert.ok(payload !== undefined)
      const chunk = { flags: head.readUInt16BE(0), type: head.readUInt16BE(2), handle: head.readBigUInt64BE(4), payload }
      chunks.push(chunk)
      if ((chunk.flags & 1) !== 0) break
    }
    const handle = (chunks[0] as Chunk).handle
    assert.ok(chunks.every((c) => c.handle === handle), 'one reply\'s chunks share a handle (no other request was in flight)')
    const errorChunk = chunks.find((c) => (c.type & 0x8000) !== 0)
    return { kind: 'structured', handle, chunks, error: errorChunk === undefined ? 0 : errorChunk.payload.readUInt32BE(0) }
  }

  /** Sends a request and reads its reply. */
  async request (type: number, offset: bigint | number, length: number, flags = 0, data?: Uint8Array, handle = 0x0102030405060708n): Promise<Reply> {
    this.send(type, handle, offset, length, flags, data)
    const reply = await this.reply(type === CMD.READ ? length : 0)
    assert.equal(reply.handle, handle, 'the reply carries the request\'s handle')
    return reply
  }

  /** The error of a reply (0 on success). */
  static errorOf (reply: Reply): number { return reply.error }

  /** The bytes of a successful read, from a simple reply or the structured reply's content chunks. */
  static readData (reply: Reply, offset: number, length: number): Buffer {
    if (reply.kind === 'simple') return reply.data
    const out = Buffer.alloc(length)
    for (const chunk of reply.chunks) {
      if (chunk.type === CHUNK.OFFSET_DATA) chunk.payload.copy(out, Number(chunk.payload.readBigUInt64BE(0)) - offset, 8)
    }
    return out
  }

  /** Block status descriptors of a structured reply: the context id and each (length, flags). */
  static descriptors (reply: Reply): { id: number, extents: Array<[number, number]> } {
    assert.equal(reply.kind, 'structured')
    const chunks = (reply as { chunks: Chunk[] }).chunks.filter((c) => c.type === CHUNK.BLOCK_STATUS)
    assert.equal(chunks.length, 1, 'exactly one block status chunk for the one context')
    const payload = (chunks[0] as Chunk).payload
    assert.equal((payload.byteLength - 4) % 8, 0, 'a block status chunk is 4 + 8n bytes')
    const extents: Array<[number, number]> = []
    for (let at = 4; at < payload.byteLength; at += 8) extents.push([payload.readUInt32BE(at), payload.readUInt32BE(at + 4)])
    return { id: payload.readUInt32BE(0), extents }
  }

  /** Whether the server closed the connection within the client's close timeout. */
  async closedByServer (): Promise<boolean> { return await this.c.closedByServer() }

  end (): void { this.c.socket.destroy() }
}
