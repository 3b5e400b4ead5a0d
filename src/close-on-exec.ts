// Close-on-exec for descriptors that native code GalleonFS loads opens without it: libfuse opens
// /dev/fuse, and LevelDB (as built into classic-level) its LOCK, LOG, MANIFEST and log files,
// without O_CLOEXEC, so every child process of the application would inherit them. A child that
// holds a mount's /dev/fuse keeps the FUSE connection alive after the serving process died (the
// mount is never torn down, its users hang); one that holds LevelDB's files keeps the space of
// those LevelDB has since deleted (old logs and manifests) and could write into them. (Not the
// lock: LevelDB locks LOCK with fcntl, a lock a child process does not inherit.) Node has no fcntl: the flag is set through the native addon (native/aead), and without
// it nothing is done (closeOnExecStatus says why). Linux only (/proc/self/fd); elsewhere a no-op.

import { readFileSync, readdirSync, readlinkSync } from 'node:fs'
import { nativeAead, nativeAeadStatus } from './crypto/native-aead.js'

/** O_CLOEXEC as /proc/self/fdinfo/N shows it in `flags:` (octal). */
const O_CLOEXEC = 0o2000000

/** Whether descriptors can be marked here, and if not, why. */
export function closeOnExecStatus (): { available: boolean, reason: string } {
  if (process.platform !== 'linux') return { available: false, reason: `not done on ${process.platform} (it reads /proc/self/fd)` }
  const status = nativeAeadStatus()
  return status.available ? { available: true, reason: 'the native addon sets it' } : { available: false, reason: `the native addon is not in use: ${status.reason}` }
}

/** The target of each open descriptor of this process whose target `matches` (empty off Linux). */
export function descriptorsWhere (matches: (target: string) => boolean): Map<number, string> {
  const found = new Map<number, string>()
  if (process.platform !== 'linux') return found
  let names: string[]
  try {
    names = readdirSync('/proc/self/fd')
  } catch {
    return found // no /proc mounted: nothing to find
  }
  for (const name of names) {
    let target: string
    try {
      target = readlinkSync(`/proc/self/fd/${name}`)
    } catch {
      continue // closed since the listing (the listing's own descriptor among them)
    }
    if (matches(target)) found.set(Number(name), target)
  }
  return found
}

/**
 * Whether the descriptor has close-on-exec, from /proc/self/fdinfo (undefined: not open, or no
 * /proc).
 */
export function hasCloseOnExec (fd: number): boolean | undefined {
  try {
    const flags = /^flags:\s*([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1]
    return flags === undefined ? undefined : (parseInt(flags, 8) & O_CLOEXEC) !== 0
  } catch {
    return undefined
  }
}

/**
 * Sets close-on-exec on every descriptor whose target `matches`, that lacks it and is not in
 * `except` (descriptors there before, say, that are not ours to change). Returns the descriptors
 * it marked, or undefined when it cannot mark any (see closeOnExecStatus). A descriptor closed
 * meanwhile is skipped.
 */
export function closeOnExecWhere (matches: (target: string) => boolean, except?: ReadonlySet<number> | ReadonlyMap<number, unknown>): number[] | undefined {
  const addon = nativeAead()
  if (addon === undefined || process.platform !== 'linux') return undefined
  const marked: number[] = []
  for (const fd of descriptorsWhere(matches).keys()) {
    if (except?.has(fd) === true || hasCloseOnExec(fd) !== false) continue
    try {
      if (!addon.setCloseOnExec(fd)) marked.push(fd)
    } catch {
      // Closed between the listing and here: nothing left to mark.
    }
  }
  return marked
}

/** A predicate matching `directory` (a real path, as /proc shows targets) and everything under it. */
export function underDirectory (directory: string): (target: string) => boolean {
  const prefix = directory.endsWith('/') ? directory : `${directory}/`
  return (target) => target === directory || target.startsWith(prefix)
}
