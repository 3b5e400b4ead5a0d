// The seam between the engine and replication: on the primary of a replicated volume, every change
// is recorded, in order, at the moment it takes its place in the volume's history (when a write
// takes its generations, when a snapshot makes its cut), and the write then waits for its concern.

import { GalleonError } from '../errors.js'
import type { WriteConcern } from '../types.js'

/**
 * Names one write (or trim) forwarded to a replicated volume's primary, the same in every attempt of
 * it: the sending node's writer (`origin`, new at each start of the node) and the write's number
 * there (`n`), with the lowest number of that writer's writes not yet answered or given up on
 * (`low`): a primary that holds the change answers a repeat without writing again, and refuses an
 * attempt below `low` (see replication/forwarded-writes.ts).
 */
export interface WriterId {
  readonly origin: string
  readonly n: number
  readonly low: number
}

/**
 * A change to a volume as replicas replay it (logical: each replica seals and stores it itself).
 * `writer`: the forwarded write's it is (see WriterId), kept with it on every copy.
 */
export type ReplicatedChange =
  | { readonly type: 'write', readonly offset: number, readonly data: Uint8Array, readonly writer?: WriterId }
  | { readonly type: 'trim', readonly offset: number, readonly length: number, readonly writer?: WriterId }
  /** `token`: the forwarded createSnapshot call's that took it (see ForwardedRequest.token). */
  | { readonly type: 'snapshot', readonly id: string, readonly name: string, readonly token?: string }
  | { readonly type: 'delete-snapshot', readonly id: string }
  | { readonly type: 'expand', readonly sizeBytes: number }
  /**
   * `blocks`: on the primary, the blocks the revert changes (for resyncs; not shipped: each copy
   * reverts its own). `token`: the forwarded restoreSnapshot call's that reverted it.
   */
  | { readonly type: 'revert', readonly snapshotId: string, readonly blocks?: readonly number[], readonly token?: string }
  /** The volume's data key was rotated (its `generation`-th rotation): each copy rotates its own key (keys never travel). */
  | { readonly type: 'rekey', readonly generation: number }

/** What the engine calls on a replicated volume's primary. */
export interface VolumeReplicator {
  /**
   * Records a change; returns its sequence number. Called synchronously at the change's place in
   * the volume's order (two changes to one block are recorded in the order they are applied). A
   * write's `data` is lent for the call only (the caller may reuse its buffer afterwards): the
   * replicator copies what it keeps.
   */
  record: (change: ReplicatedChange) => number
  /**
   * The change `seq` is applied locally (and synced unless `concern` is WriteAcknowledged):
   * resolves once `concern` is met, or rejects with WRITE_CONCERN_UNSATISFIED.
   */
  committed: (seq: number, concern: WriteConcern) => Promise<void>
  /** The change `seq` was recorded but not applied locally: replicas must be brought back in line. */
  failed: (seq: number) => void
}

/**
 * The replicator a caller's change records with. `primary`: the replicator the caller saw when it
 * found this node the volume's primary (undefined: no expectation). If the role moved while the
 * change waited (for its block, for admission), it is refused with NOT_LEADER, so the caller sends
 * it to the new primary, rather than stored on this node alone and lost to the next resync.
 */
export function replicatorFor (volume: { readonly replicator: VolumeReplicator | undefined }, primary: VolumeReplicator | undefined): VolumeReplicator | undefined {
  if (primary !== undefined && volume.replicator !== primary) throw new GalleonError('NOT_LEADER', 'this node stopped being the primary of the volume while the change waited; send it to the new primary')
  return volume.replicator
}
