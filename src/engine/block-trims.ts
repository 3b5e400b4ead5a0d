// The engine's trim path: a discarded byte range's whole blocks are unmapped (their space freed
// unless a snapshot keeps them) and its partial edge blocks zero-filled, under the blocks' claims.

import { copyBytes } from '../errors.js'
import { Address, type BlockAddress, type BlockOp } from '../drivers.js'
import { LIVE } from './block-map.js'
import { readPayload } from './block-reads.js'
import { encodeRecorded } from './block-sealing.js'
import type { EngineCore } from './engine-core.js'
import { checkRange } from './io-checks.js'
import { replicatorFor, type VolumeReplicator, type WriterId } from './replicator.js'
import type { BlockClaim, VolumeBlocks } from './volume-blocks.js'
import { loopTurn, type LoopStreak } from '../loop-streak.js'
import type { WriteConcern } from '../types.js'

/** The body of BlockEngine.trim (documented there); `streak` is the engine's (see LoopStreak). */
export async function trim (core: EngineCore, streak: LoopStreak, volume: VolumeBlocks, offset: number, length: number, concern: WriteConcern, primary: VolumeReplicator | undefined, background: boolean, writer?: WriterId): Promise<void> {
  checkRange(core, volume, offset, length)
  if (length === 0) return
  core.assertStorable(volume, concern)
  let next: (() => void) | undefined
  if (volume.gate !== undefined || volume.movedTo !== undefined || volume.gateQueue !== undefined) [volume, next] = await core.settleInOrder(volume)
  volume.enter()
  const startedAt = background ? 0 : volume.metrics.begin()
  let ok = false
  const first = Math.floor(offset / core.blockSize)
  const last = Math.floor((offset + length - 1) / core.blockSize)
  const release = core.lock(volume, first, last)
  next?.()
  let ticket: BlockClaim | undefined
  try {
    if (release.ready !== undefined) await release.ready
    const edges = new Map<number, Uint8Array>()
    for (const index of first === last ? [first] : [first, last]) {
      const blockStart = index * core.blockSize
      const from = Math.max(offset, blockStart)
      const to = Math.min(offset + length, blockStart + core.blockSize)
      if (to - from < core.blockSize && volume.map.locate(index) !== undefined) {
        const merged = copyBytes(await readPayload(core, volume, index, false, true, LIVE))
        merged.fill(0, from - blockStart, to - blockStart)
        edges.set(index, merged)
      }
    }
    // The edges take their generations first (the next edges.size ones), so that what is reserved
    // for them holds however many generations the unmapped blocks take; again until it holds:
    // other writes may take generations while this one waits.
    while (volume.cipher !== undefined && !volume.cipher.ready(edges.size, volume.nextGen + edges.size)) await volume.cipher.reserve(edges.size, volume.nextGen + edges.size)
    ticket = volume.ticket()
    const seq = replicatorFor(volume, primary)?.record(writer === undefined ? { type: 'trim', offset, length } : { type: 'trim', offset, length, writer })
    const ops: BlockOp[] = []
    const apply: Array<() => void> = []
    for (const [index, merged] of edges) {
      const gen = volume.nextGen++
      const address: BlockAddress = new Address(volume.storageId, index, gen)
      ops.push({ type: 'put', address, data: encodeRecorded(core, volume, address, merged, seq) })
      apply.push(() => core.publish(volume, index, gen))
    }
    for (let index = first; index <= last; index++) {
      const blockStart = index * core.blockSize
      const from = Math.max(offset, blockStart)
      const to = Math.min(offset + length, blockStart + core.blockSize)
      if (to - from === core.blockSize) core.planUnmap(volume, index, ops, apply)
    }
    if (ops.length === 0) {
      if (seq !== undefined) await (volume.replicator as VolumeReplicator).committed(seq, concern)
      ok = true
      return
    }
    await core.commit(volume, ops, concern, seq, () => { for (const step of apply) step() })
    ok = true
  } finally {
    if (ticket !== undefined) {
      volume.tickets.delete(ticket)
      ticket.release()
    }
    release.done()
    if (!background) volume.metrics.end('trim', length, startedAt, ok)
    volume.leave()
  }

  // Resolved without a turn of the event loop for a while (see LoopStreak): the caller waits for one.
  if (streak.tooLong(performance.now())) await loopTurn()
}

