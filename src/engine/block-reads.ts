// The engine's read path: one block (through the cache, retried while a write supersedes it), one
// located version, many blocks with one getMany; every stored value is verified before use.

import { GalleonError, plainView } from '../errors.js'
import { addressKey } from '../abstract-block-store.js'
import { Address, type BlockAddress } from '../drivers.js'
import type { Located } from './block-map.js'
import { BLOCK_FLAG_ENCRYPTED, decodeBlock } from './codec.js'
import { anyCipher, openMany, type ReadTarget } from './block-sealing.js'
import type { EngineCore } from './engine-core.js'
import type { VolumeBlocks } from './volume-blocks.js'

/**
 * Every value the engine reads from the store is checked against its block header's checksum (over
 * the payload and the address) before use (verified, decodeBlock): the store need not check it too.
 */
export const CHECKED = { payloadChecked: true } as const

/** A value was sealed with a data key that has since been dropped: fetch the block again. */
class Resealed extends Error {}

/** Whether a store error reports damaged stored data (as opposed to an I/O or usage error). */
function isDamage (err: unknown): err is GalleonError {
  return err instanceof GalleonError && (err.code === 'CHECKSUM_MISMATCH' || err.code === 'CORRUPTION')
}

/**
 * Reads a block of the view at `at`. `holdsClaim`: the caller has claimed the block (write/trim
 * edges), so it must not wait for claims.
 */
export async function readPayload (core: EngineCore, volume: VolumeBlocks, index: number, useCache: boolean, holdsClaim: boolean, at: number): Promise<Uint8Array> {
  for (let attempt = 0; ; attempt++) {
    const found = volume.map.locate(index, at)
    if (found === undefined) return core.zeroBlock
    const address: BlockAddress = new Address(found.map.storageId, index, found.gen)
    const key = useCache && core.cache.enabled ? addressKey(address) : undefined
    if (key !== undefined) {
      const cached = core.cache.get(key)
      if (cached !== undefined) { volume.metrics.cacheHit(); return cached }
      volume.metrics.cacheMiss()
    }
    let value: Uint8Array | undefined
    try {
      value = await core.store.get(address, CHECKED)
    } catch (err) {
      // A store that verifies its own records (file) reports damage before the engine sees bytes:
      // count and report it like the engine's own checksum failures.
      if (isDamage(err)) {
        core.fail(volume, { storageId: address.volume, index, gen: found.gen, reason: `${core.store.name} store: ${err.message}` })
      }
      throw err
    }
    if (value === undefined) {
      // A concurrent write may have superseded and deleted this version: retry with the new one.
      const now = volume.map.locate(index, at)
      if ((now?.map !== found.map || now?.gen !== found.gen) && attempt < 8) continue
      // A trim deletes the version first and unmaps the block only once its batch resolved, under
      // the block's claim: a caller holding no claim waits for the last one and looks again.
      const claim = holdsClaim ? undefined : volume.locks.get(index)
      if (claim !== undefined && attempt < 8) {
        await claim.released()
        continue
      }
      core.fail(volume, { storageId: address.volume, index, gen: found.gen, reason: 'block version missing from the store' })
      throw new GalleonError('CORRUPTION', `block ${index} (generation ${found.gen}) is mapped but missing from the ${core.store.name} block store; run scrub() and restore the volume from a snapshot or backup`)
    }
    let payload: Uint8Array
    try {
      payload = verified(core, volume, address, value, attempt < 8)
    } catch (err) {
      if (err instanceof Resealed) continue
      throw err
    }
    if (key !== undefined) core.cache.set(key, payload)
    return payload
  }
}

/** Errors of readLocated for a version the store does not hold (not yet reported when `reportMissing` was false). */
const missingVersions = new WeakSet<object>()

/** Whether readLocated failed because the store does not hold the version (every other failure is already reported). */
export function isMissingVersion (err: unknown): boolean {
  return typeof err === 'object' && err !== null && missingVersions.has(err)
}

