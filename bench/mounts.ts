// Volume access benchmark, each figure a ratio against a baseline measured in the same run:
//   1. the NBD export vs qemu-nbd serving a qcow2 image of the same size, both driven by
//      fio --ioengine=nbd: 4 KiB random read and write at iodepth 16, 1 MiB sequential read and
//      write (goal >= 1.0x, floor 0.5x);
//      As references: the same fio cases against a passthrough NBD server written for Node.js that
//      only preads and pwrites a file (bench/nbd-passthrough.ts), the bound of any single-threaded
//      Node.js server that stores the bytes, and GalleonFS against it;
//   2. FUSE: dd of 1 MiB blocks writing and reading `data` on a GalleonFS mount vs the same dd on a
//      null fuse-native file system that stores nothing (goal >= 0.8x). As references: the same
//      1 MiB writes and reads made by g.write()/g.read() in this process, and dd on a passthrough
//      fuse-native file system that only preads and pwrites a file (the bound of any file system
//      that stores the bytes), both against the same baseline; and GalleonFS against the passthrough.
// Needs fio, qemu-img and qemu-nbd (NBD part) and /dev/fuse with fusermount (FUSE part); a part
// whose tools are missing is reported as skipped. Saved to bench/results/mounts.json.
// The two sides take turns (each case twice, alternating who goes first), and GalleonFS settles
// before every measurement (see settle.ts): flushed, compaction done, dirty pages written back.
//
// Env: BENCH_SECONDS (seconds per fio case, default 5), BENCH_DIR (parent of the temporary
//      directory), BENCH_VOLUME (volume and image size, default 1G), BENCH_PARTS (which parts to
//      run, comma-separated: nbd, fuse; default both).

import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { GalleonFS, parseSize } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { settle } from './settle.js'
import { startPassthroughNbd } from './nbd-passthrough.js'

const exec = promisify(execFile)
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5)
const VOLUME = parseSize(process.env.BENCH_VOLUME ?? '1G')
const RESULTS_FILE = fileURLToPath(new URL('./results/mounts.json', import.meta.url))
const has = (tool: string): boolean => ['/bin', '/usr/bin', '/usr/local/bin', '/sbin', '/usr/sbin'].some((dir) => existsSync(join(dir, tool)))

interface Row { case: string, value: number, baseline: number, unit: string, ratio: number, target: string }

/** One fio run against an NBD URI: IOPS for 4 KiB cases, MiB/s for 1 MiB ones. */
async function fio (uri: string, rw: string, bs: string, iodepth: number, seconds: number): Promise<number> {
  const { stdout } = await exec('fio', ['--name=bench', '--ioengine=nbd', `--uri=${uri}`, `--rw=${rw}`, `--bs=${bs}`, `--iodepth=${iodepth}`,
    `--size=${VOLUME}`, '--time_based', `--runtime=${seconds}`, '--output-format=json'], { maxBuffer: 64 << 20 })
  const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0]
  const side = rw.includes('read') ? job.read : job.write
  return bs === '4k' ? side.iops : side.bw_bytes / (1 << 20)
}

async function waitForPort (port: number, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) throw new Error(`qemu-nbd exited with ${child.exitCode}`)
    try {
      await exec('nbdinfo', [`nbd://127.0.0.1:${port}/img`])
      return
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
  throw new Error('qemu-nbd did not start')
}

