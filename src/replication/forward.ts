// Forwarding: any node holding a copy of a volume serves its I/O (and control calls) by sending
// them to the primary, waiting through a failover, and saying when a failed call may have run.

import { setTimeout as sleep } from 'node:timers/promises'
import { GalleonError } from '../errors.js'
import type { TransportMessage } from '../drivers.js'
import { isNotSent } from '../abstract-transport.js'
import { refusedBeforeRunning } from '../cluster/manager.js'
import { errorText, markOutcomeUnknown, type ManagerCore } from './common.js'
import type { ForwardedRequest } from './host.js'
import { ioRefusedBeforeRunning } from './replica.js'

/** Forwarded calls that change a volume other than by I/O: one whose answer was lost is sent again marked `repeat` (see forward). */
const CONTROL_OPS = new Set<ForwardedRequest['op']>(['createSnapshot', 'deleteSnapshot', 'deleteVolume', 'restoreSnapshot', 'expandVolume', 'rotateVolumeKey'])
/** Those of them that done twice differ from done once: sent again only with a token. */
const ONCE_OPS = new Set<ForwardedRequest['op']>(['createSnapshot', 'deleteSnapshot', 'deleteVolume', 'restoreSnapshot'])
/**
 * How long one attempt of a forwarded call may take on the primary (within the call's failover
 * wait, which ends it first when shorter): it runs there as the primary's own, which may wait for
 * QoS admission and for its copies (COMMIT_WAIT_MS, 60 s), so a shorter limit cut off calls the
 * primary was still working on, and sent them again.
 */
const FORWARD_ANSWER_MS = 75_000

/** Forwarded calls that change the volume: one that failed after an attempt reached a primary unanswered may have taken effect. */
const CHANGING_OPS = new Set<ForwardedRequest['op']>([...CONTROL_OPS, 'write', 'writeBlock', 'trim'])

/**
 * Sends a call to the volume's primary on behalf of this node (see ReplicationManager.forward).
 * The failover wait bounds the whole call: an attempt still under way when it ends (a primary that
 * does not answer, or a connection cut off without a reset) is given up on then, and the caller
 * told whether the call may have taken effect.
 */
export async function forwardToPrimary (core: ManagerCore, volumeId: string, request: ForwardedRequest, payload?: Uint8Array): Promise<TransportMessage> {
  const callEnds = new AbortController()
  const timer = setTimeout(() => { callEnds.abort() }, core.failoverWaitMs)
  try {
    return await attempts(core, volumeId, request, payload, performance.now() + core.failoverWaitMs, callEnds.signal)
  } finally {
    clearTimeout(timer)
  }
}

async function attempts (core: ManagerCore, volumeId: string, request: ForwardedRequest, payload: Uint8Array | undefined, deadline: number, callEnds: AbortSignal): Promise<TransportMessage> {
  let lastError: unknown
  // Such a call without a token (made by a caller that does not give one) is not sent again once
  // it may have reached the primary: it could happen twice.
  const control = CONTROL_OPS.has(request.op)
  const repeatable = !ONCE_OPS.has(request.op) || typeof request.token === 'string'
  /** The primary an earlier attempt reached that did not answer it: the call may have taken effect there. */
  let unanswered: string | undefined
  const failed = (err: unknown): unknown => unanswered === undefined || !CHANGING_OPS.has(request.op) ? err : markOutcomeUnknown(err, unanswered)
  for (let attempt = 0; ; attempt++) {
    const set = core.sets.get(volumeId)
    if (set === undefined) throw failed(new GalleonError('VOLUME_NOT_FOUND', `volume ${volumeId} is no longer replicated here`))
    if (set.record === undefined && set.unrecorded) {
      // A copy the cluster has no record of (see LocalSet.unrecorded): no primary will come
      // unless the record does, which a fresh read would show.
      await core.refresh(set)
      if (set.record === undefined) throw failed(new GalleonError('BACKEND_UNAVAILABLE', `the cluster has no record of replicated volume ${volumeId}, so it has no primary, and the copy on node ${core.nodeId} serves no I/O (a coordinator that lost the record, or a volume deleted while this node was away without its deletion mark); if the volume is gone, deleteVolume(${JSON.stringify(volumeId)}, { force: true }) on this node deletes the copy`))
    }
    const primary = set.record?.primary
    if (set.primary !== undefined && !set.primary.frozen && !set.fenced) throw failed(new GalleonError('NOT_LEADER', 'this node became the primary meanwhile; call again'))
    if (primary !== undefined && primary !== core.nodeId) {
      // One answer may take FORWARD_ANSWER_MS, longer than the failover deadline: a repeatable
      // call stops waiting for a primary the record no longer names and goes to the new one.
      const failedOver = new AbortController()
      const watch = repeatable ? () => { const now = set.record?.primary; if (now !== undefined && now !== primary) failedOver.abort() } : undefined
      if (watch !== undefined) set.primaryWatchers.add(watch)
      try {
        const header = { volumeId, ...request, ...(unanswered !== undefined && control ? { repeat: true } : {}) }
        return await core.cluster.request(primary, { kind: 'repl:io', header, ...(payload === undefined ? {} : { payload }) }, { timeoutMs: FORWARD_ANSWER_MS, signal: AbortSignal.any([failedOver.signal, callEnds]) })
      } catch (err) {
        const code = (err as { code?: string })?.code
        // Refused before it ran (the primary is starting, has not taken the role up yet, or was
        // not reached), or never sent (this node's transport says so: nothing listened there, the
        // connection could not be made, or the attempt was given up on still queued): this
        // attempt did nothing there, so it neither makes the next one a repeat nor the call's
        // error "may have taken effect".
        const notRun = isNotSent(err) || refusedBeforeRunning(err, primary, 'repl:io') || ioRefusedBeforeRunning(err, primary, volumeId)
        if (callEnds.aborted) {
          // The failover wait is over with this attempt under way: whatever its answer, it comes
          // too late. One that was never sent says what the attempts before it found.
          if (notRun) throw failed(noPrimary(volumeId, primary, lastError ?? err))
          unanswered = primary
          throw failed(new GalleonError('BACKEND_UNAVAILABLE', `volume ${volumeId}: its primary ${primary} did not answer within the failover wait (${core.failoverWaitMs} ms): ${errorText(err)}; retry once the cluster has failed over, or give the call longer (the cluster option failoverWaitMs)`))
        }
        if (failedOver.signal.aborted && !core.closed) {
          lastError = err
          if (!notRun) unanswered = primary
          continue // the new primary is tried, within the failover wait
        }
        if (code !== 'NOT_LEADER' && (code !== 'BACKEND_UNAVAILABLE' || !repeatable)) throw failed(err)
        lastError = err
        // A NOT_LEADER too: a primary that lost the role (or closed) under the call says so after it took effect.
        if (!notRun) unanswered = primary
      } finally {
        if (watch !== undefined) set.primaryWatchers.delete(watch)
      }
    }
    if (performance.now() >= deadline || core.closed) {
      throw failed(noPrimary(volumeId, primary, lastError))
    }
    await sleep(Math.max(0, Math.min(100 * (attempt + 1), 500, deadline - performance.now())))
    await core.refresh(set)
  }
}

/** The error of a forwarded call whose failover wait ended without a primary that took it (`primary`: the last one known). */
function noPrimary (volumeId: string, primary: string | undefined, lastError: unknown): GalleonError {
  return new GalleonError('BACKEND_UNAVAILABLE', `volume ${volumeId} has no reachable primary (last known: ${primary ?? 'none'}): ${lastError === undefined ? 'no record' : errorText(lastError)}; retry once the cluster has failed over`)
}
