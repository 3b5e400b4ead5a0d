// The file system a FUSE mount serves (data, README.txt, .galleonfs_metadata): fuse-native's
// operations over one mounted volume, each answered on the event loop, and the names' times.

import type { MountedVolume } from '../../src/drivers.js'
import type { ReadAhead } from './read-ahead.js'
import type { WriteBehind } from './write-behind.js'
import type { FuseClass, FuseInstance } from './binding.js'

const FILES = ['data', 'README.txt', '.galleonfs_metadata'] as const
const DAY_MS = 24 * 60 * 60 * 1000
/** Past this (year 275760, as far as a JavaScript Date goes) a time is fuse-native's wrap-around of one before 1970. */
const MAX_TIME_MS = 8.64e15

/** A name's times as a stat shows them, in ms since the epoch. */
interface Times { atime: number, mtime: number, ctime: number }

/** One mount: the FUSE instance, its write-behind, its open handles of `data`, and whether it still serves. */
export interface MountState {
  fuse: FuseInstance | undefined
  readonly writes: WriteBehind
  readonly readAhead: ReadAhead
  openData: number
  /** False once unmounted: a process that kept a handle gets EIO, never the volume. */
  active: boolean
  /** The top-most directory the mount made for its mount point (removed again at unmount), if any. */
  readonly madeFrom: string | undefined
}

type Callback = (code: number, ...results: unknown[]) => void

/**
 * The errno a failed volume call answers the kernel with: a read-only volume EROFS, a write past
 * the end or a full disk ENOSPC (as a file system reports it), anything else EIO.
 */
function errnoOf (Fuse: FuseClass, err: unknown): number {
  switch ((err as { code?: string } | undefined)?.code) {
    case 'READ_ONLY': return Fuse.EROFS
    case 'OUT_OF_RANGE': case 'NO_SPACE': return Fuse.ENOSPC
    default: return Fuse.EIO
  }
}

