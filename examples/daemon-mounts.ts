// The mounts made through the daemon's API, saved in the storage path so a restart mounts them again.

import { readFile } from 'node:fs/promises'
import { join } from 'node:path'

/** Mounts made through the API, kept in the storage path so a restart mounts them again. */
export interface SavedMount { volumeId: string, path: string, options: string[] }

export async function readSavedMounts (storagePath: string): Promise<SavedMount[]> {
  try {
    const list = JSON.parse(await readFile(join(storagePath, 'daemon-mounts.json'), 'utf8')) as SavedMount[]
    return Array.isArray(list) ? list : []
  } catch {
    return []
  }
}

export async function writeSavedMounts (storagePath: string, list: SavedMount[]): Promise<void> {
  const { writeFileAtomically } = await import('../src/durable-files.js')
  await writeFileAtomically(join(storagePath, 'daemon-mounts.json'), new TextEncoder().encode(JSON.stringify(list, null, 2) + '\n'))
}
