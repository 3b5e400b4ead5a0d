// The driver registry: block stores, backup targets, key providers and mount drivers known by name,
// each a small descriptor (name, the options it accepts, create(), isAvailable()) in the manner of
// ZenFS backends, so that GalleonFS.open() and the daemon's configuration can pick them by name.

import { GalleonError, describe } from './errors.js'
import type { BackupTarget, BlockStore, KeyProvider, MountDriver } from './drivers.js'
import { BUILT_IN_DRIVERS } from './built-in-drivers.js'

/** What a driver of each kind is. */
export interface DriverTypes {
  blockStore: BlockStore
  backupTarget: BackupTarget
  keyProvider: KeyProvider
  mountDriver: MountDriver
}

/** The kinds of driver the registry holds. */
export type DriverKind = keyof DriverTypes

/** Every driver kind, in the order listings show them. */
export const DRIVER_KINDS: readonly DriverKind[] = Object.freeze(['blockStore', 'backupTarget', 'keyProvider', 'mountDriver'])

/** JavaScript types an option value may have (`object` is a plain object, `array` an array). */
export type DriverOptionType = 'string' | 'number' | 'boolean' | 'object' | 'array' | 'function'

/** One option a driver accepts. */
export interface DriverOption {
  /** Accepted type or types of the value; any when left out. */
  readonly type?: DriverOptionType | readonly DriverOptionType[]
  /** The option must be given. */
  readonly required?: boolean
  /** What the option does, for listings and error messages. */
  readonly description?: string
  /** Further checks of a given value: throws (any error; its message is reported) when it is wrong. */
  readonly validate?: (value: unknown) => void
}

/** What `create()` learns about the instance it creates a driver for. */
export interface DriverContext {
  /** The storage path GalleonFS was opened with, if any: a driver may keep its data beneath it. */
  readonly storagePath?: string
  /** True when GalleonFS was opened with `{ inMemory: true }`. */
  readonly inMemory: boolean
  /**
   * Takes the errors of a driver's background work (compaction, say), which no caller hears: the
   * instance reports them as `io:error` events with no volume. Errors reported before `open()`
   * returns are emitted once it has.
   */
  readonly reportBackgroundError?: (err: unknown) => void
}

/**
 * Describes a driver to {@link registerDriver}: its kind and name, the options it accepts, how to
 * create one, and whether it can work on this machine.
 *
 * ```ts
 * registerDriver({
 *   kind: 'blockStore',
 *   name: 'my-store',
 *   options: { location: { type: 'string', required: true } },
 *   create: (options) => new MyStore(options)
 * })
 * ```
 */
export interface DriverDescriptor<K extends DriverKind = DriverKind, O extends object = Record<string, unknown>> {
  /** Which interface the created driver implements. */
  readonly kind: K
  /**
   * The name configurations use: 1 to 63 letters, digits, '.', '_' or '-', starting with a letter
   * or a digit. Unique per kind.
   */
  readonly name: string
  /** One line for listings. */
  readonly description?: string
  /**
   * The options `create()` accepts, by name. When given, an option not listed here is refused, as
   * is a missing required one or a value of the wrong type, before `create()` is called. When left
   * out, every option is passed through unchecked.
   */
  readonly options?: { readonly [name in keyof O & string]-?: DriverOption }
  /**
   * Creates a driver (closed, for kinds that have open()): GalleonFS opens and closes it. Throws a
   * GalleonError (INVALID_ARGUMENT) for options it cannot use.
   */
  create (options: O, context: DriverContext): DriverTypes[K] | Promise<DriverTypes[K]>
  /**
   * Whether the driver can work here (a native module loads, a device exists). Asked when a driver
   * is created, never at registration or import; a driver without it counts as available.
   */
  isAvailable? (): boolean | Promise<boolean>
}

/** A registered descriptor, as {@link listDrivers} and {@link getDriver} return it. */
export type RegisteredDriver<K extends DriverKind = DriverKind> = DriverDescriptor<K> & {
  /** True for the drivers that come with GalleonFS; they cannot be unregistered or replaced. */
  readonly builtIn: boolean
}

