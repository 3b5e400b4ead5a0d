// A volume as a real disk image, driven by tools nobody here wrote: file systems made on the FUSE
// `data` file and on the NBD export (through nbdfuse), files written into them with debugfs and
// mtools and read back the other way, discards at odd offsets, what the FUSE file does with
// fallocate, SEEK_HOLE, mmap and O_DIRECT (README "FUSE"), and qcow2 images, qemu-io, qemu-img
// convert and compare between a volume and its clone.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { fuseMissing } from './support/fuse-available.js'
import { e2fsck, exec, nbdfuse, toolsMissing } from './support/disk-tools.js'

const KiB = 1024
const MiB = 1024 * KiB

const fuse = fuseMissing()
if (fuse !== undefined) process.stdout.write(`# SKIP r80 disk-image tests: ${fuse}\n`)
/** The skip reason of a test needing FUSE and `tools` (printed, so it is never a silent pass). */
function needs (...tools: string[]): string | undefined {
  const reason = fuse ?? toolsMissing(...tools)
  if (reason !== undefined && fuse === undefined) process.stdout.write(`# SKIP an r80 disk-image test: ${reason}\n`)
  return reason
}

let root: string
let g: GalleonFS
let server: NbdServer
const uri = (name: string): string => `nbd://127.0.0.1:${server.port}/${name}`

before(async () => {
  if (fuse !== undefined) return
  root = await mkdtemp(join(tmpdir(), 'r80-disk-'))
  g = await GalleonFS.open({ storagePath: join(root, 'storage'), mount: 'fuse' })
  server = await NbdServer.listen(g, { port: 0 })
})
after(async () => {
  await server?.close()
  await g?.close()
  if (root !== undefined) await rm(root, { recursive: true, force: true })
})

/** A new volume of `size` bytes mounted through FUSE: its `data` file. */
async function mounted (name: string, size: number): Promise<string> {
  await g.createVolume({ name, sizeBytes: size })
  const mnt = join(root, `m-${name}`)
  await g.mounts.mountVolume(name, mnt)
  return join(mnt, 'data')
}

