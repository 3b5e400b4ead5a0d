// The transmission phase: requests read in order, run concurrently and answered as they finish, in
// simple or structured replies; the commands (read, write, flush, trim, write zeroes, block status).

import type { Socket } from 'node:net'
import type { GalleonFS } from '../../src/galleonfs.js'
import { WriteConcern } from '../../src/types.js'
import { BASE_ALLOCATION_ID, CMD_BLOCK_STATUS, CMD_DISC, CMD_FLAG_DF, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_REQ_ONE, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES, EINVAL, EIO, ENOSPC, EPERM, ESHUTDOWN, MAX_HELD_BYTES, MAX_IN_FLIGHT, MAX_REQUEST_BYTES, MAX_STATUS_BYTES, ProtocolError, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR, REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STATE_HOLE, STATE_ZERO, STRUCTURED_REPLY_MAGIC, type Export } from './protocol.js'
import type { SocketReader } from './socket.js'

/** The transmission phase: requests read in order, served concurrently, answered as they finish. */
export async function transmit (g: GalleonFS, stoppers: Map<Socket, () => Promise<void>>, socket: Socket, reader: SocketReader, exp: Export, structured: boolean, allocation: boolean): Promise<void> {
  let inFlight = 0
  // Bytes the requests in flight hold (write payloads, read results): with the replies still
  // waiting in the socket for a client that reads slowly (or not at all), they are what one
  // connection costs in memory, and no new request is taken while they exceed MAX_HELD_BYTES.
  let heldBytes = 0
  const room = (): boolean => inFlight < MAX_IN_FLIGHT && heldBytes + socket.writableLength < MAX_HELD_BYTES
  const drained: Array<() => void> = []
  let slot: (() => void) | undefined
  let stopping = false
  const done = (): void => {
    inFlight--
    if (!stopping) slot?.()
    if (inFlight === 0) for (const wake of drained.splice(0)) wake()
  }
  // The client took replies off the socket (or went away): maybe there is room again.
  const wake = (): void => { slot?.() }
  socket.on('drain', wake)
  socket.on('close', wake)
  const idle = async (): Promise<void> => { if (inFlight > 0) await new Promise<void>((resolve) => { drained.push(resolve) }) }
  stoppers.set(socket, async () => {
    stopping = true
    reader.pause()
    slot?.()
    await idle()
  })
  // Replies finished in the same turn of the event loop go out in one writev (cork), and a
  // reply's header and data are written as they are, without copying them together.
  let corked = false
  // `sent`: called once the socket is done with the buffers (written to the kernel, or dropped).
  const send = (buffers: Buffer[], sent?: () => void): void => {
    if (socket.destroyed) { sent?.(); return }
    if (!corked) {
      corked = true
      socket.cork()
      setImmediate(() => { corked = false; socket.uncork() })
    }
    let last = buffers.length - 1
    while (last >= 0 && (buffers[last] as Buffer).byteLength === 0) last--
    for (let i = 0; i <= last; i++) {
      const buffer = buffers[i] as Buffer
      if (buffer.byteLength > 0) socket.write(buffer, i === last ? sent : undefined)
    }
    if (last < 0) sent?.()
  }
  // Buffers that read replies were read into, kept for the next reads once the socket is done
  // with them (see ReplyBuffers).
  const replies = new ReplyBuffers()
  const simple = (handle: Buffer, error: number, data?: Uint8Array, sent?: () => void): void => {
    const head = Buffer.alloc(16)
    head.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0)
    head.writeUInt32BE(error, 4)
    handle.copy(head, 8)
    send(data === undefined ? [head] : [head, Buffer.from(data.buffer, data.byteOffset, data.byteLength)], sent)
  }
  const chunk = (handle: Buffer, type: number, flags: number, payload: Buffer[], sent?: () => void): void => {
    const length = payload.reduce((sum, b) => sum + b.byteLength, 0)
    const head = Buffer.alloc(20)
    head.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0)
    head.writeUInt16BE(flags, 4)
    head.writeUInt16BE(type, 6)
    handle.copy(head, 8)
    head.writeUInt32BE(length, 16)
    send([head, ...payload], sent)
  }
  const fail = (handle: Buffer, errno: number, message: string): void => {
    if (!structured) { simple(handle, errno); return }
    const text = Buffer.from(message.slice(0, 1024))
    const body = Buffer.alloc(6)
    body.writeUInt32BE(errno, 0)
    body.writeUInt16BE(text.byteLength, 4)
    chunk(handle, REPLY_TYPE_ERROR, REPLY_FLAG_DONE, [body, text])
  }

  // A frame the protocol does not allow ends the session, once the requests before it are answered.
  let violation: ProtocolError | undefined
  while (!stopping) {
    // At most MAX_IN_FLIGHT requests and MAX_HELD_BYTES at once, also when more are already
    // buffered; meanwhile nothing more is read from the client (TCP holds it back).
    if (!room()) {
      reader.pause()
      while (!room() && !stopping && !socket.destroyed) await new Promise<void>((resolve) => { slot = resolve })
      if (!stopping) reader.resume()
    }
    if (stopping) break
    const header = await reader.read(28)
    if (header === undefined || stopping) break
    if (header.readUInt32BE(0) !== REQUEST_MAGIC) { violation = new ProtocolError('bad request magic'); break }
    const flags = header.readUInt16BE(4)
    const type = header.readUInt16BE(6)
    const handle = Buffer.from(header.subarray(8, 16))
    const offset = Number(header.readBigUInt64BE(16))
    const length = header.readUInt32BE(24)
    if (type === CMD_DISC) break
    let payload: Buffer | undefined
    if (type === CMD_WRITE) {
      if (length > MAX_REQUEST_BYTES) { violation = new ProtocolError('write too long'); break }
      payload = await reader.read(length)
      if (payload === undefined) break
    }
    if ((flags & ~allowedFlags(type, g.durable)) !== 0) {
      fail(handle, EINVAL, `command flags 0x${flags.toString(16)} do not apply to command ${type}`)
      continue
    }
    inFlight++
    if (type === CMD_BLOCK_STATUS) {
      void blockStatus(g, exp, allocation && structured, flags, offset, length).then((result) => {
        if (result.error !== 0) { fail(handle, result.error, result.message ?? ''); return }
        chunk(handle, REPLY_TYPE_BLOCK_STATUS, REPLY_FLAG_DONE, [result.body as Buffer])
      }).finally(done)
      continue
    }
    // A read's result counts once it exists (a refused read holds nothing, but is short-lived).
    const held = type === CMD_READ ? Math.min(length, MAX_REQUEST_BYTES) : payload?.byteLength ?? 0
    heldBytes += held
    const into = type === CMD_READ ? replies.take(length) : undefined
    const release = into === undefined ? undefined : () => { replies.give(into) }
    void runRequest(g, exp, type, flags, offset, length, payload, into).then((result) => {
      if (result.error !== 0) { release?.(); fail(handle, result.error, result.message ?? ''); return }
      if (type !== CMD_READ) {
        if (structured) chunk(handle, REPLY_TYPE_NONE, REPLY_FLAG_DONE, [])
        else simple(handle, 0)
        return
      }
      const data = result.data as Uint8Array
      if (!structured) { simple(handle, 0, data, release); return }
      // A structured chunk covers at least one byte: an empty read is answered with NONE.
      if (data.byteLength === 0) { release?.(); chunk(handle, REPLY_TYPE_NONE, REPLY_FLAG_DONE, []); return }
      const where = Buffer.alloc(8)
      where.writeBigUInt64BE(BigInt(offset), 0)
      chunk(handle, REPLY_TYPE_OFFSET_DATA, REPLY_FLAG_DONE, [where, Buffer.from(data.buffer, data.byteOffset, data.byteLength)], release)
    }).finally(() => { heldBytes -= held; done() })
  }
  // Let requests in flight finish (and flush what they wrote); the caller then ends the session
  // and lets its claims go (the writer's place of a ReadWriteOnce volume) only after that.
  await idle()
  if (!exp.readOnly) await g.flush(exp.volumeId).catch(() => {})
  if (violation !== undefined) throw violation
}

