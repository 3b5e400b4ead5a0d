// Recognisable block contents for tests that check what came back (backups, restores).

/**
 * `blocks` blocks of `blockSize` bytes, each filled with a byte derived from `seed` and its index and
 * starting with `seed` and index + 1 (little-endian u32s), so a block in the wrong place, from the
 * wrong pattern or zeroed is told apart; for 4096 blocks of 4 KiB, 16 distinct 1 MiB chunks.
 */
export function blockPattern (blocks: number, seed: number, blockSize = 4096): Uint8Array {
  const out = new Uint8Array(blocks * blockSize)
  const view = new DataView(out.buffer)
  for (let i = 0; i < blocks; i++) {
    out.fill((seed * 31 + i) & 0xff, i * blockSize, (i + 1) * blockSize)
    view.setUint32(i * blockSize, seed, true)
    view.setUint32(i * blockSize + 4, i + 1, true)
  }
  return out
}
