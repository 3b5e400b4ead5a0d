// Per-volume I/O statistics: a ring of time buckets (counts, bytes, latency histogram) kept in typed
// arrays so that recording an operation allocates nothing, plus lifetime counters.

import { GalleonError, describe } from '../errors.js'

/**
 * I/O statistics of one volume: rates and latencies over the sliding window, lifetime counters.
 * Rates are per second over `windowSeconds`; MB is 10^6 bytes.
 */
export interface VolumeMetricsSnapshot {
  /**
   * Span the windowed figures cover, in seconds: the configured window, or less while the recorder
   * is younger than that (never less than one time bucket), so a new volume's rates are not diluted.
   */
  readonly windowSeconds: number
  /** Completed operations (reads, writes and trims, failed ones included) per second over the window. */
  readonly iops: number
  /** Completed reads per second over the window. */
  readonly readIops: number
  /** Completed writes per second over the window. */
  readonly writeIops: number
  /** Completed trims (discards) per second over the window. */
  readonly trimIops: number
  /** Bytes read and written successfully, in MB (10^6 bytes) per second over the window (a trim moves none). */
  readonly throughputMBps: number
  /** Bytes read successfully, in MB (10^6 bytes) per second over the window. */
  readonly readThroughputMBps: number
  /** Bytes written successfully, in MB (10^6 bytes) per second over the window. */
  readonly writeThroughputMBps: number
  /** Mean latency of the window's operations in milliseconds; 0 when there were none. */
  readonly latencyMs: number
  /**
   * Latencies of every operation over the lifetime, summed, in milliseconds: with `readOps +
   * writeOps + trimOps` it gives the lifetime mean (the `_sum` and `_count` of a Prometheus summary).
   */
  readonly latencySumMs: number
  /** Median latency of the window's operations in milliseconds (histogram estimate); 0 when none. */
  readonly latencyP50Ms: number
  /** 99th-percentile latency of the window's operations in milliseconds (histogram estimate); 0 when none. */
  readonly latencyP99Ms: number
  /** Operations in flight right now (begun, not yet ended). */
  readonly queueDepth: number
  /** Cache hits / (hits + misses) over the recorder's lifetime; 0 before any lookup. */
  readonly cacheHitRate: number
  /** Reads completed over the lifetime, failed ones included. */
  readonly readOps: number
  /** Writes completed over the lifetime, failed ones included. */
  readonly writeOps: number
  /** Trims (discards) completed over the lifetime, failed ones included. */
  readonly trimOps: number
  /** Bytes read successfully over the lifetime. */
  readonly readBytes: number
  /** Bytes written successfully over the lifetime. */
  readonly writeBytes: number
  /** Bytes trimmed (discarded) successfully over the lifetime. */
  readonly trimBytes: number
  /** Reads, writes and trims that failed, over the lifetime. */
  readonly errors: number
  /** Checksum failures detected, over the lifetime. */
  readonly checksumErrors: number
  /** Block-cache hits over the lifetime. */
  readonly cacheHits: number
  /** Block-cache misses over the lifetime. */
  readonly cacheMisses: number
}

/** A volume's metrics snapshot together with the volume it belongs to. */
export interface VolumeMetrics extends VolumeMetricsSnapshot {
  /** Id of the volume. */
  readonly volumeId: string
  /** Name of the volume. */
  readonly volumeName: string
  /** QoS: the policy in force, throttling, burst credits, guarantee and latency target status. */
  readonly qos?: import('../qos/scheduler.js').QoSMetrics
}

/** Options of a {@link MetricsRecorder}. */
export interface MetricsRecorderOptions {
  /** Length of the sliding window in seconds (default 10); rounded up to whole time buckets. */
  windowSeconds?: number
  /** Millisecond clock (default `performance.now`); tests inject a fake one. */
  now?: () => number
  /** Width of one time bucket in milliseconds (default 1000; capped at the window length). */
  bucketMs?: number
}

/**
 * The kind of operation passed to {@link MetricsRecorder.end}. A trim (discard, unmap) is its own
 * kind, as the kernel's disk statistics and Ceph's librbd counters keep discards apart: it frees
 * space and moves no data, so counting it as a write would inflate write throughput.
 */
export type IoKind = 'read' | 'write' | 'trim'

// Latency histogram, HdrHistogram-like in spirit: bucket 0 holds [0, 1 µs), buckets 1..108 split
// 1 µs .. 2^27 µs (~134 s) into 4 log-uniform buckets per octave (edges 19% apart), and the last
// bucket holds everything slower. Window min and max narrow the edge buckets when estimating.
const BUCKETS_PER_OCTAVE = 4
const OCTAVES = 27
const LOG_BUCKETS = OCTAVES * BUCKETS_PER_OCTAVE
const OVERFLOW_BUCKET = LOG_BUCKETS + 1
const HISTOGRAM_BUCKETS = LOG_BUCKETS + 2

