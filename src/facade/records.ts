// Module-level helpers of the facade: records turned into what callers and other nodes see
// (Volume, VolumeSpec, engine views) and checks of names and labels.

import { GalleonError, describe, quoted } from '../errors.js'
import type { View } from '../engine/engine.js'
import type { ReplicationManager } from '../replication/manager.js'
import type { VolumeSpec } from '../replication/records.js'
import { VolumeState, type StorageClass, type Volume } from '../types.js'
import { looksLikeId, namespaceOf, type SnapshotRecord, type VolumeRecord } from '../volumes/catalog.js'

/** What another node needs to create its copy of a volume. */
export function withoutQoS (spec: VolumeSpec): VolumeSpec {
  const { qos: _qos, ...rest } = spec
  return rest
}

/** A volume record as the cluster records it (see VolumeSpec). */
export function specOf (record: VolumeRecord): VolumeSpec {
  return { id: record.id, name: record.name, namespace: namespaceOf(record), type: record.type, sizeBytes: record.sizeBytes, blockSize: record.blockSize, storageClass: record.storageClass, replicas: record.replicas, accessModes: [...record.accessModes], labels: { ...record.labels }, encrypted: record.encrypted === true, ...(record.pool === undefined ? {} : { pool: record.pool }), ...(record.qos === undefined ? {} : { qos: record.qos }) }
}

/**
 * Whether this node's copy of a volume is encrypted: when the volume is (its record says so), or
 * when this node's class of its name encrypts (a copy encrypted where the volume is not leaks
 * nothing; the reverse would store its plaintext here). `current`: whether the copy being
 * converted is encrypted now; a record that does not say (written by a release before the field)
 * then keeps it so, since the volume may well be encrypted on its primary.
 */
export function copyEncrypted (spec: VolumeSpec, localClass: StorageClass, current = false): boolean {
  return spec.encrypted === true || localClass.parameters.encryption === 'true' || (spec.encrypted === undefined && current)
}

/** A volume record as callers see it. */
export function toVolume (record: VolumeRecord): Volume {
  return {
    id: record.id,
    name: record.name,
    namespace: namespaceOf(record),
    type: record.type,
    state: record.state,
    sizeBytes: record.sizeBytes,
    blockSize: record.blockSize,
    storageClass: record.storageClass,
    replicas: record.replicas,
    encrypted: record.encrypted === true,
    accessModes: [...record.accessModes],
    labels: { ...record.labels },
    createdAt: record.createdAt,
    updatedAt: record.updatedAt,
    ...(record.source === undefined ? {} : { source: { ...record.source } }),
    ...(record.qos === undefined ? {} : { qos: structuredClone(record.qos) }),
    ...(record.pool === undefined ? {} : { pool: record.pool })
  }
}

/** A volume as callers see it: a replicated one short of in-sync copies is Degraded. */
export function volumeView (host: { readonly replication: ReplicationManager | undefined }, record: VolumeRecord): Volume {
  const volume = toVolume(record)
  if (record.replication === undefined || volume.state !== VolumeState.Available) return volume
  const status = host.replication?.status(record.id)
  return status === undefined || status.degraded ? { ...volume, state: VolumeState.Degraded } : volume
}

/**
 * Throws INVALID_ARGUMENT unless `sizeBytes` is a positive multiple of the block size. `given` is
 * the size as the caller wrote it, so that one written with a unit ("2K") is not said to lack one.
 */
