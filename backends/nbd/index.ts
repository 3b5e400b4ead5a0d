// An NBD server (the Network Block Device protocol of the NetworkBlockDevice project, doc/proto.md)
// exporting GalleonFS volumes, so qemu-img, qemu-nbd clients, nbdcopy, nbdinfo, fio's nbd engine
// and the Linux nbd-client can use them.
//
//   const srv = await NbdServer.listen(g, { host: '127.0.0.1', port: 0 })  // srv.port
//   nbdinfo nbd://127.0.0.1:<port>/<volume>
//
// Export names: a volume's name (or `namespace/name`, or its id); `<volume>@<snapshot>` exports a
// snapshot read-only. Handshake: fixed newstyle only, with NBD_OPT_EXPORT_NAME, NBD_OPT_GO,
// NBD_OPT_INFO, NBD_OPT_LIST, NBD_OPT_ABORT, NBD_OPT_STRUCTURED_REPLY and the meta context options
// for base:allocation; any other option is answered NBD_REP_ERR_UNSUP. Transmission: READ, WRITE
// (FUA: WriteDurable), FLUSH, TRIM, WRITE_ZEROES (NO_HOLE writes real zeros), BLOCK_STATUS (which
// blocks hold data, so nbdcopy and qemu-img copy sparsely), DISC; requests are pipelined (up to 64
// in flight per connection, holding up to 128 MiB of data with the replies a client has not read
// yet: past that nothing more is read from it) and answered as they complete; many clients at
// once. The server has no authentication (NBD has none without TLS): it listens on loopback
// unless told otherwise; serve `g.as(principal)` to limit what clients reach.
//
// A frame the protocol does not allow (bad magic, unknown client flags, an option longer than
// 64 KiB, a request longer than 32 MiB) ends that connection only; other clients are not affected.

import { createServer, type Server, type Socket } from 'node:net'
import type { GalleonFS } from '../../src/galleonfs.js'
import { GalleonError, describe } from '../../src/errors.js'
import { WriteConcern } from '../../src/types.js'

const NBDMAGIC = 0x4e42444d41474943n
const IHAVEOPT = 0x49484156454f5054n
const OPTION_REPLY_MAGIC = 0x3e889045565a9n
const REQUEST_MAGIC = 0x25609513
const SIMPLE_REPLY_MAGIC = 0x67446698
const STRUCTURED_REPLY_MAGIC = 0x668e33ef

const FLAG_FIXED_NEWSTYLE = 1
const FLAG_NO_ZEROES = 2

const OPT_EXPORT_NAME = 1
const OPT_ABORT = 2
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

const INFO_EXPORT = 0
const INFO_NAME = 1
const INFO_DESCRIPTION = 2
const INFO_BLOCK_SIZE = 3

const TFLAG_HAS_FLAGS = 1 << 0
const TFLAG_READ_ONLY = 1 << 1
const TFLAG_SEND_FLUSH = 1 << 2
const TFLAG_SEND_FUA = 1 << 3
const TFLAG_SEND_TRIM = 1 << 5
const TFLAG_SEND_WRITE_ZEROES = 1 << 6
const TFLAG_SEND_DF = 1 << 7
const TFLAG_CAN_MULTI_CONN = 1 << 8

const CMD_READ = 0
const CMD_WRITE = 1
const CMD_DISC = 2
const CMD_FLUSH = 3
const CMD_TRIM = 4
const CMD_WRITE_ZEROES = 6
const CMD_BLOCK_STATUS = 7

const CMD_FLAG_FUA = 1 << 0
const CMD_FLAG_NO_HOLE = 1 << 1
const CMD_FLAG_REQ_ONE = 1 << 3

const REPLY_FLAG_DONE = 1
const REPLY_TYPE_NONE = 0
const REPLY_TYPE_OFFSET_DATA = 1
const REPLY_TYPE_BLOCK_STATUS = 5
/** The one metadata context served: base:allocation (hole = 1, zero = 2). */
const BASE_ALLOCATION = 'base:allocation'
const BASE_ALLOCATION_ID = 1
const STATE_HOLE = 1
const STATE_ZERO = 2
/** Largest range one block status reply describes (the client asks again for the rest). */
const MAX_STATUS_BYTES = 1024 * 1024 * 1024
const REPLY_TYPE_ERROR = 0x8001

