// The mark a node leaves in the coordinator as it closes cleanly (GalleonFS.close()): its membership
// stays (healthy until its lease lapses, as after a crash), but nothing holds a volume there any
// more, so what would wait for that lease (a plain deleteVolume asking the node what holds a copy,
// a move or a leave placing a copy on it) need not.

import type { ClusterMember, Coordinator } from '../drivers.js'
import { GalleonError } from '../errors.js'

/** Coordinator keys of the marks, by node id (value: { joinedAt } of the membership that closed). */
const CLOSED_PREFIX = 'closed-nodes/'

/**
 * Marks node `nodeId`, a member since `joinedAt`, as closed. The mark names that membership: a
 * later start of the node joins anew (another joinedAt), which the mark no longer matches.
 */
export async function markClosed (coordinator: Coordinator, nodeId: string, joinedAt: string): Promise<void> {
  await coordinator.put(`${CLOSED_PREFIX}${nodeId}`, JSON.stringify({ joinedAt }))
}

/** Removes node `nodeId`'s mark (a start of the node: the mark of its last close no longer applies). */
export async function clearClosedMark (coordinator: Coordinator, nodeId: string): Promise<void> {
  await coordinator.delete(`${CLOSED_PREFIX}${nodeId}`)
}

/**
 * The ids of `members` that closed cleanly: their mark names the membership they have now. A node
 * that crashed, or is cut off, has none, and is waited for until its lease lapses (it may be running,
 * with users of its volumes, and come back).
 */
export async function closedNodes (coordinator: Coordinator, members: readonly ClusterMember[]): Promise<Set<string>> {
  const closed = new Set<string>()
  for (const entry of await coordinator.list(CLOSED_PREFIX)) {
    let joinedAt: unknown
    try {
      joinedAt = (JSON.parse(entry.value) as { joinedAt?: unknown }).joinedAt
    } catch {
      continue
    }
    const id = entry.key.slice(CLOSED_PREFIX.length)
    if (typeof joinedAt === 'string' && members.some((m) => m.id === id && m.joinedAt === joinedAt)) closed.add(id)
  }
  return closed
}

/** The refusal of node `node`, closed cleanly, as the target of a move of a volume's copy. */
export function closedTarget (node: string): GalleonError {
  return new GalleonError('INVALID_ARGUMENT', `node ${node} was closed (its instance stopped cleanly; the cluster lists it until its lease lapses) and can take no copy; start it again, or move the volume to another node (clusterStatus() lists them)`)
}
