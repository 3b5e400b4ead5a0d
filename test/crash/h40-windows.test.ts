// Nodes killed (SIGKILL) between a change of their local catalog and the matching change of the
// cluster's records (h40-windows-child.ts holds one coordinator call and the test kills the child
// there), then reopened on the same etcd: what a user needs must work at the next open.
//   create    createVolume in a 2-copy class, killed before its record is written: the call never
//             answered, so the volume may be gone or usable, but not a copy that refuses all I/O
//             under a name that can no longer be created.
//   created   the same once the record's write landed: the volume is replicated and serves I/O.
//   delete    deleteVolume of a replicated volume, killed after its deletion mark and before its
//             record's delete: the deletion did not happen, the volume is whole and can be deleted.
//   deleted   the same once the record's delete landed: the deletion happened, the copy goes.
//   reshape   migrateVolume of a replicated volume to a 1-copy class, killed once the record naming
//             the new class landed: the volume is in the new class at the next open, whole.
//   dissolve  a cancelled move of a local volume to another node, killed after the volume became
//             local again and before its record went: local, whole, and it can be replicated again.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS, GalleonError } from '../../src/index.js'
import { EtcdCoordinator } from '../../backends/etcd/index.js'
import { MemoryNetwork, MemoryTransport } from '../../backends/memory/index.js'
import { deletedKey, recordKey } from '../../src/replication/records.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from '../support/etcd.js'
import { killAfterReady, type KilledRun } from './support.js'
import { BLOCKS, CLASS, ONE_COPY, VOLUME, blockOf, type Mode } from './h40-windows-child.js'

const CHILD = fileURLToPath(new URL('./h40-windows-child.ts', import.meta.url))
const skip = etcdSkipReason()
const ZEROS = new Uint8Array(4096)

