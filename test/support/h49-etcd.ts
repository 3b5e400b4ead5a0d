// An etcd for the h49 tests that can be killed (SIGKILL) and started again on the same data
// directory and ports, and paused (SIGSTOP) and resumed. Stopped (and its directory removed) by
// stop(), and killed when the test process exits.

import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { findEtcd } from './etcd.js'
import { freePort } from './net.js'

/** A restartable etcd. */
export interface RestartableEtcd {
  readonly endpoint: string
  /** SIGKILL; resolves once the process is gone. */
  kill: () => Promise<void>
  /** Starts it again on the same data directory and ports; resolves once healthy. */
  restart: () => Promise<void>
  /** SIGSTOP; resolves once the process is stopped. */
  pause: () => Promise<void>
  /** SIGCONT. */
  resume: () => void
  /** Stops it for good and removes its data directory (idempotent). */
  stop: () => Promise<void>
}

const running = new Set<ChildProcess>()
process.on('exit', () => { for (const child of running) { child.kill('SIGCONT'); child.kill('SIGKILL') } })

async function healthy (metrics: string): Promise<boolean> {
  try {
    const response = await fetch(`${metrics}/health`, { signal: AbortSignal.timeout(2000) })
    return ((await response.json()) as { health?: string }).health === 'true'
  } catch {
    return false
  }
}

export async function startRestartableEtcd (): Promise<RestartableEtcd> {
  const binary = findEtcd()
  if (binary === undefined) throw new Error('etcd is not installed')
  const [clientPort, peerPort, metricsPort] = [await freePort(), await freePort(), await freePort()]
  const dataDir = await mkdtemp(join(tmpdir(), 'galleonfs-h49-etcd-'))
  const endpoint = `http://127.0.0.1:${clientPort}`
  const peer = `http://127.0.0.1:${peerPort}`
  const metrics = `http://127.0.0.1:${metricsPort}`
  let child: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()
  let output = ''
  const launch = async (): Promise<void> => {
    const proc = spawn(binary, [
      '--name', 't', '--data-dir', dataDir,
      '--listen-client-urls', endpoint, '--advertise-client-urls', endpoint, '--listen-metrics-urls', metrics,
      '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `t=${peer}`,
      '--logger', 'zap', '--log-outputs', 'stderr', '--log-level', 'warn'
    ], { stdio: ['ignore', 'ignore', 'pipe'] })
    child = proc
    running.add(proc)
    let gone = false
    exited = new Promise<void>((resolve) => proc.once('exit', () => { gone = true; running.delete(proc); resolve() }))
    proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => { output = (output + chunk).slice(-4000) })
    const deadline = Date.now() + 30_000
    while (!gone && Date.now() < deadline) {
      if (await healthy(metrics)) return
      await sleep(100)
    }
    throw new Error(`etcd did not become healthy at ${endpoint}${gone ? ' (it exited)' : ''}; its last output:\n${output}`)
  }
  const kill = async (): Promise<void> => {
    if (child === undefined) return
    child.kill('SIGCONT')
    child.kill('SIGKILL')
    await exited
    child = undefined
  }
  try {
    await launch()
  } catch (err) {
    await kill()
    await rm(dataDir, { recursive: true, force: true })
    throw err
  }
  return {
    endpoint,
    kill,
    restart: launch,
    pause: async () => {
      const pid = child?.pid
      if (pid === undefined) throw new Error('etcd is not running')
      child?.kill('SIGSTOP')
      while ((await readFile(`/proc/${pid}/stat`, 'utf8')).split(' ')[2] !== 'T') await sleep(10)
    },
    resume: () => { child?.kill('SIGCONT') },
    stop: async () => {
      await kill()
      await rm(dataDir, { recursive: true, force: true })
    }
  }
}
