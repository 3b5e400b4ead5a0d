// Buffers for reads of runs of records, reused once the caller gives their values back.
//
// A multi-block read (1 MiB from FUSE, NBD or the API) reads its records into one buffer and hands
// out views of it. A fresh buffer of that size comes from mmap: the kernel zeroes and maps every
// page on first touch and unmaps it when the collector frees it. Measured on the 2-vCPU
// development VM, 1 MiB sequential reads through the engine: 1,132 µs of CPU per MiB with a fresh
// buffer per run, 743-861 with buffers reused. Reuse is safe only for a caller that says it is done
// with the values (BlockStore.releaseValues): the engine does once it has copied them out. Values
// nobody gives back keep their buffer until the collector frees it, as before.

/** Runs shorter than this get a buffer of their own (small allocations cost little). */
const MIN_POOLED_BYTES = 64 * 1024
/** Largest buffer kept for reuse (a run is at most MAX_READ_RUN_BYTES). */
const MAX_POOLED_BYTES = 4 * 1024 * 1024
/** Free buffers kept, in bytes over all sizes; more are left to the collector. */
const MAX_FREE_BYTES = 16 * 1024 * 1024

/** Buffer sizes are multiples of this: a caller that keeps its values keeps at most this much more. */
const CAPACITY_STEP = 64 * 1024

/** The size class of a run: the multiple of CAPACITY_STEP that holds it. */
function capacityFor (bytes: number): number {
  return Math.ceil(bytes / CAPACITY_STEP) * CAPACITY_STEP
}

export class ReadBuffers {
  /** Free buffers by capacity. */
  readonly #free = new Map<number, ArrayBuffer[]>()
  #freeBytes = 0
  /** Buffers this pool made (only those come back to it). */
  readonly #pooled = new WeakSet<ArrayBuffer>()
  /** The views of a lent buffer not given back yet. */
  readonly #lent = new WeakMap<ArrayBuffer, Set<Uint8Array>>()

  /** A buffer of `bytes` bytes to read into; not zeroed (every byte handed out must be read first). */
  take (bytes: number): Uint8Array {
    if (bytes < MIN_POOLED_BYTES || bytes > MAX_POOLED_BYTES) return new Uint8Array(Buffer.allocUnsafeSlow(bytes).buffer, 0, bytes)
    const capacity = capacityFor(bytes)
    let buffer = this.#free.get(capacity)?.pop()
    if (buffer !== undefined) {
      this.#freeBytes -= capacity
    } else {
      buffer = Buffer.allocUnsafeSlow(capacity).buffer as ArrayBuffer
      this.#pooled.add(buffer)
    }
    return new Uint8Array(buffer, 0, bytes)
  }

  /**
   * Records that `views` of `run` (from take) went to a caller: the buffer is reused once the caller
   * has released every one of them. Without views (nothing handed out) it is free again at once.
   */
  lend (run: Uint8Array, views: readonly Uint8Array[]): void {
    const buffer = run.buffer as ArrayBuffer
    if (!this.#pooled.has(buffer)) return
    if (views.length === 0) this.#giveBack(buffer)
    else this.#lent.set(buffer, new Set(views))
  }

  /**
   * The caller will not touch these values again. Values that are not lent views of this pool, or
   * were released before, are ignored, so a release can never free a buffer still in use.
   */
  release (values: ReadonlyArray<Uint8Array | undefined>): void {
    for (const value of values) {
      if (value === undefined) continue
      const buffer = value.buffer as ArrayBuffer
      const views = this.#lent.get(buffer)
      if (views === undefined || !views.delete(value) || views.size > 0) continue
      this.#lent.delete(buffer)
      this.#giveBack(buffer)
    }
  }

  #giveBack (buffer: ArrayBuffer): void {
    if (this.#freeBytes + buffer.byteLength > MAX_FREE_BYTES) return
    let free = this.#free.get(buffer.byteLength)
    if (free === undefined) this.#free.set(buffer.byteLength, free = [])
    free.push(buffer)
    this.#freeBytes += buffer.byteLength
  }
}
