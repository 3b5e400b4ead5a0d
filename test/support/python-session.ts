// A Python child process driven line by line, for tests that need a second process to hold file
// descriptors on a mount (a FUSE handler must never be awaited synchronously by its own process).

import { spawn } from 'node:child_process'
import { until } from './wait.js'

/** Runs `script` with `args`: it prints, waits for a line on stdin (send), and so on. */
export function pythonSession (script: string, ...args: string[]): { lines: string[], next: (count: number) => Promise<void>, send: () => void, exited: Promise<number | null>, kill: () => Promise<void> } {
  const child = spawn('python3', ['-c', script, ...args], { stdio: ['pipe', 'pipe', 'inherit'] })
  const lines: string[] = []
  let pending = ''
  child.stdout.on('data', (chunk: Buffer) => {
    pending += chunk.toString()
    for (let newline = pending.indexOf('\n'); newline >= 0; newline = pending.indexOf('\n')) {
      lines.push(pending.slice(0, newline))
      pending = pending.slice(newline + 1)
    }
  })
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
  return {
    lines,
    next: async (count) => { await until(`the child printed ${count} line(s) (${JSON.stringify(lines)})`, () => lines.length >= count, 20_000) },
    send: () => { child.stdin.write('\n') },
    exited,
    // For a test's finally, before its instance closes: a child left waiting for a line with a
    // mount's file open would use the mount after the instance stopped serving it, and hang there
    // (it also holds the /dev/fuse descriptor it inherited, so the kernel never gives up on it).
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
      await exited
    }
  }
}
