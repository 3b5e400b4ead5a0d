// The daemon's addresses, bound before its storage opens: a busy port stops the start before anything
// is created on disk, and no other process can take a port while the storage opens.

import { createServer, isIPv4, type Server, type Socket } from 'node:net'
import { GalleonError, type GalleonErrorCode } from '../src/index.js'
import { PendingConnections } from '../src/pending-connections.js'
import { ConfigError } from './daemon-config.js'

/** An address the daemon listens on, and how messages name it. */
export interface DaemonAddress {
  /** As configured (host:port). */
  readonly address: string
  /** What it is, such as "IPC address". */
  readonly what: string
  /** The setting that gives it, as flag and configuration key. */
  readonly setting: string
  readonly host: string
  readonly port: number
}

/**
 * Runs `listen` (which binds `entry`) and adds `entry` to `bound`, the daemon's addresses bound so
 * far. A port in use fails with BUSY naming the setting; one that is the port of an address in
 * `bound` (its NBD address on its IPC port, say) with a ConfigError naming both settings; any other
 * listen error (an address not of this machine, a port below 1024 without the right) with a
 * GalleonError naming the setting and what to give it.
 */
export async function bindAddress<T> (entry: DaemonAddress, bound: DaemonAddress[], listen: () => Promise<T>): Promise<T> {
  let result: T
  try {
    result = await listen()
  } catch (err) {
    // A server's own error, or a transport's GalleonError wrapping it.
    const system = (err as { syscall?: unknown }).syscall === 'listen' ? err as NodeJS.ErrnoException : (err as { cause?: NodeJS.ErrnoException }).cause
    const errno = system?.syscall === 'listen' ? system.code : undefined
    if (errno === 'EADDRINUSE') {
      const own = entry.port === 0 ? undefined : bound.find((other) => other.port === entry.port)
      throw own !== undefined
        ? samePort(entry, own)
        : new GalleonError('BUSY', `the ${entry.what} ${entry.address} is in use by another process (another galleonfs daemon?); stop that one, or give this daemon another ${entry.setting}`, { cause: err })
    }
    if (errno === undefined) throw err
    const [code, why, fix]: [GalleonErrorCode, string, string] = errno === 'EADDRNOTAVAIL'
      ? ['INVALID_ARGUMENT', `no network interface of this machine has the address ${entry.host}`, 'an address of this machine']
      : errno === 'EACCES'
        ? ['PERMISSION_DENIED', `ports below 1024 need root (or CAP_NET_BIND_SERVICE)`, 'a port of 1024 or more, or run it with that capability']
        : ['IO_ERROR', system?.message ?? String(err), 'another address']
    throw new GalleonError(code, `the daemon cannot listen on its ${entry.what} ${entry.address}: ${why} (${errno}); give ${entry.setting} ${fix}`, { cause: err })
  }
  bound.push(entry)
  return result
}

function samePort (entry: DaemonAddress, own: DaemonAddress): ConfigError {
  return new ConfigError(`the ${entry.what} ${entry.address} is on the port of the ${own.what} ${own.address} of this daemon, which listens on both; give ${entry.setting} or ${own.setting} another port`)
}

/**
 * The refusal bindAddress() would give `entry` for being on the port of an address in `bound`,
 * known without listening on it: the same port on the same host, on a wildcard host and one of its
 * family, or on '::' (which takes IPv4 too). Otherwise (another host of this machine; host names that
 * differ) undefined, and listening tells.
 */
export function ownPortClash (entry: DaemonAddress, bound: readonly DaemonAddress[]): ConfigError | undefined {
  if (entry.port === 0) return undefined
  const overlap = (a: string, b: string): boolean => a === b || a === '::' || b === '::' ||
    (a === '0.0.0.0' && isIPv4(b)) || (b === '0.0.0.0' && isIPv4(a))
  const own = bound.find((other) => other.port === entry.port && overlap(entry.host, other.host))
  return own === undefined ? undefined : samePort(entry, own)
}

/** Listens on host:port (0: a free port) with `server`; fails as server.listen() does (EADDRINUSE, ...). */
export async function listenOn (server: Server, host: string, port: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen({ host, port }, () => { server.off('error', reject); resolve() })
  })
}

/**
 * Listens on host:port and closes again at once: whether the daemon could listen there (it fails as
 * server.listen() does), for an address it listens on only later. No connection is served.
 */
export async function probeListen (host: string, port: number): Promise<void> {
  const server = createServer()
  await listenOn(server, host, port)
  await new Promise<void>((resolve) => server.close(() => resolve()))
}

