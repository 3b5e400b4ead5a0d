// A free TCP port on 127.0.0.1 for a test to hand to a server it starts.

import { createServer, type Socket } from 'node:net'

export async function freePort (): Promise<number> {
  return await new Promise<number>((resolve, reject) => {
    const probe = createServer()
    probe.unref()
    probe.once('error', reject)
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address()
      probe.close(() => { typeof address === 'object' && address !== null ? resolve(address.port) : reject(new Error('no port')) })
    })
  })
}

/**
 * The plumbing of a relay's connection pair: both sockets tracked in `sockets` while open, their
 * errors ignored (the relay's tests look at what the ends see), and either closing closes the other.
 */
export function pairSockets (sockets: Set<Socket>, client: Socket, upstream: Socket): void {
  for (const socket of [client, upstream]) {
    sockets.add(socket)
    socket.on('error', () => {})
    socket.once('close', () => { sockets.delete(socket) })
  }
  client.once('close', () => { upstream.destroy() })
  upstream.once('close', () => { client.destroy() })
}
