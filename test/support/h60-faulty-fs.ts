// A passthrough FUSE file system (fuse-native) that mirrors a backing directory and fails chosen
// operations with EIO on request (helper h60). It runs in its own process, started by
// `startFaultyFs` below: a FUSE handler must never be served by the process that uses the mount.
//
// Faults are sent over IPC: the next N writes, fsyncs, reads of a byte range, ... of the files whose
// path (relative to the mount) matches a regular expression fail with EIO. An fsync fault may also
// `drop` what was written to the file since its last good fsync (the backing file is put back as it
// was then), as a kernel that fails write-back marks the dirty pages clean and forgets them
// ("fsyncgate"): a later fsync then succeeds with the data gone.

import { createRequire } from 'node:module'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { after, before } from 'node:test'
import { fuseChildUnavailable, startFuseChild } from './fuse-child-process.js'
import { fuseErrno, fuseStat, fuseStatfs } from './fuse-passthrough-ops.js'

/** One fault: which operation, on which files, how many times (-1: until cleared). */
export interface FaultSpec {
  op: 'write' | 'fsync' | 'read' | 'create' | 'rename' | 'fsyncdir' | 'truncate' | 'unlink'
  /** Regular expression (source) matched against the path inside the mount, e.g. '^/store/blocks/seg-'. */
  path: string
  /** How many matching operations fail; -1 for every one until cleared. */
  count: number
  /** fsync only: forget the writes since the file's last good fsync (the backing file is put back). */
  drop?: boolean
  /** read only: fail requests overlapping the byte range [from, to). */
  from?: number
  to?: number
  /** write only: fail requests overlapping the byte range [from, to). */
  writeFrom?: number
  writeTo?: number
}

/** What the file system saw: operations served and faults fired, by kind. */
export interface FaultStats {
  ops: Record<string, number>
  fired: Record<string, number>
  /** Paths of the files faults fired on, with the operation. */
  firedOn: string[]
  /** Bytes put back by dropping fsyncs. */
  droppedBytes: number
}

type Request = { id: number, type: 'fault', fault: FaultSpec } | { id: number, type: 'clear' } | { id: number, type: 'stats' } | { id: number, type: 'unmount' }

// ---------------------------------------------------------------------------------------------
// The child: serves the mount.

const EIO = -5

