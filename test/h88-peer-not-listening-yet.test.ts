// h88 (review r39): a daemon started with --peer-addresses (a first join, no etcd named, no cluster
// saved) whose peer refused the connection (its process not yet listening) exited at once, "cannot
// connect": two nodes started together (docker-compose, systemd units, a StatefulSet), the joiner a
// little faster than the first node, failed unless restarted. Now, on a first join, a peer that is
// not there yet (connection refused, reset, host unreachable, name not resolving) is asked again,
// 200 ms doubling to 2 s, within the same --peer-wait-seconds as a peer that is still starting; the
// daemon logs once that it waits for peers that are not listening yet, its API answers 503 STARTING
// saying so, and when the wait ends the error names each peer and why. --peer-wait-seconds 0 fails
// at once as before; SIGTERM during the wait exits 0 at once, nothing created.
// Real daemon processes and a real etcd.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { createServer, type Server } from 'node:net'
import { createServer as createHttpServer } from 'node:http'
import { TcpTransport } from '../backends/tcp/index.js'
import { notThereYet } from '../examples/daemon-cluster.js'
import { runCli } from './support/daemon.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from './support/etcd.js'
import { launchDaemon, type LaunchedDaemon, logEntries, present, tryListen } from './support/gated-daemon.js'
import { freePort } from './support/net.js'
import { tempDirs } from './support/temp-dir.js'
import { until, within } from './support/wait.js'

const SECRET = 'h88-a-long-enough-cluster-secret'
const NOT_LISTENING = 'waiting for peers that are not listening yet (--peer-wait-seconds)'
const STILL_STARTING = 'waiting for peers that are still starting (--peer-wait-seconds)'
const env = { ...process.env, GALLEONFS_CLUSTER_SECRET: SECRET }
const newDir = tempDirs('galleon-h88-')
const children = new Set<ChildProcess>()
const launch = (args: string[], cwd: string): LaunchedDaemon => launchDaemon(args, cwd, { env, children })
after(() => { for (const child of children) child.kill('SIGKILL') })


/** Resolves once `daemon` logged that it waits for peers that are not listening yet (fails if it exits first). */
async function waitingForAbsent (daemon: LaunchedDaemon): Promise<void> {
  await until(`the daemon logged "${NOT_LISTENING}"`, () => {
    if (daemon.child.exitCode !== null) throw new Error(`the daemon exited with ${daemon.child.exitCode}: ${daemon.log()}`)
    return daemon.log().includes(NOT_LISTENING)
  }, 60_000)
}

