// The mount manager (`g.mounts`): attaches volumes and snapshots at mount points through the
// instance's mount driver, enforces access modes (one read-write mount of a ReadWriteOnce volume,
// read-only mounts only for ReadOnlyMany volumes and snapshots), and opens VolumeFiles on mounts or
// straight on volumes.
// Its types are in mount-types.ts, the default (virtual) driver in virtual-mount-driver.ts.

import { randomUUID } from 'node:crypto'
import { resolve as resolvePath } from 'node:path'
import type { MountDriver, MountedVolume } from '../drivers.js'
import { GalleonError, describe, quoted } from '../errors.js'
import { AccessMode, WriteConcern } from '../types.js'
import { VolumeFile } from './volume-file.js'
import { SerialQueue } from '../serial-queue.js'
import { MANAGER_WORDS, checkClassWordsForMount, notOffered } from './mount-words.js'
import type { Mount, MountControl, MountHost, MountOptions, MountTarget } from './mount-types.js'

export type { Mount, MountControl, MountHost, MountOptions, MountTarget } from './mount-types.js'
export { VirtualMountDriver } from './virtual-mount-driver.js'

const controls = new WeakMap<MountManager, MountControl>()

/** The instance's side of a mount manager. */
export function mountControl (manager: MountManager): MountControl {
  return controls.get(manager) as MountControl
}

interface MountState {
  readonly mount: Omit<Mount, 'openFiles'>
  readonly target: MountTarget
  readonly files: Set<VolumeFile>
  /** Set while it is being unmounted: its files are closed, so no new one opens on it. */
  releasing: boolean
  /** The principal that mounted it (undefined: the application). */
  readonly mountedBy: string | undefined
}

const KNOWN_OPTIONS = new Set(['readOnly', 'ro', 'rw', 'sync', 'options'])

export class MountManager {
  readonly #driver: MountDriver
  readonly #host: MountHost
  readonly #mounts = new Map<string, MountState>()
  /** The same mounts by mount point, and by volume id (each volume's oldest first): no lookup scans every mount. */
  readonly #byPath = new Map<string, MountState>()
  readonly #byVolume = new Map<string, Set<MountState>>()
  /** Mounts and unmounts one at a time (checks and driver calls). */
  readonly #queue = new SerialQueue()
  #closed = false

  /** Every VolumeFile opened straight on a volume or snapshot (not through a mount): close() closes them. */
  readonly #directFiles = new Set<VolumeFile>()
  /** Writable VolumeFiles opened straight on a volume (not through a mount), by volume id. */
  readonly #directWriters = new Map<string, Set<VolumeFile>>()
  /** Read-only VolumeFiles opened straight on a volume's live data (not a snapshot, not through a mount), by volume id. */
  readonly #directReaders = new Map<string, Set<VolumeFile>>()
  /** VolumeFiles opened straight on a snapshot (not through a mount), with what they read. */
  readonly #snapshotFiles = new Map<VolumeFile, { volumeId: string, snapshotId: string }>()
  /** Mounts the driver is still making. */
  readonly #pending = new Map<string, MountState>()

