// h77: the daemon checked its addresses by listening briefly and closing (h73), then opened its
// storage, and only then listened for real: a process that took a port meanwhile still made the
// start fail late, with the storage path created. Now it listens on every address it serves (IPC,
// NBD, the cluster's bind address) before the storage opens and keeps the sockets; requests that
// come while it starts are answered once it has. Real daemon processes; a driver module
// (test/support/h77-gated-store.ts) holds the daemon inside GalleonFS.open() until the test opens
// its gate, so the window a port could be taken in is held open deterministically.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { readFile, rm, writeFile } from 'node:fs/promises'
import { request, type IncomingMessage } from 'node:http'
import { connect, createServer } from 'node:net'
import { join } from 'node:path'
import { runCli, runDaemonToExit } from './support/daemon.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from './support/etcd.js'
import { freePort } from './support/net.js'
import { tempDirs } from './support/temp-dir.js'
import { atGate, gatedDaemon, present, stopGated, tryListen } from './support/gated-daemon.js'

const SECRET = 'h77-a-long-enough-cluster-secret'
const newDir = tempDirs('galleon-h77-')
const children = new Set<ChildProcess>()
after(() => { for (const child of children) child.kill('SIGKILL') })

/** A GET of `path` on 127.0.0.1:port: `sent` resolves once the request is written (rejects if it cannot connect), `answer` with the response. */
function get (port: number, path: string, token: string): { sent: Promise<void>, answer: Promise<{ status: number, body: string }> } {
  const outgoing = request({ host: '127.0.0.1', port, path, headers: { authorization: `Bearer ${token}` } })
  const sent = new Promise<void>((resolve, reject) => {
    outgoing.once('finish', () => resolve())
    outgoing.once('error', reject)
  })
  const answer = new Promise<{ status: number, body: string }>((resolve, reject) => {
    outgoing.once('error', reject)
    outgoing.once('response', (response: IncomingMessage) => {
      let body = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => { body += chunk })
      response.once('end', () => resolve({ status: response.statusCode ?? 0, body }))
      response.once('error', reject)
    })
  })
  sent.catch(() => {})
  answer.catch(() => {})
  outgoing.end()
  return { sent, answer }
}

/** The first 8 bytes an NBD server at 127.0.0.1:port sends (its greeting starts with NBDMAGIC). */
async function nbdGreeting (port: number): Promise<string> {
  return await new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    let received = Buffer.alloc(0)
    socket.once('error', reject)
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk])
      if (received.length >= 8) { socket.destroy(); resolve(received.subarray(0, 8).toString('latin1')) }
    })
    socket.once('close', () => { if (received.length < 8) reject(new Error(`the NBD server closed the connection after ${received.length} bytes`)) })
  })
}

