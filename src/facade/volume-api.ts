// The public calls on volumes, storage classes, live migration, storage pools and QoS policies:
// their arguments and the caller's rights checked and audited, then the part of the facade that does the work.

import { randomBytes } from 'node:crypto'
import { GalleonError, describe, quoted } from '../errors.js'
import { parseSize } from '../size.js'
import { parseQoSPolicy, type QoSPolicy, type QoSPolicyInput, type QoSPolicySource } from '../qos/policy.js'
import type { CreateVolumeOptions, StorageClass, Volume, VolumeUsage } from '../types.js'
import { checkNamespace, checkVolumeName, namespaceOf } from '../volumes/catalog.js'
import type { MigrateControl, MigrateVolumeOptions } from '../volumes/migration.js'
import { parseStorageClass } from '../volumes/storage-classes.js'
import { checkPoolName, type CreatePoolOptions, type StoragePoolStatus, type UpdatePoolOptions } from '../volumes/pools.js'
import type { Facade } from './assembly.js'
import { volumeUsage } from './metrics.js'
import { createPool, deletePool, poolStatus, updatePool } from './pools.js'
import { effectiveQoS, setVolumeQoS } from './qos.js'
import { namedArgument } from './access-guard.js'
import { checkCallOptions, checkVolumeSize, volumeView } from './records.js'
import type { VolumeRef } from './refs.js'
import { callIn } from './forwarded-calls.js'
import { createStorageClass, deleteStorageClass } from './storage-classes.js'

/** GalleonFS's calls on volumes, storage classes, pools and QoS (see their documentation there). */
export class VolumeApi {
  readonly #f: Facade

  constructor (f: Facade) {
    this.#f = f
  }

  async createVolume (options: CreateVolumeOptions): Promise<Volume> {
    this.#f.state.assertOpen()
    let namespace: string
    let name: string
    try {
      if (options === null || typeof options !== 'object') {
        throw new GalleonError('INVALID_ARGUMENT', `createVolume() needs an options object such as { name: 'data', sizeBytes: '1G' }, got ${describe(options)}`)
      }
      const known = new Set(['name', 'namespace', 'type', 'sizeBytes', 'storageClass', 'replicas', 'pool', 'accessModes', 'labels', 'qos'])
      for (const key of Object.keys(options)) {
        if (!known.has(key)) throw new GalleonError('INVALID_ARGUMENT', `unknown createVolume option ${quoted(key)}; allowed: ${[...known].join(', ')}`)
      }
      namespace = options.namespace ?? this.#f.catalog.currentNamespace()
      checkNamespace(namespace)
      name = options.name ?? this.#unusedVolumeName(namespace)
      checkVolumeName(name)
    } catch (err) {
      const current = this.#f.catalog.currentNamespace()
      const ns = namedArgument(() => options?.namespace, { check: current, label: current })
      const named = namedArgument(() => options?.name, { check: '*', label: '(generated)' })
      throw await this.#f.gate.refusedArguments('createVolume', 'volume:create', { namespace: ns.check, volume: named.check }, `volume:${ns.label}/${named.label}`, err)
    }
    // A QoS policy of its own is set as setQoSPolicy sets one: that takes "admin" too.
    if (options.qos !== undefined) await this.#f.gate.check('createVolume', 'admin', { namespace, volume: name }, `volume:${namespace}/${name}`)
    return await this.#f.gate.guard('createVolume', 'volume:create', { namespace, volume: name }, `volume:${namespace}/${name}`, async () => await this.#f.volumes.createVolume(options, name, namespace))
  }

  /**
   * A generated name for a volume created without one: 64 random bits, so that names stay unique
   * across the instances of a cluster too, and one not in use in the namespace here.
   */
  #unusedVolumeName (namespace: string): string {
    for (;;) {
      const name = `vol-${randomBytes(8).toString('hex')}`
      if (!this.#f.catalog.nameTaken(name, namespace)) return name
    }
  }

  async getVolume (vol: VolumeRef): Promise<Volume> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    await this.#f.gate.check('getVolume', 'volume:read', object, label)
    return volumeView(this.#f.host, this.#f.catalog.resolve(vol))
  }

