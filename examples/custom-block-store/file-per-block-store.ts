// A third-party block store, as a worked example of the driver interfaces: every block version is a
// file of its own, <location>/<volume>/<shard>/<index>-<gen>, and a small write-ahead journal makes
// each batch atomic and durable. Built on AbstractBlockStore, which checks arguments and lifecycle.
//
// How a batch is stored (batches queued meanwhile are written as one group):
//   1. the group's ops, data included, are appended to `journal.log` as one record with a CRC32, and
//      the journal is fdatasynced: from here the group is durable, and atomic (a record counts only
//      when complete and its CRC matches);
//   2. each block is written to a temporary file renamed over its final name (so a reader sees a
//      whole old or a whole new version), without a sync; deletes unlink;
//   3. once the journal holds `checkpointBytes`, and at close, the files written since the last
//      checkpoint and their directories are fsynced and the journal is emptied.
// Opening replays the journal's complete records over the files (rewriting whatever a crash left
// half-written) and removes temporary files. One process at a time: GalleonFS's metadata lock keeps
// a second instance off a storage path; used on its own, the store takes no lock.

import { mkdir, open, readFile, readdir, rename, stat, unlink, writeFile, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { crc32 } from 'node:zlib'
import {
  AbstractBlockStore, GalleonError, addressKey, parseAddressKey, wrapIo,
  type BlockAddress, type BlockOp, type BlockStoreStats, type BlockStoreSupports
} from '../../src/index.js'

/** Options of {@link FilePerBlockStore}. */
export interface FilePerBlockStoreOptions {
  /** Directory of the store; created (with its parents) on open. */
  location: string
  /** Journal size at which the written files are synced and the journal emptied (default 4 MiB). */
  checkpointBytes?: number
}

const JOURNAL = 'journal.log'
const RECORD_MAGIC = 0x314a4247 // "GBJ1"
const RECORD_HEADER_BYTES = 12
const OP_HEADER_BYTES = 21
const PUT = 1
const DEL = 2
/** Blocks per shard directory, so no directory grows past a few thousand entries. */
const SHARD_BLOCKS = 4096
/** A group stops taking more queued batches at this many bytes of data. */
const GROUP_BYTES = 16 << 20
/** Block files written at once while a group is applied. */
const APPLY_CONCURRENCY = 16
const DEFAULT_CHECKPOINT_BYTES = 4 << 20

interface QueuedBatch {
  ops: readonly BlockOp[]
  resolve: () => void
  reject: (err: unknown) => void
}

const hex = (value: number, digits: number): string => value.toString(16).padStart(digits, '0')

/** One file per block version beside a write-ahead journal; see the top of this file. */
export class FilePerBlockStore extends AbstractBlockStore {
  readonly name = 'file-per-block'
  readonly supports: BlockStoreSupports = { persistent: true, durableSync: true, atomicBatch: true, reclaimsSpace: true }
  readonly location: string
  readonly checkpointBytes: number
  /** Size of every stored block version, by address key. */
  #index = new Map<string, number>()
  #liveBytes = 0
  #journal: FileHandle | undefined
  #journalBytes = 0
  #syncs = 0
  #queue: QueuedBatch[] = []
  #writing: Promise<void> | undefined
  /** Set when the files may lag the journal (a failed apply): every later batch is refused until reopen. */
  #failure: GalleonError | undefined
  /** Written since the last checkpoint: synced before the journal is emptied. */
  #unsyncedFiles = new Set<string>()
  #unsyncedDirs = new Set<string>()
  #knownDirs = new Set<string>()

  constructor (options: FilePerBlockStoreOptions) {
    super()
    if (options === null || typeof options !== 'object' || typeof options.location !== 'string' || options.location.length === 0) {
      throw new GalleonError('INVALID_ARGUMENT', 'the file-per-block store needs { location }, a directory path')
    }
    const checkpointBytes = options.checkpointBytes ?? DEFAULT_CHECKPOINT_BYTES
    if (!Number.isSafeInteger(checkpointBytes) || checkpointBytes <= 0) {
      throw new GalleonError('INVALID_ARGUMENT', `checkpointBytes must be a positive integer, got ${String(options.checkpointBytes)}`)
    }
    this.location = options.location
    this.checkpointBytes = checkpointBytes
  }

  protected async _open (): Promise<void> {
    this.#index = new Map()
    this.#liveBytes = 0
    this.#journalBytes = 0
    this.#failure = undefined
    this.#unsyncedFiles.clear()
    this.#unsyncedDirs.clear()
    this.#knownDirs.clear()
    await mkdir(this.location, { recursive: true })
    await this.#scan()
    // Replay what the journal holds, make it durable in the files, then start an empty journal.
    for (const ops of await readJournal(join(this.location, JOURNAL))) await this.#apply(ops)
    await this.#syncApplied()
    this.#journal = await open(join(this.location, JOURNAL), 'w')
    await syncDirectory(this.location)
  }

  protected async _close (): Promise<void> {
    while (this.#writing !== undefined) await this.#writing
    const journal = this.#journal
    this.#journal = undefined
    try {
      // After a failure the journal is what reopening replays: it stays as it is.
      if (this.#failure === undefined && this.#journalBytes > 0) await this.#checkpoint(journal as FileHandle)
    } finally {
      await journal?.close()
      this.#index.clear()
    }
  }

  protected async _get (address: BlockAddress): Promise<Uint8Array | undefined> {
    if (!this.#index.has(addressKey(address))) return undefined
    try {
      const data = await readFile(this.#fileOf(address))
      return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
    } catch (err) {
      // Deleted between the index lookup and the read.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw wrapIo(err, `could not read a block of the file-per-block store at ${this.location}`)
    }
  }

  protected _batch (ops: readonly BlockOp[]): Promise<void> {
    // Every batch is durable when it resolves (its journal record is synced), so `sync` changes nothing.
    return new Promise((resolve, reject) => {
      this.#queue.push({ ops, resolve, reject })
      this.#startWriting()
    })
  }

  protected async _sync (): Promise<void> {
    // Resolves after every batch called before it, all of which are durable by then.
    await this._batch([])
  }

  protected async * _addresses (volume: number | undefined): AsyncIterable<BlockAddress> {
    for (const key of [...this.#index.keys()]) {
      const address = parseAddressKey(key)
      if (volume === undefined || address.volume === volume) yield address
    }
  }

  protected async _stats (): Promise<BlockStoreStats> {
    return { blocks: this.#index.size, liveBytes: this.#liveBytes, storedBytes: this.#liveBytes + this.#journalBytes, syncs: this.#syncs }
  }

  /** One writer at a time, taking every batch queued meanwhile as one group (group commit). */
  #startWriting (): void {
    if (this.#writing !== undefined) return
    this.#writing = (async () => {
      while (this.#queue.length > 0) {
        let bytes = 0
        let taken = 0
        while (taken < this.#queue.length && (taken === 0 || bytes < GROUP_BYTES)) {
          for (const op of (this.#queue[taken] as QueuedBatch).ops) bytes += op.type === 'put' ? op.data.byteLength : 0
          taken++
        }
        const group = this.#queue.splice(0, taken)
        try {
          const ops = group.flatMap((batch) => batch.ops)
          if (ops.length > 0) await this.#commit(ops)
          for (const batch of group) batch.resolve()
        } catch (err) {
          for (const batch of group) batch.reject(err)
        }
      }
    })().finally(() => {
      this.#writing = undefined
      if (this.#queue.length > 0) this.#startWriting()
    })
  }

  async #commit (ops: readonly BlockOp[]): Promise<void> {
    if (this.#failure !== undefined) throw this.#failure
    const journal = this.#journal as FileHandle
    const record = encodeRecord(ops)
    const end = this.#journalBytes
    try {
      await journal.write(record, 0, record.byteLength, end)
      await journal.datasync()
    } catch (err) {
      // A partial record at the end would hide every later one from the replay: cut it off.
      await journal.truncate(end).catch((cutErr: unknown) => {
        this.#failure = wrapIo(cutErr, `the journal of the file-per-block store at ${this.location} could not be repaired; close and reopen the store`)
      })
      throw writeError(err, this.location)
    }
    this.#journalBytes += record.byteLength
    this.#syncs++
    try {
      await this.#apply(ops)
    } catch (err) {
      // The journal holds the group, so reopening finishes it; until then the files may lag it.
      this.#failure = new GalleonError('IO_ERROR', `the file-per-block store at ${this.location} could not write its block files (${(err as Error).message}); close and reopen it: the journal replays what is missing`, { cause: err })
      throw this.#failure
    }
    if (this.#journalBytes >= this.checkpointBytes) await this.#checkpoint(journal)
  }

  /** Writes the files of a group: for each address only its last op counts. */
  async #apply (ops: readonly BlockOp[]): Promise<void> {
    const last = new Map<string, BlockOp>()
    for (const op of ops) last.set(addressKey(op.address), op)
    const work = [...last]
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < work.length) {
        const [key, op] = work[next++] as [string, BlockOp]
        await this.#applyOne(key, op)
      }
    }
    await Promise.all(Array.from({ length: Math.min(APPLY_CONCURRENCY, work.length) }, worker))
  }

  async #applyOne (key: string, op: BlockOp): Promise<void> {
    const file = this.#fileOf(op.address)
    const dir = join(file, '..')
    const previous = this.#index.get(key)
    if (op.type === 'put') {
      await this.#ensureDirectory(dir, op.address.volume)
      await writeFile(`${file}.tmp`, op.data)
      await rename(`${file}.tmp`, file)
      this.#index.set(key, op.data.byteLength)
      this.#liveBytes += op.data.byteLength - (previous ?? 0)
      this.#unsyncedFiles.add(file)
    } else if (previous !== undefined) {
      await unlink(file).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'ENOENT') throw err })
      this.#index.delete(key)
      this.#liveBytes -= previous
      this.#unsyncedFiles.delete(file)
    } else {
      return
    }
    this.#unsyncedDirs.add(dir)
  }

  async #ensureDirectory (dir: string, volume: number): Promise<void> {
    if (this.#knownDirs.has(dir)) return
    await mkdir(dir, { recursive: true })
    this.#knownDirs.add(dir)
    // New directory entries are durable once their parents are synced.
    this.#unsyncedDirs.add(join(this.location, hex(volume, 8)))
    this.#unsyncedDirs.add(this.location)
  }

  /** Syncs the files and directories written since the last checkpoint, then empties the journal. */
  async #checkpoint (journal: FileHandle): Promise<void> {
    await this.#syncApplied()
    await journal.truncate(0)
    await journal.datasync()
    this.#journalBytes = 0
    this.#syncs++
  }

  async #syncApplied (): Promise<void> {
    for (const file of this.#unsyncedFiles) {
      let handle: FileHandle | undefined
      try {
        handle = await open(file, 'r')
        await handle.datasync()
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw wrapIo(err, `could not sync ${file}`)
      } finally {
        await handle?.close()
      }
    }
    this.#unsyncedFiles.clear()
    for (const dir of this.#unsyncedDirs) await syncDirectory(dir)
    this.#unsyncedDirs.clear()
  }

  /** Builds the index from the files; removes temporary files a crash left behind. */
  async #scan (): Promise<void> {
    for (const volumeName of await readdir(this.location)) {
      if (!/^[0-9a-f]{8}$/.test(volumeName)) continue
      const volume = parseInt(volumeName, 16)
      for (const shardName of await readdir(join(this.location, volumeName))) {
        if (!/^[0-9a-f]{11}$/.test(shardName)) continue
        const dir = join(this.location, volumeName, shardName)
        this.#knownDirs.add(dir)
        for (const fileName of await readdir(dir)) {
          const path = join(dir, fileName)
          if (fileName.endsWith('.tmp')) {
            await unlink(path)
            this.#unsyncedDirs.add(dir)
            continue
          }
          const match = /^([0-9a-f]{14})-([0-9a-f]{14})$/.exec(fileName)
          if (match === null) continue
          const { size } = await stat(path)
          this.#index.set(addressKey({ volume, index: parseInt(match[1] as string, 16), gen: parseInt(match[2] as string, 16) }), size)
          this.#liveBytes += size
        }
      }
    }
  }

  #fileOf (address: BlockAddress): string {
    return join(this.location, hex(address.volume, 8), hex(Math.floor(address.index / SHARD_BLOCKS), 11), `${hex(address.index, 14)}-${hex(address.gen, 14)}`)
  }
}

