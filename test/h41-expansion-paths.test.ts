// Online expansion (expandVolume) seen through every way into a volume: the API, snapshots and
// clones, encryption, backups, an NBD export (a raw client and real ones: nbdinfo, qemu-io) and a
// FUSE mount (the real kernel, driven from child processes). Each case checks that the path and
// the expansion agree on the size and that the new space reads as zeros and takes writes, and that
// refused expansions change nothing. FUSE cases skip visibly without /dev/fuse or fusermount, the
// real NBD clients without nbdinfo or qemu-io.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { BackupStrategy, GalleonFS } from '../src/index.js'
import { DirectoryBackupTarget } from '../backends/directory/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { CMD_READ, EINVAL, NbdClient, REP_ACK, REP_INFO, infoRequestData } from './support/nbd-client.js'
import { gatedChunks } from './support/backup-targets.js'
import { until } from './support/wait.js'
import { pythonSession } from './support/python-session.js'
import { fuseMissing } from './support/fuse-available.js'

const exec = promisify(execFile)
const BS = 4096
const KiB = 1024
const MiB = 1024 * 1024
const TiB = 1024 * 1024 * MiB
/** NBD_OPT_INFO and NBD_CMD_WRITE (proto.md). */
const OPT_INFO = 6
const CMD_WRITE = 1

const toolMissing = (tool: string): string | undefined => ['/bin', '/usr/bin', '/usr/local/bin'].some((dir) => existsSync(join(dir, tool))) ? undefined : `${tool} is not installed (see .ci/run)`
const noFuse = fuseMissing() ?? toolMissing('python3')
if (noFuse !== undefined) process.stdout.write(`# SKIP h41 FUSE cases: ${noFuse}\n`)
for (const tool of ['nbdinfo', 'qemu-io']) {
  const why = toolMissing(tool)
  if (why !== undefined) process.stdout.write(`# SKIP h41 NBD cases needing ${tool}: ${why}\n`)
}

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-h41-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
let places = 0
const place = (): string => join(root, `p${places++}`)

function pattern (seed: number, length: number): Uint8Array {
  const out = new Uint8Array(length)
  for (let i = 0; i < length; i++) out[i] = (seed * 131 + i * 7 + (i >> 12)) & 0xff
  return out
}
const zeros = (length: number): Uint8Array => new Uint8Array(length)

