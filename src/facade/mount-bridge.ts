// Between the facade and the mount manager: the host it works through (volumes and snapshots as
// mount targets, access checks as the caller) and the README.txt of a mount point.

import type { Verb } from '../access/access-control.js'
import type { VolumeEncryption } from '../crypto/key-manager.js'
import type { VolumeBlocks } from '../engine/engine.js'
import { GalleonError } from '../errors.js'
import type { MountManager, MountTarget } from '../mount/mount-manager.js'
import { VolumeState, type Snapshot, type Volume } from '../types.js'
import { namespaceOf } from '../volumes/catalog.js'
import type { AccessGuard } from './access-guard.js'
import type { FacadeCalls, FacadeHost } from './host.js'
import { toVolume } from './records.js'
import { isSnapshotRef, readSource, type ReadSource } from './refs.js'

/** Builds the mount manager's host for the instance. */
export class MountBridge {
  readonly #host: FacadeHost
  readonly #gate: AccessGuard
  readonly #calls: FacadeCalls

  constructor (host: FacadeHost, gate: AccessGuard, calls: FacadeCalls) {
    this.#host = host
    this.#gate = gate
    this.#calls = calls
  }

  /** What the mount manager needs from the instance. */
  mountHost (): ConstructorParameters<typeof MountManager>[1] {
    const verbOf = (ref: unknown, readOnly: boolean): Verb => isSnapshotRef(ref) ? 'snapshot:read' : readOnly ? 'volume:read' : 'volume:write'
    // As the caller, also inside its checked call (where nested calls are not checked again).
    const visible = (namespace: string, volume: string): boolean => {
      const principal = this.#host.context.getStore()?.principal
      return principal === undefined || this.#gate.access.allows(principal, 'volume:read', { namespace, volume })
    }
    return {
      target: (ref) => this.#mountTarget(ref),
      guard: async (action, ref, readOnly, task, mountedBy) => {
        this.#host.assertOpen()
        const { object, label } = this.#gate.refObject(ref)
        if (action === 'openVolumeFile') {
          const denied = this.#gate.check(action, verbOf(ref, readOnly), object, label)
          if (denied !== undefined) await denied
          return await this.#gate.nested(task)
        }
        if (mountedBy !== undefined) {
          // Another's mount: detaching it disrupts its user (its open files are closed when forced),
          // so it takes what administering the volume takes, not merely what mounting it took.
          const denied = this.#gate.check(action, 'admin', object, label, (who) => `${who} may not unmount a mount of ${label.slice(7)} that ${mountedBy} made: unmounting another's mount takes "admin" on the volume; ask ${mountedBy} or an administrator to unmount it`)
          if (denied !== undefined) await denied
          return await this.#gate.guard(action, 'admin', object, label, task, { ...(readOnly ? { readOnly: true } : {}), mountedBy })
        }
        return await this.#gate.guard(action, verbOf(ref, readOnly), object, label, task, readOnly ? { readOnly: true } : undefined)
      },
      refusedArguments: async (action, ref, readOnly, err) => {
        const { object, label } = this.#gate.refObject(ref)
        // Opening a file is a read or write of data: checked, but logged only when denied.
        return await this.#gate.refusedArguments(action, verbOf(ref, readOnly), object, label, err, { audited: action !== 'openVolumeFile' })
      },
      caller: () => this.#host.context.getStore()?.principal?.id,
      visible,
      namespaceInUse: (namespace) => this.#host.catalog.volumes().some((record) => namespaceOf(record) === namespace && visible(namespace, record.name)),
      requireAdmin: async (action, what) => {
        const denied = this.#gate.check(action, 'admin', undefined, what)
        if (denied !== undefined) await denied
      },
      requireWrite: async (action, ref) => {
        const context = this.#host.context.getStore()
        if (context?.principal === undefined) return
        const { object, label } = this.#gate.refObject(ref)
        // Inside the guarded mount call: check as the caller, not as the (trusted) nested call.
        if (this.#gate.access.allows(context.principal, 'volume:write', object)) return
        await this.#host.context.run({ principal: context.principal, nested: false }, async () => { await this.#gate.check(action, 'volume:write', object, label) })
      },
      isSnapshotRef
    }
  }

  /**
   * A volume or snapshot for the mount manager. Its I/O runs as the caller resolving it (who was
   * checked when mounting or opening, like a file descriptor), not as whoever calls later.
   */
  #mountTarget (ref: unknown): MountTarget {
    this.#host.assertOpen()
    const { record, snapshot } = readSource(this.#host.catalog, ref)
    if (record.state === VolumeState.Deleting || this.#host.goingAway.has(record.id)) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
    if (snapshot !== undefined && this.#host.goingAway.has(snapshot.id)) throw new GalleonError('SNAPSHOT_NOT_FOUND', `snapshot ${snapshot.name} is being deleted`)
    // A move of it to another node deletes this node's copy (see refuseMoveHere): nothing new holds it here meanwhile.
    const move = this.#host.nodeMoves.get(record.id)
    if (move !== undefined) throw new GalleonError('BUSY', `volume ${record.name} is moving to node ${move.to}; mount or open it there once the move has finished (or cancel the move)`)
    // A leave of the cluster hands this node's copies off and deletes them (see refuseLeaveHere).
    if (record.replication !== undefined && this.#host.replication?.leaving === true) throw new GalleonError('BUSY', `volume ${record.name} is replicated and this node is leaving the cluster (its copy here goes); mount or open it on another node of the cluster`)
    if (snapshot === undefined && this.#host.reverting.has(record.id)) throw new GalleonError('BUSY', `volume ${record.name} is being reverted to a snapshot; mount or open it when that has finished`)
    // As during a revert: nothing new mounts or opens the volume (nor connects to it over NBD, as
    // a session holds a file) while a restore writes into it, so nothing shows it half restored or
    // writes into it meanwhile; the restore, once it has claimed the volume, checks for those that came before.
    if (snapshot === undefined && this.#host.restoring.has(record.id)) throw new GalleonError('BUSY', `a backup is being restored into volume ${record.name}; mount or open it once the restore has finished`)
    // Deleted under the file or mount (forced): said by name, not as an unknown id it never used.
    const what = snapshot === undefined ? `volume ${namespaceOf(record)}/${record.name}` : `snapshot ${snapshot.name} of volume ${namespaceOf(record)}/${record.name}`
    const gone = (err: unknown): never => {
      const code = (err as { code?: unknown })?.code
      const current = this.#host.catalog.volumeById(record.id)
      const deleted = current === undefined || current.state === VolumeState.Deleting || (snapshot !== undefined && this.#host.catalog.snapshotById(snapshot.id) === undefined)
      if ((code === 'VOLUME_NOT_FOUND' || code === 'SNAPSHOT_NOT_FOUND') && deleted) {
        throw new GalleonError(code, `${what} was deleted while this file or mount was open on it (${snapshot === undefined ? 'deleteVolume' : 'deleteSnapshot'} with { force: true }); close the file, or unmount`, { cause: err })
      }
      throw err
    }
    const context = this.#host.context.getStore()
    const run = <T>(task: () => Promise<T>): Promise<T> => context === undefined ? task() : this.#host.context.run(context, task)
    const source: ReadSource = snapshot === undefined ? record.id : { volume: record.id, snapshot: snapshot.id }
    const initial = this.#host.volumeBlocks(record)
    // The volume's storage now: a migration moves it to new storage (which an expansion then grows).
    const blocks = (): VolumeBlocks => {
      let volume = initial
      while (volume.movedTo !== undefined) volume = volume.movedTo.volume
      return volume
    }
    const facts = (): Record<string, unknown> => {
      const current = this.#host.catalog.volumes().find((r) => r.id === record.id) ?? record
      return {
        volume: toVolume(current),
        ...(snapshot === undefined ? {} : { snapshot: this.#host.toSnapshot(snapshot) }),
        blockSize: this.#host.engine.blockSize,
        sizeBytes: snapshot?.sizeBytes ?? current.sizeBytes,
        encryption: this.#host.keys.describe(record.id, blocks().cipher)
      }
    }
    return {
      volumeId: record.id,
      volumeName: record.name,
      namespace: namespaceOf(record),
      ...(snapshot === undefined ? {} : { snapshotId: snapshot.id, snapshotName: snapshot.name }),
      accessModes: record.accessModes,
      className: record.storageClass,
      classOptions: this.#host.catalog.storageClass(record.storageClass)?.mountOptions ?? [],
      encrypted: record.encrypted,
      size: () => snapshot?.sizeBytes ?? blocks().sizeBytes,
      // A snapshot never changes; a live volume whose reads go to another node (the primary of its
      // copies) changes unseen here. Otherwise the volume's own change stamp: a write to another
      // volume leaves it (a mount's read-ahead and data's mtime stay).
      version: () => snapshot !== undefined ? 0 : this.#host.replication?.forwards(record.id) === true ? undefined : blocks().changed,
      io: {
        read: async (offset, length, into) => await run(async () => await this.#calls.read(source, offset, length, into)).catch(gone),
        write: async (offset, data, concern) => await run(async () => { await this.#calls.write(record.id, offset, data, concern) }).catch(gone),
        flush: async () => await run(async () => { await this.#calls.flush(record.id) }).catch(gone)
      },
      readme: () => renderReadme(facts()),
      metadata: () => JSON.stringify(facts(), null, 2) + '\n'
    }
  }
}

/** README.txt of a mount point: the volume's facts for a person. */
function renderReadme (facts: Record<string, unknown>): string {
  const volume = facts.volume as Volume
  const snapshot = facts.snapshot as Snapshot | undefined
  const encryption = facts.encryption as VolumeEncryption
  const lines = [
    `GalleonFS volume ${volume.namespace}/${volume.name}${snapshot === undefined ? '' : ` (snapshot ${snapshot.name}, read-only)`}`,
    '',
    'data                  the volume\'s bytes: read and write it like a disk image (dd, cmp, fio, mkfs + a loop device)',
    '.galleonfs_metadata   these facts as JSON',
    '',
    `id            ${volume.id}`,
    `size          ${String(facts.sizeBytes)} bytes in blocks of ${String(facts.blockSize)}`,
    `type          ${volume.type}`,
    `storage class ${volume.storageClass} (replicas: ${volume.replicas})`,
    `access modes  ${volume.accessModes.join(', ')}`,
    `encrypted     ${encryption.encrypted ? `yes, AES-256-GCM, data key version ${String(encryption.keyVersion)}` : 'no'}`,
    `created       ${volume.createdAt}`,
    ...Object.entries(volume.labels).map(([key, value]) => `label         ${key}=${value}`)
  ]
  return lines.join('\n') + '\n'
}
