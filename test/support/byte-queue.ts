// The received-bytes queue of the tests' raw socket clients: chunks as they arrived, taken off the
// front in exact amounts.

/** Takes the first `n` bytes off `chunks` (which must hold at least `n`) into a new buffer. */
export function takeBytes (chunks: Buffer[], n: number): Buffer {
  const out = Buffer.allocUnsafe(n)
  for (let at = 0; at < n;) {
    const chunk = chunks[0] as Buffer
    const take = Math.min(chunk.byteLength, n - at)
    chunk.copy(out, at, 0, take)
    at += take
    if (take === chunk.byteLength) chunks.shift()
    else chunks[0] = chunk.subarray(take)
  }
  return out
}
