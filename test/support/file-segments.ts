// Segment files of the file block store, for tests that read or damage them by hand: finding a
// segment's file (its name holds a random salt), and turning a segment into what a release from
// before salted segments wrote (unsalted records and marks), to test that such stores still recover.

import { readFile, readdir, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { HEADER_BYTES, decodeHeader, encodeRecordHeader, recordCrcMatches, type RecordHeader } from '../../backends/file/record.js'
import { parseSegmentFileName, segmentPath } from '../../backends/file/segment.js'
import { SEGMENT_LIST_NAME } from '../../backends/file/segment-list.js'

/** The segment files in `location`, by id: their paths and salts (undefined for an unsalted one). */
export async function segmentFiles (location: string): Promise<Array<{ id: number, salt: number | undefined, path: string }>> {
  const found: Array<{ id: number, salt: number | undefined, path: string }> = []
  for (const name of await readdir(location)) {
    const parsed = parseSegmentFileName(name)
    if (parsed !== undefined) found.push({ ...parsed, path: join(location, name) })
  }
  return found.sort((a, b) => a.id - b.id)
}

/** Path of segment `id`'s file in `location` (salted or not); throws when there is none. */
export async function segmentFile (location: string, id = 1): Promise<string> {
  const found = (await segmentFiles(location)).find((segment) => segment.id === id)
  if (found === undefined) throw new Error(`no file of segment ${id} in ${location}`)
  return found.path
}

/**
 * Rewrites the salted segment at `path` as a release from before salted segments would have written
 * it: every valid record from its start (up to the first that is not) gets the unsalted magic and a
 * crc from 0, nothing else moves, and the file gets its unsalted name; the store's segment list
 * (which those releases did not keep) is removed. Returns the new path.
 */
export async function unsaltSegment (path: string): Promise<string> {
  const name = path.slice(path.lastIndexOf('/') + 1)
  const parsed = parseSegmentFileName(name)
  if (parsed?.salt === undefined) throw new Error(`${path} is not a salted segment file`)
  const bytes = await readFile(path)
  const header: RecordHeader = { type: 0, flags: 0, volume: 0, index: 0, gen: 0, length: 0 }
  let position = 0
  while (position + HEADER_BYTES <= bytes.byteLength && decodeHeader(bytes, position, header, true)) {
    const end = position + HEADER_BYTES + header.length
    if (end > bytes.byteLength || !recordCrcMatches(bytes, position, header.length, parsed.salt)) break
    encodeRecordHeader(bytes, position, header.type, header.flags, header.volume, header.index, header.gen, header.length === 0 ? undefined : bytes.subarray(position + HEADER_BYTES, end))
    position = end
  }
  await writeFile(path, bytes)
  const directory = path.slice(0, path.lastIndexOf('/'))
  const unsalted = segmentPath(directory, parsed.id)
  await rename(path, unsalted)
  // Those releases kept no segment list either (the one this release wrote names the salted file).
  await rm(join(directory, SEGMENT_LIST_NAME), { force: true })
  return unsalted
}