function runChild (backing: string, mountPoint: string): void {
  const Fuse = createRequire(import.meta.url)('fuse-native')
  const faults: Array<FaultSpec & { re: RegExp }> = []
  const stats: FaultStats = { ops: {}, fired: {}, firedOn: [], droppedBytes: 0 }
  /** Per open descriptor: its path in the mount and the undo record key (inode). */
  const openFiles = new Map<number, { path: string, ino: number }>()
  /** Per inode: size at its last good fsync and the bytes its writes since then replaced. */
  const undo = new Map<number, { syncedSize: number, entries: Array<{ offset: number, old: Buffer }> }>()

  const real = (path: string): string => join(backing, path)
  const count = (op: string): void => { stats.ops[op] = (stats.ops[op] ?? 0) + 1 }
  const errno = fuseErrno
  /** The first fault for `op` on `path` (and range) that still has shots; takes one. */
  const take = (op: FaultSpec['op'], path: string, range?: { from: number, to: number }): (FaultSpec & { re: RegExp }) | undefined => {
    for (const fault of faults) {
      if (fault.op !== op || fault.count === 0 || !fault.re.test(path)) continue
      if (op === 'read' && range !== undefined && fault.from !== undefined && fault.to !== undefined) {
        if (range.to <= fault.from || range.from >= fault.to) continue
      }
      if (op === 'write' && range !== undefined && fault.writeFrom !== undefined && fault.writeTo !== undefined) {
        if (range.to <= fault.writeFrom || range.from >= fault.writeTo) continue
      }
      if (fault.count > 0) fault.count--
      stats.fired[op] = (stats.fired[op] ?? 0) + 1
      if (stats.firedOn.length < 200) stats.firedOn.push(`${op} ${path}`)
      return fault
    }
    return undefined
  }
  const undoOf = (fd: number): { syncedSize: number, entries: Array<{ offset: number, old: Buffer }> } | undefined => {
    const file = openFiles.get(fd)
    if (file === undefined) return undefined
    let record = undo.get(file.ino)
    if (record === undefined) {
      record = { syncedSize: fs.fstatSync(fd).size, entries: [] }
      undo.set(file.ino, record)
    }
    return record
  }
  const toStat = fuseStat
  const simple = (op: string, task: () => void, cb: (err: number) => void, path?: string): void => {
    count(op)
    if (path !== undefined && take(op as FaultSpec['op'], path) !== undefined) { cb(EIO); return }
    try {
      task()
      cb(0)
    } catch (err) {
      cb(errno(err))
    }
  }

  const ops = {
    getattr: (path: string, cb: (err: number, stat?: unknown) => void) => {
      try { cb(0, toStat(fs.lstatSync(real(path)))) } catch (err) { cb(errno(err)) }
    },
    fgetattr: (path: string, fd: number, cb: (err: number, stat?: unknown) => void) => {
      try { cb(0, toStat(fs.fstatSync(fd))) } catch (err) { cb(errno(err)) }
    },
    access: (_path: string, _mode: number, cb: (err: number) => void) => { cb(0) },
    statfs: fuseStatfs(backing),
    readdir: (path: string, cb: (err: number, names?: string[]) => void) => {
      try { cb(0, fs.readdirSync(real(path))) } catch (err) { cb(errno(err)) }
    },
    open: (path: string, flags: number, cb: (err: number, fd?: number) => void) => {
      count('open')
      try {
        const fd = fs.openSync(real(path), flags & ~fs.constants.O_CREAT)
        openFiles.set(fd, { path, ino: fs.fstatSync(fd).ino })
        cb(0, fd)
      } catch (err) { cb(errno(err)) }
    },
    create: (path: string, mode: number, cb: (err: number, fd?: number) => void) => {
      count('create')
      if (take('create', path) !== undefined) { cb(EIO); return }
      try {
        const fd = fs.openSync(real(path), fs.constants.O_CREAT | fs.constants.O_RDWR, mode)
        const ino = fs.fstatSync(fd).ino
        openFiles.set(fd, { path, ino })
        undo.set(ino, { syncedSize: 0, entries: [] })
        cb(0, fd)
      } catch (err) { cb(errno(err)) }
    },
    release: (_path: string, fd: number, cb: (err: number) => void) => {
      openFiles.delete(fd)
      try { fs.closeSync(fd); cb(0) } catch (err) { cb(errno(err)) }
    },
    read: (path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) => {
      count('read')
      if (take('read', path, { from: pos, to: pos + len }) !== undefined) { cb(EIO); return }
      try {
        let done = 0
        while (done < len) {
          const n = fs.readSync(fd, buf, done, len - done, pos + done)
          if (n === 0) break
          done += n
        }
        cb(done)
      } catch (err) { cb(errno(err)) }
    },
    write: (path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) => {
      count('write')
      if (take('write', path, { from: pos, to: pos + len }) !== undefined) { cb(EIO); return }
      try {
        const record = undoOf(fd)
        if (record !== undefined) {
          const old = Buffer.alloc(len)
          const n = fs.readSync(fd, old, 0, len, pos)
          if (n > 0) record.entries.push({ offset: pos, old: old.subarray(0, n) })
        }
        let done = 0
        while (done < len) done += fs.writeSync(fd, buf, done, len - done, pos + done)
        cb(done)
      } catch (err) { cb(errno(err)) }
    },
    fsync: (path: string, _datasync: number, fd: number, cb: (err: number) => void) => {
      count('fsync')
      const fault = take('fsync', path)
      const record = undoOf(fd)
      if (fault !== undefined) {
        if (fault.drop === true && record !== undefined) {
          // The kernel marked the pages clean after failing to write them back: they are gone.
          for (const entry of record.entries.reverse()) {
            fs.writeSync(fd, entry.old, 0, entry.old.byteLength, entry.offset)
            stats.droppedBytes += entry.old.byteLength
          }
          const size = fs.fstatSync(fd).size
          if (size > record.syncedSize) {
            stats.droppedBytes += size - record.syncedSize
            fs.ftruncateSync(fd, record.syncedSize)
          }
          record.entries = []
        }
        cb(EIO)
        return
      }
      try {
        fs.fsyncSync(fd)
        if (record !== undefined) {
          record.entries = []
          record.syncedSize = fs.fstatSync(fd).size
        }
        cb(0)
      } catch (err) { cb(errno(err)) }
    },
    fsyncdir: (path: string, _datasync: number, _fd: number, cb: (err: number) => void) => {
      simple('fsyncdir', () => {
        const fd = fs.openSync(real(path), 'r')
        try { fs.fsyncSync(fd) } finally { fs.closeSync(fd) }
      }, cb, path)
    },
    flush: (_path: string, _fd: number, cb: (err: number) => void) => { cb(0) },
    truncate: (path: string, size: number, cb: (err: number) => void) => { simple('truncate', () => fs.truncateSync(real(path), size), cb, path) },
    ftruncate: (path: string, fd: number, size: number, cb: (err: number) => void) => { simple('truncate', () => fs.ftruncateSync(fd, size), cb, path) },
    unlink: (path: string, cb: (err: number) => void) => { simple('unlink', () => fs.unlinkSync(real(path)), cb, path) },
    rename: (src: string, dest: string, cb: (err: number) => void) => { simple('rename', () => fs.renameSync(real(src), real(dest)), cb, dest) },
    link: (src: string, dest: string, cb: (err: number) => void) => { simple('link', () => fs.linkSync(real(src), real(dest)), cb) },
    symlink: (src: string, dest: string, cb: (err: number) => void) => { simple('symlink', () => fs.symlinkSync(src, real(dest)), cb) },
    readlink: (path: string, cb: (err: number, target?: string) => void) => {
      try { cb(0, fs.readlinkSync(real(path))) } catch (err) { cb(errno(err)) }
    },
    mkdir: (path: string, mode: number, cb: (err: number) => void) => { simple('mkdir', () => fs.mkdirSync(real(path), mode), cb) },
    rmdir: (path: string, cb: (err: number) => void) => { simple('rmdir', () => fs.rmdirSync(real(path)), cb) },
    chmod: (path: string, mode: number, cb: (err: number) => void) => { simple('chmod', () => fs.chmodSync(real(path), mode), cb) },
    chown: (path: string, uid: number, gid: number, cb: (err: number) => void) => { simple('chown', () => fs.chownSync(real(path), uid, gid), cb) },
    utimens: (path: string, atime: Date, mtime: Date, cb: (err: number) => void) => { simple('utimens', () => fs.utimesSync(real(path), atime, mtime), cb) }
  }

  const fuse = new Fuse(mountPoint, ops, { force: true, mkdir: true, timeout: false, fsname: 'galleon-h60-faulty' })
  const base = fuse._fuseOptions.bind(fuse)
  // No attribute or entry caching (the backing file changes size when an fsync fault drops writes);
  // whole 128 KiB write requests.
  fuse._fuseOptions = () => {
    const own = base() as string
    const extra = 'big_writes,max_write=131072,attr_timeout=0,entry_timeout=0,negative_timeout=0'
    return own === '' ? `-o${extra}` : `${own},${extra}`
  }
  const send = (message: unknown): void => { process.send?.(message) }
  fuse.mount((err: Error | null) => {
    if (err) { send({ type: 'error', message: err.message }); process.exit(1) }
    send({ type: 'ready' })
  })
  process.on('message', (message: Request) => {
    switch (message.type) {
      case 'fault':
        faults.push({ ...message.fault, re: new RegExp(message.fault.path) })
        send({ id: message.id, ok: true })
        break
      case 'clear':
        faults.length = 0
        send({ id: message.id, ok: true })
        break
      case 'stats':
        send({ id: message.id, ok: true, stats })
        break
      case 'unmount':
        fuse.unmount((err: Error | null) => {
          send({ id: message.id, ok: err === null || err === undefined, message: err?.message })
          setImmediate(() => process.exit(0))
        })
        break
    }
  })
  // The parent went away: unmount (lazily) and leave.
  process.on('disconnect', () => { fuse.unmount(() => process.exit(0)) })
}

