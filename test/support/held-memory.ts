// How much array-buffer memory this process really holds, for tests that check a server keeps no
// more than it should of what a client sent.

import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

// A full collection before measuring, so what is counted is what is held, not garbage.
setFlagsFromString('--expose-gc')
const collect = runInNewContext('gc') as () => void

/**
 * Array-buffer memory after full collections: the least of a few readings, 25 ms apart. V8 frees
 * the backing stores of collected buffers on a background thread, so one reading right after gc()
 * can still count garbage on a loaded machine; memory really held shows in every reading.
 */
export async function heldArrayBuffers (): Promise<number> {
  let least = Infinity
  for (let i = 0; i < 8; i++) {
    collect()
    await new Promise((resolve) => setTimeout(resolve, 25))
    least = Math.min(least, process.memoryUsage().arrayBuffers)
  }
  return least
}
