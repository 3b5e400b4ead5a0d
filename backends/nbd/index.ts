// An NBD server (the Network Block Device protocol of the NetworkBlockDevice project, doc/proto.md)
// exporting GalleonFS volumes, so qemu-img, qemu-nbd clients, nbdcopy, nbdinfo, fio's nbd engine
// and the Linux nbd-client can use them.
//
//   const srv = await NbdServer.listen(g, { host: '127.0.0.1', port: 0 })  // srv.port
//   nbdinfo nbd://127.0.0.1:<port>/<volume>
//
// Export names: a volume's name (or `namespace/name`, or its id); `<volume>@<snapshot>` exports a
// snapshot read-only. Handshake: fixed newstyle only, with NBD_OPT_EXPORT_NAME, NBD_OPT_GO,
// NBD_OPT_INFO, NBD_OPT_LIST, NBD_OPT_ABORT, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_STARTTLS and the meta
// context options for base:allocation; any other option is answered NBD_REP_ERR_UNSUP. Transmission: READ, WRITE
// (FUA: WriteDurable), FLUSH, TRIM, WRITE_ZEROES (NO_HOLE writes real zeros), BLOCK_STATUS (which
// blocks hold data, so nbdcopy and qemu-img copy sparsely), DISC; requests are pipelined (up to 64
// in flight per connection, holding up to 128 MiB of data with the replies a client has not read
// yet: past that nothing more is read from it; during the handshake, 1 MiB of unread option
// replies) and answered as they complete, also to a client that shut down its sending side; many
// clients at once. Without `tls` the server has no authentication (NBD has none without TLS): it
// listens on loopback unless told otherwise; serve `g.as(principal)` to limit what clients reach.
// With `tls` (pre-shared keys and/or x509, see tls.ts) every client must upgrade with
// NBD_OPT_STARTTLS before anything else is told or served.
//
// A frame the protocol does not allow (bad magic, unknown client flags, an option longer than
// 64 KiB, a request longer than 32 MiB) ends that connection only, once the requests before it are
// answered; other clients are not affected. A client that has not finished the handshake after
// `handshakeTimeoutMs` (10 s, as qemu-nbd's --handshake-limit) is disconnected. At most
// `maxPendingConnections` (64) connections may be in their handshake at once, and
// `maxPendingConnectionsPerAddress` (32) from one address: one more is closed at once. After
// refuseNewSessions() a client in its handshake gets NBD_REP_ERR_SHUTDOWN, with the reason, to each
// option (close() disconnects such clients instead: call refuseNewSessions() first to tell them
// why); NbdStandIn (stand-in.ts) answers so before a server can start.

import { createServer, Server, type Socket } from 'node:net'
import type { GalleonFS } from '../../src/galleonfs.js'
import { GalleonError, describe } from '../../src/errors.js'
import { PendingConnections, pendingLimitOption, type PendingSlot } from '../../src/pending-connections.js'
import { greet, type Negotiated, type Session } from './handshake.js'
import { SocketReader, finish } from './socket.js'
import { transmit } from './transmission.js'
import { checkTlsOptions, type NbdTls, type NbdTlsOptions } from './tls.js'

export { parsePskFile, type NbdTlsOptions } from './tls.js'
export { NbdStandIn, type NbdStandInOptions } from './stand-in.js'

