// Child process of test/engine-audit.test.ts: runs a planned, seeded sequence of operations on
// several volumes at once (one sequential worker per volume), reporting each operation's start and
// acknowledgement, until the parent kills it with SIGKILL. The plan is a pure function of the seed
// (planFor), so the parent rebuilds the exact bytes every volume and snapshot must hold.
//
// Usage: node --import tsx engine-audit-child.ts <storagePath> <file|level> <seed> [backendOptions JSON]
//        node --import tsx engine-audit-child.ts <storagePath> <file|level> scenario:<name> (see scenario)
//
// Volumes (made by the parent before the first run, see setUp): `plain` (writes of every shape,
// trims, zero writes, online expansions), `snapped` (writes, snapshots taken and deleted), `base`
// and its clone `clone` of base's snapshot `origin` (writes to both); a `tmp` worker creates,
// writes and deletes volumes tmp-0, tmp-1, ... in turn.
//
// Protocol (one line each, written synchronously):
//   ready                   open, workers start
//   I <volume> <n>          operation n of that volume's plan issued
//   A <volume> <n>          it resolved
//   done                    the whole plan ran (never expected: the parent kills it long before)
//   error <message>         something failed; exit code 3

import { seededRandom } from '../../src/seeded-random.js'
import { mix32 } from '../conformance/fixtures.js'
import { reportLine, runAsChild } from './support.js'

export const BLOCK = 4096
export const START_BYTES = 256 * BLOCK
export const MAX_BYTES = 1024 * BLOCK
export const VOLUMES = ['plain', 'snapped', 'base', 'clone'] as const
/** Bytes of each short-lived volume of the `tmp` worker, and the bytes it writes there. */
export const TMP_BYTES = 16 * BLOCK
export const TMP_WRITE_BYTES = 3 * BLOCK
const TMP_MAGIC = 0x504d5447 // 'GTMP'
export type VolumeName = typeof VOLUMES[number]
/** Operations planned per volume (a run is killed long before it gets through them). */
export const PLANNED_OPS = 4000

export type Op =
  | { kind: 'write', offset: number, length: number, durable: boolean, seed: number, zeros: boolean }
  | { kind: 'writeBlock', index: number, length: number, durable: boolean, seed: number }
  | { kind: 'trim', offset: number, length: number }
  | { kind: 'flush' }
  | { kind: 'expand', sizeBytes: number }
  | { kind: 'snapshot', name: string }
  | { kind: 'deleteSnapshot', name: string }

/** The bytes of a write: seeded, never all zeros unless asked for. */
export function dataOf (op: { length: number, seed: number, zeros?: boolean }): Uint8Array {
  const out = new Uint8Array(op.length)
  if (op.zeros === true) return out
  let x = op.seed | 1
  for (let i = 0; i < out.length; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5
    out[i] = (x & 0xff) | 1
  }
  return out
}