async function until (what: string, check: () => Promise<boolean> | boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!await check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

describe('h40: a node killed between its catalog and the cluster records', { skip }, () => {
  let etcd: EtcdServer
  let root: string
  before(async () => {
    etcd = await startEtcd()
    root = await mkdtemp(join(tmpdir(), 'galleon-h40-'))
  })
  after(async () => {
    await etcd?.stop()
    await rm(root, { recursive: true, force: true })
  })

  /** Runs the child in `mode` until it is killed in its window, then opens node n1 again on its storage. */
  async function killedThenReopened (mode: Mode, check: (g: GalleonFS, coordinator: EtcdCoordinator, run: KilledRun) => Promise<void>): Promise<void> {
    const storagePath = join(root, mode)
    const prefix = `h40-${mode}/`
    const run = await killAfterReady(CHILD, [storagePath, etcd.endpoint, prefix, mode], 0)
    assert.ok(run.killed && run.lines.some((line) => line.startsWith('ready')), `the child was killed in its window: ${run.lines.join(' | ')} ${run.exit.stderr.slice(0, 2000)}`)
    const coordinator = await EtcdCoordinator.connect({ endpoints: [etcd.endpoint], prefix, ttlMs: 2000 })
    const g = await GalleonFS.open({ storagePath, cluster: { nodeId: 'n1', transport: new MemoryTransport({ network: new MemoryNetwork(), nodeId: 'n1' }), coordinator, leaseTtlMs: 2000 } })
    try {
      await check(g, coordinator, run)
    } finally {
      await g.close()
      await coordinator.close()
    }
  }

  it('createVolume in a 2-copy class, killed before its record is written: the name is usable at the next open (the volume serves I/O, or is gone and can be created again)', { timeout: 90_000 }, async () => {
    await killedThenReopened('create', async (g, coordinator) => {
      const found = await g.getVolume(VOLUME).catch((err: unknown) => err)
      if (found instanceof GalleonError && found.code === 'VOLUME_NOT_FOUND') {
        const created = await g.createVolume({ name: VOLUME, sizeBytes: BLOCKS * 4096, storageClass: CLASS })
        assert.ok(await coordinator.get(recordKey(created.id)) !== undefined, 'the volume created again is recorded')
      } else {
        assert.ok(!(found instanceof Error), `getVolume: ${String(found)}`)
      }
      // Whichever it is, it serves I/O: never written, it reads as zeros.
      assert.deepEqual(await g.readBlock(VOLUME, 0), ZEROS)
      await g.writeBlock(VOLUME, 0, blockOf(7))
      assert.deepEqual(await g.readBlock(VOLUME, 0), blockOf(7))
    })
  })

  it('createVolume in a 2-copy class, killed once its record\'s write landed: the volume serves I/O at the next open, this node its primary', { timeout: 90_000 }, async () => {
    await killedThenReopened('created', async (g, coordinator) => {
      const volume = await g.getVolume(VOLUME)
      assert.equal(volume.storageClass, CLASS)
      assert.ok(await coordinator.get(recordKey(volume.id)) !== undefined, 'the record landed')
      assert.deepEqual(await g.readBlock(VOLUME, 0), ZEROS)
      await g.writeBlock(VOLUME, 0, blockOf(7))
      assert.deepEqual(await g.readBlock(VOLUME, 0), blockOf(7))
      assert.equal((await g.replicationStatus(VOLUME)).role, 'primary')
    })
  })

  it('deleteVolume of a replicated volume, killed after its deletion mark and before its record went: the volume is whole at the next open, serves I/O, and deleteVolume again deletes it', { timeout: 90_000 }, async (t) => {
    await killedThenReopened('delete', async (g, coordinator) => {
      const volume = await g.getVolume(VOLUME)
      assert.ok(await coordinator.get(recordKey(volume.id)) !== undefined, 'the record was never deleted')
      // Not asserted (no user-visible effect found): the mark of a deletion that did not happen.
      t.diagnostic(`deletion mark after the reopen: ${(await coordinator.get(deletedKey(volume.id)))?.value ?? 'none'}`)
      for (let i = 0; i < BLOCKS; i++) assert.deepEqual(await g.readBlock(VOLUME, i), blockOf(i), `block ${i}`)
      await g.writeBlock(VOLUME, 0, blockOf(999))
      assert.deepEqual(await g.readBlock(VOLUME, 0), blockOf(999))
      await g.deleteVolume(VOLUME)
      await assert.rejects(g.getVolume(VOLUME), { code: 'VOLUME_NOT_FOUND' })
      assert.equal(await coordinator.get(recordKey(volume.id)), undefined)
      await until('the deletion mark is gone', async () => await coordinator.get(deletedKey(volume.id)) === undefined)
    })
  })

  it('deleteVolume of a replicated volume, killed once its record\'s delete landed: the copy is gone at the next open, and the name can be used again', { timeout: 90_000 }, async () => {
    await killedThenReopened('deleted', async (g, coordinator) => {
      await assert.rejects(g.getVolume(VOLUME), { code: 'VOLUME_NOT_FOUND' })
      const created = await g.createVolume({ name: VOLUME, sizeBytes: BLOCKS * 4096, storageClass: CLASS })
      assert.deepEqual(await g.readBlock(VOLUME, 1), ZEROS, 'a new volume, none of the old data')
      assert.ok(await coordinator.get(recordKey(created.id)) !== undefined)
    })
  })

  it('migrateVolume of a replicated volume to a 1-copy class, killed once its record named the new class: the volume is in that class at the next open, whole, and serves I/O', { timeout: 90_000 }, async (t) => {
    await killedThenReopened('reshape', async (g, coordinator, run) => {
      t.diagnostic(run.lines.find((line) => line.startsWith('ready')) ?? '')
      const volume = await g.getVolume(VOLUME)
      const record = await coordinator.get(recordKey(volume.id))
      assert.ok(record?.value.includes(`"storageClass":"${ONE_COPY}"`) === true, 'the record names the new class')
      await until('the copy here is in the class its record names', async () => (await g.getVolume(VOLUME)).storageClass === ONE_COPY)
      assert.equal((await g.getVolume(VOLUME)).replicas, 1)
      for (let i = 0; i < BLOCKS; i++) assert.deepEqual(await g.readBlock(VOLUME, i), blockOf(i), `block ${i}`)
      await g.writeBlock(VOLUME, 0, blockOf(999))
      assert.deepEqual(await g.readBlock(VOLUME, 0), blockOf(999))
      // The same call again is done already.
      await assert.rejects(g.migrateVolume(VOLUME, { storageClass: ONE_COPY }), { code: 'INVALID_ARGUMENT' })
    })
  })

  it('a cancelled move of a local volume, killed after it became local again and before its record went: local and whole at the next open, and it can be replicated again', { timeout: 90_000 }, async () => {
    await killedThenReopened('dissolve', async (g, coordinator) => {
      const volume = await g.getVolume(VOLUME)
      assert.equal(volume.replicas, 1)
      assert.notEqual(volume.storageClass, CLASS)
      const record = await coordinator.get(recordKey(volume.id))
      assert.ok(record !== undefined, 'the record was never deleted (the window under test)')
      for (let i = 0; i < BLOCKS; i++) assert.deepEqual(await g.readBlock(VOLUME, i), blockOf(i), `block ${i}`)
      await g.writeBlock(VOLUME, 0, blockOf(999))
      assert.deepEqual(await g.readBlock(VOLUME, 0), blockOf(999))
      // n2 died with the child: once its lease is over, no copy is placed there.
      await until('n2 is no longer a healthy member', () => g.cluster?.members.some((m) => m.id === 'n2' && m.healthy) !== true)
      const replicated = await g.migrateVolume(VOLUME, { storageClass: CLASS }, { syncTimeoutMs: 10_000 })
      assert.equal(replicated.storageClass, CLASS)
      const replaced = await coordinator.get(recordKey(volume.id))
      assert.ok(replaced !== undefined && replaced.revision > record.revision, 'the record left behind was replaced')
      assert.deepEqual(await g.readBlock(VOLUME, 0), blockOf(999))
      assert.deepEqual(await g.readBlock(VOLUME, 1), blockOf(1))
    })
  })
})