  async listVolumes (options: { namespace?: string } = {}): Promise<Volume[]> {
    this.#f.state.assertOpen()
    const namespace = options?.namespace
    if (namespace !== undefined) checkNamespace(namespace)
    // createdAt has milliseconds only: volumes created within one are in their order of creation.
    return this.#f.catalog.volumes()
      .filter((record) => (namespace === undefined || namespaceOf(record) === namespace) && this.#f.gate.allowed('volume:read', this.#f.gate.volumeObject(record).object))
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt) || (a.createdSeq ?? 0) - (b.createdSeq ?? 0) || a.name.localeCompare(b.name))
      .map((record) => volumeView(this.#f.host, record))
  }

  async deleteVolume (vol: VolumeRef, options: { force?: boolean } = {}): Promise<void> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    try {
      checkCallOptions('deleteVolume', options, ['force'], ['force'])
    } catch (err) {
      throw await this.#f.gate.refusedArguments('deleteVolume', 'volume:delete', object, label, err)
    }
    let source: string | undefined
    try { source = this.#f.catalog.resolve(vol).source?.volumeId } catch {}
    await this.#f.gate.guard('deleteVolume', 'volume:delete', object, label, async () => { await this.#f.volumes.deleteVolume(vol, options) }, options?.force === true ? { force: true } : undefined)
    // A clone is gone: snapshots of its source that backups left to delete while it read from them
    // go now. As this node: the caller may have no right to the source's snapshots, which the
    // backup that left them meant to delete.
    if (source !== undefined) await this.#f.context.exit(async () => { await this.#f.backups.retryLeftSnapshots(source) })
  }

  async expandVolume (vol: VolumeRef, newSizeBytes: number | string): Promise<Volume> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    let sizeBytes: number
    try {
      sizeBytes = parseSize(newSizeBytes)
      checkVolumeSize(this.#f.engine.blockSize, sizeBytes, newSizeBytes)
    } catch (err) {
      throw await this.#f.gate.refusedArguments('expandVolume', 'volume:write', object, label, err)
    }
    return await this.#f.gate.guard('expandVolume', 'volume:write', object, label, async () => {
      const record = this.#f.catalog.resolve(vol)
      // (A call forwarded by another node carries that call: see ReplicationBridge.serveForwarded.)
      if (record.replication !== undefined) return await this.#f.volumes.expandReplicated(record, sizeBytes, callIn(vol))
      return await this.#f.liveMigrations.adminAfterMigration(record.id, async () => await this.#f.volumes.expand(this.#f.catalog.resolve(vol), sizeBytes))
    }, { sizeBytes })
  }

  async getVolumeUsageDetails (vol: VolumeRef): Promise<VolumeUsage> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    await this.#f.gate.check('getVolumeUsage', 'volume:read', object, label)
    return volumeUsage(this.#f.host, this.#f.catalog.resolve(vol))
  }

  async listStorageClasses (): Promise<StorageClass[]> {
    this.#f.state.assertOpen()
    return this.#f.catalog.storageClasses().map((storageClass) => structuredClone(storageClass))
  }

  async getStorageClass (name: string): Promise<StorageClass> {
    this.#f.state.assertOpen()
    const storageClass = typeof name === 'string' ? this.#f.catalog.storageClass(name) : undefined
    if (storageClass === undefined) throw new GalleonError('STORAGE_CLASS_NOT_FOUND', `no storage class ${describe(name)}; listStorageClasses() shows the available ones`)
    return structuredClone(storageClass)
  }

  async createStorageClass (definition: unknown): Promise<StorageClass> {
    this.#f.state.assertOpen()
    let storageClass: StorageClass
    try {
      storageClass = parseStorageClass(definition)
    } catch (err) {
      throw await this.#f.gate.refusedArguments('createStorageClass', 'admin', undefined, `storage-class:${namedArgument(() => (definition as { name?: unknown } | null)?.name).label}`, err)
    }
    return await this.#f.gate.guard('createStorageClass', 'admin', undefined, `storage-class:${storageClass.name}`, async () => await createStorageClass(this.#f.host, storageClass))
  }

  async deleteStorageClass (name: string, getStorageClass: (name: string) => Promise<StorageClass>): Promise<void> {
    this.#f.state.assertOpen()
    await this.#f.gate.guard('deleteStorageClass', 'admin', undefined, `storage-class:${String(name)}`, async () => { await deleteStorageClass(this.#f.host, (className) => getStorageClass(className), name) })
  }

  async migrateVolume (vol: VolumeRef, target: MigrateVolumeOptions, control: MigrateControl = {}): Promise<Volume> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    try {
      if (target === null || typeof target !== 'object' || Array.isArray(target)) {
        throw new GalleonError('INVALID_ARGUMENT', `migrateVolume() needs a target such as { storageClass: 'encrypted-local' } or { pool: 'big' }, got ${describe(target)}`)
      }
      for (const key of Object.keys(target)) {
        if (!['storageClass', 'pool', 'node'].includes(key)) throw new GalleonError('INVALID_ARGUMENT', `unknown migrateVolume option ${quoted(key)}; allowed: storageClass, pool, node`)
      }
      if (control === null || typeof control !== 'object') throw new GalleonError('INVALID_ARGUMENT', `migrateVolume()'s third argument is { signal?, onProgress?, syncTimeoutMs? }, got ${describe(control)}`)
      if (control.signal !== undefined && !(control.signal instanceof AbortSignal)) throw new GalleonError('INVALID_ARGUMENT', `signal must be an AbortSignal, got ${describe(control.signal)}`)
      if (control.onProgress !== undefined && typeof control.onProgress !== 'function') throw new GalleonError('INVALID_ARGUMENT', `onProgress must be a function, got ${describe(control.onProgress)}`)
      if (control.syncTimeoutMs !== undefined && (typeof control.syncTimeoutMs !== 'number' || !Number.isFinite(control.syncTimeoutMs) || control.syncTimeoutMs <= 0)) throw new GalleonError('INVALID_ARGUMENT', `syncTimeoutMs must be a positive number of milliseconds, got ${describe(control.syncTimeoutMs)}`)
      if (target.storageClass !== undefined && typeof target.storageClass !== 'string') throw new GalleonError('INVALID_ARGUMENT', `storageClass must be a class name, got ${describe(target.storageClass)}`)
      if (target.pool !== undefined) checkPoolName(target.pool, 'migrateVolume() option "pool"')
      if (target.node !== undefined && (typeof target.node !== 'string' || target.node.length === 0)) throw new GalleonError('INVALID_ARGUMENT', `node must be a cluster node id, got ${describe(target.node)}`)
    } catch (err) {
      throw await this.#f.gate.refusedArguments('migrateVolume', 'admin', object, label, err)
    }
    if (target.node !== undefined) {
      const node = target.node
      return await this.#f.gate.guard('migrateVolume', 'admin', object, label, async () => await this.#f.clusterMigrations.migrateWithNode(vol, target, node, control), { node, ...(target.storageClass === undefined ? {} : { storageClass: target.storageClass }), ...(target.pool === undefined ? {} : { pool: String(target.pool) }) })
    }
    return await this.#f.gate.guard('migrateVolume', 'admin', object, label, async () => await this.#f.liveMigrations.migrateVolume(vol, target, control), {
      ...(target.storageClass === undefined ? {} : { storageClass: target.storageClass }),
      ...(target.pool === undefined ? {} : { pool: String(target.pool) })
    })
  }

  async createPool (spec: CreatePoolOptions): Promise<StoragePoolStatus> {
    this.#f.state.assertOpen()
    const name = (spec as { name?: unknown } | null)?.name
    return await this.#f.gate.guard('createPool', 'admin', undefined, `pool:${String(name)}`, () => createPool(this.#f.host, spec))
  }

  async getPool (name: string): Promise<StoragePoolStatus> {
    this.#f.state.assertOpen()
    return poolStatus(this.#f.host, this.#f.pools.get(name))
  }

  async listPools (): Promise<StoragePoolStatus[]> {
    this.#f.state.assertOpen()
    return this.#f.pools.list().map((pool) => poolStatus(this.#f.host, pool))
  }

  async updatePool (name: string, changes: UpdatePoolOptions): Promise<StoragePoolStatus> {
    this.#f.state.assertOpen()
    return await this.#f.gate.guard('updatePool', 'admin', undefined, `pool:${String(name)}`, () => updatePool(this.#f.host, name, changes))
  }

  async deletePool (name: string): Promise<void> {
    this.#f.state.assertOpen()
    await this.#f.gate.guard('deletePool', 'admin', undefined, `pool:${String(name)}`, () => deletePool(this.#f.host, name))
  }

  async setQoSPolicy (vol: VolumeRef, policy: QoSPolicyInput | null): Promise<{ policy?: QoSPolicy, source: QoSPolicySource }> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    let parsed: QoSPolicy | undefined
    try {
      if (policy === undefined) throw new GalleonError('INVALID_ARGUMENT', 'setQoSPolicy() needs a policy object such as { limits: { iops: 1000 } }, or null to remove the volume\'s own policy')
      parsed = policy === null ? undefined : parseQoSPolicy(policy)
    } catch (err) {
      throw await this.#f.gate.refusedArguments('setQoSPolicy', 'admin', object, label, err)
    }
    // Limits bound what a tenant may take from the node: changing them is an admin's job.
    return await this.#f.gate.guard(policy === null ? 'clearQoSPolicy' : 'setQoSPolicy', 'admin', object, label, async () => await this.#f.state.admin(() => setVolumeQoS(this.#f.host, vol, parsed)))
  }

  async getQoSPolicy (vol: VolumeRef): Promise<{ policy?: QoSPolicy, source: QoSPolicySource }> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    await this.#f.gate.check('getQoSPolicy', 'volume:read', object, label)
    return effectiveQoS(this.#f.host, this.#f.catalog.resolve(vol))
  }
}
