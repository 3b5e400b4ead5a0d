// README "Snapshots and clones" and "FUSE" together, the way a VM or a database host uses them: the
// kernel's ext4 on a loop device over a volume's FUSE `data`, a writer replacing files with
// write + fsync + rename + directory fsync, and snapshots taken while it runs. Each snapshot,
// copied out of its read-only NBD export, must be a crash-consistent ext4 (the journal replays,
// e2fsck then finds nothing) holding every replacement the writer had finished before the
// snapshot, each file whole; a clone of one must mount (the kernel replays its journal) and read
// the same. Needs root for the loop device; skips visibly otherwise.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { fuseMissing } from './support/fuse-available.js'
import { slowStore } from './support/slow-store.js'
import { e2fsck, exec, loopMissing, toolsMissing } from './support/disk-tools.js'
import { until, within } from './support/wait.js'

const MiB = 1024 * 1024
const SLOTS = 40
const SNAPSHOTS = 3

const skip = fuseMissing() ?? loopMissing() ?? toolsMissing('mkfs.ext4', 'e2fsck', 'debugfs', 'nbdcopy', 'fstrim', 'python3')
if (skip !== undefined) process.stdout.write(`# SKIP r80 snapshot-of-ext4 test: ${skip}\n`)

/** Generation `gen` of a slot's file: its number, then bytes derived from it (4 KiB to 128 KiB in all). */
function content (gen: number): Buffer {
  const size = 4096 * (1 + (gen * 7) % 32)
  const body = createHash('sha256').update(String(gen)).digest()
  const out = Buffer.alloc(size)
  out.writeBigUInt64LE(BigInt(gen), 0)
  for (let at = 8; at < size; at += 32) body.copy(out, at, 0, Math.min(32, size - at))
  return out
}

// The same in Python, then the replacement loop, until the stop file appears.
const WRITER = `
import hashlib, os, sys
d, stop, slots = sys.argv[1], sys.argv[2], ${SLOTS}
def content(g):
    n = 4096 * (1 + (g * 7) % 32)
    body = hashlib.sha256(str(g).encode()).digest()
    return (g.to_bytes(8, 'little') + body * (n // 32 + 1))[:n]
dfd = os.open(d, os.O_RDONLY)
g = 0
while not os.path.exists(stop):
    with open(d + '/tmp', 'wb') as f:
        f.write(content(g)); f.flush(); os.fsync(f.fileno())
    os.rename(d + '/tmp', '%s/f%d' % (d, g % slots))
    os.fsync(dfd)
    print(g, flush=True)
    g += 1
`

/**
 * Checks the slots' files read from an image: each one present is whole (some generation's bytes)
 * and not older than the last replacement finished before the snapshot (`finished`, per slot).
 */
