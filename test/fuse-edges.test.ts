// Edges of the FUSE mount driver against the real kernel FUSE: the errno every refused or failing
// operation gets, sizes after an online expansion, durability of fsync across a SIGKILL of the
// serving process, engine failures answered with EIO (never a hung request or a crashed process),
// and several processes reading and writing odd ranges at once, checked byte for byte. The mounts
// are driven from child processes run asynchronously (the serving process must never wait for its
// own mount synchronously). Skipped, visibly, where the machine has no /dev/fuse or fusermount.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, execFileSync, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { access, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { GalleonFS, isGalleonError, type BlockStore } from '../src/index.js'
import { pythonSession } from './support/python-session.js'
import { fuseMissing } from './support/fuse-available.js'

const exec = promisify(execFile)
const ROOT = fileURLToPath(new URL('..', import.meta.url))

const skip = fuseMissing()
if (skip !== undefined) process.stdout.write(`# SKIP FUSE edge tests: ${skip}\n`)

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-fuse-edges-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

/** Runs a Python script with arguments; resolves with its stdout lines (rejects if it fails). */
async function python (script: string, ...args: string[]): Promise<string[]> {
  const { stdout } = await exec('python3', ['-c', script, ...args], { maxBuffer: 64 << 20 })
  return stdout.split('\n').filter((line) => line.length > 0)
}

