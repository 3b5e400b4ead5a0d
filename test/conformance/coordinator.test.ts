// Runs the Coordinator conformance suite against the memory backend and against a real etcd server
// that this file starts (on free loopback ports, killed at the end); without etcd the etcd run is
// skipped with the reason.

import { after } from 'node:test'
import type { Etcd3 } from 'etcd3'
import { EtcdCoordinator } from '../../backends/etcd/index.js'
import { MemoryCoordinatorCluster, type MemoryCoordinator } from '../../backends/memory/coordinator.js'
import type { Coordinator } from '../../src/drivers.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from '../support/etcd.js'
import { coordinatorSuite } from './index.js'

coordinatorSuite({
  name: 'memory',
  factory: () => {
    const cluster = new MemoryCoordinatorCluster()
    return {
      handle: () => cluster.coordinator(),
      expireLeases: async (handle) => { (handle as MemoryCoordinator).expireLeases() }
    }
  }
})

// One etcd server for the whole file, started by the first test that needs it; each test gets its
// own key prefix, so tests cannot see each other's keys.
let etcd: Promise<EtcdServer> | undefined
let admin: Etcd3 | undefined
let prefixes = 0
after(async () => {
  admin?.close()
  if (etcd !== undefined) await (await etcd).stop()
})

coordinatorSuite({
  name: 'etcd',
  skip: etcdSkipReason(),
  // etcd counts leases in whole seconds and raises short ones to its minimum (2 s by default).
  ttlMs: 2000,
  factory: async () => {
    etcd ??= startEtcd()
    const { endpoint } = await etcd
    const prefix = `/galleonfs-test-${process.pid}-${++prefixes}/`
    return {
      handle: async () => await EtcdCoordinator.connect({ endpoints: [endpoint], prefix }),
      // An operator (or etcd itself after missed keepalives) ends the node's leases.
      expireLeases: async (_handle: Coordinator, nodeId: string) => {
        const { Etcd3 } = await import('etcd3')
        admin ??= new Etcd3({ hosts: [endpoint] })
        for (const what of ['alive', 'record']) {
          const response = await admin.kv.range({ key: Buffer.from(`${prefix}nodes/${encodeURIComponent(nodeId)}/${what}`) })
          const lease = response.kvs[0]?.lease
          if (lease !== undefined && lease !== '0') await admin.leaseClient.leaseRevoke({ ID: lease })
        }
      }
    }
  }
})
