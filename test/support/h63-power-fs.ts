// A passthrough FUSE file system (fuse-native) that knows what a power loss would leave (helper h63).
// It runs in its own process (a FUSE handler must never be served by the process using the mount),
// mirrors a backing directory, and keeps, beside the live files, their durable state:
//   - a file's bytes and size as of its last successful fsync/fdatasync (writes and truncations
//     since then are pending);
//   - a directory's entries as of its last fsync (creates, renames, links, unlinks since then are
//     pending).
// `cut()` (a power loss, after the parent has SIGKILLed every process using the mount) rewrites the
// backing directory to the durable state, optionally with part of the pending writes flushed, and
// from then on everything there counts as durable.
//
// Two models of when a name becomes durable:
//   - `strict` (POSIX, conservative): only an fsync of its directory makes a create, rename, link or
//     unlink durable; an fsync of a file never does. A rename between two directories is durable
//     in each directory at that directory's own fsync (so after a cut the file may be under both
//     names or neither: more than ext4 ever leaves, which is the point of being conservative).
//   - `ext4` (ext4, data=ordered, jbd2 journal, no fast_commit): namespace changes are journaled in
//     order and committed together, so any fsync of a directory, any fsync of a file and any
//     fdatasync that changes the file's size commits every namespace change made before it (on ext4
//     a new file's entry is in the same transaction as its inode). An fdatasync that leaves the
//     size alone commits nothing but the file's data. A cut may also keep a prefix of the
//     uncommitted namespace changes (the journal commits in order, every 5 s on its own).
// File data in both models: only a file's own fsync/fdatasync makes it durable. At a cut the pending
// writes of each file are dropped (`drop`), or a random prefix of them is kept (`prefix`, writeback
// in order), or a prefix and part of the next write in whole 512-byte sectors (`torn`), or a random
// subset of the dirty 4 KiB pages with the old or the new size (`pages`, writeback out of order).
// Not modelled: mode, owner and time changes (kept as they are), symlinks (refused with ENOSYS),
// mmap writes (LevelDB maps files only to read them).

import { createRequire } from 'node:module'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { fuseChildUnavailable, startFuseChild } from './fuse-child-process.js'
import { fuseErrno, fuseStat, fuseStatfs } from './fuse-passthrough-ops.js'
import { seededRandom } from '../../src/seeded-random.js'

/** When a namespace change becomes durable; see the file comment. */
export type NamespaceModel = 'strict' | 'ext4'
/** What becomes of unsynced file writes at a cut; see the file comment. */
export type FlushMode = 'drop' | 'prefix' | 'torn' | 'pages'

/** What a cut threw away and kept. */
export interface CutReport {
  /** Files whose content at the cut differed from the live content. */
  filesRolledBack: number
  /** Pending write/truncate operations dropped (not applied). */
  opsDropped: number
  /** Pending write/truncate operations kept by a partial flush. */
  opsKept: number
  /** Live names (path) that the cut removed, and durable names it brought back. */
  namesLost: string[]
  namesRevived: string[]
  /** Total bytes of live file content that differed from what was left. */
  bytesDiffering: number
}

/** Counts of operations served since the mount (or the last cut). */
export interface PowerStats {
  ops: Record<string, number>
}

type PendingOp = { kind: 'write', offset: number, data: Buffer } | { kind: 'truncate', size: number }

interface FileNode { kind: 'file', id: number, mode: number, durable: Buffer, durableSize: number, pending: PendingOp[], liveSize: number }
interface DirNode { kind: 'dir', id: number, mode: number, live: Map<string, number>, durable: Map<string, number> }
type Node = FileNode | DirNode

/** A namespace change not yet committed (ext4 model): entries set (id) or removed (undefined). */
type NamespaceChange = Array<{ dir: number, name: string, id: number | undefined }>

type Request =
  | { id: number, type: 'cut', mode: FlushMode, seed: number }
  | { id: number, type: 'freeze', mode: FlushMode, seed: number }
  | { id: number, type: 'stallDirSync', path: string }
  | { id: number, type: 'model', model: NamespaceModel }
  | { id: number, type: 'stats' }
  | { id: number, type: 'unmount' }

const EIO = -5
const ENOENT = -2
const ENOSYS = -38
const EEXIST = -17
const ROOT_ID = 1


