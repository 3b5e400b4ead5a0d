// FUSE mount driver (fuse-native, libfuse 2): each mount point becomes a small file system holding
//   data                 the volume's bytes (size = volume size): dd, cp, cmp, fio work on it
//   README.txt           the volume's facts, for people
//   .galleonfs_metadata  the same as JSON, for programs
// so a daemon's `--mount-point /mnt/galleonfs` shows /mnt/galleonfs/<volume>/data.
//
// Every operation is answered asynchronously on the event loop (fuse-native hands the kernel's
// requests over from its own thread), so nothing blocks the loop. The process may read its own
// mounts with async fs calls; each such call holds one of libuv's thread-pool threads while the
// kernel waits for the answer, and the answer may itself need one (the file block store reads
// through the pool), so keep fewer concurrent in-process calls than UV_THREADPOOL_SIZE (default 4)
// minus one, or raise it. Never use the *Sync fs calls on a mount from the process serving it: the
// event loop would wait for itself.
//
// Writes are acknowledged to the kernel once accepted, like a page cache: they reach the volume in
// the background (at most 16 MiB pending per mount), a read waits for pending writes it overlaps,
// fsync waits for all of them and makes them durable, and a write that failed in the background is
// reported (EIO) by every later fsync, close and write until the volume is mounted again. Other
// ways into the volume (the API, NBD) see such writes once they landed: after an fsync or close
// through the mount; a snapshot waits for them. With the `sync` mount option every write is durable
// before it is acknowledged. There is no kernel page cache (direct_io): a read always asks the
// volume, so it sees writes made any other way. Unmounting is refused while a process has `data`
// open, unless forced; after that such a process gets EIO.
//
// Like a block device, `data` keeps its size: truncating to the size or less changes nothing (so
// `dd of=data` without conv=notrunc works), a larger size is refused (EFBIG), and a write past
// the end fails with ENOSPC. Writes come in pieces of up to 128 KiB (big_writes). The kernel
// leaves a FUSE file's times to the file system, so they are kept here (see #ops): they start at
// the mount's time; data's mtime and ctime move when its content changes (through the mount at
// once, another way when the mount notices), touch and cp -p set its times; atimes follow
// relatime, `noatime` or `nodiratime`. The three names are fixed (EACCES for creating, removing or
// renaming, EPERM for a chmod or chown that changes something, or setting the times of any but
// data), and a read-only mount is mounted `ro`, so the kernel refuses every change (EROFS).

import { createRequire } from 'node:module'
import { access, constants, readdir, readlink, realpath, rmdir, stat } from 'node:fs/promises'
import { childEnvironment } from '../../src/child-env.js'
import { dirname, resolve as resolvePath } from 'node:path'
import { GalleonError } from '../../src/errors.js'
import { makeDirectories } from '../../src/make-directories.js'
import { nativeAead } from '../../src/crypto/native-aead.js'
import type { MountDriver, MountedVolume } from '../../src/drivers.js'
import { ReadAhead } from './read-ahead.js'
import { fusermount } from './fusermount.js'
import { BUILT_IN_DRIVER_WORDS } from '../../src/mount/mount-words.js'

/**
 * The option words passed to libfuse 2 as mount flags (the kernel keeps them on the mount, as
 * findmnt shows). libfuse 2 refuses `nodiratime` and `relatime`: those are applied in the access
 * times getattr reports only (see #ops), as `noatime` is too.
 */
const LIBFUSE_FLAGS: readonly string[] = Object.freeze(['allow_other', 'noatime', 'nodev', 'nosuid', 'noexec'])

/** Bytes of accepted writes a mount may have on their way to the volume. */
const WRITE_BEHIND_BYTES = 16 * 1024 * 1024

/**
 * Writes accepted before they are stored: overlapping writes are issued in order, reads wait for
 * the writes they overlap, and a failure is kept for the next drain().
 */
class WriteBehind {
  readonly #pending = new Set<{ start: number, end: number, done: Promise<void> }>()
  #bytes = 0
  #failure: unknown