/** A journal record: header (magic, payload length, CRC32 of the payload), then the ops. */
function encodeRecord (ops: readonly BlockOp[]): Buffer {
  let size = 4
  for (const op of ops) size += OP_HEADER_BYTES + (op.type === 'put' ? 4 + op.data.byteLength : 0)
  const record = Buffer.allocUnsafe(RECORD_HEADER_BYTES + size)
  let at = RECORD_HEADER_BYTES
  at = record.writeUInt32LE(ops.length, at)
  for (const op of ops) {
    at = record.writeUInt8(op.type === 'put' ? PUT : DEL, at)
    at = record.writeUInt32LE(op.address.volume, at)
    at = record.writeBigUInt64LE(BigInt(op.address.index), at)
    at = record.writeBigUInt64LE(BigInt(op.address.gen), at)
    if (op.type === 'put') {
      at = record.writeUInt32LE(op.data.byteLength, at)
      record.set(op.data, at)
      at += op.data.byteLength
    }
  }
  record.writeUInt32LE(RECORD_MAGIC, 0)
  record.writeUInt32LE(size, 4)
  record.writeUInt32LE(crc32(record.subarray(RECORD_HEADER_BYTES)), 8)
  return record
}

/**
 * The complete records of a journal, as op lists. Reading stops at the first record that is cut
 * short or fails its CRC: the tail of a write that a crash interrupted, never acknowledged.
 */
