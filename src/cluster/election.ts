// Leader election over a coordinator store, etcd's recipe: every campaigner creates a key under the
// election's prefix bound to its lease; the key with the lowest create revision leads, and that
// revision is the leader's epoch. A later leader's key was necessarily created later, so epochs
// strictly increase. A waiting campaigner watches only its predecessor (no thundering herd).

import { setTimeout as sleep } from 'node:timers/promises'
import type { Leadership } from '../drivers.js'
import { GalleonError } from '../errors.js'
import { layout, type StoreCondition, type StoredEntry, type StoreEvent, type StoreLease, type StoreOp, type StoreTxnResult } from './coordinator-store.js'
import { RETRY_MAX_MS, RETRY_MIN_MS } from './watches.js'

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

/**
 * Watches `key` from `fromRevision` on, also past a store watch that fails: etcd cancels a watch
 * whose resume revision it compacted away (a watch quiet for a while whose connection broke), and
 * that says nothing about the key. Then the key is read again, `onRead` gets it as it is now (what
 * changed in the gap shows there), and the watch resumes right after that read. A read that finds
 * the store unreachable is tried again after a pause (the session's lease bounds how long this can
 * go on: when it ends, so does the caller); any other failure goes to `onError`, and so does a watch
 * failure that is not BACKEND_UNAVAILABLE (the handle closed).
 */
function watchKey (store: ElectionStore, key: string, fromRevision: number, onEvents: (events: StoreEvent[]) => void, onRead: (entry: StoredEntry | undefined) => void, onError: (err: unknown) => void): () => void {
  let stopped = false
  const stopping = new AbortController()
  let stopCurrent = (): void => {}
  // The pause before a read grows while watches keep failing soon after they started.
  let delayMs = RETRY_MIN_MS
  const watchFrom = (revision: number): void => {
    const startedAt = performance.now()
    stopCurrent = store.watch(key, { prefix: false, fromRevision: revision }, (events) => {
      delayMs = RETRY_MIN_MS
      onEvents(events)
    }, (err) => {
      if (stopped) return
      if (performance.now() - startedAt >= RETRY_MAX_MS) delayMs = RETRY_MIN_MS
      if (err.code === 'BACKEND_UNAVAILABLE') void readAgain()
      else onError(err)
    })
  }
  const readAgain = async (): Promise<void> => {
    for (;;) {
      await sleep(delayMs, undefined, { signal: stopping.signal }).catch(() => {})
      delayMs = Math.min(delayMs * 2, RETRY_MAX_MS)
      if (stopped) return
      let read: { entries: StoredEntry[], revision: number }
      try {
        read = await store.range(key, false)
      } catch (err) {
        if (stopped) return
        if (err instanceof GalleonError && err.code === 'BACKEND_UNAVAILABLE') continue
        onError(err)
        return
      }
      if (stopped) return
      onRead(read.entries[0])
      // onRead may have stopped the watch (the key is gone).
      if (!stopped) watchFrom(read.revision + 1)
      return
    }
  }
  watchFrom(fromRevision)
  return () => {
    stopped = true
    stopping.abort()
    stopCurrent()
  }
}

/**
 * Resolves when `key` (created at `createRevision`) is deleted at or after `fromRevision`; rejects
 * when a signal aborts or the watch fails for good.
 */
function waitForDelete (store: ElectionStore, key: string, createRevision: number, fromRevision: number, signals: readonly AbortSignal[]): Promise<void> {
  return new Promise((resolve, reject) => {
    let stop = (): void => {}
    let done = false
    const finish = (err?: unknown): void => {
      if (done) return
      done = true
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
    stop = watchKey(store, key, fromRevision, (events) => {
      if (events.some((event) => event.type === 'delete')) finish()
    }, (entry) => {
      // Read again after the watch failed: gone (or made again, by a later candidate) is deleted.
      if (entry === undefined || entry.createRevision !== createRevision) finish()
    }, (err) => finish(err))
    if (done) stop()
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
      await waitForDelete(store, predecessor.key, predecessor.createRevision, revision + 1, signals)
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
  // Lost when the key goes (lease expired, removed by an operator) or the session ends. A watch
  // that fails is not a lost leadership: the key is read again, and kept while it is this one.
  stopWatch = watchKey(store, myKey, watchFrom, (events) => {
    if (events.some((event) => event.type === 'delete')) leadership.end()
  }, (entry) => {
    if (entry === undefined || entry.createRevision !== myRevision || entry.value !== session.nodeId) leadership.end()
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
