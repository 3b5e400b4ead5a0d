// What the QoS stage reports: a volume's figures (QoSMetrics, as read from its state) and the
// payloads of the events it emits.

import type { QoSPolicy, QoSPolicySource } from './policy.js'
import type { VolumeState } from './volume-state.js'

/** QoS figures of one volume, part of `getVolumeMetrics()`. */
export interface QoSMetrics {
  /** The policy in force and where it comes from. */
  readonly policy?: QoSPolicy
  readonly source: QoSPolicySource
  /** Seconds operations spent waiting for the volume's own limits, over the lifetime. */
  readonly throttledSeconds: number
  /** Operations that had to wait for the volume's own limits, over the lifetime. */
  readonly throttledOps: number
  /** Operations waiting for the volume's limits right now. */
  readonly throttledQueue: number
  /** Operations waiting for the node's dispatcher right now. */
  readonly dispatchQueue: number
  /** Burst credits held now: operations (IOPS limit) and MB (throughput limit); absent without bursting. */
  readonly burstCredits?: { readonly iops?: number, readonly throughputMB?: number }
  /** Most credits the balance can hold. */
  readonly burstCreditCapacity?: { readonly iops?: number, readonly throughputMB?: number }
  /**
   * The floor, what the volume was served over the last interval the dispatcher judged, and
   * whether that met the floor: `met` is false only when the volume had operations queued at the
   * dispatcher all that interval and was served less than its floor. An interval is a second while
   * operations queue at the dispatcher; while none do, it runs until metrics are next read (the
   * figures are then an average since the previous reading, not the last second's).
   */
  readonly guarantee?: { readonly iops?: number, readonly throughputMBps?: number, readonly achievedIops: number, readonly achievedThroughputMBps: number, readonly met: boolean, readonly missedSeconds: number }
  /** The latency target (`limits.latencyMs`), when the policy has one. */
  readonly latencyTargetMs?: number
  /**
   * 99th-percentile latency over the metrics window as the caller sees it, from the call's arrival
   * at the QoS stage to its completion (waiting for limits and the dispatcher included), in ms;
   * present with a latency target.
   */
  readonly latencyP99Ms?: number
  /** Whether `latencyP99Ms` is within the target; present with a latency target. */
  readonly latencyTargetMet?: boolean
}

/** Payload of `qos:throttled` (at most one per volume per second). */
export interface QoSThrottledEvent { volumeId: string, volumeName: string, limit: string, waitMs: number }
/**
 * Payload of `qos:latency-missed` (at most one per volume per second): the window's 99th
 * percentile, from arrival at the QoS stage to completion, is above the volume's target.
 */
export interface QoSLatencyMissedEvent { volumeId: string, volumeName: string, latencyTargetMs: number, latencyP99Ms: number }
/** Payload of `qos:guarantee-missed`. */
export interface QoSGuaranteeMissedEvent { volumeId: string, volumeName: string, guaranteedIops?: number, guaranteedThroughputMBps?: number, achievedIops: number, achievedThroughputMBps: number }

/** The QoS figures of a volume the scheduler tracks, at `now` (its guarantee figures as of the last closed interval). */
export function volumeMetrics (state: VolumeState, now: number): QoSMetrics {
  const credits: { iops?: number, throughputMB?: number } = {}
  const capacity: { iops?: number, throughputMB?: number } = {}
  for (const [bucket, unit, kind] of state.buckets) {
    if (bucket.creditCapacity === 0 || kind !== undefined) continue
    if (unit === 'ops') { credits.iops = bucket.credits(now); capacity.iops = bucket.creditCapacity } else { credits.throughputMB = bucket.credits(now) / 1e6; capacity.throughputMB = bucket.creditCapacity / 1e6 }
  }
  const guarantees = state.policy?.guarantees
  const p99 = state.latencies?.snapshot().latencyP99Ms
  return {
    ...(state.policy === undefined ? {} : { policy: state.policy }),
    source: state.source,
    throttledSeconds: state.throttledMs / 1000,
    throttledOps: state.throttledOps,
    throttledQueue: state.waiting[0].length + state.waiting[1].length,
    dispatchQueue: state.queued.length,
    ...(Object.keys(credits).length > 0 ? { burstCredits: credits, burstCreditCapacity: capacity } : {}),
    ...(guarantees === undefined
      ? {}
      : { guarantee: { ...guarantees, achievedIops: state.achievedIops, achievedThroughputMBps: state.achievedBps / 1e6, met: state.met, missedSeconds: state.missedSeconds } }),
    ...(p99 === undefined ? {} : { latencyTargetMs: state.latencyMs, latencyP99Ms: p99, latencyTargetMet: p99 <= state.latencyMs })
  }
}
