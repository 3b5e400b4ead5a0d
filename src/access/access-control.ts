// Access control: principals, policies that grant verbs on namespaces and volume name patterns, and
// the check every guarded call goes through.
//
// With no policy stored, every call is allowed (embedded use stays simple). Once one exists, a call
// is allowed only when some policy names its principal (by id, role or group, or '*') and grants
// the verb on the object: default deny.

import type { AbstractSublevel } from 'abstract-level'
import { GalleonError, describe, quoted } from '../errors.js'
import { DEFAULT_NAMESPACE, type MetadataDatabase } from '../volumes/catalog.js'

type JsonSublevel = AbstractSublevel<MetadataDatabase, any, string, any>
const SYNC = { sync: true } as unknown as Record<string, never>

/** Who makes a call. */
export interface Principal {
  /** A stable identifier: a user, a service, a tenant's application. */
  readonly id: string
  readonly roles?: readonly string[]
  readonly groups?: readonly string[]
  /** Namespace that bare volume names resolve in and new volumes go to (default `default`). */
  readonly namespace?: string
}

/** Verbs a policy can grant. `volume:*`, `snapshot:*`, `backup:*` and `*` grant a family or all. */
export const VERBS = [
  'volume:create', 'volume:read', 'volume:write', 'volume:delete',
  'snapshot:create', 'snapshot:read', 'snapshot:delete', 'snapshot:restore',
  'backup:create', 'backup:read', 'backup:delete', 'backup:restore', 'backup:schedule',
  'admin'
] as const
export type Verb = typeof VERBS[number]

/** A grant of verbs to principals on volumes. */
export interface AccessPolicy {
  readonly name: string
  /** Who it applies to: `user:<id>`, `role:<role>`, `group:<group>`, or `*` (every principal). */
  readonly principals: readonly string[]
  /** What it allows: verbs from VERBS, or `volume:*`, `snapshot:*`, `backup:*`, `*`. `admin` also covers every other verb. */
  readonly verbs: readonly string[]
  /** Namespaces it covers: names or patterns with `*` and `?` (default: all). */
  readonly namespaces?: readonly string[]
  /** Volume names it covers: names or patterns with `*` and `?` (default: all). */
  readonly volumes?: readonly string[]
  readonly description?: string
}

/**
 * What a call acts on: a volume (by namespace and name), a namespace, or the whole instance
 * (undefined). `*` as the namespace (and volume) stands for every one: only a policy covering all
 * of them covers it (never a pattern that merely matches the text `*`, such as `?`).
 */
export interface AccessObject {
  readonly namespace: string
  readonly volume?: string
}

/** Every volume of every namespace: what an id that names nothing is checked against. */
export const EVERY_VOLUME: AccessObject = Object.freeze({ namespace: '*', volume: '*' })

const WILDCARD_VERBS = new Set(['*', 'volume:*', 'snapshot:*', 'backup:*'])
const POLICY_NAME = /^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/
const PRINCIPAL_REF = /^(\*|(user|role|group):.+)$/

/** Checks a principal object; returns it frozen. */
export function checkPrincipal (principal: unknown): Principal {
  const p = principal as Principal
  if (p === null || typeof p !== 'object' || typeof p.id !== 'string' || p.id.length === 0 || p.id.length > 256) {
    throw new GalleonError('INVALID_ARGUMENT', `a principal is an object { id, roles?, groups?, namespace? } with a non-empty id, got ${describe(principal)}`)
  }
  // The audit log names the application's own calls `application` and the instance's own work
  // `system`: a principal by either name could pass its entries off as theirs.
  if (p.id === 'application' || p.id === 'system') throw new GalleonError('INVALID_ARGUMENT', `principal id "${p.id}" is reserved: the audit log names the ${p.id === 'system' ? 'instance\'s own work' : 'application\'s own calls'} so`)
  for (const field of ['roles', 'groups'] as const) {
    const list = p[field]
    if (list !== undefined && (!Array.isArray(list) || !list.every((item) => typeof item === 'string' && item.length > 0))) {
      throw new GalleonError('INVALID_ARGUMENT', `principal ${p.id}: ${field} must be a list of non-empty strings, got ${describe(list)}`)
    }
  }
  if (p.namespace !== undefined && (typeof p.namespace !== 'string' || !/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(p.namespace))) {
    throw new GalleonError('INVALID_ARGUMENT', `principal ${p.id}: namespace must be 1-63 lowercase letters, digits or '-', got ${describe(p.namespace)}`)
  }
  return Object.freeze({ id: p.id, roles: [...(p.roles ?? [])], groups: [...(p.groups ?? [])], namespace: p.namespace ?? DEFAULT_NAMESPACE })
}

