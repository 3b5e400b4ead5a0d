// Child of test/h65-etcd-lease-steps.test.ts, run with the stepped clock preloaded: joins a cluster
// on etcd (argv[2], the endpoint; argv[3], the lease TTL in ms) and reports over IPC when its
// lease is held ({ lease: true | false }).

import { EtcdCoordinator } from '../../backends/etcd/index.js'

const [endpoint, ttl, prefix] = process.argv.slice(2) as [string, string, string]
const coordinator = await EtcdCoordinator.connect({ endpoints: [endpoint], prefix, requestTimeoutMs: 1000 })
coordinator.onLeaseChange((held) => { process.send?.({ lease: held, at: performance.now() }) })
await coordinator.join({ id: 'n1', address: '127.0.0.1:1', zone: 'default', labels: {}, capacityBytes: 0, freeBytes: 0 }, { ttlMs: Number(ttl) })
process.send?.({ joined: true })
// Lives until the parent kills it.
setInterval(() => {}, 60_000)
