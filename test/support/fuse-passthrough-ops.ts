// Pieces shared by the pass-through fuse-native file systems the tests serve from child processes
// (h60-faulty-fs.ts, h63-power-fs.ts): errors as FUSE wants them, stat objects, and statfs of the
// backing directory.

import * as fs from 'node:fs'

const EIO = -5

/** The negative errno FUSE expects for a failed call (EIO when the error carries none). */
export function fuseErrno (err: unknown): number {
  const value = (err as { errno?: number }).errno
  return typeof value === 'number' && value < 0 ? value : EIO
}

/** A file's stat as fuse-native's getattr answers it. */
export function fuseStat (st: fs.Stats): Record<string, unknown> {
  return {
    mode: st.mode, uid: st.uid, gid: st.gid, size: st.size, dev: st.dev, nlink: st.nlink, ino: st.ino,
    rdev: st.rdev, blksize: st.blksize, blocks: st.blocks, atime: st.atime, mtime: st.mtime, ctime: st.ctime
  }
}

/** fuse-native's statfs handler: the backing directory's file system, counts clamped to 32 bits. */
export function fuseStatfs (backing: string): (path: string, cb: (err: number, st?: unknown) => void) => void {
  return (_path, cb) => {
    try {
      const st = fs.statfsSync(backing)
      const clamp = (n: number): number => Math.min(n, 0xffffffff)
      cb(0, { bsize: st.bsize, frsize: st.bsize, blocks: clamp(st.blocks), bfree: clamp(st.bfree), bavail: clamp(st.bavail), files: clamp(st.files), ffree: clamp(st.ffree), favail: clamp(st.ffree), fsid: 0, flag: 0, namemax: 255 })
    } catch (err) { cb(fuseErrno(err)) }
  }
}
