// Options of the file block store: their documentation, defaults and checks, and the tuning constants
// of its write, read and compaction paths (each with the measurements that chose it).

import { GalleonError, describe } from '../../src/errors.js'

/** Options of the file block store. */
export interface FileBlockStoreOptions {
  /** Directory of the store; created (with its parents) on open. */
  location: string
  /**
   * Size at which the active segment is sealed and a new one started (default 64 MiB). A segment
   * exceeds it only when a single batch is larger, since a batch never spans two segments, or by
   * the 36 bytes of a mark record (see record.ts) written after a sync.
   */
  segmentBytes?: number
  /**
   * A sealed segment whose live bytes fall below this fraction of its size is compacted: its live
   * records are copied forward and the file deleted (default 0.4; 0 disables background compaction,
   * leaving it to `compact()`). Lower values copy less (each byte reclaimed costs threshold /
   * (1 - threshold) bytes of copying: 0.67 at 0.4, 1 at 0.5) and keep more dead records on disk.
   */
  compactionThreshold?: number
  /**
   * Write groups up to this many bytes are copied into the page cache with a synchronous write()
   * on the event loop's thread; larger ones go to libuv's thread pool (default 2 MiB, see
   * DEFAULT_SYNC_WRITE_MAX_BYTES). 0 sends every write to the thread pool: the event loop never
   * waits for a write() (a disk so slow that the kernel throttles writers), at a cost in throughput.
   */
  syncWriteMaxBytes?: number
  /**
   * Reads of up to this many bytes (one call per run of adjacent records) are made with a
   * synchronous pread() on the event loop's thread while such reads stay quick, i.e. come from the
   * page cache (default 2 MiB): a cached read costs a copy, where the thread pool adds a 40-55 us
   * round trip. Reads that take device time (about half of the recent ones, or two very slow ones
   * in a row) send reads to libuv's thread pool for a second at a time; see sync-reads.ts. Meanwhile the event loop waits
   * for the device: 0 sends every read to the thread pool, so that it never does. Use 0 where
   * reads that miss the page cache are the rule and many run at once (they then overlap in the
   * pool), where the device may hang, and always when the storage sits on a file system served by
   * this same process (a FUSE mount or NBD device of its own volumes): a synchronous read would wait
   * for itself.
   */
  syncReadMaxBytes?: number
  /**
   * How many emptied segment files (compacted away) are kept, renamed, to become later segments
   * instead of new files (default 2; 0 deletes them). Overwriting a file's existing pages costs the
   * kernel far less than appending to a new file (no page allocation, no block allocation, and an
   * fdatasync with no size or extent change to commit): about 0.07 against 0.25 to 2.6 ms per MiB
   * copied, and 120-180 against 230-320 µs per 32 KiB write+fdatasync, measured on the 2-vCPU
   * development VM. Files are kept only while all of them together hold at most a quarter of the
   * live bytes or one segment's worth, whichever is more, and never more than the live bytes (so a
   * store whose data is deleted gives its disk space back), and count in `storedBytes`. When durable
   * writes (many syncs, each of at most 1 MiB on average) fill a segment and no spare is at hand, one
   * is made in advance, within the same limits, by writing a segment's worth of zeros in the
   * background; 0 turns that off too.
   */
  spareSegments?: number
  /**
   * Whether a multi-block read that finds its records scattered over the log (random overwrites
   * put them there) copies them, in block order, to the end of the log, so that later reads of that
   * range are one large read instead of one per block, as btrfs's autodefrag does (default false;
   * see relocation.ts). Measured on the 2-vCPU development VM, 1 MiB sequential reads over NBD of a
   * 1 GiB volume after 10 s of 4 KiB random writes: about 450 MiB/s without it; with it about 200
   * MiB/s while the first pass copies, and 1,200-1,300 MiB/s once the volume has been read through
   * about twice. So it pays where ranges are read again and again after random writes, and costs
   * where a range is read once between rewrites (a backup's scan would copy what it reads). It
   * pauses while the file system has less than 5% (at least 512 MiB) free.
   */
  relocateScatteredReads?: boolean
  /**
   * Receives errors of background work (hint files, compaction) that no caller is waiting for.
   * Without it (or when it throws) they are kept in `lastBackgroundError`. Either way the data stays
   * correct: a failed compaction leaves the old segment in place.
   */
  onBackgroundError?: (err: GalleonError) => void
  /**
   * The clock (milliseconds) that times the back-off of segments compaction could not read and says
   * since when (default `Date`). A segment whose read failed is kept, with every block in it, and not
   * tried again for COMPACTION_RETRY_FIRST_MS, then twice as long after each failure in a row, up to
   * COMPACTION_RETRY_MAX_MS; `stats().faults` lists it meanwhile.
   */
  clock?: { now: () => number }
}

