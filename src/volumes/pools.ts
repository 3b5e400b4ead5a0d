// Storage pools: named groups of nodes with a capacity that the volumes in them are provisioned
// against. Validation of pool definitions, the capacity check (NO_SPACE before anything is written)
// and the placement constraints a pool adds in a cluster.
//
// Accounting is per instance, over the volume records it holds: a volume in a pool is charged its
// provisioned size (a clone too: it may diverge completely from its source), whatever it allocates
// so far. `capacityBytes * overcommitRatio` is the most that may be provisioned (the ratio above 1
// is the thin-provisioning allowance). The check and the reservation of the bytes are one
// synchronous step, and a reservation lasts until the volume's record is stored, so concurrent
// creates cannot both take the last free bytes.

import { GalleonError, describe, quoted } from '../errors.js'
import { formatSize, parseSize } from '../size.js'
import type { StorageClass } from '../types.js'
import { holdCount } from './counts.js'

/** What the pool manager needs of the catalog (kept narrow so this module imports no catalog). */
export interface PoolCatalog {
  pools: () => StoragePool[]
  pool: (name: string) => StoragePool | undefined
  putPool: (pool: StoragePool) => Promise<void>
  deletePool: (name: string) => Promise<void>
  volumes: () => PoolVolume[]
  storageClasses: () => StorageClass[]
}

/** The fields of a volume record that pool accounting reads. */
export interface PoolVolume {
  readonly name: string
  readonly sizeBytes: number
  readonly pool?: string
}

/** A storage pool as stored and reported (see `GalleonFS.createPool`). */
export interface StoragePool {
  /** Lowercase letters, digits, '-' and '.', like a storage class name. */
  readonly name: string
  /** Bytes the pool holds. */
  readonly capacityBytes: number
  /**
   * How far provisioned sizes may exceed the capacity (thin provisioning): at most
   * `capacityBytes * overcommitRatio` bytes are provisioned. 1 (the default) means every volume's
   * full size must fit.
   */
  readonly overcommitRatio: number
  /** Cluster node ids the pool's volumes may be placed on (empty: any node). */
  readonly nodes: readonly string[]
  /** Labels and zones a node must have to hold the pool's volumes (empty: any). */
  readonly nodeSelector: { readonly labels: Readonly<Record<string, string>>, readonly zones: readonly string[] }
  readonly description: string
  readonly labels: Readonly<Record<string, string>>
  /** ISO-8601 creation time. */
  readonly createdAt: string
  /** ISO-8601 time of the last change. */
  readonly updatedAt: string
}

/** A pool with its accounting, as `getPool` and `listPools` report it. */
export interface StoragePoolStatus extends StoragePool {
  /** Most bytes that may be provisioned: `floor(capacityBytes * overcommitRatio)`. */
  readonly limitBytes: number
  /** Sum of the sizes of the volumes in the pool (on this instance). */
  readonly provisionedBytes: number
  /** Bytes those volumes really occupy (thin: written blocks and blocks kept for snapshots). */
  readonly allocatedBytes: number
  /**
   * Bytes held for creates, clones, expansions and migrations into the pool that are under way:
   * provisioned once they finish, given back if they fail.
   */
  readonly reservedBytes: number
  /** Bytes that may still be provisioned: `limitBytes - provisionedBytes - reservedBytes` (0 when over). */
  readonly freeBytes: number
  /** Volumes in the pool. */
  readonly volumes: number
}

/** What `createPool` accepts: sizes as bytes or strings such as `100G`; camelCase or snake_case keys. */
export interface CreatePoolOptions {
  name: string
  capacityBytes: number | string
  overcommitRatio?: number
  nodes?: readonly string[]
  nodeSelector?: { labels?: Record<string, string>, zones?: readonly string[] }
  description?: string
  labels?: Record<string, string>
}

/** What `updatePool` may change. Shrinking the limit below what is provisioned is refused. */
export interface UpdatePoolOptions {
  capacityBytes?: number | string
  overcommitRatio?: number
  description?: string
  labels?: Record<string, string>
}

const NAME_PATTERN = /^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$/
const NODE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/
const LABEL_KEY_PATTERN = /^[A-Za-z0-9]([A-Za-z0-9_./-]{0,251}[A-Za-z0-9])?$/
const MAX_OVERCOMMIT = 1000

