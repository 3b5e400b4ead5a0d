// h50: a real `galleonfs -d` process against hostile and careless clients at the connection level:
// request targets that URL parsing would turn into another route, odd requests, idle kept-alive
// and trickling connections, clients that go away while a write or a backup runs, and a stop
// (SIGTERM, then SIGTERM again) with a request in flight.

import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { runCli, startDaemonProcess, type RunningDaemon } from './support/daemon.js'
import { until } from './support/wait.js'
import { answered, rawRequest } from './support/raw-http.js'

let root: string
let daemon: RunningDaemon
let token: string
let port: number
const env = (): NodeJS.ProcessEnv => ({ ...process.env, XDG_RUNTIME_DIR: join(root, 'run') })
const storage = (): string => join(root, 's')
const backups = (): string => join(root, 'backups')

/** Sends `request` (TOKEN replaced) on a new connection; the text that came back once `done` holds or the daemon closed. */
async function raw (request: string | Buffer, done: (text: string) => boolean = answered, timeoutMs?: number): Promise<{ text: string, closed: boolean }> {
  return await rawRequest({ host: '127.0.0.1', port, token }, request, { done, timeoutMs })
}

/** The status and JSON body of a raw answer (fails when the body is not JSON). */
function parsed (text: string): { status: number, json: any } {
  const body = text.slice(text.indexOf('\r\n\r\n') + 4)
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1]), json: body === '' ? undefined : JSON.parse(body) }
}

/** An API call with fetch. */
async function api (method: string, path: string, body?: unknown): Promise<{ status: number, json: any }> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { method, headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(30_000), ...(body === undefined ? {} : { body: JSON.stringify(body) }) })
  const text = await response.text()
  return { status: response.status, json: text === '' ? undefined : JSON.parse(text) }
}

/** A request line and headers with the token, for a body of `length` bytes. */
const post = (path: string, length: number, extra = ''): string => `POST ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\nContent-Type: application/json\r\nContent-Length: ${length}\r\n${extra}\r\n`

/** The bytes of a volume, base64-decoded. */
async function read (volume: string, offset: number, length: number): Promise<Buffer> {
  const answer = await api('POST', `/v1/volumes/${volume}/read`, { offset, length })
  assert.equal(answer.status, 200, JSON.stringify(answer.json))
  return Buffer.from(answer.json.data as string, 'base64')
}

