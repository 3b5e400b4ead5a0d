// Space held back on a storage's disk, so that a disk the storage filled can still be opened.
//
// LevelDB writes to open (its log becomes a table, a new log and manifest), and so may the block
// store's recovery. On a disk the storage itself filled, nothing else frees space, so without a
// reserve the storage could not be opened to delete a volume and make room: the operator would
// have to grow the disk first. As ext4's reserved blocks and ZFS's slop space do, a file of zeros
// holds a little space back: made at open when the disk has ample room, deleted by an open that
// failed for lack of space, which then tries once more.

import { constants } from 'node:fs'
import { open, statfs, unlink } from 'node:fs/promises'
import { join } from 'node:path'

/** The reserve file, in the storage directory. */
export const RESERVE_FILE = 'reserved-space'
const MIN_RESERVE_BYTES = 256 * 1024
/** Enough for LevelDB to turn two full logs (its 4 MiB write buffer each: metadata, `level` store) into tables. */
const MAX_RESERVE_BYTES = 8 * 1024 * 1024
/** The reserve is made only while the disk has this many times its size free. */
const ROOM_FACTOR = 4
const WRITE_BYTES = 256 * 1024

/** How large the reserve of a file system of `totalBytes` is: 1/64 of it, from 256 KiB to 8 MiB. */
export function reserveBytes (totalBytes: number): number {
  return Math.min(MAX_RESERVE_BYTES, Math.max(MIN_RESERVE_BYTES, Math.floor(totalBytes / 64 / 4096) * 4096))
}

/**
 * Makes the reserve in `storagePath` when it is missing and the disk has room for it several times
 * over. Best effort: any failure leaves no reserve (and no partial file) and is not reported, since
 * the storage works without one. Returns whether a reserve is in place.
 */
export async function ensureReserve (storagePath: string): Promise<boolean> {
  const path = join(storagePath, RESERVE_FILE)
  let handle
  // A reserve already there counts only when whole: an open killed while it wrote the zeros, or a
  // power loss before they reached the disk, leaves it short, and a short one frees too little.
  let made = false
  let from = 0
  try {
    handle = await open(path, 'wx', 0o600)
    made = true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') return false
    try {
      // Never through a symbolic link (or into a FIFO): the reserve is this storage's own file.
      handle = await open(path, constants.O_RDWR | constants.O_NOFOLLOW)
      const found = await handle.stat()
      if (!found.isFile()) {
        await handle.close()
        return true
      }
      // Only written blocks hold space: a file of full size with holes (a power loss on a file
      // system that records the size first, a copy that kept holes) is written again from its start.
      from = found.blocks * 512 >= found.size ? found.size : 0
    } catch {
      await handle?.close().catch(() => {})
      return true
    }
  }
  try {
    const fs = await statfs(storagePath)
    const bytes = reserveBytes(fs.blocks * fs.bsize)
    if (from >= bytes) {
      await handle.close()
      return true
    }
    if (fs.bavail * fs.bsize < (bytes - from) * ROOM_FACTOR) throw new Error('not enough room for a reserve')
    // Written, not sparse: only written blocks hold space.
    const zeros = new Uint8Array(Math.min(WRITE_BYTES, bytes))
    for (let at = from; at < bytes; at += zeros.byteLength) await handle.write(zeros, 0, Math.min(zeros.byteLength, bytes - at), at)
    await handle.datasync()
    await handle.close()
    return true
  } catch {
    await handle.close().catch(() => {})
    if (made) await unlink(path).catch(() => {})
    return !made
  }
}

/** Deletes the reserve in `storagePath`; resolves to whether there was one to delete. */
export async function releaseReserve (storagePath: string): Promise<boolean> {
  try {
    await unlink(join(storagePath, RESERVE_FILE))
    return true
  } catch {
    return false
  }
}
