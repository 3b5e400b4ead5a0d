// Small tmpfs mounts for full-disk tests (root only; a test without root skips, saying why), and
// filling what is left of one.

import { execFileSync } from 'node:child_process'
import { mkdtemp, readdir, rm, unlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** Mounts made by `tmpfs` and not yet unmounted by `unmountAll`. */
const mounted: string[] = []

/** A fresh directory (named after `prefix`) with a tmpfs of `size` mounted on it, or why that is impossible here. */
export async function tmpfs (size: string, prefix = 'galleon-tmpfs-'): Promise<{ dir: string } | { skip: string }> {
  if (process.getuid?.() !== 0) return { skip: 'mounting a small tmpfs needs root' }
  const dir = await mkdtemp(join(tmpdir(), prefix))
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' })
  } catch (err) {
    await rm(dir, { recursive: true, force: true })
    return { skip: `cannot mount a tmpfs here: ${(err as Error).message.split('\n')[0] ?? ''}` }
  }
  mounted.push(dir)
  return { dir }
}

/** Changes the size of a tmpfs mounted by `tmpfs`. */
export function resizeTmpfs (dir: string, size: string): void {
  execFileSync('mount', ['-o', `remount,size=${size}`, dir], { stdio: 'pipe' })
}

/** Unmounts (lazily when a handle a failed test left open holds it) and removes every tmpfs made here; for an after() hook. */
export async function unmountAll (): Promise<void> {
  for (const dir of mounted.splice(0)) {
    try {
      execFileSync('umount', [dir], { stdio: 'pipe' })
    } catch {
      execFileSync('umount', ['-l', dir], { stdio: 'pipe' })
    }
    await rm(dir, { recursive: true, force: true })
  }
}

/** Fills what is left of the file system at `dir` with filler files (removed by `unfill`). */
export async function fill (dir: string): Promise<void> {
  for (const size of [64 * 1024, 512]) {
    for (let i = 0; ; i++) {
      try {
        await writeFile(join(dir, `filler-${size}-${i}`), Buffer.alloc(size, 1))
      } catch {
        break
      }
    }
  }
}

/** Removes the filler files `fill` made in `dir`. */
export async function unfill (dir: string): Promise<void> {
  for (const name of await readdir(dir)) if (name.startsWith('filler-')) await unlink(join(dir, name))
}
