// Review r7: src/off-loop-command.ts, the one worker thread that runs every program the library
// starts (KMS commands, fusermount). Answers of concurrent calls, env and input through postMessage,
// programs that close stdin early or leave a grandchild holding the pipes, timeouts and limits, the
// process staying alive for a call and no longer, and a worker that dies.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { runOffLoop, type OffLoopOutcome } from '../src/off-loop-command.js'

const PATH_ONLY = { PATH: process.env.PATH }
const CHILD = fileURLToPath(new URL('./support/review-r7-off-loop-child.ts', import.meta.url))

/**
 * Runs a scenario of the child script (with at most `maxFiles` open files if given); resolves once
 * the child has ended on its own (or was killed as hung).
 */
async function child (scenario: string, maxFiles?: number): Promise<{ stdout: string, hung: boolean, code: number | null }> {
  const command = `${maxFiles === undefined ? '' : `ulimit -n ${maxFiles}; `}exec "$0" --import tsx "$1" "$2"`
  return await new Promise((resolve) => {
    // The timeout only stops a child that never ends (the defect under test); a passing child ends at once.
    execFile('sh', ['-c', command, process.execPath, CHILD, scenario], { timeout: 30_000, killSignal: 'SIGKILL' }, (err, stdout) => {
      const e = err as (NodeJS.ErrnoException & { killed?: boolean, code?: number | string }) | null
      resolve({ stdout, hung: e?.killed === true, code: e === null ? 0 : typeof e.code === 'number' ? e.code : null })
    })
  })
}

describe('review r7: runOffLoop', () => {
  it('gives each of many concurrent calls its own answer, with its env and input intact', { timeout: 60_000 }, async () => {
    const calls = Array.from({ length: 40 }, (_, i) => {
      const env = { ...PATH_ONLY, R7_ID: `id-${i}`, R7_ODD: `line one\nline two = ${'é'.repeat(i)} ${i}` }
      const input = `input-${i}-${'x'.repeat(i * 1000)}`
      // Different delays, so that answers come back in another order than the calls.
      return { i, env, input, run: runOffLoop({ command: 'sh', args: ['-c', `sleep 0.0${(40 - i) % 10}; printf '%s|%s|' "$R7_ID" "$R7_ODD"; cat`], env, input }) }
    })
    for (const { i, env, input, run } of calls) {
      const ran = await run
      assert.equal(ran.code, 0, `call ${i}: ${ran.stderr}`)
      assert.equal(ran.stdout, `${env.R7_ID}|${env.R7_ODD}|${input}`, `call ${i} got another call's answer or lost its env/input`)
    }
  })

  it('survives a program that exits without reading a large input, and one that cannot be started', { timeout: 60_000 }, async () => {
    const early = await runOffLoop({ command: 'sh', args: ['-c', 'exec 0<&-; echo closed'], env: PATH_ONLY, input: 'y'.repeat(8 * 1024 * 1024) })
    assert.equal(early.code, 0)
    assert.equal(early.stdout, 'closed\n')
    const missing = await runOffLoop({ command: '/nonexistent/r7-program', args: [], env: PATH_ONLY })
    assert.match(missing.startError ?? '', /ENOENT/)
    const after = await runOffLoop({ command: 'echo', args: ['still', 'here'], env: PATH_ONLY })
    assert.equal(after.stdout, 'still here\n')
  })

  it('answers once the program exits although a grandchild keeps its pipes open', { timeout: 60_000 }, async () => {
    // The grandchild sleeps far longer than the test's own timeout: waiting for the pipes to close would hang.
    const ran = await runOffLoop({ command: 'sh', args: ['-c', 'sleep 600 & echo $!; echo started'], env: PATH_ONLY })
    const grandchild = Number(ran.stdout.split('\n')[0])
    try {
      assert.equal(ran.code, 0)
      assert.match(ran.stdout, /started/)
    } finally {
      try { process.kill(grandchild, 'SIGKILL') } catch {}
    }
  })

  it('kills a program past its timeout, and one writing past the limit, with its process group', { timeout: 60_000 }, async () => {
    const slow = await runOffLoop({ command: 'sh', args: ['-c', 'sleep 600 & echo $!; wait'], env: PATH_ONLY, timeoutMs: 300, processGroup: true })
    assert.equal(slow.killed, 'timeout')
    assert.equal(slow.signal, 'SIGKILL')
    const grandchild = Number(slow.stdout.split('\n')[0])
    // The group was killed: the grandchild is gone (or a zombie reaped by init) shortly after.
    await waitGone(grandchild)
    const loud = await runOffLoop({ command: 'sh', args: ['-c', 'yes'], env: PATH_ONLY, maxOutputBytes: 100_000, processGroup: true })
    assert.equal(loud.killed, 'output')
    assert.ok(loud.stdout.length <= 100_000)
  })

  it('holds the process open while a call runs, and lets it end afterwards', { timeout: 60_000 }, async () => {
    const ran = await child('one-call')
    assert.equal(ran.hung, false, 'the process did not end after the call')
    assert.equal(ran.stdout, 'outcome 0 answered\n')
  })

  it('a call whose message cannot be posted fails and does not hold the process for good', { timeout: 60_000 }, async () => {
    const ran = await child('uncloneable-env')
    assert.match(ran.stdout, /rejected/)
    assert.equal(ran.hung, false, 'the worker stayed referenced with a call pending that was never sent: the process never ends')
  })

  it('a program that cannot be started for lack of file descriptors fails alone, and the next call runs', { timeout: 60_000 }, async () => {
    const ran = await child('emfile', 256)
    assert.equal(ran.hung, false)
    assert.equal(ran.stdout, 'startError spawn true EMFILE\nok again\n', 'the worker died with the call (every call it was running failed with it), or the next call was failed by its death')
  })

  it('a call made right after the worker died is answered by the new worker, not failed by the old one\'s exit', { timeout: 60_000 }, async () => {
    // An input that is not a string makes the worker's handler throw: the worker dies.
    const crash = runOffLoop({ command: 'true', args: [], env: PATH_ONLY, input: 42 as unknown as string })
    let next: Promise<OffLoopOutcome> | undefined
    await assert.rejects(crash.catch((err: unknown) => {
      // At once, as a caller retrying would: the dead worker's 'exit' has not been emitted yet.
      next = runOffLoop({ command: 'echo', args: ['fresh'], env: PATH_ONLY })
      throw err
    }))
    const answer = await (next as Promise<OffLoopOutcome>)
    assert.equal(answer.stdout, 'fresh\n')
  })
})

async function waitGone (pid: number): Promise<void> {
  const deadline = Date.now() + 20_000
  for (;;) {
    try {
      process.kill(pid, 0)
    } catch {
      return
    }
    // A zombie whose parent died is reaped by init; look at its state.
    try {
      const { readFile } = await import('node:fs/promises')
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
      if (stat.split(') ')[1]?.startsWith('Z') === true) return
    } catch {
      return
    }
    if (Date.now() > deadline) assert.fail(`process ${pid} of the killed group is still running`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