/** A file store that fails reads or writes while told to. */
async function faultyStore (dir: string): Promise<{ store: BlockStore, control: { failReads: boolean, failWrites: boolean } }> {
  const { FileBlockStore } = await import('../backends/file/index.js')
  const inner = new FileBlockStore({ location: join(dir, 'blocks') })
  const control = { failReads: false, failWrites: false }
  const store = new Proxy(inner, {
    get (target, prop) {
      if (prop === 'get' || prop === 'getMany') {
        return async (...args: unknown[]) => {
          if (control.failReads) throw new Error('injected read failure')
          return await (target[prop] as (...a: unknown[]) => Promise<unknown>).apply(target, args)
        }
      }
      if (prop === 'batch') {
        return async (...args: Parameters<typeof inner.batch>) => {
          if (control.failWrites && args[0].some((op) => op.type === 'put')) throw new Error('injected write failure')
          return await target.batch(...args)
        }
      }
      const value = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  return { store, control }
}

describe('FUSE mount driver: errno of every refused operation', { skip }, () => {
  it('answers reads and writes past the end, truncates, O_APPEND, O_TRUNC, metadata changes and unknown names with the errno a disk file would', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'e1'), mount: 'fuse' })
    const mnt = join(root, 'e1m')
    try {
      const vol = await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.write(vol, 0, new Uint8Array(4096).fill(7))
      await g.mounts.mountVolume(vol, mnt)
      const lines = await python(`
import os, sys, errno
m = sys.argv[1]
d = m + '/data'
def t(name, f):
    try:
        r = f()
        print(name, 'ok' if r is None else r)
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
t('chmod-change', lambda: os.chmod(d, 0o600))
t('chmod-same', lambda: os.chmod(d, 0o644))
t('chown-change', lambda: os.chown(d, os.getuid() + 1, -1))
t('chown-same', lambda: os.chown(d, os.getuid(), os.getgid()))
t('rename', lambda: os.rename(d, m + '/x'))
t('unlink', lambda: os.unlink(d))
t('unlink-missing', lambda: os.unlink(m + '/nope'))
t('mkdir', lambda: os.mkdir(m + '/dir'))
t('symlink', lambda: os.symlink('data', m + '/s'))
t('link', lambda: os.link(d, m + '/l'))
t('create', lambda: os.open(m + '/new', os.O_CREAT | os.O_WRONLY))
t('open-missing', lambda: os.open(m + '/missing', os.O_RDONLY))
t('readme-write', lambda: os.open(m + '/README.txt', os.O_WRONLY))
t('readme-truncate', lambda: os.truncate(m + '/README.txt', 0))
t('truncate-grow', lambda: os.truncate(d, 2 << 20))
t('truncate-shrink', lambda: os.truncate(d, 100))
t('size', lambda: os.stat(d).st_size)
fd = os.open(d, os.O_RDWR)
t('pread-at-end', lambda: len(os.pread(fd, 10, 1 << 20)))
t('pread-past-end', lambda: len(os.pread(fd, 10, 2 << 20)))
t('pread-across-end', lambda: len(os.pread(fd, 1000, (1 << 20) - 333)))
t('pwrite-at-end', lambda: os.pwrite(fd, b'x' * 10, 1 << 20))
t('pwrite-across-end', lambda: os.pwrite(fd, b'y' * 1000, (1 << 20) - 333))
t('ftruncate-grow', lambda: os.ftruncate(fd, (1 << 20) + 1))
os.close(fd)
fd = os.open(d, os.O_WRONLY | os.O_APPEND)
t('append', lambda: os.write(fd, b'abc'))
os.close(fd)
fd = os.open(d, os.O_WRONLY | os.O_TRUNC)
t('trunc-open-size', lambda: os.fstat(fd).st_size)
t('trunc-write', lambda: os.write(fd, b'hello'))
os.close(fd)
t('size-after', lambda: os.stat(d).st_size)
`, mnt)
      assert.deepEqual(lines, [
        'chmod-change EPERM', 'chmod-same ok', 'chown-change EPERM', 'chown-same ok',
        'rename EACCES', 'unlink EACCES', 'unlink-missing ENOENT', 'mkdir EACCES', 'symlink EACCES', 'link EACCES', 'create EACCES',
        'open-missing ENOENT', 'readme-write EACCES', 'readme-truncate EACCES',
        'truncate-grow EFBIG', 'truncate-shrink ok', `size ${1 << 20}`,
        'pread-at-end 0', 'pread-past-end 0', 'pread-across-end 333', 'pwrite-at-end ENOSPC', 'pwrite-across-end 333', 'ftruncate-grow EFBIG',
        'append ENOSPC', `trunc-open-size ${1 << 20}`, 'trunc-write 5', `size-after ${1 << 20}`
      ])
      // Truncating changed nothing; the writes that fit landed.
      const head = new Uint8Array(4096).fill(7)
      head.set(new TextEncoder().encode('hello'), 0)
      assert.deepEqual(await g.read(vol, 0, 4096), head)
      assert.deepEqual(await g.read(vol, (1 << 20) - 333, 333), new Uint8Array(333).fill(0x79))
    } finally {
      await g.close()
    }
  })

  it('a read-only mount is read-only to the kernel: EROFS for every change, access(W_OK) false, statvfs ST_RDONLY', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'e2'), mount: 'fuse' })
    const rw = join(root, 'e2rw')
    const ro = join(root, 'e2ro')
    const snap = join(root, 'e2snap')
    try {
      const vol = await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.write(vol, 0, new Uint8Array(4096).fill(3))
      await g.createSnapshot(vol, 's')
      await g.mounts.mountVolume(vol, rw)
      await g.mounts.mountVolume(vol, ro, { readOnly: true })
      await g.mounts.mountVolume({ volume: 'v', snapshot: 's' }, snap)
      const script = `
import os, sys, errno
m = sys.argv[1]
d = m + '/data'
def t(name, f):
    try:
        r = f()
        print(name, 'ok' if r is None else r)
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
t('open-write', lambda: os.open(d, os.O_WRONLY))
t('truncate', lambda: os.truncate(d, 0))
t('chmod', lambda: os.chmod(d, 0o600))
t('touch', lambda: os.utime(d))
t('access-write', lambda: os.access(d, os.W_OK))
t('statvfs-rdonly', lambda: bool(os.statvfs(m).f_flag & os.ST_RDONLY))
t('read', lambda: os.pread(os.open(d, os.O_RDONLY), 4, 0).hex())
`
      const readOnly = ['open-write EROFS', 'truncate EROFS', 'chmod EROFS', 'touch EROFS', 'access-write False', 'statvfs-rdonly True', 'read 03030303']
      assert.deepEqual(await python(script, ro), readOnly)
      assert.deepEqual(await python(script, snap), readOnly)
      // The read-write mount of the same volume is unaffected.
      assert.deepEqual(await python(script, rw), ['open-write 3', 'truncate ok', 'chmod EPERM', 'touch ok', 'access-write True', 'statvfs-rdonly False', 'read 03030303'])
    } finally {
      await g.close()
    }
  })

  it('a write the store refuses for lack of space fails with ENOSPC, on a sync mount and through fsync of a buffered one', async (t) => {
    if (process.getuid?.() !== 0) { t.skip('mounting a small tmpfs needs root'); return }
    const disk = join(root, 'full')
    await mkdir(disk)
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=6m', 'tmpfs', disk], { stdio: 'pipe' })
    } catch (err) {
      t.skip(`cannot mount a tmpfs here: ${(err as Error).message.split('\n')[0] ?? ''}`)
      return
    }
    try {
      const g = await GalleonFS.open({ storagePath: join(disk, 'store'), mount: 'fuse' })
      try {
        await g.mounts.mountVolume(await g.createVolume({ name: 'a', sizeBytes: '32M' }), join(root, 'full-a'), { sync: true })
        await g.mounts.mountVolume(await g.createVolume({ name: 'b', sizeBytes: '32M' }), join(root, 'full-b'))
        await assert.rejects(exec('dd', ['if=/dev/urandom', `of=${join(root, 'full-a', 'data')}`, 'bs=128K', 'count=128', 'conv=notrunc', 'status=none']),
          (err: Error & { stderr: string }) => /error writing .*: No space left on device/.test(err.stderr) && !/Input\/output/.test(err.stderr))
        await assert.rejects(exec('dd', ['if=/dev/urandom', `of=${join(root, 'full-b', 'data')}`, 'bs=128K', 'count=128', 'conv=notrunc,fsync', 'status=none']),
          (err: Error & { stderr: string }) => /No space left on device/.test(err.stderr) && !/Input\/output/.test(err.stderr))
      } finally {
        await g.close().catch((err: unknown) => { if (!isGalleonError(err, 'NO_SPACE')) throw err })
      }
    } finally {
      execFileSync('umount', [disk], { stdio: 'pipe' })
    }
  })
})

