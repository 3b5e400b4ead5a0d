// Checks of what a storagePath holds, made before open() creates or changes anything in it: a path
// that is not a storage directory, blocks kept by the other built-in backend, a metadata database
// that is missing, foreign or of a newer format, blocks that are missing.

import { readFile, readdir, rename, stat, unlink, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { GalleonError } from './errors.js'
import { CATALOG_FORMAT } from './volumes/catalog.js'

const SEGMENT_FILE = /^seg-[0-9a-f]{16}(-[0-9a-f]+)?\.log$/

/** The directory each built-in backend keeps its blocks in, under storagePath (README "Backends"). */
const BLOCK_DIRECTORIES: Readonly<Record<string, string>> = { file: 'blocks', level: 'blocks-level' }

async function namesIn (directory: string): Promise<string[] | undefined> {
  try {
    return await readdir(directory)
  } catch {
    return undefined // missing or unreadable: what opens it later reports the problem
  }
}

/**
 * Setting (key of the metadata's settings) recorded once a storage's `file` block store, in its
 * default place, has a segment list (`blocks/SEGMENTS`, see backends/file/segment-list.ts). A file
 * store without a list looks like one of a release from before lists, which the store takes as it
 * is; with this setting a missing list is a list that was lost (perhaps with a segment file).
 */
export const FILE_SEGMENT_LIST_SETTING = 'fileSegmentList'
/** File name of the file store's segment list (backends/file/segment-list.ts). */
const SEGMENT_LIST_FILE = 'SEGMENTS'

/** What a built-in block store directory holds: nothing, a store (possibly empty), or a store with data. */
async function blockStoreState (storagePath: string, backend: string): Promise<'absent' | 'empty' | 'data'> {
  const directory = join(storagePath, BLOCK_DIRECTORIES[backend] as string)
  const names = await namesIn(directory)
  if (names === undefined) return 'absent'
  // A LevelDB directory that lost its CURRENT file still holds data: the level store's own check
  // (assertLevelDirectoryIntact) refuses it with the better message.
  if (backend === 'level') return names.some((name) => name === 'CURRENT' || name.startsWith('MANIFEST-') || /^\d+\.(ldb|sst|log)$/.test(name)) ? 'data' : 'absent'
  const segments = names.filter((name) => SEGMENT_FILE.test(name))
  if (segments.length === 0) return 'absent'
  for (const name of segments) {
    if (await stat(join(directory, name)).then((info) => info.size > 0, () => false)) return 'data'
  }
  return 'empty'
}

/**
 * Refuses a storagePath that is not a storage directory but part of one or another program's
 * database (INVALID_ARGUMENT), and a built-in backend other than the one holding the storage's
 * blocks (INVALID_ARGUMENT: opened with the wrong one, every volume would read as zeros and new
 * writes would go to a second store), and stored blocks without any metadata database beside them
 * (CORRUPTION: recovery would delete every block as belonging to no volume). Reads only.
 */
export async function checkStorageDirectory (storagePath: string, backend: string): Promise<void> {
  const names = await namesIn(storagePath)
  if (names === undefined) return
  if (names.includes('CURRENT') || names.some((name) => name.startsWith('MANIFEST-'))) {
    throw new GalleonError('INVALID_ARGUMENT', `storagePath ${storagePath} is a LevelDB database (it holds CURRENT/MANIFEST files), not a GalleonFS storage directory: a storage's metadata or blocks-level directory, or another program's database. Point storagePath at the directory that holds metadata/ and blocks/ (its parent, if it is part of a storage), or at an empty directory for a new storage`)
  }
  if (names.some((name) => SEGMENT_FILE.test(name))) {
    throw new GalleonError('INVALID_ARGUMENT', `storagePath ${storagePath} holds segment files (seg-*.log): it is the blocks directory of a storage, not the storage directory. Point storagePath at its parent, the directory that holds metadata/ and blocks/`)
  }
  const other = backend === 'file' ? 'level' : backend === 'level' ? 'file' : undefined
  if (other === undefined) return
  const blocks = await blockStoreState(storagePath, backend)
  if (blocks === 'absent' && await blockStoreState(storagePath, other) === 'data') {
    throw new GalleonError('INVALID_ARGUMENT', `the storage at ${storagePath} keeps its blocks in the '${other}' backend (${BLOCK_DIRECTORIES[other] as string}/), not in '${backend}'; open it with { backend: '${other}' }`)
  }
  // Refused here, before an empty metadata database is made (checkStorageMetadata catches an empty
  // one). A database that lost only its CURRENT file is left to assertLevelDirectoryIntact.
  const metadataNames = await namesIn(join(storagePath, 'metadata')) ?? []
  if (blocks === 'data' && !metadataNames.some((name) => name === 'CURRENT' || /^\d+\.(ldb|sst|log)$/.test(name))) throw metadataMissing(storagePath, backend)
}

function metadataMissing (storagePath: string, backend: string): GalleonError {
  const metadataPath = join(storagePath, 'metadata')
  return new GalleonError('CORRUPTION', `the storage at ${storagePath} has blocks in ${join(storagePath, BLOCK_DIRECTORIES[backend] as string)} but its metadata database ${metadataPath} is missing or empty; opening it would find no volumes and delete every block. Restore ${metadataPath} from the copy taken with these blocks, then open again`)
}

/** The few reads of the metadata database these checks need (a ClassicLevel with utf8 keys and values). */
export interface SettingsReader {
  get: (key: string) => Promise<string | undefined>
  keys: (options: { limit: number }) => { all: () => Promise<string[]> }
}

/**
 * Checks the opened metadata database against the storage before the block store opens (which
 * recovers, and may truncate or delete): a database that is not GalleonFS's is refused
 * (INVALID_ARGUMENT) before anything is written to it; a newer metadata format (CORRUPTION) or
 * another block size (INVALID_ARGUMENT) before anything else is touched; metadata missing beside
 * stored blocks (recovery would delete every block as belonging to no volume) and blocks missing
 * beside metadata (every volume would read as zeros) with CORRUPTION.
 */
export async function checkStorageMetadata (storagePath: string, backend: string, db: SettingsReader, blockSize: number | undefined): Promise<void> {
  const metadataPath = join(storagePath, 'metadata')
  const format = await db.get('!settings!format')
  // A custom block store may be registered as `constructor` or `toString`: own names only.
  const builtIn = Object.hasOwn(BLOCK_DIRECTORIES, backend)
  const blocks = builtIn ? await blockStoreState(storagePath, backend) : undefined
  const blocksPath = builtIn ? join(storagePath, BLOCK_DIRECTORIES[backend] as string) : ''
  if (format === undefined) {
    const [key] = await db.keys({ limit: 1 }).all()
    if (key !== undefined) {
      throw new GalleonError('INVALID_ARGUMENT', `${metadataPath} is a LevelDB database that is not GalleonFS metadata (it holds keys such as ${JSON.stringify(key.slice(0, 40))} but no GalleonFS settings); nothing was written to it. Point storagePath at a GalleonFS storage directory or an empty one`)
    }
    if (blocks === 'data') throw metadataMissing(storagePath, backend)
    return
  }
  const stored = parseJson(format)
  if (stored !== CATALOG_FORMAT) {
    throw new GalleonError('CORRUPTION', `metadata format ${String(stored)} at ${metadataPath} is not supported by this version (expects ${CATALOG_FORMAT}); it was written by a newer GalleonFS: open it with that version (nothing was changed: the newer version still reads it)`)
  }
  const storedBlockSize = await db.get('!settings!blockSize').then((text) => text === undefined ? undefined : parseJson(text))
  if (blockSize !== undefined && storedBlockSize !== undefined && storedBlockSize !== blockSize) {
    throw new GalleonError('INVALID_ARGUMENT', `this storage was created with block size ${String(storedBlockSize)}, not ${blockSize}; omit blockSize or pass ${String(storedBlockSize)}`)
  }
  if (blocks === 'absent') {
    throw new GalleonError('CORRUPTION', `the storage at ${storagePath} has metadata but its '${backend}' block store ${blocksPath} is missing, so every volume would read as zeros; restore ${blocksPath} from the copy taken with the metadata (or, if the storage keeps its blocks in another backend, open it with that backend), then open again`)
  }
  if (backend === 'file' && await db.get(`!settings!${FILE_SEGMENT_LIST_SETTING}`) !== undefined) await checkSegmentListPresent(blocksPath)
}

/**
 * Refuses a file store whose segment list is gone, once the metadata says the storage has one:
 * without it the store would take the segment files present as they are, as it takes a store of a
 * release from before lists, and a segment file lost with the list would go unnoticed (its blocks
 * reading older versions or zeros). An operator who accepts that loss writes `rebuild` into the
 * list's place (the file store's own way to open anyway, see backends/file/segment-list.ts).
 */
async function checkSegmentListPresent (blocksPath: string): Promise<void> {
  const listPath = join(blocksPath, SEGMENT_LIST_FILE)
  try {
    await stat(listPath)
    return
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return // unreadable: the store's own open reports it
  }
  throw new GalleonError('CORRUPTION', `the segment list ${listPath} of the file block store is missing, though this storage keeps one (its metadata says so): ` +
    'without it open cannot tell whether a segment file went with it, and the blocks whose newest version was in such a file would read older versions or zeros, so the storage does not open (nothing was changed). ' +
    `Put the list back (from wherever it went, or a copy of the storage taken with these blocks), or restore the volumes from a backup. To open it anyway, write a file ${listPath} holding the word rebuild (echo rebuild > ${listPath}): ` +
    'the store then takes the segment files present as they are and starts a new list; then scrub the volumes and restore what is wrong from a backup')
}

/** A settings value (JSON); text that is not JSON stands for itself, so a message can show it. */
function parseJson (text: string): unknown {
  try {
    return JSON.parse(text) as unknown
  } catch {
    return text
  }
}

/** Who holds a storage open, as far as the storage tells. */
export interface StorageHolder {
  readonly pid: number
  /** The holder's host, when it says (a storage on a shared file system may be held from another). */
  readonly host?: string
  /** When it opened the storage (ISO 8601), when it says. */
  readonly since?: string
}

/**
 * The file naming the process that opened a storage last (written once its metadata database is
 * locked, see openStorageMetadata): the metadata database's lock (LevelDB's LOCK) names nobody.
 */
export const OWNER_FILE = 'owner.json'

/** Whether process `pid` of this host is running. */
function running (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    // EPERM: it exists, and belongs to another user.
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/**
 * Who holds a storage open: the pid in a file block store's LOCK file, else the process the owner
 * file names (a storage on the level backend), when it is still running (a file left by a process
 * that died, or by a version that wrote none, names nobody).
 */
export async function lockHolder (storagePath: string): Promise<StorageHolder | undefined> {
  const text = await readFile(join(storagePath, 'blocks', 'LOCK'), 'utf8').catch(() => undefined)
  const pid = Number.parseInt(text ?? '', 10)
  if (Number.isSafeInteger(pid) && pid > 0) return { pid }
  const owner = parseJson(await readFile(join(storagePath, OWNER_FILE), 'utf8').catch(() => '')) as { pid?: unknown, host?: unknown, since?: unknown } | undefined
  if (typeof owner !== 'object' || owner === null || !Number.isSafeInteger(owner.pid) || (owner.pid as number) <= 0) return undefined
  const host = typeof owner.host === 'string' ? owner.host : undefined
  if ((host === undefined || host === hostname()) && !running(owner.pid as number)) return undefined
  return { pid: owner.pid as number, ...(host === undefined || host === hostname() ? {} : { host }), ...(typeof owner.since === 'string' ? { since: owner.since } : {}) }
}

/**
 * Names this process in the storage's owner file (see OWNER_FILE), for the message of the next
 * process refused the storage while this one holds it. Not synced: after a crash the file names a
 * process that is gone, which lockHolder ignores. A failure only leaves the holder unnamed.
 */
export async function recordHolder (storagePath: string): Promise<void> {
  const path = join(storagePath, OWNER_FILE)
  const temporary = `${path}.${process.pid}.tmp`
  try {
    await writeFile(temporary, JSON.stringify({ pid: process.pid, host: hostname(), since: new Date().toISOString() }) + '\n')
    await rename(temporary, path)
  } catch {
    await unlink(temporary).catch(() => {})
  }
}