const FIELD_ALIASES: Record<string, keyof CreatePoolOptions> = {
  name: 'name',
  capacityBytes: 'capacityBytes',
  capacity_bytes: 'capacityBytes',
  overcommitRatio: 'overcommitRatio',
  overcommit_ratio: 'overcommitRatio',
  nodes: 'nodes',
  nodeSelector: 'nodeSelector',
  node_selector: 'nodeSelector',
  description: 'description',
  labels: 'labels'
}

/** Validates a pool name; INVALID_ARGUMENT otherwise. */
export function checkPoolName (name: unknown, what = 'pool name'): asserts name is string {
  if (typeof name !== 'string' || !NAME_PATTERN.test(name)) {
    throw invalid(`${what} must be 1-63 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit, got ${describe(name)}`)
  }
}

/**
 * Validates a pool definition (a plain object, as from JSON or YAML) and returns it normalised,
 * without timestamps. Every problem is an INVALID_ARGUMENT naming the field and the fix.
 */
export function parsePool (input: unknown): Omit<StoragePool, 'createdAt' | 'updatedAt'> {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw invalid(`a pool is an object such as { name: 'fast', capacityBytes: '1T' }, got ${describe(input)}`)
  }
  const fields: Partial<Record<keyof CreatePoolOptions, unknown>> = {}
  for (const [key, value] of Object.entries(input)) {
    // Own names only: `__proto__` or `constructor` would otherwise find Object.prototype's members.
    const field = Object.hasOwn(FIELD_ALIASES, key) ? FIELD_ALIASES[key] : undefined
    if (field === undefined) throw invalid(`unknown pool field ${quoted(key)}; allowed: ${Object.keys(FIELD_ALIASES).join(', ')}`)
    if (field in fields) throw invalid(`pool field ${JSON.stringify(key)} is given twice (camelCase and snake_case)`)
    fields[field] = value
  }
  checkPoolName(fields.name)
  if (fields.capacityBytes === undefined) throw invalid('a pool needs capacityBytes (bytes, or a size string such as "500G")')
  const capacityBytes = parseCapacity(fields.capacityBytes)
  const overcommitRatio = parseOvercommit(fields.overcommitRatio ?? 1)
  checkLimit(capacityBytes, overcommitRatio)
  return {
    name: fields.name,
    capacityBytes,
    overcommitRatio,
    nodes: parseNodes(fields.nodes ?? []),
    nodeSelector: parseSelector(fields.nodeSelector ?? {}),
    description: parseDescription(fields.description ?? ''),
    labels: parseLabels(fields.labels ?? {}, 'pool labels')
  }
}

/** Validates the changes of `updatePool`; unknown keys and bad values are INVALID_ARGUMENT. */
export function parsePoolUpdate (input: unknown): Partial<Pick<StoragePool, 'capacityBytes' | 'overcommitRatio' | 'description' | 'labels'>> {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw invalid(`updatePool() needs an object of changes such as { capacityBytes: '2T' }, got ${describe(input)}`)
  }
  const out: { capacityBytes?: number, overcommitRatio?: number, description?: string, labels?: Record<string, string> } = {}
  const given = new Set<string>()
  for (const [key, value] of Object.entries(input)) {
    const field = Object.hasOwn(FIELD_ALIASES, key) ? FIELD_ALIASES[key] : undefined
    // As in createPool: with both spellings, one would silently win.
    if (field !== undefined && given.has(field)) throw invalid(`pool field ${JSON.stringify(key)} is given twice (camelCase and snake_case)`)
    if (field !== undefined) given.add(field)
    switch (field) {
      case 'capacityBytes': out.capacityBytes = parseCapacity(value); break
      case 'overcommitRatio': out.overcommitRatio = parseOvercommit(value); break
      case 'description': out.description = parseDescription(value); break
      case 'labels': out.labels = parseLabels(value, 'pool labels'); break
      default: throw invalid(`updatePool() can change capacityBytes, overcommitRatio, description and labels, not ${JSON.stringify(key)}; to change a pool's nodes, create another pool`)
    }
  }
  return out
}

