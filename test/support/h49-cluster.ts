// Three in-process GalleonFS nodes on a real etcd (one EtcdCoordinator each, over the memory
// transport) for the h49 tests, with a 3-copy volume whose primary is n1, a record of every
// moment two nodes held the primary role at once, and the cluster events each node emitted.

import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { EtcdCoordinator } from '../../backends/etcd/index.js'
import { MemoryNetwork, MemoryTransport } from '../../backends/memory/index.js'
import { GalleonFS, WriteConcern } from '../../src/index.js'
import { until } from './wait.js'

export const LEASE_TTL_MS = 3000

export interface H49Cluster {
  readonly nodes: GalleonFS[]
  /** The memory network the nodes talk over (partitions). */
  readonly network: MemoryNetwork
  /** Cluster events per node, as `event detail` lines. */
  readonly events: Map<string, string[]>
  /** Samples (every 50 ms) in which more than one node had the primary role of `v`, with who. */
  readonly doublePrimaries: string[][]
  /** An observer coordinator straight to etcd. */
  readonly observer: () => Promise<EtcdCoordinator>
  /** Waits until every node is a healthy member (in etcd and in each node's watched view), one leads, and a WriteReplicated write through n1 works. */
  settled: (what: string, timeoutMs?: number) => Promise<void>
  close: () => Promise<void>
}

/** Endpoints per node (n1's may be a proxy). */
export async function h49Cluster (prefix: string, endpoints: { n1: string, others: string }): Promise<H49Cluster> {
  const network = new MemoryNetwork()
  const events = new Map<string, string[]>()
  const nodes: GalleonFS[] = []
  const coordinators: EtcdCoordinator[] = []
  const dirs: string[] = []
  const open = async (nodeId: string, endpoint: string): Promise<GalleonFS> => {
    const coordinator = await EtcdCoordinator.connect({ endpoints: [endpoint], prefix, requestTimeoutMs: 1000, connectTimeoutMs: 2000 })
    coordinators.push(coordinator)
    const dir = await mkdtemp(join(tmpdir(), `galleonfs-h49-${nodeId}-`))
    dirs.push(dir)
    const g = await GalleonFS.open({ storagePath: dir, cluster: { nodeId, zone: `z-${nodeId}`, transport: new MemoryTransport({ network, nodeId }), coordinator, leaseTtlMs: LEASE_TTL_MS } })
    const seen: string[] = []
    events.set(nodeId, seen)
    g.on('cluster:error', (e) => seen.push(`cluster:error ${e.code} ${e.message}`))
    g.on('cluster:member-health', (m) => seen.push(`cluster:member-health ${m.id} ${m.healthy ? 'healthy' : 'unhealthy'}`))
    g.on('cluster:member-joined', (m) => seen.push(`cluster:member-joined ${m.id} ${m.healthy ? 'healthy' : 'unhealthy'}`))
    g.on('cluster:member-left', (m) => seen.push(`cluster:member-left ${m.id}`))
    g.on('cluster:leader', (e) => seen.push(`cluster:leader ${e.nodeId} ${e.epoch}`))
    g.on('replication:failover', (e) => seen.push(`replication:failover ${e.volumeId} ${e.from}->${e.to} ${e.epoch}`))
    return g
  }
  let observerHandle: EtcdCoordinator | undefined
  const doublePrimaries: string[][] = []
  let sampler: NodeJS.Timeout | undefined
  const close = async (): Promise<void> => {
    clearInterval(sampler)
    await Promise.allSettled(nodes.map(async (g) => { await g.close() }))
    await Promise.allSettled(coordinators.map(async (c) => { await c.close() }))
    await observerHandle?.close().catch(() => {})
    await Promise.allSettled(dirs.map(async (dir) => { await rm(dir, { recursive: true, force: true }) }))
  }
  try {
    nodes.push(await open('n1', endpoints.n1))
    nodes.push(await open('n2', endpoints.others))
    nodes.push(await open('n3', endpoints.others))
    const [n1] = nodes as [GalleonFS]
    await until('every node is a member', async () => (await n1.clusterStatus()).members.filter((m) => m.healthy).length === 3, 20_000)
    await n1.createVolume({ name: 'v', sizeBytes: 1 << 20, replicas: 3 })
    await until('the volume has 3 in-sync copies', async () => (await n1.replicationStatus('v')).inSync.length === 3, 20_000)
  } catch (err) {
    await close()
    throw err
  }
  sampler = setInterval(() => {
    void Promise.all(nodes.map(async (g, i) => ((await g.replicationStatus('v').catch(() => undefined))?.role === 'primary' ? `n${i + 1}` : undefined)))
      .then((roles) => { const primaries = roles.filter((r): r is string => r !== undefined); if (primaries.length > 1) doublePrimaries.push(primaries) })
  }, 50)
  return {
    nodes,
    network,
    events,
    doublePrimaries,
    observer: async () => (observerHandle ??= await EtcdCoordinator.connect({ endpoints: [endpoints.others], prefix })),
    settled: async (what, timeoutMs = 30_000) => {
      const [n1] = nodes as [GalleonFS]
      const block = new Uint8Array((await n1.getVolume('v')).blockSize).fill(7)
      await until(what, async () => {
        try {
          const status = await n1.clusterStatus()
          if (status.leader === undefined || status.members.filter((m) => m.healthy).length !== 3) return false
          // Each node's own view (kept by its member watch) agrees.
          if (!nodes.every((g) => g.cluster?.members.filter((m) => m.healthy).length === 3)) return false
          await n1.writeBlock('v', 1, block, WriteConcern.WriteReplicated)
          return true
        } catch {
          return false
        }
      }, timeoutMs, 200)
    },
    close
  }
}
