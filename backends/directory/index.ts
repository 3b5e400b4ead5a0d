// Directory backup target: chunks and manifests as files under one directory (local disk or a
// network mount). Layout:
//   galleonfs-backup.json        what this directory is (format version), written once
//   chunks/<aa>/<sha256 hex>     content-addressed chunks, fanned out by their first two hex digits
//   manifests/<uuid>.json        one manifest per complete backup
//   index.json                   a summary of every backup (rewritten after each change)
//   leases/<uuid>.json           one per backup or garbage collection running (see src/backup/leases.ts);
//                                the directory is there only while one is
// Every object is written to a temporary file in the same directory, fsynced, renamed into place
// and the directory fsynced, so a crash leaves the old object or the new one, never part of one.
// Temporary files left by a crash start with '.tmp-' and are ignored (and removed on open, when no
// lease says a backup may be writing one).

import { randomBytes } from 'node:crypto'
import { open, readFile, readdir, rename, rm, rmdir, stat, unlink, utimes, writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import type { BackupTarget } from '../../src/drivers.js'
import { GalleonError, describe } from '../../src/errors.js'
import { makeDirectoriesDurably, syncDirectory, writeFileAtomically } from '../../src/durable-files.js'
import { makeDirectories } from '../../src/make-directories.js'

/** Options of the directory backup target. */
export interface DirectoryBackupTargetOptions {
  /** The directory (created if missing). */
  readonly path: string
}

const CHUNK_ID = /^[0-9a-f]{64}$/
const MANIFEST_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
/** The file that makes a directory a backup target. */
export const DIRECTORY_TARGET_MARKER = 'galleonfs-backup.json'
const MARKER = DIRECTORY_TARGET_MARKER
/**
 * Temporary files older than this are leftovers of a crash (younger ones may be another process's
 * put). Age alone is not trusted (a clock stepped forward ages every file at once): none is
 * removed while the target holds a lease (a backup or collection under way, or one whose process
 * died, until a deletion finds it abandoned and removes it).
 */
const TEMPORARY_MAX_AGE_MS = 60 * 60 * 1000
const LEASES = 'leases'
const FORMAT = 1

export class DirectoryBackupTarget implements BackupTarget {
  readonly name = 'directory'
  readonly location: string
  #opened: Promise<void> | undefined
  /** Whether an open() has completed (the directory was set up, as far as this object knows). */
  #ready = false
  /** Directories with entries (chunks, new fan directories) not yet made durable (see flush). */
  readonly #dirtyDirs = new Set<string>()
  /** The flush running, if any: the next one starts after it (see flush). */
  #flushing: Promise<void> | undefined

  constructor (options: DirectoryBackupTargetOptions) {
    if (options === null || typeof options !== 'object' || typeof options.path !== 'string' || options.path.length === 0) {
      throw new GalleonError('INVALID_ARGUMENT', `a directory backup target needs { path: '/some/dir' }, got ${describe(options)}`)
    }
    this.location = resolve(options.path)
  }

  async open (): Promise<void> {
    // The directory may have been removed since it was set up (`rm -rf` of the target to start
    // over, while this process kept its object): it is set up again, where otherwise the next
    // backup wrote its chunks and then failed on the manifests directory that was gone.
    if (this.#ready && !(await this.isTarget())) {
      this.#ready = false
      this.#opened = undefined
    }
    this.#opened ??= this.#open().then(() => { this.#ready = true }, (err: unknown) => {
      this.#opened = undefined
      throw err
    })
    await this.#opened
  }

  async #open (): Promise<void> {
    try {
      // Durably named: chunks and manifests synced into them must not vanish with them at a power loss.
      await makeDirectoriesDurably(join(this.location, 'chunks'))
      await makeDirectoriesDurably(join(this.location, 'manifests'))
    } catch (err) {
      throw ioError(`could not create the backup directory ${this.location}`, err)
    }
    const marker = await readFile(join(this.location, MARKER), 'utf8').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined
      throw ioError(`could not read ${MARKER} in ${this.location}`, err)
    })
    if (marker === undefined) {
      await this.#atomicWrite(this.location, MARKER, Buffer.from(JSON.stringify({ kind: 'galleonfs-backup-target', format: FORMAT, createdAt: new Date().toISOString() }, null, 2) + '\n'))
    } else {
      let parsed: { kind?: unknown, format?: unknown }
      try { parsed = JSON.parse(marker) } catch { parsed = {} }
      if (parsed.kind !== 'galleonfs-backup-target') throw new GalleonError('CORRUPTION', `${join(this.location, MARKER)} is not a GalleonFS backup target marker; point the target at another directory`)
      if (parsed.format !== FORMAT) throw new GalleonError('CORRUPTION', `backup target ${this.location} has format ${String(parsed.format)}; this version reads format ${FORMAT}`)
    }
    // Leftovers of puts a crash interrupted (old enough not to be another process's put in flight),
    // and durability for chunks a killed process renamed into place but never synced: a later
    // backup finds them with hasChunk() and relies on them.
    const leased = (await this.#list(join(this.location, LEASES), 'the lease directory')).some(isLeaseFile)
    const fans = (await this.#list(join(this.location, 'chunks'), 'the chunk directory')).filter((fan) => /^[0-9a-f]{2}$/.test(fan))
    if (!leased) {
      await this.#removeTemporaries(join(this.location, 'manifests'))
      await this.#removeTemporaries(join(this.location, LEASES))
      for (const fan of fans) await this.#removeTemporaries(join(this.location, 'chunks', fan))
    }
    try {
      await Promise.all(fans.map(async (fan) => { await syncDirectory(join(this.location, 'chunks', fan)) }))
      await syncDirectory(join(this.location, 'chunks'))
    } catch (err) {
      throw ioError(`could not sync the chunk directories of ${this.location}`, err)
    }
  }

  async close (): Promise<void> {
    this.#opened = undefined
    this.#ready = false
  }

  /**
   * Whether the directory is a backup target already (it holds the marker file), without creating
   * anything: a caller that only reads a target it was given by path can then refuse a path that
   * holds none (mistyped, or not mounted) instead of making it an empty target.
   */
  async isTarget (): Promise<boolean> {
    try {
      await stat(join(this.location, MARKER))
      return true
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOENT' || code === 'ENOTDIR') return false
      throw ioError(`could not look for ${MARKER} in ${this.location}`, err)
    }
  }

  async hasChunk (id: string): Promise<boolean> {
    return (await this.getChunkSize(id)) !== undefined
  }

  async touchChunk (id: string): Promise<boolean> {
    const file = this.#chunkPath(id)
    const now = new Date()
    try {
      await utimes(file, now, now)
      return true
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
      throw ioError(`could not touch chunk ${id}`, err)
    }
  }

  async chunkTime (id: string): Promise<number | undefined> {
    try {
      return (await stat(this.#chunkPath(id))).mtimeMs
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw ioError(`could not look up chunk ${id}`, err)
    }
  }

  /** Size of a stored chunk, if present. */
  async getChunkSize (id: string): Promise<number | undefined> {
    const file = this.#chunkPath(id)
    try {
      const handle = await open(file, 'r')
      try { return (await handle.stat()).size } finally { await handle.close() }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw ioError(`could not look up chunk ${id}`, err)
    }
  }

  async putChunk (id: string, data: Uint8Array): Promise<void> {
    this.#chunkPath(id)
    assertData(data)
    const dir = join(this.location, 'chunks', id.slice(0, 2))
    const created = await makeDirectories(dir).catch((err: unknown) => { throw ioError(`could not create ${dir}`, err) })
    // A new fan directory is an entry of its parent, as a chunk is of its fan: flush() syncs both.
    if (created !== undefined) {
      for (let parent = dirname(dir); parent.length >= created.length; parent = dirname(parent)) this.#dirtyDirs.add(parent)
      this.#dirtyDirs.add(dirname(created))
    }
    // The rename is made durable by flush(), once for the many chunks of a backup.
    await this.#atomicWrite(dir, id, data, false)
  }

  /**
   * Makes every chunk put so far durable: one fsync per directory touched. Flushes run one after
   * another: a flush called while another syncs the directories it took waits for it, rather than
   * finding nothing left to do and resolving before those chunks are durable.
   */
  async flush (): Promise<void> {
    const previous = this.#flushing
    const current = (async () => {
      if (previous !== undefined) await previous.catch(() => {}) // its directories are dirty again if it failed
      await this.#syncDirtyDirs()
    })()
    this.#flushing = current
    try {
      await current
    } finally {
      if (this.#flushing === current) this.#flushing = undefined
    }
  }

  async #syncDirtyDirs (): Promise<void> {
    const dirs = [...this.#dirtyDirs]
    this.#dirtyDirs.clear()
    try {
      await Promise.all(dirs.map(async (dir) => { await syncDirectory(dir) }))
    } catch (err) {
      for (const dir of dirs) this.#dirtyDirs.add(dir)
      throw ioError(`could not sync the chunk directories of ${this.location}`, err)
    }
  }

  async getChunk (id: string): Promise<Uint8Array | undefined> {
    return await this.#read(this.#chunkPath(id), `chunk ${id}`)
  }

  async deleteChunk (id: string): Promise<void> {
    await this.#delete(this.#chunkPath(id), `chunk ${id}`)
  }

  async * listChunks (): AsyncIterable<string> {
    const root = join(this.location, 'chunks')
    for (const fan of (await this.#list(root, 'the chunk directory')).sort()) {
      if (!/^[0-9a-f]{2}$/.test(fan)) continue
      for (const name of (await this.#list(join(root, fan), `chunk directory ${fan}`)).sort()) {
        if (CHUNK_ID.test(name) && name.startsWith(fan)) yield name
      }
    }
  }

  async putManifest (id: string, data: Uint8Array): Promise<void> {
    this.#manifestPath(id)
    assertData(data)
    await this.flush()
    await this.#atomicWrite(join(this.location, 'manifests'), `${id}.json`, data)
  }

  async getManifest (id: string): Promise<Uint8Array | undefined> {
    return await this.#read(this.#manifestPath(id), `manifest ${id}`)
  }

  /** Deletes a manifest durably: a chunk deleted afterwards can never be missing from a manifest that comes back. */
  async deleteManifest (id: string): Promise<void> {
    await this.#delete(this.#manifestPath(id), `manifest ${id}`)
    await syncDirectory(join(this.location, 'manifests')).catch((err: unknown) => { throw ioError(`could not sync the manifests of ${this.location}`, err) })
  }

  async putIndex (data: Uint8Array): Promise<void> {
    assertData(data)
    await this.#atomicWrite(this.location, 'index.json', data)
  }

  async getIndex (): Promise<Uint8Array | undefined> {
    return await this.#read(join(this.location, 'index.json'), 'the index')
  }

  async * listManifests (): AsyncIterable<string> {
    for (const name of (await this.#list(join(this.location, 'manifests'), 'the manifest directory')).sort()) {
      const id = name.endsWith('.json') ? name.slice(0, -5) : ''
      if (MANIFEST_ID.test(id)) yield id
    }
  }

  /**
   * Leases are rewritten every few seconds while their holder runs: atomically, but not synced (see
   * BackupTarget). Their directory exists only while one does (see deleteLease).
   */
  async putLease (id: string, data: Uint8Array): Promise<void> {
    this.#leasePath(id)
    assertData(data)
    const dir = join(this.location, LEASES)
    for (let attempt = 1; ; attempt++) {
      const temporary = join(dir, `.tmp-${id}.json-${randomBytes(6).toString('hex')}`)
      try {
        await makeDirectories(dir)
        await writeFile(temporary, data)
        await rename(temporary, join(dir, `${id}.json`))
        return
      } catch (err) {
        await unlink(temporary).catch(() => {}) // not there, or gone with the directory
        const code = (err as NodeJS.ErrnoException).code
        // The directory was removed, empty, by another holder's deleteLease in between (also while
        // it was being made: makeDirectories saw it there, then found it gone): made again.
        if (code === 'ENOENT' && attempt < 20) continue
        if (code === 'ENOSPC' || code === 'EDQUOT') throw new GalleonError('NO_SPACE', `the backup target ${this.location} is full; free space there or delete old backups`, { cause: err })
        throw ioError(`could not write lease ${id} to ${dir}`, err)
      }
    }
  }

  async getLease (id: string): Promise<Uint8Array | undefined> {
    return await this.#read(this.#leasePath(id), `lease ${id}`)
  }

  /** Also removes the lease directory once empty, so that a target at rest looks as it always did. */
  async deleteLease (id: string): Promise<void> {
    await this.#delete(this.#leasePath(id), `lease ${id}`)
    await rmdir(join(this.location, LEASES)).catch(() => {}) // ENOTEMPTY: another lease (or a temporary file) is there
  }

  async * listLeases (): AsyncIterable<string> {
    for (const name of (await this.#list(join(this.location, LEASES), 'the lease directory')).sort()) {
      if (isLeaseFile(name)) yield name.slice(0, -5)
    }
  }

  #leasePath (id: unknown): string {
    if (typeof id !== 'string' || !MANIFEST_ID.test(id)) throw new GalleonError('INVALID_ARGUMENT', `a lease id is a lowercase UUID, got ${describe(id)}`)
    return join(this.location, LEASES, `${id}.json`)
  }

  #chunkPath (id: unknown): string {
    if (typeof id !== 'string' || !CHUNK_ID.test(id)) throw new GalleonError('INVALID_ARGUMENT', `a chunk id is 64 lowercase hex digits (a SHA-256), got ${describe(id)}`)
    return join(this.location, 'chunks', id.slice(0, 2), id)
  }

  #manifestPath (id: unknown): string {
    if (typeof id !== 'string' || !MANIFEST_ID.test(id)) throw new GalleonError('INVALID_ARGUMENT', `a manifest id is a lowercase UUID, got ${describe(id)}`)
    return join(this.location, 'manifests', `${id}.json`)
  }

  /**
   * The names in a directory; none if it does not exist. Any other failure is an error: a listing
   * that came back empty because the directory could not be read would hide backups (and chunks).
   */
  async #list (dir: string, what: string): Promise<string[]> {
    try {
      return await readdir(dir)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
      throw ioError(`could not list ${what} of ${this.location}`, err)
    }
  }

  async #read (file: string, what: string): Promise<Uint8Array | undefined> {
    try {
      return new Uint8Array(await readFile(file))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw ioError(`could not read ${what} from ${this.location}`, err)
    }
  }

  async #delete (file: string, what: string): Promise<void> {
    try {
      await unlink(file)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
      throw ioError(`could not delete ${what} from ${this.location}`, err)
    }
  }

  /**
   * Writes `name` in `dir` atomically: temporary file, fsync, rename; then fsyncs the directory
   * (`syncDir`) or leaves that to flush().
   */
  async #atomicWrite (dir: string, name: string, data: Uint8Array, syncDir = true): Promise<void> {
    const temporary = join(dir, `.tmp-${name}-${randomBytes(6).toString('hex')}`)
    try {
      await writeFileAtomically(join(dir, name), data, { temporary, syncDir })
      if (!syncDir) this.#dirtyDirs.add(dir)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOSPC' || code === 'EDQUOT') throw new GalleonError('NO_SPACE', `the backup target ${this.location} is full; free space there or delete old backups`, { cause: err })
      throw ioError(`could not write ${name} to ${dir}`, err)
    }
  }

  async #removeTemporaries (dir: string): Promise<void> {
    const now = Date.now()
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (!name.startsWith('.tmp-')) continue
      const info = await stat(join(dir, name)).catch(() => undefined)
      if (info !== undefined && now - info.mtimeMs > TEMPORARY_MAX_AGE_MS) await rm(join(dir, name), { force: true }).catch(() => {})
    }
  }
}

/** Whether a name in the lease directory is a lease (not a temporary file). */
function isLeaseFile (name: string): boolean {
  return name.endsWith('.json') && MANIFEST_ID.test(name.slice(0, -5))
}

function assertData (data: unknown): asserts data is Uint8Array {
  if (!(data instanceof Uint8Array)) throw new GalleonError('INVALID_ARGUMENT', `backup target data must be a Uint8Array, got ${describe(data)}`)
}

function ioError (what: string, err: unknown): GalleonError {
  if (err instanceof GalleonError) return err
  return new GalleonError('IO_ERROR', `${what}: ${(err as Error).message}`, { cause: err })
}
