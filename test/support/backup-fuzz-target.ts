// What a directory backup target holds, read from its files (not through GalleonFS), for
// test/backup-model-fuzz.test.ts: a summary to show a refused request changed nothing, and the
// chunks it holds against those its manifests name.

import { readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { decodeManifest } from '../../src/backup/format.js'

/** Everything a target holds, to show a refused request changed nothing. */
export async function targetState (path: string): Promise<string> {
  const manifests = (await readdir(join(path, 'manifests')).catch(() => [])).sort()
  const chunks: string[] = []
  for (const fan of (await readdir(join(path, 'chunks')).catch(() => [])).sort()) for (const name of (await readdir(join(path, 'chunks', fan))).sort()) chunks.push(name)
  const index = await readFile(join(path, 'index.json'), 'utf8').catch(() => '')
  return JSON.stringify({ manifests, chunks, index })
}

/** The chunks a target holds, and those its manifests name. */
export async function chunkUse (path: string): Promise<{ held: Set<string>, named: Set<string> }> {
  const held = new Set<string>()
  for (const fan of await readdir(join(path, 'chunks')).catch(() => [])) for (const name of await readdir(join(path, 'chunks', fan))) held.add(name)
  const named = new Set<string>()
  for (const file of await readdir(join(path, 'manifests'))) {
    if (!file.endsWith('.json')) continue
    const id = file.slice(0, -'.json'.length)
    for (const [, , chunk] of decodeManifest(id, new Uint8Array(await readFile(join(path, 'manifests', file)))).extents) if (chunk !== null) named.add(chunk)
  }
  return { held, named }
}
