// Storage classes: the built-ins, validation of user-supplied classes, and the capability check
// that refuses to create a weaker volume than the class asks for.

import { GalleonError, describe, quoted } from '../errors.js'
import type { ReclaimPolicy, StorageClass, VolumeBindingMode } from '../types.js'
import { QOS_CLASS_PARAMETERS, qosFromParameters } from '../qos/policy.js'
import { checkPoolName } from './pools.js'
import { parseClassMountWords } from '../mount/mount-words.js'

/** Names of the classes every instance has. */
export const BUILT_IN_STORAGE_CLASSES: readonly StorageClass[] = Object.freeze([
  Object.freeze({
    name: 'fast-local-ssd',
    provisioner: 'galleonfs.io/local-ssd',
    parameters: Object.freeze({ disk_type: 'ssd', fs_type: 'ext4', encryption: 'false' }),
    reclaimPolicy: 'Delete' as const,
    volumeBindingMode: 'Immediate' as const,
    allowedTopologies: Object.freeze([]),
    mountOptions: Object.freeze([]),
    builtIn: true
  }),
  Object.freeze({
    name: 'encrypted-storage',
    provisioner: 'galleonfs.io/distributed',
    parameters: Object.freeze({ encryption: 'true', encryption_algorithm: 'AES-256-GCM', replication: '3' }),
    reclaimPolicy: 'Retain' as const,
    volumeBindingMode: 'WaitForFirstConsumer' as const,
    allowedTopologies: Object.freeze([]),
    mountOptions: Object.freeze([]),
    builtIn: true
  })
])

/** The storage class a volume gets when none is named. */
export const DEFAULT_STORAGE_CLASS = 'fast-local-ssd'

// Accepted spellings of each field: the API's camelCase and the snake_case of JSON/YAML files.
const FIELD_ALIASES: Record<string, keyof StorageClass> = {
  name: 'name',
  provisioner: 'provisioner',
  parameters: 'parameters',
  reclaimPolicy: 'reclaimPolicy',
  reclaim_policy: 'reclaimPolicy',
  volumeBindingMode: 'volumeBindingMode',
  volume_binding_mode: 'volumeBindingMode',
  allowedTopologies: 'allowedTopologies',
  allowed_topologies: 'allowedTopologies',
  mountOptions: 'mountOptions',
  mount_options: 'mountOptions'
}

const NAME_PATTERN = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/
const RECLAIM_POLICIES: readonly ReclaimPolicy[] = ['Delete', 'Retain']
const BINDING_MODES: readonly VolumeBindingMode[] = ['Immediate', 'WaitForFirstConsumer']
/** Cipher names the encryption feature will accept. */
const ENCRYPTION_ALGORITHMS = ['AES-256-GCM']

/**
 * Validates a plain object (parsed from JSON or YAML, camelCase or snake_case keys) and returns a
 * normalised `StorageClass`. Every problem is an INVALID_ARGUMENT naming the field and the fix.
 */
export function parseStorageClass (input: unknown): StorageClass {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw invalid(`a storage class must be an object, got ${describe(input)}`)
  }
  const fields: Partial<Record<keyof StorageClass, unknown>> = {}
  for (const [key, value] of Object.entries(input)) {
    // Own names only: `__proto__` or `constructor` would otherwise find Object.prototype's members.
    const field = Object.hasOwn(FIELD_ALIASES, key) ? FIELD_ALIASES[key] : undefined
    if (field === undefined) {
      throw invalid(`unknown storage class field ${quoted(key)}; allowed: ${Object.keys(FIELD_ALIASES).join(', ')}`)
    }
    if (field in fields) throw invalid(`storage class field ${JSON.stringify(key)} is given twice (camelCase and snake_case)`)
    fields[field] = value
  }

  const name = fields.name
  if (typeof name !== 'string' || !NAME_PATTERN.test(name)) {
    throw invalid(`storage class "name" must be lowercase letters, digits, '-' or '.', starting and ending with a letter or digit (max 253), got ${describe(name)}`)
  }
  const provisioner = fields.provisioner ?? 'galleonfs.io/local'
  if (typeof provisioner !== 'string' || provisioner.length === 0 || provisioner.length > 253) {
    throw invalid(`storage class "provisioner" must be a non-empty string such as "galleonfs.io/local-ssd", got ${describe(provisioner)}`)
  }
  const parameters = parseParameters(fields.parameters ?? {})
  const reclaimPolicy = fields.reclaimPolicy ?? 'Delete'
  if (!RECLAIM_POLICIES.includes(reclaimPolicy as ReclaimPolicy)) {
    throw invalid(`storage class "reclaim_policy" must be one of ${RECLAIM_POLICIES.join(', ')}, got ${describe(reclaimPolicy)}`)
  }
  const volumeBindingMode = fields.volumeBindingMode ?? 'Immediate'
  if (!BINDING_MODES.includes(volumeBindingMode as VolumeBindingMode)) {
    throw invalid(`storage class "volume_binding_mode" must be one of ${BINDING_MODES.join(', ')}, got ${describe(volumeBindingMode)}`)
  }
  // Their form here; whether a mount driver applies them, when the class is created (checkClassMountWords).
  const mountOptions = parseClassMountWords(name, fields.mountOptions)
  if (mountOptions.includes('encrypted') && parameters.encryption !== 'true') {
    throw invalid(`storage class ${name} lists the mount option "encrypted" but does not encrypt its volumes (parameter "encryption" is ${parameters.encryption === undefined ? 'not set' : `"${parameters.encryption}"`}), so every mount of them would be refused; set parameters.encryption to "true", or leave the option out`)
  }
  return {
    name,
    provisioner,
    parameters,
    reclaimPolicy: reclaimPolicy as ReclaimPolicy,
    volumeBindingMode: volumeBindingMode as VolumeBindingMode,
    allowedTopologies: parseStringList(fields.allowedTopologies, 'allowed_topologies'),
    mountOptions,
    builtIn: false
  }
}

