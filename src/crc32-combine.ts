// CRC-32 of joined byte strings from the CRCs of their parts, without reading the bytes again.
//
// The zlib CRC is affine in its starting value: for a byte string B of n bytes,
//
//   crc32(B, s) = (x^(8n) · s mod P) XOR crc32(B, 0)
//
// (in zlib's bit-reflected representation; this is zlib's crc32_combine). So the CRC of A||B is
// shift_n(crc32(A)) XOR crc32(B), and the CRC of B continued from any seed follows from crc32(B)
// alone. For a fixed n, multiplying by x^(8n) mod P is a linear map on 32-bit values, done here with
// four 256-entry tables (one per byte of the value): four lookups instead of a pass over n bytes.
// The file store uses this to checksum a record (header, then a block value whose CRC the engine
// already knows) without a second pass over the block.

const POLY = 0xedb88320

/** a · b modulo P, both in the reflected representation (zlib's multmodp). */
function multModP (a: number, b: number): number {
  let m = 0x80000000
  let p = 0
  for (;;) {
    if ((a & m) !== 0) {
      p ^= b
      if ((a & (m - 1)) === 0) break
    }
    m >>>= 1
    b = (b & 1) !== 0 ? (b >>> 1) ^ POLY : b >>> 1
  }
  return p >>> 0
}

/** x^(2^k) modulo P for k = 0..31 (zlib's x2n_table). */
const X2N: number[] = []
{
  let p = 0x40000000 // x^1
  X2N.push(p)
  for (let k = 1; k < 32; k++) X2N.push(p = multModP(p, p))
}

/** x^(8 · bytes) modulo P. */
function xPowBytes (bytes: number): number {
  let p = 0x80000000 // x^0
  let k = 3
  for (let n = bytes; n > 0; n = Math.floor(n / 2), k++) {
    if (n % 2 === 1) p = multModP(X2N[k & 31] as number, p)
  }
  return p
}

/** Maps a CRC to what it becomes after `bytes` more bytes of zeros' worth of shifting (see above). */
export type Crc32Shift = (crc: number) => number

const shifts = new Map<number, Crc32Shift>()

/**
 * The shift over `bytes` bytes: crc32(B, s) === (shift(s) ^ crc32(B)) >>> 0 for every B of that
 * length. Built once per length (about a thousand multiplications) and kept; callers use a few
 * lengths (block values and their records).
 */
export function crc32Shift (bytes: number): Crc32Shift {
  let shift = shifts.get(bytes)
  if (shift === undefined) {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new RangeError(`crc32Shift needs a byte count, got ${String(bytes)}`)
    const k = xPowBytes(bytes)
    const t0 = new Int32Array(256)
    const t1 = new Int32Array(256)
    const t2 = new Int32Array(256)
    const t3 = new Int32Array(256)
    for (let x = 0; x < 256; x++) {
      t0[x] = multModP(k, x)
      t1[x] = multModP(k, x << 8)
      t2[x] = multModP(k, x << 16)
      t3[x] = multModP(k, (x << 24) >>> 0)
    }
    shift = (crc) => ((t0[crc & 0xff] as number) ^ (t1[(crc >>> 8) & 0xff] as number) ^ (t2[(crc >>> 16) & 0xff] as number) ^ (t3[crc >>> 24] as number)) >>> 0
    if (shifts.size < 64) shifts.set(bytes, shift)
  }
  return shift
}

/** crc32(A || B) from crc32(A), crc32(B) and B's length (zlib's crc32_combine). */
export function crc32Combine (crcA: number, crcB: number, bytesB: number): number {
  return (crc32Shift(bytesB)(crcA) ^ crcB) >>> 0
}
