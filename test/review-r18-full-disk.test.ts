// Review r18 of e8432ad (a full disk): the space reserve when a previous open left it short, and a
// full disk that is not the storage's (a backup target's) reported as the storage's.
import { describe, it, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readdir, rm, stat, truncate } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, BackupStrategy } from '../src/index.js'
import { DirectoryBackupTarget } from '../backends/directory/index.js'
import { MemoryBlockStore } from '../backends/memory/index.js'
import { GalleonError } from '../src/errors.js'
import { bytesOf } from './conformance/fixtures.js'
import { delegatingTarget } from './support/backup-targets.js'
import { RESERVE_FILE, reserveBytes } from '../src/space-reserve.js'
import { tmpfs, unmountAll } from './support/tmpfs.js'
import { opensOnFullDisk, storageOnTmpfs } from './support/reserve-storage.js'

const temporary: string[] = []

after(async () => {
  await unmountAll()
  for (const dir of temporary) await rm(dir, { recursive: true, force: true })
})

describe('review r18: the space reserve', () => {
  it('a reserve file left short (an open killed while it wrote the zeros, or a power loss before they reached the disk) is made whole by the next open with room, so a full disk still opens', async (t) => {
    const storage = await storageOnTmpfs('16m', 'galleon-r18-')
    if ('skip' in storage) { t.skip(storage.skip); return }
    const { storagePath, reserve } = storage
    assert.equal((await stat(reserve)).size, reserveBytes(16 << 20))
    // What ensureReserve leaves when its process dies after open(path, 'wx') and the first write
    // (it is never synced either, so a power loss can leave it short too).
    await truncate(reserve, 4096)
    const g = await GalleonFS.open({ storagePath })
    await g.close()
    assert.equal((await stat(reserve)).size, reserveBytes(16 << 20), 'an open with ample room makes the reserve whole again')
    await opensOnFullDisk(storage.dir, storagePath)
  })
})

describe('review r18: a full disk that is not the storage\'s', () => {
  it('a backup target whose own disk is full (a raw ENOSPC from a BackupTarget driver) is not reported as the storage\'s disk, to be fixed by reopening the instance', async () => {
    const root = await mkdtemp(join(tmpdir(), 'galleon-r18-target-'))
    temporary.push(root)
    const directory = new DirectoryBackupTarget({ path: join(root, 'backups') })
    const target = delegatingTarget(directory, 'nfs-like', {
      putChunk: async () => { throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' }) }
    })
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.writeBlock('v', 0, bytesOf(4096, 1))
      const err = await g.createBackup('v', { strategy: BackupStrategy.Full, target }).then(() => undefined, (e: unknown) => e as Error & { code?: string })
      assert.ok(err !== undefined, 'the backup fails')
      assert.equal(err.code, 'NO_SPACE')
      // The storage (here in memory) has all the room it needs: the error must point at the
      // target, not tell the user to free space on the storage's disk and reopen the instance.
      assert.doesNotMatch(err.message, /disk holding the storage|reopen the instance/, err.message)
      assert.match(err.message, /backup target/, err.message)
    } finally {
      await g.close()
    }
  })
})

describe('review r18: a NO_SPACE at open that is not the storage disk\'s', () => {
  it('a block store driver refusing to open with NO_SPACE of its own (a quota of a remote store) neither costs the storage its reserve nor is opened twice', async (t) => {
    const mount = await tmpfs('16m', 'galleon-r18-')
    if ('skip' in mount) { t.skip(mount.skip); return }
    const storagePath = join(mount.dir, 'store')
    let opens = 0
    let refuse = false
    class QuotaStore extends MemoryBlockStore {
      protected override async _open (): Promise<void> {
        opens++
        if (refuse) throw new GalleonError('NO_SPACE', 'the bucket holding the blocks is over its quota; raise the quota')
      }
    }
    const blockStore = new QuotaStore()
    const g = await GalleonFS.open({ storagePath, blockStore })
    await g.close()
    assert.ok((await readdir(storagePath)).includes(RESERVE_FILE), 'a reserve is made while the disk has room')
    refuse = true
    opens = 0
    await assert.rejects(GalleonFS.open({ storagePath, blockStore }), { code: 'NO_SPACE' })
    assert.equal(opens, 1, 'the open is not tried again: the storage\'s disk has room, so its reserve cannot help')
    assert.ok((await readdir(storagePath)).includes(RESERVE_FILE), 'the reserve stays: the storage\'s disk is not full')
  })
})