const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
// Bitcask's default merge trigger is 60% fragmentation, the same point. Measured on 4 KiB random
// overwrites of a 64 MiB volume, 10 s: 0.5 -> 31.5k writes/s with 2.05x the live bytes on disk,
// 0.4 -> 36.4k (2.32x), 0.3 -> 40.0k (2.46x).
export const DEFAULT_COMPACTION_THRESHOLD = 0.4
// One write call carries at most this much (unless a single batch is larger): big enough to amortise
// the syscall, small enough to be written synchronously (DEFAULT_SYNC_WRITE_MAX_BYTES) without holding up
// the event loop for long. 256 KiB measured no faster on 4 KiB random writes.
export const GROUP_BYTES = 64 * 1024
// Write calls in flight at once. Their bytes land at reserved offsets, so they may complete in any
// order; batches are still acknowledged in call order, and a sync covers every write before it.
export const MAX_WRITES_IN_FLIGHT = 4
// A group up to this size is written with a synchronous write() on the event loop's thread; larger
// ones (compaction's full batches, COMPACTION_BATCH_BYTES and more) go to the thread pool. Copying into
// the page cache is quick, and measured on 2 cores (4 KiB random writes at 32 in flight, file
// backend): handing a 28 KiB group to the thread pool costs the event loop as much time as writing
// it (30-40 us, the woken pool thread preempting it), while the caller also waits for the round
// trip: 37-44k writes/s with the pool, 50-58k written synchronously. A 1 MiB write() (256 blocks,
// about 1.05 MiB with headers) is written synchronously too: 250-320 MiB/s against 240-290 through
// the pool, with less CPU per MiB.
const DEFAULT_SYNC_WRITE_MAX_BYTES = 2 * 1024 * 1024
// Reads up to this size are tried on the event loop's thread (see sync-reads.ts).
const DEFAULT_SYNC_READ_MAX_BYTES = 2 * 1024 * 1024
const DEFAULT_SPARE_SEGMENTS = 2
// Once this much is written to the active segment without a sync, an fdatasync starts in the
// background (nothing waits for it). Without it, all of a segment's bytes were left for the fsync
// that seals it, during which nothing could be written: 30-40 ms per 64 MiB segment, 14% of the
// time under sustained 4 KiB random writes. It also bounds what a durable batch's sync must write.
export const WRITEBACK_SYNC_BYTES = 4 * 1024 * 1024
// getMany() reads at most this much with one call.
export const MAX_READ_RUN_BYTES = 4 * 1024 * 1024
// Compaction copies in batches of about this size, so user writes interleave with it.
export const COMPACTION_BATCH_BYTES = 2 * 1024 * 1024
// A segment compaction could not read (EIO) waits this long before it is tried again, twice as long
// after each further failure, up to the maximum: every write that supersedes a record in a sealed
// segment asks for a pass, and a disk with a bad sector would otherwise be read (and the same
// error reported) at that rate, while the segment, kept, loses nothing by waiting.
export const COMPACTION_RETRY_FIRST_MS = 60_000
export const COMPACTION_RETRY_MAX_MS = 3_600_000

