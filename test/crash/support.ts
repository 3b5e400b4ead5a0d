// Shared by the crash tests: the trial count, and the line protocol with their child processes (the
// child writes each line synchronously, so it is in the pipe before its next operation starts and
// survives a SIGKILL that follows; the parent reads whole lines until the child is gone).

import { spawn, type ChildProcessByStdio } from 'node:child_process'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { writeSync } from 'node:fs'
import type { Readable } from 'node:stream'
import { bundledScriptArgs } from '../support/child-bundle.js'

const waitCell = new Int32Array(new SharedArrayBuffer(4))

/** Writes one line to stdout synchronously; retried on EAGAIN in case the pipe is non-blocking. */
export function reportLine (line: string): void {
  const bytes = Buffer.from(line + '\n')
  let written = 0
  while (written < bytes.byteLength) {
    try {
      written += writeSync(1, bytes, written)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err
      Atomics.wait(waitCell, 0, 0, 1)
    }
  }
}

/** How a child ended, and the start of what it wrote to stderr. */
export interface ChildExit {
  code: number | null
  signal: NodeJS.Signals | null
  stderr: string
  /** A last line without its newline (cannot happen with atomic pipe writes; kept visible). */
  partial: string | undefined
}

/** Calls `onLine` for every line the child writes to stdout; resolves once the child has exited and every line was seen. */
export async function readChildLines (child: ChildProcessByStdio<null, Readable, Readable>, onLine: (line: string) => void): Promise<ChildExit> {
  const exit: ChildExit = { code: null, signal: null, stderr: '', partial: undefined }
  let pending = ''
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (chunk: string) => {
    pending += chunk
    let newline: number
    while ((newline = pending.indexOf('\n')) >= 0) {
      onLine(pending.slice(0, newline))
      pending = pending.slice(newline + 1)
    }
  })
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (chunk: string) => { if (exit.stderr.length < 20_000) exit.stderr += chunk })
  await new Promise<void>((resolve, reject) => {
    child.once('error', reject)
    // 'close' waits for stdout to end, so every line the child wrote has been seen.
    child.once('close', (code, signal) => { exit.code = code; exit.signal = signal; resolve() })
  })
  if (pending.length > 0) exit.partial = pending
  return exit
}

/** Kill trials per backend: GALLEON_CRASH_TRIALS, else 50 (25 when CI=true and the variable is unset). */
export function trialCount (): number {
  const fromEnv = process.env.GALLEON_CRASH_TRIALS
  if (fromEnv !== undefined && fromEnv !== '') {
    const trials = Number(fromEnv)
    if (!Number.isSafeInteger(trials) || trials < 1) throw new Error(`GALLEON_CRASH_TRIALS must be a positive integer, got ${fromEnv}`)
    return trials
  }
  return process.env.CI === 'true' ? 25 : 50
}

/** Arguments every crash child takes: `<storagePath> <file|level> <seqBase> <seed>`. */
export function childArguments (script: string): { storagePath: string, backend: 'file' | 'level', seqBase: number, seed: number } {
  const [storagePath, backend, seqBaseText, seedText] = process.argv.slice(2)
  if (storagePath === undefined || (backend !== 'file' && backend !== 'level') || seqBaseText === undefined || seedText === undefined) {
    throw new Error(`usage: ${script} <storagePath> <file|level> <seqBase> <seed>`)
  }
  return { storagePath, backend, seqBase: Number(seqBaseText), seed: Number(seedText) }
}

/**
 * Runs a child's main when its module is the script node was started with; a failure is reported
 * as an `error` line and exit code 3.
 */
export function runAsChild (moduleUrl: string, main: () => Promise<void>): void {
  if (process.argv[1] === undefined || moduleUrl !== pathToFileURL(process.argv[1]).href) return
  main().catch(childFailed)
}

/**
 * For a test file that is also its own child process (the test runner starts test files as
 * scripts too, so an environment variable tells them apart): runs `main` as the child when
 * `envVar` is `1` (a failure reported as by runAsChild), else registers the tests.
 */
export async function childOrTests (envVar: string, main: () => Promise<void>, registerTests: () => Promise<void>): Promise<void> {
  if (process.env[envVar] === '1') main().catch(childFailed)
  else await registerTests()
}

/** A child's main failed: an `error` line, the stack on stderr, exit code 3. */
function childFailed (err: unknown): never {
  const message = err instanceof Error ? `${(err as { code?: string }).code ?? err.name}: ${err.message}` : String(err)
  try { reportLine(`error ${message.replace(/\n/g, ' ')}`) } catch {}
  process.stderr.write(`${err instanceof Error ? err.stack ?? message : message}\n`)
  process.exit(3)
}

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/** What a child run by {@link killAfterReady} did: whether the kill came, its lines, how it ended. */
export interface KilledRun { killed: boolean, lines: string[], exit: ChildExit }

/**
 * Runs a child script (from its bundle: child-bundle.ts) and SIGKILLs it `delayMs` after the first line `from` picks (by
 * default the one reporting `ready`), or after `deadlineMs` in any case; resolves once it is gone
 * with every line it wrote (`killed`: the kill came while it still ran).
 */
export async function killAfterReady (script: string, args: string[], delayMs: number, deadlineMs = 60_000, from: (line: string) => boolean = (line) => line.startsWith('ready')): Promise<KilledRun> {
  const child = spawn(process.execPath, [...await bundledScriptArgs(script), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  let killed = false
  let timer: NodeJS.Timeout | undefined
  const kill = (): void => { if (!killed && child.exitCode === null) { killed = true; child.kill('SIGKILL') } }
  const deadline = setTimeout(kill, deadlineMs)
  const lines: string[] = []
  const exit = await readChildLines(child, (line) => {
    lines.push(line)
    if (timer === undefined && from(line)) timer = setTimeout(kill, delayMs)
  })
  clearTimeout(deadline)
  if (timer !== undefined) clearTimeout(timer)
  return { killed, lines, exit }
}
