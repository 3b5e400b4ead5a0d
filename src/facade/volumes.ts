// The volume lifecycle of the facade: recovery at open, creating and expanding volumes; deleting
// them (with the clones and copies that depend on a volume) is in volume-deletion.ts.

import { GalleonError, describe, quoted } from '../errors.js'
import type { VolumeBlocks } from '../engine/engine.js'
import { parseQoSPolicy } from '../qos/policy.js'
import { parseSize } from '../size.js'
import type { ReplicationManager } from '../replication/manager.js'
import { NEW_VOLUME_ID } from '../backup/types.js'
import { AccessMode, VolumeState, VolumeType, type CreateVolumeOptions, type Volume } from '../types.js'
import type { Catalog, VolumeRecord } from '../volumes/catalog.js'
import { DEFAULT_STORAGE_CLASS, assertClassSupported, classPlacement, classReplicas } from '../volumes/storage-classes.js'
import type { FacadeHost } from './host.js'
import { checkLabels, specOf } from './records.js'
import type { VolumeRef } from './refs.js'
import { hereOrNext, lostAnswer, newCall, primaryCall, withToken, type ForwardedCall } from './forwarded-calls.js'
import { VolumeDeletion } from './volume-deletion.js'

const VOLUME_TYPES = new Set<string>(Object.values(VolumeType))
const ACCESS_MODES = new Set<string>(Object.values(AccessMode))
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/** Creates, deletes and expands the instance's volumes (GalleonFS checks the caller first). */
export class VolumeLifecycle {
  readonly #host: FacadeHost
  readonly #deletion: VolumeDeletion

  constructor (host: FacadeHost) {
    this.#host = host
    this.#deletion = new VolumeDeletion(host)
  }

