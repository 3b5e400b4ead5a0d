// The mount manager's types: a mount as listed, the options of mountVolume, and what the manager
// and the instance ask of each other (MountTarget, MountHost, MountControl).

import type { AccessMode } from '../types.js'
import type { VolumeFileIo } from './volume-file.js'

/** A mount, as listMounts() reports it. */
export interface Mount {
  readonly id: string
  /** Absolute path of the mount point. */
  readonly path: string
  readonly volumeId: string
  readonly volumeName: string
  readonly namespace: string
  /** Set when a snapshot is mounted (always read-only). */
  readonly snapshotId?: string
  readonly snapshotName?: string
  readonly readOnly: boolean
  /** Every write through it is WriteDurable. */
  readonly sync: boolean
  /** Options passed to the driver (from the storage class, then the call). */
  readonly options: readonly string[]
  readonly driver: string
  readonly mountedAt: string
  /** VolumeFiles open on it. */
  readonly openFiles: number
}

/** Options of mountVolume. */
export interface MountOptions {
  /**
   * Read-only mount (true) or read-write (false), over the option strings and the storage class's.
   * Snapshots are always read-only. Given together, readOnly, ro and rw must agree.
   */
  readonly readOnly?: boolean
  /** The same as readOnly. */
  readonly ro?: boolean
  /** The opposite of readOnly: `rw: false` is a read-only mount. */
  readonly rw?: boolean
  /** Every write WriteDurable (also the option string `sync`). */
  readonly sync?: boolean
  /**
   * Mount option strings, added to the storage class's `mountOptions` (`ro`, `rw`, `sync`, `async`
   * and `encrypted` are understood here; the rest go to the driver). A word the driver does not
   * apply (see MountDriver.options: `allow_other`, `noatime`, `nodev`, `nosuid` and `noexec` for
   * `fuse` and `virtual`), given here or by the storage class, is refused (INVALID_ARGUMENT).
   * `encrypted` (the seed's `--options rw,encrypted`) asks that the volume be encrypted at rest: a
   * volume that is not is refused (INVALID_ARGUMENT), not mounted in clear.
   */
  readonly options?: readonly string[]
}

/** A volume or snapshot as the manager needs it, resolved by the instance. */
export interface MountTarget {
  readonly volumeId: string
  readonly volumeName: string
  readonly namespace: string
  readonly snapshotId?: string
  readonly snapshotName?: string
  readonly accessModes: readonly AccessMode[]
  /** The volume's storage class (named when one of its mount options is refused). */
  readonly className?: string
  /** The storage class's `mountOptions`: each must be a word the driver applies (checkClassWordsForMount). */
  readonly classOptions: readonly string[]
  /** Whether the volume's blocks are encrypted at rest (checked against the option word `encrypted`; unknown when absent). */
  readonly encrypted?: boolean
  readonly size: () => number
  /** See MountedVolume.data.version. */
  readonly version: () => number | undefined
  /** Reads, writes and flushes of this target, acting as the caller who resolved it. */
  readonly io: Omit<VolumeFileIo, 'size'>
  readonly readme: () => string
  readonly metadata: () => string
}

/** What the manager asks of the instance. */
export interface MountHost {
  /** Resolves a volume or snapshot reference (throws VOLUME_NOT_FOUND, SNAPSHOT_NOT_FOUND, ...). */
  target: (ref: unknown) => MountTarget
  /**
   * Checks and audits a mount operation on `ref` for the caller. `mountedBy` names who made the
   * mount an unmount acts on when that is not the caller: acting on another's mount takes `admin`.
   */
  guard: <T>(action: string, ref: unknown, readOnly: boolean, task: () => Promise<T>, mountedBy?: string) => Promise<T>
  /** Who is calling: a principal's id, or undefined for the application itself. */
  caller: () => string | undefined
  /** Whether the caller may see mounts of this volume. */
  visible: (namespace: string, volumeName: string) => boolean
  /** Whether a volume the caller may see lives in `namespace`. */
  namespaceInUse: (namespace: string) => boolean
  /**
   * The error to throw for a call on `ref` its arguments refused before `guard` could check it,
   * once the refusal is recorded (see AccessGuard.refusedArguments): PERMISSION_DENIED to a caller
   * who may not do with `ref` what the call asked (`readOnly`), else `err`.
   */
  refusedArguments: (action: string, ref: unknown, readOnly: boolean, err: unknown) => Promise<unknown>
  /** Throws PERMISSION_DENIED (audited) unless the caller may administer the instance. */
  requireAdmin: (action: string, what: string) => Promise<void>
  /** Throws PERMISSION_DENIED (audited) unless the caller may write the volume `ref` names. */
  requireWrite: (action: string, ref: unknown) => Promise<void>
  /** Whether a reference names a snapshot (the instance's own rule). */
  isSnapshotRef: (ref: unknown) => boolean
}

/** What only the instance may do with its mounts (not reachable through `g.mounts` or a principal's handle). */
export interface MountControl {
  /** Mounts of a volume (its snapshots' included). */
  mountsOf: (volumeId: string) => Mount[]
  /** Writable files open straight on a volume (openVolumeFile, NBD sessions). */
  directWriters: (volumeId: string) => number
  /** Read-only files open straight on a volume's live data (openVolumeFile with readOnly, NBD sessions of a read-only export). */
  directReaders: (volumeId: string) => number
  /** Mounts of one snapshot. */
  snapshotMounts: (snapshotId: string) => Mount[]
  /** Files open straight on a snapshot (openVolumeFile, NBD sessions of `volume@snapshot`): of one snapshot, or of any snapshot of a volume. */
  snapshotFiles: (of: { snapshotId: string } | { volumeId: string }) => number
  /** Unmounts every mount of a volume (or of one of its snapshots), closing their files, and forgets the files open straight on its snapshots (and, when the volume goes, its read-only ones: deletions with force). */
  release: (volumeId: string, snapshotId?: string) => Promise<void>
  /**
   * Waits until every write acknowledged so far through the volume's mounts (every volume's, when
   * undefined) is in the volume: before a snapshot, and a flush. With `report`, rejects (IO_ERROR)
   * if one of those writes failed (see MountDriver.quiesce).
   */
  quiesce: (volumeId: string | undefined, options?: { report?: boolean }) => Promise<void>
  /** Unmounts everything (at close). */
  close: () => Promise<void>
  /** Resolves once mounts and unmounts already started have finished. */
  settled: () => Promise<void>
}
