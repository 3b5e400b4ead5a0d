// The daemon's HTTP API as an attacker and a careless client see it: raw HTTP against a real
// `galleonfs -d` process (tokens, token files, bodies over the limit, malformed requests, names
// with path tricks, connections that go away), checked for a JSON refusal and no change to state.

import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { chmod, chown, lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { connect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { startDaemonProcess, type RunningDaemon } from './support/daemon.js'
import { freePort } from './support/net.js'
import { until } from './support/wait.js'
import { answered, rawRequest, type RawAnswer } from './support/raw-http.js'

let root: string
let daemon: RunningDaemon
let token: string
let host: string
let port: number
const runtime = (): string => join(root, 'run', 'galleonfs')
const victim = (): string => join(root, 'victim.txt')

/** Sends `request` on a new connection (TOKEN replaced by the token) and collects the answer until `done` says so, or the daemon closes. */
async function raw (request: string | Buffer, done: (text: string) => boolean = answered, then?: (socket: Socket) => void): Promise<RawAnswer> {
  return await rawRequest({ host, port, token }, request, { done, ...(then === undefined ? {} : { then }), timeoutMs: 15_000 })
}

/** The status and the JSON error of a raw answer; fails on a body that is not a JSON error or holds a stack trace. */
function refusal (answer: RawAnswer): { status: number, code: string, message: string } {
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(answer.text)?.[1])
  const body = answer.text.slice(answer.text.indexOf('\r\n\r\n') + 4)
  assert.doesNotMatch(body, /\n\s+at /, 'no stack trace')
  const parsed = JSON.parse(body) as { error: { code: string, message: string } }
  return { status, code: parsed.error.code, message: parsed.error.message }
}

/** An API call with fetch; the parsed JSON answer (an error's is { error: { code, message } }). */
async function api (method: string, path: string, body?: unknown, headers: Record<string, string> = { authorization: `Bearer ${token}` }): Promise<{ status: number, json: any }> {
  const response = await fetch(`http://${host}:${port}${path}`, { method, headers, signal: AbortSignal.timeout(20_000), ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }) })
  const text = await response.text()
  assert.doesNotMatch(text, /\n\s+at /, 'no stack trace')
  return { status: response.status, json: text === '' ? undefined : JSON.parse(text) }
}

/** Everything a refused request must not change: volumes, snapshots, pools, classes, policies, mounts and the bytes of v1. */
async function state (): Promise<string> {
  const parts = await Promise.all([
    api('GET', '/v1/volumes'), api('GET', '/v1/volumes/v1/snapshots'), api('GET', '/v1/pools'), api('GET', '/v1/storage-classes'),
    api('GET', '/v1/backup-policies'), api('GET', '/v1/mounts'), api('POST', '/v1/volumes/v1/read', { offset: 0, length: 65536 })
  ])
  return JSON.stringify(parts.map((part) => part.json))
}

const logged = (message: string): Array<Record<string, unknown>> => daemon.logs.map((line) => JSON.parse(line) as Record<string, unknown>).filter((entry) => entry.message === message)

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-http-audit-'))
  // A token kept from before, restored with a mode others can read; a runtime directory left open
  // to everyone, with a link where the token file goes (planted by someone else).
  await mkdir(join(root, 's'))
  token = randomBytes(32).toString('hex')
  await writeFile(join(root, 's', 'ipc.token'), token + '\n', { mode: 0o644 })
  await chmod(join(root, 's', 'ipc.token'), 0o644)
  port = await freePort()
  host = '127.0.0.1'
  await mkdir(runtime(), { recursive: true })
  await chmod(runtime(), 0o777)
  await writeFile(victim(), 'precious\n')
  await symlink(victim(), join(runtime(), `token-127.0.0.1_${port}`))
  daemon = await startDaemonProcess(['--ipc-address', `127.0.0.1:${port}`, '--storage-path', join(root, 's'), '--log-level', 'debug'], { cwd: root, env: { ...process.env, XDG_RUNTIME_DIR: join(root, 'run') } })
  assert.equal((await api('POST', '/v1/volumes', { name: 'v1', sizeBytes: 1 << 20, storageClass: 'fast-local-ssd' })).status, 200)
  assert.equal((await api('POST', '/v1/volumes/v1/write', { offset: 0, data: Buffer.from('galleon').toString('base64') })).status, 204)
  assert.equal((await api('POST', '/v1/volumes/v1/snapshots', { name: 'first' })).status, 200)
})