  /** Accepts a write (waiting only when too much is pending); `store` does the real write. */
  async accept (start: number, data: Uint8Array, store: (start: number, data: Uint8Array) => Promise<void>): Promise<void> {
    if (this.#failure !== undefined) throw this.#failure
    while (this.#bytes >= WRITE_BEHIND_BYTES) await Promise.race([...this.#pending].map(async (entry) => await entry.done))
    const before = this.#overlapping(start, start + data.byteLength)
    const entry = { start, end: start + data.byteLength, done: Promise.resolve() }
    entry.done = (async () => {
      if (before.length > 0) await Promise.all(before)
      await store(start, data)
    })().catch((err: unknown) => { this.#failure ??= err }).finally(() => {
      this.#pending.delete(entry)
      this.#bytes -= data.byteLength
    })
    this.#pending.add(entry)
    this.#bytes += data.byteLength
  }

  /** Waits for the pending writes that overlap [start, end). */
  async settle (start: number, end: number): Promise<void> {
    const waits = this.#overlapping(start, end)
    if (waits.length > 0) await Promise.all(waits)
  }

  /**
   * Waits for every pending write; throws if any write ever failed in the background. The failure
   * stays: every later fsync, close and write of the mount reports it, until it is mounted again
   * (like a file system that turned read-only after an I/O error), so no writer misses it.
   */
  async drain (): Promise<void> {
    while (this.#pending.size > 0) await Promise.all([...this.#pending].map(async (entry) => await entry.done))
    if (this.#failure !== undefined) throw this.#failure
  }

  /** What failed in the background, if anything. */
  get failure (): unknown { return this.#failure }

  /** Waits until nothing is pending, without reporting failures (those are the mount's writers' to hear). */
  async settleAll (): Promise<void> {
    while (this.#pending.size > 0) await Promise.all([...this.#pending].map(async (entry) => await entry.done))
  }

  #overlapping (start: number, end: number): Array<Promise<void>> {
    const out: Array<Promise<void>> = []
    for (const entry of this.#pending) if (entry.start < end && start < entry.end) out.push(entry.done)
    return out
  }
}
const MAX_WRITE = 128 * 1024
const FILES = ['data', 'README.txt', '.galleonfs_metadata'] as const
const DAY_MS = 24 * 60 * 60 * 1000
/** Past this (year 275760, as far as a JavaScript Date goes) a time is fuse-native's wrap-around of one before 1970. */
const MAX_TIME_MS = 8.64e15

/** A name's times as a stat shows them, in ms since the epoch. */
interface Times { atime: number, mtime: number, ctime: number }

/** One mount: the FUSE instance, its write-behind, its open handles of `data`, and whether it still serves. */
interface MountState {
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
interface FuseInstance {
  mount: (cb: (err: Error | null) => void) => void
  unmount: (cb: (err: Error | null) => void) => void
}
interface FuseClass {
  new (mnt: string, ops: Record<string, unknown>, opts: Record<string, unknown>): FuseInstance
  EIO: number
  ENOENT: number
  EROFS: number
  ENOSPC: number
  EFBIG: number
  EACCES: number
  EPERM: number
  EISDIR: number
  EINVAL: number
  unmount: (mnt: string, cb: (err: Error | null) => void) => void
  prototype: { _fuseOptions: () => string }
}

let loaded: FuseClass | undefined

/** Loads fuse-native, with the options it lacks (big writes); a clear error when FUSE is missing. */
async function loadFuse (): Promise<FuseClass> {
  if (loaded !== undefined) return loaded
  try {
    await access('/dev/fuse', constants.R_OK | constants.W_OK)
  } catch (err) {
    throw new GalleonError('BACKEND_UNAVAILABLE', `FUSE mounts need /dev/fuse, which this machine does not offer (${(err as Error).message}); load the fuse kernel module (modprobe fuse), or in a container pass --device /dev/fuse --cap-add SYS_ADMIN`, { cause: err })
  }
  let Fuse: FuseClass
  try {
    Fuse = createRequire(import.meta.url)('fuse-native') as FuseClass
  } catch (err) {
    throw new GalleonError('BACKEND_UNAVAILABLE', `FUSE mounts need the fuse-native package and libfuse 2: install Debian's libfuse2 and fuse packages (apt-get install libfuse2 fuse), then reinstall galleonfs (${(err as Error).message})`, { cause: err })
  }
  try {
    await fusermount(['-V'], childEnvironment())
  } catch (err) {
    throw new GalleonError('BACKEND_UNAVAILABLE', `FUSE mounts need the fusermount program: install Debian's fuse package (apt-get install fuse) (${(err as Error).message})`, { cause: err })
  }
  guardFuseThreads()
  loaded = Fuse
  return Fuse
}

/**
 * fuse-native's native binding (the object its JavaScript calls). node-gyp-build is fuse-native's
 * dependency, not ours, so it is resolved from fuse-native's directory: with an isolated
 * node_modules (pnpm, or npm nesting another version) galleonfs itself cannot see it.
 */
function fuseBinding (): unknown {
  const main = createRequire(import.meta.url).resolve('fuse-native')
  return createRequire(main)('node-gyp-build')(dirname(main))
}

/** Marks fuse-native's binding once its mount call is wrapped (the binding is one per process). */
const GUARDED = Symbol.for('galleonfs.fuseThreadsGuarded')

/**
 * Makes fuse-native start its threads (the mount's thread, and libfuse's workers it creates) with
 * every signal blocked, through the native addon (see callWithSignalsBlocked in
 * native/aead/aead.c). libfuse 2 cancels its workers when a mount ends; one cancelled while running
 * libuv's SIGCHLD handler took libuv's signal lock with it, and the process never reaped a child
 * again (seen as a test waiting for ever on a python child left a zombie). Without the addon
 * (not built, or GALLEONFS_NATIVE_AEAD=0) the threads start as fuse-native starts them.
 * Returns whether the guard is in place.
 */
export function guardFuseThreads (): boolean {
  const addon = nativeAead()
  if (addon === undefined) return false
  const binding = fuseBinding() as { fuse_native_mount: (...args: unknown[]) => unknown, [GUARDED]?: true }
  if (binding[GUARDED] === true) return true
  const mount = binding.fuse_native_mount
  binding.fuse_native_mount = (...args: unknown[]) => addon.callWithSignalsBlocked(() => mount.apply(binding, args))
  binding[GUARDED] = true
  return true
}

/** Whether `path` is a mount point now (Linux: /proc/self/mountinfo); `unknown` when that cannot be told. */
async function isMountPoint (path: string, unknown = true): Promise<boolean> {
  const { readFile } = await import('node:fs/promises')
  const info = await readFile('/proc/self/mountinfo', 'utf8').catch(() => undefined)
  if (info === undefined) return unknown
  // The kernel writes space, tab, newline and backslash in a path as octal escapes (\040 ...).
  return info.split('\n').some((line) => line.split(' ')[4]?.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))) === path)
}

/** fuse-native's own last step of an unmount: stops its thread for `path`. */
function stopNativeThread (path: string, fuse: FuseInstance): void {
  const binding = fuseBinding() as { fuse_native_unmount: (mnt: string, thread: unknown) => void }
  binding.fuse_native_unmount(path, (fuse as unknown as { _thread: unknown })._thread)
}

/**
 * fuse-native 2.2.6's per-thread request record (fuse_thread_locals_t in fuse-native.c), as built
 * on 64-bit little-endian Linux (x64, arm64): its size, and the byte offsets of the operation's
 * number and of a utimens request's two times (milliseconds, 64-bit unsigned integers). Checked
 * against the structure compiled with fuse-native's own flags (offsetof, sizeof).
 */
const RECORD_SIZE = 360
const RECORD_OP = 8
const RECORD_ATIME = 104
const RECORD_MTIME = 112

/**
 * fuse-native 2.2.6 hands a file system's utimens the access time twice: its C side reads both
 * times of the request into the thread's request record, then passes the atime as both arguments
 * (FUSE_METHOD_VOID(utimens, ...) in fuse-native.c), so `touch -r`, `cp -p` and the like would set
 * mtime to the source's atime. fuse-native offers no other way to the mtime (it has no setattr),
 * but the record is the buffer it hands its handler first, so this wraps the mount's utimens
 * handler (before mounting: fuse-native gives libfuse its handlers then) to pass the mtime from
 * there. Only when the record is the one laid out above: on Linux, of that size, its operation
 * utimens and its atime the one passed, and only when the two times passed are equal (a
 * fuse-native that passes both is left alone). Elsewhere (32-bit, big-endian: the size or the
 * operation differs) what fuse-native passes stays: mtime set to the atime, as before.
 * Exported for its tests (test/fuse-utimens-record.test.ts), which check each of those conditions.
 */
export function passUtimensMtime (fuse: object): void {
  if (process.platform !== 'linux') return
  const op = (fuseBinding() as { op_utimens?: unknown }).op_utimens
  const handlers = (fuse as unknown as { _handlers?: unknown[] })._handlers
  if (typeof op !== 'number' || !Array.isArray(handlers)) return
  const handler = handlers[op]
  if (typeof handler !== 'function') return
  handlers[op] = function (this: unknown, record: unknown, ...args: unknown[]): unknown {
    // args: the operation's number, the path, then atime and mtime as low and high 32-bit halves.
    if (record instanceof Uint8Array && record.byteLength === RECORD_SIZE && args.length === 6 && args[2] === args[4] && args[3] === args[5]) {
      const view = new DataView(record.buffer, record.byteOffset, record.byteLength)
      if (view.getUint32(RECORD_OP, true) === op && view.getUint32(RECORD_ATIME, true) === args[2] && view.getUint32(RECORD_ATIME + 4, true) === args[3]) {
        args[4] = view.getUint32(RECORD_MTIME, true)
        args[5] = view.getUint32(RECORD_MTIME + 4, true)
      }
    }
    return (handler as (...all: unknown[]) => unknown).call(this, record, ...args)
  }
}

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

/**
 * Mount points this process serves (every FuseMountDriver in it), as the kernel names them: with
 * symbolic links resolved, as /proc/self/fd shows the files open under them.
 */
const servedHere = new Set<string>()

/**
 * Files under `points` that this process has open itself (its descriptors, from /proc/self/fd).
 * Reading a descriptor's link asks the kernel for its path, not the file system behind it.
 */
async function ownFilesOpenUnder (points: ReadonlySet<string>): Promise<string[]> {
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
async function removeMadeDirectories (path: string, madeFrom: string | undefined): Promise<void> {
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

/** Mount driver presenting each mount as a FUSE file system. */
export class FuseMountDriver implements MountDriver {
  readonly name = 'fuse'
  /**
   * The option words applied besides ro, rw, sync, async and encrypted (others are refused by
   * mountVolume and createStorageClass): the mount flags allow_other, noatime, nodev, nosuid and
   * noexec, which libfuse 2 passes to the kernel (findmnt shows them on the mount), and the access
   * time words noatime, nodiratime and relatime, which getattr applies.
   */
  readonly options = BUILT_IN_DRIVER_WORDS
  readonly #Fuse: FuseClass
  readonly #mounts = new Map<string, MountState>()
  /** Each mount point's path with symbolic links resolved (see servedHere). */
  readonly #kernelPaths = new Map<string, string>()

  private constructor (Fuse: FuseClass) {
    this.#Fuse = Fuse
  }

  /** Checks FUSE is usable here (BACKEND_UNAVAILABLE naming what to install if not). */
  static async create (): Promise<FuseMountDriver> {
    return new FuseMountDriver(await loadFuse())
  }

  async mount (volume: MountedVolume): Promise<void> {
    const path = volume.path
    await this.#clearStale(path)
    // A live mount there (another process's, or another instance's in this one) stays: FUSE would
    // refuse with "Mountpoint in use", which is no I/O error.
    if (await isMountPoint(path, false)) throw new GalleonError('BUSY', `${path} is already a mount point (findmnt ${path} shows what is mounted there); unmount it first or pick another path`)
    const madeFrom = await makeDirectories(path).catch((err: NodeJS.ErrnoException) => {
      throw new GalleonError('IO_ERROR', `could not create the mount point ${path}: ${err.message}`, { cause: err })
    })
    const info = await stat(path)
    if (!info.isDirectory()) throw new GalleonError('INVALID_ARGUMENT', `the mount point ${path} is not a directory`)
    // Before the mount: resolving it after would ask the new mount (and a link may lead anywhere).
    const kernelPath = await realpath(path)
    // Not as root, libfuse mounts through fusermount, which it starts from the mount call, on the
    // event loop's thread: a file of this process's own mounts open in it would make that child
    // wait at exec for a flush only the event loop can answer (see src/off-loop-command.ts), and
    // the process would hang for good. Refused instead. (Root mounts without a child.)
    if ((process.getuid?.() ?? 0) !== 0) {
      const open = await ownFilesOpenUnder(servedHere)
      if (open.length > 0) throw new GalleonError('BUSY', `this process has ${open.join(', ')} open, a file of one of its own FUSE mounts; not running as root, a mount starts fusermount from the event loop's thread, which would then wait for ever. Close it before mounting (or mount as root)`)
    }
    const state: MountState = { fuse: undefined, writes: new WriteBehind(), readAhead: new ReadAhead(volume.data), openData: 0, active: true, madeFrom }
    // No operation timeout: fuse-native's default (15 s) would answer a slow request with ETIMEDOUT
    // and then let the late answer write into a buffer it already released.
    const fuse = new this.#Fuse(path, this.#ops(volume, state), { force: false, mkdir: true, timeout: false, fsname: `galleonfs:${volume.id.slice(0, 8)}` })
    state.fuse = fuse
    passUtimensMtime(fuse)
    // The options fuse-native does not expose: large writes (whole 128 KiB requests, not 4 KiB).
    const base = (fuse as unknown as { _fuseOptions: () => string })._fuseOptions.bind(fuse)
    ;(fuse as unknown as { _fuseOptions: () => string })._fuseOptions = () => {
      const own = base()
      // direct_io: no kernel page cache, so reads through the mount always see what the volume holds
      // (writes through the API, NBD, another mount or a revert are never hidden by stale pages).
      // attr_timeout=0: the kernel asks for sizes each time instead of keeping them a second, so
      // `stat data` shows an online expansion at once (and README.txt's size matches its text).
      // ro: the kernel itself refuses writes to a read-only mount (EROFS), access(W_OK) included,
      // and statvfs reports ST_RDONLY.
      // The words of the call and the storage class that are libfuse mount flags (only those:
      // libfuse refuses others, and a failed fuse-native mount can leave the mount point behind).
      const words = LIBFUSE_FLAGS.filter((word) => volume.options.includes(word))
      const extra = `big_writes,max_write=${MAX_WRITE},direct_io,attr_timeout=0${volume.readOnly ? ',ro' : ''}${words.map((word) => `,${word}`).join('')}`
      return own === '' ? `-o${extra}` : `${own},${extra}`
    }
    await new Promise<void>((resolve, reject) => fuse.mount((err) => err === null || err === undefined ? resolve() : reject(err))).catch(async (err: Error) => {
      await removeMadeDirectories(path, madeFrom)
      throw new GalleonError('IO_ERROR', `could not mount FUSE at ${path}: ${err.message}`, { cause: err })
    })
    this.#mounts.set(path, state)
    this.#kernelPaths.set(path, kernelPath)
    servedHere.add(kernelPath)
  }

  /** Waits until every acknowledged write of the mount is in the volume (before a snapshot, say). */
  async quiesce (path: string): Promise<void> {
    await this.#mounts.get(path)?.writes.settleAll()
  }

  /**
   * Unmounts: refused with BUSY while a process has `data` open, unless `force`. Every acknowledged
   * write reaches the volume first; one that failed in the background is reported (IO_ERROR) after
   * the mount is gone. Handles kept open past a forced unmount get EIO from then on.
   */
  async unmount (path: string, options: { force?: boolean } = {}): Promise<void> {
    const state = this.#mounts.get(path)
    if (state === undefined) return
    // The kernel tells of a close (release) asynchronously: give handles just closed a moment.
    for (let waited = 0; state.openData > 0 && options.force !== true && waited < 1000; waited += 20) await new Promise((resolve) => setTimeout(resolve, 20))
    if (state.openData > 0 && options.force !== true) {
      throw new GalleonError('BUSY', `${path}/data is open in ${state.openData} place(s); close it (fuser -m ${path} shows who has it), or unmount with { force: true }`)
    }
    let failure: unknown
    // New writes (and opens) get EIO from here on: a forced unmount waits only for the writes
    // already accepted, not for a writer that keeps the write-behind buffer full.
    state.active = false
    await state.writes.drain().catch((err: unknown) => { failure = err })
    state.readAhead.close()
    const fuse = state.fuse as FuseInstance
    // Not fuse.unmount(): fuse-native runs `fusermount -uz "<path>"` through a shell, which expands
    // $ and backticks in the path (unmounting another mount, or running a command). fusermount is
    // run here without a shell, then fuse-native's last step stops its thread.
    // From a worker thread: see fusermount.ts (this process may have one of its mounts' files open).
    await fusermount(['-uz', path], childEnvironment()).then(() => { stopNativeThread(path, fuse) }, async (err: Error) => {
      // Unmounted from outside (fusermount -u, umount): fusermount fails, but fuse-native's thread
      // still runs and would keep the process alive. Stop it directly.
      if (!await isMountPoint(path)) {
        stopNativeThread(path, fuse)
        return
      }
      state.active = true
      throw new GalleonError('BUSY', `could not unmount ${path}: ${err.message}; a process may still use it (fuser -m ${path})`, { cause: err })
    })
    this.#mounts.delete(path)
    const kernelPath = this.#kernelPaths.get(path)
    this.#kernelPaths.delete(path)
    if (kernelPath !== undefined) servedHere.delete(kernelPath)
    // The mount point goes with the mount when the mount made it (as the daemon's <mount-point>/<volume>).
    await removeMadeDirectories(path, state.madeFrom)
    if (failure !== undefined) {
      throw new GalleonError('IO_ERROR', `${path} is unmounted, but writes acknowledged through it failed to reach the volume: ${(failure as Error)?.message ?? String(failure)}`, { cause: failure })
    }
  }

  async close (): Promise<void> {
    for (const path of [...this.#mounts.keys()]) await this.unmount(path, { force: true }).catch(() => {})
  }

  /** A mount left behind by a process that died reads as "transport endpoint is not connected": lazily unmount it. */
  async #clearStale (path: string): Promise<void> {
    try {
      await stat(path)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOTCONN') {
        await fusermount(['-uz', path], childEnvironment()).catch((cause: Error) => {
          throw new GalleonError('BUSY', `${path} is a stale FUSE mount that could not be cleared (${cause.message}); run fusermount -uz ${path}`, { cause })
        })
      }
    }
  }

  #ops (volume: MountedVolume, state: MountState): Record<string, unknown> {
    const writes = state.writes
    const Fuse = this.#Fuse
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
        writes.accept(pos, data, store).then(() => cb(n), (err) => fail(cb, err))
      },
      // A truncate that succeeds moves data's mtime and ctime, as it does a regular file's.
      truncate: (path: string, size: number, cb: Callback) => { this.#truncate(volume, state, path, size, cb, touched) },
      ftruncate: (path: string, _fd: number, size: number, cb: Callback) => { this.#truncate(volume, state, path, size, cb, touched) },
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

  #truncate (volume: MountedVolume, state: MountState, path: string, size: number, cb: Callback, touched: () => void): void {
    const Fuse = this.#Fuse
    if (path !== '/data') { cb(Fuse.EACCES); return }
    if (volume.readOnly) { cb(Fuse.EROFS); return }
    // A descriptor kept open past a forced unmount gets EIO for this too, as for reads and writes.
    if (!state.active) { cb(Fuse.EIO); return }
    // A disk keeps its size: shrinking requests (O_TRUNC) change nothing, growing ones are refused.
    if (size > volume.data.size()) { cb(Fuse.EFBIG); return }
    touched()
    cb(0)
  }
}