const EPERM = 1
const EIO = 5
const EINVAL = 22
const ENOSPC = 28
const ENOTSUP = 95
const ESHUTDOWN = 108

/** Longest option payload accepted during the handshake. */
const MAX_OPTION_BYTES = 64 * 1024
/** Longest READ or WRITE (advertised as the maximum block size). */
const MAX_REQUEST_BYTES = 32 * 1024 * 1024
/** Requests one connection may have in flight before it stops reading more. */
const MAX_IN_FLIGHT = 64
/**
 * Bytes one connection may hold before it stops reading requests: data of the requests in flight
 * plus replies its client has not read yet. One request more may bring a payload of up to
 * MAX_REQUEST_BYTES on top.
 */
const MAX_HELD_BYTES = 128 * 1024 * 1024

/** Options of NbdServer.listen. */
export interface NbdServerOptions {
  /** Address to listen on (default 127.0.0.1: NBD has no authentication). */
  readonly host?: string
  /** Port (default 10809; 0 picks a free one, see `port`). */
  readonly port?: number
}

/** An export as a connection serves it. */
interface Export {
  readonly name: string
  readonly source: string | { volume: string, snapshot: string }
  readonly volumeId: string
  readonly size: number
  readonly readOnly: boolean
  readonly description: string
  /** ReadWriteMany: writers need not be counted. */
  readonly shared: boolean
}

/** What a session holds open while it serves a writable export of a ReadWriteOnce volume. */
interface WriterClaim { close: () => Promise<void> }

/** Reads exact byte counts from a socket (a small queue of chunks). */
class SocketReader {
  readonly #socket: Socket
  #chunks: Buffer[] = []
  #buffered = 0
  #wanted = 0
  #wake: (() => void) | undefined
  #ended = false

