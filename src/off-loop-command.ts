// Runs programs from a worker thread, never from the event loop's thread.
//
// Starting a program blocks the starting thread until the child has exec'd, and exec closes every
// close-on-exec descriptor the child inherited, one by one. If this process has a file of one of
// its own FUSE mounts open (the README allows reading a mount with async fs calls), the child
// inherits that descriptor and its close asks the mount to flush: a FUSE request that this process
// answers on the event loop's thread. Started from that thread, the child waits for the flush, the
// thread waits for the child, and the process is stuck for good (seen as an unmount, or a KMS
// command, hanging while the process had `data` open). From a worker only the worker waits.
//
// One worker serves every call (a thread costs tens of milliseconds to start); it holds the process
// open only while a call is running, and is started again if it dies.

import { Worker } from 'node:worker_threads'

/** What to run. */
export interface OffLoopCommand {
  readonly command: string
  readonly args: readonly string[]
  readonly env: NodeJS.ProcessEnv
  /** Written to the program's stdin, which is then closed (nothing: stdin is closed at once). */
  readonly input?: string
  /** Past this the program (its process group with `processGroup`) is killed with SIGKILL. */
  readonly timeoutMs?: number
  /** More stdout than this gets the program killed; the outcome says so. */
  readonly maxOutputBytes?: number
  /** Start the program in its own process group, so that a kill reaches whatever it started too. */
  readonly processGroup?: boolean
}

/** How a program ended. */
export interface OffLoopOutcome {
  /** Set when the program could not be started (not found, not executable): the error's message. */
  readonly startError?: string
  readonly code: number | null
  readonly signal: string | null
  readonly stdout: string
  /** The first 64 chunks of its stderr. */
  readonly stderr: string
  /** Why it was killed: it ran past the timeout, or wrote more than the limit. */
  readonly killed?: 'timeout' | 'output'
}

// Plain JavaScript: the worker needs no loader the process was started with (no execArgv).
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads')
const { spawn } = require('node:child_process')
parentPort.on('message', (call) => {
  let child
  try {
    child = spawn(call.command, call.args, { stdio: ['pipe', 'pipe', 'pipe'], env: call.env, detached: call.processGroup })
  } catch (err) {
    parentPort.postMessage({ id: call.id, startError: String(err.message), code: null, signal: null, stdout: '', stderr: '' })
    return
  }
  if (child.stdin == null || child.stdout == null || child.stderr == null) {
    // Too many open files (EMFILE, ENFILE): the program was not started and has no pipes; its
    // 'error' event says why. Nothing here may throw: the worker serves every other call.
    child.once('error', (error) => { parentPort.postMessage({ id: call.id, startError: String(error.message), code: null, signal: null, stdout: '', stderr: '' }) })
    return
  }
  const out = []
  const err = []
  let size = 0
  let killed
  let settled = false
  const kill = () => {
    try {
      if (call.processGroup) process.kill(-child.pid, 'SIGKILL')
      else child.kill('SIGKILL')
    } catch {
      child.kill('SIGKILL')
    }
  }
  const finish = (answer) => {
    if (settled) return
    settled = true
    clearTimeout(timer)
    child.stdout.destroy()
    child.stderr.destroy()
    parentPort.postMessage({ id: call.id, ...answer })
  }
  const timer = call.timeoutMs === undefined ? undefined : setTimeout(() => { killed ??= 'timeout'; kill() }, call.timeoutMs)
  child.stdout.on('data', (chunk) => {
    size += chunk.byteLength
    if (call.maxOutputBytes !== undefined && size > call.maxOutputBytes) { killed ??= 'output'; kill() } else out.push(chunk)
  })
  child.stderr.on('data', (chunk) => { if (err.length < 64) err.push(chunk) })
  child.once('error', (error) => { finish({ startError: String(error.message), code: null, signal: null, stdout: '', stderr: '' }) })
  // A program that exits without reading its input must not crash the worker with EPIPE.
  child.stdin.on('error', () => {})
  child.once('exit', (code, signal) => {
    // Output still in the pipes arrives before 'close'; wait for it only briefly, as a grandchild
    // holding the pipes open must not keep the call waiting. Then nothing it started may outlive it.
    const settle = () => {
      if (call.processGroup && (code !== 0 || killed !== undefined)) kill()
      finish({ code, signal, killed, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') })
    }
    const grace = setTimeout(settle, 200)
    child.once('close', () => { clearTimeout(grace); settle() })
  })
  child.stdin.end(call.input ?? '')
})
`

let worker: Worker | undefined
/** The calls sent to the current worker (each worker fails only its own calls when it dies). */
let pending = new Map<number, (outcome: OffLoopOutcome | Error) => void>()
let nextId = 1

function startWorker (): Worker {
  const started = new Worker(WORKER_SOURCE, { eval: true, execArgv: [] })
  const mine = new Map<number, (outcome: OffLoopOutcome | Error) => void>()
  pending = mine
  started.on('message', (answer: OffLoopOutcome & { id: number }) => {
    const deliver = mine.get(answer.id)
    mine.delete(answer.id)
    if (mine.size === 0) started.unref()
    const { id: _id, ...outcome } = answer
    deliver?.(outcome)
  })
  const fail = (why: Error): void => {
    if (worker === started) worker = undefined
    for (const deliver of mine.values()) deliver(why)
    mine.clear()
  }
  started.on('error', fail)
  started.on('exit', (code) => { fail(new Error(`the thread that runs programs ended (exit code ${code}) before the program did`)) })
  return started
}

/** Runs `command` from the worker thread; resolves with how it ended (rejects only if the worker died). */
export async function runOffLoop (call: OffLoopCommand): Promise<OffLoopOutcome> {
  worker ??= startWorker()
  const running = worker
  const calls = pending
  const id = nextId++
  const answer = new Promise<OffLoopOutcome | Error>((resolve) => { calls.set(id, resolve) })
  running.ref()
  try {
    running.postMessage({ id, command: call.command, args: [...call.args], env: call.env, input: call.input, timeoutMs: call.timeoutMs, maxOutputBytes: call.maxOutputBytes, processGroup: call.processGroup === true })
  } catch (err) {
    // Never sent: nothing will answer it, and it must not keep the worker (and the process) referenced.
    calls.delete(id)
    if (calls.size === 0) running.unref()
    throw err
  }
  const outcome = await answer
  if (outcome instanceof Error) throw outcome
  return outcome
}
