// Letting GalleonFS go quiet between the measurements of a benchmark, so that neither a case nor its
// baseline pays for what the other left behind.

import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import type { GalleonFS } from '../src/index.js'

const exec = promisify(execFile)

/**
 * Waits until `g` is quiet: writes flushed, the store's size unchanged for 300 ms (compaction done,
 * or at most 30 s), and the kernel's dirty pages written back (`sync`).
 */
export async function settle (g: GalleonFS): Promise<void> {
  await g.flush()
  let last = (await g.getStorageStats()).storedBytes
  for (let quiet = 0, waited = 0; quiet < 3 && waited < 30_000; waited += 100) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    const now = (await g.getStorageStats()).storedBytes
    quiet = now === last ? quiet + 1 : 0
    last = now
  }
  await exec('sync', [])
}