async function readJournal (path: string): Promise<BlockOp[][]> {
  let bytes: Buffer
  try {
    bytes = await readFile(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw wrapIo(err, `could not read the journal ${path}`)
  }
  const records: BlockOp[][] = []
  let at = 0
  while (at + RECORD_HEADER_BYTES <= bytes.byteLength) {
    const size = bytes.readUInt32LE(at + 4)
    const end = at + RECORD_HEADER_BYTES + size
    if (bytes.readUInt32LE(at) !== RECORD_MAGIC || end > bytes.byteLength) break
    const payload = bytes.subarray(at + RECORD_HEADER_BYTES, end)
    if (crc32(payload) !== bytes.readUInt32LE(at + 8)) break
    records.push(decodeOps(payload, path))
    at = end
  }
  return records
}

function decodeOps (payload: Buffer, path: string): BlockOp[] {
  const damaged = (): GalleonError => new GalleonError('CORRUPTION', `a record of the journal ${path} passes its CRC but cannot be decoded; restore the store from a backup`)
  if (payload.byteLength < 4) throw damaged()
  const ops: BlockOp[] = []
  let at = 4
  for (let count = payload.readUInt32LE(0); count > 0; count--) {
    if (at + OP_HEADER_BYTES > payload.byteLength) throw damaged()
    const type = payload.readUInt8(at)
    const address = { volume: payload.readUInt32LE(at + 1), index: Number(payload.readBigUInt64LE(at + 5)), gen: Number(payload.readBigUInt64LE(at + 13)) }
    at += OP_HEADER_BYTES
    if (type === DEL) { ops.push({ type: 'del', address }); continue }
    if (type !== PUT || at + 4 > payload.byteLength) throw damaged()
    const length = payload.readUInt32LE(at)
    if (at + 4 + length > payload.byteLength) throw damaged()
    ops.push({ type: 'put', address, data: payload.subarray(at + 4, at + 4 + length) })
    at += 4 + length
  }
  return ops
}

async function syncDirectory (path: string): Promise<void> {
  const handle = await open(path, 'r')
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}

/** A failed journal write: a full disk is NO_SPACE, anything else IO_ERROR. */
function writeError (err: unknown, location: string): GalleonError {
  const code = (err as NodeJS.ErrnoException)?.code
  if (code === 'ENOSPC' || code === 'EDQUOT') return new GalleonError('NO_SPACE', `the disk holding the file-per-block store at ${location} is full; free space, then retry the write`, { cause: err })
  return wrapIo(err, `could not write the journal of the file-per-block store at ${location}`)
}
