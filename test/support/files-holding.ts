// Scans a directory tree for bytes: which files hold a plaintext marker, or a wrapped key, that must
// not be there (the encryption reviews' checks of what reaches the disk).
import { readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'

/** Files under `dir` (paths relative to it, starting with '/') whose bytes contain `needle`. */
export async function filesHolding (dir: string, needle: Buffer): Promise<string[]> {
  const found: string[] = []
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue
    const path = join(entry.parentPath ?? (entry as unknown as { path?: string }).path ?? dir, entry.name)
    // A file deleted meanwhile (a segment compacted away) holds nothing any more.
    const bytes = await readFile(path).catch(() => undefined)
    if (bytes?.includes(needle) === true) found.push(path.slice(dir.length))
  }
  return found
}