/** Bucket edges in microseconds: bucket i covers [BUCKET_LOWER_US[i], BUCKET_LOWER_US[i + 1]). */
const BUCKET_LOWER_US = new Float64Array(HISTOGRAM_BUCKETS + 1)
for (let i = 1; i <= OVERFLOW_BUCKET; i++) BUCKET_LOWER_US[i] = 2 ** ((i - 1) / BUCKETS_PER_OCTAVE)
BUCKET_LOWER_US[HISTOGRAM_BUCKETS] = Infinity

// Fields of one time bucket, as offsets into its row of #slotFields.
const F_READ_OPS = 0
const F_WRITE_OPS = 1
const F_READ_BYTES = 2
const F_WRITE_BYTES = 3
const F_LATENCY_SUM_MS = 4
const F_LATENCY_MIN_MS = 5
const F_LATENCY_MAX_MS = 6
const F_TRIM_OPS = 7
const SLOT_FIELDS = 8

// Lifetime counters, as offsets into #totals.
const T_READ_OPS = 0
const T_WRITE_OPS = 1
const T_READ_BYTES = 2
const T_WRITE_BYTES = 3
const T_ERRORS = 4
const T_CHECKSUM_ERRORS = 5
const T_CACHE_HITS = 6
const T_CACHE_MISSES = 7
const T_TRIM_OPS = 8
const T_TRIM_BYTES = 9
const T_LATENCY_SUM_MS = 10
const TOTAL_FIELDS = 11

/** Index of the histogram bucket holding a latency of `us` microseconds. */
function histogramBucket (us: number): number {
  if (!(us >= 1)) return 0
  const index = 1 + Math.floor(Math.log2(us) * BUCKETS_PER_OCTAVE)
  return index > OVERFLOW_BUCKET ? OVERFLOW_BUCKET : index
}

/** Longest metrics window accepted: a day of one-second buckets would be memory for nothing. */
export const MAX_WINDOW_SECONDS = 3600

/** Most time buckets a recorder keeps: its memory, and the work of a snapshot, stay bounded. */
const MAX_SLOTS = 60

/** Throws INVALID_ARGUMENT unless `value` is a number of seconds above 0 and at most MAX_WINDOW_SECONDS. */
export function assertWindowSeconds (value: unknown, what: string): asserts value is number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || value > MAX_WINDOW_SECONDS) {
    throw new GalleonError('INVALID_ARGUMENT', `${what} must be a number of seconds above 0 and at most ${MAX_WINDOW_SECONDS}, got ${describe(value)}`)
  }
}

/**
 * Records the I/O of one volume. The hot-path methods (`begin`, `end`, `cacheHit`, `cacheMiss`,
 * `checksumError`) are O(1) and allocate nothing: each operation lands in the time bucket of its
 * completion, in a ring of buckets covering the window; `snapshot()` merges the live buckets.
 *
 * @example
 * ```ts
 * const startedAt = recorder.begin()
 * let ok = false
 * try { await doRead(); ok = true } finally { recorder.end('read', 4096, startedAt, ok) }
 * ```
 */
export class MetricsRecorder {
  readonly #now: () => number
  readonly #bucketMs: number
  /** Shortest span rates are taken over (the configured bucket width, before long windows coarsen it). */
  readonly #minSpanMs: number
  readonly #slots: number
  /** Clock reading at construction: bucket numbers count from here. */
  readonly #origin: number
  /** Absolute bucket number each ring slot currently holds (-1: never used). */
  readonly #slotBucket: Float64Array
  readonly #slotFields: Float64Array
  readonly #slotHistogram: Float64Array
  readonly #totals = new Float64Array(TOTAL_FIELDS)
  /** Scratch for snapshot(): the window's merged histogram. */
  readonly #merged = new Float64Array(HISTOGRAM_BUCKETS)
  #inFlight = 0

