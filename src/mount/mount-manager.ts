// The mount manager (`g.mounts`): attaches volumes and snapshots at mount points through the
// instance's mount driver, enforces access modes (one read-write mount of a ReadWriteOnce volume,
// read-only mounts only for ReadOnlyMany volumes and snapshots), and opens VolumeFiles on mounts or
// straight on volumes.

import { randomUUID } from 'node:crypto'
import { resolve as resolvePath } from 'node:path'
import type { MountDriver, MountedVolume } from '../drivers.js'
import { GalleonError, describe } from '../errors.js'
import { AccessMode, WriteConcern } from '../types.js'
import { VolumeFile, type VolumeFileIo } from './volume-file.js'
import { SerialQueue } from '../serial-queue.js'

/** A mount, as listMounts() reports it. */
export interface Mount {
  readonly id: string
  /** Absolute path of the mount point. */
  readonly path: string
  readonly volumeId: string
  readonly volumeName: string
  readonly namespace: string
  /** Set when a snapshot is mounted (always read-only). */
  readonly snapshotId?: string
  readonly snapshotName?: string
  readonly readOnly: boolean
  /** Every write through it is WriteDurable. */
  readonly sync: boolean
  /** Options passed to the driver (from the storage class, then the call). */
  readonly options: readonly string[]
  readonly driver: string
  readonly mountedAt: string
  /** VolumeFiles open on it. */
  readonly openFiles: number
}

/** Options of mountVolume. */
export interface MountOptions {
  /** Read-only mount (also `ro: true` or the option string `ro`). Snapshots are always read-only. */
  readonly readOnly?: boolean
  readonly ro?: boolean
  readonly rw?: boolean
  /** Every write WriteDurable (also the option string `sync`). */
  readonly sync?: boolean
  /** Mount option strings, added to the storage class's `mountOptions` (`ro`, `rw`, `sync`, `async` are understood here; the rest go to the driver). */
  readonly options?: readonly string[]
}

/** A volume or snapshot as the manager needs it, resolved by the instance. */
export interface MountTarget {
  readonly volumeId: string
  readonly volumeName: string
  readonly namespace: string
  readonly snapshotId?: string
  readonly snapshotName?: string
  readonly accessModes: readonly AccessMode[]
  readonly classOptions: readonly string[]
  readonly size: () => number
  /** Reads, writes and flushes of this target, acting as the caller who resolved it. */
  readonly io: Omit<VolumeFileIo, 'size'>
  readonly readme: () => string
  readonly metadata: () => string
}

/** What the manager asks of the instance. */
export interface MountHost {
  /** Resolves a volume or snapshot reference (throws VOLUME_NOT_FOUND, SNAPSHOT_NOT_FOUND, ...). */
  target: (ref: unknown) => MountTarget
  /** Checks and audits a mount operation on `ref` for the caller. */
  guard: <T>(action: string, ref: unknown, readOnly: boolean, task: () => Promise<T>) => Promise<T>
  /** Whether the caller may see mounts of this volume. */
  visible: (namespace: string, volumeName: string) => boolean
}

interface MountState {
  readonly mount: Omit<Mount, 'openFiles'>
  readonly target: MountTarget
  readonly files: Set<VolumeFile>
}

const KNOWN_OPTIONS = new Set(['readOnly', 'ro', 'rw', 'sync', 'options'])

export class MountManager {
  readonly #driver: MountDriver
  readonly #host: MountHost
  readonly #mounts = new Map<string, MountState>()
  /** Mounts and unmounts one at a time (checks and driver calls). */
  readonly #queue = new SerialQueue()
  #closed = false

  constructor (driver: MountDriver, host: MountHost) {
    this.#driver = driver
    this.#host = host
  }

