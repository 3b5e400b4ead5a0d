// A primary fenced for a lost lease serves again only once it has read its volume's record and
// found itself named (baabbf9, and review r20 of it). One node on the memory coordinator: its watch
// holds back record deletions (late, as after a watch's reconnection), and the record is changed
// just before the unfence read. (0) A record deleted meanwhile (the volume deleted on another node,
// an operator's cleanup): the copy serves nothing, as it does once the watch's delete arrives,
// instead of acknowledging writes no other copy or record knows. (1) A record missing for a while
// and then put back (the same volume, still here) is taken up again by the watch's put: the copy
// serves again. (2) A record that is there but cannot be read as one (damaged, hand-edited) does
// not confirm that this node is still the primary: the copy must not serve on it.

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

/** A one-node cluster whose coordinator runs `atNextRead` on the next read of `key` (set by the caller). */
async function oneNode (label: string): Promise<{ g: GalleonFS, other: Coordinator, handle: ReturnType<MemoryCoordinatorCluster['coordinator']>, hook: { key?: string, atNextRead?: () => Promise<void> } }> {
  const coordinators = new MemoryCoordinatorCluster()
  const handle = coordinators.coordinator()
  const other = coordinators.coordinator()
  const hook: { key?: string, atNextRead?: () => Promise<void> } = {}
  const coordinator = new Proxy(handle, {
    get: (target, name) => {
      const value = Reflect.get(target, name, target) as unknown
      if (typeof value !== 'function') return value
      if (name === 'watch') {
        return (prefix: string, listener: (event: CoordinatorEvent) => void) => handle.watch(prefix, (event) => {
          if (event.type === 'delete' && event.key.startsWith('replication/volumes/')) return
          listener(event)
        })
      }
      if (name === 'get') {
        return async (key: string) => {
          if (key === hook.key && hook.atNextRead !== undefined) {
            const run = hook.atNextRead
            hook.atNextRead = undefined
            await run()
          }
          return await handle.get(key)
        }
      }
      return value.bind(target)
    }
  }) as Coordinator
  const dir = await mkdtemp(join(tmpdir(), `galleon-r20-${label}-`))
  dirs.push(dir)
  const g = await GalleonFS.open({ storagePath: dir, cluster: { nodeId: 'n1', transport: new MemoryTransport({ network: new MemoryNetwork(), nodeId: 'n1' }), coordinator, leaseTtlMs: 3000 } })
  opened.push(g)
  await until('n1 leads the cluster', () => g.cluster?.leadership !== undefined, 10_000)
  await g.createVolume({ name: 'v', sizeBytes: 1 << 20, replicas: 2 })
  await until('n1 is the primary', async () => (await g.replicationStatus('v')).role === 'primary', 20_000)
  const { id } = await g.getVolume('v')
  hook.key = `replication/volumes/${id}`
  return { g, other, handle, hook }
}

it('a fenced primary whose record was deleted meanwhile serves nothing after its lease is back, though the watch\'s delete is late', { timeout: 60_000 }, async () => {
  const { g, other, handle, hook } = await oneNode('gone')
  const { blockSize } = await g.getVolume('v')
  const key = hook.key as string
  assert.ok(await other.get(key) !== undefined, `the volume's record is at ${key}`)
  await g.writeBlock('v', 1, new Uint8Array(blockSize).fill(1), WriteConcern.WriteDurable)
  const fenced: string[] = []
  g.on('replication:error', (e) => { if (e.code === 'NOT_LEADER') fenced.push(e.message) })
  // The lease ends; the record is deleted just before n1 reads it back with its new lease.
  hook.atNextRead = async () => { await other.delete(key) }
  handle.expireLeases()
  await until('n1 fenced its primary', () => fenced.some((m) => /lost its cluster lease/.test(m)), 10_000)
  await until('n1 read the record back (it was deleted first)', () => hook.atNextRead === undefined, 15_000)
  assert.equal(await other.get(key), undefined)
  await until('n1 holds a lease again', () => g.cluster?.members.find((m) => m.id === 'n1')?.healthy === true, 10_000)
  // However long it is given, the copy does not serve as the primary of a volume the cluster has no record of.
  await new Promise((resolve) => setTimeout(resolve, 500))
  const status = await g.replicationStatus('v').catch((err: Error) => err)
  assert.ok(status instanceof Error || status.role !== 'primary', `n1 still calls itself the primary: ${JSON.stringify(status)}`)
  await assert.rejects(g.writeBlock('v', 1, new Uint8Array(blockSize).fill(2), WriteConcern.WriteDurable), (err: { code?: string }) => err.code === 'BACKEND_UNAVAILABLE' || err.code === 'NOT_LEADER')
})

it('a record missing at the unfence read and put back afterwards: the copy serves again, its data kept', { timeout: 60_000 }, async () => {
  const { g, other, handle, hook } = await oneNode('back')
  const { blockSize } = await g.getVolume('v')
  await g.writeBlock('v', 1, new Uint8Array(blockSize).fill(1), WriteConcern.WriteDurable)
  const key = hook.key as string
  const saved = (await other.get(key))?.value
  assert.ok(saved !== undefined)
  hook.atNextRead = async () => { await other.delete(key) }
  handle.expireLeases()
  await until('n1 read the record back (it was deleted first)', () => hook.atNextRead === undefined, 15_000)
  await until('n1 holds a lease again', () => g.cluster?.members.find((m) => m.id === 'n1')?.healthy === true, 10_000)
  await until('n1 retired its primary', async () => (await g.replicationStatus('v').catch(() => ({ role: 'gone' }))).role !== 'primary', 10_000)
  // The record comes back (the volume was never deleted): the watch's put makes n1 primary again.
  await other.put(key, saved)
  await until('n1 is the primary again', async () => (await g.replicationStatus('v').catch(() => ({ role: 'gone' }))).role === 'primary', 15_000)
  await g.writeBlock('v', 2, new Uint8Array(blockSize).fill(2), WriteConcern.WriteDurable)
  assert.deepEqual(await g.readBlock('v', 1), new Uint8Array(blockSize).fill(1))
  assert.deepEqual(await g.readBlock('v', 2), new Uint8Array(blockSize).fill(2))
})

it('a record that cannot be read as one at the unfence read does not let the fenced primary serve again', { timeout: 60_000 }, async () => {
  const { g, other, handle, hook } = await oneNode('garbled')
  const { blockSize } = await g.getVolume('v')
  await g.writeBlock('v', 1, new Uint8Array(blockSize).fill(1), WriteConcern.WriteDurable)
  const key = hook.key as string
  const saved = (await other.get(key))?.value as string
  // Damaged (an operator's hand edit, a record of another format): it names no primary.
  hook.atNextRead = async () => { await other.put(key, JSON.stringify({ ...JSON.parse(saved), primary: undefined, epoch: 'x' })) }
  handle.expireLeases()
  await until('n1 read the record back (damaged first)', () => hook.atNextRead === undefined, 15_000)
  await until('n1 holds a lease again', () => g.cluster?.members.find((m) => m.id === 'n1')?.healthy === true, 10_000)
  await new Promise((resolve) => setTimeout(resolve, 500))
  const written = await Promise.race([
    g.writeBlock('v', 1, new Uint8Array(blockSize).fill(2), WriteConcern.WriteDurable).then(() => 'acknowledged', (err: { code?: string }) => `refused ${err.code ?? ''}`),
    new Promise<string>((resolve) => setTimeout(() => resolve('waiting'), 1500))
  ])
  assert.notEqual(written, 'acknowledged', 'n1 acknowledged a write as primary on a record that does not name it')
})
