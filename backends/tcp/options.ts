// Options, limits and counters of the tcp transport (see index.ts for the protocol), and the
// reserved request kind of keepalives.

import type { AbstractTransportOptions } from '../../src/abstract-transport.js'
import { GalleonError, describe } from '../../src/errors.js'

/** TLS material (PEM strings or buffers), as node:tls takes it. */
export interface TcpTlsOptions {
  readonly key: string | Buffer
  readonly cert: string | Buffer
  /**
   * Trusted CA certificates. When given, the server also requires and verifies client
   * certificates (mutual TLS); clients always verify the server against it.
   */
  readonly ca?: string | Buffer | Array<string | Buffer>
  /** Verify the peer's certificate (default true). Turning it off leaves only the HMAC handshake. */
  readonly rejectUnauthorized?: boolean
  /** Name to check the server certificate against, when it differs from the host dialed. */
  readonly servername?: string
}

/** Options of {@link TcpTransport}. */
export interface TcpTransportOptions extends AbstractTransportOptions {
  /**
   * Shared by every node of the cluster; peers without it are refused. At least
   * {@link MIN_CLUSTER_SECRET_BYTES} (16) bytes (a string: its UTF-8 bytes), since the handshake's
   * proofs, sent in clear, would let a short one be guessed offline; `openssl rand -hex 32` makes a
   * good one.
   */
  readonly clusterSecret: string | Uint8Array
  /** Interface to listen on (default 127.0.0.1). */
  readonly host?: string
  /** Port to listen on; 0 (the default) picks a free one. */
  readonly port?: number
  /** Host to put in the address `listen()` returns, when peers reach this node by another name. */
  readonly advertiseHost?: string
  /** Speak TLS (both when listening and when dialing). */
  readonly tls?: TcpTlsOptions
  /** A connection must complete the handshake within this long (default 10 s). */
  readonly handshakeTimeoutMs?: number
  /**
   * A dialed connection on which nothing has arrived for this long sends a keepalive, which the
   * peer answers without its handler (default 5 s; 0: no keepalives). Also the idle time before
   * the kernel's TCP keepalive probes start, on every connection.
   */
  readonly keepaliveIntervalMs?: number
  /**
   * A dialed connection that hears nothing for this long after sending a keepalive, while the peer
   * also takes none of the bytes being sent to it (a transfer the keepalive waits behind), is
   * closed: its requests fail with BACKEND_UNAVAILABLE and the next request dials again (default
   * 10 s). What the kernels already buffer (a few MB) cannot be watched: a peer must read it, and
   * answer, within this time.
   */
  readonly keepaliveTimeoutMs?: number
  /**
   * Accepted connections that have not completed the handshake (also those still in their TLS
   * handshake), at most; one more is closed at once (counted in `stats().refusedConnections`).
   * Connections past the handshake are not counted. Default 64.
   */
  readonly maxPendingConnections?: number
  /**
   * Of those, at most this many from one remote address (an IPv6 /64 counts as one), so that a
   * stranger flooding from one address leaves room for nodes at others. Nodes behind one NAT
   * address that (re)connect at the same moment share it: a refused one fails its requests with
   * BACKEND_UNAVAILABLE and dials again with the next. Default 16.
   */
  readonly maxPendingConnectionsPerAddress?: number
}

/** Shortest cluster secret a TcpTransport accepts, in bytes. */
export const MIN_CLUSTER_SECRET_BYTES = 16
/** Default of `maxPendingConnections`. */
export const DEFAULT_MAX_PENDING_CONNECTIONS = 64
/** Default of `maxPendingConnectionsPerAddress`. */
export const DEFAULT_MAX_PENDING_CONNECTIONS_PER_ADDRESS = 16

/** Request kind of keepalives: answered by the connection itself, never handed to the handler. */
export const KEEPALIVE_KIND = 'tcp:keepalive'
/** The header JSON of a keepalive request, and of the reply answering it. */
export const KEEPALIVE_HEADER = `{"k":${JSON.stringify(KEEPALIVE_KIND)},"h":{}}`

/** When a dialed connection sends keepalives and gives up on a silent peer. */
export interface Keepalive {
  readonly intervalMs: number
  readonly timeoutMs: number
}

/** Counters of a TcpTransport. */
export interface TcpTransportStats {
  readonly inFlightRequests: number
  readonly inFlightBytes: number
  readonly completed: number
  readonly failed: number
  /** Bytes of received requests being served (or whose replies wait to be written). */
  readonly servingBytes: number
  /** Bytes of frames this node's connections have not yet handed to their sockets (waiting for the end of the tick, or for 'drain' after write() returned false). */
  readonly queuedBytes: number
  /** Open connections this node dialed / accepted. */
  readonly outboundConnections: number
  readonly inboundConnections: number
  /** Accepted connections that have not completed the handshake yet (see `maxPendingConnections`). */
  readonly pendingConnections: number
  /** Connections closed on arrival since creation because `maxPendingConnections` (or the per-address cap) were pending. */
  readonly refusedConnections: number
}

/** `host:port`, with brackets around an IPv6 host. */
export function formatAddress (host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
}

/** Parses `host:port` or `[v6]:port`; throws INVALID_ARGUMENT otherwise. */
export function parseAddress (address: string): { host: string, port: number } {
  const match = /^\[([^\]]+)\]:(\d{1,5})$/.exec(address) ?? /^([^:[\]]+):(\d{1,5})$/.exec(address)
  const port = match === null ? NaN : Number(match[2])
  if (match === null || !(port >= 1 && port <= 65535)) {
    throw new GalleonError('INVALID_ARGUMENT', `a tcp transport address is host:port (or [ipv6]:port) with a port from 1 to 65535, got ${describe(address)}`)
  }
  return { host: match[1] as string, port }
}

/** Whether a host is an IP address (no TLS server name is derived from one). */
export function isIp (host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(':')
}