/** Validates a policy from a plain object (JSON or YAML); every bad field gets its own message. */
export function parseAccessPolicy (input: unknown): AccessPolicy {
  const p = input as AccessPolicy
  if (p === null || typeof p !== 'object' || Array.isArray(p)) throw new GalleonError('INVALID_ARGUMENT', `an access policy is an object { name, principals, verbs, namespaces?, volumes? }, got ${describe(input)}`)
  const known = new Set(['name', 'principals', 'verbs', 'namespaces', 'volumes', 'description'])
  for (const key of Object.keys(p)) if (!known.has(key)) throw new GalleonError('INVALID_ARGUMENT', `unknown access policy field ${quoted(key)}; allowed: ${[...known].join(', ')}`)
  if (typeof p.name !== 'string' || !POLICY_NAME.test(p.name)) throw new GalleonError('INVALID_ARGUMENT', `access policy name must be 1-63 letters, digits, '-', '_' or '.', got ${describe(p.name)}`)
  const list = (field: 'principals' | 'verbs' | 'namespaces' | 'volumes', required: boolean): string[] | undefined => {
    const value = p[field]
    if (value === undefined && !required) return undefined
    if (!Array.isArray(value) || value.length === 0 || !value.every((item) => typeof item === 'string' && item.length > 0)) {
      throw new GalleonError('INVALID_ARGUMENT', `access policy ${p.name}: ${field} must be a non-empty list of strings, got ${describe(value)}`)
    }
    return [...value]
  }
  const principals = list('principals', true) as string[]
  for (const ref of principals) {
    if (!PRINCIPAL_REF.test(ref)) throw new GalleonError('INVALID_ARGUMENT', `access policy ${p.name}: principal ${JSON.stringify(ref)} must be user:<id>, role:<role>, group:<group> or *`)
  }
  const verbs = list('verbs', true) as string[]
  for (const verb of verbs) {
    if (!WILDCARD_VERBS.has(verb) && !(VERBS as readonly string[]).includes(verb)) {
      throw new GalleonError('INVALID_ARGUMENT', `access policy ${p.name}: unknown verb ${JSON.stringify(verb)}; verbs are ${[...VERBS, ...WILDCARD_VERBS].join(', ')}`)
    }
  }
  if (p.description !== undefined && typeof p.description !== 'string') throw new GalleonError('INVALID_ARGUMENT', `access policy ${p.name}: description must be a string`)
  const namespaces = list('namespaces', false)
  for (const pattern of namespaces ?? []) {
    if (!/^[a-z0-9*?-]{1,63}$/.test(pattern)) throw new GalleonError('INVALID_ARGUMENT', `access policy ${p.name}: namespace pattern ${JSON.stringify(pattern)} can never match; namespaces are lowercase letters, digits and '-' (with * and ? as wildcards)`)
  }
  const volumes = list('volumes', false)
  for (const pattern of volumes ?? []) {
    if (!/^[A-Za-z0-9_.*?-]{1,63}$/.test(pattern)) throw new GalleonError('INVALID_ARGUMENT', `access policy ${p.name}: volume pattern ${JSON.stringify(pattern)} can never match; volume names are letters, digits, '-', '_' and '.' (with * and ? as wildcards)`)
  }
  return Object.freeze({
    name: p.name,
    principals,
    verbs,
    ...(namespaces === undefined ? {} : { namespaces }),
    ...(volumes === undefined ? {} : { volumes }),
    ...(p.description === undefined ? {} : { description: p.description })
  })
}

