// The file store's check of its files while it is open (BlockStore.checkFiles, which scrub calls): the
// segment list against the directory. Open checks the same at the next open, but a file removed or
// replaced under an open store goes unnoticed until then: reads use the descriptors opened before.

import { readdir, stat } from 'node:fs/promises'
import { basename, join } from 'node:path'
import type { BlockAddress, BlockStoreFileProblem } from '../../src/drivers.js'
import { HEADER_BYTES } from './record.js'
import { isCode, parseSegmentFileName } from './segment.js'
import { SEGMENT_LIST_NAME, readSegmentList } from './segment-list.js'
import type { StoreState } from './store-state.js'

/**
 * Problems with the store's files: a segment the list names that is gone, replaced or cut short (with
 * the block versions of `volume`, or of every volume, that it held); a segment file in the directory
 * that the list does not name; the list itself gone, damaged or not naming what the store holds.
 * Segments being rolled to or deleted (between their file and their list write) are left out.
 */
export async function checkFiles (state: StoreState, volume: number | undefined): Promise<BlockStoreFileProblem[]> {
  const location = state.location
  const listPath = join(location, SEGMENT_LIST_NAME)
  // The list on disk reflects every change made before this, once the writes under way are done;
  // one that began while the last was waited for (a roll, a compaction) is waited for too.
  let writes: Promise<void>
  do {
    writes = state.listWrites
    await writes.catch(() => {})
  } while (state.listWrites !== writes)
  const listed = new Map(state.listed)
  const problems: BlockStoreFileProblem[] = []
  const reopen = 'the next open refuses the store'
  const list = await readSegmentList(location).catch((err: unknown) => ({ kind: 'damaged' as const, why: `it cannot be read: ${(err as Error).message}` }))
  if (list.kind === 'absent' || list.kind === 'rebuild') {
    problems.push({ file: listPath, code: 'CORRUPTION', blocks: [], message: `the segment list ${listPath} of the file block store is ${list.kind === 'absent' ? 'gone' : 'replaced by a request to rebuild it'} (changed from outside while the store is open); ` +
      'unless a segment roll or compaction writes it anew first, the next open takes the segment files present as they are (GalleonFS.open() refuses a storage whose list is gone), so a segment file lost meanwhile would go unnoticed. ' +
      'Put the list back from a copy of the storage, or make sure every segment file is in place before the store closes' })
  } else if (list.kind === 'damaged') {
    problems.push({ file: listPath, code: 'CORRUPTION', blocks: [], message: `the segment list ${listPath} of the file block store is damaged (${list.why}); ${reopen}. Restore it from a copy of the storage, or restore the volumes from a backup` })
  } else if (list.names.join('\n') !== [...listed.entries()].sort((a, b) => a[0] - b[0]).map(([, name]) => name).join('\n') && state.listWrites === writes) {
    // (A list write that began while the file was read may have changed it: no finding then.)
    problems.push({ file: listPath, code: 'CORRUPTION', blocks: [], message: `the segment list ${listPath} of the file block store does not name the segment files the store holds (it names ${list.names.join(', ') || 'none'}); it was changed from outside, and the next open may refuse the store or miss a lost file. Restore it from a copy of the storage taken with these segments` })
  }
  let names: string[]
  try {
    names = await readdir(location)
  } catch (err) {
    return [...problems, { file: location, code: 'IO_ERROR', blocks: [], message: `could not list the file block store's directory ${location}: ${(err as Error).message}` }]
  }
  for (const [id, name] of listed) {
    const segment = state.segments.get(id)
    const handle = segment?.handle
    if (segment === undefined || handle === undefined || basename(segment.path) !== name) continue // being rolled to, or deleted
    const path = join(location, name)
    const held = (): BlockAddress[] => blocksIn(state, id, volume, 0)
    // What the store had written to it before the file is looked at: writes go on meanwhile (a
    // rotation's re-seal, compaction), and the bytes written after the stat are not in its size.
    const written = segment.sealed ? segment.size : segment.acknowledgedBytes
    let onDisk: { ino: number, dev: number, size: number }
    try {
      onDisk = await stat(path)
    } catch (err) {
      if (!isCode(err, 'ENOENT')) throw err
      if (state.segments.get(id) !== segment || !state.listed.has(id)) continue // compacted away meanwhile
      problems.push({ file: path, code: 'CORRUPTION', blocks: held(), message: `segment file ${path}, which the segment list names, is gone from ${location} (removed from outside while the store is open); ` +
        'its blocks still read through the file the store holds open, until it closes; then they read older versions or zeros and the next open refuses the store. ' +
        'Put the file back before closing (copy it from /proc/<pid>/fd of this process if nothing else holds it), or restore the volumes from a backup' })
      continue
    }
    const open = await handle.stat().catch(() => undefined)
    if (open !== undefined && (open.ino !== onDisk.ino || open.dev !== onDisk.dev)) {
      problems.push({ file: path, code: 'CORRUPTION', blocks: held(), message: `segment file ${path} is not the file the store wrote (it was replaced from outside while the store is open); ` +
        'its blocks read from the store\'s own file until it closes, and then from the replacement. Put the store\'s file back, or restore the volumes from a backup' })
      continue
    }
    if (onDisk.size < written) {
      problems.push({ file: path, code: 'CORRUPTION', blocks: blocksIn(state, id, volume, onDisk.size), message: `segment file ${path} is ${onDisk.size} bytes, shorter than the ${written} bytes of records the store wrote to it (cut short from outside); ` +
        'the blocks past its end cannot be read. Restore the file from a copy of the storage, or the volumes from a backup' })
    }
  }
  for (const name of names) {
    const parsed = parseSegmentFileName(name)
    if (parsed === undefined || listed.get(parsed.id) === name) continue
    const segment = state.segments.get(parsed.id)
    if (segment !== undefined && basename(segment.path) === name) continue // being rolled to, or deleted
    const path = join(location, name)
    problems.push({ file: path, code: 'CORRUPTION', blocks: [], message: `segment file ${path} is in the file block store's directory but not in its segment list: the store does not read it, ` +
      'and the next open deletes it (or, if it is newer than every listed segment and holds records, takes the files present as they are). Move it away if it belongs to another store' })
  }
  return problems
}

/** Block versions (of `volume`, or of every volume) whose newest record is in segment `id` at or past `from`. */
function blocksIn (state: StoreState, id: number, volume: number | undefined, from: number): BlockAddress[] {
  const found: BlockAddress[] = []
  for (const address of state.index.addresses(volume)) {
    const location = state.index.get(address)
    if (location !== undefined && location.segment === id && location.offset + HEADER_BYTES + location.length > from) found.push(address)
  }
  return found
}
