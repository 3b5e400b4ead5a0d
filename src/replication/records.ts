// The coordinator's record of a replicated volume: which nodes hold copies, which one is the primary
// and under which epoch, and which copies are in sync. Every change is a compare-and-swap, so the
// record is the single truth that failover and fencing rest on.

import type { AccessMode, VolumeType } from '../types.js'

/** Coordinator key prefix of replica-set records (`replication/volumes/<volumeId>`). */
export const RECORD_PREFIX = 'replication/volumes/'

/** What a node needs to create its copy of a volume. */
export interface VolumeSpec {
  readonly id: string
  readonly name: string
  readonly namespace: string
  readonly type: VolumeType
  readonly sizeBytes: number
  readonly blockSize: number
  readonly storageClass: string
  readonly replicas: number
  readonly accessModes: readonly AccessMode[]
  readonly labels: Readonly<Record<string, string>>
  /** The storage pool of the volume, if any: a copy is accounted in this node's pool of that name. */
  readonly pool?: string
  /** The volume's own QoS policy, if any: every node applies it to its copy (it counts where the copy is primary). */
  readonly qos?: import('../qos/policy.js').QoSPolicy
  /**
   * Whether the volume is encrypted (as its class is on the node that created or last migrated
   * it): every copy is then encrypted too, whatever its node's class of the same name says, so no
   * plaintext of it reaches another node's storage. Absent in records of earlier versions: each
   * node's class of that name decides, as it did then.
   */
  readonly encrypted?: boolean
  /**
   * Data-key rotations of an encrypted volume so far (absent: none): every copy has its own keys,
   * and one whose key is older than this rotates it (see KeyRotations).
   */
  readonly keyGeneration?: number
  /**
   * The tokens of the rotateVolumeKey calls that counted the last rotations (oldest first; up to
   * 32 of forwarded calls', and up to 32 of a primary's own callers', which start with `primary:`
   * and go to the next primary when this one loses the role mid-way: these never push out a
   * forwarded call's): a repeat of such a call (its answer lost, resent to the same primary or to
   * the next one, also after other rotations) finds its token here and does not rotate again.
   */
  readonly keyRotationTokens?: readonly string[]
  /**
   * The token of the last forwarded rotation, the one field nodes of earlier versions read and write:
   * kept beside keyRotationTokens for them, and merged into that list (where such a node may have
   * written one the list lacks) when the next rotation is counted.
   */
  readonly keyRotationToken?: string
}

/** A replicated volume as the coordinator records it. */
export interface ReplicaSetRecord {
  readonly spec: VolumeSpec
  /** The node that serves I/O and ships changes. */
  readonly primary: string
  /**
   * Fencing token of the primary: raised on every change of primary (and on a primary's restart).
   * Replicas refuse changes from an older epoch.
   */
  readonly epoch: number
  /** Nodes holding a copy, the primary included. */
  readonly nodes: readonly string[]
  /**
   * Nodes whose copy has every change acknowledged as WriteReplicated or stronger (the primary
   * included). Only these may be promoted; the primary removes a copy from here (compare-and-swap)
   * before it acknowledges a write without it.
   */
  readonly inSync: readonly string[]
  /**
   * Set by a graceful hand-over of the primary role: copies at this position of the previous
   * primary's stream hold exactly what the new primary started from, so they resync only the
   * changes made since (and stay in sync meanwhile).
   */
  readonly handoff?: { readonly epoch: number, readonly seq: number }
  /**
   * Nodes whose copy was given up (by the cluster leader while they were away, see
   * replicaReplacementDelayMs, or by a storage-class change):
   * each deletes its copy when it comes back and then takes itself off this list. Until then a
   * deletion of the volume names them in its mark too, so that one coming back after the deletion
   * deletes its copy rather than keep it as a volume nobody has a record of.
   */
  readonly droppedNodes?: readonly string[]
  /** The storage class's placement rules (narrowed to its pool's nodes), applied again when copies are added. */
  readonly placement?: { readonly strategy?: 'spread' | 'balanced', readonly zones?: readonly string[], readonly affinity?: Readonly<Record<string, string>>, readonly antiAffinity?: Readonly<Record<string, string>>, readonly nodes?: readonly string[] }
}

