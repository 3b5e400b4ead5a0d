// Stored form of a block: an 8-byte header with a CRC32 that covers the block's address and payload,
// so a corrupted, torn or misplaced block is detected on read.
// Header: [0..3] CRC32 of (volume u32, index f64, gen f64, flags u8, payload), [4] format version,
// [5] flags, [6..7] reserved (zero).

import { crc32 } from '../checksum.js'
import type { BlockAddress } from '../drivers.js'
import { SlabAllocator } from './slab.js'

/** Bytes of engine header in front of every stored payload. */
export const BLOCK_HEADER_BYTES = 8
const FORMAT_VERSION = 1
/** Header flag values (room for compression/encryption flags later). */
export const BLOCK_FLAG_PLAIN = 0
/** A tombstone: a trimmed block that hides older data (no payload; see block-map.ts). */
export const BLOCK_FLAG_TOMBSTONE = 1
/** The payload is sealed with the volume's data key (see crypto/volume-cipher.ts). */
export const BLOCK_FLAG_ENCRYPTED = 2

// Scratch for hashing the address; safe because encode/verify are synchronous.
const addressScratch = new DataView(new ArrayBuffer(21))
const addressBytes = new Uint8Array(addressScratch.buffer)

function addressCrc (address: BlockAddress, flags: number): number {
  addressScratch.setUint32(0, address.volume)
  addressScratch.setFloat64(4, address.index)
  addressScratch.setFloat64(12, address.gen)
  addressScratch.setUint8(20, flags)
  return crc32(addressBytes)
}

/** Checksum binding `payload` and its `flags` to `address`. */
export function blockChecksum (address: BlockAddress, payload: Uint8Array, flags = BLOCK_FLAG_PLAIN): number {
  return crc32(payload, addressCrc(address, flags))
}

const slabs = new SlabAllocator()

/**
 * Encodes `payload` (copied, zero-padded to `storedLength` when given) behind a header.
 * Returns the value to hand to the block store. It may share a slab with other values (see
 * SlabAllocator), so do not keep it for long: stores copy or write it and let it go.
 */
export function encodeBlock (address: BlockAddress, payload: Uint8Array, storedLength = payload.byteLength, flags = BLOCK_FLAG_PLAIN): Uint8Array {
  const value = slabs.alloc(BLOCK_HEADER_BYTES + storedLength)
  const body = value.subarray(BLOCK_HEADER_BYTES)
  body.set(payload.byteLength > storedLength ? payload.subarray(0, storedLength) : payload)
  writeHeader(value, blockChecksum(address, body, flags), flags)
  return value
}

// Header fields written and read byte by byte (the crc big-endian, as a DataView would): no
// DataView object per block on the I/O path.
function writeHeader (value: Uint8Array, checksum: number, flags: number): void {
  value[0] = checksum >>> 24
  value[1] = checksum >>> 16
  value[2] = checksum >>> 8
  value[3] = checksum
  value[4] = FORMAT_VERSION
  value[5] = flags
  value[6] = 0
  value[7] = 0
}

function readChecksum (value: Uint8Array): number {
  return ((value[0] as number) * 0x1000000) + (((value[1] as number) << 16) | ((value[2] as number) << 8) | (value[3] as number))
}

/**
 * Like encodeBlock, for a payload of `length` bytes that `fill` writes in place (an encrypted block
 * is sealed straight into the stored value, without intermediate copies).
 */
export function encodeBlockWith (address: BlockAddress, length: number, flags: number, fill: (body: Uint8Array) => void): Uint8Array {
  const value = allocBlock(length)
  fill(value.subarray(BLOCK_HEADER_BYTES))
  return finishBlock(address, value, flags)
}

/** A zeroed value for a payload of `length` bytes: fill `value.subarray(BLOCK_HEADER_BYTES)`, then call finishBlock. */
export function allocBlock (length: number): Uint8Array {
  return slabs.alloc(BLOCK_HEADER_BYTES + length)
}

/** Writes the header (checksum over address, flags and the filled payload) of a value from allocBlock. */
export function finishBlock (address: BlockAddress, value: Uint8Array, flags: number): Uint8Array {
  const body = value.subarray(BLOCK_HEADER_BYTES)
  writeHeader(value, blockChecksum(address, body, flags), flags)
  return value
}

/** Outcome of decoding: the payload view, or why it is unusable. */
export type DecodeResult =
  | { ok: true, payload: Uint8Array, flags: number }
  | { ok: false, reason: string, expected?: number, actual?: number, newerFormat?: number }

/**
 * Whether a stored value's header is exactly an encrypted block's (its payload then starts at
 * BLOCK_HEADER_BYTES), checking only the header: for values whose payload is authenticated
 * otherwise (an encrypted block's GCM tag, which also binds its address); a value that then fails
 * goes through decodeBlock, so damage is still reported as a checksum mismatch. No other flag and
 * zero reserved bytes: anything else is left to decodeBlock. The checksum field itself is not
 * checked: a flipped bit there alone, with the rest intact, reads as the authentic data it is.
 */
export function isSealedBlock (value: Uint8Array): boolean {
  return value.byteLength >= BLOCK_HEADER_BYTES && value[4] === FORMAT_VERSION && value[5] === BLOCK_FLAG_ENCRYPTED && value[6] === 0 && value[7] === 0
}

/** Verifies and unwraps a stored value. Never throws. */
export function decodeBlock (address: BlockAddress, value: Uint8Array): DecodeResult {
  if (value.byteLength < BLOCK_HEADER_BYTES) return { ok: false, reason: `stored value is ${value.byteLength} bytes, shorter than the ${BLOCK_HEADER_BYTES}-byte header` }
  const version = value[4] as number
  if (version !== FORMAT_VERSION) {
    // A version above ours is a damaged header or a newer GalleonFS's block (see verified()); 0 is
    // no version anyone wrote.
    return version > FORMAT_VERSION ? { ok: false, reason: `block format version ${version}, newer than this version's ${FORMAT_VERSION}`, newerFormat: version } : { ok: false, reason: `unknown block format version ${version}` }
  }
  const payload = value.subarray(BLOCK_HEADER_BYTES)
  const flags = value[5] as number
  const expected = readChecksum(value)
  const actual = blockChecksum(address, payload, flags)
  if (expected !== actual) return { ok: false, reason: 'checksum mismatch', expected, actual }
  return { ok: true, payload, flags }
}
