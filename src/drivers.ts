// The driver interfaces GalleonFS composes: each has backends in backends/<name>/ and a shared
// conformance suite in test/conformance/. Nothing but interfaces lives here.

/**
 * Where one stored block version lives. `volume` is the volume's compact storage id (not its UUID),
 * `index` the block number inside the volume, and `gen` the volume's write generation that produced
 * this version. Including the generation lets several versions of one block coexist, which is what
 * copy-on-write snapshots and clones are built on.
 */
export interface BlockAddress {
  /** Compact numeric volume storage id (uint32). */
  readonly volume: number
  /** Block number within the volume (safe integer). */
  readonly index: number
  /** Write generation (safe integer, unique per volume). */
  readonly gen: number
}

/** One operation of an atomic batch. */
export type BlockOp =
  | { readonly type: 'put', readonly address: BlockAddress, readonly data: Uint8Array }
  | { readonly type: 'del', readonly address: BlockAddress }

/** What a block store can do; the conformance suite skips what a backend declares it lacks. */
export interface BlockStoreSupports {
  /** Data survives close() and reopen of the same location. */
  readonly persistent: boolean
  /** `sync()` and `batch(..., { sync: true })` make data survive power loss and kill -9. */
  readonly durableSync: boolean
  /** A batch is all-or-nothing across a crash. */
  readonly atomicBatch: boolean
  /** The backend reclaims space of deleted/overwritten blocks (by compaction or in place). */
  readonly reclaimsSpace: boolean
}

/** Space accounting of a block store. */
export interface BlockStoreStats {
  /** Number of live block versions. */
  readonly blocks: number
  /** Bytes of live block values. */
  readonly liveBytes: number
  /** Bytes the backend occupies on its medium (including garbage awaiting compaction). */
  readonly storedBytes: number
  /**
   * Syncs to stable storage (fdatasync, fsync, or a database's synced write) since the store was
   * constructed; 0 for a store without `durableSync`. Shows how well group commit works.
   */
  readonly syncs: number
}

/** Lifecycle status of a driver. */
export type DriverStatus = 'opening' | 'open' | 'closing' | 'closed'

/**
 * Block store driver: a small durable key-value store of block versions.
 *
 * Contract (checked by `blockStoreSuite`):
 * - `get` returns exactly the bytes last `put` at that address, or `undefined`.
 * - `batch` applies its ops in order; after it resolves, `get` sees them. With `atomicBatch`, a crash
 *   leaves either all or none of a batch.
 * - With `durableSync`, everything whose `batch` resolved before a `sync()` resolved (or a batch
 *   called with `{ sync: true }`) survives kill -9 and power loss.
 * - Values are opaque bytes of 1 .. `MAX_BLOCK_VALUE_BYTES`; the store never interprets them.
 * - Calls may be issued concurrently; batches are applied in call order.
 */
export interface BlockStore {
  /** Backend name, e.g. `file`. */
  readonly name: string
  /** Declared capabilities. */
  readonly supports: BlockStoreSupports
  /** Current lifecycle status. */
  readonly status: DriverStatus
  /** Opens the store (creating it if needed) and recovers from any crash. Idempotent. */
  open (): Promise<void>
  /** Flushes everything acknowledged and releases resources. Idempotent. */
  close (): Promise<void>
  /** Reads one block version. */
  get (address: BlockAddress): Promise<Uint8Array | undefined>
  /**
   * Reads several block versions: the same results as `get` for each, in order. A store may merge
   * the reads of versions stored next to each other (the file store reads a run of adjacent records
   * with one call). `AbstractBlockStore` provides it from `get`; without it the engine calls `get`
   * for each address.
   */
  getMany? (addresses: readonly BlockAddress[]): Promise<Array<Uint8Array | undefined>>
  /** Applies puts and deletes in order, atomically where `supports.atomicBatch`. */
  batch (ops: readonly BlockOp[], options?: { sync?: boolean }): Promise<void>
  /** Makes every batch resolved so far durable. */
  sync (): Promise<void>
  /** Every stored address, optionally of one volume, in no particular order. */
  addresses (options?: { volume?: number }): AsyncIterable<BlockAddress>
  /** Deletes every version of every block of a volume. */
  deleteVolume (volume: number): Promise<void>
  /** Space accounting. */
  stats (): Promise<BlockStoreStats>
}

/** Largest value a block store must accept (engine header + a 1 MiB block + room for future framing). */
export const MAX_BLOCK_VALUE_BYTES = (1 << 20) + 4096

