// Child process of the snapshot crash test (snapshot-crash.test.ts): durable writes of
// self-describing blocks to several volumes, interleaved with snapshots, clones (of live volumes and
// of snapshots), snapshot and volume deletions and reverts, until the parent kills it with SIGKILL.
//
// Usage: node --import tsx snapshot-child.ts <storagePath> <file|level> <seqBase> <seed>
//
// Protocol (one line each, written synchronously before the next step):
//   opening / ready                     around GalleonFS.open()
//   W <volume> <block> <seq>            a WriteDurable write issued
//   A <volume> <block> <seq>            it resolved
//   S <volume> <snapshot>               createSnapshot issued
//   SH <volume> <snapshot> <sha256>     it resolved; the snapshot's contents hash to this
//   C <source> <clone>                  cloneVolume of a live volume issued (an implicit snapshot is taken)
//   CS <source> <snapshot> <clone>      cloneVolume of a snapshot issued
//   CA <clone>                          either clone resolved
//   DS <volume> <snapshot>              deleteSnapshot (force) issued; ds ... when it resolved
//   DV <volume>                         deleteVolume (force) issued; dv ... when it resolved
//   RB <volume> <sha256>                what the volume reads just before a revert (no write to it is in
//                                       flight or issued from here until RH)
//   R <volume> <snapshot>               restoreSnapshot issued; RH <volume> <sha256> when it resolved
//   error <message>                     something failed; exit code 3

import { createHash } from 'node:crypto'
import { mix32, seededRandom } from '../conformance/fixtures.js'
import { childArguments, reportLine, runAsChild } from './support.js'

export const BLOCK_BYTES = 4096
export const VOLUME_BLOCKS = 256
export const FIRST_VOLUME = 'v0'
const WRITERS = 6
const MAX_VOLUMES = 6
const MAGIC = 0x50414e53 // 'SNAP'

/** Block `index` as written by write `seq`: a header naming both, then a pattern derived from them. */
export function blockPayload (index: number, seq: number): Uint8Array {
  const out = new Uint8Array(BLOCK_BYTES)
  const view = new DataView(out.buffer)
  view.setUint32(0, MAGIC, true)
  view.setUint32(4, index, true)
  view.setFloat64(8, seq, true)
  let x = mix32(mix32(index ^ 0x9e3779b9) ^ seq) || 1
  for (let at = 16; at < BLOCK_BYTES; at += 4) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5
    view.setUint32(at, x >>> 0, true)
  }
  return out
}

const ZERO_BLOCK = Buffer.alloc(BLOCK_BYTES)
const seqBytes = new DataView(new ArrayBuffer(8))

/**
 * What a block read back holds: zeros, the write `seq`, or garbage (with why). A block is the write
 * `seq` when it equals blockPayload(index, seq) byte for byte; the verifiers call this for every
 * block of every volume and snapshot after each kill, so it compares in place, allocating nothing.
 */
export function decodeBlockAt (bytes: Uint8Array, offset: number, index: number): { kind: 'zero' } | { kind: 'data', seq: number } | { kind: 'garbage', reason: string } {
  const block = Buffer.from(bytes.buffer, bytes.byteOffset + offset, Math.min(BLOCK_BYTES, Math.max(0, bytes.byteLength - offset)))
  if (block.equals(ZERO_BLOCK.subarray(0, block.byteLength))) return { kind: 'zero' }
  const view = new DataView(block.buffer, block.byteOffset, BLOCK_BYTES)
  if (view.getUint32(0, true) !== MAGIC) return { kind: 'garbage', reason: 'no block magic' }
  const found = view.getUint32(4, true)
  const seq = view.getFloat64(8, true)
  if (found !== index) return { kind: 'garbage', reason: `block ${found} (seq ${seq}) found at block ${index}` }
  const differs = { kind: 'garbage', reason: `seq ${seq}: payload differs from its pattern (mixed or damaged)` } as const
  // The seq field as blockPayload writes it (a NaN read back may have other bits).
  seqBytes.setFloat64(0, seq, true)
  if (seqBytes.getUint32(0, true) !== view.getUint32(8, true) || seqBytes.getUint32(4, true) !== view.getUint32(12, true)) return differs
  let x = mix32(mix32(index ^ 0x9e3779b9) ^ seq) || 1
  for (let at = 16; at < BLOCK_BYTES; at += 4) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5
    if (view.getUint32(at, true) !== x >>> 0) return differs
  }
  return { kind: 'data', seq }
}

/**
 * Writes random blocks forever through `write`, each announced (`W block seq`) before and
 * acknowledged (`A block seq`) after, so the parent knows which writes must survive a kill.
 */
