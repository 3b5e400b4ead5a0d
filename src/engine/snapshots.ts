// Snapshots and the bulk copies built on block versions: taking and dropping a snapshot, reverting
// to one, flattening a clone, and a live migration's copy of blocks into another volume.

import { GalleonError } from '../errors.js'
import { Address, type BlockAddress, type BlockOp } from '../drivers.js'
import { LIVE, type Located } from './block-map.js'
import { readLocated } from './block-reads.js'
import { encode } from './block-sealing.js'
import type { EngineCore } from './engine-core.js'
import type { View, VolumeBlocks } from './volume-blocks.js'
import { WriteConcern } from '../types.js'

/** Blocks copied per batch by a revert or a flatten. */
export const COPY_BATCH_BLOCKS = 64
/** Longest pause of a background copy between two batches while the volume is busy. */
const COPY_YIELD_MAX_MS = 50

/** The body of BlockEngine.snapshot (documented there). */
export async function snapshot (core: EngineCore, volume: VolumeBlocks, onCut?: () => void): Promise<number> {
  if (volume.closing) throw new GalleonError('VOLUME_NOT_FOUND', 'the volume is being deleted; no snapshot was taken')
  const gen = volume.nextGen
  // At the cut, synchronously: replication orders the snapshot between the same writes (a
  // replicator that refuses the change leaves nothing behind).
  onCut?.()
  volume.map.addSnapshot(gen)
  try {
    await volume.drainTickets()
    await core.journal.flush(true)
  } catch (err) {
    // Trims in flight may have planned around this snapshot: let them finish before it goes.
    const open = await volume.closeGate()
    try {
      core.discard(volume, volume.map.dropSnapshot(gen))
    } finally {
      open()
    }
    throw err
  }
  return gen
}

/** The body of BlockEngine.dropSnapshot (documented there). */
export async function dropSnapshot (core: EngineCore, volume: VolumeBlocks, gen: number): Promise<void> {
  const open = await volume.closeGate()
  try {
    core.discard(volume, volume.map.dropSnapshot(gen))
    await core.journal.flush(false)
  } finally {
    open()
  }
}

/** The body of BlockEngine.revert (documented there). */
export async function revert (core: EngineCore, volume: VolumeBlocks, view: View, onClosed?: (changed: readonly number[]) => void, beforeOpen?: () => Promise<void>): Promise<number> {
  const open = await volume.closeGate()
  try {
    const changed = volume.map.changedBetween(view.gen, LIVE)
    // With no write in flight: a replicated volume's primary records the revert here, between
    // the writes before it and those after.
    onClosed?.(changed)
    await copyInto(core, volume, changed, (index) => index < view.sizeBytes / core.blockSize ? volume.map.locate(index, view.gen) : undefined, true)
    await core.journal.flush(true)
    await beforeOpen?.()
    return changed.length
  } finally {
    open()
  }
}

/** The body of BlockEngine.flatten (documented there). */
export async function flatten (core: EngineCore, clone: VolumeBlocks, unlinked?: () => Promise<void>): Promise<number> {
  const parent = clone.map.parent
  if (parent === undefined) {
    await unlinked?.()
    return 0
  }
  const open = await clone.closeGate()
  try {
    const shared = parent.map.allocatedAt(parent.gen).filter((index) => index < parent.blocks)
    const needed = shared.filter((index) => clone.map.needsBaseCopy(index))
    await copyInto(core, clone, needed, (index) => parent.map.locate(index, parent.gen), false)
    await core.journal.flush(true)
    clone.map.parent = undefined
    // The link is cut where it is recorded (the catalog) before any tombstone goes: until then a
    // reopen links the clone to its source again, and a trimmed block without its tombstone would
    // show the source's data.
    await unlinked?.()
    // A trim's tombstone that only hid the source's data now hides nothing: free it (kept, it
    // stayed in the store for good, since only a snapshot deletion or a write of the block prunes one).
    const garbage: Array<[number, number]> = []
    for (const index of shared) {
      const current = clone.map.current(index)
      if (current === undefined || current >= 0 || clone.map.versions(index).length !== 1) continue
      clone.map.applyUnmap(index, -current, { remove: current, tombstone: false })
      garbage.push([index, current])
    }
    core.discard(clone, garbage)
    return needed.length
  } finally {
    open()
  }
}

/** The body of BlockEngine.copyBlocks (documented there). */
export async function copyBlocks (core: EngineCore, target: VolumeBlocks, source: VolumeBlocks, indices: readonly number[], at: number, progress?: (copied: number) => void): Promise<void> {
  const batch = COPY_BATCH_BLOCKS * 4
  for (let from = 0; from < indices.length; from += batch) {
    const chunk = indices.slice(from, from + batch)
    const startedAt = performance.now()
    const entered = source.entered
    await copyInto(core, target, chunk, (index) => source.map.locate(index, at), true)
    progress?.(chunk.length)
    if (source.gate !== undefined) continue
    // A background copy yields to the volume's own I/O: when that ran during the batch, the
    // copy pauses as long as the batch took (the volume gets at least half of the time, the
    // copy goes on at full speed on an idle volume); otherwise it only lets the event loop turn.
    if (source.entered !== entered) await new Promise((resolve) => setTimeout(resolve, Math.min(COPY_YIELD_MAX_MS, performance.now() - startedAt)))
    else await new Promise((resolve) => setImmediate(resolve))
  }
}

/**
 * Writes, for each index, the data `source(index)` locates (or unmaps the block when it locates
 * nothing): as new versions (`asNew`, a revert) or as gen-0 base versions (a flatten).
 */
export async function copyInto (core: EngineCore, volume: VolumeBlocks, indices: readonly number[], source: (index: number) => Located | undefined, asNew: boolean): Promise<void> {
  for (let at = 0; at < indices.length; at += COPY_BATCH_BLOCKS) {
    const chunk = indices.slice(at, at + COPY_BATCH_BLOCKS)
    const payloads = await Promise.all(chunk.map(async (index) => {
      const found = source(index)
      return found === undefined ? undefined : await readLocated(core, volume, index, found)
    }))
    // A revert's new versions take at most a generation per block (a flatten's are generation 0);
    // again until it holds: other writes may take generations while this one waits.
    const gensBelow = (): number => asNew ? volume.nextGen + chunk.length : 0
    while (volume.cipher !== undefined && !volume.cipher.ready(chunk.length, gensBelow())) await volume.cipher.reserve(chunk.length, gensBelow())
    const ops: BlockOp[] = []
    const apply: Array<() => void> = []
    for (let i = 0; i < chunk.length; i++) {
      const index = chunk[i] as number
      const payload = payloads[i]
      if (payload === undefined) {
        if (asNew) core.planUnmap(volume, index, ops, apply)
        continue
      }
      const gen = asNew ? volume.nextGen++ : 0
      const address: BlockAddress = new Address(volume.storageId, index, gen)
      ops.push({ type: 'put', address, data: encode(core, volume, address, payload) })
      apply.push(asNew ? () => core.publish(volume, index, gen) : () => { volume.changed = ++core.changes; volume.map.insertBase(index) })
    }
    if (ops.length === 0) continue
    await core.commit(volume, ops, WriteConcern.WriteAcknowledged)
    for (const step of apply) step()
  }
}
