// Review r82 of d70eef7 (a stopping daemon refuses new NBD sessions): a reload that moves the NBD
// server to a new address (nbd_address changed, SIGHUP) listens there first, then closes the old
// server, which waits for its connections (up to its close limit). A stop that begins meanwhile
// told only the old server to refuse: the new one served new clients until the reload was over.
// Real daemon process, real qemu-img.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { connect, type Socket } from 'node:net'
import { join } from 'node:path'
import { runCli, startDaemonProcess } from './support/daemon.js'
import { freePort } from './support/net.js'
import { tempDirs } from './support/temp-dir.js'
import { until, within } from './support/wait.js'

const newDir = tempDirs('galleon-r82-')
const children = new Set<ChildProcess>()
after(() => { for (const child of children) child.kill('SIGKILL') })
const skip = ['/bin', '/usr/bin', '/usr/local/bin'].some((dir) => existsSync(join(dir, 'qemu-img'))) ? false : 'qemu-img not installed (see .ci/run)'

/** qemu-img info on nbd://127.0.0.1:port/disk (killed after 40 s: a hang). */
async function qemuInfo (port: number): Promise<{ code: number | null, stdout: string, stderr: string }> {
  return await new Promise((resolve) => {
    const child = execFile('qemu-img', ['info', `nbd://127.0.0.1:${port}/disk`], (err, stdout, stderr) => {
      clearTimeout(timer)
      resolve({ code: err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : null, stdout, stderr })
    })
    const timer = setTimeout(() => { child.kill('SIGKILL') }, 40_000)
  })
}

/** Whether something accepts connections on 127.0.0.1:port (the connection is closed at once). */
async function accepting (port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1')
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => { resolve(false) })
  })
}

describe('review r82: a stop during a reload that moves the NBD server', { skip, timeout: 180_000 }, () => {
  it('the NBD server on the new address refuses new sessions once the stop has begun', async () => {
    const dir = await newDir()
    const config = join(dir, 'daemon.conf')
    const oldPort = await freePort()
    const newPort = await freePort()
    const write = async (nbdPort: number): Promise<void> => {
      // A long handshake limit: the held client below keeps the old server's close going for its
      // whole close limit (10 s), not just until its handshake limit.
      await writeFile(config, `[daemon]\nstorage_path = "${join(dir, 'storage')}"\nipc_address = "127.0.0.1:0"\nnbd_address = "127.0.0.1:${nbdPort}"\nnbd_handshake_timeout = 120\n`)
    }
    await write(oldPort)
    const running = await startDaemonProcess(['--config', config], { cwd: dir, onSpawn: (spawned) => { children.add(spawned) } })
    let held: Socket | undefined
    try {
      const made = await runCli(running.address, ['volume', 'create', '--name', 'disk', '--size', '1M', '--replicas', '1'], { cwd: dir })
      assert.equal(made.code, 0, made.stderr)
      // A client in its handshake on the old address that does not close its side when the server
      // ends it: the old server's close() waits for it (up to 10 s).
      held = connect({ port: oldPort, host: '127.0.0.1', allowHalfOpen: true })
      held.on('error', () => {})
      await new Promise<void>((resolve) => (held as Socket).once('data', () => resolve()))
      await write(newPort)
      running.child.kill('SIGHUP')
      // The new server listens, then (with nothing awaited between) the reload closes the old one.
      await until('the NBD server listens on the new address', async () => await accepting(newPort))
      running.child.kill('SIGTERM')
      await until('the daemon is stopping', () => running.logs.some((line) => line.includes('shutting down')))
      assert.equal(running.logs.some((line) => line.includes('"stopped"')), false, 'the stop is still under way')
      const qemu = await qemuInfo(newPort)
      assert.notEqual(qemu.code, 0, `a new NBD client was served by a stopping daemon: ${qemu.stdout}`)
      assert.match(qemu.stderr, /server reported: the GalleonFS daemon is stopping/, qemu.stderr)
      held.destroy()
      assert.equal(await within('the daemon exits', running.exited), 0, running.logs.join('\n'))
    } finally {
      held?.destroy()
      if (running.child.exitCode === null) running.child.kill('SIGKILL')
    }
  })
})
