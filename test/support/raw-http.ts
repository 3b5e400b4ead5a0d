// Raw HTTP against a daemon: a request written as bytes on a new connection (so that it can be
// malformed, trickle or stop), and the answer collected as text.

import { connect, type Socket } from 'node:net'
import { until } from './wait.js'

/** What came back on a raw connection: the whole text, and whether the daemon closed it. */
export interface RawAnswer { text: string, closed: boolean }

/**
 * Sends `request` to `host:port` on a new connection (TOKEN replaced by `token`) and collects the
 * answer until `done` says so or the daemon closes (`then` gets the socket after the request is
 * written, to send more or stall).
 */
export async function rawRequest (target: { host: string, port: number, token: string }, request: string | Buffer, options: { done?: (text: string) => boolean, then?: (socket: Socket) => void, timeoutMs?: number } = {}): Promise<RawAnswer> {
  const done = options.done ?? answered
  const socket = connect(target.port, target.host)
  socket.on('error', () => {})
  let text = ''
  let closed = false
  socket.on('data', (chunk: Buffer) => { text += chunk.toString('latin1') })
  socket.once('close', () => { closed = true })
  socket.write(typeof request === 'string' ? request.replaceAll('TOKEN', target.token) : request)
  options.then?.(socket)
  try {
    await until('the daemon answered', () => closed || done(text), options.timeoutMs ?? 20_000)
  } finally {
    socket.destroy()
  }
  return { text, closed }
}

/** Whether `text` holds a whole answer (headers and the content-length's worth of body). */
export function answered (text: string): boolean {
  const end = text.indexOf('\r\n\r\n')
  if (end < 0) return false
  const length = Number(/content-length: (\d+)/i.exec(text.slice(0, end))?.[1] ?? 0)
  return Buffer.byteLength(text.slice(end + 4), 'latin1') >= length
}
