// TLS on the NBD export (NBD_OPT_STARTTLS, the protocol's FORCEDTLS mode), against real clients
// that speak it (nbdinfo, nbdcopy and qemu-img, all on GnuTLS) with pre-shared keys and with x509
// certificates both ways, and from a raw client for the protocol's rules: nothing is told or served
// in clear, a failed handshake ends only its own connection, the handshake limit covers TLS.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { GalleonFS, isGalleonError } from '../src/index.js'
import { NbdServer, parsePskFile, type NbdTlsOptions } from '../backends/nbd/index.js'
import { makeCertificates, type TestCertificates } from './support/tls-certificates.js'
import { CMD_READ, NbdClient, OPT_EXPORT_NAME, OPT_GO, OPT_LIST, OPT_STARTTLS, OPT_STRUCTURED_REPLY, REP_ACK, REP_ERR_INVALID, REP_ERR_TLS_REQD, REP_ERR_UNSUP, infoRequestData } from './support/nbd-client.js'

const exec = promisify(execFile)
const missing = (tool: string): string | undefined => ['/bin', '/usr/bin', '/usr/local/bin'].some((dir) => existsSync(join(dir, tool))) ? undefined : `${tool} is not installed (see .ci/run)`
const NO_OPENSSL = missing('openssl')
for (const tool of ['openssl', 'nbdinfo', 'nbdcopy', 'qemu-img']) {
  const why = missing(tool)
  if (why !== undefined) process.stdout.write(`# SKIP some NBD TLS tests: ${why}\n`)
}
const MiB = 1 << 20
const OPT_ABORT = 2

