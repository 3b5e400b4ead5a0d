// The I/O path of the facade: block and byte reads and writes, flush, trim and scrub through the
// QoS stage and the engine (or forwarded to a replicated volume's primary), and how failures show.

import { GalleonError, assertBytes, copyBytes, describe, errorCode } from '../errors.js'
import { LIVE } from '../engine/block-map.js'
import { LoopStreak, loopTurn } from '../loop-streak.js'
import { MAX_IO_BYTES } from '../engine/io-checks.js'
import type { View, VolumeBlocks } from '../engine/engine.js'
import type { WriterId } from '../engine/replicator.js'
import { mountControl } from '../mount/mount-manager.js'
import { VolumeState, WriteConcern, type ScrubReport, type Snapshot } from '../types.js'
import type { SnapshotRecord, VolumeRecord } from '../volumes/catalog.js'
import type { AccessGuard } from './access-guard.js'
import type { ClusterMembership } from './cluster.js'
import type { FacadeHost } from './host.js'
import { viewOf } from './records.js'
import { isSnapshotRef, readSource, writable, type ReadSource, type VolumeRef } from './refs.js'
import type { ReplicationBridge } from './replication-bridge.js'
import { writerIn } from './forwarded-calls.js'
import type { Snapshots } from './snapshots.js'

/** The identity of the forwarded write `vol` carries, as a forwarded request's field (empty: none). */
function writerOf (vol: VolumeRef): { writer?: WriterId } {
  const writer = writerIn(vol)
  return writer === undefined ? {} : { writer }
}

const WRITE_CONCERNS = new Set<string>(Object.values(WriteConcern))

/** The engine state of a volume (attached on first use; a retired storage's while a migration redirects it). */
export function volumeBlocks (host: FacadeHost, record: VolumeRecord): VolumeBlocks {
  const held = host.engine.volume(record.storageId) ?? host.retired.get(record.storageId)
  if (held !== undefined) return held
  // A record resolved before a live migration's switch-over, used after its old storage's entry
  // went (a call that waited longer than the grace period): the volume is on its new storage.
  // Attaching the old, deleted storage would read zeros and lose writes.
  const current = host.recordById(record.id)
  if (current !== undefined && current.storageId !== record.storageId) return volumeBlocks(host, current)
  return host.engine.attach(record.storageId, record.sizeBytes)
}

/**
 * The engine state whose metrics and usage a volume shows, or undefined for a volume being deleted whose
 * blocks are gone already: attaching it again (as volumeBlocks would) left a deleted volume in
 * the engine for good.
 */
export function metricsVolume (host: FacadeHost, record: VolumeRecord): VolumeBlocks | undefined {
  if (record.state !== VolumeState.Deleting) return volumeBlocks(host, record)
  return host.engine.volume(record.storageId) ?? host.retired.get(record.storageId)
}

/** The engine state I/O on a volume uses: refused while the volume is deleted or half reverted. */
export function ioVolume (host: FacadeHost, vol: VolumeRef | VolumeRecord): VolumeBlocks {
  return ioVolumeOf(host, host.catalog.resolve(vol))
}

/**
 * `ioVolume` of a record the I/O path resolved before it waited (for QoS, say): the record is looked
 * up again, since the volume may have been deleted meanwhile. Its storage must not be attached
 * again then: a write would be acknowledged into deleted storage, a read would return zeros.
 */
