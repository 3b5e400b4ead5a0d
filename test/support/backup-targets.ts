// Backup targets for tests: a directory target whose calls can be intercepted one by one; the
// chunks on a directory target, and an old unused chunk planted there.

import { createHash } from 'node:crypto'
import { utimes } from 'node:fs/promises'
import { join } from 'node:path'
import type { BackupTarget } from '../../src/index.js'
import { DirectoryBackupTarget } from '../../backends/directory/index.js'
import { decodeManifest } from '../../src/backup/format.js'

/**
 * A target named `name` that passes every call to `directory`, except those `overrides` replaces
 * (an override set to undefined removes an optional method, such as touchChunk or chunkTime).
 */
export function delegatingTarget (directory: DirectoryBackupTarget, name: string, overrides: Partial<BackupTarget> = {}): BackupTarget {
  return {
    name,
    location: directory.location,
    open: async () => { await directory.open() },
    close: async () => { await directory.close() },
    hasChunk: async (id) => await directory.hasChunk(id),
    touchChunk: async (id) => await directory.touchChunk(id),
    chunkTime: async (id) => await directory.chunkTime(id),
    putChunk: async (id, data) => { await directory.putChunk(id, data) },
    flush: async () => { await directory.flush() },
    getChunk: async (id) => await directory.getChunk(id),
    deleteChunk: async (id) => { await directory.deleteChunk(id) },
    listChunks: () => directory.listChunks(),
    putManifest: async (id, data) => { await directory.putManifest(id, data) },
    getManifest: async (id) => await directory.getManifest(id),
    deleteManifest: async (id) => { await directory.deleteManifest(id) },
    listManifests: () => directory.listManifests(),
    ...overrides
  }
}

/**
 * A target over `directory` whose chunk checks (hasChunk, touchChunk) wait while it is held: a
 * backup held there has taken its snapshot. `reached` counts the calls that came.
 */
export function gatedChunks (directory: DirectoryBackupTarget): { target: BackupTarget, hold: () => void, release: () => void, readonly reached: number } {
  let gate: Promise<void> | undefined
  let open: (() => void) | undefined
  let reached = 0
  const pass = async (): Promise<void> => { reached++; await gate }
  return {
    target: delegatingTarget(directory, 'gated', {
      touchChunk: async (id) => { await pass(); return await directory.touchChunk(id) },
      hasChunk: async (id) => { await pass(); return await directory.hasChunk(id) }
    }),
    hold: () => { gate ??= new Promise((resolve) => { open = resolve }) },
    release: () => { gate = undefined; open?.() },
    get reached () { return reached }
  }
}

/**
 * A target over `directory` whose `method` call number `nth`, counted from `hold()`, waits until
 * released: `hold()` arms it and gives the moment that call is reached and its release. (A
 * restore's second manifest read is its own, after the first check for mounts and writers; its
 * second chunk read is half-way through its writes.)
 */
export function heldCall (directory: DirectoryBackupTarget, method: 'getManifest' | 'getChunk', nth = 2): { target: BackupTarget, hold: () => { reached: Promise<void>, release: () => void } } {
  let gate: { reached: () => void, held: Promise<void> } | undefined
  let calls = 0
  const pass = async (): Promise<void> => {
    if (gate !== undefined && ++calls === nth) { gate.reached(); await gate.held }
  }
  const overrides: Partial<BackupTarget> = method === 'getManifest'
    ? { getManifest: async (id) => { await pass(); return await directory.getManifest(id) } }
    : { getChunk: async (id) => { await pass(); return await directory.getChunk(id) } }
  return {
    target: delegatingTarget(directory, 'held', overrides),
    hold: () => {
      let release!: () => void
      let reached!: () => void
      const atHold = new Promise<void>((resolve) => { reached = resolve })
      gate = { reached, held: new Promise((resolve) => { release = resolve }) }
      calls = 0
      return { reached: atHold, release: () => { gate = undefined; release() } }
    }
  }
}

/** The chunks stored on the directory target at `path`. */
export async function storedChunks (path: string): Promise<Set<string>> {
  const target = new DirectoryBackupTarget({ path })
  await target.open()
  const stored = new Set<string>()
  for await (const chunk of target.listChunks()) stored.add(chunk)
  await target.close()
  return stored
}

/** The chunks on the directory target at `path`, and those its manifests name. */
export async function chunksOn (path: string): Promise<{ stored: Set<string>, named: Set<string> }> {
  const stored = await storedChunks(path)
  const target = new DirectoryBackupTarget({ path })
  await target.open()
  const named = new Set<string>()
  for await (const id of target.listManifests()) {
    const bytes = await target.getManifest(id)
    if (bytes === undefined) continue
    for (const [, , chunk] of decodeManifest(id, bytes).extents) if (chunk !== null) named.add(chunk)
  }
  await target.close()
  return { stored, named }
}

/**
 * Puts a chunk no manifest names (4 KiB of `seed`) on the directory target at `path`, last touched
 * two hours ago (left by an earlier deletion, say): one a collection deletes despite the default
 * grace period of an hour. Returns its id.
 */
export async function plantOldChunk (path: string, seed: number): Promise<string> {
  const data = new Uint8Array(4096).fill(seed)
  const id = createHash('sha256').update(data).digest('hex')
  const target = new DirectoryBackupTarget({ path })
  await target.open()
  await target.putChunk(id, data)
  await target.close()
  const old = new Date(Date.now() - 2 * 3_600_000)
  await utimes(join(path, 'chunks', id.slice(0, 2), id), old, old)
  return id
}
