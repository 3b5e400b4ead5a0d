// What replication needs from its host (the GalleonFS instance) and what it hands back: copies'
// positions, snapshots, copy layouts, events, forwarded I/O and status.

import type { BlockEngine, VolumeBlocks } from '../engine/engine.js'
import type { WriterId } from '../engine/replicator.js'
import type { VolumeSpec } from './records.js'
import type { LinkState } from './link.js'
import type { VolumeAttachments } from './attachments.js'

/** A copy's applied position: the primary epoch it follows and the last change applied. */
export interface ReplicaPosition {
  readonly epoch: number
  readonly seq: number
}

/** A snapshot as replication compares them (ids are the same on every copy). */
export interface SnapshotInfo {
  readonly id: string
  readonly name: string
  readonly gen: number
  readonly sizeBytes: number
  /** The token of the forwarded createSnapshot call that took it, if one did (see ForwardedRequest.token). */
  readonly token?: string
}

/** What replication needs from its GalleonFS instance. */
export interface ReplicationHost {
  readonly engine: BlockEngine
  /** Replicated volumes this node holds a copy of, with their applied positions. */
  localCopies: () => Array<{ id: string, position: ReplicaPosition }>
  /** The engine state of a local copy, or undefined if there is none. */
  blocks: (volumeId: string) => VolumeBlocks | undefined
  /** Creates the local copy of a volume (same id, name and class), at position 0/0. */
  createCopy: (spec: VolumeSpec) => Promise<void>
  /** Deletes the local copy (the volume was deleted, or this copy was dropped). */
  deleteCopy: (volumeId: string) => Promise<void>
  /** Persists a copy's applied position (after the data it covers is durable). */
  savePosition: (volumeId: string, position: ReplicaPosition) => Promise<void>
  snapshots: (volumeId: string) => SnapshotInfo[]
  /**
   * Takes a snapshot of the local copy with the primary's id (replaying the primary's); `sizeBytes`
   * is the volume's size when the primary took it (a resync, after the copy grew), else the copy's;
   * `token`: the forwarded call's that took it (kept with the copy's snapshot).
   */
  applySnapshot: (volumeId: string, id: string, name: string, sizeBytes?: number, token?: string) => Promise<void>
  applyDeleteSnapshot: (volumeId: string, id: string) => Promise<void>
  /** Grows this node's copy of a volume to `sizeBytes` (an expansion the primary made; never shrinks). */
  applyExpand: (volumeId: string, sizeBytes: number) => Promise<void>
  /**
   * Rotates this node's own data key of its copy of a volume, unless the copy has taken rotation
   * `generation` already (the primary rotated the volume's key; a streamed change or its record says so).
   */
  applyKeyRotation: (volumeId: string, generation: number) => Promise<void>
  /** The replica-set record of a local copy was read or changed: settings in its spec (the QoS policy) apply here. */
  applySpec: (volumeId: string, spec: VolumeSpec) => void
  /**
   * Where this node's copy stands against the storage class the record names: its class, whether
   * it is being converted (re-laid out) to the record's class, and the last conversion failure.
   * `retry`: start the conversion again if it failed.
   */
  copyLayout: (volumeId: string, retry: boolean) => CopyLayout
  /** What holds the volume on this node: mounts, files and NBD clients (asked before a plain deleteVolume; see attachments.ts). */
  attachments: (volumeId: string) => VolumeAttachments
  /**
   * Reverts this node's copy of a volume to its copy of snapshot `snapshotId` (the primary
   * reverted); `token`: the forwarded call's that reverted it, kept with the copy (see revertTokens).
   */
  applyRevert: (volumeId: string, snapshotId: string, token?: string) => Promise<void>
  /**
   * The tokens of the last forwarded restoreSnapshot calls that reverted the volume, as this
   * node's copy holds them: a primary answers a repeat of one of them without reverting again.
   */
  revertTokens: (volumeId: string) => readonly string[]
  /** A resync brought this node's copy to the primary's state, whose reverts are those of `tokens`. */
  keepRevertTokens: (volumeId: string, tokens: readonly string[]) => Promise<void>
  /**
   * A resync of this node's copy begins, this node not being the volume's primary: a revert it
   * left unfinished as the primary (refused or cut short there; the local intent that fences the
   * volume's I/O) is the primary's now, which went on with the call or did not. The intent goes,
   * and with it the copy's saved position (so that the resync compares every block, and a part
   * reverted copy is rebuilt before it serves anything). True when there was one.
   */
  dropUnfinishedRevert: (volumeId: string) => Promise<boolean>
  /**
   * Runs `task` while no snapshot of any volume is being taken or deleted; `whileClosing`: also
   * once the instance is closing (a step of its close), when other calls are refused.
   */
  exclusive: <T>(task: () => Promise<T>, whileClosing?: boolean) => Promise<T>
  /** Whether the instance has begun to close (it takes no calls, forwarded ones included). */
  closing: () => boolean
  /** Runs an I/O request forwarded from another node, on this node (the primary). */
  serveForwarded: (volumeId: string, request: ForwardedRequest, payload: Uint8Array | undefined) => Promise<{ header: Record<string, unknown>, payload?: Uint8Array }>
  emit: (event: string, payload: unknown) => void
}

/** A node's copy measured against the class of its replica-set record (see ReplicationHost.copyLayout). */
export interface CopyLayout {
  /** The storage class the copy is laid out by now (undefined: the node holds no copy). */
  readonly storageClass?: string
  /** A conversion to the record's class is running. */
  readonly busy: boolean
  /** The class (and pool) of the record as this node last read it. */
  readonly spec?: { readonly storageClass: string, readonly pool?: string }
  /** The copy is laid out as that record says (class, copies and, where this node has it, pool). */
  readonly converged: boolean
  /** Why the last conversion failed, if it did. */
  readonly error?: { readonly code: string, readonly message: string }
  /**
   * The copy re-encrypts with a new data key now: it cannot convert until that is done (its
   * `error` says so meanwhile), and converts by itself then. Nodes of earlier releases do not send
   * it: undefined is read as false, and their refusals count as failures, as they did.
   */
  readonly reencrypting?: boolean
}

