// Review r19 of aa7c3c2 (the space reserve made whole at open): a reserve that has its full size
// but holds no space (a sparse file: a power loss on a file system that extends the size before
// the data blocks, a copy made with holes), and a reserve path that is a symbolic link.
import { describe, it, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, stat, symlink, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { RESERVE_FILE, reserveBytes } from '../src/space-reserve.js'
import { unmountAll } from './support/tmpfs.js'
import { opensOnFullDisk, storageOnTmpfs } from './support/reserve-storage.js'

const temporary: string[] = []

after(async () => {
  await unmountAll()
  for (const dir of temporary) await rm(dir, { recursive: true, force: true })
})

describe('review r19: the space reserve', () => {
  it('a reserve of full size that holds no space (sparse) is made whole by the next open with room, so a full disk still opens', async (t) => {
    const storage = await storageOnTmpfs('16m', 'galleon-r19-')
    if ('skip' in storage) { t.skip(storage.skip); return }
    const { storagePath, reserve } = storage
    const bytes = reserveBytes(16 << 20)
    assert.ok((await stat(reserve)).blocks * 512 >= bytes, 'a fresh reserve holds its space')
    // Its size says whole, its blocks were never written: what a file system that records the size
    // before the data leaves after a power loss, or what a sparse copy of the storage makes.
    await truncate(reserve, 0)
    await truncate(reserve, bytes)
    const g = await GalleonFS.open({ storagePath })
    await g.close()
    const after = await stat(reserve)
    assert.ok(after.blocks * 512 >= bytes, `an open with ample room makes the reserve hold its ${bytes} bytes again (it holds ${after.blocks * 512} of its ${after.size})`)
    await opensOnFullDisk(storage.dir, storagePath)
  })

  it('a reserve path that is a symbolic link to a file outside the storage is not followed: that file is not written', async () => {
    const root = await mkdtemp(join(tmpdir(), 'galleon-r19-link-'))
    temporary.push(root)
    const storagePath = join(root, 'store')
    const g0 = await GalleonFS.open({ storagePath })
    await g0.close()
    const outside = join(root, 'notes.txt')
    await writeFile(outside, 'keep me\n')
    await rm(join(storagePath, RESERVE_FILE))
    await symlink(outside, join(storagePath, RESERVE_FILE))
    const g = await GalleonFS.open({ storagePath })
    await g.close()
    assert.equal(await readFile(outside, 'utf8'), 'keep me\n', 'open() appended zeros to the file the reserve link points to')
  })
})
