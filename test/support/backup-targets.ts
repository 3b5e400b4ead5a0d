// Backup targets for tests: a directory target whose calls can be intercepted one by one.

import type { BackupTarget } from '../../src/index.js'
import type { DirectoryBackupTarget } from '../../backends/directory/index.js'

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
