// Review r50: what each way into a volume (the API, VolumeFile, a FUSE mount's data with its
// read-ahead and write-behind, the NBD export) reads and writes while the volume is changed another
// way. Real child processes (python3, dd, cmp, nbd clients) do the mount's and the export's I/O:
// the process serving a FUSE mount must never wait for it synchronously.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { AccessMode, GalleonFS, type BlockStore } from '../src/index.js'
import { DirectoryBackupTarget } from '../backends/directory/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { heldCall } from './support/backup-targets.js'
import { fuseMissing } from './support/fuse-available.js'
import { pythonSession } from './support/python-session.js'
import { until } from './support/wait.js'

const exec = promisify(execFile)
const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex')
/** Reads `data` in 128 KiB requests in order (the mount reads ahead): `first` of them, then waits for a line, then up to `total`; prints the hash of all. */
const SEQUENTIAL_READER = `
import os, sys, hashlib
fd = os.open(sys.argv[1], os.O_RDONLY)
first, total = int(sys.argv[2]), int(sys.argv[3])
h = hashlib.sha256()
for i in range(first):
    h.update(os.pread(fd, 131072, i * 131072))
print('ready', flush=True)
sys.stdin.readline()
for i in range(first, total):
    h.update(os.pread(fd, 131072, i * 131072))
print(h.hexdigest(), flush=True)
`
const skip = fuseMissing()
if (skip !== undefined) process.stdout.write(`# SKIP r50 FUSE tests: ${skip}\n`)

/** A file store whose batches wait while the test holds them (hold() returns the release). */
async function heldStore (dir: string): Promise<{ store: BlockStore, hold: () => () => void }> {
  const { FileBlockStore } = await import('../backends/file/index.js')
  const inner = new FileBlockStore({ location: join(dir, 'blocks') })
  let gate: Promise<void> | undefined
  const store = new Proxy(inner, {
    get (target, prop) {
      if (prop === 'batch') {
        return async (...args: Parameters<typeof inner.batch>) => {
          while (gate !== undefined) await gate
          return await target.batch(...args)
        }
      }
      const value = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  const hold = (): () => void => {
    let release!: () => void
    gate = new Promise((resolve) => { release = resolve })
    return () => { gate = undefined; release() }
  }
  return { store, hold }
}

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'r50-paths-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('r50: FUSE write-behind against writes made another way', { skip }, () => {
  it('an API write made after the mount acknowledged overlapping writes is not overwritten by them when they land', async () => {
    const storage = join(root, 'order')
    const { store, hold } = await heldStore(storage)
    const g = await GalleonFS.open({ storagePath: storage, blockStore: store, mount: 'fuse' })
    const mnt = join(root, 'order-m')
    try {
      await g.mounts.mountVolume(await g.createVolume({ name: 'v', sizeBytes: '1M' }), mnt)
      // The store holds every batch: the mount's writes stay acknowledged but not stored.
      const release = hold()
      const child = pythonSession(`
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, b'\\xaa' * 4096, 0)
os.pwrite(fd, b'\\xbb' * 4096, 0)
print('acknowledged', flush=True)
sys.stdin.readline()
os.close(fd)
print('closed', flush=True)
`, join(mnt, 'data'))
      await child.next(1)
      // Both writes were acknowledged to the writer; the API write comes after them.
      const later = g.write('v', 0, new Uint8Array(4096).fill(0xcc))
      release()
      await later
      child.send()
      await child.next(2)
      assert.equal(Buffer.from(await g.read('v', 0, 4096)).toString('hex'), 'cc'.repeat(4096), 'the last write made (through the API) is what the volume holds')
    } finally {
      await g.close()
    }
  })
})

describe('r50: a restore into an existing volume and its mounts', () => {
  it('a mount made while a restore writes into the volume is refused with BUSY, and the restore ends as the backup', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'restore'), backupTarget: join(root, 'restore-target') })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '16M' })
      const backedUp = new Uint8Array(randomBytes(8 << 20))
      await g.write('v', 0, backedUp)
      const backup = await g.createBackup('v', { strategy: 'full' })
      await g.write('v', 0, new Uint8Array(8 << 20).fill(7))
      // The first progress event comes once the restore has begun writing (after its trims).
      const attempts: Array<Promise<string>> = []
      g.on('restore:progress', () => {
        if (attempts.length > 0) return
        attempts.push(g.mounts.mountVolume('v', join(root, 'restore-m'), { readOnly: true }).then(() => 'mounted', (err: Error & { code?: string }) => `${err.code}: ${err.message}`))
      })
      await g.restoreBackup(backup.id, { volume: 'v' })
      assert.equal(attempts.length, 1, 'the restore reported progress')
      const outcome = await (attempts[0] as Promise<string>)
      assert.match(outcome, /^BUSY: .*restor/, 'no mount shows the volume half restored')
      assert.deepEqual(g.mounts.listMounts(), [])
      assert.deepEqual(await g.read('v', 0, 8 << 20), backedUp)
      // Once the restore is over, the volume mounts again.
      await g.mounts.mountVolume('v', join(root, 'restore-m'))
    } finally {
      await g.close()
    }
  })

  it('a restore that finds the volume mounted once it claims it (the mount came after its first check) is refused with BUSY, and changes nothing', async () => {
    // The restore's own read of the manifest (the second; the first finds the backup, before the
    // restore checks for mounts) waits while held.
    const { target, hold } = heldCall(new DirectoryBackupTarget({ path: join(root, 'restore2-target') }), 'getManifest')
    const g = await GalleonFS.open({ storagePath: join(root, 'restore2'), backupTarget: target })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '4M' })
      await g.write('v', 0, new Uint8Array(randomBytes(1 << 20)))
      const backup = await g.createBackup('v', { strategy: 'full' })
      const current = new Uint8Array(1 << 20).fill(7)
      await g.write('v', 0, current)
      const held = hold()
      const restoring = g.restoreBackup(backup.id, { volume: 'v' }).then(() => 'restored', (err: Error & { code?: string }) => `${err.code}: ${err.message}`)
      await held.reached
      await g.mounts.mountVolume('v', join(root, 'restore2-m'))
      held.release()
      assert.match(await restoring, /^BUSY: .*mounted/)
      assert.deepEqual(await g.read('v', 0, 1 << 20), current, 'the mounted volume was not restored over')
      assert.deepEqual((await g.listSnapshots('v')).map((snapshot) => snapshot.name).filter((name) => name.startsWith('pre-restore-')), [])
      assert.equal(g.mounts.listMounts().length, 1)
      // Unmounted, the same restore goes through.
      await g.mounts.unmountVolume(join(root, 'restore2-m'))
      await g.restoreBackup(backup.id, { volume: 'v' })
    } finally {
      await g.close()
    }
  })
})

