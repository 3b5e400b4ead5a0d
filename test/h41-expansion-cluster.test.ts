// Online expansion of a replicated volume as its callers see it (in-process cluster: memory
// transport and coordinator, on-disk nodes): what expandVolume answers agrees with getVolume.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, VolumeState, WriteConcern } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { until } from './support/wait.js'

const BS = 4096
const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

async function twoNodes (): Promise<{ network: MemoryNetwork, n1: GalleonFS, n2: GalleonFS }> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const nodes: GalleonFS[] = []
  for (const nodeId of ['n1', 'n2']) {
    const dir = await mkdtemp(join(tmpdir(), `galleon-h41-${nodeId}-`))
    dirs.push(dir)
    const g = await GalleonFS.open({ storagePath: dir, cluster: { nodeId, transport: new MemoryTransport({ network, nodeId }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 } })
    opened.push(g)
    nodes.push(g)
  }
  await until('both nodes see each other', () => nodes.every((g) => g.cluster?.members.filter((m) => m.healthy).length === 2))
  return { network, n1: nodes[0] as GalleonFS, n2: nodes[1] as GalleonFS }
}

describe('h41: expansion of a replicated volume', () => {
  it('expandVolume of a degraded volume answers it degraded, as getVolume does, also when the size is already that', async () => {
    const { network, n1 } = await twoNodes()
    await n1.createVolume({ name: 'v', sizeBytes: 16 * BS, replicas: 2 })
    network.partition(['n2'], ['n1'])
    // A write the cut-off copy cannot take puts it out of sync: the volume is degraded.
    await n1.writeBlock('v', 0, new Uint8Array(BS).fill(1), WriteConcern.WriteAcknowledged)
    await until('the volume is degraded', async () => (await n1.getVolume('v')).state === VolumeState.Degraded, 15_000)
    const grown = await n1.expandVolume('v', 32 * BS)
    assert.equal(grown.sizeBytes, 32 * BS)
    assert.equal(grown.state, VolumeState.Degraded)
    const same = await n1.expandVolume('v', 32 * BS)
    assert.equal(same.sizeBytes, 32 * BS)
    assert.equal(same.state, (await n1.getVolume('v')).state, 'a same-size expansion reports the state getVolume reports')
    network.heal()
  })
})