  constructor (driver: MountDriver, host: MountHost) {
    this.#driver = driver
    this.#host = host
    const view = (state: MountState): Mount => ({ ...state.mount, openFiles: state.files.size })
    controls.set(this, {
      mountsOf: (volumeId) => [...this.#ofVolume(volumeId), ...[...this.#pending.values()].filter((state) => state.mount.volumeId === volumeId)].map(view),
      directWriters: (volumeId) => this.#directWriters.get(volumeId)?.size ?? 0,
      directReaders: (volumeId) => this.#directReaders.get(volumeId)?.size ?? 0,
      snapshotMounts: (snapshotId) => [...this.#mounts.values()].filter((state) => state.mount.snapshotId === snapshotId).map(view),
      snapshotFiles: (of) => {
        let count = 0
        for (const entry of this.#snapshotFiles.values()) if ('snapshotId' in of ? entry.snapshotId === of.snapshotId : entry.volumeId === of.volumeId) count++
        return count
      },
      release: async (volumeId, snapshotId) => {
        // Files open straight on what goes away stop counting as its readers (their reads fail).
        for (const [file, entry] of this.#snapshotFiles) {
          if (entry.volumeId === volumeId && (snapshotId === undefined || entry.snapshotId === snapshotId)) this.#snapshotFiles.delete(file)
        }
        if (snapshotId === undefined) this.#directReaders.delete(volumeId)
        await this.#serial(async () => {
          for (const state of this.#ofVolume(volumeId)) {
            if (snapshotId !== undefined && state.mount.snapshotId !== snapshotId) continue
            // The volume or snapshot is going away: a write that failed in the background no longer matters.
            await this.#release(state, true).catch((err: unknown) => { if ((err as { code?: string }).code !== 'IO_ERROR') throw err })
          }
        })
      },
      quiesce: async (volumeId, options) => {
        const states = volumeId === undefined ? [...this.#mounts.values()] : this.#ofVolume(volumeId)
        for (const state of states) {
          if (!state.mount.readOnly) await this.#driver.quiesce?.(state.mount.path, options)
        }
      },
      settled: async () => { await this.#serial(async () => {}) },
      close: async () => {
        await this.#serial(async () => {
          this.#closed = true
          for (const state of [...this.#mounts.values()]) await this.#release(state, true).catch(() => {})
          // Files opened straight on volumes close too, as files on mounts do: each waits for its
          // reads and writes in flight and flushes, while the instance still serves them. Every
          // file is closed (later calls on it get NOT_OPEN) even when a flush fails; the first
          // failure is reported, but not that of a file whose volume was deleted under it (forced).
          const closing = await Promise.allSettled([...this.#directFiles].map(async (file) => {
            await file.close().catch((err: unknown) => { if ((err as { code?: string }).code !== 'VOLUME_NOT_FOUND') throw err })
          }))
          await this.#driver.close?.()
          const failed = closing.find((outcome): outcome is PromiseRejectedResult => outcome.status === 'rejected')
          if (failed !== undefined) throw failed.reason
        })
      }
    })
  }

  /** Name of the mount driver in use (`virtual`, `fuse`, ...). */
  get driver (): string { return this.#driver.name }

  /**
   * The option words a mountVolume call may give with this driver (the manager's and those the
   * driver lists in MountDriver.options); undefined when the driver lists none (every word is
   * handed to it). Mounts saved by an earlier release may hold others (see the daemon's restart).
   */
  get acceptedOptions (): readonly string[] | undefined {
    const applied = this.#driver.options
    return applied === undefined ? undefined : [...MANAGER_WORDS, ...applied]
  }

  /**
   * Mounts a volume, or a snapshot (`{ volume, snapshot }`, read-only), at `path`. Resolves to the
   * mount's id. A second read-write mount of a ReadWriteOnce volume is refused with BUSY; a
   * read-write mount of a ReadOnlyMany volume or of a snapshot with READ_ONLY.
   */
  async mountVolume (ref: unknown, path: string, options: MountOptions = {}): Promise<string> {
    let callReadOnly: boolean | undefined
    try {
      if (typeof path !== 'string' || path.length === 0) throw new GalleonError('INVALID_ARGUMENT', `a mount point is a non-empty path, got ${describe(path)}`)
      if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `mount options must be an object such as { readOnly: true }, got ${describe(options)}`)
      for (const key of Object.keys(options)) if (!KNOWN_OPTIONS.has(key)) throw new GalleonError('INVALID_ARGUMENT', `unknown mount option ${quoted(key)}; allowed: ${[...KNOWN_OPTIONS].join(', ')}`)
      if (options.options !== undefined && (!Array.isArray(options.options) || !options.options.every((o) => typeof o === 'string' && o.length > 0))) {
        throw new GalleonError('INVALID_ARGUMENT', `options must be a list of mount option strings such as ['ro', 'sync'], got ${describe(options.options)}`)
      }
      for (const flag of ['readOnly', 'ro', 'rw', 'sync'] as const) {
        if (options[flag] !== undefined && typeof options[flag] !== 'boolean') throw new GalleonError('INVALID_ARGUMENT', `mount option ${flag} must be true or false, got ${describe(options[flag])}`)
      }
      this.#checkWords(options.options ?? [])
      // readOnly, ro and rw each say the mode, false as much as true (`rw: false` is read-only).
      const said = new Set([options.readOnly, options.ro, options.rw === undefined ? undefined : !options.rw].filter((mode) => mode !== undefined))
      if (said.size > 1) throw new GalleonError('INVALID_ARGUMENT', 'a mount is either read-only or read-write, not both: readOnly, ro and rw contradict each other')
      callReadOnly = [...said][0]
    } catch (err) {
      // On the record, and told as a denial to a caller who may not mount the volume so.
      // Checked on the mode asked, as a good call is (below): a boolean saying read-only, or, with
      // none said, the call's last option word `ro`.
      let readOnly = this.#host.isSnapshotRef(ref)
      try {
        const booleans = [options?.readOnly, options?.ro, options?.rw]
        const own: unknown = options?.options
        const words = Array.isArray(own) ? own : []
        readOnly ||= options?.readOnly === true || options?.ro === true || options?.rw === false ||
          (booleans.every((flag) => flag === undefined) && words.lastIndexOf('ro') > words.lastIndexOf('rw'))
      } catch {}
      throw await this.#host.refusedArguments('mountVolume', ref, readOnly, err)
    }
    const where = resolvePath(path)
    const own = options.options ?? []
    // Option strings a driver applies (allow_other, ...) are the administrator's to choose.
    if (own.some((o) => !MANAGER_WORDS.includes(o))) await this.#host.requireAdmin('mountVolume', `mount options ${own.join(',')}`)
    // Checked on what the caller asks for, before anything is looked up (nothing leaks to a caller who may not).
    const asked = this.#host.isSnapshotRef(ref) || callReadOnly === true || (callReadOnly === undefined && own.lastIndexOf('ro') > own.lastIndexOf('rw'))
    const mountedBy = this.#host.caller()
    return await this.#host.guard('mountVolume', ref, asked, async () => await this.#serial(async () => {
      this.#assertOpen()
      const target = this.#host.target(ref)
      // A word of the storage class the driver does not apply is refused, as the call's are: the
      // mount would not be what the class says (a class stored by an earlier release may hold any).
      checkClassWordsForMount(target, this.acceptedOptions, this.#driver.name)
      const strings = [...target.classOptions, ...own]
      // The call's options win over the storage class's, and the last word of each wins.
      const last = (list: readonly string[], a: string, b: string): string | undefined => [...list].reverse().find((o) => o === a || o === b)
      let readOnly = target.snapshotId !== undefined
      const classMode = last(target.classOptions, 'ro', 'rw')
      // A snapshot is read-only whatever its volume's class says; only the caller asking rw is refused.
      if (classMode !== undefined && target.snapshotId === undefined) readOnly = classMode === 'ro'
      const ownMode = last(own, 'ro', 'rw')
      if (ownMode !== undefined) readOnly = ownMode === 'ro'
      if (callReadOnly !== undefined) readOnly = callReadOnly
      // Checked as a read (what was asked), it turned out read-write (the storage class's options):
      // the caller must be allowed to write too.
      if (!readOnly && asked) await this.#host.requireWrite('mountVolume', ref)
      let sync = last(strings, 'sync', 'async') === 'sync'
      if (options.sync !== undefined) sync = options.sync
      // Asked for an encrypted mount of a volume that is not: refused, not mounted in clear.
      if (own.includes('encrypted') && target.encrypted === false) {
        throw new GalleonError('INVALID_ARGUMENT', `volume ${target.volumeName} is not encrypted at rest (its storage class does not encrypt), so it was not mounted with the option "encrypted"; leave that option out to mount it as it is, or move the volume to an encrypted storage class first (migrateVolume(vol, { storageClass: 'encrypted-storage' }))`)
      }
      if (target.classOptions.includes('encrypted') && target.encrypted === false) {
        throw new GalleonError('INVALID_ARGUMENT', `volume ${target.volumeName} is not encrypted at rest, but its storage class ${target.className ?? '(unknown)'} lists the mount option "encrypted", so it was not mounted in clear; move the volume to an encrypted storage class (migrateVolume(vol, { storageClass: 'encrypted-storage' })), or to one without that option`)
      }
      const driverOptions = [...new Set(strings.filter((o) => !MANAGER_WORDS.includes(o)))]
      const taken = this.#atPath(where)?.mount
      if (taken !== undefined) {
        // Named only to a caller who may see that volume.
        const which = this.#host.visible(taken.namespace, taken.volumeName) ? ` (${taken.volumeName})` : ''
        throw new GalleonError('BUSY', `${where} is already a mount point${which}; unmount it first or pick another path`)
      }
      if (!readOnly) {
        if (target.snapshotId !== undefined) throw new GalleonError('READ_ONLY', `snapshot ${target.snapshotName} of volume ${target.volumeName} can only be mounted read-only`)
        if (!target.accessModes.includes(AccessMode.ReadWriteOnce) && !target.accessModes.includes(AccessMode.ReadWriteMany)) {
          throw new GalleonError('READ_ONLY', `volume ${target.volumeName} allows only read-only access (${target.accessModes.join(', ')}); mount it with { readOnly: true }`)
        }
        if (!target.accessModes.includes(AccessMode.ReadWriteMany)) this.#assertNoWriter(target)
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
      const state: MountState = { mount, target, files: new Set(), releasing: false, mountedBy }
      const concern = sync ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged
      const presented: MountedVolume = {
        id: mount.id,
        path: where,
        readOnly,
        sync,
        options: driverOptions,
        mountedAt: mount.mountedAt,
        data: {
          size: target.size,
          read: target.io.read,
          write: async (offset, data) => {
            if (readOnly) throw new GalleonError('READ_ONLY', `the mount at ${where} is read-only`)
            await target.io.write(offset, data, concern)
          },
          flush: target.io.flush,
          version: target.version
        },
        readme: target.readme,
        metadata: target.metadata
      }
      // Visible to mountsOf (a revert's check) while the driver mounts; the volume is checked again
      // once it is, so a revert or a deletion that began meanwhile is not mounted over.
      this.#pending.set(mount.id, state)
      try {
        // A restore that claimed the volume meanwhile finds this mount pending and is refused, or
        // claimed it before: then this mount is (target() refuses it), so a mount never shows a
        // volume half restored.
        this.#host.target(ref)
        await this.#driver.mount(presented)
        this.#add(state)
      } finally {
        this.#pending.delete(mount.id)
      }
      return mount.id
    }))
  }

  /**
   * Unmounts by mount id or mount point. Refused with BUSY while VolumeFiles are open on it, unless
   * `force` (which closes them, flushing their writes). Whoever mounted it unmounts it with the
   * right mounting took (`volume:read`, `volume:write` or `snapshot:read`); a mount made by someone
   * else (another principal, or the application) takes `admin` on the volume.
   */
  async unmountVolume (idOrPath: string, options: { force?: boolean } = {}): Promise<void> {
    this.#assertOpen()
    const state = this.#find(idOrPath)
    const ref = state.target.snapshotId === undefined ? state.mount.volumeId : { volume: state.mount.volumeId, snapshot: state.target.snapshotId }
    const mountedByOther = state.mountedBy === this.#host.caller() ? undefined : state.mountedBy ?? 'application'
    await this.#host.guard('unmountVolume', ref, state.mount.readOnly, async () => await this.#serial(async () => {
      if (!this.#mounts.has(state.mount.id)) return
      if (state.files.size > 0 && options?.force !== true) {
        throw new GalleonError('BUSY', `${state.files.size} file(s) are open on the mount at ${state.mount.path}; close them first, or pass { force: true }`)
      }
      await this.#release(state, options?.force === true)
    }), mountedByOther)
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
    try {
      if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `openVolumeFile() options must be an object such as { readOnly: true }, got ${describe(options)}`)
      // A misspelt option (`readonly`) would otherwise open a writable file, and take the writer's place.
      for (const key of Object.keys(options)) if (key !== 'readOnly') throw new GalleonError('INVALID_ARGUMENT', `unknown openVolumeFile() option ${quoted(key)}; allowed: readOnly`)
      if (options.readOnly !== undefined && typeof options.readOnly !== 'boolean') throw new GalleonError('INVALID_ARGUMENT', `readOnly must be true or false, got ${describe(options.readOnly)}`)
    } catch (err) {
      // A caller who may not even read the volume it names is told PERMISSION_DENIED (and that is
      // logged). A mount point names no volume before it is looked up among the mounts the caller
      // may see: its refusal tells nothing a good call would not.
      if (typeof pathOrRef === 'string' && /^[/.]/.test(pathOrRef)) throw err
      throw await this.#host.refusedArguments('openVolumeFile', pathOrRef, true, err)
    }
    const found = typeof pathOrRef === 'string' ? this.#atPath(resolvePath(pathOrRef)) : undefined
    const mounted = found !== undefined && this.#host.visible(found.mount.namespace, found.mount.volumeName) ? found : undefined
    // No volume name starts with '/' or '.': such a string is a mount point, and nothing (the caller
    // may see) is mounted there. Said like unmountVolume() says it, not as a missing volume.
    if (mounted === undefined && typeof pathOrRef === 'string' && /^[/.]/.test(pathOrRef)) {
      throw new GalleonError('INVALID_ARGUMENT', `nothing is mounted at ${resolvePath(pathOrRef)}; mount a volume there first (mountVolume), or pass a volume's name or id to open it directly; listMounts() shows the mounts`)
    }
    if (mounted !== undefined) {
      // The caller must be allowed what the file will do, like any I/O.
      const ref = mounted.target.snapshotId === undefined ? mounted.mount.volumeId : { volume: mounted.mount.volumeId, snapshot: mounted.target.snapshotId }
      const readOnly = mounted.mount.readOnly || options.readOnly === true
      const target = await this.#host.guard('openVolumeFile', ref, readOnly, async () => this.#host.target(ref))
      // Checked again after the wait: a file opened on a mount that is going away (an unmount or
      // close() began meanwhile, and has closed the files it knew of) would stay open on nothing.
      this.#assertOpen()
      if (!this.#mounts.has(mounted.mount.id) || mounted.releasing) throw new GalleonError('INVALID_ARGUMENT', `the mount at ${mounted.mount.path} is being unmounted (or is gone); listMounts() shows the mounts`)
      const file = new VolumeFile({ ...target.io, size: target.size }, { volumeId: target.volumeId, snapshotId: target.snapshotId, readOnly, sync: mounted.mount.sync }, () => mounted.files.delete(file))
      mounted.files.add(file)
      return file
    }
    // Straight on a volume: the same access-mode rules as a mount (a direct writable file counts as
    // a read-write attachment of a ReadWriteOnce volume).
    const readOnly = this.#host.isSnapshotRef(pathOrRef) || options.readOnly === true
    const target = await this.#host.guard('openVolumeFile', pathOrRef, readOnly, async () => this.#host.target(pathOrRef)).catch((err: unknown) => {
      // A relative mount point without './' reads as namespace/name: when no such volume exists
      // and no volume lives in that namespace either, it was meant as a path, and is answered as
      // one ('team/missing', in a namespace team of other volumes, stays a missing volume).
      if (typeof pathOrRef === 'string' && pathOrRef.includes('/') && (err as { code?: unknown })?.code === 'VOLUME_NOT_FOUND' &&
        !this.#host.namespaceInUse(pathOrRef.slice(0, pathOrRef.indexOf('/')))) {
        throw new GalleonError('INVALID_ARGUMENT', `nothing is mounted at ${resolvePath(pathOrRef)}, and no volume is named ${JSON.stringify(pathOrRef)}; mount a volume there first (mountVolume), or pass a volume's name or id; listMounts() shows the mounts`, { cause: err })
      }
      throw err
    })
    // A close() that began meanwhile has already closed the files it knew of.
    this.#assertOpen()
    if (!readOnly) {
      if (!target.accessModes.includes(AccessMode.ReadWriteOnce) && !target.accessModes.includes(AccessMode.ReadWriteMany)) {
        throw new GalleonError('READ_ONLY', `volume ${target.volumeName} allows only read-only access (${target.accessModes.join(', ')}); open it with { readOnly: true }`)
      }
      if (!target.accessModes.includes(AccessMode.ReadWriteMany)) this.#assertNoWriter(target, true)
    }
    // A file straight on the live volume counts as its writer, or (read-only) its reader, as a
    // mount does: deleteVolume and restoreBackup into it refuse while it is open.
    const holders = target.snapshotId !== undefined ? undefined : readOnly ? this.#directReaders : this.#directWriters
    const file: VolumeFile = new VolumeFile({ ...target.io, size: target.size }, { volumeId: target.volumeId, snapshotId: target.snapshotId, readOnly, sync: false }, () => {
      this.#directFiles.delete(file)
      this.#snapshotFiles.delete(file)
      const held = holders?.get(target.volumeId)
      held?.delete(file)
      if (held?.size === 0) holders?.delete(target.volumeId)
    })
    this.#directFiles.add(file)
    // Counts as an attachment of the snapshot (deleteSnapshot and deleteVolume refuse while it is open).
    if (target.snapshotId !== undefined) this.#snapshotFiles.set(file, { volumeId: target.volumeId, snapshotId: target.snapshotId })
    else {
      let held = holders?.get(target.volumeId)
      if (held === undefined) holders?.set(target.volumeId, held = new Set())
      held?.add(file)
    }
    // Checked again now that it counts: a revert, restore or deletion that began meanwhile wins.
    try {
      this.#host.target(pathOrRef)
    } catch (err) {
      await file.close().catch(() => {})
      throw err
    }
    return file
  }

  /** BUSY when a ReadWriteOnce volume already has a writer: a read-write mount, or (unless `direct`) a writable file opened straight on it. */
  #assertNoWriter (target: MountTarget, direct = false): void {
    const writer = this.#ofVolume(target.volumeId).find((state) => state.mount.snapshotId === undefined && !state.mount.readOnly)
    if (writer !== undefined) {
      throw new GalleonError('BUSY', `volume ${target.volumeName} is ReadWriteOnce and already mounted read-write at ${writer.mount.path}; ${direct ? 'open the file on that mount point, or read-only' : 'unmount it there, or mount this one read-only'}`)
    }
    if (!direct && (this.#directWriters.get(target.volumeId)?.size ?? 0) > 0) {
      throw new GalleonError('BUSY', `volume ${target.volumeName} is ReadWriteOnce and has a writer: a writable file open on it (openVolumeFile) or an NBD client connected read-write; close it or disconnect, or mount read-only`)
    }
  }

  async #release (state: MountState, force: boolean): Promise<void> {
    state.releasing = true
    for (const file of [...state.files]) await file.close().catch(() => {})
    try {
      await this.#driver.unmount(state.mount.path, { force })
    } catch (err) {
      // Unmounted, but background writes failed: the mount is gone all the same.
      if ((err as { code?: string }).code !== 'IO_ERROR') {
        // Still mounted (the driver refused): files may open on it again.
        state.releasing = false
        throw err
      }
      this.#remove(state)
      throw err
    }
    this.#remove(state)
  }

  #add (state: MountState): void {
    this.#mounts.set(state.mount.id, state)
    this.#byPath.set(state.mount.path, state)
    let ofVolume = this.#byVolume.get(state.mount.volumeId)
    if (ofVolume === undefined) this.#byVolume.set(state.mount.volumeId, ofVolume = new Set())
    ofVolume.add(state)
  }

  #remove (state: MountState): void {
    this.#mounts.delete(state.mount.id)
    if (this.#byPath.get(state.mount.path) === state) this.#byPath.delete(state.mount.path)
    const ofVolume = this.#byVolume.get(state.mount.volumeId)
    if (ofVolume?.delete(state) === true && ofVolume.size === 0) this.#byVolume.delete(state.mount.volumeId)
  }

  /** The mounts of a volume (its snapshots' included), oldest first: a copy, safe to iterate while mounts go. */
  #ofVolume (volumeId: string): MountState[] {
    const ofVolume = this.#byVolume.get(volumeId)
    return ofVolume === undefined ? [] : [...ofVolume]
  }

  /** A mount by id or path; mounts the caller may not see are reported like missing ones. */
  #find (idOrPath: unknown): MountState {
    if (typeof idOrPath !== 'string' || idOrPath.length === 0) throw new GalleonError('INVALID_ARGUMENT', `unmountVolume() takes a mount id or a mount point, got ${describe(idOrPath)}`)
    const state = this.#mounts.get(idOrPath) ?? this.#atPath(resolvePath(idOrPath))
    if (state === undefined || !this.#host.visible(state.mount.namespace, state.mount.volumeName)) {
      throw new GalleonError('INVALID_ARGUMENT', `nothing is mounted as ${quoted(idOrPath)}; listMounts() shows the mounts`)
    }
    return state
  }

  /**
   * Refuses a word of the call's options that neither the manager nor the driver applies: passed
   * on, it would be ignored (a mistyped `syncc`, or `nobarrier` the driver does not do), and the
   * mount would not be what was asked. The storage class's words are checked once the volume is
   * known (checkClassWordsForMount).
   */
  #checkWords (words: readonly string[]): void {
    const accepted = this.acceptedOptions
    if (accepted === undefined) return
    const unknown = words.filter((word) => !accepted.includes(word))
    if (unknown.length === 0) return
    throw new GalleonError('INVALID_ARGUMENT', `unknown mount option${unknown.length === 1 ? '' : 's'} ${unknown.map(quoted).join(', ')}: the ${this.#driver.name} mount driver would ignore ${unknown.length === 1 ? 'it' : 'them'}, so nothing was mounted; the options accepted are ${accepted.join(', ')}${notOffered(unknown)}`)
  }

  #atPath (path: string): MountState | undefined {
    return this.#byPath.get(path)
  }

  #assertOpen (): void {
    if (this.#closed) throw new GalleonError('NOT_OPEN', 'this GalleonFS instance is closed; open a new one with GalleonFS.open()')
  }

  async #serial<T> (task: () => Promise<T>): Promise<T> {
    return await this.#queue.run(task)
  }
}
