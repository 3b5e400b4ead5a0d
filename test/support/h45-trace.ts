// Reads an `strace -f -v -s N -o FILE` trace of a GalleonFS child (test/support/h45-durability-child.ts)
// and checks, at every point where the child was told its data is durable, that the system calls
// before it make that data survive a power loss: the bytes synced (fsync/fdatasync of the file after
// the write), and the file's name durable (its directory fsynced after the file was created or
// renamed into place, and so on up to the storage path).
//
// The child frames each operation with `BEGIN <kind> <op>` / `ACK <kind> <op>` lines written to a
// marker file, and every block it writes starts with the tag `h45op<op>b<block>.`, which strace shows
// in the iov_base of the write(2) that carried it. Files are followed as objects (an inode, not a
// path) through openat, dup, close, rename, link and unlink, so a reused descriptor or a renamed file
// is never mistaken for another.

import { dirname, isAbsolute, resolve } from 'node:path'

/** One system call, its two lines merged when strace split it (`<unfinished ...>` / `<... resumed>`). */
export interface Call {
  name: string
  args: string
  result: string
  /** Line (1-based) where the call started, and where it returned. */
  start: number
  end: number
  pid: number
}

/** A file or directory, as the kernel sees it (names come and go; the object stays). */
interface FileObject {
  id: number
  isDir: boolean
  /** Its names now, each with the line where it got that name (-1: it had it before the trace). */
  names: Map<string, number>
  writes: WriteEvent[]
  /** Successful fsync/fdatasync calls on it: start and end lines. */
  syncs: Array<{ start: number, end: number }>
}

interface WriteEvent {
  file: FileObject
  /** The file's name when it was written (the first one, if it had several). */
  name: string
  start: number
  end: number
}

/** One broken rule, with the trace lines that show it. */
export interface Violation {
  rule: string
  at: string
  message: string
  lines: number[]
}

/** What the check found, and counts that show the workload did what it should (rolls, renames...). */
export interface TraceReport {
  violations: Violation[]
  durablePoints: number
  taggedBlocksChecked: number
  counts: Record<string, number>
}

const SEGMENT = /\/seg-[0-9a-f]{16}(?:-[0-9a-f]{8})?\.log$/
const LEVEL_LOG = /\/metadata\/[0-9]{6}\.log$/
const TAG = /h45op(\d{6})b(\d{4})\./g
const DURABLE_WRITE_KINDS = new Set(['dw', 'dr'])
/** Operations after which everything written before they began must be durable. */
const BARRIER_KINDS = new Set(['dw', 'dr', 'fl', 'sn'])
/** Operations that change the catalog (classic-level with sync: true). */
const CATALOG_KINDS = new Set(['cv', 'sn', 'dv'])

/** Splits a trace into calls; lines of other kinds (signals, exits) are skipped. */
export function parseTrace (text: string): Call[] {
  const calls: Call[] = []
  const pending = new Map<number, { name: string, args: string, start: number }>()
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] as string
    const head = /^(\d+)\s+(?:\d\d:\d\d:\d\d\.\d+\s+)?(.*)$/.exec(line)
    if (head === null) continue
    const pid = Number(head[1])
    const body = head[2] as string
    const lineNo = i + 1
    const resumed = /^<\.\.\. ([a-z0-9_]+) resumed>(.*)$/.exec(body)
    if (resumed !== null) {
      const started = pending.get(pid)
      pending.delete(pid)
      if (started === undefined || started.name !== resumed[1]) continue
      const split = splitResult(resumed[2] as string)
      if (split === undefined) continue
      calls.push({ name: started.name, args: started.args + split.args, result: split.result, start: started.start, end: lineNo, pid })
      continue
    }
    const call = /^([a-z0-9_]+)\((.*)$/.exec(body)
    if (call === null) continue
    const rest = call[2] as string
    if (rest.endsWith(' <unfinished ...>')) {
      pending.set(pid, { name: call[1] as string, args: rest.slice(0, -' <unfinished ...>'.length), start: lineNo })
      continue
    }
    const split = splitResult(rest)
    if (split === undefined) continue
    calls.push({ name: call[1] as string, args: split.args, result: split.result, start: lineNo, end: lineNo, pid })
  }
  return calls
}

