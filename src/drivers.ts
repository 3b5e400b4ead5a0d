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

/**
 * A BlockAddress made by a constructor. The engine and the file store create addresses on their hot
 * paths with it rather than with object literals: once some literal of that shape holds a non-Smi
 * index or gen (every tombstone's gen is 2^52 + gen), V8's optimized code goes on creating literals
 * with the map that change deprecated, and each such object is migrated on first use (250,000
 * migrations in a 5-second NBD write run, about one per block written). Instances of a class keep
 * following the class's current map.
 */
export class Address implements BlockAddress {
  constructor (readonly volume: number, readonly index: number, readonly gen: number) {}
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
  /**
   * Parts of the store its background maintenance had to leave as they are (nothing in them is
   * dropped), e.g. a segment file compaction could not read: absent or empty when there are none.
   */
  readonly faults?: readonly BlockStoreFault[]
}

/** A part of a block store its background maintenance could not handle (see BlockStoreStats.faults). */
export interface BlockStoreFault {
  /** What it is, e.g. the path of a segment file. */
  readonly what: string
  /** The code and message of the last failure. */
  readonly code: string
  readonly message: string
  /** When the first of the failed attempts in a row was made (ISO-8601), and how many there were. */
  readonly since: string
  readonly attempts: number
  /** When it is tried again at the earliest (ISO-8601); null: not until the store is reopened. */
  readonly retryAt: string | null
}

/**
 * A problem with a file a block store keeps, found by `BlockStore.checkFiles` (scrub reports it):
 * e.g. a segment file its list names that is gone, or one in its directory that it does not list.
 */
export interface BlockStoreFileProblem {
  /** The file (a path). */
  readonly file: string
  /** The error code that stands for it (`CORRUPTION`, `IO_ERROR`) and what it means and what to do. */
  readonly code: string
  readonly message: string
  /** The block versions (of the volume asked about) kept in that file that it makes unreadable or lost. */
  readonly blocks: readonly BlockAddress[]
}