describe('FUSE mount driver: sizes and metadata files', { skip }, () => {
  it('stat, README.txt and .galleonfs_metadata show an online expansion at once; a snapshot mount keeps its size', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'x1'), mount: 'fuse' })
    const mnt = join(root, 'x1m')
    const snap = join(root, 'x1s')
    try {
      const vol = await g.createVolume({ name: 'grow', sizeBytes: '64K' })
      await g.write(vol, 0, new Uint8Array(4096).fill(1))
      await g.createSnapshot(vol, 'small')
      await g.mounts.mountVolume(vol, mnt)
      await g.mounts.mountVolume({ volume: 'grow', snapshot: 'small' }, snap)
      // The child looks (so the kernel has the sizes), waits for the expansion, and looks again.
      const session = pythonSession(`
import os, sys, json
def facts(m):
    readme = open(m + '/README.txt', 'rb').read()
    meta = open(m + '/.galleonfs_metadata', 'rb').read()
    size_line = [l for l in readme.decode().splitlines() if l.startswith('size')][0]
    fd = os.open(m + '/data', os.O_RDONLY)
    end = os.lseek(fd, 0, os.SEEK_END)
    os.close(fd)
    return ' '.join(str(x) for x in [os.stat(m + '/data').st_size, end, os.stat(m + '/README.txt').st_size == len(readme),
        os.stat(m + '/.galleonfs_metadata').st_size == len(meta), json.loads(meta)['sizeBytes'], size_line.split()[1]])
print(facts(sys.argv[1]), flush=True)
sys.stdin.readline()
print(facts(sys.argv[1]), flush=True)
print(facts(sys.argv[2]), flush=True)
`, mnt, snap)
      await session.next(1)
      await g.expandVolume(vol, '1M')
      session.send()
      assert.equal(await session.exited, 0)
      assert.deepEqual(session.lines, [
        '65536 65536 True True 65536 65536',
        '1048576 1048576 True True 1048576 1048576',
        '65536 65536 True True 65536 65536'
      ])
      // The added space reads as zeros and takes writes, through the mount.
      const tail = await python(`
import os, sys
fd = os.open(sys.argv[1] + '/data', os.O_RDWR)
print(os.pread(fd, 4, 65536).hex())
print(os.pwrite(fd, b'\\x09' * 5000, (1 << 20) - 5000))
os.fsync(fd)
`, mnt)
      assert.deepEqual(tail, ['00000000', '5000'])
      assert.deepEqual(await g.read(vol, (1 << 20) - 5000, 5000), new Uint8Array(5000).fill(9))
    } finally {
      await g.close()
    }
  })
})

