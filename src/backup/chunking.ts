// How a backup cuts a volume's changed blocks into chunks (runs within aligned windows, so dense
// data deduplicates), and the workers, progress and cancellation that backups and restores share.

import { GalleonError } from '../errors.js'
import type { ProgressListener } from './types.js'

/**
 * Bytes per chunk at most. A chunk holds the changed blocks of one aligned window of
 * CHUNK_WINDOW_BYTES of the volume, up to this many bytes, and never a run crossing a multiple of
 * it: dense data is cut at the same places in every backup and on every volume (so it
 * deduplicates), and scattered changes still share chunks.
 */
export const CHUNK_BYTES = 1024 * 1024
export const CHUNK_WINDOW_BYTES = 4 * 1024 * 1024
/** Chunks read, compressed and stored at once. */
const PARALLEL_CHUNKS = 8

/** Calls a caller's progress listener, which must never break the operation it watches. */
export function report (listener: ProgressListener | undefined, bytesDone: number, bytesTotal: number): void {
  if (typeof listener !== 'function') return
  try {
    listener({ bytesDone, bytesTotal })
  } catch {}
}

/** Sorted block indices -> runs of consecutive blocks, none crossing a multiple of `chunkBlocks`. */
export function toRuns (indices: readonly number[], chunkBlocks: number): Array<[number, number]> {
  const runs: Array<[number, number]> = []
  for (const index of indices) {
    const last = runs[runs.length - 1]
    if (last !== undefined && last[0] + last[1] === index && index % chunkBlocks !== 0) last[1]++
    else runs.push([index, 1])
  }
  return runs
}

/** Runs -> the runs of each chunk: at most `chunkBlocks` blocks, all in one window of `windowBlocks`. */
export function toPieces (runs: ReadonlyArray<[number, number]>, chunkBlocks: number, windowBlocks: number): Array<Array<[number, number]>> {
  const pieces: Array<Array<[number, number]>> = []
  let current: Array<[number, number]> = []
  let blocks = 0
  for (const run of runs) {
    const window = Math.floor(run[0] / windowBlocks)
    const first = current[0]
    if (first !== undefined && (blocks + run[1] > chunkBlocks || Math.floor(first[0] / windowBlocks) !== window)) {
      pieces.push(current)
      current = []
      blocks = 0
    }
    current.push(run)
    blocks += run[1]
  }
  if (current.length > 0) pieces.push(current)
  return pieces
}

export function concat (parts: readonly Uint8Array[], length: number): Uint8Array {
  const out = new Uint8Array(length)
  let at = 0
  for (const part of parts) { out.set(part, at); at += part.byteLength }
  return out
}

/**
 * Runs PARALLEL_CHUNKS copies of `worker`; once one fails the others stop taking work, and this
 * rejects with the first failure only after all have stopped (so nothing is still writing).
 */
export async function runWorkers (worker: (stop: () => boolean) => Promise<void>): Promise<void> {
  let failed = false
  const results = await Promise.allSettled(Array.from({ length: PARALLEL_CHUNKS }, async () => {
    try {
      await worker(() => failed)
    } catch (err) {
      failed = true
      throw err
    }
  }))
  const failure = results.find((result): result is PromiseRejectedResult => result.status === 'rejected')
  if (failure !== undefined) throw failure.reason
}

export function isZero (data: Uint8Array): boolean {
  const words = data.byteLength % 8 === 0 && data.byteOffset % 8 === 0 ? new BigUint64Array(data.buffer, data.byteOffset, data.byteLength / 8) : undefined
  if (words !== undefined) {
    for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false
    return true
  }
  for (let i = 0; i < data.byteLength; i++) if (data[i] !== 0) return false
  return true
}

/** CANCELLED once `signal` is aborted; `restore`: said of a restore (which then cleans up: see restoreBackup). */
export function checkAborted (signal: AbortSignal | undefined, restore = false): void {
  if (signal?.aborted !== true) return
  if (restore) throw new GalleonError('CANCELLED', 'the restore was cancelled; a volume it was creating is removed, and a volume it was writing into is put back as it was (by the next open, if the instance is closing)')
  throw new GalleonError('CANCELLED', 'the backup was cancelled; nothing was recorded (chunks already stored are reused by the next backup)')
}
