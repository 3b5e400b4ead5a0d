// Live migration of a volume to another storage class or pool on the same instance: the copy
// passes (snapshots oldest first, then converging deltas of the live data while I/O goes on) and
// the switch-over. The facade validates, serialises and wires it (see GalleonFS.migrateVolume).

import { GalleonError } from '../errors.js'
import { LIVE } from '../engine/block-map.js'
import type { BlockEngine, VolumeBlocks } from '../engine/engine.js'
import type { SnapshotRecord } from './catalog.js'

/** Options of `migrateVolume`: where the volume goes. */
export interface MigrateVolumeOptions {
  /** The storage class to move to (encryption, pool and QoS come from it). Default: the current one. */
  readonly storageClass?: string
  /** The storage pool to move to. Default: the target class's pool, else the current one. */
  readonly pool?: string
  /**
   * A cluster node to move this node's copy to (in a cluster). With `storageClass` or `pool` as
   * well, the volume changes class here first, then moves.
   */
  readonly node?: string
}

/** Phases of a live migration, in order. */
export type MigrationPhase = 'snapshots' | 'copy' | 'switchover' | 'done'

/** Payload of `volume:migration-progress`: blocks copied so far, of those known to need copying. */
export interface MigrationProgressEvent {
  readonly volumeId: string
  readonly volumeName: string
  readonly phase: MigrationPhase
  readonly blocksDone: number
  /** Grows while the live data is copied: blocks written meanwhile are copied again. */
  readonly blocksTotal: number
  /** Copy passes over the live data so far (each copies what the one before saw change). */
  readonly pass: number
}

/** How `migrateVolume` reports and stops. */
export interface MigrateControl {
  /** Aborting it cancels the migration (rejects with CANCELLED; the volume stays where it was). */
  readonly signal?: AbortSignal
  /** Called with every progress event (also emitted as `volume:migration-progress`). */
  readonly onProgress?: (event: MigrationProgressEvent) => void
  /**
   * In a cluster, how long a migration into another class waits for the volume's new or converted
   * copies to be in sync before it rejects with BUSY (they go on in the background). Default 30
   * minutes. (A move to another node waits up to 30 minutes for its copy, whatever this says.)
   */
  readonly syncTimeoutMs?: number
}

/**
 * Calls a caller's progress listener; one that throws is ignored (as backups do), since it may run
 * from a timer where the error would end the process, and must not fail the migration either.
 */
export function tellProgress (onProgress: ((event: MigrationProgressEvent) => void) | undefined, event: MigrationProgressEvent): void {
  if (onProgress === undefined) return
  try {
    onProgress(event)
  } catch {}
}

/** How long a cluster migration waits for its copies by default (see MigrateControl.syncTimeoutMs). */
export const DEFAULT_SYNC_TIMEOUT_MS = 30 * 60_000

/** A live pass that copies at most this many blocks ends the passes: the rest is copied with writes paused. */
const CONVERGED_BLOCKS = 256
/** Most live passes; after them writes are paused for whatever is left (a load faster than the copy never converges). */
const MAX_LIVE_PASSES = 8

/** What one migration copies and where; everything but the switch-over itself. */
export interface MigrationCopy {
  readonly engine: BlockEngine
  readonly source: VolumeBlocks
  readonly target: VolumeBlocks
  /** The volume's snapshots, oldest first. */
  readonly snapshots: readonly SnapshotRecord[]
  readonly report: (phase: MigrationPhase, blocksDone: number, blocksTotal: number, pass: number) => void
  /** Throws CANCELLED once the migration is cancelled. */
  readonly checkCancelled: () => void
}

/**
 * Copies everything but the last delta: each snapshot (blocks changed since the previous one, read
 * at its generation; then a snapshot of the target), then the live data in passes over temporary
 * cuts of the source until a pass copies little. Returns the target generation of each snapshot
 * (by snapshot id) and the last cut of the source (the caller copies what changed after it with
 * writes paused, and owns dropping it).
 */
export async function copyUntilConverged (job: MigrationCopy): Promise<{ gens: Map<string, number>, lastCut: number | undefined, done: number, total: number, passes: number }> {
  const { engine, source, target, report, checkCancelled } = job
  const gens = new Map<string, number>()
  let done = 0
  let total = 0
  const copied = (phase: MigrationPhase, pass: number) => (count: number): void => {
    done += count
    report(phase, done, total, pass)
    checkCancelled()
  }
  let previous: number | undefined
  for (const snapshot of job.snapshots) {
    const indices = previous === undefined ? engine.allocatedAt(source, snapshot.gen) : engine.changedBlocks(source, previous, snapshot.gen)
    total += indices.length
    await engine.copyBlocks(target, source, indices, snapshot.gen, copied('snapshots', 0))
    gens.set(snapshot.id, await engine.snapshot(target))
    previous = snapshot.gen
    report('snapshots', done, total, 0)
    checkCancelled()
  }
  // The live data: each pass copies what changed up to a cut of the source, taken while writes go on.
  let cut: number | undefined
  let passes = 0
  try {
    for (passes = 1; passes <= MAX_LIVE_PASSES; passes++) {
      checkCancelled()
      const next = await engine.snapshot(source)
      const base = cut ?? previous
      const indices = base === undefined ? engine.allocatedAt(source, next) : engine.changedBlocks(source, base, next)
      if (cut !== undefined) {
        const dropping = cut
        cut = next
        await engine.dropSnapshot(source, dropping)
      } else {
        cut = next
      }
      total += indices.length
      await engine.copyBlocks(target, source, indices, next, copied('copy', passes))
      report('copy', done, total, passes)
      if (indices.length <= CONVERGED_BLOCKS) break
    }
  } catch (err) {
    if (cut !== undefined && !source.closing) await engine.dropSnapshot(source, cut).catch(() => {})
    throw err
  }
  return { gens, lastCut: cut, done, total, passes: Math.min(passes, MAX_LIVE_PASSES) }
}

/**
 * The last delta, with the source's gate closed by the caller (no write in flight or starting):
 * what changed after `lastCut` (or everything, without one) read at the live view. Then makes the
 * target durable. Returns the blocks copied.
 */
export async function copyLastDelta (engine: BlockEngine, source: VolumeBlocks, target: VolumeBlocks, lastCut: number | undefined, progress: (count: number) => void): Promise<number> {
  const indices = lastCut === undefined ? engine.allocatedAt(source, LIVE) : engine.changedBlocks(source, lastCut, LIVE)
  await engine.copyBlocks(target, source, indices, LIVE, progress)
  await engine.flush()
  return indices.length
}

/** The error a cancelled migration rejects with. */
export function migrationCancelled (name: string, reason?: unknown): GalleonError {
  const why = reason instanceof Error ? `: ${reason.message}` : typeof reason === 'string' ? `: ${reason}` : ''
  return new GalleonError('CANCELLED', `the migration of volume ${name} was cancelled${why}; the volume stays where it was, unchanged. Run migrateVolume() again to move it`)
}
