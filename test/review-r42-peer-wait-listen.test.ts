// Review r42 of h86 (a node joining through --peer-addresses listens on its IPC and NBD addresses
// before it asks its peers; meanwhile its API answers 503 STARTING). Real daemon processes and
// etcd; the starting peer is held inside GalleonFS.open() by the gated block store
// (test/support/h77-gated-store.ts, heldClusterPeer).
// Found and fixed: a --bind-address on the daemon's own IPC or NBD port was refused only when the
// daemon came to listen on it, after the wait for its peers (with a peer that stayed starting: after
// --peer-wait-seconds, 300 s by default, as "the peer is still starting", the clash never named).
// Now, IPC and NBD being bound before the peers are asked, it is refused then (exit 2, naming both).
// Checked, not changed: a wait that ends (or a SIGTERM during it) with clients connected to the IPC
// and NBD ports exits (1, or 0) and frees both ports, nothing created; a peer that is not there fails
// at once with --peer-wait-seconds 0 (h88 waits for it otherwise, see h88-peer-not-listening-yet); a node that was in the cluster still falls back to the cluster it knew when every peer is
// down; other commands than `daemon status --wait` fail at once on STARTING; HTTPS serves STARTING.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { Agent, request as httpRequest } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { connect, type Socket } from 'node:net'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { runCli } from './support/daemon.js'
import { etcdSkipReason, type EtcdServer } from './support/etcd.js'
import { heldPeerForSuite, present, tryListen, launchDaemon, type LaunchedDaemon, waitingForPeers } from './support/gated-daemon.js'
import { freePort } from './support/net.js'
import { tempDirs } from './support/temp-dir.js'
import { makeCertificates } from './support/tls-certificates.js'
import { until, within } from './support/wait.js'

const SECRET = 'r42-a-long-enough-cluster-secret'
const WAITING = 'waiting for peers that are still starting (--peer-wait-seconds)'
const env = { ...process.env, GALLEONFS_CLUSTER_SECRET: SECRET }
const newDir = tempDirs('galleon-r42-')
const children = new Set<ChildProcess>()
type Launched = LaunchedDaemon
const launch = (args: string[], cwd: string): Launched => launchDaemon(args, cwd, { env, children })
const waiting = waitingForPeers
after(() => { for (const child of children) child.kill('SIGKILL') })



/** A raw TCP connection to 127.0.0.1:port, kept open; resolves once connected. */
async function hold (port: number, sockets: Set<Socket>, send?: string): Promise<Socket> {
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => {})
  sockets.add(socket)
  await new Promise<void>((resolve, reject) => { socket.once('connect', () => resolve()); socket.once('error', reject) })
  if (send !== undefined) socket.write(send)
  return socket
}

/** GET /v1/status over a kept-alive agent (its socket stays open after the answer). */
async function keptAlive (agent: Agent, port: number): Promise<number> {
  return await new Promise((resolve, reject) => {
    const sent = httpRequest({ host: '127.0.0.1', port, path: '/v1/status', agent }, (response) => { response.resume(); response.on('end', () => resolve(response.statusCode ?? 0)) })
    sent.on('error', reject)
    sent.end()
  })
}

