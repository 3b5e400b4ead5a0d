// A restoreBackup writing into a volume against calls made through the API on the same volume
// (write, writeBlock, trim, restoreSnapshot, deleting the restore's own snapshot): they are refused
// with BUSY while the restore writes, as mounts, files and NBD writers are, so the restored volume
// is exactly the backup, and a failed restore can always put the volume back.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { RESTORE_SIZE as SIZE, backedUp, withHeldRestore } from './support/restore-setup.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'restore-api-writes-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

const code = (err: unknown): string => `${(err as { code?: string }).code ?? ''}: ${(err as Error).message}`

describe('restoreBackup and calls through the API', () => {
  it('write, writeBlock and trim of a volume a restore writes into are refused with BUSY; the restored volume is the backup, and writes work again after it', async () => {
    await withHeldRestore(root, 'existing', async (g, hold) => {
      const { id, backed } = await backedUp(g)
      const held = hold()
      const restoring = g.restoreBackup(id, { volume: 'v' })
      await held.reached
      const block = new Uint8Array(4096).fill(9)
      const refusals = await Promise.all([
        g.write('v', 3 << 20, block).then(() => 'written', code),
        g.writeBlock('v', 5, block).then(() => 'written', code),
        g.trim('v', 1 << 20, 1 << 20).then(() => 'trimmed', code)
      ])
      for (const refusal of refusals) assert.match(refusal, /^BUSY: .*restor.*v/)
      held.release()
      await restoring
      assert.deepEqual(await g.read('v', 0, SIZE), backed, 'the volume reads exactly as the backup')
      await g.write('v', 0, block)
      assert.deepEqual(await g.read('v', 0, 4096), block)
    })
  })

  it('writes into a new volume a restore is creating are refused with BUSY while it writes', async () => {
    await withHeldRestore(root, 'new', async (g, hold) => {
      const { id, backed } = await backedUp(g)
      const held = hold()
      const restoring = g.restoreBackup(id, { name: 'copy' })
      await held.reached
      assert.match(await g.write('copy', 0, new Uint8Array(4096).fill(9)).then(() => 'written', code), /^BUSY: .*restor.*copy/)
      held.release()
      await restoring
      assert.deepEqual(await g.read('copy', 0, SIZE), backed)
    })
  })

  it('restoreSnapshot of a volume a restore writes into is refused with BUSY; the restored volume is the backup', async () => {
    await withHeldRestore(root, 'revert', async (g, hold) => {
      const { id, backed } = await backedUp(g)
      await g.createSnapshot('v', 'sevens')
      const held = hold()
      const restoring = g.restoreBackup(id, { volume: 'v' })
      await held.reached
      assert.match(await g.restoreSnapshot('v', 'sevens').then(() => 'reverted', code), /^BUSY: .*restor.*v/)
      held.release()
      await restoring
      assert.deepEqual(await g.read('v', 0, SIZE), backed, 'the volume reads exactly as the backup')
      await g.restoreSnapshot('v', 'sevens')
      assert.deepEqual(await g.read('v', 0, 4096), new Uint8Array(4096).fill(7), 'reverts work again after it')
    })
  })

  it('a restore cancelled through its signal says the restore was cancelled, and puts the volume back', async () => {
    await withHeldRestore(root, 'cancel', async (g, hold) => {
      const { id, current } = await backedUp(g)
      const held = hold()
      const controller = new AbortController()
      const restoring = g.restoreBackup(id, { volume: 'v', signal: controller.signal }).then(() => 'restored', code)
      await held.reached
      controller.abort()
      held.release()
      assert.match(await restoring, /^CANCELLED: the restore was cancelled/)
      assert.deepEqual(await g.read('v', 0, SIZE), current, 'the volume is put back as it was')
    })
  })

  it('the safety snapshot of a restore writing into a volume cannot be deleted (BUSY, also with force) until the restore is over; then it is gone', async () => {
    await withHeldRestore(root, 'safety', async (g, hold) => {
      const { id, backed } = await backedUp(g)
      const held = hold()
      const restoring = g.restoreBackup(id, { volume: 'v' })
      await held.reached
      const safety = (await g.listSnapshots('v')).find((snapshot) => snapshot.name.startsWith('pre-restore-'))
      assert.ok(safety !== undefined, 'the restore took its safety snapshot')
      for (const options of [{}, { force: true }]) {
        assert.match(await g.deleteSnapshot('v', safety.name, options).then(() => 'deleted', code), /^BUSY: snapshot pre-restore-.* puts it back to if it fails/)
      }
      held.release()
      await restoring
      assert.deepEqual(await g.read('v', 0, SIZE), backed)
      assert.deepEqual((await g.listSnapshots('v')).filter((snapshot) => snapshot.name.startsWith('pre-restore-')), [], 'the restore deleted its snapshot once over')
    })
  })
})
