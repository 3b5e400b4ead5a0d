// Child of test/review-r70-replication-kills.test.ts: one GalleonFS node in its own process (so
// the test can SIGKILL it), over the TCP transport, coordinated by a real etcd. argv: node id,
// storage path, etcd endpoint, etcd prefix, cluster secret. Runs the parent's calls ({ id, op,
// args } over IPC; `op` a GalleonFS method or one of the helpers below) and answers { id, value }
// or { id, error: { code, message } }. SIGTERM closes the instance and exits 0.

import { EtcdCoordinator } from '../../backends/etcd/index.js'
import { TcpTransport } from '../../backends/tcp/index.js'
import { GalleonError, GalleonFS, type TransportHandler, type WriteConcern } from '../../src/index.js'
import { BS, mismatches, versionBlock } from './r70-blocks.js'
import { NOT_OWN, serveParentCalls } from './node-child-calls.js'

const [nodeId, storagePath, endpoint, prefix, secret] = process.argv.slice(2) as [string, string, string, string, string]
const coordinator = await EtcdCoordinator.connect({ endpoints: [endpoint], prefix, requestTimeoutMs: 1000 })
const transport = new TcpTransport({ nodeId, clusterSecret: secret })
// The stream batches this node receives can be held (`holdStream`), then handed on or dropped as if
// they never arrived (`releaseStream`): a copy the primary waits for, which got its last batch or not.
let held: Array<{ go: () => void, drop: () => void }> | undefined
const listen = transport.listen.bind(transport)
transport.listen = async (handler: TransportHandler): Promise<string> => await listen(async (from, request) => {
  if (held !== undefined && request.kind === 'repl:apply') {
    const gate = held
    await new Promise<void>((resolve, reject) => { gate.push({ go: resolve, drop: () => { reject(new GalleonError('BACKEND_UNAVAILABLE', 'dropped by the test')) } }) })
  }
  return await handler(from, request)
})
// A copy's node is never replaced while the test has it stopped or killed.
const g = await GalleonFS.open({ storagePath, cluster: { nodeId, transport, coordinator, leaseTtlMs: 2000, replicaReplacementDelayMs: 3_600_000 } })

type View = string | { volume: string, snapshot: string }
const CHUNK = 256

async function own (op: string, args: unknown[]): Promise<unknown> {
  if (op === 'writeRange') {
    // Blocks first .. first+count-1 at `version`, in multi-block writes.
    const [volume, first, count, version, concern] = args as [string, number, number, number, WriteConcern | undefined]
    for (let at = first; at < first + count; at += CHUNK) {
      const n = Math.min(CHUNK, first + count - at)
      const data = Buffer.alloc(n * BS)
      for (let k = 0; k < n; k++) versionBlock(at + k, version).copy(data, k * BS)
      await g.write(volume, at * BS, data, concern)
    }
    return undefined
  }
  if (op === 'checkView') {
    // What of the view (read through this node) differs from `versions`.
    const [view, versions, candidates] = args as [View, number[], number[]]
    const data = Buffer.alloc(versions.length * BS)
    for (let at = 0; at < versions.length; at += 1024) {
      const n = Math.min(1024, versions.length - at)
      data.set(await g.read(view, at * BS, n * BS), at * BS)
    }
    return mismatches(data, versions, candidates)
  }
  if (op === 'blockIs') {
    // Whether block `index` of the volume (read through this node) holds `version`.
    const [volume, index, version] = args as [string, number, number]
    return Buffer.from(await g.readBlock(volume, index)).equals(versionBlock(index, version))
  }
  if (op === 'holdStream') { held = []; return undefined }
  if (op === 'heldBatches') return held?.length ?? 0
  if (op === 'releaseStream') {
    const gate = held ?? []
    held = undefined
    for (const batch of gate) args[0] === true ? batch.drop() : batch.go()
    return gate.length
  }
  if (op === 'snapshotNames') return (await g.listSnapshots(args[0] as string)).map((s) => s.name).sort()
  return NOT_OWN
}

serveParentCalls(g, own)
