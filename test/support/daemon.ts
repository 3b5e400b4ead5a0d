// Starts `galleonfs -d` (examples/galleonfs.ts, transpiled by child-script.ts) as a child process for tests, and waits
// until it logs "ready" with its IPC address. A daemon runs from its bundle (child-bundle.ts: about
// a third less CPU before it is ready, and tests start hundreds); the CLI runs from the transpiled
// tree, which loads only what a command needs.

import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { bundledScriptArgs } from './child-bundle.js'
import { scriptArgs } from './child-script.js'

export const ROOT = fileURLToPath(new URL('../..', import.meta.url))
export const ENTRY = join(ROOT, 'examples', 'galleonfs.ts')

/** A daemon started by {@link startDaemonProcess}. */
export interface RunningDaemon {
  readonly child: ChildProcess
  /** Its IPC address (host:port), from its "ready" log line. */
  readonly address: string
  /** Its log lines (JSON), as they come. */
  readonly logs: string[]
  readonly exited: Promise<number | null>
}

/** Runs `galleonfs -d ...args` in `cwd` (under tsx with `tsx`, to load TypeScript driver modules); rejects with its log when it exits before it is ready. */
export async function startDaemonProcess (args: string[], options: { cwd: string, env?: NodeJS.ProcessEnv, onSpawn?: (child: ChildProcess) => void, tsx?: boolean }): Promise<RunningDaemon> {
  const entry = options.tsx === true ? scriptArgs(ENTRY, { tsx: true }) : await bundledScriptArgs(ENTRY)
  const child = spawn(process.execPath, [...entry, '-d', ...args], { cwd: options.cwd, stdio: ['ignore', 'ignore', 'pipe'], env: options.env ?? process.env })
  options.onSpawn?.(child)
  const logs: string[] = []
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  const address = await new Promise<string>((resolve, reject) => {
    let pending = ''
    child.stderr?.on('data', (chunk: Buffer) => {
      pending += chunk.toString()
      let newline: number
      while ((newline = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, newline)
        pending = pending.slice(newline + 1)
        logs.push(line)
        try {
          const entry = JSON.parse(line) as { message?: string, ipcAddress?: string }
          if (entry.message === 'ready' && entry.ipcAddress !== undefined) resolve(entry.ipcAddress)
        } catch {}
      }
    })
    void exited.then((code) => reject(new Error(`the daemon exited with ${code}: ${logs.join(' | ')}`)))
  })
  return { child, address, logs, exited }
}

/** Runs the `galleonfs` CLI against the daemon at `address`; resolves to its exit code and output. */
export async function runCli (address: string, args: string[], options: { cwd?: string, env?: Record<string, string> } = {}): Promise<{ code: number, stdout: string, stderr: string }> {
  return await new Promise((resolve) => {
    execFile(process.execPath, [...scriptArgs(ENTRY), '--daemon-address', address, ...args], { cwd: options.cwd ?? ROOT, env: { ...process.env, ...options.env } }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : (err as { code?: number }).code ?? 1, stdout, stderr })
    })
  })
}

/** Runs `galleonfs -d ...args` in `cwd`, expecting it to stop; resolves to its exit code and the messages it logged (one per line). */
export async function runDaemonToExit (args: string[], options: { cwd: string, env?: NodeJS.ProcessEnv }): Promise<{ code: number | null, log: string }> {
  const child = spawn(process.execPath, [...await bundledScriptArgs(ENTRY), '-d', '--ipc-address', '127.0.0.1:0', ...args], { cwd: options.cwd, stdio: ['ignore', 'ignore', 'pipe'], env: options.env ?? process.env })
  let log = ''
  child.stderr?.on('data', (chunk: Buffer) => { log += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  const messages = log.split('\n').filter((line) => line.startsWith('{')).map((line) => (JSON.parse(line) as { message: string }).message)
  return { code, log: messages.join('\n') }
}