  /** Recovery after open: rebuild block maps, finish interrupted deletes, drop ephemeral volumes. */
  async recover (): Promise<void> {
    const records = this.#host.catalog.volumes()
    await this.#host.engine.recover(records.map((record) => {
      const source = record.source === undefined ? undefined : this.#host.catalog.snapshotById(record.source.snapshotId)
      const parent = source === undefined ? undefined : this.#host.catalog.resolve(source.volumeId)
      if (record.source !== undefined && (source === undefined || parent === undefined)) {
        throw new GalleonError('CORRUPTION', `clone ${record.name} reads from snapshot ${record.source.snapshotId}, which is missing from the metadata`)
      }
      return {
        storageId: record.storageId,
        sizeBytes: record.sizeBytes,
        snapshotGens: this.#host.catalog.snapshots(record.id).map((snapshot) => snapshot.gen),
        parent: source === undefined || parent === undefined ? undefined : { storageId: parent.storageId, gen: source.gen, sizeBytes: source.sizeBytes }
      }
    }))
    await this.#attachKeys(records)
    // Migrations a crash cut short before their switch-over: the destination storage (named by no
    // volume record) was removed above as an orphan, its staged keys by attachKeys. The volume is
    // on its source, untouched.
    for (const migration of this.#host.catalog.migrations()) await this.#host.catalog.abandonMigration(migration.volumeId)
    for (const record of records) {
      // A revert cut short by a crash: finish it, so the volume reads as the snapshot, not as a mix.
      if (record.revertTo === undefined || record.state === VolumeState.Deleting) continue
      const snapshot = this.#host.catalog.snapshotById(record.revertTo)
      try {
        if (snapshot !== undefined) await this.#host.engine.revert(this.#host.volumeBlocks(record), { gen: snapshot.gen, sizeBytes: snapshot.sizeBytes })
        // A forwarded call's revert counts as done (see VolumeRecord.revertTokens): its repeat, to this
        // node as the volume's primary again, must not revert over writes made since.
        const counted = snapshot === undefined || record.revertToken === undefined ? {} : { revertTokens: withToken(record.revertTokens, record.revertToken) }
        await this.#host.catalog.updateVolume(record.id, { revertTo: undefined, revertToken: undefined, ...counted })
      } catch (err) {
        // Leave the intent: the volume refuses I/O (see GalleonFS #ioVolume) until a revert succeeds, and the
        // rest of the instance opens.
        this.#host.revertFailures.set(record.id, err instanceof Error ? err.message : String(err))
      }
    }
    // Implicit snapshots whose clone was never recorded (a crash in cloneVolume) hold space for nobody
    // (unless an unfinished revert of their volume still needs them).
    for (const record of this.#host.catalog.volumes()) {
      for (const snapshot of this.#host.catalog.snapshots(record.id)) {
        if (snapshot.implicit && record.revertTo !== snapshot.id && this.#host.catalog.clonesOf(record.id, snapshot.id).length === 0) await this.#host.dropSnapshot(record, snapshot)
      }
    }
    for (const record of this.#deletion.destroyOrder(records.filter((record) => record.state === VolumeState.Deleting || record.type === VolumeType.Ephemeral))) {
      await this.#deletion.destroy(this.#host.catalog.resolve(record.id), true)
    }
    for (const record of this.#host.catalog.volumes()) {
      if (record.state !== VolumeState.Available) await this.#host.catalog.updateVolume(record.id, { state: VolumeState.Available })
    }
  }

  /**
   * Gives every encrypted volume its cipher (DEKs unwrapped; a volume whose keys cannot be loaded
   * refuses I/O saying why), forgets keys of volumes that are gone (a crash during a create or a
   * delete), and finishes a key-encryption-key rotation a crash interrupted.
   */
  async #attachKeys (records: readonly VolumeRecord[]): Promise<void> {
    const ids = new Set(records.map((record) => record.id))
    for (const volumeId of this.#host.keys.volumeIds()) if (!ids.has(volumeId)) await this.#host.keys.delete(volumeId)
    for (const record of records) {
      if (record.encrypted !== true) continue
      const volume = this.#host.volumeBlocks(record)
      volume.cipher = await this.#host.keys.attach(record.id, record.storageId)
      // Past every generation sealed before, also those whose versions are gone (see volume-cipher.ts).
      volume.nextGen = volume.cipher.resumeGenerations(volume.nextGen)
      // A volume an earlier release wrote: where its generations resume now is all there is to go on; kept from here on.
      await this.#host.keys.reserveOpeningGenerations(record.id, volume.nextGen)
    }
    // Keys still wrapped by a retired KEK (a KEK rotation cut short): re-wrap them now. Best effort:
    // when some key cannot be unwrapped at all, its volume reports why and nothing is re-wrapped.
    const unavailable = records.some((record) => this.#host.engine.volume(record.storageId)?.cipher?.unavailable !== undefined)
    // The provider's check (see KeyManager.provider) is part of that effort: a KMS that stops
    // answering now leaves the re-wrap to a later open, not the open failed.
    if (!unavailable && await this.#host.keys.staleWraps().catch(() => false)) await this.#host.keys.provider().then(async (provider) => await this.#host.keys.rewrapAll(provider)).catch(() => {})
  }


  /** The work of GalleonFS.createVolume, once the caller is checked and the name is valid. */
  async createVolume (options: CreateVolumeOptions, name: string, namespace: string): Promise<Volume> {
    const type = options.type ?? VolumeType.Persistent
    if (!VOLUME_TYPES.has(type)) throw new GalleonError('INVALID_ARGUMENT', `volume type must be one of ${[...VOLUME_TYPES].join(', ')}, got ${describe(type)}`)
    if (options.sizeBytes === undefined) throw new GalleonError('INVALID_ARGUMENT', 'createVolume() needs sizeBytes (bytes, or a string like "100M" or "1G")')
    const sizeBytes = parseSize(options.sizeBytes)
    this.#host.checkVolumeSize(sizeBytes, options.sizeBytes)
    const className = options.storageClass ?? DEFAULT_STORAGE_CLASS
    if (typeof className !== 'string') throw new GalleonError('INVALID_ARGUMENT', `storageClass must be a class name, got ${describe(className)}`)
    const storageClass = this.#host.catalog.storageClass(className)
    if (storageClass === undefined) {
      throw new GalleonError('STORAGE_CLASS_NOT_FOUND', `no storage class ${quoted(className)}; listStorageClasses() shows the available ones`)
    }
    const replicas = options.replicas ?? classReplicas(storageClass)
    if (!Number.isSafeInteger(replicas) || replicas < 1 || replicas > 999) {
      throw new GalleonError('INVALID_ARGUMENT', `replicas must be a whole number from 1 to 999, got ${describe(replicas)}`)
    }
    const accessModes = options.accessModes ?? [AccessMode.ReadWriteOnce]
    if (!Array.isArray(accessModes) || accessModes.length === 0 || !accessModes.every((mode) => ACCESS_MODES.has(mode))) {
      throw new GalleonError('INVALID_ARGUMENT', `accessModes must be a non-empty list of ${[...ACCESS_MODES].join(', ')}, got ${describe(accessModes)}`)
    }
    const labels = checkLabels(options.labels ?? {})
    // Chosen by a restore, which records it first (see NEW_VOLUME_ID).
    const id: unknown = (options as { [NEW_VOLUME_ID]?: unknown })[NEW_VOLUME_ID]
    if (id !== undefined && (typeof id !== 'string' || !UUID.test(id))) throw new GalleonError('INVALID_ARGUMENT', `a new volume's id must be a UUID, got ${describe(id)}`)
    const qos = options.qos === undefined ? undefined : parseQoSPolicy(options.qos)
    assertClassSupported(storageClass, replicas, this.#host.replication !== undefined)
    const pool = this.#host.pools.choose(options.pool, storageClass)
    const placement = pool === undefined ? classPlacement(storageClass) : this.#host.poolPlacement(pool, classPlacement(storageClass))
    const encrypted = storageClass.parameters.encryption === 'true'
    // Open the key provider first: a missing master key or a failing KMS stops the create here.
    if (encrypted) await this.#host.keys.provider()

    // The class cannot be deleted from under the create (nor may it have been meanwhile).
    const releaseClass = this.#host.catalog.useStorageClass(storageClass)
    let unreserve: (() => void) | undefined
    let record: VolumeRecord
    // The pool's bytes are taken before anything is recorded, and held until the record counts.
    let release: (() => void) | undefined
    try {
      unreserve = this.#host.catalog.reserveName(name, namespace)
      if (pool !== undefined) release = this.#host.pools.reserve(pool.name, sizeBytes, `volume ${name}`)
      record = await this.newVolume({
        ...(id === undefined ? {} : { id }),
        name,
        namespace,
        type: type as VolumeType,
        state: VolumeState.Available,
        sizeBytes,
        blockSize: this.#host.engine.blockSize,
        storageClass: storageClass.name,
        replicas,
        accessModes: [...new Set(accessModes)] as AccessMode[],
        labels,
        encrypted,
        ...(qos === undefined ? {} : { qos }),
        ...(pool === undefined ? {} : { pool: pool.name }),
        // Marked until its cluster record is written: a crash in between deletes it (see creating).
        ...(replicas > 1 ? { replication: { epoch: 0, seq: 0 }, creating: true as const } : {})
      })
    } finally {
      release?.()
      unreserve?.()
      releaseClass()
    }
    if (replicas > 1) {
      // Its copies on other nodes: placed, recorded in the coordinator, created and brought in sync.
      try {
        await (this.#host.replication as ReplicationManager).register(specOf(record), placement)
      } catch (err) {
        ;(this.#host.replication as ReplicationManager).forget(record.id)
        await this.#deletion.destroy(record, false).catch(() => {})
        throw err
      }
      // Recorded in the cluster. The call resolves only once the marker is gone: one left would
      // have the next join take the volume for a create that never answered, and delete it.
      try {
        record = await this.#host.catalog.updateVolume(record.id, { creating: undefined })
      } catch (err) {
        const replication = this.#host.replication as ReplicationManager
        await replication.unregister(record.id).catch(() => {})
        replication.forget(record.id)
        await this.#deletion.destroy(record, false).catch(() => {})
        throw err
      }
    }
    const volume = this.#host.volumeView(record)
    this.#host.emit('volume:created', volume)
    return volume
  }

  /**
   * Records a new volume. Before the record is stored or visible, the volume is attached to the
   * engine with its keys (when encrypted) and, for a clone, its link to the source: no I/O can
   * reach it half set up. On failure nothing of it remains.
   */
  async newVolume (fields: Parameters<Catalog['createVolume']>[0], link?: { source: VolumeBlocks, gen: number, sizeBytes: number }): Promise<VolumeRecord> {
    let prepared: { id: string, storageId: number } | undefined
    try {
      return await this.#host.catalog.createVolume(fields, async (record) => {
        const cipher = fields.encrypted === true ? await this.#host.keys.create(record.id, record.storageId) : undefined
        prepared = { id: record.id, storageId: record.storageId }
        this.#host.applyQoS(record)
        const blocks = this.#host.engine.attach(record.storageId, record.sizeBytes)
        blocks.cipher = cipher
        if (link !== undefined) this.#host.engine.linkClone(blocks, link.source, link.gen, link.sizeBytes)
      })
    } catch (err) {
      if (prepared !== undefined) {
        this.#host.engine.forget(prepared.storageId)
        this.#host.qos.forget(prepared.id)
        if (this.#host.keys.has(prepared.id)) await this.#host.keys.delete(prepared.id).catch(() => {})
      }
      throw err
    }
  }


  /** The work of GalleonFS.deleteVolume, once the caller is checked (see volume-deletion.ts). */
  deleteVolume (vol: VolumeRef, options: { force?: boolean }): Promise<void> {
    return this.#deletion.deleteVolume(vol, options)
  }

  /**
   * Deletes a volume, its snapshots and its blocks. Clones that still read from it get their own
   * copies first (`flattenClones`); a clone's implicit source snapshot goes when its last clone does.
   */
  destroy (record: VolumeRecord, flattenClones: boolean): Promise<void> {
    return this.#deletion.destroy(record, flattenClones)
  }

  /** Orders volumes to delete so that clones go before their sources (fewer copies to make). */
  destroyOrder (records: VolumeRecord[]): VolumeRecord[] {
    return this.#deletion.destroyOrder(records)
  }

  /** Drops a clone's source snapshot if it was implicit and no other clone reads from it. */
  releaseSource (source: { volumeId: string, snapshotId: string }): Promise<void> {
    return this.#deletion.releaseSource(source)
  }

  /** `beforeUpdate`: runs once the pool has room, before the record changes (a replicated volume's cluster record). */
  async expand (record: VolumeRecord, sizeBytes: number, beforeUpdate?: () => Promise<void>): Promise<Volume> {
    if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
    if (sizeBytes < record.sizeBytes) {
      throw new GalleonError('INVALID_ARGUMENT', `volume ${record.name} is ${record.sizeBytes} bytes; shrinking to ${sizeBytes} would destroy data and is not supported. Create a smaller volume and copy the data instead`)
    }
    if (sizeBytes === record.sizeBytes) return this.#host.volumeView(record)
    const release = record.pool === undefined ? undefined : this.#host.pools.reserve(record.pool, sizeBytes - record.sizeBytes, `expanding volume ${record.name} from ${record.sizeBytes} to ${sizeBytes} bytes`)
    let updated: VolumeRecord
    try {
      await beforeUpdate?.()
      updated = await this.#host.catalog.updateVolume(record.id, { sizeBytes })
    } finally {
      release?.()
    }
    const volume = this.#host.volumeBlocks(updated)
    volume.sizeBytes = sizeBytes
    // On a replicated volume's primary the expansion takes its place in the change stream here,
    // before any write that reaches past the old end can be recorded.
    volume.replicator?.record({ type: 'expand', sizeBytes })
    const result = this.#host.volumeView(updated)
    this.#host.emit('volume:expanded', result, record.sizeBytes)
    return result
  }

  /**
   * Expands a replicated volume: on its primary (other nodes forward the call), the cluster's
   * record first, so that copies created or resynced from then on get the new size, then the
   * primary's copy; the other copies grow when the change reaches them in the stream. `call`: the
   * forwarded call this node serves, if it is one (see callIn).
   */
  async expandReplicated (record: VolumeRecord, sizeBytes: number, call?: ForwardedCall): Promise<Volume> {
    const replication = this.#host.replication
    if (replication === undefined) throw new GalleonError('BACKEND_UNAVAILABLE', `volume ${record.name} is replicated, but this instance is not in a cluster now; join it to expand the volume`)
    if (replication.forwards(record.id)) return await this.#forwardExpand(record, sizeBytes, call ?? newCall())
    // Not while this copy converts (see ClusterMigrations.convergeCopy: it copies a fixed size): refused at once
    // rather than waiting, which a call forwarded here could not do for long.
    if (this.#host.migrations.has(record.id)) throw new GalleonError('BUSY', `the copy of volume ${record.name} on its primary (${this.#host.cluster?.nodeId ?? ''}) is converting to another storage class; expand it once that is done`)
    // A call made here goes on at the next primary when this node loses the role under it (see
    // hereOrNext), whose answer to the repeat is the volume at least that large; a call served for
    // another node (`call`) answers NOT_LEADER then, and that node sends it again.
    return await hereOrNext(this.#host, record.id, call === undefined ? primaryCall() : undefined, async () => await this.#expandHere(record, sizeBytes), async (repeat) => await this.#forwardExpand(record, sizeBytes, repeat))
  }

  /** expandVolume on the replicated volume's primary, as one call (see forwarded-calls.ts). */
  async #forwardExpand (record: VolumeRecord, sizeBytes: number, call: ForwardedCall): Promise<Volume> {
    try {
      return (await this.#host.forward(record, { op: 'expandVolume', sizeBytes, token: call.token, ...(call.repeat ? { repeat: true } : {}) })).header.volume as Volume
    } catch (err) {
      throw lostAnswer(err, `volume ${record.name} may or may not have been expanded to ${sizeBytes} bytes: getVolume(${JSON.stringify(record.name)}) shows its size once the volume has a primary again (expanding to the same size again is harmless)`, call)
    }
  }

  /** A replicated volume's expansion on this node, its primary (see expandReplicated). */
  async #expandHere (record: VolumeRecord, sizeBytes: number): Promise<Volume> {
    const replication = this.#host.replication as ReplicationManager
    return await this.#host.admin(async () => {
      if (this.#host.migrations.has(record.id)) throw new GalleonError('BUSY', `the copy of volume ${record.name} on its primary (${this.#host.cluster?.nodeId ?? ''}) is converting to another storage class; expand it once that is done`)
      const current = this.#host.catalog.resolve(record.id)
      if (current.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${current.name} is being deleted`)
      // The primary role may have moved while the call waited for its turn.
      if (this.#host.volumeBlocks(current).replicator === undefined) throw new GalleonError('NOT_LEADER', `node ${this.#host.cluster?.nodeId ?? ''} stopped being the primary of volume ${current.name} while the expansion waited; retry it`)
      return await this.expand(current, sizeBytes, async () => {
        await replication.update(current.id, (r) => r.spec.sizeBytes >= sizeBytes ? undefined : { ...r, spec: { ...r.spec, sizeBytes } })
      })
    })
  }

  /** Grows this node's copy of a replicated volume to the size its primary expanded it to. */
  async applyExpand (volumeId: string, sizeBytes: number): Promise<void> {
    // Grown already, in the catalog and in the engine (the catalog changes first: a call that saw
    // only that would let the stream's next write past the old end reach an engine not grown yet).
    const known = this.#host.recordById(volumeId)
    if (known === undefined || Math.min(known.sizeBytes, this.#host.engine.volume(known.storageId)?.sizeBytes ?? known.sizeBytes) >= sizeBytes) return
    await this.#host.adminAfterMigration(volumeId, async () => {
      const record = this.#host.recordById(volumeId)
      if (record === undefined || record.state === VolumeState.Deleting || sizeBytes <= record.sizeBytes) return
      const updated = await this.#host.catalog.updateVolume(record.id, { sizeBytes })
      this.#host.volumeBlocks(updated).sizeBytes = sizeBytes
      this.#host.emit('volume:expanded', this.#host.volumeView(updated), record.sizeBytes)
    }, 'the primary expanded the volume; the conversion of this copy starts again after it')
  }
}
