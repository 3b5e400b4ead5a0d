// Review r9 of the daemon's API over HTTPS (commit 0c2c64a): TLS clients that never finish their
// handshake (held for ever, and a stop with them), a reload that turns HTTPS on with a file that
// cannot be read, the CLI's messages and waits with https:// addresses, `--test-replication` and
// `daemon restart` against an HTTPS daemon.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { connect as netConnect, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runCli, startDaemonProcess as startDaemonChild, type RunningDaemon } from './support/daemon.js'
import { makeCertificates, type TestCertificates } from './support/tls-certificates.js'
import { freePort } from './support/net.js'
import { until } from './support/wait.js'
import { startDaemon, type Logger } from '../examples/daemon.js'
import { merge } from '../examples/daemon-config.js'

const NO_OPENSSL = ['/bin', '/usr/bin', '/usr/local/bin'].some((dir) => existsSync(join(dir, 'openssl'))) ? undefined : 'openssl is not installed (see .ci/run)'

let root: string
let certs: string
let made: TestCertificates
// What a test that fails (by its timeout) leaves behind goes here, so the file still ends.
const children: RunningDaemon[] = []
const clients: Socket[] = []
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-r9-https-'))
  certs = join(root, 'certs')
  await mkdir(certs)
  if (NO_OPENSSL === undefined) {
    made = await makeCertificates(certs)
    for (const key of ['server-key.pem', 'stranger-server-key.pem']) await chmod(join(certs, key), 0o600)
  }
})
after(async () => {
  for (const socket of clients) socket.destroy()
  for (const daemon of children) if (daemon.child.exitCode === null && daemon.child.signalCode === null) daemon.child.kill('SIGKILL')
  await rm(root, { recursive: true, force: true })
})

async function startDaemonProcess (...args: Parameters<typeof startDaemonChild>): Promise<RunningDaemon> {
  const daemon = await startDaemonChild(...args)
  children.push(daemon)
  return daemon
}

const tlsArgs = (): string[] => ['--ipc-tls-cert-file', join(certs, 'server-cert.pem'), '--ipc-tls-key-file', join(certs, 'server-key.pem')]

/** A TCP connection to `address` that has connected; 'close' recorded in `closed`. */
async function tcp (address: string): Promise<{ socket: Socket, closed: Promise<void> }> {
  const [host, port] = address.split(':') as [string, string]
  const socket = netConnect(Number(port), host)
  clients.push(socket)
  socket.on('error', () => {})
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()))
  await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject) })
  return { socket, closed }
}

/** The first bytes of a TLS ClientHello: a record header announcing more than is sent. */
const PARTIAL_HELLO = Buffer.from([0x16, 0x03, 0x01, 0x01, 0x00, 0x01, 0x00, 0x00, 0xfc, 0x03, 0x03])

