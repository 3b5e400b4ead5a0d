// Child process of the crash test (engine-crash.test.ts): opens a GalleonFS storage and issues
// concurrent writes of self-describing sectors, reporting each issue and acknowledgement on stdout,
// until the parent kills it with SIGKILL. Also exports the sector format the parent verifies with.
//
// Usage: node --import tsx crash-child.ts <storagePath> <backend> <seqBase> <seed>
//
// Protocol (one line each, written synchronously so a SIGKILL loses nothing already reported):
//   opening                              about to call GalleonFS.open()
//   ready <tag>                          open, volume found; writes start now
//   W <seq> <firstSector> <count> <D|A> <b|r>   write issued (writeBlock or byte-range write())
//   T <seq> <block>                      trim of one whole block issued
//   F <seq>                              flush issued
//   ack <block> <seq>                    a WriteDurable write resolved (block = first block written)
//   acka <block> <seq>                   a WriteAcknowledged write resolved (block = first block written)
//   trimmed <block> <seq>                a trim resolved (acknowledged, not yet durable)
//   flushed <seq>                        a flush resolved
//   error <message>                      an operation failed; the child exits with code 3
// Sequence numbers grow in issue order, and each operation is issued (its blocks claimed by the
// engine) in the same tick as its `W`/`T` line, so per block, seq order is application order.

import { mix32, seededRandom } from '../conformance/fixtures.js'
import { childArguments, reportLine, runAsChild } from './support.js'

/** Bytes of one self-describing unit. Byte-range writes are aligned to it, not to blocks. */
export const SECTOR_BYTES = 512
export const BLOCK_BYTES = 4096
export const SECTORS_PER_BLOCK = BLOCK_BYTES / SECTOR_BYTES
export const VOLUME_NAME = 'crash'
export const VOLUME_BYTES = 16 * 1024 * 1024
export const VOLUME_BLOCKS = VOLUME_BYTES / BLOCK_BYTES
export const VOLUME_SECTORS = VOLUME_BYTES / SECTOR_BYTES
/** Blocks that receive half of all writes, so blocks are overwritten many times per trial. */
export const HOT_BLOCKS = 256
const CONCURRENCY = 32
/** Length of each phase of the workload (see main). */
const PHASE_MS = 60

// Sector header (little endian): magic u32, volume tag u32, sector u32, seq hi u32, seq lo u32,
// coverage first sector u32, coverage sector count u32, reserved u32; then PRNG bytes.
const MAGIC = 0x43455347 // 'GSEC'
const HEADER_BYTES = 32

/** 32-bit tag of a volume id, carried in every sector so a block cannot migrate between volumes. */
export function volumeTag (volumeId: string): number {
  let hash = 0x811c9dc5
  for (let i = 0; i < volumeId.length; i++) hash = Math.imul(hash ^ volumeId.charCodeAt(i), 0x01000193) >>> 0
  return hash
}


function sectorSeed (tag: number, sector: number, seq: number, first: number, count: number): number {
  let seed = mix32(tag ^ 0x9e3779b9)
  seed = mix32(seed ^ sector)
  seed = mix32(seed ^ Math.floor(seq / 0x100000000))
  seed = mix32(seed ^ (seq >>> 0))
  seed = mix32(seed ^ first)
  seed = mix32(seed ^ count)
  return seed === 0 ? 1 : seed
}

/** Writes sector `sector` of write `seq` (which covers sectors first..first+count-1) at `offset` of `out`. */
export function fillSector (out: Uint8Array, offset: number, tag: number, sector: number, seq: number, first: number, count: number): void {
  const view = new DataView(out.buffer, out.byteOffset + offset, SECTOR_BYTES)
  view.setUint32(0, MAGIC, true)
  view.setUint32(4, tag, true)
  view.setUint32(8, sector, true)
  view.setUint32(12, Math.floor(seq / 0x100000000), true)
  view.setUint32(16, seq >>> 0, true)
  view.setUint32(20, first, true)
  view.setUint32(24, count, true)
  view.setUint32(28, 0, true)
  let x = sectorSeed(tag, sector, seq, first, count)
  for (let at = HEADER_BYTES; at < SECTOR_BYTES; at += 4) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5
    view.setUint32(at, x >>> 0, true)
  }
}

/** What one sector read back holds. */
export type DecodedSector =
  | { kind: 'zero' }
  | { kind: 'data', seq: number, first: number, count: number }
  | { kind: 'garbage', reason: string }

