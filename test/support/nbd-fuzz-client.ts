// A raw-socket NBD client for the model-checked fuzz test: the fixed newstyle handshake (NBD_OPT_GO
// or NBD_OPT_EXPORT_NAME, structured replies and base:allocation when asked), pipelined requests
// with 64-bit handles, and replies matched by handle in whatever order they come, each checked
// against doc/proto.md as it is parsed (simple or structured, chunk bounds, overlaps, block status
// layout). Whatever the server sends that the protocol does not allow is a `violation`.

import { connect, type Socket } from 'node:net'
import { takeBytes } from './byte-queue.js'

export const NBDMAGIC = 0x4e42444d41474943n
export const IHAVEOPT = 0x49484156454f5054n
const OPTION_REPLY_MAGIC = 0x3e889045565a9n
export const REQUEST_MAGIC = 0x25609513
const SIMPLE_REPLY_MAGIC = 0x67446698
const STRUCTURED_REPLY_MAGIC = 0x668e33ef

const OPT_EXPORT_NAME = 1
const OPT_LIST = 3
const OPT_INFO = 6
const OPT_GO = 7
const OPT_STRUCTURED_REPLY = 8
const OPT_LIST_META_CONTEXT = 9
const OPT_SET_META_CONTEXT = 10
const REP_ACK = 1
const REP_SERVER = 2
const REP_INFO = 3
const REP_META_CONTEXT = 4
const REP_ERR_UNSUP = 0x80000001
const REP_ERR_POLICY = 0x80000002
const REP_ERR_INVALID = 0x80000003
const REP_ERR_UNKNOWN = 0x80000006

/**
 * An option sent before the client settles on its export, with what proto.md says must come back:
 * LIST (the export among the names; with data: ERR_INVALID), INFO of the export (its size, and the
 * name and block sizes when asked) or of one that does not exist (ERR_UNKNOWN), an option the
 * server does not know (ERR_UNSUP; STARTTLS without TLS also ERR_POLICY), LIST_META_CONTEXT
 * (base:allocation for an empty query, `base:` or itself; ERR_INVALID before structured replies).
 */
export type HaggleStep =
  | { kind: 'list', withData: boolean }
  | { kind: 'info', known: boolean, requests: number[] }
  | { kind: 'unknown', option: number }
  | { kind: 'list-meta', queries: string[] }

/** Commands (NBD_CMD_*). */
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const
/** Command flags (NBD_CMD_FLAG_*). */
export const FLAG = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16 } as const
/** Transmission flags (NBD_FLAG_*). */
export const TFLAG = { HAS_FLAGS: 1, READ_ONLY: 2, SEND_FLUSH: 4, SEND_FUA: 8, SEND_TRIM: 32, SEND_WRITE_ZEROES: 64, SEND_DF: 128, CAN_MULTI_CONN: 256, SEND_FAST_ZERO: 2048 } as const
/** base:allocation status bits. */
export const STATE_HOLE = 1
export const STATE_ZERO = 2
export const EPERM = 1
export const EINVAL = 22
export const ENOSPC = 28

const REPLY_FLAG_DONE = 1
const TYPE_NONE = 0
const TYPE_OFFSET_DATA = 1
const TYPE_OFFSET_HOLE = 2
const TYPE_BLOCK_STATUS = 5
const TYPE_ERROR = 0x8001
const TYPE_ERROR_OFFSET = 0x8002

/** How a connection negotiates. */
export interface FuzzConnectionOptions {
  readonly exportName: string
  /** NBD_OPT_STRUCTURED_REPLY first. */
  readonly structured: boolean
  /** NBD_OPT_SET_META_CONTEXT base:allocation for the export (needs structured). */
  readonly allocation: boolean
  /** Enter transmission with NBD_OPT_GO (default) or NBD_OPT_EXPORT_NAME. */
  readonly via?: 'go' | 'export-name'
  /** Answer the greeting without NBD_FLAG_C_NO_ZEROES (the NBD_OPT_EXPORT_NAME reply then ends in 124 zeros). */
  readonly zeroes?: boolean
  /** Options sent (and their replies checked) after NBD_OPT_STRUCTURED_REPLY, before the rest. */
  readonly haggle?: readonly HaggleStep[]
  /** The size the export must have (checked by INFO). */
  readonly expectedSize?: number
  /** Half-open socket, so that replies still come after the client ends its side. */
  readonly allowHalfOpen?: boolean
}

