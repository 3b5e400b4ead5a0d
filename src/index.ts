// Public entry point of the galleonfs package.

export { GalleonFS, type VolumeRef, type SnapshotRef, type ReadSource, type CloneSource } from './galleonfs.js'
export { GalleonError, isGalleonError, type GalleonErrorCode } from './errors.js'
export {
  WriteConcern, VolumeType, AccessMode, BackupStrategy, VolumeState,
  type Volume, type StorageClass, type CreateVolumeOptions, type ScrubReport, type VolumeUsage, type Snapshot,
  type ReclaimPolicy, type VolumeBindingMode
} from './types.js'
export type { OpenOptions, BuiltInBackend } from './open-drivers.js'
export type { CloseOptions } from './facade/open.js'
export {
  registerDriver, unregisterDriver, listDrivers, getDriver, createDriver, checkDriverOptions, DRIVER_KINDS,
  type DriverKind, type DriverTypes, type DriverDescriptor, type DriverOption, type DriverOptionType, type DriverContext, type DriverRef, type RegisteredDriver
} from './registry.js'
export type { GalleonEvents, ChecksumMismatchEvent, IoErrorEvent, BackupProgressEvent } from './events.js'
export { parseSize, formatSize } from './size.js'
export { parseStorageClass, BUILT_IN_STORAGE_CLASSES, DEFAULT_STORAGE_CLASS } from './volumes/storage-classes.js'
export { parsePool, type StoragePool, type StoragePoolStatus, type CreatePoolOptions, type UpdatePoolOptions } from './volumes/pools.js'
export type { MetadataDatabase } from './volumes/catalog.js'
export type { AnyLevelDatabase } from './classic-level.js'
export type { MigrateVolumeOptions, MigrateControl, MigrationPhase, MigrationProgressEvent } from './volumes/migration.js'
export {
  MAX_BLOCK_VALUE_BYTES,
  type BlockStore, type BackupTarget, type KeyProvider, type MountDriver, type MountedVolume, type BlockAddress, type BlockOp, type BlockStoreSupports, type BlockStoreStats, type BlockStoreFault, type DriverStatus,
  type Transport, type TransportMessage, type TransportHandler, type TransportRequestOptions, type Coordinator, type CoordinatorEntry, type CoordinatorEvent, type ClusterNode, type ClusterMember, type Leadership
} from './drivers.js'
export { AbstractBlockStore, addressKey, parseAddressKey, wrapIo } from './abstract-block-store.js'
export { AbstractTransport, markNotSent, isNotSent, DEFAULT_REQUEST_TIMEOUT_MS, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_IN_FLIGHT_BYTES, type AbstractTransportOptions, type TransportStats, type EncodedMessage, type HandlerOutcome, type RequestCancellation } from './abstract-transport.js'
export { AbstractCoordinator, type AbstractCoordinatorOptions } from './cluster/abstract-coordinator.js'
export type { StoredEntry, StoreOp, StoreCondition, StoreTxnResult, StoreEvent, StoreLease } from './cluster/coordinator-store.js'
export type { ReplicationHook, JournalEntry } from './engine/journal.js'
export type { ReplicatedChange, VolumeReplicator } from './engine/replicator.js'
export type { ReplicationStatus, ReplicationEvents } from './replication/manager.js'
export type { ReplicaSetRecord, VolumeSpec } from './replication/records.js'
export type { Backup, BackupAdoption, BackupHooks, BackupTargetRef, BackupVerification, CreateBackupOptions, DeleteBackupOptions, DeleteBackupResult, Progress, ProgressListener, RestoreBackupOptions } from './backup/manager.js'
export type { BackupPolicy, BackupPolicyOptions, BackupPolicyRun, BackupRetention } from './backup/policies.js'
export { DirectoryBackupTarget } from '../backends/directory/index.js'
export type { VolumeMetrics, VolumeMetricsSnapshot } from './metrics/recorder.js'
export { PROMETHEUS_CONTENT_TYPE } from './metrics/prometheus.js'
export { InternalKeyProvider, PassphraseKeyProvider, ExternalKeyProvider, generateKey } from './crypto/keys.js'
export { commandKeyProvider, httpKeyProvider, type CommandKeyProviderOptions, type HttpKeyProviderOptions } from './crypto/kms.js'
export { nodeCipher, nobleCipher, defaultCipher, type AeadCipher } from './crypto/cipher.js'
export type { VolumeEncryption } from './crypto/key-manager.js'
export { VERBS, parseAccessPolicy, type Principal, type AccessPolicy, type AccessObject, type Verb } from './access/access-control.js'
export type { AuditEntry, AuditQuery, AuditVerification } from './access/audit-log.js'
export { MountManager, VirtualMountDriver, type Mount, type MountOptions } from './mount/mount-manager.js'
export { VolumeFile } from './mount/volume-file.js'
export { ClusterManager, CLUSTER_ELECTION, type ClusterOptions, type ClusterStatus, type ClusterEvents } from './cluster/manager.js'
export type { ForgottenNode } from './facade/cluster.js'
export { placeVolume, PLACEMENT_STRATEGIES, type Placement, type PlacementRequest, type PlacementStrategy } from './cluster/placement.js'
export { PROTOCOL_VERSION, OLDEST_PROTOCOL_VERSION, PROTOCOL_FIELD, type ProtocolRange } from './cluster/protocol.js'
export { parseQoSPolicy, qosFromParameters, type QoSPolicy, type QoSPolicyInput, type QoSLimits, type QoSGuarantees, type BurstableQoS, type BurstableQoSInput, type QoSPolicySource } from './qos/policy.js'
export { QoSScheduler, type QoSNodeOptions, type QoSMetrics, type QoSThrottledEvent, type QoSGuaranteeMissedEvent, type QoSLatencyMissedEvent } from './qos/scheduler.js'
export { TokenBucket, realClock, type QoSClock } from './qos/bucket.js'
