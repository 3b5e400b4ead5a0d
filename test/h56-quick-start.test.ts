// README "Quick start": the sentences after the program (test/readme.test.ts runs the program itself).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { BackupStrategy, GalleonFS, WriteConcern, isGalleonError } from '../src/index.js'

describe('README Quick start', () => {
  it('run twice on one directory: the second createVolume is VOLUME_EXISTS and changes nothing; getVolume(name) picks the volume up with its data', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'h56-quick-'))
    try {
      let g = await GalleonFS.open({ storagePath: dir })
      const first = await g.createVolume({ name: 'orders', sizeBytes: '256M', labels: { app: 'shop' } })
      await g.writeBlock('orders', 0, new Uint8Array(first.blockSize).fill(0x2a), WriteConcern.WriteDurable)
      await g.write(first.id, 10_000, new TextEncoder().encode('hello, galleon'))
      await g.close()
      g = await GalleonFS.open({ storagePath: dir })
      try {
        await assert.rejects(g.createVolume({ name: 'orders', sizeBytes: '1G', labels: { app: 'other' } }), (err: unknown) => isGalleonError(err, 'VOLUME_EXISTS'))
        const again = await g.getVolume('orders')
        assert.equal(again.id, first.id)
        assert.equal(again.sizeBytes, 256 * 2 ** 20)
        assert.deepEqual(again.labels, { app: 'shop' })
        assert.ok((await g.readBlock(again, 0)).every((byte) => byte === 0x2a))
        assert.equal(new TextDecoder().decode(await g.read(again, 10_000, 14)), 'hello, galleon')
        assert.equal(await g.getVolumeUsage(again), 8192, 'only the two blocks written take space')
        assert.equal((await g.listVolumes()).length, 1)
      } finally {
        await g.close()
      }
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  // "Every method that takes a volume accepts its id, its name, or a Volume object." A Volume object
  // of another namespace must reach that volume, not a same-named one of the caller's namespace.
  it('every method takes a Volume object, and reaches that volume even when the caller\'s namespace has one of the same name', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'h56-quick-'))
    const g = await GalleonFS.open({ inMemory: true, backupTarget: join(dir, 'backups') })
    try {
      const decoy = await g.createVolume({ name: 'x', sizeBytes: '1M' })
      const team = await g.createVolume({ name: 'x', namespace: 'team', sizeBytes: '1M' })
      const block = new Uint8Array(4096).fill(1)
      await g.writeBlock(team, 0, block)
      await g.write(team, 4096, new Uint8Array(10).fill(2), WriteConcern.WriteAcknowledged)
      await g.flush(team)
      await g.trim(team, 8192, 4096)
      assert.equal((await g.getVolume(team)).id, team.id)
      assert.equal(await g.getVolumeUsage(team), 8192)
      assert.equal((await g.getVolumeUsageDetails(team)).liveBytes, 8192)
      assert.equal((await g.getVolumeMetrics(team)).volumeId, team.id)
      assert.equal((await g.createSnapshot(team, 's1')).volumeId, team.id)
      assert.equal((await g.listSnapshots(team)).length, 1)
      assert.deepEqual(await g.read({ volume: team, snapshot: 's1' }, 0, 4096), block)
      await g.writeBlock(team, 5, block)
      assert.deepEqual([...await g.listChangedBlocks(team, { from: 's1' })], [5])
      assert.equal((await g.scrub(team)).volumeId, team.id)
      await g.setQoSPolicy(team, { limits: { iops: 1000 } })
      assert.notEqual(await g.getQoSPolicy(team), undefined)
      await g.clearQoSPolicy(team)
      assert.equal((await g.expandVolume(team, '2M')).id, team.id)
      assert.equal((await g.restoreSnapshot(team, 's1')).id, team.id)
      assert.equal((await g.createBackup(team, { strategy: BackupStrategy.Full })).volumeId, team.id)
      const file = await g.mounts.openVolumeFile(team)
      await file.close()
      const clone = await g.cloneVolume(team, 'copy')
      assert.equal(clone.namespace, 'team')
      assert.deepEqual(await g.readBlock(clone, 0), block)
      // The same-named volume of the default namespace was never touched.
      const after = await g.getVolume(decoy.id)
      assert.equal(after.sizeBytes, decoy.sizeBytes)
      assert.equal(await g.getVolumeUsage(decoy), 0)
      assert.equal((await g.listSnapshots(decoy)).length, 0)
      await g.deleteVolume(clone)
      await g.deleteVolume(team, { force: true })
      assert.deepEqual((await g.listVolumes()).map((v) => v.id), [decoy.id])
    } finally {
      await g.close()
      await rm(dir, { recursive: true, force: true })
    }
  })
})