/** Names a registered driver and the options to create it with (as open() and configurations do). */
export interface DriverRef {
  /** The registered name. */
  readonly driver: string
  /** Options for its `create()`. */
  readonly options?: Readonly<Record<string, unknown>>
}

const KIND_LABELS: Record<DriverKind, string> = { blockStore: 'block store', backupTarget: 'backup target', keyProvider: 'key provider', mountDriver: 'mount driver' }
const OPTION_TYPES: readonly DriverOptionType[] = ['string', 'number', 'boolean', 'object', 'array', 'function']
const DESCRIPTOR_KEYS = new Set(['kind', 'name', 'description', 'options', 'create', 'isAvailable'])
const OPTION_KEYS = new Set(['type', 'required', 'description', 'validate'])
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/

/** Methods every driver of a kind has (checked on what create() returns). */
const REQUIRED_MEMBERS: Record<DriverKind, readonly string[]> = {
  blockStore: ['open', 'close', 'get', 'batch', 'sync', 'addresses', 'deleteVolume', 'stats'],
  backupTarget: ['open', 'close', 'hasChunk', 'putChunk', 'getChunk', 'deleteChunk', 'listChunks', 'putManifest', 'getManifest', 'deleteManifest', 'listManifests'],
  keyProvider: ['wrap', 'unwrap'],
  mountDriver: ['mount', 'unmount']
}

/** Registered drivers by kind, then name, in registration order (built-ins first). */
const registry = new Map<DriverKind, Map<string, RegisteredDriver>>(DRIVER_KINDS.map((kind) => [kind, new Map()]))

function checkKind (kind: unknown, where: string): asserts kind is DriverKind {
  if (typeof kind !== 'string' || !DRIVER_KINDS.includes(kind as DriverKind)) {
    throw new GalleonError('INVALID_ARGUMENT', `${where}: kind must be one of ${DRIVER_KINDS.map((k) => `'${k}'`).join(', ')}, got ${describe(kind)}`)
  }
}

function checkName (name: unknown, where: string): asserts name is string {
  if (typeof name !== 'string' || !NAME.test(name)) {
    throw new GalleonError('INVALID_ARGUMENT', `${where}: a driver name is 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or a digit (such as 'acme-s3'), got ${describe(name)}`)
  }
}

function isPlainObject (value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false
  const prototype = Object.getPrototypeOf(value)
  return prototype === Object.prototype || prototype === null
}

function typeOf (value: unknown): DriverOptionType | 'other' {
  if (Array.isArray(value)) return 'array'
  if (isPlainObject(value)) return 'object'
  const type = typeof value
  return type === 'string' || type === 'number' || type === 'boolean' || type === 'function' ? type : 'other'
}

