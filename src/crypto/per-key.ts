// Something made from a key's bytes (a node:crypto KeyObject, a native key handle) and kept per key
// array, so that it is not made again for every block. Checked against a copy of the key's bytes
// on each use: a key array changed in place gets a new one rather than a stale one.

export class PerKey<T> {
  readonly #made = new WeakMap<Uint8Array, { bytes: Uint8Array, value: T }>()
  readonly #make: (key: Uint8Array) => T

  constructor (make: (key: Uint8Array) => T) {
    this.#make = make
  }

  /** The value for `key`'s current bytes, made on first use. */
  get (key: Uint8Array): T {
    const cached = this.#made.get(key)
    if (cached !== undefined && cached.bytes.byteLength === key.byteLength) {
      const bytes = cached.bytes
      let same = true
      for (let i = 0; i < bytes.byteLength; i++) if (bytes[i] !== key[i]) { same = false; break }
      if (same) return cached.value
    }
    // new Uint8Array copies (Buffer#slice would be a view of the same bytes).
    const made = { bytes: new Uint8Array(key), value: this.#make(key) }
    this.#made.set(key, made)
    return made.value
  }
}
