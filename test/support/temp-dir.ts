// Temporary directories: for the length of one task, or for a test file (removed after its tests).

import { after, before } from 'node:test'
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

/**
 * For a test file: a new directory under the system's temporary directory (named after `prefix`)
 * each time the returned function is called; every one is removed after the file's tests.
 */
export function tempDirs (prefix: string): () => Promise<string> {
  const dirs: string[] = []
  after(async () => { await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true }))) })
  return async () => {
    const dir = await mkdtemp(join(tmpdir(), prefix))
    dirs.push(dir)
    return dir
  }
}

/**
 * For a test file: one directory under the system's temporary directory (named after `prefix`),
 * made before the file's tests and removed after them. `root()` is that directory; `place()` names
 * a new path in it each time (not made: a directory backup target or a storage path makes its own).
 */
export function tempPlaces (prefix: string): { root: () => string, place: () => string } {
  let root: string | undefined
  let count = 0
  before(async () => { root = await mkdtemp(join(tmpdir(), prefix)) })
  after(async () => { if (root !== undefined) await rm(root, { recursive: true, force: true }) })
  const made = (): string => {
    if (root === undefined) throw new Error('tempPlaces: the directory is made before the test file\'s tests; call root() or place() inside a test')
    return root
  }
  return { root: made, place: () => join(made(), String(count++)) }
}
