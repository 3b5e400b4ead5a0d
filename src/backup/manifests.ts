// A backup target's manifests and index as the backup manager reads and writes them, a manifest's
// chunk keys, and the Backup a manifest describes.

import type { BackupTarget } from '../drivers.js'
import { GalleonError, describe, errorCode } from '../errors.js'
import type { BackupStrategy } from '../types.js'
import { chunkId, chunkKeys, decodeIndex, decodeManifest, encodeIndex, type BackupIndex, isUntaggedManifest, verifyManifestTag, type ChunkKeys, type Manifest } from './format.js'
import { inTakenOrder, type TakenOrderKey } from './order.js'
import type { Backup, BackupKeySource } from './types.js'

/** The manifest of backup `id` on the target (the id is checked first). */
export async function readManifest (target: BackupTarget, id: string): Promise<Manifest> {
  if (typeof id !== 'string' || !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(id)) {
    throw new GalleonError('INVALID_ARGUMENT', `a backup id is a lowercase UUID, got ${describe(id)}`)
  }
  const bytes = await target.getManifest(id)
  if (bytes === undefined) throw new GalleonError('BACKUP_NOT_FOUND', `no backup ${id} on ${target.location}; listBackups() shows the backups there`)
  return decodeManifest(id, bytes)
}

/**
 * The manifest of backup `id` and those of the backups it builds on, newest first. A chain that loops
 * or names a base that cannot be read was altered or damaged on the target: CORRUPTION, saying the
 * backup `cannot` be used (e.g. "cannot be restored").
 */
export async function readChain (target: BackupTarget, id: string, cannot: string): Promise<Manifest[]> {
  const chain: Manifest[] = [await readManifest(target, id)]
  for (let base = (chain[0] as Manifest).base; base !== null; base = (chain[chain.length - 1] as Manifest).base) {
    const current = base
    // A chain that comes back to a backup already in it was altered on the target: it has no end.
    if (chain.some((step) => step.id === current)) throw new GalleonError('CORRUPTION', `backup ${id} builds on a chain of backups that loops back to backup ${current}; its manifests were altered on the target, so it ${cannot}`)
    try {
      chain.push(await readManifest(target, current))
    } catch (err) {
      throw new GalleonError(errorCode(err) === 'BACKUP_NOT_FOUND' ? 'CORRUPTION' : errorCode(err), `backup ${id} builds on backup ${current}, which cannot be read (${(err as Error).message}); this backup ${cannot}`, { cause: err })
    }
  }
  // A chain never spans volumes (a backup builds only on its own volume's): one that does was
  // altered on the target, and would mix another volume's blocks into this one's.
  const first = chain[0] as Manifest
  const foreign = chain.find((manifest) => manifest.volume.id !== first.volume.id)
  if (foreign !== undefined) {
    throw new GalleonError('CORRUPTION', `backup ${first.id} builds on backup ${foreign.id}, which is of another volume (${foreign.volume.id}, not ${first.volume.id}); a chain never spans volumes, so its manifests were altered on the target, and it ${cannot}`)
  }
  return chain
}

/** One line of the index, for `manifest` stored as `bytes`. */
function indexEntry (manifest: Manifest, bytes: Uint8Array): BackupIndex['backups'][number] {
  return { id: manifest.id, volumeId: manifest.volume.id, volumeName: manifest.volume.name, strategy: manifest.strategy, base: manifest.base, createdAt: manifest.createdAt, ...(manifest.sequence === undefined ? {} : { sequence: manifest.sequence }), manifestSha256: chunkId(bytes) }
}

/** The target's index when it is readable and lists exactly the manifests `listed` (else undefined). */
async function currentIndex (target: BackupTarget, listed: ReadonlySet<string>, added?: string): Promise<BackupIndex | undefined> {
  if (target.getIndex === undefined) return undefined
  const bytes = await target.getIndex().catch(() => undefined)
  const index = bytes === undefined ? undefined : decodeIndex(bytes)
  if (index === undefined) return undefined
  const expected = added === undefined ? listed.size : listed.size - 1
  if (index.backups.length !== expected || index.backups.some((entry) => !listed.has(entry.id) || entry.id === added)) return undefined
  return index
}