function splitResult (rest: string): { args: string, result: string } | undefined {
  // strace pads short calls: `fdatasync(23)     = 0`. Greedy, so the last `) =` wins.
  const match = /^(.*)\)\s+= (.*)$/.exec(rest)
  if (match === null) return undefined
  return { args: match[1] as string, result: (match[2] as string).trim() }
}

/** The quoted strings among a call's arguments (paths), unescaped enough for plain paths. */
function quoted (args: string): string[] {
  const found: string[] = []
  const re = /"((?:[^"\\]|\\.)*)"/g
  for (let m = re.exec(args); m !== null; m = re.exec(args)) found.push((m[1] as string).replace(/\\(.)/g, '$1'))
  return found
}

function firstNumber (args: string): number {
  return Number.parseInt(args, 10)
}

/**
 * Checks the trace. `storagePath`: the GalleonFS storage path (rule 2 covers every name below it);
 * `markerPath`: the child's marker file; `cwd`: the child's working directory.
 */
export function checkTrace (text: string, options: { storagePath: string, markerPath: string, cwd?: string }): TraceReport {
  const { storagePath, markerPath } = options
  const cwd = options.cwd ?? '/'
  const calls = parseTrace(text)
  const lineText = text.split('\n')
  const excerpt = (line: number): string => `${line}: ${(lineText[line - 1] ?? '').slice(0, 220)}`
  // Events in line order: a call's fds are resolved where it starts, its effects applied where it ends.
  const events: Array<{ line: number, call: Call, phase: 'start' | 'end' }> = []
  for (const call of calls) {
    if (call.start !== call.end) events.push({ line: call.start, call, phase: 'start' })
    events.push({ line: call.end, call, phase: 'end' })
  }
  events.sort((a, b) => a.line - b.line)

  let nextId = 1
  const byPath = new Map<string, FileObject>()
  const byFd = new Map<number, FileObject>()
  const resolvedAtStart = new Map<Call, FileObject | undefined>()
  const violations: Violation[] = []
  const counts: Record<string, number> = { segmentCreations: 0, preparedSpares: 0, segmentRenames: 0, spareRenames: 0, unlinks: 0, segmentSyncs: 0, directorySyncs: 0, taggedWrites: 0, markers: 0 }
  /** Writes holding each tag (`op:block`), in the order they returned. */
  const tagged = new Map<string, WriteEvent[]>()
  /** BEGIN line of each op, and its kind. */
  const begun = new Map<number, { kind: string, line: number }>()
  let durablePoints = 0
  let taggedBlocksChecked = 0

  const newObject = (path: string, line: number, isDir: boolean): FileObject => {
    const file: FileObject = { id: nextId++, isDir, names: new Map([[path, line]]), writes: [], syncs: [] }
    byPath.set(path, file)
    return file
  }
  const lookup = (path: string, isDir: boolean): FileObject => byPath.get(path) ?? newObject(path, -1, isDir)
  const absolute = (path: string, dirfd: string | undefined): string => {
    if (isAbsolute(path)) return resolve(path)
    if (dirfd !== undefined && dirfd !== 'AT_FDCWD') {
      const base = byFd.get(Number(dirfd))
      const basePath = base === undefined ? undefined : [...base.names.keys()][0]
      if (basePath !== undefined) return resolve(basePath, path)
    }
    return resolve(cwd, path)
  }
  const removeName = (path: string): void => {
    const file = byPath.get(path)
    if (file === undefined) return
    file.names.delete(path)
    byPath.delete(path)
  }
  const underStorage = (path: string): boolean => path.startsWith(storagePath + '/')

  /** Whether `file` has a sync that started after line `after` and has returned (before now). */
  const syncedAfter = (file: FileObject, after: number): { start: number, end: number } | undefined =>
    file.syncs.find((sync) => sync.start > after)

  /**
   * Why the name `path` of `file` (and the names of the directories above it, up to the storage
   * path) is not yet durable; undefined when it is.
   */
  const nameProblem = (file: FileObject, path: string): { message: string, lines: number[] } | undefined => {
    const madeAt = file.names.get(path)
    if (madeAt === undefined) return { message: `${path} has no such name any more`, lines: [] }
    if (madeAt !== -1) {
      const parentPath = dirname(path)
      const parent = byPath.get(parentPath)
      const sync = parent === undefined ? undefined : syncedAfter(parent, madeAt)
      if (sync === undefined) {
        const last = parent?.syncs.filter((s) => s.end < madeAt).pop()
        return {
          message: `${path} got its name at line ${madeAt}, and its directory ${parentPath} was not fsynced after that` +
            (last === undefined ? ' (never fsynced at all)' : ` (last fsynced at line ${last.start}, before the name existed)`),
          lines: [madeAt, ...(last === undefined ? [] : [last.start])]
        }
      }
    }
    const parentPath = dirname(path)
    if (!underStorage(parentPath)) return undefined
    const parent = byPath.get(parentPath)
    if (parent === undefined) return undefined
    return nameProblem(parent, parentPath)
  }

  /** A durable name of `file`, or the problem of each of its names. */
  const durableName = (file: FileObject): { ok: true } | { ok: false, message: string, lines: number[] } => {
    if (file.names.size === 0) return { ok: false, message: 'the file has been unlinked', lines: [] }
    const problems: Array<{ message: string, lines: number[] }> = []
    for (const path of file.names.keys()) {
      const problem = nameProblem(file, path)
      if (problem === undefined) return { ok: true }
      problems.push(problem)
    }
    return { ok: false, message: problems.map((p) => p.message).join('; '), lines: problems.flatMap((p) => p.lines) }
  }

  const report = (rule: string, at: string, message: string, lines: number[]): void => {
    violations.push({ rule, at, message, lines })
  }

  const onAck = (kind: string, op: number, line: number): void => {
    const began = begun.get(op)
    if (began === undefined) {
      report('protocol', `ACK ${kind} ${op}`, 'ACK without BEGIN', [line])
      return
    }
    const at = `ACK ${kind} ${op} (line ${line})`
    // Rule 1 + 2 for the op's own blocks: some copy of each block is synced and durably named.
    if (DURABLE_WRITE_KINDS.has(kind)) {
      const blocks = kind === 'dr' ? 4 : 1
      for (let block = 0; block < blocks; block++) {
        taggedBlocksChecked++
        const writes = (tagged.get(`${op}:${block}`) ?? []).filter((w) => w.end < line)
        if (writes.length === 0) {
          report('rule 1 (data synced)', at, `no write(2) before the ACK carries block ${block} of op ${op} (tag h45op${String(op).padStart(6, '0')}b${String(block).padStart(4, '0')})`, [began.line, line])
          continue
        }
        const problems: Violation[] = []
        let ok = false
        for (const write of writes) {
          const sync = syncedAfter(write.file, write.end)
          if (sync === undefined || sync.end > line) {
            const last = write.file.syncs.filter((s) => s.end < line).pop()
            problems.push({ rule: 'rule 1 (data synced)', at, message: `block ${block} of op ${op} was written to ${write.name} (line ${write.end}) and that file was not fsynced/fdatasynced after it before the ACK` + (last === undefined ? '' : ` (its last sync started at line ${last.start})`), lines: [write.start, write.end, ...(last === undefined ? [] : [last.start, last.end]), line] })
            continue
          }
          const named = durableName(write.file)
          if (!named.ok) {
            problems.push({ rule: 'rule 2 (name durable)', at, message: `block ${block} of op ${op} is in ${write.name} (written line ${write.end}, synced line ${sync.end}), but ${named.message}`, lines: [write.end, sync.start, ...named.lines, line] })
            continue
          }
          ok = true
          break
        }
        if (!ok) violations.push(...problems.slice(0, 2))
      }
    }
    // Rules 1 + 2 (and 3 for flush): everything written to a segment before the operation began is
    // synced and durably named when it resolves (a durable write also makes every earlier write
    // durable, README "Write concerns").
    if (BARRIER_KINDS.has(kind)) {
      durablePoints++
      const rule = kind === 'fl' ? 'rule 3 (flush)' : kind === 'sn' ? 'rule 3 (snapshot)' : 'rule 1 (earlier writes synced)'
      for (const file of new Set(byPath.values())) {
        if (file.isDir || file.writes.length === 0) continue
        const before = file.writes.filter((w) => w.end < began.line && SEGMENT.test(w.name))
        if (before.length === 0) continue
        if (![...file.names.keys()].some((name) => SEGMENT.test(name))) continue
        const lastWrite = before[before.length - 1] as WriteEvent
        const sync = syncedAfter(file, lastWrite.end)
        if (sync === undefined) {
          report(rule, at, `${lastWrite.name} was written at line ${lastWrite.end}, before op ${op} began (line ${began.line}), and not synced before it resolved`, [lastWrite.start, lastWrite.end, began.line, line])
          continue
        }
        const named = durableName(file)
        if (!named.ok) report('rule 2 (name durable)', at, `${[...file.names.keys()].join(', ')} holds data written before ${kind} op ${op} began, but ${named.message}`, [...named.lines, line])
      }
    }
    // Rule 4: catalog changes reach a synced LevelDB log; rule 2 for the metadata directory's name.
    if (CATALOG_KINDS.has(kind)) {
      let logWrites = 0
      for (const file of new Set(byPath.values())) {
        const name = [...file.names.keys()].find((n) => LEVEL_LOG.test(n))
        if (name === undefined) continue
        const during = file.writes.filter((w) => w.end > began.line && w.end < line)
        if (during.length === 0) continue
        logWrites += during.length
        const lastWrite = during[during.length - 1] as WriteEvent
        const sync = syncedAfter(file, lastWrite.end)
        if (sync === undefined) report('rule 4 (catalog synced)', at, `the metadata log ${name} was written at line ${lastWrite.end} and not synced before the ACK (classic-level was not asked for sync: true)`, [lastWrite.end, line])
      }
      if (logWrites === 0) report('rule 4 (catalog synced)', at, 'no write to a LevelDB log (metadata/NNNNNN.log) between BEGIN and ACK', [began.line, line])
      const metadataDir = byPath.get(`${storagePath}/metadata`)
      if (metadataDir !== undefined) {
        const problem = nameProblem(metadataDir, `${storagePath}/metadata`)
        if (problem !== undefined) report('rule 2 (metadata directory named durably)', at, problem.message, [...problem.lines, line])
      }
    }
  }

  for (const { call, phase } of events) {
    const fdCall = ['write', 'pwrite64', 'writev', 'pwritev', 'pwritev2', 'fsync', 'fdatasync', 'ftruncate', 'close', 'dup', 'dup2', 'dup3', 'fcntl'].includes(call.name)
    if (phase === 'start') {
      if (fdCall) resolvedAtStart.set(call, byFd.get(firstNumber(call.args)))
      continue
    }
    const file = fdCall ? (resolvedAtStart.has(call) ? resolvedAtStart.get(call) : byFd.get(firstNumber(call.args))) : undefined
    resolvedAtStart.delete(call)
    const failed = call.result.startsWith('-1') || call.result.startsWith('?')
    switch (call.name) {
      case 'open':
      case 'openat':
      case 'creat': {
        if (failed) break
        const strings = quoted(call.args)
        const dirfd = call.name === 'openat' ? call.args.split(',')[0]?.trim() : undefined
        const path = absolute(strings[0] ?? '', dirfd)
        const creates = call.name === 'creat' || /O_CREAT/.test(call.args)
        const isDir = /O_DIRECTORY/.test(call.args)
        let object = byPath.get(path)
        if (object === undefined) {
          object = creates ? newObject(path, call.end, isDir) : lookup(path, isDir)
          if (creates && SEGMENT.test(path)) counts.segmentCreations = (counts.segmentCreations ?? 0) + 1
          if (creates && /\/spare-f[0-9a-f]+\.log$/.test(path)) counts.preparedSpares = (counts.preparedSpares ?? 0) + 1
        }
        if (isDir) object.isDir = true
        byFd.set(Number(call.result), object)
        break
      }
      case 'mkdir':
      case 'mkdirat': {
        if (failed) break
        const strings = quoted(call.args)
        const dirfd = call.name === 'mkdirat' ? call.args.split(',')[0]?.trim() : undefined
        const path = absolute(strings[0] ?? '', dirfd)
        removeName(path)
        newObject(path, call.end, true)
        break
      }
      case 'rename':
      case 'renameat':
      case 'renameat2': {
        if (failed) break
        const parts = call.args.split(',').map((p) => p.trim())
        const strings = quoted(call.args)
        const from = absolute(strings[0] ?? '', call.name === 'rename' ? undefined : parts[0])
        const to = absolute(strings[1] ?? '', call.name === 'rename' ? undefined : parts[2])
        const object = lookup(from, false)
        removeName(from)
        removeName(to)
        object.names.set(to, call.end)
        byPath.set(to, object)
        if (SEGMENT.test(to)) counts.segmentRenames = (counts.segmentRenames ?? 0) + 1
        if (/\/spare-[0-9a-f]+\.log$/.test(to)) counts.spareRenames = (counts.spareRenames ?? 0) + 1
        break
      }
      case 'link':
      case 'linkat': {
        if (failed) break
        const parts = call.args.split(',').map((p) => p.trim())
        const strings = quoted(call.args)
        const from = absolute(strings[0] ?? '', call.name === 'link' ? undefined : parts[0])
        const to = absolute(strings[1] ?? '', call.name === 'link' ? undefined : parts[2])
        const object = lookup(from, false)
        object.names.set(to, call.end)
        byPath.set(to, object)
        break
      }
      case 'unlink':
      case 'unlinkat': {
        if (failed) break
        const parts = call.args.split(',').map((p) => p.trim())
        const strings = quoted(call.args)
        removeName(absolute(strings[0] ?? '', call.name === 'unlink' ? undefined : parts[0]))
        counts.unlinks = (counts.unlinks ?? 0) + 1
        break
      }
      case 'close': {
        // The descriptor is released when the close starts to take effect: an open in another
        // thread may get the same number back before strace prints the close's end
        // (`close(26 <unfinished ...>`, `openat(...) = 26`, `<... close resumed>`). Only the file
        // the close began on is forgotten, not the one opened meanwhile.
        const fd = firstNumber(call.args)
        if (!failed && byFd.get(fd) === file) byFd.delete(fd)
        break
      }
      case 'dup':
      case 'dup2':
      case 'dup3':
      case 'fcntl': {
        if (failed) break
        if (call.name === 'fcntl' && !/F_DUPFD/.test(call.args)) break
        const newFd = Number(call.result.split(' ')[0])
        if (file !== undefined) byFd.set(newFd, file)
        else byFd.delete(newFd)
        break
      }
      case 'fsync':
      case 'fdatasync':
        if (failed || file === undefined) break
        file.syncs.push({ start: call.start, end: call.end })
        if (file.isDir) counts.directorySyncs = (counts.directorySyncs ?? 0) + 1
        else if ([...file.names.keys()].some((n) => SEGMENT.test(n))) counts.segmentSyncs = (counts.segmentSyncs ?? 0) + 1
        break
      case 'write':
      case 'pwrite64':
      case 'writev':
      case 'pwritev':
      case 'pwritev2':
      case 'ftruncate': {
        if (failed || file === undefined) break
        const name = [...file.names.keys()][0] ?? '(unlinked)'
        if (name === markerPath) {
          // Matched on the raw text: strace writes the newline as the two characters \n.
          const marker = /"(BEGIN|ACK) ([a-z]+) (\d+)\\n"/.exec(call.args)
          if (marker === null) break
          counts.markers = (counts.markers ?? 0) + 1
          const op = Number(marker[3])
          if (marker[1] === 'BEGIN') begun.set(op, { kind: marker[2] as string, line: call.start })
          else onAck(marker[2] as string, op, call.start)
          break
        }
        const event: WriteEvent = { file, name, start: call.start, end: call.end }
        file.writes.push(event)
        if (call.name !== 'ftruncate') {
          TAG.lastIndex = 0
          for (let m = TAG.exec(call.args); m !== null; m = TAG.exec(call.args)) {
            const key = `${Number(m[1])}:${Number(m[2])}`
            let list = tagged.get(key)
            if (list === undefined) tagged.set(key, list = [])
            list.push(event)
            counts.taggedWrites = (counts.taggedWrites ?? 0) + 1
          }
        }
        break
      }
    }
  }
  for (const violation of violations) violation.message += '\n' + violation.lines.filter((l, i, all) => all.indexOf(l) === i).sort((a, b) => a - b).map(excerpt).join('\n')
  return { violations, durablePoints, taggedBlocksChecked, counts }
}
