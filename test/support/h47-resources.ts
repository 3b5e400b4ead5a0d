// Counting what a process holds (file descriptors by path, libuv handles by type, heap after a full
// GC) so the h47 churn tests can compare the state after many open/close cycles with the baseline.

import { readdirSync, readlinkSync } from 'node:fs'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

/** What the process holds at one moment. */
export interface Resources {
  /** Open descriptors: fd number -> what it points at (a path, `socket:[inode]`, `anon_inode:...`). */
  fds: Map<number, string>
  /** `process.getActiveResourcesInfo()` counted by type (`TCPWrap`, `Timeout`, `FSReqCallback`, ...). */
  handles: Map<string, number>
}

/** Reads /proc/self/fd and the active libuv resources. */
export function takeResources (): Resources {
  const fds = new Map<number, string>()
  for (const entry of readdirSync('/proc/self/fd')) {
    const fd = Number(entry)
    try { fds.set(fd, readlinkSync(`/proc/self/fd/${entry}`)) } catch { /* the descriptor readdir itself used, closed by now */ }
  }
  const handles = new Map<string, number>()
  for (const type of process.getActiveResourcesInfo()) handles.set(type, (handles.get(type) ?? 0) + 1)
  return { fds, handles }
}

/** Handle types that are a test's own waiting, not something GalleonFS keeps. */
const TRANSIENT = new Set(['FSReqCallback', 'FSReqPromise', 'PromiseHook', 'TTYWrap', 'PipeWrap', 'SignalWrap', 'ProcessWrap'])

/** What `after` holds that `before` did not: fd targets new since then, and handle types that grew. */
export function leakedSince (before: Resources, after: Resources, ignoreFd: (target: string) => boolean = () => false): { fds: string[], handles: string[] } {
  const beforeTargets = new Map<string, number>()
  for (const target of before.fds.values()) beforeTargets.set(normalise(target), (beforeTargets.get(normalise(target)) ?? 0) + 1)
  const fds: string[] = []
  for (const [fd, target] of after.fds) {
    const key = normalise(target)
    const left = beforeTargets.get(key) ?? 0
    if (left > 0) { beforeTargets.set(key, left - 1); continue }
    if (ignoreFd(target)) continue
    fds.push(`${fd} -> ${target}`)
  }
  const handles: string[] = []
  for (const [type, count] of after.handles) {
    if (TRANSIENT.has(type)) continue
    const was = before.handles.get(type) ?? 0
    if (count > was) handles.push(`${type}: ${was} -> ${count}`)
  }
  return { fds, handles }
}

// Sockets and anonymous inodes differ by inode number each cycle; compare them by kind.
function normalise (target: string): string {
  return target.replace(/^(socket|pipe|anon_inode):\[?\d*\]?.*$/, '$1')
}

let collect: (() => void) | undefined
/** A full GC: the exposed `gc` if node ran with --expose-gc, else the one V8 hands a new context. */
export function fullGc (): void {
  if (collect === undefined) {
    const exposed = (globalThis as { gc?: () => void }).gc
    if (exposed !== undefined) collect = exposed
    else {
      setFlagsFromString('--expose-gc')
      collect = runInNewContext('gc') as () => void
    }
  }
  collect()
  collect()
}

/** Heap plus external (Buffer) memory in use after a full GC, after letting pending callbacks and finalisers run. */
export async function settledHeap (): Promise<number> {
  for (let i = 0; i < 3; i++) {
    await new Promise((resolve) => setImmediate(resolve))
    fullGc()
  }
  const usage = process.memoryUsage()
  return usage.heapUsed + usage.external
}

/** Waits a few turns of the loop (closes of sockets and files finish asynchronously). */
export async function settle (turns = 5): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise((resolve) => setTimeout(resolve, 5))
}

/**
 * Waits (polling, bounded only so a failing test ends) until nothing is left over since `before`,
 * and returns what is still left then. An empty result means no leak.
 */
export async function leftoversAfter (before: Resources, ignoreFd?: (target: string) => boolean, timeoutMs = 5_000): Promise<{ fds: string[], handles: string[] }> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    await settle()
    const left = leakedSince(before, takeResources(), ignoreFd)
    if ((left.fds.length === 0 && left.handles.length === 0) || Date.now() > deadline) return left
  }
}

/** Total listeners over every event name of an eventemitter3 or node EventEmitter. */
export function listenerTotal (instance: object): number {
  const emitter = instance as { eventNames: () => Array<string | symbol>, listenerCount: (name: string | symbol) => number }
  let total = 0
  for (const name of emitter.eventNames()) total += emitter.listenerCount(name)
  return total
}