/** The outcome of one request, once its (last) reply came. */
export interface FuzzReply {
  readonly error: number
  readonly message: string
  /** A successful read's data (assembled from its chunks). */
  readonly data?: Buffer
  /** A successful block status: the base:allocation extents. */
  readonly extents?: Array<{ length: number, flags: number }>
}

interface Pending {
  readonly type: number
  readonly flags: number
  readonly offset: bigint
  readonly length: number
  readonly resolve: (reply: FuzzReply) => void
  readonly reject: (err: Error) => void
  data?: Buffer
  /** Byte ranges of the request covered by content chunks so far, relative to its offset. */
  covered: Array<[number, number]>
  contentChunks: number
  error: number
  message: string
  extents?: Array<{ length: number, flags: number }>
}

/** One NBD connection past its handshake. */
export class NbdFuzzConnection {
  readonly socket: Socket
  readonly label: string
  size = -1
  flags = 0
  structured = false
  /** The id the server gave base:allocation, when chosen. */
  contextId: number | undefined
  /** What the server sent that proto.md does not allow (the test fails on any). */
  readonly violations: string[] = []
  closed = false
  readonly #chunks: Buffer[] = []
  #buffered = 0
  #wake: (() => void) | undefined
  readonly #pending = new Map<bigint, Pending>()
  #handles = 0n

