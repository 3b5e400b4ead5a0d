// What GalleonFS writes to a backup target: chunk envelopes and manifests. Both verify themselves:
// a chunk's id is the SHA-256 of its data, and a manifest carries the SHA-256 of its own content.
//
// Chunk envelope (16-byte header, then the payload):
//   [0..3] magic 'GBCK'  [4] format version  [5] flags (bit 0: payload is deflated; bit 1 is
//   reserved for encrypted payloads)  [6..7] reserved  [8..11] length of the data  [12..15] reserved

import { createHash } from 'node:crypto'
import { promisify } from 'node:util'
import { deflateRaw, inflateRaw } from 'node:zlib'
import { GalleonError } from '../errors.js'

const deflate = promisify(deflateRaw)
const inflate = promisify(inflateRaw)

const MAGIC = 0x4b434247 // 'GBCK' read little-endian
const CHUNK_FORMAT = 1
const HEADER_BYTES = 16
const FLAG_DEFLATED = 1
/** Compression is kept only when it saves at least this fraction. */
const WORTH_COMPRESSING = 0.9

export const MANIFEST_KIND = 'galleonfs-backup'
export const MANIFEST_FORMAT = 1

/** SHA-256 of `data`, lowercase hex: a chunk's id. */
export function chunkId (data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex')
}

/** Bytes tried first: data whose sample does not compress is stored as it is, without a full attempt. */
const SAMPLE_BYTES = 16 * 1024

/** Wraps chunk data in its envelope, deflated when that pays. */
export async function encodeChunk (data: Uint8Array): Promise<Uint8Array> {
  let compressed: Uint8Array | undefined
  if (data.byteLength > SAMPLE_BYTES) {
    const sample = await deflate(data.subarray(0, SAMPLE_BYTES), { level: 1 })
    if (sample.byteLength < SAMPLE_BYTES * WORTH_COMPRESSING) compressed = await deflate(data, { level: 1 })
  } else {
    compressed = await deflate(data, { level: 1 })
  }
  const deflated = compressed !== undefined && compressed.byteLength < data.byteLength * WORTH_COMPRESSING
  const payload = deflated ? compressed as Uint8Array : data
  const out = new Uint8Array(HEADER_BYTES + payload.byteLength)
  const view = new DataView(out.buffer)
  view.setUint32(0, MAGIC, true)
  view.setUint8(4, CHUNK_FORMAT)
  view.setUint8(5, deflated ? FLAG_DEFLATED : 0)
  view.setUint32(8, data.byteLength, true)
  out.set(payload, HEADER_BYTES)
  return out
}

/** Unwraps and verifies a chunk envelope against its id; throws CHECKSUM_MISMATCH or CORRUPTION. */
export async function decodeChunk (id: string, envelope: Uint8Array): Promise<Uint8Array> {
  if (envelope.byteLength < HEADER_BYTES) throw new GalleonError('CORRUPTION', `backup chunk ${id} is ${envelope.byteLength} bytes, shorter than its header`)
  const view = new DataView(envelope.buffer, envelope.byteOffset, envelope.byteLength)
  if (view.getUint32(0, true) !== MAGIC) throw new GalleonError('CORRUPTION', `backup chunk ${id} does not start with the chunk magic; it is not a GalleonFS chunk or it is damaged`)
  const version = view.getUint8(4)
  if (version !== CHUNK_FORMAT) throw new GalleonError('CORRUPTION', `backup chunk ${id} has format ${version}; this version reads format ${CHUNK_FORMAT}`)
  const flags = view.getUint8(5)
  if ((flags & ~FLAG_DEFLATED) !== 0) throw new GalleonError('NOT_IMPLEMENTED', `backup chunk ${id} uses flags 0x${flags.toString(16)} (encrypted chunks), which this release cannot read`)
  const length = view.getUint32(8, true)
  const payload = envelope.subarray(HEADER_BYTES)
  let data: Uint8Array
  try {
    data = (flags & FLAG_DEFLATED) !== 0 ? new Uint8Array(await inflate(payload)) : payload
  } catch (err) {
    throw new GalleonError('CHECKSUM_MISMATCH', `backup chunk ${id} does not decompress (${(err as Error).message}); it is damaged`, { cause: err })
  }
  if (data.byteLength !== length || chunkId(data) !== id) {
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
  /** Strategy used (a first incremental or differential of a volume is a full). */
  readonly strategy: 'full' | 'incremental' | 'differential'
  /** Strategy asked for. */
  readonly requestedStrategy: 'full' | 'incremental' | 'differential'
  /** Backup this one applies on top of (null for a full). */
  readonly base: string | null
  readonly volume: {
    readonly id: string
    readonly name: string
    readonly sizeBytes: number
    readonly blockSize: number
    readonly storageClass: string
    readonly labels: Readonly<Record<string, string>>
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

/** Serializes a manifest with a checksum of its content. */
export function encodeManifest (manifest: Manifest): Uint8Array {
  const body = JSON.stringify(manifest)
  return new TextEncoder().encode(JSON.stringify({ checksum: chunkId(new TextEncoder().encode(body)), manifest: JSON.parse(body) as unknown }) + '\n')
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
  if (parsed.checksum !== chunkId(new TextEncoder().encode(JSON.stringify(manifest)))) {
    throw new GalleonError('CHECKSUM_MISMATCH', `manifest of backup ${id} does not match its checksum; it is damaged on the target`)
  }
  if (manifest.id !== id) throw new GalleonError('CORRUPTION', `manifest stored as backup ${id} describes backup ${manifest.id}`)
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
