// The plain models the NBD fuzz test checks replies against: what an export reads (a byte array
// for a small export, a map of written blocks for a large sparse one), the byte ranges the
// requests of one round claim (so that requests in flight together never race on the same
// bytes), and the seeded choices of offsets, lengths and payloads.

import { seededRandom } from '../../src/seeded-random.js'

/** The block size of the instance under test (the file backend's). */
export const BLOCK = 4096

/** Seeded choices: one seed fixes every operation of a run. */
export class FuzzRandom {
  readonly next: () => number
  constructor (seed: number) { this.next = seededRandom(seed) }
  int (n: number): number { return Math.floor(this.next() * n) }
  chance (p: number): boolean { return this.next() < p }
  pick<T> (items: readonly T[]): T { return items[this.int(items.length)] as T }

  /** Payload bytes: random, zeros (allocated zeros) or one repeated byte. */
  payload (n: number): Uint8Array {
    const out = new Uint8Array(n)
    const kind = this.next()
    if (kind < 0.1) return out
    if (kind < 0.2) return out.fill(1 + this.int(255))
    for (let i = 0; i < n; i += 4) {
      const v = (this.next() * 2 ** 32) >>> 0
      out[i] = v; out[i + 1] = v >>> 8; out[i + 2] = v >>> 16; out[i + 3] = v >>> 24
    }
    return out
  }
}

/** What one export reads, and the byte ranges claimed by the requests of the round in flight. */
export abstract class ModelView {
  readonly label: string
  readonly size: number
  readonly readOnly: boolean
  /** Offsets the ranges of this view cluster around (besides anywhere). */
  readonly hot: readonly number[]
  #claims: Array<{ start: number, end: number, write: boolean }> = []

  constructor (label: string, size: number, readOnly: boolean, hot: readonly number[]) {
    this.label = label
    this.size = size
    this.readOnly = readOnly
    this.hot = hot
  }

  abstract read (offset: number, length: number): Uint8Array
  abstract write (offset: number, data: Uint8Array): void
  abstract zero (offset: number, length: number): void
  /** The first offset in the range holding a non-zero byte, or -1. */
  abstract firstData (offset: number, length: number): number