function parseParameters (input: unknown): Record<string, string> {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw invalid(`storage class "parameters" must be an object of string values, got ${describe(input)}`)
  }
  const parameters: Record<string, string> = {}
  for (const [key, value] of Object.entries(input)) {
    if (!/^[A-Za-z0-9_.\-/]{1,128}$/.test(key)) throw invalid(`storage class parameter name ${describe(key)} must be 1-128 letters, digits, '_', '-', '.', '/'`)
    // Assigning it would set the object's prototype (or do nothing), not store a parameter.
    if (key === '__proto__') throw invalid('storage class parameter name "__proto__" is not allowed; pick another name')
    if (typeof value !== 'string' && typeof value !== 'number' && typeof value !== 'boolean') {
      throw invalid(`storage class parameter "${key}" must be a string (numbers and booleans are converted), got ${describe(value)}`)
    }
    parameters[key] = String(value)
    const meant = misspelledParameter(key)
    if (meant !== undefined) throw invalid(`storage class parameter ${describe(key)} looks like "${meant}", which GalleonFS reads: spell it "${meant}" (parameter names are snake_case, as listed in the README); under another name it would be kept but have no effect, and the class would give weaker volumes than it asks for`)
  }
  const encryption = parameters.encryption
  if (encryption !== undefined && encryption !== 'true' && encryption !== 'false') {
    throw invalid(`storage class parameter "encryption" must be "true" or "false", got ${describe(encryption)}`)
  }
  const algorithm = parameters.encryption_algorithm
  if (algorithm !== undefined && !ENCRYPTION_ALGORITHMS.includes(algorithm)) {
    throw invalid(`storage class parameter "encryption_algorithm" must be one of ${ENCRYPTION_ALGORITHMS.join(', ')}, got ${describe(algorithm)}`)
  }
  // A cipher named for volumes that would be stored in the clear: a weaker class than it reads as.
  if (algorithm !== undefined && encryption !== 'true') {
    throw invalid(`storage class parameter "encryption_algorithm" is ${describe(algorithm)} but "encryption" is ${encryption === undefined ? 'not set' : `"${encryption}"`}, so the class's volumes would not be encrypted; set encryption to "true", or leave encryption_algorithm out`)
  }
  const replication = parameters.replication
  if (replication !== undefined && !(/^[1-9]\d{0,2}$/.test(replication))) {
    throw invalid(`storage class parameter "replication" must be a whole number from 1 to 999, got ${describe(replication)}`)
  }
  const placement = parameters.placement
  if (placement !== undefined && placement !== 'spread' && placement !== 'balanced') {
    throw invalid(`storage class parameter "placement" must be "spread" or "balanced", got ${describe(placement)}`)
  }
  for (const key of ['affinity', 'anti_affinity']) {
    if (parameters[key] !== undefined) parseLabelList(parameters[key], key)
  }
  qosFromParameters(parameters)
  if (parameters.pool !== undefined) checkPoolName(parameters.pool, 'storage class parameter "pool"')
  return parameters
}

/** The parameters GalleonFS reads; any other name is kept as given (free-form, as Kubernetes allows). */
const KNOWN_PARAMETERS: readonly string[] = ['encryption', 'encryption_algorithm', 'replication', 'placement', 'affinity', 'anti_affinity', 'pool', ...QOS_CLASS_PARAMETERS]
const spelling = (name: string): string => name.toLowerCase().replace(/[_.-]/g, '')
const BY_SPELLING = new Map(KNOWN_PARAMETERS.map((name) => [spelling(name), name]))
/** Names other systems use for what a known parameter does (Longhorn's numberOfReplicas, ...). */
const SYNONYMS: ReadonlyMap<string, string> = new Map([
  ['encrypted', 'encryption'],
  ['encrypt', 'encryption'],
  ['replicas', 'replication'],
  ['replica', 'replication'],
  ['replicationfactor', 'replication'],
  ['numberofreplicas', 'replication'],
  ['storagepool', 'pool']
])

