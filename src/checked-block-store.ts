// Runtime guard around a block store GalleonFS did not write (a user's instance or registered
// driver), in the manner of kysely's driver wrapper: whatever the driver does wrong becomes a
// GalleonError naming it and the rule it broke, instead of a TypeError, a crash, a raw string
// thrown through the public API, or wrong data served later.

import { GalleonError, copyBytes, describe } from './errors.js'
import { isNoSpaceError } from './abstract-block-store.js'
import { MAX_BLOCK_VALUE_BYTES, type BlockAddress, type BlockOp, type BlockReadOptions, type BlockStore, type BlockStoreFileProblem, type BlockStoreStats, type BlockStoreSupports, type DriverStatus } from './drivers.js'

/** Block stores of GalleonFS's own backends, which keep the contract and are used as they are. */
const vouched = new WeakSet<object>()

/**
 * Marks a block store of a built-in backend, made by `builtIn`'s own constructor: open() uses it
 * without the guard (and its copies). An instance of a subclass is not marked: its overrides are
 * the application's code, which the guard is for.
 */
export function vouchForBlockStore (store: BlockStore, builtIn: abstract new (...args: never[]) => BlockStore): void {
  if (Object.getPrototypeOf(store) === builtIn.prototype) vouched.add(store)
}

const METHODS = ['open', 'close', 'get', 'batch', 'sync', 'addresses', 'deleteVolume', 'stats'] as const
const SUPPORTS = ['persistent', 'durableSync', 'atomicBatch', 'reclaimsSpace'] as const
const STATS = ['blocks', 'liveBytes', 'storedBytes', 'syncs'] as const

/**
 * The store to use for `store`: itself when a built-in backend made it, else a guard around it.
 * Refuses with INVALID_ARGUMENT, naming what is wrong, a store without a name, a method or
 * boolean `supports` (a truthy string would pass for durability it does not have).
 */
export function checkedBlockStore (store: unknown, what: string): BlockStore {
  if (store !== null && typeof store === 'object' && vouched.has(store)) return store as BlockStore
  const record = store as Record<string, unknown> | null
  if (record === null || typeof record !== 'object') {
    throw new GalleonError('INVALID_ARGUMENT', `${what} must be a block store (${METHODS.join(', ')}, name, supports), got ${describe(store)}`)
  }
  const label = typeof record.name === 'string' && record.name.length > 0 ? `the block store '${record.name}'` : what
  const missing: string[] = METHODS.filter((method) => typeof record[method] !== 'function')
  if (typeof record.name !== 'string' || record.name.length === 0) missing.push('name (a non-empty string)')
  const supports = record.supports as Record<string, unknown> | null | undefined
  if (supports === null || typeof supports !== 'object') missing.push('supports (an object)')
  else for (const key of SUPPORTS) if (typeof supports[key] !== 'boolean') missing.push(`supports.${key} (true or false, got ${describe(supports[key])})`)
  if (missing.length > 0) throw new GalleonError('INVALID_ARGUMENT', `${label} is not a usable block store: it lacks ${missing.join(', ')}; see the BlockStore interface`)
  return new CheckedBlockStore(store as BlockStore)
}

class CheckedBlockStore implements BlockStore {
  readonly name: string
  readonly supports: BlockStoreSupports
  readonly #store: BlockStore
  readonly #label: string

  constructor (store: BlockStore) {
    this.#store = store
    this.name = store.name
    // Read once: the engine decides on them per write, and a store may not change its mind later.
    this.supports = Object.freeze({ persistent: store.supports.persistent, durableSync: store.supports.durableSync, atomicBatch: store.supports.atomicBatch, reclaimsSpace: store.supports.reclaimsSpace })
    this.#label = `the block store '${store.name}'`
    // Optional (scrub asks it when present): passed on only for a store that has it, so that a
    // guarded subclass of the file store is still asked about its files.
    if (typeof store.checkFiles === 'function') this.checkFiles = async (options) => await this.#checkFiles(options)
  }

