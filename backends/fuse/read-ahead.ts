// Sequential read-ahead for a mount's `data` file.
//
// The kernel asks a direct_io FUSE file for at most 128 KiB per request and waits for each answer
// before it sends the next (libfuse 2 negotiates neither larger requests nor parallel direct I/O),
// so a sequential reader paid a volume read (about 100 us of the event loop per 128 KiB) and then a
// round trip through the kernel and fuse-native's thread (about as long), one after the other:
// 470-630 MiB/s with dd, where a file system answering at once did 1,000-1,200. Once reads are
// sequential, windows of WINDOW_BYTES up to AHEAD_BYTES past the reader are read from the volume
// after each answer has gone (at most WINDOWS_PER_REQUEST per request, so that the event loop is
// free again when the next request comes), while the kernel and the FUSE thread bring that next
// request, which a window then answers with a copy: 700-990 MiB/s in the same runs.
//
// Coherence: a window is used only if nothing changed what the volume reads since its read began.
// `version()` names that state (the engine counts every change of a live view; a snapshot never
// changes); it is taken before the window's read starts and compared when a request wants the
// window, so a write published meanwhile, through this mount or any other way, has it discarded
// and the request read afresh. Where the version is unknown (a replicated volume served by another
// node), nothing is read ahead.

/** What the read-ahead reads from. */
export interface ReadAheadSource {
  /** `into`: a buffer of at least `length` bytes to read into (see MountedVolume). */
  read: (offset: number, length: number, into?: Uint8Array) => Promise<Uint8Array>
  /** Changes whenever what `read` returns may have changed; undefined when that cannot be known. */
  version: () => number | undefined
  size: () => number
}

export const WINDOW_BYTES = 128 * 1024
export const AHEAD_BYTES = 1024 * 1024
/** Windows started per request at most (their reads run on the event loop's thread). */
export const WINDOWS_PER_REQUEST = 2

interface Window {
  readonly start: number
  readonly end: number
  readonly version: number
  /** The bytes, or undefined if the read failed (the request then reads itself and gets the error). */
  readonly data: Promise<Uint8Array | undefined>
  /** The buffer the window is read into, given back for reuse when the window goes. */
  readonly buffer: Uint8Array
}

/**
 * Window buffers kept for reuse. A fresh 128 KiB buffer is mapped and zeroed page by page by the
 * kernel and unmapped again once collected; on the 2-vCPU development VM, windows read into reused
 * buffers made dd read 24-35% more MiB/s in alternating rounds (about 1,000-1,100 against 800).
 */
const SPARE_BUFFERS = AHEAD_BYTES / WINDOW_BYTES + WINDOWS_PER_REQUEST

export class ReadAhead {
  readonly #source: ReadAheadSource
  /** Where a sequential reader's next request starts. */
  #expected = -1
  /** Windows read ahead, contiguous, in offset order. */
  #windows: Window[] = []
  /** Requests answered from a window, and bytes read ahead that were thrown away unused. */
  hits = 0
  discardedBytes = 0
  /** Buffers of windows that went, for the next windows (see SPARE_BUFFERS). */
  readonly #spare: Uint8Array[] = []

  constructor (source: ReadAheadSource) {
    this.#source = source
  }

  /** The bytes [offset, offset + length), from the windows read ahead when they hold them, current. */
  async read (offset: number, length: number): Promise<Uint8Array> {
    const end = offset + length
    const sequential = offset === this.#expected
    this.#expected = end
    if (!sequential) this.clear()
    const window = this.#windows.find((w) => offset >= w.start && end <= w.end)
    let out: Uint8Array | undefined
    if (window !== undefined) {
      const data = await window.data
      if (data !== undefined && this.#source.version() === window.version) {
        out = data.subarray(offset - window.start, end - window.start)
        this.hits++
      } else {
        this.clear()
      }
    }
    out ??= await this.#source.read(offset, length)
    // Windows wholly behind the reader are done with. (Their buffers are reused only by #fill, from
    // a later turn of the event loop: the caller copies `out` out before that.)
    while (this.#windows.length > 0 && (this.#windows[0] as Window).end <= end) this.#release(this.#windows.shift() as Window)
    // After the answer has gone: the windows' reads run on the event loop's thread, while the kernel
    // and the FUSE thread deliver this answer and bring the next request.
    if (sequential) setImmediate(() => { this.#fill(end) })
    return out
  }

  #closed = false
  /** Unmounted: windows are dropped and no more are read. */
  close (): void {
    this.clear()
    this.#closed = true
    this.#spare.length = 0
  }

  /** Forgets every window (a write through the mount, or a reader that jumped). */
  clear (): void {
    for (const window of this.#windows) {
      this.discardedBytes += window.end - window.start
      this.#release(window)
    }
    this.#windows = []
  }

  /** Gives a window's buffer back for reuse, once its read is over (it may still be writing into it). */
  #release (window: Window): void {
    if (this.#closed) return
    void window.data.then(() => {
      if (this.#spare.length < SPARE_BUFFERS && !this.#closed) this.#spare.push(window.buffer)
    })
  }

  /** Starts windows until they reach AHEAD_BYTES past `from`. */
  #fill (from: number): void {
    const version = this.#source.version()
    if (version === undefined || this.#closed) return
    const size = this.#source.size()
    let start = this.#windows.length > 0 ? (this.#windows[this.#windows.length - 1] as Window).end : from
    for (let started = 0; started < WINDOWS_PER_REQUEST && start < Math.min(size, from + AHEAD_BYTES); started++) {
      const length = Math.min(WINDOW_BYTES, size - start)
      const buffer = this.#spare.pop() ?? new Uint8Array(WINDOW_BYTES)
      // The version is taken before the read begins: a change published after it shows as a new version.
      const data = this.#source.read(start, length, buffer).then((bytes) => bytes, () => undefined)
      this.#windows.push({ start, end: start + length, version, data, buffer })
      start += length
    }
  }
}
