// A temporary directory for the length of one task, removed afterwards whatever the task did.

import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** Runs `task` with a new directory under the system's temporary directory (named after `prefix`), then removes it. */
export async function withTempDir<T> (prefix: string, task: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  try {
    return await task(dir)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}