  constructor (socket: Socket) {
    this.#socket = socket
    socket.on('data', (chunk: Buffer) => {
      this.#chunks.push(chunk)
      this.#buffered += chunk.byteLength
      if (this.#wake !== undefined && this.#buffered >= this.#wanted) this.#wake()
    })
    const end = (): void => { this.#ended = true; this.#wake?.() }
    socket.on('end', end)
    socket.on('close', end)
  }

  /** Exactly `n` bytes, or undefined if the connection ended first. */
  async read (n: number): Promise<Buffer | undefined> {
    while (this.#buffered < n) {
      if (this.#ended) return undefined
      this.#wanted = n
      await new Promise<void>((resolve) => { this.#wake = resolve })
      this.#wake = undefined
    }
    // Take just the chunks that hold the n bytes (never re-copy the whole backlog).
    const parts: Buffer[] = []
    let need = n
    while (need > 0) {
      const chunk = this.#chunks[0] as Buffer
      if (chunk.byteLength <= need) {
        parts.push(chunk)
        this.#chunks.shift()
        need -= chunk.byteLength
      } else {
        parts.push(chunk.subarray(0, need))
        this.#chunks[0] = chunk.subarray(need)
        need = 0
      }
    }
    this.#buffered -= n
    return parts.length === 1 ? parts[0] as Buffer : Buffer.concat(parts, n)
  }

  pause (): void { this.#socket.pause() }
  resume (): void { this.#socket.resume() }
}

/**
 * Ends a session: replies already written go out (uncorked, then end), the client's own end is
 * read so the socket closes promptly, and a client that never closes is cut off after a minute.
 */
function finish (socket: Socket): void {
  if (socket.destroyed) return
  while (socket.writableCorked > 0) socket.uncork()
  socket.end()
  socket.resume()
  setTimeout(() => { if (!socket.destroyed) socket.destroy() }, 60_000).unref()
}

/** A protocol violation: the connection is closed. */
class ProtocolError extends Error {}

/** The NBD server. */
export class NbdServer {
  readonly #g: GalleonFS
  readonly #server: Server
  readonly #connections = new Set<Socket>()
  /** Per connection: stop taking requests and resolve once the ones in flight are answered. */
  readonly #stoppers = new Map<Socket, () => Promise<void>>()
  readonly host: string
  #port = 0
  #closing: Promise<void> | undefined

  private constructor (g: GalleonFS, server: Server, host: string) {
    this.#g = g
    this.#server = server
    this.host = host
  }

  /** Starts serving `g`'s volumes. */
  static async listen (g: GalleonFS, options: NbdServerOptions = {}): Promise<NbdServer> {
    if (g === null || typeof g !== 'object' || typeof (g as GalleonFS).read !== 'function') throw new GalleonError('INVALID_ARGUMENT', `NbdServer.listen() needs an open GalleonFS instance, got ${describe(g)}`)
    if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `NbdServer.listen() options must be an object such as { port: 10809 }, got ${describe(options)}`)
    const host = options.host ?? '127.0.0.1'
    const port = options.port ?? 10809
    if (typeof host !== 'string' || host.length === 0) throw new GalleonError('INVALID_ARGUMENT', `host must be an address such as 127.0.0.1, got ${describe(host)}`)
    if (!Number.isSafeInteger(port) || port < 0 || port > 65535) throw new GalleonError('INVALID_ARGUMENT', `port must be 0 (any free port) to 65535, got ${describe(port)}`)
    const accept: { to?: NbdServer } = {}
    const server = createServer({ noDelay: true }, (socket) => {
      if (accept.to === undefined) socket.destroy()
      else accept.to.#accept(socket)
    })
    const instance = new NbdServer(g, server, host)
    accept.to = instance
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => reject(new GalleonError(err.code === 'EADDRINUSE' ? 'BUSY' : 'IO_ERROR', `the NBD server could not listen on ${host}:${port}: ${err.message}`, { cause: err })))
      server.listen(port, host, () => resolve())
    })
    const address = server.address()
    instance.#port = typeof address === 'object' && address !== null ? address.port : port
    return instance
  }

  /** The port it listens on. */
  get port (): number { return this.#port }

  /** Connected clients. */
  get connections (): number { return this.#connections.size }

  /** Stops listening and disconnects every client (requests in flight finish first). */
  async close (): Promise<void> {
    this.#closing ??= (async () => {
      const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()))
      // Whatever happens below, no connection outlives this by more than 10 seconds.
      const deadline = setTimeout(() => { for (const socket of this.#connections) socket.destroy() }, 10_000)
      // Requests in flight are answered first (their writes are applied and acknowledged).
      await Promise.all([...this.#connections].map(async (socket) => {
        await this.#stoppers.get(socket)?.().catch(() => {})
        finish(socket)
      }))
      await closed
      clearTimeout(deadline)
    })()
    await this.#closing
  }

  #accept (socket: Socket): void {
    this.#connections.add(socket)
    socket.setNoDelay(true)
    socket.on('error', () => {}) // a client that vanishes is not the server's problem
    socket.once('close', () => { this.#connections.delete(socket); this.#stoppers.delete(socket) })
    // When the session ends, replies already written still go out (end, not destroy).
    void this.#serve(socket).catch(() => {}).finally(() => { finish(socket) })
  }

  async #serve (socket: Socket): Promise<void> {
    const reader = new SocketReader(socket)
    const hello = Buffer.alloc(18)
    hello.writeBigUInt64BE(NBDMAGIC, 0)
    hello.writeBigUInt64BE(IHAVEOPT, 8)
    hello.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16)
    socket.write(hello)
    const clientFlags = await reader.read(4)
    if (clientFlags === undefined) return
    const flags = clientFlags.readUInt32BE(0)
    if ((flags & ~(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)) !== 0) throw new ProtocolError('unknown client flags')
    const noZeroes = (flags & FLAG_NO_ZEROES) !== 0
    const chosen = await this.#negotiate(socket, reader, noZeroes)
    if (chosen === undefined) return
    try {
      await this.#transmit(socket, reader, chosen.export, chosen.structured, chosen.allocation)
    } finally {
      await chosen.writer?.close().catch(() => {})
    }
  }

  /** Option haggling; resolves to the export to serve, or undefined when the client left. */
  async #negotiate (socket: Socket, reader: SocketReader, noZeroes: boolean): Promise<{ export: Export, writer?: WriterClaim, structured: boolean, allocation: boolean } | undefined> {
    let structured = false
    let allocation = false
    while (true) {
      const header = await reader.read(16)
      if (header === undefined) return undefined
      if (header.readBigUInt64BE(0) !== IHAVEOPT) throw new ProtocolError('bad option magic')
      const option = header.readUInt32BE(8)
      const length = header.readUInt32BE(12)
      if (length > MAX_OPTION_BYTES) throw new ProtocolError('option too long')
      const data = await reader.read(length)
      if (data === undefined) return undefined
      const reply = (type: number, payload: Buffer = Buffer.alloc(0)): void => {
        const head = Buffer.alloc(20)
        head.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0)
        head.writeUInt32BE(option, 8)
        head.writeUInt32BE(type, 12)
        head.writeUInt32BE(payload.byteLength, 16)
        socket.write(Buffer.concat([head, payload]))
      }
      const error = (type: number, message: string): void => { reply(type, Buffer.from(message)) }
      switch (option) {
        case OPT_EXPORT_NAME: {
          // No way to report an error here: an unknown export ends the connection.
          const claimed = await this.#export(data.toString('utf8')).then(async (found) => await this.#claim(found)).catch(() => undefined)
          if (claimed === undefined) return undefined
          const out = Buffer.alloc(noZeroes ? 10 : 134)
          out.writeBigUInt64BE(BigInt(claimed.export.size), 0)
          out.writeUInt16BE(this.#transmissionFlags(claimed.export, structured), 8)
          socket.write(out)
          return { ...claimed, structured, allocation }
        }
        case OPT_ABORT:
          reply(REP_ACK)
          socket.end()
          return undefined
        case OPT_LIST: {
          if (length !== 0) { error(REP_ERR_INVALID, 'NBD_OPT_LIST takes no data'); break }
          for (const volume of await this.#g.listVolumes().catch(() => [])) {
            // The bare name where it names this volume for whoever the server acts as (a principal's
            // bare names resolve in its own namespace), else namespace/name.
            const bare = (await this.#g.getVolume(volume.name).catch(() => undefined))?.id === volume.id
            const name = Buffer.from(bare ? volume.name : `${volume.namespace}/${volume.name}`)
            const entry = Buffer.alloc(4 + name.byteLength)
            entry.writeUInt32BE(name.byteLength, 0)
            name.copy(entry, 4)
            reply(REP_SERVER, entry)
          }
          reply(REP_ACK)
          break
        }
        case OPT_STRUCTURED_REPLY:
          if (length !== 0) { error(REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data'); break }
          structured = true
          reply(REP_ACK)
          break
        case OPT_INFO:
        case OPT_GO: {
          if (length < 6) { error(REP_ERR_INVALID, 'NBD_OPT_INFO/GO needs a name length, a name and an information request count'); break }
          const nameLength = data.readUInt32BE(0)
          if (4 + nameLength + 2 > length) { error(REP_ERR_INVALID, 'the export name runs past the end of the option'); break }
          const name = data.subarray(4, 4 + nameLength).toString('utf8')
          const requests = data.readUInt16BE(4 + nameLength)
          if (4 + nameLength + 2 + requests * 2 !== length) { error(REP_ERR_INVALID, 'the information requests do not match the option length'); break }
          let found: Export
          let writer: WriterClaim | undefined
          try {
            // GO starts the session: claim the writer before the flags go out. INFO claims and lets
            // go at once, so that it tells what a GO would get (read-only when the writer's place is
            // taken or the caller may not write).
            ;({ export: found, writer } = await this.#claim(await this.#export(name)))
            if (option === OPT_INFO) await writer?.close()
          } catch (err) {
            const code = (err as { code?: string }).code
            error(code === 'PERMISSION_DENIED' ? REP_ERR_POLICY : code === 'VOLUME_NOT_FOUND' || code === 'SNAPSHOT_NOT_FOUND' || code === 'INVALID_ARGUMENT' ? REP_ERR_UNKNOWN : REP_ERR_INVALID, (err as Error).message)
            break
          }
          const info = (type: number, body: Buffer): void => {
            const payload = Buffer.alloc(2 + body.byteLength)
            payload.writeUInt16BE(type, 0)
            body.copy(payload, 2)
            reply(REP_INFO, payload)
          }
          const exportInfo = Buffer.alloc(10)
          exportInfo.writeBigUInt64BE(BigInt(found.size), 0)
          exportInfo.writeUInt16BE(this.#transmissionFlags(found, structured), 8)
          info(INFO_EXPORT, exportInfo)
          const asked = new Set(Array.from({ length: requests }, (_, i) => data.readUInt16BE(4 + nameLength + 2 + i * 2)))
          if (asked.has(INFO_NAME)) info(INFO_NAME, Buffer.from(found.name))
          if (asked.has(INFO_DESCRIPTION)) info(INFO_DESCRIPTION, Buffer.from(found.description))
          const sizes = Buffer.alloc(12)
          sizes.writeUInt32BE(1, 0)
          sizes.writeUInt32BE(this.#g.blockSize, 4)
          sizes.writeUInt32BE(MAX_REQUEST_BYTES, 8)
          info(INFO_BLOCK_SIZE, sizes)
          reply(REP_ACK)
          if (option === OPT_GO) return { export: found, writer, structured, allocation }
          break
        }
        case OPT_LIST_META_CONTEXT:
        case OPT_SET_META_CONTEXT: {
          // A SET replaces the contexts chosen before, also when it fails.
          if (option === OPT_SET_META_CONTEXT) allocation = false
          const queries = parseMetaContextOption(data)
          if (queries === undefined) { error(REP_ERR_INVALID, 'malformed meta context option'); break }
          if (!structured) { error(REP_ERR_INVALID, 'negotiate structured replies (NBD_OPT_STRUCTURED_REPLY) before meta contexts'); break }
          try {
            await this.#export(queries.exportName)
          } catch (err) {
            error(REP_ERR_UNKNOWN, (err as Error).message)
            break
          }
          // base:allocation is the one context: listed for an empty query, "base:" or itself.
          const wanted = (option === OPT_LIST_META_CONTEXT && queries.queries.length === 0) || queries.queries.some((q) => q === BASE_ALLOCATION || q === 'base:')
          if (option === OPT_SET_META_CONTEXT) allocation = queries.queries.includes(BASE_ALLOCATION)
          if (wanted && (option === OPT_LIST_META_CONTEXT || allocation)) {
            const name = Buffer.from(BASE_ALLOCATION)
            const body = Buffer.alloc(4 + name.byteLength)
            body.writeUInt32BE(option === OPT_SET_META_CONTEXT ? BASE_ALLOCATION_ID : 0, 0)
            name.copy(body, 4)
            reply(REP_META_CONTEXT, body)
          }
          reply(REP_ACK)
          break
        }
        default:
          error(REP_ERR_UNSUP, `option ${option} is not supported by the GalleonFS NBD server`)
      }
    }
  }

  /** Resolves an export name: a volume (by name, namespace/name or id) or `volume@snapshot`. */
  async #export (name: string): Promise<Export> {
    if (name.length === 0) throw new GalleonError('INVALID_ARGUMENT', 'an empty export name; name a volume')
    // Volume and namespace names have no '@'; a snapshot's name may.
    const at = name.indexOf('@')
    if (at > 0) {
      const volume = await this.#g.getVolume(name.slice(0, at))
      const snapshot = await this.#g.getSnapshot(volume.id, name.slice(at + 1))
      return { name, source: { volume: volume.id, snapshot: snapshot.id }, volumeId: volume.id, size: snapshot.sizeBytes, readOnly: true, description: `GalleonFS snapshot ${snapshot.name} of ${volume.namespace}/${volume.name} (read-only)`, shared: false }
    }
    const volume = await this.#g.getVolume(name)
    // A ReadWriteOnce volume mounted read-write has its one writer: export it read-only then.
    const shared = volume.accessModes.includes('ReadWriteMany' as never)
    const mountedWriter = !shared && this.#g.mounts.listMounts().some((m) => m.volumeId === volume.id && m.snapshotId === undefined && !m.readOnly)
    const readOnly = mountedWriter || !volume.accessModes.some((mode) => mode === 'ReadWriteOnce' || mode === 'ReadWriteMany')
    return { name, source: volume.id, volumeId: volume.id, size: volume.sizeBytes, readOnly, description: `GalleonFS volume ${volume.namespace}/${volume.name}`, shared }
  }

  /**
   * The export a session will serve. A writable export of a ReadWriteOnce volume is registered as a
   * writer with the mount manager (a writable VolumeFile held for the session), so a read-write
   * mount is refused while an NBD client may write; when a mount took the writer's place in the
   * meantime, or the caller may read the volume but not write it, the export is served read-only.
   */
  async #claim (found: Export): Promise<{ export: Export, writer?: WriterClaim }> {
    if (found.readOnly || found.shared) return { export: found }
    try {
      const writer = await this.#g.mounts.openVolumeFile(found.volumeId, {})
      return { export: found, writer }
    } catch (err) {
      const code = (err as { code?: string }).code
      if (code === 'BUSY' || code === 'READ_ONLY' || code === 'PERMISSION_DENIED') return { export: { ...found, readOnly: true } }
      throw err
    }
  }

  #transmissionFlags (exp: Export, structured: boolean): number {
    // DF (don't fragment) only means something with structured replies.
    let flags = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_CAN_MULTI_CONN | (structured ? TFLAG_SEND_DF : 0)
    if (exp.readOnly) flags |= TFLAG_READ_ONLY
    else flags |= TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES
    return flags
  }

  /** The transmission phase: requests read in order, served concurrently, answered as they finish. */
  async #transmit (socket: Socket, reader: SocketReader, exp: Export, structured: boolean, allocation: boolean): Promise<void> {
    let inFlight = 0
    // Bytes the requests in flight hold (write payloads, read results): with the replies still
    // waiting in the socket for a client that reads slowly (or not at all), they are what one
    // connection costs in memory, and no new request is taken while they exceed MAX_HELD_BYTES.
    let heldBytes = 0
    const room = (): boolean => inFlight < MAX_IN_FLIGHT && heldBytes + socket.writableLength < MAX_HELD_BYTES
    const drained: Array<() => void> = []
    let slot: (() => void) | undefined
    let stopping = false
    const done = (): void => {
      inFlight--
      if (!stopping) slot?.()
      if (inFlight === 0) for (const wake of drained.splice(0)) wake()
    }
    // The client took replies off the socket (or went away): maybe there is room again.
    const wake = (): void => { slot?.() }
    socket.on('drain', wake)
    socket.on('close', wake)
    const idle = async (): Promise<void> => { if (inFlight > 0) await new Promise<void>((resolve) => { drained.push(resolve) }) }
    this.#stoppers.set(socket, async () => {
      stopping = true
      reader.pause()
      slot?.()
      await idle()
    })
    // Replies finished in the same turn of the event loop go out in one writev (cork), and a
    // reply's header and data are written as they are, without copying them together.
    let corked = false
    const send = (buffers: Buffer[]): void => {
      if (socket.destroyed) return
      if (!corked) {
        corked = true
        socket.cork()
        setImmediate(() => { corked = false; socket.uncork() })
      }
      for (const buffer of buffers) if (buffer.byteLength > 0) socket.write(buffer)
    }
    const simple = (handle: Buffer, error: number, data?: Uint8Array): void => {
      const head = Buffer.alloc(16)
      head.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0)
      head.writeUInt32BE(error, 4)
      handle.copy(head, 8)
      send(data === undefined ? [head] : [head, Buffer.from(data.buffer, data.byteOffset, data.byteLength)])
    }
    const chunk = (handle: Buffer, type: number, flags: number, payload: Buffer[]): void => {
      const length = payload.reduce((sum, b) => sum + b.byteLength, 0)
      const head = Buffer.alloc(20)
      head.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0)
      head.writeUInt16BE(flags, 4)
      head.writeUInt16BE(type, 6)
      handle.copy(head, 8)
      head.writeUInt32BE(length, 16)
      send([head, ...payload])
    }
    const fail = (handle: Buffer, errno: number, message: string): void => {
      if (!structured) { simple(handle, errno); return }
      const text = Buffer.from(message.slice(0, 1024))
      const body = Buffer.alloc(6)
      body.writeUInt32BE(errno, 0)
      body.writeUInt16BE(text.byteLength, 4)
      chunk(handle, REPLY_TYPE_ERROR, REPLY_FLAG_DONE, [body, text])
    }

