// Stops the writes to a LevelDB database once one failed to reach its log, until it is reopened.
// LevelDB refuses later writes by itself only after a failed log *sync*: after a failed log *write*
// (EIO, ENOSPC) it goes on appending, its log writer counting the lost record's bytes as written,
// so every later record lands where the log's 32 KiB block framing does not expect it, and the
// next open drops them as corruption without an error (test/h60-eio.test.ts: 34 of 40 durable
// block writes and 36 of 60 volume creations gone after one EIO).

import { isNoSpaceError } from './abstract-block-store.js'
import { GalleonError } from './errors.js'

const LATCH = Symbol.for('galleonfs.levelWriteLatch')

interface Latch {
  /** The failure that stopped the writes; undefined while writes are allowed. */
  failure: unknown
  what: string
}

/** Whether a LevelDB write error may have left its log in an unknown state (an I/O error, a full disk). */
function stopsWrites (err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  // EIO: a failed sync of the database's directory (see level-directory-sync.ts).
  return code === 'LEVEL_IO_ERROR' || code === 'EIO' || isNoSpaceError(err)
}

/**
 * Makes `db` (an abstract-level database or sublevel: its private `_put`, `_del`, `_batch` and
 * `_clear`, and its chained batches' `_write`, which every write reaches, sublevels' included)
 * refuse every write after one failed with an I/O error or a full disk, until `db` is opened again.
 * The failing write rejects with a GalleonError (IO_ERROR, or the raw error on a full disk, which
 * callers report as NO_SPACE); later writes reject with IO_ERROR or NO_SPACE saying to reopen.
 * `what` names the database in messages. Installing it again on the same database only renames it.
 */
export function latchLevelWrites (db: object, what: string): void {
  const target = db as Record<PropertyKey, unknown>
  const existing = target[LATCH] as Latch | undefined
  if (existing !== undefined) {
    existing.what = what
    return
  }
  const latch: Latch = { failure: undefined, what }
  Object.defineProperty(target, LATCH, { value: latch })
  const open = target._open
  if (typeof open === 'function') {
    target._open = async function (this: unknown, ...args: unknown[]): Promise<unknown> {
      const opened = await (open as (...a: unknown[]) => Promise<unknown>).apply(this, args)
      latch.failure = undefined
      return opened
    }
  }
  // _clear too: classic-level deletes a range with WriteBatches through the same log.
  for (const name of ['_put', '_del', '_batch', '_clear']) {
    const write = target[name]
    if (typeof write === 'function') target[name] = latched(latch, write as Write)
  }
  // And a chained batch (db.batch().put().write()): classic-level's is written by its own native
  // _write, not through _batch (abstract-level's default chained batch, a sublevel's included,
  // calls _batch, which the latch already covers).
  const chainedBatch = target._chainedBatch
  if (typeof chainedBatch === 'function') {
    target._chainedBatch = function (this: unknown, ...args: unknown[]): unknown {
      const batch = (chainedBatch as (...a: unknown[]) => Record<string, unknown>).apply(this, args)
      const write = batch._write
      if (typeof write === 'function') batch._write = latched(latch, write as Write)
      return batch
    }
  }
}

type Write = (...args: unknown[]) => Promise<unknown>

/** `write`, refused once the latch is set, and setting it when it fails with an I/O error or a full disk. */
function latched (latch: Latch, write: Write): Write {
  return async function (this: unknown, ...args: unknown[]): Promise<unknown> {
    if (latch.failure !== undefined) throw stopped(latch)
    let result: unknown
    try {
      result = await write.apply(this, args)
    } catch (err) {
      if (!stopsWrites(err)) throw err
      latch.failure ??= err
      if (isNoSpaceError(err)) throw err
      throw new GalleonError('IO_ERROR', `a write to ${latch.what} failed (${(err as Error).message}); it takes no more writes: check the disk, then close and reopen the instance (what was stored before is kept)`, { cause: err })
    }
    // Another write failed while this one was in flight: this one may have been appended after the
    // failed record, where the next open cannot read it, so it is not acknowledged.
    if (latch.failure !== undefined) throw stopped(latch)
    return result
  }
}

function stopped (latch: Latch): GalleonError {
  const detail = (latch.failure as Error)?.message ?? String(latch.failure)
  if (isNoSpaceError(latch.failure)) {
    return new GalleonError('NO_SPACE', `${latch.what} takes no more writes since one failed on a full disk (${detail}); free space on it, then close and reopen the instance`, { cause: latch.failure })
  }
  return new GalleonError('IO_ERROR', `${latch.what} takes no more writes since one failed (${detail}): LevelDB would store later changes where its next open cannot read them; check the disk, then close and reopen the instance`, { cause: latch.failure })
}
