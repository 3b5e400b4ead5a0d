// The daemon's NBD TLS settings (nbd_tls_* in [daemon], --nbd-tls-* flags) in a real daemon
// process: clients must use TLS, a reload reads the files again (a renewed key is taken, a bad file
// changes nothing), and bad settings stop the start with exit code 2 naming the setting.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runCli, runDaemonToExit, startDaemonProcess, type RunningDaemon } from './support/daemon.js'
import { makeCertificates, type TestCertificates } from './support/tls-certificates.js'

const missing = (tool: string): string | undefined => ['/bin', '/usr/bin', '/usr/local/bin'].some((dir) => existsSync(join(dir, tool))) ? undefined : `${tool} is not installed (see .ci/run)`
const NO_CLIENTS = missing('nbdinfo') ?? missing('nbdcopy')
const NO_OPENSSL = missing('openssl')
if (NO_CLIENTS !== undefined) process.stdout.write(`# SKIP the daemon's NBD TLS client tests: ${NO_CLIENTS}\n`)

let root: string
let certs: TestCertificates | undefined
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-nbd-tls-daemon-'))
  if (NO_OPENSSL === undefined) {
    await mkdir(join(root, 'certs'))
    certs = await makeCertificates(join(root, 'certs'))
  }
})
after(async () => { await rm(root, { recursive: true, force: true }) })

/** Runs a client tool; resolves to its exit code and output (never rejects). */
async function run (tool: string, args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  return await new Promise((resolve) => {
    execFile(tool, args, { timeout: 60_000 }, (err, stdout, stderr) => { resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr }) })
  })
}

function nbdAddressOf (daemon: RunningDaemon): string | undefined {
  return daemon.logs.map((line) => JSON.parse(line) as { message?: string, nbdAddress?: string }).filter((entry) => entry.message === 'serving NBD exports').at(-1)?.nbdAddress
}

async function writeKey (path: string, identity: string, key: string, mode = 0o600): Promise<void> {
  await writeFile(path, `${identity}:${key}\n`, { mode })
  await chmod(path, mode)
}