/** The known parameter that `name` spells another way (case, '_', '-', '.', or a synonym); undefined for a known or a free-form name. */
function misspelledParameter (name: string): string | undefined {
  if (KNOWN_PARAMETERS.includes(name)) return undefined
  const key = spelling(name)
  return BY_SPELLING.get(key) ?? SYNONYMS.get(key)
}

/** Node label keys, as pools and volumes spell them. */
const LABEL_KEY_PATTERN = /^[A-Za-z0-9]([A-Za-z0-9_./-]{0,251}[A-Za-z0-9])?$/

/**
 * `disk=ssd,rack=r1` as an object; INVALID_ARGUMENT naming the parameter otherwise. A key that is
 * no label key (`__proto__` would not even be stored) or is given twice is refused: dropping it
 * would place volumes with fewer constraints than the class states.
 */
function parseLabelList (value: string, key: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const pair of value.split(',').map((p) => p.trim()).filter((p) => p.length > 0)) {
    const at = pair.indexOf('=')
    if (at <= 0) throw invalid(`storage class parameter "${key}" must be comma-separated key=value labels such as "disk=ssd,rack=r1", got ${describe(value)}`)
    const label = pair.slice(0, at).trim()
    if (!LABEL_KEY_PATTERN.test(label)) throw invalid(`storage class parameter "${key}": label key ${describe(label)} must be 1-253 letters, digits, '-', '_', '.', '/', starting and ending with a letter or digit`)
    if (Object.hasOwn(out, label)) throw invalid(`storage class parameter "${key}" names label ${label} twice (${describe(value)}); give each label once`)
    out[label] = pair.slice(at + 1).trim()
  }
  return out
}

/**
 * Where a class's replicated volumes go: parameter `placement` (spread, the default, or balanced),
 * `affinity` and `anti_affinity` (node labels, `key=value,...`), and the allowed topologies (zones).
 */
export function classPlacement (storageClass: StorageClass): { strategy?: 'spread' | 'balanced', zones?: string[], affinity?: Record<string, string>, antiAffinity?: Record<string, string> } {
  const { placement, affinity, anti_affinity: antiAffinity } = storageClass.parameters
  return {
    ...(placement === 'spread' || placement === 'balanced' ? { strategy: placement } : {}),
    ...(storageClass.allowedTopologies.length > 0 ? { zones: [...storageClass.allowedTopologies] } : {}),
    ...(affinity === undefined ? {} : { affinity: parseLabelList(affinity, 'affinity') }),
    ...(antiAffinity === undefined ? {} : { antiAffinity: parseLabelList(antiAffinity, 'anti_affinity') })
  }
}

function parseStringList (input: unknown, field: string): string[] {
  if (input === undefined || input === null) return []
  if (!Array.isArray(input) || !input.every((item) => typeof item === 'string' && item.length > 0)) {
    throw invalid(`storage class "${field}" must be a list of non-empty strings, got ${describe(input)}`)
  }
  return [...input] as string[]
}

/** Replica count a class asks for (parameter `replication`, default 1). */
export function classReplicas (storageClass: StorageClass): number {
  return Number(storageClass.parameters.replication ?? '1')
}

/** Features this release provides; a class or volume asking for more is refused, never weakened. */
export const RELEASE_CAPABILITIES = { encryption: true } as const

/**
 * Refuses (never weakens) a volume this instance cannot give what its class and replica count ask
 * for: NOT_IMPLEMENTED for a feature this release lacks, INVALID_ARGUMENT for more than one copy
 * on an instance that is not in a cluster.
 */
export function assertClassSupported (storageClass: StorageClass, replicas: number, clustered = false): void {
  if (storageClass.parameters.encryption === 'true' && !RELEASE_CAPABILITIES.encryption) {
    throw new GalleonError('NOT_IMPLEMENTED', `storage class "${storageClass.name}" needs encryption at rest (${storageClass.parameters.encryption_algorithm ?? 'AES-256-GCM'}), which this release does not provide; refusing to create a weaker volume`)
  }
  if (replicas > 1 && !clustered) {
    throw new GalleonError('INVALID_ARGUMENT', `${replicas} replicas (storage class "${storageClass.name}") need copies on other nodes, but this instance is not in a cluster; open it with { cluster } (or joinCluster), or create the volume with replicas: 1. Refusing to create a weaker volume`)
  }
}

function invalid (message: string): GalleonError {
  return new GalleonError('INVALID_ARGUMENT', message)
}
