// The FUSE mount driver against the real kernel FUSE, with real tools (dd, cmp, cat, truncate, fio)
// run as separate processes (asynchronously: the process serving the mount must never wait for it
// synchronously). Skipped, visibly, where the machine has no /dev/fuse or fusermount.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { slowStore } from './support/slow-store.js'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { GalleonFS } from '../src/index.js'
import { fuseMissing } from './support/fuse-available.js'

const exec = promisify(execFile)
const ROOT = fileURLToPath(new URL('..', import.meta.url))

function toolMissing (tool: string): string | undefined {
  return ['/bin', '/usr/bin', '/usr/local/bin'].some((dir) => existsSync(join(dir, tool))) ? undefined : `${tool} is not installed`
}
const skip = fuseMissing()
if (skip !== undefined) process.stdout.write(`# SKIP FUSE tests: ${skip}\n`)

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-fuse-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('FUSE mount driver', { skip }, () => {
  it('shows data, README.txt and .galleonfs_metadata; dd, cmp, cat and truncate work on data both ways', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 's1'), mount: 'fuse' })
    const mnt = join(root, 'm1')
    try {
      assert.equal(g.mounts.driver, 'fuse')
      const vol = await g.createVolume({ name: 'disk', sizeBytes: '16M', labels: { app: 'test' } })
      await g.mounts.mountVolume(vol, mnt)
      assert.deepEqual((await readdir(mnt)).sort(), ['.galleonfs_metadata', 'README.txt', 'data'])
      assert.equal((await stat(join(mnt, 'data'))).size, 16 << 20)
      assert.match((await exec('cat', [join(mnt, 'README.txt')])).stdout, /GalleonFS volume default\/disk/)
      const metadata = JSON.parse((await exec('cat', [join(mnt, '.galleonfs_metadata')])).stdout)
      assert.equal(metadata.volume.id, vol.id)
      assert.equal(metadata.sizeBytes, 16 << 20)

      // dd in, API out.
      const image = join(root, 'in.bin')
      const input = new Uint8Array(randomBytes(4 << 20))
      await writeFile(image, input)
      await exec('dd', [`if=${image}`, `of=${join(mnt, 'data')}`, 'bs=1M', 'seek=2', 'conv=notrunc,fsync', 'status=none'])
      assert.deepEqual(await g.read(vol, 2 << 20, 4 << 20), input)
      // API in, dd and cmp out.
      const other = new Uint8Array(randomBytes(1 << 20))
      await g.write(vol, 10 << 20, other)
      const out = join(root, 'out.bin')
      await exec('dd', [`if=${join(mnt, 'data')}`, `of=${out}`, 'bs=256K', 'skip=40', 'count=4', 'status=none'])
      assert.deepEqual(new Uint8Array(await readFile(out)), other)
      await writeFile(image, other)
      await exec('cmp', ['-n', String(1 << 20), '-i', `0:${10 << 20}`, image, join(mnt, 'data')])
      // dd without notrunc opens with O_TRUNC: a disk keeps its size and its data.
      await exec('dd', [`if=${image}`, `of=${join(mnt, 'data')}`, 'bs=64K', 'count=1', 'status=none'])
      assert.equal((await stat(join(mnt, 'data'))).size, 16 << 20)
      assert.deepEqual(await g.read(vol, 2 << 20, 4 << 20), input)
      // cp over data (it opens with O_TRUNC, which a disk ignores), then cmp.
      const small = join(root, 'small.bin')
      await writeFile(small, new Uint8Array(randomBytes(3 << 20)))
      await exec('cp', [small, join(mnt, 'data')])
      await exec('cmp', ['-n', String(3 << 20), small, join(mnt, 'data')])
      assert.deepEqual(await g.read(vol, 0, 3 << 20), new Uint8Array(await readFile(small)))
      await exec('dd', [`if=${image}`, `of=${join(mnt, 'data')}`, 'bs=1M', 'seek=2', 'count=1', 'conv=notrunc', 'status=none'])
      await writeFile(image, input)
      await exec('dd', [`if=${image}`, `of=${join(mnt, 'data')}`, 'bs=1M', 'seek=2', 'conv=notrunc,fsync', 'status=none'])
      // truncate: to the size or less is a no-op, beyond it refused.
      await exec('truncate', ['-s', String(16 << 20), join(mnt, 'data')])
      await assert.rejects(exec('truncate', ['-s', String(32 << 20), join(mnt, 'data')]), /File too large/)
      // Writing past the end fails; the README cannot be written.
      await assert.rejects(exec('dd', [`if=${image}`, `of=${join(mnt, 'data')}`, 'bs=1M', 'seek=16', 'conv=notrunc', 'status=none']), /No space left/)
      await assert.rejects(exec('dd', [`if=${image}`, `of=${join(mnt, 'README.txt')}`, 'bs=1K', 'count=1', 'conv=notrunc', 'status=none']))
      // The serving process reads its own mount (async fs: no deadlock).
      const own = await readFile(join(mnt, 'data'))
      assert.equal(own.byteLength, 16 << 20)
      assert.deepEqual(new Uint8Array(own.subarray(10 << 20, 11 << 20)), other)
      await g.mounts.unmountVolume(mnt)
      await assert.rejects(readdir(mnt), { code: 'ENOENT' }, 'the mount point the mount made goes with it')
    } finally {
      await g.close()
    }
  })

  it('read-only mounts and snapshots refuse writes from tools', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 's2'), mount: 'fuse' })
    try {
      const vol = await g.createVolume({ name: 'disk', sizeBytes: '4M' })
      await g.write(vol, 0, new Uint8Array(4096).fill(5))
      await g.createSnapshot(vol, 'snap')
      await g.write(vol, 0, new Uint8Array(4096).fill(6))
      const snap = join(root, 'snap')
      await g.mounts.mountVolume({ volume: 'disk', snapshot: 'snap' }, snap)
      const head = await exec('dd', [`if=${join(snap, 'data')}`, 'bs=4096', 'count=1', 'status=none'], { encoding: 'buffer' })
      assert.deepEqual(new Uint8Array(head.stdout), new Uint8Array(4096).fill(5))
      await assert.rejects(exec('dd', ['if=/dev/zero', `of=${join(snap, 'data')}`, 'bs=4096', 'count=1', 'conv=notrunc', 'status=none']), /Read-only file system|Permission denied/)
      assert.deepEqual(await g.readBlock({ volume: 'disk', snapshot: 'snap' }, 0), new Uint8Array(4096).fill(5))
    } finally {
      await g.close()
    }
  })

  it('passes an fio verify workload (crc32c) on data', { skip: toolMissing('fio') }, async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 's3'), mount: 'fuse' })
    const mnt = join(root, 'm3')
    try {
      await g.mounts.mountVolume(await g.createVolume({ name: 'fio', sizeBytes: '32M' }), mnt)
      const { stdout } = await exec('fio', ['--name=verify', `--filename=${join(mnt, 'data')}`, '--rw=randwrite', '--bs=4k', '--size=16M', '--ioengine=psync',
        '--verify=crc32c', '--verify_state_save=0', '--verify_fatal=1', '--do_verify=1', '--iodepth=1', '--numjobs=1', '--output-format=json'], { maxBuffer: 16 << 20 })
      const report = JSON.parse(stdout.slice(stdout.indexOf('{')))
      assert.equal(report.jobs[0].error, 0)
      assert.ok(report.jobs[0].write.io_bytes >= 16 << 20)
      assert.ok(report.jobs[0].read.io_bytes >= 16 << 20, 'the verify pass read everything back')
    } finally {
      await g.close()
    }
  })

  it('clears a stale mount left by a process killed with SIGKILL when mounting there again', async () => {
    const storage = join(root, 's4')
    const mnt = join(root, 'm4')
    const child = spawn(process.execPath, ['--import', 'tsx', '-e', `
      const { GalleonFS } = await import(${JSON.stringify(join(ROOT, 'src/index.ts'))})
      const g = await GalleonFS.open({ storagePath: ${JSON.stringify(storage)}, mount: 'fuse' })
      const vol = await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.write(vol, 0, new Uint8Array(4096).fill(8), 'WriteDurable')
      await g.mounts.mountVolume(vol, ${JSON.stringify(mnt)})
      console.log('mounted')
      setInterval(() => {}, 1000)
    `], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] })
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (chunk: Buffer) => { if (chunk.toString().includes('mounted')) resolve() })
      child.once('exit', (code) => reject(new Error(`child exited with ${code} before mounting`)))
    })
    child.kill('SIGKILL')
    await new Promise((resolve) => child.once('exit', resolve))
    await assert.rejects(stat(join(mnt, 'data')), /ENOTCONN|not connected/)
    const g = await GalleonFS.open({ storagePath: storage, mount: 'fuse' })
    try {
      await g.mounts.mountVolume('v', mnt)
      const block = await exec('dd', [`if=${join(mnt, 'data')}`, 'bs=4096', 'count=1', 'status=none'], { encoding: 'buffer' })
      assert.deepEqual(new Uint8Array(block.stdout), new Uint8Array(4096).fill(8))
    } finally {
      await g.close()
    }
  })
})

