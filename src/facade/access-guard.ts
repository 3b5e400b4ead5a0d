// Access checks and auditing of the facade's calls: who is calling (a principal through `as()` /
// `runAs()`, or the application), whether it may, and the audit entry of each checked call.

import type { AsyncLocalStorage } from 'node:async_hooks'
import { types } from 'node:util'
import { EVERY_VOLUME, type AccessControl, type AccessObject, type Principal, type Verb } from '../access/access-control.js'
import type { AuditLog, AuditRecord } from '../access/audit-log.js'
import { GalleonError, describe, errorCode } from '../errors.js'
import { isNoSpaceError } from '../abstract-block-store.js'
import type { Catalog, VolumeRecord } from '../volumes/catalog.js'
import { looksLikeId, namespaceOf } from '../volumes/catalog.js'
import { isSnapshotObject } from './refs.js'

/** Who is calling: a principal (through `as()` / `runAs()`) or, when absent, the application itself. */
export interface CallContext {
  readonly principal: Principal | undefined
  /** Inside a guarded call: calls it makes are part of it (not checked or audited again). */
  readonly nested: boolean
}

/** Event methods a principal's handle refuses. */
const EVENT_METHODS = new Set(['on', 'once', 'off', 'addListener', 'removeListener', 'removeAllListeners', 'emit', 'listeners', 'listenerCount', 'eventNames'])

/** Fields through which an argument names a volume or a snapshot (a reference, or `{ volume }` of restoreBackup's options). */
const REF_KEYS = ['id', 'volumeId', 'volume', 'snapshot'] as const

/**
 * A principal's argument with every field that names a volume or snapshot read once, into a plain
 * object. A call reads a reference more than once (to check it, then to act on it): a getter or a
 * Proxy answering one volume to the check and another to the call would reach a volume the
 * principal may not touch. So every object is copied (its own fields, and the naming fields read
 * once each with Reflect.get, whatever `in` or its prototype claim), except bytes and signals,
 * which cannot name a volume, and which are taken as they are only when they are not Proxies.
 */
function pinArgument (value: unknown, depth = 0): unknown {
  if (typeof value !== 'object' || value === null || depth > 3) return value
  if (!types.isProxy(value) && (ArrayBuffer.isView(value) || value instanceof ArrayBuffer || value instanceof AbortSignal)) return value
  if (Array.isArray(value)) return Array.from(value as unknown[], (item) => pinArgument(item, depth + 1))
  const refs = REF_KEYS.map((key) => [key, Reflect.get(value, key)] as const)
  const pinned: Record<string, unknown> = { ...value }
  for (const [key, field] of refs) {
    if (field === undefined) delete pinned[key]
    else pinned[key] = pinArgument(field, depth + 1)
  }
  return pinned
}

/** Runs `method` on `target` as `context`, with its arguments pinned (see pinArgument). */
function callAs (als: AsyncLocalStorage<CallContext>, context: CallContext, target: object, method: (...a: unknown[]) => unknown, args: unknown[]): unknown {
  return als.run(context, () => method.apply(target, args.map((arg) => pinArgument(arg))))
}

/**
 * The handle `as()` returns: `instance` whose calls (and those of its mount manager) run as `context`'s
 * principal; event methods are refused.
 */
export function principalHandle<T extends object> (instance: T, mountManager: object, als: AsyncLocalStorage<CallContext>, context: CallContext, gate: AccessGuard): T {
  return new Proxy(instance, {
    get: (target, prop) => {
      if (prop === 'principal') return context.principal
      // The cluster manager acts for the node, unchecked: a principal uses clusterStatus() and the like.
      if (prop === 'cluster') return undefined
      if (prop === 'mounts') {
        // The mount manager's calls act as the principal too.
        const mounts = mountManager
        return new Proxy(mounts, {
          get: (m, key) => {
            const member = Reflect.get(m, key, m) as unknown
            return typeof member === 'function' ? (...args: unknown[]) => callAs(als, context, m, member as (...a: unknown[]) => unknown, args) : member
          }
        })
      }
      const value = Reflect.get(target, prop, target) as unknown
      if (typeof value !== 'function') return value
      // Events are the application's: they carry every namespace's volumes.
      if (typeof prop === 'string' && EVENT_METHODS.has(prop)) {
        return () => {
          const principal = context.principal as Principal
          throw gate.refuse(principal, prop, 'events', new GalleonError('PERMISSION_DENIED', `${principal.id} may not use ${prop}(): events are instance-wide; listen on the application's GalleonFS object`))
        }
      }
      return (...args: unknown[]) => callAs(als, context, target, value as (...a: unknown[]) => unknown, args)
    }
  })
}

