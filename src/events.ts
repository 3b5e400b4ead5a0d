// Typed event map of the GalleonFS facade, and the emitter that keeps a throwing listener from
// breaking the operation that emitted the event.

import { EventEmitter } from 'eventemitter3'
import type { Volume, Snapshot, StorageClass } from './types.js'
import type { StoragePool } from './volumes/pools.js'
import type { Backup } from './backup/manager.js'
import type { BackupPolicyRun } from './backup/policies.js'
import type { ClusterEvents } from './cluster/manager.js'
import type { ReplicationEvents } from './replication/manager.js'
import type { QoSGuaranteeMissedEvent, QoSLatencyMissedEvent, QoSThrottledEvent } from './qos/scheduler.js'
import type { QoSPolicy, QoSPolicySource } from './qos/policy.js'
import type { MigrationProgressEvent } from './volumes/migration.js'

/** Payload of `checksum:mismatch`. */
export interface ChecksumMismatchEvent {
  readonly volumeId: string
  readonly volumeName: string
  readonly blockIndex: number
  readonly generation: number
  readonly reason: string
  readonly expected?: number
  readonly actual?: number
}

/**
 * Payload of `io:error`: an I/O call failed for a reason other than bad arguments, or background
 * work did (a block store's compaction, the audit log's index, an unmount at close). A failure
 * that concerns no one volume has `volumeId` and `volumeName` empty.
 */
export interface IoErrorEvent {
  readonly volumeId: string
  readonly volumeName: string
  readonly operation: 'read' | 'write' | 'trim' | 'flush'
  readonly code: string
  readonly message: string
}

/** Payload of `backup:progress` and `restore:progress`: bytes of blocks handled so far, of the total to handle. */
export interface BackupProgressEvent {
  readonly backupId: string
  readonly volumeId: string
  readonly volumeName: string
  readonly bytesDone: number
  readonly bytesTotal: number
}

/** Events emitted by GalleonFS, named noun:verb. */
export interface GalleonEvents extends ClusterEvents, ReplicationEvents {
  'volume:created': (volume: Volume) => void
  'volume:deleted': (volume: Volume) => void
  'volume:expanded': (volume: Volume, previousSizeBytes: number) => void
  'volume:state': (volume: Volume, previousState: string) => void
  'volume:cloned': (clone: Volume, source: Snapshot) => void
  /** A data-key rotation finished: every block is sealed with key version `keyVersion`. */
  'volume:key-rotated': (volume: Volume, keyVersion: number) => void
  /** A live migration copied more blocks or entered a new phase (see migrateVolume). */
  'volume:migration-progress': (event: MigrationProgressEvent) => void
  /** A live migration switched the volume over; `from` is where it was. */
  'volume:migrated': (volume: Volume, from: { storageClass: string, pool?: string }) => void
  'snapshot:created': (snapshot: Snapshot) => void
  'snapshot:deleted': (snapshot: Snapshot) => void
  'snapshot:restored': (volume: Volume, snapshot: Snapshot, blocksReverted: number) => void
  'backup:progress': (event: BackupProgressEvent) => void
  'backup:completed': (backup: Backup) => void
  'backup:deleted': (backup: Backup) => void
  'restore:progress': (event: BackupProgressEvent) => void
  'backup-policy:ran': (run: BackupPolicyRun) => void
  'backup-policy:missed': (event: { policy: string, missed: string[] }) => void
  'storage-class:created': (storageClass: StorageClass) => void
  'storage-class:deleted': (storageClass: StorageClass) => void
  'pool:created': (pool: StoragePool) => void
  'pool:updated': (pool: StoragePool) => void
  'pool:deleted': (pool: StoragePool) => void
  'checksum:mismatch': (event: ChecksumMismatchEvent) => void
  'io:error': (event: IoErrorEvent) => void
  'scrub:completed': (report: { volumeId: string, blocksChecked: number, badBlocks: number }) => void
  'instance:closed': () => void
  /** A volume's operations started waiting for its QoS limits (at most once per volume per second). */
  'qos:throttled': (event: QoSThrottledEvent) => void
  /** A guaranteed volume was served less than its floor for a whole second while it had work queued. */
  'qos:guarantee-missed': (event: QoSGuaranteeMissedEvent) => void
  /** A volume's 99th-percentile latency over the metrics window, QoS waits included, is above its target (at most once per volume per second). */
  'qos:latency-missed': (event: QoSLatencyMissedEvent) => void
  /** The QoS policy in force for a volume changed (setQoSPolicy / clearQoSPolicy). */
  'qos:policy-changed': (event: { volumeId: string, volumeName: string, policy?: QoSPolicy, source: QoSPolicySource }) => void
}

type Listener = (...args: never[]) => unknown

/** The guarded form of each listener, so that `off(event, listener)` finds what `on` added. */
const guarded = new WeakMap<Listener, Listener>()
/** And back, so that `listeners(event)` returns what the application added. */
const original = new WeakMap<Listener, Listener>()

function guard<L> (fn: L): L {
  if (typeof fn !== 'function') return fn // eventemitter3 refuses it with its own TypeError
  const listener = fn as Listener
  let wrapper = guarded.get(listener)
  if (wrapper === undefined) {
    wrapper = function (this: unknown, ...args: never[]): void {
      try {
        listener.apply(this, args)
      } catch (err) {
        // The application's error, raised where it cannot undo the operation nor skip the other
        // listeners: as an uncaught exception once the emitting call has gone on.
        setImmediate(() => { throw err })
      }
    }
    guarded.set(listener, wrapper)
    original.set(wrapper, listener)
  }
  return wrapper as L
}

/**
 * An eventemitter3 emitter whose listeners cannot break the code that emits: each runs in turn,
 * and one that throws neither fails the operation that emitted the event (which has happened) nor
 * keeps the later listeners from running; its error is thrown again on its own, as an uncaught
 * exception (`process.on('uncaughtException')` sees it), as a rejected async listener's is.
 */
export class GuardedEmitter<E extends EventEmitter.ValidEventTypes> extends EventEmitter<E> {
  override on<T extends EventEmitter.EventNames<E>> (event: T, fn: EventEmitter.EventListener<E, T>, context?: unknown): this {
    return super.on(event, guard(fn), context)
  }

  override addListener<T extends EventEmitter.EventNames<E>> (event: T, fn: EventEmitter.EventListener<E, T>, context?: unknown): this {
    return super.addListener(event, guard(fn), context)
  }

  override once<T extends EventEmitter.EventNames<E>> (event: T, fn: EventEmitter.EventListener<E, T>, context?: unknown): this {
    return super.once(event, guard(fn), context)
  }

  override removeListener<T extends EventEmitter.EventNames<E>> (event: T, fn?: EventEmitter.EventListener<E, T>, context?: unknown, once?: boolean): this {
    return super.removeListener(event, fn === undefined ? fn : (guarded.get(fn as Listener) as typeof fn | undefined) ?? fn, context, once)
  }

  override off<T extends EventEmitter.EventNames<E>> (event: T, fn?: EventEmitter.EventListener<E, T>, context?: unknown, once?: boolean): this {
    return this.removeListener(event, fn, context, once)
  }

  override listeners<T extends EventEmitter.EventNames<E>> (event: T): Array<EventEmitter.EventListener<E, T>> {
    return super.listeners(event).map((fn) => (original.get(fn as Listener) as typeof fn | undefined) ?? fn)
  }
}
