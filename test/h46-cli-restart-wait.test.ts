// h46: `galleonfs daemon restart` promises to give up when the daemon "did not come back within a
// minute". Against a daemon that takes connections and never answers them (a process stuck in its
// shutdown, or one started but hanging), each status call waits out its answer timeout (--timeout):
// the minute must still be a minute. Time is mocked (node:test mock.timers): the CLI runs in this
// process against a real HTTP server, and the test advances the clock in small steps.

import { it, mock } from 'node:test'
import assert from 'node:assert/strict'
import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { runCli } from '../examples/cli.js'

const realSetImmediate = setImmediate
const realSetTimeout = setTimeout
const realSleep = async (ms: number): Promise<void> => { await new Promise((resolve) => realSetTimeout(resolve, ms)) }

it('daemon restart gives up within about a minute even when every status call waits out its answer timeout', async () => {
  const held: ServerResponse[] = []
  let statusCalls = 0
  let restartAnswered = false
  const server = createServer((req, res) => {
    if (req.method === 'POST' && req.url === '/v1/restart') {
      res.writeHead(200, { 'content-type': 'application/json', 'x-galleonfs': '1' }).end(JSON.stringify({ pid: 111 }), () => { restartAnswered = true })
      return
    }
    // The "restarted" daemon takes the connection and never begins its answer.
    statusCalls++
    held.push(res)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  const stderr: string[] = []
  const write = process.stderr.write.bind(process.stderr)
  process.stderr.write = ((chunk: string | Uint8Array) => { stderr.push(String(chunk)); return true }) as typeof process.stderr.write
  mock.timers.enable({ apis: ['setTimeout', 'Date'] })
  let virtualMs = 0
  let code: number | undefined
  const cli = runCli(['--daemon-address', `127.0.0.1:${port}`, '--token', 't', '--timeout', '1', 'daemon', 'restart']).then((c) => { code = c })
  const STEP_MS = 50
  // The promise: a minute of waiting, plus at most one answer timeout (1 s) and one pause.
  const PROMISED_MS = 60_000 + 1000 + 250
  try {
    // The clock stands still until the restart call is answered (a slow machine must not time it out).
    for (let waited = 0; !restartAnswered && code === undefined && waited < 30_000; waited += 5) await realSleep(5)
    assert.ok(restartAnswered, 'the CLI sent POST /v1/restart')
    while (code === undefined && virtualMs < PROMISED_MS + 5000) {
      // Let the real sockets move (connect, send, destroy) before the clock does.
      for (let i = 0; i < 3; i++) await new Promise((resolve) => realSetImmediate(resolve))
      await realSleep(1)
      mock.timers.tick(STEP_MS)
      virtualMs += STEP_MS
    }
    const endedAt = virtualMs
    // Clean-up: a daemon that refuses connections ends each attempt at once.
    for (const res of held) res.destroy()
    const closed = new Promise<void>((resolve) => server.close(() => resolve()))
    server.closeAllConnections()
    await closed
    for (let guard = 0; code === undefined && guard < 20_000; guard++) {
      await new Promise((resolve) => realSetImmediate(resolve))
      await realSleep(1)
      mock.timers.tick(250)
      virtualMs += 250
    }
    await cli
    assert.ok(statusCalls > 1, `the CLI asked for the daemon's status ${statusCalls} times`)
    assert.ok(endedAt <= PROMISED_MS + 5000 && code !== undefined && virtualMs === endedAt,
      `daemon restart was still waiting after ${endedAt / 1000} s of (mocked) time, having made ${statusCalls} status calls of 1 s each; it promises to give up "within a minute" (it ended after ${virtualMs / 1000} s)`)
    assert.equal(code, 1)
    assert.match(stderr.join(''), /did not come back within a minute/)
  } finally {
    mock.timers.reset()
    process.stderr.write = write
    for (const res of held) res.destroy()
    if (server.listening) server.close()
  }
})