/**
 * The command flags a command takes (proto.md: FUA is valid on every command, DF on READ, NO_HOLE
 * on WRITE_ZEROES, REQ_ONE on BLOCK_STATUS); any other flag is answered EINVAL. FAST_ZERO (bit 4)
 * is not advertised, so it is refused too.
 */
function allowedFlags (type: number, durable: boolean): number {
  // FUA only where it was offered (a store that can make writes durable; see transmissionFlags).
  const fua = durable ? CMD_FLAG_FUA : 0
  switch (type) {
    case CMD_READ: return fua | CMD_FLAG_DF
    case CMD_WRITE_ZEROES: return fua | CMD_FLAG_NO_HOLE
    case CMD_BLOCK_STATUS: return fua | CMD_FLAG_REQ_ONE
    default: return fua
  }
}

/** The size of the zero-filled writes of a WRITE_ZEROES with NO_HOLE. */
const ZEROES_PIECE_BYTES = 1 << 20

/** Reads of at least this many bytes go into reused buffers (smaller ones are cheap to allocate). */
const REUSED_MIN_BYTES = 64 * 1024
/** Bytes of reply buffers a session keeps for reuse, at most. */
const REUSED_MAX_BYTES = 8 * 1024 * 1024

/**
 * A session's spare reply buffers, by size. A fresh buffer of a large read (1 MiB, say) is mapped
 * and zeroed page by page by the kernel, and unmapped once collected: on the 2-vCPU development VM
 * that was a good part of the cost of large reads. A buffer comes back once the socket is done
 * with the reply it held (see send's `sent`), so a reply is never overwritten while it goes out.
 */
