// README "FUSE": claims no other test checks literally: mkfs works on data, read-only mounts show
// `ro` in findmnt, every creation of a name fails with "Permission denied", mounting over any mount
// (a tmpfs) is refused with BUSY, a snapshot waits for writes the mount acknowledged, and a
// background write failure lasts until the volume is mounted again. Tools run as separate
// processes, asynchronously (the serving process must never wait for its own mount synchronously).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { slowStore } from './support/slow-store.js'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { GalleonFS } from '../src/index.js'
import { fuseMissing } from './support/fuse-available.js'

const exec = promisify(execFile)
const ROOT = fileURLToPath(new URL('..', import.meta.url))

function fuseOrToolMissing (): string | undefined {
  const fuse = fuseMissing()
  if (fuse !== undefined) return fuse
  for (const tool of ['mkfs.ext4', 'e2fsck', 'findmnt', 'python3']) {
    if (!['/bin', '/sbin', '/usr/bin', '/usr/sbin'].some((dir) => existsSync(join(dir, tool)))) return `${tool} is not installed`
  }
  return undefined
}
const skip = fuseOrToolMissing()
if (skip !== undefined) process.stdout.write(`# SKIP h54 FUSE tests: ${skip}\n`)

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'h54-fuse-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('README FUSE', { skip }, () => {
  it('mkfs works on data; findmnt shows ro for read-only mounts; creating any name is "Permission denied"; mounting over a tmpfs is BUSY', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'a'), mount: 'fuse' })
    const mnt = join(root, 'am')
    const snapMnt = join(root, 'asm')
    try {
      const vol = await g.createVolume({ name: 'fs', sizeBytes: '16M' })
      await g.mounts.mountVolume(vol, mnt)
      // "dd, cp, cat, cmp, fio and mkfs work on data".
      await exec('mkfs.ext4', ['-F', '-q', join(mnt, 'data')])
      await exec('e2fsck', ['-fn', join(mnt, 'data')])
      const magic = await g.read(vol, 1024 + 56, 2)
      assert.deepEqual([...magic], [0x53, 0xef], 'the ext4 superblock is in the volume')
      assert.match((await exec('findmnt', ['-no', 'OPTIONS', mnt])).stdout, /(^|,)rw(,|$)/)

      await g.createSnapshot(vol, 'made')
      await g.mounts.mountVolume({ volume: 'fs', snapshot: 'made' }, snapMnt)
      // "A read-only or snapshot mount is read-only to the kernel (ro in findmnt)".
      assert.match((await exec('findmnt', ['-no', 'OPTIONS', snapMnt])).stdout, /(^|,)ro(,|$)/)
      await exec('e2fsck', ['-fn', join(snapMnt, 'data')])

      // "Mounting where something is mounted already is refused with BUSY" (here a tmpfs).
      if (process.getuid?.() === 0) {
        const other = join(root, 'tmpfs')
        await mkdir(other)
        await exec('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', other])
        try {
          await assert.rejects(g.mounts.mountVolume(await g.createVolume({ name: 'x', sizeBytes: '1M' }), other), { code: 'BUSY' })
          assert.match((await exec('findmnt', ['-no', 'FSTYPE', other])).stdout, /tmpfs/, 'the tmpfs is still mounted there')
        } finally {
          await exec('umount', [other])
        }
      }

      // "The three names are fixed: creating, removing or renaming anything fails with "Permission denied"".
      const { stdout } = await exec('python3', ['-c', `
import os, sys, errno
m = sys.argv[1]
def t(name, f):
    try:
        f(); print(name, 'ok')
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
t('link', lambda: os.link(m + '/data', m + '/copy'))
t('mkfifo', lambda: os.mkfifo(m + '/fifo'))
t('mknod', lambda: os.mknod(m + '/node', 0o600))
t('rmdir', lambda: os.rmdir(m + '/x'))
t('create', lambda: os.close(os.open(m + '/new', os.O_CREAT | os.O_WRONLY)))
`, mnt])
      assert.deepEqual(stdout.trim().split('\n'), ['link EACCES', 'mkfifo EACCES', 'mknod EACCES', 'rmdir ENOENT', 'create EACCES'])
    } finally {
      await g.close()
    }
  })

  it('a snapshot waits for writes the mount acknowledged; the API sees them after a close; a background failure lasts until the volume is mounted again', async () => {
    const storage = join(root, 'b')
    const { store, control } = await slowStore(storage, 20)
    const g = await GalleonFS.open({ storagePath: storage, blockStore: store, mount: 'fuse' })
    const mnt = join(root, 'bm')
    try {
      const vol = await g.createVolume({ name: 'v', sizeBytes: '8M' })
      await g.mounts.mountVolume(vol, mnt)
      const bytes = new Uint8Array(randomBytes(4 << 20))
      await writeFile(join(root, 'b.bin'), bytes)
      // A writer that keeps data open after its writes were acknowledged (no fsync, no close yet).
      const writer = spawn('python3', ['-c', `
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
src = open(sys.argv[2], 'rb').read()
for i in range(0, len(src), 131072):
    os.pwrite(fd, src[i:i + 131072], i)
print('written', flush=True)
sys.stdin.readline()
os.close(fd)
print('closed', flush=True)
`, join(mnt, 'data'), join(root, 'b.bin')], { stdio: ['pipe', 'pipe', 'inherit'] })
      let out = ''
      writer.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
      const exited = new Promise((resolve) => writer.once('exit', resolve))
      const said = async (word: string): Promise<void> => {
        const deadline = Date.now() + 30_000
        while (!out.includes(word)) {
          if (Date.now() > deadline || writer.exitCode !== null) throw new Error(`the writer did not say ${word}: ${out}`)
          await new Promise((resolve) => setTimeout(resolve, 20))
        }
      }
      await said('written')
      // "a snapshot waits for them".
      await g.createSnapshot(vol, 'while-open')
      assert.ok(Buffer.from(await g.read({ volume: 'v', snapshot: 'while-open' } as never, 0, bytes.byteLength)).equals(bytes), 'the snapshot holds every acknowledged write')
      writer.stdin.write('\n')
      await said('closed')
      await exited
      // "the API and NBD see them once they landed (after an fsync or a close through the mount)".
      assert.ok(Buffer.from(await g.read(vol, 0, bytes.byteLength)).equals(bytes))

      // "A write that fails in the background fails every later fsync, close and write of that
      // mount with EIO, for every process, until it is mounted again; unmountVolume then reports it too."
      control.failing = true
      await assert.rejects(exec('dd', ['if=/dev/zero', `of=${join(mnt, 'data')}`, 'bs=64K', 'count=2', 'conv=notrunc', 'status=none']), /Input\/output error/)
      control.failing = false
      await assert.rejects(exec('dd', ['if=/dev/zero', `of=${join(mnt, 'data')}`, 'bs=4K', 'count=1', 'conv=notrunc', 'status=none']), /Input\/output error/, 'still failing after the store recovered')
      await assert.rejects(g.mounts.unmountVolume(mnt), { code: 'IO_ERROR' })
      await g.mounts.mountVolume(vol, mnt)
      await exec('dd', ['if=/dev/zero', `of=${join(mnt, 'data')}`, 'bs=4K', 'count=1', 'conv=notrunc,fsync', 'status=none'])
      assert.deepEqual(await g.read(vol, 0, 4096), new Uint8Array(4096), 'mounted again, writes work')
    } finally {
      control.failing = false
      await g.close()
    }
  })

  it('without fusermount, open fails with BACKEND_UNAVAILABLE naming what to install', async () => {
    // A child whose PATH holds no fusermount (node itself is started by its absolute path).
    const empty = await mkdtemp(join(root, 'no-path-'))
    const script = `const { GalleonFS } = await import('./src/index.js')
try { const g = await GalleonFS.open({ storagePath: ${JSON.stringify(join(empty, 'storage'))}, mount: 'fuse' }); console.log('opened ' + g.mounts.driver); await g.close() } catch (err) { console.log(err.code + ' ' + err.message) }`
    const { stdout } = await exec(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, env: { ...process.env, PATH: empty } })
    assert.match(stdout, /^BACKEND_UNAVAILABLE .*apt-get install fuse/)
  })
})