function checkSlots (what: string, files: Map<number, Buffer>, finished: number[]): void {
  for (let slot = 0; slot < SLOTS; slot++) {
    const file = files.get(slot)
    const done = finished[slot] ?? -1
    if (file === undefined) { assert.equal(done, -1, `${what}: f${slot} is missing, though generation ${done} of it was finished before the snapshot`); continue }
    const gen = Number(file.readBigUInt64LE(0))
    assert.equal(gen % SLOTS, slot, `${what}: f${slot} holds generation ${gen}, another slot's`)
    assert.ok(file.equals(content(gen)), `${what}: f${slot} (generation ${gen}) is not whole`)
    assert.ok(gen >= done, `${what}: f${slot} holds generation ${gen}, older than ${done}, finished before the snapshot`)
  }
}

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'r80-snap-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('r80: snapshots of ext4 being written through FUSE', { skip }, () => {
  it('every snapshot is a crash-consistent ext4 with every replacement finished before it; a clone mounts and reads the same', async () => {
    // Batches that take a few ms keep acknowledged writes in the mount's write-behind for a while,
    // so snapshots meet them there.
    const { store } = await slowStore(join(root, 'storage'), 5)
    const g = await GalleonFS.open({ storagePath: join(root, 'storage'), blockStore: store, mount: 'fuse' })
    const server = await NbdServer.listen(g, { port: 0 })
    const loops: string[] = []
    const mounted: string[] = []
    const attach = async (file: string, at: string): Promise<void> => {
      const dev = (await exec('losetup', ['-f', '--show', file])).stdout.trim()
      loops.push(dev)
      await mkdir(at, { recursive: true })
      await exec('mount', [dev, at])
      mounted.push(at)
    }
    try {
      await g.createVolume({ name: 'vm', sizeBytes: 64 * MiB })
      await g.mounts.mountVolume('vm', join(root, 'fuse'))
      await exec('mkfs.ext4', ['-F', '-q', join(root, 'fuse', 'data')])
      const fs = join(root, 'ext4')
      await attach(join(root, 'fuse', 'data'), fs)

      const stop = join(root, 'stop')
      const writer = spawn('python3', ['-c', WRITER, fs, stop], { stdio: ['ignore', 'pipe', 'inherit'] })
      const exited = new Promise<number | null>((resolve) => writer.once('exit', (code) => resolve(code)))
      const latest: number[] = new Array<number>(SLOTS).fill(-1)
      let done = -1
      let pending = ''
      writer.stdout.on('data', (chunk: Buffer) => {
        pending += chunk.toString()
        const lines = pending.split('\n')
        pending = lines.pop() ?? ''
        for (const line of lines) { done = Number(line); latest[done % SLOTS] = done }
      })
      const finishedAt: number[][] = []
      try {
        for (let i = 1; i <= SNAPSHOTS; i++) {
          const target = done + 25
          await until(`the writer finished generation ${target}`, () => done >= target || writer.exitCode !== null, 60_000)
          assert.equal(writer.exitCode, null, 'the writer runs while the snapshot is taken')
          finishedAt.push([...latest])
          await g.createSnapshot('vm', `s${i}`)
        }
      } finally {
        await writeFile(stop, '')
        assert.equal(await within('the writer stops', exited), 0)
      }

      // README "FUSE": the FUSE file has no fallocate, so the loop device cannot discard: the
      // loop driver takes the first discard as done (the first fstrim may report bytes trimmed),
      // then turns discards off ("the discard operation is not supported"). Nothing is freed.
      const before = (await g.getVolumeUsageDetails('vm')).liveBytes
      const fstrim = await exec('fstrim', ['-v', fs]).then(({ stdout }) => stdout, (err: { stderr: string }) => err.stderr)
      assert.match(fstrim, /\(\d+ bytes\) trimmed|the discard operation is not supported/)
      const trimmed = (await g.getVolumeUsageDetails('vm')).liveBytes
      assert.ok(trimmed >= before, `nothing freed (${before} -> ${trimmed} bytes)`)

      for (let i = 1; i <= SNAPSHOTS; i++) {
        const image = join(root, `s${i}.raw`)
        await exec('nbdcopy', [`nbd://127.0.0.1:${server.port}/vm@s${i}`, image])
        const replayed = await e2fsck(['-fp', image])
        assert.ok(replayed.code <= 1, `s${i}: e2fsck -fp (journal replay) left errors:\n${replayed.output}`)
        const checked = await e2fsck(['-fn', image])
        assert.equal(checked.code, 0, `s${i}: after the replay:\n${checked.output}`)
        const out = join(root, `s${i}-files`)
        await mkdir(out)
        const commands = join(root, `s${i}.debugfs`)
        await writeFile(commands, Array.from({ length: SLOTS }, (_, slot) => `dump /f${slot} ${join(out, `f${slot}`)}\n`).join(''))
        await exec('debugfs', ['-f', commands, image])
        const files = new Map<number, Buffer>()
        for (let slot = 0; slot < SLOTS; slot++) {
          const file = await readFile(join(out, `f${slot}`)).catch(() => undefined)
          if (file !== undefined) files.set(slot, file)
        }
        checkSlots(`snapshot s${i}`, files, finishedAt[i - 1] as number[])
      }

      // A clone of the last snapshot, mounted as the kernel would after a crash: it replays the journal.
      await g.cloneVolume({ volume: 'vm', snapshot: `s${SNAPSHOTS}` }, 'vm-clone')
      await g.mounts.mountVolume('vm-clone', join(root, 'clone-fuse'))
      const cloneFs = join(root, 'clone-ext4')
      await attach(join(root, 'clone-fuse', 'data'), cloneFs)
      const files = new Map<number, Buffer>()
      for (let slot = 0; slot < SLOTS; slot++) {
        const file = await readFile(join(cloneFs, `f${slot}`)).catch(() => undefined)
        if (file !== undefined) files.set(slot, file)
      }
      checkSlots('the clone', files, finishedAt[SNAPSHOTS - 1] as number[])
      await exec('umount', [cloneFs])
      mounted.splice(mounted.indexOf(cloneFs), 1)
      const clean = await e2fsck(['-fn', join(root, 'clone-fuse', 'data')])
      assert.equal(clean.code, 0, `the clone after the kernel's replay and unmount:\n${clean.output}`)
    } finally {
      for (const at of mounted.reverse()) await exec('umount', [at]).catch(() => {})
      for (const dev of loops) await exec('losetup', ['-d', dev]).catch(() => {})
      await server.close()
      await g.close()
    }
  })
})