const WALL_CLOCK = { now: (): number => Date.now() }

/** The options of a file block store, checked, with their defaults filled in. */
export interface StoreSettings {
  location: string
  segmentBytes: number
  compactionThreshold: number
  syncWriteMaxBytes: number
  syncReadMaxBytes: number
  spareSegments: number
  relocateScatteredReads: boolean
  onBackgroundError: ((err: GalleonError) => void) | undefined
  clock: { now: () => number }
}

/** Checks the options given to the FileBlockStore constructor (INVALID_ARGUMENT) and fills in the defaults. */
export function checkOptions (options: FileBlockStoreOptions): StoreSettings {
  if (options === null || typeof options !== 'object' || typeof options.location !== 'string' || options.location.length === 0) {
    throw new GalleonError('INVALID_ARGUMENT', `the file block store needs { location: '<directory>' }, got ${describe(options)}`)
  }
  const {
    segmentBytes = DEFAULT_SEGMENT_BYTES, compactionThreshold = DEFAULT_COMPACTION_THRESHOLD,
    syncWriteMaxBytes = DEFAULT_SYNC_WRITE_MAX_BYTES, syncReadMaxBytes = DEFAULT_SYNC_READ_MAX_BYTES, spareSegments = DEFAULT_SPARE_SEGMENTS,
    relocateScatteredReads = false
  } = options
  if (!Number.isSafeInteger(segmentBytes) || segmentBytes <= 0) {
    throw new GalleonError('INVALID_ARGUMENT', `segmentBytes must be a positive integer, got ${describe(segmentBytes)}`)
  }
  if (typeof compactionThreshold !== 'number' || !(compactionThreshold >= 0 && compactionThreshold <= 1)) {
    throw new GalleonError('INVALID_ARGUMENT', `compactionThreshold must be a number from 0 to 1, got ${describe(compactionThreshold)}`)
  }
  if (!Number.isSafeInteger(syncWriteMaxBytes) || syncWriteMaxBytes < 0) {
    throw new GalleonError('INVALID_ARGUMENT', `syncWriteMaxBytes must be a non-negative integer (0: every write through the thread pool), got ${describe(syncWriteMaxBytes)}`)
  }
  if (!Number.isSafeInteger(syncReadMaxBytes) || syncReadMaxBytes < 0) {
    throw new GalleonError('INVALID_ARGUMENT', `syncReadMaxBytes must be a non-negative integer (0: every read through the thread pool), got ${describe(syncReadMaxBytes)}`)
  }
  if (!Number.isSafeInteger(spareSegments) || spareSegments < 0) {
    throw new GalleonError('INVALID_ARGUMENT', `spareSegments must be a non-negative integer (0: delete emptied segment files), got ${describe(spareSegments)}`)
  }
  if (typeof relocateScatteredReads !== 'boolean') {
    throw new GalleonError('INVALID_ARGUMENT', `relocateScatteredReads must be true or false, got ${describe(relocateScatteredReads)}`)
  }
  // Checked here, not when the first background error comes: a handler that is not a function
  // would be found out only then, and the error kept in lastBackgroundError instead.
  if (options.onBackgroundError !== undefined && typeof options.onBackgroundError !== 'function') {
    throw new GalleonError('INVALID_ARGUMENT', `onBackgroundError must be a function taking the error of background work, got ${describe(options.onBackgroundError)}`)
  }
  const clock = options.clock ?? WALL_CLOCK
  if (clock === null || typeof clock !== 'object' || typeof clock.now !== 'function') {
    throw new GalleonError('INVALID_ARGUMENT', `clock must be an object with a now() function returning milliseconds, got ${describe(clock)}`)
  }
  return { location: options.location, segmentBytes, compactionThreshold, syncWriteMaxBytes, syncReadMaxBytes, spareSegments, relocateScatteredReads, onBackgroundError: options.onBackgroundError, clock }
}
