// A read-ahead source over an engine volume that counts how often a window reads into a buffer an
// earlier window had (the read-ahead's buffer reuse) and how many distinct buffers it saw, for the
// FUSE read-ahead tests.

import type { ReadAheadSource } from '../../backends/fuse/read-ahead.js'
import type { BlockEngine, VolumeBlocks } from '../../src/engine/engine.js'

/** `before`: awaited before each read (a delay, so reads finish out of order). */
export function countingSource (engine: BlockEngine, volume: VolumeBlocks, size: number, before?: (into: Uint8Array | undefined) => Promise<void>): { source: ReadAheadSource, reused: () => number, distinct: () => number } {
  const buffers = new Set<Uint8Array>()
  let reused = 0
  const source: ReadAheadSource = {
    read: async (offset, length, into) => {
      if (into !== undefined) {
        if (buffers.has(into)) reused++
        buffers.add(into)
      }
      await before?.(into)
      return await engine.read(volume, offset, length, undefined, false, into)
    },
    version: () => engine.changes,
    size: () => size
  }
  return { source, reused: () => reused, distinct: () => buffers.size }
}
