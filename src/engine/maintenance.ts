// Passes over every data version a volume stores, while it stays online: scrub (reads and verifies
// each) and reseal (re-encrypts under the current key what an older key sealed, for a key rotation).

import { GalleonError, copyBytes, errorCode } from '../errors.js'
import { Address, type BlockAddress, type BlockOp } from '../drivers.js'
import { BLOCK_FLAG_ENCRYPTED, decodeBlock } from './codec.js'
import { CHECKED, isMissingVersion, readLocated, verified } from './block-reads.js'
import { cipherVersion, encode } from './block-sealing.js'
import type { EngineCore } from './engine-core.js'
import { COPY_BATCH_BLOCKS } from './snapshots.js'
import type { VolumeBlocks } from './volume-blocks.js'
import { WriteConcern } from '../types.js'

/** Longest a scrub runs before it lets the event loop turn. */
const SCRUB_SLICE_MS = 5

/** Where a live migration's switch-over moved the volume's data, if it did (a function: read afresh after each await). */
function movedTo (volume: VolumeBlocks): VolumeBlocks | undefined {
  return volume.movedTo?.volume
}

/** The body of BlockEngine.scrub (documented there). */
export async function scrub (core: EngineCore, volume: VolumeBlocks, cancelled: () => Error | undefined = () => undefined): Promise<{ checked: number, bad: Array<{ index: number, gen: number, code: string, message: string }> }> {
  // Without its keys nothing can be checked: that is the answer, not a list of every block as bad.
  if (volume.cipher?.unavailable !== undefined) throw volume.cipher.unavailable
  const bad: Array<{ index: number, gen: number, code: string, message: string }> = []
  let checked = 0
  const versions = [...volume.map.storedData()].sort((a, b) => a[0] - b[0] || a[1] - b[1])
  let sliceStarted = performance.now()
  for (const [index, gen] of versions) {
    // A store that answers from its page cache resolves every read without a turn of the event
    // loop: let other work in every few milliseconds (a scrub of gigabytes held it for seconds).
    if (performance.now() - sliceStarted > SCRUB_SLICE_MS) {
      await new Promise((resolve) => setImmediate(resolve))
      sliceStarted = performance.now()
    }
    if (volume.gate !== undefined) await core.waitGate(volume)
    // The instance is closing: its store goes away, which is not damage either.
    const stop = cancelled()
    if (stop !== undefined) throw stop
    // Switched over to new storage by a live migration meanwhile: this storage is going; the
    // volume's data is all there, so the scrub starts again there.
    const moved = movedTo(volume)
    if (moved !== undefined) return await scrub(core, moved, cancelled)
    // Deleted meanwhile: its blocks are going, which is not damage.
    if (volume.closing) throw new GalleonError('VOLUME_NOT_FOUND', 'the volume was deleted while it was scrubbed')
    if (!volume.map.versions(index).includes(gen)) continue
    checked++
    // Each read counts as in flight, like any read: what waits for the volume's I/O (a revert,
    // the end of a key rotation) waits for it.
    volume.enter()
    let failure: unknown
    try {
      await readLocated(core, volume, index, { map: volume.map, gen }, false)
    } catch (err) {
      failure = err
    } finally {
      volume.leave()
    }
    if (failure !== undefined) {
      const err = failure
      const movedAway = movedTo(volume)
      if (movedAway !== undefined) return await scrub(core, movedAway, cancelled)
      if (volume.closing) throw new GalleonError('VOLUME_NOT_FOUND', 'the volume was deleted while it was scrubbed')
      const stopped = cancelled()
      if (stopped !== undefined) throw stopped
      // A store closed under the scrub is no finding about the block.
      if (errorCode(err) === 'NOT_OPEN') throw err
      if (isMissingVersion(err)) {
        // A trim or revert deletes a version before it updates the map, under the block's claim.
        const claim = volume.locks.get(index)
        if (claim !== undefined) await claim.released()
        if (volume.gate !== undefined) await core.waitGate(volume)
        if (!volume.map.versions(index).includes(gen)) { checked--; continue }
        core.fail(volume, { storageId: volume.storageId, index, gen, reason: 'block version missing from the store' })
      }
      const code = errorCode(err)
      bad.push({ index, gen, code, message: err instanceof Error ? err.message : String(err) })
    }
  }
  return { checked, bad }
}

/** The body of BlockEngine.reseal (documented there). */
export async function reseal (core: EngineCore, volume: VolumeBlocks, from: number, progress: (next: number, resealed: number) => Promise<void>): Promise<number> {
  const cipher = volume.cipher
  if (cipher === undefined) return 0
  if (cipher.unavailable !== undefined) throw cipher.unavailable
  // Writes, trims and reverts that sealed with an older key before it was replaced may not be
  // published yet: wait for them, so the list below holds every version an older key sealed.
  if (volume.gate !== undefined) await core.waitGate(volume)
  await volume.drainTickets()
  const byIndex = new Map<number, number[]>()
  for (const [index, gen] of volume.map.storedData()) {
    if (index < from) continue
    const list = byIndex.get(index)
    if (list === undefined) byIndex.set(index, [gen])
    else list.push(gen)
  }
  const indices = [...byIndex.keys()].sort((a, b) => a - b)
  let resealed = 0
  for (let at = 0; at < indices.length; at += COPY_BATCH_BLOCKS) {
    const batch = indices.slice(at, at + COPY_BATCH_BLOCKS)
    if (volume.gate !== undefined) await core.waitGate(volume)
    if (volume.closing) throw new GalleonError('VOLUME_NOT_FOUND', 'the volume is being deleted; its key rotation stopped')
    volume.enter()
    const claims = batch.map((index) => core.lock(volume, index, index))
    try {
      await Promise.all(claims.map(async (claim) => await claim.ready))
      const work: Array<{ address: BlockAddress, payload: Uint8Array }> = []
      for (const index of batch) {
        for (const gen of byIndex.get(index) as number[]) {
          // Gone since the list was made (superseded, trimmed, its snapshot deleted): nothing to do.
          if (!volume.map.versions(index).includes(gen)) continue
          const address: BlockAddress = new Address(volume.storageId, index, gen)
          const value = await core.store.get(address, CHECKED)
          if (value === undefined) continue
          const decoded = decodeBlock(address, value)
          if (decoded.ok && (decoded.flags & BLOCK_FLAG_ENCRYPTED) !== 0 && cipherVersion(decoded.payload) === cipher.current) continue
          work.push({ address, payload: copyBytes(verified(core, volume, address, value)) })
        }
      }
      if (work.length > 0) {
        if (!cipher.ready(work.length)) await cipher.reserve(work.length)
        const ops: BlockOp[] = work.map(({ address, payload }) => ({ type: 'put', address, data: encode(core, volume, address, payload) }))
        await core.commit(volume, ops, WriteConcern.WriteAcknowledged)
        resealed += ops.length
      }
    } finally {
      for (const claim of claims) claim.done()
      volume.leave()
    }
    await core.journal.flush(true)
    await progress((batch[batch.length - 1] as number) + 1, resealed)
  }
  return resealed
}
