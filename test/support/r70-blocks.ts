// Review r70: the bytes of block `index` at write `version` (0: never written, zeros), and the
// digest of a volume view made of such blocks, shared by the node children and the test's model.

import { createHash } from 'node:crypto'

export const BS = 4096

/** Block `index` as written at `version` (zeros for version 0). */
export function versionBlock (index: number, version: number): Buffer {
  const out = Buffer.alloc(BS)
  if (version === 0) return out
  let x = (index * 2654435761 + version * 40503 + 1) >>> 0
  for (let i = 0; i < BS; i += 4) {
    x = (x * 1664525 + 1013904223) >>> 0
    out.writeUInt32LE(x, i)
  }
  return out
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
    const block = Buffer.from(data.buffer, data.byteOffset + i * BS, BS)
    const want = versions[i] as number
    if (block.equals(versionBlock(i, want))) continue
    count++
    if (first.length < 8) first.push({ index: i, want, found: [0, ...candidates].find((v) => block.equals(versionBlock(i, v))) ?? -1 })
  }
  return { count, first }
}