/** The plan of one volume: a pure function of the seed. */
export function planFor (seed: number, volume: VolumeName): Op[] {
  const random = seededRandom(mix32(seed ^ (VOLUMES.indexOf(volume) + 1) * 0x9e3779b9))
  const int = (n: number): number => Math.floor(random() * n)
  let size = START_BYTES
  let nextSeed = mix32(seed + VOLUMES.indexOf(volume)) | 1
  const snapshots: string[] = []
  let snapshotCount = 0
  const ops: Op[] = []
  const write = (offset: number, length: number, zeros = false): Op & { kind: 'write' } =>
    ({ kind: 'write', offset, length, durable: random() < 0.5, seed: nextSeed = mix32(nextSeed + 1) | 1, zeros })
  const anyRange = (maxBlocks: number): [number, number] => {
    const offset = int(size - 1)
    const length = 1 + int(Math.min(maxBlocks * BLOCK, size - offset))
    return [offset, length]
  }
  for (let n = 0; n < PLANNED_OPS; n++) {
    const choice = random()
    if (volume === 'plain' && choice < 0.04 && size + 16 * BLOCK <= MAX_BYTES) {
      // An online expansion, then a write across the old end (part old space, part new).
      const grown = size + (1 + int(16)) * BLOCK
      const from = size - 1 - int(2 * BLOCK)
      ops.push({ kind: 'expand', sizeBytes: grown })
      ops.push(write(from, size - from + 1 + int(grown - size - 1)))
      size = grown
      n++
    } else if (volume === 'snapped' && choice < 0.05) {
      const name = `s${++snapshotCount}`
      snapshots.push(name)
      ops.push({ kind: 'snapshot', name })
    } else if (volume === 'snapped' && choice < 0.08 && snapshots.length > 1) {
      const [name] = snapshots.splice(int(snapshots.length - 1), 1) as [string]
      ops.push({ kind: 'deleteSnapshot', name })
    } else if (choice < 0.3) {
      const index = int(size / BLOCK)
      ops.push({ kind: 'writeBlock', index, length: random() < 0.8 ? BLOCK : 1 + int(BLOCK), durable: random() < 0.5, seed: nextSeed = mix32(nextSeed + 1) | 1 })
    } else if (choice < 0.7) {
      // Multi-block, mostly unaligned at both ends.
      ops.push(write(...anyRange(12)))
    } else if (choice < 0.8) {
      ops.push({ kind: 'trim', ...((([offset, length]) => ({ offset, length }))(anyRange(10))) })
    } else if (choice < 0.88) {
      ops.push(write(...anyRange(10), true))
    } else if (choice < 0.9) {
      ops.push({ kind: 'flush' })
    } else {
      ops.push(write(...anyRange(64)))
    }
  }
  return ops
}

/**
 * What the `tmp` worker writes to tmp-<k> (operation 3k creates it, 3k+1 writes this at offset 0,
 * 3k+2 deletes it): every block starts with a marker naming k, found again by scanning the store.
 */
export function tmpData (k: number): Uint8Array {
  const out = dataOf({ length: TMP_WRITE_BYTES, seed: mix32(k + 77) | 1 })
  const view = new DataView(out.buffer)
  for (let at = 0; at < out.length; at += BLOCK) {
    view.setUint32(at, TMP_MAGIC, true)
    view.setUint32(at + 4, k, true)
  }
  return out
}

/** The k of a tmp-<k> block found in a stored block's payload, if it is one. */
export function tmpMarker (payload: Uint8Array): number | undefined {
  if (payload.byteLength < 8) return undefined
  const view = new DataView(payload.buffer, payload.byteOffset, 8)
  return view.getUint32(0, true) === TMP_MAGIC ? view.getUint32(4, true) : undefined
}

/** Blocks the scenarios write to volume `gone` and to `kept` (before and after its snapshot). */
export const SCENARIO_BLOCKS = 32

/**
 * Deterministic crash points (`scenario:<name>` in place of the seed), each reported as `ready` so
 * the parent kills the child right there:
 *   delete-stuck   deleteVolume('gone') hangs in the block store's delete: killed mid-delete
 *   delete-lost    the store's delete of 'gone' is lost (as unsynced tombstones are in a power
 *                  loss) while the catalog's removal is kept: killed once deleteVolume resolved
 *   snapshot-drop  deleteSnapshot('kept', 's') hangs when the versions only 's' kept are deleted
 */