after(async () => {
  if (daemon !== undefined && daemon.child.exitCode === null) {
    daemon.child.kill('SIGKILL')
    await daemon.exited
  }
  await rm(root, { recursive: true, force: true })
})

describe('the daemon HTTP API under attack and misuse', () => {
  it('keeps its token files private: the kept token at 0600, the runtime directory 0700, a planted link replaced, not followed', async () => {
    assert.equal((await lstat(join(root, 's', 'ipc.token'))).mode & 0o777, 0o600)
    assert.equal((await lstat(runtime())).mode & 0o777, 0o700)
    assert.equal(await readFile(victim(), 'utf8'), 'precious\n')
    const runtimeToken = await lstat(join(runtime(), `token-127.0.0.1_${port}`))
    assert.ok(runtimeToken.isFile())
    assert.equal(runtimeToken.mode & 0o777, 0o600)
    assert.equal((await readFile(join(runtime(), `token-127.0.0.1_${port}`), 'utf8')).trim(), token)
    // A loopback API draws no warning about the network.
    assert.equal(logged('the API listens on an address other machines can reach, in plain HTTP: its token and the data of reads and writes cross the network unencrypted; keep --ipc-address on 127.0.0.1 (or ::1) and reach it through SSH or a TLS-terminating proxy').length, 0)
  })

  it('refuses missing and wrong tokens; takes the Bearer scheme in any case', async () => {
    const wrongSameLength = token.replace(/^./, (c) => c === 'a' ? 'b' : 'a')
    for (const authorization of [undefined, '', 'Bearer', `Basic ${token}`, `Bearer ${wrongSameLength}`, `Bearer ${token}x`, `Bearer ${token.slice(1)}`, `Bearer ${token} ${token}`]) {
      const answer = await api('GET', '/v1/status', undefined, authorization === undefined ? {} : { authorization })
      assert.deepEqual([answer.status, answer.json.error.code], [401, 'UNAUTHORIZED'], String(authorization))
    }
    for (const authorization of [`bearer ${token}`, `BEARER ${token}`, `Bearer  ${token} `]) {
      assert.equal((await api('GET', '/v1/status', undefined, { authorization })).status, 200, authorization)
    }
  })

  it('answers what the HTTP parser refuses in JSON: unknown methods, garbage, oversized headers, ambiguous lengths', async () => {
    const cases: Array<[string, number, string]> = [
      ['FROB /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\n\r\n', 400, 'BAD_REQUEST'],
      ['hello there\r\n\r\n', 400, 'BAD_REQUEST'],
      [`GET /v1/volumes/${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\n\r\n`, 431, 'TOO_LARGE'],
      [`GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Filler: ${'b'.repeat(20_000)}\r\n\r\n`, 431, 'TOO_LARGE'],
      ['POST /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400, 'BAD_REQUEST'],
      ['POST /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\nContent-Length: ten\r\n\r\n{}', 400, 'BAD_REQUEST']
    ]
    const before = await state()
    for (const [request, status, code] of cases) {
      const answer = await raw(request)
      const { status: got, code: gotCode, message } = refusal(answer)
      assert.deepEqual([got, gotCode], [status, code], request.slice(0, 40))
      assert.ok(message.length > 20)
    }
    // Methods and paths the API does not have: 404 naming them (HEAD gets the status and no body).
    assert.deepEqual((await api('OPTIONS', '/v1/status')).json.error.code, 'NOT_FOUND')
    const head = await raw('HEAD /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\n\r\n', (text) => text.includes('\r\n\r\n'))
    assert.match(head.text, /^HTTP\/1\.1 404 /)
    assert.equal(await state(), before)
  })

  it('refuses a body over the limit as soon as it knows, chunked or not, and closes a connection that keeps sending', async () => {
    const before = await state()
    // A Content-Length over the limit: 413 before any of the body was sent.
    const declared = refusal(await raw('POST /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\nContent-Length: 100000000\r\n\r\n'))
    assert.deepEqual([declared.status, declared.code], [413, 'TOO_LARGE'])
    // Chunked with no end in sight: 413 once the limit is passed, without the last chunk.
    const chunk = Buffer.alloc(64 << 10, 0x20)
    const chunked = refusal(await raw('POST /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\nTransfer-Encoding: chunked\r\n\r\n', answered, (socket) => {
      for (let i = 0; i < 24; i++) socket.write(`${chunk.byteLength.toString(16)}\r\n${chunk.toString('latin1')}\r\n`)
    }))
    assert.deepEqual([chunked.status, chunked.code], [413, 'TOO_LARGE'])
    // A refused request's body (here: no token) is read and dropped only up to a bound: the
    // connection is closed while the client is still sending (not all 90 MiB are taken).
    let sent = 0
    const flood = await raw('POST /v1/volumes HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n', () => false, (socket) => {
      const mebibyte = Buffer.alloc(1 << 20, 0x78)
      const more = (): void => {
        while (sent < 90 && !socket.destroyed) {
          sent++
          if (!socket.write(mebibyte)) { socket.once('drain', more); return }
        }
      }
      more()
    })
    assert.ok(flood.closed)
    assert.ok(sent < 90, `the daemon took ${sent} MiB of a refused body`)
    assert.equal(refusal(flood).code, 'UNAUTHORIZED')
    assert.equal(await state(), before)
  })

  it('refuses malformed JSON and fields of the wrong shape on every route with 4xx naming the problem, changing nothing', async () => {
    const before = await state()
    const failures = logged('request failed').length
    const requests: Array<[string, string, unknown]> = [
      ['POST', '/v1/volumes', '{"name": "x", '],
      ['POST', '/v1/volumes', '[1, 2]'],
      ['POST', '/v1/volumes', 'null'],
      ['POST', '/v1/volumes', '"v2"'],
      ['POST', '/v1/volumes', { name: 'v2', sizeBytes: -1 }],
      ['POST', '/v1/volumes', { name: 'v2', sizeBytes: 1e300 }],
      ['POST', '/v1/volumes', { name: 'v2', sizeBytes: 'lots' }],
      ['POST', '/v1/volumes', { name: '../v2', sizeBytes: 4096 }],
      ['POST', '/v1/volumes', { name: 'v\u00002', sizeBytes: 4096 }],
      ['POST', '/v1/volumes', { name: 'v'.repeat(5000), sizeBytes: 4096 }],
      ['POST', '/v1/volumes', { name: 'v2', sizeBytes: 4096, replicas: '1' }],
      ['POST', '/v1/volumes', '{"name": "v2", "sizeBytes": 4096, "__proto__": {"admin": true}}'],
      ['POST', '/v1/volumes/v1/write', { offset: -1, data: 'QUJD' }],
      ['POST', '/v1/volumes/v1/write', { offset: 0.5, data: 'QUJD' }],
      ['POST', '/v1/volumes/v1/write', { offset: '0', data: 'QUJD' }],
      ['POST', '/v1/volumes/v1/write', { offset: 2 ** 60, data: 'QUJD' }],
      ['POST', '/v1/volumes/v1/write', { offset: (1 << 20) - 1, data: 'QUJD' }],
      ['POST', '/v1/volumes/v1/write', { offset: 0, data: 'not base64!' }],
      ['POST', '/v1/volumes/v1/write', { offset: 0, data: 12 }],
      ['POST', '/v1/volumes/v1/write', { offset: 0, data: 'QUJD', concern: 'Whenever' }],
      ['POST', '/v1/volumes/v1/read', { offset: 0, length: -8 }],
      ['POST', '/v1/volumes/v1/read', { offset: 0, length: 1e300 }],
      ['POST', '/v1/volumes/v1/read', { offset: 0, length: '8' }],
      ['POST', '/v1/volumes/v1/read', { offset: 1 << 20, length: 1 }],
      ['POST', '/v1/volumes/v1/expand', { sizeBytes: -1 }],
      ['POST', '/v1/volumes/v1/expand', { sizeBytes: 'huge' }],
      ['POST', '/v1/volumes/v1/clone', { name: '../../etc' }],
      ['POST', '/v1/volumes/v1/snapshots', { name: '../first' }],
      ['POST', '/v1/volumes/v1/snapshots', { name: 7 }],
      ['PUT', '/v1/volumes/v1/qos', { readIops: -1 }],
      ['POST', '/v1/pools', { name: '../pool' }],
      ['POST', '/v1/pools', { name: 'pool', capacityBytes: '-5' }],
      ['POST', '/v1/storage-classes', { name: '../class' }],
      ['POST', '/v1/backups', { volume: 'v1', target: 'relative/dir' }],
      ['POST', '/v1/backup-policies', { name: 5 }],
      ['POST', '/v1/unmount', { target: '../..' }],
      ['POST', '/v1/cluster/join', { address: 'nowhere' }],
      ['DELETE', '/v1/volumes/v1?force=yes', undefined],
      // Names in the path: dot segments, encoded separators, NUL, long names, broken escapes.
      ['DELETE', '/v1/volumes/%2e%2e', undefined],
      ['DELETE', '/v1/volumes/..%2Fv1', undefined],
      ['DELETE', '/v1/volumes/v1%00', undefined],
      ['DELETE', `/v1/volumes/${'v'.repeat(4000)}`, undefined],
      ['DELETE', '/v1/volumes/%E0%A4%A', undefined],
      ['DELETE', '/v1/volumes/v1/snapshots/..%2F..%2Ffirst', undefined],
      ['POST', '/v1/volumes/v1/snapshots/%2e%2e/restore', undefined],
      ['PATCH', '/v1/pools/..%2Fpool', {}],
      ['GET', '/v1/volumes/v1/a/b/c/d', undefined]
    ]
    for (const [method, path, body] of requests) {
      const answer = await api(method, path, body)
      assert.ok(answer.status >= 400 && answer.status < 500, `${method} ${path} ${JSON.stringify(body)}: ${answer.status}`)
      assert.equal(typeof answer.json?.error?.code, 'string', `${method} ${path}`)
      assert.ok((answer.json.error.message as string).length > 10, `${method} ${path}`)
    }
    assert.equal(await state(), before)
    assert.equal(logged('request failed').length, failures)
  })

  it('refuses a body field its route does not read with 400 naming it and the fields it takes, changing nothing', async () => {
    const before = await state()
    const requests: Array<[string, string, unknown, RegExp]> = [
      // Before: a clone of the live volume (the misspelt snapshot ignored).
      ['POST', '/v1/volumes/v1/clone', { name: 'c1', snapshotName: 'first' }, /unknown field "snapshotName" for POST \/v1\/volumes\/<name>\/clone; it takes name, snapshot/],
      ['POST', '/v1/backups', { volume: 'v1', targt: join(root, 'backups') }, /unknown field "targt" .*it takes volume, strategy, target/],
      ['POST', '/v1/volumes/v1/snapshots', { name: 'second', labels: { a: 'b' } }, /unknown field "labels"/],
      ['POST', '/v1/volumes/v1/write', { offset: 0, data: 'QUJD', concen: 'WriteDurable' }, /unknown field "concen"/],
      ['POST', '/v1/volumes/v1/flush', { force: true }, /takes no body fields, got "force"/]
    ]
    for (const [method, path, body, message] of requests) {
      const answer = await api(method, path, body)
      assert.equal(answer.status, 400, `${method} ${path} ${JSON.stringify(body)}: ${JSON.stringify(answer.json)}`)
      assert.equal(answer.json?.error?.code, 'INVALID_ARGUMENT')
      assert.match(answer.json.error.message as string, message)
    }
    assert.equal(await state(), before)
  })

  it('answers a backup to a target that cannot be made (under /proc) instead of hanging in mkdir', { timeout: 30_000, skip: existsSync('/proc/self') ? false : 'no /proc on this machine' }, async () => {
    const before = await state()
    const answer = await api('POST', '/v1/backups', { volume: 'v1', target: '/proc/galleonfs-audit/backups' })
    assert.equal(answer.json.error.code, 'IO_ERROR')
    assert.match(answer.json.error.message, /could not create the backup directory \/proc\/galleonfs-audit\/backups/)
    assert.equal(await state(), before)
  })

  it('keeps serving with many connections open and clients leaving mid-request or mid-answer, and holds on to none of them', async () => {
    const fds = async (): Promise<number> => (await readdir(`/proc/${daemon.child.pid}/fd`)).length
    const baseline = await fds()
    const failures = logged('request failed').length
    // Clients that stop in the middle of their headers or their body, and others that go away
    // before reading their answer.
    const sockets: Socket[] = []
    for (let i = 0; i < 150; i++) {
      const socket = connect(port, host)
      socket.on('error', () => {})
      socket.write(i % 2 === 0 ? 'GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthor' : `POST /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Length: 100\r\n\r\n{"na`)
      sockets.push(socket)
    }
    const readers = Array.from({ length: 20 }, () => {
      const socket = connect(port, host)
      socket.on('error', () => {})
      socket.write(`POST /v1/volumes/v1/read HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Length: 29\r\n\r\n{"offset":0,"length":1048576}`)
      socket.pause()
      return socket
    })
    const before = await state()
    assert.equal((await api('GET', '/v1/status')).status, 200)
    await until('the daemon has every connection', async () => await fds() >= baseline + 150)
    for (const socket of [...sockets, ...readers]) socket.destroy()
    await until('the daemon let go of every connection', async () => await fds() <= baseline, 15_000)
    assert.equal(await state(), before)
    // Gone mid-body is the client's doing: the request ends cancelled, not as the daemon's error.
    await until('the cut-off requests ended', () => daemon.logs.filter((line) => line.includes('"cancelled":true') && line.includes('"url":"/v1/volumes"')).length >= 75)
    assert.equal(logged('request failed').length, failures)
  })

  it('stops promptly after all of it', { timeout: 40_000 }, async () => {
    daemon.child.kill('SIGTERM')
    assert.equal(await daemon.exited, 0)
  })
})

describe('where the daemon listens and leaves its token', () => {
  it('warns when the API listens beyond loopback without TLS', async () => {
    const dir = await mkdtemp(join(root, 'wide-'))
    const wide = await startDaemonProcess(['--ipc-address', '0.0.0.0:0', '--storage-path', join(dir, 's')], { cwd: dir, env: { ...process.env, XDG_RUNTIME_DIR: join(dir, 'run') } })
    try {
      const warnings = wide.logs.map((line) => JSON.parse(line) as { level: string, message: string }).filter((entry) => entry.level === 'warn' && /plain HTTP/.test(entry.message))
      assert.equal(warnings.length, 1)
      assert.match(warnings[0]?.message ?? '', /keep --ipc-address on 127\.0\.0\.1/)
    } finally {
      wide.child.kill('SIGTERM')
      await wide.exited
    }
  })

  it('refuses to leave its token in a runtime directory another user controls', { skip: process.getuid?.() === 0 ? false : 'needs root to give a directory to another user' }, async () => {
    const dir = await mkdtemp(join(root, 'foreign-'))
    await mkdir(join(dir, 'run'))
    await chown(join(dir, 'run'), 65534, 65534)
    await assert.rejects(
      startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--storage-path', join(dir, 's')], { cwd: dir, env: { ...process.env, XDG_RUNTIME_DIR: join(dir, 'run') } }),
      /exited with 2: .*can be changed by another user \(owner uid 65534/
    )
  })
})
