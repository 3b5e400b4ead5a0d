// etcd coordinator: the Coordinator contract over a real etcd v3 cluster through the `etcd3` client
// (loaded lazily, so `import 'galleonfs'` never needs it). Membership on leases, CAS through
// transactions on ModRevision/CreateRevision, watches, elections by lowest CreateRevision; a write
// whose answer is lost is looked up in etcd, not sent again blindly.

import type { Etcd3, IKeyValue, IOptions, IRequestOp, ICompare, ITxnResponse } from 'etcd3'
import { AbstractCoordinator, type AbstractCoordinatorOptions } from '../../src/cluster/abstract-coordinator.js'
import type { StoreCondition, StoredEntry, StoreEvent, StoreLease, StoreOp, StoreTxnResult } from '../../src/cluster/coordinator-store.js'
import { GalleonError } from '../../src/errors.js'
import { randomLeaseId, writeOutcome } from './write-outcome.js'

/** Options of the etcd coordinator. */
export interface EtcdCoordinatorOptions extends AbstractCoordinatorOptions {
  /** Client URLs of the etcd members, e.g. `['http://127.0.0.1:2379']` (https:// with `tls`). */
  readonly endpoints: readonly string[]
  /** Namespace of every key GalleonFS writes (default `/galleonfs/`); clusters sharing an etcd use different ones. */
  readonly prefix?: string
  /** etcd user and password, when etcd has authentication enabled. */
  readonly auth?: { readonly username: string, readonly password: string }
  /** TLS material (PEM): the CA that signed etcd's certificate, and a client certificate and key if etcd asks for one. */
  readonly tls?: { readonly ca: Uint8Array | string, readonly cert?: Uint8Array | string, readonly key?: Uint8Array | string }
  /** Deadline of each request (default 5 s). */
  readonly requestTimeoutMs?: number
  /** How long connect() waits for etcd to answer (default 5 s). */
  readonly connectTimeoutMs?: number
}

type Etcd3Module = typeof import('etcd3')

async function loadEtcd3 (): Promise<Etcd3Module> {
  try {
    const mod = await import('etcd3') as Etcd3Module & { default?: Etcd3Module }
    return mod.Etcd3 === undefined && mod.default !== undefined ? mod.default : mod
  } catch (err) {
    throw new GalleonError('BACKEND_UNAVAILABLE', 'the etcd coordinator needs the etcd3 package, which is not installed: run `npm install etcd3` (it is an optional dependency of galleonfs)', { cause: err })
  }
}

function assertOptions (options: EtcdCoordinatorOptions): void {
  const bad = (message: string): GalleonError => new GalleonError('INVALID_ARGUMENT', message)
  if (typeof options !== 'object' || options === null) throw bad('etcd coordinator options must be an object with `endpoints`')
  const { endpoints, prefix, requestTimeoutMs, connectTimeoutMs } = options
  if (!Array.isArray(endpoints) || endpoints.length === 0 || !endpoints.every((e) => typeof e === 'string' && /^https?:\/\/[^/]+/.test(e))) {
    throw bad(`endpoints must be a non-empty array of etcd client URLs such as 'http://127.0.0.1:2379', got ${JSON.stringify(endpoints)}`)
  }
  // The gRPC client takes scheme, host and port only: anything after them ends up in the host name
  // and fails as an unreachable etcd, far from the typo.
  const withPath = endpoints.find((e: string) => !/^https?:\/\/[^/?#]+$/.test(e))
  if (withPath !== undefined) {
    throw bad(`etcd endpoint '${withPath}' has a path, query or trailing '/'; give scheme, host and port only, such as 'http://127.0.0.1:2379'`)
  }
  if (prefix !== undefined && (typeof prefix !== 'string' || prefix.length === 0)) throw bad(`prefix must be a non-empty string such as '/galleonfs/', got ${JSON.stringify(prefix)}`)
  for (const [name, ms] of [['requestTimeoutMs', requestTimeoutMs], ['connectTimeoutMs', connectTimeoutMs]] as const) {
    if (ms !== undefined && (typeof ms !== 'number' || !Number.isSafeInteger(ms) || ms <= 0)) throw bad(`${name} must be a positive whole number of milliseconds, got ${String(ms)}`)
  }
}

/** The first key after every key starting with `prefix` (etcd's range_end for a prefix). */
function prefixEnd (prefix: Buffer): Buffer {
  const end = Buffer.from(prefix)
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]! += 1
      return end.subarray(0, i + 1)
    }
  }
  return Buffer.from([0]) // every byte 0xff: to the end of the keyspace
}

