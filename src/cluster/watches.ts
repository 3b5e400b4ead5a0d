// Watches of the coordinator store that survive its errors: the list-then-watch loop (`follow`)
// and the member and key watches AbstractCoordinator builds on it.

import { setTimeout as sleep } from 'node:timers/promises'
import type { ClusterMember, ClusterNode, CoordinatorEvent } from '../drivers.js'
import type { GalleonError } from '../errors.js'
import { layout, type StoredEntry, type StoreEvent } from './coordinator-store.js'
import type { ProtocolRange } from './protocol.js'

/** What `follow` needs of the coordinator handle: its state and its store, with revisions noted. */
export interface FollowStore {
  /** True once the handle is closed: the loop ends. */
  readonly isClosed: () => boolean
  /** Aborts when the handle closes, cutting a retry pause short. */
  readonly closing: AbortSignal
  /** The handle's range (notes the revision). */
  readonly range: (key: string, prefix: boolean) => Promise<{ entries: StoredEntry[], revision: number }>
  /** One store watch that ends with the handle (the handle's `#watchOnce`). */
  readonly watch: (key: string, options: { prefix: boolean, fromRevision: number }, onEvents: (events: StoreEvent[]) => void, onError: (err: GalleonError) => void) => () => void
}

export const RETRY_MIN_MS = 100
export const RETRY_MAX_MS = 5000

/** Calls a user listener; one that throws must not break the watch or the other listeners. */
function callListener<T> (listener: (value: T) => void, value: T): void {
  try {
    listener(value)
  } catch {
    // Deliberately ignored: a listener's failure is its own, and the watch must go on for the others.
  }
}

/** A record's protocol range as a member field (left out when absent or malformed: version 1 then). */
function protocolField (protocol: unknown): { protocol?: ProtocolRange } {
  const range = protocol as Partial<ProtocolRange> | null | undefined
  if (range === null || typeof range !== 'object' || !Number.isSafeInteger(range.version) || !Number.isSafeInteger(range.oldest) || (range.oldest as number) < 1 || (range.version as number) < (range.oldest as number)) return {}
  return { protocol: Object.freeze({ version: range.version as number, oldest: range.oldest as number }) }
}

/** Members from the raw keys under `nodes/`: a record makes a member, its alive key makes it healthy. */
export function membersOf (keys: ReadonlyMap<string, string>): ClusterMember[] {
  const members: ClusterMember[] = []
  for (const [key, value] of keys) {
    if (!key.endsWith('/record')) continue
    let record: ClusterNode & { joinedAt: string }
    try {
      record = JSON.parse(value)
    } catch {
      continue // not written by a coordinator handle; a member record is always JSON
    }
    const healthy = keys.has(key.slice(0, -'record'.length) + 'alive')
    members.push(Object.freeze({
      id: record.id,
      address: record.address,
      zone: record.zone,
      labels: Object.freeze({ ...record.labels }),
      capacityBytes: record.capacityBytes,
      freeBytes: record.freeBytes,
      ...(protocolField(record.protocol)),
      healthy,
      joinedAt: record.joinedAt
    }))
  }
  return members.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
}

/**
 * A watch that survives store errors. It lists the keys first (`onListed(entries, true)`) and
 * watches from `fromRevision` (undefined: right after the listing). When the store watch fails
 * (connection lost, or the revision it would resume from was compacted away), it lists again
 * (`onListed(entries, false, missedFrom)`, `missedFrom` being the first revision not delivered)
 * and resumes right after that listing: it never retries a revision the store may have dropped.
 */
