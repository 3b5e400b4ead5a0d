// The stream's wire form of recorded changes (a `repl:apply` batch: headers in JSON, write data
// in the payload), and the arena that holds the write data of recorded changes on the primary.
//
// The arena: the engine lends a write's bytes to `record()` (the caller may reuse them once it
// returns), so the primary copies them once, into append-only chunks, one write after the other.
// The writes of a batch then usually sit side by side in one chunk, and the batch's payload is a
// view of them: no second copy, and no allocation per write. A chunk is never written again once
// a write's bytes are in it (a new chunk is taken when one is full), so a view stays valid for as
// long as anything holds it, including a socket write in progress; once every copy has acknowledged
// every change in a full chunk, the chunk is kept for reuse (a few of them), else left to the garbage
// collector. Chunks are filled in recording order, so what
// the queues pin is what they hold, plus what chunks leave unused at their ends (a write that does
// not fit starts a new chunk: under 1/16 with writes of at most ARENA_MAX_WRITE), plus at most one
// chunk at either end. The primary drops its current chunk once its copies have had nothing queued
// for a while (release()), so an idle volume holds none.

import { GalleonError } from '../errors.js'
import type { ReplicatedChange, WriterId } from '../engine/replicator.js'
import { writerOf } from './forwarded-writes.js'

/** Bytes per arena chunk. */
export const CHUNK_BYTES = 1024 * 1024
/** Writes larger than this get a copy of their own. */
export const ARENA_MAX_WRITE = 64 * 1024
/** Full chunks kept for reuse once nothing points into them (see ChangeArena.reclaim). */
export const ARENA_FREE_CHUNKS = 2

export class ChangeArena {
  #chunk: Uint8Array = new Uint8Array(0)
  #used = 0
  /** The current chunk was used before (its bytes are not zeros). */
  #recycled = false
  /** Sequence number of the last change copied into the current chunk. */
  #chunkLastSeq = 0
  /** Full chunks that changes not yet acknowledged may still point into, oldest first, with their last change. */
  #retired: Array<{ chunk: Uint8Array, lastSeq: number }> = []
  /** Full chunks nothing points into any more, for the next chunks (at most ARENA_FREE_CHUNKS). */
  #free: Uint8Array[] = []

