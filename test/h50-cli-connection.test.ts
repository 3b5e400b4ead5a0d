// h50: the CLI at the connection level, against stand-in daemons written here with node:net that
// stall (before answering, after the headers, mid-body, mid-stream), cut the connection, answer
// what is not the daemon's JSON or not HTTP at all, or are not there. Each CLI runs as a child
// with a generous kill deadline: it must end on its own, with exit 1 and one line naming the problem.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createServer, type Server, type Socket } from 'node:net'
import { after, before, describe, it } from 'node:test'
import { ENTRY, ROOT } from './support/daemon.js'
import { scriptArgs } from './support/child-script.js'
import { freePort } from './support/net.js'

/** The deadline after which a CLI that has not exited is killed (and the test fails): far past any limit it has. */
const KILL_AFTER_MS = 50_000

interface Ended { code: number | null, killed: boolean, stdout: string, stderr: string }

/** Runs the CLI with `args`; kills it at the deadline and says so. */
async function cli (args: string[]): Promise<Ended> {
  const child = spawn(process.execPath, [...scriptArgs(ENTRY), '--token', 'h50', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  let killed = false
  const deadline = setTimeout(() => { killed = true; child.kill('SIGKILL') }, KILL_AFTER_MS)
  const code = await new Promise<number | null>((resolve) => child.once('close', (exit) => resolve(exit)))
  clearTimeout(deadline)
  return { code, killed, stdout, stderr }
}

/** Asserts the CLI ended by itself with exit 1 and one line on stderr matching `message`. */
function failedWith (ended: Ended, message: RegExp): void {
  assert.equal(ended.killed, false, `the CLI hung until it was killed; stderr: ${ended.stderr}`)
  assert.equal(ended.code, 1, ended.stderr)
  assert.match(ended.stderr, message)
  assert.equal(ended.stderr.trim().split('\n').length, 1, `one line: ${ended.stderr}`)
  assert.doesNotMatch(ended.stderr, /\n\s+at |is not a function|TypeError/)
}

// The stand-ins answer as the daemon would begin to (with its x-galleonfs header), then misbehave.
const JSON_HEAD = (length: number, type = 'application/json'): string => `HTTP/1.1 200 OK\r\ncontent-type: ${type}\r\ncontent-length: ${length}\r\nx-galleonfs: 1\r\nconnection: close\r\n\r\n`
const STREAM_HEAD = 'HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\nx-galleonfs: 1\r\nconnection: close\r\n\r\n'
const chunk = (text: string): string => `${Buffer.byteLength(text).toString(16)}\r\n${text}\r\n`

/**
 * What each stand-in does once a request's first bytes arrive: writes its text, then keeps the
 * connection open (stalls), ends it, or cuts it.
 */
const BEHAVIOURS: Record<string, (socket: Socket) => void> = {
  'stall-after-headers': (socket) => { socket.write(JSON_HEAD(100)) },
  'stall-mid-body': (socket) => { socket.write(JSON_HEAD(100) + '[{"id":"') },
  'stall-mid-chunked-body': (socket) => { socket.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nx-galleonfs: 1\r\n\r\n' + chunk('[{"id":')) },
  'stall-mid-stream': (socket) => { socket.write(STREAM_HEAD + chunk('{"progress":{"bytesDone":0,"bytesTotal":4096}}\n')) },
  'close-mid-body': (socket) => { socket.end(JSON_HEAD(100) + '[{"id":"') },
  'reset-mid-body': (socket) => { socket.write(JSON_HEAD(100) + '[{"id":"', () => socket.resetAndDestroy()) },
  'not-json': (socket) => { socket.end(JSON_HEAD(19, 'text/html') + '<html>hello</html>\n') },
  'truncated-json': (socket) => { socket.end(JSON_HEAD(8) + '[{"id":"') },
  'status-without-galleon-error': (socket) => { socket.end('HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: 38\r\nconnection: close\r\n\r\n<html>\n<body>Not Found</body>\n</html>\n') },
  'not-http': (socket) => { socket.end('SSH-2.0-OpenSSH_9.2\r\n') },
  // A long operation the stand-in keeps alive with empty lines (as the daemon does) well past the
  // CLI's limit for silence, then finishes: the CLI must wait for it.
  'slow-stream-kept-alive': (socket) => {
    socket.write(STREAM_HEAD)
    let beats = 0
    const beat = setInterval(() => {
      if (socket.destroyed) { clearInterval(beat); return }
      if (++beats < 11) { socket.write(chunk('\n')); return }
      clearInterval(beat)
      socket.end(chunk('{"result":{"id":"b1","strategy":"full","blocks":1,"storedBytes":4096}}\n') + '0\r\n\r\n')
    }, 2000)
    socket.once('close', () => { clearInterval(beat) })
  }
}

const servers: Server[] = []
const sockets = new Set<Socket>()
const addresses: Record<string, string> = {}

before(async () => {
  for (const [name, behave] of Object.entries(BEHAVIOURS)) {
    const server = createServer((socket) => {
      sockets.add(socket)
      socket.on('error', () => {})
      socket.once('close', () => sockets.delete(socket))
      socket.once('data', () => { behave(socket) })
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    servers.push(server)
    addresses[name] = `127.0.0.1:${(server.address() as { port: number }).port}`
  }
})

after(async () => {
  for (const socket of sockets) socket.destroy()
  await Promise.all(servers.map(async (server) => await new Promise((resolve) => server.close(resolve))))
})

// The CLIs run at once: the file's time is that of the slowest (a stream silent for --timeout + 15 s).
describe('h50: the CLI gives up on a daemon that stalls or answers wrongly, within a bound, saying why', { concurrency: true }, () => {
  const gaveUp = /^galleonfs: the daemon at 127\.0\.0\.1:\d+ began its answer but sent nothing more of it for 1 s; it may be stopped \(SIGSTOP\), hung or overloaded/
  for (const name of ['stall-after-headers', 'stall-mid-body', 'stall-mid-chunked-body']) {
    it(`${name}: a plain call gives up after --timeout of silence`, async () => {
      failedWith(await cli(['--daemon-address', addresses[name] as string, '--timeout', '1', 'volume', 'list']), gaveUp)
    })
  }

  it('stall-mid-stream: a long operation whose answer goes silent (no line, not even an empty one) gives up too', async () => {
    failedWith(await cli(['--daemon-address', addresses['stall-mid-stream'] as string, '--timeout', '1', '--json', 'backup', 'create', 'db']),
      /^galleonfs: the daemon at 127\.0\.0\.1:\d+ began its answer but sent nothing more of it for 16 s/)
  })

  it('slow-stream-kept-alive: a long operation kept alive with empty lines is waited for past that limit, and its result printed', async () => {
    const ended = await cli(['--daemon-address', addresses['slow-stream-kept-alive'] as string, '--timeout', '1', '--json', 'backup', 'create', 'db'])
    assert.equal(ended.killed, false)
    assert.equal(ended.code, 0, ended.stderr)
    assert.equal(JSON.parse(ended.stdout).id, 'b1')
  })

  it('close-mid-body and reset-mid-body: the answer ended early', async () => {
    for (const name of ['close-mid-body', 'reset-mid-body']) {
      failedWith(await cli(['--daemon-address', addresses[name] as string, 'volume', 'list']), /^galleonfs: the daemon at 127\.0\.0\.1:\d+ ended its answer early; see its log/)
    }
  })

  it('not-json, truncated-json, a status without a GalleonFS error, and not HTTP at all: another program may listen there', async () => {
    const cases: Array<[string, RegExp]> = [
      ['not-json', /answered in text\/html \(<html>hello<\/html>\), not as a GalleonFS daemon does; check that --daemon-address is the daemon's --ipc-address/],
      ['truncated-json', /sent a JSON answer that is cut short or garbled \(\[\{"id":"\), not as a GalleonFS daemon does/],
      ['status-without-galleon-error', /answered HTTP 404 Not Found \(<html> <body>Not Found<\/body> <\/html>\), not as a GalleonFS daemon does/],
      ['not-http', /did not answer in HTTP \(Parse Error: [^)]*\), not as a GalleonFS daemon does/]
    ]
    for (const [name, message] of cases) {
      failedWith(await cli(['--daemon-address', addresses[name] as string, 'volume', 'list']), new RegExp(`^galleonfs: the server at 127\\.0\\.0\\.1:\\d+ ${message.source}`))
    }
  })

  it('nobody listening (ECONNREFUSED), an unknown host name: exit 1 naming it; port 0 and a URL with a path: exit 2', async () => {
    const port = await freePort()
    failedWith(await cli(['--daemon-address', `127.0.0.1:${port}`, 'volume', 'list']), /^galleonfs: no GalleonFS daemon answers at 127\.0\.0\.1:\d+; start it with `galleonfs -d --ipc-address 127\.0\.0\.1:\d+`/)
    // .invalid never resolves (RFC 2606).
    failedWith(await cli(['--daemon-address', 'galleon.invalid:8090', 'volume', 'list']), /^galleonfs: the host name "galleon\.invalid" of --daemon-address galleon\.invalid:8090 is not known \(ENOTFOUND\)/)
    for (const [address, message] of [['127.0.0.1:0', /port 0 is not a port the daemon answers on/], [`http://127.0.0.1:${port}/v1`, /host:port such as 127\.0\.0\.1:8090/], ['ftp://127.0.0.1:1', /host:port such as/]] as const) {
      const ended = await cli(['--daemon-address', address, 'volume', 'list'])
      assert.equal(ended.killed, false)
      assert.equal(ended.code, 2, `${address}: ${ended.stderr}`)
      assert.match(ended.stderr, message)
    }
  })
})