function checkDescriptor (descriptor: unknown): asserts descriptor is DriverDescriptor {
  if (descriptor === null || typeof descriptor !== 'object') {
    throw new GalleonError('INVALID_ARGUMENT', `registerDriver() needs a descriptor { kind, name, create(options, context), options?, isAvailable?(), description? }, got ${describe(descriptor)}`)
  }
  const d = descriptor as Record<string, unknown>
  checkKind(d.kind, 'registerDriver()')
  checkName(d.name, `registerDriver() of a ${KIND_LABELS[d.kind]}`)
  const where = `registerDriver() of ${KIND_LABELS[d.kind]} '${d.name}'`
  const unknown = Object.keys(d).filter((key) => !DESCRIPTOR_KEYS.has(key))
  if (unknown.length > 0) throw new GalleonError('INVALID_ARGUMENT', `${where}: unknown descriptor key(s) ${unknown.join(', ')}; a descriptor has ${[...DESCRIPTOR_KEYS].join(', ')}`)
  if (typeof d.create !== 'function') throw new GalleonError('INVALID_ARGUMENT', `${where}: create must be a function (options, context) => driver, got ${describe(d.create)}`)
  if (d.isAvailable !== undefined && typeof d.isAvailable !== 'function') throw new GalleonError('INVALID_ARGUMENT', `${where}: isAvailable must be a function returning a boolean (or a promise of one), got ${describe(d.isAvailable)}`)
  if (d.description !== undefined && typeof d.description !== 'string') throw new GalleonError('INVALID_ARGUMENT', `${where}: description must be a string, got ${describe(d.description)}`)
  if (d.options === undefined) return
  if (!isPlainObject(d.options)) throw new GalleonError('INVALID_ARGUMENT', `${where}: options must be an object of option specs such as { location: { type: 'string', required: true } }, got ${describe(d.options)}`)
  for (const [option, spec] of Object.entries(d.options)) {
    const at = `${where}: option ${option}`
    if (!isPlainObject(spec)) throw new GalleonError('INVALID_ARGUMENT', `${at} must be a spec { type?, required?, description?, validate? }, got ${describe(spec)}`)
    const extra = Object.keys(spec).filter((key) => !OPTION_KEYS.has(key))
    if (extra.length > 0) throw new GalleonError('INVALID_ARGUMENT', `${at}: unknown key(s) ${extra.join(', ')}; an option spec has ${[...OPTION_KEYS].join(', ')}`)
    const types = spec.type === undefined ? [] : Array.isArray(spec.type) ? spec.type : [spec.type]
    if (types.some((type) => !OPTION_TYPES.includes(type as DriverOptionType)) || (Array.isArray(spec.type) && types.length === 0)) {
      throw new GalleonError('INVALID_ARGUMENT', `${at}: type must be one of ${OPTION_TYPES.join(', ')} or a list of them, got ${describe(spec.type)}`)
    }
    if (spec.required !== undefined && typeof spec.required !== 'boolean') throw new GalleonError('INVALID_ARGUMENT', `${at}: required must be true or false, got ${describe(spec.required)}`)
    if (spec.validate !== undefined && typeof spec.validate !== 'function') throw new GalleonError('INVALID_ARGUMENT', `${at}: validate must be a function that throws for a wrong value, got ${describe(spec.validate)}`)
    if (spec.description !== undefined && typeof spec.description !== 'string') throw new GalleonError('INVALID_ARGUMENT', `${at}: description must be a string, got ${describe(spec.description)}`)
  }
}

function store (descriptor: DriverDescriptor, builtIn: boolean): RegisteredDriver {
  const registered = Object.freeze({
    ...descriptor,
    ...(descriptor.options === undefined ? {} : { options: Object.freeze({ ...descriptor.options }) }),
    builtIn
  }) as RegisteredDriver
  registry.get(descriptor.kind)?.set(descriptor.name, registered)
  return registered
}

for (const descriptor of BUILT_IN_DRIVERS) store(descriptor as DriverDescriptor, true)

/**
 * Registers a driver under its kind and name, so that `GalleonFS.open()` (`backend: 'name'`,
 * `backupTarget: { driver }`, `keyProvider: { driver }`, `mount: 'name'`) and the daemon's
 * configuration can use it. Refuses (INVALID_ARGUMENT) a malformed descriptor and a name already
 * registered for that kind; built-in drivers cannot be replaced. Nothing is created or loaded here:
 * `isAvailable()` and `create()` run when a driver is created.
 */
export function registerDriver<K extends DriverKind, O extends object> (descriptor: DriverDescriptor<K, O>): RegisteredDriver<K> {
  checkDescriptor(descriptor)
  const existing = registry.get(descriptor.kind)?.get(descriptor.name)
  if (existing !== undefined) {
    const label = KIND_LABELS[descriptor.kind]
    if (existing.builtIn) throw new GalleonError('INVALID_ARGUMENT', `'${descriptor.name}' is a built-in ${label} and cannot be replaced; register yours under another name`)
    throw new GalleonError('INVALID_ARGUMENT', `a ${label} named '${descriptor.name}' is registered already; choose another name, or call unregisterDriver('${descriptor.kind}', '${descriptor.name}') first`)
  }
  return store(descriptor as unknown as DriverDescriptor, false) as RegisteredDriver<K>
}

