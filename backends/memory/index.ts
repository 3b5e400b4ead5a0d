// In-memory block store: the fast backend for unit tests. Nothing survives close().

import { AbstractBlockStore, addressKey, parseAddressKey } from '../../src/abstract-block-store.js'
import { vouchForBlockStore } from '../../src/checked-block-store.js'
import type { BlockAddress, BlockOp, BlockStoreStats, BlockStoreSupports } from '../../src/drivers.js'
import { copyBytes } from '../../src/errors.js'

/** Options of the memory block store (none yet; kept for symmetry with other backends). */
export interface MemoryBlockStoreOptions {}

/**
 * Keeps block versions in a Map. Batches are applied synchronously, so they are trivially atomic;
 * there is no durability.
 */
export class MemoryBlockStore extends AbstractBlockStore {
  readonly name = 'memory'
  readonly supports: BlockStoreSupports = { persistent: false, durableSync: false, atomicBatch: true, reclaimsSpace: true }
  #blocks = new Map<string, Uint8Array>()
  #liveBytes = 0

  constructor (_options: MemoryBlockStoreOptions = {}) {
    super()
    // A built-in store: GalleonFS.open() uses it without the guard around users' stores (a
    // subclass's overrides are a user's code, and get the guard).
    vouchForBlockStore(this, MemoryBlockStore)
  }

  protected async _open (): Promise<void> {}

  protected async _close (): Promise<void> {
    this.#blocks.clear()
    this.#liveBytes = 0
  }

  protected async _get (address: BlockAddress): Promise<Uint8Array | undefined> {
    const value = this.#blocks.get(addressKey(address))
    return value === undefined ? undefined : copyBytes(value)
  }

  protected async _batch (ops: readonly BlockOp[]): Promise<void> {
    for (const op of ops) {
      const key = addressKey(op.address)
      const previous = this.#blocks.get(key)
      if (previous !== undefined) this.#liveBytes -= previous.byteLength
      if (op.type === 'put') {
        // Copy: the caller may reuse its buffer after the batch resolves.
        this.#blocks.set(key, copyBytes(op.data))
        this.#liveBytes += op.data.byteLength
      } else {
        this.#blocks.delete(key)
      }
    }
  }

  protected async _sync (): Promise<void> {}

  protected async * _addresses (volume: number | undefined): AsyncIterable<BlockAddress> {
    for (const key of [...this.#blocks.keys()]) {
      const address = parseAddressKey(key)
      if (volume === undefined || address.volume === volume) yield address
    }
  }

  protected async _stats (): Promise<BlockStoreStats> {
    return { blocks: this.#blocks.size, liveBytes: this.#liveBytes, storedBytes: this.#liveBytes, syncs: 0 }
  }
}

/** Backend descriptor: name, availability, and a factory. */
export const memoryBackend = {
  name: 'memory',
  isAvailable: async (): Promise<boolean> => true,
  create: (options: MemoryBlockStoreOptions = {}): MemoryBlockStore => new MemoryBlockStore(options)
}
export { MemoryNetwork, MemoryTransport, type MemoryNetworkOptions, type MemoryNetworkStats, type MemoryMessageInfo } from './transport.js'
export { MemoryCoordinatorCluster, MemoryCoordinator, ManualClock, type MemoryCoordinatorClusterOptions, type CoordinatorClock } from './coordinator.js'
