// The QoS stage of the I/O path. Each operation passes two gates: its volume's limiter (token
// buckets per limit, with burst credits), then the node's dispatcher, which bounds the work in
// flight (and, if declared, the backend's capacity) and, when operations queue for it, serves them
// in mClock order: reservations (guarantees) that are due first, then operations close to their
// latency target (while their volume is not far ahead of its fair share), then weighted fair
// share. A noisy neighbour therefore queues behind a guaranteed volume's floor instead of starving it.
// Here: the scheduler (the limiter and the dispatcher loop); mclock.ts orders the dispatcher's queue,
// metrics.ts holds what it reports.

import { GalleonError, describe, quoted } from '../errors.js'
import { MetricsRecorder } from '../metrics/recorder.js'
import { TokenBucket, realClock, type QoSClock } from './bucket.js'
import { INTERVAL_MS, closeInterval, pickNext, reservationTag, retag } from './mclock.js'
import { volumeMetrics, type QoSLatencyMissedEvent, type QoSMetrics, type QoSThrottledEvent } from './metrics.js'
import type { QoSPolicy, QoSPolicySource } from './policy.js'
import { VolumeState, applyLimits, limitReadyAt, limitWait, takeTokens, tightens, tightestLimit, waitsForShared, type Kind, type Pending } from './volume-state.js'

export type { QoSGuaranteeMissedEvent, QoSLatencyMissedEvent, QoSMetrics, QoSThrottledEvent } from './metrics.js'

/** Node-wide QoS settings (`GalleonFS.open({ qos })`). */
export interface QoSNodeOptions {
  /**
   * Operations the dispatcher lets into the engine at once; more wait in its queue, in guarantee
   * and fair-share order (default 64).
   */
  maxInFlight?: number
  /** What the backend sustains, in operations per second: the dispatcher never admits more. */
  capacityIops?: number
  /** What the backend sustains, in MB (10^6 bytes) per second. */
  capacityMBps?: number
  /** Advanced: time source and timers (tests drive a manual clock). */
  clock?: QoSClock
}

/** The QoS stage: per-volume limiters and the node dispatcher. One per GalleonFS instance. */
export class QoSScheduler {
  readonly #clock: QoSClock
  readonly #emit: (event: string, payload: unknown) => void
  readonly #volumes = new Map<string, VolumeState>()
  readonly #maxInFlight: number
  readonly #windowSeconds: number
  readonly #capacity: Array<[TokenBucket, 'ops' | 'bytes']> = []
  readonly #explicit: boolean
  #dispatching: boolean
  #inFlight = 0
  #backlog = 0
  #vtime = 0
  #pumpTimer: unknown = undefined
  /** When #pumpTimer is due: the time the node's capacity lets the operation it waits for in. */
  #pumpDue = Infinity
  /**
   * Capacity owed to the queue after a late capacity timer: the queue is served at the times the
   * capacity let it in, from #owedFrom, up to #owedUntil (when the timer fired); empty when equal.
   */
  #owedFrom = -Infinity
  #owedUntil = -Infinity
  #intervalStart: number
  #closed = false

