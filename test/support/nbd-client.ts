// A raw NBD client over TCP for the NBD tests: protocol constants, option and request framing, and
// exact reads off the socket, so that a test can speak the protocol, or break it, byte by byte.

import assert from 'node:assert/strict'
import { connect, type Socket } from 'node:net'
import { connect as connectTls, type ConnectionOptions } from 'node:tls'
import { takeBytes } from './byte-queue.js'

/** The greeting's first magic ("NBDMAGIC"). */
export const NBDMAGIC = 0x4e42444d41474943n
/** The greeting's second magic and the magic of every option ("IHAVEOPT"). */
export const IHAVEOPT = 0x49484156454f5054n
/** The magic of an option reply. */
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n
/** The magic of a request. */
export const REQUEST_MAGIC = 0x25609513
/** The magic of a simple reply. */
export const SIMPLE_REPLY_MAGIC = 0x67446698
/** The magic of a structured reply chunk. */
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef

/** Options (NBD_OPT_*). */
export const OPT_EXPORT_NAME = 1
export const OPT_LIST = 3
export const OPT_STARTTLS = 5
export const OPT_GO = 7
export const OPT_STRUCTURED_REPLY = 8
export const OPT_SET_META_CONTEXT = 10

/** Option reply types (NBD_REP_*). */
export const REP_ACK = 1
export const REP_SERVER = 2
export const REP_INFO = 3
export const REP_META_CONTEXT = 4
export const REP_ERR_UNSUP = 0x80000001
export const REP_ERR_INVALID = 0x80000003
export const REP_ERR_TLS_REQD = 0x80000005

/** Commands (NBD_CMD_*). */
export const CMD_READ = 0
export const CMD_DISC = 2
export const CMD_WRITE_ZEROES = 6
export const CMD_BLOCK_STATUS = 7

/** Command flags (NBD_CMD_FLAG_*). */
export const FUA = 1
export const NO_HOLE = 2

/** Structured reply chunk type NBD_REPLY_TYPE_ERROR. */
export const REPLY_TYPE_ERROR = 0x8001
/** The errno a server answers a request it does not allow with. */
export const EINVAL = 22

/** One option reply. */
export interface OptionReply { option: number, type: number, data: Buffer }
/** One simple reply; `data` is empty unless a successful read asked for some. */
export interface SimpleReply { error: number, handle: number, data: Buffer }
/** One structured reply chunk; `error` is that of an error chunk, 0 for any other. */
export interface StructuredChunk { handle: number, type: number, error: number, body: Buffer }

/** How long a client waits, by default, for bytes and for the server to close the connection. */
export interface NbdClientOptions {
  /** Half-open socket: the client may end its sending side and go on reading. Default false. */
  allowHalfOpen?: boolean
  /** Default for `read`. Default 5 s. */
  readTimeoutMs?: number
  /** Default for `closedByServer`. Default 5 s. */
  closeTimeoutMs?: number
}

/** The data of NBD_OPT_GO and NBD_OPT_INFO: the export name and an empty list of information requests. */
export function infoRequestData (name: string): Buffer {
  const nameBytes = Buffer.from(name)
  const data = Buffer.alloc(4 + nameBytes.byteLength + 2)
  data.writeUInt32BE(nameBytes.byteLength, 0)
  nameBytes.copy(data, 4)
  return data
}

/** The data of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: an export name and its queries. */
export function metaContextData (name: string, queries: string[]): Buffer {
  const parts = [Buffer.alloc(4), Buffer.from(name), Buffer.alloc(4)]
  parts[0]?.writeUInt32BE(Buffer.byteLength(name))
  parts[2]?.writeUInt32BE(queries.length)
  for (const query of queries) {
    const length = Buffer.alloc(4)
    length.writeUInt32BE(Buffer.byteLength(query))
    parts.push(length, Buffer.from(query))
  }
  return Buffer.concat(parts)
}

/** A raw NBD client whose input is a queue of chunks (it may hold many MiB unread). */
export class NbdClient {
  readonly socket: Socket
  readonly #chunks: Buffer[] = []
  #buffered = 0
  #waiters: Array<() => void> = []
  readonly #readTimeoutMs: number
  readonly #closeTimeoutMs: number
  closed = false

  readonly #options: NbdClientOptions
  readonly #onData = (chunk: Buffer): void => { this.#chunks.push(chunk); this.#buffered += chunk.byteLength; this.#wake() }

