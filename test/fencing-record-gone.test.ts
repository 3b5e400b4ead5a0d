// A primary fenced for a lost lease serves again only once it has read its volume's record and
// found itself named. When the record was deleted meanwhile (the volume deleted on another node,
// an operator's cleanup) and the watch's delete has not arrived yet (a watch reconnecting after the
// outage delivers it late), the read finds nothing: the copy must then serve nothing, as it does
// once the watch's delete arrives, instead of acknowledging writes no other copy or record knows.
// One node on the memory coordinator, its watch holding back record deletions.

import { after, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import type { Coordinator, CoordinatorEvent } from '../src/drivers.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { until } from './support/wait.js'

const opened: GalleonFS[] = []
const dirs: string[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

it('a fenced primary whose record was deleted meanwhile serves nothing after its lease is back, though the watch\'s delete is late', { timeout: 60_000 }, async () => {
  const coordinators = new MemoryCoordinatorCluster()
  const handle = coordinators.coordinator()
  const other = coordinators.coordinator()
  let deleteAtNextRead: string | undefined
  const coordinator = new Proxy(handle, {
    get: (target, name) => {
      const value = Reflect.get(target, name, target) as unknown
      if (typeof value !== 'function') return value
      if (name === 'watch') {
        // Deletions of volume records are not delivered (late, as after a watch's reconnection).
        return (prefix: string, listener: (event: CoordinatorEvent) => void) => handle.watch(prefix, (event) => {
          if (event.type === 'delete' && event.key.startsWith('replication/volumes/')) return
          listener(event)
        })
      }
      if (name === 'get') {
        return async (key: string) => {
          if (key === deleteAtNextRead) {
            deleteAtNextRead = undefined
            await other.delete(key)
          }
          return await handle.get(key)
        }
      }
      return value.bind(target)
    }
  }) as Coordinator
  const dir = await mkdtemp(join(tmpdir(), 'galleon-fence-gone-'))
  dirs.push(dir)
  const g = await GalleonFS.open({ storagePath: dir, cluster: { nodeId: 'n1', transport: new MemoryTransport({ network: new MemoryNetwork(), nodeId: 'n1' }), coordinator, leaseTtlMs: 3000 } })
  opened.push(g)
  await until('n1 leads the cluster', () => g.cluster?.leadership !== undefined, 10_000)
  await g.createVolume({ name: 'v', sizeBytes: 1 << 20, replicas: 2 })
  await until('n1 is the primary', async () => (await g.replicationStatus('v')).role === 'primary', 20_000)
  const { id, blockSize } = await g.getVolume('v')
  const recordKey = `replication/volumes/${id}`
  assert.ok(await other.get(recordKey) !== undefined, `the volume's record is at ${recordKey}`)
  await g.writeBlock('v', 1, new Uint8Array(blockSize).fill(1), WriteConcern.WriteDurable)

  const fenced: string[] = []
  g.on('replication:error', (e) => { if (e.code === 'NOT_LEADER') fenced.push(e.message) })
  // The lease ends; the record is deleted just before n1 reads it back with its new lease.
  deleteAtNextRead = recordKey
  handle.expireLeases()
  await until('n1 fenced its primary', () => fenced.some((m) => /lost its cluster lease/.test(m)), 10_000)
  await until('n1 read the record back (it was deleted first)', () => deleteAtNextRead === undefined, 15_000)
  assert.equal(await other.get(recordKey), undefined)
  await until('n1 holds a lease again', () => g.cluster?.members.find((m) => m.id === 'n1')?.healthy === true, 10_000)
  // However long it is given, the copy does not serve as the primary of a volume the cluster has no record of.
  await new Promise((resolve) => setTimeout(resolve, 500))
  const status = await g.replicationStatus('v').catch((err: Error) => err)
  assert.ok(status instanceof Error || status.role !== 'primary', `n1 still calls itself the primary: ${JSON.stringify(status)}`)
  await assert.rejects(g.writeBlock('v', 1, new Uint8Array(blockSize).fill(2), WriteConcern.WriteDurable), (err: { code?: string }) => err.code === 'BACKEND_UNAVAILABLE' || err.code === 'NOT_LEADER')
})
