// Daemon processes held inside GalleonFS.open() (the gated block store of h77-gated-store.ts) until
// their test opens the gate, so that what a daemon does while its storage opens (ports held,
// clients waiting) can be checked without racing it. Used by the h77 and review-r36 tests.

import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdir, stat, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { after, before } from 'node:test'
import { ENTRY, startDaemonProcess, type RunningDaemon } from './daemon.js'
import { scriptArgs } from './child-script.js'
import { until } from './wait.js'
import { startEtcd, type EtcdServer } from './etcd.js'
import { freePort } from './net.js'

const GATED_STORE = join(import.meta.dirname, 'h77-gated-store.ts')

export const present = async (path: string): Promise<boolean> => await stat(path).then(() => true, () => false)

/** The JSON lines of a daemon's log. */
export function logEntries (log: string): Array<{ level: string, message: string, [key: string]: unknown }> {
  return log.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as { level: string, message: string })
}

/** A listener of this process on a free port of 127.0.0.1 (another program holding it). */
export async function portHolder (): Promise<{ server: Server, port: number }> {
  const server = createServer()
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', () => resolve()) })
  return { server, port: (server.address() as { port: number }).port }
}

/** What listening on 127.0.0.1:port from this process gives: "listening" (then closed again) or the error code. */
export async function tryListen (port: number): Promise<string> {
  const server: Server = createServer()
  const outcome = await new Promise<string>((resolve) => {
    server.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message))
    server.listen(port, '127.0.0.1', () => resolve('listening'))
  })
  if (outcome === 'listening') await new Promise<void>((resolve) => server.close(() => resolve()))
  return outcome
}

export interface GatedDaemon {
  readonly child: ChildProcess
  readonly exited: Promise<number | null>
  readonly storage: string
  /** The file that lets the daemon's storage open ("fail" in it: the open fails). */
  readonly gate: string
  /** Resolves once the daemon is ready (rejects if it exits first). */
  readonly starting: Promise<RunningDaemon>
}

export interface GatedDaemonOptions {
  /** Where the test keeps its children, to kill them if it fails. */
  readonly children: Set<ChildProcess>
  readonly env?: NodeJS.ProcessEnv
  /** Driver modules the daemon imports besides the gated store. */
  readonly modules?: readonly string[]
}

/** Starts a daemon (storage and config in `dir`) whose storage opens only once its gate file exists. */
export async function gatedDaemon (dir: string, args: string[], options: GatedDaemonOptions): Promise<GatedDaemon> {
  const storage = join(dir, 'storage')
  const gate = join(dir, 'gate')
  const config = join(dir, 'galleonfs.toml')
  await writeFile(config, [
    '[daemon]',
    `storage_path = ${JSON.stringify(storage)}`,
    '',
    '[drivers]',
    `modules = ${JSON.stringify([GATED_STORE, ...(options.modules ?? [])])}`,
    'block_store = "h77-gated"',
    `block_store_options = { gate = ${JSON.stringify(gate)} }`,
    ''
  ].join('\n'))
  let child: ChildProcess | undefined
  const starting = startDaemonProcess(['--config', config, ...args], {
    cwd: dir,
    env: options.env ?? process.env,
    tsx: true,
    onSpawn: (spawned) => {
      child = spawned
      options.children.add(spawned)
      spawned.once('exit', () => options.children.delete(spawned))
    }
  })
  starting.catch(() => {})
  const started = child as unknown as ChildProcess
  const exited = started.exitCode !== null ? Promise.resolve(started.exitCode) : new Promise<number | null>((resolve) => started.once('exit', (code) => resolve(code)))
  return { child: started, exited, storage, gate, starting }
}

/** Resolves once the daemon waits at its gate, inside GalleonFS.open(). */
export async function atGate (daemon: GatedDaemon): Promise<void> {
  const deadline = Date.now() + 60_000
  while (!await present(`${daemon.gate}.waiting`)) {
    if (daemon.child.exitCode !== null) throw new Error(`the daemon exited with ${daemon.child.exitCode} before it reached its gate: ${await daemon.starting.then(() => '', (err: Error) => err.message)}`)
    if (Date.now() > deadline) throw new Error('the daemon did not reach its gate within 60 s')
    await sleep(20)
  }
}

/**
 * A cluster node `peer` (storage in `dir`/peer, coordinating through the etcd at `etcdEndpoint`)
 * held at its gate: until the test opens it, the node answers every peer that it is starting.
 * `bind`: the address other nodes name in --peer-addresses.
 */
