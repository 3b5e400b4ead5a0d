// h73: a daemon started on a port another process holds failed (BUSY), but only after it had opened
// its storage: the storage path was left behind, holding metadata, a block store and an API token,
// for a daemon that never ran. Now the addresses it listens on (IPC, NBD, and the cluster's bind
// address when clustered) are checked before anything is created on disk. Real daemon processes
// (test/support/daemon.ts) against a port the test holds.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runDaemonToExit, startDaemonProcess } from './support/daemon.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-h73-port-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

const present = async (path: string): Promise<boolean> => await stat(path).then(() => true, () => false)

/** Runs `task` with a port of 127.0.0.1 held by this process. */
async function withHeldPort (task: (port: number) => Promise<void>): Promise<void> {
  const server: Server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  try {
    await task((server.address() as { port: number }).port)
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

describe('h73: a daemon on a busy port creates nothing', { timeout: 120_000 }, () => {
  it('a busy IPC address: exit 1 naming it, and no storage path', async () => {
    await withHeldPort(async (port) => {
      const storage = join(root, 'ipc', 'storage')
      const { code, log } = await runDaemonToExit(['--storage-path', storage, '--ipc-address', `127.0.0.1:${port}`], { cwd: root })
      assert.equal(code, 1, log)
      assert.match(log, new RegExp(`the IPC address 127\\.0\\.0\\.1:${port} is in use by another process \\(another galleonfs daemon\\?\\); stop that one, or give this daemon another --ipc-address`))
      assert.equal(await present(storage), false, 'the storage path was not created')
      assert.equal(await present(join(root, 'ipc')), false, 'nor its parent')
    })
  })

  it('a busy NBD address: the same; an existing storage path is left as it was', async () => {
    await withHeldPort(async (port) => {
      const storage = join(root, 'nbd')
      const first = await runDaemonToExit(['--storage-path', storage, '--nbd-address', `127.0.0.1:${port}`], { cwd: root })
      assert.equal(first.code, 1, first.log)
      assert.match(first.log, new RegExp(`the NBD address 127\\.0\\.0\\.1:${port} is in use by another process .*--nbd-address`))
      assert.equal(await present(storage), false)
    })
    // A storage path that was there (a daemon's, stopped) is not touched by a failed start either.
    const storage = join(root, 'kept')
    const daemon = await startDaemonProcess(['--storage-path', storage, '--ipc-address', '127.0.0.1:0'], { cwd: root })
    daemon.child.kill('SIGTERM')
    assert.equal(await daemon.exited, 0)
    const before = (await readdir(storage)).sort()
    await withHeldPort(async (port) => {
      const again = await runDaemonToExit(['--storage-path', storage, '--ipc-address', `127.0.0.1:${port}`], { cwd: root })
      assert.equal(again.code, 1, again.log)
    })
    assert.deepEqual((await readdir(storage)).sort(), before)
  })
})