/** Checks callers against the access policies and records checked calls in the audit log. */
export class AccessGuard {
  readonly #context: AsyncLocalStorage<CallContext>
  readonly #access: AccessControl
  readonly #audit: AuditLog
  readonly #catalog: Catalog

  constructor (context: AsyncLocalStorage<CallContext>, access: AccessControl, audit: AuditLog, catalog: Catalog) {
    this.#context = context
    this.#access = access
    this.#audit = audit
    this.#catalog = catalog
  }

  /** The access policies the checks use. */
  get access (): AccessControl { return this.#access }

  /**
   * Only the application itself may act as principals (a principal must not become another). A
   * refusal is thrown at once (`as` and `setReplicationHook` are synchronous) and recorded in the
   * audit log in the background; `recorded` is that write, for an async caller to wait on.
   * `asPrincipal` is the id the caller tried to become, kept in the entry.
   */
  assertApplication (call: string, asPrincipal?: unknown): void {
    const principal = this.#context.getStore()?.principal
    if (principal === undefined) return
    const denial = new GalleonError('PERMISSION_DENIED', `${principal.id} may not call ${call}(): only the application acts as other principals`)
    throw this.refuse(principal, call, 'instance', denial, idOf(asPrincipal))
  }

  /**
   * `denial` of `call` to `principal`, once its audit entry is queued: a refusal no grant can lift
   * (a call only the application makes) is a denial like any other. The error carries the write
   * in `recorded` (not enumerable), which never rejects: a lost entry is reported there as the
   * audit log's error, as `auditError` is elsewhere.
   */
  refuse (principal: Principal, call: string, label: string, denial: GalleonError, asPrincipal?: unknown): GalleonError {
    const details = typeof asPrincipal === 'string' ? { asPrincipal: asPrincipal.slice(0, 256) } : undefined
    const recorded = this.#record(denial, { principal: principal.id, roles: principal.roles, groups: principal.groups, action: call, object: label, result: 'denied', code: 'PERMISSION_DENIED', ...(details === undefined ? {} : { details }) })
    Object.defineProperty(denial, 'recorded', { value: recorded, enumerable: false, configurable: true })
    return denial
  }

  /**
   * A principal may use the instance's backup target only: naming another one (any directory the
   * process can write, or a target holding forged manifests) takes `admin`. A denial is in the
   * audit log before the call rejects.
   */
  async checkTarget (action: string, options: { target?: unknown } | undefined): Promise<void> {
    if (options?.target === undefined) return
    await this.check(action, 'admin', undefined, 'backup-target', (who) => `${who} may not choose a backup target: that takes "admin"; omit target to use the instance's`)
  }

  /** The access object of a volume record, and how audit entries name it. */
  volumeObject (record: VolumeRecord): { object: AccessObject, label: string } {
    const namespace = namespaceOf(record)
    return { object: { namespace, volume: record.name }, label: `volume:${namespace}/${record.name}` }
  }

  /**
   * The access object a volume reference names, found without failing: a caller is told
   * PERMISSION_DENIED before it can learn whether a volume it may not see exists.
   */
  refObject (ref: unknown): { object: AccessObject, label: string } {
    let id: unknown = ref
    if (isSnapshotObject(ref)) id = ref.volumeId
    else if (typeof ref === 'object' && ref !== null && 'snapshot' in ref) id = (ref as { volume?: unknown }).volume
    if (typeof id === 'object' && id !== null) id = (id as { id?: unknown }).id
    const text = typeof id === 'string' ? id : String(id)
    try {
      return this.volumeObject(this.#catalog.resolve(text))
    } catch {
      // An id that names no volume is checked against every namespace (as a backup id is): in the
      // caller's own namespace, a principal could tell the ids of other tenants' volumes (denied)
      // from ids that name nothing (not found).
      if (looksLikeId(text)) return { object: EVERY_VOLUME, label: `volume:${text}` }
      const slash = text.indexOf('/')
      const namespace = slash > 0 ? text.slice(0, slash) : this.#catalog.currentNamespace()
      const volume = slash > 0 ? text.slice(slash + 1) : text
      // Checked as given; named in the entry as far as an entry keeps (see entryText).
      return { object: { namespace, volume }, label: `volume:${entryText(namespace)}/${entryText(volume)}` }
    }
  }

  /**
   * Whether the caller may `verb` on `object`. The application itself always may, and so may calls
   * made inside a call that was checked already.
   */
  allowed (verb: Verb, object: AccessObject | undefined): boolean {
    const context = this.#context.getStore()
    if (context === undefined || context.nested || context.principal === undefined) return true
    return this.#access.allows(context.principal, verb, object)
  }

  /**
   * Checks the caller may `verb` on `object`; a denial is audited, then thrown as PERMISSION_DENIED
   * (with the message `explain` gives, when the verb needs a word on why this call takes it).
   * Returns undefined when allowed (no await on the I/O path), else a rejected promise.
   */
  check (action: string, verb: Verb, object: AccessObject | undefined, label: string, explain?: (who: string) => string): Promise<never> | undefined {
    if (this.allowed(verb, object)) return undefined
    const principal = this.#context.getStore()?.principal as Principal
    let denial: unknown
    try { this.#access.check(principal, verb, object) } catch (err) { denial = err }
    if (explain !== undefined) denial = new GalleonError('PERMISSION_DENIED', explain(principal.id), { cause: denial })
    return (async () => {
      throw await this.#record(denial, { principal: principal.id, roles: principal.roles, groups: principal.groups, action, verb, object: label, result: 'denied', code: 'PERMISSION_DENIED' })
    })()
  }

  /** Runs `task` as part of the current call: what it calls is not checked or audited on its own. */
  async nested<T> (task: () => Promise<T>): Promise<T> {
    const context = this.#context.getStore()
    if (context === undefined || context.nested) return await task()
    return await this.#context.run({ principal: context.principal, nested: true }, task)
  }

  /**
   * `check` on the I/O path, on the volume a reference names, before the reference is resolved
   * (so a denied caller learns nothing about what exists). Nothing to do for the application.
   */
  refCheck (action: string, verb: Verb, ref: unknown): Promise<never> | undefined {
    const context = this.#context.getStore()
    if (context === undefined || context.nested || context.principal === undefined) return undefined
    const { object, label } = this.refObject(ref)
    return this.check(action, verb, object, label)
  }

  /**
   * `check` for the few calls that are synchronous (they cannot wait for the log): throws
   * PERMISSION_DENIED at once and records the denial in the audit log in the background. Async
   * calls await `check` instead, so a denial is logged before the caller hears of it.
   */
  checkSync (action: string, verb: Verb, object: AccessObject | undefined, label: string): void {
    if (this.allowed(verb, object)) return
    void this.check(action, verb, object, label)?.catch(() => {})
    this.#access.check(this.#context.getStore()?.principal as Principal, verb, object)
  }

  /**
   * A checked and audited call: the caller must be allowed `verb` on `object`; `task` then runs as
   * part of this call (the calls it makes are not checked or audited again), and its outcome is
   * recorded in the audit log.
   */
  async guard<T> (action: string, verb: Verb, object: AccessObject | undefined, label: string, task: () => Promise<T>, details?: Record<string, string | number | boolean>): Promise<T> {
    const context = this.#context.getStore()
    if (context?.nested === true) return await task()
    const denied = this.check(action, verb, object, label)
    if (denied !== undefined) await denied
    const principal = context?.principal
    const who = { principal: principal?.id ?? 'application', ...(principal === undefined ? {} : { roles: principal.roles, groups: principal.groups }) }
    let result: T
    try {
      // The application itself (no context) is allowed everything, nested or not, so its calls need
      // no context: entering one would switch on AsyncLocalStorage's promise hooks for the rest of
      // the process, a cost on every promise of the I/O path (about 5% of a 4 KiB write).
      result = context === undefined ? await task() : await this.#context.run({ principal, nested: true }, task)
    } catch (thrown) {
      const err = fullDiskError(thrown, action, label)
      throw await this.#record(err, { ...who, action, verb, object: label, result: 'failed', code: errorCode(err), ...(details === undefined ? {} : { details }) })
    }
    // A call that succeeded but could not be recorded rejects with the audit log's error (the
    // message says the call ran): an unrecorded change is not reported as a plain success.
    await this.#audit.append({ ...who, action, verb, object: label, result: 'ok', ...(details === undefined ? {} : { details }) })
    return result
  }

  /**
   * The error to throw for a call its arguments refused before its access check, once the refusal
   * is on the record: every attempt is in the audit log, whatever refused it. `object` is what the
   * arguments name as far as they can be read (see `namedArgument`); `before` are checks the call
   * makes ahead of its own (the source of a clone). A principal not allowed one of them is told
   * PERMISSION_DENIED, recorded as a denial, and not the argument's error: probing with bad
   * arguments teaches it no more than good ones would. Any other caller gets `err` unchanged, as
   * before (a permitted caller sees what it saw), recorded as failed with its code when `audited`
   * (a mutating call; a read's refusal is not logged, as its success is not). Nested calls are part
   * of a call recorded already.
   */
  async refusedArguments (action: string, verb: Verb, object: AccessObject | undefined, label: string, err: unknown, options: { before?: ReadonlyArray<{ verb: Verb, object: AccessObject | undefined, label: string }>, audited?: boolean } = {}): Promise<unknown> {
    const context = this.#context.getStore()
    if (context?.nested === true) return err
    for (const check of [...(options.before ?? []), { verb, object, label }]) {
      const denied = this.check(action, check.verb, check.object, check.label)
      if (denied !== undefined) return await denied.then(() => undefined, (denial: unknown) => denial)
    }
    if (options.audited === false) return err
    const principal = context?.principal
    const who = { principal: principal?.id ?? 'application', ...(principal === undefined ? {} : { roles: principal.roles, groups: principal.groups }) }
    return await this.#record(err, { ...who, action, verb, object: label, result: 'failed', code: errorCode(err) })
  }

  /**
   * `check`, then, for a principal allowed the call, its audit entry written before the call runs:
   * for a call that closes the audit log with the instance (close()), whose outcome cannot be
   * recorded afterwards. The entry says so in its details. The application's calls are not audited
   * here (as for other calls it makes, only guarded ones are).
   */
  async recordAhead (action: string, verb: Verb, object: AccessObject | undefined, label: string): Promise<void> {
    const context = this.#context.getStore()
    if (context === undefined || context.nested || context.principal === undefined) return
    const denied = this.check(action, verb, object, label)
    if (denied !== undefined) await denied
    const principal = context.principal
    await this.#audit.append({ principal: principal.id, roles: principal.roles, groups: principal.groups, action, verb, object: label, result: 'ok', details: { recorded: 'before the call (it closes the audit log)' } })
  }

  /**
   * Records the entry of a call that failed or was denied, and returns the error to throw: the
   * call's own (its code is what the caller acts on), carrying in `auditError` the audit log's
   * error when the entry could not be written (as a successful call rejects with that error), so
   * the lost entry is never silent.
   */
  async #record (failure: unknown, entry: AuditRecord): Promise<unknown> {
    try {
      await this.#audit.append(entry)
      return failure
    } catch (auditError) {
      return withAuditError(failure, auditError)
    }
  }
}

/**
 * A name or reference a caller gave, as an audit entry keeps it: its first 256 characters. A
 * reference that names nothing is the caller's text, of any length: kept whole, every call with a
 * long one wrote that much into the log, which is never cut.
 */
export function entryText (text: string): string {
  return text.length > 256 ? text.slice(0, 256) : text
}

/**
 * A name a call was given, as its audit entry and its access check read it when the call refused
 * it: a string as it is (cut to 256 characters in the label, the longest a log entry keeps),
 * anything else, or a getter that throws, as `*` for the check (only a policy covering every name
 * covers it) and described in the label. A longer string is checked as `*` too: its first 256
 * characters are another name, which a pattern (`*-dev`) may cover when the name does not. `missing`
 * stands for an absent one (a generated name, the caller's namespace).
 */
export function namedArgument (read: () => unknown, missing?: { check: string, label: string }): { check: string, label: string } {
  let value: unknown
  try { value = read() } catch { return { check: '*', label: '(unreadable)' } }
  if (value === undefined && missing !== undefined) return missing
  if (typeof value === 'string' && value.length > 0) return { check: value.length > 256 ? '*' : value, label: entryText(value) }
  return { check: '*', label: `(${describe(value)})` }
}

/** The `id` of a would-be principal, for the audit entry of its refusal; a getter that throws is read as none. */
function idOf (principal: unknown): unknown {
  try {
    return typeof principal === 'object' && principal !== null ? Reflect.get(principal, 'id') : undefined
  } catch {
    return undefined
  }
}

/**
 * A full disk met by a metadata write of a module below (LevelDB says so only in its message) as
 * NO_SPACE saying what to do; any other failure as it is (a backup target's own full disk is not
 * the storage's: the backup manager says so itself).
 */
function fullDiskError (err: unknown, action: string, label: string): unknown {
  if (err instanceof GalleonError || (err as { code?: unknown } | null)?.code !== 'LEVEL_IO_ERROR' || !isNoSpaceError(err)) return err
  return new GalleonError('NO_SPACE', `${action} on ${label} failed: the disk holding the storage is full, so the change was not stored; free space on it (or grow it), then close and reopen the instance`, { cause: err })
}

/**
 * `failure` with `auditError` set on it; a value that cannot carry it (not an object, or frozen)
 * is wrapped in a GalleonError of the same code, with `failure` as its cause.
 */
function withAuditError (failure: unknown, auditError: unknown): unknown {
  if (typeof failure === 'object' && failure !== null && Object.isExtensible(failure)) {
    Object.defineProperty(failure, 'auditError', { value: auditError, enumerable: true, configurable: true, writable: true })
    return failure
  }
  const wrapped = new GalleonError(errorCode(failure), failure instanceof Error ? failure.message : `the call failed with ${String(failure)}`, { cause: failure })
  wrapped.auditError = auditError
  return wrapped
}