/**
 * Runs a Python script that opens a mount's `data` and prints 'open'; resolves once it has, with
 * its output lines so far and a promise of its exit.
 */
async function pythonHoldingData (script: string): Promise<{ child: ReturnType<typeof spawn>, lines: string[], exited: Promise<unknown> }> {
  const child = spawn('python3', ['-c', script], { stdio: ['ignore', 'pipe', 'inherit'] })
  const lines = collectLines(child.stdout as NodeJS.ReadableStream)
  const exited = new Promise((resolve) => child.once('exit', resolve))
  while (!lines.includes('open')) await new Promise((resolve) => setTimeout(resolve, 20))
  return { child, lines, exited }
}

/** Collects a child's stdout as whole lines (a line may arrive in several chunks). */
function collectLines (stream: NodeJS.ReadableStream): string[] {
  const lines: string[] = []
  let pending = ''
  stream.on('data', (chunk: Buffer) => {
    pending += chunk.toString()
    let newline: number
    while ((newline = pending.indexOf('\n')) >= 0) {
      lines.push(pending.slice(0, newline).trim())
      pending = pending.slice(newline + 1)
    }
  })
  return lines
}

/** Thread ids of this process (Linux). */
async function threadIds (): Promise<Set<string>> {
  return new Set(await readdir('/proc/self/task'))
}
/** Whether thread `tid` of this process blocks SIGCHLD (signal 17: bit 16 of SigBlk), or undefined once it is gone. */
async function blocksSigchld (tid: string): Promise<boolean | undefined> {
  const status = await readFile(`/proc/self/task/${tid}/status`, 'utf8').catch(() => undefined)
  const mask = status?.match(/^SigBlk:\s*([0-9a-f]+)$/m)?.[1]
  return mask === undefined ? undefined : (BigInt(`0x${mask}`) & (1n << 16n)) !== 0n
}

