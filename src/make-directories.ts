// `mkdir -p` that always settles.
//
// Node's own recursive mkdir (fs.promises.mkdir(path, { recursive: true }), Node 20 and 22) never
// settles when a directory cannot be made although its parent exists and the system answers
// ENOENT, as /proc and /sys do: it retries forever. A storage path, mount point or backup target
// named there hung open(), mountVolume or createBackup, and with them close(). This one makes each
// missing directory from the top down and fails with the system's error instead.

import { mkdir, stat } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'

/**
 * Makes `path` and any missing parents (mode `mode` for the ones it makes, less the umask). Resolves
 * to the first directory it made, or undefined when `path` was there already, as Node's recursive
 * mkdir does. A file in the way fails with EEXIST or ENOTDIR.
 */
export async function makeDirectories (path: string, mode?: number): Promise<string | undefined> {
  const target = resolve(path)
  try {
    await mkdir(target, mode === undefined ? undefined : { mode })
    return target
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST') {
      if ((await stat(target)).isDirectory()) return undefined
      throw err
    }
    const parent = dirname(target)
    if (code !== 'ENOENT' || parent === target) throw err
    const first = await makeDirectories(parent, mode)
    try {
      await mkdir(target, mode === undefined ? undefined : { mode })
    } catch (again) {
      // Made meanwhile by someone else: fine if it is a directory.
      if ((again as NodeJS.ErrnoException).code !== 'EEXIST' || !(await stat(target)).isDirectory()) throw again
      return first
    }
    return first ?? target
  }
}
