// Mount points as the kernel sees them: whether a path is one, the ones this process serves and its own
// files open under them, and the directories a mount made for its mount point.

import { readdir, readlink, rmdir } from 'node:fs/promises'
import { dirname, resolve as resolvePath } from 'node:path'

/** Whether `path` is a mount point now (Linux: /proc/self/mountinfo); `unknown` when that cannot be told. */
export async function isMountPoint (path: string, unknown = true): Promise<boolean> {
  const { readFile } = await import('node:fs/promises')
  const info = await readFile('/proc/self/mountinfo', 'utf8').catch(() => undefined)
  if (info === undefined) return unknown
  // The kernel writes space, tab, newline and backslash in a path as octal escapes (\040 ...).
  return info.split('\n').some((line) => line.split(' ')[4]?.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))) === path)
}

/**
 * Mount points this process serves (every FuseMountDriver in it), as the kernel names them: with
 * symbolic links resolved, as /proc/self/fd shows the files open under them.
 */
export const servedHere = new Set<string>()

/**
 * Files under `points` that this process has open itself (its descriptors, from /proc/self/fd).
 * Reading a descriptor's link asks the kernel for its path, not the file system behind it.
 */
export async function ownFilesOpenUnder (points: ReadonlySet<string>): Promise<string[]> {
  if (points.size === 0) return []
  const found: string[] = []
  for (const fd of await readdir('/proc/self/fd').catch(() => [])) {
    const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '')
    for (const point of points) if (target === point || target.startsWith(point + '/')) found.push(target)
  }
  return found
}

/**
 * Removes the directories a mount made for its mount point `path`, from `path` up to `madeFrom`,
 * each only while empty (rmdir): whatever someone put there since stays, and so do its parents.
 */
export async function removeMadeDirectories (path: string, madeFrom: string | undefined): Promise<void> {
  if (madeFrom === undefined) return
  for (let dir = resolvePath(path); ; dir = dirname(dir)) {
    try {
      await rmdir(dir)
    } catch {
      return
    }
    if (dir === madeFrom || dirname(dir) === dir) return
  }
}