/**
 * Backup target driver: where backups live. Two flat namespaces of immutable objects: chunks
 * (content-addressed: the id is the SHA-256 of the chunk's uncompressed data, 64 lowercase hex
 * digits) and manifests (one per backup, named by the backup's UUID). GalleonFS writes every chunk
 * of a backup before its manifest, so a manifest on the target means a complete backup.
 *
 * Contract (checked by `backupTargetSuite`):
 * - `put*` is atomic: a reader never sees part of an object, also after a crash mid-put; putting an
 *   id that exists replaces it with the same bytes (chunks) or the new bytes (manifests).
 * - A resolved `putManifest` is durable (survives kill -9 and power loss on a durable medium), and
 *   so is every chunk put before `flush()` resolved (GalleonFS flushes before it puts a manifest).
 *   A target without `flush` makes every put durable before it resolves.
 * - `get*` returns exactly the bytes put, or `undefined`; `list*` yields every id once.
 * - Ids that are not of the right shape are refused with INVALID_ARGUMENT (no path tricks).
 */
export interface BackupTarget {
  /** Backend name, e.g. `directory`. */
  readonly name: string
  /** Where it stores, for messages and listings (a path, a URL). */
  readonly location: string
  /** Prepares the target (creating it if needed). Idempotent. */
  open (): Promise<void>
  /** Releases resources. Idempotent. */
  close (): Promise<void>
  hasChunk (id: string): Promise<boolean>
  putChunk (id: string, data: Uint8Array): Promise<void>
  /** Makes every chunk put so far durable (optional; see the contract above). */
  flush? (): Promise<void>
  getChunk (id: string): Promise<Uint8Array | undefined>
  deleteChunk (id: string): Promise<void>
  listChunks (): AsyncIterable<string>
  putManifest (id: string, data: Uint8Array): Promise<void>
  getManifest (id: string): Promise<Uint8Array | undefined>
  deleteManifest (id: string): Promise<void>
  listManifests (): AsyncIterable<string>
  /**
   * Optional: stores / reads the target's index, a summary of every backup that GalleonFS rewrites
   * (atomically) after each backup and deletion. The manifests stay the source of truth.
   */
  putIndex? (data: Uint8Array): Promise<void>
  getIndex? (): Promise<Uint8Array | undefined>
}

/**
 * Key provider driver: wraps and unwraps data-encryption keys (DEKs) with a key-encryption key it
 * holds (a key file, a passphrase, a KMS, an HSM). GalleonFS stores only wrapped DEKs. `context`
 * (a volume id) is bound to the wrapped key, so a wrapped key cannot be moved to another volume.
 * `unwrap` of a key wrapped under another KEK or context rejects with DECRYPTION_FAILED.
 */
export interface KeyProvider {
  /** Provider name, e.g. `internal`, `passphrase`, `external`. */
  readonly name: string
  /** Identifies the KEK in use (changes when it is rotated), stored beside each wrapped key. */
  readonly keyId: string
  wrap (dek: Uint8Array, context: string): Promise<Uint8Array>
  unwrap (wrapped: Uint8Array, context: string): Promise<Uint8Array>
}

/** What a mount driver presents at a mount point. */
export interface MountedVolume {
  /** Mount id, and the absolute path of the mount point. */
  readonly id: string
  readonly path: string
  readonly readOnly: boolean
  /** Every write is WriteDurable: the driver must not acknowledge a write before it is stored. */
  readonly sync: boolean
  /** Mount options besides ro/rw/sync (from the storage class and the call), for the driver to apply. */
  readonly options: readonly string[]
  /** The volume's bytes, as the `data` file. */
  readonly data: {
    size: () => number
    read: (offset: number, length: number) => Promise<Uint8Array>
    write: (offset: number, data: Uint8Array) => Promise<void>
    flush: () => Promise<void>
  }
  /** Contents of `README.txt` (volume facts, for people) and `.galleonfs_metadata` (JSON, for programs). */
  readme: () => string
  metadata: () => string
}

/**
 * Mount driver: presents volumes to the operating system. `virtual` (the default) registers mounts
 * for the VolumeFile API only; `fuse` makes each mount point a directory holding `data`,
 * `README.txt` and `.galleonfs_metadata`.
 */
export interface MountDriver {
  readonly name: string
  mount (volume: MountedVolume): Promise<void>
  /** Refuses (BUSY) while the mount is in use, unless `force`. */
  unmount (path: string, options?: { force?: boolean }): Promise<void>
  /** Waits until every write the driver acknowledged is in the volume (drivers that buffer writes). */
  quiesce? (path: string): Promise<void>
  /** Unmounts whatever is left; called by GalleonFS.close(). */
  close? (): Promise<void>
}
