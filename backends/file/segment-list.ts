// The segment list of the file block store: a small file naming every segment file that may hold
// records, so that open notices one that is gone instead of reading older versions of its blocks.

import { open, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { crc32 } from '../../src/checksum.js'
import { writeFileAtomically } from '../../src/durable-files.js'
import { GalleonError } from '../../src/errors.js'
import { isCode, parseSegmentFileName, scanSegment } from './segment.js'
import type { StoreState } from './store-state.js'

/** File name of the list in the store directory. */
export const SEGMENT_LIST_NAME = 'SEGMENTS'
/** Name it is written under before it is renamed into place; a leftover one is removed on open. */
export const SEGMENT_LIST_TEMPORARY_NAME = 'SEGMENTS.tmp'

/**
 * Text, one line each: `galleonfs segments 1`, the file name of each listed segment in id order,
 * `crc32 <8 hex>` over every byte before that line. Text so that an operator can read it.
 */
const FIRST_LINE = 'galleonfs segments 1'
const CRC_LINE = /^crc32 ([0-9a-f]{8})$/

/**
 * What an operator writes into the list file to have the next open take the segment files present as
 * they are and write the list anew (see rebuildAdvice): the way to open a store that open refuses
 * because of its list, once the loss it reports is accepted.
 */
export const SEGMENT_LIST_REBUILD = 'rebuild'

/**
 * What reading the list found: absent (a store of an earlier release, or a new one), damaged, the
 * file names it lists, or an operator's request to rebuild it from the files present.
 */
export type SegmentListFile =
  | { kind: 'absent' }
  | { kind: 'damaged', why: string }
  | { kind: 'listed', names: string[] }
  | { kind: 'rebuild' }

/** The sentence of an open refused because of the list at `listPath` that says how to open anyway. */
export function rebuildAdvice (listPath: string): string {
  return `To open it anyway, replace ${listPath} with a file holding the word ${SEGMENT_LIST_REBUILD} (echo ${SEGMENT_LIST_REBUILD} > ${listPath}): ` +
    'the store then takes the segment files present as they are, and starts a new list'
}

/** Reads the list in `directory`. */
export async function readSegmentList (directory: string): Promise<SegmentListFile> {
  let text: string
  try {
    text = await readFile(join(directory, SEGMENT_LIST_NAME), 'latin1')
  } catch (err) {
    if (isCode(err, 'ENOENT')) return { kind: 'absent' }
    throw err
  }
  if (text.trim() === SEGMENT_LIST_REBUILD) return { kind: 'rebuild' }
  const crcAt = text.lastIndexOf('crc32 ')
  const crcLine = CRC_LINE.exec(text.slice(crcAt).replace(/\n$/, ''))
  if (crcAt === -1 || crcLine === null) return { kind: 'damaged', why: 'it has no checksum line' }
  if (parseInt(crcLine[1] as string, 16) !== crc32(Buffer.from(text.slice(0, crcAt), 'latin1'))) return { kind: 'damaged', why: 'its checksum does not match' }
  const lines = text.slice(0, crcAt).split('\n')
  lines.pop() // the empty string after the last line break
  if (lines[0] !== FIRST_LINE) return { kind: 'damaged', why: `its first line is ${JSON.stringify(lines[0] ?? '')}, not ${JSON.stringify(FIRST_LINE)} (a newer GalleonFS may have written it)` }
  return { kind: 'listed', names: lines.slice(1) }
}

/** Encodes a list of segment file names. */
export function encodeSegmentList (names: readonly string[]): Buffer {
  const body = [FIRST_LINE, ...names].join('\n') + '\n'
  const bytes = Buffer.from(body, 'latin1')
  return Buffer.from(`${body}crc32 ${crc32(bytes).toString(16).padStart(8, '0')}\n`, 'latin1')
}

/**
 * Makes the list on disk name exactly the segment files in `state.listed` (as they are when this
 * write starts), atomically and durably: written to a temporary name, fsynced, renamed, directory
 * synced. Writes run one at a time, in call order, so once the promise of a call resolves, the list
 * on disk reflects every change made to `state.listed` before that call.
 */
export function persistSegmentList (state: StoreState): Promise<void> {
  const write = state.listWrites.catch(() => {}).then(async () => {
    const names = [...state.listed.entries()].sort((a, b) => a[0] - b[0]).map(([, name]) => name)
    await writeFileAtomically(join(state.location, SEGMENT_LIST_NAME), encodeSegmentList(names), { temporary: join(state.location, SEGMENT_LIST_TEMPORARY_NAME) })
  })
  state.listWrites = write
  return write
}

/** What open does with the segment files it found, given the list (see checkSegmentList). */
export interface ListCheck {
  /** Segment files (names) the list does not name and that hold no record: remove them. */
  remove: string[]
  /** The list is absent or out of date: write it once the store is recovered. */
  rewrite: boolean
}

/**
 * Checks the segment files found in `directory` (id to file name) against its segment list.
 *
 * The writer lists a new segment once its file exists and before its first record, and compaction
 * takes a segment out of the list before it deletes the file. So after any crash every listed file
 * exists, and a file not listed holds no record anyone needs: one newer than every listed segment is
 * a roll cut short (no record written yet), an older one a compacted segment whose deletion was cut
 * short (its records copied forward and synced). Those are removed. A listed file that is missing
 * was lost after the fact, and its blocks would read older versions or zeros: CORRUPTION.
 *
 * No list: a store of an earlier release (or a new store before its first list was written); every
 * file is taken as it is and the list written. (GalleonFS.open() refuses a storage whose metadata
 * says its file store has a list before the store opens, see src/storage-layout.ts.) A list holding
 * just the word `rebuild` (written by an operator, see rebuildAdvice) is treated the same way. A file newer than every listed one that holds a
 * valid record was written by an earlier release that keeps no list (it opened the store since):
 * the list is out of date, so it is not trusted this once and written anew.
 */
export async function checkSegmentList (directory: string, files: ReadonlyMap<number, string>): Promise<ListCheck> {
  const listPath = join(directory, SEGMENT_LIST_NAME)
  const list = await readSegmentList(directory)
  if (list.kind === 'absent' || list.kind === 'rebuild') return { remove: [], rewrite: true }
  const openAnyway = rebuildAdvice(listPath)
  if (list.kind === 'damaged') {
    throw new GalleonError('CORRUPTION', `the segment list ${listPath} of the file block store is damaged (${list.why}), so open cannot tell whether a segment file is missing. ` +
      `Restore the list from a copy of the storage, or restore the volumes from a backup. ${openAnyway} (a segment file lost meanwhile then goes unnoticed)`)
  }
  const listed = new Map<number, string>()
  for (const name of list.names) {
    const parsed = parseSegmentFileName(name)
    if (parsed === undefined) {
      throw new GalleonError('CORRUPTION', `the segment list ${listPath} of the file block store names ${JSON.stringify(name)}, which is no segment file name. ${openAnyway}`)
    }
    listed.set(parsed.id, name)
  }
  let newestListed = -1
  for (const id of listed.keys()) newestListed = Math.max(newestListed, id)
  const unlisted = [...files].filter(([id, name]) => listed.get(id) !== name)
  for (const [id, name] of unlisted) {
    if (id > newestListed && await holdsRecord(join(directory, name), parseSegmentFileName(name)?.salt)) return { remove: [], rewrite: true }
  }
  const missing = [...listed].filter(([id, name]) => files.get(id) !== name).map(([, name]) => name)
  if (missing.length > 0) {
    const shown = missing.slice(0, 5).join(', ') + (missing.length > 5 ? ` and ${missing.length - 5} more` : '')
    throw new GalleonError('CORRUPTION', `the file block store at ${directory} is missing ${missing.length === 1 ? 'segment file' : `${missing.length} segment files`} ${shown}, ` +
      `which its segment list ${listPath} names as holding records (a segment is listed before its first record and taken out before it is deleted, so no crash explains this); ` +
      'the blocks whose newest version was there would read older versions or zeros, so the store does not open. ' +
      `Put the file back (from wherever it went, or a copy of the storage), or restore the volumes from a backup. ${openAnyway}; ` +
      'then every block the missing file held reads an older version or zeros: scrub the volumes and restore what is wrong from a backup. ' +
      '(A release of GalleonFS from before segment lists that opened this store and compacted it also leaves this; rebuilding the list is then right)')
  }
  return { remove: unlisted.map(([, name]) => name), rewrite: false }
}

const FOUND = new Error('a record was found')

/** Whether the segment file at `path` holds a valid record under its salt (`seed`). */
async function holdsRecord (path: string, seed: number | undefined): Promise<boolean> {
  const handle = await open(path, 'r')
  try {
    // The first valid record answers it: the rest of the file is not read.
    await scanSegment(handle, (await handle.stat()).size, () => { throw FOUND }, { seed })
    return false
  } catch (err) {
    if (err === FOUND) return true
    throw err
  } finally {
    await handle.close()
  }
}
