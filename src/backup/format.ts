// What GalleonFS writes to a backup target: chunk envelopes and manifests. Both verify themselves:
// a chunk's id is the SHA-256 of its data, and a manifest carries the SHA-256 of its own content.
// A manifest of an encrypted volume also carries an HMAC-SHA256 of its content under a key derived
// from the volume's backup key: the SHA-256 only catches damage, and anyone who can write to the
// target could otherwise rearrange which chunks restore to which blocks, rename another backup of
// the volume, or swap in another volume's wrapped key and chunks, and recompute it.
//
// Chunk envelope (16-byte header, then the payload):
//   [0..3] magic 'GBCK'  [4] format version  [5] flags (bit 0: payload is deflated; bit 1: payload
//   is encrypted)  [6..7] reserved  [8..11] length of the data  [12..15] reserved
//
// Chunks of an encrypted volume: the id is an HMAC-SHA256 of the data under a key derived from the
// volume's backup key (a plain hash would let anyone with the target test guesses of the contents),
// and the payload (deflated first, when that pays) is sealed with AES-256-GCM under a second derived
// key: a random 12-byte nonce, then ciphertext and tag; the chunk id is the authenticated data, so a
// chunk stored under another id fails. Random nonces are safe here: a backup key seals a chunk per
// MiB of changed data, far below the 2^32 seals that random 96-bit nonces allow per key.

import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { hkdf } from '@noble/hashes/hkdf.js'
import { sha256 } from '@noble/hashes/sha2.js'
import { NONCE_BYTES, defaultCipher } from '../crypto/cipher.js'
import { promisify } from 'node:util'
import { deflateRaw, inflateRaw } from 'node:zlib'
import { GalleonError, describe } from '../errors.js'
import { CHUNK_BYTES } from './chunking.js'

const deflate = promisify(deflateRaw)
const inflate = promisify(inflateRaw)

const MAGIC = 0x4b434247 // 'GBCK' read little-endian
const CHUNK_FORMAT = 1
const HEADER_BYTES = 16
const FLAG_DEFLATED = 1
const FLAG_ENCRYPTED = 2
/** Compression is kept only when it saves at least this fraction. */
const WORTH_COMPRESSING = 0.9

export const MANIFEST_KIND = 'galleonfs-backup'
export const MANIFEST_FORMAT = 1

/** SHA-256 of `data`, lowercase hex: a chunk's id (and the checksum of manifests). */
export function chunkId (data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex')
}

/** Keys derived from a volume's backup key: one names chunks, one seals them, one authenticates manifests. */
export interface ChunkKeys {
  readonly id: Uint8Array
  readonly seal: Uint8Array
  readonly manifest: Uint8Array
}

export function chunkKeys (backupKey: Uint8Array): ChunkKeys {
  const derive = (info: string): Uint8Array => hkdf(sha256, backupKey, undefined, new TextEncoder().encode(info), 32)
  return { id: derive('galleonfs backup chunk id'), seal: derive('galleonfs backup chunk seal'), manifest: derive('galleonfs backup manifest') }
}

/** A chunk's id: SHA-256 of the data, or for an encrypted volume an HMAC of it under `keys.id`. */
export function chunkIdOf (data: Uint8Array, keys?: ChunkKeys): string {
  return keys === undefined ? chunkId(data) : createHmac('sha256', keys.id).update(data).digest('hex')
}

/** Bytes tried first: data whose sample does not compress is stored as it is, without a full attempt. */
const SAMPLE_BYTES = 16 * 1024