/** Events of replication (emitted by GalleonFS). */
export interface ReplicationEvents {
  /** This node took up the primary role of a volume (created it, was promoted, or restarted as its primary). */
  'replication:primary': (event: { volumeId: string, nodeId: string, epoch: number }) => void
  /** This node learnt that another node is the volume's primary now. */
  'replication:demoted': (event: { volumeId: string, nodeId: string, reason: string }) => void
  /** The cluster leader promoted an in-sync copy because the primary was gone. */
  'replication:failover': (event: { volumeId: string, from: string, to: string, epoch: number }) => void
  /** The leader added nodes to a replica set that had fewer copies than wanted. */
  'replication:replica-added': (event: { volumeId: string, nodes: string[] }) => void
  /** The cluster leader gave up copies whose nodes stayed unhealthy past the replacement delay (new ones follow). */
  'replication:replica-removed': (event: { volumeId: string, nodes: string[], reason: string }) => void
  /** This node deleted its copy of a volume because the copy was replaced on other nodes while it was away. */
  'replication:copy-dropped': (event: { volumeId: string, nodeId: string, nodes: string[] }) => void
  /** A copy was taken out of the in-sync list (it failed or fell behind). */
  'replication:out-of-sync': (event: { volumeId: string, node: string }) => void
  /** A copy caught up and is in sync again. */
  'replication:in-sync': (event: { volumeId: string, node: string }) => void
  /** A copy's link broke; it is retried with backoff. */
  'replication:link-down': (event: { volumeId: string, node: string, message: string }) => void
  /** A copy was brought in line: `delta` (blocks changed since it left) or `digest` (blocks that differ). */
  'replication:resynced': (event: { volumeId: string, node: string, mode: 'delta' | 'digest' }) => void
  'replication:error': (event: { volumeId: string, nodeId: string, code: string, message: string }) => void
}

/** An I/O call forwarded to the primary. */
export interface ForwardedRequest {
  readonly op: 'write' | 'writeBlock' | 'trim' | 'read' | 'readBlock' | 'flush' | 'createSnapshot' | 'deleteSnapshot' | 'deleteVolume' | 'expandVolume' | 'restoreSnapshot' | 'rotateVolumeKey' | 'awaitKeyRotation'
  readonly offset?: number
  readonly sizeBytes?: number
  readonly length?: number
  readonly index?: number
  readonly concern?: string
  readonly snapshot?: string
  readonly snapshotName?: string
  readonly readSnapshot?: string
  readonly force?: boolean
  /**
   * Names one control call (rotateVolumeKey, createSnapshot, deleteSnapshot, deleteVolume,
   * restoreSnapshot, expandVolume), so that a repeat of it (its answer was lost) does nothing more:
   * the rotation, snapshot or revert it made is kept with its token, and found again by it.
   */
  readonly token?: string
  /**
   * Set on a control call sent again after an attempt that may have taken effect: a deletion
   * then takes the snapshot or volume gone for the one that attempt deleted, and an expansion a
   * volume at least that large for the one it made.
   */
  readonly repeat?: boolean
  /**
   * Names one forwarded write or trim, the same in every attempt of it (see WriterId): the primary
   * that holds it already (a repeat whose earlier attempt took effect) does not write it again.
   */
  readonly writer?: WriterId
}

/** How replication of a volume stands, as the node asked sees it. */
export interface ReplicationStatus {
  readonly volumeId: string
  /** This node's part: serving and shipping (`primary`), following (`replica`), or `unknown` (no record yet). */
  readonly role: 'primary' | 'replica' | 'unknown'
  readonly primary: string | undefined
  readonly epoch: number | undefined
  readonly nodes: readonly string[]
  readonly inSync: readonly string[]
  /** Copies wanted (the storage class's or the volume's `replicas`). */
  readonly replicas: number
  /** Fewer in-sync copies than wanted. */
  readonly degraded: boolean
  /**
   * On the primary: bytes of the buffer it is filling with write data for the copies (a 1 MiB
   * chunk under writes; 0 once nothing has been queued for a second). What the queued changes hold
   * is in each link's `lagBytes`.
   */
  readonly streamBufferBytes: number
  /** On the primary: each other copy's link. */
  readonly links: ReadonlyArray<{
    readonly node: string
    readonly state: LinkState
    /** Changes recorded but not yet acknowledged by the copy. */
    readonly lagChanges: number
    /** Bytes of changes waiting to be shipped or acknowledged. */
    readonly lagBytes: number
    /** Age of the oldest change not yet acknowledged by the copy (0 when it has them all), overstated by less than 10 ms (more while a copy has been away long: see record-clock.ts). */
    readonly lagSeconds: number
    readonly shippedBytes: number
    /**
     * Bytes this primary's resyncs of the copy read from the volume (to digest blocks or send them),
     * over the link's lifetime. They are not client reads: the volume's I/O metrics leave them out.
     */
    readonly resyncReadBytes: number
    /** Stream batches the copy acknowledged, and the seconds they waited for it all together (send to acknowledgement). */
    readonly batchesAcknowledged: number
    readonly ackWaitSeconds: number
    readonly resyncs: number
    readonly resync?: { readonly mode: 'delta' | 'digest', readonly blocksDone: number, readonly blocksTotal: number, readonly blocksSent: number }
    readonly lastError?: string
  }>
}
