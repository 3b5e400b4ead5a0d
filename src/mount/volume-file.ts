// A volume (or a snapshot) as a file: a position, read/write/seek, positional pread/pwrite, async
// iteration and Node streams. A volume is a block device, not a growing file: writes past its end
// are refused (OUT_OF_RANGE), reads past it return nothing.

import { Readable, Writable } from 'node:stream'
import { GalleonError, assertBytes, copyBytes, describe } from '../errors.js'
import { WriteConcern } from '../types.js'

/** What a VolumeFile needs from the instance (bound to the caller that opened it). */
export interface VolumeFileIo {
  read: (offset: number, length: number, into?: Uint8Array) => Promise<Uint8Array>
  write: (offset: number, data: Uint8Array, concern: WriteConcern) => Promise<void>
  flush: () => Promise<void>
  /** Current size in bytes (a volume can grow while open). */
  size: () => number
}

/** Largest piece one read or write call moves (longer requests are split at its multiples). */
const PIECE_BYTES = 8 * 1024 * 1024
/** Chunk size of async iteration and of read streams by default. */
const CHUNK_BYTES = 1024 * 1024

// A Map, not an object literal: a whence such as 'constructor' must not find Object.prototype's members.
const WHENCE = new Map<unknown, 'set' | 'cur' | 'end'>([['set', 'set'], ['cur', 'cur'], ['end', 'end'], [0, 'set'], [1, 'cur'], [2, 'end']])

/** An open file over a volume or a snapshot. */
export class VolumeFile implements AsyncIterable<Uint8Array> {
  /** The volume's id, and the snapshot's when the file shows one. */
  readonly volumeId: string
  readonly snapshotId: string | undefined
  readonly readOnly: boolean
  /** Every write is WriteDurable (the `sync` mount option). */
  readonly sync: boolean
  #position = 0
  #closed = false
  /** Set by close(): what is in flight finishes, nothing new starts. */
  #closing: Promise<void> | undefined
  /** Reads and writes in flight (close waits for them). */
  readonly #inflight = new Set<Promise<unknown>>()
  readonly #io: VolumeFileIo
  readonly #onClose: () => void

  constructor (io: VolumeFileIo, facts: { volumeId: string, snapshotId?: string, readOnly: boolean, sync: boolean }, onClose: () => void = () => {}) {
    this.#io = io
    this.volumeId = facts.volumeId
    this.snapshotId = facts.snapshotId
    this.readOnly = facts.readOnly
    this.sync = facts.sync
    this.#onClose = onClose
  }