async function nbdPart (dir: string, rows: Row[]): Promise<void> {
  if (!has('fio') || !has('qemu-img') || !has('qemu-nbd') || !has('nbdinfo')) {
    console.log('NBD part skipped: needs fio, qemu-img, qemu-nbd and nbdinfo (Debian packages fio, qemu-utils, libnbd-bin)')
    return
  }
  const g = await GalleonFS.open({ storagePath: join(dir, 'storage') })
  const server = await NbdServer.listen(g, { port: 0 })
  const image = join(dir, 'image.qcow2')
  await exec('qemu-img', ['create', '-f', 'qcow2', image, String(VOLUME)])
  const port = 20000 + Math.floor(Math.random() * 20000)
  const qemu = spawn('qemu-nbd', ['-f', 'qcow2', '-p', String(port), '-b', '127.0.0.1', '-x', 'img', '-t', '--shared=8', image], { stdio: 'ignore' })
  const passthrough = await startPassthroughNbd(join(dir, 'passthrough.img'), VOLUME)
  try {
    await g.createVolume({ name: 'bench', sizeBytes: VOLUME })
    await waitForPort(port, qemu)
    const ours = `nbd://127.0.0.1:${server.port}/bench`
    const theirs = `nbd://127.0.0.1:${port}/img`
    const bare = `nbd://127.0.0.1:${passthrough.port}/`
    // Fill all three, so reads read data and writes overwrite it.
    for (const uri of [ours, theirs, bare]) {
      await exec('fio', ['--name=fill', '--ioengine=nbd', `--uri=${uri}`, '--rw=write', '--bs=1M', '--iodepth=4', `--size=${VOLUME}`, '--output-format=json'], { maxBuffer: 64 << 20 })
    }
    const references: Row[] = []
    const cases: Array<[string, string, string, number]> = [
      ['4 KiB random read, iodepth 16', 'randread', '4k', 16],
      ['4 KiB random write, iodepth 16', 'randwrite', '4k', 16],
      ['1 MiB sequential read, iodepth 4', 'read', '1M', 4],
      ['1 MiB sequential write, iodepth 4', 'write', '1M', 4]
    ]
    for (const [name, rw, bs, depth] of cases) {
      // Two rounds each, the order reversed in the second, summed: all see the same machine.
      let mine = 0
      let baseline = 0
      let reference = 0
      for (let round = 0; round < 2; round++) {
        const order = round === 0 ? [ours, theirs, bare] : [bare, theirs, ours]
        for (const uri of order) {
          // None pays for another's leftovers (GalleonFS's compaction, dirty pages).
          await settle(g)
          const value = await fio(uri, rw, bs, depth, SECONDS / 2)
          if (uri === ours) mine += value / 2
          else if (uri === theirs) baseline += value / 2
          else reference += value / 2
        }
      }
      const unit = bs === '4k' ? 'IOPS' : 'MiB/s'
      rows.push({ case: `NBD ${name}: GalleonFS vs qemu-nbd (qcow2)`, value: mine, baseline, unit, ratio: mine / baseline, target: '>= 1.0 (floor 0.5)' })
      // Not a target: the bound of a Node.js server that stores the bytes (see nbd-passthrough.ts).
      references.push({ case: `reference: NBD ${name}, a passthrough Node.js NBD server (pread/pwrite to a file) vs qemu-nbd`, value: reference, baseline, unit, ratio: reference / baseline, target: '(bound)' })
      references.push({ case: `reference: NBD ${name}, GalleonFS vs the passthrough Node.js NBD server`, value: mine, baseline: reference, unit, ratio: mine / reference, target: '(overhead)' })
    }
    rows.push(...references)
  } finally {
    await passthrough.close()
    qemu.kill('SIGTERM')
    await server.close()
    await g.close()
  }
}

/**
 * A FUSE file system with one file `data`. Without `backing` it stores nothing: the baseline of the
 * FUSE path itself. With `backing` (a file path) it passes reads and writes to that file with
 * positional reads and writes, nothing else: the cheapest file system that keeps the bytes, so its
 * rate bounds what any storing file system (GalleonFS included) can reach against the baseline.
 */
