// h73: a deleteBackup that finds a backup being taken on its target by another process (a live
// lease there) deletes no unused chunk, and before h73 said so only by `deletedChunks: 0`, which
// reads the same as "nothing was left to collect". Now the result says it (`collectionDeferred`,
// with `deferredReason` naming the backup's process), a policy run's pruning carries it, and
// `galleonfs backup policy run` prints it; a later deletion collects the chunks. The writer is a
// child process (test/support/h69-child.ts) holding its backup between its chunks and its manifest.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { assertWhole, withLeaseChildren, withWriterAndInstance, writeVolume } from './support/lease-children.js'
import { chunksOn, plantOldChunk } from './support/backup-targets.js'
import { tempPlaces } from './support/temp-dir.js'
import { runCli, startDaemonProcess, type RunningDaemon } from './support/daemon.js'

const { root, place } = tempPlaces('galleon-h73-gc-')

describe('h73: a deletion that leaves the collection for later says so', { timeout: 120_000 }, () => {
  it('deleteBackup while another process takes a backup: collectionDeferred names that process; a later deletion collects', async () => {
    const target = place()
    await withWriterAndInstance(async (g, writer, writerPid) => {
      await writeVolume(g, 'base', 1)
      const base = await g.createBackup('base', { target })
      const baseChunks = (await chunksOn(target)).stored
      assert.ok(baseChunks.size > 0)
      // The writer's backup is stored up to its manifest: its chunks are named by no manifest yet.
      const held = await writer.sendStopped({ op: 'backup', target, seed: 2, hold: true })

      // No grace period: only the running backup keeps the base's chunks.
      const deleted = await g.deleteBackup(base.id, { target, chunkGraceSeconds: 0 })
      assert.deepEqual(deleted.deletedBackups, [base.id])
      assert.equal(deleted.deletedChunks, 0)
      assert.equal(deleted.collectionDeferred, true, 'the deletion says it left the collection for later')
      assert.match(deleted.deferredReason ?? '', new RegExp(`a backup running in process ${writerPid} on host `), 'the reason names the backup and its process')
      assert.match(deleted.deferredReason ?? '', /a later deleteBackup on the target collects them/)
      const left = (await chunksOn(target)).stored
      for (const chunk of baseChunks) assert.ok(left.has(chunk), `chunk ${chunk} of the deleted backup is still there`)

      writer.release()
      await assertWhole(target, await held.reply)

      // A later deletion (of another backup, taken now) collects what the first one left.
      await writeVolume(g, 'extra', 3)
      const extra = await g.createBackup('extra', { target })
      const later = await g.deleteBackup(extra.id, { target, chunkGraceSeconds: 0 })
      assert.equal(later.collectionDeferred, false, 'no backup runs: nothing is deferred')
      assert.equal(later.deferredReason, undefined)
      const after = await chunksOn(target)
      const orphans = [...baseChunks].filter((chunk) => !after.named.has(chunk))
      assert.ok(orphans.length > 0, 'the deleted backup had chunks of its own')
      assert.ok(later.deletedChunks >= orphans.length, `the later deletion collected the chunks left (${later.deletedChunks} deleted, ${orphans.length} were left)`)
      for (const chunk of orphans) assert.equal(after.stored.has(chunk), false, `chunk ${chunk} left by the first deletion is collected`)
      assert.deepEqual([...after.stored].sort(), [...after.named].sort(), 'every chunk left is one a backup names')
    })
  })

  it('a policy run whose pruning met a running backup says so; the next run after it finished does not', async () => {
    const target = place()
    await withWriterAndInstance(async (g, writer, writerPid) => {
      await writeVolume(g, 'p', 4)
      await g.createBackupPolicy({ name: 'keep-one', schedule: '0 2 * * *', strategy: 'full', retention: { daily: 1 }, volumes: ['p'], target })
      const first = await g.runBackupPolicy('keep-one')
      assert.equal(first.collectionDeferred, false)
      // A chunk no manifest names, two hours old: one the pruning collects despite the default grace
      // period of an hour. (r31: a policy's pruned backup whose chunks the new backup reuses leaves
      // nothing to collect, so a running backup defers nothing then.)
      const orphan = await plantOldChunk(target, 7)
      const held = await writer.sendStopped({ op: 'backup', target, seed: 5, hold: true })
      // The second backup of the day replaces the first, whose deletion finds the writer's backup running.
      const second = await g.runBackupPolicy('keep-one')
      assert.deepEqual(second.pruned, [first.backups[0]?.id])
      assert.equal(second.collectionDeferred, true)
      assert.equal(second.deferredReasons?.length, 1)
      assert.match(second.deferredReasons?.[0] ?? '', new RegExp(`process ${writerPid} on host `))
      writer.release()
      await held.reply
      const third = await g.runBackupPolicy('keep-one')
      assert.deepEqual(third.pruned, [second.backups[0]?.id])
      assert.equal(third.collectionDeferred, false, 'chunks spared by the grace period are no deferral')
      assert.equal(third.deferredReasons, undefined)
      assert.equal((await chunksOn(target)).stored.has(orphan), false, 'the chunk the second run left is collected by the third')
    })
  })

  it('galleonfs backup policy run prints it', async () => {
    const target = place()
    const storage = place()
    let daemon: RunningDaemon | undefined
    try {
      daemon = await startDaemonProcess(['--storage-path', storage, '--ipc-address', '127.0.0.1:0'], { cwd: root() })
      const cli = async (args: string[]): Promise<{ code: number, stdout: string, stderr: string }> => await runCli((daemon as RunningDaemon).address, args, { cwd: root() })
      const volume = await cli(['volume', 'create', '--name', 'app', '--size', '64K', '--storage-class', 'fast-local-ssd'])
      assert.equal(volume.code, 0, volume.stderr)
      const created = await cli(['backup', 'policy', 'create', 'keep-one', '--schedule', '0 2 * * *', '--strategy', 'full', '--volumes', 'app', '--daily', '1', '--target', target])
      assert.equal(created.code, 0, created.stderr)
      const first = await cli(['backup', 'policy', 'run', 'keep-one'])
      assert.equal(first.code, 0, first.stderr)
      assert.doesNotMatch(first.stdout, /not all deleted/)
      await plantOldChunk(target, 8)
      await withLeaseChildren('test/support/h69-child.ts', 1, async ([writer]) => {
        const held = await writer!.sendStopped({ op: 'backup', target, seed: 6, hold: true })
        const second = await cli(['backup', 'policy', 'run', 'keep-one'])
        assert.equal(second.code, 0, second.stderr)
        assert.match(second.stdout, /policy keep-one: 1 backup\(s\), 1 pruned, 0 error\(s\)\n/)
        assert.match(second.stdout, new RegExp(`the chunks the pruned backups used were not all deleted yet: .*a backup running in process ${writer!.stepped.process.pid as number} on host `))
        assert.match(second.stdout, /the next run of a policy that prunes a backup there collects them/, 'the fix is said in CLI terms')
        const json = JSON.parse((await cli(['--json', 'backup', 'policy', 'run', 'keep-one'])).stdout) as { collectionDeferred: boolean, deferredReasons: string[] }
        assert.equal(json.collectionDeferred, true)
        assert.equal(json.deferredReasons.length, 1)
        writer!.release()
        await held.reply
      })
    } finally {
      if (daemon !== undefined) {
        daemon.child.kill('SIGTERM')
        await daemon.exited
      }
    }
  })
})
