// Scale defects found by h59, each checked by a count or an ordering (never a time): a backup that
// reads every manifest on its target (twice), listSnapshots scanning every volume once per snapshot, metrics memory per volume that grows with the window for
// volumes doing nothing, and recovery at open holding the event loop for a whole scan of the store.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { GalleonFS, DirectoryBackupTarget, type BlockAddress } from '../src/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { Catalog } from '../src/volumes/catalog.js'
import { withTempDir } from './support/temp-dir.js'

/** A directory target that counts the manifests read from it. */
class CountingTarget extends DirectoryBackupTarget {
  manifestReads = 0
  override async getManifest (id: string): Promise<Uint8Array | undefined> {
    this.manifestReads++
    return await super.getManifest(id)
  }
}

/** A file store that tells whether the event loop got a turn while a whole-store address scan ran. */
class ObservedFileStore extends FileBlockStore {
  scanned = 0
  scanEnded = false
  turnedDuringScan: boolean | undefined
  override async * addresses (options?: { volume?: number }): AsyncIterable<BlockAddress> {
    const whole = options?.volume === undefined
    for await (const address of super.addresses(options)) {
      if (whole && this.scanned++ === 0) setImmediate(() => { this.turnedDuringScan ??= !this.scanEnded })
      yield address
    }
    if (whole) this.scanEnded = true
  }
}

describe('h59 scale defects', () => {
  it('a backup of one volume reads its own manifests, not every manifest on the target', async () => {
    await withTempDir('h59-backup-reads-', async (dir) => {
      const target = new CountingTarget({ path: dir })
      const g = await GalleonFS.open({ inMemory: true, backupTarget: target })
      try {
        for (const name of ['app', 'other']) await g.createVolume({ name, sizeBytes: 64 * 4096 })
        await g.writeBlock('app', 0, new Uint8Array(4096).fill(1))
        await g.createBackup('app', { strategy: 'incremental' })
        const OTHERS = 24
        for (let k = 0; k < OTHERS; k++) {
          await g.writeBlock('other', k % 64, new Uint8Array(4096).fill(k + 1))
          await g.createBackup('other', { strategy: 'incremental' })
        }
        await g.writeBlock('app', 5, new Uint8Array(4096).fill(200))
        target.manifestReads = 0
        const next = await g.createBackup('app', { strategy: 'incremental' })
        assert.equal(next.strategy, 'incremental')
        // Reading (and hashing) all OTHERS manifests of the other volume, twice (the base search
        // and the index rewrite), made each backup cost O(backups on the target), and a series of
        // backups of many volumes to one target quadratic.
        assert.ok(target.manifestReads <= 3, `a backup of a volume with 1 earlier backup read ${target.manifestReads} manifests, with ${OTHERS} backups of another volume on the target`)
        assert.equal((await g.listBackups('app')).length, 2)
        assert.equal((await g.listBackups()).length, OTHERS + 2)
        const verified = await g.verifyBackup(next.id)
        assert.equal(verified.ok, true)
        assert.equal(verified.indexCurrent, true, 'the index lists the new backup')
        const restored = await g.restoreBackup(next.id, { name: 'app-copy' })
        assert.deepEqual(await g.readBlock(restored.id, 5), new Uint8Array(4096).fill(200))
        assert.deepEqual(await g.readBlock(restored.id, 0), new Uint8Array(4096).fill(1))
      } finally {
        await g.close()
      }
    })
  })

  it('listSnapshots looks the clones of each snapshot up, not through every volume once per snapshot', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    const original = Object.getOwnPropertyDescriptor(Catalog.prototype, 'volumes') as PropertyDescriptor
    try {
      await g.createVolume({ name: 'db', sizeBytes: 16 * 4096 })
      for (let i = 0; i < 20; i++) await g.createVolume({ name: `other${i}`, sizeBytes: 4096 })
      const SNAPSHOTS = 50
      for (let s = 0; s < SNAPSHOTS; s++) await g.createSnapshot('db', `s${s}`)
      const clone = await g.cloneVolume({ volume: 'db', snapshot: 's3' }, 'db-s3')
      let scans = 0
      Object.defineProperty(Catalog.prototype, 'volumes', { ...original, value: function (this: Catalog, ...args: unknown[]) { scans++; return original.value.apply(this, args) } })
      const listed = await g.listSnapshots('db')
      Object.defineProperty(Catalog.prototype, 'volumes', original)
      assert.equal(listed.length, SNAPSHOTS)
      assert.deepEqual(listed.find((s) => s.name === 's3')?.clones, [clone.id])
      assert.ok(listed.filter((s) => s.name !== 's3').every((s) => s.clones.length === 0))
      // Each snapshot's clones came from a scan of every volume record: O(snapshots x volumes),
      // 620 ms (in one turn of the event loop) for 400 snapshots among 8,000 volumes.
      assert.ok(scans <= 2, `one listSnapshots of ${SNAPSHOTS} snapshots scanned every volume ${scans} times`)
    } finally {
      Object.defineProperty(Catalog.prototype, 'volumes', original)
      await g.close()
    }
  })

  it('an idle volume does not hold metrics memory in proportion to metricsWindowSeconds', async () => {
    const g = await GalleonFS.open({ inMemory: true, metricsWindowSeconds: 3600 })
    try {
      const VOLUMES = 40
      const before = process.memoryUsage().arrayBuffers
      for (let i = 0; i < VOLUMES; i++) await g.createVolume({ name: `v${i}`, sizeBytes: 1 << 20 })
      const perVolume = (process.memoryUsage().arrayBuffers - before) / VOLUMES
      // One-second buckets of a 110-bucket latency histogram for an hour are 3.3 MB a volume: 4,000
      // volumes with an hour's window would want 13 GB once each has done some I/O every second.
      assert.ok(perVolume < 256 * 1024, `each volume holds ${Math.round(perVolume / 1024)} KiB of metrics buffers with a 3600 s window`)
      await g.writeBlock('v0', 0, new Uint8Array(4096).fill(1))
      const metrics = await g.getVolumeMetrics('v0')
      assert.equal(metrics.writeOps, 1)
    } finally {
      await g.close()
    }
  })

  it('recovery at open gives the event loop a turn while it scans a large store', async () => {
    await withTempDir('h59-open-scan-', async (dir) => {
      const BLOCKS = 120_000
      const metadata = join(dir, 'metadata')
      const location = join(dir, 'blocks')
      const g = await GalleonFS.open({ metadata: new ClassicLevel(metadata), blockStore: new FileBlockStore({ location }) })
      try {
        await g.createVolume({ name: 'big', sizeBytes: BLOCKS * 4096 })
        const chunk = new Uint8Array(1000 * 4096).fill(9)
        for (let block = 0; block < BLOCKS; block += 1000) await g.write('big', block * 4096, chunk)
      } finally {
        await g.close()
      }
      const store = new ObservedFileStore({ location })
      const again = await GalleonFS.open({ metadata: new ClassicLevel(metadata), blockStore: store })
      try {
        assert.equal(store.scanned, BLOCKS, 'recovery scanned every stored block')
        assert.ok(store.scanEnded)
        // A timer, socket or lease keep-alive waiting on the loop must get its turn during a scan
        // of BLOCKS addresses; with it, a daemon opening a store of millions of blocks stalls for seconds.
        assert.equal(store.turnedDuringScan, true, 'the event loop got no turn during the whole recovery scan')
        assert.ok((await again.readBlock('big', BLOCKS - 1)).every((byte) => byte === 9))
      } finally {
        await again.close()
      }
    })
  })
})
