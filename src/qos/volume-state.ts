// The QoS scheduler's record of one volume (its limiter buckets and waiting operations, dispatcher
// tags, served and latency figures) and the limiter's token arithmetic over that record.

import type { MetricsRecorder } from '../metrics/recorder.js'
import { TokenBucket } from './bucket.js'
import type { QoSPolicy, QoSPolicySource } from './policy.js'

/** Which lane an operation takes. */
export type Kind = 'read' | 'write'
type Dimension = 'iops' | 'readIops' | 'writeIops' | 'bytes' | 'readBytes' | 'writeBytes'
const DIMENSIONS: ReadonlyArray<[Dimension, 'ops' | 'bytes', Kind | undefined, string]> = [
  ['iops', 'ops', undefined, 'limits.iops'],
  ['readIops', 'ops', 'read', 'limits.read_iops'],
  ['writeIops', 'ops', 'write', 'limits.write_iops'],
  ['bytes', 'bytes', undefined, 'limits.throughput_mbps'],
  ['readBytes', 'bytes', 'read', 'limits.read_throughput_mbps'],
  ['writeBytes', 'bytes', 'write', 'limits.write_throughput_mbps']
]

interface LaneBucket { readonly bucket: TokenBucket, readonly bytes: boolean }

/** An operation waiting for its volume's limits or for the dispatcher. */
export interface Pending {
  readonly kind: Kind
  readonly bytes: number
  readonly arrived: number
  resolve: (held: boolean) => void
  rTag: number
  pTag: number
}

/** What the scheduler keeps per volume: the limiter's side first, then the dispatcher's. */
export class VolumeState {
  readonly id: string
  name: string
  policy: QoSPolicy | undefined
  source: QoSPolicySource = 'none'
  buckets: Array<[TokenBucket, 'ops' | 'bytes', Kind | undefined, string]> = []
  /** Per lane (reads, writes): the buckets that apply and whether each counts bytes (else operations); the hot path's view. */
  lanes: [read: LaneBucket[], write: LaneBucket[]] = [[], []]
  /** The buckets of limits both lanes share (`iops`, `throughput_mbps`), and each lane's own. */
  shared: LaneBucket[] = []
  own: [read: LaneBucket[], write: LaneBucket[]] = [[], []]
  limited = false
  /** Operations waiting for the limits, reads and writes apart: a read never queues behind a write held by a write limit. */
  readonly waiting: [read: Pending[], write: Pending[]] = [[], []]
  /** The limiter's timer, one for both lanes: due when the first operation of either may go. */
  timer: unknown = undefined
  /** When `timer` is due (Infinity: none). */
  due = Infinity
  /**
   * The lane that counts as first when the first read and the first write arrived at the same
   * time: the lanes take turns. Given to the lane whose timer fired first, a shared limit went to
   * one lane only (equal delays fire in the order they were set).
   */
  turn: 0 | 1 = 0
  throttledMs = 0
  throttledOps = 0
  lastThrottleEvent = -Infinity
  // dispatcher
  readonly queued: Pending[] = []
  reservationIops = 0
  reservationBps = 0
  weight = 1
  latencyMs = 0
  rLast = -Infinity
  pLast = 0
  backloggedSince: number | undefined
  /**
   * Queued operations that move bytes, and since when one has been queued: a throughput floor is
   * judged on these alone (trims queued all second wanted no bytes, so got none short of a floor).
   */
  queuedWithBytes = 0
  bytesBackloggedSince: number | undefined
  servedOps = 0
  servedBytes = 0
  achievedIops = 0
  achievedBps = 0
  met = true
  missedSeconds = 0
  /** Latencies from arrival to completion, kept while the policy has a latency target. */
  latencies: MetricsRecorder | undefined
  lastLatencyEvent = -Infinity
  /**
   * Made by the dispatcher for operations of a volume without a policy: dropped once they are
   * served, so a volume deleted meanwhile (or one that never has a policy) leaves nothing behind.
   */
  transient = false

  constructor (id: string, name: string) {
    this.id = id
    this.name = name
  }
}

/** Builds the volume's buckets and lanes for `policy`'s limits at `now`, carrying over the level of a limit the old policy had too. */
export function applyLimits (state: VolumeState, policy: QoSPolicy | undefined, now: number): void {
  const burst = policy?.burstable?.enabled === true ? policy.burstable : undefined
  const values = rates(policy)
  const previous = new Map(state.buckets.map(([bucket, , , label]) => [label, bucket]))
  state.buckets = []
  for (const [dimension, unit, kind, label] of DIMENSIONS) {
    const rate = values[dimension]
    if (rate === undefined) continue
    const multiplier = burst === undefined ? 1 : unit === 'ops' ? burst.iopsMultiplier : burst.throughputMultiplier
    const bucket = new TokenBucket(rate, now, multiplier > 1 ? { multiplier, durationSeconds: (burst as { durationSeconds: number }).durationSeconds } : undefined)
    // A limit the old policy had too keeps its level (a change is not a refill); a new one starts full.
    const before = previous.get(label)
    if (before !== undefined) bucket.carryFrom(before, now)
    state.buckets.push([bucket, unit, kind, label])
  }
  state.limited = state.buckets.length > 0
  const entries = (only: (kind: Kind | undefined) => boolean): LaneBucket[] => state.buckets.filter(([, , kind]) => only(kind)).map(([bucket, unit]) => ({ bucket, bytes: unit === 'bytes' }))
  state.lanes = [entries((kind) => kind !== 'write'), entries((kind) => kind !== 'read')]
  state.shared = entries((kind) => kind === undefined)
  state.own = [entries((kind) => kind === 'read'), entries((kind) => kind === 'write')]
}

