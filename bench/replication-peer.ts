// The second node of bench/replication.ts, run as its own process: opens a GalleonFS instance in
// the cluster (TCP transport, etcd coordinator), says "ready" on stdout, and closes cleanly on SIGTERM.
// Arguments: <nodeId> <storagePath> <etcd endpoint> <cluster secret>.

import { GalleonFS } from '../src/index.js'
import { TcpTransport } from '../backends/tcp/index.js'
import { EtcdCoordinator } from '../backends/etcd/index.js'

const [nodeId, storagePath, endpoint, secret] = process.argv.slice(2) as [string, string, string, string]
// Said before opening: the bench times a resync from here, not from the process's start-up.
process.stdout.write('opening\n')
const g = await GalleonFS.open({
  storagePath,
  cluster: { nodeId, transport: new TcpTransport({ nodeId, clusterSecret: secret }), coordinator: await EtcdCoordinator.connect({ endpoints: [endpoint] }), leaseTtlMs: 3000 }
})
process.once('SIGTERM', () => {
  g.close().then(() => process.exit(0), (err: unknown) => { console.error(err); process.exit(1) })
})
process.stdout.write('ready\n')
