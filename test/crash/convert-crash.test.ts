// A node killed (SIGKILL) while a volume becomes replicated: migrateVolume to a 2-copy class, or to
// another node, has changed the local catalog, and the volume's cluster record is not written yet
// (convert-child.ts holds that write). When the node joins again it finds no record: the volume must be a local
// volume again with every block it had, serve I/O, and become replicated when the call is made
// again; before, it stayed a copy that no primary serves, refused I/O, answered migrateVolume with
// BUSY, and its only way out was a forced deletion of its data.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS } from '../../src/index.js'
import { EtcdCoordinator } from '../../backends/etcd/index.js'
import { MemoryNetwork, MemoryTransport } from '../../backends/memory/index.js'
import { recordKey } from '../../src/replication/records.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from '../support/etcd.js'
import { killAfterReady } from './support.js'
import { BLOCKS, CLASS, VOLUME, blockOf } from './convert-child.js'

const CHILD = fileURLToPath(new URL('./convert-child.ts', import.meta.url))
const skip = etcdSkipReason()

describe('a node killed while a volume becomes replicated', { skip }, () => {
  let etcd: EtcdServer
  let root: string
  before(async () => {
    etcd = await startEtcd()
    root = await mkdtemp(join(tmpdir(), 'galleon-convert-crash-'))
  })
  after(async () => {
    await etcd?.stop()
    await rm(root, { recursive: true, force: true })
  })

  for (const mode of ['class', 'move'] as const) {
    it(`${mode === 'class' ? 'migrateVolume to a 2-copy class' : 'migrateVolume to another node'}: the volume is local again at the next join, with its data, and the call can be made again`, { timeout: 120_000 }, async () => {
      const storagePath = join(root, mode)
      const prefix = `convert-crash-${mode}/`
      const run = await killAfterReady(CHILD, [storagePath, etcd.endpoint, prefix, mode], 0)
      assert.ok(run.killed && run.lines.includes('written'), `the child was killed while its record write was held: ${run.lines.join(' | ')} ${run.exit.stderr.slice(0, 2000)}`)
      const coordinator = await EtcdCoordinator.connect({ endpoints: [etcd.endpoint], prefix, ttlMs: 2000 })
      const errors: string[] = []
      const g = await GalleonFS.open({ storagePath, cluster: { nodeId: 'n1', transport: new MemoryTransport({ network: new MemoryNetwork(), nodeId: 'n1' }), coordinator, leaseTtlMs: 2000 } })
      try {
        g.on('replication:error', (event: { message: string }) => { errors.push(event.message) })
        const volume = await g.getVolume(VOLUME)
        assert.equal(await coordinator.get(recordKey(volume.id)), undefined, 'the record was never written')
        assert.equal(volume.replicas, 1, 'one copy, as before the call')
        assert.notEqual(volume.storageClass, CLASS)
        for (let i = 0; i < BLOCKS; i++) assert.deepEqual(await g.readBlock(VOLUME, i), blockOf(i), `block ${i}`)
        await g.writeBlock(VOLUME, 0, blockOf(999))
        assert.deepEqual(await g.readBlock(VOLUME, 0), blockOf(999))
        if (mode === 'class') {
          // The same call again makes it replicated (one node: its second copy waits for another).
          const replicated = await g.migrateVolume(VOLUME, { storageClass: CLASS })
          assert.equal(replicated.storageClass, CLASS)
          assert.ok(await coordinator.get(recordKey(volume.id)) !== undefined, 'recorded in the cluster now')
          assert.deepEqual(await g.readBlock(VOLUME, 1), blockOf(1))
        }
        assert.deepEqual(errors.filter((message) => message.includes('no record')), [], 'never reported as a copy with no record')
      } finally {
        await g.close()
        await coordinator.close()
      }
    })
  }
})