describe('r50: a sequential reader of a FUSE mount (read ahead) after changes made another way', { skip }, () => {
  it('a revert of the volume under a read-only mount: the rest of the read shows the snapshot, trimmed blocks included', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'revert'), mount: 'fuse' })
    const mnt = join(root, 'revert-m')
    try {
      await g.createVolume({ name: 'v', sizeBytes: '4M' })
      const old = new Uint8Array(randomBytes(4 << 20))
      old.fill(0, 3 << 20, (3 << 20) + (200 << 10))
      await g.write('v', 0, old)
      await g.trim('v', 3 << 20, 200 << 10)
      await g.createSnapshot('v', 'before')
      const now = new Uint8Array(randomBytes(4 << 20))
      await g.write('v', 0, now)
      // A read-write mount refuses the revert; a read-only one does not.
      await g.mounts.mountVolume('v', mnt, { readOnly: true })
      const reader = pythonSession(SEQUENTIAL_READER, join(mnt, 'data'), '8', '32')
      await reader.next(1)
      await g.restoreSnapshot('v', 'before')
      reader.send()
      await reader.next(2)
      const seen = new Uint8Array(4 << 20)
      seen.set(now.subarray(0, 1 << 20))
      seen.set(old.subarray(1 << 20), 1 << 20)
      assert.equal(reader.lines[1], sha256(seen))
    } finally {
      await g.close()
    }
  })

  it('NBD write-zeroes (unaligned, and with NO_HOLE) and trim from qemu-io: the rest of the read shows zeros there', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'zeroes'), mount: 'fuse' })
    const mnt = join(root, 'zeroes-m')
    const server = await NbdServer.listen(g, { host: '127.0.0.1', port: 0 })
    try {
      // Many writers: the mount and the NBD client write the volume at once.
      await g.createVolume({ name: 'v', sizeBytes: '4M', accessModes: [AccessMode.ReadWriteMany] })
      const data = new Uint8Array(randomBytes(4 << 20))
      await g.write('v', 0, data)
      await g.mounts.mountVolume('v', mnt)
      const reader = pythonSession(SEQUENTIAL_READER, join(mnt, 'data'), '8', '32')
      await reader.next(1)
      await exec('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${server.port}/v`, '-c', 'write -z 1179648 300000', '-c', 'discard 2097152 266240', '-c', 'write -z -u 3145728 131072'])
      for (const [at, length] of [[1179648, 300000], [2097152, 266240], [3145728, 131072]] as const) data.fill(0, at, at + length)
      reader.send()
      await reader.next(2)
      assert.equal(reader.lines[1], sha256(data))
    } finally {
      await server.close()
      await g.close()
    }
  })

  it('data-key rotations while a reader goes through an encrypted volume again and again: every pass reads the same bytes', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'rotate'), mount: 'fuse' })
    const mnt = join(root, 'rotate-m')
    try {
      await g.createVolume({ name: 'v', sizeBytes: '8M', storageClass: 'encrypted-storage', replicas: 1 })
      const data = new Uint8Array(randomBytes(8 << 20))
      await g.write('v', 0, data)
      await g.mounts.mountVolume('v', mnt)
      // Whole passes, one after the other, until told to stop (after the rotations).
      const reader = pythonSession(`
import os, sys, hashlib, select
fd = os.open(sys.argv[1], os.O_RDONLY)
print('ready', flush=True)
while not select.select([sys.stdin], [], [], 0)[0]:
    h, at = hashlib.sha256(), 0
    while True:
        chunk = os.pread(fd, 131072, at)
        if not chunk: break
        h.update(chunk)
        at += len(chunk)
    print(h.hexdigest(), flush=True)
print('stopped', flush=True)
`, join(mnt, 'data'))
      await reader.next(1)
      const first = (await g.getVolumeEncryption('v')).keyVersion
      for (let i = 0; i < 3; i++) await g.rotateVolumeKey('v', { wait: true })
      const during = reader.lines.length - 1
      reader.send()
      await until('the reader stopped', () => reader.lines.at(-1) === 'stopped')
      assert.ok(during >= 1, 'passes were read while the keys rotated')
      assert.deepEqual(new Set(reader.lines.slice(1, -1)), new Set([sha256(data)]))
      assert.equal((await g.getVolumeEncryption('v')).keyVersion, (first ?? 0) + 3)
    } finally {
      await g.close()
    }
  })
})