/** Manifests a caller has just read from the target (with their bytes), and the ids it found unreadable. */
export interface KnownManifests {
  readonly manifests: ReadonlyMap<string, { readonly manifest: Manifest, readonly bytes: Uint8Array }>
  readonly unreadable: ReadonlySet<string>
}

/**
 * Rewrites the target's index (targets without an index skip this). After a backup (`added`: the
 * manifest just stored, and its bytes), the old index is extended when it listed exactly the other
 * manifests there, so a backup reads one index instead of every manifest on the target; otherwise
 * (a deletion, a damaged or stale index) it is rebuilt from the manifests listed now. Those in
 * `known` (a deletion has just read them all) are not read again; any other is, so a manifest
 * stored since by another process is indexed as before.
 */
export async function writeIndex (target: BackupTarget, now: () => number, added?: { manifest: Manifest, bytes: Uint8Array }, known?: KnownManifests): Promise<void> {
  if (target.putIndex === undefined) return
  const listed = new Set<string>()
  for await (const id of target.listManifests()) listed.add(id)
  const previous = added === undefined ? undefined : await currentIndex(target, listed, added.manifest.id)
  let backups: Array<BackupIndex['backups'][number]>
  if (previous !== undefined && added !== undefined) {
    backups = [...previous.backups, indexEntry(added.manifest, added.bytes)]
  } else {
    backups = []
    for (const id of listed) {
      const seen = known?.manifests.get(id)
      if (seen !== undefined) {
        backups.push(indexEntry(seen.manifest, seen.bytes))
        continue
      }
      if (known?.unreadable.has(id) === true) continue
      const bytes = await target.getManifest(id)
      if (bytes === undefined) continue
      let manifest: Manifest
      try { manifest = decodeManifest(id, bytes) } catch { continue }
      backups.push(indexEntry(manifest, bytes))
    }
  }
  // Index lines are not checked: an altered one must not break the sort (they are a summary).
  const ordered = inTakenOrder(backups, (entry) => ({ id: String(entry.id), volumeId: String(entry.volumeId), sequence: Number.isSafeInteger(entry.sequence) ? entry.sequence : 0, createdAt: String(entry.createdAt) }))
  await target.putIndex(encodeIndex({ kind: 'galleonfs-backup-index', format: 1, updatedAt: new Date(now()).toISOString(), backups: ordered }))
}

/**
 * The readable manifests of one volume on the target, in the order they were taken (order.ts).
 * When the index lists exactly the manifests there, only those it names for the volume are read;
 * otherwise all are. The index only
 * narrows what is read: every manifest returned is read and checked from the target, as before.
 * `own` names the backups whose snapshots the volume still holds (`backup-<id>`): an index filing one
 * of them under another volume lies (it would hide a base and keep its snapshot forever), so it is
 * not used, and `indexUsed` tells the caller to rebuild it rather than extend it.
 */
export async function readVolumeManifests (target: BackupTarget, volumeId: string, own: ReadonlySet<string> = new Set()): Promise<{ manifests: Manifest[], indexUsed: boolean }> {
  const listed = new Set<string>()
  for await (const id of target.listManifests()) listed.add(id)
  let index = await currentIndex(target, listed)
  if (index?.backups.some((entry) => own.has(entry.id) && entry.volumeId !== volumeId) === true) index = undefined
  const others = new Set(index?.backups.filter((entry) => entry.volumeId !== volumeId).map((entry) => entry.id) ?? [])
  const out: Manifest[] = []
  for (const id of listed) {
    if (others.has(id)) continue
    const bytes = await target.getManifest(id)
    if (bytes === undefined) continue
    try {
      const manifest = decodeManifest(id, bytes)
      if (manifest.volume.id === volumeId) out.push(manifest)
    } catch {}
  }
  return { manifests: inTakenOrder(out, orderOf), indexUsed: index !== undefined }
}