  /** Throws INVALID_ARGUMENT when `windowSeconds` or `bucketMs` is not a positive finite number. */
  constructor (options: MetricsRecorderOptions = {}) {
    const windowSeconds = options.windowSeconds ?? 10
    const bucketMs = options.bucketMs ?? 1000
    assertWindowSeconds(windowSeconds, 'metrics windowSeconds')
    if (typeof bucketMs !== 'number' || !(bucketMs > 0) || !Number.isFinite(bucketMs)) {
      throw new GalleonError('INVALID_ARGUMENT', `metrics bucketMs must be a positive number of milliseconds, got ${String(bucketMs)}`)
    }
    const windowMs = windowSeconds * 1000
    this.#now = options.now ?? (() => performance.now())
    // At most MAX_SLOTS buckets in the ring: a long window gets coarser buckets, not more of them
    // (each bucket holds a latency histogram: 3600 one-second ones were 3.3 MB per volume).
    this.#minSpanMs = Math.min(bucketMs, windowMs)
    this.#bucketMs = Math.max(this.#minSpanMs, windowMs / MAX_SLOTS)
    this.#slots = Math.max(1, Math.ceil(windowMs / this.#bucketMs - 1e-9))
    this.#origin = this.#now()
    this.#slotBucket = new Float64Array(this.#slots).fill(-1)
    this.#slotFields = new Float64Array(this.#slots * SLOT_FIELDS)
    this.#slotHistogram = new Float64Array(this.#slots * HISTOGRAM_BUCKETS)
  }

