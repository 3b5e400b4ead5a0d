// Daemon settings handed to the drivers it starts: the NBD server's handshake timeout and the tcp
// transport's keepalive, from flags and from the configuration file, checked in a real daemon process.

import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { pairSockets } from './support/net.js'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { FrameReader, FrameType } from '../backends/tcp/frames.js'
import { TcpTransport, parseAddress } from '../backends/tcp/index.js'
import { runDaemonToExit, startDaemonProcess } from './support/daemon.js'
import { check, flagName } from '../examples/daemon-config.js'
import { NbdClient } from './support/nbd-client.js'

const SECRET = 'daemon-options-test-secret-0123456789'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-daemon-options-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

/** Runs `galleonfs -d ...args`, expecting it to stop; resolves to its exit code and the messages it logged. */
async function runToExit (args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ code: number | null, log: string }> {
  return await runDaemonToExit(args, { cwd: root, env })
}

/**
 * A peer for the daemon to dial, through a relay that keeps the first frame the daemon sends (its
 * HELLO) and that `blackhole()` turns silent: no byte relayed either way, nothing closed.
 */
class BlackholingRelay {
  readonly #target: { host: string, port: number }
  readonly #server: Server
  readonly #sockets = new Set<Socket>()
  #silent = false
  /** The header of the dialer's HELLO, once it came. */
  hello: Record<string, unknown> | undefined

  constructor (target: string) {
    this.#target = parseAddress(target)
    this.#server = createServer((client) => {
      const upstream = connect(this.#target)
      const reader = new FrameReader(1 << 20)
      pairSockets(this.#sockets, client, upstream)
      client.on('data', (chunk: Buffer) => {
        if (this.hello === undefined) {
          reader.push(chunk)
          const frame = reader.next()
          if (frame?.type === FrameType.Hello) this.hello = frame.header as Record<string, unknown>
        }
        if (!this.#silent) upstream.write(chunk)
      })
      upstream.on('data', (chunk: Buffer) => { if (!this.#silent) client.write(chunk) })
    })
  }

  async listen (): Promise<string> {
    await new Promise<void>((resolve) => { this.#server.listen(0, '127.0.0.1', resolve) })
    return `127.0.0.1:${(this.#server.address() as AddressInfo).port}`
  }

  blackhole (): void {
    this.#silent = true
    for (const socket of this.#sockets) socket.pause()
  }

  async close (): Promise<void> {
    for (const socket of this.#sockets) socket.destroy()
    await new Promise<void>((resolve) => { this.#server.close(() => { resolve() }) })
  }
}

describe('daemon options for the NBD server and the tcp transport', () => {
  it('--nbd-handshake-timeout-seconds: an NBD client that stays silent is disconnected after the configured time, not the default 10 s', { timeout: 60_000 }, async () => {
    const daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--storage-path', join(root, 'nbd'), '--nbd-address', '127.0.0.1:0', '--nbd-handshake-timeout-seconds', '0.3'], { cwd: root })
    try {
      const ready = daemon.logs.map((line) => JSON.parse(line) as { message?: string, nbdAddress?: string }).find((entry) => entry.message === 'ready')
      const { port } = parseAddress(ready?.nbdAddress as string)
      const silent = await NbdClient.connect(port)
      // Well before the 10 s default would end it.
      assert.ok(await silent.closedByServer(5000), 'the silent NBD client was disconnected by the configured handshake timeout')
    } finally {
      daemon.child.kill('SIGTERM')
      await daemon.exited
    }
  })

  it('keepalive_interval and keepalive_timeout in [cluster]: the daemon asks peers for them and gives up a peer that goes silent after them', { timeout: 60_000 }, async () => {
    // A peer that answers nothing once the daemon asked it where the cluster's coordinator is.
    let relay: BlackholingRelay | undefined
    const peer = new TcpTransport({ nodeId: 'peer', clusterSecret: SECRET })
    relay = new BlackholingRelay(await peer.listen(async () => {
      relay?.blackhole()
      return await new Promise(() => {})
    }))
    try {
      const via = await relay.listen()
      const config = join(root, 'keepalive.toml')
      await writeFile(config, `[daemon]\nstorage_path = "${join(root, 'keepalive')}"\n\n[cluster]\npeer_addresses = ["${via}"]\nkeepalive_interval = 0.1\nkeepalive_timeout = 0.3\n`)
      const { code, log } = await runToExit(['--config', config], { ...process.env, GALLEONFS_CLUSTER_SECRET: SECRET })
      assert.equal(code, 1, log)
      assert.equal(relay.hello?.ka, 100, 'the daemon dialed with its keepalive interval')
      // With the default 5 s and 10 s, the daemon's own 5 s request timeout would have ended it first.
      assert.match(log, /no peer told where the cluster's coordinator is/)
      assert.match(log, /keepalive/)
    } finally {
      await peer.close()
      await relay.close()
    }
  })

  it('refuses bad values with exit code 2, naming the setting', { timeout: 60_000 }, async () => {
    const config = join(root, 'bad.toml')
    for (const [args, file, message] of [
      [['--nbd-handshake-timeout-seconds', '-1'], undefined, /command line: --nbd-handshake-timeout-seconds must be a number of seconds from 0 \(no limit\) to 3600, got "-1"/],
      [['--keepalive-interval-seconds', 'often'], undefined, /command line: --keepalive-interval-seconds must be a number of seconds from 0 \(no keepalives\) to 3600, got "often"/],
      [['--keepalive-timeout-seconds', '0'], undefined, /command line: --keepalive-timeout-seconds must be a number of seconds from 0.001 to 3600, got "0"/],
      [[], '[daemon]\nnbd_handshake_timeout = 7200\n', /bad\.toml: nbd_handshake_timeout in \[daemon\] must be a number of seconds from 0 \(no limit\) to 3600, got 7200/],
      [[], '[cluster]\nkeepalive_timeout = "soon"\n', /bad\.toml: keepalive_timeout in \[cluster\] must be a number of seconds/]
    ] as const) {
      const args2: string[] = ['--storage-path', join(root, 'bad'), ...args]
      if (file !== undefined) {
        await writeFile(config, file)
        args2.push('--config', config)
      }
      const { code, log } = await runToExit(args2)
      assert.equal(code, 2, log)
      assert.match(log, message)
    }
  })
})

describe('seconds settings in whole milliseconds', () => {
  it('a value above 0 never rounds to 0, which would turn the setting off', () => {
    assert.equal(check({ keepaliveIntervalSeconds: 0.0004 }, 'flags', flagName).keepaliveIntervalSeconds, 0.001)
    assert.equal(check({ nbdHandshakeTimeoutSeconds: '0.0002' }, 'flags', flagName).nbdHandshakeTimeoutSeconds, 0.001)
    assert.equal(check({ keepaliveIntervalSeconds: 0 }, 'flags', flagName).keepaliveIntervalSeconds, 0)
    assert.equal(check({ keepaliveTimeoutSeconds: 2.5 }, 'flags', flagName).keepaliveTimeoutSeconds, 2.5)
  })
})