  /** `windowSeconds`: the metrics window over which a latency target's 99th percentile is judged. */
  constructor (options: QoSNodeOptions = {}, emit: (event: string, payload: unknown) => void = () => {}, windowSeconds = 10) {
    if (options === null || typeof options !== 'object') throw invalid(`qos options must be an object such as { maxInFlight: 64, capacityIops: 20000 }, got ${describe(options)}`)
    const known = new Set(['maxInFlight', 'capacityIops', 'capacityMBps', 'clock'])
    for (const key of Object.keys(options)) if (!known.has(key)) throw invalid(`unknown qos option ${quoted(key)}; allowed: ${[...known].join(', ')}`)
    const { maxInFlight = 64, capacityIops, capacityMBps } = options
    if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1 || maxInFlight > 65_536) throw invalid(`qos.maxInFlight must be a whole number from 1 to 65536, got ${describe(maxInFlight)}`)
    for (const [field, value] of [['capacityIops', capacityIops], ['capacityMBps', capacityMBps]] as const) {
      if (value !== undefined && (typeof value !== 'number' || !Number.isFinite(value) || value <= 0)) throw invalid(`qos.${field} must be a number above 0, got ${describe(value)}`)
    }
    this.#clock = options.clock ?? realClock
    this.#emit = emit
    this.#maxInFlight = maxInFlight
    this.#windowSeconds = windowSeconds
    const now = this.#clock.now()
    if (capacityIops !== undefined) this.#capacity.push([new TokenBucket(capacityIops, now), 'ops'])
    if (capacityMBps !== undefined) this.#capacity.push([new TokenBucket(capacityMBps * 1e6, now), 'bytes'])
    // The dispatcher runs when the node's capacity was described, or once a volume asks for a
    // guarantee, a weight or a latency target; until then operations skip it.
    this.#explicit = options.maxInFlight !== undefined || this.#capacity.length > 0
    this.#dispatching = this.#explicit
    this.#intervalStart = now
  }

  /** Sets (or, with undefined, removes) the policy of a volume; takes effect for waiting operations too. */
  setPolicy (volumeId: string, volumeName: string, policy: QoSPolicy | undefined, source: QoSPolicySource): void {
    let state = this.#volumes.get(volumeId)
    if (state === undefined) {
      if (policy === undefined) return
      state = new VolumeState(volumeId, volumeName)
      this.#volumes.set(volumeId, state)
    }
    // Given a policy, the volume's state lasts until it is forgotten (its figures are lifetime ones).
    if (policy !== undefined) state.transient = false
    // Operations that the old limits let in while their timer ran late go in under them first,
    // unless the new policy tightens a limit: a limit lowered is what may reach the engine from
    // now on, so what waits is held to it (no burst at the old rate after the change); raised, or
    // the change is elsewhere (a weight, a guarantee, the same policy applied again), the volume
    // keeps what it was owed.
    if (state.due <= this.#clock.now() && !tightens(state.policy, policy)) this.#limit(state)
    state.name = volumeName
    state.policy = policy
    state.source = policy === undefined ? 'none' : source
    applyLimits(state, policy, this.#clock.now())
    const before = { reservationIops: state.reservationIops, reservationBps: state.reservationBps, weight: state.weight }
    state.reservationIops = policy?.guarantees?.iops ?? 0
    state.reservationBps = (policy?.guarantees?.throughputMBps ?? 0) * 1e6
    // The fair-share tags step by 1/weight: a weight such as 1e-300 stepped them past where adding 1
    // changes a double, and every other volume's tags then tied, the first one taking all the spare I/O.
    state.weight = Math.max(policy?.weight ?? 1, MIN_WEIGHT)
    if (state.reservationIops !== before.reservationIops || state.reservationBps !== before.reservationBps || state.weight !== before.weight) retag(state, before, this.#vtime)
    state.latencyMs = policy?.limits?.latencyMs ?? 0
    // A changed target keeps the latencies measured so far: they are still what callers saw.
    if (state.latencyMs === 0) state.latencies = undefined
    else state.latencies ??= new MetricsRecorder({ windowSeconds: this.#windowSeconds, now: this.#clock.now })
    if (state.reservationIops > 0 || state.reservationBps > 0 || policy?.weight !== undefined || state.latencyMs > 0) this.#dispatching = true
    this.#clearLimitTimer(state)
    this.#limit(state)
  }

  /** Drops a deleted volume: its waiting operations go on (and fail in the engine as they should). */
  forget (volumeId: string): void {
    const state = this.#volumes.get(volumeId)
    if (state === undefined) return
    this.#volumes.delete(volumeId)
    this.#clearLimitTimer(state)
    for (const lane of [0, 1] as const) for (const op of state.waiting[lane].splice(0)) op.resolve(false)
    this.#backlog -= state.queued.length
    for (const op of state.queued.splice(0)) op.resolve(false)
    state.queuedWithBytes = 0
    state.bytesBackloggedSince = undefined
  }

  /**
   * Whether the scheduler holds state for a volume: one with a policy (until `forget`), or one
   * with operations waiting for the dispatcher now. For diagnostics and tests.
   */
  tracks (volumeId: string): boolean {
    return this.#volumes.has(volumeId)
  }

  /**
   * Admits one operation. Returns whether `release()` must follow its completion: `false` or
   * `true` at once, or a promise of it when the operation has to wait.
   */
  admit (volumeId: string, kind: Kind, bytes: number): boolean | Promise<boolean> {
    // Closed: nothing waits any more (the engine refuses the operation).
    if (this.#closed) return false
    const state = this.#volumes.get(volumeId)
    if (state !== undefined && state.limited) {
      const now = this.#clock.now()
      const waiting = state.waiting[kind === 'read' ? 0 : 1]
      // An overdue timer's operations go first: the limits let them in before now, and charging
      // this one at now first would take their turn (and move the buckets past their times).
      if (state.due <= now) {
        // Its own lane's go first in call order too: they continue only once their promises
        // settle, so this one, admitted at once, would reach the engine before them, and a write
        // to a block they write would be applied before theirs and overwritten (a FUSE mount
        // hands its writes over in the order the kernel sent them).
        if (waiting.length > 0) {
          const queued = new Promise<boolean>((resolve) => { waiting.push({ kind, bytes, arrived: now, resolve, rTag: 0, pTag: 0 }) })
          this.#limit(state)
          return queued
        }
        this.#limit(state)
      }
      // The other lane's head, if any, arrived first: this one goes only if the limits let it in
      // now and that one is not waiting for a limit the lanes share (see #nextLane).
      if (waiting.length === 0 && limitWait(state, kind, bytes, now) === 0 && !this.#heldBehind(state, kind, now)) {
        takeTokens(state, kind, bytes)
      } else {
        return new Promise<boolean>((resolve) => {
          waiting.push({ kind, bytes, arrived: now, resolve, rTag: 0, pTag: 0 })
          if (waiting.length === 1) this.#limit(state)
        })
      }
    }
    if (!this.#dispatching) return false
    if (this.#backlog === 0 && this.#inFlight < this.#maxInFlight) {
      // The clock matters only to a declared capacity.
      const now = this.#capacity.length === 0 ? 0 : this.#clock.now()
      if (this.#capacityReadyAt(bytes, now) <= now) {
        this.#start(bytes, state, now)
        return true
      }
    }
    return new Promise<boolean>((resolve) => { this.#enqueue(state ?? this.#anonymous(volumeId), kind, bytes, this.#clock.now(), resolve) })
  }

  /** Ends an operation `admit` answered `true` for. */
  release (): void {
    this.#inFlight--
    if (this.#backlog > 0) this.#pump()
  }

  /** The QoS clock's time in ms: what an I/O call passes to `completed()` as its arrival. */
  now (): number {
    return this.#clock.now()
  }

  /**
   * Ends an I/O call that arrived at `arrivedAt` (from `now()`, taken before `admit`): for a volume
   * with a latency target, records its latency as the caller saw it, QoS waits included (the
   * engine's own figures start after them), and announces a missed target once a second.
   */
  completed (volumeId: string, kind: Kind, arrivedAt: number): void {
    const state = this.#volumes.get(volumeId)
    const latencies = state?.latencies
    if (state === undefined || latencies === undefined) return
    latencies.end(kind, 0, arrivedAt)
    // Only an operation over the target can put the percentile over it, so the common case skips
    // merging the window.
    const now = this.#clock.now()
    if (now - arrivedAt <= state.latencyMs || now - state.lastLatencyEvent < INTERVAL_MS) return
    const p99 = latencies.snapshot().latencyP99Ms
    if (p99 > state.latencyMs) state.lastLatencyEvent = now
    if (p99 > state.latencyMs) this.#emit('qos:latency-missed', { volumeId: state.id, volumeName: state.name, latencyTargetMs: state.latencyMs, latencyP99Ms: p99 } satisfies QoSLatencyMissedEvent)
  }

  /** QoS figures of a volume (undefined when it has neither policy nor queued work). */
  metrics (volumeId: string): QoSMetrics {
    const state = this.#volumes.get(volumeId)
    if (state === undefined) return { source: 'none', throttledSeconds: 0, throttledOps: 0, throttledQueue: 0, dispatchQueue: 0 }
    const now = this.#clock.now()
    this.#evaluate(now)
    return volumeMetrics(state, now)
  }

  /** Lets every waiting operation go (the instance is closing; the engine refuses them). */
  close (): void {
    this.#closed = true
    if (this.#pumpTimer !== undefined) this.#clock.clearTimeout(this.#pumpTimer)
    this.#pumpTimer = undefined
    this.#pumpDue = Infinity
    this.#dispatching = false
    for (const id of [...this.#volumes.keys()]) this.forget(id)
  }

  // ---------------------------------------------------------------- limiter

  /**
   * Admits a volume's waiting reads and writes, each lane in order, while its buckets allow; sleeps
   * until they do. Each operation is charged at the time the buckets let it in, counted from its
   * arrival: when the timer fires late (a busy event loop), that time has passed, and the operations
   * the limits let in meanwhile all go now, charged as if the timer had been on time. The smoothing
   * depth so caps only idle time, and lateness costs the volume none of its rate. Between the lanes
   * the operation that arrived first goes first (turns when both arrived at once), except that a
   * lane's head held by its own lane's limit lets the other lane go meanwhile (see #nextLane): a
   * read never waits behind a write held by a write limit, and neither lane takes a shared limit
   * from the other, however large the operations of one and small those of the other.
   */
  #limit (state: VolumeState): void {
    const [reads, writes] = state.waiting
    let now = this.#clock.now()
    let readAt = Infinity
    let writeAt = Infinity
    let lane: 0 | 1 = 0
    let at = Infinity
    for (;;) {
      const read = reads[0]
      const write = writes[0]
      readAt = read === undefined ? Infinity : this.#closed ? now : limitReadyAt(state, 'read', read.bytes, read.arrived)
      writeAt = write === undefined ? Infinity : this.#closed ? now : limitReadyAt(state, 'write', write.bytes, write.arrived)
      lane = read === undefined ? 1 : write === undefined ? 0 : this.#nextLane(state, read, write, readAt, writeAt)
      at = lane === 0 ? readAt : writeAt
      if (at > now) break
      const op = state.waiting[lane].shift() as Pending
      state.turn = lane === 0 ? 1 : 0
      takeTokens(state, op.kind, op.bytes, at)
      state.throttledMs += now - op.arrived
      state.throttledOps++
      if (this.#closed || !this.#dispatching) {
        op.resolve(false)
      } else if (this.#backlog === 0 && this.#inFlight < this.#maxInFlight && this.#capacityReadyAt(op.bytes, now) <= now) {
        this.#start(op.bytes, state, now)
        op.resolve(true)
      } else {
        this.#enqueue(state, op.kind, op.bytes, now, op.resolve)
      }
      now = this.#clock.now()
    }
    // The lane that goes next may not be the one its limits let in first (see #nextLane).
    const next = at
    if (next === Infinity) { this.#clearLimitTimer(state); return }
    if (state.timer === undefined || state.due !== next) {
      this.#clearLimitTimer(state)
      state.due = next
      state.timer = this.#clock.setTimeout(() => { state.timer = undefined; state.due = Infinity; this.#limit(state) }, timerDelay(next - now))
    }
    if (now - state.lastThrottleEvent >= INTERVAL_MS) {
      state.lastThrottleEvent = now
      const op = state.waiting[lane][0] as Pending
      this.#emit('qos:throttled', { volumeId: state.id, volumeName: state.name, limit: tightestLimit(state, op, now), waitMs: next - now } satisfies QoSThrottledEvent)
    }
  }

  /**
   * Which head goes first, the read's (ready at `readAt`) or the write's: the one that arrived
   * first (the lanes take turns when both arrived at the same time), unless the other's limits
   * let it in earlier and the first is not waiting for a limit the two share. So a read goes past
   * a write held by a write limit, but not past one waiting for the volume's throughput limit:
   * a large operation needs the shared bucket full (its cost is above the depth), and small ones
   * of the other lane taking from it as it refills kept it waiting for ever.
   */
  #nextLane (state: VolumeState, read: Pending, write: Pending, readAt: number, writeAt: number): 0 | 1 {
    const first = read.arrived < write.arrived ? 0 : write.arrived < read.arrived ? 1 : state.turn
    const otherAt = first === 0 ? writeAt : readAt
    if ((first === 0 ? readAt : writeAt) <= otherAt || waitsForShared(state, first === 0 ? read : write, otherAt)) return first
    return first === 0 ? 1 : 0
  }

  /** Whether an operation of `kind` that the limits let in at `now` waits behind the other lane's head (see #nextLane). */
  #heldBehind (state: VolumeState, kind: Kind, now: number): boolean {
    const other = state.waiting[kind === 'read' ? 1 : 0][0]
    return other !== undefined && waitsForShared(state, other, now)
  }

  #clearLimitTimer (state: VolumeState): void {
    if (state.timer !== undefined) this.#clock.clearTimeout(state.timer)
    state.timer = undefined
    state.due = Infinity
  }

  // ---------------------------------------------------------------- dispatcher

  /**
   * State for a policy-less volume's operations queued at the dispatcher, dropped once they are
   * served (see #pump). Kept, it outlived a volume deleted while a read of it waited: deleteVolume's
   * `forget` had run before the read arrived, so nothing would ever remove it.
   */
  #anonymous (volumeId: string): VolumeState {
    const state = new VolumeState(volumeId, volumeId)
    state.transient = true
    this.#volumes.set(volumeId, state)
    return state
  }

  /** When the node's declared capacity lets an operation of `bytes` in, at the earliest `from` (see TokenBucket.readyAt). */
  #capacityReadyAt (bytes: number, from: number): number {
    let at = from
    for (const [bucket, unit] of this.#capacity) {
      const cost = unit === 'ops' ? 1 : bytes
      if (cost === 0) continue
      const ready = bucket.readyAt(cost, from)
      if (ready > at) at = ready
    }
    return at
  }

  /** Lets an operation into the engine, charging the capacity at `at` (when it let the operation in). */
  #start (bytes: number, state: VolumeState | undefined, at: number): void {
    this.#inFlight++
    for (const [bucket, unit] of this.#capacity) {
      const cost = unit === 'ops' ? 1 : bytes
      if (cost > 0) bucket.take(cost, at)
    }
    if (state !== undefined) { state.servedOps++; state.servedBytes += bytes }
  }

  #enqueue (state: VolumeState, kind: Kind, bytes: number, now: number, resolve: (held: boolean) => void): void {
    // mClock tags: the reservation tag spaces the volume's operations at its guaranteed rate (a
    // tag due now or earlier means the floor is behind; see RESERVATION_SLACK_MS); the proportional tag advances by 1/weight
    // from the fair-share clock, so idle volumes do not bank an advantage.
    const { rTag, rLast } = reservationTag(state, bytes, now, state.rLast)
    state.rLast = rLast
    const pTag = Math.max(state.pLast, this.#vtime) + 1 / state.weight
    state.pLast = pTag
    if (state.queued.length === 0) state.backloggedSince = now
    if (bytes > 0 && state.queuedWithBytes++ === 0) state.bytesBackloggedSince = now
    state.queued.push({ kind, bytes, arrived: now, resolve, rTag, pTag })
    this.#backlog++
    this.#pump()
  }


  #pump (): void {
    const now = this.#clock.now()
    this.#evaluate(now)
    if (this.#pumpDue <= now) {
      // The capacity timer fired late (or has yet to): from when it was due until now, the
      // capacity let the queue in, and it still does once slots in flight free up.
      this.#owedFrom = this.#pumpDue
      this.#owedUntil = now
      this.#clock.clearTimeout(this.#pumpTimer)
      this.#pumpTimer = undefined
      this.#pumpDue = Infinity
    }
    while (this.#backlog > 0 && this.#inFlight < this.#maxInFlight) {
      const state = pickNext(this.#volumes.values(), now)
      if (state === undefined) return
      const op = state.queued[0] as Pending
      let at = this.#owedFrom < this.#owedUntil ? this.#capacityReadyAt(op.bytes, Math.max(this.#owedFrom, op.arrived)) : Infinity
      if (at <= this.#owedUntil) {
        this.#owedFrom = at
      } else {
        // Nothing (more) owed: what the capacity earned since, while the queue waited for slots
        // or was empty, is idle time, capped at the depth.
        this.#owedFrom = this.#owedUntil = -Infinity
        at = this.#capacityReadyAt(op.bytes, now)
      }
      if (at > now) {
        if (this.#pumpTimer === undefined) {
          this.#pumpDue = at
          this.#pumpTimer = this.#clock.setTimeout(() => { this.#pumpTimer = undefined; this.#pump() }, timerDelay(at - now))
        }
        return
      }
      state.queued.shift()
      this.#backlog--
      if (op.bytes > 0 && --state.queuedWithBytes === 0) state.bytesBackloggedSince = undefined
      if (state.queued.length === 0) {
        state.backloggedSince = undefined
        // Nothing is lost: without a reservation or latency target its last operation went in
        // fair-share order, so the fair-share clock has reached its tag (a new state starts there).
        if (state.transient && this.#volumes.get(state.id) === state) this.#volumes.delete(state.id)
      }
      if (op.rTag <= now) {
        // Served from its reservation: mClock does not charge that to the volume's fair share, so
        // its later operations' proportional tags move back by what this one added, and the
        // fair-share clock stays where fair share put it.
        for (const later of state.queued) later.pTag -= 1 / state.weight
        state.pLast -= 1 / state.weight
      } else if (op.pTag > this.#vtime) {
        this.#vtime = op.pTag
      }
      this.#start(op.bytes, state, at)
      op.resolve(true)
    }
  }

  /** Closes finished one-second intervals (see closeInterval). */
  #evaluate (now: number): void {
    const elapsed = now - this.#intervalStart
    if (elapsed < INTERVAL_MS) return
    closeInterval(this.#volumes.values(), elapsed, this.#intervalStart, this.#emit)
    this.#intervalStart = now
  }
}

/** Smallest weight the dispatcher uses (the reciprocal of the largest a policy takes); a policy's smaller weight counts as this. */
const MIN_WEIGHT = 1e-4

/** Longest delay setTimeout takes: Node runs a longer one after 1 ms (and warns). */
const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * The timer delay for a wait of `ms`: at least 1 ms, and at most MAX_TIMER_MS, since a tiny limit
 * (1e-7 IOPS) means waits of years that would otherwise fire every millisecond. A capped timer
 * only wakes the caller early, which computes the wait again and sleeps on.
 */
function timerDelay (ms: number): number {
  return Math.min(MAX_TIMER_MS, Math.max(1, Math.ceil(ms)))
}

function invalid (message: string): GalleonError {
  return new GalleonError('INVALID_ARGUMENT', message)
}
