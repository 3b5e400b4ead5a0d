// The public calls on snapshots and clones, and the allocation and changed-block views: their
// arguments and the caller's rights checked and audited, then Snapshots or VolumeIO does the work.

import type { Snapshot, Volume } from '../types.js'
import { checkNamespace, checkVolumeName } from '../volumes/catalog.js'
import type { Facade } from './assembly.js'
import { entryText, namedArgument } from './access-guard.js'
import { checkCallOptions, checkSnapshotName } from './records.js'
import { isSnapshotObject, isSnapshotRef, readSource, type CloneSource, type ReadSource, type VolumeRef } from './refs.js'

/** GalleonFS's calls on snapshots and clones (see their documentation there). */
export class SnapshotApi {
  readonly #f: Facade

  constructor (f: Facade) {
    this.#f = f
  }

  async createSnapshot (vol: VolumeRef, name: string): Promise<Snapshot> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    try {
      checkSnapshotName(name)
    } catch (err) {
      throw await this.#f.gate.refusedArguments('createSnapshot', 'snapshot:create', object, `snapshot:${label.slice(7)}@${namedArgument(() => name).label}`, err)
    }
    return await this.#f.gate.guard('createSnapshot', 'snapshot:create', object, `snapshot:${label.slice(7)}@${name}`, async () => await this.#f.snapshots.createSnapshot(vol, name))
  }

  async listSnapshots (vol: VolumeRef): Promise<Snapshot[]> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    await this.#f.gate.check('listSnapshots', 'snapshot:read', object, label)
    const record = this.#f.catalog.resolve(vol)
    return this.#f.catalog.snapshots(record.id).map((snapshot) => this.#f.snapshots.toSnapshot(snapshot))
  }

  async getSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>): Promise<Snapshot> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    await this.#f.gate.check('getSnapshot', 'snapshot:read', object, label)
    const record = this.#f.catalog.resolve(vol)
    return this.#f.snapshots.toSnapshot(this.#f.catalog.resolveSnapshot(record, snapshot))
  }

  async deleteSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>, options: { force?: boolean } = {}): Promise<void> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    const snapshotName = entryText(typeof snapshot === 'string' ? snapshot : String((snapshot as { id?: unknown })?.id))
    try {
      checkCallOptions('deleteSnapshot', options, ['force'], ['force'])
    } catch (err) {
      throw await this.#f.gate.refusedArguments('deleteSnapshot', 'snapshot:delete', object, `snapshot:${label.slice(7)}@${snapshotName}`, err)
    }
    await this.#f.gate.guard('deleteSnapshot', 'snapshot:delete', object, `snapshot:${label.slice(7)}@${snapshotName}`, async () => { await this.#f.snapshots.deleteSnapshot(vol, snapshot, options) }, options?.force === true ? { force: true } : undefined)
  }

  async restoreSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>): Promise<Volume> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    const snapshotName = entryText(typeof snapshot === 'string' ? snapshot : String((snapshot as { id?: unknown })?.id))
    return await this.#f.gate.guard('restoreSnapshot', 'snapshot:restore', object, `snapshot:${label.slice(7)}@${snapshotName}`, async () => await this.#f.snapshots.restoreSnapshot(vol, snapshot))
  }

  async cloneVolume (source: CloneSource, newName: string, options: { labels?: Record<string, string>, namespace?: string } = {}): Promise<Volume> {
    this.#f.state.assertOpen()
    const from = this.#f.gate.refObject(source)
    const fromSnapshot = isSnapshotObject(source) || (typeof source === 'object' && source !== null && 'snapshot' in source)
    const readVerb = fromSnapshot ? 'snapshot:read' : 'volume:read'
    let namespace: string
    try {
      checkVolumeName(newName)
      checkCallOptions('cloneVolume', options, ['labels', 'namespace'])
      namespace = options?.namespace ?? from.object.namespace
      checkNamespace(namespace)
    } catch (err) {
      // Checked as a valid call is: reading the source, then creating the clone.
      const ns = namedArgument(() => options?.namespace, { check: from.object.namespace, label: from.object.namespace })
      const named = namedArgument(() => newName)
      throw await this.#f.gate.refusedArguments('cloneVolume', 'volume:create', { namespace: ns.check, volume: named.check }, `volume:${ns.label}/${named.label}`, err, { before: [{ verb: readVerb, object: from.object, label: from.label }] })
    }
    const denied = this.#f.gate.check('cloneVolume', readVerb, from.object, from.label)
    if (denied !== undefined) await denied
    return await this.#f.gate.guard('cloneVolume', 'volume:create', { namespace, volume: newName }, `volume:${namespace}/${newName}`, async () => await this.#f.snapshots.cloneVolume(source, newName, namespace, options), { source: from.label })
  }

  async getAllocation (source: ReadSource, offset: number, length: number): Promise<Array<{ offset: number, length: number, allocated: boolean }>> {
    this.#f.state.assertOpen()
    const denied = this.#f.gate.refCheck('getAllocation', isSnapshotRef(source) ? 'snapshot:read' : 'volume:read', source)
    if (denied !== undefined) await denied
    const { record, snapshot } = readSource(this.#f.catalog, source)
    return this.#f.io.allocation(record, snapshot, offset, length)
  }

  async listChangedBlocks (vol: VolumeRef, options: { from?: string | Pick<Snapshot, 'id'>, to?: string | Pick<Snapshot, 'id'> } = {}): Promise<number[]> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    // Checked first: a caller who may not read the volume is told so, whatever its options.
    await this.#f.gate.check('listChangedBlocks', 'snapshot:read', object, label)
    checkCallOptions('listChangedBlocks', options, ['from', 'to'])
    return this.#f.io.changedBlocks(vol, options)
  }
}
