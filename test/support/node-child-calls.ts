// The call protocol of the test suites' node processes (h70-, r68-, r70- and r76-node-child.ts):
// the parent sends { id, op, args } over IPC and gets { id, value } or { id, error: { code,
// message } } back; `op` is one of the child's own helpers, one of the common ones below, or a
// GalleonFS method. SIGTERM closes the instance (as a stopping daemon does) and exits 0. The child
// says { ready: true } once it serves, and may send { event, payload } at any time.
// serveParentCalls is the child's side, spawnNodeChild the parent's.

import { spawn, type ChildProcess } from 'node:child_process'
import type { GalleonFS } from '../../src/index.js'
import { bundledScriptArgs } from './child-bundle.js'

/** What a child's own handler answers for an op that is not one of its own. */
export const NOT_OWN: unique symbol = Symbol('not one of the child\'s own calls')

/**
 * Serves the parent's calls on `g`: `own` first (answering NOT_OWN for an op it leaves to the
 * rest), then `healthyMembers`, `writeBlock`, `write` and `readBlock` with block data as base64,
 * then any GalleonFS method by name.
 */
export function serveParentCalls (g: GalleonFS, own?: (op: string, args: unknown[]) => Promise<unknown>): void {
  const call = async (op: string, args: unknown[]): Promise<unknown> => {
    if (own !== undefined) {
      const answer = await own(op, args)
      if (answer !== NOT_OWN) return answer
    }
    if (op === 'healthyMembers') return g.cluster?.members.filter((m) => m.healthy).length ?? 0
    if (op === 'writeBlock') return await g.writeBlock(args[0] as string, args[1] as number, Buffer.from(args[2] as string, 'base64'), args[3] as never)
    if (op === 'write') return await g.write(args[0] as string, args[1] as number, Buffer.from(args[2] as string, 'base64'), args[3] as never)
    if (op === 'readBlock') return Buffer.from(await g.readBlock(args[0] as string, args[1] as number)).toString('base64')
    const method = (g as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[op]
    if (typeof method !== 'function') throw new Error(`no GalleonFS method ${op}`)
    return await method.apply(g, args)
  }
  process.on('message', (message: { id: number, op: string, args: unknown[] }) => {
    call(message.op, message.args).then(
      (value) => { process.send?.({ id: message.id, value }) },
      (err: { code?: string, message?: string }) => { process.send?.({ id: message.id, error: { code: err?.code ?? 'ERROR', message: err?.message ?? String(err) } }) }
    )
  })
  process.once('SIGTERM', () => {
    void g.close().finally(() => { process.exit(0) })
  })
  process.send?.({ ready: true })
}

/** A node process started by spawnNodeChild. */
export interface NodeChild {
  readonly child: ChildProcess
  /**
   * Calls `op` there. Rejects with the node's { code, message }, or with code EXITED when the
   * process is not running or exits before it answers.
   */
  call: <T = unknown>(op: string, ...args: unknown[]) => Promise<T>
}

/**
 * Spawns the node process `script` with `argv` (stderr kept for the error of a start that fails)
 * and resolves once it serves calls. `onSpawn` sees the process first (to track it, and kill it if
 * the start hangs); `onEvent` hears its { event, payload } messages.
 */
export async function spawnNodeChild (script: string, argv: string[], id: string, options: { onSpawn?: (child: ChildProcess) => void, onEvent?: (event: string, payload: unknown) => void } = {}): Promise<NodeChild> {
  const child = spawn(process.execPath, [...await bundledScriptArgs(script), ...argv], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] })
  options.onSpawn?.(child)
  let stderr = ''
  child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const waiting = new Map<number, { resolve: (value: unknown) => void, reject: (err: unknown) => void }>()
  let ready: () => void = () => {}
  const started = new Promise<void>((resolve, reject) => {
    ready = resolve
    child.once('exit', (code, signal) => { reject(new Error(`node ${id} exited (${code ?? signal}) before it was ready: ${stderr}`)) })
  })
  child.on('message', (message: { ready?: boolean, event?: string, payload?: unknown, id?: number, value?: unknown, error?: { code: string, message: string } }) => {
    if (message.ready === true) return ready()
    if (message.event !== undefined) return options.onEvent?.(message.event, message.payload)
    const call = waiting.get(message.id as number)
    waiting.delete(message.id as number)
    if (message.error !== undefined) call?.reject(Object.assign(new Error(message.error.message), { code: message.error.code }))
    else call?.resolve(message.value)
  })
  child.once('exit', (code, signal) => {
    for (const call of waiting.values()) call.reject(Object.assign(new Error(`node ${id} exited (${code ?? signal}) before it answered`), { code: 'EXITED' }))
    waiting.clear()
  })
  await started
  let next = 0
  const call = async <T>(op: string, ...args: unknown[]): Promise<T> => await new Promise((resolve, reject) => {
    if (child.exitCode !== null || child.signalCode !== null) return reject(Object.assign(new Error(`node ${id} is not running`), { code: 'EXITED' }))
    const callId = ++next
    waiting.set(callId, { resolve: resolve as (value: unknown) => void, reject })
    child.send({ id: callId, op, args }, (err) => {
      if (err === null) return
      waiting.delete(callId)
      reject(Object.assign(err, { code: 'EXITED' }))
    })
  })
  return { child, call }
}
