// h46: a TCP relay on 127.0.0.1 that passes what the dialer sends at a fixed rate (what the target
// sends goes back at once): a slow but steadily moving link between two nodes. Reading from the
// dialer pauses while a step's worth waits, so TCP flow control holds the dialer back.

import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { pairSockets, passOn } from './net.js'

export class ThrottleRelay {
  readonly #server: Server
  readonly #sockets = new Set<Socket>()
  readonly #timers = new Set<NodeJS.Timeout>()
  /** Bytes of the dialer's passed on so far. */
  relayed = 0

  constructor (target: { host: string, port: number }, bytesPerStep: number, stepMs: number) {
    this.#server = createServer({ pauseOnConnect: true }, (client) => {
      const upstream = connect(target)
      pairSockets(this.#sockets, client, upstream)
      upstream.on('data', (chunk: Buffer) => { client.write(chunk) })
      const waiting: Buffer[] = []
      let waitingBytes = 0
      client.on('data', (chunk: Buffer) => {
        waiting.push(chunk)
        waitingBytes += chunk.byteLength
        if (waitingBytes >= bytesPerStep) client.pause()
      })
      const timer = setInterval(() => {
        const sent = passOn(waiting, upstream, bytesPerStep)
        waitingBytes -= sent
        this.relayed += sent
        if (waitingBytes < bytesPerStep) client.resume()
      }, stepMs)
      this.#timers.add(timer)
      client.once('close', () => { clearInterval(timer); this.#timers.delete(timer) })
      client.resume()
    })
  }

  async listen (): Promise<string> {
    await new Promise<void>((resolve) => { this.#server.listen(0, '127.0.0.1', resolve) })
    return `127.0.0.1:${(this.#server.address() as AddressInfo).port}`
  }

  async close (): Promise<void> {
    for (const timer of this.#timers) clearInterval(timer)
    for (const socket of this.#sockets) socket.destroy()
    await new Promise<void>((resolve) => { this.#server.close(() => { resolve() }) })
  }
}