/** Wraps chunk data in its envelope, deflated when that pays, sealed when `keys` are given. */
export async function encodeChunk (data: Uint8Array, keys?: { readonly id: string, readonly keys: ChunkKeys }): Promise<Uint8Array> {
  let compressed: Uint8Array | undefined
  if (data.byteLength > SAMPLE_BYTES) {
    const sample = await deflate(data.subarray(0, SAMPLE_BYTES), { level: 1 })
    if (sample.byteLength < SAMPLE_BYTES * WORTH_COMPRESSING) compressed = await deflate(data, { level: 1 })
  } else {
    compressed = await deflate(data, { level: 1 })
  }
  const deflated = compressed !== undefined && compressed.byteLength < data.byteLength * WORTH_COMPRESSING
  let payload = deflated ? compressed as Uint8Array : data
  if (keys !== undefined) {
    const nonce = new Uint8Array(randomBytes(NONCE_BYTES))
    const sealed = defaultCipher().seal(keys.keys.seal, nonce, payload, new TextEncoder().encode(keys.id))
    payload = new Uint8Array(NONCE_BYTES + sealed.byteLength)
    payload.set(nonce, 0)
    payload.set(sealed, NONCE_BYTES)
  }
  const out = new Uint8Array(HEADER_BYTES + payload.byteLength)
  const view = new DataView(out.buffer)
  view.setUint32(0, MAGIC, true)
  view.setUint8(4, CHUNK_FORMAT)
  view.setUint8(5, (deflated ? FLAG_DEFLATED : 0) | (keys === undefined ? 0 : FLAG_ENCRYPTED))
  view.setUint32(8, data.byteLength, true)
  out.set(payload, HEADER_BYTES)
  return out
}

/** Unwraps and verifies a chunk envelope against its id; throws CHECKSUM_MISMATCH or CORRUPTION. */
export async function decodeChunk (id: string, envelope: Uint8Array, keys?: ChunkKeys): Promise<Uint8Array> {
  if (envelope.byteLength < HEADER_BYTES) throw new GalleonError('CORRUPTION', `backup chunk ${id} is ${envelope.byteLength} bytes, shorter than its header`)
  const view = new DataView(envelope.buffer, envelope.byteOffset, envelope.byteLength)
  if (view.getUint32(0, true) !== MAGIC) throw new GalleonError('CORRUPTION', `backup chunk ${id} does not start with the chunk magic; it is not a GalleonFS chunk or it is damaged`)
  const version = view.getUint8(4)
  if (version !== CHUNK_FORMAT) throw new GalleonError('CORRUPTION', `backup chunk ${id} has format ${version}; this version reads format ${CHUNK_FORMAT}`)
  const flags = view.getUint8(5)
  if ((flags & ~(FLAG_DEFLATED | FLAG_ENCRYPTED)) !== 0) throw new GalleonError('NOT_IMPLEMENTED', `backup chunk ${id} uses flags 0x${flags.toString(16)}, which this release cannot read`)
  const encrypted = (flags & FLAG_ENCRYPTED) !== 0
  if (encrypted && keys === undefined) throw new GalleonError('DECRYPTION_FAILED', `backup chunk ${id} is encrypted, and the backup it belongs to does not say so (or no key was given); it cannot be read`)
  if (!encrypted && keys !== undefined) throw new GalleonError('DECRYPTION_FAILED', `backup chunk ${id} of an encrypted backup is stored unencrypted; it was planted or altered`)
  const length = view.getUint32(8, true)
  let payload = envelope.subarray(HEADER_BYTES)
  if (keys !== undefined) {
    if (payload.byteLength < NONCE_BYTES) throw new GalleonError('DECRYPTION_FAILED', `backup chunk ${id} is too short to be an encrypted chunk; it was altered`)
    try {
      payload = defaultCipher().open(keys.seal, payload.subarray(0, NONCE_BYTES), payload.subarray(NONCE_BYTES), new TextEncoder().encode(id))
    } catch (err) {
      throw new GalleonError('DECRYPTION_FAILED', `backup chunk ${id} failed authentication: it was altered, stored under another id, or sealed with another volume's key; nothing was returned`, { cause: err })
    }
  }
  let data: Uint8Array
  try {
    data = (flags & FLAG_DEFLATED) !== 0 ? new Uint8Array(await inflate(payload)) : payload
  } catch (err) {
    throw new GalleonError('CHECKSUM_MISMATCH', `backup chunk ${id} does not decompress (${(err as Error).message}); it is damaged`, { cause: err })
  }
  if (data.byteLength !== length || chunkIdOf(data, keys) !== id) {
    throw new GalleonError('CHECKSUM_MISMATCH', `backup chunk ${id} does not match its checksum; it is damaged on the target`)
  }
  return data
}

/**
 * A run of blocks in a backup: `blocks` blocks from `index`, held by chunk `chunk` from its block
 * `offset` on (null: the blocks are zeros).
 */
export type Extent = [index: number, blocks: number, chunk: string | null, offset: number]

