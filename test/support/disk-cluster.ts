// In-process clusters whose nodes keep their data on their own disks (temp directories), with a
// memory network and coordinator: nodes can be closed and opened again on the same data, cut off
// with the network's fault injection, and their copies opened alone. Everything opened or made is
// closed and removed after the test file.

import { after } from 'node:test'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, type ClusterOptions } from '../../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../../backends/memory/index.js'
import { until } from './wait.js'

export const BS = 4096

/** A node: its instance, id, storage directory, and the replication events it emitted. */
export interface DiskNode { g: GalleonFS, id: string, dir: string, events: string[] }

/** A block whose bytes follow from `seed`. */
export function block (seed: number): Uint8Array {
  const out = new Uint8Array(BS)
  for (let i = 0; i < BS; i++) out[i] = (seed * 31 + i * 7 + 1) & 0xff
  return out
}

/** Whether `g` is the volume's primary with `count` copies in sync. */
export async function allInSync (g: GalleonFS, volume: string, count: number): Promise<boolean> {
  const s = await g.replicationStatus(volume)
  return s.role === 'primary' && s.inSync.length === count
}

/**
 * Node helpers for one test file; `prefix` starts the names of its nodes' temp directories, and
 * `options` are cluster options every node gets besides its id, transport and coordinator.
 */
export function diskCluster (prefix: string, options: Partial<ClusterOptions> = {}): {
  tempDir: (name: string) => Promise<string>
  startNode: (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, id: string, dir?: string) => Promise<DiskNode>
  cluster: (count: number) => Promise<{ network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, nodes: DiskNode[] }>
  /** Closes `g` after the test file too (an instance the test opened itself). */
  track: (g: GalleonFS) => GalleonFS
} {
  const dirs: string[] = []
  const opened: GalleonFS[] = []
  after(async () => {
    await Promise.allSettled(opened.map(async (g) => await g.close()))
    await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
  })
  const tempDir = async (name: string): Promise<string> => {
    const dir = await mkdtemp(join(tmpdir(), name))
    dirs.push(dir)
    return dir
  }
  const startNode = async (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, id: string, dir?: string): Promise<DiskNode> => {
    const events: string[] = []
    const storagePath = dir ?? await tempDir(`${prefix}${id}-`)
    const g = await GalleonFS.open({
      storagePath,
      cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000, ...options }
    })
    opened.push(g)
    for (const event of ['replication:error', 'replication:copy-dropped', 'replication:resynced', 'replication:primary'] as const) {
      g.on(event, (payload: unknown) => { events.push(`${event} ${JSON.stringify(payload)}`) })
    }
    return { g, id, dir: storagePath, events }
  }
  const cluster = async (count: number): Promise<{ network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, nodes: DiskNode[] }> => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const nodes: DiskNode[] = []
    for (let i = 0; i < count; i++) nodes.push(await startNode(network, coordinators, `n${i + 1}`))
    await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === count))
    return { network, coordinators, nodes }
  }
  const track = (g: GalleonFS): GalleonFS => { opened.push(g); return g }
  return { tempDir, startNode, cluster, track }
}

/** Closes every node's instance, whatever becomes of the others. */
export async function closeAll (nodes: DiskNode[]): Promise<void> {
  await Promise.allSettled(nodes.map(async (n) => await n.g.close()))
}
