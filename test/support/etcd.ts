// Starts a throwaway etcd server for tests: free loopback ports, a temporary data directory, waits
// until it is healthy, and kills it afterwards (also when the test process exits early).

import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { accessSync, constants } from 'node:fs'
import { chmod, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { freePort } from './net.js'

/** A running etcd started by {@link startEtcd}. */
export interface EtcdServer {
  /** Client URL, e.g. `http://127.0.0.1:40123`. */
  readonly endpoint: string
  readonly dataDir: string
  readonly process: ChildProcess
  /** Kills etcd and removes its data directory (idempotent). */
  stop: () => Promise<void>
}

/** Path of the etcd binary ($ETCD_BIN, else `etcd` on PATH), or undefined when there is none. */
export function findEtcd (): string | undefined {
  const candidates = process.env.ETCD_BIN !== undefined && process.env.ETCD_BIN !== ''
    ? [process.env.ETCD_BIN]
    : [...(process.env.PATH ?? '').split(delimiter).filter(Boolean).map((dir) => join(dir, 'etcd')), '/usr/bin/etcd']
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK)
      return candidate
    } catch {}
  }
  return undefined
}

/** Why etcd tests cannot run here, or undefined when they can (for `test(..., { skip })`). */
export function etcdSkipReason (): string | undefined {
  return findEtcd() === undefined ? 'etcd is not installed (apt-get install etcd-server, or set ETCD_BIN); .ci/run installs it' : undefined
}

const running = new Set<ChildProcess>()
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL')
})

async function healthy (endpoint: string): Promise<boolean> {
  try {
    const response = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(2000) })
    const body = await response.json() as { health?: string }
    return body.health === 'true'
  } catch {
    return false
  }
}

/**
 * Starts etcd on free loopback ports with a temporary data directory and resolves once `/health`
 * says it is healthy (rejecting, with etcd's last output, if it exits or is not healthy in time).
 */
export async function startEtcd (options: { timeoutMs?: number, tls?: { certFile: string, keyFile: string } } = {}): Promise<EtcdServer> {
  const binary = findEtcd()
  if (binary === undefined) throw new Error(etcdSkipReason())
  const timeoutMs = options.timeoutMs ?? 30_000
  let lastError: Error | undefined
  // A port found free can be taken before etcd binds it: try again with new ports.
  for (let attempt = 0; attempt < 3; attempt++) {
    const [clientPort, peerPort, metricsPort] = [await freePort(), await freePort(), await freePort()]
    const dataDir = await mkdtemp(join(tmpdir(), 'galleonfs-etcd-'))
    const endpoint = `${options.tls === undefined ? 'http' : 'https'}://127.0.0.1:${clientPort}`
    const peer = `http://127.0.0.1:${peerPort}`
    // Health is asked over plain http on the metrics port (the client port may want TLS).
    const metrics = `http://127.0.0.1:${metricsPort}`
    const child = spawn(binary, [
      '--name', 't', '--data-dir', dataDir,
      '--listen-client-urls', endpoint, '--advertise-client-urls', endpoint, '--listen-metrics-urls', metrics,
      ...(options.tls === undefined ? [] : ['--cert-file', options.tls.certFile, '--key-file', options.tls.keyFile]),
      '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `t=${peer}`,
      '--logger', 'zap', '--log-outputs', 'stderr', '--log-level', 'warn'
    ], { stdio: ['ignore', 'ignore', 'pipe'] })
    running.add(child)
    let output = ''
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { output = (output + chunk).slice(-4000) })
    let exited = false
    const exit = new Promise<void>((resolve) => child.once('exit', () => { exited = true; running.delete(child); resolve() }))
    child.once('error', (err) => { lastError = err })
    const stop = async (): Promise<void> => {
      if (!exited) {
        child.kill('SIGTERM')
        const killed = await Promise.race([exit.then(() => true), sleep(5000).then(() => false)])
        if (!killed) { child.kill('SIGKILL'); await exit }
      }
      await rm(dataDir, { recursive: true, force: true })
    }
    const deadline = Date.now() + timeoutMs
    let ok = false
    while (!exited && !ok && Date.now() < deadline) {
      ok = await healthy(metrics)
      if (!ok) await sleep(100)
    }
    if (ok && !exited) return { endpoint, dataDir, process: child, stop }
    await stop()
    lastError = new Error(`etcd did not become healthy at ${endpoint} within ${timeoutMs} ms${exited ? ' (it exited)' : ''}; its last output:\n${output}`)
    if (!exited) break // not a port clash: retrying will not help
  }
  throw lastError ?? new Error('etcd did not start')
}

/**
 * A self-signed certificate for 127.0.0.1 (openssl), written to `dir` as cert.pem and key.pem
 * (mode 0600); the certificate is its own CA.
 */
export async function selfSignedCertificate (dir: string): Promise<{ certFile: string, keyFile: string }> {
  const certFile = join(dir, 'cert.pem')
  const keyFile = join(dir, 'key.pem')
  await new Promise<void>((resolve, reject) => {
    execFile('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], (err, _stdout, stderr) => {
      if (err === null) resolve()
      else reject(new Error(`openssl could not make a certificate: ${stderr}`))
    })
  })
  await chmod(keyFile, 0o600)
  return { certFile, keyFile }
}

/** Turns authentication on in a fresh etcd: user root (role root) with `password`. */
export async function enableEtcdAuth (url: string, password: string, tls?: { ca: string }): Promise<void> {
  const { Etcd3 } = await import('etcd3')
  const admin = new Etcd3({ hosts: [url], ...(tls === undefined ? {} : { credentials: { rootCertificate: Buffer.from(tls.ca) } }) })
  try {
    await admin.role('root').create().catch(() => {}) // built in on some etcd versions
    await admin.user('root').create(password)
    await admin.user('root').addRole('root')
    await admin.auth.authEnable()
  } finally {
    admin.close()
  }
}
