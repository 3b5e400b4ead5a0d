// Carves short-lived buffers out of larger zeroed slabs. Allocating a 4 KiB Uint8Array costs about a
// microsecond (a zeroed backing store and external-memory bookkeeping for the garbage collector);
// a view into a slab costs a tenth of that. A slab is freed when the last view into it is dropped,
// so this is only for buffers that are dropped soon: encoded block values on their way to the store.

const SLAB_BYTES = 256 * 1024
/** Larger requests get their own buffer: they amortise the allocation anyway. */
const MAX_SLAB_REQUEST = 16 * 1024

export class SlabAllocator {
  #slab = new Uint8Array(SLAB_BYTES)
  #used = 0

  /** A zero-filled buffer of `length` bytes that no other caller shares. */
  alloc (length: number): Uint8Array {
    if (length > MAX_SLAB_REQUEST) return new Uint8Array(length)
    if (this.#used + length > SLAB_BYTES) {
      this.#slab = new Uint8Array(SLAB_BYTES)
      this.#used = 0
    }
    const view = this.#slab.subarray(this.#used, this.#used + length)
    // Keep views 8-byte aligned, so DataView and typed-array access stay on fast paths.
    this.#used += (length + 7) & ~7
    return view
  }
}
