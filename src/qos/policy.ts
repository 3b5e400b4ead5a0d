// QoS policies: the shape users write (camelCase or the snake_case of config files), validation
// with an error naming each bad field, the flat `qos_*` storage-class parameters, and the policy
// that applies to a volume (its own, else its class's).

import { GalleonError, describe, quoted } from '../errors.js'

/** Ceilings a volume never exceeds (outside burst credits). Absent fields are unlimited. */
export interface QoSLimits {
  /** Reads and writes per second, together. */
  readonly iops?: number
  /** Reads per second. */
  readonly readIops?: number
  /** Writes per second. */
  readonly writeIops?: number
  /** Bytes read and written per second, together, in MB (10^6 bytes). */
  readonly throughputMBps?: number
  /** Bytes read per second, in MB. */
  readonly readThroughputMBps?: number
  /** Bytes written per second, in MB. */
  readonly writeThroughputMBps?: number
  /**
   * Latency target in milliseconds: the scheduler serves an operation of this volume ahead of
   * fair-share order once it has waited half the target (while the volume is at most a couple of
   * its operations ahead of its weighted share, so a target is no licence to starve other
   * volumes), and metrics report whether the
   * window's 99th percentile met it (`qos:latency-missed` when not).
   */
  readonly latencyMs?: number
}

/** Floors a volume gets when volumes compete for the node's I/O (see `OpenOptions.qos`). */
export interface QoSGuarantees {
  /** Operations per second served ahead of fair share while the volume has them queued. */
  readonly iops?: number
  /** Bytes per second (MB, 10^6 bytes) served ahead of fair share while queued. */
  readonly throughputMBps?: number
}

/**
 * Bursting above the limits: credits accrue while the volume runs under its limit (the unused
 * part of its rate) and are spent to run at up to `multiplier` times the limit.
 */
export interface BurstableQoS {
  /** Off leaves the limits flat. Default true when the object is given. */
  readonly enabled: boolean
  /** How long a full credit balance sustains the full multiplier, in seconds. */
  readonly durationSeconds: number
  /** Peak IOPS as a multiple of the IOPS limits (>= 1). */
  readonly iopsMultiplier: number
  /** Peak throughput as a multiple of the throughput limits (>= 1). */
  readonly throughputMultiplier: number
}

/**
 * `burstable` as a caller may give it: `enabled` defaults to true and the multipliers to 1, so only
 * `durationSeconds` is needed (snake_case keys such as `duration_seconds` are taken too).
 */
export interface BurstableQoSInput {
  readonly enabled?: boolean
  readonly durationSeconds?: number
  readonly iopsMultiplier?: number
  readonly throughputMultiplier?: number
}

/** A QoS policy as setQoSPolicy and createVolume take it: parseQoSPolicy fills in the defaults. */
export interface QoSPolicyInput extends Omit<QoSPolicy, 'burstable'> {
  readonly burstable?: BurstableQoSInput
}

/** A QoS policy, attached to a volume or, through `qos_*` parameters, to a storage class. */
export interface QoSPolicy {
  /** A label for people and metrics; not a key. */
  readonly name?: string
  readonly limits?: QoSLimits
  readonly guarantees?: QoSGuarantees
  readonly burstable?: BurstableQoS
  /** Share of the node's spare I/O relative to other volumes (default 1, at most 10000; below 0.0001 it counts as 0.0001). */
  readonly weight?: number
}

/** Where the policy in force comes from. */
export type QoSPolicySource = 'volume' | 'storage-class' | 'none'