describe('FUSE mount driver: its threads and the process\'s signals', { skip }, () => {
  it('the threads fuse-native and libfuse start block every signal, so cancelling them cannot break child reaping', async (t) => {
    const { nativeAeadStatus } = await import('../src/crypto/native-aead.js')
    const { guardFuseThreads } = await import('../backends/fuse/index.js')
    const status = nativeAeadStatus()
    if (!status.available) {
      assert.notEqual(process.env.GALLEONFS_REQUIRE_NATIVE_AEAD, '1', `GALLEONFS_REQUIRE_NATIVE_AEAD=1 but ${status.reason}`)
      assert.equal(guardFuseThreads(), false, 'without the addon there is no guard')
      t.skip(`the native addon is not available (${status.reason})`)
      return
    }
    const g = await GalleonFS.open({ storagePath: join(root, 'sig1'), mount: 'fuse' })
    const mnt = join(root, 'sig1m')
    try {
      const vol = await g.createVolume({ name: 'v', sizeBytes: '4M' })
      await g.read(vol, 0, 4096) // the file store's pool threads exist before the mount
      const before = await threadIds()
      await g.mounts.mountVolume(vol, mnt)
      // Requests from other processes, so that libfuse starts workers.
      await Promise.all([0, 1, 2, 3].map(async (i) => await exec('dd', ['if=/dev/zero', `of=${join(mnt, 'data')}`, 'bs=64K', 'count=4', `seek=${i * 4}`, 'conv=notrunc', 'status=none'])))
      const fresh = [...await threadIds()].filter((tid) => !before.has(tid))
      const masks = await Promise.all(fresh.map(async (tid) => [tid, await blocksSigchld(tid)] as const))
      const alive = masks.filter(([, blocks]) => blocks !== undefined)
      assert.ok(alive.length >= 2, `the mount started its thread and at least one worker: ${JSON.stringify(masks)}`)
      assert.deepEqual(alive.filter(([, blocks]) => blocks !== true), [], 'every thread the mount started blocks SIGCHLD')
      // The main thread is untouched, and children are still reaped after an unmount.
      assert.equal(await blocksSigchld(String(process.pid)), false)
      await g.mounts.unmountVolume(mnt)
      assert.equal((await exec('true', [])).stdout, '')
    } finally {
      await g.close()
    }
  })
})

