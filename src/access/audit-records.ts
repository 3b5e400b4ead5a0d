// How the audit log stores its records: entry keys and hashes, the head record, the time index's
// keys and state, and the parsing of each (a damaged record reads as undefined, never as an error).

import { createHash } from 'node:crypto'
import { GalleonError, describe } from '../errors.js'
import type { AuditEntry } from './audit-types.js'

/** The `prev` of the first entry, and the hash of an empty log's head. */
export const GENESIS = '0'.repeat(64)
/** Key of the head record (last sequence number and hash) in the audit-head sublevel. */
export const HEAD_KEY = 'head'
/** Key of the time index's state (TimeIndexState) in the audit-index sublevel. */
export const TIME_INDEX_STATE_KEY = 'time'
// Index keys start with the entry's time in epoch milliseconds, shifted to be non-negative (a Date
// spans +-8.64e15 ms) and padded to 17 digits so that keys sort by time; the entry's own key follows.
export const MAX_TIME = 8.64e15
export const TIME_DIGITS = 17
export const timeKey = (ms: number): string => (ms + MAX_TIME).toString().padStart(TIME_DIGITS, '0')

/**
 * What the time index covers, written in the same batch as each entry. `last` is the key of the
 * last entry indexed: when it is not the log's last key at open (a log written before the index
 * existed, or appended to by such a build since), the index is rebuilt. `ordered` says that every
 * readable entry's time is at or after the one before it (the clock never went back): a query then
 * seeks to its first entry and walks the log in order from there, checking the seek against the
 * entries themselves, so the index can narrow what a query reads but never what it answers.
 */
export interface TimeIndexState {
  readonly last: string
  /** The last indexed entry's time (ms), null before the first. */
  readonly time: number | null
  readonly ordered: boolean
}

/** The stored time index state, or undefined when it is missing or damaged. */
export function parseTimeIndexState (text: unknown): TimeIndexState | undefined {
  if (typeof text !== 'string') return undefined
  let value: unknown
  try { value = JSON.parse(text) } catch { return undefined }
  const state = value as Partial<TimeIndexState> | null
  if (state === null || typeof state !== 'object' || typeof state.last !== 'string' || typeof state.ordered !== 'boolean' || (state.time !== null && !Number.isSafeInteger(state.time))) return undefined
  return { last: state.last, time: state.time ?? null, ordered: state.ordered }
}

/** The hash of an entry: SHA-256 over its fields in a fixed order. */
export function entryHash (entry: Omit<AuditEntry, 'hash'>): string {
  const canonical = JSON.stringify([entry.seq, entry.time, entry.principal, entry.roles ?? [], entry.groups ?? [], entry.action, entry.verb ?? null, entry.object, entry.result, entry.code ?? null,
    entry.details === undefined ? null : Object.keys(entry.details).sort().map((key) => [key, (entry.details as Record<string, unknown>)[key]]), entry.prev])
  return createHash('sha256').update(canonical).digest('hex')
}

/** The key of entry `seq`: its sequence number padded so that keys sort in order. */
export const keyOf = (seq: number): string => seq.toString().padStart(16, '0')

/** A query's time bound in epoch milliseconds; INVALID_ARGUMENT when it is not a time. */
export function toTime (value: Date | string | number | undefined, what: string): number | undefined {
  if (value === undefined) return undefined
  const time = value instanceof Date ? value.getTime() : typeof value === 'number' ? value : Date.parse(value)
  if (!Number.isFinite(time)) throw new GalleonError('INVALID_ARGUMENT', `${what} must be a Date, an ISO-8601 string or epoch milliseconds, got ${describe(value)}`)
  return time
}

/** A stored value as an entry, or undefined when it is not one (damaged, or not JSON). */
export function parseEntry (text: unknown): AuditEntry | undefined {
  if (typeof text !== 'string') return undefined
  let value: unknown
  try { value = JSON.parse(text) } catch { return undefined }
  if (value === null || typeof value !== 'object') return undefined
  const entry = value as AuditEntry
  if (!Number.isSafeInteger(entry.seq) || typeof entry.hash !== 'string' || typeof entry.prev !== 'string' || typeof entry.time !== 'string' || typeof entry.object !== 'string') return undefined
  return entry
}

/** The stored head record, or undefined when it is missing or damaged. */
export function parseHead (text: unknown): { seq: number, hash: string } | undefined {
  if (typeof text !== 'string') return undefined
  let value: unknown
  try { value = JSON.parse(text) } catch { return undefined }
  const head = value as { seq?: unknown, hash?: unknown } | null
  if (head === null || typeof head !== 'object' || !Number.isSafeInteger(head.seq) || typeof head.hash !== 'string') return undefined
  return { seq: head.seq as number, hash: head.hash }
}