/** A backup's manifest: everything needed to list, verify and restore it from the target alone. */
export interface Manifest {
  readonly kind: typeof MANIFEST_KIND
  readonly format: number
  readonly id: string
  readonly createdAt: string
  /**
   * Where the backup comes among its volume's backups on the target, in the order they were taken
   * (1, 2, ...; see order.ts): what "newest" means, whatever the dates say. Absent in manifests
   * written before 2026-12-06, which come before every numbered one of their volume.
   */
  readonly sequence?: number
  /** Strategy used (a first incremental or differential of a volume is a full). */
  readonly strategy: 'full' | 'incremental' | 'differential'
  /** Strategy asked for. */
  readonly requestedStrategy: 'full' | 'incremental' | 'differential'
  /** Backup this one applies on top of (null for a full). */
  readonly base: string | null
  readonly volume: {
    readonly id: string
    readonly name: string
    readonly namespace?: string
    readonly sizeBytes: number
    readonly blockSize: number
    readonly storageClass: string
    readonly replicas?: number
    readonly labels: Readonly<Record<string, string>>
    /** The storage pool the volume was in, if any (a restore into a new volume goes there too). */
    readonly pool?: string
  }
  /**
   * Set when the volume is encrypted: its chunks are sealed with the volume's backup key, which is
   * stored here wrapped by the key-encryption key (restoring needs that KEK).
   */
  readonly encryption?: {
    readonly algorithm: 'AES-256-GCM'
    readonly fingerprint: string
    readonly wrappedKey: string
    readonly kekId: string
    readonly provider: string
  }
  /** The snapshot of the source volume the backup was read from. */
  readonly snapshot: { readonly id: string, readonly name: string }
  /** The backup policy that took it, if any. */
  readonly policy?: string
  /** Blocks written since the base (or every block holding data, for a full), as runs. */
  readonly extents: readonly Extent[]
  readonly stats: {
    /** Blocks in `extents`. */
    readonly blocks: number
    /** Bytes of those blocks. */
    readonly bytes: number
    /** Distinct chunks referenced, and how many of them this backup added to the target. */
    readonly chunks: number
    readonly newChunks: number
    /** Bytes this backup added to the target (compressed envelopes). */
    readonly storedBytes: number
  }
}

function manifestTag (body: string, keys: ChunkKeys): string {
  return createHmac('sha256', keys.manifest).update(body).digest('hex')
}

/**
 * Serializes a manifest with a checksum of its content and, for an encrypted volume's (`keys`: its
 * chunk keys), a tag authenticating it.
 */
export function encodeManifest (manifest: Manifest, keys?: ChunkKeys): Uint8Array {
  const body = JSON.stringify(manifest)
  return new TextEncoder().encode(JSON.stringify({ checksum: chunkId(new TextEncoder().encode(body)), ...(keys === undefined ? {} : { tag: manifestTag(body, keys) }), manifest: JSON.parse(body) as unknown }) + '\n')
}

/** The tag and content of each manifest decodeManifest returned, for verifyManifestTag once its keys are known. */
const decodedTags = new WeakMap<Manifest, { readonly tag: unknown, readonly body: string }>()

/**
 * Checks the tag of an encrypted backup's manifest (decoded by decodeManifest) under its chunk
 * keys; throws DECRYPTION_FAILED when it is missing or does not match: the manifest was altered
 * (or, for one without a tag, written before manifests were authenticated; such a backup cannot be
 * told apart from a forged one, and is not restored).
 */
export function verifyManifestTag (manifest: Manifest, keys: ChunkKeys): void {
  const decoded = decodedTags.get(manifest)
  if (decoded === undefined) return // made in this process, not read from a target
  if (typeof decoded.tag !== 'string') {
    throw new GalleonError('DECRYPTION_FAILED', `the manifest of encrypted backup ${manifest.id} carries no authentication tag: it was written by a GalleonFS build from before 2026-12-05, which did not authenticate manifests, or altered on the target; it is not trusted. If no one else could write to the target since it was taken, adoptBackup(${JSON.stringify(manifest.id)}) checks its chunks and tags its manifests, once`)
  }
  const expected = Buffer.from(manifestTag(decoded.body, keys), 'hex')
  const given = Buffer.from(decoded.tag, 'hex')
  if (given.byteLength !== expected.byteLength || !timingSafeEqual(given, expected)) {
    throw new GalleonError('DECRYPTION_FAILED', `the manifest of encrypted backup ${manifest.id} failed authentication: it was altered on the target, or belongs to another volume's backups; it is not trusted`)
  }
}