describe('FUSE mount driver: mount points', { skip }, () => {
  it('mounting where something is mounted already (another instance\'s mount) is refused with BUSY; its mount keeps working', async () => {
    const first = await GalleonFS.open({ storagePath: join(root, 'p1'), mount: 'fuse' })
    const second = await GalleonFS.open({ storagePath: join(root, 'p2'), mount: 'fuse' })
    const mnt = join(root, 'p1m')
    try {
      const vol = await first.createVolume({ name: 'one', sizeBytes: '1M' })
      await first.write(vol, 0, new Uint8Array(4096).fill(0x41))
      await first.mounts.mountVolume(vol, mnt)
      await assert.rejects(second.mounts.mountVolume(await second.createVolume({ name: 'two', sizeBytes: '1M' }), mnt),
        (err: Error & { code?: string }) => err.code === 'BUSY' && err.message.includes(mnt) && /already a mount point/.test(err.message))
      assert.deepEqual(second.mounts.listMounts(), [])
      assert.deepEqual(await python('import sys; print(open(sys.argv[1] + "/data", "rb").read(4).hex())', mnt), ['41414141'])
    } finally {
      await second.close()
      await first.close()
    }
  })

  it('after the serving process is killed without unmounting, what dd wrote and closed is in the volume, and the same paths mount again', async () => {
    const storage = join(root, 'k1')
    const syncMnt = join(root, 'k1sync')
    const bufferedMnt = join(root, 'k1buf')
    const server = spawn(process.execPath, ['--import', 'tsx', '-e', `
      const { GalleonFS } = await import(${JSON.stringify(join(ROOT, 'src/index.ts'))})
      const g = await GalleonFS.open({ storagePath: ${JSON.stringify(storage)}, mount: 'fuse' })
      await g.mounts.mountVolume(await g.createVolume({ name: 'a', sizeBytes: '4M' }), ${JSON.stringify(syncMnt)}, { sync: true })
      await g.mounts.mountVolume(await g.createVolume({ name: 'b', sizeBytes: '4M' }), ${JSON.stringify(bufferedMnt)})
      console.log('mounted')
      setInterval(() => {}, 1000)
    `], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] })
    const exited = new Promise((resolve) => server.once('exit', resolve))
    try {
      await new Promise<void>((resolve, reject) => {
        server.stdout.on('data', (chunk: Buffer) => { if (chunk.toString().includes('mounted')) resolve() })
        server.once('exit', (code) => reject(new Error(`the serving process exited with ${code} before mounting`)))
      })
      const payload = new Uint8Array(randomBytes(1_000_003))
      const image = join(root, 'k1.bin')
      await writeFile(image, payload)
      // Odd sizes at an odd offset: partial blocks at both ends of every request.
      await exec('dd', [`if=${image}`, `of=${join(syncMnt, 'data')}`, 'bs=100003', 'seek=7777', 'oflag=seek_bytes', 'conv=notrunc,fsync', 'status=none'])
      // No fsync: dd's close (FUSE flush) waits until the buffered writes reached the store.
      await exec('dd', [`if=${image}`, `of=${join(bufferedMnt, 'data')}`, 'bs=100003', 'seek=7777', 'oflag=seek_bytes', 'conv=notrunc', 'status=none'])
    } finally {
      server.kill('SIGKILL')
      await exited
    }
    const g = await GalleonFS.open({ storagePath: storage, mount: 'fuse' })
    try {
      const payload = new Uint8Array(await (await import('node:fs/promises')).readFile(join(root, 'k1.bin')))
      assert.deepEqual(await g.read('a', 7777, payload.length), payload)
      assert.deepEqual(await g.read('b', 7777, payload.length), payload)
      // The dead process's mounts are stale; mounting there again clears them.
      await g.mounts.mountVolume('a', syncMnt)
      await g.mounts.mountVolume('b', bufferedMnt)
      await exec('cmp', ['-n', String(payload.length), '-i', '0:7777', join(root, 'k1.bin'), join(bufferedMnt, 'data')])
      await exec('cmp', ['-n', String(payload.length), '-i', '0:7777', join(root, 'k1.bin'), join(syncMnt, 'data')])
    } finally {
      await g.close()
      // Had the test failed before mounting again, the dead process's mounts would be left behind.
      for (const path of [syncMnt, bufferedMnt]) await exec('fusermount', ['-uz', path]).catch(() => {})
    }
  })
})