async function simpleFuse (mnt: string, size: number, backing?: string): Promise<{ unmount: () => Promise<void> }> {
  const Fuse = createRequire(import.meta.url)('fuse-native')
  const now = new Date()
  const stat = (mode: number, bytes: number): Record<string, unknown> => ({ mtime: now, atime: now, ctime: now, nlink: 1, size: bytes, mode, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 })
  let fd = -1
  if (backing !== undefined) {
    fd = openSync(backing, 'w+')
    ftruncateSync(fd, size)
  }
  // The backing file's calls run on the event loop (synchronously): the fastest way to move the bytes.
  const transfer = (io: typeof readSync, buf: Buffer, len: number, pos: number): number => {
    const n = Math.max(0, Math.min(len, size - pos))
    if (fd === -1 || n === 0) return n
    let done = 0
    while (done < n) done += io(fd, buf, done, n - done, pos + done)
    return done
  }
  const ops = {
    readdir: (_p: string, cb: (code: number, names?: string[]) => void) => cb(0, ['data']),
    getattr: (p: string, cb: (code: number, st?: unknown) => void) => p === '/' ? cb(0, stat(0o40755, 4096)) : p === '/data' ? cb(0, stat(0o100644, size)) : cb(Fuse.ENOENT),
    open: (_p: string, _flags: number, cb: (code: number, fd?: number) => void) => cb(0, 42),
    release: (_p: string, _fd: number, cb: (code: number) => void) => cb(0),
    read: (_p: string, _fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) => cb(transfer(readSync, buf, len, pos)),
    write: (_p: string, _fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) => cb(fd === -1 ? len : transfer(writeSync as typeof readSync, buf, len, pos)),
    truncate: (_p: string, _size: number, cb: (code: number) => void) => cb(0),
    ftruncate: (_p: string, _fd: number, _size: number, cb: (code: number) => void) => cb(0)
  }
  const fuse = new Fuse(mnt, ops, { force: true, mkdir: true })
  const base = fuse._fuseOptions.bind(fuse)
  fuse._fuseOptions = () => { const own = base(); return own === '' ? '-obig_writes,max_write=131072' : `${own},big_writes,max_write=131072` }
  await new Promise<void>((resolve, reject) => fuse.mount((err: Error | null) => err ? reject(err) : resolve()))
  return {
    unmount: async () => {
      await new Promise<void>((resolve) => fuse.unmount(() => resolve()))
      if (fd !== -1) closeSync(fd)
    }
  }
}

/** MiB/s of dd with 1 MiB blocks. */
async function dd (args: string[], mib: number): Promise<number> {
  const started = performance.now()
  await exec('dd', [...args, 'bs=1M', `count=${mib}`, 'status=none'])
  return mib / ((performance.now() - started) / 1000)
}

