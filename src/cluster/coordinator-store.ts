// The small etcd-shaped store a coordinator backend implements (revisioned keys, leases,
// transactions, watches), the key layout the shared coordinator logic keeps in it, and argument checks.

import { GalleonError } from '../errors.js'
import { assertProtocolRange } from './protocol.js'

/** A key as the backend stores it, with etcd's two revisions. */
export interface StoredEntry {
  readonly key: string
  readonly value: string
  /** Revision of the write that created the key (kept while the key lives). */
  readonly createRevision: number
  /** Revision of the latest write of the key (for a delete event: the revision of the delete). */
  readonly modRevision: number
}

/** One write of a transaction. `lease` binds the key to a lease: it is deleted when the lease ends. */
export type StoreOp =
  | { readonly type: 'put', readonly key: string, readonly value: string, readonly lease?: string }
  | { readonly type: 'delete', readonly key: string }

/**
 * A transaction guard: the key's `mod` or `create` revision equals `revision` (0: the key does not
 * exist).
 */
export interface StoreCondition {
  readonly key: string
  readonly target: 'mod' | 'create'
  readonly revision: number
}

/** Outcome of a transaction. */
export interface StoreTxnResult {
  /** Every condition held, so every op was applied (atomically, at `revision`). */
  readonly succeeded: boolean
  /** The store's revision after the transaction (the revision of its writes when it wrote). */
  readonly revision: number
  /** How many keys the delete ops removed. */
  readonly deleted: number
}

/** A change seen by a watch. */
export interface StoreEvent {
  readonly type: 'put' | 'delete'
  readonly entry: StoredEntry
}

/** A lease the backend keeps alive until it is revoked or released. */
export interface StoreLease {
  /** Backend lease id. */
  readonly id: string
  /** TTL the store granted (may be longer than asked: etcd counts whole seconds and has a minimum). */
  readonly ttlMs: number
}

/** Default lease TTL of a membership: short enough for a quick failover, long enough to ride out a pause. */
export const DEFAULT_TTL_MS = 10_000
/** Longest accepted TTL: one day (timers cannot count much further, and a longer one hides failures). */
export const MAX_TTL_MS = 86_400_000
/** Longest accepted key, in characters. */
export const MAX_KEY_LENGTH = 1024
/** Largest accepted value, in characters (etcd refuses requests over 1.5 MiB by default). */
export const MAX_VALUE_LENGTH = 1024 * 1024

/** Where the shared logic keeps things inside a backend's namespace. */
export const layout = {
  /** User keys of get/put/delete/list/watch. */
  kv: 'kv/',
  /** `nodes/<id>/record` (the ClusterNode, on the record lease) and `nodes/<id>/alive` (on the liveness lease). */
  nodes: 'nodes/',
  /** `elections/<name>/<lease id>`: one candidate key per campaigner, the oldest leads. */
  elections: 'elections/',
  nodeKey: (id: string, what: 'record' | 'alive'): string => `nodes/${encodeURIComponent(id)}/${what}`,
  electionPrefix: (election: string): string => `elections/${encodeURIComponent(election)}/`
}

function describe (value: unknown): string {
  if (typeof value === 'string') return value.length > 40 ? `a string of ${value.length} characters` : JSON.stringify(value)
  if (value === null) return 'null'
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'undefined') return String(value)
  return `a ${typeof value === 'object' ? (value.constructor?.name ?? 'object') : typeof value}`
}

function invalid (message: string): GalleonError {
  return new GalleonError('INVALID_ARGUMENT', message)
}

/** A coordinator key: a non-empty string of at most MAX_KEY_LENGTH characters. */
export function assertKey (key: unknown, what = 'key'): asserts key is string {
  if (typeof key !== 'string' || key.length === 0) throw invalid(`${what} must be a non-empty string, got ${describe(key)}`)
  if (key.length > MAX_KEY_LENGTH) throw invalid(`${what} must be at most ${MAX_KEY_LENGTH} characters, got ${key.length}`)
}

/** A prefix for list/watch: a string (empty means every key) of at most MAX_KEY_LENGTH characters. */
export function assertPrefix (prefix: unknown): asserts prefix is string {
  if (typeof prefix !== 'string') throw invalid(`prefix must be a string (use '' for every key), got ${describe(prefix)}`)
  if (prefix.length > MAX_KEY_LENGTH) throw invalid(`prefix must be at most ${MAX_KEY_LENGTH} characters, got ${prefix.length}`)
}

/** A value: a string (JSON by convention) of at most MAX_VALUE_LENGTH characters. */
export function assertValue (value: unknown): asserts value is string {
  if (typeof value !== 'string') throw invalid(`value must be a string (serialize objects with JSON.stringify), got ${describe(value)}`)
  if (value.length > MAX_VALUE_LENGTH) throw invalid(`value must be at most ${MAX_VALUE_LENGTH} characters, got ${value.length}`)
}

/** An `expectRevision` option: a non-negative safe integer when present. */
export function assertExpectRevision (revision: unknown): asserts revision is number | undefined {
  if (revision === undefined) return
  if (typeof revision !== 'number' || !Number.isSafeInteger(revision) || revision < 0) {
    throw invalid(`expectRevision must be a non-negative safe integer (0: the key must not exist), got ${describe(revision)}`)
  }
}

/** A lease TTL in milliseconds: a positive safe integer up to MAX_TTL_MS. */
export function assertTtl (ttlMs: unknown): asserts ttlMs is number {
  if (typeof ttlMs !== 'number' || !Number.isSafeInteger(ttlMs) || ttlMs <= 0 || ttlMs > MAX_TTL_MS) {
    throw invalid(`ttlMs must be a whole number of milliseconds between 1 and ${MAX_TTL_MS}, got ${describe(ttlMs)}`)
  }
}

/** A ClusterNode as join() accepts it. */
export function assertNode (node: unknown): void {
  if (typeof node !== 'object' || node === null) throw invalid(`node must be a ClusterNode object, got ${describe(node)}`)
  const { id, address, zone, labels, capacityBytes, freeBytes } = node as Record<string, unknown>
  assertKey(id, 'node.id')
  if (typeof address !== 'string' || address.length === 0) throw invalid(`node.address must be a non-empty string (where its transport listens), got ${describe(address)}`)
  if (typeof zone !== 'string' || zone.length === 0) throw invalid(`node.zone must be a non-empty string (use 'default'), got ${describe(zone)}`)
  if (typeof labels !== 'object' || labels === null || Array.isArray(labels) || !Object.values(labels).every((v) => typeof v === 'string')) {
    throw invalid(`node.labels must be an object of string values, got ${describe(labels)}`)
  }
  for (const [name, bytes] of [['capacityBytes', capacityBytes], ['freeBytes', freeBytes]] as const) {
    if (typeof bytes !== 'number' || !Number.isSafeInteger(bytes) || bytes < 0) throw invalid(`node.${name} must be a non-negative safe integer, got ${describe(bytes)}`)
  }
  assertProtocolRange((node as Record<string, unknown>).protocol, 'node.protocol')
}

/** An election name: a non-empty string. */
export function assertElection (election: unknown): asserts election is string {
  assertKey(election, 'election')
}
