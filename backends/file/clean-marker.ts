// The clean-shutdown marker of the file block store: a small file that close() writes after its final
// sync, naming the active segment and its size, so that open() knows damage there is no torn write.

import { readFile, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { crc32 } from '../../src/checksum.js'
import { writeFileAtomically } from '../../src/durable-files.js'
import { isCode, syncDirectory } from './segment.js'

/** File name of the marker in the store directory. */
export const CLEAN_MARKER_NAME = 'CLEAN'
/** Name the marker is written under before it is renamed into place; a leftover one is removed on open. */
export const CLEAN_MARKER_TEMPORARY_NAME = 'CLEAN.tmp'

/**
 * Marker, little-endian, 32 bytes: magic 'GFC1' (u32), version 1 (u32), crc32 of bytes 12..32 (u32),
 * reserved 0 (u32), active segment id as two u32 high word first (8), its size in bytes, likewise (8).
 */
const MARKER_BYTES = 32
const MARKER_MAGIC = 0x31434647
const MARKER_VERSION = 1
const TWO_POW_32 = 0x1_0000_0000

/** What a marker records: the store was closed with segment `segment` (the last one) at `size` bytes, all synced. */
export interface CleanMarker {
  segment: number
  size: number
}

/** Writes the marker atomically and durably: to a temporary name, fsynced, renamed, directory synced. */
export async function writeCleanMarker (directory: string, marker: CleanMarker): Promise<void> {
  const bytes = Buffer.alloc(MARKER_BYTES)
  bytes.writeUInt32LE(MARKER_MAGIC, 0)
  bytes.writeUInt32LE(MARKER_VERSION, 4)
  bytes.writeUInt32LE(Math.floor(marker.segment / TWO_POW_32), 16)
  bytes.writeUInt32LE(marker.segment >>> 0, 20)
  bytes.writeUInt32LE(Math.floor(marker.size / TWO_POW_32), 24)
  bytes.writeUInt32LE(marker.size >>> 0, 28)
  bytes.writeUInt32LE(crc32(bytes.subarray(12)), 8)
  await writeFileAtomically(join(directory, CLEAN_MARKER_NAME), bytes, { temporary: join(directory, CLEAN_MARKER_TEMPORARY_NAME) })
}

/**
 * Reads the marker: `present` says whether the file exists, `marker` what it records, undefined when
 * it is damaged or of another version (it is only a hint that damage is not a crash, so an unreadable
 * one is ignored, never trusted).
 */
export async function readCleanMarker (directory: string): Promise<{ present: boolean, marker: CleanMarker | undefined }> {
  let bytes: Buffer
  try {
    bytes = await readFile(join(directory, CLEAN_MARKER_NAME))
  } catch (err) {
    if (isCode(err, 'ENOENT')) return { present: false, marker: undefined }
    throw err
  }
  if (bytes.byteLength !== MARKER_BYTES || bytes.readUInt32LE(0) !== MARKER_MAGIC || bytes.readUInt32LE(4) !== MARKER_VERSION ||
    bytes.readUInt32LE(8) !== crc32(bytes.subarray(12))) {
    return { present: true, marker: undefined }
  }
  return {
    present: true,
    marker: {
      segment: bytes.readUInt32LE(16) * TWO_POW_32 + bytes.readUInt32LE(20),
      size: bytes.readUInt32LE(24) * TWO_POW_32 + bytes.readUInt32LE(28)
    }
  }
}

/** Removes the marker durably (unlink, then directory sync), so no append can follow a marker still on disk. */
export async function removeCleanMarker (directory: string): Promise<void> {
  try {
    await unlink(join(directory, CLEAN_MARKER_NAME))
  } catch (err) {
    if (!isCode(err, 'ENOENT')) throw err
  }
  await syncDirectory(directory)
}
