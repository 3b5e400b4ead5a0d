// A socket speaking frames: reads them in order (and can stop reading for backpressure), writes them
// respecting write() returning false, and reports once why it ended. Frames sent in the same tick
// go out together (small payloads copied into one buffer, large ones written from their own memory),
// tagged with their MAC once the direction is authenticated, handed to the socket at most
// BATCH_BYTES at a time so that `sentBytes` shows a slow peer taking a large frame bit by bit.

import type { Socket } from 'node:net'
import { FRAME_PREFIX, FrameAuthenticationError, FrameMac, FrameReader, FrameType, MAC_BYTES, ProtocolError, encodeFrame, writeFramePrefix, type Frame } from './frames.js'

/** Payloads up to this size are copied into the batch buffer; larger ones are written from their own memory. */
const INLINE_PAYLOAD_BYTES = 64 * 1024
/**
 * A flush stops adding frames to a batch past this many bytes, and hands a batch to the socket at
 * most this many bytes per write (the socket's buffer is full by then): a write completes only once
 * the kernel took all of it, and completed writes are what shows a slow peer making progress.
 */
const BATCH_BYTES = 256 * 1024

/** What `send()` returns for a frame it refused because the connection had ended (see FramedSocket.dropped). */
const NOT_QUEUED: object = Object.freeze({})