describe('FUSE mount driver: review regressions', { skip }, () => {
  it('close() waits for writes the mount acknowledged: nothing dd wrote (without fsync) is lost', async () => {
    const storage = join(root, 'r1')
    const { store } = await slowStore(storage, 15)
    let g = await GalleonFS.open({ storagePath: storage, blockStore: store, mount: 'fuse' })
    const mnt = join(root, 'r1m')
    const data = new Uint8Array(randomBytes(4 << 20))
    await writeFile(join(root, 'r1.bin'), data)
    await g.mounts.mountVolume(await g.createVolume({ name: 'v', sizeBytes: '8M' }), mnt)
    // Overlapping rewrites too: the second pass waits for the first in the background.
    await exec('dd', [`if=${join(root, 'r1.bin')}`, `of=${join(mnt, 'data')}`, 'bs=128K', 'conv=notrunc', 'status=none'])
    await exec('dd', [`if=${join(root, 'r1.bin')}`, `of=${join(mnt, 'data')}`, 'bs=64K', 'seek=32', 'conv=notrunc', 'status=none'])
    await g.close()
    g = await GalleonFS.open({ storagePath: storage })
    try {
      assert.deepEqual(await g.read('v', 0, 2 << 20), data.subarray(0, 2 << 20))
      assert.deepEqual(await g.read('v', 2 << 20, 4 << 20), data)
    } finally {
      await g.close()
    }
  })

  it('a write that failed in the background fails every later fsync and write of the mount, for every writer', async () => {
    const storage = join(root, 'r2')
    const { store, control } = await slowStore(storage, 1)
    const g = await GalleonFS.open({ storagePath: storage, blockStore: store, mount: 'fuse' })
    const mnt = join(root, 'r2m')
    try {
      await g.mounts.mountVolume(await g.createVolume({ name: 'v', sizeBytes: '4M' }), mnt)
      control.failing = true
      // dd's own close reports it; so do later fsyncs and writes from other processes.
      await assert.rejects(exec('dd', ['if=/dev/zero', `of=${join(mnt, 'data')}`, 'bs=64K', 'count=4', 'conv=notrunc', 'status=none']), /Input\/output error/)
      await assert.rejects(exec('dd', ['if=/dev/zero', `of=${join(mnt, 'data')}`, 'bs=4K', 'count=1', 'conv=notrunc,fsync', 'status=none']), /Input\/output error/)
      // The failure is the mount's writers' to hear: snapshots of the volume still work.
      control.failing = false
      await g.createSnapshot('v', 'after-failure')
      await assert.rejects(g.mounts.unmountVolume(mnt), (err: Error & { code?: string }) => err.code === 'IO_ERROR' && /failed to reach the volume/.test(err.message))
      assert.deepEqual(g.mounts.listMounts(), [])
    } finally {
      control.failing = false
      await g.close()
    }
  })

  it('unmount is refused while a process has data open, unless forced; after that the process gets EIO, never the volume', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'r3'), mount: 'fuse' })
    const mnt = join(root, 'r3m')
    try {
      await g.mounts.mountVolume(await g.createVolume({ name: 'v', sizeBytes: '1M' }), mnt)
      // A process that opens data, waits, then writes through its old descriptor.
      const { lines, exited } = await pythonHoldingData(`
import os, sys, time
fd = os.open(${JSON.stringify(join(mnt, 'data'))}, os.O_RDWR)
print('open', flush=True)
time.sleep(1.5)
try:
    os.pwrite(fd, b'x' * 4096, 0)
    os.fsync(fd)
    print('wrote', flush=True)
except OSError as e:
    print('error', e.errno, flush=True)
`)
      await assert.rejects(g.mounts.unmountVolume(mnt), (err: Error & { code?: string }) => err.code === 'BUSY' && /open/.test(err.message))
      await g.mounts.unmountVolume(mnt, { force: true })
      await exited
      assert.deepEqual(lines, ['open', 'error 5'])
      assert.deepEqual(await g.read('v', 0, 4096), new Uint8Array(4096))
    } finally {
      await g.close()
    }
  })

  it('a forced unmount does not wait for a process that keeps writing: its later writes get EIO', async () => {
    const storage = join(root, 'r6')
    const { store } = await slowStore(storage, 50)
    const g = await GalleonFS.open({ storagePath: storage, blockStore: store, mount: 'fuse' })
    const mnt = join(root, 'r6m')
    try {
      await g.mounts.mountVolume(await g.createVolume({ name: 'v', sizeBytes: '4M' }), mnt)
      // Writes the volume over and over, 128 KiB at a time, until a write fails; the store's slow
      // batches keep the mount's write-behind buffer full.
      const { child, lines, exited } = await pythonHoldingData(`
import os
fd = os.open(${JSON.stringify(join(mnt, 'data'))}, os.O_WRONLY)
print('open', flush=True)
n = 0
try:
    while True:
        os.pwrite(fd, b'x' * 131072, (n % 32) * 131072)
        n += 1
except OSError as e:
    print('error', e.errno, flush=True)
`)
      await new Promise((resolve) => setTimeout(resolve, 300))
      // Without the fix the unmount waited as long as the writer wrote (here: for ever).
      let timer: NodeJS.Timeout | undefined
      const unmounted = await Promise.race([
        g.mounts.unmountVolume(mnt, { force: true }).then(() => 'unmounted'),
        new Promise((resolve) => { timer = setTimeout(resolve, 60_000, 'still waiting after a minute') })
      ])
      clearTimeout(timer)
      if (unmounted !== 'unmounted') child.kill('SIGKILL')
      assert.equal(unmounted, 'unmounted')
      await exited
      assert.deepEqual(lines, ['open', 'error 5'])
    } finally {
      await g.close()
    }
  })

  it('unmounting a mount point whose path holds shell characters ($, backquotes) unmounts that one only and runs nothing', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'r7'), mount: 'fuse' })
    const base = join(root, 'r7m')
    const plain = join(base, 'm')
    const dollar = join(base, 'm$x')
    const marker = join(base, 'RAN')
    const backquoted = join(base, `c\`touch ${marker}\``)
    const mounted = async (path: string): Promise<boolean> => (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').some((line) => line.split(' ')[4]?.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))) === path)
    try {
      for (const [name, path] of [['a', plain], ['b', dollar], ['c', backquoted]] as const) {
        await g.mounts.mountVolume(await g.createVolume({ name, sizeBytes: '1M' }), path)
        assert.ok(await mounted(path), `${path} is mounted`)
      }
      await g.mounts.unmountVolume(dollar)
      assert.ok(!(await mounted(dollar)), 'the $ mount is gone')
      assert.ok(await mounted(plain), 'the mount whose path the shell would have made of it is still there')
      assert.deepEqual(g.mounts.listMounts().map((m) => m.path).sort(), [backquoted, plain].sort())
      await g.mounts.unmountVolume(backquoted)
      assert.ok(!(await mounted(backquoted)), 'the backquoted mount is gone')
      assert.ok(!existsSync(marker), 'no command in the path was run')
      await g.mounts.unmountVolume(plain)
      assert.ok(!(await mounted(plain)))
    } finally {
      await g.close()
    }
  })

  it('reads through the mount see writes made any other way (no stale page cache), also on an open descriptor', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'r4'), mount: 'fuse' })
    const mnt = join(root, 'r4m')
    try {
      await g.mounts.mountVolume(await g.createVolume({ name: 'v', sizeBytes: '1M' }), mnt)
      await g.write('v', 0, new Uint8Array(4096).fill(0x11))
      const child = spawn('python3', ['-c', `
import os, sys, time
fd = os.open(${JSON.stringify(join(mnt, 'data'))}, os.O_RDONLY)
print(os.pread(fd, 4, 0).hex(), flush=True)
sys.stdin.readline()
print(os.pread(fd, 4, 0).hex(), flush=True)
`], { stdio: ['pipe', 'pipe', 'inherit'] })
      const lines = collectLines(child.stdout)
      while (lines.length < 1) await new Promise((resolve) => setTimeout(resolve, 20))
      await g.write('v', 0, new Uint8Array(4096).fill(0x22))
      child.stdin.write('\n')
      await new Promise((resolve) => child.once('exit', resolve))
      assert.deepEqual(lines, ['11111111', '22222222'])
      // And a snapshot taken right after writes through the mount holds them.
      await exec('dd', ['if=/dev/zero', `of=${join(mnt, 'data')}`, 'bs=4096', 'count=1', 'conv=notrunc', 'status=none'])
      await g.createSnapshot('v', 'after')
      assert.deepEqual(await g.read({ volume: 'v', snapshot: 'after' }, 0, 4096), new Uint8Array(4096))
    } finally {
      await g.close()
    }
  })

  it('a sequential reader (read ahead) sees a write made any other way into the part already read ahead', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'r5'), mount: 'fuse' })
    const mnt = join(root, 'r5m')
    try {
      await g.mounts.mountVolume(await g.createVolume({ name: 'seq', sizeBytes: '4M' }), mnt)
      const pattern = new Uint8Array(4 << 20)
      for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 7 + (i >> 12)) & 0xff
      await g.write('seq', 0, pattern)
      // 128 KiB requests (direct_io) in order: after the first few, the next MiB is read ahead.
      const child = spawn('python3', ['-c', `
import os, sys, hashlib
fd = os.open(${JSON.stringify(join(mnt, 'data'))}, os.O_RDONLY)
h = hashlib.sha256()
for i in range(8):
    h.update(os.pread(fd, 131072, i * 131072))
print('ready', flush=True)
sys.stdin.readline()
for i in range(8, 32):
    h.update(os.pread(fd, 131072, i * 131072))
print(h.hexdigest(), flush=True)
`], { stdio: ['pipe', 'pipe', 'inherit'] })
      const lines = collectLines(child.stdout)
      while (lines.length < 1) await new Promise((resolve) => setTimeout(resolve, 20))
      // Inside the part read ahead (the next MiB), and beyond it.
      const changed = new Uint8Array(4096).fill(0x5a)
      for (const at of [1 << 20, (1 << 20) + (256 << 10), 3 << 20]) {
        await g.write('seq', at, changed)
        pattern.set(changed, at)
      }
      child.stdin.write('\n')
      await new Promise((resolve) => child.once('exit', resolve))
      assert.deepEqual(lines, ['ready', createHash('sha256').update(pattern).digest('hex')], 'the reader saw every byte as the volume held it when read')
    } finally {
      await g.close()
    }
  })
})

describe('FUSE driver without FUSE', () => {
  it('importing galleonfs never loads fuse-native; a bad mount option is refused clearly', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      assert.equal(g.mounts.driver, 'virtual')
    } finally {
      await g.close()
    }
    await assert.rejects(GalleonFS.open({ inMemory: true, mount: 'nfs' as never }), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /virtual/.test(err.message))
  })
})
