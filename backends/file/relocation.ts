// Relocation of scattered reads: random overwrites leave a volume's blocks strewn over the log, one
// record here and one there, and a sequential read of such a range then costs a read call per 4 KiB
// block (on the development VM about 4 us each: 450 MiB/s, where the same range written in order
// reads at 1,300 MiB/s in a few large calls). A multi-block read that found its records scattered
// copies them, in the order it asked for them, to the end of the log as one batch, so the next read
// of that range is one run. This is what btrfs's autodefrag does for files written randomly, and
// what log-structured stores do when they rewrite data in key order. Off by default (the store
// option relocateScatteredReads): the first read of a scattered range costs about twice as much
// (the copies, and the compaction of the segments they empty), so it pays only where ranges are
// read again after random writes; see options.ts for the measurements.
//
// The copies are ordinary records of the same addresses, queued like compaction's: the index is
// checked in the same tick as the batch is queued, so a block overwritten or deleted since it was
// read is not brought back, and a crash before the copies are durable leaves the originals (their
// segment is deleted only after a sync that covers the copies, see compaction.ts). Each copy's
// record crc is checked first: damaged data is left where it is, for the reader to report. One
// few batches at a time, and none while the file system is short of space.

import { statfs } from 'node:fs/promises'
import type { BlockAddress, BlockOp } from '../../src/drivers.js'
import { reportBackground } from './maintenance.js'
import type { StoreState } from './store-state.js'
import { enqueue } from './writer.js'

/** A multi-block read of at least this many records on disk may relocate them. */
export const RELOCATE_MIN_RECORDS = 16
/** ... when they took more than one read call per this many records (runs averaging fewer). */
export const RELOCATE_RECORDS_PER_RUN = 4
/** Relocation stops while the file system has less free space than this fraction of its size... */
const FREE_FRACTION = 0.05
/** ... or than this many bytes, whichever is more. */
const FREE_MIN_BYTES = 512 * 1024 * 1024
/** How long a free-space reading is trusted. */
const FREE_CHECK_MS = 5_000
/** Relocation batches queued and not yet written. */
const MAX_BATCHES_IN_FLIGHT = 4
/** Copies gathered and not yet queued, at most (more reads then relocate nothing). */
const MAX_PENDING_BYTES = 32 * 1024 * 1024
/** How long gathered copies wait for more before they are queued anyway. */
const GATHER_MS = 20

/** One record read from disk, to copy to the end of the log. */
export interface Relocation {
  readonly slot: number
  readonly address: BlockAddress
  readonly segment: number
  readonly offset: number
  /** A copy of the payload (the read's buffer is reused once its caller releases it), in an arena shared by the read's copies. */
  readonly data: Uint8Array
}

/**
 * Relocation state of one store: the copies gathered from reads and not yet queued, the batches
 * queued and not yet written, and the last free-space reading. Copies are gathered until there is
 * more than the writer writes on the event loop's thread (syncWriteMaxBytes, 2 MiB by default), so
 * that they are written from the thread pool, beside the reads, not between them: copying 1 MiB
 * into new page-cache pages took about 1 ms of the event loop per MiB on the development VM.
 */
export class Relocator {
  #pending: Relocation[] = []
  #pendingBytes = 0
  #timer: NodeJS.Timeout | undefined
  #running = 0
  #roomUntil = 0
  #checking = false
  #relocated = 0

  /** Records copied so far (for tests and metrics). */
  get relocated (): number { return this.#relocated }

  /** Whether a read of `records` records on disk that took `runs` read calls should collect its records. */
  wants (records: number, runs: number): boolean {
    return records >= RELOCATE_MIN_RECORDS && runs * RELOCATE_RECORDS_PER_RUN > records && this.#running < MAX_BATCHES_IN_FLIGHT &&
      this.#pendingBytes < MAX_PENDING_BYTES && performance.now() < this.#roomUntil
  }

  /** Re-reads the free space of the store's file system (at most every FREE_CHECK_MS); relocation waits for a reading that shows room. */
  checkRoom (state: StoreState): void {
    const now = performance.now()
    if (this.#checking || now < this.#roomUntil - FREE_CHECK_MS / 2) return
    this.#checking = true
    statfs(state.location).then((fs) => {
      const free = fs.bavail * fs.bsize
      this.#roomUntil = free >= Math.max(FREE_MIN_BYTES, fs.blocks * fs.bsize * FREE_FRACTION) ? performance.now() + FREE_CHECK_MS : 0
    }, () => { this.#roomUntil = 0 }).finally(() => { this.#checking = false })
  }

  /** Takes the copies of one read (in the order it asked for them); they are queued with others once there are enough, or soon. */
  relocate (state: StoreState, records: Relocation[]): void {
    if (records.length === 0) return
    records.sort((a, b) => a.slot - b.slot)
    for (const record of records) {
      this.#pending.push(record)
      this.#pendingBytes += record.data.byteLength
    }
    if (this.#pendingBytes > state.syncWriteMaxBytes) this.#flush(state)
    else this.#timer ??= setTimeout(() => { this.#timer = undefined; this.#flush(state) }, GATHER_MS).unref()
  }

  /** Drops what was gathered (the store is closing). */
  clear (): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
    this.#pending = []
    this.#pendingBytes = 0
  }

  /** Queues copies of the gathered records still where they were read. */
  #flush (state: StoreState): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
    const records = this.#pending
    this.#pending = []
    this.#pendingBytes = 0
    if (state.closing || state.failure !== undefined) return
    const ops: BlockOp[] = []
    // Two reads of one range may both have gathered its records: each is copied once.
    const taken = new Set<string>()
    for (const record of records) {
      // Checked in the tick the batch is queued: nothing overwritten, deleted or moved since the read comes back.
      const location = state.index.get(record.address)
      const key = `${record.segment}:${record.offset}`
      if (location !== undefined && location.data === undefined && location.segment === record.segment && location.offset === record.offset && !taken.has(key)) {
        taken.add(key)
        ops.push({ type: 'put', address: record.address, data: record.data })
      }
    }
    if (ops.length === 0) return
    this.#running++
    this.#relocated += ops.length
    enqueue(state, ops, false).catch((err: unknown) => { reportBackground(state, err) }).finally(() => { this.#running-- })
  }
}

/** Copies of the payloads one read relocates, carved out of one buffer (one allocation per read, not one per block). */
export class RelocationArena {
  readonly records: Relocation[] = []
  readonly #buffer: Uint8Array
  #used = 0

  constructor (bytes: number) {
    const buffer = Buffer.allocUnsafeSlow(bytes)
    this.#buffer = new Uint8Array(buffer.buffer, buffer.byteOffset, bytes)
  }

  add (slot: number, address: BlockAddress, segment: number, offset: number, payload: Uint8Array): void {
    const data = this.#buffer.subarray(this.#used, this.#used + payload.byteLength)
    data.set(payload)
    this.#used += payload.byteLength
    this.records.push({ slot, address, segment, offset, data })
  }
}