let root: string
let g: GalleonFS
let image: Uint8Array
const pskKey = randomBytes(32).toString('hex')
/** Made by openssl in before(). */
let certs: TestCertificates | undefined
const pem = (name: string): string => (certs as TestCertificates).pem[name] as string
let pskDir: string
let pskFile: string
let wrongPskFile: string

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-nbd-tls-'))
  g = await GalleonFS.open({ storagePath: join(root, 'storage') })
  await g.createVolume({ name: 'disk', sizeBytes: '8M' })
  image = new Uint8Array(randomBytes(8 * MiB))
  await g.write('disk', 0, image)
  await g.createSnapshot('disk', 'snap')
  await g.createVolume({ name: 'scratch', sizeBytes: '8M' })
  pskDir = join(root, 'psk')
  await mkdir(pskDir)
  // qemu's tls-creds-psk reads keys.psk in its directory; libnbd takes the file itself.
  pskFile = join(pskDir, 'keys.psk')
  await writeFile(pskFile, `alice:${pskKey}\n`, { mode: 0o600 })
  wrongPskFile = join(root, 'wrong.psk')
  await writeFile(wrongPskFile, `alice:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 })
  if (NO_OPENSSL === undefined) {
    const dir = join(root, 'certs')
    await mkdir(dir)
    certs = await makeCertificates(dir)
  }
})
after(async () => {
  await g?.close()
  await rm(root, { recursive: true, force: true })
})

async function withServer (options: NbdTlsOptions | undefined, body: (server: NbdServer) => Promise<void>, handshakeTimeoutMs?: number): Promise<void> {
  const server = await NbdServer.listen(g, { port: 0, ...(options === undefined ? {} : { tls: options }), ...(handshakeTimeoutMs === undefined ? {} : { handshakeTimeoutMs }) })
  try {
    await body(server)
  } finally {
    await server.close()
  }
}

/** Runs a client tool; resolves to its exit code and output (never rejects). */
async function run (tool: string, args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  return await new Promise((resolve) => {
    execFile(tool, args, { timeout: 60_000 }, (err, stdout, stderr) => { resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr }) })
  })
}

const pskUri = (server: NbdServer, name: string, file = pskFile): string => `nbds://alice@127.0.0.1:${server.port}/${name}?tls-psk-file=${file}`
const x509Uri = (server: NbdServer, name: string, dir = certs?.clientDir): string => `nbds://127.0.0.1:${server.port}/${name}?tls-certificates=${dir}`

describe('NBD over TLS with real clients', () => {
  it('pre-shared keys: nbdinfo and nbdcopy read and write over TLS; plaintext, a wrong key or an unknown identity are refused, and the server goes on serving', { skip: missing('nbdinfo') ?? missing('nbdcopy') }, async () => {
    await withServer({ psk: { alice: pskKey } }, async (server) => {
      const info = JSON.parse((await exec('nbdinfo', ['--json', pskUri(server, 'disk')])).stdout)
      assert.equal(info.TLS, true)
      assert.equal(info.exports[0]['export-size'], 8 * MiB)
      const listed = JSON.parse((await exec('nbdinfo', ['--list', '--json', pskUri(server, '')])).stdout)
      assert.deepEqual(listed.exports.map((e: { 'export-name': string }) => e['export-name']).sort(), ['disk', 'scratch'])
      // Out and in, byte for byte.
      const out = join(root, 'psk-out.raw')
      await exec('nbdcopy', [pskUri(server, 'disk'), out])
      assert.deepEqual(new Uint8Array(await readFile(out)), image)
      const other = new Uint8Array(randomBytes(8 * MiB))
      const input = join(root, 'psk-in.raw')
      await writeFile(input, other)
      await exec('nbdcopy', [input, pskUri(server, 'scratch')])
      assert.deepEqual(await g.read('scratch', 0, 8 * MiB), other)
      // Refused: in clear, with another key, as another identity.
      const plain = await run('nbdinfo', [`nbd://127.0.0.1:${server.port}/disk`])
      assert.notEqual(plain.code, 0, 'a client without TLS gets nothing')
      assert.doesNotMatch(plain.stdout, /export-size/)
      assert.notEqual((await run('nbdinfo', [pskUri(server, 'disk', wrongPskFile)])).code, 0, 'a wrong key fails the TLS handshake')
      const bobFile = join(root, 'bob.psk')
      await writeFile(bobFile, `bob:${pskKey}\n`, { mode: 0o600 })
      assert.notEqual((await run('nbdinfo', [`nbds://bob@127.0.0.1:${server.port}/disk?tls-psk-file=${bobFile}`])).code, 0, 'an identity the server does not know is refused')
      // The server is unharmed.
      assert.equal(JSON.parse((await exec('nbdinfo', ['--json', pskUri(server, 'disk@snap')])).stdout).exports[0].is_read_only, true)
    })
  })

  it('x509 with client certificates: nbdcopy and qemu-img copy in and out byte-exact; no client certificate, or one of another CA, is refused', { skip: NO_OPENSSL ?? missing('nbdcopy') ?? missing('qemu-img') }, async () => {
    await withServer({ cert: pem('server-cert'), key: pem('server-key'), ca: pem('ca-cert') }, async (server) => {
      const out = join(root, 'x509-out.raw')
      await exec('nbdcopy', [x509Uri(server, 'disk'), out])
      assert.deepEqual(new Uint8Array(await readFile(out)), image)
      const other = new Uint8Array(randomBytes(8 * MiB))
      const input = join(root, 'x509-in.raw')
      await writeFile(input, other)
      const creds = ['--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${certs?.clientDir}`]
      const target = `driver=nbd,host=127.0.0.1,port=${server.port},export=scratch,tls-creds=tls0`
      await exec('qemu-img', ['convert', '-n', '-f', 'raw', ...creds, '--target-image-opts', input, target])
      assert.deepEqual(await g.read('scratch', 0, 8 * MiB), other)
      const back = join(root, 'x509-back.raw')
      await exec('qemu-img', ['convert', '-O', 'raw', ...creds, '--image-opts', target, back])
      assert.deepEqual(new Uint8Array(await readFile(back)), other)
      assert.notEqual((await run('nbdinfo', [x509Uri(server, 'disk', certs?.caOnlyDir)])).code, 0, 'a client without a certificate is refused')
      // GnuTLS does not even send a certificate whose issuer the server does not name; clients that
      // do send one are refused too ('NBD TLS: who may get in' below).
      assert.notEqual((await run('nbdinfo', [x509Uri(server, 'disk', certs?.strangerDir)])).code, 0, 'a certificate another CA signed is refused')
      assert.equal(JSON.parse((await exec('nbdinfo', ['--json', x509Uri(server, 'disk')])).stdout).TLS, true, 'and the server still serves')
    })
  })

  it('qemu-img with pre-shared keys (tls-creds-psk), and a server certificate without client certificates', { skip: NO_OPENSSL ?? missing('qemu-img') ?? missing('nbdinfo') }, async () => {
    await withServer({ psk: { alice: pskKey } }, async (server) => {
      const { stdout } = await exec('qemu-img', ['info', '--output=json', '--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${pskDir},username=alice`, '--image-opts', `driver=nbd,host=127.0.0.1,port=${server.port},export=disk,tls-creds=tls0`])
      assert.equal(JSON.parse(stdout)['virtual-size'], 8 * MiB)
    })
    // No ca: any client that completes the handshake is served, with or without a certificate.
    await withServer({ cert: pem('server-cert'), key: pem('server-key') }, async (server) => {
      assert.equal(JSON.parse((await exec('nbdinfo', ['--json', x509Uri(server, 'disk', certs?.caOnlyDir)])).stdout).exports[0]['export-size'], 8 * MiB)
    })
  })
})

/** A raw client's TLS options for the pre-shared key `key` as `identity`. */
const rawPsk = (key: string, identity = 'alice'): { pskCallback: () => { identity: string, psk: Buffer }, checkServerIdentity: () => undefined } => ({ pskCallback: () => ({ identity, psk: Buffer.from(key, 'hex') }), checkServerIdentity: () => undefined })

async function reply (client: NbdClient): Promise<{ type: number, text: string }> {
  const r = await client.optionReply()
  return { type: r.type, text: r.data.toString() }
}

describe('NBD TLS from a raw client', () => {
  it('before STARTTLS every option but ABORT gets TLS_REQD and EXPORT_NAME ends the session; after it, haggling and I/O run over TLS, and a second STARTTLS is invalid', async () => {
    await withServer({ psk: { alice: pskKey } }, async (server) => {
      const clear = await NbdClient.connect(server.port)
      await clear.hello()
      for (const [option, data] of [[OPT_LIST, undefined], [OPT_STRUCTURED_REPLY, undefined], [OPT_GO, infoRequestData('disk')], [6, infoRequestData('disk')], [999, undefined]] as Array<[number, Buffer | undefined]>) {
        clear.option(option, data)
        const answer = await reply(clear)
        assert.equal(answer.type, REP_ERR_TLS_REQD, `option ${option}`)
        assert.match(answer.text, /requires TLS: send NBD_OPT_STARTTLS first/)
      }
      clear.option(OPT_STARTTLS, Buffer.from('x'))
      assert.equal((await reply(clear)).type, REP_ERR_INVALID, 'STARTTLS takes no data')
      clear.option(OPT_EXPORT_NAME, Buffer.from('disk'))
      assert.equal(await clear.closedByServer(), true, 'EXPORT_NAME in clear cannot be refused, so the session ends')

      const aborting = await NbdClient.connect(server.port)
      await aborting.hello()
      aborting.option(OPT_ABORT)
      assert.equal((await reply(aborting)).type, REP_ACK)
      assert.equal(await aborting.closedByServer(), true)

      const raw = await NbdClient.connect(server.port)
      await raw.hello()
      raw.option(OPT_STARTTLS)
      assert.equal((await reply(raw)).type, REP_ACK)
      const client = await raw.startTls(rawPsk(pskKey))
      assert.deepEqual((await client.list()).sort(), ['disk', 'scratch'])
      client.option(OPT_STARTTLS)
      const again = await reply(client)
      assert.equal(again.type, REP_ERR_INVALID)
      assert.match(again.text, /already negotiated/)
      const { size } = await client.go('disk')
      assert.equal(size, 8 * MiB)
      client.socket.write(NbdClient.requestFrame(CMD_READ, 7, 3 * 4096, 8192))
      const got = await client.reply(8192)
      assert.equal(got.error, 0)
      assert.deepEqual(new Uint8Array(got.data), image.subarray(3 * 4096, 5 * 4096))
      client.socket.destroy()
    })
  })

  it('a failed handshake (a wrong key) ends only that connection; a client that stalls after the ACK is cut off at the handshake limit', async () => {
    await withServer({ psk: { alice: pskKey } }, async (server) => {
      const open = await NbdClient.connect(server.port)
      await open.hello()
      open.option(OPT_STARTTLS)
      assert.equal((await reply(open)).type, REP_ACK)
      const good = await open.startTls(rawPsk(pskKey))
      const wrong = await NbdClient.connect(server.port)
      await wrong.hello()
      wrong.option(OPT_STARTTLS)
      assert.equal((await reply(wrong)).type, REP_ACK)
      await assert.rejects(wrong.startTls(rawPsk(randomBytes(32).toString('hex'))))
      assert.equal(await wrong.closedByServer(), true)
      assert.deepEqual((await good.list()).sort(), ['disk', 'scratch'], 'the other session goes on')
      good.socket.destroy()
    })
    await withServer({ psk: { alice: pskKey } }, async (server) => {
      const stalled = await NbdClient.connect(server.port)
      await stalled.hello()
      stalled.option(OPT_STARTTLS)
      assert.equal((await reply(stalled)).type, REP_ACK)
      assert.equal(await stalled.closedByServer(5_000), true, 'the TLS handshake counts toward the handshake limit')
    }, 300)
  })

  it('a server without TLS answers STARTTLS with UNSUP saying so; a client that sends data right behind STARTTLS is disconnected', async () => {
    await withServer(undefined, async (server) => {
      const client = await NbdClient.connect(server.port)
      await client.hello()
      client.option(OPT_STARTTLS)
      const answer = await reply(client)
      assert.equal(answer.type, REP_ERR_UNSUP)
      assert.match(answer.text, /started without TLS/)
      assert.deepEqual((await client.list()).sort(), ['disk', 'scratch'], 'and the session goes on in clear')
      client.socket.destroy()
    })
    await withServer({ psk: { alice: pskKey } }, async (server) => {
      const eager = await NbdClient.connect(server.port)
      await eager.hello()
      // STARTTLS and, in the same write, bytes that cannot be TLS the server may take over.
      eager.socket.write(Buffer.concat([NbdClient.optionFrame(OPT_STARTTLS), NbdClient.optionFrame(OPT_LIST)]))
      assert.equal(await eager.closedByServer(), true)
      const next = await NbdClient.connect(server.port)
      await next.hello()
      next.option(OPT_STARTTLS)
      assert.equal((await reply(next)).type, REP_ACK, 'the server goes on')
      next.socket.destroy()
    })
  })

  it('setTls changes the credentials of new connections only; close() ends a TLS session in transmission', async () => {
    await withServer({ psk: { alice: pskKey } }, async (server) => {
      assert.equal(server.tls, true)
      const early = await NbdClient.connect(server.port)
      await early.hello()
      early.option(OPT_STARTTLS)
      assert.equal((await reply(early)).type, REP_ACK)
      const before = await early.startTls(rawPsk(pskKey))
      const renewed = randomBytes(32).toString('hex')
      server.setTls({ psk: { alice: renewed } })
      const connectWith = async (key: string): Promise<NbdClient> => {
        const raw = await NbdClient.connect(server.port)
        await raw.hello()
        raw.option(OPT_STARTTLS)
        assert.equal((await reply(raw)).type, REP_ACK)
        return await raw.startTls(rawPsk(key))
      }
      await assert.rejects(connectWith(pskKey), 'the old key no longer opens new sessions')
      const after = await connectWith(renewed)
      assert.deepEqual((await after.list()).sort(), ['disk', 'scratch'])
      assert.deepEqual((await before.list()).sort(), ['disk', 'scratch'], 'the session made with the old key goes on')
      after.socket.destroy()
      // Bad options change nothing.
      assert.throws(() => { server.setTls({ psk: { alice: 'abc' } }) }, (err: unknown) => isGalleonError(err, 'INVALID_ARGUMENT'))
      assert.equal(server.tls, true)
      // A TLS session in transmission: served, then ended by close().
      await before.go('disk')
      before.socket.write(NbdClient.requestFrame(CMD_READ, 9, 0, 65536))
      const answered = await before.reply(65536)
      assert.equal(answered.error, 0)
      assert.deepEqual(new Uint8Array(answered.data), image.subarray(0, 65536))
      await server.close()
      assert.equal(await before.closedByServer(), true)
      // TLS off: plain sessions again.
      const plainServer = await NbdServer.listen(g, { port: 0, tls: { psk: { alice: pskKey } } })
      try {
        plainServer.setTls(undefined)
        assert.equal(plainServer.tls, false)
        const plain = await NbdClient.connect(plainServer.port)
        await plain.hello()
        assert.deepEqual((await plain.list()).sort(), ['disk', 'scratch'])
        plain.socket.destroy()
      } finally { await plainServer.close() }
    })
  })
})

describe('NBD TLS options', () => {
  const refused = async (tls: unknown, ...parts: RegExp[]): Promise<void> => {
    await assert.rejects(NbdServer.listen(g, { port: 0, tls: tls as NbdTlsOptions }), (err: unknown) => {
      assert.ok(isGalleonError(err, 'INVALID_ARGUMENT'), String(err))
      for (const part of parts) assert.match(err.message, part)
      return true
    })
  }

  it('refuses malformed credentials with INVALID_ARGUMENT naming the problem, before listening', async () => {
    await refused(null, /tls must be an object/)
    await refused({ psk: { alice: pskKey }, verify: true }, /no option "verify"/)
    await refused({}, /needs credentials/)
    await refused({ psk: {} }, /names no identity/)
    await refused({ psk: { alice: 'abcd' } }, /has 2 bytes; use at least 16/)
    await refused({ psk: { alice: 'xyz!' } }, /must be hex digits/)
    await refused({ psk: { alice: 42 } }, /must be hex text or bytes/)
    await refused({ psk: { 'a:b': pskKey } }, /without ":"/)
    await refused({ psk: { '': pskKey } }, /must be 1 to 128 bytes/)
    await refused({ cert: '/etc/ssl/cert.pem', key: '/etc/ssl/key.pem' }, /tls.cert must be PEM text.*readFileSync/)
    if (NO_OPENSSL !== undefined) return
    await refused({ cert: pem('server-cert') }, /tls.key is missing/)
    await refused({ key: pem('server-key') }, /tls.cert is missing/)
    await refused({ ca: pem('ca-cert'), psk: { alice: pskKey } }, /tls.ca checks the clients' certificates.*give cert and key/)
    await refused({ cert: pem('server-cert'), key: pem('client-key') }, /the TLS credentials were refused: .*key belongs to cert/)
  })

  it('parsePskFile reads identity:hexkey lines as psktool writes them, and names the line of a bad one', () => {
    assert.deepEqual(parsePskFile(`# keys\nalice:${pskKey}\n\nbob:${pskKey.toUpperCase()}\r\n`), { alice: pskKey, bob: pskKey.toUpperCase() })
    const bad = (text: string, pattern: RegExp): void => { assert.throws(() => parsePskFile(text, 'keys.psk'), (err: unknown) => isGalleonError(err, 'INVALID_ARGUMENT') && pattern.test(err.message)) }
    bad(`alice:${pskKey}\n${pskKey}\n`, /keys.psk, line 2: expected identity:hexkey/)
    bad(`alice:${pskKey}\nalice:${pskKey}\n`, /line 2: the identity "alice" is given twice/)
    bad('alice:12\n', /keys.psk, line 1: the pre-shared key of "alice" has 1 bytes/)
    bad('# nothing\n\n', /holds no key/)
  })
})

describe('NBD TLS: who may get in', () => {
  /** A raw client through NBD_OPT_STARTTLS and its TLS handshake (which, in TLS 1.3, ends on the client's side before the server has checked the client's certificate). */
  const upgraded = async (server: NbdServer, options: Parameters<NbdClient['startTls']>[0]): Promise<NbdClient> => {
    const raw = await NbdClient.connect(server.port)
    await raw.hello()
    raw.option(OPT_STARTTLS)
    assert.equal((await reply(raw)).type, REP_ACK)
    return await raw.startTls(options)
  }
  /** Whether the server answers NBD_OPT_LIST on `client` (it must not, for a client it refused). */
  const listed = async (client: NbdClient): Promise<boolean> => {
    client.option(OPT_LIST)
    const head = await client.read(20, 2_000)
    client.socket.destroy()
    return head !== undefined
  }

  it('with a CA, a client certificate the CA did not sign is refused even when the client sends it (self-signed, another CA, a forged CA of the same name)', { skip: NO_OPENSSL }, async () => {
    const dir = join(root, 'forged')
    await mkdir(dir)
    // A CA of the attacker's own with the real CA's name (CN=ca): GnuTLS offers a certificate whose
    // issuer name the server's CertificateRequest lists, so nbdinfo sends it.
    const openssl = async (args: string[]): Promise<void> => { await exec('openssl', args, { cwd: dir }) }
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
    await openssl(['req', '-x509', ...ec, '-keyout', 'forged-ca-key.pem', '-out', 'forged-ca-cert.pem', '-days', '1', '-subj', '/CN=ca'])
    await openssl(['req', ...ec, '-keyout', 'client-key.pem', '-out', 'client.csr', '-subj', '/CN=mallory'])
    await writeFile(join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n')
    await openssl(['x509', '-req', '-in', 'client.csr', '-CA', 'forged-ca-cert.pem', '-CAkey', 'forged-ca-key.pem', '-CAcreateserial', '-out', 'client-cert.pem', '-days', '1', '-extfile', 'client.ext'])
    await openssl(['req', '-x509', ...ec, '-keyout', 'self-key.pem', '-out', 'self-cert.pem', '-days', '1', '-subj', '/CN=self'])
    await writeFile(join(dir, 'ca-cert.pem'), pem('ca-cert'))
    const forged = { cert: await readFile(join(dir, 'client-cert.pem'), 'utf8'), key: await readFile(join(dir, 'client-key.pem'), 'utf8') }
    const selfSigned = { cert: await readFile(join(dir, 'self-cert.pem'), 'utf8'), key: await readFile(join(dir, 'self-key.pem'), 'utf8') }
    await withServer({ cert: pem('server-cert'), key: pem('server-key'), ca: pem('ca-cert') }, async (server) => {
      const client = (cert: string, key: string): Parameters<NbdClient['startTls']>[0] => ({ ca: pem('ca-cert'), cert, key, servername: 'localhost' })
      assert.equal(await listed(await upgraded(server, client(pem('client-cert'), pem('client-key')))), true, 'a certificate the CA signed is served')
      assert.equal(await listed(await upgraded(server, client(pem('stranger-cert'), pem('stranger-key')))), false, 'a certificate of another CA is refused')
      assert.equal(await listed(await upgraded(server, client(selfSigned.cert, selfSigned.key))), false, 'a self-signed certificate is refused')
      assert.equal(await listed(await upgraded(server, client(forged.cert, forged.key))), false, 'a certificate of a forged CA named like the real one is refused')
      if (missing('nbdinfo') === undefined) {
        const forgedInfo = await run('nbdinfo', ['--json', `nbds://127.0.0.1:${server.port}/disk?tls-certificates=${dir}`])
        assert.notEqual(forgedInfo.code, 0, 'nbdinfo with the forged certificate is refused')
        assert.doesNotMatch(forgedInfo.stdout, /export-size/)
        assert.equal(JSON.parse((await exec('nbdinfo', ['--json', x509Uri(server, 'disk')])).stdout).TLS, true, 'and the server still serves')
      }
      // The refused sessions are gone, not parked (their connections closed).
      for (const deadline = Date.now() + 5_000; server.connections > 0 && Date.now() < deadline;) await new Promise((resolve) => setTimeout(resolve, 20))
      assert.equal(server.connections, 0)
    })
  })

  it('a certificate and pre-shared keys together: clients with the key (TLS 1.3, also GnuTLS\'s nbdinfo, which prefers a SHA-384 suite) and clients with a certificate both get in', { skip: NO_OPENSSL }, async () => {
    await withServer({ cert: pem('server-cert'), key: pem('server-key'), psk: { alice: pskKey } }, async (server) => {
      assert.equal(await listed(await upgraded(server, rawPsk(pskKey))), true, 'a TLS 1.3 client with the key')
      assert.equal(await listed(await upgraded(server, { ca: pem('ca-cert'), servername: 'localhost' })), true, 'a client that checks the server certificate')
      if (missing('nbdinfo') === undefined) {
        const withKey = await run('nbdinfo', ['--json', pskUri(server, 'disk')])
        assert.equal(withKey.code, 0, withKey.stderr)
        assert.equal(JSON.parse(withKey.stdout).exports[0]['export-size'], 8 * MiB)
        assert.equal((await run('nbdinfo', [pskUri(server, 'disk', wrongPskFile)])).code === 0, false, 'a wrong key is still refused')
        assert.equal((await run('nbdinfo', ['--json', x509Uri(server, 'disk', certs?.caOnlyDir)])).code, 0, 'and x509 clients still get in')
      }
    })
  })

  it('setTls: a replaced key no longer opens a session begun before (STARTTLS uses the current credentials), while each connection keeps the TLS mode it began in', async () => {
    await withServer({ psk: { alice: pskKey } }, async (server) => {
      const early = await NbdClient.connect(server.port)
      await early.hello()
      const renewed = randomBytes(32).toString('hex')
      server.setTls({ psk: { alice: renewed } })
      early.option(OPT_STARTTLS)
      assert.equal((await reply(early)).type, REP_ACK)
      const withOldKey = await early.startTls(rawPsk(pskKey)).then((client) => client, () => undefined)
      assert.equal(withOldKey === undefined || !(await listed(withOldKey)), true, 'the replaced key opens nothing')
      const other = await NbdClient.connect(server.port)
      await other.hello()
      server.setTls({ psk: { alice: pskKey } })
      server.setTls({ psk: { alice: renewed } })
      other.option(OPT_STARTTLS)
      assert.equal((await reply(other)).type, REP_ACK)
      const current = await other.startTls(rawPsk(renewed))
      assert.deepEqual((await current.list()).sort(), ['disk', 'scratch'], 'the current key does')
      current.socket.destroy()
      // TLS turned off: a connection made while it was on still requires it (one mode per connection).
      const forced = await NbdClient.connect(server.port)
      await forced.hello()
      server.setTls(undefined)
      forced.option(OPT_LIST)
      assert.equal((await reply(forced)).type, REP_ERR_TLS_REQD)
      forced.option(OPT_STARTTLS)
      assert.equal((await reply(forced)).type, REP_ACK)
      const upgraded = await forced.startTls(rawPsk(renewed))
      assert.deepEqual((await upgraded.list()).sort(), ['disk', 'scratch'])
      upgraded.socket.destroy()
    })
  })

  it('setTls turning TLS on ends the clear connections still in their handshake (they would be served in clear), not those being served', async () => {
    await withServer(undefined, async (server) => {
      const negotiating = await NbdClient.connect(server.port)
      await negotiating.hello()
      assert.deepEqual((await negotiating.list()).sort(), ['disk', 'scratch'], 'a clear session, options answered')
      const serving = await NbdClient.connect(server.port)
      await serving.hello()
      await serving.go('disk')
      // TLS turned off again stays off for them: only turning it on ends anything.
      server.setTls(undefined)
      assert.equal(await negotiating.closedByServer(300), false)
      server.setTls({ psk: { alice: pskKey } })
      assert.equal(await negotiating.closedByServer(), true, 'the session still haggling in clear is ended')
      serving.socket.write(NbdClient.requestFrame(CMD_READ, 1, 0, 4096))
      const answered = await serving.reply(4096)
      assert.equal(answered.error, 0, 'the clear session in transmission goes on')
      assert.deepEqual(new Uint8Array(answered.data), image.subarray(0, 4096))
      serving.socket.destroy()
      // Its client reconnects, and is now asked for TLS.
      const again = await NbdClient.connect(server.port)
      await again.hello()
      again.option(OPT_LIST)
      assert.equal((await reply(again)).type, REP_ERR_TLS_REQD)
      again.option(OPT_STARTTLS)
      assert.equal((await reply(again)).type, REP_ACK)
      const secured = await again.startTls(rawPsk(pskKey))
      assert.deepEqual((await secured.list()).sort(), ['disk', 'scratch'])
      secured.socket.destroy()
    })
  })
})