  private constructor (socket: Socket, options: NbdClientOptions) {
    this.socket = socket
    this.#options = options
    this.#readTimeoutMs = options.readTimeoutMs ?? 5_000
    this.#closeTimeoutMs = options.closeTimeoutMs ?? 5_000
    socket.on('data', this.#onData)
    socket.on('close', () => { this.closed = true; this.#wake() })
    socket.on('error', () => {})
  }

  /**
   * After the server's NBD_REP_ACK to NBD_OPT_STARTTLS: runs the TLS handshake on this connection
   * and resolves to a client speaking over TLS (this one must not be used any more), or rejects
   * with the handshake's error.
   */
  async startTls (options: ConnectionOptions): Promise<NbdClient> {
    assert.equal(this.#buffered, 0, 'nothing may follow NBD_REP_ACK before the TLS handshake')
    this.socket.off('data', this.#onData)
    const secured = connectTls({ ...options, socket: this.socket })
    await new Promise<void>((resolve, reject) => {
      secured.once('secureConnect', resolve)
      secured.once('error', reject)
      secured.once('close', () => { reject(new Error('the connection closed during the TLS handshake')) })
    })
    return new NbdClient(secured, this.#options)
  }

  static async connect (port: number, options: NbdClientOptions = {}): Promise<NbdClient> {
    const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: options.allowHalfOpen ?? false })
    await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject) })
    return new NbdClient(socket, options)
  }

  /** An option as sent on the wire, for a test that sends many at once or writes them itself. */
  static optionFrame (option: number, data: Buffer = Buffer.alloc(0)): Buffer {
    const head = Buffer.alloc(16)
    head.writeBigUInt64BE(IHAVEOPT, 0)
    head.writeUInt32BE(option, 8)
    head.writeUInt32BE(data.byteLength, 12)
    return Buffer.concat([head, data])
  }

  /** A request as sent on the wire, for a test that writes something else right behind it. */
  static requestFrame (type: number, handle: number, offset: number, length: number, flags = 0, data?: Uint8Array): Buffer {
    const head = Buffer.alloc(28)
    head.writeUInt32BE(REQUEST_MAGIC, 0)
    head.writeUInt16BE(flags, 4)
    head.writeUInt16BE(type, 6)
    head.writeBigUInt64BE(BigInt(handle), 8)
    head.writeBigUInt64BE(BigInt(offset), 16)
    head.writeUInt32BE(length, 24)
    return data === undefined ? head : Buffer.concat([head, data])
  }

  #wake (): void { for (const wake of this.#waiters.splice(0)) wake() }

  /** Exactly n bytes, or undefined if the connection closed or `timeoutMs` passed first. */
  async read (n: number, timeoutMs = this.#readTimeoutMs): Promise<Buffer | undefined> {
    const deadline = Date.now() + timeoutMs
    while (this.#buffered < n) {
      if (this.closed || Date.now() > deadline) return undefined
      let timer: NodeJS.Timeout | undefined
      await new Promise<void>((resolve) => { this.#waiters.push(resolve); timer = setTimeout(resolve, 50) })
      clearTimeout(timer)
    }
    this.#buffered -= n
    return takeBytes(this.#chunks, n)
  }

  /** Waits until the server closes the connection (true) or the timeout passes (false). */
  async closedByServer (timeoutMs = this.#closeTimeoutMs): Promise<boolean> {
    const deadline = Date.now() + timeoutMs
    while (!this.closed && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
    return this.closed
  }

  /** Reads the greeting and answers it with `clientFlags` (3: fixed newstyle, no zeroes); returns the server's handshake flags. */
  async hello (clientFlags = 3): Promise<number> {
    const greeting = await this.read(18)
    assert.ok(greeting !== undefined, 'the greeting')
    assert.equal(greeting.readBigUInt64BE(0), NBDMAGIC)
    assert.equal(greeting.readBigUInt64BE(8), IHAVEOPT)
    const flags = Buffer.alloc(4)
    flags.writeUInt32BE(clientFlags)
    this.socket.write(flags)
    return greeting.readUInt16BE(16)
  }

  option (option: number, data?: Buffer): void { this.socket.write(NbdClient.optionFrame(option, data)) }

  async optionReply (): Promise<OptionReply> {
    const head = await this.read(20)
    assert.ok(head !== undefined, 'an option reply')
    assert.equal(head.readBigUInt64BE(0), OPTION_REPLY_MAGIC)
    const data = await this.read(head.readUInt32BE(16))
    assert.ok(data !== undefined, 'the option reply data')
    return { option: head.readUInt32BE(8), type: head.readUInt32BE(12), data }
  }

  /** NBD_OPT_LIST: the export names, after the replies up to ACK. */
  async list (): Promise<string[]> {
    this.option(OPT_LIST)
    const names: string[] = []
    for (let reply = await this.optionReply(); reply.type !== REP_ACK; reply = await this.optionReply()) {
      assert.equal(reply.type, REP_SERVER)
      names.push(reply.data.subarray(4, 4 + reply.data.readUInt32BE(0)).toString())
    }
    return names
  }

  /** NBD_OPT_GO to `name`: the export size and transmission flags, after the replies up to ACK. */
  async go (name: string): Promise<{ size: number, flags: number }> {
    this.option(OPT_GO, infoRequestData(name))
    let size = -1
    let flags = -1
    for (;;) {
      const reply = await this.optionReply()
      if (reply.type === REP_INFO && reply.data.readUInt16BE(0) === 0) {
        size = Number(reply.data.readBigUInt64BE(2))
        flags = reply.data.readUInt16BE(10)
      }
      if (reply.type === REP_ACK) return { size, flags }
      assert.ok(reply.type < 0x80000000, `GO ${name} refused: ${reply.type.toString(16)} ${reply.data.toString()}`)
    }
  }

  /** NBD_OPT_STRUCTURED_REPLY, acknowledged. */
  async structuredReplies (): Promise<void> {
    this.option(OPT_STRUCTURED_REPLY)
    assert.equal((await this.optionReply()).type, REP_ACK)
  }

  /** NBD_OPT_SET_META_CONTEXT base:allocation for `name`: resolves to the contexts the server chose. */
  async setAllocationContext (name: string): Promise<string[]> {
    this.option(OPT_SET_META_CONTEXT, metaContextData(name, ['base:allocation']))
    const chosen: string[] = []
    for (let reply = await this.optionReply(); reply.type !== REP_ACK; reply = await this.optionReply()) {
      assert.equal(reply.type, REP_META_CONTEXT)
      chosen.push(reply.data.subarray(4).toString())
    }
    return chosen
  }

  request (type: number, handle: number, offset: number, length: number, flags = 0, data?: Uint8Array): void {
    this.socket.write(NbdClient.requestFrame(type, handle, offset, length, flags, data))
  }

  /** A simple reply, or undefined if the connection closed or the time ran out first; a successful read brings `dataLength` bytes. */
  async replyIfAny (dataLength = 0): Promise<SimpleReply | undefined> {
    const head = await this.read(16)
    if (head === undefined) return undefined
    assert.equal(head.readUInt32BE(0), SIMPLE_REPLY_MAGIC)
    const error = head.readUInt32BE(4)
    const data = error === 0 && dataLength > 0 ? await this.read(dataLength) : Buffer.alloc(0)
    if (data === undefined) return undefined
    return { error, handle: Number(head.readBigUInt64BE(8)), data }
  }

  /** A simple reply, which must come; for reads pass the expected data length. */
  async reply (dataLength = 0): Promise<SimpleReply> {
    const reply = await this.replyIfAny(dataLength)
    assert.ok(reply !== undefined, 'a reply')
    return reply
  }

  /** NBD_CMD_READ of `length` bytes at `offset`: the data of its simple reply (undefined if none came). */
  async readBlock (offset: number, length: number): Promise<Buffer | undefined> {
    this.request(CMD_READ, 1, offset, length)
    const reply = await this.replyIfAny(length)
    if (reply === undefined) return undefined
    assert.equal(reply.error, 0, 'the read succeeded')
    return reply.data
  }

  /** A structured reply chunk: its handle, type, body and the error of an error chunk. */
  async chunk (): Promise<StructuredChunk> {
    const head = await this.read(20)
    assert.ok(head !== undefined, 'a structured reply')
    assert.equal(head.readUInt32BE(0), STRUCTURED_REPLY_MAGIC)
    const body = await this.read(head.readUInt32BE(16))
    assert.ok(body !== undefined, 'the structured reply body')
    const type = head.readUInt16BE(6)
    return { handle: Number(head.readBigUInt64BE(8)), type, error: type === REPLY_TYPE_ERROR ? body.readUInt32BE(0) : 0, body }
  }
}

/** A client of export `name` on the server at `port`, past NBD_OPT_GO, with structured replies on. */
export async function goClient (port: number, name: string): Promise<NbdClient> {
  const client = await NbdClient.connect(port, { closeTimeoutMs: 3_000 })
  await client.hello()
  await client.structuredReplies()
  await client.go(name)
  return client
}
