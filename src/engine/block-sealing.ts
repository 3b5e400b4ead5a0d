// Encryption on the engine's paths: a block's stored value (sealed with its volume's current key
// when it has one), and many blocks sealed or opened at once (native batches, worker threads).

import type { BlockAddress } from '../drivers.js'
import { BLOCK_FLAG_ENCRYPTED, BLOCK_HEADER_BYTES, allocBlock, encodeBlock, encodeBlockWith, finishBlock, isSealedBlock } from './codec.js'
import { batchMinBlocks, cipherPool, sealJobs, type OpenJob, type SealJob } from '../crypto/cipher-pool.js'
import { NativeOpenRun, SEALED_OVERHEAD, keyVersion, type VolumeCipher } from '../crypto/volume-cipher.js'
import { nativeAead } from '../crypto/native-aead.js'
import type { EngineCore } from './engine-core.js'
import type { VolumeBlocks } from './volume-blocks.js'

/** Where a multi-block read wants whole blocks' plaintext: block i at out[i * blockSize - offset]. */
export interface ReadTarget { readonly out: Uint8Array, readonly offset: number }

/**
 * `encode` for a change already recorded for replication as `seq`: if it fails, the replicator
 * learns that the change was not applied here.
 */
export function encodeRecorded (core: EngineCore, volume: VolumeBlocks, address: BlockAddress, payload: Uint8Array, seq: number | undefined): Uint8Array {
  try {
    return encode(core, volume, address, payload)
  } catch (err) {
    if (seq !== undefined) volume.replicator?.failed(seq)
    throw err
  }
}

/** The stored value of one block version: encrypted with the volume's current key when it has one. */
export function encode (core: EngineCore, volume: VolumeBlocks, address: BlockAddress, payload: Uint8Array): Uint8Array {
  const cipher = volume.cipher
  if (cipher === undefined) return encodeBlock(address, payload, core.blockSize)
  let plain = payload
  if (plain.byteLength !== core.blockSize) {
    plain = new Uint8Array(core.blockSize)
    plain.set(payload.byteLength > core.blockSize ? payload.subarray(0, core.blockSize) : payload)
  }
  return encodeBlockWith(address, SEALED_OVERHEAD + core.blockSize, BLOCK_FLAG_ENCRYPTED, (body) => cipher.sealInto(address, plain, body))
}

/**
 * Stored values of many full blocks of an encrypted volume, sealed in native batch calls, or
 * partly here and partly on worker threads. Every payload is consumed (sealed or copied) before
 * this returns its promise.
 */
export function sealMany (core: EngineCore, volume: VolumeBlocks, addresses: readonly BlockAddress[], payloads: readonly Uint8Array[]): Promise<Uint8Array[]> {
  const cipher = volume.cipher as VolumeCipher
  const values: Uint8Array[] = []
  const jobs: SealJob[] = []
  let key: Uint8Array | undefined
  for (let i = 0; i < addresses.length; i++) {
    const value = allocBlock(SEALED_OVERHEAD + core.blockSize)
    const prepared = cipher.prepareSeal(addresses[i] as BlockAddress, payloads[i] as Uint8Array, value.subarray(BLOCK_HEADER_BYTES))
    key = prepared.key
    values.push(value)
    jobs.push(prepared.job)
  }
  const aead = cipher.cipher
  return sealJobs(aead, key as Uint8Array, jobs, (job) => aead.sealInto(key as Uint8Array, job.nonce, job.plain, job.aad, job.out)).then(() => {
    for (let i = 0; i < values.length; i++) finishBlock(addresses[i] as BlockAddress, values[i] as Uint8Array, BLOCK_FLAG_ENCRYPTED)
    return values
  })
}

/**
 * Opens many stored values of encrypted blocks: in native batch calls, or on this thread and on
 * worker threads at once (node:crypto, from PARALLEL_MIN_BLOCKS), else one by one.
 * Returns the payload per position, true where the native addon opened it in place (into
 * into.out, block `indices[i]` at its offset from into.offset), or undefined where the ordinary
 * path must decide (not encrypted, damaged, unknown key, failed authentication: verified() reports it).
 */