  /** Name of the mount driver in use (`virtual`, `fuse`, ...). */
  get driver (): string { return this.#driver.name }

  /**
   * Mounts a volume, or a snapshot (`{ volume, snapshot }`, read-only), at `path`. Resolves to the
   * mount's id. A second read-write mount of a ReadWriteOnce volume is refused with BUSY; a
   * read-write mount of a ReadOnlyMany volume or of a snapshot with READ_ONLY.
   */
  async mountVolume (ref: unknown, path: string, options: MountOptions = {}): Promise<string> {
    if (typeof path !== 'string' || path.length === 0) throw new GalleonError('INVALID_ARGUMENT', `a mount point is a non-empty path, got ${describe(path)}`)
    if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `mount options must be an object such as { readOnly: true }, got ${describe(options)}`)
    for (const key of Object.keys(options)) if (!KNOWN_OPTIONS.has(key)) throw new GalleonError('INVALID_ARGUMENT', `unknown mount option ${JSON.stringify(key)}; allowed: ${[...KNOWN_OPTIONS].join(', ')}`)
    if (options.options !== undefined && (!Array.isArray(options.options) || !options.options.every((o) => typeof o === 'string' && o.length > 0))) {
      throw new GalleonError('INVALID_ARGUMENT', `options must be a list of mount option strings such as ['ro', 'sync'], got ${describe(options.options)}`)
    }
    for (const flag of ['readOnly', 'ro', 'rw', 'sync'] as const) {
      if (options[flag] !== undefined && typeof options[flag] !== 'boolean') throw new GalleonError('INVALID_ARGUMENT', `mount option ${flag} must be true or false, got ${describe(options[flag])}`)
    }
    const where = resolvePath(path)
    const probe = this.#host.target(ref)
    const strings = [...probe.classOptions, ...(options.options ?? [])]
    let readOnly = probe.snapshotId !== undefined || strings.includes('ro')
    if (strings.includes('rw')) readOnly = false
    if (options.readOnly !== undefined) readOnly = options.readOnly
    if (options.ro === true) readOnly = true
    if (options.rw === true) readOnly = false
    if (options.ro === true && options.rw === true) throw new GalleonError('INVALID_ARGUMENT', 'a mount is either ro or rw, not both')
    let sync = strings.includes('sync') && !strings.includes('async')
    if (options.sync !== undefined) sync = options.sync
    const driverOptions = [...new Set(strings.filter((o) => !['ro', 'rw', 'sync', 'async'].includes(o)))]
    return await this.#host.guard('mountVolume', ref, readOnly, async () => await this.#serial(async () => {
      this.#assertOpen()
      const target = this.#host.target(ref)
      if (this.#atPath(where) !== undefined) throw new GalleonError('BUSY', `${where} is already a mount point (${this.#atPath(where)?.mount.volumeName}); unmount it first or pick another path`)
      if (!readOnly) {
        if (target.snapshotId !== undefined) throw new GalleonError('READ_ONLY', `snapshot ${target.snapshotName} of volume ${target.volumeName} can only be mounted read-only`)
        if (!target.accessModes.includes(AccessMode.ReadWriteOnce) && !target.accessModes.includes(AccessMode.ReadWriteMany)) {
          throw new GalleonError('READ_ONLY', `volume ${target.volumeName} allows only read-only access (${target.accessModes.join(', ')}); mount it with { readOnly: true }`)
        }
        if (!target.accessModes.includes(AccessMode.ReadWriteMany)) {
          const writer = [...this.#mounts.values()].find((state) => state.mount.volumeId === target.volumeId && state.mount.snapshotId === undefined && !state.mount.readOnly)
          if (writer !== undefined) {
            throw new GalleonError('BUSY', `volume ${target.volumeName} is ReadWriteOnce and already mounted read-write at ${writer.mount.path}; unmount it there, or mount this one read-only`)
          }
        }
      }
      const mount: Omit<Mount, 'openFiles'> = {
        id: randomUUID(),
        path: where,
        volumeId: target.volumeId,
        volumeName: target.volumeName,
        namespace: target.namespace,
        ...(target.snapshotId === undefined ? {} : { snapshotId: target.snapshotId, snapshotName: target.snapshotName }),
        readOnly,
        sync,
        options: driverOptions,
        driver: this.#driver.name,
        mountedAt: new Date().toISOString()
      }
      const state: MountState = { mount, target, files: new Set() }
      const concern = sync ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged
      const presented: MountedVolume = {
        id: mount.id,
        path: where,
        readOnly,
        sync,
        options: driverOptions,
        data: {
          size: target.size,
          read: target.io.read,
          write: async (offset, data) => {
            if (readOnly) throw new GalleonError('READ_ONLY', `the mount at ${where} is read-only`)
            await target.io.write(offset, data, concern)
          },
          flush: target.io.flush
        },
        readme: target.readme,
        metadata: target.metadata
      }
      await this.#driver.mount(presented)
      this.#mounts.set(mount.id, state)
      return mount.id
    }))
  }

  /**
   * Unmounts by mount id or mount point. Refused with BUSY while VolumeFiles are open on it, unless
   * `force` (which closes them, flushing their writes).
   */
  async unmountVolume (idOrPath: string, options: { force?: boolean } = {}): Promise<void> {
    const state = this.#find(idOrPath)
    await this.#host.guard('unmountVolume', state.target.snapshotId === undefined ? state.mount.volumeId : { volume: state.mount.volumeId, snapshot: state.target.snapshotId }, state.mount.readOnly, async () => await this.#serial(async () => {
      if (!this.#mounts.has(state.mount.id)) return
      if (state.files.size > 0 && options?.force !== true) {
        throw new GalleonError('BUSY', `${state.files.size} file(s) are open on the mount at ${state.mount.path}; close them first, or pass { force: true }`)
      }
      await this.#release(state)
    }))
  }

  /** Mounts the caller may see, oldest first. */
  listMounts (): Mount[] {
    return [...this.#mounts.values()]
      .filter((state) => this.#host.visible(state.mount.namespace, state.mount.volumeName))
      .map((state) => ({ ...state.mount, openFiles: state.files.size }))
  }

  /**
   * Opens a VolumeFile: on the mount at a path (read-only if the mount is), or straight on a volume
   * or a snapshot (`{ volume, snapshot }`, read-only). `readOnly` opens a writable one read-only.
   */
  async openVolumeFile (pathOrRef: unknown, options: { readOnly?: boolean } = {}): Promise<VolumeFile> {
    this.#assertOpen()
    if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `openVolumeFile() options must be an object such as { readOnly: true }, got ${describe(options)}`)
    if (options.readOnly !== undefined && typeof options.readOnly !== 'boolean') throw new GalleonError('INVALID_ARGUMENT', `readOnly must be true or false, got ${describe(options.readOnly)}`)
    const mounted = typeof pathOrRef === 'string' ? this.#atPath(resolvePath(pathOrRef)) : undefined
    if (mounted !== undefined) {
      // The caller must be allowed what the file will do, like any I/O.
      const ref = mounted.target.snapshotId === undefined ? mounted.mount.volumeId : { volume: mounted.mount.volumeId, snapshot: mounted.target.snapshotId }
      const readOnly = mounted.mount.readOnly || options.readOnly === true
      const target = await this.#host.guard('openVolumeFile', ref, readOnly, async () => this.#host.target(ref))
      const file = new VolumeFile({ ...target.io, size: target.size }, { volumeId: target.volumeId, snapshotId: target.snapshotId, readOnly, sync: mounted.mount.sync }, () => mounted.files.delete(file))
      mounted.files.add(file)
      return file
    }
    const probe = this.#host.target(pathOrRef)
    const readOnly = probe.snapshotId !== undefined || options.readOnly === true
    const target = await this.#host.guard('openVolumeFile', pathOrRef, readOnly, async () => this.#host.target(pathOrRef))
    return new VolumeFile({ ...target.io, size: target.size }, { volumeId: target.volumeId, snapshotId: target.snapshotId, readOnly, sync: false })
  }

  /** Mounts of a volume (its snapshots' included). */
  mountsOf (volumeId: string): Mount[] {
    return [...this.#mounts.values()].filter((state) => state.mount.volumeId === volumeId).map((state) => ({ ...state.mount, openFiles: state.files.size }))
  }

  /** Unmounts every mount of a volume, closing their files (for deleteVolume with force). */
  async releaseVolume (volumeId: string): Promise<void> {
    await this.#serial(async () => {
      for (const state of [...this.#mounts.values()]) if (state.mount.volumeId === volumeId) await this.#release(state)
    })
  }

  /** Unmounts everything (at close). */
  async close (): Promise<void> {
    await this.#serial(async () => {
      this.#closed = true
      for (const state of [...this.#mounts.values()]) await this.#release(state).catch(() => {})
      await this.#driver.close?.()
    })
  }

  async #release (state: MountState): Promise<void> {
    for (const file of [...state.files]) await file.close().catch(() => {})
    await this.#driver.unmount(state.mount.path)
    this.#mounts.delete(state.mount.id)
  }

  #find (idOrPath: unknown): MountState {
    if (typeof idOrPath !== 'string' || idOrPath.length === 0) throw new GalleonError('INVALID_ARGUMENT', `unmountVolume() takes a mount id or a mount point, got ${describe(idOrPath)}`)
    const state = this.#mounts.get(idOrPath) ?? this.#atPath(resolvePath(idOrPath))
    if (state === undefined) throw new GalleonError('INVALID_ARGUMENT', `nothing is mounted as ${JSON.stringify(idOrPath)}; listMounts() shows the mounts`)
    return state
  }

  #atPath (path: string): MountState | undefined {
    for (const state of this.#mounts.values()) if (state.mount.path === path) return state
    return undefined
  }

  #assertOpen (): void {
    if (this.#closed) throw new GalleonError('NOT_OPEN', 'this GalleonFS instance is closed; open a new one with GalleonFS.open()')
  }

  async #serial<T> (task: () => Promise<T>): Promise<T> {
    return await this.#queue.run(task)
  }
}

/** The default mount driver: mounts exist for the VolumeFile API only; nothing appears in the file system. */
export class VirtualMountDriver implements MountDriver {
  readonly name = 'virtual'
  async mount (): Promise<void> {}
  async unmount (): Promise<void> {}
}
