// The daemon's API over HTTPS (--ipc-tls-cert-file, --ipc-tls-key-file) with the CLI as a user
// runs it: `--daemon-address https://host:port` and `--daemon-ca-file`; mistakes on either side
// (HTTP to an HTTPS daemon and the reverse, an unknown CA) get a message that names the fix; a
// reload takes a renewed certificate; bad settings stop the start with exit code 2.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { copyFile, chmod, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import { request } from 'node:https'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runCli, runDaemonToExit, startDaemonProcess } from './support/daemon.js'
import { makeCertificates } from './support/tls-certificates.js'

const NO_OPENSSL = ['/bin', '/usr/bin', '/usr/local/bin'].some((dir) => existsSync(join(dir, 'openssl'))) ? undefined : 'openssl is not installed (see .ci/run)'

let root: string
let certs: string
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-daemon-https-'))
  certs = join(root, 'certs')
  await mkdir(certs)
  if (NO_OPENSSL === undefined) {
    await makeCertificates(certs)
    for (const key of ['server-key.pem', 'stranger-server-key.pem']) await chmod(join(certs, key), 0o600)
  }
})
after(async () => { await rm(root, { recursive: true, force: true }) })

/** A GET of the API over HTTPS from node:https with `ca`: the status code, or the error's code. */
async function httpsGet (address: string, path: string, ca: string, token: string): Promise<number | string> {
  const [host, port] = address.split(':') as [string, string]
  return await new Promise((resolve) => {
    const sent = request({ host, port: Number(port), path, ca, headers: { authorization: `Bearer ${token}` } }, (response) => { response.resume(); resolve(response.statusCode ?? 0) })
    sent.once('error', (err: NodeJS.ErrnoException) => { resolve(err.code ?? err.message) })
    sent.end()
  })
}

describe('daemon API over HTTPS', { skip: NO_OPENSSL }, () => {
  it('the CLI reaches it with https:// and the CA; without the CA, or in plain HTTP, it is told what to fix; a reload takes a renewed certificate', { timeout: 120_000 }, async () => {
    const cert = join(root, 'api-cert.pem')
    const key = join(root, 'api-key.pem')
    await copyFile(join(certs, 'server-cert.pem'), cert)
    await copyFile(join(certs, 'server-key.pem'), key)
    await chmod(key, 0o600)
    const ca = join(certs, 'ca-cert.pem')
    const daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--storage-path', join(root, 'node'), '--ipc-tls-cert-file', cert, '--ipc-tls-key-file', key], { cwd: root })
    try {
      const ready = daemon.logs.map((line) => JSON.parse(line) as { message?: string, ipcTls?: boolean }).find((entry) => entry.message === 'ready')
      assert.equal(ready?.ipcTls, true)
      const https = `https://${daemon.address}`
      const created = await runCli(https, ['--daemon-ca-file', ca, 'volume', 'create', '--name', 'disk', '--size', '4M', '--replicas', '1'])
      assert.equal(created.code, 0, created.stderr)
      const listed = await runCli(https, ['--json', 'volume', 'list'], { env: { GALLEONFS_DAEMON_CA_FILE: ca } })
      assert.equal(listed.code, 0, listed.stderr)
      assert.deepEqual((JSON.parse(listed.stdout) as Array<{ name: string }>).map((v) => v.name), ['disk'])
      const status = JSON.parse((await runCli(https, ['--daemon-ca-file', ca, '--json', 'daemon', 'status'])).stdout)
      assert.equal(status.ipcTls, true)
      // The CA not given: the certificate is refused, and the message says how to give it.
      const unknown = await runCli(https, ['volume', 'list'])
      assert.equal(unknown.code, 1)
      assert.match(unknown.stderr, /the daemon's certificate at .* was not accepted .*--daemon-ca-file/)
      // Plain HTTP to an HTTPS daemon: told to use https://.
      const plain = await runCli(daemon.address, ['volume', 'list'])
      assert.equal(plain.code, 1)
      assert.match(plain.stderr, /closed the connection without answering; see its log \(if it serves HTTPS, with --ipc-tls-cert-file, give --daemon-address as https:\/\//)
      // A CA file with a plain address is a usage error.
      const mixed = await runCli(daemon.address, ['--daemon-ca-file', ca, 'volume', 'list'])
      assert.equal(mixed.code, 2, mixed.stderr)
      assert.match(mixed.stderr, /--daemon-ca-file is for a daemon serving HTTPS: give --daemon-address as https:\/\//)
      // A renewed certificate (here from another CA, to tell them apart) under the same file names.
      await copyFile(join(certs, 'stranger-server-cert.pem'), cert)
      await copyFile(join(certs, 'stranger-server-key.pem'), key)
      const reloaded = await runCli(https, ['--daemon-ca-file', ca, 'daemon', 'reload'])
      assert.equal(reloaded.code, 0, reloaded.stderr)
      assert.ok(daemon.logs.some((line) => line.includes('API TLS certificate reloaded')))
      const strangerCa = join(certs, 'stranger-ca-cert.pem')
      const renewed = await runCli(https, ['--daemon-ca-file', strangerCa, 'volume', 'list'])
      assert.equal(renewed.code, 0, renewed.stderr)
      assert.equal(await httpsGet(daemon.address, '/v1/volumes', await readFile(strangerCa, 'utf8'), 'wrong-token'), 401, 'the token is still required over HTTPS')
      assert.notEqual((await runCli(https, ['--daemon-ca-file', ca, 'volume', 'list'])).code, 0, 'the old certificate is gone')
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })

  it('an https:// address to a daemon in plain HTTP says it does not speak HTTPS; bad TLS settings stop the start with exit code 2', { timeout: 120_000 }, async () => {
    const daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--storage-path', join(root, 'plain-node')], { cwd: root })
    try {
      const wrong = await runCli(`https://${daemon.address}`, ['volume', 'list'])
      assert.equal(wrong.code, 1)
      assert.match(wrong.stderr, /does not speak HTTPS; give --daemon-address without https:\/\//)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
    const storage = ['--storage-path', join(root, 'bad-node')]
    const cases: Array<[string[], RegExp]> = [
      [['--ipc-tls-cert-file', join(certs, 'server-cert.pem')], /HTTPS for the API needs both ipc_tls_cert_file and ipc_tls_key_file/],
      [['--ipc-tls-cert-file', join(certs, 'server-cert.pem'), '--ipc-tls-key-file', join(certs, 'stranger-server-key.pem')], /API TLS .*the certificate and key were refused/],
      [['--ipc-tls-cert-file', join(certs, 'none.pem'), '--ipc-tls-key-file', join(certs, 'server-key.pem')], /cannot read the API TLS certificate \(ipc_tls_cert_file\)/]
    ]
    for (const [args, message] of cases) {
      const { code, log } = await runDaemonToExit([...storage, ...args], { cwd: root })
      assert.equal(code, 2, `${args.join(' ')}: ${log}`)
      assert.match(log, message)
    }
  })
})