function parseCapacity (value: unknown): number {
  if (typeof value !== 'number' && typeof value !== 'string') throw invalid(`pool capacityBytes must be bytes or a size string such as "500G", got ${describe(value)}`)
  let bytes: number
  try {
    bytes = parseSize(value)
  } catch (err) {
    throw invalid(`pool capacityBytes: ${(err as Error).message}`)
  }
  if (bytes <= 0) throw invalid(`pool capacityBytes must be more than 0, got ${describe(value)}`)
  return bytes
}

/** The limit must be an exact byte count: beyond 2^53 bytes, sums of volume sizes would round. */
function checkLimit (capacityBytes: number, overcommitRatio: number): void {
  const limit = Math.floor(capacityBytes * overcommitRatio)
  if (!Number.isSafeInteger(limit)) {
    throw invalid(`pool capacity ${sizeText(capacityBytes)} x overcommit ${overcommitRatio} is a limit of more than ${Number.MAX_SAFE_INTEGER} bytes, which cannot be counted exactly; lower capacityBytes or overcommitRatio`)
  }
}

function parseOvercommit (value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 1 || value > MAX_OVERCOMMIT) {
    throw invalid(`pool overcommitRatio must be a number from 1 (provisioned sizes must fit, the default) to ${MAX_OVERCOMMIT}, got ${describe(value)}; a ratio below 1 would leave capacity unusable, so lower capacityBytes instead`)
  }
  return value
}

function parseNodes (value: unknown): string[] {
  if (!Array.isArray(value) || !value.every((id) => typeof id === 'string' && NODE_ID_PATTERN.test(id))) {
    throw invalid(`pool nodes must be a list of cluster node ids (letters, digits, '.', '_', '-'), got ${describe(value)}`)
  }
  if (new Set(value).size !== value.length) throw invalid(`pool nodes name a node twice: ${value.join(', ')}`)
  return [...value] as string[]
}

function parseSelector (value: unknown): StoragePool['nodeSelector'] {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw invalid(`pool nodeSelector must be an object such as { labels: { disk: 'ssd' }, zones: ['zone-a'] }, got ${describe(value)}`)
  }
  for (const key of Object.keys(value)) {
    if (key !== 'labels' && key !== 'zones') throw invalid(`unknown pool nodeSelector field ${quoted(key)}; allowed: labels, zones`)
  }
  const { labels, zones } = value as { labels?: unknown, zones?: unknown }
  if (zones !== undefined && (!Array.isArray(zones) || !zones.every((zone) => typeof zone === 'string' && zone.length > 0 && zone.length <= 253))) {
    throw invalid(`pool nodeSelector.zones must be a list of zone names, got ${describe(zones)}`)
  }
  return { labels: parseLabels(labels ?? {}, 'pool nodeSelector.labels'), zones: [...new Set((zones ?? []) as string[])] }
}

function parseDescription (value: unknown): string {
  if (typeof value !== 'string' || value.length > 1024) throw invalid(`pool description must be a string of at most 1024 characters, got ${describe(value)}`)
  return value
}

function parseLabels (value: unknown, what: string): Record<string, string> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw invalid(`${what} must be an object of string values, got ${describe(value)}`)
  const out: Record<string, string> = {}
  for (const [key, label] of Object.entries(value)) {
    if (!LABEL_KEY_PATTERN.test(key)) throw invalid(`${what}: key ${describe(key)} must be 1-253 letters, digits, '-', '_', '.', '/'`)
    if (typeof label !== 'string' || label.length > 253) throw invalid(`${what}: ${key} must have a string value of at most 253 characters, got ${describe(label)}`)
    out[key] = label
  }
  return out
}

/** Placement constraints of a volume: a storage class's, narrowed by its pool's. */
export interface PoolPlacement {
  readonly strategy?: 'spread' | 'balanced'
  readonly zones?: string[]
  readonly affinity?: Record<string, string>
  readonly antiAffinity?: Record<string, string>
  readonly nodes?: string[]
}

/**
 * A class's placement narrowed to a pool's nodes, zones and labels. Refuses (INVALID_ARGUMENT)
 * combinations no node can meet: zones with nothing in common, or a label asked with two values.
 */