/** Reads and verifies one located version (no cache, no retry: the caller keeps it alive). */
export async function readLocated (core: EngineCore, volume: VolumeBlocks, index: number, found: Located, reportMissing = true, refetch = true): Promise<Uint8Array> {
  const address: BlockAddress = new Address(found.map.storageId, index, found.gen)
  let value: Uint8Array | undefined
  try {
    value = await core.store.get(address, CHECKED)
  } catch (err) {
    if (isDamage(err)) core.fail(volume, { storageId: address.volume, index, gen: found.gen, reason: `${core.store.name} store: ${err.message}` })
    throw err
  }
  if (value === undefined) {
    if (reportMissing) core.fail(volume, { storageId: address.volume, index, gen: found.gen, reason: 'block version missing from the store' })
    const missing = new GalleonError('CORRUPTION', `block ${index} (generation ${found.gen}) is mapped but missing from the ${core.store.name} block store; run scrub() and restore the volume from a snapshot or backup`)
    missingVersions.add(missing)
    throw missing
  }
  try {
    return verified(core, volume, address, value, refetch)
  } catch (err) {
    // Re-sealed under a new key since it was fetched (a rotation of the volume that wrote it): once more.
    if (err instanceof Resealed) return await readLocated(core, volume, index, found, reportMissing, false)
    throw err
  }
}

/**
 * Checks a stored value against its address and returns its payload, or reports and throws.
 * `refetch`: a value sealed with a data key that a rotation has since dropped throws Resealed
 * (unreported) instead, for the caller to fetch the block again.
 */
export function verified (core: EngineCore, volume: VolumeBlocks, address: BlockAddress, value: Uint8Array, refetch = false): Uint8Array {
  const { index, gen } = address
  const decoded = decodeBlock(address, value)
  if (!decoded.ok) {
    core.fail(volume, { storageId: address.volume, index, gen, reason: decoded.reason, expected: decoded.expected, actual: decoded.actual })
    // A version above this one's: its header is damaged (the version byte is outside the checksum),
    // or a newer GalleonFS wrote it, though that one marks the storage's metadata too, which open
    // refuses first. The likelier reading leads; the error names both.
    if (decoded.newerFormat !== undefined) throw new GalleonError('CHECKSUM_MISMATCH', `block ${index} (generation ${gen}) failed verification: it is marked as ${decoded.reason}. Its header is damaged (restore the volume from a snapshot or backup), or a newer GalleonFS wrote it (open the storage with that version); it was not returned`)
    throw new GalleonError('CHECKSUM_MISMATCH', `block ${index} failed verification (${decoded.reason}); the stored data is damaged and was not returned. Restore the volume from a snapshot or backup`)
  }
  let payload = decoded.payload
  // The volume that wrote the block (a clone reads its source's blocks with the source's key).
  const owner = address.volume === volume.storageId ? volume : core.volumes.get(address.volume)
  if ((decoded.flags & BLOCK_FLAG_ENCRYPTED) !== 0 || owner?.cipher !== undefined) {
    try {
      if (owner?.cipher === undefined) throw new GalleonError('DECRYPTION_FAILED', `block ${index} (generation ${gen}) is encrypted but its volume has no data key; it does not belong here`)
      if ((decoded.flags & BLOCK_FLAG_ENCRYPTED) === 0) throw new GalleonError('DECRYPTION_FAILED', `block ${index} (generation ${gen}) of an encrypted volume is stored unencrypted; it was planted or altered and was not returned`)
      payload = owner.cipher.open(address, payload)
    } catch (err) {
      if (!(err instanceof GalleonError) || err.code !== 'DECRYPTION_FAILED') throw err
      // Fetched before a rotation re-sealed it under the new key and dropped the old one (a clone
      // reading its source's blocks, which the rotation does not wait for): not damage, yet.
      if (refetch && owner?.cipher?.sealedWithDroppedKey(payload) === true) throw new Resealed()
      // A volume whose keys could not be loaded says so on every read; its blocks are not damaged.
      if (err !== owner?.cipher?.unavailable) core.fail(volume, { storageId: address.volume, index, gen, reason: err.message })
      throw err
    }
  }
  if (payload.byteLength !== core.blockSize) {
    core.fail(volume, { storageId: address.volume, index, gen, reason: `payload is ${payload.byteLength} bytes, expected ${core.blockSize}` })
    throw new GalleonError('CORRUPTION', `block ${index} has a payload of ${payload.byteLength} bytes but the block size is ${core.blockSize}`)
  }
  // A store may hand out Buffers: callers always get plain Uint8Arrays.
  return plainView(payload)
}