describe('FUSE mount driver: fsync', { skip }, () => {
  it('fsync and fdatasync of a buffered mount return after a sync of the store that follows every write; a sync mount stores each write durably', async () => {
    const storage = join(root, 'd1')
    const { FileBlockStore } = await import('../backends/file/index.js')
    const inner = new FileBlockStore({ location: join(storage, 'blocks') })
    // What reached the store, in order: put batches with their sync flag, and syncs.
    const log: string[] = []
    const store = new Proxy(inner, {
      get (target, prop) {
        if (prop === 'batch') {
          return async (...args: Parameters<typeof inner.batch>) => {
            await target.batch(...args)
            const puts = args[0].filter((op) => op.type === 'put').length
            log.push(args[1]?.sync === true ? (puts > 0 ? 'durable puts' : 'sync') : (puts > 0 ? 'puts' : 'other'))
          }
        }
        if (prop === 'sync') return async () => { await target.sync(); log.push('sync') }
        const value = Reflect.get(target, prop, target)
        return typeof value === 'function' ? value.bind(target) : value
      }
    })
    const g = await GalleonFS.open({ storagePath: storage, blockStore: store, mount: 'fuse' })
    const syncMnt = join(root, 'd1sync')
    const bufferedMnt = join(root, 'd1buf')
    try {
      await g.mounts.mountVolume(await g.createVolume({ name: 'a', sizeBytes: '4M' }), syncMnt, { sync: true })
      await g.mounts.mountVolume(await g.createVolume({ name: 'b', sizeBytes: '4M' }), bufferedMnt)
      const dd = async (mnt: string, conv: string): Promise<string[]> => {
        log.length = 0
        await exec('dd', ['if=/dev/urandom', `of=${join(mnt, 'data')}`, 'bs=100003', 'count=5', 'seek=3', 'oflag=seek_bytes', `conv=${conv}`, 'status=none'])
        return [...log]
      }
      for (const conv of ['notrunc,fsync', 'notrunc,fdatasync']) {
        const seen = await dd(bufferedMnt, conv)
        assert.ok(seen.includes('puts'), `the writes reached the store: ${seen.join(', ')}`)
        assert.equal(seen.at(-1), 'sync', `${conv}: the store synced after the last write: ${seen.join(', ')}`)
      }
      const seen = await dd(syncMnt, 'notrunc')
      assert.ok(seen.length > 0 && seen.every((entry) => entry === 'durable puts'), `every write of the sync mount was stored durably: ${seen.join(', ')}`)
    } finally {
      await g.close()
    }
  })
})