  readonly checkFiles?: (options?: { volume?: number }) => Promise<readonly BlockStoreFileProblem[]>

  async #checkFiles (options?: { volume?: number }): Promise<readonly BlockStoreFileProblem[]> {
    return await this.#call('checkFiles', async () => {
      const problems = await this.#store.checkFiles?.(options) as unknown
      if (!Array.isArray(problems)) throw this.#broken(`checkFiles() must resolve to an array of problems, got ${describe(problems)}`)
      return problems.map((problem: unknown) => {
        const p = problem as Record<string, unknown> | null
        if (p === null || typeof p !== 'object' || typeof p.file !== 'string' || typeof p.code !== 'string' || typeof p.message !== 'string' || !Array.isArray(p.blocks)) {
          throw this.#broken(`checkFiles() must give each problem as { file, code, message } strings and blocks (an array of addresses), got ${describe(problem)}`)
        }
        const blocks = (p.blocks as unknown[]).map((address) => {
          const a = address as Record<string, unknown> | null
          if (a === null || typeof a !== 'object' || !isUint(a.volume) || !isUint(a.index) || !isUint(a.gen)) throw this.#broken(`checkFiles() must give blocks as { volume, index, gen } of non-negative integers, got ${describe(address)}`)
          return { volume: a.volume, index: a.index, gen: a.gen }
        })
        return { file: p.file, code: p.code, message: p.message, blocks }
      })
    })
  }

  get status (): DriverStatus { return this.#store.status }

  async open (): Promise<void> { await this.#call('open', async () => { await this.#store.open() }) }
  async close (): Promise<void> { await this.#call('close', async () => { await this.#store.close() }) }
  async sync (): Promise<void> { await this.#call('sync', async () => { await this.#store.sync() }) }
  async deleteVolume (volume: number): Promise<void> { await this.#call('deleteVolume', async () => { await this.#store.deleteVolume(volume) }) }

  async get (address: BlockAddress, options?: BlockReadOptions): Promise<Uint8Array | undefined> {
    return await this.#call('get', async () => {
      const value = await this.#store.get(address, options)
      const own = this.#value(value, 'get() must resolve to')
      // A copy of its own: a store that later reuses the buffer it returned cannot change what the
      // engine caches or is still working on.
      if (value !== undefined) this.#store.releaseValues?.([value])
      return own
    })
  }

  async getMany (addresses: readonly BlockAddress[], options?: BlockReadOptions): Promise<Array<Uint8Array | undefined>> {
    return await this.#call('getMany', async () => {
      const store = this.#store
      const values = store.getMany !== undefined ? await store.getMany(addresses, options) : await Promise.all(addresses.map(async (address) => await store.get(address, options)))
      if (!Array.isArray(values) || values.length !== addresses.length) {
        throw this.#broken(`getMany() of ${addresses.length} addresses must resolve to an array of as many values, got ${Array.isArray(values) ? `${values.length} values` : describe(values)}`)
      }
      const own = values.map((value) => this.#value(value, 'each value of getMany() must be'))
      store.releaseValues?.(values)
      return own
    })
  }

  batch (ops: readonly BlockOp[], options?: { sync?: boolean }): Promise<void> {
    // Not async, as the store's own: the journal calls it in order and waits on each result.
    let result: unknown
    try {
      result = this.#store.batch(ops, options)
    } catch (err) {
      return Promise.reject(this.#failure('batch', err))
    }
    if (result === null || typeof (result as { then?: unknown })?.then !== 'function') {
      return Promise.reject(this.#broken(`batch() must return a promise, got ${describe(result)}; whether the writes were applied is unknown, so reopen and check the data`))
    }
    return Promise.resolve(result).then(() => {}, (err: unknown) => { throw this.#failure('batch', err) })
  }

  async * addresses (options?: { volume?: number }): AsyncIterable<BlockAddress> {
    let iterable: unknown
    try {
      iterable = this.#store.addresses(options)
    } catch (err) {
      throw this.#failure('addresses', err)
    }
    const source = iterable as Partial<AsyncIterable<unknown> & Iterable<unknown>> | null | undefined
    if (source === null || typeof source !== 'object' || (typeof source[Symbol.asyncIterator] !== 'function' && typeof source[Symbol.iterator] !== 'function')) {
      throw this.#broken(`addresses() must return an async iterable of addresses, got ${describe(iterable)}`)
    }
    const iterator = typeof source[Symbol.asyncIterator] === 'function' ? (source as AsyncIterable<unknown>)[Symbol.asyncIterator]() : (source as Iterable<unknown>)[Symbol.iterator]()
    for (;;) {
      let step: IteratorResult<unknown>
      try {
        step = await iterator.next()
      } catch (err) {
        throw this.#failure('addresses', err)
      }
      if (step.done === true) return
      const address = step.value as Partial<BlockAddress> | null
      if (address === null || typeof address !== 'object' || !isUint(address.volume) || address.volume > 0xffffffff || !isUint(address.index) || !isUint(address.gen)) {
        // The breach is what is reported; a failure to end the scan adds nothing to it.
        await Promise.resolve(iterator.return?.()).catch(() => {})
        throw this.#broken(`addresses() must yield { volume, index, gen } of non-negative integers, got ${describe(address)}`)
      }
      yield { volume: address.volume, index: address.index, gen: address.gen }
    }
  }

  async stats (): Promise<BlockStoreStats> {
    return await this.#call('stats', async () => {
      const stats = await this.#store.stats() as unknown as Record<string, unknown> | null
      if (stats === null || typeof stats !== 'object') throw this.#broken(`stats() must resolve to { ${STATS.join(', ')} }, got ${describe(stats)}`)
      const wrong = STATS.filter((key) => !isUint(stats[key]))
      if (wrong.length > 0) throw this.#broken(`stats() must give ${wrong.join(', ')} as non-negative integers, got ${wrong.map((key) => `${key} ${describe(stats[key])}`).join(', ')}`)
      if (stats.faults !== undefined && !Array.isArray(stats.faults)) throw this.#broken(`stats().faults must be an array when given, got ${describe(stats.faults)}`)
      return stats as unknown as BlockStoreStats
    })
  }

  /** A value the store returned, checked, as a copy of our own. */
  #value (value: unknown, rule: string): Uint8Array | undefined {
    if (value === undefined) return undefined
    if (!(value instanceof Uint8Array) || value.byteLength === 0 || value.byteLength > MAX_BLOCK_VALUE_BYTES) {
      throw this.#broken(`${rule} a Uint8Array of 1..${MAX_BLOCK_VALUE_BYTES} bytes or undefined, got ${describe(value)}`)
    }
    return copyBytes(value)
  }

  async #call<T> (method: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run()
    } catch (err) {
      throw this.#failure(method, err)
    }
  }

  /** What a call that threw or rejected reports: GalleonErrors as they are, anything else wrapped. */
  #failure (method: string, err: unknown): GalleonError {
    if (err instanceof GalleonError) return err
    if (!(err instanceof Error)) {
      return new GalleonError('IO_ERROR', `${this.#label} broke the BlockStore contract: its ${method}() threw ${describe(err)}, not an Error; fix the driver (throw Error objects) and check its data`, { cause: err })
    }
    if (isNoSpaceError(err)) return new GalleonError('NO_SPACE', `${this.#label} failed in ${method}(): ${err.message}. Its disk is full: free space on it or grow it`, { cause: err })
    return new GalleonError('IO_ERROR', `${this.#label} failed in ${method}(): ${err.message}`, { cause: err })
  }

  #broken (rule: string): GalleonError {
    return new GalleonError('IO_ERROR', `${this.#label} broke the BlockStore contract: ${rule}; fix the driver`)
  }
}

function isUint (value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0
}
