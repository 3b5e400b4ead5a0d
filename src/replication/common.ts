// What the replication manager, its parts, the primaries and their links share: limits of the stream
// and of resync messages, the local side of a replicated volume, block digests, error helpers.

import { createHash } from 'node:crypto'
import { GalleonError } from '../errors.js'
import type { Coordinator } from '../drivers.js'
import type { ClusterManager } from '../cluster/manager.js'
import type { BlockEngine, VolumeBlocks } from '../engine/engine.js'
import { LIVE } from '../engine/block-map.js'
import type { ReplicaSetRecord } from './records.js'
import type { ReplicaPosition, ReplicationHost } from './host.js'
import type { Primary } from './primary.js'
import { WriteLedger, type OutgoingWrites } from './forwarded-writes.js'

/** How long a copy has to apply a stream batch (or another message of the stream) and answer. */
export const APPLY_TIMEOUT_MS = 5000
/** Largest stream batch in bytes; a larger write travels as several changes. */
export const BATCH_MAX_BYTES = 4 << 20

/** Block bytes per resync message and per read of a digest pass (well under the transport's message limit). */
export const RESYNC_MESSAGE_BYTES = 4 << 20
/** Bytes of a block digest (a truncated SHA-256) in digest comparisons. */
export const DIGEST_BYTES = 16

/** The digest of a block's bytes. */
export function digestOf (block: Uint8Array): Buffer {
  return createHash('sha256').update(block).digest().subarray(0, DIGEST_BYTES)
}

/** The error of a write concern that cannot be met. */
export function unsatisfied (message: string): GalleonError {
  return new GalleonError('WRITE_CONCERN_UNSATISFIED', message)
}

/** An error as one line: its code and message. */
export function errorText (err: unknown): string {
  return err instanceof Error ? `${(err as { code?: string }).code ?? 'ERROR'}: ${err.message}` : String(err)
}

/** Errors of forwarded control calls thrown after an attempt that may have taken effect, with the node it reached (see markOutcomeUnknown). */
const unanswered = new WeakMap<object, string>()

/**
 * The error a forwarded control call (see ReplicationManager.forward) fails with after an earlier
 * attempt of it reached `node`, which did not answer it (it closed, lost the role, or the
 * connection dropped): the same code, saying that the call may have taken effect there.
 */
export function markOutcomeUnknown (err: unknown, node: string): GalleonError {
  const code = err instanceof GalleonError ? err.code : 'BACKEND_UNAVAILABLE'
  const message = err instanceof Error ? err.message : String(err)
  const marked = new GalleonError(code, `${message} (an earlier attempt of this call reached node ${node}, which did not answer it: it may have taken effect there)`, { cause: err })
  unanswered.set(marked, node)
  return marked
}

/** The node an earlier attempt of a forwarded control call reached without an answer, if `err` is the call's error after one (see markOutcomeUnknown). */
export function outcomeUnknown (err: unknown): string | undefined {
  return typeof err === 'object' && err !== null ? unanswered.get(err) : undefined
}

/** The local side of one replicated volume. */
export interface LocalSet {
  readonly volumeId: string
  record: ReplicaSetRecord | undefined
  revision: number
  /** Highest primary epoch seen (record or messages): changes from older epochs are refused. */
  knownEpoch: number
  primary: Primary | undefined
  /** This copy's applied position (as a replica). */
  position: ReplicaPosition
  /** The applied position known to be durable (the one saved). */
  durable: ReplicaPosition
  /** The first change of the next stream batch expected (ordering of batches, see ReplicaSide#turn). */
  nextFrom: number | undefined
  readonly turns: Map<number, () => void>
  /** Replica-side work on this copy runs one message at a time. */
  chain: Promise<unknown>
  /** Set while a resync is rebuilding this copy: stream batches are refused meanwhile. */
  resyncing: boolean
  /**
   * Stream batches issued (under the chain) and not yet applied: every other message waits for
   * them, so that it sees what this copy holds (a digest computed before a batch's writes are
   * visible would let a new primary skip a block that changes here right after).
   */
  readonly applying: Set<Promise<void>>
  saveTimer: NodeJS.Timeout | undefined
  /**
   * The cluster had no record of the volume when this node last looked (at open, or when the
   * record was deleted) and no deletion mark named this node: the copy serves no I/O until a
   * record appears, and calls forwarded for it fail at once instead of waiting for a primary.
   */
  unrecorded: boolean
  /**
   * Called whenever `record` is replaced by one naming another primary (or none): forwarded calls
   * waiting on the old primary move on at once, without polling.
   */
  readonly primaryWatchers: Set<() => void>
  /**
   * Set when this node's cluster lease ended (see Coordinator.onLeaseChange), and cleared once it
   * holds a new one and the volume's record has been read again: meanwhile the cluster may have
   * failed the volume over, so this node's primary (if any) serves no I/O and records no change.
   */
  fenced: boolean
  /** The forwarded writes this copy holds (see forwarded-writes.ts): a repeat of one is not written again. */
  readonly writes: WriteLedger
}