export function follow (store: FollowStore, key: string, prefix: boolean, fromRevision: number | undefined, onEvents: (events: StoreEvent[]) => void, onListed: (entries: StoredEntry[], first: boolean, missedFrom: number) => void): () => void {
  let stopped = false
  let stopCurrent = (): void => {}
  let nextRevision = fromRevision ?? 0
  let first = true
  let listed = false
  let delayMs = RETRY_MIN_MS
  const start = async (): Promise<void> => {
    while (!stopped && !store.isClosed()) {
      try {
        if (!listed) {
          const { entries, revision } = await store.range(key, prefix)
          if (stopped || store.isClosed()) return
          onListed(entries, first, nextRevision)
          if (!first || fromRevision === undefined) nextRevision = revision + 1
          first = false
          listed = true
        }
        // Runs until the store watch fails; then it lists again (after a pause) and resumes.
        await new Promise<void>((resolve) => {
          stopCurrent = store.watch(key, { prefix, fromRevision: nextRevision }, (events) => {
            delayMs = RETRY_MIN_MS
            const last = events[events.length - 1]
            if (last !== undefined) nextRevision = last.entry.modRevision + 1
            onEvents(events)
          }, () => resolve())
        })
        if (stopped || store.isClosed()) return
        listed = false
      } catch {
        if (stopped || store.isClosed()) return
      }
      await sleep(delayMs, undefined, { signal: store.closing }).catch(() => {})
      delayMs = Math.min(delayMs * 2, RETRY_MAX_MS)
    }
  }
  void start()
  const stop = (): void => {
    stopped = true
    stopCurrent()
  }
  return stop
}

/** Follows the members (AbstractCoordinator.watchMembers, arguments checked). */
export function followMembers (store: FollowStore, listener: (members: ClusterMember[]) => void): () => void {
  const keys = new Map<string, string>()
  return follow(store, layout.nodes, true, undefined, (events) => {
    for (const event of events) {
      if (event.type === 'put') keys.set(event.entry.key, event.entry.value)
      else keys.delete(event.entry.key)
    }
    callListener(listener, membersOf(keys))
  }, (entries, first) => {
    // The first listing is always reported: a member that joined or left between this call and
    // the listing is in no event, so a caller told only of later changes would never learn of it.
    // Listed again after a failed watch: changes may have been missed, so report a difference.
    const before = JSON.stringify(membersOf(keys))
    keys.clear()
    for (const entry of entries) keys.set(entry.key, entry.value)
    const members = membersOf(keys)
    if (first || JSON.stringify(members) !== before) callListener(listener, members)
  })
}

/** Follows the keys under `layout.kv + prefix` from `fromRevision` on (AbstractCoordinator.watch, arguments checked). */
export function followKeys (store: FollowStore, prefix: string, fromRevision: number, listener: (event: CoordinatorEvent) => void): () => void {
  const report = (type: 'put' | 'delete', entry: StoredEntry): void => {
    const key = entry.key.slice(layout.kv.length)
    callListener(listener, type === 'put' ? { type, key, entry: { key, value: entry.value, revision: entry.modRevision } } : { type, key })
  }
  // Keys under the prefix as far as the listener knows (or that existed when the watch started):
  // after a failed watch, the ones no longer listed are reported deleted.
  const known = new Set<string>()
  return follow(store, layout.kv + prefix, true, fromRevision, (events) => {
    for (const { type, entry } of events) {
      if (type === 'put') known.add(entry.key)
      else known.delete(entry.key)
      report(type, entry)
    }
  }, (entries, first, missedFrom) => {
    if (first) {
      for (const entry of entries) known.add(entry.key)
      return
    }
    // The store watch failed, and the store may have compacted the changes it missed away: they
    // are reported as the difference to the listing (each key's latest state, in revision
    // order; intermediate values are gone, as a compacted watch would have lost them anyway).
    const present = new Set(entries.map((entry) => entry.key))
    for (const key of [...known]) {
      if (present.has(key)) continue
      known.delete(key)
      report('delete', { key, value: '', createRevision: 0, modRevision: 0 })
    }
    for (const entry of entries.filter((e) => e.modRevision >= missedFrom).sort((a, b) => a.modRevision - b.modRevision)) {
      known.add(entry.key)
      report('put', entry)
    }
  })
}