async function fusePart (dir: string, rows: Row[]): Promise<void> {
  if (!existsSync('/dev/fuse') || !has('fusermount')) {
    console.log('FUSE part skipped: needs /dev/fuse and fusermount (Debian packages fuse, libfuse2)')
    return
  }
  const mib = Math.min(512, VOLUME / (1 << 20))
  const g = await GalleonFS.open({ storagePath: join(dir, 'fuse-storage'), mount: 'fuse' })
  const mine = join(dir, 'galleon-mount')
  const theirs = join(dir, 'null-mount')
  const passed = join(dir, 'passthrough-mount')
  const nul = await simpleFuse(theirs, VOLUME)
  const passthrough = await simpleFuse(passed, VOLUME, join(dir, 'passthrough-data'))
  try {
    await g.createVolume({ name: 'fuse', sizeBytes: VOLUME })
    await g.mounts.mountVolume('fuse', mine)
    // Index 2: the same volume through the library in this process, 1 MiB calls one at a time as dd
    // makes them: what the FUSE path could reach if the kernel, libfuse and fuse-native cost nothing.
    // Index 3: the passthrough file system (see simpleFuse), the bound of any file system that stores.
    const results = { write: [0, 0, 0, 0], read: [0, 0, 0, 0] }
    const zeros = new Uint8Array(1 << 20)
    const inProcess = async (write: boolean): Promise<number> => {
      const started = performance.now()
      for (let i = 0; i < mib; i++) {
        if (write) await g.write('fuse', i * (1 << 20), zeros)
        else await g.read('fuse', i * (1 << 20), 1 << 20)
      }
      return mib / ((performance.now() - started) / 1000)
    }
    for (let round = 0; round < 2; round++) {
      for (const [index, where] of (round === 0 ? [[0, mine], [1, theirs], [3, passed], [2, '']] : [[2, ''], [3, passed], [1, theirs], [0, mine]]) as Array<[number, string]>) {
        await settle(g)
        ;(results.write[index] as number) += (index === 2 ? await inProcess(true) : await dd(['if=/dev/zero', `of=${join(where, 'data')}`, 'conv=notrunc'], mib)) / 2
        await settle(g)
        ;(results.read[index] as number) += (index === 2 ? await inProcess(false) : await dd([`if=${join(where, 'data')}`, 'of=/dev/null'], mib)) / 2
      }
    }
    rows.push({ case: 'FUSE dd 1 MiB sequential write: GalleonFS vs a null fuse-native file system', value: results.write[0] as number, baseline: results.write[1] as number, unit: 'MiB/s', ratio: (results.write[0] as number) / (results.write[1] as number), target: '>= 0.8' })
    rows.push({ case: 'FUSE dd 1 MiB sequential read: GalleonFS vs a null fuse-native file system', value: results.read[0] as number, baseline: results.read[1] as number, unit: 'MiB/s', ratio: (results.read[0] as number) / (results.read[1] as number), target: '>= 0.8' })
    // Not a target: the ceiling above, against the same baseline (a FUSE ratio cannot exceed it by much).
    rows.push({ case: 'reference: the same 1 MiB writes by g.write() in process vs the null FUSE file system', value: results.write[2] as number, baseline: results.write[1] as number, unit: 'MiB/s', ratio: (results.write[2] as number) / (results.write[1] as number), target: '(ceiling)' })
    rows.push({ case: 'reference: the same 1 MiB reads by g.read() in process vs the null FUSE file system', value: results.read[2] as number, baseline: results.read[1] as number, unit: 'MiB/s', ratio: (results.read[2] as number) / (results.read[1] as number), target: '(ceiling)' })
    // Not targets either: how far a file system that only passes the bytes to a file gets, and GalleonFS against it.
    rows.push({ case: 'reference: dd 1 MiB writes on a passthrough FUSE file system (pwrite to a file) vs the null one', value: results.write[3] as number, baseline: results.write[1] as number, unit: 'MiB/s', ratio: (results.write[3] as number) / (results.write[1] as number), target: '(bound)' })
    rows.push({ case: 'reference: dd 1 MiB reads on a passthrough FUSE file system (pread from a file) vs the null one', value: results.read[3] as number, baseline: results.read[1] as number, unit: 'MiB/s', ratio: (results.read[3] as number) / (results.read[1] as number), target: '(bound)' })
    rows.push({ case: 'reference: FUSE dd 1 MiB writes, GalleonFS vs the passthrough file system', value: results.write[0] as number, baseline: results.write[3] as number, unit: 'MiB/s', ratio: (results.write[0] as number) / (results.write[3] as number), target: '(overhead)' })
    rows.push({ case: 'reference: FUSE dd 1 MiB reads, GalleonFS vs the passthrough file system', value: results.read[0] as number, baseline: results.read[3] as number, unit: 'MiB/s', ratio: (results.read[0] as number) / (results.read[3] as number), target: '(overhead)' })
  } finally {
    await nul.unmount()
    await passthrough.unmount()
    await g.close()
  }
}

async function main (): Promise<void> {
  const parent = process.env.BENCH_DIR ?? tmpdir()
  await mkdir(parent, { recursive: true })
  const dir = await mkdtemp(join(parent, 'galleon-mountbench-'))
  const rows: Row[] = []
  try {
    const parts = (process.env.BENCH_PARTS ?? 'nbd,fuse').split(',')
    if (parts.includes('nbd')) await nbdPart(dir, rows)
    if (parts.includes('fuse')) await fusePart(dir, rows)
    console.log('| case | GalleonFS | baseline | ratio | target |')
    console.log('|---|---:|---:|---:|---|')
    for (const row of rows) console.log(`| ${row.case} | ${row.value.toFixed(0)} ${row.unit} | ${row.baseline.toFixed(0)} ${row.unit} | ${row.ratio.toFixed(2)}x | ${row.target} |`)
    await mkdir(fileURLToPath(new URL('./results/', import.meta.url)), { recursive: true })
    await writeFile(RESULTS_FILE, JSON.stringify({ date: new Date().toISOString(), node: process.version, volumeBytes: VOLUME, seconds: SECONDS, rows }, null, 2) + '\n')
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

await main()
