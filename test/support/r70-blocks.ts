// Review r70: the bytes of block `index` at write `version` (0: never written, zeros), and the
// digest of a volume view made of such blocks, shared by the node children and the test's model.

import { createHash } from 'node:crypto'
import { endianness } from 'node:os'

export const BS = 4096
const WORDS = BS / 4
/** Uint32Array words are the little-endian words the blocks are made of (every host we run on). */
const LITTLE_ENDIAN = endianness() === 'LE'

/** The seed of block `index` at `version` (> 0); each word of the block is the next LCG step. */
function seedOf (index: number, version: number): number {
  return (index * 2654435761 + version * 40503 + 1) >>> 0
}

/** Block `index` as written at `version` (zeros for version 0). */
export function versionBlock (index: number, version: number): Buffer {
  const out = Buffer.alloc(BS)
  if (version === 0) return out
  let x = seedOf(index, version)
  if (LITTLE_ENDIAN) {
    const words = new Uint32Array(out.buffer, out.byteOffset, WORDS)
    for (let i = 0; i < WORDS; i++) {
      x = (Math.imul(x, 1664525) + 1013904223) >>> 0
      words[i] = x
    }
    return out
  }
  for (let i = 0; i < BS; i += 4) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0
    out.writeUInt32LE(x, i)
  }
  return out
}

/**
 * Whether the 4 KiB at `offset` of `data` are block `index` at `version`: compared word by word
 * as they are generated (the checks run over whole volumes, on every node, after every step).
 */
function holds (data: Uint8Array, offset: number, index: number, version: number): boolean {
  if (!LITTLE_ENDIAN || (data.byteOffset + offset) % 4 !== 0) return Buffer.from(data.buffer, data.byteOffset + offset, BS).equals(versionBlock(index, version))
  const words = new Uint32Array(data.buffer, data.byteOffset + offset, WORDS)
  if (version === 0) {
    for (let i = 0; i < WORDS; i++) if (words[i] !== 0) return false
    return true
  }
  let x = seedOf(index, version)
  for (let i = 0; i < WORDS; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0
    if (words[i] !== x) return false
  }
  return true
}

/** sha256 (hex) of the view whose block `i` holds version `versions[i]`. */
export function modelDigest (versions: ArrayLike<number>): string {
  const hash = createHash('sha256')
  for (let i = 0; i < versions.length; i++) hash.update(versionBlock(i, versions[i] as number))
  return hash.digest('hex')
}

/**
 * The blocks of `data` (a view read back) that do not hold the version the model says, with the
 * version each holds when it is one of `candidates` (else -1): what a failed check prints.
 */
export function mismatches (data: Uint8Array, versions: ArrayLike<number>, candidates: number[] = []): { count: number, first: Array<{ index: number, want: number, found: number }> } {
  const first: Array<{ index: number, want: number, found: number }> = []
  let count = 0
  for (let i = 0; i < versions.length; i++) {
    const want = versions[i] as number
    if (holds(data, i * BS, i, want)) continue
    count++
    if (first.length < 8) first.push({ index: i, want, found: [0, ...candidates].find((v) => holds(data, i * BS, i, v)) ?? -1 })
  }
  return { count, first }
}