export async function openMany (core: EngineCore, volume: VolumeBlocks, addresses: readonly BlockAddress[], values: ReadonlyArray<Uint8Array | undefined>, indices: readonly number[], into?: ReadTarget): Promise<Array<Uint8Array | true | undefined>> {
  const out: Array<Uint8Array | true | undefined> = new Array(addresses.length)
  const groups = new Map<Uint8Array, { aead: VolumeCipher['cipher'], positions: number[], jobs: OpenJob[] }>()
  const runs = new Map<Uint8Array, NativeOpenRun>()
  const addon = nativeAead()
  const bs = core.blockSize
  // The run of the last block's key: the blocks of one read almost always share it.
  let lastCipher: VolumeCipher | undefined
  let lastVersion = -1
  let lastRun: NativeOpenRun | undefined
  for (let i = 0; i < addresses.length; i++) {
    const value = values[i]
    const address = addresses[i] as BlockAddress
    if (value === undefined) continue
    const owner = address.volume === volume.storageId ? volume : core.volumes.get(address.volume)
    const cipher = owner?.cipher
    if (cipher === undefined || batchMinBlocks(cipher.cipher) === undefined) continue
    // The block's checksum is not computed here: the GCM tag authenticates payload and address,
    // and a block that fails is left to verified(), which checks the checksum first.
    if (!isSealedBlock(value)) continue
    if (addon !== undefined && cipher.cipher.name === 'native') {
      // The native addon: straight into packed arrays, no job (and no view) per block.
      if (value.byteLength !== BLOCK_HEADER_BYTES + SEALED_OVERHEAD + bs) continue
      const version = keyVersion(value, BLOCK_HEADER_BYTES)
      let run = cipher === lastCipher && version === lastVersion ? lastRun : undefined
      if (run === undefined) {
        const key = cipher.keyFor(version)
        if (key === undefined) continue
        run = runs.get(key)
        if (run === undefined) runs.set(key, run = new NativeOpenRun(addon, key, bs, addresses.length - i))
        lastCipher = cipher
        lastVersion = version
        lastRun = run
      }
      if (into === undefined) run.add(i, address, version, value, BLOCK_HEADER_BYTES)
      else run.add(i, address, version, value, BLOCK_HEADER_BYTES, into.out, (indices[i] as number) * bs - into.offset)
      continue
    }
    const prepared = cipher.prepareOpen(address, value.subarray(BLOCK_HEADER_BYTES))
    if (prepared === undefined || prepared.job.sealed.byteLength !== bs + 16) continue
    let group = groups.get(prepared.key)
    if (group === undefined) groups.set(prepared.key, group = { aead: cipher.cipher, positions: [], jobs: [] })
    group.positions.push(i)
    group.jobs.push(prepared.job)
  }
  for (const [key, group] of groups) {
    const opened = group.jobs.length >= (batchMinBlocks(group.aead) ?? Infinity)
      ? await cipherPool.open(key, group.jobs, (job) => openOrUndefined(group.aead, key, job))
      : group.jobs.map((job) => openOrUndefined(group.aead, key, job))
    group.positions.forEach((position, i) => { out[position] = opened[i] })
  }
  // All runs settle before a failure is reported (see NativeOpenRun.finish).
  const finished = await Promise.allSettled([...runs.values()].map(async (run) => ({ run, opened: await run.finish() })))
  for (const result of finished) {
    if (result.status === 'rejected') throw result.reason
    const { run, opened } = result.value
    run.positions.forEach((position, i) => { out[position] = opened[i] })
  }
  return out
}

/** Whether the volume or the source it reads through (a clone's) is encrypted. */
export function anyCipher (core: EngineCore, volume: VolumeBlocks): boolean {
  if (volume.cipher !== undefined) return true
  for (let parent = volume.map.parent; parent !== undefined; parent = parent.map.parent) {
    if (core.volumes.get(parent.map.storageId)?.cipher !== undefined) return true
  }
  return false
}

/** Opens one block, or undefined when it fails authentication (the caller's ordinary path reports it). */
function openOrUndefined (aead: VolumeCipher['cipher'], key: Uint8Array, job: OpenJob): Uint8Array | undefined {
  try {
    return aead.open(key, job.nonce, job.sealed, job.aad)
  } catch {
    return undefined
  }
}

/** Key version of a sealed payload (its first 4 bytes, see volume-cipher.ts). */
export function cipherVersion (sealed: Uint8Array): number {
  return sealed.byteLength < 4 ? -1 : new DataView(sealed.buffer, sealed.byteOffset, 4).getUint32(0)
}
