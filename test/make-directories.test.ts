// makeDirectories, the `mkdir -p` of the storage path, the file store, FUSE mount points, backup
// targets and the daemon's token directory: it settles where Node's recursive mkdir retries forever.

import { describe, it, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { makeDirectories } from '../src/make-directories.js'
import { BackupStrategy, GalleonFS } from '../src/index.js'
import { rejectsWithCode } from './support/assertions.js'

const dirs: string[] = []
after(async () => { await Promise.all(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true }))) })
async function tempDir (): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'galleon-mkdirs-'))
  dirs.push(dir)
  return dir
}

/** Under /proc a directory cannot be made, and the kernel answers ENOENT (Node's recursive mkdir loops on it). */
const UNDER_PROC = '/proc/galleonfs-no-such/deeper'
const NO_PROC = process.platform !== 'linux' ? 'needs /proc (Linux)' : false

describe('makeDirectories', () => {
  it('makes missing parents, resolves to the first directory made, and to undefined when all were there', async () => {
    const root = await tempDir()
    assert.equal(await makeDirectories(join(root, 'a', 'b', 'c')), join(root, 'a'))
    assert.ok((await stat(join(root, 'a', 'b', 'c'))).isDirectory())
    assert.equal(await makeDirectories(join(root, 'a', 'b', 'c')), undefined)
    assert.equal(await makeDirectories(join(root, 'a', 'd')), join(root, 'a', 'd'))
    // Made with the mode asked for (less the umask, which never takes the owner's bits).
    await makeDirectories(join(root, 'private', 'inner'), 0o700)
    assert.equal((await stat(join(root, 'private', 'inner'))).mode & 0o777, 0o700)
    // Many at once over the same parents: every one is made, none fails on another's work.
    await Promise.all(Array.from({ length: 20 }, async (_, i) => await makeDirectories(join(root, 'x', 'y', String(i)))))
    for (let i = 0; i < 20; i++) assert.ok((await stat(join(root, 'x', 'y', String(i)))).isDirectory())
  })

  it('fails with the system\'s error when a file is in the way', async () => {
    const root = await tempDir()
    await writeFile(join(root, 'file'), 'x')
    await assert.rejects(makeDirectories(join(root, 'file')), { code: 'EEXIST' })
    await assert.rejects(makeDirectories(join(root, 'file', 'below')), { code: 'ENOTDIR' })
  })

  it('fails, instead of never settling, where the system cannot make a directory and answers ENOENT', { skip: NO_PROC, timeout: 20_000 }, async () => {
    await assert.rejects(makeDirectories(UNDER_PROC), { code: 'ENOENT' })
  })

  it('open() with a storage path there, and a backup to a target there, fail with IO_ERROR naming the path', { skip: NO_PROC, timeout: 20_000 }, async () => {
    await assert.rejects(GalleonFS.open({ storagePath: UNDER_PROC }), rejectsWithCode('IO_ERROR', /could not create the storage directory \/proc\/galleonfs-no-such\/deeper/))
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '64K' })
      await assert.rejects(g.createBackup('v', { strategy: BackupStrategy.Full, target: UNDER_PROC }), rejectsWithCode('IO_ERROR', /could not create the backup directory/))
      assert.deepEqual((await g.listSnapshots('v')).map((s) => s.name), [], 'the failed backup left no snapshot')
    } finally {
      await g.close()
    }
  })
})