const fds = async (): Promise<number> => (await readdir(`/proc/${daemon.child.pid}/fd`)).length
const rssKiB = async (): Promise<number> => Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${daemon.child.pid}/status`, 'utf8'))?.[1])
const requestLogs = (url: string): Array<Record<string, unknown>> => daemon.logs.map((line) => JSON.parse(line) as Record<string, unknown>).filter((entry) => entry.message === 'request' && entry.url === url)

/** What the path tricks must leave alone: the volumes and v1's snapshots. */
async function state (): Promise<string> {
  return JSON.stringify([(await api('GET', '/v1/volumes')).json.map((v: { name: string }) => v.name).sort(), (await api('GET', '/v1/volumes/v1/snapshots')).json.map((s: { name: string }) => s.name)])
}

const BIG = 16 << 20
const PIECE = 512 << 10
/** A request whose body stops arriving, sent once the daemon is up: answered by the test before the stop. */
let stalled: Promise<{ text: string, closed: boolean }>

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-h50-'))
  await mkdir(join(root, 'run'))
  daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--storage-path', storage(), '--log-level', 'debug'], { cwd: root, env: env() })
  port = Number(daemon.address.split(':').pop())
  token = (await readFile(join(storage(), 'ipc.token'), 'utf8')).trim()
  assert.equal((await api('POST', '/v1/volumes', { name: 'v1', sizeBytes: 1 << 20, storageClass: 'fast-local-ssd' })).status, 200)
  assert.equal((await api('POST', '/v1/volumes/v1/snapshots', { name: 's1' })).status, 200)
  assert.equal((await api('POST', '/v1/volumes', { name: 'big', sizeBytes: BIG, storageClass: 'fast-local-ssd' })).status, 200)
  for (let offset = 0; offset < BIG; offset += PIECE) {
    assert.equal((await api('POST', '/v1/volumes/big/write', { offset, data: randomBytes(PIECE).toString('base64') })).status, 204)
  }
  // Its answer takes the daemon's body limit (30 s): the other tests run meanwhile.
  const body = JSON.stringify({ name: 'stalled', sizeBytes: 1 << 20 })
  stalled = raw(`POST /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\nContent-Type: application/json\r\nContent-Length: ${body.length + 10}\r\n\r\n${body}`, answered, 90_000)
})

after(async () => {
  if (daemon !== undefined && daemon.child.exitCode === null && daemon.child.signalCode === null) {
    daemon.child.kill('SIGKILL')
    await daemon.exited
  }
  await rm(root, { recursive: true, force: true })
})

describe('h50: the daemon at the connection level', () => {
  it('refuses request targets that URL parsing would resolve to another route (dot segments, %2e, backslashes, //): nothing is deleted', async () => {
    const before = await state()
    const targets = [
      'DELETE /v1/volumes/v1/snapshots/..',
      'DELETE /v1/volumes/v1/snapshots/%2E%2e',
      'DELETE /v1/volumes/v1/snapshots/s1/../..',
      'DELETE /v1/volumes/v1/snapshots/./../',
      'DELETE //host/v1/volumes/v1',
      'DELETE /v1\\volumes\\v1',
      'DELETE /v1/volumes/v1/qos/..',
      'POST /v1/volumes/v1/snapshots/s1/%2e%2e/%2e%2e/flush'
    ]
    for (const target of targets) {
      const answer = parsed((await raw(`${target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\nContent-Length: 0\r\n\r\n`)).text)
      assert.equal(answer.status, 400, target)
      assert.equal(answer.json.error.code, 'INVALID_ARGUMENT', target)
      assert.match(answer.json.error.message, /would name another path, .* \(it holds a "\." or "\.\." segment, a backslash, a leading "\/\/" or a character to percent-encode\)/, target)
    }
    assert.equal(await state(), before)
    // The CLI sends a name as given: `snapshot delete v1 ..` is that request, refused too.
    const cli = await runCli(daemon.address, ['snapshot', 'delete', 'v1', '..'], { env: { XDG_RUNTIME_DIR: join(root, 'run') } })
    assert.equal(cli.code, 1)
    assert.match(cli.stderr, /^galleonfs: INVALID_ARGUMENT: the request path "\/v1\/volumes\/v1\/snapshots\/\.\." would name another path, \/v1\/volumes\/v1\/ /)
    assert.equal(await state(), before)
    // An absolute-form target (RFC 9112 says a server takes it) names its path: served.
    assert.equal(parsed((await raw('GET http://elsewhere/v1/volumes/v1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\n\r\n')).text).json.name, 'v1')
  })

  it('odd requests: a GET with a body changes nothing, duplicate headers, no Host, unknown methods: each answered in JSON', async () => {
    const before = await state()
    const body = JSON.stringify({ name: 'from-get', sizeBytes: 4096, storageClass: 'fast-local-ssd' })
    const listed = parsed((await raw(`GET /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`)).text)
    assert.equal(listed.status, 200)
    assert.ok(Array.isArray(listed.json))
    // Node keeps the first of two Authorization headers: the wrong one first is refused, the right one first served.
    assert.equal(parsed((await raw('GET /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nAuthorization: Bearer TOKEN\r\n\r\n')).text).status, 401)
    assert.equal(parsed((await raw('GET /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\nAuthorization: Bearer wrong\r\n\r\n')).text).status, 200)
    // Two lengths that differ: the body is ambiguous (request smuggling), refused by the parser.
    const lengths = parsed((await raw(`POST /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\nContent-Length: ${body.length}\r\nContent-Length: 2\r\n\r\n${body}`)).text)
    assert.deepEqual([lengths.status, lengths.json.error.code], [400, 'BAD_REQUEST'])
    // HTTP/1.1 needs Host: refused in JSON like every other refusal (Node's own answer is a bare 400); HTTP/1.0 does not.
    const noHost = parsed((await raw('GET /v1/volumes HTTP/1.1\r\nAuthorization: Bearer TOKEN\r\n\r\n')).text)
    assert.deepEqual([noHost.status, noHost.json.error.code], [400, 'BAD_REQUEST'])
    assert.match(noHost.json.error.message, /Host header/)
    assert.equal(parsed((await raw('GET /v1/volumes HTTP/1.0\r\nAuthorization: Bearer TOKEN\r\n\r\n')).text).status, 200)
    // A method Node knows but the API has not, and one nobody knows.
    assert.equal(parsed((await raw('PROPFIND /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\n\r\n')).text).json.error.code, 'NOT_FOUND')
    assert.equal(parsed((await raw('BREW /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\n\r\n')).text).json.error.code, 'BAD_REQUEST')
    assert.equal(await state(), before)
  })

  it('closes idle kept-alive connections by itself and serves others while many idle and trickling ones are open; holds none afterwards', async (t) => {
    const baseline = await fds()
    const rssBefore = await rssKiB()
    // 100 clients that make one request on a kept-alive connection and then say nothing more.
    const idle = await Promise.all(Array.from({ length: 100 }, async () => {
      const socket = connect(port, '127.0.0.1')
      socket.on('error', () => {})
      let text = ''
      socket.on('data', (chunk: Buffer) => { text += chunk.toString('latin1') })
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()))
      socket.write(`GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nConnection: keep-alive\r\n\r\n`)
      await until('the status answer', () => answered(text))
      return { socket, closed }
    }))
    // 50 slowloris clients: their headers come a byte at a time, and never end.
    const header = 'GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ' + 'a'.repeat(4000)
    const trickling = Array.from({ length: 50 }, () => {
      const socket = connect(port, '127.0.0.1')
      socket.on('error', () => {})
      let sent = 0
      const timer = setInterval(() => { if (!socket.destroyed && sent < header.length) socket.write(header[sent++] as string) }, 50)
      return { socket, timer }
    })
    try {
      for (let i = 0; i < 5; i++) assert.equal((await api('GET', '/v1/status')).status, 200)
      // Node's keep-alive timeout (5 s) ends the idle ones: the clients did not close them.
      await Promise.all(idle.map(async ({ closed }) => await closed))
      assert.equal((await api('GET', '/v1/status')).status, 200)
    } finally {
      for (const { socket, timer } of trickling) { clearInterval(timer); socket.destroy() }
      for (const { socket } of idle) socket.destroy()
    }
    await until('the daemon let go of every connection', async () => await fds() <= baseline, 20_000)
    t.diagnostic(`daemon RSS ${rssBefore} KiB before, ${await rssKiB()} KiB after 150 idle and trickling connections`)
  })

  it('a client gone mid-write changes nothing; gone after sending it, the write is done whole; the daemon serves on', async (t) => {
    const old = await read('big', 0, PIECE)
    const data = Buffer.alloc(PIECE, 0xab).toString('base64')
    const body = JSON.stringify({ offset: 0, data, concern: 'WriteDurable' })
    // Half the body, then gone: the request ends cancelled, nothing written.
    const half = connect(port, '127.0.0.1')
    half.on('error', () => {})
    half.write((post('/v1/volumes/big/write', body.length) + body.slice(0, body.length >> 1)).replaceAll('TOKEN', token), () => half.destroy())
    await until('the cut-off write ended', () => requestLogs('/v1/volumes/big/write').some((entry) => entry.cancelled === true))
    assert.ok((await read('big', 0, PIECE)).equals(old), 'a half-sent write changed the volume')
    // The whole body, then gone at once: the write is either done whole or not at all.
    const whole = connect(port, '127.0.0.1')
    whole.on('error', () => {})
    const ended = requestLogs('/v1/volumes/big/write').length
    whole.write((post('/v1/volumes/big/write', body.length) + body).replaceAll('TOKEN', token), () => whole.destroy())
    await until('the sent write ended', () => requestLogs('/v1/volumes/big/write').length > ended)
    const after = await read('big', 0, PIECE)
    assert.ok(after.equals(old) || after.equals(Buffer.alloc(PIECE, 0xab)), 'a write was done in part')
    t.diagnostic(`a write whose client left after sending it was ${after.equals(old) ? 'not done' : 'done whole'}`)
    assert.equal((await api('GET', '/v1/status')).status, 200)
  })

  it('a client gone mid-backup: the backup is cancelled or done whole, never listed half-made; the next backup works and verifies', async (t) => {
    const cut = connect(port, '127.0.0.1')
    cut.on('error', () => {})
    const body = JSON.stringify({ volume: 'big', strategy: 'full', target: backups() })
    let text = ''
    cut.on('data', (chunk: Buffer) => {
      text += chunk.toString('latin1')
      // Gone as soon as the first progress line came.
      if (text.includes('"progress"')) cut.destroy()
    })
    cut.write(post('/v1/backups', body.length, 'Accept: application/x-ndjson\r\n').replaceAll('TOKEN', token) + body)
    await until('the backup request ended', () => requestLogs('/v1/backups').length > 0, 60_000)
    const cancelled = requestLogs('/v1/backups')[0]?.cancelled === true
    const listed = await api('GET', `/v1/backups?volume=big&target=${encodeURIComponent(backups())}`)
    assert.equal(listed.status, 200)
    assert.equal(listed.json.length, cancelled ? 0 : 1, JSON.stringify(listed.json))
    for (const backup of listed.json as Array<{ id: string }>) {
      const verified = await api('POST', `/v1/backups/${backup.id}/verify`, { target: backups() })
      assert.equal(verified.json.ok, true, JSON.stringify(verified.json))
    }
    const next = await api('POST', '/v1/backups', { volume: 'big', strategy: 'full', target: backups() })
    assert.equal(next.status, 200, JSON.stringify(next.json))
    assert.equal((await api('POST', `/v1/backups/${next.json.id as string}/verify`, { target: backups() })).json.ok, true)
    t.diagnostic(`the backup whose client left was ${cancelled ? 'cancelled' : 'done before the cut'}`)
  })

  it('a request whose body stops arriving is answered 408 and its connection closed; it was not run', { timeout: 90_000 }, async () => {
    const { text } = await stalled
    const { status, json } = parsed(text)
    assert.equal(status, 408, text)
    assert.equal(json.error.code, 'REQUEST_TIMEOUT')
    assert.match(json.error.message, /request body stopped arriving: nothing for 30 s after 38 bytes of the 48 announced; the request was not run/)
    assert.match(text, /\r\nconnection: close\r\n/i)
    assert.equal((await api('GET', '/v1/volumes/stalled')).status, 404)
    assert.equal((await api('GET', '/v1/status')).status, 200)
  })

  it('SIGTERM with a request in flight answers it, refuses new connections, takes a second SIGTERM calmly, exits 0 with the write kept', { timeout: 60_000 }, async () => {
    const data = Buffer.alloc(4096, 0x5c)
    const body = JSON.stringify({ offset: 8192, data: data.toString('base64') })
    // A write whose body is half sent: the daemon is answering it when the stop begins.
    const inFlight = connect(port, '127.0.0.1')
    inFlight.on('error', () => {})
    let answer = ''
    inFlight.on('data', (chunk: Buffer) => { answer += chunk.toString('latin1') })
    await new Promise<void>((resolve) => inFlight.write((post('/v1/volumes/v1/write', body.length) + body.slice(0, 100)).replaceAll('TOKEN', token), () => resolve()))
    // An answer on a later connection: the daemon has read the earlier one's headers, so it is answering it.
    assert.equal((await api('GET', '/v1/status')).status, 200)
    const signals = (): number => daemon.logs.filter((line) => line.includes('"signal received"')).length
    daemon.child.kill('SIGTERM')
    await until('the stop began', () => daemon.logs.some((line) => line.includes('shutting down')))
    // No new connections (the listener is closed).
    const refused = await new Promise<string | undefined>((resolve) => {
      const late = connect(port, '127.0.0.1')
      late.once('connect', () => { late.destroy(); resolve(undefined) })
      late.once('error', (err: NodeJS.ErrnoException) => resolve(err.code))
    })
    assert.equal(refused, 'ECONNREFUSED')
    // Again: said, and nothing else (without a handler it would kill the daemon mid-stop).
    daemon.child.kill('SIGTERM')
    await until('the second signal was logged', () => signals() >= 2 || daemon.child.exitCode !== null || daemon.child.signalCode !== null)
    assert.equal(daemon.child.signalCode, null, 'the second SIGTERM killed the daemon in the middle of its stop')
    inFlight.write(body.slice(100))
    await until('the request in flight was answered', () => /^HTTP\/1\.1 \d{3}/.test(answer) || inFlight.destroyed)
    assert.match(answer, /^HTTP\/1\.1 204 /)
    assert.equal(await daemon.exited, 0)
    assert.equal(daemon.child.signalCode, null)
    // The write acknowledged during the stop is there after a restart.
    daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--storage-path', storage()], { cwd: root, env: env() })
    port = Number(daemon.address.split(':').pop())
    assert.ok((await read('v1', 8192, 4096)).equals(data))
    assert.equal(await state(), JSON.stringify([['big', 'v1'], ['s1']]))
    daemon.child.kill('SIGTERM')
    assert.equal(await daemon.exited, 0)
  })
})
