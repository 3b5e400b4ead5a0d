// Per-volume block encryption: AES-256-GCM with the volume's data keys (DEKs).
//
// Sealed payload of an encrypted block (what follows the engine's 8-byte block header):
//   [0..3]   key version (u32 BE): which of the volume's DEKs sealed it (a DEK rotation adds one)
//   [4..15]  nonce: 4 zero bytes, then a 64-bit big-endian counter
//   [16..]   ciphertext of the block (block size bytes), then the 16-byte GCM tag
// Authenticated data: 'GFS1', the storage id of the volume, the block index, the stored generation
// and the key version. A block copied to another volume, another index or another generation (a
// replay of an older version) fails authentication: DECRYPTION_FAILED.
//
// Nonces: every seal takes the next value of a counter kept per DEK. A (key, nonce) pair can never
// repeat because the counter only moves forward, also across crashes: before a nonce is used, a
// range [next, limit) that contains it is reserved by persisting `limit` in the metadata (synced).
// After a crash, counting resumes at the persisted limit, past every nonce that may have been used
// (the unused rest of the range is skipped). Generations play no part in nonces. Every path that seals
// (writes, trims, reverts, flatten copies at generation 0, DEK rotation) draws from the same
// counter, and a clone has its own DEK and counter; it opens its source's blocks with the source's key.
//
// Generations: the generation in the authenticated data tells a block's versions apart, so one
// must never be sealed twice for the same block: an older version's sealed bytes (which a
// log-structured store keeps on disk after they are deleted) would then pass for the newer one.
// The engine finds where its generations resume at open from the versions stored, which is too low
// once the newest versions of blocks were deleted (a trim), or lost in a crash. So generations are
// reserved like nonces: a seal takes a generation below a limit persisted in the metadata, and at
// open the volume's generations resume at that limit (see resumeGenerations).

import { GalleonError } from '../errors.js'
import type { BlockAddress } from '../drivers.js'
import { NONCE_BYTES, TAG_BYTES, defaultCipher, type AeadCipher } from './cipher.js'
import type { OpenJob, SealJob } from './cipher-pool.js'
import { PARALLEL_OPEN, RefBatch, keyHandle, type NativeAeadAddon, type NativeKey } from './native-aead.js'

/** Bytes an encrypted block's payload adds to the block size. */
export const SEALED_OVERHEAD = 4 + NONCE_BYTES + TAG_BYTES
/** Nonces reserved (persisted) at a time. */
export const NONCE_RESERVATION = 1 << 20
/** Block generations reserved (persisted) at a time. */
export const GENERATION_RESERVATION = 1 << 20
/** Largest counter value: nonces stay exact JavaScript integers. */
const MAX_COUNTER = Number.MAX_SAFE_INTEGER

/**
 * Persists that the counter of key `version` may run up to `limit` (exclusive), and that sealed
 * block generations may run up to `generations` (exclusive).
 */
export type ReserveNonces = (version: number, limit: number, generations: number) => Promise<void>

interface KeyState {
  readonly key: Uint8Array
  /** Next counter value. */
  next: number
  /** Counter values below this are reserved (persisted); `next` must stay below it. */
  limit: number
}

/** Seals and opens one volume's blocks. */
export class VolumeCipher {
  readonly storageId: number
  readonly cipher: AeadCipher
  readonly #keys = new Map<number, KeyState>()
  #current = 0
  readonly #reserve: ReserveNonces
  /** The reservation being persisted: resolves to undefined, or to the error that stopped it. */
  #extending: Promise<unknown> | undefined
  /** Set when the keys could not be loaded: every seal and open fails with it. */
  unavailable: GalleonError | undefined
  /** Every generation sealed is below this, and so is every one to be sealed: reserved (see resumeGenerations). */
  #generations = 0
  /** The highest generation sealed so far (where a background extension starts from). */
  #highestGen = 0

  constructor (storageId: number, reserve: ReserveNonces, cipher: AeadCipher = defaultCipher()) {
    this.storageId = storageId
    this.#reserve = reserve
    this.cipher = cipher
  }