/** Options of a block store read. */
export interface BlockReadOptions {
  /**
   * The caller checks every value it gets against a checksum of its own that covers the value and
   * its address (the engine's block header does). A store that checksums its records may then skip
   * checking the value, but still checks that what it read is the record asked for. Without it,
   * the store never returns a value it has not verified.
   */
  readonly payloadChecked?: boolean
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
 * - Values are opaque bytes of 1 .. `MAX_BLOCK_VALUE_BYTES`; the store never interprets them. A
 *   store may keep and write the caller's buffer of a put: callers do not change it afterwards.
 *   The other way round, a value `get`/`getMany` returned is the caller's until `releaseValues`
 *   gives it back: the store does not change it afterwards (the engine's block cache keeps it).
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
  get (address: BlockAddress, options?: BlockReadOptions): Promise<Uint8Array | undefined>
  /**
   * Reads several block versions: the same results as `get` for each, in order. A store may merge
   * the reads of versions stored next to each other (the file store reads a run of adjacent records
   * with one call). `AbstractBlockStore` provides it from `get`; without it the engine calls `get`
   * for each address.
   */
  getMany? (addresses: readonly BlockAddress[], options?: BlockReadOptions): Promise<Array<Uint8Array | undefined>>
  /**
   * Optional: the caller will not touch these values of `get`/`getMany` again (it copied what it
   * needed and kept no view of them), so the store may reuse their memory for later reads (the file
   * store reuses the buffers of multi-block reads). A value not from this store, or released
   * before, must be ignored. Callers that never release lose the reuse, and keep the buffer their
   * values came from (the file store's are rounded up to 64 KiB).
   */
  releaseValues? (values: ReadonlyArray<Uint8Array | undefined>): void
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
  /**
   * Optional: checks the files the store keeps as they are now (scrub calls it): e.g. the file
   * store's segment list against its directory. `volume`: the block versions listed in each problem
   * are that volume's only. Resolves to no problems when all is well.
   */
  checkFiles? (options?: { volume?: number }): Promise<readonly BlockStoreFileProblem[]>
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
  /**
   * Optional, for targets shared by several processes: marks a stored chunk as in use now (a backup
   * reuses it) and says whether it exists. With `chunkTime` (when a chunk was last put or touched,
   * in ms since the epoch; undefined if absent), garbage collection spares chunks newer than an
   * hour, which a backup in progress in another process may be about to name in its manifest.
   */
  touchChunk? (id: string): Promise<boolean>
  chunkTime? (id: string): Promise<number | undefined>
  /**
   * Optional, for targets shared by several processes (all four, or none): small records, named by
   * lowercase UUIDs, of the backups and garbage collections running on the target, which GalleonFS
   * rewrites every few seconds while they run. A deletion then collects no chunk while a backup
   * whose manifest is not written yet runs anywhere, whatever the wall clock did (without leases,
   * only `chunkTime` and the grace period protect such chunks). `putLease` replaces atomically and
   * need not be durable; `getLease` returns the bytes last put, or undefined once deleted.
   */
  putLease? (id: string, data: Uint8Array): Promise<void>
  getLease? (id: string): Promise<Uint8Array | undefined>
  deleteLease? (id: string): Promise<void>
  listLeases? (): AsyncIterable<string>
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
  /**
   * When the mount was made (ISO-8601, as listMounts() shows it): the access time a driver reports
   * for a mount with `noatime` (the fuse driver). Absent: the driver takes the time it mounted.
   */
  readonly mountedAt?: string
  /** The volume's bytes, as the `data` file. */
  readonly data: {
    size: () => number
    /** `into`: a buffer of at least `length` bytes to read into (the result is a view of it), instead of a new one. */
    read: (offset: number, length: number, into?: Uint8Array) => Promise<Uint8Array>
    write: (offset: number, data: Uint8Array) => Promise<void>
    flush: () => Promise<void>
    /**
     * Changes whenever what `read` returns may have changed (a write, trim or revert published by
     * any path); undefined when this node cannot know (a replicated volume served by another node).
     * A driver that reads ahead uses data read at one version only while the version stays.
     */
    version: () => number | undefined
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
  /**
   * The mount option words the driver applies (besides `ro`, `rw`, `sync`, `async` and
   * `encrypted`, which the mount manager handles and does not hand on). When given, `mountVolume`
   * refuses any other word of the call with INVALID_ARGUMENT, naming it and these, before anything
   * is mounted. A driver without it is handed every other word (as before this field existed), and
   * must refuse the ones it does not know.
   */
  readonly options?: readonly string[]
  mount (volume: MountedVolume): Promise<void>
  /** Refuses (BUSY) while the mount is in use, unless `force`. */
  unmount (path: string, options?: { force?: boolean }): Promise<void>
  /**
   * Waits until every write the driver acknowledged so far is in the volume (drivers that buffer
   * writes): before a snapshot, and a flush of the volume. With `report`, rejects (IO_ERROR) if one
   * of those writes failed to reach the volume; without, leaves that to the mount's own writers.
   */
  quiesce? (path: string, options?: { report?: boolean }): Promise<void>
  /** Unmounts whatever is left; called by GalleonFS.close(). */
  close? (): Promise<void>
}

/**
 * A message between nodes: a small JSON header (what to do, ids, epochs) and an optional binary
 * payload (block data), carried without copying into JSON.
 */
export interface TransportMessage {
  /** What the message asks for, e.g. `replicate`, `resync-blocks`, `ping`. */
  readonly kind: string
  /** JSON-serializable fields. */
  readonly header: Readonly<Record<string, unknown>>
  readonly payload?: Uint8Array
}

/**
 * Serves a request from an authenticated peer (`from` is its node id) and returns the reply.
 * A handler that throws a `GalleonError` makes the sender's `request` reject with the same code
 * and message (how NOT_LEADER and a stale epoch reach the sender); any other exception arrives as
 * `IO_ERROR`.
 */
export type TransportHandler = (from: string, request: TransportMessage) => Promise<TransportMessage>

/** Options of `Transport.request`. */
export interface TransportRequestOptions {
  /** The request fails with BACKEND_UNAVAILABLE when no reply arrived in time (default 10 s). */
  readonly timeoutMs?: number
  readonly signal?: AbortSignal
}

/**
 * Transport driver: request/reply messages between the nodes of one cluster. Many requests may be
 * in flight to the same peer at once (pipelining); a sender with too many bytes in flight to a peer
 * waits (backpressure) instead of buffering without bound. A connection that breaks is re-established
 * on the next request. Peers prove membership of the cluster (a shared secret): a stranger can
 * neither send requests nor receive them. Delivery is at most once: a request whose reply was lost
 * rejects with BACKEND_UNAVAILABLE, and the caller decides whether repeating it is safe.
 */
export interface Transport {
  /** Backend name, e.g. `memory`, `tcp`. */
  readonly name: string
  /** This node's id. */
  readonly nodeId: string
  /**
   * Starts accepting requests for `handler`; resolves to the address peers reach this node at
   * (host:port for tcp, with the real port when 0 was asked for).
   */
  listen (handler: TransportHandler): Promise<string>
  /**
   * Sends `message` to the node at `address` and waits for its reply. A failure that proves the
   * request never left this node (nothing listens at the address, the connection could not be
   * made, it was given up on while still queued) is marked with `markNotSent` (`isNotSent` tells):
   * callers may then send it again as a new request (it cannot have run). An unmarked failure may
   * have reached the peer. Never mark an error object shared with requests that may have been sent.
   */
  request (address: string, message: TransportMessage, options?: TransportRequestOptions): Promise<TransportMessage>
  /** Stops listening and closes every connection; requests in flight reject with BACKEND_UNAVAILABLE. */
  close (): Promise<void>
}

/** A node as the coordinator records it. */
export interface ClusterNode {
  readonly id: string
  /** Where its transport listens. */
  readonly address: string
  /** Failure domain, for WriteDistributed and placement (default `default`). */
  readonly zone: string
  readonly labels: Readonly<Record<string, string>>
  /** Free and total capacity in bytes as the node last reported them (placement by balance). */
  readonly capacityBytes: number
  readonly freeBytes: number
  /**
   * The inter-node protocol versions the node speaks, every one from `oldest` to `version`
   * (see src/cluster/protocol.ts). Absent in records of releases before versioning: version 1.
   */
  readonly protocol?: { readonly version: number, readonly oldest: number }
}

/** A member as seen through the coordinator: healthy while its lease is alive. */
export interface ClusterMember extends ClusterNode {
  readonly healthy: boolean
  /** When it joined (ISO 8601). */
  readonly joinedAt: string
}

/** A value in the coordinator's store with its revision (changes on every write of the key). */
export interface CoordinatorEntry {
  readonly key: string
  readonly value: string
  /** Greater than 0; compare-and-swap writes name the revision they expect. */
  readonly revision: number
}

/** What a watch reports: a key written (`put`, with the new entry) or removed (`delete`). */
export interface CoordinatorEvent {
  readonly type: 'put' | 'delete'
  readonly key: string
  readonly entry?: CoordinatorEntry
}

/** Leadership won in an election. */
export interface Leadership {
  readonly election: string
  readonly nodeId: string
  /**
   * Fencing token: strictly greater than the epoch of every earlier leader of this election.
   * Messages carry it; receivers reject an epoch older than one they have seen.
   */
  readonly epoch: number
  /** Resolves when the leadership is lost (lease expired, resigned, coordinator closed). */
  readonly lost: Promise<void>
  /** Gives the leadership up (the next campaigner wins). */
  resign (): Promise<void>
}

/**
 * Coordinator driver: membership with leases, leader election with fencing epochs, and a small
 * consistent key-value store with compare-and-swap and watches (placement records, primary epochs,
 * cluster settings). One handle per node. Values are strings (JSON by convention); keys are
 * `/`-separated paths. Every write is linearizable: a compare-and-swap that reports success was the
 * only one to succeed for that revision.
 */
export interface Coordinator {
  /** Backend name, e.g. `memory`, `etcd`. */
  readonly name: string
  /**
   * Registers this node under a lease of `ttlMs` that the handle keeps alive. If the process dies,
   * the lease expires and the node becomes unhealthy, then is removed. Joining twice updates the record.
   */
  join (node: ClusterNode, options?: { ttlMs?: number }): Promise<void>
  /**
   * Removes this node's record and releases its lease (and any leadership it holds). When it fails
   * (the coordinator out of reach), the node is still a member with its lease kept alive, and
   * leave() can be called again.
   */
  leave (): Promise<void>
  /** Every member: those whose lease is alive are healthy. */
  members (): Promise<ClusterMember[]>
  /**
   * Calls `listener` with the current members once the watch is in place, then with the members
   * after every change; returns a function that stops it. The first call makes it race-free: a
   * change made after watchMembers() returned is either in that first list or reported after it.
   */
  watchMembers (listener: (members: ClusterMember[]) => void): () => void
  /**
   * Waits until this node leads `election` (tied to its lease); see Leadership. While the handle
   * replaces a lost lease (it is still a member), the campaign waits for the new lease; NOT_OPEN
   * only when the node has not joined, has left, or the handle is closed.
   */
  campaign (election: string, options?: { signal?: AbortSignal }): Promise<Leadership>
  /** The current leader of `election` and its epoch, if any. */
  leader (election: string): Promise<{ nodeId: string, epoch: number } | undefined>
  get (key: string): Promise<CoordinatorEntry | undefined>
  /**
   * Writes `value`. With `expectRevision`, only if the key's revision is that one (0: only if the
   * key does not exist); resolves to the new entry, or undefined when the expectation failed.
   */
  put (key: string, value: string, options?: { expectRevision?: number }): Promise<CoordinatorEntry | undefined>
  /** Removes the key (with `expectRevision`, only at that revision); resolves to whether it did. */
  delete (key: string, options?: { expectRevision?: number }): Promise<boolean>
  /** Entries whose key starts with `prefix`, sorted by key. */
  list (prefix: string): Promise<CoordinatorEntry[]>
  /**
   * Reports every change under `prefix` in order; returns a function that stops it. If the watch
   * breaks (connection lost, history compacted), what it missed is reported as each key's latest
   * state: a delete for a key that is gone, a put for one that changed (intermediate values may be skipped).
   */
  watch (prefix: string, listener: (event: CoordinatorEvent) => void): () => void
  /**
   * Calls `listener(false)` when this node's lease ends while it is a member (its keepalives did
   * not reach the coordinator within the lease's time: the handle's own deadline, which passes
   * before the coordinator's), and `listener(true)` once it holds a new one (it joined again).
   * Replication fences on it: a primary serves no I/O while its node may no longer be a member,
   * so that no write is acknowledged after the cluster could have failed its volumes over.
   * Returns a function that stops it. Optional: a coordinator without it gets no such fencing.
   */
  onLeaseChange?: (listener: (held: boolean) => void) => () => void
  /** Stops keeping the lease alive and releases resources (the node then expires as after a crash, unless it left). */
  close (): Promise<void>
}