class ReplyBuffers {
  readonly #spare = new Map<number, Uint8Array[]>()
  #bytes = 0

  /** A buffer for a read of `length` bytes, or undefined where a new one is as good. */
  take (length: number): Uint8Array | undefined {
    if (length < REUSED_MIN_BYTES || length > REUSED_MAX_BYTES) return undefined
    const buffer = this.#spare.get(length)?.pop()
    if (buffer === undefined) return new Uint8Array(length)
    this.#bytes -= length
    return buffer
  }

  /** Keeps `buffer` for a later read, within REUSED_MAX_BYTES (other sizes give way). */
  give (buffer: Uint8Array): void {
    const length = buffer.byteLength
    for (const [size, list] of this.#spare) {
      if (this.#bytes + length <= REUSED_MAX_BYTES) break
      if (size === length) continue
      this.#bytes -= size * list.length
      this.#spare.delete(size)
    }
    if (this.#bytes + length > REUSED_MAX_BYTES) return
    let list = this.#spare.get(length)
    if (list === undefined) this.#spare.set(length, list = [])
    list.push(buffer)
    this.#bytes += length
  }
}

/** Runs one request; resolves to its outcome (never rejects). */
async function runRequest (g: GalleonFS, exp: Export, type: number, flags: number, offset: number, length: number, payload: Buffer | undefined, into?: Uint8Array): Promise<{ error: number, message?: string, data?: Uint8Array }> {
  const writing = type === CMD_WRITE || type === CMD_TRIM || type === CMD_WRITE_ZEROES
  if (writing && exp.readOnly) return { error: EPERM, message: `export ${exp.name} is read-only` }
  if (type === CMD_READ || writing) {
    // Past the end: ENOSPC for what writes data, EINVAL for reads and trims (proto.md).
    if (offset + length > exp.size || !Number.isSafeInteger(offset + length)) return { error: type === CMD_WRITE || type === CMD_WRITE_ZEROES ? ENOSPC : EINVAL, message: `offset ${offset} + length ${length} is past the end of the export (${exp.size} bytes)` }
    if (type === CMD_READ && length > MAX_REQUEST_BYTES) return { error: EINVAL, message: `a read may be at most ${MAX_REQUEST_BYTES} bytes` }
  }
  const fua = (flags & CMD_FLAG_FUA) !== 0
  try {
    switch (type) {
      case CMD_READ:
        return { error: 0, data: length === 0 ? new Uint8Array(0) : await g.read(exp.source, offset, length, into) }
      case CMD_WRITE:
        if (length > 0) await g.write(exp.volumeId, offset, payload as Buffer, fua ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged)
        return { error: 0 }
      case CMD_FLUSH:
        // Nothing to make durable on a read-only export (and its client may not be allowed writes).
        if (!exp.readOnly) await g.flush(exp.volumeId)
        return { error: 0 }
      case CMD_TRIM:
        await trim(g, exp, offset, length)
        if (fua) await g.flush(exp.volumeId)
        return { error: 0 }
      case CMD_WRITE_ZEROES:
        if ((flags & CMD_FLAG_NO_HOLE) !== 0) {
          // The zeros must be allocated: write them, 1 MiB at a time, so that the buffers of many
          // such requests in flight stay small (they are not counted in MAX_HELD_BYTES).
          for (let at = 0; at < length; at += ZEROES_PIECE_BYTES) {
            const piece = Math.min(ZEROES_PIECE_BYTES, length - at)
            await g.write(exp.volumeId, offset + at, new Uint8Array(piece), fua ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged)
          }
        } else {
          await trim(g, exp, offset, length)
          if (fua) await g.flush(exp.volumeId)
        }
        return { error: 0 }
      default:
        return { error: EINVAL, message: `command ${type} is not supported` }
    }
  } catch (err) {
    const code = (err as { code?: string }).code
    const errno = code === 'READ_ONLY' || code === 'PERMISSION_DENIED' ? EPERM : code === 'OUT_OF_RANGE' ? ENOSPC : code === 'NO_SPACE' ? ENOSPC : code === 'INVALID_ARGUMENT' ? EINVAL : code === 'NOT_OPEN' ? ESHUTDOWN : EIO
    return { error: errno, message: errorMessage(exp, err) }
  }
}

/**
 * What a failed request's error chunk says. The export was found when the client connected (and
 * is asked for by id since): a volume or snapshot not found now was deleted under the session,
 * which only a forced deletion does. Said so, by the name the client used, not by the id.
 */
function errorMessage (exp: Export, err: unknown): string {
  const code = (err as { code?: string }).code
  const said = (err as Error)?.message ?? String(err)
  if (code !== 'VOLUME_NOT_FOUND' && code !== 'SNAPSHOT_NOT_FOUND') return said
  const deleted = typeof exp.source === 'string' ? 'its volume was deleted (deleteVolume with { force: true })' : 'its snapshot (or the snapshot\'s volume) was deleted (deleteSnapshot or deleteVolume with { force: true })'
  return `export ${exp.name} is gone: ${deleted} while this client was connected; disconnect (${said})`
}

/** base:allocation extents of a range: allocated (0) or hole and zero (3). */
async function blockStatus (g: GalleonFS, exp: Export, negotiated: boolean, flags: number, offset: number, length: number): Promise<{ error: number, message?: string, body?: Buffer }> {
  if (!negotiated) return { error: EINVAL, message: 'block status needs structured replies and the base:allocation meta context' }
  if (length === 0 || offset + length > exp.size) return { error: EINVAL, message: `range ${offset}+${length} is empty or past the end (${exp.size} bytes)` }
  try {
    const extents = await g.getAllocation(exp.source, offset, Math.min(length, MAX_STATUS_BYTES))
    const chosen = (flags & CMD_FLAG_REQ_ONE) !== 0 ? extents.slice(0, 1) : extents
    const body = Buffer.alloc(4 + chosen.length * 8)
    body.writeUInt32BE(BASE_ALLOCATION_ID, 0)
    chosen.forEach((extent, i) => {
      body.writeUInt32BE(extent.length, 4 + i * 8)
      body.writeUInt32BE(extent.allocated ? 0 : STATE_HOLE | STATE_ZERO, 8 + i * 8)
    })
    return { error: 0, body }
  } catch (err) {
    return { error: EIO, message: errorMessage(exp, err) }
  }
}

/** Trims in pieces (one trim call covers at most 256 MiB); the range reads as zeros afterwards. */
async function trim (g: GalleonFS, exp: Export, offset: number, length: number): Promise<void> {
  const piece = 128 * 1024 * 1024
  for (let at = 0; at < length; at += piece) await g.trim(exp.volumeId, offset + at, Math.min(piece, length - at))
}
