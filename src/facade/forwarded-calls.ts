// Control calls on a replicated volume made on a node that is not its primary (createSnapshot,
// deleteSnapshot, deleteVolume, restoreSnapshot, expandVolume, rotateVolumeKey) go to the primary
// with a token: when the answer is lost (the primary closed or lost the role, the connection
// dropped), the call is sent again, to the same primary or the next, which knows it by its token
// and answers with what the first attempt did, so the call happens once. Such a call made on the
// primary itself has a token too, and goes on the same way at the next primary when this node
// loses the role under it (see hereOrNext).

import { randomUUID } from 'node:crypto'
import { GalleonError, errorCode } from '../errors.js'
import { outcomeUnknown } from '../replication/common.js'
import type { ForwardedRequest } from '../replication/manager.js'
import type { FacadeHost } from './host.js'
import type { VolumeRef } from './refs.js'
import type { WriterId } from '../engine/replicator.js'

/** One forwarded control call as the node serving it sees it. */
export interface ForwardedCall {
  /** Names the call, the same in every attempt of it (see ForwardedRequest.token). */
  readonly token: string
  /** An earlier attempt may have taken effect (see ForwardedRequest.repeat). */
  readonly repeat: boolean
}

/** Tokens of the last calls of each kind a record keeps (see keptTokens, VolumeRecord.revertTokens). */
export const CALL_TOKENS_KEPT = 32

/**
 * Starts the token of a call made on the primary itself. Such a call needs its token only if the
 * role moves under it (it then goes on at the next primary); records keep these tokens apart from
 * forwarded calls' (see keptTokens), so that the primary's own callers (a script reverting or
 * rotating in a loop, each call waited for) never push out the token of a forwarded call whose
 * node may still send it again.
 */
export const PRIMARY_TOKEN_PREFIX = 'primary:'

/** Where a served call rides on the volume reference it passes through the public API (a caller cannot name it). */
const CALL = Symbol('forwarded call')

/** A call made on this node: a new token. */
export function newCall (): ForwardedCall {
  return { token: randomUUID(), repeat: false }
}

/** A call made on a replicated volume's primary (this node): a new token of that kind (see PRIMARY_TOKEN_PREFIX). */
export function primaryCall (): ForwardedCall {
  return { token: `${PRIMARY_TOKEN_PREFIX}${randomUUID()}`, repeat: false }
}

/** The call a forwarded request is an attempt of (undefined: a caller of an earlier version, which sent no token). */
export function callOf (request: ForwardedRequest): ForwardedCall | undefined {
  return typeof request.token === 'string' ? { token: request.token, repeat: request.repeat === true } : undefined
}

/**
 * The volume reference a served call passes to the public method that runs it (so that it is
 * checked and audited as any call): the volume's id, with the call attached for the facade's part
 * that does the work (see callIn).
 */
export function callRef (volumeId: string, call: ForwardedCall | undefined): VolumeRef {
  return call === undefined ? volumeId : { id: volumeId, [CALL]: call } as unknown as VolumeRef
}

/** The forwarded call a volume reference carries (see callRef), if any. */
export function callIn (vol: VolumeRef): ForwardedCall | undefined {
  return typeof vol === 'object' && vol !== null ? (vol as { [CALL]?: ForwardedCall })[CALL] : undefined
}

/** Where a served forwarded write's identity rides on the volume reference (see writerRef). */
const WRITER = Symbol('forwarded writer')

/**
 * The volume reference a served forwarded write (or trim) passes to the public method that runs it:
 * the volume's id, with the write's identity for the engine to record with the change (see WriterId).
 */
export function writerRef (volumeId: string, writer: WriterId | undefined): VolumeRef {
  return writer === undefined ? volumeId : { id: volumeId, [WRITER]: writer } as unknown as VolumeRef
}

/** The forwarded write's identity a volume reference carries (see writerRef), if any. */
export function writerIn (vol: VolumeRef): WriterId | undefined {
  return typeof vol === 'object' && vol !== null ? (vol as { [WRITER]?: WriterId })[WRITER] : undefined
}

/** `tokens` with `token` added last, the newest CALL_TOKENS_KEPT of each kind kept (see keptTokens). */
export function withToken (tokens: readonly string[] | undefined, token: string): string[] {
  return keptTokens([...(tokens ?? []).filter((t) => t !== token), token])
}

/**
 * The tokens of `tokens` (oldest first) a record keeps: the newest CALL_TOKENS_KEPT of calls made
 * on the primary itself and the newest CALL_TOKENS_KEPT of forwarded calls, in their order.
 */
export function keptTokens (tokens: readonly string[]): string[] {
  const primary = tokens.filter((t) => t.startsWith(PRIMARY_TOKEN_PREFIX)).slice(-CALL_TOKENS_KEPT)
  const forwarded = tokens.filter((t) => !t.startsWith(PRIMARY_TOKEN_PREFIX)).slice(-CALL_TOKENS_KEPT)
  const kept = new Set([...primary, ...forwarded])
  return tokens.filter((t) => kept.has(t))
}

