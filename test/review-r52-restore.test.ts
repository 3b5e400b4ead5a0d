// Review r52: a restoreBackup into an existing volume against the other ways into it. A mount is
// refused while the restore writes, and refuses it (4e909ee); so are writers of the volume that are
// not mounts (a writable VolumeFile, an NBD client connected read-write, which holds one), as a
// revert refuses them, and nothing new opens the volume while the restore writes into it.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { GalleonFS } from '../src/index.js'
import { DirectoryBackupTarget } from '../backends/directory/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { NbdClient } from './support/nbd-client.js'
import { delegatingTarget, heldCall } from './support/backup-targets.js'
import { RESTORE_SIZE as SIZE, backedUp } from './support/restore-setup.js'

const exec = promisify(execFile)

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'r52-restore-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

const code = (err: unknown): string => `${(err as { code?: string }).code ?? ''}: ${(err as Error).message}`

/** An instance whose target holds, while `hold` is set, the restore's chunk reads after the first. */
async function heldRestore (name: string): Promise<{ g: GalleonFS, hold: () => { reached: Promise<void>, release: () => void } }> {
  const { target, hold } = heldCall(new DirectoryBackupTarget({ path: join(root, `${name}-target`) }), 'getChunk')
  const g = await GalleonFS.open({ storagePath: join(root, name), backupTarget: target })
  return { g, hold }
}