function patternMatches (pattern: string, value: string): boolean {
  if (pattern === '*') return true
  if (!pattern.includes('*') && !pattern.includes('?')) return pattern === value
  const regex = new RegExp('^' + pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.') + '$')
  return regex.test(value)
}

function grantsVerb (granted: string, verb: Verb): boolean {
  if (granted === '*' || granted === 'admin' || granted === verb) return true
  return granted.endsWith(':*') && verb.startsWith(granted.slice(0, -1)) && verb !== 'admin'
}

function appliesTo (policy: AccessPolicy, principal: Principal): boolean {
  return policy.principals.some((ref) => ref === '*' ||
    ref === `user:${principal.id}` ||
    (principal.roles ?? []).some((role) => ref === `role:${role}`) ||
    (principal.groups ?? []).some((group) => ref === `group:${group}`))
}

/** Whether `policy` covers `object` (undefined: the whole instance, covered only by unrestricted policies). */
function covers (policy: AccessPolicy, object: AccessObject | undefined): boolean {
  if (object === undefined) return (policy.namespaces ?? ['*']).includes('*') && (policy.volumes ?? ['*']).includes('*')
  // Real namespace and volume names never contain '*': this one means "all of them".
  if (object.namespace === '*' && !(policy.namespaces ?? ['*']).includes('*')) return false
  if (object.volume === '*' && !(policy.volumes ?? ['*']).includes('*')) return false
  if (!(policy.namespaces ?? ['*']).some((pattern) => patternMatches(pattern, object.namespace))) return false
  if (object.volume === undefined) return policy.volumes === undefined || policy.volumes.includes('*')
  return (policy.volumes ?? ['*']).some((pattern) => patternMatches(pattern, object.volume as string))
}

function describeObject (object: AccessObject | undefined): string {
  if (object === undefined) return 'this instance'
  if (object.namespace === '*') return 'the volumes of every namespace'
  return object.volume === undefined ? `namespace ${object.namespace}` : `volume ${object.namespace}/${object.volume}`
}

/** Stored policies and the check. */
export class AccessControl {
  readonly #db: JsonSublevel
  readonly #policies = new Map<string, AccessPolicy>()

  constructor (db: MetadataDatabase) {
    this.#db = db.sublevel('access-policies', { valueEncoding: 'json' }) as JsonSublevel
  }

  async load (): Promise<void> {
    for (const [name, policy] of await this.#db.iterator().all()) this.#policies.set(name as string, parseAccessPolicy(policy))
  }

  /** True once at least one policy exists (from then on, default deny). */
  get enforcing (): boolean { return this.#policies.size > 0 }

  policies (): AccessPolicy[] { return [...this.#policies.values()].sort((a, b) => a.name.localeCompare(b.name)) }

  policy (name: string): AccessPolicy | undefined { return this.#policies.get(name) }

  async put (policy: AccessPolicy): Promise<void> {
    await this.#db.put(policy.name, policy, SYNC)
    this.#policies.set(policy.name, policy)
  }

  async delete (name: string): Promise<void> {
    await this.#db.del(name, SYNC)
    this.#policies.delete(name)
  }

  /** Whether `principal` may do `verb` on `object`. */
  allows (principal: Principal, verb: Verb, object: AccessObject | undefined): boolean {
    if (!this.enforcing) return true
    for (const policy of this.#policies.values()) {
      if (appliesTo(policy, principal) && policy.verbs.some((granted) => grantsVerb(granted, verb)) && covers(policy, object)) return true
    }
    return false
  }

  /** Throws PERMISSION_DENIED naming the missing grant unless `allows`. */
  check (principal: Principal, verb: Verb, object: AccessObject | undefined): void {
    if (this.allows(principal, verb, object)) return
    const who = [`user:${principal.id}`, ...(principal.roles ?? []).map((r) => `role:${r}`), ...(principal.groups ?? []).map((g) => `group:${g}`)].join(', ')
    throw new GalleonError('PERMISSION_DENIED', `${principal.id} may not ${verb} on ${describeObject(object)}: no access policy grants "${verb}" there to ${who}; an administrator can add one with createAccessPolicy()`)
  }
}