  /** A new round: nothing in flight. `free`: requests may overlap at will (claims always succeed). */
  resetClaims (free = false): void { this.#claims = []; this.#free = free }
  #free = false

  /** Claims [start, end) for a request of this round, unless it clashes with one in flight (a write clashes with anything). */
  claim (start: number, end: number, write: boolean): boolean {
    if (end <= start || this.#free) return true
    if (this.#claims.some((c) => start < c.end && end > c.start && (write || c.write))) return false
    this.#claims.push({ start, end, write })
    return true
  }

  /**
   * An in-export [offset, length] the request can claim, or undefined: lengths mostly small and
   * unaligned or whole blocks, sometimes a few hundred KiB, now and then `wide` bytes (most of a
   * small export, up to a GiB of a large one); offsets anywhere, aligned, at a block edge, at a
   * hot spot or at the very end.
   */
  pickRange (rand: FuzzRandom, write: boolean, wide = 0): [number, number] | undefined {
    for (let tries = 0; tries < 6; tries++) {
      const length = Math.min(this.size, wide > 0 && rand.chance(0.12) ? wide - rand.int(3 * BLOCK) : pickLength(rand))
      const offset = this.#pickOffset(rand, length)
      if (this.claim(offset, offset + length, write)) return [offset, length]
    }
    return undefined
  }

  #pickOffset (rand: FuzzRandom, length: number): number {
    const max = this.size - length
    const r = rand.next()
    const clamp = (at: number): number => Math.max(0, Math.min(max, at))
    if (r < 0.15) return max
    if (r < 0.35) return clamp(rand.int(this.size / BLOCK) * BLOCK)
    if (r < 0.5) return clamp(rand.int(this.size / BLOCK) * BLOCK + rand.int(9) - 4)
    if (r < 0.7 && this.hot.length > 0) return clamp(rand.pick(this.hot) + rand.int(2 * 65536) - 65536)
    return rand.int(max + 1)
  }

  /** A range that crosses or lies past the end: [offset, length], the offset maybe near 2^64. */
  pastEnd (rand: FuzzRandom): [bigint, number] {
    const r = rand.next()
    // Exactly one byte too far, from anywhere.
    if (r < 0.2) { const length = 1 + rand.int(Math.min(this.size, 2 ** 32 - 1)); return [BigInt(this.size - length + 1), length] }
    if (r < 0.5) { const length = 2 + rand.int(8192); return [BigInt(this.size - 1 - rand.int(Math.min(length - 1, this.size))), length] }
    if (r < 0.7) return [BigInt(this.size), 1 + rand.int(4096)]
    if (r < 0.85) return [BigInt(this.size + 1 + rand.int(1 << 20)), 1 + rand.int(4096)]
    return [(1n << 64n) - BigInt(1 + rand.int(4096)), 1 + rand.int(8192)]
  }
}

function pickLength (rand: FuzzRandom): number {
  const r = rand.next()
  if (r < 0.25) return 1 + rand.int(700)
  if (r < 0.55) return BLOCK * (1 + rand.int(4))
  if (r < 0.9) return 1 + rand.int(64 * 1024)
  return 1 + rand.int(300 * 1024)
}

/** A small export as one byte array. */
export class DenseView extends ModelView {
  data: Uint8Array

  constructor (label: string, data: Uint8Array, readOnly: boolean) {
    super(label, data.byteLength, readOnly, [])
    this.data = data
  }

  read (offset: number, length: number): Uint8Array { return this.data.slice(offset, offset + length) }
  write (offset: number, data: Uint8Array): void { this.data.set(data, offset) }
  zero (offset: number, length: number): void { this.data.fill(0, offset, offset + length) }
  firstData (offset: number, length: number): number {
    const at = this.data.subarray(offset, offset + length).findIndex((b) => b !== 0)
    return at < 0 ? -1 : offset + at
  }
}

/** A large export, mostly never written: the blocks written so far. */
export class SparseView extends ModelView {
  readonly blocks = new Map<number, Uint8Array>()

  read (offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length)
    this.#each(offset, length, (index, from, to, at) => { const block = this.blocks.get(index); if (block !== undefined) out.set(block.subarray(from, to), at) })
    return out
  }

  write (offset: number, data: Uint8Array): void {
    this.#each(offset, data.byteLength, (index, from, to, at) => {
      let block = this.blocks.get(index)
      if (block === undefined) { block = new Uint8Array(BLOCK); this.blocks.set(index, block) }
      block.set(data.subarray(at, at + to - from), from)
    })
  }

  zero (offset: number, length: number): void {
    // Only blocks written so far can hold anything: a GiB-long range costs no more than they do.
    for (const [index, block] of this.blocks) {
      const start = Math.max(offset, index * BLOCK)
      const end = Math.min(offset + length, (index + 1) * BLOCK)
      if (start >= end) continue
      if (end - start === BLOCK) this.blocks.delete(index)
      else block.fill(0, start - index * BLOCK, end - index * BLOCK)
    }
  }

  firstData (offset: number, length: number): number {
    let first = -1
    for (const [index, block] of this.blocks) {
      const start = Math.max(offset, index * BLOCK)
      const end = Math.min(offset + length, (index + 1) * BLOCK)
      for (let at = start; at < end; at++) {
        if (block[at - index * BLOCK] !== 0) { if (first < 0 || at < first) first = at; break }
      }
    }
    return first
  }

  #each (offset: number, length: number, visit: (index: number, from: number, to: number, at: number) => void): void {
    for (let at = 0; at < length;) {
      const index = Math.floor((offset + at) / BLOCK)
      const from = (offset + at) - index * BLOCK
      const to = Math.min(BLOCK, from + length - at)
      visit(index, from, to, at)
      at += to - from
    }
  }
}
