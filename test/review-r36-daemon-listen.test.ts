// Review r36 of h77 (the daemon listens on its ports before it opens its storage, and holds them):
// what the held ports do with the clients that come while the storage opens, and how a start that
// fails after listening ends. Real daemon processes, held inside GalleonFS.open() by the gated block
// store of test/support/h77-gated-store.ts; and NbdServer.listen({ server }) on its own.
// Fixed here: a failed HTTPS start waited for clients in their TLS handshake to time out; the held
// NBD port kept any number of connections (the NBD server's caps did not apply); a server with its
// own connection listener was taken by NbdServer.listen({ server }); a listen error other than a
// busy port (an address not of this machine) did not name the setting.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises'
import { createServer as createHttpServer } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { connect, createServer, type Server, type Socket } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { GalleonFS } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { runDaemonToExit } from './support/daemon.js'
import { freePort } from './support/net.js'
import { tempDirs } from './support/temp-dir.js'
import { within } from './support/wait.js'
import { atGate, gatedDaemon, present, tryListen, type GatedDaemon } from './support/gated-daemon.js'
import { makeCertificates } from './support/tls-certificates.js'

const exec = promisify(execFile)
const missing = (tool: string): string | undefined => ['/bin', '/usr/bin', '/usr/local/bin'].some((dir) => existsSync(join(dir, tool))) ? undefined : `${tool} is not installed (see .ci/run)`
const LONG_TLS_HANDSHAKE = join(import.meta.dirname, 'support', 'r36-long-tls-handshake.ts')
const SECRET = 'r36-a-long-enough-cluster-secret'
const newDir = tempDirs('galleon-r36-')
const children = new Set<ChildProcess>()
after(() => { for (const child of children) child.kill('SIGKILL') })

/** Starts a gated daemon and resolves once it waits at its gate (inside GalleonFS.open()). */
async function heldDaemon (dir: string, args: string[], modules: string[] = []): Promise<GatedDaemon> {
  const daemon = await gatedDaemon(dir, args, { children, modules })
  await atGate(daemon)
  return daemon
}

/** Ends a daemon left running by a failed assertion. */
function kill (daemon: GatedDaemon): void {
  if (daemon.child.exitCode === null && daemon.child.signalCode === null) daemon.child.kill('SIGKILL')
}

/** A connected TCP client of 127.0.0.1:port that records when it is closed and what it got. */
async function rawClient (port: number): Promise<{ socket: Socket, closed: Promise<void>, received: () => Buffer }> {
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => {})
  let received = Buffer.alloc(0)
  socket.on('data', (chunk: Buffer) => { received = Buffer.concat([received, chunk]) })
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()))
  await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('close', () => reject(new Error('closed before it connected'))) })
  return { socket, closed, received: () => received }
}

