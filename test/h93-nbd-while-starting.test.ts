// h93: NBD clients of a daemon that is not serving yet, or no longer. While a daemon waited for its
// peers (--peer-addresses, up to --peer-wait-seconds) or opened its storage, its NBD port (held
// since h77) kept a client connected with no answer at all: nbdinfo and qemu-img hung until the
// daemon had started, or failed with "server disconnected unexpectedly". While it stopped (SIGTERM,
// the API's requests in flight being finished) it still served new clients, cut off moments later.
// Now such a client gets the NBD greeting and each option an NBD_REP_ERR_SHUTDOWN reply saying why
// (qemu prints it, "server reported: ..."; libnbd tools with LIBNBD_DEBUG=1): at once during a wait
// for peers and while stopping, after HELD_CLIENT_WAIT_MS while the storage opens (a quick open
// serves it). A client that tries again once the daemon is up gets in. Real daemon processes, real
// nbdinfo and qemu-img; the gated block store (test/support/h77-gated-store.ts) holds a storage open.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { join } from 'node:path'
import { runCli, startDaemonProcess, type RunningDaemon } from './support/daemon.js'
import { etcdSkipReason } from './support/etcd.js'
import { atGate, gatedDaemon, heldPeerForSuite, launchDaemon, stopGated, waitingForPeers, type GatedDaemon } from './support/gated-daemon.js'
import { freePort } from './support/net.js'
import { tempDirs } from './support/temp-dir.js'
import { until, within } from './support/wait.js'

const SECRET = 'h93-a-long-enough-cluster-secret'
const newDir = tempDirs('galleon-h93-')
const children = new Set<ChildProcess>()
after(() => { for (const child of children) child.kill('SIGKILL') })
const missing = ['nbdinfo', 'qemu-img'].filter((tool) => !['/bin', '/usr/bin', '/usr/local/bin'].some((dir) => existsSync(join(dir, tool))))
const skip = missing.length === 0 ? false : `${missing.join(' and ')} not installed (see .ci/run)`
/** How long a client may take before the test calls it hung (the fix answers within seconds). */
const HUNG_MS = 40_000

/** Runs a client tool; `hung` when it had not exited after HUNG_MS (it is killed then). */
async function client (tool: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number | null, stdout: string, stderr: string, hung: boolean }> {
  return await new Promise((resolve) => {
    let hung = false
    const child = execFile(tool, args, { env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      clearTimeout(timer)
      resolve({ code: err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : null, stdout, stderr, hung })
    })
    const timer = setTimeout(() => { hung = true; child.kill('SIGKILL') }, HUNG_MS)
  })
}

/** qemu-img info and nbdinfo on nbd://127.0.0.1:port/disk, each failing with `reason` (qemu prints it; libnbd in its debug output). */
async function refused (port: number, reason: RegExp): Promise<void> {
  const uri = `nbd://127.0.0.1:${port}/disk`
  const qemu = await client('qemu-img', ['info', uri])
  assert.equal(qemu.hung, false, 'qemu-img info hung')
  assert.notEqual(qemu.code, 0, qemu.stdout)
  assert.match(qemu.stderr, /Server shutting down before option 7 \(go\)/, qemu.stderr)
  assert.match(qemu.stderr, new RegExp(`server reported: ${reason.source}`), qemu.stderr)
  const info = await client('nbdinfo', [uri], { LIBNBD_DEBUG: '1' })
  assert.equal(info.hung, false, 'nbdinfo hung')
  assert.notEqual(info.code, 0, info.stdout)
  assert.match(info.stderr, /nbd_opt_go: server replied with error to opt_go request: Cannot send after transport endpoint shutdown/, info.stderr)
  assert.match(info.stderr, new RegExp(`handshake: server error message: ${reason.source}`), info.stderr)
}

/** The size nbdinfo reports of nbd://127.0.0.1:port/disk (it must get in). */
async function exportSize (port: number): Promise<number> {
  const info = await client('nbdinfo', ['--json', `nbd://127.0.0.1:${port}/disk`])
  assert.equal(info.code, 0, info.stderr)
  return (JSON.parse(info.stdout) as { exports: Array<{ 'export-size': number }> }).exports[0]?.['export-size'] ?? -1
}

