// The one error class of GalleonFS and the stable codes it carries.

/** Stable error codes. Tests and callers match on these, never on messages. */
export type GalleonErrorCode =
  | 'VOLUME_NOT_FOUND'
  | 'VOLUME_EXISTS'
  | 'SNAPSHOT_NOT_FOUND'
  | 'SNAPSHOT_EXISTS'
  | 'BACKUP_NOT_FOUND'
  | 'POLICY_NOT_FOUND'
  | 'POLICY_EXISTS'
  | 'HOOK_FAILED'
  | 'CANCELLED'
  | 'STORAGE_CLASS_NOT_FOUND'
  | 'STORAGE_CLASS_EXISTS'
  | 'POOL_NOT_FOUND'
  | 'POOL_EXISTS'
  | 'INVALID_ARGUMENT'
  | 'PERMISSION_DENIED'
  | 'OUT_OF_RANGE'
  | 'READ_ONLY'
  | 'CHECKSUM_MISMATCH'
  | 'DECRYPTION_FAILED'
  | 'WRITE_CONCERN_UNSATISFIED'
  | 'NO_SPACE'
  | 'BUSY'
  | 'NOT_LEADER'
  | 'NOT_OPEN'
  | 'NOT_IMPLEMENTED'
  | 'CORRUPTION'
  | 'IO_ERROR'
  | 'BACKEND_UNAVAILABLE'

/**
 * Every failure GalleonFS reports is a `GalleonError`. `code` is stable; `message` says what went
 * wrong and what to do about it; `cause` holds the underlying error when one was wrapped.
 */
export class GalleonError extends Error {
  /** Stable machine-readable code. */
  readonly code: GalleonErrorCode
  /**
   * Set on the error of a checked call that failed or was denied when its audit entry could not be
   * written either (the audit log's error, e.g. NOT_OPEN after close()).
   */
  declare auditError?: unknown

  constructor (code: GalleonErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'GalleonError'
    this.code = code
  }
}

/** True when `err` is a GalleonError, optionally with the given code. */
export function isGalleonError (err: unknown, code?: GalleonErrorCode): err is GalleonError {
  return err instanceof GalleonError && (code === undefined || err.code === code)
}

/** The code of `err` when it is a GalleonError; anything else (a raw I/O error) counts as IO_ERROR. */
export function errorCode (err: unknown): GalleonErrorCode {
  return err instanceof GalleonError ? err.code : 'IO_ERROR'
}

/** Throws INVALID_ARGUMENT unless `value` is a safe non-negative integer. */
export function assertUint (value: unknown, what: string): asserts value is number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new GalleonError('INVALID_ARGUMENT', `${what} must be a non-negative safe integer, got ${describe(value)}`)
  }
}

/** Throws INVALID_ARGUMENT unless `value` is a Uint8Array (Buffer included). */
export function assertBytes (value: unknown, what: string): asserts value is Uint8Array {
  if (!(value instanceof Uint8Array)) {
    throw new GalleonError('INVALID_ARGUMENT', `${what} must be a Uint8Array or Buffer, got ${describe(value)}`)
  }
}

/**
 * A copy of `bytes` as a plain Uint8Array that shares nothing with it. (`Buffer#slice` returns a
 * view, so `.slice()` is not a copy when callers pass Buffers.)
 */
export function copyBytes (bytes: Uint8Array): Uint8Array {
  const copy = new Uint8Array(bytes.byteLength)
  copy.set(bytes)
  return copy
}

/** A plain Uint8Array over the same memory as `bytes` (no copy), so that its `slice()` copies. */
export function plainView (bytes: Uint8Array): Uint8Array {
  return Buffer.isBuffer(bytes) ? new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength) : bytes
}

/**
 * A caller's string quoted for an error message (a name or id looked up and not found): whole up to
 * 256 characters, else its first 64 and its length, so that a huge bad argument does not make a
 * huge message (logs, HTTP answers and audit entries carry messages whole).
 */
export function quoted (value: string): string {
  return value.length <= 256 ? JSON.stringify(value) : `${JSON.stringify(value.slice(0, 64))}... (${value.length} characters)`
}

/**
 * What went wrong, for a message quoting an error that code we do not own threw (a key provider's,
 * say): its message, or the thing thrown as text, never throwing itself (String() throws for an
 * object without a prototype, or one whose toString throws).
 */
export function reasonOf (err: unknown): string {
  try {
    const message = (err as { message?: unknown } | null | undefined)?.message
    if (typeof message === 'string') return message
    return String(err)
  } catch {
    return `it threw ${describe(err)} that cannot be shown as text`
  }
}

/** Short printable description of a value for error messages. */
export function describe (value: unknown): string {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  if (value instanceof Uint8Array) return `${value.constructor.name}(${value.byteLength})`
  switch (typeof value) {
    case 'string': return JSON.stringify(value.length > 60 ? value.slice(0, 57) + '...' : value)
    case 'number': case 'bigint': case 'boolean': return String(value)
    case 'undefined': return 'undefined'
    case 'function': return 'a function'
    default: return 'an object'
  }
}