describe('h77: the daemon listens on its addresses before it opens its storage', { timeout: 180_000 }, () => {
  it('a busy cluster bind address: exit 1 naming --bind-address, nothing created, etcd not even asked', async () => {
    const dir = await newDir()
    const held = createServer()
    await new Promise<void>((resolve) => held.listen(0, '127.0.0.1', resolve))
    try {
      const port = (held.address() as { port: number }).port
      const storage = join(dir, 'cluster', 'storage')
      // Nothing listens on the etcd endpoint: the start stops at the bind address, before it would connect.
      const { code, log } = await runDaemonToExit(['--storage-path', storage, '--bind-address', `127.0.0.1:${port}`, '--etcd-endpoints', `http://127.0.0.1:${await freePort()}`], { cwd: dir, env: { ...process.env, GALLEONFS_CLUSTER_SECRET: SECRET } })
      assert.equal(code, 1, log)
      assert.match(log, new RegExp(`the bind address \\(the cluster's\\) 127\\.0\\.0\\.1:${port} is in use by another process \\(another galleonfs daemon\\?\\); stop that one, or give this daemon another --bind-address \\(bind_address in \\[daemon\\]\\)`))
      assert.equal(await present(join(dir, 'cluster')), false, 'nothing was created')
    } finally {
      await new Promise<void>((resolve) => held.close(() => resolve()))
    }
  })

  it('while its storage opens, its IPC and NBD ports are its own (another process cannot take them); then the NBD server serves on its port, also a client that connected meanwhile', async () => {
    const dir = await newDir()
    const ipcPort = await freePort()
    const nbdPort = await freePort()
    const daemon = await gatedDaemon(dir, ['--ipc-address', `127.0.0.1:${ipcPort}`, '--nbd-address', `127.0.0.1:${nbdPort}`], { children })
    try {
      await atGate(daemon)
      assert.equal(await present(daemon.storage), true, 'the daemon is inside GalleonFS.open(): its storage path is made')
      // Before h77 both were free here (the check had closed its probes): a process taking one now
      // made the start fail once the storage was open.
      assert.equal(await tryListen(ipcPort), 'EADDRINUSE', 'the IPC port is held while the storage opens')
      assert.equal(await tryListen(nbdPort), 'EADDRINUSE', 'the NBD port is held while the storage opens')
      // An NBD client connected now gets its greeting once the NBD server has started.
      const early = nbdGreeting(nbdPort)
      early.catch(() => {})
      await writeFile(daemon.gate, 'open')
      const running = await daemon.starting
      assert.equal(running.address, `127.0.0.1:${ipcPort}`)
      assert.ok(running.logs.some((line) => line.includes('"serving NBD exports"') && line.includes(`127.0.0.1:${nbdPort}`)), running.logs.join('\n'))
      assert.equal(await nbdGreeting(nbdPort), 'NBDMAGIC', 'the NBD server took the held port')
      assert.equal(await early, 'NBDMAGIC', 'the client that connected while the daemon started is served')
    } finally {
      await stopGated(daemon)
    }
  })

  it('a client that connects while the daemon starts is answered once it has started', async () => {
    const dir = await newDir()
    const first = await gatedDaemon(dir, ['--ipc-address', '127.0.0.1:0'], { children })
    await writeFile(first.gate, 'open')
    try {
      const running = await first.starting
      const made = await runCli(running.address, ['volume', 'create', '--name', 'kept', '--size', '1M', '--replicas', '1'], { cwd: dir })
      assert.equal(made.code, 0, made.stderr)
    } finally {
      await stopGated(first)
    }
    // Started again (as after a restart), its storage held at the gate: a client that knows its
    // address and token asks for the volumes meanwhile.
    const token = (await readFile(join(first.storage, 'ipc.token'), 'utf8')).trim()
    await rm(first.gate)
    await rm(`${first.gate}.waiting`)
    const ipcPort = await freePort()
    const again = await gatedDaemon(dir, ['--ipc-address', `127.0.0.1:${ipcPort}`], { children })
    try {
      await atGate(again)
      const asked = get(ipcPort, '/v1/volumes', token)
      await asked.sent // before h77: ECONNREFUSED (nothing listened until the storage was open)
      let answered = false
      void asked.answer.then(() => { answered = true }, () => {})
      assert.equal(answered, false, 'no answer before the storage is open')
      await writeFile(again.gate, 'open')
      const { status, body } = await asked.answer
      assert.equal(status, 200, body)
      assert.deepEqual((JSON.parse(body) as Array<{ name: string }>).map((volume) => volume.name), ['kept'])
      await again.starting
    } finally {
      await stopGated(again)
    }
  })

  it('a start that fails after it listened (its storage does not open) ends the waiting connections, frees its ports and exits 1', async () => {
    const dir = await newDir()
    const ipcPort = await freePort()
    const nbdPort = await freePort()
    const daemon = await gatedDaemon(dir, ['--ipc-address', `127.0.0.1:${ipcPort}`, '--nbd-address', `127.0.0.1:${nbdPort}`], { children })
    try {
      await atGate(daemon)
      const asked = get(ipcPort, '/v1/volumes', 'any-token')
      await asked.sent
      await writeFile(daemon.gate, 'fail')
      // The process ends (nothing it listened on keeps it alive), with the code of a failed start.
      assert.equal(await daemon.exited, 1)
      await assert.rejects(daemon.starting, /the daemon could not start: could not create the block store 'h77-gated': the test's gate told the block store to fail/)
      await assert.rejects(asked.answer, (err: NodeJS.ErrnoException) => err.code === 'ECONNRESET' || /socket hang up/.test(err.message))
      assert.equal(await tryListen(ipcPort), 'listening', 'the IPC port is free again')
      assert.equal(await tryListen(nbdPort), 'listening', 'the NBD port is free again')
    } finally {
      await stopGated(daemon)
    }
  })

  it('clustered: its bind address is held too while the storage opens, and it joins its cluster on it', { skip: etcdSkipReason() }, async () => {
    const dir = await newDir()
    const etcd: EtcdServer = await startEtcd()
    const bindPort = await freePort()
    const daemon = await gatedDaemon(dir, ['--ipc-address', '127.0.0.1:0', '--bind-address', `127.0.0.1:${bindPort}`, '--node-id', 'h77-node', '--etcd-endpoints', etcd.endpoint], { children, env: { ...process.env, GALLEONFS_CLUSTER_SECRET: SECRET } })
    try {
      await atGate(daemon)
      assert.equal(await tryListen(bindPort), 'EADDRINUSE', 'the bind address is held while the storage opens')
      await writeFile(daemon.gate, 'open')
      const running = await daemon.starting
      const token = (await readFile(join(daemon.storage, 'ipc.token'), 'utf8')).trim()
      const port = Number(running.address.split(':').at(-1))
      const { status, body } = await get(port, '/v1/cluster', token).answer
      assert.equal(status, 200, body)
      const members = (JSON.parse(body) as { members: Array<{ id: string, address: string, healthy: boolean }> }).members
      assert.deepEqual(members.map(({ id, address, healthy }) => ({ id, address, healthy })), [{ id: 'h77-node', address: `127.0.0.1:${bindPort}`, healthy: true }])
    } finally {
      await stopGated(daemon)
      await etcd.stop()
    }
  })
})
