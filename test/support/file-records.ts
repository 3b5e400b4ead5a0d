// Whole file-store records (header and payload in one buffer), for tests that write or damage
// segment files by hand: the store itself writes each header (encodeRecordHeader) and the payload
// from its own buffer with writev.

import { HEADER_BYTES, encodeRecordHeader } from '../../backends/file/record.js'

/**
 * Writes one record (header and payload) at `position` of `target` and returns the position after
 * it, salted with `seed` when given: the bytes the file store puts on disk for it.
 */
export function encodeRecord (
  target: Uint8Array, position: number, type: number, flags: number,
  volume: number, index: number, gen: number, payload: Uint8Array | undefined, seed?: number
): number {
  if (payload !== undefined) target.set(payload, position + HEADER_BYTES)
  const end = position + HEADER_BYTES + (payload?.byteLength ?? 0)
  encodeRecordHeader(target, position, type, flags, volume, index, gen, payload === undefined ? undefined : target.subarray(position + HEADER_BYTES, end), seed)
  return end
}
