// Exclusive ownership of a file block store directory: a LOCK file holding the owner's pid, with
// takeover of locks left by processes that died.

import { randomBytes } from 'node:crypto'
import { link, readFile, readdir, realpath, rename, unlink, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { GalleonError } from '../../src/errors.js'
import { isCode } from './segment.js'

// Locations locked by this process: the pid in the file cannot tell two stores of one process apart.
const heldByThisProcess = new Set<string>()

function isAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    return isCode(err, 'EPERM')
  }
}

function busy (directory: string, pid: number | undefined): GalleonError {
  const owner = pid === undefined || pid === process.pid ? 'another store in this process' : `process ${pid}`
  return new GalleonError('BUSY', `the block store at ${directory} is already open by ${owner}; close it first, or open a different location`)
}

/** A held directory lock; `release()` gives it up. */
export interface DirectoryLock {
  /** Removes the lock file (if it is still ours) and forgets the location. */
  release (): Promise<void>
}

/**
 * Takes the lock of `directory` or rejects with BUSY. The lock file appears atomically with its
 * content (written to a temporary name, then hard-linked), so a reader never sees a half-written pid.
 * A lock whose pid is no longer alive is stale and taken over. Limits: a pid reused by an unrelated
 * process makes a stale lock look held, and a directory shared between hosts is not protected.
 */
export async function lockDirectory (directory: string): Promise<DirectoryLock> {
  // The real path: through a symlink (or another spelling of the path) a second store of this
  // process would otherwise find its own pid in the lock, take it over as stale, and share the directory.
  const key = await realpath(directory).catch(() => resolve(directory))
  if (heldByThisProcess.has(key)) throw busy(directory, undefined)
  heldByThisProcess.add(key)
  try {
    const lockPath = join(directory, 'LOCK')
    const content = `${process.pid}\n`
    const temporary = join(directory, `LOCK.${process.pid}.${randomBytes(4).toString('hex')}.tmp`)
    await writeFile(temporary, content)
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          await link(temporary, lockPath)
          break
        } catch (err) {
          if (!isCode(err, 'EEXIST') || attempt >= 5) throw err
        }
        const existing = await readFile(lockPath, 'utf8').catch((err: unknown) => {
          if (isCode(err, 'ENOENT')) return undefined
          throw err
        })
        if (existing === undefined) continue // released meanwhile: try again
        const pid = Number.parseInt(existing, 10)
        // Our own pid in a lock no store of this process holds: left by a store that was never closed.
        if (Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && isAlive(pid)) throw busy(directory, pid)
        await takeOver(lockPath, existing, directory)
      }
    } finally {
      await unlink(temporary).catch(() => {}) // best effort: the link (if any) holds the content
    }
    await removeLeftovers(directory)
    return {
      release: async () => {
        try {
          const current = await readFile(lockPath, 'utf8').catch(() => undefined)
          if (current === content) await unlink(lockPath)
        } finally {
          heldByThisProcess.delete(key)
        }
      }
    }
  } catch (err) {
    heldByThisProcess.delete(key)
    throw err
  }
}

/**
 * Removes what processes that died while taking or taking over the lock left behind: their
 * temporary and set-aside lock files (named after their pid). Best effort.
 */
async function removeLeftovers (directory: string): Promise<void> {
  const names = await readdir(directory).catch(() => [] as string[])
  for (const name of names) {
    const match = /^LOCK\.(\d+)\.[0-9a-f]+\.tmp$/.exec(name) ?? /^LOCK\.stale-(\d+)-[0-9a-f]+$/.exec(name)
    if (match === null) continue
    const pid = Number(match[1])
    if (pid !== process.pid && !isAlive(pid)) await unlink(join(directory, name)).catch(() => {})
  }
}

/**
 * Removes a stale lock. Renaming it aside first makes the removal atomic: if two processes race to
 * take over the same stale lock, the loser finds a fresh lock in its hands, puts it back and reports BUSY.
 */
async function takeOver (lockPath: string, staleContent: string, directory: string): Promise<void> {
  const aside = `${lockPath}.stale-${process.pid}-${randomBytes(4).toString('hex')}`
  try {
    await rename(lockPath, aside)
  } catch (err) {
    if (isCode(err, 'ENOENT')) return
    throw err
  }
  const moved = await readFile(aside, 'utf8')
  if (moved !== staleContent) {
    await rename(aside, lockPath)
    throw busy(directory, Number.parseInt(moved, 10))
  }
  await unlink(aside)
}