/**
 * The error of a forwarded call whose earlier attempt may have taken effect (see outcomeUnknown;
 * or `call` is a repeat, and no primary could be reached to answer it), saying first what is known
 * of it (`known`, e.g. where to look); any other error as it is.
 */
export function lostAnswer (err: unknown, known: string, call?: ForwardedCall): unknown {
  if (outcomeUnknown(err) === undefined && !(call?.repeat === true && errorCode(err) === 'BACKEND_UNAVAILABLE')) return err
  return new GalleonError(errorCode(err), `${known}: ${(err as Error)?.message ?? String(err)}`, { cause: err })
}

/**
 * Runs a control call made on a replicated volume's primary (this node) here (`here`), as one
 * call: when it fails because this node lost the role under it (its lease lapsed, the role was
 * handed over or moved; see roleMoved), the call goes on at the next primary (`next`) as a repeat
 * of the same call (`local`'s token, which the change carried to the copies if it was made here),
 * and the caller gets that answer: what happened, once. A failure of its own while this node still
 * leads (BUSY, SNAPSHOT_EXISTS, VOLUME_NOT_FOUND...) is the answer, and so is a refusal (see
 * REFUSALS) met after the role moved, and any failure once this instance is closing (its close
 * ends the call). `local` undefined (not a call made here on a
 * replicated volume's primary): `here` alone.
 */
export async function hereOrNext<T> (host: FacadeHost, volumeId: string, local: ForwardedCall | undefined, here: () => Promise<T>, next: (repeat: ForwardedCall) => Promise<T>): Promise<T> {
  try {
    return await here()
  } catch (err) {
    if (local === undefined || host.closed || REFUSALS.has(errorCode(err)) || !roleMoved(host, volumeId, err)) throw err
    return await next({ token: local.token, repeat: true })
  }
}

/**
 * Refusals of a call made here that are its answer even when the role moved while it waited for
 * its turn (see hereOrNext): what this node found refuses the call (a writer open on the volume
 * here, a copy converting here, a name taken, a snapshot gone), and the next primary, which does
 * not see this node's writers, would otherwise do it all the same.
 */
const REFUSALS = new Set(['BUSY', 'SNAPSHOT_EXISTS', 'SNAPSHOT_NOT_FOUND'])

/**
 * Runs one forwarded call (or step of one) as the volume's primary. A call that fails because this
 * node stopped being the primary under it (it closes, lost its lease, handed the role over) says
 * NOT_LEADER, whatever the failure it caused was (the in-sync copies not confirming, the instance
 * closing): the forwarding node then asks the next primary, with the same token, and the answer it
 * gets is the truth (the change made once, or not at all), not a failure of a change the next
 * primary holds.
 */
export async function servePrimaryStep<T> (host: FacadeHost, volumeId: string, step: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run()
  } catch (err) {
    if (errorCode(err) === 'NOT_LEADER' || !roleMoved(host, volumeId, err)) throw err
    const nodeId = host.cluster?.nodeId ?? ''
    throw new GalleonError('NOT_LEADER', `node ${nodeId} stopped being the primary of volume ${host.recordById(volumeId)?.name ?? volumeId} while it served a forwarded ${step} (${host.closed ? 'it is closing' : 'it lost the role'}: ${(err as Error)?.message ?? String(err)}); ask its next primary, where a repeat of the call is not counted twice`, { cause: err })
  }
}

/**
 * Whether a failure here came of this node no longer being the volume's primary, so that the next
 * primary answers the call: it is closing, or its record names another node, or (still named, but
 * its lease lapsed or a hand-off of the role is in flight) the failure is one a move of the role
 * causes (the copies not confirming, the role refused, the coordinator out of reach). A failure of
 * its own while it is still the primary the record names (BUSY; an I/O error; a key that does not
 * open) is the answer: sent again, the call would wait out the hand-off (up to its failover wait) and then
 * run on the next primary, though it was refused.
 */
export function roleMoved (host: FacadeHost, volumeId: string, err: unknown): boolean {
  const code = errorCode(err)
  // Answers that do not depend on which node is primary stand as they are.
  if (code === 'VOLUME_NOT_FOUND' || code === 'INVALID_ARGUMENT') return false
  if (host.closed) return true
  const replication = host.replication
  if (replication?.forwards(volumeId) !== true) return false
  if (replication.status(volumeId)?.primary !== (host.cluster?.nodeId ?? '')) return true
  return code === 'NOT_LEADER' || code === 'WRITE_CONCERN_UNSATISFIED' || code === 'BACKEND_UNAVAILABLE'
}
