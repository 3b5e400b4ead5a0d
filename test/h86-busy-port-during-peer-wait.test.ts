// h86 (review r39): a daemon started with --peer-addresses (first join, no etcd) asked its peers
// where the cluster's coordinator is, waiting up to --peer-wait-seconds (300 s by default) for a
// peer that answered it was starting, and only then listened on its IPC and NBD addresses: a busy
// --ipc-address or --nbd-address (another daemon running) was reported only after that whole wait.
// Now it listens on those two first (the cluster's bind address still after the peers answered, so
// two nodes that name each other never wait for each other), and while it waits its API answers
// every request at once, 503 STARTING, saying it waits for peers; `daemon status --wait` waits that
// out. Real daemon processes and etcd; the starting peer is held inside GalleonFS.open() by the
// gated block store of test/support/h77-gated-store.ts (heldClusterPeer).

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { request as httpRequest } from 'node:http'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { runCli } from './support/daemon.js'
import { etcdSkipReason } from './support/etcd.js'
import { type GatedDaemon, heldPeerForSuite, launchDaemon, type LaunchedDaemon, logEntries, portHolder, present } from './support/gated-daemon.js'
import { freePort } from './support/net.js'
import { tempDirs } from './support/temp-dir.js'
import { until, within } from './support/wait.js'

const SECRET = 'h86-a-long-enough-cluster-secret'
const WAITING = 'waiting for peers that are still starting (--peer-wait-seconds)'
const env = { ...process.env, GALLEONFS_CLUSTER_SECRET: SECRET }
const newDir = tempDirs('galleon-h86-')
const children = new Set<ChildProcess>()
type Launched = LaunchedDaemon
const launch = (args: string[], cwd: string): Launched => launchDaemon(args, cwd, { env, children })
after(() => { for (const child of children) child.kill('SIGKILL') })




/** A request without a token: its status, the daemon's header and the JSON body. */
async function ask (address: string, method: string, path: string, body?: unknown): Promise<{ status: number, daemon: boolean, retryAfter: string | undefined, body: { error?: { code: string, message: string } } }> {
  const [host, port] = address.split(':') as [string, string]
  const payload = body === undefined ? undefined : JSON.stringify(body)
  return await new Promise((resolve, reject) => {
    const sent = httpRequest({ host, port: Number(port), method, path, agent: false, headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } }, (response) => {
      let text = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => { text += chunk })
      response.on('end', () => { resolve({ status: response.statusCode ?? 0, daemon: response.headers['x-galleonfs'] === '1', retryAfter: response.headers['retry-after'] as string | undefined, body: JSON.parse(text) }) })
    })
    sent.on('error', reject)
    sent.end(payload)
  })
}

