// Review r12 of commit 8c9940d (the `creating` marker of a replicated volume createVolume makes, and
// the deletion mark the lost-create sweep writes), on the in-process cluster (MemoryNetwork,
// MemoryCoordinatorCluster) with a metadata database that can refuse one write.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { GalleonFS, GalleonError, WriteConcern } from '../src/index.js'
import type { Coordinator } from '../src/drivers.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { deletedKey, recordKey } from '../src/replication/records.js'
import { until } from './support/wait.js'
import { LosingCoordinator, lostAnswerCluster } from './support/losing-coordinator.js'

const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

/** A classic-level metadata database that refuses the next put `refuse` matches (a disk that fails one write). */
class RefusingLevel extends ClassicLevel<string, string> {
  refuse: ((value: string) => boolean) | undefined
  refused = 0

  // abstract-level's private hook (not in its types): every put, a sublevel's too, reaches it.
  async _put (key: unknown, value: unknown, options: unknown): Promise<void> {
    const text = typeof value === 'string' ? value : Buffer.from(value as Uint8Array).toString('utf8')
    if (this.refuse?.(text) === true) {
      this.refuse = undefined
      this.refused++
      throw new Error('test: this write of the metadata database failed (I/O error)')
    }
    const put = (ClassicLevel.prototype as unknown as { _put: (k: unknown, v: unknown, o: unknown) => Promise<void> })._put
    await put.call(this, key, value, options)
  }
}

const block = (fill: number): Uint8Array => new Uint8Array(4096).fill(fill)

function clusterOptions (network: MemoryNetwork, coordinator: Coordinator, id: string): { nodeId: string, transport: MemoryTransport, coordinator: Coordinator, leaseTtlMs: number } {
  return { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator, leaseTtlMs: 1000 }
}

async function newDir (id: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `galleon-r12-${id}-`))
  dirs.push(dir)
  return dir
}

describe('review r12: the creating marker of a replicated volume', () => {
  it('a createVolume that resolved (its marker clear failed on one metadata write) is not deleted at the next join when the coordinator has no record of it: it is kept as any other replicated volume the cluster has no record of', { timeout: 60_000 }, async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const dir1 = await newDir('n1')
    const metadata = new RefusingLevel(join(dir1, 'metadata'), { valueEncoding: 'utf8' })
    const n1 = await GalleonFS.open({ storagePath: dir1, metadata: metadata as never, cluster: clusterOptions(network, coordinators.coordinator(), 'n1') })
    opened.push(n1)
    const n2 = await GalleonFS.open({ storagePath: await newDir('n2'), cluster: clusterOptions(network, coordinators.coordinator(), 'n2') })
    opened.push(n2)
    await until('both nodes see each other', () => [n1, n2].every((g) => g.cluster?.members.filter((m) => m.healthy).length === 2))
    for (const g of [n1, n2]) await g.createStorageClass({ name: 'double', parameters: { replication: '2' } })
    // The write that takes the marker off (the first of the volume's record without it) fails once.
    metadata.refuse = (value) => value.includes('"name":"kept"') && !value.includes('"creating":true')
    const created = await n1.createVolume({ name: 'kept', sizeBytes: '128K', storageClass: 'double' }).then((v) => v, (err: GalleonError) => err)
    assert.equal(metadata.refused, 1, 'the marker clear was the write refused')
    if (created instanceof Error) {
      // Also acceptable: the create failed as a whole (and was undone), so no caller relies on it.
      assert.ok(!(await n1.listVolumes()).some((v) => v.name === 'kept'), `createVolume failed (${created.message}) and left no volume behind`)
      return
    }
    const volume = created
    await n1.writeBlock('kept', 5, block(5), WriteConcern.WriteReplicated)
    await n1.close()
    // The cluster loses the record, with no deletion naming n1 (a coordinator restored from an
    // earlier backup, or replaced): the design keeps every node's data then.
    await coordinators.coordinator().delete(recordKey(volume.id))
    assert.equal(await coordinators.coordinator().get(deletedKey(volume.id)), undefined, 'no deletion mark')
    const errors: string[] = []
    const again = await GalleonFS.open({ storagePath: dir1 })
    opened.push(again)
    again.on('replication:error', (event: { code: string, message: string }) => { errors.push(`${event.code}: ${event.message}`) })
    await again.joinCluster(clusterOptions(network, coordinators.coordinator(), 'n1'))
    const listed = (await again.listVolumes()).map((v) => v.name)
    assert.ok(listed.includes('kept'), `volume kept (created, answered, written to) is still on n1 after the join; events: ${errors.join(' | ')}`)
    await again.close()
    const local = await GalleonFS.open({ storagePath: dir1 })
    opened.push(local)
    assert.deepEqual(await local.readBlock('kept', 5), block(5), 'its data')
  })
})

async function sweptMigration (applies: boolean): Promise<void> {
  const losing = new LosingCoordinator()
  losing.applies = applies
  const { n1, n2, coordinators, volumeId } = await lostAnswerCluster({ dirs, opened }, 'galleon-r12', losing)
  const volume = { id: volumeId }
  const coordinator = coordinators.coordinator()
  // The sweep ends with the record's deletion (of the record that landed, or of its own fence).
  let recordDeleted = false
  const stopWatch = coordinator.watch(recordKey(volume.id), (event) => { if (event.key === recordKey(volume.id) && event.type === 'delete') recordDeleted = true })
  losing.lostKey = recordKey(volume.id)
  const first = await n1.g.migrateVolume('lost', { storageClass: 'double' }).then(() => undefined, (err: { code?: string }) => err)
  assert.equal(first?.code, 'BACKEND_UNAVAILABLE', 'the migration failed on the lost answer')
  losing.readsDown = false
  await until('the sweep deleted the record', () => recordDeleted, 10_000)
  stopWatch()
  assert.equal(await coordinator.get(recordKey(volume.id)), undefined)
  await until('n2 holds no copy', async () => !(await n2.g.listVolumes()).some((v) => v.id === volume.id), 10_000)
  const mark = await coordinator.get(deletedKey(volume.id))
  await until('no deletion mark is left for the volume (n2, which it names, holds no copy)', async () => await coordinator.get(deletedKey(volume.id)) === undefined, 10_000)
    .catch((err: Error) => { throw new Error(`${err.message}: the mark is ${mark?.value}`) })
  }

describe('review r12: the deletion mark of the lost-create sweep', () => {
  for (const applies of [true, false]) {
    it(`migrateVolume whose record ${applies ? 'landed with its answer lost' : 'write never reached the coordinator'}: once the sweep is done, no deletion mark is left naming a node that holds no copy of the volume`, { timeout: 60_000 }, async () => {
      await sweptMigration(applies)
    })
  }
})