describe('h41: expansion through the API, snapshots, clones, encryption and backups', () => {
  it('refused expansions (smaller, not a block multiple, zero, beyond the pool) change nothing; the same size is a no-op', async () => {
    const g = await GalleonFS.open({ storagePath: place() })
    try {
      await g.createPool({ name: 'small', capacityBytes: 64 * BS })
      const image = pattern(1, 16 * BS)
      await g.createVolume({ name: 'v', sizeBytes: 16 * BS, pool: 'small' })
      await g.write('v', 0, image)
      const events: number[] = []
      g.on('volume:expanded', (volume) => { events.push(volume.sizeBytes) })
      await assert.rejects(g.expandVolume('v', 8 * BS), (err: { code?: string, message?: string }) => err.code === 'INVALID_ARGUMENT' && /shrinking/.test(err.message ?? ''))
      await assert.rejects(g.expandVolume('v', 16 * BS + 1), (err: { code?: string, message?: string }) => err.code === 'INVALID_ARGUMENT' && err.message?.includes(`try ${17 * BS}`) === true)
      await assert.rejects(g.expandVolume('v', '65.5K'), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.expandVolume('v', 0), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.expandVolume('v', 65 * BS), { code: 'NO_SPACE' })
      assert.equal((await g.expandVolume('v', 16 * BS)).sizeBytes, 16 * BS)
      assert.deepEqual(events, [], 'no refused or same-size expansion is reported as one')
      assert.equal((await g.getVolume('v')).sizeBytes, 16 * BS)
      assert.deepEqual(await g.read('v', 0, 16 * BS), image)
      // The whole pool is still there for the volume.
      assert.equal((await g.expandVolume('v', 64 * BS)).sizeBytes, 64 * BS)
      assert.deepEqual(events, [64 * BS])
      assert.deepEqual(await g.read('v', 16 * BS, 48 * BS), zeros(48 * BS))
    } finally {
      await g.close()
    }
  })

  it('a size that is not a block multiple is refused with a suggestion that is itself accepted, also next to the largest size', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'v', sizeBytes: BS })
      for (const asked of [5 * BS + 1, Number.MAX_SAFE_INTEGER]) {
        const err = await g.expandVolume('v', asked).then(() => undefined, (caught: { code?: string, message?: string }) => caught)
        assert.equal(err?.code, 'INVALID_ARGUMENT')
        const suggested = Number(/try (\d+)/.exec(err?.message ?? '')?.[1])
        assert.ok(Number.isSafeInteger(suggested), `the message suggests a size: ${err?.message ?? ''}`)
        // Following the advice works.
        assert.equal((await g.expandVolume('v', suggested)).sizeBytes, suggested, `suggested ${suggested} for ${asked}`)
      }
    } finally {
      await g.close()
    }
  })

  it('grown to the largest size (2^53 - 4096 bytes), blocks past 2^32 are addressed exactly and block 0 is untouched, across a reopen', async () => {
    const storagePath = place()
    const largest = Number.MAX_SAFE_INTEGER - (Number.MAX_SAFE_INTEGER % BS)
    const far = 2 ** 32 * BS
    let g = await GalleonFS.open({ storagePath })
    try {
      await g.createVolume({ name: 'v', sizeBytes: 16 * BS })
      await g.write('v', 0, pattern(2, BS))
      assert.equal((await g.expandVolume('v', largest)).sizeBytes, largest)
      await g.write('v', far, pattern(3, BS))
      await g.write('v', largest - BS, pattern(4, BS))
      assert.deepEqual(await g.read('v', far - BS, 2 * BS), new Uint8Array([...zeros(BS), ...pattern(3, BS)]))
      assert.equal(await g.getVolumeUsage('v'), 3 * BS)
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath })
    try {
      assert.equal((await g.getVolume('v')).sizeBytes, largest)
      assert.deepEqual(await g.read('v', 0, BS), pattern(2, BS))
      assert.deepEqual(await g.read('v', far, BS), pattern(3, BS))
      assert.deepEqual(await g.read('v', largest - BS, BS), pattern(4, BS))
      await assert.rejects(g.write('v', largest, new Uint8Array(1)), { code: 'OUT_OF_RANGE' })
    } finally {
      await g.close()
    }
  })

  it('a snapshot keeps its size; its clone has that size and grows to zeros; a revert to it keeps the grown size and zeroes the tail; a later snapshot reverts back', async () => {
    const g = await GalleonFS.open({ storagePath: place() })
    try {
      const head = pattern(5, 8 * BS)
      await g.createVolume({ name: 'v', sizeBytes: 8 * BS })
      await g.write('v', 0, head)
      await g.createSnapshot('v', 'small')
      await g.expandVolume('v', 16 * BS)
      const tail = pattern(6, 8 * BS)
      await g.write('v', 8 * BS, tail)
      await g.createSnapshot('v', 'big')
      assert.equal((await g.getSnapshot('v', 'small')).sizeBytes, 8 * BS)
      assert.equal((await g.getSnapshot('v', 'big')).sizeBytes, 16 * BS)
      await assert.rejects(g.read({ volume: 'v', snapshot: 'small' }, 8 * BS, BS), { code: 'OUT_OF_RANGE' })

      // A clone of the older snapshot: its size, its data; grown, its new space is zeros (not the
      // source's blocks at those indices) and its writes there stay its own.
      const clone = await g.cloneVolume({ volume: 'v', snapshot: 'small' }, 'c')
      assert.equal(clone.sizeBytes, 8 * BS)
      await g.expandVolume('c', 16 * BS)
      assert.deepEqual(await g.read('c', 0, 16 * BS), new Uint8Array([...head, ...zeros(8 * BS)]))
      await g.write('c', 12 * BS, pattern(7, BS))
      assert.deepEqual(await g.read('v', 12 * BS, BS), tail.subarray(4 * BS, 5 * BS))
      assert.deepEqual(await g.getAllocation('c', 8 * BS, 8 * BS), [
        { offset: 8 * BS, length: 4 * BS, allocated: false },
        { offset: 12 * BS, length: BS, allocated: true },
        { offset: 13 * BS, length: 3 * BS, allocated: false }
      ])

      // Reverting to the older snapshot keeps the size (no shrink) and the tail reads as zeros.
      assert.equal((await g.restoreSnapshot('v', 'small')).sizeBytes, 16 * BS)
      assert.deepEqual(await g.read('v', 0, 16 * BS), new Uint8Array([...head, ...zeros(8 * BS)]))
      assert.equal((await g.restoreSnapshot('v', 'big')).sizeBytes, 16 * BS)
      assert.deepEqual(await g.read('v', 8 * BS, 8 * BS), tail)
      // Trimmed, grown again: still zeros past every old end.
      await g.trim('v', 8 * BS, 8 * BS)
      await g.expandVolume('v', 32 * BS)
      assert.deepEqual(await g.read('v', 8 * BS, 24 * BS), zeros(24 * BS))
    } finally {
      await g.close()
    }
  })

  it('an encrypted volume grows: the new space reads as zeros and keeps writes across a reopen; a clone of an older snapshot grows the same', async () => {
    const storagePath = place()
    let g = await GalleonFS.open({ storagePath })
    try {
      await g.createStorageClass({ name: 'sealed', provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
      await g.createVolume({ name: 'e', sizeBytes: 8 * BS, storageClass: 'sealed' })
      await g.write('e', 0, pattern(8, 8 * BS))
      await g.createSnapshot('e', 'before')
      await g.expandVolume('e', 32 * BS)
      assert.deepEqual(await g.read('e', 8 * BS, 24 * BS), zeros(24 * BS))
      await g.write('e', 31 * BS, pattern(9, BS))
      await g.cloneVolume({ volume: 'e', snapshot: 'before' }, 'ec')
      await g.expandVolume('ec', 32 * BS)
      await g.write('ec', 20 * BS, pattern(10, BS))
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath })
    try {
      assert.deepEqual(await g.read('e', 0, 8 * BS), pattern(8, 8 * BS))
      assert.deepEqual(await g.read('e', 8 * BS, 23 * BS), zeros(23 * BS))
      assert.deepEqual(await g.read('e', 31 * BS, BS), pattern(9, BS))
      assert.deepEqual(await g.read('ec', 0, 32 * BS), new Uint8Array([...pattern(8, 8 * BS), ...zeros(12 * BS), ...pattern(10, BS), ...zeros(11 * BS)]))
      assert.deepEqual((await g.scrub('e')).badBlocks, [])
    } finally {
      await g.close()
    }
  })

  it('backups across an expansion: an incremental after it restores byte-exact at the new size; an older full restored into the grown volume zeroes its tail; a too-small target is refused', async () => {
    const g = await GalleonFS.open({ storagePath: place(), backupTarget: place() })
    try {
      await g.createVolume({ name: 'b', sizeBytes: 8 * BS })
      const first = pattern(11, 8 * BS)
      await g.write('b', 0, first)
      const full = await g.createBackup('b', { strategy: BackupStrategy.Full })
      await g.expandVolume('b', 24 * BS)
      await g.write('b', 4 * BS, pattern(12, BS))
      await g.write('b', 20 * BS, pattern(13, 2 * BS))
      const incremental = await g.createBackup('b', { strategy: BackupStrategy.Incremental })
      const now = await g.read('b', 0, 24 * BS)

      const restored = await g.restoreBackup(incremental.id, { name: 'b-inc' })
      assert.equal(restored.sizeBytes, 24 * BS)
      assert.deepEqual(await g.read('b-inc', 0, 24 * BS), now)
      const older = await g.restoreBackup(full.id, { name: 'b-full' })
      assert.equal(older.sizeBytes, 8 * BS)
      assert.deepEqual(await g.read('b-full', 0, 8 * BS), first)

      await g.createVolume({ name: 'tiny', sizeBytes: 8 * BS })
      await g.write('tiny', 0, pattern(14, 8 * BS))
      await assert.rejects(g.restoreBackup(incremental.id, { volume: 'tiny' }), { code: 'OUT_OF_RANGE' })
      assert.deepEqual(await g.read('tiny', 0, 8 * BS), pattern(14, 8 * BS), 'the refused restore changed nothing')

      // The older (smaller) full into the grown volume itself: its size stays, and the space past
      // the backup's end reads as zeros, not as what was written there since.
      await g.restoreBackup(full.id, { volume: 'b' })
      assert.equal((await g.getVolume('b')).sizeBytes, 24 * BS)
      assert.deepEqual(await g.read('b', 0, 24 * BS), new Uint8Array([...first, ...zeros(16 * BS)]))
    } finally {
      await g.close()
    }
  })
  it('an expansion while a backup, a key rotation and a live migration run: the backup is the volume before it, the rest see the new size and keep every write', async () => {
    const directory = new DirectoryBackupTarget({ path: place() })
    const gated = gatedChunks(directory)
    const target = gated.target
    const storagePath = place()
    let g = await GalleonFS.open({ storagePath, backupTarget: target })
    try {
      await g.createStorageClass({ name: 'sealed', provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
      // A backup held at the target (after its snapshot) while the volume grows and is written.
      await g.createVolume({ name: 'b', sizeBytes: 256 * BS })
      const before = pattern(30, 256 * BS)
      await g.write('b', 0, before)
      gated.hold()
      const taking = g.createBackup('b', { strategy: BackupStrategy.Full })
      await until('the backup reached the target', () => gated.reached > 0)
      await g.expandVolume('b', 512 * BS)
      await g.write('b', 0, pattern(31, BS))
      await g.write('b', 400 * BS, pattern(32, BS))
      gated.release()
      const backup = await taking
      const restored = await g.restoreBackup(backup.id, { name: 'b-then' })
      assert.equal(restored.sizeBytes, 256 * BS)
      assert.deepEqual(await g.read('b-then', 0, 256 * BS), before)
      const next = await g.restoreBackup((await g.createBackup('b', { strategy: BackupStrategy.Incremental })).id, { name: 'b-now' })
      assert.equal(next.sizeBytes, 512 * BS)
      assert.deepEqual(await g.read('b-now', 0, 512 * BS), await g.read('b', 0, 512 * BS))

      // A key rotation re-encrypting the volume while it grows and is written (old and new space).
      await g.createVolume({ name: 'k', sizeBytes: 512 * BS, storageClass: 'sealed' })
      await g.write('k', 0, pattern(33, 512 * BS))
      const rotating = g.rotateVolumeKey('k', { wait: true })
      await g.expandVolume('k', 1024 * BS)
      await g.write('k', 700 * BS, pattern(34, BS))
      await g.write('k', 5 * BS, pattern(35, BS))
      await rotating

      // A live migration (into the encrypted class) that an expansion waits for; an open file follows both.
      await g.createVolume({ name: 'm', sizeBytes: 256 * BS })
      await g.write('m', 0, pattern(36, 256 * BS))
      const file = await g.mounts.openVolumeFile('m', { readOnly: true })
      const migrating = g.migrateVolume('m', { storageClass: 'sealed' })
      const grown = await g.expandVolume('m', 512 * BS)
      await migrating
      assert.equal(grown.sizeBytes, 512 * BS)
      assert.equal((await g.getVolume('m')).encrypted, true)
      assert.equal(file.size, 512 * BS)
      await g.write('m', 300 * BS, pattern(37, BS))
      const seen = new Uint8Array(2 * BS)
      assert.equal(await file.pread(seen, 299 * BS), 2 * BS)
      assert.deepEqual(seen, new Uint8Array([...zeros(BS), ...pattern(37, BS)]))
      await file.close()
    } finally {
      await g.close()
    }
    g = await GalleonFS.open({ storagePath })
    try {
      const k = pattern(33, 512 * BS)
      k.set(pattern(35, BS), 5 * BS)
      assert.deepEqual(await g.read('k', 0, 512 * BS), k)
      assert.deepEqual(await g.read('k', 512 * BS, 512 * BS), new Uint8Array([...zeros(188 * BS), ...pattern(34, BS), ...zeros(323 * BS)]))
      const keys = await g.getVolumeEncryption('k')
      assert.deepEqual(keys.keyVersions, [keys.keyVersion], 'every block is under the new key')
      assert.deepEqual((await g.scrub('k')).badBlocks, [])
      assert.deepEqual(await g.read('m', 0, 512 * BS), new Uint8Array([...pattern(36, 256 * BS), ...zeros(44 * BS), ...pattern(37, BS), ...zeros(211 * BS)]))
    } finally {
      await g.close()
    }
  })
})

describe('h41: expansion seen over NBD', () => {
  let g: GalleonFS
  let server: NbdServer
  before(async () => {
    g = await GalleonFS.open({ storagePath: place() })
    server = await NbdServer.listen(g, { port: 0 })
  })
  after(async () => {
    await server?.close()
    await g?.close()
  })

  it('a client connected before keeps the size it negotiated (in range works, past it is refused); NBD_OPT_INFO and a new connection see the new size', async () => {
    await g.createVolume({ name: 'raw', sizeBytes: 1 * MiB })
    const image = pattern(20, 1 * MiB)
    await g.write('raw', 0, image)
    const early = await NbdClient.connect(server.port)
    try {
      await early.hello()
      assert.equal((await early.go('raw')).size, 1 * MiB)
      await g.expandVolume('raw', 2 * MiB)
      assert.deepEqual(new Uint8Array(await early.readBlock(MiB - BS, BS) ?? []), image.subarray(MiB - BS))
      early.request(CMD_READ, 2, MiB, BS)
      assert.equal((await early.reply()).error, EINVAL, 'a read past the negotiated size is refused')
      early.request(CMD_WRITE, 3, 8 * BS, BS, 0, pattern(21, BS))
      assert.equal((await early.reply()).error, 0)
      assert.deepEqual(await g.read('raw', 8 * BS, BS), pattern(21, BS))

      const late = await NbdClient.connect(server.port)
      try {
        await late.hello()
        late.option(OPT_INFO, infoRequestData('raw'))
        let infoSize = -1
        for (let reply = await late.optionReply(); reply.type !== REP_ACK; reply = await late.optionReply()) {
          assert.equal(reply.type, REP_INFO)
          if (reply.data.readUInt16BE(0) === 0) infoSize = Number(reply.data.readBigUInt64BE(2))
        }
        assert.equal(infoSize, 2 * MiB, 'NBD_OPT_INFO reports the new size')
        assert.equal((await late.go('raw')).size, 2 * MiB)
        assert.deepEqual(new Uint8Array(await late.readBlock(MiB, 64 * KiB) ?? []), zeros(64 * KiB))
      } finally {
        late.socket.destroy()
      }
    } finally {
      early.socket.destroy()
    }
  })

  it('real clients: qemu-io connected before the expansion still works within the old size; nbdinfo then sees the new size and maps the new space as a hole; qemu-io writes it', { skip: toolMissing('qemu-io') ?? toolMissing('nbdinfo') }, async () => {
    await g.createVolume({ name: 'real', sizeBytes: 1 * MiB })
    await g.write('real', 0, new Uint8Array(1 * MiB).fill(1))
    const uri = `nbd://127.0.0.1:${server.port}/real`
    // qemu-io reads its commands from stdin: the connection is made before the expansion.
    const child = spawn('qemu-io', ['-f', 'raw', uri], { stdio: ['pipe', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
    child.stderr.on('data', (chunk: Buffer) => { out += chunk.toString() })
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
    const prompts = (): number => out.split('qemu-io> ').length - 1
    await until('qemu-io is ready', () => prompts() >= 1, 20_000)
    /** Sends a command and resolves to what qemu-io printed for it (up to its next prompt). */
    const command = async (line: string): Promise<string> => {
      const before = prompts()
      const from = out.lastIndexOf('qemu-io> ') + 'qemu-io> '.length
      child.stdin.write(line + '\n')
      await until(`qemu-io answered ${JSON.stringify(line)} (${JSON.stringify(out)})`, () => prompts() > before, 20_000)
      return out.slice(from, out.lastIndexOf('qemu-io> '))
    }
    assert.match(await command('length'), /^1 MiB/)
    await g.expandVolume('real', 2 * MiB)
    assert.match(await command('length'), /^1 MiB/, 'the connection keeps the size it negotiated')
    assert.match(await command('read -P 1 0 64k'), /read 65536\/65536 bytes at offset 0/)
    assert.match(await command('write -P 9 4k 4k'), /wrote 4096\/4096 bytes at offset 4096/)
    assert.doesNotMatch(await command('flush'), /fail|error/i)
    child.stdin.end()
    assert.equal(await exited, 0, out)
    assert.deepEqual(await g.read('real', 4 * KiB, 4 * KiB), new Uint8Array(4 * KiB).fill(9))

    const info = JSON.parse((await exec('nbdinfo', ['--json', uri])).stdout)
    assert.equal(info.exports[0]['export-size'], 2 * MiB)
    const map = (await exec('nbdinfo', ['--map', uri])).stdout.trim().split('\n').map((line) => line.trim().split(/\s+/))
    assert.deepEqual(map.map((cells) => [Number(cells[0]), Number(cells[1]), cells.slice(3).join(' ')]), [[0, MiB, 'data'], [MiB, MiB, 'hole,zero']])
    await exec('qemu-io', ['-f', 'raw', '-c', 'write -P 3 1536k 4k', '-c', 'read -P 0 1M 512k', '-c', 'read -P 3 1536k 4k', uri])
    assert.deepEqual(await g.read('real', 1536 * KiB, 4 * KiB), new Uint8Array(4 * KiB).fill(3))
  })
})

describe('h41: expansion seen through a FUSE mount', { skip: noFuse }, () => {
  it('a process that opened data before the expansion sees the new size (fstat, SEEK_END) and reads zeros and writes past the old end, as with a resized block device', async () => {
    const g = await GalleonFS.open({ storagePath: place(), mount: 'fuse' })
    const mnt = place()
    try {
      const vol = await g.createVolume({ name: 'grow', sizeBytes: '1M' })
      await g.write(vol, 0, new Uint8Array(1 * MiB).fill(1))
      await g.mounts.mountVolume(vol, mnt)
      // Reads the whole volume sequentially first (the mount reads ahead), then waits.
      const session = pythonSession(`
import os, sys
fd = os.open(sys.argv[1] + '/data', os.O_RDWR)
n = 0
while True:
    b = os.read(fd, 131072)
    if not b: break
    n += len(b)
print(n, os.fstat(fd).st_size, flush=True)
sys.stdin.readline()
print(os.fstat(fd).st_size, flush=True)
b = os.read(fd, 131072)
print(len(b), b.count(0), flush=True)
print(os.pwrite(fd, b'\\x05' * 4096, (1 << 20) + 8192), flush=True)
os.fsync(fd)
print(os.lseek(fd, 0, os.SEEK_END), flush=True)
print(os.pwrite(fd, b'\\x06' * 4096, (2 << 20) - 2048), flush=True)
os.close(fd)
`, mnt)
      await session.next(1)
      await g.expandVolume(vol, '2M')
      session.send()
      assert.equal(await session.exited, 0)
      assert.deepEqual(session.lines, [`${MiB} ${MiB}`, `${2 * MiB}`, '131072 131072', '4096', `${2 * MiB}`, '2048'])
      assert.deepEqual(await g.read(vol, MiB + 8 * KiB, 4 * KiB), new Uint8Array(4 * KiB).fill(5))
      // A write across the new end is short (as on a block device): the part inside landed.
      assert.deepEqual(await g.read(vol, 2 * MiB - 2 * KiB, 2 * KiB), new Uint8Array(2 * KiB).fill(6))
      // dd from another process past the old end, and one past the new end refused (ENOSPC).
      await exec('dd', ['if=/dev/zero', `of=${join(mnt, 'data')}`, 'bs=4k', 'seek=300', 'count=10', 'conv=notrunc,fsync', 'status=none'])
      await assert.rejects(exec('dd', ['if=/dev/zero', `of=${join(mnt, 'data')}`, 'bs=4k', 'seek=510', 'count=10', 'conv=notrunc,fsync', 'status=none']), /No space left on device/)
      assert.equal((await g.getVolume(vol)).sizeBytes, 2 * MiB)
    } finally {
      await g.close()
    }
  })

  it('statvfs of the mount reports the volume\'s size after it grows past 16 TiB (2^32 blocks of 4 KiB)', async () => {
    const g = await GalleonFS.open({ storagePath: place(), mount: 'fuse' })
    const mnt = place()
    try {
      const vol = await g.createVolume({ name: 'huge', sizeBytes: '1M' })
      await g.mounts.mountVolume(vol, mnt)
      const look = async (): Promise<number[]> => (await exec('python3', ['-c', 'import os, sys; s = os.statvfs(sys.argv[1]); print(s.f_blocks * s.f_frsize, os.stat(sys.argv[1] + "/data").st_size)', mnt])).stdout.trim().split(' ').map(Number)
      assert.deepEqual(await look(), [MiB, MiB])
      await g.expandVolume(vol, '17T')
      // df and statvfs(3) callers see the size the data file has.
      assert.deepEqual(await look(), [17 * TiB, 17 * TiB])
    } finally {
      await g.close()
    }
  })
})