/**
 * Removes a registered driver; returns whether one was registered under that name. Instances
 * created earlier keep working. Built-in drivers cannot be removed (INVALID_ARGUMENT).
 */
export function unregisterDriver (kind: DriverKind, name: string): boolean {
  checkKind(kind, 'unregisterDriver()')
  checkName(name, 'unregisterDriver()')
  const drivers = registry.get(kind) as Map<string, RegisteredDriver>
  if (drivers.get(name)?.builtIn === true) throw new GalleonError('INVALID_ARGUMENT', `'${name}' is a built-in ${KIND_LABELS[kind]} and cannot be unregistered`)
  return drivers.delete(name)
}

/** The registered drivers, of one kind or of all, built-ins first, then in registration order. */
export function listDrivers (kind?: DriverKind): RegisteredDriver[] {
  if (kind !== undefined) checkKind(kind, 'listDrivers()')
  return (kind === undefined ? DRIVER_KINDS : [kind]).flatMap((k) => [...(registry.get(k) as Map<string, RegisteredDriver>).values()])
}

/** The driver registered under `name` for `kind`, or undefined. */
export function getDriver<K extends DriverKind> (kind: K, name: string): RegisteredDriver<K> | undefined {
  checkKind(kind, 'getDriver()')
  if (typeof name !== 'string') return undefined
  return registry.get(kind)?.get(name) as RegisteredDriver<K> | undefined
}

/** The driver registered under `name`, or INVALID_ARGUMENT naming the registered ones. */
function lookUp<K extends DriverKind> (kind: K, name: unknown, what: string): RegisteredDriver<K> {
  const label = KIND_LABELS[kind]
  const names = [...(registry.get(kind) as Map<string, RegisteredDriver>).keys()]
  const found = typeof name === 'string' ? getDriver(kind, name) : undefined
  if (found === undefined) {
    throw new GalleonError('INVALID_ARGUMENT', `${what} ${describe(name)} is not a registered ${label}; registered ${label}s: ${names.join(', ')} (registerDriver({ kind: '${kind}', name, create }) adds one)`)
  }
  return found
}

/**
 * Checks `options` against what the driver registered under `name` accepts: INVALID_ARGUMENT for an
 * unknown driver (naming the registered ones), an unknown or missing option, or a wrong value.
 * `what` names the setting in messages (default: the kind).
 */
export function checkDriverOptions (kind: DriverKind, name: string, options: unknown = {}, what?: string): void {
  checkKind(kind, 'checkDriverOptions()')
  const descriptor = lookUp(kind, name, what ?? KIND_LABELS[kind])
  checkOptions(descriptor, options)
}

function checkOptions (descriptor: RegisteredDriver, options: unknown): asserts options is Record<string, unknown> {
  const where = `${KIND_LABELS[descriptor.kind]} '${descriptor.name}'`
  if (!isPlainObject(options)) throw new GalleonError('INVALID_ARGUMENT', `the options of ${where} must be an object, got ${describe(options)}`)
  const specs = descriptor.options as Record<string, DriverOption> | undefined
  if (specs === undefined) return
  const accepted = Object.keys(specs)
  for (const [key, value] of Object.entries(options)) {
    const spec = specs[key]
    if (spec === undefined) {
      throw new GalleonError('INVALID_ARGUMENT', `${where} has no option ${key}; ${accepted.length === 0 ? 'it takes no options' : `it accepts ${accepted.join(', ')}`}`)
    }
    if (value === undefined) continue
    const types = spec.type === undefined ? [] : Array.isArray(spec.type) ? spec.type as DriverOptionType[] : [spec.type as DriverOptionType]
    const actual = typeOf(value)
    if (types.length > 0 && !types.includes(actual as DriverOptionType)) {
      throw new GalleonError('INVALID_ARGUMENT', `option ${key} of ${where} must be ${types.map((t) => t === 'array' || t === 'object' ? `an ${t}` : `a ${t}`).join(' or ')}, got ${describe(value)}${spec.description === undefined ? '' : ` (${spec.description})`}`)
    }
    if (spec.validate !== undefined) {
      try {
        spec.validate(value)
      } catch (err) {
        throw new GalleonError('INVALID_ARGUMENT', `option ${key} of ${where}: ${(err as Error)?.message ?? String(err)}`, { cause: err })
      }
    }
  }
  const missing = accepted.filter((key) => specs[key]?.required === true && options[key] === undefined)
  if (missing.length > 0) throw new GalleonError('INVALID_ARGUMENT', `${where} needs option(s) ${missing.join(', ')}${missing.map((key) => specs[key]?.description).filter((d) => d !== undefined).map((d) => ` (${d as string})`).join('')}`)
}