  /** Length of the full window in seconds (the configured one, rounded up to whole buckets). */
  get windowSeconds (): number { return this.#slots * this.#bucketMs / 1000 }

  /** Starts an operation: counts it in flight and returns its start time, to pass to `end()`. */
  begin (): number {
    this.#inFlight++
    return this.#now()
  }

  /**
   * Ends an operation begun with `begin()`: records its latency and counts it; `bytes` count only
   * when `ok`, a failed operation counts as an error instead.
   */
  end (kind: IoKind, bytes: number, startedAt: number, ok = true): void {
    const now = this.#now()
    if (this.#inFlight > 0) this.#inFlight--
    let latencyMs = now - startedAt
    if (!(latencyMs > 0)) latencyMs = 0
    const isRead = kind === 'read'
    const isTrim = kind === 'trim'
    const totals = this.#totals
    const opsField = isRead ? T_READ_OPS : isTrim ? T_TRIM_OPS : T_WRITE_OPS
    totals[opsField] = totals[opsField]! + 1
    totals[T_LATENCY_SUM_MS] = totals[T_LATENCY_SUM_MS]! + latencyMs
    if (ok) {
      const bytesField = isRead ? T_READ_BYTES : isTrim ? T_TRIM_BYTES : T_WRITE_BYTES
      totals[bytesField] = totals[bytesField]! + bytes
    } else {
      totals[T_ERRORS] = totals[T_ERRORS]! + 1
    }

    const slot = this.#slotAt(now)
    const fields = this.#slotFields
    const row = slot * SLOT_FIELDS
    const opsAt = row + (isRead ? F_READ_OPS : isTrim ? F_TRIM_OPS : F_WRITE_OPS)
    fields[opsAt] = fields[opsAt]! + 1
    // The window's byte rates are throughput: a trim's bytes are freed, not moved.
    if (ok && !isTrim) {
      const bytesAt = row + (isRead ? F_READ_BYTES : F_WRITE_BYTES)
      fields[bytesAt] = fields[bytesAt]! + bytes
    }
    fields[row + F_LATENCY_SUM_MS] = fields[row + F_LATENCY_SUM_MS]! + latencyMs
    if (latencyMs < fields[row + F_LATENCY_MIN_MS]!) fields[row + F_LATENCY_MIN_MS] = latencyMs
    if (latencyMs > fields[row + F_LATENCY_MAX_MS]!) fields[row + F_LATENCY_MAX_MS] = latencyMs
    const histogram = this.#slotHistogram
    const bucketAt = slot * HISTOGRAM_BUCKETS + histogramBucket(latencyMs * 1000)
    histogram[bucketAt] = histogram[bucketAt]! + 1
  }

  /** Counts a block-cache hit. */
  cacheHit (): void { this.#totals[T_CACHE_HITS] = this.#totals[T_CACHE_HITS]! + 1 }

  /** Counts a block-cache miss. */
  cacheMiss (): void { this.#totals[T_CACHE_MISSES] = this.#totals[T_CACHE_MISSES]! + 1 }

  /** Counts a checksum failure. */
  checksumError (): void { this.#totals[T_CHECKSUM_ERRORS] = this.#totals[T_CHECKSUM_ERRORS]! + 1 }

  /** The current figures: windowed rates and latencies, queue depth, lifetime counters. */
  snapshot (): VolumeMetricsSnapshot {
    const now = this.#now()
    const current = this.#bucketNumber(now)
    const oldest = Math.max(0, current - this.#slots + 1)
    const spanMs = Math.max(this.#minSpanMs, now - (this.#origin + oldest * this.#bucketMs))

    let readOps = 0; let writeOps = 0; let trimOps = 0; let readBytes = 0; let writeBytes = 0; let windowLatencyMs = 0
    let minMs = Infinity; let maxMs = 0
    const merged = this.#merged.fill(0)
    for (let slot = 0; slot < this.#slots; slot++) {
      const bucket = this.#slotBucket[slot]!
      if (bucket < oldest || bucket > current) continue
      const row = slot * SLOT_FIELDS
      const fields = this.#slotFields
      readOps += fields[row + F_READ_OPS]!
      writeOps += fields[row + F_WRITE_OPS]!
      trimOps += fields[row + F_TRIM_OPS]!
      readBytes += fields[row + F_READ_BYTES]!
      writeBytes += fields[row + F_WRITE_BYTES]!
      windowLatencyMs += fields[row + F_LATENCY_SUM_MS]!
      minMs = Math.min(minMs, fields[row + F_LATENCY_MIN_MS]!)
      maxMs = Math.max(maxMs, fields[row + F_LATENCY_MAX_MS]!)
      const base = slot * HISTOGRAM_BUCKETS
      for (let i = 0; i < HISTOGRAM_BUCKETS; i++) merged[i] = merged[i]! + this.#slotHistogram[base + i]!
    }
    const ops = readOps + writeOps + trimOps
    const seconds = spanMs / 1000
    const totals = this.#totals
    const hits = totals[T_CACHE_HITS]!
    const lookups = hits + totals[T_CACHE_MISSES]!
    return {
      windowSeconds: seconds,
      iops: ops / seconds,
      readIops: readOps / seconds,
      writeIops: writeOps / seconds,
      trimIops: trimOps / seconds,
      throughputMBps: (readBytes + writeBytes) / 1e6 / seconds,
      readThroughputMBps: readBytes / 1e6 / seconds,
      writeThroughputMBps: writeBytes / 1e6 / seconds,
      latencyMs: ops === 0 ? 0 : windowLatencyMs / ops,
      latencySumMs: totals[T_LATENCY_SUM_MS]!,
      latencyP50Ms: quantileMs(merged, ops, 0.5, minMs, maxMs),
      latencyP99Ms: quantileMs(merged, ops, 0.99, minMs, maxMs),
      queueDepth: this.#inFlight,
      cacheHitRate: lookups === 0 ? 0 : hits / lookups,
      readOps: totals[T_READ_OPS]!,
      writeOps: totals[T_WRITE_OPS]!,
      trimOps: totals[T_TRIM_OPS]!,
      readBytes: totals[T_READ_BYTES]!,
      writeBytes: totals[T_WRITE_BYTES]!,
      trimBytes: totals[T_TRIM_BYTES]!,
      errors: totals[T_ERRORS]!,
      checksumErrors: totals[T_CHECKSUM_ERRORS]!,
      cacheHits: hits,
      cacheMisses: totals[T_CACHE_MISSES]!
    }
  }

  /** Number of the time bucket `now` falls in, counted from construction (a clock behind origin counts as 0). */
  #bucketNumber (now: number): number {
    const bucket = Math.floor((now - this.#origin) / this.#bucketMs)
    return bucket > 0 ? bucket : 0
  }

  /** Ring slot for `now`, cleared first when it still holds an expired bucket. */
  #slotAt (now: number): number {
    const bucket = this.#bucketNumber(now)
    const slot = bucket % this.#slots
    if (this.#slotBucket[slot] !== bucket) {
      this.#slotBucket[slot] = bucket
      const row = slot * SLOT_FIELDS
      this.#slotFields.fill(0, row, row + SLOT_FIELDS)
      this.#slotFields[row + F_LATENCY_MIN_MS] = Infinity
      this.#slotHistogram.fill(0, slot * HISTOGRAM_BUCKETS, (slot + 1) * HISTOGRAM_BUCKETS)
    }
    return slot
  }
}

/**
 * Estimates the q-quantile in milliseconds from a histogram of `count` latencies: finds the bucket
 * holding rank q·count and interpolates linearly inside it, the bucket's edges narrowed to the
 * observed min and max (so a window of identical latencies reports them exactly).
 */
function quantileMs (histogram: Float64Array, count: number, q: number, minMs: number, maxMs: number): number {
  if (count === 0) return 0
  const rank = q * count
  let seen = 0
  for (let i = 0; i < HISTOGRAM_BUCKETS; i++) {
    const inBucket = histogram[i]!
    if (inBucket === 0) continue
    if (seen + inBucket >= rank) {
      const lowerMs = Math.max(BUCKET_LOWER_US[i]! / 1000, minMs)
      const upperMs = Math.min(BUCKET_LOWER_US[i + 1]! / 1000, maxMs)
      if (upperMs <= lowerMs) return lowerMs
      return lowerMs + (upperMs - lowerMs) * ((rank - seen) / inBucket)
    }
    seen += inBucket
  }
  return maxMs
}
