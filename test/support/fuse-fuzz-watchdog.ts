// Runs a node script that serves FUSE mounts as a child process, with a deadline. A process that
// serves a mount and waits for it on its event loop's thread deadlocks for good (even a SIGKILL
// leaves it stuck closing its own files), so the test cannot wait for it in-process: past the
// deadline the FUSE connections of the child's mounts under `root` are aborted (fusectl) and
// detached, the child is killed, and the caller hears that it hung.

import { execFile, spawn } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const exec = promisify(execFile)
const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/** What a watched child did: its stdout lines, exit code, and whether it had to be stopped. */
export interface WatchedRun {
  readonly lines: string[]
  readonly code: number | null
  readonly hung: boolean
  readonly stderr: string
}

/** FUSE mounts below `root` (from /proc/self/mountinfo, octal escapes decoded), with their connection numbers. */
async function fuseMountsUnder (root: string): Promise<Array<{ path: string, connection: string }>> {
  const info = await readFile('/proc/self/mountinfo', 'utf8')
  return info.split('\n').map((line) => line.split(' ')).filter((fields) => fields.some((f) => f.startsWith('fuse')))
    .map((fields) => ({ path: (fields[4] ?? '').replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))), connection: (fields[2] ?? '').split(':')[1] ?? '' }))
    .filter((mount) => mount.path.startsWith(root + '/'))
}

/** FUSE mount points below `root`. */
export async function mountsUnder (root: string): Promise<string[]> {
  return (await fuseMountsUnder(root)).map((mount) => mount.path)
}

/**
 * Aborts the FUSE connections of the mounts below `root` (their requests fail at once, so a
 * process stuck waiting for one goes on or dies) through fusectl, mounted for the purpose if it is
 * not, and detaches the mounts.
 */
export async function abortMountsUnder (root: string): Promise<void> {
  const mounts = await fuseMountsUnder(root)
  if (mounts.length === 0) return
  const control = '/sys/fs/fuse/connections'
  const mountedHere = await exec('mountpoint', ['-q', control]).then(() => false, async () => await exec('mount', ['-t', 'fusectl', 'none', control]).then(() => true, () => false))
  for (const { path, connection } of mounts) {
    await writeFile(`${control}/${connection}/abort`, '1').catch(async () => { await exec('umount', ['-f', path]).catch(() => {}) })
    await exec('umount', ['-l', path]).catch(() => {})
  }
  if (mountedHere) await exec('umount', [control]).catch(() => {})
}

/**
 * Runs `node --import tsx <script>` (a path relative to the repository) with `env` added; resolves
 * once it exits, or after `deadlineMs` with `hung: true` once it has been stopped. `onLine` sees
 * each stdout line as it comes. `as`: the user and group to run it as (the caller being root).
 */
export async function runWatched (script: string, env: Record<string, string>, root: string, deadlineMs: number, onLine: (line: string) => void = () => {}, as?: { uid: number, gid: number }): Promise<WatchedRun> {
  const child = spawn(process.execPath, ['--import', 'tsx', script], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], ...(as === undefined ? {} : { uid: as.uid, gid: as.gid }) })
  const lines: string[] = []
  let pending = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => {
    pending += chunk.toString()
    let newline: number
    while ((newline = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, newline)
      pending = pending.slice(newline + 1)
      lines.push(line)
      onLine(line)
    }
  })
  child.stderr.on('data', (chunk: Buffer) => { stderr = (stderr + chunk.toString()).slice(-20_000) })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  let timer: NodeJS.Timeout | undefined
  const outcome = await Promise.race([exited.then((code) => ({ code })), new Promise<'late'>((resolve) => { timer = setTimeout(resolve, deadlineMs, 'late') })])
  clearTimeout(timer)
  if (outcome !== 'late') return { lines, code: outcome.code, hung: false, stderr }
  // Abort its FUSE connections (its requests then fail, and the process can run or die), detach them, kill it.
  await abortMountsUnder(root)
  child.kill('SIGKILL')
  let stopTimer: NodeJS.Timeout | undefined
  const code = await Promise.race([exited, new Promise<null>((resolve) => { stopTimer = setTimeout(resolve, 10_000, null) })])
  clearTimeout(stopTimer)
  return { lines, code, hung: true, stderr }
}
