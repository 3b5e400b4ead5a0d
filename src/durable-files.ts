// Writing small files so that they survive a crash: whole or not at all, and durably named.

import { randomBytes } from 'node:crypto'
import { link, open, rename, unlink, type FileHandle } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { makeDirectories } from './make-directories.js'

function isCode (err: unknown, code: string): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === code
}

/**
 * makeDirectories, then syncs the parent of each directory it made (top down), so that the new
 * directories' names survive a power loss like the files later synced in them. A directory that
 * was there already gets its parent synced too (it may have been made by a call that died before
 * its sync), where the parent can be opened.
 */
export async function makeDirectoriesDurably (path: string, mode?: number): Promise<string | undefined> {
  const first = await makeDirectories(path, mode)
  const target = resolve(path)
  // A parent this process may write into but not read (mode 0733) cannot be opened to be synced:
  // nothing more can be done there, and failing would leave the directory made and the call failed.
  const syncParent = async (directory: string): Promise<void> => {
    await syncDirectory(dirname(directory)).catch((err: unknown) => { if (!isCode(err, 'EACCES')) throw err })
  }
  if (first === undefined) {
    await syncParent(target)
    return undefined
  }
  for (let made = target; ; made = dirname(made)) {
    await syncParent(made)
    if (made === first || dirname(made) === made) break
  }
  return first
}

/**
 * Makes creations, renames and deletions in `directory` durable. Platforms that cannot open a
 * directory for syncing (Windows) report EISDIR/EPERM; there is nothing more to do there.
 */
export async function syncDirectory (directory: string): Promise<void> {
  let handle: FileHandle
  try {
    handle = await open(directory, 'r')
  } catch (err) {
    if (isCode(err, 'EISDIR') || isCode(err, 'EPERM')) return
    throw err
  }
  try {
    await handle.sync()
  } catch (err) {
    if (!isCode(err, 'EINVAL') && !isCode(err, 'EPERM')) throw err
  } finally {
    await handle.close()
  }
}

/** Writes all of `data` to an open file and syncs it. */
async function writeAndSync (handle: FileHandle, data: Uint8Array): Promise<void> {
  let done = 0
  while (done < data.byteLength) done += (await handle.write(data, done, data.byteLength - done, done)).bytesWritten
  await handle.sync()
}

/**
 * Replaces `path` with `data` atomically: written to `temporary` (default `<path>.tmp`), synced,
 * renamed over `path`, and the directory synced (unless `syncDir` is false: the caller syncs it
 * later). A failure leaves the old file as it was and removes the temporary one.
 */
export async function writeFileAtomically (path: string, data: Uint8Array, options: { temporary?: string, mode?: number, syncDir?: boolean, exclusive?: boolean } = {}): Promise<void> {
  const temporary = options.temporary ?? `${path}.tmp`
  try {
    // `exclusive`: never follow or reuse a file already at the temporary name (secrets).
    const handle = await open(temporary, options.exclusive === true ? 'wx' : 'w', options.mode ?? 0o644)
    try {
      await writeAndSync(handle, data)
    } finally {
      await handle.close()
    }
    await rename(temporary, path)
  } catch (err) {
    await unlink(temporary).catch(() => {})
    throw err
  }
  if (options.syncDir !== false) await syncDirectory(dirname(path))
}

/**
 * Creates `path` holding `data`, durably, only if it does not exist: false when it does (another
 * process created it first). Whole or not at all: the bytes are written and synced under a
 * temporary name first, then hard-linked to `path` (which fails if `path` exists), so a crash never
 * leaves `path` empty or cut short. Where the file system has no hard links, `path` is created and
 * written in place.
 */
export async function createFileExclusively (path: string, data: Uint8Array, mode = 0o644): Promise<boolean> {
  const temporary = `${path}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`
  const handle = await open(temporary, 'wx', mode)
  try {
    await writeAndSync(handle, data)
  } finally {
    await handle.close()
  }
  try {
    await link(temporary, path)
  } catch (err) {
    if (isCode(err, 'EEXIST')) return false
    if (!isCode(err, 'EPERM') && !isCode(err, 'ENOTSUP') && !isCode(err, 'EOPNOTSUPP')) throw err
    return await createInPlace(path, data, mode)
  } finally {
    await unlink(temporary).catch(() => {})
  }
  await syncDirectory(dirname(path))
  return true
}

/** createFileExclusively without hard links: created, written and synced at its own name. */
async function createInPlace (path: string, data: Uint8Array, mode: number): Promise<boolean> {
  let handle: FileHandle
  try {
    handle = await open(path, 'wx', mode)
  } catch (err) {
    if (isCode(err, 'EEXIST')) return false
    throw err
  }
  try {
    await writeAndSync(handle, data)
  } finally {
    await handle.close()
  }
  await syncDirectory(dirname(path))
  return true
}
