// How callers name volumes and snapshots (VolumeRef, SnapshotRef, ReadSource, CloneSource), and
// how the facade tells them apart and resolves them in the catalog.

import { GalleonError } from '../errors.js'
import type { Snapshot, Volume } from '../types.js'
import type { Catalog, SnapshotRecord, VolumeRecord } from '../volumes/catalog.js'

/** Anything that names a volume: its id, its name, or a Volume object. */
export type VolumeRef = string | Pick<Volume, 'id'>

/** A snapshot of a volume, each named by id or name (or a Snapshot object): a read-only view. */
export type SnapshotRef = { readonly volume: VolumeRef, readonly snapshot: string | Pick<Snapshot, 'id'> } | Pick<Snapshot, 'id' | 'volumeId'>

/** What reads accept: a volume (its live contents) or one of its snapshots. */
export type ReadSource = VolumeRef | SnapshotRef

/** What `cloneVolume` copies: a live volume (an implicit snapshot is taken) or a snapshot. */
export type CloneSource = VolumeRef | SnapshotRef

/** A Snapshot object as returned by the API (has an id and a volumeId). */
/** Whether a read source names a snapshot rather than a live volume. */
export function isSnapshotRef (source: unknown): boolean {
  return isSnapshotObject(source) || (typeof source === 'object' && source !== null && 'snapshot' in source)
}

/** Whether a value is a Snapshot object (has an id and a volumeId). */
export function isSnapshotObject (value: unknown): value is Pick<Snapshot, 'id' | 'volumeId'> {
  return typeof value === 'object' && value !== null && typeof (value as { id?: unknown }).id === 'string' && typeof (value as { volumeId?: unknown }).volumeId === 'string'
}

/** A read's target: a volume's live contents, or one of its snapshots. */
export function readSource (catalog: Catalog, source: unknown): { record: VolumeRecord, snapshot?: SnapshotRecord } {
  if (isSnapshotObject(source)) {
    const record = catalog.resolve(source.volumeId)
    return { record, snapshot: catalog.resolveSnapshot(record, source.id) }
  }
  if (typeof source === 'object' && source !== null && 'snapshot' in source) {
    const ref = source as { volume?: unknown, snapshot?: unknown }
    const record = catalog.resolve(ref.volume)
    return { record, snapshot: catalog.resolveSnapshot(record, ref.snapshot) }
  }
  return { record: catalog.resolve(source) }
}

/** A volume that may be written: a snapshot reference is refused with READ_ONLY. */
export function writable (catalog: Catalog, target: unknown): VolumeRecord {
  if (isSnapshotObject(target) || (typeof target === 'object' && target !== null && 'snapshot' in target)) {
    throw new GalleonError('READ_ONLY', 'snapshots are read-only; write to the volume, or clone the snapshot (cloneVolume) to get a writable copy')
  }
  return catalog.resolve(target)
}

/** The volume with this id, or undefined when there is none. */
export function recordById (catalog: Catalog, id: string): VolumeRecord | undefined {
  try {
    return catalog.resolve(id)
  } catch {
    return undefined
  }
}