const LIMIT_FIELDS: Record<string, keyof QoSLimits> = {
  iops: 'iops',
  readIops: 'readIops',
  read_iops: 'readIops',
  writeIops: 'writeIops',
  write_iops: 'writeIops',
  throughputMBps: 'throughputMBps',
  throughput_mbps: 'throughputMBps',
  readThroughputMBps: 'readThroughputMBps',
  read_throughput_mbps: 'readThroughputMBps',
  writeThroughputMBps: 'writeThroughputMBps',
  write_throughput_mbps: 'writeThroughputMBps',
  latencyMs: 'latencyMs',
  latency_ms: 'latencyMs'
}
const GUARANTEE_FIELDS: Record<string, keyof QoSGuarantees> = {
  iops: 'iops',
  throughputMBps: 'throughputMBps',
  throughput_mbps: 'throughputMBps'
}
const BURST_FIELDS: Record<string, keyof BurstableQoS> = {
  enabled: 'enabled',
  durationSeconds: 'durationSeconds',
  duration_seconds: 'durationSeconds',
  iopsMultiplier: 'iopsMultiplier',
  iops_multiplier: 'iopsMultiplier',
  throughputMultiplier: 'throughputMultiplier',
  throughput_multiplier: 'throughputMultiplier'
}
const POLICY_FIELDS = new Set(['name', 'limits', 'guarantees', 'burstable', 'weight'])
/** Sanity ceilings: far above any device, low enough to catch a unit mix-up. */
const MAX_IOPS = 1e9
const MAX_MBPS = 1e7

/**
 * Validates a QoS policy given as a plain object (camelCase, or snake_case as in YAML/TOML files)
 * and returns it normalised. Every problem is an INVALID_ARGUMENT naming the field and the fix.
 */
export function parseQoSPolicy (input: unknown): QoSPolicy {
  const fields = plainObject(input, 'a QoS policy')
  for (const key of Object.keys(fields)) {
    if (!POLICY_FIELDS.has(key)) throw invalid(`unknown QoS policy field ${quoted(key)}; allowed: ${[...POLICY_FIELDS].join(', ')}`)
  }
  const out: { -readonly [K in keyof QoSPolicy]: QoSPolicy[K] } = {}
  if (fields.name !== undefined) {
    if (typeof fields.name !== 'string' || fields.name.length === 0 || fields.name.length > 128) throw invalid(`QoS policy "name" must be a string of 1-128 characters, got ${describe(fields.name)}`)
    out.name = fields.name
  }
  if (fields.limits !== undefined) {
    const limits = mapFields(plainObject(fields.limits, 'QoS "limits"'), LIMIT_FIELDS, 'limits') as Record<keyof QoSLimits, unknown>
    const parsed: Record<string, number> = {}
    for (const [field, value] of Object.entries(limits)) {
      const ceiling = field.endsWith('Iops') || field === 'iops' ? MAX_IOPS : field === 'latencyMs' ? 3_600_000 : MAX_MBPS
      parsed[field] = positive(value, `limits.${field}`, ceiling)
    }
    if (Object.keys(parsed).length > 0) out.limits = parsed
  }
  if (fields.guarantees !== undefined) {
    const guarantees = mapFields(plainObject(fields.guarantees, 'QoS "guarantees"'), GUARANTEE_FIELDS, 'guarantees') as Record<keyof QoSGuarantees, unknown>
    const parsed: Record<string, number> = {}
    for (const [field, value] of Object.entries(guarantees)) parsed[field] = positive(value, `guarantees.${field}`, field === 'iops' ? MAX_IOPS : MAX_MBPS)
    if (Object.keys(parsed).length > 0) out.guarantees = parsed
  }
  if (fields.burstable !== undefined && fields.burstable !== null) {
    const burst = mapFields(plainObject(fields.burstable, 'QoS "burstable"'), BURST_FIELDS, 'burstable') as Partial<Record<keyof BurstableQoS, unknown>>
    const enabled = burst.enabled ?? true
    if (typeof enabled !== 'boolean') throw invalid(`QoS burstable.enabled must be true or false, got ${describe(enabled)}`)
    const iopsMultiplier = multiplier(burst.iopsMultiplier, 'burstable.iops_multiplier')
    const throughputMultiplier = multiplier(burst.throughputMultiplier, 'burstable.throughput_multiplier')
    if (burst.durationSeconds !== undefined) {
      const durationSeconds = positive(burst.durationSeconds, 'burstable.duration_seconds', 86_400)
      out.burstable = { enabled, durationSeconds, iopsMultiplier, throughputMultiplier }
    } else if (enabled) {
      throw invalid('QoS burstable needs duration_seconds: how long a full credit balance lasts at the full multiplier (e.g. 300)')
    }
    // { enabled: false } alone means flat limits, as no burstable does: nothing to keep.
  }
  if (fields.weight !== undefined) out.weight = positive(fields.weight, 'weight', 10_000)

  const { limits, guarantees } = out
  if (guarantees?.iops !== undefined) {
    const cap = Math.min(limits?.iops ?? Infinity, (limits?.readIops ?? Infinity) + (limits?.writeIops ?? Infinity))
    if (guarantees.iops > cap) throw invalid(`QoS guarantees.iops (${guarantees.iops}) is above the IOPS limit (${cap}): a floor cannot exceed the ceiling; raise limits.iops or lower the guarantee`)
  }
  if (guarantees?.throughputMBps !== undefined) {
    const cap = Math.min(limits?.throughputMBps ?? Infinity, (limits?.readThroughputMBps ?? Infinity) + (limits?.writeThroughputMBps ?? Infinity))
    if (guarantees.throughputMBps > cap) throw invalid(`QoS guarantees.throughput_mbps (${guarantees.throughputMBps}) is above the throughput limit (${cap}): raise limits.throughput_mbps or lower the guarantee`)
  }
  if (out.burstable?.enabled === true && limits === undefined) {
    throw invalid('QoS burstable needs limits to burst above; add limits.iops or limits.throughput_mbps, or drop burstable')
  }
  return out
}

