// A socket speaking frames: reads them in order (and can stop reading for backpressure), writes them
// respecting write() returning false, and reports once why it ended.

import type { Socket } from 'node:net'
import { FrameReader, FrameType, ProtocolError, encodeFrame, type Frame } from './frames.js'

/**
 * Wraps a connected socket (plain or TLS). `onFrame` gets each frame; a frame that breaks the
 * protocol, or a thrown `onFrame`, ends the connection. `onEnd` runs once with the reason.
 */
export class FramedSocket {
  readonly socket: Socket
  readonly reader: FrameReader
  /** Why the connection ended (set once it has). */
  endReason: string | undefined
  readonly closed: Promise<void>
  #onFrame: (frame: Frame) => void
  #onEnd: (reason: string) => void
  #writeQueue: Array<{ frame: Buffer, written?: () => void }> = []
  #blocked = false
  #holds = 0
  #parsing = false

  constructor (socket: Socket, maxFrame: number, onFrame: (frame: Frame) => void, onEnd: (reason: string) => void) {
    this.socket = socket
    this.reader = new FrameReader(maxFrame)
    this.#onFrame = onFrame
    this.#onEnd = onEnd
    this.closed = new Promise((resolve) => { socket.once('close', () => { resolve() }) })
    socket.setNoDelay(true)
    socket.on('data', (chunk: Buffer) => {
      this.reader.push(chunk)
      this.#parse()
    })
    socket.on('drain', () => { this.#flush() })
    socket.on('error', (err) => { this.end(err.message) })
    socket.on('end', () => { this.end('the peer closed the connection') })
    socket.on('close', () => { this.end('the connection closed') })
  }

  get ended (): boolean { return this.endReason !== undefined }

  /**
   * Sends a frame. Frames queue (in order) while the socket's buffer is over its high-water mark;
   * `written` runs once the frame was handed to the socket.
   */
  send (type: FrameType, id: number, headerJson: string, payload?: Uint8Array, written?: () => void): void {
    if (this.ended) return
    const frame = encodeFrame(type, id, headerJson, payload)
    if (this.#blocked) {
      this.#writeQueue.push({ frame, written })
      return
    }
    this.#write(frame, written)
  }

  /** Bytes waiting in this object's queue (not yet handed to the socket). */
  get queuedBytes (): number {
    let bytes = 0
    for (const entry of this.#writeQueue) bytes += entry.frame.byteLength
    return bytes
  }

  /** Stops reading frames (and, through TCP flow control, the peer's writes) until `release()`. */
  hold (): void {
    if (this.#holds++ === 0) this.socket.pause()
  }

  release (): void {
    if (--this.#holds > 0) return
    this.socket.resume()
    this.#parse()
  }

  /** Sends last words (a GOODBYE frame) and closes once they are flushed; frames still queued are dropped. */
  finish (type: FrameType, headerJson: string, reason: string): void {
    if (this.ended) return
    // Straight to the socket, past a queue waiting for 'drain' that end() would cut off.
    this.socket.write(encodeFrame(type, 0, headerJson))
    this.#writeQueue = []
    this.endReason = reason
    this.socket.end()
    // A peer that never reads would keep the socket half-open: do not wait for it long.
    setTimeout(() => { this.socket.destroy() }, 1000).unref()
    this.#onEnd(reason)
  }

  /** Ends the connection now (idempotent); `onEnd` runs with the first reason. */
  end (reason: string): void {
    if (!this.socket.destroyed) this.socket.destroy()
    if (this.ended) return
    this.endReason = reason
    this.#writeQueue = []
    this.#onEnd(reason)
  }

  #write (frame: Buffer, written?: () => void): void {
    if (!this.socket.write(frame)) this.#blocked = true
    written?.()
  }

  #flush (): void {
    this.#blocked = false
    while (!this.#blocked && this.#writeQueue.length > 0) {
      const entry = this.#writeQueue.shift() as { frame: Buffer, written?: () => void }
      this.#write(entry.frame, entry.written)
    }
  }

  #parse (): void {
    if (this.#parsing) return // re-entered from onFrame (e.g. through release()); the loop below continues
    this.#parsing = true
    try {
      while (this.#holds === 0 && !this.ended) {
        const frame = this.reader.next()
        if (frame === undefined) break
        this.#onFrame(frame)
      }
    } catch (err) {
      if (err instanceof ProtocolError) {
        // Tell the peer why before hanging up, so its requests fail with the reason rather than a bare reset.
        const reason = `protocol error: ${err.message}`
        this.finish(FrameType.Goodbye, JSON.stringify({ code: 'IO_ERROR', message: `the peer closed the connection after a ${reason}` }), reason)
      } else {
        this.end(`failed to handle a frame: ${err instanceof Error ? err.message : String(err)}`)
      }
    } finally {
      this.#parsing = false
    }
  }
}