export function ioVolumeOf (host: FacadeHost, resolved: VolumeRecord): VolumeBlocks {
  const record = host.recordById(resolved.id)
  if (record === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${resolved.name} was deleted`)
  if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
  if (record.revertTo !== undefined && !host.reverting.has(record.id)) {
    const snapshot = host.catalog.snapshotById(record.revertTo)
    const why = host.revertFailures.get(record.id)
    throw new GalleonError('BUSY', `volume ${record.name} has an unfinished revert to snapshot ${snapshot?.name ?? record.revertTo}${why === undefined ? '' : ` (it failed: ${why})`}, so part of it may read as the snapshot and part not; call restoreSnapshot(${JSON.stringify(record.name)}, ${JSON.stringify(snapshot?.name ?? record.revertTo)}) again to finish it, revert to another snapshot, or delete the volume`)
  }
  return volumeBlocks(host, record)
}

/**
 * The view a read of `snapshot` uses on `volume`, the engine state found for the record the read
 * resolved before it waited. When that was the volume's current storage, redirected from a storage
 * a live migration moved it away from (see volumeBlocks), the snapshot has another generation
 * there: the catalog's. (Within the grace period the old storage's `movedTo` translates it.)
 */
function viewOn (host: FacadeHost, record: VolumeRecord, volume: VolumeBlocks, snapshot: SnapshotRecord | undefined): View | undefined {
  if (snapshot === undefined || volume.storageId === record.storageId) return viewOf(snapshot)
  const moved = host.catalog.snapshotById(snapshot.id)
  if (moved === undefined) throw new GalleonError('SNAPSHOT_NOT_FOUND', `snapshot ${snapshot.name} of volume ${record.name} was deleted; list the snapshots again`)
  return viewOf(moved)
}

/** Reports failures that are not the caller's fault (I/O, corruption) as `io:error` events. */
export function ioFailed (host: FacadeHost, record: VolumeRecord, operation: 'read' | 'write' | 'trim' | 'flush', err: unknown): unknown {
  const code = errorCode(err)
  if (code === 'IO_ERROR' || code === 'CORRUPTION' || code === 'CHECKSUM_MISMATCH') {
    host.emit('io:error', { volumeId: record.id, volumeName: record.name, operation, code, message: err instanceof Error ? err.message : String(err) })
  }
  return err
}

/**
 * The bytes a read() or write() is charged against throughput limits: its length when the engine
 * will serve it, else 0. A refused call moves nothing, and charging a bogus length (Infinity, 2^40,
 * or a large write past the end) left the volume's limit, or the node's capacity, a debt that held
 * its next calls for as long as the bytes would have taken. A call charged 0 is also left out of
 * its volume's latency-target figures (`qos.completed`): refused at once, it counts nowhere, and
 * many of them took a missed target's 99th percentile down to nothing.
 */
function rangeCharge (offset: unknown, length: unknown, sizeBytes: number): number {
  if (typeof offset !== 'number' || typeof length !== 'number' || !Number.isSafeInteger(offset) || !Number.isSafeInteger(length)) return 0
  if (offset < 0 || length <= 0 || length > MAX_IO_BYTES || offset + length > sizeBytes) return 0
  return length
}

/** The bytes a readBlock() or writeBlock() is charged: a whole block when the index is in range, else 0 (see rangeCharge). */
function blockCharge (index: unknown, blockSize: number, sizeBytes: number): number {
  return typeof index === 'number' && Number.isSafeInteger(index) && index >= 0 && (index + 1) * blockSize <= sizeBytes ? blockSize : 0
}

/**
 * BUSY while a restore writes into the volume (BackupManager claims it in `restoring`), unless the
 * call is one of that restore's own writes (`restoreOf` is the volume's id): a write made meanwhile
 * would be mixed into the restored data, or lost under it. Checked when the call comes and again
 * once QoS lets it into the engine, since the restore may have begun while it waited.
 */
function assertNotRestoring (host: FacadeHost, record: VolumeRecord, restoreOf: string | undefined): void {
  if (restoreOf === record.id || !host.restoring.has(record.id)) return
  throw new GalleonError('BUSY', `a backup is being restored into volume ${record.name}; write to it once the restore has finished (a write now would be mixed with the backup's data, or lost under it)`)
}

/**
 * A replicated concern on a 1-copy volume of a cluster's node: refused naming the volume (the
 * engine's own refusal speaks of an instance outside any cluster).
 */
function assertOneCopyConcern (name: string, concern: WriteConcern): void {
  if (concern !== WriteConcern.WriteReplicated && concern !== WriteConcern.WriteDistributed) return
  throw new GalleonError('WRITE_CONCERN_UNSATISFIED', `${concern} needs an in-sync copy on another node, and volume ${name} has one copy (it is not replicated); use WriteDurable, or give it copies with migrateVolume(${JSON.stringify(name)}, { storageClass }) into a class whose replication is 2 or more. Nothing was written`)
}

function checkConcern (concern: unknown): WriteConcern {
  if (typeof concern !== 'string' || !WRITE_CONCERNS.has(concern)) {
    throw new GalleonError('INVALID_ARGUMENT', `write concern must be one of ${[...WRITE_CONCERNS].join(', ')}, got ${describe(concern)}`)
  }
  return concern as WriteConcern
}

/** A block the engine found failing its checksum. */
export interface ChecksumFailure { storageId: number, index: number, gen: number, reason: string, expected?: number, actual?: number }

/** The engine's report of a block that failed its checksum, as a `checksum:mismatch` event. */
export function reportChecksumFailure (host: FacadeHost, failure: ChecksumFailure): void {
  const record = host.catalog.volumes().find((candidate) => candidate.storageId === failure.storageId)
  host.emit('checksum:mismatch', {
    volumeId: record?.id ?? '',
    volumeName: record?.name ?? '',
    blockIndex: failure.index,
    generation: failure.gen,
    reason: failure.reason,
    expected: failure.expected,
    actual: failure.actual
  })
}

/**
 * The I/O calls of GalleonFS, whole (state and caller checks included): GalleonFS returns their
 * promises as they are, so the hot path has no extra async hop.
 */
export class VolumeIO {
  readonly #host: FacadeHost
  readonly #gate: AccessGuard
  readonly #bridge: ReplicationBridge
  readonly #snapshots: Snapshots
  readonly #membership: ClusterMembership

  /** Refusals made without a turn of the event loop (see #refusal). */
  readonly #refusals = new LoopStreak()

  constructor (host: FacadeHost, gate: AccessGuard, bridge: ReplicationBridge, snapshots: Snapshots, membership: ClusterMembership) {
    this.#host = host
    this.#gate = gate
    this.#bridge = bridge
    this.#snapshots = snapshots
    this.#membership = membership
  }

  /**
   * `err`, once the event loop has had a turn if calls have been refused for a while without one:
   * most refusals (a volume reverting, a bad argument) reject before any I/O, so a caller that
   * retries in a loop (`for (;;) { try { return await g.read(...) } catch {} }`) would otherwise
   * hold the loop, and the revert, lease or socket it waits for would never get its turn. The
   * try around each call costs nothing until it throws.
   */
  async #refusal (err: unknown): Promise<unknown> {
    if (this.#refusals.tooLong(performance.now())) await loopTurn()
    return err
  }

  /** GalleonFS.writeBlock; `restoreOf`: see assertNotRestoring. */
  async writeBlock (vol: VolumeRef, blockIndex: number, data: Uint8Array, concern: WriteConcern | `${WriteConcern}`, restoreOf?: string): Promise<void> {
    try {
      const host = this.#host
      host.assertOpen()
      const denied = this.#gate.refCheck('writeBlock', 'volume:write', vol)
      if (denied !== undefined) await denied
      // The caller may reuse its buffer once this call has returned its promise: whatever waits
      // before the engine has taken the bytes (which it does before its own waits) waits on a copy.
      let copied = false
      const record = writable(host.catalog, vol)
      assertNotRestoring(host, record, restoreOf)
      assertBytes(data, 'data')
      // A forwarded write served here and sent on keeps its identity (see WriterId).
      const passOn = writerOf(vol)
      const checked = checkConcern(concern)
      const replication = host.replication
      if (record.replication !== undefined && replication !== undefined) {
        // Forwarded, or handed to a new primary if the role moves under it: sent later.
        data = copyBytes(data)
        copied = true
        if (replication.forwards(record.id)) {
          await this.#bridge.forward(record, { op: 'writeBlock', index: blockIndex, concern: checked, ...passOn }, data)
          return
        }
        this.#bridge.assertCopyHeld(record)
        replication.checkConcern(record.id, checked)
      } else if (replication !== undefined) assertOneCopyConcern(record.name, checked)
      const volume = ioVolumeOf(host, record)
      // The primary this write is for: if the role moves while it waits, it goes to the next one.
      const primary = volume.replicator
      const qos = host.qos
      const arrivedAt = qos.now()
      // Short data is zero-padded: the whole block is stored, so the whole block is charged.
      const charge = data.byteLength > host.engine.blockSize ? 0 : blockCharge(blockIndex, host.engine.blockSize, record.sizeBytes)
      const admitted = qos.admit(record.id, 'write', charge)
      if (typeof admitted !== 'boolean' && !copied) data = copyBytes(data)
      const held = typeof admitted === 'boolean' ? admitted : await admitted
      try {
        assertNotRestoring(host, record, restoreOf)
        await host.engine.writeBlock(volume, blockIndex, data, checked, primary, false, passOn.writer)
      } catch (err) {
        if (this.#bridge.handedOver(record, err)) { await this.#bridge.forward(record, { op: 'writeBlock', index: blockIndex, concern: checked, ...passOn }, data); return }
        throw ioFailed(host, record, 'write', err)
      } finally {
        if (held) qos.release()
        if (charge > 0) qos.completed(record.id, 'write', arrivedAt)
      }
    } catch (err) {
      throw await this.#refusal(err)
    }
  }

  /** GalleonFS.readBlock. */
  async readBlock (source: ReadSource, blockIndex: number): Promise<Uint8Array> {
    try {
      const host = this.#host
      host.assertOpen()
      const denied = this.#gate.refCheck('readBlock', isSnapshotRef(source) ? 'snapshot:read' : 'volume:read', source)
      if (denied !== undefined) await denied
      const { record, snapshot } = readSource(host.catalog, source)
      if (host.replication?.forwards(record.id) === true) {
        return (await this.#bridge.forward(record, { op: 'readBlock', index: blockIndex, ...(snapshot === undefined ? {} : { readSnapshot: snapshot.id }) })).payload ?? new Uint8Array(0)
      }
      this.#bridge.assertCopyHeld(record)
      const unpin = snapshot === undefined ? undefined : this.#snapshots.pinSnapshot(snapshot)
      const qos = host.qos
      const arrivedAt = qos.now()
      const charge = blockCharge(blockIndex, host.engine.blockSize, snapshot?.sizeBytes ?? record.sizeBytes)
      const admitted = qos.admit(record.id, 'read', charge)
      const held = typeof admitted === 'boolean' ? admitted : await admitted
      try {
        const volume = ioVolumeOf(host, record)
        return await host.engine.readBlock(volume, blockIndex, viewOn(host, record, volume, snapshot))
      } catch (err) {
        throw ioFailed(host, record, 'read', err)
      } finally {
        unpin?.()
        if (held) qos.release()
        if (charge > 0) qos.completed(record.id, 'read', arrivedAt)
      }
    } catch (err) {
      throw await this.#refusal(err)
    }
  }

  /** GalleonFS.write; `restoreOf`: see assertNotRestoring. */
  async write (vol: VolumeRef, offset: number, data: Uint8Array, concern: WriteConcern | `${WriteConcern}`, restoreOf?: string): Promise<void> {
    try {
      const host = this.#host
      host.assertOpen()
      const denied = this.#gate.refCheck('write', 'volume:write', vol)
      if (denied !== undefined) await denied
      // The caller may reuse its buffer once this call has returned its promise: whatever waits
      // before the engine has taken the bytes (which it does before its own waits) waits on a copy.
      let copied = false
      const record = writable(host.catalog, vol)
      assertNotRestoring(host, record, restoreOf)
      assertBytes(data, 'data')
      // A forwarded write served here and sent on keeps its identity (see WriterId).
      const passOn = writerOf(vol)
      const checked = checkConcern(concern)
      const replication = host.replication
      if (record.replication !== undefined && replication !== undefined) {
        // Forwarded, or handed to a new primary if the role moves under it: sent later.
        data = copyBytes(data)
        copied = true
        if (replication.forwards(record.id)) {
          await this.#bridge.forward(record, { op: 'write', offset, concern: checked, ...passOn }, data)
          return
        }
        this.#bridge.assertCopyHeld(record)
        replication.checkConcern(record.id, checked)
      } else if (replication !== undefined) assertOneCopyConcern(record.name, checked)
      const volume = ioVolumeOf(host, record)
      // The primary this write is for: if the role moves while it waits, it goes to the next one.
      const primary = volume.replicator
      const qos = host.qos
      const arrivedAt = qos.now()
      const charge = rangeCharge(offset, data.byteLength, record.sizeBytes)
      const admitted = qos.admit(record.id, 'write', charge)
      if (typeof admitted !== 'boolean' && !copied) data = copyBytes(data)
      const held = typeof admitted === 'boolean' ? admitted : await admitted
      try {
        assertNotRestoring(host, record, restoreOf)
        await host.engine.write(volume, offset, data, checked, primary, false, passOn.writer)
      } catch (err) {
        if (this.#bridge.handedOver(record, err)) { await this.#bridge.forward(record, { op: 'write', offset, concern: checked, ...passOn }, data); return }
        throw ioFailed(host, record, 'write', err)
      } finally {
        if (held) qos.release()
        if (charge > 0) qos.completed(record.id, 'write', arrivedAt)
      }
    } catch (err) {
      throw await this.#refusal(err)
    }
  }

  /** GalleonFS.read. */
  async read (source: ReadSource, offset: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
    try {
      const host = this.#host
      host.assertOpen()
      // Checked first: a caller who may not read the volume is told so, whatever else it passed.
      const denied = this.#gate.refCheck('read', isSnapshotRef(source) ? 'snapshot:read' : 'volume:read', source)
      if (denied !== undefined) await denied
      if (into !== undefined) {
        assertBytes(into, 'into')
        if (Number.isSafeInteger(length) && into.byteLength < length) throw new GalleonError('INVALID_ARGUMENT', `read() into a buffer of ${into.byteLength} bytes cannot take ${describe(length)} bytes; pass one of at least the length read, or none`)
      }
      const { record, snapshot } = readSource(host.catalog, source)
      if (host.replication?.forwards(record.id) === true) {
        const payload = (await this.#bridge.forward(record, { op: 'read', offset, length, ...(snapshot === undefined ? {} : { readSnapshot: snapshot.id }) })).payload ?? new Uint8Array(0)
        if (into === undefined) return payload
        const out = into.subarray(0, payload.byteLength)
        out.set(payload)
        return out
      }
      this.#bridge.assertCopyHeld(record)
      const unpin = snapshot === undefined ? undefined : this.#snapshots.pinSnapshot(snapshot)
      const qos = host.qos
      const arrivedAt = qos.now()
      const charge = rangeCharge(offset, length, snapshot?.sizeBytes ?? record.sizeBytes)
      const admitted = qos.admit(record.id, 'read', charge)
      const held = typeof admitted === 'boolean' ? admitted : await admitted
      try {
        const volume = ioVolumeOf(host, record)
        return await host.engine.read(volume, offset, length, viewOn(host, record, volume, snapshot), false, into)
      } catch (err) {
        throw ioFailed(host, record, 'read', err)
      } finally {
        unpin?.()
        if (held) qos.release()
        if (charge > 0) qos.completed(record.id, 'read', arrivedAt)
      }
    } catch (err) {
      throw await this.#refusal(err)
    }
  }

  /** GalleonFS.flush. */
  async flush (vol?: VolumeRef): Promise<void> {
    const host = this.#host
    host.assertOpen()
    if (vol !== undefined) {
      const denied = this.#gate.refCheck('flush', 'volume:write', vol)
      if (denied !== undefined) await denied
    }
    const record = vol === undefined ? undefined : host.catalog.resolve(vol)
    // Writes a mount acknowledged but has not handed to the volume yet (its write-behind) are
    // flushed too, as sync(1) writes back a file system's dirty pages; one of them that failed
    // fails the flush (it cannot be made durable).
    await mountControl(host.mounts).quiesce(record?.id, { report: true })
    if (record !== undefined && host.replication?.forwards(record.id) === true) {
      await this.#bridge.forward(record, { op: 'flush' })
      return
    }
    try {
      await host.engine.flush()
      // Synchronous replication: a flush of a replicated volume also waits for its in-sync copies.
      if (record?.replication !== undefined && this.#membership.replicationMode === 'synchronous') await host.replication?.replicated(record.id)
    } catch (err) { throw record === undefined ? err : ioFailed(host, record, 'flush', err) }
  }

  /** GalleonFS.trim; `restoreOf`: see assertNotRestoring. */
  async trim (vol: VolumeRef, offset: number, length: number, restoreOf?: string): Promise<void> {
    try {
      const host = this.#host
      host.assertOpen()
      const denied = this.#gate.refCheck('trim', 'volume:write', vol)
      if (denied !== undefined) await denied
      const record = writable(host.catalog, vol)
      assertNotRestoring(host, record, restoreOf)
      // A forwarded trim served here and sent on keeps its identity (see WriterId).
      const passOn = writerOf(vol)
      if (host.replication?.forwards(record.id) === true) {
        await this.#bridge.forward(record, { op: 'trim', offset, length, ...passOn })
        return
      }
      this.#bridge.assertCopyHeld(record)
      const volume = ioVolumeOf(host, record)
      // The primary this trim is for: if the role moves while it waits, it goes to the next one.
      const primary = volume.replicator
      const qos = host.qos
      const arrivedAt = qos.now()
      // A trim costs an operation, not bandwidth: it frees blocks, it does not move their bytes.
      const admitted = qos.admit(record.id, 'write', 0)
      const runs = rangeCharge(offset, length, record.sizeBytes) > 0
      const held = typeof admitted === 'boolean' ? admitted : await admitted
      try {
        assertNotRestoring(host, record, restoreOf)
        await host.engine.trim(volume, offset, length, WriteConcern.WriteAcknowledged, primary, false, passOn.writer)
      } catch (err) {
        if (this.#bridge.handedOver(record, err)) { await this.#bridge.forward(record, { op: 'trim', offset, length, ...passOn }); return }
        throw ioFailed(host, record, 'trim', err)
      } finally {
        if (held) qos.release()
        if (runs) qos.completed(record.id, 'write', arrivedAt)
      }
    } catch (err) {
      throw await this.#refusal(err)
    }
  }

  /** GalleonFS.scrub. */
  async scrub (vol: VolumeRef): Promise<ScrubReport> {
    const host = this.#host
    host.assertOpen()
    const denied = this.#gate.refCheck('scrub', 'volume:read', vol)
    if (denied !== undefined) await denied
    const record = host.catalog.resolve(vol)
    // close() ends a scrub under way: the store going away is not damage to report.
    const closing = (): Error | undefined => host.closing === undefined ? undefined : new GalleonError('NOT_OPEN', 'the instance closed while the volume was scrubbed; scrub it again once it is open')
    const volume = ioVolume(host, record)
    const { checked, bad } = await host.engine.scrub(volume, closing)
    // Reads go through files the store holds open: a file removed or replaced from outside still
    // reads until the store closes, so the store's own check of its files tells.
    const storeProblems = await host.engine.store.checkFiles?.({ volume: volume.storageId }) ?? []
    const stopped = closing()
    if (stopped !== undefined) throw stopped
    const reported = new Set(bad.map(({ index, gen }) => `${index}:${gen}`))
    for (const problem of storeProblems) {
      for (const { index, gen } of problem.blocks) {
        if (!volume.map.versions(index).includes(gen) || reported.has(`${index}:${gen}`)) continue
        reported.add(`${index}:${gen}`)
        bad.push({ index, gen, code: problem.code, message: problem.message })
      }
    }
    host.emit('scrub:completed', { volumeId: record.id, blocksChecked: checked, badBlocks: bad.length })
    return {
      volumeId: record.id,
      blocksChecked: checked,
      badBlocks: bad.map(({ index, gen, code, message }) => ({ index, generation: gen, code, message })),
      storeProblems: storeProblems.map(({ file, code, message }) => ({ file, code, message }))
    }
  }

  /** The work of GalleonFS.getAllocation, once the caller is checked. */
  allocation (record: VolumeRecord, snapshot: SnapshotRecord | undefined, offset: number, length: number): Array<{ offset: number, length: number, allocated: boolean }> {
    const host = this.#host
    const size = snapshot?.sizeBytes ?? record.sizeBytes
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new GalleonError('INVALID_ARGUMENT', `offset and length must be non-negative integers, got ${describe(offset)} and ${describe(length)}`)
    }
    if (offset + length > size) throw new GalleonError('OUT_OF_RANGE', `range ${offset}..${offset + length} goes past the end (${size} bytes)`)
    if (length === 0) return []
    const blockSize = host.engine.blockSize
    const runs = host.engine.allocationRuns(ioVolume(host, record), Math.floor(offset / blockSize), Math.floor((offset + length - 1) / blockSize), snapshot?.gen ?? LIVE)
    return runs.map(([first, count, allocated]) => {
      const start = Math.max(offset, first * blockSize)
      const end = Math.min(offset + length, (first + count) * blockSize)
      return { offset: start, length: end - start, allocated }
    })
  }

  /** The work of GalleonFS.listChangedBlocks, once the caller is checked. */
  changedBlocks (vol: VolumeRef, options: { from?: string | Pick<Snapshot, 'id'>, to?: string | Pick<Snapshot, 'id'> }): number[] {
    const host = this.#host
    const record = host.catalog.resolve(vol)
    // A volume being deleted may have no blocks left in the engine: attaching its storage again
    // would list no changes (a backup whose snapshot was taken just before stored nothing and
    // reported success), and leave the deleted storage attached.
    if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
    const volume = volumeBlocks(host, record)
    const from = options?.from === undefined ? undefined : host.catalog.resolveSnapshot(record, options.from)
    const to = options?.to === undefined ? undefined : host.catalog.resolveSnapshot(record, options.to)
    if (from !== undefined && to !== undefined && to.gen < from.gen) {
      throw new GalleonError('INVALID_ARGUMENT', `snapshot ${to.name} is older than ${from.name}; pass the older one as from`)
    }
    if (from === undefined) return host.engine.allocatedAt(volume, to?.gen ?? LIVE)
    return host.engine.changedBlocks(volume, from.gen, to?.gen ?? LIVE)
  }
}
