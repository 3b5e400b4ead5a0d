// A node that comes back to the cluster (joins again as a restarted process, or becomes healthy
// again) is announced to replication at once, so that links to it retry without waiting out their
// back-off (measured by bench/replication.ts: the resync of a restarted copy starts sooner).

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { until } from './support/wait.js'

const dirs: string[] = []
after(async () => { await Promise.all(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true }))) })

describe('a node back in the cluster', () => {
  it('is announced by onMemberBack when it joins again after a restart, and its copy is back in sync', { timeout: 60_000 }, async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const dir = await mkdtemp(join(tmpdir(), 'galleon-member-back-'))
    dirs.push(dir)
    const open = async (id: string): Promise<GalleonFS> => await GalleonFS.open({ storagePath: join(dir, id), cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 5000 } })
    const n1 = await open('n1')
    let n2 = await open('n2')
    try {
      await until('the nodes see each other', () => [n1, n2].every((g) => g.cluster?.members.filter((m) => m.healthy).length === 2))
      await n1.createVolume({ name: 'v', sizeBytes: 16 * 4096, replicas: 2 })
      await until('both copies are in sync', async () => (await n1.replicationStatus('v')).inSync.length === 2)
      const back: string[] = []
      const stop = n1.cluster!.onMemberBack((node) => { back.push(node) })
      await n2.close()
      await n1.writeBlock('v', 1, new Uint8Array(4096).fill(6), WriteConcern.WriteDurable)
      // Back within its lease: it never looked unhealthy, but it joined again.
      n2 = await open('n2')
      await until('n1 heard that n2 is back', () => back.includes('n2'))
      stop()
      await until('n2 is in sync again', async () => (await n1.replicationStatus('v')).inSync.length === 2)
      assert.deepEqual(await n2.readBlock('v', 1), new Uint8Array(4096).fill(6))
    } finally {
      await n2.close()
      await n1.close()
    }
  })
})