/**
 * A fault-handling policy of etcd3 that runs each call once, as it comes (etcd3 calls only `execute`
 * of its policies, in lib/connection-pool.js).
 */
type FaultPolicy = ReturnType<NonNullable<NonNullable<IOptions['faultHandling']>['host']>>
const runOnce = { execute: async (call: (context: { signal: AbortSignal }) => unknown) => await call({ signal: new AbortController().signal }) } as unknown as FaultPolicy

/**
 * The pauses before etcd3 opens a broken watch stream again: from 100 ms (etcd3 takes the next of
 * the back-off it is given first, so 50 ms is never used), doubling up to 1 s. Its
 * default (cockatiel's ExponentialBackoff) grows to 30 s while etcd is away, so after an outage of
 * some seconds the watches stayed dead for up to 30 s more, etcd answering all along (a failover
 * unseen by the deposed primary, members unseen), and a closed handle's pending pause held the
 * process that long.
 */
type WatchBackoff = NonNullable<NonNullable<IOptions['faultHandling']>['watchBackoff']>
const WATCH_RETRY_MAX_MS = 1000
function watchBackoff (delayMs: number): WatchBackoff {
  return { duration: delayMs, next: () => watchBackoff(Math.min(delayMs * 2, WATCH_RETRY_MAX_MS)) }
}

/** How often a call is sent while it goes unanswered: once and three more times, as etcd3's default policy. */
const MAX_SENDS = 4

/** A kept-alive etcd lease: the local deadline says when etcd may already have expired it. */
interface LeaseKeeper {
  readonly lease: StoreLease
  readonly onLost: () => void
  timer: NodeJS.Timeout | undefined
  deadline: NodeJS.Timeout | undefined
  stopped: boolean
}

/**
 * Coordinator on etcd v3. Create it with `EtcdCoordinator.connect(options)`, which fails with
 * BACKEND_UNAVAILABLE (naming the endpoints) when the etcd3 package is missing or etcd does not
 * answer. Leases count whole seconds (a TTL is rounded up, and etcd may raise it to its minimum,
 * about 2 s with default settings). Each handle keeps its leases alive every third of their TTL and
 * treats a lease as lost as soon as a TTL has passed since the last keepalive etcd confirmed, which
 * is no later than etcd expires it: a leader stops believing it leads before another can be elected.
 * A write whose answer is lost (deadline, connection dropped) is looked up in etcd rather than sent
 * again blindly: a compare-and-swap etcd applied reports success, one it did not reports failure, and
 * one whose fate cannot be told fails with BACKEND_UNAVAILABLE (etcd may still apply it later).
 */
export class EtcdCoordinator extends AbstractCoordinator {
  readonly name = 'etcd'
  readonly #client: Etcd3
  /** Sends only the lease keepalives: a client without etcd3's circuit breaker (see connect()). */
  readonly #keepaliveClient: Etcd3
  readonly #prefix: Buffer
  readonly #endpoints: string
  readonly #requestTimeoutMs: number
  readonly #keepers = new Map<string, LeaseKeeper>()
  readonly #watchers = new Set<{ cancel: () => Promise<void> }>()
  readonly #pending = new Set<Promise<unknown>>()
  /** etcd3's test for an error after which the call may still have been applied (deadline, connection lost). */
  readonly #unanswered: (err: unknown) => boolean
  /** Highest store revision seen in an answer: a write sent after it applies at a later revision. */
  #revision = 0