/** Options of NbdServer.listen. */
export interface NbdServerOptions {
  /** Address to listen on (default 127.0.0.1: NBD has no authentication). */
  readonly host?: string
  /** Port (default 10809; 0 picks a free one, see `port`). */
  readonly port?: number
  /**
   * Milliseconds a client has to finish the handshake (to NBD_OPT_GO or NBD_OPT_EXPORT_NAME) before
   * its connection is closed, as qemu-nbd's `--handshake-limit` does since CVE-2024-7409: without a
   * limit, a client that connects and sends nothing, or stops in the middle of an option, holds a
   * socket and memory for ever. The limit is on the whole handshake, not on silence. Clients past
   * the handshake are never affected. Default 10000; 0: no limit.
   */
  readonly handshakeTimeoutMs?: number
  /**
   * Milliseconds `close()` lets requests in flight finish before it disconnects every client and
   * resolves. A request may wait much longer than that inside the library (a QoS limit, a
   * replicated volume's copies): it then goes on in the background, and its answer is dropped with
   * the connection, as when a client disconnects (a write may or may not have been applied, as after
   * any unacknowledged write). Default 10000; 0: wait for every request, however long.
   */
  readonly closeTimeoutMs?: number
  /**
   * Receives errors of the listening socket itself (an accept failing with EMFILE, say); the server
   * keeps listening either way. Without it (or when it throws) the last one is kept in `lastError`.
   */
  readonly onError?: (err: GalleonError) => void
  /**
   * TLS credentials (x509 and/or pre-shared keys, see NbdTlsOptions). Given, the server requires
   * TLS (the protocol's FORCEDTLS mode): a client must send NBD_OPT_STARTTLS before anything else
   * is told or served (nbdinfo, nbdcopy: an `nbds://` URI; qemu: a `tls-creds` object); other
   * options get NBD_REP_ERR_TLS_REQD, and NBD_OPT_EXPORT_NAME in clear ends the connection.
   */
  readonly tls?: NbdTlsOptions
  /**
   * Connections in their handshake (TLS included) at once, at most: one more is closed at once
   * (counted in `refusedConnections`), so that clients that connect and stall cannot hold sockets
   * and memory by the thousand until `handshakeTimeoutMs` ends each. Connections past the
   * handshake are not counted. Default 64.
   */
  readonly maxPendingConnections?: number
  /**
   * Of those, at most this many from one remote address (an IPv6 /64 counts as one), so that one
   * host stalling its connections leaves room for others. Clients on the same host share it (all
   * of them, on loopback): raise it if more of them connect at the same moment (fio's nbd engine
   * with many jobs, say). Default 32.
   */
  readonly maxPendingConnectionsPerAddress?: number
  /**
   * A server listening already, to serve on instead of listening on host:port (`host` still names
   * it): a program that binds its ports before it opens the instance hands the NBD server its port
   * this way, with no moment in which another process could take it. Create it with
   * `net.createServer({ allowHalfOpen: true, noDelay: true })` and no 'connection' listener (a
   * server without allowHalfOpen is refused: it would end a connection as soon as its client shut
   * down its sending side, dropping the replies still owed to it); the NBD server serves its
   * connections from now on (also those emitted on it later, such as ones accepted before) and
   * closes it in close().
   */
  readonly server?: Server
}

const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000
const DEFAULT_CLOSE_TIMEOUT_MS = 10_000
/** `maxPendingConnections` when not given. */
export const DEFAULT_MAX_PENDING_CONNECTIONS = 64
/** `maxPendingConnectionsPerAddress` when not given. */
export const DEFAULT_MAX_PENDING_CONNECTIONS_PER_ADDRESS = 32
/** Longest delay setTimeout takes: a longer one would fire after 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1

/** The NBD server. */
export class NbdServer {
  readonly #g: GalleonFS
  readonly #server: Server
  /** Per client connection (its TCP socket): the session, whose socket is the TLS one once upgraded. */
  readonly #connections = new Map<Socket, Session>()
  /** Per connection: stop taking requests and resolve once the ones in flight are answered. */
  readonly #stoppers = new Map<Socket, () => Promise<void>>()
  /** Sessions in their handshake, with their TCP socket (session.socket is the TLS one once upgraded). */
  readonly #negotiating = new Map<Session, Socket>()
  readonly #handshakeTimeoutMs: number
  readonly #closeTimeoutMs: number
  readonly #onError: ((err: GalleonError) => void) | undefined
  readonly #pending: PendingConnections
  #tls: NbdTls | undefined
  readonly host: string
  #port = 0
  #closing: Promise<void> | undefined
  #lastError: GalleonError | undefined
  /** Set by refuseNewSessions() (or close()): why clients in their handshake get no export. */
  #refusing: string | undefined
  readonly #refusal = (): string | undefined => this.#refusing

  private constructor (g: GalleonFS, server: Server, host: string, timeouts: { handshakeMs: number, closeMs: number }, onError: ((err: GalleonError) => void) | undefined, tls: NbdTls | undefined, pending: PendingConnections) {
    this.#g = g
    this.#pending = pending
    this.#tls = tls
    this.#server = server
    this.host = host
    this.#handshakeTimeoutMs = timeouts.handshakeMs
    this.#closeTimeoutMs = timeouts.closeMs
    this.#onError = onError
  }