describe('review r36: the ports a daemon holds while its storage opens', { timeout: 300_000 }, () => {
  it('HTTPS: a request sent while the storage opens is answered once the daemon has started; a client still in its TLS handshake when a start fails does not keep the daemon alive', { skip: missing('openssl') }, async () => {
    const dir = await newDir()
    const certs = join(dir, 'certs')
    await mkdir(certs)
    await makeCertificates(certs)
    await chmod(join(certs, 'server-key.pem'), 0o600)
    const tls = ['--ipc-tls-cert-file', join(certs, 'server-cert.pem'), '--ipc-tls-key-file', join(certs, 'server-key.pem')]
    const ca = await readFile(join(certs, 'ca-cert.pem'), 'utf8')
    await mkdir(join(dir, 'a'))
    await mkdir(join(dir, 'b'))

    // Started: the request sent meanwhile (over TLS, without the token, which is made once the storage is open) gets its answer.
    const port = await freePort()
    const first = await heldDaemon(join(dir, 'a'), ['--ipc-address', `127.0.0.1:${port}`, ...tls])
    try {
      const answer = new Promise<{ status: number, daemon: unknown }>((resolve, reject) => {
        const sent = httpsRequest({ host: '127.0.0.1', port, path: '/v1/volumes', ca, headers: { authorization: 'Bearer not-the-token' } }, (response) => {
          response.resume()
          resolve({ status: response.statusCode ?? 0, daemon: response.headers['x-galleonfs'] })
        })
        sent.once('error', reject)
        sent.end()
      })
      await writeFile(first.gate, 'open')
      await within('the first daemon has started', first.starting)
      assert.deepEqual(await within('the request sent while it started is answered', answer), { status: 401, daemon: '1' })
      first.child.kill('SIGTERM')
      assert.equal(await within('the first daemon has stopped', first.exited), 0)
    } finally {
      kill(first)
    }

    // Fails: a TCP client that has not begun its TLS handshake is closed by the failed start itself
    // (the handshake limit is stretched to 10 min here: before the fix the daemon waited for it).
    const second = await heldDaemon(join(dir, 'b'), ['--ipc-address', `127.0.0.1:${port}`, ...tls], [LONG_TLS_HANDSHAKE])
    try {
      const idle = await rawClient(port)
      await writeFile(second.gate, 'fail')
      assert.equal(await within('the second daemon exits after its failed start', second.exited), 1)
      await within('the idle client is closed', idle.closed)
      assert.equal(await tryListen(port), 'listening', 'the IPC port is free again')
    } finally {
      kill(second)
    }
  })

  it('NBD: the held port keeps no more connections than the NBD server would have in their handshake (32 from one address): the others are closed on arrival; those kept are served once it has started', async () => {
    const dir = await newDir()
    const nbdPort = await freePort()
    const daemon = await heldDaemon(dir, ['--ipc-address', '127.0.0.1:0', '--nbd-address', `127.0.0.1:${nbdPort}`])
    const clients: Array<Awaited<ReturnType<typeof rawClient>>> = []
    try {
      for (let i = 0; i < 40; i++) clients.push(await rawClient(nbdPort))
      // Before the fix every one was kept until the storage had opened (any number of them, each a
      // file descriptor of the daemon): here the test would wait for ever.
      let closed = 0
      await new Promise<void>((resolve) => { for (const client of clients) void client.closed.then(() => { if (++closed === 8) resolve() }) })
      const kept = clients.filter((client) => !client.socket.destroyed && client.socket.readable)
      assert.equal(closed, 8)
      await writeFile(daemon.gate, 'open')
      await daemon.starting
      // Each kept client gets the NBD greeting (NBDMAGIC IHAVEOPT).
      await Promise.all(kept.map(async (client) => {
        while (client.received().length < 16) {
          assert.equal(client.socket.destroyed, false, 'a kept client was closed')
          await sleep(20)
        }
      }))
      assert.equal(kept.length, 32)
      for (const client of kept) assert.equal(client.received().subarray(0, 16).toString('latin1'), 'NBDMAGICIHAVEOPT')
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    } finally {
      for (const client of clients) client.socket.destroy()
      kill(daemon)
    }
  })

  it('SIGTERM while the storage opens: the daemon stops cleanly once it has started, and frees its ports', async () => {
    const dir = await newDir()
    const ipcPort = await freePort()
    const nbdPort = await freePort()
    const daemon = await heldDaemon(dir, ['--ipc-address', `127.0.0.1:${ipcPort}`, '--nbd-address', `127.0.0.1:${nbdPort}`])
    try {
      daemon.child.kill('SIGTERM')
      await writeFile(daemon.gate, 'open')
      assert.equal(await daemon.exited, 0)
      assert.equal(await tryListen(ipcPort), 'listening')
      assert.equal(await tryListen(nbdPort), 'listening')
    } finally {
      kill(daemon)
    }
  })

  it('an address that is not of this machine stops the start with exit 1, naming the setting and the fix; nothing is created', async () => {
    const dir = await newDir()
    // 192.0.2.1 is TEST-NET-1 (RFC 5737): no machine has it.
    const cases: Array<[string[], string]> = [
      [['--ipc-address', '192.0.2.1:8090'], 'IPC address 192\\.0\\.2\\.1:8090.*--ipc-address \\(ipc_address in \\[daemon\\]\\)'],
      [['--nbd-address', '192.0.2.1:10809'], 'NBD address 192\\.0\\.2\\.1:10809.*--nbd-address \\(nbd_address in \\[daemon\\]\\)'],
      [['--bind-address', '192.0.2.1:8080', '--etcd-endpoints', `http://127.0.0.1:${await freePort()}`], 'bind address \\(the cluster\'s\\) 192\\.0\\.2\\.1:8080.*--bind-address \\(bind_address in \\[daemon\\]\\)']
    ]
    for (const [args, names] of cases) {
      const storage = join(dir, 'storage')
      const { code, log } = await runDaemonToExit(['--storage-path', storage, ...args], { cwd: dir, env: { ...process.env, GALLEONFS_CLUSTER_SECRET: SECRET } })
      assert.equal(code, 1, log)
      assert.match(log, new RegExp(`the daemon cannot listen on its ${names.split('.*')[0] as string}: no network interface of this machine has the address 192\\.0\\.2\\.1 \\(EADDRNOTAVAIL\\); give ${names.split('.*')[1] as string} an address of this machine`))
      assert.equal(await present(storage), false, 'nothing was created')
    }
  })
})