describe('h86: a daemon waiting for a peer that is still starting', { skip: etcdSkipReason(), timeout: 240_000 }, () => {
  let dir: string
  let peer: GatedDaemon | undefined
  let peerBind: string
  const joinArgs = async (name: string): Promise<string[]> => ['--storage-path', join(dir, name), '--bind-address', `127.0.0.1:${await freePort()}`, '--node-id', name, '--peer-addresses', peerBind]
  /** The peer still waits at its gate (its storage not open: it answers every peer that it is starting). */
  const peerStillHeld = async (): Promise<void> => {
    const held = peer as GatedDaemon
    assert.equal(held.child.exitCode, null, 'the peer is running')
    assert.equal(await present(held.gate), false, 'the peer\'s gate was not opened')
    assert.equal(await present(`${held.gate}.waiting`), true, 'the peer waits at its gate')
  }

  heldPeerForSuite(newDir, { children, env }, (held) => { ({ dir, peer, bind: peerBind } = held) })

  for (const [which, setting] of [['IPC', '--ipc-address (ipc_address in [daemon])'], ['NBD', '--nbd-address (nbd_address in [daemon])']] as const) {
    it(`a busy ${which} address fails the start at once with BUSY naming ${setting.split(' ')[0]}, while the peer is still starting, and nothing is created`, async () => {
      const { server, port } = await portHolder()
      const name = `busy-${which.toLowerCase()}`
      try {
        const busy = `127.0.0.1:${port}`
        // --peer-wait-seconds 120: before h86 the daemon waited all of it for the held peer, then
        // failed saying the peer is still starting, never naming the busy port.
        const daemon = launch([...await joinArgs(name), '--peer-wait-seconds', '120', ...(which === 'IPC' ? ['--ipc-address', busy] : ['--ipc-address', '127.0.0.1:0', '--nbd-address', busy])], dir)
        const code = await within('the daemon with a busy port exits (the peer still held)', daemon.exited, 100_000)
        // It exited while the peer still says it is starting: it did not wait for it.
        await peerStillHeld()
        assert.equal(code, 1, daemon.log())
        const failure = logEntries(daemon.log()).find((entry) => entry.message.startsWith('the daemon could not start'))
        assert.deepEqual(failure && { message: failure.message, code: failure.code }, {
          message: `the daemon could not start: the ${which} address ${busy} is in use by another process (another galleonfs daemon?); stop that one, or give this daemon another ${setting}`,
          code: 'BUSY'
        }, daemon.log())
        // The peers were never asked: the port is checked first.
        assert.ok(!daemon.log().includes(WAITING), daemon.log())
        assert.equal(await present(join(dir, name)), false, 'the storage path was not created')
      } finally {
        await new Promise<void>((resolve) => server.close(() => resolve()))
      }
    })
  }

  it('while it waits, its API answers at once 503 STARTING saying it waits for peers, `daemon status` says so, and `daemon status --wait` waits until it has started', async () => {
    const address = `127.0.0.1:${await freePort()}`
    const storage = join(dir, 'waiter')
    const daemon = launch([...await joinArgs('waiter'), '--ipc-address', address, '--log-level', 'debug'], dir)
    let stopped = false
    try {
      await until(`the daemon logged "${WAITING}"`, () => {
        if (daemon.child.exitCode !== null) throw new Error(`the daemon exited with ${daemon.child.exitCode}: ${daemon.log()}`)
        return daemon.log().includes(WAITING)
      }, 60_000)
      // The time left of the wait (300 s by default), in whole seconds, then the rest as is.
      const messageAt = (left: string): string => `the daemon is starting: it waits for peers that are still starting, for at most ${left} s more (--peer-wait-seconds 300), to tell where its cluster's coordinator is, and opens its storage after that; retry once it has started (\`galleonfs daemon status --wait <seconds>\` waits for it)`
      const leftOf = (text: string): number => Number(/for at most (\d+) s more/.exec(text)?.[1])
      let lastLeft = 300
      // Before h86 nothing listened on the IPC address during the wait (ECONNREFUSED); kept
      // waiting instead, a request would run into the CLI's 30 s timeout, "hung or overloaded".
      for (const [method, path, body] of [['GET', '/v1/status', undefined], ['POST', '/v1/volumes', { name: 'v', sizeBytes: 1 << 20 }], ['GET', '/metrics', undefined]] as const) {
        const answer = await within(`${method} ${path} is answered`, ask(address, method, path, body), 30_000)
        // What is left of the wait counts down from 300 s.
        const left = leftOf(JSON.stringify(answer.body))
        assert.ok(Number.isInteger(left) && left >= 0 && left <= lastLeft, `the time left of the wait (at most ${lastLeft}), in ${JSON.stringify(answer.body)}`)
        lastLeft = left
        assert.deepEqual(answer, { status: 503, daemon: true, retryAfter: '2', body: { error: { code: 'STARTING', message: messageAt(String(left)) } } }, `${method} ${path}`)
      }
      const status = await within('daemon status is answered', runCli(address, ['daemon', 'status'], { cwd: dir }), 30_000)
      assert.equal(status.code, 1, status.stderr)
      assert.equal(status.stderr, `galleonfs: STARTING: ${messageAt(String(leftOf(status.stderr)))}\n`)
      await peerStillHeld()
      assert.equal(await present(storage), false, 'nothing is created while it waits')

      // `daemon status --wait` takes STARTING as "not yet": it asks again until the daemon has started.
      const answered503 = (): number => logEntries(daemon.log()).filter((entry) => entry.message === 'request' && entry.status === 503).length
      const before503 = answered503()
      assert.equal(before503, 4, daemon.log())
      const waited = runCli(address, ['daemon', 'status', '--wait', '90'], { cwd: dir })
      await until('`daemon status --wait` was answered STARTING at least twice', () => answered503() >= before503 + 2, 60_000)
      await writeFile((peer as GatedDaemon).gate, 'open')
      await within('the peer is ready', (peer as GatedDaemon).starting)
      const done = await within('`daemon status --wait` answers once the daemon has started', waited, 100_000)
      assert.equal(done.code, 0, `${done.stderr}\n${daemon.log()}`)
      assert.match(done.stdout, /state\s+running/)
      assert.ok(logEntries(daemon.log()).some((entry) => entry.message === 'joined the cluster'), daemon.log())
      // Once the peers have told, requests wait for the storage to open as before: no more 503.
      const after = await runCli(address, ['daemon', 'status'], { cwd: dir })
      assert.equal(after.code, 0, after.stderr)
      const code = await within('the daemon stops', daemon.stop(), 60_000)
      stopped = true
      assert.equal(code, 0, daemon.log())
    } finally {
      if (!stopped) await daemon.stop()
    }
  })
})
