// A small LRU of verified block payloads. Keys include the block's generation, so a new write makes
// a new key and stale entries simply age out; no invalidation protocol is needed.

/** LRU cache of block payloads keyed by address key. */
export class BlockCache {
  readonly #capacity: number
  readonly #entries = new Map<string, Uint8Array>()

  /** @param capacity maximum number of blocks kept (0 disables the cache). */
  constructor (capacity: number) {
    this.#capacity = capacity
  }

  get enabled (): boolean { return this.#capacity > 0 }
  /** Blocks currently cached. */
  get size (): number { return this.#entries.size }

  get (key: string): Uint8Array | undefined {
    const value = this.#entries.get(key)
    if (value !== undefined) {
      // Re-insert to mark as most recently used.
      this.#entries.delete(key)
      this.#entries.set(key, value)
    }
    return value
  }

  set (key: string, value: Uint8Array): void {
    if (this.#capacity === 0) return
    this.#entries.delete(key)
    this.#entries.set(key, value)
    if (this.#entries.size > this.#capacity) {
      const oldest = this.#entries.keys().next()
      if (oldest.done !== true) this.#entries.delete(oldest.value)
    }
  }

  delete (key: string): void {
    this.#entries.delete(key)
  }

  clear (): void {
    this.#entries.clear()
  }
}