describe('review r36: NbdServer.listen({ server })', { timeout: 120_000 }, () => {
  it('refuses a server that is not a net.Server, not listening, or has a connection listener of its own (an HTTP server); serves TLS exports on one it takes, and closes it', async () => {
    const dir = await newDir()
    const g = await GalleonFS.open({ storagePath: join(dir, 'storage') })
    const http = createHttpServer()
    const plain = createServer({ allowHalfOpen: true, noDelay: true })
    try {
      await g.createVolume({ name: 'disk', sizeBytes: '1M' })
      const refused = async (server: unknown, message: RegExp): Promise<void> => {
        await assert.rejects(NbdServer.listen(g, { server: server as Server }), (err: Error & { code?: string }) => {
          assert.equal(err.code, 'INVALID_ARGUMENT')
          assert.match(err.message, message)
          return true
        })
      }
      await refused({ listening: true }, /^server must be a listening net\.Server \(create it with net\.createServer\(\{ allowHalfOpen: true, noDelay: true \}\) and no connection listener, and wait for its listen\(\) to call back\), or left out to have the NBD server listen on host:port; got /)
      await refused(createServer(), /^server is not listening: create it with net\.createServer/)
      await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve))
      // Taken, both it and the NBD server answered each client: an NBD client failed its handshake.
      await refused(http, /^server has a 'connection' listener already \(an HTTP or TLS server, or one made with a connection handler\), which would take the NBD clients' connections too/)

      await new Promise<void>((resolve) => plain.listen(0, '127.0.0.1', resolve))
      const psk = randomBytes(32).toString('hex')
      const nbd = await NbdServer.listen(g, { server: plain, tls: { psk: { alice: psk } } })
      try {
        assert.equal(nbd.port, (plain.address() as { port: number }).port)
        if (missing('nbdinfo') === undefined) {
          const keys = join(dir, 'keys.psk')
          await writeFile(keys, `alice:${psk}\n`, { mode: 0o600 })
          const info = JSON.parse((await exec('nbdinfo', ['--json', `nbds://alice@127.0.0.1:${nbd.port}/disk?tls-psk-file=${keys}`])).stdout) as { TLS: boolean, exports: Array<{ 'export-size': number }> }
          assert.equal(info.TLS, true)
          assert.equal(info.exports[0]?.['export-size'], 1 << 20)
        }
      } finally {
        await nbd.close()
      }
      assert.equal(plain.listening, false, 'close() closed the server it was given')
    } finally {
      http.close()
      if (plain.listening) plain.close()
      await g.close()
    }
  })
})