/**
 * Creates a driver by its registered name: checks the options, asks `isAvailable()` (an unavailable
 * driver fails with BACKEND_UNAVAILABLE saying so), calls `create()`, and checks that the result has
 * the methods of its kind. `what` names the setting in messages, such as `backend`.
 */
export async function createDriver<K extends DriverKind> (kind: K, name: string, options: Readonly<Record<string, unknown>> = {}, context: DriverContext = { inMemory: false }, what?: string): Promise<DriverTypes[K]> {
  checkKind(kind, 'createDriver()')
  const label = KIND_LABELS[kind]
  const descriptor = lookUp(kind, name, what ?? label)
  checkOptions(descriptor, options)
  if (descriptor.isAvailable !== undefined) {
    let available: boolean
    let reason = ''
    try {
      available = await descriptor.isAvailable() === true
    } catch (err) {
      available = false
      reason = `: ${(err as Error)?.message ?? String(err)}`
    }
    if (!available) {
      const others = [...(registry.get(kind) as Map<string, RegisteredDriver>).keys()].filter((other) => other !== name)
      throw new GalleonError('BACKEND_UNAVAILABLE', `the ${label} '${name}'${descriptor.description === undefined ? '' : ` (${descriptor.description})`} is not available on this machine${reason}; install what it needs, or choose another ${label}: ${others.join(', ')}`)
    }
  }
  let driver: unknown
  try {
    driver = await descriptor.create({ ...options }, Object.freeze({ ...context }))
  } catch (err) {
    if (err instanceof GalleonError) throw err
    throw new GalleonError('IO_ERROR', `could not create the ${label} '${name}': ${(err as Error)?.message ?? String(err)}`, { cause: err })
  }
  const record = driver as Record<string, unknown> | null
  const missing = record === null || typeof record !== 'object' ? ['(everything)'] : REQUIRED_MEMBERS[kind].filter((member) => typeof record[member] !== 'function')
  if (record !== null && typeof record === 'object' && typeof record.name !== 'string') missing.push('name')
  if (kind === 'blockStore' && record !== null && typeof record === 'object' && (record.supports === null || typeof record.supports !== 'object')) missing.push('supports')
  if (missing.length > 0) {
    throw new GalleonError('INVALID_ARGUMENT', `the create() of ${label} '${name}' returned ${describe(driver)} without ${missing.join(', ')}; it must return a ${label} (${REQUIRED_MEMBERS[kind].join(', ')})`)
  }
  return driver as DriverTypes[K]
}

/** True when `value` has the shape of a {@link DriverRef} (an object with a `driver` key). */
export function isDriverRef (value: unknown): value is DriverRef {
  return value !== null && typeof value === 'object' && Object.prototype.hasOwnProperty.call(value, 'driver')
}

/** Checks a {@link DriverRef} given for setting `what`: a name and an options object, nothing else. */
export function checkDriverRef (kind: DriverKind, ref: DriverRef, what: string): void {
  const extra = Object.keys(ref).filter((key) => key !== 'driver' && key !== 'options')
  if (extra.length > 0) throw new GalleonError('INVALID_ARGUMENT', `${what} { driver, options } has unknown key(s) ${extra.join(', ')}`)
  if (typeof ref.driver !== 'string') throw new GalleonError('INVALID_ARGUMENT', `${what}.driver must be the name of a registered ${KIND_LABELS[kind]}, got ${describe(ref.driver)}`)
  checkDriverOptions(kind, ref.driver, ref.options ?? {}, what)
}