/**
 * The target's readable manifests, oldest first (each volume's in the order they were taken, see
 * order.ts); the ids of unreadable ones go to `unreadable`, and the bytes each readable one was
 * decoded from to `read` (by id), when given.
 */
export async function readManifests (target: BackupTarget, unreadable: string[] = [], read?: Map<string, Uint8Array>): Promise<Manifest[]> {
  const out: Manifest[] = []
  for await (const id of target.listManifests()) {
    const bytes = await target.getManifest(id)
    if (bytes === undefined) continue
    try {
      out.push(decodeManifest(id, bytes))
      read?.set(id, bytes)
    } catch { unreadable.push(id) }
  }
  return inTakenOrder(out, orderOf)
}

/** What orders a manifest (see order.ts). */
export function orderOf (manifest: Manifest): TakenOrderKey {
  return { id: manifest.id, volumeId: manifest.volume.id, sequence: manifest.sequence, createdAt: manifest.createdAt }
}

/** The chunk keys of an encrypted backup (undefined for a plain one), once its manifest's tag checked out under them. */
export async function backupChunkKeys (keys: BackupKeySource, manifest: Manifest, opened?: Map<string, ChunkKeys>, options: { untagged?: 'allow' } = {}): Promise<ChunkKeys | undefined> {
  const encryption = manifest.encryption
  if (encryption === undefined) return undefined
  if (encryption.algorithm !== 'AES-256-GCM' || typeof encryption.wrappedKey !== 'string' || typeof encryption.fingerprint !== 'string') {
    throw new GalleonError('CORRUPTION', `backup ${manifest.id} names encryption ${describe(encryption)}, which this version cannot read`)
  }
  // The backups of a chain share their key, each carrying it wrapped as it was when it was taken:
  // once one (the newest, whose wrapping is current) opened it, the older ones need not, as their
  // wrapping may be under a key-encryption key since moved away from (a deleted volume's keys are
  // not re-wrapped). Keyed by fingerprint, which names the key, not its wrapping.
  const chunk = opened?.get(encryption.fingerprint) ?? chunkKeys(await keys.openBackupKey(manifest.volume.id, { wrapped: encryption.wrappedKey, kekId: encryption.kekId, fingerprint: encryption.fingerprint }))
  // Nothing the manifest says is acted on before it is known to be the volume's own (but by
  // adoptBackup, which opens an untagged manifest's key to check its chunks before tagging it).
  if (options.untagged !== 'allow' || !isUntaggedManifest(manifest)) verifyManifestTag(manifest, chunk)
  opened?.set(encryption.fingerprint, chunk)
  return chunk
}

/** The Backup a manifest describes, as listed from `target`. */
export function toBackup (manifest: Manifest, target: BackupTarget): Backup {
  return {
    id: manifest.id,
    volumeId: manifest.volume.id,
    volumeName: manifest.volume.name,
    volumeNamespace: manifest.volume.namespace ?? 'default',
    strategy: manifest.strategy as BackupStrategy,
    requestedStrategy: manifest.requestedStrategy as BackupStrategy,
    baseId: manifest.base,
    createdAt: manifest.createdAt,
    sequence: manifest.sequence ?? null,
    sizeBytes: manifest.volume.sizeBytes,
    blocks: manifest.stats.blocks,
    bytes: manifest.stats.bytes,
    chunks: manifest.stats.chunks,
    newChunks: manifest.stats.newChunks,
    storedBytes: manifest.stats.storedBytes,
    snapshotName: manifest.snapshot.name,
    target: target.location,
    policy: manifest.policy ?? null,
    encrypted: manifest.encryption !== undefined
  }
}
