// Argument checks of the engine's I/O calls: a block index or a byte range against the size of
// the volume or of the snapshot read.

import { GalleonError } from '../errors.js'
import type { EngineCore } from './engine-core.js'
import type { View, VolumeBlocks } from './volume-blocks.js'

/** Largest byte range one read/write/trim call may cover. */
export const MAX_IO_BYTES = 256 * 1024 * 1024

export function checkIndex (core: EngineCore, volume: VolumeBlocks, index: number, view?: View): void {
  if (typeof index !== 'number' || !Number.isSafeInteger(index) || index < 0) {
    throw new GalleonError('INVALID_ARGUMENT', `block index must be a non-negative integer, got ${String(index)}`)
  }
  const blocks = (view?.sizeBytes ?? volume.sizeBytes) / core.blockSize
  if (index >= blocks) {
    if (view !== undefined) throw new GalleonError('OUT_OF_RANGE', `block index ${index} is beyond the end of the snapshot (${blocks} blocks of ${core.blockSize} bytes)`)
    throw new GalleonError('OUT_OF_RANGE', `block index ${index} is beyond the end of the volume (${blocks} blocks of ${core.blockSize} bytes); expand the volume first`)
  }
}

export function checkRange (core: EngineCore, volume: VolumeBlocks, offset: number, length: number, view?: View): void {
  if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) {
    throw new GalleonError('INVALID_ARGUMENT', `offset must be a non-negative integer, got ${String(offset)}`)
  }
  if (typeof length !== 'number' || !Number.isSafeInteger(length) || length < 0) {
    throw new GalleonError('INVALID_ARGUMENT', `length must be a non-negative integer, got ${String(length)}`)
  }
  if (length > MAX_IO_BYTES) {
    throw new GalleonError('INVALID_ARGUMENT', `a single I/O may move at most ${MAX_IO_BYTES} bytes, got ${length}; split the request`)
  }
  const size = view?.sizeBytes ?? volume.sizeBytes
  if (offset + length > size) {
    if (view !== undefined) throw new GalleonError('OUT_OF_RANGE', `range ${offset}..${offset + length} goes past the end of the snapshot (${size} bytes)`)
    throw new GalleonError('OUT_OF_RANGE', `range ${offset}..${offset + length} goes past the end of the volume (${size} bytes); expand the volume first`)
  }
}