describe('daemon NBD TLS', () => {
  it('with --nbd-tls-psk-file only TLS clients are served; a reload takes a renewed key, and a bad key file changes nothing', { skip: NO_CLIENTS, timeout: 120_000 }, async () => {
    const keys = join(root, 'nbd.psk')
    const first = randomBytes(32).toString('hex')
    await writeKey(keys, 'alice', first)
    const daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--storage-path', join(root, 'psk-node'), '--nbd-address', '127.0.0.1:0', '--nbd-tls-psk-file', keys], { cwd: root })
    try {
      const created = await runCli(daemon.address, ['volume', 'create', '--name', 'disk', '--size', '4M', '--replicas', '1'])
      assert.equal(created.code, 0, created.stderr)
      const address = nbdAddressOf(daemon) as string
      assert.match(address, /^127\.0\.0\.1:\d+$/)
      const uri = (file: string): string => `nbds://alice@${address}/disk?tls-psk-file=${file}`
      const info = await run('nbdinfo', ['--json', uri(keys)])
      assert.equal(info.code, 0, info.stderr)
      assert.equal(JSON.parse(info.stdout).TLS, true)
      assert.notEqual((await run('nbdinfo', [`nbd://${address}/disk`])).code, 0, 'a client in clear is refused')
      const status = JSON.parse((await runCli(daemon.address, ['--json', 'daemon', 'status'])).stdout)
      assert.equal(status.nbdTls, 'required')
      // Data goes through: a copy in and back out over TLS.
      const data = randomBytes(4 << 20)
      const input = join(root, 'in.raw')
      const back = join(root, 'back.raw')
      await writeFile(input, data)
      assert.equal((await run('nbdcopy', [input, uri(keys)])).code, 0)
      assert.equal((await run('nbdcopy', [uri(keys), back])).code, 0)
      assert.deepEqual(await readFile(back), data)
      // A renewed key under the same file name: taken at the reload, the old one no longer works.
      const oldKeys = join(root, 'old.psk')
      await writeKey(oldKeys, 'alice', first)
      const second = randomBytes(32).toString('hex')
      await writeKey(keys, 'alice', second)
      const reloaded = await runCli(daemon.address, ['daemon', 'reload'])
      assert.equal(reloaded.code, 0, reloaded.stderr)
      assert.ok(daemon.logs.some((line) => line.includes('NBD TLS credentials reloaded')))
      assert.notEqual((await run('nbdinfo', [uri(oldKeys)])).code, 0, 'the old key is refused')
      assert.equal((await run('nbdinfo', [uri(keys)])).code, 0, 'the renewed key works')
      // A key file others may read: the reload is refused, and the key in effect stays.
      await chmod(keys, 0o644)
      const refused = await runCli(daemon.address, ['daemon', 'reload'])
      assert.equal(refused.code, 1)
      assert.match(refused.stderr, /nbd_tls_psk_file.* may be read by other users .*chmod 600/)
      await chmod(keys, 0o600)
      assert.equal((await run('nbdinfo', [uri(keys)])).code, 0)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })

  it('x509 from the configuration file: clients need a certificate the CA signed', { skip: NO_CLIENTS ?? NO_OPENSSL, timeout: 120_000 }, async () => {
    const c = certs as TestCertificates
    const dir = join(root, 'certs')
    await chmod(join(dir, 'server-key.pem'), 0o600)
    const config = join(root, 'x509.toml')
    await writeFile(config, `[daemon]\nstorage_path = "${join(root, 'x509-node')}"\nnbd_address = "127.0.0.1:0"\nnbd_tls_cert_file = "${join(dir, 'server-cert.pem')}"\nnbd_tls_key_file = "${join(dir, 'server-key.pem')}"\nnbd_tls_ca_file = "${join(dir, 'ca-cert.pem')}"\n`)
    const daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--config', config], { cwd: root })
    try {
      const created = await runCli(daemon.address, ['volume', 'create', '--name', 'disk', '--size', '4M', '--replicas', '1'])
      assert.equal(created.code, 0, created.stderr)
      const address = nbdAddressOf(daemon) as string
      const good = await run('nbdinfo', ['--json', `nbds://${address}/disk?tls-certificates=${c.clientDir}`])
      assert.equal(good.code, 0, good.stderr)
      assert.equal(JSON.parse(good.stdout).exports[0]['export-size'], 4 << 20)
      assert.notEqual((await run('nbdinfo', [`nbds://${address}/disk?tls-certificates=${c.caOnlyDir}`])).code, 0)
      assert.notEqual((await run('nbdinfo', [`nbds://${address}/disk?tls-certificates=${c.strangerDir}`])).code, 0)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })

  it('bad TLS settings stop the start with exit code 2, naming the setting and the fix', { timeout: 120_000 }, async () => {
    const storage = ['--storage-path', join(root, 'bad-node')]
    const keys = join(root, 'good.psk')
    await writeKey(keys, 'alice', randomBytes(32).toString('hex'))
    const open = join(root, 'open.psk')
    await writeKey(open, 'alice', randomBytes(32).toString('hex'), 0o644)
    const short = join(root, 'short.psk')
    await writeKey(short, 'alice', 'abcd')
    const cases: Array<[string[], RegExp]> = [
      [['--nbd-tls-psk-file', keys], /nbd_tls_psk_file in \[daemon\] \(--nbd-tls-psk-file\) set TLS for the NBD server, which runs only with nbd_address/],
      [['--nbd-address', '127.0.0.1:0', '--nbd-tls-psk-file', open], /NBD TLS PSK file \(nbd_tls_psk_file\) .* may be read by other users \(mode 644\); chmod 600 it/],
      [['--nbd-address', '127.0.0.1:0', '--nbd-tls-psk-file', short], /NBD TLS .*short\.psk, line 1: the pre-shared key of "alice" has 2 bytes; use at least 16/],
      [['--nbd-address', '127.0.0.1:0', '--nbd-tls-psk-file', join(root, 'none.psk')], /cannot read the NBD TLS PSK file/]
    ]
    if (certs !== undefined) {
      const dir = join(root, 'certs')
      await chmod(join(dir, 'client-key.pem'), 0o600)
      cases.push(
        [['--nbd-address', '127.0.0.1:0', '--nbd-tls-cert-file', join(dir, 'server-cert.pem')], /needs both nbd_tls_cert_file and nbd_tls_key_file/],
        [['--nbd-address', '127.0.0.1:0', '--nbd-tls-psk-file', keys, '--nbd-tls-ca-file', join(dir, 'ca-cert.pem')], /nbd_tls_ca_file in \[daemon\] \(--nbd-tls-ca-file\) checks the NBD clients' certificates/],
        [['--nbd-address', '127.0.0.1:0', '--nbd-tls-cert-file', join(dir, 'server-cert.pem'), '--nbd-tls-key-file', join(dir, 'client-key.pem')], /NBD TLS \(nbd_tls_\* in \[daemon\]\): the TLS credentials were refused/],
        [['--nbd-address', '127.0.0.1:0', '--nbd-tls-cert-file', join(dir, 'missing.pem'), '--nbd-tls-key-file', join(dir, 'client-key.pem')], /cannot read the NBD TLS certificate \(nbd_tls_cert_file\)/]
      )
    }
    for (const [args, message] of cases) {
      const { code, log } = await runDaemonToExit([...storage, ...args], { cwd: root })
      assert.equal(code, 2, `${args.join(' ')}: ${log}`)
      assert.match(log, message)
    }
  })
})