describe('review r9: daemon API over HTTPS', { skip: NO_OPENSSL }, () => {
  it('lets go of TLS clients that never finish their handshake (after the handshake timeout) and keeps serving', { timeout: 60_000 }, async () => {
    const daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--storage-path', join(root, 'leak'), ...tlsArgs()], { cwd: root })
    try {
      const silent = await tcp(daemon.address)
      const partial = await tcp(daemon.address)
      partial.socket.write(PARTIAL_HELLO)
      // Written an HTTP refusal that waited for the handshake, these stayed open for ever.
      await Promise.all([silent.closed, partial.closed])
      const status = await runCli(`https://${daemon.address}`, ['--daemon-ca-file', join(certs, 'ca-cert.pem'), '--json', 'daemon', 'status'])
      assert.equal(status.code, 0, status.stderr)
      assert.equal(JSON.parse(status.stdout).ipcTls, true)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })

  it('a stop ends connections still in their TLS handshake at once, and those secured after it began', { timeout: 60_000 }, async () => {
    const lines: Array<{ level: string, message: string, fields: Record<string, unknown> }> = []
    const log = ((level, message, fields = {}) => { lines.push({ level, message, fields }) }) as Logger
    log.setLevel = () => {}
    Object.defineProperty(log, 'level', { get: () => 'debug' })
    const config = merge({ storagePath: join(root, 'inproc'), ipcAddress: '127.0.0.1:0', ipcTlsCertFile: join(certs, 'server-cert.pem'), ipcTlsKeyFile: join(certs, 'server-key.pem') })
    const daemon = await startDaemon(config, log)
    const [host, port] = daemon.ipcAddress.split(':') as [string, string]
    const ca = made.pem['ca-cert'] as string
    const silent = await tcp(daemon.ipcAddress)
    const partial = await tcp(daemon.ipcAddress)
    partial.socket.write(PARTIAL_HELLO)
    const late = await tcp(daemon.ipcAddress)
    // A secured connection that sent half a request.
    const half = tlsConnect({ host, port: Number(port), ca })
    clients.push(half)
    half.on('error', () => {})
    const halfClosed = new Promise<void>((resolve) => half.once('close', () => resolve()))
    await new Promise<void>((resolve) => half.once('secureConnect', () => resolve()))
    half.write('GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthor')
    // A secured connection kept alive after its answer (a refusal: no token).
    const idle = tlsConnect({ host, port: Number(port), ca })
    clients.push(idle)
    idle.on('error', () => {})
    const idleClosed = new Promise<void>((resolve) => idle.once('close', () => resolve()))
    let answer = ''
    idle.on('data', (chunk: Buffer) => { answer += chunk.toString() })
    idle.once('secureConnect', () => { idle.write('GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n') })
    await until('the kept-alive connection got its answer', () => answer.includes('UNAUTHORIZED'))
    assert.match(answer, /^HTTP\/1\.1 401 .*keep-alive/is)
    // Give the daemon the bytes sent so far before it is told to stop.
    await new Promise((resolve) => setTimeout(resolve, 200))
    const stopping = daemon.stop()
    // A handshake on a connection made before the stop, begun after it.
    const secured = tlsConnect({ socket: late.socket, ca, servername: 'localhost' })
    clients.push(secured)
    secured.on('error', () => {})
    secured.once('secureConnect', () => { secured.write('GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthor') })
    await stopping
    await Promise.all([silent.closed, partial.closed, late.closed, halfClosed, idleClosed])
    assert.deepEqual(lines.filter((line) => line.fields.code === 'ERR_TLS_HANDSHAKE_TIMEOUT'), [], 'the stop did not wait for a handshake to time out')
    assert.deepEqual(lines.filter((line) => /did not finish in time/.test(line.message)), [])
  })

  it('a reload that turns HTTPS on with a file it cannot read fails and changes nothing; with good files it waits for a restart', { timeout: 60_000 }, async () => {
    const dir = join(root, 'reload-on')
    await mkdir(dir)
    const configFile = join(dir, 'galleonfs.toml')
    const base = `[daemon]\nstorage_path = "${join(dir, 's')}"\nipc_address = "127.0.0.1:0"\n`
    await writeFile(configFile, base)
    const daemon = await startDaemonProcess(['--config', configFile], { cwd: dir })
    try {
      await writeFile(configFile, `${base}ipc_tls_cert_file = "${join(certs, 'missing-cert.pem')}"\nipc_tls_key_file = "${join(certs, 'server-key.pem')}"\n`)
      const failed = await runCli(daemon.address, ['daemon', 'reload'])
      assert.equal(failed.code, 1, failed.stdout)
      assert.match(failed.stderr, /INVALID_CONFIG: cannot read the API TLS certificate \(ipc_tls_cert_file\)/)
      assert.equal((await runCli(daemon.address, ['volume', 'list'])).code, 0, 'still plain HTTP')
      await writeFile(configFile, `${base}ipc_tls_cert_file = "${join(certs, 'server-cert.pem')}"\nipc_tls_key_file = "${join(certs, 'server-key.pem')}"\n`)
      const reloaded = await runCli(daemon.address, ['--json', 'daemon', 'reload'])
      assert.equal(reloaded.code, 0, reloaded.stderr)
      assert.deepEqual(JSON.parse(reloaded.stdout), { applied: [], needsRestart: ['ipcTlsCertFile', 'ipcTlsKeyFile'] })
      const status = await runCli(daemon.address, ['--json', 'daemon', 'status'])
      assert.equal(status.code, 0, status.stderr)
      assert.equal(JSON.parse(status.stdout).ipcTls, false)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })

  it('a reload keeps the certificate when the new key does not match it; `daemon restart` comes back over HTTPS, and says so when the restart turned HTTPS off', { timeout: 120_000 }, async () => {
    const dir = join(root, 'restart')
    await mkdir(dir)
    const configFile = join(dir, 'galleonfs.toml')
    const address = `127.0.0.1:${await freePort()}`
    const base = `[daemon]\nstorage_path = "${join(dir, 's')}"\nipc_address = "${address}"\n`
    const withTls = (key: string): string => `${base}ipc_tls_cert_file = "${join(certs, 'server-cert.pem')}"\nipc_tls_key_file = "${join(certs, key)}"\n`
    await writeFile(configFile, withTls('server-key.pem'))
    const first = await startDaemonProcess(['--config', configFile], { cwd: dir })
    const https = `https://${address}`
    const ca = ['--daemon-ca-file', join(certs, 'ca-cert.pem')]
    try {
      await writeFile(configFile, withTls('stranger-server-key.pem'))
      const refused = await runCli(https, [...ca, 'daemon', 'reload'])
      assert.equal(refused.code, 1, refused.stdout)
      assert.match(refused.stderr, /INVALID_CONFIG: API TLS .*the certificate and key were refused/)
      assert.equal((await runCli(https, [...ca, 'volume', 'list'])).code, 0, 'the certificate in effect is still served')
      await writeFile(configFile, withTls('server-key.pem'))
      const restarted = await runCli(https, [...ca, 'daemon', 'restart'])
      assert.equal(restarted.code, 0, restarted.stderr)
      assert.match(restarted.stdout, /the daemon restarted \(pid \d+\)/)
      assert.equal(await first.exited, 0)
      // HTTPS turned off: a reload waits for the restart; the restart then serves plain HTTP.
      await writeFile(configFile, base)
      const reloaded = await runCli(https, [...ca, '--json', 'daemon', 'reload'])
      assert.equal(reloaded.code, 0, reloaded.stderr)
      assert.deepEqual(JSON.parse(reloaded.stdout).needsRestart, ['ipcTlsCertFile', 'ipcTlsKeyFile'])
      assert.equal((await runCli(https, [...ca, 'volume', 'list'])).code, 0, 'still HTTPS until the restart')
      const off = await runCli(https, [...ca, 'daemon', 'restart'])
      assert.equal(off.code, 1, off.stdout)
      assert.match(off.stderr, /was restarted, but the daemon at .* does not speak HTTPS; give --daemon-address without https:\/\//)
      const status = await runCli(address, ['--json', 'daemon', 'status'])
      assert.equal(status.code, 0, status.stderr)
      assert.equal(JSON.parse(status.stdout).ipcTls, false)
    } finally {
      // The restarted daemon is not our child: stopped through its API, then its address is free.
      for (const at of [address, https]) await runCli(at, [...(at === https ? ca : []), 'daemon', 'stop'])
      await until('the restarted daemon stopped', async () => (await runCli(address, ['daemon', 'status'])).stderr.includes('no GalleonFS daemon answers'), 60_000, 200)
    }
  })

  it('the CLI names the right fix for https:// and http:// addresses, and `daemon status --wait` does not wait out a TLS refusal', { timeout: 60_000 }, async () => {
    const port = await freePort()
    const nobody = await runCli(`https://127.0.0.1:${port}`, ['volume', 'list'])
    assert.equal(nobody.code, 1)
    assert.match(nobody.stderr, new RegExp(`start it with \`galleonfs -d --ipc-address 127\\.0\\.0\\.1:${port} --ipc-tls-cert-file <cert\\.pem> --ipc-tls-key-file <key\\.pem>\``))
    const daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--storage-path', join(root, 'messages'), '--log-level', 'debug', ...tlsArgs()], { cwd: root })
    const refusals = (): number => daemon.logs.filter((line) => line.includes('TLS handshake failed')).length
    try {
      const plain = await runCli(`http://${daemon.address}`, ['volume', 'list'])
      assert.equal(plain.code, 1)
      assert.match(plain.stderr, new RegExp(`give --daemon-address as https://${daemon.address.replace(/\./g, '\\.')}\\)`))
      // An untrusted certificate does not go away by waiting: reported after one attempt, not
      // tried again every 100 ms until --wait runs out.
      const before = refusals()
      const untrusted = await runCli(`https://${daemon.address}`, ['daemon', 'status', '--wait', '3'])
      assert.equal(untrusted.code, 1)
      assert.match(untrusted.stderr, /the daemon's certificate at .* was not accepted/)
      await until('the daemon logged the refused handshake', () => refusals() > before)
      assert.equal(refusals() - before, 1, 'one attempt')
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })

  it('--test-replication reaches an HTTPS daemon with --daemon-ca-file; a long operation streams its progress over HTTPS', { timeout: 60_000 }, async () => {
    const daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--storage-path', join(root, 'self-test'), ...tlsArgs()], { cwd: root })
    try {
      const https = `https://${daemon.address}`
      const ca = ['--daemon-ca-file', join(certs, 'ca-cert.pem')]
      assert.equal((await runCli(https, [...ca, 'volume', 'create', '--name', 'big', '--size', '64M', '--replicas', '1'])).code, 0)
      const backup = await runCli(https, [...ca, '--progress', 'backup', 'create', 'big', '--target', join(root, 'backups')])
      assert.equal(backup.code, 0, backup.stderr)
      assert.match(backup.stdout, /^backup \S+ \(full\): \d+ blocks/)
      assert.match(backup.stderr, /backup of big \[/, 'the progress bar was drawn')
      const result = await runCli(`https://${daemon.address}`, ['--test-replication', '--daemon-ca-file', join(certs, 'ca-cert.pem')])
      // A single node: the self-test reaches it and reports that it is not in a cluster.
      assert.equal(result.code, 1, result.stderr)
      assert.match(result.stderr, /step 1 failed: the daemon is in a cluster .*the daemon is not in a cluster/)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })
})
