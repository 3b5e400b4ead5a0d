// What holds a replicated volume on the other nodes of the cluster (mounts, files, NBD clients):
// the repl:attachments question a primary asks each copy's node before a plain deleteVolume removes
// the volume's record, and how the answers (or their absence) read in the refusal.

import { GalleonError, errorCode } from '../errors.js'
import { recordKey, parseRecord } from './records.js'
import { APPLY_TIMEOUT_MS, errorText, type ManagerCore } from './common.js'

/** The kind of the question (nodes of earlier releases have no handler for it). */
export const ATTACHMENTS_KIND = 'repl:attachments'

/** What holds a volume on one node (see ReplicationHost.attachments). */
export interface VolumeAttachments {
  /** Mount points of its mounts (read-write and read-only, of the volume or of its snapshots). */
  readonly mounts: readonly string[]
  /** Writable files open straight on it (openVolumeFile) and NBD clients connected read-write. */
  readonly writers: number
  /** Read-only files open straight on it and NBD clients connected read-only. */
  readonly readers: number
  /** Files and NBD clients reading one of its snapshots. */
  readonly snapshotReaders: number
}

/** What holds the volume on a node, in words ("mounted (/mnt/a), 1 writer(s) (...)"), or undefined for nothing. */
export function describeAttachments (held: VolumeAttachments): string | undefined {
  const parts: string[] = []
  if (held.mounts.length > 0) parts.push(`mounted (${held.mounts.join(', ')})`)
  if (held.writers > 0) parts.push(`${held.writers} writer(s) (writable files open on it (openVolumeFile) or NBD clients connected read-write)`)
  if (held.readers > 0) parts.push(`${held.readers} reader(s) (files open on it read-only or NBD clients connected read-only)`)
  if (held.snapshotReaders > 0) parts.push(`${held.snapshotReaders} reader(s) of its snapshots (files open on them or NBD clients of their exports)`)
  return parts.length === 0 ? undefined : parts.join(', ')
}

/** One answer as it came over the wire (counts that are not whole numbers read as none). */
function parseAttachments (header: Readonly<Record<string, unknown>>): VolumeAttachments {
  const count = (value: unknown): number => Number.isSafeInteger(value) && (value as number) > 0 ? value as number : 0
  const mounts = Array.isArray(header.mounts) ? header.mounts.filter((m): m is string => typeof m === 'string') : []
  return { mounts, writers: count(header.writers), readers: count(header.readers), snapshotReaders: count(header.snapshotReaders) }
}

/** What the other nodes said about a volume (see usersElsewhere). */
export interface UsersElsewhere {
  /** Nodes where something holds it, with what. */
  readonly held: Array<{ node: string, what: string }>
  /** Healthy members that did not answer, and nodes of earlier releases that cannot: with why. */
  readonly unknown: Array<{ node: string, why: string }>
}

/**
 * Asks every other node the volume's record places a copy on what holds the volume there. A node
 * that answers says; one of an earlier release (no handler for the question) cannot, and one that
 * does not answer while the membership lists it healthy may hold it and come back: both are
 * `unknown`. A node that does not answer and is no healthy member (down, or cut off past its
 * lease) is left out: every I/O of a copy that is not the primary goes through the primary, which
 * it cannot reach, so nothing there works on the volume now; its copy goes when it comes back, as
 * the deletion mark says, and whatever holds it there then fails with the volume named as deleted.
 * So is one that closed cleanly (its mark, see closed-nodes.ts), though its lease still runs: it
 * closed what held the volume there before it closed.
 */
export async function usersElsewhere (core: ManagerCore, volumeId: string): Promise<UsersElsewhere> {
  const entry = await core.coordinator.get(recordKey(volumeId))
  const record = entry === undefined ? undefined : parseRecord(entry.value)
  const held: UsersElsewhere['held'] = []
  const unknown: UsersElsewhere['unknown'] = []
  const others = (record?.nodes ?? []).filter((node) => node !== core.nodeId)
  // Read once, and only when a node does not answer. Unreadable, none counts as closed.
  let closed: Promise<Set<string>> | undefined
  const closedCleanly = async (node: string): Promise<boolean> => (await (closed ??= core.cluster.closedMembers().catch(() => new Set<string>()))).has(node)
  await Promise.all(others.map(async (node) => {
    try {
      const reply = await core.cluster.request(node, { kind: ATTACHMENTS_KIND, header: { volumeId } }, { timeoutMs: APPLY_TIMEOUT_MS })
      const what = describeAttachments(parseAttachments(reply.header))
      if (what !== undefined) held.push({ node, what })
    } catch (err) {
      // The refusal of a node without a handler for the question (see ClusterManager's dispatch).
      if (errorCode(err) === 'NOT_IMPLEMENTED' && (err as Error).message.startsWith(`node ${node} does not serve ${ATTACHMENTS_KIND} messages`)) {
        unknown.push({ node, why: `node ${node} runs an earlier release that cannot say whether anything holds it there; make sure nothing uses it there (or upgrade that node)` })
        return
      }
      if (core.cluster.members.find((m) => m.id === node)?.healthy !== true) return
      if (await closedCleanly(node)) return
      unknown.push({ node, why: `node ${node} did not answer whether anything holds it there (${errorText(err)}); retry once it answers (a node down past its lease is not waited for)` })
    }
  }))
  const byNode = (a: { node: string }, b: { node: string }): number => a.node < b.node ? -1 : a.node > b.node ? 1 : 0
  return { held: held.sort(byNode), unknown: unknown.sort(byNode) }
}

/** The refusal of a plain deleteVolume of volume `name` that `users` hold off, or undefined when nothing does. */
export function inUseElsewhere (name: string, users: UsersElsewhere): GalleonError | undefined {
  if (users.held.length > 0) {
    const where = users.held.map((h) => `on node ${h.node}, ${h.what}`).join('; ')
    const also = users.unknown.length === 0 ? '' : ` (and ${users.unknown.map((u) => u.why).join('; ')})`
    return new GalleonError('BUSY', `volume ${name} is in use on another node of the cluster: ${where}${also}; unmount, close or disconnect them there first, or pass { force: true } to delete it under them (their next I/O fails)`)
  }
  if (users.unknown.length > 0) {
    return new GalleonError('BUSY', `volume ${name} may be in use on another node of the cluster: ${users.unknown.map((u) => u.why).join('; ')}; or pass { force: true } to delete it whatever holds it there`)
  }
  return undefined
}
