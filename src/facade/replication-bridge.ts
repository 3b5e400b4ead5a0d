// Between the facade and replication: the host ReplicationManager works through, I/O calls forwarded
// to and served for a volume's primary, and the replication metrics.

import { GalleonError, errorCode } from '../errors.js'
import type { View } from '../engine/engine.js'
import { mountControl } from '../mount/mount-manager.js'
import type { ForwardedRequest, ReplicationHost, ReplicationStatus } from '../replication/manager.js'
import { outcomeUnknown } from '../replication/common.js'
import type { VolumeSpec } from '../replication/records.js'
import { VolumeState, WriteConcern, type Volume } from '../types.js'
import { namespaceOf, type VolumeRecord } from '../volumes/catalog.js'
import type { ClusterMigrations } from './cluster-migration.js'
import type { FacadeCalls, FacadeHost } from './host.js'
import type { KeyRotations } from './key-rotation.js'
import { attachmentsOf } from './attachments-here.js'
import { callOf, callRef, keptTokens, servePrimaryStep, withToken, writerRef, type ForwardedCall } from './forwarded-calls.js'
import { writerOf, type WriterId } from '../replication/forwarded-writes.js'
import { copyEncrypted, toVolume, viewOf } from './records.js'
import type { ReadSource } from './refs.js'
import type { Snapshots } from './snapshots.js'
import type { VolumeLifecycle } from './volumes.js'

/**
 * How many answers of forwarded control calls a primary keeps for their repeats (see
 * ReplicationBridge.#servedOnce): a repeat comes within the caller's failover wait (ClusterOptions.failoverWaitMs, 30 s by default), and each
 * answer is a few hundred bytes.
 */
const SERVED_ANSWERS_KEPT = 256

/** Forwarded calls that write: each carries its identity (see WriterId), so that a repeat does not write again. */
const WRITE_OPS = new Set<ForwardedRequest['op']>(['write', 'writeBlock', 'trim'])

/** What replication uses of the instance, and the forwarding of I/O to a volume's primary. */
export class ReplicationBridge {
  readonly #host: FacadeHost
  readonly #calls: FacadeCalls
  readonly #snapshots: Snapshots
  readonly #volumes: VolumeLifecycle
  readonly #copies: ClusterMigrations
  readonly #keys: KeyRotations

  constructor (host: FacadeHost, calls: FacadeCalls, snapshots: Snapshots, volumes: VolumeLifecycle, copies: ClusterMigrations, keys: KeyRotations) {
    this.#host = host
    this.#calls = calls
    this.#snapshots = snapshots
    this.#volumes = volumes
    this.#copies = copies
    this.#keys = keys
  }

  /**
   * A replicated volume whose copy here replication no longer tracks (moved to another node, or
   * replaced while this node was away) is on its way out: its local blocks are not kept in step,
   * so I/O on them would be lost or stale.
   */
  assertCopyHeld (record: VolumeRecord): void {
    if (record.replication !== undefined && this.#host.replication !== undefined && !this.#host.replication.holds(record.id)) {
      throw new GalleonError('VOLUME_NOT_FOUND', `the copy of volume ${record.name} on this node was moved or replaced and is being deleted; use a node that holds the volume (replicationStatus on one lists them)`)
    }
  }

  /** A write refused because this node is handing the volume's primary role over: it goes to the next primary. */
  handedOver (record: VolumeRecord, err: unknown): boolean {
    return record.replication !== undefined && err instanceof GalleonError && err.code === 'NOT_LEADER' && this.#host.replication?.forwards(record.id) === true
  }