describe('r80: a volume as a disk image', { skip: fuse }, () => {
  it('ext4 made on the FUSE file, files written with debugfs -w through the mount, read back through NBD', { skip: needs('mkfs.ext4', 'e2fsck', 'debugfs', 'nbdcopy') }, async () => {
    const data = await mounted('ext4', 64 * MiB)
    await exec('mkfs.ext4', ['-F', '-q', data])
    const file = join(root, 'payload.bin')
    const payload = randomBytes(300_000)
    await writeFile(file, payload)
    await exec('debugfs', ['-w', '-R', `write ${file} payload.bin`, data])
    await exec('debugfs', ['-w', '-R', 'mkdir dir', data])
    assert.equal((await e2fsck(['-fn', data])).code, 0, 'e2fsck -fn of the FUSE file')

    // The volume is mounted read-write, so its export is read-only: copy it out and look inside.
    const copy = join(root, 'ext4.raw')
    await exec('nbdcopy', [uri('ext4'), copy])
    const checked = await e2fsck(['-fn', copy])
    assert.equal(checked.code, 0, checked.output)
    const back = join(root, 'payload.back')
    await exec('debugfs', ['-R', `dump payload.bin ${back}`, copy])
    assert.ok(payload.equals(await readFile(back)), 'the file debugfs wrote through FUSE reads back through NBD')
    assert.match((await exec('debugfs', ['-R', 'ls -l', copy])).stdout, / dir\s*$/m)
  })

  it('xfs and vfat made on the FUSE file; mcopy through the mount, read back through NBD', { skip: needs('mkfs.xfs', 'xfs_repair', 'mkfs.vfat', 'mcopy', 'nbdcopy') }, async () => {
    const xfs = await mounted('xfs', 320 * MiB) // mkfs.xfs refuses less than 300 MiB
    await exec('mkfs.xfs', ['-f', '-q', xfs])
    await exec('xfs_repair', ['-n', xfs])

    const vfat = await mounted('vfat', 32 * MiB)
    await exec('mkfs.vfat', [vfat])
    const file = join(root, 'fat.bin')
    const payload = randomBytes(200_000)
    await writeFile(file, payload)
    await exec('mcopy', ['-i', vfat, file, '::/FAT.BIN'])
    await exec('fsck.vfat', ['-n', vfat])
    const copy = join(root, 'vfat.raw')
    await exec('nbdcopy', [uri('vfat'), copy])
    const back = join(root, 'fat.back')
    await exec('mcopy', ['-n', '-i', copy, '::/FAT.BIN', back])
    assert.ok(payload.equals(await readFile(back)))
  })

  it('through nbdfuse: fallocate at odd offsets zeroes exactly its range, an aligned punch is a hole, mkfs.ext4 discards the old contents', { skip: needs('nbdfuse', 'fallocate', 'mkfs.ext4', 'e2fsck') }, async () => {
    const vol = await g.createVolume({ name: 'nbd-ext4', sizeBytes: 64 * MiB })
    const model = new Uint8Array(randomBytes(16 * MiB))
    await g.write(vol, 0, model)
    const dir = join(root, 'nbdfuse')
    await mkdir(dir)
    const served = await nbdfuse(dir, uri('nbd-ext4'))
    try {
      // [offset, length, mode]: -z is WRITE_ZEROES, -p (punch hole, keep size) TRIM.
      const ranges: Array<[number, number, string]> = [[1000, 4000, '-z'], [10_001, 500, '-p'], [3 * 4096 + 7, 3 * 4096, '-p'], [3 * 65536 - 3, 65536 + 5, '-z'], [256 * KiB, 256 * KiB, '-p']]
      for (const [offset, length, mode] of ranges) {
        await exec('fallocate', [mode, '-o', String(offset), '-l', String(length), served.file])
        model.fill(0, offset, offset + length)
      }
      const got = await g.read(vol, 0, model.byteLength)
      assert.ok(Buffer.from(got).equals(model), 'every byte outside the ranges kept, every byte inside zero')
      const hole = await g.getAllocation(vol, 256 * KiB, 256 * KiB)
      assert.deepEqual(hole.map((extent) => extent.allocated), [false], 'the aligned punch left a hole')

      const before = (await g.getVolumeUsageDetails(vol)).liveBytes
      await exec('mkfs.ext4', ['-F', '-q', served.file])
      const checked = await e2fsck(['-fn', served.file])
      assert.equal(checked.code, 0, checked.output)
      const afterMkfs = (await g.getVolumeUsageDetails(vol)).liveBytes
      assert.ok(afterMkfs < before / 2, `mkfs's discard freed the old contents (${before} -> ${afterMkfs} bytes)`)
    } finally {
      await served.stop()
    }
  })

  it('the FUSE file: fallocate is not supported, SEEK_HOLE finds none, MAP_SHARED is refused, O_DIRECT works at any offset', { skip: needs('python3') }, async () => {
    const data = await mounted('semantics', 16 * MiB)
    await g.write('semantics', 0, new Uint8Array(4096).fill(0x5a))
    const { stdout } = await exec('python3', ['-c', `
import ctypes, json, mmap, os, sys
p = sys.argv[1]; out = {}
libc = ctypes.CDLL(None, use_errno=True)
def code(f):
    try: r = f(); return r
    except OSError as e: return os.strerror(e.errno)
fd = os.open(p, os.O_RDWR)
for mode, name in ((0, 'plain'), (1, 'keep_size'), (3, 'punch_hole'), (0x10, 'zero_range')):
    r = libc.fallocate(fd, mode, ctypes.c_long(4096), ctypes.c_long(4096))
    out['fallocate ' + name] = 'ok' if r == 0 else os.strerror(ctypes.get_errno())
size = os.fstat(fd).st_size
out['seek_data 0'] = code(lambda: os.lseek(fd, 0, os.SEEK_DATA))
out['seek_hole 0'] = code(lambda: os.lseek(fd, 0, os.SEEK_HOLE)) == size
out['seek_data end'] = code(lambda: os.lseek(fd, size, os.SEEK_DATA))
out['mmap shared'] = code(lambda: mmap.mmap(fd, 4096, mmap.MAP_SHARED) and 'ok')
out['mmap private'] = code(lambda: mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ)[0:2].hex())
os.close(fd)
fd = os.open(p, os.O_RDWR | os.O_DIRECT)
buf = mmap.mmap(-1, 8192); buf.write(b'\\x33' * 8192)
out['direct aligned'] = os.pwritev(fd, [buf], 1 << 20)
out['direct unaligned'] = os.pwrite(fd, b'xyz', (1 << 20) + 5)
os.fsync(fd); os.close(fd)
print(json.dumps(out))
`, data])
    assert.deepEqual(JSON.parse(stdout), {
      // README "FUSE", as the user sees it (strerror): fuse-native has no fallocate, so the kernel
      // answers EOPNOTSUPP.
      'fallocate plain': 'Operation not supported',
      'fallocate keep_size': 'Operation not supported',
      'fallocate punch_hole': 'Operation not supported',
      'fallocate zero_range': 'Operation not supported',
      'seek_data 0': 0,
      'seek_hole 0': true,
      'seek_data end': 'No such device or address',
      // data is direct_io (no page cache): the kernel refuses shared mappings with ENODEV.
      'mmap shared': 'No such device',
      'mmap private': '5a5a',
      'direct aligned': 8192,
      'direct unaligned': 3
    })
    const expected = new Uint8Array(8192).fill(0x33)
    expected.set(new TextEncoder().encode('xyz'), 5)
    assert.deepEqual(await g.read('semantics', MiB, 8192), expected, 'the O_DIRECT writes landed (fsync)')
  })

  it('qcow2 in the FUSE file: qemu-io (threads, native aio, discard, zeroes), qemu-img check, a clean ENOSPC; convert and compare between a volume and its clone', { skip: needs('qemu-img', 'qemu-io') }, async () => {
    const data = await mounted('qcow', 64 * MiB)
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', data, '1G'])
    const io = async (args: string[]): Promise<string> => {
      const { stdout, stderr } = await exec('qemu-io', [...args, '-f', 'qcow2', data]).catch((err: { stdout: string, stderr: string }) => err)
      return stdout + stderr
    }
    const first = await io(['-c', 'write -P 0x11 0 8M', '-c', 'aio_write -P 0x22 100M 4M', '-c', 'aio_flush', '-c', 'discard 0 1M', '-c', 'write -z 2M 1M',
      '-c', 'read -P 0 0 1M', '-c', 'read -P 0x11 1M 1M', '-c', 'read -P 0 2M 1M', '-c', 'read -P 0x22 100M 4M'])
    assert.doesNotMatch(first, /fail|error/i, first)
    // -t none opens data with O_DIRECT, -i native submits with Linux AIO.
    const direct = await io(['-t', 'none', '-i', 'native', '-c', 'aio_write -P 0x33 200M 1M', '-c', 'aio_write -P 0x44 300M 512', '-c', 'aio_flush',
      '-c', 'read -P 0x33 200M 1M', '-c', 'read -P 0x44 300M 512'])
    assert.doesNotMatch(direct, /fail|error/i, direct)
    await exec('qemu-img', ['check', '-q', data])
    // More than the 64 MiB volume holds: the guest write fails with ENOSPC, the image stays sound.
    assert.match(await io(['-c', 'write -P 0x66 500M 80M']), /write failed: No space left on device/)
    await exec('qemu-img', ['check', '-q', data])

    await g.createVolume({ name: 'raw', sizeBytes: 1024 * MiB })
    await exec('qemu-img', ['convert', '-n', '-f', 'qcow2', '-O', 'raw', data, uri('raw')])
    await exec('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'raw', data, uri('raw')])
    await g.cloneVolume('raw', 'raw-clone')
    await exec('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', uri('raw'), uri('raw-clone')])
    await exec('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 5M 4k', uri('raw-clone')])
    const differs = await exec('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri('raw'), uri('raw-clone')]).catch((err: { code: number, stdout: string }) => err)
    assert.equal((differs as { code?: number }).code, 1, 'the clone differs once written')
    assert.match((differs as { stdout: string }).stdout, /Content mismatch at offset 5242880/)
    assert.deepEqual(await g.read('raw', 5 * MiB, 4), new Uint8Array(4).fill(0x11), 'the write to the clone left its source alone')
  })
})