/** Storage-class parameters that describe a QoS policy, and the policy field each fills. */
const CLASS_PARAMETERS: Record<string, (policy: MutablePolicy, value: number | boolean) => void> = {
  qos_limit_iops: (p, v) => { p.limits.iops = v },
  qos_limit_read_iops: (p, v) => { p.limits.read_iops = v },
  qos_limit_write_iops: (p, v) => { p.limits.write_iops = v },
  qos_limit_throughput_mbps: (p, v) => { p.limits.throughput_mbps = v },
  qos_limit_read_throughput_mbps: (p, v) => { p.limits.read_throughput_mbps = v },
  qos_limit_write_throughput_mbps: (p, v) => { p.limits.write_throughput_mbps = v },
  qos_limit_latency_ms: (p, v) => { p.limits.latency_ms = v },
  qos_guarantee_iops: (p, v) => { p.guarantees.iops = v },
  qos_guarantee_throughput_mbps: (p, v) => { p.guarantees.throughput_mbps = v },
  qos_burst_enabled: (p, v) => { p.burstable.enabled = v },
  qos_burst_duration_seconds: (p, v) => { p.burstable.duration_seconds = v },
  qos_burst_iops_multiplier: (p, v) => { p.burstable.iops_multiplier = v },
  qos_burst_throughput_multiplier: (p, v) => { p.burstable.throughput_multiplier = v },
  qos_weight: (p, v) => { p.weight = v }
}
interface MutablePolicy { limits: Record<string, unknown>, guarantees: Record<string, unknown>, burstable: Record<string, unknown>, weight?: unknown }

/** The names of the flat QoS parameters of a storage class. */
export const QOS_CLASS_PARAMETERS: readonly string[] = Object.freeze(Object.keys(CLASS_PARAMETERS))

/**
 * The QoS policy of a storage class's flat parameters (`qos_limit_iops: "1000"`,
 * `qos_guarantee_iops`, `qos_burst_duration_seconds`, ... see the README), or undefined when it
 * has none. Unknown `qos_*` names and bad values are INVALID_ARGUMENT.
 */