    while (!stopping) {
      // At most MAX_IN_FLIGHT requests and MAX_HELD_BYTES at once, also when more are already
      // buffered; meanwhile nothing more is read from the client (TCP holds it back).
      if (!room()) {
        reader.pause()
        while (!room() && !stopping && !socket.destroyed) await new Promise<void>((resolve) => { slot = resolve })
        if (!stopping) reader.resume()
      }
      if (stopping) break
      const header = await reader.read(28)
      if (header === undefined || stopping) break
      if (header.readUInt32BE(0) !== REQUEST_MAGIC) throw new ProtocolError('bad request magic')
      const flags = header.readUInt16BE(4)
      const type = header.readUInt16BE(6)
      const handle = Buffer.from(header.subarray(8, 16))
      const offset = Number(header.readBigUInt64BE(16))
      const length = header.readUInt32BE(24)
      if (type === CMD_DISC) break
      let payload: Buffer | undefined
      if (type === CMD_WRITE) {
        if (length > MAX_REQUEST_BYTES) throw new ProtocolError('write too long')
        payload = await reader.read(length)
        if (payload === undefined) break
      }
      inFlight++
      if (type === CMD_BLOCK_STATUS) {
        void this.#blockStatus(exp, allocation && structured, flags, offset, length).then((result) => {
          if (result.error !== 0) { fail(handle, result.error, result.message ?? ''); return }
          chunk(handle, REPLY_TYPE_BLOCK_STATUS, REPLY_FLAG_DONE, [result.body as Buffer])
        }).finally(done)
        continue
      }
      // A read's result counts once it exists (a refused read holds nothing, but is short-lived).
      const held = type === CMD_READ ? Math.min(length, MAX_REQUEST_BYTES) : payload?.byteLength ?? 0
      heldBytes += held
      void this.#request(exp, type, flags, offset, length, payload).then((result) => {
        if (result.error !== 0) { fail(handle, result.error, result.message ?? ''); return }
        if (type !== CMD_READ) {
          if (structured) chunk(handle, REPLY_TYPE_NONE, REPLY_FLAG_DONE, [])
          else simple(handle, 0)
          return
        }
        const data = result.data as Uint8Array
        if (!structured) { simple(handle, 0, data); return }
        // A structured chunk covers at least one byte: an empty read is answered with NONE.
        if (data.byteLength === 0) { chunk(handle, REPLY_TYPE_NONE, REPLY_FLAG_DONE, []); return }
        const where = Buffer.alloc(8)
        where.writeBigUInt64BE(BigInt(offset), 0)
        chunk(handle, REPLY_TYPE_OFFSET_DATA, REPLY_FLAG_DONE, [where, Buffer.from(data.buffer, data.byteOffset, data.byteLength)])
      }).finally(() => { heldBytes -= held; done() })
    }
    // Let requests in flight finish (and flush what they wrote); the caller then ends the session.
    await idle()
    if (!exp.readOnly) await this.#g.flush(exp.volumeId).catch(() => {})
  }

  /** Runs one request; resolves to its outcome (never rejects). */
  async #request (exp: Export, type: number, flags: number, offset: number, length: number, payload: Buffer | undefined): Promise<{ error: number, message?: string, data?: Uint8Array }> {
    const writing = type === CMD_WRITE || type === CMD_TRIM || type === CMD_WRITE_ZEROES
    if (writing && exp.readOnly) return { error: EPERM, message: `export ${exp.name} is read-only` }
    if (type === CMD_READ || writing) {
      // Past the end: ENOSPC for what writes data, EINVAL for reads and trims (proto.md).
      if (offset + length > exp.size || !Number.isSafeInteger(offset + length)) return { error: type === CMD_WRITE || type === CMD_WRITE_ZEROES ? ENOSPC : EINVAL, message: `offset ${offset} + length ${length} is past the end of the export (${exp.size} bytes)` }
      if (type === CMD_READ && length > MAX_REQUEST_BYTES) return { error: EINVAL, message: `a read may be at most ${MAX_REQUEST_BYTES} bytes` }
    }
    // FUA, NO_HOLE, DF (bit 2), REQ_ONE; FAST_ZERO (bit 4) is not advertised, so it is refused.
    const known = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_REQ_ONE | (1 << 2)
    if ((flags & ~known) !== 0) return { error: EINVAL, message: `unknown command flags 0x${flags.toString(16)}` }
    const fua = (flags & CMD_FLAG_FUA) !== 0
    try {
      switch (type) {
        case CMD_READ:
          return { error: 0, data: length === 0 ? new Uint8Array(0) : await this.#g.read(exp.source, offset, length) }
        case CMD_WRITE:
          if (length > 0) await this.#g.write(exp.volumeId, offset, payload as Buffer, fua ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged)
          return { error: 0 }
        case CMD_FLUSH:
          // Nothing to make durable on a read-only export (and its client may not be allowed writes).
          if (!exp.readOnly) await this.#g.flush(exp.volumeId)
          return { error: 0 }
        case CMD_TRIM:
          await this.#trim(exp, offset, length)
          if (fua) await this.#g.flush(exp.volumeId)
          return { error: 0 }
        case CMD_WRITE_ZEROES:
          if ((flags & CMD_FLAG_NO_HOLE) !== 0) {
            // The zeros must be allocated: write them.
            for (let at = 0; at < length; at += MAX_REQUEST_BYTES) {
              const piece = Math.min(MAX_REQUEST_BYTES, length - at)
              await this.#g.write(exp.volumeId, offset + at, new Uint8Array(piece), fua ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged)
            }
          } else {
            await this.#trim(exp, offset, length)
            if (fua) await this.#g.flush(exp.volumeId)
          }
          return { error: 0 }
        default:
          return { error: EINVAL, message: `command ${type} is not supported` }
      }
    } catch (err) {
      const code = (err as { code?: string }).code
      const errno = code === 'READ_ONLY' || code === 'PERMISSION_DENIED' ? EPERM : code === 'OUT_OF_RANGE' ? ENOSPC : code === 'NO_SPACE' ? ENOSPC : code === 'INVALID_ARGUMENT' ? EINVAL : code === 'NOT_OPEN' ? ESHUTDOWN : code === 'NOT_IMPLEMENTED' ? ENOTSUP : EIO
      return { error: errno, message: (err as Error)?.message ?? String(err) }
    }
  }

  /** base:allocation extents of a range: allocated (0) or hole and zero (3). */
  async #blockStatus (exp: Export, negotiated: boolean, flags: number, offset: number, length: number): Promise<{ error: number, message?: string, body?: Buffer }> {
    if (!negotiated) return { error: EINVAL, message: 'block status needs structured replies and the base:allocation meta context' }
    if (length === 0 || offset + length > exp.size) return { error: EINVAL, message: `range ${offset}+${length} is empty or past the end (${exp.size} bytes)` }
    try {
      const extents = await this.#g.getAllocation(exp.source, offset, Math.min(length, MAX_STATUS_BYTES))
      const chosen = (flags & CMD_FLAG_REQ_ONE) !== 0 ? extents.slice(0, 1) : extents
      const body = Buffer.alloc(4 + chosen.length * 8)
      body.writeUInt32BE(BASE_ALLOCATION_ID, 0)
      chosen.forEach((extent, i) => {
        body.writeUInt32BE(extent.length, 4 + i * 8)
        body.writeUInt32BE(extent.allocated ? 0 : STATE_HOLE | STATE_ZERO, 8 + i * 8)
      })
      return { error: 0, body }
    } catch (err) {
      return { error: EIO, message: (err as Error)?.message ?? String(err) }
    }
  }

  /** Trims in pieces (one trim call covers at most 256 MiB); the range reads as zeros afterwards. */
  async #trim (exp: Export, offset: number, length: number): Promise<void> {
    const piece = 128 * 1024 * 1024
    for (let at = 0; at < length; at += piece) await this.#g.trim(exp.volumeId, offset + at, Math.min(piece, length - at))
  }
}

/** The payload of NBD_OPT_LIST/SET_META_CONTEXT: export name and query strings (undefined if malformed). */
function parseMetaContextOption (data: Buffer): { exportName: string, queries: string[] } | undefined {
  if (data.byteLength < 8) return undefined
  const nameLength = data.readUInt32BE(0)
  if (4 + nameLength + 4 > data.byteLength) return undefined
  const exportName = data.subarray(4, 4 + nameLength).toString('utf8')
  const count = data.readUInt32BE(4 + nameLength)
  const queries: string[] = []
  let at = 8 + nameLength
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.byteLength) return undefined
    const length = data.readUInt32BE(at)
    if (at + 4 + length > data.byteLength) return undefined
    queries.push(data.subarray(at + 4, at + 4 + length).toString('utf8'))
    at += 4 + length
  }
  return at === data.byteLength ? { exportName, queries } : undefined
}