  /**
   * A copy of `data`, zero-padded to `length` bytes (at least its own), that does not change until
   * reclaim() is told that change `seq` (recorded in order) is acknowledged by every copy.
   */
  copy (data: Uint8Array, length = data.byteLength, seq = Number.POSITIVE_INFINITY): Uint8Array {
    if (length > ARENA_MAX_WRITE) {
      const own = new Uint8Array(length)
      own.set(data)
      return own
    }
    if (this.#used + length > this.#chunk.byteLength) {
      if (this.#chunk.byteLength > 0) this.#retired.push({ chunk: this.#chunk, lastSeq: this.#chunkLastSeq })
      const reused = this.#free.pop()
      // Fresh memory is zeros: the padding needs no writing there.
      this.#chunk = reused ?? new Uint8Array(CHUNK_BYTES)
      this.#recycled = reused !== undefined
      this.#used = 0
    }
    const out = this.#chunk.subarray(this.#used, this.#used + length)
    out.set(data)
    if (this.#recycled && length > data.byteLength) out.fill(0, data.byteLength)
    this.#used += length
    this.#chunkLastSeq = seq
    return out
  }

  /**
   * Every change up to `seq` is acknowledged by every copy, so nothing points into what holds them
   * any more (queues drop a change once it is acknowledged, and an acknowledgement means the copy
   * has read the whole batch, so no socket write reads from it either): the full chunks holding
   * only such changes are kept for the next chunks. A fresh chunk costs a page fault per 4 KiB on
   * first touch, about 1-4 us per 4 KiB copied on the 2-vCPU VM against 0.1 us into a used one,
   * and the garbage collector's work for 1 MiB of external memory.
   */
  reclaim (seq: number): void {
    while (this.#retired.length > 0 && (this.#retired[0] as { lastSeq: number }).lastSeq <= seq) {
      const { chunk } = this.#retired.shift() as { chunk: Uint8Array }
      if (this.#free.length < ARENA_FREE_CHUNKS) this.#free.push(chunk)
    }
  }

  /**
   * Lets every chunk go (the views handed out stay valid, and no chunk handed out is reused); the
   * next copy takes a new one. For an idle volume, and when a copy goes away while its socket may
   * still be sending from them.
   */
  release (): void {
    this.#chunk = new Uint8Array(0)
    this.#used = 0
    this.#retired = []
    this.#free = []
  }

  /** Bytes of the chunks held: the current one, the full ones awaiting acknowledgement, and those kept for reuse. */
  get chunkBytes (): number {
    return this.#chunk.byteLength + (this.#retired.length + this.#free.length) * CHUNK_BYTES
  }
}

/** `wr`, a forwarded write's identity (see WriterId), left out when there is none; nodes of earlier versions ignore it. */
function wireWriter (writer: WriterId | undefined): { wr?: WriterId } {
  return writer === undefined ? {} : { wr: writer }
}

/**
 * Encodes changes as a message: headers in JSON, write data in the payload, in order. When the
 * writes' bytes lie side by side in one buffer (the arena's usual case), the payload is a view of
 * them; otherwise they are copied into a new one.
 */
export function encodeChanges (changes: ReadonlyArray<{ seq: number, change: ReplicatedChange }>): { list: unknown[], payload: Uint8Array } {
  const list: unknown[] = []
  let bytes = 0
  let first: Uint8Array | undefined
  let adjacent = true
  for (const { change } of changes) {
    switch (change.type) {
      case 'write': {
        const data = change.data
        if (first === undefined) {
          first = data
        } else if (adjacent && (data.buffer !== first.buffer || data.byteOffset !== first.byteOffset + bytes)) {
          adjacent = false
        }
        bytes += data.byteLength
        list.push({ t: 'w', o: change.offset, n: data.byteLength, ...wireWriter(change.writer) })
        break
      }
      case 'trim': list.push({ t: 't', o: change.offset, n: change.length, ...wireWriter(change.writer) }); break
      // `tk`, a call's token, is left out when there is none; nodes of earlier versions ignore it.
      case 'snapshot': list.push({ t: 's', id: change.id, name: change.name, ...(change.token === undefined ? {} : { tk: change.token }) }); break
      case 'delete-snapshot': list.push({ t: 'd', id: change.id }); break
      case 'expand': list.push({ t: 'x', n: change.sizeBytes }); break
      case 'revert': list.push({ t: 'r', id: change.snapshotId, ...(change.token === undefined ? {} : { tk: change.token }) }); break
      case 'rekey': list.push({ t: 'k', g: change.generation }); break
    }
  }
  if (first === undefined) return { list, payload: new Uint8Array(0) }
  if (adjacent) return { list, payload: new Uint8Array(first.buffer, first.byteOffset, bytes) }
  const payload = new Uint8Array(bytes)
  let at = 0
  for (const { change } of changes) {
    if (change.type !== 'write') continue
    payload.set(change.data, at)
    at += change.data.byteLength
  }
  return { list, payload }
}

/** The changes of a batch, their write data as views of `payload`. */
export function decodeChanges (list: unknown, payload: Uint8Array | undefined): ReplicatedChange[] {
  if (!Array.isArray(list)) throw new GalleonError('INVALID_ARGUMENT', 'a replication batch needs a list of changes')
  const out: ReplicatedChange[] = []
  let at = 0
  const count = (value: unknown): number => {
    if (!Number.isSafeInteger(value) || (value as number) < 0) throw new GalleonError('INVALID_ARGUMENT', `a replicated change has a bad offset or length: ${JSON.stringify(value)}`)
    return value as number
  }
  for (const item of list as Array<Record<string, unknown>>) {
    if (item === null || typeof item !== 'object') throw new GalleonError('INVALID_ARGUMENT', 'a replicated change must be an object')
    if (item.t === 'w' || item.t === 't') { count(item.o); count(item.n) }
    if (item.t === 'w') {
      const n = item.n as number
      if (payload === undefined || at + n > payload.byteLength) throw new GalleonError('INVALID_ARGUMENT', 'a replication batch is shorter than its changes say')
      const writer = writerOf(item.wr)
      out.push({ type: 'write', offset: item.o as number, data: payload.subarray(at, at + n), ...(writer === undefined ? {} : { writer }) })
      at += n
    } else if (item.t === 't') {
      const writer = writerOf(item.wr)
      out.push({ type: 'trim', offset: item.o as number, length: item.n as number, ...(writer === undefined ? {} : { writer }) })
    } else if (item.t === 's') {
      out.push({ type: 'snapshot', id: String(item.id), name: String(item.name), ...(typeof item.tk === 'string' ? { token: item.tk } : {}) })
    } else if (item.t === 'd') {
      out.push({ type: 'delete-snapshot', id: String(item.id) })
    } else if (item.t === 'x') {
      out.push({ type: 'expand', sizeBytes: count(item.n) })
    } else if (item.t === 'r') {
      out.push({ type: 'revert', snapshotId: String(item.id), ...(typeof item.tk === 'string' ? { token: item.tk } : {}) })
    } else if (item.t === 'k') {
      out.push({ type: 'rekey', generation: count(item.g) })
    } else {
      throw new GalleonError('INVALID_ARGUMENT', `unknown replicated change ${JSON.stringify(item.t)}`)
    }
  }
  return out
}
