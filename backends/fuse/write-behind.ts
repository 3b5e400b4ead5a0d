// Write-behind of a FUSE mount: writes acknowledged to the kernel before they reach the volume,
// applied in the order they were accepted, and the failure of one kept for the mount's next fsync
// or close.

/** Bytes of accepted writes a mount may have on their way to the volume. */
const WRITE_BEHIND_BYTES = 16 * 1024 * 1024

/**
 * Writes accepted before they are stored: overlapping writes are applied in the order accepted,
 * reads wait for the writes they overlap, and a failure is kept for the next drain().
 */
export class WriteBehind {
  readonly #pending = new Set<{ start: number, end: number, done: Promise<void>, failed?: { error: unknown } }>()
  #bytes = 0
  #failure: unknown

  /**
   * Accepts a write (waiting only when too much is pending); `store` does the real write.
   * `storeKeepsOrder`: whether `store` applies writes to a block in the order it is called (a
   * volume served on this node does): then each write is stored at once, so that a write made
   * another way (the API, NBD, another mount) after this one was acknowledged comes after it,
   * instead of being overtaken by it and lost. Otherwise (a volume whose primary is another node,
   * where a forwarded call may be sent again after a later one) a write waits for the earlier
   * writes it overlaps to be stored.
   */
  async accept (start: number, data: Uint8Array, store: (start: number, data: Uint8Array) => Promise<void>, storeKeepsOrder: boolean): Promise<void> {
    if (this.#failure !== undefined) throw this.#failure
    while (this.#bytes >= WRITE_BEHIND_BYTES) await Promise.race([...this.#pending].map(async (entry) => await entry.done))
    const before = storeKeepsOrder ? [] : this.#overlapping(start, start + data.byteLength)
    const entry: { start: number, end: number, done: Promise<void>, failed?: { error: unknown } } = { start, end: start + data.byteLength, done: Promise.resolve() }
    entry.done = (before.length === 0 ? store(start, data) : Promise.all(before).then(async () => { await store(start, data) })).catch((err: unknown) => {
      this.#failure ??= err
      entry.failed = { error: err }
    }).finally(() => {
      this.#pending.delete(entry)
      this.#bytes -= data.byteLength
    })
    this.#pending.add(entry)
    this.#bytes += data.byteLength
  }

  /** Waits for the pending writes that overlap [start, end). */
  async settle (start: number, end: number): Promise<void> {
    const waits = this.#overlapping(start, end)
    if (waits.length > 0) await Promise.all(waits)
  }

  /**
   * Waits for every pending write; throws if any write ever failed in the background. The failure
   * stays: every later fsync, close and write of the mount reports it, until it is mounted again
   * (like a file system that turned read-only after an I/O error), so no writer misses it.
   */
  async drain (): Promise<void> {
    while (this.#pending.size > 0) await Promise.all([...this.#pending].map(async (entry) => await entry.done))
    if (this.#failure !== undefined) throw this.#failure
  }

  /** What failed in the background, if anything. */
  get failure (): unknown { return this.#failure }

  /**
   * Waits for the writes accepted so far (those accepted meanwhile are not waited for: a process
   * that keeps writing does not hold up a snapshot or a flush), and returns what one of them
   * failed with, if one did (undefined otherwise).
   */
  async settleAccepted (): Promise<{ error: unknown } | undefined> {
    const accepted = [...this.#pending]
    if (accepted.length > 0) await Promise.all(accepted.map(async (entry) => await entry.done))
    return accepted.find((entry) => entry.failed !== undefined)?.failed
  }

  #overlapping (start: number, end: number): Array<Promise<void>> {
    const out: Array<Promise<void>> = []
    for (const entry of this.#pending) if (entry.start < end && start < entry.end) out.push(entry.done)
    return out
  }
}
