// Socket helpers of a session: reading exact byte counts from a client (never far ahead of what
// is asked for), waiting for a client to take its replies, and ending a session without losing
// the replies already written.

import type { Socket } from 'node:net'

/**
 * Bytes a reader takes off the socket beyond the read it waits for: past that it stops reading
 * (TCP holds the client back), so a client that sends faster than it is served, or sends while
 * the server waits for it to read its replies, cannot fill the server's memory.
 */
const READ_AHEAD_BYTES = 4 * 1024 * 1024

/** Reads exact byte counts from a socket (a small queue of chunks). */
export class SocketReader {
  readonly #socket: Socket
  #chunks: Buffer[] = []
  #buffered = 0
  /** Bytes the pending read needs (0 when none is pending). */
  #wanted = 0
  #wake: (() => void) | undefined
  #ended = false
  /** Paused by its owner (pause()), and paused because READ_AHEAD_BYTES are buffered. */
  #held = false
  #full = false

  readonly #onData = (chunk: Buffer): void => {
    this.#chunks.push(chunk)
    this.#buffered += chunk.byteLength
    if (!this.#full && this.#buffered >= this.#wanted + READ_AHEAD_BYTES) { this.#full = true; this.#flow() }
    if (this.#wake !== undefined && this.#buffered >= this.#wanted) this.#wake()
  }

  readonly #onEnd = (): void => { this.#ended = true; this.#wake?.() }

  constructor (socket: Socket) {
    this.#socket = socket
    socket.on('data', this.#onData)
    socket.on('end', this.#onEnd)
    socket.on('close', this.#onEnd)
  }

  /**
   * Stops reading the socket (another layer, such as TLS, takes it over) and returns how many
   * bytes it had taken off it that no read asked for yet.
   */
  detach (): number {
    this.#socket.off('data', this.#onData)
    this.#socket.off('end', this.#onEnd)
    this.#socket.off('close', this.#onEnd)
    const left = this.#buffered
    this.#chunks = []
    this.#buffered = 0
    this.#ended = true
    return left
  }

  /** Exactly `n` bytes, or undefined if the connection ended first. */
  async read (n: number): Promise<Buffer | undefined> {
    while (this.#buffered < n) {
      if (this.#ended) return undefined
      this.#wanted = n
      // What is buffered is less than this read needs: read on, whatever the read-ahead bound.
      if (this.#full) { this.#full = false; this.#flow() }
      await new Promise<void>((resolve) => { this.#wake = resolve })
      this.#wake = undefined
    }
    this.#wanted = 0
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
    if (this.#full && this.#buffered < READ_AHEAD_BYTES) { this.#full = false; this.#flow() }
    return parts.length === 1 ? parts[0] as Buffer : Buffer.concat(parts, n)
  }

  /** Stops reading from the client until resume() (what is buffered can still be read). */
  pause (): void { this.#held = true; this.#flow() }
  resume (): void { this.#held = false; this.#flow() }

  #flow (): void {
    if (this.#held || this.#full) this.#socket.pause()
    else this.#socket.resume()
  }
}

/** Resolves once at most `limit` bytes wait in the socket for the client to read (or it closed). */
export async function repliesBelow (socket: Socket, limit: number): Promise<void> {
  while (socket.writableLength > limit && !socket.destroyed) {
    await new Promise<void>((resolve) => {
      const done = (): void => { socket.off('drain', done); socket.off('close', done); resolve() }
      socket.on('drain', done)
      socket.on('close', done)
    })
  }
}

/**
 * Ends a session: replies already written go out (uncorked, then end), the client's own end is
 * read so the socket closes promptly (anything it still sends is dropped: nobody reads it any
 * more, so it must not be held), and a client that never closes is cut off after a minute.
 */
export function finish (socket: Socket): void {
  if (socket.destroyed) return
  while (socket.writableCorked > 0) socket.uncork()
  socket.end()
  socket.removeAllListeners('data')
  socket.resume()
  const timer = setTimeout(() => { if (!socket.destroyed) socket.destroy() }, 60_000).unref()
  // Gone sooner (the usual case): the timer goes too, and with it what it kept alive for a minute
  // (the socket, its session and the session's spare reply buffers).
  socket.once('close', () => { clearTimeout(timer) })
}
