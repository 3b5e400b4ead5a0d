// CRC-32 (IEEE 802.3, the zlib polynomial) for block and record checksums.
//
// @node-rs/crc32 computes it with carry-less multiplication (PCLMULQDQ / PMULL): about 0.5 µs per
// 4 KiB block here against 1.4 µs for node:zlib, and a write checksums each block twice (engine header
// and file record). Both give the same values, so data written with one verifies with the other: when
// the native package has no build for this platform, node:zlib is used and nothing else changes.

import { createRequire } from 'node:module'
import { crc32 as zlibCrc32 } from 'node:zlib'

type Crc32 = (data: Uint8Array, initial?: number) => number

function loadNative (): Crc32 | undefined {
  try {
    const native = createRequire(import.meta.url)('@node-rs/crc32') as { crc32: (data: Uint8Array, initial?: number) => number }
    // Guard against a binding that loads but disagrees (it must never change what is on disk).
    const probe = Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9)
    if (native.crc32(probe) !== zlibCrc32(probe) || native.crc32(probe, 0x12345678) !== zlibCrc32(probe, 0x12345678)) return undefined
    return native.crc32
  } catch {
    return undefined
  }
}

const native = loadNative()

/** Which implementation is in use: `native` (@node-rs/crc32) or `zlib`. */
export const crc32Implementation: 'native' | 'zlib' = native === undefined ? 'zlib' : 'native'

/** CRC-32 of `data`, continuing from `initial` (the CRC of the bytes before it) when given. */
export const crc32: Crc32 = native ?? zlibCrc32