  /** Sends an I/O call on a replicated volume to its primary. */
  async forward (record: VolumeRecord, request: ForwardedRequest, payload?: Uint8Array): Promise<{ header: Readonly<Record<string, unknown>>, payload?: Uint8Array }> {
    const replication = this.#host.replication
    if (replication === undefined) throw new GalleonError('BACKEND_UNAVAILABLE', `volume ${record.name} is replicated, but this instance is not in a cluster now`)
    // A write another node forwarded here, which this node does not run as the primary (it is
    // fenced, hands the role over, or lost it while the write waited), goes back to that node, which
    // asks the primary itself for as long as its caller waits. Sent on from here, it could arrive
    // long after that node had its answer (this node stopped meanwhile, or the primary refused it as
    // stale and was asked again until a restart emptied its ledger: daemon-chaos seed 5, h94) and
    // write its old data over a later write to its blocks.
    if (request.writer !== undefined && !replication.ownsWriter(request.writer)) throw replication.notServing(record.id)
    // A write made here gets its identity (one served here for another node keeps that node's):
    // every attempt of it carries it, also the one run here if this node becomes the primary.
    const own = WRITE_OPS.has(request.op) && request.writer === undefined ? replication.beginWrite() : undefined
    if (own !== undefined) request = { ...request, writer: own }
    try {
      return await replication.forward(record.id, request, payload)
    } catch (err) {
      // This node became the primary while the call waited for one: it runs here (as a repeat of
      // the call when an earlier attempt may have taken effect at the primary before).
      if (err instanceof GalleonError && err.code === 'NOT_LEADER' && !replication.forwards(record.id) && replication.holds(record.id)) {
        return await this.serveForwarded(record.id, outcomeUnknown(err) === undefined ? request : { ...request, repeat: true }, payload)
      }
      throw this.#host.ioFailed(record, request.op === 'read' || request.op === 'readBlock' ? 'read' : request.op === 'trim' ? 'trim' : request.op === 'flush' ? 'flush' : 'write', err)
    } finally {
      if (own !== undefined) replication.writeDone(own)
    }
  }