/** Classifies the sector at `offset` of `bytes`, expected to be sector `sector` of the volume tagged `tag`. */
export function decodeSector (bytes: Uint8Array, offset: number, tag: number, sector: number): DecodedSector {
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, SECTOR_BYTES)
  let nonZero = false
  for (let at = 0; at < SECTOR_BYTES; at += 4) if (view.getUint32(at, true) !== 0) { nonZero = true; break }
  if (!nonZero) return { kind: 'zero' }
  if (view.getUint32(0, true) !== MAGIC) return { kind: 'garbage', reason: `no sector magic (first word 0x${view.getUint32(0, true).toString(16)})` }
  const foundTag = view.getUint32(4, true)
  const foundSector = view.getUint32(8, true)
  const seq = view.getUint32(12, true) * 0x100000000 + view.getUint32(16, true)
  const first = view.getUint32(20, true)
  const count = view.getUint32(24, true)
  if (foundTag !== tag) return { kind: 'garbage', reason: `sector of another volume (tag ${foundTag}, expected ${tag})` }
  if (foundSector !== sector) return { kind: 'garbage', reason: `sector ${foundSector} (seq ${seq}) found at sector ${sector}: misplaced data` }
  if (count === 0 || sector < first || sector >= first + count) return { kind: 'garbage', reason: `header says seq ${seq} covers ${first}+${count}, which excludes this sector` }
  let x = sectorSeed(tag, sector, seq, first, count)
  for (let at = HEADER_BYTES; at < SECTOR_BYTES; at += 4) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5
    if (view.getUint32(at, true) !== x >>> 0) {
      return { kind: 'garbage', reason: `seq ${seq}: payload differs from its pattern at byte ${at} (mix of versions or damaged data)` }
    }
  }
  return { kind: 'data', seq, first, count }
}

/** Bytes of a write of `count` sectors from `first`, all carrying `seq`. */
export function writePayload (tag: number, seq: number, first: number, count: number): Uint8Array {
  const out = new Uint8Array(count * SECTOR_BYTES)
  for (let i = 0; i < count; i++) fillSector(out, i * SECTOR_BYTES, tag, first + i, seq, first, count)
  return out
}

export { seededRandom }


async function main (): Promise<void> {
  const { storagePath, backend, seqBase, seed } = childArguments('crash-child.ts')
  const { GalleonFS, WriteConcern } = await import('../../src/index.js')
  const random = seededRandom(seed)
  let nextSeq = seqBase

  reportLine('opening')
  const g = await GalleonFS.open({ storagePath, backend })
  const volume = await g.getVolume(VOLUME_NAME)
  const tag = volumeTag(volume.id)
  reportLine(`ready ${tag}`)

  const pickBlock = (): number => random() < 0.5 ? Math.floor(random() * HOT_BLOCKS) : Math.floor(random() * VOLUME_BLOCKS)

  // Phases alternate every PHASE_MS: a mix dominated by durable writes, then WriteAcknowledged only
  // (so the journal also commits groups with no durable write in them, which are never synced).
  const startedAt = performance.now()
  const acknowledgedPhase = (): boolean => Math.floor((performance.now() - startedAt) / PHASE_MS) % 2 === 1

  async function writeBlock (durable: boolean): Promise<void> {
    const block = pickBlock()
    const seq = nextSeq++
    const first = block * SECTORS_PER_BLOCK
    const data = writePayload(tag, seq, first, SECTORS_PER_BLOCK)
    reportLine(`W ${seq} ${first} ${SECTORS_PER_BLOCK} ${durable ? 'D' : 'A'} b`)
    await g.writeBlock(volume.id, block, data, durable ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged)
    reportLine(`${durable ? 'ack' : 'acka'} ${block} ${seq}`)
  }

  /** A byte-range write spanning 2-6 blocks, usually starting and ending inside a block. */
  async function writeRange (durable: boolean): Promise<void> {
    const seq = nextSeq++
    const startBlock = pickBlock()
    const first = startBlock * SECTORS_PER_BLOCK + (random() < 0.8 ? 1 + Math.floor(random() * (SECTORS_PER_BLOCK - 1)) : 0)
    const count = Math.min(SECTORS_PER_BLOCK + 1 + Math.floor(random() * 4 * SECTORS_PER_BLOCK), VOLUME_SECTORS - first)
    const data = writePayload(tag, seq, first, count)
    reportLine(`W ${seq} ${first} ${count} ${durable ? 'D' : 'A'} r`)
    await g.write(volume.id, first * SECTOR_BYTES, data, durable ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged)
    reportLine(`${durable ? 'ack' : 'acka'} ${startBlock} ${seq}`)
  }

  async function flush (): Promise<void> {
    const seq = nextSeq++
    reportLine(`F ${seq}`)
    await g.flush(volume.id)
    reportLine(`flushed ${seq}`)
  }

  async function trimThenFlush (): Promise<void> {
    const block = pickBlock()
    const seq = nextSeq++
    reportLine(`T ${seq} ${block}`)
    await g.trim(volume.id, block * BLOCK_BYTES, BLOCK_BYTES)
    reportLine(`trimmed ${block} ${seq}`)
    await flush()
  }

  async function worker (): Promise<void> {
    while (true) {
      const choice = random()
      if (acknowledgedPhase()) {
        if (choice < 0.7) await writeBlock(false)
        else if (choice < 0.97) await writeRange(false)
        else await trimThenFlush()
      } else {
        if (choice < 0.35) await writeBlock(true)
        else if (choice < 0.6) await writeBlock(false)
        else if (choice < 0.92) await writeRange(true)
        else if (choice < 0.97) await trimThenFlush()
        else await flush()
      }
    }
  }

  await Promise.all(Array.from({ length: CONCURRENCY }, worker))
}

runAsChild(import.meta.url, main)