describe('review r42: a daemon waiting for its peers, listening on IPC and NBD', { skip: etcdSkipReason(), timeout: 280_000 }, () => {
  let dir: string
  let etcd: EtcdServer
  let peerBind: string
  const joinArgs = async (name: string): Promise<string[]> => ['--storage-path', join(dir, name), '--bind-address', `127.0.0.1:${await freePort()}`, '--node-id', name]

  heldPeerForSuite(newDir, { children, env }, (held) => { ({ dir, etcd, bind: peerBind } = held) })

  for (const end of ['the wait ends', 'SIGTERM'] as const) {
    it(`${end} with clients connected meanwhile (kept-alive HTTP, a half-sent request, NBD): the daemon exits, frees its ports, creates nothing`, async () => {
      const ipcPort = await freePort()
      const nbdPort = await freePort()
      const name = end === 'SIGTERM' ? 'sigterm' : 'timeout'
      const daemon = launch([...await joinArgs(name), '--peer-addresses', peerBind, '--ipc-address', `127.0.0.1:${ipcPort}`, '--nbd-address', `127.0.0.1:${nbdPort}`, '--peer-wait-seconds', end === 'SIGTERM' ? '120' : '4'], dir)
      const sockets = new Set<Socket>()
      const agent = new Agent({ keepAlive: true, maxSockets: 1 })
      try {
        await waiting(daemon)
        assert.equal(await keptAlive(agent, ipcPort), 503)
        await hold(ipcPort, sockets, 'GET /v1/status HTTP/1.1\r\nHost: x\r\n')
        await hold(nbdPort, sockets)
        if (end === 'SIGTERM') daemon.child.kill('SIGTERM')
        // None of those connections keeps the process up.
        const code = await within('the daemon exits', daemon.exited, 60_000)
        if (end === 'SIGTERM') {
          assert.equal(code, 0, daemon.log())
          assert.match(daemon.log(), /stopped before it started/)
        } else {
          assert.equal(code, 1, daemon.log())
          assert.match(daemon.log(), /the daemon could not start: the peer [\d.:]+ is still starting after/)
        }
        assert.equal(await tryListen(ipcPort), 'listening', 'the IPC port is free again')
        assert.equal(await tryListen(nbdPort), 'listening', 'the NBD port is free again')
        assert.equal(await present(join(dir, name)), false, 'the storage path was not created')
      } finally {
        agent.destroy()
        for (const socket of sockets) socket.destroy()
        await daemon.stop()
      }
    })
  }

  it('nothing listening at the peer address, --peer-wait-seconds 0: fails at once (exit 1), ports free, nothing created', async () => {
    const ipcPort = await freePort()
    const daemon = launch([...await joinArgs('nopeer'), '--peer-addresses', `127.0.0.1:${await freePort()}`, '--ipc-address', `127.0.0.1:${ipcPort}`, '--peer-wait-seconds', '0'], dir)
    const code = await within('the daemon exits', daemon.exited, 60_000)
    assert.equal(code, 1, daemon.log())
    assert.match(daemon.log(), /the daemon could not start: no peer told where the cluster's coordinator is/)
    assert.equal(await tryListen(ipcPort), 'listening')
    assert.equal(await present(join(dir, 'nopeer')), false)
  })

  it('a node that was in the cluster, restarting with every peer down, still joins the cluster it knew', async () => {
    const args = await joinArgs('returning')
    const first = launch([...args, '--ipc-address', '127.0.0.1:0', '--etcd-endpoints', etcd.endpoint], dir)
    await until('the first start is ready', () => {
      if (first.child.exitCode !== null) throw new Error(first.log())
      return first.log().includes('"message":"ready"')
    }, 60_000)
    assert.equal(await first.stop(), 0, first.log())
    const ipcPort = await freePort()
    const nbdPort = await freePort()
    const again = launch([...args, '--ipc-address', `127.0.0.1:${ipcPort}`, '--nbd-address', `127.0.0.1:${nbdPort}`, '--peer-addresses', `127.0.0.1:${await freePort()}`], dir)
    try {
      await until('the second start is ready', () => {
        if (again.child.exitCode !== null) throw new Error(again.log())
        return again.log().includes('"message":"ready"')
      }, 60_000)
      assert.match(again.log(), /no peer answered; joining the cluster this node was in before/)
      assert.match(again.log(), /"message":"joined the cluster"/)
      const status = await runCli(`127.0.0.1:${ipcPort}`, ['daemon', 'status'], { cwd: dir, env: { GALLEONFS_TOKEN: (await readFile(join(dir, 'returning', 'ipc.token'), 'utf8')).trim() } })
      assert.equal(status.code, 0, status.stderr)
    } finally {
      assert.equal(await again.stop(), 0, again.log())
    }
  })

  it('other commands than `daemon status --wait` answered STARTING fail at once (exit 1) with the daemon\'s message', async () => {
    const ipcPort = await freePort()
    const daemon = launch([...await joinArgs('others'), '--peer-addresses', peerBind, '--ipc-address', `127.0.0.1:${ipcPort}`], dir)
    try {
      await waiting(daemon)
      for (const args of [['volume', 'list'], ['daemon', 'stop']]) {
        const r = await runCli(`127.0.0.1:${ipcPort}`, args, { cwd: dir })
        assert.equal(r.code, 1, args.join(' '))
        assert.match(r.stderr, /^galleonfs: STARTING: the daemon is starting: it waits for peers that are still starting, for at most \d+ s more \(--peer-wait-seconds 300\)/)
        assert.equal(r.stdout, '')
      }
    } finally {
      assert.equal(await daemon.stop(), 0, daemon.log())
    }
  })

  // Found by r42: a --bind-address on the daemon's own IPC (or NBD) port was refused only when the
  // daemon listened on it, after the wait for its peers: with a peer that stayed starting, the start
  // failed after the whole wait (300 s by default), saying the peer was still starting and never
  // naming the clash. Now it is refused before the peers are asked, as a configuration error (exit 2).
  for (const [which, flag, host] of [['IPC', '--ipc-address', '127.0.0.1'], ['NBD', '--nbd-address', '0.0.0.0']] as const) {
    it(`a --bind-address on the daemon's own ${which} port (${host}) fails at once with exit code 2 naming both, without asking the peers`, async () => {
      const port = await freePort()
      const name = `clash-${which.toLowerCase()}`
      const bind = `127.0.0.1:${port}`
      // --peer-wait-seconds 4: before r42 the daemon waited those 4 s for the held peer, then failed
      // (exit 1) saying the peer is still starting.
      const daemon = launch(['--storage-path', join(dir, name), '--bind-address', bind, '--node-id', name, '--peer-addresses', peerBind, '--peer-wait-seconds', '4', ...(which === 'IPC' ? [flag, `${host}:${port}`] : ['--ipc-address', '127.0.0.1:0', flag, `${host}:${port}`])], dir)
      const code = await within('the daemon exits', daemon.exited, 60_000)
      assert.equal(code, 2, daemon.log())
      const setting = which === 'IPC' ? '--ipc-address (ipc_address in [daemon])' : '--nbd-address (nbd_address in [daemon])'
      const messages = daemon.log().split('\n').filter((line) => line.startsWith('{')).map((line) => (JSON.parse(line) as { level: string, message: string }))
      assert.deepEqual(messages.filter((entry) => entry.level === 'error').map((entry) => entry.message), [
        `the bind address (the cluster's) ${bind} is on the port of the ${which} address ${host}:${port} of this daemon, which listens on both; give --bind-address (bind_address in [daemon]) or ${setting} another port`
      ], daemon.log())
      assert.ok(!daemon.log().includes(WAITING), daemon.log())
      assert.ok(!daemon.log().includes('still starting'), daemon.log())
      assert.equal(await tryListen(port), 'listening', 'the port is free again')
      assert.equal(await present(join(dir, name)), false, 'the storage path was not created')
    })
  }

  it('HTTPS IPC during the wait: 503 STARTING over TLS; `daemon status --wait` over https waits', async () => {
    const certs = await makeCertificates(await newDir())
    const ipcPort = await freePort()
    const tlsDir = await newDir()
    for (const name of ['server-cert', 'server-key', 'ca-cert']) await writeFile(join(tlsDir, `${name}.pem`), certs.pem[name] as string, { mode: 0o600 })
    const daemon = launch([...await joinArgs('https'), '--peer-addresses', peerBind, '--ipc-address', `127.0.0.1:${ipcPort}`, '--ipc-tls-cert-file', join(tlsDir, 'server-cert.pem'), '--ipc-tls-key-file', join(tlsDir, 'server-key.pem')], dir)
    try {
      await waiting(daemon)
      const answer = await new Promise<{ status: number, body: string }>((resolve, reject) => {
        const sent = httpsRequest({ host: '127.0.0.1', port: ipcPort, path: '/v1/status', agent: false, ca: certs.pem['ca-cert'] }, (response) => {
          let body = ''
          response.setEncoding('utf8')
          response.on('data', (c: string) => { body += c })
          response.on('end', () => resolve({ status: response.statusCode ?? 0, body }))
        })
        sent.on('error', reject)
        sent.end()
      })
      assert.equal(answer.status, 503, answer.body)
      assert.match(answer.body, /"code":"STARTING"/)
      const status = await runCli(`https://127.0.0.1:${ipcPort}`, ['daemon', 'status', '--wait', '2'], { cwd: dir, env: { GALLEONFS_DAEMON_CA_FILE: join(tlsDir, 'ca-cert.pem') } })
      assert.equal(status.code, 1, status.stderr)
      assert.match(status.stderr, /^galleonfs: STARTING: /)
    } finally {
      assert.equal(await daemon.stop(), 0, daemon.log())
    }
  })
})
