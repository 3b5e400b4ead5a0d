// A free TCP port on 127.0.0.1 for a test to hand to a server it starts.

import { createServer, type Socket } from 'node:net'

/**
 * A free TCP port on 127.0.0.1 below the kernel's ephemeral range (net.ipv4.ip_local_port_range,
 * 32768-60999 by default). A port the kernel picks (listen on port 0, then close) lies in that
 * range, and until the server the test starts binds it, any process may take it as the local end
 * of an outgoing connection: a clean-clone CI run had a daemon fail with its --ipc-address "in use
 * by another process" (h88), and a daemon SIGKILLed and restarted on its port met the same. Below
 * the range only another explicit pick can take it, and the probe sees those that listen.
 */
export async function freePort (): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    const port = 10_000 + Math.floor(Math.random() * 22_000)
    const free = await new Promise<boolean>((resolve) => {
      const probe = createServer()
      probe.unref()
      probe.once('error', () => { resolve(false) })
      probe.listen(port, '127.0.0.1', () => { probe.close(() => { resolve(true) }) })
    })
    if (free) return port
    if (attempt >= 100) throw new Error('no free port found between 10000 and 32000')
  }
}

/** A port for a server a test stops and starts again on it (a daemon SIGKILLed and restarted): see freePort. */
export const restartablePort = freePort

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

/** Writes up to `limit` bytes from the front of `waiting` (chunks in order) to `to`; returns how many it wrote. */
export function passOn (waiting: Buffer[], to: Socket, limit: number): number {
  let sent = 0
  while (waiting.length > 0 && sent < limit) {
    const head = waiting[0] as Buffer
    const take = Math.min(head.byteLength, limit - sent)
    to.write(head.subarray(0, take))
    if (take === head.byteLength) waiting.shift()
    else waiting[0] = head.subarray(take)
    sent += take
  }
  return sent
}