/** Applies `op` to `content` (bytes [0, size)); returns the new buffer and size. */
function applyOp (content: Buffer, size: number, op: PendingOp): { buf: Buffer, size: number } {
  if (op.kind === 'truncate') {
    if (op.size <= size) {
      // Bytes past the new size must read as zeros if the file grows again.
      content.fill(0, op.size, size)
      return { buf: content, size: op.size }
    }
    const grown = ensure(content, op.size)
    grown.fill(0, size, op.size)
    return { buf: grown, size: op.size }
  }
  const end = op.offset + op.data.byteLength
  const buf = ensure(content, end)
  if (op.offset > size) buf.fill(0, size, op.offset)
  op.data.copy(buf, op.offset)
  return { buf, size: Math.max(size, end) }
}

function ensure (buf: Buffer, capacity: number): Buffer {
  if (buf.byteLength >= capacity) return buf
  const grown = Buffer.alloc(Math.max(capacity, buf.byteLength * 2, 4096))
  buf.copy(grown)
  return grown
}

// ---------------------------------------------------------------------------------------------
// The child: serves the mount.

function runChild (backing: string, mountPoint: string, initialModel: NamespaceModel): void {
  const Fuse = createRequire(import.meta.url)('fuse-native')
  let model = initialModel
  const nodes = new Map<number, Node>()
  let nextNodeId = ROOT_ID
  /** Open handles: our own numbers (never reused), so a late release from a killed process closes nothing new. */
  const handles = new Map<number, { fd: number, node: number }>()
  let nextHandle = 1
  /** ext4 model: namespace changes since the last commit, in order. */
  let uncommitted: NamespaceChange[] = []
  let stats: PowerStats = { ops: {} }

  const send = (message: unknown): void => { process.send?.(message) }
  const real = (path: string): string => join(backing, path)
  const trace = process.env.H63_TRACE !== undefined ? new RegExp(process.env.H63_TRACE) : undefined
  const count = (op: string, path = ''): void => {
    stats.ops[op] = (stats.ops[op] ?? 0) + 1
    if (trace?.test(path) === true) process.stderr.write(`h63-fs ${op} ${path}\n`)
  }
  const errno = fuseErrno

  /** Rebuilds the model from the backing directory: everything in it is durable. */
  const scan = (): void => {
    nodes.clear()
    nextNodeId = ROOT_ID
    uncommitted = []
    const walk = (dirPath: string): DirNode => {
      const dir: DirNode = { kind: 'dir', id: nextNodeId++, mode: fs.statSync(dirPath).mode, live: new Map(), durable: new Map() }
      nodes.set(dir.id, dir)
      const byIno = new Map<number, number>()
      for (const name of fs.readdirSync(dirPath).sort()) {
        const path = join(dirPath, name)
        const st = fs.lstatSync(path)
        let id: number
        if (st.isDirectory()) id = walk(path).id
        else if (byIno.has(st.ino)) id = byIno.get(st.ino) as number
        else {
          const content = fs.readFileSync(path)
          const file: FileNode = { kind: 'file', id: nextNodeId++, mode: st.mode, durable: content, durableSize: content.byteLength, pending: [], liveSize: content.byteLength }
          nodes.set(file.id, file)
          byIno.set(st.ino, file.id)
          id = file.id
        }
        dir.live.set(name, id)
        dir.durable.set(name, id)
      }
      return dir
    }
    walk(backing)
  }

  /** The parent directory node and the last name of `path`, through the live entries. */
  const parentOf = (path: string): { dir: DirNode, name: string } | undefined => {
    const parts = path.split('/').filter((part) => part !== '')
    const name = parts.pop()
    if (name === undefined) return undefined
    let dir = nodes.get(ROOT_ID) as DirNode
    for (const part of parts) {
      const next = nodes.get(dir.live.get(part) ?? -1)
      if (next === undefined || next.kind !== 'dir') return undefined
      dir = next
    }
    return { dir, name }
  }
  const lookup = (path: string): Node | undefined => {
    if (path === '/' || path === '') return nodes.get(ROOT_ID)
    const where = parentOf(path)
    if (where === undefined) return undefined
    return nodes.get(where.dir.live.get(where.name) ?? -1)
  }
  /** Changes live entries, remembering the change (ext4 model) until the next commit. */
  const change = (changes: NamespaceChange): void => {
    for (const { dir, name, id } of changes) {
      const node = nodes.get(dir) as DirNode
      if (id === undefined) node.live.delete(name)
      else node.live.set(name, id)
    }
    if (model === 'ext4') uncommitted.push(changes)
  }
  /** ext4 model: a journal commit makes every namespace change so far durable. */
  const commitNamespace = (): void => {
    for (const node of nodes.values()) if (node.kind === 'dir') node.durable = new Map(node.live)
    uncommitted = []
  }
  const syncFile = (file: FileNode): void => {
    let buf = file.durable
    let size = file.durableSize
    for (const op of file.pending) ({ buf, size } = applyOp(buf, size, op))
    file.durable = buf
    file.durableSize = size
    file.pending = []
  }
  const newFile = (mode: number): FileNode => {
    const file: FileNode = { kind: 'file', id: nextNodeId++, mode, durable: Buffer.alloc(0), durableSize: 0, pending: [], liveSize: 0 }
    nodes.set(file.id, file)
    return file
  }
  const pend = (file: FileNode, op: PendingOp): void => {
    file.pending.push(op)
    file.liveSize = op.kind === 'truncate' ? op.size : Math.max(file.liveSize, op.offset + op.data.byteLength)
  }

  /** What the disk holds at the instant of the power loss: entries in creation order, and the report. */
  interface PlanEntry { path: string, dir: boolean, mode: number, content?: Buffer, linkTo?: string }
  let frozen: { plan: PlanEntry[], report: CutReport } | undefined
  /** fsyncdir calls held back (stallDirSync) until the freeze answers them with EIO. */
  let stallDirSync: RegExp | undefined
  const stalled: Array<(err: number) => void> = []

  /** The instant of the power loss: what is durable now is what the disk will hold; every later change fails with EIO. */
  const freeze = (mode: FlushMode, seed: number): CutReport => {
    if (frozen !== undefined) return frozen.report
    const random = seededRandom(seed)
    const report: CutReport = { filesRolledBack: 0, opsDropped: 0, opsKept: 0, namesLost: [], namesRevived: [], bytesDiffering: 0 }
    // Which names survive.
    const durableEntries = new Map<number, Map<string, number>>()
    for (const node of nodes.values()) if (node.kind === 'dir') durableEntries.set(node.id, new Map(node.durable))
    if (model === 'ext4' && mode !== 'drop' && uncommitted.length > 0) {
      const keep = Math.floor(random() * (uncommitted.length + 1))
      for (const changes of uncommitted.slice(0, keep)) {
        for (const { dir, name, id } of changes) {
          const entries = durableEntries.get(dir) as Map<string, number>
          if (id === undefined) entries.delete(name)
          else entries.set(name, id)
        }
      }
    }
    // What each file holds.
    const contentOf = (file: FileNode): Buffer => {
      let buf: Buffer = Buffer.from(file.durable.subarray(0, file.durableSize))
      let size = file.durableSize
      const ops = file.pending
      if (mode === 'drop' || ops.length === 0) {
        report.opsDropped += ops.length
      } else if (mode === 'prefix' || mode === 'torn') {
        const keep = Math.floor(random() * (ops.length + 1))
        for (const op of ops.slice(0, keep)) ({ buf, size } = applyOp(buf, size, op))
        report.opsKept += keep
        report.opsDropped += ops.length - keep
        const next = ops[keep]
        if (mode === 'torn' && next !== undefined && next.kind === 'write' && next.data.byteLength > 512) {
          const sectors = Math.floor(next.data.byteLength / 512)
          const part = Math.floor(random() * sectors) * 512
          if (part > 0) ({ buf, size } = applyOp(buf, size, { kind: 'write', offset: next.offset, data: next.data.subarray(0, part) }))
        }
      } else {
        // Out-of-order writeback: each dirty page is on disk or not; the size is old or new.
        let live: Buffer = Buffer.from(buf)
        let liveSize = size
        for (const op of ops) ({ buf: live, size: liveSize } = applyOp(live, liveSize, op))
        const newSize = random() < 0.5 ? size : liveSize
        const out = Buffer.alloc(newSize)
        buf.copy(out, 0, 0, Math.min(size, newSize))
        for (let page = 0; page < newSize; page += 4096) {
          const end = Math.min(page + 4096, newSize)
          const oldPage = page < size ? buf.subarray(page, Math.min(end, size)) : Buffer.alloc(0)
          const newPage = page < liveSize ? live.subarray(page, Math.min(end, liveSize)) : Buffer.alloc(0)
          if (Buffer.compare(oldPage, newPage) !== 0 && random() < 0.5) {
            out.fill(0, page, end)
            newPage.copy(out, page)
            report.opsKept++
          }
        }
        report.opsDropped += ops.length
        return out
      }
      return buf.subarray(0, size)
    }
    const liveNames = new Set<string>()
    const listLive = (dir: DirNode, prefix: string): void => {
      for (const [name, id] of dir.live) {
        liveNames.add(prefix + name)
        const node = nodes.get(id)
        if (node?.kind === 'dir') listLive(node, `${prefix}${name}/`)
      }
    }
    listLive(nodes.get(ROOT_ID) as DirNode, '/')
    const plan: PlanEntry[] = []
    const planned = new Map<number, string>()
    const seenNames = new Set<string>()
    const build = (dirId: number, prefix: string, depth: number): void => {
      if (depth > 64) return
      for (const [name, id] of durableEntries.get(dirId) ?? []) {
        const node = nodes.get(id)
        if (node === undefined) continue
        const path = prefix + name
        seenNames.add(path)
        if (!liveNames.has(path)) report.namesRevived.push(path)
        if (node.kind === 'dir') {
          plan.push({ path, dir: true, mode: node.mode & 0o7777 })
          build(id, `${path}/`, depth + 1)
          continue
        }
        const already = planned.get(id)
        if (already !== undefined) { plan.push({ path, dir: false, mode: node.mode & 0o7777, linkTo: already }); continue }
        const content = contentOf(node)
        plan.push({ path, dir: false, mode: node.mode & 0o7777, content })
        planned.set(id, path)
        if (node.pending.length > 0) {
          report.filesRolledBack++
          report.bytesDiffering += Math.abs(node.liveSize - content.byteLength) + node.pending.reduce((sum, op) => sum + (op.kind === 'write' ? op.data.byteLength : 0), 0)
        }
      }
    }
    build(ROOT_ID, '/', 0)
    for (const name of liveNames) if (!seenNames.has(name)) report.namesLost.push(name)
    frozen = { plan, report }
    for (const answer of stalled.splice(0)) answer(EIO)
    stallDirSync = undefined
    return report
  }

  /** After the freeze, once nothing uses the mount: the backing directory becomes what the disk held. */
  const cut = (mode: FlushMode, seed: number): CutReport => {
    freeze(mode, seed)
    const { plan, report } = frozen as { plan: PlanEntry[], report: CutReport }
    for (const { fd } of handles.values()) { try { fs.closeSync(fd) } catch {} }
    handles.clear()
    for (const name of fs.readdirSync(backing)) fs.rmSync(join(backing, name), { recursive: true, force: true })
    for (const entry of plan) {
      const path = join(backing, entry.path)
      if (entry.dir) fs.mkdirSync(path, { mode: entry.mode })
      else if (entry.linkTo !== undefined) fs.linkSync(join(backing, entry.linkTo), path)
      else fs.writeFileSync(path, entry.content as Buffer, { mode: entry.mode })
      fs.chmodSync(path, entry.mode)
    }
    frozen = undefined
    scan()
    stats = { ops: {} }
    return report
  }

  const toStat = fuseStat
  const guarded = (op: string, cb: (err: number) => void, task: () => void, path = ''): void => {
    count(op, path)
    if (frozen !== undefined) { cb(EIO); return }
    try {
      task()
      cb(0)
    } catch (err) {
      cb(errno(err))
    }
  }
  const openHandle = (fd: number, node: number): number => {
    const handle = nextHandle++
    handles.set(handle, { fd, node })
    return handle
  }
  const O_STRIP = fs.constants.O_CREAT | fs.constants.O_APPEND | fs.constants.O_EXCL

  const ops = {
    getattr: (path: string, cb: (err: number, stat?: unknown) => void) => {
      try { cb(0, toStat(fs.lstatSync(real(path)))) } catch (err) { cb(errno(err)) }
    },
    fgetattr: (path: string, _fh: number, cb: (err: number, stat?: unknown) => void) => {
      try { cb(0, toStat(fs.lstatSync(real(path)))) } catch (err) { cb(errno(err)) }
    },
    access: (_path: string, _mode: number, cb: (err: number) => void) => { cb(0) },
    statfs: fuseStatfs(backing),
    readdir: (path: string, cb: (err: number, names?: string[]) => void) => {
      try { cb(0, fs.readdirSync(real(path))) } catch (err) { cb(errno(err)) }
    },
    open: (path: string, flags: number, cb: (err: number, fh?: number) => void) => {
      count('open', path)
      if (frozen !== undefined && (flags & 3) !== fs.constants.O_RDONLY) { cb(EIO); return }
      const node = lookup(path)
      if (node === undefined) { cb(ENOENT); return }
      try {
        const fd = fs.openSync(real(path), flags & ~O_STRIP)
        if (node.kind === 'file' && (flags & fs.constants.O_TRUNC) !== 0) pend(node, { kind: 'truncate', size: 0 })
        cb(0, openHandle(fd, node.id))
      } catch (err) { cb(errno(err)) }
    },
    create: (path: string, mode: number, cb: (err: number, fh?: number) => void) => {
      count('create', path)
      if (frozen !== undefined) { cb(EIO); return }
      const where = parentOf(path)
      if (where === undefined) { cb(ENOENT); return }
      try {
        const existing = nodes.get(where.dir.live.get(where.name) ?? -1)
        const fd = fs.openSync(real(path), fs.constants.O_CREAT | fs.constants.O_RDWR, mode)
        if (existing !== undefined) { cb(0, openHandle(fd, existing.id)); return }
        const file = newFile(mode)
        change([{ dir: where.dir.id, name: where.name, id: file.id }])
        cb(0, openHandle(fd, file.id))
      } catch (err) { cb(errno(err)) }
    },
    release: (_path: string, fh: number, cb: (err: number) => void) => {
      const handle = handles.get(fh)
      handles.delete(fh)
      if (handle === undefined) { cb(0); return }
      try { fs.closeSync(handle.fd); cb(0) } catch (err) { cb(errno(err)) }
    },
    read: (_path: string, fh: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) => {
      count('read')
      const handle = handles.get(fh)
      if (handle === undefined) { cb(EIO); return }
      try {
        let done = 0
        while (done < len) {
          const n = fs.readSync(handle.fd, buf, done, len - done, pos + done)
          if (n === 0) break
          done += n
        }
        cb(done)
      } catch (err) { cb(errno(err)) }
    },
    write: (_path: string, fh: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) => {
      count('write', _path)
      if (frozen !== undefined) { cb(EIO); return }
      const handle = handles.get(fh)
      const node = nodes.get(handle?.node ?? -1)
      if (handle === undefined || node === undefined || node.kind !== 'file') { cb(EIO); return }
      try {
        let done = 0
        while (done < len) done += fs.writeSync(handle.fd, buf, done, len - done, pos + done)
        pend(node, { kind: 'write', offset: pos, data: Buffer.from(buf.subarray(0, len)) })
        cb(done)
      } catch (err) { cb(errno(err)) }
    },
    fsync: (_path: string, datasync: number | boolean, fh: number, cb: (err: number) => void) => {
      count(datasync ? 'fdatasync' : 'fsync', _path)
      if (frozen !== undefined) { cb(EIO); return }
      const handle = handles.get(fh)
      const node = nodes.get(handle?.node ?? -1)
      if (handle === undefined || node === undefined) { cb(EIO); return }
      if (node.kind === 'file') {
        const sizeChanged = node.liveSize !== node.durableSize
        syncFile(node)
        if (model === 'ext4' && (!datasync || sizeChanged)) commitNamespace()
      }
      cb(0)
    },
    fsyncdir: (path: string, _datasync: number | boolean, _fh: number, cb: (err: number) => void) => {
      count('fsyncdir', path)
      if (frozen !== undefined) { cb(EIO); return }
      if (stallDirSync?.test(path) === true) { stalled.push(cb); send({ type: 'event', event: 'stalled', path }); return }
      const node = lookup(path)
      if (node === undefined || node.kind !== 'dir') { cb(ENOENT); return }
      if (model === 'ext4') commitNamespace()
      else node.durable = new Map(node.live)
      cb(0)
    },
    flush: (_path: string, _fh: number, cb: (err: number) => void) => { cb(0) },
    truncate: (path: string, size: number, cb: (err: number) => void) => {
      guarded('truncate', cb, () => {
        const node = lookup(path)
        fs.truncateSync(real(path), size)
        if (node?.kind === 'file') pend(node, { kind: 'truncate', size })
      }, path)
    },
    ftruncate: (_path: string, fh: number, size: number, cb: (err: number) => void) => {
      if (frozen !== undefined) { cb(EIO); return }
      const handle = handles.get(fh)
      const node = nodes.get(handle?.node ?? -1)
      if (handle === undefined || node === undefined || node.kind !== 'file') { cb(EIO); return }
      guarded('ftruncate', cb, () => {
        fs.ftruncateSync(handle.fd, size)
        pend(node, { kind: 'truncate', size })
      }, _path)
    },
    unlink: (path: string, cb: (err: number) => void) => {
      guarded('unlink', cb, () => {
        const where = parentOf(path)
        fs.unlinkSync(real(path))
        if (where !== undefined) change([{ dir: where.dir.id, name: where.name, id: undefined }])
      }, path)
    },
    rmdir: (path: string, cb: (err: number) => void) => {
      guarded('rmdir', cb, () => {
        const where = parentOf(path)
        fs.rmdirSync(real(path))
        if (where !== undefined) change([{ dir: where.dir.id, name: where.name, id: undefined }])
      }, path)
    },
    rename: (src: string, dest: string, cb: (err: number) => void) => {
      guarded('rename', cb, () => {
        const from = parentOf(src)
        const to = parentOf(dest)
        const id = from?.dir.live.get(from.name)
        fs.renameSync(real(src), real(dest))
        if (from !== undefined && to !== undefined && id !== undefined) {
          change([{ dir: from.dir.id, name: from.name, id: undefined }, { dir: to.dir.id, name: to.name, id }])
        }
      }, `${src} -> ${dest}`)
    },
    link: (src: string, dest: string, cb: (err: number) => void) => {
      guarded('link', cb, () => {
        const node = lookup(src)
        const to = parentOf(dest)
        fs.linkSync(real(src), real(dest))
        if (node !== undefined && to !== undefined) change([{ dir: to.dir.id, name: to.name, id: node.id }])
      }, `${src} => ${dest}`)
    },
    mkdir: (path: string, mode: number, cb: (err: number) => void) => {
      count('mkdir', path)
      if (frozen !== undefined) { cb(EIO); return }
      const where = parentOf(path)
      if (where === undefined) { cb(ENOENT); return }
      if (where.dir.live.has(where.name)) { cb(EEXIST); return }
      try {
        fs.mkdirSync(real(path), mode)
        const dir: DirNode = { kind: 'dir', id: nextNodeId++, mode: fs.statSync(real(path)).mode, live: new Map(), durable: new Map() }
        nodes.set(dir.id, dir)
        change([{ dir: where.dir.id, name: where.name, id: dir.id }])
        cb(0)
      } catch (err) { cb(errno(err)) }
    },
    symlink: (_src: string, _dest: string, cb: (err: number) => void) => { count('symlink'); cb(ENOSYS) },
    readlink: (path: string, cb: (err: number, target?: string) => void) => {
      try { cb(0, fs.readlinkSync(real(path))) } catch (err) { cb(errno(err)) }
    },
    chmod: (path: string, mode: number, cb: (err: number) => void) => {
      guarded('chmod', cb, () => {
        fs.chmodSync(real(path), mode)
        const node = lookup(path)
        if (node !== undefined) node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
      })
    },
    chown: (path: string, uid: number, gid: number, cb: (err: number) => void) => { guarded('chown', cb, () => fs.chownSync(real(path), uid, gid)) },
    utimens: (path: string, atime: Date, mtime: Date, cb: (err: number) => void) => { guarded('utimens', cb, () => fs.utimesSync(real(path), atime, mtime)) }
  }

  scan()
  const fuse = new Fuse(mountPoint, ops, { force: true, mkdir: true, timeout: false, fsname: 'galleon-h63-power' })
  const base = fuse._fuseOptions.bind(fuse)
  // No attribute or entry caching (the backing files change under the kernel at a cut).
  fuse._fuseOptions = () => {
    const own = base() as string
    const extra = 'big_writes,max_write=131072,attr_timeout=0,entry_timeout=0,negative_timeout=0'
    return own === '' ? `-o${extra}` : `${own},${extra}`
  }
  fuse.mount((err: Error | null) => {
    if (err) { send({ type: 'error', message: err.message }); process.exit(1) }
    send({ type: 'ready' })
  })
  process.on('message', (message: Request) => {
    try {
      switch (message.type) {
        case 'cut':
          send({ id: message.id, ok: true, report: cut(message.mode, message.seed) })
          break
        case 'freeze':
          send({ id: message.id, ok: true, report: freeze(message.mode, message.seed) })
          break
        case 'stallDirSync':
          stallDirSync = new RegExp(message.path)
          send({ id: message.id, ok: true })
          break
        case 'model':
          // A model applies from a durable point on: commit what is pending under the old one.
          commitNamespace()
          model = message.model
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
    } catch (err) {
      send({ id: message.id, ok: false, message: err instanceof Error ? err.stack ?? err.message : String(err) })
    }
  })
  process.on('disconnect', () => { fuse.unmount(() => process.exit(0)) })
}

// ---------------------------------------------------------------------------------------------
// The parent side.

/** A running power-loss file system: its mount point and the calls that steer it. */
export interface PowerFs {
  mountPoint: string
  backing: string
  /**
   * The power loss. Every process using the mount must have exited first (a request already read
   * by the file system holds its killed sender until it is answered, so once the sender is gone
   * nothing of it is left in flight but releases, which are ignored for handles from before the cut).
   */
  cut: (mode: FlushMode, seed: number) => Promise<CutReport>
  /**
   * The instant of the power loss, for a cut that must come at a chosen point while the user of the
   * mount still runs: the durable state is taken now and every later change fails with EIO. The
   * `cut` that follows (once the user is gone) writes that state, whatever mode it is given.
   */
  freeze: (mode: FlushMode, seed: number) => Promise<CutReport>
  /** Holds back every fsync of a directory whose path matches (until the freeze), reporting each through `onStalled`. */
  stallDirSync: (pathPattern: string) => Promise<void>
  onStalled: (listener: (path: string) => void) => void
  setModel: (model: NamespaceModel) => Promise<void>
  stats: () => Promise<PowerStats>
  stop: () => Promise<void>
}

/** Why the power-loss file system cannot run here, or undefined when it can. */
export function powerFsUnavailable (): string | undefined {
  return fuseChildUnavailable('power-loss FUSE file system', 'simulate a power loss under a real storagePath')
}

/** Mounts a power-loss mirror of `backing` at `mountPoint` in a child process. */
export async function startPowerFs (backing: string, mountPoint: string, model: NamespaceModel = 'strict'): Promise<PowerFs> {
  const stallListeners: Array<(path: string) => void> = []
  const { request, stop } = await startFuseChild(import.meta.url, ['--h63-child', backing, mountPoint, model], backing, mountPoint, 'power fs', (message) => {
    for (const listener of stallListeners) listener(String(message.path ?? ''))
  })
  return {
    mountPoint,
    backing,
    cut: async (mode, seed) => (await request({ type: 'cut', mode, seed })).report as CutReport,
    freeze: async (mode, seed) => (await request({ type: 'freeze', mode, seed })).report as CutReport,
    stallDirSync: async (path) => { await request({ type: 'stallDirSync', path }) },
    onStalled: (listener) => { stallListeners.push(listener) },
    setModel: async (next) => { await request({ type: 'model', model: next }) },
    stats: async () => (await request({ type: 'stats' })).stats as PowerStats,
    stop
  }
}

if (process.argv[2] === '--h63-child') runChild(process.argv[3] as string, process.argv[4] as string, (process.argv[5] ?? 'strict') as NamespaceModel)
