// Socket helpers of a session: reading exact byte counts from a client, and ending a session
// without losing the replies already written.

import type { Socket } from 'node:net'

/** Reads exact byte counts from a socket (a small queue of chunks). */
export class SocketReader {
  readonly #socket: Socket
  #chunks: Buffer[] = []
  #buffered = 0
  #wanted = 0
  #wake: (() => void) | undefined
  #ended = false

  constructor (socket: Socket) {
    this.#socket = socket
    socket.on('data', (chunk: Buffer) => {
      this.#chunks.push(chunk)
      this.#buffered += chunk.byteLength
      if (this.#wake !== undefined && this.#buffered >= this.#wanted) this.#wake()
    })
    const end = (): void => { this.#ended = true; this.#wake?.() }
    socket.on('end', end)
    socket.on('close', end)
  }

  /** Exactly `n` bytes, or undefined if the connection ended first. */
  async read (n: number): Promise<Buffer | undefined> {
    while (this.#buffered < n) {
      if (this.#ended) return undefined
      this.#wanted = n
      await new Promise<void>((resolve) => { this.#wake = resolve })
      this.#wake = undefined
    }
    // Take just the chunks that hold the n bytes (never re-copy the whole backlog).
    const parts: Buffer[] = []
    let need = n
    while (need > 0) {
      const chunk = this.#chunks[0] as Buffer
      if (chunk.byteLength <= need) {
        parts.push(chunk)
        this.#chunks.shift()
        need -= chunk.byteLength
      } else {
        parts.push(chunk.subarray(0, need))
        this.#chunks[0] = chunk.subarray(need)
        need = 0
      }
    }
    this.#buffered -= n
    return parts.length === 1 ? parts[0] as Buffer : Buffer.concat(parts, n)
  }

  pause (): void { this.#socket.pause() }
  resume (): void { this.#socket.resume() }
}

/**
 * Ends a session: replies already written go out (uncorked, then end), the client's own end is
 * read so the socket closes promptly, and a client that never closes is cut off after a minute.
 */
export function finish (socket: Socket): void {
  if (socket.destroyed) return
  while (socket.writableCorked > 0) socket.uncork()
  socket.end()
  socket.resume()
  setTimeout(() => { if (!socket.destroyed) socket.destroy() }, 60_000).unref()
}