export function checkVolumeSize (blockSize: number, sizeBytes: number, given: number | string = sizeBytes): void {
  if (sizeBytes === 0 || sizeBytes % blockSize !== 0) {
    // Rounded up, unless that passes the largest safe integer (the suggestion must itself be accepted).
    const up = Math.ceil(sizeBytes / blockSize) * blockSize
    const suggested = Math.max(blockSize, up <= Number.MAX_SAFE_INTEGER ? up : Math.floor(sizeBytes / blockSize) * blockSize)
    // A size below one block most likely lost its unit ("10" meant as 10 GiB): say so.
    // (Any size parseSize took without a unit letter: "10", "10B", "10.0" alike.)
    const unitless = typeof given === 'number' || !/[kmgtp]/i.test(given)
    const unit = unitless && sizeBytes > 0 && sizeBytes < blockSize && Number.isInteger(sizeBytes) ? ` (a size without a unit counts bytes: for ${sizeBytes} GiB write "${sizeBytes}G", for ${sizeBytes} MiB "${sizeBytes}M")` : ''
    throw new GalleonError('INVALID_ARGUMENT', `volume size must be a positive multiple of the block size (${blockSize} bytes), got ${sizeBytes}; try ${suggested}${unit}`)
  }
}

/** Validated labels: keys like Kubernetes label keys, string values of at most 253 characters. */
export function checkLabels (labels: unknown): Record<string, string> {
  if (labels === null || typeof labels !== 'object' || Array.isArray(labels)) {
    throw new GalleonError('INVALID_ARGUMENT', `labels must be an object of string values, got ${describe(labels)}`)
  }
  const out: Record<string, string> = {}
  for (const [key, value] of Object.entries(labels)) {
    if (!/^[A-Za-z0-9]([A-Za-z0-9_./-]{0,251}[A-Za-z0-9])?$/.test(key)) throw new GalleonError('INVALID_ARGUMENT', `label key ${describe(key)} must be 1-253 letters, digits, '-', '_', '.', '/'`)
    if (typeof value !== 'string' || value.length > 253) throw new GalleonError('INVALID_ARGUMENT', `label ${key} must have a string value of at most 253 characters, got ${describe(value)}`)
    out[key] = value
  }
  return out
}

/** The engine view of a snapshot record (undefined: the live volume). */
export function viewOf (snapshot: SnapshotRecord | undefined): View | undefined {
  return snapshot === undefined ? undefined : { gen: snapshot.gen, sizeBytes: snapshot.sizeBytes }
}

/** Throws INVALID_ARGUMENT unless `name` is a valid snapshot name. */
export function checkSnapshotName (name: unknown): asserts name is string {
  if (typeof name !== 'string' || !/^[A-Za-z0-9]([A-Za-z0-9_.:@-]{0,61}[A-Za-z0-9])?$/.test(name)) {
    throw new GalleonError('INVALID_ARGUMENT', `snapshot name must be 1-63 letters, digits, '-', '_', '.', ':' or '@', starting and ending with a letter or digit, got ${describe(name)}`)
  }
  // Snapshots are looked up by id first, then by name: a name shaped like an id could name another snapshot.
  if (looksLikeId(name)) {
    throw new GalleonError('INVALID_ARGUMENT', `snapshot name ${JSON.stringify(name)} looks like a snapshot id; pick a name that is not a UUID so lookups by name or id stay unambiguous`)
  }
}

/**
 * Throws INVALID_ARGUMENT unless `options` is undefined or a plain object holding only `known`
 * keys, each listed in `flags` a boolean when given: a misspelt or mistyped option would otherwise
 * be ignored, and the call would do something else than asked without saying so.
 */
export function checkCallOptions (call: string, options: unknown, known: readonly string[], flags: readonly string[] = []): void {
  if (options === undefined) return
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new GalleonError('INVALID_ARGUMENT', `${call}() takes its options as an object such as { ${known.map((key) => `${key}: ...`).join(', ')} }, got ${describe(options)}`)
  }
  for (const [key, value] of Object.entries(options)) {
    if (!known.includes(key)) throw new GalleonError('INVALID_ARGUMENT', `unknown ${call} option ${quoted(key)}; allowed: ${known.join(', ')}`)
    if (flags.includes(key) && value !== undefined && typeof value !== 'boolean') throw new GalleonError('INVALID_ARGUMENT', `${call} option "${key}" must be true or false, got ${describe(value)}`)
  }
}

/** The names of a few records, for messages. */
export function names (records: readonly VolumeRecord[]): string {
  return records.slice(0, 5).map((record) => record.name).join(', ') + (records.length > 5 ? `, and ${records.length - 5} more` : '')
}
