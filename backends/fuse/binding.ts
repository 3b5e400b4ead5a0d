// fuse-native, loaded on first use (importing galleonfs never needs libfuse), and what is adjusted
// in its native binding: threads started with signals blocked, utimens given its mtime, a mount's
// thread stopped after an unmount run without a shell.

import { createRequire } from 'node:module'
import { access, constants } from 'node:fs/promises'
import { dirname } from 'node:path'
import { childEnvironment } from '../../src/child-env.js'
import { GalleonError } from '../../src/errors.js'
import { closeOnExecWhere, descriptorsWhere } from '../../src/close-on-exec.js'
import { nativeAead } from '../../src/crypto/native-aead.js'
import { fusermount } from './fusermount.js'

export interface FuseInstance {
  mount: (cb: (err: Error | null) => void) => void
  unmount: (cb: (err: Error | null) => void) => void
}
export interface FuseClass {
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
export async function loadFuse (): Promise<FuseClass> {
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
 * The same wrapper sets close-on-exec on the /dev/fuse descriptor the mount opened (libfuse opens
 * it without): a child process that inherited it would keep the FUSE connection alive after this
 * process died, so the mount would never be torn down and whatever uses it would hang. Only
 * descriptors that appeared during the mount call are touched (the call is synchronous; the
 * application may hold /dev/fuse descriptors of its own).
 * Returns whether the guard is in place.
 */
export function guardFuseThreads (): boolean {
  const addon = nativeAead()
  if (addon === undefined) return false
  const binding = fuseBinding() as { fuse_native_mount: (...args: unknown[]) => unknown, [GUARDED]?: true }
  if (binding[GUARDED] === true) return true
  const mount = binding.fuse_native_mount
  binding.fuse_native_mount = (...args: unknown[]) => addon.callWithSignalsBlocked(() => {
    const before = descriptorsWhere(isFuseDevice)
    try {
      return mount.apply(binding, args)
    } finally {
      closeOnExecWhere(isFuseDevice, before)
    }
  })
  binding[GUARDED] = true
  return true
}

function isFuseDevice (target: string): boolean {
  return target === '/dev/fuse'
}

/** fuse-native's own last step of an unmount: stops its thread for `path`. */
export function stopNativeThread (path: string, fuse: FuseInstance): void {
  const binding = fuseBinding() as { fuse_native_unmount: (mnt: string, thread: unknown) => void }
  binding.fuse_native_unmount(path, (fuse as unknown as { _thread: unknown })._thread)
}

/** Operations of a descriptor going away: answered with success once the mount's operations are gone. */
const CLOSING_OPERATIONS = new Set(['flush', 'release', 'releasedir'])

/**
 * Lets go of a mount's operations once its thread is stopped (or its mount failed). fuse-native
 * 2.2.6 never deletes the references its native mount call makes to the Fuse object and to its
 * handlers, so every Fuse object stays in memory for good, and with it `fuse.ops` (the mount's
 * operations, which hold the mounted volume's state and, through its data accessors, the whole
 * GalleonFS instance, closed or not) and the `_fuseOptions` set on it. Those are replaced by
 * stubs answering EIO (a descriptor left open across a forced unmount still sends requests; its
 * close succeeds, unless `writesFailed`: a write the mount acknowledged never reached the volume,
 * which close(2) must still report, as the mount's own flush did): what stays behind per mount is
 * fuse-native's own small object only.
 */
export function detachOperations (fuse: FuseInstance, eio: number, writesFailed = false): void {
  const held = fuse as unknown as { ops?: Record<string, unknown>, _fuseOptions?: unknown }
  const stubs: Record<string, unknown> = {}
  for (const name of Object.keys(held.ops ?? {})) {
    // Closing a descriptor left open across a forced unmount succeeds, as it did before the
    // operations went: nothing is held for it any more (its writes since fail with EIO). But its
    // flush (close(2)) still reports a background write failure, as the mount's flush did.
    const code = name === 'flush' && writesFailed ? eio : CLOSING_OPERATIONS.has(name) ? 0 : eio
    stubs[name] = (...args: unknown[]): void => {
      const callback = args[args.length - 1]
      if (typeof callback === 'function') (callback as (code: number) => void)(code)
    }
  }
  held.ops = stubs
  // The wrapper mount() set holds the volume's options: the prototype's goes back.
  if (Object.hasOwn(held, '_fuseOptions')) delete held._fuseOptions
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