async function scenario (storagePath: string, backend: 'file' | 'level', name: string): Promise<void> {
  // Alive until killed, also while waiting on a promise that never settles.
  setInterval(() => {}, 1 << 30)
  const { GalleonFS, WriteConcern } = await import('../../src/index.js')
  const { FileBlockStore } = await import('../../backends/file/index.js')
  const { LevelBlockStore } = await import('../../backends/level/index.js')
  const proto = (backend === 'file' ? FileBlockStore.prototype : LevelBlockStore.prototype) as unknown as {
    _deleteVolume: (volume: number) => Promise<void>
    _batch: (ops: ReadonlyArray<{ type: string }>, sync: boolean) => Promise<void>
  }
  let armed = false
  const deleteVolume = proto._deleteVolume
  proto._deleteVolume = async function (this: unknown, volume: number): Promise<void> {
    if (!armed) return await deleteVolume.call(this, volume)
    if (name === 'delete-lost') return
    reportLine('ready stuck in the block store\'s deleteVolume')
    return await new Promise<void>(() => {})
  }
  const batch = proto._batch
  proto._batch = async function (this: unknown, ops: ReadonlyArray<{ type: string }>, sync: boolean): Promise<void> {
    if (armed && name === 'snapshot-drop' && ops.length > 0 && ops.every((op) => op.type === 'del')) {
      reportLine('ready stuck deleting the versions only the snapshot kept')
      return await new Promise<void>(() => {})
    }
    return await batch.call(this, ops, sync)
  }
  const g = await GalleonFS.open({ storagePath, backend })
  await g.createVolume({ name: 'gone', sizeBytes: START_BYTES })
  await g.createVolume({ name: 'kept', sizeBytes: START_BYTES })
  for (let index = 0; index < SCENARIO_BLOCKS; index++) {
    await g.writeBlock('gone', index, tmpData(1000 + index).subarray(0, BLOCK), WriteConcern.WriteDurable)
    await g.writeBlock('kept', index, dataOf({ length: BLOCK, seed: mix32(index) | 1 }), WriteConcern.WriteDurable)
  }
  await g.createSnapshot('kept', 's')
  for (let index = 0; index < SCENARIO_BLOCKS; index++) await g.writeBlock('kept', index, dataOf({ length: BLOCK, seed: mix32(index + 500) | 1 }), WriteConcern.WriteDurable)
  await g.flush()
  armed = true
  if (name === 'snapshot-drop') await g.deleteSnapshot('kept', 's')
  else await g.deleteVolume('gone')
  reportLine('ready deleted')
  await new Promise<void>(() => {})
}

async function main (): Promise<void> {
  const [storagePath, backend, seedText] = process.argv.slice(2)
  if (seedText?.startsWith('scenario:') === true && (backend === 'file' || backend === 'level') && storagePath !== undefined) {
    await scenario(storagePath, backend, seedText.slice('scenario:'.length))
    return
  }
  if (storagePath === undefined || (backend !== 'file' && backend !== 'level') || seedText === undefined) throw new Error('usage: engine-audit-child.ts <storagePath> <file|level> <seed>')
  const seed = Number(seedText)
  const { GalleonFS, WriteConcern } = await import('../../src/index.js')
  const backendOptions = process.argv[5] === undefined ? undefined : JSON.parse(process.argv[5]) as Record<string, unknown>
  const g = await GalleonFS.open({ storagePath, backend, ...(backendOptions === undefined ? {} : { backendOptions }) })
  reportLine('ready')
  const concern = (durable: boolean): typeof WriteConcern[keyof typeof WriteConcern] => durable ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged
  const tmpWorker = async (): Promise<void> => {
    for (let n = 0; n < PLANNED_OPS; n++) {
      const k = Math.floor(n / 3)
      reportLine(`I tmp ${n}`)
      if (n % 3 === 0) await g.createVolume({ name: `tmp-${k}`, sizeBytes: TMP_BYTES })
      else if (n % 3 === 1) await g.write(`tmp-${k}`, 0, tmpData(k), concern(k % 2 === 0))
      else await g.deleteVolume(`tmp-${k}`)
      reportLine(`A tmp ${n}`)
    }
  }
  await Promise.all([tmpWorker(), ...VOLUMES.map(async (volume) => {
    const plan = planFor(seed, volume)
    for (let n = 0; n < plan.length; n++) {
      const op = plan[n] as Op
      reportLine(`I ${volume} ${n}`)
      switch (op.kind) {
        case 'write': await g.write(volume, op.offset, dataOf(op), concern(op.durable)); break
        case 'writeBlock': await g.writeBlock(volume, op.index, dataOf(op), concern(op.durable)); break
        case 'trim': await g.trim(volume, op.offset, op.length); break
        case 'flush': await g.flush(volume); break
        case 'expand': await g.expandVolume(volume, op.sizeBytes); break
        case 'snapshot': await g.createSnapshot(volume, op.name); break
        case 'deleteSnapshot': await g.deleteSnapshot(volume, op.name); break
      }
      reportLine(`A ${volume} ${n}`)
    }
  })])
  reportLine('done')
}

runAsChild(import.meta.url, main)
