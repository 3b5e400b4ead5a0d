// Loads classic-level on first use, so importing galleonfs never needs its native binding; and checks
// a LevelDB directory before classic-level opens it.

import { readdir, realpath, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { AbstractLevel, AbstractSublevel } from 'abstract-level'
import type { ClassicLevel } from 'classic-level'
import { closeOnExecWhere, underDirectory } from './close-on-exec.js'
import { GalleonError } from './errors.js'
import { lazyModule } from './lazy-module.js'

/**
 * An abstract-level database as a caller hands one to GalleonFS (`metadata` of `GalleonFS.open`,
 * `db` of the level block store): a ClassicLevel, a MemoryLevel, another abstract-level
 * implementation, or a sublevel of one. A union because abstract-level types `hooks` and iterators
 * by `typeof this`, which makes neither a ClassicLevel (it adds members) nor a sublevel assignable to
 * `AbstractLevel<any, any, any>`.
 */
export type AnyLevelDatabase = AbstractLevel<any, any, any> | ClassicLevel<any, any> | AbstractSublevel<any, any, any, any>

const classicLevel = lazyModule(async () => await import('classic-level'))

/** The ClassicLevel class, or BACKEND_UNAVAILABLE naming the package to install for `purpose`. */
export async function loadClassicLevel (purpose: string): Promise<typeof import('classic-level').ClassicLevel> {
  try {
    return (await classicLevel()).ClassicLevel
  } catch (err) {
    throw new GalleonError('BACKEND_UNAVAILABLE', `${purpose} needs the classic-level package, which could not be loaded; install it with \`npm install classic-level\` (it ships prebuilt binaries for common platforms)`, { cause: err })
  }
}

/**
 * Refuses (CORRUPTION) a LevelDB directory that holds table files but no `CURRENT` file, the file
 * naming the live manifest. LevelDB with `createIfMissing` (classic-level's default) would take such
 * a directory for a new database, start it empty and delete the tables as obsolete: every block in
 * them lost without an error. A directory that is missing, empty, or holds only what a crash while
 * LevelDB created the database leaves (a manifest, no table) passes. `what` names the store in the
 * message.
 */
export async function assertLevelDirectoryIntact (location: string, what: string): Promise<void> {
  let names: string[]
  try {
    names = await readdir(location)
  } catch {
    // Missing (to be created) or not a directory: classic-level reports what is wrong with it.
    return
  }
  if (names.includes('CURRENT')) return
  // Tables, and write-ahead logs with records in them (a small database, the metadata one say,
  // may hold everything in its log): LevelDB makes a log only after CURRENT, so a log without it
  // is a CURRENT lost, not a creation cut short.
  const held: string[] = []
  for (const name of names) {
    if (/^\d+\.(ldb|sst)$/.test(name)) held.push(name)
    else if (/^\d+\.log$/.test(name) && await stat(join(location, name)).then((info) => info.size > 0, () => false)) held.push(name)
  }
  if (held.length === 0) return
  throw new GalleonError('CORRUPTION', `${what} at ${location} has lost its CURRENT file but holds ${held.length} LevelDB table or log file(s) (${held.slice(0, 3).join(', ')}${held.length > 3 ? ', ...' : ''}); opening it would start an empty database and delete them. Restore the directory from a copy, or rebuild it with ClassicLevel.repair() (which keeps what it can read), then open it again`)
}

/**
 * Sets close-on-exec on the descriptors a ClassicLevel GalleonFS opened at `location` holds (LOCK,
 * LOG, MANIFEST, the log): LevelDB opens them without it, so every child process of the application
 * would hold them, keeping the space of those LevelDB later deletes for as long as it lives (its
 * lock is an fcntl lock, which children do not inherit). Call right after
 * the open. Files LevelDB opens later (the next log, tables) are not covered. Without the native
 * addon it does nothing (see src/close-on-exec.ts).
 */
export async function closeLevelFilesOnExec (location: string): Promise<void> {
  let directory: string
  try {
    directory = await realpath(location)
  } catch {
    return // it was just opened; gone meanwhile leaves nothing of it to mark
  }
  closeOnExecWhere(underDirectory(directory))
}