  /** Starts serving `g`'s volumes. */
  static async listen (g: GalleonFS, options: NbdServerOptions = {}): Promise<NbdServer> {
    if (g === null || typeof g !== 'object' || typeof (g as GalleonFS).read !== 'function') throw new GalleonError('INVALID_ARGUMENT', `NbdServer.listen() needs an open GalleonFS instance, got ${describe(g)}`)
    if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `NbdServer.listen() options must be an object such as { port: 10809 }, got ${describe(options)}`)
    const host = options.host ?? '127.0.0.1'
    const port = options.port ?? 10809
    if (typeof host !== 'string' || host.length === 0) throw new GalleonError('INVALID_ARGUMENT', `host must be an address such as 127.0.0.1, got ${describe(host)}`)
    if (!Number.isSafeInteger(port) || port < 0 || port > 65535) throw new GalleonError('INVALID_ARGUMENT', `port must be 0 (any free port) to 65535, got ${describe(port)}`)
    const handshakeTimeoutMs = timeoutOption('handshakeTimeoutMs', options.handshakeTimeoutMs, DEFAULT_HANDSHAKE_TIMEOUT_MS)
    const closeTimeoutMs = timeoutOption('closeTimeoutMs', options.closeTimeoutMs, DEFAULT_CLOSE_TIMEOUT_MS)
    const onError = options.onError
    if (onError !== undefined && typeof onError !== 'function') throw new GalleonError('INVALID_ARGUMENT', `onError must be a function receiving a GalleonError, got ${describe(onError)}`)
    const tls = options.tls === undefined ? undefined : checkTlsOptions(options.tls)
    const pending = new PendingConnections(
      pendingLimitOption('maxPendingConnections', options.maxPendingConnections, DEFAULT_MAX_PENDING_CONNECTIONS),
      pendingLimitOption('maxPendingConnectionsPerAddress', options.maxPendingConnectionsPerAddress, DEFAULT_MAX_PENDING_CONNECTIONS_PER_ADDRESS))
    const given = options.server
    if (given !== undefined) {
      const make = 'create it with net.createServer({ allowHalfOpen: true, noDelay: true }) and no connection listener, and wait for its listen() to call back'
      if (!(given instanceof Server)) throw new GalleonError('INVALID_ARGUMENT', `server must be a listening net.Server (${make}), or left out to have the NBD server listen on host:port; got ${describe(given)}`)
      if (!given.listening) throw new GalleonError('INVALID_ARGUMENT', `server is not listening: ${make}, or leave server out to have the NBD server listen on host:port`)
      // An HTTP or TLS server (or one made with a connection handler) would take the NBD clients' connections too.
      if (given.listenerCount('connection') > 0) throw new GalleonError('INVALID_ARGUMENT', `server has a 'connection' listener already (an HTTP or TLS server, or one made with a connection handler), which would take the NBD clients' connections too: ${make}`)
      // net.Server keeps the option as its allowHalfOpen property (not in @types/node) and gives it
      // to every socket it accepts. Without it, a client's FIN (it shuts down its sending side
      // after NBD_CMD_DISC) makes Node end the socket at once: the replies to the requests still in
      // flight are dropped without a word.
      if ((given as Server & { allowHalfOpen?: unknown }).allowHalfOpen !== true) throw new GalleonError('INVALID_ARGUMENT', `server was made without allowHalfOpen: true, so a client that shuts down its sending side (after NBD_CMD_DISC, say) would lose the replies to the requests it is still waiting for: ${make}`)
    }
    const accept: { to?: NbdServer } = {}
    // allowHalfOpen: a client that shuts down its sending side (after NBD_CMD_DISC, say) still gets
    // the replies to the requests it sent; the session ends its side itself (finish).
    const server = given ?? createServer({ noDelay: true, allowHalfOpen: true })
    server.on('connection', (socket: Socket) => {
      if (accept.to === undefined) socket.destroy()
      else accept.to.#accept(socket)
    })
    const instance = new NbdServer(g, server, host, { handshakeMs: handshakeTimeoutMs, closeMs: closeTimeoutMs }, onError, tls, pending)
    accept.to = instance
    if (given === undefined) {
      await new Promise<void>((resolve, reject) => {
        const failed = (err: NodeJS.ErrnoException): void => reject(new GalleonError(err.code === 'EADDRINUSE' ? 'BUSY' : 'IO_ERROR', `the NBD server could not listen on ${host}:${port}: ${err.message}`, { cause: err }))
        server.once('error', failed)
        server.listen(port, host, () => { server.off('error', failed); resolve() })
      })
    }
    // Once listening, an 'error' is an accept that failed (EMFILE, ENFILE, ...): without a listener
    // it would end the process; the server keeps listening and reports it.
    server.on('error', (err) => { instance.#report(err) })
    const address = server.address()
    instance.#port = typeof address === 'object' && address !== null ? address.port : port
    return instance
  }

  /** The port it listens on. */
  get port (): number { return this.#port }

  /** Connected clients. */
  get connections (): number { return this.#connections.size }

  /** Connected clients still in their handshake (see `maxPendingConnections`). */
  get pendingConnections (): number { return this.#pending.count }

  /** Connections closed on arrival since the server started, because `maxPendingConnections` (or the per-address cap) were in their handshake. */
  get refusedConnections (): number { return this.#pending.refused }

  /** Whether the server requires TLS of new connections. */
  get tls (): boolean { return this.#tls !== undefined }

  /**
   * Replaces the TLS credentials (undefined: TLS off), such as a renewed certificate or a revoked
   * key. Whether TLS is required is decided per connection when it is accepted (the protocol wants
   * one mode for a connection's lifetime), so turning TLS on or off applies to new connections;
   * but every NBD_OPT_STARTTLS from now on uses the new credentials, also on a connection made
   * before. Sessions already secured keep theirs. Turning TLS on ends the connections accepted in
   * clear that are still in their handshake: nothing was served to them yet, and they would be
   * (their client reconnects, and is then asked for TLS). Sessions in clear already being served
   * go on until they end. Bad options are refused (INVALID_ARGUMENT) and change nothing.
   */
  setTls (tls: NbdTlsOptions | undefined): void {
    const next = tls === undefined ? undefined : checkTlsOptions(tls)
    this.#tls = next
    if (next === undefined) return
    for (const [session, tcp] of this.#negotiating) {
      if (session.tls === undefined) cutOff(session, tcp)
    }
  }

  /**
   * From now on, no new session starts: every option of a client in its handshake (those connected
   * already and those to come) but NBD_OPT_ABORT and NBD_OPT_STARTTLS is answered
   * NBD_REP_ERR_SHUTDOWN with `reason` (a message for the user: qemu prints it as "server
   * reported: ...", libnbd tools with LIBNBD_DEBUG=1), as the NBD protocol asks of a server being
   * shut down, so a client fails at once and can retry elsewhere or later; NBD_OPT_EXPORT_NAME,
   * which cannot be refused, ends its connection. Sessions being served go on. For a program
   * about to stop: call it a while before close(), which disconnects the clients still in their
   * handshake (an option it is already answering gets the refusal). A later call replaces the reason.
   */
  refuseNewSessions (reason: string): void {
    if (typeof reason !== 'string' || reason.length === 0) throw new GalleonError('INVALID_ARGUMENT', `refuseNewSessions() needs the reason to tell clients, as text, got ${describe(reason)}`)
    this.#refusing = reason
  }

  /** The last error of the listening socket not taken by `onError`, if any. */
  get lastError (): GalleonError | undefined { return this.#lastError }

  /**
   * Stops listening and disconnects every client. Requests in flight are answered first (their
   * writes applied and acknowledged), for at most `closeTimeoutMs`: then every connection is cut
   * and this resolves (requests still waiting in the library go on in the background).
   */
  async close (): Promise<void> {
    this.#refusing ??= 'the NBD server is closing: connect again once it serves again'
    this.#closing ??= (async () => {
      const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()))
      let expired: () => void = () => {}
      const deadline = new Promise<void>((resolve) => { expired = resolve })
      const timer = this.#closeTimeoutMs > 0
        ? setTimeout(() => {
          for (const [socket, session] of this.#connections) { session.socket.destroy(); socket.destroy() }
          expired()
        }, this.#closeTimeoutMs)
        : undefined
      const answered = Promise.all([...this.#connections.values()].map(async (session) => {
        await this.#stoppers.get(session.socket)?.().catch(() => {})
        finish(session.socket)
      }))
      // Past the deadline every socket is destroyed, so the listener's close follows.
      await Promise.race([answered, deadline])
      await closed
      clearTimeout(timer)
    })()
    await this.#closing
  }

  #accept (socket: Socket): void {
    socket.on('error', () => {}) // a client that vanishes is not the server's problem
    const slot = this.#pending.admit(socket)
    if (typeof slot === 'string') {
      socket.destroy()
      return
    }
    const session: Session = { socket, reader: new SocketReader(socket), tls: this.#tls, credentials: () => this.#tls, secured: false }
    this.#connections.set(socket, session)
    socket.setNoDelay(true)
    socket.once('close', () => { this.#connections.delete(socket); this.#stoppers.delete(session.socket) })
    // When the session ends, replies already written still go out (end, not destroy; over TLS,
    // the TLS socket's end, so they are sealed and the close is announced).
    void this.#serve(session, slot).catch(() => {}).finally(() => { finish(session.socket) })
  }

  /** Hands an error of the listening socket to onError, or keeps it in lastError. */
  #report (err: unknown): void {
    const detail = err instanceof Error ? err.message : String(err)
    const code = (err as { code?: unknown } | null)?.code
    const hint = code === 'EMFILE' || code === 'ENFILE' ? ' (too many open files: raise the limit or close some)' : ''
    const error = err instanceof GalleonError ? err : new GalleonError('IO_ERROR', `the NBD server on ${this.host}:${this.#port} could not accept a connection${hint}; it keeps listening: ${detail}`, { cause: err })
    // Called as a plain function: the listener must not see the server's internals as `this`.
    const listener = this.#onError
    if (listener === undefined) { this.#lastError = error; return }
    try {
      listener(error)
    } catch {
      // Thrown from an 'error' listener, it would end the process.
      this.#lastError = error
    }
  }

  async #serve (session: Session, slot: PendingSlot): Promise<void> {
    // A client still in the handshake when the limit passes is cut off (destroy: its unread option
    // replies are dropped too); the TLS handshake counts. The timer goes as soon as the handshake
    // ends, however it ends.
    const limit = this.#handshakeTimeoutMs
    const tcp = session.socket
    const expiry = limit > 0 ? setTimeout(() => { cutOff(session, tcp) }, limit).unref() : undefined
    let chosen: Negotiated
    this.#negotiating.set(session, tcp)
    try {
      chosen = await greet(this.#g, session, this.#refusal)
    } finally {
      this.#negotiating.delete(session)
      slot.release()
      clearTimeout(expiry)
    }
    if (chosen === undefined) return
    const { socket, reader } = session
    try {
      // Cut off (or gone) while the export was being claimed: nothing to serve.
      if (socket.destroyed) return
      await transmit(this.#g, this.#stoppers, socket, reader, chosen.export, chosen.structured, chosen.allocation)
    } finally {
      // The session is over: its stopper goes (the socket's close may have come before transmit
      // set it, and each one kept its session's buffers alive as long as the server).
      this.#stoppers.delete(socket)
      await chosen.attachment?.close().catch(() => {})
    }
  }

}

/** A timeout option in milliseconds: 0 (no limit) to the longest timer, or its default when absent. */
function timeoutOption (name: string, value: unknown, fallback: number): number {
  const ms = value ?? fallback
  if (typeof ms !== 'number' || !Number.isSafeInteger(ms) || ms < 0 || ms > MAX_TIMER_MS) throw new GalleonError('INVALID_ARGUMENT', `${name} must be a whole number of milliseconds from 0 (no limit) to ${MAX_TIMER_MS} (default ${fallback}), got ${describe(ms)}`)
  return ms
}

/** Ends a session at once, unread option replies dropped: its TLS socket, if any, and its TCP one. */
function cutOff (session: Session, tcp: Socket): void {
  session.socket.destroy()
  tcp.destroy()
}
