// Child of test/h70-forwarded-rotation.test.ts: one GalleonFS node in its own process, over the TCP
// transport, coordinated by a real etcd. argv: node id, storage path, etcd endpoint, etcd prefix,
// cluster secret, and optionally the lease in ms (2000 by default; h92 uses a long one). Runs the parent's calls ({ id, op, args } over IPC; `op` a GalleonFS method,
// block data as base64) and answers { id, value } or { id, error: { code, message } }. SIGTERM
// closes the instance (as a stopping daemon does) and exits 0.

import { EtcdCoordinator } from '../../backends/etcd/index.js'
import { TcpTransport } from '../../backends/tcp/index.js'
import { GalleonFS } from '../../src/index.js'
import { serveParentCalls } from './node-child-calls.js'

const [nodeId, storagePath, endpoint, prefix, secret, lease] = process.argv.slice(2) as [string, string, string, string, string, string | undefined]
const coordinator = await EtcdCoordinator.connect({ endpoints: [endpoint], prefix, requestTimeoutMs: 1000 })
const transport = new TcpTransport({ nodeId, clusterSecret: secret })
const g = await GalleonFS.open({ storagePath, cluster: { nodeId, transport, coordinator, leaseTtlMs: lease === undefined ? 2000 : Number(lease) } })

serveParentCalls(g)