  private constructor (client: Etcd3, keepaliveClient: Etcd3, isRecoverableError: Etcd3Module['isRecoverableError'], options: EtcdCoordinatorOptions) {
    super(options)
    this.#client = client
    this.#keepaliveClient = keepaliveClient
    this.#unanswered = (err) => err instanceof Error && isRecoverableError(err)
    this.#prefix = Buffer.from(options.prefix ?? '/galleonfs/')
    this.#endpoints = options.endpoints.join(', ')
    this.#requestTimeoutMs = options.requestTimeoutMs ?? 5000
  }

  /** Connects to etcd and checks that it answers. */
  static async connect (options: EtcdCoordinatorOptions): Promise<EtcdCoordinator> {
    assertOptions(options)
    const { Etcd3, isRecoverableError } = await loadEtcd3()
    const requestTimeoutMs = options.requestTimeoutMs ?? 5000
    const pem = (value: Uint8Array | string | undefined): Buffer | undefined => (value === undefined ? undefined : Buffer.from(value))
    const clientOptions: IOptions = {
      hosts: [...options.endpoints],
      dialTimeout: options.connectTimeoutMs ?? 5000,
      defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + requestTimeoutMs }),
      // Streams (watches) have no deadline: HTTP/2 pings find a connection that no longer answers
      // (etcd paused, a partition that drops packets) so the stream fails and is resumed. etcd
      // refuses pings more often than every 5 s (--grpc-keepalive-min-time).
      grpcOptions: { 'grpc.keepalive_time_ms': Math.max(5000, requestTimeoutMs), 'grpc.keepalive_timeout_ms': requestTimeoutMs },
      ...(options.auth === undefined ? {} : { auth: { username: options.auth.username, password: options.auth.password } }),
      ...(options.tls === undefined ? {} : { credentials: { rootCertificate: Buffer.from(options.tls.ca), privateKey: pem(options.tls.key), certChain: pem(options.tls.cert) } })
    }
    // etcd3's default global policy sends a call again when it failed without an answer (deadline,
    // connection lost), up to three times. For a write etcd may have applied all the same, that
    // second send answers for the first: a compare-and-swap then fails against its own write, and a
    // lease grant makes a second lease. So etcd3 sends every call once; reads and revokes are sent
    // again here (#retried), and a write whose answer is lost is looked up first (_txn, #grant).
    const client = new Etcd3({ ...clientOptions, faultHandling: { global: runOnce, watchBackoff: watchBackoff(50) } })
    // etcd3's default host policy, after three failures in a row at an endpoint, refuses every call
    // to it for 5 s (a circuit breaker, which keepalive streams go through too). Keepalives must not
    // wait that out: a lease of a few seconds would run out after an outage of a moment, etcd
    // answering again long before. They have their own client, which sends each as it comes
    // (#keepalive tries again within half a second by itself); their failures neither open the
    // breaker of the other calls nor reset their connections.
    const keepaliveClient = new Etcd3({ ...clientOptions, faultHandling: { host: () => runOnce, global: runOnce } })
    const coordinator = new EtcdCoordinator(client, keepaliveClient, isRecoverableError, options)
    try {
      const deadline = Date.now() + (options.connectTimeoutMs ?? 5000)
      const response = await coordinator.#retried(async () => await client.kv.range({ key: coordinator.#prefix, limit: 1 }, { deadline }))
      coordinator.#saw(response.header.revision)
      coordinator.noteRevision(Number(response.header.revision))
    } catch (err) {
      client.close()
      keepaliveClient.close()
      throw coordinator.#error(err, 'connect')
    }
    return coordinator
  }

  protected async _range (key: string, prefix: boolean): Promise<{ entries: StoredEntry[], revision: number }> {
    const full = this.#key(key)
    const response = await this.#call('read', this.#retried(async () => await this.#client.kv.range(prefix ? { key: full, range_end: prefixEnd(full) } : { key: full })))
    this.#saw(response.header.revision)
    return { entries: response.kvs.map((kv) => this.#entry(kv)), revision: Number(response.header.revision) }
  }

  /**
   * Sends the transaction, and again only while that is safe. When a send goes unanswered, etcd may
   * have applied it (or may yet): etcd is asked what became of it (#outcome) before anything else.
   */
  protected async _txn (conditions: readonly StoreCondition[], ops: readonly StoreOp[]): Promise<StoreTxnResult> {
    const compare: ICompare[] = conditions.map((condition) => (condition.target === 'mod'
      ? { key: this.#key(condition.key), target: 'Mod', result: 'Equal', mod_revision: String(condition.revision) }
      : { key: this.#key(condition.key), target: 'Create', result: 'Equal', create_revision: String(condition.revision) }))
    const success: IRequestOp[] = ops.map((op) => (op.type === 'put'
      ? { request_put: { key: this.#key(op.key), value: Buffer.from(op.value), ...(op.lease === undefined ? {} : { lease: op.lease }) } }
      : { request_delete_range: { key: this.#key(op.key) } }))
    const request = { compare, success, failure: [] }
    const sentAfter = this.#revision
    let unanswered: unknown
    for (let send = 1; ; send++) {
      let response: ITxnResponse | undefined
      try {
        response = await this.#client.kv.txn(request)
      } catch (err) {
        if (this.#unanswered(err)) unanswered = err
        // Refused without being applied; after a send that went unanswered, that says nothing of it.
        else if (unanswered === undefined) throw this.#error(err, 'write')
      }
      if (response !== undefined) {
        this.#saw(response.header.revision)
        // A failed comparison after a send that went unanswered may be against that send's own write.
        if (response.succeeded || unanswered === undefined) return this.#txnResult(response)
      }
      let outcome: StoreTxnResult | 'not applied'
      try {
        outcome = await writeOutcome(conditions, ops, sentAfter, async (key, revision) => await this.#version(key, revision))
      } catch (err) {
        throw this.#unknownOutcome(unanswered, err)
      }
      if (outcome !== 'not applied') return outcome
      if (send === MAX_SENDS) throw this.#unknownOutcome(unanswered)
    }
  }

  #txnResult (response: ITxnResponse): StoreTxnResult {
    let deleted = 0
    for (const reply of response.responses ?? []) deleted += Number(reply.response_delete_range?.deleted ?? 0)
    return { succeeded: response.succeeded, revision: Number(response.header.revision), deleted }
  }

  /** The key as it is (or as it was at `revision`), and the revision etcd answered at. Sent once: a failure leaves the outcome unknown. */
  async #version (key: string, revision?: number): Promise<{ kv: IKeyValue | undefined, revision: number }> {
    const response = await this.#client.kv.range({ key: this.#key(key), ...(revision === undefined ? {} : { revision: String(revision) }) })
    this.#saw(response.header.revision)
    return { kv: response.kvs[0], revision: Number(response.header.revision) }
  }

  #unknownOutcome (unanswered: unknown, lookup?: unknown): GalleonError {
    const detail = (err: unknown): string => (err instanceof Error ? err.message : String(err))
    return new GalleonError('BACKEND_UNAVAILABLE', `etcd at ${this.#endpoints} did not answer a write (${detail(unanswered)}), and whether it applied it is unknown${lookup === undefined ? '' : ` (looking it up failed: ${detail(lookup)})`}: it may still be applied later; read the keys to see, and check that etcd is running and reachable at these endpoints (the endpoints option)`, { cause: unanswered })
  }

  protected _watch (key: string, options: { prefix: boolean, fromRevision: number }, onEvents: (events: StoreEvent[]) => void, onError: (err: GalleonError) => void): () => void {
    const full = this.#key(key)
    const builder = this.#client.watch().startRevision(String(options.fromRevision))
    const watcher = (options.prefix ? builder.prefix(full) : builder.key(full)).watcher()
    let stopped = false
    const handle = { cancel: async (): Promise<void> => { await watcher.cancel() } }
    this.#watchers.add(handle)
    // etcd3 resumes a watch whose connection broke by itself, from the revision after the header of
    // the last response it got. That header does not say how far the events went: etcd confirms a
    // watch (the created response) with its current revision and sends the older changes after it,
    // and a batch of them carries the current revision too. A connection lost in between resumed
    // after changes never delivered, and nothing told the watch. It resumes from the revision after
    // the last change it reported instead. (Not after a progress notification either: etcd before
    // 3.4.25/3.5.8 could send one ahead of events still queued, etcd-io/etcd#15220.)
    let nextRevision = options.fromRevision
    watcher.on('disconnected', () => { watcher.request.start_revision = String(nextRevision) })
    watcher.on('data', (response) => {
      if (stopped) return
      // One call per revision: a response may carry several.
      let batch: StoreEvent[] = []
      for (const event of response.events) {
        const entry = this.#entry(event.kv)
        if (batch.length > 0 && batch[0]!.entry.modRevision !== entry.modRevision) { onEvents(batch); batch = [] }
        batch.push({ type: event.type === 'Delete' ? 'delete' : 'put', entry })
        nextRevision = entry.modRevision + 1
      }
      if (batch.length > 0) onEvents(batch)
    })
    // etcd3 emits 'error' only when etcd ended the watch (with an empty reason: the revision it
    // would resume from was compacted), and has let go of it by then: a cancel would wait for an
    // answer that never comes, and close() waited out the request deadline for it.
    watcher.on('error', (err) => {
      if (stopped) return
      stopped = true
      this.#watchers.delete(handle)
      const failure = this.#error(err, 'watch')
      onError(failure.code !== 'BACKEND_UNAVAILABLE'
        ? failure
        : new GalleonError('BACKEND_UNAVAILABLE', `etcd at ${this.#endpoints} ended the watch of '${key}' from revision ${nextRevision} (${err.message}; no reason given means etcd compacted that revision away): read the key again and watch from the revision of that read`, { cause: err }))
    })
    const stop = (): void => {
      if (stopped) return
      stopped = true
      this.#watchers.delete(handle)
      this.#track(watcher.cancel().catch(() => {}))
    }
    return stop
  }

  protected async _grantLease (ttlMs: number, onLost: () => void): Promise<StoreLease> {
    // etcd starts counting before it answers: the local deadline starts before the request. On the
    // monotonic clock: a wall clock stepped meanwhile must neither end a live lease nor stretch one
    // etcd has already expired.
    const sentAt = performance.now()
    const lease = await this.#grant(Math.ceil(ttlMs / 1000))
    const keeper: LeaseKeeper = { lease, onLost, timer: undefined, deadline: undefined, stopped: false }
    this.#keepers.set(lease.id, keeper)
    this.#armDeadline(keeper, sentAt)
    this.#scheduleKeepalive(keeper, lease.ttlMs / 3)
    return lease
  }

  protected async _revokeLease (lease: StoreLease): Promise<void> {
    this._releaseLease(lease)
    try {
      await this.#call('write', this.#retried(async () => await this.#client.leaseClient.leaseRevoke({ ID: lease.id })))
    } catch (err) {
      // Already expired: the goal of a revoke is reached.
      if (!(err instanceof GalleonError && err.cause instanceof Error && err.cause.name === 'EtcdLeaseInvalidError')) throw err
    }
  }

  protected _releaseLease (lease: StoreLease): void {
    const keeper = this.#keepers.get(lease.id)
    if (keeper === undefined) return
    keeper.stopped = true
    clearTimeout(keeper.timer)
    clearTimeout(keeper.deadline)
    this.#keepers.delete(lease.id)
  }

  protected async _close (): Promise<void> {
    for (const keeper of [...this.#keepers.values()]) this._releaseLease(keeper.lease)
    // Cancelling a watch waits for etcd to confirm it, which an etcd that does not answer (paused,
    // partitioned) never does: after a request's deadline, closing the client ends what is left.
    const settled = Promise.allSettled([...[...this.#watchers].map(async (watcher) => { await watcher.cancel() }), ...this.#pending])
    let timer: NodeJS.Timeout | undefined
    await Promise.race([settled, new Promise((resolve) => { timer = setTimeout(resolve, this.#requestTimeoutMs) })])
    clearTimeout(timer)
    this.#client.close()
    this.#keepaliveClient.close()
  }

  /**
   * Grants a lease under an ID chosen here, so that sending the grant again is safe: after a send
   * that went unanswered, etcd refusing the ID as taken means that send made the lease.
   */
  async #grant (ttlSeconds: number): Promise<StoreLease> {
    let id = randomLeaseId()
    let unanswered: unknown
    for (let send = 1; ; send++) {
      try {
        const response = await this.#client.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: id })
        return { id: response.ID, ttlMs: Number(response.TTL) * 1000 }
      } catch (err) {
        if (err instanceof Error && /lease already exists/.test(err.message)) {
          if (unanswered !== undefined) {
            const made = await this.#call('read', this.#retried(async () => await this.#client.leaseClient.leaseTimeToLive({ ID: id })))
            // Gone again (the sends took longer than its TTL): a new lease is granted.
            if (Number(made.TTL) > 0) return { id, ttlMs: Number(made.grantedTTL) * 1000 }
          }
          // Another lease has this ID (one chance in 2^63): another one.
          id = randomLeaseId()
          unanswered = undefined
        } else if (this.#unanswered(err)) {
          unanswered = err
        } else {
          throw this.#error(err, 'lease grant')
        }
        if (send === MAX_SENDS) throw this.#error(unanswered ?? err, 'lease grant')
      }
    }
  }

  /** The lease counts as lost a TTL after the send time (performance.now()) of the last keepalive etcd confirmed. */
  #armDeadline (keeper: LeaseKeeper, sentAt: number): void {
    clearTimeout(keeper.deadline)
    keeper.deadline = setTimeout(() => this.#lose(keeper), Math.max(0, sentAt + keeper.lease.ttlMs - performance.now()))
  }

  #scheduleKeepalive (keeper: LeaseKeeper, delayMs: number): void {
    if (keeper.stopped) return
    keeper.timer = setTimeout(() => { this.#track(this.#keepalive(keeper)) }, delayMs)
  }

  async #keepalive (keeper: LeaseKeeper): Promise<void> {
    if (keeper.stopped) return
    const sentAt = performance.now()
    const interval = keeper.lease.ttlMs / 3
    try {
      // gRPC takes a wall-clock deadline and turns it into a timer at once.
      const stream = await this.#keepaliveClient.leaseClient.leaseKeepAlive({ deadline: Date.now() + Math.min(this.#requestTimeoutMs, interval) })
      const ttl = await new Promise<number>((resolve, reject) => {
        stream.on('data', (response) => resolve(Number(response.TTL)))
        stream.on('error', reject)
        // A stream can end with an OK status and no answer (a server or proxy ending it): that is
        // a failed keepalive too, or none would ever be sent again and the lease would run out.
        stream.on('end', () => reject(new Error('the keepalive stream ended without an answer')))
        stream.write({ ID: keeper.lease.id })
      }).finally(() => { try { stream.end() } catch {} })
      if (keeper.stopped) return
      if (ttl <= 0) { this.#lose(keeper); return }
      this.#armDeadline(keeper, sentAt)
      this.#scheduleKeepalive(keeper, interval)
    } catch {
      // Try again soon; the deadline ends the lease if no keepalive gets through in time.
      this.#scheduleKeepalive(keeper, Math.min(500, interval))
    }
  }

  #lose (keeper: LeaseKeeper): void {
    if (keeper.stopped) return
    this._releaseLease(keeper.lease)
    keeper.onLost()
  }

  #track (promise: Promise<unknown>): void {
    this.#pending.add(promise)
    void promise.finally(() => this.#pending.delete(promise))
  }

  /** Sends an idempotent call (a read, a revoke) again while it goes unanswered, up to MAX_SENDS times. */
  async #retried<T> (call: () => Promise<T>): Promise<T> {
    for (let send = 1; ; send++) {
      try {
        return await call()
      } catch (err) {
        if (send === MAX_SENDS || !this.#unanswered(err)) throw err
      }
    }
  }

  #saw (revision: string): void {
    if (Number(revision) > this.#revision) this.#revision = Number(revision)
  }

  async #call<T> (what: 'read' | 'write', request: Promise<T>): Promise<T> {
    try {
      return await request
    } catch (err) {
      throw this.#error(err, what)
    }
  }

  #error (err: unknown, what: string): GalleonError {
    if (err instanceof GalleonError) return err
    const name = err instanceof Error ? err.name : ''
    const detail = err instanceof Error ? err.message : String(err)
    if (name === 'EtcdPermissionDeniedError' || name === 'EtcdAuthenticationFailedError' || name === 'EtcdInvalidAuthTokenError' || /authentication failed|permission denied/.test(detail)) {
      return new GalleonError('PERMISSION_DENIED', `etcd at ${this.#endpoints} refused the ${what}: ${detail}; check the auth username and password and the user's role on the prefix`, { cause: err })
    }
    if (/authentication is not enabled/.test(detail)) {
      return new GalleonError('INVALID_ARGUMENT', `etcd at ${this.#endpoints} has authentication off, and a user was given: remove the auth option (the daemon: --etcd-username and --etcd-password-file), or turn authentication on in etcd (etcdctl auth enable)`, { cause: err })
    }
    if (/user name is empty/.test(detail)) {
      return new GalleonError('PERMISSION_DENIED', `etcd at ${this.#endpoints} refused the ${what}: it has authentication on, and no user was given; pass auth: { username, password } (the daemon: --etcd-username and --etcd-password-file)`, { cause: err })
    }
    if ((err as { isBrokenCircuitError?: boolean } | undefined)?.isBrokenCircuitError === true) {
      // etcd3's circuit breaker, open after three calls in a row failed: the call was not sent.
      return new GalleonError('BACKEND_UNAVAILABLE', `etcd at ${this.#endpoints} did not answer the last calls, so this ${what} was not sent (calls wait 5 s after three failures in a row); check that etcd is running and reachable at these endpoints (the endpoints option), and retry`, { cause: err })
    }
    return new GalleonError('BACKEND_UNAVAILABLE', `etcd at ${this.#endpoints} failed a ${what}: ${detail}; check that etcd is running and reachable at these endpoints (the endpoints option)`, { cause: err })
  }

  #key (key: string): Buffer {
    return Buffer.concat([this.#prefix, Buffer.from(key)])
  }

  #entry (kv: IKeyValue): StoredEntry {
    return {
      key: kv.key.subarray(this.#prefix.length).toString(),
      value: kv.value.toString(),
      createRevision: Number(kv.create_revision),
      modRevision: Number(kv.mod_revision)
    }
  }
}

/** Backend descriptor: name, availability of the etcd3 client, and a factory that connects. */
export const etcdBackend = {
  name: 'etcd',
  isAvailable: async (): Promise<boolean> => { try { await loadEtcd3(); return true } catch { return false } },
  create: async (options: EtcdCoordinatorOptions): Promise<EtcdCoordinator> => await EtcdCoordinator.connect(options)
}