describe('r52: restoreBackup into an existing volume and the volume\'s writers that are not mounts', () => {
  it('a restore into a volume with a writable file open straight on it is refused with BUSY and changes nothing; closed, the restore goes through', async () => {
    const { g } = await heldRestore('writer')
    try {
      const { id, backed, current } = await backedUp(g)
      const file = await g.mounts.openVolumeFile('v')
      await assert.rejects(g.restoreBackup(id, { volume: 'v' }), (err) => /^BUSY: .*writer/.test(code(err)))
      assert.deepEqual(await g.read('v', 0, SIZE), current)
      assert.deepEqual((await g.listSnapshots('v')).map((s) => s.name).filter((name) => name.startsWith('pre-restore-')), [])
      await file.close()
      await g.restoreBackup(id, { volume: 'v' })
      assert.deepEqual(await g.read('v', 0, SIZE), backed)
    } finally {
      await g.close()
    }
  })

  it('a restore that finds a writable file opened after its first check, once it claims the volume, is refused with BUSY and changes nothing', async () => {
    // The restore's own read of the manifest (the second; the first finds the backup, before the
    // restore's first check) waits while held: the file opens between that check and the claim.
    const { target, hold } = heldCall(new DirectoryBackupTarget({ path: join(root, 'late-writer-target') }), 'getManifest')
    const g = await GalleonFS.open({ storagePath: join(root, 'late-writer'), backupTarget: target })
    try {
      const { id, current } = await backedUp(g)
      const held = hold()
      const restoring = g.restoreBackup(id, { volume: 'v' }).then(() => 'restored', code)
      await held.reached
      const file = await g.mounts.openVolumeFile('v')
      held.release()
      assert.match(await restoring, /^BUSY: .*writer/)
      assert.deepEqual(await g.read('v', 0, SIZE), current, 'the volume with a writer was not restored over')
      assert.deepEqual((await g.listSnapshots('v')).map((s) => s.name).filter((name) => name.startsWith('pre-restore-')), [])
      await file.close()
    } finally {
      await g.close()
    }
  })

  it('while a restore writes into a volume, openVolumeFile of it is refused with BUSY, writable or not, and so is an NBD client (it would hold a read-only file, and read the volume half restored); afterwards both work', async () => {
    const { g, hold } = await heldRestore('during')
    const server = await NbdServer.listen(g, { host: '127.0.0.1', port: 0 })
    let release = (): void => {}
    try {
      const { id, backed } = await backedUp(g)
      const held = hold()
      release = held.release
      const reached = held.reached
      const restoring = g.restoreBackup(id, { volume: 'v' })
      restoring.catch(() => {})
      await reached
      await assert.rejects(g.mounts.openVolumeFile('v'), (err) => /^BUSY: .*restor/.test(code(err)))
      await assert.rejects(g.mounts.openVolumeFile('v', { readOnly: true }), (err) => /^BUSY: .*restor/.test(code(err)))
      // Since review r69 an NBD client reading the volume holds a read-only file on it, as a
      // reader: refused as the file is (before, it was served the volume half restored, read-only).
      await assert.rejects(exec('nbdinfo', ['--json', `nbd://127.0.0.1:${server.port}/v`]), /server replied with error to opt_go/)
      const client = await NbdClient.connect(server.port, { closeTimeoutMs: 3_000 })
      await client.hello()
      await assert.rejects(client.go('v'), /GO v refused: 80000003 a backup is being restored into volume v; mount or open it once the restore has finished/)
      client.socket.destroy()
      release()
      await restoring
      assert.deepEqual(await g.read('v', 0, SIZE), backed)
      const after = JSON.parse((await exec('nbdinfo', ['--json', `nbd://127.0.0.1:${server.port}/v`])).stdout) as { exports: Array<{ is_read_only: boolean }> }
      assert.equal(after.exports[0]?.is_read_only, false)
      await (await g.mounts.openVolumeFile('v')).close()
    } finally {
      release()
      await server.close()
      await g.close()
    }
  })

  it('a restore cancelled while it writes releases the volume: it is put back, and mounts and writable files work again', async () => {
    const { g, hold } = await heldRestore('cancel')
    let release = (): void => {}
    try {
      const { id, current } = await backedUp(g)
      const held = hold()
      release = held.release
      const reached = held.reached
      const controller = new AbortController()
      const restoring = g.restoreBackup(id, { volume: 'v', signal: controller.signal }).then(() => 'restored', code)
      await reached
      await assert.rejects(g.mounts.mountVolume('v', join(root, 'cancel-m')), (err) => /^BUSY: .*restor/.test(code(err)))
      controller.abort()
      release()
      assert.match(await restoring, /^CANCELLED/)
      assert.deepEqual(await g.read('v', 0, SIZE), current, 'put back as it was')
      await g.mounts.mountVolume('v', join(root, 'cancel-m'))
      await g.mounts.unmountVolume(join(root, 'cancel-m'))
      await (await g.mounts.openVolumeFile('v')).close()
    } finally {
      release()
      await g.close()
    }
  })

  it('a mount of a snapshot of the volume, made before or while the restore writes, does not refuse it (it never shows the volume)', async () => {
    const { g, hold } = await heldRestore('snapshot-mount')
    let release = (): void => {}
    try {
      const { id, backed } = await backedUp(g)
      await g.createSnapshot('v', 's1')
      await g.createSnapshot('v', 's2')
      await g.mounts.mountVolume({ volume: 'v', snapshot: 's1' }, join(root, 'snapshot-mount-1'))
      const held = hold()
      release = held.release
      const restoring = g.restoreBackup(id, { volume: 'v' })
      await held.reached
      await g.mounts.mountVolume({ volume: 'v', snapshot: 's2' }, join(root, 'snapshot-mount-2'))
      release()
      await restoring
      assert.deepEqual(await g.read('v', 0, SIZE), backed)
      assert.equal(g.mounts.listMounts().length, 2)
    } finally {
      release()
      await g.close()
    }
  })

  it('a restore that fails after a writable file was tried during it puts the volume back (the file was refused, so nothing keeps the put-back revert from running)', async () => {
    const directory = new DirectoryBackupTarget({ path: join(root, 'failing-target') })
    let reads = 0
    let held: Promise<void> | undefined
    let release = (): void => {}
    let reached!: () => void
    const atHold = new Promise<void>((resolve) => { reached = resolve })
    // The second chunk read waits while held, then fails: the restore fails half-way.
    const target = delegatingTarget(directory, 'failing', {
      getChunk: async (id) => {
        if (held !== undefined && ++reads === 2) { reached(); await held; throw new Error('injected chunk read failure') }
        return await directory.getChunk(id)
      }
    })
    const g = await GalleonFS.open({ storagePath: join(root, 'failing'), backupTarget: target })
    try {
      const { id, current } = await backedUp(g)
      held = new Promise((resolve) => { release = resolve })
      const restoring = g.restoreBackup(id, { volume: 'v' }).then(() => 'restored', code)
      await atHold
      const opened = await g.mounts.openVolumeFile('v').then(() => 'opened', code)
      release()
      assert.match(await restoring, /injected chunk read failure/)
      // Before, the file was opened, the put-back revert was refused for its writer, and the
      // volume was left refusing all I/O as half restored.
      assert.deepEqual(await g.read('v', 0, SIZE), current, 'put back as it was')
      assert.match(opened, /^BUSY/)
    } finally {
      release()
      await g.close()
    }
  })
})