export async function announcedWrites (write: (block: number, data: Uint8Array) => Promise<void>, random: () => number, blocks: number, nextSeq: () => number): Promise<never> {
  while (true) {
    const block = Math.floor(random() * blocks)
    const seq = nextSeq()
    reportLine(`W ${block} ${seq}`)
    await write(block, blockPayload(block, seq))
    reportLine(`A ${block} ${seq}`)
  }
}

export function sha256 (bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
}

async function main (): Promise<void> {
  const { storagePath, backend, seqBase, seed } = childArguments('snapshot-child.ts')
  const { GalleonFS, WriteConcern } = await import('../../src/index.js')
  const random = seededRandom(seed)
  let nextSeq = seqBase
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T

  reportLine('opening')
  const g = await GalleonFS.open({ storagePath, backend })
  reportLine('ready')

  /** Volumes writers may use, and per volume the writes in flight (a revert waits for them). */
  const paused = new Set<string>()
  const inFlight = new Map<string, Set<Promise<void>>>()
  const volumes = async (): Promise<string[]> => (await g.listVolumes()).map((v) => v.name)

  async function writer (): Promise<void> {
    while (true) {
      const names = (await volumes()).filter((name) => !paused.has(name))
      if (names.length === 0) { await new Promise((resolve) => setTimeout(resolve, 1)); continue }
      const volume = pick(names)
      const block = Math.floor(random() * VOLUME_BLOCKS)
      const seq = nextSeq++
      reportLine(`W ${volume} ${block} ${seq}`)
      const write = g.writeBlock(volume, block, blockPayload(block, seq), WriteConcern.WriteDurable)
      let set = inFlight.get(volume)
      if (set === undefined) inFlight.set(volume, set = new Set())
      set.add(write)
      try {
        await write
        reportLine(`A ${volume} ${block} ${seq}`)
      } catch (err) {
        // The volume was deleted under the write: expected, the write was refused.
        if ((err as { code?: string }).code !== 'VOLUME_NOT_FOUND') throw err
      } finally {
        set.delete(write)
      }
    }
  }

  async function hashOf (source: Parameters<typeof g.read>[0]): Promise<string> {
    return sha256(await g.read(source, 0, VOLUME_BLOCKS * BLOCK_BYTES))
  }

  async function admin (): Promise<void> {
    while (true) {
      await new Promise((resolve) => setTimeout(resolve, 2 + random() * 15))
      const names = await volumes()
      const volume = pick(names)
      const snapshots = (await g.listSnapshots(volume)).map((s) => s.name)
      // Keep the number of snapshots bounded so the parent's verification stays quick.
      const choice = snapshots.length >= 6 ? 0.55 : random()
      if (choice < 0.35) {
        const name = `s${nextSeq++}`
        reportLine(`S ${volume} ${name}`)
        await g.createSnapshot(volume, name)
        reportLine(`SH ${volume} ${name} ${await hashOf({ volume, snapshot: name })}`)
      } else if (choice < 0.5 && names.length < MAX_VOLUMES) {
        const clone = `c${nextSeq++}`
        if (snapshots.length > 0 && random() < 0.5) {
          const snapshot = pick(snapshots)
          reportLine(`CS ${volume} ${snapshot} ${clone}`)
          await g.cloneVolume({ volume, snapshot }, clone)
        } else {
          reportLine(`C ${volume} ${clone}`)
          const made = await g.cloneVolume(volume, clone)
          const implicit = (await g.listSnapshots(volume)).find((s) => s.clones.includes(made.id))
          if (implicit !== undefined) reportLine(`SH ${volume} ${implicit.name} ${await hashOf({ volume, snapshot: implicit.name })}`)
        }
        reportLine(`CA ${clone}`)
      } else if (choice < 0.65 && snapshots.length > 0) {
        const snapshot = pick(snapshots)
        reportLine(`DS ${volume} ${snapshot}`)
        await g.deleteSnapshot(volume, snapshot, { force: true })
        reportLine(`ds ${volume} ${snapshot}`)
      } else if (choice < 0.75 && names.length > 2) {
        reportLine(`DV ${volume}`)
        await g.deleteVolume(volume, { force: true })
        reportLine(`dv ${volume}`)
      } else if (choice < 0.9 && snapshots.length > 0) {
        const snapshot = pick(snapshots)
        paused.add(volume)
        try {
          await Promise.all([...(inFlight.get(volume) ?? [])].map(async (w) => await w.catch(() => {})))
          reportLine(`RB ${volume} ${await hashOf(volume)}`)
          reportLine(`R ${volume} ${snapshot}`)
          await g.restoreSnapshot(volume, snapshot)
          reportLine(`RH ${volume} ${await hashOf(volume)}`)
        } finally {
          paused.delete(volume)
        }
      }
    }
  }

  await Promise.all([admin(), ...Array.from({ length: WRITERS }, writer)])
}

runAsChild(import.meta.url, main)
