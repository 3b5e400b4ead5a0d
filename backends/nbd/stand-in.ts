// Answers NBD clients for a server that cannot serve yet (the instance is not open): the fixed
// newstyle greeting, then every option refused with NBD_REP_ERR_SHUTDOWN and a reason, so a
// client fails at once with a message instead of waiting, with no answer, for the server to start.

import type { Socket } from 'node:net'
import { GalleonError, describe } from '../../src/errors.js'
import { greet, type Session } from './handshake.js'
import { SocketReader, finish } from './socket.js'
import { checkTlsOptions, type NbdTls, type NbdTlsOptions } from './tls.js'

/** Options of an NbdStandIn. */
export interface NbdStandInOptions {
  /**
   * TLS credentials, as the server to come will have them: a client then gets the refusal only
   * over TLS, as it would get anything from that server (FORCEDTLS).
   */
  readonly tls?: NbdTlsOptions
  /** Milliseconds a client may take over its handshake before it is cut off (default 10000; 0: no limit). */
  readonly handshakeTimeoutMs?: number
}

/**
 * Stands in for an NbdServer before it can start (say while its GalleonFS instance opens): each
 * connection given to answer() is greeted, may negotiate TLS, and has every other option refused
 * with NBD_REP_ERR_SHUTDOWN carrying the reason of the moment (NBD_OPT_ABORT is acknowledged,
 * NBD_OPT_EXPORT_NAME, which cannot be refused, ends the connection). qemu-img and qemu-nbd print
 * the reason ("server reported: ..."); nbdinfo and nbdcopy say the server is shutting down (the
 * reason shows with LIBNBD_DEBUG=1). Clients that do not finish within the handshake limit are cut off.
 */
export class NbdStandIn {
  readonly #tls: NbdTls | undefined
  readonly #handshakeTimeoutMs: number

  constructor (options: NbdStandInOptions = {}) {
    if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `NbdStandIn options must be an object such as { handshakeTimeoutMs: 10000 }, got ${describe(options)}`)
    const limit = options.handshakeTimeoutMs ?? 10_000
    if (!Number.isSafeInteger(limit) || limit < 0 || limit > 2 ** 31 - 1) throw new GalleonError('INVALID_ARGUMENT', `handshakeTimeoutMs must be a whole number of milliseconds from 0 (no limit) to ${2 ** 31 - 1}, got ${describe(limit)}`)
    this.#tls = options.tls === undefined ? undefined : checkTlsOptions(options.tls)
    this.#handshakeTimeoutMs = limit
  }

  /**
   * Answers the client on `socket` (a connection of a net.Server made with allowHalfOpen, nothing
   * read from it yet) until it leaves or is cut off; `reason()` is asked at each option, so it can
   * say how long the wait still is. Resolves when the connection is over; never rejects.
   */
  async answer (socket: Socket, reason: () => string): Promise<void> {
    socket.on('error', () => {}) // a client that vanishes is nobody's problem
    socket.setNoDelay(true)
    const tls = this.#tls
    const session: Session = { socket, reader: new SocketReader(socket), tls, credentials: () => tls, secured: false }
    const cutOff = (): void => { session.socket.destroy(); socket.destroy() }
    const expiry = this.#handshakeTimeoutMs > 0 ? setTimeout(cutOff, this.#handshakeTimeoutMs).unref() : undefined
    try {
      await greet(undefined, session, reason)
    } catch {
      // A protocol violation ends that connection only.
    } finally {
      clearTimeout(expiry)
      finish(session.socket)
    }
  }
}

