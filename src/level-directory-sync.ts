// Makes the names LevelDB creates durable before a synced write counts as durable.
//
// LevelDB syncs its directory only when it syncs a manifest. A new write-ahead log (made when the
// memtable fills, and at every open) is written and synced for a while before the next manifest
// sync, and CURRENT is renamed into place at every open without any directory sync. On a file
// system that makes a new name durable only with an fsync of its directory (POSIX; ext4 makes it
// durable with the file's own fsync, through its journal), a power loss then drops the new log
// with every synced write in it, or brings back a CURRENT naming an old manifest
// (test/h63-power-loss.test.ts).

import { readdir } from 'node:fs/promises'
import { syncDirectory } from './durable-files.js'

const HOOKED = Symbol.for('galleonfs.levelDirectorySync')
/**
 * Up to this many names a readdir (about 0.05 ms for a new database's handful) is cheaper than an
 * fsync of the directory; at 1,000 it is about as dear (0.4 ms), at 10,000 it costs 5-15 ms (a level
 * store of 20 GiB holds 10,000 table files of 2 MiB). Past it, every synced write burst syncs.
 */
const MAX_COMPARED_NAMES = 256

/**
 * Hooks `db` (a classic-level database: its private `_put`, `_del` and `_batch`, which every write,
 * sublevels' included, reaches) so that a write with `{ sync: true }` resolves only after an fsync
 * of `location` that started after the write had reached the log, unless the directory holds the
 * same names as at the last such sync (compared while it holds at most MAX_COMPARED_NAMES: a readdir
 * of a few names costs less than an fsync, of thousands far more). A failed check stops the writes
 * (as EIO, which the write latch installed around this hook takes). Concurrent synced
 * writes share one check. Installing it twice does nothing.
 */
export function syncLevelDirectoryOnSyncedWrites (db: object, location: string): void {
  const target = db as Record<PropertyKey, unknown>
  if (target[HOOKED] === true) return
  Object.defineProperty(target, HOOKED, { value: true })
  /** Writes that asked for a directory sync, and how many of them one has covered. */
  let requested = 0
  let covered = 0
  let running: Promise<void> | undefined
  /** The directory's names when it was last synced (undefined: unknown, or too many to compare). */
  let syncedNames: string | undefined
  /** False once the directory held more names than a readdir is worth (it then costs more than the fsync). */
  let compareNames = true
  const syncIfChanged = async (): Promise<void> => {
    let names: string | undefined
    try {
      if (compareNames) {
        const list = await readdir(location)
        if (list.length > MAX_COMPARED_NAMES) compareNames = false
        else names = list.sort().join('/')
        if (names !== undefined && names === syncedNames) return
      }
      await syncDirectory(location)
    } catch (err) {
      const code = (err as { code?: unknown } | null)?.code
      if (code === 'EIO' || code === 'ENOSPC') throw err
      // The write is in LevelDB already: whatever stops the check (EIO, EMFILE, ...) stops the writes
      // (the latch around this hook takes EIO), so that none is reported failed yet kept in this session.
      throw Object.assign(new Error(`could not sync the directory ${location} after a synced write: ${(err as Error).message}`, { cause: err }), { code: 'EIO' })
    }
    syncedNames = names
  }
  const syncCovering = async (ticket: number): Promise<void> => {
    while (covered < ticket) {
      if (running === undefined) {
        const upTo = requested
        running = syncIfChanged().then(() => { covered = Math.max(covered, upTo) }).finally(() => { running = undefined })
      }
      await running
    }
  }
  for (const [name, optionsAt] of [['_put', 2], ['_del', 1], ['_batch', 1]] as const) {
    const write = target[name]
    if (typeof write !== 'function') continue
    target[name] = async function (this: unknown, ...args: unknown[]): Promise<unknown> {
      const result = await (write as (...a: unknown[]) => Promise<unknown>).apply(this, args)
      if ((args[optionsAt] as { sync?: unknown } | undefined)?.sync === true) await syncCovering(++requested)
      return result
    }
  }
}
