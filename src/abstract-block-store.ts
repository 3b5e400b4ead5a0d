// Base class for block-store backends: validates arguments and lifecycle, then calls small protected
// hooks, in the manner of abstract-level. Backends override only the underscored methods.

import { GalleonError, assertBytes, assertUint, describe } from './errors.js'
import {
  Address, MAX_BLOCK_VALUE_BYTES,
  type BlockAddress, type BlockOp, type BlockReadOptions, type BlockStore, type BlockStoreStats, type BlockStoreSupports, type DriverStatus
} from './drivers.js'

/**
 * Base class for `BlockStore` implementations. Public methods check state and arguments and make
 * open/close run exactly once even when called concurrently; subclasses implement `_open`, `_close`,
 * `_get`, `_batch`, `_sync`, `_addresses`, `_stats`, and optionally `_deleteVolume`.
 */
export abstract class AbstractBlockStore implements BlockStore {
  abstract readonly name: string
  abstract readonly supports: BlockStoreSupports
  #status: DriverStatus = 'closed'
  #opening: Promise<void> | undefined
  #closing: Promise<void> | undefined
  /** Counts close() calls: a scan begun before one (even if the store was opened again since) is cut. */
  #closes = 0

  get status (): DriverStatus { return this.#status }

  async open (): Promise<void> {
    if (this.#status === 'open') return
    if (this.#opening !== undefined) return await this.#opening
    if (this.#closing !== undefined) {
      // Another caller may have started opening while we waited; start over to join it.
      await this.#closing
      return await this.open()
    }
    this.#status = 'opening'
    this.#opening = (async () => {
      try {
        await this._open()
        this.#status = 'open'
      } catch (err) {
        this.#status = 'closed'
        throw openFailure(err, this.name)
      } finally {
        this.#opening = undefined
      }
    })()
    return await this.#opening
  }

  async close (): Promise<void> {
    if (this.#opening !== undefined) await this.#opening.catch(() => {})
    if (this.#status === 'closed') return
    if (this.#closing !== undefined) return await this.#closing
    this.#status = 'closing'
    this.#closes++
    this.#closing = (async () => {
      try {
        await this._close()
      } finally {
        this.#status = 'closed'
        this.#closing = undefined
      }
    })()
    return await this.#closing
  }

  async get (address: BlockAddress, options?: BlockReadOptions): Promise<Uint8Array | undefined> {
    this.assertOpen()
    checkAddress(address)
    return await this._get(address, options?.payloadChecked === true)
  }

  async getMany (addresses: readonly BlockAddress[], options?: BlockReadOptions): Promise<Array<Uint8Array | undefined>> {
    this.assertOpen()
    if (!Array.isArray(addresses)) throw new GalleonError('INVALID_ARGUMENT', `getMany needs an array of addresses, got ${describe(addresses)}`)
    for (const address of addresses) checkAddress(address)
    return await this._getMany(addresses, options?.payloadChecked === true)
  }

  batch (ops: readonly BlockOp[], options?: { sync?: boolean }): Promise<void> {
    // Not async (one promise less per batch on the write path), but it still only ever rejects.
    try {
      this.assertOpen()
      if (!Array.isArray(ops)) throw new GalleonError('INVALID_ARGUMENT', `batch ops must be an array, got ${describe(ops)}`)
      // The backend gets ops of its own, made of the values just validated (as abstract-level clones
      // each op): a backend may queue them, and the caller may reuse its array or its address
      // objects as soon as batch() returns, before the batch resolves.
      const owned = new Array<BlockOp>(ops.length)
      for (let i = 0; i < ops.length; i++) owned[i] = ownOp(ops[i])
      // Even an empty batch goes to the backend: it must resolve after the batches called before it.
      return this._batch(owned, options?.sync === true)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  async sync (): Promise<void> {
    this.assertOpen()
    await this._sync()
  }

  async * addresses (options?: { volume?: number }): AsyncIterable<BlockAddress> {
    this.assertOpen()
    if (options?.volume !== undefined) checkVolume(options.volume, 'volume')
    // A backend closed under the scan may end it early, as if the rest were deleted: checked at
    // every step and at the end, so a caller never takes a short list for a complete one.
    const closes = this.#closes
    const cut = (): GalleonError => new GalleonError('NOT_OPEN', `the ${this.name} block store was closed during an addresses() scan, so the list is incomplete; open() it and scan again`)
    for await (const address of this._addresses(options?.volume)) {
      if (this.#closes !== closes) throw cut()
      yield address
    }
    if (this.#closes !== closes) throw cut()
  }

  async deleteVolume (volume: number): Promise<void> {
    this.assertOpen()
    checkVolume(volume, 'volume')
    await this._deleteVolume(volume)
  }

  async stats (): Promise<BlockStoreStats> {
    this.assertOpen()
    return await this._stats()
  }

  protected abstract _open (): Promise<void>
  protected abstract _close (): Promise<void>
  /** `payloadChecked`: see BlockReadOptions (a store may ignore it). */
  protected abstract _get (address: BlockAddress, payloadChecked: boolean): Promise<Uint8Array | undefined>
  /** Applies ops in order; when `sync`, resolves only once they (and all earlier batches) are durable. */
  protected abstract _batch (ops: readonly BlockOp[], sync: boolean): Promise<void>
  protected abstract _sync (): Promise<void>
  protected abstract _addresses (volume: number | undefined): AsyncIterable<BlockAddress>
  protected abstract _stats (): Promise<BlockStoreStats>

  /** Default: one `_get` per address, all started at once. */
  protected async _getMany (addresses: readonly BlockAddress[], payloadChecked: boolean): Promise<Array<Uint8Array | undefined>> {
    return await Promise.all(addresses.map(async (address) => await this._get(address, payloadChecked)))
  }

  /** Default: collect the volume's addresses and delete them in one batch. */
  protected async _deleteVolume (volume: number): Promise<void> {
    const ops: BlockOp[] = []
    for await (const address of this._addresses(volume)) ops.push({ type: 'del', address })
    // Even when empty: it resolves after the batches called before it (which may have emptied the volume).
    await this._batch(ops, false)
  }

  /** Throws NOT_OPEN unless the store is open (for subclass methods beyond the interface). */
  protected assertOpen (): void {
    if (this.#status !== 'open') {
      throw new GalleonError('NOT_OPEN', `the ${this.name} block store is ${this.#status}; open() it first`)
    }
  }
}

function checkVolume (volume: unknown, what: string): void {
  assertUint(volume, what)
  if (volume > 0xffffffff) throw new GalleonError('INVALID_ARGUMENT', `${what} must fit in 32 bits (0..4294967295), got ${volume}`)
}

function checkAddress (address: BlockAddress): void {
  if (address === null || typeof address !== 'object') {
    throw new GalleonError('INVALID_ARGUMENT', `block address must be an object { volume, index, gen }, got ${describe(address)}`)
  }
  checkVolume(address.volume, 'address.volume')
  assertUint(address.index, 'address.index')
  assertUint(address.gen, 'address.gen')
}

/** A validated copy of a batch op: each field is read once, checked, and copied (the data bytes are not). */
function ownOp (op: unknown): BlockOp {
  if (op === null || typeof op !== 'object') throw new GalleonError('INVALID_ARGUMENT', `batch op must be an object, got ${describe(op)}`)
  const { type, address, data } = op as { type?: unknown, address?: unknown, data?: unknown }
  if (address === null || typeof address !== 'object') {
    throw new GalleonError('INVALID_ARGUMENT', `block address must be an object { volume, index, gen }, got ${describe(address)}`)
  }
  const { volume, index, gen } = address as { volume?: unknown, index?: unknown, gen?: unknown }
  checkVolume(volume, 'address.volume')
  assertUint(index, 'address.index')
  assertUint(gen, 'address.gen')
  const owned = new Address(volume as number, index, gen)
  if (type === 'put') {
    assertBytes(data, 'put data')
    if (data.byteLength === 0 || data.byteLength > MAX_BLOCK_VALUE_BYTES) {
      throw new GalleonError('INVALID_ARGUMENT', `put data must be 1..${MAX_BLOCK_VALUE_BYTES} bytes, got ${data.byteLength}`)
    }
    return { type: 'put', address: owned, data }
  }
  if (type !== 'del') throw new GalleonError('INVALID_ARGUMENT', `batch op type must be 'put' or 'del', got ${describe(type)}`)
  return { type: 'del', address: owned }
}

/**
 * Why open() failed, as a GalleonError: a full disk (a store may need to write to open: LevelDB
 * writes its log out as a table) is NO_SPACE saying what to do, not a bare IO_ERROR.
 */
function openFailure (err: unknown, name: string): GalleonError {
  const wrapped = wrapIo(err, `could not open the ${name} block store`)
  if (wrapped.code !== 'IO_ERROR' || !isNoSpaceError(err)) return wrapped
  return new GalleonError('NO_SPACE', `${wrapped.message}. Its disk is full: free space on it or grow it, then open again`, { cause: err })
}

/** Wraps a non-Galleon error as IO_ERROR with context; passes GalleonErrors through. */
export function wrapIo (err: unknown, context: string): GalleonError {
  if (err instanceof GalleonError) return err
  const detail = err instanceof Error ? err.message : String(err)
  return new GalleonError('IO_ERROR', `${context}: ${detail}`, { cause: err })
}

/**
 * Whether a failed write means the disk (or the user's quota) is full: by errno code, or in the
 * message or cause, as LevelDB reports it ("No space left on device").
 */
export function isNoSpaceError (err: unknown): boolean {
  if (err === null || typeof err !== 'object') return false
  const { code, message, cause } = err as { code?: unknown, message?: unknown, cause?: unknown }
  if (code === 'ENOSPC' || code === 'EDQUOT') return true
  if (typeof message === 'string' && /No space left on device|Disk quota exceeded/i.test(message)) return true
  return cause !== undefined && cause !== err && isNoSpaceError(cause)
}

/** Compact, order-preserving string form of an address, for Map keys and key-value stores. */
export function addressKey (address: BlockAddress): string {
  return address.volume.toString(16).padStart(8, '0') + address.index.toString(16).padStart(14, '0') + address.gen.toString(16).padStart(14, '0')
}

/** Inverse of `addressKey`. */
export function parseAddressKey (key: string): BlockAddress {
  return {
    volume: parseInt(key.slice(0, 8), 16),
    index: parseInt(key.slice(8, 22), 16),
    gen: parseInt(key.slice(22, 36), 16)
  }
}
