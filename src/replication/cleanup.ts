// Deletion marks and the other traces copies leave in the cluster's records: adding nodes to a
// mark and taking them off, this node leaving marks and lists of given-up copies it no longer
// needs, and forgetting a node gone for good.

import { GalleonError } from '../errors.js'
import type { Coordinator } from '../drivers.js'
import { RECORD_PREFIX, deletedAgainst, deletedKey, offDropped, parseDeleted, parseRecord, recordKey, type ReplicaSetRecord } from './records.js'
import type { ManagerCore } from './common.js'
import type { Roles } from './roles.js'

/** Coordinator key prefix of the deletion marks (see deletedKey). */
const DELETED_PREFIX = deletedKey('')

/**
 * Takes `gone` (nodes whose copy of a deleted volume is deleted) off the volume's deletion mark
 * (see deletedKey), by compare-and-swap; the mark goes once it lists no node.
 */
export async function clearDeletionMark (coordinator: Coordinator, volumeId: string, gone: readonly string[]): Promise<void> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const entry = await coordinator.get(deletedKey(volumeId))
    if (entry === undefined) return
    const left = (parseDeleted(entry.value) ?? []).filter((node) => !gone.includes(node))
    // (The record revision it names stays: see deletedAgainst.)
    const revision = deletedAgainst(entry.value)
    const done = left.length === 0
      ? await coordinator.delete(deletedKey(volumeId), { expectRevision: entry.revision })
      : await coordinator.put(deletedKey(volumeId), JSON.stringify({ nodes: left, ...(revision === undefined ? {} : { revision }) }), { expectRevision: entry.revision }) !== undefined
    if (done) return
  }
}

/**
 * Adds `nodes` to the volume's deletion mark (see deletedKey), making it if there is none, by
 * compare-and-swap: the nodes an earlier mark names stay on it. Throws when it could not.
 */
export async function addToDeletionMark (coordinator: Coordinator, volumeId: string, nodes: readonly string[]): Promise<void> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const entry = await coordinator.get(deletedKey(volumeId))
    const named = entry === undefined ? [] : parseDeleted(entry.value) ?? []
    const value = JSON.stringify({ nodes: [...new Set([...named, ...nodes])] })
    if (await coordinator.put(deletedKey(volumeId), value, { expectRevision: entry?.revision ?? 0 }) !== undefined) return
  }
  throw new GalleonError('BUSY', `the deletion mark of volume ${volumeId} kept changing`)
}

/** Whether this node's copy of a volume is one the cluster has no record of (see ReplicationManager.orphan). */
export async function orphanState (core: ManagerCore, volumeId: string): Promise<'deleted' | 'unrecorded' | undefined> {
  if (!core.sets.has(volumeId)) return undefined
  if (await core.coordinator.get(recordKey(volumeId)) !== undefined) return undefined
  const mark = await core.coordinator.get(deletedKey(volumeId))
  return mark !== undefined && (parseDeleted(mark.value) ?? []).includes(core.nodeId) ? 'deleted' : 'unrecorded'
}

/** Whether the volume's record is gone from the cluster; this node's copy then goes (see ReplicationManager.deletedInCluster). */
export async function recordDeleted (core: ManagerCore, roles: Roles, volumeId: string): Promise<boolean> {
  if (await core.coordinator.get(recordKey(volumeId)) !== undefined) return false
  const set = core.sets.get(volumeId)
  if (set !== undefined) {
    roles.retire(set, 'the replica-set record was deleted')
    set.record = undefined
    await roles.dropIfDeleted(set)
  }
  return true
}

/**
 * Deletes the marks of deletions that never removed their record: written against a revision of
 * the record (see deletedAgainst), and the record is there at another. Their primary was killed
 * between the two (or its deletion failed without taking the mark back): the volume was kept, and
 * the mark would name the copies of a volume that exists, for good. A deletion still under way
 * that reads the record's new revision marks again before it removes the record (and the delete
 * here is at the mark's revision), so it never loses its mark. Best effort: looked at again later.
 */
export async function dropStaleDeletionMarks (core: ManagerCore, marks: ReadonlyArray<{ key: string, value: string, revision: number }>): Promise<void> {
  for (const entry of marks) {
    const against = deletedAgainst(entry.value)
    if (against === undefined || core.closed) continue
    const record = await core.coordinator.get(recordKey(entry.key.slice(DELETED_PREFIX.length))).catch(() => null)
    if (record === null || record === undefined || record.revision === against) continue
    await core.coordinator.delete(entry.key, { expectRevision: entry.revision }).catch(() => false)
  }
}

/**
 * Takes this node off the deletion marks that name it while it holds no copy of their volume,
 * and deletes the marks of deletions that never removed their record (see dropStaleDeletionMarks).
 */
export async function leaveDeletionMarks (core: ManagerCore): Promise<void> {
  try {
    const marks = await core.coordinator.list(DELETED_PREFIX)
    await dropStaleDeletionMarks(core, marks)
    for (const entry of marks) {
      const volumeId = entry.key.slice(DELETED_PREFIX.length)
      if (core.closed) return
      if (!(parseDeleted(entry.value) ?? []).includes(core.nodeId) || core.sets.has(volumeId) || core.deleting.has(volumeId) || core.host.blocks(volumeId) !== undefined) continue
      await clearDeletionMark(core.coordinator, volumeId, [core.nodeId])
    }
  } catch {
    // The next start looks again.
  }
}

