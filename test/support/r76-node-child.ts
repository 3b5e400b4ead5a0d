// Child of test/crash/leave-crash.test.ts and test/crash/replicated-delete-crash.test.ts: one
// GalleonFS node in its own process over the TCP transport, coordinated by a real etcd (as
// r70-node-child.ts, whose call protocol it shares). `armKill` makes the process SIGKILL itself,
// synchronously, at a named moment (see KillArm): a coordinator write (before it is sent, or once
// it answered), a request from another node (before or after this node handles it), or an event.
// argv: node id, storage path, etcd endpoint, etcd prefix, cluster secret.

import { createHash } from 'node:crypto'
import { EtcdCoordinator } from '../../backends/etcd/index.js'
import { TcpTransport } from '../../backends/tcp/index.js'
import { GalleonFS, WriteConcern, type TransportHandler } from '../../src/index.js'
import { NOT_OWN, serveParentCalls } from './node-child-calls.js'

/**
 * Where armKill kills this node. `coordinator`: a put, delete or leave whose key contains `key`
 * (and, for a put, whose value contains `value` and not `without`), `before` it is sent or `after` it answered.
 * `request`: the `nth` (default 1st) request of `name` from another node, before or after this node
 * handled it. `event`: a GalleonFS event of that name.
 */
export type KillArm =
  | { kind: 'coordinator', op: 'put' | 'delete' | 'leave', key?: string, value?: string, without?: string, when: 'before' | 'after' }
  | { kind: 'request', name: string, when: 'before' | 'after', nth?: number }
  | { kind: 'event', name: string }

const [nodeId, storagePath, endpoint, prefix, secret] = process.argv.slice(2) as [string, string, string, string, string]
let armed: KillArm | undefined
let requestsSeen = 0
const die = (): void => { process.kill(process.pid, 'SIGKILL') }

const coordinator = await EtcdCoordinator.connect({ endpoints: [endpoint], prefix, requestTimeoutMs: 1000 })
const hits = (op: string, key: string, value: string | undefined, when: 'before' | 'after'): boolean =>
  armed?.kind === 'coordinator' && armed.op === op && armed.when === when && key.includes(armed.key ?? '') &&
  (armed.value === undefined || (value ?? '').includes(armed.value)) && (armed.without === undefined || !(value ?? '').includes(armed.without))
const put = coordinator.put.bind(coordinator)
coordinator.put = async (key, value, options) => {
  if (hits('put', key, value, 'before')) die()
  const written = await put(key, value, options)
  if (written !== undefined && hits('put', key, value, 'after')) die()
  return written
}
const del = coordinator.delete.bind(coordinator)
coordinator.delete = async (key, options) => {
  if (hits('delete', key, undefined, 'before')) die()
  const deleted = await del(key, options)
  if (deleted && hits('delete', key, undefined, 'after')) die()
  return deleted
}
const leave = coordinator.leave.bind(coordinator)
coordinator.leave = async () => {
  if (hits('leave', '', undefined, 'before')) die()
  await leave()
  if (hits('leave', '', undefined, 'after')) die()
}

const transport = new TcpTransport({ nodeId, clusterSecret: secret })
const listen = transport.listen.bind(transport)
transport.listen = async (handler: TransportHandler): Promise<string> => await listen(async (from, request) => {
  const arm = armed
  const mine = arm?.kind === 'request' && request.kind === arm.name && ++requestsSeen === (arm.nth ?? 1)
  if (mine && arm.when === 'before') die()
  const reply = await handler(from, request)
  if (mine && arm.when === 'after') die()
  return reply
})
// A copy's node is never replaced while the test has it killed.
const g = await GalleonFS.open({ storagePath, cluster: { nodeId, transport, coordinator, leaseTtlMs: 2000, replicaReplacementDelayMs: 3_600_000 } })
for (const name of ['replication:replica-added', 'replication:demoted', 'replication:primary', 'replication:copy-dropped', 'volume:deleted', 'volume:state'] as const) {
  g.on(name, () => { if (armed?.kind === 'event' && armed.name === name) die() })
}

async function own (op: string, args: unknown[]): Promise<unknown> {
  if (op === 'armKill') { armed = args[0] as KillArm; requestsSeen = 0; return undefined }
  if (op === 'fill') {
    // The volume's whole content: each 4 KiB block `seed` and its index.
    const [volume, blocks, seed] = args as [string, number, number]
    const data = Buffer.alloc(blocks * 4096)
    for (let i = 0; i < blocks; i++) data.fill((seed * 31 + i) & 0xff, i * 4096, (i + 1) * 4096).writeUInt32LE(i, i * 4096)
    await g.write(volume, 0, data, WriteConcern.WriteReplicated)
    return createHash('sha256').update(data).digest('hex')
  }
  if (op === 'digest') {
    const volume = await g.getVolume(args[0] as string)
    return createHash('sha256').update(await g.read(volume.id, 0, volume.sizeBytes)).digest('hex')
  }
  if (op === 'volumeNames') return (await g.listVolumes()).map((v) => v.name).sort()
  return NOT_OWN
}

serveParentCalls(g, own)