export async function heldClusterPeer (dir: string, etcdEndpoint: string, options: GatedDaemonOptions): Promise<{ peer: GatedDaemon, bind: string }> {
  const bind = `127.0.0.1:${await freePort()}`
  await mkdir(join(dir, 'peer'))
  const peer = await gatedDaemon(join(dir, 'peer'), ['--ipc-address', '127.0.0.1:0', '--bind-address', bind, '--node-id', 'peer', '--etcd-endpoints', etcdEndpoint], options)
  await atGate(peer)
  return { peer, bind }
}

/** What heldPeerForSuite set up: the directory, the etcd, the held peer and the address to name it by. */
export interface HeldPeerSuite { readonly dir: string, readonly etcd: EtcdServer, readonly peer: GatedDaemon, readonly bind: string }

/**
 * For the tests of one describe block: before them, a new directory (`newDir`), an etcd and a
 * cluster node held at its gate in it (heldClusterPeer), handed to `ready`; after them, the peer
 * and the etcd stopped (after hooks registered before this call run first).
 */
export function heldPeerForSuite (newDir: () => Promise<string>, options: GatedDaemonOptions, ready: (suite: HeldPeerSuite) => void): void {
  let etcd: EtcdServer | undefined
  let peer: GatedDaemon | undefined
  before(async () => {
    const dir = await newDir()
    etcd = await startEtcd()
    const held = await heldClusterPeer(dir, etcd.endpoint, options)
    peer = held.peer
    ready({ dir, etcd, peer: held.peer, bind: held.bind })
  })
  after(async () => {
    try {
      if (peer !== undefined) await stopGated(peer)
    } finally {
      await etcd?.stop()
    }
  })
}

/** Stops the daemon: SIGTERM once it is ready (a clean stop, exit 0), SIGKILL when it is not. */
export async function stopGated (daemon: GatedDaemon): Promise<void> {
  if (daemon.child.exitCode !== null || daemon.child.signalCode !== null) return
  const ready = await Promise.race([daemon.starting.then(() => true, () => false), sleep(0).then(() => false)])
  daemon.child.kill(ready ? 'SIGTERM' : 'SIGKILL')
  const code = await daemon.exited
  if (ready) assert.equal(code, 0, 'the daemon stopped cleanly')
}

/** What a daemon logs each time it begins to wait for peers that are still starting. */
export const WAITING_FOR_PEERS = 'waiting for peers that are still starting (--peer-wait-seconds)'

/** A daemon process started by launchDaemon. */
export interface LaunchedDaemon {
  readonly child: ChildProcess
  /** Its log so far (JSON lines). */
  readonly log: () => string
  /** Its exit code (null: a signal ended it). */
  readonly exited: Promise<number | null>
  /** Its IPC address once it said "ready" (rejects if it exits first). */
  readonly ready: Promise<string>
  /** SIGTERM, then its exit code. */
  readonly stop: () => Promise<number | null>
}

/** `galleonfs -d ...args` in `cwd`, its log kept from its first line; added to `children` while it runs. */
export function launchDaemon (args: string[], cwd: string, options: { env: NodeJS.ProcessEnv, children: Set<ChildProcess> }): LaunchedDaemon {
  const child = spawn(process.execPath, [...scriptArgs(ENTRY), '-d', ...args], { cwd, stdio: ['ignore', 'ignore', 'pipe'], env: options.env })
  options.children.add(child)
  let log = ''
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => { options.children.delete(child); resolve(code) }))
  const ready = new Promise<string>((resolve, reject) => {
    child.stderr?.on('data', (chunk: Buffer) => {
      log += chunk.toString()
      const address = /"message":"ready".*?"ipcAddress":"([^"]+)"/.exec(log)?.[1]
      if (address !== undefined) resolve(address)
    })
    void exited.then((code) => { reject(new Error(`the daemon exited with ${code}: ${log}`)) })
  })
  ready.catch(() => {})
  const stop = async (): Promise<number | null> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
    return await exited
  }
  return { child, log: () => log, exited, ready, stop }
}

/** Resolves once `daemon` has logged WAITING_FOR_PEERS `times` times (fails if it exits first). */
export async function waitingForPeers (daemon: LaunchedDaemon, times = 1): Promise<void> {
  await until(`the daemon logged "${WAITING_FOR_PEERS}" ${times} time(s)`, () => {
    if (daemon.child.exitCode !== null) throw new Error(`the daemon exited with ${daemon.child.exitCode}: ${daemon.log()}`)
    return daemon.log().split(WAITING_FOR_PEERS).length > times
  }, 60_000)
}
