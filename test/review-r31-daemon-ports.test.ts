// r31 (review of h73): the daemon's busy-port check probed each address alone, closing each probe
// before the next: two of the daemon's own settings on one port (an --nbd-address that is its
// --ipc-address) passed it, the storage path was created, and the start failed only then ("the NBD
// server could not listen ...: EADDRINUSE", naming no fix). The probes are now held together: such
// a start stops with exit code 2 naming both settings, before anything is created. And what h73
// must not break: a daemon stopped and started again at once on the same fixed port (connections
// of the first left in TIME_WAIT) starts. Real daemon processes (test/support/daemon.ts).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, stat } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runCli, runDaemonToExit, startDaemonProcess, type RunningDaemon } from './support/daemon.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r31-port-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

const present = async (path: string): Promise<boolean> => await stat(path).then(() => true, () => false)

/** A port of 127.0.0.1 that was free a moment ago. */
async function freePort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

describe('r31: the daemon\'s address check', { timeout: 120_000 }, () => {
  it('its NBD address on its own IPC port: exit 2 naming both, and no storage path', async () => {
    const port = await freePort()
    const storage = join(root, 'same', 'storage')
    const { code, log } = await runDaemonToExit(['--storage-path', storage, '--ipc-address', `127.0.0.1:${port}`, '--nbd-address', `127.0.0.1:${port}`], { cwd: root })
    assert.equal(code, 2, log)
    assert.match(log, new RegExp(`the NBD address 127\\.0\\.0\\.1:${port} is on the port of the IPC address 127\\.0\\.0\\.1:${port} of this daemon, which listens on both; give --nbd-address \\(nbd_address in \\[daemon\\]\\) or --ipc-address \\(ipc_address in \\[daemon\\]\\) another port`))
    assert.equal(await present(join(root, 'same')), false, 'nothing was created')
  })

  it('stopped and started again at once on the same fixed port: it starts', async () => {
    const port = await freePort()
    const args = ['--storage-path', join(root, 'again'), '--ipc-address', `127.0.0.1:${port}`]
    let daemon: RunningDaemon | undefined
    try {
      daemon = await startDaemonProcess(args, { cwd: root })
      for (let i = 0; i < 3; i++) assert.equal((await runCli(daemon.address, ['volume', 'list'], { cwd: root })).code, 0)
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
      daemon = await startDaemonProcess(args, { cwd: root })
      assert.equal(daemon.address, `127.0.0.1:${port}`)
    } finally {
      if (daemon !== undefined && daemon.child.exitCode === null) {
        daemon.child.kill('SIGTERM')
        await daemon.exited
      }
    }
  })
})