describe('h93: NBD clients of a daemon that is starting or stopping', { skip, timeout: 300_000 }, () => {
  it('while its storage opens: after a short hold, qemu-img and nbdinfo fail with "opening its storage"; once up, a retry gets in', async () => {
    const dir = await newDir()
    const nbdPort = await freePort()
    const ipcPort = await freePort()
    const daemon: GatedDaemon = await gatedDaemon(dir, ['--ipc-address', `127.0.0.1:${ipcPort}`, '--nbd-address', `127.0.0.1:${nbdPort}`], { children })
    try {
      await atGate(daemon)
      // Before h93: no greeting until the storage opened, so both clients waited (here for ever).
      await refused(nbdPort, /the GalleonFS daemon is starting: it is opening its storage/)
      await writeFile(daemon.gate, 'open')
      await within('the daemon has started', daemon.starting)
      const made = await runCli(`127.0.0.1:${ipcPort}`, ['volume', 'create', '--name', 'disk', '--size', '1M', '--replicas', '1'], { cwd: dir })
      assert.equal(made.code, 0, made.stderr)
      assert.equal(await exportSize(nbdPort), 1024 * 1024)
    } finally {
      await stopGated(daemon)
    }
  })

  it('while it stops (the API finishing a request in flight): new NBD clients are told it is stopping, not served; it then exits 0', async () => {
    const dir = await newDir()
    const nbdPort = await freePort()
    const storage = join(dir, 'storage')
    let child: ChildProcess | undefined
    const running: RunningDaemon = await startDaemonProcess(['--storage-path', storage, '--ipc-address', '127.0.0.1:0', '--nbd-address', `127.0.0.1:${nbdPort}`], {
      cwd: dir,
      onSpawn: (spawned) => { child = spawned; children.add(spawned) }
    })
    const half = connect(Number(running.address.split(':')[1]), '127.0.0.1')
    half.on('error', () => {})
    const connected = new Promise<void>((resolve) => half.once('connect', () => resolve()))
    try {
      const made = await runCli(running.address, ['volume', 'create', '--name', 'disk', '--size', '1M', '--replicas', '1'], { cwd: dir })
      assert.equal(made.code, 0, made.stderr)
      assert.equal(await exportSize(nbdPort), 1024 * 1024)
      // A write whose body never comes whole: the stop waits for it (up to its 30 s grace).
      const token = (await readFile(join(storage, 'ipc.token'), 'utf8')).trim()
      const body = JSON.stringify({ offset: 0, data: Buffer.alloc(4096, 1).toString('base64') })
      await connected
      half.write(`POST /v1/volumes/disk/write HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 100)}`)
      // Answered after the write's headers on another connection: the write is under way by then.
      assert.equal((await runCli(running.address, ['daemon', 'status'], { cwd: dir })).code, 0)
      child?.kill('SIGTERM')
      await until('the daemon is stopping', () => running.logs.some((line) => line.includes('shutting down')))
      // Before h93: served (nbdinfo printed the export), to be cut off once the stop went on.
      await refused(nbdPort, /the GalleonFS daemon is stopping: it takes no new NBD sessions/)
      half.destroy()
      assert.equal(await within('the daemon exits', running.exited), 0, running.logs.join('\n'))
    } finally {
      half.destroy()
      if (child !== undefined && child.exitCode === null) child.kill('SIGKILL')
    }
  })

  describe('while it waits for its peers', { skip: etcdSkipReason() }, () => {
    let dir: string
    let peer: GatedDaemon
    let peerBind: string
    heldPeerForSuite(newDir, { children, env: { ...process.env, GALLEONFS_CLUSTER_SECRET: SECRET } }, (held) => { ({ dir, peer, bind: peerBind } = held) })

    it('qemu-img and nbdinfo fail at once with "waits for peers"; once the peer is up and the daemon has joined, a retry gets in', async () => {
      const nbdPort = await freePort()
      const ipcPort = await freePort()
      const daemon = launchDaemon(['--storage-path', join(dir, 'joiner'), '--bind-address', `127.0.0.1:${await freePort()}`, '--node-id', 'joiner', '--peer-addresses', peerBind, '--ipc-address', `127.0.0.1:${ipcPort}`, '--nbd-address', `127.0.0.1:${nbdPort}`], dir, { env: { ...process.env, GALLEONFS_CLUSTER_SECRET: SECRET }, children })
      try {
        await waitingForPeers(daemon)
        // Before h93: the clients waited with no answer for the whole wait (300 s by default).
        await refused(nbdPort, /the GalleonFS daemon is starting: it waits for peers that are still starting, for at most \d+ s more \(--peer-wait-seconds 300\)/)
        await writeFile(peer.gate, 'open')
        await within('the joining daemon is ready', daemon.ready, 120_000)
        const token = (await readFile(join(dir, 'joiner', 'ipc.token'), 'utf8')).trim()
        const made = await runCli(`127.0.0.1:${ipcPort}`, ['volume', 'create', '--name', 'disk', '--size', '1M', '--replicas', '1'], { cwd: dir, env: { GALLEONFS_TOKEN: token } })
        assert.equal(made.code, 0, made.stderr)
        assert.equal(await exportSize(nbdPort), 1024 * 1024)
      } finally {
        assert.equal(await daemon.stop(), 0, daemon.log())
      }
    })
  })
})
