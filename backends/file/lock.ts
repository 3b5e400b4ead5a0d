// Exclusive ownership of a file block store directory: a LOCK file naming the owner (pid, host,
// PID namespace, boot), with takeover of locks left by processes that died.

import { randomBytes } from 'node:crypto'
import { readFileSync, readlinkSync } from 'node:fs'
import { link, readFile, readdir, realpath, rename, stat, unlink, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
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

/** Who holds a lock: enough to tell whether its pid can be checked from here. */
interface Owner {
  pid: number
  host?: string
  /** `pid:[inode]` of the owner's PID namespace (Linux): a pid means something only inside it. */
  pidNamespace?: string
  /** Changes at every boot (Linux): a lock from an earlier boot is stale whatever its pid. */
  bootId?: string
  /**
   * `device:inode` of the directory the lock was taken in. A lock found in another directory of the
   * same host was copied there with the store (`cp -a` of a storage that was open): its owner holds
   * the original, not this copy.
   */
  directory?: string
}

function readProc (read: () => string): string | undefined {
  try {
    return read().trim()
  } catch {
    return undefined
  }
}

const self: Owner = {
  pid: process.pid,
  host: hostname(),
  pidNamespace: readProc(() => readlinkSync('/proc/self/ns/pid')),
  bootId: readProc(() => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8'))
}

/** The lock file's text: the pid on the first line (what older releases wrote and read), then key=value lines. */
function ownerText (owner: Owner): string {
  return `${owner.pid}\n` + Object.entries({ host: owner.host, pidns: owner.pidNamespace, boot: owner.bootId, dir: owner.directory }).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}=${v as string}\n`).join('')
}

function parseOwner (text: string): Owner | undefined {
  const [first, ...rest] = text.split('\n')
  const pid = Number.parseInt(first ?? '', 10)
  if (!Number.isSafeInteger(pid) || pid <= 0) return undefined
  const fields = Object.fromEntries(rest.map((line) => line.split('=')).filter((pair) => pair.length === 2)) as Record<string, string>
  return { pid, host: fields.host, pidNamespace: fields.pidns, bootId: fields.boot, directory: fields.dir }
}

/**
 * Whether the lock's owner may still be running: 'alive', 'dead', or 'unknown' when its pid cannot
 * be checked from here (another host, another PID namespace such as another container).
 */
function ownerState (owner: Owner): 'alive' | 'dead' | 'unknown' {
  if (owner.host !== undefined && owner.host !== self.host) return 'unknown'
  // Same host, an earlier boot: whatever ran then is gone.
  if (owner.bootId !== undefined && self.bootId !== undefined && owner.bootId !== self.bootId) return 'dead'
  if (owner.pidNamespace !== undefined && owner.pidNamespace !== self.pidNamespace) return 'unknown'
  return isAlive(owner.pid) ? 'alive' : 'dead'
}

/** A held directory lock; `release()` gives it up. */
export interface DirectoryLock {
  /** Removes the lock file (if it is still ours) and forgets the location. */
  release (): Promise<void>
}

/**
 * Takes the lock of `directory` or rejects with BUSY. The lock file appears atomically with its
 * content (written to a temporary name, then hard-linked), so a reader never sees a half-written pid.
 * A lock whose pid is no longer alive, or that was taken before the machine last booted, is stale
 * and taken over. A lock taken on another host or in another PID namespace (another container)
 * cannot be checked, so it is never taken over: the error says how to remove it by hand. Limit: a
 * pid reused by an unrelated process makes a stale lock look held.
 */
export async function lockDirectory (directory: string): Promise<DirectoryLock> {
  // The real path: through a symlink (or another spelling of the path) a second store of this
  // process would otherwise find its own pid in the lock, take it over as stale, and share the directory.
  const key = await realpath(directory).catch(() => resolve(directory))
  if (heldByThisProcess.has(key)) throw busy(directory, undefined)
  heldByThisProcess.add(key)
  try {
    const lockPath = join(directory, 'LOCK')
    // Device numbers mean something only on one host (an NFS export has another on each client),
    // so a lock from another host is never judged by them (ownerState says 'unknown').
    const directoryId = await stat(directory).then((info) => `${info.dev}:${info.ino}`, () => undefined)
    const content = ownerText({ ...self, directory: directoryId })
    const temporary = join(directory, `LOCK.${process.pid}.${randomBytes(4).toString('hex')}.tmp`)
    await writeFile(temporary, content).catch(async (err: unknown) => {
      // writeFile creates the file before it writes: a full disk leaves it empty, one more per failed open.
      await unlink(temporary).catch(() => {})
      if (!isCode(err, 'EACCES') && !isCode(err, 'EPERM') && !isCode(err, 'EROFS')) throw err
      const fix = isCode(err, 'EROFS')
        ? 'its file system is mounted read-only, and the store writes when it opens (its lock, recovery): remount it read-write, or copy the store to a writable place'
        : `give the user this process runs as${typeof process.getuid === 'function' ? ` (uid ${process.getuid()})` : ''} write access to ${directory} and everything in it`
      throw new GalleonError('IO_ERROR', `could not lock the block store at ${directory}: ${(err as Error).message}; ${fix}`, { cause: err })
    })
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
        const owner = parseOwner(existing)
        if (owner !== undefined) {
          const copied = owner.directory !== undefined && directoryId !== undefined && owner.directory !== directoryId && owner.host === self.host
          const state = copied ? 'dead' : ownerState(owner)
          if (state === 'unknown') {
            const where = owner.host !== self.host ? `on host ${owner.host as string}` : `in another PID namespace (${owner.pidNamespace as string}: another container?)`
            throw new GalleonError('BUSY', `the block store at ${directory} is locked by process ${owner.pid} ${where}, which cannot be checked from here; stop that process, or if it is gone for sure, delete ${lockPath}`)
          }
          // Our own pid in a lock no store of this process holds: left by a store that was never closed.
          const ours = owner.pid === process.pid && (owner.pidNamespace === undefined || owner.pidNamespace === self.pidNamespace)
          if (state === 'alive' && !ours) throw busy(directory, owner.pid)
        }
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
    // A fresh lock was moved aside: put it back, never over a lock taken meanwhile (link, not rename).
    await link(aside, lockPath).catch(() => {})
    await unlink(aside).catch(() => {})
    throw busy(directory, Number.parseInt(moved, 10))
  }
  await unlink(aside)
}