// ---------------------------------------------------------------------------------------------
// The parent side.

/** A running faulty file system: its mount point and the calls that steer it. */
export interface FaultyFs {
  mountPoint: string
  backing: string
  inject: (fault: FaultSpec) => Promise<void>
  clear: () => Promise<void>
  stats: () => Promise<FaultStats>
  stop: () => Promise<void>
}

/** Why a faulty file system cannot run here, or undefined when it can. */
export function faultyFsUnavailable (): string | undefined {
  return fuseChildUnavailable('faulty FUSE file system', 'inject I/O errors under a real storagePath')
}

/** Mounts a faulty mirror of `backing` at `mountPoint` in a child process. */
export async function startFaultyFs (backing: string, mountPoint: string): Promise<FaultyFs> {
  const { request, stop } = await startFuseChild(import.meta.url, ['--h60-child', backing, mountPoint], backing, mountPoint, 'faulty fs')
  return {
    mountPoint,
    backing,
    inject: async (fault) => { await request({ type: 'fault', fault }) },
    clear: async () => { await request({ type: 'clear' }) },
    stats: async () => (await request({ type: 'stats' })).stats as FaultStats,
    stop
  }
}

if (process.argv[2] === '--h60-child') runChild(process.argv[3] as string, process.argv[4] as string)

/** The segment files of a file block store's directory, oldest first. */
export async function segmentFiles (dir: string): Promise<string[]> {
  return (await fs.promises.readdir(dir)).filter((name) => name.startsWith('seg-') && name.endsWith('.log')).sort()
}

/** Makes the kernel drop its cached pages of every file under `dir` (FUSE invalidates on open). */
export async function dropCachedPages (dir: string): Promise<void> {
  for (const name of await fs.promises.readdir(dir)) {
    const handle = await fs.promises.open(join(dir, name), 'r').catch(() => undefined)
    await handle?.close()
  }
}

/**
 * A fault-injecting file system for a test file: started before its tests (under a new directory
 * named with `prefix`), stopped and removed after them. `unavailable` says why it cannot run here.
 */
export function useFaultyFs (prefix: string): { unavailable: string | undefined, faultyFs: () => FaultyFs } {
  const unavailable = faultyFsUnavailable()
  let fsys: FaultyFs | undefined
  let root = ''
  before(async () => {
    if (unavailable !== undefined) return
    root = await fs.promises.mkdtemp(join(tmpdir(), prefix))
    fsys = await startFaultyFs(join(root, 'backing'), join(root, 'mnt'))
  })
  after(async () => {
    if (fsys !== undefined) await fsys.stop()
    if (root !== '') await fs.promises.rm(root, { recursive: true, force: true })
  })
  return {
    unavailable,
    faultyFs: () => {
      if (fsys === undefined) throw new Error('the faulty file system is not running (see unavailable)')
      return fsys
    }
  }
}