/** The droppedNodes field of `record` with `nodes` given up too (see droppedNodes; absent when empty). */
export function givingUp (record: ReplicaSetRecord, nodes: readonly string[]): { droppedNodes?: readonly string[] } {
  const droppedNodes = [...new Set([...(record.droppedNodes ?? []), ...nodes])]
  return droppedNodes.length === 0 ? {} : { droppedNodes }
}

/** `record` with `node` off its droppedNodes (the field left out once empty). */
export function offDropped (record: ReplicaSetRecord, node: string): ReplicaSetRecord {
  const { droppedNodes, ...rest } = record
  const left = (droppedNodes ?? []).filter((n) => n !== node)
  return left.length === 0 ? rest : { ...rest, droppedNodes: left }
}

/**
 * How many copies each node holds by the replica-set records listed (coordinator.list(RECORD_PREFIX)):
 * the `load` that spread placement sends new copies away from. Without it every copy went to the
 * same node (ties broken by free space, then id).
 */
export function copiesPerNode (entries: ReadonlyArray<{ readonly value: string }>): Record<string, number> {
  const load: Record<string, number> = {}
  for (const entry of entries) {
    for (const node of parseRecord(entry.value)?.nodes ?? []) if (typeof node === 'string') load[node] = (load[node] ?? 0) + 1
  }
  return load
}

export function recordKey (volumeId: string): string {
  return `${RECORD_PREFIX}${volumeId}`
}

/**
 * Coordinator key of a deleted replicated volume's deletion mark (`replication/deleted/<volumeId>`):
 * written before its record goes, it lists every node of the record (the deleting one included,
 * and the nodes of given-up copies, see droppedNodes);
 * each takes itself off once its copy is deleted, so that a node that missed the deletion deletes
 * its copy when it comes back instead of keeping it. A copy is deleted only by a mark naming its
 * node: a record that is merely missing (a coordinator wiped or replaced) is no reason to delete data.
 */
export function deletedKey (volumeId: string): string {
  return `replication/deleted/${volumeId}`
}

/**
 * The revision of the volume's record a deletion mark was written against (see
 * ReplicaSetLifecycle.unregister), if it says. A mark whose record is still there at another
 * revision is left from a deletion that never removed the record (its primary killed in between,
 * and the record changed since, so that deletion can no longer remove it): see dropStaleDeletionMarks.
 */
export function deletedAgainst (value: string): number | undefined {
  try {
    const revision = (JSON.parse(value) as { revision?: unknown } | null)?.revision
    return typeof revision === 'number' && Number.isSafeInteger(revision) && revision > 0 ? revision : undefined
  } catch {
    return undefined
  }
}

/** The nodes a deletion mark lists (see deletedKey); undefined for anything that is not one. */
export function parseDeleted (value: string): string[] | undefined {
  try {
    const parsed = JSON.parse(value) as { nodes?: unknown } | null
    return Array.isArray(parsed?.nodes) && parsed.nodes.every((n) => typeof n === 'string') ? parsed.nodes as string[] : undefined
  } catch {
    return undefined
  }
}

/** Parses a record's value; undefined for anything that is not one (never trusted blindly). */
export function parseRecord (value: string): ReplicaSetRecord | undefined {
  try {
    const parsed = JSON.parse(value) as Partial<ReplicaSetRecord>
    if (parsed === null || typeof parsed !== 'object') return undefined
    if (typeof parsed.primary !== 'string' || typeof parsed.epoch !== 'number' || !Array.isArray(parsed.nodes) || !Array.isArray(parsed.inSync)) return undefined
    if (parsed.spec === undefined || typeof parsed.spec.id !== 'string' || typeof parsed.spec.sizeBytes !== 'number') return undefined
    return parsed as ReplicaSetRecord
  } catch {
    return undefined
  }
}
