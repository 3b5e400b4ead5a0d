// Leader election over a coordinator store, etcd's recipe: every campaigner creates a key under the
// election's prefix bound to its lease; the key with the lowest create revision leads, and that
// revision is the leader's epoch. A later leader's key was necessarily created later, so epochs
// strictly increase. A waiting campaigner watches only its predecessor (no thundering herd).

import type { Leadership } from '../drivers.js'
import { GalleonError } from '../errors.js'
import { layout, type StoreCondition, type StoredEntry, type StoreEvent, type StoreLease, type StoreOp, type StoreTxnResult } from './coordinator-store.js'

/** The store operations an election needs (the coordinator's hooks). */
export interface ElectionStore {
  range: (key: string, prefix: boolean) => Promise<{ entries: StoredEntry[], revision: number }>
  txn: (conditions: readonly StoreCondition[], ops: readonly StoreOp[]) => Promise<StoreTxnResult>
  watch: (key: string, options: { prefix: boolean, fromRevision: number }, onEvents: (events: StoreEvent[]) => void, onError: (err: GalleonError) => void) => () => void
}

/** The lease a campaign is tied to; `ended` aborts when the lease is lost or released. */
export interface ElectionSession {
  readonly nodeId: string
  readonly lease: StoreLease
  readonly ended: AbortSignal
}

/** Leadership as the coordinator tracks it: `end()` resolves `lost` (idempotent). */
export interface HeldLeadership extends Leadership {
  end: () => void
}

/** Resolves when `key` is deleted at or after `fromRevision`; rejects when a signal aborts or the watch fails. */
function waitForDelete (store: ElectionStore, key: string, fromRevision: number, signals: readonly AbortSignal[]): Promise<void> {
  return new Promise((resolve, reject) => {
    let stop = (): void => {}
    const finish = (err?: unknown): void => {
      stop()
      for (const signal of signals) signal.removeEventListener('abort', onAbort)
      if (err === undefined) resolve()
      else reject(err)
    }
    const onAbort = function (this: AbortSignal): void { finish(this.reason) }
    for (const signal of signals) {
      if (signal.aborted) { reject(signal.reason); return }
      signal.addEventListener('abort', onAbort, { once: true })
    }
    stop = store.watch(key, { prefix: false, fromRevision }, (events) => {
      if (events.some((event) => event.type === 'delete')) finish()
    }, (err) => finish(err))
  })
}

/**
 * Creates this lease's candidate key and returns its create revision. A key of the same lease left
 * from an abandoned campaign (or a resign whose delete failed) is replaced, so even this node's own
 * next leadership gets a greater epoch.
 */
async function enterLine (store: ElectionStore, myKey: string, session: ElectionSession, election: string): Promise<number> {
  for (let attempt = 0; attempt < 3; attempt++) {
    const created = await store.txn([{ key: myKey, target: 'create', revision: 0 }], [{ type: 'put', key: myKey, value: session.nodeId, lease: session.lease.id }])
    if (created.succeeded) return created.revision
    const { entries } = await store.range(myKey, false)
    const stale = entries[0]
    if (stale !== undefined) await store.txn([{ key: myKey, target: 'create', revision: stale.createRevision }], [{ type: 'delete', key: myKey }])
  }
  throw new GalleonError('BUSY', `could not enter election '${election}': its candidate key for node '${session.nodeId}' keeps changing; another handle may share this lease`)
}

/**
 * Campaigns in `election` for `session` until it leads, `signal` aborts (CANCELLED) or the session
 * ends (its reason). The candidate key is removed when the campaign fails.
 */
export async function campaign (store: ElectionStore, election: string, session: ElectionSession, signal: AbortSignal | undefined, onEnd: (leadership: HeldLeadership) => void): Promise<HeldLeadership> {
  const prefix = layout.electionPrefix(election)
  const myKey = prefix + session.lease.id
  const signals = signal === undefined ? [session.ended] : [session.ended, signal]
  const myRevision = await enterLine(store, myKey, session, election)
  let watchFrom: number
  try {
    for (;;) {
      for (const s of signals) if (s.aborted) throw s.reason
      const { entries, revision } = await store.range(prefix, true)
      if (!entries.some((entry) => entry.key === myKey)) {
        throw new GalleonError('BACKEND_UNAVAILABLE', `the candidate key of election '${election}' was removed (the lease of node '${session.nodeId}' ended); campaign again`)
      }
      let predecessor: StoredEntry | undefined
      for (const entry of entries) {
        if (entry.createRevision < myRevision && (predecessor === undefined || entry.createRevision > predecessor.createRevision)) predecessor = entry
      }
      if (predecessor === undefined) { watchFrom = revision + 1; break }
      await waitForDelete(store, predecessor.key, revision + 1, signals)
    }
    // An abort that came during the last read wins over the leadership found by it.
    for (const s of signals) if (s.aborted) throw s.reason
  } catch (err) {
    // Leave the line, but only with the key this campaign created (never a newer one).
    await store.txn([{ key: myKey, target: 'create', revision: myRevision }], [{ type: 'delete', key: myKey }]).catch(() => {})
    throw err
  }

  let resolveLost = (): void => {}
  const lost = new Promise<void>((resolve) => { resolveLost = resolve })
  let ended = false
  let stopWatch = (): void => {}
  const leadership: HeldLeadership = {
    election,
    nodeId: session.nodeId,
    epoch: myRevision,
    lost,
    end: () => {
      if (ended) return
      ended = true
      stopWatch()
      session.ended.removeEventListener('abort', leadership.end)
      resolveLost()
      onEnd(leadership)
    },
    resign: async () => {
      if (ended) return
      leadership.end()
      await store.txn([{ key: myKey, target: 'create', revision: myRevision }], [{ type: 'delete', key: myKey }])
    }
  }
  // Lost when the key goes (lease expired, removed by an operator) or the session ends.
  stopWatch = store.watch(myKey, { prefix: false, fromRevision: watchFrom }, (events) => {
    if (events.some((event) => event.type === 'delete')) leadership.end()
  }, () => leadership.end())
  if (session.ended.aborted) leadership.end()
  else session.ended.addEventListener('abort', leadership.end, { once: true })
  return leadership
}

/** The current leader of `election`: the candidate with the lowest create revision. */
export async function currentLeader (store: ElectionStore, election: string): Promise<{ nodeId: string, epoch: number } | undefined> {
  const { entries } = await store.range(layout.electionPrefix(election), true)
  let first: StoredEntry | undefined
  for (const entry of entries) if (first === undefined || entry.createRevision < first.createRevision) first = entry
  return first === undefined ? undefined : { nodeId: first.value, epoch: first.createRevision }
}