  /** Size of the volume (or snapshot) in bytes. */
  get size (): number { return this.#io.size() }

  /** Current position. */
  get position (): number { return this.#position }

  get closed (): boolean { return this.#closed }

  /**
   * Reads up to `length` bytes (default: the buffer's length) at the position into `buffer`
   * (from `bufferOffset`), advancing the position. Resolves to the bytes read: 0 at the end.
   */
  async read (buffer: Uint8Array, length?: number, bufferOffset = 0): Promise<number> {
    // Node's FileHandle.read(buffer, offset, length, position) takes the buffer offset second: such a
    // call here would read `offset` bytes (0: nothing, which looks like the end of the volume).
    if (arguments.length > 3) throw new GalleonError('INVALID_ARGUMENT', 'VolumeFile.read takes (buffer, length?, bufferOffset?), not Node\'s (buffer, offset, length, position); use pread(buffer, position, length, bufferOffset) to read at a position')
    // The position moves before the read starts, so concurrent reads get consecutive ranges.
    const at = this.#position
    const wanted = length ?? (buffer instanceof Uint8Array ? buffer.byteLength - bufferOffset : 0)
    const moved = Math.max(0, Math.min(typeof wanted === 'number' && wanted > 0 ? wanted : 0, this.size - at))
    this.#position += moved
    try {
      return await this.pread(buffer, at, length, bufferOffset)
    } catch (err) {
      if (this.#position === at + moved) this.#position = at
      throw err
    }
  }

  /** Reads up to `length` bytes at `position` into `buffer`, without moving the position. */
  async pread (buffer: Uint8Array, position: number, length?: number, bufferOffset = 0): Promise<number> {
    if (arguments.length > 4) throw new GalleonError('INVALID_ARGUMENT', 'VolumeFile.pread takes (buffer, position, length?, bufferOffset?)')
    this.#assertOpen()
    return await this.#track(this.#pread(buffer, position, length, bufferOffset))
  }

  async #pread (buffer: Uint8Array, position: number, length: number | undefined, bufferOffset: number): Promise<number> {
    assertBytes(buffer, 'buffer')
    checkPosition(position, 'position')
    checkPosition(bufferOffset, 'bufferOffset')
    if (bufferOffset > buffer.byteLength) throw new GalleonError('INVALID_ARGUMENT', `bufferOffset ${bufferOffset} is past the end of the ${buffer.byteLength}-byte buffer`)
    const wanted = length ?? buffer.byteLength - bufferOffset
    checkPosition(wanted, 'length')
    if (bufferOffset + wanted > buffer.byteLength) throw new GalleonError('INVALID_ARGUMENT', `a read of ${wanted} bytes at buffer offset ${bufferOffset} does not fit the ${buffer.byteLength}-byte buffer`)
    const n = Math.max(0, Math.min(wanted, this.size - position))
    for (let done = 0; done < n;) {
      const piece = pieceAt(position + done, n - done)
      buffer.set(await this.#io.read(position + done, piece), bufferOffset + done)
      done += piece
    }
    return n
  }

  /** Writes `data` at the position, advancing it. Resolves to the bytes written (all of them). */
  async write (data: Uint8Array): Promise<number> {
    // The position moves before the write starts, so concurrent writes land one after the other;
    // a write that fails leaves it where it was if nothing else moved it meanwhile.
    const at = this.#position
    const length = data instanceof Uint8Array ? data.byteLength : 0
    if (at + length <= this.size) this.#position = at + length
    try {
      return await this.pwrite(data, at)
    } catch (err) {
      if (this.#position === at + length) this.#position = at
      throw err
    }
  }

  /** Writes `data` at `position`, without moving the position; refused past the end of the volume. */
  async pwrite (data: Uint8Array, position: number): Promise<number> {
    this.#assertOpen()
    return await this.#track(this.#pwrite(data, position))
  }

  async #pwrite (data: Uint8Array, position: number): Promise<number> {
    if (this.readOnly) throw this.#readOnlyError()
    assertBytes(data, 'data')
    checkPosition(position, 'position')
    if (position + data.byteLength > this.size) {
      throw new GalleonError('OUT_OF_RANGE', `a write of ${data.byteLength} bytes at ${position} goes past the end of the volume (${this.size} bytes); a volume does not grow by writing: expand it first`)
    }
    const concern = this.sync ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged
    // The caller may reuse its buffer once this call has returned: the pieces after the first are
    // written after an await, from a copy.
    if (data.byteLength > pieceAt(position, data.byteLength)) data = copyBytes(data)
    for (let done = 0; done < data.byteLength;) {
      const piece = pieceAt(position + done, data.byteLength - done)
      await this.#io.write(position + done, data.subarray(done, done + piece), concern)
      done += piece
    }
    return data.byteLength
  }

  /** Moves the position: `whence` is `set` (0, default), `cur` (1) or `end` (2). Returns the new position. */
  seek (offset: number, whence: 'set' | 'cur' | 'end' | 0 | 1 | 2 = 'set'): number {
    this.#assertOpen()
    const from = WHENCE.get(whence)
    if (from === undefined) throw new GalleonError('INVALID_ARGUMENT', `whence must be 'set', 'cur' or 'end' (or 0, 1, 2), got ${describe(whence)}`)
    if (typeof offset !== 'number' || !Number.isSafeInteger(offset)) throw new GalleonError('INVALID_ARGUMENT', `offset must be an integer, got ${describe(offset)}`)
    const base = from === 'set' ? 0 : from === 'cur' ? this.#position : this.size
    const next = base + offset
    if (next < 0) throw new GalleonError('INVALID_ARGUMENT', `seeking to ${next} would go before the start of the file`)
    // Every later read and write checks its position as a safe integer: refuse one here rather than there.
    if (!Number.isSafeInteger(next)) throw new GalleonError('INVALID_ARGUMENT', `seeking to ${base} + ${offset} goes past the largest position (${Number.MAX_SAFE_INTEGER})`)
    this.#position = next
    return next
  }

  /** Makes every write so far durable. */
  async flush (): Promise<void> {
    this.#assertOpen()
    if (!this.readOnly) await this.#io.flush()
  }

  /** Flushes (when writable) and closes; later calls reject with NOT_OPEN. Idempotent. */
  async close (): Promise<void> {
    if (this.#closed) return
    this.#closing ??= (async () => {
      // Reads and writes already started finish first (a large pwrite goes on in pieces), so the
      // flush covers them and the mount (or the writer's place) is released only after them.
      while (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight])
      try {
        // A volume deleted under the file (deleteVolume with force) has nothing left to flush to:
        // its writes went with it, as the deletion said, and the file closes like any other.
        if (!this.readOnly) await this.#io.flush().catch((err: unknown) => { if ((err as { code?: string }).code !== 'VOLUME_NOT_FOUND') throw err })
      } finally {
        this.#closed = true
        this.#onClose()
      }
    })()
    await this.#closing
  }

  #track<T> (operation: Promise<T>): Promise<T> {
    this.#inflight.add(operation)
    void operation.finally(() => this.#inflight.delete(operation)).catch(() => {})
    return operation
  }

  /** The bytes from the position to the end, in chunks of up to 1 MiB (the position follows). */
  async * [Symbol.asyncIterator] (): AsyncIterator<Uint8Array> {
    while (true) {
      const chunk = new Uint8Array(Math.min(CHUNK_BYTES, Math.max(0, this.size - this.#position)))
      if (chunk.byteLength === 0) return
      const n = await this.read(chunk)
      if (n === 0) return
      yield n === chunk.byteLength ? chunk : chunk.subarray(0, n)
    }
  }

  /** A Readable of bytes `start` to `end` (inclusive, like fs.createReadStream; default: all). */
  createReadStream (options: { start?: number, end?: number, highWaterMark?: number } = {}): Readable {
    this.#assertOpen()
    // An option this stream does not have (encoding, fd, ...) is refused, not silently ignored.
    checkOptions(options, 'createReadStream()', ['start', 'end', 'highWaterMark'])
    const start = options.start ?? 0
    checkPosition(start, 'start')
    if (options.end !== undefined) {
      checkPosition(options.end, 'end')
      if (options.end < start) throw new GalleonError('INVALID_ARGUMENT', `end (${options.end}) is before start (${start}); end is the last byte read (inclusive), as in fs.createReadStream`)
    }
    const chunkBytes = options.highWaterMark ?? CHUNK_BYTES
    checkPosition(chunkBytes, 'highWaterMark')
    if (chunkBytes === 0) throw new GalleonError('INVALID_ARGUMENT', 'highWaterMark must be positive')
    let at = start
    const file = this
    return new Readable({
      highWaterMark: chunkBytes,
      async read () {
        try {
          const stop = Math.min(file.size, options.end === undefined ? Number.POSITIVE_INFINITY : options.end + 1)
          const length = Math.min(chunkBytes, stop - at)
          if (length <= 0) { this.push(null); return }
          const chunk = new Uint8Array(length)
          const n = await file.pread(chunk, at)
          at += n
          this.push(n === 0 ? null : Buffer.from(chunk.buffer, chunk.byteOffset, n))
        } catch (err) {
          this.destroy(err as Error)
        }
      }
    })
  }

  /** A Writable that writes what it is given from `start` on (default: the position, which it does not move); refused past the end, and on a read-only file. */
  createWriteStream (options: { start?: number } = {}): Writable {
    this.#assertOpen()
    checkOptions(options, 'createWriteStream()', ['start'])
    // Refused now rather than at the first chunk, when the source may already be half consumed.
    if (this.readOnly) throw this.#readOnlyError()
    let at = options.start ?? this.#position
    checkPosition(at, 'start')
    const file = this
    return new Writable({
      async write (chunk: Buffer, _encoding, callback) {
        try {
          at += await file.pwrite(chunk, at)
          callback()
        } catch (err) {
          callback(err as Error)
        }
      },
      async final (callback) {
        try {
          await file.flush()
          callback()
        } catch (err) {
          callback(err as Error)
        }
      }
    })
  }

  #readOnlyError (): GalleonError {
    return new GalleonError('READ_ONLY', this.snapshotId !== undefined ? 'this file shows a snapshot, which is read-only; clone the snapshot (cloneVolume) to get a writable copy' : 'this file was opened read-only, or on a read-only mount; for writes open one with openVolumeFile() without { readOnly: true }, straight on the volume or on a read-write mount')
  }

  #assertOpen (): void {
    if (this.#closed || this.#closing !== undefined) throw new GalleonError('NOT_OPEN', 'this volume file is closed; open another with openVolumeFile()')
  }
}

/**
 * Length of the piece of a read or write that starts at `offset`, with `left` bytes to go. What
 * fits in one piece goes in one call (a write atomic as a whole); a longer request is cut at
 * multiples of PIECE_BYTES, which every block size divides, so each block is still moved whole by
 * one call: a write racing another that overlaps it leaves every block as one of them wrote it,
 * never half of each (a cut inside a block would split it).
 */
function pieceAt (offset: number, left: number): number {
  return left <= PIECE_BYTES ? left : PIECE_BYTES - (offset % PIECE_BYTES)
}

/** INVALID_ARGUMENT unless `options` is an object whose keys are all in `known`. */
function checkOptions (options: unknown, call: string, known: readonly string[]): void {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new GalleonError('INVALID_ARGUMENT', `${call} options must be an object such as { ${known[0] ?? 'start'}: 0 }, got ${describe(options)}`)
  }
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) throw new GalleonError('INVALID_ARGUMENT', `${call} does not take the option ${JSON.stringify(key)}; it takes ${known.join(', ')}`)
  }
}

function checkPosition (value: unknown, what: string): asserts value is number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new GalleonError('INVALID_ARGUMENT', `${what} must be a non-negative integer, got ${describe(value)}`)
  }
}