  /**
   * Runs an I/O call another node forwarded to this one (the primary), outside any caller's
   * context. A control call with a token runs as one call (see forwarded-calls.ts): its repeat is
   * answered with what an earlier attempt did, and a failure that came of this node losing the
   * role under it says NOT_LEADER, so that the caller asks the next primary.
   */
  async serveForwarded (volumeId: string, request: ForwardedRequest, payload: Uint8Array | undefined): Promise<{ header: Record<string, unknown>, payload?: Uint8Array }> {
    const call = callOf(request)
    const vol = callRef(volumeId, call)
    // A caller of an earlier version sends no token and does not send the call again: its failures stand.
    const once = async <T>(step: string, run: () => Promise<T>): Promise<T> => call === undefined ? await run() : await this.#servedOnce(volumeId, step, call, async () => await servePrimaryStep(this.#host, volumeId, step, run))
    return await this.#host.context.exit(async () => {
      const source = (): ReadSource => request.readSnapshot === undefined ? volumeId : { volume: volumeId, snapshot: { id: request.readSnapshot } }
      const data = payload ?? new Uint8Array(0)
      const concern = (request.concern ?? WriteConcern.WriteAcknowledged) as WriteConcern
      const writer = WRITE_OPS.has(request.op) ? writerOf(request.writer) : undefined
      const written = writerRef(volumeId, writer)
      switch (request.op) {
        case 'write': await this.#writeOnce(volumeId, writer, concern, async () => { await this.#calls.write(written, request.offset as number, data, concern) }); return { header: {} }
        case 'writeBlock': await this.#writeOnce(volumeId, writer, concern, async () => { await this.#calls.writeBlock(written, request.index as number, data, concern) }); return { header: {} }
        case 'trim': await this.#writeOnce(volumeId, writer, concern, async () => { await this.#calls.trim(written, request.offset as number, request.length as number) }); return { header: {} }
        case 'read': return { header: {}, payload: await this.#calls.read(source(), request.offset as number, request.length as number) }
        case 'readBlock': return { header: {}, payload: await this.#calls.readBlock(source(), request.index as number) }
        case 'flush': await this.#calls.flush(volumeId); return { header: {} }
        case 'createSnapshot': return { header: { snapshot: await once('createSnapshot', async () => await this.#calls.createSnapshot(vol, String(request.snapshotName))) } }
        case 'deleteSnapshot': await once('deleteSnapshot', async () => { await this.#calls.deleteSnapshot(vol, { id: String(request.snapshot) }, { force: request.force === true }) }); return { header: {} }
        case 'deleteVolume': await once('deleteVolume', async () => { await this.#calls.deleteVolume(vol, { force: request.force === true }) }); return { header: {} }
        case 'expandVolume': return { header: { volume: await once('expandVolume', async () => await this.#expand(volumeId, request.sizeBytes as number, call)) } }
        case 'restoreSnapshot': return { header: { volume: await once('restoreSnapshot', async () => await this.#calls.restoreSnapshot(vol, { id: String(request.snapshot) })) } }
        // The rotation's token keeps a repeat from counting twice.
        case 'rotateVolumeKey': return { header: { encryption: await servePrimaryStep(this.#host, volumeId, 'rotateVolumeKey', async () => await this.#keys.rotateOnPrimary(volumeId, {}, call?.token)) } }
        // Within the forwarded call's time; the caller asks again until `done`.
        case 'awaitKeyRotation': return { header: { ...await servePrimaryStep(this.#host, volumeId, 'wait for a key rotation', async () => await this.#keys.awaitRotation(volumeId, 5000)) } }
        default: throw new GalleonError('INVALID_ARGUMENT', `unknown forwarded operation ${JSON.stringify((request as { op?: unknown }).op)}`)
      }
    })
  }

  /** Forwarded writes (see WriterId) this node runs as the primary now, by volume, writer and number. */
  readonly #writing = new Map<string, Promise<void>>()

  /**
   * Runs a forwarded write (or trim) as the volume's primary, once: a repeat of one this node runs
   * now gets that attempt's answer, and one its copy holds already (it ran here, or reached this
   * node in the stream of a former primary) is answered once that meets its concern, without
   * writing again: written again, it would overwrite a later write to its blocks that resolved
   * meanwhile. An attempt its node gave up on before it came is refused (its caller was told the
   * write failed). A node that is not the primary refuses it (see forward: its node asks the
   * primary itself); a write without an identity, from a node of an earlier version, runs as it is.
   */
  async #writeOnce (volumeId: string, writer: WriterId | undefined, concern: WriteConcern, run: () => Promise<void>): Promise<void> {
    const replication = this.#host.replication
    const ledger = writer === undefined ? undefined : replication?.writeLedger(volumeId)
    if (writer === undefined || ledger === undefined || replication === undefined || replication.forwards(volumeId)) return await run()
    if (ledger.stale(writer)) throw new GalleonError('BACKEND_UNAVAILABLE', `a write forwarded by ${writer.origin} to volume ${volumeId} arrived after that node gave up on it (its caller was told it failed), so it was not written`)
    const key = `${volumeId}/${writer.origin}/${writer.n}`
    const earlier = this.#writing.get(key)
    if (earlier !== undefined) return await earlier
    if (ledger.holds(writer)) return await replication.settleRepeat(volumeId, concern)
    const attempt = run()
    this.#writing.set(key, attempt)
    try {
      await attempt
    } finally {
      if (this.#writing.get(key) === attempt) this.#writing.delete(key)
    }
  }

  /**
   * The answers of the forwarded control calls this node served as the volume's primary lately, by
   * volume, call and token (the newest SERVED_ANSWERS_KEPT): see #servedOnce.
   */
  readonly #served = new Map<string, Promise<unknown>>()

  /**
   * Runs a forwarded control call whose token this node has not served yet; a repeat of one it
   * served (or still serves) gets that attempt's answer, its failure too: a deletion refused BUSY
   * (a clone still read the snapshot) whose answer was lost is not told it succeeded because the
   * snapshot was deleted by another call before the repeat came, nor is a refused expansion told it
   * succeeded because another call grew the volume. A failure that came of this node losing the
   * role (NOT_LEADER, see servePrimaryStep) is not kept: the next primary answers the repeat.
   */
  async #servedOnce<T> (volumeId: string, step: string, call: ForwardedCall, run: () => Promise<T>): Promise<T> {
    const key = `${volumeId}/${step}/${call.token}`
    const earlier = this.#served.get(key)
    if (earlier !== undefined) return await (earlier as Promise<T>)
    const answer = run()
    this.#served.set(key, answer)
    answer.catch((err) => { if (errorCode(err) === 'NOT_LEADER' && this.#served.get(key) === answer) this.#served.delete(key) })
    if (this.#served.size > SERVED_ANSWERS_KEPT) this.#served.delete(this.#served.keys().next().value as string)
    return await answer
  }

  /**
   * A forwarded expansion. Its repeat finds the volume at least as large as it asked for (its
   * earlier attempt, or a later expansion, made it so): that is its answer, not a refused shrink.
   */
  async #expand (volumeId: string, sizeBytes: number, call: ForwardedCall | undefined): Promise<Volume> {
    const record = this.#host.recordById(volumeId)
    if (call?.repeat === true && record !== undefined && record.state !== VolumeState.Deleting && record.sizeBytes >= sizeBytes) return this.#host.volumeView(record)
    return await this.#calls.expandVolume(callRef(volumeId, call), sizeBytes)
  }

  /** What replication uses of this instance. */
  replicationHost (): ReplicationHost {
    return {
      engine: this.#host.engine,
      localCopies: () => this.#host.catalog.volumes().filter((r) => r.replication !== undefined && r.state !== VolumeState.Deleting).map((r) => ({ id: r.id, position: r.replication as { epoch: number, seq: number } })),
      blocks: (id) => {
        const record = this.#host.recordById(id)
        return record === undefined || record.state === VolumeState.Deleting ? undefined : this.#host.volumeBlocks(record)
      },
      createCopy: async (spec) => {
        await this.#host.admin(async () => {
          if (this.#host.recordById(spec.id) !== undefined) return
          const storageClass = this.#host.catalog.storageClass(spec.storageClass)
          if (storageClass === undefined) throw new GalleonError('STORAGE_CLASS_NOT_FOUND', `node ${this.#host.cluster?.nodeId ?? ''} has no storage class ${spec.storageClass}, which volume ${spec.name} uses; create it on every node`)
          if (spec.blockSize !== this.#host.engine.blockSize) throw new GalleonError('INVALID_ARGUMENT', `volume ${spec.name} has ${spec.blockSize}-byte blocks, this node ${this.#host.engine.blockSize}-byte ones; every node of a cluster needs the same block size`)
          // The volume's encryption, not only this node's class of its name (see VolumeSpec.encrypted).
          const encrypted = copyEncrypted(spec, storageClass)
          if (encrypted) await this.#host.keys.provider()
          const unreserve = this.#host.catalog.reserveName(spec.name, spec.namespace)
          let record: VolumeRecord
          try {
            // A copy counts in this node's pool of the same name, if it has one; it is never refused for
            // space here: the cluster placed it, and the primary's node checked its pool.
            const pool = spec.pool !== undefined && this.#host.catalog.pool(spec.pool) !== undefined ? { pool: spec.pool } : {}
            record = await this.#host.newVolume({ id: spec.id, name: spec.name, namespace: spec.namespace, type: spec.type, state: VolumeState.Available, sizeBytes: spec.sizeBytes, blockSize: spec.blockSize, storageClass: spec.storageClass, replicas: spec.replicas, accessModes: [...spec.accessModes], labels: { ...spec.labels }, encrypted, replication: { epoch: 0, seq: 0 }, ...pool, ...(spec.qos === undefined ? {} : { qos: spec.qos }) })
          } finally {
            unreserve()
          }
          // Fresh keys: they answer every rotation of the volume's keys so far.
          if (encrypted && (spec.keyGeneration ?? 0) > 0) await this.#host.keys.markGeneration(record.id, spec.keyGeneration as number)
          this.#host.emit('volume:created', toVolume(record))
        })
      },
      // A conversion of the copy (see ClusterMigrations.convergeCopy) is cancelled by what changes its snapshots,
      // size or existence; it starts again afterwards.
      deleteCopy: async (id) => {
        await this.#host.adminAfterMigration(id, async () => {
          const record = this.#host.recordById(id)
          if (record === undefined || record.state === VolumeState.Deleting) return
          await mountControl(this.#host.mounts).release(id)
          await this.#host.destroy(record, true)
        }, 'this copy is being deleted')
      },
      savePosition: async (id, position) => {
        if (this.#host.closed && this.#host.closing === undefined) return
        const record = this.#host.recordById(id)
        if (record === undefined || record.state === VolumeState.Deleting) return
        await this.#host.catalog.updateVolume(id, { replication: position }, { sync: false })
      },
      snapshots: (id) => this.#host.catalog.snapshots(id).map((snapshot) => ({ id: snapshot.id, name: snapshot.name, gen: snapshot.gen, sizeBytes: snapshot.sizeBytes, ...(snapshot.token === undefined ? {} : { token: snapshot.token }) })),
      applySnapshot: async (id, snapshotId, name, sizeBytes, token) => {
        await this.#host.adminAfterMigration(id, async () => {
          const record = this.#host.catalog.resolve(id)
          if (this.#host.catalog.snapshotById(snapshotId) !== undefined) return
          // A snapshot of that name with another id is one the primary no longer has.
          const stale = this.#host.catalog.snapshots(id).find((snapshot) => snapshot.name === name)
          if (stale !== undefined) await this.#snapshots.dropReplicaSnapshot(record, stale)
          this.#host.emit('snapshot:created', this.#host.toSnapshot(await this.#snapshots.takeSnapshot(record, name, false, snapshotId, sizeBytes, undefined, token)))
        }, 'the primary took a snapshot; the conversion of this copy starts again after it')
      },
      applyDeleteSnapshot: async (id, snapshotId) => {
        await this.#host.adminAfterMigration(id, async () => {
          const snapshot = this.#host.catalog.snapshotById(snapshotId)
          if (snapshot === undefined || snapshot.volumeId !== id) return
          await this.#snapshots.dropReplicaSnapshot(this.#host.catalog.resolve(id), snapshot)
        }, 'the primary deleted a snapshot; the conversion of this copy starts again after it')
      },
      applyExpand: async (id, sizeBytes) => { await this.#volumes.applyExpand(id, sizeBytes) },
      applyKeyRotation: async (id, generation) => { await this.#keys.applyRotation(id, generation) },
      attachments: (id) => attachmentsOf(this.#host, id),
      copyLayout: (id, retry) => {
        const record = this.#host.recordById(id)
        const failed = this.#copies.copyConversionErrors.get(id)
        const spec = this.#host.replication?.spec(id)
        const held = record === undefined || record.state === VolumeState.Deleting ? undefined : record
        const reencrypting = this.#host.rotations.has(id) || this.#host.rotationsStarting.has(id)
        const layout = {
          ...(held === undefined ? {} : { storageClass: held.storageClass }),
          busy: this.#copies.copyConversions.has(id),
          ...(spec === undefined ? {} : { spec: { storageClass: spec.storageClass, ...(spec.pool === undefined ? {} : { pool: spec.pool }) } }),
          converged: held !== undefined && spec !== undefined && this.#copies.copyMatches(held, spec),
          ...(failed === undefined ? {} : { error: { code: failed.code, message: failed.message } }),
          reencrypting
        }
        // A copy re-encrypting would only refuse again; it converges once that is done (convergeCopy).
        if (retry && failed !== undefined && spec !== undefined && !reencrypting) this.#copies.convergeCopy(id, spec, true)
        return layout
      },
      applySpec: (id, spec) => {
        this.#applySpecQoS(id, spec)
        this.#copies.convergeCopy(id, spec)
        // A copy promoted before the expansion reached it grows to the size its record says.
        const held = this.#host.recordById(id)
        if (held !== undefined && spec.sizeBytes > held.sizeBytes) void this.#volumes.applyExpand(id, spec.sizeBytes).catch(() => {})
        // A copy that missed key rotations (away, or promoted before the stream brought one) rotates its own key.
        if (held?.encrypted === true && (spec.keyGeneration ?? 0) > this.#host.keys.generation(id)) {
          void this.#keys.applyRotation(id, spec.keyGeneration as number).catch((err: unknown) => {
            this.#host.emit('io:error', { volumeId: id, volumeName: held.name, operation: 'write', code: errorCode(err), message: `rotating this copy's data key as the volume's record says (${spec.keyGeneration ?? 0} rotations): ${(err as Error)?.message ?? String(err)}` })
          })
        }
      },
      applyRevert: async (id, snapshotId, token) => {
        await this.#host.adminAfterMigration(id, async () => {
          const record = this.#host.catalog.resolve(id)
          const snapshot = this.#host.catalog.snapshotById(snapshotId)
          // A copy without the snapshot has diverged: failing the change makes the primary resync it.
          if (snapshot === undefined || snapshot.volumeId !== id) throw new GalleonError('SNAPSHOT_NOT_FOUND', `node ${this.#host.cluster?.nodeId ?? ''} has no copy of snapshot ${snapshotId} of volume ${record.name} to revert to`)
          const reverted = await this.#host.engine.revert(this.#host.volumeBlocks(record), viewOf(snapshot) as View)
          // Kept with the copy: promoted, it answers a repeat of the call without reverting again.
          // (A crash before this line replays the change, or the resync that follows brings the tokens.)
          const updated = token === undefined ? record : await this.#host.catalog.updateVolume(id, { revertTokens: withToken(record.revertTokens, token) })
          this.#host.emit('snapshot:restored', this.#host.volumeView(updated), this.#host.toSnapshot(snapshot), reverted)
        }, 'the primary reverted the volume; the conversion of this copy starts again after it')
      },
      revertTokens: (id) => this.#host.recordById(id)?.revertTokens ?? [],
      keepRevertTokens: async (id, tokens) => {
        const record = this.#host.recordById(id)
        if (record === undefined || record.state === VolumeState.Deleting || (record.revertTokens ?? []).join() === tokens.join()) return
        await this.#host.catalog.updateVolume(id, { revertTokens: keptTokens(tokens) })
      },
      dropUnfinishedRevert: async (id) => {
        const record = this.#host.recordById(id)
        if (record === undefined || record.state === VolumeState.Deleting || record.revertTo === undefined) return false
        // One write: the intent never goes while the copy's saved position still claims a place in
        // a stream (a crash between would leave a part reverted copy that a delta resync keeps).
        await this.#host.catalog.updateVolume(id, { revertTo: undefined, revertToken: undefined, replication: { epoch: 0, seq: 0 } })
        this.#host.revertFailures.delete(id)
        return true
      },
      exclusive: async (task, whileClosing) => await this.#host.admin(task, whileClosing),
      closing: () => { try { this.#host.assertOpen(); return false } catch { return true } },
      serveForwarded: async (id, request, payload) => await this.serveForwarded(id, request, payload),
      emit: (event, payload) => { (this.#host.emit as (event: string, ...args: unknown[]) => boolean)(event, payload) }
    }
  }

  /** A replicated volume's QoS policy as its cluster record says: stored and applied here if it differs. */
  #applySpecQoS (volumeId: string, spec: VolumeSpec): void {
    const record = this.#host.recordById(volumeId)
    if (record === undefined || JSON.stringify(record.qos ?? null) === JSON.stringify(spec.qos ?? null)) return
    void this.#host.admin(async () => {
      const current = this.#host.recordById(volumeId)
      if (current === undefined || current.state === VolumeState.Deleting || JSON.stringify(current.qos ?? null) === JSON.stringify(spec.qos ?? null)) return
      const updated = await this.#host.catalog.updateVolume(volumeId, { qos: spec.qos })
      const effective = this.#host.applyQoS(updated)
      this.#host.emit('qos:policy-changed', { volumeId, volumeName: updated.name, ...effective })
    }).catch((err: unknown) => {
      this.#host.emit('io:error', { volumeId, volumeName: record.name, operation: 'write', code: errorCode(err), message: `applying the QoS policy of the cluster's record: ${(err as Error)?.message ?? String(err)}` })
    })
  }

  /** The work of GalleonFS.replicationStatus, once the caller is checked: a volume with one copy reports just this node. */
  replicationStatus (record: VolumeRecord): ReplicationStatus {
    const status = this.#host.replication?.status(record.id)
    if (status !== undefined) return status
    const self = this.#host.cluster?.nodeId ?? 'local'
    return { volumeId: record.id, role: 'primary', primary: self, epoch: undefined, nodes: [self], inSync: [self], replicas: record.replicas, degraded: record.replicas > 1, streamBufferBytes: 0, links: [] }
  }

  /** Prometheus families of replication: per volume and copy, lag (changes, bytes, seconds), bytes shipped, acknowledgement round trips and resync progress. */
  replicationMetrics (): string {
    const statuses = this.#host.replication?.statuses() ?? []
    const lines: string[] = []
    const families: Array<[string, 'gauge' | 'counter', string, (link: ReplicationStatus['links'][number]) => number]> = [
      ['galleonfs_replication_lag_changes', 'gauge', 'Changes the primary recorded that the copy has not acknowledged yet.', (l) => l.lagChanges],
      ['galleonfs_replication_lag_bytes', 'gauge', 'Bytes of changes queued for the copy.', (l) => l.lagBytes],
      ['galleonfs_replication_lag_seconds', 'gauge', 'Age of the oldest change the copy has not acknowledged (0 when it has them all).', (l) => l.lagSeconds],
      ['galleonfs_replication_shipped_bytes_total', 'counter', 'Block bytes shipped to the copy (stream and resync).', (l) => l.shippedBytes],
      ['galleonfs_replication_resync_read_bytes_total', 'counter', 'Bytes resyncs of the copy read from the volume to digest or send (not counted as client reads).', (l) => l.resyncReadBytes],
      ['galleonfs_replication_batches_acknowledged_total', 'counter', 'Stream batches the copy acknowledged.', (l) => l.batchesAcknowledged],
      ['galleonfs_replication_ack_wait_seconds_total', 'counter', 'Seconds the acknowledged stream batches waited from sending to acknowledgement, summed (divide by the batch count for the mean round trip).', (l) => l.ackWaitSeconds],
      ['galleonfs_replication_resyncs_total', 'counter', 'Resyncs of the copy started by this primary.', (l) => l.resyncs],
      ['galleonfs_replication_resync_blocks_done', 'gauge', 'Blocks compared or sent by the resync under way (0 when none).', (l) => l.resync?.blocksDone ?? 0],
      ['galleonfs_replication_resync_blocks_planned', 'gauge', 'Blocks the resync under way covers (0 when none).', (l) => l.resync?.blocksTotal ?? 0],
      ['galleonfs_replication_in_sync', 'gauge', '1 when the copy is in the in-sync list.', () => 0]
    ]
    const label = (value: string): string => value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')
    for (const [name, type, help, value] of families) {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`)
      for (const status of statuses) {
        const record = this.#host.recordById(status.volumeId)
        if (record === undefined) continue
        for (const link of status.links) {
          const v = name === 'galleonfs_replication_in_sync' ? (status.inSync.includes(link.node) ? 1 : 0) : value(link)
          lines.push(`${name}{volume_id="${label(record.id)}",volume_name="${label(record.name)}",namespace="${label(namespaceOf(record))}",node="${label(link.node)}"} ${v}`)
        }
      }
    }
    lines.push('# HELP galleonfs_replication_primary 1 when this node is the primary of the volume.', '# TYPE galleonfs_replication_primary gauge')
    for (const status of statuses) {
      const record = this.#host.recordById(status.volumeId)
      if (record !== undefined) lines.push(`galleonfs_replication_primary{volume_id="${label(record.id)}",volume_name="${label(record.name)}",namespace="${label(namespaceOf(record))}"} ${status.role === 'primary' ? 1 : 0}`)
    }
    return lines.join('\n') + '\n'
  }
}