/** A frame waiting for the end-of-tick flush (or for 'drain'). */
interface QueuedFrame {
  readonly type: FrameType
  readonly id: number
  readonly headerJson: string
  readonly headerLength: number
  readonly payload: Uint8Array | undefined
  /** Sent after the direction became authenticated: gets a tag (and the next sequence number) when flushed. */
  readonly authenticated: boolean
  /** Bytes on the wire. */
  readonly size: number
  readonly written: (() => void) | undefined
  /** Set when the connection ended with the frame still queued: none of it was handed to the socket. */
  dropped?: true
}

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
  #writeQueue: QueuedFrame[] = []
  /** Bytes of queued frames and of the batch not yet handed to the socket. */
  #queuedBytes = 0
  /** The batch being handed to the socket: its encoded, tagged pieces, and its frames. */
  #pieces: Uint8Array[] = []
  /** Bytes of `#pieces[0]` already handed to the socket. */
  #pieceOffset = 0
  #batch: QueuedFrame[] = []
  #flushScheduled = false
  #sendMac: FrameMac | undefined
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
      // Once ended (also after finish(), which keeps the socket open a while for the GOODBYE to go
      // out), nothing more is read: a refused peer that streams on must not fill our memory.
      if (this.ended) return
      this.reader.push(chunk)
      this.#parse()
    })
    socket.on('drain', () => {
      this.#blocked = false
      this.#flush()
    })
    // A connect to a name of several addresses that all failed is an AggregateError with no message of its own.
    socket.on('error', (err) => { this.end(err.message !== '' ? err.message : (err as { errors?: Error[] }).errors?.map((e) => e.message).join(', ') ?? String((err as { code?: string }).code ?? err)) })
    socket.on('end', () => { this.end('the peer closed the connection') })
    socket.on('close', () => { this.end('the connection closed') })
  }

  get ended (): boolean { return this.endReason !== undefined }

  /**
   * Sends a frame: it is written with the other frames sent in this tick, or once the socket drained
   * if its buffer is over the high-water mark. `written` runs once the frame was handed to the
   * socket, or dropped because the connection ended. Returns a handle for `withdraw()`.
   */
  send (type: FrameType, id: number, headerJson: string, payload?: Uint8Array, written?: () => void): object | undefined {
    if (this.ended) {
      written?.()
      return NOT_QUEUED
    }
    const headerLength = Buffer.byteLength(headerJson)
    const authenticated = this.#sendMac !== undefined
    const size = FRAME_PREFIX + headerLength + (payload?.byteLength ?? 0) + (authenticated ? MAC_BYTES : 0)
    const frame: QueuedFrame = { type, id, headerJson, headerLength, payload, authenticated, size, written }
    this.#writeQueue.push(frame)
    this.#queuedBytes += size
    if (payload !== undefined && payload.byteLength > INLINE_PAYLOAD_BYTES && !this.#blocked && !this.#flushing) {
      // A large payload gains nothing from waiting for the end of the tick (it is written from its
      // own memory, in a write of its own anyway): it goes now, with whatever was queued before it,
      // instead of after the rest of the tick's work (a replication batch behind its writes' local
      // journaling).
      this.#flush()
      return frame
    }
    if (!this.#flushScheduled && !this.#blocked) {
      this.#flushScheduled = true
      process.nextTick(() => {
        this.#flushScheduled = false
        this.#flush()
      })
    }
    return frame
  }

  /**
   * Takes back a frame `send()` returned, if it is still queued (not yet handed to the socket):
   * a request its caller gave up on must not wait, with its payload, behind a full socket. Tags
   * are given when frames are flushed, so the sequence numbers stay contiguous. True if it was.
   */
  withdraw (frame: object | undefined): boolean {
    if (frame === undefined) return false
    const at = this.#writeQueue.indexOf(frame as QueuedFrame)
    if (at < 0) return false
    this.#writeQueue.splice(at, 1)
    this.#queuedBytes -= (frame as QueuedFrame).size
    ;(frame as QueuedFrame).written?.()
    return true
  }

  /**
   * True when the connection ended while the frame `send()` returned was still queued (never
   * handed to the socket, not a byte of it), or `send()` refused it because the connection had
   * ended: the peer cannot have received it. False for a frame handed to the socket, even in part.
   */
  static dropped (frame: object | undefined): boolean {
    return frame === NOT_QUEUED || (frame as QueuedFrame | undefined)?.dropped === true
  }

  /**
   * Tags every frame sent from now on with `mac` (frames already sent stay untagged): the peer
   * checks them from the same point of the handshake.
   */
  authenticateSending (mac: FrameMac): void {
    this.#sendMac = mac
  }

  /** Requires a valid tag (under `mac`) on every frame received from now on. */
  authenticateReceiving (mac: FrameMac): void {
    this.reader.mac = mac
  }

  /** Bytes of frames waiting in this object's queue (not yet handed to the socket). */
  get queuedBytes (): number {
    return this.#queuedBytes
  }

  /**
   * Bytes the socket has finished writing, that is handed to the kernel. It grows while the peer
   * takes what we send (its kernel acknowledging, its process reading once the buffers are full),
   * even when the peer has nothing to say: progress on the outgoing side.
   */
  get sentBytes (): number {
    return this.socket.bytesWritten - this.socket.writableLength
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
    // Straight to the socket, past a queue waiting for 'drain' that end() would cut off; but after
    // the rest of a batch partly handed to it, so the peer reads whole frames. The queued frames
    // were never tagged, so the GOODBYE takes the next sequence number.
    this.socket.cork()
    if (this.#pieces.length > 0) {
      this.socket.write((this.#pieces[0] as Uint8Array).subarray(this.#pieceOffset))
      for (let i = 1; i < this.#pieces.length; i++) this.socket.write(this.#pieces[i] as Uint8Array)
    }
    this.socket.write(encodeFrame(type, 0, headerJson, undefined, this.#sendMac))
    this.socket.uncork()
    this.endReason = reason
    this.#dropQueue()
    this.socket.pause()
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
    this.#dropQueue()
    this.#onEnd(reason)
  }

  #dropQueue (): void {
    // A batch is being handed to the socket (maybe in part); the queue behind it never was.
    for (const frame of this.#writeQueue) frame.dropped = true
    const dropped = [...this.#batch, ...this.#writeQueue]
    this.#writeQueue = []
    this.#batch = []
    this.#pieces = []
    this.#pieceOffset = 0
    this.#queuedBytes = 0
    for (const frame of dropped) frame.written?.()
  }

  /** Hands queued frames to the socket in batches until it is full or the queue is empty. */
  #flush (): void {
    if (this.#flushing) return
    this.#flushing = true
    try {
      this.#flushLoop()
    } finally {
      this.#flushing = false
    }
  }

  #flushing = false

  #flushLoop (): void {
    while (!this.#blocked && !this.ended) {
      if (this.#pieces.length === 0) {
        if (this.#writeQueue.length === 0) return
        this.#encodeBatch()
      }
      // Up to BATCH_BYTES of the batch, slicing a large payload.
      const chunks: Uint8Array[] = []
      let bytes = 0
      while (this.#pieces.length > 0 && bytes < BATCH_BYTES) {
        const piece = this.#pieces[0] as Uint8Array
        const take = Math.min(piece.byteLength - this.#pieceOffset, BATCH_BYTES - bytes)
        chunks.push(this.#pieceOffset === 0 && take === piece.byteLength ? piece : piece.subarray(this.#pieceOffset, this.#pieceOffset + take))
        bytes += take
        this.#pieceOffset += take
        if (this.#pieceOffset === piece.byteLength) {
          this.#pieces.shift()
          this.#pieceOffset = 0
        }
      }
      this.#queuedBytes -= bytes
      let accepted = true
      if (chunks.length === 1) {
        accepted = this.socket.write(chunks[0] as Uint8Array)
      } else {
        this.socket.cork()
        for (const chunk of chunks) accepted = this.socket.write(chunk)
        this.socket.uncork()
      }
      if (!accepted) this.#blocked = true
      if (this.#pieces.length === 0) {
        // The whole batch is in the socket; written() may send more (queued for the next flush).
        const done = this.#batch
        this.#batch = []
        for (const frame of done) frame.written?.()
      }
    }
  }

  /** Takes the next batch of frames off the queue into `#pieces`, encoded and tagged. */
  #encodeBatch (): void {
    const queue = this.#writeQueue
    let count = 0
    let batchBytes = 0
    let inlineBytes = 0
    for (const frame of queue) {
      if (count > 0 && batchBytes + frame.size > BATCH_BYTES) break
      count++
      batchBytes += frame.size
      inlineBytes += frame.payload !== undefined && frame.payload.byteLength > INLINE_PAYLOAD_BYTES ? frame.size - frame.payload.byteLength : frame.size
    }
    const batch = queue.splice(0, count)
    const buffer = Buffer.allocUnsafe(inlineBytes)
    const pieces: Uint8Array[] = []
    let pieceStart = 0
    let offset = 0
    for (const frame of batch) {
      const payload = frame.payload
      const payloadLength = payload?.byteLength ?? 0
      const frameStart = offset
      offset = writeFramePrefix(buffer, offset, frame.type, frame.id, frame.headerJson, frame.headerLength, payloadLength + (frame.authenticated ? MAC_BYTES : 0))
      let detached: Uint8Array | undefined
      if (payload !== undefined && payloadLength > INLINE_PAYLOAD_BYTES) {
        // Written from the caller's memory; the tag follows it in the next piece.
        detached = payload
        pieces.push(buffer.subarray(pieceStart, offset), payload)
        pieceStart = offset
      } else if (payload !== undefined) {
        buffer.set(payload, offset)
        offset += payloadLength
      }
      if (frame.authenticated) {
        // Encoded in send order, so tags take sequence numbers in the order the peer reads frames.
        ;(this.#sendMac as FrameMac).sign(buffer, frameStart, offset, detached)
        offset += MAC_BYTES
      }
    }
    if (pieceStart < offset) pieces.push(buffer.subarray(pieceStart, offset))
    this.#pieces = pieces
    this.#pieceOffset = 0
    this.#batch = batch
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
      if (err instanceof FrameAuthenticationError) {
        // The peer may be honest and the path hostile: say why (BACKEND_UNAVAILABLE, as for any cut
        // connection), in a frame the peer can check, and act on nothing more from this stream.
        const reason = `frame authentication failed: ${err.message}`
        this.finish(FrameType.Goodbye, JSON.stringify({ code: 'BACKEND_UNAVAILABLE', message: `the peer closed the connection because ${reason}` }), reason)
      } else if (err instanceof ProtocolError) {
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
