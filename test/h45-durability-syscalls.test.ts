// Does an acknowledged WriteDurable survive a power loss? A GalleonFS child (file backend, small
// segments) runs under strace; the trace is checked at every durable acknowledgement for the system
// calls a power loss needs: the written bytes fsynced/fdatasynced, and every name on the way to them
// (segment file, blocks directory, metadata directory) made durable by an fsync of its directory.
// The crash tests (SIGKILL) keep the page cache and cannot see either. See test/support/h45-trace.ts.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { scriptArgs } from './support/child-script.js'
import { checkTrace, type TraceReport, type Violation } from './support/h45-trace.js'

const CHILD = fileURLToPath(new URL('./support/h45-durability-child.ts', import.meta.url))
const TRACED = 'open,openat,creat,write,pwrite64,writev,pwritev,pwritev2,fsync,fdatasync,sync_file_range,rename,renameat,renameat2,' +
  'unlink,unlinkat,close,dup,dup2,dup3,fcntl,mkdir,mkdirat,link,linkat,ftruncate,truncate,sync,syncfs'
/** Durable blocks the child writes: 1470 writeBlock calls and 40 write() calls of 4 blocks. */
const DURABLE_BLOCKS = 600 + 600 + 100 + 20 + 150 + 40 * 4

/** Why strace cannot be used here, or undefined when it can (with the flags that work). */
function straceProblem (): { problem?: string, flags: string[] } {
  const probe = (flags: string[]): ReturnType<typeof spawnSync> =>
    spawnSync('strace', [...flags, '-f', '-qq', '-o', '/dev/null', '-e', 'trace=fsync', process.execPath, '-e', '0'], { encoding: 'utf8', timeout: 30_000 })
  const fast = probe(['--seccomp-bpf'])
  if ((fast.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') return { problem: 'strace is not installed (Debian package strace)', flags: [] }
  if (fast.status === 0) return { flags: ['--seccomp-bpf'] }
  const plain = probe([])
  if (plain.status === 0) return { flags: [] }
  return { problem: `strace cannot trace a child here (ptrace not permitted?): ${String(plain.stderr).trim().slice(0, 300)}`, flags: [] }
}

function summary (violations: readonly Violation[], limit = 4): string {
  const byRule = new Map<string, number>()
  for (const v of violations) byRule.set(v.rule, (byRule.get(v.rule) ?? 0) + 1)
  // One example per distinct message shape, so a flood of one cause still shows the others.
  const shapes = new Set<string>()
  const examples: Violation[] = []
  for (const v of violations) {
    const shape = v.rule + (v.message.split('\n')[0] ?? '').replace(/[0-9a-f]{6,}|\d+/g, 'N')
    if (shapes.has(shape)) continue
    shapes.add(shape)
    examples.push(v)
  }
  return `${violations.length} violation(s): ${[...byRule].map(([rule, n]) => `${rule} x${n}`).join(', ')}\n` +
    examples.slice(0, limit).map((v) => `--- ${v.rule} at ${v.at}\n${v.message}`).join('\n')
}

describe('h45: what WriteDurable promises holds at the system-call level (strace, file backend)', () => {
  const strace = straceProblem()
  let dir = ''
  let trace = ''
  let storagePath = ''
  let markerPath = ''
  let report: TraceReport | undefined
  let childOutput = ''

  before(async () => {
    if (strace.problem !== undefined) return
    dir = await mkdtemp(join(tmpdir(), 'galleon-h45-'))
    storagePath = join(dir, 'store')
    markerPath = join(dir, 'markers.log')
    const tracePath = join(dir, 'trace.txt')
    const child = spawn('strace', [...strace.flags, '-f', '-qq', '-v', '-s', '48', '-tt', '-o', tracePath, '-e', `trace=${TRACED}`,
      process.execPath, ...scriptArgs(CHILD), storagePath, markerPath], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
    child.stdout.setEncoding('utf8')
    child.stderr.setEncoding('utf8')
    child.stdout.on('data', (chunk: string) => { childOutput += chunk })
    child.stderr.on('data', (chunk: string) => { if (childOutput.length < 20_000) childOutput += chunk })
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once('error', reject)
      child.once('close', (exitCode) => { resolve(exitCode) })
    })
    assert.equal(code, 0, `the traced child failed:\n${childOutput}`)
    trace = await readFile(tracePath, 'utf8')
    report = checkTrace(trace, { storagePath, markerPath, cwd: dir })
  })

  after(async () => {
    if (dir !== '') await rm(dir, { recursive: true, force: true })
  })

  it('the workload rolled, compacted, reused spare files and acknowledged every durable block', (t) => {
    if (strace.problem !== undefined) { t.skip(strace.problem); return }
    const { counts, taggedBlocksChecked, durablePoints } = report as TraceReport
    t.diagnostic(`counts ${JSON.stringify(counts)}, ${durablePoints} durable points, ${taggedBlocksChecked} durable blocks; ${childOutput.trim()}`)
    assert.equal(taggedBlocksChecked, DURABLE_BLOCKS, 'every durable block acknowledged was checked')
    assert.ok((counts.segmentCreations ?? 0) >= 3, `new segment files were created (${counts.segmentCreations})`)
    assert.ok((counts.spareRenames ?? 0) >= 1, `compaction kept an emptied segment as a spare (${counts.spareRenames})`)
    assert.ok((counts.segmentRenames ?? 0) >= 1, `a spare became a segment (${counts.segmentRenames})`)
    assert.ok((counts.unlinks ?? 0) >= 1, `hint or segment files were unlinked by compaction (${counts.unlinks})`)
    assert.ok((counts.taggedWrites ?? 0) >= DURABLE_BLOCKS, 'the tags of the blocks were seen in the written data')
  })

  it('rules 1, 3 and 4: every durable ACK, flush and snapshot follows an fsync/fdatasync of the written data, and catalog changes a synced LevelDB log', (t) => {
    if (strace.problem !== undefined) { t.skip(strace.problem); return }
    const synced = (report as TraceReport).violations.filter((v) => !v.rule.startsWith('rule 2'))
    assert.equal(synced.length, 0, summary(synced))
  })

  it('rule 2: the name of every file holding acknowledged data, and of every directory above it up to the storage path, was made durable by an fsync of its directory first', (t) => {
    if (strace.problem !== undefined) { t.skip(strace.problem); return }
    const named = (report as TraceReport).violations.filter((v) => v.rule.startsWith('rule 2'))
    assert.equal(named.length, 0, summary(named))
  })

  it('the checker catches a missing data sync and a missing directory sync in this same trace', (t) => {
    if (strace.problem !== undefined) { t.skip(strace.problem); return }
    const lines = trace.split('\n')
    // Every fdatasync/fsync becomes a call that failed: the checker must no longer count any of them.
    const noDataSyncs = lines.map((line) => /(fdatasync|fsync)\(/.test(line) ? line.replace(/= 0$/, '= -1 EIO (Input/output error)') : line).join('\n')
    const withoutSyncs = checkTrace(noDataSyncs, { storagePath, markerPath, cwd: dir })
    assert.ok(withoutSyncs.violations.some((v) => v.rule === 'rule 1 (data synced)'), 'a durable ACK without any sync is reported under rule 1')
    assert.ok(withoutSyncs.violations.some((v) => v.rule === 'rule 3 (flush)'), 'a flush without any sync is reported under rule 3')
    assert.ok(withoutSyncs.violations.some((v) => v.rule === 'rule 4 (catalog synced)'), 'a catalog change without a LevelDB sync is reported under rule 4')
    // A directory fsync that never happened: rename the blocks directory's syncs away by making
    // them fail, everything else untouched.
    const blocksFds = new Set<string>()
    const noBlocksDirSyncs = lines.map((line) => {
      const opened = /openat\(AT_FDCWD, "([^"]+)", O_RDONLY[^)]*\) = (\d+)$/.exec(line)
      if (opened !== null) {
        if (opened[1] === join(storagePath, 'blocks')) blocksFds.add(opened[2] as string)
        else blocksFds.delete(opened[2] as string)
      }
      const sync = /fsync\((\d+)/.exec(line)
      return sync !== null && blocksFds.has(sync[1] as string) ? line.replace(/= 0$/, '= -1 EIO (Input/output error)') : line
    }).join('\n')
    const withoutDirSyncs = checkTrace(noBlocksDirSyncs, { storagePath, markerPath, cwd: dir })
    assert.ok(withoutDirSyncs.violations.some((v) => v.rule === 'rule 2 (name durable)' && /\/blocks\/seg-[0-9a-f]{16}(-[0-9a-f]{8})?\.log got its name/.test(v.message)),
      'a segment file whose directory was never fsynced is reported under rule 2')
  })
})

describe('h45: the trace checker on hand-written traces', () => {
  const S = '/s'
  const M = '/m.log'
  const head = [
    '1 00:00:00.000001 openat(AT_FDCWD, "/m.log", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 3',
    '1 00:00:00.000002 mkdir("/s", 0777) = 0',
    '1 00:00:00.000003 openat(AT_FDCWD, "/", O_RDONLY) = 4',
    '1 00:00:00.000004 fsync(4)         = 0',
    '1 00:00:00.000005 close(4)         = 0',
    '1 00:00:00.000006 mkdir("/s/blocks", 0777) = 0',
    '1 00:00:00.000007 openat(AT_FDCWD, "/s", O_RDONLY) = 4',
    '1 00:00:00.000008 fsync(4)         = 0',
    '1 00:00:00.000009 close(4)         = 0'
  ]
  const write = (fd: number, op: number): string => `1 00:00:01.000000 pwritev(${fd}, [{iov_base="GFR1", iov_len=36}, {iov_base="\\1\\2\\3\\4\\5\\6\\7\\10h45op${String(op).padStart(6, '0')}b0000......"..., iov_len=4104}], 2, 0) = 4140`
  // Lines written as `<pid> 0 <call>` get a timestamp, as strace -tt writes them.
  const stamped = (lines: string[]): string => lines.map((line) => line.replace(/^(\d+) 0 /, '$1 00:00:00.000000 ')).join('\n')
  const check = (body: string[]): TraceReport => checkTrace(stamped([...head, ...body]), { storagePath: S, markerPath: M })
  const segment = '/s/blocks/seg-0000000000000001.log'
  const created = [
    `1 00:00:00.100000 openat(AT_FDCWD, "${segment}", O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0666) = 5`,
    '1 00:00:00.100001 openat(AT_FDCWD, "/s/blocks", O_RDONLY|O_CLOEXEC) = 6',
    '1 00:00:00.100002 fsync(6)         = 0',
    '1 00:00:00.100003 close(6)         = 0'
  ]

  it('passes a durable write that was synced, in a file whose name and directories were synced', () => {
    const report = check([...created, '1 0 write(3, "BEGIN dw 7\\n", 11) = 11', write(5, 7), '2 0 fdatasync(5) = 0', '1 0 write(3, "ACK dw 7\\n", 9) = 9'])
    assert.deepEqual(report.violations, [])
    assert.equal(report.taggedBlocksChecked, 1)
  })

  it('reports a write acknowledged before its sync returned (rule 1), including a sync that started before the write ended', () => {
    const missing = check([...created, '1 0 write(3, "BEGIN dw 7\\n", 11) = 11', write(5, 7), '1 0 write(3, "ACK dw 7\\n", 9) = 9'])
    assert.ok(missing.violations.some((v) => v.rule === 'rule 1 (data synced)'))
    const early = check([...created, '1 0 write(3, "BEGIN dw 7\\n", 11) = 11',
      '2 0 fdatasync(5 <unfinished ...>', write(5, 7), '2 0 <... fdatasync resumed>) = 0', '1 0 write(3, "ACK dw 7\\n", 9) = 9'])
    assert.ok(early.violations.some((v) => v.rule === 'rule 1 (data synced)'))
  })

  it('follows a reused descriptor: a sync of the new file does not cover the old one', () => {
    const report = check([...created, '1 0 write(3, "BEGIN dw 7\\n", 11) = 11', write(5, 7), '1 0 close(5) = 0',
      '1 0 openat(AT_FDCWD, "/s/blocks/seg-0000000000000002.log", O_RDWR|O_CREAT|O_EXCL, 0666) = 5', '2 0 fdatasync(5) = 0',
      '1 0 write(3, "ACK dw 7\\n", 9) = 9'])
    assert.ok(report.violations.some((v) => v.rule === 'rule 1 (data synced)' && v.message.includes('seg-0000000000000001.log')))
  })

  it('a close whose end strace prints after an open in another thread got the same descriptor back does not forget the new file', () => {
    // As seen in a CI run: thread 3 closes an old descriptor 7 while thread 4 opens the segment and
    // gets 7; the close's end is printed after the open's. The write to 7 is the segment's.
    const report = check(['1 0 openat(AT_FDCWD, "/s/blocks/seg-0000000000000000.log", O_RDWR|O_CREAT|O_EXCL, 0666) = 7',
      '1 0 openat(AT_FDCWD, "/s/blocks", O_RDONLY) = 6', '1 0 fsync(6) = 0', '1 0 close(6) = 0',
      '1 0 write(3, "BEGIN dw 7\\n", 11) = 11', '3 0 close(7 <unfinished ...>',
      `4 0 openat(AT_FDCWD, "${segment}", O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0666 <unfinished ...>`, '4 0 <... openat resumed>) = 7',
      '3 0 <... close resumed>) = 0', '1 0 openat(AT_FDCWD, "/s/blocks", O_RDONLY|O_CLOEXEC) = 6', '1 0 fsync(6) = 0', '1 0 close(6) = 0',
      write(7, 7), '2 0 fdatasync(7) = 0', '1 0 write(3, "ACK dw 7\\n", 9) = 9'])
    assert.deepEqual(report.violations.map((v) => v.message.split('\n')[0]), [])
    assert.equal(report.taggedBlocksChecked, 1)
  })

  it('reports a new segment, or a spare renamed into place, whose directory was not fsynced after it (rule 2)', () => {
    const fresh = check([`1 0 openat(AT_FDCWD, "${segment}", O_RDWR|O_CREAT|O_EXCL, 0666) = 5`,
      '1 0 write(3, "BEGIN dw 7\\n", 11) = 11', write(5, 7), '2 0 fdatasync(5) = 0', '1 0 write(3, "ACK dw 7\\n", 9) = 9'])
    assert.ok(fresh.violations.some((v) => v.rule === 'rule 2 (name durable)' && v.message.includes(`${segment} got its name`)))
    const renamed = check(['1 0 openat(AT_FDCWD, "/s/blocks/spare-0000000000000001.log", O_RDWR|O_CREAT, 0666) = 5',
      '1 0 openat(AT_FDCWD, "/s/blocks", O_RDONLY) = 6', '1 0 fsync(6) = 0', '1 0 close(6) = 0',
      '1 0 rename("/s/blocks/spare-0000000000000001.log", "/s/blocks/seg-0000000000000002-0badf00d.log") = 0',
      '1 0 write(3, "BEGIN dw 7\\n", 11) = 11', write(5, 7), '2 0 fdatasync(5) = 0', '1 0 write(3, "ACK dw 7\\n", 9) = 9'])
    assert.ok(renamed.violations.some((v) => v.rule === 'rule 2 (name durable)' && v.message.includes('seg-0000000000000002-0badf00d.log got its name')))
  })

  it('reports a directory below the storage path whose own entry was never fsynced', () => {
    const trace = [
      '1 0 openat(AT_FDCWD, "/m.log", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 3', '1 0 mkdir("/s", 0777) = 0', '1 0 mkdir("/s/blocks", 0777) = 0',
      `1 0 openat(AT_FDCWD, "${segment}", O_RDWR|O_CREAT|O_EXCL, 0666) = 5`, '1 0 openat(AT_FDCWD, "/s/blocks", O_RDONLY) = 6', '1 0 fsync(6) = 0',
      '1 0 write(3, "BEGIN dw 7\\n", 11) = 11', write(5, 7), '2 0 fdatasync(5) = 0', '1 0 write(3, "ACK dw 7\\n", 9) = 9'
    ]
    const report = checkTrace(stamped(trace), { storagePath: S, markerPath: M })
    assert.ok(report.violations.some((v) => v.rule === 'rule 2 (name durable)' && v.message.includes('/s/blocks got its name')))
  })

  it('reports a flush that resolves before earlier acknowledged writes are synced (rule 3)', () => {
    const report = check([...created, '1 0 write(3, "BEGIN aw 1\\n", 11) = 11', write(5, 1), '1 0 write(3, "ACK aw 1\\n", 9) = 9',
      '1 0 write(3, "BEGIN fl 2\\n", 11) = 11', '1 0 write(3, "ACK fl 2\\n", 9) = 9'])
    assert.ok(report.violations.some((v) => v.rule === 'rule 3 (flush)'))
  })
})
