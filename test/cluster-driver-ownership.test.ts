// Who closes a cluster's transport and coordinator (ClusterOptions): the instance once a join has
// begun (on leave, on close, on a join that fails part way), the caller when the join is refused
// before it begins (BUSY, NOT_OPEN, INVALID_ARGUMENT). A refused join must not close drivers the
// caller may still use, and a failed one must not leave an etcd client or a listening socket open.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import type { Coordinator } from '../src/drivers.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'

const dirs: string[] = []
after(async () => { await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true }))) })

async function instance (): Promise<GalleonFS> {
  const dir = await mkdtemp(join(tmpdir(), 'galleon-driver-ownership-'))
  dirs.push(dir)
  return await GalleonFS.open({ storagePath: dir })
}

/** True when the coordinator handle still answers (a closed one refuses with NOT_OPEN). */
async function answers (coordinator: Coordinator): Promise<boolean> {
  try {
    await coordinator.get('probe')
    return true
  } catch (err) {
    assert.equal((err as { code?: string }).code, 'NOT_OPEN', `a closed coordinator refuses with NOT_OPEN, got ${String(err)}`)
    return false
  }
}

describe('cluster drivers: who closes them', () => {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const drivers = (nodeId: string): { nodeId: string, transport: MemoryTransport, coordinator: Coordinator } =>
    ({ nodeId, transport: new MemoryTransport({ network, nodeId }), coordinator: coordinators.coordinator() })

  it('a join refused as BUSY (in a cluster already) leaves the new drivers open, and the ones in use working', async () => {
    const g = await instance()
    try {
      const first = drivers('own-a')
      await g.joinCluster(first)
      const second = drivers('own-a2')
      await assert.rejects(g.joinCluster(second), { code: 'BUSY' })
      assert.equal(second.transport.closed, false)
      assert.equal(await answers(second.coordinator), true)
      assert.equal(first.transport.closed, false)
      assert.equal(g.cluster?.nodeId, 'own-a')
      await second.transport.close()
      await second.coordinator.close()
      // Leaving closes the drivers the instance took over.
      await g.leaveCluster({ force: true })
      assert.equal(first.transport.closed, true)
      assert.equal(await answers(first.coordinator), false)
    } finally {
      await g.close()
    }
  })

  it('a join refused for bad options or a closed instance leaves the drivers to the caller', async () => {
    const g = await instance()
    const bad = drivers('own-b')
    await assert.rejects(g.joinCluster({ ...bad, leaseTtlMs: 10 }), { code: 'INVALID_ARGUMENT', message: /leaseTtlMs/ })
    assert.equal(bad.transport.closed, false)
    assert.equal(await answers(bad.coordinator), true)
    await g.close()
    await assert.rejects(g.joinCluster(bad), { code: 'NOT_OPEN' })
    assert.equal(bad.transport.closed, false)
    assert.equal(await answers(bad.coordinator), true)
    await bad.transport.close()
    await bad.coordinator.close()
  })

  it('a join that fails part way closes both drivers, and the instance stays usable outside a cluster', async () => {
    const g = await instance()
    try {
      const failing = drivers('own-c')
      const coordinator = failing.coordinator
      // The coordinator answers the membership query, then fails the node's record.
      const original = coordinator.join.bind(coordinator)
      coordinator.join = async () => { throw new Error('coordinator unreachable (injected)') }
      await assert.rejects(g.joinCluster(failing), /coordinator unreachable/)
      coordinator.join = original
      assert.equal(failing.transport.closed, true, 'the transport was closed')
      assert.equal(await answers(coordinator), false, 'the coordinator was closed')
      assert.equal(g.cluster, undefined)
      const volume = await g.createVolume({ name: 'after-failed-join', sizeBytes: 1 << 20 })
      assert.equal(volume.name, 'after-failed-join')
      // And a later join with new drivers works.
      const status = await g.joinCluster(drivers('own-c'))
      assert.equal(status.nodeId, 'own-c')
    } finally {
      await g.close()
    }
  })
})