/** A new LocalSet, whose `record` setter tells `primaryWatchers` when the primary it names changes. */
export function newLocalSet (volumeId: string, position: ReplicaPosition): LocalSet {
  let record: ReplicaSetRecord | undefined
  const primaryWatchers = new Set<() => void>()
  return {
    volumeId,
    get record (): ReplicaSetRecord | undefined { return record },
    set record (next: ReplicaSetRecord | undefined) {
      const before = record?.primary
      record = next
      if (next?.primary !== before) for (const watcher of [...primaryWatchers]) watcher()
    },
    revision: 0,
    knownEpoch: 0,
    primary: undefined,
    position,
    durable: position,
    nextFrom: undefined,
    turns: new Map(),
    chain: Promise.resolve(),
    resyncing: false,
    applying: new Set(),
    saveTimer: undefined,
    unrecorded: false,
    primaryWatchers,
    fenced: false,
    writes: new WriteLedger()
  }
}

/**
 * What the parts of a ReplicationManager (its replica side, roles, record updates, lease fence,
 * forwarding, replica-set changes, cleanup and failover) reach of it: its collaborators, the local
 * sets and the steps it takes on them (private to the manager).
 */
export interface ManagerCore {
  readonly nodeId: string
  /** How long a call forwarded to the primary waits for one it can reach (ClusterOptions.failoverWaitMs). */
  readonly failoverWaitMs: number
  /** The writes this node forwards to primaries, numbered (see forwarded-writes.ts). */
  readonly outgoing: OutgoingWrites
  readonly host: ReplicationHost
  readonly cluster: ClusterManager
  readonly coordinator: Coordinator
  /** The local side of each replicated volume this node holds a copy of, by volume id. */
  readonly sets: Map<string, LocalSet>
  /** Copies being deleted by the manager (their sets forgotten, the local volume not gone yet). */
  readonly deleting: ReadonlySet<string>
  /** The manager is closing. */
  readonly closed: boolean
  /** The instance is closing: the manager hands its primary roles over, or has closed (see handOverAtClose). */
  readonly closing: boolean
  /** The local set of a volume, made (at `position`) if there is none. */
  setOf: (volumeId: string, position?: ReplicaPosition) => LocalSet
  /** Forgets a local copy that was deleted here. */
  forget: (volumeId: string) => void
  /** Forgets the set of a copy and deletes the copy. */
  dropCopy: (volumeId: string) => Promise<void>
  becomePrimary: (set: LocalSet, record: ReplicaSetRecord) => void
  stepDown: (set: LocalSet, why: string) => void
  /** Stops this node's primary of a volume (if any) and unhooks it from the engine. */
  retire: (set: LocalSet, why: string) => void
  /** Reads the volume's record again and takes up the role it gives. */
  refresh: (set: LocalSet) => Promise<void>
  /** Compare-and-swap on a volume's record (ReplicationManager.update). */
  update: (volumeId: string, change: (record: ReplicaSetRecord) => ReplicaSetRecord | undefined) => Promise<{ record: ReplicaSetRecord, revision: number } | undefined>
}

/**
 * Allocated blocks of a view in [first, first + count) with their digests (16 bytes each). Read for
 * a resync, not for a client: background reads, outside the volume's I/O metrics and block cache.
 */
export async function digestRange (engine: BlockEngine, blocks: VolumeBlocks, first: number, count: number, at: number, sizeBytes?: number): Promise<{ indices: number[], digests: Uint8Array }> {
  const bs = engine.blockSize
  const limit = Math.floor((sizeBytes ?? blocks.sizeBytes) / bs)
  const last = Math.min(first + count, limit) - 1
  const indices: number[] = []
  if (last < first) return { indices, digests: new Uint8Array(0) }
  const runs = engine.allocationRuns(blocks, first, last, at)
  for (const [start, length, allocated] of runs) if (allocated) for (let i = start; i < start + length; i++) indices.push(i)
  const digests = new Uint8Array(indices.length * DIGEST_BYTES)
  const view = at === LIVE ? undefined : { gen: at, sizeBytes: sizeBytes ?? blocks.sizeBytes }
  for (let i = 0; i < indices.length;) {
    // Contiguous runs are read at once.
    let j = i
    while (j + 1 < indices.length && indices[j + 1] === (indices[j] as number) + 1 && (j - i + 2) * bs <= RESYNC_MESSAGE_BYTES) j++
    const start = indices[i] as number
    const data = await engine.read(blocks, start * bs, (j - i + 1) * bs, view, true)
    for (let k = i; k <= j; k++) digests.set(digestOf(data.subarray((k - i) * bs, (k - i + 1) * bs)), k * DIGEST_BYTES)
    i = j + 1
  }
  return { indices, digests }
}