  /** Key version new blocks are sealed with. */
  get current (): number { return this.#current }

  /** Versions of the keys held. */
  versions (): number[] { return [...this.#keys.keys()] }

  /**
   * Adds a DEK. `counter.limit` is the persisted counter limit of that key; `counter.next` where
   * counting starts: at the limit for a key loaded at open (past any nonce used before), at 0 for a
   * fresh key whose record reserved [0, limit).
   */
  addKey (version: number, key: Uint8Array, counter: { next: number, limit: number }, current: boolean): void {
    this.#keys.set(version, { key, next: counter.next, limit: counter.limit })
    if (current) this.#current = version
  }

  /** Forgets a key version (after a rotation re-encrypted everything it sealed). */
  dropKey (version: number): void {
    if (version === this.#current) throw new GalleonError('INVALID_ARGUMENT', 'the current data key cannot be dropped')
    if (this.#keys.delete(version)) this.#dropped.add(version)
  }

  readonly #dropped = new Set<number>()
  /**
   * Whether `sealed` names a key version this volume dropped after re-encrypting what it sealed: a
   * reader that fetched the block before it was re-sealed should fetch it again.
   */
  sealedWithDroppedKey (sealed: Uint8Array): boolean {
    return sealed.byteLength >= 4 && this.#dropped.has(new DataView(sealed.buffer, sealed.byteOffset, 4).getUint32(0))
  }

  /**
   * Sets the limit of the generations reserved (persisted) for this volume: every generation
   * sealed is below it. For a cipher made from the metadata's key record.
   */
  restoreGenerations (limit: number): void {
    if (limit > this.#generations) this.#generations = limit
  }

  /**
   * Where the volume's generations resume at open: at `stored`, the engine's next generation from
   * the versions it found, or past every generation reserved before, if that is higher. Every
   * generation below the result may exist already, so none of them is sealed anew (only sealed
   * again where it is, by a re-encryption, or a flatten's generation 0): the part above the
   * reservation needs none. Call once the keys and the reservation are restored, before any seal.
   */
  resumeGenerations (stored: number): number {
    this.restoreGenerations(stored)
    return this.#generations
  }

  /**
   * Whether `count` seals can happen now without waiting for a reservation; `gensBelow`: the new
   * generations they take are below it (a write's: the volume's next generation + its blocks; 0
   * for seals of generations that exist already).
   */
  ready (count: number, gensBelow = 0): boolean {
    const state = this.#keys.get(this.#current)
    return state !== undefined && state.next + count <= state.limit && gensBelow <= this.#generations
  }

  /** Makes sure `count` nonces of the current key, and the generations below `gensBelow`, are reserved (persisted). */
  async reserve (count: number, gensBelow = 0): Promise<void> {
    if (this.unavailable !== undefined) throw this.unavailable
    while (!this.ready(count, gensBelow)) {
      // Each wait gets the outcome of the attempt it waited for: an earlier attempt's failure
      // (say, a background extension) does not fail a later reservation that succeeded.
      const failure = await (this.#extending ?? this.#extend(count, gensBelow))
      if (failure !== undefined) {
        if (failure instanceof GalleonError && failure.code === 'NO_SPACE') throw failure
        throw new GalleonError('IO_ERROR', `could not reserve encryption nonces in the metadata (${(failure as Error)?.message ?? String(failure)}); nothing was written`, { cause: failure })
      }
    }
  }

  /**
   * Persists a larger reservation of nonces, and of generations when less than half a reservation
   * is left above `gensBelow` and the generations sealed so far; resolves to undefined, or to the
   * error that stopped it.
   */
  #extend (count: number, gensBelow = 0): Promise<unknown> {
    const version = this.#current
    const state = this.#keys.get(version) as KeyState
    const limit = Math.max(state.limit, state.next + count) + NONCE_RESERVATION
    if (limit > MAX_COUNTER) return Promise.resolve(new GalleonError('NO_SPACE', 'the data key of this volume has used all its nonces; rotate the volume key (rotateVolumeKey)'))
    const needed = Math.max(gensBelow, this.#highestGen + 1)
    const generations = this.#generations - needed < GENERATION_RESERVATION / 2 ? Math.max(this.#generations, needed) + GENERATION_RESERVATION : this.#generations
    const attempt: Promise<unknown> = this.#reserve(version, limit, generations).then(
      () => {
        if (limit > state.limit) state.limit = limit
        if (generations > this.#generations) this.#generations = generations
      },
      (err: unknown) => err ?? new Error('the reservation failed')
    )
    this.#extending = attempt
    void attempt.then(() => { if (this.#extending === attempt) this.#extending = undefined })
    return attempt
  }

  /**
   * Encrypts one block for `address`. Call `ready`/`reserve` first: sealing without a reserved
   * nonce is refused rather than risking a repeat.
   */
  seal (address: BlockAddress, plaintext: Uint8Array): Uint8Array {
    const out = new Uint8Array(SEALED_OVERHEAD + plaintext.byteLength)
    this.sealInto(address, plaintext, out)
    return out
  }

  /**
   * Takes a nonce for `address` and writes the payload header (key version, nonce) into `out`;
   * returns what the cipher needs to write ciphertext || tag into `out` after the header. For
   * sealing elsewhere (a worker thread); `seal`/`sealInto` do it all in one go.
   */
  prepareSeal (address: BlockAddress, plaintext: Uint8Array, out: Uint8Array): { key: Uint8Array, job: SealJob } {
    const { key, version, counter } = this.#take(address.gen)
    const nonce = writeHeader(out, version, counter)
    return { key, job: { nonce, aad: aad(address, version), plain: plaintext, out: out.subarray(4 + NONCE_BYTES) } }
  }

  /** What opening `sealed` (stored at `address`) needs, or undefined when its key is unknown (`open` then reports why). */
  prepareOpen (address: BlockAddress, sealed: Uint8Array): { key: Uint8Array, job: OpenJob } | undefined {
    const found = this.keyOf(sealed)
    if (found === undefined) return undefined
    return { key: found.key, job: { nonce: sealed.subarray(4, 4 + NONCE_BYTES), aad: aad(address, found.version), sealed: sealed.subarray(4 + NONCE_BYTES) } }
  }

  /** `seal`, writing the sealed payload into `out` (SEALED_OVERHEAD + plaintext length bytes). */
  sealInto (address: BlockAddress, plaintext: Uint8Array, out: Uint8Array): void {
    const { key, version, counter } = this.#take(address.gen)
    const nonce = writeHeader(out, version, counter)
    this.cipher.sealInto(key, nonce, plaintext, aad(address, version), out.subarray(4 + NONCE_BYTES))
  }

  /** The current key and the next nonce counter value, for a seal of generation `gen` (both reserved: see reserve()). */
  #take (gen: number): { key: Uint8Array, version: number, counter: number } {
    if (this.unavailable !== undefined) throw this.unavailable
    const version = this.#current
    const state = this.#keys.get(version)
    if (state === undefined || state.next >= state.limit) {
      throw new GalleonError('INVALID_ARGUMENT', 'internal: no reserved nonce for this seal (reserve() was not awaited); nothing was written')
    }
    if (gen >= this.#generations) {
      throw new GalleonError('INVALID_ARGUMENT', `internal: generation ${gen} is not reserved for sealing (reserve() was not given it); nothing was written`)
    }
    const counter = state.next++
    if (gen > this.#highestGen) this.#highestGen = gen
    // Extend early, so writes rarely wait for the metadata.
    if (this.#extending === undefined && (state.limit - state.next < NONCE_RESERVATION / 2 || this.#generations - gen < GENERATION_RESERVATION / 2)) void this.#extend(0)
    return { key: state.key, version, counter }
  }

  /** Decrypts a sealed payload stored at `address`; DECRYPTION_FAILED unless it is authentic. */
  open (address: BlockAddress, sealed: Uint8Array): Uint8Array {
    if (this.unavailable !== undefined) throw this.unavailable
    if (sealed.byteLength < SEALED_OVERHEAD) throw new GalleonError('DECRYPTION_FAILED', `block ${address.index} holds ${sealed.byteLength} bytes, too few for an encrypted block; it was altered`)
    const version = new DataView(sealed.buffer, sealed.byteOffset, 4).getUint32(0)
    const state = this.#keys.get(version)
    if (state === undefined) {
      throw new GalleonError('DECRYPTION_FAILED', `block ${address.index} (generation ${address.gen}) names data key version ${version}, which this volume does not have; it was altered or belongs elsewhere`)
    }
    try {
      return this.cipher.open(state.key, sealed.subarray(4, 4 + NONCE_BYTES), sealed.subarray(4 + NONCE_BYTES), aad(address, version))
    } catch (err) {
      throw new GalleonError('DECRYPTION_FAILED', `block ${address.index} (generation ${address.gen}) failed authentication: it was altered, moved or replayed; nothing was returned. Restore the volume from a snapshot or backup`, { cause: err })
    }
  }

  /**
   * The key that sealed `sealed` and its version, or undefined when it is unknown or the payload too
   * short (`open` then reports why). For batch opening: the nonce is sealed[4, 16), the ciphertext
   * and tag follow, the authenticated data is writeAad(address, version).
   */
  keyOf (sealed: Uint8Array): { key: Uint8Array, version: number } | undefined {
    if (sealed.byteLength < SEALED_OVERHEAD) return undefined
    const version = keyVersion(sealed, 0)
    const key = this.keyFor(version)
    return key === undefined ? undefined : { key, version }
  }

  /** The data key of `version`, or undefined when it is unknown or the keys could not be loaded. */
  keyFor (version: number): Uint8Array | undefined {
    return this.unavailable !== undefined ? undefined : this.#keys.get(version)?.key
  }

  /** Key version and nonce counter of a sealed payload (for tests and tools; not secret). */
  static inspect (sealed: Uint8Array): { version: number, counter: number } {
    const view = new DataView(sealed.buffer, sealed.byteOffset, sealed.byteLength)
    return { version: view.getUint32(0), counter: view.getUint32(8) * 0x1_0000_0000 + view.getUint32(12) }
  }
}

/** Writes key version and nonce at the start of a sealed payload; returns the nonce's view. */
function writeHeader (out: Uint8Array, version: number, counter: number): Uint8Array {
  putUint32(out, 0, version)
  putUint32(out, 4, 0)
  putUint32(out, 8, Math.floor(counter / 0x1_0000_0000))
  putUint32(out, 12, counter >>> 0)
  return out.subarray(4, 4 + NONCE_BYTES)
}

// Scratch for the big-endian float64 fields of the authenticated data.
const F64 = new Float64Array(1)
const F64_BYTES = new Uint8Array(F64.buffer)
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1

function putUint32 (out: Uint8Array, at: number, value: number): void {
  out[at] = value >>> 24
  out[at + 1] = value >>> 16
  out[at + 2] = value >>> 8
  out[at + 3] = value
}

function putFloat64 (out: Uint8Array, at: number, value: number): void {
  F64[0] = value
  for (let i = 0; i < 8; i++) out[at + i] = F64_BYTES[LITTLE_ENDIAN ? 7 - i : i] as number
}

/**
 * The authenticated data of a block: 'GFS1', storage id (u32), index and generation (float64),
 * key version (u32), all big-endian. Written byte by byte: a DataView per block cost more than
 * the native cipher's whole work on it.
 */
export function aad (address: BlockAddress, version: number): Uint8Array {
  const out = new Uint8Array(AAD_BYTES)
  writeAad(out, 0, address, version)
  return out
}

/** The key version of the sealed payload at stored[at..] (its first 4 bytes). */
export function keyVersion (stored: Uint8Array, at: number): number {
  return (((stored[at] as number) << 24) | ((stored[at + 1] as number) << 16) | ((stored[at + 2] as number) << 8) | (stored[at + 3] as number)) >>> 0
}

/** Bytes of a block's authenticated data. */
export const AAD_BYTES = 28

/** Writes the authenticated data of a block (see aad) at out[at, at + 28). */
export function writeAad (out: Uint8Array, at: number, address: BlockAddress, version: number): void {
  putUint32(out, at, 0x47465331) // 'GFS1'
  putUint32(out, at + 4, address.volume)
  putFloat64(out, at + 8, address.index)
  putFloat64(out, at + 16, address.gen)
  putUint32(out, at + 24, version)
}

/** Blocks from which a run is split between the calling thread and a pool thread. */
const SPLIT_MIN_BLOCKS = 64

/**
 * Opens many blocks sealed under one key with the native addon, in as few calls as its 64-buffer
 * limit allows: nonces and authenticated data are written straight into the packed arrays the addon
 * takes, and each plaintext goes to the place given for it (else to an array of its own). A large
 * call is split: half on a libuv pool thread, half on the calling thread at the same time.
 */
export class NativeOpenRun {
  /** The callers' positions of the blocks added, in order. */
  readonly positions: number[] = []
  readonly #addon: NativeAeadAddon
  readonly #key: Uint8Array
  readonly #handle: NativeKey
  readonly #size: number
  readonly #nonces: Uint8Array
  readonly #aads: Uint8Array
  readonly #refs: Float64Array
  /** Per block added: the array of its own that its plaintext goes to, or undefined (the place the caller gave). */
  readonly #targets: Array<Uint8Array | undefined> = []
  readonly #results: Array<Uint8Array | true | undefined> = []
  readonly #waits: Array<Promise<void>> = []
  #batch = new RefBatch()
  /** Index (in the packed arrays) of the first block not yet handed to the addon. */
  #base = 0
  /** Blocks added since the last call to the addon. */
  #pending = 0

  /** `size`: plaintext bytes per block; `capacity`: most blocks that will be added. */
  constructor (addon: NativeAeadAddon, key: Uint8Array, size: number, capacity: number) {
    this.#addon = addon
    this.#key = key
    this.#handle = keyHandle(addon, key)
    this.#size = size
    this.#nonces = new Uint8Array(capacity * NONCE_BYTES)
    this.#aads = new Uint8Array(capacity * AAD_BYTES)
    this.#refs = new Float64Array(capacity * 4)
  }

  /**
   * Adds the sealed payload at stored[at..] (key version, nonce, ciphertext, tag: exactly
   * SEALED_OVERHEAD + size bytes to the end of `stored`; its key version `version`, see keyVersion)
   * of the block at `address`, to be opened into out[outAt, outAt + size) when `out` is given and
   * holds that range, else into an array of its own. No views are made per block: this runs for
   * every block of a large encrypted read.
   */
  add (position: number, address: BlockAddress, version: number, stored: Uint8Array, at: number, out?: Uint8Array, outAt = 0): void {
    const size = this.#size
    if (stored.byteLength - at !== SEALED_OVERHEAD + size || at < 0) throw new GalleonError('INVALID_ARGUMENT', `internal: a sealed block of ${stored.byteLength - at} bytes in a run of ${size}-byte blocks`)
    let own: Uint8Array | undefined
    let target: Uint8Array
    if (out !== undefined && outAt >= 0 && outAt + size <= out.byteLength) {
      target = out
    } else {
      target = own = new Uint8Array(size)
      outAt = 0
    }
    if (!this.#batch.fits(stored, target)) this.#flush()
    if (this.#base + this.#pending >= this.#refs.length / 4) throw new GalleonError('INVALID_ARGUMENT', 'internal: more blocks added to a run than its capacity')
    const i = this.#base + this.#pending++
    const nonces = this.#nonces
    const from = at + 4
    for (let b = 0; b < NONCE_BYTES; b++) nonces[i * NONCE_BYTES + b] = stored[from + b] as number
    writeAad(this.#aads, i * AAD_BYTES, address, version)
    this.#batch.refAt(stored, at + 4 + NONCE_BYTES, this.#refs, i * 4)
    this.#batch.refAt(target, outAt, this.#refs, i * 4 + 2)
    this.#targets.push(own)
    this.positions.push(position)
  }

  /**
   * Opens what is left. Per block added, in order: true when its plaintext is in the place given
   * for it, the array of its own holding it, or undefined where it failed authentication.
   */
  async finish (): Promise<Array<Uint8Array | true | undefined>> {
    this.#flush()
    // Every call settled before a failure is reported: one still running writes into the caller's
    // buffer, which the caller may hand to another read as soon as this one failed.
    const settled = await Promise.allSettled(this.#waits)
    const failed = settled.find((result): result is PromiseRejectedResult => result.status === 'rejected')
    if (failed !== undefined) throw failed.reason
    return this.#results
  }

  /** Hands the blocks added since the last call to the addon (the packed arrays are not reused after). */
  #flush (): void {
    const count = this.#pending
    if (count === 0) return
    const first = this.#base
    const buffers = this.#batch.buffers
    const call = (from: number, to: number, parallel: boolean): void => {
      const nonces = this.#nonces.subarray(from * NONCE_BYTES, to * NONCE_BYTES)
      const aads = this.#aads.subarray(from * AAD_BYTES, to * AAD_BYTES)
      const refs = this.#refs.subarray(from * 4, to * 4)
      const status = new Uint8Array(to - from)
      const take = (): void => { for (let i = from; i < to; i++) this.#results[i] = status[i - from] === 1 ? (this.#targets[i] ?? true) : undefined }
      if (!parallel) {
        this.#addon.openRefs(this.#handle, nonces, aads, AAD_BYTES, this.#size, buffers, refs, status)
        take()
        return
      }
      const wait = new Promise<void>((resolve, reject) => {
        this.#addon.openRefsAsync(this.#key, nonces, aads, AAD_BYTES, this.#size, buffers, refs, status, (err) => {
          if (err !== null) reject(new GalleonError('IO_ERROR', `decryption on a pool thread failed (${err.message}); nothing was returned`, { cause: err }))
          else { take(); resolve() }
        })
      })
      // Handled here too: a caller that gives up before finish() (another run failed) must not
      // leave an unhandled rejection behind; finish() still rejects with it.
      wait.catch(() => {})
      this.#waits.push(wait)
    }
    if (PARALLEL_OPEN && count >= SPLIT_MIN_BLOCKS) {
      // The second half starts on a pool thread first, then the first half runs here meanwhile.
      const half = first + (count >> 1)
      call(half, first + count, true)
      call(first, half, false)
    } else {
      call(first, first + count, false)
    }
    this.#base += count
    this.#pending = 0
    this.#batch = new RefBatch()
  }
}
