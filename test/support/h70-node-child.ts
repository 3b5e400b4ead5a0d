// Child of test/h70-forwarded-rotation.test.ts: one GalleonFS node in its own process, over the TCP
// transport, coordinated by a real etcd. argv: node id, storage path, etcd endpoint, etcd prefix,
// cluster secret. Runs the parent's calls ({ id, op, args } over IPC; `op` a GalleonFS method,
// block data as base64) and answers { id, value } or { id, error: { code, message } }. SIGTERM
// closes the instance (as a stopping daemon does) and exits 0.

import { EtcdCoordinator } from '../../backends/etcd/index.js'
import { TcpTransport } from '../../backends/tcp/index.js'
import { GalleonFS } from '../../src/index.js'

const [nodeId, storagePath, endpoint, prefix, secret] = process.argv.slice(2) as [string, string, string, string, string]
const coordinator = await EtcdCoordinator.connect({ endpoints: [endpoint], prefix, requestTimeoutMs: 1000 })
const transport = new TcpTransport({ nodeId, clusterSecret: secret })
const g = await GalleonFS.open({ storagePath, cluster: { nodeId, transport, coordinator, leaseTtlMs: 2000 } })

async function call (op: string, args: unknown[]): Promise<unknown> {
  if (op === 'healthyMembers') return g.cluster?.members.filter((m) => m.healthy).length ?? 0
  if (op === 'writeBlock') return await g.writeBlock(args[0] as string, args[1] as number, Buffer.from(args[2] as string, 'base64'), args[3] as never)
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
