// The stream's wire form of recorded changes (a `repl:apply` batch: headers in JSON, write data
// in the payload), and the arena that holds the write data of recorded changes on the primary.
//
// The arena: the engine lends a write's bytes to `record()` (the caller may reuse them once it
// returns), so the primary copies them once, into append-only chunks, one write after the other.
// The writes of a batch then usually sit side by side in one chunk, and the batch's payload is a
// view of them: no second copy, and no allocation per write. A chunk is never written again once
// a write's bytes are in it (a new chunk is taken when one is full), so a view stays valid for as
// long as anything holds it, including a socket write in progress; a chunk is freed by the garbage
// collector once no queued change holds a view of it. Chunks are filled in recording order, so what
// the queues pin is what they hold, plus what chunks leave unused at their ends (a write that does
// not fit starts a new chunk: under 1/16 with writes of at most ARENA_MAX_WRITE), plus at most one
// chunk at either end. The primary drops its current chunk once its copies have had nothing queued
// for a while (release()), so an idle volume holds none.

import { GalleonError } from '../errors.js'
import type { ReplicatedChange } from '../engine/replicator.js'

/** Bytes per arena chunk. */
export const CHUNK_BYTES = 1024 * 1024
/** Writes larger than this get a copy of their own. */
export const ARENA_MAX_WRITE = 64 * 1024

export class ChangeArena {
  #chunk = new Uint8Array(0)
  #used = 0

  /** A copy of `data`, zero-padded to `length` bytes (at least its own), that never changes. */
  copy (data: Uint8Array, length = data.byteLength): Uint8Array {
    if (length > ARENA_MAX_WRITE) {
      const own = new Uint8Array(length)
      own.set(data)
      return own
    }
    if (this.#used + length > this.#chunk.byteLength) {
      // Fresh memory is zeros: the padding needs no writing.
      this.#chunk = new Uint8Array(CHUNK_BYTES)
      this.#used = 0
    }
    const out = this.#chunk.subarray(this.#used, this.#used + length)
    out.set(data)
    this.#used += length
    return out
  }

  /** Forgets the current chunk (the views handed out stay valid); the next copy takes a new one. */
  release (): void {
    this.#chunk = new Uint8Array(0)
    this.#used = 0
  }

  /** Bytes of the current chunk (0 before the first copy and after release()). */
  get chunkBytes (): number { return this.#chunk.byteLength }
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
        list.push({ t: 'w', o: change.offset, n: data.byteLength })
        break
      }
      case 'trim': list.push({ t: 't', o: change.offset, n: change.length }); break
      case 'snapshot': list.push({ t: 's', id: change.id, name: change.name }); break
      case 'delete-snapshot': list.push({ t: 'd', id: change.id }); break
      case 'expand': list.push({ t: 'x', n: change.sizeBytes }); break
      case 'revert': list.push({ t: 'r', id: change.snapshotId }); break
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
      out.push({ type: 'write', offset: item.o as number, data: payload.subarray(at, at + n) })
      at += n
    } else if (item.t === 't') {
      out.push({ type: 'trim', offset: item.o as number, length: item.n as number })
    } else if (item.t === 's') {
      out.push({ type: 'snapshot', id: String(item.id), name: String(item.name) })
    } else if (item.t === 'd') {
      out.push({ type: 'delete-snapshot', id: String(item.id) })
    } else if (item.t === 'x') {
      out.push({ type: 'expand', sizeBytes: count(item.n) })
    } else if (item.t === 'r') {
      out.push({ type: 'revert', snapshotId: String(item.id) })
    } else {
      throw new GalleonError('INVALID_ARGUMENT', `unknown replicated change ${JSON.stringify(item.t)}`)
    }
  }
  return out
}