/** Whether a manifest read from a target (by decodeManifest) carries no tag: an encrypted backup's from before manifests were authenticated. */
export function isUntaggedManifest (manifest: Manifest): boolean {
  const decoded = decodedTags.get(manifest)
  return decoded !== undefined && typeof decoded.tag !== 'string'
}

const STRATEGIES: readonly unknown[] = ['full', 'incremental', 'differential']
const CHUNK_ID = /^[0-9a-f]{64}$/
/** Chunks hold at most this many blocks: CHUNK_BYTES, or 64 blocks (the chunk size of releases before 2026-11-29). */
const maxChunkBlocks = (blockSize: number): number => Math.max(64, Math.floor(CHUNK_BYTES / blockSize))

/**
 * Checks what listing and restoring act on: types, and extents that lie in the volume and in their
 * chunk. Anyone who can write to a plain volume's target can recompute the checksum, so a manifest
 * of any shape can arrive here; it is refused (CORRUPTION naming the field) before anything acts on it.
 */
function checkManifestShape (id: string, manifest: Manifest): void {
  const bad = (what: string): never => {
    throw new GalleonError('CORRUPTION', `manifest of backup ${id} is malformed (${what}); it was altered or damaged on the target, so it is not used`)
  }
  const isObject = (value: unknown): value is Record<string, unknown> => value !== null && typeof value === 'object' && !Array.isArray(value)
  const isCount = (value: unknown): value is number => Number.isSafeInteger(value) && (value as number) >= 0
  const m = manifest as unknown as Record<string, unknown>
  if (typeof m.createdAt !== 'string') bad('createdAt is not a string')
  // Ordering compares it: a string, a fraction or NaN would sort anyhow (and NaN breaks the sort).
  if (m.sequence !== undefined && !(Number.isSafeInteger(m.sequence) && (m.sequence as number) >= 1)) bad(`sequence ${describe(m.sequence)} is not a whole number from 1 up`)
  if (!STRATEGIES.includes(m.strategy) || !STRATEGIES.includes(m.requestedStrategy)) bad('strategy is not full, incremental or differential')
  if (m.base !== null && typeof m.base !== 'string') bad('base is neither null nor a backup id')
  if (m.policy !== undefined && typeof m.policy !== 'string') bad('policy is not a string')
  if (!isObject(m.snapshot) || typeof m.snapshot.id !== 'string' || typeof m.snapshot.name !== 'string') bad('snapshot is not { id, name }')
  // backupChunkKeys checks its fields; null would reach it as "encrypted" and throw a TypeError there.
  if (m.encryption !== undefined && !isObject(m.encryption)) bad('encryption is not an object')
  const volume = m.volume
  if (!isObject(volume)) return bad('volume is not an object')
  if (typeof volume.id !== 'string' || typeof volume.name !== 'string' || typeof volume.storageClass !== 'string') bad('volume id, name or storage class is not a string')
  const blockSize = volume.blockSize
  if (typeof blockSize !== 'number' || !Number.isSafeInteger(blockSize) || blockSize <= 0) return bad('volume.blockSize is not a positive integer')
  if (!isCount(volume.sizeBytes)) return bad('volume.sizeBytes is not a byte count')
  if (volume.labels !== undefined && (!isObject(volume.labels) || Object.values(volume.labels).some((value) => typeof value !== 'string'))) bad('volume.labels is not an object of strings')
  if (!isObject(m.stats) || !['blocks', 'bytes', 'chunks', 'newChunks', 'storedBytes'].every((key) => isCount((m.stats as Record<string, unknown>)[key]))) bad('stats are not byte and block counts')
  if (!Array.isArray(m.extents)) return bad('extents is not a list')
  const volumeBlocks = Math.ceil(volume.sizeBytes / blockSize)
  const chunkBlocks = maxChunkBlocks(blockSize)
  // A backup lists its runs in block order, none overlapping another: restore relies on it (each
  // step's zero runs are applied in one pass), and overlapping runs only make restore work harder.
  let end = 0
  for (const extent of m.extents as unknown[]) {
    // The first backup build (57fd70a..2159ae4, 2026-11-29) wrote [index, blocks, chunk]: one
    // chunk per run, holding it from its first block.
    if (Array.isArray(extent) && extent.length === 3) extent.push(0)
    if (!Array.isArray(extent) || extent.length !== 4) return bad(`extent ${JSON.stringify(extent)} is not [index, blocks, chunk, offset]`)
    const [index, blocks, chunk, offset] = extent as unknown[]
    if (!isCount(index) || !isCount(blocks) || blocks === 0 || index + blocks > volumeBlocks) bad(`extent ${JSON.stringify(extent)} does not lie in the volume's ${volumeBlocks} blocks`)
    if ((index as number) < end) bad(`extent ${JSON.stringify(extent)} starts before the end of the one before it (block ${end}); extents are listed in block order without overlapping`)
    end = (index as number) + (blocks as number)
    if (chunk !== null && (typeof chunk !== 'string' || !CHUNK_ID.test(chunk))) bad(`extent ${JSON.stringify(extent)} names no chunk id (64 hex digits) and no null`)
    if (!isCount(offset) || (chunk === null ? offset !== 0 : offset + (blocks as number) > chunkBlocks)) bad(`extent ${JSON.stringify(extent)} does not lie in its chunk`)
  }
}