  private constructor (socket: Socket, label: string) {
    this.socket = socket
    this.label = label
    socket.on('data', (chunk: Buffer) => { this.#chunks.push(chunk); this.#buffered += chunk.byteLength; this.#wake?.() })
    // The server's end: nothing more comes (a half-open socket then ends its side too).
    const ended = (): void => { this.closed = true; this.#wake?.() }
    socket.on('end', () => { ended(); socket.end() })
    socket.on('close', ended)
    socket.on('error', () => {})
  }

  /** Connects, negotiates as told and starts reading replies. */
  static async open (port: number, label: string, options: FuzzConnectionOptions): Promise<NbdFuzzConnection> {
    const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: options.allowHalfOpen ?? false })
    await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject) })
    socket.setNoDelay(true)
    const c = new NbdFuzzConnection(socket, label)
    await c.#handshake(options)
    void c.#pump()
    return c
  }

  /** Requests not answered yet. */
  get pending (): number { return this.#pending.size }

  async #read (n: number): Promise<Buffer | undefined> {
    while (this.#buffered < n) {
      if (this.closed) return undefined
      await new Promise<void>((resolve) => { this.#wake = resolve })
      this.#wake = undefined
    }
    this.#buffered -= n
    return takeBytes(this.#chunks, n)
  }

  async #must (n: number, what: string): Promise<Buffer> {
    const bytes = await this.#read(n)
    if (bytes === undefined) throw new Error(`${this.label}: the server closed the connection during ${what}`)
    return bytes
  }

  #option (option: number, data: Buffer = Buffer.alloc(0)): void {
    const head = Buffer.alloc(16)
    head.writeBigUInt64BE(IHAVEOPT, 0)
    head.writeUInt32BE(option, 8)
    head.writeUInt32BE(data.byteLength, 12)
    this.socket.write(Buffer.concat([head, data]))
  }

  async #optionReply (option: number): Promise<{ type: number, data: Buffer }> {
    const head = await this.#must(20, `the reply to option ${option}`)
    if (head.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new Error(`${this.label}: option reply magic ${head.readBigUInt64BE(0).toString(16)}`)
    if (head.readUInt32BE(8) !== option) throw new Error(`${this.label}: a reply to option ${head.readUInt32BE(8)} where ${option} was sent`)
    const data = await this.#must(head.readUInt32BE(16), 'option reply data')
    return { type: head.readUInt32BE(12), data }
  }

  async #handshake (options: FuzzConnectionOptions): Promise<void> {
    const greeting = await this.#must(18, 'the greeting')
    if (greeting.readBigUInt64BE(0) !== NBDMAGIC || greeting.readBigUInt64BE(8) !== IHAVEOPT) throw new Error(`${this.label}: not a newstyle greeting`)
    const serverFlags = greeting.readUInt16BE(16)
    if ((serverFlags & 1) === 0) throw new Error(`${this.label}: the server is not fixed newstyle`)
    const noZeroes = (serverFlags & 2) !== 0 && options.zeroes !== true
    const clientFlags = Buffer.alloc(4)
    clientFlags.writeUInt32BE(1 | (noZeroes ? 2 : 0))
    this.socket.write(clientFlags)
    if (options.structured) {
      this.#option(OPT_STRUCTURED_REPLY)
      const reply = await this.#optionReply(OPT_STRUCTURED_REPLY)
      if (reply.type !== REP_ACK) throw new Error(`${this.label}: structured replies refused (${reply.type.toString(16)})`)
      this.structured = true
    }
    for (const step of options.haggle ?? []) await this.#haggle(step, options)
    const name = Buffer.from(options.exportName)
    if (options.allocation) {
      const query = Buffer.from('base:allocation')
      const data = Buffer.alloc(4 + name.byteLength + 4 + 4 + query.byteLength)
      data.writeUInt32BE(name.byteLength, 0)
      name.copy(data, 4)
      data.writeUInt32BE(1, 4 + name.byteLength)
      data.writeUInt32BE(query.byteLength, 8 + name.byteLength)
      query.copy(data, 12 + name.byteLength)
      this.#option(OPT_SET_META_CONTEXT, data)
      for (let reply = await this.#optionReply(OPT_SET_META_CONTEXT); reply.type !== REP_ACK; reply = await this.#optionReply(OPT_SET_META_CONTEXT)) {
        if (reply.type !== REP_META_CONTEXT) throw new Error(`${this.label}: SET_META_CONTEXT answered ${reply.type.toString(16)} ${reply.data.toString()}`)
        if (reply.data.subarray(4).toString() !== 'base:allocation') throw new Error(`${this.label}: an unasked context ${reply.data.subarray(4).toString()}`)
        this.contextId = reply.data.readUInt32BE(0)
      }
      if (this.contextId === undefined) throw new Error(`${this.label}: base:allocation was not chosen`)
    }
    if (options.via === 'export-name') {
      this.#option(OPT_EXPORT_NAME, name)
      const info = await this.#must(noZeroes ? 10 : 134, 'the NBD_OPT_EXPORT_NAME reply')
      if (!noZeroes && !info.subarray(10).every((b) => b === 0)) throw new Error(`${this.label}: the 124 reserved bytes of the NBD_OPT_EXPORT_NAME reply are not zeros`)
      this.size = Number(info.readBigUInt64BE(0))
      this.flags = info.readUInt16BE(8)
      return
    }
    const data = Buffer.alloc(4 + name.byteLength + 2)
    data.writeUInt32BE(name.byteLength, 0)
    name.copy(data, 4)
    this.#option(OPT_GO, data)
    for (;;) {
      const reply = await this.#optionReply(OPT_GO)
      if (reply.type === REP_ACK) break
      if (reply.type >= 0x80000000) throw new Error(`${this.label}: GO ${options.exportName} refused: ${reply.type.toString(16)} ${reply.data.toString()}`)
      if (reply.type === REP_INFO && reply.data.readUInt16BE(0) === 0) {
        this.size = Number(reply.data.readBigUInt64BE(2))
        this.flags = reply.data.readUInt16BE(10)
      }
    }
    if (this.size < 0) throw new Error(`${this.label}: GO acknowledged without NBD_INFO_EXPORT`)
  }

  /** One option of the haggling, its replies checked against proto.md. */
  async #haggle (step: HaggleStep, options: FuzzConnectionOptions): Promise<void> {
    const fail = (what: string): never => { throw new Error(`${this.label}: ${JSON.stringify(step)}: ${what}`) }
    const nameData = (name: string, requests: number[]): Buffer => {
      const bytes = Buffer.from(name)
      const data = Buffer.alloc(4 + bytes.byteLength + 2 + 2 * requests.length)
      data.writeUInt32BE(bytes.byteLength, 0)
      bytes.copy(data, 4)
      data.writeUInt16BE(requests.length, 4 + bytes.byteLength)
      requests.forEach((request, i) => data.writeUInt16BE(request, 6 + bytes.byteLength + 2 * i))
      return data
    }
    switch (step.kind) {
      case 'list': {
        this.#option(OPT_LIST, step.withData ? Buffer.from('x') : undefined)
        const names: string[] = []
        for (;;) {
          const reply = await this.#optionReply(OPT_LIST)
          if (step.withData) { if (reply.type !== REP_ERR_INVALID) fail(`answered ${reply.type.toString(16)}, not NBD_REP_ERR_INVALID`); return }
          if (reply.type === REP_ACK) break
          if (reply.type !== REP_SERVER) fail(`a reply of type ${reply.type.toString(16)}`)
          const length = reply.data.readUInt32BE(0)
          if (length > reply.data.byteLength - 4) fail('a name longer than its reply')
          names.push(reply.data.subarray(4, 4 + length).toString())
        }
        const volume = options.exportName.split('@')[0] as string
        if (!names.includes(volume)) fail(`${volume} is not among the exports listed: ${names.join(', ')}`)
        return
      }
      case 'info': {
        const name = step.known ? options.exportName : `${options.exportName}-missing`
        this.#option(OPT_INFO, nameData(name, step.requests))
        let size: number | undefined
        for (;;) {
          const reply = await this.#optionReply(OPT_INFO)
          if (!step.known) { if (reply.type !== REP_ERR_UNKNOWN) fail(`answered ${reply.type.toString(16)} for an unknown export`); return }
          if (reply.type === REP_ACK) break
          if (reply.type !== REP_INFO) fail(`a reply of type ${reply.type.toString(16)}: ${reply.data.toString()}`)
          const info = reply.data.readUInt16BE(0)
          if (info === 0) {
            if (reply.data.byteLength !== 12) fail('NBD_INFO_EXPORT of the wrong length')
            size = Number(reply.data.readBigUInt64BE(2))
          } else if (info === 1) {
            if (reply.data.subarray(2).toString() !== name) fail(`NBD_INFO_NAME ${reply.data.subarray(2).toString()}`)
          } else if (info === 3) {
            if (reply.data.byteLength !== 14) fail('NBD_INFO_BLOCK_SIZE of the wrong length')
            const [min, preferred, max] = [reply.data.readUInt32BE(2), reply.data.readUInt32BE(6), reply.data.readUInt32BE(10)]
            const power = (n: number): boolean => n > 0 && (n & (n - 1)) === 0
            if (!power(min) || min > 65536 || !power(preferred) || preferred < Math.max(512, min) || max < preferred || (max !== 0xffffffff && max % min !== 0)) fail(`block sizes ${min}/${preferred}/${max}`)
          } else if (info !== 2) fail(`an unknown information type ${info}`)
        }
        if (size === undefined) fail('acknowledged without NBD_INFO_EXPORT')
        if (options.expectedSize !== undefined && size !== options.expectedSize) fail(`size ${size}, expected ${options.expectedSize}`)
        return
      }
      case 'unknown': {
        this.#option(step.option, Buffer.from('ignored data'))
        const reply = await this.#optionReply(step.option)
        const allowed = step.option === 5 ? [REP_ERR_UNSUP, REP_ERR_POLICY] : [REP_ERR_UNSUP]
        if (!allowed.includes(reply.type)) fail(`answered ${reply.type.toString(16)}`)
        return
      }
      case 'list-meta': {
        const bytes = Buffer.from(options.exportName)
        const parts = [Buffer.alloc(4), bytes, Buffer.alloc(4)]
        parts[0]?.writeUInt32BE(bytes.byteLength)
        parts[2]?.writeUInt32BE(step.queries.length)
        for (const query of step.queries) { const length = Buffer.alloc(4); length.writeUInt32BE(Buffer.byteLength(query)); parts.push(length, Buffer.from(query)) }
        this.#option(OPT_LIST_META_CONTEXT, Buffer.concat(parts))
        const contexts: string[] = []
        for (;;) {
          const reply = await this.#optionReply(OPT_LIST_META_CONTEXT)
          if (!this.structured) { if (reply.type !== REP_ERR_INVALID) fail(`answered ${reply.type.toString(16)} before structured replies`); return }
          if (reply.type === REP_ACK) break
          if (reply.type !== REP_META_CONTEXT) fail(`a reply of type ${reply.type.toString(16)}`)
          contexts.push(reply.data.subarray(4).toString())
        }
        const wanted = step.queries.length === 0 || step.queries.some((q) => q === 'base:' || q === 'base:allocation')
        if (contexts.join() !== (wanted ? 'base:allocation' : '')) fail(`contexts listed: ${contexts.join(', ') || 'none'}`)
      }
    }
  }

  /** A request frame (header and payload) as sent on the wire. */
  static frame (type: number, handle: bigint, offset: bigint, length: number, flags = 0, data?: Uint8Array): Buffer {
    const head = Buffer.alloc(28)
    head.writeUInt32BE(REQUEST_MAGIC, 0)
    head.writeUInt16BE(flags, 4)
    head.writeUInt16BE(type, 6)
    head.writeBigUInt64BE(handle, 8)
    head.writeBigUInt64BE(offset, 16)
    head.writeUInt32BE(length, 24)
    return data === undefined ? head : Buffer.concat([head, data])
  }

  /** A fresh handle: distinct per connection, spread over all 64 bits. */
  nextHandle (): bigint {
    this.#handles++
    return (this.#handles * 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn
  }

  /**
   * Sends a request; resolves to its reply (matched by handle), rejects if the connection closes
   * first or the reply breaks the protocol. `data` is the payload of a write (its length need not
   * be `length`: a test may send a frame that lies).
   */
  async send (type: number, offset: number | bigint, length: number, flags = 0, data?: Uint8Array): Promise<FuzzReply> {
    const handle = this.nextHandle()
    const promise = this.expect(handle, type, offset, length, flags)
    this.socket.write(NbdFuzzConnection.frame(type, handle, BigInt(offset), length, flags, data))
    return await promise
  }

  /** Registers a request the caller writes itself (with `frame`): resolves to its reply. */
  async expect (handle: bigint, type: number, offset: number | bigint, length: number, flags = 0): Promise<FuzzReply> {
    if (this.closed) throw new Error(`${this.label}: connection closed`)
    return await new Promise<FuzzReply>((resolve, reject) => {
      this.#pending.set(handle, { type, flags, offset: BigInt(offset), length, resolve, reject, covered: [], contentChunks: 0, error: 0, message: '' })
    })
  }

  /** NBD_CMD_DISC; resolves once the server closed the connection. */
  async disconnect (): Promise<void> {
    if (!this.closed) this.socket.write(NbdFuzzConnection.frame(CMD.DISC, this.nextHandle(), 0n, 0))
    await this.closedByServer()
  }

  /** Resolves once the server closed the connection (rejects after `timeoutMs`). */
  async closedByServer (timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error(`${this.label}: the server did not close the connection within ${timeoutMs} ms`)
      await new Promise<void>((resolve) => setTimeout(resolve, 5))
    }
  }

  #violation (what: string, pending?: Pending): void {
    const text = `${this.label}: ${what}`
    this.violations.push(text)
    pending?.reject(new Error(text))
  }

  /** Reads replies until the connection closes; every request still waiting then fails. */
  async #pump (): Promise<void> {
    try {
      for (;;) {
        const magicBytes = await this.#read(4)
        if (magicBytes === undefined) break
        const magic = magicBytes.readUInt32BE(0)
        if (magic === SIMPLE_REPLY_MAGIC) {
          const rest = await this.#must(12, 'a simple reply')
          const error = rest.readUInt32BE(0)
          const handle = rest.readBigUInt64BE(4)
          const p = this.#pending.get(handle)
          if (p === undefined) { this.#violation(`a simple reply for handle ${handle.toString(16)}, which is not in flight`); this.socket.destroy(); break }
          this.#pending.delete(handle)
          if (this.structured && p.type === CMD.READ) { this.#violation('a simple reply to a READ although structured replies were negotiated', p); continue }
          let data: Buffer | undefined
          if (p.type === CMD.READ && error === 0) data = await this.#must(p.length, 'the data of a simple read reply')
          p.resolve({ error, message: '', data })
          continue
        }
        if (magic !== STRUCTURED_REPLY_MAGIC) { this.#violation(`reply magic 0x${magic.toString(16)}`); this.socket.destroy(); break }
        const head = await this.#must(16, 'a structured chunk header')
        const flags = head.readUInt16BE(0)
        const type = head.readUInt16BE(2)
        const handle = head.readBigUInt64BE(4)
        const payload = await this.#must(head.readUInt32BE(12), 'a structured chunk payload')
        if (!this.structured) { this.#violation('a structured chunk although structured replies were not negotiated'); this.socket.destroy(); break }
        const p = this.#pending.get(handle)
        if (p === undefined) { this.#violation(`a chunk of type ${type} for handle ${handle.toString(16)}, which is not in flight`); this.socket.destroy(); break }
        const problem = this.#chunk(p, type, payload)
        if (problem !== undefined) { this.#pending.delete(handle); this.#violation(problem, p); continue }
        if ((flags & REPLY_FLAG_DONE) === 0) continue
        this.#pending.delete(handle)
        const end = this.#finish(p)
        if (typeof end === 'string') this.#violation(end, p)
        else p.resolve(end)
      }
    } catch (err) {
      this.violations.push(`${this.label}: ${(err as Error).message}`)
    }
    for (const p of this.#pending.values()) p.reject(new Error(`${this.label}: the connection closed before the reply to a request of type ${p.type} at ${p.offset}+${p.length}`))
    this.#pending.clear()
  }

  /** Takes one chunk into its request; a string says how it breaks proto.md. */
  #chunk (p: Pending, type: number, payload: Buffer): string | undefined {
    switch (type) {
      case TYPE_NONE:
        return payload.byteLength === 0 ? undefined : 'NBD_REPLY_TYPE_NONE with a payload'
      case TYPE_OFFSET_DATA:
      case TYPE_OFFSET_HOLE: {
        if (p.type !== CMD.READ) return `a content chunk in reply to command ${p.type}`
        if (type === TYPE_OFFSET_DATA ? payload.byteLength < 9 : payload.byteLength !== 12) return `a content chunk of ${payload.byteLength} bytes`
        const at = payload.readBigUInt64BE(0) - p.offset
        const length = type === TYPE_OFFSET_DATA ? payload.byteLength - 8 : payload.readUInt32BE(8)
        if (length === 0) return 'a hole chunk of 0 bytes'
        if (at < 0n || at + BigInt(length) > BigInt(p.length)) return `a content chunk at ${payload.readBigUInt64BE(0)}+${length} outside the request ${p.offset}+${p.length}`
        const from = Number(at)
        if (p.covered.some(([s, e]) => from < e && from + length > s)) return `content chunks overlap at ${payload.readBigUInt64BE(0)}`
        p.covered.push([from, from + length])
        p.contentChunks++
        if ((p.flags & FLAG.DF) !== 0 && p.contentChunks > 1) return 'more than one content chunk for a READ with NBD_CMD_FLAG_DF'
        p.data ??= Buffer.alloc(p.length)
        if (type === TYPE_OFFSET_DATA) payload.copy(p.data, from, 8)
        else p.data.fill(0, from, from + length)
        return undefined
      }
      case TYPE_BLOCK_STATUS: {
        if (p.type !== CMD.BLOCK_STATUS) return `a block status chunk in reply to command ${p.type}`
        if (payload.byteLength < 12 || (payload.byteLength - 4) % 8 !== 0) return `a block status chunk of ${payload.byteLength} bytes`
        if (payload.readUInt32BE(0) !== this.contextId) return `block status for context ${payload.readUInt32BE(0)}, not the chosen ${this.contextId}`
        if (p.extents !== undefined) return 'two block status chunks for one context'
        const extents: Array<{ length: number, flags: number }> = []
        for (let at = 4; at < payload.byteLength; at += 8) extents.push({ length: payload.readUInt32BE(at), flags: payload.readUInt32BE(at + 4) })
        if (extents.some((e) => e.length === 0)) return 'a block status extent of length 0'
        const sum = extents.reduce((total, e) => total + e.length, 0)
        if (sum > p.length) return `block status extents add up to ${sum}, more than the ${p.length} asked for`
        if ((p.flags & FLAG.REQ_ONE) !== 0 && extents.length !== 1) return `${extents.length} extents for NBD_CMD_FLAG_REQ_ONE`
        p.extents = extents
        return undefined
      }
      default: {
        if ((type & 0x8000) === 0) return `an unknown chunk type ${type}`
        if (payload.byteLength < (type === TYPE_ERROR_OFFSET ? 14 : 6)) return `an error chunk of ${payload.byteLength} bytes`
        const error = payload.readUInt32BE(0)
        const messageLength = payload.readUInt16BE(4)
        if (error === 0) return 'an error chunk with error 0'
        if (messageLength > payload.byteLength - (type === TYPE_ERROR_OFFSET ? 14 : 6)) return 'an error message longer than its chunk'
        if (type !== TYPE_ERROR && type !== TYPE_ERROR_OFFSET) return `an unknown error chunk type ${type}`
        p.error ||= error
        p.message = payload.subarray(6, 6 + messageLength).toString()
        return undefined
      }
    }
  }

  /** The outcome once the final chunk came, or how the whole reply breaks proto.md. */
  #finish (p: Pending): FuzzReply | string {
    if (p.error !== 0) return { error: p.error, message: p.message }
    if (p.type === CMD.READ) {
      const covered = p.covered.reduce((total, [s, e]) => total + e - s, 0)
      if (covered !== p.length) return `a successful READ of ${p.length} bytes covered ${covered}`
      return { error: 0, message: '', data: p.data ?? Buffer.alloc(0) }
    }
    if (p.type === CMD.BLOCK_STATUS) {
      if (p.extents === undefined) return 'a successful BLOCK_STATUS without a block status chunk'
      return { error: 0, message: '', extents: p.extents }
    }
    return { error: 0, message: '' }
  }
}