describe('FUSE mount driver: engine failures', { skip }, () => {
  it('a read or a sync write the store fails is answered with EIO; the process keeps serving, and the next request succeeds', async () => {
    const storage = join(root, 'f1')
    const { store, control } = await faultyStore(storage)
    const g = await GalleonFS.open({ storagePath: storage, blockStore: store, mount: 'fuse' })
    const mnt = join(root, 'f1m')
    try {
      const vol = await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.write(vol, 0, new Uint8Array(8192).fill(0x33))
      await g.mounts.mountVolume(vol, mnt, { sync: true })
      const session = pythonSession(`
import os, sys
fd = os.open(sys.argv[1] + '/data', os.O_RDWR)
def t(f):
    try:
        return f()
    except OSError as e:
        return 'errno %d' % e.errno
for _ in range(2):
    sys.stdin.readline()
    print(t(lambda: os.pread(fd, 4, 4096).hex()), t(lambda: os.pwrite(fd, b'z' * 10, 5000)), flush=True)
`, mnt)
      control.failReads = true
      control.failWrites = true
      session.send()
      await session.next(1)
      control.failReads = false
      control.failWrites = false
      session.send()
      await session.next(2)
      assert.equal(await session.exited, 0)
      assert.deepEqual(session.lines, ['errno 5 errno 5', '33333333 10'])
      const expected = new Uint8Array(8192).fill(0x33)
      expected.fill(0x7a, 5000, 5010)
      assert.deepEqual(await g.read(vol, 0, 8192), expected)
    } finally {
      await g.close()
    }
  })

  it('a volume deleted with force, or the instance closed, under a process holding data open: that process gets EIO, nothing hangs', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'f2'), mount: 'fuse' })
    const doomed = join(root, 'f2a')
    const other = join(root, 'f2b')
    const holder = `
import os, sys
fd = os.open(sys.argv[1] + '/data', os.O_RDWR)
print(os.pread(fd, 2, 0).hex(), flush=True)
sys.stdin.readline()
for f in [lambda: os.pread(fd, 2, 0), lambda: os.pwrite(fd, b'q', 0), lambda: os.fsync(fd)]:
    try:
        f()
        print('ok', flush=True)
    except OSError as e:
        print('errno', e.errno, flush=True)
`
    let closed = false
    try {
      await g.write(await g.createVolume({ name: 'doomed', sizeBytes: '1M' }), 0, new Uint8Array([1, 2]))
      await g.write(await g.createVolume({ name: 'other', sizeBytes: '1M' }), 0, new Uint8Array([3, 4]))
      await g.mounts.mountVolume('doomed', doomed)
      await g.mounts.mountVolume('other', other)
      const first = pythonSession(holder, doomed)
      const second = pythonSession(holder, other)
      await first.next(1)
      await second.next(1)
      await assert.rejects(g.deleteVolume('doomed'), { code: 'BUSY' })
      await g.deleteVolume('doomed', { force: true })
      first.send()
      assert.equal(await first.exited, 0)
      assert.deepEqual(first.lines, ['0102', 'errno 5', 'errno 5', 'errno 5'])
      await g.close()
      closed = true
      second.send()
      assert.equal(await second.exited, 0)
      assert.deepEqual(second.lines, ['0304', 'errno 5', 'errno 5', 'errno 5'])
    } finally {
      if (!closed) await g.close()
    }
  })
})

