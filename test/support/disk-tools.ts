// Disk tools nobody here wrote (mkfs, e2fsck, debugfs, mtools, qemu-io, nbdfuse, losetup): where
// they are, a visible skip reason when one is missing, and running them as separate processes
// (asynchronously: a process serving a FUSE mount must never wait for its own mount synchronously).

import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { stat } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { until } from './wait.js'

export const exec = promisify(execFile)

/** The Debian package each tool comes from, for the skip message (and .ci/run installs them). */
const PACKAGES: Record<string, string> = {
  'mkfs.ext4': 'e2fsprogs',
  e2fsck: 'e2fsprogs',
  debugfs: 'e2fsprogs',
  'mkfs.xfs': 'xfsprogs',
  xfs_repair: 'xfsprogs',
  'mkfs.vfat': 'dosfstools',
  mcopy: 'mtools',
  'qemu-img': 'qemu-utils',
  'qemu-io': 'qemu-utils',
  nbdcopy: 'libnbd-bin',
  nbdfuse: 'libnbd-bin',
  fallocate: 'util-linux',
  fstrim: 'util-linux',
  losetup: 'mount',
  mount: 'mount',
  python3: 'python3'
}

/** Undefined when every tool is installed; else which one is missing and its Debian package. */
export function toolsMissing (...tools: string[]): string | undefined {
  for (const tool of tools) {
    if (!['/bin', '/sbin', '/usr/bin', '/usr/sbin', '/usr/local/bin'].some((dir) => existsSync(join(dir, tool)))) {
      return `${tool} is not installed (Debian package ${PACKAGES[tool] ?? tool}; see .ci/run)`
    }
  }
  return undefined
}

/** Undefined when this process may attach loop devices (root, /dev/loop-control, losetup); else why not. */
export function loopMissing (): string | undefined {
  if (process.getuid?.() !== 0) return 'loop devices need root'
  if (!existsSync('/dev/loop-control')) return 'no /dev/loop-control on this machine'
  return toolsMissing('losetup', 'mount')
}

/** e2fsck's exit code (0 clean, 1 errors corrected, 4 errors left, 8 operational error) and its output. */
export async function e2fsck (args: string[]): Promise<{ code: number, output: string }> {
  return await exec('e2fsck', args).then(({ stdout, stderr }) => ({ code: 0, output: stdout + stderr }),
    (err: { code?: number, stdout?: string, stderr?: string }) => ({ code: typeof err.code === 'number' ? err.code : -1, output: `${err.stdout ?? ''}${err.stderr ?? ''}` }))
}

/** nbdfuse serving `uri` as `<dir>/nbd` (in its own process), and how to end it. */
export async function nbdfuse (dir: string, uri: string): Promise<{ file: string, stop: () => Promise<void> }> {
  const child: ChildProcess = spawn('nbdfuse', [dir, uri], { stdio: ['ignore', 'ignore', 'inherit'] })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const file = join(dir, 'nbd')
  await until('nbdfuse serves the export', async () => {
    if (child.exitCode !== null) throw new Error(`nbdfuse ${uri} exited with ${child.exitCode}`)
    return await stat(file).then((s) => s.size > 0, () => false)
  })
  return {
    file,
    stop: async () => {
      await exec('fusermount', ['-u', dir]).catch(() => {})
      await exited
    }
  }
}
