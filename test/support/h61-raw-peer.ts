// A hand-driven stranger on the tcp transport's port (h61 security audit): a real socket that sends
// whatever bytes it is told to and decodes the frames the server sends back, unauthenticated ones
// only (a stranger never gets past the handshake).

import { connect, type Socket } from 'node:net'
import { FrameReader, type Frame } from '../../backends/tcp/frames.js'
import { parseAddress } from '../../backends/tcp/index.js'

/** A raw connection to a transport; `frames` fills as the server answers, `closed` resolves when it hangs up. */
export class RawStranger {
  readonly socket: Socket
  readonly frames: Frame[] = []
  readonly closed: Promise<void>
  /** Every byte the server sent, as received. */
  received = Buffer.alloc(0)
  readonly #reader = new FrameReader(1 << 20)

  /** True once the server hung up. */
  isClosed = false

  /**
   * `allowHalfOpen`: keep sending after the server ended its side (as an attacker would);
   * `localAddress`: the address to connect from (127.0.0.2 and up are loopback too).
   */
  constructor (address: string, options: { allowHalfOpen?: boolean, localAddress?: string } = {}) {
    const { host, port } = parseAddress(address)
    this.socket = connect({ host, port, allowHalfOpen: options.allowHalfOpen ?? false, ...(options.localAddress === undefined ? {} : { localAddress: options.localAddress }) })
    this.socket.on('error', () => {})
    this.socket.on('data', (chunk: Buffer) => {
      this.received = Buffer.concat([this.received, chunk])
      this.#reader.push(chunk)
      try {
        for (let frame = this.#reader.next(); frame !== undefined; frame = this.#reader.next()) this.frames.push(frame)
      } catch {
        // A frame this reader cannot decode (tagged ones after a WELCOME): the raw bytes are kept.
      }
    })
    this.closed = new Promise((resolve) => { this.socket.once('close', () => { this.isClosed = true; resolve() }) })
  }

  async connected (): Promise<void> {
    if (!this.socket.connecting) return
    await new Promise<void>((resolve, reject) => {
      this.socket.once('connect', () => { resolve() })
      this.socket.once('error', reject)
    })
  }

  /** The server's GOODBYE header, if it sent one. */
  goodbye (): { code?: unknown, message?: unknown } | undefined {
    return this.frames.find((frame) => frame.type === 5)?.header as { code?: unknown, message?: unknown } | undefined
  }

  /** Writes `data` `times` times, waiting for 'drain' when the socket is full; stops early when the server hangs up. Resolves to the bytes handed over. */
  async flood (data: Buffer, times: number): Promise<number> {
    let sent = 0
    let gone = false
    void this.closed.then(() => { gone = true })
    for (let i = 0; i < times && !gone && !this.socket.destroyed; i++) {
      const more = this.socket.write(data)
      sent += data.byteLength
      if (!more) {
        await new Promise<void>((resolve) => {
          const done = (): void => { this.socket.off('drain', done); this.socket.off('close', done); resolve() }
          this.socket.once('drain', done)
          this.socket.once('close', done)
        })
      }
    }
    return sent
  }
}
