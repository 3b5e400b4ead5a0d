// Review r82 of 51478ca/b1f53ce (a detached mount's operations are stubs): a writer that keeps
// data open across a forced unmount, after a write of its failed in the background, must still get
// EIO at its close, as the README promises ("a write that fails in the background fails every
// later fsync, close and write of that mount with EIO"). The writer is a separate process (python3):
// the serving process must never wait for its own mount synchronously.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { slowStore } from './support/slow-store.js'
import { GalleonFS } from '../src/index.js'
import { fuseMissing } from './support/fuse-available.js'

function fuseOrToolMissing (): string | undefined {
  const fuse = fuseMissing()
  if (fuse !== undefined) return fuse
  if (!['/bin', '/usr/bin', '/usr/local/bin'].some((dir) => existsSync(join(dir, 'python3')))) return 'python3 is not installed'
  return undefined
}
const skip = fuseOrToolMissing()
if (skip !== undefined) process.stdout.write(`# SKIP r82 FUSE detached flush: ${skip}\n`)

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'r82-fuse-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

/** A writer of `path` in a child process: each line on its stdin is a step, each result a line on its stdout. */
function writer (path: string): { step: (line: string) => Promise<string>, exited: Promise<unknown> } {
  const child = spawn('python3', ['-u', '-c', `
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
print('opened', flush=True)
for line in sys.stdin:
    word = line.strip()
    try:
        if word == 'write':
            print('write %d' % os.pwrite(fd, b'x' * 4096, 0), flush=True)
        elif word == 'close':
            os.close(fd)
            print('close ok', flush=True)
            break
    except OSError as err:
        print('%s %s' % (word, 'EIO' if err.errno == 5 else str(err)), flush=True)
        if word == 'close':
            break
`, path], { stdio: ['pipe', 'pipe', 'inherit'] })
  let out = ''
  let taken = 0
  child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
  const exited = new Promise((resolve) => child.once('exit', resolve))
  const nextLine = async (): Promise<string> => {
    const deadline = Date.now() + 30_000
    while (!out.slice(taken).includes('\n')) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`the writer said no more: ${out}`)
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    const end = out.indexOf('\n', taken)
    const line = out.slice(taken, end)
    taken = end + 1
    return line
  }
  return {
    exited,
    step: async (line: string) => {
      if (line !== '') child.stdin.write(line + '\n')
      return await nextLine()
    }
  }
}

describe('a descriptor kept open across a forced unmount (r82)', { skip }, () => {
  it('its close reports a write of the mount that failed in the background (EIO), as it did before the operations were detached', async () => {
    const storage = join(root, 'store')
    const { store, control } = await slowStore(storage, 20)
    const g = await GalleonFS.open({ storagePath: storage, blockStore: store, mount: 'fuse' })
    const mnt = join(root, 'mnt')
    try {
      const vol = await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.mounts.mountVolume(vol, mnt)
      const w = writer(join(mnt, 'data'))
      assert.equal(await w.step(''), 'opened')
      // Acknowledged by the mount's write-behind, then refused by the store.
      control.failing = true
      assert.equal(await w.step('write'), 'write 4096')
      await assert.rejects(g.mounts.unmountVolume(mnt, { force: true }), { code: 'IO_ERROR' })
      control.failing = false
      assert.equal(await w.step('close'), 'close EIO', 'the writer\'s close must report that its acknowledged write never reached the volume')
      await w.exited
    } finally {
      control.failing = false
      await g.close()
    }
  })

  it('with no failure, its close succeeds', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'store2'), mount: 'fuse' })
    const mnt = join(root, 'mnt2')
    try {
      const vol = await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.mounts.mountVolume(vol, mnt)
      const w = writer(join(mnt, 'data'))
      assert.equal(await w.step(''), 'opened')
      assert.equal(await w.step('write'), 'write 4096')
      await g.mounts.unmountVolume(mnt, { force: true })
      assert.equal(await w.step('close'), 'close ok')
      await w.exited
      assert.deepEqual(await g.read(vol, 0, 4), new Uint8Array(4).fill(0x78))
    } finally {
      await g.close()
    }
  })
})
