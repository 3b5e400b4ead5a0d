// Starts a child process with the stepped wall clock preloaded (test/support/h65-clock-preload.ts)
// and talks to it over IPC: its messages are collected, and step() steps its wall clock.

import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { ROOT, childExit, scriptArgs } from './child-script.js'

export interface SteppedChild {
  readonly process: ChildProcess
  /** Every IPC message received so far, in order. */
  readonly messages: unknown[]
  /** Output on stderr so far (for failure messages). */
  stderr: () => string
  /** Waits (up to `timeoutMs`) for the child to exit and returns the JSON of its last stdout line. */
  result: <T>(timeoutMs: number) => Promise<T>
  /** Resolves with the first message (seen or to come) that `match` accepts; rejects after `timeoutMs` or when the child exits. */
  next: <T>(what: string, match: (message: any) => boolean, timeoutMs: number) => Promise<T>
  /** Steps the child's wall clock by `ms` and resolves once it has. */
  step: (ms: number) => Promise<void>
  kill: () => Promise<void>
}

export function startStepped (script: string, args: readonly string[]): SteppedChild {
  const preload = pathToFileURL(scriptArgs(join(ROOT, 'test/support/h65-clock-preload.ts'))[0]!).href
  const child = spawn(process.execPath, ['--import', preload, ...scriptArgs(join(ROOT, script)), ...args], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] })
  const messages: unknown[] = []
  const listeners = new Set<() => void>()
  let stderr = ''
  let stdout = ''
  child.stdout?.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  child.on('message', (message) => { messages.push(message); for (const listener of [...listeners]) listener() })
  child.on('exit', () => { for (const listener of [...listeners]) listener() })
  const next = async <T>(what: string, match: (message: any) => boolean, timeoutMs: number): Promise<T> => await new Promise<T>((resolve, reject) => {
    let seen = 0
    const check = (): void => {
      for (; seen < messages.length; seen++) {
        if (match(messages[seen])) { done(); resolve(messages[seen] as T); return }
      }
      if (child.exitCode !== null || child.signalCode !== null) { done(); reject(new Error(`the child exited (${child.exitCode ?? child.signalCode}) before ${what}; stderr: ${stderr.slice(-2000)}`)) }
    }
    const timer = setTimeout(() => { done(); reject(new Error(`timed out after ${timeoutMs} ms waiting until ${what}; messages: ${JSON.stringify(messages)}; stderr: ${stderr.slice(-2000)}`)) }, timeoutMs)
    const done = (): void => { clearTimeout(timer); listeners.delete(check) }
    listeners.add(check)
    check()
  })
  return {
    process: child,
    messages,
    stderr: () => stderr,
    result: async <T>(timeoutMs: number): Promise<T> => {
      let timer: NodeJS.Timeout | undefined
      await Promise.race([childExit(child), new Promise((resolve, reject) => { timer = setTimeout(() => { reject(new Error(`the child did not finish within ${timeoutMs} ms; stderr: ${stderr.slice(-2000)}`)) }, timeoutMs) })]).finally(() => { clearTimeout(timer) })
      const line = stdout.trim().split('\n').at(-1)
      if (line === undefined || line === '') throw new Error(`the child printed nothing (exit ${child.exitCode ?? child.signalCode}); stderr: ${stderr.slice(-2000)}`)
      return JSON.parse(line) as T
    },
    next,
    step: async (ms) => {
      const before = messages.length
      child.send({ h65Step: ms })
      await next('the child stepped its clock', (m) => messages.indexOf(m) >= before && typeof m?.h65Stepped === 'number', 10_000)
    },
    kill: async () => {
      child.kill('SIGKILL')
      await childExit(child)
    }
  }
}