describe('FUSE mount driver: several processes at once', { skip }, () => {
  it('writers and readers in separate processes, odd offsets and sizes sharing blocks, match an in-memory model byte for byte', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'c1'), mount: 'fuse' })
    const mnt = join(root, 'c1m')
    const SIZE = 2 << 20
    const HALF = SIZE / 2
    const STRIPE = 10_007 // stripes of the first half, owned in turn by the writers: neighbours share a block
    const WRITERS = 3
    const byteOf = (seed: number, j: number): number => (seed * 131 + j * 31 + (j >> 8)) & 0xff
    const patternOf = (i: number): number => (i * 7 + (i >> 12)) & 0xff
    try {
      const vol = await g.createVolume({ name: 'shared', sizeBytes: SIZE })
      // The second half holds a pattern no one writes: the readers check it while the writers run.
      const pattern = new Uint8Array(HALF)
      for (let i = 0; i < HALF; i++) pattern[i] = patternOf(HALF + i)
      await g.write(vol, HALF, pattern)
      await g.mounts.mountVolume(vol, mnt)

      // Every writer's operations, decided here, and the model they should leave.
      const model = new Uint8Array(SIZE)
      model.set(pattern, HALF)
      const stripes = Math.floor(HALF / STRIPE)
      let state = 12345
      const random = (n: number): number => { state = (state * 1103515245 + 12345) % 2147483648; return state % n }
      const plans: Array<Array<[number, number, number]>> = []
      for (let w = 0; w < WRITERS; w++) plans.push([])
      for (let op = 0; op < 120 * WRITERS; op++) {
        const writer = op % WRITERS
        const stripe = writer + WRITERS * random(Math.floor(stripes / WRITERS))
        const length = 1 + random(STRIPE)
        const offset = stripe * STRIPE + random(STRIPE - length + 1)
        const seed = op + 1
        ;(plans[writer] as Array<[number, number, number]>).push([offset, length, seed])
        for (let j = 0; j < length; j++) model[offset + j] = byteOf(seed, j)
      }
      const writer = `
import os, sys, json
fd = os.open(sys.argv[1] + '/data', os.O_RDWR)
bad = 0
for n, (offset, length, seed) in enumerate(json.loads(sys.argv[2])):
    data = bytes((seed * 131 + j * 31 + (j >> 8)) & 0xff for j in range(length))
    assert os.pwrite(fd, data, offset) == length
    if os.pread(fd, length, offset) != data:
        bad += 1
    if n % 40 == 39:
        os.fsync(fd)
print('bad', bad)
`
      const reader = `
import os, sys
fd = os.open(sys.argv[1] + '/data', os.O_RDONLY)
half, step = int(sys.argv[2]), int(sys.argv[3])
bad = 0
for rnd in range(2):
    offset = half + rnd * 333
    while offset < 2 * half:
        got = os.pread(fd, step, offset)
        want = bytes(((i * 7 + (i >> 12)) & 0xff) for i in range(offset, min(offset + step, 2 * half)))
        if got != want:
            bad += 1
        offset += step
print('bad', bad)
`
      const results = await Promise.all([
        ...plans.map(async (plan) => await python(writer, mnt, JSON.stringify(plan))),
        python(reader, mnt, String(HALF), '12345'),
        python(reader, mnt, String(HALF), '131071')
      ])
      assert.deepEqual(results, [['bad 0'], ['bad 0'], ['bad 0'], ['bad 0'], ['bad 0']], 'every writer read back what it wrote, every reader saw the pattern')
      // Through the mount (a fresh process) and through the API, after the last close.
      const { stdout } = await exec('dd', [`if=${join(mnt, 'data')}`, 'bs=64K', 'status=none'], { encoding: 'buffer', maxBuffer: 8 << 20 })
      assert.ok(Buffer.compare(stdout, Buffer.from(model)) === 0, 'the mount reads the model')
      assert.ok(Buffer.compare(Buffer.from(await g.read(vol, 0, SIZE)), Buffer.from(model)) === 0, 'the volume holds the model')
    } finally {
      await g.close()
    }
  })
})

describe('FUSE mount driver: the mount point', { skip }, () => {
  it('a mount point the mount made (with its missing parents) goes at unmount; one that was there stays, and so does a made one someone put a file in', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'mp'), mount: 'fuse' })
    try {
      const vol = await g.createVolume({ name: 'v', sizeBytes: '1M' })
      const base = join(root, 'mp-points')
      await mkdir(base)
      // Made with two missing parents: all three go, the existing base stays.
      const made = join(base, 'a', 'b', 'v')
      await g.mounts.mountVolume(vol, made)
      // Asked asynchronously: a synchronous call into this process's own mount would wait for ever.
      await access(join(made, 'data'))
      await g.mounts.unmountVolume(made)
      assert.equal(existsSync(join(base, 'a')), false, 'the directories the mount made are gone')
      assert.ok(existsSync(base), 'the directory that was there stays')
      // There before: stays after.
      const existing = join(base, 'existing')
      await mkdir(existing)
      await g.mounts.mountVolume(vol, existing)
      await g.mounts.unmountVolume(existing)
      assert.ok(existsSync(existing), 'a mount point that was there before the mount stays')
      // Made by the mount, but its parent got a file meanwhile: the mount point goes, the parent stays.
      const shared = join(base, 'shared', 'v')
      await g.mounts.mountVolume(vol, shared)
      await writeFile(join(base, 'shared', 'note.txt'), 'kept')
      await g.mounts.unmountVolume(shared)
      assert.equal(existsSync(shared), false)
      assert.ok(existsSync(join(base, 'shared', 'note.txt')), 'a directory holding something else stays')
    } finally {
      await g.close()
    }
  })
})
