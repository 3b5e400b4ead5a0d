// README "QoS", "Write concerns" and "Encryption at rest": the claims no other test checked, against
// real components (the file backend, its metadata database read back after close).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { GalleonErrorCode } from '../src/index.js'
import { rejectsWithCode } from './support/assertions.js'
import { withTempDir } from './support/temp-dir.js'
import { ClassicLevel } from 'classic-level'
import { GalleonFS, WriteConcern, type BlockStore } from '../src/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { until } from './support/wait.js'

const BLOCK = 4096

const withDir = withTempDir
const hasCode = (code: string, message?: RegExp): ((err: unknown) => boolean) => rejectsWithCode(code as GalleonErrorCode, message)

/** `inner`, with every read held while `gate.closed`; `gate.reads` counts the reads that arrived. */
function gatedReads (inner: BlockStore): { store: BlockStore, gate: { closed: boolean, reads: number, open: () => void } } {
  let release: () => void = () => {}
  const opened = new Promise<void>((resolve) => { release = resolve })
  const gate = { closed: true, reads: 0, open: () => { gate.closed = false; release() } }
  const store = new Proxy(inner, {
    get (target, prop) {
      const value = Reflect.get(target, prop, target)
      if ((prop === 'get' || prop === 'getMany') && typeof value === 'function') {
        return async (...args: unknown[]) => {
          if (gate.closed) { gate.reads++; await opened }
          return await (value as (...a: unknown[]) => Promise<unknown>).apply(target, args)
        }
      }
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  return { store, gate }
}

describe('README QoS', () => {
  it('the dispatcher lets maxInFlight operations (default 64) into the engine and queues the rest; no engine read cache by default', async () => {
    await withDir('h53-inflight-', async (dir) => {
      const { store, gate } = gatedReads(new FileBlockStore({ location: join(dir, 'blocks') }))
      const g = await GalleonFS.open({ storagePath: dir, blockStore: store })
      try {
        // A weight turns the dispatcher on (README: "once a volume has a guarantee, weight or latency target").
        await g.createVolume({ name: 'v', sizeBytes: 128 * BLOCK, qos: { weight: 2 } })
        await g.write('v', 0, new Uint8Array(100 * BLOCK).fill(3))
        gate.reads = 0
        const reads = Array.from({ length: 100 }, async (_, i) => await g.readBlock('v', i))
        // With the default cacheBlocks (0), each read reaches the block store (the blocks were just written).
        await until('64 reads held at the block store', () => gate.reads >= 64)
        const qos = (await g.getVolumeMetrics('v')).qos
        assert.equal(gate.reads, 64, 'no more than 64 operations in the engine at once')
        assert.equal(qos?.dispatchQueue, 36, 'the other 36 wait in the dispatcher')
        gate.open()
        for (const block of await Promise.all(reads)) assert.ok(block.every((b) => b === 3))
        assert.equal((await g.getVolumeMetrics('v')).qos?.dispatchQueue, 0)
      } finally {
        gate.open()
        await g.close()
      }
    })
  })

  it('every flat qos_* class parameter reaches the policy; burst credits start full at limit x (multiplier - 1) x duration; setQoSPolicy(vol, null) brings the class\'s back; setting is audited as admin', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    const changed: unknown[] = []
    g.on('qos:policy-changed', (event) => { changed.push(event) })
    try {
      await g.createStorageClass({
        name: 'metered',
        parameters: {
          qos_limit_iops: '1000', qos_limit_read_iops: '600', qos_limit_write_iops: '500', qos_limit_throughput_mbps: '100', qos_limit_read_throughput_mbps: '60', qos_limit_write_throughput_mbps: '50', qos_limit_latency_ms: '20',
          qos_guarantee_iops: '100', qos_guarantee_throughput_mbps: '10',
          qos_burst_enabled: 'true', qos_burst_duration_seconds: '30', qos_burst_iops_multiplier: '2', qos_burst_throughput_multiplier: '3', qos_weight: '4'
        }
      })
      const v = await g.createVolume({ name: 'v', sizeBytes: '1M', storageClass: 'metered' })
      const fromClass = {
        limits: { iops: 1000, readIops: 600, writeIops: 500, throughputMBps: 100, readThroughputMBps: 60, writeThroughputMBps: 50, latencyMs: 20 },
        guarantees: { iops: 100, throughputMBps: 10 },
        burstable: { enabled: true, durationSeconds: 30, iopsMultiplier: 2, throughputMultiplier: 3 },
        weight: 4
      }
      assert.deepEqual(await g.getQoSPolicy('v'), { policy: fromClass, source: 'storage-class' })
      const metrics = (await g.getVolumeMetrics('v')).qos
      assert.deepEqual(metrics?.burstCredits, { iops: 1000 * (2 - 1) * 30, throughputMB: 100 * (3 - 1) * 30 }, 'credits start full')
      assert.deepEqual(metrics?.burstCreditCapacity, metrics?.burstCredits)

      // snake_case keys, as in a config file.
      await g.setQoSPolicy('v', { limits: { read_iops: 7 }, weight: 2 } as never)
      assert.deepEqual(await g.getQoSPolicy('v'), { policy: { limits: { readIops: 7 }, weight: 2 }, source: 'volume' })
      await g.setQoSPolicy('v', null)
      assert.deepEqual(await g.getQoSPolicy('v'), { policy: fromClass, source: 'storage-class' })
      assert.deepEqual(changed.map((e) => (e as { volumeId: string, source: string })).map((e) => [e.volumeId, e.source]), [[v.id, 'volume'], [v.id, 'storage-class']])
      const audited = (await g.queryAuditLog()).filter((entry) => entry.object === 'volume:default/v' && entry.verb === 'admin').map((entry) => [entry.action, entry.result])
      assert.deepEqual(audited, [['setQoSPolicy', 'ok'], ['clearQoSPolicy', 'ok']])
    } finally {
      await g.close()
    }
  })
})

describe('README Write concerns', () => {
  it('file backend: replicated concerns are refused on a single node and write nothing; a durable write syncs, an acknowledged one does not, flush() does', async () => {
    await withDir('h53-concerns-', async (dir) => {
      const g = await GalleonFS.open({ storagePath: dir })
      try {
        await g.createVolume({ name: 'v', sizeBytes: '1M' })
        for (const concern of [WriteConcern.WriteReplicated, WriteConcern.WriteDistributed]) {
          await assert.rejects(g.write('v', 100, new Uint8Array(2 * BLOCK).fill(3), concern), hasCode('WRITE_CONCERN_UNSATISFIED', /Nothing was written/), concern)
          await assert.rejects(g.writeBlock('v', 0, new Uint8Array(BLOCK).fill(3), concern), hasCode('WRITE_CONCERN_UNSATISFIED'), concern)
        }
        assert.equal(await g.getVolumeUsage('v'), 0, 'the refused writes stored nothing')
        assert.deepEqual([(await g.journalStats()).groups, (await g.getStorageStats()).syncs], [0, 0])

        await g.write('v', 0, Uint8Array.of(1), WriteConcern.WriteDurable)
        let journal = await g.journalStats()
        assert.deepEqual([journal.groups, journal.syncs, (await g.getStorageStats()).syncs], [1, 1, 1], 'a durable write: one group, one sync')
        await g.write('v', BLOCK, Uint8Array.of(2))
        journal = await g.journalStats()
        assert.deepEqual([journal.groups, journal.syncs, (await g.getStorageStats()).syncs], [2, 1, 1], 'an acknowledged write: a group without a sync')
        await g.flush('v')
        assert.equal((await g.getStorageStats()).syncs, 2, 'flush() syncs what was acknowledged')
      } finally {
        await g.close()
      }
    })
  })
})

describe('README Encryption at rest', () => {
  it('deleting a volume deletes its keys; passphrase cost defaults to 2^15; a restore lands in an encrypted volume', async () => {
    await withDir('h53-keys-', async (dir) => {
      const backups = join(dir, 'backups')
      const g = await GalleonFS.open({ storagePath: join(dir, 's'), passphrase: 'a long enough passphrase', backupTarget: backups })
      let gone = ''
      let kept = ''
      try {
        gone = (await g.createVolume({ name: 'gone', sizeBytes: '1M', storageClass: 'encrypted-storage', replicas: 1 })).id
        kept = (await g.createVolume({ name: 'kept', sizeBytes: '1M', storageClass: 'encrypted-storage', replicas: 1 })).id
        await g.write('gone', 0, new Uint8Array(BLOCK).fill(1))
        const backup = await g.createBackup('gone', {})
        const restored = await g.restoreBackup(backup.id, { name: 'restored' })
        assert.deepEqual([restored.encrypted, (await g.getVolumeEncryption('restored')).encrypted], [true, true])
        assert.ok((await g.read('restored', 0, BLOCK)).every((b) => b === 1))
        await g.deleteVolume('gone', { force: true })
      } finally {
        await g.close()
      }
      const salt = JSON.parse(await readFile(join(dir, 's', 'passphrase.salt'), 'utf8')) as { N: number }
      assert.equal(salt.N, 2 ** 15)
      const db = new ClassicLevel<string, string>(join(dir, 's', 'metadata'), { keyEncoding: 'utf8', valueEncoding: 'utf8' })
      const keyRecords: string[] = []
      try {
        for await (const key of db.keys()) if (key.startsWith('!keys!')) keyRecords.push(key)
      } finally {
        await db.close()
      }
      assert.ok(keyRecords.some((key) => key.includes(kept)), 'the control: a live volume\'s key record is found')
      assert.deepEqual(keyRecords.filter((key) => key.includes(gone)), [], 'no key record of the deleted volume')
    })
  })
})
