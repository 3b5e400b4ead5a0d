// The audit log's public types: an entry, what is appended, a query's filter, and the outcome of a
// verification.

/** One audit entry. */
export interface AuditEntry {
  /** 1, 2, 3, ... with no gaps. */
  readonly seq: number
  /** ISO-8601 time. */
  readonly time: string
  /** Principal id (`application` for the application's own calls, `system` for the instance's own work). */
  readonly principal: string
  readonly roles?: readonly string[]
  readonly groups?: readonly string[]
  /** The call, e.g. `createVolume`, and the verb it needed. */
  readonly action: string
  readonly verb?: string
  /** What it acted on, e.g. `volume:tenant-a/db`, `snapshot:tenant-a/db@nightly`, `policy:ops`. */
  readonly object: string
  readonly result: 'ok' | 'denied' | 'failed'
  /** Error code for denied and failed calls. */
  readonly code?: string
  readonly details?: Readonly<Record<string, string | number | boolean>>
  /** SHA-256 of the previous entry (zeros for the first), and of this one. */
  readonly prev: string
  readonly hash: string
}

/** What to append: everything but the chain fields. */
export type AuditRecord = Omit<AuditEntry, 'seq' | 'time' | 'prev' | 'hash'>

/** A filter for queryAuditLog. */
export interface AuditQuery {
  /**
   * From this time (inclusive), to this time (exclusive): Date, ISO string or epoch milliseconds.
   * An entry whose stored time is not readable (it was altered) matches no time range.
   */
  readonly from?: Date | string | number
  readonly to?: Date | string | number
  readonly principal?: string
  /** Exact object, or a prefix ending in `*` (`volume:tenant-a/*`). */
  readonly object?: string
  readonly action?: string
  readonly result?: AuditEntry['result']
  /** At most this many entries (the oldest first); default 1000. */
  readonly limit?: number
}

/** The outcome of verifyAuditLog. */
export interface AuditVerification {
  readonly ok: boolean
  readonly entries: number
  readonly head: { readonly seq: number, readonly hash: string }
  readonly problems: ReadonlyArray<{ readonly seq: number, readonly problem: string }>
}