/** fuse-native's operations for one mount of `volume` (see the comments on times below). */
export function fuseOperations (Fuse: FuseClass, volume: MountedVolume, state: MountState): Record<string, unknown> {
  const writes = state.writes
  const uid = process.getuid?.() ?? 0
  const gid = process.getgid?.() ?? 0
  const text = (name: string): Buffer | undefined => name === '/README.txt' ? Buffer.from(volume.readme()) : name === '/.galleonfs_metadata' ? Buffer.from(volume.metadata()) : undefined
  // Times. The kernel leaves every time of a FUSE file to the file system (whatever the mount's
  // flags), so they are kept here, in memory for the mount's life, as a device node's are on
  // devtmpfs. Each name's three times start at the mount's time (the time listMounts() shows).
  // mtime and ctime are what make, rsync, cp -u and backup programs compare, so they move only
  // when the content does:
  // - data: a write or truncate through this mount moves both to its time (the write path stores
  //   one number, writtenAt; the times fold it in when asked). A change made another way (the
  //   API, NBD, another mount, a revert) moves them to the moment this mount first notices it
  //   (a stat, read or touch): later than the change, never earlier, so nothing compares as
  //   unchanged that changed (data.version(), the volume's own change stamp, tells; a change
  //   made while this mount's own writes are being stored is taken for theirs). An online
  //   expansion is a change (new bytes, read as zeros). A replicated volume whose primary is
  //   another node (no version) is seen changing only through this mount and in size.
  //   utimens (touch, touch -d, cp -p onto data) sets atime and mtime as asked, ctime to now.
  // - README.txt and .galleonfs_metadata: moved to the moment a stat or read first sees their
  //   text differ (an expansion, a label); the directory's never move. Their times are not the
  //   caller's to set (EPERM, like a chmod).
  // Access times follow the mount's words: relatime, the kernel's default (which the word asks for
  // too), moves a name's atime to the time of a read (the directory: a listing) when the atime
  // is not after its mtime and ctime, or is a day old; `noatime` (which wins over `relatime`, as
  // in the kernel) never moves one, `nodiratime` never the directory's. utimens sets data's atime
  // either way, as in the kernel.
  const mountedAt = volume.mountedAt === undefined ? Date.now() : Date.parse(volume.mountedAt)
  const times = new Map<string, Times>(['/', ...FILES.map((name) => `/${name}`)].map((path) => [path, { atime: mountedAt, mtime: mountedAt, ctime: mountedAt }]))
  const timesOf = (path: string): Times => times.get(path) as Times
  const dataTimes = timesOf('/data')
  const noatime = volume.options.includes('noatime')
  const nodiratime = noatime || volume.options.includes('nodiratime')
  // The time of the latest change through this mount not yet in dataTimes (0: none), and the
  // volume's version and size the times account for. Each write through the mount sets
  // writtenAt, and once stored sets seen, so that its own change is not taken for one made
  // elsewhere (a change made elsewhere while such a write is being stored, milliseconds, is then
  // dated by that write).
  let writtenAt = 0
  let seen = volume.data.version()
  let seenSize = volume.data.size()
  const landed = (): void => { seen = volume.data.version() }
  /** data's times, with the changes made since they were last asked for. */
  const dataNow = (): Times => {
    if (writtenAt !== 0) {
      dataTimes.mtime = dataTimes.ctime = writtenAt
      writtenAt = 0
    }
    const version = volume.data.version()
    const size = volume.data.size()
    if (version !== seen || size !== seenSize) {
      seen = version
      seenSize = size
      dataTimes.mtime = dataTimes.ctime = Math.max(Date.now(), dataTimes.ctime)
    }
    return dataTimes
  }
  const shown = new Map<string, Buffer>()
  /** The times of README.txt or .galleonfs_metadata, given its text now. */
  const textNow = (path: string, body: Buffer): Times => {
    const times = timesOf(path)
    const before = shown.get(path)
    if (before !== undefined && !before.equals(body)) times.mtime = times.ctime = Math.max(Date.now(), times.ctime)
    shown.set(path, body)
    return times
  }
  for (const path of ['/README.txt', '/.galleonfs_metadata']) shown.set(path, text(path) as Buffer)
  /** A read of `path` (the directory: a listing): relatime, unless noatime or nodiratime. */
  const accessed = (path: string, times: Times): void => {
    if (path === '/' ? nodiratime : noatime) return
    const now = Date.now()
    if (times.atime <= times.mtime || times.atime <= times.ctime || now - times.atime >= DAY_MS) times.atime = now
  }
  // Numbers, not Dates: fuse-native takes milliseconds as they are.
  const stats = (times: Times, mode: number, size: number): Record<string, unknown> =>
    ({ mtime: times.mtime, atime: times.atime, ctime: times.ctime, nlink: 1, size, mode, uid, gid, blksize: 4096, blocks: Math.ceil(size / 512) })
  const fail = (cb: Callback, err: unknown): void => { cb(errnoOf(Fuse, err)) }
  // Permission bits of what is at `path` (the layout is fixed: nothing here changes them).
  const modeOf = (path: string): number => path === '/' ? 0o755 : path === '/data' && !volume.readOnly ? 0o644 : 0o444
  // Unsigned 32-bit -1: "leave as it is" in a chown.
  const unchanged = (id: number, own: number): boolean => id === own || id === -1 || id === 0xffffffff
  const store = async (start: number, data: Uint8Array): Promise<void> => {
    await volume.data.write(start, data)
    landed()
  }
  const touched = (): void => { writtenAt = Date.now() }
  return {
    readdir: (path: string, cb: Callback) => {
      if (path !== '/') { cb(Fuse.ENOENT); return }
      accessed(path, timesOf(path))
      cb(0, [...FILES])
    },
    getattr: (path: string, cb: Callback) => {
      if (path === '/') { cb(0, stats(timesOf(path), 0o40000 | modeOf(path), 4096)); return }
      if (path === '/data') { cb(0, stats(dataNow(), 0o100000 | modeOf(path), volume.data.size())); return }
      const body = text(path)
      if (body === undefined) { cb(Fuse.ENOENT); return }
      cb(0, stats(textNow(path, body), 0o100000 | modeOf(path), body.byteLength))
    },
    open: (path: string, flags: number, cb: Callback) => {
      if (!state.active) { cb(Fuse.EIO); return }
      const writing = (flags & 3) !== 0
      if (path === '/data') {
        if (writing && volume.readOnly) { cb(Fuse.EROFS); return }
        state.openData++
        cb(0, 42)
        return
      }
      if (text(path) === undefined) { cb(Fuse.ENOENT); return }
      cb(writing ? Fuse.EACCES : 0, 43)
    },
    release: (path: string, _fd: number, cb: Callback) => {
      if (path === '/data' && state.openData > 0) state.openData--
      cb(0)
    },
    read: (path: string, _fd: number, buf: Buffer, len: number, pos: number, cb: Callback) => {
      if (path !== '/data') {
        const body = text(path)
        if (body === undefined) { cb(Fuse.ENOENT); return }
        const n = Math.max(0, Math.min(len, body.byteLength - pos))
        if (n > 0) body.copy(buf, 0, pos, pos + n)
        accessed(path, textNow(path, body))
        cb(n)
        return
      }
      if (!state.active) { cb(Fuse.EIO); return }
      const n = Math.max(0, Math.min(len, volume.data.size() - pos))
      if (n === 0) { accessed(path, dataNow()); cb(0); return }
      writes.settle(pos, pos + n).then(async () => await state.readAhead.read(pos, n)).then((bytes) => {
        buf.set(bytes, 0)
        accessed(path, dataNow())
        cb(n)
      }, (err) => fail(cb, err))
    },
    write: (path: string, _fd: number, buf: Buffer, len: number, pos: number, cb: Callback) => {
      if (path !== '/data') { cb(Fuse.EACCES); return }
      if (!state.active) { cb(Fuse.EIO); return }
      if (volume.readOnly) { cb(Fuse.EROFS); return }
      const room = volume.data.size() - pos
      if (room <= 0) { cb(Fuse.ENOSPC); return }
      const n = Math.min(len, room)
      // The kernel's buffer is reused once we answer: copy what we keep.
      const data = new Uint8Array(buf.subarray(0, n))
      state.readAhead.clear()
      writtenAt = Date.now()
      if (volume.sync) {
        volume.data.write(pos, data).then(() => { landed(); cb(n) }, (err) => fail(cb, err))
        return
      }
      // A volume that knows its version is served here, where writes keep their call order.
      writes.accept(pos, data, store, volume.data.version() !== undefined).then(() => cb(n), (err) => fail(cb, err))
    },
    // A truncate that succeeds moves data's mtime and ctime, as it does a regular file's.
    truncate: (path: string, size: number, cb: Callback) => { truncate(Fuse, volume, state, path, size, cb, touched) },
    ftruncate: (path: string, _fd: number, size: number, cb: Callback) => { truncate(Fuse, volume, state, path, size, cb, touched) },
    fsync: (path: string, _fd: number, _datasync: boolean, cb: Callback) => {
      if (path !== '/data' || volume.readOnly) { cb(0); return }
      if (!state.active) { cb(Fuse.EIO); return }
      writes.drain().then(async () => { await volume.data.flush() }).then(() => cb(0), (err) => fail(cb, err))
    },
    // close(2): what was written is in the volume (not yet durable: that is fsync's job), and a
    // background failure is reported here.
    flush: (path: string, _fd: number, cb: Callback) => {
      if (path !== '/data' || volume.readOnly) { cb(0); return }
      writes.drain().then(() => cb(0), (err) => fail(cb, err))
    },
    statfs: (_path: string, cb: Callback) => {
      // fuse-native passes the block counts as 32-bit numbers: past 2^32 blocks of 4 KiB (16 TiB)
      // the unit doubles until the count fits, so df shows the volume's real size.
      const size = volume.data.size()
      let unit = 4096
      while (Math.ceil(size / unit) > 0xffffffff) unit *= 2
      cb(0, { bsize: unit, frsize: unit, blocks: Math.ceil(size / unit), bfree: 0, bavail: 0, files: FILES.length, ffree: 0, favail: 0, fsid: 0, flag: volume.readOnly ? 1 : 0, namemax: 255 })
    },
    // touch, touch -d, cp -p and the like: data takes the times asked for, and ctime is now. libfuse
    // 2 passes a request only when it sets both times, each in milliseconds, "now" as the kernel's
    // time (touch -a and touch -m alone reach no file system: libfuse answers them itself, with
    // success, and nothing changes); see passUtimensMtime for the mtime. A time before 1970
    // arrives wrapped around (fuse-native's unsigned milliseconds): refused (EINVAL) rather than
    // stored as a time far in the future. README.txt, .galleonfs_metadata and the directory keep
    // times of their own (EPERM, as for a chmod).
    utimens: (path: string, atime: number, mtime: number, cb: Callback) => {
      if (path !== '/data') { cb(FILES.some((name) => `/${name}` === path) || path === '/' ? Fuse.EPERM : Fuse.ENOENT); return }
      if (volume.readOnly) { cb(Fuse.EROFS); return }
      if (!(Number.isSafeInteger(atime) && Number.isSafeInteger(mtime) && atime < MAX_TIME_MS && mtime < MAX_TIME_MS)) { cb(Fuse.EINVAL); return }
      const times = dataNow()
      times.atime = atime
      times.mtime = mtime
      times.ctime = Math.max(Date.now(), times.ctime)
      cb(0)
    },
    // Modes and owners are fixed: EPERM (as chmod(2) and chown(2) refuse), except for a call
    // that changes nothing (cp -p, install -m 644 onto data), which succeeds.
    chmod: (path: string, mode: number, cb: Callback) => { cb((mode & 0o7777) === modeOf(path) ? 0 : Fuse.EPERM) },
    chown: (_path: string, owner: number, group: number, cb: Callback) => { cb(unchanged(owner, uid) && unchanged(group, gid) ? 0 : Fuse.EPERM) },
    // The directory's entries are fixed: nothing is created, removed or renamed in it.
    create: (_path: string, _mode: number, cb: Callback) => { cb(Fuse.EACCES) },
    unlink: (_path: string, cb: Callback) => { cb(Fuse.EACCES) },
    mkdir: (_path: string, _mode: number, cb: Callback) => { cb(Fuse.EACCES) },
    symlink: (_target: string, _path: string, cb: Callback) => { cb(Fuse.EACCES) },
    rename: (_src: string, _dest: string, cb: Callback) => { cb(Fuse.EACCES) },
    // Without these the kernel answers a hard link EPERM and a FIFO or device node ENOSYS.
    link: (_src: string, _dest: string, cb: Callback) => { cb(Fuse.EACCES) },
    mknod: (_path: string, _mode: number, _dev: number, cb: Callback) => { cb(Fuse.EACCES) }
  }
}

function truncate (Fuse: FuseClass, volume: MountedVolume, state: MountState, path: string, size: number, cb: Callback, touched: () => void): void {
  if (path !== '/data') { cb(Fuse.EACCES); return }
  if (volume.readOnly) { cb(Fuse.EROFS); return }
  // A descriptor kept open past a forced unmount gets EIO for this too, as for reads and writes.
  if (!state.active) { cb(Fuse.EIO); return }
  // A disk keeps its size: shrinking requests (O_TRUNC) change nothing, growing ones are refused.
  if (size > volume.data.size()) { cb(Fuse.EFBIG); return }
  touched()
  cb(0)
}
