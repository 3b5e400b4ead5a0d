// Review r58: a --timeout or --wait past what Node's timers hold (2^31 - 1 ms, about 24.8 days)
// fired after 1 ms, so the CLI reported a daemon that answers at once as hung ("did not answer
// within 3000000 s", exit 1). Such a value is now a command-line error (exit 2) naming the limit,
// and the largest one taken works. A real daemon process (test/support/daemon.ts).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runCli, startDaemonProcess, type RunningDaemon } from './support/daemon.js'

let root: string
let daemon: RunningDaemon
let env: Record<string, string>
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'review-r58-timeout-'))
  // The daemon leaves its token in this runtime directory, where the CLI finds it.
  env = { XDG_RUNTIME_DIR: join(root, 'run') }
  daemon = await startDaemonProcess(['--storage-path', join(root, 'data'), '--ipc-address', '127.0.0.1:0'], { cwd: root, env: { ...process.env, ...env } })
})
after(async () => {
  daemon.child.kill('SIGTERM')
  await daemon.exited
  await rm(root, { recursive: true, force: true })
})

describe('review r58: CLI waits longer than a Node timer holds', { timeout: 120_000 }, () => {
  for (const args of [['--timeout', '3000000', 'volume', 'list'], ['daemon', 'status', '--wait', '3000000']]) {
    it(`${args.join(' ')}: exit 2 naming the limit, not a daemon reported hung`, async () => {
      const ran = await runCli(daemon.address, args, { env })
      assert.equal(ran.code, 2, ran.stderr)
      assert.match(ran.stderr, /at most 2000000|from 0 to 2000000/)
      assert.doesNotMatch(ran.stderr, /did not answer|TimeoutOverflowWarning/)
    })
  }

  it('the largest value taken works', async () => {
    const listed = await runCli(daemon.address, ['--timeout', '2000000', 'volume', 'list', '--json'], { env })
    assert.equal(listed.code, 0, listed.stderr)
    assert.deepEqual(JSON.parse(listed.stdout), [])
    assert.doesNotMatch(listed.stderr, /TimeoutOverflowWarning/)
    const status = await runCli(daemon.address, ['daemon', 'status', '--wait', '2000000', '--json'], { env })
    assert.equal(status.code, 0, status.stderr)
    assert.equal((JSON.parse(status.stdout) as { state: string }).state, 'running')
  })
})