describe('h88: a first join through a peer that is not listening yet', { skip: etcdSkipReason(), timeout: 180_000 }, () => {
  let dir: string
  let etcd: EtcdServer | undefined
  before(async () => {
    dir = await newDir()
    etcd = await startEtcd()
  })
  after(async () => { await etcd?.stop() })
  /** A joining node's arguments: its storage in `dir`/name, a free bind address, its peers. */
  const joinArgs = async (name: string, peers: string): Promise<string[]> => ['--storage-path', join(dir, name), '--bind-address', `127.0.0.1:${await freePort()}`, '--node-id', name, '--peer-addresses', peers]

  it('the joiner, started before the first node, waits for it (saying so, its API answering STARTING) and joins once it listens: no restart', async () => {
    const firstBind = `127.0.0.1:${await freePort()}`
    const ipc = `127.0.0.1:${await freePort()}`
    const joiner = launch([...await joinArgs('joiner', firstBind), '--ipc-address', ipc], dir)
    let first: LaunchedDaemon | undefined
    try {
      // Before h88 the joiner exited here, 1: "cannot connect to <firstBind>: connect ECONNREFUSED".
      await waitingForAbsent(joiner)
      const waitLine = logEntries(joiner.log()).find((entry) => entry.message === NOT_LISTENING)
      assert.deepEqual(waitLine && { peers: waitLine.peers, waitSeconds: waitLine.waitSeconds }, { peers: [firstBind], waitSeconds: 300 }, joiner.log())
      // Its API says what it waits for.
      const status = await within('daemon status is answered', runCli(ipc, ['daemon', 'status'], { cwd: dir }), 30_000)
      assert.equal(status.code, 1, status.stderr)
      assert.match(status.stderr, /^galleonfs: STARTING: the daemon is starting: it waits for peers that are not listening yet, for at most \d+ s more \(--peer-wait-seconds 300\), to tell where its cluster's coordinator is/)
      assert.equal(await present(join(dir, 'joiner')), false, 'nothing is created while it waits')
      // The first node starts on the address the joiner names.
      first = launch(['--ipc-address', '127.0.0.1:0', '--storage-path', join(dir, 'first'), '--bind-address', firstBind, '--node-id', 'first', '--etcd-endpoints', (etcd as EtcdServer).endpoint], dir)
      await within('the first node is ready', first.ready, 90_000)
      const address = await within('the joiner is ready', joiner.ready, 90_000)
      assert.equal(joiner.child.exitCode, null, 'the joiner was never restarted: the same process')
      assert.equal(joiner.log().split(NOT_LISTENING).length, 2, 'the wait was logged once')
      assert.ok(logEntries(joiner.log()).some((entry) => entry.message === 'joined the cluster'), joiner.log())
      await until('the joiner sees both nodes as members', async () => {
        const members = await runCli(address, ['--json', 'cluster', 'status'], { cwd: dir })
        const ids = members.code === 0 ? (JSON.parse(members.stdout) as { members: Array<{ id: string }> }).members.map((m) => m.id) : []
        return ids.includes('first') && ids.includes('joiner')
      }, 60_000)
      assert.equal(await within('the joiner stops', joiner.stop(), 60_000), 0, joiner.log())
    } finally {
      await joiner.stop()
      if (first !== undefined) assert.equal(await within('the first node stops', first.stop(), 60_000), 0, first.log())
    }
  })

  it('nothing ever listens, --peer-wait-seconds 2: exit 1 after the wait, the error naming the peer as not listening and what to do; ports free, nothing created', async () => {
    const nowhere = `127.0.0.1:${await freePort()}`
    const ipcPort = await freePort()
    const daemon = launch([...await joinArgs('nowhere', nowhere), '--ipc-address', `127.0.0.1:${ipcPort}`, '--peer-wait-seconds', '2'], dir)
    const code = await within('the daemon exits', daemon.exited, 60_000)
    assert.equal(code, 1, daemon.log())
    const lines = logEntries(daemon.log())
    const waitAt = lines.findIndex((entry) => entry.message === NOT_LISTENING)
    const failureAt = lines.findIndex((entry) => entry.message.startsWith('the daemon could not start'))
    assert.ok(waitAt >= 0 && waitAt < failureAt, `it logged that it waits, then failed: ${daemon.log()}`)
    assert.equal(lines.filter((entry) => entry.message === NOT_LISTENING).length, 1, daemon.log())
    assert.ok(!daemon.log().includes(STILL_STARTING), daemon.log())
    const failure = lines[failureAt]
    assert.equal(failure?.code, 'BACKEND_UNAVAILABLE', daemon.log())
    assert.match(failure?.message ?? '', new RegExp(`^the daemon could not start: no peer told where the cluster's coordinator is after waiting [\\d.]+ s for peers that are not listening yet \\(${nowhere.replace(/\./g, '\\.')}: not listening \\(connection refused at ${nowhere.replace(/\./g, '\\.')}\\)\\): start that peer .*check its address in --peer-addresses .*--peer-wait-seconds \\(peer_wait in \\[cluster\\]; now 2 s; 0: no wait\\)$`), daemon.log())
    assert.equal(await tryListen(ipcPort), 'listening', 'the IPC port is free again')
    assert.equal(await present(join(dir, 'nowhere')), false, 'the storage path was not created')
  })

  it('--peer-wait-seconds 0: exit 1 at once with the connection error, as before h88, no wait logged', async () => {
    const nowhere = `127.0.0.1:${await freePort()}`
    const daemon = launch([...await joinArgs('nowait', nowhere), '--ipc-address', '127.0.0.1:0', '--peer-wait-seconds', '0'], dir)
    const code = await within('the daemon exits', daemon.exited, 60_000)
    assert.equal(code, 1, daemon.log())
    assert.ok(!daemon.log().includes(NOT_LISTENING), daemon.log())
    assert.ok(daemon.log().includes(`the daemon could not start: no peer told where the cluster's coordinator is (${nowhere}: cannot connect to ${nowhere}: connect ECONNREFUSED ${nowhere}; is the node running and listening there?)`), daemon.log())
    assert.equal(await present(join(dir, 'nowait')), false, 'the storage path was not created')
  })

  it('SIGTERM while it waits for a peer that is not listening yet: exit 0 at once, ports free, nothing created', async () => {
    const nowhere = `127.0.0.1:${await freePort()}`
    const ipcPort = await freePort()
    const daemon = launch([...await joinArgs('impatient', nowhere), '--ipc-address', `127.0.0.1:${ipcPort}`], dir)
    await waitingForAbsent(daemon)
    daemon.child.kill('SIGTERM')
    // --peer-wait-seconds is its default 300: an exit within the test's bound is the stop's doing.
    const code = await within('the daemon exits after SIGTERM', daemon.exited, 30_000)
    assert.equal(code, 0, daemon.log())
    assert.match(daemon.log(), /"message":"stopped before it started: the stop came while it waited for its peers \(--peer-addresses\) to tell where its cluster's coordinator is; nothing was opened","reason":"the wait for [\d.:]+ to tell where the cluster's coordinator is was cancelled; nothing was joined"/)
    assert.equal(await tryListen(ipcPort), 'listening', 'the IPC port is free again')
    assert.equal(await present(join(dir, 'impatient')), false, 'the storage path was not created')
  })
})

// r43: which failures to reach a peer are waited for, against real sockets (what the transport says
// for each): only those before a connection was made; a port that took it is a peer there.
describe('r43: notThereYet, against real sockets', () => {
  const probe = new TcpTransport({ nodeId: 'r43-probe', clusterSecret: SECRET })
  const servers: Server[] = []
  after(async () => {
    await probe.close()
    for (const server of servers) server.close()
  })
  /** Listens with `server` on a free loopback port; its address. */
  const serve = async (server: Server): Promise<string> => {
    servers.push(server)
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    return `127.0.0.1:${(server.address() as { port: number }).port}`
  }
  /** The failure of a cluster-info request to `address`, and what notThereYet makes of it. */
  const classify = async (address: string): Promise<{ message: string, absent: string | undefined }> => {
    const err = await probe.request(address, { kind: 'cluster-info', header: {} }, { timeoutMs: 20_000 }).then(() => assert.fail('answered'), (e: unknown) => e)
    return { message: (err as Error).message, absent: notThereYet(err, address) }
  }

  it('nothing listening, and a name that does not resolve: waited for', async () => {
    const nowhere = `127.0.0.1:${await freePort()}`
    assert.deepEqual(await classify(nowhere), { message: `cannot connect to ${nowhere}: connect ECONNREFUSED ${nowhere}; is the node running and listening there?`, absent: `not listening (connection refused at ${nowhere})` })
    const { message, absent } = await classify('nosuchhost.invalid:7000')
    assert.match(message, /^cannot connect to nosuchhost\.invalid:7000: getaddrinfo (ENOTFOUND|EAI_AGAIN) nosuchhost\.invalid; /)
    assert.equal(absent, 'not reachable (its name does not resolve, at nosuchhost.invalid:7000)')
  })

  it('a port that took the connection (an HTTP server, one that closes it at once): not waited for', async () => {
    const http = await serve(createHttpServer((_request, response) => { response.end('not a node') }))
    const { message: httpMessage, absent: httpAbsent } = await classify(http)
    assert.match(httpMessage, new RegExp(`^the handshake with ${http.replace(/\./g, '\\.')} failed: `))
    assert.equal(httpAbsent, undefined)
    const closer = await serve(createServer((socket) => { socket.destroy() }))
    assert.deepEqual(await classify(closer), { message: `the handshake with ${closer} failed: the peer closed the connection`, absent: undefined })
  })
})