export function qosFromParameters (parameters: Readonly<Record<string, string>>): QoSPolicy | undefined {
  const draft: MutablePolicy = { limits: {}, guarantees: {}, burstable: {} }
  let any = false
  for (const [key, raw] of Object.entries(parameters)) {
    if (!key.startsWith('qos_')) continue
    const apply = CLASS_PARAMETERS[key]
    if (apply === undefined) throw invalid(`unknown storage class parameter ${quoted(key)}; QoS parameters are ${Object.keys(CLASS_PARAMETERS).join(', ')}`)
    let value: number | boolean
    if (key === 'qos_burst_enabled') {
      if (raw !== 'true' && raw !== 'false') throw invalid(`storage class parameter "qos_burst_enabled" must be "true" or "false", got ${describe(raw)}`)
      value = raw === 'true'
    } else {
      value = Number(raw)
      if (raw.trim() === '' || !Number.isFinite(value)) throw invalid(`storage class parameter ${JSON.stringify(key)} must be a number, got ${describe(raw)}`)
    }
    apply(draft, value)
    any = true
  }
  if (!any) return undefined
  const policy: Record<string, unknown> = {}
  if (Object.keys(draft.limits).length > 0) policy.limits = draft.limits
  if (Object.keys(draft.guarantees).length > 0) policy.guarantees = draft.guarantees
  if (Object.keys(draft.burstable).length > 0) policy.burstable = draft.burstable
  if (draft.weight !== undefined) policy.weight = draft.weight
  try {
    return parseQoSPolicy(policy)
  } catch (err) {
    throw invalid(`storage class QoS parameters: ${(err as Error).message}`)
  }
}

/** True when a policy asks for nothing the I/O path enforces or watches. */
export function isEmptyPolicy (policy: QoSPolicy | undefined): boolean {
  return policy === undefined || (policy.limits === undefined && policy.guarantees === undefined && policy.weight === undefined)
}

function mapFields<T> (input: Record<string, unknown>, aliases: Record<string, T>, where: string): Partial<Record<string & T, unknown>> {
  const out: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(input)) {
    // Own properties only: `constructor`, `toString` or `__proto__` would otherwise find Object.prototype's.
    const field = Object.hasOwn(aliases, key) ? aliases[key] as string : undefined
    if (field === undefined) throw invalid(`unknown QoS ${where} field ${quoted(key)}; allowed: ${Object.keys(aliases).join(', ')}`)
    if (field in out) throw invalid(`QoS ${where} field ${JSON.stringify(key)} is given twice (camelCase and snake_case)`)
    if (value !== undefined && value !== null) out[field] = value
  }
  return out as Partial<Record<string & T, unknown>>
}

function plainObject (input: unknown, what: string): Record<string, unknown> {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) throw invalid(`${what} must be an object, got ${describe(input)}`)
  // A Map, a Date or a class instance has no own enumerable fields to read: taken as {}, it
  // replaced the storage class's policy with none.
  const prototype = Object.getPrototypeOf(input) as unknown
  if (prototype !== Object.prototype && prototype !== null) {
    throw invalid(`${what} must be a plain object such as { limits: { iops: 1000 } }, got ${describe(input)} (a ${(input as object).constructor?.name ?? 'non-plain object'})`)
  }
  return input as Record<string, unknown>
}

function positive (value: unknown, field: string, ceiling: number): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || value > ceiling) {
    throw invalid(`QoS ${field} must be a number above 0 and at most ${ceiling}, got ${describe(value)}`)
  }
  return value
}

function multiplier (value: unknown, field: string): number {
  if (value === undefined) return 1
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 1 || value > 100) {
    throw invalid(`QoS ${field} must be a number from 1 to 100 (peak as a multiple of the limit), got ${describe(value)}`)
  }
  return value
}

function invalid (message: string): GalleonError {
  return new GalleonError('INVALID_ARGUMENT', message)
}
