// Public enums and record types of the GalleonFS API.

/** How durable a write must be before its promise resolves. */
export enum WriteConcern {
  /** Accepted by the engine and handed to the OS: survives `close()` and a process crash, not power loss. */
  WriteAcknowledged = 'WriteAcknowledged',
  /** Synced to stable storage (group-committed): survives kill -9 and power loss. */
  WriteDurable = 'WriteDurable',
  /** Durable on the primary and at least one other node. */
  WriteReplicated = 'WriteReplicated',
  /** Durable on the primary and on nodes in at least two zones. */
  WriteDistributed = 'WriteDistributed'
}

/** Lifetime class of a volume. */
export enum VolumeType {
  /** Removed when the instance closes or reopens. */
  Ephemeral = 'ephemeral',
  /** Kept until deleted. */
  Persistent = 'persistent',
  /** Kept until deleted; meant to be attached by several consumers. */
  Shared = 'shared'
}

/** How consumers may attach a volume (Kubernetes semantics). */
export enum AccessMode {
  ReadWriteOnce = 'ReadWriteOnce',
  ReadOnlyMany = 'ReadOnlyMany',
  ReadWriteMany = 'ReadWriteMany'
}

/** Backup strategies (used by the backup feature). */
export enum BackupStrategy {
  Full = 'full',
  Incremental = 'incremental',
  Differential = 'differential'
}

/** Lifecycle state of a volume. */
export enum VolumeState {
  /** Being created. */
  Creating = 'creating',
  /** Ready for I/O. */
  Available = 'available',
  /** Growing to a new size. */
  Expanding = 'expanding',
  /** Replicated, with fewer in-sync copies than it asks for (I/O works; redundancy is reduced). */
  Degraded = 'degraded',
  /** Being deleted. */
  Deleting = 'deleting',
  /** Unusable; see events and logs. */
  Failed = 'failed'
}

/** What happens to a volume's data when it is deleted through its claim. */
export type ReclaimPolicy = 'Delete' | 'Retain'
/** When a volume is bound to storage. */
export type VolumeBindingMode = 'Immediate' | 'WaitForFirstConsumer'

/** A volume as the API reports it (a snapshot of its record; mutate through the API only). */
export interface Volume {
  /** UUID. */
  readonly id: string
  /** Name, unique within its namespace. */
  readonly name: string
  /** Tenant namespace (`default` unless created in another); `namespace/name` names it anywhere. */
  readonly namespace: string
  readonly type: VolumeType
  readonly state: VolumeState
  /** Size in bytes (a multiple of `blockSize`). */
  readonly sizeBytes: number
  /** Block size in bytes. */
  readonly blockSize: number
  /** Storage class name. */
  readonly storageClass: string
  /** Number of copies of the data (1 = this node only). */
  readonly replicas: number
  /** Whether its blocks are encrypted at rest (AES-256-GCM), from its storage class. */
  readonly encrypted: boolean
  readonly accessModes: readonly AccessMode[]
  readonly labels: Readonly<Record<string, string>>
  /** ISO-8601 creation time. */
  readonly createdAt: string
  /** ISO-8601 time of the last change to the record. */
  readonly updatedAt: string
  /** For a clone: the volume and snapshot it was cloned from (absent once it has its own copy of everything). */
  readonly source?: { readonly volumeId: string, readonly snapshotId: string }
  /** The volume's own QoS policy (setQoSPolicy), which overrides its storage class's `qos_*` parameters. */
  readonly qos?: import('./qos/policy.js').QoSPolicy
  /** The storage pool it is provisioned in (from `createVolume({ pool })` or its class's `pool` parameter). */
  readonly pool?: string
}

/** A point-in-time, read-only view of a volume. */
export interface Snapshot {
  /** UUID. */
  readonly id: string
  /** Unique among the volume's snapshots. */
  readonly name: string
  readonly volumeId: string
  /** Size of the volume when the snapshot was taken. */
  readonly sizeBytes: number
  /** ISO-8601 creation time. */
  readonly createdAt: string
  /** True for a snapshot `cloneVolume` took of a live volume; it goes away with its last clone. */
  readonly implicit: boolean
  /** Ids of the clones made from this snapshot that still read from it. */
  readonly clones: readonly string[]
}

/** A storage class: a named template for volumes. */
export interface StorageClass {
  readonly name: string
  readonly provisioner: string
  readonly parameters: Readonly<Record<string, string>>
  readonly reclaimPolicy: ReclaimPolicy
  readonly volumeBindingMode: VolumeBindingMode
  readonly allowedTopologies: readonly string[]
  readonly mountOptions: readonly string[]
  /** True for the classes every instance has. */
  readonly builtIn: boolean
}

/** Options of `createVolume`. */
export interface CreateVolumeOptions {
  /** Name, unique within its namespace; generated when omitted. */
  name?: string
  /** Namespace (default: the caller's, `default` for the application). */
  namespace?: string
  type?: VolumeType | `${VolumeType}`
  /** Size in bytes, or a size string such as `100M` or `1G`. */
  sizeBytes: number | string
  /** Storage class name (default `fast-local-ssd`). */
  storageClass?: string
  /** Overrides the class's replica count. */
  replicas?: number
  /**
   * Storage pool to provision the volume in (default: the class's `pool` parameter, if any; naming
   * another pool than the class does is refused). NO_SPACE when the pool cannot take `sizeBytes`.
   */
  pool?: string
  accessModes?: ReadonlyArray<AccessMode | `${AccessMode}`>
  labels?: Record<string, string>
  /** A QoS policy of this volume, overriding its storage class's (see setQoSPolicy). */
  qos?: import('./qos/policy.js').QoSPolicyInput
}

/** Result of `scrub`. */
export interface ScrubReport {
  readonly volumeId: string
  readonly blocksChecked: number
  /**
   * Blocks whose stored checksum did not match, or that could not be read, or whose stored version
   * is in a file that `storeProblems` reports gone or damaged.
   */
  readonly badBlocks: ReadonlyArray<{ readonly index: number, readonly generation: number, readonly code: string, readonly message: string }>
  /**
   * Problems with the files of the block store the volume is in, found as the scrub ends (the file
   * store's segment list against its directory: a listed segment file gone, replaced or cut short,
   * a segment file not listed, the list gone or damaged). They concern the whole store, not just
   * this volume. Empty when all is well, or when the store does not check its files.
   */
  readonly storeProblems: ReadonlyArray<{ readonly file: string, readonly code: string, readonly message: string }>
}

/** Space used by a volume. */
export interface VolumeUsage {
  /**
   * Bytes the volume really occupies in the block store: the blocks its current contents use plus
   * older versions kept only for its snapshots (thin provisioning: never-written blocks cost nothing;
   * a clone is not charged for blocks it still shares with its source).
   */
  readonly allocatedBytes: number
  /** Blocks behind `allocatedBytes`. */
  readonly allocatedBlocks: number
  /** Bytes of the blocks the volume's current contents use from its own storage. */
  readonly liveBytes: number
  /** Bytes kept only because snapshots still read them (freed when those snapshots are deleted). */
  readonly snapshotBytes: number
  /** Provisioned size. */
  readonly sizeBytes: number
}
