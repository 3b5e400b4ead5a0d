// Helpers of the replicated control-call tests (h72, h74, r32, r34): a replicated volume on a disk
// cluster, a three-node cluster whose first node's coordinator writes can be held, and a failover
// named in the cluster's record.

import { MemoryCoordinatorCluster, MemoryNetwork } from '../../backends/memory/index.js'
import { WriteConcern } from '../../src/index.js'
import { BS, allInSync, block, type DiskNode, type diskCluster } from './disk-cluster.js'
import { namePrimary } from './replica-records.js'
import { until } from './wait.js'

/** Volume `v` of class `rep` (`copies` copies) on the first node, block 0 written, every copy in sync; returns its id. */
export async function replicatedVolume (nodes: DiskNode[], copies: number): Promise<string> {
  for (const node of nodes) await node.g.createStorageClass({ name: 'rep', parameters: { replication: String(copies) } })
  const n1 = nodes[0] as DiskNode
  const volume = await n1.g.createVolume({ name: 'v', sizeBytes: 16 * BS, storageClass: 'rep' })
  await n1.g.writeBlock('v', 0, block(1), WriteConcern.WriteReplicated)
  await until('every copy is in sync', async () => await allInSync(n1.g, 'v', copies), 20_000)
  return volume.id
}

/** Holds the next write of n1's coordinator handle whose value contains `marker` (once armed) until released; `held` counts the writes held. */
export interface WriteHold { arm: (marker: string) => void, held: () => number, release: () => void }

/** A coordinator handle of a MemoryCoordinatorCluster. */
export type CoordinatorHandle = ReturnType<MemoryCoordinatorCluster['coordinator']>

/** Calls `wrap` on the first coordinator handle `coordinators` hands out (n1's, when n1 starts first), before anyone uses it. */
export function onFirstHandle (coordinators: MemoryCoordinatorCluster, wrap: (handle: CoordinatorHandle) => void): void {
  const make = coordinators.coordinator.bind(coordinators)
  let first = true
  coordinators.coordinator = ((options?: Parameters<typeof make>[0]) => {
    const handle = make(options)
    if (first) {
      first = false
      wrap(handle)
    }
    return handle
  }) as typeof coordinators.coordinator
}

/** Makes the first coordinator handle `coordinators` hands out (n1's, when n1 starts first) hold the write named by `arm`. */
export function holdFirstHandleWrites (coordinators: MemoryCoordinatorCluster): WriteHold {
  let marker: string | undefined
  let held = 0
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  onFirstHandle(coordinators, (handle) => {
    const put = handle.put.bind(handle)
    handle.put = async (key, value, putOptions) => {
      if (marker !== undefined && value.includes(marker)) {
        marker = undefined
        held++
        await gate
      }
      return await put(key, value, putOptions)
    }
  })
  return { arm: (m) => { marker = m }, held: () => held, release: () => { release() } }
}

export interface PrimaryCluster {
  network: MemoryNetwork
  coordinators: MemoryCoordinatorCluster
  nodes: [DiskNode, DiskNode, DiskNode]
  volumeId: string
  /** n1's coordinator writes, to hold one. */
  hold: WriteHold
}

/**
 * Three nodes of `kit` (n1, n2, n3), volume `v` (3 copies) on n1, block 0 written, every copy in
 * sync. `coordinators`: a coordinator cluster the test prepared (its first handle is n1's).
 */
export async function primaryCluster (kit: ReturnType<typeof diskCluster>, coordinators = new MemoryCoordinatorCluster()): Promise<PrimaryCluster> {
  const network = new MemoryNetwork()
  const hold = holdFirstHandleWrites(coordinators)
  const nodes: DiskNode[] = []
  for (const id of ['n1', 'n2', 'n3']) nodes.push(await kit.startNode(network, coordinators, id))
  await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 3))
  const volumeId = await replicatedVolume(nodes, 3)
  return { network, coordinators, nodes: nodes as [DiskNode, DiskNode, DiskNode], volumeId, hold }
}

/** The cluster names n2 the primary (as its leader does when n1's lease ended), and both nodes take that up. */
export async function failOver (c: Pick<PrimaryCluster, 'coordinators' | 'nodes' | 'volumeId'>): Promise<void> {
  const [n1, n2] = c.nodes
  await namePrimary(c.coordinators, c.volumeId, 'n2')
  await until('n2 took the role up', async () => (await n2.g.replicationStatus('v')).role === 'primary', 20_000)
  await until('n1 stepped down', async () => (await n1.g.replicationStatus('v')).role !== 'primary', 20_000)
}

/** Two nodes of a disk cluster, the first one's coordinator writes holdable, and volume v on n1 written whole with `model`. */
export interface ClassPair { network: MemoryNetwork, n1: DiskNode, n2: DiskNode, hold: WriteHold, model: Uint8Array }

/**
 * Two nodes with classes plain2 (2 copies), secret2 (2 copies, encrypted), keep2 (2 copies,
 * encrypted, reclaim Retain) and secret1 (1 copy, encrypted); volume v of `blocks` blocks in
 * `storageClass` on n1, written whole (and in sync on both nodes when it has two copies). n1's
 * coordinator writes can be held (see holdFirstHandleWrites).
 */
export async function classPair (kit: ReturnType<typeof diskCluster>, storageClass: string, blocks: number): Promise<ClassPair> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const hold = holdFirstHandleWrites(coordinators)
  const n1 = await kit.startNode(network, coordinators, 'n1')
  const n2 = await kit.startNode(network, coordinators, 'n2')
  await until('both nodes see each other', () => [n1, n2].every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 2))
  for (const node of [n1, n2]) {
    await node.g.createStorageClass({ name: 'plain2', parameters: { replication: '2' } })
    await node.g.createStorageClass({ name: 'secret2', parameters: { replication: '2', encryption: 'true' } })
    await node.g.createStorageClass({ name: 'keep2', reclaimPolicy: 'Retain', parameters: { replication: '2', encryption: 'true' } })
    await node.g.createStorageClass({ name: 'secret1', parameters: { encryption: 'true' } })
  }
  const volume = await n1.g.createVolume({ name: 'v', sizeBytes: blocks * BS, storageClass })
  const model = new Uint8Array(blocks * BS)
  for (let i = 0; i < blocks; i++) model.set(block(i + 7), i * BS)
  const replicated = volume.replicas > 1
  await n1.g.write('v', 0, model, replicated ? WriteConcern.WriteReplicated : WriteConcern.WriteDurable)
  if (replicated) await until('both copies are in sync', async () => await allInSync(n1.g, 'v', 2), 20_000)
  return { network, n1, n2, hold, model }
}