export function poolPlacement (pool: StoragePool, placement: Omit<PoolPlacement, 'nodes'>): PoolPlacement {
  const out: { -readonly [K in keyof PoolPlacement]: PoolPlacement[K] } = { ...placement }
  if (pool.nodes.length > 0) out.nodes = [...pool.nodes]
  const zones = pool.nodeSelector.zones
  if (zones.length > 0) {
    const narrowed = placement.zones === undefined ? [...zones] : placement.zones.filter((zone) => zones.includes(zone))
    if (narrowed.length === 0) throw invalid(`the storage class allows zones ${placement.zones?.join(', ') ?? ''} and pool ${pool.name} only ${zones.join(', ')}: no zone is in both; use a class and a pool that share a zone`)
    out.zones = narrowed
  }
  const labels = Object.entries(pool.nodeSelector.labels)
  if (labels.length > 0) {
    const affinity = { ...(placement.affinity ?? {}) }
    for (const [key, value] of labels) {
      // Own labels only: a key such as `constructor` would otherwise find Object.prototype's member.
      if (Object.hasOwn(affinity, key) && affinity[key] !== value) throw invalid(`the storage class asks for nodes with ${key}=${affinity[key]} and pool ${pool.name} for ${key}=${value}: no node has both; use a class and a pool that agree`)
      if (placement.antiAffinity?.[key] === value) throw invalid(`the storage class excludes nodes with ${key}=${value}, the only ones pool ${pool.name} may use; use a class and a pool that agree`)
      affinity[key] = value
    }
    out.affinity = affinity
  }
  return out
}

/** Whether a node (id, zone, labels) may hold volumes of a pool. */
export function poolAdmits (pool: StoragePool, node: { readonly id: string, readonly zone: string, readonly labels: Readonly<Record<string, string>> }): boolean {
  if (pool.nodes.length > 0 && !pool.nodes.includes(node.id)) return false
  if (pool.nodeSelector.zones.length > 0 && !pool.nodeSelector.zones.includes(node.zone)) return false
  return Object.entries(pool.nodeSelector.labels).every(([key, value]) => node.labels[key] === value)
}

/** The pools of an instance: definitions in the catalog, accounting over its volume records. */
export class PoolManager {
  readonly #catalog: PoolCatalog
  /** Bytes reserved per pool by creates and expansions whose records are not stored yet. */
  readonly #reserved = new Map<string, number>()
  /** The lower of the old and new limit of a pool whose update is being stored. */
  readonly #limiting = new Map<string, number>()
  /** Pools being created or deleted now (their names are taken meanwhile). */
  readonly #changing = new Set<string>()
  /** Storage classes naming a pool that are being stored now, per pool (it cannot be deleted meanwhile). */
  readonly #holds = new Map<string, number>()
  /** Updates of each pool, chained: each starts from the pool the one before it stored. */
  readonly #updates = new Map<string, Promise<unknown>>()

  constructor (catalog: PoolCatalog) {
    this.#catalog = catalog
  }

