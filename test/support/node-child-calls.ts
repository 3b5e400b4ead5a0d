// The call protocol of the test suites' node processes (h70-, r68- and r70-node-child.ts): the
// parent sends { id, op, args } over IPC and gets { id, value } or { id, error: { code, message } }
// back; `op` is one of the child's own helpers, one of the common ones below, or a GalleonFS
// method. SIGTERM closes the instance (as a stopping daemon does) and exits 0. The child says
// { ready: true } once it serves.

import type { GalleonFS } from '../../src/index.js'

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