/** Parses and verifies a manifest; throws CORRUPTION / CHECKSUM_MISMATCH naming the backup. */
export function decodeManifest (id: string, bytes: Uint8Array): Manifest {
  let parsed: { checksum?: unknown, manifest?: unknown }
  try {
    parsed = JSON.parse(new TextDecoder().decode(bytes))
  } catch (err) {
    throw new GalleonError('CORRUPTION', `manifest of backup ${id} is not valid JSON; it is damaged`, { cause: err })
  }
  const manifest = parsed?.manifest as Manifest | undefined
  if (manifest === undefined || manifest === null || typeof manifest !== 'object' || manifest.kind !== MANIFEST_KIND) {
    throw new GalleonError('CORRUPTION', `manifest of backup ${id} is not a GalleonFS backup manifest`)
  }
  if (manifest.format !== MANIFEST_FORMAT) throw new GalleonError('CORRUPTION', `backup ${id} has manifest format ${String(manifest.format)}; this version reads format ${MANIFEST_FORMAT}`)
  const body = JSON.stringify(manifest)
  if (parsed.checksum !== chunkId(new TextEncoder().encode(body))) {
    throw new GalleonError('CHECKSUM_MISMATCH', `manifest of backup ${id} does not match its checksum; it is damaged on the target`)
  }
  if (manifest.id !== id) throw new GalleonError('CORRUPTION', `manifest stored as backup ${id} describes backup ${manifest.id}`)
  checkManifestShape(id, manifest)
  decodedTags.set(manifest, { tag: (parsed as { tag?: unknown }).tag, body })
  return manifest
}

/** The target's index: one line per backup, with the SHA-256 of its manifest file, and a checksum of the whole. */
export interface BackupIndex {
  readonly kind: 'galleonfs-backup-index'
  readonly format: number
  readonly updatedAt: string
  readonly backups: ReadonlyArray<{
    readonly id: string
    readonly volumeId: string
    readonly volumeName: string
    readonly strategy: string
    readonly base: string | null
    readonly createdAt: string
    /** The manifest's sequence (absent for one without). */
    readonly sequence?: number
    readonly manifestSha256: string
  }>
}

export function encodeIndex (index: BackupIndex): Uint8Array {
  const body = JSON.stringify(index)
  return new TextEncoder().encode(JSON.stringify({ checksum: chunkId(new TextEncoder().encode(body)), index: JSON.parse(body) as unknown }, null, 1) + '\n')
}

/** Parses and verifies an index; undefined when it is damaged or not an index. */
export function decodeIndex (bytes: Uint8Array): BackupIndex | undefined {
  try {
    const parsed = JSON.parse(new TextDecoder().decode(bytes)) as { checksum?: unknown, index?: BackupIndex }
    const index = parsed.index
    if (index?.kind !== 'galleonfs-backup-index' || parsed.checksum !== chunkId(new TextEncoder().encode(JSON.stringify(index)))) return undefined
    return index
  } catch {
    return undefined
  }
}
