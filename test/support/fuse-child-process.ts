// The parent's side of a FUSE file system served by a child process (a FUSE handler must never be
// served by the process that uses the mount): fork the child, wait until it says it mounted, send
// it requests over IPC and take their answers, and unmount whatever happens. Used by the
// fault-injecting (h60-faulty-fs.ts) and power-loss (h63-power-fs.ts) file systems.

import { execFile, fork, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { forkArgs } from './child-script.js'

/**
 * Why a FUSE file system served by a child process cannot run here (no /dev/fuse, no fuse-native,
 * not root: mounted without fusermount), or undefined when it can. `purpose` ends the first reason.
 */
export function fuseChildUnavailable (name: string, purpose: string): string | undefined {
  try {
    fs.accessSync('/dev/fuse', fs.constants.R_OK | fs.constants.W_OK)
  } catch {
    return `no /dev/fuse (FUSE is needed to ${purpose})`
  }
  try {
    createRequire(import.meta.url).resolve('fuse-native')
  } catch {
    return 'fuse-native is not installed'
  }
  if ((process.getuid?.() ?? 0) !== 0) return `not root: the ${name} is mounted without fusermount`
  return undefined
}

/** A message from the child: 'ready', 'error' (could not mount), an answer to request `id`, or an event. */
export interface ChildMessage { type?: string, id?: number, ok?: boolean, message?: string, [key: string]: unknown }

export interface FuseChild {
  /** Sends a request; resolves with the child's answer, rejects if it says not ok or exits. */
  request: (body: Record<string, unknown>) => Promise<any>
  /** Asks the child to unmount and waits for it to exit; then makes sure nothing is left mounted. */
  stop: () => Promise<void>
}

/**
 * Forks `script` (a module URL that serves the mount when run with `args`, answering requests by
 * id), creating `backing` and `mountPoint` first. `name` names the file system in errors;
 * `onEvent` gets the child's messages of type 'event'.
 */
export async function startFuseChild (script: string, args: readonly string[], backing: string, mountPoint: string, name: string, onEvent?: (message: ChildMessage) => void): Promise<FuseChild> {
  fs.mkdirSync(backing, { recursive: true })
  fs.mkdirSync(mountPoint, { recursive: true })
  const { modulePath, execArgv } = forkArgs(fileURLToPath(script))
  const child: ChildProcess = fork(modulePath, [...args], {
    execArgv,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
  let nextId = 1
  const pending = new Map<number, { resolve: (value: any) => void, reject: (err: Error) => void }>()
  let exited = false
  const ready = new Promise<void>((resolve, reject) => {
    child.on('message', (message: ChildMessage) => {
      if (message.type === 'ready') resolve()
      else if (message.type === 'event') onEvent?.(message)
      else if (message.type === 'error') reject(new Error(`${name} did not mount: ${message.message ?? ''}`))
      else if (message.id !== undefined) {
        const waiter = pending.get(message.id)
        pending.delete(message.id)
        if (message.ok === true) waiter?.resolve(message)
        else waiter?.reject(new Error(`${name}: ${message.message ?? 'request failed'}`))
      }
    })
    child.on('exit', (code) => {
      exited = true
      reject(new Error(`${name} exited with ${String(code)} before it was ready`))
      for (const waiter of pending.values()) waiter.reject(new Error(`${name} exited`))
      pending.clear()
    })
  })
  await ready
  const request = async (body: Record<string, unknown>): Promise<any> => {
    if (exited) throw new Error(`${name} exited`)
    const id = nextId++
    return await new Promise((resolve, reject) => {
      pending.set(id, { resolve, reject })
      child.send({ id, ...body })
    })
  }
  return {
    request,
    stop: async () => {
      if (!exited) {
        const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()))
        await request({ type: 'unmount' }).catch(() => {})
        await gone
      }
      // Whatever the child managed, leave no mount behind.
      await new Promise<void>((resolve) => execFile('fusermount', ['-uz', mountPoint], () => resolve()))
    }
  }
}