/** Takes this node off the droppedNodes of records that list it while it holds no given-up copy of their volume. */
export async function leaveDroppedLists (core: ManagerCore): Promise<void> {
  const self = core.nodeId
  const holdsGivenUp = (record: ReplicaSetRecord): boolean => !record.nodes.includes(self) && (core.sets.has(record.spec.id) || core.deleting.has(record.spec.id) || core.host.blocks(record.spec.id) !== undefined)
  try {
    for (const entry of await core.coordinator.list(RECORD_PREFIX)) {
      if (core.closed) return
      const record = parseRecord(entry.value)
      if (record === undefined || record.droppedNodes?.includes(self) !== true || holdsGivenUp(record)) continue
      await core.update(record.spec.id, (current) => {
        if (current.droppedNodes?.includes(self) !== true || holdsGivenUp(current)) return undefined
        return offDropped(current, self)
      })
    }
  } catch {
    // The next start looks again.
  }
}

/** Forgets `node`, gone for good, on behalf of this node (see ReplicationManager.forgetNode). */
export async function forgetGoneNode (core: ManagerCore, node: string): Promise<{ copies: string[], droppedLists: string[], deletionMarks: string[] }> {
  if (node === core.nodeId) throw new GalleonError('INVALID_ARGUMENT', `node ${node} is this node; a node leaves with leaveCluster(), and another node forgets it once it is gone`)
  const member = (await core.coordinator.members()).find((m) => m.id === node)
  if (member !== undefined) {
    throw new GalleonError('BUSY', member.healthy
      ? `node ${node} is a healthy member of the cluster; only a node that is gone for good can be forgotten (stop it, or let it leave with leaveCluster())`
      : `node ${node} is still a member of the cluster (unhealthy: its lease ended); it is removed once twice leaseTtlMs have passed since it stopped (at most leaseTtlMs after its lease ended), forget it then`)
  }
  const entries = await core.coordinator.list(RECORD_PREFIX)
  const ledRecords = entries.map((entry) => parseRecord(entry.value)).filter((record): record is ReplicaSetRecord => record?.primary === node)
  // Another in-sync copy: the leader's next failover pass (within seconds) promotes it.
  const failingOver = ledRecords.filter((record) => record.inSync.some((n) => n !== node)).map((record) => record.spec.id)
  if (failingOver.length > 0) throw new GalleonError('BUSY', `node ${node} is still the primary of volume${failingOver.length === 1 ? '' : 's'} ${failingOver.join(', ')}, which the cluster leader has not failed over to another in-sync copy yet; try again in a few seconds`)
  const led = ledRecords.map((record) => record.spec.id)
  if (led.length > 0) throw new GalleonError('BUSY', `node ${node} is the primary of volume${led.length === 1 ? '' : 's'} ${led.join(', ')}, and no other node has an up-to-date copy to take over: forgetting it would lose ${led.length === 1 ? 'that volume' : 'those volumes'}. Bring the node back (its copy then leads again), or delete the volume${led.length === 1 ? '' : 's'} first`)
  const marks = (await core.coordinator.list(DELETED_PREFIX)).filter((entry) => (parseDeleted(entry.value) ?? []).includes(node))
  const named = entries.some((entry) => { const record = parseRecord(entry.value); return record !== undefined && (record.nodes.includes(node) || record.droppedNodes?.includes(node) === true) })
  if (!named && marks.length === 0) throw new GalleonError('INVALID_ARGUMENT', `nothing in the cluster names node ${node}: it is no member, holds no copy and is waited for by no deletion (a mistyped id? clusterStatus() lists the members)`)
  const copies: string[] = []
  const droppedLists: string[] = []
  for (const entry of entries) {
    const record = parseRecord(entry.value)
    if (record === undefined || (!record.nodes.includes(node) && record.droppedNodes?.includes(node) !== true)) continue
    const volumeId = record.spec.id
    let gaveUp = false
    const written = await core.update(volumeId, (current) => {
      if (current.primary === node) throw new GalleonError('BUSY', `node ${node} became the primary of volume ${volumeId} meanwhile; try again`)
      gaveUp = current.nodes.includes(node)
      if (!gaveUp && current.droppedNodes?.includes(node) !== true) return undefined
      return offDropped({ ...current, nodes: current.nodes.filter((n) => n !== node), inSync: current.inSync.filter((n) => n !== node) }, node)
    })
    if (written === undefined) continue
    if (gaveUp) {
      copies.push(volumeId)
      core.host.emit('replication:replica-removed', { volumeId, nodes: [node], reason: `node ${node} was forgotten` })
    } else {
      droppedLists.push(volumeId)
    }
  }
  const deletionMarks: string[] = []
  for (const entry of marks) {
    const volumeId = entry.key.slice(DELETED_PREFIX.length)
    await clearDeletionMark(core.coordinator, volumeId, [node])
    deletionMarks.push(volumeId)
  }
  return { copies, droppedLists, deletionMarks }
}