  /** A pool by name; POOL_NOT_FOUND (or INVALID_ARGUMENT for a malformed name) otherwise. */
  get (name: unknown): StoragePool {
    checkPoolName(name)
    const pool = this.#catalog.pool(name)
    if (pool === undefined || this.#changing.has(name)) throw new GalleonError('POOL_NOT_FOUND', `no storage pool ${quoted(name)}; listPools() shows the existing ones, createPool() makes one`)
    return pool
  }

  /** Every pool, by name (one being created or deleted right now is left out). */
  list (): StoragePool[] {
    return this.#catalog.pools().filter((pool) => !this.#changing.has(pool.name)).sort((a, b) => a.name.localeCompare(b.name))
  }

  /** A pool's accounting; `allocatedBytes` of a volume record comes from the engine. */
  status<V extends PoolVolume> (pool: StoragePool, allocatedBytes: (record: V) => number): StoragePoolStatus {
    const members = this.#members(pool.name) as V[]
    const provisionedBytes = members.reduce((sum, record) => sum + record.sizeBytes, 0)
    const limitBytes = limitOf(pool)
    // What `reserve` would let a create take now: bytes held by work under way are not free.
    const reservedBytes = this.#reserved.get(pool.name) ?? 0
    return {
      ...structuredClone(pool),
      limitBytes,
      provisionedBytes,
      allocatedBytes: members.reduce((sum, record) => sum + allocatedBytes(record), 0),
      reservedBytes,
      freeBytes: Math.max(0, limitBytes - provisionedBytes - reservedBytes),
      volumes: members.length
    }
  }

  /** Validates and stores a new pool; POOL_EXISTS for a taken name. */
  async create (input: unknown): Promise<StoragePool> {
    const spec = parsePool(input)
    if (this.#catalog.pool(spec.name) !== undefined || this.#changing.has(spec.name)) {
      throw new GalleonError('POOL_EXISTS', `a storage pool named ${JSON.stringify(spec.name)} already exists; pick another name, or change it with updatePool()`)
    }
    const now = new Date().toISOString()
    const pool: StoragePool = { ...spec, createdAt: now, updatedAt: now }
    this.#changing.add(pool.name)
    try {
      await this.#catalog.putPool(pool)
    } finally {
      this.#changing.delete(pool.name)
    }
    return structuredClone(pool)
  }

  /**
   * Applies validated changes; BUSY when the new limit would be below what is provisioned. Updates
   * of one pool run one after another, each on the pool the one before stored: two concurrent
   * updates of different fields both stay.
   */
  async update (name: unknown, changes: unknown): Promise<StoragePool> {
    const pool = this.get(name)
    const parsed = parsePoolUpdate(changes)
    const before = this.#updates.get(pool.name) ?? Promise.resolve()
    const run = before.then(async () => await this.#update(pool.name, parsed))
    const settled = run.catch(() => {})
    this.#updates.set(pool.name, settled)
    void settled.then(() => { if (this.#updates.get(pool.name) === settled) this.#updates.delete(pool.name) })
    return await run
  }

  async #update (name: string, parsed: ReturnType<typeof parsePoolUpdate>): Promise<StoragePool> {
    // Looked up again: an update or a deletion before this one may have changed it.
    const current = this.get(name)
    const next: StoragePool = { ...current, ...parsed, updatedAt: new Date().toISOString() }
    checkLimit(next.capacityBytes, next.overcommitRatio)
    const provisioned = this.#provisioned(current.name)
    // Bytes reserved by creates, expansions and migrations under way count too: they are provisioned
    // once those finish.
    const reserved = this.#reserved.get(current.name) ?? 0
    if (limitOf(next) < provisioned + reserved) {
      throw new GalleonError('BUSY', `pool ${current.name} has ${sizeText(provisioned)} provisioned by ${this.#members(current.name).length} volume(s)${reserved > 0 ? ` and ${sizeText(reserved)} reserved by creates, expansions or migrations under way` : ''}; a limit of ${sizeText(limitOf(next))} (capacity ${sizeText(next.capacityBytes)} x overcommit ${next.overcommitRatio}) would be below that. Delete volumes in it first, or keep the limit at least ${sizeText(provisioned + reserved)}`)
    }
    // While the new limit is stored, reservations already keep to it.
    const lower = Math.min(limitOf(current), limitOf(next))
    this.#limiting.set(current.name, lower)
    try {
      await this.#catalog.putPool(next)
    } finally {
      if (this.#limiting.get(current.name) === lower) this.#limiting.delete(current.name)
    }
    return structuredClone(next)
  }

  /** Deletes a pool no volume or storage class uses; BUSY otherwise. */
  async delete (name: unknown): Promise<StoragePool> {
    const pool = this.get(name)
    const volumes = this.#members(pool.name)
    if (volumes.length > 0 || (this.#reserved.get(pool.name) ?? 0) > 0) {
      const shown = volumes.slice(0, 3).map((record) => record.name).join(', ')
      throw new GalleonError('BUSY', `pool ${pool.name} holds ${volumes.length} volume(s)${shown === '' ? ' (being created now)' : ` (${shown}${volumes.length > 3 ? ', ...' : ''})`}; delete them first`)
    }
    const classes = this.#catalog.storageClasses().filter((storageClass) => storageClass.parameters.pool === pool.name)
    if (classes.length === 0 && (this.#holds.get(pool.name) ?? 0) > 0) {
      throw new GalleonError('BUSY', `pool ${pool.name} is named by a storage class being created now (parameter "pool"); delete that class first`)
    }
    if (classes.length > 0) {
      throw new GalleonError('BUSY', `pool ${pool.name} is named by storage class(es) ${classes.map((c) => c.name).join(', ')} (parameter "pool"); delete those classes first`)
    }
    // From here no create can reserve in it: the name reads as gone while the record is deleted.
    this.#changing.add(pool.name)
    try {
      await this.#catalog.deletePool(pool.name)
    } finally {
      this.#changing.delete(pool.name)
    }
    return pool
  }

  /**
   * Keeps a pool from being deleted while a storage class naming it is stored; call the returned
   * function once it is (or failed). POOL_NOT_FOUND when there is no such pool, or it is being deleted.
   */
  hold (poolName: string): () => void {
    return holdCount(this.#holds, this.get(poolName).name)
  }

  /**
   * The pool a new volume goes into: the one named by `createVolume({ pool })` or by its storage
   * class's `pool` parameter (both: they must agree). Undefined when neither names one.
   */
  choose (requested: unknown, storageClass: StorageClass): StoragePool | undefined {
    const fromClass = storageClass.parameters.pool
    if (requested !== undefined) checkPoolName(requested, 'createVolume() option "pool"')
    if (requested !== undefined && fromClass !== undefined && requested !== fromClass) {
      throw invalid(`storage class ${storageClass.name} puts its volumes in pool ${fromClass}, not ${String(requested)}; omit pool, or use a storage class without a "pool" parameter`)
    }
    const name = requested ?? fromClass
    if (name === undefined) return undefined
    try {
      return this.get(name)
    } catch (err) {
      if (requested === undefined && err instanceof GalleonError && err.code === 'POOL_NOT_FOUND') {
        throw new GalleonError('POOL_NOT_FOUND', `storage class ${storageClass.name} names pool ${quoted(name)}, which does not exist; create it with createPool() (on every node that holds volumes of the class)`, { cause: err })
      }
      throw err
    }
  }

  /**
   * Takes `bytes` of a pool's provisioning limit for a volume about to be recorded, or throws
   * NO_SPACE saying how much is free and what to do. Check and reservation are one synchronous
   * step; call the returned function once the volume's record is stored (or its creation failed).
   */
  reserve (poolName: string, bytes: number, what: string): () => void {
    const pool = this.get(poolName)
    const reserved = this.#reserved.get(pool.name) ?? 0
    const provisioned = this.#provisioned(pool.name)
    const limit = Math.min(limitOf(pool), this.#limiting.get(pool.name) ?? Number.POSITIVE_INFINITY)
    const free = Math.max(0, limit - provisioned - reserved)
    if (bytes > free) {
      throw new GalleonError('NO_SPACE', `storage pool ${pool.name} is full: ${what} needs ${sizeText(bytes)} but only ${sizeText(free)} of its ${sizeText(limit)} limit are free (${sizeText(provisioned)} provisioned${reserved > 0 ? `, ${sizeText(reserved)} reserved by creates, clones, expansions or migrations under way` : ''}; capacity ${sizeText(pool.capacityBytes)} x overcommit ${pool.overcommitRatio}). Nothing was written. Delete volumes in the pool, raise its capacity or overcommitRatio with updatePool(${JSON.stringify(pool.name)}, ...), or use another pool`)
    }
    return holdCount(this.#reserved, pool.name, bytes)
  }

  #members (name: string): PoolVolume[] {
    return this.#catalog.volumes().filter((record) => record.pool === name)
  }

  #provisioned (name: string): number {
    return this.#members(name).reduce((sum, record) => sum + record.sizeBytes, 0)
  }
}

function limitOf (pool: StoragePool): number {
  return Math.floor(pool.capacityBytes * pool.overcommitRatio)
}

/** `1073741824 bytes (1G)`: exact for scripts, readable for people. */
function sizeText (count: number): string {
  return `${count} bytes (${formatSize(count)})`
}

function invalid (message: string): GalleonError {
  return new GalleonError('INVALID_ARGUMENT', message)
}
