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
// yet: past that nothing more is read from it; during the handshake, 1 MiB of unread option
// replies) and answered as they complete, also to a client that shut down its sending side; many
// clients at once. The server has no authentication (NBD has none without TLS): it listens on
// loopback unless told otherwise; serve `g.as(principal)` to limit what clients reach.
//
// A frame the protocol does not allow (bad magic, unknown client flags, an option longer than
// 64 KiB, a request longer than 32 MiB) ends that connection only, once the requests before it are
// answered; other clients are not affected.

import { createServer, type Server, type Socket } from 'node:net'
import type { GalleonFS } from '../../src/galleonfs.js'
import { GalleonError, describe } from '../../src/errors.js'
import { negotiate } from './handshake.js'
import { FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, NBDMAGIC, ProtocolError } from './protocol.js'
import { SocketReader, finish } from './socket.js'
import { transmit } from './transmission.js'

/** Options of NbdServer.listen. */
export interface NbdServerOptions {
  /** Address to listen on (default 127.0.0.1: NBD has no authentication). */
  readonly host?: string
  /** Port (default 10809; 0 picks a free one, see `port`). */
  readonly port?: number
}

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
    // allowHalfOpen: a client that shuts down its sending side (after NBD_CMD_DISC, say) still gets
    // the replies to the requests it sent; the session ends its side itself (finish).
    const server = createServer({ noDelay: true, allowHalfOpen: true }, (socket) => {
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
    const chosen = await negotiate(this.#g, socket, reader, noZeroes)
    if (chosen === undefined) return
    try {
      await transmit(this.#g, this.#stoppers, socket, reader, chosen.export, chosen.structured, chosen.allocation)
    } finally {
      await chosen.attachment?.close().catch(() => {})
    }
  }
}
