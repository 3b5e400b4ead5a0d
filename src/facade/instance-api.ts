// The public calls on the instance as a whole: its cluster, metrics, encryption keys and the
// replication status of volumes, with the caller's rights checked and audited.

import { GalleonError, describe } from '../errors.js'
import type { BlockStoreStats, KeyProvider } from '../drivers.js'
import type { VolumeEncryption } from '../crypto/key-manager.js'
import type { ReplicationHook } from '../engine/journal.js'
import type { ClusterOptions, ClusterStatus } from '../cluster/manager.js'
import type { ReplicationStatus } from '../replication/manager.js'
import type { VolumeMetrics } from '../metrics/recorder.js'
import type { Facade } from './assembly.js'
import type { ForgottenNode } from './cluster.js'
import { metricsText, volumeMetrics } from './metrics.js'
import type { VolumeRef } from './refs.js'

/** GalleonFS's calls on its cluster, metrics, keys and replication (see their documentation there). */
export class InstanceApi {
  readonly #f: Facade

  constructor (f: Facade) {
    this.#f = f
  }

  async clusterStatus (): Promise<ClusterStatus> {
    this.#f.state.assertOpen()
    const cluster = this.#f.membership.cluster
    if (cluster !== undefined) return await cluster.status()
    return this.#f.membership.localStatus()
  }

  async joinCluster (options: ClusterOptions): Promise<ClusterStatus> {
    this.#f.state.assertOpen()
    const nodeId = (options as { nodeId?: unknown } | null | undefined)?.nodeId
    // Audited like every admin call. The cluster's background work (leases, replication) begun
    // here acts for the node, not for the caller: it runs outside the caller's context.
    return await this.#f.gate.guard('joinCluster', 'admin', undefined, 'cluster', async () => await this.#f.context.exit(async () => await this.#f.membership.join(options)),
      typeof nodeId === 'string' ? { node: nodeId } : undefined)
  }

  async leaveCluster (options: { force?: boolean } = {}): Promise<void> {
    this.#f.state.assertOpen()
    const node = this.#f.membership.cluster?.nodeId
    const details = { ...(node === undefined ? {} : { node }), ...(options?.force === true ? { force: true } : {}) }
    await this.#f.gate.guard('leaveCluster', 'admin', undefined, 'cluster', async () => { await this.#f.membership.leave(options) }, Object.keys(details).length === 0 ? undefined : details)
  }

  async forgetClusterNode (nodeId: string): Promise<ForgottenNode> {
    this.#f.state.assertOpen()
    return await this.#f.gate.guard('forgetClusterNode', 'admin', undefined, 'cluster', async () => await this.#f.membership.forget(nodeId), typeof nodeId === 'string' ? { node: nodeId } : undefined)
  }

  setReplicationHook (hook: ReplicationHook | undefined): void {
    this.#f.gate.assertApplication('setReplicationHook')
    this.#f.engine.replication = hook
  }

  async getVolumeMetrics (vol: VolumeRef): Promise<VolumeMetrics> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    await this.#f.gate.check('getVolumeMetrics', 'volume:read', object, label)
    return volumeMetrics(this.#f.host, this.#f.catalog.resolve(vol))
  }

  async metricsText (storageStats: () => Promise<BlockStoreStats & { backend: string }>): Promise<string> {
    this.#f.state.assertOpen()
    await this.#f.gate.check('metricsText', 'admin', undefined, 'metrics')
    const store = await storageStats()
    return metricsText(this.#f.host, store, () => this.#f.bridge.replicationMetrics())
  }

  async getStorageStats (): Promise<BlockStoreStats & { backend: string }> {
    this.#f.state.assertOpen()
    await this.#f.gate.check('getStorageStats', 'admin', undefined, 'metrics')
    return { backend: this.#f.store.name, ...await this.#f.store.stats() }
  }

  journalStats (): { lastLsn: number, committedLsn: number, groups: number, syncs: number } {
    this.#f.state.assertOpen()
    this.#f.gate.checkSync('journalStats', 'admin', undefined, 'metrics')
    const journal = this.#f.engine.journal
    return { lastLsn: journal.lastLsn, committedLsn: journal.committedLsn, ...journal.stats }
  }

  async getVolumeEncryption (vol: VolumeRef): Promise<VolumeEncryption> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    await this.#f.gate.check('getVolumeEncryption', 'volume:read', object, label)
    const record = this.#f.catalog.resolve(vol)
    return this.#f.keys.describe(record.id, this.#f.engine.volume(record.storageId)?.cipher)
  }

  async rotateVolumeKey (vol: VolumeRef, options: { wait?: boolean } = {}): Promise<VolumeEncryption> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    return await this.#f.gate.guard('rotateVolumeKey', 'volume:write', object, label, async () => await this.#f.keyRotations.rotateVolumeKey(vol, options))
  }

  async rotateKeyEncryptionKey (options: { keyProvider?: KeyProvider, passphrase?: string } = {}): Promise<{ keyId: string, provider: string, rewrapped: number }> {
    this.#f.state.assertOpen()
    try {
      if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `rotateKeyEncryptionKey() options must be an object, got ${describe(options)}`)
      if (options.keyProvider !== undefined && options.passphrase !== undefined) throw new GalleonError('INVALID_ARGUMENT', 'pass either keyProvider or passphrase, not both')
    } catch (err) {
      throw await this.#f.gate.refusedArguments('rotateKeyEncryptionKey', 'admin', undefined, 'instance', err)
    }
    return await this.#f.gate.guard('rotateKeyEncryptionKey', 'admin', undefined, 'instance', async () => await this.#f.state.admin(async () => await this.#f.keyRotations.rotateKeyEncryptionKey(options)))
  }

  async replicationStatus (vol: VolumeRef): Promise<ReplicationStatus> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    await this.#f.gate.check('replicationStatus', 'volume:read', object, label)
    return this.#f.bridge.replicationStatus(this.#f.catalog.resolve(vol))
  }
}
