// Review r24 of ac77577 (the mount manager keeps its mounts by id, by mount point and by volume):
// after every way a mount comes or goes (a mount, one the driver fails, an unmount, a forced one,
// one the driver refuses, one the driver reports IO_ERROR for, a forced volume deletion, close),
// what listMounts() shows must be what the path and volume lookups act on: a mount point is free
// again exactly when its mount is gone, openVolumeFile(path) finds exactly the listed mounts, the
// ReadWriteOnce check and deleteVolume/restoreSnapshot see exactly the volume's listed mounts.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { resolve } from 'node:path'
import { GalleonFS, GalleonError, type MountDriver, type MountedVolume } from '../src/index.js'

/** A mount driver whose next mount or unmount can be made to fail. */
class ScriptedDriver implements MountDriver {
  readonly name = 'scripted'
  readonly mounted = new Set<string>()
  failMount: GalleonError | undefined
  failUnmount: { err: GalleonError, unmounts: boolean } | undefined
  async mount (volume: MountedVolume): Promise<void> {
    const fail = this.failMount
    this.failMount = undefined
    if (fail !== undefined) throw fail
    this.mounted.add(volume.path)
  }

  async unmount (path: string): Promise<void> {
    const fail = this.failUnmount
    this.failUnmount = undefined
    if (fail === undefined || fail.unmounts) this.mounted.delete(path)
    if (fail !== undefined) throw fail.err
  }
}

function code (err: unknown): string | undefined {
  return (err as { code?: string }).code
}

async function rejectsWith (promise: Promise<unknown>, expected: string, what: string): Promise<void> {
  await assert.rejects(promise, (err: unknown) => { assert.equal(code(err), expected, `${what}: ${String(err)}`); return true })
}

describe('review r24: the mount index agrees with the mounts', () => {
  it('after mounts, failed mounts, unmounts and driver failures, paths and volumes see exactly the listed mounts', async () => {
    const driver = new ScriptedDriver()
    const g = await GalleonFS.open({ inMemory: true, mount: driver })
    try {
      await g.createVolume({ name: 'a', sizeBytes: '1M' })
      await g.createVolume({ name: 'b', sizeBytes: '1M' })
      const paths = (): string[] => g.mounts.listMounts().map((m) => m.path).sort()

      // A mount the driver fails is nowhere: its path is free, the volume has no writer.
      driver.failMount = new GalleonError('IO_ERROR', 'scripted mount failure')
      await rejectsWith(g.mounts.mountVolume('a', '/r24/a'), 'IO_ERROR', 'failed mount')
      assert.deepEqual(paths(), [])
      await rejectsWith(g.mounts.openVolumeFile('/r24/a'), 'INVALID_ARGUMENT', 'file on a mount that failed')
      const id = await g.mounts.mountVolume('a', '/r24/a')
      assert.deepEqual(paths(), [resolve('/r24/a')])

      // The ReadWriteOnce writer check sees it; another path for b is fine; a's path is taken.
      await rejectsWith(g.mounts.mountVolume('a', '/r24/a2'), 'BUSY', 'second read-write mount')
      await rejectsWith(g.mounts.mountVolume('b', '/r24/a'), 'BUSY', 'mount over a mount point')
      await g.mounts.mountVolume('b', '/r24/b')
      await g.mounts.mountVolume('a', '/r24/a-ro', { readOnly: true })
      const file = await g.mounts.openVolumeFile('/r24/a')
      await file.close()

      // The driver refuses an unmount: the mount stays, everywhere.
      driver.failUnmount = { err: new GalleonError('BUSY', 'scripted: in use'), unmounts: false }
      await rejectsWith(g.mounts.unmountVolume('/r24/a'), 'BUSY', 'refused unmount')
      assert.deepEqual(paths(), [resolve('/r24/a'), resolve('/r24/a-ro'), resolve('/r24/b')].sort())
      await rejectsWith(g.mounts.mountVolume('a', '/r24/a3'), 'BUSY', 'writer check after a refused unmount')
      await rejectsWith(g.deleteVolume('a'), 'BUSY', 'deleting a volume still mounted')
      await (await g.mounts.openVolumeFile('/r24/a')).close()

      // Unmounted, but background writes failed (IO_ERROR): the mount is gone, everywhere.
      driver.failUnmount = { err: new GalleonError('IO_ERROR', 'scripted: write-behind failed'), unmounts: true }
      await rejectsWith(g.mounts.unmountVolume(id), 'IO_ERROR', 'unmount with a failed write')
      assert.deepEqual(paths(), [resolve('/r24/a-ro'), resolve('/r24/b')])
      await rejectsWith(g.mounts.openVolumeFile('/r24/a'), 'INVALID_ARGUMENT', 'file on a mount that is gone')
      // Its path and its writer's place are free again: the same mount can be made once more.
      const again = await g.mounts.mountVolume('a', '/r24/a')
      assert.notEqual(again, id)
      await g.createSnapshot('a', 's')
      await rejectsWith(g.restoreSnapshot('a', 's'), 'BUSY', 'revert of a volume mounted read-write')

      // By path, forced, with a file open: gone; a's read-only mount stays.
      const open = await g.mounts.openVolumeFile('/r24/a')
      await rejectsWith(g.mounts.unmountVolume('/r24/a'), 'BUSY', 'unmount with a file open')
      await g.mounts.unmountVolume('/r24/a', { force: true })
      await rejectsWith(open.read(new Uint8Array(16)), 'NOT_OPEN', 'file of a forced unmount')
      assert.deepEqual(paths(), [resolve('/r24/a-ro'), resolve('/r24/b')])

      // Its read-write mount gone, a revert goes ahead (read-only mounts do not stop one); a
      // deletion is refused while the read-only mount stands, and a forced one releases it, and only it.
      await g.restoreSnapshot('a', 's')
      await rejectsWith(g.deleteVolume('a'), 'BUSY', 'deleting a volume mounted read-only')
      await g.deleteVolume('a', { force: true })
      assert.deepEqual(paths(), [resolve('/r24/b')])
      assert.deepEqual([...driver.mounted].sort(), [resolve('/r24/b')])
      // A new volume of that name at those paths: nothing of the old mounts stands in the way.
      await g.createVolume({ name: 'a', sizeBytes: '1M' })
      await g.mounts.mountVolume('a', '/r24/a')
      await g.mounts.mountVolume('a', '/r24/a-ro', { readOnly: true })
      await g.deleteVolume('a', { force: true })
      assert.deepEqual(paths(), [resolve('/r24/b')])
    } finally {
      await g.close()
    }
    assert.deepEqual([...driver.mounted], [], 'close() left mounts behind')
  })
})