/** The rate of each of `policy`'s limits, per second (bytes for throughput). */
function rates (policy: QoSPolicy | undefined): Record<Dimension, number | undefined> {
  const limits = policy?.limits
  return {
    iops: limits?.iops,
    readIops: limits?.readIops,
    writeIops: limits?.writeIops,
    bytes: limits?.throughputMBps === undefined ? undefined : limits.throughputMBps * 1e6,
    readBytes: limits?.readThroughputMBps === undefined ? undefined : limits.readThroughputMBps * 1e6,
    writeBytes: limits?.writeThroughputMBps === undefined ? undefined : limits.writeThroughputMBps * 1e6
  }
}

/** A limit's burst as rate multipliers: the peak, and the credit balance in seconds of rate. */
function burstOf (policy: QoSPolicy | undefined, unit: 'ops' | 'bytes'): { peak: number, creditSeconds: number } {
  const burst = policy?.burstable
  const multiplier = burst?.enabled !== true ? 1 : unit === 'ops' ? burst.iopsMultiplier : burst.throughputMultiplier
  return multiplier > 1 ? { peak: multiplier, creditSeconds: (multiplier - 1) * (burst as { durationSeconds: number }).durationSeconds } : { peak: 1, creditSeconds: 0 }
}

/**
 * Whether `next` lets less through than `previous` anywhere: a limit added or lowered, or a lower
 * burst peak or credit balance. (Operations a late timer owes go in under the old limits only
 * when the new ones do not tighten them: see QoSScheduler.setPolicy.)
 */
export function tightens (previous: QoSPolicy | undefined, next: QoSPolicy | undefined): boolean {
  const before = rates(previous)
  const after = rates(next)
  for (const [dimension, unit] of DIMENSIONS) {
    const rate = after[dimension]
    if (rate === undefined) continue
    const old = before[dimension]
    if (old === undefined || rate < old) return true
    const burst = burstOf(next, unit)
    const oldBurst = burstOf(previous, unit)
    if (rate * burst.peak < old * oldBurst.peak || rate * burst.creditSeconds < old * oldBurst.creditSeconds) return true
  }
  return false
}

// Plain indexed loops over the lane's buckets: these run on every I/O call of a limited volume.
/**
 * When the volume's limits let an operation in, at the earliest `from` (see TokenBucket.readyAt):
 * asked with the time the operation started waiting, the answer can be before now, which is
 * when the limits let it in although the timer that was to admit it ran late.
 */
export function limitReadyAt (state: VolumeState, kind: Kind, bytes: number, from: number): number {
  return readyOn(state.lanes[kind === 'read' ? 0 : 1], bytes, from)
}

/**
 * Whether `op` (the head of its lane) waits past `at` for a limit both lanes share, while its own
 * lane's limits let it in by then: an operation of the other lane that would go at `at` then
 * waits behind it, or (by taking from the shared limit first, again and again) it could keep
 * `op` waiting for ever. Held by its own lane's limit instead, `op` holds nothing of the other lane.
 */
export function waitsForShared (state: VolumeState, op: Pending, at: number): boolean {
  if (state.shared.length === 0) return false
  return readyOn(state.shared, op.bytes, op.arrived) > at && readyOn(state.own[op.kind === 'read' ? 0 : 1], op.bytes, op.arrived) <= at
}

function readyOn (lane: LaneBucket[], bytes: number, from: number): number {
  let at = from
  for (let i = 0; i < lane.length; i++) {
    const entry = lane[i] as LaneBucket
    const cost = entry.bytes ? bytes : 1
    if (cost === 0) continue
    const ready = entry.bucket.readyAt(cost, from)
    if (ready > at) at = ready
  }
  return at
}

/** Milliseconds until the volume's limits let an operation in now (0: now); the hot path's question, asked when nothing of the volume is overdue. */
export function limitWait (state: VolumeState, kind: Kind, bytes: number, now: number): number {
  const lane = state.lanes[kind === 'read' ? 0 : 1]
  let wait = 0
  for (let i = 0; i < lane.length; i++) {
    const entry = lane[i] as LaneBucket
    const cost = entry.bytes ? bytes : 1
    if (cost === 0) continue
    const ms = entry.bucket.waitMs(cost, now)
    if (ms > wait) wait = ms
  }
  return wait
}

/**
 * Charges an admitted operation to the buckets of its lane, at the time `limitReadyAt` gave (none:
 * where `limitWait` left the buckets).
 */
export function takeTokens (state: VolumeState, kind: Kind, bytes: number, at?: number): void {
  const lane = state.lanes[kind === 'read' ? 0 : 1]
  for (let i = 0; i < lane.length; i++) {
    const entry = lane[i] as LaneBucket
    const cost = entry.bytes ? bytes : 1
    if (cost > 0) entry.bucket.take(cost, at)
  }
}

/** The label of the limit that holds `op` longest (what `qos:throttled` names). */
export function tightestLimit (state: VolumeState, op: Pending, now: number): string {
  let worst = ''
  let latest = -Infinity
  for (const [bucket, unit, only, label] of state.buckets) {
    if (only !== undefined && only !== op.kind) continue
    // Charged as limitReadyAt charges: an operation of no bytes (a trim) never waits for a byte limit.
    const cost = unit === 'ops' ? 1 : op.bytes
    if (cost === 0) continue
    const ready = bucket.readyAt(cost, now)
    if (ready > latest) { latest = ready; worst = label }
  }
  return worst
}