/**
 * How long a client of a held port waits for the server to start before the stand-in answers it
 * that the server is not serving yet: long enough for a start that opens quickly to serve it, short
 * enough that the client does not seem hung (NBD clients wait for the greeting without a limit).
 */
export const HELD_CLIENT_WAIT_MS = 5_000

/** Who answers, on a held port, the clients that should not wait for the server to start. */
export interface StandIn {
  /** Answers the client on `socket` (that never reaches the server), asking `reason()` what to say; resolves once it is gone. */
  answer: (socket: Socket, reason: () => string) => Promise<void>
  /**
   * Why the server does not serve yet, and whether a client is answered so at once (`now`: the
   * wait can be long, such as a wait for peers) or only after HELD_CLIENT_WAIT_MS.
   */
  notReady: () => { reason: string, now: boolean }
}

/**
 * A port held for a server that cannot start before the storage is open (the NBD server serves the
 * instance's volumes): it listens, keeping the port, until handOver() gives its listening server to
 * that one, with the connections that came meanwhile (or release() frees it). Those count as in
 * their handshake: past `maxPending` of them (or `maxPendingPerAddress` from one address), as that
 * server's own caps, a connection is closed on arrival, so that connections made while the storage
 * opens cannot take every file descriptor the opening needs. With a `standIn`, a connection is
 * held for HELD_CLIENT_WAIT_MS at most (not at all while it says `now`), then given to the stand-in,
 * which tells its client why it is not served (and keeps its place among the pending ones).
 */
export class HeldPort {
  readonly #server: Server
  /** Connections held for the server, with the timer that gives each to the stand-in. */
  readonly #early = new Map<Socket, NodeJS.Timeout | undefined>()
  /** Connections the stand-in answers. */
  readonly #answered = new Set<Socket>()
  readonly #standIn: StandIn | undefined

  private constructor (server: Server, pending: PendingConnections, standIn: StandIn | undefined) {
    this.#server = server
    this.#standIn = standIn
    server.on('connection', (socket: Socket) => {
      socket.on('error', () => {})
      if (typeof pending.admit(socket) === 'string') {
        socket.destroy()
        return
      }
      if (standIn?.notReady().now === true) { this.#answer(socket); return }
      const timer = standIn === undefined
        ? undefined
        : setTimeout(() => { if (this.#early.delete(socket)) this.#answer(socket) }, HELD_CLIENT_WAIT_MS)
      this.#early.set(socket, timer)
      socket.once('close', () => {
        clearTimeout(timer)
        this.#early.delete(socket)
      })
    })
    // An accept that fails (EMFILE, say) loses that connection only.
    server.on('error', () => {})
  }

  /** Listens on host:port (0: a free port); fails as server.listen() does (EADDRINUSE, ...). */
  static async listen (host: string, port: number, caps: { maxPending: number, maxPendingPerAddress: number }, standIn?: StandIn): Promise<HeldPort> {
    // As NbdServer wants the server it is given.
    const server = createServer({ allowHalfOpen: true, noDelay: true })
    await listenOn(server, host, port)
    return new HeldPort(server, new PendingConnections(caps.maxPending, caps.maxPendingPerAddress), standIn)
  }

  #answer (socket: Socket): void {
    const standIn = this.#standIn as StandIn
    this.#answered.add(socket)
    void standIn.answer(socket, () => standIn.notReady().reason).catch(() => { socket.destroy() }).finally(() => this.#answered.delete(socket))
  }

  /**
   * Gives the listening server to `take` (which serves its connections from then on, and closes it),
   * then the connections held meanwhile (those the stand-in answers stay with it until they end).
   * When `take` fails, the port is released.
   */
  async handOver<T> (take: (server: Server) => Promise<T>): Promise<T> {
    this.#server.removeAllListeners('connection')
    let taken: T
    try {
      taken = await take(this.#server)
    } catch (err) {
      this.release()
      throw err
    }
    for (const [socket, timer] of this.#early) {
      clearTimeout(timer)
      this.#server.emit('connection', socket)
    }
    this.#early.clear()
    return taken
  }

  /** Frees the port (its socket is closed when this returns) and ends the connections that came meanwhile. */
  release (): void {
    for (const [socket, timer] of this.#early) {
      clearTimeout(timer)
      socket.destroy()
    }
    this.#early.clear()
    for (const socket of this.#answered) socket.destroy()
    if (this.#server.listening) this.#server.close()
  }
}
