// Review r76: what the SIGKILL tests of leaveCluster and of a replicated deleteVolume share: node
// processes (test/support/r76-node-child.ts, through r70-cluster.ts's childCluster), a look at the
// cluster's keys in etcd, and waits on a volume's copies.

import { fileURLToPath } from 'node:url'
import { EtcdCoordinator } from '../../backends/etcd/index.js'
import { parseDeleted, parseRecord, RECORD_PREFIX, type ReplicaSetRecord } from '../../src/replication/records.js'
import { childExit } from './child-script.js'
import type { ChildNode, Status } from './r70-cluster.js'
import type { KillArm } from './r76-node-child.js'
import { until } from './wait.js'

export const R76_CHILD = fileURLToPath(new URL('./r76-node-child.ts', import.meta.url))
export type { KillArm }

/** The cluster's keys under one prefix, read straight from etcd (the test is no member). */
export class ClusterKeys {
  private constructor (readonly coordinator: EtcdCoordinator) {}
  static async open (endpoint: string, prefix: string): Promise<ClusterKeys> {
    return new ClusterKeys(await EtcdCoordinator.connect({ endpoints: [endpoint], prefix: `/${prefix}`, requestTimeoutMs: 2000 }))
  }

  /** Nodes with a leaving mark. */
  async leaving (): Promise<string[]> {
    return (await this.coordinator.list('replication/leaving/')).map((e) => e.key.slice('replication/leaving/'.length)).sort()
  }

  /** Deletion marks: volume id -> the nodes each names. */
  async deletionMarks (): Promise<Record<string, string[]>> {
    const marks: Record<string, string[]> = {}
    for (const entry of await this.coordinator.list('replication/deleted/')) marks[entry.key.slice('replication/deleted/'.length)] = parseDeleted(entry.value) ?? []
    return marks
  }

  /** Replica-set records by volume name. */
  async records (): Promise<Record<string, ReplicaSetRecord>> {
    const records: Record<string, ReplicaSetRecord> = {}
    for (const entry of await this.coordinator.list(RECORD_PREFIX)) {
      const record = parseRecord(entry.value)
      if (record !== undefined) records[record.spec.name] = record
    }
    return records
  }

  async close (): Promise<void> { await this.coordinator.close() }
}

/** Arms `node` to SIGKILL itself at `arm` (see KillArm). */
export async function armKill (node: ChildNode, arm: KillArm): Promise<void> {
  await node.call('armKill', arm)
}

/** Resolves once `node`'s process has exited (killed at its armed point). */
export async function killed (node: ChildNode): Promise<void> {
  await childExit(node.child)
}

/**
 * Waits until the volume's record has `copies` copies, all in sync, with the primary's links
 * streaming (asked of the record's primary); returns its nodes, sorted.
 */
export async function settled (keys: ClusterKeys, nodes: Record<string, ChildNode>, volume: string, copies: number): Promise<string[]> {
  let last: unknown
  await until(`volume ${volume} has ${copies} copies in sync`, async () => {
    const record = (await keys.records())[volume]
    last = record
    if (record === undefined || record.nodes.length !== copies || record.inSync.length !== copies) return false
    const primary = nodes[record.primary]
    const status = await primary?.call<Status>('replicationStatus', volume).catch(() => undefined)
    last = { record, status }
    return status?.role === 'primary' && status.links.every((l) => l.state === 'streaming')
  }, 60_000, 100).catch((err: Error) => { throw new Error(`${err.message}; last ${JSON.stringify(last)}`) })
  return [...((await keys.records())[volume]?.nodes ?? [])].sort()
}
