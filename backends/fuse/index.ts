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
// through the mount, or a flush of the volume; a snapshot waits for them. With the `sync` mount option every write is durable
// before it is acknowledged. There is no kernel page cache (direct_io): a read always asks the
// volume, so it sees writes made any other way. Unmounting is refused while a process has `data`
// open, unless forced; after that such a process gets EIO.
//
// Like a block device, `data` keeps its size: truncating to the size or less changes nothing (so
// `dd of=data` without conv=notrunc works), a larger size is refused (EFBIG), and a write past
// the end fails with ENOSPC. Writes come in pieces of up to 128 KiB (big_writes). The kernel
// leaves a FUSE file's times to the file system, so they are kept here (see operations.ts): they start at
// the mount's time; data's mtime and ctime move when its content changes (through the mount at
// once, another way when the mount notices), touch and cp -p set its times; atimes follow
// relatime, `noatime` or `nodiratime`. The three names are fixed (EACCES for creating, removing or
// renaming, EPERM for a chmod or chown that changes something, or setting the times of any but
// data), and a read-only mount is mounted `ro`, so the kernel refuses every change (EROFS).

import { realpath, stat } from 'node:fs/promises'
import { childEnvironment } from '../../src/child-env.js'
import { GalleonError } from '../../src/errors.js'
import { makeDirectories } from '../../src/make-directories.js'
import type { MountDriver, MountedVolume } from '../../src/drivers.js'
import { ReadAhead } from './read-ahead.js'
import { fusermount } from './fusermount.js'
import { BUILT_IN_DRIVER_WORDS } from '../../src/mount/mount-words.js'
import { detachOperations, loadFuse, passUtimensMtime, stopNativeThread, type FuseClass, type FuseInstance } from './binding.js'
import { isMountPoint, ownFilesOpenUnder, removeMadeDirectories, servedHere } from './mount-points.js'
import { fuseOperations, type MountState } from './operations.js'
import { WriteBehind } from './write-behind.js'

export { guardFuseThreads, passUtimensMtime } from './binding.js'

/**
 * The option words passed to libfuse 2 as mount flags (the kernel keeps them on the mount, as
 * findmnt shows). libfuse 2 refuses `nodiratime` and `relatime`: those are applied in the access
 * times getattr reports only (see operations.ts), as `noatime` is too.
 */
const LIBFUSE_FLAGS: readonly string[] = Object.freeze(['allow_other', 'noatime', 'nodev', 'nosuid', 'noexec'])

const MAX_WRITE = 128 * 1024

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
    const fuse = new this.#Fuse(path, fuseOperations(this.#Fuse, volume, state), { force: false, mkdir: true, timeout: false, fsname: `galleonfs:${volume.id.slice(0, 8)}` })
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
      detachOperations(fuse, this.#Fuse.EIO)
      await removeMadeDirectories(path, madeFrom)
      throw new GalleonError('IO_ERROR', `could not mount FUSE at ${path}: ${err.message}`, { cause: err })
    })
    this.#mounts.set(path, state)
    this.#kernelPaths.set(path, kernelPath)
    servedHere.add(kernelPath)
  }

  /**
   * Waits until every write the mount acknowledged so far is in the volume (before a snapshot or
   * a flush). With `report`, one of them that failed is an IO_ERROR (without, the failure is left
   * to the mount's writers, who hear it at their next fsync, close or write).
   */
  async quiesce (path: string, options: { report?: boolean } = {}): Promise<void> {
    const failed = await this.#mounts.get(path)?.writes.settleAccepted()
    if (failed !== undefined && options.report === true) {
      const cause = failed.error
      throw new GalleonError('IO_ERROR', `a write acknowledged through the mount at ${path} failed to reach the volume (${(cause as Error)?.message ?? String(cause)}); its writers get EIO at their next fsync or close, and the mount keeps failing writes until it is mounted again`, { cause })
    }
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
    // fuse-native keeps the Fuse object for good: it must not keep the volume (and the instance) too.
    // A background write failure stays an EIO at the close of a descriptor kept open past the unmount.
    detachOperations(fuse, this.#Fuse.EIO, failure !== undefined)
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
}
