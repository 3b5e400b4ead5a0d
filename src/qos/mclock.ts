// The dispatcher's mClock order: reservation and proportional tags, which volume's queued operation
// goes next, and the one-second intervals that tell whether each guarantee was met.

import type { QoSGuaranteeMissedEvent } from './metrics.js'
import type { Pending, VolumeState } from './volume-state.js'

/** One interval over which guarantees are judged, and the least time between two of a volume's throttled or latency events. */
export const INTERVAL_MS = 1000
/**
 * How far ahead of fair-share order a latency target may put a volume, in its own operations: an
 * operation at risk of its target goes first only while its fair-share tag is at most this many
 * of the volume's operations (1/weight each) past the tag fair share would serve next. A light
 * volume's operations so keep their target against any weight, while a volume that keeps its
 * queue full cannot take more than about its weighted share by having a target.
 */
const LATENCY_LEAD_OPS = 2
/**
 * How far back a reservation tag may start: a guaranteed volume whose operations were delayed
 * (timer and event-loop jitter, its own think time) catches up on up to this much of its floor
 * instead of losing it; an idle volume banks no more than this.
 */
export const RESERVATION_SLACK_MS = 250

/**
 * Milliseconds between reservation tags of operations of `bytes` under the given floors; Infinity
 * for an operation the floors owe nothing: one that moves no bytes (a trim) under a throughput
 * floor alone. Spaced 0 ms apart, every such operation was due at once, and a volume with a floor
 * of 1 MB/s took the whole node with trims.
 */
export function reservationSpacing (iops: number, bytesPerSecond: number, bytes: number): number {
  if (iops <= 0 && bytes === 0) return Infinity
  return Math.max(iops > 0 ? 1000 / iops : 0, bytesPerSecond > 0 ? bytes / bytesPerSecond * 1000 : 0)
}

/**
 * The reservation tag of an operation arriving at `now` after the volume's last tag `rLast`
 * (Infinity: not served from the reservation), and the volume's last tag afterwards.
 */
export function reservationTag (state: VolumeState, bytes: number, now: number, rLast: number): { rTag: number, rLast: number } {
  if (state.reservationIops <= 0 && state.reservationBps <= 0) return { rTag: Infinity, rLast }
  const spacing = reservationSpacing(state.reservationIops, state.reservationBps, bytes)
  if (spacing === Infinity) return { rTag: Infinity, rLast }
  const rTag = Math.max(rLast + spacing, now - RESERVATION_SLACK_MS)
  return { rTag, rLast: rTag }
}

/**
 * Tags the volume's queued operations again after its guarantee or weight changed: a policy
 * applies to operations already waiting too (a removed floor must not keep them first). `vtime`: the fair-share clock.
 */
export function retag (state: VolumeState, before: { reservationIops: number, reservationBps: number, weight: number }, vtime: number): void {
  const first = state.queued[0]
  if (first === undefined) return
  // Both tag sequences restart where the first waiting operation's started, stepping by the new policy.
  state.rLast = first.rTag === Infinity ? -Infinity : first.rTag - reservationSpacing(before.reservationIops, before.reservationBps, first.bytes)
  let pTag = Math.max(first.pTag - 1 / before.weight, vtime)
  for (const op of state.queued) {
    const tagged = reservationTag(state, op.bytes, op.arrived, state.rLast)
    state.rLast = tagged.rLast
    op.rTag = tagged.rTag
    pTag += 1 / state.weight
    op.pTag = pTag
  }
  state.pLast = pTag
}

/** Whose head operation goes next: a due reservation, then a latency target at risk (within LATENCY_LEAD_OPS of fair share), then fair share. */
export function pickNext (volumes: Iterable<VolumeState>, now: number): VolumeState | undefined {
  let due: VolumeState | undefined
  let urgent: VolumeState | undefined
  let fair: VolumeState | undefined
  for (const state of volumes) {
    const head = state.queued[0]
    if (head === undefined) continue
    if (head.rTag <= now && (due === undefined || head.rTag < (due.queued[0] as Pending).rTag)) due = state
    if (state.latencyMs > 0 && now - head.arrived >= state.latencyMs / 2 && (urgent === undefined || head.arrived < (urgent.queued[0] as Pending).arrived)) urgent = state
    if (fair === undefined || head.pTag < (fair.queued[0] as Pending).pTag) fair = state
  }
  // Urgency reorders within a bounded lead over fair share instead of being strict priority,
  // which let one busy volume with a target take the whole node whatever the others' weights.
  if (urgent !== undefined && fair !== undefined && (urgent.queued[0] as Pending).pTag - (fair.queued[0] as Pending).pTag > LATENCY_LEAD_OPS / urgent.weight) urgent = undefined
  return due ?? urgent ?? fair
}

/** Closes a finished interval (`elapsed` ms from `intervalStart`): what each guaranteed volume got, and whether that met its floor. */
export function closeInterval (volumes: Iterable<VolumeState>, elapsed: number, intervalStart: number, emit: (event: string, payload: unknown) => void): void {
  for (const state of volumes) {
    state.achievedIops = state.servedOps * 1000 / elapsed
    state.achievedBps = state.servedBytes * 1000 / elapsed
    state.servedOps = 0
    state.servedBytes = 0
    if (state.reservationIops === 0 && state.reservationBps === 0) continue
    // Only a volume that wanted more all along can have been denied its floor: operations of any
    // kind for an IOPS floor, operations that move bytes for a throughput floor.
    const shortOps = state.reservationIops > 0 && queuedSince(state.backloggedSince, intervalStart) && state.achievedIops < state.reservationIops * 0.95
    const shortBytes = state.reservationBps > 0 && queuedSince(state.bytesBackloggedSince, intervalStart) && state.achievedBps < state.reservationBps * 0.95
    state.met = !(shortOps || shortBytes)
    if (!state.met) {
      state.missedSeconds += elapsed / 1000
      emit('qos:guarantee-missed', {
        volumeId: state.id,
        volumeName: state.name,
        ...(state.reservationIops > 0 ? { guaranteedIops: state.reservationIops } : {}),
        ...(state.reservationBps > 0 ? { guaranteedThroughputMBps: state.reservationBps / 1e6 } : {}),
        achievedIops: state.achievedIops,
        achievedThroughputMBps: state.achievedBps / 1e6
      } satisfies QoSGuaranteeMissedEvent)
    }
  }
}

/** Whether work has been queued since `since` (undefined: none is) from `intervalStart` on. */
function queuedSince (since: number | undefined, intervalStart: number): boolean {
  return since !== undefined && since <= intervalStart
}