/**
 * Reads blocks first..last of the view at `at` with one `getMany` (which the file store turns into
 * a few large reads) and hands each verified payload to `place`; blocks that read as zeros are
 * skipped. Blocks found in the cache are used, but a multi-block read does not fill the cache: a
 * scan would only evict the blocks that are read again and again. `cached` false: the cache is
 * neither used nor counted (a background read, see BlockEngine.read).
 */
export async function readMany (core: EngineCore, volume: VolumeBlocks, first: number, last: number, at: number, place: (index: number, payload: Uint8Array) => void, locked = false, into?: ReadTarget, cached = true): Promise<void> {
  const indices: number[] = []
  const addresses: BlockAddress[] = []
  const useCache = cached && core.cache.enabled && core.cache.size > 0
  for (let index = first; index <= last; index++) {
    const found = volume.map.locate(index, at)
    if (found === undefined) continue
    const address: BlockAddress = new Address(found.map.storageId, index, found.gen)
    if (useCache) {
      const cached = core.cache.get(addressKey(address))
      if (cached !== undefined) {
        volume.metrics.cacheHit()
        place(index, cached)
        continue
      }
    }
    if (cached && core.cache.enabled) volume.metrics.cacheMiss()
    indices.push(index)
    addresses.push(address)
  }
  if (addresses.length === 0) return
  let values: Array<Uint8Array | undefined> | undefined
  try {
    values = core.store.getMany !== undefined
      ? await core.store.getMany(addresses, CHECKED)
      : await Promise.all(addresses.map(async (address) => await core.store.get(address, CHECKED)))
  } catch (err) {
    // Damage somewhere in the range: read block by block, which finds and reports the bad one.
    if (!isDamage(err)) throw err
  }
  try {
    await placeAll(core, volume, first, last, at, place, locked, into, cached, indices, addresses, values)
  } finally {
    // Every value was copied out by `place` (or into `into`), or dropped: the store may reuse them.
    if (values !== undefined) core.store.releaseValues?.(values)
  }
}

/** The rest of readMany, once the values are fetched: verify (or open) each and place it. */
async function placeAll (core: EngineCore, volume: VolumeBlocks, first: number, last: number, at: number, place: (index: number, payload: Uint8Array) => void, locked: boolean, into: ReadTarget | undefined, cached: boolean, indices: readonly number[], addresses: readonly BlockAddress[], values: Array<Uint8Array | undefined> | undefined): Promise<void> {
  // Multi-block reads of encrypted blocks: opened in native batch calls, or on worker threads too.
  const opened = values !== undefined && addresses.length >= 2 && anyCipher(core, volume)
    ? await openMany(core, volume, addresses, values, indices, into)
    : undefined
  for (let i = 0; i < addresses.length; i++) {
    const index = indices[i] as number
    const value = values?.[i]
    const plain = opened?.[i]
    if (plain === true) continue // opened in place, into `into`
    if (plain !== undefined) {
      place(index, plain)
      continue
    }
    // Missing: a concurrent write superseded this version (or the store reported damage).
    if (value === undefined && values !== undefined && !locked) {
      // Read again under the blocks' locks: reading this block's newer version beside the older
      // ones of the others would return a write (or trim) half applied, and writes are atomic.
      // No write to the range publishes while the locks are held, so what is located then stays.
      const lock = core.lock(volume, first, last)
      try {
        if (lock.ready !== undefined) await lock.ready
        // What this pass placed (or decrypted in place) is dropped: a block that is no longer
        // located (trimmed meanwhile) is skipped by the next pass and must read as zeros.
        const zeros = new Uint8Array(core.blockSize)
        for (let index = first; index <= last; index++) place(index, zeros)
        await readMany(core, volume, first, last, at, place, true, into, cached)
      } finally {
        lock.done()
      }
      return
    }
    // The single-block path retries with the current version and reports real damage.
    let payload: Uint8Array | undefined
    try {
      if (value !== undefined) payload = verified(core, volume, addresses[i] as BlockAddress, value, true)
    } catch (err) {
      if (!(err instanceof Resealed)) throw err
    }
    place(index, payload ?? await readPayload(core, volume, index, false, false, at))
  }
}
